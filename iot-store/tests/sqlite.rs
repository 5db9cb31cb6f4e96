//! The conformance suite and file-level fault tests on SQLite.
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

use std::path::PathBuf;

use iot_store::{SCHEMA_VERSION, SqliteStore, Store, StoreError};

struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    fn path(&self) -> PathBuf {
        self.dir.path().join("fleet.db")
    }
}

impl common::Harness for SqliteHarness {
    type S = SqliteStore;

    fn create() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn open(&self) -> SqliteStore {
        SqliteStore::open(self.path()).unwrap()
    }

    fn tamper_audit_payload(&self, seq: u64) {
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        let changed = conn
            .execute(
                "UPDATE audit SET payload = x'DEADBEEF' WHERE seq = ?1",
                [seq as i64],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
}

conformance_suite!(SqliteHarness);

fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(file_bytes(&path), garbage);
}

#[test]
fn a_foreign_database_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers (name) VALUES ('x');")
            .unwrap();
    }
    let before = file_bytes(&path);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Foreign(_)), "{err:?}");
    assert_eq!(file_bytes(&path), before);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "the refused file was switched to WAL");
}

#[test]
fn a_database_of_another_application_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE store_meta SET value = 'someone-else' WHERE key = 'application'",
        [],
    )
    .unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Foreign(_))
    ));
}

#[test]
fn a_newer_schema_is_refused_without_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'schema_version'",
        [(SCHEMA_VERSION + 1).to_string()],
    )
    .unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(conn);
    let before = file_bytes(&path);
    assert_eq!(
        SqliteStore::open(&path).unwrap_err(),
        StoreError::SchemaTooNew {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
    assert_eq!(file_bytes(&path), before);
}

#[test]
fn the_database_runs_in_wal_mode_and_records_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), path.as_path());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: String = conn
        .query_row(
            "SELECT value FROM store_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    // Opening again migrates nothing and keeps one metadata row per key.
    drop(SqliteStore::open(&path).unwrap());
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM store_meta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2);
}

#[test]
fn a_corrupted_stored_value_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO devices VALUES ('bad id!', 'acme', 999, -1, x'', 0, 0)",
        [],
    )
    .unwrap();
    conn.execute("UPDATE audit_head SET hash = x'01'", [])
        .unwrap();
    let id = iot_core::id::DeviceId::new("ok").unwrap();
    assert_eq!(store.device(&id).unwrap(), None);
    let tenant = iot_core::id::TenantId::new("acme").unwrap();
    assert!(matches!(
        store.devices(&tenant, None, 10),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(store.audit_head(), Err(StoreError::Corrupt(_))));
}

#[test]
fn the_store_is_usable_as_a_trait_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut store: Box<dyn Store + Send> =
        Box::new(SqliteStore::open(dir.path().join("fleet.db")).unwrap());
    assert_eq!(store.audit_head().unwrap().seq, 0);
}

#[test]
fn a_full_database_is_a_clear_error_and_leaves_no_partial_batch() {
    use iot_store::{Batch, Op, SqliteOptions, Tenant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.db");
    let mut store = SqliteStore::open_with(
        &path,
        SqliteOptions {
            max_size_bytes: Some(256 * 1024),
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    let mut committed = 0u32;
    let mut full = None;
    for i in 0..1_000u32 {
        let result = store.commit(&[Batch::independent(vec![
            Op::Audit(common::event(u64::from(i))),
            Op::PutTenant(Tenant {
                id: common::tenant(&format!("t{i}")),
                config: vec![7; 8 * 1024],
            }),
        ])]);
        match result {
            Ok(_) => committed += 1,
            Err(e) => {
                full = Some((i, e));
                break;
            }
        }
    }
    let (failed_at, err) = full.expect("the size limit was never reached");
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(committed > 0);
    // Nothing of the failed batch is there: neither its audit entry nor its tenant.
    assert_eq!(store.audit_head().unwrap().seq, u64::from(committed));
    assert_eq!(
        store
            .tenant(&common::tenant(&format!("t{failed_at}")))
            .unwrap(),
        None
    );
    assert_eq!(store.verify_audit().unwrap().seq, u64::from(committed));
    // Reopening (without the limit) finds exactly what was committed.
    drop(store);
    let mut reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(reopened.verify_audit().unwrap().seq, u64::from(committed));
}
