//! Several backend nodes on one PostgreSQL database, end to end through the server binding.
//!
//! When `IOT_FLEET_BENCH_NODES_PG_URL` names a PostgreSQL server (for example `host=127.0.0.1
//! user=postgres dbname=test`), `durable_server_shared_nodes` runs 1, 2 and 3 backend nodes
//! ([`DurableServer::open_shared`], one thread each, in this process) on one schema of
//! `NODES_DEVICES` devices; each node serves its own share of the devices (as a broker
//! that keeps a device on one node would deliver them), bursts of `NODES_BURST`, two in
//! flight per node, after a warm-up in which each node has read its devices once. Every
//! update changes the document: a compare-and-swap shadow write plus an audit entry, durable
//! before it is acknowledged. Criterion's throughput is the updates of all nodes together;
//! the p99 acknowledgement latency per node is printed after each run.
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
use iot_fleet::durable::{DurableServer, Message, Ticket};
use iot_fleet::{DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::RegistrationResponse;
use iot_protocol::Downlink;
use iot_store::{GroupCommitConfig, PgConfig, PgStore, Store};

const NODES_DEVICES: usize = 1_536;
const NODES_BURST: usize = 256;
const START_MS: u64 = 1_000_000;

/// Hands `(device, message bytes, kind)` to the server as one submission.
fn submit(
    server: &mut DurableServer,
    batch: &[(usize, Vec<u8>, iot_core::MessageKind)],
    now: u64,
) -> Ticket {
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

fn group_config() -> GroupCommitConfig {
    GroupCommitConfig {
        queue_capacity: 64,
        max_batch_ops: 4_096,
    }
}

fn fresh_server() -> DeviceServer {
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    DeviceServer::with_os_rng(Fleet::default(), config, NodeId(1))
}

/// A backend with `devices` devices imported and registered, `burst` at a time.
fn backend_of(store: Box<dyn Store + Send>, devices: usize, burst: usize) -> DurableServer {
    let mut server = DurableServer::open(store, fresh_server(), group_config()).unwrap();
    let admin = Principal::new(
        "ops",
        TenantId::new("acme").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    for chunk in (0..devices).collect::<Vec<_>>().chunks(10_000) {
        let records = chunk
            .iter()
            .map(|&i| ManufacturingRecord {
                device_id: id(i),
                secret: secret(i),
                sku: "TH".into(),
                serial: i as u64,
            })
            .collect();
        server
            .import_manufacturing(&admin, &Scope::root(), records, START_MS)
            .unwrap();
    }
    for chunk in (0..devices).collect::<Vec<_>>().chunks(burst) {
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
    assert_eq!(server.server().fleet().registered_count(), devices);
    server
}

struct Load {
    server: DurableServer,
    /// The devices this load updates: `first..first + count`.
    first: usize,
    count: usize,
    burst: usize,
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
        self.first + (self.rng % self.count as u64) as usize
    }

    /// Runs `bursts` bursts, two in flight, and returns the time it took.
    fn run(&mut self, bursts: u64) -> Duration {
        let started = Instant::now();
        let mut in_flight: VecDeque<(Instant, Ticket)> = VecDeque::new();
        for _ in 0..bursts {
            self.now += 1;
            let now = self.now;
            let burst: Vec<_> = (0..self.burst)
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

    fn release(&mut self, (handed_in, ticket): (Instant, Ticket)) {
        let waiting = Instant::now();
        let results = self.server.wait(ticket);
        self.waiting += waiting.elapsed();
        let latency = handed_in.elapsed();
        for r in results {
            assert!(matches!(r, Ok(Handled::Replies(_))), "{r:?}");
        }
        if self.latencies.len() < 4_000_000 {
            self.latencies
                .extend(std::iter::repeat_n(latency, self.burst));
        }
    }

    fn report(&mut self, label: &str) {
        if self.latencies.is_empty() {
            // Filtered out on the command line: nothing ran.
            return;
        }
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

/// 1, 2 and 3 shared nodes on one PostgreSQL schema (see the module docs).
fn postgres_nodes(c: &mut Criterion) {
    let Ok(url) = std::env::var("IOT_FLEET_BENCH_NODES_PG_URL") else {
        println!("durable_server_shared_nodes: set IOT_FLEET_BENCH_NODES_PG_URL to run it");
        return;
    };
    let schema = format!("iot_fleet_bench_nodes_{}", std::process::id());
    let connect =
        || Box::new(PgStore::connect(PgConfig::new(url.clone(), schema.clone())).unwrap());
    drop(
        backend_of(connect(), NODES_DEVICES, NODES_BURST)
            .shutdown()
            .unwrap(),
    );
    let mut group = c.benchmark_group("durable_server_shared_nodes");
    group.sample_size(10);
    for nodes in 1..=3usize {
        let share = NODES_DEVICES / nodes;
        let loads: Vec<Load> = (0..nodes)
            .map(|k| Load {
                server: DurableServer::open_shared(
                    connect(),
                    connect(),
                    fresh_server(),
                    group_config(),
                )
                .unwrap(),
                first: k * share,
                count: share,
                burst: NODES_BURST,
                rng: 0x2545_f491_4f6c_dd1d ^ (k as u64 + 1),
                now: START_MS + 10_000_000 * nodes as u64,
                value: 0,
                latencies: Vec::new(),
                handling: Duration::ZERO,
                waiting: Duration::ZERO,
            })
            .collect();
        // Warm the caches: a node reads each device of its share once before it serves it
        // the first time, which is not what this measures.
        let mut loads = loads;
        std::thread::scope(|scope| {
            for load in &mut loads {
                scope.spawn(move || load.run((share / NODES_BURST * 4) as u64));
            }
        });
        for load in &mut loads {
            load.latencies.clear();
            load.handling = Duration::ZERO;
            load.waiting = Duration::ZERO;
        }
        let loads = RefCell::new(loads);
        group.throughput(Throughput::Elements((NODES_BURST * nodes) as u64));
        let name =
            format!("postgres_{nodes}_nodes_{NODES_DEVICES}_devices_bursts_of_{NODES_BURST}");
        group.bench_function(&name, |b| {
            b.iter_custom(|bursts| {
                let mut loads = loads.borrow_mut();
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for load in loads.iter_mut() {
                        scope.spawn(move || load.run(bursts));
                    }
                });
                started.elapsed()
            });
        });
        for (k, mut load) in loads.into_inner().into_iter().enumerate() {
            load.report(&format!("{name}/node {k}"));
            drop(load.server.shutdown().unwrap());
        }
    }
    group.finish();
    let mut store = PgStore::connect(PgConfig::new(url.clone(), schema.clone())).unwrap();
    store.verify_audit().unwrap();
    store.drop_schema().unwrap();
}

criterion_group!(benches, postgres_nodes);
criterion_main!(benches);
