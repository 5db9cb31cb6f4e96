//! Whatever arrives, in any order, duplicated or garbled, the agent never panics, acks each
//! command id at most once, never schedules into the past and falls silent once
//! decommissioned.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod agent_support;

use std::collections::HashMap;

use agent_support::*;
use iot_core::MessageKind;
use iot_lifecycle::State;
use iot_lifecycle::command::{Command, CommandAck, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{
    DecommissionReason, RegistrationRejection, RegistrationResponse,
};
use iot_shadow::Value;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Garbage(usize, Vec<u8>),
    Command(u32, u8),
    Config(u32, u32),
    Desired(u32),
    Led(bool),
    Registration(u8),
    Decommission,
    RepeatLast,
    Document,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..120_000).prop_map(Op::Advance),
        2 => (0usize..18, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(k, b)| Op::Garbage(k, b)),
        3 => (0u32..6, 0u8..6).prop_map(|(id, k)| Op::Command(id, k)),
        1 => (0u32..5, 0u32..200_000).prop_map(|(v, t)| Op::Config(v, t)),
        2 => (0u32..200_000).prop_map(Op::Desired),
        1 => any::<bool>().prop_map(Op::Led),
        1 => (0u8..4).prop_map(Op::Registration),
        1 => Just(Op::Decommission),
        2 => Just(Op::RepeatLast),
        1 => Just(Op::Document),
    ]
}

fn command_kind(k: u8) -> CommandKind {
    match k {
        0 => CommandKind::EnterMaintenance,
        1 => CommandKind::ExitMaintenance,
        2 => CommandKind::BlinkLed {
            times: 2,
            period_ms: 10,
        },
        3 => CommandKind::Reboot,
        4 => CommandKind::SetConfig(DeviceConfig {
            version: 3,
            telemetry_interval_ms: 45_000,
            ..DeviceConfig::DEFAULT
        }),
        _ => CommandKind::Diagnostics,
    }
}

fn run(silent: u32, ops: &[Op]) {
    let backend = Backend {
        silent_requests: silent,
        ..Backend::default()
    };
    let mut sim = Sim::new(Box::new(varying), backend);
    sim.start();
    sim.settle();
    let mut last: Option<(MessageKind, Vec<u8>)> = None;
    let mut silent_from: Option<usize> = None;
    for op in ops {
        let inbound: Option<(MessageKind, Vec<u8>)> = match op {
            Op::Advance(ms) => {
                let end = sim.now + ms;
                sim.run_until(end);
                None
            }
            Op::Garbage(k, bytes) => Some((MessageKind::ALL[*k], bytes.clone())),
            Op::Command(id, k) => Some((
                MessageKind::Command,
                encode(&Command::new(
                    *id,
                    0,
                    Command::NEVER_EXPIRES,
                    command_kind(*k),
                )),
            )),
            Op::Config(v, t) => Some((
                MessageKind::ConfigUpdate,
                encode(&DeviceConfig {
                    version: *v,
                    telemetry_interval_ms: *t,
                    ..DeviceConfig::DEFAULT
                }),
            )),
            Op::Desired(t) => sim
                .backend
                .set_desired(
                    "config.telemetry_interval_ms",
                    Value::Int((*t).into()),
                    sim.now,
                )
                .map(|d| (MessageKind::ShadowDelta, d)),
            Op::Led(on) => {
                let _ = sim.agent.set_led(*on, sim.now, &mut sim.board);
                sim.settle();
                None
            }
            Op::Registration(r) => {
                let response = match r {
                    0 => RegistrationResponse::Challenge([3; 16]),
                    1 => RegistrationResponse::Accepted(DeviceConfig::DEFAULT),
                    _ => RegistrationResponse::Rejected(RegistrationRejection::StaleNonce),
                };
                Some((MessageKind::RegistrationResponse, encode(&response)))
            }
            Op::Decommission => Some((
                MessageKind::Decommission,
                encode(&DecommissionReason::OperatorRequest),
            )),
            Op::RepeatLast => last.clone(),
            Op::Document => Some((MessageKind::ShadowDocument, sim.backend.document())),
        };
        if let Some((kind, payload)) = inbound {
            let _ = sim.inject(kind, &payload);
            last = Some((kind, payload));
        }
        if let Some(t) = sim.agent.next_deadline() {
            assert!(t >= sim.now, "deadline {t} before now {}", sim.now);
        }
        if sim.agent.state() == State::Decommissioned && silent_from.is_none() {
            silent_from = Some(sim.out.sent.len());
        }
    }
    // At most one ack per command id.
    let mut acks: HashMap<u32, usize> = HashMap::new();
    for m in sim
        .out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::CommandAck)
    {
        let ack: CommandAck = iot_core::codec::decode(&m.payload).unwrap();
        *acks.entry(ack.command_id).or_default() += 1;
    }
    assert!(acks.values().all(|&n| n == 1), "{acks:?}");
    // Decommissioned: nothing after the audit record.
    if let Some(n) = silent_from {
        assert_eq!(sim.out.sent.len(), n);
        assert_eq!(sim.out.sent[n - 1].kind, MessageKind::Decommission);
        assert_eq!(sim.agent.next_deadline(), None);
    }
    // Every message the agent sent is a kind it is documented to send.
    assert!(sim.out.sent.iter().all(|m| matches!(
        m.kind,
        MessageKind::RegistrationRequest
            | MessageKind::HealthReport
            | MessageKind::Heartbeat
            | MessageKind::Telemetry
            | MessageKind::ShadowUpdate
            | MessageKind::ShadowGet
            | MessageKind::CommandAck
            | MessageKind::LifecycleReport
            | MessageKind::Decommission
    )));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_inbound_sequence_keeps_acks_unique_deadlines_ahead_and_decommission_silent(
        silent in 0u32..3,
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        run(silent, &ops);
    }
}
