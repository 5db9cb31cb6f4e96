//! The hand-written prost messages of `iot_protocol::proto` agree with
//! `proto/protocol.proto`, and carry the same messages as the protocol's CBOR.
//!
//! Same method as `proto_schema.rs`: the schema is compiled with `protox`; a fully populated
//! Rust value must decode against the schema with every field present and nothing unknown,
//! and re-encode to the same bytes; a dynamic message with every schema field set must
//! decode into the Rust type and re-encode to the same bytes (helpers in
//! `iot_tests::proto_check`). Then: field numbers are the CBOR keys plus one, enum values
//! are the CBOR codes, every protocol message survives the trip to protobuf and back, and
//! what protobuf cannot express is refused on the way back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::collections::BTreeSet;
use std::fmt::Debug;

use iot_core::DeviceId;
use iot_lifecycle::command::{AckOutcome, CommandAck, RejectReason, ResultPayload};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::health::{HealthFlags, HealthReport, HealthStatus, HealthThresholds};
use iot_lifecycle::ota::{OtaJob, OtaProgress, OtaState, RollbackReason};
use iot_lifecycle::registration::{
    AuditRecord, ChallengeAnswer, DecommissionReason, RegistrationRejection, RegistrationRequest,
    RegistrationResponse,
};
use iot_lifecycle::state::{Event, State, TransitionRecord};
use iot_protocol::proto::{self, ProtoError};
use iot_protocol::{Heartbeat, Register, ShadowGet, ShadowRefusal, ShadowRejection};
use iot_tests::proto_check::{descriptor, rust_matches_schema, schema, schema_matches_rust};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

const FILE: &str = "protocol.proto";

fn device() -> DeviceId {
    DeviceId::new("dev-7").unwrap()
}

fn answer() -> ChallengeAnswer {
    ChallengeAnswer {
        nonce: [7; 16],
        proof: [9; 32],
    }
}

fn register() -> Register {
    Register {
        protocol: 3,
        schema: 42,
        request: RegistrationRequest {
            device: device(),
            firmware_version: 12,
            answer: Some(answer()),
        },
    }
}

/// A configuration with no field at its protobuf default, so every field is on the wire.
fn config() -> DeviceConfig {
    DeviceConfig {
        version: 4,
        telemetry_deadband: 0.25,
        thresholds: HealthThresholds {
            rssi_warning_dbm: -80,
            rssi_critical_dbm: -95,
            reading_min: -40.0,
            reading_max: 85.0,
            recent_reboot_ms: 60_000,
            ..HealthThresholds::DEFAULT
        },
        ..DeviceConfig::DEFAULT
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        seq: 5,
        uptime_ms: 50_000,
        state: State::Degraded,
        config_version: 4,
        health: HealthStatus::Warning,
        readings: Some(iot_protocol::ReadingCounts {
            sampled: 40,
            sent: 9,
        }),
    }
}

fn transition() -> TransitionRecord {
    TransitionRecord {
        from: State::Active,
        event: Event::HealthCheckFailed,
        to: State::Degraded,
        at_ms: 1_700_000_000_000,
    }
}

fn health() -> HealthReport {
    HealthReport::from_flags(
        HealthFlags::WEAK_SIGNAL,
        HealthFlags::BATTERY_LOW.union(HealthFlags::LOW_MEMORY),
        9_000,
    )
}

fn rejection() -> ShadowRejection {
    ShadowRejection {
        reason: ShadowRefusal::ClockDrift,
        version: 17,
    }
}

fn progress() -> OtaProgress {
    OtaProgress {
        state: OtaState::RolledBack,
        version: Some(3),
        next_offset: 4_096,
        rollback: Some(RollbackReason::NotConfirmed),
    }
}

fn block_request() -> iot_protocol::OtaBlockRequest {
    iot_protocol::OtaBlockRequest {
        version: 7,
        offset: 512,
    }
}

fn block() -> iot_protocol::OtaBlock<Vec<u8>> {
    iot_protocol::OtaBlock {
        version: 7,
        offset: 512,
        data: (0..=255u8).collect(),
    }
}

fn job() -> OtaJob {
    OtaJob {
        version: 3,
        size: 65_536,
        sha256: [0xAB; 32],
    }
}

fn audit() -> AuditRecord {
    AuditRecord {
        device: device(),
        at_ms: 1_700_000_000_000,
        reason: DecommissionReason::Compromised,
        from: State::Maintenance,
        event: Event::EndOfLife,
    }
}

fn acks() -> [CommandAck; 3] {
    [
        CommandAck {
            command_id: 8,
            outcome: AckOutcome::Accepted,
        },
        CommandAck {
            command_id: 9,
            outcome: AckOutcome::Rejected(RejectReason::Busy),
        },
        CommandAck {
            command_id: 10,
            outcome: AckOutcome::Completed(ResultPayload::from_slice(b"ok").unwrap()),
        },
    ]
}

fn responses() -> [RegistrationResponse; 3] {
    [
        RegistrationResponse::Challenge([3; 16]),
        RegistrationResponse::Accepted(config()),
        RegistrationResponse::Rejected(RegistrationRejection::StaleNonce),
    ]
}

#[test]
fn messages_agree_with_schema() {
    let pool = schema();
    rust_matches_schema(
        &pool,
        "iot.v1.ChallengeAnswer",
        &proto::ChallengeAnswer::from(&answer()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.RegistrationRequest",
        &proto::RegistrationRequest::from(&register().request),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.Register",
        &proto::Register::from(&register()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.HealthThresholds",
        &proto::HealthThresholds::from(&config().thresholds),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.DeviceConfig",
        &proto::DeviceConfig::from(&config()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.Heartbeat",
        &proto::Heartbeat::from(&heartbeat()),
        &[],
    );
    let readings = proto::Heartbeat::from(&heartbeat())
        .readings
        .expect("the sample heartbeat carries its reading counts");
    rust_matches_schema(&pool, "iot.v1.ReadingCounts", &readings, &[]);
    rust_matches_schema(
        &pool,
        "iot.v1.HealthReport",
        &proto::HealthReport::from(&health()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.TransitionRecord",
        &proto::TransitionRecord::from(&transition()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.ShadowGet",
        &proto::ShadowGet::from(&ShadowGet { version: 9 }),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.ShadowRejection",
        &proto::ShadowRejection::from(&rejection()),
        &[],
    );
    rust_matches_schema(&pool, "iot.v1.OtaJob", &proto::OtaJob::from(&job()), &[]);
    rust_matches_schema(
        &pool,
        "iot.v1.OtaBlockRequest",
        &proto::OtaBlockRequest::from(&block_request()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.OtaBlock",
        &proto::OtaBlock::from(&block()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.OtaProgress",
        &proto::OtaProgress::from(&progress()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.DecommissionRequest",
        &proto::DecommissionRequest::from(DecommissionReason::OperatorRequest),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.AuditRecord",
        &proto::AuditRecord::from(&audit()),
        &[],
    );
    rust_matches_schema(
        &pool,
        "iot.v1.CommandAccepted",
        &proto::CommandAccepted {},
        &[],
    );
    // One message per oneof member; the other members stay unset.
    let oneof = |names: &[&'static str], set: &str| -> Vec<&'static str> {
        names.iter().copied().filter(|n| *n != set).collect()
    };
    let outcomes = ["accepted", "rejected", "completed"];
    for (ack, set) in acks().iter().zip(outcomes) {
        rust_matches_schema(
            &pool,
            "iot.v1.CommandAck",
            &proto::CommandAck::from(ack),
            &oneof(&outcomes, set),
        );
    }
    let members = ["challenge", "accepted", "rejected"];
    for (response, set) in responses().iter().zip(members) {
        rust_matches_schema(
            &pool,
            "iot.v1.RegistrationResponse",
            &proto::RegistrationResponse::from(response),
            &oneof(&members, set),
        );
    }
    for (name, members) in [
        ("iot.v1.CommandAck", outcomes.len()),
        ("iot.v1.RegistrationResponse", members.len()),
    ] {
        let oneofs: Vec<_> = descriptor(&pool, name).oneofs().collect();
        assert_eq!(oneofs.len(), 1, "{name}");
        assert_eq!(oneofs[0].fields().count(), members, "{name}");
    }
}

/// Sets every field of `m` to a value that is not its default (messages get every field
/// set, recursively), so a field the Rust type lacks or types differently shows up in the
/// re-encoding.
fn fill(m: &mut DynamicMessage) {
    let desc = m.descriptor();
    let mut seen_oneofs = BTreeSet::new();
    for field in desc.fields() {
        if let Some(oneof) = field.containing_oneof()
            && !oneof.is_synthetic()
            && !seen_oneofs.insert(oneof.name().to_string())
        {
            continue;
        }
        use prost_reflect::Kind;
        let value = match field.kind() {
            Kind::Uint32 | Kind::Fixed32 => Value::U32(3),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(u64::MAX),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(-3),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(-3),
            Kind::Bool => Value::Bool(true),
            Kind::Float => Value::F32(0.5),
            Kind::Double => Value::F64(0.5),
            Kind::String => Value::String("dev-9".into()),
            Kind::Bytes => Value::Bytes(vec![1u8; 4].into()),
            Kind::Enum(e) => Value::EnumNumber(e.values().last().unwrap().number()),
            Kind::Message(inner) => {
                let mut child = DynamicMessage::new(inner);
                fill(&mut child);
                Value::Message(child)
            }
        };
        m.set_field(&field, value);
    }
}

fn filled(pool: &DescriptorPool, name: &str) -> impl Fn(&mut DynamicMessage) {
    // The descriptor must exist; `fill` then sets every field.
    let _ = descriptor(pool, name);
    fill
}

#[test]
fn schema_matches_rust_types() {
    let pool = schema();
    macro_rules! check {
        ($($name:literal => $ty:ty),+ $(,)?) => {
            $(schema_matches_rust::<$ty>(&pool, $name, filled(&pool, $name));)+
        };
    }
    check! {
        "iot.v1.ChallengeAnswer" => proto::ChallengeAnswer,
        "iot.v1.RegistrationRequest" => proto::RegistrationRequest,
        "iot.v1.Register" => proto::Register,
        "iot.v1.HealthThresholds" => proto::HealthThresholds,
        "iot.v1.DeviceConfig" => proto::DeviceConfig,
        "iot.v1.RegistrationResponse" => proto::RegistrationResponse,
        "iot.v1.Heartbeat" => proto::Heartbeat,
        "iot.v1.HealthReport" => proto::HealthReport,
        "iot.v1.TransitionRecord" => proto::TransitionRecord,
        "iot.v1.ShadowGet" => proto::ShadowGet,
        "iot.v1.ShadowRejection" => proto::ShadowRejection,
        "iot.v1.CommandAccepted" => proto::CommandAccepted,
        "iot.v1.CommandAck" => proto::CommandAck,
        "iot.v1.OtaJob" => proto::OtaJob,
        "iot.v1.OtaBlockRequest" => proto::OtaBlockRequest,
        "iot.v1.OtaBlock" => proto::OtaBlock,
        "iot.v1.OtaProgress" => proto::OtaProgress,
        "iot.v1.DecommissionRequest" => proto::DecommissionRequest,
        "iot.v1.AuditRecord" => proto::AuditRecord,
    }
    // Every other member of each oneof decodes too.
    schema_matches_rust::<proto::CommandAck>(&pool, "iot.v1.CommandAck", |m| {
        m.set_field_by_name("command_id", Value::U32(1));
        m.set_field_by_name(
            "accepted",
            Value::Message(DynamicMessage::new(descriptor(
                &pool,
                "iot.v1.CommandAccepted",
            ))),
        );
    });
    schema_matches_rust::<proto::CommandAck>(&pool, "iot.v1.CommandAck", |m| {
        m.set_field_by_name("rejected", Value::EnumNumber(2));
    });
    schema_matches_rust::<proto::RegistrationResponse>(&pool, "iot.v1.RegistrationResponse", |m| {
        m.set_field_by_name("challenge", Value::Bytes(vec![5u8; 16].into()));
    });
    schema_matches_rust::<proto::RegistrationResponse>(&pool, "iot.v1.RegistrationResponse", |m| {
        m.set_field_by_name("rejected", Value::EnumNumber(6));
    });
}

#[test]
fn schema_has_no_message_without_a_rust_twin() {
    let pool = schema();
    let covered = [
        "iot.v1.ChallengeAnswer",
        "iot.v1.RegistrationRequest",
        "iot.v1.Register",
        "iot.v1.HealthThresholds",
        "iot.v1.DeviceConfig",
        "iot.v1.RegistrationResponse",
        "iot.v1.Heartbeat",
        "iot.v1.ReadingCounts",
        "iot.v1.HealthReport",
        "iot.v1.TransitionRecord",
        "iot.v1.ShadowGet",
        "iot.v1.ShadowRejection",
        "iot.v1.CommandAccepted",
        "iot.v1.CommandAck",
        "iot.v1.OtaJob",
        "iot.v1.OtaBlockRequest",
        "iot.v1.OtaBlock",
        "iot.v1.OtaProgress",
        "iot.v1.DecommissionRequest",
        "iot.v1.AuditRecord",
    ];
    let in_file: Vec<_> = pool
        .all_messages()
        .filter(|m| m.parent_file().name() == FILE)
        .map(|m| m.full_name().to_string())
        .collect();
    for m in &in_file {
        assert!(
            covered.contains(&m.as_str()),
            "{m} has no Rust twin checked here"
        );
    }
    assert_eq!(
        in_file.len(),
        covered.len(),
        "a checked message left the schema"
    );
}

/// `ShadowRefusal` -> `SHADOW_REFUSAL`, `ClockDrift` -> `CLOCK_DRIFT`.
fn screaming(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The schema's enum `name` has exactly the values of `variants`, numbered with their CBOR
/// codes and named after them; the Rust mirror names the same numbers the same way.
fn check_enum<R: Debug + Copy + minicbor::Encode<()>, P: Debug + TryFrom<i32>>(
    pool: &DescriptorPool,
    name: &str,
    variants: &[R],
    wire: impl Fn(R) -> i32,
) {
    let schema = pool
        .get_enum_by_name(&format!("iot.v1.{name}"))
        .unwrap_or_else(|| panic!("{name} is not in the schema"));
    assert_eq!(
        schema.values().count(),
        variants.len(),
        "{name}: value count"
    );
    for &v in variants {
        let number = wire(v);
        let cbor = minicbor::to_vec(v).unwrap();
        assert_eq!(
            cbor,
            minicbor::to_vec(number as u32).unwrap(),
            "{name}: {v:?} is its CBOR code"
        );
        let value = schema
            .get_value(number)
            .unwrap_or_else(|| panic!("{name}: schema lacks {v:?} = {number}"));
        assert_eq!(
            value.name(),
            format!("{}_{}", screaming(name), screaming(&format!("{v:?}"))),
            "{name}: value {number}"
        );
        let mirror = P::try_from(number).unwrap_or_else(|_| panic!("{name}: Rust lacks {number}"));
        assert_eq!(format!("{mirror:?}"), format!("{v:?}"));
    }
    let next = i32::try_from(variants.len()).unwrap();
    assert!(
        P::try_from(next).is_err(),
        "{name}: Rust names more values than the schema"
    );
}

#[test]
fn enums_agree_with_schema_and_cbor() {
    let pool = schema();
    let record = |from: State, event: Event| {
        proto::TransitionRecord::from(&TransitionRecord {
            from,
            event,
            to: from,
            at_ms: 0,
        })
    };
    check_enum::<_, proto::LifecycleState>(&pool, "LifecycleState", &State::ALL, |s| {
        record(s, Event::EndOfLife).from_state
    });
    check_enum::<_, proto::LifecycleEvent>(&pool, "LifecycleEvent", &Event::ALL, |e| {
        record(State::Active, e).event
    });
    check_enum::<_, proto::HealthStatus>(
        &pool,
        "HealthStatus",
        &[
            HealthStatus::Healthy,
            HealthStatus::Warning,
            HealthStatus::Critical,
        ],
        |h| {
            proto::Heartbeat::from(&Heartbeat {
                health: h,
                ..heartbeat()
            })
            .health
        },
    );
    check_enum::<_, proto::RegistrationRejection>(
        &pool,
        "RegistrationRejection",
        &[
            RegistrationRejection::UnknownDevice,
            RegistrationRejection::InvalidProof,
            RegistrationRejection::StaleNonce,
            RegistrationRejection::Revoked,
            RegistrationRejection::UnsupportedFirmware,
            RegistrationRejection::UnsupportedProtocol,
            RegistrationRejection::ChallengePending,
        ],
        |r| match proto::RegistrationResponse::from(&RegistrationResponse::Rejected(r)).response {
            Some(proto::registration_response::Response::Rejected(n)) => n,
            other => panic!("{other:?}"),
        },
    );
    check_enum::<_, proto::ShadowRefusal>(
        &pool,
        "ShadowRefusal",
        &[
            ShadowRefusal::Conflict,
            ShadowRefusal::Limit,
            ShadowRefusal::ClockDrift,
            ShadowRefusal::Invalid,
            ShadowRefusal::Forbidden,
        ],
        |reason| proto::ShadowRejection::from(&ShadowRejection { reason, version: 0 }).reason,
    );
    check_enum::<_, proto::CommandRejectReason>(
        &pool,
        "CommandRejectReason",
        &[
            RejectReason::Expired,
            RejectReason::Unsupported,
            RejectReason::InvalidArguments,
            RejectReason::InvalidState,
            RejectReason::Busy,
            RejectReason::Failed,
            RejectReason::ConfigStale,
            RejectReason::ConfigInvalid,
        ],
        |r| {
            let ack = CommandAck {
                command_id: 0,
                outcome: AckOutcome::Rejected(r),
            };
            match proto::CommandAck::from(&ack).outcome {
                Some(proto::command_ack::Outcome::Rejected(n)) => n,
                other => panic!("{other:?}"),
            }
        },
    );
    check_enum::<_, proto::OtaState>(
        &pool,
        "OtaState",
        &[
            OtaState::Idle,
            OtaState::Downloading,
            OtaState::Downloaded,
            OtaState::Verifying,
            OtaState::Updating,
            OtaState::Testing,
            OtaState::Confirmed,
            OtaState::RolledBack,
        ],
        |state| {
            proto::OtaProgress::from(&OtaProgress {
                state,
                ..progress()
            })
            .state
        },
    );
    check_enum::<_, proto::RollbackReason>(
        &pool,
        "RollbackReason",
        &[
            RollbackReason::VerificationFailed,
            RollbackReason::NotConfirmed,
        ],
        |r| {
            proto::OtaProgress::from(&OtaProgress {
                rollback: Some(r),
                ..progress()
            })
            .rollback
            .unwrap()
        },
    );
    check_enum::<_, proto::DecommissionReason>(
        &pool,
        "DecommissionReason",
        &[
            DecommissionReason::EndOfLife,
            DecommissionReason::Unrecoverable,
            DecommissionReason::Compromised,
            DecommissionReason::OperatorRequest,
        ],
        |r| proto::DecommissionRequest::from(r).reason,
    );
    let enums_in_file = pool
        .all_enums()
        .filter(|e| e.parent_file().name() == FILE)
        .count();
    assert_eq!(
        enums_in_file, 9,
        "an enum of the schema is not checked here"
    );
}

/// The CBOR map keys of `value`'s encoding.
fn cbor_keys<T: minicbor::Encode<()>>(value: &T) -> BTreeSet<u32> {
    let bytes = minicbor::to_vec(value).unwrap();
    let mut d = minicbor::Decoder::new(&bytes);
    let n = d.map().unwrap().expect("a definite map");
    (0..n)
        .map(|_| {
            let key = d.u32().unwrap();
            d.skip().unwrap();
            key
        })
        .collect()
}

/// The field numbers of schema message `name`, minus one.
fn fields_minus_one(pool: &DescriptorPool, name: &str) -> BTreeSet<u32> {
    descriptor(pool, name)
        .fields()
        .map(|f| f.number() - 1)
        .collect()
}

#[test]
fn field_numbers_are_cbor_keys_plus_one() {
    let pool = schema();
    let cases: Vec<(&str, BTreeSet<u32>)> = vec![
        ("iot.v1.ChallengeAnswer", cbor_keys(&answer())),
        ("iot.v1.RegistrationRequest", cbor_keys(&register().request)),
        ("iot.v1.Register", cbor_keys(&register())),
        ("iot.v1.HealthThresholds", cbor_keys(&config().thresholds)),
        ("iot.v1.DeviceConfig", cbor_keys(&config())),
        ("iot.v1.Heartbeat", cbor_keys(&heartbeat())),
        (
            "iot.v1.ReadingCounts",
            cbor_keys(&heartbeat().readings.expect("sample counts")),
        ),
        ("iot.v1.HealthReport", cbor_keys(&health())),
        ("iot.v1.TransitionRecord", cbor_keys(&transition())),
        ("iot.v1.ShadowGet", cbor_keys(&ShadowGet { version: 1 })),
        ("iot.v1.ShadowRejection", cbor_keys(&rejection())),
        ("iot.v1.OtaJob", cbor_keys(&job())),
        ("iot.v1.OtaBlockRequest", cbor_keys(&block_request())),
        ("iot.v1.OtaBlock", cbor_keys(&block())),
        ("iot.v1.OtaProgress", cbor_keys(&progress())),
        ("iot.v1.AuditRecord", cbor_keys(&audit())),
    ];
    for (name, keys) in cases {
        assert_eq!(fields_minus_one(&pool, name), keys, "{name}");
    }
    // CommandAck: key 0 is field 1; key 1 (the outcome) is the oneof.
    assert_eq!(cbor_keys(&acks()[0]), BTreeSet::from([0, 1]));
    let ack = descriptor(&pool, "iot.v1.CommandAck");
    assert_eq!(ack.get_field_by_name("command_id").unwrap().number(), 1);
}

/// Converts `value` to protobuf, through bytes, and back.
fn through_protobuf<T, P>(value: &T) -> Result<T, ProtoError>
where
    P: Message + Default + for<'a> From<&'a T>,
    T: TryFrom<P, Error = ProtoError>,
{
    let bytes = P::from(value).encode_to_vec();
    T::try_from(P::decode(bytes.as_slice()).expect("prost decodes its own bytes"))
}

#[test]
fn protocol_messages_survive_protobuf() {
    assert_eq!(
        through_protobuf::<_, proto::Register>(&register()),
        Ok(register())
    );
    let first = Register {
        request: RegistrationRequest {
            answer: None,
            ..register().request
        },
        ..register()
    };
    assert_eq!(through_protobuf::<_, proto::Register>(&first), Ok(first));
    assert_eq!(
        through_protobuf::<_, proto::Heartbeat>(&heartbeat()),
        Ok(heartbeat())
    );
    assert_eq!(
        through_protobuf::<_, proto::HealthReport>(&health()),
        Ok(health())
    );
    assert_eq!(
        through_protobuf::<_, proto::TransitionRecord>(&transition()),
        Ok(transition())
    );
    let get = ShadowGet { version: u64::MAX };
    let bytes = proto::ShadowGet::from(&get).encode_to_vec();
    assert_eq!(
        ShadowGet::from(proto::ShadowGet::decode(bytes.as_slice()).unwrap()),
        get
    );
    assert_eq!(
        through_protobuf::<_, proto::ShadowRejection>(&rejection()),
        Ok(rejection())
    );
    assert_eq!(
        through_protobuf::<_, proto::DeviceConfig>(&config()),
        Ok(config())
    );
    assert_eq!(
        through_protobuf::<_, proto::DeviceConfig>(&DeviceConfig::DEFAULT),
        Ok(DeviceConfig::DEFAULT)
    );
    for response in responses() {
        assert_eq!(
            through_protobuf::<_, proto::RegistrationResponse>(&response),
            Ok(response)
        );
    }
    for ack in acks() {
        assert_eq!(
            through_protobuf::<_, proto::CommandAck>(&ack),
            Ok(ack.clone())
        );
    }
    assert_eq!(through_protobuf::<_, proto::OtaJob>(&job()), Ok(job()));
    assert_eq!(
        through_protobuf::<_, proto::OtaBlockRequest>(&block_request()),
        Ok(block_request())
    );
    assert_eq!(
        through_protobuf::<_, proto::OtaBlock>(&block()),
        Ok(block())
    );
    // A block longer than the protocol's is refused.
    let long = proto::OtaBlock {
        data: vec![0; iot_protocol::OTA_BLOCK_SIZE + 1],
        ..proto::OtaBlock::from(&block())
    };
    assert!(iot_protocol::OtaBlock::<Vec<u8>>::try_from(long).is_err());
    assert_eq!(
        through_protobuf::<_, proto::OtaProgress>(&progress()),
        Ok(progress())
    );
    let idle = OtaProgress {
        state: OtaState::Idle,
        version: None,
        next_offset: 0,
        rollback: None,
    };
    assert_eq!(through_protobuf::<_, proto::OtaProgress>(&idle), Ok(idle));
    assert_eq!(
        through_protobuf::<_, proto::AuditRecord>(&audit()),
        Ok(audit())
    );
    for reason in [
        DecommissionReason::EndOfLife,
        DecommissionReason::OperatorRequest,
    ] {
        let bytes = proto::DecommissionRequest::from(reason).encode_to_vec();
        let back = proto::DecommissionRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(DecommissionReason::try_from(back), Ok(reason));
    }
}

#[test]
fn protobuf_and_cbor_carry_the_same_messages() {
    use iot_core::MessageKind;
    use iot_protocol::Uplink;
    let cbor = Uplink::<&[u8]>::Heartbeat(heartbeat()).to_vec();
    let from_cbor = Uplink::decode(MessageKind::Heartbeat, &cbor).unwrap();
    let pb = proto::Heartbeat::from(&heartbeat()).encode_to_vec();
    let from_pb = Heartbeat::try_from(proto::Heartbeat::decode(pb.as_slice()).unwrap()).unwrap();
    assert_eq!(from_cbor, Uplink::Heartbeat(from_pb));

    let cbor = Uplink::<&[u8]>::Transition(transition()).to_vec();
    let pb = proto::TransitionRecord::from(&transition()).encode_to_vec();
    let from_pb =
        TransitionRecord::try_from(proto::TransitionRecord::decode(pb.as_slice()).unwrap())
            .unwrap();
    assert_eq!(
        Uplink::decode(MessageKind::LifecycleReport, &cbor).unwrap(),
        Uplink::Transition(from_pb)
    );
}

#[test]
fn what_protobuf_cannot_express_is_refused() {
    fn invalid<T>(field: &'static str) -> Result<T, ProtoError> {
        Err(ProtoError::Invalid(field))
    }
    let mut hb = proto::Heartbeat::from(&heartbeat());
    hb.state = 6;
    assert_eq!(Heartbeat::try_from(hb), invalid("Heartbeat.state"));
    let mut hb = proto::Heartbeat::from(&heartbeat());
    hb.health = -1;
    assert_eq!(Heartbeat::try_from(hb), invalid("Heartbeat.health"));

    let mut reg = proto::Register::from(&register());
    reg.protocol = u32::from(u16::MAX) + 1;
    assert_eq!(Register::try_from(reg), invalid("Register.protocol"));
    let mut reg = proto::Register::from(&register());
    reg.request = None;
    assert_eq!(
        Register::try_from(reg),
        Err(ProtoError::Missing("Register.request"))
    );
    let mut reg = proto::Register::from(&register());
    reg.request.as_mut().unwrap().device = "not valid".into();
    assert_eq!(
        Register::try_from(reg),
        invalid("RegistrationRequest.device")
    );
    let mut reg = proto::Register::from(&register());
    reg.request
        .as_mut()
        .unwrap()
        .answer
        .as_mut()
        .unwrap()
        .nonce
        .pop();
    assert_eq!(Register::try_from(reg), invalid("ChallengeAnswer.nonce"));

    let mut cfg = proto::DeviceConfig::from(&config());
    cfg.telemetry_deadband = f32::NAN;
    assert_eq!(
        DeviceConfig::try_from(cfg),
        invalid("DeviceConfig.telemetry_deadband")
    );
    let mut cfg = proto::DeviceConfig::from(&config());
    cfg.degraded_telemetry_factor = 256;
    assert_eq!(
        DeviceConfig::try_from(cfg),
        invalid("DeviceConfig.degraded_telemetry_factor")
    );
    let mut cfg = proto::DeviceConfig::from(&config());
    cfg.thresholds.as_mut().unwrap().rssi_warning_dbm = i32::from(i16::MIN) - 1;
    assert_eq!(DeviceConfig::try_from(cfg), invalid("HealthThresholds"));

    // Status and flags must agree, as the CBOR decoder requires.
    let mut report = proto::HealthReport::from(&health());
    report.status = proto::HealthStatus::Healthy as i32;
    assert_eq!(
        HealthReport::try_from(report),
        invalid("HealthReport.status")
    );
    let mut report = proto::HealthReport::from(&health());
    report.warnings = 1 << 12;
    assert_eq!(
        HealthReport::try_from(report),
        invalid("HealthReport.warnings")
    );

    let mut ack = proto::CommandAck::from(&acks()[2]);
    ack.outcome = Some(proto::command_ack::Outcome::Completed(vec![0; 65]));
    assert_eq!(CommandAck::try_from(ack), invalid("CommandAck.completed"));
    let mut ack = proto::CommandAck::from(&acks()[0]);
    ack.outcome = None;
    assert_eq!(
        CommandAck::try_from(ack),
        Err(ProtoError::Missing("CommandAck.outcome"))
    );

    let empty = proto::RegistrationResponse { response: None };
    assert_eq!(
        RegistrationResponse::try_from(empty),
        Err(ProtoError::Missing("RegistrationResponse.response"))
    );
    let mut progress = proto::OtaProgress::from(&progress());
    progress.rollback = Some(2);
    assert_eq!(
        OtaProgress::try_from(progress),
        invalid("OtaProgress.rollback")
    );
    let mut j = proto::OtaJob::from(&job());
    j.sha256.push(0);
    assert_eq!(OtaJob::try_from(j), invalid("OtaJob.sha256"));
    let mut a = proto::AuditRecord::from(&audit());
    a.reason = 4;
    assert_eq!(AuditRecord::try_from(a), invalid("AuditRecord.reason"));
}
