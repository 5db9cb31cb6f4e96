//! The integrated fleet: 10,000 simulated devices, each running the real device agent
//! (`iot_agent::LabAgent`), talking over lossy links to one real backend
//! (`iot_fleet::DeviceServer` over an `iot_fleet::Fleet`), in accelerated time (two
//! simulated hours by default).
//!
//! What happens:
//! - every device registers (manufacturing import, challenge, HMAC proof), then sends
//!   heartbeats, health reports, shadow syncs and report-on-change telemetry on the device
//!   lab's cadence, and report each lifecycle transition they make (`LifecycleReport`);
//!   the backend validates it and applies it to the device's fleet record, the view this
//!   harness reads a device's state from;
//! - batteries drain at device-specific rates: some devices go low (warning), some critical
//!   (the agent enters `Degraded` and slows its telemetry 3x), some get a new battery and
//!   recover, some die; a few lose their link for half an hour: the health sweep marks them
//!   offline;
//! - a staged rollout of a good image advances 1 % -> 10 % -> 50 % -> 100 %; a second
//!   rollout of a bad image fails its canaries, halts, and the failed devices roll back;
//! - every tenth device's telemetry also goes through one of four fog gateways
//!   (`iot_fleet::gateway::FogGateway`, window aggregation, store-and-forward over a lossy
//!   `iot_transport::sim` uplink with a `ReliableEndpoint` on each end);
//! - a dashboard line shows health counts, the rollout, message rates and the data
//!   reduction per tier; a summary and checks close the run (a failed check exits non-zero).
//!
//! The device links. A `SimNetwork` + `ReliableEndpoint` pair per device holds its own
//! queues of fixed-size datagram buffers (tens of KB per device at the agent's message
//! sizes, so hundreds of MB for 10,000) and adds an envelope encode, a copy and an ack to
//! every message, so each device's link is a small loss model instead, with iot-transport's
//! semantics: every transmission is lost at the device's loss rate (`SplitMix64`), QoS 0
//! messages are then gone, QoS 1 messages are retransmitted until they arrive (each
//! retransmission counted), and during an outage QoS 1 messages wait in a bounded
//! store-and-forward queue (oldest dropped when full) until the link returns. The fog
//! gateways' uplinks, where the outbox matters, are real `SimNetwork`s with a
//! `ReliableEndpoint` on each end (and the `lab` example runs its one device that way).
//!
//! Simplifications, said plainly: the agent has no OTA duty, so this harness plays the
//! device's installer (the backend hands out `Fleet::instructions` with each heartbeat; an
//! install takes 1 to 3 minutes and reports through `Fleet::report_update`).
//!
//! Arguments: `--devices N` (default 10000), `--hours H` (default 2), `--seed S`.
//! `cargo run --release -p iot-examples --example fleet`

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::io::{IsTerminal, Write as _};
use std::time::Instant;

use embassy_futures::block_on;
use iot_agent::{Board, LabAgent, Outbound, SensorSample, TELEMETRY_READINGS};
use iot_core::codec;
use iot_core::flow::{FlowStats, Tier};
use iot_core::telemetry::{Measurement, Telemetry};
use iot_core::{DeviceId, ManualClock, MessageKind, NodeId, QoS, TenantId};
use iot_examples::backend::{envelope, serve_durable};
use iot_examples::{Outcome, check, clock, section};
use iot_fleet::durable::DurableServer;
use iot_fleet::gateway::{FogAggregate, FogGateway};
use iot_fleet::rollout::Progress;
use iot_fleet::{
    AssignmentRule, DeviceServer, Fleet, HealthCounts, Instruction, ManufacturingRecord, Matcher,
    Principal, Role, RolloutConfig, RolloutStatus, Scope, Usage,
};
use iot_lifecycle::State;
use iot_lifecycle::command::CommandHandler;
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::DeviceSecret;
use iot_store::{GroupCommitConfig, SqliteStore};
use iot_transport::outbox::OverflowPolicy;
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};
use iot_transport::{Rng, SplitMix64};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// Every `FOG_SHARE`-th device also reports through a fog gateway.
const FOG_SHARE: usize = 10;
const GATEWAYS: usize = 4;
const FOG_WINDOW_MS: u64 = 5 * MINUTE;
/// QoS 1 messages a device holds while its link is down.
const HELD_MAX: usize = 32;
/// Messages metered per `record_usage` call.
const USAGE_BATCH: u64 = 500;
const GOOD_IMAGE: &str = "2.0.0";
const BAD_IMAGE: &str = "2.1.0-rc1";

type Uplink<'a> =
    ReliableEndpoint<SimLink<'a, &'a ManualClock, 1024, 256>, SplitMix64, 1024, 160, 2048>;
type Gateway<'a> = FogGateway<SimLink<'a, &'a ManualClock, 1024, 256>, SplitMix64, 1024, 160, 2048>;

struct Args {
    devices: usize,
    hours: u64,
    seed: u64,
    /// The SQLite file holding the backend's state (a new file; default: a temporary one).
    db: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        devices: 10_000,
        hours: 2,
        seed: 1,
        db: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        if flag == "--db" {
            args.db = Some(value.into());
            continue;
        }
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--devices" => args.devices = usize::try_from(number).map_err(|e| e.to_string())?,
            "--hours" => args.hours = number,
            "--seed" => args.seed = number,
            _ => {
                return Err(format!(
                    "unknown argument {flag} (--devices N, --hours H, --seed S, --db PATH)"
                ));
            }
        }
    }
    if args.devices < 200 || args.hours == 0 {
        return Err("at least 200 devices and 1 hour".into());
    }
    Ok(args)
}

fn unit(rng: &mut SplitMix64) -> f32 {
    rng.next_u32() as f32 / u32::MAX as f32
}

/// The simulated hardware: sensors and a battery draining at the device's own rate.
struct SimBoard {
    rng: SplitMix64,
    /// Charge at `since_ms`, in percent.
    charge: f32,
    since_ms: u64,
    /// Percent per hour.
    drain: f32,
    /// A technician replaces the battery when it reaches 3 % (otherwise it dies at 0 %).
    replaced_when_flat: bool,
    replacements: u32,
    dead: bool,
    temp_base: f32,
    humidity: f32,
}

impl SimBoard {
    fn battery(&mut self, now_ms: u64) -> f32 {
        let hours = now_ms.saturating_sub(self.since_ms) as f32 / HOUR as f32;
        let level = self.charge - self.drain * hours;
        if level <= 3.0 && self.replaced_when_flat {
            self.charge = 100.0;
            self.since_ms = now_ms;
            self.replacements += 1;
            return 100.0;
        }
        if level <= 0.0 {
            self.dead = true;
        }
        level.max(0.0)
    }
}

impl CommandHandler for SimBoard {}
impl Board for SimBoard {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        let battery = self.battery(now_ms);
        let phase = now_ms as f32 / HOUR as f32 * std::f32::consts::TAU;
        SensorSample {
            temperature_c: Some(
                self.temp_base + 3.0 * phase.sin() + 3.0 * unit(&mut self.rng) - 1.5,
            ),
            humidity_percent: Some(self.humidity + 0.4 * unit(&mut self.rng)),
            battery_percent: Some(battery.ceil() as u8),
            rssi_dbm: Some(-60),
            free_memory_bytes: Some(96 * 1024),
            ..SensorSample::default()
        }
    }
}

/// What the agent handed to its link during one service.
#[derive(Default)]
struct Out(Vec<(MessageKind, QoS, Vec<u8>)>);
impl Outbound for Out {
    type Error = ();
    fn send(&mut self, kind: MessageKind, qos: QoS, payload: &[u8], _: u64) -> Result<(), ()> {
        self.0.push((kind, qos, payload.to_vec()));
        Ok(())
    }
}

/// A device's link: a loss rate, an optional outage, a store-and-forward queue.
struct LossyLink {
    rng: SplitMix64,
    loss: f32,
    outage: Option<(u64, u64)>,
    /// Kind, QoS, payload and when the agent sent it.
    held: VecDeque<(MessageKind, QoS, Vec<u8>, u64)>,
}

impl LossyLink {
    fn up(&self, now_ms: u64) -> bool {
        !self
            .outage
            .is_some_and(|(from, until)| (from..until).contains(&now_ms))
    }

    /// Transmits once; `true` if it arrived.
    fn attempt(&mut self) -> bool {
        unit(&mut self.rng) >= self.loss
    }
}

#[derive(Default)]
struct Ota {
    /// (rollout, done at, success)
    installing: Option<(u32, u64, bool)>,
    /// Bit `r`: the outcome of rollout `r` was reported.
    reported: u32,
    /// Bit `r`: installation of rollout `r` failed.
    failed: u32,
    /// Bit `r`: rolled back after rollout `r`.
    rolled_back: u32,
}

struct Device {
    id: DeviceId,
    agent: LabAgent,
    board: SimBoard,
    link: LossyLink,
    ota: Ota,
    started: bool,
    wake: u64,
    gateway: Option<usize>,
    last_telemetry: Option<(u64, State)>,
    usage: Usage,
}

#[derive(Default)]
struct Counters {
    uplink: u64,
    downlink: u64,
    retransmissions: u64,
    lost: u64,
    held_dropped: u64,
    telemetry: u64,
    readings_sent: u64,
    health_reports: u64,
    /// Lifecycle reports the fleet refused (illegal transitions, flagged).
    illegal: u32,
    /// Sum and count of gaps between telemetry messages, in Active and in Degraded.
    gaps: [(u64, u64); 2],
    rollbacks: u64,
    installs: u64,
    late_reports: u64,
    agent_errors: u64,
}

struct Sim<'a> {
    backend: DurableServer,
    /// The operator, who reads the devices' records in the fleet.
    admin: Principal,
    devices: Vec<Device>,
    gateways: Vec<Gateway<'a>>,
    counters: Counters,
    bad_rollout: Option<u32>,
    rollouts: u32,
    events: Vec<String>,
    /// Devices registered and audit entries stored just before the mid-run restart, and
    /// whether the restarted backend came back with the same registrations.
    restart: Option<(usize, u64, bool)>,
    /// The stored audit trail's verified head at the end.
    audit: Option<iot_store::AuditHead>,
}

impl Sim<'_> {
    /// Runs one device at `now`: start, due duties, the exchange with the backend until it
    /// is quiet. Returns the agent's next deadline.
    fn service(&mut self, i: usize, now: u64) -> Option<u64> {
        let mut out = Out::default();
        let dev = self.devices.get_mut(i)?;
        if dev.board.dead {
            return None;
        }
        if !dev.started {
            dev.started = true;
            if dev.agent.start(now, &mut out).is_err() {
                self.counters.agent_errors += 1;
            }
        }
        let mut next = None;
        for _ in 0..8 {
            let dev = self.devices.get_mut(i)?;
            next = dev.agent.poll(now, &mut dev.board, &mut out);
            if dev.board.dead {
                return None;
            }
            self.ota_report(i, now);
            if out.0.is_empty() {
                break;
            }
            let replies = self.uplink(i, std::mem::take(&mut out.0), now);
            let dev = self.devices.get_mut(i)?;
            for (kind, payload) in replies {
                let delivered = if kind == MessageKind::RegistrationResponse {
                    dev.link.attempt() // QoS 0: a lost answer is repaired by the agent's retry
                } else {
                    while !dev.link.attempt() {
                        self.counters.retransmissions += 1;
                    }
                    true
                };
                if !delivered || !dev.link.up(now) {
                    self.counters.lost += 1;
                    continue;
                }
                self.counters.downlink += 1;
                if let Err(e) =
                    dev.agent
                        .handle(now, &envelope(kind, &payload), &mut dev.board, &mut out)
                {
                    if self.counters.agent_errors == 0 {
                        self.events.push(format!(
                            "{} {} refused {kind:?}: {e}",
                            clock(now),
                            dev.id
                        ));
                    }
                    self.counters.agent_errors += 1;
                }
            }
        }
        if !out.0.is_empty() {
            // Still talking after eight rounds (never seen): send the rest, answers next time.
            let replies = self.uplink(i, std::mem::take(&mut out.0), now);
            self.counters.lost += replies.len() as u64;
        }
        next
    }

    /// A finished installation reports its outcome (QoS 1, so it waits for the link).
    fn ota_report(&mut self, i: usize, now: u64) {
        let Some(dev) = self.devices.get_mut(i) else {
            return;
        };
        let Some((rollout, done, ok)) = dev.ota.installing else {
            return;
        };
        if now < done || !dev.link.up(now) {
            return;
        }
        dev.ota.installing = None;
        dev.ota.reported |= 1 << rollout;
        let id = dev.id;
        let result = self.backend.act(&[], now, |s| {
            s.fleet_mut().report_update(&id, rollout, ok, now)
        });
        let Ok(result) = result else {
            // The store failed: nothing was acknowledged (the checks count it).
            self.counters.agent_errors += 1;
            return;
        };
        if result.is_err() {
            // The rollout halted (or timed the device out) before this report.
            self.counters.late_reports += 1;
        } else if !ok && let Some(dev) = self.devices.get_mut(i) {
            dev.ota.failed |= 1 << rollout;
        }
        match result {
            Ok(Progress::Advanced(stage)) => self.events.push(format!(
                "{} rollout {rollout}: stage {} passed, stage {} admitted",
                clock(now),
                stage,
                stage + 1
            )),
            Ok(Progress::Halted(stage)) => self.events.push(format!(
                "{} rollout {rollout}: HALTED at stage {} (failure rate over the threshold)",
                clock(now),
                stage + 1
            )),
            Ok(Progress::Completed) => self
                .events
                .push(format!("{} rollout {rollout}: completed", clock(now))),
            _ => {}
        }
    }

    /// Carries the device's messages to the backend; returns the replies.
    fn uplink(
        &mut self,
        i: usize,
        msgs: Vec<(MessageKind, QoS, Vec<u8>)>,
        now: u64,
    ) -> Vec<(MessageKind, Vec<u8>)> {
        let mut replies = Vec::new();
        let Some(dev) = self.devices.get_mut(i) else {
            return replies;
        };
        let up = dev.link.up(now);
        let mut queue: Vec<_> = if up {
            dev.link.held.drain(..).collect()
        } else {
            Vec::new()
        };
        for (kind, qos, payload) in msgs {
            if !up {
                if qos == QoS::AtMostOnce {
                    self.counters.lost += 1;
                } else {
                    if dev.link.held.len() >= HELD_MAX {
                        dev.link.held.pop_front();
                        self.counters.held_dropped += 1;
                    }
                    dev.link.held.push_back((kind, qos, payload, now));
                }
                continue;
            }
            queue.push((kind, qos, payload, now));
        }
        for (kind, qos, payload, sent) in queue {
            let Some(dev) = self.devices.get_mut(i) else {
                break;
            };
            if qos == QoS::AtMostOnce {
                if !dev.link.attempt() {
                    self.counters.lost += 1;
                    continue;
                }
            } else {
                while !dev.link.attempt() {
                    self.counters.retransmissions += 1;
                }
            }
            self.counters.uplink += 1;
            dev.usage.messages += 1;
            dev.usage.stored_bytes += payload.len() as u64;
            let id = dev.id;
            if dev.usage.messages >= USAGE_BATCH {
                // Metered in batches per device (each call is one audit entry).
                let usage = std::mem::take(&mut dev.usage);
                let _ = self
                    .backend
                    .act(&[], now, |s| s.fleet_mut().record_usage(&id, usage, now));
            }
            match kind {
                MessageKind::Telemetry => {
                    self.telemetry_gap(i, sent);
                    self.telemetry(i, &payload, now);
                }
                MessageKind::HealthReport => self.counters.health_reports += 1,
                MessageKind::Heartbeat => self.instructions(i, now),
                _ => {}
            }
            match serve_durable(&mut self.backend, id, kind, &payload, now) {
                Ok(Some(r)) => replies.extend(r),
                Ok(None) => {}
                // The fleet flags a transition its lifecycle table does not allow.
                Err(e) if kind == MessageKind::LifecycleReport => {
                    if self.counters.illegal == 0 {
                        self.events.push(format!(
                            "{} fleet flagged a transition reported by {id}: {e}",
                            clock(now)
                        ));
                    }
                    self.counters.illegal += 1;
                }
                Err(e) => {
                    if self.counters.agent_errors == 0 {
                        self.events.push(format!(
                            "{} backend refused {kind:?} from {id}: {e}",
                            clock(now)
                        ));
                    }
                    self.counters.agent_errors += 1;
                }
            }
        }
        replies
    }

    /// Counts the gap since the device's previous telemetry message (both sent in the same
    /// state), by the state the fleet holds for the device: the device reports its
    /// transitions on the same link, in order, so when a message sent at `sent` arrives the
    /// fleet's record shows the state the device was in when it sent it.
    fn telemetry_gap(&mut self, i: usize, sent: u64) {
        let Some(dev) = self.devices.get_mut(i) else {
            return;
        };
        let Ok(record) = self.backend.server().fleet().device(&self.admin, &dev.id) else {
            return;
        };
        let state = record.state;
        if let Some((at, was)) = dev.last_telemetry
            && was == state
        {
            let slot = usize::from(state == State::Degraded);
            if let Some(g) = self.counters.gaps.get_mut(slot) {
                g.0 += sent - at;
                g.1 += 1;
            }
        }
        dev.last_telemetry = Some((sent, state));
    }

    fn telemetry(&mut self, i: usize, payload: &[u8], now: u64) {
        let Ok(batch) = codec::decode::<Telemetry<TELEMETRY_READINGS>>(payload) else {
            self.counters.agent_errors += 1;
            return;
        };
        self.counters.telemetry += 1;
        self.counters.readings_sent += batch.readings.len() as u64;
        let Some(dev) = self.devices.get(i) else {
            return;
        };
        let id = dev.id;
        let battery = batch.readings.iter().find_map(|r| match r.measurement {
            Measurement::BatteryPercent { percent } => Some(f32::from(percent)),
            _ => None,
        });
        if battery.is_some() {
            let _ = self
                .backend
                .act(&[], now, |s| s.fleet_mut().heartbeat(&id, battery, now));
        }
        if let Some(gw) = dev.gateway.and_then(|g| self.gateways.get_mut(g)) {
            for reading in &batch.readings {
                let _ = gw.ingest(id, reading, now);
            }
        }
    }

    /// The backend answers a heartbeat with the rollout instructions for the device.
    fn instructions(&mut self, i: usize, now: u64) {
        if self.rollouts == 0 {
            return;
        }
        let Some(dev) = self.devices.get_mut(i) else {
            return;
        };
        for (rollout, instruction) in self.backend.server().fleet().instructions(&dev.id) {
            let bit = 1u32 << rollout;
            match instruction {
                Instruction::Install { .. }
                    if dev.ota.installing.is_none() && dev.ota.reported & bit == 0 =>
                {
                    let bad = self.bad_rollout == Some(rollout);
                    let ok = !bad || unit(&mut dev.link.rng) < 0.3;
                    let took = 60 * SECOND + dev.link.rng.below_inclusive(2 * MINUTE);
                    dev.ota.installing = Some((rollout, now + took, ok));
                    self.counters.installs += 1;
                }
                Instruction::RollBack { .. } if dev.ota.rolled_back & bit == 0 => {
                    dev.ota.rolled_back |= bit;
                    self.counters.rollbacks += 1;
                }
                _ => {}
            }
        }
    }
}

struct Dashboard {
    tty: bool,
    started: Instant,
    worst: HealthCounts,
    lines: u32,
}

impl Dashboard {
    fn line(
        &mut self,
        now: u64,
        counts: &HealthCounts,
        rollout: &str,
        msgs: u64,
        flow: &FlowStats,
    ) {
        self.worst.low_battery = self.worst.low_battery.max(counts.low_battery);
        self.worst.degraded = self.worst.degraded.max(counts.degraded);
        self.worst.offline = self.worst.offline.max(counts.offline);
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let pct = |t| flow.reduction(t).map_or(0.0, |r| r * 100.0);
        let text = format!(
            "{} healthy {:>5} low batt {:>4} offline {:>4} degraded {:>4} | {} | {:>4.0}k msg/s | reduction edge {:.0}% fog {:.0}%",
            clock(now),
            counts.healthy,
            counts.low_battery,
            counts.offline,
            counts.degraded,
            rollout,
            msgs as f64 / wall / 1e3,
            pct(Tier::Edge),
            pct(Tier::Fog),
        );
        let mut stdout = std::io::stdout().lock();
        if self.tty {
            let _ = write!(stdout, "\r{text}\x1b[K");
        } else {
            let _ = writeln!(stdout, "{text}");
        }
        let _ = stdout.flush();
        self.lines += 1;
    }

    fn event(&self, text: &str) {
        if self.tty {
            print!("\r\x1b[K");
        }
        println!("{text}");
    }
}

fn rollout_text(fleet: &Fleet, admin: &Principal, rollouts: u32) -> String {
    let Some(r) = rollouts.checked_sub(1) else {
        return "no rollout yet".into();
    };
    let Ok(scoped) = fleet.rollout(admin, r) else {
        return "?".into();
    };
    let rollout = &scoped.rollout;
    let stages = rollout.stage_caps().len();
    let status = match rollout.status() {
        RolloutStatus::Running { stage } => format!("stage {}/{stages} running", stage + 1),
        RolloutStatus::Halted { stage } => format!("HALTED at stage {}/{stages}", stage + 1),
        RolloutStatus::Completed => "completed".into(),
        other => format!("{other:?}"),
    };
    format!("rollout {r} {}: {status}", rollout.version())
}

/// The rollout part of the dashboard line: `r1 2.1.0-rc1 HALTED 1/4`.
fn rollout_short(fleet: &Fleet, admin: &Principal, rollouts: u32) -> String {
    let Some(r) = rollouts.checked_sub(1) else {
        return format!("{:<22}", "no rollout yet");
    };
    let Ok(scoped) = fleet.rollout(admin, r) else {
        return "?".into();
    };
    let rollout = &scoped.rollout;
    let stages = rollout.stage_caps().len();
    let status = match rollout.status() {
        RolloutStatus::Running { stage } => format!("stage {}/{stages}", stage + 1),
        RolloutStatus::Halted { stage } => format!("HALTED {}/{stages}", stage + 1),
        RolloutStatus::Completed => "done".into(),
        other => format!("{other:?}"),
    };
    format!("r{r} {} {status:<10}", rollout.version())
}

fn main() -> Outcome {
    let args = parse_args()?;
    let started = Instant::now();
    let end = args.hours * HOUR;
    let mut seeds = SplitMix64::new(args.seed);
    let tenant = TenantId::new("acme")?;
    let admin = Principal::new("ops", tenant, Scope::root(), Role::Admin);
    let sites = ["north", "south", "east", "west"];
    let intake: Scope = "intake".parse()?;

    section(&format!(
        "fleet: {} devices, {} simulated hours, seed {}",
        args.devices, args.hours, args.seed
    ));

    // Manufacturing import: one secret per device, one SKU per site; rules place them.
    // The backend keeps its state in SQLite: a new file at `--db`, or a temporary one.
    let (db, _temp_dir) = match &args.db {
        Some(path) if path.exists() => {
            return Err(format!("{} exists: --db names a new file", path.display()).into());
        }
        Some(path) => (path.clone(), None),
        None => {
            let dir =
                std::env::temp_dir().join(format!("iot-fleet-example-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            (dir.join("fleet.db"), Some(TempDir(dir)))
        }
    };
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let fresh_server = || {
        let mut fleet = Fleet::default();
        // The lab device class: the backend resolves its shadow with the agent's own table.
        fleet.register_schema(iot_agent::AGENT_SCHEMA);
        DeviceServer::with_os_rng(fleet, config, NodeId(1))
    };
    let mut backend = DurableServer::open(
        Box::new(SqliteStore::open(&db)?),
        fresh_server(),
        GroupCommitConfig::default(),
    )?;
    println!("state in {}", db.display());
    let secret_of = |i: usize| {
        let mut s = [0u8; 32];
        for (k, b) in s.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31).wrapping_add(k * 7) % 251) as u8;
        }
        s
    };
    let mac_of = |i: usize| {
        let b = (i as u32).to_be_bytes();
        [0x24, 0x0a, b[0], b[1], b[2], b[3]]
    };
    let records = (0..args.devices)
        .map(|i| ManufacturingRecord {
            device_id: DeviceId::from_mac(mac_of(i)),
            secret: secret_of(i),
            sku: format!("TH-{}", sites[i % sites.len()]),
            serial: i as u64,
        })
        .collect();
    backend.import_manufacturing(&admin, &intake, records, 0)?;
    for site in sites {
        backend.add_assignment_rule(
            &admin,
            AssignmentRule {
                matcher: Matcher::Sku(format!("TH-{site}")),
                scope: format!("plant/{site}").parse()?,
            },
            0,
        )?;
    }

    // Devices: battery profiles, link quality, outages.
    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let mut rng = SplitMix64::new(u64::from(seeds.next_u32()) << 32 | i as u64);
        let heavy = unit(&mut rng) < 0.08;
        let (charge, drain) = if heavy {
            (25.0 + 50.0 * unit(&mut rng), 12.0 + 20.0 * unit(&mut rng))
        } else {
            (60.0 + 40.0 * unit(&mut rng), 0.5 + 1.5 * unit(&mut rng))
        };
        let outage = (unit(&mut rng) < 0.01).then(|| {
            let from = 20 * MINUTE + rng.below_inclusive(end / 2);
            (from, from + 30 * MINUTE)
        });
        let agent = LabAgent::new(
            DeviceId::from_mac(mac_of(i)),
            1,
            DeviceSecret::from_bytes(secret_of(i)),
            DeviceConfig::DEFAULT,
        )?;
        devices.push(Device {
            id: agent.device(),
            agent,
            board: SimBoard {
                rng: SplitMix64::new(rng.next_u32().into()),
                charge,
                since_ms: 0,
                drain,
                replaced_when_flat: unit(&mut rng) < 0.5,
                replacements: 0,
                dead: false,
                temp_base: 18.0 + 6.0 * unit(&mut rng),
                humidity: 40.0 + 20.0 * unit(&mut rng),
            },
            link: LossyLink {
                loss: 0.01 + 0.04 * unit(&mut rng),
                rng,
                outage,
                held: VecDeque::new(),
            },
            ota: Ota::default(),
            started: false,
            wake: 0,
            gateway: (i % FOG_SHARE == 0).then_some(i / FOG_SHARE % GATEWAYS),
            last_telemetry: None,
            usage: Usage::default(),
        });
    }

    // Fog gateways: real lossy sim networks with a reliable endpoint on each side.
    let time = ManualClock::new(0);
    let nets: Vec<SimNetwork<&ManualClock, 1024, 256>> = (0..GATEWAYS)
        .map(|g| SimNetwork::new(&time, SimConfig::ideal(40).with_loss(20, 3), 100 + g as u64))
        .collect();
    let retry = BackoffPolicy::new(1_000, 30_000);
    let mut gateways = Vec::new();
    let mut clouds: Vec<Uplink<'_>> = Vec::new();
    for (g, net) in nets.iter().enumerate() {
        let (up, down) = net.endpoints();
        let uplink: Uplink<'_> = ReliableEndpoint::new(
            up,
            DeviceId::new(&format!("fog-{g}"))?,
            OverflowPolicy::DropOldest,
            retry,
            SplitMix64::new(200 + g as u64),
        );
        gateways.push(FogGateway::new(uplink, FOG_WINDOW_MS)?);
        clouds.push(ReliableEndpoint::new(
            down,
            DeviceId::new(&format!("cloud-{g}"))?,
            OverflowPolicy::RejectNewest,
            retry,
            SplitMix64::new(300 + g as u64),
        ));
    }

    let mut sim = Sim {
        backend,
        admin: admin.clone(),
        devices,
        gateways,
        counters: Counters::default(),
        bad_rollout: None,
        rollouts: 0,
        events: Vec::new(),
        restart: None,
        audit: None,
    };

    // Devices power up over the first minute.
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::with_capacity(args.devices);
    for (i, dev) in sim.devices.iter_mut().enumerate() {
        dev.wake = seeds.below_inclusive(MINUTE);
        heap.push(Reverse((dev.wake, i as u32)));
    }

    let tty = std::io::stdout().is_terminal();
    let mut dash = Dashboard {
        tty,
        started,
        worst: HealthCounts::default(),
        lines: 0,
    };
    let dash_every = if tty { MINUTE } else { 10 * MINUTE };
    let mut flow = FlowStats::new();
    let mut cloud_aggregates = 0u64;
    let mut cloud_duplicates = 0u64;
    let mut cloud_seen = BTreeSet::new();
    let mut good_done_at = None;
    let mut good_rollout = None;
    let root = Scope::root();
    let rollout_config = |salt| RolloutConfig {
        salt,
        report_timeout_ms: 15 * MINUTE,
        ..RolloutConfig::default()
    };

    let mut now = 0;
    while now <= end {
        time.advance_to(now);
        // Every device whose deadline falls in this second, at its own deadline.
        let tick_end = now + SECOND;
        while let Some(&Reverse((at, i))) = heap.peek() {
            if at >= tick_end {
                break;
            }
            heap.pop();
            let i = i as usize;
            if sim.devices.get(i).is_none_or(|d| d.wake != at) {
                continue;
            }
            if let Some(next) = sim.service(i, at.max(now)) {
                let next = next.max(at + 1);
                if let Some(d) = sim.devices.get_mut(i) {
                    d.wake = next;
                }
                heap.push(Reverse((next, i as u32)));
            }
        }
        for e in sim.events.drain(..) {
            dash.event(&e);
        }

        // The fog tier: aggregation windows close, the uplinks carry them to the cloud.
        if now % MINUTE == 0 {
            for gw in &mut sim.gateways {
                let _ = gw.advance_to(now);
            }
        }
        for (gw, cloud) in sim.gateways.iter_mut().zip(&mut clouds) {
            block_on(gw.poll(now, |_| {}))?;
            block_on(cloud.poll(now, |env| {
                if let Ok(a) = FogAggregate::decode(env.payload) {
                    // Exactly-once delivery, checked: a second copy would be counted here.
                    if cloud_seen.insert((a.key(), a.summary.start_ms)) {
                        cloud_aggregates += 1;
                    } else {
                        cloud_duplicates += 1;
                    }
                }
            }))?;
        }

        // The backend's periodic work: health sweep, rollout deadlines, metering.
        if now % (10 * SECOND) == 0 {
            sim.backend.act(&[], now, |s| {
                s.fleet_mut().sweep(now);
                s.fleet_mut().tick_rollouts(now);
            })?;
        }

        // Halfway through, the backend restarts from its SQLite file; devices carry on.
        if now == end / 2 {
            let registered = sim.backend.server().fleet().registered_count();
            let head = sim.backend.verify_audit()?;
            sim.backend.restart(fresh_server(), now)?;
            let back = sim.backend.server().fleet().registered_count() == registered;
            sim.restart = Some((registered, head.seq, back));
            dash.event(&format!(
                "{} backend restarted from {}: {registered} registrations, {} audit entries",
                clock(now),
                db.display(),
                head.seq
            ));
        }

        // The operator: a good image at 10 minutes, then a bad one once it is done.
        if now == 10 * MINUTE {
            let id = sim.backend.act(&[], now, |s| {
                s.fleet_mut().start_rollout(
                    &admin,
                    &root,
                    GOOD_IMAGE,
                    Some("1.0.0"),
                    rollout_config(0),
                    now,
                )
            })??;
            good_rollout = Some(id);
            sim.rollouts += 1;
            dash.event(&format!(
                "{} rollout {id} of {GOOD_IMAGE} started (stages 1 % -> 10 % -> 50 % -> 100 %)",
                clock(now)
            ));
        }
        if let Some(id) = good_rollout
            && good_done_at.is_none()
            && sim
                .backend
                .server()
                .fleet()
                .rollout(&admin, id)
                .is_ok_and(|r| r.rollout.status() == RolloutStatus::Completed)
        {
            good_done_at = Some(now);
        }
        if sim.bad_rollout.is_none()
            && (good_done_at.is_some_and(|t| now >= t + 5 * MINUTE) || now == end * 3 / 4)
        {
            let id = sim.backend.act(&[], now, |s| {
                s.fleet_mut().start_rollout(
                    &admin,
                    &root,
                    BAD_IMAGE,
                    Some(GOOD_IMAGE),
                    rollout_config(7),
                    now,
                )
            })??;
            sim.bad_rollout = Some(id);
            sim.rollouts += 1;
            dash.event(&format!(
                "{} rollout {id} of {BAD_IMAGE} started (a bad image: 70 % of installs fail)",
                clock(now)
            ));
        }

        if now > 0 && (now % dash_every == 0 || now == end) {
            let counts = sim
                .backend
                .server()
                .fleet()
                .health_report(&admin, &root, now)?
                .counts;
            // The edge tier as the devices' heartbeats report it (readings sampled and sent
            // since boot), learned from the wire like everything else here.
            let (sampled, sent) = reading_counts(sim.backend.server().fleet(), &admin, |_| true);
            flow = FlowStats::new();
            flow.record_in(Tier::Edge, sampled);
            flow.record_out(Tier::Edge, sent);
            for gw in &sim.gateways {
                flow.record_in(Tier::Fog, gw.stats().readings);
                flow.record_out(Tier::Fog, gw.stats().aggregates);
            }
            flow.record_in(Tier::Cloud, cloud_aggregates);
            flow.record_out(Tier::Cloud, cloud_aggregates);
            let text = rollout_short(sim.backend.server().fleet(), &admin, sim.rollouts);
            dash.line(
                now,
                &counts,
                &text,
                sim.counters.uplink + sim.counters.downlink,
                &flow,
            );
        }
        now += SECOND;
    }
    if tty {
        println!();
    }
    let end_ms = end;
    // The last partial batches of the devices still on line (metering counts as contact,
    // so silent devices are left out rather than marked alive).
    for dev in &mut sim.devices {
        if !dev.board.dead && dev.link.up(end_ms) {
            let usage = std::mem::take(&mut dev.usage);
            let id = dev.id;
            let _ = sim.backend.act(&[], end_ms, |s| {
                s.fleet_mut().record_usage(&id, usage, end_ms)
            });
        }
    }
    let wall = started.elapsed();
    sim.audit = Some(sim.backend.verify_audit()?);

    summary(
        &sim,
        &admin,
        end_ms,
        &flow,
        (cloud_aggregates, cloud_duplicates),
        &dash,
        wall,
        good_rollout,
    )
}

#[allow(clippy::too_many_arguments)]
fn summary(
    sim: &Sim<'_>,
    admin: &Principal,
    end: u64,
    flow: &FlowStats,
    (cloud_aggregates, cloud_duplicates): (u64, u64),
    dash: &Dashboard,
    wall: std::time::Duration,
    good_rollout: Option<u32>,
) -> Outcome {
    let fleet = sim.backend.server().fleet();
    let c = &sim.counters;
    let report = fleet.health_report(admin, &"plant".parse()?, end)?;
    let metering = fleet.metering(admin, &Scope::root(), end)?;
    section("summary");
    println!(
        "devices registered        {} of {}",
        fleet.registered_count(),
        sim.devices.len()
    );
    println!("health at the end         {}", report.counts);
    for (scope, counts) in &report.children {
        println!("  {scope:<22}  {counts}");
    }
    println!(
        "worst moments             {} low battery, {} degraded, {} offline",
        dash.worst.low_battery, dash.worst.degraded, dash.worst.offline
    );
    let dead = sim.devices.iter().filter(|d| d.board.dead).count();
    let replaced: u32 = sim.devices.iter().map(|d| d.board.replacements).sum();
    println!("batteries                 {replaced} replaced, {dead} devices died");
    println!(
        "messages                  {} up, {} down, {} retransmissions, {} lost (QoS 0), {} dropped from full queues",
        c.uplink, c.downlink, c.retransmissions, c.lost, c.held_dropped
    );
    println!(
        "ingestion                 {:.0} msg/s simulated, {:.0} msg/s wall clock ({:.1} s)",
        c.uplink as f64 / (end as f64 / 1e3),
        (c.uplink + c.downlink) as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    let avg = |(sum, n): (u64, u64)| {
        if n == 0 {
            0.0
        } else {
            sum as f64 / n as f64 / 1e3
        }
    };
    let (active_gap, degraded_gap) = (avg(c.gaps[0]), avg(c.gaps[1]));
    println!(
        "telemetry                 {} messages, {} readings; mean gap {:.0} s when Active, {:.0} s when Degraded",
        c.telemetry, c.readings_sent, active_gap, degraded_gap
    );
    println!("health reports            {}", c.health_reports);
    let pct = |x: Option<f64>| x.map_or(0.0, |r| r * 100.0);
    // The edge -> fog path of the devices behind a gateway: their raw readings (sent or
    // held back at the edge) against the aggregates the gateways forwarded.
    let mut path = FlowStats::new();
    let fog_readings: u64 = sim.gateways.iter().map(|g| g.stats().readings).sum();
    let behind_gateway: std::collections::BTreeSet<&DeviceId> = sim
        .devices
        .iter()
        .filter(|d| d.gateway.is_some())
        .map(|d| &d.id)
        .collect();
    let (fog_sampled, fog_sent) = reading_counts(sim.backend.server().fleet(), admin, |id| {
        behind_gateway.contains(id)
    });
    path.record_in(Tier::Edge, fog_sampled);
    path.record_out(Tier::Edge, fog_sent);
    path.record_in(Tier::Fog, fog_readings);
    path.record_out(
        Tier::Fog,
        sim.gateways.iter().map(|g| g.stats().aggregates).sum(),
    );
    println!(
        "data reduction            edge (report on change) {:.1} %, fog (5-min windows, {} gateways) {:.1} %, edge+fog for the devices behind a gateway {:.1} %",
        pct(flow.reduction(Tier::Edge)),
        GATEWAYS,
        pct(flow.reduction(Tier::Fog)),
        pct(path.cumulative_reduction(Tier::Fog)),
    );
    let fog_aggregates: u64 = sim.gateways.iter().map(|g| g.stats().aggregates).sum();
    let fog_dropped: u64 = sim.gateways.iter().map(|g| g.dropped()).sum();
    println!(
        "fog -> cloud              {fog_aggregates} aggregates queued, {cloud_aggregates} received by the cloud ({cloud_duplicates} duplicates), {fog_dropped} dropped"
    );
    println!(
        "metering                  {} messages, {} bytes; availability {:.3} %",
        metering.usage.messages,
        metering.usage.stored_bytes,
        metering.availability.uptime_ppm() as f64 / 1e4
    );
    println!(
        "rollouts                  {} installs, {} rollbacks, {} reports after a halt refused",
        c.installs, c.rollbacks, c.late_reports
    );
    for r in 0..sim.rollouts {
        println!("  {}", rollout_text(fleet, admin, r + 1));
    }
    // The fleet's own count, from its records.
    let flagged: u32 = fleet.devices(admin).map(|r| r.illegal_transitions).sum();
    println!(
        "illegal transitions       {} refused, {flagged} flagged in the fleet's records; agent or backend errors {}",
        c.illegal, c.agent_errors
    );
    let audit = sim.audit.map_or(0, |h| h.seq);
    println!("audit trail               {audit} entries in SQLite, hash chain verified");
    if let Some((registered, entries, _)) = sim.restart {
        println!(
            "restart at half time      {registered} registrations and {entries} audit entries reloaded"
        );
    }

    section("checks");
    check(
        fleet.registered_count() == sim.devices.len(),
        "every device registered",
    )?;
    check(
        sim.restart.is_some_and(|(n, _, back)| back && n > 0),
        "the restarted backend reloaded every registration from SQLite",
    )?;
    check(
        sim.audit
            .is_some_and(|h| sim.restart.is_some_and(|(_, before, _)| h.seq > before)),
        "the stored audit trail verifies and grew on from the restart",
    )?;
    check(
        fleet.audit_log().is_empty(),
        "the audit trail is kept in SQLite, not in memory",
    )?;
    check(
        c.illegal == 0 && flagged == 0,
        "every reported transition was legal",
    )?;
    check(c.agent_errors == 0, "no message was refused")?;
    let good = good_rollout.and_then(|r| fleet.rollout(admin, r).ok());
    check(
        good.is_some_and(|r| r.rollout.status() == RolloutStatus::Completed),
        "the good image's rollout went through every stage",
    )?;
    let bad = sim.bad_rollout.and_then(|r| fleet.rollout(admin, r).ok());
    check(
        bad.is_some_and(|r| matches!(r.rollout.status(), RolloutStatus::Halted { .. })),
        "the bad image's rollout halted",
    )?;
    let bit = sim.bad_rollout.map_or(0, |r| 1u32 << r);
    let failed_alive: Vec<&Device> = sim
        .devices
        .iter()
        .filter(|d| d.ota.failed & bit != 0 && !d.board.dead && d.link.up(end))
        .collect();
    check(!failed_alive.is_empty(), "the bad image failed somewhere")?;
    check(
        failed_alive.iter().all(|d| d.ota.rolled_back & bit != 0),
        "every failed device that is reachable was told to roll back",
    )?;
    check(
        dash.worst.low_battery > 0,
        "the dashboard showed low batteries",
    )?;
    check(
        dash.worst.degraded > 0,
        "the dashboard showed degraded devices",
    )?;
    check(
        dash.worst.offline > 0,
        "the dashboard showed offline devices",
    )?;
    check(
        c.gaps[1].1 > 0 && degraded_gap >= 2.0 * active_gap,
        format!("degraded telemetry is slower ({degraded_gap:.0} s vs {active_gap:.0} s)"),
    )?;
    check(
        pct(flow.reduction(Tier::Edge)) > 0.0,
        "report-on-change reduced the edge's data",
    )?;
    check(
        pct(flow.reduction(Tier::Fog)) > 50.0,
        "the fog gateways reduced their input by more than half",
    )?;
    check(
        cloud_duplicates == 0 && cloud_aggregates * 10 >= fog_aggregates * 9,
        "fog aggregates reached the cloud exactly once (all but the last windows in flight)",
    )?;
    println!("all checks passed");
    Ok(())
}

/// A temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Readings sampled and sent since boot, summed over the devices `include` picks, as their
/// heartbeats reported them to the fleet.
fn reading_counts(fleet: &Fleet, p: &Principal, include: impl Fn(&DeviceId) -> bool) -> (u64, u64) {
    fleet
        .devices(p)
        .filter(|r| include(&r.id))
        .filter_map(|r| r.readings)
        .fold((0, 0), |(sampled, sent), t| {
            (sampled + u64::from(t.sampled), sent + u64::from(t.sent))
        })
}
