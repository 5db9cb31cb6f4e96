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
//! use iot_lifecycle::schedule::{Duty, Intervals, Mode, Schedule};
//!
//! let mut schedule = Schedule::new(Intervals::LAB, 0)?;
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
//! # Ok::<(), iot_lifecycle::schedule::ScheduleError>(())
//! ```

use iot_core::error::{Error, ErrorKind};

/// A periodic duty of the device agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Duty {
    /// Evaluate device health.
    HealthCheck,
    /// Send a liveness signal.
    Heartbeat,
    /// Report shadow state and ask for pending desired changes.
    ShadowSync,
    /// Read sensors and send readings.
    Telemetry,
}

impl Duty {
    /// Every duty, in the order that wins when several are due at once.
    pub const ALL: [Duty; 4] = [
        Self::HealthCheck,
        Self::Heartbeat,
        Self::ShadowSync,
        Self::Telemetry,
    ];

    const fn slot(self) -> usize {
        match self {
            Self::HealthCheck => 0,
            Self::Heartbeat => 1,
            Self::ShadowSync => 2,
            Self::Telemetry => 3,
        }
    }
}

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

/// Periods of the duties, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Intervals {
    /// Health check period.
    pub health_check_ms: u64,
    /// Heartbeat period.
    pub heartbeat_ms: u64,
    /// Shadow sync period.
    pub shadow_sync_ms: u64,
    /// Telemetry period in normal mode.
    pub telemetry_ms: u64,
    /// Telemetry slow-down in degraded mode.
    pub degraded_telemetry_factor: u32,
}

impl Intervals {
    /// The device lab's cadence: health 5 s, heartbeat 10 s, sync 15 s, telemetry 30 s, and
    /// telemetry three times slower when degraded.
    pub const LAB: Self = Self {
        health_check_ms: 5_000,
        heartbeat_ms: 10_000,
        shadow_sync_ms: 15_000,
        telemetry_ms: 30_000,
        degraded_telemetry_factor: 3,
    };

    /// Checks that every period is positive and the degraded factor at least 1.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        for (duty, period) in [
            (Duty::HealthCheck, self.health_check_ms),
            (Duty::Heartbeat, self.heartbeat_ms),
            (Duty::ShadowSync, self.shadow_sync_ms),
            (Duty::Telemetry, self.telemetry_ms),
        ] {
            if period == 0 {
                return Err(ScheduleError::ZeroPeriod(duty));
            }
        }
        if self.degraded_telemetry_factor == 0 {
            return Err(ScheduleError::ZeroDegradedFactor);
        }
        Ok(())
    }

    /// The period of `duty` in `mode`, or `None` when the duty does not run in that mode.
    pub fn period(&self, duty: Duty, mode: Mode) -> Option<u64> {
        match (mode, duty) {
            (Mode::Suspended, _) | (Mode::Maintenance, Duty::Telemetry) => None,
            (_, Duty::HealthCheck) => Some(self.health_check_ms),
            (_, Duty::Heartbeat) => Some(self.heartbeat_ms),
            (_, Duty::ShadowSync) => Some(self.shadow_sync_ms),
            (Mode::Degraded, Duty::Telemetry) => Some(
                self.telemetry_ms
                    .saturating_mul(u64::from(self.degraded_telemetry_factor)),
            ),
            (_, Duty::Telemetry) => Some(self.telemetry_ms),
        }
    }
}

impl Default for Intervals {
    fn default() -> Self {
        Self::LAB
    }
}

/// Why a schedule cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ScheduleError {
    /// A duty's period is zero, which would run it continuously.
    #[error("the period of {0:?} is zero")]
    ZeroPeriod(Duty),
    /// The degraded telemetry factor is zero.
    #[error("the degraded telemetry factor is zero")]
    ZeroDegradedFactor,
}

impl Error for ScheduleError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// Deadlines of the four duties. See the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    intervals: Intervals,
    mode: Mode,
    /// Next deadline per duty (`None`: not running in this mode).
    next: [Option<u64>; 4],
    /// When each duty last ran, to re-space it when its period changes.
    last_run: [Option<u64>; 4],
}

impl Schedule {
    /// A schedule in [`Mode::Normal`] with every duty due at `now_ms`.
    pub fn new(intervals: Intervals, now_ms: u64) -> Result<Self, ScheduleError> {
        intervals.validate()?;
        Ok(Self {
            intervals,
            mode: Mode::Normal,
            next: [Some(now_ms); 4],
            last_run: [None; 4],
        })
    }

    /// A schedule in [`Mode::Suspended`]: nothing runs until [`Schedule::set_mode`].
    pub fn suspended(intervals: Intervals) -> Result<Self, ScheduleError> {
        intervals.validate()?;
        Ok(Self {
            intervals,
            mode: Mode::Suspended,
            next: [None; 4],
            last_run: [None; 4],
        })
    }

    /// The current mode.
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// The periods in force.
    pub const fn intervals(&self) -> &Intervals {
        &self.intervals
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
        let period = self.intervals.period(duty, self.mode)?;
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
        if self.intervals.period(duty, self.mode).is_some() {
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
            let before = self.intervals.period(duty, previous);
            let after = self.intervals.period(duty, mode);
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

    /// Replaces the periods (a new configuration), re-spacing every duty from its last run.
    pub fn set_intervals(
        &mut self,
        intervals: Intervals,
        now_ms: u64,
    ) -> Result<(), ScheduleError> {
        intervals.validate()?;
        self.intervals = intervals;
        for duty in Duty::ALL {
            let last = self.last_run.get(duty.slot()).copied().flatten();
            let next = intervals.period(duty, self.mode).map(|period| match last {
                Some(ran) => ran.saturating_add(period).max(now_ms),
                None => now_ms,
            });
            self.set_slot(duty, next, last);
        }
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
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
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
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
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
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
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
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
        run(&mut s, 0, 0);
        s.run_now(Duty::ShadowSync, 4_000);
        assert_eq!(s.deadline(Duty::ShadowSync), Some(4_000));
        let ran = run(&mut s, 4_000, 40_000);
        assert_eq!(times(&ran, Duty::ShadowSync), [4_000, 19_000, 34_000]);
    }

    #[test]
    fn a_late_wakeup_runs_once_and_does_not_burst() {
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
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
    fn invalid_intervals_are_rejected() {
        let zero = Intervals {
            heartbeat_ms: 0,
            ..Intervals::LAB
        };
        assert_eq!(
            Schedule::new(zero, 0),
            Err(ScheduleError::ZeroPeriod(Duty::Heartbeat))
        );
        let factor = Intervals {
            degraded_telemetry_factor: 0,
            ..Intervals::LAB
        };
        assert_eq!(
            Schedule::new(factor, 0),
            Err(ScheduleError::ZeroDegradedFactor)
        );
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
        assert!(s.set_intervals(zero, 5).is_err());
        assert_eq!(s.intervals(), &Intervals::LAB);
    }

    #[test]
    fn new_intervals_respace_from_the_last_run() {
        let mut s = Schedule::new(Intervals::LAB, 0).unwrap();
        run(&mut s, 0, 30_000);
        let slower = Intervals {
            telemetry_ms: 60_000,
            ..Intervals::LAB
        };
        s.set_intervals(slower, 31_000).unwrap();
        assert_eq!(s.deadline(Duty::Telemetry), Some(90_000));
    }

    #[test]
    fn saturates_at_the_end_of_time() {
        let mut s = Schedule::new(Intervals::LAB, u64::MAX - 1).unwrap();
        assert_eq!(s.poll(u64::MAX - 1), Some(Duty::HealthCheck));
        assert_eq!(s.deadline(Duty::HealthCheck), Some(u64::MAX));
    }
}
