//! Fleet health, battery planning and SLA metering through the `iot-fleet` facade: the
//! source material's dashboard (60,000 devices: "59,847 healthy, 98 low battery, 55
//! offline") produced by heartbeats, battery readings and a heartbeat-timeout sweep;
//! battery replacements ordered by predicted depletion; uptime against a 99.95 % SLA.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{DeviceId, TenantId};
use iot_fleet::metering::Availability;
use iot_fleet::{
    AssignmentRule, Fleet, HealthPolicy, ManufacturingRecord, Matcher, Principal, Role, Scope, Sla,
    Usage, answer,
};
use iot_lifecycle::{Event, State};
use iot_planning::pricing::{CostModel, MeteredUsage};

const HOUR: u64 = 3_600_000;

fn id(i: usize) -> DeviceId {
    DeviceId::new(&format!("c3-{i:06}")).unwrap()
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [0x33; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

fn building(b: usize) -> Scope {
    let region = if b.is_multiple_of(2) {
        "north"
    } else {
        "south"
    };
    format!("{region}/b{b}").parse().unwrap()
}

/// A tenant with `n` active devices, device `i` in building `b{i % 10}` of region
/// `north` (even buildings) or `south` (odd buildings), registered at time 0 and assigned
/// by zero-touch SKU rules (one SKU per building).
fn campus(n: usize, policy: HealthPolicy) -> (Fleet, Principal) {
    let tenant = TenantId::new("campus").unwrap();
    let hq = Principal::new("hq", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::new(policy);
    let records = (0..n)
        .map(|i| ManufacturingRecord {
            device_id: id(i),
            secret: secret(i),
            sku: format!("ENV-b{}", i % 10),
            serial: i as u64,
        })
        .collect();
    fleet
        .import_manufacturing(&hq, &Scope::root(), records, 0)
        .unwrap();
    for b in 0..10 {
        let rule = AssignmentRule {
            matcher: Matcher::Sku(format!("ENV-b{b}")),
            scope: building(b),
        };
        fleet.add_assignment_rule(&hq, rule, 0).unwrap();
    }
    for i in 0..n {
        fleet.challenge(&id(i), 0, [1; 16], 0).unwrap();
        let reg = fleet
            .register(&id(i), 0, &answer(&secret(i), &id(i), &[1; 16]), 0)
            .unwrap();
        assert_eq!(reg.scope, building(i % 10));
        fleet
            .report_transition(&id(i), Event::ConfigComplete, State::Active, 0)
            .unwrap();
    }
    (fleet, hq)
}

#[test]
fn dashboard_counts_59847_healthy_98_low_battery_55_offline() {
    let n = 60_000;
    let (mut fleet, hq) = campus(n, HealthPolicy::DEFAULT);
    let offline: Vec<usize> = (0..55).map(|k| k * 1_000 + 7).collect();
    let mut is_offline = vec![false; n];
    let mut is_low = vec![false; n];
    for i in &offline {
        is_offline[*i] = true;
    }
    for k in 0..98 {
        is_low[k * 600 + 3] = true;
    }
    // Heartbeats every 10 s; the 55 go silent after the first.
    for t in (10_000..=30_000).step_by(10_000) {
        for i in 0..n {
            if t > 10_000 && is_offline[i] {
                continue;
            }
            let battery = if is_low[i] { 12.0 } else { 80.0 };
            fleet.heartbeat(&id(i), Some(battery), t).unwrap();
        }
    }
    // At 50 s the silent ones were last heard 40 s ago (> 30 s timeout), the rest 20 s ago.
    let marked = fleet.sweep(50_000);
    let mut expected: Vec<DeviceId> = offline.iter().map(|i| id(*i)).collect();
    expected.sort();
    let mut marked_sorted = marked.clone();
    marked_sorted.sort();
    assert_eq!(marked_sorted, expected);
    assert!(
        fleet.sweep(50_000).is_empty(),
        "already offline devices are not re-marked"
    );

    let report = fleet.health_report(&hq, &Scope::root(), 50_000).unwrap();
    assert_eq!(report.counts.total, 60_000);
    assert_eq!(report.counts.healthy, 59_847);
    assert_eq!(report.counts.low_battery, 98);
    assert_eq!(report.counts.offline, 55);
    assert_eq!(report.counts.in_state(State::Active), 60_000);
    assert_eq!(
        report.counts.to_string(),
        "59,847 healthy, 98 low battery, 55 offline"
    );
    // Per region: the breakdown adds up to the whole.
    assert_eq!(report.children.len(), 2);
    let north = &report.children[&"north".parse::<Scope>().unwrap()];
    let south = &report.children[&"south".parse::<Scope>().unwrap()];
    assert_eq!(north.total + south.total, 60_000);
    assert_eq!(north.offline + south.offline, 55);
    assert_eq!(south.offline, 55, "every offline device has an odd index");

    // A region manager's report covers the region only, broken down by building.
    let manager = Principal::new("m", hq.tenant, "south".parse().unwrap(), Role::Viewer);
    let region = fleet
        .health_report(&manager, &"south".parse().unwrap(), 50_000)
        .unwrap();
    assert_eq!(region.counts, *south);
    assert_eq!(region.children.len(), 5);

    // Hearing from a device again brings it back.
    fleet.heartbeat(&id(7), Some(80.0), 55_000).unwrap();
    let after = fleet.health_report(&hq, &Scope::root(), 55_000).unwrap();
    assert_eq!(after.counts.offline, 54);
}

#[test]
fn degraded_and_maintenance_devices_are_counted_by_health_and_state() {
    let (mut fleet, hq) = campus(10, HealthPolicy::DEFAULT);
    for i in 0..10 {
        fleet.heartbeat(&id(i), Some(90.0), 1_000).unwrap();
    }
    fleet
        .report_transition(&id(0), Event::HealthCheckFailed, State::Degraded, 1_000)
        .unwrap();
    fleet
        .request_transition(&hq, &id(1), Event::ScheduledUpdate, 1_000)
        .unwrap();
    let counts = fleet
        .health_report(&hq, &Scope::root(), 2_000)
        .unwrap()
        .counts;
    assert_eq!(
        (counts.healthy, counts.degraded, counts.maintenance),
        (8, 1, 1)
    );
    assert_eq!(counts.in_state(State::Degraded), 1);
    assert_eq!(counts.in_state(State::Maintenance), 1);
    assert_eq!(counts.in_state(State::Active), 8);
    assert!(
        counts
            .to_string()
            .ends_with(", 1 degraded, 1 in maintenance")
    );
}

#[test]
fn battery_replacements_are_ordered_by_predicted_depletion() {
    let (mut fleet, hq) = campus(6, HealthPolicy::DEFAULT);
    // Drain per hour: device 0 slow, 1 fast, 2 medium, 3 charging, 4 one reading only,
    // 5 fast but from a full battery.
    let drain = [0.5f32, 3.0, 1.0, -1.0];
    for h in 0..6u64 {
        for (i, d) in drain.iter().enumerate() {
            fleet
                .heartbeat(&id(i), Some(60.0 - d * h as f32), h * HOUR)
                .unwrap();
        }
        fleet
            .heartbeat(&id(5), Some(100.0 - 3.0 * h as f32), h * HOUR)
            .unwrap();
        fleet.heartbeat(&id(4), None, h * HOUR).unwrap();
    }
    fleet.heartbeat(&id(4), Some(15.0), 5 * HOUR).unwrap();
    let now = 5 * HOUR;
    let plan = fleet
        .battery_schedule(&hq, &Scope::root(), now, 1_000 * HOUR)
        .unwrap();
    let order: Vec<DeviceId> = plan.iter().map(|b| b.device).collect();
    assert_eq!(order, vec![id(1), id(5), id(2), id(0)]);
    // Device 1 reaches 10 % at (60 - 10) / 3 h = 16.67 h.
    assert!((plan[0].predicted_at_ms as f64 / HOUR as f64 - 50.0 / 3.0).abs() < 0.01);
    assert!(
        plan.windows(2)
            .all(|w| w[0].predicted_at_ms <= w[1].predicted_at_ms)
    );
    // A 24-hour horizon keeps only the devices due within it.
    let soon = fleet
        .battery_schedule(&hq, &Scope::root(), now, 24 * HOUR - now)
        .unwrap();
    assert_eq!(
        soon.iter().map(|b| b.device).collect::<Vec<_>>(),
        vec![id(1)]
    );
}

#[test]
fn uptime_per_tenant_against_a_9995_sla() {
    let year = 365 * 24 * HOUR;
    let sla = Sla::from_percent_hundredths(9995);
    assert_eq!(sla.allowed_downtime_ms(year), 15_768_000); // 4.38 h
    let policy = HealthPolicy::DEFAULT;
    // Device 0 is offline for 4 h (within budget), device 1 for 5 h (over).
    for (outage_h, meets) in [(4u64, true), (5, false)] {
        let (mut fleet, hq) = campus(1, policy);
        fleet.heartbeat(&id(0), Some(90.0), 1_000).unwrap();
        assert_eq!(
            fleet.sweep(1_000 + policy.heartbeat_timeout_ms + 1).len(),
            1
        );
        fleet
            .heartbeat(&id(0), Some(90.0), 1_000 + outage_h * HOUR)
            .unwrap();
        let m = fleet.metering(&hq, &Scope::root(), year).unwrap();
        assert_eq!(
            m.availability,
            Availability {
                monitored_ms: year,
                downtime_ms: outage_h * HOUR
            }
        );
        assert_eq!(m.availability.meets(sla), meets, "{outage_h} h");
    }
}

#[test]
fn metering_counts_messages_and_storage_per_tenant_and_estimates_cost() {
    let month = 2_592_000_000;
    let (mut fleet, hq) = campus(4, HealthPolicy::DEFAULT);
    for i in 0..4 {
        fleet
            .record_usage(
                &id(i),
                Usage {
                    messages: 129_600,
                    stored_bytes: 86_400 * 512,
                },
                month,
            )
            .unwrap();
    }
    let m = fleet.metering(&hq, &Scope::root(), month).unwrap();
    assert_eq!(m.devices, 4);
    assert_eq!(m.usage.messages, 4 * 129_600);
    let usage = MeteredUsage {
        messages: m.usage.messages,
        stored_bytes: m.usage.stored_bytes,
    };
    let cost = CostModel::default().per_device_month_from_usage(usage, m.devices, month);
    assert!((cost.total - 0.21).abs() < 0.01, "{cost:?}");
    // A building only sees its own devices' usage.
    let b0 = Principal::new("b", hq.tenant, "north/b0".parse().unwrap(), Role::Viewer);
    let m0 = fleet
        .metering(&b0, &"north/b0".parse().unwrap(), month)
        .unwrap();
    assert_eq!((m0.devices, m0.usage.messages), (1, 129_600));
}
