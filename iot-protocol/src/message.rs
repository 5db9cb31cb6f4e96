//! The two directions of the protocol as typed enums, and their codec.

use iot_core::MessageKind;
use iot_lifecycle::command::{Command, CommandAck};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::health::HealthReport;
use iot_lifecycle::ota::{OtaJob, OtaProgress};
use iot_lifecycle::registration::{AuditRecord, DecommissionReason, RegistrationResponse};
use iot_lifecycle::state::TransitionRecord;
use iot_shadow::cbor::Kind;
use minicbor::encode::write::Cursor;
use minicbor::{Decode, Encode};

use crate::ProtocolError;
use crate::payload::{
    Heartbeat, OtaBlock, OtaBlockRequest, Register, ShadowBytes, ShadowGet, ShadowRejection,
    TelemetryBatch,
};

/// A message from a device to its backend. `P` holds the bytes of shadow messages (`&[u8]`
/// when decoding in place, `Vec<u8>` on a backend).
///
/// | variant | kind | QoS | the backend's reply |
/// |---|---|---|---|
/// | [`Register`](Self::Register) | `RegistrationRequest` | 0 | `Registration`: a challenge, then accepted (with the configuration) or rejected |
/// | [`Heartbeat`](Self::Heartbeat) | `Heartbeat` | 0 | none; marks the device online |
/// | [`Telemetry`](Self::Telemetry) | `Telemetry` | 1 | none |
/// | [`Health`](Self::Health) | `HealthReport` | 0 | none |
/// | [`Transition`](Self::Transition) | `LifecycleReport` | 1 | none; the backend applies it if its transition table allows it, and flags it in the audit trail otherwise |
/// | [`ShadowUpdate`](Self::ShadowUpdate) | `ShadowUpdate` | 1 | `Shadow` accepted (the leaves it touched), or `ShadowRejected` |
/// | [`ShadowGet`](Self::ShadowGet) | `ShadowGet` | 0 | `Shadow` document, if the backend's is newer |
/// | [`CommandAck`](Self::CommandAck) | `CommandAck` | 1 | none |
/// | [`OtaProgress`](Self::OtaProgress) | `OtaProgress` | 1 | none; a confirmed or rolled-back update counts in the device's rollout |
/// | [`OtaBlockRequest`](Self::OtaBlockRequest) | `OtaBlockRequest` | 0 | `OtaBlock` (the device asks again after a loss) |
/// | [`Decommissioned`](Self::Decommissioned) | `Decommission` | 1 | none; the device's last message |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Uplink<P> {
    /// Registration request.
    Register(Register),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// Sensor readings.
    Telemetry(TelemetryBatch),
    /// A health check's report.
    Health(HealthReport),
    /// A lifecycle transition the device made.
    Transition(TransitionRecord),
    /// The device's shadow writes (an `iot-shadow` update message).
    ShadowUpdate(ShadowBytes<P>),
    /// Request for a newer shadow document.
    ShadowGet(ShadowGet),
    /// The answer to a command.
    CommandAck(CommandAck),
    /// Where a firmware update stands.
    OtaProgress(OtaProgress),
    /// Request for a block of a firmware image.
    OtaBlockRequest(OtaBlockRequest),
    /// The device was decommissioned: its audit record.
    Decommissioned(AuditRecord),
}

/// A message from the backend to a device. `P` holds the bytes of shadow messages.
///
/// | variant | kind | QoS | the device's answer |
/// |---|---|---|---|
/// | [`Registration`](Self::Registration) | `RegistrationResponse` | 0 | the signed answer to a challenge; a transition report once accepted |
/// | [`Shadow`](Self::Shadow) | `ShadowDelta`, `ShadowAccepted` or `ShadowDocument` (the message's own kind) | 1 | a shadow update when the device adopts desired values |
/// | [`ShadowRejected`](Self::ShadowRejected) | `ShadowRejected` | 1 | a `ShadowGet`, then a new update |
/// | [`Command`](Self::Command) | `Command` | 1 | exactly one `CommandAck` |
/// | [`Config`](Self::Config) | `ConfigUpdate` | 1 | a shadow update with the version in force |
/// | [`OtaJob`](Self::OtaJob) | `OtaJob` | 1 | `OtaProgress` reports and `OtaBlockRequest`s |
/// | [`OtaBlock`](Self::OtaBlock) | `OtaBlock` | 0 | the request for the next block |
/// | [`Decommission`](Self::Decommission) | `Decommission` | 1 | the `Decommissioned` audit record, then silence |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Downlink<P> {
    /// The answer to a registration request.
    Registration(RegistrationResponse),
    /// A shadow delta, acknowledgement or full document.
    Shadow(ShadowBytes<P>),
    /// A shadow update was refused.
    ShadowRejected(ShadowRejection),
    /// A command.
    Command(Command),
    /// A newer configuration.
    Config(DeviceConfig),
    /// A firmware update job.
    OtaJob(OtaJob),
    /// A block of a firmware image.
    OtaBlock(OtaBlock<P>),
    /// The backend decommissions the device.
    Decommission(DecommissionReason),
}

/// Encodes `value` at the start of `buf`.
fn put<T: Encode<()>>(value: &T, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut cursor = Cursor::new(buf);
    minicbor::encode(value, &mut cursor).map_err(|_| ProtocolError::BufferTooSmall)?;
    Ok(cursor.position())
}

/// Copies `bytes` to the start of `buf`.
fn copy(bytes: &[u8], buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let target = buf
        .get_mut(..bytes.len())
        .ok_or(ProtocolError::BufferTooSmall)?;
    target.copy_from_slice(bytes);
    Ok(bytes.len())
}

/// Decodes one complete value of type `T` from `payload`.
fn get<'b, T: Decode<'b, ()>>(kind: MessageKind, payload: &'b [u8]) -> Result<T, ProtocolError> {
    iot_core::codec::decode(payload).map_err(|_| ProtocolError::Malformed(kind))
}

/// The envelope kind of a shadow message of `kind`, in the direction it travels.
const fn shadow_kind(kind: Kind) -> MessageKind {
    match kind {
        Kind::Update => MessageKind::ShadowUpdate,
        Kind::Accepted => MessageKind::ShadowAccepted,
        Kind::Delta => MessageKind::ShadowDelta,
        Kind::Document => MessageKind::ShadowDocument,
    }
}

/// A shadow message whose own kind must be the envelope's `kind`.
fn shadow(kind: MessageKind, payload: &[u8]) -> Result<ShadowBytes<&[u8]>, ProtocolError> {
    let message = ShadowBytes::new(payload).map_err(|_| ProtocolError::Malformed(kind))?;
    let inner = shadow_kind(message.kind());
    if inner != kind {
        return Err(ProtocolError::KindMismatch {
            envelope: kind,
            payload: inner,
        });
    }
    Ok(message)
}

impl<P: AsRef<[u8]>> Uplink<P> {
    /// The envelope kind this message travels as.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Self::Register(_) => MessageKind::RegistrationRequest,
            Self::Heartbeat(_) => MessageKind::Heartbeat,
            Self::Telemetry(_) => MessageKind::Telemetry,
            Self::Health(_) => MessageKind::HealthReport,
            Self::Transition(_) => MessageKind::LifecycleReport,
            Self::ShadowUpdate(_) => MessageKind::ShadowUpdate,
            Self::ShadowGet(_) => MessageKind::ShadowGet,
            Self::CommandAck(_) => MessageKind::CommandAck,
            Self::OtaProgress(_) => MessageKind::OtaProgress,
            Self::OtaBlockRequest(_) => MessageKind::OtaBlockRequest,
            Self::Decommissioned(_) => MessageKind::Decommission,
        }
    }

    /// The delivery guarantee of this message ([`crate::qos`]).
    pub const fn qos(&self) -> iot_core::QoS {
        crate::qos(self.kind())
    }

    /// Encodes the payload at the start of `buf` and returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ProtocolError> {
        match self {
            Self::Register(m) => put(m, buf),
            Self::Heartbeat(m) => put(m, buf),
            Self::Telemetry(m) => put(m, buf),
            Self::Health(m) => put(m, buf),
            Self::Transition(m) => put(m, buf),
            Self::ShadowUpdate(m) => copy(m.bytes(), buf),
            Self::ShadowGet(m) => put(m, buf),
            Self::CommandAck(m) => put(m, buf),
            Self::OtaProgress(m) => put(m, buf),
            Self::OtaBlockRequest(m) => put(m, buf),
            Self::Decommissioned(m) => put(m, buf),
        }
    }

    /// The payload as a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        match self {
            Self::ShadowUpdate(m) => m.bytes().into(),
            Self::Register(m) => to_vec(m),
            Self::Heartbeat(m) => to_vec(m),
            Self::Telemetry(m) => to_vec(m),
            Self::Health(m) => to_vec(m),
            Self::Transition(m) => to_vec(m),
            Self::ShadowGet(m) => to_vec(m),
            Self::CommandAck(m) => to_vec(m),
            Self::OtaProgress(m) => to_vec(m),
            Self::OtaBlockRequest(m) => to_vec(m),
            Self::Decommissioned(m) => to_vec(m),
        }
    }
}

impl<'b> Uplink<&'b [u8]> {
    /// Decodes the payload of an envelope of `kind` sent by a device. A kind that devices do
    /// not send, a payload that is not what the kind promises, or a shadow message whose own
    /// kind differs from `kind` is refused with a [`ProtocolError`]; nothing panics.
    pub fn decode(kind: MessageKind, payload: &'b [u8]) -> Result<Self, ProtocolError> {
        Ok(match kind {
            MessageKind::RegistrationRequest => Self::Register(get(kind, payload)?),
            MessageKind::Heartbeat => Self::Heartbeat(get(kind, payload)?),
            MessageKind::Telemetry => Self::Telemetry(get(kind, payload)?),
            MessageKind::HealthReport => Self::Health(get(kind, payload)?),
            MessageKind::LifecycleReport => Self::Transition(get(kind, payload)?),
            MessageKind::ShadowUpdate => Self::ShadowUpdate(shadow(kind, payload)?),
            MessageKind::ShadowGet => Self::ShadowGet(get(kind, payload)?),
            MessageKind::CommandAck => Self::CommandAck(get(kind, payload)?),
            MessageKind::OtaProgress => Self::OtaProgress(get(kind, payload)?),
            MessageKind::OtaBlockRequest => Self::OtaBlockRequest(get(kind, payload)?),
            MessageKind::Decommission => Self::Decommissioned(get(kind, payload)?),
            other => return Err(ProtocolError::WrongDirection(other)),
        })
    }
}

impl<P: AsRef<[u8]>> Downlink<P> {
    /// The envelope kind this message travels as.
    pub const fn kind(&self) -> MessageKind {
        match self {
            Self::Registration(_) => MessageKind::RegistrationResponse,
            Self::Shadow(m) => shadow_kind(m.kind()),
            Self::ShadowRejected(_) => MessageKind::ShadowRejected,
            Self::Command(_) => MessageKind::Command,
            Self::Config(_) => MessageKind::ConfigUpdate,
            Self::OtaJob(_) => MessageKind::OtaJob,
            Self::OtaBlock(_) => MessageKind::OtaBlock,
            Self::Decommission(_) => MessageKind::Decommission,
        }
    }

    /// The delivery guarantee of this message ([`crate::qos`]).
    pub const fn qos(&self) -> iot_core::QoS {
        crate::qos(self.kind())
    }

    /// Encodes the payload at the start of `buf` and returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, ProtocolError> {
        match self {
            Self::Registration(m) => put(m, buf),
            Self::Shadow(m) => copy(m.bytes(), buf),
            Self::ShadowRejected(m) => put(m, buf),
            Self::Command(m) => put(m, buf),
            Self::Config(m) => put(m, buf),
            Self::OtaJob(m) => put(m, buf),
            Self::OtaBlock(m) => put(m, buf),
            Self::Decommission(m) => put(m, buf),
        }
    }

    /// The payload as a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        match self {
            Self::Shadow(m) => m.bytes().into(),
            Self::Registration(m) => to_vec(m),
            Self::ShadowRejected(m) => to_vec(m),
            Self::Command(m) => to_vec(m),
            Self::Config(m) => to_vec(m),
            Self::OtaJob(m) => to_vec(m),
            Self::OtaBlock(m) => to_vec(m),
            Self::Decommission(m) => to_vec(m),
        }
    }
}

impl<'b> Downlink<&'b [u8]> {
    /// Decodes the payload of an envelope of `kind` sent by a backend; refuses what a
    /// backend does not send with a [`ProtocolError`].
    pub fn decode(kind: MessageKind, payload: &'b [u8]) -> Result<Self, ProtocolError> {
        Ok(match kind {
            MessageKind::RegistrationResponse => Self::Registration(get(kind, payload)?),
            MessageKind::ShadowDelta
            | MessageKind::ShadowAccepted
            | MessageKind::ShadowDocument => Self::Shadow(shadow(kind, payload)?),
            MessageKind::ShadowRejected => Self::ShadowRejected(get(kind, payload)?),
            MessageKind::Command => Self::Command(get(kind, payload)?),
            MessageKind::ConfigUpdate => Self::Config(get(kind, payload)?),
            MessageKind::OtaJob => Self::OtaJob(get(kind, payload)?),
            MessageKind::OtaBlock => Self::OtaBlock(get(kind, payload)?),
            MessageKind::Decommission => Self::Decommission(get(kind, payload)?),
            other => return Err(ProtocolError::WrongDirection(other)),
        })
    }
}

/// Encodes `value` into a new vector. Encoding into a vector cannot fail.
#[cfg(feature = "alloc")]
fn to_vec<T: Encode<()>>(value: &T) -> alloc::vec::Vec<u8> {
    minicbor::to_vec(value).unwrap_or_default()
}
