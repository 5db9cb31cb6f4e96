//! Anomaly detection at the fog: out of range, stuck sensor, sudden jump.

use super::{FlowError, Quantity, abs_diff, checked_value};
use crate::telemetry::Reading;

/// What an [`AnomalyDetector`] looks for; `None` switches a check off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AnomalyConfig {
    /// Plausible values, inclusive: anything outside is [`Anomalies::out_of_range`].
    pub range: Option<(f32, f32)>,
    /// This many identical consecutive readings (at least 2) make the sensor
    /// [`Anomalies::stuck`]: real analog signals carry noise.
    pub stuck_after: Option<u16>,
    /// A change larger than this from the previous reading is a [`Anomalies::jump`].
    pub max_jump: Option<f32>,
}

impl AnomalyConfig {
    /// Checks that the range is finite and ordered, `stuck_after >= 2` and the jump threshold
    /// finite and non-negative.
    pub fn validate(&self) -> Result<(), FlowError> {
        let range_ok = self
            .range
            .is_none_or(|(lo, hi)| lo.is_finite() && hi.is_finite() && lo <= hi);
        let stuck_ok = self.stuck_after.is_none_or(|n| n >= 2);
        let jump_ok = self.max_jump.is_none_or(|j| j.is_finite() && j >= 0.0);
        if range_ok && stuck_ok && jump_ok {
            Ok(())
        } else {
            Err(FlowError::InvalidConfig)
        }
    }
}

/// The anomalies one reading shows; several can hold at once.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Anomalies {
    /// The value is outside the configured range.
    pub out_of_range: bool,
    /// The value repeated identically at least `stuck_after` times in a row.
    pub stuck: bool,
    /// The value moved by more than `max_jump` since the previous reading.
    pub jump: bool,
}

impl Anomalies {
    /// True when any anomaly holds.
    pub const fn any(&self) -> bool {
        self.out_of_range || self.stuck || self.jump
    }
}

/// Checks one stream (one sensor, one quantity) for implausible readings.
///
/// ```
/// use iot_core::flow::{AnomalyConfig, AnomalyDetector};
/// use iot_core::telemetry::{Measurement, Reading};
///
/// let mut check = AnomalyDetector::new(AnomalyConfig {
///     range: Some((-20.0, 60.0)),
///     stuck_after: Some(3),
///     max_jump: Some(5.0),
/// })?;
/// let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
/// assert!(!check.check(&t(0, 21.0))?.any());
/// assert!(check.check(&t(1, 35.0))?.jump);
/// assert!(check.check(&t(2, 85.0))?.out_of_range);
/// # Ok::<(), iot_core::flow::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AnomalyDetector {
    config: AnomalyConfig,
    previous: Option<(Quantity, f32, u64)>,
    repeats: u16,
}

impl AnomalyDetector {
    /// A detector with a validated configuration.
    pub fn new(config: AnomalyConfig) -> Result<Self, FlowError> {
        config.validate()?;
        Ok(Self {
            config,
            previous: None,
            repeats: 0,
        })
    }

    /// The configuration.
    pub const fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// How many identical readings in a row end with the latest one.
    pub const fn repeats(&self) -> u16 {
        self.repeats
    }

    /// Checks `reading` against the configuration and the previous reading of the stream.
    ///
    /// NaN and infinities are refused as [`FlowError::Measurement`] (a sensor sending them is
    /// broken in a way no threshold describes), and leave the detector unchanged, as do
    /// readings of another quantity or older than the previous one.
    pub fn check(&mut self, reading: &Reading) -> Result<Anomalies, FlowError> {
        let (quantity, value) = checked_value(&reading.measurement)?;
        let mut found = Anomalies {
            out_of_range: self
                .config
                .range
                .is_some_and(|(lo, hi)| value < lo || value > hi),
            ..Anomalies::default()
        };
        match self.previous {
            Some((q, _, _)) if q != quantity => return Err(FlowError::QuantityMismatch),
            Some((_, _, at)) if reading.at_ms < at => return Err(FlowError::OutOfOrder),
            Some((_, prev, _)) => {
                #[allow(clippy::float_cmp)] // "identical" is the point of a stuck-sensor check
                let same = value == prev;
                self.repeats = if same {
                    self.repeats.saturating_add(1)
                } else {
                    1
                };
                found.jump = self
                    .config
                    .max_jump
                    .is_some_and(|max| abs_diff(value, prev) > f64::from(max));
            }
            None => self.repeats = 1,
        }
        found.stuck = self.config.stuck_after.is_some_and(|n| self.repeats >= n);
        self.previous = Some((quantity, value, reading.at_ms));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Measurement;

    fn t(at_ms: u64, celsius: f32) -> Reading {
        Reading::new(at_ms, Measurement::Temperature { celsius })
    }

    fn detector() -> AnomalyDetector {
        AnomalyDetector::new(AnomalyConfig {
            range: Some((-10.0, 50.0)),
            stuck_after: Some(4),
            max_jump: Some(3.0),
        })
        .unwrap()
    }

    #[test]
    fn range_is_inclusive() {
        let mut d = detector();
        assert!(!d.check(&t(0, 50.0)).unwrap().out_of_range);
        let mut d = detector();
        assert!(d.check(&t(0, 50.5)).unwrap().out_of_range);
        let mut d = detector();
        assert!(d.check(&t(0, -10.5)).unwrap().out_of_range);
    }

    #[test]
    fn stuck_sensor_is_flagged_after_n_identical_readings() {
        let mut d = detector();
        for i in 0..3 {
            assert!(!d.check(&t(i, 21.25)).unwrap().stuck, "reading {i}");
        }
        assert!(d.check(&t(3, 21.25)).unwrap().stuck);
        assert!(d.check(&t(4, 21.25)).unwrap().stuck);
        assert_eq!(d.repeats(), 5);
        // Any change clears it.
        assert!(!d.check(&t(5, 21.26)).unwrap().stuck);
        assert_eq!(d.repeats(), 1);
    }

    #[test]
    fn sudden_jump_is_flagged_both_ways() {
        let mut d = detector();
        assert!(!d.check(&t(0, 20.0)).unwrap().jump);
        assert!(!d.check(&t(1, 23.0)).unwrap().jump); // exactly the threshold
        let spike = d.check(&t(2, 40.0)).unwrap();
        assert!(spike.jump && !spike.out_of_range && spike.any());
        assert!(d.check(&t(3, 21.0)).unwrap().jump);
    }

    #[test]
    fn refused_readings_leave_state_unchanged() {
        let mut d = detector();
        assert!(!d.check(&t(10, 20.0)).unwrap().any());
        assert!(d.check(&t(11, f32::INFINITY)).is_err());
        assert_eq!(d.check(&t(5, 20.0)), Err(FlowError::OutOfOrder));
        let h = Reading::new(12, Measurement::Humidity { percent: 1.0 });
        assert_eq!(d.check(&h), Err(FlowError::QuantityMismatch));
        assert_eq!(d.repeats(), 1);
        assert!(!d.check(&t(12, 21.0)).unwrap().any());
    }

    #[test]
    fn invalid_configurations_are_refused() {
        for config in [
            AnomalyConfig {
                range: Some((5.0, 1.0)),
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                stuck_after: Some(1),
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                max_jump: Some(f32::NAN),
                ..AnomalyConfig::default()
            },
        ] {
            assert_eq!(AnomalyDetector::new(config), Err(FlowError::InvalidConfig));
        }
        let mut off = AnomalyDetector::new(AnomalyConfig::default()).unwrap();
        for i in 0..10 {
            assert!(!off.check(&t(i, 1e9)).unwrap().any());
        }
        assert_eq!(off.config(), &AnomalyConfig::default());
    }
}
