//! A bounded store-and-forward outbox with priorities and an explicit overflow policy.
//!
//! Messages wait in the outbox until they are acknowledged (QoS 1 and 2) or sent once
//! (QoS 0), so they survive link outages. Capacity is `N` messages of at most `M` bytes, fixed
//! at compile time. When it is full the user's [`OverflowPolicy`] decides: reject the newest
//! message, or drop the oldest message of the lowest priority. **Every** message that does not
//! make it is counted in [`OutboxStats`] and reported to the caller: nothing is lost silently.
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
    /// Messages removed after their retry attempts or deadline ran out.
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
    /// The retry budget ran out; removed and counted in `expired`.
    Expired,
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
    /// Not to be sent before this time.
    pub next_attempt_ms: u64,
    /// When it was first transmitted, once it has been.
    pub first_sent_ms: Option<u64>,
    /// The encoded message.
    pub data: heapless::Vec<u8, M>,
    order: u64,
    backoff: Backoff,
}

/// The outbox: at most `N` messages of at most `M` bytes. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Outbox<const N: usize, const M: usize> {
    entries: heapless::Vec<OutboxEntry<M>, N>,
    policy: OverflowPolicy,
    retry: BackoffPolicy,
    next_order: u64,
    stats: OutboxStats,
}

impl<const N: usize, const M: usize> Outbox<N, M> {
    /// An empty outbox with an explicit overflow policy and the retransmission backoff.
    pub const fn new(policy: OverflowPolicy, retry: BackoffPolicy) -> Self {
        Self {
            entries: heapless::Vec::new(),
            policy,
            retry,
            next_order: 0,
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

    /// Counters so far.
    pub const fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// Queued messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// No room without dropping.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// The capacity `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// The overflow policy.
    pub const fn overflow_policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// Queued messages in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &OutboxEntry<M>> {
        self.entries.iter()
    }

    /// Whether a message with `id` is queued.
    pub fn contains(&self, id: MessageId) -> bool {
        self.entries.iter().any(|e| e.id == id)
    }

    /// Queues a message. See [`OverflowPolicy`] for a full outbox.
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
        let Ok(bytes) = heapless::Vec::from_slice(data) else {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Err(OutboxError::TooLarge {
                len: data.len(),
                max: M,
            });
        };
        let mut outcome = PushOutcome::Queued;
        if self.entries.is_full() {
            let victim = match self.policy {
                OverflowPolicy::RejectNewest => None,
                OverflowPolicy::DropOldest => self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.priority <= priority)
                    .min_by_key(|(_, e)| (e.priority, e.order))
                    .map(|(i, _)| i),
            };
            match victim {
                Some(i) => {
                    let evicted = self.entries.swap_remove(i);
                    self.stats.evicted = self.stats.evicted.saturating_add(1);
                    outcome = PushOutcome::Evicted(evicted.id);
                }
                None => {
                    self.stats.rejected = self.stats.rejected.saturating_add(1);
                    return Err(OutboxError::Full);
                }
            }
        }
        let entry = OutboxEntry {
            id,
            priority,
            qos,
            enqueued_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
            first_sent_ms: None,
            data: bytes,
            order: self.next_order,
            backoff: Backoff::new(self.retry, now_ms),
        };
        self.next_order = self.next_order.wrapping_add(1);
        if self.entries.push(entry).is_err() {
            // Unreachable: room was made above. Counted rather than assumed.
            self.stats.rejected = self.stats.rejected.saturating_add(1);
            return Err(OutboxError::Full);
        }
        self.stats.accepted = self.stats.accepted.saturating_add(1);
        Ok(outcome)
    }

    /// The message to send next at `now_ms`: highest priority, then oldest, among those due.
    pub fn next_due(&self, now_ms: u64) -> Option<&OutboxEntry<M>> {
        self.entries
            .iter()
            .filter(|e| e.next_attempt_ms <= now_ms)
            .max_by_key(|e| (e.priority, core::cmp::Reverse(e.order)))
    }

    /// The earliest time any message is due, for sleeping in a poll loop.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.next_attempt_ms).min()
    }

    /// Records that message `id` was transmitted at `now_ms`; schedules its retransmission
    /// (QoS 1 and 2) from the backoff policy, or removes it (QoS 0, or retries exhausted).
    pub fn mark_sent<R: Rng + ?Sized>(
        &mut self,
        id: MessageId,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<SentOutcome, OutboxError> {
        let i = self.position(id).ok_or(OutboxError::NotFound)?;
        let entry = self.entries.get_mut(i).ok_or(OutboxError::NotFound)?;
        entry.attempts = entry.attempts.saturating_add(1);
        entry.first_sent_ms.get_or_insert(now_ms);
        if entry.qos == QoS::AtMostOnce {
            self.entries.swap_remove(i);
            self.stats.sent_unacked = self.stats.sent_unacked.saturating_add(1);
            return Ok(SentOutcome::Done);
        }
        match entry.backoff.next_delay(now_ms, rng) {
            Some(delay) => {
                let at = now_ms.saturating_add(delay.max(1));
                entry.next_attempt_ms = at;
                Ok(SentOutcome::AwaitingAck { retry_at_ms: at })
            }
            None => {
                self.entries.swap_remove(i);
                self.stats.expired = self.stats.expired.saturating_add(1);
                Ok(SentOutcome::Expired)
            }
        }
    }

    /// Removes an acknowledged message. `false` if it was not queued (a duplicate ack).
    pub fn ack(&mut self, id: MessageId) -> bool {
        self.ack_entry(id).is_some()
    }

    /// Removes an acknowledged message and returns it (for latency and retry accounting).
    pub fn ack_entry(&mut self, id: MessageId) -> Option<OutboxEntry<M>> {
        let i = self.position(id)?;
        self.stats.acked = self.stats.acked.saturating_add(1);
        Some(self.entries.swap_remove(i))
    }

    /// Makes every queued message due now (for example when a link comes back up).
    pub fn retry_all_now(&mut self, now_ms: u64) {
        for e in self.entries.iter_mut() {
            e.next_attempt_ms = e.next_attempt_ms.min(now_ms);
        }
    }

    fn position(&self, id: MessageId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    /// The number of bytes [`Outbox::save`] writes for the current contents.
    pub fn image_len(&self) -> usize {
        self.entries.iter().fold(HEADER_LEN, |acc, e| {
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
        for e in &self.entries {
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
        let count = u16::try_from(self.entries.len()).map_err(|_| OutboxError::StorageTooSmall)?;
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
    /// `now_ms`. Counters are kept. On error the outbox is unchanged.
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
        // Second pass: parse into a fresh list, then swap it in.
        let mut entries: heapless::Vec<OutboxEntry<M>, N> = heapless::Vec::new();
        let mut at = body_start;
        for _ in 0..count {
            let mut rec = [0u8; RECORD_HEADER_LEN];
            storage
                .read(at, &mut rec)
                .map_err(|_| OutboxError::Storage)?;
            at = at
                .checked_add(RECORD_HEADER_LEN_U32)
                .ok_or(OutboxError::Corrupt)?;
            let id = MessageId(u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]));
            let priority = Priority::from_code(rec[4]).ok_or(OutboxError::Corrupt)?;
            let qos = QoS::from_code(rec[5]).ok_or(OutboxError::Corrupt)?;
            let attempts = u32::from_le_bytes([rec[6], rec[7], rec[8], rec[9]]);
            let mut enq = [0u8; 8];
            enq.copy_from_slice(&rec[10..18]);
            let len = u16::from_le_bytes([rec[18], rec[19]]);
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
            if entries.iter().any(|e| e.id == id) {
                return Err(OutboxError::Corrupt);
            }
            let order = self.next_order;
            self.next_order = self.next_order.wrapping_add(1);
            entries
                .push(OutboxEntry {
                    id,
                    priority,
                    qos,
                    enqueued_ms: u64::from_le_bytes(enq),
                    attempts,
                    next_attempt_ms: now_ms,
                    first_sent_ms: None,
                    data,
                    order,
                    backoff: Backoff::new(self.retry, now_ms),
                })
                .map_err(|_| OutboxError::Corrupt)?;
        }
        if at != body_end {
            return Err(OutboxError::Corrupt);
        }
        self.entries = entries;
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

/// Access outside a [`MemStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutOfBounds;

impl<const N: usize> MemStorage<N> {
    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, OutOfBounds> {
        let start = usize::try_from(offset).map_err(|_| OutOfBounds)?;
        let end = start.checked_add(len).ok_or(OutOfBounds)?;
        if end > N {
            return Err(OutOfBounds);
        }
        Ok(start..end)
    }
}

impl<const N: usize> embedded_storage::ReadStorage for MemStorage<N> {
    type Error = OutOfBounds;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.bytes.get(r).ok_or(OutOfBounds)?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> Storage for MemStorage<N> {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        self.bytes
            .get_mut(r)
            .ok_or(OutOfBounds)?
            .copy_from_slice(bytes);
        Ok(())
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
        // Message 1: attempts 2 and 3, then it expires.
        assert_eq!(
            o.mark_sent(MessageId(1), 100, &mut rng),
            Ok(SentOutcome::AwaitingAck { retry_at_ms: 300 })
        );
        assert_eq!(
            o.mark_sent(MessageId(1), 300, &mut rng),
            Ok(SentOutcome::Expired)
        );
        assert!(o.is_empty());
        let s = o.stats();
        assert_eq!((s.acked, s.sent_unacked, s.expired), (1, 1, 1));
        assert_eq!(
            o.mark_sent(MessageId(1), 0, &mut rng),
            Err(OutboxError::NotFound)
        );
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
