//! The device side: one MQTT 5 session per device over `embedded-nal-async` TCP, on
//! [`minimq`]. `no_std`, no allocator, no panics on input.
//!
//! [`DeviceSession`] lives as long as the device runs and owns everything that must survive a
//! reconnect: the MQTT session state, an outbox of unacknowledged QoS 1 envelopes, the window
//! of recently delivered message ids, the backoff and the counters. [`DeviceSession::connect`]
//! makes one connection attempt (after the backoff delay when the previous attempt failed) and
//! returns a [`Link`] that borrows the session while the connection lives:
//!
//! 1. TCP connect and MQTT `CONNECT` (client id = device id), each bounded by
//!    [`DeviceConfig::connect_timeout`];
//! 2. `SUBSCRIBE` to the device's down topic on every connection. On a fresh broker session
//!    (clean start, or the broker lost the session) it waits for the `SUBACK` before anything
//!    is sent, so a clean session never loses the subscription and a request is never sent
//!    before its reply can arrive. On a resumed session the broker still holds the
//!    subscription and may deliver queued messages at once, so the renewal is not waited for;
//! 3. republish every outbox entry the broker has not acknowledged and that minimq will not
//!    replay itself (its session state was discarded because the broker started a fresh
//!    session). A republished envelope keeps its message id; receivers drop the duplicate.
//!
//! ```no_run
//! # use iot_mqtt::device::{DeviceSession, Duration, Tcp};
//! # fn on_envelope(_: &[u8]) {}
//! # fn next_outgoing() -> Option<&'static [u8]> { None }
//! # async fn device_loop<T: iot_mqtt::embedded_nal_async::TcpConnect>(
//! #     session: &mut DeviceSession<'_, 8, 256>,
//! #     stack: &T,
//! # ) {
//! let mut buf = [0u8; 256];
//! let mut tcp = Tcp(stack);
//! loop {
//!     // Waits the backoff delay first when the previous attempt failed.
//!     let Ok(mut link) = session.connect(&mut tcp).await else { continue };
//!     loop {
//!         match link.recv_timeout(&mut buf, Duration::from_secs(1)).await {
//!             Ok(Some(n)) => on_envelope(buf.get(..n).unwrap_or_default()),
//!             Ok(None) => {}
//!             Err(e) if e.is_connection_lost() => break,
//!             Err(_) => {}
//!         }
//!         while let Some(out) = next_outgoing() {
//!             // On a lost connection a QoS 1 envelope stays in the outbox.
//!             if link.send(out).await.is_err() { break; }
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! QoS mapping: [`QoS::AtMostOnce`] envelopes go out as MQTT QoS 0 and are not kept;
//! [`QoS::AtLeastOnce`] and [`QoS::ExactlyOnce`] go out as MQTT QoS 1, are kept in the outbox
//! until the broker's `PUBACK`, and are made exactly-once by the receiver's deduplication on
//! the envelope's message id ([`RecentIds`]).
//!
//! Keepalive: minimq sends `PINGREQ` while the application waits in [`Link::recv`] or
//! [`Link::recv_timeout`], and drops a connection whose `PINGRESP` does not come; call one of
//! them whenever the device is idle.

use core::cell::Cell;
use core::net::SocketAddr;

pub use embassy_time::Duration;
use embassy_time::{Timer, with_timeout};
use embedded_io_async::{Error as _, ErrorKind as IoErrorKind};
use embedded_nal_async::TcpConnect;
use iot_core::error::{Error, ErrorKind};
use iot_core::id::DeviceId;
use iot_core::message::{EnvelopeRef, MessageId, QoS};
use minimq::{
    Buffers, ConfigBuilder, Connection, Op, Publication, SubscriptionOptions, TopicFilter,
};

use crate::dedup::RecentIds;
use crate::topic::{Topic, TopicBuf};

/// Why a device-side operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The MQTT configuration was refused (client id or buffers).
    #[error("invalid MQTT configuration")]
    Config,
    /// A TCP connect or a read or write failed.
    #[error("transport failed: {0:?}")]
    Transport(IoErrorKind),
    /// A connect, a `CONNACK` or a `SUBACK` did not come in time.
    #[error("timed out")]
    Timeout,
    /// The connection is closed; connect again. Unacknowledged QoS 1 envelopes stay queued.
    #[error("connection lost")]
    Disconnected,
    /// The broker refused an operation (MQTT reason code), for example an ACL denial.
    #[error("broker refused with reason code {0:#04x}")]
    Refused(u8),
    /// The broker sent invalid MQTT data.
    #[error("broker sent invalid MQTT data")]
    Protocol,
    /// minimq's buffers or in-flight slots are exhausted; retry after progress.
    #[error("MQTT session buffers are full")]
    Busy,
    /// The outbox of unacknowledged QoS 1 envelopes is full.
    #[error("outbox is full ({capacity} envelopes)")]
    OutboxFull {
        /// The outbox capacity.
        capacity: usize,
    },
    /// An envelope is larger than the configured envelope capacity.
    #[error("envelope is {len} bytes, at most {max} are allowed")]
    EnvelopeTooLarge {
        /// The envelope's length.
        len: usize,
        /// The capacity.
        max: usize,
    },
    /// The bytes to send are not a valid envelope.
    #[error("bytes to send are not a valid envelope")]
    BadEnvelope,
    /// The envelope to send names another device than this session's.
    #[error("envelope names another device than this session")]
    WrongDevice,
    /// The receive buffer is smaller than the envelope capacity.
    #[error("receive buffer is {len} bytes, the envelope capacity is {max}")]
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
        /// The envelope capacity.
        max: usize,
    },
    /// More than one envelope arrived while waiting for the `SUBACK`.
    #[error("more than one envelope arrived before the subscription was acknowledged")]
    InboxFull,
    /// The TLS handshake failed (certificate refused, unsupported parameters, bad key).
    #[error("TLS handshake failed")]
    Tls,
}

impl DeviceError {
    /// Whether the connection is gone and the caller should call [`DeviceSession::connect`].
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Transport(_)
                | Self::Timeout
                | Self::Disconnected
                | Self::Refused(_)
                | Self::Protocol
                | Self::InboxFull
                | Self::Tls
        )
    }
}

impl Error for DeviceError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Config | Self::BadEnvelope | Self::WrongDevice => ErrorKind::InvalidInput,
            Self::Transport(_) | Self::Disconnected | Self::Protocol => ErrorKind::Transport,
            Self::Timeout => ErrorKind::Timeout,
            Self::Refused(_) | Self::Tls => ErrorKind::Unauthorized,
            Self::Busy
            | Self::OutboxFull { .. }
            | Self::EnvelopeTooLarge { .. }
            | Self::BufferTooSmall { .. }
            | Self::InboxFull => ErrorKind::Capacity,
        }
    }
}

fn from_mqtt<E: embedded_io_async::Error>(e: minimq::Error<E>) -> DeviceError {
    match e {
        minimq::Error::Transport(e) => DeviceError::Transport(e.kind()),
        minimq::Error::Disconnected | minimq::Error::WriteZero => DeviceError::Disconnected,
        minimq::Error::Peer(minimq::PeerError::Rejected(code)) => {
            DeviceError::Refused(u8::from(code))
        }
        minimq::Error::NotReady | minimq::Error::Resource(_) => DeviceError::Busy,
        minimq::Error::InvalidRequest => DeviceError::Config,
        _ => DeviceError::Protocol,
    }
}

fn from_pub<P, E: embedded_io_async::Error>(e: minimq::PubError<P, E>) -> DeviceError {
    match e {
        minimq::PubError::Session(e) => from_mqtt(e),
        // The payload is a byte slice that was measured against the buffers before.
        minimq::PubError::Payload(_) => DeviceError::Busy,
    }
}

/// Opens the byte stream a session runs on: plain TCP ([`Tcp`]) or TLS over TCP
/// (`crate::device_tls::TlsTcp`, feature `tls`). It may borrow buffers it owns for as long as
/// the stream lives.
#[allow(async_fn_in_trait)]
pub trait Connector {
    /// The open stream.
    type Io<'a>: embedded_io_async::Read + embedded_io_async::Write
    where
        Self: 'a;

    /// Opens a stream to `remote`.
    async fn open(&mut self, remote: SocketAddr) -> Result<Self::Io<'_>, DeviceError>;
}

/// Plain TCP over any `embedded-nal-async` stack.
#[derive(Debug, Clone, Copy)]
pub struct Tcp<'a, T>(pub &'a T);

impl<T: TcpConnect> Connector for Tcp<'_, T> {
    type Io<'b>
        = T::Connection<'b>
    where
        Self: 'b;

    async fn open(&mut self, remote: SocketAddr) -> Result<Self::Io<'_>, DeviceError> {
        self.0
            .connect(remote)
            .await
            .map_err(|e| DeviceError::Transport(e.kind()))
    }
}

/// Encoded envelopes waiting to be sent, oldest first: an agent's outbound queue, drained
/// by [`Link::send_queued`].
pub trait SendQueue {
    /// The oldest waiting envelope.
    fn front(&self) -> Option<&[u8]>;
    /// Removes the oldest waiting envelope.
    fn pop_front(&mut self);
}

/// What [`Link::send_queued`] did with the queue, added up over calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Envelopes the session took.
    pub sent: u32,
    /// Envelopes the session refused for good and that were dropped.
    pub refused: u32,
}

/// Exponential reconnect backoff: `initial`, doubled after each failed attempt up to `max`,
/// back to zero after a successful connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt number `failures + 1` (no delay before the first attempt).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::from_ticks(0);
        }
        let shift = failures.saturating_sub(1).min(20);
        let factor = 1u64.checked_shl(shift).unwrap_or(u64::MAX);
        let ticks = self.initial.as_ticks().saturating_mul(factor);
        Duration::from_ticks(ticks.min(self.max.as_ticks()))
    }
}

/// What a device session needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The broker's address.
    pub broker: SocketAddr,
    /// This device; also the MQTT client id, which broker ACLs (`%c`) match.
    pub device: DeviceId,
    /// MQTT keepalive in seconds.
    pub keepalive_secs: u16,
    /// How long the broker keeps the session (and queues QoS 1 messages for the device) after
    /// the connection drops.
    pub session_expiry_secs: u32,
    /// Bound on the TCP connect, the `CONNACK` and the `SUBACK`.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
}

impl DeviceConfig {
    /// Defaults for `device` at `broker`: 30 s keepalive, 1 h session expiry, 10 s connect
    /// timeout, backoff 1 s doubling up to 60 s.
    pub const fn new(broker: SocketAddr, device: DeviceId) -> Self {
        Self {
            broker,
            device,
            keepalive_secs: 30,
            session_expiry_secs: 3600,
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }
}

/// Counters of a device session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Connections established (CONNACK and SUBACK received).
    pub connects: u32,
    /// Connection attempts that failed.
    pub connect_failures: u32,
    /// Broker sessions that were resumed (`session present`).
    pub resumed: u32,
    /// Outbox envelopes published again after a reconnect.
    pub republished: u32,
    /// QoS 1 envelopes acknowledged by the broker.
    pub acknowledged: u32,
    /// Envelopes delivered to the application.
    pub delivered: u32,
    /// Repeated envelopes dropped by message id.
    pub duplicates: u32,
    /// Inbound payloads that are not envelopes.
    pub refused_garbage: u32,
    /// Inbound payloads larger than the envelope capacity.
    pub refused_oversized: u32,
    /// Inbound envelopes naming another device.
    pub refused_identity: u32,
    /// Inbound messages on a topic other than this device's down topic.
    pub refused_topic: u32,
}

fn bump(counter: &mut u32) {
    *counter = counter.saturating_add(1);
}

/// Adds one to the counter `field` picks.
fn count(stats: &Cell<DeviceStats>, field: fn(&mut DeviceStats) -> &mut u32) {
    let mut s = stats.get();
    bump(field(&mut s));
    stats.set(s);
}

#[derive(Debug)]
struct Pending<const ENVELOPE: usize> {
    id: MessageId,
    bytes: heapless::Vec<u8, ENVELOPE>,
    op: Option<Op>,
    sent: bool,
}

/// One device's MQTT session, kept across reconnects. See the [module documentation](self).
///
/// - `OUTBOX`: unacknowledged QoS 1 envelopes kept for republishing;
/// - `ENVELOPE`: the largest envelope, in bytes, sent or received;
/// - `DEDUP`: how many recent inbound message ids are remembered.
///
/// The minimq buffers must hold, in `rx`, one inbound packet (`ENVELOPE` plus topic and
/// header, about 80 bytes) and, in `tx`, `OUTBOX` retained QoS 1 packets plus the `CONNECT`.
pub struct DeviceSession<'buf, const OUTBOX: usize, const ENVELOPE: usize, const DEDUP: usize = 16>
{
    mqtt: minimq::Session<'buf>,
    config: DeviceConfig,
    up: TopicBuf,
    down: TopicBuf,
    outbox: heapless::Vec<Pending<ENVELOPE>, OUTBOX>,
    held: Option<heapless::Vec<u8, ENVELOPE>>,
    seen: RecentIds<DEDUP>,
    failures: Cell<u32>,
    stats: Cell<DeviceStats>,
}

impl<'buf, const OUTBOX: usize, const ENVELOPE: usize, const DEDUP: usize>
    DeviceSession<'buf, OUTBOX, ENVELOPE, DEDUP>
{
    /// A session for `config` over caller-provided minimq buffers.
    pub fn new(config: DeviceConfig, buffers: Buffers<'buf>) -> Result<Self, DeviceError> {
        let mqtt_config = ConfigBuilder::new(buffers)
            .client_id(config.device.as_str())
            .map_err(|_| DeviceError::Config)?
            .keepalive_interval(config.keepalive_secs)
            .session_expiry_interval(config.session_expiry_secs);
        Ok(Self {
            mqtt: minimq::Session::new(mqtt_config),
            up: TopicBuf::new(Topic::up(config.device)),
            down: TopicBuf::new(Topic::down(config.device)),
            config,
            outbox: heapless::Vec::new(),
            held: None,
            seen: RecentIds::new(),
            failures: Cell::new(0),
            stats: Cell::new(DeviceStats::default()),
        })
    }

    /// The counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats.get()
    }

    /// QoS 1 envelopes not yet acknowledged by the broker.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.len()
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// Makes one connection attempt (waiting the backoff delay first if the previous attempt
    /// failed), subscribes, and republishes what the broker has not acknowledged.
    ///
    /// `connector` is [`Tcp`] over a network stack, or a TLS connector.
    pub async fn connect<'s, C: Connector>(
        &'s mut self,
        connector: &'s mut C,
    ) -> Result<Link<'s, 'buf, C::Io<'s>, OUTBOX, ENVELOPE, DEDUP>, DeviceError> {
        let delay = self.config.backoff.delay(self.failures.get());
        if delay.as_ticks() > 0 {
            Timer::after(delay).await;
        }
        let config = self.config;
        let Self {
            mqtt,
            up,
            down,
            outbox,
            held,
            seen,
            failures,
            stats,
            ..
        } = self;
        let (failures, stats): (&'s Cell<u32>, &'s Cell<DeviceStats>) = (failures, stats);
        let attempt = async {
            let io = with_timeout(config.connect_timeout, connector.open(config.broker))
                .await
                .map_err(|_| DeviceError::Timeout)??;
            let conn = with_timeout(config.connect_timeout, mqtt.connect(io))
                .await
                .map_err(|_| DeviceError::Timeout)?
                .map_err(from_mqtt)?;
            let mut link = Link {
                conn,
                device: config.device,
                up,
                down,
                outbox,
                held,
                seen,
                stats,
            };
            // A resumed broker session still holds the subscription and may deliver queued
            // messages at once: renew it without waiting, and let `recv` take what comes.
            // A fresh session has no subscription: wait for the SUBACK.
            let resumed = link.conn.connect_event() == minimq::ConnectEvent::Reconnected;
            if resumed {
                count(stats, |s| &mut s.resumed);
            }
            with_timeout(config.connect_timeout, link.subscribe(!resumed))
                .await
                .map_err(|_| DeviceError::Timeout)??;
            link.republish().await?;
            Ok(link)
        };
        match attempt.await {
            Ok(link) => {
                failures.set(0);
                count(stats, |s| &mut s.connects);
                Ok(link)
            }
            Err(e) => {
                failures.set(failures.get().saturating_add(1));
                count(stats, |s| &mut s.connect_failures);
                Err(e)
            }
        }
    }
}

/// A live connection of a [`DeviceSession`]. Dropping it closes the connection without
/// losing unacknowledged envelopes.
pub struct Link<'s, 'buf, IO, const OUTBOX: usize, const ENVELOPE: usize, const DEDUP: usize>
where
    IO: embedded_io_async::Read + embedded_io_async::Write,
{
    conn: Connection<'s, 'buf, IO>,
    device: DeviceId,
    up: &'s TopicBuf,
    down: &'s TopicBuf,
    outbox: &'s mut heapless::Vec<Pending<ENVELOPE>, OUTBOX>,
    held: &'s mut Option<heapless::Vec<u8, ENVELOPE>>,
    seen: &'s mut RecentIds<DEDUP>,
    stats: &'s Cell<DeviceStats>,
}

/// What to do with one inbound publish.
enum Inbound {
    Deliver,
    Drop,
}

impl<IO, const OUTBOX: usize, const ENVELOPE: usize, const DEDUP: usize>
    Link<'_, '_, IO, OUTBOX, ENVELOPE, DEDUP>
where
    IO: embedded_io_async::Read + embedded_io_async::Write,
{
    async fn subscribe(&mut self, wait: bool) -> Result<(), DeviceError> {
        let filter = TopicFilter::new(self.down.as_str())
            .options(SubscriptionOptions::default().maximum_qos(minimq::QoS::AtLeastOnce));
        let op = match self.conn.subscribe(&[filter], &[]).await {
            Ok(op) => op,
            // On a resumed session minimq replays the publishes still in flight; when they
            // take all its slots, the renewal would have to wait for their acknowledgements,
            // which only reading after `connect` brings. The resumed session still holds the
            // subscription, so go on without renewing it (found by the fault campaign: a
            // device whose outbox was full when its connection went half-open never
            // reconnected).
            Err(minimq::Error::Resource(_)) if !wait => return Ok(()),
            Err(e) => return Err(from_mqtt(e)),
        };
        // Bounded by the caller's timeout; each turn consumes one packet from the broker.
        while wait && !self.conn.is_complete(&op) {
            if self.conn.is_invalidated(&op) {
                return Err(DeviceError::Disconnected);
            }
            let inbound = self.conn.poll().await.map_err(from_mqtt)?;
            if let Some(publish) = inbound {
                let topic = publish.topic();
                let payload = publish.payload();
                let mut stats = self.stats.get();
                let verdict = check_inbound(
                    self.device,
                    self.down,
                    self.seen,
                    &mut stats,
                    self.held.is_none(),
                    topic,
                    payload,
                    ENVELOPE,
                );
                self.stats.set(stats);
                if let Inbound::Deliver = verdict? {
                    *self.held = heapless::Vec::from_slice(payload).ok();
                }
            }
        }
        Ok(())
    }

    async fn republish(&mut self) -> Result<(), DeviceError> {
        for entry in self.outbox.iter_mut() {
            let lost = match entry.op {
                None => true,
                Some(op) => self.conn.is_invalidated(&op),
            };
            if !lost {
                // minimq replays it within the resumed session.
                continue;
            }
            let publication = Publication::bytes(self.up.as_str(), entry.bytes.as_slice())
                .qos(minimq::QoS::AtLeastOnce);
            match self.conn.publish(publication).await.map_err(from_pub) {
                Ok(op) => {
                    if entry.sent {
                        count(self.stats, |s| &mut s.republished);
                    }
                    entry.op = op;
                    entry.sent = true;
                }
                // Sent later, once acknowledgements free minimq's slots.
                Err(DeviceError::Busy) => entry.op = None,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn prune(&mut self) {
        let conn = &self.conn;
        let before = self.outbox.len();
        self.outbox
            .retain(|entry| !entry.op.is_some_and(|op| conn.is_complete(&op)));
        let acked = before.saturating_sub(self.outbox.len());
        let mut stats = self.stats.get();
        stats.acknowledged = stats
            .acknowledged
            .saturating_add(u32::try_from(acked).unwrap_or(u32::MAX));
        self.stats.set(stats);
    }

    /// Sends an encoded envelope on this device's up topic. QoS 1 and 2 envelopes are kept
    /// until the broker acknowledges them and republished after a reconnect; on
    /// [`DeviceError::Disconnected`] they stay queued.
    pub async fn send(&mut self, envelope: &[u8]) -> Result<(), DeviceError> {
        if envelope.len() > ENVELOPE {
            return Err(DeviceError::EnvelopeTooLarge {
                len: envelope.len(),
                max: ENVELOPE,
            });
        }
        let parsed = EnvelopeRef::decode(envelope).map_err(|_| DeviceError::BadEnvelope)?;
        if parsed.device != self.device {
            return Err(DeviceError::WrongDevice);
        }
        self.prune();
        if parsed.qos == QoS::AtMostOnce {
            let publication = Publication::bytes(self.up.as_str(), envelope);
            self.conn.publish(publication).await.map_err(from_pub)?;
            return Ok(());
        }
        let bytes =
            heapless::Vec::from_slice(envelope).map_err(|_| DeviceError::EnvelopeTooLarge {
                len: envelope.len(),
                max: ENVELOPE,
            })?;
        self.outbox
            .push(Pending {
                id: parsed.id,
                bytes,
                op: None,
                sent: false,
            })
            .map_err(|_| DeviceError::OutboxFull { capacity: OUTBOX })?;
        self.republish().await
    }

    /// Whether the envelope with message id `id` is still waiting for the broker's `PUBACK`.
    pub fn is_unacknowledged(&self, id: MessageId) -> bool {
        self.outbox.iter().any(|entry| entry.id == id)
    }

    /// Hands the envelopes waiting in `queue` to the session, oldest first, with
    /// [`Link::send`]. An envelope leaves the queue once the session took it (a QoS 1 one
    /// then stays in the session's outbox until acknowledged, also when sending it failed) or
    /// refused it for good (too large, not an envelope, another device's: counted in
    /// [`Flushed::refused`]). Stops, keeping the rest queued, when the session's outbox or
    /// minimq's in-flight slots are full: call again after the broker acknowledged something.
    /// An error means the connection is lost; what is still queued goes on the next one.
    pub async fn send_queued<Q: SendQueue + ?Sized>(
        &mut self,
        queue: &mut Q,
        flushed: &mut Flushed,
    ) -> Result<(), DeviceError> {
        while let Some(front) = queue.front() {
            let id = EnvelopeRef::decode(front).map(|e| e.id).ok();
            match self.send(front).await {
                Ok(()) => {
                    queue.pop_front();
                    bump(&mut flushed.sent);
                }
                // Taken into the session's outbox: it is republished from there.
                Err(e) if id.is_some_and(|id| self.is_unacknowledged(id)) => {
                    queue.pop_front();
                    bump(&mut flushed.sent);
                    return if e.is_connection_lost() {
                        Err(e)
                    } else {
                        Ok(())
                    };
                }
                Err(DeviceError::OutboxFull { .. } | DeviceError::Busy) => return Ok(()),
                Err(e) if e.is_connection_lost() => return Err(e),
                Err(_) => {
                    queue.pop_front();
                    bump(&mut flushed.refused);
                }
            }
        }
        Ok(())
    }

    /// Waits for the next envelope on this device's down topic and copies it into `buf`
    /// (at least `ENVELOPE` bytes), returning its length. Repeats, garbage, oversized payloads
    /// and envelopes naming another device are dropped and counted. Keeps the connection alive
    /// while waiting; cancel-safe (a cancelled send may be sent twice, never lost).
    pub async fn recv(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
        if buf.len() < ENVELOPE {
            return Err(DeviceError::BufferTooSmall {
                len: buf.len(),
                max: ENVELOPE,
            });
        }
        if let Some(held) = self.held.take() {
            return copy_out(buf, &held);
        }
        // Each turn consumes one inbound packet; the caller bounds the wait.
        loop {
            self.prune();
            self.republish().await?;
            let publish = self.conn.recv().await.map_err(from_mqtt)?;
            let topic = publish.topic();
            let payload = publish.payload();
            let mut stats = self.stats.get();
            let verdict = check_inbound(
                self.device,
                self.down,
                self.seen,
                &mut stats,
                true,
                topic,
                payload,
                ENVELOPE,
            );
            self.stats.set(stats);
            if let Inbound::Deliver = verdict? {
                return copy_out(buf, payload);
            }
        }
    }

    /// [`Link::recv`] bounded by `timeout`: `Ok(None)` when nothing arrived in time.
    pub async fn recv_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<usize>, DeviceError> {
        match with_timeout(timeout, self.recv(buf)).await {
            Ok(result) => result.map(Some),
            Err(_) => {
                self.prune();
                Ok(None)
            }
        }
    }

    /// Sends `DISCONNECT` and closes the connection; the broker keeps the session for
    /// [`DeviceConfig::session_expiry_secs`].
    pub async fn disconnect(mut self) -> Result<(), DeviceError> {
        self.conn.disconnect().await.map_err(from_mqtt)
    }
}

fn copy_out(buf: &mut [u8], payload: &[u8]) -> Result<usize, DeviceError> {
    let len = buf.len();
    let dst = buf
        .get_mut(..payload.len())
        .ok_or(DeviceError::BufferTooSmall {
            len,
            max: payload.len(),
        })?;
    dst.copy_from_slice(payload);
    Ok(payload.len())
}

#[allow(clippy::too_many_arguments)]
fn check_inbound<const DEDUP: usize>(
    device: DeviceId,
    down: &TopicBuf,
    seen: &mut RecentIds<DEDUP>,
    stats: &mut DeviceStats,
    room: bool,
    topic: &str,
    payload: &[u8],
    capacity: usize,
) -> Result<Inbound, DeviceError> {
    if topic != down.as_str() {
        bump(&mut stats.refused_topic);
        return Ok(Inbound::Drop);
    }
    if payload.len() > capacity {
        bump(&mut stats.refused_oversized);
        return Ok(Inbound::Drop);
    }
    let Ok(envelope) = EnvelopeRef::decode(payload) else {
        bump(&mut stats.refused_garbage);
        return Ok(Inbound::Drop);
    };
    if envelope.device != device {
        bump(&mut stats.refused_identity);
        return Ok(Inbound::Drop);
    }
    if !room {
        return Err(DeviceError::InboxFull);
    }
    if !seen.first_time(envelope.id) {
        bump(&mut stats.duplicates);
        return Ok(Inbound::Drop);
    }
    bump(&mut stats.delivered);
    Ok(Inbound::Deliver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_never_overflows() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_ticks(0));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn connection_loss_is_told_apart_from_local_limits() {
        assert!(DeviceError::Disconnected.is_connection_lost());
        assert!(!DeviceError::OutboxFull { capacity: 1 }.is_connection_lost());
        assert_eq!(DeviceError::Refused(0x87).kind(), ErrorKind::Unauthorized);
        assert_eq!(DeviceError::Busy.kind(), ErrorKind::Capacity);
    }

    #[test]
    fn inbound_checks_count_each_refusal() {
        let device = DeviceId::new("d-1").unwrap();
        let down = TopicBuf::new(Topic::down(device));
        let mut seen = RecentIds::<4>::new();
        let mut stats = DeviceStats::default();
        let env = EnvelopeRef {
            device,
            seq: 1,
            id: MessageId(9),
            qos: QoS::AtLeastOnce,
            kind: iot_core::message::MessageKind::Command,
            payload: &[1],
        };
        let mut buf = [0u8; 64];
        let n = env.encode_into(&mut buf).unwrap();
        let bytes = &buf[..n];
        let mut check = |topic: &str, payload: &[u8], cap: usize| {
            check_inbound(
                device, &down, &mut seen, &mut stats, true, topic, payload, cap,
            )
        };
        assert!(matches!(
            check("iot/d-1/down", bytes, 64),
            Ok(Inbound::Deliver)
        ));
        assert!(matches!(
            check("iot/d-1/down", bytes, 64),
            Ok(Inbound::Drop)
        ));
        assert!(matches!(
            check("iot/d-2/down", bytes, 64),
            Ok(Inbound::Drop)
        ));
        assert!(matches!(
            check("iot/d-1/down", &[0xff, 0], 64),
            Ok(Inbound::Drop)
        ));
        assert!(matches!(check("iot/d-1/down", bytes, 2), Ok(Inbound::Drop)));
        let other = EnvelopeRef {
            device: DeviceId::new("d-2").unwrap(),
            ..env
        };
        let mut obuf = [0u8; 64];
        let on = other.encode_into(&mut obuf).unwrap();
        assert!(matches!(
            check("iot/d-1/down", &obuf[..on], 64),
            Ok(Inbound::Drop)
        ));
        assert_eq!(
            stats,
            DeviceStats {
                delivered: 1,
                duplicates: 1,
                refused_topic: 1,
                refused_garbage: 1,
                refused_oversized: 1,
                refused_identity: 1,
                ..DeviceStats::default()
            }
        );
    }
}
