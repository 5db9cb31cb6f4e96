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
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
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

/// A fixed pseudo-random permutation of `0..n` (Fisher-Yates over xorshift64), the device
/// order of the random-order rounds.
fn random_order(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

// ---------------------------------------------------------------- engine

/// The server-side shadows as `Fleet` keeps them: one keyed hash index (SipHash-1-3, as
/// std's `HashMap`) into dense storage.
struct Shadows {
    index: HashMap<DeviceId, u32>,
    slots: Vec<ServerShadow>,
}

impl Shadows {
    fn get_mut(&mut self, id: &DeviceId) -> &mut ServerShadow {
        &mut self.slots[self.index[id] as usize]
    }
}

fn new_shadow() -> ServerShadow {
    Shadow::new(
        MapStore::new(),
        iot_fleet::ClassPolicies::Uniform(Policy::LastWriterWins),
        Limits::DEFAULT,
    )
}

fn engine_fleet(devices: &[(DeviceId, NodeId)], paths: &[Path]) -> Shadows {
    let region = Region::new(GLOBAL);
    let mut shadows = Shadows {
        index: HashMap::new(),
        slots: Vec::new(),
    };
    for (k, (id, node)) in devices.iter().enumerate() {
        let writes = full_report(paths, *node, k, T0_MS);
        shadows.index.insert(*id, shadows.slots.len() as u32);
        shadows.slots.push(new_shadow());
        let s = shadows.get_mut(id);
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

/// One update per device, devices visited in `order`.
#[inline(never)]
fn engine_round(
    shadows: &mut Shadows,
    devices: &[(DeviceId, NodeId)],
    order: &[usize],
    paths: &[Path],
    t_ms: u64,
) {
    for &k in order {
        let (id, node) = &devices[k];
        let writes = round_writes(paths, *node, k, t_ms);
        let s = shadows.get_mut(id);
        let outcome = s.apply(&Update::new(&writes), t_ms).unwrap();
        debug_assert!(outcome.changed);
        black_box(outcome);
    }
}

// ---------------------------------------------------------------- typed HashMap LWW peer

/// One field's last-writer-wins register: the value and the (HLC time, node) that wrote it.
#[derive(Debug, Clone, PartialEq, Default)]
struct Lww<T> {
    value: T,
    at: (u64, NodeId),
}

impl<T: PartialEq> Lww<T> {
    /// Takes `value` if its stamp is newer; `true` when the field changed.
    fn write(&mut self, value: T, at: (u64, NodeId)) -> bool {
        if at <= self.at {
            return false;
        }
        self.at = at;
        let changed = self.value != value;
        self.value = value;
        changed
    }
}

/// What a competent user writes without the engine: the device class's fields as a typed
/// struct, each a last-writer-wins register, and a version raised by every change.
#[derive(Debug, Clone, PartialEq, Default)]
struct TypedShadow {
    temperature: Lww<f64>,
    humidity: Lww<f64>,
    battery: Lww<i64>,
    led: Lww<bool>,
    firmware: Lww<String>,
    rssi: Lww<i64>,
    uptime: Lww<i64>,
    telemetry_interval: Lww<i64>,
    heartbeat_interval: Lww<i64>,
    mode: Lww<String>,
    version: u64,
}

/// A typed update (what serde would decode the device's message into): only the fields
/// that changed, with the update's stamp.
#[derive(Default)]
struct TypedUpdate {
    at: (u64, NodeId),
    temperature: Option<f64>,
    humidity: Option<f64>,
    battery: Option<i64>,
    led: Option<bool>,
    firmware: Option<String>,
    rssi: Option<i64>,
    uptime: Option<i64>,
    telemetry_interval: Option<i64>,
    heartbeat_interval: Option<i64>,
    mode: Option<String>,
}

impl TypedShadow {
    fn apply(&mut self, u: TypedUpdate) -> bool {
        let at = u.at;
        let mut changed = false;
        macro_rules! field {
            ($($f:ident),*) => {$(
                if let Some(v) = u.$f {
                    changed |= self.$f.write(v, at);
                }
            )*};
        }
        field!(
            temperature,
            humidity,
            battery,
            led,
            firmware,
            rssi,
            uptime,
            telemetry_interval,
            heartbeat_interval,
            mode
        );
        if changed {
            self.version += 1;
        }
        changed
    }
}

fn typed_float(field: usize, k: usize, t_ms: u64) -> f64 {
    match value(field, k, t_ms) {
        Value::Float(f) => f.get(),
        other => panic!("field {field} is {other:?}"),
    }
}

fn typed_int(field: usize, k: usize, t_ms: u64) -> i64 {
    match value(field, k, t_ms) {
        Value::Int(i) => i,
        other => panic!("field {field} is {other:?}"),
    }
}

fn typed_full(node: NodeId, k: usize, t_ms: u64) -> TypedUpdate {
    let x = (t_ms / 1000) as i64 + k as i64;
    TypedUpdate {
        at: (stamp(t_ms, node).time, node),
        temperature: Some(typed_float(0, k, t_ms)),
        humidity: Some(typed_float(1, k, t_ms)),
        battery: Some(typed_int(2, k, t_ms)),
        led: Some(x % 2 == 0),
        firmware: Some("1.4.2".into()),
        rssi: Some(typed_int(5, k, t_ms)),
        uptime: Some(typed_int(6, k, t_ms)),
        telemetry_interval: Some(typed_int(7, k, t_ms)),
        heartbeat_interval: Some(typed_int(8, k, t_ms)),
        mode: Some("eco".into()),
    }
}

/// The round's update of device `k`, built as cheaply as the peer can: the same values as
/// [`round_writes`], computed directly as typed fields.
fn typed_round(node: NodeId, k: usize, t_ms: u64) -> TypedUpdate {
    let x = (t_ms / 1000) as i64 + k as i64;
    let float = (x % 400) as f64 / 10.0;
    TypedUpdate {
        at: (stamp(t_ms, node).time, node),
        temperature: Some(float),
        humidity: Some(float),
        uptime: Some(x % 10_000),
        ..TypedUpdate::default()
    }
}

type TypedShadows = HashMap<DeviceId, TypedShadow>;

fn typed_fleet(devices: &[(DeviceId, NodeId)]) -> TypedShadows {
    let region = Region::new(GLOBAL);
    let mut docs = TypedShadows::new();
    for (k, (id, node)) in devices.iter().enumerate() {
        docs.entry(*id)
            .or_default()
            .apply(typed_full(*node, k, T0_MS));
    }
    let n = devices.len();
    eprintln!(
        "typed HashMap LWW peer: {} bytes of live heap per device ({n} devices)",
        live_bytes(&region) / n as isize
    );
    docs
}

#[inline(never)]
fn typed_round_all(
    docs: &mut TypedShadows,
    devices: &[(DeviceId, NodeId)],
    order: &[usize],
    t_ms: u64,
) {
    for &k in order {
        let (id, node) = &devices[k];
        let changed = docs.get_mut(id).unwrap().apply(typed_round(*node, k, t_ms));
        debug_assert!(changed);
        black_box(changed);
    }
}

/// Both sides hold the same values and versions for every device.
fn assert_agree(shadows: &mut Shadows, docs: &TypedShadows, devices: &[(DeviceId, NodeId)]) {
    let paths = paths();
    for (id, _) in devices {
        let ours = shadows.get_mut(id);
        let peer = &docs[id];
        assert_eq!(ours.version(), peer.version, "{id}: version");
        let got = |f: usize| ours.value(Section::Reported, &paths[f]).cloned().unwrap();
        let float = |v: Value| match v {
            Value::Float(f) => f.get(),
            other => panic!("{other:?}"),
        };
        let int = |v: Value| match v {
            Value::Int(i) => i,
            other => panic!("{other:?}"),
        };
        assert_eq!(float(got(0)), peer.temperature.value, "{id}: temperature");
        assert_eq!(float(got(1)), peer.humidity.value, "{id}: humidity");
        assert_eq!(int(got(2)), peer.battery.value, "{id}: battery");
        assert_eq!(got(3), Value::Bool(peer.led.value), "{id}: led");
        assert_eq!(
            got(4),
            Value::text(&peer.firmware.value).unwrap(),
            "{id}: firmware"
        );
        assert_eq!(int(got(5)), peer.rssi.value, "{id}: rssi");
        assert_eq!(int(got(6)), peer.uptime.value, "{id}: uptime");
        assert_eq!(int(got(7)), peer.telemetry_interval.value);
        assert_eq!(int(got(8)), peer.heartbeat_interval.value);
        assert_eq!(got(9), Value::text(&peer.mode.value).unwrap(), "{id}: mode");
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

#[inline(never)]
fn fleet_round(
    fleet: &mut Fleet,
    devices: &[(DeviceId, NodeId)],
    order: &[usize],
    paths: &[Path],
    t_ms: u64,
    full: bool,
) {
    for &k in order {
        let (id, node) = &devices[k];
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

/// Sets both sides up for `devices`, runs one round in `order` on each at the same time
/// and checks that they agree (values and versions of every device).
fn engine_and_peer(
    devices: &[(DeviceId, NodeId)],
    order: &[usize],
    paths: &[Path],
) -> (Shadows, TypedShadows) {
    let mut shadows = engine_fleet(devices, paths);
    let mut docs = typed_fleet(devices);
    assert_agree(&mut shadows, &docs, devices);
    engine_round(&mut shadows, devices, order, paths, T0_MS + 1_000);
    typed_round_all(&mut docs, devices, order, T0_MS + 1_000);
    assert_agree(&mut shadows, &docs, devices);
    (shadows, docs)
}

/// Benchmarks the engine and the typed peer on `devices`, in key order and in random order.
fn engine_vs_peer(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    devices: &[(DeviceId, NodeId)],
    paths: &[Path],
) {
    let random = random_order(devices.len());
    let in_order: Vec<usize> = (0..devices.len()).collect();
    let (mut shadows, mut docs) = engine_and_peer(devices, &random, paths);
    let mut t_ours = T0_MS + 1_000;
    let mut t_peer = T0_MS + 1_000;
    for (name, order) in [("in_order", &in_order), ("random", &random)] {
        g.bench_function(format!("engine/{name}/{label}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut t_ours, |t| {
                    engine_round(&mut shadows, devices, order, paths, t)
                })
            })
        });
        g.bench_function(format!("typed_hashmap_lww/{name}/{label}"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut t_peer, |t| {
                    typed_round_all(&mut docs, devices, order, t)
                })
            })
        });
    }
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

    engine_vs_peer(&mut g, "100k", &devices, &paths);

    let in_order: Vec<usize> = (0..N).collect();
    let mut docs = json_fleet(&devices, &paths);
    let mut t = T0_MS;
    g.bench_function("serde_json/in_order/100k", |b| {
        b.iter_custom(|iters| {
            timed(iters, &mut t, |t| {
                json_round(&mut docs, &devices, &paths, t)
            })
        })
    });
    drop(docs);

    let mut fleet = registered_fleet(&devices);
    let region = Region::new(GLOBAL);
    fleet_round(&mut fleet, &devices, &in_order, &paths, T0_MS, true);
    eprintln!(
        "fleet: {} bytes of live heap per device for the first full report (shadow plus its audit entry)",
        live_bytes(&region) / N as isize
    );
    let random = random_order(N);
    let mut t = T0_MS;
    for (name, order) in [("in_order", &in_order), ("random", &random)] {
        g.bench_function(format!("fleet/{name}/100k"), |b| {
            b.iter_custom(|iters| {
                timed(iters, &mut t, |t| {
                    fleet_round(&mut fleet, &devices, order, &paths, t, false)
                })
            })
        });
    }
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
    engine_vs_peer(&mut g, "1m", &devices, &paths);
    g.finish();
}

/// The measured rounds of a callgrind run (`--toggle-collect='*measured*'` counts only them).
#[inline(never)]
fn measured(rounds: impl FnOnce()) {
    rounds();
}

/// `RECONCILIATION_CALLGRIND=engine|typed|fleet` runs, instead of criterion, the set-up at
/// 100,000 devices and then `CALLGRIND_ROUNDS` rounds in random order, for instruction
/// counts under `valgrind --tool=callgrind --toggle-collect=...` (see BENCHMARKS.md §3).
fn callgrind_case(case: &str) {
    const N: usize = 100_000;
    const CALLGRIND_ROUNDS: u64 = 2;
    let paths = paths();
    let devices = device_ids(N);
    let random = random_order(N);
    let mut t = T0_MS + 1_000;
    match case {
        "engine" | "typed" => {
            let (mut shadows, mut docs) = engine_and_peer(&devices, &random, &paths);
            measured(|| {
                for _ in 0..CALLGRIND_ROUNDS {
                    t += 15_000;
                    if case == "engine" {
                        engine_round(&mut shadows, &devices, &random, &paths, t);
                    } else {
                        typed_round_all(&mut docs, &devices, &random, t);
                    }
                }
            });
        }
        "fleet" => {
            let mut fleet = registered_fleet(&devices);
            let in_order: Vec<usize> = (0..N).collect();
            fleet_round(&mut fleet, &devices, &in_order, &paths, T0_MS, true);
            measured(|| {
                for _ in 0..CALLGRIND_ROUNDS {
                    t += 15_000;
                    fleet_round(&mut fleet, &devices, &random, &paths, t, false);
                }
            });
        }
        other => panic!("unknown RECONCILIATION_CALLGRIND case {other}"),
    }
    eprintln!("{case}: {CALLGRIND_ROUNDS} rounds of {N} updates in random order");
}

criterion_group!(benches, reconciliation_100k, reconciliation_1m);

fn main() {
    if let Ok(case) = std::env::var("RECONCILIATION_CALLGRIND") {
        callgrind_case(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
