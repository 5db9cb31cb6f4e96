//! The real device agent and the real backend through a mosquitto the test starts with TLS,
//! `require_certificate`, `use_identity_as_username` and `pattern` ACLs (certificates made
//! at test time with rcgen), with the broker killed and restarted in the middle of the run.
//!
//! Devices run `LabAgent` over the no_std `DeviceSession` with embedded-tls (TLS 1.3, client
//! certificate) and reach the broker through a TCP proxy (TLS passes through it untouched);
//! the bridge connects over rustls with its own certificate. The run: registration, a
//! shadow change; then the broker's acknowledgements are swallowed (devices keep messages
//! they believe unacknowledged), every device connection is cut, the broker is killed
//! (SIGKILL, no persistence) and started again; every device reconnects, resubscribes and
//! republishes; then a shadow change, a command and a firmware rollout. Every QoS 1 message
//! the agents produced reaches the application exactly once. Finally a client holding a
//! device's certificate sends garbage, an oversized payload, an envelope naming another
//! device and a publish under another device's topic: the ACL drops the last, the bridge
//! refuses and counts the others, and the backend sees none of them.
//!
//! Opt-in (feature `mosquitto-tests`), run by `.ci/steps/mqtt.sh`: fails when mosquitto is
//! not installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

#[path = "support/mosquitto.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iot_agent::{Board, Firmware, LabAgent, SensorSample};
use iot_core::message::{EnvelopeRef, OwnedEnvelope};
use iot_core::{DeviceId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::{
    DeviceServer, Fleet, ManufacturingRecord, Principal, Role, RolloutConfig, RolloutStatus, Scope,
};
use iot_lifecycle::State;
use iot_lifecycle::command::{
    AckOutcome, Command, CommandAck, CommandHandler, CommandKind, HandlerResult,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::mem_flash::MemFlash;
use iot_lifecycle::ota::{BootDecision, OtaUpdater, SlotLayout};
use iot_lifecycle::registration::DeviceSecret;
use iot_mqtt::agent::{AgentHost, AgentOutbox, DriveConfig, DriveEnd, DriveStats, run_agent};
use iot_mqtt::bridge::{Bridge, BridgeConfig, EnvelopeHandler};
use iot_mqtt::device::{self, Backoff, DeviceSession, DeviceStats};
use iot_mqtt::device_tls::{DeviceIdentity, TlsTcp};
use iot_mqtt::fleet::{FleetBackend, FleetEvent, unix_ms};
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use iot_protocol::Downlink;
use iot_shadow::Value;
use support::{Pki, Proxy, tls_broker, unique};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

type Flash = MemFlash<{ 8192 + 256 }, 256, 4>;
const LAYOUT: SlotLayout = SlotLayout {
    slot_a: 0,
    slot_b: 4096,
    slot_size: 4096,
    boot_state: 8192,
};
const DEVICES: usize = 3;
const GOOD: u32 = 2;
/// Every wait in this test is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn secret(i: usize) -> [u8; 32] {
    [u8::try_from(i).unwrap().wrapping_add(0x61); 32]
}

fn device_config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        // Telemetry twice a second: traffic in flight when the broker dies.
        telemetry_interval_ms: 500,
        ..DeviceConfig::DEFAULT
    }
}

fn admin() -> Principal {
    Principal::new(
        "ops",
        TenantId::new("lab").unwrap(),
        Scope::root(),
        Role::Admin,
    )
}

/// What the test reads of a device running on its own thread.
#[derive(Default)]
struct Probe {
    blinks: AtomicU32,
    led: AtomicBool,
    running_version: AtomicU32,
    restarts: AtomicU32,
    /// Every message the agent produced: id -> (kind, QoS, when).
    produced: Mutex<BTreeMap<u32, (MessageKind, QoS, u64)>>,
    /// Messages a device restart dropped before they were sent (its RAM is lost).
    dropped: Mutex<BTreeSet<u32>>,
}

impl Probe {
    fn record(&self, outbox: &AgentOutbox, now_ms: u64) {
        let mut produced = self.produced.lock().unwrap();
        for bytes in outbox.queued() {
            let envelope = EnvelopeRef::decode(bytes).unwrap();
            produced
                .entry(envelope.id.0)
                .or_insert((envelope.kind, envelope.qos, now_ms));
        }
    }
}

struct Lab {
    ota: Option<OtaUpdater<Flash>>,
    restart: bool,
    probe: Arc<Probe>,
}

impl CommandHandler for Lab {
    fn blink_led(&mut self, _times: u8, _period_ms: u16) -> HandlerResult {
        self.probe.blinks.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }
}

impl Board for Lab {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        SensorSample {
            // Changes at every sample, so report-on-change sends each one.
            temperature_c: Some(15.0 + (now_ms / 500 % 20) as f32),
            humidity_percent: Some(40.0),
            battery_percent: Some(90),
            battery_mv: Some(3_900),
            ..SensorSample::default()
        }
    }
    fn set_led(&mut self, on: bool) {
        self.probe.led.store(on, Ordering::SeqCst);
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
    board: Lab,
}

impl SimDevice {
    fn boot(id: DeviceId, index: usize, flash: Flash, probe: Arc<Probe>) -> Self {
        let mut ota = OtaUpdater::new(flash, LAYOUT).unwrap();
        let decision = ota.boot_check().unwrap();
        let version = match decision {
            BootDecision::Trial(_) => ota.boot_state().candidate_version,
            _ => ota.boot_state().active_version.max(1),
        };
        probe.running_version.store(version, Ordering::SeqCst);
        let agent = LabAgent::new(
            id,
            version,
            DeviceSecret::from_bytes(secret(index)),
            device_config(),
        )
        .unwrap();
        Self {
            id,
            index,
            agent,
            board: Lab {
                ota: Some(ota),
                restart: false,
                probe,
            },
        }
    }
}

impl AgentHost for SimDevice {
    type Board = Lab;

    fn parts(&mut self) -> (&mut LabAgent, &mut Lab) {
        (&mut self.agent, &mut self.board)
    }

    fn after_step(&mut self, now_ms: u64, outbox: &mut AgentOutbox) {
        self.board.probe.record(outbox, now_ms);
        if !self.board.restart {
            return;
        }
        let probe = self.board.probe.clone();
        {
            let mut dropped = probe.dropped.lock().unwrap();
            for bytes in outbox.queued() {
                dropped.insert(EnvelopeRef::decode(bytes).unwrap().id.0);
            }
        }
        let flash = self.board.ota.take().unwrap().into_flash();
        *self = Self::boot(self.id, self.index, flash, probe.clone());
        probe.restarts.fetch_add(1, Ordering::SeqCst);
        outbox.clear();
        self.agent.start(now_ms, outbox).unwrap();
        probe.record(outbox, now_ms);
    }
}

/// A device's TLS material (DER), made by the test's CA.
#[derive(Clone)]
struct Material {
    ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

type DeviceRun = (DriveEnd, DriveStats, DeviceStats);

fn spawn_device(
    proxy: SocketAddr,
    id: DeviceId,
    index: usize,
    material: Material,
    probe: Arc<Probe>,
    stop: oneshot::Receiver<()>,
) -> std::thread::JoinHandle<DeviceRun> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut rx = vec![0u8; 2_048];
            let mut tx = vec![0u8; 16_384];
            let mut config = device::DeviceConfig::new(proxy, id);
            config.connect_timeout = device::Duration::from_secs(5);
            config.session_expiry_secs = 60;
            config.backoff = Backoff {
                initial: device::Duration::from_millis(20),
                max: device::Duration::from_millis(500),
            };
            let mut session =
                DeviceSession::<8, 1024>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
            let mut read_buf = vec![0u8; 16_640];
            let mut write_buf = vec![0u8; 16_640];
            let identity = DeviceIdentity {
                ca_der: &material.ca_der,
                cert_der: &material.cert_der,
                key_pkcs8_der: &material.key_der,
                server_name: "localhost",
            };
            let mut connector = TlsTcp::new(
                &TokioTcp,
                identity,
                rand_core::OsRng,
                &mut read_buf,
                &mut write_buf,
            )
            .unwrap();
            let mut outbox = AgentOutbox::new(id, 1, 64);
            let mut device = SimDevice::boot(id, index, Flash::new(), probe.clone());
            let now = unix_ms();
            device.agent.start(now, &mut outbox).unwrap();
            probe.record(&outbox, now);
            let (end, stats) = run_agent(
                &mut device,
                &mut outbox,
                &mut session,
                &mut connector,
                &unix_ms,
                DriveConfig {
                    max_connections: 50,
                    ..DriveConfig::default()
                },
                async {
                    let _ = stop.await;
                },
            )
            .await;
            (end, stats, session.stats())
        })
    })
}

/// What reached the application: every envelope the bridge handed to the backend.
type Delivered = (DeviceId, u32, MessageKind);

/// The backend behind the bridge, recording what the bridge delivers to it.
struct Recording {
    backend: FleetBackend,
    log: mpsc::UnboundedSender<Delivered>,
}

impl EnvelopeHandler for Recording {
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send {
        let _ = self.log.send((device, envelope.id.0, envelope.kind));
        let replies = self.backend.handle_envelope(device, &envelope);
        async move { replies }
    }
}

/// A plain rumqttc client over TLS with a certificate for `cn`.
async fn raw_client(
    broker: SocketAddr,
    pki: &Pki,
    cn: &str,
) -> (rumqttc::v5::AsyncClient, tokio::task::JoinHandle<()>) {
    let mut options =
        rumqttc::v5::MqttOptions::new(unique("raw"), "127.0.0.1".to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_tls(cn).rustls_config().unwrap()),
    ));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (ready_tx, mut ready) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        for _ in 0..100_000 {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                    _,
                ))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    timeout(WAIT, ready.recv())
        .await
        .expect("the raw client connected")
        .unwrap();
    (client, task)
}

fn envelope_bytes(device: DeviceId, id: u32, kind: MessageKind) -> Vec<u8> {
    iot_core::message::Envelope {
        device,
        seq: id,
        id: iot_core::MessageId(id),
        qos: QoS::AtLeastOnce,
        kind,
        payload: Vec::new(),
    }
    .to_vec()
    .unwrap()
}

/// Waits until the bridge's subscription on the broker is in place: a probe with its own
/// certificate publishes heartbeats until the backend refuses one (it is no fleet device).
async fn wait_bridge_subscribed(
    broker: SocketAddr,
    pki: &Pki,
    events: &mut mpsc::Receiver<FleetEvent>,
) {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let probe = DeviceId::new(&unique("probe")).unwrap();
    let (client, task) = raw_client(broker, pki, probe.as_str()).await;
    let mut refused = false;
    'probing: for attempt in 0..100u32 {
        client
            .publish(
                format!("iot/{probe}/up"),
                MqttQoS::AtLeastOnce,
                false,
                envelope_bytes(probe, attempt, MessageKind::Heartbeat),
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            if matches!(event, FleetEvent::Refused { device, .. } if device == probe) {
                refused = true;
                break 'probing;
            }
        }
    }
    assert!(refused, "the bridge never handed the probe to the backend");
    let _ = client.disconnect().await;
    task.abort();
}

fn command_ack(event: &FleetEvent) -> Option<(DeviceId, CommandAck)> {
    match event {
        FleetEvent::Unhandled { device, envelope } if envelope.kind == MessageKind::CommandAck => {
            iot_core::codec::decode::<CommandAck>(&envelope.payload)
                .ok()
                .map(|ack| (*device, ack))
        }
        _ => None,
    }
}

/// Moves what the bridge delivered so far into `log`.
fn drain(delivered: &mut mpsc::UnboundedReceiver<Delivered>, log: &mut Vec<Delivered>) {
    while let Ok(d) = delivered.try_recv() {
        log.push(d);
    }
}

async fn led_round(backend: &FleetBackend, bridge: &Bridge, ids: &[DeviceId], on: bool) {
    let admin = admin();
    for id in ids {
        let now = backend.now_ms();
        let delta = backend
            .with_server(|s| s.set_desired(&admin, id, "led", Value::Bool(on), now))
            .unwrap()
            .expect("the desired value differs from the reported one");
        backend
            .send(&bridge.downlink(), *id, vec![delta])
            .await
            .unwrap();
    }
    timeout(
        WAIT,
        backend.wait_until(|s| {
            ids.iter()
                .all(|id| s.reported(&admin, id, "led") == Some(Value::Bool(on)))
        }),
    )
    .await
    .expect("every device reported the desired LED state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_agents_over_tls_with_client_certificates_survive_a_broker_restart() {
    let pki = Pki::new();
    let mut broker = tls_broker(&pki);
    assert!(broker.addr.ip().is_loopback());
    let admin = admin();
    let run = unique("tls");
    let ids: Vec<DeviceId> = (0..DEVICES)
        .map(|i| DeviceId::new(&format!("{run}-{i}")).unwrap())
        .collect();

    // The backend: the lab's device class, the devices' records, an image.
    let site: Scope = "site".parse().unwrap();
    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let records = (0..DEVICES)
        .map(|i| ManufacturingRecord {
            device_id: ids[i],
            secret: secret(i),
            sku: "TH".into(),
            serial: u64::try_from(i).unwrap(),
        })
        .collect();
    fleet
        .import_manufacturing(&admin, &site, records, 0)
        .unwrap();
    let mut server =
        DeviceServer::with_os_rng(fleet, device_config(), NodeId(1)).with_ota_jitter(0);
    let image: Vec<u8> = (0..1_500u32).map(|i| (i * 7 % 251) as u8).collect();
    server.publish_firmware(GOOD, image).unwrap();
    let backend = FleetBackend::new(server);
    let mut events = backend.events(16_384);
    let (log_tx, mut delivered) = mpsc::unbounded_channel();
    let mut config = BridgeConfig::new("127.0.0.1", broker.addr.port(), "backend");
    config.group = format!("{run}-fleet");
    config.tls = Some(pki.client_tls("backend"));
    let bridge = Bridge::spawn(
        config,
        Recording {
            backend: backend.clone(),
            log: log_tx,
        },
    )
    .unwrap();
    wait_bridge_subscribed(broker.addr, &pki, &mut events).await;
    let mut log: Vec<Delivered> = Vec::new();

    // Devices, each with its own certificate, through the proxy.
    let proxy = Proxy::start(broker.addr).await;
    let probes: Vec<Arc<Probe>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let leaf = pki.leaf(ids[i].as_str(), &[]);
        let material = Material {
            ca_der: pki.ca.der().to_vec(),
            cert_der: leaf.cert_der,
            key_der: leaf.key_der,
        };
        let (stop, stopped) = oneshot::channel();
        stops.push(stop);
        threads.push(spawn_device(
            proxy.addr,
            ids[i],
            i,
            material,
            probe.clone(),
            stopped,
        ));
    }

    // 1. Registration and a shadow change.
    timeout(
        WAIT,
        backend.wait_until(|s| {
            ids.iter().all(|id| {
                s.fleet()
                    .device(&admin, id)
                    .is_ok_and(|r| r.state == State::Active && r.online)
            })
        }),
    )
    .await
    .expect("every device registered and became Active over TLS");
    led_round(&backend, &bridge, &ids, true).await;

    // 2. The broker dies mid-run. First its acknowledgements are lost for a while (devices
    //    keep sending telemetry they will have to republish), then every device connection
    //    is cut, the broker is killed and started again with no memory of any session.
    proxy.swallow_downstream();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    proxy.close();
    proxy.cut().await;
    broker.restart();
    wait_bridge_subscribed(broker.addr, &pki, &mut events).await;
    drain(&mut delivered, &mut log);
    let mark = log.len();
    proxy.open();
    // Every device is back: a device sends nothing on a fresh session before its SUBACK, so
    // a message from it means it has resubscribed.
    timeout(WAIT, async {
        loop {
            drain(&mut delivered, &mut log);
            if ids
                .iter()
                .all(|id| log[mark..].iter().any(|(d, _, _)| d == id))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every device reconnected and resubscribed");

    // 3. After the restart: a shadow change, a command, a firmware rollout.
    led_round(&backend, &bridge, &ids, false).await;
    assert!(probes.iter().all(|p| !p.led.load(Ordering::SeqCst)));
    for id in &ids {
        let command = Command::new(
            21,
            backend.now_ms(),
            Command::NEVER_EXPIRES,
            CommandKind::BlinkLed {
                times: 1,
                period_ms: 50,
            },
        );
        backend
            .send(&bridge.downlink(), *id, vec![Downlink::Command(command)])
            .await
            .unwrap();
    }
    let mut acks: HashMap<DeviceId, u32> = HashMap::new();
    timeout(WAIT, async {
        while acks.len() < DEVICES {
            let event = events.recv().await.expect("event queue open");
            if let Some((device, ack)) = command_ack(&event)
                && ack.command_id == 21
            {
                assert_eq!(ack.outcome, AckOutcome::Accepted, "{device}");
                *acks.entry(device).or_default() += 1;
            }
        }
    })
    .await
    .expect("every device acknowledged the command");
    let now = backend.now_ms();
    let rollout = backend
        .with_server(|s| {
            s.start_ota(
                &admin,
                &site,
                GOOD,
                Some(1),
                RolloutConfig {
                    stages_bp: vec![10_000],
                    max_failure_bp: 0,
                    report_timeout_ms: 600_000,
                    ..RolloutConfig::default()
                },
                now,
            )
        })
        .unwrap();
    assert_eq!(backend.poll_ota(&bridge.downlink()).await.unwrap(), DEVICES);
    timeout(
        WAIT,
        backend.wait_until(|s| {
            s.fleet()
                .rollout(&admin, rollout)
                .is_ok_and(|r| r.rollout.status() == RolloutStatus::Completed)
        }),
    )
    .await
    .expect("the rollout completed after the broker restart");
    for probe in &probes {
        assert_eq!(probe.running_version.load(Ordering::SeqCst), GOOD);
        assert_eq!(probe.restarts.load(Ordering::SeqCst), 1);
        assert_eq!(probe.blinks.load(Ordering::SeqCst), 1, "executed once");
    }
    // Every message produced before now has had time to arrive.
    let cutoff = unix_ms();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4. A client holding device 0's certificate misbehaves.
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let before = bridge.counts();
    let (raw, raw_task) = raw_client(broker.addr, &pki, ids[0].as_str()).await;
    let own = format!("iot/{}/up", ids[0]);
    let publish = |topic: String, bytes: Vec<u8>| {
        let raw = raw.clone();
        async move {
            raw.publish(topic, MqttQoS::AtLeastOnce, false, bytes)
                .await
                .unwrap();
        }
    };
    publish(own.clone(), b"\xff\x00 not an envelope".to_vec()).await;
    publish(own.clone(), vec![0xa5; 4_096 + 100]).await;
    publish(
        own.clone(),
        envelope_bytes(ids[1], 900_001, MessageKind::Telemetry),
    )
    .await;
    publish(
        format!("iot/{}/up", ids[1]),
        envelope_bytes(ids[1], 900_002, MessageKind::Telemetry),
    )
    .await;
    // A marker on its own topic: once it arrives, everything before it was dealt with.
    publish(own, envelope_bytes(ids[0], 900_003, MessageKind::Heartbeat)).await;
    timeout(WAIT, async {
        loop {
            drain(&mut delivered, &mut log);
            if log.iter().any(|(_, id, _)| *id == 900_003) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the marker arrived");
    let after = bridge.counts();
    assert_eq!(
        after.refused_garbage - before.refused_garbage,
        1,
        "{after:?}"
    );
    assert_eq!(
        after.refused_oversized - before.refused_oversized,
        1,
        "{after:?}"
    );
    assert_eq!(
        after.refused_identity - before.refused_identity,
        1,
        "{after:?}"
    );
    assert!(
        !log.iter()
            .any(|(_, id, _)| *id == 900_001 || *id == 900_002),
        "a forged message reached the backend"
    );
    let _ = raw.disconnect().await;
    raw_task.abort();

    // Stop the devices.
    for stop in stops {
        let _ = stop.send(());
    }
    let mut republished = 0;
    for thread in threads {
        let (end, stats, session) =
            timeout(WAIT, tokio::task::spawn_blocking(move || thread.join()))
                .await
                .expect("the device stopped")
                .unwrap()
                .unwrap();
        assert_eq!(end, DriveEnd::Stopped);
        assert_eq!(stats.send_refused, 0, "{stats:?}");
        assert_eq!(stats.agent_errors, 0, "{stats:?}");
        assert!(
            stats.connects >= 2,
            "reconnected after the restart: {stats:?}"
        );
        assert!(session.connects >= 2, "{session:?}");
        assert_eq!(
            session.refused_garbage + session.refused_identity + session.refused_topic,
            0,
            "{session:?}"
        );
        republished += session.republished;
    }
    assert!(
        republished >= 1,
        "some message lost its PUBACK and was republished"
    );
    assert!(
        bridge.counts().duplicates >= 1,
        "the bridge dropped a republished message: {:?}",
        bridge.counts()
    );
    drain(&mut delivered, &mut log);

    // Exactly once: every QoS 1 message an agent produced before the cutoff reached the
    // application once; nothing reached it twice.
    for (id, probe) in ids.iter().zip(&probes) {
        let mut seen: HashMap<u32, u32> = HashMap::new();
        for (_, message, _) in log.iter().filter(|(d, _, _)| d == id) {
            *seen.entry(*message).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{id}: delivered twice: {twice:?}");
        let produced = probe.produced.lock().unwrap();
        let dropped = probe.dropped.lock().unwrap();
        let mut expected = 0;
        for (message, (kind, qos, at)) in produced.iter() {
            if *qos == QoS::AtMostOnce || *at > cutoff || dropped.contains(message) {
                continue;
            }
            expected += 1;
            assert_eq!(
                seen.get(message),
                Some(&1),
                "{id}: QoS 1 message {message} ({kind:?}) not delivered exactly once"
            );
        }
        assert!(expected >= 10, "{id}: only {expected} QoS 1 messages");
    }
    assert_eq!(acks.values().copied().collect::<Vec<_>>(), vec![1; DEVICES]);
    assert_eq!(backend.counts().events_dropped, 0);
    proxy.stop();
    bridge.shutdown().await;
}
