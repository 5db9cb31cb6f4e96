#!/usr/bin/env bash
# Footprint of the device stack on riscv32imc (issue 9): builds examples/footprint (agent,
# shadow, lifecycle, CBOR, outbox, framing) at opt-level "s" with fat LTO, prints the flash
# (.text, .rodata) and static RAM (.data, .bss) sections, a per-crate breakdown from the
# symbol table, and the stack high-water mark measured by painting the stack and running
# the firmware on QEMU riscv32 `virt`.
#
# Needs: the riscv32imc-unknown-none-elf target, binutils-riscv64-unknown-elf,
# qemu-system-riscv32 (Debian: qemu-system-misc). Prints "KEY=VALUE" summary lines last.
set -euo pipefail
cd "$(dirname "$0")/../examples/footprint"

cargo build --release --quiet
elf=target/riscv32imc-unknown-none-elf/release/iot-footprint

echo "== sections (riscv64-unknown-elf-size -A)"
riscv64-unknown-elf-size -A "$elf" | grep -E '^(section|\.text|\.rodata|\.data|\.bss)'
section() { riscv64-unknown-elf-size -A "$elf" | awk -v s="$1" '$1 == s { print $2 }'; }
text=$(section .text); rodata=$(section .rodata); data=$(section .data); bss=$(section .bss)

echo
echo "== per crate (symbol sizes from nm; a generic or derived function counts for the first"
echo "   crate named in its demangled path, e.g. <iot_lifecycle::X as minicbor::Encode>::encode"
echo "   counts for iot_lifecycle)"
riscv64-unknown-elf-nm --size-sort -S -C -t d "$elf" | awk '
  NF >= 4 {
    size = $2 + 0; kind = tolower($3);
    name = $0; sub(/^[0-9]+ [0-9]+ [A-Za-z] /, "", name);
    crate = "other";
    if (match(name, /[a-z_][a-z0-9_]*::/)) { crate = substr(name, RSTART, RLENGTH - 2) }
    if (kind == "t" || kind == "w") sec = "text";
    else if (kind == "r") sec = "rodata";
    else if (kind == "d") sec = "data";
    else if (kind == "b") sec = "bss";
    else next;
    total[crate, sec] += size; crates[crate] = 1;
  }
  END {
    printf "%-20s %8s %8s %8s %8s\n", "crate", ".text", ".rodata", ".data", ".bss";
    for (c in crates) printf "%-20s %8d %8d %8d %8d\n", c, total[c, "text"], total[c, "rodata"], total[c, "data"], total[c, "bss"] | "sort -k2 -n -r";
  }'

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
