#!/usr/bin/env bash
# Flash and static RAM of the iot-mqtt device session on riscv32imc (opt-level "s", fat LTO),
# beside rust-mqtt doing the same protocol steps. Prints the section table of each variant and
# the differences to the baseline.
# Needs the riscv32imc-unknown-none-elf target and binutils-riscv64-unknown-elf.
set -euo pipefail
cd "$(dirname "$0")"

elf=target/riscv32imc-unknown-none-elf/release/iot-mqtt-footprint
declare -A flash ram
for variant in baseline session tls rust-mqtt; do
  features=()
  [[ $variant != baseline ]] && features=(--features "$variant")
  cargo build --release --quiet "${features[@]}"
  echo "== $variant (riscv64-unknown-elf-size -A)"
  riscv64-unknown-elf-size -A "$elf" | grep -E '^(section|\.text|\.rodata|\.data|\.bss)'
  section() { riscv64-unknown-elf-size -A "$elf" | awk -v s="$1" '$1 == s { print $2 }'; }
  flash[$variant]=$(( $(section .text) + $(section .rodata) + $(section .data) ))
  ram[$variant]=$(( $(section .data) + $(section .bss) ))
done
echo
echo "== flash (.text + .rodata + .data) and static RAM (.data + .bss), bytes"
for variant in baseline session tls rust-mqtt; do
  printf '%-10s flash %7d (+%d)  static RAM %6d (+%d)\n' "$variant" \
    "${flash[$variant]}" $(( flash[$variant] - flash[baseline] )) \
    "${ram[$variant]}" $(( ram[$variant] - ram[baseline] ))
done
