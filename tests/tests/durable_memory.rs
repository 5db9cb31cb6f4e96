//! Memory of the durable backend does not grow with uptime: a few thousand devices register
//! over the protocol and then send shadow updates round after round (each one a new
//! document version and a new audit entry, made durable in SQLite before it is
//! acknowledged). The live heap of the process after the first round and after many more
//! rounds is the same up to a small constant, because the audit trail lives in the store and
//! the binding keeps no per-message state.
//!
//! The allocator counts Rust allocations (`stats_alloc`); SQLite's own page cache is bounded
//! by its configuration and allocated outside it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_wrap,
    missing_docs
)]

use std::alloc::System;

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, EnvelopeRef, MessageId, NodeId, TenantId};
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
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEVICES: usize = 3_000;
const START: u64 = 1_000_000;

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("dev-{i:06}")).unwrap()
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    s
}

/// One device's messages: the payload bytes and who sent them.
fn submit(server: &mut DurableServer, batch: &[(usize, Uplink<&[u8]>)], now: u64) -> Vec<Handled> {
    let payloads: Vec<Vec<u8>> = batch.iter().map(|(_, m)| m.to_vec()).collect();
    let messages: Vec<Message<'_>> = batch
        .iter()
        .zip(&payloads)
        .map(|((i, m), payload)| Message {
            session: Session::authenticated(id(*i), *i as u64),
            envelope: EnvelopeRef {
                device: id(*i),
                seq: 0,
                id: MessageId(0),
                qos: m.qos(),
                kind: m.kind(),
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

fn register(i: usize, nonce: Option<[u8; 16]>) -> Uplink<&'static [u8]> {
    let device = id(i);
    Uplink::Register(Register {
        protocol: PROTOCOL_VERSION,
        schema: 0,
        request: RegistrationRequest {
            device,
            firmware_version: 1,
            answer: nonce.map(|n| answer(&secret(i), &device, &n)),
        },
    })
}

fn update(value: i64, at_ms: u64) -> Vec<u8> {
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
    encode_writes_to_vec(&header, &[write]).unwrap()
}

/// Every device sends one shadow update with a new value; all are acknowledged.
fn round(server: &mut DurableServer, round: u64) {
    let now = START + round * 1_000;
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(500) {
        let docs: Vec<Vec<u8>> = chunk
            .iter()
            .map(|i| update((round * 10_000 + *i as u64) as i64, now))
            .collect();
        let batch: Vec<(usize, Uplink<&[u8]>)> = chunk
            .iter()
            .zip(&docs)
            .map(|(i, d)| {
                (
                    *i,
                    Uplink::ShadowUpdate(ShadowBytes::new(d.as_slice()).unwrap()),
                )
            })
            .collect();
        for handled in submit(server, &batch, now) {
            assert!(matches!(
                handled,
                Handled::Replies(ref r) if matches!(r.as_slice(), [Downlink::Shadow(_)])
            ));
        }
    }
}

fn live_bytes(region: &Region<'_, System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[test]
fn memory_does_not_grow_with_uptime() {
    let dir = tempfile::tempdir().unwrap();
    let region = Region::new(GLOBAL);
    let store = SqliteStore::open(dir.path().join("fleet.db")).unwrap();
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let server = DeviceServer::with_os_rng(Fleet::default(), config, NodeId(1));
    let mut server =
        DurableServer::open(Box::new(store), server, GroupCommitConfig::default()).unwrap();
    let admin = Principal::new(
        "ops",
        TenantId::new("acme").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let records = (0..DEVICES)
        .map(|i| ManufacturingRecord {
            device_id: id(i),
            secret: secret(i),
            sku: "TH".into(),
            serial: i as u64,
        })
        .collect();
    server
        .import_manufacturing(&admin, &Scope::root(), records, START)
        .unwrap();

    // Register every device over the protocol: challenge, then the answer.
    let challenges: Vec<(usize, Uplink<&[u8]>)> =
        (0..DEVICES).map(|i| (i, register(i, None))).collect();
    let nonces: Vec<[u8; 16]> = submit(&mut server, &challenges, START)
        .into_iter()
        .map(|h| match h {
            Handled::Replies(r) => match r.as_slice() {
                [Downlink::Registration(RegistrationResponse::Challenge(n))] => *n,
                other => panic!("no challenge: {other:?}"),
            },
            Handled::Unhandled => panic!("no challenge"),
        })
        .collect();
    let answers: Vec<(usize, Uplink<&[u8]>)> = nonces
        .iter()
        .enumerate()
        .map(|(i, n)| (i, register(i, Some(*n))))
        .collect();
    for h in submit(&mut server, &answers, START) {
        assert!(matches!(
            h,
            Handled::Replies(ref r)
                if matches!(r.as_slice(), [Downlink::Registration(RegistrationResponse::Accepted(_))])
        ));
    }
    assert_eq!(server.server().fleet().registered_count(), DEVICES);

    // Warm up: every device gets a shadow, every buffer reaches its working size.
    round(&mut server, 1);
    round(&mut server, 2);
    let warm = live_bytes(&region);
    let per_device = warm / DEVICES as isize;
    println!("live heap after registration and 2 rounds: {warm} B, {per_device} B per device");

    const ROUNDS: u64 = 20;
    for r in 3..3 + ROUNDS {
        round(&mut server, r);
    }
    let later = live_bytes(&region);
    let growth = later - warm;
    println!(
        "after {ROUNDS} more rounds ({} durable updates): live heap {later} B, growth {growth} B",
        ROUNDS * DEVICES as u64
    );
    assert!(server.server().fleet().audit_log().is_empty());
    // An in-memory audit trail alone would add about 280 B per update (16 MB here); what
    // moves between rounds is a few buffers in flight (about 220 KB), not per-update state.
    assert!(
        growth.abs() < 512 * 1024,
        "live heap grew by {growth} B over {ROUNDS} rounds"
    );

    let mut store = server.shutdown().unwrap();
    let head = store.verify_audit().unwrap();
    // Registration entries plus one per update.
    assert!(head.seq >= (ROUNDS + 2) * DEVICES as u64);
}
