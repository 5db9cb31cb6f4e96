#!/usr/bin/env bash
# Instructions per iteration of criterion benchmarks, counted by callgrind: a figure that does
# not move with the load of a shared machine, printed beside criterion's times in
# BENCHMARKS.md.
#
#   scripts/instr-counts.sh BENCH ID...   e.g.
#   scripts/instr-counts.sh shadow_cycle shadow_cycle/ours/map_store shadow_cycle/serde_json/typed
#   scripts/instr-counts.sh merge merge/ours/map_store/16 merge/hashmap_lww/16
#
# BENCH is a bench target of iot-shadow (built here with `--features std`). The bench binary,
# run with INSTR_BENCH=ID, calls that benchmark's routine a fixed number of times
# (benches/instr.rs, ITERS) through `instr::timed`, and callgrind collects only inside
# `timed` (`--toggle-collect`): set-up such as cloning the input is not counted. Prints
# "ID instructions-per-iteration". Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:?usage: $0 BENCH ID...}
shift
iters=$(sed -n 's/^pub(crate) const ITERS: u64 = \([0-9_]*\);.*/\1/p' benches/instr.rs | tr -d _)
bin=$(CARGO_INCREMENTAL=0 nice -n 19 cargo bench -p iot-shadow --features std --bench "$bench" \
    --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "no bench binary for $bench" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for id in "$@"; do
    INSTR_BENCH=$id nice -n 19 valgrind --tool=callgrind --toggle-collect='*instr::timed*' \
        --callgrind-out-file="$out/cg.out" "$bin" >/dev/null 2>"$out/log" ||
        { cat "$out/log" >&2; exit 1; }
    total=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out/cg.out")
    echo "$id $((total / iters))"
done
