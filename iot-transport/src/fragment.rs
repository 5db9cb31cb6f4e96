//! Fragmentation and reassembly for links with small MTUs (LoRaWAN carries 51 bytes at SF12).
//!
//! Each fragment starts with a 5-byte header: message tag, fragment index, fragment count and
//! the total length (big-endian `u16`). The sender splits the payload into `count` pieces of
//! `chunk = ceil(total / count)` bytes (the last one shorter), so the receiver can place any
//! fragment from its header alone and check that its length is exactly right.
//!
//! [`Reassembler`] keeps up to `S` partial messages of up to `MAX` bytes, forgets partial
//! messages after a timeout, ignores duplicates (also late ones of the last `S` completed
//! messages, within the timeout), accepts any order, and rejects inconsistent or malformed
//! fragments with an error. It never panics on input (property-tested). A sender must not
//! reuse a tag within the timeout.
//!
//! ```
//! use iot_transport::fragment::{Fragmenter, Reassembler, Feed};
//!
//! let payload = [7u8; 120];
//! let mut frags = Fragmenter::new(&payload, 1, 51)?; // LoRa SF12
//! let mut rx: Reassembler<2, 256> = Reassembler::new(10_000);
//! let mut buf = [0u8; 51];
//! let mut done = None;
//! while let Some(n) = frags.next_into(&mut buf)? {
//!     if let Feed::Complete(len) = rx.push(&buf[..n], 0)? {
//!         done = Some(len);
//!     }
//! }
//! assert_eq!(done, Some(120));
//! assert_eq!(rx.take(120), Some(&payload[..]));
//! # Ok::<(), iot_transport::fragment::FragmentError>(())
//! ```

/// Bytes of header on every fragment.
pub const HEADER_LEN: usize = 5;
/// Most fragments in one message (the reassembler tracks them in a 64-bit mask).
pub const MAX_FRAGMENTS: usize = 64;

/// Why fragmenting or reassembling failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FragmentError {
    /// The MTU leaves no room for payload after the header.
    #[error("MTU too small for fragmentation")]
    MtuTooSmall,
    /// The payload needs more than [`MAX_FRAGMENTS`] fragments or exceeds `u16::MAX` bytes.
    #[error("payload too large to fragment")]
    PayloadTooLarge,
    /// The output buffer is shorter than a fragment.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A fragment is shorter than its header, or its header is impossible.
    #[error("malformed fragment")]
    Malformed,
    /// The fragment's length does not match what its header implies, or it contradicts
    /// earlier fragments of the same message.
    #[error("fragment inconsistent with its message")]
    Inconsistent,
    /// The message is larger than the reassembly buffer.
    #[error("message larger than the reassembly buffer")]
    TooLarge,
    /// Every reassembly slot holds a partial message that has not timed out.
    #[error("no free reassembly slot")]
    NoFreeSlot,
}

impl iot_core::Error for FragmentError {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::MtuTooSmall | Self::PayloadTooLarge | Self::BufferTooSmall => ErrorKind::Capacity,
            Self::TooLarge | Self::NoFreeSlot => ErrorKind::Capacity,
            Self::Malformed | Self::Inconsistent => ErrorKind::Decode,
        }
    }
}

/// A parsed fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FragmentHeader {
    /// Which message (the sender cycles through tags).
    pub tag: u8,
    /// This fragment's index, `0..count`.
    pub index: u8,
    /// Fragments in the message, `1..=64`.
    pub count: u8,
    /// The message's total length.
    pub total: u16,
}

impl FragmentHeader {
    /// Parses and validates a header; returns it and the fragment body.
    pub fn parse(fragment: &[u8]) -> Result<(Self, &[u8]), FragmentError> {
        let (head, body) = fragment
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(FragmentError::Malformed)?;
        let [tag, index, count, t0, t1] = *head;
        let h = Self {
            tag,
            index,
            count,
            total: u16::from_be_bytes([t0, t1]),
        };
        if count == 0 || usize::from(count) > MAX_FRAGMENTS || index >= count {
            return Err(FragmentError::Malformed);
        }
        // Every fragment carries at least one byte, so total >= count (except empty payloads).
        if usize::from(h.total) < usize::from(count) && !(h.total == 0 && count == 1) {
            return Err(FragmentError::Malformed);
        }
        if body.len() != h.body_len() {
            return Err(FragmentError::Inconsistent);
        }
        Ok((h, body))
    }

    /// Bytes per fragment except the last.
    pub fn chunk(&self) -> usize {
        usize::from(self.total).div_ceil(usize::from(self.count.max(1)))
    }

    /// Where this fragment's body goes in the message.
    pub fn offset(&self) -> usize {
        self.chunk().saturating_mul(usize::from(self.index))
    }

    /// The exact body length this header implies.
    pub fn body_len(&self) -> usize {
        let total = usize::from(self.total);
        total.saturating_sub(self.offset()).min(self.chunk())
    }

    fn write(&self, out: &mut [u8]) -> Result<(), FragmentError> {
        let t = self.total.to_be_bytes();
        out.get_mut(..HEADER_LEN)
            .ok_or(FragmentError::BufferTooSmall)?
            .copy_from_slice(&[self.tag, self.index, self.count, t[0], t[1]]);
        Ok(())
    }
}

/// Splits one payload into fragments that fit an MTU.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    payload: &'a [u8],
    tag: u8,
    count: u8,
    next: u8,
}

impl<'a> Fragmenter<'a> {
    /// Prepares `payload` for a link with `mtu`-byte datagrams under message `tag`.
    pub fn new(payload: &'a [u8], tag: u8, mtu: usize) -> Result<Self, FragmentError> {
        let room = mtu
            .checked_sub(HEADER_LEN)
            .filter(|r| *r > 0)
            .ok_or(FragmentError::MtuTooSmall)?;
        if u16::try_from(payload.len()).is_err() {
            return Err(FragmentError::PayloadTooLarge);
        }
        let count = payload.len().div_ceil(room).max(1);
        if count > MAX_FRAGMENTS {
            return Err(FragmentError::PayloadTooLarge);
        }
        Ok(Self {
            payload,
            tag,
            count: u8::try_from(count).map_err(|_| FragmentError::PayloadTooLarge)?,
            next: 0,
        })
    }

    /// Fragments in total.
    pub const fn count(&self) -> u8 {
        self.count
    }

    /// Writes the next fragment into `out`; `Ok(None)` when all have been written.
    pub fn next_into(&mut self, out: &mut [u8]) -> Result<Option<usize>, FragmentError> {
        if self.next >= self.count {
            return Ok(None);
        }
        let h = FragmentHeader {
            tag: self.tag,
            index: self.next,
            count: self.count,
            total: u16::try_from(self.payload.len()).map_err(|_| FragmentError::PayloadTooLarge)?,
        };
        let start = h.offset();
        let len = h.body_len();
        let body = start
            .checked_add(len)
            .and_then(|end| self.payload.get(start..end))
            .ok_or(FragmentError::Malformed)?;
        let total = HEADER_LEN.saturating_add(len);
        let dst = out.get_mut(..total).ok_or(FragmentError::BufferTooSmall)?;
        h.write(dst)?;
        dst.get_mut(HEADER_LEN..)
            .ok_or(FragmentError::BufferTooSmall)?
            .copy_from_slice(body);
        self.next = self.next.saturating_add(1);
        Ok(Some(total))
    }
}

/// What a fragment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Feed {
    /// Stored; the message is still incomplete.
    Pending,
    /// A fragment already held (ignored).
    Duplicate,
    /// The message of this length is complete: read it with [`Reassembler::take`].
    Complete(usize),
}

/// Counters of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReassemblyStats {
    /// Messages completed.
    pub completed: u32,
    /// Duplicate fragments ignored.
    pub duplicates: u32,
    /// Fragments rejected as malformed or inconsistent.
    pub rejected: u32,
    /// Partial messages dropped after the timeout.
    pub timed_out: u32,
    /// Partial messages evicted to make room (only with [`Reassembler::evicting`]).
    pub evicted: u32,
}

/// A message completed recently: late duplicates of its fragments are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    tag: u8,
    count: u8,
    total: u16,
    completed_ms: u64,
}

#[derive(Debug, Clone)]
struct Slot<const MAX: usize> {
    tag: u8,
    count: u8,
    total: u16,
    received: u64,
    started_ms: u64,
    buf: [u8; MAX],
}

/// Reassembles up to `S` concurrent messages of at most `MAX` bytes.
#[derive(Debug, Clone)]
pub struct Reassembler<const S: usize, const MAX: usize> {
    slots: [Option<Slot<MAX>>; S],
    recent: [Option<Recent>; S],
    next_recent: usize,
    done: Option<(u8, usize, [u8; MAX])>,
    timeout_ms: u64,
    evict_when_full: bool,
    remember_completed: bool,
    stats: ReassemblyStats,
}

impl<const S: usize, const MAX: usize> Reassembler<S, MAX> {
    /// A reassembler that drops partial messages older than `timeout_ms`.
    pub const fn new(timeout_ms: u64) -> Self {
        Self {
            slots: [const { None }; S],
            recent: [None; S],
            next_recent: 0,
            done: None,
            timeout_ms,
            evict_when_full: false,
            remember_completed: true,
            stats: ReassemblyStats {
                completed: 0,
                duplicates: 0,
                rejected: 0,
                timed_out: 0,
                evicted: 0,
            },
        }
    }

    /// When every slot is busy, a fragment of a new message evicts the oldest partial message
    /// (counted in `evicted`) instead of being refused with [`FragmentError::NoFreeSlot`].
    #[must_use]
    pub const fn evicting(mut self) -> Self {
        self.evict_when_full = true;
        self
    }

    /// Whether late duplicates of recently completed messages are ignored (the default) or
    /// start a new reassembly (for callers that deduplicate whole messages themselves and
    /// must see a retransmitted message complete again, for example to acknowledge it).
    #[must_use]
    pub const fn remembering_completed(mut self, remember: bool) -> Self {
        self.remember_completed = remember;
        self
    }

    /// Counters so far.
    pub const fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Partial messages held.
    pub fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Drops partial messages older than the timeout; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0usize;
        for slot in self.slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|s| now_ms.saturating_sub(s.started_ms) >= self.timeout_ms)
            {
                *slot = None;
                n = n.saturating_add(1);
                self.stats.timed_out = self.stats.timed_out.saturating_add(1);
            }
        }
        n
    }

    /// Takes one fragment received at `now_ms`.
    pub fn push(&mut self, fragment: &[u8], now_ms: u64) -> Result<Feed, FragmentError> {
        let r = self.push_inner(fragment, now_ms);
        if matches!(
            r,
            Err(FragmentError::Malformed | FragmentError::Inconsistent | FragmentError::TooLarge)
        ) {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
        }
        r
    }

    fn push_inner(&mut self, fragment: &[u8], now_ms: u64) -> Result<Feed, FragmentError> {
        self.expire(now_ms);
        let (h, body) = FragmentHeader::parse(fragment)?;
        if usize::from(h.total) > MAX {
            return Err(FragmentError::TooLarge);
        }
        let partial = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.tag == h.tag));
        if partial.is_none()
            && self.remember_completed
            && self.recent.iter().flatten().any(|r| {
                r.tag == h.tag
                    && r.count == h.count
                    && r.total == h.total
                    && now_ms.saturating_sub(r.completed_ms) < self.timeout_ms
            })
        {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return Ok(Feed::Duplicate);
        }
        let index = match partial {
            Some(i) => i,
            None => {
                let free = match self.slots.iter().position(Option::is_none) {
                    Some(free) => free,
                    None if self.evict_when_full => {
                        let oldest = self
                            .slots
                            .iter()
                            .enumerate()
                            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.started_ms)))
                            .min_by_key(|&(_, started)| started)
                            .map(|(i, _)| i)
                            .ok_or(FragmentError::NoFreeSlot)?;
                        self.stats.evicted = self.stats.evicted.saturating_add(1);
                        oldest
                    }
                    None => return Err(FragmentError::NoFreeSlot),
                };
                let slot = self.slots.get_mut(free).ok_or(FragmentError::NoFreeSlot)?;
                *slot = Some(Slot {
                    tag: h.tag,
                    count: h.count,
                    total: h.total,
                    received: 0,
                    started_ms: now_ms,
                    buf: [0; MAX],
                });
                free
            }
        };
        let slot_ref = self.slots.get_mut(index).ok_or(FragmentError::NoFreeSlot)?;
        let Some(slot) = slot_ref.as_mut() else {
            return Err(FragmentError::NoFreeSlot);
        };
        if slot.count != h.count || slot.total != h.total {
            return Err(FragmentError::Inconsistent);
        }
        let bit = 1u64.checked_shl(u32::from(h.index)).unwrap_or(0);
        if slot.received & bit != 0 {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return Ok(Feed::Duplicate);
        }
        let start = h.offset();
        let dst = start
            .checked_add(body.len())
            .and_then(|end| slot.buf.get_mut(start..end))
            .ok_or(FragmentError::Inconsistent)?;
        dst.copy_from_slice(body);
        slot.received |= bit;
        let all = match h.count {
            64 => u64::MAX,
            c => (1u64 << c).wrapping_sub(1),
        };
        if slot.received != all {
            return Ok(Feed::Pending);
        }
        let total = usize::from(slot.total);
        let tag = slot.tag;
        let buf = slot.buf;
        let count = slot.count;
        *slot_ref = None;
        self.done = Some((tag, total, buf));
        if let Some(r) = self.recent.get_mut(self.next_recent) {
            *r = Some(Recent {
                tag,
                count,
                total: u16::try_from(total).unwrap_or(u16::MAX),
                completed_ms: now_ms,
            });
        }
        self.next_recent = match self.next_recent.checked_add(1) {
            Some(n) if n < S => n,
            _ => 0,
        };
        self.stats.completed = self.stats.completed.saturating_add(1);
        Ok(Feed::Complete(total))
    }

    /// The last completed message, if its length is `len` (as reported by
    /// [`Feed::Complete`]). It stays readable until the next message completes.
    pub fn take(&self, len: usize) -> Option<&[u8]> {
        self.done
            .as_ref()
            .filter(|(_, total, _)| *total == len)
            .and_then(|(_, total, buf)| buf.get(..*total))
    }

    /// The tag of the last completed message.
    pub fn last_tag(&self) -> Option<u8> {
        self.done.as_ref().map(|(tag, _, _)| *tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragments(payload: &[u8], tag: u8, mtu: usize) -> std::vec::Vec<std::vec::Vec<u8>> {
        let mut f = Fragmenter::new(payload, tag, mtu).unwrap();
        let mut out = std::vec::Vec::new();
        let mut buf = [0u8; 300];
        while let Some(n) = f.next_into(&mut buf).unwrap() {
            assert!(n <= mtu);
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn lora_sf12_sizes() {
        let f = fragments(&[1u8; 200], 0, 51);
        assert_eq!(f.len(), 5); // ceil(200 / 46)
        assert!(f.iter().all(|x| x.len() <= 51));
        assert_eq!(fragments(&[], 0, 51).len(), 1);
        assert_eq!(
            Fragmenter::new(&[0; 10], 0, 5).err(),
            Some(FragmentError::MtuTooSmall)
        );
        assert_eq!(
            Fragmenter::new(&[0; 65 * 46], 0, 51).err(),
            Some(FragmentError::PayloadTooLarge)
        );
    }

    #[test]
    fn reverse_order_duplicates_and_interleaving() {
        let a: std::vec::Vec<u8> = (0..150).collect();
        let b: std::vec::Vec<u8> = (0..90).rev().collect();
        let fa = fragments(&a, 1, 40);
        let fb = fragments(&b, 2, 40);
        let mut r: Reassembler<2, 256> = Reassembler::new(1_000);
        let mut got = std::vec::Vec::new();
        for (i, frag) in fa.iter().rev().enumerate() {
            if let Some(g) = fb.get(i)
                && let Feed::Complete(n) = r.push(g, 0).unwrap()
            {
                got.push(r.take(n).unwrap().to_vec());
            }
            assert_eq!(r.push(frag, 0).map(|f| f == Feed::Duplicate), Ok(false));
            if let Ok(Feed::Complete(n)) = r.push(frag, 0) {
                panic!("duplicate completed {n}");
            }
        }
        assert_eq!(r.last_tag(), Some(1));
        assert_eq!(r.take(150), Some(&a[..]));
        assert_eq!(got, [b]);
        assert!(r.stats().duplicates >= 3);
        assert_eq!(r.stats().completed, 2);
    }

    #[test]
    fn garbage_and_contradictions_are_errors() {
        let mut r: Reassembler<1, 64> = Reassembler::new(100);
        assert_eq!(r.push(&[], 0), Err(FragmentError::Malformed));
        assert_eq!(
            r.push(&[0, 0, 0, 0, 1, 9], 0),
            Err(FragmentError::Malformed)
        ); // count 0
        assert_eq!(
            r.push(&[0, 2, 2, 0, 4, 9], 0),
            Err(FragmentError::Malformed)
        ); // index >= count
        assert_eq!(
            r.push(&[0, 0, 2, 0, 4, 9], 0),
            Err(FragmentError::Inconsistent)
        ); // short
        let mut big = std::vec![0, 0, 2, 0, 65];
        big.extend([0u8; 33]);
        assert_eq!(r.push(&big, 0), Err(FragmentError::TooLarge));
        assert_eq!(r.push(&[5, 0, 2, 0, 4, 1, 2], 0), Ok(Feed::Pending));
        // Same tag, different shape.
        assert_eq!(
            r.push(&[5, 1, 3, 0, 6, 3, 4], 0),
            Err(FragmentError::Inconsistent)
        );
        // Another message while the only slot is busy.
        assert_eq!(
            r.push(&[6, 0, 2, 0, 4, 1, 2], 10),
            Err(FragmentError::NoFreeSlot)
        );
        // After the timeout the slot is reclaimed.
        assert_eq!(r.push(&[6, 0, 2, 0, 4, 1, 2], 100), Ok(Feed::Pending));
        assert_eq!(r.stats().timed_out, 1);
        assert_eq!(r.stats().rejected, 6);
        assert_eq!(r.in_progress(), 1);
        assert_eq!(r.take(4), None);

        // With eviction the newcomer takes the oldest slot instead.
        let mut e: Reassembler<1, 64> = Reassembler::new(100).evicting();
        assert_eq!(e.push(&[5, 0, 2, 0, 4, 1, 2], 0), Ok(Feed::Pending));
        assert_eq!(e.push(&[6, 0, 2, 0, 4, 1, 2], 10), Ok(Feed::Pending));
        assert_eq!(e.push(&[6, 1, 2, 0, 4, 3, 4], 10), Ok(Feed::Complete(4)));
        assert_eq!(e.stats().evicted, 1);
        assert_eq!(e.take(4), Some(&[1, 2, 3, 4][..]));
    }

    #[test]
    fn forgetting_completed_messages_lets_a_retransmission_complete_again() {
        let f = fragments(&[9u8; 30], 3, 20);
        let mut r: Reassembler<2, 64> = Reassembler::new(1_000).remembering_completed(false);
        let mut completions = 0;
        for _ in 0..2 {
            for frag in &f {
                if let Feed::Complete(_) = r.push(frag, 0).unwrap() {
                    completions += 1;
                }
            }
        }
        assert_eq!(completions, 2);
    }
}
