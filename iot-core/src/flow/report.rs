//! Report-on-change with a deadband and an optional heartbeat.

use super::{FlowError, Quantity, abs_diff, checked_value};
use crate::telemetry::Reading;

/// Why a [`ReportOnChange`] filter let a reading through.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReportReason {
    /// Nothing was reported yet (or the filter was reset).
    First,
    /// The value moved by more than the deadband from the last reported value.
    Changed,
    /// The value stayed within the deadband, but the maximum silence has elapsed.
    Heartbeat,
}

/// What to do with one reading.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Decision {
    /// Send it upstream.
    Report(ReportReason),
    /// Drop it: the receiver's last value is still within the deadband.
    Suppress,
}

impl Decision {
    /// True for [`Decision::Report`].
    pub const fn is_report(self) -> bool {
        matches!(self, Decision::Report(_))
    }
}

/// Passes a reading upstream only when it differs from the last *reported* value by more than
/// a deadband, or when nothing was reported for `max_silence_ms`.
///
/// Comparing with the last reported value (not the last sample) means a slow drift is reported
/// as soon as it adds up to more than the deadband, so the receiver's view is never further
/// than the deadband from the truth, except for readings the heartbeat has not yet covered.
/// A change of exactly the deadband is suppressed: a deadband of 0.5 keeps the receiver within
/// +/-0.5 of the sensor. A deadband of zero reports every change.
///
/// One filter serves one stream (one sensor, one quantity); readings of another quantity are
/// refused with [`FlowError::QuantityMismatch`], older readings with [`FlowError::OutOfOrder`].
///
/// ```
/// use iot_core::flow::{Decision, ReportOnChange, ReportReason};
/// use iot_core::telemetry::{Measurement, Reading};
///
/// let mut filter = ReportOnChange::new(0.5)?.with_max_silence_ms(60_000);
/// let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
/// assert_eq!(filter.offer(&t(0, 20.0))?, Decision::Report(ReportReason::First));
/// assert_eq!(filter.offer(&t(10_000, 20.4))?, Decision::Suppress);
/// assert_eq!(filter.offer(&t(20_000, 20.6))?, Decision::Report(ReportReason::Changed));
/// assert_eq!(filter.offer(&t(80_000, 20.6))?, Decision::Report(ReportReason::Heartbeat));
/// # Ok::<(), iot_core::flow::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReportOnChange {
    deadband: f32,
    max_silence_ms: Option<u64>,
    last_reported: Option<Reading>,
    last_seen_ms: u64,
}

impl ReportOnChange {
    /// A filter with the given deadband (in the unit of the stream's quantity).
    ///
    /// Fails with [`FlowError::InvalidConfig`] when the deadband is negative, NaN or infinite.
    pub const fn new(deadband: f32) -> Result<Self, FlowError> {
        if !deadband.is_finite() || deadband < 0.0 {
            return Err(FlowError::InvalidConfig);
        }
        Ok(Self {
            deadband,
            max_silence_ms: None,
            last_reported: None,
            last_seen_ms: 0,
        })
    }

    /// Also reports an unchanged value once `ms` have passed since the last report, so that a
    /// steady sensor is told apart from a dead one. Zero disables the heartbeat.
    #[must_use]
    pub const fn with_max_silence_ms(mut self, ms: u64) -> Self {
        self.max_silence_ms = if ms == 0 { None } else { Some(ms) };
        self
    }

    /// The deadband.
    pub const fn deadband(&self) -> f32 {
        self.deadband
    }

    /// The heartbeat period, if any.
    pub const fn max_silence_ms(&self) -> Option<u64> {
        self.max_silence_ms
    }

    /// The last reading that was reported, which is the receiver's current view.
    pub const fn last_reported(&self) -> Option<&Reading> {
        self.last_reported.as_ref()
    }

    /// Forgets the last report, so that the next reading is reported as
    /// [`ReportReason::First`] (for example after the link was re-established).
    pub fn reset(&mut self) {
        self.last_reported = None;
    }

    /// Decides whether `reading` goes upstream; a reported reading becomes the new reference.
    pub fn offer(&mut self, reading: &Reading) -> Result<Decision, FlowError> {
        let (quantity, value) = checked_value(&reading.measurement)?;
        let Some(last) = self.last_reported else {
            self.accept(reading);
            return Ok(Decision::Report(ReportReason::First));
        };
        if Quantity::of(&last.measurement) != quantity {
            return Err(FlowError::QuantityMismatch);
        }
        if reading.at_ms < self.last_seen_ms {
            return Err(FlowError::OutOfOrder);
        }
        self.last_seen_ms = reading.at_ms;
        let reason = if abs_diff(value, last.measurement.value()) > f64::from(self.deadband) {
            ReportReason::Changed
        } else if self
            .max_silence_ms
            .is_some_and(|max| reading.at_ms.saturating_sub(last.at_ms) >= max)
        {
            ReportReason::Heartbeat
        } else {
            return Ok(Decision::Suppress);
        };
        self.accept(reading);
        Ok(Decision::Report(reason))
    }

    fn accept(&mut self, reading: &Reading) {
        self.last_reported = Some(*reading);
        self.last_seen_ms = self.last_seen_ms.max(reading.at_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Measurement, MeasurementError};

    fn t(at_ms: u64, celsius: f32) -> Reading {
        Reading::new(at_ms, Measurement::Temperature { celsius })
    }

    #[test]
    fn deadband_of_half_a_degree_suppresses_small_changes() {
        let mut f = ReportOnChange::new(0.5).unwrap();
        assert!(f.offer(&t(0, 21.0)).unwrap().is_report());
        for (i, c) in [21.2, 20.8, 21.5, 20.5].into_iter().enumerate() {
            assert_eq!(
                f.offer(&t(i as u64 + 1, c)).unwrap(),
                Decision::Suppress,
                "{c}"
            );
        }
        assert_eq!(
            f.offer(&t(9, 20.4)).unwrap(),
            Decision::Report(ReportReason::Changed)
        );
        assert_eq!(f.last_reported(), Some(&t(9, 20.4)));
    }

    #[test]
    fn slow_drift_is_reported_once_it_adds_up() {
        let mut f = ReportOnChange::new(0.5).unwrap();
        let mut reports = 0;
        // +0.1 per step: each step is small, the sum is not.
        for i in 0..=20u16 {
            if f.offer(&t(u64::from(i), 20.0 + f32::from(i) * 0.1))
                .unwrap()
                .is_report()
            {
                reports += 1;
            }
        }
        // First, then about every 6 steps (0.6 > 0.5): at least 3 reports over +2.0 degC.
        assert!(reports >= 4, "{reports}");
        let view = f.last_reported().unwrap().measurement.value();
        assert!((22.0 - view).abs() <= 0.5);
    }

    #[test]
    fn heartbeat_reports_a_steady_value_after_max_silence() {
        let mut f = ReportOnChange::new(0.5)
            .unwrap()
            .with_max_silence_ms(60_000);
        assert!(f.offer(&t(0, 5.0)).unwrap().is_report());
        assert_eq!(f.offer(&t(59_999, 5.0)).unwrap(), Decision::Suppress);
        assert_eq!(
            f.offer(&t(60_000, 5.0)).unwrap(),
            Decision::Report(ReportReason::Heartbeat)
        );
        assert_eq!(f.offer(&t(119_999, 5.1)).unwrap(), Decision::Suppress);
        assert_eq!(
            f.offer(&t(120_000, 5.1)).unwrap(),
            Decision::Report(ReportReason::Heartbeat)
        );
    }

    #[test]
    fn without_heartbeat_a_steady_value_is_never_repeated() {
        let mut f = ReportOnChange::new(0.5).unwrap().with_max_silence_ms(0);
        assert_eq!(f.max_silence_ms(), None);
        assert!(f.offer(&t(0, 5.0)).unwrap().is_report());
        assert_eq!(f.offer(&t(u64::MAX, 5.0)).unwrap(), Decision::Suppress);
    }

    #[test]
    fn bad_input_is_refused_without_changing_state() {
        let mut f = ReportOnChange::new(0.5).unwrap();
        assert_eq!(
            f.offer(&t(0, f32::NAN)),
            Err(FlowError::Measurement(MeasurementError::NotFinite))
        );
        assert!(f.offer(&t(10, 1.0)).unwrap().is_report());
        assert_eq!(f.offer(&t(5, 9.0)), Err(FlowError::OutOfOrder));
        let humidity = Reading::new(20, Measurement::Humidity { percent: 50.0 });
        assert_eq!(f.offer(&humidity), Err(FlowError::QuantityMismatch));
        assert_eq!(f.last_reported(), Some(&t(10, 1.0)));
        f.reset();
        assert_eq!(
            f.offer(&humidity).unwrap(),
            Decision::Report(ReportReason::First)
        );
    }

    #[test]
    fn invalid_deadbands_are_refused() {
        for d in [-0.1, f32::NAN, f32::INFINITY] {
            assert_eq!(ReportOnChange::new(d), Err(FlowError::InvalidConfig));
        }
        let f = ReportOnChange::new(0.0).unwrap();
        assert_eq!(f.deadband(), 0.0);
    }

    #[test]
    fn extreme_values_do_not_overflow_the_comparison() {
        let mut f = ReportOnChange::new(f32::MAX).unwrap();
        assert!(f.offer(&t(0, f32::MIN)).unwrap().is_report());
        assert_eq!(
            f.offer(&t(1, f32::MAX)).unwrap(),
            Decision::Report(ReportReason::Changed)
        );
    }
}
