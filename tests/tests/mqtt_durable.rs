//! The MQTT bridge feeding a durable backend: real `LabAgent`s on their own
//! `DeviceSession`s talk through the embedded broker to a `FleetBackend` over a
//! `DurableServer` on SQLite in a temporary directory. The backend (bridge and server) is shut
//! down and started again from the same file while the devices keep running: they register
//! once, the shadow and the operator's commands keep working after the restart, nothing the
//! backend acknowledged is lost, and the audit chain verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use iot_agent::{Board, LabAgent, SensorSample};
use iot_core::{DeviceId, MessageKind, NodeId, TenantId};
use iot_fleet::durable::{DurableServer, action_code};
use iot_fleet::{AuditAction, DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::State;
use iot_lifecycle::command::{
    AckOutcome, Command, CommandAck, CommandHandler, CommandKind, HandlerResult,
};
use iot_lifecycle::config::DeviceConfig;
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
use iot_store::{GroupCommitConfig, SqliteStore, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const DEVICES: usize = 3;
/// Every wait in this test is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

fn secret(i: usize) -> [u8; 32] {
    [u8::try_from(i).unwrap().wrapping_add(0x51); 32]
}

fn device_config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    }
}

fn device_id(i: usize) -> DeviceId {
    DeviceId::new(&format!("dur-{i:02}")).unwrap()
}

fn admin() -> Principal {
    Principal::new(
        "ops",
        TenantId::new("lab").unwrap(),
        Scope::root(),
        Role::Admin,
    )
}

#[derive(Default)]
struct Probe {
    blinks: AtomicU32,
    led: AtomicBool,
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
}

type DeviceRun = (DriveEnd, DriveStats, DeviceStats);

fn spawn_device(
    broker: SocketAddr,
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
            let id = device_id(index);
            let mut rx = vec![0u8; 2_048];
            let mut tx = vec![0u8; 8_192];
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
            let agent = LabAgent::new(
                id,
                1,
                DeviceSecret::from_bytes(secret(index)),
                device_config(),
            )
            .unwrap();
            let mut device = SimDevice {
                agent,
                board: Lab { probe },
            };
            device.agent.start(unix_ms(), &mut outbox).unwrap();
            let (end, stats) = run_agent(
                &mut device,
                &mut outbox,
                &mut session,
                &mut Tcp(&TokioTcp),
                &unix_ms,
                DriveConfig {
                    max_connections: 20,
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

/// Opens the durable server on the SQLite file at `path`: the fleet comes from the store, the
/// device class is code and is registered again at every start.
fn open(path: &Path) -> DurableServer {
    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    let server = DeviceServer::with_os_rng(fleet, device_config(), NodeId(1));
    DurableServer::open_at(
        Box::new(SqliteStore::open(path).unwrap()),
        server,
        GroupCommitConfig::default(),
        unix_ms(),
    )
    .unwrap()
}

/// A backend process: the durable server behind a bridge in the fleet's group.
struct Backend {
    fleet: FleetBackend<DurableServer>,
    bridge: Bridge,
    events: mpsc::Receiver<FleetEvent>,
}

async fn start_backend(broker: SocketAddr, server: DurableServer, generation: u32) -> Backend {
    let fleet = FleetBackend::new(server);
    let mut config = BridgeConfig::new(
        broker.ip().to_string(),
        broker.port(),
        format!("dur-backend-{generation}"),
    );
    config.group = "dur-fleet".to_string();
    let bridge = Bridge::spawn(config, fleet.clone()).unwrap();
    let mut events = fleet.events(4_096);
    wait_bridge_subscribed(broker, &mut events).await;
    Backend {
        fleet,
        bridge,
        events,
    }
}

/// Stops a backend process: the bridge leaves the broker, the server commits what is queued
/// and hands its store back.
async fn stop_backend(backend: Backend) -> Box<dyn Store + Send> {
    let Backend { fleet, bridge, .. } = backend;
    bridge.shutdown().await;
    let server = fleet
        .into_server()
        .unwrap_or_else(|_| panic!("the bridge's clone of the backend outlived it"));
    server.shutdown().unwrap()
}

/// Waits until the bridge's subscription is in place: a probe that is no fleet device
/// publishes a heartbeat until the backend refuses one (bounded count and time).
async fn wait_bridge_subscribed(broker: SocketAddr, events: &mut mpsc::Receiver<FleetEvent>) {
    use rumqttc::v5::mqttbytes::QoS;
    let probe = DeviceId::new("dur-probe").unwrap();
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
    let mut refused = false;
    'probing: for attempt in 0..100u32 {
        let bytes = iot_core::message::Envelope {
            device: probe,
            seq: attempt,
            id: iot_core::MessageId(attempt),
            qos: iot_core::QoS::AtLeastOnce,
            kind: MessageKind::Heartbeat,
            payload: Vec::new(),
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

/// Sends command `command_id` to every device and waits until each acknowledged it once.
async fn command_round(backend: &mut Backend, ids: &[DeviceId], command_id: u32) {
    let downlink = backend.bridge.downlink();
    for id in ids {
        let command = Command::new(
            command_id,
            backend.fleet.now_ms(),
            Command::NEVER_EXPIRES,
            CommandKind::BlinkLed {
                times: 1,
                period_ms: 50,
            },
        );
        backend
            .fleet
            .send(&downlink, *id, vec![Downlink::Command(command)])
            .await
            .unwrap();
    }
    let mut acked = Vec::new();
    timeout(WAIT, async {
        while acked.len() < ids.len() {
            let event = backend.events.recv().await.expect("event queue open");
            if let FleetEvent::Refused { device, .. } = &event {
                assert!(
                    !ids.contains(device),
                    "a fleet device was refused: {event:?}"
                );
            }
            if let Some((device, ack)) = command_ack(&event)
                && ack.command_id == command_id
            {
                assert_eq!(ack.outcome, AckOutcome::Accepted, "{device}");
                assert!(!acked.contains(&device), "{device} acknowledged twice");
                acked.push(device);
            }
        }
    })
    .await
    .expect("every device acknowledged the command");
}

/// Sets the desired LED of every device (committed before the delta goes out) and waits until
/// each reported it back.
async fn led_round(backend: &Backend, ids: &[DeviceId], on: bool) {
    let admin = admin();
    let downlink = backend.bridge.downlink();
    for id in ids {
        let now = backend.fleet.now_ms();
        let delta = backend
            .fleet
            .with_server(|s| s.set_desired(&admin, id, "led", Value::Bool(on), now))
            .unwrap()
            .expect("the desired value differs from the reported one");
        assert_eq!(
            backend
                .fleet
                .send(&downlink, *id, vec![delta])
                .await
                .unwrap(),
            1
        );
    }
    timeout(
        WAIT,
        backend.fleet.wait_until(|s| {
            ids.iter()
                .all(|id| s.reported(&admin, id, "led") == Some(Value::Bool(on)))
        }),
    )
    .await
    .expect("every device reported the desired LED state");
}

/// Counts the stored audit entries with `action`.
fn count_action(store: &mut dyn Store, action: u16) -> usize {
    let head = store.audit_head().unwrap();
    let mut n = 0;
    let mut from = 1;
    while from <= head.seq {
        let page = store.audit_range(from, 1_000).unwrap();
        n += page.iter().filter(|r| r.event.action == action).count();
        from = page.last().unwrap().seq + 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_keep_working_across_a_restart_of_the_durable_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let admin = admin();
    let broker = EmbeddedBroker::start().unwrap();
    let ids: Vec<DeviceId> = (0..DEVICES).map(device_id).collect();

    // First backend process: the manufacturing records go to the store.
    let mut server = open(&path);
    let records = (0..DEVICES)
        .map(|i| ManufacturingRecord {
            device_id: ids[i],
            secret: secret(i),
            sku: "TH".into(),
            serial: u64::try_from(i).unwrap(),
        })
        .collect();
    server
        .import_manufacturing(&admin, &"site".parse().unwrap(), records, 0)
        .unwrap();
    let mut backend = start_backend(broker.addr(), server, 1).await;

    let probes: Vec<Arc<Probe>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (i, probe) in probes.iter().enumerate() {
        let (stop, stopped) = oneshot::channel();
        stops.push(stop);
        threads.push(spawn_device(broker.addr(), i, probe.clone(), stopped));
    }

    // Registration, a shadow change and a command through the first process.
    timeout(
        WAIT,
        backend.fleet.wait_until(|s| {
            ids.iter().all(|id| {
                s.fleet()
                    .device(&admin, id)
                    .is_ok_and(|r| r.state == State::Active && r.online)
            })
        }),
    )
    .await
    .expect("every device registered and became Active");
    led_round(&backend, &ids, true).await;
    command_round(&mut backend, &ids, 11).await;
    let versions: Vec<u64> = backend.fleet.with_server(|s| {
        ids.iter()
            .map(|id| s.server().fleet().device_shadow(id).unwrap().version())
            .collect()
    });
    assert_eq!(backend.fleet.counts().not_durable, 0);

    // The backend process ends; the store holds what it acknowledged.
    let mut store = stop_backend(backend).await;
    let head = store.verify_audit().unwrap();
    let registered = action_code(&AuditAction::Registered);
    assert_eq!(count_action(&mut *store, registered), DEVICES);
    drop(store);

    // A new backend process on the same file: records and shadows are back.
    let server = open(&path);
    assert_eq!(server.server().fleet().registered_count(), DEVICES);
    for (id, version) in ids.iter().zip(&versions) {
        let record = server.server().fleet().device(&admin, id).unwrap();
        assert_eq!(record.state, State::Active, "{id}");
        assert_eq!(
            server.server().fleet().device_shadow(id).unwrap().version(),
            *version
        );
        assert_eq!(server.reported(&admin, id, "led"), Some(Value::Bool(true)));
    }
    let mut backend = start_backend(broker.addr(), server, 2).await;

    // The devices carry on without registering again: a new desired value reaches them and
    // comes back reported, and a new command is executed and acknowledged once.
    led_round(&backend, &ids, false).await;
    assert!(probes.iter().all(|p| !p.led.load(Ordering::SeqCst)));
    command_round(&mut backend, &ids, 12).await;
    assert!(probes.iter().all(|p| p.blinks.load(Ordering::SeqCst) == 2));
    assert_eq!(backend.fleet.counts().not_durable, 0);
    assert_eq!(backend.fleet.counts().events_dropped, 0);
    let bridge = backend.bridge.counts();
    assert_eq!(
        bridge.refused_identity + bridge.refused_garbage,
        0,
        "{bridge:?}"
    );

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
        assert_eq!(stats.agent_errors, 0, "{stats:?}");
        assert_eq!(stats.send_refused, 0, "{stats:?}");
        // The broker stayed up: one connection for the whole run.
        assert_eq!(stats.connects, 1, "{stats:?}");
        assert_eq!(session.refused_garbage + session.refused_identity, 0);
    }

    let mut store = stop_backend(backend).await;
    let after = store.verify_audit().unwrap();
    assert!(
        after.seq > head.seq,
        "new entries chain on to the stored head"
    );
    assert_eq!(
        count_action(&mut *store, registered),
        DEVICES,
        "no device registered again after the restart"
    );
}

/// A message whose changes the store refuses is answered with nothing and reported as
/// `NotDurable`; the backend then acknowledges nothing until it is reopened.
#[test]
fn a_message_the_store_cannot_keep_is_reported_and_answered_with_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let admin = admin();
    let id = device_id(0);
    let mut server = open(&path);
    server
        .import_manufacturing(
            &admin,
            &"site".parse().unwrap(),
            vec![ManufacturingRecord {
                device_id: id,
                secret: secret(0),
                sku: "TH".into(),
                serial: 0,
            }],
            0,
        )
        .unwrap();
    // Register the device directly against the server, as a device would over the wire.
    let backend = FleetBackend::new(server);
    let mut events = backend.events(64);
    let mut wire = Vec::new();
    struct Wire<'a>(&'a mut Vec<(MessageKind, Vec<u8>)>);
    impl iot_agent::Outbound for Wire<'_> {
        type Error = ();
        fn send(
            &mut self,
            kind: MessageKind,
            _: iot_core::QoS,
            payload: &[u8],
            _: u64,
        ) -> Result<(), ()> {
            self.0.push((kind, payload.to_vec()));
            Ok(())
        }
    }
    let mut agent =
        LabAgent::new(id, 1, DeviceSecret::from_bytes(secret(0)), device_config()).unwrap();
    let mut board = Lab {
        probe: Arc::default(),
    };
    agent.start(unix_ms(), &mut Wire(&mut wire)).unwrap();
    let mut next = 1u32;
    let envelope = |next: &mut u32, kind: MessageKind, payload: Vec<u8>| {
        *next += 1;
        iot_core::message::Envelope {
            device: id,
            seq: *next,
            id: iot_core::MessageId(*next),
            qos: iot_protocol::qos(kind),
            kind,
            payload,
        }
    };
    // Exchange until the device is active (bounded).
    for _ in 0..20 {
        let sent = std::mem::take(&mut wire);
        for (kind, payload) in sent {
            for reply in backend.handle_envelope(id, &envelope(&mut next, kind, payload)) {
                agent
                    .handle(unix_ms(), &reply.as_ref(), &mut board, &mut Wire(&mut wire))
                    .unwrap();
            }
        }
        if backend.with_server(|s| {
            s.server()
                .fleet()
                .device(&admin, &id)
                .is_ok_and(|r| r.state == State::Active)
        }) {
            break;
        }
    }
    assert_eq!(
        backend.with_server(|s| s.server().fleet().device(&admin, &id).unwrap().state),
        State::Active
    );
    assert_eq!(backend.counts().not_durable, 0);

    // Another writer takes the shadow's next version: the backend's next write conflicts.
    let version = backend.with_server(|s| {
        s.server()
            .fleet()
            .device_shadow(&id)
            .map_or(0, iot_shadow::Shadow::version)
    });
    let mut other = SqliteStore::open(&path).unwrap();
    other
        .apply(iot_store::Batch::independent(vec![
            iot_store::Op::PutShadow {
                shadow: iot_store::Shadow {
                    device: id,
                    name: String::new(),
                    version: version + 1,
                    document: vec![0xa0],
                },
                expected: if version == 0 {
                    iot_store::ShadowExpect::Absent
                } else {
                    iot_store::ShadowExpect::Version(version)
                },
            },
        ]))
        .unwrap();
    while events.try_recv().is_ok() {}
    // A shadow write from the device: applied in memory, refused by the store.
    let now = unix_ms();
    let hlc = iot_core::time::HlcTimestamp::from_parts(now, 0, NodeId(9)).unwrap();
    let write = iot_shadow::Write::new(
        iot_shadow::Section::Reported,
        iot_shadow::Path::new("led").unwrap(),
        Value::Bool(true),
        iot_shadow::Stamp::new(
            hlc,
            iot_shadow::Policy::LastWriterWins,
            iot_shadow::Origin::Device,
        ),
    );
    let header = iot_shadow::cbor::Header {
        kind: iot_shadow::cbor::Kind::Update,
        version: None,
        client_token: None,
    };
    let bytes = iot_shadow::cbor::encode_writes_to_vec(&header, &[write]).unwrap();
    let update = iot_protocol::Uplink::ShadowUpdate(
        iot_protocol::ShadowBytes::new(bytes.as_slice()).unwrap(),
    );
    let replies = backend.handle_envelope(
        id,
        &envelope(&mut next, MessageKind::ShadowUpdate, update.to_vec()),
    );
    assert!(replies.is_empty(), "no reply for what is not durable");
    assert_eq!(backend.counts().not_durable, 1);
    assert!(matches!(
        events.try_recv(),
        Ok(FleetEvent::NotDurable {
            device,
            kind: MessageKind::ShadowUpdate,
            ..
        }) if device == id
    ));
    // Stopped: nothing more is acknowledged, not even a heartbeat.
    let replies =
        backend.handle_envelope(id, &envelope(&mut next, MessageKind::Heartbeat, Vec::new()));
    assert!(replies.is_empty());
    assert_eq!(backend.counts().not_durable, 2);
    assert!(backend.with_server(|s| s.is_stopped()));
}
