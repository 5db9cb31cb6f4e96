//! Edge and fog data reduction: report-on-change, window aggregation, anomaly detection and
//! per-tier message accounting.
//!
//! Everything here is `no_std`, allocation-free and panic-free on input, so the same filters run
//! on a battery-powered sensor (edge), on a gateway (fog) and in a backend replaying a trace.
//!
//! | stage | type | typical tier |
//! |---|---|---|
//! | send only meaningful changes, with a heartbeat | [`ReportOnChange`] | edge |
//! | min / max / mean / count over time windows | [`WindowAggregator`], [`KeyedWindowAggregator`] | fog |
//! | out of range, stuck sensor, sudden jump | [`AnomalyDetector`] | fog |
//! | messages in and out per tier, reduction | [`FlowStats`] | any |
//!
//! Store-and-forward during outages belongs to the transport's outbox, and multi-resolution
//! retention to the backend (`iot-fleet`); this module only produces what they carry.
//!
//! ```
//! use iot_core::flow::{Decision, FlowStats, ReportOnChange, Tier, WindowAggregator};
//! use iot_core::telemetry::{Measurement, Reading};
//!
//! let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
//! // Edge: the source material's +/-0.5 degC deadband, and a heartbeat at least every 10 min.
//! let mut edge = ReportOnChange::new(0.5)?.with_max_silence_ms(600_000);
//! // Fog: one-minute windows.
//! let mut fog = WindowAggregator::new(60_000)?;
//! let mut stats = FlowStats::new();
//!
//! let mut closed = None;
//! for (i, celsius) in [21.0, 21.1, 21.2, 21.8, 21.7, 22.5].into_iter().enumerate() {
//!     let reading = t(i as u64 * 20_000, celsius);
//!     stats.record_in(Tier::Edge, 1);
//!     if let Decision::Report(_) = edge.offer(&reading)? {
//!         stats.record_out(Tier::Edge, 1);
//!         stats.record_in(Tier::Fog, 1);
//!         if let Some(window) = fog.push(&reading)? {
//!             stats.record_out(Tier::Fog, 1);
//!             closed = Some(window);
//!         }
//!     }
//! }
//! // 21.0 (first), 21.8 (+0.8) and 22.5 (+0.7) crossed the deadband.
//! assert_eq!(stats.tier(Tier::Edge).messages_out, 3);
//! let window = closed.expect("the 22.5 reading closed the first minute");
//! assert_eq!(window.aggregate.count(), 1);
//! assert!(stats.reduction(Tier::Edge).expect("edge saw input") > 0.4);
//! # Ok::<(), iot_core::flow::FlowError>(())
//! ```

mod aggregate;
mod anomaly;
mod report;
mod stats;

pub use aggregate::{
    Aggregate, KeyedWindow, KeyedWindowAggregator, WindowAggregator, WindowSummary,
};
pub use anomaly::{Anomalies, AnomalyConfig, AnomalyDetector};
pub use report::{Decision, ReportOnChange, ReportReason};
pub use stats::{FlowStats, TierCounts};

use crate::error::{Error, ErrorKind};
use crate::telemetry::{Measurement, MeasurementError};

/// Where in the edge-fog-cloud architecture a node or a processing step sits.
///
/// The architecture has exactly three tiers, so the enum is exhaustive and ordered from the
/// physical world upward (`Edge < Fog < Cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Tier {
    /// Sensors, actuators and the microcontrollers next to them.
    Edge,
    /// Gateways near the devices: aggregation, anomaly detection, store-and-forward.
    Fog,
    /// Ingestion, storage, analytics and applications in a data centre.
    Cloud,
}

impl Tier {
    /// The three tiers, from the edge upward.
    pub const ALL: [Tier; 3] = [Tier::Edge, Tier::Fog, Tier::Cloud];

    /// The next tier up, or `None` for the cloud.
    pub const fn upstream(self) -> Option<Tier> {
        match self {
            Tier::Edge => Some(Tier::Fog),
            Tier::Fog => Some(Tier::Cloud),
            Tier::Cloud => None,
        }
    }
}

/// Which quantity a stream carries: the measurement's wire code, plus the id of a
/// [`Measurement::Custom`] quantity (zero for the built-in ones).
///
/// Filters and aggregators hold one stream each and refuse readings of another quantity, so
/// that humidity never leaks into a temperature average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Quantity {
    /// The wire code of [`Measurement::code`].
    pub code: u8,
    /// The application id of a custom quantity; zero otherwise.
    pub custom_id: u16,
}

impl Quantity {
    /// The quantity `measurement` measures.
    pub const fn of(measurement: &Measurement) -> Self {
        let custom_id = match *measurement {
            Measurement::Custom { id, .. } => id,
            _ => 0,
        };
        Self {
            code: measurement.code(),
            custom_id,
        }
    }
}

/// Why a flow stage refused its input or its configuration.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlowError {
    /// The reading is outside its physical domain (NaN, infinite, percentage over 100).
    #[error("reading rejected: {0}")]
    Measurement(#[from] MeasurementError),
    /// A configuration value is NaN, negative, zero where it must be positive, or inverted.
    #[error("invalid flow configuration")]
    InvalidConfig,
    /// The reading is older than one the stage already accepted.
    #[error("reading is older than the last one accepted")]
    OutOfOrder,
    /// The reading carries another quantity than the stream it was offered to.
    #[error("reading carries another quantity than this stream")]
    QuantityMismatch,
    /// A fixed capacity (number of keys) is full.
    #[error("flow stage capacity exceeded")]
    Capacity,
}

impl Error for FlowError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Measurement(e) => e.kind(),
            Self::InvalidConfig | Self::QuantityMismatch => ErrorKind::InvalidInput,
            Self::OutOfOrder => ErrorKind::Clock,
            Self::Capacity => ErrorKind::Capacity,
        }
    }
}

/// The absolute difference of two finite `f32` values, computed in `f64` so that it never
/// overflows to infinity.
fn abs_diff(a: f32, b: f32) -> f64 {
    let d = f64::from(a) - f64::from(b);
    if d < 0.0 { -d } else { d }
}

/// Validates a reading and returns its quantity and value.
fn checked_value(measurement: &Measurement) -> Result<(Quantity, f32), FlowError> {
    measurement.validate()?;
    Ok((Quantity::of(measurement), measurement.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered_upward_and_chain_to_the_cloud() {
        assert!(Tier::Edge < Tier::Fog && Tier::Fog < Tier::Cloud);
        assert_eq!(Tier::Edge.upstream(), Some(Tier::Fog));
        assert_eq!(Tier::Fog.upstream(), Some(Tier::Cloud));
        assert_eq!(Tier::Cloud.upstream(), None);
    }

    #[test]
    fn custom_quantities_are_told_apart_by_id() {
        let a = Quantity::of(&Measurement::Custom { id: 1, value: 0.0 });
        let b = Quantity::of(&Measurement::Custom { id: 2, value: 0.0 });
        assert_ne!(a, b);
        assert_eq!(
            Quantity::of(&Measurement::Temperature { celsius: 1.0 }),
            Quantity::of(&Measurement::Temperature { celsius: 9.0 })
        );
    }

    #[test]
    fn differences_of_extreme_values_stay_finite() {
        assert!(abs_diff(f32::MAX, f32::MIN).is_finite());
        assert_eq!(abs_diff(1.0, 3.5), 2.5);
        assert_eq!(abs_diff(3.5, 1.0), 2.5);
    }

    #[test]
    fn flow_errors_map_to_kinds() {
        assert_eq!(
            FlowError::Measurement(MeasurementError::NotFinite).kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(FlowError::Capacity.kind(), ErrorKind::Capacity);
        assert_eq!(FlowError::OutOfOrder.kind(), ErrorKind::Clock);
    }
}
