#!/usr/bin/env bash
# iot-store on PostgreSQL: the conformance suite against the machine's server. Fails (does not
# skip) when the server is absent. Run from the repository root.
set -euo pipefail

: "${IOT_STORE_PG_URL:=host=127.0.0.1 port=5432 user=postgres dbname=test}"
export IOT_STORE_PG_URL

# A clear message first when the client tools are there; the tests fail on their own otherwise.
if command -v pg_isready >/dev/null && ! pg_isready -h 127.0.0.1 -p 5432 -t 10; then
  echo "store.sh: PostgreSQL is not accepting connections at 127.0.0.1:5432" >&2
  exit 1
fi

cargo clippy -p iot-store --all-targets --features postgres-tests -- -D warnings
cargo test -p iot-store --features postgres-tests --test postgres

# The durable fleet backend on PostgreSQL: an outage and the recovery when it returns;
# several nodes sharing one fleet (stale copies refused and read again, work under leases).
cargo clippy -p iot-tests --all-targets --features postgres-tests -- -D warnings
cargo test -p iot-tests --features postgres-tests --test durable_postgres --test durable_nodes

# Three backend nodes (fleet-node processes) on one PostgreSQL schema behind a mosquitto the
# test starts, the real agent on 100 devices, one node killed with SIGKILL mid-round (issue 20).
cargo clippy -p iot-tests --all-targets --features postgres-tests,mosquitto-tests -- -D warnings
cargo test -p iot-tests --features postgres-tests,mosquitto-tests --test scale_out
