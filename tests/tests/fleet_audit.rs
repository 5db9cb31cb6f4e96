//! Audit coverage of the `iot-fleet` facade: every public state-changing `Fleet` method,
//! called once, leaves exactly the expected audit entries (actor, tenant, scope, device,
//! action and time), failed and read-only calls leave none, and the hash chain verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, HlcTimestamp, NodeId, TenantId};
use iot_fleet::rollout::Progress;
use iot_fleet::{
    AccessError, Actor, AssignmentRule, AuditAction, AuditLog, Fleet, FleetError,
    ManufacturingRecord, Matcher, Principal, RegistrationError, Role, RolloutConfig, Scope, Usage,
    answer,
};
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
use iot_lifecycle::{DeviceConfig, Event, State, TransitionError};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Update, Value, Write};

/// One expected entry: time, actor, scope, device, action (the tenant is always `acme`).
type Expected = (u64, Actor, &'static str, Option<DeviceId>, AuditAction);

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn dev(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn secret(id: &DeviceId) -> [u8; 32] {
    let mut s = [0x3c; 32];
    s[0] = id.as_str().len() as u8;
    s[1] = id.as_str().as_bytes()[id.as_str().len() - 1];
    s
}

fn write(section: Section, value: i64, t_ms: u64, writer: &DeviceId, origin: Origin) -> Write {
    let hlc = HlcTimestamp::from_parts(t_ms, 0, NodeId::from_device_id(writer)).unwrap();
    Write::new(
        section,
        Path::new("temp").unwrap(),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, origin),
    )
}

fn principal(actor: &str) -> Actor {
    Actor::Principal(actor.into())
}

/// Runs `f` and checks that it appended exactly `expected` (in order).
fn audited<T>(fleet: &mut Fleet, expected: &[Expected], f: impl FnOnce(&mut Fleet) -> T) -> T {
    let before = fleet.audit_log().len();
    let out = f(fleet);
    let new: Vec<Expected> = fleet.audit_log().all()[before..]
        .iter()
        .map(|e| {
            assert_eq!(e.tenant, acme(), "entry {e:?} has the wrong tenant");
            let scope: &'static str = Box::leak(e.scope.as_str().to_owned().into_boxed_str());
            (e.at_ms, e.actor.clone(), scope, e.device, e.action.clone())
        })
        .collect();
    assert_eq!(new, expected);
    out
}

#[test]
fn every_state_changing_operation_leaves_exactly_its_audit_entries() {
    let hq = Principal::new("hq", acme(), Scope::root(), Role::Admin);
    let ops = Principal::new("ops", acme(), "eu".parse().unwrap(), Role::Operator);
    let viewer = Principal::new("val", acme(), Scope::root(), Role::Viewer);
    let stranger = Principal::new(
        "eve",
        TenantId::new("other").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let (d1, d2) = (dev("th-1"), dev("th-2"));
    let mut fleet = Fleet::default();
    let sys = || Actor::System;

    // ----- provisioning -----
    let records = [d1, d2]
        .iter()
        .enumerate()
        .map(|(i, id)| ManufacturingRecord {
            device_id: *id,
            secret: secret(id),
            sku: "TH-1".into(),
            serial: i as u64,
        })
        .collect();
    let expected = [(
        1,
        principal("hq"),
        "",
        None,
        AuditAction::ManufacturingImported { count: 2 },
    )];
    audited(&mut fleet, &expected, |f| {
        f.import_manufacturing(&hq, &Scope::root(), records, 1)
            .unwrap()
    });
    let rule = AssignmentRule {
        matcher: Matcher::Sku("TH-1".into()),
        scope: "eu/b1".parse().unwrap(),
    };
    let expected = [(
        2,
        principal("hq"),
        "eu/b1",
        None,
        AuditAction::AssignmentRuleAdded,
    )];
    audited(&mut fleet, &expected, |f| {
        f.add_assignment_rule(&hq, rule, 2).unwrap()
    });

    // A challenge only sets the single outstanding nonce: not audited (documented).
    audited(&mut fleet, &[], |f| {
        f.challenge(&d1, 0, [1; 16], 3).unwrap()
    });
    let expected = [(
        4,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::Registered,
    )];
    audited(&mut fleet, &expected, |f| {
        f.register(&d1, 0, &answer(&secret(&d1), &d1, &[1; 16]), 4)
            .unwrap()
    });
    audited(&mut fleet, &[], |f| {
        f.challenge(&d1, 0, [2; 16], 5).unwrap()
    });
    let expected = [(
        5,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::ReRegistered,
    )];
    audited(&mut fleet, &expected, |f| {
        f.register(&d1, 0, &answer(&secret(&d1), &d1, &[2; 16]), 5)
            .unwrap()
    });
    // A rejected registration of a known identity is a security event for its tenant.
    audited(&mut fleet, &[], |f| {
        f.challenge(&d2, 0, [3; 16], 6).unwrap()
    });
    let expected = [(
        6,
        Actor::Device(d2),
        "",
        Some(d2),
        AuditAction::RegistrationRejected(RegistrationError::InvalidProof),
    )];
    audited(&mut fleet, &expected, |f| {
        f.register(&d2, 0, &answer(&[9; 32], &d2, &[3; 16]), 6)
            .unwrap_err()
    });
    // The wire protocol: a challenge (not audited), then the answer (audited).
    let ask = RegistrationRequest {
        device: d2,
        firmware_version: 1,
        answer: None,
    };
    let challenged = audited(&mut fleet, &[], |f| {
        f.handle_registration(&ask, 0, [4; 16], DeviceConfig::default(), 7)
    });
    assert_eq!(challenged, RegistrationResponse::Challenge([4; 16]));
    let reply = RegistrationRequest {
        device: d2,
        firmware_version: 1,
        answer: Some(answer(&secret(&d2), &d2, &[4; 16])),
    };
    let expected = [(
        7,
        Actor::Device(d2),
        "eu/b1",
        Some(d2),
        AuditAction::Registered,
    )];
    let accepted = audited(&mut fleet, &expected, |f| {
        f.handle_registration(&reply, 0, [5; 16], DeviceConfig::default(), 7)
    });
    assert!(matches!(accepted, RegistrationResponse::Accepted(_)));

    // ----- device reports -----
    for (t, id) in [(8, d1), (9, d2)] {
        let expected = [(
            t,
            Actor::Device(id),
            "eu/b1",
            Some(id),
            AuditAction::Transition {
                from: State::Provisioning,
                event: Event::ConfigComplete,
                to: State::Active,
            },
        )];
        audited(&mut fleet, &expected, |f| {
            f.report_transition(&id, Event::ConfigComplete, State::Active, t)
                .unwrap()
        });
    }
    let expected = [(
        10,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::IllegalTransitionFlagged {
            error: TransitionError {
                state: State::Active,
                event: Event::UpdateComplete,
            },
            claimed: State::Active,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.report_transition(&d1, Event::UpdateComplete, State::Active, 10)
            .unwrap_err()
    });
    // A self-loop changes nothing: no entry.
    audited(&mut fleet, &[], |f| {
        f.report_transition(&d1, Event::NormalOperation, State::Active, 11)
            .unwrap()
    });
    // A heartbeat of an online device refreshes measurements only.
    audited(&mut fleet, &[], |f| {
        f.heartbeat(&d1, Some(80.0), 12).unwrap()
    });
    let usage = Usage {
        messages: 5,
        stored_bytes: 100,
    };
    let expected = [(
        13,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::UsageRecorded { usage },
    )];
    audited(&mut fleet, &expected, |f| {
        f.record_usage(&d1, usage, 13).unwrap()
    });
    audited(&mut fleet, &[], |f| {
        f.record_usage(&d1, Usage::default(), 13).unwrap()
    });

    // ----- shadows: the device's own report and an operator's write -----
    let reported = [write(Section::Reported, 21, 14, &d1, Origin::Device)];
    let expected = [(
        14,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::ShadowUpdated { version: 1 },
    )];
    let outcome = audited(&mut fleet, &expected, |f| {
        f.device_shadow_update(&d1, &Update::new(&reported), 14)
            .unwrap()
    });
    assert_eq!((outcome.changed, outcome.version), (true, 1));
    // The same write again changes nothing: no entry.
    let outcome = audited(&mut fleet, &[], |f| {
        f.device_shadow_update(&d1, &Update::new(&reported), 15)
            .unwrap()
    });
    assert!(!outcome.changed);
    let desired = [write(Section::Desired, 19, 16, &d1, Origin::Cloud)];
    let expected = [(
        16,
        principal("ops"),
        "eu/b1",
        Some(d1),
        AuditAction::ShadowUpdated { version: 2 },
    )];
    audited(&mut fleet, &expected, |f| {
        f.update_shadow(&ops, &d1, &Update::new(&desired), 16)
            .unwrap()
    });

    // ----- health: offline and back online -----
    let expected = [
        (
            100_000,
            sys(),
            "eu/b1",
            Some(d1),
            AuditAction::MarkedOffline,
        ),
        (
            100_000,
            sys(),
            "eu/b1",
            Some(d2),
            AuditAction::MarkedOffline,
        ),
    ];
    let offline = audited(&mut fleet, &expected, |f| f.sweep(100_000));
    assert_eq!(offline, [d1, d2]);
    audited(&mut fleet, &[], |f| f.sweep(100_001));
    for (t, id) in [(100_010, d1), (100_011, d2)] {
        let expected = [(
            t,
            Actor::Device(id),
            "eu/b1",
            Some(id),
            AuditAction::BackOnline,
        )];
        audited(&mut fleet, &expected, |f| {
            f.heartbeat(&id, None, t).unwrap()
        });
    }

    // ----- operator writes -----
    let expected = [(
        100_020,
        principal("ops"),
        "eu/b1",
        Some(d1),
        AuditAction::Transition {
            from: State::Active,
            event: Event::HealthCheckFailed,
            to: State::Degraded,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.request_transition(&ops, &d1, Event::HealthCheckFailed, 100_020)
            .unwrap()
    });
    let expected = [(
        100_021,
        Actor::Device(d1),
        "eu/b1",
        Some(d1),
        AuditAction::Transition {
            from: State::Degraded,
            event: Event::AutoRecovery,
            to: State::Active,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.report_transition(&d1, Event::AutoRecovery, State::Active, 100_021)
            .unwrap()
    });
    let expected = [(
        100_022,
        principal("ops"),
        "eu/b2",
        Some(d1),
        AuditAction::Moved {
            from: "eu/b1".parse().unwrap(),
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.move_device(&ops, &d1, &"eu/b2".parse().unwrap(), 100_022)
            .unwrap()
    });

    // ----- rollouts: report, time-out, pause, resume, abort -----
    let whole = RolloutConfig {
        stages_bp: vec![10_000],
        max_failure_bp: 10_000,
        report_timeout_ms: 1_000,
        ..RolloutConfig::default()
    };
    let expected = [(
        200_000,
        principal("ops"),
        "eu",
        None,
        AuditAction::RolloutStarted {
            rollout: 0,
            version: "2.0".into(),
        },
    )];
    let r0 = audited(&mut fleet, &expected, |f| {
        f.start_rollout(
            &ops,
            &"eu".parse().unwrap(),
            "2.0",
            Some("1.0"),
            whole,
            200_000,
        )
        .unwrap()
    });
    let expected = [(
        200_001,
        Actor::Device(d1),
        "eu/b2",
        Some(d1),
        AuditAction::UpdateReported {
            rollout: r0,
            success: true,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.report_update(&d1, r0, true, 200_001).unwrap()
    });
    // d2 stays silent: nothing until its deadline (200,000 + 1,000) has passed.
    audited(&mut fleet, &[], |f| f.tick_rollouts(201_000));
    let expected = [
        (
            201_001,
            sys(),
            "eu/b1",
            Some(d2),
            AuditAction::UpdateTimedOut { rollout: r0 },
        ),
        (
            201_001,
            sys(),
            "eu",
            None,
            AuditAction::RolloutCompleted { rollout: r0 },
        ),
    ];
    let ticked = audited(&mut fleet, &expected, |f| f.tick_rollouts(201_001));
    assert_eq!(ticked.len(), 1);
    assert_eq!(ticked[0].expiry.timed_out, [d2]);

    let halves = RolloutConfig {
        stages_bp: vec![5_000, 10_000],
        ..RolloutConfig::default()
    };
    let r1 = audited(
        &mut fleet,
        &[(
            300_000,
            principal("ops"),
            "eu",
            None,
            AuditAction::RolloutStarted {
                rollout: 1,
                version: "2.1".into(),
            },
        )],
        |f| {
            f.start_rollout(
                &ops,
                &"eu".parse().unwrap(),
                "2.1",
                Some("2.0"),
                halves,
                300_000,
            )
            .unwrap()
        },
    );
    let expected = [(
        300_001,
        principal("ops"),
        "eu",
        None,
        AuditAction::RolloutPaused { rollout: r1 },
    )];
    audited(&mut fleet, &expected, |f| {
        f.pause_rollout(&ops, r1, 300_001).unwrap()
    });
    // The canary, already installing, reports while paused: counted, no advance.
    let canary = fleet.rollout(&ops, r1).unwrap().rollout.stage_members(0)[0];
    let scope_of = |f: &Fleet, id: &DeviceId| f.device(&hq, id).unwrap().scope.as_str().to_owned();
    let canary_scope: &'static str = Box::leak(scope_of(&fleet, &canary).into_boxed_str());
    let expected = [(
        300_002,
        Actor::Device(canary),
        canary_scope,
        Some(canary),
        AuditAction::UpdateReported {
            rollout: r1,
            success: true,
        },
    )];
    let progress = audited(&mut fleet, &expected, |f| {
        f.report_update(&canary, r1, true, 300_002).unwrap()
    });
    assert_eq!(progress, Progress::Unchanged);
    let expected = [
        (
            300_003,
            principal("ops"),
            "eu",
            None,
            AuditAction::RolloutResumed { rollout: r1 },
        ),
        (
            300_003,
            sys(),
            "eu",
            None,
            AuditAction::RolloutAdvanced {
                rollout: r1,
                stage: 1,
            },
        ),
    ];
    let progress = audited(&mut fleet, &expected, |f| {
        f.resume_rollout(&ops, r1, 300_003).unwrap()
    });
    assert_eq!(progress, Progress::Advanced(1));
    let expected = [(
        300_004,
        principal("ops"),
        "eu",
        None,
        AuditAction::RolloutAborted {
            rollout: r1,
            stage: 1,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.abort_rollout(&ops, r1, 300_004).unwrap()
    });

    // ----- decommissioning -----
    let expected = [(
        400_000,
        principal("hq"),
        "eu/b1",
        Some(d2),
        AuditAction::Decommissioned {
            previous: State::Active,
            forced: false,
        },
    )];
    audited(&mut fleet, &expected, |f| {
        f.decommission(&hq, &d2, 400_000).unwrap()
    });

    // ----- refused writes leave nothing -----
    audited(&mut fleet, &[], |f| {
        assert_eq!(
            f.pause_rollout(&viewer, r1, 1).unwrap_err(),
            FleetError::Access(AccessError::Forbidden)
        );
        assert_eq!(
            f.abort_rollout(&stranger, r1, 1).unwrap_err(),
            FleetError::Access(AccessError::NotFound)
        );
        assert!(f.resume_rollout(&ops, r0, 1).is_err());
        assert!(f.abort_rollout(&ops, r0, 1).is_err());
        assert!(f.move_device(&viewer, &d1, &Scope::root(), 1).is_err());
        assert!(f.decommission(&ops, &d1, 1).is_err());
        assert!(f.record_usage(&d2, usage, 1).is_err());
        assert!(f.challenge(&dev("nobody"), 0, [0; 16], 1).is_err());
    });

    // ----- read-only methods leave nothing -----
    audited(&mut fleet, &[], |f| {
        let _ = f.policy();
        let _ = f.registered_count();
        let _ = f.instructions(&d1);
        let _ = f.device(&hq, &d1).unwrap();
        let _ = f.devices(&hq).count();
        let _ = f.health_report(&hq, &Scope::root(), 500_000).unwrap();
        let _ = f.battery_schedule(&hq, &Scope::root(), 500_000, 1).unwrap();
        let _ = f.metering(&hq, &Scope::root(), 500_000).unwrap();
        let _ = f.audit_trail(&hq).count();
        let _ = f.shadow(&hq, &d1).unwrap();
        let _ = f.rollout(&hq, r0).unwrap();
    });

    // The whole trail chains, numbered without gaps, every entry this tenant's.
    let all = fleet.audit_log().all();
    assert_eq!(AuditLog::verify_chain(all), Ok(()));
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_eq!(fleet.audit_trail(&hq).count(), all.len());
    assert_eq!(fleet.audit_trail(&stranger).count(), 0);
}

#[test]
fn an_exported_audit_trail_and_device_records_round_trip_through_serde() {
    let hq = Principal::new("hq", acme(), Scope::root(), Role::Admin);
    let id = dev("th-9");
    let mut fleet = Fleet::default();
    let record = ManufacturingRecord {
        device_id: id,
        secret: secret(&id),
        sku: "TH-1".into(),
        serial: 9,
    };
    fleet
        .import_manufacturing(&hq, &"eu".parse().unwrap(), vec![record], 1)
        .unwrap();
    fleet.challenge(&id, 0, [1; 16], 2).unwrap();
    fleet
        .register(&id, 0, &answer(&secret(&id), &id, &[1; 16]), 2)
        .unwrap();
    // A flagged illegal transition puts a `TransitionError` in both the record and the log.
    fleet
        .report_transition(&id, Event::UpdateComplete, State::Active, 3)
        .unwrap_err();
    fleet.heartbeat(&id, Some(77.5), 4).unwrap();
    fleet
        .record_usage(
            &id,
            Usage {
                messages: 3,
                stored_bytes: 30,
            },
            5,
        )
        .unwrap();

    let json = serde_json::to_string(fleet.audit_log().all()).unwrap();
    let back: Vec<iot_fleet::AuditEntry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, fleet.audit_log().all());
    assert_eq!(AuditLog::verify_chain(&back), Ok(()));
    // Tampering with the exported copy is detected.
    let tampered = json.replacen("\"messages\":3", "\"messages\":4", 1);
    assert_ne!(tampered, json);
    let tampered: Vec<iot_fleet::AuditEntry> = serde_json::from_str(&tampered).unwrap();
    assert!(AuditLog::verify_chain(&tampered).is_err());

    let device = fleet.device(&hq, &id).unwrap();
    assert!(device.last_flag.is_some());
    let json = serde_json::to_string(device).unwrap();
    let back: iot_fleet::DeviceRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, device);
}
