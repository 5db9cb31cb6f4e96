//! Fleet health: heartbeat timeouts, the per-scope dashboard and battery-replacement planning.
//!
//! A device's [`HealthStatus`] follows from its record, the time and a [`HealthPolicy`], in
//! this order: offline (no message for longer than the heartbeat timeout), degraded or in
//! maintenance (its lifecycle state), low battery (latest reading under the threshold),
//! otherwise healthy. Every device is counted in exactly one status, so the counts of a
//! [`HealthCounts`] add up to its total, as on the source material's dashboard
//! ("59,847 healthy, 98 low battery, 55 offline").
//!
//! Battery replacements are ordered by predicted depletion: a least-squares line through the
//! device's recent readings ([`crate::battery`]), extended to
//! [`HealthPolicy::replace_at_percent`].

use core::fmt;

use iot_core::{DeviceId, TenantId};
use iot_lifecycle::State;

use crate::access::Scope;
pub use crate::battery::{BATTERY_SAMPLES, BatteryHistory};
use crate::registry::DeviceRecord;

/// Thresholds for deriving health.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthPolicy {
    /// A device not heard from for longer than this is offline. Default 30 s: three missed
    /// heartbeats at the device lab's 10 s interval.
    pub heartbeat_timeout_ms: u64,
    /// Under this battery percentage a device is "low battery". Default 20 %.
    pub low_battery_percent: f32,
    /// The level at which a battery should be replaced; depletion is predicted to it.
    /// Default 10 %.
    pub replace_at_percent: f32,
}

impl HealthPolicy {
    /// The defaults described on each field.
    pub const DEFAULT: Self = Self {
        heartbeat_timeout_ms: 30_000,
        low_battery_percent: 20.0,
        replace_at_percent: 10.0,
    };
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One device's health, as counted on the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum HealthStatus {
    /// Heard from recently, operating normally, battery fine.
    Healthy,
    /// Latest battery reading under the policy's threshold.
    LowBattery,
    /// Lifecycle state `Degraded`.
    Degraded,
    /// Lifecycle state `Maintenance`.
    Maintenance,
    /// Not heard from within the heartbeat timeout.
    Offline,
}

/// The health of `record` at `now_ms` under `policy`.
pub fn status_of(record: &DeviceRecord, now_ms: u64, policy: &HealthPolicy) -> HealthStatus {
    if !record.online || now_ms.saturating_sub(record.last_seen_ms) > policy.heartbeat_timeout_ms {
        return HealthStatus::Offline;
    }
    match record.state {
        State::Degraded => return HealthStatus::Degraded,
        State::Maintenance => return HealthStatus::Maintenance,
        _ => {}
    }
    if record
        .battery
        .latest()
        .is_some_and(|p| p < policy.low_battery_percent)
    {
        return HealthStatus::LowBattery;
    }
    HealthStatus::Healthy
}

/// Device counts by health status and by lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthCounts {
    /// All devices counted.
    pub total: u64,
    /// [`HealthStatus::Healthy`].
    pub healthy: u64,
    /// [`HealthStatus::LowBattery`].
    pub low_battery: u64,
    /// [`HealthStatus::Degraded`].
    pub degraded: u64,
    /// [`HealthStatus::Maintenance`].
    pub maintenance: u64,
    /// [`HealthStatus::Offline`].
    pub offline: u64,
    /// Devices per lifecycle state, in the order of [`State::ALL`].
    pub by_state: [u64; 6],
}

impl HealthCounts {
    /// Counts one device.
    pub fn add(&mut self, status: HealthStatus, state: State) {
        self.total = self.total.saturating_add(1);
        let slot = match status {
            HealthStatus::Healthy => &mut self.healthy,
            HealthStatus::LowBattery => &mut self.low_battery,
            HealthStatus::Degraded => &mut self.degraded,
            HealthStatus::Maintenance => &mut self.maintenance,
            HealthStatus::Offline => &mut self.offline,
        };
        *slot = slot.saturating_add(1);
        if let Some(i) = State::ALL.iter().position(|s| *s == state)
            && let Some(c) = self.by_state.get_mut(i)
        {
            *c = c.saturating_add(1);
        }
    }

    /// How many devices are in `state`.
    pub fn in_state(&self, state: State) -> u64 {
        State::ALL
            .iter()
            .position(|s| *s == state)
            .and_then(|i| self.by_state.get(i))
            .copied()
            .unwrap_or(0)
    }
}

struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 1000 {
            return write!(f, "{}", self.0);
        }
        write!(f, "{},{:03}", Thousands(self.0 / 1000), self.0 % 1000)
    }
}

/// The dashboard line: `59,847 healthy, 98 low battery, 55 offline`, followed by degraded and
/// maintenance counts when there are any.
impl fmt::Display for HealthCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} healthy, {} low battery, {} offline",
            Thousands(self.healthy),
            Thousands(self.low_battery),
            Thousands(self.offline)
        )?;
        if self.degraded > 0 {
            write!(f, ", {} degraded", Thousands(self.degraded))?;
        }
        if self.maintenance > 0 {
            write!(f, ", {} in maintenance", Thousands(self.maintenance))?;
        }
        Ok(())
    }
}

/// Health of one tenant's scope, with a breakdown by the scopes one level below it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthReport {
    /// The tenant.
    pub tenant: TenantId,
    /// The scope reported on.
    pub scope: Scope,
    /// When.
    pub at_ms: u64,
    /// Counts over the whole scope.
    pub counts: HealthCounts,
    /// Counts per child scope (devices directly in `scope` are only in `counts`).
    pub children: alloc::collections::BTreeMap<Scope, HealthCounts>,
}

/// A battery replacement to schedule.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BatteryReplacement {
    /// The device.
    pub device: DeviceId,
    /// Where it is.
    pub scope: Scope,
    /// When its battery is predicted to reach the replacement level.
    pub predicted_at_ms: u64,
    /// Its latest reading.
    pub battery_percent: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_line_uses_thousands_separators() {
        let mut c = HealthCounts {
            healthy: 59_847,
            low_battery: 98,
            offline: 55,
            ..HealthCounts::default()
        };
        assert_eq!(
            alloc::format!("{c}"),
            "59,847 healthy, 98 low battery, 55 offline"
        );
        c.degraded = 1_000_001;
        assert!(alloc::format!("{c}").ends_with(", 1,000,001 degraded"));
    }

    #[test]
    fn counts_partition_devices() {
        let mut c = HealthCounts::default();
        c.add(HealthStatus::Healthy, State::Active);
        c.add(HealthStatus::Offline, State::Active);
        c.add(HealthStatus::Degraded, State::Degraded);
        assert_eq!(c.total, 3);
        assert_eq!(c.in_state(State::Active), 2);
        assert_eq!(c.in_state(State::Degraded), 1);
        assert_eq!(c.in_state(State::Maintenance), 0);
    }
}
