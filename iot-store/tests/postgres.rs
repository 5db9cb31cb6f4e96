//! The conformance suite and connection-fault tests on PostgreSQL.
//!
//! Built only with `--features postgres-tests`; then every test needs the server named by
//! `IOT_STORE_PG_URL` (default `host=127.0.0.1 port=5432 user=postgres dbname=test`) and fails
//! when it is absent. Each test works in its own schema and drops it at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use iot_store::{Batch, Op, PgConfig, PgStore, SCHEMA_VERSION, Store, StoreError, Tenant};

fn connection() -> String {
    std::env::var("IOT_STORE_PG_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A schema name unique to this process, test and moment.
fn unique_schema() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "iot_store_test_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn raw_client() -> postgres::Client {
    postgres::Client::connect(&connection(), postgres::NoTls)
        .unwrap_or_else(|e| panic!("PostgreSQL at {:?} is required: {e}", connection()))
}

/// Drops, once per run, the schemas left by test processes of this machine that died before
/// cleaning up (their process id no longer exists). Schemas of live runs are left alone.
fn drop_schemas_of_dead_runs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !std::path::Path::new("/proc/self").exists() {
            return;
        }
        let mut c = raw_client();
        let names: Vec<String> = c
            .query(
                "SELECT schema_name::text FROM information_schema.schemata \
                 WHERE schema_name LIKE 'iot\\_store\\_test\\_%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for name in names {
            let pid = name
                .strip_prefix("iot_store_test_")
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"));
            }
        }
    });
}

struct PgHarness {
    schema: String,
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&connection(), postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ));
        }
    }
}

impl common::Harness for PgHarness {
    type S = PgStore;

    fn create() -> Self {
        drop_schemas_of_dead_runs();
        let h = Self {
            schema: unique_schema(),
        };
        // Fails (not skips) when the server is absent.
        drop(h.open());
        h
    }

    fn open(&self) -> PgStore {
        PgStore::connect(PgConfig::new(connection(), self.schema.clone()))
            .unwrap_or_else(|e| panic!("PostgreSQL at {:?} is required: {e}", connection()))
    }

    fn tamper_audit_payload(&self, seq: u64) {
        let mut c = raw_client();
        let changed = c
            .execute(
                &format!(
                    "UPDATE \"{}\".audit SET payload = '\\xdeadbeef' WHERE seq = $1",
                    self.schema
                ),
                &[&(seq as i64)],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
}

conformance_suite!(PgHarness);

#[test]
fn a_schema_with_foreign_tables_is_refused_and_left_unchanged() {
    let h = PgHarness {
        schema: unique_schema(),
    };
    let mut c = raw_client();
    c.batch_execute(&format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".customers (id INT PRIMARY KEY)",
        h.schema
    ))
    .unwrap();
    let err = PgStore::connect(PgConfig::new(connection(), h.schema.clone())).unwrap_err();
    assert!(matches!(err, StoreError::Foreign(_)), "{err:?}");
    let tables: i64 = c
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&h.schema],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "a refused schema gained tables");
}

#[test]
fn a_newer_schema_is_refused() {
    let h = <PgHarness as common::Harness>::create();
    let mut c = raw_client();
    c.execute(
        &format!(
            "UPDATE \"{}\".store_meta SET value = $1 WHERE key = 'schema_version'",
            h.schema
        ),
        &[&(SCHEMA_VERSION + 1).to_string()],
    )
    .unwrap();
    assert_eq!(
        PgStore::connect(PgConfig::new(connection(), h.schema.clone())).unwrap_err(),
        StoreError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
}

#[test]
fn a_bad_schema_name_is_invalid_input() {
    let err = PgStore::connect(PgConfig::new(connection(), "x\"; DROP TABLE y; --")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)));
}

#[test]
fn a_lost_connection_is_reported_and_the_next_call_reconnects() {
    let h = <PgHarness as common::Harness>::create();
    let mut store = common::Harness::open(&h);
    let acme = iot_core::id::TenantId::new("acme").unwrap();
    store
        .apply(Batch::independent(vec![Op::PutTenant(Tenant {
            id: acme,
            config: vec![1],
        })]))
        .unwrap();
    let pid = store.backend_pid().unwrap().unwrap();
    let mut admin = raw_client();
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(killed);
    // The call in flight fails clearly ...
    let err = store.tenant(&acme).unwrap_err();
    assert!(matches!(err, StoreError::ConnectionLost(_)), "{err:?}");
    // ... and the next one reconnects and sees the committed state.
    assert_eq!(store.tenant(&acme).unwrap().unwrap().config, vec![1]);
    let second = store.backend_pid().unwrap().unwrap();
    assert_ne!(second, pid);

    // A commit in flight on a lost connection fails whole, and the next one goes through.
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&second])
        .unwrap()
        .get(0);
    assert!(killed);
    let beta = iot_core::id::TenantId::new("beta").unwrap();
    let put_beta = || {
        Batch::independent(vec![Op::PutTenant(Tenant {
            id: beta,
            config: vec![2],
        })])
    };
    let err = store.apply(put_beta()).unwrap_err();
    assert!(matches!(err, StoreError::ConnectionLost(_)), "{err:?}");
    assert_eq!(store.tenant(&beta).unwrap(), None);
    store.apply(put_beta()).unwrap();
    assert_eq!(store.tenant(&beta).unwrap().unwrap().config, vec![2]);
}

#[test]
fn an_unreachable_server_is_a_connection_error() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = PgStore::connect(PgConfig::new(
        format!("host=127.0.0.1 port={port} user=postgres dbname=test"),
        "unused",
    ))
    .unwrap_err();
    assert!(matches!(err, StoreError::ConnectionLost(_)), "{err:?}");
}

#[test]
fn a_corrupted_stored_value_is_an_error_and_keeps_the_connection() {
    let h = <PgHarness as common::Harness>::create();
    let mut store = common::Harness::open(&h);
    let pid = store.backend_pid().unwrap().unwrap();
    let mut c = raw_client();
    c.batch_execute(&format!(
        "INSERT INTO \"{0}\".devices VALUES ('bad id!', 'acme', 999, -1, '\\x', false, 0); \
         UPDATE \"{0}\".audit_head SET hash = '\\x01'",
        h.schema
    ))
    .unwrap();
    let tenant = iot_core::id::TenantId::new("acme").unwrap();
    assert!(matches!(
        store.devices(&tenant, None, 10),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(store.audit_head(), Err(StoreError::Corrupt(_))));
    assert_eq!(store.backend_pid().unwrap(), Some(pid));
}
