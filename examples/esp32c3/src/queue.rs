//! The agent's [`Outbound`] over MQTT: each message becomes an encoded envelope of this
//! device, numbered and queued until the MQTT session takes it. The session keeps QoS 1
//! envelopes until the broker acknowledges them and republishes them after a reconnect;
//! this queue holds what the session could not take yet (connection down, its outbox full),
//! and `Link::send_queued` drains it.

use heapless::{Deque, Vec};
use iot_agent::Outbound;
use iot_core::DeviceId;
use iot_core::message::{EnvelopeRef, MessageId, MessageKind, QoS};
use iot_mqtt::device::SendQueue;

/// Why [`EnvelopeQueue`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds `N` unsent envelopes.
    Full,
    /// The envelope does not fit `E` bytes or could not be encoded.
    Encode,
}

/// Up to `N` unsent envelopes of at most `E` bytes each.
pub struct EnvelopeQueue<const N: usize, const E: usize> {
    device: DeviceId,
    next_id: u32,
    queue: Deque<Vec<u8, E>, N>,
}

impl<const N: usize, const E: usize> EnvelopeQueue<N, E> {
    /// A queue for `device`, numbering envelopes from `first_id` (take it from the hardware
    /// RNG at boot: the backend drops a message id it has seen from this device).
    pub const fn new(device: DeviceId, first_id: u32) -> Self {
        Self {
            device,
            next_id: first_id,
            queue: Deque::new(),
        }
    }

    /// Envelopes waiting to be sent.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<const N: usize, const E: usize> SendQueue for EnvelopeQueue<N, E> {
    fn front(&self) -> Option<&[u8]> {
        self.queue.front().map(Vec::as_slice)
    }

    fn pop_front(&mut self) {
        self.queue.pop_front();
    }
}

impl<const N: usize, const E: usize> Outbound for EnvelopeQueue<N, E> {
    type Error = QueueError;

    fn send(
        &mut self,
        kind: MessageKind,
        qos: QoS,
        payload: &[u8],
        _now_ms: u64,
    ) -> Result<(), QueueError> {
        if self.queue.is_full() {
            return Err(QueueError::Full);
        }
        let envelope = EnvelopeRef {
            device: self.device,
            seq: self.next_id,
            id: MessageId(self.next_id),
            qos,
            kind,
            payload,
        };
        let mut bytes = Vec::new();
        bytes
            .resize_default(envelope.encoded_len())
            .map_err(|_| QueueError::Encode)?;
        let n = envelope
            .encode_into(&mut bytes)
            .map_err(|_| QueueError::Encode)?;
        bytes.truncate(n);
        self.queue.push_back(bytes).map_err(|_| QueueError::Full)?;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(())
    }
}
