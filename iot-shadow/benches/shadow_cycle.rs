//! The backend's shadow update cycle, ours against the AWS-style JSON approach, in one run.
//!
//! One cycle = decode a device's update, merge it into the stored document, compute the
//! delta, encode the responses (the `update/accepted` ack and the `update/delta`
//! notification). Both sides start from the same 10-field document (6 reported leaves, 4
//! desired leaves of which 3 differ from reported) and receive the same update (4 reported
//! leaves, one of them settling a desired value).
//!
//! * `ours/map_store`: iot-shadow's engine over `MapStore` (the backend store), canonical CBOR.
//! * `ours/fixed_store`: the same engine over `FixedStore<32>` (the device store).
//! * `serde_json/value`: `serde_json::Value` documents in the AWS IoT shadow shape, the update
//!   applied as a JSON merge patch (RFC 7386) with `metadata.<path>.timestamp` per written
//!   leaf, the delta computed by a recursive comparison of `desired` with `reported`, the
//!   responses serialised with `serde_json::to_vec` — the straightforward way.
//! * `serde_json/typed`: the same documents as typed structs (`#[derive(Serialize,
//!   Deserialize)]`, `benches/aws_typed_peer.rs`), updated field by field — the fastest way a
//!   user who knows the schema at compile time would write it. It writes the same JSON
//!   (checked).
//!
//! Before timing it checks that the three agree (same delta, same version, the two JSON
//! peers the same ack, delta and document) and prints the encoded sizes of the update, the
//! ack, the delta and the whole document: ours, AWS JSON, and the same AWS documents in CBOR
//! (ciborium through serde), to tell the saving of a binary encoding from that of our format.
//!
//! With `INSTR_BENCH=<id>` it runs one routine a fixed number of times instead of criterion,
//! for `scripts/instr-counts.sh` (instruction counts under callgrind).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use iot_shadow::cbor::{self, Header, Kind};
use iot_shadow::iot_core::{HlcTimestamp, NodeId};
use iot_shadow::{
    FieldStore, FixedStore, Limits, MapStore, Origin, Path, Policy, Section, Shadow, Stamp, Update,
    Value, Write,
};
use serde_json::{Map, Value as Json, json};

const CLOUD: NodeId = NodeId(1);
const DEVICE: NodeId = NodeId(0x7a11);
/// Wall time of the document's writes and of the update (ms since the epoch).
const T0_MS: u64 = 1_763_000_000_000;
const T1_MS: u64 = T0_MS + 15_000;
const TOKEN: &str = "d7-000123";

fn stamp(ms: u64, node: NodeId, origin: Origin) -> Stamp {
    Stamp::new(
        HlcTimestamp::from_parts(ms, 0, node).unwrap(),
        Policy::LastWriterWins,
        origin,
    )
}

fn w(section: Section, path: &str, value: Value, stamp: Stamp) -> Write {
    Write::new(section, Path::new(path).unwrap(), value, stamp)
}

/// The stored document as writes: 6 reported leaves, 4 desired (3 differ from reported).
fn document_writes() -> Vec<Write> {
    let dev = stamp(T0_MS, DEVICE, Origin::Device);
    let cloud = stamp(T0_MS + 1, CLOUD, Origin::Cloud);
    vec![
        w(
            Section::Reported,
            "temperature",
            Value::float(21.5).unwrap(),
            dev,
        ),
        w(
            Section::Reported,
            "humidity",
            Value::float(40.25).unwrap(),
            dev,
        ),
        w(Section::Reported, "battery", Value::Int(87), dev),
        w(Section::Reported, "led", Value::Bool(false), dev),
        w(
            Section::Reported,
            "firmware",
            Value::text("1.4.2").unwrap(),
            dev,
        ),
        w(Section::Reported, "telemetry.interval", Value::Int(30), dev),
        w(Section::Desired, "led", Value::Bool(true), cloud),
        w(
            Section::Desired,
            "telemetry.interval",
            Value::Int(60),
            cloud,
        ),
        w(
            Section::Desired,
            "heartbeat.interval",
            Value::Int(10),
            cloud,
        ),
        w(Section::Desired, "mode", Value::text("eco").unwrap(), cloud),
    ]
}

/// The device's update: 4 reported leaves; `telemetry.interval` settles its desired value.
fn update_writes() -> Vec<Write> {
    let dev = stamp(T1_MS, DEVICE, Origin::Device);
    vec![
        w(
            Section::Reported,
            "temperature",
            Value::float(22.0).unwrap(),
            dev,
        ),
        w(
            Section::Reported,
            "humidity",
            Value::float(41.5).unwrap(),
            dev,
        ),
        w(Section::Reported, "battery", Value::Int(86), dev),
        w(Section::Reported, "telemetry.interval", Value::Int(60), dev),
    ]
}

fn limits() -> Limits {
    Limits::DEFAULT
}

fn ours<S: FieldStore>(store: S) -> Shadow<S> {
    let mut s = Shadow::new(store, Policy::LastWriterWins, limits());
    s.apply(&Update::new(&document_writes()), T0_MS).unwrap();
    s
}

fn encoded_update() -> Vec<u8> {
    let header = Header {
        kind: Kind::Update,
        version: Some(1),
        client_token: Some(TOKEN),
    };
    let mut buf = [0u8; 1024];
    let n = cbor::encode_writes(&header, &update_writes(), &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Bytes of (ack, delta) produced by one cycle of ours.
struct Out {
    ack: usize,
    delta: usize,
}

fn our_cycle<S: FieldStore>(
    shadow: &mut Shadow<S>,
    update: &[u8],
    ack: &mut [u8],
    delta: &mut [u8],
) -> Out {
    let mut writes: heapless::Vec<Write, 16> = heapless::Vec::new();
    let header = cbor::decode_message(update, &mut writes).unwrap();
    let update = Update {
        client_token: header.client_token,
        expected_version: header.version,
        writes: &writes,
    };
    let outcome = shadow.apply(&update, T1_MS).unwrap();
    let a = shadow.encode_accepted(&update, &outcome, ack).unwrap();
    let d = shadow.encode_delta(delta).unwrap().unwrap_or(0);
    Out { ack: a, delta: d }
}

// ---------------------------------------------------------------- the serde_json peer

#[path = "../../benches/aws_json_peer.rs"]
mod aws_json_peer;
use aws_json_peer::{json_value, merge_patch, set_nested};
#[path = "../../benches/aws_typed_peer.rs"]
mod aws_typed_peer;
use aws_typed_peer::{Document, typed_cycle};
#[path = "../../benches/instr.rs"]
mod instr;
use instr::{Routine, instruction_mode, timed};

/// The same document as AWS IoT stores it: state, metadata timestamps (seconds), version.
fn peer_document() -> Json {
    let mut desired = Map::new();
    let mut reported = Map::new();
    let mut md = Map::new();
    let mut mr = Map::new();
    for wr in document_writes() {
        let (state, meta) = match wr.section {
            Section::Desired => (&mut desired, &mut md),
            Section::Reported => (&mut reported, &mut mr),
        };
        set_nested(state, wr.path.as_str(), json_value(&wr.value));
        set_nested(meta, wr.path.as_str(), json!({ "timestamp": T0_MS / 1000 }));
    }
    json!({
        "state": { "desired": desired, "reported": reported },
        "metadata": { "desired": md, "reported": mr },
        "version": 1,
        "timestamp": T0_MS / 1000,
    })
}

fn peer_update() -> Vec<u8> {
    let mut reported = Map::new();
    for wr in update_writes() {
        set_nested(&mut reported, wr.path.as_str(), json_value(&wr.value));
    }
    serde_json::to_vec(&json!({
        "state": { "reported": reported },
        "clientToken": TOKEN,
        "version": 1,
    }))
    .unwrap()
}

/// Desired leaves absent from reported or different from it.
fn delta(desired: &Json, reported: Option<&Json>) -> Option<Json> {
    match (desired, reported) {
        (Json::Object(d), r) => {
            let mut out = Map::new();
            for (k, dv) in d {
                let rv = r.and_then(|r| r.get(k));
                if let Some(x) = delta(dv, rv) {
                    out.insert(k.clone(), x);
                }
            }
            (!out.is_empty()).then_some(Json::Object(out))
        }
        (d, Some(r)) if d == r => None,
        (d, _) => Some(d.clone()),
    }
}

/// The metadata of the delta's leaves (AWS sends them with the delta).
fn delta_meta(delta: &Json, meta: Option<&Json>) -> Json {
    match delta {
        Json::Object(d) => {
            let mut out = Map::new();
            for k in d.keys() {
                let m = meta.and_then(|m| m.get(k));
                out.insert(k.clone(), delta_meta(&d[k], m));
            }
            Json::Object(out)
        }
        _ => meta.cloned().unwrap_or(Json::Null),
    }
}

fn peer_cycle(doc: &mut Json, update: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let now_s = T1_MS / 1000;
    let req: Json = serde_json::from_slice(update).unwrap();
    let expected = req.get("version").and_then(Json::as_u64);
    let current = doc["version"].as_u64().unwrap();
    assert!(expected.is_none_or(|e| e == current), "version conflict");
    let mut ack_meta = Map::new();
    let mut ack_state = Map::new();
    for section in ["desired", "reported"] {
        let Some(patch) = req["state"].get(section) else {
            continue;
        };
        let mut written = Json::Null;
        let mut meta = std::mem::take(&mut doc["metadata"][section]);
        merge_patch(&mut doc["state"][section], patch, &mut meta, now_s);
        doc["metadata"][section] = meta;
        // The ack carries what was written and its metadata.
        merge_patch(&mut Json::Null, patch, &mut written, now_s);
        ack_state.insert(section.to_owned(), patch.clone());
        ack_meta.insert(section.to_owned(), written);
    }
    let version = current + 1;
    doc["version"] = json!(version);
    doc["timestamp"] = json!(now_s);
    let mut ack = json!({
        "state": ack_state,
        "metadata": ack_meta,
        "version": version,
        "timestamp": now_s,
    });
    if let Some(token) = req.get("clientToken") {
        ack["clientToken"] = token.clone();
    }
    let ack = serde_json::to_vec(&ack).unwrap();
    let delta = delta(&doc["state"]["desired"], Some(&doc["state"]["reported"])).map(|d| {
        let meta = delta_meta(&d, Some(&doc["metadata"]["desired"]));
        serde_json::to_vec(&json!({
            "version": version,
            "timestamp": now_s,
            "state": d,
            "metadata": meta,
        }))
        .unwrap()
    });
    (ack, delta)
}

// ---------------------------------------------------------------- checks and sizes

fn report_sizes() {
    let update = encoded_update();
    let mut shadow = ours(MapStore::new());
    let (mut ack, mut dl) = ([0u8; 2048], [0u8; 2048]);
    let out = our_cycle(&mut shadow, &update, &mut ack, &mut dl);
    let mut doc_buf = [0u8; 4096];
    let doc_len = shadow.encode_document(&mut doc_buf).unwrap();

    let peer_update = peer_update();
    let mut doc = peer_document();
    let (peer_ack, peer_delta) = peer_cycle(&mut doc, &peer_update);
    let peer_delta = peer_delta.unwrap();
    let peer_doc = serde_json::to_vec(&doc).unwrap();

    // The typed peer writes the same JSON as the untyped one.
    let mut typed = typed_document();
    let (typed_ack, typed_delta) = typed_cycle(&mut typed, &peer_update, T1_MS / 1000);
    let parse = |b: &[u8]| serde_json::from_slice::<Json>(b).unwrap();
    assert_eq!(
        parse(&typed_ack),
        parse(&peer_ack),
        "typed ack = untyped ack"
    );
    assert_eq!(
        parse(&typed_delta.unwrap()),
        parse(&peer_delta),
        "typed delta = untyped delta"
    );
    assert_eq!(serde_json::to_value(&typed).unwrap(), doc, "typed document");

    // Both sides must agree on the result: same delta leaves, same version.
    let ours_delta: Vec<String> = shadow.delta().map(|(p, _)| p.to_string()).collect();
    let theirs: Json = serde_json::from_slice(&peer_delta).unwrap();
    assert_eq!(ours_delta, ["led", "mode", "heartbeat.interval"]);
    assert_eq!(
        theirs["state"],
        json!({"led": true, "mode": "eco", "heartbeat": {"interval": 10}})
    );
    assert_eq!(shadow.version(), doc["version"].as_u64().unwrap());

    let total_ours = update.len() + out.ack + out.delta;
    let total_peer = peer_update.len() + peer_ack.len() + peer_delta.len();
    // The same AWS documents in CBOR (ciborium through serde: text keys, smallest exact
    // floats and integers).
    let cbor_len = |json: &[u8]| {
        let mut out = Vec::new();
        ciborium::into_writer(&parse(json), &mut out).unwrap();
        out.len()
    };
    let total_cbor = cbor_len(&peer_update) + cbor_len(&peer_ack) + cbor_len(&peer_delta);
    eprintln!(
        "encoded sizes (bytes)   ours CBOR   AWS JSON   AWS CBOR   ours/JSON   ours/AWS CBOR   AWS CBOR/JSON"
    );
    for (name, a, b, c) in [
        (
            "update",
            update.len(),
            peer_update.len(),
            cbor_len(&peer_update),
        ),
        ("accepted ack", out.ack, peer_ack.len(), cbor_len(&peer_ack)),
        ("delta", out.delta, peer_delta.len(), cbor_len(&peer_delta)),
        ("cycle total", total_ours, total_peer, total_cbor),
        ("document", doc_len, peer_doc.len(), cbor_len(&peer_doc)),
    ] {
        let pct = |x: usize, y: usize| 100.0 * x as f64 / y as f64;
        eprintln!(
            "  {name:<20} {a:>9} {b:>10} {c:>10} {:>10.1}% {:>14.1}% {:>14.1}%",
            pct(a, b),
            pct(a, c),
            pct(c, b)
        );
    }
}

/// The stored document as the typed peer holds it (the untyped peer's, read through serde).
fn typed_document() -> Document {
    serde_json::from_value(peer_document()).unwrap()
}

fn bench(c: &mut Criterion) {
    report_sizes();
    let update = encoded_update();
    let peer_update = peer_update();
    let base_map = ours(MapStore::new());
    let base_fixed = ours(FixedStore::<32>::new());
    let base_json = peer_document();
    let base_typed = typed_document();

    let mut g = c.benchmark_group("shadow_cycle");
    g.sample_size(50);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let (mut ack, mut dl) = ([0u8; 2048], [0u8; 2048]);
    g.bench_function("ours/map_store", |b| {
        b.iter_batched_ref(
            || base_map.clone(),
            |s| timed(|| our_cycle(s, black_box(&update), &mut ack, &mut dl)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ours/fixed_store", |b| {
        b.iter_batched_ref(
            || base_fixed.clone(),
            |s| timed(|| our_cycle(s, black_box(&update), &mut ack, &mut dl)),
            BatchSize::SmallInput,
        )
    });
    // The peers' responses are returned, so freeing them is not timed (ours write into
    // buffers the caller owns).
    g.bench_function("serde_json/typed", |b| {
        b.iter_batched_ref(
            || base_typed.clone(),
            |d| timed(|| typed_cycle(d, black_box(&peer_update), T1_MS / 1000)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("serde_json/value", |b| {
        b.iter_batched_ref(
            || base_json.clone(),
            |d| timed(|| peer_cycle(d, black_box(&peer_update))),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The routines of [`bench`] for instruction counts: the same set-up, then one `timed` call.
/// The document each call works on is cloned outside `timed`; the peers' responses are
/// freed outside it too.
fn instruction_routines() -> bool {
    let update = encoded_update();
    let peer_update = peer_update();
    let base_map = ours(MapStore::new());
    let base_fixed = ours(FixedStore::<32>::new());
    let base_json = peer_document();
    let base_typed = typed_document();
    let routines: Vec<Routine<'_>> = vec![
        (
            "shadow_cycle/ours/map_store",
            Box::new(|| {
                let mut s = base_map.clone();
                let (mut a, mut d) = ([0u8; 2048], [0u8; 2048]);
                timed(|| our_cycle(&mut s, &update, &mut a, &mut d));
            }),
        ),
        (
            "shadow_cycle/ours/fixed_store",
            Box::new(|| {
                let mut s = base_fixed.clone();
                let (mut a, mut d) = ([0u8; 2048], [0u8; 2048]);
                timed(|| our_cycle(&mut s, &update, &mut a, &mut d));
            }),
        ),
        (
            "shadow_cycle/serde_json/typed",
            Box::new(|| {
                let mut d = base_typed.clone();
                let out = timed(|| typed_cycle(&mut d, &peer_update, T1_MS / 1000));
                drop(out);
            }),
        ),
        (
            "shadow_cycle/serde_json/value",
            Box::new(|| {
                let mut d = base_json.clone();
                let out = timed(|| peer_cycle(&mut d, &peer_update));
                drop(out);
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
