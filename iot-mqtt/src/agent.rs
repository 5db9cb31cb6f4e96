//! The device agent of `iot-agent` over a [`DeviceSession`]: the sans-IO
//! [`LabAgent`] fed what the session receives, its messages sent as envelopes on the
//! device's up topic. For host simulations, tests and gateways; a microcontroller runs the
//! same session and agent with its own loop.
//!
//! - [`AgentOutbox`] is the agent's [`Outbound`]: it numbers each message and queues it as an
//!   encoded envelope.
//! - [`AgentHost`] is the device around the agent: the agent, its board, and what happens
//!   between steps (a restart into a new image, say).
//! - [`run_agent`] connects, sends what the agent queued, waits for a message or the agent's
//!   next deadline, and reconnects (with the session's backoff) when the connection drops.
//!
//! QoS: the session keeps QoS 1 and 2 envelopes until the broker acknowledges them and
//! republishes them after a reconnect; an envelope it could not take yet (its outbox or
//! minimq's in-flight slots full, connection down) stays in the [`AgentOutbox`] and is tried
//! again at the driver's next turn (at most [`DriveConfig::max_wait`] later) or on the next
//! connection. At-most-once envelopes a dropping connection takes with it are lost.

use core::future::Future;
use core::pin::pin;
use std::collections::VecDeque;
use std::vec::Vec;

use iot_agent::{Board, LabAgent, Outbound};
use iot_core::id::DeviceId;
use iot_core::message::{EnvelopeRef, MessageId, MessageKind, QoS};

use crate::device::{Connector, DeviceError, DeviceSession, Duration, Flushed, SendQueue};

/// Why the [`AgentOutbox`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The queue holds its capacity of unsent envelopes.
    #[error("agent outbox is full ({0} envelopes)")]
    Full(usize),
    /// The envelope could not be encoded.
    #[error("envelope could not be encoded")]
    Encode,
}

/// Queues the agent's messages as encoded envelopes of one device.
#[derive(Debug)]
pub struct AgentOutbox {
    device: DeviceId,
    next_id: u32,
    queue: VecDeque<Vec<u8>>,
    capacity: usize,
}

impl AgentOutbox {
    /// An outbox for `device` holding up to `capacity` unsent envelopes, numbering them from
    /// `first_id`.
    ///
    /// The backend deduplicates by message id: a device that restarts must not number from
    /// the same id again (take `first_id` from a boot counter kept in flash, or from the
    /// hardware RNG).
    pub fn new(device: DeviceId, first_id: u32, capacity: usize) -> Self {
        Self {
            device,
            next_id: first_id,
            queue: VecDeque::new(),
            capacity,
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

    /// Forgets what waits to be sent (a device restart loses its RAM). Numbering goes on.
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// The encoded envelopes waiting to be sent, oldest first (for tests and diagnostics:
    /// which messages the agent produced, with their ids and QoS).
    pub fn queued(&self) -> impl Iterator<Item = &[u8]> {
        self.queue.iter().map(Vec::as_slice)
    }

    /// The message id the next envelope gets.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }
}

impl Outbound for AgentOutbox {
    type Error = OutboxError;

    fn send(
        &mut self,
        kind: MessageKind,
        qos: QoS,
        payload: &[u8],
        _now_ms: u64,
    ) -> Result<(), OutboxError> {
        if self.queue.len() >= self.capacity {
            return Err(OutboxError::Full(self.capacity));
        }
        let id = self.next_id;
        let envelope = EnvelopeRef {
            device: self.device,
            seq: id,
            id: MessageId(id),
            qos,
            kind,
            payload,
        };
        let mut bytes = std::vec![0u8; envelope.encoded_len()];
        let n = envelope
            .encode_into(&mut bytes)
            .map_err(|_| OutboxError::Encode)?;
        bytes.truncate(n);
        self.next_id = self.next_id.wrapping_add(1);
        self.queue.push_back(bytes);
        Ok(())
    }
}

/// The device around the agent that [`run_agent`] drives.
pub trait AgentHost {
    /// The board the agent runs on.
    type Board: Board;

    /// The agent and its board.
    fn parts(&mut self) -> (&mut LabAgent, &mut Self::Board);

    /// Called after every step (a handled message or a poll) at `now_ms`: the place to
    /// restart the device when the board asked for it (rebuild the agent, clear `outbox`,
    /// [`LabAgent::start`] again). Does nothing by default.
    fn after_step(&mut self, now_ms: u64, outbox: &mut AgentOutbox) {
        let _ = (now_ms, outbox);
    }
}

/// Bounds of [`run_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveConfig {
    /// Connections made at most (each ends when the connection drops).
    pub max_connections: u32,
    /// The longest single wait for a message (the agent's next deadline usually comes
    /// first).
    pub max_wait: Duration,
}

impl Default for DriveConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// Counters of [`run_agent`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveStats {
    /// Envelopes handed to the session.
    pub sent: u32,
    /// Envelopes dropped because the session refused them for good (too large, invalid).
    pub send_refused: u32,
    /// Envelopes received and handed to the agent.
    pub received: u32,
    /// Received envelopes the agent refused (or that did not decode).
    pub agent_errors: u32,
    /// Connections established.
    pub connects: u32,
    /// Connection attempts that failed.
    pub connect_failures: u32,
}

/// How [`run_agent`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriveEnd {
    /// `stop` completed.
    Stopped,
    /// [`DriveConfig::max_connections`] connections were used up.
    ConnectionsExhausted,
    /// The session's configuration cannot work (receive buffer smaller than an envelope).
    Failed(DeviceError),
}

impl SendQueue for AgentOutbox {
    fn front(&self) -> Option<&[u8]> {
        self.queue.front().map(Vec::as_slice)
    }

    fn pop_front(&mut self) {
        self.queue.pop_front();
    }
}

/// Sends what is queued; returns `false` when the connection is lost.
async fn flush<IO, const O: usize, const E: usize, const D: usize>(
    link: &mut crate::device::Link<'_, '_, IO, O, E, D>,
    outbox: &mut AgentOutbox,
    stats: &mut DriveStats,
) -> bool
where
    IO: embedded_io_async::Read + embedded_io_async::Write,
{
    let mut flushed = Flushed::default();
    let result = link.send_queued(outbox, &mut flushed).await;
    stats.sent = stats.sent.saturating_add(flushed.sent);
    stats.send_refused = stats.send_refused.saturating_add(flushed.refused);
    result.is_ok()
}

/// Runs `host`'s agent over `session` until `stop` completes: connects through `connector`,
/// sends what the agent queues in `outbox`, hands it every envelope the session receives and
/// polls it at its deadlines, reading the time from `clock` (milliseconds, the agent's
/// time base). Call [`LabAgent::start`] with `outbox` first.
///
/// The session's futures are not `Send`: run this on a single-threaded executor.
#[allow(clippy::too_many_arguments)]
pub async fn run_agent<H, C, const O: usize, const E: usize, const D: usize>(
    host: &mut H,
    outbox: &mut AgentOutbox,
    session: &mut DeviceSession<'_, O, E, D>,
    connector: &mut C,
    clock: &dyn Fn() -> u64,
    config: DriveConfig,
    stop: impl Future<Output = ()>,
) -> (DriveEnd, DriveStats)
where
    H: AgentHost,
    C: Connector,
{
    let mut stop = pin!(stop);
    let mut stats = DriveStats::default();
    let mut buf = std::vec![0u8; E];
    for _ in 0..config.max_connections {
        let mut link = tokio::select! {
            link = session.connect(connector) => match link {
                Ok(link) => link,
                Err(_) => {
                    stats.connect_failures = stats.connect_failures.saturating_add(1);
                    continue;
                }
            },
            () = &mut stop => return (DriveEnd::Stopped, stats),
        };
        stats.connects = stats.connects.saturating_add(1);
        loop {
            if !flush(&mut link, outbox, &mut stats).await {
                break;
            }
            let now = clock();
            let next = {
                let (agent, board) = host.parts();
                agent.poll(now, board, outbox)
            };
            host.after_step(now, outbox);
            if !flush(&mut link, outbox, &mut stats).await {
                break;
            }
            let until_due = next.map_or(u64::MAX, |at| at.saturating_sub(clock()));
            let wait = Duration::from_millis(until_due).min(config.max_wait);
            let received = tokio::select! {
                received = link.recv_timeout(&mut buf, wait) => received,
                () = &mut stop => {
                    let _ = link.disconnect().await;
                    return (DriveEnd::Stopped, stats);
                }
            };
            match received {
                Ok(None) => {}
                Ok(Some(n)) => {
                    stats.received = stats.received.saturating_add(1);
                    let now = clock();
                    let handled = match buf.get(..n).map(EnvelopeRef::decode) {
                        Some(Ok(envelope)) => {
                            let (agent, board) = host.parts();
                            agent.handle(now, &envelope, board, outbox).is_ok()
                        }
                        _ => false,
                    };
                    if !handled {
                        stats.agent_errors = stats.agent_errors.saturating_add(1);
                    }
                    host.after_step(now, outbox);
                }
                Err(e) if e.is_connection_lost() => break,
                Err(e @ DeviceError::BufferTooSmall { .. }) => {
                    return (DriveEnd::Failed(e), stats);
                }
                // Anything else ends this connection; the next one starts clean.
                Err(_) => break,
            }
        }
    }
    (DriveEnd::ConnectionsExhausted, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::message::OwnedEnvelope;

    #[test]
    fn the_outbox_numbers_envelopes_of_its_device_and_refuses_past_its_capacity() {
        let device = DeviceId::new("d").unwrap();
        let mut outbox = AgentOutbox::new(device, u32::MAX, 2);
        outbox
            .send(MessageKind::Heartbeat, QoS::AtMostOnce, &[1], 0)
            .unwrap();
        outbox
            .send(MessageKind::Telemetry, QoS::AtLeastOnce, &[2, 3], 0)
            .unwrap();
        assert_eq!(
            outbox.send(MessageKind::Telemetry, QoS::AtLeastOnce, &[4], 0),
            Err(OutboxError::Full(2))
        );
        let queued: Vec<OwnedEnvelope> = outbox
            .queue
            .iter()
            .map(|bytes| OwnedEnvelope::decode(bytes).unwrap())
            .collect();
        assert_eq!(queued[0].id, MessageId(u32::MAX));
        assert_eq!(queued[1].id, MessageId(0), "numbering wraps");
        assert_eq!(queued[1].device, device);
        assert_eq!(queued[1].qos, QoS::AtLeastOnce);
        assert_eq!(queued[1].kind, MessageKind::Telemetry);
        assert_eq!(queued[1].payload, [2, 3]);
        // A restart forgets the queue; numbering goes on.
        outbox.clear();
        assert!(outbox.is_empty());
        assert_eq!(outbox.next_id(), 1);
    }
}
