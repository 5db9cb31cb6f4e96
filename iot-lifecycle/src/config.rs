//! Versioned device configuration: validation with distinct errors, and a store that applies
//! only strictly newer, valid versions and otherwise keeps the configuration in force.
//!
//! ```
//! use iot_lifecycle::config::{ApplyOutcome, ConfigError, ConfigStore, DeviceConfig, ValidationError};
//! use iot_lifecycle::schedule::Duty;
//!
//! let mut store = ConfigStore::new();
//! let v2 = DeviceConfig { version: 2, telemetry_interval_ms: 60_000, ..DeviceConfig::DEFAULT };
//! assert_eq!(store.apply(v2), Ok(ApplyOutcome::Applied { previous_version: 0 }));
//!
//! // Invalid: rejected with the reason, version 2 stays in force.
//! let bad = DeviceConfig { version: 3, heartbeat_interval_ms: 0, ..DeviceConfig::DEFAULT };
//! assert_eq!(store.apply(bad), Err(ConfigError::Invalid(ValidationError::ZeroInterval(Duty::Heartbeat))));
//! assert_eq!(store.current().version, 2);
//!
//! // Older: rejected as stale.
//! let old = DeviceConfig { version: 1, ..DeviceConfig::DEFAULT };
//! assert!(matches!(store.apply(old), Err(ConfigError::Stale { current: 2, offered: 1 })));
//! ```

use iot_core::codec::DecodeError;
use iot_core::{Error, ErrorKind};
use minicbor::{CborLen, Decode, Encode};

use crate::duty::Duty;
use crate::health::HealthThresholds;
pub use crate::validation::{Threshold, ValidationError};
use crate::wire;

/// The longest allowed interval: one day.
pub const MAX_INTERVAL_MS: u32 = 86_400_000;

/// Everything a backend can configure on a device: the payload of `MessageKind::ConfigUpdate`.
///
/// Defaults ([`DeviceConfig::DEFAULT`], version 0) are the device lab's: heartbeat every
/// 10 s, telemetry every 30 s, health check every 5 s, shadow sync every 15 s, deadband 0.5,
/// telemetry 3x slower in degraded mode, and [`HealthThresholds::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, CborLen)]
#[cbor(map)]
pub struct DeviceConfig {
    /// Configuration version; only a strictly newer version replaces the one in force.
    #[n(0)]
    pub version: u32,
    /// Milliseconds between heartbeats.
    #[n(1)]
    pub heartbeat_interval_ms: u32,
    /// Milliseconds between telemetry reports.
    #[n(2)]
    pub telemetry_interval_ms: u32,
    /// Milliseconds between health checks.
    #[n(3)]
    pub health_interval_ms: u32,
    /// Milliseconds between shadow synchronisations (changes are also sent at once).
    #[n(4)]
    pub sync_interval_ms: u32,
    /// Report-on-change deadband: smaller changes are not sent early.
    #[n(5)]
    #[cbor(with = "wire::f32c")]
    pub telemetry_deadband: f32,
    /// In `Degraded`, telemetry runs this many times slower.
    #[n(6)]
    pub degraded_telemetry_factor: u8,
    /// Health thresholds.
    #[n(7)]
    pub thresholds: HealthThresholds,
}

/// Hand-written instead of derived, with the derived decoder's behaviour (any map form and
/// integer width, unknown keys skipped, the first missing field reported), sharing its loop
/// with [`HealthThresholds`]' decoder.
impl<'b, C> Decode<'b, C> for DeviceConfig {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        let at = d.position();
        let mut ints = [None::<i64>; 7];
        let (mut deadband, mut thresholds) = (None, None);
        wire::decode_map(d, &mut |key, d| {
            match key {
                0..=4 | 6 => {
                    let max = if key == 6 {
                        u8::MAX.into()
                    } else {
                        u32::MAX.into()
                    };
                    let v = wire::int_in(d, 0, max)?;
                    if let Some(slot) = usize::try_from(key).ok().and_then(|k| ints.get_mut(k)) {
                        *slot = Some(v);
                    }
                }
                5 => deadband = Some(wire::f32c::decode(d, &mut ())?),
                7 => thresholds = Some(HealthThresholds::decode(d, &mut ())?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let int = |key: usize| ints.get(key).copied().flatten();
        Ok(Self {
            version: wire::required(int(0), 0, at)?,
            heartbeat_interval_ms: wire::required(int(1), 1, at)?,
            telemetry_interval_ms: wire::required(int(2), 2, at)?,
            health_interval_ms: wire::required(int(3), 3, at)?,
            sync_interval_ms: wire::required(int(4), 4, at)?,
            telemetry_deadband: wire::present(deadband, 5, at)?,
            degraded_telemetry_factor: wire::required(int(6), 6, at)?,
            thresholds: wire::present(thresholds, 7, at)?,
        })
    }
}

impl DeviceConfig {
    /// The documented defaults, version 0.
    pub const DEFAULT: Self = Self {
        version: 0,
        heartbeat_interval_ms: 10_000,
        telemetry_interval_ms: 30_000,
        health_interval_ms: 5_000,
        sync_interval_ms: 15_000,
        telemetry_deadband: 0.5,
        degraded_telemetry_factor: 3,
        thresholds: HealthThresholds::DEFAULT,
    };

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for duty in Duty::ALL {
            let ms = self.period_ms(duty);
            if ms == 0 {
                return Err(ValidationError::ZeroInterval(duty));
            }
            if ms > MAX_INTERVAL_MS {
                return Err(ValidationError::IntervalTooLong(duty));
            }
        }
        if !self.telemetry_deadband.is_finite() || self.telemetry_deadband < 0.0 {
            return Err(ValidationError::InvalidDeadband);
        }
        if !(1..=100).contains(&self.degraded_telemetry_factor) {
            return Err(ValidationError::InvalidDegradedFactor);
        }
        self.thresholds.validate()
    }

    /// The normal-mode period of `duty` in milliseconds.
    pub const fn period_ms(&self, duty: Duty) -> u32 {
        match duty {
            Duty::HealthCheck => self.health_interval_ms,
            Duty::Heartbeat => self.heartbeat_interval_ms,
            Duty::ShadowSync => self.sync_interval_ms,
            Duty::Telemetry => self.telemetry_interval_ms,
        }
    }

    /// The telemetry interval in force in degraded mode (saturating).
    pub const fn degraded_telemetry_interval_ms(&self) -> u32 {
        self.telemetry_interval_ms
            .saturating_mul(self.degraded_telemetry_factor as u32)
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a configuration was not applied. The configuration in force is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// The offered version is not newer than the one in force (or equals it with
    /// different content).
    #[error("configuration version {offered} is not newer than {current}")]
    Stale {
        /// Version in force.
        current: u32,
        /// Version offered.
        offered: u32,
    },
    /// The configuration failed validation.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ValidationError),
    /// The payload could not be decoded.
    #[error("undecodable configuration: {0}")]
    Decode(#[from] DecodeError),
}

impl Error for ConfigError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Stale { .. } => ErrorKind::Conflict,
            Self::Invalid(e) => e.kind(),
            Self::Decode(e) => e.kind(),
        }
    }
}

/// What [`ConfigStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ApplyOutcome {
    /// The offered configuration is now in force.
    Applied {
        /// The version it replaced.
        previous_version: u32,
    },
    /// The identical configuration was already in force (a redelivery); nothing changed.
    AlreadyCurrent,
}

/// The configuration in force. Only strictly newer, valid versions replace it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConfigStore {
    current: DeviceConfig,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    /// A store holding [`DeviceConfig::DEFAULT`] (version 0).
    pub const fn new() -> Self {
        Self {
            current: DeviceConfig::DEFAULT,
        }
    }

    /// A store holding `initial` (for example read back from flash), if it is valid.
    pub fn with_config(initial: DeviceConfig) -> Result<Self, ValidationError> {
        initial.validate()?;
        Ok(Self { current: initial })
    }

    /// The configuration in force.
    pub const fn current(&self) -> &DeviceConfig {
        &self.current
    }

    /// Applies `candidate` if it is newer and valid; otherwise returns why and keeps the
    /// configuration in force. Redelivery of the configuration in force is not an error.
    pub fn apply(&mut self, candidate: DeviceConfig) -> Result<ApplyOutcome, ConfigError> {
        if candidate.version == self.current.version && candidate == self.current {
            return Ok(ApplyOutcome::AlreadyCurrent);
        }
        if candidate.version <= self.current.version {
            return Err(ConfigError::Stale {
                current: self.current.version,
                offered: candidate.version,
            });
        }
        candidate.validate()?;
        let previous_version = self.current.version;
        self.current = candidate;
        Ok(ApplyOutcome::Applied { previous_version })
    }

    /// Decodes a `ConfigUpdate` payload and applies it.
    pub fn apply_cbor(&mut self, payload: &[u8]) -> Result<ApplyOutcome, ConfigError> {
        let candidate: DeviceConfig = iot_core::codec::decode(payload)?;
        self.apply(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::codec::{decode, encode_into, encoded_len};

    fn v(version: u32) -> DeviceConfig {
        DeviceConfig {
            version,
            ..DeviceConfig::DEFAULT
        }
    }

    #[test]
    fn defaults_are_valid_and_degraded_is_three_times_slower() {
        assert_eq!(DeviceConfig::DEFAULT.validate(), Ok(()));
        assert_eq!(
            DeviceConfig::DEFAULT.degraded_telemetry_interval_ms(),
            90_000
        );
    }

    #[test]
    fn each_validation_error_is_distinct() {
        let d = DeviceConfig::DEFAULT;
        let cases = [
            (
                DeviceConfig {
                    heartbeat_interval_ms: 0,
                    ..d
                },
                ValidationError::ZeroInterval(Duty::Heartbeat),
            ),
            (
                DeviceConfig {
                    telemetry_interval_ms: 0,
                    ..d
                },
                ValidationError::ZeroInterval(Duty::Telemetry),
            ),
            (
                DeviceConfig {
                    health_interval_ms: 0,
                    ..d
                },
                ValidationError::ZeroInterval(Duty::HealthCheck),
            ),
            (
                DeviceConfig {
                    sync_interval_ms: MAX_INTERVAL_MS + 1,
                    ..d
                },
                ValidationError::IntervalTooLong(Duty::ShadowSync),
            ),
            (
                DeviceConfig {
                    telemetry_deadband: -0.1,
                    ..d
                },
                ValidationError::InvalidDeadband,
            ),
            (
                DeviceConfig {
                    telemetry_deadband: f32::NAN,
                    ..d
                },
                ValidationError::InvalidDeadband,
            ),
            (
                DeviceConfig {
                    degraded_telemetry_factor: 0,
                    ..d
                },
                ValidationError::InvalidDegradedFactor,
            ),
            (
                DeviceConfig {
                    degraded_telemetry_factor: 101,
                    ..d
                },
                ValidationError::InvalidDegradedFactor,
            ),
            (
                DeviceConfig {
                    thresholds: HealthThresholds {
                        rssi_critical_dbm: -10,
                        ..HealthThresholds::DEFAULT
                    },
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::Rssi),
            ),
        ];
        for (cfg, err) in cases {
            assert_eq!(cfg.validate(), Err(err));
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn only_strictly_newer_valid_versions_apply() {
        let mut store = ConfigStore::new();
        assert_eq!(
            store.apply(v(5)),
            Ok(ApplyOutcome::Applied {
                previous_version: 0
            })
        );
        assert_eq!(store.apply(v(5)), Ok(ApplyOutcome::AlreadyCurrent));
        let different_same_version = DeviceConfig {
            heartbeat_interval_ms: 1,
            ..v(5)
        };
        assert_eq!(
            store.apply(different_same_version),
            Err(ConfigError::Stale {
                current: 5,
                offered: 5
            })
        );
        assert_eq!(
            store.apply(v(4)),
            Err(ConfigError::Stale {
                current: 5,
                offered: 4
            })
        );
        assert_eq!(
            store.apply(v(6)),
            Ok(ApplyOutcome::Applied {
                previous_version: 5
            })
        );
        assert_eq!(store.current(), &v(6));
    }

    #[test]
    fn invalid_configuration_rolls_back_to_the_one_in_force() {
        let mut store = ConfigStore::with_config(v(7)).unwrap();
        let bad = DeviceConfig {
            degraded_telemetry_factor: 0,
            ..v(8)
        };
        assert_eq!(
            store.apply(bad),
            Err(ConfigError::Invalid(ValidationError::InvalidDegradedFactor))
        );
        assert_eq!(store.current(), &v(7));
        // The rejected version number is not burnt: a corrected v8 applies.
        assert_eq!(
            store.apply(v(8)),
            Ok(ApplyOutcome::Applied {
                previous_version: 7
            })
        );
        assert!(
            ConfigStore::with_config(DeviceConfig {
                health_interval_ms: 0,
                ..v(1)
            })
            .is_err()
        );
    }

    #[test]
    fn wire_form_round_trips_and_bad_bytes_keep_the_config() {
        let cfg = DeviceConfig {
            version: 42,
            telemetry_deadband: 0.25,
            ..DeviceConfig::DEFAULT
        };
        let mut buf = [0u8; 160];
        let n = encode_into(&cfg, &mut buf).unwrap();
        assert_eq!(n, encoded_len(&cfg));
        assert_eq!(decode::<DeviceConfig>(&buf[..n]), Ok(cfg));

        let mut store = ConfigStore::new();
        assert_eq!(
            store.apply_cbor(&buf[..n]),
            Ok(ApplyOutcome::Applied {
                previous_version: 0
            })
        );
        assert_eq!(
            store.apply_cbor(&buf[..n - 1]),
            Err(ConfigError::Decode(DecodeError::Truncated))
        );
        assert_eq!(
            store.apply_cbor(&[0xff]).map_err(|e| e.kind()),
            Err(ErrorKind::Decode)
        );
        assert_eq!(store.current(), &cfg);
    }
}
