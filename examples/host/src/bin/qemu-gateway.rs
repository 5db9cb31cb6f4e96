//! Edge gateway for the QEMU device firmware (`examples/qemu-riscv32`), with the backend
//! behind an MQTT broker and an operator that judges the run.
//!
//! Three parts, as in a deployment:
//!
//! - **The gateway** starts `qemu-system-riscv32` with the firmware and speaks iot-transport's
//!   framed serial link over the emulated UART (QEMU's stdio). It translates protocols: each
//!   envelope the device sends on the serial link is published (MQTT QoS 1) on the device's
//!   up topic `iot/{device}/up`, and each envelope published on the device's down topic
//!   `iot/{device}/down` goes to the device on the serial link (the layout of
//!   `iot_mqtt::topic`). The serial link acknowledges a device message only once the
//!   gateway's MQTT client has taken it; the client keeps it until the broker's PUBACK and
//!   sends it again after a reconnect, so a message the device was told is delivered is not
//!   lost between the two links. On the way down, commands, desired-state deltas and
//!   decommissioning orders take the gateway's reserved outbox room ahead of replies
//!   ([`Queues`]).
//! - **The backend** is iot-mqtt's bridge feeding a `FleetBackend` over iot-fleet's
//!   `DurableServer` on SQLite (a temporary directory). It receives every device message
//!   through the broker, never by a call from the gateway; it answers and acknowledges to the
//!   broker only once the changes are committed. It runs in this process on its own tokio
//!   tasks and is restarted mid-run like a crashed process: the bridge disconnects, the store
//!   is closed, then SQLite is reopened and the bridge connects again; the device carries
//!   on without registering again.
//! - **The operator** (this scenario) acts on the backend (desired state, commands,
//!   decommissioning), reads what it leaves to the application (telemetry, command acks,
//!   audit records, refusals) and judges the run from the messages exchanged, never from log
//!   text.
//!
//! # Identity
//!
//! The gateway connects to the broker as itself (its own client id; with a broker that has
//! ACLs, its own certificate or user name) and is trusted to publish for the devices attached
//! to its serial ports, on those devices' topics only: an ACL grants it `write
//! iot/{device}/up` and `read iot/{device}/down` for each attached device, never `iot/+/up`.
//! It does not judge what a device says: every frame from a port goes to that port's device's
//! topic, so a frame naming another device arrives at the backend on the wrong topic and the
//! bridge's identity check (topic device against envelope device) refuses it before any state
//! changes. What the gateway vouches for is the wiring (which device is on which port), as a
//! broker with client certificates vouches for a directly connected device.
//!
//! # The scenario
//!
//! 1. the device registers (challenge, proof, configuration) and reports Active;
//! 2. it sends heartbeats and telemetry;
//! 3. a desired LED state is pushed and the device's reported state converges to it;
//! 4. the backend restarts; it still knows the device (Active, reported state) and the
//!    device does not register again;
//! 5. a command is carried out and acknowledged exactly once;
//! 6. its simulated battery falls: it reports Degraded and its telemetry slows down;
//! 7. it is decommissioned: it sends its audit record and falls silent; a backend reopened
//!    from the file still knows the device's identity was revoked.
//!
//! Every device message the broker acknowledged to the gateway must reach the backend (when
//! the broker keeps the backend's session across its restart: an external broker; the
//! embedded rumqttd cannot, and the run reports what was published during the restart).
//! The run passes only if every step holds within a bounded time.
//!
//! With `--faults`, between steps 6 and 7 the gateway runs fault phases on the serial link,
//! injected on the host side ([`Faults`]): garbage bursts, bit flips, truncated, duplicated
//! and reordered frames and a long silence toward the device, then a flood of forged traffic
//! from the device side (spoofed identities, which the backend refuses; unsolicited acks,
//! which the operator refuses; shadow requests that make the backend answer). In each phase
//! the operator changes the desired LED state and sends a command; after each phase the link
//! is clean again and the run asserts that the shadow converged, that every command was
//! acknowledged exactly once and no command that was never sent was, and that the device
//! kept its heartbeat throughout. Operator traffic has its own queue with reserved room in
//! the gateway's outbox ([`Queues`]), so no flood can make the gateway refuse it: the run
//! counts such refusals and requires none.
//!
//! # Broker
//!
//! By default an embedded rumqttd on an ephemeral loopback port (nothing to install);
//! `--broker HOST:PORT` uses another broker (CI: the machine's Mosquitto), which must be
//! reachable. Each run puts its topics under a mount point of its own
//! (`qemu-gateway/{pid}-{ms}/iot/...`, `BridgeConfig::mount_point`) and uses client ids of
//! its own, so runs sharing a broker never meet.
//!
//! Run: `cargo run -p iot-examples --bin qemu-gateway -- path/to/firmware.elf [--faults]
//! [--broker 127.0.0.1:1883]`; `FAULT_PHASE_MS=60000` makes each fault phase last a minute
//! instead of 5 s.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use embassy_futures::block_on;
use iot_core::message::{MessageKind, OwnedEnvelope, QoS};
use iot_core::telemetry::Telemetry;
use iot_core::{DeviceId, EnvelopeRef, MessageId, NodeId, TenantId, codec};
use iot_fleet::durable::DurableServer;
use iot_fleet::registry::CredentialStatus;
use iot_fleet::{DeviceServer, Fleet, ManufacturingRecord, Principal, Reply, Role, Scope};
use iot_lifecycle::State;
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{AuditRecord, DecommissionReason};
use iot_mqtt::bridge::{Bridge, BridgeConfig, BridgeCounts, mounted_topic};
use iot_mqtt::broker::EmbeddedBroker;
use iot_mqtt::fleet::{FleetBackend, FleetCounts, FleetEvent};
use iot_mqtt::topic::Topic;
use iot_protocol::Heartbeat;
use iot_shadow::Value;
use iot_store::{GroupCommitConfig, SqliteStore};
use iot_transport::framing::{DELIMITER, FramedLink, encode_frame};
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::{Link, Rng, SplitMix64};
use rumqttc::v5::mqttbytes::QoS as MqttQoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::runtime::Runtime;

/// The id the firmware derives from its MAC, and the secret provisioned into it.
const DEVICE: &str = "qemu-525400123456";
const SECRET: [u8; 32] = *b"qemu-lab-device-secret-000000001";
const BLINK: u32 = 1;
const TIMEOUT: Duration = Duration::from_secs(60);
/// The run's bound with `--faults`, beside its phases' own time.
const FAULT_TIMEOUT: Duration = Duration::from_secs(115);
/// Publishes the gateway's MQTT client takes ahead of the broker's PUBACKs.
const UPLINK_QUEUE: usize = 64;
/// The gateway outbox's capacity, and the room in it that only operator traffic may take.
const OUTBOX: usize = 8;
const OPERATOR_RESERVE: usize = 3;
/// Bounds of the gateway's two queues in front of the outbox.
const BULK_QUEUE: usize = 64;
const OPERATOR_QUEUE: usize = 32;
/// How long each fault phase lasts (environment `FAULT_PHASE_MS` overrides it, for longer
/// campaigns), and how long the link then has to converge.
const PHASE_MS: u64 = 5_000;
const CONVERGE_MS: u64 = 20_000;
/// The longest gap between two heartbeats the device may leave (its interval is 500 ms).
const MAX_HEARTBEAT_GAP_MS: u64 = 3_000;
/// Message ids of forged envelopes: far above anything the device reaches in a run, so the
/// gateway's duplicate filter never mistakes the device's own messages for them.
const FORGED_ID_BASE: u32 = 0x8000_0000;
/// Command ids the gateway never sends; forged acks name them.
const NEVER_SENT: u32 = 9_000;

/// A fault the gateway injects on the serial link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Nothing: frames pass unchanged.
    Clean,
    /// Random bytes (delimiters included) between the frames toward the device.
    Garbage,
    /// One random bit flipped in most frames toward the device.
    BitFlips,
    /// Frames toward the device cut short.
    Truncated,
    /// Every frame toward the device sent twice.
    Duplicated,
    /// Frames toward the device held back and sent after the next one.
    Reordered,
    /// Nothing reaches the device.
    Silence,
    /// Forged frames from the device side: spoofed devices, unsolicited acks, a flood of
    /// shadow requests that the backend answers.
    Forged,
}

impl Fault {
    const PHASES: [Self; 7] = [
        Self::Garbage,
        Self::BitFlips,
        Self::Truncated,
        Self::Duplicated,
        Self::Reordered,
        Self::Silence,
        Self::Forged,
    ];
}

/// Fault injection between the gateway's framed link and the emulator's stdio, shared by
/// the port (which applies it) and the scenario (which picks the phase).
#[derive(Debug)]
struct Faults {
    fault: Fault,
    rng: SplitMix64,
    /// Bytes toward the device of a frame not yet complete.
    partial: Vec<u8>,
    /// A frame held back to be sent after the next one.
    held: Option<Vec<u8>>,
    /// Forged bytes waiting to be read as if the device had sent them.
    forged: VecDeque<u8>,
    /// Frames toward the device that were changed, dropped or added.
    mangled: u64,
    garbage_bytes: u64,
    forged_frames: u64,
}

impl Faults {
    fn new() -> Self {
        Self {
            fault: Fault::Clean,
            rng: SplitMix64::new(0x5EED),
            partial: Vec::new(),
            held: None,
            forged: VecDeque::new(),
            mangled: 0,
            garbage_bytes: 0,
            forged_frames: 0,
        }
    }

    fn below(&mut self, n: u32) -> u32 {
        self.rng.next_u32() % n.max(1)
    }

    /// What goes on the wire for `frame` (delimiter included) under the current fault.
    fn outgoing(&mut self, frame: Vec<u8>, wire: &mut Vec<u8>) {
        if let Some(held) = self.held.take() {
            wire.extend_from_slice(&frame);
            wire.extend_from_slice(&held);
            self.mangled += 1;
            return;
        }
        match self.fault {
            Fault::Clean | Fault::Forged => wire.extend_from_slice(&frame),
            Fault::Garbage => {
                let n = 8 + self.below(56);
                for _ in 0..n {
                    wire.push(self.rng.next_u32() as u8);
                }
                if self.below(2) == 0 {
                    wire.push(DELIMITER);
                }
                self.garbage_bytes += u64::from(n);
                wire.extend_from_slice(&frame);
            }
            Fault::BitFlips => {
                let mut frame = frame;
                if self.below(4) != 0 && frame.len() > 1 {
                    let at = self.below(frame.len() as u32 - 1) as usize;
                    frame[at] ^= 1 << self.below(8);
                    self.mangled += 1;
                }
                wire.extend_from_slice(&frame);
            }
            Fault::Truncated => {
                if self.below(2) == 0 && frame.len() > 2 {
                    let keep = 1 + self.below(frame.len() as u32 - 2) as usize;
                    wire.extend_from_slice(&frame[..keep]);
                    wire.push(DELIMITER);
                    self.mangled += 1;
                } else {
                    wire.extend_from_slice(&frame);
                }
            }
            Fault::Duplicated => {
                wire.extend_from_slice(&frame);
                wire.extend_from_slice(&frame);
                self.mangled += 1;
            }
            Fault::Reordered => {
                if self.below(2) == 0 {
                    self.held = Some(frame);
                } else {
                    wire.extend_from_slice(&frame);
                }
            }
            Fault::Silence => self.mangled += 1,
        }
    }

    /// Takes the bytes the gateway writes toward the device; returns what reaches it.
    fn toward_device(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        if self.fault == Fault::Clean && self.partial.is_empty() && self.held.is_none() {
            wire.extend_from_slice(bytes);
            return wire;
        }
        for &b in bytes {
            self.partial.push(b);
            if b == DELIMITER {
                let frame = std::mem::take(&mut self.partial);
                self.outgoing(frame, &mut wire);
            }
        }
        wire
    }

    /// Queues `envelope` as a frame read from the device's side of the link.
    fn forge(&mut self, envelope: &EnvelopeRef<'_>) {
        let (mut body, mut frame) = ([0u8; 512], [0u8; 640]);
        let Ok(n) = envelope.encode_into(&mut body) else {
            return;
        };
        if let Ok(m) = encode_frame(&body[..n], &mut frame) {
            self.forged.extend(&frame[..m]);
            self.forged_frames += 1;
        }
    }
}

/// QEMU's stdio as an embedded-io port: stdout bytes arrive through a reader thread.
struct EmulatorPort {
    stdin: ChildStdin,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    closed: bool,
    faults: Rc<RefCell<Faults>>,
    /// Whether the reader is in the middle of one of the device's frames, or of a forged
    /// one: forged frames go in only between the device's, so they never cut one.
    in_device_frame: bool,
    in_forged_frame: bool,
    /// Forged and real frames take turns, so a flood cannot starve the device's own.
    forged_turn: bool,
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

impl EmulatorPort {
    /// Whether the next bytes read come from the forged queue.
    fn forged_next(&self) -> bool {
        if self.in_forged_frame {
            return true;
        }
        !self.in_device_frame
            && (self.forged_turn || self.pending.is_empty())
            && !self.faults.borrow().forged.is_empty()
    }
}

impl embedded_io::ErrorType for EmulatorPort {
    type Error = std::io::Error;
}

impl embedded_io::ReadReady for EmulatorPort {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.fill();
        Ok(self.forged_next() || !self.pending.is_empty() || self.closed)
    }
}

impl embedded_io_async::Read for EmulatorPort {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.fill();
        if self.forged_next() {
            let mut faults = self.faults.borrow_mut();
            let end = faults
                .forged
                .iter()
                .position(|b| *b == DELIMITER)
                .map_or(faults.forged.len(), |i| i + 1);
            let n = buf.len().min(end);
            for (slot, b) in buf.iter_mut().zip(faults.forged.drain(..n)) {
                *slot = b;
            }
            self.in_forged_frame = n > 0 && buf[n - 1] != DELIMITER;
            if !self.in_forged_frame {
                self.forged_turn = false;
            }
            return Ok(n);
        }
        while self.pending.is_empty() && !self.closed {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        // Up to the end of the next frame, so forged frames can go in after it.
        let end = self
            .pending
            .iter()
            .position(|b| *b == DELIMITER)
            .map_or(self.pending.len(), |i| i + 1);
        let n = buf.len().min(end);
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        if n > 0 {
            self.in_device_frame = buf[n - 1] != DELIMITER;
            if !self.in_device_frame {
                self.forged_turn = true;
            }
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for EmulatorPort {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let wire = self.faults.borrow_mut().toward_device(buf);
        self.stdin.write_all(&wire)?;
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.stdin.flush()
    }
}

fn start_emulator(
    firmware: &str,
    faults: Rc<RefCell<Faults>>,
) -> Result<(Child, EmulatorPort), Box<dyn std::error::Error>> {
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
        faults,
        in_device_frame: false,
        in_forged_frame: false,
        forged_turn: true,
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
    /// Acks of commands the gateway sent, by command id.
    acks: BTreeMap<u32, Vec<AckOutcome>>,
    /// Acks naming a command the gateway never sent: refused, never counted as acks.
    unsolicited_acks: u64,
    /// Registration requests the device sent, and how many it had sent when the backend
    /// restarted.
    registrations: u64,
    registrations_at_restart: Option<u64>,
    /// Message ids of the device's messages observed so far, and how many came again.
    ids: BTreeSet<u32>,
    redelivered: u64,
    /// The message id of the device's audit record, messages it sent after that, and
    /// messages it sent before that arrived after it and were refused.
    audit_id: Option<u32>,
    after_audit: u64,
    late_refused: u64,
    /// When the fault phases began (telemetry cadence is judged on the clean run before).
    faults_began: Option<u64>,
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
        let before = self.faults_began.unwrap_or(u64::MAX);
        let times: Vec<u64> = self
            .telemetry
            .iter()
            .filter(|(t, s)| *s == state && *t <= before)
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
    Faults,
    Decommissioning,
    Silent,
}

type Gateway = ReliableEndpoint<FramedLink<EmulatorPort, 640>, SplitMix64, OUTBOX, 512, 16>;

/// Two queues in front of the gateway's outbox. Operator and control traffic (shadow deltas,
/// commands, decommissioning: told apart by the envelope's kind) may take every slot; replies
/// to what the device side sent (which a forged flood controls) may not take the last
/// [`OPERATOR_RESERVE`] slots, and wait in a bounded queue of their own whose overflow drops
/// the oldest, counted. So no flood can make the gateway refuse the operator's next command.
#[derive(Debug, Default)]
struct Queues {
    operator: VecDeque<(MessageKind, Vec<u8>)>,
    bulk: VecDeque<(MessageKind, Vec<u8>)>,
    operator_refused: u64,
    bulk_dropped: u64,
}

impl Queues {
    fn operator(&mut self, kind: MessageKind, body: Vec<u8>) {
        if self.operator.len() >= OPERATOR_QUEUE {
            self.operator_refused += 1;
        } else {
            self.operator.push_back((kind, body));
        }
    }

    /// Queues a message the backend published for the device: commands, desired-state
    /// deltas and decommissioning orders are operator traffic, the rest are replies.
    fn downlink(&mut self, kind: MessageKind, body: Vec<u8>) {
        match kind {
            MessageKind::Command | MessageKind::ShadowDelta | MessageKind::Decommission => {
                self.operator(kind, body)
            }
            _ => self.bulk(kind, body),
        }
    }

    fn bulk(&mut self, kind: MessageKind, body: Vec<u8>) {
        if self.bulk.len() >= BULK_QUEUE {
            self.bulk.pop_front();
            self.bulk_dropped += 1;
        }
        self.bulk.push_back((kind, body));
    }

    /// Moves what fits into the outbox: operator traffic first, into any free slot; device
    /// replies only while the reserve stays free.
    fn pump<L: Link, R: Rng, const D: usize>(
        &mut self,
        gateway: &mut ReliableEndpoint<L, R, OUTBOX, 512, D>,
        now: u64,
    ) {
        while let Some((kind, body)) = self.operator.front() {
            if gateway.outbox().len() >= OUTBOX {
                break;
            }
            if gateway
                .enqueue(*kind, QoS::ExactlyOnce, Priority::High, body, now)
                .is_err()
            {
                self.operator_refused += 1;
            }
            self.operator.pop_front();
        }
        while gateway.outbox().len() + OPERATOR_RESERVE < OUTBOX {
            let Some((kind, body)) = self.bulk.pop_front() else {
                break;
            };
            if gateway
                .enqueue(kind, QoS::ExactlyOnce, Priority::Normal, &body, now)
                .is_err()
            {
                self.bulk_dropped += 1;
            }
        }
    }
}

/// The fault phases' progress.
#[derive(Debug, Default)]
struct Campaign {
    phase: usize,
    started: u64,
    /// When the operator acted in this phase (halfway through the fault).
    acted: bool,
    /// When the link became clean again.
    cleaned: Option<u64>,
    desired_led: bool,
    /// Every command the gateway sent.
    issued: BTreeSet<u32>,
    /// Heartbeats received before the phases began.
    heartbeats_before: usize,
    next_forged_id: u32,
    /// Per phase: (fault, ms to converge after the link was clean again).
    report: Vec<(Fault, u64)>,
}

fn blink(id: u32) -> Command {
    Command::new(
        id,
        0,
        Command::NEVER_EXPIRES,
        CommandKind::BlinkLed {
            times: 3,
            period_ms: 200,
        },
    )
}

/// A batch of forged traffic from the device side: a shadow request in the device's name
/// (the backend answers it), a heartbeat from a device that is not on this link, an ack of a
/// command never sent, and line noise.
fn forge_batch(faults: &mut Faults, device: DeviceId, next_id: &mut u32) {
    let spoofed = DeviceId::new("qemu-spoofed").unwrap_or(device);
    let get = iot_protocol::ShadowGet { version: 0 };
    let get = codec::encode_to_vec(&get).unwrap_or_default();
    let beat = Heartbeat {
        seq: 1,
        uptime_ms: 1,
        state: State::Active,
        config_version: 1,
        health: iot_lifecycle::health::HealthStatus::Healthy,
        readings: None,
    };
    let beat = codec::encode_to_vec(&beat).unwrap_or_default();
    let ack = CommandAck {
        command_id: NEVER_SENT + (*next_id % 16),
        outcome: AckOutcome::Accepted,
    };
    let ack = codec::encode_to_vec(&ack).unwrap_or_default();
    for (from, kind, payload) in [
        (device, MessageKind::ShadowGet, get.as_slice()),
        (spoofed, MessageKind::Heartbeat, beat.as_slice()),
        (device, MessageKind::CommandAck, ack.as_slice()),
    ] {
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        faults.forge(&EnvelopeRef {
            device: from,
            seq: id,
            id: MessageId(id),
            qos: QoS::AtLeastOnce,
            kind,
            payload,
        });
    }
    for _ in 0..16 {
        let b = faults.rng.next_u32() as u8;
        faults.forged.push_back(b);
    }
    faults.forged.push_back(DELIMITER);
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

/// Counters of the gateway's MQTT session, shared with its event-loop task.
#[derive(Debug, Default)]
struct MqttCounts {
    connects: AtomicU64,
    subscribed: AtomicU64,
    /// Device messages the MQTT client took (kept until the broker's PUBACK).
    published: AtomicU64,
    /// PUBACKs with reason Success.
    acked: AtomicU64,
    /// PUBACKs with an error reason.
    refused: AtomicU64,
    /// Publishes received on the device's down topic.
    down: AtomicU64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The gateway's own MQTT session: publishes the device's messages on the device's up topic
/// (QoS 1) and hands what arrives on its down topic to the serial side.
struct Uplink {
    client: AsyncClient,
    up_topic: String,
    down: Receiver<Vec<u8>>,
    counts: Arc<MqttCounts>,
}

impl Uplink {
    fn connect(
        rt: &Runtime,
        broker: SocketAddr,
        client_id: &str,
        mount: &str,
        device: DeviceId,
    ) -> Self {
        let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(10));
        // As the bridge does: without it a publish and its PUBACK wait for delayed ACKs.
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, UPLINK_QUEUE);
        let down_topic = mounted_topic(Some(mount), Topic::down(device));
        let (tx, down) = mpsc::channel();
        let counts = Arc::new(MqttCounts::default());
        let (task_client, task_counts) = (client.clone(), counts.clone());
        rt.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        bump(&task_counts.connects);
                        // Subscribe on every connection: a clean session starts without it.
                        let _ = task_client.try_subscribe(down_topic.clone(), MqttQoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => bump(&task_counts.subscribed),
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        bump(&task_counts.down);
                        if tx.send(publish.payload.to_vec()).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if ack.reason == PubAckReason::Success {
                            bump(&task_counts.acked);
                        } else {
                            bump(&task_counts.refused);
                        }
                    }
                    Ok(_) => {}
                    // rumqttc keeps unacknowledged publishes and sends them again after the
                    // reconnect that the next poll makes.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            up_topic: mounted_topic(Some(mount), Topic::up(device)),
            down,
            counts,
        }
    }

    /// Hands `envelope` to the MQTT client, which keeps it until the broker's PUBACK (and
    /// sends it again after a reconnect); `false` when the client's queue is full.
    fn publish(&self, envelope: &EnvelopeRef<'_>) -> bool {
        let mut body = [0u8; 640];
        let Ok(n) = envelope.encode_into(&mut body) else {
            // Cannot happen for a frame that fit the serial link; taken (and so dropped)
            // rather than retransmitted forever.
            return true;
        };
        let taken = self
            .client
            .try_publish(
                self.up_topic.clone(),
                MqttQoS::AtLeastOnce,
                false,
                body[..n].to_vec(),
            )
            .is_ok();
        if taken {
            bump(&self.counts.published);
        }
        taken
    }

    /// Waits (bounded) until the broker acknowledged every publish the client took.
    fn drain(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&self.counts.acked) + get(&self.counts.refused) < get(&self.counts.published) {
            if Instant::now() > deadline {
                return Err(format!(
                    "the broker acknowledged {} of {} publishes",
                    get(&self.counts.acked),
                    get(&self.counts.published)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// The backend: iot-mqtt's bridge feeding a `FleetBackend` over the durable server. It
/// receives everything through the broker; the scenario acts on it only as an operator
/// (desired state, commands, decommissioning, queries).
struct Backend {
    fleet: FleetBackend<DurableServer>,
    bridge: Bridge,
    events: tokio::sync::mpsc::Receiver<FleetEvent>,
}

/// What the backend processes counted, summed over the runs of the backend.
#[derive(Debug, Default, Clone, Copy)]
struct BackendTotals {
    bridge: BridgeCounts,
    handled: u64,
    unhandled: u64,
    refused: u64,
}

/// Device messages a bridge took from the broker (delivered, duplicate or refused for
/// identity): every publish of the gateway lands in one of these.
fn device_messages(b: &BridgeCounts) -> u64 {
    b.delivered + b.duplicates + b.refused_identity
}

impl BackendTotals {
    fn add(&mut self, b: BridgeCounts, f: FleetCounts) {
        self.bridge.received += b.received;
        self.bridge.delivered += b.delivered;
        self.bridge.duplicates += b.duplicates;
        self.bridge.refused_identity += b.refused_identity;
        self.bridge.refused_garbage += b.refused_garbage;
        self.bridge.replies += b.replies;
        self.bridge.reply_failures += b.reply_failures;
        self.handled += f.handled;
        self.unhandled += f.unhandled;
        self.refused += f.refused;
    }
}

impl Backend {
    fn start(
        rt: &Runtime,
        server: DurableServer,
        config: &BridgeConfig,
        clock: impl Fn() -> u64 + Send + Sync + 'static,
        uplink: &Uplink,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let fleet = FleetBackend::new(server).with_clock(clock);
        let events = fleet.events(4_096);
        let bridge = {
            let _runtime = rt.enter();
            Bridge::spawn(config.clone(), fleet.clone())?
        };
        let backend = Self {
            fleet,
            bridge,
            events,
        };
        // Probes (garbage the bridge refuses) until one arrives: the subscription is then in
        // place and no device message can miss it. Bounded count and time.
        let probe = mounted_topic(
            config.mount_point.as_deref(),
            Topic::up(DeviceId::new("qemu-probe")?),
        );
        for _ in 0..200 {
            let _ = uplink.client.try_publish(
                probe.clone(),
                MqttQoS::AtMostOnce,
                false,
                b"probe".to_vec(),
            );
            std::thread::sleep(Duration::from_millis(25));
            if backend.bridge.counts().refused_garbage > 0 {
                return Ok(backend);
            }
        }
        Err("the backend's subscription never received a probe".into())
    }

    /// Stops the backend as a process exit would: the bridge disconnects (the scenario takes
    /// the events still queued), the durable server commits what is queued and closes the
    /// store. Adds its counts to `totals`.
    fn stop(
        self,
        rt: &Runtime,
        mut take: impl FnMut(FleetEvent),
        totals: &mut BackendTotals,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let Self {
            fleet,
            bridge,
            mut events,
        } = self;
        let bridge_counts = rt.block_on(bridge.shutdown());
        totals.add(bridge_counts, fleet.counts());
        while let Ok(event) = events.try_recv() {
            take(event);
        }
        drop(events);
        let server = fleet
            .into_server()
            .map_err(|_| "the backend is still shared")?;
        server.shutdown()?;
        Ok(())
    }

    fn state(&self, admin: &Principal, device: &DeviceId) -> Option<State> {
        self.fleet
            .with_server(|s| fleet_state(s.server(), admin, device))
    }

    fn reported(&self, admin: &Principal, device: &DeviceId) -> Option<Value> {
        self.fleet.with_server(|s| s.reported(admin, device, "led"))
    }

    /// Sends operator messages to `device` through the broker.
    fn send(
        &self,
        rt: &Runtime,
        device: DeviceId,
        messages: Vec<Reply>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        rt.block_on(self.fleet.send(&self.bridge.downlink(), device, messages))?;
        Ok(())
    }

    fn set_led(
        &self,
        rt: &Runtime,
        admin: &Principal,
        device: DeviceId,
        on: bool,
        now_ms: u64,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let delta = self
            .fleet
            .with_server(|s| s.set_desired(admin, &device, "led", Value::Bool(on), now_ms))?;
        self.send(rt, device, delta.into_iter().collect())
    }
}

/// Where the operator (this scenario) learns what the backend left to the application:
/// telemetry, command acks, audit records, and refusals.
fn take_event(event: FleetEvent, seen: &mut Observed, issued: &BTreeSet<u32>, with_faults: bool) {
    match event {
        FleetEvent::Unhandled { envelope, .. } => match envelope.kind {
            MessageKind::CommandAck => match codec::decode::<CommandAck>(&envelope.payload) {
                Ok(ack) if issued.contains(&ack.command_id) => seen
                    .acks
                    .entry(ack.command_id)
                    .or_default()
                    .push(ack.outcome),
                // The operator refuses an ack of a command it never sent.
                Ok(_) if with_faults => seen.unsolicited_acks += 1,
                other => seen.protocol_errors.push(format!("ack: {other:?}")),
            },
            MessageKind::Decommission => match codec::decode::<AuditRecord>(&envelope.payload) {
                Ok(record) => {
                    seen.audit = Some(record);
                    seen.audit_id = Some(envelope.id.0);
                }
                Err(e) => seen.protocol_errors.push(format!("audit record: {e}")),
            },
            _ => {}
        },
        // Under faults a message the device sent before its audit record can arrive after
        // it (its first copies were lost): the backend refuses it, as it must.
        FleetEvent::Refused { .. } if with_faults && seen.audit_id.is_some() => {
            seen.late_refused += 1;
        }
        FleetEvent::Refused { kind, error, .. } => {
            seen.protocol_errors
                .push(format!("{kind:?} refused: {error}"));
        }
        other => seen.protocol_errors.push(format!("backend: {other:?}")),
    }
}

/// The broker of the run: `--broker HOST:PORT` (checked reachable), or the embedded one.
fn broker(args: &[String]) -> Result<(SocketAddr, Option<EmbeddedBroker>), String> {
    let Some(at) = args.iter().position(|a| a == "--broker") else {
        let embedded = EmbeddedBroker::start().map_err(|e| format!("embedded broker: {e}"))?;
        return Ok((embedded.addr(), Some(embedded)));
    };
    let addr = args
        .get(at + 1)
        .and_then(|a| a.to_socket_addrs().ok()?.next())
        .ok_or("--broker needs HOST:PORT")?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("no MQTT broker reachable at {addr} (--broker): {e}"))?;
    Ok((addr, None))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_faults = args.iter().any(|a| a == "--faults");
    let firmware = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .ok_or("usage: qemu-gateway FIRMWARE.elf [--faults] [--broker HOST:PORT]")?
        .clone();
    let phase_ms = std::env::var("FAULT_PHASE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(PHASE_MS)
        .clamp(1_000, 3_600_000);
    let timeout = if with_faults {
        FAULT_TIMEOUT + Duration::from_millis(phase_ms * Fault::PHASES.len() as u64)
    } else {
        TIMEOUT
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (broker_addr, embedded) = broker(&args)?;
    // One run's names: its topics under a mount point of its own and its client ids, so
    // runs sharing a broker never meet.
    let run = format!("{}-{}", std::process::id(), iot_mqtt::fleet::unix_ms());
    let mount = format!("qemu-gateway/{run}");
    let mut bridge_config = BridgeConfig::new(
        broker_addr.ip().to_string(),
        broker_addr.port(),
        format!("qemu-backend-{run}"),
    );
    bridge_config.group = "qemu-backend".into();
    bridge_config.mount_point = Some(mount.clone());
    // A broker that keeps the backend's session queues device messages while the backend
    // restarts; the embedded rumqttd cannot (see `BridgeConfig::session_expiry`).
    let keeps_session = embedded.is_none();
    if keeps_session {
        bridge_config.session_expiry = Some(30);
    }
    println!(
        "broker {broker_addr} ({}), topics under {mount}/",
        if embedded.is_some() {
            "embedded rumqttd"
        } else {
            "external"
        }
    );

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
    let started = Instant::now();
    let clock = move || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let now = clock;
    let reopen = || -> Result<DurableServer, Box<dyn std::error::Error>> {
        Ok(DurableServer::open_at(
            Box::new(SqliteStore::open(&db)?),
            fresh_server(),
            GroupCommitConfig::default(),
            now(),
        )?)
    };
    let mut server = reopen()?;
    let record = ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "QEMU-LAB".into(),
        serial: 1,
    };
    server.import_manufacturing(&admin, &"lab/bench".parse()?, vec![record], 0)?;
    let uplink = Uplink::connect(
        &rt,
        broker_addr,
        &format!("qemu-gateway-{run}"),
        &mount,
        device,
    );
    let mut backend = Backend::start(&rt, server, &bridge_config, clock, &uplink)?;
    let mut totals = BackendTotals::default();
    // The gateway's down subscription is in place before the device says anything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&uplink.counts.subscribed) == 0 {
        if Instant::now() > deadline {
            return Err("the gateway never subscribed to the device's down topic".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let faults = Rc::new(RefCell::new(Faults::new()));
    let (mut child, port) = start_emulator(&firmware, faults.clone())?;
    let link: FramedLink<EmulatorPort, 640> = FramedLink::new(port, 115_200);
    let mut queues = Queues::default();
    let mut campaign = Campaign {
        next_forged_id: FORGED_ID_BASE,
        ..Campaign::default()
    };
    let mut gateway: Gateway = ReliableEndpoint::new(
        link,
        DeviceId::new("gateway")?,
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(200, 2_000),
        SplitMix64::new(7),
    );
    let mut seen = Observed::default();
    let mut step = Step::Registering;
    let mut silent_since = 0;
    let mut down_foreign = 0u64;
    let mut state = State::Provisioning;
    let result = loop {
        if let Some(status) = child.try_wait()? {
            break Err(format!("firmware stopped with {status} at {step:?}"));
        }
        if started.elapsed() > timeout {
            break Err(format!("stuck at {step:?} after {timeout:?}"));
        }
        // Serial to MQTT: each of the device's messages goes to its up topic. The serial link
        // acknowledges a message only once the MQTT client took it (it keeps it until the
        // broker's PUBACK); one it could not take is left to the device's retransmission.
        block_on(gateway.poll_taking(now(), |env| {
            if seen.ids.contains(&env.id.0) {
                // Sent again because our serial ack was lost: published the first time.
                seen.redelivered += 1;
                return true;
            }
            if !uplink.publish(&env) {
                return false;
            }
            seen.ids.insert(env.id.0);
            let (from, id, kind, payload) = (env.device, env.id, env.kind, env.payload);
            if from != device {
                // Published for the port's device; the backend refuses it for the identity.
                if !with_faults {
                    seen.protocol_errors.push(format!("message from {from}"));
                }
                return true;
            }
            // The device's message ids rise with every message it sends: one above its audit
            // record's was sent after it decommissioned itself (forged ones excepted).
            let sent_before_audit = seen.audit_id.is_none_or(|a| id.0 < a);
            if !sent_before_audit && id.0 < FORGED_ID_BASE {
                seen.after_audit += 1;
            }
            match kind {
                MessageKind::RegistrationRequest => seen.registrations += 1,
                MessageKind::Heartbeat => match codec::decode::<Heartbeat>(payload) {
                    Ok(beat) => seen.heartbeats.push((now(), beat.state)),
                    Err(e) => seen.protocol_errors.push(format!("heartbeat: {e}")),
                },
                MessageKind::Telemetry => match codec::decode::<Telemetry<3>>(payload) {
                    Ok(t) if !t.is_empty() => seen.telemetry.push((now(), state)),
                    other => seen.protocol_errors.push(format!("telemetry: {other:?}")),
                },
                _ => {}
            }
            true
        }))?;
        // MQTT to serial: what the backend publishes for the device goes on the serial link,
        // operator traffic (commands, desired-state deltas, decommissioning) ahead of replies.
        while let Ok(bytes) = uplink.down.try_recv() {
            match OwnedEnvelope::decode(&bytes) {
                Ok(env) if env.device == device => queues.downlink(env.kind, env.payload),
                _ => down_foreign += 1,
            }
        }
        while let Ok(event) = backend.events.try_recv() {
            take_event(event, &mut seen, &campaign.issued, with_faults);
        }
        if !seen.protocol_errors.is_empty() {
            break Err(format!("protocol errors: {:?}", seen.protocol_errors));
        }
        // The device's state as the backend knows it: from its lifecycle reports.
        state = backend
            .state(&admin, &device)
            .unwrap_or(State::Provisioning);

        let t = now();
        match step {
            Step::Registering if state == State::Active => {
                println!("[{t:>6} ms] registered, Active, configuration v1 applied");
                step = Step::Operating;
            }
            Step::Operating if seen.heartbeats.len() >= 3 && seen.telemetry.len() >= 2 => {
                println!(
                    "[{t:>6} ms] {} heartbeats, {} telemetry batches",
                    seen.heartbeats.len(),
                    seen.telemetry.len()
                );
                backend.set_led(&rt, &admin, device, true, t)?;
                campaign.desired_led = true;
                println!("[{t:>6} ms] operator sets desired led = true");
                step = Step::Converging;
            }
            Step::Converging if backend.reported(&admin, &device) == Some(Value::Bool(true)) => {
                println!("[{t:>6} ms] device reports led = true: converged");
                // The backend restarts mid-run, as after a crash of its process: it reopens
                // SQLite and carries on with the device, which does not register again.
                backend.stop(
                    &rt,
                    |e| take_event(e, &mut seen, &campaign.issued, with_faults),
                    &mut totals,
                )?;
                backend = Backend::start(&rt, reopen()?, &bridge_config, clock, &uplink)?;
                seen.registrations_at_restart = Some(seen.registrations);
                let (state, led) = (
                    backend.state(&admin, &device),
                    backend.reported(&admin, &device),
                );
                println!(
                    "[{:>6} ms] backend restarted from {}: device {state:?}, reported led {led:?}",
                    now(),
                    db.display()
                );
                if state != Some(State::Active) || led != Some(Value::Bool(true)) {
                    break Err(format!(
                        "the restarted backend lost the device: {state:?}, led {led:?}"
                    ));
                }
                campaign.issued.insert(BLINK);
                backend.send(&rt, device, vec![Reply::Command(blink(BLINK))])?;
                step = Step::Commanded;
            }
            Step::Commanded if seen.acks.contains_key(&BLINK) => {
                println!(
                    "[{t:>6} ms] blink command acknowledged: {:?}",
                    seen.acks.get(&BLINK)
                );
                step = Step::AwaitDegraded;
            }
            Step::AwaitDegraded
                if state == State::Degraded
                    && seen.telemetry_spacing(State::Degraded).is_some() =>
            {
                println!(
                    "[{t:>6} ms] battery critical: Degraded; telemetry every {:.0} ms (was {:.0} ms)",
                    seen.telemetry_spacing(State::Degraded).unwrap_or_default(),
                    seen.telemetry_spacing(State::Active).unwrap_or_default()
                );
                if with_faults {
                    campaign.started = t;
                    campaign.heartbeats_before = seen.heartbeats.len();
                    seen.faults_began = Some(t);
                    faults.borrow_mut().fault = Fault::PHASES[0];
                    println!("[{t:>6} ms] fault phase {:?}", Fault::PHASES[0]);
                    step = Step::Faults;
                } else {
                    let order = Reply::Decommission(DecommissionReason::OperatorRequest);
                    backend.send(&rt, device, vec![order])?;
                    step = Step::Decommissioning;
                }
            }
            Step::Faults => {
                let fault = Fault::PHASES[campaign.phase];
                let elapsed = t.saturating_sub(campaign.started);
                if campaign.cleaned.is_none() {
                    if fault == Fault::Forged {
                        let mut f = faults.borrow_mut();
                        if f.forged.len() < 2_048 {
                            forge_batch(&mut f, device, &mut campaign.next_forged_id);
                        }
                    }
                    if !campaign.acted && elapsed >= phase_ms / 2 {
                        // The operator acts while the fault is on.
                        campaign.acted = true;
                        campaign.desired_led = !campaign.desired_led;
                        backend.set_led(&rt, &admin, device, campaign.desired_led, t)?;
                        let id = 100 + campaign.phase as u32;
                        campaign.issued.insert(id);
                        backend.send(&rt, device, vec![Reply::Command(blink(id))])?;
                        println!(
                            "[{t:>6} ms]   operator: led = {}, command {id} (outbox {}/{OUTBOX}, {} device replies waiting)",
                            campaign.desired_led,
                            gateway.outbox().len(),
                            queues.bulk.len()
                        );
                    }
                    if elapsed >= phase_ms {
                        let mut f = faults.borrow_mut();
                        f.fault = Fault::Clean;
                        f.held = None;
                        campaign.cleaned = Some(t);
                    }
                } else if let Some(cleaned) = campaign.cleaned {
                    let converged = backend.reported(&admin, &device)
                        == Some(Value::Bool(campaign.desired_led))
                        && campaign.issued.iter().all(|id| seen.acks.contains_key(id))
                        && queues.operator.is_empty();
                    if converged {
                        let took = t.saturating_sub(cleaned);
                        println!(
                            "[{t:>6} ms]   converged {took} ms after the link was clean: led = {}, {} commands acknowledged",
                            campaign.desired_led,
                            seen.acks.len()
                        );
                        campaign.report.push((fault, took));
                        campaign.phase += 1;
                        campaign.acted = false;
                        campaign.cleaned = None;
                        campaign.started = t;
                        if let Some(next) = Fault::PHASES.get(campaign.phase) {
                            faults.borrow_mut().fault = *next;
                            println!("[{t:>6} ms] fault phase {next:?}");
                        } else {
                            let order = Reply::Decommission(DecommissionReason::OperatorRequest);
                            backend.send(&rt, device, vec![order])?;
                            step = Step::Decommissioning;
                        }
                    } else if t.saturating_sub(cleaned) > CONVERGE_MS {
                        break Err(format!(
                            "no convergence {CONVERGE_MS} ms after fault phase {fault:?}: desired led {}, reported {:?}, acks {:?} of {:?}",
                            campaign.desired_led,
                            backend.reported(&admin, &device),
                            seen.acks,
                            campaign.issued
                        ));
                    }
                }
            }
            Step::Decommissioning if seen.audit.is_some() => {
                backend.fleet.with_server(|s| {
                    s.act(&[device], t, |s| {
                        s.fleet_mut().decommission(&admin, &device, t)
                    })
                })??;
                println!("[{t:>6} ms] decommissioned: audit record {:?}", seen.audit);
                silent_since = t;
                step = Step::Silent;
            }
            Step::Silent if t.saturating_sub(silent_since) > 2_000 => break Ok(()),
            _ => {}
        }
        queues.pump(&mut gateway, now());
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    result?;

    // Everything the gateway published reached the broker and then the backend.
    uplink.drain()?;
    let published = get(&uplink.counts.acked);
    let deadline = Instant::now() + Duration::from_secs(5);
    while device_messages(&totals.bridge) + device_messages(&backend.bridge.counts()) < published
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let audit = backend.fleet.with_server(|s| s.verify_audit())?;
    backend.stop(
        &rt,
        |e| take_event(e, &mut seen, &campaign.issued, with_faults),
        &mut totals,
    )?;

    // The whole run, judged from what arrived.
    let mut failures = Vec::new();
    // Every command sent was acknowledged exactly once, and nothing else was.
    for id in &campaign.issued {
        if seen.acks.get(id).map(Vec::as_slice) != Some(&[AckOutcome::Accepted][..]) {
            failures.push(format!(
                "expected one Accepted ack for command {id}, got {:?}",
                seen.acks.get(id)
            ));
        }
    }
    if seen.acks.keys().any(|id| !campaign.issued.contains(id)) {
        failures.push(format!("acks of commands never sent: {:?}", seen.acks));
    }
    if queues.operator_refused > 0 {
        failures.push(format!(
            "{} operator messages refused by the gateway",
            queues.operator_refused
        ));
    }
    let counts = &uplink.counts;
    let lost = published.saturating_sub(device_messages(&totals.bridge));
    println!(
        "gateway: {} device messages published (QoS 1), {} acknowledged by the broker, {} refused by it; \
         {} serial redeliveries dropped; {} publishes from the backend forwarded to the device ({} for other devices dropped); {} MQTT connections",
        get(&counts.published),
        get(&counts.acked),
        get(&counts.refused),
        seen.redelivered,
        get(&counts.down),
        down_foreign,
        get(&counts.connects),
    );
    println!(
        "backend (2 runs): bridge received {}, delivered {}, duplicates {}, refused for identity {}, probes {}; \
         server handled {}, left to the operator {}, refused {}; replies {} ({} cut off by the restart); device messages lost {lost}",
        totals.bridge.received,
        totals.bridge.delivered,
        totals.bridge.duplicates,
        totals.bridge.refused_identity,
        totals.bridge.refused_garbage,
        totals.handled,
        totals.unhandled,
        totals.refused,
        totals.bridge.replies,
        totals.bridge.reply_failures,
    );
    if get(&counts.refused) > 0 || down_foreign > 0 {
        failures.push("publishes refused by the broker or misrouted".into());
    }
    if lost > 0 {
        if keeps_session {
            failures.push(format!(
                "{lost} device messages acknowledged by the broker never reached the backend"
            ));
        } else {
            // rumqttd keeps no session for the stopped backend: what the gateway published
            // while the backend restarted had no subscriber.
            println!(
                "  ({lost} published while the backend restarted: the embedded broker keeps no session for it)"
            );
        }
    }
    if seen.registrations_at_restart != Some(seen.registrations) {
        failures.push(format!(
            "the device registered again after the backend restarted ({} registration requests, {:?} before)",
            seen.registrations, seen.registrations_at_restart
        ));
    }
    if with_faults {
        let f = faults.borrow();
        println!(
            "faults: {} frames toward the device mangled, {} garbage bytes, {} forged frames; \
             {} spoofed messages refused by the backend and {} unsolicited acks by the operator; {} device messages \
             redelivered (published once); {} sent before the audit record refused after it; \
             {} device replies dropped from the bulk queue; operator refusals: {}",
            f.mangled,
            f.garbage_bytes,
            f.forged_frames,
            totals.bridge.refused_identity,
            seen.unsolicited_acks,
            seen.redelivered,
            seen.late_refused,
            queues.bulk_dropped,
            queues.operator_refused
        );
        for (fault, took) in &campaign.report {
            println!("  {fault:?}: converged {took} ms after the fault ended");
        }
        // The device kept its heartbeat through every phase.
        let beats: Vec<u64> = seen
            .heartbeats
            .iter()
            .skip(campaign.heartbeats_before.saturating_sub(1))
            .map(|(t, _)| *t)
            .filter(|t| *t <= silent_since)
            .collect();
        let gap = beats
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(u64::MAX);
        println!(
            "  heartbeats during the phases: {}, longest gap {gap} ms (limit {MAX_HEARTBEAT_GAP_MS} ms)",
            beats.len()
        );
        if gap > MAX_HEARTBEAT_GAP_MS {
            failures.push(format!("heartbeat gap of {gap} ms during the fault phases"));
        }
        if campaign.report.len() != Fault::PHASES.len() {
            failures.push("not every fault phase ran".into());
        }
        if f.forged_frames == 0 || totals.bridge.refused_identity == 0 || seen.unsolicited_acks == 0
        {
            failures.push("the forged traffic did not reach the backend".into());
        }
    } else if totals.bridge.refused_identity > 0 || seen.unsolicited_acks > 0 {
        failures.push("forged traffic in a run without faults".into());
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
    if seen.after_audit > 0 {
        failures.push(format!(
            "{} messages sent after decommissioning",
            seen.after_audit
        ));
    }
    // The backend's state is in SQLite: the audit chain verified, and a backend restarted
    // from the file still knows the device's identity was revoked.
    let server = reopen()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::ManualClock;
    use iot_transport::sim::{SimConfig, SimNetwork};

    /// A flood of device replies, with the device never acknowledging anything, fills the
    /// outbox only up to the reserve: the operator's commands still get in, every one, and
    /// the flood's overflow is dropped and counted.
    /// What the backend publishes is sorted by kind: a flood of shadow documents (answers to
    /// forged requests) waits among the replies, the operator's messages in their own queue.
    #[test]
    fn backend_messages_are_sorted_by_kind() {
        let mut queues = Queues::default();
        for _ in 0..BULK_QUEUE + 10 {
            queues.downlink(MessageKind::ShadowDocument, vec![1]);
        }
        queues.downlink(MessageKind::RegistrationResponse, vec![2]);
        for kind in [
            MessageKind::Command,
            MessageKind::ShadowDelta,
            MessageKind::Decommission,
        ] {
            queues.downlink(kind, vec![3]);
        }
        let operator: Vec<MessageKind> = queues.operator.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            operator,
            [
                MessageKind::Command,
                MessageKind::ShadowDelta,
                MessageKind::Decommission
            ]
        );
        assert_eq!(queues.bulk.len(), BULK_QUEUE);
        assert_eq!(queues.bulk_dropped, 11);
        assert_eq!(
            queues.bulk.back().map(|(k, _)| *k),
            Some(MessageKind::RegistrationResponse)
        );
        assert_eq!(queues.operator_refused, 0);
    }

    #[test]
    fn a_flood_of_device_replies_never_refuses_operator_traffic() {
        let clock = ManualClock::new(0);
        let net: SimNetwork<_, 64, 640> = SimNetwork::new(&clock, SimConfig::ideal(5), 1);
        let (link, _device_never_answers) = net.endpoints();
        let mut gateway: ReliableEndpoint<_, _, OUTBOX, 512, 16> = ReliableEndpoint::new(
            link,
            DeviceId::new("gateway").unwrap(),
            OverflowPolicy::RejectNewest,
            BackoffPolicy::new(200, 2_000),
            SplitMix64::new(7),
        );
        let mut queues = Queues::default();
        for i in 0..200u32 {
            queues.bulk(MessageKind::ShadowDocument, i.to_le_bytes().to_vec());
            queues.pump(&mut gateway, 0);
        }
        assert_eq!(gateway.outbox().len(), OUTBOX - OPERATOR_RESERVE);
        assert_eq!(queues.bulk.len(), BULK_QUEUE);
        assert_eq!(
            queues.bulk_dropped,
            200 - BULK_QUEUE as u64 - (OUTBOX - OPERATOR_RESERVE) as u64
        );
        for id in 0..OPERATOR_RESERVE as u32 {
            queues.operator(
                MessageKind::Command,
                codec::encode_to_vec(&blink(id)).unwrap(),
            );
            queues.pump(&mut gateway, 0);
        }
        assert_eq!(gateway.outbox().len(), OUTBOX);
        assert!(
            queues.operator.is_empty(),
            "every operator message got a slot"
        );
        assert_eq!(queues.operator_refused, 0);
        // Past the reserve an operator message waits in its own queue; it is not refused.
        queues.operator(
            MessageKind::Command,
            codec::encode_to_vec(&blink(99)).unwrap(),
        );
        queues.pump(&mut gateway, 0);
        assert_eq!(queues.operator.len(), 1);
        assert_eq!(queues.operator_refused, 0);
    }
}
