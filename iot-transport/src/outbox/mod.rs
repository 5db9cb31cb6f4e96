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
//! Its parts: the queue itself (this module), its entries and slots (`entry`), the
//! per-priority chains that order them (`chain`), the saved image (`image`) and the storage
//! backends (`storage`).
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

use iot_core::{MessageId, QoS};

use crate::retry::{Backoff, BackoffPolicy};
use crate::rng::Rng;

mod chain;
mod entry;
mod image;
mod storage;

use chain::{Chain, PRIORITIES, chain_index, id_bit};
pub use entry::OutboxEntry;
use entry::{NIL, Slot, State, ix, slot_of};
#[cfg(feature = "std")]
pub use storage::FileStorage;
pub use storage::{MemStorage, OutOfBounds, SliceStorage};

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
}

#[cfg(test)]
mod tests;
