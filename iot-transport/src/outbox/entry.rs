//! One queued message and the slot numbers that place it.

use iot_core::{MessageId, QoS};

use super::Priority;

/// Where a queued message is in its life; decides which index list holds its slot. Not
/// stored: it follows from the entry's public fields (see [`OutboxEntry::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Not sent since it was queued or restored.
    Fresh,
    /// Sent; retransmitted at `next_attempt_ms` unless acknowledged.
    Scheduled,
    /// Its last attempt is sent; waiting for the ack until `ack_deadline_ms`.
    Waiting,
}

/// A slot index, with [`NIL`] for "none": two bytes where an `Option<usize>` takes 8 on
/// riscv32 and 16 on x86_64. [`Outbox::new`] checks at compile time that `N` slots fit.
pub(super) type Slot = u16;

/// No slot.
pub(super) const NIL: Slot = Slot::MAX;

/// A slot number as an index. [`NIL`] is not below `N`, so `slots.get(ix(NIL))` is `None`
/// and "no slot" needs no test of its own.
pub(super) fn ix(s: Slot) -> usize {
    usize::from(s)
}

/// An index below `N` as a slot number (`N < NIL` is checked at compile time).
pub(super) fn slot_of(i: usize) -> Slot {
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
    pub(super) backoff_started_ms: u64,
    /// Failures its backoff has recorded.
    pub(super) failures: u32,
    /// Age rank among the queued messages: larger is younger. Renumbered before it could
    /// wrap (see [`Outbox::renumber`]).
    pub(super) order: u16,
    /// Neighbours in its [`Chain`] (older, younger), or [`NIL`].
    pub(super) prev: Slot,
    pub(super) next: Slot,
}

impl<const M: usize> OutboxEntry<M> {
    /// Whether its last attempt has been sent and it only waits for the ack or expiry.
    pub const fn is_awaiting_last_ack(&self) -> bool {
        self.ack_deadline_ms.is_some()
    }

    /// Its state: waiting once its last attempt's deadline is set, fresh until first sent
    /// (`insert` clears both fields, `mark_sent` sets them; callers only ever see `&self` or a
    /// detached copy, so they always agree with the index lists).
    pub(super) const fn state(&self) -> State {
        if self.ack_deadline_ms.is_some() {
            State::Waiting
        } else if self.first_sent_ms.is_none() {
            State::Fresh
        } else {
            State::Scheduled
        }
    }
}
