//! Duplicate suppression by envelope message id.
//!
//! MQTT QoS 1 is at-least-once: a message whose acknowledgement was lost, or that a sender
//! republished after a reconnect, arrives again with the same envelope
//! [`MessageId`]. A receiver keeps the last `N` ids it delivered and drops repeats.

use iot_core::message::MessageId;

/// The last `N` message ids seen from one sender (`N >= 1`, checked at compile time); fixed
/// capacity, no allocation.
///
/// A repeat is recognised while it is among the last `N` distinct ids delivered, which covers
/// every message a sender can have in flight when `N` is at least its outbox capacity.
#[derive(Debug, Clone)]
pub struct RecentIds<const N: usize> {
    ids: heapless::Deque<MessageId, N>,
}

impl<const N: usize> Default for RecentIds<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RecentIds<N> {
    /// An empty window.
    pub const fn new() -> Self {
        Self {
            ids: heapless::Deque::new(),
        }
    }

    /// Records `id`; returns `true` if it is new (deliver it) and `false` for a repeat.
    pub fn first_time(&mut self, id: MessageId) -> bool {
        if self.ids.iter().any(|seen| *seen == id) {
            return false;
        }
        if self.ids.is_full() {
            let _ = self.ids.pop_front();
        }
        // Room was made above (`N` is at least 1: heapless checks it at compile time).
        let _ = self.ids.push_back(id);
        true
    }

    /// How many ids the window holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_refused_within_the_window() {
        let mut w = RecentIds::<2>::new();
        assert!(w.first_time(MessageId(1)));
        assert!(!w.first_time(MessageId(1)));
        assert!(w.first_time(MessageId(2)));
        assert!(w.first_time(MessageId(3)));
        assert_eq!(w.len(), 2);
        // 1 fell out of the window.
        assert!(w.first_time(MessageId(1)));
        assert!(!w.first_time(MessageId(3)));
    }
}
