//! Typed, timestamped sensor readings and fixed-capacity telemetry batches.
//!
//! ```
//! use iot_core::telemetry::{Measurement, Reading, Telemetry};
//!
//! let mut batch: Telemetry<4> = Telemetry::new();
//! batch.push(Reading::new(30_000, Measurement::Temperature { celsius: 21.5 }))?;
//! batch.push(Reading::new(30_000, Measurement::Humidity { percent: 40.0 }))?;
//! let mut buf = [0u8; 64];
//! let n = iot_core::codec::encode_into(&batch, &mut buf)?;
//! let back: Telemetry<4> = iot_core::codec::decode(&buf[..n])?;
//! assert_eq!(back, batch);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use minicbor::{CborLen, Decode, Decoder, Encode, Encoder};

use crate::codec::{self, F32_LEN};
use crate::error::{Error, ErrorKind};

/// One measured quantity, in SI-friendly units.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Measurement {
    /// Air or surface temperature in degrees Celsius.
    Temperature {
        /// Degrees Celsius.
        celsius: f32,
    },
    /// Relative humidity in percent (0 to 100).
    Humidity {
        /// Percent relative humidity.
        percent: f32,
    },
    /// Remaining battery charge in percent (0 to 100).
    BatteryPercent {
        /// Percent of full charge.
        percent: u8,
    },
    /// Battery terminal voltage in volts.
    BatteryVoltage {
        /// Volts.
        volts: f32,
    },
    /// Number of people or objects detected (0 means unoccupied).
    Occupancy {
        /// Count detected.
        count: u16,
    },
    /// Received signal strength in dBm.
    Rssi {
        /// dBm (negative).
        dbm: i16,
    },
    /// A user-defined quantity identified by `id`.
    Custom {
        /// Application-chosen quantity id.
        id: u16,
        /// The value.
        value: f32,
    },
}

/// Why a measurement is outside its physical domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MeasurementError {
    /// A floating-point value is NaN or infinite.
    #[error("measurement is not a finite number")]
    NotFinite,
    /// A percentage is outside 0 to 100.
    #[error("percentage outside 0..=100")]
    PercentOutOfRange,
    /// A batch is full.
    #[error("telemetry batch is full")]
    BatchFull,
}

impl Error for MeasurementError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BatchFull => ErrorKind::Capacity,
            _ => ErrorKind::InvalidInput,
        }
    }
}

impl Measurement {
    /// Wire code of the quantity.
    pub const fn code(&self) -> u8 {
        match self {
            Self::Temperature { .. } => 0,
            Self::Humidity { .. } => 1,
            Self::BatteryPercent { .. } => 2,
            Self::BatteryVoltage { .. } => 3,
            Self::Occupancy { .. } => 4,
            Self::Rssi { .. } => 5,
            Self::Custom { .. } => 6,
        }
    }

    /// The value as a float, whatever the quantity (for filters and aggregations).
    pub fn value(&self) -> f32 {
        match *self {
            Self::Temperature { celsius } => celsius,
            Self::Humidity { percent } => percent,
            Self::BatteryPercent { percent } => f32::from(percent),
            Self::BatteryVoltage { volts } => volts,
            Self::Occupancy { count } => f32::from(count),
            Self::Rssi { dbm } => f32::from(dbm),
            Self::Custom { value, .. } => value,
        }
    }

    /// Checks the physical domain: finite floats, percentages within 0 to 100.
    pub fn validate(&self) -> Result<(), MeasurementError> {
        let v = self.value();
        if !v.is_finite() {
            return Err(MeasurementError::NotFinite);
        }
        match *self {
            Self::Humidity { percent } if !(0.0..=100.0).contains(&percent) => {
                Err(MeasurementError::PercentOutOfRange)
            }
            Self::BatteryPercent { percent } if percent > 100 => {
                Err(MeasurementError::PercentOutOfRange)
            }
            _ => Ok(()),
        }
    }
}

/// A measurement and when it was taken (milliseconds on the device's clock or epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reading {
    /// When the measurement was taken, in milliseconds.
    pub at_ms: u64,
    /// What was measured.
    pub measurement: Measurement,
}

impl Reading {
    /// A reading of `measurement` taken at `at_ms`.
    pub const fn new(at_ms: u64, measurement: Measurement) -> Self {
        Self { at_ms, measurement }
    }
}

// Wire form: [at_ms, code, value...]; Custom carries [at_ms, 6, id, value].
impl<C> Encode<C> for Reading {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        if self.measurement.validate().is_err() {
            return Err(minicbor::encode::Error::message(
                "measurement out of domain",
            ));
        }
        let m = &self.measurement;
        let items = if matches!(m, Measurement::Custom { .. }) {
            4
        } else {
            3
        };
        e.array(items)?.u64(self.at_ms)?.u8(m.code())?;
        match *m {
            Measurement::Temperature { celsius: v }
            | Measurement::Humidity { percent: v }
            | Measurement::BatteryVoltage { volts: v } => codec::encode_f32(e, v)?,
            Measurement::BatteryPercent { percent } => {
                e.u8(percent)?;
            }
            Measurement::Occupancy { count } => {
                e.u16(count)?;
            }
            Measurement::Rssi { dbm } => {
                e.i16(dbm)?;
            }
            Measurement::Custom { id, value } => {
                e.u16(id)?;
                codec::encode_f32(e, value)?;
            }
        }
        Ok(())
    }
}

impl<C> CborLen<C> for Reading {
    // Sums of the lengths of in-memory values cannot overflow `usize`.
    #[allow(clippy::arithmetic_side_effects)]
    fn cbor_len(&self, ctx: &mut C) -> usize {
        let m = &self.measurement;
        let value_len = match *m {
            Measurement::Temperature { .. }
            | Measurement::Humidity { .. }
            | Measurement::BatteryVoltage { .. } => F32_LEN,
            Measurement::BatteryPercent { percent } => percent.cbor_len(ctx),
            Measurement::Occupancy { count } => count.cbor_len(ctx),
            Measurement::Rssi { dbm } => dbm.cbor_len(ctx),
            Measurement::Custom { id, .. } => id.cbor_len(ctx) + F32_LEN,
        };
        1 + self.at_ms.cbor_len(ctx) + m.code().cbor_len(ctx) + value_len
    }
}

impl<'b, C> Decode<'b, C> for Reading {
    fn decode(d: &mut Decoder<'b>, _ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let items = d.array()?.ok_or_else(codec::invalid_value)?;
        let at_ms = d.u64()?;
        let code = d.u8()?;
        let expected = if code == 6 { 4 } else { 3 };
        if items != expected {
            return Err(codec::invalid_value());
        }
        let measurement = match code {
            0 => Measurement::Temperature {
                celsius: codec::decode_f32(d)?,
            },
            1 => Measurement::Humidity {
                percent: codec::decode_f32(d)?,
            },
            2 => Measurement::BatteryPercent { percent: d.u8()? },
            3 => Measurement::BatteryVoltage {
                volts: codec::decode_f32(d)?,
            },
            4 => Measurement::Occupancy { count: d.u16()? },
            5 => Measurement::Rssi { dbm: d.i16()? },
            6 => {
                let id = d.u16()?;
                Measurement::Custom {
                    id,
                    value: codec::decode_f32(d)?,
                }
            }
            _ => return Err(codec::invalid_value()),
        };
        measurement.validate().map_err(|_| codec::invalid_value())?;
        Ok(Self { at_ms, measurement })
    }
}

/// A batch of at most `N` readings: the payload of a [`crate::message::MessageKind::Telemetry`]
/// message.
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Telemetry<const N: usize> {
    /// The readings, oldest first.
    pub readings: heapless::Vec<Reading, N>,
}

impl<const N: usize> Telemetry<N> {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            readings: heapless::Vec::new(),
        }
    }

    /// Appends a validated reading; fails when the batch is full or the value is invalid.
    pub fn push(&mut self, reading: Reading) -> Result<(), MeasurementError> {
        reading.measurement.validate()?;
        self.readings
            .push(reading)
            .map_err(|_| MeasurementError::BatchFull)
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// True when the batch holds no readings.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

impl<C, const N: usize> Encode<C> for Telemetry<N> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.array(self.readings.len() as u64)?;
        for r in &self.readings {
            r.encode(e, ctx)?;
        }
        Ok(())
    }
}

impl<C, const N: usize> CborLen<C> for Telemetry<N> {
    // Sums of the lengths of in-memory values cannot overflow `usize`.
    #[allow(clippy::arithmetic_side_effects)]
    fn cbor_len(&self, ctx: &mut C) -> usize {
        let items: usize = self.readings.iter().map(|r| r.cbor_len(ctx)).sum();
        self.readings.len().cbor_len(ctx) + items
    }
}

impl<'b, C, const N: usize> Decode<'b, C> for Telemetry<N> {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let items = d.array()?.ok_or_else(codec::invalid_value)?;
        if items > N as u64 {
            return Err(codec::capacity_exceeded());
        }
        let mut readings = heapless::Vec::new();
        for _ in 0..items {
            let r = Reading::decode(d, ctx)?;
            readings.push(r).map_err(|_| codec::capacity_exceeded())?;
        }
        Ok(Self { readings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeError, EncodeError, decode, encode_into, encoded_len};

    #[test]
    fn every_measurement_round_trips_with_exact_length() {
        let all = [
            Measurement::Temperature { celsius: -12.25 },
            Measurement::Humidity { percent: 55.5 },
            Measurement::BatteryPercent { percent: 87 },
            Measurement::BatteryVoltage { volts: 3.71 },
            Measurement::Occupancy { count: 300 },
            Measurement::Rssi { dbm: -71 },
            Measurement::Custom {
                id: 4_000,
                value: 1e6,
            },
        ];
        for m in all {
            let r = Reading::new(1_700_000_000_123, m);
            let mut buf = [0u8; 32];
            let n = encode_into(&r, &mut buf).unwrap();
            assert_eq!(n, encoded_len(&r), "{m:?}");
            assert_eq!(decode::<Reading>(&buf[..n]).unwrap(), r);
        }
    }

    #[test]
    fn out_of_domain_values_are_rejected_both_ways() {
        let mut batch: Telemetry<2> = Telemetry::new();
        let nan = Reading::new(0, Measurement::Temperature { celsius: f32::NAN });
        assert_eq!(batch.push(nan), Err(MeasurementError::NotFinite));
        let wet = Reading::new(0, Measurement::Humidity { percent: 100.5 });
        assert_eq!(batch.push(wet), Err(MeasurementError::PercentOutOfRange));
        let mut buf = [0u8; 32];
        assert!(matches!(
            encode_into(&nan, &mut buf),
            Err(EncodeError::InvalidValue(_))
        ));
        // A NaN written by someone else is refused on decode.
        let mut e = Encoder::new(&mut buf[..]);
        e.array(3)
            .unwrap()
            .u64(0)
            .unwrap()
            .u8(0)
            .unwrap()
            .f32(f32::INFINITY)
            .unwrap();
        assert_eq!(decode::<Reading>(&buf[..8]), Err(DecodeError::InvalidValue));
    }

    #[test]
    fn negative_zero_encodes_like_zero() {
        let a = Reading::new(5, Measurement::Temperature { celsius: -0.0 });
        let b = Reading::new(5, Measurement::Temperature { celsius: 0.0 });
        let (mut x, mut y) = ([0u8; 16], [0u8; 16]);
        let n = encode_into(&a, &mut x).unwrap();
        encode_into(&b, &mut y).unwrap();
        assert_eq!(x[..n], y[..n]);
    }

    #[test]
    fn batch_capacity_is_enforced_on_push_and_decode() {
        let mut big: Telemetry<3> = Telemetry::new();
        for i in 0..3 {
            big.push(Reading::new(i, Measurement::Rssi { dbm: -50 }))
                .unwrap();
        }
        assert_eq!(
            big.push(Reading::new(9, Measurement::Rssi { dbm: -50 })),
            Err(MeasurementError::BatchFull)
        );
        let mut buf = [0u8; 64];
        let n = encode_into(&big, &mut buf).unwrap();
        assert_eq!(
            decode::<Telemetry<2>>(&buf[..n]),
            Err(DecodeError::CapacityExceeded)
        );
        assert_eq!(decode::<Telemetry<3>>(&buf[..n]).unwrap(), big);
    }
}
