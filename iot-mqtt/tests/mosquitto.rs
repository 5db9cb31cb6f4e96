//! The end-to-end scenarios against Mosquitto: the machine's broker on 127.0.0.1:1883, and
//! brokers these tests start on free ports with an ACL file. Opt-in (feature
//! `mosquitto-tests`), run by `.ci/steps/mqtt.sh`; a broker that cannot be reached fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use common::*;
use iot_mqtt::iot_core::id::DeviceId;
use iot_mqtt::iot_core::message::MessageKind;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::time::timeout;

const MACHINE_BROKER: &str = "127.0.0.1:1883";

fn machine_broker() -> SocketAddr {
    let addr: SocketAddr = MACHINE_BROKER.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the machine's Mosquitto must listen on {addr}: {e}"));
    addr
}

/// Devices may only publish on their own up topic and read their own down topic (by client
/// id); the backend user reads every up topic (also through shared subscriptions) and writes
/// every down topic.
const ACL: &str = "\
pattern write iot/%c/up
pattern read iot/%c/down
user backend
topic read iot/+/up
topic read $share/+/iot/+/up
topic write iot/+/down
";

/// A mosquitto started by a test on a free loopback port, with the ACL above.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Mosquitto {
    fn start() -> Self {
        Self::start_with("allow_anonymous true\n", ACL, &[])
    }

    /// A broker with `settings` added to its listener, the ACL `acl`, and `files` written
    /// beside its configuration (`{dir}` in `settings` names that directory).
    fn start_with(settings: &str, acl: &str, files: &[(&str, String)]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("iot-mqtt-mosquitto"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, contents) in files {
            std::fs::write(dir.join(name), contents).unwrap();
        }
        let acl_path = dir.join("acl");
        std::fs::write(&acl_path, acl).unwrap();
        let conf = dir.join("mosquitto.conf");
        let settings = settings.replace("{dir}", &dir.display().to_string());
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{settings}acl_file {}\npersistence false\n",
                acl_path.display()
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = spawn_mosquitto(&conf, addr);
        Self { child, addr, dir }
    }

    /// Kills the broker (no clean shutdown) and starts it again on the same port.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn_mosquitto(&self.dir.join("mosquitto.conf"), self.addr);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_mosquitto(conf: &std::path::Path, addr: SocketAddr) -> Child {
    let binary = ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|b| {
            Process::new(b)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .expect("mosquitto is installed");
    let mut child = Process::new(binary)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it listens: bounded in tries and time.
    let start = Instant::now();
    for _ in 0..500 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("mosquitto exited: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("mosquitto not listening on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_exchanges_envelopes_both_ways() {
    exchange_both_ways(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_connection_drops_lose_nothing() {
    survives_connection_drops(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_bridge_refuses_bad_publishes() {
    bridge_refuses_bad_publishes(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_shared_subscription_splits() {
    shared_subscription_splits_the_fleet(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_mount_point_confines_the_bridge() {
    mount_point_confines_the_layout(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_broker_bridge_outage_loses_nothing() {
    bridge_outage_loses_nothing(machine_broker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_broker_exchanges_envelopes_both_ways() {
    let broker = Mosquitto::start();
    exchange_both_ways(broker.addr).await;
    shared_subscription_splits_the_fleet(broker.addr).await;
}

/// A device publishing under another device's topic is refused by the broker: the bridge
/// never sees it, while the same client's publish on its own topic gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_broker_refuses_a_device_publishing_under_another_device() {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let broker = Mosquitto::start();
    let (bridge, mut handled) = start_bridge(broker.addr, &unique("g")).await;
    let victim = DeviceId::new(&unique("victim")).unwrap();
    let intruder = DeviceId::new(&unique("intruder")).unwrap();
    let raw = raw_client(broker.addr, intruder.as_str()).await;
    let forged = envelope(victim, 1, MessageKind::Telemetry)
        .to_vec()
        .unwrap();
    let own = envelope(intruder, 2, MessageKind::Telemetry)
        .to_vec()
        .unwrap();
    raw.client
        .publish(
            format!("iot/{victim}/up"),
            MqttQoS::AtLeastOnce,
            false,
            forged,
        )
        .await
        .unwrap();
    raw.client
        .publish(
            format!("iot/{intruder}/up"),
            MqttQoS::AtLeastOnce,
            false,
            own,
        )
        .await
        .unwrap();
    // Mosquitto forwards one client's messages in order: once the second arrived, the first
    // would have arrived before it.
    let (device, env) = next_event(&mut handled, |(d, _)| *d == intruder || *d == victim).await;
    assert_eq!((device, env.id.0), (intruder, 2));
    while let Ok((d, _)) = handled.try_recv() {
        assert_ne!(d, victim, "the broker let a forged publish through");
    }
    let counts = bridge.counts();
    assert_eq!(
        counts.refused_identity, 0,
        "the broker, not the bridge, refused it"
    );
    raw.stop().await;
    bridge.shutdown().await;
}

/// The broker is killed and restarted (no persistence: every session is gone) while the
/// device has three unacknowledged messages: the device reconnects to a fresh session,
/// resubscribes, republishes; the handler gets every message exactly once and replies reach
/// the device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_broker_restart_loses_nothing_and_delivers_once() {
    let mut broker = Mosquitto::start();
    let (bridge, mut handled) = start_bridge(broker.addr, &unique("g")).await;
    let proxy = Proxy::start(broker.addr).await;
    let device = DeviceId::new(&unique("dev")).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device(proxy.addr, device, cmd_rx, ev_tx);
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
    // Messages 2..=4 reach the backend but their PUBACKs are lost.
    proxy.swallow_downstream();
    for id in 2..=4 {
        send(id);
    }
    for id in 2..=4 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }
    // The device stays away until the bridge has its subscription on the new broker, so the
    // republished messages have a subscriber.
    proxy.close();
    proxy.cut().await;
    broker.restart();
    wait_bridge_subscribed(broker.addr, &mut handled).await;
    proxy.open();
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;
    for id in 5..=7 {
        send(id);
    }
    for id in 5..=7 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }
    let mut late_replies = 0;
    while late_replies < 3 {
        if let DeviceEvent::Received(env) =
            next_event(&mut events, |e| matches!(e, DeviceEvent::Received(_))).await
            && env.id.0 >= 5
        {
            late_replies += 1;
        }
    }
    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    proxy.stop();
    assert!(stats.republished >= 3, "{stats:?}");
    assert!(bridge.counts().duplicates >= 3, "{:?}", bridge.counts());
    while let Ok((d, env)) = handled.try_recv() {
        if d == device {
            *handled_ids.entry(env.id.0).or_default() += 1;
        }
    }
    let expected: HashMap<u32, u32> = (1..=7).map(|id| (id, 1)).collect();
    assert_eq!(handled_ids, expected, "every message exactly once");
    bridge.shutdown().await;
}

/// A CA, made at test time, and certificates it signs. No key leaves the test.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iot-mqtt test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate with common name `cn` (the MQTT user name under
    /// `use_identity_as_username`) and `sans` as subject alternative names.
    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    fn client_tls(&self, cn: &str) -> iot_mqtt::tls::ClientTls {
        let leaf = self.leaf(cn, &[]);
        iot_mqtt::tls::ClientTls {
            ca_pem: self.ca_pem().into_bytes(),
            cert_pem: leaf.cert_pem.into_bytes(),
            key_pem: leaf.key_pem.into_bytes(),
        }
    }
}

/// Mosquitto with TLS, `require_certificate`, `use_identity_as_username` and ACL patterns on
/// the user name (the certificate's common name).
fn tls_broker(pki: &Pki) -> Mosquitto {
    let server = pki.leaf("localhost", &["localhost", "127.0.0.1"]);
    let acl = "\
pattern write iot/%u/up
pattern read iot/%u/down
user backend
topic read iot/+/up
topic read $share/+/iot/+/up
topic write iot/+/down
";
    Mosquitto::start_with(
        "cafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
         require_certificate true\nuse_identity_as_username true\n",
        acl,
        &[
            ("ca.pem", pki.ca_pem()),
            ("server.pem", server.cert_pem),
            ("server.key", server.key_pem),
        ],
    )
}

/// The bridge connects over rustls with its certificate; a device can publish only under its
/// own id; a client without a certificate cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_broker_with_client_certificates_confines_devices() {
    use rumqttc::v5::mqttbytes::QoS as MqttQoS;
    let pki = Pki::new();
    let broker = tls_broker(&pki);

    let (tx, mut handled) = mpsc::unbounded_channel();
    let mut config = bridge_config(broker.addr, &unique("g"));
    config.credentials = None;
    config.tls = Some(pki.client_tls("backend"));
    let bridge = iot_mqtt::bridge::Bridge::spawn(config, Recorder { seen: tx }).unwrap();

    let device = DeviceId::new(&unique("dev")).unwrap();
    let victim = DeviceId::new(&unique("victim")).unwrap();
    let device_tls = pki.client_tls(device.as_str()).rustls_config().unwrap();
    let raw = raw_client_with(broker.addr, &unique("client"), Some(device_tls)).await;

    // The device's own messages get through once the bridge has subscribed: publish until
    // one arrives (bounded in count and time).
    let own_topic = format!("iot/{device}/up");
    let mut id = 0;
    let mut arrived = false;
    'publishing: for _ in 0..100 {
        id += 1;
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        raw.client
            .publish(own_topic.clone(), MqttQoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Ok(Some((d, _))) = tokio::time::timeout_at(deadline, handled.recv()).await {
            if d == device {
                arrived = true;
                break 'publishing;
            }
        }
    }
    assert!(
        arrived,
        "the bridge never received the device's message over TLS"
    );

    // Under another device's topic: refused by the broker, so only the marker arrives.
    let forged = envelope(victim, 1_000, MessageKind::Telemetry)
        .to_vec()
        .unwrap();
    raw.client
        .publish(
            format!("iot/{victim}/up"),
            MqttQoS::AtLeastOnce,
            false,
            forged,
        )
        .await
        .unwrap();
    let marker = envelope(device, 2_000, MessageKind::Telemetry)
        .to_vec()
        .unwrap();
    raw.client
        .publish(own_topic, MqttQoS::AtLeastOnce, false, marker)
        .await
        .unwrap();
    let mut victims = 0;
    timeout(WAIT, async {
        loop {
            let (d, env) = handled.recv().await.unwrap();
            if d == victim {
                victims += 1;
            }
            if d == device && env.id.0 == 2_000 {
                break;
            }
        }
    })
    .await
    .expect("the marker arrives");
    assert_eq!(victims, 0, "the broker let a forged publish through");
    assert_eq!(bridge.counts().refused_identity, 0);

    // Without a client certificate the TLS handshake is refused.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut options = rumqttc::v5::MqttOptions::new("anonymous", "127.0.0.1", broker.addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(anonymous)),
    ));
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 8);
    let first = timeout(WAIT, eventloop.poll())
        .await
        .expect("an answer in time");
    assert!(
        first.is_err(),
        "a client without a certificate connected: {first:?}"
    );

    raw.stop().await;
    bridge.shutdown().await;
}

/// The device session over embedded-tls (TLS 1.3, client certificate, the broker's
/// certificate checked against the CA) and the bridge over rustls exchange envelopes both ways
/// through a mosquitto that requires certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_device_session_and_bridge_exchange_envelopes() {
    let pki = Pki::new();
    let broker = tls_broker(&pki);
    let (tx, mut handled) = mpsc::unbounded_channel();
    let mut config = bridge_config(broker.addr, &unique("g"));
    config.credentials = None;
    config.tls = Some(pki.client_tls("backend"));
    let bridge = iot_mqtt::bridge::Bridge::spawn(config, Recorder { seen: tx }).unwrap();
    let make_tls = |cn: &str| pki.client_tls(cn).rustls_config().unwrap();
    wait_bridge_subscribed_with(broker.addr, &mut handled, Some(&make_tls)).await;

    let device = DeviceId::new(&unique("dev")).unwrap();
    let leaf = pki.leaf(device.as_str(), &[]);
    let material = DeviceTlsMaterial {
        ca_der: pki.ca.der().to_vec(),
        cert_der: leaf.cert_der,
        key_pkcs8_der: leaf.key_der,
        server_name: "localhost".to_string(),
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device_with(broker.addr, device, cmd_rx, ev_tx, Some(material));
    next_event(&mut events, |e| matches!(e, DeviceEvent::Connected)).await;

    let mut handled_ids: HashMap<u32, u32> = HashMap::new();
    for id in 1..=3 {
        let bytes = envelope(device, id, MessageKind::Telemetry)
            .to_vec()
            .unwrap();
        cmd_tx.send(Command::Send(bytes)).unwrap();
    }
    for id in 1..=3 {
        await_handled(&mut handled, device, &mut handled_ids, id).await;
    }
    let mut replies = Vec::new();
    while replies.len() < 3 {
        if let DeviceEvent::Received(env) =
            next_event(&mut events, |e| matches!(e, DeviceEvent::Received(_))).await
        {
            assert_eq!(env.kind, MessageKind::Ack);
            replies.push(env.id.0);
        }
    }
    replies.sort_unstable();
    assert_eq!(replies, vec![1, 2, 3]);
    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(stats.connects, 1, "{stats:?}");
    assert_eq!(handled_ids, (1..=3).map(|id| (id, 1)).collect());
    bridge.shutdown().await;
}

/// A device whose certificate another CA signed cannot connect: the broker refuses it and the
/// session reports a TLS or transport failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_device_with_a_foreign_certificate_is_refused() {
    let pki = Pki::new();
    let foreign = Pki::new();
    let broker = tls_broker(&pki);
    let device = DeviceId::new(&unique("dev")).unwrap();
    let leaf = foreign.leaf(device.as_str(), &[]);
    let material = DeviceTlsMaterial {
        ca_der: pki.ca.der().to_vec(),
        cert_der: leaf.cert_der,
        key_pkcs8_der: leaf.key_der,
        server_name: "localhost".to_string(),
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device_with(broker.addr, device, cmd_rx, ev_tx, Some(material));
    // A few attempts (backoff 20 ms doubling), none connects.
    let connected = timeout(Duration::from_secs(2), async {
        loop {
            if let Some(DeviceEvent::Connected) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(
        connected.is_err(),
        "a device with a foreign certificate connected"
    );
    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(stats.connects, 0);
    assert!(stats.connect_failures >= 2, "{stats:?}");
}

/// The device checks the broker's certificate: trusting another CA, it never connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_device_refuses_a_broker_its_ca_did_not_sign() {
    let pki = Pki::new();
    let foreign = Pki::new();
    let broker = tls_broker(&pki);
    let device = DeviceId::new(&unique("dev")).unwrap();
    let leaf = pki.leaf(device.as_str(), &[]);
    let material = DeviceTlsMaterial {
        ca_der: foreign.ca.der().to_vec(),
        cert_der: leaf.cert_der,
        key_pkcs8_der: leaf.key_der,
        server_name: "localhost".to_string(),
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel::<Command>();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let task = spawn_device_with(broker.addr, device, cmd_rx, ev_tx, Some(material));
    let connected = timeout(Duration::from_secs(2), async {
        loop {
            if let Some(DeviceEvent::Connected) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(
        connected.is_err(),
        "the device accepted a broker its CA did not sign"
    );
    drop(cmd_tx);
    let stats = timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(stats.connects, 0);
    assert!(stats.connect_failures >= 2, "{stats:?}");
}
