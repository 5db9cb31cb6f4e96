//! 2,000 device sessions from one process, through Mosquitto (the machine's broker on
//! 127.0.0.1:1883) and through the in-process broker (rumqttd), to the fleet backend
//! (`DeviceServer` behind the bridge). Reports the time to connect every session, the
//! shadow-update round trips per second and their latency percentiles.
//!
//! Each device is the real no_std `DeviceSession` (minimq) over tokio TCP; all of them run on
//! one thread (a `LocalSet`), the bridge and backend on another. A round trip is one
//! `ShadowUpdate` envelope (a reported value, QoS 1) from the device to the backend, which
//! applies it to the device's shadow and answers `ShadowAccepted` (QoS 1) on the device's
//! down topic; the time is taken from handing the envelope to the session until the answer is
//! received. At most `IOT_BENCH_INFLIGHT` (500) updates are in flight at once over all
//! devices (a closed loop). Devices are registered and active in the server before the run (registration
//! is not measured).
//!
//! ```sh
//! cargo bench -p iot-mqtt --features fleet --bench sessions
//! IOT_BENCH_DEVICES=500 IOT_BENCH_ROUNDS=10 IOT_BENCH_BROKERS=embedded cargo bench ...
//! IOT_BENCH_MOSQUITTO=127.0.0.1:18830 IOT_BENCH_BROKERS=mosquitto cargo bench ...  # another broker
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use iot_core::time::HlcTimestamp;
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, TenantId};
use iot_fleet::{
    DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope, Session, answer,
};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
use iot_lifecycle::state::{Event, State, TransitionRecord};
use iot_mqtt::bridge::{Bridge, BridgeConfig};
use iot_mqtt::broker::{BrokerConfig, EmbeddedBroker};
use iot_mqtt::device::{self, Backoff, DeviceSession, Tcp};
use iot_mqtt::fleet::{FleetBackend, unix_ms};
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use iot_protocol::{Downlink, PROTOCOL_VERSION, Register, Uplink};
use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};
use tokio::sync::{Semaphore, mpsc};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secret(i: usize) -> [u8; 32] {
    let mut s = [0x5au8; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

fn admin() -> Principal {
    Principal::new(
        "ops",
        TenantId::new("bench").unwrap(),
        Scope::root(),
        Role::Admin,
    )
}

fn handle(
    server: &mut DeviceServer,
    device: DeviceId,
    message: &Uplink<&[u8]>,
) -> Vec<iot_fleet::Reply> {
    let payload = message.to_vec();
    let envelope = EnvelopeRef {
        device,
        seq: 0,
        id: MessageId(0),
        qos: message.qos(),
        kind: message.kind(),
        payload: &payload,
    };
    match server
        .handle(&Session::authenticated(device, 0), &envelope, unix_ms())
        .unwrap()
    {
        iot_fleet::Handled::Replies(replies) => replies,
        iot_fleet::Handled::Unhandled => Vec::new(),
    }
}

/// A server with `ids` registered and active (registration is not what is measured).
fn server(ids: &[DeviceId]) -> DeviceServer {
    let mut fleet = Fleet::default();
    let records = ids
        .iter()
        .enumerate()
        .map(|(i, id)| ManufacturingRecord {
            device_id: *id,
            secret: secret(i),
            sku: "TH".into(),
            serial: i as u64,
        })
        .collect();
    fleet
        .import_manufacturing(&admin(), &Scope::root(), records, 0)
        .unwrap();
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let mut server = DeviceServer::with_os_rng(fleet, config, NodeId(1));
    for (i, id) in ids.iter().enumerate() {
        let register = |answer| {
            Uplink::Register(Register {
                protocol: PROTOCOL_VERSION,
                schema: 0,
                request: RegistrationRequest {
                    device: *id,
                    firmware_version: 1,
                    answer,
                },
            })
        };
        let replies = handle(&mut server, *id, &register(None));
        let [Downlink::Registration(RegistrationResponse::Challenge(nonce))] = replies.as_slice()
        else {
            panic!("no challenge: {replies:?}");
        };
        let proof = answer(&secret(i), id, nonce);
        handle(&mut server, *id, &register(Some(proof)));
        let report = Uplink::Transition(TransitionRecord {
            from: State::Provisioning,
            event: Event::ConfigComplete,
            to: State::Active,
            at_ms: unix_ms(),
        });
        handle(&mut server, *id, &report);
    }
    server
}

fn shadow_update(device: DeviceId, id: u32, value: i64) -> Vec<u8> {
    // The logical counter keeps a device's stamps increasing when rounds share a millisecond
    // (an equal stamp is refused as stale, not accepted).
    let hlc = HlcTimestamp::from_parts(unix_ms(), u16::try_from(id).unwrap(), NodeId(7)).unwrap();
    let write = Write::new(
        Section::Reported,
        Path::new("temp").unwrap(),
        Value::Int(value),
        Stamp::new(hlc, Policy::LastWriterWins, Origin::Device),
    );
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token: None,
    };
    let bytes = encode_writes_to_vec(&header, &[write]).unwrap();
    let message = Uplink::ShadowUpdate(iot_protocol::ShadowBytes::new(bytes.as_slice()).unwrap());
    let payload = message.to_vec();
    iot_core::message::Envelope {
        device,
        seq: id,
        id: MessageId(id),
        qos: message.qos(),
        kind: message.kind(),
        payload,
    }
    .to_vec()
    .unwrap()
}

/// What one device measured.
struct DeviceResult {
    connected_after: Duration,
    rtts: Vec<Duration>,
}

/// Runs every device on this thread: connect, wait for the start signal, `rounds` shadow
/// updates one after the other.
async fn run_devices(
    broker: SocketAddr,
    ids: Vec<DeviceId>,
    rounds: usize,
    connected: mpsc::UnboundedSender<()>,
    start: tokio::sync::watch::Receiver<bool>,
) -> Vec<DeviceResult> {
    let began = Instant::now();
    // Bounded concurrent connection attempts, so the listen backlog does not overflow.
    let gate = Rc::new(Semaphore::new(128));
    // Closed loop: at most this many updates in flight over all devices. Mosquitto queues at
    // most `max_queued_messages` (1,000 by default) for one subscriber and drops QoS 1
    // messages beyond that: with every device sending at once, the bridge would lose some.
    let inflight = Rc::new(Semaphore::new(env("IOT_BENCH_INFLIGHT", 500)));
    let mut tasks = Vec::new();
    for id in ids {
        let gate = gate.clone();
        let inflight = inflight.clone();
        let connected = connected.clone();
        let mut start = start.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut rx = vec![0u8; 512];
            let mut tx = vec![0u8; 2_048];
            let mut config = device::DeviceConfig::new(broker, id);
            config.connect_timeout = device::Duration::from_secs(30);
            config.session_expiry_secs = 30;
            config.backoff = Backoff {
                initial: device::Duration::from_millis(50),
                max: device::Duration::from_millis(1_000),
            };
            let mut session =
                DeviceSession::<4, 256>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
            let mut tcp = Tcp(&TokioTcp);
            let permit = gate.acquire().await.unwrap();
            for _ in 0..20 {
                let Ok(mut link) = session.connect(&mut tcp).await else {
                    continue;
                };
                drop(permit);
                let connected_after = began.elapsed();
                let _ = connected.send(());
                // Keep the connection alive (keepalive) while the others connect.
                let mut buf = [0u8; 256];
                for _ in 0..100_000 {
                    if *start.borrow() {
                        break;
                    }
                    tokio::select! {
                        _ = start.changed() => {}
                        r = link.recv_timeout(&mut buf, device::Duration::from_millis(500)) => {
                            r.expect("connection kept while waiting");
                        }
                    }
                }
                let mut rtts = Vec::with_capacity(rounds);
                for round in 0..rounds {
                    let id_n = u32::try_from(round + 1).unwrap();
                    let bytes = shadow_update(id, id_n, round as i64);
                    let slot = inflight.acquire().await.unwrap();
                    let sent = Instant::now();
                    link.send(&bytes).await.expect("sent");
                    // The answer to this update: bounded by a deadline.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        assert!(Instant::now() < deadline, "{id}: no answer in 60 s");
                        if let Some(n) = link
                            .recv_timeout(&mut buf, device::Duration::from_secs(5))
                            .await
                            .expect("connection kept")
                        {
                            let reply = EnvelopeRef::decode(&buf[..n]).unwrap();
                            assert_eq!(reply.kind, MessageKind::ShadowAccepted, "{id}");
                            break;
                        }
                    }
                    rtts.push(sent.elapsed());
                    drop(slot);
                }
                let _ = link.disconnect().await;
                return DeviceResult {
                    connected_after,
                    rtts,
                };
            }
            panic!("{id}: no connection in 20 attempts");
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(label: &str, broker: SocketAddr, devices: usize, rounds: usize) {
    let run = format!("b{}{}", std::process::id(), &label[..1]);
    let ids: Vec<DeviceId> = (0..devices)
        .map(|i| DeviceId::new(&format!("{run}-{i:05}")).unwrap())
        .collect();
    let setup = Instant::now();
    let backend = FleetBackend::new(server(&ids));
    let setup = setup.elapsed();

    // The bridge and backend on their own runtime.
    let backend_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bridge = backend_rt.block_on(async {
        let mut config = BridgeConfig::new(
            broker.ip().to_string(),
            broker.port(),
            format!("{run}-backend"),
        );
        config.group = format!("{run}-fleet");
        Bridge::spawn(config, backend.clone()).unwrap()
    });
    // Wait until the bridge's subscription is in place: a probe publishes until the bridge
    // receives one (bounded in count and time).
    backend_rt.block_on(async {
        let probe = format!("{run}-probe");
        let mut options =
            rumqttc::v5::MqttOptions::new(probe.clone(), broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
        let task = tokio::spawn(async move {
            for _ in 0..10_000 {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let mut arrived = false;
        for _ in 0..200 {
            let _ = client
                .publish(
                    format!("iot/{probe}/up"),
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    false,
                    b"probe".to_vec(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if bridge.counts().received > 0 {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "the bridge never subscribed");
        let _ = client.disconnect().await;
        task.abort();
    });

    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    let device_ids = ids.clone();
    let devices_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(
            &rt,
            run_devices(broker, device_ids, rounds, connected_tx, start_rx),
        )
    });
    let connect_start = Instant::now();
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    waiter.block_on(async {
        for _ in 0..devices {
            tokio::time::timeout(Duration::from_secs(120), connected_rx.recv())
                .await
                .expect("every device connected within 120 s")
                .unwrap();
        }
    });
    let connect_all = connect_start.elapsed();
    let run_start = Instant::now();
    start_tx.send(true).unwrap();
    let results = devices_thread.join().unwrap();
    let run_time = run_start.elapsed();

    let mut rtts: Vec<Duration> = results.iter().flat_map(|r| r.rtts.clone()).collect();
    rtts.sort_unstable();
    let mut connects: Vec<Duration> = results.iter().map(|r| r.connected_after).collect();
    connects.sort_unstable();
    let round_trips = rtts.len();
    let handled = backend.counts().handled;
    println!(
        "{label}: {devices} device sessions (setup of the server {setup:.2?}); all connected and \
         subscribed in {connect_all:.2?} (median device {:.2?}, slowest {:.2?})",
        percentile(&connects, 0.5),
        connects[connects.len() - 1],
    );
    println!(
        "{label}: {round_trips} shadow-update round trips in {run_time:.2?}: {:.0} round trips/s \
         ({:.0} messages/s through the broker, up and down); latency p50 {:.2?}, p90 {:.2?}, \
         p99 {:.2?}, max {:.2?}; backend handled {handled}, bridge {:?}",
        round_trips as f64 / run_time.as_secs_f64(),
        2.0 * round_trips as f64 / run_time.as_secs_f64(),
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.9),
        percentile(&rtts, 0.99),
        rtts[rtts.len() - 1],
        bridge.counts(),
    );
    assert_eq!(round_trips, devices * rounds);
    backend_rt.block_on(bridge.shutdown());
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: run only
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let devices = env("IOT_BENCH_DEVICES", 2_000);
    let rounds = env("IOT_BENCH_ROUNDS", 5);
    let brokers =
        std::env::var("IOT_BENCH_BROKERS").unwrap_or_else(|_| "mosquitto,embedded".into());
    for broker in brokers.split(',') {
        match broker {
            "mosquitto" => {
                let addr: SocketAddr = std::env::var("IOT_BENCH_MOSQUITTO")
                    .unwrap_or_else(|_| "127.0.0.1:1883".into())
                    .parse()
                    .unwrap();
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("Mosquitto must listen on {addr}: {e}"));
                run(&format!("mosquitto {addr}"), addr, devices, rounds);
            }
            "embedded" => {
                let embedded = EmbeddedBroker::start_with(BrokerConfig {
                    max_connections: devices + 100,
                    ..BrokerConfig::default()
                })
                .unwrap();
                run("embedded rumqttd", embedded.addr(), devices, rounds);
            }
            other => panic!("unknown broker {other}"),
        }
    }
}
