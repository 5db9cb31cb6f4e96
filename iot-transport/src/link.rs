//! The [`Link`] trait for datagram links, and what a link says about itself ([`LinkInfo`]).
//!
//! A link carries whole datagrams of at most [`LinkInfo::mtu`] bytes: a framed UART, a Wi-Fi
//! UDP socket, a LoRaWAN uplink, a cellular modem's socket or a simulation. Larger messages go
//! through [`crate::fragment`]. Reliability (acks, retransmission, dedup) is layered on top by
//! [`crate::qos`], choosing among links by [`crate::select`].
//!
//! The trait is async first (native `async fn`), with a non-blocking
//! [`Link::try_receive`] for poll loops.

/// The physical or logical medium of a link.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Medium {
    /// A serial line (UART, RS-485) carrying framed datagrams.
    Serial,
    /// Wi-Fi (IEEE 802.11).
    Wifi,
    /// Wired Ethernet.
    Ethernet,
    /// LoRa / LoRaWAN.
    Lora,
    /// Cellular (NB-IoT, LTE-M, 4G, 5G).
    Cellular,
    /// Bluetooth Low Energy.
    Ble,
    /// IEEE 802.15.4 mesh (Zigbee, Thread).
    Ieee802154,
    /// A simulated link for tests.
    Simulated,
}

/// Whether a link can carry traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum LinkState {
    /// Carrying traffic.
    Up,
    /// Not carrying traffic (no association, no coverage, cable out, outage).
    Down,
}

/// What a link says about itself: the inputs of automatic selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LinkInfo {
    /// The medium.
    pub medium: Medium,
    /// Largest datagram, in bytes, the link carries in one piece now.
    pub mtu: u16,
    /// Current bitrate in bits per second.
    pub bitrate_bps: u32,
    /// Typical one-way latency in milliseconds, excluding serialisation time.
    pub latency_ms: u32,
    /// Energy per byte sent, in nanojoules.
    pub energy_nj_per_byte: u32,
    /// Money per kilobyte sent, in micro-units of the operator's currency (0 for free media).
    pub cost_micro_per_kib: u32,
    /// Received signal strength in dBm, where the medium reports it.
    pub rssi_dbm: Option<i16>,
    /// Signal-to-noise ratio in dB, where the medium reports it.
    pub snr_db: Option<i16>,
    /// Up or down.
    pub state: LinkState,
}

impl LinkInfo {
    /// An up link on `medium` carrying datagrams of up to `mtu` bytes, every other figure
    /// zero or unknown; set the rest with struct update syntax
    /// (`LinkInfo { bitrate_bps: 250, ..LinkInfo::new(Medium::Lora, 51) }`).
    pub const fn new(medium: Medium, mtu: u16) -> Self {
        Self {
            medium,
            mtu,
            bitrate_bps: 0,
            latency_ms: 0,
            energy_nj_per_byte: 0,
            cost_micro_per_kib: 0,
            rssi_dbm: None,
            snr_db: None,
            state: LinkState::Up,
        }
    }

    /// Whether the link can carry traffic now.
    pub const fn is_up(&self) -> bool {
        matches!(self.state, LinkState::Up)
    }

    /// Milliseconds to deliver `bytes` one way: latency plus serialisation time, saturating.
    pub fn delivery_time_ms(&self, bytes: usize) -> u64 {
        let bits = u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(8);
        let serialise = match self.bitrate_bps {
            0 => u64::MAX,
            bps => bits.saturating_mul(1000).div_ceil(u64::from(bps)),
        };
        u64::from(self.latency_ms).saturating_add(serialise)
    }

    /// Energy in nanojoules to send `bytes`, saturating.
    pub fn energy_nj(&self, bytes: usize) -> u64 {
        u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.energy_nj_per_byte))
    }

    /// Cost in micro-units to send `bytes`, rounded up, saturating.
    pub fn cost_micro(&self, bytes: usize) -> u64 {
        u64::try_from(bytes)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(self.cost_micro_per_kib))
            .div_ceil(1024)
    }
}

/// A datagram link.
///
/// `send` hands one datagram of at most `info().mtu` bytes to the medium; `receive` waits for
/// the next one. Links do not retransmit: wrap them with [`crate::qos::ReliableEndpoint`].
#[allow(async_fn_in_trait)] // Device executors are single-threaded; `Send` bounds would exclude them.
#[cfg_attr(feature = "mock", mockall::automock(type Error = LinkError;))]
pub trait Link {
    /// The link's error; its [`iot_core::Error::kind`] tells generic code what happened.
    type Error: iot_core::Error;

    /// What the link says about itself now.
    fn info(&self) -> LinkInfo;

    /// Sends one datagram.
    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error>;

    /// Waits for the next datagram, copies it into `buf` and returns its length.
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;

    /// The next datagram if one is ready now, without waiting: for poll loops.
    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
}

impl<L: Link + ?Sized> Link for &mut L {
    type Error = L::Error;

    fn info(&self) -> LinkInfo {
        (**self).info()
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error> {
        (**self).send(datagram).await
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        (**self).receive(buf).await
    }

    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        (**self).try_receive(buf)
    }
}

/// A coarse error usable by simple link implementations and mocks.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LinkError {
    /// The link is down.
    #[error("link is down")]
    Down,
    /// The datagram exceeds the MTU.
    #[error("datagram of {len} bytes exceeds the MTU of {mtu}")]
    TooLarge {
        /// Datagram length.
        len: usize,
        /// The link's MTU.
        mtu: u16,
    },
    /// The receive buffer cannot hold the datagram.
    #[error("receive buffer too small")]
    BufferTooSmall,
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The medium refused the datagram for now (duty cycle, flow control, full queue).
    #[error("medium busy")]
    Busy,
    /// The underlying device failed.
    #[error("device failure")]
    Device,
}

impl iot_core::Error for LinkError {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::Down | Self::Device | Self::Busy => ErrorKind::Transport,
            Self::TooLarge { .. } | Self::BufferTooSmall => ErrorKind::Capacity,
            Self::Timeout => ErrorKind::Timeout,
        }
    }
}

/// The [`iot_core::ErrorKind`] of an I/O error from a serial port or socket: timeouts,
/// refused permissions, exhausted memory and invalid arguments keep their meaning (callers
/// retry a timeout, not a refusal); every other failure is a transport failure.
pub(crate) fn io_error_kind(kind: embedded_io::ErrorKind) -> iot_core::ErrorKind {
    use embedded_io::ErrorKind as Io;
    use iot_core::ErrorKind;
    match kind {
        Io::TimedOut => ErrorKind::Timeout,
        Io::PermissionDenied => ErrorKind::Unauthorized,
        Io::OutOfMemory => ErrorKind::Capacity,
        Io::InvalidInput => ErrorKind::InvalidInput,
        Io::InvalidData => ErrorKind::Decode,
        _ => ErrorKind::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> LinkInfo {
        LinkInfo {
            medium: Medium::Lora,
            mtu: 51,
            bitrate_bps: 250,
            latency_ms: 100,
            energy_nj_per_byte: 1_000,
            cost_micro_per_kib: 2048,
            rssi_dbm: Some(-110),
            snr_db: Some(-5),
            state: LinkState::Up,
        }
    }

    #[test]
    fn delivery_energy_and_cost_arithmetic() {
        let i = info();
        // 25 bytes = 200 bits at 250 bit/s = 800 ms, plus 100 ms latency.
        assert_eq!(i.delivery_time_ms(25), 900);
        assert_eq!(i.energy_nj(25), 25_000);
        assert_eq!(i.cost_micro(512), 1024);
        assert_eq!(i.cost_micro(1), 2);
        let mut zero = i;
        zero.bitrate_bps = 0;
        assert_eq!(zero.delivery_time_ms(1), u64::MAX);
        assert_eq!(i.energy_nj(usize::MAX), u64::MAX);
        assert!(i.is_up());
        assert!(
            !LinkInfo {
                state: LinkState::Down,
                ..i
            }
            .is_up()
        );
    }
}
