//! The fleet backend on the durable store: real device agents talk to a `DurableServer` over
//! the wire, the backend is stopped and reopened from the same SQLite file, and nothing it
//! acknowledged is lost (records, shadow versions, the audit chain), while the devices carry
//! on without registering again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::path::Path;

use iot_agent::{Board, LabAgent, Outbound, SensorSample};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::durable::{DurableError, DurableServer, Message, action_code};
use iot_fleet::{
    AssignmentRule, AuditAction, DeviceServer, Fleet, Handled, ManufacturingRecord, Matcher,
    Principal, Role, Scope, Session, answer,
};
use iot_lifecycle::State;
use iot_lifecycle::command::CommandHandler;
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::DeviceSecret;
use iot_shadow::Value;
use iot_store::{GroupCommitConfig, SqliteStore, Store};

const MINUTE: u64 = 60_000;
const DEVICES: u8 = 6;
const INTERVAL: &str = "config.telemetry_interval_ms";

struct Lab;
impl CommandHandler for Lab {}
impl Board for Lab {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        SensorSample {
            temperature_c: Some(20.0 + (now_ms / 30_000 % 5) as f32),
            battery_percent: Some(80),
            battery_mv: Some(3_900),
            ..SensorSample::default()
        }
    }
}

#[derive(Default)]
struct Wire(Vec<(u64, MessageKind, Vec<u8>)>);
impl Outbound for Wire {
    type Error = ();
    fn send(&mut self, kind: MessageKind, _: QoS, payload: &[u8], now_ms: u64) -> Result<(), ()> {
        self.0.push((now_ms, kind, payload.to_vec()));
        Ok(())
    }
}

struct Device {
    id: DeviceId,
    agent: LabAgent,
    wire: Wire,
    served: usize,
    session: Session,
}

fn secret(n: u8) -> [u8; 32] {
    [n.wrapping_add(0x40); 32]
}

fn id(n: u8) -> DeviceId {
    DeviceId::from_mac([0x24, 0x0a, 0xc4, 0x00, 0x01, n])
}

fn tenant() -> TenantId {
    TenantId::new("lab").unwrap()
}

fn admin() -> Principal {
    Principal::new("lab-admin", tenant(), Scope::root(), Role::Admin)
}

fn open(path: &Path) -> DurableServer {
    let store = SqliteStore::open(path).unwrap();
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let mut fleet = Fleet::default();
    // The lab device class: registered again at every start (it is code, not state).
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let server = DeviceServer::with_os_rng(fleet, config, NodeId(1));
    DurableServer::open(Box::new(store), server, GroupCommitConfig::default()).unwrap()
}

fn envelope(device: DeviceId, kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
    EnvelopeRef {
        device,
        seq: 0,
        id: MessageId(0),
        qos: QoS::AtLeastOnce,
        kind,
        payload,
    }
}

/// Runs every device from `start` to `end`: each round hands everything the devices sent to
/// the backend as one submission (one group commit), then gives each device its replies.
/// Returns how many messages the backend acknowledged.
fn run(backend: &mut DurableServer, devices: &mut [Device], start: u64, end: u64) -> usize {
    let mut now = start;
    let mut acknowledged = 0;
    let mut board = Lab;
    while now <= end {
        loop {
            let mut messages = Vec::new();
            let mut owners = Vec::new();
            for (i, d) in devices.iter().enumerate() {
                for (at, kind, payload) in &d.wire.0[d.served..] {
                    messages.push(Message {
                        session: d.session,
                        envelope: envelope(d.id, *kind, payload),
                        now_ms: *at,
                    });
                    owners.push(i);
                }
            }
            let ticket = backend.submit(&messages);
            let results = backend.wait(ticket);
            drop(messages);
            for d in devices.iter_mut() {
                d.served = d.wire.0.len();
            }
            let mut any = false;
            for (owner, result) in owners.iter().zip(results) {
                let handled = result.unwrap_or_else(|e| panic!("message refused at {now}: {e}"));
                acknowledged += 1;
                if let Handled::Replies(replies) = handled {
                    for reply in replies {
                        any = true;
                        let d = &mut devices[*owner];
                        let bytes = reply.to_vec();
                        d.agent
                            .handle(
                                now,
                                &envelope(d.id, reply.kind(), &bytes),
                                &mut board,
                                &mut d.wire,
                            )
                            .unwrap();
                    }
                }
            }
            if !any && devices.iter().all(|d| d.served == d.wire.0.len()) {
                break;
            }
        }
        let mut next = u64::MAX;
        for d in devices.iter_mut() {
            next = next.min(d.agent.poll(now, &mut board, &mut d.wire).unwrap());
        }
        assert!(next > now);
        now = next;
    }
    acknowledged
}

/// Counts the stored audit entries with `action`.
fn count_action(store: &mut dyn Store, action: u16) -> usize {
    let head = store.audit_head().unwrap();
    let mut n = 0;
    let mut from = 1;
    while from <= head.seq {
        let page = store.audit_range(from, 1_000).unwrap();
        n += page.iter().filter(|r| r.event.action == action).count();
        from = page.last().unwrap().seq + 1;
    }
    n
}

#[test]
fn a_restarted_backend_loses_nothing_it_acknowledged_and_devices_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let admin = admin();

    let mut backend = open(&path);
    let list = (1..=DEVICES)
        .map(|n| ManufacturingRecord {
            device_id: id(n),
            secret: secret(n),
            sku: "ESP32C3-TH".into(),
            serial: u64::from(n),
        })
        .collect();
    backend
        .import_manufacturing(&admin, &"intake".parse().unwrap(), list, 0)
        .unwrap();
    backend
        .add_assignment_rule(
            &admin,
            AssignmentRule {
                matcher: Matcher::Sku("ESP32C3-TH".into()),
                scope: "lab/bench-1".parse().unwrap(),
            },
            0,
        )
        .unwrap();

    let mut devices: Vec<Device> = (1..=DEVICES)
        .map(|n| {
            let mut d = Device {
                id: id(n),
                agent: LabAgent::new(
                    id(n),
                    3,
                    DeviceSecret::from_bytes(secret(n)),
                    DeviceConfig::DEFAULT,
                )
                .unwrap(),
                wire: Wire::default(),
                served: 0,
                session: Session::authenticated(id(n), u64::from(n)),
            };
            d.agent.start(0, &mut d.wire).unwrap();
            d
        })
        .collect();

    // Phase 1: register, go active, and take an operator's desired interval.
    assert!(run(&mut backend, &mut devices, 0, 10 * MINUTE) > 0);
    for d in &devices {
        backend
            .set_desired(&admin, &d.id, INTERVAL, Value::Int(20_000), 10 * MINUTE)
            .unwrap();
    }
    run(&mut backend, &mut devices, 10 * MINUTE + 1, 20 * MINUTE);

    let fleet = backend.server().fleet();
    let before: Vec<_> = devices
        .iter()
        .map(|d| {
            let record = fleet.device(&admin, &d.id).unwrap().clone();
            assert_eq!(record.state, State::Active);
            assert_eq!(record.scope, "lab/bench-1".parse().unwrap());
            let version = fleet.device_shadow(&d.id).unwrap().version();
            assert!(version >= 2, "the shadow took device and operator writes");
            assert_eq!(
                backend.reported(&admin, &d.id, INTERVAL),
                Some(Value::Int(20_000))
            );
            (record, version)
        })
        .collect();
    // The audit trail is not kept in memory.
    assert!(fleet.audit_log().is_empty());

    // Stop the backend: the store holds every acknowledged entry and the chain verifies.
    let mut store = backend.shutdown().unwrap();
    let head = store.verify_audit().unwrap();
    assert!(head.seq > 0);
    let registered = action_code(&AuditAction::Registered);
    assert_eq!(count_action(&mut *store, registered), usize::from(DEVICES));
    drop(store);

    // Reopen from the same file: records and shadows are back as they were.
    let mut backend = open(&path);
    let fleet = backend.server().fleet();
    assert_eq!(fleet.registered_count(), usize::from(DEVICES));
    for (d, (record, version)) in devices.iter().zip(&before) {
        let restored = fleet.device(&admin, &d.id).unwrap();
        assert_eq!(restored.state, record.state);
        assert_eq!(restored.scope, record.scope);
        assert_eq!(restored.registered_at_ms, record.registered_at_ms);
        assert_eq!(fleet.device_shadow(&d.id).unwrap().version(), *version);
        assert_eq!(
            backend.reported(&admin, &d.id, INTERVAL),
            Some(Value::Int(20_000))
        );
        // The shadow resolves with the device class's table again, not a default.
        assert_eq!(restored.schema, iot_agent::AGENT_SCHEMA.fingerprint());
        assert!(matches!(
            fleet.device_shadow(&d.id).unwrap().resolver(),
            iot_fleet::ClassPolicies::Table(_)
        ));
    }

    // Devices carry on, unaware of the restart: every message is served, none registers
    // again, and a new desired value reaches them and comes back reported.
    for d in &devices {
        backend
            .set_desired(&admin, &d.id, INTERVAL, Value::Int(40_000), 21 * MINUTE)
            .unwrap();
    }
    assert!(run(&mut backend, &mut devices, 20 * MINUTE + 1, 40 * MINUTE) > 0);
    for (d, (_, version)) in devices.iter().zip(&before) {
        assert_eq!(
            backend.reported(&admin, &d.id, INTERVAL),
            Some(Value::Int(40_000))
        );
        assert!(
            backend
                .server()
                .fleet()
                .device_shadow(&d.id)
                .unwrap()
                .version()
                > *version
        );
        assert_eq!(
            backend
                .server()
                .fleet()
                .device(&admin, &d.id)
                .unwrap()
                .state,
            State::Active
        );
    }
    let mut store = backend.shutdown().unwrap();
    let after = store.verify_audit().unwrap();
    assert!(after.seq > head.seq, "new entries chain on the stored head");
    assert_eq!(count_action(&mut *store, registered), usize::from(DEVICES));
}

#[test]
fn a_store_failure_releases_no_reply_and_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let admin = admin();
    let mut backend = open(&path);
    backend
        .import_manufacturing(
            &admin,
            &"intake".parse().unwrap(),
            vec![ManufacturingRecord {
                device_id: id(1),
                secret: secret(1),
                sku: "X".into(),
                serial: 1,
            }],
            0,
        )
        .unwrap();
    // A second writer takes the shadow's next version: the server's next write conflicts.
    let mut other = SqliteStore::open(&path).unwrap();
    let mut devices = vec![Device {
        id: id(1),
        agent: LabAgent::new(
            id(1),
            3,
            DeviceSecret::from_bytes(secret(1)),
            DeviceConfig::DEFAULT,
        )
        .unwrap(),
        wire: Wire::default(),
        served: 0,
        session: Session::authenticated(id(1), 1),
    }];
    let d = &mut devices[0];
    d.agent.start(0, &mut d.wire).unwrap();
    run(&mut backend, &mut devices, 0, MINUTE);
    let version = backend
        .server()
        .fleet()
        .device_shadow(&id(1))
        .unwrap()
        .version();
    other
        .apply(iot_store::Batch::independent(vec![
            iot_store::Op::PutShadow {
                shadow: iot_store::Shadow {
                    device: id(1),
                    name: String::new(),
                    version: version + 1,
                    document: vec![0xa0],
                },
                expected: iot_store::ShadowExpect::Version(version),
            },
        ]))
        .unwrap();
    let result = backend.set_desired(&admin, &id(1), INTERVAL, Value::Int(30_000), MINUTE);
    assert_eq!(result, Err(DurableError::Stopped));
    assert!(backend.is_stopped());
    let d = &devices[0];
    let env = envelope(d.id, MessageKind::Heartbeat, &[]);
    assert_eq!(
        backend.handle(&d.session, &env, MINUTE + 1),
        Err(DurableError::Stopped)
    );
}

#[test]
fn opening_refuses_a_non_empty_fleet_and_an_unreadable_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let admin = admin();

    // A server whose fleet already holds devices is refused: the store is the only source.
    let mut fleet = Fleet::default();
    fleet
        .import_manufacturing(
            &admin,
            &"intake".parse().unwrap(),
            vec![ManufacturingRecord {
                device_id: id(1),
                secret: secret(1),
                sku: "X".into(),
                serial: 1,
            }],
            0,
        )
        .unwrap();
    fleet.challenge(&id(1), 0, [1; 16], 0).unwrap();
    fleet
        .register(&id(1), 0, &answer(&secret(1), &id(1), &[1; 16]), 0)
        .unwrap();
    let server = DeviceServer::with_os_rng(fleet, DeviceConfig::DEFAULT, NodeId(1));
    let mut durable = open(&path);
    durable
        .import_manufacturing(
            &admin,
            &"intake".parse().unwrap(),
            vec![ManufacturingRecord {
                device_id: id(1),
                secret: secret(1),
                sku: "X".into(),
                serial: 1,
            }],
            0,
        )
        .unwrap();
    assert_eq!(server.fleet().registered_count(), 1);
    let store = durable.shutdown().unwrap();
    assert!(matches!(
        DurableServer::open(store, server, GroupCommitConfig::default()),
        Err(DurableError::NotEmpty)
    ));

    // A device record whose credential blob this build did not write is a clear error.
    let mut other = SqliteStore::open(&path).unwrap();
    let mut record = other.device(&id(1)).unwrap().unwrap();
    record.credential = b"not a credential".to_vec();
    other
        .apply(iot_store::Batch::independent(vec![
            iot_store::Op::PutDevice(record),
        ]))
        .unwrap();
    let server = DeviceServer::with_os_rng(Fleet::default(), DeviceConfig::DEFAULT, NodeId(1));
    let result = DurableServer::open(Box::new(other), server, GroupCommitConfig::default());
    assert!(matches!(
        result,
        Err(DurableError::Decode {
            what: "device record",
            ..
        })
    ));
}
