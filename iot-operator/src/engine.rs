//! What the API runs on: a [`DeviceServer`] behind a lock, a clock, and a way to deliver
//! messages to devices.
//!
//! The HTTP layer never owns the server: an [`Engine`] lends it for the duration of one
//! call. [`LocalEngine`] keeps the server in this process and queues downlinks for the
//! caller (tests, benchmarks); the MQTT binding (`iot-mqtt`'s `FleetBackend`) implements the
//! same trait in the main example, so the API is the same over both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use iot_core::DeviceId;
use iot_fleet::{DeviceServer, Reply};

/// Counters of device traffic an engine keeps, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    /// Messages from devices the server acted on.
    pub messages_in: u64,
    /// Messages sent to devices (replies and operator messages).
    pub messages_out: u64,
    /// Messages from devices the server refused (identity, access, malformed).
    pub refused: u64,
    /// Messages dropped on the way (a full queue, a closed link).
    pub dropped: u64,
}

/// The backend could not run an operation (its store failed and it stopped); nothing was
/// acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend unavailable: {0}")]
pub struct EngineError(pub String);

/// One entry of a stored audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// Sequence number.
    pub seq: u64,
    /// When.
    pub at_ms: u64,
    /// The tenant whose data changed.
    pub tenant: iot_core::TenantId,
    /// The device concerned.
    pub device: Option<DeviceId>,
    /// Actor, scope and action, as the store keeps them (JSON).
    pub payload: serde_json::Value,
    /// The entry's chain hash.
    pub hash: [u8; 32],
}

/// A verified stored audit trail's head and newest entries.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAudit {
    /// The head's sequence number (entries verified).
    pub head: u64,
    /// The newest entries, oldest first.
    pub entries: Vec<StoredEntry>,
}

/// The backend the API drives.
pub trait Engine: Send + Sync + 'static {
    /// Runs `f` on the server and makes what it changed durable before returning (the
    /// shadows of `devices` are the ones `f` may write). Implementations hold a lock
    /// meanwhile: `f` must not block. An error means `f` did not run, or its changes are
    /// not durable.
    fn with_server(
        &self,
        devices: &[DeviceId],
        f: &mut dyn FnMut(&mut DeviceServer),
    ) -> Result<(), EngineError>;
    /// The backend's clock, in milliseconds.
    fn now_ms(&self) -> u64;
    /// Delivers operator messages to `device` (at least once, in order).
    fn deliver(&self, device: DeviceId, messages: Vec<Reply>);
    /// The newest `last` entries of an audit trail kept outside the server's memory (a
    /// durable store), with the chain verified; `None` when the server's own log is the
    /// trail.
    fn stored_audit(&self, last: u32) -> Option<Result<StoredAudit, EngineError>> {
        let _ = last;
        None
    }
    /// Device messages refused so far, by cause (the error kind: `unauthorized` for an
    /// identity mismatch, `decode` for garbage, `not_found` for an unknown device...).
    fn refusals_by_cause(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// Device traffic so far.
    fn traffic(&self) -> TrafficCounts {
        TrafficCounts::default()
    }
}

/// Runs `f` on the engine's server (which may write the shadows of `devices`) and returns
/// its result once its changes are durable.
pub fn call<R>(
    engine: &dyn Engine,
    devices: &[DeviceId],
    f: impl FnOnce(&mut DeviceServer) -> R,
) -> Result<R, EngineError> {
    let mut f = Some(f);
    let mut out = None;
    engine.with_server(devices, &mut |server| {
        if let Some(f) = f.take() {
            out = Some(f(server));
        }
    })?;
    out.ok_or_else(|| EngineError("the operation did not run".into()))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type Clock = dyn Fn() -> u64 + Send + Sync;

/// A server in this process; downlinks wait in an outbox until [`LocalEngine::take_outbox`].
#[derive(Clone)]
pub struct LocalEngine {
    server: Arc<Mutex<DeviceServer>>,
    outbox: Arc<Mutex<Vec<(DeviceId, Reply)>>>,
    clock: Arc<Clock>,
    sent: Arc<AtomicU64>,
}

impl core::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalEngine").finish_non_exhaustive()
    }
}

impl LocalEngine {
    /// Serves `server` on the system clock.
    pub fn new(server: DeviceServer) -> Self {
        Self {
            server: Arc::new(Mutex::new(server)),
            outbox: Arc::default(),
            clock: Arc::new(unix_ms),
            sent: Arc::default(),
        }
    }

    /// Uses `clock` (milliseconds) instead of the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The messages delivered so far, oldest first; empties the outbox.
    pub fn take_outbox(&self) -> Vec<(DeviceId, Reply)> {
        core::mem::take(&mut *self.outbox.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Engine for LocalEngine {
    fn with_server(
        &self,
        _devices: &[DeviceId],
        f: &mut dyn FnMut(&mut DeviceServer),
    ) -> Result<(), EngineError> {
        f(&mut self.server.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    fn deliver(&self, device: DeviceId, messages: Vec<Reply>) {
        let n = u64::try_from(messages.len()).unwrap_or(u64::MAX);
        self.sent.fetch_add(n, Ordering::Relaxed);
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.extend(messages.into_iter().map(|m| (device, m)));
    }

    fn traffic(&self) -> TrafficCounts {
        TrafficCounts {
            messages_out: self.sent.load(Ordering::Relaxed),
            ..TrafficCounts::default()
        }
    }
}
