#!/usr/bin/env bash
# Short fuzz campaigns: every cargo-fuzz target in fuzz/ for a fixed time, starting from the
# committed seeds in fuzz/seeds/<target>/. Fails on any crash, panic, timeout, OOM or leak
# (libFuzzer exits non-zero and leaves the input in fuzz/artifacts/<target>/).
#
# Run from the repository root. Stable Rust builds the targets with RUSTC_BOOTSTRAP=1 (cargo-fuzz
# passes -Zsanitizer=address and other unstable flags); nightly is not needed.
#
# Knobs (environment):
#   FUZZ_SECONDS  time per target (default 15; 16 targets two at a time take about 2
#                 minutes, plus the build: about 10 s when fuzz/target is warm, some
#                 minutes from nothing on 2 cores, so CI should keep fuzz/target)
#   FUZZ_JOBS     targets fuzzed at once (default 2: one per core)
#   FUZZ_TARGETS  space-separated subset of targets (default: all of `cargo fuzz list`)
# A longer local campaign of one target: FUZZ_SECONDS=600 FUZZ_TARGETS=server_handle .ci/steps/fuzz.sh
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-15}
FUZZ_JOBS=${FUZZ_JOBS:-2}
export RUSTC_BOOTSTRAP=1

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]]; then
  cargo install cargo-fuzz --version "=${CARGO_FUZZ_VERSION}" --locked
fi

cd fuzz
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"${FUZZ_TARGETS}"
else
  mapfile -t targets < <(cargo fuzz list)
fi

# One build of every target up front; the runs below then find them fresh.
cargo fuzz build

logs=$(mktemp -d)
run_one() {
  local target=$1
  local corpus="corpus/${target}"
  mkdir -p "${corpus}" "artifacts/${target}"
  if [[ -d "seeds/${target}" ]]; then
    cp -f "seeds/${target}"/* "${corpus}/"
  fi
  # -rss_limit_mb: an input that makes a target hold more than this is an OOM failure.
  # -timeout: one input running longer than this many seconds is a failure.
  cargo fuzz run "${target}" "${corpus}" -- \
    -max_total_time="${FUZZ_SECONDS}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"${logs}/${target}.log" 2>&1
}

failed=()
pids=()
names=()
wait_one() {
  local pid=$1 target=$2
  if wait "${pid}"; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "${logs}/${target}.log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz ${target}: ok, ${runs} inputs in ${FUZZ_SECONDS}s"
  else
    echo "fuzz ${target}: FAILED" >&2
    tail -n 60 "${logs}/${target}.log" >&2
    failed+=("${target}")
  fi
}

for target in "${targets[@]}"; do
  run_one "${target}" &
  pids+=("$!")
  names+=("${target}")
  if ((${#pids[@]} >= FUZZ_JOBS)); then
    wait_one "${pids[0]}" "${names[0]}"
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
while ((${#pids[@]} > 0)); do
  wait_one "${pids[0]}" "${names[0]}"
  pids=("${pids[@]:1}")
  names=("${names[@]:1}")
done
rm -rf "${logs}"

if ((${#failed[@]} > 0)); then
  echo "fuzz: failing targets: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${FUZZ_SECONDS}s each, no failure"
