//! The device agent of `iot-agent` against the backend of `iot-fleet`, over the wire only: zero-touch
//! registration with the real proof check, heartbeats keeping the device online, and every
//! lifecycle transition the agent makes (degraded on a critical battery, recovery,
//! maintenance by command) accepted by the fleet's validation of reported transitions, and
//! decommissioning: the operator's order, the device's audit record, then silence.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_agent::{Board, LabAgent, Outbound, SensorSample};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::{
    AssignmentRule, AuditAction, DeviceServer, Fleet, Handled, ManufacturingRecord, Matcher,
    Principal, Role, Scope, Session,
};
use iot_lifecycle::State;
use iot_lifecycle::command::{Command, CommandHandler, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{AuditRecord, DecommissionReason, DeviceSecret};

const SECRET: [u8; 32] = [0x33; 32];
const MINUTE: u64 = 60_000;

struct Lab;
impl CommandHandler for Lab {}
impl Board for Lab {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        let battery = if (30 * MINUTE..60 * MINUTE).contains(&now_ms) {
            6
        } else {
            85
        };
        SensorSample {
            temperature_c: Some(20.0 + (now_ms / 30_000 % 5) as f32),
            humidity_percent: Some(45.0),
            battery_percent: Some(battery),
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

fn cbor<T: minicbor::Encode<()> + minicbor::CborLen<()>>(value: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let n = iot_core::codec::encode_into(value, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn envelope(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
    EnvelopeRef {
        device: DeviceId::new("fleet").unwrap(),
        seq: 0,
        id: MessageId(0),
        qos: QoS::AtLeastOnce,
        kind,
        payload,
    }
}

struct Backend {
    server: DeviceServer,
    session: Session,
    admin: Principal,
    heartbeats: u32,
}

impl Backend {
    /// Hands everything the device sent since `from` to the server, over the wire only;
    /// returns the replies.
    fn serve(&mut self, wire: &Wire, from: usize) -> Vec<(MessageKind, Vec<u8>)> {
        let mut replies = Vec::new();
        for (at, kind, payload) in &wire.0[from..] {
            let env = EnvelopeRef {
                device: self.session.device(),
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind: *kind,
                payload,
            };
            match self.server.handle(&self.session, &env, *at).unwrap() {
                Handled::Replies(out) => {
                    replies.extend(out.iter().map(|r| (r.kind(), r.to_vec())));
                }
                Handled::Unhandled => {}
            }
            if *kind == MessageKind::Heartbeat {
                self.heartbeats += 1;
            }
        }
        replies
    }
}

#[test]
fn the_lab_agent_registers_with_the_fleet_and_every_transition_it_reports_is_legal() {
    let device = DeviceId::from_mac([0x24, 0x0a, 0xc4, 0x00, 0x00, 0x01]);
    let tenant = TenantId::new("lab").unwrap();
    let admin = Principal::new("lab-admin", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    // The lab device class: the backend resolves its shadow with the agent's own table.
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let list = vec![ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "ESP32C3-TH".into(),
        serial: 1,
    }];
    fleet
        .import_manufacturing(&admin, &"intake".parse().unwrap(), list, 0)
        .unwrap();
    fleet
        .add_assignment_rule(
            &admin,
            AssignmentRule {
                matcher: Matcher::Sku("ESP32C3-TH".into()),
                scope: "lab/bench-1".parse().unwrap(),
            },
            0,
        )
        .unwrap();
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let mut backend = Backend {
        server: DeviceServer::with_os_rng(fleet, config, NodeId(1)),
        session: Session::authenticated(device, 1),
        admin,
        heartbeats: 0,
    };

    let mut agent = LabAgent::new(
        device,
        3,
        DeviceSecret::from_bytes(SECRET),
        DeviceConfig::DEFAULT,
    )
    .unwrap();
    let (mut board, mut wire) = (Lab, Wire::default());
    let mut served = 0;
    let mut now = 0;
    agent.start(now, &mut wire).unwrap();
    let end = 120 * MINUTE;
    while now <= end {
        if now == 80 * MINUTE {
            let enter = Command::new(
                1,
                now,
                Command::NEVER_EXPIRES,
                CommandKind::EnterMaintenance,
            );
            agent
                .handle(
                    now,
                    &envelope(MessageKind::Command, &cbor(&enter)),
                    &mut board,
                    &mut wire,
                )
                .unwrap();
        }
        if now == 90 * MINUTE {
            let exit = Command::new(2, now, Command::NEVER_EXPIRES, CommandKind::ExitMaintenance);
            agent
                .handle(
                    now,
                    &envelope(MessageKind::Command, &cbor(&exit)),
                    &mut board,
                    &mut wire,
                )
                .unwrap();
        }
        // Exchange with the backend until quiet, then run what is due.
        loop {
            let replies = backend.serve(&wire, served);
            served = wire.0.len();
            for (kind, payload) in &replies {
                agent
                    .handle(now, &envelope(*kind, payload), &mut board, &mut wire)
                    .unwrap();
            }
            let next = agent.poll(now, &mut board, &mut wire).unwrap();
            assert!(next > now);
            if replies.is_empty() && served == wire.0.len() {
                now = next;
                break;
            }
        }
        assert!(
            backend.server.fleet_mut().sweep(now.min(end)).is_empty(),
            "marked offline at {now}"
        );
    }

    // Everything below is the backend's view, learnt from the wire.
    let fleet = backend.server.fleet();
    let record = fleet.device(&backend.admin, &device).unwrap();
    assert_eq!(record.state, State::Active);
    assert_eq!(record.scope, "lab/bench-1".parse().unwrap());
    assert_eq!(record.illegal_transitions, 0);
    assert!(record.online);
    // The heartbeats said what the device's report-on-change filters did: over hours of a
    // slowly changing climate most readings are held back.
    let readings = record.readings.expect("heartbeats carry reading counts");
    assert!(readings.sent > 0, "{readings:?}");
    assert!(readings.sampled > readings.sent, "{readings:?}");
    let path: Vec<State> = fleet
        .audit_trail(&backend.admin)
        .filter_map(|e| match e.action {
            AuditAction::Transition { to, .. } if e.device == Some(device) => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(
        path,
        [
            State::Active,
            State::Degraded,
            State::Active,
            State::Maintenance,
            State::Active
        ]
    );
    assert_eq!(u64::from(backend.heartbeats), end / 10_000 + 1);

    // Decommissioning over the wire: the operator's order reaches the device, which wipes
    // itself and answers with its audit record; afterwards the backend accepts nothing from
    // it and the device falls silent.
    let (done, order) = backend
        .server
        .decommission(&backend.admin, &device, DecommissionReason::EndOfLife, end)
        .unwrap();
    assert_eq!(done.previous, State::Active);
    let from = wire.0.len();
    agent
        .handle(
            end,
            &envelope(order.kind(), &order.to_vec()),
            &mut board,
            &mut wire,
        )
        .unwrap();
    let answer: Vec<(u64, MessageKind, Vec<u8>)> = wire.0[from..].to_vec();
    assert_eq!(answer.len(), 1, "one audit record");
    let (_, kind, payload) = &answer[0];
    assert_eq!(*kind, MessageKind::Decommission);
    let audit: AuditRecord = iot_core::codec::decode(payload).unwrap();
    assert_eq!((audit.device, audit.from), (device, State::Active));
    assert_eq!(audit.reason, DecommissionReason::EndOfLife);
    // The backend takes the record from the device's session and no longer knows the device.
    let env = EnvelopeRef {
        device,
        seq: 0,
        id: MessageId(0),
        qos: QoS::AtLeastOnce,
        kind: *kind,
        payload,
    };
    assert!(backend.server.handle(&backend.session, &env, end).is_ok());
    assert!(
        backend
            .server
            .fleet()
            .device(&backend.admin, &device)
            .is_err()
    );
    let audit_len = backend.server.fleet().audit_trail(&backend.admin).count();
    // A wiped device sends nothing more, and a heartbeat in its name is refused.
    let quiet = wire.0.len();
    assert_eq!(
        agent.poll(end + 10 * MINUTE, &mut board, &mut wire),
        None,
        "nothing will run"
    );
    assert_eq!(wire.0.len(), quiet, "a decommissioned device falls silent");
    let heartbeat = iot_protocol::Heartbeat {
        seq: 1_000,
        uptime_ms: end,
        state: State::Active,
        config_version: 1,
        health: iot_lifecycle::HealthStatus::Healthy,
        readings: None,
    };
    let bytes = cbor(&heartbeat);
    let forged = EnvelopeRef {
        kind: MessageKind::Heartbeat,
        payload: &bytes,
        ..env
    };
    assert!(
        backend
            .server
            .handle(&backend.session, &forged, end + 1)
            .is_err()
    );
    assert_eq!(
        backend.server.fleet().audit_trail(&backend.admin).count(),
        audit_len,
        "the refusal changes nothing"
    );
}
