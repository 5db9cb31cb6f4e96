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
//! device's recent readings, extended to [`HealthPolicy::replace_at_percent`].

use core::fmt;

use heapless::Deque;
use iot_core::{DeviceId, TenantId};
use iot_lifecycle::State;

use crate::access::Scope;
use crate::registry::DeviceRecord;

/// How many battery readings a device record keeps.
pub const BATTERY_SAMPLES: usize = 8;

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

/// Recent battery readings of one device, oldest first, at most [`BATTERY_SAMPLES`].
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BatteryHistory {
    samples: Deque<(u64, f32), BATTERY_SAMPLES>,
}

impl BatteryHistory {
    /// No readings.
    pub const fn new() -> Self {
        Self {
            samples: Deque::new(),
        }
    }

    /// Records a reading; the oldest is dropped when full. Readings older than the newest
    /// one and non-finite values are ignored.
    pub fn record(&mut self, at_ms: u64, percent: f32) {
        if !percent.is_finite() || self.samples.back().is_some_and(|(t, _)| *t > at_ms) {
            return;
        }
        let percent = percent.clamp(0.0, 100.0);
        if self.samples.is_full() {
            let _ = self.samples.pop_front();
        }
        let _ = self.samples.push_back((at_ms, percent));
    }

    /// The newest reading's percentage.
    pub fn latest(&self) -> Option<f32> {
        self.samples.back().map(|(_, p)| *p)
    }

    /// The readings, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = (u64, f32)> + '_ {
        self.samples.iter().copied()
    }

    /// When a least-squares line through the readings reaches `level` percent, or `None`
    /// with fewer than two readings at different times or a level that is not falling.
    #[allow(clippy::arithmetic_side_effects)] // f64 statistics: no overflow or trap.
    pub fn predict_time_at(&self, level: f32) -> Option<u64> {
        let (t0, _) = *self.samples.front()?;
        let n = self.samples.len() as f64;
        let (mut sum_t, mut sum_p) = (0.0f64, 0.0f64);
        for (t, p) in self.samples.iter() {
            sum_t += t.saturating_sub(t0) as f64;
            sum_p += f64::from(*p);
        }
        let (mean_t, mean_p) = (sum_t / n, sum_p / n);
        let (mut cov, mut var) = (0.0f64, 0.0f64);
        for (t, p) in self.samples.iter() {
            let dt = t.saturating_sub(t0) as f64 - mean_t;
            cov += dt * (f64::from(*p) - mean_p);
            var += dt * dt;
        }
        if var <= 0.0 {
            return None;
        }
        let slope = cov / var;
        if slope >= 0.0 {
            return None;
        }
        let at = mean_t + (f64::from(level) - mean_p) / slope;
        if !at.is_finite() {
            return None;
        }
        // `as` saturates for out-of-range floats and maps negatives to 0.
        Some(t0.saturating_add(at.max(0.0) as u64))
    }
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
    fn linear_fit_predicts_depletion() {
        let mut b = BatteryHistory::new();
        // 1 % per hour from 50 %.
        for h in 0..5u64 {
            b.record(h * 3_600_000, 50.0 - h as f32);
        }
        let at = b.predict_time_at(10.0).unwrap();
        assert!((at as i64 - 40 * 3_600_000).abs() < 1_000, "{at}");
        // Already below the level: the fit's crossing is in the past.
        assert!(b.predict_time_at(60.0).unwrap() < 4 * 3_600_000);
    }

    #[test]
    fn no_prediction_without_a_falling_trend() {
        let mut b = BatteryHistory::new();
        assert_eq!(b.predict_time_at(10.0), None);
        b.record(0, 80.0);
        assert_eq!(b.predict_time_at(10.0), None);
        b.record(10, 85.0);
        assert_eq!(b.predict_time_at(10.0), None);
        let mut same_time = BatteryHistory::new();
        same_time.record(5, 80.0);
        same_time.record(5, 70.0);
        assert_eq!(same_time.predict_time_at(10.0), None);
    }

    #[test]
    fn history_is_bounded_and_ignores_bad_readings() {
        let mut b = BatteryHistory::new();
        for i in 0..20u64 {
            b.record(i, 100.0 - i as f32);
        }
        assert_eq!(b.samples().count(), BATTERY_SAMPLES);
        assert_eq!(b.samples().next(), Some((12, 88.0)));
        b.record(3, 1.0);
        b.record(30, f32::NAN);
        assert_eq!(b.latest(), Some(81.0));
        b.record(40, 150.0);
        assert_eq!(b.latest(), Some(100.0));
    }

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
