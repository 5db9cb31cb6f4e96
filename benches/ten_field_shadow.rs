//! The 10-field shadow the merge and reconciliation benchmarks use, so both measure the
//! same document.

/// Leaf paths of the benchmark shadow.
pub(crate) const FIELDS: [&str; 10] = [
    "temperature",
    "humidity",
    "battery",
    "led",
    "firmware",
    "rssi",
    "uptime",
    "telemetry.interval",
    "heartbeat.interval",
    "mode",
];
