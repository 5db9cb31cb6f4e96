//! Why a configuration or a set of health thresholds is invalid: the errors that
//! [`config`](crate::config), [`health`](crate::health) and [`schedule`](crate::schedule)
//! validation share.

use iot_core::{Error, ErrorKind};

use crate::duty::Duty;

/// A pair of health thresholds (warning and critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Threshold {
    /// Battery charge.
    BatteryPercent,
    /// Battery voltage.
    BatteryVoltage,
    /// Received signal strength.
    Rssi,
    /// Consecutive send failures.
    SendFailures,
    /// Free memory.
    FreeMemory,
    /// Errors per check.
    Errors,
}

/// Why a configuration is invalid.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValidationError {
    /// An interval is zero.
    #[error("{0:?} interval is zero")]
    ZeroInterval(Duty),
    /// An interval exceeds [`MAX_INTERVAL_MS`](crate::config::MAX_INTERVAL_MS) (one day).
    #[error("{0:?} interval exceeds one day")]
    IntervalTooLong(Duty),
    /// The telemetry deadband is negative or not a number.
    #[error("telemetry deadband must be a finite, non-negative number")]
    InvalidDeadband,
    /// The degraded-mode telemetry factor is outside `1..=100`.
    #[error("degraded telemetry factor must be within 1..=100")]
    InvalidDegradedFactor,
    /// A warning threshold lies beyond its critical threshold.
    #[error("{0:?} warning threshold lies beyond its critical threshold")]
    ThresholdOrder(Threshold),
    /// A battery percentage exceeds 100.
    #[error("battery threshold above 100 %")]
    PercentOutOfRange,
    /// The plausible reading range is empty or not finite.
    #[error("reading range is empty or not finite")]
    InvalidReadingRange,
    /// A stuck-sensor run length of 1 would flag every reading.
    #[error("stuck-sensor run length must be 0 (off) or at least 2")]
    StuckReadingsTooSmall,
    /// Recovery needs at least one healthy check.
    #[error("recovery needs at least one healthy check")]
    ZeroRecoveryChecks,
}

impl Error for ValidationError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}
