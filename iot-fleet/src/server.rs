//! The backend end of the device protocol ([`iot_protocol`]): answers what device agents
//! send with the fleet's own rules, for every tenant, so every backend (a gateway, a
//! server, a test) speaks to devices the same way.
//!
//! [`DeviceServer`] wraps a [`Fleet`]. The transport binds each connection to one
//! authenticated device identity (a TLS client certificate, a broker ACL, a serial port
//! wired to one device) and hands the server that [`Session`] with every envelope. The
//! server refuses, before anything changes, an envelope that names another device than the
//! session's, and a registration request that names another device than the envelope's.
//!
//! | from the device | what the server does | replies |
//! |---|---|---|
//! | `Register` | checks the protocol version; challenges (with a nonce from the cryptographic RNG), then checks the proof ([`Fleet::handle_registration`]) | `Registration` |
//! | `Heartbeat` | marks the device online | none |
//! | `Transition` | validates it with the lifecycle's transition table and applies it to the fleet record, or flags it ([`Fleet::report_device_transition`]) | none |
//! | `ShadowUpdate` | applies the device's writes to its server-side shadow (the drift bound, limits and origin checked first) | `Shadow` accepted, or `ShadowRejected` |
//! | `ShadowGet` | sends the document if it is newer than the device's | `Shadow` document |
//! | `OtaBlockRequest` | serves the block of a published image ([`DeviceServer::publish_firmware`]) | `OtaBlock` |
//! | `OtaProgress` | a confirmed or rolled-back update is the device's report to its rollout ([`Fleet::report_update`]); the application sees it too | none |
//!
//! Telemetry, health reports, command acks, OTA progress and decommissioning records are
//! checked (the device must be registered) and left to the caller to interpret:
//! [`Handled::Unhandled`] says so.
//!
//! # Firmware rollouts over the protocol
//!
//! [`DeviceServer::publish_firmware`] keeps an image and its digest;
//! [`DeviceServer::start_ota`] starts a staged rollout of it ([`Fleet::start_rollout`]);
//! [`DeviceServer::poll_ota`] returns the `OtaJob`s due, each device's start delayed by a
//! random share of the jitter window so a stage does not fetch all at once. Devices pull
//! the image block by block and report; the rollout advances, or halts when a stage's
//! failure rate passes its threshold (failed devices keep, or go back to, their previous
//! image: the updater only activates a verified image, and rolls back a trial that is not
//! confirmed). Operator actions that produce a message for a device,
//! such as a desired-state change, are methods taking the operator's [`Principal`]
//! ([`DeviceServer::set_desired`], [`DeviceServer::decommission`]).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use iot_core::time::HybridLogicalClock;
use iot_core::{DeviceId, EnvelopeRef, NodeId};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::ota::{OtaJob, OtaState};
use iot_lifecycle::registration::{
    DecommissionReason, RegistrationRejection, RegistrationResponse,
};
use iot_protocol::{
    Downlink, OTA_BLOCK_SIZE, OtaBlock, PROTOCOL_VERSION, ProtocolError, ShadowBytes,
    ShadowRefusal, ShadowRejection, Uplink,
};
use iot_shadow::{Origin, Path, Resolver, Section, ShadowError, Stamp, Update, Value, Write};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::access::{Principal, Scope};
use crate::fleet::{Decommissioned, Fleet, FleetError, MAX_CLOCK_DRIFT_MS};
use crate::proof::Nonce;
use crate::registry::ReadingTally;
use crate::rollout::{Instruction, RolloutConfig};

/// Largest shadow message the server encodes.
const SHADOW_BUFFER: usize = 4_096;

/// A message for a device, holding its own bytes.
pub type Reply = Downlink<Vec<u8>>;

/// What became of one message from a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// The server acted on it; these messages go back to the device (possibly none).
    Replies(Vec<Reply>),
    /// A valid message of a registered device that the server does not act on (telemetry,
    /// health, command acks, OTA progress, decommissioning records); the caller interprets
    /// it.
    Unhandled,
}

/// A transport session bound to one authenticated device identity. Only the transport
/// binding makes one: it is its statement that every envelope on this connection comes
/// from `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    device: DeviceId,
    id: u64,
}

impl Session {
    /// The session `id` (unique among the transport's live connections, for example a
    /// connection counter) that the transport authenticated as `device`.
    pub const fn authenticated(device: DeviceId, id: u64) -> Self {
        Self { device, id }
    }

    /// The authenticated device.
    pub const fn device(&self) -> DeviceId {
        self.device
    }

    /// The session id.
    pub const fn id(&self) -> u64 {
        self.id
    }
}

/// Why a device message was refused. Every refusal happens before any state changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The fleet refused it (unknown or revoked device, access, shadow rules...).
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The message is not a valid protocol message from a device.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The envelope (or the registration request in it) names another device than the
    /// one the transport authenticated.
    #[error("session of {session} cannot speak for {claimed}")]
    IdentityMismatch {
        /// The authenticated device.
        session: DeviceId,
        /// The device the message names.
        claimed: DeviceId,
    },
    /// An operator named a shadow path that is not valid.
    #[error("invalid shadow path")]
    InvalidPath,
    /// No image of this version was published.
    #[error("no firmware image {0} was published")]
    UnknownImage(u32),
    /// The image is empty, larger than 4 GiB, or another image was already published under
    /// the same version.
    #[error("firmware image {0} cannot be published")]
    ImageRefused(u32),
    /// The backend clock could not stamp a write.
    #[error("backend clock error")]
    Clock,
    /// A reply did not fit its buffer.
    #[error("reply too large")]
    Encode,
}

impl iot_core::Error for ServerError {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::Fleet(e) => iot_core::Error::kind(e),
            Self::Protocol(e) => iot_core::Error::kind(e),
            Self::IdentityMismatch { .. } => iot_core::ErrorKind::Unauthorized,
            Self::InvalidPath | Self::ImageRefused(_) => iot_core::ErrorKind::InvalidInput,
            Self::UnknownImage(_) => iot_core::ErrorKind::NotFound,
            Self::Clock => iot_core::ErrorKind::Clock,
            Self::Encode => iot_core::ErrorKind::Encode,
        }
    }
}

/// Answers devices' messages on behalf of a [`Fleet`]. See the [module documentation](self).
pub struct DeviceServer {
    fleet: Fleet,
    config: DeviceConfig,
    clock: HybridLogicalClock,
    rng: Box<dyn CryptoRngCore + Send>,
    /// The device time of the last lifecycle report applied, per device.
    reported: BTreeMap<DeviceId, u64>,
    /// Published firmware images by version.
    images: BTreeMap<u32, Image>,
    /// OTA jobs per (device, version): when each is due, and whether it went out.
    dispatch: BTreeMap<(DeviceId, u32), Dispatch>,
    ota_jitter_ms: u64,
    /// Desired values each device declined (cleared with its own stamp instead of
    /// adopting them), by path: the value declined and when.
    declined: BTreeMap<(DeviceId, Path), Declined>,
}

/// A desired value a device declined: it cleared the desired value with its own write
/// instead of adopting it (a value it cannot take: wrong type, an inexact `f32`, out of
/// its range; or a device-owned field). See [`DeviceServer::declined`].
#[derive(Debug, Clone, PartialEq)]
pub struct Declined {
    /// The desired value the device declined.
    pub value: Value,
    /// The value it reported instead, if any.
    pub reported: Option<Value>,
    /// Server time the device's update arrived.
    pub at_ms: u64,
}

/// A firmware image handed out in blocks.
struct Image {
    job: OtaJob,
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Dispatch {
    due_ms: u64,
    sent: bool,
}

/// The default window over which the OTA job starts of one stage are spread (10 s).
pub const DEFAULT_OTA_JITTER_MS: u64 = 10_000;

impl core::fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A shadow message written by `write` into a `SHADOW_BUFFER`-byte buffer, checked and
/// wrapped as a reply (`None` when `write` had nothing to say, like an empty delta).
fn encode_shadow(
    write: impl FnOnce(&mut [u8]) -> Result<Option<usize>, iot_core::codec::EncodeError>,
) -> Result<Option<Reply>, ServerError> {
    let mut buf = alloc::vec![0u8; SHADOW_BUFFER];
    let Some(n) = write(&mut buf).map_err(|_| ServerError::Encode)? else {
        return Ok(None);
    };
    buf.truncate(n);
    let message = ShadowBytes::new(buf).map_err(|_| ServerError::Encode)?;
    Ok(Some(Downlink::Shadow(message)))
}

/// The refusal of a message from `session`'s device that names `claimed`.
const fn mismatch(session: DeviceId, claimed: DeviceId) -> ServerError {
    ServerError::IdentityMismatch { session, claimed }
}

/// The protocol's reason for a shadow refusal.
const fn refusal(error: &ShadowError) -> ShadowRefusal {
    match error {
        ShadowError::Conflict { .. } => ShadowRefusal::Conflict,
        ShadowError::ClockDrift => ShadowRefusal::ClockDrift,
        ShadowError::ContradictoryWrite
        | ShadowError::DuplicateWrite
        | ShadowError::PathConflict
        | ShadowError::UnknownField
        | ShadowError::TypeMismatch => ShadowRefusal::Invalid,
        _ => ShadowRefusal::Limit,
    }
}

impl DeviceServer {
    /// A server for `fleet` handing `config` to every device that registers, stamping
    /// operator writes as `node`, drawing registration nonces from `rng` (a cryptographic
    /// generator: the operating system's on a server, the hardware RNG on a gateway).
    pub fn new(
        fleet: Fleet,
        config: DeviceConfig,
        node: NodeId,
        rng: impl CryptoRngCore + Send + 'static,
    ) -> Self {
        Self {
            fleet,
            config,
            clock: HybridLogicalClock::new(node, MAX_CLOCK_DRIFT_MS),
            rng: Box::new(rng),
            reported: BTreeMap::new(),
            images: BTreeMap::new(),
            dispatch: BTreeMap::new(),
            ota_jitter_ms: DEFAULT_OTA_JITTER_MS,
            declined: BTreeMap::new(),
        }
    }

    /// [`DeviceServer::new`] with the operating system's RNG.
    #[cfg(feature = "std")]
    pub fn with_os_rng(fleet: Fleet, config: DeviceConfig, node: NodeId) -> Self {
        Self::new(fleet, config, node, rand_core::OsRng)
    }

    /// Spreads each device's OTA job over a random delay of up to `jitter_ms` from the
    /// moment its stage admits it (default [`DEFAULT_OTA_JITTER_MS`]).
    #[must_use]
    pub fn with_ota_jitter(mut self, jitter_ms: u64) -> Self {
        self.ota_jitter_ms = jitter_ms;
        self
    }

    /// The fleet behind the server.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The fleet behind the server, for operator actions.
    pub fn fleet_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }

    fn nonce(&mut self) -> Nonce {
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        nonce
    }

    /// Handles one message that arrived in `session` at `now_ms`.
    pub fn handle(
        &mut self,
        session: &Session,
        env: &EnvelopeRef<'_>,
        now_ms: u64,
    ) -> Result<Handled, ServerError> {
        let device = session.device;
        if env.device != device {
            return Err(mismatch(device, env.device));
        }
        let message = Uplink::decode(env.kind, env.payload)?;
        let mut replies = Vec::new();
        match message {
            Uplink::Register(register) => {
                if register.request.device != device {
                    return Err(mismatch(device, register.request.device));
                }
                let known = self.fleet.schema_policies(register.schema).is_some();
                let response = match known {
                    _ if register.protocol != PROTOCOL_VERSION => {
                        RegistrationResponse::Rejected(RegistrationRejection::UnsupportedProtocol)
                    }
                    false => RegistrationResponse::Rejected(RegistrationRejection::UnknownSchema),
                    true => {
                        let nonce = self.nonce();
                        let response = self.fleet.handle_registration(
                            &register.request,
                            session.id,
                            nonce,
                            self.config,
                            now_ms,
                        );
                        if matches!(response, RegistrationResponse::Accepted(_)) {
                            // A new registration starts a new epoch of lifecycle reports;
                            // a refused one changes nothing.
                            self.reported.remove(&device);
                            self.fleet.set_device_schema(&device, register.schema);
                            // A device that registers again restarted: its OTA job (if a
                            // rollout still asks it to install) is sent again, and it
                            // resumes the download where its flash says it stopped.
                            self.dispatch.retain(|(d, _), _| *d != device);
                        }
                        response
                    }
                };
                replies.push(Downlink::Registration(response));
            }
            Uplink::Heartbeat(beat) => {
                self.fleet.heartbeat(&device, None, now_ms)?;
                if let Some(r) = beat.readings {
                    self.fleet.report_readings(
                        &device,
                        ReadingTally {
                            sampled: r.sampled,
                            sent: r.sent,
                        },
                    );
                }
            }
            Uplink::Transition(record) => {
                // Reports travel at least once and may arrive out of order: one older than
                // the last applied is stale and changes nothing; a copy of the last ends in
                // the held state and changes nothing either
                // (see `Fleet::report_device_transition`).
                if self
                    .reported
                    .get(&device)
                    .is_some_and(|&at| record.at_ms < at)
                {
                    self.fleet.heartbeat(&device, None, now_ms)?;
                } else {
                    self.fleet.report_device_transition(
                        &device,
                        record.from,
                        record.event,
                        record.to,
                        now_ms,
                    )?;
                    self.reported.insert(device, record.at_ms);
                }
            }
            Uplink::ShadowUpdate(message) => {
                let mut writes: Vec<Write> = Vec::new();
                let header = iot_shadow::cbor::decode_message(message.bytes(), &mut writes)
                    .map_err(|_| ProtocolError::Malformed(env.kind))?;
                // Desired values the device clears with its own stamp are values it declined:
                // note them (with the value declined) before the update removes them.
                let declined: Vec<(Path, Value)> = writes
                    .iter()
                    .filter(|w| {
                        w.section == Section::Desired
                            && w.value.is_null()
                            && w.stamp.origin == Origin::Device
                    })
                    .filter_map(|w| {
                        let shadow = self.fleet.device_shadow(&device)?;
                        let value = shadow.value(Section::Desired, &w.path)?;
                        (!value.is_null()).then(|| (w.path.clone(), value.clone()))
                    })
                    .collect();
                let update = Update {
                    client_token: header.client_token,
                    expected_version: header.version,
                    writes: &writes,
                };
                let outcome = match self.fleet.device_shadow_update(&device, &update, now_ms) {
                    Ok(outcome) => outcome,
                    Err(FleetError::Shadow(error)) => {
                        let version = self.fleet.device_shadow(&device).map_or(0, |s| s.version());
                        replies.push(Downlink::ShadowRejected(ShadowRejection {
                            reason: refusal(&error),
                            version,
                        }));
                        return Ok(Handled::Replies(replies));
                    }
                    Err(e) => return Err(e.into()),
                };
                for (path, value) in declined {
                    let reported = writes
                        .iter()
                        .find(|w| w.section == Section::Reported && w.path == path)
                        .map(|w| w.value.clone());
                    let entry = Declined {
                        value,
                        reported,
                        at_ms: now_ms,
                    };
                    self.declined.insert((device, path), entry);
                }
                for w in &writes {
                    // Accepted writes are within the drift bound: keep the server clock
                    // ahead of them so operator writes stamped later outrank them.
                    let _ = self.clock.observe(w.stamp.hlc(), now_ms);
                }
                if let Some(shadow) = self.fleet.device_shadow(&device) {
                    let ack = encode_shadow(|buf| {
                        shadow.encode_accepted(&update, &outcome, buf).map(Some)
                    })?;
                    replies.extend(ack);
                }
            }
            Uplink::ShadowGet(get) => {
                self.fleet.heartbeat(&device, None, now_ms)?;
                if let Some(shadow) = self.fleet.device_shadow(&device)
                    && shadow.version() > get.version
                {
                    replies.extend(encode_shadow(|buf| shadow.encode_document(buf).map(Some))?);
                }
            }
            Uplink::Decommissioned(record) => {
                if record.device != device {
                    return Err(mismatch(device, record.device));
                }
                return Ok(Handled::Unhandled);
            }
            Uplink::OtaBlockRequest(request) => {
                self.fleet.heartbeat(&device, None, now_ms)?;
                if let Some(image) = self.images.get(&request.version) {
                    let start = usize::try_from(request.offset).unwrap_or(usize::MAX);
                    let end = start.saturating_add(OTA_BLOCK_SIZE).min(image.bytes.len());
                    if let Some(data) = image.bytes.get(start..end)
                        && !data.is_empty()
                    {
                        replies.push(Downlink::OtaBlock(OtaBlock {
                            version: request.version,
                            offset: request.offset,
                            data: data.to_vec(),
                        }));
                    }
                }
            }
            Uplink::OtaProgress(progress) => {
                self.fleet.heartbeat(&device, None, now_ms)?;
                match progress.state {
                    OtaState::Confirmed if progress.version.is_some() => {
                        self.ota_outcome(&device, progress.version, true, now_ms);
                    }
                    OtaState::RolledBack => {
                        self.ota_outcome(&device, progress.version, false, now_ms);
                    }
                    _ => {}
                }
                return Ok(Handled::Unhandled);
            }
            _ => {
                self.fleet.heartbeat(&device, None, now_ms)?;
                return Ok(Handled::Unhandled);
            }
        }
        Ok(Handled::Replies(replies))
    }

    /// Publishes firmware image `version`; returns the job devices receive (size and
    /// SHA-256 of the image). Publishing the same bytes again is harmless; other bytes
    /// under a published version are refused.
    pub fn publish_firmware(
        &mut self,
        version: u32,
        image: Vec<u8>,
    ) -> Result<OtaJob, ServerError> {
        let size = u32::try_from(image.len())
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ServerError::ImageRefused(version))?;
        let job = OtaJob {
            version,
            size,
            sha256: Sha256::digest(&image).into(),
        };
        if let Some(existing) = self.images.get(&version) {
            return if existing.job == job {
                Ok(job)
            } else {
                Err(ServerError::ImageRefused(version))
            };
        }
        self.images.insert(version, Image { job, bytes: image });
        Ok(job)
    }

    /// The operator `p` starts a staged rollout of published image `version` to the
    /// `Active` devices of `scope` (devices that fail keep `previous`). Returns the
    /// tenant-local rollout id; a scope without an `Active` device is an error
    /// ([`crate::rollout::RolloutError::NoTargets`]).
    pub fn start_ota(
        &mut self,
        p: &Principal,
        scope: &Scope,
        version: u32,
        previous: Option<u32>,
        config: RolloutConfig,
        now_ms: u64,
    ) -> Result<u32, ServerError> {
        if !self.images.contains_key(&version) {
            return Err(ServerError::UnknownImage(version));
        }
        let previous = previous.map(|v| alloc::format!("{v}"));
        let version = alloc::format!("{version}");
        Ok(self
            .fleet
            .start_rollout(p, scope, &version, previous.as_deref(), config, now_ms)?)
    }

    /// The OTA jobs due at `now_ms`, one per device admitted to a running stage of a
    /// rollout of a published image: `(device, OtaJob message)`. Each device's job goes out
    /// once, after its random start delay; the transport delivers it at least once.
    pub fn poll_ota(&mut self, now_ms: u64) -> Vec<(DeviceId, Reply)> {
        let mut due = Vec::new();
        for (device, _, _, instruction) in self.fleet.pending_instructions() {
            let Instruction::Install { version } = instruction else {
                continue;
            };
            let Ok(version) = version.parse::<u32>() else {
                continue;
            };
            let Some(job) = self.images.get(&version).map(|i| i.job) else {
                continue;
            };
            let key = (device, version);
            if !self.dispatch.contains_key(&key) {
                let delay = self
                    .rng
                    .next_u64()
                    .checked_rem(self.ota_jitter_ms.saturating_add(1))
                    .unwrap_or(0);
                self.dispatch.insert(
                    key,
                    Dispatch {
                        due_ms: now_ms.saturating_add(delay),
                        sent: false,
                    },
                );
            }
            if let Some(entry) = self.dispatch.get_mut(&key)
                && !entry.sent
                && entry.due_ms <= now_ms
            {
                entry.sent = true;
                due.push((device, Downlink::OtaJob(job)));
            }
        }
        due
    }

    /// Counts a device's OTA outcome in the rollouts that asked it to install `version`.
    fn ota_outcome(&mut self, device: &DeviceId, version: Option<u32>, success: bool, now_ms: u64) {
        for (rollout, instruction) in self.fleet.instructions(device) {
            let Instruction::Install { version: wanted } = instruction else {
                continue;
            };
            let matches = version.is_none_or(|v| wanted.parse::<u32>() == Ok(v));
            if matches {
                // A late or repeated report (already counted, rollout ended) changes nothing.
                let _ = self.fleet.report_update(device, rollout, success, now_ms);
            }
        }
    }

    /// The operator `p` sets a desired value on `device`; returns the delta to push to it,
    /// if the document now differs from what the device reported.
    pub fn set_desired(
        &mut self,
        p: &Principal,
        device: &DeviceId,
        path: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<Option<Reply>, ServerError> {
        let path = Path::new(path).map_err(|_| ServerError::InvalidPath)?;
        let policy = self
            .fleet
            .shadow(p, device)?
            .map(|s| s.resolver().policy(&path))
            .unwrap_or_default();
        let hlc = self.clock.now(now_ms).map_err(|_| ServerError::Clock)?;
        let write = Write::new(
            Section::Desired,
            path,
            value,
            Stamp::new(hlc, policy, Origin::Cloud),
        );
        self.fleet
            .update_shadow(p, device, &Update::new(&[write]), now_ms)?;
        // The update above created the shadow if it was missing; were it gone, the device
        // is not there for this operator.
        let shadow = self
            .fleet
            .shadow(p, device)?
            .ok_or(FleetError::Access(crate::access::AccessError::NotFound))?;
        encode_shadow(|buf| shadow.encode_delta(buf))
    }

    /// The operator `p` decommissions `device` (see [`Fleet::decommission`]): its
    /// credentials are revoked at once, and the returned message tells the device to wipe
    /// itself; it answers with its audit record.
    pub fn decommission(
        &mut self,
        p: &Principal,
        device: &DeviceId,
        reason: DecommissionReason,
        now_ms: u64,
    ) -> Result<(Decommissioned, Reply), ServerError> {
        let done = self.fleet.decommission(p, device, now_ms)?;
        Ok((done, Downlink::Decommission(reason)))
    }

    /// The desired values `device` declined, by path, the latest per path (see
    /// [`Declined`]), if `p` may see the device.
    pub fn declined(&self, p: &Principal, device: &DeviceId) -> Vec<(&Path, &Declined)> {
        if self.fleet.shadow(p, device).is_err() {
            return Vec::new();
        }
        self.declined
            .iter()
            .filter(|((d, _), _)| d == device)
            .map(|((_, path), declined)| (path, declined))
            .collect()
    }

    /// The value `device` last reported at `path`, as the server holds it, if `p` may see
    /// the device.
    pub fn reported(&self, p: &Principal, device: &DeviceId, path: &str) -> Option<Value> {
        let path = Path::new(path).ok()?;
        let shadow = self.fleet.shadow(p, device).ok()??;
        shadow.value(Section::Reported, &path).cloned()
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    use iot_core::{MessageId, MessageKind, TenantId};
    use iot_lifecycle::registration::RegistrationRequest;
    use iot_lifecycle::state::{Event, State, TransitionRecord};
    use iot_protocol::Register;

    use super::*;
    use crate::access::Role;
    use crate::registry::ManufacturingRecord;

    const NOW: u64 = 36_000_000;

    fn id(name: &str) -> DeviceId {
        DeviceId::new(name).unwrap()
    }

    fn secret(device: &DeviceId) -> [u8; 32] {
        let mut s = [0x5a; 32];
        for (i, b) in device.as_str().bytes().enumerate() {
            s[i % 32] ^= b;
        }
        s
    }

    fn admin(tenant: &str) -> Principal {
        Principal::new(
            "admin",
            TenantId::new(tenant).unwrap(),
            Scope::root(),
            Role::Admin,
        )
    }

    /// A server whose fleet holds `devices` as (tenant, device) in scope `site`.
    fn server(devices: &[(&str, DeviceId)], jitter_ms: u64) -> DeviceServer {
        let mut fleet = Fleet::default();
        for (tenant, device) in devices {
            let record = ManufacturingRecord {
                device_id: *device,
                secret: secret(device),
                sku: "TH".into(),
                serial: 1,
            };
            fleet
                .import_manufacturing(&admin(tenant), &"site".parse().unwrap(), vec![record], 0)
                .unwrap();
        }
        DeviceServer::with_os_rng(fleet, DeviceConfig::DEFAULT, NodeId(1))
            .with_ota_jitter(jitter_ms)
    }

    fn send(
        server: &mut DeviceServer,
        session: &Session,
        message: &Uplink<&[u8]>,
        now_ms: u64,
    ) -> Result<Vec<Reply>, ServerError> {
        let payload = message.to_vec();
        let env = EnvelopeRef {
            device: session.device(),
            seq: 0,
            id: MessageId(0),
            qos: message.qos(),
            kind: message.kind(),
            payload: &payload,
        };
        server.handle(session, &env, now_ms).map(|h| match h {
            Handled::Replies(replies) => replies,
            Handled::Unhandled => Vec::new(),
        })
    }

    fn register(device: DeviceId, nonce: Option<Nonce>) -> Uplink<&'static [u8]> {
        Uplink::Register(Register {
            protocol: PROTOCOL_VERSION,
            schema: 0,
            request: RegistrationRequest {
                device,
                firmware_version: 1,
                answer: nonce.map(|n| crate::answer(&secret(&device), &device, &n)),
            },
        })
    }

    fn report(from: State, event: Event, to: State, at_ms: u64) -> Uplink<&'static [u8]> {
        Uplink::Transition(TransitionRecord {
            from,
            event,
            to,
            at_ms,
        })
    }

    /// Registers the session's device and reports `Provisioning -> Active`, over the wire.
    fn activate(server: &mut DeviceServer, session: &Session) {
        let device = session.device();
        let replies = send(server, session, &register(device, None), NOW).unwrap();
        let [Downlink::Registration(RegistrationResponse::Challenge(nonce))] = replies.as_slice()
        else {
            panic!("no challenge: {replies:?}");
        };
        let replies = send(server, session, &register(device, Some(*nonce)), NOW).unwrap();
        assert!(matches!(
            replies.as_slice(),
            [Downlink::Registration(RegistrationResponse::Accepted(_))]
        ));
        let active = report(
            State::Provisioning,
            Event::ConfigComplete,
            State::Active,
            NOW,
        );
        send(server, session, &active, NOW).unwrap();
    }

    /// When each of `n` active devices is sent its OTA job, polling every 100 ms after a
    /// one-stage rollout starts at `NOW` with start jitter `jitter_ms`.
    fn job_times(n: usize, jitter_ms: u64) -> Vec<u64> {
        let devices: Vec<(&str, DeviceId)> = (0..n)
            .map(|i| ("acme", id(&format!("th-{i:02}"))))
            .collect();
        let mut server = server(&devices, jitter_ms);
        for (i, (_, device)) in devices.iter().enumerate() {
            activate(&mut server, &Session::authenticated(*device, i as u64));
        }
        server.publish_firmware(2, vec![7; 600]).unwrap();
        let one_stage = RolloutConfig {
            stages_bp: vec![10_000],
            ..RolloutConfig::default()
        };
        let site = "site".parse().unwrap();
        server
            .start_ota(&admin("acme"), &site, 2, Some(1), one_stage, NOW)
            .unwrap();
        let mut sent: BTreeMap<DeviceId, Vec<u64>> = BTreeMap::new();
        let mut t = NOW;
        while t <= NOW + jitter_ms + 1_000 {
            for (device, job) in server.poll_ota(t) {
                assert_eq!(job.kind(), MessageKind::OtaJob);
                sent.entry(device).or_default().push(t);
            }
            t += 100;
        }
        assert_eq!(sent.len(), n, "every device is sent a job");
        sent.values()
            .map(|times| {
                assert_eq!(times.len(), 1, "one job per device: {times:?}");
                times[0]
            })
            .collect()
    }

    #[test]
    fn ota_job_starts_are_spread_over_the_jitter_window() {
        // Without jitter the whole stage is sent its jobs at once.
        assert!(job_times(12, 0).iter().all(|&t| t == NOW));
        // With a 10 s window each start is delayed by a random share of it: within the
        // window, and not all at once (12 uniform draws over 101 polls coincide with a
        // probability far below 1e-20).
        let times = job_times(12, 10_000);
        assert!(
            times.iter().all(|&t| (NOW..=NOW + 10_000).contains(&t)),
            "{times:?}"
        );
        let distinct: alloc::collections::BTreeSet<u64> = times.iter().copied().collect();
        assert!(distinct.len() > 1, "{times:?}");
        assert!(times.iter().any(|&t| t > NOW), "{times:?}");
    }

    #[test]
    fn a_refused_registration_answer_keeps_the_lifecycle_reports_epoch() {
        let device = id("th-00");
        let mut server = server(&[("acme", device)], 0);
        let session = Session::authenticated(device, 1);
        activate(&mut server, &session);
        let degraded = report(
            State::Active,
            Event::HealthCheckFailed,
            State::Degraded,
            NOW + 10,
        );
        send(&mut server, &session, &degraded, NOW).unwrap();
        // An answer to no outstanding challenge is refused: the device did not register
        // again, so the reports it sent before still count.
        let replies = send(&mut server, &session, &register(device, Some([9; 16])), NOW).unwrap();
        assert!(matches!(
            replies.as_slice(),
            [Downlink::Registration(RegistrationResponse::Rejected(_))]
        ));
        // A report older than the last one applied (a late redelivery) changes nothing.
        let stale = report(State::Degraded, Event::AutoRecovery, State::Active, NOW + 5);
        send(&mut server, &session, &stale, NOW).unwrap();
        let record = server.fleet().device(&admin("acme"), &device).unwrap();
        assert_eq!(record.state, State::Degraded);
    }

    /// Everything an operator's refused action must leave alone: the fleet (audit chain,
    /// rollouts, shadows), the device record as its tenant sees it, and its shadow.
    fn snapshot(server: &DeviceServer, tenant: &str, device: &DeviceId) -> String {
        let fleet = server.fleet();
        format!(
            "{fleet:?}\n{:?}\n{:?}",
            fleet.device(&admin(tenant), device),
            fleet.device_shadow(device).map(|s| s.to_cbor())
        )
    }

    #[test]
    fn another_tenants_operator_is_refused_before_anything_changes() {
        let (a, b) = (id("dev-a"), id("dev-b"));
        let mut server = server(&[("acme", a), ("globex", b)], 0);
        for (i, device) in [a, b].into_iter().enumerate() {
            activate(&mut server, &Session::authenticated(device, i as u64));
        }
        server
            .set_desired(&admin("acme"), &a, "led", Value::Bool(true), NOW)
            .unwrap();
        let before = snapshot(&server, "acme", &a);
        let globex = admin("globex");
        // Globex's operator writes to, decommissions and reads acme's device: refused as
        // if the device did not exist, and nothing changes.
        let write = server.set_desired(&globex, &a, "led", Value::Bool(false), NOW + 1);
        assert!(
            matches!(write, Err(ServerError::Fleet(FleetError::Access(_)))),
            "{write:?}"
        );
        let retire = server.decommission(&globex, &a, DecommissionReason::Compromised, NOW + 2);
        assert!(
            matches!(retire, Err(ServerError::Fleet(FleetError::Access(_)))),
            "{retire:?}"
        );
        assert_eq!(server.reported(&globex, &a, "led"), None);
        assert!(server.declined(&globex, &a).is_empty());
        assert_eq!(snapshot(&server, "acme", &a), before);
        // Acme's own operator still reaches it.
        assert!(
            server
                .set_desired(&admin("acme"), &a, "led", Value::Bool(false), NOW + 3)
                .unwrap()
                .is_some()
        );
    }
}
