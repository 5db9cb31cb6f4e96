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

#[path = "support/pg.rs"]
mod pg;

use std::time::Duration;

use iot_fleet::durable::DurableError;
use iot_store::{PgConfig, PgStore, StoreError};
use iot_tests::wire_devices::{enroll, exchange, fresh_server, open, reported, update};
use pg::{Proxy, Schema, upstream};

const DEVICES: u32 = 10;
const T0: u64 = 1_000_000;

fn is_lost(r: &Result<impl std::fmt::Debug, DurableError>) -> bool {
    matches!(r, Err(DurableError::Store(StoreError::ConnectionLost(_))))
}

#[test]
fn the_backend_refuses_while_postgres_is_unreachable_and_resumes_when_it_returns() {
    let schema = Schema::unique("iot_fleet_pg_outage");
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
