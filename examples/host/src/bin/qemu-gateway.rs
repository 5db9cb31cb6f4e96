//! Host-side gateway and backend for the QEMU device firmware (`examples/qemu-riscv32`).
//!
//! Starts `qemu-system-riscv32` with the firmware, speaks iot-transport's framed serial link
//! over the emulated UART (QEMU's stdio) and runs the backend with iot-fleet's
//! [`DeviceServer`]. It drives the device-lab scenario and checks every step from the
//! messages exchanged, never from log text:
//!
//! 1. the device registers (challenge, proof, configuration) and reports Active;
//! 2. it sends heartbeats and telemetry;
//! 3. a desired LED state is pushed and the device's reported state converges to it;
//! 4. a command is carried out and acknowledged exactly once;
//! 5. its simulated battery falls: it reports Degraded and its telemetry slows down;
//! 6. it is decommissioned: it sends its audit record and falls silent.
//!
//! The run passes only if every step holds within a bounded time.
//!
//! Run: `cargo run -p iot-examples --bin qemu-gateway -- path/to/firmware.elf`

use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use embassy_futures::block_on;
use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::Telemetry;
use iot_core::{DeviceId, NodeId, TenantId, codec};
use iot_examples::backend;
use iot_fleet::durable::DurableServer;
use iot_fleet::registry::CredentialStatus;
use iot_fleet::{DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::State;
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{AuditRecord, DecommissionReason};
use iot_protocol::{Downlink, Heartbeat};
use iot_shadow::Value;
use iot_store::{GroupCommitConfig, SqliteStore};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;

/// The id the firmware derives from its MAC, and the secret provisioned into it.
const DEVICE: &str = "qemu-525400123456";
const SECRET: [u8; 32] = *b"qemu-lab-device-secret-000000001";
const BLINK: u32 = 1;
const TIMEOUT: Duration = Duration::from_secs(60);

/// QEMU's stdio as an embedded-io port: stdout bytes arrive through a reader thread.
struct EmulatorPort {
    stdin: ChildStdin,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    closed: bool,
}

impl EmulatorPort {
    fn fill(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }
}

impl embedded_io::ErrorType for EmulatorPort {
    type Error = std::io::Error;
}

impl embedded_io::ReadReady for EmulatorPort {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.fill();
        Ok(!self.pending.is_empty() || self.closed)
    }
}

impl embedded_io_async::Read for EmulatorPort {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.fill();
        while self.pending.is_empty() && !self.closed {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl embedded_io_async::Write for EmulatorPort {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.stdin.write_all(buf)?;
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.stdin.flush()
    }
}

fn start_emulator(firmware: &str) -> Result<(Child, EmulatorPort), Box<dyn std::error::Error>> {
    let mut child = Process::new("qemu-system-riscv32")
        .args(["-machine", "virt", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-bios", "none", "-kernel", firmware])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let port = EmulatorPort {
        stdin,
        rx,
        pending: Vec::new(),
        closed: false,
    };
    Ok((child, port))
}

/// The scenario's progress, advanced only by messages from the device.
#[derive(Debug, Default)]
struct Observed {
    /// (arrival ms, state) of every heartbeat.
    heartbeats: Vec<(u64, State)>,
    /// (arrival ms, lifecycle state at the time) of every telemetry batch.
    telemetry: Vec<(u64, State)>,
    blink_acks: Vec<AckOutcome>,
    audit: Option<AuditRecord>,
    protocol_errors: Vec<String>,
}

/// The device's lifecycle state in the backend's record.
fn fleet_state(server: &DeviceServer, admin: &Principal, device: &DeviceId) -> Option<State> {
    server.fleet().device(admin, device).ok().map(|r| r.state)
}

impl Observed {
    /// Typical spacing of telemetry received while the device was in `state`.
    fn telemetry_spacing(&self, state: State) -> Option<f64> {
        let times: Vec<u64> = self
            .telemetry
            .iter()
            .filter(|(_, s)| *s == state)
            .map(|(t, _)| *t)
            .collect();
        // The median gap between consecutive samples: a sample sent at once on a change
        // (report-on-change, or the first one after a transition) must not skew the cadence.
        let mut gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_unstable();
        (gaps.len() >= 3).then(|| gaps[gaps.len() / 2] as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Registering,
    Operating,
    Converging,
    Commanded,
    AwaitDegraded,
    Decommissioning,
    Silent,
}

fn lab_config() -> DeviceConfig {
    // The lab's cadence, accelerated 20x so the scenario fits in seconds of real time.
    DeviceConfig {
        version: 1,
        heartbeat_interval_ms: 500,
        telemetry_interval_ms: 1_000,
        health_interval_ms: 250,
        sync_interval_ms: 750,
        ..DeviceConfig::DEFAULT
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let firmware = std::env::args()
        .nth(1)
        .ok_or("usage: qemu-gateway FIRMWARE.elf")?;
    let device = DeviceId::new(DEVICE)?;
    let tenant = TenantId::new("lab")?;
    let admin = Principal::new("lab-operator", tenant, Scope::root(), Role::Admin);
    // The backend's state lives in a SQLite file of its own, removed at the end.
    let state_dir = std::env::temp_dir().join(format!("iot-qemu-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)?;
    let db = state_dir.join("fleet.db");
    let fresh_server = || {
        let mut fleet = Fleet::default();
        // The lab device class: the backend resolves its shadow with the agent's own table.
        fleet.register_schema(iot_agent::AGENT_SCHEMA);
        DeviceServer::with_os_rng(fleet, lab_config(), NodeId(1))
    };
    let mut server = DurableServer::open(
        Box::new(SqliteStore::open(&db)?),
        fresh_server(),
        GroupCommitConfig::default(),
    )?;
    let record = ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "QEMU-LAB".into(),
        serial: 1,
    };
    server.import_manufacturing(&admin, &"lab/bench".parse()?, vec![record], 0)?;

    let (mut child, port) = start_emulator(&firmware)?;
    let link: FramedLink<EmulatorPort, 640> = FramedLink::new(port, 115_200);
    let mut gateway: ReliableEndpoint<_, _, 8, 512, 16> = ReliableEndpoint::new(
        link,
        DeviceId::new("gateway")?,
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(200, 2_000),
        SplitMix64::new(7),
    );
    let started = Instant::now();
    let now = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut seen = Observed::default();
    let mut step = Step::Registering;
    let mut silent_since = 0;
    let result = loop {
        if let Some(status) = child.try_wait()? {
            break Err(format!("firmware stopped with {status} at {step:?}"));
        }
        if started.elapsed() > TIMEOUT {
            break Err(format!("stuck at {step:?} after {TIMEOUT:?}"));
        }
        let mut inbound = Vec::new();
        block_on(gateway.poll(now(), |env| {
            inbound.push((env.device, env.kind, env.payload.to_vec()));
        }))?;
        for (from, kind, payload) in inbound {
            if from != device {
                seen.protocol_errors.push(format!("message from {from}"));
                continue;
            }
            match backend::serve_durable(&mut server, from, kind, &payload, now()) {
                Ok(replies) => {
                    for (kind, body) in replies.into_iter().flatten() {
                        gateway.enqueue(kind, QoS::ExactlyOnce, Priority::High, &body, now())?;
                    }
                }
                Err(e) => seen.protocol_errors.push(format!("{kind:?}: {e}")),
            }
            // The device's state as the backend knows it: from its lifecycle reports.
            let state =
                fleet_state(server.server(), &admin, &device).unwrap_or(State::Provisioning);
            match kind {
                MessageKind::Heartbeat => match codec::decode::<Heartbeat>(&payload) {
                    Ok(beat) => seen.heartbeats.push((now(), beat.state)),
                    Err(e) => seen.protocol_errors.push(format!("heartbeat: {e}")),
                },
                MessageKind::Telemetry => match codec::decode::<Telemetry<3>>(&payload) {
                    Ok(t) if !t.is_empty() => seen.telemetry.push((now(), state)),
                    other => seen.protocol_errors.push(format!("telemetry: {other:?}")),
                },
                MessageKind::CommandAck => match codec::decode::<CommandAck>(&payload) {
                    Ok(ack) if ack.command_id == BLINK => seen.blink_acks.push(ack.outcome),
                    other => seen.protocol_errors.push(format!("ack: {other:?}")),
                },
                MessageKind::Decommission => match codec::decode::<AuditRecord>(&payload) {
                    Ok(record) => seen.audit = Some(record),
                    Err(e) => seen.protocol_errors.push(format!("audit record: {e}")),
                },
                _ => {}
            }
        }
        if !seen.protocol_errors.is_empty() {
            break Err(format!("protocol errors: {:?}", seen.protocol_errors));
        }

        let t = now();
        match step {
            Step::Registering
                if fleet_state(server.server(), &admin, &device) == Some(State::Active) =>
            {
                println!("[{t:>6} ms] registered, Active, configuration v1 applied");
                step = Step::Operating;
            }
            Step::Operating if seen.heartbeats.len() >= 3 && seen.telemetry.len() >= 2 => {
                println!(
                    "[{t:>6} ms] {} heartbeats, {} telemetry batches",
                    seen.heartbeats.len(),
                    seen.telemetry.len()
                );
                if let Some(delta) =
                    server.set_desired(&admin, &device, "led", Value::Bool(true), t)?
                {
                    gateway.enqueue(
                        delta.kind(),
                        QoS::ExactlyOnce,
                        Priority::High,
                        &delta.to_vec(),
                        t,
                    )?;
                }
                println!("[{t:>6} ms] operator sets desired led = true");
                step = Step::Converging;
            }
            Step::Converging
                if server.reported(&admin, &device, "led") == Some(Value::Bool(true)) =>
            {
                println!("[{t:>6} ms] device reports led = true: converged");
                let blink = Command::new(
                    BLINK,
                    0,
                    Command::NEVER_EXPIRES,
                    CommandKind::BlinkLed {
                        times: 3,
                        period_ms: 200,
                    },
                );
                gateway.enqueue(
                    MessageKind::Command,
                    QoS::ExactlyOnce,
                    Priority::High,
                    &codec::encode_to_vec(&blink)?,
                    t,
                )?;
                step = Step::Commanded;
            }
            Step::Commanded if !seen.blink_acks.is_empty() => {
                println!(
                    "[{t:>6} ms] blink command acknowledged: {:?}",
                    seen.blink_acks
                );
                step = Step::AwaitDegraded;
            }
            Step::AwaitDegraded
                if fleet_state(server.server(), &admin, &device) == Some(State::Degraded)
                    && seen.telemetry_spacing(State::Degraded).is_some() =>
            {
                println!(
                    "[{t:>6} ms] battery critical: Degraded; telemetry every {:.0} ms (was {:.0} ms)",
                    seen.telemetry_spacing(State::Degraded).unwrap_or_default(),
                    seen.telemetry_spacing(State::Active).unwrap_or_default()
                );
                let order = Downlink::<Vec<u8>>::Decommission(DecommissionReason::OperatorRequest);
                gateway.enqueue(
                    order.kind(),
                    QoS::ExactlyOnce,
                    Priority::High,
                    &order.to_vec(),
                    t,
                )?;
                step = Step::Decommissioning;
            }
            Step::Decommissioning if seen.audit.is_some() => {
                server.act(&[device], t, |s| {
                    s.fleet_mut().decommission(&admin, &device, t)
                })??;
                println!("[{t:>6} ms] decommissioned: audit record {:?}", seen.audit);
                silent_since = t;
                step = Step::Silent;
            }
            Step::Silent if t.saturating_sub(silent_since) > 2_000 => break Ok(()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    result?;

    // The whole run, judged from what arrived.
    let mut failures = Vec::new();
    if seen.blink_acks != [AckOutcome::Accepted] {
        failures.push(format!(
            "expected one Accepted ack for the blink, got {:?}",
            seen.blink_acks
        ));
    }
    match (
        seen.telemetry_spacing(State::Active),
        seen.telemetry_spacing(State::Degraded),
    ) {
        (Some(active), Some(degraded)) if degraded >= 2.0 * active => {}
        other => failures.push(format!("degraded telemetry is not slower: {other:?}")),
    }
    match &seen.audit {
        Some(record) if record.device == device && record.from == State::Degraded => {}
        other => failures.push(format!("unexpected audit record {other:?}")),
    }
    let late = seen
        .heartbeats
        .iter()
        .filter(|(t, _)| *t > silent_since + 100)
        .count()
        + seen
            .telemetry
            .iter()
            .filter(|(t, _)| *t > silent_since + 100)
            .count();
    if late > 0 {
        failures.push(format!("{late} messages after decommissioning"));
    }
    // The backend's state is in SQLite: the audit chain verifies, and a backend restarted
    // from the file still knows the device's identity was revoked.
    let audit = server.verify_audit()?;
    server.restart(fresh_server(), now())?;
    let revoked = server
        .server()
        .fleet()
        .saved_identity(&device)
        .is_some_and(|i| i.status == CredentialStatus::Revoked);
    println!(
        "[{:>6} ms] backend restarted from {}: {} audit entries verified, identity revoked: {revoked}",
        now(),
        db.display(),
        audit.seq
    );
    if audit.seq == 0 || !revoked {
        failures.push("the restarted backend lost the decommissioning".into());
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&state_dir);
    if failures.is_empty() {
        println!("QEMU scenario passed");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
