//! Staged OTA rollouts through the fleet facade: a rollout that halts on injected failures
//! and tells the failed devices to roll back, and the property that no stage ever holds more
//! devices than its share, whatever the targets, stages and outcomes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, TenantId};
use iot_fleet::rollout::{Outcome, Progress, stage_cap};
use iot_fleet::{
    AuditAction, Fleet, Instruction, ManufacturingRecord, Principal, Role, Rollout, RolloutConfig,
    RolloutStatus, Scope, answer,
};
use iot_lifecycle::{Event, State};
use proptest::prelude::*;

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("node-{i:04}")).unwrap()
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [7; 32];
    s[0] = i as u8;
    s[1] = (i >> 8) as u8;
    s
}

fn active_fleet(n: usize) -> (Fleet, Principal) {
    let acme = TenantId::new("acme").unwrap();
    let admin = Principal::new("release-manager", acme, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    let records = (0..n)
        .map(|i| ManufacturingRecord {
            device_id: id(i),
            secret: secret(i),
            sku: "TH-1".into(),
            serial: i as u64,
        })
        .collect();
    fleet
        .import_manufacturing(&admin, &"eu/b1".parse().unwrap(), records, 0)
        .unwrap();
    for i in 0..n {
        fleet.challenge(&id(i), [3; 16], 1).unwrap();
        fleet
            .register(&id(i), &answer(&secret(i), &id(i), &[3; 16]), 1)
            .unwrap();
        fleet
            .report_transition(&id(i), Event::ConfigComplete, State::Active, 2)
            .unwrap();
    }
    (fleet, admin)
}

#[test]
fn rollout_halts_on_injected_failures_and_failed_devices_roll_back() {
    let (mut fleet, admin) = active_fleet(1000);
    let r = fleet
        .start_rollout(
            &admin,
            &Scope::root(),
            "2.0.0",
            Some("1.4.2"),
            RolloutConfig::default(),
            10,
        )
        .unwrap();

    // Stage 0 (1 %): exactly 10 devices are told to install; all succeed.
    let told: Vec<DeviceId> = (0..1000)
        .map(id)
        .filter(|d| !fleet.instructions(d).is_empty())
        .collect();
    assert_eq!(told.len(), 10);
    for d in &told {
        assert_eq!(
            fleet.instructions(d),
            vec![(
                r,
                Instruction::Install {
                    version: "2.0.0".into()
                }
            )]
        );
    }
    let mut last = Progress::Unchanged;
    for d in &told {
        last = fleet.report_update(d, r, true, 20).unwrap();
    }
    assert_eq!(last, Progress::Advanced(1));
    assert_eq!(
        fleet.device(&admin, &told[0]).unwrap().firmware.as_deref(),
        Some("2.0.0")
    );

    // Stage 1 (10 %): 90 new devices. Inject failures into the first eight to report.
    let stage1 = fleet
        .rollout(&admin, r)
        .unwrap()
        .rollout
        .stage_members(1)
        .to_vec();
    assert_eq!(stage1.len(), 90);
    let mut halted_after = None;
    for (k, d) in stage1.iter().enumerate() {
        match fleet.report_update(d, r, k >= 8, 30) {
            Ok(Progress::Halted(stage)) => {
                assert_eq!(stage, 1);
                halted_after = Some(k);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // 5 failures of 90 = 5.6 % exceeds the 5 % threshold: halted on the fifth failure.
    assert_eq!(halted_after, Some(4));
    let scoped = fleet.rollout(&admin, r).unwrap().clone();
    assert_eq!(scoped.rollout.status(), RolloutStatus::Halted { stage: 1 });
    for d in &stage1[..5] {
        assert_eq!(
            fleet.instructions(d),
            vec![(
                r,
                Instruction::RollBack {
                    to: Some("1.4.2".into())
                }
            )]
        );
    }
    // Nobody else is told anything: no further installs once halted.
    let instructed = (0..1000)
        .map(id)
        .filter(|d| !fleet.instructions(d).is_empty())
        .count();
    assert_eq!(instructed, 5);
    assert!(fleet.report_update(&stage1[20], r, true, 40).is_err());
    assert_eq!(scoped.rollout.admitted().count(), 100);

    let halts: Vec<_> = fleet
        .audit_trail(&admin)
        .filter(|e| matches!(e.action, AuditAction::RolloutHalted { rollout, stage: 1 } if rollout == r))
        .collect();
    assert_eq!(halts.len(), 1);
}

#[test]
fn rollout_without_failures_reaches_every_active_device() {
    let (mut fleet, admin) = active_fleet(300);
    // One device is in maintenance: not a target.
    fleet
        .request_transition(&admin, &id(7), Event::ScheduledUpdate, 5)
        .unwrap();
    let r = fleet
        .start_rollout(
            &admin,
            &Scope::root(),
            "2.0.0",
            None,
            RolloutConfig::default(),
            10,
        )
        .unwrap();
    let mut rounds = 0;
    loop {
        let pending: Vec<DeviceId> = (0..300)
            .map(id)
            .filter(|d| !fleet.instructions(d).is_empty())
            .collect();
        if pending.is_empty() {
            break;
        }
        for d in pending {
            fleet.report_update(&d, r, true, 20).unwrap();
        }
        rounds += 1;
    }
    let rollout = &fleet.rollout(&admin, r).unwrap().rollout;
    assert_eq!(rollout.status(), RolloutStatus::Completed);
    assert_eq!(rollout.target_count(), 299);
    // 1 % of 299 is 2 devices, then 29, 149, 299: four stages.
    assert_eq!(rollout.stage_caps(), &[2, 29, 149, 299]);
    assert_eq!(rounds, 4);
    assert_eq!(fleet.device(&admin, &id(7)).unwrap().firmware, None);
}

fn stages() -> impl Strategy<Value = Vec<u16>> {
    prop::collection::btree_set(1u16..10_000, 0..5).prop_map(|set| {
        let mut v: Vec<u16> = set.into_iter().collect();
        v.push(10_000);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_stage_never_holds_more_devices_than_its_share(
        n in 0usize..400,
        stages_bp in stages(),
        max_failure_bp in 0u16..=10_000,
        outcomes in prop::collection::vec(any::<bool>(), 400),
        salt in any::<u64>(),
    ) {
        let targets: Vec<DeviceId> = (0..n).map(id).collect();
        let config = RolloutConfig { stages_bp: stages_bp.clone(), max_failure_bp, salt };
        let mut rollout = Rollout::new("2", None, targets, config).unwrap();
        let check = |r: &Rollout| -> Result<(), TestCaseError> {
            let admitted = r.admitted().count();
            let stage = match r.status() {
                RolloutStatus::Running { stage } | RolloutStatus::Halted { stage } => stage,
                _ => stages_bp.len() - 1,
            };
            // Cumulative admission is within the current stage's share of the targets.
            prop_assert!(admitted <= stage_cap(stages_bp[stage], n));
            for (k, share) in stages_bp.iter().enumerate() {
                let before = if k == 0 { 0 } else { stage_cap(stages_bp[k - 1], n) };
                prop_assert!(r.stage_members(k).len() <= stage_cap(*share, n) - before);
                prop_assert!(r.stage_caps()[k] * 10_000 <= usize::from(*share) * n);
                // The incremental tally agrees with a recount of the stage's outcomes.
                let recount = r.stage_members(k).iter().fold((0, 0, 0), |(s, f, p), d| {
                    match r.outcome(d) {
                        Some(Outcome::Succeeded) => (s + 1, f, p),
                        Some(Outcome::Failed) => (s, f + 1, p),
                        Some(Outcome::Pending) => (s, f, p + 1),
                        _ => (s, f, p),
                    }
                });
                prop_assert_eq!(r.stage_tally(k), recount);
            }
            Ok(())
        };
        check(&rollout)?;
        let mut i = 0;
        while let RolloutStatus::Running { stage } = rollout.status() {
            let members: Vec<DeviceId> = rollout.stage_members(stage).to_vec();
            for d in members {
                if rollout.outcome(&d) == Some(Outcome::Pending)
                    && matches!(rollout.status(), RolloutStatus::Running { .. })
                {
                    rollout.report(&d, outcomes[i % outcomes.len()]).unwrap();
                    i += 1;
                }
            }
            check(&rollout)?;
        }
        // A halted stage really exceeded the threshold; a completed rollout reached everyone.
        match rollout.status() {
            RolloutStatus::Halted { stage } => {
                let (_, failed, _) = rollout.stage_tally(stage);
                let size = rollout.stage_members(stage).len();
                prop_assert!(failed * 10_000 > usize::from(max_failure_bp) * size);
            }
            RolloutStatus::Completed => prop_assert_eq!(rollout.admitted().count(), n),
            _ => {}
        }
    }
}
