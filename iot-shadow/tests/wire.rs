//! Wire formats (issue items 14 and 15): canonical CBOR, protobuf and AWS-shaped JSON carry
//! the same messages losslessly; CBOR is at most 40% of AWS's JSON; decoding arbitrary input
//! never panics.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

mod common;

use common::*;
use iot_shadow::cbor::{self, Kind};
use iot_shadow::json;
use iot_shadow::proto::ShadowMessage;
use iot_shadow::value::Scalar;
use iot_shadow::{
    Limits, MapStore, Origin, OwnedMessage, Policy, Section, Shadow, Update, Value, Write,
};
use proptest::prelude::*;
use prost::Message;

const T0: u64 = 1_700_000_000_000;
const CLOUD_NODE: u32 = 1;
const DEVICE_NODE: u32 = 0x240A_C412;

fn hlc(ms: u64, logical: u64) -> u64 {
    (ms << 16) | logical
}

fn cloud(p: &str, v: Value, ms: u64) -> Write {
    Write::new(
        Section::Desired,
        path(p),
        v,
        stamp(
            hlc(T0 + ms, 0),
            CLOUD_NODE,
            Origin::Cloud,
            Policy::CloudWins,
        ),
    )
}

fn dev(p: &str, v: Value, ms: u64) -> Write {
    Write::new(
        Section::Reported,
        path(p),
        v,
        stamp(
            hlc(T0 + ms, 1),
            DEVICE_NODE,
            Origin::Device,
            Policy::LastWriterWins,
        ),
    )
}

fn text(s: &str) -> Value {
    Value::text(s).unwrap()
}

/// The device lab's shadow: configuration desired by the cloud, state reported by the device.
fn lab_document() -> Shadow<MapStore> {
    let mut s = Shadow::new(MapStore::new(), Policy::LastWriterWins, Limits::DEFAULT);
    let desired = [
        cloud("telemetry.interval", int(60), 10),
        cloud("telemetry.enabled", Value::Bool(true), 10),
        cloud("heartbeat.interval", int(10), 10),
        cloud("health.interval", int(5), 10),
        cloud("sync.interval", int(15), 10),
        cloud("led", Value::Bool(true), 20),
        cloud("mode", text("normal"), 20),
    ];
    let reported = [
        dev("telemetry.interval", int(30), 5),
        dev("telemetry.enabled", Value::Bool(true), 5),
        dev("heartbeat.interval", int(10), 5),
        dev("health.interval", int(5), 5),
        dev("sync.interval", int(15), 5),
        dev("led", Value::Bool(false), 5),
        dev("mode", text("normal"), 5),
        dev("sensors.temperature", Value::float(21.5).unwrap(), 6),
        dev("sensors.humidity", Value::float(40.25).unwrap(), 6),
        dev("battery.percent", int(87), 6),
        dev("battery.volts", Value::float(3.75).unwrap(), 6),
        dev("radio.rssi", int(-61), 6),
        dev("firmware.version", text("1.4.2"), 1),
        dev("firmware.slot", text("b"), 1),
    ];
    s.apply(&Update::new(&reported), 0).unwrap();
    s.apply(&Update::new(&desired), 0).unwrap();
    s
}

/// A small actuator: few leaves, arrays and deeper nesting.
fn light_document() -> Shadow<MapStore> {
    let mut s = Shadow::new(MapStore::new(), Policy::LastWriterWins, Limits::DEFAULT);
    let rgb = |r, g, b| Value::array(&[Scalar::Int(r), Scalar::Int(g), Scalar::Int(b)]).unwrap();
    s.apply(
        &Update::new(&[
            dev("light.color.rgb", rgb(255, 128, 0), 1),
            dev("light.power", Value::Bool(true), 1),
            dev("light.level", int(80), 1),
        ]),
        0,
    )
    .unwrap();
    s.apply(
        &Update::new(&[
            cloud("light.color.rgb", rgb(0, 0, 255), 9),
            cloud("light.level", int(40), 9),
            cloud("schedule.off_at", text("23:00"), 9),
        ]),
        0,
    )
    .unwrap();
    s
}

fn document_message(s: &Shadow<MapStore>) -> OwnedMessage {
    OwnedMessage::from_cbor(&s.to_cbor()).unwrap()
}

fn all_three_agree(msg: &OwnedMessage) {
    let cbor = msg.to_cbor().unwrap();
    let from_cbor = OwnedMessage::from_cbor(&cbor).unwrap();
    assert_eq!(&from_cbor, msg);
    let js = json::writes_to_json(&msg.header(), &msg.writes)
        .unwrap()
        .to_string();
    let from_json = json::from_json(&js, msg.kind, None).unwrap();
    assert_eq!(&from_json, msg, "{js}");
    let pb = ShadowMessage::from(msg).encode_to_vec();
    let from_pb = OwnedMessage::try_from(ShadowMessage::decode(pb.as_slice()).unwrap()).unwrap();
    assert_eq!(&from_pb, msg);
    // Every form re-encodes to the same canonical CBOR.
    for m in [&from_cbor, &from_json, &from_pb] {
        assert_eq!(m.to_cbor().unwrap(), cbor);
    }
}

#[test]
fn documents_round_trip_through_cbor_protobuf_and_json() {
    for doc in [lab_document(), light_document()] {
        let msg = document_message(&doc);
        assert_eq!(msg.kind, Kind::Document);
        all_three_agree(&msg);
        // The document read back from its AWS JSON is byte-identical.
        let aws = doc.to_aws_json().unwrap().to_string();
        let back = json::from_json(&aws, Kind::Document, None).unwrap();
        let mut rebuilt: Shadow<MapStore> =
            Shadow::new(MapStore::new(), Policy::LastWriterWins, Limits::DEFAULT);
        rebuilt
            .merge_writes(&back.writes, back.version.unwrap())
            .unwrap();
        assert_eq!(rebuilt.to_cbor(), doc.to_cbor());
        assert!(aws.contains(r#""delta":"#));
    }
}

#[test]
fn delta_and_accepted_notifications_round_trip() {
    let doc = lab_document();
    let mut buf = vec![0u8; 2048];
    let n = doc.encode_delta(&mut buf).unwrap().unwrap();
    let delta = OwnedMessage::from_cbor(&buf[..n]).unwrap();
    assert_eq!(delta.kind, Kind::Delta);
    let paths: Vec<&str> = delta.writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["led", "telemetry.interval"]);
    all_three_agree(&delta);
    let js = json::writes_to_json(&delta.header(), &delta.writes)
        .unwrap()
        .to_string();
    assert!(
        js.starts_with(r#"{"metadata":{"led""#) || js.contains(r#""state":{"led":true"#),
        "{js}"
    );

    let mut s = lab_document();
    let writes = [
        dev("led", Value::Bool(true), 30),
        dev("mode", Value::Null, 30),
    ];
    let update = Update::new(&writes)
        .with_token("c-42")
        .expecting(s.version());
    let outcome = s.apply(&update, 0).unwrap();
    let n = s.encode_accepted(&update, &outcome, &mut buf).unwrap();
    let ack = OwnedMessage::from_cbor(&buf[..n]).unwrap();
    assert_eq!(ack.client_token.as_deref(), Some("c-42"));
    assert!(
        ack.writes
            .iter()
            .any(|w| w.section == Section::Reported && w.value.is_null())
    );
    all_three_agree(&ack);
}

#[test]
fn cbor_is_at_most_forty_percent_of_aws_json() {
    for (name, doc) in [("lab", lab_document()), ("light", light_document())] {
        let cbor = doc.to_cbor().len();
        let aws = doc.to_aws_native_json(T0 / 1000).unwrap().to_string().len();
        let ratio = cbor as f64 / aws as f64;
        println!("{name}: CBOR {cbor} B, AWS JSON {aws} B, ratio {ratio:.3}");
        assert!(
            ratio <= 0.40,
            "{name}: CBOR {cbor} B is {ratio:.3} of AWS JSON {aws} B"
        );
    }
}

fn any_scalar() -> impl Strategy<Value = Scalar<'static>> {
    prop_oneof![
        any::<bool>().prop_map(Scalar::Bool),
        any::<i64>().prop_map(Scalar::Int),
        (-1e12f64..1e12).prop_map(Scalar::Float),
        prop::sample::select(vec!["", "a", "héllo", "x y"]).prop_map(Scalar::Text),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Value::float(f).unwrap()),
        "[a-z0-9 é]{0,12}".prop_map(|s| Value::text(&s).unwrap()),
        prop::collection::vec(any_scalar(), 0..4).prop_map(|v| Value::array(&v).unwrap()),
    ]
}

fn any_message() -> impl Strategy<Value = OwnedMessage> {
    let leaf = (
        any::<bool>(),
        prop::sample::select(vec!["a", "b.c", "b.d", "e.f.g", "h_1", "i-2"]),
        any_value(),
        // Many leaves share a few stamps, as leaves written by one update do, so CBOR writes
        // them bare under a default ref.
        prop_oneof![any::<u64>(), 0u64..2],
        prop_oneof![any::<u32>(), 0u32..2],
        0u8..4,
        0u8..2,
    );
    (
        0u64..4,
        prop::option::of(any::<u64>()),
        prop::option::of("[a-zA-Z0-9-]{0,64}"),
        prop::collection::btree_map((any::<bool>(), 0usize..6), leaf, 0..8),
    )
        .prop_map(|(kind, version, token, leaves)| {
            let kind = Kind::from_code(kind).unwrap();
            let version = if kind == Kind::Update {
                version
            } else {
                Some(version.unwrap_or(1))
            };
            let mut writes: Vec<Write> = leaves
                .into_values()
                .map(|(d, p, v, t, n, pol, o)| {
                    let section = if d {
                        Section::Desired
                    } else {
                        Section::Reported
                    };
                    let st = iot_shadow::Stamp::new(
                        iot_shadow::iot_core::time::HlcTimestamp {
                            time: t,
                            node: iot_shadow::iot_core::NodeId(n),
                        },
                        Policy::from_code(pol).unwrap(),
                        Origin::from_code(o).unwrap(),
                    );
                    Write::new(section, path(p), v, st)
                })
                .collect();
            writes.sort_by(|a, b| (a.section, &a.path).cmp(&(b.section, &b.path)));
            writes.dedup_by(|a, b| a.section == b.section && a.path == b.path);
            // Delta notifications carry desired leaves only.
            if kind == Kind::Delta {
                writes.retain(|w| w.section == Section::Desired);
            }
            OwnedMessage {
                kind,
                version,
                client_token: token,
                writes,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// CBOR, protobuf and JSON carry any message losslessly and agree byte for byte.
    #[test]
    fn cbor_protobuf_and_json_round_trip_and_agree(msg in any_message()) {
        all_three_agree(&msg);
    }

    /// Arbitrary bytes never make the CBOR decoders panic.
    #[test]
    fn decoding_arbitrary_cbor_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut fixed: heapless::Vec<Write, 4> = heapless::Vec::new();
        let _ = cbor::decode_message(&bytes, &mut fixed);
        let _ = OwnedMessage::from_cbor(&bytes);
        let mut device = iot_shadow::DeviceShadow::<Probe, 4>::new(
            Probe::default(), iot_shadow::iot_core::NodeId(2), Limits::DEFAULT, 1_000);
        let _ = device.handle_cbor::<4>(&bytes, 0);
    }

    /// Mutated valid messages never make the decoders panic (deeper than random bytes get).
    #[test]
    fn decoding_mutated_messages_never_panics(
        msg in any_message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = msg.to_cbor().unwrap();
        for (i, b) in &flips {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        let _ = OwnedMessage::from_cbor(&bytes);
        let _ = OwnedMessage::from_cbor(&bytes[..cut.index(bytes.len() + 1)]);
        let pb = ShadowMessage::from(&msg).encode_to_vec();
        let mut pb_bad = pb.clone();
        for (i, b) in &flips {
            let at = i.index(pb_bad.len().max(1)).min(pb_bad.len().saturating_sub(1));
            if let Some(x) = pb_bad.get_mut(at) {
                *x = *b;
            }
        }
        if let Ok(m) = ShadowMessage::decode(pb_bad.as_slice()) {
            let _ = OwnedMessage::try_from(m);
        }
        let js = json::writes_to_json(&msg.header(), &msg.writes).unwrap().to_string();
        let mut js_bad = js.into_bytes();
        for (i, b) in &flips {
            let at = i.index(js_bad.len());
            js_bad[at] = *b;
        }
        if let Ok(text) = std::str::from_utf8(&js_bad) {
            let _ = json::from_json(text, Kind::Document, None);
        }
    }

    /// Arbitrary bytes never make the protobuf and JSON readers panic.
    #[test]
    fn decoding_arbitrary_protobuf_and_json_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        text in ".{0,128}",
    ) {
        if let Ok(m) = ShadowMessage::decode(bytes.as_slice()) {
            let _ = OwnedMessage::try_from(m);
        }
        let _ = json::from_json(&text, Kind::Update, None);
        let _ = json::from_json(&text, Kind::Delta, Some(iot_shadow::Stamp::default()));
    }
}

iot_shadow::shadow_state! {
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Probe {
        pub a: i64 => A, "a", LastWriterWins;
        pub b: bool => B, "b.c", DeviceWins;
    }
}
