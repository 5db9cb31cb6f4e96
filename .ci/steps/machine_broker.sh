#!/usr/bin/env bash
# Makes sure Mosquitto is installed and the machine's broker listens on 127.0.0.1:1883
# (starting the system service if nothing listens); exits with an error when it cannot.
# Sourced by .ci/steps/mqtt.sh; run by .ci/run before the QEMU runs.
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v mosquitto >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq mosquitto
fi
mosquitto -h | head -n 1 || true

# The machine's broker: start the system service if nothing listens on 127.0.0.1:1883.
broker_up() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if ! broker_up; then
  service mosquitto start || systemctl start mosquitto || true
  for _ in $(seq 1 50); do
    broker_up && break
    sleep 0.2
  done
fi
if ! broker_up; then
  echo "mqtt: Mosquitto is not reachable on 127.0.0.1:1883" >&2
  exit 1
fi
