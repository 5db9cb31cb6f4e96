//! The per-priority chains through the slots that keep unsent and scheduled messages in age
//! order, and the duplicate-id filter's bit.

use iot_core::MessageId;

use super::Priority;
use super::entry::{NIL, OutboxEntry, Slot, ix};

/// A doubly linked list of slots threaded through [`OutboxEntry`]'s `prev`/`next`, oldest
/// at the head. The outbox keeps one per priority for unsent messages and one per priority
/// for messages scheduled for retransmission, so the next message to send is a chain head
/// and no operation shifts an array. Walks are bounded by the capacity `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Chain {
    pub(super) head: Slot,
    pub(super) tail: Slot,
}

impl Chain {
    pub(super) const EMPTY: Self = Self {
        head: NIL,
        tail: NIL,
    };

    /// Links `slot` after `after` ([`NIL`]: at the head).
    pub(super) fn link_after<const M: usize>(
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
    pub(super) fn insert_by_age<const N: usize, const M: usize>(
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
    pub(super) fn unlink<const M: usize>(&mut self, slots: &mut [OutboxEntry<M>], slot: Slot) {
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
    pub(super) fn first_due<'a, const N: usize, const M: usize>(
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
pub(super) const fn id_bit(id: MessageId) -> u64 {
    1u64.wrapping_shl(id.0)
}

/// Priorities, as chain indices.
pub(super) const PRIORITIES: usize = 4;

pub(super) fn chain_index(p: Priority) -> usize {
    usize::from(p.code())
}
