//! The embedded default: one SQLite file in WAL mode.
//!
//! Every commit is one `BEGIN IMMEDIATE` transaction with `synchronous = FULL`, so a
//! returned commit survives a process crash and a power loss. Several `SqliteStore`s (threads
//! or processes) may open the same file; writers take turns (a busy writer waits up to the
//! busy timeout, 5 s).

use std::path::{Path, PathBuf};
use std::time::Duration;

use iot_core::id::{DeviceId, TenantId};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use crate::audit::{AuditEvent, AuditHead, AuditRecord, chain_hash};
use crate::model::{
    Batch, BatchMode, BatchOutcome, Challenge, DeviceRecord, Lease, Op, OpOutcome, OtaProgress,
    Rollout, Shadow, ShadowExpect, Tenant, validate_key,
};
use crate::{SCHEMA_VERSION, Store, StoreError, from_i64, lease_expiry, page_limit, to_i64};

/// The application name recorded in `store_meta`.
pub(crate) const APP: &str = "iot-store";

/// Schema migrations; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (id TEXT PRIMARY KEY, config BLOB NOT NULL);
CREATE TABLE devices (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, state INTEGER NOT NULL,
    firmware_version INTEGER NOT NULL, credential BLOB NOT NULL, revoked INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL);
CREATE INDEX devices_by_tenant ON devices (tenant, id);
CREATE TABLE challenges (
    device TEXT PRIMARY KEY, session INTEGER NOT NULL, nonce BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);
CREATE TABLE shadows (
    device TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, document BLOB NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE rollouts (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, status INTEGER NOT NULL,
    plan BLOB NOT NULL);
CREATE TABLE ota_progress (
    rollout INTEGER NOT NULL, device TEXT NOT NULL, status INTEGER NOT NULL,
    detail BLOB NOT NULL, updated_at_ms INTEGER NOT NULL, PRIMARY KEY (rollout, device));
CREATE INDEX ota_progress_by_device ON ota_progress (device);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, tenant TEXT NOT NULL, device TEXT,
    action INTEGER NOT NULL, payload BLOB NOT NULL, prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL);
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,
    hash BLOB NOT NULL);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
",
    "
CREATE TABLE revisions (key TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL, fence INTEGER NOT NULL);
",
];

fn sql(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(e.to_string())
        }
        Some(ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Options of [`SqliteStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a writer waits for another connection's transaction to finish.
    pub busy_timeout: Duration,
    /// The largest the database file may grow (rounded down to whole pages; the WAL file
    /// comes on top). A commit that would exceed it fails with [`StoreError::Full`] and leaves
    /// nothing behind, as a full disk does. `None`: no limit besides the disk.
    pub max_size_bytes: Option<u64>,
}

impl Default for SqliteOptions {
    /// A 5 s busy timeout and no size limit.
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            max_size_bytes: None,
        }
    }
}

/// A [`Store`] in one SQLite file.
///
/// ```
/// use iot_store::{Batch, Op, SqliteStore, Store, Tenant};
/// use iot_core::id::TenantId;
///
/// let dir = tempfile::tempdir()?;
/// let mut store = SqliteStore::open(dir.path().join("fleet.db"))?;
/// let acme = TenantId::new("acme")?;
/// store.apply(Batch::independent(vec![Op::PutTenant(Tenant { id: acme, config: vec![] })]))?;
/// assert!(store.tenant(&acme)?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating when absent) the database at `path`, switches it to WAL mode and brings
    /// its schema to [`SCHEMA_VERSION`] in one transaction.
    ///
    /// A file that is not an SQLite database is [`StoreError::Corrupt`]; a database with
    /// tables this crate did not create is [`StoreError::Foreign`]; one written by a newer
    /// build is [`StoreError::SchemaTooNew`]. In each case the file is left unchanged.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(options.busy_timeout).map_err(sql)?;
        // Read-only inspection first: nothing is written to a file we must refuse.
        let version = schema_version(&conn)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot switch to WAL mode (journal mode is {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(sql)?;
        if let Some(max) = options.max_size_bytes {
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(sql)?;
            let pages = i64::try_from(max)
                .unwrap_or(i64::MAX)
                .checked_div(page_size)
                .unwrap_or(0)
                .max(1);
            let _: i64 = conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                    r.get(0)
                })
                .map_err(sql)?;
        }
        // Every statement of the store stays prepared (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Self { conn, path };
        store.migrate()?;
        Ok(store)
    }

    /// The file this store was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Another process may have migrated between the inspection and this transaction.
        let from = schema_version(&tx)?;
        if from > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: from,
                supported: SCHEMA_VERSION,
            });
        }
        let from_index = usize::try_from(from).unwrap_or(usize::MAX);
        for migration in MIGRATIONS.iter().skip(from_index) {
            tx.execute_batch(migration).map_err(sql)?;
        }
        if from < SCHEMA_VERSION {
            tx.execute(
                "INSERT INTO store_meta (key, value) VALUES ('application', ?1), \
                 ('schema_version', ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![APP, SCHEMA_VERSION.to_string()],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }
}

/// The schema version recorded in the database: 0 for an empty database. Refuses a database
/// with foreign tables or another application's metadata.
fn schema_version(conn: &Connection) -> Result<u32, StoreError> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .map_err(sql)?;
    let tables = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    if tables.is_empty() {
        return Ok(0);
    }
    if !tables.iter().any(|t| t == "store_meta") {
        return Err(StoreError::Foreign(format!(
            "tables {tables:?} but no store_meta table"
        )));
    }
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM store_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql)
    };
    match meta("application")? {
        Some(app) if app == APP => {}
        other => {
            return Err(StoreError::Foreign(format!(
                "store_meta names application {other:?}"
            )));
        }
    }
    let version = meta("schema_version")?.unwrap_or_default();
    version
        .parse()
        .map_err(|_| StoreError::Foreign(format!("schema version {version:?} is not a number")))
}

pub(crate) fn parse_device_id(text: String) -> Result<DeviceId, StoreError> {
    DeviceId::new(&text).map_err(|e| StoreError::Corrupt(format!("device id {text:?}: {e}")))
}

pub(crate) fn parse_tenant_id(text: String) -> Result<TenantId, StoreError> {
    TenantId::new(&text).map_err(|e| StoreError::Corrupt(format!("tenant id {text:?}: {e}")))
}

pub(crate) fn parse_hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".into()))
}

fn shadow_version(
    conn: &Connection,
    device: &DeviceId,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT version FROM shadows WHERE device = ?1 AND name = ?2")
        .and_then(|mut s| {
            s.query_row(params![device.as_str(), name], |r| r.get(0))
                .optional()
        })
        .map_err(sql)?;
    v.map(|v| from_i64(v, "shadow version")).transpose()
}

fn exec(conn: &Connection, op: &Op) -> Result<OpOutcome, StoreError> {
    let run = |text: &str, p: &[&dyn rusqlite::ToSql]| -> Result<usize, StoreError> {
        conn.prepare_cached(text)
            .and_then(|mut s| s.execute(p))
            .map_err(sql)
    };
    match op {
        Op::PutTenant(t) => {
            run(
                "INSERT INTO tenants (id, config) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO UPDATE SET config = excluded.config",
                params![t.id.as_str(), t.config],
            )?;
        }
        Op::PutDevice(d) => {
            run(
                "INSERT INTO devices (id, tenant, state, firmware_version, credential, revoked, \
                 updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO UPDATE SET \
                 tenant = excluded.tenant, state = excluded.state, \
                 firmware_version = excluded.firmware_version, credential = excluded.credential, \
                 revoked = excluded.revoked, updated_at_ms = excluded.updated_at_ms",
                params![
                    d.id.as_str(),
                    d.tenant.as_str(),
                    d.state,
                    d.firmware_version,
                    d.credential,
                    d.revoked,
                    to_i64(d.updated_at_ms, "updated_at_ms")?
                ],
            )?;
        }
        Op::DeleteDevice(id) => {
            for table in [
                "DELETE FROM devices WHERE id = ?1",
                "DELETE FROM challenges WHERE device = ?1",
                "DELETE FROM shadows WHERE device = ?1",
                "DELETE FROM ota_progress WHERE device = ?1",
            ] {
                run(table, params![id.as_str()])?;
            }
        }
        Op::PutChallenge(c) => {
            run(
                "INSERT INTO challenges (device, session, nonce, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device) DO UPDATE SET \
                 session = excluded.session, nonce = excluded.nonce, \
                 expires_at_ms = excluded.expires_at_ms",
                params![
                    c.device.as_str(),
                    to_i64(c.session, "session")?,
                    c.nonce,
                    to_i64(c.expires_at_ms, "expires_at_ms")?
                ],
            )?;
        }
        Op::DeleteChallenge(id) => {
            run(
                "DELETE FROM challenges WHERE device = ?1",
                params![id.as_str()],
            )?;
        }
        Op::PurgeChallenges { now_ms } => {
            run(
                "DELETE FROM challenges WHERE expires_at_ms <= ?1",
                params![to_i64(*now_ms, "now_ms")?],
            )?;
        }
        Op::PutShadow { shadow, expected } => {
            let version = to_i64(shadow.version, "shadow version")?;
            let changed = match expected {
                ShadowExpect::Absent => run(
                    "INSERT INTO shadows (device, name, version, document) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (device, name) DO NOTHING",
                    params![
                        shadow.device.as_str(),
                        shadow.name,
                        version,
                        shadow.document
                    ],
                )?,
                ShadowExpect::Version(v) => run(
                    "UPDATE shadows SET version = ?3, document = ?4 \
                     WHERE device = ?1 AND name = ?2 AND version = ?5",
                    params![
                        shadow.device.as_str(),
                        shadow.name,
                        version,
                        shadow.document,
                        to_i64(*v, "shadow version")?
                    ],
                )?,
            };
            if changed == 0 {
                return Ok(OpOutcome::Conflict {
                    current: shadow_version(conn, &shadow.device, &shadow.name)?,
                });
            }
        }
        Op::DeleteShadow {
            device,
            name,
            expected_version,
        } => {
            let changed = run(
                "DELETE FROM shadows WHERE device = ?1 AND name = ?2 AND version = ?3",
                params![
                    device.as_str(),
                    name,
                    to_i64(*expected_version, "shadow version")?
                ],
            )?;
            if changed == 0 {
                return Ok(OpOutcome::Conflict {
                    current: shadow_version(conn, device, name)?,
                });
            }
        }
        Op::PutRollout(r) => {
            run(
                "INSERT INTO rollouts (id, tenant, status, plan) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, \
                 status = excluded.status, plan = excluded.plan",
                params![
                    to_i64(r.id, "rollout id")?,
                    r.tenant.as_str(),
                    r.status,
                    r.plan
                ],
            )?;
        }
        Op::PutOtaProgress(p) => {
            run(
                "INSERT INTO ota_progress (rollout, device, status, detail, updated_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (rollout, device) DO UPDATE SET \
                 status = excluded.status, detail = excluded.detail, \
                 updated_at_ms = excluded.updated_at_ms",
                params![
                    to_i64(p.rollout, "rollout id")?,
                    p.device.as_str(),
                    p.status,
                    p.detail,
                    to_i64(p.updated_at_ms, "updated_at_ms")?
                ],
            )?;
        }
        Op::Audit(event) => return append_audit(conn, event),
        Op::Revise {
            key,
            expected,
            bump,
        } => {
            let current: u64 = conn
                .prepare_cached("SELECT revision FROM revisions WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get::<_, i64>(0)).optional())
                .map_err(sql)?
                .map_or(Ok(0), |v| from_i64(v, "revision"))?;
            if current != *expected {
                return Ok(OpOutcome::Conflict {
                    current: Some(current),
                });
            }
            if *bump {
                let next = to_i64(expected.saturating_add(1), "revision")?;
                conn.prepare_cached(
                    "INSERT INTO revisions (key, revision) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET revision = excluded.revision",
                )
                .and_then(|mut s| s.execute(params![key, next]))
                .map_err(sql)?;
            }
        }
        Op::HoldsLease {
            name,
            holder,
            fence,
        } => {
            let stored: Option<(String, i64)> = conn
                .prepare_cached("SELECT holder, fence FROM leases WHERE name = ?1")
                .and_then(|mut s| {
                    s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql)?;
            return lease_check(stored, holder, *fence);
        }
    }
    Ok(OpOutcome::Applied)
}

/// The outcome of [`Op::HoldsLease`] given the stored `(holder, fence)`.
pub(crate) fn lease_check(
    stored: Option<(String, i64)>,
    holder: &str,
    fence: u64,
) -> Result<OpOutcome, StoreError> {
    match stored {
        Some((h, f)) => {
            let f: u64 = from_i64(f, "lease fence")?;
            if h == holder && f == fence {
                Ok(OpOutcome::Applied)
            } else {
                Ok(OpOutcome::Conflict { current: Some(f) })
            }
        }
        None => Ok(OpOutcome::Conflict { current: None }),
    }
}

/// A lease row as both databases return it.
pub(crate) fn lease_row(
    name: &str,
    holder: String,
    expires_at_ms: i64,
    fence: i64,
) -> Result<Lease, StoreError> {
    Ok(Lease {
        name: name.to_owned(),
        holder,
        expires_at_ms: from_i64(expires_at_ms, "lease expiry")?,
        fence: from_i64(fence, "lease fence")?,
    })
}

/// Takes, renews or refuses a lease in one statement (the same text on both databases but
/// for the parameter markers, which the caller substitutes).
pub(crate) const CLAIM: &str = "INSERT INTO leases (name, holder, expires_at_ms, fence) \
    VALUES (?1, ?2, ?4, 1) ON CONFLICT (name) DO UPDATE SET \
    fence = CASE WHEN leases.holder = excluded.holder THEN leases.fence \
    ELSE leases.fence + 1 END, \
    holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
    WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?3 \
    RETURNING holder, expires_at_ms, fence";

/// Gives a lease up: it stays (so its token keeps growing) but has run out.
pub(crate) const RELEASE: &str =
    "UPDATE leases SET expires_at_ms = 0 WHERE name = ?1 AND holder = ?2 AND expires_at_ms > 0";

fn append_audit(conn: &Connection, event: &AuditEvent) -> Result<OpOutcome, StoreError> {
    let (seq, prev): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(sql)?;
    let prev = parse_hash(prev)?;
    let seq: u64 = from_i64(seq, "audit head")?;
    let seq = seq
        .checked_add(1)
        .ok_or(StoreError::Full("audit sequence exhausted".into()))?;
    let hash = chain_hash(&prev, seq, event);
    let seq_i = to_i64(seq, "audit sequence")?;
    conn.prepare_cached(
        "INSERT INTO audit (seq, at_ms, tenant, device, action, payload, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            seq_i,
            to_i64(event.at_ms, "audit time").unwrap_or(i64::MAX),
            event.tenant.as_str(),
            event.device.as_ref().map(DeviceId::as_str),
            event.action,
            event.payload,
            prev.as_slice(),
            hash.as_slice()
        ])
    })
    .map_err(sql)?;
    conn.prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")
        .and_then(|mut s| s.execute(params![seq_i, hash.as_slice()]))
        .map_err(sql)?;
    Ok(OpOutcome::Appended { seq, hash })
}

/// Marks every op of a rolled-back atomic batch: the conflict stays visible, the rest did not
/// happen.
pub(crate) fn rolled_back(mut ops: Vec<OpOutcome>, total: usize) -> Vec<OpOutcome> {
    for o in &mut ops {
        if !matches!(o, OpOutcome::Conflict { .. }) {
            *o = OpOutcome::RolledBack;
        }
    }
    ops.resize(total, OpOutcome::RolledBack);
    ops
}

impl Store for SqliteStore {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError> {
        for op in batches.iter().flat_map(|b| &b.ops) {
            op.validate()?;
        }
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut ops = Vec::with_capacity(batch.ops.len());
            match batch.mode {
                BatchMode::Independent => {
                    for op in &batch.ops {
                        ops.push(exec(&tx, op)?);
                    }
                    outcomes.push(BatchOutcome {
                        committed: true,
                        ops,
                    });
                }
                BatchMode::Atomic => {
                    let mut sp = tx.savepoint().map_err(sql)?;
                    let mut conflict = false;
                    for op in &batch.ops {
                        let outcome = exec(&sp, op)?;
                        ops.push(outcome);
                        if matches!(outcome, OpOutcome::Conflict { .. }) {
                            conflict = true;
                            break;
                        }
                    }
                    if conflict {
                        sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
                        sp.finish().map_err(sql)?;
                        outcomes.push(BatchOutcome {
                            committed: false,
                            ops: rolled_back(ops, batch.ops.len()),
                        });
                    } else {
                        sp.commit().map_err(sql)?;
                        outcomes.push(BatchOutcome {
                            committed: true,
                            ops,
                        });
                    }
                }
            }
        }
        tx.commit().map_err(sql)?;
        Ok(outcomes)
    }

    fn tenant(&mut self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT config FROM tenants WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
            .map_err(sql)?;
        Ok(row.map(|config| Tenant { id: *id, config }))
    }

    fn tenants(&mut self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, config FROM tenants WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![after.map_or("", TenantId::as_str), page_limit(limit)],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )
            .map_err(sql)?;
        rows.map(|row| {
            let (id, config) = row.map_err(sql)?;
            Ok(Tenant {
                id: parse_tenant_id(id)?,
                config,
            })
        })
        .collect()
    }

    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, tenant, state, firmware_version, credential, revoked, updated_at_ms \
                 FROM devices WHERE id = ?1",
            )
            .map_err(sql)?;
        let mut rows = stmt.query_map([id.as_str()], device_row).map_err(sql)?;
        rows.next()
            .map(|r| r.map_err(sql)?.into_record())
            .transpose()
    }

    fn devices(
        &mut self,
        tenant: &TenantId,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, tenant, state, firmware_version, credential, revoked, updated_at_ms \
                 FROM devices WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![
                    tenant.as_str(),
                    after.map_or("", DeviceId::as_str),
                    page_limit(limit)
                ],
                device_row,
            )
            .map_err(sql)?;
        rows.map(|r| r.map_err(sql)?.into_record()).collect()
    }

    fn challenge(&mut self, device: &DeviceId) -> Result<Option<Challenge>, StoreError> {
        let row: Option<(i64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT session, nonce, expires_at_ms FROM challenges WHERE device = ?1",
            )
            .and_then(|mut s| {
                s.query_row([device.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sql)?;
        row.map(|(session, nonce, expires)| {
            Ok(Challenge {
                device: *device,
                session: from_i64(session, "session")?,
                nonce,
                expires_at_ms: from_i64(expires, "expires_at_ms")?,
            })
        })
        .transpose()
    }

    fn shadow(&mut self, device: &DeviceId, name: &str) -> Result<Option<Shadow>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT version, document FROM shadows WHERE device = ?1 AND name = ?2")
            .and_then(|mut s| {
                s.query_row(params![device.as_str(), name], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(sql)?;
        row.map(|(version, document)| {
            Ok(Shadow {
                device: *device,
                name: name.to_owned(),
                version: from_i64(version, "shadow version")?,
                document,
            })
        })
        .transpose()
    }

    fn shadows(
        &mut self,
        device: &DeviceId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Shadow>, StoreError> {
        // `name > ''` would skip the unnamed shadow: without `after`, start at or above ''.
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, version, document FROM shadows WHERE device = ?1 \
                 AND (name > ?2 OR (?3 AND name = '')) ORDER BY name LIMIT ?4",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![
                    device.as_str(),
                    after.unwrap_or(""),
                    after.is_none(),
                    page_limit(limit)
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )
            .map_err(sql)?;
        rows.map(|row| {
            let (name, version, document) = row.map_err(sql)?;
            Ok(Shadow {
                device: *device,
                name,
                version: from_i64(version, "shadow version")?,
                document,
            })
        })
        .collect()
    }

    fn rollouts(&mut self, after: Option<u64>, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        let after = match after.map(i64::try_from) {
            None => -1,
            Some(Ok(a)) => a,
            Some(Err(_)) => return Ok(Vec::new()),
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, tenant, status, plan FROM rollouts WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![after, page_limit(limit)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u8>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(sql)?;
        rows.map(|row| {
            let (id, tenant, status, plan) = row.map_err(sql)?;
            Ok(Rollout {
                id: from_i64(id, "rollout id")?,
                tenant: parse_tenant_id(tenant)?,
                status,
                plan,
            })
        })
        .collect()
    }

    fn rollout(&mut self, id: u64) -> Result<Option<Rollout>, StoreError> {
        let Ok(key) = i64::try_from(id) else {
            return Ok(None);
        };
        let row: Option<(String, u8, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT tenant, status, plan FROM rollouts WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sql)?;
        row.map(|(tenant, status, plan)| {
            Ok(Rollout {
                id,
                tenant: parse_tenant_id(tenant)?,
                status,
                plan,
            })
        })
        .transpose()
    }

    fn ota_progress(
        &mut self,
        rollout: u64,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<OtaProgress>, StoreError> {
        let Ok(key) = i64::try_from(rollout) else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT device, status, detail, updated_at_ms FROM ota_progress \
                 WHERE rollout = ?1 AND device > ?2 ORDER BY device LIMIT ?3",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(
                params![key, after.map_or("", DeviceId::as_str), page_limit(limit)],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u8>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .map_err(sql)?;
        rows.map(|row| {
            let (device, status, detail, at) = row.map_err(sql)?;
            Ok(OtaProgress {
                rollout,
                device: parse_device_id(device)?,
                status,
                detail,
                updated_at_ms: from_i64(at, "updated_at_ms")?,
            })
        })
        .collect()
    }

    fn audit_head(&mut self) -> Result<AuditHead, StoreError> {
        let (seq, hash): (i64, Vec<u8>) = self
            .conn
            .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(sql)?;
        Ok(AuditHead {
            seq: from_i64(seq, "audit head")?,
            hash: parse_hash(hash)?,
        })
    }

    fn audit_range(&mut self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, at_ms, tenant, device, action, payload, prev_hash, hash FROM audit \
                 WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map(params![from, page_limit(limit)], |r| {
                Ok(RawAudit {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    tenant: r.get(2)?,
                    device: r.get(3)?,
                    action: r.get(4)?,
                    payload: r.get(5)?,
                    prev_hash: r.get(6)?,
                    hash: r.get(7)?,
                })
            })
            .map_err(sql)?;
        rows.map(|r| r.map_err(sql)?.into_record()).collect()
    }

    fn revision(&mut self, key: &str) -> Result<u64, StoreError> {
        validate_key(key)?;
        self.conn
            .prepare_cached("SELECT revision FROM revisions WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get::<_, i64>(0)).optional())
            .map_err(sql)?
            .map_or(Ok(0), |v| from_i64(v, "revision"))
    }

    fn claim(
        &mut self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, StoreError> {
        validate_key(name)?;
        validate_key(holder)?;
        let (now, expires) = lease_expiry(now_ms, ttl_ms)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let row: Option<(String, i64, i64)> = tx
            .prepare_cached(CLAIM)
            .and_then(|mut s| {
                s.query_row(params![name, holder, now, expires], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        row.map(|(h, e, f)| lease_row(name, h, e, f)).transpose()
    }

    fn release(&mut self, name: &str, holder: &str) -> Result<bool, StoreError> {
        validate_key(name)?;
        validate_key(holder)?;
        let changed = self
            .conn
            .prepare_cached(RELEASE)
            .and_then(|mut s| s.execute([name, holder]))
            .map_err(sql)?;
        Ok(changed > 0)
    }

    fn lease(&mut self, name: &str) -> Result<Option<Lease>, StoreError> {
        validate_key(name)?;
        let row: Option<(String, i64, i64)> = self
            .conn
            .prepare_cached("SELECT holder, expires_at_ms, fence FROM leases WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(sql)?;
        row.map(|(h, e, f)| lease_row(name, h, e, f)).transpose()
    }
}

/// An audit row as both databases return it.
pub(crate) struct RawAudit {
    pub(crate) seq: i64,
    pub(crate) at_ms: i64,
    pub(crate) tenant: String,
    pub(crate) device: Option<String>,
    pub(crate) action: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) prev_hash: Vec<u8>,
    pub(crate) hash: Vec<u8>,
}

impl RawAudit {
    pub(crate) fn into_record(self) -> Result<AuditRecord, StoreError> {
        Ok(AuditRecord {
            seq: from_i64(self.seq, "audit seq")?,
            event: AuditEvent {
                at_ms: from_i64(self.at_ms, "audit time")?,
                tenant: parse_tenant_id(self.tenant)?,
                device: self.device.map(parse_device_id).transpose()?,
                action: from_i64(self.action, "audit action")?,
                payload: self.payload,
            },
            prev_hash: parse_hash(self.prev_hash)?,
            hash: parse_hash(self.hash)?,
        })
    }
}

/// A device row as both databases return it.
pub(crate) struct RawDevice {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) state: i64,
    pub(crate) firmware_version: i64,
    pub(crate) credential: Vec<u8>,
    pub(crate) revoked: bool,
    pub(crate) updated_at_ms: i64,
}

impl RawDevice {
    pub(crate) fn into_record(self) -> Result<DeviceRecord, StoreError> {
        Ok(DeviceRecord {
            id: parse_device_id(self.id)?,
            tenant: parse_tenant_id(self.tenant)?,
            state: from_i64(self.state, "device state")?,
            firmware_version: from_i64(self.firmware_version, "firmware version")?,
            credential: self.credential,
            revoked: self.revoked,
            updated_at_ms: from_i64(self.updated_at_ms, "updated_at_ms")?,
        })
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawDevice> {
    Ok(RawDevice {
        id: r.get(0)?,
        tenant: r.get(1)?,
        state: r.get(2)?,
        firmware_version: r.get(3)?,
        credential: r.get(4)?,
        revoked: r.get(5)?,
        updated_at_ms: r.get(6)?,
    })
}
