//! Backend throughput of `iot-fleet`, single-threaded:
//!
//! * `provisioning/register_10k_devices`: zero-touch registration of 10,000 devices from an
//!   imported manufacturing list (challenge, HMAC-SHA256 answer check with iot-lifecycle's
//!   `verify_registration`, rule-based assignment, lifecycle edge and audit entry per
//!   device; the device-side proofs are computed in setup);
//! * `shadow/reconcile_100k_devices`: one reported update (two leaves) from each of 100,000
//!   registered devices, reconciled by iot-shadow's engine in the devices' server-side
//!   shadows.
//!
//! Before the timed runs it prints the resident memory per device, measured from
//! `/proc/self/statm` around registering 100,000 devices and around their first shadow
//! updates.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use iot_core::{DeviceId, HlcTimestamp, NodeId, TenantId};
use iot_fleet::{
    AssignmentRule, ChallengeAnswer, Fleet, ManufacturingRecord, Matcher, Principal, Role, Scope,
    answer,
};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Update, Value, Write};

/// The challenge every simulated device receives (a server draws a fresh one per request).
const NONCE: [u8; 16] = [0xA5; 16];

struct Prepared {
    fleet: Fleet,
    requests: Vec<(DeviceId, ChallengeAnswer)>,
}

fn prepare(n: usize) -> Prepared {
    let tenant = TenantId::new("acme").unwrap();
    let admin = Principal::new("admin", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    let mut records = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        let id = DeviceId::new(&format!("esp32c3-{i:08}")).unwrap();
        let mut secret = [0x5a; 32];
        secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
        requests.push((id, answer(&secret, &id, &NONCE)));
        records.push(ManufacturingRecord {
            device_id: id,
            secret,
            sku: if i % 2 == 0 {
                "TH-1".into()
            } else {
                "CO2-2".into()
            },
            serial: i as u64,
        });
    }
    fleet
        .import_manufacturing(&admin, &"unsorted".parse().unwrap(), records, 0)
        .unwrap();
    for (sku, scope) in [("TH-1", "eu/berlin-1"), ("CO2-2", "eu/berlin-2")] {
        let rule = AssignmentRule {
            matcher: Matcher::Sku(sku.into()),
            scope: scope.parse().unwrap(),
        };
        fleet.add_assignment_rule(&admin, rule, 0).unwrap();
    }
    Prepared { fleet, requests }
}

fn provision_all(p: &mut Prepared) {
    for (id, answer) in &p.requests {
        p.fleet.challenge(id, 0, NONCE, 1_000).unwrap();
        black_box(p.fleet.register(id, 0, answer, 1_000).unwrap());
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * 4096)
}

/// Every device of `p` registered, plus each device's id and HLC node.
fn registered(n: usize) -> (Fleet, Vec<(DeviceId, NodeId)>) {
    let mut p = prepare(n);
    provision_all(&mut p);
    let devices = p
        .requests
        .iter()
        .map(|(id, _)| (*id, NodeId::from_device_id(id)))
        .collect();
    (p.fleet, devices)
}

fn paths() -> [Path; 2] {
    [
        Path::new("temperature").unwrap(),
        Path::new("battery").unwrap(),
    ]
}

/// One round of reported updates from every device, at `t_ms`.
fn shadow_round(fleet: &mut Fleet, devices: &[(DeviceId, NodeId)], paths: &[Path; 2], t_ms: u64) {
    for (k, (id, node)) in devices.iter().enumerate() {
        let hlc = HlcTimestamp::from_parts(t_ms, 0, *node).unwrap();
        let stamp = Stamp::new(hlc, Policy::LastWriterWins, Origin::Device);
        let seconds = (t_ms / 1000) as i64;
        let writes = [
            Write::new(
                Section::Reported,
                paths[0].clone(),
                Value::Int((seconds + k as i64) % 400),
                stamp,
            ),
            Write::new(
                Section::Reported,
                paths[1].clone(),
                Value::Int(100 - seconds % 100),
                stamp,
            ),
        ];
        black_box(
            fleet
                .device_shadow_update(id, &Update::new(&writes), t_ms)
                .unwrap(),
        );
    }
}

fn memory_per_device() {
    const N: usize = 100_000;
    let mut p = prepare(N);
    let before = rss_bytes();
    provision_all(&mut p);
    let after = rss_bytes();
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "registration memory: {} bytes per device ({} devices, RSS delta {} KiB; includes one audit entry each)",
            a.saturating_sub(b) / N as u64,
            p.fleet.registered_count(),
            a.saturating_sub(b) / 1024
        );
    }
    let devices: Vec<(DeviceId, NodeId)> = p
        .requests
        .iter()
        .map(|(id, _)| (*id, NodeId::from_device_id(id)))
        .collect();
    let paths = paths();
    let before = rss_bytes();
    shadow_round(&mut p.fleet, &devices, &paths, 10_000);
    let after = rss_bytes();
    if let (Some(b), Some(a)) = (before, after) {
        eprintln!(
            "shadow memory: {} bytes per device (two reported leaves each)",
            a.saturating_sub(b) / N as u64
        );
    }
    black_box(p);
}

fn provisioning(c: &mut Criterion) {
    memory_per_device();
    let mut group = c.benchmark_group("provisioning");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("register_10k_devices", |b| {
        b.iter_batched(
            || prepare(10_000),
            |mut p| provision_all(&mut p),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn shadow_reconciliation(c: &mut Criterion) {
    const N: usize = 100_000;
    let (mut fleet, devices) = registered(N);
    let paths = paths();
    let mut t_ms = 10_000u64;
    shadow_round(&mut fleet, &devices, &paths, t_ms);
    let mut group = c.benchmark_group("shadow");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("reconcile_100k_devices", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                t_ms += 15_000;
                let start = Instant::now();
                shadow_round(&mut fleet, &devices, &paths, t_ms);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, provisioning, shadow_reconciliation);
criterion_main!(benches);
