//! A bounded store-and-forward outbox with priorities and an explicit overflow policy.
//!
//! Messages wait in the outbox until they are acknowledged (QoS 1 and 2) or sent once
//! (QoS 0), so they survive link outages. Capacity is `N` messages of at most `M` bytes, fixed
//! at compile time. When it is full the user's [`OverflowPolicy`] decides: reject the newest
//! message, or drop the oldest message of the lowest priority. **Every** message that does not
//! make it is counted in [`OutboxStats`] and reported to the caller: nothing is lost silently.
//!
//! A QoS 1 or 2 message is retransmitted on the [`BackoffPolicy`] until acknowledged. Its
//! last permitted attempt is still awaited: the message stays queued (and keeps its slot),
//! not sent again, until its ack arrives (counted `acked`) or the ack deadline passes
//! ([`SentOutcome::LastAttempt`]); [`Outbox::take_expired`] then removes it and counts it as
//! `expired`. A poll loop therefore does: take in acks ([`Outbox::ack`]), drain
//! [`Outbox::take_expired`], send [`Outbox::next_due`] and [`Outbox::mark_sent`] it, sleep
//! until [`Outbox::next_wakeup_ms`].
//!
//! The outbox can be saved to and restored from any [`embedded_storage::Storage`]: a flash
//! region (through `embedded_storage::nor_flash::RmwNorFlashStorage`), a file
//! (`FileStorage`, with `std`) or RAM ([`MemStorage`]).
//!
//! ```
//! use iot_core::{MessageId, QoS};
//! use iot_transport::outbox::{Outbox, OverflowPolicy, Priority, PushOutcome};
//! use iot_transport::retry::BackoffPolicy;
//!
//! let mut outbox: Outbox<2, 16> = Outbox::new(OverflowPolicy::DropOldest, BackoffPolicy::new(1_000, 60_000));
//! outbox.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"a", 0)?;
//! outbox.push(MessageId(2), Priority::High, QoS::AtLeastOnce, b"b", 0)?;
//! // Full: the oldest lowest-priority message makes room, and that is reported and counted.
//! let out = outbox.push(MessageId(3), Priority::Normal, QoS::AtLeastOnce, b"c", 0)?;
//! assert_eq!(out, PushOutcome::Evicted(MessageId(1)));
//! assert_eq!(outbox.stats().evicted, 1);
//! assert_eq!(outbox.next_due(0).map(|e| e.id), Some(MessageId(2))); // priority first
//! # Ok::<(), iot_transport::outbox::OutboxError>(())
//! ```

use crc::{CRC_32_ISO_HDLC, Crc};
use embedded_storage::Storage;
use iot_core::{MessageId, QoS};

use crate::retry::{Backoff, BackoffPolicy};
use crate::rng::Rng;

/// Message priority: higher goes first and is evicted last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Priority {
    /// Bulk data that can wait (logs, history).
    Low,
    /// Routine telemetry.
    #[default]
    Normal,
    /// Commands, acknowledgements, state changes.
    High,
    /// Alarms.
    Critical,
}

impl Priority {
    const fn code(self) -> u8 {
        match self {
            Self::Low => 0,
            Self::Normal => 1,
            Self::High => 2,
            Self::Critical => 3,
        }
    }

    const fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Low),
            1 => Some(Self::Normal),
            2 => Some(Self::High),
            3 => Some(Self::Critical),
            _ => None,
        }
    }
}

/// What happens when a message arrives at a full outbox. There is no default: choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum OverflowPolicy {
    /// Keep what is queued; the new message is rejected (counted in `rejected`).
    RejectNewest,
    /// Evict the oldest message of the lowest priority not above the new one's (counted in
    /// `evicted`); if every queued message outranks the new one, the new one is rejected.
    DropOldest,
}

/// Counters: every message that entered `push` ends in exactly one of them (or is queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OutboxStats {
    /// Messages accepted into the outbox.
    pub accepted: u32,
    /// Messages acknowledged by the peer and removed.
    pub acked: u32,
    /// QoS 0 messages sent once and removed.
    pub sent_unacked: u32,
    /// Messages refused by `push` (full under `RejectNewest`, outranked, or too large).
    pub rejected: u32,
    /// Queued messages evicted to make room (`DropOldest`).
    pub evicted: u32,
    /// Messages removed because no ack arrived by the ack deadline of their last permitted
    /// attempt (the retry attempts or deadline had run out).
    pub expired: u32,
}

impl OutboxStats {
    /// Messages that will never be delivered by this outbox.
    pub const fn dropped(&self) -> u32 {
        self.rejected
            .saturating_add(self.evicted)
            .saturating_add(self.expired)
    }
}

/// Why `push` or persistence failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutboxError {
    /// The outbox is full and the policy kept the queued messages (counted as rejected).
    #[error("outbox full")]
    Full,
    /// The message is longer than the slot size (counted as rejected).
    #[error("message of {len} bytes exceeds the slot size {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Slot size `M`.
        max: usize,
    },
    /// A message with this id is already queued (nothing changed).
    #[error("message id already queued")]
    DuplicateId,
    /// No queued message has this id.
    #[error("no such message")]
    NotFound,
    /// The storage failed.
    #[error("storage failure")]
    Storage,
    /// The stored image is truncated, corrupt or from another layout.
    #[error("stored outbox image is corrupt")]
    Corrupt,
    /// The storage region is too small for the image.
    #[error("storage region too small")]
    StorageTooSmall,
}

impl iot_core::Error for OutboxError {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::Full | Self::TooLarge { .. } | Self::StorageTooSmall => ErrorKind::Capacity,
            Self::DuplicateId => ErrorKind::Conflict,
            Self::NotFound => ErrorKind::NotFound,
            Self::Storage => ErrorKind::Storage,
            Self::Corrupt => ErrorKind::Decode,
        }
    }
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PushOutcome {
    /// Queued; nothing was dropped.
    Queued,
    /// Queued after evicting this message (counted in `evicted`).
    Evicted(MessageId),
}

/// What happened to a message after a transmission.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SentOutcome {
    /// QoS 0: sent once and removed.
    Done,
    /// Waiting for an ack; retransmitted at this time if none arrives.
    AwaitingAck {
        /// When to retransmit.
        retry_at_ms: u64,
    },
    /// That was the last attempt the backoff allows (attempts or deadline ran out). The
    /// message stays queued, is not sent again, and still occupies its slot until its ack
    /// arrives (counted in `acked`) or `expires_at_ms` passes: then
    /// [`Outbox::take_expired`] removes it and counts it in `expired`.
    LastAttempt {
        /// When the message expires if no ack has arrived.
        expires_at_ms: u64,
    },
}

/// Where a queued message is in its life; decides which index list holds its slot. Not
/// stored: it follows from the entry's public fields (see [`OutboxEntry::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not sent since it was queued or restored.
    Fresh,
    /// Sent; retransmitted at `next_attempt_ms` unless acknowledged.
    Scheduled,
    /// Its last attempt is sent; waiting for the ack until `ack_deadline_ms`.
    Waiting,
}

/// A slot index, with [`NIL`] for "none": two bytes where an `Option<usize>` takes 8 on
/// riscv32 and 16 on x86_64. [`Outbox::new`] checks at compile time that `N` slots fit.
type Slot = u16;

/// No slot.
const NIL: Slot = Slot::MAX;

/// A slot number as an index. [`NIL`] is not below `N`, so `slots.get(ix(NIL))` is `None`
/// and "no slot" needs no test of its own.
fn ix(s: Slot) -> usize {
    usize::from(s)
}

/// An index below `N` as a slot number (`N < NIL` is checked at compile time).
fn slot_of(i: usize) -> Slot {
    Slot::try_from(i).unwrap_or(NIL)
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry<const M: usize> {
    /// The message id (acks refer to it).
    pub id: MessageId,
    /// Priority.
    pub priority: Priority,
    /// Requested QoS.
    pub qos: QoS,
    /// When it was queued.
    pub enqueued_ms: u64,
    /// Transmissions so far.
    pub attempts: u32,
    /// Not to be sent before this time; `u64::MAX` once its last attempt has been sent
    /// (see [`OutboxEntry::ack_deadline_ms`]).
    pub next_attempt_ms: u64,
    /// When it was first transmitted, once it has been.
    pub first_sent_ms: Option<u64>,
    /// Set once the last attempt the backoff allows has been sent: the message is not sent
    /// again and expires if no ack has arrived by this time.
    pub ack_deadline_ms: Option<u64>,
    /// The encoded message.
    pub data: heapless::Vec<u8, M>,
    /// When its retransmission backoff started (queued or restored); with `failures` and
    /// the outbox's one [`BackoffPolicy`] this is the message's whole [`Backoff`].
    backoff_started_ms: u64,
    /// Failures its backoff has recorded.
    failures: u32,
    /// Age rank among the queued messages: larger is younger. Renumbered before it could
    /// wrap (see [`Outbox::renumber`]).
    order: u16,
    /// Neighbours in its [`Chain`] (older, younger), or [`NIL`].
    prev: Slot,
    next: Slot,
}

impl<const M: usize> OutboxEntry<M> {
    /// Whether its last attempt has been sent and it only waits for the ack or expiry.
    pub const fn is_awaiting_last_ack(&self) -> bool {
        self.ack_deadline_ms.is_some()
    }

    /// Its state: waiting once its last attempt's deadline is set, fresh until first sent
    /// (`insert` clears both fields, `mark_sent` sets them; callers only ever see `&self` or a
    /// detached copy, so they always agree with the index lists).
    const fn state(&self) -> State {
        if self.ack_deadline_ms.is_some() {
            State::Waiting
        } else if self.first_sent_ms.is_none() {
            State::Fresh
        } else {
            State::Scheduled
        }
    }
}

/// A doubly linked list of slots threaded through [`OutboxEntry`]'s `prev`/`next`, oldest
/// at the head. The outbox keeps one per priority for unsent messages and one per priority
/// for messages scheduled for retransmission, so the next message to send is a chain head
/// and no operation shifts an array. Walks are bounded by the capacity `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    head: Slot,
    tail: Slot,
}

impl Chain {
    const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
    };

    /// Links `slot` after `after` ([`NIL`]: at the head).
    fn link_after<const M: usize>(
        &mut self,
        slots: &mut [OutboxEntry<M>],
        after: Slot,
        slot: Slot,
    ) {
        let next = match slots.get(ix(after)) {
            Some(a) => a.next,
            None => self.head,
        };
        if let Some(e) = slots.get_mut(ix(slot)) {
            e.prev = after;
            e.next = next;
        }
        match slots.get_mut(ix(after)) {
            Some(e) => e.next = slot,
            None => self.head = slot,
        }
        match slots.get_mut(ix(next)) {
            Some(e) => e.prev = slot,
            None => self.tail = slot,
        }
    }

    /// Links `slot` in age order, walking back from the tail (no step for a new message).
    fn insert_by_age<const N: usize, const M: usize>(
        &mut self,
        slots: &mut [OutboxEntry<M>],
        slot: Slot,
    ) {
        let order = slots.get(ix(slot)).map_or(0, |e| e.order);
        let mut after = self.tail;
        for _ in 0..N {
            match slots.get(ix(after)) {
                Some(e) if e.order > order => after = e.prev,
                _ => break,
            }
        }
        self.link_after(slots, after, slot);
    }

    /// Takes `slot`, which must be in this chain, out of it.
    fn unlink<const M: usize>(&mut self, slots: &mut [OutboxEntry<M>], slot: Slot) {
        let Some(e) = slots.get_mut(ix(slot)) else {
            return;
        };
        let (prev, next) = (e.prev, e.next);
        e.prev = NIL;
        e.next = NIL;
        match slots.get_mut(ix(prev)) {
            Some(e) => e.next = next,
            None => self.head = next,
        }
        match slots.get_mut(ix(next)) {
            Some(e) => e.prev = prev,
            None => self.tail = prev,
        }
    }

    /// The oldest message in the chain that is due at `now_ms`.
    fn first_due<'a, const N: usize, const M: usize>(
        &self,
        slots: &'a [OutboxEntry<M>],
        now_ms: u64,
    ) -> Option<&'a OutboxEntry<M>> {
        let mut at = self.head;
        for _ in 0..N {
            let e = slots.get(ix(at))?;
            if e.next_attempt_ms <= now_ms {
                return Some(e);
            }
            at = e.next;
        }
        None
    }
}

/// The duplicate-id filter's bit for `id`: bit `id & 63` (`wrapping_shl` takes the shift
/// modulo 64).
const fn id_bit(id: MessageId) -> u64 {
    1u64.wrapping_shl(id.0)
}

/// Priorities, as chain indices.
const PRIORITIES: usize = 4;

fn chain_index(p: Priority) -> usize {
    usize::from(p.code())
}

/// The outbox: at most `N` messages of at most `M` bytes. See the [module docs](self).
///
/// Messages stay in the slot they were written to. A compact list keeps their ids in age
/// order (for acks), and per-priority chains through the slots keep unsent and scheduled
/// messages in age order, so neither sending nor acknowledging moves a payload, and the
/// next message to send is found at a chain head without scanning the others.
///
/// `N` must be below 65,535 (slots are numbered with `u16`); a larger `N` fails to compile.
#[derive(Clone)]
pub struct Outbox<const N: usize, const M: usize> {
    /// Message storage; a slot listed in `free` holds a stale message.
    slots: heapless::Vec<OutboxEntry<M>, N>,
    /// The retransmission backoff every message follows.
    retry: BackoffPolicy,
    /// At most the earliest `next_attempt_ms` of a scheduled message (`u64::MAX` if none):
    /// until then no scheduled message needs a look.
    scheduled_min: u64,
    /// Bit `i` is set while a queued message's `id & 63` is `i`: a clear bit proves an id
    /// absent without a scan.
    id_bits: u64,
    /// Ids of the queued messages, oldest first.
    ids: heapless::Vec<MessageId, N>,
    /// The slot of each message in `ids`, at the same position.
    id_slots: [Slot; N],
    /// [`State::Fresh`] messages per priority.
    fresh: [Chain; PRIORITIES],
    /// [`State::Scheduled`] messages per priority.
    scheduled: [Chain; PRIORITIES],
    /// [`State::Waiting`] messages, all priorities.
    waiting: Chain,
    /// Released slots, reused before `slots` grows: a stack linked through `next`.
    free: Slot,
    /// The `order` of the next message queued.
    next_order: u16,
    policy: OverflowPolicy,
    /// Slots only `Priority::High` and above may use (see [`Outbox::with_reserved`]).
    reserved: usize,
    stats: OutboxStats,
}

impl<const N: usize, const M: usize> core::fmt::Debug for Outbox<N, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Entries<'a, const N: usize, const M: usize>(&'a Outbox<N, M>);
        impl<const N: usize, const M: usize> core::fmt::Debug for Entries<'_, N, M> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_list().entries(self.0.iter()).finish()
            }
        }
        f.debug_struct("Outbox")
            .field("entries", &Entries(self))
            .field("policy", &self.policy)
            .field("retry", &self.retry)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<const N: usize, const M: usize> Outbox<N, M> {
    /// Every slot number is below [`NIL`].
    const SLOTS_FIT: () = assert!(N < NIL as usize, "Outbox capacity N must be below 65535");

    /// An empty outbox with an explicit overflow policy and the retransmission backoff.
    pub const fn new(policy: OverflowPolicy, retry: BackoffPolicy) -> Self {
        let () = Self::SLOTS_FIT;
        Self {
            slots: heapless::Vec::new(),
            retry,
            scheduled_min: u64::MAX,
            id_bits: 0,
            ids: heapless::Vec::new(),
            id_slots: [NIL; N],
            fresh: [Chain::EMPTY; PRIORITIES],
            scheduled: [Chain::EMPTY; PRIORITIES],
            waiting: Chain::EMPTY,
            free: NIL,
            next_order: 0,
            policy,
            reserved: 0,
            stats: OutboxStats {
                accepted: 0,
                acked: 0,
                sent_unacked: 0,
                rejected: 0,
                evicted: 0,
                expired: 0,
            },
        }
    }

    /// Keeps `slots` of the `N` for control messages ([`Priority::High`] and above:
    /// commands, configuration, OTA, operator shadow changes and their acks): messages of
    /// lower priority see the outbox as full once only `slots` are free, so telemetry and
    /// replies can never take the room a control message needs. Capped at `N`.
    #[must_use]
    pub const fn with_reserved(mut self, slots: usize) -> Self {
        self.reserved = if slots < N { slots } else { N };
        self
    }

    /// Whether a message of `priority` finds no room without dropping.
    fn full_for(&self, priority: Priority) -> bool {
        self.is_full()
            || (priority < Priority::High && self.len().saturating_add(self.reserved) >= N)
    }

    /// Counters so far.
    pub const fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// Queued messages (those waiting for the ack of their last attempt included).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// No room without dropping.
    pub fn is_full(&self) -> bool {
        self.ids.is_full()
    }

    /// The capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The overflow policy.
    pub const fn overflow_policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// The slots of the queued messages, oldest first.
    fn age_slots(&self) -> &[Slot] {
        self.id_slots.get(..self.ids.len()).unwrap_or(&[])
    }

    /// Queued messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &OutboxEntry<M>> {
        self.age_slots()
            .iter()
            .filter_map(|&s| self.slots.get(ix(s)))
    }

    /// Whether a message with `id` is queued.
    pub fn contains(&self, id: MessageId) -> bool {
        self.id_bits & id_bit(id) != 0 && self.position(id).is_some()
    }

    /// Queues a message. See [`OverflowPolicy`] for a full outbox; a full outbox first
    /// makes room by expiring a message whose last ack deadline has passed by `now_ms`
    /// (counted in `expired`, as [`Outbox::take_expired`] would).
    pub fn push(
        &mut self,
        id: MessageId,
        priority: Priority,
        qos: QoS,
        data: &[u8],
        now_ms: u64,
    ) -> Result<PushOutcome, OutboxError> {
        if self.contains(id) {
            return Err(OutboxError::DuplicateId);
        }
        if data.len() > M {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Err(OutboxError::TooLarge {
                len: data.len(),
                max: M,
            });
        }
        let mut outcome = PushOutcome::Queued;
        if self.full_for(priority) && self.expire_one(now_ms).is_none() {
            let victim = match self.policy {
                OverflowPolicy::RejectNewest => None,
                OverflowPolicy::DropOldest => self.eviction_victim(priority),
            };
            match victim.and_then(|pos| self.remove_at(pos)) {
                Some(slot) => {
                    self.stats.evicted = self.stats.evicted.saturating_add(1);
                    let evicted = self.slots.get(slot).map_or(MessageId(0), |e| e.id);
                    outcome = PushOutcome::Evicted(evicted);
                }
                None => {
                    self.stats.rejected = self.stats.rejected.saturating_add(1);
                    return Err(OutboxError::Full);
                }
            }
        }
        if let Err(e) = self.insert(id, priority, qos, data, now_ms) {
            // Unreachable: room was made above. Counted rather than assumed.
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Err(e);
        }
        self.stats.accepted = self.stats.accepted.saturating_add(1);
        Ok(outcome)
    }

    /// The position in age order of the oldest message of the lowest priority not above
    /// `priority`.
    fn eviction_victim(&self, priority: Priority) -> Option<usize> {
        let mut best: Option<(usize, Priority)> = None;
        for (pos, &s) in self.age_slots().iter().enumerate() {
            let Some(p) = self.slots.get(ix(s)).map(|e| e.priority) else {
                continue;
            };
            if p <= priority && best.is_none_or(|(_, b)| p < b) {
                best = Some((pos, p));
                if p == Priority::Low {
                    break;
                }
            }
        }
        best.map(|(pos, _)| pos)
    }

    /// Gives the queued messages the ranks `0..len` in age order, so `next_order` restarts
    /// far from `u16::MAX`; relative order, and so every chain, is unchanged. Runs at most
    /// once per `65,535 - N` insertions.
    fn renumber(&mut self) {
        let mut rank: u16 = 0;
        let queued = self.id_slots.get(..self.ids.len()).unwrap_or(&[]);
        for &s in queued {
            if let Some(e) = self.slots.get_mut(ix(s)) {
                e.order = rank;
            }
            // `len() <= N < u16::MAX`: cannot saturate.
            rank = rank.saturating_add(1);
        }
        self.next_order = rank;
    }

    /// Writes a new fresh message into a free slot; returns the slot. Checks nothing but
    /// room and size; changes nothing on error.
    fn insert(
        &mut self,
        id: MessageId,
        priority: Priority,
        qos: QoS,
        data: &[u8],
        now_ms: u64,
    ) -> Result<usize, OutboxError> {
        if self.ids.is_full() {
            return Err(OutboxError::Full);
        }
        if data.len() > M {
            return Err(OutboxError::TooLarge {
                len: data.len(),
                max: M,
            });
        }
        if self.next_order == u16::MAX {
            self.renumber();
        }
        let order = self.next_order;
        let free = ix(self.free);
        let slot = match self.slots.get_mut(free) {
            Some(e) => {
                let next_free = e.next;
                e.data.clear();
                // Cannot fail: the length was checked.
                let _ = e.data.extend_from_slice(data);
                e.id = id;
                e.priority = priority;
                e.qos = qos;
                e.enqueued_ms = now_ms;
                e.attempts = 0;
                e.next_attempt_ms = now_ms;
                e.first_sent_ms = None;
                e.ack_deadline_ms = None;
                e.backoff_started_ms = now_ms;
                e.failures = 0;
                e.order = order;
                e.prev = NIL;
                e.next = NIL;
                self.free = next_free;
                free
            }
            None => {
                let slot = self.slots.len();
                // The payload is copied straight into the new slot, not moved with the entry.
                let entry = OutboxEntry {
                    id,
                    priority,
                    qos,
                    enqueued_ms: now_ms,
                    attempts: 0,
                    next_attempt_ms: now_ms,
                    first_sent_ms: None,
                    ack_deadline_ms: None,
                    data: heapless::Vec::new(),
                    backoff_started_ms: now_ms,
                    failures: 0,
                    order,
                    prev: NIL,
                    next: NIL,
                };
                self.slots.push(entry).map_err(|_| OutboxError::Full)?;
                if let Some(e) = self.slots.get_mut(slot) {
                    // Cannot fail: the length was checked.
                    let _ = e.data.extend_from_slice(data);
                }
                slot
            }
        };
        self.next_order = self.next_order.saturating_add(1);
        // Cannot fail: `ids` holds the `len() < N` queued messages.
        let pos = self.ids.len();
        self.ids.push(id).map_err(|_| OutboxError::Full)?;
        if let Some(s) = self.id_slots.get_mut(pos) {
            *s = slot_of(slot);
        }
        self.id_bits |= id_bit(id);
        self.link(slot_of(slot), State::Fresh, priority);
        Ok(slot)
    }

    /// The chain that holds messages in `state` of `priority`, and the slots it threads.
    fn chain_mut(
        &mut self,
        state: State,
        priority: Priority,
    ) -> Option<(&mut Chain, &mut [OutboxEntry<M>])> {
        let p = chain_index(priority);
        let chain = match state {
            State::Fresh => self.fresh.get_mut(p)?,
            State::Scheduled => self.scheduled.get_mut(p)?,
            State::Waiting => &mut self.waiting,
        };
        Some((chain, &mut self.slots))
    }

    /// Puts `slot` into the chain of `state` and `priority`, in age order.
    fn link(&mut self, slot: Slot, state: State, priority: Priority) {
        if let Some((chain, slots)) = self.chain_mut(state, priority) {
            chain.insert_by_age::<N, M>(slots, slot);
        }
    }

    /// Takes `slot` out of the chain of `state` and `priority`.
    fn unlink(&mut self, slot: Slot, state: State, priority: Priority) {
        if let Some((chain, slots)) = self.chain_mut(state, priority) {
            chain.unlink(slots, slot);
        }
    }

    /// Removes the message at `pos` in age order from every index and frees its slot,
    /// whose contents stay readable until the next insertion. Returns the slot.
    fn remove_at(&mut self, pos: usize) -> Option<usize> {
        let len = self.ids.len();
        if pos >= len {
            return None;
        }
        let slot = *self.id_slots.get(pos)?;
        let id = self.ids.remove(pos);
        if let Some(rest) = self.id_slots.get_mut(pos..len) {
            // `pos < len`: `rest` is not empty.
            rest.copy_within(1.., 0);
        }
        let bucket = id_bit(id);
        if !self.ids.iter().any(|&i| id_bit(i) == bucket) {
            self.id_bits &= !bucket;
        }
        let (state, priority) = self.slots.get(ix(slot)).map(|e| (e.state(), e.priority))?;
        self.unlink(slot, state, priority);
        // `scheduled_min` stays a lower bound; when nothing is scheduled it resets.
        if state == State::Scheduled && self.scheduled.iter().all(|c| c.head == NIL) {
            self.scheduled_min = u64::MAX;
        }
        self.release(slot);
        Some(ix(slot))
    }

    /// Pushes an unlinked `slot` onto the free stack.
    fn release(&mut self, slot: Slot) {
        if let Some(e) = self.slots.get_mut(ix(slot)) {
            e.next = self.free;
            self.free = slot;
        }
    }

    /// A copy of the (possibly released) message in `slot`, without its links.
    fn detached(&self, slot: usize) -> Option<OutboxEntry<M>> {
        let mut e = self.slots.get(slot)?.clone();
        e.prev = NIL;
        e.next = NIL;
        Some(e)
    }

    /// The message to send next at `now_ms`: highest priority, then oldest, among those due.
    /// A message waiting for the ack of its last attempt is never due.
    pub fn next_due(&self, now_ms: u64) -> Option<&OutboxEntry<M>> {
        let look_at_scheduled = self.scheduled_min <= now_ms;
        for p in (0..PRIORITIES).rev() {
            let fresh = self
                .fresh
                .get(p)
                .and_then(|c| c.first_due::<N, M>(&self.slots, now_ms));
            let retry = if look_at_scheduled {
                self.scheduled
                    .get(p)
                    .and_then(|c| c.first_due::<N, M>(&self.slots, now_ms))
            } else {
                None
            };
            let best = match (fresh, retry) {
                (Some(a), Some(b)) => Some(if a.order <= b.order { a } else { b }),
                (a, b) => a.or(b),
            };
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// The earliest time any message is due or expires, for sleeping in a poll loop.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.iter()
            .map(|e| e.next_attempt_ms.min(e.ack_deadline_ms.unwrap_or(u64::MAX)))
            .min()
    }

    /// Records that message `id` was transmitted at `now_ms`.
    ///
    /// QoS 0 messages are removed ([`SentOutcome::Done`]). QoS 1 and 2 messages are
    /// scheduled for retransmission from the backoff policy ([`SentOutcome::AwaitingAck`]);
    /// after the last attempt the policy allows they stay queued, not due again, until
    /// their ack arrives or the ack deadline passes ([`SentOutcome::LastAttempt`]). That
    /// deadline is the policy's delay before the next attempt, had there been one, without
    /// jitter: `now_ms + retry.base_delay_ms(attempts)` (at least 1 ms).
    pub fn mark_sent<R: Rng + ?Sized>(
        &mut self,
        id: MessageId,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<SentOutcome, OutboxError> {
        let slot = self.find_slot(id).ok_or(OutboxError::NotFound)?;
        let entry = self.slots.get_mut(slot).ok_or(OutboxError::NotFound)?;
        entry.attempts = entry.attempts.saturating_add(1);
        if entry.qos == QoS::AtMostOnce {
            if let Some(pos) = self.age_slots().iter().position(|&s| ix(s) == slot) {
                self.remove_at(pos);
            }
            self.stats.sent_unacked = self.stats.sent_unacked.saturating_add(1);
            return Ok(SentOutcome::Done);
        }
        let was = entry.state();
        if let Some(expires_at_ms) = entry.ack_deadline_ms {
            // Sent again although not due: the deadline of the last attempt stands.
            return Ok(SentOutcome::LastAttempt { expires_at_ms });
        }
        let priority = entry.priority;
        entry.first_sent_ms.get_or_insert(now_ms);
        let mut backoff = Backoff::resume(self.retry, entry.backoff_started_ms, entry.failures);
        let delay = backoff.next_delay(now_ms, rng);
        entry.failures = backoff.failures();
        let (outcome, next_state) = match delay {
            Some(delay) => {
                let at = now_ms.saturating_add(delay.max(1));
                entry.next_attempt_ms = at;
                self.scheduled_min = self.scheduled_min.min(at);
                (
                    SentOutcome::AwaitingAck { retry_at_ms: at },
                    State::Scheduled,
                )
            }
            None => {
                let wait = self.retry.base_delay_ms(backoff.failures()).max(1);
                let at = now_ms.saturating_add(wait);
                entry.next_attempt_ms = u64::MAX;
                entry.ack_deadline_ms = Some(at);
                (
                    SentOutcome::LastAttempt { expires_at_ms: at },
                    State::Waiting,
                )
            }
        };
        // Move the slot between the indices (a scheduled message keeps its chain place:
        // age order does not change). The chains are named by state, not read from the
        // entry, whose fields already tell the new state.
        if was != next_state {
            let slot = slot_of(slot);
            self.unlink(slot, was, priority);
            self.link(slot, next_state, priority);
        }
        Ok(outcome)
    }

    /// Removes an acknowledged message. `false` if it was not queued (a duplicate ack).
    /// A message waiting for the ack of its last attempt counts as acked, not expired.
    pub fn ack(&mut self, id: MessageId) -> bool {
        self.ack_slot(id).is_some()
    }

    /// Removes an acknowledged message and returns it (for latency and retry accounting).
    pub fn ack_entry(&mut self, id: MessageId) -> Option<OutboxEntry<M>> {
        let slot = self.ack_slot(id)?;
        self.detached(slot)
    }

    fn ack_slot(&mut self, id: MessageId) -> Option<usize> {
        let slot = self.remove_at(self.position(id)?)?;
        self.stats.acked = self.stats.acked.saturating_add(1);
        Some(slot)
    }

    /// Removes one message whose last attempt's ack deadline has passed by `now_ms`
    /// (the earliest deadline first), counts it in `expired` and returns it; `None` when no
    /// deadline has passed. Call it in the poll loop, after taking in the acks that have
    /// arrived and before sending: a message whose last attempt got no ack leaves the
    /// outbox only here (or when a full outbox's `push` reclaims its slot).
    pub fn take_expired(&mut self, now_ms: u64) -> Option<OutboxEntry<M>> {
        let slot = self.expire_one(now_ms)?;
        self.detached(slot)
    }

    /// Removes and counts the earliest expired waiting message; returns its freed slot.
    fn expire_one(&mut self, now_ms: u64) -> Option<usize> {
        // The chain is in age order: the first of equal deadlines is the oldest.
        let mut best: Option<(u64, Slot)> = None;
        let mut at = self.waiting.head;
        for _ in 0..N {
            let Some(e) = self.slots.get(ix(at)) else {
                break;
            };
            if let Some(d) = e.ack_deadline_ms
                && d <= now_ms
                && best.is_none_or(|(b, _)| d < b)
            {
                best = Some((d, at));
            }
            at = e.next;
        }
        let (_, slot) = best?;
        let pos = self.age_slots().iter().position(|&s| s == slot)?;
        let slot = self.remove_at(pos)?;
        self.stats.expired = self.stats.expired.saturating_add(1);
        Some(slot)
    }

    /// Makes every queued message that has attempts left due now (for example when a link
    /// comes back up). Messages waiting for the ack of their last attempt keep waiting.
    pub fn retry_all_now(&mut self, now_ms: u64) {
        let mut any_scheduled = false;
        let queued = self.id_slots.get(..self.ids.len()).unwrap_or(&[]);
        for &s in queued {
            if let Some(e) = self.slots.get_mut(ix(s)) {
                let state = e.state();
                if state != State::Waiting {
                    e.next_attempt_ms = e.next_attempt_ms.min(now_ms);
                    any_scheduled |= state == State::Scheduled;
                }
            }
        }
        if any_scheduled {
            self.scheduled_min = self.scheduled_min.min(now_ms);
        }
    }

    fn position(&self, id: MessageId) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    /// The slot of message `id`. The message just sent is usually a chain head: those are
    /// checked before the scan by age.
    fn find_slot(&self, id: MessageId) -> Option<usize> {
        let head = self
            .fresh
            .iter()
            .chain(self.scheduled.iter())
            .rev()
            .map(|c| ix(c.head))
            .find(|&s| self.slots.get(s).is_some_and(|e| e.id == id));
        if head.is_some() {
            return head;
        }
        let pos = self.position(id)?;
        self.id_slots.get(pos).map(|&s| ix(s))
    }

    /// The number of bytes [`Outbox::save`] writes for the current contents.
    pub fn image_len(&self) -> usize {
        self.iter().fold(HEADER_LEN, |acc, e| {
            acc.saturating_add(RECORD_HEADER_LEN)
                .saturating_add(e.data.len())
        })
    }

    /// Writes the queued messages (not the counters) to `storage` at `offset`.
    ///
    /// The header, with a CRC-32 over the records, is written last, so an interrupted save
    /// is detected by [`Outbox::restore`] as corrupt rather than restored half-way.
    pub fn save<S: Storage>(&self, storage: &mut S, offset: u32) -> Result<(), OutboxError> {
        let total = u32::try_from(self.image_len()).map_err(|_| OutboxError::StorageTooSmall)?;
        let end = offset
            .checked_add(total)
            .ok_or(OutboxError::StorageTooSmall)?;
        if usize::try_from(end).map_err(|_| OutboxError::StorageTooSmall)? > storage.capacity() {
            return Err(OutboxError::StorageTooSmall);
        }
        let mut digest = IMAGE_CRC.digest();
        let mut at = offset
            .checked_add(HEADER_LEN_U32)
            .ok_or(OutboxError::StorageTooSmall)?;
        for e in self.iter() {
            let len = u16::try_from(e.data.len()).map_err(|_| OutboxError::StorageTooSmall)?;
            let mut rec = [0u8; RECORD_HEADER_LEN];
            rec[0..4].copy_from_slice(&e.id.0.to_le_bytes());
            rec[4] = e.priority.code();
            rec[5] = e.qos.code();
            rec[6..10].copy_from_slice(&e.attempts.to_le_bytes());
            rec[10..18].copy_from_slice(&e.enqueued_ms.to_le_bytes());
            rec[18..20].copy_from_slice(&len.to_le_bytes());
            for part in [&rec[..], &e.data[..]] {
                digest.update(part);
                storage.write(at, part).map_err(|_| OutboxError::Storage)?;
                at = at
                    .checked_add(u32::try_from(part.len()).map_err(|_| OutboxError::Corrupt)?)
                    .ok_or(OutboxError::StorageTooSmall)?;
            }
        }
        let count = u16::try_from(self.len()).map_err(|_| OutboxError::StorageTooSmall)?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC);
        header[4..6].copy_from_slice(&count.to_le_bytes());
        header[6..10].copy_from_slice(&total.to_le_bytes());
        header[10..14].copy_from_slice(&digest.finalize().to_le_bytes());
        storage
            .write(offset, &header)
            .map_err(|_| OutboxError::Storage)
    }

    /// Replaces the queued messages with those saved at `offset`; they become due at
    /// `now_ms` with a fresh retry budget (their `attempts` are kept). That includes a
    /// message that was waiting for the ack of its last attempt when saved: the ack may have
    /// been lost with the reboot, so it is sent again (the receiver's dedup window drops a
    /// duplicate). Counters are kept. On error the outbox is unchanged.
    pub fn restore<S: Storage>(
        &mut self,
        storage: &mut S,
        offset: u32,
        now_ms: u64,
    ) -> Result<usize, OutboxError> {
        let mut header = [0u8; HEADER_LEN];
        storage
            .read(offset, &mut header)
            .map_err(|_| OutboxError::Storage)?;
        let [m0, m1, m2, m3, c0, c1, t0, t1, t2, t3, k0, k1, k2, k3] = header;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(OutboxError::Corrupt);
        }
        let count = usize::from(u16::from_le_bytes([c0, c1]));
        let total = u32::from_le_bytes([t0, t1, t2, t3]);
        let crc = u32::from_le_bytes([k0, k1, k2, k3]);
        if count > N || total < HEADER_LEN_U32 {
            return Err(OutboxError::Corrupt);
        }
        let body_start = offset
            .checked_add(HEADER_LEN_U32)
            .ok_or(OutboxError::Corrupt)?;
        let body_end = offset.checked_add(total).ok_or(OutboxError::Corrupt)?;
        if usize::try_from(body_end).map_err(|_| OutboxError::Corrupt)? > storage.capacity() {
            return Err(OutboxError::Corrupt);
        }
        // First pass: verify the CRC without trusting any record.
        let mut digest = IMAGE_CRC.digest();
        let mut at = body_start;
        let mut chunk = [0u8; 64];
        while at < body_end {
            let n = (body_end.saturating_sub(at)).min(64);
            let part = chunk
                .get_mut(..usize::try_from(n).map_err(|_| OutboxError::Corrupt)?)
                .ok_or(OutboxError::Corrupt)?;
            storage.read(at, part).map_err(|_| OutboxError::Storage)?;
            digest.update(part);
            at = at.saturating_add(n);
        }
        if digest.finalize() != crc {
            return Err(OutboxError::Corrupt);
        }
        // Second pass: parse into a fresh outbox, then swap it in.
        let mut next = Self::new(self.policy, self.retry);
        next.stats = self.stats;
        let mut at = body_start;
        for _ in 0..count {
            let mut rec = [0u8; RECORD_HEADER_LEN];
            storage
                .read(at, &mut rec)
                .map_err(|_| OutboxError::Storage)?;
            at = at
                .checked_add(RECORD_HEADER_LEN_U32)
                .ok_or(OutboxError::Corrupt)?;
            let [
                i0,
                i1,
                i2,
                i3,
                p,
                q,
                a0,
                a1,
                a2,
                a3,
                e0,
                e1,
                e2,
                e3,
                e4,
                e5,
                e6,
                e7,
                l0,
                l1,
            ] = rec;
            let id = MessageId(u32::from_le_bytes([i0, i1, i2, i3]));
            let priority = Priority::from_code(p).ok_or(OutboxError::Corrupt)?;
            let qos = QoS::from_code(q).ok_or(OutboxError::Corrupt)?;
            let attempts = u32::from_le_bytes([a0, a1, a2, a3]);
            let enqueued_ms = u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]);
            let len = u16::from_le_bytes([l0, l1]);
            let mut data: heapless::Vec<u8, M> = heapless::Vec::new();
            data.resize(usize::from(len), 0)
                .map_err(|_| OutboxError::Corrupt)?;
            let end = at.checked_add(u32::from(len)).ok_or(OutboxError::Corrupt)?;
            if end > body_end {
                return Err(OutboxError::Corrupt);
            }
            storage
                .read(at, &mut data)
                .map_err(|_| OutboxError::Storage)?;
            at = end;
            if next.contains(id) {
                return Err(OutboxError::Corrupt);
            }
            let slot = next
                .insert(id, priority, qos, &data, now_ms)
                .map_err(|_| OutboxError::Corrupt)?;
            if let Some(e) = next.slots.get_mut(slot) {
                e.enqueued_ms = enqueued_ms;
                e.attempts = attempts;
            }
        }
        if at != body_end {
            return Err(OutboxError::Corrupt);
        }
        *self = next;
        Ok(count)
    }
}

const MAGIC: [u8; 4] = *b"OBX1";
const HEADER_LEN: usize = 14;
const HEADER_LEN_U32: u32 = 14;
const RECORD_HEADER_LEN: usize = 20;
const RECORD_HEADER_LEN_U32: u32 = 20;
const IMAGE_CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Storage in RAM: `N` bytes behind the `embedded_storage` traits, for tests and for
/// retention RAM that survives a warm reset.
#[derive(Debug, Clone)]
pub struct MemStorage<const N: usize> {
    bytes: [u8; N],
}

impl<const N: usize> Default for MemStorage<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemStorage<N> {
    /// Erased storage (all `0xFF`, like flash).
    pub const fn new() -> Self {
        Self { bytes: [0xFF; N] }
    }

    /// The raw bytes, for corrupting in tests.
    pub fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.bytes
    }
}

/// Access outside a [`MemStorage`] or [`SliceStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutOfBounds;

/// A borrowed byte buffer behind the `embedded_storage` traits: an outbox image built in,
/// or read back from, a caller's scratch buffer.
#[derive(Debug)]
pub struct SliceStorage<'a>(pub &'a mut [u8]);

impl SliceStorage<'_> {
    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, OutOfBounds> {
        let start = usize::try_from(offset).map_err(|_| OutOfBounds)?;
        let end = start.checked_add(len).ok_or(OutOfBounds)?;
        if end > self.0.len() {
            return Err(OutOfBounds);
        }
        Ok(start..end)
    }
}

impl embedded_storage::ReadStorage for SliceStorage<'_> {
    type Error = OutOfBounds;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.0.get(r).ok_or(OutOfBounds)?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl Storage for SliceStorage<'_> {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        self.0.get_mut(r).ok_or(OutOfBounds)?.copy_from_slice(bytes);
        Ok(())
    }
}

impl<const N: usize> embedded_storage::ReadStorage for MemStorage<N> {
    type Error = OutOfBounds;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        SliceStorage(&mut self.bytes).read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> Storage for MemStorage<N> {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        SliceStorage(&mut self.bytes).write(offset, bytes)
    }
}

/// A file behind the `embedded_storage` traits (servers, gateways, host simulations).
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct FileStorage {
    file: std::fs::File,
    capacity: usize,
}

#[cfg(feature = "std")]
impl FileStorage {
    /// Opens or creates `path` as a region of `capacity` bytes.
    pub fn open(path: &std::path::Path, capacity: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self { file, capacity })
    }
}

#[cfg(feature = "std")]
impl embedded_storage::ReadStorage for FileStorage {
    type Error = std::io::ErrorKind;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        use std::io::{Read, Seek, SeekFrom};
        self.file
            .seek(SeekFrom::Start(u64::from(offset)))
            .map_err(|e| e.kind())?;
        self.file.read_exact(bytes).map_err(|e| e.kind())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(feature = "std")]
impl Storage for FileStorage {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        use std::io::{Seek, SeekFrom, Write};
        self.file
            .seek(SeekFrom::Start(u64::from(offset)))
            .map_err(|e| e.kind())?;
        self.file.write_all(bytes).map_err(|e| e.kind())?;
        self.file.sync_data().map_err(|e| e.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::Jitter;
    use crate::rng::SplitMix64;

    fn policy() -> BackoffPolicy {
        BackoffPolicy::new(100, 1_000).with_jitter(Jitter::None)
    }

    #[test]
    fn reject_newest_counts_every_rejection() {
        let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
        for i in 0..5 {
            let r = o.push(MessageId(i), Priority::Critical, QoS::AtLeastOnce, &[1], 0);
            assert_eq!(r.is_ok(), i < 2);
        }
        assert_eq!(o.stats().accepted, 2);
        assert_eq!(o.stats().rejected, 3);
        assert_eq!(o.stats().dropped(), 3);
        assert!(o.contains(MessageId(0)) && o.contains(MessageId(1)));
        assert_eq!(
            o.push(MessageId(0), Priority::Low, QoS::AtMostOnce, &[], 0),
            Err(OutboxError::DuplicateId)
        );
        assert_eq!(
            o.push(MessageId(9), Priority::Low, QoS::AtMostOnce, &[0; 9], 0),
            Err(OutboxError::TooLarge { len: 9, max: 8 })
        );
        assert_eq!(o.stats().rejected, 4);
    }

    /// Telemetry fills the outbox up to the reserved slots; a control message still finds
    /// room under either policy.
    #[test]
    fn reserved_slots_keep_room_for_control_messages() {
        for policy in [OverflowPolicy::RejectNewest, OverflowPolicy::DropOldest] {
            let mut o: Outbox<4, 8> = Outbox::new(policy, self::policy()).with_reserved(2);
            for i in 1..=2 {
                o.push(MessageId(i), Priority::Normal, QoS::AtLeastOnce, b"t", 0)
                    .unwrap();
            }
            let third = o.push(MessageId(3), Priority::Normal, QoS::AtLeastOnce, b"t", 0);
            match policy {
                OverflowPolicy::RejectNewest => assert_eq!(third, Err(OutboxError::Full)),
                OverflowPolicy::DropOldest => {
                    assert_eq!(third, Ok(PushOutcome::Evicted(MessageId(1))));
                }
            }
            for i in 10..12 {
                assert_eq!(
                    o.push(MessageId(i), Priority::High, QoS::AtLeastOnce, b"c", 0),
                    Ok(PushOutcome::Queued),
                    "{policy:?}"
                );
            }
            assert_eq!(o.len(), 4);
        }
    }

    #[test]
    fn drop_oldest_evicts_lowest_priority_first_and_never_outranks() {
        let mut o: Outbox<3, 8> = Outbox::new(OverflowPolicy::DropOldest, policy());
        o.push(MessageId(1), Priority::High, QoS::AtLeastOnce, &[], 0)
            .unwrap();
        o.push(MessageId(2), Priority::Low, QoS::AtLeastOnce, &[], 1)
            .unwrap();
        o.push(MessageId(3), Priority::Low, QoS::AtLeastOnce, &[], 2)
            .unwrap();
        assert_eq!(
            o.push(MessageId(4), Priority::Normal, QoS::AtLeastOnce, &[], 3),
            Ok(PushOutcome::Evicted(MessageId(2)))
        );
        assert_eq!(
            o.push(MessageId(5), Priority::Normal, QoS::AtLeastOnce, &[], 4),
            Ok(PushOutcome::Evicted(MessageId(3)))
        );
        // Now High, Normal(4), Normal(5): a Low message outranks nothing.
        assert_eq!(
            o.push(MessageId(6), Priority::Low, QoS::AtLeastOnce, &[], 5),
            Err(OutboxError::Full)
        );
        let s = o.stats();
        assert_eq!((s.accepted, s.evicted, s.rejected), (5, 2, 1));
    }

    #[test]
    fn scheduling_priority_retransmission_and_ack() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<4, 8> =
            Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(3));
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"n", 0)
            .unwrap();
        o.push(MessageId(2), Priority::Critical, QoS::ExactlyOnce, b"c", 0)
            .unwrap();
        o.push(MessageId(3), Priority::Normal, QoS::AtMostOnce, b"z", 0)
            .unwrap();
        assert_eq!(o.next_due(0).unwrap().id, MessageId(2));
        assert_eq!(
            o.mark_sent(MessageId(2), 0, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
        );
        assert_eq!(o.next_due(0).unwrap().id, MessageId(1)); // older of the two Normal
        assert_eq!(o.next_wakeup_ms(), Some(0));
        o.mark_sent(MessageId(1), 0, &mut rng).unwrap();
        assert_eq!(
            o.mark_sent(MessageId(3), 0, &mut rng),
            Ok(SentOutcome::Done)
        );
        assert_eq!(o.next_due(50), None);
        assert_eq!(o.next_wakeup_ms(), Some(100));
        assert!(o.ack(MessageId(2)));
        assert!(!o.ack(MessageId(2)));
        // Message 1: attempts 2 and 3; the third one's ack is awaited for the delay a
        // fourth attempt would have had (400 ms), then it expires.
        assert_eq!(
            o.mark_sent(MessageId(1), 100, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 300 })
        );
        assert_eq!(
            o.mark_sent(MessageId(1), 300, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 700 })
        );
        assert_eq!(o.len(), 1);
        assert_eq!(o.next_due(10_000), None);
        assert_eq!(o.take_expired(699), None);
        assert_eq!(o.take_expired(700).map(|e| e.id), Some(MessageId(1)));
        assert!(o.is_empty());
        let s = o.stats();
        assert_eq!((s.acked, s.sent_unacked, s.expired), (1, 1, 1));
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Err(OutboxError::NotFound)
        );
    }

    #[test]
    fn last_attempt_acked_after_mark_sent_counts_as_acked_not_expired() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<4, 8> =
            Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(2));
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"m", 0)
            .unwrap();
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
        );
        assert_eq!(
            o.mark_sent(MessageId(1), 100, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 300 })
        );
        // Still queued, never retransmitted, waking the poll loop at the deadline.
        assert!(o.contains(MessageId(1)));
        let e = o.iter().next().unwrap();
        assert!(e.is_awaiting_last_ack());
        assert_eq!((e.attempts, e.ack_deadline_ms), (2, Some(300)));
        assert_eq!(o.next_due(299), None);
        assert_eq!(o.next_due(u64::MAX), None);
        assert_eq!(o.next_wakeup_ms(), Some(300));
        assert_eq!(o.take_expired(299), None);
        // The ack of the last attempt arrives before the deadline.
        let acked = o.ack_entry(MessageId(1)).unwrap();
        assert_eq!((acked.id, acked.attempts), (MessageId(1), 2));
        assert!(o.is_empty());
        assert_eq!(o.take_expired(u64::MAX), None);
        let s = o.stats();
        assert_eq!((s.accepted, s.acked, s.expired, s.dropped()), (1, 1, 0, 0));
    }

    #[test]
    fn unacked_last_attempt_expires_exactly_once_at_its_deadline() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<4, 8> =
            Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(1));
        o.push(MessageId(5), Priority::High, QoS::ExactlyOnce, b"x", 0)
            .unwrap();
        o.push(MessageId(6), Priority::Low, QoS::AtLeastOnce, b"y", 0)
            .unwrap();
        assert_eq!(
            o.mark_sent(MessageId(5), 10, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 110 })
        );
        // The other message is unaffected and still due; the waiting one is skipped.
        assert_eq!(o.next_due(50).map(|e| e.id), Some(MessageId(6)));
        // Reconnecting does not buy the waiting message another attempt.
        o.retry_all_now(60);
        assert_eq!(o.next_due(60).map(|e| e.id), Some(MessageId(6)));
        // Sending it anyway does not move the deadline.
        assert_eq!(
            o.mark_sent(MessageId(5), 70, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 110 })
        );
        assert_eq!(o.take_expired(109), None);
        assert_eq!(o.stats().expired, 0);
        assert_eq!(o.take_expired(110).map(|e| e.id), Some(MessageId(5)));
        assert_eq!(o.stats().expired, 1);
        assert_eq!(o.take_expired(10_000), None);
        assert!(!o.ack(MessageId(5)), "a late ack finds nothing");
        let s = o.stats();
        assert_eq!((s.acked, s.expired, s.dropped()), (0, 1, 1));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn give_up_on_the_deadline_also_awaits_the_last_ack() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<2, 8> =
            Outbox::new(OverflowPolicy::RejectNewest, policy().with_deadline_ms(150));
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"d", 0)
            .unwrap();
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
        );
        assert_eq!(
            o.mark_sent(MessageId(1), 100, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 150 })
        );
        // Past the deadline: no retry, but this attempt's ack is awaited (base delay 400).
        assert_eq!(
            o.mark_sent(MessageId(1), 150, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 550 })
        );
        assert!(o.ack(MessageId(1)));
        assert_eq!((o.stats().acked, o.stats().expired), (1, 0));
    }

    #[test]
    fn at_most_once_is_removed_when_sent_whatever_the_budget() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<2, 8> =
            Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(1));
        o.push(MessageId(1), Priority::Normal, QoS::AtMostOnce, b"z", 0)
            .unwrap();
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Ok(SentOutcome::Done)
        );
        assert!(o.is_empty());
        assert_eq!(o.take_expired(u64::MAX), None);
        let s = o.stats();
        assert_eq!((s.sent_unacked, s.acked, s.expired), (1, 0, 0));
    }

    #[test]
    fn waiting_message_keeps_its_slot_and_overflow_still_counts_drops() {
        let mut rng = SplitMix64::new(0);
        let retry = policy().with_max_attempts(1);
        // RejectNewest: the waiting message holds its slot until its deadline.
        let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, retry);
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"a", 0)
            .unwrap();
        o.push(MessageId(2), Priority::Normal, QoS::AtLeastOnce, b"b", 0)
            .unwrap();
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Ok(SentOutcome::LastAttempt { expires_at_ms: 100 })
        );
        assert!(o.is_full());
        assert_eq!(
            o.push(MessageId(3), Priority::Critical, QoS::AtLeastOnce, b"c", 99),
            Err(OutboxError::Full)
        );
        assert_eq!(o.stats().rejected, 1);
        // Once its deadline has passed, a full outbox reclaims the slot as an expiry.
        assert_eq!(
            o.push(
                MessageId(3),
                Priority::Critical,
                QoS::AtLeastOnce,
                b"c",
                100
            ),
            Ok(PushOutcome::Queued)
        );
        let s = o.stats();
        assert_eq!((s.accepted, s.rejected, s.expired, s.evicted), (3, 1, 1, 0));
        assert!(!o.contains(MessageId(1)));

        // DropOldest: the waiting message is the oldest, so it is the one evicted.
        let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::DropOldest, retry);
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"a", 0)
            .unwrap();
        o.push(MessageId(2), Priority::Normal, QoS::AtLeastOnce, b"b", 0)
            .unwrap();
        o.mark_sent(MessageId(1), 0, &mut rng).unwrap();
        assert_eq!(
            o.push(MessageId(3), Priority::Normal, QoS::AtLeastOnce, b"c", 50),
            Ok(PushOutcome::Evicted(MessageId(1)))
        );
        assert_eq!(o.take_expired(u64::MAX), None, "evicted, not expired too");
        let s = o.stats();
        assert_eq!(
            (s.accepted, s.evicted, s.expired, s.dropped()),
            (3, 1, 0, 1)
        );
        let ids: std::vec::Vec<_> = o.iter().map(|e| e.id).collect();
        assert_eq!(ids, [MessageId(2), MessageId(3)]);
    }

    #[test]
    fn slots_are_reused_without_disturbing_order() {
        let mut rng = SplitMix64::new(3);
        let mut o: Outbox<3, 4> = Outbox::new(OverflowPolicy::RejectNewest, policy());
        for round in 0..10u32 {
            for k in 0..3 {
                let id = MessageId(round * 3 + k);
                o.push(
                    id,
                    Priority::Normal,
                    QoS::AtLeastOnce,
                    &id.0.to_le_bytes(),
                    0,
                )
                .unwrap();
            }
            // Sent oldest first, each carrying its own bytes.
            for k in 0..3 {
                let e = o.next_due(0).unwrap();
                assert_eq!(e.id, MessageId(round * 3 + k));
                assert_eq!(e.data.as_slice(), &e.id.0.to_le_bytes());
                let id = e.id;
                o.mark_sent(id, 0, &mut rng).unwrap();
            }
            // Acked out of order.
            for k in [1, 2, 0] {
                assert!(o.ack(MessageId(round * 3 + k)));
            }
            assert!(o.is_empty());
        }
        assert_eq!(o.stats().acked, 30);
    }

    #[test]
    fn age_ranks_are_renumbered_before_they_wrap() {
        let mut rng = SplitMix64::new(0);
        let mut o: Outbox<4, 4> = Outbox::new(OverflowPolicy::RejectNewest, policy());
        // Two messages scheduled for retransmission stay queued while 70,000 others, more
        // than a `u16` age rank counts, pass through a third slot.
        for id in [1, 2] {
            o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"s", 0)
                .unwrap();
            o.mark_sent(MessageId(id), 0, &mut rng).unwrap();
        }
        for id in 10..70_010 {
            o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"p", 0)
                .unwrap();
            assert!(o.ack(MessageId(id)));
        }
        // Two young messages; the older of them is sent, then both are due with the old two.
        for id in [3, 4] {
            o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"y", 0)
                .unwrap();
        }
        assert_eq!(o.next_due(0).map(|e| e.id), Some(MessageId(3)));
        o.mark_sent(MessageId(3), 0, &mut rng).unwrap();
        let mut sent = std::vec::Vec::new();
        while let Some(id) = o.next_due(100).map(|e| e.id) {
            sent.push(id);
            o.mark_sent(id, 100, &mut rng).unwrap();
        }
        // Oldest first across the retransmission and fresh chains: ranks stayed distinct.
        assert_eq!(sent, [1, 2, 3, 4].map(MessageId));
        let ids: std::vec::Vec<_> = o.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4].map(MessageId));
        // The young message joined the retransmission chain behind the old ones.
        o.retry_all_now(1_000);
        assert_eq!(o.next_due(1_000).map(|e| e.id), Some(MessageId(1)));
    }

    #[test]
    fn save_and_restore_round_trip_and_detect_corruption() {
        let mut o: Outbox<4, 16> = Outbox::new(OverflowPolicy::DropOldest, policy());
        o.push(MessageId(7), Priority::High, QoS::ExactlyOnce, b"seven", 10)
            .unwrap();
        o.push(MessageId(8), Priority::Low, QoS::AtLeastOnce, b"", 11)
            .unwrap();
        let mut flash = MemStorage::<256>::new();
        o.save(&mut flash, 16).unwrap();

        let mut back: Outbox<4, 16> = Outbox::new(OverflowPolicy::DropOldest, policy());
        assert_eq!(back.restore(&mut flash, 16, 500), Ok(2));
        let mut ids: std::vec::Vec<_> = back.iter().map(|e| (e.id, e.data.to_vec())).collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                (MessageId(7), b"seven".to_vec()),
                (MessageId(8), std::vec![])
            ]
        );
        assert_eq!(back.next_due(500).unwrap().id, MessageId(7));

        // A flipped bit anywhere in the body is caught; the outbox stays as it was.
        flash.bytes_mut()[16 + 14 + 21] ^= 1;
        assert_eq!(back.restore(&mut flash, 16, 0), Err(OutboxError::Corrupt));
        assert_eq!(back.len(), 2);
        // Erased flash is not an outbox.
        assert_eq!(
            back.restore(&mut MemStorage::<64>::new(), 0, 0),
            Err(OutboxError::Corrupt)
        );
        // Too small a region.
        assert_eq!(
            o.save(&mut MemStorage::<20>::new(), 0),
            Err(OutboxError::StorageTooSmall)
        );
    }

    #[cfg(feature = "std")]
    #[test]
    fn file_storage_persists_across_reopen() {
        let path = std::env::temp_dir().join(std::format!(
            "iot-transport-outbox-{}.bin",
            std::process::id()
        ));
        let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
        o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"x", 0)
            .unwrap();
        let mut f = FileStorage::open(&path, 1024).unwrap();
        o.save(&mut f, 0).unwrap();
        drop(f);
        let mut f = FileStorage::open(&path, 1024).unwrap();
        let mut back: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
        assert_eq!(back.restore(&mut f, 0, 0), Ok(1));
        assert_eq!(back.iter().next().unwrap().data.as_slice(), b"x");
        let _ = std::fs::remove_file(&path);
    }
}
