//! Delivery guarantees over any [`Link`]: at-most-once, at-least-once (ack and retransmit)
//! and exactly-once (at-least-once plus a message-id dedup window at the receiver).
//!
//! [`ReliableEndpoint`] owns a link, an [`Outbox`] and a [`DedupWindow`]. Messages are
//! [`iot_core::Envelope`]s encoded as CBOR. A receiver acknowledges every QoS 1 and 2 message
//! with a [`MessageKind::Ack`] envelope carrying the same [`MessageId`]; the sender removes
//! acknowledged messages from its outbox and retransmits the others on the outbox's backoff.
//! The endpoint is driven by [`ReliableEndpoint::poll`] with the current time, from any loop.
//!
//! Exactly-once holds for duplicates that arrive while the id is still in the receiver's
//! window of the last `D` ids: size `D` to cover the retransmission horizon (at least the
//! sender's outbox capacity).
//!
//! A message whose encoding exceeds the link's MTU (LoRa carries 51 bytes at SF12) is sent as
//! [`crate::fragment`] fragments, each datagram starting with [`FRAGMENT_MARKER`]; the
//! receiving endpoint reassembles them (up to `N` messages at once) before acking and
//! deduplicating. A retransmission resends every fragment.
//!
//! ```
//! use iot_core::{Clock, DeviceId, ManualClock, MessageKind, QoS};
//! use iot_transport::outbox::{OverflowPolicy, Priority};
//! use iot_transport::qos::ReliableEndpoint;
//! use iot_transport::retry::BackoffPolicy;
//! use iot_transport::sim::{SimConfig, SimNetwork};
//! use iot_transport::SplitMix64;
//! use embassy_futures::block_on;
//!
//! let clock = ManualClock::new(0);
//! // Every datagram is duplicated; reliability still delivers once.
//! let net: SimNetwork<_, 16, 128> = SimNetwork::new(&clock, SimConfig::ideal(5).with_duplication(1000), 7);
//! let (a, b) = net.endpoints();
//! let retry = BackoffPolicy::new(50, 1_000);
//! let mut device: ReliableEndpoint<_, _, 4, 128, 16> =
//!     ReliableEndpoint::new(a, DeviceId::new("dev-1")?, OverflowPolicy::RejectNewest, retry, SplitMix64::new(1));
//! let mut gateway: ReliableEndpoint<_, _, 4, 128, 16> =
//!     ReliableEndpoint::new(b, DeviceId::new("gw")?, OverflowPolicy::RejectNewest, retry, SplitMix64::new(2));
//!
//! device.enqueue(MessageKind::Telemetry, QoS::ExactlyOnce, Priority::Normal, b"21.5C", clock.now_ms())?;
//! let mut received = 0;
//! for _ in 0..10 {
//!     block_on(device.poll(clock.now_ms(), |_| {}))?;
//!     block_on(gateway.poll(clock.now_ms(), |env| { assert_eq!(env.payload, b"21.5C"); received += 1; }))?;
//!     clock.advance(10);
//! }
//! assert_eq!(received, 1);
//! assert!(device.outbox().is_empty()); // acknowledged
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use iot_core::{DeviceId, Envelope, EnvelopeRef, MessageId, MessageKind, NodeId, QoS};

use crate::fragment::{Feed, Fragmenter, Reassembler, ReassemblyStats};
use crate::link::Link;
use crate::monitor::LinkMonitor;
use crate::outbox::{Outbox, OutboxError, OverflowPolicy, Priority, PushOutcome};
use crate::retry::BackoffPolicy;
use crate::rng::Rng;

/// A dedup key: the sending node and its message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DedupKey {
    /// The sender (hash of its device id).
    pub node: NodeId,
    /// The sender's message id.
    pub id: MessageId,
}

/// Remembers the last `D` message keys seen, to drop duplicates (exactly-once delivery).
#[derive(Debug, Clone)]
pub struct DedupWindow<const D: usize> {
    keys: [Option<DedupKey>; D],
    next: usize,
}

impl<const D: usize> Default for DedupWindow<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const D: usize> DedupWindow<D> {
    /// An empty window.
    pub const fn new() -> Self {
        Self {
            keys: [None; D],
            next: 0,
        }
    }

    /// Whether `key` is in the window.
    pub fn contains(&self, key: DedupKey) -> bool {
        self.keys.contains(&Some(key))
    }

    /// Records `key`; `true` if it was new (deliver), `false` if a duplicate (drop).
    /// The oldest key leaves the window when it is full.
    pub fn observe(&mut self, key: DedupKey) -> bool {
        if self.contains(key) {
            return false;
        }
        if let Some(slot) = self.keys.get_mut(self.next) {
            *slot = Some(key);
        }
        self.next = match self.next.checked_add(1) {
            Some(n) if n < D => n,
            _ => 0,
        };
        true
    }
}

/// What an endpoint has done, for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EndpointStats {
    /// Messages handed to the application.
    pub delivered: u32,
    /// Duplicates suppressed by the dedup window.
    pub duplicates: u32,
    /// Transmissions, retransmissions included.
    pub transmissions: u32,
    /// Retransmissions alone.
    pub retransmissions: u32,
    /// Acks sent.
    pub acks_sent: u32,
    /// Acks received that matched a queued message.
    pub acks_received: u32,
    /// Datagrams that did not decode as envelopes.
    pub decode_errors: u32,
    /// Sends that the link refused.
    pub send_errors: u32,
    /// Fragments sent for messages larger than the link's MTU.
    pub fragments_sent: u32,
    /// Messages the application could not take (see [`ReliableEndpoint::poll_taking`]):
    /// not acked, so a QoS 1/2 sender retransmits them.
    pub refused: u32,
}

/// What one [`ReliableEndpoint::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PollReport {
    /// Datagrams received.
    pub received: u32,
    /// Messages delivered to the application.
    pub delivered: u32,
    /// Datagrams sent (messages and acks).
    pub sent: u32,
    /// When the outbox next needs a poll, if it holds anything.
    pub next_wakeup_ms: Option<u64>,
}

/// Why an endpoint operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EndpointError<E> {
    /// The outbox refused the message (and counted it).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The message does not fit in `M` bytes once encoded.
    #[error("encoded message exceeds the buffer")]
    Encode,
    /// The link failed in a way that is not a per-datagram hiccup.
    #[error("link error: {0:?}")]
    Link(E),
}

impl<E: iot_core::Error> iot_core::Error for EndpointError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::Outbox(e) => iot_core::Error::kind(e),
            Self::Encode => iot_core::ErrorKind::Capacity,
            // The link's own classification: a timeout stays a timeout, a refusal a refusal.
            Self::Link(e) => e.kind(),
        }
    }
}

/// Most datagrams taken from the link in one poll, so a flood cannot starve sending.
const MAX_RECEIVE_PER_POLL: usize = 32;

/// The endpoint's reassembler: it deduplicates whole messages itself, and a retransmission
/// must complete again so it can be acknowledged again.
const fn endpoint_reassembler<const N: usize, const M: usize>(
    timeout_ms: u64,
) -> Reassembler<N, M> {
    Reassembler::new(timeout_ms)
        .evicting()
        .remembering_completed(false)
}

/// A link with delivery guarantees: outbox of `N` messages of up to `M` encoded bytes, dedup
/// window of `D` ids. See the [module docs](self).
#[derive(Debug)]
pub struct ReliableEndpoint<L, R, const N: usize, const M: usize, const D: usize> {
    link: L,
    device: DeviceId,
    outbox: Outbox<N, M>,
    dedup: DedupWindow<D>,
    rng: R,
    next_id: u32,
    seq: u32,
    rx: [u8; M],
    tx: [u8; M],
    stats: EndpointStats,
    monitor: LinkMonitor<MONITOR_WINDOW>,
    reassembler: Reassembler<N, M>,
    was_up: bool,
    /// Queued messages that will not be delivered, until the caller takes them.
    lost: heapless::Deque<Lost, N>,
    /// Losses that did not fit `lost` (the oldest were dropped from it).
    lost_overflow: u32,
}

/// Why a queued message will not be delivered.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LossReason {
    /// Evicted from a full outbox to make room (`OverflowPolicy::DropOldest`).
    Evicted,
    /// Its last attempt's ack deadline passed without an ack.
    Expired,
}

/// A queued message that will not be delivered, for the caller to act on
/// ([`ReliableEndpoint::take_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Lost {
    /// The message's id, as [`ReliableEndpoint::enqueue`] returned it.
    pub id: MessageId,
    /// Its kind, if its envelope still decodes.
    pub kind: Option<MessageKind>,
    /// Why it is lost.
    pub reason: LossReason,
}

/// First byte of a datagram carrying a fragment rather than a whole envelope. `0x1F` is a
/// reserved CBOR initial byte, so no encoded envelope starts with it.
pub const FRAGMENT_MARKER: u8 = 0x1F;

/// Default time a partial fragmented message is kept.
pub const DEFAULT_REASSEMBLY_TIMEOUT_MS: u64 = 30_000;

/// Outcomes the endpoint's built-in QoS monitor remembers.
pub const MONITOR_WINDOW: usize = 32;

impl<L: Link, R: Rng, const N: usize, const M: usize, const D: usize>
    ReliableEndpoint<L, R, N, M, D>
{
    /// An endpoint for `device` over `link`, with the outbox's overflow policy and
    /// retransmission backoff, and a random source for jitter.
    pub const fn new(
        link: L,
        device: DeviceId,
        overflow: OverflowPolicy,
        retry: BackoffPolicy,
        rng: R,
    ) -> Self {
        Self {
            link,
            device,
            outbox: Outbox::new(overflow, retry),
            dedup: DedupWindow::new(),
            rng,
            next_id: 1,
            seq: 0,
            rx: [0; M],
            tx: [0; M],
            stats: EndpointStats {
                delivered: 0,
                duplicates: 0,
                transmissions: 0,
                retransmissions: 0,
                acks_sent: 0,
                acks_received: 0,
                decode_errors: 0,
                send_errors: 0,
                fragments_sent: 0,
                refused: 0,
            },
            monitor: LinkMonitor::new(),
            reassembler: endpoint_reassembler(DEFAULT_REASSEMBLY_TIMEOUT_MS),
            was_up: true,
            lost: heapless::Deque::new(),
            lost_overflow: 0,
        }
    }

    /// Keeps `slots` of the outbox for control messages (`Priority::High` and above):
    /// telemetry and replies can never fill the room commands, configuration, OTA and
    /// operator shadow changes need (see `Outbox::with_reserved`).
    #[must_use]
    pub fn with_reserved_control(mut self, slots: usize) -> Self {
        self.outbox = self.outbox.with_reserved(slots);
        self
    }

    /// The next queued message that will not be delivered (evicted or expired), oldest
    /// first. Every eviction and expiry is reported here once, with its id; call it after
    /// [`ReliableEndpoint::enqueue`] and [`ReliableEndpoint::poll`].
    pub fn take_lost(&mut self) -> Option<Lost> {
        self.lost.pop_front()
    }

    /// Losses dropped from the [`ReliableEndpoint::take_lost`] queue because the caller
    /// did not take them in time (only counted).
    pub const fn lost_overflow(&self) -> u32 {
        self.lost_overflow
    }

    fn note_lost(&mut self, id: MessageId, data: &[u8], reason: LossReason) {
        let kind = EnvelopeRef::decode(data).ok().map(|e| e.kind);
        let lost = Lost { id, kind, reason };
        if self.lost.is_full() {
            let _ = self.lost.pop_front();
            self.lost_overflow = self.lost_overflow.saturating_add(1);
        }
        let _ = self.lost.push_back(lost);
    }

    /// Starts message ids at `next_id` (for example restored from flash after a reboot, so
    /// the peer's dedup window does not mistake new messages for old ones).
    #[must_use]
    pub const fn with_next_id(mut self, next_id: u32) -> Self {
        self.next_id = next_id;
        self
    }

    /// Starts new message ids at `next_id` from now on (see
    /// [`ReliableEndpoint::with_next_id`]), for an endpoint already built.
    pub const fn set_next_id(&mut self, next_id: u32) {
        self.next_id = next_id;
    }

    /// Keeps partial fragmented messages for `timeout_ms` (default
    /// [`DEFAULT_REASSEMBLY_TIMEOUT_MS`]).
    #[must_use]
    pub const fn with_reassembly_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.reassembler = endpoint_reassembler(timeout_ms);
        self
    }

    /// Counters of the reassembly of fragmented messages.
    pub const fn reassembly_stats(&self) -> ReassemblyStats {
        self.reassembler.stats()
    }

    /// The outbox (counters, queued messages).
    pub const fn outbox(&self) -> &Outbox<N, M> {
        &self.outbox
    }

    /// The outbox, for persistence.
    pub fn outbox_mut(&mut self) -> &mut Outbox<N, M> {
        &mut self.outbox
    }

    /// Counters so far.
    pub const fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Delivery ratio, retries and ack latency of this endpoint's messages: feed
    /// [`crate::monitor::LinkMonitor::health`] or a [`crate::select::LinkSelector`].
    pub const fn monitor(&self) -> &LinkMonitor<MONITOR_WINDOW> {
        &self.monitor
    }

    /// The link.
    pub const fn link(&self) -> &L {
        &self.link
    }

    /// The link, mutably (for medium control).
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// The id the next enqueued message gets.
    pub const fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Builds an envelope from this device and queues it; returns its id.
    pub fn enqueue(
        &mut self,
        kind: MessageKind,
        qos: QoS,
        priority: Priority,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<MessageId, EndpointError<L::Error>> {
        // Expired messages leave (as recorded losses) before a full outbox would drop one.
        self.expire(now_ms);
        let id = MessageId(self.next_id);
        let env = Envelope {
            device: self.device,
            seq: self.seq,
            id,
            qos,
            kind,
            payload,
        };
        let n = env
            .encode_into(&mut self.tx)
            .map_err(|_| EndpointError::Encode)?;
        let bytes = self.tx.get(..n).ok_or(EndpointError::Encode)?;
        // The id is used even if the outbox refuses: a refused message is counted, and its
        // id is never reused for another message.
        self.next_id = self.next_id.wrapping_add(1);
        self.seq = self.seq.wrapping_add(1);
        if let PushOutcome::Evicted(victim) = self.outbox.push(id, priority, qos, bytes, now_ms)? {
            self.note_lost(victim, &[], LossReason::Evicted);
        }
        Ok(id)
    }

    /// Queues an envelope built by the caller (its id, seq and device are kept).
    pub fn enqueue_envelope(
        &mut self,
        env: &EnvelopeRef<'_>,
        priority: Priority,
        now_ms: u64,
    ) -> Result<(), EndpointError<L::Error>> {
        self.expire(now_ms);
        let n = env
            .encode_into(&mut self.tx)
            .map_err(|_| EndpointError::Encode)?;
        let bytes = self.tx.get(..n).ok_or(EndpointError::Encode)?;
        if let PushOutcome::Evicted(victim) =
            self.outbox.push(env.id, priority, env.qos, bytes, now_ms)?
        {
            self.note_lost(victim, &[], LossReason::Evicted);
        }
        Ok(())
    }

    /// Receives what has arrived (acking and deduplicating, handing new messages to
    /// `deliver`), then sends what is due. Call it whenever the link may have data or
    /// [`PollReport::next_wakeup_ms`] has come.
    pub async fn poll<F>(
        &mut self,
        now_ms: u64,
        mut deliver: F,
    ) -> Result<PollReport, EndpointError<L::Error>>
    where
        F: FnMut(EnvelopeRef<'_>),
    {
        self.poll_taking(now_ms, |env| {
            deliver(env);
            true
        })
        .await
    }

    /// As [`ReliableEndpoint::poll`], but `deliver` says whether it took the message
    /// (`false`: no room). A QoS 1/2 message is acknowledged, and remembered as seen, only
    /// once it was taken; one that was not is left to the sender's retransmission, so a
    /// receiver with a full inbox never loses a message its sender believes delivered.
    pub async fn poll_taking<F>(
        &mut self,
        now_ms: u64,
        mut deliver: F,
    ) -> Result<PollReport, EndpointError<L::Error>>
    where
        F: FnMut(EnvelopeRef<'_>) -> bool,
    {
        let mut report = PollReport::default();
        let up = self.link.info().is_up();
        if up && !self.was_up {
            // Store-and-forward: a link that comes back gets everything at once.
            self.outbox.retry_all_now(now_ms);
        }
        self.was_up = up;
        if up {
            self.receive_all(now_ms, &mut deliver, &mut report).await;
        }
        // After the acks that arrived were taken in: a message whose last attempt got no ack
        // by its deadline is lost.
        self.expire(now_ms);
        if up {
            self.send_due(now_ms, &mut report).await;
        }
        report.next_wakeup_ms = self.outbox.next_wakeup_ms();
        Ok(report)
    }

    /// Removes the messages whose last attempt's ack deadline has passed, recording each
    /// as a loss.
    fn expire(&mut self, now_ms: u64) {
        while let Some(entry) = self.outbox.take_expired(now_ms) {
            self.monitor.record_loss();
            self.note_lost(entry.id, &entry.data, LossReason::Expired);
        }
    }

    async fn receive_all<F>(&mut self, now_ms: u64, deliver: &mut F, report: &mut PollReport)
    where
        F: FnMut(EnvelopeRef<'_>) -> bool,
    {
        for _ in 0..MAX_RECEIVE_PER_POLL {
            let mut n = match self.link.try_receive(&mut self.rx) {
                Ok(Some(n)) => n,
                Ok(None) | Err(_) => break,
            };
            report.received = report.received.saturating_add(1);
            if self.rx.first() == Some(&FRAGMENT_MARKER) {
                let fragment = self.rx.get(1..n).unwrap_or_default();
                match self.reassembler.push(fragment, now_ms) {
                    Ok(Feed::Complete(total)) => {
                        let Some(message) = self.reassembler.take(total) else {
                            continue;
                        };
                        let Some(dst) = self.rx.get_mut(..total) else {
                            continue;
                        };
                        dst.copy_from_slice(message);
                        n = total;
                    }
                    Ok(Feed::Pending | Feed::Duplicate) => continue,
                    Err(_) => {
                        self.stats.decode_errors = self.stats.decode_errors.saturating_add(1);
                        continue;
                    }
                }
            }
            let Some(bytes) = self.rx.get(..n) else {
                break;
            };
            let Ok(env) = EnvelopeRef::decode(bytes) else {
                self.stats.decode_errors = self.stats.decode_errors.saturating_add(1);
                continue;
            };
            if env.kind == MessageKind::Ack {
                if let Some(acked) = self.outbox.ack_entry(env.id) {
                    self.stats.acks_received = self.stats.acks_received.saturating_add(1);
                    let since = acked.first_sent_ms.unwrap_or(acked.enqueued_ms);
                    let latency = u32::try_from(now_ms.saturating_sub(since)).unwrap_or(u32::MAX);
                    self.monitor
                        .record_delivery(latency, acked.attempts.saturating_sub(1));
                }
                continue;
            }
            let key = DedupKey {
                node: NodeId::from_device_id(&env.device),
                id: env.id,
            };
            let reliable = env.qos != QoS::AtMostOnce;
            let duplicate = env.qos == QoS::ExactlyOnce && self.dedup.contains(key);
            let taken = if duplicate {
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                // Taken before: its ack was lost, so ack again.
                true
            } else {
                let qos = env.qos;
                if deliver(env) {
                    self.stats.delivered = self.stats.delivered.saturating_add(1);
                    report.delivered = report.delivered.saturating_add(1);
                    if qos == QoS::ExactlyOnce {
                        self.dedup.observe(key);
                    }
                    true
                } else {
                    self.stats.refused = self.stats.refused.saturating_add(1);
                    false
                }
            };
            if taken && reliable {
                self.send_ack(key.id, report).await;
            }
        }
    }

    /// Acknowledges message `id` (a lost ack is repaired by the sender's retransmission).
    async fn send_ack(&mut self, id: MessageId, report: &mut PollReport) {
        let ack = Envelope {
            device: self.device,
            seq: self.seq,
            id,
            qos: QoS::AtMostOnce,
            kind: MessageKind::Ack,
            payload: &[][..],
        };
        self.seq = self.seq.wrapping_add(1);
        if let Ok(len) = ack.encode_into(&mut self.tx)
            && let Some(frame) = self.tx.get(..len)
        {
            match self.link.send(frame).await {
                Ok(()) => {
                    self.stats.acks_sent = self.stats.acks_sent.saturating_add(1);
                    report.sent = report.sent.saturating_add(1);
                }
                Err(_) => {
                    self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                }
            }
        }
    }

    async fn send_due(&mut self, now_ms: u64, report: &mut PollReport) {
        // Each message is sent at most once per poll: after `mark_sent` it is either gone
        // or scheduled strictly later than `now_ms`.
        let mtu = usize::from(self.link.info().mtu);
        for _ in 0..N {
            let Some(entry) = self.outbox.next_due(now_ms) else {
                break;
            };
            let id = entry.id;
            let retransmission = entry.attempts > 0;
            let result = if entry.data.len() <= mtu {
                self.link.send(&entry.data).await.map_err(|_| ())
            } else {
                // Too big for one datagram: send it in fragments, each behind the marker.
                // The tag is the id's low byte; tags repeat only every 256 messages.
                let tag = id.0.to_le_bytes()[0];
                send_fragmented(&mut self.link, &mut self.tx, &entry.data, tag, mtu)
                    .await
                    .map(|count| {
                        self.stats.fragments_sent = self.stats.fragments_sent.saturating_add(count);
                    })
            };
            match result {
                Ok(()) => {
                    report.sent = report.sent.saturating_add(1);
                    self.stats.transmissions = self.stats.transmissions.saturating_add(1);
                    if retransmission {
                        self.stats.retransmissions = self.stats.retransmissions.saturating_add(1);
                    }
                }
                Err(_) => {
                    self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                }
            }
            // A failed send costs an attempt and waits for the backoff like a lost one. After
            // the last attempt the message waits for its ack; `expire` reports the loss.
            if self.outbox.mark_sent(id, now_ms, &mut self.rng).is_err() {
                break;
            }
        }
    }
}

/// Sends `data` as fragments of at most `mtu` bytes (marker included) through `scratch`;
/// returns how many were sent, or `Err` at the first failure.
async fn send_fragmented<L: Link>(
    link: &mut L,
    scratch: &mut [u8],
    data: &[u8],
    tag: u8,
    mtu: usize,
) -> Result<u32, ()> {
    let mut fragments = Fragmenter::new(data, tag, mtu.saturating_sub(1)).map_err(|_| ())?;
    let mut count = 0u32;
    loop {
        let (marker, body) = scratch.split_first_mut().ok_or(())?;
        *marker = FRAGMENT_MARKER;
        let Some(len) = fragments.next_into(body).map_err(|_| ())? else {
            return Ok(count);
        };
        let frame = scratch.get(..len.saturating_add(1)).ok_or(())?;
        link.send(frame).await.map_err(|_| ())?;
        count = count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use embassy_futures::block_on;
    use iot_core::{Clock, ManualClock};

    use super::*;
    use crate::SplitMix64;
    use crate::sim::{SimConfig, SimNetwork};

    #[test]
    fn endpoint_errors_pass_the_link_kind_through() {
        use iot_core::{Error as _, ErrorKind};
        let link = crate::framing::FramedError::Io(embedded_io::ErrorKind::TimedOut);
        assert_eq!(EndpointError::Link(link).kind(), ErrorKind::Timeout);
        let link = crate::framing::FramedError::<embedded_io::ErrorKind>::TooLarge;
        assert_eq!(EndpointError::Link(link).kind(), ErrorKind::Capacity);
        assert_eq!(
            EndpointError::<ErrorKind>::Encode.kind(),
            ErrorKind::Capacity
        );
    }

    #[test]
    fn dedup_window_forgets_the_oldest() {
        let key = |i| DedupKey {
            node: NodeId(1),
            id: MessageId(i),
        };
        let mut w = DedupWindow::<3>::new();
        assert!(w.observe(key(1)));
        assert!(!w.observe(key(1)));
        assert!(w.observe(key(2)));
        assert!(w.observe(key(3)));
        assert!(w.observe(key(4))); // evicts 1
        assert!(!w.contains(key(1)));
        assert!(w.observe(key(1)));
        let other = DedupKey {
            node: NodeId(2),
            id: MessageId(4),
        };
        assert!(w.observe(other), "keys are per node");
    }

    type Ep<'a> =
        ReliableEndpoint<crate::sim::SimLink<'a, &'a ManualClock, 32, 96>, SplitMix64, 8, 96, 32>;

    fn pair<'a>(net: &'a SimNetwork<&'a ManualClock, 32, 96>) -> (Ep<'a>, Ep<'a>) {
        let (a, b) = net.endpoints();
        let retry = BackoffPolicy::new(40, 400);
        (
            ReliableEndpoint::new(
                a,
                DeviceId::new("dev").unwrap(),
                OverflowPolicy::RejectNewest,
                retry,
                SplitMix64::new(1),
            ),
            ReliableEndpoint::new(
                b,
                DeviceId::new("gw").unwrap(),
                OverflowPolicy::RejectNewest,
                retry,
                SplitMix64::new(2),
            ),
        )
    }

    #[test]
    fn at_most_once_is_sent_once_even_when_lost() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5).with_loss(1000, u32::MAX), 3);
        let (mut dev, mut gw) = pair(&net);
        dev.enqueue(
            MessageKind::Heartbeat,
            QoS::AtMostOnce,
            Priority::Low,
            &[],
            0,
        )
        .unwrap();
        let mut got = 0;
        for _ in 0..20 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            block_on(gw.poll(clock.now_ms(), |_| got += 1)).unwrap();
            clock.advance(20);
        }
        assert_eq!(got, 0);
        assert_eq!(dev.stats().transmissions, 1);
        assert_eq!(dev.outbox().stats().sent_unacked, 1);
        assert!(dev.outbox().is_empty());
    }

    /// Evictions and expiries come back to the caller with the message id.
    #[test]
    fn evictions_and_expiries_are_returned_with_their_ids() {
        let clock = ManualClock::new(0);
        let net: SimNetwork<_, 32, 96> =
            SimNetwork::new(&clock, SimConfig::ideal(5).with_loss(1000, u32::MAX), 3);
        let (a, _b) = net.endpoints();
        let mut dev: ReliableEndpoint<_, _, 2, 96, 4> = ReliableEndpoint::new(
            a,
            DeviceId::new("dev").unwrap(),
            OverflowPolicy::DropOldest,
            BackoffPolicy::new(10, 20).with_max_attempts(2),
            SplitMix64::new(1),
        );
        let first = dev
            .enqueue(
                MessageKind::Telemetry,
                QoS::AtLeastOnce,
                Priority::Normal,
                b"1",
                0,
            )
            .unwrap();
        let second = dev
            .enqueue(
                MessageKind::Telemetry,
                QoS::AtLeastOnce,
                Priority::Normal,
                b"2",
                0,
            )
            .unwrap();
        dev.enqueue(
            MessageKind::Telemetry,
            QoS::AtLeastOnce,
            Priority::Normal,
            b"3",
            0,
        )
        .unwrap();
        assert_eq!(
            dev.take_lost(),
            Some(Lost {
                id: first,
                kind: None,
                reason: LossReason::Evicted
            })
        );
        assert_eq!(dev.take_lost(), None);
        // Every datagram is lost: both queued messages run out of attempts.
        for _ in 0..200 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            clock.advance(10);
        }
        let expired: std::vec::Vec<Lost> = core::iter::from_fn(|| dev.take_lost()).collect();
        assert_eq!(expired.len(), 2, "{expired:?}");
        assert_eq!(expired[0].id, second);
        assert!(
            expired
                .iter()
                .all(|l| l.reason == LossReason::Expired && l.kind == Some(MessageKind::Telemetry))
        );
    }

    /// A receiver with no room refuses a message: it is not acked, the sender keeps it and
    /// retransmits, and it is taken (once) when room frees up.
    #[test]
    fn a_message_is_acked_only_once_the_receiver_took_it() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5), 3);
        let (mut dev, mut gw) = pair(&net);
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            dev.enqueue(MessageKind::Command, qos, Priority::High, b"c", 0)
                .unwrap();
        }
        let mut taken = std::vec::Vec::new();
        for round in 0..60 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            // The receiver is full for the first 300 ms.
            let room = round >= 30;
            block_on(gw.poll_taking(clock.now_ms(), |e| {
                if room {
                    taken.push(e.qos);
                }
                room
            }))
            .unwrap();
            if round == 29 {
                assert_eq!(dev.outbox().len(), 2, "nothing was acked while refused");
                assert_eq!(gw.stats().acks_sent, 0);
                assert!(gw.stats().refused >= 2);
            }
            clock.advance(10);
        }
        // Each taken once (retransmissions may reorder them).
        assert_eq!(taken.len(), 2);
        assert!(taken.contains(&QoS::AtLeastOnce) && taken.contains(&QoS::ExactlyOnce));
        assert!(dev.outbox().is_empty());
        assert_eq!(gw.stats().delivered, 2);
    }

    #[test]
    fn at_least_once_may_duplicate_exactly_once_does_not() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5).with_duplication(1000), 3);
        let (mut dev, mut gw) = pair(&net);
        dev.enqueue(
            MessageKind::Telemetry,
            QoS::AtLeastOnce,
            Priority::Normal,
            b"1",
            0,
        )
        .unwrap();
        dev.enqueue(
            MessageKind::Telemetry,
            QoS::ExactlyOnce,
            Priority::Normal,
            b"2",
            0,
        )
        .unwrap();
        let mut got = std::vec::Vec::new();
        for _ in 0..20 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            block_on(gw.poll(clock.now_ms(), |e| got.push(e.payload.to_vec()))).unwrap();
            clock.advance(10);
        }
        assert_eq!(got.iter().filter(|p| p.as_slice() == b"1").count(), 2);
        assert_eq!(got.iter().filter(|p| p.as_slice() == b"2").count(), 1);
        assert!(gw.stats().duplicates >= 1);
        assert!(dev.outbox().is_empty());
        assert_eq!(dev.outbox().stats().acked, 2);
    }

    #[test]
    fn outage_holds_messages_until_the_link_returns() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5), 3);
        net.schedule_outage(0, 5_000).unwrap();
        let (mut dev, mut gw) = pair(&net);
        for i in 0..3u8 {
            dev.enqueue(
                MessageKind::Telemetry,
                QoS::ExactlyOnce,
                Priority::Normal,
                &[i],
                0,
            )
            .unwrap();
        }
        let mut got = 0;
        while clock.now_ms() < 6_000 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            block_on(gw.poll(clock.now_ms(), |_| got += 1)).unwrap();
            clock.advance(100);
        }
        assert_eq!(got, 3);
        assert!(dev.outbox().is_empty());
        assert_eq!(
            dev.stats().send_errors,
            0,
            "nothing is sent into a down link"
        );
        // Latency counts from the first transmission: waiting out the outage is not blamed
        // on the link.
        assert_eq!(dev.monitor().totals(), (3, 0));
        assert!(dev.monitor().latency_percentile(50).unwrap() <= 200);
    }

    #[test]
    fn messages_larger_than_the_mtu_travel_in_fragments() {
        let clock = ManualClock::new(0);
        let mut info = SimConfig::ideal(0).info;
        info.mtu = 24;
        let net = SimNetwork::new(
            &clock,
            SimConfig::ideal(5)
                .with_info(info)
                .with_duplication(300)
                .with_jitter(20)
                .with_loss(200, 2),
            3,
        );
        let (mut dev, mut gw) = pair(&net);
        let big = [0xA5u8; 60];
        dev.enqueue(
            MessageKind::OtaProgress,
            QoS::ExactlyOnce,
            Priority::High,
            &big,
            0,
        )
        .unwrap();
        let mut got = std::vec::Vec::new();
        for _ in 0..200 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            block_on(gw.poll(clock.now_ms(), |e| got.push(e.payload.to_vec()))).unwrap();
            clock.advance(10);
        }
        assert_eq!(got, [big.to_vec()]);
        assert!(dev.outbox().is_empty());
        assert!(dev.stats().fragments_sent >= 4);
        assert!(gw.reassembly_stats().completed >= 1);
    }

    fn single_attempt_pair<'a>(net: &'a SimNetwork<&'a ManualClock, 32, 96>) -> (Ep<'a>, Ep<'a>) {
        let (a, b) = net.endpoints();
        // One attempt, no jitter: the ack of that attempt is awaited for 40 ms.
        let retry = BackoffPolicy::new(40, 400)
            .with_max_attempts(1)
            .with_jitter(crate::retry::Jitter::None);
        (
            ReliableEndpoint::new(
                a,
                DeviceId::new("dev").unwrap(),
                OverflowPolicy::RejectNewest,
                retry,
                SplitMix64::new(1),
            ),
            ReliableEndpoint::new(
                b,
                DeviceId::new("gw").unwrap(),
                OverflowPolicy::RejectNewest,
                retry,
                SplitMix64::new(2),
            ),
        )
    }

    #[test]
    fn the_ack_of_the_last_attempt_counts_as_delivered() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5), 3);
        let (mut dev, mut gw) = single_attempt_pair(&net);
        dev.enqueue(
            MessageKind::Telemetry,
            QoS::AtLeastOnce,
            Priority::Normal,
            b"t",
            0,
        )
        .unwrap();
        let mut got = 0;
        for _ in 0..10 {
            block_on(dev.poll(clock.now_ms(), |_| {})).unwrap();
            block_on(gw.poll(clock.now_ms(), |_| got += 1)).unwrap();
            clock.advance(10);
        }
        assert_eq!(got, 1);
        assert_eq!(dev.stats().transmissions, 1, "the only attempt allowed");
        let s = dev.outbox().stats();
        assert_eq!((s.acked, s.expired), (1, 0));
        assert!(dev.outbox().is_empty());
        assert_eq!(dev.monitor().totals(), (1, 0), "delivered, not lost");
    }

    #[test]
    fn an_unacked_last_attempt_is_one_loss_at_its_deadline() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(5).with_loss(1000, u32::MAX), 3);
        let (mut dev, mut gw) = single_attempt_pair(&net);
        dev.enqueue(
            MessageKind::Telemetry,
            QoS::ExactlyOnce,
            Priority::Normal,
            b"t",
            0,
        )
        .unwrap();
        let r = block_on(dev.poll(0, |_| {})).unwrap();
        assert_eq!(r.next_wakeup_ms, Some(40), "wake up at the ack deadline");
        for t in [10, 20, 39] {
            clock.advance_to(t);
            block_on(dev.poll(t, |_| {})).unwrap();
            block_on(gw.poll(t, |_| {})).unwrap();
            assert_eq!(dev.outbox().len(), 1, "still awaiting the ack at {t}");
            assert_eq!(dev.monitor().totals(), (0, 0));
        }
        for t in [40, 50, 500] {
            clock.advance_to(t);
            let r = block_on(dev.poll(t, |_| {})).unwrap();
            assert_eq!(r.next_wakeup_ms, None);
        }
        assert!(dev.outbox().is_empty());
        assert_eq!(dev.outbox().stats().expired, 1);
        assert_eq!(dev.monitor().totals(), (0, 1));
        assert_eq!(dev.stats().transmissions, 1);
    }

    #[test]
    fn garbage_datagrams_are_counted_not_fatal() {
        let clock = ManualClock::new(0);
        let net = SimNetwork::new(&clock, SimConfig::ideal(0), 3);
        let (mut raw, b) = net.endpoints();
        let mut gw: Ep<'_> = ReliableEndpoint::new(
            b,
            DeviceId::new("gw").unwrap(),
            OverflowPolicy::RejectNewest,
            BackoffPolicy::new(10, 10),
            SplitMix64::new(0),
        );
        block_on(raw.send(&[0xFF, 0x00, 0x13])).unwrap();
        let r = block_on(gw.poll(0, |_| panic!("nothing to deliver"))).unwrap();
        assert_eq!(r.received, 1);
        assert_eq!(gw.stats().decode_errors, 1);
    }
}
