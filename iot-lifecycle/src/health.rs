//! Health monitoring: samples in, a [`HealthReport`] (Healthy / Warning / Critical plus the
//! reasons) out, and the lifecycle events health drives.
//!
//! A [`HealthMonitor`] compares each [`HealthSample`] with its [`HealthThresholds`] and
//! remembers what one sample cannot show: how many identical readings in a row a sensor
//! produced (a stuck sensor), how many errors were counted since the previous check, and how
//! many consecutive checks were healthy (the hysteresis for recovery).
//!
//! ```
//! use iot_lifecycle::health::{HealthFlags, HealthMonitor, HealthSample, HealthStatus, HealthThresholds};
//! use iot_lifecycle::state::{Event, State};
//!
//! let mut monitor = HealthMonitor::new(HealthThresholds::DEFAULT);
//! let report = monitor.check(&HealthSample::new(5_000).with_battery(8, 3_250));
//! assert_eq!(report.status, HealthStatus::Critical);
//! assert!(report.critical.contains(HealthFlags::BATTERY_LOW));
//! assert_eq!(monitor.lifecycle_event(State::Active, &report), Some(Event::HealthCheckFailed));
//!
//! // Recovery needs `recovery_checks` (default 3) healthy checks in a row.
//! let healthy = HealthSample::new(10_000).with_battery(80, 3_900);
//! for _ in 0..2 {
//!     let r = monitor.check(&healthy);
//!     assert_eq!(monitor.lifecycle_event(State::Degraded, &r), None);
//! }
//! let r = monitor.check(&healthy);
//! assert_eq!(monitor.lifecycle_event(State::Degraded, &r), Some(Event::AutoRecovery));
//! ```

use core::fmt;

use minicbor::{CborLen, Decode, Decoder, Encode, Encoder};

use crate::state::{Event, State};
use crate::validation::{Threshold, ValidationError};
use crate::wire;

/// The overall verdict of a health check. Ordered: `Healthy < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum HealthStatus {
    /// Everything within thresholds.
    #[default]
    #[n(0)]
    Healthy,
    /// At least one warning threshold crossed, none critical.
    #[n(1)]
    Warning,
    /// At least one critical threshold crossed.
    #[n(2)]
    Critical,
}

/// A set of health conditions, one bit each (the wire form is the `u16`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthFlags(u16);

impl HealthFlags {
    /// No condition.
    pub const EMPTY: Self = Self(0);
    /// Battery charge at or below its threshold.
    pub const BATTERY_LOW: Self = Self(1 << 0);
    /// Battery voltage at or below its threshold.
    pub const BATTERY_VOLTAGE: Self = Self(1 << 1);
    /// Received signal strength at or below its threshold.
    pub const WEAK_SIGNAL: Self = Self(1 << 2);
    /// Consecutive send failures at or above the threshold.
    pub const SEND_FAILURES: Self = Self(1 << 3);
    /// A sensor reading is outside its plausible range or not a number.
    pub const READING_OUT_OF_RANGE: Self = Self(1 << 4);
    /// The sensor produced the same reading too many times in a row.
    pub const SENSOR_STUCK: Self = Self(1 << 5);
    /// Free memory at or below its threshold.
    pub const LOW_MEMORY: Self = Self(1 << 6);
    /// Errors counted since the previous check at or above the threshold.
    pub const ERRORS: Self = Self(1 << 7);
    /// The device rebooted recently (uptime under the configured window).
    pub const RECENT_REBOOT: Self = Self(1 << 8);
    /// Every defined flag.
    pub const ALL: Self = Self((1 << 9) - 1);

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits, or `None` if an undefined bit is set.
    pub const fn from_bits(bits: u16) -> Option<Self> {
        if bits & !Self::ALL.0 == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Whether every flag of `other` is set here.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets together.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags of `self` that are not in `other`.
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Number of flags set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }
}

impl fmt::Debug for HealthFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(HealthFlags, &str); 9] = [
            (HealthFlags::BATTERY_LOW, "BATTERY_LOW"),
            (HealthFlags::BATTERY_VOLTAGE, "BATTERY_VOLTAGE"),
            (HealthFlags::WEAK_SIGNAL, "WEAK_SIGNAL"),
            (HealthFlags::SEND_FAILURES, "SEND_FAILURES"),
            (HealthFlags::READING_OUT_OF_RANGE, "READING_OUT_OF_RANGE"),
            (HealthFlags::SENSOR_STUCK, "SENSOR_STUCK"),
            (HealthFlags::LOW_MEMORY, "LOW_MEMORY"),
            (HealthFlags::ERRORS, "ERRORS"),
            (HealthFlags::RECENT_REBOOT, "RECENT_REBOOT"),
        ];
        let mut set = f.debug_set();
        for (flag, name) in NAMES {
            if self.contains(flag) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// Where warnings and critical conditions begin. Part of [`DeviceConfig`](crate::config::DeviceConfig).
///
/// Defaults ([`HealthThresholds::DEFAULT`]): battery warning 20 % / critical 10 %, battery
/// voltage warning 3500 mV / critical 3300 mV (one Li-ion cell), RSSI warning -80 dBm /
/// critical -90 dBm, consecutive send failures warning 3 / critical 10, a sensor is stuck
/// after 10 identical readings, plausible readings -40.0 to 85.0 (an industrial temperature
/// range), free memory warning 16 KiB / critical 4 KiB, errors per check warning 1 /
/// critical 10, no recent-reboot warning, recovery after 3 healthy checks in a row.
///
/// Data-quality problems (out of range, stuck) and a recent reboot are warnings only; the
/// other conditions have both levels. A count threshold of 0 disables that check.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, CborLen)]
#[cbor(map)]
pub struct HealthThresholds {
    /// Battery charge (percent) at or below which a warning is raised.
    #[n(0)]
    pub battery_warning_percent: u8,
    /// Battery charge (percent) at or below which the device is critical.
    #[n(1)]
    pub battery_critical_percent: u8,
    /// Battery voltage (mV) at or below which a warning is raised.
    #[n(2)]
    pub battery_warning_mv: u16,
    /// Battery voltage (mV) at or below which the device is critical.
    #[n(3)]
    pub battery_critical_mv: u16,
    /// RSSI (dBm) at or below which a warning is raised.
    #[n(4)]
    pub rssi_warning_dbm: i16,
    /// RSSI (dBm) at or below which the device is critical.
    #[n(5)]
    pub rssi_critical_dbm: i16,
    /// Consecutive send failures at or above which a warning is raised (0: off).
    #[n(6)]
    pub send_failures_warning: u16,
    /// Consecutive send failures at or above which the device is critical (0: off).
    #[n(7)]
    pub send_failures_critical: u16,
    /// Identical readings in a row that mean the sensor is stuck (0: off; 1 is invalid).
    #[n(8)]
    pub stuck_readings: u16,
    /// Lowest plausible reading.
    #[n(9)]
    #[cbor(with = "wire::f32c")]
    pub reading_min: f32,
    /// Highest plausible reading.
    #[n(10)]
    #[cbor(with = "wire::f32c")]
    pub reading_max: f32,
    /// Free memory (bytes) at or below which a warning is raised.
    #[n(11)]
    pub free_memory_warning_bytes: u32,
    /// Free memory (bytes) at or below which the device is critical.
    #[n(12)]
    pub free_memory_critical_bytes: u32,
    /// Errors since the previous check at or above which a warning is raised (0: off).
    #[n(13)]
    pub errors_warning: u32,
    /// Errors since the previous check at or above which the device is critical (0: off).
    #[n(14)]
    pub errors_critical: u32,
    /// Uptime (ms) under which a recent reboot is a warning (0: off).
    #[n(15)]
    pub recent_reboot_ms: u32,
    /// Consecutive healthy checks a degraded device needs before `AutoRecovery` (>= 1).
    #[n(16)]
    pub recovery_checks: u16,
}

/// Keys of the integer fields of [`HealthThresholds`] and their ranges (keys 9 and 10, the
/// floats, are read apart).
const THRESHOLD_RANGES: [(i64, i64); 17] = {
    const U8: (i64, i64) = (0, u8::MAX as i64);
    const U16: (i64, i64) = (0, u16::MAX as i64);
    const I16: (i64, i64) = (i16::MIN as i64, i16::MAX as i64);
    const U32: (i64, i64) = (0, u32::MAX as i64);
    [
        U8, U8, U16, U16, I16, I16, U16, U16, U16, U32, U32, U32, U32, U32, U32, U32, U16,
    ]
};

/// Hand-written instead of derived, with the derived decoder's behaviour (any map form and
/// integer width, unknown keys skipped, the first missing field reported): the derived one
/// is 2.5 KB of riscv32 code, this one shares its loop with
/// [`DeviceConfig`](crate::config::DeviceConfig)'s.
impl<'b, C> Decode<'b, C> for HealthThresholds {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        let at = d.position();
        let mut ints = [None::<i64>; 17];
        let (mut reading_min, mut reading_max) = (None, None);
        wire::decode_map(d, &mut |key, d| {
            match key {
                9 => reading_min = Some(wire::f32c::decode(d, &mut ())?),
                10 => reading_max = Some(wire::f32c::decode(d, &mut ())?),
                _ => {
                    let Some((slot, &(min, max))) = usize::try_from(key)
                        .ok()
                        .and_then(|k| Some((ints.get_mut(k)?, THRESHOLD_RANGES.get(k)?)))
                    else {
                        return Ok(false);
                    };
                    *slot = Some(wire::int_in(d, min, max)?);
                }
            }
            Ok(true)
        })?;
        // The first missing field in key order is the error, as in the derived decoder.
        let mut values = [0i64; 17];
        for (key, (slot, value)) in (0i64..).zip(ints.iter().zip(values.iter_mut())) {
            let present = match key {
                9 => reading_min.is_some(),
                10 => reading_max.is_some(),
                _ => slot.is_some(),
            };
            if !present {
                return Err(minicbor::decode::Error::missing_value(key).at(at));
            }
            *value = slot.unwrap_or(0);
        }
        let [a, b, c, d, e, f, g, h, i, _, _, l, m, n, o, p, q] = values;
        // Every integer was read by `wire::int_in` within its field's range
        // (`THRESHOLD_RANGES`), so these conversions are exact.
        Ok(Self {
            battery_warning_percent: a as u8,
            battery_critical_percent: b as u8,
            battery_warning_mv: c as u16,
            battery_critical_mv: d as u16,
            rssi_warning_dbm: e as i16,
            rssi_critical_dbm: f as i16,
            send_failures_warning: g as u16,
            send_failures_critical: h as u16,
            stuck_readings: i as u16,
            reading_min: reading_min.unwrap_or(0.0),
            reading_max: reading_max.unwrap_or(0.0),
            free_memory_warning_bytes: l as u32,
            free_memory_critical_bytes: m as u32,
            errors_warning: n as u32,
            errors_critical: o as u32,
            recent_reboot_ms: p as u32,
            recovery_checks: q as u16,
        })
    }
}

impl HealthThresholds {
    /// The documented defaults.
    pub const DEFAULT: Self = Self {
        battery_warning_percent: 20,
        battery_critical_percent: 10,
        battery_warning_mv: 3_500,
        battery_critical_mv: 3_300,
        rssi_warning_dbm: -80,
        rssi_critical_dbm: -90,
        send_failures_warning: 3,
        send_failures_critical: 10,
        stuck_readings: 10,
        reading_min: -40.0,
        reading_max: 85.0,
        free_memory_warning_bytes: 16 * 1024,
        free_memory_critical_bytes: 4 * 1024,
        errors_warning: 1,
        errors_critical: 10,
        recent_reboot_ms: 0,
        recovery_checks: 3,
    };

    /// Checks that each warning level comes before its critical level and that every value
    /// is usable; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.battery_warning_percent > 100 || self.battery_critical_percent > 100 {
            return Err(ValidationError::PercentOutOfRange);
        }
        if self.battery_warning_percent < self.battery_critical_percent {
            return Err(ValidationError::ThresholdOrder(Threshold::BatteryPercent));
        }
        if self.battery_warning_mv < self.battery_critical_mv {
            return Err(ValidationError::ThresholdOrder(Threshold::BatteryVoltage));
        }
        if self.rssi_warning_dbm < self.rssi_critical_dbm {
            return Err(ValidationError::ThresholdOrder(Threshold::Rssi));
        }
        if count_order_wrong(
            self.send_failures_warning.into(),
            self.send_failures_critical.into(),
        ) {
            return Err(ValidationError::ThresholdOrder(Threshold::SendFailures));
        }
        if self.free_memory_warning_bytes < self.free_memory_critical_bytes {
            return Err(ValidationError::ThresholdOrder(Threshold::FreeMemory));
        }
        if count_order_wrong(self.errors_warning, self.errors_critical) {
            return Err(ValidationError::ThresholdOrder(Threshold::Errors));
        }
        if self.stuck_readings == 1 {
            return Err(ValidationError::StuckReadingsTooSmall);
        }
        if !self.reading_min.is_finite()
            || !self.reading_max.is_finite()
            || self.reading_min >= self.reading_max
        {
            return Err(ValidationError::InvalidReadingRange);
        }
        if self.recovery_checks == 0 {
            return Err(ValidationError::ZeroRecoveryChecks);
        }
        Ok(())
    }
}

/// With 0 meaning "off", a warning count above an enabled critical count is out of order.
fn count_order_wrong(warning: u32, critical: u32) -> bool {
    warning != 0 && critical != 0 && warning > critical
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One set of measurements for a health check. Absent values (`None`) are not checked: a
/// mains-powered device has no battery, a wired one no RSSI.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HealthSample {
    /// Battery charge in percent.
    pub battery_percent: Option<u8>,
    /// Battery voltage in millivolts.
    pub battery_mv: Option<u16>,
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i16>,
    /// Sends that failed in a row since the last success.
    pub consecutive_send_failures: u16,
    /// The latest primary sensor reading.
    pub reading: Option<f32>,
    /// Free heap or pool memory in bytes.
    pub free_memory_bytes: Option<u32>,
    /// Errors counted since boot (the monitor takes the difference between checks; wraps).
    pub error_count: u32,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
}

impl HealthSample {
    /// A sample with only the uptime known.
    pub const fn new(uptime_ms: u64) -> Self {
        Self {
            battery_percent: None,
            battery_mv: None,
            rssi_dbm: None,
            consecutive_send_failures: 0,
            reading: None,
            free_memory_bytes: None,
            error_count: 0,
            uptime_ms,
        }
    }

    /// With battery charge (percent) and voltage (mV).
    #[must_use]
    pub const fn with_battery(mut self, percent: u8, millivolts: u16) -> Self {
        self.battery_percent = Some(percent);
        self.battery_mv = Some(millivolts);
        self
    }

    /// With link quality: RSSI and consecutive send failures.
    #[must_use]
    pub const fn with_link(mut self, rssi_dbm: i16, consecutive_send_failures: u16) -> Self {
        self.rssi_dbm = Some(rssi_dbm);
        self.consecutive_send_failures = consecutive_send_failures;
        self
    }

    /// With the latest sensor reading.
    #[must_use]
    pub const fn with_reading(mut self, value: f32) -> Self {
        self.reading = Some(value);
        self
    }

    /// With free memory in bytes.
    #[must_use]
    pub const fn with_free_memory(mut self, bytes: u32) -> Self {
        self.free_memory_bytes = Some(bytes);
        self
    }

    /// With the cumulative error counter.
    #[must_use]
    pub const fn with_error_count(mut self, errors: u32) -> Self {
        self.error_count = errors;
        self
    }
}

/// The result of one health check: the payload of `MessageKind::HealthReport`.
///
/// A condition is in `critical` or in `warnings`, never both, and `status` always follows
/// from them (the decoder rejects reports where it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthReport {
    /// The verdict.
    pub status: HealthStatus,
    /// Conditions at warning level.
    pub warnings: HealthFlags,
    /// Conditions at critical level.
    pub critical: HealthFlags,
    /// Uptime of the device when checked.
    pub uptime_ms: u64,
}

impl HealthReport {
    /// A report from its flags, with the status they imply; a flag present in both sets
    /// counts as critical only.
    pub const fn from_flags(warnings: HealthFlags, critical: HealthFlags, uptime_ms: u64) -> Self {
        let warnings = warnings.difference(critical);
        let status = if !critical.is_empty() {
            HealthStatus::Critical
        } else if !warnings.is_empty() {
            HealthStatus::Warning
        } else {
            HealthStatus::Healthy
        };
        Self {
            status,
            warnings,
            critical,
            uptime_ms,
        }
    }

    /// Every condition, whatever its level.
    pub const fn reasons(&self) -> HealthFlags {
        self.warnings.union(self.critical)
    }
}

impl<C> Encode<C> for HealthReport {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(4)?;
        e.u8(0)?.encode_with(self.status, ctx)?;
        e.u8(1)?.u16(self.warnings.bits())?;
        e.u8(2)?.u16(self.critical.bits())?;
        e.u8(3)?.u64(self.uptime_ms)?;
        Ok(())
    }
}

impl<C> CborLen<C> for HealthReport {
    // Four one-byte keys plus a one-byte header and four small values: no overflow.
    #[allow(clippy::arithmetic_side_effects)]
    fn cbor_len(&self, ctx: &mut C) -> usize {
        5 + self.status.cbor_len(ctx)
            + self.warnings.bits().cbor_len(ctx)
            + self.critical.bits().cbor_len(ctx)
            + self.uptime_ms.cbor_len(ctx)
    }
}

impl<'b, C> Decode<'b, C> for HealthReport {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let entries = wire::map_len(d)?;
        let (mut status, mut warnings, mut critical, mut uptime) = (None, None, None, None);
        let mut previous = None;
        for _ in 0..entries {
            match wire::next_key(d, &mut previous)? {
                0 => status = Some(HealthStatus::decode(d, ctx)?),
                1 => warnings = Some(flags(d.u16()?)?),
                2 => critical = Some(flags(d.u16()?)?),
                3 => uptime = Some(d.u64()?),
                _ => d.skip()?,
            }
        }
        let missing = iot_core::codec::missing_field;
        let status = status.ok_or_else(missing)?;
        let warnings = warnings.ok_or_else(missing)?;
        let critical = critical.ok_or_else(missing)?;
        let report = Self::from_flags(warnings, critical, uptime.ok_or_else(missing)?);
        if report.status != status || report.warnings != warnings {
            return Err(iot_core::codec::invalid_value());
        }
        Ok(report)
    }
}

fn flags(bits: u16) -> Result<HealthFlags, minicbor::decode::Error> {
    HealthFlags::from_bits(bits).ok_or_else(iot_core::codec::invalid_value)
}

/// The lifecycle event a health verdict calls for, as a pure function (the backend can
/// replay it): `HealthCheckFailed` when an `Active` device is `Critical`, `AutoRecovery`
/// when a `Degraded` device has had at least `recovery_checks` healthy checks in a row
/// (the current one included), otherwise none.
pub fn health_event(
    state: State,
    status: HealthStatus,
    healthy_streak: u16,
    recovery_checks: u16,
) -> Option<Event> {
    match (state, status) {
        (State::Active, HealthStatus::Critical) => Some(Event::HealthCheckFailed),
        (State::Degraded, HealthStatus::Healthy) if healthy_streak >= recovery_checks.max(1) => {
            Some(Event::AutoRecovery)
        }
        _ => None,
    }
}

/// Turns samples into reports against configurable thresholds. See the [module
/// documentation](self).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct HealthMonitor {
    thresholds: HealthThresholds,
    last_reading: Option<f32>,
    identical_readings: u16,
    last_error_count: u32,
    healthy_streak: u16,
    last_report: Option<HealthReport>,
}

impl HealthMonitor {
    /// A monitor with no history. The thresholds are used as given; validate them (or take
    /// them from a validated [`DeviceConfig`](crate::config::DeviceConfig)) first.
    pub const fn new(thresholds: HealthThresholds) -> Self {
        Self {
            thresholds,
            last_reading: None,
            identical_readings: 0,
            last_error_count: 0,
            healthy_streak: 0,
            last_report: None,
        }
    }

    /// The thresholds in force.
    pub const fn thresholds(&self) -> &HealthThresholds {
        &self.thresholds
    }

    /// Replaces the thresholds (after a configuration update), keeping the history.
    pub fn set_thresholds(&mut self, thresholds: HealthThresholds) {
        self.thresholds = thresholds;
    }

    /// Healthy checks in a row, the latest included.
    pub const fn healthy_streak(&self) -> u16 {
        self.healthy_streak
    }

    /// The latest report, if any check ran.
    pub const fn last_report(&self) -> Option<&HealthReport> {
        self.last_report.as_ref()
    }

    /// Runs one health check.
    pub fn check(&mut self, sample: &HealthSample) -> HealthReport {
        let t = &self.thresholds;
        let mut warn = HealthFlags::EMPTY;
        let mut crit = HealthFlags::EMPTY;
        let mut grade = |flag: HealthFlags, critical: bool, warning: bool| {
            if critical {
                crit = crit.union(flag);
            } else if warning {
                warn = warn.union(flag);
            }
        };

        if let Some(p) = sample.battery_percent {
            grade(
                HealthFlags::BATTERY_LOW,
                p <= t.battery_critical_percent,
                p <= t.battery_warning_percent,
            );
        }
        if let Some(mv) = sample.battery_mv {
            grade(
                HealthFlags::BATTERY_VOLTAGE,
                mv <= t.battery_critical_mv,
                mv <= t.battery_warning_mv,
            );
        }
        if let Some(rssi) = sample.rssi_dbm {
            grade(
                HealthFlags::WEAK_SIGNAL,
                rssi <= t.rssi_critical_dbm,
                rssi <= t.rssi_warning_dbm,
            );
        }
        let failures = u32::from(sample.consecutive_send_failures);
        grade(
            HealthFlags::SEND_FAILURES,
            at_least(failures, t.send_failures_critical.into()),
            at_least(failures, t.send_failures_warning.into()),
        );
        if let Some(free) = sample.free_memory_bytes {
            grade(
                HealthFlags::LOW_MEMORY,
                free <= t.free_memory_critical_bytes,
                free <= t.free_memory_warning_bytes,
            );
        }
        let new_errors = sample.error_count.wrapping_sub(self.last_error_count);
        self.last_error_count = sample.error_count;
        grade(
            HealthFlags::ERRORS,
            at_least(new_errors, t.errors_critical),
            at_least(new_errors, t.errors_warning),
        );
        if let Some(value) = sample.reading {
            let plausible = value.is_finite() && value >= t.reading_min && value <= t.reading_max;
            grade(HealthFlags::READING_OUT_OF_RANGE, false, !plausible);
            // Bitwise equality: a stuck ADC repeats the exact same value.
            let same = self
                .last_reading
                .is_some_and(|last| last.to_bits() == value.to_bits());
            self.identical_readings = if same {
                self.identical_readings.saturating_add(1)
            } else {
                1
            };
            self.last_reading = Some(value);
            grade(
                HealthFlags::SENSOR_STUCK,
                false,
                at_least(self.identical_readings.into(), t.stuck_readings.into()),
            );
        }
        grade(
            HealthFlags::RECENT_REBOOT,
            false,
            t.recent_reboot_ms != 0 && sample.uptime_ms < u64::from(t.recent_reboot_ms),
        );

        let report = HealthReport::from_flags(warn, crit, sample.uptime_ms);
        self.healthy_streak = if report.status == HealthStatus::Healthy {
            self.healthy_streak.saturating_add(1)
        } else {
            0
        };
        self.last_report = Some(report);
        report
    }

    /// The lifecycle event the latest check calls for in `state` (see [`health_event`]).
    pub fn lifecycle_event(&self, state: State, report: &HealthReport) -> Option<Event> {
        health_event(
            state,
            report.status,
            self.healthy_streak,
            self.thresholds.recovery_checks,
        )
    }
}

/// `value >= threshold`, with a threshold of 0 meaning the check is off.
fn at_least(value: u32, threshold: u32) -> bool {
    threshold != 0 && value >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::codec::{DecodeError, decode, encode_into};

    fn monitor() -> HealthMonitor {
        HealthMonitor::new(HealthThresholds::DEFAULT)
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(HealthThresholds::DEFAULT.validate(), Ok(()));
    }

    #[test]
    fn empty_sample_is_healthy() {
        let r = monitor().check(&HealthSample::new(1));
        assert_eq!(
            r,
            HealthReport::from_flags(HealthFlags::EMPTY, HealthFlags::EMPTY, 1)
        );
        assert_eq!(r.status, HealthStatus::Healthy);
    }

    #[test]
    fn battery_levels_grade_at_the_boundaries() {
        let mut m = monitor();
        let at = |m: &mut HealthMonitor, p| m.check(&HealthSample::new(0).with_battery(p, 3_900));
        assert_eq!(at(&mut m, 21).status, HealthStatus::Healthy);
        assert_eq!(at(&mut m, 20).warnings, HealthFlags::BATTERY_LOW);
        assert_eq!(at(&mut m, 11).status, HealthStatus::Warning);
        let r = at(&mut m, 10);
        assert_eq!(
            (r.status, r.critical),
            (HealthStatus::Critical, HealthFlags::BATTERY_LOW)
        );
        assert!(r.warnings.is_empty());
        let v = m.check(&HealthSample::new(0).with_battery(90, 3_400));
        assert_eq!(v.warnings, HealthFlags::BATTERY_VOLTAGE);
        let v = m.check(&HealthSample::new(0).with_battery(90, 3_300));
        assert_eq!(v.critical, HealthFlags::BATTERY_VOLTAGE);
    }

    #[test]
    fn link_quality_grades() {
        let mut m = monitor();
        assert_eq!(
            m.check(&HealthSample::new(0).with_link(-79, 2)).status,
            HealthStatus::Healthy
        );
        let r = m.check(&HealthSample::new(0).with_link(-80, 3));
        assert_eq!(
            r.warnings,
            HealthFlags::WEAK_SIGNAL.union(HealthFlags::SEND_FAILURES)
        );
        let r = m.check(&HealthSample::new(0).with_link(-95, 10));
        assert_eq!(
            r.critical,
            HealthFlags::WEAK_SIGNAL.union(HealthFlags::SEND_FAILURES)
        );
    }

    #[test]
    fn stuck_sensor_after_n_identical_readings() {
        let mut m = HealthMonitor::new(HealthThresholds {
            stuck_readings: 3,
            ..HealthThresholds::DEFAULT
        });
        let s = HealthSample::new(0).with_reading(21.5);
        assert!(m.check(&s).reasons().is_empty());
        assert!(m.check(&s).reasons().is_empty());
        assert_eq!(m.check(&s).warnings, HealthFlags::SENSOR_STUCK);
        // A different value resets the run.
        assert!(
            m.check(&HealthSample::new(0).with_reading(21.6))
                .reasons()
                .is_empty()
        );
        assert!(m.check(&s).reasons().is_empty());
    }

    #[test]
    fn out_of_range_and_nan_readings_are_warnings() {
        let mut m = monitor();
        for v in [85.5, -41.0, f32::NAN, f32::INFINITY] {
            let r = m.check(&HealthSample::new(0).with_reading(v));
            assert_eq!(r.warnings, HealthFlags::READING_OUT_OF_RANGE, "{v}");
            assert_eq!(r.status, HealthStatus::Warning);
        }
        assert!(
            m.check(&HealthSample::new(0).with_reading(85.0))
                .reasons()
                .is_empty()
        );
    }

    #[test]
    fn memory_errors_and_reboot() {
        let mut m = HealthMonitor::new(HealthThresholds {
            recent_reboot_ms: 60_000,
            ..HealthThresholds::DEFAULT
        });
        let r = m.check(&HealthSample::new(59_999).with_free_memory(4_096));
        assert_eq!(r.critical, HealthFlags::LOW_MEMORY);
        assert_eq!(r.warnings, HealthFlags::RECENT_REBOOT);
        // Errors are counted between checks, not since boot.
        let r = m.check(&HealthSample::new(60_000).with_error_count(12));
        assert_eq!(r.critical, HealthFlags::ERRORS);
        let r = m.check(&HealthSample::new(65_000).with_error_count(13));
        assert_eq!(r.warnings, HealthFlags::ERRORS);
        let r = m.check(&HealthSample::new(70_000).with_error_count(13));
        assert_eq!(r.status, HealthStatus::Healthy);
    }

    #[test]
    fn zero_thresholds_disable_count_checks() {
        let mut m = HealthMonitor::new(HealthThresholds {
            send_failures_warning: 0,
            send_failures_critical: 0,
            errors_warning: 0,
            errors_critical: 0,
            stuck_readings: 0,
            ..HealthThresholds::DEFAULT
        });
        for _ in 0..20 {
            let s = HealthSample::new(0)
                .with_link(-50, 500)
                .with_error_count(99)
                .with_reading(1.0);
            assert!(m.check(&s).reasons().is_empty());
        }
    }

    #[test]
    fn health_drives_failure_and_recovery_with_hysteresis() {
        let mut m = HealthMonitor::new(HealthThresholds {
            recovery_checks: 2,
            ..HealthThresholds::DEFAULT
        });
        let bad = HealthSample::new(0).with_battery(5, 3_000);
        let warn = HealthSample::new(0).with_battery(15, 3_900);
        let good = HealthSample::new(0).with_battery(90, 3_900);
        let r = m.check(&warn);
        assert_eq!(m.lifecycle_event(State::Active, &r), None);
        let r = m.check(&bad);
        assert_eq!(
            m.lifecycle_event(State::Active, &r),
            Some(Event::HealthCheckFailed)
        );
        // Critical while already degraded, in maintenance or provisioning: nothing to do.
        for s in [State::Degraded, State::Maintenance, State::Provisioning] {
            assert_eq!(m.lifecycle_event(s, &r), None);
        }
        let r = m.check(&good);
        assert_eq!(m.lifecycle_event(State::Degraded, &r), None);
        let r = m.check(&warn); // a warning breaks the streak
        assert_eq!(m.lifecycle_event(State::Degraded, &r), None);
        let r = m.check(&good);
        assert_eq!(m.lifecycle_event(State::Degraded, &r), None);
        let r = m.check(&good);
        assert_eq!(
            m.lifecycle_event(State::Degraded, &r),
            Some(Event::AutoRecovery)
        );
        assert_eq!(m.lifecycle_event(State::Active, &r), None);
    }

    #[test]
    fn invalid_thresholds_are_named() {
        let d = HealthThresholds::DEFAULT;
        let cases = [
            (
                HealthThresholds {
                    battery_warning_percent: 101,
                    ..d
                },
                ValidationError::PercentOutOfRange,
            ),
            (
                HealthThresholds {
                    battery_warning_percent: 5,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::BatteryPercent),
            ),
            (
                HealthThresholds {
                    battery_warning_mv: 3_000,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::BatteryVoltage),
            ),
            (
                HealthThresholds {
                    rssi_warning_dbm: -95,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::Rssi),
            ),
            (
                HealthThresholds {
                    send_failures_warning: 11,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::SendFailures),
            ),
            (
                HealthThresholds {
                    free_memory_warning_bytes: 1,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::FreeMemory),
            ),
            (
                HealthThresholds {
                    errors_warning: 11,
                    ..d
                },
                ValidationError::ThresholdOrder(Threshold::Errors),
            ),
            (
                HealthThresholds {
                    stuck_readings: 1,
                    ..d
                },
                ValidationError::StuckReadingsTooSmall,
            ),
            (
                HealthThresholds {
                    reading_min: 90.0,
                    ..d
                },
                ValidationError::InvalidReadingRange,
            ),
            (
                HealthThresholds {
                    reading_max: f32::NAN,
                    ..d
                },
                ValidationError::InvalidReadingRange,
            ),
            (
                HealthThresholds {
                    recovery_checks: 0,
                    ..d
                },
                ValidationError::ZeroRecoveryChecks,
            ),
        ];
        for (t, e) in cases {
            assert_eq!(t.validate(), Err(e));
        }
    }

    #[test]
    fn report_round_trips_and_rejects_inconsistent_status() {
        let r =
            HealthReport::from_flags(HealthFlags::WEAK_SIGNAL, HealthFlags::BATTERY_LOW, 123_456);
        let mut buf = [0u8; 32];
        let n = encode_into(&r, &mut buf).unwrap();
        assert_eq!(decode::<HealthReport>(&buf[..n]), Ok(r));

        let lying = HealthReport {
            status: HealthStatus::Healthy,
            ..r
        };
        let n = encode_into(&lying, &mut buf).unwrap();
        assert_eq!(
            decode::<HealthReport>(&buf[..n]),
            Err(DecodeError::InvalidValue)
        );

        let mut bad = [0u8; 16];
        let mut e = Encoder::new(&mut bad[..]);
        e.map(4).unwrap();
        e.u8(0).unwrap().u8(0).unwrap();
        e.u8(1).unwrap().u16(0x8000).unwrap();
        e.u8(2).unwrap().u16(0).unwrap();
        e.u8(3).unwrap().u8(0).unwrap();
        assert_eq!(
            decode::<HealthReport>(&bad[..10]),
            Err(DecodeError::InvalidValue)
        );
    }

    #[test]
    fn thresholds_round_trip() {
        let mut buf = [0u8; 128];
        let t = HealthThresholds {
            reading_min: -0.0,
            ..HealthThresholds::DEFAULT
        };
        let n = encode_into(&t, &mut buf).unwrap();
        let back: HealthThresholds = decode(&buf[..n]).unwrap();
        assert_eq!(back.reading_min.to_bits(), 0.0f32.to_bits());
        assert_eq!(back, t);
    }
}
