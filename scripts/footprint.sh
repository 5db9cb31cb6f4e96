#!/usr/bin/env bash
# Footprint of the device stack on riscv32imc (issue 9): builds examples/footprint (agent,
# shadow, lifecycle, CBOR, outbox, framing) at opt-level "s" with fat LTO, prints the flash
# (.text, .rodata) and static RAM (.data, .bss) sections, a per-crate breakdown from the
# symbol table (scripts/footprint-by-crate.sh), and the stack high-water mark measured by
# painting the stack and running the firmware on QEMU riscv32 `virt`.
#
# Needs: the riscv32imc-unknown-none-elf target, binutils-riscv64-unknown-elf,
# qemu-system-riscv32 (Debian: qemu-system-misc). Prints "KEY=VALUE" summary lines last.
set -euo pipefail
scripts=$(cd "$(dirname "$0")" && pwd)
cd "$scripts/../examples/footprint"

cargo build --release --quiet
elf=target/riscv32imc-unknown-none-elf/release/iot-footprint

echo "== sections (riscv64-unknown-elf-size -A)"
riscv64-unknown-elf-size -A "$elf" | grep -E '^(section|\.text|\.rodata|\.data|\.bss)'
section() { riscv64-unknown-elf-size -A "$elf" | awk -v s="$1" '$1 == s { print $2 }'; }
text=$(section .text); rodata=$(section .rodata); data=$(section .data); bss=$(section .bss)

echo
echo "== per crate (scripts/footprint-by-crate.sh: symbol sizes from nm, attribution rules there)"
"$scripts/footprint-by-crate.sh" "$elf"
echo
echo "== largest statics (.bss/.data symbols)"
riscv64-unknown-elf-nm --size-sort -S -C -t d -r "$elf" | awk 'tolower($3) ~ /^[bd]$/ && $2 + 0 >= 64 { printf "%8d %s\n", $2, $4 }'

echo
echo "== stack high-water mark (QEMU riscv32 virt, stack painted before the workload)"
out=$(timeout 60 qemu-system-riscv32 -machine virt -display none -monitor none -serial stdio \
  -bios none -kernel "$elf")
echo "$out"
grep -q '^footprint: ok' <<<"$out"
stack=$(sed -n 's/^stack_high_water_bytes=\([0-9]*\).*/\1/p' <<<"$out")

echo
echo "== summary"
echo "FLASH_BYTES=$((text + rodata + data))"
echo "TEXT_BYTES=$text"
echo "RODATA_BYTES=$rodata"
echo "STATIC_RAM_BYTES=$((data + bss))"
echo "DATA_BYTES=$data"
echo "BSS_BYTES=$bss"
echo "STACK_HIGH_WATER_BYTES=$stack"
