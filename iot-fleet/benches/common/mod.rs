//! Device identities and protocol messages shared by the durable-server benchmarks.

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, NodeId};
use iot_fleet::{Session, answer};
use iot_lifecycle::registration::RegistrationRequest;
use iot_protocol::{PROTOCOL_VERSION, Register, ShadowBytes, Uplink};
use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};

pub(crate) fn id(i: usize) -> DeviceId {
    let b = (i as u32).to_be_bytes();
    DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
}

pub(crate) fn secret(i: usize) -> [u8; 32] {
    let mut s = [0xa5; 32];
    s[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    s
}

pub(crate) fn session(i: usize) -> Session {
    Session::authenticated(id(i), i as u64)
}

pub(crate) fn register(
    i: usize,
    nonce: Option<[u8; 16]>,
) -> (usize, Vec<u8>, iot_core::MessageKind) {
    let device = id(i);
    let m: Uplink<&[u8]> = Uplink::Register(Register {
        protocol: PROTOCOL_VERSION,
        schema: 0,
        request: RegistrationRequest {
            device,
            firmware_version: 1,
            answer: nonce.map(|n| answer(&secret(i), &device, &n)),
        },
    });
    (i, m.to_vec(), m.kind())
}

pub(crate) fn update(i: usize, value: i64, at_ms: u64) -> (usize, Vec<u8>, iot_core::MessageKind) {
    let hlc = HlcTimestamp::from_parts(at_ms, 0, NodeId(7)).unwrap();
    let write = Write::new(
        Section::Reported,
        Path::new("temp").unwrap(),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, Origin::Device),
    );
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token: None,
    };
    let doc = encode_writes_to_vec(&header, &[write]).unwrap();
    let m = Uplink::ShadowUpdate(ShadowBytes::new(doc.as_slice()).unwrap());
    (i, m.to_vec(), m.kind())
}
