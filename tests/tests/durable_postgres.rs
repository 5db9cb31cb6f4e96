//! The durable backend on PostgreSQL when the database goes away and comes back.
//!
//! Built only with `--features postgres-tests` (run by `.ci/steps/store.sh`); it needs the
//! PostgreSQL server at `IOT_TESTS_PG_ADDR` (default `127.0.0.1:5432`, user `postgres`,
//! database `test`, trust authentication) and fails when it is absent. The backend reaches
//! the server through a TCP proxy the test runs, so the test can cut every connection and
//! refuse new ones (the database is unreachable), then let them through again; it works in a
//! schema of its own and drops it at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iot_fleet::durable::DurableError;
use iot_store::{PgConfig, PgStore, StoreError};
use iot_tests::wire_devices::{enroll, exchange, fresh_server, open, reported, update};

const DEVICES: u32 = 10;
const T0: u64 = 1_000_000;

fn upstream() -> String {
    std::env::var("IOT_TESTS_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

/// A loopback TCP proxy to the PostgreSQL server that can be switched off.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let acceptor = {
            let (up, stop, open) = (up.clone(), stop.clone(), open.clone());
            std::thread::spawn(move || {
                // Bounded: the test stops it; and no run of this test lasts ten minutes.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    if !up.load(Ordering::Relaxed) {
                        // Unreachable: the connection is closed before a byte is exchanged.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream()) else {
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let mut tracked = open.lock().unwrap();
                    tracked.push(client.try_clone().unwrap());
                    tracked.push(server.try_clone().unwrap());
                    drop(tracked);
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                }
            })
        };
        Self {
            port,
            up,
            stop,
            open,
            acceptor: Some(acceptor),
        }
    }

    /// Closes every open connection and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    fn restore(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies `from` into `to` until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Drops the test's schema when the test ends, however it ends.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let (host, port) = upstream().rsplit_once(':').map_or_else(
            || ("127.0.0.1".to_string(), "5432".to_string()),
            |(h, p)| (h.to_string(), p.to_string()),
        );
        if let Ok(mut c) = postgres::Client::connect(
            &format!("host={host} port={port} user=postgres dbname=test"),
            postgres::NoTls,
        ) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0));
        }
    }
}

fn is_lost(r: &Result<impl std::fmt::Debug, DurableError>) -> bool {
    matches!(r, Err(DurableError::Store(StoreError::ConnectionLost(_))))
}

#[test]
fn the_backend_refuses_while_postgres_is_unreachable_and_resumes_when_it_returns() {
    let schema = Schema(format!(
        "iot_fleet_pg_outage_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
            % 1_000_000_000_000
    ));
    let proxy = Proxy::start();
    let connect = || {
        let mut config = PgConfig::new(
            format!(
                "host=127.0.0.1 port={} user=postgres dbname=test",
                proxy.port
            ),
            schema.0.clone(),
        );
        config.connect_timeout = Duration::from_secs(2);
        config
    };
    let store = PgStore::connect(connect())
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", upstream()));
    let mut server = open(Box::new(store)).unwrap();
    enroll(&mut server, 0..DEVICES, T0).unwrap();
    let mut now = T0 + 1_000;
    let round =
        |value: i64, now: u64| -> Vec<_> { (0..DEVICES).map(|i| update(i, value, now)).collect() };
    for r in exchange(&mut server, &round(1, now), now) {
        r.unwrap();
    }

    // The database goes away: the submission in flight fails whole, clearly, and nothing
    // more is acknowledged.
    proxy.cut();
    now += 1_000;
    let results = exchange(&mut server, &round(2, now), now);
    assert!(results.iter().all(is_lost), "{results:?}");
    assert!(server.is_stopped());
    now += 1_000;
    for r in exchange(&mut server, &round(3, now), now) {
        assert_eq!(r.unwrap_err(), DurableError::Stopped);
    }

    // Restarting while it is still unreachable fails clearly, as often as it is tried.
    for _ in 0..2 {
        let r = server.restart(fresh_server(), now);
        assert!(is_lost(&r), "{r:?}");
        assert!(server.is_stopped());
    }

    // It returns: the backend restarts from what it acknowledged and the devices carry on
    // without registering again.
    proxy.restore();
    server.restart(fresh_server(), now).unwrap();
    assert!(!server.is_stopped());
    assert_eq!(server.server().fleet().registered_count(), DEVICES as usize);
    for i in 0..DEVICES {
        assert_eq!(reported(&server, i), Some(1), "device {i}");
    }
    now += 1_000;
    for r in exchange(&mut server, &round(4, now), now) {
        r.unwrap();
    }
    for i in 0..DEVICES {
        assert_eq!(reported(&server, i), Some(4), "device {i}");
    }
    let head = server.verify_audit().unwrap();
    assert!(head.seq > 0);
    drop(server.shutdown().unwrap());
}
