//! Test doubles (feature `testkit`): simulated links and serial wires with loss, latency,
//! jitter (reordering), duplication and outages, all driven by an injected clock and seed,
//! and a simulated implementation of each medium control trait ([`SimWifi`](crate::sim::SimWifi), [`SimLora`](crate::sim::SimLora),
//! [`SimCellular`](crate::sim::SimCellular)).
//!
//! Nothing here sleeps. Time moves when the test moves its [`iot_core::ManualClock`];
//! randomness comes from a seeded [`SplitMix64`], so every run is reproducible.
//!
//! ```
//! use iot_core::ManualClock;
//! use iot_transport::sim::{SimConfig, SimNetwork};
//! use iot_transport::Link;
//!
//! let clock = ManualClock::new(0);
//! let net: SimNetwork<_, 8, 64> = SimNetwork::new(&clock, SimConfig::ideal(50), 42);
//! let (mut a, mut b) = net.endpoints();
//! embassy_futures::block_on(a.send(b"ping")).unwrap();
//! let mut buf = [0u8; 64];
//! assert_eq!(b.try_receive(&mut buf), Ok(None)); // still in flight
//! clock.advance(50);
//! assert_eq!(b.try_receive(&mut buf), Ok(Some(4)));
//! assert_eq!(&buf[..4], b"ping");
//! ```

mod cellular;
mod lora;
mod wifi;

pub use cellular::SimCellular;
pub use lora::SimLora;
pub use wifi::SimWifi;

use core::cell::RefCell;

use iot_core::Clock;

use crate::link::{Link, LinkError, LinkInfo, LinkState, Medium};
use crate::rng::{Rng, SplitMix64};

/// How a simulated link misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SimConfig {
    /// Base one-way latency.
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from `0..=jitter_ms` per datagram; datagrams overtake
    /// each other when it exceeds their spacing (reordering).
    pub jitter_ms: u64,
    /// Probability of losing a datagram, per mille.
    pub loss_per_mille: u16,
    /// Bound on consecutive losses per direction (`u32::MAX` = unbounded): with a bound,
    /// every retransmitting sender eventually gets through.
    pub max_consecutive_losses: u32,
    /// Probability of delivering a datagram twice, per mille.
    pub duplicate_per_mille: u16,
    /// What the link reports about itself (its `state` is overridden by outages).
    pub info: LinkInfo,
}

impl SimConfig {
    /// A perfect link with fixed latency.
    pub const fn ideal(latency_ms: u64) -> Self {
        Self {
            latency_ms,
            jitter_ms: 0,
            loss_per_mille: 0,
            max_consecutive_losses: u32::MAX,
            duplicate_per_mille: 0,
            info: LinkInfo {
                medium: Medium::Simulated,
                mtu: 1024,
                bitrate_bps: 1_000_000,
                latency_ms: 0,
                energy_nj_per_byte: 100,
                cost_micro_per_kib: 0,
                rssi_dbm: None,
                snr_db: None,
                state: LinkState::Up,
            },
        }
    }

    /// Sets loss.
    #[must_use]
    pub const fn with_loss(mut self, per_mille: u16, max_consecutive: u32) -> Self {
        self.loss_per_mille = per_mille;
        self.max_consecutive_losses = max_consecutive;
        self
    }

    /// Sets duplication.
    #[must_use]
    pub const fn with_duplication(mut self, per_mille: u16) -> Self {
        self.duplicate_per_mille = per_mille;
        self
    }

    /// Sets jitter (reordering).
    #[must_use]
    pub const fn with_jitter(mut self, jitter_ms: u64) -> Self {
        self.jitter_ms = jitter_ms;
        self
    }

    /// Sets the reported link info (MTU, bitrate, energy, cost, medium).
    #[must_use]
    pub const fn with_info(mut self, info: LinkInfo) -> Self {
        self.info = info;
        self
    }
}

/// What the simulation did, for assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SimStats {
    /// Datagrams accepted by `send`.
    pub sent: u32,
    /// Datagrams handed to a receiver.
    pub delivered: u32,
    /// Datagrams lost on purpose.
    pub lost: u32,
    /// Extra copies created.
    pub duplicated: u32,
    /// Datagrams dropped because the in-flight queue was full.
    pub overflowed: u32,
    /// Sends refused because the link was down.
    pub refused: u32,
}

#[derive(Debug, Clone)]
struct InFlight<const M: usize> {
    deliver_at: u64,
    order: u64,
    data: heapless::Vec<u8, M>,
}

#[derive(Debug)]
struct SimState<const Q: usize, const M: usize> {
    config: SimConfig,
    rng: SplitMix64,
    up: bool,
    outages: heapless::Vec<(u64, u64), 8>,
    queues: [heapless::Vec<InFlight<M>, Q>; 2],
    consecutive_losses: [u32; 2],
    order: u64,
    stats: SimStats,
}

/// Which end of a [`SimNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Side {
    /// The first end.
    A,
    /// The second end.
    B,
}

impl Side {
    const fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
    const fn peer(self) -> usize {
        match self {
            Self::A => 1,
            Self::B => 0,
        }
    }
}

/// A simulated two-ended datagram link holding up to `Q` datagrams of `M` bytes in flight
/// per direction, timed by clock `C`.
#[derive(Debug)]
pub struct SimNetwork<C, const Q: usize, const M: usize> {
    clock: C,
    state: RefCell<SimState<Q, M>>,
}

impl<C: Clock, const Q: usize, const M: usize> SimNetwork<C, Q, M> {
    /// A link with `config`, randomness seeded by `seed`.
    pub fn new(clock: C, config: SimConfig, seed: u64) -> Self {
        Self {
            clock,
            state: RefCell::new(SimState {
                config,
                rng: SplitMix64::new(seed),
                up: true,
                outages: heapless::Vec::new(),
                queues: [heapless::Vec::new(), heapless::Vec::new()],
                consecutive_losses: [0, 0],
                order: 0,
                stats: SimStats::default(),
            }),
        }
    }

    /// Both ends.
    pub fn endpoints(&self) -> (SimLink<'_, C, Q, M>, SimLink<'_, C, Q, M>) {
        (self.endpoint(Side::A), self.endpoint(Side::B))
    }

    /// One end.
    pub fn endpoint(&self, side: Side) -> SimLink<'_, C, Q, M> {
        SimLink { net: self, side }
    }

    /// Takes the link up or down by hand.
    pub fn set_up(&self, up: bool) {
        self.state.borrow_mut().up = up;
    }

    /// Schedules an outage over `[from_ms, until_ms)`; at most 8 are remembered.
    pub fn schedule_outage(&self, from_ms: u64, until_ms: u64) -> Result<(), LinkError> {
        self.state
            .borrow_mut()
            .outages
            .push((from_ms, until_ms))
            .map_err(|_| LinkError::Busy)
    }

    /// Whether the link is up now.
    pub fn is_up(&self) -> bool {
        let now = self.clock.now_ms();
        let s = self.state.borrow();
        s.up && !s.outages.iter().any(|&(f, u)| now >= f && now < u)
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.state.borrow().stats
    }

    /// Datagrams in flight in both directions.
    pub fn in_flight(&self) -> usize {
        let s = self.state.borrow();
        s.queues.iter().map(|q| q.len()).sum()
    }

    /// Changes the misbehaviour from now on.
    pub fn reconfigure(&self, config: SimConfig) {
        self.state.borrow_mut().config = config;
    }

    fn send_from(&self, side: Side, datagram: &[u8]) -> Result<(), LinkError> {
        if !self.is_up() {
            let mut s = self.state.borrow_mut();
            s.stats.refused = s.stats.refused.saturating_add(1);
            return Err(LinkError::Down);
        }
        let now = self.clock.now_ms();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let mtu = s.config.info.mtu;
        if datagram.len() > usize::from(mtu).min(M) {
            return Err(LinkError::TooLarge {
                len: datagram.len(),
                mtu,
            });
        }
        s.stats.sent = s.stats.sent.saturating_add(1);
        let dir = side.peer();
        let losses = s.consecutive_losses.get_mut(dir).ok_or(LinkError::Device)?;
        if *losses < s.config.max_consecutive_losses
            && s.rng.chance_per_mille(s.config.loss_per_mille)
        {
            *losses = losses.saturating_add(1);
            s.stats.lost = s.stats.lost.saturating_add(1);
            return Ok(());
        }
        *losses = 0;
        let copies = if s.rng.chance_per_mille(s.config.duplicate_per_mille) {
            s.stats.duplicated = s.stats.duplicated.saturating_add(1);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = s.rng.below_inclusive(s.config.jitter_ms);
            let item = InFlight {
                deliver_at: now
                    .saturating_add(s.config.latency_ms)
                    .saturating_add(jitter),
                order: s.order,
                data: heapless::Vec::from_slice(datagram).map_err(|_| LinkError::Device)?,
            };
            s.order = s.order.wrapping_add(1);
            let queue = s.queues.get_mut(dir).ok_or(LinkError::Device)?;
            if queue.push(item).is_err() {
                s.stats.overflowed = s.stats.overflowed.saturating_add(1);
            }
        }
        Ok(())
    }

    fn receive_at(&self, side: Side, buf: &mut [u8]) -> Result<Option<usize>, LinkError> {
        if !self.is_up() {
            return Err(LinkError::Down);
        }
        let now = self.clock.now_ms();
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        let queue = s.queues.get_mut(side.index()).ok_or(LinkError::Device)?;
        let next = queue
            .iter()
            .enumerate()
            .filter(|(_, d)| d.deliver_at <= now)
            .min_by_key(|(_, d)| (d.deliver_at, d.order))
            .map(|(i, _)| i);
        let Some(i) = next else {
            return Ok(None);
        };
        let item = queue.swap_remove(i);
        let dst = buf
            .get_mut(..item.data.len())
            .ok_or(LinkError::BufferTooSmall)?;
        dst.copy_from_slice(&item.data);
        s.stats.delivered = s.stats.delivered.saturating_add(1);
        Ok(Some(item.data.len()))
    }

    fn info(&self) -> LinkInfo {
        let mut info = self.state.borrow().config.info;
        info.state = if self.is_up() {
            LinkState::Up
        } else {
            LinkState::Down
        };
        info
    }
}

/// One end of a [`SimNetwork`]; implements [`Link`].
#[derive(Debug)]
pub struct SimLink<'a, C, const Q: usize, const M: usize> {
    net: &'a SimNetwork<C, Q, M>,
    side: Side,
}

impl<C, const Q: usize, const M: usize> SimLink<'_, C, Q, M> {
    /// Which end this is.
    pub const fn side(&self) -> Side {
        self.side
    }
}

impl<C: Clock, const Q: usize, const M: usize> Link for SimLink<'_, C, Q, M> {
    type Error = LinkError;

    fn info(&self) -> LinkInfo {
        self.net.info()
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error> {
        self.net.send_from(self.side, datagram)
    }

    /// In a simulation nothing arrives unless the clock moves, so instead of waiting forever
    /// this returns [`LinkError::Timeout`] when no datagram is due.
    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.net
            .receive_at(self.side, buf)?
            .ok_or(LinkError::Timeout)
    }

    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        self.net.receive_at(self.side, buf)
    }
}

/// A simulated serial line: two byte queues of `N` bytes, one per direction, for testing
/// [`crate::framing`] code and UART protocols without hardware.
#[derive(Debug)]
pub struct SerialWire<const N: usize> {
    queues: RefCell<[heapless::Deque<u8, N>; 2]>,
}

impl<const N: usize> Default for SerialWire<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SerialWire<N> {
    /// An idle line.
    pub const fn new() -> Self {
        Self {
            queues: RefCell::new([heapless::Deque::new(), heapless::Deque::new()]),
        }
    }

    /// Both ends.
    pub fn ends(&self) -> (SerialEnd<'_, N>, SerialEnd<'_, N>) {
        (
            SerialEnd {
                wire: self,
                side: Side::A,
            },
            SerialEnd {
                wire: self,
                side: Side::B,
            },
        )
    }

    /// Injects bytes (line noise, a peer that started mid-frame) towards `to`.
    /// Returns how many fitted.
    pub fn inject(&self, to: Side, bytes: &[u8]) -> usize {
        let mut q = self.queues.borrow_mut();
        let Some(queue) = q.get_mut(to.index()) else {
            return 0;
        };
        bytes
            .iter()
            .take_while(|&&b| queue.push_back(b).is_ok())
            .count()
    }

    /// Bytes waiting to be read by `side`.
    pub fn pending(&self, side: Side) -> usize {
        self.queues
            .borrow()
            .get(side.index())
            .map_or(0, heapless::Deque::len)
    }
}

/// One end of a [`SerialWire`]; implements the `embedded-io` and `embedded-io-async`
/// `Read`, `Write` and `ReadReady` traits.
#[derive(Debug)]
pub struct SerialEnd<'a, const N: usize> {
    wire: &'a SerialWire<N>,
    side: Side,
}

/// A [`SerialEnd`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SerialWireError {
    /// Nothing to read (a real UART would wait; the simulation cannot).
    #[error("no data")]
    Empty,
    /// The peer's queue is full.
    #[error("line buffer full")]
    Full,
}

impl embedded_io::Error for SerialWireError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self {
            Self::Empty => embedded_io::ErrorKind::TimedOut,
            Self::Full => embedded_io::ErrorKind::OutOfMemory,
        }
    }
}

impl<const N: usize> embedded_io::ErrorType for SerialEnd<'_, N> {
    type Error = SerialWireError;
}

impl<const N: usize> SerialEnd<'_, N> {
    fn read_now(&mut self, buf: &mut [u8]) -> Result<usize, SerialWireError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut q = self.wire.queues.borrow_mut();
        let queue = q.get_mut(self.side.index()).ok_or(SerialWireError::Empty)?;
        if queue.is_empty() {
            return Err(SerialWireError::Empty);
        }
        let mut n = 0usize;
        for slot in buf.iter_mut() {
            match queue.pop_front() {
                Some(b) => {
                    *slot = b;
                    n = n.saturating_add(1);
                }
                None => break,
            }
        }
        Ok(n)
    }

    fn write_now(&mut self, buf: &[u8]) -> Result<usize, SerialWireError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut q = self.wire.queues.borrow_mut();
        let queue = q.get_mut(self.side.peer()).ok_or(SerialWireError::Full)?;
        let n = buf
            .iter()
            .take_while(|&&b| queue.push_back(b).is_ok())
            .count();
        if n == 0 {
            return Err(SerialWireError::Full);
        }
        Ok(n)
    }
}

impl<const N: usize> embedded_io::Read for SerialEnd<'_, N> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.read_now(buf)
    }
}

impl<const N: usize> embedded_io::Write for SerialEnd<'_, N> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.write_now(buf)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl<const N: usize> embedded_io::ReadReady for SerialEnd<'_, N> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.wire.pending(self.side) > 0)
    }
}

impl<const N: usize> embedded_io_async::Read for SerialEnd<'_, N> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.read_now(buf)
    }
}

impl<const N: usize> embedded_io_async::Write for SerialEnd<'_, N> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.write_now(buf)
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use embassy_futures::block_on;
    use iot_core::ManualClock;

    use super::*;
    use crate::framing::{FramedLink, FramedSerial};

    #[test]
    fn loss_bound_duplication_and_reordering() {
        let clock = ManualClock::new(0);
        let cfg = SimConfig::ideal(10)
            .with_loss(1000, 2)
            .with_duplication(0)
            .with_jitter(0);
        let net: SimNetwork<_, 64, 8> = SimNetwork::new(&clock, cfg, 1);
        let (mut a, mut b) = net.endpoints();
        for i in 0..6u8 {
            block_on(a.send(&[i])).unwrap();
        }
        // Certain loss, but never more than 2 in a row: every third gets through.
        assert_eq!(net.stats().lost, 4);
        clock.advance(10);
        let mut buf = [0u8; 8];
        assert_eq!(b.try_receive(&mut buf), Ok(Some(1)));
        assert_eq!(buf[0], 2);
        assert_eq!(b.try_receive(&mut buf), Ok(Some(1)));
        assert_eq!(buf[0], 5);
        assert_eq!(block_on(b.receive(&mut buf)), Err(LinkError::Timeout));

        net.reconfigure(SimConfig::ideal(10).with_duplication(1000).with_jitter(100));
        for i in 0..20u8 {
            block_on(a.send(&[i])).unwrap();
        }
        clock.advance(200);
        let mut got = std::vec::Vec::new();
        while let Some(n) = b.try_receive(&mut buf).unwrap() {
            got.push(buf[..n][0]);
        }
        assert_eq!(got.len(), 40);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_ne!(got, sorted, "jitter reorders");
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
    }

    #[test]
    fn outages_refuse_traffic_and_end() {
        let clock = ManualClock::new(0);
        let net: SimNetwork<_, 4, 8> = SimNetwork::new(&clock, SimConfig::ideal(0), 1);
        net.schedule_outage(100, 200).unwrap();
        let (mut a, mut b) = net.endpoints();
        clock.advance(150);
        assert!(!a.info().is_up());
        assert_eq!(block_on(a.send(b"x")), Err(LinkError::Down));
        assert_eq!(b.try_receive(&mut [0; 8]), Err(LinkError::Down));
        clock.advance(50);
        assert!(a.info().is_up());
        block_on(a.send(b"x")).unwrap();
        assert_eq!(b.try_receive(&mut [0; 8]), Ok(Some(1)));
        net.set_up(false);
        assert!(!net.is_up());
        assert_eq!(net.stats().refused, 1);
        assert_eq!(
            block_on(a.send(&[0; 9])),
            Err(LinkError::Down),
            "down is reported before size"
        );
        net.set_up(true);
        assert!(matches!(
            block_on(a.send(&[0; 9])),
            Err(LinkError::TooLarge { .. })
        ));
    }

    #[test]
    fn framed_link_over_a_noisy_serial_wire() {
        let wire = SerialWire::<512>::new();
        let (a, b) = wire.ends();
        let mut tx: FramedLink<_, 64> = FramedLink::new(a, 115_200);
        let mut rx: FramedLink<_, 64> = FramedLink::new(b, 115_200);
        assert_eq!(tx.info().mtu, 59);
        // Noise before, a corrupted frame, then good frames.
        wire.inject(Side::B, &[0xAA, 0x55, 0x00, 0x03, 0x01]);
        block_on(tx.send(b"first")).unwrap();
        block_on(tx.send(&[0u8; 10])).unwrap();
        let mut buf = [0u8; 64];
        let n = block_on(rx.receive(&mut buf)).unwrap();
        assert_eq!(&buf[..n], b"first");
        assert_eq!(rx.try_receive(&mut buf), Ok(Some(10)));
        assert_eq!(&buf[..10], &[0u8; 10]);
        assert_eq!(rx.try_receive(&mut buf), Ok(None));
        assert!(rx.stats().crc_errors + rx.stats().malformed >= 1);
        assert_eq!(rx.stats().frames, 2);
        assert!(block_on(tx.send(&[1u8; 60])).is_err());
        let mut small = [0u8; 2];
        block_on(tx.send(b"abc")).unwrap();
        assert_eq!(
            rx.try_receive(&mut small),
            Err(crate::framing::FramedError::BufferTooSmall)
        );
    }

    #[test]
    fn split_uart_halves_join_into_a_framed_link() {
        use crate::framing::Duplex;
        let forward = SerialWire::<256>::new();
        let backward = SerialWire::<256>::new();
        let (f_a, f_b) = forward.ends();
        let (b_a, b_b) = backward.ends();
        // Device: transmits on `forward`, receives on `backward`; gateway the other way.
        let mut dev: FramedLink<_, 64> = FramedLink::new(Duplex::new(b_a, f_a), 9_600);
        let mut gw: FramedLink<_, 64> = FramedLink::new(Duplex::new(f_b, b_b), 9_600);
        block_on(dev.send(b"up")).unwrap();
        block_on(gw.send(b"down")).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(gw.try_receive(&mut buf), Ok(Some(2)));
        assert_eq!(dev.try_receive(&mut buf), Ok(Some(4)));
        assert_eq!(&buf[..4], b"down");
        assert_eq!(dev.try_receive(&mut buf), Ok(None));
    }

    #[test]
    fn blocking_framed_serial_twin() {
        let wire = SerialWire::<256>::new();
        let (a, b) = wire.ends();
        let mut tx: FramedSerial<_, 32> = FramedSerial::new(a);
        let mut rx: FramedSerial<_, 32> = FramedSerial::new(b);
        assert_eq!(tx.mtu(), 27);
        tx.send(b"hello").unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(rx.receive(&mut buf), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(
            rx.receive(&mut buf),
            Err(crate::framing::FramedError::Io(SerialWireError::Empty))
        );
        assert_eq!(rx.stats().frames, 1);
    }
}
