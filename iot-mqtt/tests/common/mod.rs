//! Scenarios shared by the embedded-broker tests (`e2e.rs`) and the Mosquitto tests
//! (`mosquitto.rs`): each takes the broker's address.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use iot_mqtt::bridge::{Bridge, BridgeConfig, EnvelopeHandler};
use iot_mqtt::device::{Backoff, Connector, DeviceConfig, DeviceSession, DeviceStats, Tcp};
use iot_mqtt::device_tls::{DeviceIdentity, TlsTcp};
use iot_mqtt::iot_core::id::DeviceId;
use iot_mqtt::iot_core::message::{Envelope, MessageId, MessageKind, OwnedEnvelope, QoS};
use iot_mqtt::minimq::Buffers;
use iot_mqtt::std_tcp::TokioTcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// A name unique to this test process and call, so runs against a shared broker do not meet.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn envelope(device: DeviceId, id: u32, kind: MessageKind) -> OwnedEnvelope {
    Envelope {
        device,
        seq: id,
        id: MessageId(id),
        qos: QoS::AtLeastOnce,
        kind,
        payload: id.to_be_bytes().to_vec(),
    }
}

/// Records every envelope it is handed and answers each with an `Ack` of the same id.
pub struct Recorder {
    pub seen: mpsc::UnboundedSender<(DeviceId, OwnedEnvelope)>,
}

impl EnvelopeHandler for Recorder {
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send {
        let reply = Envelope {
            kind: MessageKind::Ack,
            payload: Vec::new(),
            ..envelope.clone()
        };
        let _ = self.seen.send((device, envelope));
        async move { vec![reply] }
    }
}

pub fn bridge_config(broker: SocketAddr, group: &str) -> BridgeConfig {
    let mut config = BridgeConfig::new(broker.ip().to_string(), broker.port(), unique("bridge"));
    config.group = group.to_string();
    config.max_envelope = 256;
    config.credentials = Some(("backend".to_string(), String::new()));
    config
}

/// Starts a bridge and waits until its subscription is in place.
pub async fn start_bridge(
    broker: SocketAddr,
    group: &str,
) -> (Bridge, mpsc::UnboundedReceiver<(DeviceId, OwnedEnvelope)>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bridge = Bridge::spawn(bridge_config(broker, group), Recorder { seen: tx }).unwrap();
    wait_bridge_subscribed(broker, &mut rx).await;
    (bridge, rx)
}

/// Waits until a bridge's subscription is in place: a probe publisher retries until the
/// bridge hands one probe to its handler (bounded count and time). Later probes may still
/// arrive; they come from a device of their own and tests filter by device.
pub async fn wait_bridge_subscribed(
    broker: SocketAddr,
    rx: &mut mpsc::UnboundedReceiver<(DeviceId, OwnedEnvelope)>,
) {
    wait_bridge_subscribed_with(broker, rx, None).await;
}

/// Makes the TLS configuration of a client whose certificate names the given device.
pub type MakeTls<'a> = dyn Fn(&str) -> Arc<rustls::ClientConfig> + 'a;

/// [`wait_bridge_subscribed`] with a probe connecting over TLS with the configuration `tls`
/// makes for the probe's device id.
pub async fn wait_bridge_subscribed_with(
    broker: SocketAddr,
    rx: &mut mpsc::UnboundedReceiver<(DeviceId, OwnedEnvelope)>,
    tls: Option<&MakeTls<'_>>,
) {
    let probe_device = DeviceId::new(&unique("probe")).unwrap();
    let probe_tls = tls.map(|make| make(probe_device.as_str()));
    let probe = raw_client_with(broker, probe_device.as_str(), probe_tls).await;
    let bytes = envelope(probe_device, 0, MessageKind::Heartbeat)
        .to_vec()
        .unwrap();
    let topic = format!("iot/{probe_device}/up");
    let mut got = false;
    'probing: for _ in 0..100 {
        probe
            .client
            .publish(
                topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                bytes.clone(),
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(Some((device, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if device == probe_device {
                got = true;
                break 'probing;
            }
        }
    }
    assert!(got, "the bridge never received a probe");
    probe.stop().await;
}

/// A plain rumqttc client standing in for a misbehaving device.
pub struct RawClient {
    pub client: rumqttc::v5::AsyncClient,
    /// Every packet the broker sent after the CONNACK.
    pub incoming: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    task: JoinHandle<()>,
}

impl RawClient {
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        self.task.abort();
        let _ = self.task.await;
    }
}

pub async fn raw_client(broker: SocketAddr, client_id: &str) -> RawClient {
    raw_client_with(broker, client_id, None).await
}

/// A plain rumqttc client, over TLS when `tls` is given.
pub async fn raw_client_with(
    broker: SocketAddr,
    client_id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> RawClient {
    let mut options =
        rumqttc::v5::MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        for _ in 0..100_000 {
            match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                    _,
                ))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(()).await;
                    }
                }
                Ok(rumqttc::v5::Event::Incoming(packet)) => {
                    let _ = incoming_tx.send(packet);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    timeout(WAIT, ready_rx.recv()).await.unwrap().unwrap();
    RawClient {
        client,
        incoming,
        task,
    }
}

/// Commands for a device task.
pub enum Command {
    Send(Vec<u8>),
}

/// What a device task reports.
#[derive(Debug)]
pub enum DeviceEvent {
    Connected,
    Received(OwnedEnvelope),
    SendFailed,
}

/// Runs one device session over plain TCP until the command channel closes; returns its
/// counters.
pub fn spawn_device(
    broker: SocketAddr,
    device: DeviceId,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<DeviceEvent>,
) -> JoinHandle<DeviceStats> {
    spawn_device_with(broker, device, commands, events, None)
}

/// The device's TLS material, DER.
#[derive(Clone)]
pub struct DeviceTlsMaterial {
    pub ca_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_pkcs8_der: Vec<u8>,
    pub server_name: String,
}

/// Runs one device session, over TLS when `tls` is given.
pub fn spawn_device_with(
    broker: SocketAddr,
    device: DeviceId,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<DeviceEvent>,
    tls: Option<DeviceTlsMaterial>,
) -> JoinHandle<DeviceStats> {
    // The device session is single-executor (its futures are not `Send`), as on a
    // microcontroller: run it on its own thread with a current-thread runtime.
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_device(broker, device, &mut commands, &events, tls))
    });
    tokio::task::spawn_blocking(move || thread.join().unwrap())
}

async fn run_device(
    broker: SocketAddr,
    device: DeviceId,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<DeviceEvent>,
    tls: Option<DeviceTlsMaterial>,
) -> DeviceStats {
    let mut rx = [0u8; 512];
    let mut tx = [0u8; 4096];
    let mut config = DeviceConfig::new(broker, device);
    config.connect_timeout = embassy_time_duration(5_000);
    // Long enough to resume after a cut; short, so a shared broker forgets test devices soon.
    config.session_expiry_secs = 120;
    config.backoff = Backoff {
        initial: embassy_time_duration(20),
        max: embassy_time_duration(500),
    };
    let mut session = DeviceSession::<8, 256>::new(config, Buffers::new(&mut rx, &mut tx)).unwrap();
    match tls {
        None => drive(&mut session, &mut Tcp(&TokioTcp), commands, events).await,
        Some(material) => {
            let mut read_buf = vec![0u8; 16_640];
            let mut write_buf = vec![0u8; 16_640];
            let identity = DeviceIdentity {
                ca_der: &material.ca_der,
                cert_der: &material.cert_der,
                key_pkcs8_der: &material.key_pkcs8_der,
                server_name: &material.server_name,
            };
            let mut connector = TlsTcp::new(
                &TokioTcp,
                identity,
                rand_core::OsRng,
                &mut read_buf,
                &mut write_buf,
            )
            .unwrap();
            drive(&mut session, &mut connector, commands, events).await
        }
    }
    session.stats()
}

async fn drive<C: Connector>(
    session: &mut DeviceSession<'_, 8, 256>,
    connector: &mut C,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<DeviceEvent>,
) {
    let mut buf = [0u8; 256];
    let mut closed = false;
    // Bounded number of connections; each ends on a connection loss.
    for _ in 0..200 {
        if closed || commands.is_closed() {
            break;
        }
        let mut link = match session.connect(connector).await {
            Ok(link) => link,
            Err(e) => {
                eprintln!("device connect failed: {e}");
                continue;
            }
        };
        let _ = events.send(DeviceEvent::Connected);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Send(bytes)) => {
                        if let Err(e) = link.send(&bytes).await {
                            if e.is_connection_lost() { break; }
                            let _ = events.send(DeviceEvent::SendFailed);
                        }
                    }
                    None => { closed = true; break; }
                },
                received = link.recv(&mut buf) => match received {
                    Ok(n) => {
                        let env = OwnedEnvelope::decode(&buf[..n]).unwrap();
                        let _ = events.send(DeviceEvent::Received(env));
                    }
                    Err(e) => {
                        assert!(e.is_connection_lost(), "{e}");
                        break;
                    }
                },
            }
        }
    }
}

pub fn embassy_time_duration(ms: u64) -> iot_mqtt::device::Duration {
    iot_mqtt::device::Duration::from_millis(ms)
}

/// A TCP proxy between devices and the broker that can cut every connection, or silently
/// swallow what the broker sends (so acknowledgements are lost).
pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    swallow: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let swallow = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let conns = connections.clone();
        let sw = swallow.clone();
        let gate = closed.clone();
        let accept = tokio::spawn(async move {
            for _ in 0..10_000 {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if gate.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let sw = sw.clone();
                let handle = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw_half) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw_half.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if sw.load(Ordering::SeqCst) {
                                continue;
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                conns.lock().await.push(handle);
            }
        });
        Self {
            addr,
            connections,
            swallow,
            closed,
            accept,
        }
    }

    /// From now on, drop everything the broker sends.
    pub fn swallow_downstream(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Closes every open connection (both sides) and forwards normally again.
    pub async fn cut(&self) {
        let mut conns = self.connections.lock().await;
        for handle in conns.drain(..) {
            handle.abort();
            let _ = handle.await;
        }
        self.swallow.store(false, Ordering::SeqCst);
    }

    /// Refuses new connections (closes them at once) until [`Proxy::open`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Accepts and forwards new connections again.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.accept.abort();
    }
}

/// Waits for the next event matching `want`, skipping others; bounded by [`WAIT`].
pub async fn next_event<T, F: FnMut(&T) -> bool>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    mut want: F,
) -> T {
    timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("channel closed");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// Waits until the handler got message `id` of `device`, counting every delivery on the way.
pub async fn await_handled(
    handled: &mut mpsc::UnboundedReceiver<(DeviceId, OwnedEnvelope)>,
    device: DeviceId,
    counts: &mut HashMap<u32, u32>,
    id: u32,
) {
    while !counts.contains_key(&id) {
        let (_, env) = next_event(handled, |(d, _)| *d == device).await;
        *counts.entry(env.id.0).or_default() += 1;
    }
}

/// Device and bridge exchange envelopes both ways.
pub async fn exchange_both_ways(broker: SocketAddr) {
    let group = unique("g");
    let (bridge, mut handled) = start_bridge(broker, &group).await;
    let device = DeviceId::new(&unique("dev")).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device(broker, device, cmd_rx, ev_tx);
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;

    for id in 1..=5u32 {
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        cmd_tx.send(Command::Send(bytes)).unwrap();
    }
    let mut up = Vec::new();
    while up.len() < 5 {
        let (d, env) = next_event(&mut handled, |(d, _)| *d == device).await;
        assert_eq!(d, env.device);
        assert_eq!(env.payload, env.id.0.to_be_bytes().to_vec());
        up.push(env.id.0);
    }
    up.sort_unstable();
    assert_eq!(up, vec![1, 2, 3, 4, 5]);

    let mut down = Vec::new();
    while down.len() < 5 {
        if let DeviceEvent::Received(env) =
            next_event(&mut events, |e| matches!(e, DeviceEvent::Received(_))).await
        {
            assert_eq!(env.device, device);
            assert_eq!(env.kind, MessageKind::Ack);
            down.push(env.id.0);
        }
    }
    down.sort_unstable();
    assert_eq!(down, vec![1, 2, 3, 4, 5]);

    // The backend can also speak first.
    bridge
        .downlink()
        .send(&envelope(device, 100, MessageKind::Command))
        .await
        .unwrap();
    match next_event(&mut events, |e| matches!(e, DeviceEvent::Received(_))).await {
        DeviceEvent::Received(env) => {
            assert_eq!(env.id, MessageId(100));
            assert_eq!(env.kind, MessageKind::Command);
        }
        other => panic!("unexpected {other:?}"),
    }

    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(stats.delivered, 6);
    assert_eq!(stats.connects, 1);
    let counts = bridge.counts();
    assert!(counts.delivered >= 6, "{counts:?}"); // 5 + at least one probe
    assert_eq!(counts.refused_identity + counts.refused_garbage, 0);
    bridge.shutdown().await;
}

/// The connection drops twice in the middle of a run, once with an acknowledgement lost:
/// the device reconnects, resubscribes and republishes; every message reaches the handler
/// exactly once, and replies keep reaching the device.
pub async fn survives_connection_drops(broker: SocketAddr) {
    let group = unique("g");
    let (bridge, mut handled) = start_bridge(broker, &group).await;
    let proxy = Proxy::start(broker).await;
    let device = DeviceId::new(&unique("dev")).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device(proxy.addr, device, cmd_rx, ev_tx);
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;

    let mut handled_ids: HashMap<u32, u32> = HashMap::new();
    let mut replies: HashMap<u32, u32> = HashMap::new();
    let send = |id: u32| {
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        cmd_tx.send(Command::Send(bytes)).unwrap();
    };

    // Phase 1: normal traffic.
    for id in 1..=3 {
        send(id);
    }
    for id in 1..=3 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }

    // Phase 2: the broker's answers are swallowed, so message 4 reaches the backend but its
    // PUBACK never reaches the device; then the connection drops.
    proxy.swallow_downstream();
    send(4);
    await_handled(&mut handled, device, &mut handled_ids, 4).await;
    proxy.cut().await;
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;

    // Phase 3: traffic after the reconnect, then a plain cut, then more traffic.
    for id in 5..=7 {
        send(id);
    }
    for id in 5..=7 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }
    proxy.cut().await;
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;
    for id in 8..=10 {
        send(id);
    }
    for id in 8..=10 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }

    // Replies to 8..=10 travelled after the last reconnect, so the subscription was renewed.
    let mut got_late_reply = 0;
    while got_late_reply < 3 {
        if let DeviceEvent::Received(env) =
            next_event(&mut events, |e| matches!(e, DeviceEvent::Received(_))).await
        {
            *replies.entry(env.id.0).or_default() += 1;
            if env.id.0 >= 8 {
                got_late_reply += 1;
            }
        }
    }

    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    proxy.stop();

    // Republished message 4 was dropped as a repeat, not handed on twice.
    let counts = bridge.counts();
    assert!(counts.duplicates >= 1, "{counts:?}");
    // Anything still arriving now would be a second delivery.
    while let Ok((d, env)) = handled.try_recv() {
        if d == device {
            *handled_ids.entry(env.id.0).or_default() += 1;
        }
    }
    let expected: HashMap<u32, u32> = (1..=10).map(|id| (id, 1)).collect();
    assert_eq!(handled_ids, expected, "every message exactly once");
    assert!(
        replies.values().all(|n| *n == 1),
        "device deduplicates: {replies:?}"
    );
    assert!(stats.connects >= 3, "{stats:?}");
    bridge.shutdown().await;
}

/// Forged, garbage and oversized publishes on a device topic are refused and counted before
/// the handler sees them.
pub async fn bridge_refuses_bad_publishes(broker: SocketAddr) {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let group = unique("g");
    let (bridge, mut handled) = start_bridge(broker, &group).await;
    let device = DeviceId::new(&unique("dev")).unwrap();
    let other = DeviceId::new(&unique("other")).unwrap();
    let raw = raw_client(broker, device.as_str()).await;
    let topic = format!("iot/{device}/up");
    let forged = envelope(other, 1, MessageKind::Telemetry).to_vec().unwrap();
    let oversized = Envelope {
        payload: vec![0u8; 300],
        ..envelope(device, 2, MessageKind::Telemetry)
    }
    .to_vec()
    .unwrap();
    let good = envelope(device, 3, MessageKind::Telemetry)
        .to_vec()
        .unwrap();
    for payload in [forged, b"not cbor at all".to_vec(), oversized, good] {
        raw.client
            .publish(topic.clone(), MqttQoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let (d, env) = next_event(&mut handled, |(d, _)| *d == device || *d == other).await;
    assert_eq!((d, env.id), (device, MessageId(3)));
    let counts = bridge.counts();
    assert_eq!(counts.refused_identity, 1, "{counts:?}");
    assert_eq!(counts.refused_garbage, 1, "{counts:?}");
    assert_eq!(counts.refused_oversized, 1, "{counts:?}");
    raw.stop().await;
    bridge.shutdown().await;
}

/// Two bridges in one shared-subscription group split the messages: each message reaches
/// exactly one of them.
pub async fn shared_subscription_splits_the_fleet(broker: SocketAddr) {
    let group = unique("g");
    let (a, mut handled_a) = start_bridge(broker, &group).await;
    let (b, mut handled_b) = start_bridge(broker, &group).await;
    let device = DeviceId::new(&unique("dev")).unwrap();
    let raw = raw_client(broker, device.as_str()).await;
    let topic = format!("iot/{device}/up");
    for id in 1..=20u32 {
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        raw.client
            .publish(
                topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    timeout(WAIT, async {
        while from_a.len() + from_b.len() < 20 {
            tokio::select! {
                Some((d, env)) = handled_a.recv() => if d == device { from_a.push(env.id.0) },
                Some((d, env)) = handled_b.recv() => if d == device { from_b.push(env.id.0) },
            }
        }
    })
    .await
    .expect("all 20 messages handled");
    let mut all: Vec<u32> = from_a.iter().chain(&from_b).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=20).collect::<Vec<_>>(),
        "each message exactly once"
    );
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "{from_a:?} {from_b:?}"
    );
    raw.stop().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The bridge loses its connection while a device publishes: the broker keeps the bridge's
/// session (shared subscription and queued QoS 1 messages), so every message the broker
/// acknowledged to the device reaches the handler once the bridge is back. Needs a broker
/// that keeps sessions with shared subscriptions (Mosquitto; not rumqttd 0.20).
pub async fn bridge_outage_loses_nothing(broker: SocketAddr) {
    let proxy = Proxy::start(broker).await;
    let group = unique("g");
    let (tx, mut handled) = mpsc::unbounded_channel();
    let mut config = bridge_config(proxy.addr, &group);
    // Short: the broker drops the session soon after the test.
    config.session_expiry = Some(30);
    let bridge = Bridge::spawn(config, Recorder { seen: tx }).unwrap();
    wait_bridge_subscribed(broker, &mut handled).await;

    let device = DeviceId::new(&unique("dev")).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device(broker, device, cmd_rx, ev_tx);
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;
    let send = |id: u32| {
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        cmd_tx.send(Command::Send(bytes)).unwrap();
    };
    let mut handled_ids: HashMap<u32, u32> = HashMap::new();
    send(1);
    await_handled(&mut handled, device, &mut handled_ids, 1).await;

    // An observer on the device's up topic shows when the broker has the messages.
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut observer = raw_client(broker, &unique("observer")).await;
    observer
        .client
        .subscribe(
            format!("iot/{device}/up"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    next_event(&mut observer.incoming, |p| matches!(p, Packet::SubAck(_))).await;

    // The bridge is cut off; the device's messages are acknowledged by the broker meanwhile.
    proxy.close();
    proxy.cut().await;
    let connects_before = bridge.counts().connects;
    for id in 2..=4 {
        send(id);
    }
    timeout(WAIT, bridge.wait_until(|c| c.connection_errors > 0))
        .await
        .expect("the bridge noticed the cut");
    for _ in 2..=4 {
        next_event(&mut observer.incoming, |p| matches!(p, Packet::Publish(_))).await;
    }
    // The broker has all three while the bridge is away.
    while let Ok((d, _)) = handled.try_recv() {
        assert_ne!(d, device, "the bridge handled a message while cut off");
    }
    proxy.open();
    for id in 2..=4 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }
    assert!(bridge.counts().connects > connects_before);
    drop(cmd_tx);
    timeout(WAIT, task).await.unwrap().unwrap();
    proxy.stop();
    observer.stop().await;
    assert_eq!(handled_ids, (1..=4).map(|id| (id, 1)).collect());
    bridge.shutdown().await;
}

/// A bridge with a mount point serves only the layout under it: a device publishing under
/// the mount point is handled and answered under it, the same device publishing on the bare
/// layout is not seen, and a publish of a device that names another mount point is not seen
/// either.
pub async fn mount_point_confines_the_layout(broker: SocketAddr) {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mount = format!("runs/{}", unique("m"));
    let mut config = bridge_config(broker, &unique("g"));
    config.mount_point = Some(mount.clone());
    let (tx, mut handled) = mpsc::unbounded_channel();
    let bridge = Bridge::spawn(config, Recorder { seen: tx }).unwrap();
    let device = DeviceId::new(&unique("dev")).unwrap();
    let mut raw = raw_client(broker, device.as_str()).await;
    let down = format!("{mount}/iot/{device}/down");
    raw.client
        .subscribe(down.clone(), MqttQoS::AtLeastOnce)
        .await
        .unwrap();
    let publish = |topic: String, id: u32| {
        let client = raw.client.clone();
        async move {
            let bytes = envelope(device, id, MessageKind::Telemetry)
                .to_vec()
                .unwrap();
            client
                .publish(topic, MqttQoS::AtLeastOnce, false, bytes)
                .await
                .unwrap();
        }
    };
    // Outside the mount point, before and while the bridge subscribes: never handled.
    publish(format!("iot/{device}/up"), 1).await;
    publish(format!("other/iot/{device}/up"), 2).await;
    // Under it, until the bridge's subscription is in place (bounded count and time).
    let mut got = None;
    'probing: for id in 100..200u32 {
        publish(format!("{mount}/iot/{device}/up"), id).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        if let Ok(Some((d, env))) = tokio::time::timeout_at(deadline, handled.recv()).await {
            assert_eq!(d, device);
            assert!(
                env.id.0 >= 100,
                "a publish outside the mount point was handled"
            );
            got = Some(env.id.0);
            break 'probing;
        }
    }
    let id = got.expect("the bridge never received a publish under its mount point");
    publish(format!("iot/{device}/up"), 3).await;
    // The reply comes back on the device's down topic under the mount point.
    let reply = timeout(WAIT, async {
        loop {
            match raw.incoming.recv().await {
                Some(Packet::Publish(p)) => break p,
                Some(_) => {}
                None => panic!("raw client stopped"),
            }
        }
    })
    .await
    .expect("a reply under the mount point");
    assert_eq!(reply.topic, down.as_bytes());
    assert_eq!(OwnedEnvelope::decode(&reply.payload).unwrap().id.0, id);
    // Nothing outside the mount point was handled meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok((_, env)) = handled.try_recv() {
        assert!(
            env.id.0 >= 100,
            "a publish outside the mount point was handled"
        );
    }
    raw.stop().await;
    bridge.shutdown().await;
}
