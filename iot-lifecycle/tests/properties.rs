//! Algebraic claims about commands, configuration and health, checked on arbitrary inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::HashMap;

use iot_lifecycle::command::{
    AckOutcome, Command, CommandAck, CommandHandler, CommandKind, CommandProcessor, HandlerResult,
    RejectReason, ResultPayload,
};
use iot_lifecycle::config::{ApplyOutcome, ConfigStore, DeviceConfig};
use iot_lifecycle::health::{HealthMonitor, HealthSample, HealthStatus, HealthThresholds};
use iot_lifecycle::state::{Event, State};
use proptest::prelude::*;

/// Answers depend on the arguments and on how often it ran, so a re-execution would show.
#[derive(Default)]
struct Recorder {
    runs: HashMap<u8, u32>,
    total: u32,
}

impl CommandHandler for Recorder {
    fn read_sensor(&mut self, sensor: u8) -> HandlerResult {
        self.total += 1;
        *self.runs.entry(sensor).or_default() += 1;
        if sensor.is_multiple_of(3) {
            Err(RejectReason::Failed)
        } else {
            Ok(Some(
                ResultPayload::from_slice(&self.total.to_le_bytes()).unwrap(),
            ))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Within the window every command id is executed at most once, never when expired,
    /// and every delivery of an id gets the same ack as the first one.
    #[test]
    fn commands_are_idempotent_by_id_and_expiry_is_enforced(
        deliveries in prop::collection::vec((0u32..16, 0u64..1_000, 0u64..1_000), 1..80),
    ) {
        let mut processor: CommandProcessor<16> = CommandProcessor::new();
        let mut handler = Recorder::default();
        let mut first: HashMap<u32, CommandAck> = HashMap::new();
        let mut executed_ids = Vec::new();
        for (id, now, expires) in deliveries {
            // The same id always carries the same command, as a retransmission would.
            let cmd = Command::new(id, 0, u64::from(id) * 60 + expires % 7, CommandKind::ReadSensor { sensor: id as u8 });
            let before = handler.total;
            let ack = processor.process(&cmd, now, &mut handler);
            prop_assert_eq!(ack.command_id, id);
            match first.get(&id) {
                Some(original) => {
                    prop_assert_eq!(&ack, original);
                    prop_assert_eq!(handler.total, before, "a repeated id ran again");
                }
                None => {
                    if cmd.is_expired(now) {
                        prop_assert_eq!(&ack.outcome, &AckOutcome::Rejected(RejectReason::Expired));
                        prop_assert_eq!(handler.total, before);
                    } else {
                        prop_assert_eq!(handler.total, before + 1);
                        executed_ids.push(id);
                    }
                    first.insert(id, ack);
                }
            }
        }
        for (sensor, runs) in &handler.runs {
            prop_assert_eq!(*runs, 1, "sensor {} ran {} times", sensor, runs);
        }
        prop_assert_eq!(processor.executed() as usize, executed_ids.len());
    }

    /// The configuration in force is always valid, its version never decreases, and an
    /// offer is applied exactly when it is valid and strictly newer.
    #[test]
    fn configuration_versions_only_move_forward_through_valid_configs(
        offers in prop::collection::vec((0u32..40, 0u32..4, 0u8..5), 1..60),
    ) {
        let mut store = ConfigStore::new();
        for (version, heartbeat_s, factor) in offers {
            let offer = DeviceConfig {
                version,
                heartbeat_interval_ms: heartbeat_s * 1_000,
                degraded_telemetry_factor: factor,
                ..DeviceConfig::DEFAULT
            };
            let before = *store.current();
            let result = store.apply(offer);
            let after = *store.current();
            prop_assert!(after.validate().is_ok());
            prop_assert!(after.version >= before.version);
            let should_apply = version > before.version && offer.validate().is_ok();
            match result {
                Ok(ApplyOutcome::Applied { previous_version }) => {
                    prop_assert!(should_apply);
                    prop_assert_eq!(previous_version, before.version);
                    prop_assert_eq!(after, offer);
                }
                Ok(ApplyOutcome::AlreadyCurrent) => {
                    prop_assert_eq!(offer, before);
                    prop_assert_eq!(after, before);
                }
                Err(_) => {
                    prop_assert!(!should_apply);
                    prop_assert_eq!(after, before);
                }
            }
        }
    }

    /// A lower battery never yields a better verdict (monotone in each input).
    #[test]
    fn lower_battery_and_weaker_signal_never_improve_health(
        p1 in 0u8..=100, p2 in 0u8..=100, r1 in -120i16..-20, r2 in -120i16..-20,
    ) {
        let (lo_p, hi_p) = (p1.min(p2), p1.max(p2));
        let (lo_r, hi_r) = (r1.min(r2), r1.max(r2));
        let status = |p: u8, r: i16| {
            HealthMonitor::new(HealthThresholds::DEFAULT)
                .check(&HealthSample::new(0).with_battery(p, 3_900).with_link(r, 0))
                .status
        };
        prop_assert!(status(lo_p, hi_r) >= status(hi_p, hi_r));
        prop_assert!(status(hi_p, lo_r) >= status(hi_p, hi_r));
    }

    /// AutoRecovery is proposed exactly when the last K checks were all healthy.
    #[test]
    fn recovery_needs_k_consecutive_healthy_checks(
        k in 1u16..5,
        batteries in prop::collection::vec(prop::sample::select(vec![5u8, 15, 90]), 1..30),
    ) {
        let mut monitor = HealthMonitor::new(HealthThresholds { recovery_checks: k, ..HealthThresholds::DEFAULT });
        let mut history = Vec::new();
        for p in batteries {
            let report = monitor.check(&HealthSample::new(0).with_battery(p, 3_900));
            history.push(report.status);
            let streak = history.iter().rev().take_while(|s| **s == HealthStatus::Healthy).count();
            let expected = (streak >= usize::from(k)).then_some(Event::AutoRecovery);
            prop_assert_eq!(monitor.lifecycle_event(State::Degraded, &report), expected);
            let failed = (report.status == HealthStatus::Critical).then_some(Event::HealthCheckFailed);
            prop_assert_eq!(monitor.lifecycle_event(State::Active, &report), failed);
        }
    }
}
