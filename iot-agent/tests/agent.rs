//! The device agent's timeline over simulated hours and days, against a simulated backend.
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

use agent_support::*;
use iot_agent::{AgentError, LabAgent};
use iot_agent::{AgentState, Heartbeat, RegistrationPhase, SILENT_TELEMETRY_PERIODS, SensorSample};
use iot_core::MessageKind;
use iot_core::telemetry::{Measurement, Telemetry};
use iot_lifecycle::State;
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind, RejectReason};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::health::{HealthReport, HealthStatus};
use iot_lifecycle::registration::{AuditRecord, DecommissionReason, RegistrationRejection};
use iot_lifecycle::schedule::Mode;
use iot_shadow::Value;
use iot_transport::retry::{BackoffPolicy, Jitter};

fn telemetry(payload: &[u8]) -> Telemetry<3> {
    iot_core::codec::decode(payload).unwrap()
}

fn command(id: u32, kind: CommandKind) -> Vec<u8> {
    encode(&Command::new(id, 0, Command::NEVER_EXPIRES, kind))
}

fn acks(sim: &Sim) -> Vec<CommandAck> {
    sim.out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::CommandAck)
        .map(|m| iot_core::codec::decode(&m.payload).unwrap())
        .collect()
}

fn shadow_sync_times(sim: &Sim) -> Vec<u64> {
    let mut t: Vec<u64> = sim
        .out
        .sent
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::ShadowUpdate | MessageKind::ShadowGet))
        .map(|m| m.at)
        .collect();
    t.dedup();
    t
}

#[test]
fn a_day_of_device_time_keeps_the_lab_cadence_of_every_message_kind() {
    let started = std::time::Instant::now();
    let mut sim = Sim::registered();
    sim.run_until(DAY_MS);

    // Registration: request, answer to the challenge, at time 0.
    assert_eq!(sim.times(MessageKind::RegistrationRequest), [0, 0]);
    assert_eq!(sim.agent.registration(), RegistrationPhase::Registered);
    assert_eq!(sim.agent.config().current().version, 1);

    for (kind, period) in [
        (MessageKind::HealthReport, 5_000),
        (MessageKind::Heartbeat, 10_000),
        (MessageKind::Telemetry, 30_000),
    ] {
        let times = sim.times(kind);
        assert_eq!(times.len() as u64, DAY_MS / period + 1, "{kind:?}");
        assert_eq!(times[0], 0);
        assert!(all_spaced(&times, period), "{kind:?}");
    }
    // Shadow: the boot report at once, then one sync every 15 s (a poll for changes when
    // nothing is pending).
    let syncs = shadow_sync_times(&sim);
    assert_eq!(syncs.len() as u64, DAY_MS / 15_000 + 1);
    assert!(all_spaced(&syncs, 15_000));
    assert_eq!(sim.times(MessageKind::ShadowUpdate), [0]);
    assert!(sim.backend.cloud.delta_is_empty());
    assert_eq!(sim.backend.reported("lifecycle"), Some(Value::Int(2)));
    assert_eq!(sim.backend.reported("config.version"), Some(Value::Int(1)));

    // Heartbeats count up and carry the state; every telemetry message carries
    // temperature and humidity (they move by 1 between runs, beyond the 0.5 deadband).
    let beats: Vec<Heartbeat> = sim
        .out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Heartbeat)
        .map(|m| iot_core::codec::decode(&m.payload).unwrap())
        .collect();
    assert!(
        beats
            .iter()
            .enumerate()
            .all(|(i, b)| b.seq == i as u32 && b.state == State::Active)
    );
    assert_eq!(beats.last().unwrap().uptime_ms, DAY_MS);
    let batches: Vec<Telemetry<3>> = sim
        .out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Telemetry)
        .map(|m| telemetry(&m.payload))
        .collect();
    assert!(batches.iter().all(|t| t.len() >= 2));
    // The battery stays at 80 %: sent first, then on the filter's heartbeat every 2 min.
    let battery = batches
        .iter()
        .filter(|t| {
            t.readings
                .iter()
                .any(|r| matches!(r.measurement, Measurement::BatteryPercent { .. }))
        })
        .count() as u64;
    assert_eq!(battery, DAY_MS / 120_000 + 1);
    let reports: Vec<HealthReport> = sim
        .out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::HealthReport)
        .map(|m| iot_core::codec::decode(&m.payload).unwrap())
        .collect();
    assert!(reports.iter().all(|r| r.status == HealthStatus::Healthy));

    // Nothing else was sent (two registration requests, one lifecycle report of
    // Provisioning -> Active), and the agent only woke at deadlines (one per distinct time).
    assert_eq!(sim.times(MessageKind::LifecycleReport).len(), 1);
    let total = sim.out.sent.len() as u64;
    assert_eq!(total, 2 + 1 + 17_281 + 8_641 + 2_881 + 5_761);
    assert_eq!(sim.wakeups, DAY_MS / 5_000);
    assert_eq!(sim.agent.stats().send_errors, 0);
    let elapsed = started.elapsed();
    assert!(elapsed.as_secs() < 10, "a simulated day took {elapsed:?}");
}

#[test]
fn report_on_change_sends_a_steady_sensor_every_fourth_period_only() {
    let mut sim = Sim::new(
        Box::new(|at| SensorSample {
            // Moves by 0.1 degC per 30 s: within the deadband until it adds up past 0.5.
            temperature_c: Some(20.0 + (at / 30_000) as f32 * 0.1),
            humidity_percent: Some(40.0),
            battery_percent: Some(80),
            ..varying(at)
        }),
        Backend::default(),
    );
    sim.start();
    sim.run_until(3_600_000);
    let msgs: Vec<(u64, Telemetry<3>)> = sim
        .out
        .sent
        .iter()
        .filter(|m| m.kind == MessageKind::Telemetry)
        .map(|m| (m.at, telemetry(&m.payload)))
        .collect();
    // Humidity and battery never change: they go out first at 0, then on the 2-minute
    // heartbeat of the filter (4 periods of 30 s).
    let silence = SILENT_TELEMETRY_PERIODS * 30_000;
    let humidity: Vec<u64> = msgs
        .iter()
        .filter(|(_, t)| {
            t.readings
                .iter()
                .any(|r| matches!(r.measurement, Measurement::Humidity { .. }))
        })
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(humidity.len() as u64, 3_600_000 / silence + 1);
    assert!(all_spaced(&humidity, silence));
    // Temperature drifts 0.1 per period: reported when the drift exceeds 0.5 (every 6th
    // period) or on the heartbeat (every 4th), whichever comes first, so never more than 4
    // periods apart and always fewer messages than periods.
    let temperature: Vec<u64> = msgs
        .iter()
        .filter(|(_, t)| {
            t.readings
                .iter()
                .any(|r| matches!(r.measurement, Measurement::Temperature { .. }))
        })
        .map(|(at, _)| *at)
        .collect();
    assert!(
        gaps(&temperature)
            .iter()
            .all(|&g| g <= silence && g % 30_000 == 0)
    );
    assert!(msgs.len() < 121, "{} telemetry messages", msgs.len());
    // Suppressed runs send nothing at all.
    assert!(sim.agent.stats().readings_suppressed > 0);
    assert!(msgs.iter().all(|(_, t)| !t.is_empty()));
}

fn battery_profile(critical_from: u64, healthy_from: u64) -> SensorFn {
    Box::new(move |at| SensorSample {
        battery_percent: Some(if (critical_from..healthy_from).contains(&at) {
            5
        } else {
            80
        }),
        ..varying(at)
    })
}

#[test]
fn critical_battery_degrades_to_threefold_slower_telemetry_and_recovery_restores_it() {
    let mut sim = Sim::new(battery_profile(600_000, 1_800_000), Backend::default());
    sim.start();
    sim.run_until(3_600_000);

    let transitions: Vec<(State, State, u64)> = sim
        .agent
        .lifecycle()
        .history()
        .map(|r| (r.from, r.to, r.at_ms))
        .collect();
    // Critical at the 600 s check; healthy again from 1800 s, recovered after 3 healthy
    // checks in a row (1800, 1805, 1810 s).
    assert_eq!(
        transitions[2..],
        [
            (State::Active, State::Degraded, 600_000),
            (State::Degraded, State::Active, 1_810_000),
        ]
    );
    let tele = sim.times(MessageKind::Telemetry);
    let before: Vec<u64> = tele.iter().copied().filter(|&t| t < 600_000).collect();
    let degraded: Vec<u64> = tele
        .iter()
        .copied()
        .filter(|&t| (600_000..1_810_000).contains(&t))
        .collect();
    let after: Vec<u64> = tele.iter().copied().filter(|&t| t >= 1_810_000).collect();
    assert!(all_spaced(&before, 30_000));
    // The last normal run was at 570 s; degraded runs follow it 90 s apart.
    assert_eq!(*before.last().unwrap(), 570_000);
    assert_eq!(degraded[0], 660_000);
    assert!(all_spaced(&degraded, 90_000), "{degraded:?}");
    assert_eq!(degraded.len(), 13);
    // Back to normal at the recovery check, then every 30 s.
    assert_eq!(after[0], 1_810_000);
    assert!(all_spaced(&after, 30_000));
    // Heartbeats and health checks never changed pace.
    assert!(all_spaced(&sim.times(MessageKind::Heartbeat), 10_000));
    assert!(all_spaced(&sim.times(MessageKind::HealthReport), 5_000));
    // Both state changes reached the shadow at once (a sync at the change itself).
    let syncs = shadow_sync_times(&sim);
    assert!(syncs.contains(&600_000) && syncs.contains(&1_810_000));
    assert_eq!(sim.backend.reported("lifecycle"), Some(Value::Int(2)));
    let degraded_beat: Heartbeat = sim
        .out
        .sent
        .iter()
        .find(|m| m.kind == MessageKind::Heartbeat && m.at == 1_000_000)
        .map(|m| iot_core::codec::decode(&m.payload).unwrap())
        .unwrap();
    assert_eq!(
        (degraded_beat.state, degraded_beat.health),
        (State::Degraded, HealthStatus::Critical)
    );
}

#[test]
fn maintenance_by_command_pauses_telemetry_with_exactly_one_ack_each() {
    let mut sim = Sim::registered();
    sim.run_until(100_000);
    sim.inject(
        MessageKind::Command,
        &command(1, CommandKind::EnterMaintenance),
    )
    .unwrap();
    assert_eq!(sim.agent.state(), State::Maintenance);
    assert_eq!(sim.agent.mode(), Mode::Maintenance);
    sim.run_until(110_000);
    // A redelivery is neither executed nor acked again.
    sim.inject(
        MessageKind::Command,
        &command(1, CommandKind::EnterMaintenance),
    )
    .unwrap();
    sim.run_until(400_000);
    sim.inject(
        MessageKind::Command,
        &command(2, CommandKind::ExitMaintenance),
    )
    .unwrap();
    sim.inject(
        MessageKind::Command,
        &command(2, CommandKind::ExitMaintenance),
    )
    .unwrap();
    // Leaving twice is refused once, with its own single ack.
    sim.inject(
        MessageKind::Command,
        &command(3, CommandKind::ExitMaintenance),
    )
    .unwrap();
    sim.run_until(600_000);

    let acks = acks(&sim);
    assert_eq!(
        acks,
        [
            CommandAck {
                command_id: 1,
                outcome: AckOutcome::Accepted
            },
            CommandAck {
                command_id: 2,
                outcome: AckOutcome::Accepted
            },
            CommandAck {
                command_id: 3,
                outcome: AckOutcome::Rejected(RejectReason::InvalidState)
            },
        ]
    );
    assert_eq!(sim.board.maintenance_calls, 2);
    assert_eq!(sim.agent.state(), State::Active);
    let tele = sim.times(MessageKind::Telemetry);
    // Last run before at 90 s; none while in maintenance; resumed at once on leaving (the
    // period since the last run has long passed), then every 30 s.
    assert!(tele.iter().all(|&t| !(100_000..400_000).contains(&t)));
    assert_eq!(
        sim.times_between(MessageKind::Telemetry, 400_000, 600_000)[..3],
        [400_000, 430_000, 460_000]
    );
    assert!(all_spaced(&sim.times(MessageKind::Heartbeat), 10_000));
    assert!(all_spaced(&sim.times(MessageKind::HealthReport), 5_000));
    let states: Vec<State> = sim.agent.lifecycle().history().map(|r| r.to).collect();
    assert_eq!(
        states,
        [
            State::Provisioning,
            State::Active,
            State::Maintenance,
            State::Active
        ]
    );
}

#[test]
fn board_commands_are_acked_once_and_garbage_gets_no_ack() {
    let mut sim = Sim::registered();
    sim.inject(
        MessageKind::Command,
        &command(
            9,
            CommandKind::BlinkLed {
                times: 3,
                period_ms: 100,
            },
        ),
    )
    .unwrap();
    sim.inject(
        MessageKind::Command,
        &command(
            9,
            CommandKind::BlinkLed {
                times: 3,
                period_ms: 100,
            },
        ),
    )
    .unwrap();
    assert_eq!(sim.board.blinks, 3);
    assert!(matches!(
        sim.inject(MessageKind::Command, &[0xff, 0x00]),
        Err(AgentError::Protocol(_))
    ));
    // Unsupported by this board: rejected, once.
    sim.inject(MessageKind::Command, &command(10, CommandKind::Reboot))
        .unwrap();
    assert_eq!(
        acks(&sim),
        [
            CommandAck {
                command_id: 9,
                outcome: AckOutcome::Accepted
            },
            CommandAck {
                command_id: 10,
                outcome: AckOutcome::Rejected(RejectReason::Unsupported)
            },
        ]
    );
}

#[test]
fn registration_retries_on_backoff_while_the_backend_is_silent_then_succeeds() {
    let backend = Backend {
        silent_requests: 3,
        ..Backend::default()
    };
    let mut sim = Sim::new(Box::new(varying), backend);
    sim.agent = new_agent()
        .with_registration_backoff(BackoffPolicy::new(2_000, 60_000).with_jitter(Jitter::Equal));
    sim.start();
    sim.run_until(60_000);
    let requests = sim.times(MessageKind::RegistrationRequest);
    // Three unanswered requests, a fourth that gets the challenge, and the answer.
    assert_eq!(requests.len(), 5, "{requests:?}");
    let waits = gaps(&requests[..4]);
    for (wait, base) in waits.iter().zip([2_000, 4_000, 8_000]) {
        assert!(
            (base / 2..=base).contains(wait),
            "waited {wait} for base {base}"
        );
    }
    assert_eq!(requests[3], requests[4]);
    assert_eq!(sim.agent.state(), State::Active);
    // Nothing periodic ran before registration; everything from then on.
    assert_eq!(sim.times(MessageKind::Heartbeat)[0], requests[4]);
    assert!(
        sim.times(MessageKind::Telemetry)
            .iter()
            .all(|&t| t >= requests[4])
    );
}

#[test]
fn a_rejected_registration_leaves_the_device_unprovisioned_and_silent() {
    let backend = Backend {
        reject: Some(RegistrationRejection::UnknownDevice),
        ..Backend::default()
    };
    let mut sim = Sim::new(Box::new(varying), backend);
    sim.start();
    sim.run_until(3_600_000);
    assert_eq!(sim.agent.state(), State::Unprovisioned);
    assert_eq!(
        sim.agent.registration(),
        RegistrationPhase::Rejected(RegistrationRejection::UnknownDevice)
    );
    assert_eq!(sim.out.sent.len(), 1);
    assert_eq!(sim.agent.next_deadline(), None);
    // Commands are refused before provisioning.
    assert_eq!(
        sim.inject(MessageKind::Command, &command(1, CommandKind::Diagnostics)),
        Err(AgentError::Unexpected(State::Unprovisioned))
    );
}

#[test]
fn registration_gives_up_after_its_attempts_and_can_be_restarted() {
    let backend = Backend {
        silent_requests: 100,
        ..Backend::default()
    };
    let mut sim = Sim::new(Box::new(varying), backend);
    sim.agent = new_agent().with_registration_backoff(
        BackoffPolicy::new(1_000, 4_000)
            .with_jitter(Jitter::None)
            .with_max_attempts(3),
    );
    sim.start();
    sim.run_until(600_000);
    assert_eq!(
        sim.times(MessageKind::RegistrationRequest),
        [0, 1_000, 3_000]
    );
    assert_eq!(sim.agent.registration(), RegistrationPhase::GaveUp);
    assert_eq!(sim.agent.state(), State::Unprovisioned);
    sim.backend.silent_requests = 0;
    sim.start();
    sim.settle();
    assert_eq!(sim.agent.state(), State::Active);
}

#[test]
fn a_desired_interval_converges_and_changes_the_telemetry_cadence() {
    let mut sim = Sim::registered();
    sim.run_until(300_000);
    let delta = sim
        .backend
        .set_desired("config.telemetry_interval_ms", Value::Int(60_000), sim.now)
        .unwrap();
    sim.inject(MessageKind::ShadowDelta, &delta).unwrap();
    // Applied, reported at once, acknowledged: the delta is empty on both sides.
    assert_eq!(sim.agent.shadow().state().telemetry_interval_ms, 60_000);
    assert_eq!(sim.agent.config_in_force().telemetry_interval_ms, 60_000);
    assert!(sim.times(MessageKind::ShadowUpdate).contains(&300_000));
    assert!(sim.backend.cloud.delta_is_empty());
    assert!(!sim.agent.shadow().has_pending());
    assert_eq!(
        sim.backend.reported("config.telemetry_interval_ms"),
        Some(Value::Int(60_000))
    );
    sim.run_until(900_000);
    let after = sim.times_between(MessageKind::Telemetry, 300_001, 900_000);
    // The last run was at 300 s: the next one 60 s later, then every 60 s.
    assert_eq!(after[0], 360_000);
    assert!(all_spaced(&after, 60_000), "{after:?}");

    // The LED follows the desired state too.
    let delta = sim
        .backend
        .set_desired("led", Value::Bool(true), sim.now)
        .unwrap();
    sim.inject(MessageKind::ShadowDelta, &delta).unwrap();
    assert!(sim.board.led);
    assert!(sim.backend.cloud.delta_is_empty());

    // An interval the configuration rules refuse is overwritten by the device.
    let delta = sim
        .backend
        .set_desired("config.telemetry_interval_ms", Value::Int(0), sim.now)
        .unwrap();
    sim.inject(MessageKind::ShadowDelta, &delta).unwrap();
    assert_eq!(sim.agent.config_in_force().telemetry_interval_ms, 60_000);
    assert_eq!(sim.agent.shadow().state().telemetry_interval_ms, 60_000);
    sim.run_until(960_000);
    assert!(sim.backend.cloud.delta_is_empty());
    assert_eq!(
        sim.backend.reported("config.telemetry_interval_ms"),
        Some(Value::Int(60_000))
    );
    assert_eq!(sim.agent.stats().desired_refused, 1);
}

#[test]
fn a_local_led_change_is_synced_at_once() {
    let mut sim = Sim::registered();
    sim.run_until(20_000);
    sim.agent.set_led(true, sim.now, &mut sim.board).unwrap();
    sim.settle();
    assert!(sim.board.led);
    assert_eq!(sim.times(MessageKind::ShadowUpdate), [0, 20_000]);
    assert_eq!(sim.backend.reported("led"), Some(Value::Bool(true)));
}

#[test]
fn a_missed_delta_is_recovered_by_the_next_sync() {
    let mut sim = Sim::registered();
    sim.run_until(50_000);
    // The operator's change is made but its notification is lost.
    let _lost =
        sim.backend
            .set_desired("config.telemetry_interval_ms", Value::Int(120_000), sim.now);
    sim.run_until(60_000);
    // The next sync (at 60 s) asks with its version, gets the document and converges.
    assert_eq!(sim.agent.config_in_force().telemetry_interval_ms, 120_000);
    assert!(sim.backend.cloud.delta_is_empty());
}

#[test]
fn a_configuration_update_changes_the_cadence_and_is_reported() {
    let mut sim = Sim::registered();
    sim.run_until(100_000);
    let v2 = DeviceConfig {
        version: 2,
        heartbeat_interval_ms: 20_000,
        ..DeviceConfig::DEFAULT
    };
    sim.inject(MessageKind::ConfigUpdate, &encode(&v2)).unwrap();
    // Stale and invalid updates are refused and change nothing.
    assert!(matches!(
        sim.inject(
            MessageKind::ConfigUpdate,
            &encode(&DeviceConfig { version: 1, ..v2 })
        ),
        Err(AgentError::Config(_))
    ));
    assert!(matches!(
        sim.inject(
            MessageKind::ConfigUpdate,
            &encode(&DeviceConfig {
                version: 3,
                health_interval_ms: 0,
                ..v2
            })
        ),
        Err(AgentError::Config(_))
    ));
    sim.run_until(300_000);
    let beats = sim.times_between(MessageKind::Heartbeat, 100_001, 300_000);
    assert_eq!(beats[0], 120_000);
    assert!(all_spaced(&beats, 20_000));
    assert_eq!(sim.backend.reported("config.version"), Some(Value::Int(2)));
    assert_eq!(sim.agent.config().current(), &v2);
}

#[test]
fn decommissioning_wipes_and_stops_all_traffic() {
    let mut sim = Sim::registered();
    sim.run_until(1_000_000);
    let before = sim.out.sent.len();
    sim.inject(
        MessageKind::Decommission,
        &encode(&DecommissionReason::EndOfLife),
    )
    .unwrap();
    assert_eq!(sim.agent.state(), State::Decommissioned);
    assert!(sim.board.wiped && sim.agent.is_wiped());
    let last = sim.out.sent.last().unwrap();
    assert_eq!(last.kind, MessageKind::Decommission);
    let audit: AuditRecord = iot_core::codec::decode(&last.payload).unwrap();
    assert_eq!(
        (audit.from, audit.at_ms, audit.device),
        (State::Active, 1_000_000, device())
    );
    assert_eq!(sim.out.sent.len(), before + 1);
    assert_eq!(sim.agent.next_deadline(), None);
    sim.run_until(DAY_MS);
    assert!(
        sim.inject(MessageKind::Command, &command(5, CommandKind::Diagnostics))
            .is_err()
    );
    assert!(
        sim.inject(
            MessageKind::Decommission,
            &encode(&DecommissionReason::EndOfLife)
        )
        .is_err()
    );
    assert_eq!(sim.out.sent.len(), before + 1);
    assert_eq!(sim.agent.poll(DAY_MS, &mut sim.board, &mut sim.out), None);
}

#[test]
fn decommissioning_is_refused_in_maintenance_and_nothing_is_wiped() {
    let mut sim = Sim::registered();
    sim.inject(
        MessageKind::Command,
        &command(1, CommandKind::EnterMaintenance),
    )
    .unwrap();
    assert_eq!(
        sim.inject(
            MessageKind::Decommission,
            &encode(&DecommissionReason::EndOfLife)
        ),
        Err(AgentError::DecommissionRefused(State::Maintenance))
    );
    assert!(!sim.board.wiped && !sim.agent.is_wiped());
    assert_eq!(sim.agent.state(), State::Maintenance);
}

#[test]
fn a_refusing_outbox_is_counted_and_feeds_health() {
    let mut sim = Sim::registered();
    sim.out.refuse = true;
    sim.run_until(120_000);
    let stats = sim.agent.stats();
    assert!(stats.send_errors > 10);
    // Ten failures in a row are critical: the device degrades instead of looping.
    assert_eq!(sim.agent.state(), State::Degraded);
    let _ = AgentState::LED;
}

#[test]
fn the_lab_agent_fits_in_a_few_kilobytes_of_static_memory() {
    // 4,120 bytes on riscv32imc (measured); 64-bit hosts add pointer width.
    let size = std::mem::size_of::<iot_agent::LabAgent>();
    assert!(size <= 6 * 1024, "LabAgent is {size} bytes");
}

#[test]
fn restored_acks_keep_commands_idempotent_across_a_reboot() {
    let mut before = Sim::registered();
    before
        .inject(
            MessageKind::Command,
            &command(
                7,
                CommandKind::BlinkLed {
                    times: 1,
                    period_ms: 50,
                },
            ),
        )
        .unwrap();
    let persisted: Vec<CommandAck> = before.agent.commands().acks().cloned().collect();
    // After the reboot the device registers again (the backend accepts a re-registration)
    // and gets its acks back from flash.
    let mut after = Sim::registered();
    after.agent.restore_acks(persisted);
    after
        .inject(
            MessageKind::Command,
            &command(
                7,
                CommandKind::BlinkLed {
                    times: 1,
                    period_ms: 50,
                },
            ),
        )
        .unwrap();
    assert_eq!(after.board.blinks, 0);
    assert!(acks(&after).is_empty());
}

#[test]
fn a_stale_initial_configuration_keeps_the_newer_one_in_force() {
    let mut sim = Sim::new(Box::new(varying), Backend::default());
    let v5 = DeviceConfig {
        version: 5,
        heartbeat_interval_ms: 20_000,
        ..DeviceConfig::DEFAULT
    };
    sim.agent = LabAgent::new(
        device(),
        7,
        iot_lifecycle::registration::DeviceSecret::from_bytes(SECRET),
        v5,
    )
    .unwrap();
    sim.start();
    sim.run_until(60_000);
    assert_eq!(sim.agent.state(), State::Active);
    assert_eq!(sim.agent.config().current(), &v5);
    assert_eq!(sim.agent.stats().configs_refused, 1);
    assert!(all_spaced(&sim.times(MessageKind::Heartbeat), 20_000));
}
