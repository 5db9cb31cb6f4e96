//! Tenant isolation of the `iot-fleet` facade, as a property: for any sequence of operations
//! issued with one tenant's credentials (any scope, any role, naming any device id,
//! including other tenants' ids), no other tenant's devices, rollouts, metering or audit
//! entries change, and every item returned belongs to the calling tenant. The operations
//! include rollout control (pause, resume, abort): rollout ids are tenant-local, so the same
//! id names the caller's own rollout or nothing (`NotFound`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, HlcTimestamp, NodeId, TenantId};
use iot_fleet::health::HealthReport;
use iot_fleet::metering::TenantMetering;
use iot_fleet::{
    AccessError, AssignmentRule, AuditEntry, DeviceRecord, Fleet, FleetError, ManufacturingRecord,
    Matcher, Principal, Role, RolloutConfig, Scope, ScopedRollout, Usage, answer,
};
use iot_lifecycle::{Event, State};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Update, Value, Write};
use proptest::prelude::*;

const TENANTS: [&str; 3] = ["alpha", "beta", "gamma"];
const SCOPES: [&str; 5] = ["", "r1", "r1/b1", "r1/b2", "r2/b1"];
const DEVICE_SCOPES: [&str; 3] = ["r1/b1", "r1/b2", "r2/b1"];
const DEVICES_PER_TENANT: usize = 6;
const NOW: u64 = 1_000_000;

/// One stamped shadow write of `value` to `path`, by `writer` at `t_ms`.
fn shadow_write(
    section: Section,
    path: &str,
    value: i64,
    t_ms: u64,
    writer: &DeviceId,
    origin: Origin,
) -> Write {
    let hlc = HlcTimestamp::from_parts(t_ms, 0, NodeId::from_device_id(writer)).unwrap();
    Write::new(
        section,
        Path::new(path).unwrap(),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, origin),
    )
}

fn tenant(i: usize) -> TenantId {
    TenantId::new(TENANTS[i]).unwrap()
}

fn device(t: usize, d: usize) -> DeviceId {
    DeviceId::new(&format!("{}-dev-{d}", TENANTS[t])).unwrap()
}

fn secret(id: &DeviceId) -> [u8; 32] {
    let mut s = [0x11; 32];
    for (d, b) in s.iter_mut().zip(id.as_str().bytes().rev()) {
        *d ^= b;
    }
    s
}

fn scope(i: usize) -> Scope {
    SCOPES[i % SCOPES.len()].parse().unwrap()
}

fn hq(t: usize) -> Principal {
    Principal::new("hq-admin", tenant(t), Scope::root(), Role::Admin)
}

/// Three tenants, six active devices each spread over three buildings, one or two rollouts
/// each.
fn build_fleet() -> Fleet {
    let mut fleet = Fleet::default();
    for t in 0..TENANTS.len() {
        let admin = hq(t);
        let records = (0..DEVICES_PER_TENANT)
            .map(|d| ManufacturingRecord {
                device_id: device(t, d),
                secret: secret(&device(t, d)),
                sku: "TH-1".into(),
                serial: d as u64,
            })
            .collect();
        fleet
            .import_manufacturing(&admin, &Scope::root(), records, 0)
            .unwrap();
        for (i, s) in DEVICE_SCOPES.iter().enumerate() {
            let rule = AssignmentRule {
                matcher: Matcher::SerialRange {
                    first: (i * 2) as u64,
                    last: (i * 2 + 1) as u64,
                },
                scope: s.parse().unwrap(),
            };
            fleet.add_assignment_rule(&admin, rule, 0).unwrap();
        }
        for d in 0..DEVICES_PER_TENANT {
            let id = device(t, d);
            fleet.challenge(&id, 0, [d as u8; 16], 10).unwrap();
            fleet
                .register(&id, 0, &answer(&secret(&id), &id, &[d as u8; 16]), 10)
                .unwrap();
            fleet
                .report_transition(&id, Event::ConfigComplete, State::Active, 20)
                .unwrap();
            for k in 0..3u64 {
                fleet
                    .heartbeat(&id, Some(90.0 - (k * d as u64) as f32), 100 + k * 1000)
                    .unwrap();
            }
            let w = [shadow_write(
                Section::Reported,
                "temp",
                d as i64,
                3_000,
                &id,
                Origin::Device,
            )];
            fleet
                .device_shadow_update(&id, &Update::new(&w), 3_000)
                .unwrap();
            fleet
                .record_usage(
                    &id,
                    Usage {
                        messages: 10,
                        stored_bytes: 512,
                    },
                    3_000,
                )
                .unwrap();
        }
        fleet
            .start_rollout(
                &admin,
                &Scope::root(),
                "2.0",
                Some("1.0"),
                RolloutConfig::default(),
                50,
            )
            .unwrap();
        // Rollout 1 exists for the first two tenants only, so the same id names a rollout
        // in one tenant and nothing in another.
        if t < 2 {
            fleet
                .start_rollout(
                    &admin,
                    &"r1".parse().unwrap(),
                    "2.1",
                    Some("2.0"),
                    RolloutConfig::default(),
                    60,
                )
                .unwrap();
        }
    }
    fleet
}

#[derive(Debug, Clone)]
enum Op {
    Device(usize, usize),
    List,
    Health(usize),
    Battery(usize),
    Metering(usize),
    Audit,
    Rollout(u32),
    Transition(usize, usize, usize),
    Move(usize, usize, usize),
    Decommission(usize, usize),
    StartRollout(usize),
    Import(usize, usize),
    Rule(usize),
    /// A device of the acting tenant sends a heartbeat (device path, not a principal).
    Heartbeat(usize),
    ShadowRead(usize, usize),
    ShadowWrite(usize, usize, i64),
    /// A device of the acting tenant reports to its shadow (device path).
    DeviceShadow(usize, i64),
    PauseRollout(u32),
    ResumeRollout(u32),
    AbortRollout(u32),
    /// A device of the acting tenant reports an update result (device path).
    ReportUpdate(usize, u32, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TENANTS.len();
    let d = 0..DEVICES_PER_TENANT;
    let s = 0..SCOPES.len();
    prop_oneof![
        (t.clone(), d.clone()).prop_map(|(t, d)| Op::Device(t, d)),
        Just(Op::List),
        s.clone().prop_map(Op::Health),
        s.clone().prop_map(Op::Battery),
        s.clone().prop_map(Op::Metering),
        Just(Op::Audit),
        (0u32..4).prop_map(Op::Rollout),
        (t.clone(), d.clone(), 0..Event::ALL.len()).prop_map(|(t, d, e)| Op::Transition(t, d, e)),
        (t.clone(), d.clone(), s.clone()).prop_map(|(t, d, s)| Op::Move(t, d, s)),
        (t.clone(), d.clone()).prop_map(|(t, d)| Op::Decommission(t, d)),
        s.clone().prop_map(Op::StartRollout),
        (t.clone(), d.clone()).prop_map(|(t, d)| Op::Import(t, d)),
        s.prop_map(Op::Rule),
        d.clone().prop_map(Op::Heartbeat),
        (t.clone(), d.clone()).prop_map(|(t, d)| Op::ShadowRead(t, d)),
        (t.clone(), d.clone(), -5i64..5).prop_map(|(t, d, v)| Op::ShadowWrite(t, d, v)),
        (d.clone(), -5i64..5).prop_map(|(d, v)| Op::DeviceShadow(d, v)),
        (0u32..3).prop_map(Op::PauseRollout),
        (0u32..3).prop_map(Op::ResumeRollout),
        (0u32..3).prop_map(Op::AbortRollout),
        (d.clone(), 0u32..3, any::<bool>()).prop_map(|(d, r, ok)| Op::ReportUpdate(d, r, ok)),
    ]
}

fn role(i: usize) -> Role {
    [Role::Viewer, Role::Operator, Role::Admin][i % 3]
}

/// Everything of tenant `t` that an operation could change or reveal.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    devices: Vec<DeviceRecord>,
    rollouts: Vec<ScopedRollout>,
    metering: TenantMetering,
    audit: Vec<AuditEntry>,
    health: HealthReport,
    shadows: Vec<Option<Vec<u8>>>,
}

fn snapshot(fleet: &Fleet, t: usize) -> Snapshot {
    let p = hq(t);
    Snapshot {
        devices: fleet.devices(&p).cloned().collect(),
        rollouts: (0..8)
            .filter_map(|n| fleet.rollout(&p, n).ok().cloned())
            .collect(),
        metering: fleet.metering(&p, &Scope::root(), NOW).unwrap(),
        audit: fleet.audit_trail(&p).cloned().collect(),
        health: fleet.health_report(&p, &Scope::root(), NOW).unwrap(),
        shadows: own_ids(t)
            .iter()
            .map(|id| fleet.shadow(&p, id).ok().flatten().map(|s| s.to_cbor()))
            .collect(),
    }
}

fn own_ids(t: usize) -> Vec<DeviceId> {
    (0..DEVICES_PER_TENANT).map(|d| device(t, d)).collect()
}

/// Runs `op` as `p` (of tenant `t`) and checks that everything it returns is tenant `t`'s.
fn run(fleet: &mut Fleet, p: &Principal, t: usize, op: &Op, counter: &mut usize) {
    let me = tenant(t);
    let mine = own_ids(t);
    let deny_foreign = |error: Option<FleetError>, target_t: usize| {
        if target_t != t {
            assert_eq!(
                error,
                Some(FleetError::Access(AccessError::NotFound)),
                "foreign device must be NotFound"
            );
        }
    };
    match op {
        Op::Device(tt, d) => {
            let r = fleet.device(p, &device(*tt, *d)).map(|r| r.tenant);
            deny_foreign(r.as_ref().err().copied(), *tt);
            if let Ok(owner) = r {
                assert_eq!(owner, me);
            }
        }
        Op::List => {
            for r in fleet.devices(p) {
                assert_eq!(r.tenant, me);
                assert!(mine.contains(&r.id));
                assert!(p.scope.contains(&r.scope));
            }
        }
        Op::Health(s) => {
            if let Ok(report) = fleet.health_report(p, &scope(*s), NOW) {
                assert_eq!(report.tenant, me);
                assert!(report.counts.total <= DEVICES_PER_TENANT as u64);
            }
        }
        Op::Battery(s) => {
            if let Ok(plan) = fleet.battery_schedule(p, &scope(*s), NOW, u64::MAX / 2) {
                assert!(plan.iter().all(|b| mine.contains(&b.device)));
            }
        }
        Op::Metering(s) => {
            if let Ok(m) = fleet.metering(p, &scope(*s), NOW) {
                assert!(m.devices <= DEVICES_PER_TENANT as u64);
                assert!(m.usage.messages <= 10 * DEVICES_PER_TENANT as u64);
            }
        }
        Op::Audit => {
            for e in fleet.audit_trail(p) {
                assert_eq!(e.tenant, me);
                if let Some(d) = e.device {
                    assert!(mine.contains(&d));
                }
            }
        }
        Op::Rollout(n) => {
            if let Ok(r) = fleet.rollout(p, *n) {
                assert!(r.rollout.admitted().all(|d| mine.contains(d)));
            }
        }
        Op::Transition(tt, d, e) => {
            let r = fleet.request_transition(p, &device(*tt, *d), Event::ALL[*e], NOW);
            deny_foreign(r.as_ref().err().copied(), *tt);
        }
        Op::Move(tt, d, s) => {
            let r = fleet.move_device(p, &device(*tt, *d), &scope(*s), NOW);
            deny_foreign(r.as_ref().err().copied(), *tt);
        }
        Op::Decommission(tt, d) => {
            let r = fleet.decommission(p, &device(*tt, *d), NOW);
            deny_foreign(r.as_ref().err().copied(), *tt);
        }
        Op::StartRollout(s) => {
            let _ = fleet.start_rollout(p, &scope(*s), "3.0", None, RolloutConfig::default(), NOW);
        }
        Op::Import(tt, d) => {
            // Re-importing any existing id fails; a fresh id lands in the caller's tenant.
            *counter += 1;
            let fresh = DeviceId::new(&format!("{}-new-{counter}", TENANTS[t])).unwrap();
            for id in [device(*tt, *d), fresh] {
                let rec = ManufacturingRecord {
                    device_id: id,
                    secret: secret(&id),
                    sku: "X".into(),
                    serial: 99,
                };
                let _ = fleet.import_manufacturing(p, &p.scope.clone(), vec![rec], NOW);
            }
        }
        Op::Rule(s) => {
            let rule = AssignmentRule {
                matcher: Matcher::Sku("TH-1".into()),
                scope: scope(*s),
            };
            let _ = fleet.add_assignment_rule(p, rule, NOW);
        }
        Op::Heartbeat(d) => {
            let _ = fleet.heartbeat(&device(t, *d), Some(50.0), NOW);
        }
        Op::ShadowRead(tt, d) => {
            let r = fleet.shadow(p, &device(*tt, *d)).map(|s| s.is_some());
            deny_foreign(r.as_ref().err().copied(), *tt);
        }
        Op::ShadowWrite(tt, d, v) => {
            *counter += 1;
            let target = device(*tt, *d);
            let w = [shadow_write(
                Section::Desired,
                "temp",
                *v,
                NOW + *counter as u64,
                &target,
                Origin::Cloud,
            )];
            let r = fleet.update_shadow(p, &target, &Update::new(&w), NOW);
            deny_foreign(r.as_ref().err().copied(), *tt);
        }
        Op::DeviceShadow(d, v) => {
            *counter += 1;
            let id = device(t, *d);
            let w = [shadow_write(
                Section::Reported,
                "temp",
                *v,
                NOW + *counter as u64,
                &id,
                Origin::Device,
            )];
            let _ = fleet.device_shadow_update(&id, &Update::new(&w), NOW);
        }
        Op::PauseRollout(n) | Op::ResumeRollout(n) | Op::AbortRollout(n) => {
            let exists = fleet.rollout(&hq(t), *n).is_ok();
            let r = match op {
                Op::PauseRollout(_) => fleet.pause_rollout(p, *n, NOW),
                Op::ResumeRollout(_) => fleet.resume_rollout(p, *n, NOW).map(|_| ()),
                _ => fleet.abort_rollout(p, *n, NOW),
            };
            // Another tenant's rollout of the same number is never reachable.
            if !exists {
                assert_eq!(r, Err(FleetError::Access(AccessError::NotFound)));
            }
        }
        Op::ReportUpdate(d, n, ok) => {
            let _ = fleet.report_update(&device(t, *d), *n, *ok, NOW);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn no_operation_with_one_tenants_credentials_reads_or_changes_another_tenants_devices(
        steps in prop::collection::vec(
            (0..TENANTS.len(), 0..SCOPES.len(), 0usize..3, op()),
            1..16,
        )
    ) {
        let mut fleet = build_fleet();
        let mut counter = 0;
        for (t, s, r, op) in &steps {
            let p = Principal::new("actor", tenant(*t), scope(*s), role(*r));
            let others: Vec<(usize, Snapshot)> = (0..TENANTS.len())
                .filter(|o| o != t)
                .map(|o| (o, snapshot(&fleet, o)))
                .collect();
            run(&mut fleet, &p, *t, op, &mut counter);
            for (o, before) in others {
                let after = snapshot(&fleet, o);
                prop_assert_eq!(&before, &after, "tenant {} changed by {:?} of tenant {}", o, op, t);
            }
        }
    }
}

#[test]
fn foreign_and_missing_devices_are_indistinguishable() {
    let fleet = build_fleet();
    let alpha = hq(0);
    let foreign = fleet.device(&alpha, &device(1, 0)).unwrap_err();
    let missing = fleet
        .device(&alpha, &DeviceId::new("no-such-device").unwrap())
        .unwrap_err();
    assert_eq!(foreign, missing);
    // Out of scope in the own tenant looks the same; a visible device with too low a role
    // is Forbidden.
    let b2 = Principal::new("m", tenant(0), "r1/b2".parse().unwrap(), Role::Viewer);
    assert_eq!(fleet.device(&b2, &device(0, 0)).unwrap_err(), missing);
    let viewer = Principal::new("v", tenant(0), Scope::root(), Role::Viewer);
    let mut fleet = fleet;
    assert_eq!(
        fleet.decommission(&viewer, &device(0, 0), NOW).unwrap_err(),
        FleetError::Access(AccessError::Forbidden)
    );
}

#[test]
fn hierarchical_scopes_see_their_subtree() {
    let fleet = build_fleet();
    let t = tenant(0);
    let count = |s: &str| {
        let p = Principal::new("x", t, s.parse().unwrap(), Role::Viewer);
        fleet.devices(&p).count()
    };
    assert_eq!(count(""), 6); // headquarters: every building
    assert_eq!(count("r1"), 4); // a region: its two buildings
    assert_eq!(count("r1/b1"), 2); // a building manager: one building
    assert_eq!(count("r3"), 0);
    let region = Principal::new("x", t, "r1".parse().unwrap(), Role::Viewer);
    assert_eq!(
        fleet
            .health_report(&region, &"r2".parse().unwrap(), NOW)
            .unwrap_err(),
        FleetError::Access(AccessError::Forbidden)
    );
    let report = fleet
        .health_report(&region, &"r1".parse().unwrap(), NOW)
        .unwrap();
    assert_eq!(report.children.len(), 2);
    assert_eq!(report.children.values().map(|c| c.total).sum::<u64>(), 4);
}
