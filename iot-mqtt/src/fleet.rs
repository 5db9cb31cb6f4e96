//! The fleet backend behind the bridge: [`FleetBackend`] is an [`EnvelopeHandler`] that
//! answers devices with `iot-fleet`'s [`DeviceServer`], and the handle through which operator
//! actions and rollouts reach devices.
//!
//! For each envelope the [`Bridge`](crate::bridge::Bridge) hands it, the backend
//!
//! 1. builds the [`Session`] from the device id of the topic (see *Identity* below);
//! 2. calls [`DeviceServer::handle`] at [`FleetBackend::now_ms`];
//! 3. wraps the server's replies into envelopes for that device's down topic: message ids
//!    from a per-device counter, QoS from [`Reply::qos`](iot_protocol::Downlink::qos);
//! 4. reports what the server leaves to the application (telemetry, command acks, health,
//!    OTA progress: [`Handled::Unhandled`]) and every refusal as a [`FleetEvent`].
//!
//! Messages the backend starts (an operator's [`DeviceServer::set_desired`], a command, the
//! jobs of [`DeviceServer::poll_ota`]) go out with [`FleetBackend::send`] and
//! [`FleetBackend::poll_ota`] over the bridge's [`Downlink`], numbered by the same counter.
//!
//! # Identity
//!
//! The bridge has no connection per device: every device's messages arrive on its one
//! subscription. A device's [`Session`] is therefore the statement "what the broker accepted
//! on `iot/{device}/up`", with a session id fixed per device for the life of the backend
//! process (a registration challenge can be answered after a reconnect). What that trusts
//! depends on the deployment (see [`crate::bridge`]):
//!
//! | | broker with TLS client certificates and `pattern` ACLs | embedded broker, or a broker without ACLs |
//! |---|---|---|
//! | a message on `iot/d/up` comes from | the holder of `d`'s certificate | anyone who reached the broker |
//! | the session the server sees | `d`, authenticated by the broker | `d`, as claimed by the topic |
//! | an envelope naming another device | refused by the bridge, and by the server | refused by the bridge, and by the server |
//! | what still protects the fleet | the broker and the registration proof | the registration proof only: an impostor cannot register without the device secret, but can send heartbeats, telemetry and shadow writes for a registered device |
//!
//! # Sharing the server
//!
//! The server sits behind an `Arc<Mutex<..>>`. [`DeviceServer::handle`] is synchronous and
//! short (no I/O, no `.await` while the lock is held), the bridge has one handler task, and
//! operator calls ([`FleetBackend::with_server`]) are rare: a lock costs less than a hop
//! through a channel to a task that owns the server, and operator code gets the server's
//! whole API without a message type per action. A poisoned lock (a panic in operator code)
//! is taken over rather than propagated: the server's methods leave it consistent after
//! every call.
//!
//! # Durable backend
//!
//! With feature `durable`, [`FleetBackend::new`] also takes an `iot-fleet`
//! `DurableServer` (SQLite or PostgreSQL through
//! `iot-store`): a device's message is handled, its changes are committed, and only then are
//! the replies published and the message acknowledged to the broker. A message whose changes
//! could not be committed is answered with nothing and reported as
//! `FleetEvent::NotDurable`; the durable server then stops acknowledging anything until it is
//! reopened from its store (a process restart, or
//! `DurableServer::restart` through
//! [`FleetBackend::with_server`]). A node opened with `DurableServer::open_shared` (several
//! nodes on one database) reports another node's change as `NotDurable` with
//! `DurableError::Conflict` and goes on: it read the records again, and the device's next
//! send of the message is served from them. Devices carry on across such a restart: their records,
//! shadows and rollouts come back from the store, so they need not register again, and
//! the message ids of the restarted backend's replies do not repeat (below). Operator actions
//! go through [`FleetBackend::with_server`], which hands out the `DurableServer` itself, so
//! every change an operator makes is committed before its message to a device can be sent.
//!
//! Message ids: each device's counter starts at the low 32 bits of the clock (ms) when the
//! backend first speaks to it, so a restarted backend does not reuse the ids a device has
//! just seen and deduplicates.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use std::vec::Vec;

use iot_core::id::DeviceId;
use iot_core::message::EnvelopeRef;
use iot_core::message::{Envelope, MessageId, MessageKind, OwnedEnvelope};
use iot_fleet::{DeviceServer, Handled, Reply, ServerError, Session};
use tokio::sync::{mpsc, watch};

use crate::bridge::{BridgeError, Downlink, EnvelopeHandler};

/// Milliseconds since the Unix epoch: the default clock of the backend.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why an [`Engine`] did not handle a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineError {
    /// The server refused it; nothing changed.
    Refused(ServerError),
    /// The durable server could not commit what it changed: nothing was acknowledged.
    #[cfg(feature = "durable")]
    NotDurable(iot_fleet::durable::DurableError),
}

/// The server a [`FleetBackend`] serves: [`DeviceServer`] (state in memory) or, with feature
/// `durable`, `iot_fleet::durable::DurableServer` (state in a store, acknowledged once
/// durable).
pub trait Engine: Send + 'static {
    /// The server's state, for reads.
    fn server(&self) -> &DeviceServer;
    /// Handles one device message; `Ok` only once the server's changes are kept.
    fn handle(
        &mut self,
        session: &Session,
        envelope: &EnvelopeRef<'_>,
        now_ms: u64,
    ) -> Result<Handled, EngineError>;
    /// The OTA jobs due at `now_ms`.
    fn poll_ota(&mut self, now_ms: u64) -> Vec<(DeviceId, Reply)>;
}

impl Engine for DeviceServer {
    fn server(&self) -> &DeviceServer {
        self
    }

    fn handle(
        &mut self,
        session: &Session,
        envelope: &EnvelopeRef<'_>,
        now_ms: u64,
    ) -> Result<Handled, EngineError> {
        DeviceServer::handle(self, session, envelope, now_ms).map_err(EngineError::Refused)
    }

    fn poll_ota(&mut self, now_ms: u64) -> Vec<(DeviceId, Reply)> {
        DeviceServer::poll_ota(self, now_ms)
    }
}

#[cfg(feature = "durable")]
impl Engine for iot_fleet::durable::DurableServer {
    fn server(&self) -> &DeviceServer {
        iot_fleet::durable::DurableServer::server(self)
    }

    fn handle(
        &mut self,
        session: &Session,
        envelope: &EnvelopeRef<'_>,
        now_ms: u64,
    ) -> Result<Handled, EngineError> {
        use iot_fleet::durable::DurableError;
        iot_fleet::durable::DurableServer::handle(self, session, envelope, now_ms).map_err(|e| {
            match e {
                DurableError::Server(refused) => EngineError::Refused(refused),
                other => EngineError::NotDurable(other),
            }
        })
    }

    fn poll_ota(&mut self, now_ms: u64) -> Vec<(DeviceId, Reply)> {
        iot_fleet::durable::DurableServer::poll_ota(self, now_ms)
    }
}

/// What the backend reports to the application.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FleetEvent {
    /// A valid message of a registered device that the server leaves to the application
    /// (telemetry, health, command acks, OTA progress, decommissioning records).
    Unhandled {
        /// The device (from the topic).
        device: DeviceId,
        /// The envelope.
        envelope: OwnedEnvelope,
    },
    /// The server refused a message; nothing changed.
    Refused {
        /// The device (from the topic).
        device: DeviceId,
        /// The refused message's kind.
        kind: MessageKind,
        /// Why.
        error: ServerError,
    },
    /// The durable server could not commit what the message changed: it was answered with
    /// nothing, and the server acknowledges nothing more until it is reopened from its store
    /// (except after `DurableError::Conflict` on a shared node, which goes on).
    #[cfg(feature = "durable")]
    NotDurable {
        /// The device (from the topic).
        device: DeviceId,
        /// The message's kind.
        kind: MessageKind,
        /// Why.
        error: iot_fleet::durable::DurableError,
    },
}

/// A snapshot of the backend's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Envelopes the server acted on.
    pub handled: u64,
    /// Envelopes left to the application ([`FleetEvent::Unhandled`]).
    pub unhandled: u64,
    /// Envelopes the server refused ([`FleetEvent::Refused`]).
    pub refused: u64,
    /// Replies and operator messages wrapped into envelopes for devices.
    pub downlinks: u64,
    /// Envelopes the durable server could not commit (`FleetEvent::NotDurable`, feature
    /// `durable`).
    pub not_durable: u64,
    /// Events dropped because the application's event queue was full or closed.
    pub events_dropped: u64,
}

/// Per-device state of the binding.
#[derive(Debug, Clone, Copy)]
struct Peer {
    session: u64,
    next_id: u32,
}

struct Inner<E> {
    server: E,
    peers: HashMap<DeviceId, Peer>,
    next_session: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    unhandled: AtomicU64,
    refused: AtomicU64,
    not_durable: AtomicU64,
    downlinks: AtomicU64,
    events_dropped: AtomicU64,
}

type Clock = dyn Fn() -> u64 + Send + Sync;

/// A [`DeviceServer`] (or another [`Engine`]) served over MQTT. Cheap to clone: clones share
/// the server. Give one clone to [`Bridge::spawn`](crate::bridge::Bridge::spawn) and keep one
/// for operator actions. See the [module documentation](self).
pub struct FleetBackend<E = DeviceServer> {
    inner: Arc<Mutex<Inner<E>>>,
    clock: Arc<Clock>,
    /// Shared by all clones, so a queue set after cloning reaches the bridge's clone too.
    events: Arc<Mutex<Option<mpsc::Sender<FleetEvent>>>>,
    counters: Arc<Counters>,
    changed: Arc<watch::Sender<()>>,
}

impl<E> Clone for FleetBackend<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            clock: self.clock.clone(),
            events: self.events.clone(),
            counters: self.counters.clone(),
            changed: self.changed.clone(),
        }
    }
}

impl<E: Engine> core::fmt::Debug for FleetBackend<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FleetBackend")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl<E: Engine> FleetBackend<E> {
    /// Serves `server` on the system clock ([`unix_ms`]), without an event queue.
    pub fn new(server: E) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                server,
                peers: HashMap::new(),
                next_session: 1,
            })),
            clock: Arc::new(unix_ms),
            events: Arc::default(),
            counters: Arc::default(),
            changed: Arc::new(watch::Sender::new(())),
        }
    }

    /// Uses `clock` (milliseconds) for the server's `now_ms`; devices' shadow stamps must be
    /// within the fleet's drift bound of it.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Reports [`FleetEvent`]s into a queue of `capacity` events; returns its receiving end.
    /// Events that find the queue full are dropped and counted
    /// ([`FleetCounts::events_dropped`]), so a slow application never stalls the bridge.
    /// Replaces the queue of an earlier call, for every clone of this backend.
    pub fn events(&self, capacity: usize) -> mpsc::Receiver<FleetEvent> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        *self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        rx
    }

    /// The backend's clock now.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The counters.
    pub fn counts(&self) -> FleetCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FleetCounts {
            handled: get(&self.counters.handled),
            unhandled: get(&self.counters.unhandled),
            refused: get(&self.counters.refused),
            not_durable: get(&self.counters.not_durable),
            downlinks: get(&self.counters.downlinks),
            events_dropped: get(&self.counters.events_dropped),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<E>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the server (operator actions, queries): the [`DeviceServer`], or the
    /// durable server whose actions commit before they return. Do not block inside: devices'
    /// messages wait meanwhile.
    pub fn with_server<R>(&self, f: impl FnOnce(&mut E) -> R) -> R {
        let result = f(&mut self.lock().server);
        self.changed.send_replace(());
        result
    }

    /// Takes the server back (to shut a durable server down, or to hand it to another
    /// binding) when this is the last clone of the backend; otherwise returns the backend.
    /// [`Bridge::shutdown`](crate::bridge::Bridge::shutdown) drops the bridge's clone.
    pub fn into_server(self) -> Result<E, Self> {
        let Self {
            inner,
            clock,
            events,
            counters,
            changed,
        } = self;
        match Arc::try_unwrap(inner) {
            Ok(inner) => Ok(inner
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .server),
            Err(inner) => Err(Self {
                inner,
                clock,
                events,
                counters,
                changed,
            }),
        }
    }

    /// Waits until `done` holds for the server, checking after every message the backend
    /// handles and every [`FleetBackend::with_server`] call. Never returns if it never holds:
    /// bound it with a timeout.
    pub async fn wait_until(&self, mut done: impl FnMut(&DeviceServer) -> bool) {
        // Subscribed before checking, so no change between the two is missed.
        let mut changes = self.changed.subscribe();
        loop {
            if done(self.lock().server.server()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn peer(inner: &mut Inner<E>, device: DeviceId, now_ms: u64) -> &mut Peer {
        let Inner {
            peers,
            next_session,
            ..
        } = inner;
        peers.entry(device).or_insert_with(|| {
            let session = *next_session;
            *next_session = next_session.saturating_add(1);
            Peer {
                session,
                // Truncation intended: the low bits of the clock seed the counter.
                next_id: (now_ms & u64::from(u32::MAX)) as u32,
            }
        })
    }

    fn wrap(
        inner: &mut Inner<E>,
        device: DeviceId,
        replies: Vec<Reply>,
        now_ms: u64,
    ) -> Vec<OwnedEnvelope> {
        let peer = Self::peer(inner, device, now_ms);
        replies
            .into_iter()
            .map(|reply| {
                let id = peer.next_id;
                peer.next_id = peer.next_id.wrapping_add(1);
                Envelope {
                    device,
                    seq: id,
                    id: MessageId(id),
                    qos: reply.qos(),
                    kind: reply.kind(),
                    payload: reply.to_vec(),
                }
            })
            .collect()
    }

    /// Wraps messages for `device` into envelopes numbered by its counter.
    pub fn envelopes(&self, device: DeviceId, replies: Vec<Reply>) -> Vec<OwnedEnvelope> {
        let now = self.now_ms();
        let envelopes = Self::wrap(&mut self.lock(), device, replies, now);
        self.bump(&self.counters.downlinks, envelopes.len());
        envelopes
    }

    /// Sends messages to `device` on its down topic; returns how many went out.
    pub async fn send(
        &self,
        downlink: &Downlink,
        device: DeviceId,
        messages: Vec<Reply>,
    ) -> Result<usize, BridgeError> {
        let envelopes = self.envelopes(device, messages);
        for envelope in &envelopes {
            downlink.send(envelope).await?;
        }
        Ok(envelopes.len())
    }

    /// Sends the OTA jobs due at the backend's clock now ([`DeviceServer::poll_ota`]);
    /// returns how many went out. Call it periodically, and after starting a rollout.
    pub async fn poll_ota(&self, downlink: &Downlink) -> Result<usize, BridgeError> {
        let now = self.now_ms();
        let jobs = {
            let mut inner = self.lock();
            let due = inner.server.poll_ota(now);
            due.into_iter()
                .flat_map(|(device, job)| Self::wrap(&mut inner, device, std::vec![job], now))
                .collect::<Vec<_>>()
        };
        self.changed.send_replace(());
        self.bump(&self.counters.downlinks, jobs.len());
        for envelope in &jobs {
            downlink.send(envelope).await?;
        }
        Ok(jobs.len())
    }

    fn bump(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn report(&self, event: FleetEvent) {
        let events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(events) = events.as_ref()
            && events.try_send(event).is_err()
        {
            self.bump(&self.counters.events_dropped, 1);
        }
    }

    /// Handles one envelope from `device` (the broker-authenticated topic identity) at the
    /// backend's clock; returns the envelopes to send back to it.
    pub fn handle_envelope(
        &self,
        device: DeviceId,
        envelope: &OwnedEnvelope,
    ) -> Vec<OwnedEnvelope> {
        let now = self.now_ms();
        let outcome = {
            let mut inner = self.lock();
            // A refused message leaves no trace: the device's entry is made only once the
            // server accepted something from it (with the session id it would get now).
            let session_id = inner
                .peers
                .get(&device)
                .map_or(inner.next_session, |peer| peer.session);
            let session = Session::authenticated(device, session_id);
            match inner.server.handle(&session, &envelope.as_ref(), now) {
                Ok(Handled::Replies(replies)) => Ok(Self::wrap(&mut inner, device, replies, now)),
                Ok(Handled::Unhandled) => {
                    Self::peer(&mut inner, device, now);
                    Err(None)
                }
                Err(error) => Err(Some(error)),
            }
        };
        self.changed.send_replace(());
        match outcome {
            Ok(replies) => {
                self.bump(&self.counters.handled, 1);
                self.bump(&self.counters.downlinks, replies.len());
                replies
            }
            Err(None) => {
                self.bump(&self.counters.unhandled, 1);
                self.report(FleetEvent::Unhandled {
                    device,
                    envelope: envelope.clone(),
                });
                Vec::new()
            }
            Err(Some(EngineError::Refused(error))) => {
                self.bump(&self.counters.refused, 1);
                self.report(FleetEvent::Refused {
                    device,
                    kind: envelope.kind,
                    error,
                });
                Vec::new()
            }
            #[cfg(feature = "durable")]
            Err(Some(EngineError::NotDurable(error))) => {
                self.bump(&self.counters.not_durable, 1);
                self.report(FleetEvent::NotDurable {
                    device,
                    kind: envelope.kind,
                    error,
                });
                Vec::new()
            }
        }
    }
}

impl<E: Engine> EnvelopeHandler for FleetBackend<E> {
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send {
        let replies = self.handle_envelope(device, &envelope);
        async move { replies }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::id::TenantId;
    use iot_core::message::QoS;
    use iot_fleet::{Fleet, ManufacturingRecord, Principal, Role, Scope};
    use iot_lifecycle::command::{Command, CommandKind};

    fn backend(devices: &[DeviceId]) -> FleetBackend {
        let admin = Principal::new(
            "ops",
            TenantId::new("t").unwrap(),
            Scope::root(),
            Role::Admin,
        );
        let mut fleet = Fleet::default();
        let records = devices
            .iter()
            .zip(1u64..)
            .map(|(id, serial)| ManufacturingRecord {
                device_id: *id,
                secret: [7; 32],
                sku: "S".into(),
                serial,
            })
            .collect();
        fleet
            .import_manufacturing(&admin, &"site".parse().unwrap(), records, 0)
            .unwrap();
        let server = DeviceServer::with_os_rng(
            fleet,
            iot_lifecycle::config::DeviceConfig::DEFAULT,
            iot_core::NodeId(1),
        );
        FleetBackend::new(server).with_clock(|| 1_000)
    }

    fn heartbeat(device: DeviceId, payload: Vec<u8>) -> OwnedEnvelope {
        Envelope {
            device,
            seq: 1,
            id: MessageId(1),
            qos: QoS::AtMostOnce,
            kind: MessageKind::Heartbeat,
            payload,
        }
    }

    #[test]
    fn a_refused_message_is_reported_and_answered_with_nothing() {
        let known = DeviceId::new("known").unwrap();
        let stranger = DeviceId::new("stranger").unwrap();
        let backend = backend(&[known]);
        let mut events = backend.events(8);
        // An unknown device, and an envelope naming another device than the topic's.
        assert!(
            backend
                .handle_envelope(stranger, &heartbeat(stranger, Vec::new()))
                .is_empty()
        );
        assert!(
            backend
                .handle_envelope(known, &heartbeat(stranger, Vec::new()))
                .is_empty()
        );
        let mut refusals = Vec::new();
        while let Ok(event) = events.try_recv() {
            refusals.push(event);
        }
        assert!(
            matches!(
                refusals.as_slice(),
                [
                    FleetEvent::Refused { device: a, kind: MessageKind::Heartbeat, .. },
                    FleetEvent::Refused {
                        device: b,
                        error: ServerError::IdentityMismatch { .. },
                        ..
                    },
                ] if *a == stranger && *b == known
            ),
            "{refusals:?}"
        );
        assert_eq!(backend.counts().refused, 2);
        assert_eq!(backend.counts().handled, 0);
        assert!(
            backend.lock().peers.is_empty(),
            "refusals leave no state behind"
        );
    }

    #[test]
    fn a_full_event_queue_drops_and_counts_instead_of_blocking() {
        let stranger = DeviceId::new("stranger").unwrap();
        let backend = backend(&[]);
        let _events = backend.events(1);
        for _ in 0..3 {
            backend.handle_envelope(stranger, &heartbeat(stranger, Vec::new()));
        }
        assert_eq!(backend.counts().events_dropped, 2);
    }

    #[test]
    fn messages_to_a_device_are_numbered_in_sequence_with_the_protocols_qos() {
        let device = DeviceId::new("d").unwrap();
        let backend = backend(&[device]);
        let command = |id| {
            Reply::Command(Command::new(
                id,
                0,
                Command::NEVER_EXPIRES,
                CommandKind::Diagnostics,
            ))
        };
        let first = backend.envelopes(device, std::vec![command(1), command(2)]);
        let second = backend.envelopes(device, std::vec![command(3)]);
        let ids: Vec<u32> = first.iter().chain(&second).map(|e| e.id.0).collect();
        assert_eq!(ids, [1_000, 1_001, 1_002]);
        for envelope in first.iter().chain(&second) {
            assert_eq!(envelope.device, device);
            assert_eq!(envelope.kind, MessageKind::Command);
            assert_eq!(envelope.qos, iot_protocol::qos(MessageKind::Command));
        }
        // Another device has its own counter.
        let other = DeviceId::new("e").unwrap();
        assert_eq!(
            backend.envelopes(other, std::vec![command(4)])[0].id.0,
            1_000
        );
    }
}
