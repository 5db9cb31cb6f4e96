//! Conflict-resolution merge of N concurrent updates, ours against the `crdts` crate, in one run.
//!
//! A replica holds a 10-field document (all written by the device). N replicas (nodes 2..)
//! each write 3 of the 10 fields concurrently (HLC times interleaved across writers); the
//! replica merges all N updates.
//!
//! * `ours/map_store/N`, `ours/fixed_store/N`: `Shadow::merge_writes` (last-writer-wins on
//!   (policy rank, HLC time, node), with its limit, path-overlap, contradiction and
//!   encoded-size checks before any change).
//! * `crdts_lww/by_ref/N`: the LWW map a `crdts` user writes: a `BTreeMap<String, LWWReg<V,
//!   M>>` with marker `M = (rank, time, node)` (the same order as ours), each incoming
//!   register checked with `validate_merge` (the contradiction check) and joined with
//!   `merge`, the updates taken by reference (a register is cloned to be merged; a key only
//!   when it is new). (`crdts::Map` needs values with `ResetRemove`, which `LWWReg` does not
//!   implement, so a map of registers is how `crdts` offers an LWW map.)
//! * `crdts_lww/owned/N`: the same, consuming owned updates (freeing their keys is timed).
//! * `hashmap_lww/N`: `std::collections::HashMap<String, (M, V)>`, by reference, the same
//!   contradiction check (equal markers with different values are refused).
//! * `vec_lww/N`: a plain `Vec<(String, M, V)>` searched front to back, by reference, the
//!   same check.
//!
//! Every peer is checked to reach our state before timing. The replica each iteration
//! merges into is cloned outside the timed routine, and nothing is freed inside it.
//!
//! With `INSTR_BENCH=<id>` it runs one routine a fixed number of times instead of criterion,
//! for `scripts/instr-counts.sh` (instruction counts under callgrind).
//!
//! Before timing it prints the bytes per operation (one update of 3 leaves) on the wire:
//! ours canonical CBOR against the `crdts` update serialised through serde as CBOR
//! (ciborium) and JSON, and the in-memory size of a leaf / register.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Duration;

use crdts::{CvRDT, LWWReg};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use iot_shadow::cbor::{self, Header, Kind};
use iot_shadow::iot_core::{HlcTimestamp, NodeId};
use iot_shadow::{
    FieldStore, FixedStore, Leaf, Limits, MapStore, Origin, Path, Policy, Section, Shadow, Stamp,
    Value, Write,
};

#[path = "../../benches/ten_field_shadow.rs"]
mod ten_field_shadow;
use ten_field_shadow::FIELDS;
#[path = "../../benches/instr.rs"]
mod instr;
use instr::{Routine, instruction_mode, timed};
const T0_MS: u64 = 1_763_000_000_000;
const PER_UPDATE: usize = 3;

/// The value of the peer's registers: the same scalars as ours.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
enum PeerValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// Marker = our precedence (policy rank, HLC time, node).
type Marker = (u8, u64, u32);
type PeerMap = BTreeMap<String, LWWReg<PeerValue, Marker>>;
type PeerUpdate = Vec<(String, LWWReg<PeerValue, Marker>)>;

fn peer_value(v: &Value) -> PeerValue {
    match v {
        Value::Bool(b) => PeerValue::Bool(*b),
        Value::Int(i) => PeerValue::Int(*i),
        Value::Float(f) => PeerValue::Float(f.get()),
        Value::Text(t) => PeerValue::Text(t.as_str().to_owned()),
        _ => PeerValue::Null,
    }
}

fn stamp(ms: u64, counter: u16, node: u32) -> Stamp {
    Stamp::new(
        HlcTimestamp::from_parts(ms, counter, NodeId(node)).unwrap(),
        Policy::LastWriterWins,
        Origin::Device,
    )
}

fn base_writes() -> Vec<Write> {
    FIELDS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let value = match i % 3 {
                0 => Value::Int(i as i64 * 10),
                1 => Value::Bool(i % 2 == 0),
                _ => Value::float(i as f64 + 0.5).unwrap(),
            };
            Write::new(
                Section::Reported,
                Path::new(f).unwrap(),
                value,
                stamp(T0_MS, 0, 1),
            )
        })
        .collect()
}

/// N concurrent updates of 3 fields each, from nodes 2..N+2, times interleaved.
fn updates(n: usize) -> Vec<Vec<Write>> {
    (0..n)
        .map(|i| {
            let node = i as u32 + 2;
            let ms = T0_MS + 1 + (i as u64 * 7_919) % 997;
            (0..PER_UPDATE)
                .map(|k| {
                    let f = (i * PER_UPDATE + k * 3) % FIELDS.len();
                    Write::new(
                        Section::Reported,
                        Path::new(FIELDS[f]).unwrap(),
                        Value::Int((i * 31 + k) as i64),
                        stamp(ms, k as u16, node),
                    )
                })
                .collect()
        })
        .collect()
}

fn ours<S: FieldStore>(store: S) -> Shadow<S> {
    let mut s = Shadow::new(store, Policy::LastWriterWins, Limits::DEFAULT);
    s.merge_writes(&base_writes(), 1).unwrap();
    s
}

fn marker(s: &Stamp) -> Marker {
    s.precedence()
}

fn peer_update(writes: &[Write]) -> PeerUpdate {
    writes
        .iter()
        .map(|w| {
            (
                w.path.as_str().to_owned(),
                LWWReg {
                    val: peer_value(&w.value),
                    marker: marker(&w.stamp),
                },
            )
        })
        .collect()
}

fn peer_base() -> PeerMap {
    peer_update(&base_writes()).into_iter().collect()
}

fn our_merge<S: FieldStore>(shadow: &mut Shadow<S>, updates: &[Vec<Write>]) {
    for u in updates {
        black_box(shadow.merge_writes(u, 0).unwrap());
    }
}

fn peer_merge(map: &mut PeerMap, updates: Vec<PeerUpdate>) {
    for u in updates {
        for (key, reg) in u {
            match map.get_mut(&key) {
                Some(existing) => {
                    existing.validate_merge(&reg).unwrap();
                    existing.merge(reg);
                }
                None => {
                    map.insert(key, reg);
                }
            }
        }
    }
}

/// `crdts` registers merged from updates held by reference.
fn peer_merge_ref(map: &mut PeerMap, updates: &[PeerUpdate]) {
    for u in updates {
        for (key, reg) in u {
            match map.get_mut(key.as_str()) {
                Some(existing) => {
                    existing.validate_merge(reg).unwrap();
                    existing.merge(reg.clone());
                }
                None => {
                    map.insert(key.clone(), reg.clone());
                }
            }
        }
    }
}

/// A std `HashMap` LWW map: (marker, value) per key.
type HashLww = HashMap<String, (Marker, PeerValue)>;

/// Equal markers with different values: the contradiction `validate_merge` refuses.
#[derive(Debug)]
struct Contradiction;

/// Last writer wins for one register: replaces when `marker` is newer.
fn lww(
    slot_marker: &mut Marker,
    slot_value: &mut PeerValue,
    marker: Marker,
    value: &PeerValue,
) -> Result<(), Contradiction> {
    if marker > *slot_marker {
        *slot_marker = marker;
        value.clone_into(slot_value);
    } else if marker == *slot_marker && value != slot_value {
        return Err(Contradiction);
    }
    Ok(())
}

fn hash_merge(map: &mut HashLww, updates: &[PeerUpdate]) {
    for u in updates {
        for (key, reg) in u {
            match map.get_mut(key.as_str()) {
                Some((m, v)) => lww(m, v, reg.marker, &reg.val).unwrap(),
                None => {
                    map.insert(key.clone(), (reg.marker, reg.val.clone()));
                }
            }
        }
    }
}

/// A plain vector LWW map, searched front to back.
type VecLww = Vec<(String, Marker, PeerValue)>;

fn vec_merge(map: &mut VecLww, updates: &[PeerUpdate]) {
    for u in updates {
        for (key, reg) in u {
            match map.iter_mut().find(|(k, _, _)| k == key) {
                Some((_, m, v)) => lww(m, v, reg.marker, &reg.val).unwrap(),
                None => map.push((key.clone(), reg.marker, reg.val.clone())),
            }
        }
    }
}

fn hash_base() -> HashLww {
    peer_base()
        .into_iter()
        .map(|(k, r)| (k, (r.marker, r.val)))
        .collect()
}

fn vec_base() -> VecLww {
    peer_base()
        .into_iter()
        .map(|(k, r)| (k, r.marker, r.val))
        .collect()
}

fn check_agreement(n: usize) {
    let ups = updates(n);
    let mut mine = ours(MapStore::new());
    our_merge(&mut mine, &ups);
    let peer_ups: Vec<PeerUpdate> = ups.iter().map(|u| peer_update(u)).collect();
    let mut theirs = peer_base();
    peer_merge(&mut theirs, peer_ups.clone());
    let mut by_ref = peer_base();
    peer_merge_ref(&mut by_ref, &peer_ups);
    assert_eq!(by_ref, theirs, "crdts by reference = crdts owned");
    let mut hash = hash_base();
    hash_merge(&mut hash, &peer_ups);
    let mut vec = vec_base();
    vec_merge(&mut vec, &peer_ups);
    for (k, r) in &theirs {
        assert_eq!(
            hash.get(k),
            Some(&(r.marker, r.val.clone())),
            "hash LWW = crdts"
        );
        let found = vec
            .iter()
            .find(|(vk, _, _)| vk == k)
            .map(|(_, m, v)| (*m, v));
        assert_eq!(found, Some((r.marker, &r.val)), "vec LWW = crdts");
    }
    assert_eq!((hash.len(), vec.len()), (theirs.len(), theirs.len()));
    let mine: Vec<(String, PeerValue, Marker)> = mine
        .section(Section::Reported)
        .map(|(p, l): (&Path, &Leaf)| {
            (
                p.as_str().to_owned(),
                peer_value(&l.value),
                marker(&l.stamp),
            )
        })
        .collect();
    let mut theirs: Vec<(String, PeerValue, Marker)> = theirs
        .into_iter()
        .map(|(k, r)| (k, r.val, r.marker))
        .collect();
    let mut sorted = mine.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    theirs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(sorted, theirs, "both merges must reach the same state");
}

fn report_bytes() {
    let ups = updates(16);
    let (mut ours_b, mut cbor_b, mut json_b) = (0usize, 0usize, 0usize);
    for u in &ups {
        let header = Header {
            kind: Kind::Update,
            version: None,
            client_token: None,
        };
        let mut buf = [0u8; 512];
        ours_b += cbor::encode_writes(&header, u, &mut buf).unwrap();
        let p = peer_update(u);
        let mut out = Vec::new();
        ciborium::into_writer(&p, &mut out).unwrap();
        cbor_b += out.len();
        json_b += serde_json::to_vec(&p).unwrap().len();
    }
    let n = ups.len();
    eprintln!(
        "bytes per operation (one update of {PER_UPDATE} leaves, mean of {n}): ours CBOR {:.1}, crdts via serde CBOR (ciborium) {:.1} ({:.0}%), via serde_json {:.1} ({:.0}%)",
        ours_b as f64 / n as f64,
        cbor_b as f64 / n as f64,
        100.0 * ours_b as f64 / cbor_b as f64,
        json_b as f64 / n as f64,
        100.0 * ours_b as f64 / json_b as f64,
    );
    eprintln!(
        "in memory per leaf: ours Leaf {} B (Value {} B + Stamp {} B) + Path {} B = {} B per MapStore entry, {} B per FixedStore entry; crdts LWWReg<PeerValue, Marker> {} B + String key {} B (+ heap for text); HashMap LWW entry {} B (+ heap for key and text)",
        size_of::<Leaf>(),
        size_of::<Value>(),
        size_of::<Stamp>(),
        size_of::<Path>(),
        size_of::<(Path, Leaf)>(),
        size_of::<iot_shadow::FixedEntry>(),
        size_of::<LWWReg<PeerValue, Marker>>(),
        size_of::<String>(),
        size_of::<(String, (Marker, PeerValue))>(),
    );
}

fn bench(c: &mut Criterion) {
    report_bytes();
    let mut g = c.benchmark_group("merge");
    g.sample_size(30);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for n in [16usize, 256] {
        check_agreement(n);
        let ups = updates(n);
        let peer_ups: Vec<PeerUpdate> = ups.iter().map(|u| peer_update(u)).collect();
        let base_map = ours(MapStore::new());
        let base_fixed = ours(FixedStore::<16>::new());
        let base_peer = peer_base();
        let base_hash = hash_base();
        let base_vec = vec_base();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("ours/map_store", n), &ups, |b, ups| {
            b.iter_batched_ref(
                || base_map.clone(),
                |s| timed(|| our_merge(s, black_box(ups))),
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("ours/fixed_store", n), &ups, |b, ups| {
            b.iter_batched_ref(
                || base_fixed.clone(),
                |s| timed(|| our_merge(s, black_box(ups))),
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(
            BenchmarkId::new("crdts_lww/by_ref", n),
            &peer_ups,
            |b, ups| {
                b.iter_batched_ref(
                    || base_peer.clone(),
                    |m| timed(|| peer_merge_ref(m, black_box(ups))),
                    BatchSize::SmallInput,
                )
            },
        );
        // Owned updates: their clone is set-up, freeing what they leave is timed.
        g.bench_with_input(
            BenchmarkId::new("crdts_lww/owned", n),
            &peer_ups,
            |b, ups| {
                b.iter_batched_ref(
                    || (base_peer.clone(), ups.clone()),
                    |(m, u)| timed(|| peer_merge(m, black_box(std::mem::take(u)))),
                    BatchSize::SmallInput,
                )
            },
        );
        g.bench_with_input(BenchmarkId::new("hashmap_lww", n), &peer_ups, |b, ups| {
            b.iter_batched_ref(
                || base_hash.clone(),
                |m| timed(|| hash_merge(m, black_box(ups))),
                BatchSize::SmallInput,
            )
        });
        g.bench_with_input(BenchmarkId::new("vec_lww", n), &peer_ups, |b, ups| {
            b.iter_batched_ref(
                || base_vec.clone(),
                |m| timed(|| vec_merge(m, black_box(ups))),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The routines of [`bench`] for instruction counts (`merge/<id>/<n>`): the replica is
/// cloned outside `timed`.
fn instruction_routines() -> bool {
    let Ok(name) = std::env::var("INSTR_BENCH") else {
        return false;
    };
    let n: usize = name
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let ups = updates(n);
    let peer_ups: Vec<PeerUpdate> = ups.iter().map(|u| peer_update(u)).collect();
    let base_map = ours(MapStore::new());
    let base_fixed = ours(FixedStore::<16>::new());
    let base_peer = peer_base();
    let base_hash = hash_base();
    let base_vec = vec_base();
    let id = |what: &str| format!("merge/{what}/{n}");
    let names = [
        id("ours/map_store"),
        id("ours/fixed_store"),
        id("crdts_lww/by_ref"),
        id("crdts_lww/owned"),
        id("hashmap_lww"),
        id("vec_lww"),
    ];
    let routines: Vec<Routine<'_>> = vec![
        (
            &names[0],
            Box::new(|| {
                let mut s = base_map.clone();
                timed(|| our_merge(&mut s, &ups));
            }),
        ),
        (
            &names[1],
            Box::new(|| {
                let mut s = base_fixed.clone();
                timed(|| our_merge(&mut s, &ups));
            }),
        ),
        (
            &names[2],
            Box::new(|| {
                let mut m = base_peer.clone();
                timed(|| peer_merge_ref(&mut m, &peer_ups));
            }),
        ),
        (
            &names[3],
            Box::new(|| {
                let (mut m, u) = (base_peer.clone(), peer_ups.clone());
                timed(|| peer_merge(&mut m, u));
            }),
        ),
        (
            &names[4],
            Box::new(|| {
                let mut m = base_hash.clone();
                timed(|| hash_merge(&mut m, &peer_ups));
            }),
        ),
        (
            &names[5],
            Box::new(|| {
                let mut m = base_vec.clone();
                timed(|| vec_merge(&mut m, &peer_ups));
            }),
        ),
    ];
    instruction_mode(routines)
}

fn main() {
    if instruction_routines() {
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
