//! `iot-operator run`: the real system on embedded defaults, in one process.
//!
//! * the in-process MQTT broker (`iot-mqtt`'s `EmbeddedBroker`, rumqttd) on an ephemeral
//!   loopback port;
//! * the backend: iot-fleet's `DurableServer` over SQLite (a temporary file, or `--db`),
//!   behind the rumqttc bridge ([`crate::durable::DurableBackend`]): nothing is acknowledged
//!   before it is stored;
//! * the operator API, metrics and dashboard (this crate) on an ephemeral loopback port,
//!   with one admin token per tenant;
//! * simulated devices, each running the real agent (`iot-agent`'s `LabAgent`, with the OTA
//!   updater over a RAM flash) on its own MQTT session through `iot-mqtt`'s `run_agent`.
//!
//! The run drives an operator scenario through the API itself (a desired LED change, a
//! command, a staged firmware rollout), prints progress every few seconds, and ends with a
//! summary and self-checks; the exit code says whether every check passed.

// Reading a JSON answer by key (`v["a"]["b"]`) yields `Null` for anything missing and never
// panics; the counts added here are device counts, far from overflowing.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use iot_agent::{Board, Firmware, LabAgent, SensorSample};
use iot_core::telemetry::Measurement;
use iot_core::{DeviceId, MessageKind, NodeId, TenantId};
use iot_fleet::durable::DurableServer;
use iot_fleet::{DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::command::{CommandAck, CommandHandler, HandlerResult};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::mem_flash::MemFlash;
use iot_lifecycle::ota::{BootDecision, OtaUpdater, SlotLayout};
use iot_lifecycle::registration::DeviceSecret;
use iot_mqtt::agent::{AgentHost, AgentOutbox, DriveConfig, run_agent};
use iot_mqtt::bridge::{Bridge, BridgeConfig};
use iot_mqtt::broker::EmbeddedBroker;
use iot_mqtt::device::{self, Backoff, DeviceSession, Tcp};
use iot_mqtt::fleet::unix_ms;
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use iot_protocol::Uplink;
use iot_store::{GroupCommitConfig, SqliteStore};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::client::Client;
use crate::durable::{DurableBackend, DurableEngine, Unhandled};
use crate::engine::Engine;
use crate::{AppState, TokenStore, router};

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Simulated devices (three quarters in tenant `acme`, the rest in `globex`).
    #[arg(long, default_value_t = 12)]
    pub devices: usize,
    /// Minutes to run.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Address of the API and dashboard (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Writes `ADDRESS`, then `TENANT TOKEN` lines, to this file once the API is up (for
    /// scripts and the browser test).
    #[arg(long)]
    pub info_file: Option<std::path::PathBuf>,
    /// The SQLite database of the backend (default: a temporary file, removed at the end).
    #[arg(long)]
    pub db: Option<std::path::PathBuf>,
    /// Spread of each device's OTA start after its stage admits it, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub ota_jitter_ms: u64,
    /// Leave the scenario to the operator: no automatic desired change, command or rollout.
    #[arg(long)]
    pub quiet_operator: bool,
}

type Flash = MemFlash<{ 8192 + 256 }, 256, 4>;
const LAYOUT: SlotLayout = SlotLayout {
    slot_a: 0,
    slot_b: 4096,
    slot_size: 4096,
    boot_state: 8192,
};
/// The firmware version devices boot with, and the one the scenario rolls out.
const FIRST: u32 = 1;
const NEXT: u32 = 2;

fn secret(i: usize) -> [u8; 32] {
    let mut s = [0x33; 32];
    for (slot, b) in s.iter_mut().zip(i.to_le_bytes()) {
        *slot = b;
    }
    s
}

fn device_config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        heartbeat_interval_ms: 2_000,
        telemetry_interval_ms: 3_000,
        health_interval_ms: 1_000,
        sync_interval_ms: 3_000,
        ..DeviceConfig::DEFAULT
    }
}

/// What the run reads of a device thread.
#[derive(Default)]
struct Probe {
    blinks: AtomicU32,
    running_version: AtomicU32,
}

struct SimBoard {
    ota: Option<OtaUpdater<Flash>>,
    restart: bool,
    battery: u8,
    probe: Arc<Probe>,
}

impl CommandHandler for SimBoard {
    fn blink_led(&mut self, _times: u8, _period_ms: u16) -> HandlerResult {
        self.probe.blinks.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }
}

impl Board for SimBoard {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        let wobble = f32::from(u8::try_from((now_ms / 1_000) % 7).unwrap_or(0));
        SensorSample {
            temperature_c: Some(20.0 + wobble * 0.5),
            humidity_percent: Some(40.0 + wobble),
            battery_percent: Some(self.battery),
            battery_mv: Some(3_300 + u16::from(self.battery) * 9),
            ..SensorSample::default()
        }
    }
    fn firmware(&mut self) -> Option<&mut dyn Firmware> {
        self.ota.as_mut().map(|o| o as &mut dyn Firmware)
    }
    fn restart(&mut self) {
        self.restart = true;
    }
}

struct SimDevice {
    id: DeviceId,
    index: usize,
    agent: LabAgent,
    board: SimBoard,
}

impl SimDevice {
    fn boot(id: DeviceId, index: usize, flash: Flash, probe: Arc<Probe>) -> Option<Self> {
        let mut ota = OtaUpdater::new(flash, LAYOUT).ok()?;
        let decision = ota.boot_check().ok()?;
        let version = match decision {
            BootDecision::Trial(_) => ota.boot_state().candidate_version,
            _ => ota.boot_state().active_version.max(FIRST),
        };
        probe.running_version.store(version, Ordering::SeqCst);
        let agent = LabAgent::new(
            id,
            version,
            DeviceSecret::from_bytes(secret(index)),
            device_config(),
        )
        .ok()?;
        // Every fifth device runs on a low battery.
        let battery = if index % 5 == 4 { 12 } else { 85 };
        Some(Self {
            id,
            index,
            agent,
            board: SimBoard {
                ota: Some(ota),
                restart: false,
                battery,
                probe,
            },
        })
    }
}

impl AgentHost for SimDevice {
    type Board = SimBoard;

    fn parts(&mut self) -> (&mut LabAgent, &mut SimBoard) {
        (&mut self.agent, &mut self.board)
    }

    fn after_step(&mut self, now_ms: u64, outbox: &mut AgentOutbox) {
        if !self.board.restart {
            return;
        }
        // A restart keeps the flash and loses the RAM.
        let probe = self.board.probe.clone();
        let Some(flash) = self.board.ota.take().map(OtaUpdater::into_flash) else {
            return;
        };
        if let Some(rebooted) = Self::boot(self.id, self.index, flash, probe) {
            *self = rebooted;
            outbox.clear();
            let _ = self.agent.start(now_ms, outbox);
        }
    }
}

fn spawn_device(
    broker: SocketAddr,
    id: DeviceId,
    index: usize,
    probe: Arc<Probe>,
    stop: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let mut rx = vec![0u8; 2_048];
            let mut tx = vec![0u8; 16_384];
            let mut config = device::DeviceConfig::new(broker, id);
            config.connect_timeout = device::Duration::from_secs(5);
            config.session_expiry_secs = 60;
            config.backoff = Backoff {
                initial: device::Duration::from_millis(50),
                max: device::Duration::from_millis(1_000),
            };
            let Ok(mut session) =
                DeviceSession::<8, 1024>::new(config, Buffers::new(&mut rx, &mut tx))
            else {
                return;
            };
            let mut outbox = AgentOutbox::new(id, 1, 64);
            let Some(mut device) = SimDevice::boot(id, index, Flash::new(), probe) else {
                return;
            };
            if device.agent.start(unix_ms(), &mut outbox).is_err() {
                return;
            }
            let drive = DriveConfig {
                max_connections: 50,
                ..DriveConfig::default()
            };
            let _ = run_agent(
                &mut device,
                &mut outbox,
                &mut session,
                &mut Tcp(&TokioTcp),
                &unix_ms,
                drive,
                async {
                    let _ = stop.await;
                },
            )
            .await;
        });
    })
}

/// Prints one self-check and records its verdict.
fn check(checks: &mut Vec<bool>, name: impl Into<String>, passed: bool) {
    println!(
        "  [{}] {}",
        if passed { "ok" } else { "FAILED" },
        name.into()
    );
    checks.push(passed);
}

/// Runs the system; the exit code is the self-checks' verdict.
pub fn run(args: &RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(system(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A blocking API call from async code.
async fn api(
    client: &Client,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> (u16, Value) {
    let client = client.clone();
    tokio::task::spawn_blocking(move || {
        client
            .request(method, &path, body.as_ref())
            .map_or((0, Value::Null), |r| (r.status, r.json()))
    })
    .await
    .unwrap_or((0, Value::Null))
}

async fn system(args: &RunArgs) -> Result<bool, String> {
    let started = Instant::now();
    let run_for = Duration::from_secs_f64((args.minutes * 60.0).clamp(5.0, 24.0 * 3600.0));
    let n = args.devices.max(2);
    let acme = TenantId::new("acme").map_err(|e| e.to_string())?;
    let globex = TenantId::new("globex").map_err(|e| e.to_string())?;
    let tenant_of = |i: usize| {
        if i < n * 3 / 4 {
            (acme, 0)
        } else {
            (globex, 1)
        }
    };
    let ids: Vec<DeviceId> = (0..n)
        .map(|i| DeviceId::new(&format!("sim-{i:04}")))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;

    // The broker and the backend.
    let broker = EmbeddedBroker::start().map_err(|e| format!("broker: {e}"))?;
    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let temp_db = std::env::temp_dir().join(format!(
        "iot-operator-{}-{}.db",
        std::process::id(),
        unix_ms()
    ));
    let db = args.db.clone().unwrap_or_else(|| temp_db.clone());
    let store = SqliteStore::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let server = DeviceServer::with_os_rng(fleet, device_config(), NodeId(1))
        .with_ota_jitter(args.ota_jitter_ms);
    let mut durable = DurableServer::open_at(
        Box::new(store),
        server,
        GroupCommitConfig::default(),
        unix_ms(),
    )
    .map_err(|e| format!("opening {}: {e}", db.display()))?;
    let now = unix_ms();
    for (tenant, t) in [(acme, 0), (globex, 1)] {
        let admin = Principal::new("setup", tenant, Scope::root(), Role::Admin);
        let records: Vec<ManufacturingRecord> = (0..n)
            .filter(|i| tenant_of(*i).1 == t)
            .filter_map(|i| {
                Some(ManufacturingRecord {
                    device_id: *ids.get(i)?,
                    secret: secret(i),
                    sku: String::from("TH-1"),
                    serial: u64::try_from(i).ok()?,
                })
            })
            .collect();
        let site: Scope = format!("site-{t}").parse().map_err(|e| format!("{e}"))?;
        // A database kept from an earlier run (`--db`) already holds the list.
        if let Err(e) = durable.import_manufacturing(&admin, &site, records, now) {
            println!("manufacturing list of {tenant} not imported again: {e}");
        }
    }
    let image: Vec<u8> = (0..2_000u32)
        .map(|i| u8::try_from(i.wrapping_mul(7) % 251).unwrap_or(0))
        .collect();
    durable
        .publish_firmware(NEXT, image)
        .map_err(|e| format!("firmware: {e}"))?;
    let backend = DurableBackend::new(durable);
    let mut events = backend.events(8_192);
    let mut bridge_config = BridgeConfig::new(
        broker.addr().ip().to_string(),
        broker.addr().port(),
        "operator-backend",
    );
    bridge_config.group = "operator-fleet".into();
    let bridge =
        Bridge::spawn(bridge_config, backend.clone()).map_err(|e| format!("bridge: {e}"))?;
    let downlink = bridge.downlink();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        bridge.wait_until(|c| c.connects >= 1),
    )
    .await;
    // The bridge subscribes right after connecting; give it a moment before devices talk.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The API, metrics and dashboard.
    let tokens = Arc::new(TokenStore::new());
    let acme_token = tokens.issue(Principal::new("operator", acme, Scope::root(), Role::Admin));
    let globex_token = tokens.issue(Principal::new(
        "operator",
        globex,
        Scope::root(),
        Role::Admin,
    ));
    let engine = Arc::new(DurableEngine {
        backend: backend.clone(),
        downlink: downlink.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = router(AppState::new(engine.clone(), tokens));
    let api_task = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "iot-operator: {n} devices over MQTT (broker {}), backend, API and dashboard",
        broker.addr()
    );
    println!("dashboard: http://{addr}/#token={acme_token}");
    println!(
        "API:       http://{addr}/api/v1  (OpenAPI: http://{addr}/openapi.json, metrics: http://{addr}/metrics)"
    );
    println!("tokens:    acme {acme_token}\n           globex {globex_token}");
    if let Some(path) = &args.info_file {
        let info = format!("{addr}\nacme {acme_token}\nglobex {globex_token}\n");
        std::fs::write(path, info).map_err(|e| format!("{}: {e}", path.display()))?;
    }

    // The devices.
    let probes: Vec<Arc<Probe>> = (0..n).map(|_| Arc::default()).collect();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (i, (id, probe)) in ids.iter().zip(&probes).enumerate() {
        let (stop, stopped) = oneshot::channel();
        stops.push(stop);
        threads.push(spawn_device(broker.addr(), *id, i, probe.clone(), stopped));
    }

    // Command acknowledgements arrive as events the server leaves to the application.
    // So do telemetry batches: the application records each battery reading in the fleet
    // record, where health (low battery) is judged.
    let acks = Arc::new(AtomicU64::new(0));
    let acks_seen = acks.clone();
    let telemetry_backend = backend.clone();
    let events_task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let Unhandled { device, envelope } = event;
            match envelope.kind {
                MessageKind::CommandAck
                    if iot_core::codec::decode::<CommandAck>(&envelope.payload).is_ok() =>
                {
                    acks_seen.fetch_add(1, Ordering::Relaxed);
                }
                MessageKind::Telemetry => {
                    let Ok(Uplink::Telemetry(batch)) =
                        Uplink::decode(envelope.kind, &envelope.payload)
                    else {
                        continue;
                    };
                    let now = unix_ms();
                    for reading in &batch.readings {
                        if let Measurement::BatteryPercent { percent } = reading.measurement {
                            telemetry_backend.with_durable(|d| {
                                let _ = d.act(&[], now, |s| {
                                    s.fleet_mut()
                                        .heartbeat(&device, Some(f32::from(percent)), now)
                                });
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    });

    let acme_api = Client::new(addr, Some(acme_token.clone()));
    let globex_api = Client::new(addr, Some(globex_token));
    let first = *ids.first().ok_or("no devices")?;
    let mut rollout_started = false;
    let mut desired_set = false;
    let mut command_id = None;
    let mut last_progress = Instant::now();
    let mut desired_seen_at = None;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = backend.poll_ota(&downlink).await;
        let now = unix_ms();
        backend.with_durable(|d| {
            let _ = d.tick_rollouts(now);
        });
        let (_, health) = api(&acme_api, "GET", "/api/v1/health".into(), None).await;
        let (_, g_health) = api(&globex_api, "GET", "/api/v1/health".into(), None).await;
        let active = health["by_state"]["active"].as_u64().unwrap_or(0)
            + g_health["by_state"]["active"].as_u64().unwrap_or(0);
        let all_active = usize::try_from(active).unwrap_or(0) == n;
        if all_active && !desired_set && !args.quiet_operator {
            let (s, _) = api(
                &acme_api,
                "PUT",
                format!("/api/v1/devices/{first}/shadow/desired"),
                Some(json!({"path": "led", "value": true})),
            )
            .await;
            desired_set = s == 200;
            let (s, c) = api(
                &acme_api,
                "POST",
                format!("/api/v1/devices/{first}/commands"),
                Some(json!({"kind": "blink_led", "times": 2, "period_ms": 100})),
            )
            .await;
            if s == 202 {
                command_id = c["command_id"].as_u64();
            }
        }
        if all_active && !rollout_started && !args.quiet_operator && started.elapsed() > run_for / 4
        {
            let (s, r) = api(&acme_api, "POST", "/api/v1/rollouts".into(), Some(json!({"version": NEXT, "previous": FIRST, "stages_bp": [2500, 10000], "max_failure_bp": 1000, "report_timeout_ms": 120000}))).await;
            rollout_started = s == 201;
            if !rollout_started {
                println!("rollout refused: {r}");
            }
        }
        if desired_set && desired_seen_at.is_none() {
            let (_, shadow) = api(
                &acme_api,
                "GET",
                format!("/api/v1/devices/{first}/shadow"),
                None,
            )
            .await;
            if shadow["reported"]["led"] == json!(true) {
                desired_seen_at = Some(started.elapsed());
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            let (_, rollouts) = api(&acme_api, "GET", "/api/v1/rollouts".into(), None).await;
            let rollout = rollouts["rollouts"].get(0).map_or_else(
                || "none".to_owned(),
                |r| {
                    let done: u64 = r["stages"].as_array().map_or(0, |s| {
                        s.iter().map(|t| t["succeeded"].as_u64().unwrap_or(0)).sum()
                    });
                    format!(
                        "{} ({done}/{} updated)",
                        r["status"]["state"].as_str().unwrap_or("?"),
                        r["targets"]
                    )
                },
            );
            let c = engine.traffic();
            println!(
                "[{:>4.0}s] active {active}/{n}, healthy {}, low battery {}, offline {} | messages in {} out {} | rollout {rollout}",
                started.elapsed().as_secs_f64(),
                health["healthy"].as_u64().unwrap_or(0) + g_health["healthy"].as_u64().unwrap_or(0),
                health["low_battery"].as_u64().unwrap_or(0)
                    + g_health["low_battery"].as_u64().unwrap_or(0),
                health["offline"].as_u64().unwrap_or(0) + g_health["offline"].as_u64().unwrap_or(0),
                c.messages_in,
                c.messages_out,
            );
        }
    }

    // Summary and self-checks.
    println!("\nsummary after {:.0} s:", started.elapsed().as_secs_f64());
    let mut checks = Vec::new();
    let (_, health) = api(&acme_api, "GET", "/api/v1/health".into(), None).await;
    let (_, g_health) = api(&globex_api, "GET", "/api/v1/health".into(), None).await;
    let total = health["total"].as_u64().unwrap_or(0) + g_health["total"].as_u64().unwrap_or(0);
    println!(
        "  devices: acme {} (healthy {}, low battery {}), globex {} (healthy {}, low battery {})",
        health["total"],
        health["healthy"],
        health["low_battery"],
        g_health["total"],
        g_health["healthy"],
        g_health["low_battery"]
    );
    check(
        &mut checks,
        format!("every device registered over MQTT ({total}/{n})"),
        usize::try_from(total).unwrap_or(0) == n,
    );
    let low =
        health["low_battery"].as_u64().unwrap_or(0) + g_health["low_battery"].as_u64().unwrap_or(0);
    check(
        &mut checks,
        format!(
            "low-battery devices seen by the backend ({low}, expected {})",
            n / 5
        ),
        usize::try_from(low).unwrap_or(0) == n / 5,
    );
    if !args.quiet_operator {
        check(
            &mut checks,
            format!(
                "desired led=true reached {first} and came back reported ({desired_seen_at:.1?})"
            ),
            desired_seen_at.is_some(),
        );
        let blinks = probes
            .first()
            .map_or(0, |p| p.blinks.load(Ordering::SeqCst));
        check(
            &mut checks,
            format!(
                "command {command_id:?} executed once and acknowledged ({blinks} blink, {} acks)",
                acks.load(Ordering::Relaxed)
            ),
            blinks == 1 && acks.load(Ordering::Relaxed) >= 1,
        );
        let (_, rollouts) = api(&acme_api, "GET", "/api/v1/rollouts".into(), None).await;
        let r = rollouts["rollouts"].get(0).cloned().unwrap_or(Value::Null);
        let state = r["status"]["state"].as_str().unwrap_or("none").to_owned();
        let updated = probes
            .iter()
            .take(n * 3 / 4)
            .filter(|p| p.running_version.load(Ordering::SeqCst) == NEXT)
            .count();
        println!(
            "  rollout of v{NEXT} to acme: {state}, {updated}/{} devices run it; globex untouched",
            n * 3 / 4
        );
        check(
            &mut checks,
            "the staged rollout completed",
            state == "completed",
        );
        let globex_updated = probes
            .iter()
            .skip(n * 3 / 4)
            .filter(|p| p.running_version.load(Ordering::SeqCst) == NEXT)
            .count();
        check(
            &mut checks,
            "no globex device was updated by acme's rollout",
            globex_updated == 0,
        );
    }
    let (s, _) = api(&globex_api, "GET", format!("/api/v1/devices/{first}"), None).await;
    check(
        &mut checks,
        "globex's token cannot see acme's device (404)",
        s == 404,
    );
    let (_, audit) = api(&acme_api, "GET", "/api/v1/audit".into(), None).await;
    check(
        &mut checks,
        format!(
            "audit chain verified ({} entries checked)",
            audit["chain"]["entries_checked"]
        ),
        audit["chain"]["verified"] == json!(true),
    );
    let metrics = Client::new(addr, None)
        .get("/metrics")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
    check(
        &mut checks,
        "metrics count acme's devices",
        metrics.contains("iot_devices{tenant=\"acme\""),
    );
    let c = engine.traffic();
    println!(
        "  backend: {} device messages in, {} out, {} refused, {} dropped",
        c.messages_in, c.messages_out, c.refused, c.dropped
    );

    for stop in stops {
        let _ = stop.send(());
    }
    for thread in threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    bridge.shutdown().await;
    events_task.abort();
    api_task.abort();
    // The store has the whole audit trail, chained: verified from the database itself.
    let head = backend.with_durable(|d| d.verify_audit());
    let verdict = match &head {
        Ok(h) => format!(
            "{} entries, head {}",
            h.seq,
            h.hash
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        Err(e) => e.to_string(),
    };
    check(
        &mut checks,
        format!("the SQLite audit trail verifies ({verdict})"),
        head.is_ok(),
    );
    if args.db.is_some() {
        println!("  state kept in {}", db.display());
    } else {
        drop(engine);
        drop(backend);
        let _ = std::fs::remove_file(&temp_db);
        let _ = std::fs::remove_file(temp_db.with_extension("db-wal"));
        let _ = std::fs::remove_file(temp_db.with_extension("db-shm"));
    }
    let passed = checks.iter().filter(|c| **c).count();
    println!("{passed} passed, {} failed", checks.len() - passed);
    Ok(passed == checks.len())
}
