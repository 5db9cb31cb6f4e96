#![no_std]
#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub use iot_core;

mod error;
mod message;
mod payload;
#[cfg(feature = "protobuf")]
pub mod proto;

pub use error::ProtocolError;
pub use message::{Downlink, Uplink};
pub use payload::{
    Heartbeat, MAX_READINGS, OTA_BLOCK_SIZE, OtaBlock, OtaBlockRequest, ReadingCounts, Register,
    ShadowBytes, ShadowGet, ShadowRefusal, ShadowRejection, TelemetryBatch,
};

/// The protocol version this crate speaks. A device states it when it registers
/// ([`Register::protocol`]); a backend refuses versions it does not know with
/// `RegistrationRejection::UnsupportedProtocol`.
pub const PROTOCOL_VERSION: u16 = 1;

/// The delivery guarantee the protocol gives each message kind, in both directions.
///
/// | QoS | kinds |
/// |---|---|
/// | at most once | registration, heartbeat, health report, shadow get, OTA block requests and blocks (the device asks again after a loss), transport acks |
/// | at least once | telemetry, shadow update / delta / accepted / document / rejected, command, command ack, configuration, OTA job and progress, lifecycle report, decommissioning |
///
/// At-least-once messages are deduplicated by the receiver (by message id in the transport,
/// and by their own ids or versions in the protocol), so they act exactly once.
pub const fn qos(kind: iot_core::MessageKind) -> iot_core::QoS {
    use iot_core::MessageKind as K;
    match kind {
        K::RegistrationRequest
        | K::RegistrationResponse
        | K::Heartbeat
        | K::HealthReport
        | K::ShadowGet
        | K::OtaBlockRequest
        | K::OtaBlock
        | K::Ack => iot_core::QoS::AtMostOnce,
        _ => iot_core::QoS::AtLeastOnce,
    }
}
