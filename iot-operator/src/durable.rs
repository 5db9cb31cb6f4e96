//! A [`DurableServer`] (iot-fleet over an iot-store database: SQLite by default) served over
//! MQTT: the bridge hands it each device envelope, and a reply goes back only once what the
//! message changed is in the store. The same value is the API's [`Engine`]: operator
//! actions are made durable before the API answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use iot_core::message::{Envelope, OwnedEnvelope};
use iot_core::{DeviceId, MessageId};
use iot_fleet::durable::DurableServer;
use iot_fleet::{DeviceServer, Handled, Reply, Session};
use iot_mqtt::bridge::{BridgeError, Downlink, EnvelopeHandler};
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineError, StoredAudit, StoredEntry, TrafficCounts, unix_ms};

/// A device message the server left to the application (telemetry, acks...).
#[derive(Debug, Clone)]
pub struct Unhandled {
    /// The broker-authenticated device.
    pub device: DeviceId,
    /// Its envelope.
    pub envelope: OwnedEnvelope,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    session: u64,
    next_id: u32,
}

struct Inner {
    server: DurableServer,
    peers: HashMap<DeviceId, Peer>,
    next_session: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    unhandled: AtomicU64,
    refused: AtomicU64,
    downlinks: AtomicU64,
    dropped: AtomicU64,
    refusals: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The durable backend. Cheap to clone: clones share the server.
#[derive(Clone)]
pub struct DurableBackend {
    inner: Arc<Mutex<Inner>>,
    events: Arc<Mutex<Option<mpsc::Sender<Unhandled>>>>,
    counters: Arc<Counters>,
}

impl core::fmt::Debug for DurableBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DurableBackend").finish_non_exhaustive()
    }
}

fn bump(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

impl DurableBackend {
    /// Serves `server` on the system clock.
    pub fn new(server: DurableServer) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                server,
                peers: HashMap::new(),
                next_session: 1,
            })),
            events: Arc::default(),
            counters: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Messages the server leaves to the application go to a queue of `capacity`; those
    /// that find it full are dropped and counted.
    pub fn events(&self, capacity: usize) -> mpsc::Receiver<Unhandled> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        *self.events.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }

    /// Device messages refused so far, by cause (the error's kind).
    pub fn refusals_by_cause(&self) -> Vec<(String, u64)> {
        let refusals = self
            .counters
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        refusals.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Runs `f` on the durable server itself (setup, shutdown checks).
    pub fn with_durable<R>(&self, f: impl FnOnce(&mut DurableServer) -> R) -> R {
        f(&mut self.lock().server)
    }

    fn wrap(
        inner: &mut Inner,
        device: DeviceId,
        replies: Vec<Reply>,
        now_ms: u64,
    ) -> Vec<OwnedEnvelope> {
        let Inner {
            peers,
            next_session,
            ..
        } = inner;
        let peer = peers.entry(device).or_insert_with(|| {
            let session = *next_session;
            *next_session = next_session.saturating_add(1);
            // Truncation intended: the low bits of the clock seed the counter.
            Peer {
                session,
                next_id: (now_ms & u64::from(u32::MAX)) as u32,
            }
        });
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

    /// Handles one envelope from `device` (the broker-authenticated identity); returns the
    /// envelopes to send back, once the store has what it changed.
    pub fn handle_envelope(
        &self,
        device: DeviceId,
        envelope: &OwnedEnvelope,
    ) -> Vec<OwnedEnvelope> {
        let now = unix_ms();
        let mut inner = self.lock();
        let session_id = inner
            .peers
            .get(&device)
            .map_or(inner.next_session, |p| p.session);
        let session = Session::authenticated(device, session_id);
        match inner.server.handle(&session, &envelope.as_ref(), now) {
            Ok(Handled::Replies(replies)) => {
                let out = Self::wrap(&mut inner, device, replies, now);
                bump(&self.counters.handled, 1);
                bump(&self.counters.downlinks, out.len());
                out
            }
            Ok(Handled::Unhandled) => {
                Self::wrap(&mut inner, device, Vec::new(), now);
                drop(inner);
                bump(&self.counters.unhandled, 1);
                let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(tx) = events.as_ref()
                    && tx
                        .try_send(Unhandled {
                            device,
                            envelope: envelope.clone(),
                        })
                        .is_err()
                {
                    bump(&self.counters.dropped, 1);
                }
                Vec::new()
            }
            Err(e) => {
                drop(inner);
                bump(&self.counters.refused, 1);
                let cause = match &e {
                    iot_fleet::durable::DurableError::Server(s) => {
                        iot_core::Error::kind(s).to_string()
                    }
                    other => format!("{other}"),
                };
                let mut refusals = self
                    .counters
                    .refusals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let n = refusals.entry(cause).or_default();
                *n = n.saturating_add(1);
                Vec::new()
            }
        }
    }

    /// Wraps messages for `device` into envelopes and sends them on its down topic.
    pub async fn send(
        &self,
        downlink: &Downlink,
        device: DeviceId,
        messages: Vec<Reply>,
    ) -> Result<usize, BridgeError> {
        let envelopes = Self::wrap(&mut self.lock(), device, messages, unix_ms());
        bump(&self.counters.downlinks, envelopes.len());
        for e in &envelopes {
            downlink.send(e).await?;
        }
        Ok(envelopes.len())
    }

    /// Sends the OTA jobs due now; returns how many went out.
    pub async fn poll_ota(&self, downlink: &Downlink) -> Result<usize, BridgeError> {
        let now = unix_ms();
        let jobs = {
            let mut inner = self.lock();
            let due = inner.server.poll_ota(now);
            due.into_iter()
                .flat_map(|(device, job)| Self::wrap(&mut inner, device, vec![job], now))
                .collect::<Vec<_>>()
        };
        bump(&self.counters.downlinks, jobs.len());
        for e in &jobs {
            downlink.send(e).await?;
        }
        Ok(jobs.len())
    }
}

impl EnvelopeHandler for DurableBackend {
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send {
        let backend = self.clone();
        async move {
            // Waiting for the store's commit blocks: off the async workers.
            tokio::task::spawn_blocking(move || backend.handle_envelope(device, &envelope))
                .await
                .unwrap_or_default()
        }
    }
}

/// The API over the durable backend: operator messages go out through the bridge.
pub struct DurableEngine {
    /// The backend.
    pub backend: DurableBackend,
    /// The bridge's downlink.
    pub downlink: Downlink,
    /// Where sends run.
    pub runtime: tokio::runtime::Handle,
}

impl core::fmt::Debug for DurableEngine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DurableEngine").finish_non_exhaustive()
    }
}

impl Engine for DurableEngine {
    fn with_server(
        &self,
        devices: &[DeviceId],
        f: &mut dyn FnMut(&mut DeviceServer),
    ) -> Result<(), EngineError> {
        let now = unix_ms();
        self.backend
            .lock()
            .server
            .act(devices, now, |s| f(s))
            .map_err(|e| EngineError(e.to_string()))
    }

    fn now_ms(&self) -> u64 {
        unix_ms()
    }

    fn stored_audit(&self, last: u32) -> Option<Result<StoredAudit, EngineError>> {
        let read = self.backend.lock().server.audit_tail(last);
        Some(
            read.map(|(head, records)| StoredAudit {
                head: head.seq,
                entries: records
                    .into_iter()
                    .map(|r| StoredEntry {
                        seq: r.seq,
                        at_ms: r.event.at_ms,
                        tenant: r.event.tenant,
                        device: r.event.device,
                        payload: serde_json::from_slice(&r.event.payload)
                            .unwrap_or(serde_json::Value::Null),
                        hash: r.hash,
                    })
                    .collect(),
            })
            .map_err(|e| EngineError(e.to_string())),
        )
    }

    fn deliver(&self, device: DeviceId, messages: Vec<Reply>) {
        let backend = self.backend.clone();
        let downlink = self.downlink.clone();
        self.runtime.spawn(async move {
            let _ = backend.send(&downlink, device, messages).await;
        });
    }

    fn refusals_by_cause(&self) -> Vec<(String, u64)> {
        let refusals = self
            .backend
            .counters
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        refusals.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn traffic(&self) -> TrafficCounts {
        let c = &self.backend.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TrafficCounts {
            messages_in: get(&c.handled).saturating_add(get(&c.unhandled)),
            messages_out: get(&c.downlinks),
            refused: get(&c.refused),
            dropped: get(&c.dropped),
        }
    }
}
