//! Time: a monotonic [`Clock`] trait, a [`ManualClock`] for tests and simulations, and a
//! hybrid logical clock ([`HybridLogicalClock`], Kulkarni et al., 2014).
//!
//! A hybrid logical clock stamps events so that causally related events are ordered even
//! when wall clocks disagree or step backwards, while staying close to physical time.
//! Timestamps are compact: 48 bits of milliseconds and 16 bits of logical counter in one
//! `u64`, plus the [`NodeId`] that breaks ties, which makes the order total.
//!
//! ```
//! use iot_core::id::NodeId;
//! use iot_core::time::HybridLogicalClock;
//!
//! let mut device = HybridLogicalClock::new(NodeId(1), 60_000);
//! let a = device.now(1_000)?;
//! let b = device.now(900)?; // the wall clock stepped back
//! assert!(b > a);
//!
//! // A message from a node whose clock runs ahead, within the allowed drift.
//! let mut server = HybridLogicalClock::new(NodeId(2), 60_000);
//! let remote = server.now(5_000)?;
//! let c = device.observe(remote, 1_000)?;
//! assert!(c > remote && c > b);
//! # Ok::<(), iot_core::time::ClockError>(())
//! ```

use core::cell::Cell;
use core::fmt;

use crate::error::{Error, ErrorKind};
use crate::id::NodeId;

/// A monotonic source of milliseconds.
///
/// Implementations never go backwards. The origin is arbitrary (boot, process start, or the
/// Unix epoch for wall clocks); only differences matter to schedulers.
pub trait Clock {
    /// Milliseconds since the clock's origin.
    fn now_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A clock that moves only when told to: for tests, simulations and accelerated time.
///
/// ```
/// use iot_core::time::{Clock, ManualClock};
/// let clock = ManualClock::new(0);
/// clock.advance(10_000);
/// assert_eq!(clock.now_ms(), 10_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Cell<u64>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub const fn new(start_ms: u64) -> Self {
        Self {
            now: Cell::new(start_ms),
        }
    }

    /// Moves the clock forward by `ms` (saturating at `u64::MAX`).
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get().saturating_add(ms));
    }

    /// Moves the clock to `ms` if that is not in the past; a manual clock stays monotonic.
    pub fn advance_to(&self, ms: u64) {
        if ms > self.now.get() {
            self.now.set(ms);
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

/// A monotonic clock backed by `std::time::Instant`, counting from its creation.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct StdClock {
    origin: std::time::Instant,
}

#[cfg(feature = "std")]
impl StdClock {
    /// A clock reading zero now.
    pub fn new() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Milliseconds since the Unix epoch from the system clock: the physical time a server
/// feeds its hybrid logical clock. It may step backwards; the HLC absorbs that.
#[cfg(feature = "std")]
pub fn system_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why the hybrid logical clock refused to produce or accept a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClockError {
    /// A remote timestamp is further ahead of local physical time than the allowed drift.
    /// The clock was not moved.
    #[error(
        "remote time {remote_ms} ms is more than {max_drift_ms} ms ahead of local time {local_ms} ms"
    )]
    DriftExceeded {
        /// Physical part of the remote timestamp.
        remote_ms: u64,
        /// Local physical time when the timestamp arrived.
        local_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// Physical time does not fit the 48-bit millisecond field, or the clock is exhausted.
    #[error("hybrid logical clock overflow")]
    Overflow,
}

impl Error for ClockError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Clock
    }
}

/// Bits of the logical counter in a compact HLC time.
pub const LOGICAL_BITS: u32 = 16;
/// Largest physical time (milliseconds) an HLC time can carry: about 8,900 years after the epoch.
pub const MAX_PHYSICAL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid-logical-clock timestamp: 48-bit physical milliseconds and 16-bit logical counter
/// packed in [`HlcTimestamp::time`], and the issuing node as the tie-break.
///
/// The derived order compares `time` first, then `node`: a total order across all nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(minicbor::Encode, minicbor::Decode, minicbor::CborLen)]
pub struct HlcTimestamp {
    /// Physical milliseconds in the high 48 bits, logical counter in the low 16.
    #[n(0)]
    pub time: u64,
    /// The node that issued the timestamp.
    #[n(1)]
    pub node: NodeId,
}

impl HlcTimestamp {
    /// Builds a timestamp from its parts; `None` if `physical_ms` exceeds 48 bits.
    pub const fn from_parts(physical_ms: u64, logical: u16, node: NodeId) -> Option<Self> {
        if physical_ms > MAX_PHYSICAL_MS {
            return None;
        }
        Some(Self {
            time: (physical_ms << LOGICAL_BITS) | logical as u64,
            node,
        })
    }

    /// The physical (wall-clock) milliseconds.
    pub const fn physical_ms(&self) -> u64 {
        self.time >> LOGICAL_BITS
    }

    /// The logical counter.
    pub const fn logical(&self) -> u16 {
        (self.time & 0xffff) as u16
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms(), self.logical(), self.node)
    }
}

/// A hybrid logical clock for one node.
///
/// Physical time is passed in by the caller (from any [`Clock`] or the system time), which
/// keeps the clock deterministic under test. `const fn new` lets it live in a `static`.
#[derive(Debug, Clone)]
pub struct HybridLogicalClock {
    last: u64,
    node: NodeId,
    max_drift_ms: u64,
}

impl HybridLogicalClock {
    /// A clock for `node` that rejects remote timestamps more than `max_drift_ms` ahead.
    pub const fn new(node: NodeId, max_drift_ms: u64) -> Self {
        Self {
            last: 0,
            node,
            max_drift_ms,
        }
    }

    /// Restores a clock from the last timestamp it issued or observed (after a reboot, so
    /// timestamps keep increasing even if the wall clock restarts from zero).
    pub const fn restore(node: NodeId, max_drift_ms: u64, last: u64) -> Self {
        Self {
            last,
            node,
            max_drift_ms,
        }
    }

    /// This clock's node.
    pub const fn node(&self) -> NodeId {
        self.node
    }

    /// The newest packed time issued or observed; persist it to survive restarts.
    pub const fn last(&self) -> u64 {
        self.last
    }

    /// The configured drift bound in milliseconds.
    pub const fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    fn physical(wall_ms: u64) -> Result<u64, ClockError> {
        if wall_ms > MAX_PHYSICAL_MS {
            return Err(ClockError::Overflow);
        }
        Ok(wall_ms << LOGICAL_BITS)
    }

    /// Stamps a local or send event. Strictly greater than every timestamp this clock issued
    /// or observed before, whatever `wall_ms` does.
    pub fn now(&mut self, wall_ms: u64) -> Result<HlcTimestamp, ClockError> {
        let physical = Self::physical(wall_ms)?;
        let next = self
            .last
            .checked_add(1)
            .ok_or(ClockError::Overflow)?
            .max(physical);
        self.last = next;
        Ok(HlcTimestamp {
            time: next,
            node: self.node,
        })
    }

    /// Stamps local time with any [`Clock`] as the physical source.
    pub fn tick<C: Clock + ?Sized>(&mut self, clock: &C) -> Result<HlcTimestamp, ClockError> {
        self.now(clock.now_ms())
    }

    /// Merges a timestamp received from another node and stamps the receive event.
    ///
    /// A remote timestamp more than the drift bound ahead of `wall_ms` is rejected and the
    /// clock is left untouched, so one node with a broken clock cannot drag the fleet forward.
    pub fn observe(
        &mut self,
        remote: HlcTimestamp,
        wall_ms: u64,
    ) -> Result<HlcTimestamp, ClockError> {
        let physical = Self::physical(wall_ms)?;
        if remote.physical_ms() > wall_ms.saturating_add(self.max_drift_ms) {
            return Err(ClockError::DriftExceeded {
                remote_ms: remote.physical_ms(),
                local_ms: wall_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let after = self
            .last
            .max(remote.time)
            .checked_add(1)
            .ok_or(ClockError::Overflow)?;
        let next = after.max(physical);
        self.last = next;
        Ok(HlcTimestamp {
            time: next,
            node: self.node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_regression_keeps_increasing() {
        let mut hlc = HybridLogicalClock::new(NodeId(7), 1_000);
        let a = hlc.now(10_000).unwrap();
        let b = hlc.now(5_000).unwrap();
        let c = hlc.now(5_000).unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.physical_ms(), 10_000);
        assert_eq!((b.logical(), c.logical()), (1, 2));
        let d = hlc.now(20_000).unwrap();
        assert_eq!((d.physical_ms(), d.logical()), (20_000, 0));
    }

    #[test]
    fn drift_is_rejected_without_moving_the_clock() {
        let mut hlc = HybridLogicalClock::new(NodeId(1), 500);
        hlc.now(1_000).unwrap();
        let before = hlc.last();
        let remote = HlcTimestamp::from_parts(1_501, 0, NodeId(2)).unwrap();
        assert_eq!(
            hlc.observe(remote, 1_000),
            Err(ClockError::DriftExceeded {
                remote_ms: 1_501,
                local_ms: 1_000,
                max_drift_ms: 500
            })
        );
        assert_eq!(hlc.last(), before);
        let ok = HlcTimestamp::from_parts(1_500, 3, NodeId(2)).unwrap();
        let merged = hlc.observe(ok, 1_000).unwrap();
        assert_eq!((merged.physical_ms(), merged.logical()), (1_500, 4));
    }

    #[test]
    fn node_breaks_ties_and_overflow_is_an_error() {
        let a = HlcTimestamp::from_parts(5, 1, NodeId(1)).unwrap();
        let b = HlcTimestamp::from_parts(5, 1, NodeId(2)).unwrap();
        assert!(a < b);
        assert!(HlcTimestamp::from_parts(MAX_PHYSICAL_MS + 1, 0, NodeId(1)).is_none());
        let mut hlc = HybridLogicalClock::new(NodeId(1), 0);
        assert_eq!(hlc.now(MAX_PHYSICAL_MS + 1), Err(ClockError::Overflow));
        let mut full = HybridLogicalClock::restore(NodeId(1), 0, u64::MAX);
        assert_eq!(full.now(0), Err(ClockError::Overflow));
        assert_eq!(full.last(), u64::MAX);
    }

    #[test]
    fn manual_clock_is_monotonic() {
        let c = ManualClock::new(100);
        c.advance_to(50);
        assert_eq!(c.now_ms(), 100);
        c.advance(u64::MAX);
        assert_eq!(c.now_ms(), u64::MAX);
    }
}
