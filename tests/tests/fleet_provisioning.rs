//! Zero-touch provisioning, lifecycle validation, decommissioning and the audit trail of
//! `iot-fleet`, end to end: a device registers from a manufacturing list with no operator
//! step, the backend validates its reported transitions with the device's own state
//! machine, and decommissioning revokes it while the audit record stays intact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, Error, ErrorKind, HlcTimestamp, NodeId, TenantId};
use iot_fleet::AccessError;
use iot_fleet::registry::ReportError;
use iot_fleet::{
    Actor, AssignmentRule, AuditAction, AuditLog, Fleet, FleetError, ManufacturingRecord, Matcher,
    Principal, RegistrationError, Role, RolloutConfig, Scope, ServerShadow, Usage, answer,
};
use iot_lifecycle::{Event, Lifecycle, State, TransitionError};
use iot_shadow::{Limits, MapStore, Origin, Path, Policy, Section, Stamp, Update, Value, Write};

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn setup() -> (Fleet, Principal) {
    let tenant = TenantId::new("acme").unwrap();
    let admin = Principal::new("it-admin", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    let list = [
        ("th-1", "TH-1", 10),
        ("co2-1", "CO2", 5_000),
        ("misc-1", "LUX", 1),
    ]
    .into_iter()
    .map(|(id, sku, serial)| ManufacturingRecord {
        device_id: dev(id),
        secret: secret(id),
        sku: sku.into(),
        serial,
    })
    .collect();
    assert_eq!(
        fleet
            .import_manufacturing(&admin, &"intake".parse().unwrap(), list, 0)
            .unwrap(),
        3
    );
    for (matcher, scope) in [
        (Matcher::Sku("TH-1".into()), "eu/berlin-1"),
        (
            Matcher::SerialRange {
                first: 1_000,
                last: 9_999,
            },
            "eu/berlin-2",
        ),
    ] {
        fleet
            .add_assignment_rule(
                &admin,
                AssignmentRule {
                    matcher,
                    scope: scope.parse().unwrap(),
                },
                0,
            )
            .unwrap();
    }
    (fleet, admin)
}

fn secret(id: &str) -> [u8; 32] {
    let mut s = [0x42; 32];
    for (d, b) in s.iter_mut().zip(id.bytes()) {
        *d = b;
    }
    s
}

/// The two-step registration: the backend challenges, the device answers.
fn register(fleet: &mut Fleet, id: &str, nonce: u8, at: u64) -> Result<State, FleetError> {
    let d = dev(id);
    fleet.challenge(&d, 0, [nonce; 16], at)?;
    fleet
        .register(&d, 0, &answer(&secret(id), &d, &[nonce; 16]), at)
        .map(|r| r.state)
}

#[test]
fn first_registration_assigns_by_sku_or_serial_range_with_no_manual_step() {
    let (mut fleet, admin) = setup();
    for (id, scope) in [
        ("th-1", "eu/berlin-1"),
        ("co2-1", "eu/berlin-2"),
        ("misc-1", "intake"),
    ] {
        assert_eq!(
            register(&mut fleet, id, 1, 100).unwrap(),
            State::Provisioning
        );
        let record = fleet.device(&admin, &dev(id)).unwrap();
        assert_eq!(record.scope.as_str(), scope);
        assert_eq!(record.state, State::Provisioning);
    }
    let registered = fleet
        .audit_trail(&admin)
        .filter(|e| e.action == AuditAction::Registered)
        .count();
    assert_eq!(registered, 3);
}

#[test]
fn unknown_revoked_forged_and_replayed_identities_are_rejected_clearly() {
    let (mut fleet, admin) = setup();
    let stranger = dev("not-in-any-list");
    let err = fleet.challenge(&stranger, 0, [1; 16], 0).unwrap_err();
    assert_eq!(
        fleet
            .register(&stranger, 0, &answer(&[1; 32], &stranger, &[1; 16]), 0)
            .unwrap_err(),
        err
    );
    assert_eq!(
        err,
        FleetError::Registration(RegistrationError::UnknownDevice)
    );
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let th = dev("th-1");
    fleet.challenge(&th, 0, [1; 16], 0).unwrap();
    let forged = answer(&[0x99; 32], &th, &[1; 16]);
    assert_eq!(
        fleet.register(&th, 0, &forged, 0).unwrap_err(),
        FleetError::Registration(RegistrationError::InvalidProof)
    );
    register(&mut fleet, "th-1", 5, 10).unwrap();
    // A recorded answer cannot be replayed: its challenge was used up.
    let recorded = answer(&secret("th-1"), &th, &[5; 16]);
    assert_eq!(
        fleet.register(&th, 0, &recorded, 11).unwrap_err(),
        FleetError::Registration(RegistrationError::StaleNonce)
    );
    fleet.challenge(&th, 0, [6; 16], 12).unwrap();
    assert_eq!(
        fleet
            .register(&th, 0, &answer(&secret("th-1"), &th, &[6; 16]), 12 + 60_001)
            .unwrap_err(),
        FleetError::Registration(RegistrationError::ChallengeExpired)
    );
    fleet.decommission(&admin, &th, 20).unwrap();
    let revoked = register(&mut fleet, "th-1", 7, 30).unwrap_err();
    assert_eq!(
        revoked,
        FleetError::Registration(RegistrationError::Revoked)
    );
    assert_eq!(revoked.kind(), ErrorKind::Unauthorized);
    // Rejections of the tenant's own identities are in its audit trail.
    let rejected: Vec<_> = fleet
        .audit_trail(&admin)
        .filter_map(|e| match e.action {
            AuditAction::RegistrationRejected(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            RegistrationError::InvalidProof,
            RegistrationError::StaleNonce,
            RegistrationError::ChallengeExpired,
            RegistrationError::Revoked
        ]
    );
}

#[test]
fn backend_tracks_the_lifecycle_with_the_devices_own_state_machine() {
    let (mut fleet, admin) = setup();
    register(&mut fleet, "th-1", 1, 0).unwrap();
    let id = dev("th-1");
    // The device runs its lifecycle and reports each step; the backend follows.
    let mut device: Lifecycle<8> = Lifecycle::new();
    let steps = [
        Event::RegistrationInitiated,
        Event::ConfigComplete,
        Event::HealthCheckFailed,
        Event::ManualIntervention,
        Event::UpdateComplete,
    ];
    device.apply(steps[0], 0, &mut ()).unwrap();
    for (k, event) in steps.iter().enumerate().skip(1) {
        let to = device.apply(*event, k as u64, &mut ()).unwrap();
        assert_eq!(
            fleet.report_transition(&id, *event, to, k as u64).unwrap(),
            to
        );
    }
    assert_eq!(fleet.device(&admin, &id).unwrap().state, State::Active);

    // An illegal report is flagged, not applied, and audited.
    let err = fleet
        .report_transition(&id, Event::UpdateFailed, State::Degraded, 10)
        .unwrap_err();
    let expected = TransitionError {
        state: State::Active,
        event: Event::UpdateFailed,
    };
    assert_eq!(
        err,
        FleetError::Report(ReportError::IllegalTransition(expected))
    );
    let record = fleet.device(&admin, &id).unwrap();
    assert_eq!(record.state, State::Active);
    assert_eq!(record.illegal_transitions, 1);
    let flagged = fleet.audit_trail(&admin).any(|e| {
        e.action
            == AuditAction::IllegalTransitionFlagged {
                error: expected,
                claimed: State::Degraded,
            }
    });
    assert!(flagged);
    // Operators are held to the same table.
    assert_eq!(
        fleet
            .request_transition(&admin, &id, Event::AutoRecovery, 11)
            .unwrap_err(),
        FleetError::Transition(TransitionError {
            state: State::Active,
            event: Event::AutoRecovery
        })
    );
}

#[test]
fn decommissioning_revokes_and_removes_from_monitoring_and_metering_but_keeps_the_audit() {
    let (mut fleet, admin) = setup();
    for id in ["th-1", "co2-1"] {
        register(&mut fleet, id, 1, 0).unwrap();
        fleet
            .report_transition(&dev(id), Event::ConfigComplete, State::Active, 1)
            .unwrap();
        fleet
            .record_usage(
                &dev(id),
                Usage {
                    messages: 100,
                    stored_bytes: 1_000,
                },
                2,
            )
            .unwrap();
    }
    let rollout = fleet
        .start_rollout(
            &admin,
            &Scope::root(),
            "2.0",
            None,
            RolloutConfig {
                stages_bp: vec![10_000],
                ..RolloutConfig::default()
            },
            3,
        )
        .unwrap();
    let th = dev("th-1");
    let audit_before = fleet
        .audit_trail(&admin)
        .filter(|e| e.device == Some(th))
        .count();

    let done = fleet.decommission(&admin, &th, 10).unwrap();
    assert_eq!(done.previous, State::Active);
    assert!(!done.forced);

    // Gone from reads, health and metering (its past usage stays in the tenant's totals).
    assert!(fleet.device(&admin, &th).is_err());
    let health = fleet.health_report(&admin, &Scope::root(), 10).unwrap();
    assert_eq!(health.counts.total, 1);
    let m = fleet.metering(&admin, &Scope::root(), 10).unwrap();
    assert_eq!((m.devices, m.usage.messages), (1, 200));
    assert!(fleet.record_usage(&th, Usage::default(), 11).is_err());
    assert!(fleet.heartbeat(&th, Some(50.0), 11).is_err());
    assert!(fleet.instructions(&th).is_empty());
    assert!(fleet.report_update(&th, rollout, true, 11).is_err());
    assert!(fleet.sweep(1_000_000).iter().all(|d| *d != th));

    // Its audit record is kept, ends with the decommissioning, and the chain verifies.
    let trail: Vec<_> = fleet
        .audit_trail(&admin)
        .filter(|e| e.device == Some(th))
        .collect();
    assert_eq!(trail.len(), audit_before + 1);
    let last = trail.last().unwrap();
    assert_eq!(
        last.action,
        AuditAction::Decommissioned {
            previous: State::Active,
            forced: false
        }
    );
    assert_eq!(last.actor, Actor::Principal("it-admin".into()));
    assert_eq!(last.tenant, admin.tenant);
    assert_eq!(last.at_ms, 10);
    assert_eq!(AuditLog::verify_chain(fleet.audit_log().all()), Ok(()));

    // Decommissioning from a state without an edge to Decommissioned is recorded as forced.
    register(&mut fleet, "misc-1", 1, 20).unwrap();
    let forced = fleet.decommission(&admin, &dev("misc-1"), 21).unwrap();
    assert_eq!(
        (forced.previous, forced.forced),
        (State::Provisioning, true)
    );
}

#[test]
fn audit_entries_are_numbered_in_order_and_only_appended() {
    let (mut fleet, admin) = setup();
    let before: Vec<_> = fleet.audit_log().all().to_vec();
    register(&mut fleet, "th-1", 1, 5).unwrap();
    fleet
        .report_transition(&dev("th-1"), Event::ConfigComplete, State::Active, 6)
        .unwrap();
    fleet.decommission(&admin, &dev("th-1"), 7).unwrap();
    let after = fleet.audit_log().all();
    assert_eq!(&after[..before.len()], &before[..]);
    assert!(after.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert!(after.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let actors: Vec<&Actor> = after[before.len()..].iter().map(|e| &e.actor).collect();
    assert_eq!(
        actors,
        vec![
            &Actor::Device(dev("th-1")),
            &Actor::Device(dev("th-1")),
            &Actor::Principal("it-admin".into())
        ]
    );
}

fn write(section: Section, path: &str, value: i64, t_ms: u64, node: u32, origin: Origin) -> Write {
    let hlc = HlcTimestamp::from_parts(t_ms, 0, NodeId(node)).unwrap();
    Write::new(
        section,
        Path::new(path).unwrap(),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, origin),
    )
}

#[test]
fn server_side_shadows_use_the_shadow_engine_and_are_wiped_on_decommissioning() {
    let (mut fleet, admin) = setup();
    register(&mut fleet, "th-1", 1, 0).unwrap();
    let id = dev("th-1");
    assert!(fleet.shadow(&admin, &id).unwrap().is_none());

    // The device reports; the operator asks for another interval: a delta appears.
    let reported = [write(
        Section::Reported,
        "interval",
        30,
        1_000,
        1,
        Origin::Device,
    )];
    let first = fleet
        .device_shadow_update(&id, &Update::new(&reported), 1_000)
        .unwrap();
    assert_eq!((first.version, first.changed), (1, true));
    let desired = [write(
        Section::Desired,
        "interval",
        60,
        2_000,
        2,
        Origin::Cloud,
    )];
    let second = fleet
        .update_shadow(&admin, &id, &Update::new(&desired).expecting(1), 2_000)
        .unwrap();
    assert_eq!(second.version, 2);
    let shadow = fleet.shadow(&admin, &id).unwrap().unwrap();
    let delta: Vec<_> = shadow
        .delta()
        .map(|(p, l)| (p.as_str().to_string(), l.value.clone()))
        .collect();
    assert_eq!(delta, vec![("interval".to_string(), Value::Int(60))]);

    // Optimistic concurrency is the engine's: a stale version is a conflict.
    let stale = fleet
        .update_shadow(&admin, &id, &Update::new(&desired).expecting(1), 2_100)
        .unwrap_err();
    assert!(matches!(stale, FleetError::Shadow(_)));
    assert_eq!(stale.kind(), ErrorKind::Conflict);

    // Neither side may stamp writes with the other's origin.
    let spoofed = [write(
        Section::Desired,
        "interval",
        5,
        3_000,
        1,
        Origin::Cloud,
    )];
    assert_eq!(
        fleet
            .device_shadow_update(&id, &Update::new(&spoofed), 3_000)
            .unwrap_err(),
        FleetError::Access(AccessError::Forbidden)
    );
    let operator_as_device = [write(
        Section::Reported,
        "interval",
        5,
        3_000,
        2,
        Origin::Device,
    )];
    assert!(
        fleet
            .update_shadow(&admin, &id, &Update::new(&operator_as_device), 3_000)
            .is_err()
    );

    // The device adopts the desired value: the delta empties.
    let adopted = [write(
        Section::Reported,
        "interval",
        60,
        4_000,
        1,
        Origin::Device,
    )];
    fleet
        .device_shadow_update(&id, &Update::new(&adopted), 4_000)
        .unwrap();
    assert!(fleet.shadow(&admin, &id).unwrap().unwrap().delta_is_empty());
    let audited = fleet
        .audit_trail(&admin)
        .filter(|e| matches!(e.action, AuditAction::ShadowUpdated { version: 2 }))
        .count();
    assert_eq!(audited, 1);

    fleet.decommission(&admin, &id, 5_000).unwrap();
    assert!(fleet.shadow(&admin, &id).is_err());
    assert!(
        fleet
            .device_shadow_update(&id, &Update::new(&adopted), 6_000)
            .is_err()
    );
}

#[test]
fn the_lifecycle_registration_protocol_runs_against_the_fleet() {
    use iot_lifecycle::DeviceConfig;
    use iot_lifecycle::registration::{
        DeviceSecret, RegistrationRejection, RegistrationRequest, RegistrationResponse,
    };
    let (mut fleet, admin) = setup();
    let id = dev("co2-1");
    let device_secret = DeviceSecret::from_bytes(secret("co2-1"));
    let config = DeviceConfig::default();

    // 1. The device asks; the backend challenges with a fresh nonce.
    let ask = RegistrationRequest {
        device: id,
        firmware_version: 7,
        answer: None,
    };
    let nonce = [0xC3; 16];
    let RegistrationResponse::Challenge(got) = fleet.handle_registration(&ask, 0, nonce, config, 0)
    else {
        panic!("expected a challenge");
    };
    assert_eq!(got, nonce);
    // 2. The device answers with iot-lifecycle's own proof; the backend accepts.
    let answer = RegistrationRequest::answering(id, 7, &device_secret, &got).unwrap();
    assert_eq!(
        fleet.handle_registration(&answer, 0, [0; 16], config, 10),
        RegistrationResponse::Accepted(config)
    );
    assert_eq!(
        fleet.device(&admin, &id).unwrap().scope.as_str(),
        "eu/berlin-2"
    );
    // 3. Replaying the answer is a stale nonce; an unknown device is named as such.
    assert_eq!(
        fleet.handle_registration(&answer, 0, [0; 16], config, 20),
        RegistrationResponse::Rejected(RegistrationRejection::StaleNonce)
    );
    let stranger = RegistrationRequest {
        device: dev("stranger"),
        firmware_version: 7,
        answer: None,
    };
    assert_eq!(
        fleet.handle_registration(&stranger, 0, nonce, config, 30),
        RegistrationResponse::Rejected(RegistrationRejection::UnknownDevice)
    );
}

/// `ServerShadow` remembers one client token. An older update replayed after a newer one
/// (its token long evicted) changes nothing, because its stamps are stale or equal to the
/// stored ones; the latest token still replays its first outcome.
#[test]
fn a_replayed_old_update_cannot_change_a_server_shadow() {
    let mut s = ServerShadow::new(
        MapStore::new(),
        iot_fleet::ClassPolicies::Uniform(Policy::LastWriterWins),
        Limits::DEFAULT,
    );
    let a = [
        write(Section::Reported, "interval", 30, 1_000, 7, Origin::Device),
        write(Section::Reported, "led", 1, 1_000, 7, Origin::Device),
    ];
    let b = [write(
        Section::Reported,
        "interval",
        45,
        2_000,
        7,
        Origin::Device,
    )];
    let first_a = s.apply(&Update::new(&a).with_token("a"), 1_000).unwrap();
    let first_b = s.apply(&Update::new(&b).with_token("b"), 2_000).unwrap();
    assert_eq!((first_a.version, first_b.version), (1, 2));
    let before = s.to_cbor();

    let replay_a = s.apply(&Update::new(&a).with_token("a"), 2_500).unwrap();
    assert!(!replay_a.changed);
    assert_eq!(s.to_cbor(), before);
    assert_eq!(s.version(), 2);
    assert_eq!(
        s.value(Section::Reported, &Path::new("interval").unwrap()),
        Some(&Value::Int(45))
    );
    // "b" was evicted by the replay of "a": a retry of "b" is a no-op at the same version.
    let replay_b = s.apply(&Update::new(&b).with_token("b"), 2_600).unwrap();
    assert_eq!((replay_b.version, replay_b.changed), (2, false));
    // The latest token replays its recorded outcome within the window.
    assert_eq!(
        s.apply(&Update::new(&b).with_token("b"), 2_700).unwrap(),
        replay_b
    );
    assert_eq!(s.to_cbor(), before);
}
