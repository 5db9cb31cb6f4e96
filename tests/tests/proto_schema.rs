//! The hand-written prost messages agree with the published schema in `proto/`.
//!
//! The schema is compiled with `protox` (pure Rust, no `protoc`). For every message, a fully
//! populated Rust value is encoded with prost and decoded against the schema's descriptor:
//! every field the schema names must be present with the right value and nothing may be
//! unknown to the schema. Then the reverse: a dynamic message with every schema field set is
//! decoded by the Rust type and must re-encode to the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use iot_core::proto;
use iot_tests::proto_check::{descriptor, rust_matches_schema, schema, schema_matches_rust};
use prost::Message;
use prost_reflect::Value;

#[test]
fn envelope_agrees_with_schema() {
    let pool = schema();
    let env = proto::Envelope {
        device: "dev-1".into(),
        seq: 7,
        id: 300,
        qos: proto::QoS::ExactlyOnce as i32,
        kind: proto::MessageKind::ShadowDocument as i32,
        payload: vec![1, 2, 3],
    };
    rust_matches_schema(&pool, "iot.v1.Envelope", &env, &[]);
    schema_matches_rust::<proto::Envelope>(&pool, "iot.v1.Envelope", |m| {
        m.set_field_by_name("device", Value::String("dev-2".into()));
        m.set_field_by_name("seq", Value::U32(u32::MAX));
        m.set_field_by_name("id", Value::U32(1));
        m.set_field_by_name("qos", Value::EnumNumber(1));
        m.set_field_by_name("kind", Value::EnumNumber(9));
        m.set_field_by_name("payload", Value::Bytes(vec![9u8; 4].into()));
    });
}

#[test]
fn enums_agree_with_schema() {
    let pool = schema();
    let qos = pool.get_enum_by_name("iot.v1.QoS").unwrap();
    for (code, rust) in [
        (0, proto::QoS::AtMostOnce),
        (1, proto::QoS::AtLeastOnce),
        (2, proto::QoS::ExactlyOnce),
    ] {
        assert_eq!(rust as i32, code);
        assert!(qos.get_value(code).is_some());
    }
    assert_eq!(qos.values().count(), 3);
    let kinds = pool.get_enum_by_name("iot.v1.MessageKind").unwrap();
    assert_eq!(kinds.values().count(), iot_core::MessageKind::ALL.len() + 1);
    for kind in iot_core::MessageKind::ALL {
        let code = i32::from(kind.code());
        let rust = proto::MessageKind::try_from(code).expect("Rust enum has the code");
        let schema = kinds.get_value(code).expect("schema has the code");
        // MESSAGE_KIND_SHADOW_ACCEPTED <-> ShadowAccepted
        let expected: String = format!("{rust:?}")
            .chars()
            .flat_map(|c| {
                if c.is_uppercase() {
                    vec!['_', c]
                } else {
                    vec![c.to_ascii_uppercase()]
                }
            })
            .collect();
        assert_eq!(schema.name(), format!("MESSAGE_KIND{expected}"));
    }
}

#[test]
fn telemetry_agrees_with_schema() {
    let pool = schema();
    use proto::reading::Measurement as M;
    let all = [
        ("temperature_celsius", M::TemperatureCelsius(21.5)),
        ("humidity_percent", M::HumidityPercent(40.0)),
        ("battery_percent", M::BatteryPercent(80)),
        ("battery_volts", M::BatteryVolts(3.7)),
        ("occupancy", M::Occupancy(2)),
        ("rssi_dbm", M::RssiDbm(-70)),
        (
            "custom",
            M::Custom(proto::CustomMeasurement { id: 5, value: 1.0 }),
        ),
    ];
    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
    for (name, m) in all {
        let reading = proto::Reading {
            at_ms: 1_700_000_000_000,
            measurement: Some(m),
        };
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != name).collect();
        rust_matches_schema(&pool, "iot.v1.Reading", &reading, &others);
    }
    let oneof_fields = descriptor(&pool, "iot.v1.Reading")
        .oneofs()
        .next()
        .unwrap()
        .fields()
        .count();
    assert_eq!(
        oneof_fields,
        names.len(),
        "schema and Rust oneof have the same members"
    );
    let batch = proto::Telemetry {
        readings: vec![proto::Reading {
            at_ms: 1,
            measurement: Some(M::RssiDbm(-1)),
        }],
    };
    rust_matches_schema(&pool, "iot.v1.Telemetry", &batch, &[]);
    rust_matches_schema(
        &pool,
        "iot.v1.CustomMeasurement",
        &proto::CustomMeasurement { id: 1, value: 2.0 },
        &[],
    );
    let ts = proto::HlcTimestamp {
        time: u64::MAX,
        node: 7,
    };
    rust_matches_schema(&pool, "iot.v1.HlcTimestamp", &ts, &[]);
    schema_matches_rust::<proto::HlcTimestamp>(&pool, "iot.v1.HlcTimestamp", |m| {
        m.set_field_by_name("time", Value::U64(5));
        m.set_field_by_name("node", Value::U32(6));
    });
}

#[test]
fn schema_has_no_message_without_a_rust_twin() {
    let pool = schema();
    let covered = [
        "iot.v1.Envelope",
        "iot.v1.HlcTimestamp",
        "iot.v1.CustomMeasurement",
        "iot.v1.Reading",
        "iot.v1.Telemetry",
    ];
    for m in pool
        .all_messages()
        .filter(|m| m.package_name() == "iot.v1" && m.parent_file().name() == "iot.proto")
    {
        assert!(
            covered.contains(&m.full_name()),
            "{} has no Rust twin checked here",
            m.full_name()
        );
    }
}

#[test]
fn protobuf_and_cbor_carry_the_same_envelope() {
    use iot_core::message::{EnvelopeRef, MessageId, MessageKind, OwnedEnvelope, QoS};
    let env = EnvelopeRef {
        device: "gw-1".parse().unwrap(),
        seq: 5,
        id: MessageId(6),
        qos: QoS::AtLeastOnce,
        kind: MessageKind::Telemetry,
        payload: &[0xa0],
    };
    let pb = proto::Envelope::from(&env).encode_to_vec();
    let from_pb = OwnedEnvelope::try_from(proto::Envelope::decode(pb.as_slice()).unwrap()).unwrap();
    let cbor = env.to_vec().unwrap();
    let from_cbor = EnvelopeRef::decode(&cbor).unwrap();
    assert_eq!(from_pb.as_ref(), from_cbor);
    // A protobuf envelope with an unknown kind or an invalid id is refused.
    let mut bad = proto::Envelope::from(&env);
    bad.kind = 99;
    assert!(OwnedEnvelope::try_from(bad).is_err());
    let mut bad = proto::Envelope::from(&env);
    bad.device = "not valid".into();
    assert!(OwnedEnvelope::try_from(bad).is_err());
}
