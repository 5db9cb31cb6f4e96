#!/usr/bin/env bash
# The operator dashboard in headless Chromium, against the real system: `iot-operator run`
# (broker, backend, API, dashboard, simulated devices running the real agent over MQTT).
# The browser (driven over WebDriver by chromium-driver) loads the pages, checks that they
# show the numbers the API returns, sets a desired value on a device page and pauses a
# rollout; the desired value must reach the device and come back reported.
# Run from the repository root. Fails (never skips) when Chromium or its driver is missing.
set -euo pipefail

for tool in chromium chromedriver python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "operator: $tool is missing (.ci/run installs chromium and chromium-driver)" >&2
    exit 1
  fi
done

work="$(mktemp -d)"
cleanup() {
  [[ -n "${system_pid:-}" ]] && kill "$system_pid" 2>/dev/null || true
  [[ -n "${driver_pid:-}" ]] && kill "$driver_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

cargo build -p iot-operator
# Jobs spread over a minute, so the rollout the browser pauses is still running.
./target/debug/iot-operator run --devices 6 --minutes 1.5 --quiet-operator --ota-jitter-ms 60000 \
  --info-file "$work/info" > "$work/system.log" 2>&1 &
system_pid=$!
for _ in $(seq 1 100); do [[ -s "$work/info" ]] && break; sleep 0.2; done
[[ -s "$work/info" ]] || { cat "$work/system.log"; echo "operator: the system did not start" >&2; exit 1; }

driver_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
chromedriver --port="$driver_port" --allowed-ips=127.0.0.1 > "$work/driver.log" 2>&1 &
driver_pid=$!

status=0
timeout 150 python3 .ci/steps/operator_browser.py "$work/info" "$driver_port" "${SCREENSHOTS:-$work}" || status=$?
kill "$system_pid" 2>/dev/null || true
wait "$system_pid" 2>/dev/null || true
unset system_pid
tail -n 15 "$work/system.log"
if [[ $status -ne 0 ]]; then
  echo "operator: browser test failed" >&2
  tail -n 20 "$work/driver.log" >&2 || true
  exit "$status"
fi
