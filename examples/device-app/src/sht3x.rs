//! A Sensirion SHT3x (SHT30/31/35) temperature and humidity driver over I2C, blocking and
//! async, with the sensor's CRC-8 checked on every word.
//!
//! The ESP32-C3 board reads its climate sensor with it: a 16-bit command, a measurement
//! delay, a 6-byte read of two CRC-protected words, and fixed-point conversion.
//!
//! ```
//! use embedded_hal_mock::eh1::{delay::NoopDelay, i2c::{Mock, Transaction}};
//! use iot_device_app::sht3x::{Sht3x, ADDRESS_DEFAULT, crc8};
//!
//! // 0x6666 -> 25.000 degC, 0x8000 -> 50.0 %RH (datasheet conversion).
//! let t = [0x66, 0x66];
//! let h = [0x80, 0x00];
//! let reply = vec![t[0], t[1], crc8(&t), h[0], h[1], crc8(&h)];
//! let bus = Mock::new(&[
//!     Transaction::write(ADDRESS_DEFAULT, vec![0x24, 0x00]),
//!     Transaction::read(ADDRESS_DEFAULT, reply),
//! ]);
//! let mut sensor = Sht3x::new(bus, NoopDelay, ADDRESS_DEFAULT);
//! let m = sensor.measure()?;
//! assert_eq!(m.temperature_milli_c, 25_000);
//! assert_eq!(m.humidity_milli_pct, 50_000);
//! sensor.release().0.done();
//! # Ok::<(), iot_device_app::sht3x::Sht3xError<embedded_hal::i2c::ErrorKind>>(())
//! ```

use crc::{CRC_8_NRSC_5, Crc};

/// The default I2C address (ADDR pin low).
pub const ADDRESS_DEFAULT: u8 = 0x44;
/// The alternative I2C address (ADDR pin high).
pub const ADDRESS_ALTERNATE: u8 = 0x45;

/// Sensirion's CRC-8: polynomial 0x31, init 0xFF (catalogued as CRC-8/NRSC-5).
const SENSIRION_CRC: Crc<u8> = Crc::<u8>::new(&CRC_8_NRSC_5);

/// The CRC-8 the sensor appends to every 16-bit word.
pub fn crc8(word: &[u8]) -> u8 {
    SENSIRION_CRC.checksum(word)
}

/// Measurement repeatability: higher is less noisy and slower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repeatability {
    /// 15 ms measurement.
    #[default]
    High,
    /// 6 ms measurement.
    Medium,
    /// 4 ms measurement.
    Low,
}

impl Repeatability {
    /// The single-shot command without clock stretching.
    const fn command(self) -> [u8; 2] {
        match self {
            Self::High => [0x24, 0x00],
            Self::Medium => [0x24, 0x0B],
            Self::Low => [0x24, 0x16],
        }
    }

    /// The maximum measurement duration from the datasheet, in microseconds.
    const fn duration_us(self) -> u32 {
        match self {
            Self::High => 15_500,
            Self::Medium => 6_500,
            Self::Low => 4_500,
        }
    }
}

const CMD_SOFT_RESET: [u8; 2] = [0x30, 0xA2];
const CMD_READ_STATUS: [u8; 2] = [0xF3, 0x2D];

/// One measurement in fixed point (no floats needed on the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Temperature in thousandths of a degree Celsius.
    pub temperature_milli_c: i32,
    /// Relative humidity in thousandths of a percent.
    pub humidity_milli_pct: u32,
}

impl Measurement {
    /// Converts the raw words with the datasheet formulas:
    /// `T = -45 + 175 * raw / 65535` and `RH = 100 * raw / 65535`.
    pub fn from_raw(temperature: u16, humidity: u16) -> Self {
        let t = i64::from(temperature)
            .saturating_mul(175_000)
            .checked_div(65_535)
            .unwrap_or(0)
            .saturating_sub(45_000);
        let h = u64::from(humidity)
            .saturating_mul(100_000)
            .checked_div(65_535)
            .unwrap_or(0);
        Self {
            temperature_milli_c: i32::try_from(t).unwrap_or(i32::MAX),
            humidity_milli_pct: u32::try_from(h).unwrap_or(u32::MAX),
        }
    }

    /// Temperature in degrees Celsius.
    #[allow(clippy::cast_precision_loss)] // Values are below 2^24 in magnitude: exact in f32.
    pub fn celsius(&self) -> f32 {
        self.temperature_milli_c as f32 / 1000.0
    }

    /// Relative humidity in percent.
    #[allow(clippy::cast_precision_loss)] // Values are below 2^24: exact in f32.
    pub fn humidity_percent(&self) -> f32 {
        self.humidity_milli_pct as f32 / 1000.0
    }
}

/// Why a reading failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Sht3xError<E> {
    /// The I2C bus failed (for example the sensor did not acknowledge).
    #[error("I2C error: {0:?}")]
    I2c(E),
    /// A word's CRC did not match: the reading is corrupt.
    #[error("CRC mismatch")]
    Crc,
}

impl<E: core::fmt::Debug> iot_core::Error for Sht3xError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::I2c(_) => iot_core::ErrorKind::Transport,
            Self::Crc => iot_core::ErrorKind::Decode,
        }
    }
}

/// Checks the two CRC-protected words of a 6-byte reply.
fn parse_words<E>(reply: &[u8; 6]) -> Result<(u16, u16), Sht3xError<E>> {
    let [t0, t1, tc, h0, h1, hc] = *reply;
    if crc8(&[t0, t1]) != tc || crc8(&[h0, h1]) != hc {
        return Err(Sht3xError::Crc);
    }
    Ok((u16::from_be_bytes([t0, t1]), u16::from_be_bytes([h0, h1])))
}

fn parse_status<E>(reply: &[u8; 3]) -> Result<u16, Sht3xError<E>> {
    let [s0, s1, sc] = *reply;
    if crc8(&[s0, s1]) != sc {
        return Err(Sht3xError::Crc);
    }
    Ok(u16::from_be_bytes([s0, s1]))
}

/// An SHT3x on bus `I` with delay provider `D`; works with blocking (`embedded-hal`) or
/// async (`embedded-hal-async`) bus and delay types.
#[derive(Debug)]
pub struct Sht3x<I, D> {
    bus: I,
    delay: D,
    address: u8,
    repeatability: Repeatability,
}

impl<I, D> Sht3x<I, D> {
    /// A driver for the sensor at `address` ([`ADDRESS_DEFAULT`] or [`ADDRESS_ALTERNATE`]).
    pub const fn new(bus: I, delay: D, address: u8) -> Self {
        Self {
            bus,
            delay,
            address,
            repeatability: Repeatability::High,
        }
    }

    /// Chooses the repeatability of later measurements.
    #[must_use]
    pub const fn with_repeatability(mut self, r: Repeatability) -> Self {
        self.repeatability = r;
        self
    }

    /// Gives back the bus and the delay.
    pub fn release(self) -> (I, D) {
        (self.bus, self.delay)
    }
}

impl<I, D> Sht3x<I, D>
where
    I: embedded_hal::i2c::I2c,
    D: embedded_hal::delay::DelayNs,
{
    /// Triggers a single-shot measurement, waits for it and reads it back.
    pub fn measure(&mut self) -> Result<Measurement, Sht3xError<I::Error>> {
        self.bus
            .write(self.address, &self.repeatability.command())
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_us(self.repeatability.duration_us());
        let mut reply = [0u8; 6];
        self.bus
            .read(self.address, &mut reply)
            .map_err(Sht3xError::I2c)?;
        let (t, h) = parse_words(&reply)?;
        Ok(Measurement::from_raw(t, h))
    }

    /// Reads the status register.
    pub fn status(&mut self) -> Result<u16, Sht3xError<I::Error>> {
        let mut reply = [0u8; 3];
        self.bus
            .write_read(self.address, &CMD_READ_STATUS, &mut reply)
            .map_err(Sht3xError::I2c)?;
        parse_status(&reply)
    }

    /// Soft reset; the sensor needs 1.5 ms afterwards, which this waits.
    pub fn soft_reset(&mut self) -> Result<(), Sht3xError<I::Error>> {
        self.bus
            .write(self.address, &CMD_SOFT_RESET)
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_us(1_500);
        Ok(())
    }
}

/// The async twin of the blocking driver methods.
impl<I, D> Sht3x<I, D>
where
    I: embedded_hal_async::i2c::I2c,
    D: embedded_hal_async::delay::DelayNs,
{
    /// Triggers a single-shot measurement, waits for it and reads it back.
    pub async fn measure_async(&mut self) -> Result<Measurement, Sht3xError<I::Error>> {
        self.bus
            .write(self.address, &self.repeatability.command())
            .await
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_us(self.repeatability.duration_us()).await;
        let mut reply = [0u8; 6];
        self.bus
            .read(self.address, &mut reply)
            .await
            .map_err(Sht3xError::I2c)?;
        let (t, h) = parse_words(&reply)?;
        Ok(Measurement::from_raw(t, h))
    }

    /// Reads the status register.
    pub async fn status_async(&mut self) -> Result<u16, Sht3xError<I::Error>> {
        let mut reply = [0u8; 3];
        self.bus
            .write_read(self.address, &CMD_READ_STATUS, &mut reply)
            .await
            .map_err(Sht3xError::I2c)?;
        parse_status(&reply)
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::i2c::ErrorKind as I2cErrorKind;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
    use std::vec;

    use super::*;

    fn reply(t: u16, h: u16) -> std::vec::Vec<u8> {
        let t = t.to_be_bytes();
        let h = h.to_be_bytes();
        vec![t[0], t[1], crc8(&t), h[0], h[1], crc8(&h)]
    }

    #[test]
    fn datasheet_crc_example() {
        // Sensirion datasheet: CRC of 0xBEEF is 0x92.
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn conversion_endpoints() {
        assert_eq!(
            Measurement::from_raw(0, 0),
            Measurement {
                temperature_milli_c: -45_000,
                humidity_milli_pct: 0
            }
        );
        let top = Measurement::from_raw(u16::MAX, u16::MAX);
        assert_eq!(top.temperature_milli_c, 130_000);
        assert_eq!(top.humidity_milli_pct, 100_000);
        assert!((top.celsius() - 130.0).abs() < 1e-3);
        assert!((top.humidity_percent() - 100.0).abs() < 1e-3);
    }

    #[test]
    fn measure_reads_and_converts() {
        let bus = Mock::new(&[
            Transaction::write(ADDRESS_DEFAULT, vec![0x24, 0x16]),
            Transaction::read(ADDRESS_DEFAULT, reply(0x6666, 0x4000)),
        ]);
        let mut s =
            Sht3x::new(bus, NoopDelay, ADDRESS_DEFAULT).with_repeatability(Repeatability::Low);
        let m = s.measure().unwrap();
        assert_eq!(m.temperature_milli_c, 25_000);
        assert_eq!(m.humidity_milli_pct, 25_000);
        s.release().0.done();
    }

    #[test]
    fn corrupt_reply_is_rejected() {
        let mut bad = reply(0x6666, 0x4000);
        bad[4] ^= 0x10;
        let bus = Mock::new(&[
            Transaction::write(ADDRESS_ALTERNATE, vec![0x24, 0x00]),
            Transaction::read(ADDRESS_ALTERNATE, bad),
        ]);
        let mut s = Sht3x::new(bus, NoopDelay, ADDRESS_ALTERNATE);
        assert_eq!(s.measure(), Err(Sht3xError::Crc));
        s.release().0.done();
    }

    #[test]
    fn nack_is_a_bus_error() {
        let bus = Mock::new(&[
            Transaction::write(ADDRESS_DEFAULT, vec![0x24, 0x00]).with_error(
                I2cErrorKind::NoAcknowledge(embedded_hal::i2c::NoAcknowledgeSource::Address),
            ),
        ]);
        let mut s = Sht3x::new(bus, NoopDelay, ADDRESS_DEFAULT);
        let e = s.measure().unwrap_err();
        assert!(matches!(e, Sht3xError::I2c(_)));
        assert_eq!(iot_core::Error::kind(&e), iot_core::ErrorKind::Transport);
        s.release().0.done();
    }

    #[test]
    fn status_and_reset() {
        let st = 0x8010u16.to_be_bytes();
        let bus = Mock::new(&[
            Transaction::write_read(
                ADDRESS_DEFAULT,
                vec![0xF3, 0x2D],
                vec![st[0], st[1], crc8(&st)],
            ),
            Transaction::write(ADDRESS_DEFAULT, vec![0x30, 0xA2]),
        ]);
        let mut s = Sht3x::new(bus, NoopDelay, ADDRESS_DEFAULT);
        assert_eq!(s.status(), Ok(0x8010));
        s.soft_reset().unwrap();
        s.release().0.done();
    }

    #[test]
    fn async_measure_matches_blocking() {
        let bus = Mock::new(&[
            Transaction::write(ADDRESS_DEFAULT, vec![0x24, 0x00]),
            Transaction::read(ADDRESS_DEFAULT, reply(0x8000, 0xFFFF)),
            Transaction::write_read(ADDRESS_DEFAULT, vec![0xF3, 0x2D], vec![0, 0, crc8(&[0, 0])]),
        ]);
        let mut s = Sht3x::new(bus, NoopDelay, ADDRESS_DEFAULT);
        embassy_futures::block_on(async {
            let m = s.measure_async().await.unwrap();
            assert_eq!(m.temperature_milli_c, 42_501);
            assert_eq!(m.humidity_milli_pct, 100_000);
            assert_eq!(s.status_async().await, Ok(0));
        });
        s.release().0.done();
    }
}
