//! Test support shared by the MQTT scenarios against Mosquitto: a mosquitto the test starts
//! (TLS with client certificates, ACLs, kill and restart), a CA made at test time, and a TCP
//! proxy between devices and the broker that can cut, swallow and refuse.
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

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Devices may only publish on their own up topic and read their own down topic (by client
/// id); the backend user reads every up topic (also through shared subscriptions) and writes
/// every down topic.
pub const ACL: &str = "\
pattern write iot/%c/up
pattern read iot/%c/down
user backend
topic read iot/+/up
topic read $share/+/iot/+/up
topic write iot/+/down
";

/// A mosquitto started by a test on a free loopback port, with the ACL above (or its own).
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n", ACL, &[])
    }

    /// A broker with `settings` added to its listener, the ACL `acl`, and `files` written
    /// beside its configuration (`{dir}` in `settings` names that directory).
    pub fn start_with(settings: &str, acl: &str, files: &[(&str, String)]) -> Self {
        let port = StdListener::bind("127.0.0.1:0")
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
    pub fn restart(&mut self) {
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
        if StdStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
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

/// A CA, made at test time, and certificates it signs. No key leaves the test.
pub struct Pki {
    pub ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
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

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate with common name `cn` (the MQTT user name under
    /// `use_identity_as_username`) and `sans` as subject alternative names.
    pub fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
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

    pub fn client_tls(&self, cn: &str) -> iot_mqtt::tls::ClientTls {
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
pub fn tls_broker(pki: &Pki) -> Mosquitto {
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
