//! Device and backend talk through `iot_core` envelopes carrying `iot_lifecycle` payloads,
//! and both sides use the same lifecycle code to decide what is legal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::codec::{decode, encode_into};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, QoS};
use iot_lifecycle::command::{
    AckOutcome, Command, CommandAck, CommandHandler, CommandKind, CommandProcessor, DeviceCommands,
    HandlerResult,
};
use iot_lifecycle::config::{ConfigStore, DeviceConfig};
use iot_lifecycle::health::{HealthMonitor, HealthReport, HealthSample, HealthStatus};
use iot_lifecycle::registration::{
    ChallengeAnswer, DeviceSecret, RegistrationRequest, RegistrationResponse, verify_registration,
};
use iot_lifecycle::state::{Event, Lifecycle, State, TransitionRecord, transition};

fn frame(device: DeviceId, id: u32, kind: MessageKind, payload: &[u8], out: &mut [u8]) -> usize {
    EnvelopeRef {
        device,
        seq: id,
        id: MessageId(id),
        qos: QoS::AtLeastOnce,
        kind,
        payload,
    }
    .encode_into(out)
    .unwrap()
}

fn open(bytes: &[u8], expected: MessageKind) -> &[u8] {
    let env = EnvelopeRef::decode(bytes).unwrap();
    assert_eq!(env.kind, expected);
    env.payload
}

#[test]
fn registration_handshake_and_initial_config_over_envelopes() {
    let device = DeviceId::from_mac([0x24, 0x0a, 0xc4, 0, 0, 1]);
    let factory_secret = [0x42; 32];
    let device_secret = DeviceSecret::from_bytes(factory_secret);
    let backend_copy = DeviceSecret::from_bytes(factory_secret);
    let mut lifecycle: Lifecycle<8> = Lifecycle::new();
    let mut config = ConfigStore::new();
    let (mut payload, mut wire) = ([0u8; 256], [0u8; 320]);

    // Device: hello.
    lifecycle
        .apply(Event::RegistrationInitiated, 0, &mut ())
        .unwrap();
    let hello = RegistrationRequest {
        device,
        firmware_version: 1,
        answer: None,
    };
    let n = encode_into(&hello, &mut payload).unwrap();
    let m = frame(
        device,
        1,
        MessageKind::RegistrationRequest,
        &payload[..n],
        &mut wire,
    );

    // Backend: challenge.
    let req: RegistrationRequest =
        decode(open(&wire[..m], MessageKind::RegistrationRequest)).unwrap();
    assert_eq!(req.answer, None);
    let nonce = [0x99; 16];
    let n = encode_into(&RegistrationResponse::Challenge(nonce), &mut payload).unwrap();
    let m = frame(
        device,
        1,
        MessageKind::RegistrationResponse,
        &payload[..n],
        &mut wire,
    );

    // Device: answer.
    let RegistrationResponse::Challenge(got) =
        decode(open(&wire[..m], MessageKind::RegistrationResponse)).unwrap()
    else {
        panic!("expected a challenge");
    };
    let answer = RegistrationRequest::answering(device, 1, &device_secret, &got).unwrap();
    let n = encode_into(&answer, &mut payload).unwrap();
    let m = frame(
        device,
        2,
        MessageKind::RegistrationRequest,
        &payload[..n],
        &mut wire,
    );

    // Backend: verify with the same code, reject a tampered proof, accept with a config.
    let req: RegistrationRequest =
        decode(open(&wire[..m], MessageKind::RegistrationRequest)).unwrap();
    let ChallengeAnswer {
        nonce: echoed,
        proof,
    } = req.answer.unwrap();
    assert_eq!(echoed, nonce);
    verify_registration(&backend_copy, &req.device, &nonce, &proof).unwrap();
    let mut forged = proof;
    forged[0] ^= 1;
    assert!(verify_registration(&backend_copy, &req.device, &nonce, &forged).is_err());
    let initial = DeviceConfig {
        version: 1,
        telemetry_interval_ms: 60_000,
        ..DeviceConfig::DEFAULT
    };
    let n = encode_into(&RegistrationResponse::Accepted(initial), &mut payload).unwrap();
    let m = frame(
        device,
        2,
        MessageKind::RegistrationResponse,
        &payload[..n],
        &mut wire,
    );

    // Device: apply and become active.
    let RegistrationResponse::Accepted(cfg) =
        decode(open(&wire[..m], MessageKind::RegistrationResponse)).unwrap()
    else {
        panic!("expected acceptance");
    };
    config.apply(cfg).unwrap();
    lifecycle.apply(Event::ConfigComplete, 10, &mut ()).unwrap();
    assert_eq!(
        (lifecycle.state(), config.current().version),
        (State::Active, 1)
    );
}

#[test]
fn backend_validates_reported_transitions_with_the_device_code() {
    let device = DeviceId::new("dev-1").unwrap();
    let mut lifecycle: Lifecycle<8> = Lifecycle::resume(State::Active);
    let mut monitor = HealthMonitor::new(DeviceConfig::DEFAULT.thresholds);
    let report = monitor.check(&HealthSample::new(5_000).with_battery(4, 3_100));
    let event = monitor.lifecycle_event(lifecycle.state(), &report).unwrap();
    lifecycle.apply(event, 5_000, &mut ()).unwrap();

    let (mut payload, mut wire) = ([0u8; 64], [0u8; 128]);
    let n = encode_into(&report, &mut payload).unwrap();
    let m = frame(
        device,
        3,
        MessageKind::HealthReport,
        &payload[..n],
        &mut wire,
    );
    let seen: HealthReport = decode(open(&wire[..m], MessageKind::HealthReport)).unwrap();
    assert_eq!(seen.status, HealthStatus::Critical);

    let record = *lifecycle.last_transition().unwrap();
    let n = encode_into(&record, &mut payload).unwrap();
    let reported: TransitionRecord = decode(&payload[..n]).unwrap();
    assert_eq!(transition(reported.from, reported.event), Ok(reported.to));
    // Forged reports (an event that is no edge from Active, or a wrong target) are caught
    // by the same function.
    let wrong_event = TransitionRecord {
        event: Event::AutoRecovery,
        ..reported
    };
    assert!(transition(wrong_event.from, wrong_event.event).is_err());
    let wrong_target = TransitionRecord {
        to: State::Maintenance,
        ..reported
    };
    assert_ne!(
        transition(wrong_target.from, wrong_target.event),
        Ok(wrong_target.to)
    );
}

struct Board;
impl CommandHandler for Board {
    fn diagnostics(&mut self) -> HandlerResult {
        Ok(Some(heapless::Vec::from_slice(b"all good").unwrap()))
    }
}

#[test]
fn a_retransmitted_command_gets_byte_identical_acks_and_runs_once() {
    let device = DeviceId::new("dev-2").unwrap();
    let mut lifecycle: Lifecycle<8> = Lifecycle::resume(State::Active);
    let mut config = ConfigStore::new();
    let mut processor: CommandProcessor<8> = CommandProcessor::new();
    let cmd = Command::new(77, 1_000, 31_000, CommandKind::EnterMaintenance);
    let (mut payload, mut wire) = ([0u8; 128], [0u8; 192]);
    let n = encode_into(&cmd, &mut payload).unwrap();
    let m = frame(device, 77, MessageKind::Command, &payload[..n], &mut wire);

    let mut acks = Vec::new();
    for now in [2_000, 2_500] {
        let received: Command = decode(open(&wire[..m], MessageKind::Command)).unwrap();
        let mut handler = DeviceCommands {
            lifecycle: &mut lifecycle,
            hooks: &mut (),
            config: &mut config,
            device: &mut Board,
            now_ms: now,
        };
        let ack = processor.process(&received, now, &mut handler);
        let mut out = [0u8; 64];
        let k = encode_into(&ack, &mut out).unwrap();
        acks.push(out[..k].to_vec());
    }
    assert_eq!(acks[0], acks[1]);
    let ack: CommandAck = decode(&acks[0]).unwrap();
    assert_eq!(ack.outcome, AckOutcome::Accepted);
    assert_eq!(lifecycle.state(), State::Maintenance);
    assert_eq!(lifecycle.history().count(), 1, "maintenance entered once");
}

#[test]
fn json_forms_round_trip_for_backends() {
    let cfg = DeviceConfig {
        version: 4,
        ..DeviceConfig::DEFAULT
    };
    let text = serde_json::to_string(&cfg).unwrap();
    assert!(text.contains("\"heartbeat_interval_ms\":10000"), "{text}");
    assert_eq!(serde_json::from_str::<DeviceConfig>(&text).unwrap(), cfg);

    let record = TransitionRecord {
        from: State::Maintenance,
        event: Event::UpdateFailed,
        to: State::Degraded,
        at_ms: 42,
    };
    let text = serde_json::to_string(&record).unwrap();
    assert!(text.contains("\"UpdateFailed\""), "{text}");
    assert_eq!(
        serde_json::from_str::<TransitionRecord>(&text).unwrap(),
        record
    );

    let cmd = Command::new(
        5,
        1,
        2,
        CommandKind::BlinkLed {
            times: 2,
            period_ms: 100,
        },
    );
    let text = serde_json::to_string(&cmd).unwrap();
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
}
