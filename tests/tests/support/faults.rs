//! A fault-injecting TCP proxy run by the test (the kernel's netem is not available here):
//! latency, bandwidth limits, stalls, connection resets, half-open connections that silently
//! stop forwarding, and refusing new connections.
//!
//! Memory is bounded by construction: each connection holds one 4 KiB buffer per direction
//! and forwards chunk by chunk (a slow or stalled direction pushes back on its sender through
//! TCP instead of queueing), and the number of connections is bounded.
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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connections the proxy accepts over its life, at most.
const MAX_ACCEPTS: usize = 10_000;
/// Chunks one direction of a connection forwards, at most.
const MAX_CHUNKS: usize = 10_000_000;

/// The faults applied to what the proxy forwards, changed while it runs.
#[derive(Default)]
struct Faults {
    /// Delay before each chunk is forwarded, in each direction.
    latency_ms: AtomicU64,
    /// Bytes per second per direction and connection (0: unlimited).
    bytes_per_sec: AtomicU64,
    /// Nothing is read or forwarded while set (connections stay open).
    stalled: AtomicBool,
    /// New connections are closed at once while set.
    refusing: AtomicBool,
}

/// One proxied connection.
struct Conn {
    /// Set: read and discard in both directions (a half-open path).
    blackholed: Arc<AtomicBool>,
    /// Fires to reset the connection.
    reset: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The proxy. Devices connect to [`FaultProxy::addr`]; it connects on to the upstream.
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    conns: Arc<Mutex<Vec<Conn>>>,
    open: Arc<AtomicUsize>,
    peak_open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let peak_open = Arc::new(AtomicUsize::new(0));
        let (f, c, o, p) = (
            faults.clone(),
            conns.clone(),
            open.clone(),
            peak_open.clone(),
        );
        let accept = tokio::spawn(async move {
            for _ in 0..MAX_ACCEPTS {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if f.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                // A reset sends RST: with a zero linger the close does not block and
                // discards what is unsent.
                #[allow(deprecated)]
                let _ = client.set_linger(Some(Duration::ZERO));
                let blackholed = Arc::new(AtomicBool::new(false));
                let (reset, resets) = watch::channel(false);
                let task = tokio::spawn(run_conn(
                    client,
                    upstream,
                    f.clone(),
                    blackholed.clone(),
                    resets,
                    o.clone(),
                    p.clone(),
                ));
                let mut conns = c.lock().unwrap();
                conns.retain(|conn| !conn.task.is_finished());
                conns.push(Conn {
                    blackholed,
                    reset,
                    task,
                });
            }
        });
        Self {
            addr,
            faults,
            conns,
            open,
            peak_open,
            accept,
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0: unlimited).
    pub fn set_bandwidth(&self, bytes_per_sec: u64) {
        self.faults
            .bytes_per_sec
            .store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Stops (`true`) or resumes forwarding on every connection, keeping them open.
    pub fn set_stalled(&self, stalled: bool) {
        self.faults.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Closes new connections at once while `true`.
    pub fn set_refusing(&self, refusing: bool) {
        self.faults.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Clears latency, bandwidth limit, stall and refusal.
    pub fn heal(&self) {
        self.set_latency(Duration::ZERO);
        self.set_bandwidth(0);
        self.set_stalled(false);
        self.set_refusing(false);
    }

    /// Resets every open connection (RST to the device, close to the broker).
    pub fn reset_all(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for conn in conns.iter().filter(|c| !c.task.is_finished()) {
            let _ = conn.reset.send(true);
            n += 1;
        }
        n
    }

    /// Every open connection silently stops forwarding in both directions, and stays open:
    /// only the endpoints' keepalive can tell. New connections are not affected.
    pub fn blackhole_all(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for conn in conns.iter().filter(|c| !c.task.is_finished()) {
            conn.blackholed.store(true, Ordering::SeqCst);
            n += 1;
        }
        n
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.peak_open.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.accept.abort();
        for conn in self.conns.lock().unwrap().iter() {
            conn.task.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run_conn(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Faults>,
    blackholed: Arc<AtomicBool>,
    mut reset: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
) {
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(now_open, Ordering::SeqCst);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset_now = tokio::select! {
        () = pump(&mut cr, &mut sw, &faults, &blackholed) => false,
        () = pump(&mut sr, &mut cw, &faults, &blackholed) => false,
        _ = reset.changed() => true,
    };
    // A half-open path stays open toward the device even when the broker gives up on it
    // (its own keepalive): only the device's keepalive may end it (at most 10 min).
    if !reset_now && blackholed.load(Ordering::SeqCst) {
        drop((sr, sw));
        let mut buf = [0u8; 4096];
        let drain = async {
            for _ in 0..MAX_CHUNKS {
                if matches!(cr.read(&mut buf).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        };
        tokio::select! {
            () = drain => {}
            _ = reset.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
    drop(cw);
    open.fetch_sub(1, Ordering::SeqCst);
}

async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    faults: &Faults,
    blackholed: &AtomicBool,
) {
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_CHUNKS {
        // A stall reads nothing: the sender's TCP window fills and it waits (at most 10 min).
        for _ in 0..60_000 {
            if !faults.stalled.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackholed.load(Ordering::SeqCst) {
            continue;
        }
        let latency = faults.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let rate = faults.bytes_per_sec.load(Ordering::SeqCst);
        if let Some(micros) = (n as u64 * 1_000_000).checked_div(rate) {
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
    }
}
