//! The names the API, the metrics and the dashboard give lifecycle states and health
//! statuses (`active`, `low_battery`...).

use iot_fleet::HealthStatus;
use iot_lifecycle::State as LifecycleState;

/// Every lifecycle state, in lifecycle order.
pub const STATES: [LifecycleState; 6] = [
    LifecycleState::Unprovisioned,
    LifecycleState::Provisioning,
    LifecycleState::Active,
    LifecycleState::Degraded,
    LifecycleState::Maintenance,
    LifecycleState::Decommissioned,
];

/// The lifecycle state's name in the API (`active`, `degraded`...).
pub fn state_name(state: LifecycleState) -> String {
    format!("{state:?}").to_ascii_lowercase()
}

/// The health status's name in the API.
pub fn health_name(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "healthy",
        HealthStatus::LowBattery => "low_battery",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Maintenance => "maintenance",
        HealthStatus::Offline => "offline",
        _ => "unknown",
    }
}
