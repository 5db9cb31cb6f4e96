//! `DeviceServer` over the typed protocol, driven through the wire only: one server for
//! every tenant, sessions bound to one authenticated device, registration nonces that no
//! other session can replace, the clock-drift bound, lifecycle reports validated with the
//! transition table, and every refusal leaving shadows, records and the audit chain as
//! they were.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::{
    AuditAction, DeviceServer, Fleet, FleetError, Handled, ManufacturingRecord, Principal, Reply,
    Role, Scope, ServerError, Session, answer,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{
    RegistrationRejection, RegistrationRequest, RegistrationResponse,
};
use iot_lifecycle::state::{Event, State, TransitionRecord};
use iot_protocol::{
    Downlink, PROTOCOL_VERSION, ProtocolError, Register, ShadowGet, ShadowRefusal, Uplink,
};
use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};

const HOUR: u64 = 3_600_000;
const NOW: u64 = 10 * HOUR;

fn secret(id: &DeviceId) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in id.as_str().bytes().enumerate() {
        s[i % 32] ^= b;
    }
    s
}

fn admin(tenant: &str) -> Principal {
    Principal::new(
        "admin",
        TenantId::new(tenant).unwrap(),
        Scope::root(),
        Role::Admin,
    )
}

struct World {
    server: DeviceServer,
    a: DeviceId,
    b: DeviceId,
}

fn world() -> World {
    let mut fleet = Fleet::default();
    let a = DeviceId::new("dev-a").unwrap();
    let b = DeviceId::new("dev-b").unwrap();
    for (tenant, id) in [("acme", a), ("globex", b)] {
        let record = ManufacturingRecord {
            device_id: id,
            secret: secret(&id),
            sku: "TH".into(),
            serial: 1,
        };
        fleet
            .import_manufacturing(&admin(tenant), &Scope::root(), vec![record], 0)
            .unwrap();
    }
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    World {
        server: DeviceServer::with_os_rng(fleet, config, NodeId(1)),
        a,
        b,
    }
}

fn send(
    server: &mut DeviceServer,
    session: &Session,
    device: DeviceId,
    message: &Uplink<&[u8]>,
    now: u64,
) -> Result<Vec<Reply>, ServerError> {
    let payload = message.to_vec();
    let env = EnvelopeRef {
        device,
        seq: 0,
        id: MessageId(0),
        qos: message.qos(),
        kind: message.kind(),
        payload: &payload,
    };
    server.handle(session, &env, now).map(|h| match h {
        Handled::Replies(replies) => replies,
        Handled::Unhandled => Vec::new(),
    })
}

fn register_message(device: DeviceId, nonce: Option<[u8; 16]>) -> Uplink<&'static [u8]> {
    Uplink::Register(Register {
        protocol: PROTOCOL_VERSION,
        schema: 0,
        request: RegistrationRequest {
            device,
            firmware_version: 1,
            answer: nonce.map(|n| answer(&secret(&device), &device, &n)),
        },
    })
}

fn registration(replies: &[Reply]) -> RegistrationResponse {
    match replies {
        [Downlink::Registration(r)] => *r,
        other => panic!("expected one registration answer, got {other:?}"),
    }
}

/// Registers `device` in `session` and reports `Provisioning -> Active`, over the wire.
fn activate(server: &mut DeviceServer, session: &Session, device: DeviceId) {
    let replies = send(
        server,
        session,
        device,
        &register_message(device, None),
        NOW,
    )
    .unwrap();
    let RegistrationResponse::Challenge(nonce) = registration(&replies) else {
        panic!("no challenge");
    };
    let replies = send(
        server,
        session,
        device,
        &register_message(device, Some(nonce)),
        NOW,
    )
    .unwrap();
    assert!(matches!(
        registration(&replies),
        RegistrationResponse::Accepted(_)
    ));
    let report = Uplink::Transition(TransitionRecord {
        from: State::Provisioning,
        event: Event::ConfigComplete,
        to: State::Active,
        at_ms: NOW,
    });
    send(server, session, device, &report, NOW).unwrap();
}

fn reported_write(path: &str, value: Value, at_ms: u64, node: u32) -> Write {
    let hlc = HlcTimestamp::from_parts(at_ms, 0, NodeId(node)).unwrap();
    Write::new(
        Section::Reported,
        Path::new(path).unwrap(),
        value,
        Stamp::new(hlc, Policy::LastWriterWins, Origin::Device),
    )
}

fn shadow_update(writes: &[Write]) -> Vec<u8> {
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token: None,
    };
    encode_writes_to_vec(&header, writes).unwrap()
}

/// Everything a refusal must leave alone: both records, both shadows, the audit chain.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: Vec<String>,
    shadows: Vec<Option<Vec<u8>>>,
    audit: (usize, Option<[u8; 32]>),
}

fn snapshot(w: &World) -> Snapshot {
    let fleet = w.server.fleet();
    let records = [("acme", w.a), ("globex", w.b)]
        .iter()
        .map(|(t, id)| format!("{:?}", fleet.device(&admin(t), id)))
        .collect();
    let shadows = [w.a, w.b]
        .iter()
        .map(|id| fleet.device_shadow(id).map(|s| s.to_cbor()))
        .collect();
    let log = fleet.audit_log();
    let audit = (log.len(), log.all().last().map(|e| e.digest));
    Snapshot {
        records,
        shadows,
        audit,
    }
}

#[test]
fn one_server_serves_every_tenant_over_the_wire() {
    let mut w = world();
    let (sa, sb) = (
        Session::authenticated(w.a, 1),
        Session::authenticated(w.b, 2),
    );
    activate(&mut w.server, &sa, w.a);
    activate(&mut w.server, &sb, w.b);
    for (tenant, id, session) in [("acme", w.a, sa), ("globex", w.b, sb)] {
        assert_eq!(
            w.server.fleet().device(&admin(tenant), &id).unwrap().state,
            State::Active
        );
        let bytes = shadow_update(&[reported_write("temp", Value::Int(21), NOW, 7)]);
        let replies = send(
            &mut w.server,
            &session,
            id,
            &Uplink::ShadowUpdate(iot_protocol::ShadowBytes::new(bytes.as_slice()).unwrap()),
            NOW,
        )
        .unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].kind(), MessageKind::ShadowAccepted);
        assert_eq!(
            w.server.reported(&admin(tenant), &id, "temp"),
            Some(Value::Int(21))
        );
        // Each tenant sees only its own device.
        let other = if id == w.a { "globex" } else { "acme" };
        assert!(w.server.fleet().device(&admin(other), &id).is_err());
    }
}

#[test]
fn an_envelope_naming_another_device_is_refused_before_anything_changes() {
    let mut w = world();
    let (sa, sb) = (
        Session::authenticated(w.a, 1),
        Session::authenticated(w.b, 2),
    );
    activate(&mut w.server, &sa, w.a);
    activate(&mut w.server, &sb, w.b);
    let before = snapshot(&w);
    let bytes = shadow_update(&[reported_write("temp", Value::Int(99), NOW, 7)]);
    let update = Uplink::ShadowUpdate(iot_protocol::ShadowBytes::new(bytes.as_slice()).unwrap());
    // A's session speaks for B in the envelope.
    assert_eq!(
        send(&mut w.server, &sa, w.b, &update, NOW),
        Err(ServerError::IdentityMismatch {
            session: w.a,
            claimed: w.b
        })
    );
    // A's session names B inside a registration request.
    assert!(matches!(
        send(&mut w.server, &sa, w.a, &register_message(w.b, None), NOW),
        Err(ServerError::IdentityMismatch { .. })
    ));
    // A's session reports a transition for B by naming it in the envelope.
    let report = Uplink::Transition(TransitionRecord {
        from: State::Active,
        event: Event::HealthCheckFailed,
        to: State::Degraded,
        at_ms: NOW + 1,
    });
    assert!(matches!(
        send(&mut w.server, &sa, w.b, &report, NOW),
        Err(ServerError::IdentityMismatch { .. })
    ));
    assert_eq!(snapshot(&w), before);
}

#[test]
fn a_third_party_can_neither_replace_nor_invalidate_a_challenge() {
    let mut w = world();
    let own = Session::authenticated(w.a, 1);
    let replies = send(&mut w.server, &own, w.a, &register_message(w.a, None), NOW).unwrap();
    let RegistrationResponse::Challenge(nonce) = registration(&replies) else {
        panic!("no challenge");
    };
    // The device's own retry gets the same nonce.
    let again = send(&mut w.server, &own, w.a, &register_message(w.a, None), NOW).unwrap();
    assert_eq!(registration(&again), RegistrationResponse::Challenge(nonce));

    let before = snapshot(&w);
    let third = Session::authenticated(w.a, 99);
    let replies = send(
        &mut w.server,
        &third,
        w.a,
        &register_message(w.a, None),
        NOW,
    )
    .unwrap();
    assert_eq!(
        registration(&replies),
        RegistrationResponse::Rejected(RegistrationRejection::ChallengePending)
    );
    // Nor can it burn the challenge with a wrong answer.
    let replies = send(
        &mut w.server,
        &third,
        w.a,
        &register_message(w.a, Some([0; 16])),
        NOW,
    )
    .unwrap();
    assert!(matches!(
        registration(&replies),
        RegistrationResponse::Rejected(_)
    ));
    let after = snapshot(&w);
    assert_eq!(
        (after.records, after.shadows),
        (before.records, before.shadows)
    );

    // The device's correct answer still registers it.
    let replies = send(
        &mut w.server,
        &own,
        w.a,
        &register_message(w.a, Some(nonce)),
        NOW,
    )
    .unwrap();
    assert!(matches!(
        registration(&replies),
        RegistrationResponse::Accepted(_)
    ));
}

#[test]
fn the_pending_challenge_refusal_leaves_the_audit_chain_alone() {
    let mut w = world();
    let own = Session::authenticated(w.a, 1);
    send(&mut w.server, &own, w.a, &register_message(w.a, None), NOW).unwrap();
    let before = snapshot(&w);
    let third = Session::authenticated(w.a, 2);
    send(
        &mut w.server,
        &third,
        w.a,
        &register_message(w.a, None),
        NOW,
    )
    .unwrap();
    assert_eq!(snapshot(&w), before);
}

#[test]
fn nonces_are_fresh_for_every_challenge() {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let mut w = world();
        let s = Session::authenticated(w.a, 1);
        let replies = send(&mut w.server, &s, w.a, &register_message(w.a, None), NOW).unwrap();
        let RegistrationResponse::Challenge(nonce) = registration(&replies) else {
            panic!("no challenge");
        };
        assert!(seen.insert(nonce), "a nonce repeated");
    }
}

#[test]
fn a_write_stamped_an_hour_ahead_is_refused_and_the_operator_still_wins() {
    let mut w = world();
    let s = Session::authenticated(w.a, 1);
    activate(&mut w.server, &s, w.a);
    let acme = admin("acme");
    w.server
        .set_desired(&acme, &w.a, "led", Value::Bool(false), NOW)
        .unwrap();
    let before = snapshot(&w);
    let ahead = Write::new(
        Section::Desired,
        Path::new("led").unwrap(),
        Value::Bool(true),
        Stamp::new(
            HlcTimestamp::from_parts(NOW + HOUR, 0, NodeId(7)).unwrap(),
            Policy::LastWriterWins,
            Origin::Device,
        ),
    );
    let bytes = shadow_update(&[ahead]);
    let replies = send(
        &mut w.server,
        &s,
        w.a,
        &Uplink::ShadowUpdate(iot_protocol::ShadowBytes::new(bytes.as_slice()).unwrap()),
        NOW,
    )
    .unwrap();
    match replies.as_slice() {
        [Downlink::ShadowRejected(r)] => assert_eq!(r.reason, ShadowRefusal::ClockDrift),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(snapshot(&w), before);
    // The operator's next write is the one in force.
    w.server
        .set_desired(&acme, &w.a, "led", Value::Bool(true), NOW + 1_000)
        .unwrap();
    w.server
        .set_desired(&acme, &w.a, "led", Value::Bool(false), NOW + 2_000)
        .unwrap();
    let shadow = w.server.fleet().shadow(&acme, &w.a).unwrap().unwrap();
    assert_eq!(
        shadow.value(Section::Desired, &Path::new("led").unwrap()),
        Some(&Value::Bool(false))
    );
}

#[test]
fn lifecycle_reports_move_the_record_and_an_illegal_one_is_flagged() {
    let mut w = world();
    let s = Session::authenticated(w.a, 1);
    activate(&mut w.server, &s, w.a);
    let acme = admin("acme");
    let state = |w: &World| w.server.fleet().device(&acme, &w.a).unwrap().state;
    let report = |from, event, to, at_ms| {
        Uplink::Transition(TransitionRecord {
            from,
            event,
            to,
            at_ms,
        })
    };
    for (from, event, to, at) in [
        (
            State::Active,
            Event::HealthCheckFailed,
            State::Degraded,
            NOW + 1,
        ),
        (State::Degraded, Event::AutoRecovery, State::Active, NOW + 2),
        (
            State::Active,
            Event::ScheduledUpdate,
            State::Maintenance,
            NOW + 3,
        ),
    ] {
        send(&mut w.server, &s, w.a, &report(from, event, to, at), NOW).unwrap();
        assert_eq!(state(&w), to);
        // A redelivered copy changes nothing and is not flagged.
        send(&mut w.server, &s, w.a, &report(from, event, to, at), NOW).unwrap();
        assert_eq!(state(&w), to);
    }
    let flagged_before = w
        .server
        .fleet()
        .device(&acme, &w.a)
        .unwrap()
        .illegal_transitions;
    assert_eq!(flagged_before, 0);
    // Maintenance cannot degrade by a health check: refused, flagged, state unchanged.
    let illegal = report(
        State::Maintenance,
        Event::HealthCheckFailed,
        State::Degraded,
        NOW + 4,
    );
    assert!(matches!(
        send(&mut w.server, &s, w.a, &illegal, NOW),
        Err(ServerError::Fleet(FleetError::Report(_)))
    ));
    let record = w.server.fleet().device(&acme, &w.a).unwrap();
    assert_eq!(
        (record.state, record.illegal_transitions),
        (State::Maintenance, 1)
    );
    assert!(
        w.server
            .fleet()
            .audit_trail(&acme)
            .any(|e| matches!(e.action, AuditAction::IllegalTransitionFlagged { .. }))
    );
}

#[test]
fn unknown_versions_and_kinds_are_refused_clearly() {
    let mut w = world();
    let s = Session::authenticated(w.a, 1);
    let before = snapshot(&w);
    let mut old = register_message(w.a, None);
    if let Uplink::Register(r) = &mut old {
        r.protocol = PROTOCOL_VERSION + 1;
    }
    let replies = send(&mut w.server, &s, w.a, &old, NOW).unwrap();
    assert_eq!(
        registration(&replies),
        RegistrationResponse::Rejected(RegistrationRejection::UnsupportedProtocol)
    );
    // A backend kind sent by a device, and garbage under a device kind.
    let env = |kind, payload| EnvelopeRef {
        device: w.a,
        seq: 0,
        id: MessageId(0),
        qos: QoS::AtMostOnce,
        kind,
        payload,
    };
    let cmd = [0xa0u8];
    assert_eq!(
        w.server.handle(&s, &env(MessageKind::Command, &cmd), NOW),
        Err(ServerError::Protocol(ProtocolError::WrongDirection(
            MessageKind::Command
        )))
    );
    let garbage = [0xffu8, 0x13, 0x00];
    assert_eq!(
        w.server
            .handle(&s, &env(MessageKind::ShadowGet, &garbage), NOW),
        Err(ServerError::Protocol(ProtocolError::Malformed(
            MessageKind::ShadowGet
        )))
    );
    // A shadow message whose own kind disagrees with its envelope's.
    let delta = {
        let header = Header {
            kind: Kind::Delta,
            version: Some(1),
            client_token: None,
        };
        encode_writes_to_vec(&header, &[reported_write("x", Value::Int(1), NOW, 7)]).unwrap()
    };
    assert!(matches!(
        w.server
            .handle(&s, &env(MessageKind::ShadowUpdate, &delta), NOW),
        Err(ServerError::Protocol(ProtocolError::KindMismatch { .. }))
    ));
    // An unregistered device's shadow get.
    assert!(
        send(
            &mut w.server,
            &s,
            w.a,
            &Uplink::ShadowGet(ShadowGet { version: 0 }),
            NOW
        )
        .is_err()
    );
    assert_eq!(snapshot(&w), before);
}

#[test]
fn a_report_after_lost_ones_is_applied_and_the_gap_audited() {
    let mut w = world();
    let s = Session::authenticated(w.a, 1);
    activate(&mut w.server, &s, w.a);
    let acme = admin("acme");
    // The report of Active -> Degraded was lost; the next one starts from Degraded.
    let report = Uplink::Transition(TransitionRecord {
        from: State::Degraded,
        event: Event::ManualIntervention,
        to: State::Maintenance,
        at_ms: NOW + 10,
    });
    send(&mut w.server, &s, w.a, &report, NOW).unwrap();
    let record = w.server.fleet().device(&acme, &w.a).unwrap();
    assert_eq!(
        (record.state, record.illegal_transitions),
        (State::Maintenance, 0)
    );
    assert!(w.server.fleet().audit_trail(&acme).any(|e| matches!(
        e.action,
        AuditAction::TransitionsMissed {
            held: State::Active,
            reported_from: State::Degraded
        }
    )));
    // An older report arriving late changes nothing.
    let stale = Uplink::Transition(TransitionRecord {
        from: State::Active,
        event: Event::HealthCheckFailed,
        to: State::Degraded,
        at_ms: NOW + 5,
    });
    send(&mut w.server, &s, w.a, &stale, NOW).unwrap();
    assert_eq!(
        w.server.fleet().device(&acme, &w.a).unwrap().state,
        State::Maintenance
    );
}
