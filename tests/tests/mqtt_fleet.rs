//! The real device agent and the real backend over MQTT, through the embedded broker on a
//! loopback ephemeral port: several `LabAgent`s, each on its own `DeviceSession`, register
//! with the fleet's `DeviceServer` behind the bridge (their lifecycle reaches `Active` in the
//! fleet record, learnt from the wire), take an operator's desired shadow value and report it
//! back, execute and acknowledge a command exactly once, and install a firmware image pulled
//! in blocks, restart into it and confirm it, completing the rollout.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use iot_agent::{Board, Firmware, LabAgent, SensorSample};
use iot_core::{DeviceId, MessageKind, NodeId, TenantId};
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
use iot_mqtt::bridge::{Bridge, BridgeConfig};
use iot_mqtt::broker::EmbeddedBroker;
use iot_mqtt::device::{self, Backoff, DeviceSession, DeviceStats, Tcp};
use iot_mqtt::fleet::{FleetBackend, FleetEvent, unix_ms};
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use iot_protocol::Downlink;
use iot_shadow::Value;
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
const COMMAND_ID: u32 = 7;
/// Every wait in this test is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn secret(i: usize) -> [u8; 32] {
    [u8::try_from(i).unwrap().wrapping_add(0x41); 32]
}

fn device_config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    }
}

/// Device `i` of a run: `run` keeps runs on a shared broker apart.
fn device_id(run: &str, i: usize) -> DeviceId {
    DeviceId::new(&format!("{run}-{i:02}")).unwrap()
}

/// What the test reads of a device running on its own thread.
#[derive(Default)]
struct Probe {
    blinks: AtomicU32,
    led: AtomicBool,
    running_version: AtomicU32,
    restarts: AtomicU32,
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
    fn sample(&mut self, _now_ms: u64) -> SensorSample {
        SensorSample {
            temperature_c: Some(21.5),
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

/// The running version an updater's boot decision implies.
fn running_version(ota: &OtaUpdater<Flash>, decision: BootDecision) -> u32 {
    match decision {
        BootDecision::Trial(_) => ota.boot_state().candidate_version,
        _ => ota.boot_state().active_version.max(1),
    }
}

struct SimDevice {
    id: DeviceId,
    index: usize,
    agent: LabAgent,
    board: Lab,
}

impl SimDevice {
    /// Boots from `flash`: the updater decides which image runs, the agent starts fresh.
    fn boot(id: DeviceId, index: usize, flash: Flash, probe: Arc<Probe>) -> Self {
        let mut ota = OtaUpdater::new(flash, LAYOUT).unwrap();
        let decision = ota.boot_check().unwrap();
        let version = running_version(&ota, decision);
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
        if !self.board.restart {
            return;
        }
        // A restart keeps the flash and loses the RAM.
        let probe = self.board.probe.clone();
        let flash = self.board.ota.take().unwrap().into_flash();
        *self = Self::boot(self.id, self.index, flash, probe.clone());
        probe.restarts.fetch_add(1, Ordering::SeqCst);
        outbox.clear();
        self.agent.start(now_ms, outbox).unwrap();
    }
}

type DeviceRun = (DriveEnd, DriveStats, DeviceStats);

/// Runs device `index` on its own thread (the session's futures are not `Send`, as on a
/// microcontroller's executor) until `stop` fires.
fn spawn_device(
    broker: SocketAddr,
    id: DeviceId,
    index: usize,
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
            let mut config = device::DeviceConfig::new(broker, id);
            config.connect_timeout = device::Duration::from_secs(5);
            config.session_expiry_secs = 60;
            config.backoff = Backoff {
                initial: device::Duration::from_millis(20),
                max: device::Duration::from_millis(500),
            };
            let mut session =
                DeviceSession::<8, 1024>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
            let mut outbox = AgentOutbox::new(id, 1, 64);
            let mut device = SimDevice::boot(id, index, Flash::new(), probe);
            device.agent.start(unix_ms(), &mut outbox).unwrap();
            let drive = DriveConfig {
                max_connections: 20,
                ..DriveConfig::default()
            };
            let (end, stats) = run_agent(
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
            (end, stats, session.stats())
        })
    })
}

/// Waits until the bridge's subscription is in place: a probe that is no fleet device
/// publishes a heartbeat until the backend refuses one of them (bounded count and time).
async fn wait_bridge_subscribed(
    broker: SocketAddr,
    run: &str,
    events: &mut mpsc::Receiver<FleetEvent>,
) {
    use rumqttc::v5::mqttbytes::QoS;
    let probe = DeviceId::new(&format!("{run}-probe")).unwrap();
    let mut options =
        rumqttc::v5::MqttOptions::new(probe.as_str(), broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
    let task = tokio::spawn(async move {
        for _ in 0..10_000 {
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    });
    let heartbeat = iot_core::message::Envelope {
        device: probe,
        seq: 0,
        id: iot_core::MessageId(0),
        qos: iot_core::QoS::AtLeastOnce,
        kind: MessageKind::Heartbeat,
        payload: Vec::new(),
    }
    .to_vec()
    .unwrap();
    let mut refused = false;
    'probing: for attempt in 0..100u32 {
        // A new id each time: the bridge drops repeats of an id.
        let mut bytes = heartbeat.clone();
        let envelope = iot_core::message::OwnedEnvelope::decode(&bytes).unwrap();
        bytes = iot_core::message::Envelope {
            id: iot_core::MessageId(attempt),
            seq: attempt,
            ..envelope
        }
        .to_vec()
        .unwrap();
        client
            .publish(format!("iot/{probe}/up"), QoS::AtLeastOnce, false, bytes)
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

/// Waits for the next event that `want` keeps, logging every event on the way.
async fn next_event(
    events: &mut mpsc::Receiver<FleetEvent>,
    log: &mut Vec<FleetEvent>,
    mut want: impl FnMut(&FleetEvent) -> bool,
) -> FleetEvent {
    timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("event queue closed");
            log.push(event.clone());
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for a fleet event")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_agents_register_sync_take_a_command_and_an_image_over_mqtt() {
    let broker = EmbeddedBroker::start().unwrap();
    assert!(broker.addr().ip().is_loopback());
    assert_ne!(broker.addr().port(), 1883);
    lab_scenario(broker.addr(), "mq").await;
}

/// The same run through the machine's Mosquitto (`.ci/steps/mqtt.sh`); a broker that cannot
/// be reached fails the test.
#[cfg(feature = "mosquitto-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_agents_over_the_machines_mosquitto() {
    let broker: SocketAddr = "127.0.0.1:1883".parse().unwrap();
    std::net::TcpStream::connect_timeout(&broker, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the machine's Mosquitto must listen on {broker}: {e}"));
    // Names of this run only: the machine's broker is shared.
    lab_scenario(broker, &format!("mq{}", std::process::id())).await;
}

/// Registration, shadow, command and firmware rollout for [`DEVICES`] agents through the
/// broker at `broker`; `run` names this run's devices, bridge and group.
async fn lab_scenario(broker: SocketAddr, run: &str) {
    // The backend: the lab's device class, the devices' manufacturing records, an image.
    let tenant = TenantId::new("lab").unwrap();
    let admin = Principal::new("ops", tenant, Scope::root(), Role::Admin);
    let site: Scope = "site".parse().unwrap();
    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let records = (0..DEVICES)
        .map(|i| ManufacturingRecord {
            device_id: device_id(run, i),
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
    let mut config = BridgeConfig::new(
        broker.ip().to_string(),
        broker.port(),
        format!("{run}-backend"),
    );
    config.group = format!("{run}-fleet");
    let bridge = Bridge::spawn(config, backend.clone()).unwrap();
    let downlink = bridge.downlink();
    // The event queue reaches the bridge's clone of the backend too.
    let mut events = backend.events(4_096);
    let mut log = Vec::new();
    wait_bridge_subscribed(broker, run, &mut events).await;

    // Devices start, each on its own session.
    let ids: Vec<DeviceId> = (0..DEVICES).map(|i| device_id(run, i)).collect();
    let probes: Vec<Arc<Probe>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let (stop, stopped) = oneshot::channel();
        stops.push(stop);
        threads.push(spawn_device(broker, ids[i], i, probe.clone(), stopped));
    }

    // 1. Registration: every device reaches Active in the fleet record, learnt from the
    //    lifecycle reports that came over the wire.
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
    .expect("every device registered and became Active");

    // 2. Shadow: an operator's desired LED reaches each device, which reports it back.
    for id in &ids {
        let now = backend.now_ms();
        let delta = backend
            .with_server(|s| s.set_desired(&admin, id, "led", Value::Bool(true), now))
            .unwrap()
            .expect("the desired value differs from the reported one");
        assert_eq!(backend.send(&downlink, *id, vec![delta]).await.unwrap(), 1);
    }
    timeout(
        WAIT,
        backend.wait_until(|s| {
            ids.iter()
                .all(|id| s.reported(&admin, id, "led") == Some(Value::Bool(true)))
        }),
    )
    .await
    .expect("every device reported the desired LED state");
    assert!(probes.iter().all(|p| p.led.load(Ordering::SeqCst)));

    // 3. A command to each device: executed and acknowledged once.
    for id in &ids {
        let command = Command::new(
            COMMAND_ID,
            backend.now_ms(),
            Command::NEVER_EXPIRES,
            CommandKind::BlinkLed {
                times: 2,
                period_ms: 100,
            },
        );
        backend
            .send(&downlink, *id, vec![Downlink::Command(command)])
            .await
            .unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < DEVICES {
        let event = next_event(&mut events, &mut log, |e| command_ack(e).is_some()).await;
        let (device, ack) = command_ack(&event).unwrap();
        assert_eq!(ack.command_id, COMMAND_ID);
        assert_eq!(ack.outcome, AckOutcome::Accepted, "{device}");
        assert!(!acked.contains(&device), "{device} acknowledged twice");
        acked.push(device);
    }

    // 4. A rollout of the image to all of them: jobs go out, blocks are pulled, each device
    //    restarts into the image on trial and confirms it.
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
    assert_eq!(backend.poll_ota(&downlink).await.unwrap(), DEVICES);
    timeout(
        WAIT,
        backend.wait_until(|s| {
            s.fleet()
                .rollout(&admin, rollout)
                .is_ok_and(|r| r.rollout.status() == RolloutStatus::Completed)
        }),
    )
    .await
    .expect("the rollout completed");
    {
        let counts = bridge.counts();
        assert_eq!(
            counts.refused_identity + counts.refused_garbage,
            0,
            "{counts:?}"
        );
    }
    backend.with_server(|s| {
        for id in &ids {
            let record = s.fleet().device(&admin, id).unwrap();
            assert_eq!(record.firmware.as_deref(), Some("2"), "{id}");
            assert_eq!(record.state, State::Active, "{id}");
            assert_eq!(record.illegal_transitions, 0, "{id}");
        }
    });
    for probe in &probes {
        assert_eq!(probe.running_version.load(Ordering::SeqCst), GOOD);
        assert_eq!(probe.restarts.load(Ordering::SeqCst), 1);
    }

    // Stop the devices and look at what happened on the way.
    for stop in stops {
        let _ = stop.send(());
    }
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
        assert_eq!(stats.connects, 1, "{stats:?}");
        // The image of 1,500 bytes came in 6 blocks, besides registration, shadow and command.
        assert!(stats.received >= 6 + 4, "{stats:?}");
        assert_eq!(
            session.refused_garbage + session.refused_identity,
            0,
            "{session:?}"
        );
    }
    while let Ok(event) = events.try_recv() {
        log.push(event);
    }
    // Exactly one acknowledgement of the command per device, and each executed once.
    for id in &ids {
        let acks = log
            .iter()
            .filter_map(command_ack)
            .filter(|(d, ack)| d == id && ack.command_id == COMMAND_ID)
            .count();
        assert_eq!(acks, 1, "{id}");
    }
    assert!(probes.iter().all(|p| p.blinks.load(Ordering::SeqCst) == 1));
    // The backend refused nothing from the fleet's devices.
    let refused: Vec<&FleetEvent> = log
        .iter()
        .filter(|e| matches!(e, FleetEvent::Refused { device, .. } if ids.contains(device)))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(backend.counts().events_dropped, 0);
    bridge.shutdown().await;
}
