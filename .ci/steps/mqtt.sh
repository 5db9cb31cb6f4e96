#!/usr/bin/env bash
# The MQTT end-to-end tests against Mosquitto: the machine's broker on 127.0.0.1:1883, and
# brokers the tests start themselves on free loopback ports with an ACL file.
# Run from the repository root. Fails (never skips) when a broker cannot be reached.
set -euo pipefail

# Mosquitto installed, and the machine's broker listening on 127.0.0.1:1883.
source "$(dirname "$0")/machine_broker.sh"

cargo test -p iot-mqtt --features mosquitto-tests --test mosquitto
# The real agent and backend (registration, shadow, command, OTA) through the machine's broker.
cargo test -p iot-tests --features mosquitto-tests --test mqtt_fleet
# The same agents through a mosquitto the test starts with TLS, client certificates and ACLs,
# killed and restarted mid-run; bad and forged publishes refused and counted.
cargo test -p iot-tests --features mosquitto-tests --test mqtt_fleet_tls
# Faults on IP (issue 22): latency, bandwidth limits, stalls, resets, half-open connections and
# a broker restart through a fault-injecting proxy; IOT_FAULT_CYCLES=N runs N cycles.
cargo test -p iot-tests --features mosquitto-tests --test mqtt_faults

# The device side without std, with and without TLS, on the ESP32-C3 target.
rustup target add riscv32imc-unknown-none-elf
for features in "" "tls"; do
  cargo build -p iot-mqtt --no-default-features --features "$features" --target riscv32imc-unknown-none-elf
  cargo clippy -p iot-mqtt --no-default-features --features "$features" --target riscv32imc-unknown-none-elf -- -D warnings
done
