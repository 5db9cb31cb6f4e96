//! Devices that speak the protocol by hand to a [`DurableServer`], without an agent:
//! registration by challenge and proof, and reported shadow updates. For tests of the
//! backend's durability under store faults.

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::durable::{DurableError, DurableServer, Message};
use iot_fleet::{
    DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope, Session, answer,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
use iot_protocol::{Downlink, PROTOCOL_VERSION, Register, ShadowBytes, Uplink};
use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};
use iot_store::{GroupCommitConfig, Store};

/// The reported field the devices update.
pub const FIELD: &str = "temp";

/// Device `i`'s id.
#[must_use]
pub fn id(i: u32) -> DeviceId {
    let b = i.to_be_bytes();
    DeviceId::from_mac([0x24, 0x0b, b[0], b[1], b[2], b[3]])
}

/// Device `i`'s manufacturing secret.
#[must_use]
pub fn secret(i: u32) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..4].copy_from_slice(&i.wrapping_add(1).to_be_bytes());
    s
}

/// The operator of the devices' tenant.
///
/// # Panics
/// Never: the tenant name is valid.
#[must_use]
pub fn admin() -> Principal {
    let tenant = TenantId::new("acme").expect("valid tenant");
    Principal::new("ops", tenant, Scope::root(), Role::Admin)
}

/// A fresh server (empty fleet) as the deployment configures it.
#[must_use]
pub fn fresh_server() -> DeviceServer {
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    DeviceServer::with_os_rng(Fleet::default(), config, NodeId(1))
}

/// Opens a durable backend on `store` with a small group-commit queue.
///
/// # Errors
/// What [`DurableServer::open`] returns.
pub fn open(store: Box<dyn Store + Send>) -> Result<DurableServer, DurableError> {
    DurableServer::open(store, fresh_server(), group_config())
}

/// The group-commit configuration of these tests.
#[must_use]
pub const fn group_config() -> GroupCommitConfig {
    GroupCommitConfig {
        queue_capacity: 16,
        max_batch_ops: 1_024,
    }
}

/// One device message: the device's index, the encoded uplink and its kind.
pub type Uplinked = (u32, Vec<u8>, MessageKind);

/// A registration request, with the answer to `nonce` when given.
#[must_use]
pub fn register(i: u32, nonce: Option<[u8; 16]>) -> Uplinked {
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

/// A reported update of [`FIELD`] to `value`, stamped `at_ms`.
///
/// # Panics
/// Never for the values these tests use (a one-field document always encodes).
#[must_use]
pub fn update(i: u32, value: i64, at_ms: u64) -> Uplinked {
    update_field(i, FIELD, value, at_ms)
}

/// A reported update of `field` to `value`, stamped `at_ms`.
///
/// # Panics
/// When `field` is not a valid shadow path.
#[must_use]
pub fn update_field(i: u32, field: &str, value: i64, at_ms: u64) -> Uplinked {
    let hlc = HlcTimestamp::from_parts(at_ms, 0, NodeId(7)).expect("valid stamp");
    let write = Write::new(
        Section::Reported,
        Path::new(field).expect("valid path"),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, Origin::Device),
    );
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token: None,
    };
    let doc = encode_writes_to_vec(&header, &[write]).expect("encodable");
    let m = Uplink::ShadowUpdate(ShadowBytes::new(doc.as_slice()).expect("small document"));
    (i, m.to_vec(), m.kind())
}

/// Hands `batch` to the server as one submission (each device in its authenticated
/// session) and returns one result per message, once durable.
pub fn exchange(
    server: &mut DurableServer,
    batch: &[Uplinked],
    now_ms: u64,
) -> Vec<Result<Handled, DurableError>> {
    let messages: Vec<Message<'_>> = batch
        .iter()
        .map(|(i, payload, kind)| Message {
            session: Session::authenticated(id(*i), u64::from(*i)),
            envelope: EnvelopeRef {
                device: id(*i),
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind: *kind,
                payload,
            },
            now_ms,
        })
        .collect();
    let ticket = server.submit(&messages);
    server.wait(ticket)
}

/// Imports the manufacturing records of `devices`.
///
/// # Errors
/// What [`DurableServer::import_manufacturing`] returns.
pub fn import(
    server: &mut DurableServer,
    devices: impl IntoIterator<Item = u32>,
    now_ms: u64,
) -> Result<(), DurableError> {
    let records = devices
        .into_iter()
        .map(|i| ManufacturingRecord {
            device_id: id(i),
            secret: secret(i),
            sku: "TH".into(),
            serial: u64::from(i),
        })
        .collect();
    server.import_manufacturing(&admin(), &Scope::root(), records, now_ms)?;
    Ok(())
}

/// Registers `devices` (already imported) over the protocol: a challenge, then the proof.
///
/// # Errors
/// The first failure of the server or its store.
///
/// # Panics
/// When the server answers with anything but a challenge, then an acceptance.
pub fn register_all(
    server: &mut DurableServer,
    devices: &[u32],
    now_ms: u64,
) -> Result<(), DurableError> {
    let asks: Vec<_> = devices.iter().map(|&i| register(i, None)).collect();
    let mut answers = Vec::new();
    for (r, &i) in exchange(server, &asks, now_ms).into_iter().zip(devices) {
        match r? {
            Handled::Replies(r) => match r.as_slice() {
                [Downlink::Registration(RegistrationResponse::Challenge(n))] => {
                    answers.push(register(i, Some(*n)));
                }
                other => panic!("no challenge for device {i}: {other:?}"),
            },
            Handled::Unhandled => panic!("no challenge for device {i}"),
        }
    }
    for (r, &i) in exchange(server, &answers, now_ms).into_iter().zip(devices) {
        match r? {
            Handled::Replies(r)
                if matches!(
                    r.as_slice(),
                    [Downlink::Registration(RegistrationResponse::Accepted(_))]
                ) => {}
            other => panic!("device {i} not accepted: {other:?}"),
        }
    }
    Ok(())
}

/// Imports devices `devices` and registers each over the protocol.
///
/// # Errors
/// The first failure of the server or its store.
pub fn enroll(
    server: &mut DurableServer,
    devices: std::ops::Range<u32>,
    now_ms: u64,
) -> Result<(), DurableError> {
    import(server, devices.clone(), now_ms)?;
    let devices: Vec<u32> = devices.collect();
    for chunk in devices.chunks(512) {
        register_all(server, chunk, now_ms)?;
    }
    Ok(())
}

/// Device `i`'s reported [`FIELD`] as the backend holds it.
#[must_use]
pub fn reported(server: &DurableServer, i: u32) -> Option<i64> {
    match server.reported(&admin(), &id(i), FIELD) {
        Some(Value::Int(v)) => Some(v),
        _ => None,
    }
}
