//! Protobuf (prost) messages mirroring `proto/protocol.proto`, for backends that prefer
//! protobuf to the devices' CBOR. Feature `protobuf`; needs an allocator.
//!
//! The definitions are written by hand (no `protoc` at build time); a test compiles the
//! published schema with `protox` and checks every message, field number and type against
//! these structs in both directions. Field numbers are the CBOR map keys plus one, and enum
//! values are the CBOR codes (see the schema's header).
//!
//! Each protocol type converts into its protobuf form with `From`, and back with `TryFrom`,
//! which checks what protobuf cannot express (value ranges, lengths, known enum values,
//! finite floats, consistent health flags) the way the CBOR decoders do:
//!
//! ```
//! use iot_protocol::{Heartbeat, proto};
//! use iot_lifecycle::health::HealthStatus;
//! use iot_lifecycle::state::State;
//! use prost::Message;
//!
//! let beat = Heartbeat { seq: 3, uptime_ms: 30_000, state: State::Active, config_version: 1, health: HealthStatus::Healthy, readings: None };
//! let bytes = proto::Heartbeat::from(&beat).encode_to_vec();
//! let back = Heartbeat::try_from(proto::Heartbeat::decode(bytes.as_slice())?)?;
//! assert_eq!(back, beat);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iot_core::DeviceId;
use iot_lifecycle::command::{self, AckOutcome};
use iot_lifecycle::config;
use iot_lifecycle::health::{self, HealthFlags};
use iot_lifecycle::ota;
use iot_lifecycle::registration::{self, ChallengeAnswer as ChallengeAnswerValue};
use iot_lifecycle::state;

use minicbor::encode::write::Cursor;
use minicbor::{Decode, Encode};

use crate::payload;

/// Why a protobuf message does not convert into its protocol type.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A required message field or oneof is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field holds a value its protocol type cannot (out of range, wrong length, unknown
    /// enum value, not finite, inconsistent with another field).
    #[error("invalid value in field {0}")]
    Invalid(&'static str),
}

impl iot_core::Error for ProtoError {
    fn kind(&self) -> iot_core::ErrorKind {
        iot_core::ErrorKind::Decode
    }
}

/// Narrows `value` into `T`, naming `field` if it does not fit.
fn narrow<T: TryFrom<V>, V>(value: V, field: &'static str) -> Result<T, ProtoError> {
    T::try_from(value).map_err(|_| ProtoError::Invalid(field))
}

/// A finite float, as the CBOR codec requires.
fn finite(value: f32, field: &'static str) -> Result<f32, ProtoError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ProtoError::Invalid(field))
    }
}

/// A fixed-length byte array.
fn array<const N: usize>(bytes: &[u8], field: &'static str) -> Result<[u8; N], ProtoError> {
    bytes.try_into().map_err(|_| ProtoError::Invalid(field))
}

fn device(id: &str, field: &'static str) -> Result<DeviceId, ProtoError> {
    DeviceId::new(id).map_err(|_| ProtoError::Invalid(field))
}

/// The wire number of a protocol enum: its CBOR code (every protocol enum is encoded as
/// its bare index), so a value travels as the same number in both encodings, even one a
/// schema does not name yet (protobuf enums are open).
fn wire<T: Encode<()>>(value: T) -> i32 {
    let mut buf = [0u8; 9];
    let mut cursor = Cursor::new(&mut buf[..]);
    if minicbor::encode(value, &mut cursor).is_err() {
        return -1;
    }
    let n = cursor.position();
    buf.get(..n)
        .and_then(|b| minicbor::decode::<u32>(b).ok())
        .and_then(|code| i32::try_from(code).ok())
        .unwrap_or(-1)
}

/// The protocol enum value with wire number `number` (see [`wire`]), naming `field` if
/// there is none.
fn unwire<T: for<'b> Decode<'b, ()>>(number: i32, field: &'static str) -> Result<T, ProtoError> {
    let code = u32::try_from(number).map_err(|_| ProtoError::Invalid(field))?;
    let mut buf = [0u8; 9];
    let mut cursor = Cursor::new(&mut buf[..]);
    minicbor::encode(code, &mut cursor).map_err(|_| ProtoError::Invalid(field))?;
    let n = cursor.position();
    let bytes = buf.get(..n).ok_or(ProtoError::Invalid(field))?;
    minicbor::decode(bytes).map_err(|_| ProtoError::Invalid(field))
}

/// Declares a protobuf enum whose values are a protocol enum's CBOR codes.
macro_rules! mirror_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $code:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum $name {
            $(
                #[doc = concat!("`", stringify!($variant), "` (", stringify!($code), ").")]
                $variant = $code,
            )+
        }
    };
}

mirror_enum! {
    /// `iot.v1.LifecycleState`
    LifecycleState {
        Unprovisioned = 0, Provisioning = 1, Active = 2, Degraded = 3, Maintenance = 4,
        Decommissioned = 5,
    }
}

mirror_enum! {
    /// `iot.v1.LifecycleEvent`
    LifecycleEvent {
        RegistrationInitiated = 0, ConfigComplete = 1, ProvisioningFailed = 2,
        HealthCheckFailed = 3, ScheduledUpdate = 4, NormalOperation = 5, AutoRecovery = 6,
        ManualIntervention = 7, Unrecoverable = 8, UpdateComplete = 9, UpdateFailed = 10,
        EndOfLife = 11,
    }
}

mirror_enum! {
    /// `iot.v1.HealthStatus`
    HealthStatus { Healthy = 0, Warning = 1, Critical = 2 }
}

mirror_enum! {
    /// `iot.v1.RegistrationRejection`
    RegistrationRejection {
        UnknownDevice = 0, InvalidProof = 1, StaleNonce = 2, Revoked = 3,
        UnsupportedFirmware = 4, UnsupportedProtocol = 5, ChallengePending = 6,
    }
}

mirror_enum! {
    /// `iot.v1.ShadowRefusal`
    ShadowRefusal {
        Conflict = 0, Limit = 1, ClockDrift = 2, Invalid = 3, Forbidden = 4,
    }
}

mirror_enum! {
    /// `iot.v1.CommandRejectReason`
    CommandRejectReason {
        Expired = 0, Unsupported = 1, InvalidArguments = 2, InvalidState = 3, Busy = 4,
        Failed = 5, ConfigStale = 6, ConfigInvalid = 7,
    }
}

mirror_enum! {
    /// `iot.v1.OtaState`
    OtaState {
        Idle = 0, Downloading = 1, Downloaded = 2, Verifying = 3, Updating = 4, Testing = 5,
        Confirmed = 6, RolledBack = 7,
    }
}

mirror_enum! {
    /// `iot.v1.RollbackReason`
    RollbackReason { VerificationFailed = 0, NotConfirmed = 1 }
}

mirror_enum! {
    /// `iot.v1.DecommissionReason`
    DecommissionReason {
        EndOfLife = 0, Unrecoverable = 1, Compromised = 2, OperatorRequest = 3,
    }
}

/// `iot.v1.ChallengeAnswer`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChallengeAnswer {
    /// The backend's nonce (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub nonce: Vec<u8>,
    /// HMAC-SHA256 proof over it (32 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub proof: Vec<u8>,
}

/// `iot.v1.RegistrationRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegistrationRequest {
    /// Device id.
    #[prost(string, tag = "1")]
    pub device: String,
    /// Firmware version.
    #[prost(uint32, tag = "2")]
    pub firmware_version: u32,
    /// The answer to the challenge, in the second request.
    #[prost(message, optional, tag = "3")]
    pub answer: Option<ChallengeAnswer>,
}

/// `iot.v1.Register`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Register {
    /// Protocol version.
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// Shadow schema id.
    #[prost(uint32, tag = "2")]
    pub schema: u32,
    /// The request.
    #[prost(message, optional, tag = "3")]
    pub request: Option<RegistrationRequest>,
}

/// `iot.v1.HealthThresholds`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct HealthThresholds {
    /// [`HealthThresholds::battery_warning_percent`](iot_lifecycle::health::HealthThresholds::battery_warning_percent).
    #[prost(uint32, tag = "1")]
    pub battery_warning_percent: u32,
    /// [`HealthThresholds::battery_critical_percent`](iot_lifecycle::health::HealthThresholds::battery_critical_percent).
    #[prost(uint32, tag = "2")]
    pub battery_critical_percent: u32,
    /// [`HealthThresholds::battery_warning_mv`](iot_lifecycle::health::HealthThresholds::battery_warning_mv).
    #[prost(uint32, tag = "3")]
    pub battery_warning_mv: u32,
    /// [`HealthThresholds::battery_critical_mv`](iot_lifecycle::health::HealthThresholds::battery_critical_mv).
    #[prost(uint32, tag = "4")]
    pub battery_critical_mv: u32,
    /// [`HealthThresholds::rssi_warning_dbm`](iot_lifecycle::health::HealthThresholds::rssi_warning_dbm).
    #[prost(sint32, tag = "5")]
    pub rssi_warning_dbm: i32,
    /// [`HealthThresholds::rssi_critical_dbm`](iot_lifecycle::health::HealthThresholds::rssi_critical_dbm).
    #[prost(sint32, tag = "6")]
    pub rssi_critical_dbm: i32,
    /// [`HealthThresholds::send_failures_warning`](iot_lifecycle::health::HealthThresholds::send_failures_warning).
    #[prost(uint32, tag = "7")]
    pub send_failures_warning: u32,
    /// [`HealthThresholds::send_failures_critical`](iot_lifecycle::health::HealthThresholds::send_failures_critical).
    #[prost(uint32, tag = "8")]
    pub send_failures_critical: u32,
    /// [`HealthThresholds::stuck_readings`](iot_lifecycle::health::HealthThresholds::stuck_readings).
    #[prost(uint32, tag = "9")]
    pub stuck_readings: u32,
    /// [`HealthThresholds::reading_min`](iot_lifecycle::health::HealthThresholds::reading_min).
    #[prost(float, tag = "10")]
    pub reading_min: f32,
    /// [`HealthThresholds::reading_max`](iot_lifecycle::health::HealthThresholds::reading_max).
    #[prost(float, tag = "11")]
    pub reading_max: f32,
    /// [`HealthThresholds::free_memory_warning_bytes`](iot_lifecycle::health::HealthThresholds::free_memory_warning_bytes).
    #[prost(uint32, tag = "12")]
    pub free_memory_warning_bytes: u32,
    /// [`HealthThresholds::free_memory_critical_bytes`](iot_lifecycle::health::HealthThresholds::free_memory_critical_bytes).
    #[prost(uint32, tag = "13")]
    pub free_memory_critical_bytes: u32,
    /// [`HealthThresholds::errors_warning`](iot_lifecycle::health::HealthThresholds::errors_warning).
    #[prost(uint32, tag = "14")]
    pub errors_warning: u32,
    /// [`HealthThresholds::errors_critical`](iot_lifecycle::health::HealthThresholds::errors_critical).
    #[prost(uint32, tag = "15")]
    pub errors_critical: u32,
    /// [`HealthThresholds::recent_reboot_ms`](iot_lifecycle::health::HealthThresholds::recent_reboot_ms).
    #[prost(uint32, tag = "16")]
    pub recent_reboot_ms: u32,
    /// [`HealthThresholds::recovery_checks`](iot_lifecycle::health::HealthThresholds::recovery_checks).
    #[prost(uint32, tag = "17")]
    pub recovery_checks: u32,
}

/// `iot.v1.DeviceConfig`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct DeviceConfig {
    /// [`DeviceConfig::version`](iot_lifecycle::config::DeviceConfig::version).
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// [`DeviceConfig::heartbeat_interval_ms`](iot_lifecycle::config::DeviceConfig::heartbeat_interval_ms).
    #[prost(uint32, tag = "2")]
    pub heartbeat_interval_ms: u32,
    /// [`DeviceConfig::telemetry_interval_ms`](iot_lifecycle::config::DeviceConfig::telemetry_interval_ms).
    #[prost(uint32, tag = "3")]
    pub telemetry_interval_ms: u32,
    /// [`DeviceConfig::health_interval_ms`](iot_lifecycle::config::DeviceConfig::health_interval_ms).
    #[prost(uint32, tag = "4")]
    pub health_interval_ms: u32,
    /// [`DeviceConfig::sync_interval_ms`](iot_lifecycle::config::DeviceConfig::sync_interval_ms).
    #[prost(uint32, tag = "5")]
    pub sync_interval_ms: u32,
    /// [`DeviceConfig::telemetry_deadband`](iot_lifecycle::config::DeviceConfig::telemetry_deadband).
    #[prost(float, tag = "6")]
    pub telemetry_deadband: f32,
    /// [`DeviceConfig::degraded_telemetry_factor`](iot_lifecycle::config::DeviceConfig::degraded_telemetry_factor).
    #[prost(uint32, tag = "7")]
    pub degraded_telemetry_factor: u32,
    /// [`DeviceConfig::thresholds`](iot_lifecycle::config::DeviceConfig::thresholds).
    #[prost(message, optional, tag = "8")]
    pub thresholds: Option<HealthThresholds>,
}

/// `iot.v1.RegistrationResponse`
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegistrationResponse {
    /// The answer.
    #[prost(oneof = "registration_response::Response", tags = "1, 2, 3")]
    pub response: Option<registration_response::Response>,
}

/// Nested types of [`RegistrationResponse`].
pub mod registration_response {
    /// `iot.v1.RegistrationResponse.response`
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        /// A 16-byte nonce to sign.
        #[prost(bytes, tag = "1")]
        Challenge(alloc::vec::Vec<u8>),
        /// Registered, with the initial configuration.
        #[prost(message, tag = "2")]
        Accepted(super::DeviceConfig),
        /// Refused.
        #[prost(enumeration = "super::RegistrationRejection", tag = "3")]
        Rejected(i32),
    }
}

/// `iot.v1.Heartbeat`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Heartbeat {
    /// Heartbeat counter since boot.
    #[prost(uint32, tag = "1")]
    pub seq: u32,
    /// Milliseconds since the agent started.
    #[prost(uint64, tag = "2")]
    pub uptime_ms: u64,
    /// Lifecycle state.
    #[prost(enumeration = "LifecycleState", tag = "3")]
    pub state: i32,
    /// Configuration version in force.
    #[prost(uint32, tag = "4")]
    pub config_version: u32,
    /// Latest health verdict.
    #[prost(enumeration = "HealthStatus", tag = "5")]
    pub health: i32,
    /// Readings sampled and sent since boot.
    #[prost(message, optional, tag = "6")]
    pub readings: Option<ReadingCounts>,
}

/// `iot.v1.ReadingCounts`
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ReadingCounts {
    /// Readings taken (sent or held back).
    #[prost(uint32, tag = "1")]
    pub sampled: u32,
    /// Readings sent.
    #[prost(uint32, tag = "2")]
    pub sent: u32,
}

/// `iot.v1.HealthReport`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct HealthReport {
    /// The verdict.
    #[prost(enumeration = "HealthStatus", tag = "1")]
    pub status: i32,
    /// Conditions at warning level (bit set).
    #[prost(uint32, tag = "2")]
    pub warnings: u32,
    /// Conditions at critical level (bit set).
    #[prost(uint32, tag = "3")]
    pub critical: u32,
    /// Uptime when checked.
    #[prost(uint64, tag = "4")]
    pub uptime_ms: u64,
}

/// `iot.v1.TransitionRecord`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct TransitionRecord {
    /// The state left.
    #[prost(enumeration = "LifecycleState", tag = "1")]
    pub from_state: i32,
    /// What happened.
    #[prost(enumeration = "LifecycleEvent", tag = "2")]
    pub event: i32,
    /// The state entered.
    #[prost(enumeration = "LifecycleState", tag = "3")]
    pub to_state: i32,
    /// Device time of the transition.
    #[prost(uint64, tag = "4")]
    pub at_ms: u64,
}

/// `iot.v1.ShadowGet`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ShadowGet {
    /// The document version the device holds.
    #[prost(uint64, tag = "1")]
    pub version: u64,
}

/// `iot.v1.ShadowRejection`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ShadowRejection {
    /// Why.
    #[prost(enumeration = "ShadowRefusal", tag = "1")]
    pub reason: i32,
    /// The backend's document version.
    #[prost(uint64, tag = "2")]
    pub version: u64,
}

/// `iot.v1.CommandAccepted`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct CommandAccepted {}

/// `iot.v1.CommandAck`
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandAck {
    /// The command answered.
    #[prost(uint32, tag = "1")]
    pub command_id: u32,
    /// What became of it.
    #[prost(oneof = "command_ack::Outcome", tags = "2, 3, 4")]
    pub outcome: Option<command_ack::Outcome>,
}

/// Nested types of [`CommandAck`].
pub mod command_ack {
    /// `iot.v1.CommandAck.outcome`
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Outcome {
        /// Accepted.
        #[prost(message, tag = "2")]
        Accepted(super::CommandAccepted),
        /// Not carried out.
        #[prost(enumeration = "super::CommandRejectReason", tag = "3")]
        Rejected(i32),
        /// Done, with a result of at most 64 bytes.
        #[prost(bytes, tag = "4")]
        Completed(alloc::vec::Vec<u8>),
    }
}

/// `iot.v1.OtaBlockRequest`
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtaBlockRequest {
    /// The image version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The first byte wanted.
    #[prost(uint32, tag = "2")]
    pub offset: u32,
}

/// `iot.v1.OtaBlock`
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtaBlock {
    /// The image version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Where the data starts in the image.
    #[prost(uint32, tag = "2")]
    pub offset: u32,
    /// At most 256 bytes of the image.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// `iot.v1.OtaJob`
#[derive(Clone, PartialEq, prost::Message)]
pub struct OtaJob {
    /// The image's firmware version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The image size in bytes.
    #[prost(uint32, tag = "2")]
    pub size: u32,
    /// SHA-256 of the image (32 bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub sha256: Vec<u8>,
}

/// `iot.v1.OtaProgress`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct OtaProgress {
    /// Where the update stands.
    #[prost(enumeration = "OtaState", tag = "1")]
    pub state: i32,
    /// The image being installed, if any.
    #[prost(uint32, optional, tag = "2")]
    pub version: Option<u32>,
    /// The next image offset the device expects.
    #[prost(uint32, tag = "3")]
    pub next_offset: u32,
    /// Why the update was rolled back, if it was.
    #[prost(enumeration = "RollbackReason", optional, tag = "4")]
    pub rollback: Option<i32>,
}

/// `iot.v1.DecommissionRequest`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct DecommissionRequest {
    /// Why.
    #[prost(enumeration = "DecommissionReason", tag = "1")]
    pub reason: i32,
}

/// `iot.v1.AuditRecord`
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditRecord {
    /// The decommissioned device.
    #[prost(string, tag = "1")]
    pub device: String,
    /// When.
    #[prost(uint64, tag = "2")]
    pub at_ms: u64,
    /// Why.
    #[prost(enumeration = "DecommissionReason", tag = "3")]
    pub reason: i32,
    /// The state it left.
    #[prost(enumeration = "LifecycleState", tag = "4")]
    pub from_state: i32,
    /// The event that decommissioned it.
    #[prost(enumeration = "LifecycleEvent", tag = "5")]
    pub event: i32,
}

impl From<&ChallengeAnswerValue> for ChallengeAnswer {
    fn from(a: &ChallengeAnswerValue) -> Self {
        Self {
            nonce: a.nonce.to_vec(),
            proof: a.proof.to_vec(),
        }
    }
}

impl TryFrom<ChallengeAnswer> for ChallengeAnswerValue {
    type Error = ProtoError;
    fn try_from(a: ChallengeAnswer) -> Result<Self, ProtoError> {
        Ok(Self {
            nonce: array(&a.nonce, "ChallengeAnswer.nonce")?,
            proof: array(&a.proof, "ChallengeAnswer.proof")?,
        })
    }
}

impl From<&registration::RegistrationRequest> for RegistrationRequest {
    fn from(r: &registration::RegistrationRequest) -> Self {
        Self {
            device: r.device.as_str().to_string(),
            firmware_version: r.firmware_version,
            answer: r.answer.as_ref().map(ChallengeAnswer::from),
        }
    }
}

impl TryFrom<RegistrationRequest> for registration::RegistrationRequest {
    type Error = ProtoError;
    fn try_from(r: RegistrationRequest) -> Result<Self, ProtoError> {
        Ok(Self {
            device: device(&r.device, "RegistrationRequest.device")?,
            firmware_version: r.firmware_version,
            answer: r.answer.map(ChallengeAnswerValue::try_from).transpose()?,
        })
    }
}

impl From<&payload::Register> for Register {
    fn from(r: &payload::Register) -> Self {
        Self {
            protocol: u32::from(r.protocol),
            schema: r.schema,
            request: Some(RegistrationRequest::from(&r.request)),
        }
    }
}

impl TryFrom<Register> for payload::Register {
    type Error = ProtoError;
    fn try_from(r: Register) -> Result<Self, ProtoError> {
        let request = r.request.ok_or(ProtoError::Missing("Register.request"))?;
        Ok(Self {
            protocol: narrow(r.protocol, "Register.protocol")?,
            schema: r.schema,
            request: request.try_into()?,
        })
    }
}

impl From<&health::HealthThresholds> for HealthThresholds {
    fn from(t: &health::HealthThresholds) -> Self {
        Self {
            battery_warning_percent: t.battery_warning_percent.into(),
            battery_critical_percent: t.battery_critical_percent.into(),
            battery_warning_mv: t.battery_warning_mv.into(),
            battery_critical_mv: t.battery_critical_mv.into(),
            rssi_warning_dbm: t.rssi_warning_dbm.into(),
            rssi_critical_dbm: t.rssi_critical_dbm.into(),
            send_failures_warning: t.send_failures_warning.into(),
            send_failures_critical: t.send_failures_critical.into(),
            stuck_readings: t.stuck_readings.into(),
            reading_min: t.reading_min,
            reading_max: t.reading_max,
            free_memory_warning_bytes: t.free_memory_warning_bytes,
            free_memory_critical_bytes: t.free_memory_critical_bytes,
            errors_warning: t.errors_warning,
            errors_critical: t.errors_critical,
            recent_reboot_ms: t.recent_reboot_ms,
            recovery_checks: t.recovery_checks.into(),
        }
    }
}

impl TryFrom<HealthThresholds> for health::HealthThresholds {
    type Error = ProtoError;
    fn try_from(t: HealthThresholds) -> Result<Self, ProtoError> {
        const P: &str = "HealthThresholds";
        Ok(Self {
            battery_warning_percent: narrow(t.battery_warning_percent, P)?,
            battery_critical_percent: narrow(t.battery_critical_percent, P)?,
            battery_warning_mv: narrow(t.battery_warning_mv, P)?,
            battery_critical_mv: narrow(t.battery_critical_mv, P)?,
            rssi_warning_dbm: narrow(t.rssi_warning_dbm, P)?,
            rssi_critical_dbm: narrow(t.rssi_critical_dbm, P)?,
            send_failures_warning: narrow(t.send_failures_warning, P)?,
            send_failures_critical: narrow(t.send_failures_critical, P)?,
            stuck_readings: narrow(t.stuck_readings, P)?,
            reading_min: finite(t.reading_min, P)?,
            reading_max: finite(t.reading_max, P)?,
            free_memory_warning_bytes: t.free_memory_warning_bytes,
            free_memory_critical_bytes: t.free_memory_critical_bytes,
            errors_warning: t.errors_warning,
            errors_critical: t.errors_critical,
            recent_reboot_ms: t.recent_reboot_ms,
            recovery_checks: narrow(t.recovery_checks, P)?,
        })
    }
}

impl From<&config::DeviceConfig> for DeviceConfig {
    fn from(c: &config::DeviceConfig) -> Self {
        Self {
            version: c.version,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            telemetry_interval_ms: c.telemetry_interval_ms,
            health_interval_ms: c.health_interval_ms,
            sync_interval_ms: c.sync_interval_ms,
            telemetry_deadband: c.telemetry_deadband,
            degraded_telemetry_factor: c.degraded_telemetry_factor.into(),
            thresholds: Some(HealthThresholds::from(&c.thresholds)),
        }
    }
}

impl TryFrom<DeviceConfig> for config::DeviceConfig {
    type Error = ProtoError;
    fn try_from(c: DeviceConfig) -> Result<Self, ProtoError> {
        let thresholds = c
            .thresholds
            .ok_or(ProtoError::Missing("DeviceConfig.thresholds"))?;
        Ok(Self {
            version: c.version,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            telemetry_interval_ms: c.telemetry_interval_ms,
            health_interval_ms: c.health_interval_ms,
            sync_interval_ms: c.sync_interval_ms,
            telemetry_deadband: finite(c.telemetry_deadband, "DeviceConfig.telemetry_deadband")?,
            degraded_telemetry_factor: narrow(
                c.degraded_telemetry_factor,
                "DeviceConfig.degraded_telemetry_factor",
            )?,
            thresholds: thresholds.try_into()?,
        })
    }
}

impl From<&registration::RegistrationResponse> for RegistrationResponse {
    fn from(r: &registration::RegistrationResponse) -> Self {
        use registration::RegistrationResponse as R;
        use registration_response::Response;
        let response = match r {
            R::Challenge(nonce) => Response::Challenge(nonce.to_vec()),
            R::Accepted(config) => Response::Accepted(DeviceConfig::from(config)),
            R::Rejected(reason) => Response::Rejected(wire(*reason)),
        };
        Self {
            response: Some(response),
        }
    }
}

impl TryFrom<RegistrationResponse> for registration::RegistrationResponse {
    type Error = ProtoError;
    fn try_from(r: RegistrationResponse) -> Result<Self, ProtoError> {
        use registration_response::Response;
        Ok(
            match r
                .response
                .ok_or(ProtoError::Missing("RegistrationResponse.response"))?
            {
                Response::Challenge(nonce) => {
                    Self::Challenge(array(&nonce, "RegistrationResponse.challenge")?)
                }
                Response::Accepted(config) => Self::Accepted(config.try_into()?),
                Response::Rejected(reason) => {
                    Self::Rejected(unwire(reason, "RegistrationResponse.rejected")?)
                }
            },
        )
    }
}

impl From<&payload::Heartbeat> for Heartbeat {
    fn from(h: &payload::Heartbeat) -> Self {
        Self {
            seq: h.seq,
            uptime_ms: h.uptime_ms,
            state: wire(h.state),
            config_version: h.config_version,
            health: wire(h.health),
            readings: h.readings.map(|r| ReadingCounts {
                sampled: r.sampled,
                sent: r.sent,
            }),
        }
    }
}

impl TryFrom<Heartbeat> for payload::Heartbeat {
    type Error = ProtoError;
    fn try_from(h: Heartbeat) -> Result<Self, ProtoError> {
        Ok(Self {
            seq: h.seq,
            uptime_ms: h.uptime_ms,
            state: unwire(h.state, "Heartbeat.state")?,
            config_version: h.config_version,
            health: unwire(h.health, "Heartbeat.health")?,
            readings: h.readings.map(|r| payload::ReadingCounts {
                sampled: r.sampled,
                sent: r.sent,
            }),
        })
    }
}

impl From<&health::HealthReport> for HealthReport {
    fn from(r: &health::HealthReport) -> Self {
        Self {
            status: wire(r.status),
            warnings: r.warnings.bits().into(),
            critical: r.critical.bits().into(),
            uptime_ms: r.uptime_ms,
        }
    }
}

impl TryFrom<HealthReport> for health::HealthReport {
    type Error = ProtoError;
    fn try_from(r: HealthReport) -> Result<Self, ProtoError> {
        let flags = |bits: u32, field| {
            narrow::<u16, _>(bits, field)
                .ok()
                .and_then(HealthFlags::from_bits)
                .ok_or(ProtoError::Invalid(field))
        };
        let warnings = flags(r.warnings, "HealthReport.warnings")?;
        let critical = flags(r.critical, "HealthReport.critical")?;
        let status = unwire(r.status, "HealthReport.status")?;
        // As the CBOR decoder does: the status follows from the flags, and a condition is
        // never both a warning and critical.
        let report = Self::from_flags(warnings, critical, r.uptime_ms);
        if report.status != status || report.warnings != warnings {
            return Err(ProtoError::Invalid("HealthReport.status"));
        }
        Ok(report)
    }
}

impl From<&state::TransitionRecord> for TransitionRecord {
    fn from(t: &state::TransitionRecord) -> Self {
        Self {
            from_state: wire(t.from),
            event: wire(t.event),
            to_state: wire(t.to),
            at_ms: t.at_ms,
        }
    }
}

impl TryFrom<TransitionRecord> for state::TransitionRecord {
    type Error = ProtoError;
    fn try_from(t: TransitionRecord) -> Result<Self, ProtoError> {
        Ok(Self {
            from: unwire(t.from_state, "TransitionRecord.from_state")?,
            event: unwire(t.event, "TransitionRecord.event")?,
            to: unwire(t.to_state, "TransitionRecord.to_state")?,
            at_ms: t.at_ms,
        })
    }
}

impl From<&payload::ShadowGet> for ShadowGet {
    fn from(g: &payload::ShadowGet) -> Self {
        Self { version: g.version }
    }
}

impl From<ShadowGet> for payload::ShadowGet {
    fn from(g: ShadowGet) -> Self {
        Self { version: g.version }
    }
}

impl From<&payload::ShadowRejection> for ShadowRejection {
    fn from(r: &payload::ShadowRejection) -> Self {
        Self {
            reason: wire(r.reason),
            version: r.version,
        }
    }
}

impl TryFrom<ShadowRejection> for payload::ShadowRejection {
    type Error = ProtoError;
    fn try_from(r: ShadowRejection) -> Result<Self, ProtoError> {
        Ok(Self {
            reason: unwire(r.reason, "ShadowRejection.reason")?,
            version: r.version,
        })
    }
}

impl From<&command::CommandAck> for CommandAck {
    fn from(a: &command::CommandAck) -> Self {
        use command_ack::Outcome;
        let outcome = match &a.outcome {
            AckOutcome::Accepted => Outcome::Accepted(CommandAccepted {}),
            AckOutcome::Rejected(reason) => Outcome::Rejected(wire(*reason)),
            AckOutcome::Completed(result) => Outcome::Completed(result.to_vec()),
        };
        Self {
            command_id: a.command_id,
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<CommandAck> for command::CommandAck {
    type Error = ProtoError;
    fn try_from(a: CommandAck) -> Result<Self, ProtoError> {
        use command_ack::Outcome;
        let outcome = match a.outcome.ok_or(ProtoError::Missing("CommandAck.outcome"))? {
            Outcome::Accepted(CommandAccepted {}) => AckOutcome::Accepted,
            Outcome::Rejected(reason) => {
                AckOutcome::Rejected(unwire(reason, "CommandAck.rejected")?)
            }
            Outcome::Completed(result) => AckOutcome::Completed(
                command::ResultPayload::from_slice(&result)
                    .map_err(|_| ProtoError::Invalid("CommandAck.completed"))?,
            ),
        };
        Ok(Self {
            command_id: a.command_id,
            outcome,
        })
    }
}

impl From<&payload::OtaBlockRequest> for OtaBlockRequest {
    fn from(r: &payload::OtaBlockRequest) -> Self {
        Self {
            version: r.version,
            offset: r.offset,
        }
    }
}

impl TryFrom<OtaBlockRequest> for payload::OtaBlockRequest {
    type Error = ProtoError;
    fn try_from(r: OtaBlockRequest) -> Result<Self, ProtoError> {
        Ok(Self {
            version: r.version,
            offset: r.offset,
        })
    }
}

impl<P: AsRef<[u8]>> From<&payload::OtaBlock<P>> for OtaBlock {
    fn from(b: &payload::OtaBlock<P>) -> Self {
        Self {
            version: b.version,
            offset: b.offset,
            data: b.data.as_ref().to_vec(),
        }
    }
}

impl TryFrom<OtaBlock> for payload::OtaBlock<Vec<u8>> {
    type Error = ProtoError;
    fn try_from(b: OtaBlock) -> Result<Self, ProtoError> {
        if b.data.len() > payload::OTA_BLOCK_SIZE {
            return Err(ProtoError::Invalid("OtaBlock.data"));
        }
        Ok(Self {
            version: b.version,
            offset: b.offset,
            data: b.data,
        })
    }
}

impl From<&ota::OtaJob> for OtaJob {
    fn from(j: &ota::OtaJob) -> Self {
        Self {
            version: j.version,
            size: j.size,
            sha256: j.sha256.to_vec(),
        }
    }
}

impl TryFrom<OtaJob> for ota::OtaJob {
    type Error = ProtoError;
    fn try_from(j: OtaJob) -> Result<Self, ProtoError> {
        Ok(Self {
            version: j.version,
            size: j.size,
            sha256: array(&j.sha256, "OtaJob.sha256")?,
        })
    }
}

impl From<&ota::OtaProgress> for OtaProgress {
    fn from(p: &ota::OtaProgress) -> Self {
        Self {
            state: wire(p.state),
            version: p.version,
            next_offset: p.next_offset,
            rollback: p.rollback.map(wire),
        }
    }
}

impl TryFrom<OtaProgress> for ota::OtaProgress {
    type Error = ProtoError;
    fn try_from(p: OtaProgress) -> Result<Self, ProtoError> {
        Ok(Self {
            state: unwire(p.state, "OtaProgress.state")?,
            version: p.version,
            next_offset: p.next_offset,
            rollback: p
                .rollback
                .map(|r| unwire(r, "OtaProgress.rollback"))
                .transpose()?,
        })
    }
}

impl From<registration::DecommissionReason> for DecommissionRequest {
    fn from(reason: registration::DecommissionReason) -> Self {
        Self {
            reason: wire(reason),
        }
    }
}

impl TryFrom<DecommissionRequest> for registration::DecommissionReason {
    type Error = ProtoError;
    fn try_from(r: DecommissionRequest) -> Result<Self, ProtoError> {
        unwire(r.reason, "DecommissionRequest.reason")
    }
}

impl From<&registration::AuditRecord> for AuditRecord {
    fn from(r: &registration::AuditRecord) -> Self {
        Self {
            device: r.device.as_str().to_string(),
            at_ms: r.at_ms,
            reason: wire(r.reason),
            from_state: wire(r.from),
            event: wire(r.event),
        }
    }
}

impl TryFrom<AuditRecord> for registration::AuditRecord {
    type Error = ProtoError;
    fn try_from(r: AuditRecord) -> Result<Self, ProtoError> {
        Ok(Self {
            device: device(&r.device, "AuditRecord.device")?,
            at_ms: r.at_ms,
            reason: unwire(r.reason, "AuditRecord.reason")?,
            from: unwire(r.from_state, "AuditRecord.from_state")?,
            event: unwire(r.event, "AuditRecord.event")?,
        })
    }
}
