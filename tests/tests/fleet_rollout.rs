//! Staged OTA rollouts through the fleet facade: a rollout that halts on injected failures
//! and tells the failed devices to roll back; silent devices that time out after the report
//! deadline (never before) and make the stage advance or halt; operator pause, resume and
//! abort with their access checks; and the property that no stage ever holds more devices
//! than its share, whatever the targets, stages, outcomes, time-outs and operator actions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, TenantId};
use iot_fleet::rollout::{Outcome, Progress, RolloutError, stage_cap};
use iot_fleet::{
    AccessError, Actor, AuditAction, Fleet, FleetError, Instruction, ManufacturingRecord,
    Principal, Role, Rollout, RolloutConfig, RolloutStatus, Scope, answer,
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
        fleet.challenge(&id(i), 0, [3; 16], 1).unwrap();
        fleet
            .register(&id(i), 0, &answer(&secret(i), &id(i), &[3; 16]), 1)
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
    // A device still installing when the rollout halted reports late: a success is
    // recorded and needs nothing more; a failure is told to roll back. Still halted.
    assert!(fleet.report_update(&stage1[20], r, true, 40).is_ok());
    assert!(fleet.instructions(&stage1[20]).is_empty());
    assert!(fleet.report_update(&stage1[21], r, false, 41).is_ok());
    assert_eq!(
        fleet.instructions(&stage1[21]),
        vec![(
            r,
            Instruction::RollBack {
                to: Some("1.4.2".into())
            }
        )]
    );
    let scoped = fleet.rollout(&admin, r).unwrap().clone();
    assert_eq!(scoped.rollout.status(), RolloutStatus::Halted { stage: 1 });
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

fn timed(timeout: u64, max_failure_bp: u16) -> RolloutConfig {
    RolloutConfig {
        report_timeout_ms: timeout,
        max_failure_bp,
        ..RolloutConfig::default()
    }
}

/// Devices currently told to install by rollout `r`.
fn installing(fleet: &Fleet, n: usize, r: u32) -> Vec<DeviceId> {
    (0..n)
        .map(id)
        .filter(|d| {
            fleet
                .instructions(d)
                .iter()
                .any(|(k, i)| *k == r && matches!(i, Instruction::Install { .. }))
        })
        .collect()
}

#[test]
fn a_silent_canary_halts_the_rollout_after_the_deadline_and_not_before() {
    let (mut fleet, admin) = active_fleet(1000);
    let r = fleet
        .start_rollout(
            &admin,
            &Scope::root(),
            "2.0",
            Some("1.0"),
            timed(10_000, 500),
            10,
        )
        .unwrap();
    let canaries = installing(&fleet, 1000, r);
    assert_eq!(canaries.len(), 10);
    for d in &canaries[..9] {
        fleet.report_update(d, r, true, 20).unwrap();
    }
    // Up to and including the deadline (start + timeout) nothing times out.
    for now in [20, 5_000, 10_010] {
        assert!(fleet.tick_rollouts(now).is_empty());
        let rollout = &fleet.rollout(&admin, r).unwrap().rollout;
        assert_eq!(rollout.status(), RolloutStatus::Running { stage: 0 });
        assert_eq!(installing(&fleet, 1000, r), [canaries[9]]);
    }
    let ticked = fleet.tick_rollouts(10_011);
    assert_eq!(ticked.len(), 1);
    assert_eq!(ticked[0].expiry.timed_out, [canaries[9]]);
    // 1 of 10 = 10 % > 5 %: halted; the silent device is told to roll back.
    assert_eq!(ticked[0].expiry.progress, Progress::Halted(0));
    let rollout = &fleet.rollout(&admin, r).unwrap().rollout;
    assert_eq!(rollout.status(), RolloutStatus::Halted { stage: 0 });
    assert_eq!(rollout.stage_tally(0).timed_out, 1);
    assert_eq!(
        fleet.instructions(&canaries[9]),
        [(
            r,
            Instruction::RollBack {
                to: Some("1.0".into())
            }
        )]
    );
    assert!(installing(&fleet, 1000, r).is_empty());
    // Ticking again changes nothing; the late report is refused.
    assert!(fleet.tick_rollouts(20_000).is_empty());
    assert_eq!(
        fleet.report_update(&canaries[9], r, true, 20_001),
        Err(FleetError::Rollout(RolloutError::Expired))
    );
    let audit: Vec<_> = fleet
        .audit_trail(&admin)
        .filter(|e| e.at_ms == 10_011)
        .map(|e| (e.actor.clone(), e.device, e.action.clone()))
        .collect();
    assert_eq!(
        audit,
        [
            (
                Actor::System,
                Some(canaries[9]),
                AuditAction::UpdateTimedOut { rollout: r }
            ),
            (
                Actor::System,
                None,
                AuditAction::RolloutHalted {
                    rollout: r,
                    stage: 0
                }
            ),
        ]
    );
}

#[test]
fn silent_devices_within_the_threshold_let_the_stage_advance_after_the_deadline() {
    let (mut fleet, admin) = active_fleet(1000);
    // 10 % may fail: one silent canary of ten is tolerated.
    let r = fleet
        .start_rollout(&admin, &Scope::root(), "2.0", None, timed(1_000, 1_000), 0)
        .unwrap();
    let canaries = installing(&fleet, 1000, r);
    for d in &canaries[..9] {
        fleet.report_update(d, r, true, 100).unwrap();
    }
    assert!(fleet.tick_rollouts(1_000).is_empty());
    assert_eq!(installing(&fleet, 1000, r).len(), 1);
    let ticked = fleet.tick_rollouts(1_001);
    assert_eq!(ticked[0].expiry.progress, Progress::Advanced(1));
    // Stage 1 (90 devices) starts its own clock at 1,001.
    let stage1 = installing(&fleet, 1000, r);
    assert_eq!(stage1.len(), 90);
    assert_eq!(
        fleet.rollout(&admin, r).unwrap().rollout.deadline_ms(),
        Some(2_001)
    );
    for d in &stage1[..85] {
        fleet.report_update(d, r, true, 1_500).unwrap();
    }
    assert!(fleet.tick_rollouts(2_001).is_empty());
    // A report after the deadline times out the overdue devices first and is refused:
    // 5 of 90 (5.6 %) silent is within 10 %, so the stage advances and the late device's
    // report is `Expired`.
    assert_eq!(
        fleet.report_update(&stage1[85], r, true, 2_002),
        Err(FleetError::Rollout(RolloutError::Expired))
    );
    let rollout = &fleet.rollout(&admin, r).unwrap().rollout;
    assert_eq!(rollout.status(), RolloutStatus::Running { stage: 2 });
    assert_eq!(rollout.stage_tally(1).timed_out, 5);
    assert_eq!(rollout.outcome(&stage1[85]), Some(Outcome::TimedOut));
    let timeouts = fleet
        .audit_trail(&admin)
        .filter(|e| matches!(e.action, AuditAction::UpdateTimedOut { .. }))
        .count();
    assert_eq!(timeouts, 6);
}

#[test]
fn operators_pause_resume_and_abort_and_others_cannot() {
    let (mut fleet, admin) = active_fleet(200);
    let acme = TenantId::new("acme").unwrap();
    let viewer = Principal::new("v", acme, Scope::root(), Role::Viewer);
    let elsewhere = Principal::new("o", acme, "us".parse().unwrap(), Role::Admin);
    let stranger = Principal::new(
        "x",
        TenantId::new("other").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let r = fleet
        .start_rollout(
            &admin,
            &Scope::root(),
            "2.0",
            Some("1.0"),
            timed(100, 500),
            0,
        )
        .unwrap();
    let denied = |e| Err(FleetError::Access(e));
    for (p, e) in [
        (&viewer, AccessError::Forbidden),
        (&elsewhere, AccessError::NotFound),
        (&stranger, AccessError::NotFound),
    ] {
        assert_eq!(fleet.pause_rollout(p, r, 1), denied(e));
        assert_eq!(fleet.resume_rollout(p, r, 1).map(|_| ()), denied(e));
        assert_eq!(fleet.abort_rollout(p, r, 1), denied(e));
    }
    assert_eq!(
        fleet.pause_rollout(&admin, 99, 1),
        denied(AccessError::NotFound)
    );
    let canaries = installing(&fleet, 200, r);
    assert_eq!(canaries.len(), 2);

    // Paused: nobody is told to install and the deadline does not run.
    fleet.pause_rollout(&admin, r, 10).unwrap();
    assert!(installing(&fleet, 200, r).is_empty());
    assert!(fleet.tick_rollouts(1_000_000).is_empty());
    fleet.report_update(&canaries[0], r, true, 20).unwrap();
    // Resumed at 2,000,000: the other canary is told again, with a fresh deadline.
    assert_eq!(
        fleet.resume_rollout(&admin, r, 2_000_000),
        Ok(Progress::Unchanged)
    );
    assert_eq!(installing(&fleet, 200, r), [canaries[1]]);
    assert!(fleet.tick_rollouts(2_000_100).is_empty());
    fleet
        .report_update(&canaries[1], r, true, 2_000_050)
        .unwrap();
    let stage1 = installing(&fleet, 200, r);
    assert_eq!(stage1.len(), 18);
    fleet.report_update(&stage1[0], r, true, 2_000_060).unwrap();
    fleet
        .report_update(&stage1[1], r, false, 2_000_060)
        .unwrap();

    // Aborted: everything that installed the new image rolls back, pending devices cancel.
    fleet.abort_rollout(&admin, r, 2_000_070).unwrap();
    let back = Instruction::RollBack {
        to: Some("1.0".into()),
    };
    for d in [canaries[0], canaries[1], stage1[0], stage1[1]] {
        assert_eq!(fleet.instructions(&d), [(r, back.clone())]);
    }
    for d in &stage1[2..] {
        assert_eq!(
            fleet.instructions(d),
            [(
                r,
                Instruction::Cancel {
                    to: Some("1.0".into())
                }
            )]
        );
    }
    assert!(installing(&fleet, 200, r).is_empty());
    assert_eq!(
        fleet.report_update(&stage1[2], r, true, 2_000_080),
        Err(FleetError::Rollout(RolloutError::NotRunning))
    );
    assert!(fleet.tick_rollouts(u64::MAX).is_empty());
    assert_eq!(
        fleet.abort_rollout(&admin, r, 2_000_090),
        Err(FleetError::Rollout(RolloutError::Ended))
    );
    assert_eq!(
        fleet.resume_rollout(&admin, r, 2_000_090),
        Err(FleetError::Rollout(RolloutError::NotPaused))
    );
    let control: Vec<_> = fleet
        .audit_trail(&admin)
        .filter_map(|e| match e.action {
            AuditAction::RolloutPaused { .. }
            | AuditAction::RolloutResumed { .. }
            | AuditAction::RolloutAborted { .. } => Some((e.at_ms, e.action.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        control,
        [
            (10, AuditAction::RolloutPaused { rollout: r }),
            (2_000_000, AuditAction::RolloutResumed { rollout: r }),
            (
                2_000_070,
                AuditAction::RolloutAborted {
                    rollout: r,
                    stage: 1
                }
            ),
        ]
    );
}

fn stages() -> impl Strategy<Value = Vec<u16>> {
    prop::collection::btree_set(1u16..10_000, 0..5).prop_map(|set| {
        let mut v: Vec<u16> = set.into_iter().collect();
        v.push(10_000);
        v
    })
}

/// One step of a randomly driven rollout.
#[derive(Debug, Clone)]
enum Step {
    /// The `k`-th pending device of the current stage (modulo) reports.
    Report(usize, bool),
    /// Time passes by this many milliseconds and the deadline is applied.
    Tick(u64),
    Pause,
    Resume,
    Abort,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<usize>(), prop::bool::weighted(0.9)).prop_map(|(k, ok)| Step::Report(k, ok)),
        2 => (0u64..300).prop_map(Step::Tick),
        1 => Just(Step::Pause),
        1 => Just(Step::Resume),
        1 => Just(Step::Abort),
    ]
}

fn stage_of(status: RolloutStatus, last: usize) -> usize {
    match status {
        RolloutStatus::Running { stage }
        | RolloutStatus::Halted { stage }
        | RolloutStatus::Paused { stage }
        | RolloutStatus::Aborted { stage } => stage,
        _ => last,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_stage_never_holds_more_devices_than_its_share(
        n in 0usize..400,
        stages_bp in stages(),
        max_failure_bp in 0u16..=10_000,
        timeout in 1u64..200,
        steps in prop::collection::vec(step(), 0..80),
        salt in any::<u64>(),
    ) {
        let targets: Vec<DeviceId> = (0..n).map(id).collect();
        let config = RolloutConfig {
            stages_bp: stages_bp.clone(),
            max_failure_bp,
            salt,
            report_timeout_ms: timeout,
        };
        let mut rollout = Rollout::new("2", None, targets, config, 0).unwrap();
        let last = stages_bp.len() - 1;
        let check = |r: &Rollout| -> Result<(), TestCaseError> {
            let admitted = r.admitted().count();
            let stage = stage_of(r.status(), last);
            // Cumulative admission is within the current stage's share of the targets.
            prop_assert!(admitted <= stage_cap(stages_bp[stage], n));
            for (k, share) in stages_bp.iter().enumerate() {
                let before = if k == 0 { 0 } else { stage_cap(stages_bp[k - 1], n) };
                prop_assert!(r.stage_members(k).len() <= stage_cap(*share, n) - before);
                prop_assert!(r.stage_caps()[k] * 10_000 <= usize::from(*share) * n);
                // The incremental tally agrees with a recount of the stage's outcomes.
                let t = r.stage_tally(k);
                let mut recount = [0usize; 4];
                for d in r.stage_members(k) {
                    match r.outcome(d) {
                        Some(Outcome::Succeeded) => recount[0] += 1,
                        Some(Outcome::Failed) => recount[1] += 1,
                        Some(Outcome::TimedOut) => recount[2] += 1,
                        Some(Outcome::Pending) => recount[3] += 1,
                        _ => {}
                    }
                }
                prop_assert_eq!([t.succeeded, t.failed, t.timed_out, t.pending], recount);
                // Only the current stage (or earlier ones) ever has outcomes.
                if k > stage {
                    prop_assert_eq!(t.succeeded + t.failed + t.timed_out + t.pending, 0);
                }
            }
            Ok(())
        };
        check(&rollout)?;
        let mut now = 0u64;
        for s in &steps {
            let before = rollout.status();
            match s {
                Step::Report(k, ok) => {
                    let stage = stage_of(before, last);
                    let pending: Vec<DeviceId> = rollout
                        .stage_members(stage)
                        .iter()
                        .filter(|d| rollout.outcome(d) == Some(Outcome::Pending))
                        .copied()
                        .collect();
                    if let Some(d) = pending.get(k % pending.len().max(1)) {
                        let r = rollout.report(d, *ok, now);
                        // A halted rollout still records late reports (failures roll back).
                        let accepts = matches!(
                            before,
                            RolloutStatus::Running { .. } | RolloutStatus::Paused { .. } | RolloutStatus::Halted { .. }
                        );
                        prop_assert_eq!(r.is_ok(), accepts);
                    }
                }
                Step::Tick(dt) => {
                    now += dt;
                    let deadline = rollout.deadline_ms();
                    let stage = stage_of(before, last);
                    let pending_before = rollout.stage_tally(stage).pending;
                    let expiry = rollout.expire(now);
                    match (before, deadline) {
                        // Never before the deadline, never unless running...
                        (RolloutStatus::Running { .. }, Some(d)) if now > d => {
                            // ...and after it, every silent device of the stage times out.
                            prop_assert_eq!(expiry.timed_out.len(), pending_before);
                        }
                        _ => prop_assert!(expiry.timed_out.is_empty()),
                    }
                }
                Step::Pause => {
                    let r = rollout.pause();
                    prop_assert_eq!(r.is_ok(), matches!(before, RolloutStatus::Running { .. }));
                }
                Step::Resume => {
                    let r = rollout.resume(now);
                    prop_assert_eq!(r.is_ok(), matches!(before, RolloutStatus::Paused { .. }));
                    if r.is_ok() && matches!(rollout.status(), RolloutStatus::Running { .. }) {
                        prop_assert_eq!(rollout.deadline_ms(), Some(now + timeout));
                    }
                }
                Step::Abort => {
                    let r = rollout.abort();
                    let ended = matches!(before, RolloutStatus::Completed | RolloutStatus::Aborted { .. });
                    prop_assert_eq!(r.is_err(), ended);
                    // After an abort nobody admitted is told to install.
                    let installs = rollout
                        .admitted()
                        .filter(|d| matches!(rollout.instruction(d), Instruction::Install { .. }))
                        .count();
                    prop_assert_eq!(installs, 0);
                }
            }
            check(&rollout)?;
        }
        // A halted stage really exceeded the threshold; a completed rollout reached everyone.
        match rollout.status() {
            RolloutStatus::Halted { stage } => {
                let t = rollout.stage_tally(stage);
                prop_assert!(t.failures() * 10_000 > usize::from(max_failure_bp) * t.counted());
            }
            RolloutStatus::Completed => prop_assert_eq!(rollout.admitted().count(), n),
            _ => {}
        }
    }
}
