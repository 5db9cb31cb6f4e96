#!/usr/bin/env bash
# The AWS IoT Device SDK v2 for Python (awsiotsdk from PyPI, in a venv) against iot-aws-bridge
# through a mosquitto this step starts on an ephemeral loopback port. Run from the repo root.
set -euo pipefail
cd "$(dirname "$0")/../.."

target_dir="${CARGO_TARGET_DIR:-target}"
venv="$target_dir/aws-sdk-venv"

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 300 apt-get install -y -qq mosquitto
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

if [ ! -x "$venv/bin/python" ]; then
  timeout 120 python3 -m venv "$venv"
fi
timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check awsiotsdk

timeout 1200 cargo build -p iot-aws --features bridge --bin iot-aws-bridge

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# An ephemeral port the kernel picks; never the standard 1883.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
cat >"$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
CONF
"$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)

port_open() { python3 -c "import socket, sys; s = socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $port)))"; }
for _ in $(seq 1 50); do
  port_open && break
  sleep 0.1
done
if ! port_open; then
  echo "mosquitto did not listen on 127.0.0.1:$port" >&2
  cat "$work/mosquitto.log" >&2
  exit 1
fi

"$target_dir/debug/iot-aws-bridge" --port "$port" --seconds 180 >"$work/bridge.out" 2>"$work/bridge.err" &
bridge=$!
pids+=("$bridge")
for _ in $(seq 1 100); do
  grep -q '^ready$' "$work/bridge.out" && break
  kill -0 "$bridge" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^ready$' "$work/bridge.out"; then
  echo "iot-aws-bridge did not subscribe" >&2
  cat "$work/bridge.err" >&2
  exit 1
fi

status=0
timeout 120 "$venv/bin/python" .ci/steps/aws_shadow_sdk.py --port "$port" || status=$?
if [ "$status" -ne 0 ]; then
  echo "bridge log:" >&2
  cat "$work/bridge.err" >&2
fi
exit "$status"
