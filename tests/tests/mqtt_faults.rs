//! Hostile networks on IP (issue 22, item 3): device sessions reach a mosquitto the test
//! starts through a fault-injecting TCP proxy the test runs (the kernel's netem is not
//! available), while a bridge feeds the application. One cycle of faults, each followed by a
//! check that everything converged:
//!
//! 1. latency (150 ms per chunk, each direction);
//! 2. a bandwidth limit (2,000 B/s per direction and connection);
//! 3. a stall (nothing forwarded for 1.5 s, connections kept open);
//! 4. connection resets (RST), twice;
//! 5. half-open connections: every open connection silently stops forwarding and stays
//!    open toward the device (even after the broker's own keepalive closed its side); each
//!    device must notice through its keepalive and reconnect;
//! 6. a broker restart (killed with SIGKILL, no persistence: every session is gone).
//!
//! Asserts: every QoS 1 and QoS 2 envelope a device handed to its session reaches the
//! application exactly once (none lost, none twice), QoS 0 at most once; after each fault
//! every device converges (all it sent is delivered) within a bound; the half-open
//! connections are detected by the device's keepalive within its bound (`HALF_OPEN_DETECTION`); memory stays bounded (the
//! proxy's connections, the process's resident set).
//!
//! `IOT_FAULT_CYCLES=N` repeats the cycle N times (default 1, what CI runs).
//! Opt-in (feature `mosquitto-tests`), run by `.ci/steps/mqtt.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

#[path = "support/faults.rs"]
mod faults;
#[path = "support/mosquitto.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faults::FaultProxy;
use iot_core::message::{Envelope, OwnedEnvelope};
use iot_core::{DeviceId, MessageId, MessageKind, QoS};
use iot_mqtt::bridge::{Bridge, BridgeConfig, EnvelopeHandler};
use iot_mqtt::device::{self, Backoff, DeviceError, DeviceSession, DeviceStats, Tcp};
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use support::{Mosquitto, unique};

const DEVICES: usize = 4;
/// Device keepalive.
const KEEPALIVE_SECS: u16 = 2;
/// minimq sends `PINGREQ` after `keepalive - min(5 s, keepalive / 2)` without sending
/// anything, and drops the connection when no `PINGRESP` came 5 s (its round-trip timeout)
/// later: a half-open connection must be noticed within that, plus the time the device
/// still had something to send (its outbox fills within a second), plus slack.
const HALF_OPEN_DETECTION: Duration =
    Duration::from_secs(KEEPALIVE_SECS as u64 - KEEPALIVE_SECS as u64 / 2 + 5 + 3);
/// A device produces one envelope per tick while connected.
const TICK: Duration = Duration::from_millis(50);
/// The bound on convergence after each fault.
const CONVERGE: Duration = Duration::from_secs(30);

/// What one device did, shared with the test.
#[derive(Default)]
struct DeviceLog {
    /// Every envelope the session took: (message id, QoS).
    accepted: Mutex<Vec<(u32, QoS)>>,
    /// When each connection was established.
    connects: Mutex<Vec<Instant>>,
    /// Envelopes the session refused for good (must stay 0).
    refused: AtomicU32,
}

/// The QoS of the `n`th envelope: QoS 1, QoS 2, QoS 1, QoS 0, ...
fn qos_of(n: u32) -> QoS {
    match n % 4 {
        1 => QoS::ExactlyOnce,
        3 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn spawn_device(
    proxy: SocketAddr,
    id: DeviceId,
    log: Arc<DeviceLog>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<DeviceStats> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut rx = [0u8; 1024];
            let mut tx = [0u8; 4096];
            let mut config = device::DeviceConfig::new(proxy, id);
            config.keepalive_secs = KEEPALIVE_SECS;
            config.session_expiry_secs = 120;
            config.connect_timeout = device::Duration::from_secs(3);
            config.backoff = Backoff {
                initial: device::Duration::from_millis(20),
                max: device::Duration::from_millis(500),
            };
            let mut session =
                DeviceSession::<8, 256>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
            drive(&mut session, id, &log, &stop).await;
            session.stats()
        })
    })
}

/// Connects (again and again, bounded), produces an envelope per tick while connected and
/// hands it to the session, reading what arrives so the session keeps its keepalive.
async fn drive(
    session: &mut DeviceSession<'_, 8, 256>,
    id: DeviceId,
    log: &DeviceLog,
    stop: &AtomicBool,
) {
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut next_id: u32 = 1;
    let mut buf = [0u8; 256];
    let mut tcp = Tcp(&TokioTcp);
    for _ in 0..1_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut link) = session.connect(&mut tcp).await else {
            continue;
        };
        log.connects.lock().unwrap().push(Instant::now());
        let mut next_tick = Instant::now();
        // Bounded: a tick is at least the receive wait below.
        for _ in 0..1_000_000 {
            if stop.load(Ordering::SeqCst) {
                let _ = link.disconnect().await;
                return;
            }
            if Instant::now() >= next_tick && pending.len() < 16 {
                next_tick += TICK;
                let envelope = Envelope {
                    device: id,
                    seq: next_id,
                    id: MessageId(next_id),
                    qos: qos_of(next_id),
                    kind: MessageKind::Telemetry,
                    payload: next_id.to_be_bytes().to_vec(),
                };
                pending.push_back(envelope.to_vec().unwrap());
                next_id += 1;
            }
            let mut lost = false;
            while let Some(front) = pending.front() {
                let envelope = OwnedEnvelope::decode(front).unwrap();
                match link.send(front).await {
                    Ok(()) => {
                        log.accepted
                            .lock()
                            .unwrap()
                            .push((envelope.id.0, envelope.qos));
                        pending.pop_front();
                    }
                    // Taken into the session's outbox: republished from there.
                    Err(e) if link.is_unacknowledged(envelope.id) => {
                        log.accepted
                            .lock()
                            .unwrap()
                            .push((envelope.id.0, envelope.qos));
                        pending.pop_front();
                        lost = e.is_connection_lost();
                        break;
                    }
                    Err(DeviceError::OutboxFull { .. } | DeviceError::Busy) => break,
                    Err(e) if e.is_connection_lost() => {
                        lost = true;
                        break;
                    }
                    Err(_) => {
                        log.refused.fetch_add(1, Ordering::SeqCst);
                        pending.pop_front();
                    }
                }
            }
            if lost {
                break;
            }
            match link
                .recv_timeout(&mut buf, device::Duration::from_millis(20))
                .await
            {
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}

/// How often the application got each (device, message id).
type Delivered = Arc<Mutex<HashMap<(DeviceId, u32), u32>>>;

/// The application behind the bridge: counts what it is handed.
struct Application {
    delivered: Delivered,
}

impl EnvelopeHandler for Application {
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send {
        *self
            .delivered
            .lock()
            .unwrap()
            .entry((device, envelope.id.0))
            .or_default() += 1;
        async { Vec::new() }
    }
}

/// Waits until the bridge's subscription is in place: a probe publishes until the
/// application gets one of its envelopes (bounded in count and time).
/// Waits until the bridge has been handed what the broker holds: the deliveries stop moving
/// for 500 ms (at most 10 s). A fixed pause loses messages under load.
async fn settle(delivered: &Delivered) {
    let total = || -> u64 {
        delivered
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(*n))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (total(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

async fn wait_bridge_subscribed(broker: SocketAddr, delivered: &Delivered) {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let probe = DeviceId::new(&unique("probe")).unwrap();
    let mut options = rumqttc::v5::MqttOptions::new(probe.as_str(), "127.0.0.1", broker.port());
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
    for attempt in 0..100u32 {
        let bytes = Envelope {
            device: probe,
            seq: attempt,
            id: MessageId(attempt),
            qos: QoS::AtLeastOnce,
            kind: MessageKind::Heartbeat,
            payload: Vec::new(),
        }
        .to_vec()
        .unwrap();
        let _ = client
            .publish(
                format!("iot/{probe}/up"),
                MqttQoS::AtLeastOnce,
                false,
                bytes,
            )
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        if delivered.lock().unwrap().keys().any(|(d, _)| *d == probe) {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "the bridge never delivered the probe");
    let _ = client.disconnect().await;
    task.abort();
}

/// Resident set of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Fleet {
    ids: Vec<DeviceId>,
    logs: Vec<Arc<DeviceLog>>,
    delivered: Delivered,
}

impl Fleet {
    /// Waits until every QoS 1/2 envelope the devices' sessions took so far has reached the
    /// application; returns how long that took.
    async fn converge(&self, phase: &str) -> Duration {
        let start = Instant::now();
        let wanted: Vec<(DeviceId, Vec<u32>)> = self
            .ids
            .iter()
            .zip(&self.logs)
            .map(|(id, log)| {
                let accepted = log.accepted.lock().unwrap();
                let reliable = accepted
                    .iter()
                    .filter(|(_, qos)| *qos != QoS::AtMostOnce)
                    .map(|(m, _)| *m)
                    .collect();
                (*id, reliable)
            })
            .collect();
        for _ in 0..10_000 {
            let missing: usize = {
                let delivered = self.delivered.lock().unwrap();
                wanted
                    .iter()
                    .map(|(id, ms)| {
                        ms.iter()
                            .filter(|m| !delivered.contains_key(&(*id, **m)))
                            .count()
                    })
                    .sum()
            };
            if missing == 0 {
                let took = start.elapsed();
                eprintln!("faults: {phase}: converged in {took:?}");
                return took;
            }
            assert!(
                start.elapsed() < CONVERGE,
                "{phase}: {missing} QoS 1/2 envelopes not delivered after {CONVERGE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{phase}: no convergence");
    }

    /// Every device made a new connection after `since`; returns the slowest one's delay.
    async fn wait_reconnected(&self, since: Instant, bound: Duration, phase: &str) -> Duration {
        let start = Instant::now();
        for _ in 0..10_000 {
            let delays: Vec<Option<Duration>> = self
                .logs
                .iter()
                .map(|log| {
                    log.connects
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|at| **at > since)
                        .map(|at| *at - since)
                })
                .collect();
            if delays.iter().all(Option::is_some) {
                let slowest = delays.into_iter().flatten().max().unwrap();
                eprintln!("faults: {phase}: every device reconnected, slowest after {slowest:?}");
                return slowest;
            }
            assert!(
                start.elapsed() < bound,
                "{phase}: a device did not reconnect within {bound:?}: {delays:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{phase}: devices did not reconnect");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_behind_a_faulty_network_deliver_exactly_once_and_converge() {
    let cycles: u32 = std::env::var("IOT_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut broker = Mosquitto::start();
    let delivered: Delivered = Arc::default();
    let mut config = BridgeConfig::new("127.0.0.1", broker.addr.port(), unique("bridge"));
    config.group = unique("faults");
    config.credentials = Some(("backend".to_string(), String::new()));
    config.reconnect_delay = Duration::from_millis(50);
    let bridge = Bridge::spawn(
        config,
        Application {
            delivered: delivered.clone(),
        },
    )
    .unwrap();
    wait_bridge_subscribed(broker.addr, &delivered).await;

    let proxy = FaultProxy::start(broker.addr).await;
    let run = unique("f");
    let ids: Vec<DeviceId> = (0..DEVICES)
        .map(|i| DeviceId::new(&format!("{run}-{i}")).unwrap())
        .collect();
    let logs: Vec<Arc<DeviceLog>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = ids
        .iter()
        .zip(&logs)
        .map(|(id, log)| spawn_device(proxy.addr, *id, log.clone(), stop.clone()))
        .collect();
    let fleet = Fleet {
        ids: ids.clone(),
        logs,
        delivered: delivered.clone(),
    };

    // Warm-up: everyone connected and delivering.
    fleet.wait_reconnected(started, CONVERGE, "start").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.converge("warm-up").await;
    let rss_start = rss_kib();

    for cycle in 1..=cycles {
        eprintln!("faults: cycle {cycle} of {cycles}");
        proxy.set_latency(Duration::from_millis(150));
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.heal();
        fleet.converge("latency 150 ms").await;

        proxy.set_bandwidth(2_000);
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.heal();
        fleet.converge("bandwidth 2,000 B/s").await;

        proxy.set_stalled(true);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        proxy.heal();
        fleet.converge("stall 1.5 s").await;

        for _ in 0..2 {
            let since = Instant::now();
            assert!(proxy.reset_all() >= DEVICES);
            fleet.wait_reconnected(since, CONVERGE, "reset").await;
        }
        fleet.converge("connection resets").await;

        // Half-open: only the keepalive can tell.
        let since = Instant::now();
        assert!(proxy.blackhole_all() >= DEVICES);
        let detection = fleet
            .wait_reconnected(
                since,
                HALF_OPEN_DETECTION + Duration::from_secs(2),
                "half-open",
            )
            .await;
        assert!(
            detection <= HALF_OPEN_DETECTION,
            "half-open connections noticed after {detection:?}"
        );
        fleet.converge("half-open").await;

        // Broker restart: devices are cut first and the broker given a moment to hand the
        // bridge what it acknowledged (a broker killed without persistence loses what it
        // acknowledged and had not delivered: that is the broker's guarantee, not ours).
        proxy.set_refusing(true);
        proxy.reset_all();
        settle(&delivered).await;
        broker.restart();
        wait_bridge_subscribed(broker.addr, &delivered).await;
        let since = Instant::now();
        proxy.set_refusing(false);
        fleet
            .wait_reconnected(since, CONVERGE, "broker restart")
            .await;
        fleet.converge("broker restart").await;
        eprintln!(
            "faults: cycle {cycle}: RSS {} KiB, proxy connections open {} (peak {})",
            rss_kib(),
            proxy.open_connections(),
            proxy.peak_connections()
        );
    }

    stop.store(true, Ordering::SeqCst);
    let mut stats = Vec::new();
    for thread in threads {
        stats.push(
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let rss_end = rss_kib();

    // Exactly once for QoS 1 and 2, at most once for QoS 0; nothing the sessions took lost.
    let delivered = delivered.lock().unwrap().clone();
    let (mut reliable, mut best_effort, mut best_effort_delivered) = (0u64, 0u64, 0u64);
    for (id, log) in ids.iter().zip(&fleet.logs) {
        assert_eq!(log.refused.load(Ordering::SeqCst), 0, "{id}");
        for (message, qos) in log.accepted.lock().unwrap().iter() {
            let n = delivered.get(&(*id, *message)).copied().unwrap_or(0);
            if *qos == QoS::AtMostOnce {
                best_effort += 1;
                best_effort_delivered += u64::from(n);
                assert!(n <= 1, "{id}: QoS 0 message {message} delivered {n} times");
            } else {
                reliable += 1;
                assert_eq!(n, 1, "{id}: {qos:?} message {message} delivered {n} times");
            }
        }
    }
    let twice = delivered.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "envelopes delivered more than once");
    let republished: u32 = stats.iter().map(|s| s.republished).sum();
    let connects: u32 = stats.iter().map(|s| s.connects).sum();
    eprintln!(
        "faults: {reliable} QoS 1/2 envelopes delivered exactly once, {best_effort_delivered} of \
         {best_effort} QoS 0; {connects} connections, {republished} republished; bridge {:?}; \
         RSS {rss_start} -> {rss_end} KiB",
        bridge.counts()
    );
    assert!(
        reliable >= 100 * DEVICES as u64,
        "too little traffic: {reliable}"
    );
    // Each cycle: 2 resets, the half-open phase and the restart reconnect every device.
    assert!(connects as usize >= DEVICES * (1 + 4 * cycles as usize));
    assert!(republished > 0, "no fault made a device republish");
    // Bounded memory: no connection left behind, and the process did not grow with traffic.
    assert!(
        proxy.peak_connections() <= 3 * DEVICES,
        "{}",
        proxy.peak_connections()
    );
    assert!(
        rss_end.saturating_sub(rss_start) < 64 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
    proxy.stop();
    bridge.shutdown().await;
}
