//! The durable backend when its disk fills: the submission that does not fit fails whole with
//! a clear error and no reply, nothing of it is left in the store, the backend stops
//! acknowledging, and once there is room again it resumes from what it acknowledged, with
//! every device still registered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_fleet::durable::DurableError;
use iot_lifecycle::State;
use iot_store::{SqliteOptions, SqliteStore, StoreError};
use iot_tests::wire_devices::{admin, enroll, exchange, fresh_server, id, open, reported, update};

const DEVICES: u32 = 20;
const T0: u64 = 1_000_000;

#[test]
fn a_full_disk_refuses_whole_submissions_and_the_backend_resumes_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");

    // Enrol the fleet without a limit, then note how large the database is.
    let mut server = open(Box::new(SqliteStore::open(&path).unwrap())).unwrap();
    enroll(&mut server, 0..DEVICES, T0).unwrap();
    drop(server.shutdown().unwrap());
    let enrolled_size = std::fs::metadata(&path).unwrap().len();

    // The disk now has 64 KiB left.
    let limited = |path: &std::path::Path| {
        SqliteStore::open_with(
            path,
            SqliteOptions {
                max_size_bytes: Some(enrolled_size + 64 * 1024),
                ..SqliteOptions::default()
            },
        )
        .unwrap()
    };
    let mut server = open(Box::new(limited(&path))).unwrap();
    assert_eq!(server.server().fleet().registered_count(), DEVICES as usize);
    let state = |server: &iot_fleet::durable::DurableServer, i| {
        server
            .server()
            .fleet()
            .device(&admin(), &id(i))
            .unwrap()
            .state
    };
    let enrolled: Vec<State> = (0..DEVICES).map(|i| state(&server, i)).collect();
    assert!(enrolled.iter().all(|s| *s != State::Unprovisioned));

    // Every device reports a new value each round until a round does not fit.
    let mut acked: Vec<Option<i64>> = vec![None; DEVICES as usize];
    let mut now = T0;
    let full_at = fill(&mut server, &mut acked, &mut now, 1);
    assert!(full_at > 1, "some rounds fit before the disk filled");
    let shown = format!("{}", DurableError::Store(StoreError::Full("disk".into())));
    assert!(shown.contains("full"), "{shown}");

    // Stopped: nothing more is acknowledged, whatever arrives.
    assert!(server.is_stopped());
    now += 1_000;
    for r in exchange(&mut server, &[update(0, -1, now)], now) {
        assert_eq!(r.unwrap_err(), DurableError::Stopped);
    }

    // Restarting in place while the disk is still full reads back exactly what was
    // acknowledged; writes go on until the disk is full again, then are refused clearly.
    server.restart(fresh_server(), now).unwrap();
    for i in 0..DEVICES {
        assert_eq!(reported(&server, i), acked[i as usize], "device {i}");
    }
    let full_at = fill(&mut server, &mut acked, &mut now, full_at);
    let store = server.shutdown().unwrap();
    drop(store);

    // Room again: the backend reopens with every device registered in its lifecycle state, holding the
    // last acknowledged value, the audit chain intact, and the devices carry on without
    // registering again.
    let mut server = open(Box::new(SqliteStore::open(&path).unwrap())).unwrap();
    assert_eq!(server.server().fleet().registered_count(), DEVICES as usize);
    for i in 0..DEVICES {
        assert_eq!(state(&server, i), enrolled[i as usize], "device {i}");
        assert_eq!(reported(&server, i), acked[i as usize], "device {i}");
        assert_ne!(reported(&server, i), Some(full_at), "device {i}");
    }
    let head = server.verify_audit().unwrap();
    assert!(head.seq > 0);
    now += 1_000;
    let batch: Vec<_> = (0..DEVICES).map(|i| update(i, full_at + 1, now)).collect();
    for r in exchange(&mut server, &batch, now) {
        r.unwrap();
    }
    for i in 0..DEVICES {
        assert_eq!(reported(&server, i), Some(full_at + 1));
    }
}

/// Sends rounds of updates (every device reports the round's number), starting at
/// `first`, until a round is refused; returns that round. Every result of the refused round
/// must be a full-store error, and `acked` holds each device's last acknowledged value.
fn fill(
    server: &mut iot_fleet::durable::DurableServer,
    acked: &mut [Option<i64>],
    now: &mut u64,
    first: i64,
) -> i64 {
    for round in first..first + 5_000 {
        *now += 1_000;
        let batch: Vec<_> = (0..DEVICES).map(|i| update(i, round, *now)).collect();
        let results = exchange(server, &batch, *now);
        if results.iter().all(Result::is_ok) {
            acked.fill(Some(round));
            continue;
        }
        for r in &results {
            match r {
                Err(DurableError::Store(StoreError::Full(why))) => {
                    assert!(!why.is_empty(), "the error says what is full");
                }
                other => panic!("round {round}: expected a full-store error, got {other:?}"),
            }
        }
        return round;
    }
    panic!("the disk did not fill within 5,000 rounds");
}
