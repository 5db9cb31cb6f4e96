#!/usr/bin/env bash
# Per-crate flash and static RAM of a riscv32 ELF, from its symbol table
# (`riscv64-unknown-elf-nm --size-sort -S -C`, demangled by binutils).
#
#   scripts/footprint-by-crate.sh ELF [--markdown]
#
# Each symbol counts for one crate:
# * `<Type as Trait>::f` counts for the crate of `Type`, unless `Type` is a primitive, a
#   type parameter or a `core` type, then for the crate of `Trait`
#   (`<iot_lifecycle::X as minicbor::Encode>::encode` counts for iot_lifecycle,
#   `<core::option::Option<T> as minicbor::Encode>::encode` for minicbor);
# * any other path counts for its first crate (`iot_shadow::store::search`);
# * `core` is split by module (`core::fmt`, `core::panicking`, `core::num`, `core::str`, ...)
#   so formatting and panic machinery show on their own lines;
# * unmangled `__*` symbols and `mem*` are compiler_builtins (soft float, 64-bit division,
#   memcpy); sha2 and hmac are `sha2/hmac`.
# Link-time optimisation inlines library code into its callers, so every crate's figure is a
# lower bound and the caller's an upper one; flash is `.text + .rodata + .data`, static RAM
# `.data + .bss`. Bytes the symbol table does not name (anonymous constants, alignment) are
# the `(unnamed)` line, taken from `riscv64-unknown-elf-size -A`, so the rows add up to the
# sections.
set -euo pipefail
elf=${1:?usage: footprint-by-crate.sh ELF [--markdown]}
format=${2:-text}

section() { riscv64-unknown-elf-size -A "$elf" | awk -v s="$1" '$1 == s { print $2 + 0 }'; }
sections="$(section .text) $(section .rodata) $(section .data) $(section .bss)"

riscv64-unknown-elf-nm --size-sort -S -C -t d "$elf" | awk -v sections="$sections" -v format="$format" '
  function crate_of(path,    c) {
    if (match(path, /^[A-Za-z_][A-Za-z0-9_]*::/)) {
      c = substr(path, 1, RLENGTH - 2);
      if (c == "core" && match(path, /^core::[a-z_0-9]+::/)) c = substr(path, 1, RLENGTH - 2);
      return c;
    }
    return "";
  }
  function classify(name,    inner, ty, tr, c, depth, i, ch, as_at) {
    if (name ~ /^__rustc::/) return "core::panicking";
    if (name ~ /^__/ || name ~ /^(memcpy|memmove|memset|memcmp|bcmp)$/) return "compiler_builtins";
    if (substr(name, 1, 1) == "<") {
      # <Type as Trait>::f: find the top-level " as " and the matching ">".
      depth = 0; as_at = 0;
      for (i = 1; i <= length(name); i++) {
        ch = substr(name, i, 1);
        if (ch == "<") depth++;
        else if (ch == ">") { depth--; if (depth == 0) break; }
        else if (depth == 1 && as_at == 0 && substr(name, i, 4) == " as ") as_at = i;
      }
      if (as_at > 0) {
        ty = substr(name, 2, as_at - 2); tr = substr(name, as_at + 4, i - as_at - 4);
        c = crate_of(ty);
        if (c == "" || c ~ /^core/) { c2 = crate_of(tr); if (c2 != "") c = c2; }
      } else {
        c = crate_of(substr(name, 2));
      }
    } else {
      c = crate_of(name);
    }
    if (c == "") return "(other symbols)";
    if (c == "sha2" || c == "hmac" || c == "digest" || c == "block_buffer") return "sha2/hmac";
    if (c == "riscv_rt" || c == "riscv") return "riscv-rt (start-up)";
    return c;
  }
  NF >= 4 {
    size = $2 + 0; kind = tolower($3);
    name = $0; sub(/^[0-9]+ [0-9]+ [A-Za-z] /, "", name);
    if (kind == "t" || kind == "w") s = 1;
    else if (kind == "r") s = 2;
    else if (kind == "d") s = 3;
    else if (kind == "b") s = 4;
    else next;
    c = classify(name);
    total[c, s] += size; named[s] += size; crates[c] = 1;
  }
  END {
    split(sections, sec, " ");
    crates["(unnamed)"] = 1;
    for (s = 1; s <= 4; s++) total["(unnamed)", s] = sec[s] - named[s];
    if (format == "--markdown") {
      print "| crate | .text | .rodata | flash | .bss + .data (static RAM) |";
      print "|---|---:|---:|---:|---:|";
      fmt = "| %s | %d | %d | **%d** | %d |\n";
    } else {
      printf "%-28s %8s %8s %8s %8s\n", "crate", ".text", ".rodata", "flash", "ram";
      fmt = "%-28s %8d %8d %8d %8d\n";
    }
    n = 0;
    for (c in crates) {
      flash = total[c, 1] + total[c, 2] + total[c, 3];
      ram = total[c, 3] + total[c, 4];
      if (flash == 0 && ram == 0) continue;
      n++; key[n] = flash * 100000 + ram; row[n] = sprintf(fmt, c, total[c, 1], total[c, 2], flash, ram);
    }
    # Largest flash first (insertion sort; a few dozen rows).
    for (i = 2; i <= n; i++) { k = key[i]; r = row[i]; j = i - 1;
      while (j > 0 && key[j] < k) { key[j + 1] = key[j]; row[j + 1] = row[j]; j-- }
      key[j + 1] = k; row[j + 1] = r }
    for (i = 1; i <= n; i++) printf "%s", row[i];
    flash = sec[1] + sec[2] + sec[3]; ram = sec[3] + sec[4];
    if (format == "--markdown") printf "| **total** | %d | %d | **%d** | %d |\n", sec[1], sec[2], flash, ram;
    else printf "%-28s %8d %8d %8d %8d\n", "total", sec[1], sec[2], flash, ram;
  }'
