//! The hand-written prost messages of `iot_shadow::proto` agree with `proto/shadow.proto`.
//!
//! Same method as `proto_schema.rs`: the schema is compiled with `protox`; a fully populated
//! Rust value must decode against the schema with every field present and nothing unknown and
//! re-encode to the same bytes; a dynamic message with every schema field set must decode
//! into the Rust type and re-encode to the same bytes. The helpers live in
//! `iot_tests::proto_check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use iot_shadow::proto::{
    self, ShadowArray, ShadowLeaf, ShadowMessage, ShadowScalar, ShadowStamp, ShadowValue,
    shadow_scalar, shadow_value,
};
use iot_tests::proto_check::{descriptor, rust_matches_schema, schema, schema_matches_rust};
use prost_reflect::Value;

fn stamp() -> ShadowStamp {
    ShadowStamp {
        time: u64::MAX,
        node: 7,
        policy: proto::ShadowPolicy::Custom as i32,
        origin: proto::ShadowOrigin::Device as i32,
    }
}

const SCALARS: [&str; 4] = ["bool_value", "int_value", "float_value", "text_value"];
const VALUES: [&str; 5] = [
    "bool_value",
    "int_value",
    "float_value",
    "text_value",
    "array_value",
];

#[test]
fn shadow_values_agree_with_schema() {
    let pool = schema();
    let scalars = [
        shadow_scalar::Kind::BoolValue(true),
        shadow_scalar::Kind::IntValue(-5),
        shadow_scalar::Kind::FloatValue(0.5),
        shadow_scalar::Kind::TextValue("x".into()),
    ];
    for (name, kind) in SCALARS.iter().zip(scalars) {
        let others: Vec<&str> = SCALARS.iter().copied().filter(|n| n != name).collect();
        let s = ShadowScalar { kind: Some(kind) };
        rust_matches_schema(&pool, "iot.v1.ShadowScalar", &s, &others);
    }
    let array = ShadowArray {
        items: vec![ShadowScalar {
            kind: Some(shadow_scalar::Kind::IntValue(1)),
        }],
    };
    rust_matches_schema(&pool, "iot.v1.ShadowArray", &array, &[]);
    let values = [
        shadow_value::Kind::BoolValue(true),
        shadow_value::Kind::IntValue(i64::MIN),
        shadow_value::Kind::FloatValue(-2.5),
        shadow_value::Kind::TextValue("on".into()),
        shadow_value::Kind::ArrayValue(array),
    ];
    for (name, kind) in VALUES.iter().zip(values) {
        let others: Vec<&str> = VALUES.iter().copied().filter(|n| n != name).collect();
        let v = ShadowValue { kind: Some(kind) };
        rust_matches_schema(&pool, "iot.v1.ShadowValue", &v, &others);
    }
    for (msg, oneof_len) in [("iot.v1.ShadowScalar", 4), ("iot.v1.ShadowValue", 5)] {
        let d = descriptor(&pool, msg);
        assert_eq!(
            d.oneofs().next().unwrap().fields().count(),
            oneof_len,
            "{msg}"
        );
    }
    schema_matches_rust::<ShadowValue>(&pool, "iot.v1.ShadowValue", |m| {
        m.set_field_by_name("int_value", Value::I64(-9));
    });
}

#[test]
fn shadow_messages_agree_with_schema() {
    let pool = schema();
    rust_matches_schema(&pool, "iot.v1.ShadowStamp", &stamp(), &[]);
    let leaf = ShadowLeaf {
        path: "telemetry.interval".into(),
        value: Some(ShadowValue {
            kind: Some(shadow_value::Kind::IntValue(60)),
        }),
        stamp: Some(stamp()),
    };
    rust_matches_schema(&pool, "iot.v1.ShadowLeaf", &leaf, &[]);
    let msg = ShadowMessage {
        kind: proto::ShadowMessageKind::Document as i32,
        version: Some(3),
        client_token: Some("tok".into()),
        desired: vec![leaf.clone()],
        reported: vec![leaf],
    };
    rust_matches_schema(&pool, "iot.v1.ShadowMessage", &msg, &[]);
    schema_matches_rust::<ShadowStamp>(&pool, "iot.v1.ShadowStamp", |m| {
        m.set_field_by_name("time", Value::U64(5));
        m.set_field_by_name("node", Value::U32(6));
        m.set_field_by_name("policy", Value::EnumNumber(2));
        m.set_field_by_name("origin", Value::EnumNumber(1));
    });
    schema_matches_rust::<ShadowMessage>(&pool, "iot.v1.ShadowMessage", |m| {
        m.set_field_by_name("kind", Value::EnumNumber(1));
        m.set_field_by_name("version", Value::U64(0));
        m.set_field_by_name("client_token", Value::String(String::new()));
    });
}

#[test]
fn shadow_enums_agree_with_schema() {
    let pool = schema();
    let check = |name: &str, rust: &[(i32, &str)]| {
        let e = pool.get_enum_by_name(name).unwrap();
        assert_eq!(e.values().count(), rust.len(), "{name}");
        for (code, suffix) in rust {
            let v = e.get_value(*code).unwrap();
            assert!(
                v.name().ends_with(suffix),
                "{name}: {} vs {suffix}",
                v.name()
            );
        }
    };
    use iot_shadow::cbor::Kind;
    use iot_shadow::{Origin, Policy};
    check(
        "iot.v1.ShadowPolicy",
        &[
            (i32::from(Policy::CloudWins.code()), "CLOUD_WINS"),
            (i32::from(Policy::DeviceWins.code()), "DEVICE_WINS"),
            (i32::from(Policy::LastWriterWins.code()), "LAST_WRITER_WINS"),
            (i32::from(Policy::Custom.code()), "CUSTOM"),
        ],
    );
    check(
        "iot.v1.ShadowOrigin",
        &[
            (i32::from(Origin::Cloud.code()), "CLOUD"),
            (i32::from(Origin::Device.code()), "DEVICE"),
        ],
    );
    check(
        "iot.v1.ShadowMessageKind",
        &[
            (i32::from(Kind::Update.code()), "UPDATE"),
            (i32::from(Kind::Accepted.code()), "ACCEPTED"),
            (i32::from(Kind::Delta.code()), "DELTA"),
            (i32::from(Kind::Document.code()), "DOCUMENT"),
        ],
    );
}

#[test]
fn shadow_schema_has_no_message_without_a_rust_twin() {
    let pool = schema();
    let covered = [
        "iot.v1.ShadowScalar",
        "iot.v1.ShadowArray",
        "iot.v1.ShadowValue",
        "iot.v1.ShadowStamp",
        "iot.v1.ShadowLeaf",
        "iot.v1.ShadowMessage",
    ];
    for m in pool
        .all_messages()
        .filter(|m| m.parent_file().name() == "shadow.proto")
    {
        assert!(
            covered.contains(&m.full_name()),
            "{} unchecked",
            m.full_name()
        );
    }
}
