//! The device lab on the host: one device running the real agent (`LabAgent`, driven by
//! its `Runner` over an `iot_transport` `ReliableEndpoint`) and one backend (an
//! `iot_fleet::DeviceServer` over a `Fleet`, behind its own `ReliableEndpoint`) over a
//! simulated link that loses 5 % of its datagrams, in simulated time.
//!
//! Phases: registration (request, challenge, HMAC proof, acceptance), operation (the
//! cadence of heartbeats, telemetry, health checks and shadow syncs), dynamic events (a
//! desired shadow change converging, a command and its ack, a draining battery degrading
//! the device, recovery, maintenance by command, a configuration update), the state
//! transitions as the backend validated them from the device's own reports, and
//! decommissioning.

use std::collections::{BTreeMap, BTreeSet};

use embassy_futures::block_on;
use iot_agent::runner::{EndpointOutbound, Runner};
use iot_agent::{Board, LabAgent, SensorSample};
use iot_core::{DeviceId, ManualClock, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_examples::backend::serve;
use iot_examples::{Outcome, check, clock, section};
use iot_fleet::{
    AssignmentRule, AuditAction, DeviceServer, Fleet, FleetError, ManufacturingRecord, Matcher,
    Principal, Reply, Role, Scope,
};
use iot_lifecycle::command::{
    AckOutcome, Command, CommandAck, CommandHandler, CommandKind, HandlerResult, ResultPayload,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{
    AuditRecord, DecommissionReason, DeviceSecret, RegistrationResponse,
};
use iot_lifecycle::{Event, State};
use iot_protocol::{Downlink, Uplink};
use iot_shadow::Value;
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const STEP: u64 = 100;
const SECRET: [u8; 32] = [0x5a; 32];

/// The lab board: a thermometer, a hygrometer, a battery the script sets, an LED.
struct LabBoard {
    battery: u8,
    led_blinks: u32,
    maintenance: bool,
    wiped: bool,
}

impl CommandHandler for LabBoard {
    fn diagnostics(&mut self) -> HandlerResult {
        Ok(ResultPayload::from_slice(b"ok").ok())
    }
    fn blink_led(&mut self, times: u8, _period_ms: u16) -> HandlerResult {
        self.led_blinks += u32::from(times);
        Ok(None)
    }
    fn enter_maintenance(&mut self) -> HandlerResult {
        self.maintenance = true;
        Ok(None)
    }
    fn exit_maintenance(&mut self) -> HandlerResult {
        self.maintenance = false;
        Ok(None)
    }
}

impl Board for LabBoard {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        // A temperature that moves 1 °C per period: every telemetry run has news.
        let step = (now_ms / 30_000 % 6) as f32;
        SensorSample {
            temperature_c: Some(21.0 + step),
            humidity_percent: Some(45.0 + (now_ms / 7_000 % 3) as f32 * 0.1),
            battery_percent: Some(self.battery),
            rssi_dbm: Some(-62),
            free_memory_bytes: Some(180 * 1024),
            ..SensorSample::default()
        }
    }
    fn wipe_user_data(&mut self) -> bool {
        self.wiped = true;
        true
    }
}

/// What the backend saw from the device, by kind: arrival times.
#[derive(Default)]
struct Seen(BTreeMap<MessageKind, Vec<u64>>);

impl Seen {
    fn times(&self, kind: MessageKind, from: u64, to: u64) -> Vec<u64> {
        self.0
            .get(&kind)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|t| (from..to).contains(t))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn mean_gap(&self, kind: MessageKind, from: u64, to: u64) -> Option<f64> {
        let t = self.times(kind, from, to);
        let (first, last) = (t.first()?, t.last()?);
        (t.len() > 1).then(|| (last - first) as f64 / (t.len() - 1) as f64 / 1e3)
    }
}

type End<'a> = ReliableEndpoint<SimLink<'a, &'a ManualClock, 32, 512>, SplitMix64, 16, 512, 32>;

/// A lifecycle transition as the backend applied it: when (backend time), from, event, to.
type Applied = (u64, State, Event, State);

/// The device, the backend and the link between them.
struct Lab<'a> {
    time: &'a ManualClock,
    device: DeviceId,
    /// The operator, who reads the device's record in the fleet.
    admin: Principal,
    agent: LabAgent,
    board: LabBoard,
    runner: Runner<8, 512>,
    link: End<'a>,
    server: End<'a>,
    backend: DeviceServer,
    seen: Seen,
    acks: Vec<(u64, CommandAck)>,
    audit: Option<AuditRecord>,
    /// Lifecycle reports the fleet refused (illegal transitions, flagged).
    illegal: u32,
    now: u64,
    ids: BTreeSet<MessageId>,
    duplicates: u32,
    /// Decommissioned in the fleet: its credentials are revoked.
    retired: bool,
    refused: u32,
}

impl Lab<'_> {
    /// One step of the lab: the device's runner, then the backend answering what arrived.
    fn step(&mut self, verbose: bool) -> Outcome {
        let now = self.now;
        self.time.advance_to(now);
        block_on(
            self.runner
                .step(now, &mut self.agent, &mut self.link, &mut self.board),
        )?;
        let mut inbox = Vec::new();
        block_on(self.server.poll(now, |env| {
            inbox.push((env.device, env.id, env.kind, env.payload.to_vec()))
        }))?;
        for (from, id, kind, payload) in inbox {
            // At-least-once delivery may repeat a message whose ack was lost.
            if !self.ids.insert(id) {
                self.duplicates += 1;
                continue;
            }
            self.seen.0.entry(kind).or_default().push(now);
            match Uplink::decode(kind, &payload)? {
                Uplink::Register(register) if verbose => {
                    let what = if register.request.answer.is_some() {
                        "with the HMAC proof"
                    } else {
                        "asking to register"
                    };
                    println!(
                        "{} device -> backend  registration request ({what}), firmware {}",
                        clock(now),
                        register.request.firmware_version
                    );
                }
                Uplink::CommandAck(ack) => self.acks.push((now, ack)),
                Uplink::Decommissioned(record) => self.audit = Some(record),
                _ => {}
            }
            let handled = match serve(&mut self.backend, from, kind, &payload, now) {
                // A revoked device's last messages are refused by the fleet (and counted).
                Err(_) if self.retired => {
                    self.refused += 1;
                    None
                }
                // The fleet flags a transition its lifecycle table does not allow.
                Err(_) if kind == MessageKind::LifecycleReport => {
                    self.illegal += 1;
                    None
                }
                other => other?,
            };
            if let Some(replies) = handled {
                for (kind, payload) in replies {
                    if verbose
                        && let Downlink::Registration(response) = Downlink::decode(kind, &payload)?
                    {
                        let what = match response {
                            RegistrationResponse::Challenge(_) => {
                                "challenge (a fresh nonce)".to_string()
                            }
                            RegistrationResponse::Accepted(c) => {
                                format!("accepted, configuration version {}", c.version)
                            }
                            other => format!("{other:?}"),
                        };
                        println!(
                            "{} backend -> device  registration response: {what}",
                            clock(now)
                        );
                    }
                    self.server
                        .enqueue(kind, QoS::AtLeastOnce, Priority::Normal, &payload, now)?;
                }
            }
        }
        Ok(())
    }

    /// The device's lifecycle state as the fleet holds it (learnt from the device's
    /// lifecycle reports).
    fn state(&self) -> Result<State, FleetError> {
        Ok(self
            .backend
            .fleet()
            .device(&self.admin, &self.device)?
            .state)
    }

    /// The transitions the fleet applied to the device's record, oldest first (its audit
    /// trail).
    fn history(&self) -> Vec<Applied> {
        self.backend
            .fleet()
            .audit_log()
            .visible_to(&self.admin)
            .filter(|e| e.device == Some(self.device))
            .filter_map(|e| match e.action {
                AuditAction::Transition { from, event, to } => Some((e.at_ms, from, event, to)),
                _ => None,
            })
            .collect()
    }

    /// When the fleet last applied a transition to `to`.
    fn entered(&self, to: State) -> Option<u64> {
        self.history()
            .into_iter()
            .rev()
            .find(|&(_, _, _, state)| state == to)
            .map(|(at, ..)| at)
    }

    /// Runs the lab until `until`.
    fn run_until(&mut self, until: u64) -> Outcome {
        while self.now < until {
            self.step(false)?;
            self.now += STEP;
        }
        Ok(())
    }

    /// The backend pushes a message to the device.
    fn push(&mut self, message: &Reply) -> Outcome {
        self.server.enqueue(
            message.kind(),
            QoS::AtLeastOnce,
            Priority::High,
            &message.to_vec(),
            self.now,
        )?;
        Ok(())
    }
}

fn main() -> Outcome {
    let device = DeviceId::from_mac([0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]);
    let tenant = TenantId::new("lab")?;
    let admin = Principal::new("lab-admin", tenant, Scope::root(), Role::Admin);
    let mut fleet = Fleet::default();
    // The lab device class: the backend resolves its shadow with the agent's own table.
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    fleet.import_manufacturing(
        &admin,
        &"intake".parse()?,
        vec![ManufacturingRecord {
            device_id: device,
            secret: SECRET,
            sku: "ESP32C3-TH".into(),
            serial: 1,
        }],
        0,
    )?;
    fleet.add_assignment_rule(
        &admin,
        AssignmentRule {
            matcher: Matcher::Sku("ESP32C3-TH".into()),
            scope: "lab/bench-1".parse()?,
        },
        0,
    )?;
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let backend = DeviceServer::with_os_rng(fleet, config, NodeId(1));

    let time = ManualClock::new(0);
    let net: SimNetwork<_, 32, 512> =
        SimNetwork::new(&time, SimConfig::ideal(30).with_loss(50, 2), 7);
    let (device_end, backend_end) = net.endpoints();
    let retry = BackoffPolicy::new(500, 10_000);
    let link: End<'_> = ReliableEndpoint::new(
        device_end,
        device,
        OverflowPolicy::DropOldest,
        retry,
        SplitMix64::new(1),
    );
    let server: End<'_> = ReliableEndpoint::new(
        backend_end,
        DeviceId::new("backend")?,
        OverflowPolicy::DropOldest,
        retry,
        SplitMix64::new(2),
    );
    let agent = LabAgent::new(
        device,
        1,
        DeviceSecret::from_bytes(SECRET),
        DeviceConfig::DEFAULT,
    )?;
    let board = LabBoard {
        battery: 90,
        led_blinks: 0,
        maintenance: false,
        wiped: false,
    };
    let mut lab = Lab {
        time: &time,
        device,
        admin: admin.clone(),
        agent,
        board,
        runner: Runner::new(),
        link,
        server,
        backend,
        seen: Seen::default(),
        acks: Vec::new(),
        audit: None,
        illegal: 0,
        now: 0,
        ids: BTreeSet::new(),
        duplicates: 0,
        retired: false,
        refused: 0,
    };

    section("registration");
    lab.agent
        .start(0, &mut EndpointOutbound::new(&mut lab.link))?;
    // Registered once the device reports its move to Active and the fleet applies it.
    while lab.state().ok() != Some(State::Active) && lab.now < MINUTE {
        lab.step(true)?;
        lab.now += STEP;
    }
    let record = lab.backend.fleet().device(&admin, &device)?;
    println!(
        "{} registered: fleet record of device {device}: {} in {}",
        clock(lab.now),
        record.state.name(),
        record.scope
    );
    check(
        lab.backend
            .fleet()
            .audit_trail(&admin)
            .any(|e| e.device == Some(device) && e.action == AuditAction::Registered),
        "the fleet accepted the device's registration proof",
    )?;
    check(
        record.state == State::Active,
        "the device reported Active and the fleet holds it as Active",
    )?;

    section("operation: ten minutes of the lab's cadence");
    let op = (lab.now, lab.now + 10 * MINUTE);
    lab.run_until(op.1)?;
    println!(
        "{:<16} {:>8} {:>14} {:>10}",
        "message", "received", "mean gap (s)", "expected"
    );
    let rows = [
        (MessageKind::HealthReport, "5 s"),
        (MessageKind::Heartbeat, "10 s"),
        (MessageKind::ShadowGet, "15 s"),
        (MessageKind::Telemetry, "30 s"),
    ];
    for (kind, expected) in rows {
        let n = lab.seen.times(kind, op.0, op.1).len();
        let gap = lab.seen.mean_gap(kind, op.0, op.1).unwrap_or(0.0);
        println!(
            "{:<16} {:>8} {:>14.1} {:>10}",
            format!("{kind:?}"),
            n,
            gap,
            expected
        );
    }
    let beats = lab.seen.times(MessageKind::Heartbeat, op.0, op.1).len();
    let stats = net.stats();
    println!("link: {stats:?}");
    println!(
        "repeated deliveries (at-least-once, lost ack) ignored: {}",
        lab.duplicates
    );
    check(
        (50..=61).contains(&beats),
        format!("about 60 heartbeats arrive in 10 minutes at 5 % loss ({beats})"),
    )?;
    check(
        lab.seen
            .mean_gap(MessageKind::Telemetry, op.0, op.1)
            .is_some_and(|g| (29.0..=31.0).contains(&g)),
        "telemetry every 30 s (QoS 1: none lost)",
    )?;
    check(
        lab.backend.fleet().device(&admin, &device)?.online,
        "the fleet sees the device online",
    )?;

    section("dynamic events");
    // 1. The operator changes the telemetry interval through the shadow's desired state.
    let path = "config.telemetry_interval_ms";
    if let Some(delta) =
        lab.backend
            .set_desired(&admin, &device, path, Value::Int(60_000), lab.now)?
    {
        println!(
            "{} operator sets desired {path} = 60000; delta pushed",
            clock(lab.now)
        );
        lab.push(&delta)?;
    }
    let t0 = lab.now;
    while lab.now < t0 + 2 * MINUTE
        && lab.backend.reported(&admin, &device, path) != Some(Value::Int(60_000))
    {
        lab.run_until(lab.now + STEP)?;
    }
    let reported_interval = lab.backend.reported(&admin, &device, path);
    let converged = lab.now;
    println!(
        "{} converged: the device reports {path} = {reported_interval:?}",
        clock(lab.now)
    );
    // The interval in force, as the backend sees it: the spacing of the telemetry it gets.
    lab.run_until((t0 + 2 * MINUTE).max(converged + 3 * MINUTE))?;
    let gap = lab
        .seen
        .mean_gap(MessageKind::Telemetry, converged + SECOND, lab.now)
        .unwrap_or(0.0);
    println!("{} telemetry every {gap:.0} s since", clock(lab.now));
    check(
        (55.0..=65.0).contains(&gap),
        format!("the desired interval is in force (telemetry every {gap:.0} s)"),
    )?;
    check(
        reported_interval == Some(Value::Int(60_000)),
        "the shadow converged (reported = desired)",
    )?;

    // 2. A command with its acknowledgement.
    let blink = Command::new(
        1,
        lab.now,
        Command::NEVER_EXPIRES,
        CommandKind::BlinkLed {
            times: 3,
            period_ms: 200,
        },
    );
    lab.push(&Reply::Command(blink))?;
    let diag = Command::new(2, lab.now, Command::NEVER_EXPIRES, CommandKind::Diagnostics);
    lab.push(&Reply::Command(diag))?;
    let t0 = lab.now;
    lab.run_until(t0 + 30 * SECOND)?;
    for (at, ack) in &lab.acks {
        println!(
            "{} command {} acked: {:?}",
            clock(*at),
            ack.command_id,
            ack.outcome
        );
    }
    check(lab.board.led_blinks == 3, "the LED blinked three times")?;
    check(
        lab.acks
            .iter()
            .any(|(_, a)| a.command_id == 1 && a.outcome == AckOutcome::Accepted)
            && lab
                .acks
                .iter()
                .any(|(_, a)| a.command_id == 2 && matches!(a.outcome, AckOutcome::Completed(_))),
        "both commands acknowledged once",
    )?;
    check(lab.acks.len() == 2, "no duplicate lab.acks")?;

    // 3. The battery drops to a critical level: Degraded, telemetry three times slower.
    lab.board.battery = 8;
    let drop_at = lab.now;
    println!("{} battery drops to 8 %", clock(lab.now));
    lab.run_until(drop_at + 10 * MINUTE)?;
    let degraded_at = lab.entered(State::Degraded);
    let state = lab.state()?;
    let gap = lab
        .seen
        .mean_gap(MessageKind::Telemetry, drop_at + MINUTE, lab.now)
        .unwrap_or(0.0);
    println!(
        "{} device is {} since {} (fleet record); telemetry every {gap:.0} s (60 s interval x 3)",
        clock(lab.now),
        state.name(),
        degraded_at.map_or("?".into(), clock)
    );
    check(
        state == State::Degraded,
        "a critical battery degrades the device (reported to the fleet)",
    )?;
    check(
        (170.0..=190.0).contains(&gap),
        format!("degraded telemetry is 3x slower ({gap:.0} s)"),
    )?;

    // 4. A new battery: recovery after three healthy checks.
    lab.board.battery = 95;
    let swap = lab.now;
    println!("{} battery replaced", clock(lab.now));
    lab.run_until(swap + MINUTE)?;
    let recovered = lab.entered(State::Active);
    println!(
        "{} device recovered at {}",
        clock(lab.now),
        recovered.map_or("?".into(), clock)
    );
    check(
        lab.state()? == State::Active && recovered.is_some_and(|t| t > swap),
        "the device recovered",
    )?;

    // 5. Maintenance by command: telemetry pauses.
    let enter = Command::new(
        3,
        lab.now,
        Command::NEVER_EXPIRES,
        CommandKind::EnterMaintenance,
    );
    lab.push(&Reply::Command(enter))?;
    let m0 = lab.now;
    lab.run_until(m0 + 10 * SECOND)?;
    check(
        lab.state()? == State::Maintenance && lab.board.maintenance,
        "maintenance entered by command",
    )?;
    let quiet = (lab.now, lab.now + 5 * MINUTE);
    lab.run_until(quiet.1)?;
    let exit = Command::new(
        4,
        lab.now,
        Command::NEVER_EXPIRES,
        CommandKind::ExitMaintenance,
    );
    lab.push(&Reply::Command(exit))?;
    let m1 = lab.now;
    lab.run_until(m1 + 10 * SECOND)?;
    let paused = lab
        .seen
        .times(MessageKind::Telemetry, quiet.0 + SECOND, quiet.1)
        .len();
    let beats = lab
        .seen
        .times(MessageKind::Heartbeat, quiet.0, quiet.1)
        .len();
    let state = lab.state()?;
    println!(
        "{} maintenance from {} to {}: {paused} telemetry messages, {beats} heartbeats; now {}",
        clock(lab.now),
        clock(m0),
        clock(m1),
        state.name()
    );
    check(
        paused == 0 && beats > 20,
        "telemetry paused in maintenance, heartbeats went on",
    )?;
    check(state == State::Active, "maintenance left by command")?;

    // 6. A configuration update: version 2 with a 20 s heartbeat.
    let update = DeviceConfig {
        version: 2,
        heartbeat_interval_ms: 20_000,
        ..DeviceConfig::DEFAULT
    };
    lab.push(&Reply::Config(update))?;
    let c0 = lab.now;
    lab.run_until(c0 + 5 * MINUTE)?;
    let gap = lab
        .seen
        .mean_gap(MessageKind::Heartbeat, c0 + 30 * SECOND, lab.now)
        .unwrap_or(0.0);
    let version = lab.backend.reported(&admin, &device, "config.version");
    println!(
        "{} configuration in force: the shadow reports version {version:?}; heartbeat every {gap:.0} s",
        clock(lab.now)
    );
    check(
        version == Some(Value::Int(2)),
        "the shadow reports the new version",
    )?;
    check(
        (18.0..=25.0).contains(&gap),
        format!("heartbeat every 20 s ({gap:.0} s)"),
    )?;

    section("state transitions");
    // The device reported each transition itself; the fleet validated and applied it.
    let history = lab.history();
    println!("transitions the fleet applied from the device's reports:");
    for &(at, from, event, to) in &history {
        println!(
            "  {}  {:<13} --{:<20}--> {}",
            clock(at),
            from.name(),
            event.name(),
            to.name()
        );
    }
    let record = lab.backend.fleet().device(&admin, &device)?;
    println!(
        "fleet record: {} ({} illegal transitions flagged)",
        record.state.name(),
        record.illegal_transitions
    );
    // Registration created the record in Provisioning; every later state was reported.
    let path: Vec<State> = history
        .first()
        .map(|&(_, from, ..)| from)
        .into_iter()
        .chain(history.iter().map(|&(.., to)| to))
        .collect();
    check(
        path == [
            State::Provisioning,
            State::Active,
            State::Degraded,
            State::Active,
            State::Maintenance,
            State::Active,
        ],
        "the lifecycle went Provisioning, Active, Degraded, Active, Maintenance, Active",
    )?;
    check(
        lab.illegal == 0 && record.illegal_transitions == 0 && record.state == State::Active,
        "the fleet holds the device as Active, nothing illegal",
    )?;

    section("decommissioning");
    let reason = DecommissionReason::EndOfLife;
    // The operator retires the device in the fleet (credentials revoked, audited) and tells
    // the device, which wipes itself and sends its own audit record.
    let (done, message) = lab.backend.decommission(&admin, &device, reason, lab.now)?;
    println!(
        "{} fleet: decommissioned from {} (forced: {}), credentials revoked",
        clock(lab.now),
        done.previous.name(),
        done.forced,
    );
    lab.retired = true;
    lab.push(&message)?;
    let d0 = lab.now;
    lab.run_until(d0 + 30 * SECOND)?;
    if let Some(a) = &lab.audit {
        println!(
            "{} device wiped its data and secret; its audit record: {} decommissioned from {} ({:?})",
            clock(a.at_ms),
            a.device,
            a.from.name(),
            a.reason
        );
    }
    println!(
        "{} messages already in flight refused by the fleet after revocation; {} audit entries",
        lab.refused,
        lab.backend.fleet().audit_log().len()
    );
    let before = lab.seen.0.values().map(Vec::len).sum::<usize>();
    lab.run_until(lab.now + 2 * MINUTE)?;
    let after = lab.seen.0.values().map(Vec::len).sum::<usize>();
    check(
        lab.audit
            .is_some_and(|a| a.device == device && a.reason == reason),
        "the device sent its audit record",
    )?;
    check(
        lab.audit.is_some() && lab.board.wiped,
        "the device wiped itself",
    )?;
    check(after == before, "and fell silent")?;
    check(
        lab.backend.fleet().device(&admin, &device).is_err(),
        "the fleet no longer lists it",
    )?;
    check(
        done.previous == State::Active && !done.forced,
        "decommissioned from Active by the lifecycle's own edge",
    )?;
    println!(
        "all checks passed; link {:?}; {} repeated deliveries ignored by message id",
        net.stats(),
        lab.duplicates
    );
    Ok(())
}
