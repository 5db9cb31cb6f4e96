//! Several backend nodes, one fleet, and one of them killed: three `fleet-node` processes
//! share the fleet through one PostgreSQL schema ([`DurableServer::open_shared`]) and split the
//! devices' messages through a shared subscription on a mosquitto the test starts; the devices
//! run the real agent ([`run_agent`]) in this process. While every device is being sent a
//! desired LED state and a command, one node is killed with SIGKILL. Then:
//!
//! - every device keeps being served: a second desired state, set after the kill, reaches each
//!   device and its report comes back and is kept, by the two nodes left;
//! - no acknowledged shadow update is lost: the store holds each device's reported LED as the
//!   device holds it, after both rounds;
//! - no command is executed twice: each device ran its command exactly once (device-side
//!   count), also after the nodes went on for a while.
//!
//! Registration goes through the first node alone (a registration challenge lives in the
//! memory of the node that issued it); the two others join once the fleet is registered, as
//! nodes added to a running fleet do.
//!
//! Commands here come from the operator (this process) straight to the devices' down topics;
//! OTA rollouts are not part of this run.
//!
//! Devices: `IOT_SCALE_OUT_DEVICES` (default 100: about 25 s on a loaded two-core machine).
//! At 1,000 the first node stops serving during the registration burst: its bridge's event
//! loop waits for room in the queue to the handler while the handler waits for room in the
//! MQTT client's request queue, which only that event loop drains.
//!
//! Built only with `--features postgres-tests,mosquitto-tests` (run by `.ci/steps/store.sh`);
//! it needs the PostgreSQL server at `IOT_TESTS_PG_ADDR` (default `127.0.0.1:5432`) and the
//! `mosquitto` binary, and fails when either is absent. It works in a schema of its own and
//! drops it at the end; every child process is killed when the test ends, however it ends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs
)]

#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use iot_agent::{Board, LabAgent, SensorSample};
use iot_core::message::{Envelope, MessageId};
use iot_fleet::durable::{DurableError, DurableServer};
use iot_lifecycle::State;
use iot_lifecycle::command::{Command, CommandHandler, CommandKind, HandlerResult};
use iot_lifecycle::registration::DeviceSecret;
use iot_mqtt::agent::{AgentHost, AgentOutbox, DriveConfig, DriveEnd, DriveStats, run_agent};
use iot_mqtt::device::{self, Backoff, DeviceSession, Tcp};
use iot_mqtt::fleet::unix_ms;
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use iot_protocol::Downlink;
use iot_shadow::Value;
use iot_store::{PgConfig, PgStore};
use iot_tests::fleet_node::{device_config, server};
use iot_tests::wire_devices::{admin, group_config, id, import, secret};
use mosquitto::Mosquitto;
use pg::{Schema, upstream};
use tokio::sync::watch;

/// Every wait of the test is bounded by this.
const WAIT: Duration = Duration::from_secs(60);
/// Threads the devices run on (each a single-threaded runtime: the device session's
/// futures are not `Send`, as on a microcontroller's executor).
const DEVICE_THREADS: usize = 4;
/// The command every device is sent once.
const COMMAND_ID: u32 = 41;

fn devices() -> u32 {
    std::env::var("IOT_SCALE_OUT_DEVICES")
        .ok()
        .map_or(100, |v| {
            v.parse().expect("IOT_SCALE_OUT_DEVICES is a number")
        })
}

fn store(schema: &Schema) -> PgStore {
    PgStore::connect(PgConfig::new(Schema::connection(None), schema.0.clone()))
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", upstream()))
}

/// A `fleet-node` process, killed when dropped.
struct Node {
    name: String,
    child: Child,
}

impl Node {
    /// Starts a node and waits for its ready line (bounded).
    fn start(schema: &Schema, broker: SocketAddr, group: &str, name: &str) -> Self {
        let mut child = Process::new(env!("CARGO_BIN_EXE_fleet-node"))
            .arg(Schema::connection(None))
            .arg(&schema.0)
            .arg(broker.to_string())
            .arg(group)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut node = Self {
            name: name.to_string(),
            child,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        assert_eq!(
            line.trim(),
            format!("ready {name}"),
            "node {name} did not start (exit: {:?})",
            node.child.try_wait()
        );
        node
    }

    /// SIGKILL: no clean shutdown, nothing flushed, the broker sees the connection drop.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a device saw, for the test's checks.
#[derive(Default)]
struct Probe {
    blinks: AtomicU32,
    led: AtomicBool,
    /// The agent is `Active` (as of its last step).
    active: AtomicBool,
    /// The agent has shadow changes no node acknowledged yet (as of its last step).
    pending: AtomicBool,
    /// Registration requests the agent sent.
    registration_requests: AtomicU32,
}

struct Lab {
    probe: Arc<Probe>,
}

impl CommandHandler for Lab {
    fn blink_led(&mut self, _times: u8, _period_ms: u16) -> HandlerResult {
        self.probe.blinks.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }
}

impl Board for Lab {
    fn sample(&mut self, _now_ms: u64) -> SensorSample {
        SensorSample {
            temperature_c: Some(21.0),
            battery_percent: Some(90),
            battery_mv: Some(3_900),
            ..SensorSample::default()
        }
    }
    fn set_led(&mut self, on: bool) {
        self.probe.led.store(on, Ordering::SeqCst);
    }
}

struct SimDevice {
    agent: LabAgent,
    board: Lab,
}

impl AgentHost for SimDevice {
    type Board = Lab;
    fn parts(&mut self) -> (&mut LabAgent, &mut Lab) {
        (&mut self.agent, &mut self.board)
    }

    fn after_step(&mut self, _now_ms: u64, _outbox: &mut AgentOutbox) {
        let probe = &self.board.probe;
        probe
            .active
            .store(self.agent.state() == State::Active, Ordering::SeqCst);
        probe
            .pending
            .store(self.agent.shadow().has_pending(), Ordering::SeqCst);
        probe
            .registration_requests
            .store(self.agent.stats().registration_requests, Ordering::SeqCst);
    }
}

/// Runs device `i` with the real agent until `stop` turns true.
async fn run_device(
    broker: SocketAddr,
    i: u32,
    probe: Arc<Probe>,
    mut stop: watch::Receiver<bool>,
) -> (DriveEnd, DriveStats) {
    // Devices come up over a few seconds, not all in one millisecond.
    tokio::time::sleep(Duration::from_millis(20 * u64::from(i))).await;
    let device = id(i);
    let mut rx = vec![0u8; 2_048];
    let mut tx = vec![0u8; 8_192];
    let mut config = device::DeviceConfig::new(broker, device);
    config.connect_timeout = device::Duration::from_secs(10);
    config.session_expiry_secs = 120;
    config.backoff = Backoff {
        initial: device::Duration::from_millis(50),
        max: device::Duration::from_millis(1_000),
    };
    let mut session =
        DeviceSession::<8, 1024>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
    let mut outbox = AgentOutbox::new(device, 1, 64);
    let agent = LabAgent::new(
        device,
        1,
        DeviceSecret::from_bytes(secret(i)),
        device_config(),
    )
    .unwrap();
    let mut host = SimDevice {
        agent,
        board: Lab { probe },
    };
    host.agent.start(unix_ms(), &mut outbox).unwrap();
    run_agent(
        &mut host,
        &mut outbox,
        &mut session,
        &mut Tcp(&TokioTcp),
        &unix_ms,
        DriveConfig {
            max_connections: 20,
            ..DriveConfig::default()
        },
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await
}

/// Starts every device on [`DEVICE_THREADS`] threads; each thread returns its devices' ends.
fn spawn_devices(
    broker: SocketAddr,
    probes: &[Arc<Probe>],
    stop: &watch::Receiver<bool>,
) -> Vec<std::thread::JoinHandle<Vec<(u32, DriveEnd, DriveStats)>>> {
    (0..DEVICE_THREADS)
        .map(|t| {
            let mine: Vec<(u32, Arc<Probe>)> = probes
                .iter()
                .enumerate()
                .filter(|(i, _)| i % DEVICE_THREADS == t)
                .map(|(i, p)| (i as u32, p.clone()))
                .collect();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let tasks: Vec<_> = mine
                        .into_iter()
                        .map(|(i, probe)| {
                            let run = run_device(broker, i, probe, stop.clone());
                            tokio::task::spawn_local(async move {
                                let (end, stats) = run.await;
                                (i, end, stats)
                            })
                        })
                        .collect();
                    let mut ends = Vec::new();
                    for task in tasks {
                        ends.push(task.await.unwrap());
                    }
                    ends
                })
            })
        })
        .collect()
}

/// The fleet as the store holds it now (a fresh read, no node's memory).
fn stored(schema: &Schema) -> DurableServer {
    DurableServer::open(Box::new(store(schema)), server(), group_config()).unwrap()
}

/// Polls the store (once a second, bounded by [`WAIT`]) until `done` holds for every device;
/// panics with the devices it does not hold for.
fn wait_store(schema: &Schema, n: u32, what: &str, done: impl Fn(&DurableServer, u32) -> bool) {
    let start = Instant::now();
    loop {
        let fleet = stored(schema);
        let missing: Vec<u32> = (0..n).filter(|i| !done(&fleet, *i)).collect();
        drop(fleet.shutdown().unwrap());
        if missing.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: {} devices not there after {WAIT:?}, first {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The operator: a node of its own without a bridge (it serves no device messages) that
/// changes desired state durably, and an MQTT client that publishes to the devices.
struct Operator {
    node: DurableServer,
    client: rumqttc::v5::AsyncClient,
    /// The next message id per device: from the other half of the id space than the nodes'
    /// counters (which start at the low bits of the clock), so a device never takes an
    /// operator's message for a repeat of a node's reply.
    next_id: Vec<u32>,
}

impl Operator {
    fn publish(&mut self, i: u32, message: Downlink<Vec<u8>>) {
        use rumqttc::v5::mqttbytes::QoS;
        let message_id = self.next_id[i as usize];
        self.next_id[i as usize] = message_id.wrapping_add(1);
        let envelope = Envelope {
            device: id(i),
            seq: message_id,
            id: MessageId(message_id),
            qos: message.qos(),
            kind: message.kind(),
            payload: message.to_vec(),
        };
        let bytes = envelope.to_vec().unwrap();
        // The client's queue is bounded: wait for room (bounded in tries).
        for _ in 0..1_000 {
            match self.client.try_publish(
                format!("iot/{}/down", id(i)),
                QoS::AtLeastOnce,
                false,
                bytes.clone(),
            ) {
                Ok(()) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        panic!("device {i}: the operator's MQTT queue stayed full");
    }

    /// Sets device `i`'s desired LED (durable first; a conflict with a node's write reads
    /// the device again and tries again, bounded) and sends the delta.
    fn led(&mut self, i: u32, on: bool) {
        for _ in 0..50 {
            match self
                .node
                .set_desired(&admin(), &id(i), "led", Value::Bool(on), unix_ms())
            {
                Ok(Some(delta)) => return self.publish(i, delta),
                Ok(None) => panic!("device {i}: the desired LED {on} is already reported"),
                Err(DurableError::Conflict) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("device {i}: {e}"),
            }
        }
        panic!("device {i}: desired LED not kept after 50 conflicts");
    }

    fn command(&mut self, i: u32) {
        let command = Command::new(
            COMMAND_ID,
            unix_ms(),
            Command::NEVER_EXPIRES,
            CommandKind::BlinkLed {
                times: 1,
                period_ms: 50,
            },
        );
        self.publish(i, Downlink::Command(command));
    }
}

fn led_stored(fleet: &DurableServer, i: u32, on: bool) -> bool {
    fleet.reported(&admin(), &id(i), "led") == Some(Value::Bool(on))
}

#[test]
fn a_node_killed_mid_round_loses_nothing_and_the_others_serve_every_device() {
    let n = devices();
    let broker = Mosquitto::start();
    let schema = Schema::unique("iot_scale_out");
    let group = mosquitto::unique("scale-out");

    // The manufacturing records go to the store before any node opens it.
    let mut setup = stored(&schema);
    import(&mut setup, 0..n, unix_ms()).unwrap();
    drop(setup.shutdown().unwrap());

    // One node registers the fleet.
    let mut nodes = vec![Node::start(&schema, broker.addr, &group, "node-1")];
    let probes: Vec<Arc<Probe>> = (0..n).map(|_| Arc::default()).collect();
    let (stop, stopped) = watch::channel(false);
    let device_threads = spawn_devices(broker.addr, &probes, &stopped);
    wait_store(&schema, n, "registered", |fleet, i| {
        fleet
            .server()
            .fleet()
            .device(&admin(), &id(i))
            .is_ok_and(|r| r.state == State::Active)
    });

    let start = Instant::now();
    while probes.iter().any(|p| !p.active.load(Ordering::SeqCst)) {
        assert!(start.elapsed() < WAIT, "devices not Active on their side");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two more nodes join; from now on each gets a share of the devices' messages.
    nodes.push(Node::start(&schema, broker.addr, &group, "node-2"));
    nodes.push(Node::start(&schema, broker.addr, &group, "node-3"));

    let mut options = rumqttc::v5::MqttOptions::new(
        mosquitto::unique("operator"),
        broker.addr.ip().to_string(),
        broker.addr.port(),
    );
    options.set_credentials("backend", "");
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 4_096);
    // The operator's MQTT client runs here; the rest of the test is blocking code (the
    // PostgreSQL client is synchronous).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let events = runtime.spawn(async move {
        // Bounded: the test aborts it at the end.
        for _ in 0..10_000_000 {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let node = DurableServer::open_shared(
        Box::new(store(&schema)),
        Box::new(store(&schema)),
        server(),
        group_config(),
    )
    .unwrap();
    let id_base = (unix_ms() as u32).wrapping_add(0x8000_0000);
    let mut operator = Operator {
        node,
        client,
        next_id: vec![id_base; n as usize],
    };

    // Round 1: every device is sent LED on and a command; halfway, node 2 is killed.
    for i in 0..n {
        if i == n / 2 {
            nodes[1].kill();
        }
        operator.led(i, true);
        operator.command(i);
    }
    let round = |on: bool| {
        let schema = &schema;
        let probes = &probes;
        move || {
            wait_store(schema, n, &format!("LED {on} reported"), |fleet, i| {
                // The device took the desired state, no change of its waits for an
                // acknowledgement, and the store holds what it reported.
                let probe = &probes[i as usize];
                probe.led.load(Ordering::SeqCst) == on
                    && !probe.pending.load(Ordering::SeqCst)
                    && led_stored(fleet, i, on)
            });
        }
    };
    round(true)();
    let executed = || -> Vec<u32> {
        probes
            .iter()
            .map(|p| p.blinks.load(Ordering::SeqCst))
            .collect()
    };
    let start = Instant::now();
    while executed().contains(&0) {
        assert!(
            start.elapsed() < WAIT,
            "commands not executed: {:?}",
            executed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Round 2, after the kill: the two nodes left serve every device.
    for i in 0..n {
        operator.led(i, false);
    }
    round(false)();

    // The nodes went on for a while: still no command ran twice.
    std::thread::sleep(Duration::from_secs(2));
    let executed = executed();
    assert!(
        executed.iter().all(|b| *b == 1),
        "each command runs exactly once: {executed:?}"
    );
    assert!(!nodes[1].is_running());
    assert!(nodes[0].is_running() && nodes[2].is_running());

    stop.send(true).unwrap();
    for thread in device_threads {
        let ends = thread.join().unwrap();
        for (i, end, stats) in ends {
            assert_eq!(end, DriveEnd::Stopped);
            // The only message a device may refuse is the answer to a registration request
            // it repeated (the first answer came late and moved it on): one at most per
            // repeat.
            let repeats = probes[i as usize]
                .registration_requests
                .load(Ordering::SeqCst)
                .saturating_sub(1);
            assert!(stats.agent_errors <= repeats, "device {i}: {stats:?}");
        }
    }
    events.abort();
    drop(operator.node.shutdown().unwrap());
    for node in &mut nodes {
        let name = node.name.clone();
        if node.is_running() {
            node.kill();
        }
        assert!(!node.is_running(), "{name}");
    }
}
