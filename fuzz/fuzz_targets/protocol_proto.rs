//! The protobuf forms of the protocol's messages (`iot_protocol::proto`), as a backend
//! that prefers protobuf receives them: the first byte picks the message, the rest is its
//! protobuf encoding. Never panics; what converts into a protocol value converts back to
//! protobuf bytes that give the same value, and that value survives the device's CBOR.
#![no_main]

use iot_protocol::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Decodes `bytes` as `P`, converts to `T`, and checks both round trips.
fn check<P, T>(bytes: &[u8])
where
    P: Message + Default + for<'a> From<&'a T>,
    T: TryFrom<P>
        + PartialEq
        + core::fmt::Debug
        + minicbor::Encode<()>
        + for<'b> minicbor::Decode<'b, ()>,
{
    let Ok(pb) = P::decode(bytes) else {
        return;
    };
    let Ok(value) = T::try_from(pb) else {
        return;
    };
    let again = P::from(&value).encode_to_vec();
    let back = T::try_from(P::decode(again.as_slice()).expect("own bytes decode"))
        .unwrap_or_else(|_| panic!("{value:?} does not convert back"));
    assert_eq!(back, value);
    let cbor = minicbor::to_vec(&value).expect("encodes");
    let from_cbor: T = minicbor::decode(&cbor).expect("own CBOR decodes");
    assert_eq!(from_cbor, value);
}

fuzz_target!(|data: &[u8]| {
    use iot_lifecycle::{command, config, health, ota, registration, state};
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 14 {
        0 => check::<proto::Register, iot_protocol::Register>(bytes),
        1 => check::<proto::RegistrationRequest, registration::RegistrationRequest>(bytes),
        2 => check::<proto::RegistrationResponse, registration::RegistrationResponse>(bytes),
        3 => check::<proto::DeviceConfig, config::DeviceConfig>(bytes),
        4 => check::<proto::Heartbeat, iot_protocol::Heartbeat>(bytes),
        5 => check::<proto::HealthReport, health::HealthReport>(bytes),
        6 => check::<proto::TransitionRecord, state::TransitionRecord>(bytes),
        7 => check::<proto::ShadowRejection, iot_protocol::ShadowRejection>(bytes),
        8 => check::<proto::CommandAck, command::CommandAck>(bytes),
        9 => check::<proto::OtaJob, ota::OtaJob>(bytes),
        10 => check::<proto::OtaProgress, ota::OtaProgress>(bytes),
        11 => check::<proto::AuditRecord, registration::AuditRecord>(bytes),
        12 => check::<proto::ShadowGet, iot_protocol::ShadowGet>(bytes),
        _ => {
            if let Ok(pb) = proto::DecommissionRequest::decode(bytes)
                && let Ok(reason) = registration::DecommissionReason::try_from(pb)
            {
                let again = proto::DecommissionRequest::from(reason).encode_to_vec();
                let back = proto::DecommissionRequest::decode(again.as_slice()).expect("decodes");
                assert_eq!(registration::DecommissionReason::try_from(back), Ok(reason));
            }
        }
    }
});
