//! PostgreSQL for the tests: the server's address, a schema of the test's own that is dropped
//! when the test ends, and a TCP proxy that can cut the connections.
#![allow(dead_code, unreachable_pub)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The PostgreSQL server the tests use (`IOT_TESTS_PG_ADDR`, default `127.0.0.1:5432`).
pub fn upstream() -> String {
    std::env::var("IOT_TESTS_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

/// A loopback TCP proxy to the PostgreSQL server that can be switched off.
pub struct Proxy {
    /// The port it listens on (loopback).
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding to [`upstream`].
    pub fn start() -> Self {
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
    pub fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
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
pub struct Schema(pub String);

impl Schema {
    /// A schema name unique to this process and moment, starting with `prefix`.
    pub fn unique(prefix: &str) -> Self {
        Self(format!(
            "{prefix}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                % 1_000_000_000_000
        ))
    }

    /// A connection string for the upstream server, through `port` when given.
    pub fn connection(port: Option<u16>) -> String {
        let (host, upstream_port) = upstream().rsplit_once(':').map_or_else(
            || ("127.0.0.1".to_string(), "5432".to_string()),
            |(h, p)| (h.to_string(), p.to_string()),
        );
        let port = port.map_or(upstream_port, |p| p.to_string());
        format!("host={host} port={port} user=postgres dbname=test")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&Self::connection(None), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0));
        }
    }
}
