//! The device agent's cadence: when each periodic duty is due.
//!
//! The device lab runs four duties on fixed periods: health checks (5 s), heartbeats (10 s),
//! shadow syncs (15 s, or at once when something changed) and telemetry (30 s, three times
//! slower in degraded mode, paused in maintenance). [`Schedule`] keeps one deadline per duty
//! and answers two questions without ever busy-waiting:
//!
//! - [`Schedule::next_deadline`]: when to wake up next (sleep on an async timer until then);
//! - [`Schedule::poll`]: which duty is due now (call until it returns `None`).
//!
//! Deadlines advance by whole periods from the previous deadline, so the cadence does not drift
//! with processing time; a device that fell behind (slept through several periods) runs a duty
//! once and resumes the cadence from now instead of bursting.
//!
//! ```
//! use iot_lifecycle::config::DeviceConfig;
//! use iot_lifecycle::schedule::{Duty, Schedule};
//!
//! let mut schedule = Schedule::new(&DeviceConfig::DEFAULT, 0)?;
//! let mut heartbeats = 0;
//! let mut now = 0;
//! while now <= 60_000 {
//!     while let Some(duty) = schedule.poll(now) {
//!         if duty == Duty::Heartbeat {
//!             heartbeats += 1;
//!         }
//!     }
//!     now = schedule.next_deadline().unwrap_or(u64::MAX);
//! }
//! assert_eq!(heartbeats, 7); // at 0, 10, 20, 30, 40, 50 and 60 s
//! # Ok::<(), iot_lifecycle::config::ValidationError>(())
//! ```

use crate::config::DeviceConfig;
pub use crate::duty::Duty;
use crate::validation::ValidationError;

/// How the agent is operating, which changes what runs and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    /// Every duty on its period.
    #[default]
    Normal,
    /// Telemetry runs `degraded_telemetry_factor` times slower to save energy.
    Degraded,
    /// Telemetry is paused; heartbeats, health checks and syncs continue.
    Maintenance,
    /// Nothing periodic runs (not yet provisioned, or decommissioned).
    Suspended,
}

/// Deadlines of the four duties. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Normal-mode period per duty.
    periods: [u64; 4],
    degraded_factor: u64,
    mode: Mode,
    /// Next deadline per duty (`None`: not running in this mode).
    next: [Option<u64>; 4],
    /// When each duty last ran, to re-space it when its period changes.
    last_run: [Option<u64>; 4],
}

impl Schedule {
    /// A schedule in [`Mode::Normal`] with every duty due at `now_ms`, on the periods of a
    /// valid `config`.
    pub fn new(config: &DeviceConfig, now_ms: u64) -> Result<Self, ValidationError> {
        let mut schedule = Self::suspended(config)?;
        schedule.set_mode(Mode::Normal, now_ms);
        Ok(schedule)
    }

    /// A schedule in [`Mode::Suspended`]: nothing runs until [`Schedule::set_mode`].
    pub fn suspended(config: &DeviceConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        Ok(Self {
            periods: Duty::ALL.map(|d| u64::from(config.period_ms(d))),
            degraded_factor: u64::from(config.degraded_telemetry_factor),
            mode: Mode::Suspended,
            next: [None; 4],
            last_run: [None; 4],
        })
    }

    /// The period of `duty` in `mode`, or `None` when the duty does not run in that mode.
    pub fn period(&self, duty: Duty, mode: Mode) -> Option<u64> {
        let normal = self.periods.get(duty.slot()).copied()?;
        match (mode, duty) {
            (Mode::Suspended, _) | (Mode::Maintenance, Duty::Telemetry) => None,
            (Mode::Degraded, Duty::Telemetry) => Some(normal.saturating_mul(self.degraded_factor)),
            _ => Some(normal),
        }
    }

    /// The current mode.
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// When `duty` is next due, if it runs in the current mode.
    pub fn deadline(&self, duty: Duty) -> Option<u64> {
        self.next.get(duty.slot()).copied().flatten()
    }

    /// The earliest deadline of any duty: sleep until then. `None` when nothing runs.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next.iter().flatten().copied().min()
    }

    /// Takes the most urgent duty due at `now_ms` and schedules its next run; `None` when
    /// nothing is due. Call repeatedly until `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Duty> {
        let (duty, due) = Duty::ALL
            .iter()
            .filter_map(|&d| self.deadline(d).map(|t| (d, t)))
            .filter(|&(_, t)| t <= now_ms)
            .min_by_key(|&(d, t)| (t, d))?;
        let period = self.period(duty, self.mode)?;
        let mut next = due.saturating_add(period);
        if next <= now_ms {
            // Fell behind by a whole period or more: run once, then resume from now.
            next = now_ms.saturating_add(period);
        }
        self.set_slot(duty, Some(next), Some(now_ms));
        Some(duty)
    }

    /// Makes `duty` due at `now_ms` (for example a shadow sync when state changed), if it
    /// runs in the current mode. Its period restarts from that run.
    pub fn run_now(&mut self, duty: Duty, now_ms: u64) {
        if self.period(duty, self.mode).is_some() {
            let earlier = self.deadline(duty).map_or(now_ms, |t| t.min(now_ms));
            let last = self.last_run.get(duty.slot()).copied().flatten();
            self.set_slot(duty, Some(earlier), last);
        }
    }

    /// Switches mode at `now_ms`. Duties whose period changed are re-spaced from their last
    /// run (or start now if they never ran); duties that stop running lose their deadline.
    pub fn set_mode(&mut self, mode: Mode, now_ms: u64) {
        if mode == self.mode {
            return;
        }
        let previous = self.mode;
        self.mode = mode;
        for duty in Duty::ALL {
            let before = self.period(duty, previous);
            let after = self.period(duty, mode);
            if before == after {
                continue;
            }
            let last = self.last_run.get(duty.slot()).copied().flatten();
            let next = after.map(|period| match last {
                Some(ran) => ran.saturating_add(period).max(now_ms),
                None => now_ms,
            });
            self.set_slot(duty, next, last);
        }
    }

    /// Adopts the periods of a new, valid configuration at `now_ms`, re-spacing every duty
    /// from its last run. An invalid configuration changes nothing.
    pub fn set_config(
        &mut self,
        config: &DeviceConfig,
        now_ms: u64,
    ) -> Result<(), ValidationError> {
        let mut updated = Self::suspended(config)?;
        updated.mode = self.mode;
        updated.last_run = self.last_run;
        for duty in Duty::ALL {
            let last = updated.last_run.get(duty.slot()).copied().flatten();
            let next = updated.period(duty, updated.mode).map(|period| match last {
                Some(ran) => ran.saturating_add(period).max(now_ms),
                None => now_ms,
            });
            updated.set_slot(duty, next, last);
        }
        *self = updated;
        Ok(())
    }

    fn set_slot(&mut self, duty: Duty, next: Option<u64>, last: Option<u64>) {
        if let Some(slot) = self.next.get_mut(duty.slot()) {
            *slot = next;
        }
        if let Some(slot) = self.last_run.get_mut(duty.slot()) {
            *slot = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// Runs the schedule from `from` to `until`, waking only at deadlines, and returns every
    /// (time, duty) that ran.
    fn run(schedule: &mut Schedule, from: u64, until: u64) -> Vec<(u64, Duty)> {
        let mut ran = Vec::new();
        let mut now = from;
        while now <= until {
            while let Some(d) = schedule.poll(now) {
                ran.push((now, d));
            }
            match schedule.next_deadline() {
                Some(t) => {
                    assert!(t > now, "deadline {t} is not in the future of {now}");
                    now = t;
                }
                None => break,
            }
        }
        ran
    }

    fn times(ran: &[(u64, Duty)], duty: Duty) -> Vec<u64> {
        ran.iter()
            .filter(|(_, d)| *d == duty)
            .map(|(t, _)| *t)
            .collect()
    }

    fn assert_period(ts: &[u64], period: u64) {
        assert!(
            ts.windows(2).all(|w| w[1] - w[0] == period),
            "period {period}: {ts:?}"
        );
    }

    #[test]
    fn a_day_runs_every_duty_on_its_period() {
        let day = 24 * 3_600 * 1_000;
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        let ran = run(&mut s, 0, day);
        for (duty, period) in [
            (Duty::HealthCheck, 5_000),
            (Duty::Heartbeat, 10_000),
            (Duty::ShadowSync, 15_000),
            (Duty::Telemetry, 30_000),
        ] {
            let ts = times(&ran, duty);
            assert_eq!(ts.len() as u64, day / period + 1, "{duty:?}");
            assert_period(&ts, period);
        }
    }

    #[test]
    fn degraded_mode_slows_telemetry_threefold_and_recovers() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        let mut ran = run(&mut s, 0, 60_000); // telemetry at 0, 30, 60 s
        s.set_mode(Mode::Degraded, 61_000);
        ran.extend(run(&mut s, 61_000, 600_000));
        let telemetry = times(&ran, Duty::Telemetry);
        assert_eq!(&telemetry[..4], &[0, 30_000, 60_000, 150_000]);
        assert_period(&telemetry[2..], 90_000);
        // Heartbeats are untouched by degraded mode.
        assert_period(&times(&ran, Duty::Heartbeat), 10_000);
        s.set_mode(Mode::Normal, 600_500);
        let after = run(&mut s, 600_500, 700_000);
        let last_degraded = *telemetry.last().unwrap();
        let resumed = times(&after, Duty::Telemetry);
        assert_eq!(resumed[0], (last_degraded + 30_000).max(600_500));
        assert_period(&resumed, 30_000);
    }

    #[test]
    fn maintenance_pauses_telemetry_only_and_suspended_runs_nothing() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        s.set_mode(Mode::Maintenance, 0);
        let ran = run(&mut s, 0, 120_000);
        assert!(times(&ran, Duty::Telemetry).is_empty());
        assert_eq!(times(&ran, Duty::Heartbeat).len(), 13);
        s.set_mode(Mode::Suspended, 120_000);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.poll(u64::MAX), None);
        s.set_mode(Mode::Normal, 200_000);
        assert_eq!(s.poll(200_000), Some(Duty::HealthCheck));
    }

    #[test]
    fn run_now_pulls_a_sync_forward_and_restarts_its_period() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        run(&mut s, 0, 0);
        s.run_now(Duty::ShadowSync, 4_000);
        assert_eq!(s.deadline(Duty::ShadowSync), Some(4_000));
        let ran = run(&mut s, 4_000, 40_000);
        assert_eq!(times(&ran, Duty::ShadowSync), [4_000, 19_000, 34_000]);
    }

    #[test]
    fn a_late_wakeup_runs_once_and_does_not_burst() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        run(&mut s, 0, 0);
        // Asleep for 95 s: each duty runs exactly once on waking.
        let mut woke = Vec::new();
        while let Some(d) = s.poll(95_000) {
            woke.push(d);
        }
        assert_eq!(woke, Duty::ALL);
        assert_eq!(s.deadline(Duty::Heartbeat), Some(105_000));
    }

    #[test]
    fn invalid_configurations_are_rejected_and_change_nothing() {
        let zero = DeviceConfig {
            heartbeat_interval_ms: 0,
            ..DeviceConfig::DEFAULT
        };
        assert_eq!(
            Schedule::new(&zero, 0),
            Err(ValidationError::ZeroInterval(Duty::Heartbeat))
        );
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        let before = s.clone();
        assert!(s.set_config(&zero, 5).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn a_new_configuration_respaces_from_the_last_run() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, 0).unwrap();
        run(&mut s, 0, 30_000);
        let slower = DeviceConfig {
            version: 1,
            telemetry_interval_ms: 60_000,
            ..DeviceConfig::DEFAULT
        };
        s.set_config(&slower, 31_000).unwrap();
        assert_eq!(s.deadline(Duty::Telemetry), Some(90_000));
        assert_eq!(s.period(Duty::Telemetry, Mode::Degraded), Some(180_000));
    }

    #[test]
    fn saturates_at_the_end_of_time() {
        let mut s = Schedule::new(&DeviceConfig::DEFAULT, u64::MAX - 1).unwrap();
        assert_eq!(s.poll(u64::MAX - 1), Some(Duty::HealthCheck));
        assert_eq!(s.deadline(Duty::HealthCheck), Some(u64::MAX));
    }
}
