//! Backend shadow reconciliation for 100,000 and 1,000,000 devices, single-threaded (so the
//! throughput is updates per second per core), with the live heap per device.
//!
//! Every device holds a 10-field shadow (all 10 leaves reported once at set-up); one round
//! is one update per device that changes 3 of its 10 fields, with a fresh HLC stamp.
//!
//! * `reconciliation/engine/100k`, `reconciliation_1m/engine/1m`: the server-side shadows
//!   a backend keeps — `BTreeMap<DeviceId, Box<ServerShadow>>` (as `Fleet` keeps them),
//!   each update reconciled by iot-shadow's `Shadow::apply` (stale/duplicate checks,
//!   version bump, policy reconciliation, limits).
//! * `reconciliation/fleet/100k`: the same through `Fleet::device_shadow_update` on
//!   registered devices (registry lookup, origin check and one audit entry per change).
//! * `reconciliation/serde_json/100k`: the peer, AWS-style `serde_json::Value` documents
//!   in a `BTreeMap<DeviceId, Value>`, each update a JSON merge patch of `state.reported`
//!   with `metadata.reported.<field>.timestamp` and a version bump.
//!
//! Memory per device is the live heap (bytes allocated minus bytes freed, counted by the
//! `stats_alloc` global allocator wrapper) after creating the N shadows, divided by N; it
//! includes the map entry and the box. Printed before the timed runs.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::alloc::System;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iot_core::{DeviceId, HlcTimestamp, NodeId, TenantId};
use iot_fleet::{
    AssignmentRule, Fleet, ManufacturingRecord, Matcher, Principal, Role, Scope, ServerShadow,
    answer,
};
use iot_shadow::{
    Limits, MapStore, Origin, Path, Policy, Section, Shadow, Stamp, Update, Value, Write,
};
use serde_json::{Map, Value as Json, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[path = "../../benches/ten_field_shadow.rs"]
mod ten_field_shadow;
use ten_field_shadow::FIELDS;
const CHANGED: usize = 3;
const T0_MS: u64 = 1_763_000_000_000;
const NONCE: [u8; 16] = [0xA5; 16];

fn paths() -> Vec<Path> {
    FIELDS.iter().map(|f| Path::new(f).unwrap()).collect()
}

fn value(field: usize, k: usize, t_ms: u64) -> Value {
    let x = (t_ms / 1000) as i64 + k as i64;
    match field {
        3 => Value::Bool(x % 2 == 0),
        4 => Value::text("1.4.2").unwrap(),
        9 => Value::text("eco").unwrap(),
        0 | 1 => Value::float((x % 400) as f64 / 10.0).unwrap(),
        _ => Value::Int(x % 10_000),
    }
}

fn stamp(t_ms: u64, node: NodeId) -> Stamp {
    Stamp::new(
        HlcTimestamp::from_parts(t_ms, 0, node).unwrap(),
        Policy::LastWriterWins,
        Origin::Device,
    )
}

/// All 10 fields (set-up).
fn full_report(paths: &[Path], node: NodeId, k: usize, t_ms: u64) -> Vec<Write> {
    let s = stamp(t_ms, node);
    (0..FIELDS.len())
        .map(|f| Write::new(Section::Reported, paths[f].clone(), value(f, k, t_ms), s))
        .collect()
}

/// The 3 fields device `k` changes in the round at `t_ms` (temperature, humidity, uptime).
fn round_writes(paths: &[Path], node: NodeId, k: usize, t_ms: u64) -> [Write; CHANGED] {
    let s = stamp(t_ms, node);
    [0usize, 1, 6].map(|f| Write::new(Section::Reported, paths[f].clone(), value(f, k, t_ms), s))
}

fn device_ids(n: usize) -> Vec<(DeviceId, NodeId)> {
    (0..n)
        .map(|i| {
            let id = DeviceId::new(&format!("esp32c3-{i:08}")).unwrap();
            (id, NodeId::from_device_id(&id))
        })
        .collect()
}

/// Bytes allocated minus bytes freed. `stats_alloc` already adds a reallocation's growth to
/// `bytes_allocated` (and a shrink to `bytes_deallocated`); `bytes_reallocated` is the same
/// change again, so it must not be added.
fn live_bytes(region: &Region<'_, System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

// ---------------------------------------------------------------- engine

type Shadows = BTreeMap<DeviceId, Box<ServerShadow>>;

fn new_shadow() -> Box<ServerShadow> {
    Box::new(Shadow::new(
        MapStore::new(),
        iot_fleet::ClassPolicies::Uniform(Policy::LastWriterWins),
        Limits::DEFAULT,
    ))
}

fn engine_fleet(devices: &[(DeviceId, NodeId)], paths: &[Path]) -> Shadows {
    let region = Region::new(GLOBAL);
    let mut shadows = Shadows::new();
    for (k, (id, node)) in devices.iter().enumerate() {
        let writes = full_report(paths, *node, k, T0_MS);
        let s = shadows.entry(*id).or_insert_with(new_shadow);
        s.apply(&Update::new(&writes), T0_MS).unwrap();
    }
    let n = devices.len();
    eprintln!(
        "engine: {} bytes of live heap per device ({n} devices, 10 reported leaves each; size_of ServerShadow {} B, Path {} B, Leaf {} B)",
        live_bytes(&region) / n as isize,
        size_of::<ServerShadow>(),
        size_of::<Path>(),
        size_of::<iot_shadow::Leaf>(),
    );
    shadows
}

fn engine_round(shadows: &mut Shadows, devices: &[(DeviceId, NodeId)], paths: &[Path], t_ms: u64) {
    for (k, (id, node)) in devices.iter().enumerate() {
        let writes = round_writes(paths, *node, k, t_ms);
        let s = shadows.get_mut(id).unwrap();
        let outcome = s.apply(&Update::new(&writes), t_ms).unwrap();
        debug_assert!(outcome.changed);
        black_box(outcome);
    }
}

// ---------------------------------------------------------------- full fleet

fn registered_fleet(devices: &[(DeviceId, NodeId)]) -> Fleet {
    let tenant = TenantId::new("acme").unwrap();
    let admin = Principal::new("admin", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    let records = devices
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let mut secret = [0x5a; 32];
            secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
            ManufacturingRecord {
                device_id: *id,
                secret,
                sku: "TH-1".into(),
                serial: i as u64,
            }
        })
        .collect::<Vec<_>>();
    let answers: Vec<_> = records
        .iter()
        .map(|r| answer(&r.secret, &r.device_id, &NONCE))
        .collect();
    fleet
        .import_manufacturing(&admin, &"unsorted".parse().unwrap(), records, 0)
        .unwrap();
    let rule = AssignmentRule {
        matcher: Matcher::Sku("TH-1".into()),
        scope: "eu/berlin-1".parse().unwrap(),
    };
    fleet.add_assignment_rule(&admin, rule, 0).unwrap();
    for ((id, _), a) in devices.iter().zip(&answers) {
        fleet.challenge(id, 0, NONCE, 1_000).unwrap();
        fleet.register(id, 0, a, 1_000).unwrap();
    }
    fleet
}

fn fleet_round(
    fleet: &mut Fleet,
    devices: &[(DeviceId, NodeId)],
    paths: &[Path],
    t_ms: u64,
    full: bool,
) {
    for (k, (id, node)) in devices.iter().enumerate() {
        let outcome = if full {
            let writes = full_report(paths, *node, k, t_ms);
            fleet.device_shadow_update(id, &Update::new(&writes), t_ms)
        } else {
            let writes = round_writes(paths, *node, k, t_ms);
            fleet.device_shadow_update(id, &Update::new(&writes), t_ms)
        };
        black_box(outcome.unwrap());
    }
}

// ---------------------------------------------------------------- serde_json peer

#[path = "../../benches/aws_json_peer.rs"]
mod aws_json_peer;
use aws_json_peer::{json_value, merge_patch, set_nested};

type JsonShadows = BTreeMap<DeviceId, Json>;

/// The update body an AWS-style device sends: `{"state":{"reported":{...}}}`.
fn json_update(writes: &[Write]) -> Json {
    let mut reported = Map::new();
    for w in writes {
        set_nested(&mut reported, w.path.as_str(), json_value(&w.value));
    }
    json!({ "state": { "reported": reported } })
}

fn json_apply(doc: &mut Json, update: &Json, t_ms: u64) {
    let now_s = t_ms / 1000;
    let patch = &update["state"]["reported"];
    let mut meta = std::mem::take(&mut doc["metadata"]["reported"]);
    merge_patch(&mut doc["state"]["reported"], patch, &mut meta, now_s);
    doc["metadata"]["reported"] = meta;
    let v = doc["version"].as_u64().unwrap_or(0) + 1;
    doc["version"] = json!(v);
    doc["timestamp"] = json!(now_s);
}

fn json_fleet(devices: &[(DeviceId, NodeId)], paths: &[Path]) -> JsonShadows {
    let region = Region::new(GLOBAL);
    let mut docs = JsonShadows::new();
    for (k, (id, node)) in devices.iter().enumerate() {
        let update = json_update(&full_report(paths, *node, k, T0_MS));
        let doc = docs
            .entry(*id)
            .or_insert_with(|| json!({"state": {}, "metadata": {}, "version": 0}));
        json_apply(doc, &update, T0_MS);
    }
    let n = devices.len();
    eprintln!(
        "serde_json peer: {} bytes of live heap per device ({n} devices)",
        live_bytes(&region) / n as isize
    );
    docs
}

fn json_round(docs: &mut JsonShadows, devices: &[(DeviceId, NodeId)], paths: &[Path], t_ms: u64) {
    for (k, (id, node)) in devices.iter().enumerate() {
        let update = json_update(&round_writes(paths, *node, k, t_ms));
        json_apply(docs.get_mut(id).unwrap(), &update, t_ms);
    }
}

// ---------------------------------------------------------------- groups

/// Times `round(t)` once per iteration with a fresh `t` (stamps must advance, or every
/// update after the first would be a stale no-op).
fn timed(iters: u64, t_ms: &mut u64, mut round: impl FnMut(u64)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        *t_ms += 15_000;
        let start = Instant::now();
        round(*t_ms);
        total += start.elapsed();
    }
    total
}

fn reconciliation_100k(c: &mut Criterion) {
    const N: usize = 100_000;
    let paths = paths();
    let devices = device_ids(N);
    let mut g = c.benchmark_group("reconciliation");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(N as u64));

    let mut shadows = engine_fleet(&devices, &paths);
    let mut t = T0_MS;
    g.bench_function("engine/100k", |b| {
        b.iter_custom(|iters| {
            timed(iters, &mut t, |t| {
                engine_round(&mut shadows, &devices, &paths, t)
            })
        })
    });
    drop(shadows);

    let mut docs = json_fleet(&devices, &paths);
    let mut t = T0_MS;
    g.bench_function("serde_json/100k", |b| {
        b.iter_custom(|iters| {
            timed(iters, &mut t, |t| {
                json_round(&mut docs, &devices, &paths, t)
            })
        })
    });
    drop(docs);

    let mut fleet = registered_fleet(&devices);
    let region = Region::new(GLOBAL);
    fleet_round(&mut fleet, &devices, &paths, T0_MS, true);
    eprintln!(
        "fleet: {} bytes of live heap per device for the first full report (shadow plus its audit entry)",
        live_bytes(&region) / N as isize
    );
    let mut t = T0_MS;
    g.bench_function("fleet/100k", |b| {
        b.iter_custom(|iters| {
            timed(iters, &mut t, |t| {
                fleet_round(&mut fleet, &devices, &paths, t, false)
            })
        })
    });
    g.finish();
}

fn reconciliation_1m(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let paths = paths();
    let devices = device_ids(N);
    let mut g = c.benchmark_group("reconciliation_1m");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(N as u64));
    let mut shadows = engine_fleet(&devices, &paths);
    let mut t = T0_MS;
    g.bench_function("engine/1m", |b| {
        b.iter_custom(|iters| {
            timed(iters, &mut t, |t| {
                engine_round(&mut shadows, &devices, &paths, t)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, reconciliation_100k, reconciliation_1m);
criterion_main!(benches);
