//! The backend end of the device protocol: answers the messages a device agent sends with
//! the fleet's own rules, so every backend (a gateway, a server, a test) speaks to devices
//! the same way.
//!
//! [`DeviceServer`] wraps a [`Fleet`] and an operator principal. For each envelope from a
//! device it returns the replies to send back:
//!
//! | from the device | what the server does | replies |
//! |---|---|---|
//! | `RegistrationRequest` | challenge, then checks the proof ([`Fleet::handle_registration`]) | `RegistrationResponse` |
//! | `Heartbeat` | marks the device online (the battery is the caller's to record, from telemetry or health reports) | none |
//! | `ShadowUpdate` | applies the device's writes to the server-side shadow | `ShadowAccepted` |
//! | `ShadowGet` | sends the document if it is newer than the device's | `ShadowDocument` |
//!
//! Everything else (telemetry, health reports, command acks, decommission records) is the
//! caller's to interpret; [`Handled::Unhandled`] says so. Operator actions that produce a
//! message for the device, such as a desired-state change, are methods too
//! ([`DeviceServer::set_desired`]).

use alloc::vec::Vec;

use iot_core::time::HybridLogicalClock;
use iot_core::{DeviceId, EnvelopeRef, MessageKind, NodeId, codec};
use iot_lifecycle::agent::Heartbeat;
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::RegistrationRequest;
use iot_shadow::{Origin, Path, Resolver, Section, Stamp, Update, Value, Write};
use iot_transport::{Rng, SplitMix64};

use crate::access::Principal;
use crate::fleet::{Fleet, FleetError};
use crate::proof::Nonce;

/// Largest shadow message the server encodes.
const SHADOW_BUFFER: usize = 4_096;

/// What became of one message from a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// The server acted on it; these messages go back to the device (possibly none).
    Replies(Vec<(MessageKind, Vec<u8>)>),
    /// Not part of the protocol the server speaks; the caller interprets it.
    Unhandled,
}

/// Why a device message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The fleet refused it (unknown or revoked device, access, shadow rules...).
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The payload is not what its kind promises.
    #[error("malformed {0:?} payload")]
    Malformed(MessageKind),
    /// A reply did not fit its buffer.
    #[error("reply too large")]
    Encode,
}

impl iot_core::Error for ServerError {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::Fleet(e) => iot_core::Error::kind(e),
            Self::Malformed(_) => iot_core::ErrorKind::Decode,
            Self::Encode => iot_core::ErrorKind::Encode,
        }
    }
}

/// Answers devices' messages on behalf of a [`Fleet`]. See the [module documentation](self).
pub struct DeviceServer {
    fleet: Fleet,
    operator: Principal,
    config: DeviceConfig,
    clock: HybridLogicalClock,
    nonces: SplitMix64,
}

impl core::fmt::Debug for DeviceServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A shadow message written by `write` into a `SHADOW_BUFFER`-byte buffer, trimmed to its
/// length (`None` when `write` had nothing to say, like an empty delta).
fn encode_shadow(
    write: impl FnOnce(&mut [u8]) -> Result<Option<usize>, codec::EncodeError>,
) -> Result<Option<Vec<u8>>, ServerError> {
    let mut buf = alloc::vec![0u8; SHADOW_BUFFER];
    let Some(n) = write(&mut buf).map_err(|_| ServerError::Encode)? else {
        return Ok(None);
    };
    buf.truncate(n);
    Ok(Some(buf))
}

fn encode<T: minicbor::Encode<()> + minicbor::CborLen<()>>(
    value: &T,
) -> Result<Vec<u8>, ServerError> {
    codec::encode_to_vec(value).map_err(|_| ServerError::Encode)
}

impl DeviceServer {
    /// A server for `fleet`, acting as `operator` for shadow reads and writes, handing
    /// `config` to every device that registers. `seed` makes registration nonces
    /// unpredictable to devices; use a random value in production.
    pub fn new(
        fleet: Fleet,
        operator: Principal,
        config: DeviceConfig,
        node: NodeId,
        seed: u64,
    ) -> Self {
        Self {
            fleet,
            operator,
            config,
            clock: HybridLogicalClock::new(node, 60_000),
            nonces: SplitMix64::new(seed),
        }
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
        for word in nonce.chunks_exact_mut(4) {
            word.copy_from_slice(&self.nonces.next_u32().to_le_bytes());
        }
        nonce
    }

    /// Handles one message from a device at `now_ms`.
    pub fn handle(&mut self, env: &EnvelopeRef<'_>, now_ms: u64) -> Result<Handled, ServerError> {
        let malformed = || ServerError::Malformed(env.kind);
        let mut replies = Vec::new();
        match env.kind {
            MessageKind::RegistrationRequest => {
                let request: RegistrationRequest =
                    codec::decode(env.payload).map_err(|_| malformed())?;
                let nonce = self.nonce();
                let response = self
                    .fleet
                    .handle_registration(&request, nonce, self.config, now_ms);
                replies.push((MessageKind::RegistrationResponse, encode(&response)?));
            }
            MessageKind::Heartbeat => {
                let _beat: Heartbeat = codec::decode(env.payload).map_err(|_| malformed())?;
                self.fleet.heartbeat(&env.device, None, now_ms)?;
            }
            MessageKind::ShadowUpdate => {
                let mut writes: Vec<Write> = Vec::new();
                let header = iot_shadow::cbor::decode_message(env.payload, &mut writes)
                    .map_err(|_| malformed())?;
                for w in &writes {
                    // Keep the server clock ahead of what devices wrote; a device clock beyond
                    // the drift bound is refused by the engine's own checks.
                    let _ = self.clock.observe(w.stamp.hlc(), now_ms);
                }
                let update = Update {
                    client_token: header.client_token,
                    expected_version: header.version,
                    writes: &writes,
                };
                let outcome = self
                    .fleet
                    .device_shadow_update(&env.device, &update, now_ms)?;
                let shadow = self
                    .fleet
                    .shadow(&self.operator, &env.device)?
                    .ok_or(malformed())?;
                let ack =
                    encode_shadow(|buf| shadow.encode_accepted(&update, &outcome, buf).map(Some))?;
                replies.extend(ack.map(|ack| (MessageKind::ShadowAccepted, ack)));
            }
            MessageKind::ShadowGet => {
                let known: u64 = codec::decode(env.payload).map_err(|_| malformed())?;
                if let Some(shadow) = self.fleet.shadow(&self.operator, &env.device)?
                    && shadow.version() > known
                {
                    let document = encode_shadow(|buf| shadow.encode_document(buf).map(Some))?;
                    replies.extend(document.map(|d| (MessageKind::ShadowDocument, d)));
                }
            }
            _ => return Ok(Handled::Unhandled),
        }
        Ok(Handled::Replies(replies))
    }

    /// The operator sets a desired value on `device`; returns the delta to push to it, if
    /// the document now differs from what the device reported.
    pub fn set_desired(
        &mut self,
        device: &DeviceId,
        path: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, ServerError> {
        let path =
            Path::new(path).map_err(|_| ServerError::Malformed(MessageKind::ShadowUpdate))?;
        let policy = {
            let shadow = self.fleet.shadow(&self.operator, device)?;
            shadow
                .map(|s| s.resolver().policy(&path))
                .unwrap_or_default()
        };
        let hlc = self.clock.now(now_ms).map_err(|_| ServerError::Encode)?;
        let write = Write::new(
            Section::Desired,
            path,
            value,
            Stamp::new(hlc, policy, Origin::Cloud),
        );
        self.fleet
            .update_shadow(&self.operator, device, &Update::new(&[write]), now_ms)?;
        let shadow = self
            .fleet
            .shadow(&self.operator, device)?
            .ok_or(ServerError::Encode)?;
        encode_shadow(|buf| shadow.encode_delta(buf))
    }

    /// The value `device` last reported at `path`, as the server holds it.
    pub fn reported(&self, device: &DeviceId, path: &str) -> Option<Value> {
        let path = Path::new(path).ok()?;
        let shadow = self.fleet.shadow(&self.operator, device).ok()??;
        shadow.value(Section::Reported, &path).cloned()
    }
}
