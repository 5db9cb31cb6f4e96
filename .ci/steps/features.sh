#!/usr/bin/env bash
# The feature matrix: every feature of every crate builds, alone and together with the other
# features of its kind, on each target the crate claims. Device crates claim the ESP32-C3
# (riscv32imc) and a Cortex-M4F (thumbv7em) without std; iot-fleet and iot-planning claim
# no_std targets with an allocator (riscv32imac, thumbv7em); the std features build on the
# host. Run from the repository root.
set -euo pipefail

device_targets=(riscv32imc-unknown-none-elf thumbv7em-none-eabihf)
gateway_targets=(riscv32imac-unknown-none-elf thumbv7em-none-eabihf)

# crate: its features that need no std (each is built alone, then all together).
declare -A no_std_features=(
  [iot-core]="alloc serde defmt protobuf"
  [iot-transport]="alloc serde defmt nal atat testkit"
  [iot-shadow]="alloc serde defmt json protobuf"
  [iot-lifecycle]="alloc serde defmt testkit"
  [iot-protocol]="alloc defmt protobuf"
  [iot-agent]="alloc defmt"
  [iot-mqtt]="alloc tls"
)

check() {
  echo "cargo check $*"
  cargo check --quiet "$@"
}

for crate in iot-core iot-transport iot-shadow iot-lifecycle iot-protocol iot-agent iot-mqtt; do
  features=${no_std_features[$crate]}
  for target in "${device_targets[@]}"; do
    check -p "$crate" --no-default-features --target "$target"
    for feature in $features; do
      check -p "$crate" --no-default-features --features "$feature" --target "$target"
    done
    check -p "$crate" --no-default-features --features "${features// /,}" --target "$target"
  done
done

for target in "${gateway_targets[@]}"; do
  check -p iot-fleet --no-default-features --target "$target"
  check -p iot-fleet --no-default-features --features serde --target "$target"
  check -p iot-planning --no-default-features --target "$target"
  check -p iot-planning --no-default-features --features serde --target "$target"
done

# The std features, each alone, on the host.
check -p iot-transport --features std,mock
check -p iot-fleet --features durable
check -p iot-planning --features std,serde
check -p iot-mqtt --features fleet
check -p iot-mqtt --features agent
check -p iot-mqtt --features std,tls
check -p iot-shadow --features std,json,protobuf
echo "feature matrix: all builds passed"
