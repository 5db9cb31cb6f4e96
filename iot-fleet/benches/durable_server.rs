//! Durable shadow updates through the server binding at 100,000 devices.
//!
//! 100,000 devices are imported and registered over the protocol (challenge, then proof),
//! then random devices send shadow updates (one reported field, a new value each time). The
//! backend thread hands bursts of `BURST` messages to [`DurableServer::submit`] and releases
//! their replies from [`DurableServer::wait`] once their transaction committed; it handles
//! the next burst while the previous one commits (two bursts in flight). Every update changes
//! the document, so each is a compare-and-swap shadow write plus an audit entry, durable
//! before it is acknowledged.
//!
//! Criterion reports the time per burst (throughput in updates per second). The p50 / p99 /
//! max acknowledgement latency (from the moment the burst was handed in to the moment its
//! replies were released) of every update criterion ran is printed after each run.
//!
//! SQLite always runs (temporary file, `synchronous = FULL`). PostgreSQL runs when
//! `IOT_FLEET_BENCH_PG_URL` names a server (for example `host=127.0.0.1 user=postgres
//! dbname=test`), in a schema of its own that is dropped afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use common::{id, register, secret, session, update};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iot_core::{EnvelopeRef, MessageId, NodeId, TenantId};
use iot_fleet::durable::{
    DurableError, DurableServer, Message, ShardedServer, ShardedTicket, Ticket,
};
use iot_fleet::{DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::RegistrationResponse;
use iot_protocol::Downlink;
use iot_store::{GroupCommitConfig, PgConfig, PgStore, SqliteStore, Store};

const DEVICES: usize = 100_000;
const BURST: usize = 1_024;
const START_MS: u64 = 1_000_000;

/// The backend under test: one `DurableServer`, or a `ShardedServer` with N shards.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Plain(DurableServer),
    Sharded(ShardedServer),
}

enum AnyTicket {
    Plain(Ticket),
    Sharded(ShardedTicket),
}

impl Backend {
    fn submit(&mut self, messages: &[Message<'_>]) -> AnyTicket {
        match self {
            Self::Plain(s) => AnyTicket::Plain(s.submit(messages)),
            Self::Sharded(s) => AnyTicket::Sharded(s.submit(messages)),
        }
    }

    fn wait(&mut self, ticket: AnyTicket) -> Vec<Result<Handled, DurableError>> {
        match (self, ticket) {
            (Self::Plain(s), AnyTicket::Plain(t)) => s.wait(t),
            (Self::Sharded(s), AnyTicket::Sharded(t)) => s.wait(t),
            _ => unreachable!("a ticket of another backend"),
        }
    }

    fn shutdown(self) -> Box<dyn Store + Send> {
        match self {
            Self::Plain(s) => s.shutdown().unwrap(),
            Self::Sharded(s) => s.shutdown().unwrap(),
        }
    }
}

/// Hands `(device, message bytes, kind)` to the server as one submission.
fn submit(
    server: &mut Backend,
    batch: &[(usize, Vec<u8>, iot_core::MessageKind)],
    now: u64,
) -> AnyTicket {
    let messages: Vec<Message<'_>> = batch
        .iter()
        .map(|(i, payload, kind)| Message {
            session: session(*i),
            envelope: EnvelopeRef {
                device: id(*i),
                seq: 0,
                id: MessageId(0),
                qos: iot_core::QoS::AtLeastOnce,
                kind: *kind,
                payload,
            },
            now_ms: now,
        })
        .collect();
    server.submit(&messages)
}

/// A backend (`shards == 0`: one `DurableServer`; otherwise a `ShardedServer`) with every
/// device imported and registered.
fn backend(store: Box<dyn Store + Send>, shards: usize) -> Backend {
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let make = || DeviceServer::with_os_rng(Fleet::default(), config, NodeId(1));
    let group = GroupCommitConfig {
        queue_capacity: 64,
        max_batch_ops: 4_096,
    };
    let mut server = if shards == 0 {
        Backend::Plain(DurableServer::open(store, make(), group).unwrap())
    } else {
        Backend::Sharded(ShardedServer::open(store, shards, make, group).unwrap())
    };
    let admin = Principal::new(
        "ops",
        TenantId::new("acme").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(10_000) {
        let records = chunk
            .iter()
            .map(|&i| ManufacturingRecord {
                device_id: id(i),
                secret: secret(i),
                sku: "TH".into(),
                serial: i as u64,
            })
            .collect();
        match &mut server {
            Backend::Plain(s) => s.import_manufacturing(&admin, &Scope::root(), records, START_MS),
            Backend::Sharded(s) => {
                s.import_manufacturing(&admin, &Scope::root(), records, START_MS)
            }
        }
        .unwrap();
    }
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(BURST) {
        let asks: Vec<_> = chunk.iter().map(|&i| register(i, None)).collect();
        let ticket = submit(&mut server, &asks, START_MS);
        let answers: Vec<_> = server
            .wait(ticket)
            .into_iter()
            .zip(chunk)
            .map(|(r, &i)| match r.unwrap() {
                Handled::Replies(r) => match r.as_slice() {
                    [Downlink::Registration(RegistrationResponse::Challenge(n))] => {
                        register(i, Some(*n))
                    }
                    other => panic!("no challenge: {other:?}"),
                },
                Handled::Unhandled => panic!("no challenge"),
            })
            .collect();
        let ticket = submit(&mut server, &answers, START_MS);
        for r in server.wait(ticket) {
            r.unwrap();
        }
    }
    if let Backend::Plain(s) = &server {
        assert_eq!(s.server().fleet().registered_count(), DEVICES);
    }
    server
}

struct Load {
    server: Backend,
    rng: u64,
    now: u64,
    value: i64,
    latencies: Vec<Duration>,
    /// Time the backend thread spent handling messages (in `submit`) and waiting for
    /// commits (in `wait`).
    handling: Duration,
    waiting: Duration,
}

impl Load {
    fn next(&mut self) -> usize {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % DEVICES as u64) as usize
    }

    /// Runs `bursts` bursts, two in flight, and returns the time it took.
    fn run(&mut self, bursts: u64) -> Duration {
        let started = Instant::now();
        let mut in_flight: VecDeque<(Instant, AnyTicket)> = VecDeque::new();
        for _ in 0..bursts {
            self.now += 1;
            let now = self.now;
            let burst: Vec<_> = (0..BURST)
                .map(|_| {
                    self.value += 1;
                    let (i, v) = (self.next(), self.value);
                    update(i, v, now)
                })
                .collect();
            let handed_in = Instant::now();
            let ticket = submit(&mut self.server, &burst, now);
            self.handling += handed_in.elapsed();
            in_flight.push_back((handed_in, ticket));
            if in_flight.len() > 1 {
                self.release(in_flight.pop_front().unwrap());
            }
        }
        while let Some(t) = in_flight.pop_front() {
            self.release(t);
        }
        started.elapsed()
    }

    fn release(&mut self, (handed_in, ticket): (Instant, AnyTicket)) {
        let waiting = Instant::now();
        let results = self.server.wait(ticket);
        self.waiting += waiting.elapsed();
        let latency = handed_in.elapsed();
        for r in results {
            assert!(matches!(r, Ok(Handled::Replies(_))), "{r:?}");
        }
        if self.latencies.len() < 4_000_000 {
            self.latencies.extend(std::iter::repeat_n(latency, BURST));
        }
    }

    fn report(&mut self, label: &str) {
        self.latencies.sort_unstable();
        let at = |q: f64| self.latencies[((self.latencies.len() - 1) as f64 * q) as usize];
        println!(
            "{label}: {} acknowledged updates, ack latency p50 {:?}, p99 {:?}, max {:?}",
            self.latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        println!(
            "{label}: backend thread spent {:?} handling messages and {:?} waiting for commits",
            self.handling, self.waiting
        );
    }
}

fn bench_store(
    c: &mut Criterion,
    label: &str,
    store: Box<dyn Store + Send>,
    shards: usize,
) -> Box<dyn Store + Send> {
    let load = RefCell::new(Load {
        server: backend(store, shards),
        rng: 0x2545_f491_4f6c_dd1d,
        now: START_MS,
        value: 0,
        latencies: Vec::new(),
        handling: Duration::ZERO,
        waiting: Duration::ZERO,
    });
    let mut group = c.benchmark_group("durable_server_shadow_update");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(10);
    let name = format!("{label}_{DEVICES}_devices_bursts_of_{BURST}");
    group.bench_function(&name, |b| {
        b.iter_custom(|bursts| load.borrow_mut().run(bursts));
    });
    group.finish();
    let mut load = load.into_inner();
    load.report(&format!("{label}/{name}"));
    let mut store = load.server.shutdown();
    store.verify_audit().unwrap();
    store
}

/// Which backends run: `IOT_FLEET_BENCH_SHARDS` lists shard counts (0: one plain
/// `DurableServer`), default `0,1,2`.
fn shard_counts() -> Vec<usize> {
    std::env::var("IOT_FLEET_BENCH_SHARDS")
        .unwrap_or_else(|_| "0,1,2".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

fn label(store: &str, shards: usize) -> String {
    match shards {
        0 => store.to_string(),
        1 => format!("{store}_1_shard"),
        n => format!("{store}_{n}_shards"),
    }
}

fn sqlite(c: &mut Criterion) {
    for shards in shard_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bench.db")).unwrap();
        drop(bench_store(
            c,
            &label("sqlite", shards),
            Box::new(store),
            shards,
        ));
    }
}

fn postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("IOT_FLEET_BENCH_PG_URL") else {
        println!("durable_server_shadow_update/postgres: set IOT_FLEET_BENCH_PG_URL to run it");
        return;
    };
    for shards in shard_counts() {
        let schema = format!("iot_fleet_bench_{}_{shards}", std::process::id());
        let store = PgStore::connect(PgConfig::new(url.clone(), schema.clone())).unwrap();
        drop(bench_store(
            c,
            &label("postgres", shards),
            Box::new(store),
            shards,
        ));
        PgStore::connect(PgConfig::new(url.clone(), schema))
            .unwrap()
            .drop_schema()
            .unwrap();
    }
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
