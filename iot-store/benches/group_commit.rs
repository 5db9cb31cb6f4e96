//! Durable shadow updates through group commit at 100,000 devices.
//!
//! Each update is a compare-and-swap shadow write of a random device (64-byte document), and
//! is acknowledged only once it is durable, as a backend does. Caller threads share one
//! [`GroupCommit`] writer. Two shapes of load:
//! - `blocking`: 64 callers, each waits for its update before sending the next (one message in
//!   flight per caller);
//! - `burst`: 16 callers, each submits a burst of 64 single-update batches of distinct devices
//!   together ([`GroupCommitHandle::submit_all`]) and acknowledges them when they are durable,
//!   as a backend that handled a burst of device messages does.
//!
//! A third, `direct`, commits 2,048 updates per transaction on the store itself (no threads,
//! no group commit): the store's own ceiling.
//!
//! Criterion reports the time per durable update (its reciprocal is updates per second); the
//! p50 / p99 / max acknowledgement latency of every update criterion ran (warm-up included) is
//! printed after each run.
//!
//! SQLite always runs (temporary file). PostgreSQL runs when `IOT_STORE_BENCH_PG_URL` names a
//! server (for example `host=127.0.0.1 user=postgres dbname=test`), in a schema of its own that
//! is dropped afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iot_core::id::DeviceId;
use iot_store::{
    Batch, GroupCommit, GroupCommitConfig, GroupCommitHandle, Op, PgConfig, PgStore, Shadow,
    ShadowExpect, SqliteStore, Store,
};

const DEVICES: u32 = 100_000;
const DOCUMENT: [u8; 64] = [0x5a; 64];
/// Latency samples kept per group (bounded memory).
const MAX_SAMPLES: usize = 2_000_000;

fn device(n: u32) -> DeviceId {
    let b = n.to_be_bytes();
    DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
}

fn seed(store: &mut dyn Store) {
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(5_000) {
        let ops = chunk
            .iter()
            .map(|&n| Op::PutShadow {
                shadow: Shadow {
                    device: device(n),
                    name: String::new(),
                    version: 1,
                    document: DOCUMENT.to_vec(),
                },
                expected: ShadowExpect::Absent,
            })
            .collect();
        store.apply(Batch::independent(ops)).unwrap();
    }
}

struct Fleet {
    handle: GroupCommitHandle,
    callers: u32,
    in_flight: u32,
    /// Each device's stored version; caller `c` only touches devices `n` with `n % CALLERS == c`.
    versions: Arc<Vec<AtomicU64>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Fleet {
    /// Runs `updates` durable updates spread over the callers; returns the wall time.
    fn run(&self, updates: u64, seed: &AtomicU64) -> Duration {
        let callers = self.callers;
        let in_flight = u64::from(self.in_flight);
        let rounds = updates.div_ceil(u64::from(callers) * in_flight);
        let start = Instant::now();
        let threads: Vec<_> = (0..callers)
            .map(|c| {
                let handle = self.handle.clone();
                let versions = Arc::clone(&self.versions);
                let latencies = Arc::clone(&self.latencies);
                let mut rng = seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) | 1;
                std::thread::spawn(move || {
                    let slots = u64::from(DEVICES / callers);
                    let mut local = Vec::with_capacity((rounds * in_flight) as usize);
                    let mut pending = Vec::with_capacity(in_flight as usize);
                    for _ in 0..rounds {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        // Consecutive slots from a random start: distinct devices in flight.
                        let first = rng % slots;
                        let mut burst = Vec::with_capacity(in_flight as usize);
                        for k in 0..in_flight {
                            let n = ((first + k) % slots) as u32 * callers + c;
                            let current = versions[n as usize].load(Ordering::Relaxed);
                            burst.push(Batch::independent(vec![Op::PutShadow {
                                shadow: Shadow {
                                    device: device(n),
                                    name: String::new(),
                                    version: current + 1,
                                    document: DOCUMENT.to_vec(),
                                },
                                expected: ShadowExpect::Version(current),
                            }]));
                            pending.push((n, current + 1));
                        }
                        let sent = Instant::now();
                        // One message = one batch; a burst of them is submitted together.
                        if in_flight == 1 {
                            let outcome = handle.commit(burst.remove(0)).unwrap();
                            assert!(outcome.first_conflict().is_none());
                        } else {
                            let outcomes = handle.submit_all(burst).unwrap().wait().unwrap();
                            assert!(outcomes.iter().all(|o| o.first_conflict().is_none()));
                        }
                        let latency = sent.elapsed();
                        for (n, version) in pending.drain(..) {
                            local.push(latency);
                            versions[n as usize].store(version, Ordering::Relaxed);
                        }
                    }
                    let mut all = latencies.lock().unwrap();
                    if all.len() < MAX_SAMPLES {
                        all.extend(local);
                    }
                    rounds * in_flight
                })
            })
            .collect();
        let ran: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        // Whole rounds may run a few more updates than asked; scale to `updates`.
        start.elapsed().mul_f64(updates as f64 / ran.max(1) as f64)
    }

    fn report(&self, label: &str) {
        let mut all = self.latencies.lock().unwrap();
        if all.is_empty() {
            return;
        }
        all.sort_unstable();
        let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        println!(
            "{label}: {} acknowledged updates, ack latency p50 {:?}, p99 {:?}, max {:?}",
            all.len(),
            p(0.50),
            p(0.99),
            all[all.len() - 1]
        );
        all.clear();
    }
}

/// The store alone, no threads: one transaction of `TRANSACTION` updates per commit.
fn direct_commits(
    store: &mut dyn Store,
    versions: &mut [u64],
    updates: u64,
    rng: &mut u64,
) -> Duration {
    const TRANSACTION: u64 = 2_048;
    let mut elapsed = Duration::ZERO;
    let mut ran = 0u64;
    while ran < updates {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let first = *rng % u64::from(DEVICES);
        let devices: Vec<u32> = (0..TRANSACTION)
            .map(|k| ((first + k) % u64::from(DEVICES)) as u32)
            .collect();
        let ops = devices
            .iter()
            .map(|&n| Op::PutShadow {
                shadow: Shadow {
                    device: device(n),
                    name: String::new(),
                    version: versions[n as usize] + 1,
                    document: DOCUMENT.to_vec(),
                },
                expected: ShadowExpect::Version(versions[n as usize]),
            })
            .collect();
        let start = Instant::now();
        let outcome = store.commit(&[Batch::independent(ops)]).unwrap();
        elapsed += start.elapsed();
        assert!(outcome[0].first_conflict().is_none());
        for n in devices {
            versions[n as usize] += 1;
        }
        ran += TRANSACTION;
    }
    elapsed.mul_f64(updates as f64 / ran as f64)
}

fn bench_store(c: &mut Criterion, label: &str, mut store: Box<dyn Store + Send>) {
    seed(&mut *store);
    let mut group = c.benchmark_group(format!("durable_shadow_update/{label}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    let mut direct_versions = vec![1u64; DEVICES as usize];
    let mut rng = 0x5851_f42d_4c95_7f2du64;
    group.bench_function(format!("direct_{DEVICES}_devices_2048_per_commit"), |b| {
        b.iter_custom(|iters| direct_commits(&mut *store, &mut direct_versions, iters, &mut rng));
    });
    let group_commit = GroupCommit::spawn(store, GroupCommitConfig::default()).unwrap();
    let versions = Arc::new(
        direct_versions
            .iter()
            .map(|&v| AtomicU64::new(v))
            .collect::<Vec<_>>(),
    );
    let rng_seed = AtomicU64::new(0x2545_f491_4f6c_dd1d);
    for (shape, callers, in_flight) in [("blocking", 64, 1), ("burst", 16, 64)] {
        let fleet = Fleet {
            handle: group_commit.handle(),
            callers,
            in_flight,
            versions: Arc::clone(&versions),
            latencies: Arc::new(Mutex::new(Vec::new())),
        };
        let name = format!("{shape}_{DEVICES}_devices_{callers}x{in_flight}_in_flight");
        group.bench_function(&name, |b| {
            b.iter_custom(|iters| fleet.run(iters, &rng_seed));
        });
        fleet.report(&format!("{label}/{name}"));
    }
    group.finish();
    drop(group_commit.shutdown().unwrap());
}

fn sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bench.db")).unwrap();
    bench_store(c, "sqlite", Box::new(store));
}

fn postgres(c: &mut Criterion) {
    let Ok(url) = std::env::var("IOT_STORE_BENCH_PG_URL") else {
        println!("durable_shadow_update/postgres: set IOT_STORE_BENCH_PG_URL to run it");
        return;
    };
    let schema = format!("iot_store_bench_{}", std::process::id());
    let store = PgStore::connect(PgConfig::new(url.clone(), schema.clone())).unwrap();
    bench_store(c, "postgres", Box::new(store));
    PgStore::connect(PgConfig::new(url, schema))
        .unwrap()
        .drop_schema()
        .unwrap();
}

criterion_group!(benches, sqlite, postgres);
criterion_main!(benches);
