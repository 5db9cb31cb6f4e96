//! A durable fleet backend under load, for the crash test (`tests/durable_crash.rs` kills it
//! with SIGKILL at random moments and restarts it).
//!
//! `durable-crash-backend DB DEVICES`: opens (or creates) the SQLite state at `DB`, imports
//! `DEVICES` identities on first start, registers over the protocol every device the restored
//! fleet does not know yet, then sends shadow updates of random devices in bursts forever.
//! After each burst is durable it prints one line per acknowledged message and flushes:
//! `registered DEVICE` or `shadow DEVICE VERSION`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::durable::{DurableServer, Message};
use iot_fleet::{
    DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope, Session, answer,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
use iot_protocol::{Downlink, PROTOCOL_VERSION, Register, ShadowBytes, Uplink};
use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};
use iot_store::{GroupCommitConfig, SqliteStore};

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("crash-{i:05}")).unwrap()
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [0x3c; 32];
    s[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    s
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn handle_all(server: &mut DurableServer, batch: &[(usize, Vec<u8>, MessageKind)]) -> Vec<Handled> {
    let now = now_ms();
    let messages: Vec<Message<'_>> = batch
        .iter()
        .map(|(i, payload, kind)| Message {
            session: Session::authenticated(id(*i), *i as u64),
            envelope: EnvelopeRef {
                device: id(*i),
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind: *kind,
                payload,
            },
            now_ms: now,
        })
        .collect();
    let ticket = server.submit(&messages);
    server
        .wait(ticket)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

fn register(i: usize, nonce: Option<[u8; 16]>) -> (usize, Vec<u8>, MessageKind) {
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

fn update(i: usize, value: i64) -> (usize, Vec<u8>, MessageKind) {
    let hlc = HlcTimestamp::from_parts(now_ms(), 0, NodeId(9)).unwrap();
    let write = Write::new(
        Section::Reported,
        Path::new("count").unwrap(),
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

fn main() {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .expect("usage: durable-crash-backend DB DEVICES");
    let devices: usize = args.next().expect("DEVICES").parse().unwrap();
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let server = DeviceServer::with_os_rng(Fleet::default(), config, NodeId(1));
    let store = SqliteStore::open(&db).unwrap();
    let mut server = DurableServer::open_at(
        Box::new(store),
        server,
        GroupCommitConfig::default(),
        now_ms(),
    )
    .unwrap();
    let admin = Principal::new(
        "ops",
        TenantId::new("acme").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    if server.server().fleet().saved_identity(&id(0)).is_none() {
        let records = (0..devices)
            .map(|i| ManufacturingRecord {
                device_id: id(i),
                secret: secret(i),
                sku: "TH".into(),
                serial: i as u64,
            })
            .collect();
        server
            .import_manufacturing(&admin, &Scope::root(), records, now_ms())
            .unwrap();
    }
    let mut out = std::io::stdout().lock();

    // Register only the devices the restored fleet does not know.
    let missing: Vec<usize> = (0..devices)
        .filter(|i| server.server().fleet().device_record(&id(*i)).is_none())
        .collect();
    for chunk in missing.chunks(16) {
        let asks: Vec<_> = chunk.iter().map(|&i| register(i, None)).collect();
        let answers: Vec<_> = handle_all(&mut server, &asks)
            .into_iter()
            .zip(chunk)
            .map(|(h, &i)| match h {
                Handled::Replies(r) => match r.as_slice() {
                    [Downlink::Registration(RegistrationResponse::Challenge(n))] => {
                        register(i, Some(*n))
                    }
                    other => panic!("no challenge: {other:?}"),
                },
                Handled::Unhandled => panic!("no challenge"),
            })
            .collect();
        for (h, &i) in handle_all(&mut server, &answers).into_iter().zip(chunk) {
            assert!(matches!(
                h,
                Handled::Replies(ref r)
                    if matches!(r.as_slice(), [Downlink::Registration(RegistrationResponse::Accepted(_))])
            ));
            writeln!(out, "registered {}", id(i)).unwrap();
        }
        out.flush().unwrap();
    }

    // Shadow updates of random devices, forever (until killed).
    let mut rng = now_ms() | 1;
    let mut value = now_ms() as i64;
    loop {
        let burst: Vec<_> = (0..32)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                value += 1;
                update((rng % devices as u64) as usize, value)
            })
            .collect();
        let handled = handle_all(&mut server, &burst);
        for ((i, _, _), h) in burst.iter().zip(handled) {
            assert!(matches!(h, Handled::Replies(_)));
            let version = server
                .server()
                .fleet()
                .device_shadow(&id(*i))
                .map_or(0, iot_shadow::Shadow::version);
            writeln!(out, "shadow {} {version}", id(*i)).unwrap();
        }
        out.flush().unwrap();
    }
}
