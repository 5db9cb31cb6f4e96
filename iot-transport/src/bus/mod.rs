//! Bus helpers over embedded-hal 1.0: register access on I2C and SPI, blocking and async.
//!
//! These are thin, allocation-free functions generic over
//! [`embedded_hal::i2c::I2c`], [`embedded_hal::spi::SpiDevice`] and their async twins in
//! `embedded-hal-async`, so any HAL's bus works. Serial links live in [`crate::framing`].

/// The most bytes a single register write carries (after the register address).
pub const MAX_WRITE: usize = 32;

/// A bus helper failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BusError<E> {
    /// The bus reported an error (NACK, arbitration loss, overrun, ...).
    #[error("bus error ({fault:?}): {error:?}")]
    Bus {
        /// The HAL's own error.
        error: E,
        /// embedded-hal's classification of `error`, taken when it happened.
        fault: BusFault,
    },
    /// A write longer than [`MAX_WRITE`] bytes.
    #[error("register write longer than the helper's buffer")]
    TooLong,
}

impl<E> BusError<E> {
    /// Wraps an I2C error, keeping embedded-hal's [`i2c::ErrorKind`](embedded_hal::i2c::ErrorKind).
    pub fn i2c(error: E) -> Self
    where
        E: embedded_hal::i2c::Error,
    {
        Self::Bus {
            fault: BusFault::I2c(error.kind()),
            error,
        }
    }

    /// Wraps an SPI error, keeping embedded-hal's [`spi::ErrorKind`](embedded_hal::spi::ErrorKind).
    pub fn spi(error: E) -> Self
    where
        E: embedded_hal::spi::Error,
    {
        Self::Bus {
            fault: BusFault::Spi(error.kind()),
            error,
        }
    }

    /// embedded-hal's classification of a bus error (`None` for [`BusError::TooLong`]).
    pub const fn fault(&self) -> Option<BusFault> {
        match self {
            Self::Bus { fault, .. } => Some(*fault),
            Self::TooLong => None,
        }
    }
}

/// embedded-hal's classification of a bus error, whichever bus it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusFault {
    /// An I2C error.
    I2c(embedded_hal::i2c::ErrorKind),
    /// An SPI error.
    Spi(embedded_hal::spi::ErrorKind),
}

#[cfg(feature = "defmt")]
impl defmt::Format for BusFault {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{}", defmt::Debug2Format(self));
    }
}

impl BusFault {
    /// True when no device answered its address: nothing is attached there (or it is
    /// powered down), so repeating the transfer will not help.
    pub const fn no_device(self) -> bool {
        use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
        matches!(
            self,
            Self::I2c(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address))
        )
    }
}

impl<E: core::fmt::Debug> iot_core::Error for BusError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            // An address NACK means there is no such device: not found, not a flaky bus.
            Self::Bus { fault, .. } if fault.no_device() => iot_core::ErrorKind::NotFound,
            Self::Bus { .. } => iot_core::ErrorKind::Transport,
            Self::TooLong => iot_core::ErrorKind::Capacity,
        }
    }
}

fn with_address<E>(
    reg: u8,
    data: &[u8],
) -> Result<heapless::Vec<u8, { MAX_WRITE + 1 }>, BusError<E>> {
    let mut frame = heapless::Vec::new();
    frame.push(reg).map_err(|_| BusError::TooLong)?;
    frame
        .extend_from_slice(data)
        .map_err(|_| BusError::TooLong)?;
    Ok(frame)
}

/// SPI register conventions: many sensors set the top bit of the address for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SpiRegisterMode {
    /// Bits OR-ed into the address byte of a read.
    pub read_flag: u8,
    /// Bits OR-ed into the address byte of a write.
    pub write_flag: u8,
}

impl SpiRegisterMode {
    /// Read = `0x80 | reg`, write = `reg` (BME280, LIS3DH, MPU-6000 and most others).
    pub const MSB_READ: Self = Self {
        read_flag: 0x80,
        write_flag: 0x00,
    };
}

/// Blocking register helpers.
pub mod blocking {
    use embedded_hal::i2c::I2c;
    use embedded_hal::spi::{Operation, SpiDevice};

    use super::{BusError, SpiRegisterMode, with_address};

    /// Reads `buf.len()` bytes starting at register `reg` of I2C device `addr`.
    pub fn i2c_read_register<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
        buf: &mut [u8],
    ) -> Result<(), BusError<I::Error>> {
        bus.write_read(addr, &[reg], buf).map_err(BusError::i2c)
    }

    /// Writes `data` starting at register `reg` of I2C device `addr`, in one transaction.
    pub fn i2c_write_register<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
        data: &[u8],
    ) -> Result<(), BusError<I::Error>> {
        let frame = with_address(reg, data)?;
        bus.write(addr, &frame).map_err(BusError::i2c)
    }

    /// Reads one byte register.
    pub fn i2c_read_u8<I: I2c>(bus: &mut I, addr: u8, reg: u8) -> Result<u8, BusError<I::Error>> {
        let mut b = [0u8; 1];
        i2c_read_register(bus, addr, reg, &mut b)?;
        Ok(b[0])
    }

    /// Read-modify-write of one byte register: `new = (old & !mask) | (value & mask)`.
    pub fn i2c_modify_u8<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
        mask: u8,
        value: u8,
    ) -> Result<u8, BusError<I::Error>> {
        let old = i2c_read_u8(bus, addr, reg)?;
        let new = (old & !mask) | (value & mask);
        i2c_write_register(bus, addr, reg, &[new])?;
        Ok(new)
    }

    /// Reads `buf.len()` bytes from SPI register `reg`.
    pub fn spi_read_register<S: SpiDevice>(
        dev: &mut S,
        mode: SpiRegisterMode,
        reg: u8,
        buf: &mut [u8],
    ) -> Result<(), BusError<S::Error>> {
        dev.transaction(&mut [
            Operation::Write(&[reg | mode.read_flag]),
            Operation::Read(buf),
        ])
        .map_err(BusError::spi)
    }

    /// Writes `data` to SPI register `reg`.
    pub fn spi_write_register<S: SpiDevice>(
        dev: &mut S,
        mode: SpiRegisterMode,
        reg: u8,
        data: &[u8],
    ) -> Result<(), BusError<S::Error>> {
        dev.transaction(&mut [
            Operation::Write(&[reg | mode.write_flag]),
            Operation::Write(data),
        ])
        .map_err(BusError::spi)
    }
}

/// Async register helpers, twins of [`blocking`].
pub mod asynch {
    use embedded_hal_async::i2c::I2c;
    use embedded_hal_async::spi::{Operation, SpiDevice};

    use super::{BusError, SpiRegisterMode, with_address};

    /// Reads `buf.len()` bytes starting at register `reg` of I2C device `addr`.
    pub async fn i2c_read_register<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
        buf: &mut [u8],
    ) -> Result<(), BusError<I::Error>> {
        bus.write_read(addr, &[reg], buf)
            .await
            .map_err(BusError::i2c)
    }

    /// Writes `data` starting at register `reg` of I2C device `addr`, in one transaction.
    pub async fn i2c_write_register<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
        data: &[u8],
    ) -> Result<(), BusError<I::Error>> {
        let frame = with_address(reg, data)?;
        bus.write(addr, &frame).await.map_err(BusError::i2c)
    }

    /// Reads one byte register.
    pub async fn i2c_read_u8<I: I2c>(
        bus: &mut I,
        addr: u8,
        reg: u8,
    ) -> Result<u8, BusError<I::Error>> {
        let mut b = [0u8; 1];
        i2c_read_register(bus, addr, reg, &mut b).await?;
        Ok(b[0])
    }

    /// Reads `buf.len()` bytes from SPI register `reg`.
    pub async fn spi_read_register<S: SpiDevice>(
        dev: &mut S,
        mode: SpiRegisterMode,
        reg: u8,
        buf: &mut [u8],
    ) -> Result<(), BusError<S::Error>> {
        dev.transaction(&mut [
            Operation::Write(&[reg | mode.read_flag]),
            Operation::Read(buf),
        ])
        .await
        .map_err(BusError::spi)
    }

    /// Writes `data` to SPI register `reg`.
    pub async fn spi_write_register<S: SpiDevice>(
        dev: &mut S,
        mode: SpiRegisterMode,
        reg: u8,
        data: &[u8],
    ) -> Result<(), BusError<S::Error>> {
        dev.transaction(&mut [
            Operation::Write(&[reg | mode.write_flag]),
            Operation::Write(data),
        ])
        .await
        .map_err(BusError::spi)
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cT};
    use embedded_hal_mock::eh1::spi::{Mock as SpiMock, Transaction as SpiT};
    use std::vec;

    use super::*;

    #[test]
    fn i2c_register_read_write_and_modify() {
        let expectations = [
            I2cT::write_read(0x76, vec![0xD0], vec![0x60]),
            I2cT::write(0x76, vec![0xF4, 0x27, 0x01]),
            I2cT::write_read(0x76, vec![0xF5], vec![0b1010_0000]),
            I2cT::write(0x76, vec![0xF5, 0b1010_0101]),
        ];
        let mut bus = I2cMock::new(&expectations);
        assert_eq!(blocking::i2c_read_u8(&mut bus, 0x76, 0xD0), Ok(0x60));
        blocking::i2c_write_register(&mut bus, 0x76, 0xF4, &[0x27, 0x01]).unwrap();
        assert_eq!(
            blocking::i2c_modify_u8(&mut bus, 0x76, 0xF5, 0x0F, 0x05),
            Ok(0b1010_0101)
        );
        assert_eq!(
            blocking::i2c_write_register(&mut bus, 0x76, 0, &[0; MAX_WRITE + 1]),
            Err(BusError::TooLong)
        );
        bus.done();
    }

    #[test]
    fn async_i2c_twins_match() {
        let expectations = [
            I2cT::write_read(0x40, vec![0x01], vec![0xAB, 0xCD]),
            I2cT::write(0x40, vec![0x02, 0x11]),
            I2cT::write_read(0x40, vec![0x03], vec![0x7F]),
        ];
        let mut bus = I2cMock::new(&expectations);
        embassy_futures::block_on(async {
            let mut buf = [0u8; 2];
            asynch::i2c_read_register(&mut bus, 0x40, 0x01, &mut buf)
                .await
                .unwrap();
            assert_eq!(buf, [0xAB, 0xCD]);
            asynch::i2c_write_register(&mut bus, 0x40, 0x02, &[0x11])
                .await
                .unwrap();
            assert_eq!(asynch::i2c_read_u8(&mut bus, 0x40, 0x03).await, Ok(0x7F));
        });
        bus.done();
    }

    #[test]
    fn spi_register_read_sets_the_read_flag() {
        let expectations = [
            SpiT::transaction_start(),
            SpiT::write(0x80 | 0x0F),
            SpiT::read_vec(vec![0x33]),
            SpiT::transaction_end(),
            SpiT::transaction_start(),
            SpiT::write(0x20),
            SpiT::write_vec(vec![0x57]),
            SpiT::transaction_end(),
        ];
        let mut dev = SpiMock::new(&expectations);
        let mut who = [0u8; 1];
        blocking::spi_read_register(&mut dev, SpiRegisterMode::MSB_READ, 0x0F, &mut who).unwrap();
        assert_eq!(who, [0x33]);
        blocking::spi_write_register(&mut dev, SpiRegisterMode::MSB_READ, 0x20, &[0x57]).unwrap();
        dev.done();

        let mut dev = SpiMock::new(&expectations);
        embassy_futures::block_on(async {
            let mut who = [0u8; 1];
            asynch::spi_read_register(&mut dev, SpiRegisterMode::MSB_READ, 0x0F, &mut who)
                .await
                .unwrap();
            assert_eq!(who, [0x33]);
            asynch::spi_write_register(&mut dev, SpiRegisterMode::MSB_READ, 0x20, &[0x57])
                .await
                .unwrap();
        });
        dev.done();
    }

    #[test]
    fn i2c_errors_keep_embedded_hal_kind() {
        use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
        use iot_core::Error as _;
        let absent = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let expectations = [
            I2cT::write_read(0x44, vec![0x01], vec![0x00]).with_error(absent),
            I2cT::write(0x44, vec![0x02, 0x03]).with_error(ErrorKind::ArbitrationLoss),
        ];
        let mut bus = I2cMock::new(&expectations);
        let err = blocking::i2c_read_u8(&mut bus, 0x44, 0x01).unwrap_err();
        assert_eq!(err.fault(), Some(BusFault::I2c(absent)));
        assert!(err.fault().is_some_and(BusFault::no_device));
        // No device at that address: retrying the bus will not find one.
        assert_eq!(err.kind(), iot_core::ErrorKind::NotFound);
        let err = blocking::i2c_write_register(&mut bus, 0x44, 0x02, &[0x03]).unwrap_err();
        assert_eq!(err.fault(), Some(BusFault::I2c(ErrorKind::ArbitrationLoss)));
        assert_eq!(err.kind(), iot_core::ErrorKind::Transport);
        assert_eq!(BusError::<ErrorKind>::TooLong.fault(), None);
        bus.done();
    }
}
