//! PostgreSQL, for fleets past one machine.
//!
//! Each store lives in its own schema (so one database can hold several, and tests run side by
//! side). Shadow compare-and-swap is one SQL statement (`UPDATE ... WHERE version = $expected`,
//! or `INSERT ... ON CONFLICT DO NOTHING` for a new shadow), so several backend nodes can write
//! the same database: a concurrent writer waits for the row lock and then sees the new version.
//! Audit appends lock the one-row `audit_head` table (`SELECT ... FOR UPDATE`), which keeps the
//! chain linear across nodes.
//!
//! A lost connection fails the call in flight with [`StoreError::ConnectionLost`] (the server
//! rolls back its transaction); the next call connects again.

use std::collections::HashMap;
use std::time::Duration;

use iot_core::id::{DeviceId, TenantId};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement, Transaction};

use crate::audit::{AuditEvent, AuditHead, AuditRecord, chain_hash};
use crate::model::{
    Batch, BatchMode, BatchOutcome, Challenge, DeviceRecord, Lease, Op, OpOutcome, OtaProgress,
    Rollout, Shadow, ShadowExpect, Tenant, validate_key,
};
use crate::sqlite::{
    APP, RawAudit, RawDevice, lease_check, lease_row, parse_hash, parse_tenant_id, rolled_back,
};
use crate::{SCHEMA_VERSION, Store, StoreError, from_i64, lease_expiry, page_limit, to_i64};

/// Schema migrations; entry `i` brings the schema from version `i` to `i + 1`. They run with
/// `search_path` set to the store's schema.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE store_meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
CREATE TABLE tenants (id TEXT COLLATE "C" PRIMARY KEY, config BYTEA NOT NULL);
CREATE TABLE devices (
    id TEXT COLLATE "C" PRIMARY KEY, tenant TEXT COLLATE "C" NOT NULL, state BIGINT NOT NULL,
    firmware_version BIGINT NOT NULL, credential BYTEA NOT NULL, revoked BOOLEAN NOT NULL,
    updated_at_ms BIGINT NOT NULL);
CREATE INDEX devices_by_tenant ON devices (tenant, id);
CREATE TABLE challenges (
    device TEXT COLLATE "C" PRIMARY KEY, session BIGINT NOT NULL, nonce BYTEA NOT NULL,
    expires_at_ms BIGINT NOT NULL);
CREATE INDEX challenges_by_expiry ON challenges (expires_at_ms);
CREATE TABLE shadows (
    device TEXT COLLATE "C" NOT NULL, name TEXT COLLATE "C" NOT NULL, version BIGINT NOT NULL, document BYTEA NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE rollouts (id BIGINT PRIMARY KEY, tenant TEXT COLLATE "C" NOT NULL, status BIGINT NOT NULL,
    plan BYTEA NOT NULL);
CREATE TABLE ota_progress (
    rollout BIGINT NOT NULL, device TEXT COLLATE "C" NOT NULL, status BIGINT NOT NULL,
    detail BYTEA NOT NULL, updated_at_ms BIGINT NOT NULL, PRIMARY KEY (rollout, device));
CREATE INDEX ota_progress_by_device ON ota_progress (device);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, tenant TEXT COLLATE "C" NOT NULL, device TEXT,
    action BIGINT NOT NULL, payload BYTEA NOT NULL, prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL);
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL,
    hash BYTEA NOT NULL);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
"#,
    r#"
CREATE TABLE revisions (key TEXT COLLATE "C" PRIMARY KEY, revision BIGINT NOT NULL);
CREATE TABLE leases (name TEXT COLLATE "C" PRIMARY KEY, holder TEXT COLLATE "C" NOT NULL,
    expires_at_ms BIGINT NOT NULL, fence BIGINT NOT NULL);
"#,
];

/// Serialises migrations of concurrent openers (an arbitrary constant naming this crate).
const MIGRATION_LOCK: i64 = 0x696f_745f_7374_6f72;

/// Where a [`PgStore`] connects and which schema it uses. Its `Debug` output leaves out the
/// connection string, which may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A libpq-style connection string (`host=127.0.0.1 user=postgres dbname=test`) or URL
    /// (`postgresql://postgres@127.0.0.1/test`).
    pub connection: String,
    /// The schema holding the store's tables: ASCII letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 bytes. Created when absent.
    pub schema: String,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl core::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgConfig")
            .field("connection", &"<redacted>")
            .field("schema", &self.schema)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PgConfig {
    /// A configuration with a 5 s connect timeout.
    #[must_use]
    pub fn new(connection: impl Into<String>, schema: impl Into<String>) -> Self {
        Self {
            connection: connection.into(),
            schema: schema.into(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let s = self.schema.as_bytes();
        let first_ok = s
            .first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
        if !first_ok || s.len() > 63 || !s.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            return Err(StoreError::InvalidInput(
                "schema name must be [A-Za-z_][A-Za-z0-9_]{0,62}",
            ));
        }
        Ok(())
    }

    /// The schema as a quoted SQL identifier (validated, so no quote can appear inside).
    fn quoted_schema(&self) -> String {
        format!("\"{}\"", self.schema)
    }
}

/// How many times [`PgStore`] runs a commit again after the server aborted it for a deadlock
/// or a serialization failure.
const MAX_COMMIT_RETRIES: u32 = 8;

/// The marker [`pg`] puts before the message of a transaction the server aborted for a
/// deadlock or a serialization failure.
const RETRYABLE: &str = "transaction aborted by the server, may be run again: ";

fn is_retryable(message: &str) -> bool {
    message.starts_with(RETRYABLE)
}

fn pg(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::ConnectionLost(e.to_string());
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::DISK_FULL
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::PROGRAM_LIMIT_EXCEEDED
        {
            return StoreError::Full(db.to_string());
        }
        if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || code.code().starts_with("08")
        {
            return StoreError::ConnectionLost(db.to_string());
        }
        if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        {
            return StoreError::Backend(format!("{RETRYABLE}{db}"));
        }
        return StoreError::Backend(db.to_string());
    }
    // No server error: the socket failed (refused, reset, timed out), or a value did not
    // convert (a row this crate did not write).
    let socket = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if socket {
        StoreError::ConnectionLost(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// A connection and the statements prepared on it (a fixed set, so the cache is bounded).
struct Conn {
    client: Client,
    statements: Statements,
}

#[derive(Default)]
struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    fn get(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = tx.prepare(sql).map_err(pg)?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }

    fn execute(
        &mut self,
        tx: &mut Transaction<'_>,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.get(tx, sql)?;
        tx.execute(&statement, params).map_err(pg)
    }
}

/// A [`Store`] in a PostgreSQL schema.
pub struct PgStore {
    config: PgConfig,
    client: Option<Conn>,
}

impl core::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.config.schema)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates the schema when absent and brings it to [`SCHEMA_VERSION`] in one
    /// transaction (concurrent openers take turns on an advisory lock).
    ///
    /// A schema with tables this crate did not create is [`StoreError::Foreign`], one written
    /// by a newer build is [`StoreError::SchemaTooNew`]; either way nothing is changed. An
    /// unreachable server is [`StoreError::ConnectionLost`].
    pub fn connect(config: PgConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let mut store = Self {
            config,
            client: None,
        };
        store.client()?;
        Ok(store)
    }

    /// The configuration this store connects with.
    #[must_use]
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Drops the schema and everything in it, and closes the connection. For tests and
    /// decommissioned fleets; there is no undo.
    pub fn drop_schema(mut self) -> Result<(), StoreError> {
        let statement = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.config.quoted_schema()
        );
        self.with_client(|c| c.client.batch_execute(&statement).map_err(pg))
    }

    /// The backend process id of the current connection (for operators and fault tests), or
    /// `None` when not connected.
    pub fn backend_pid(&mut self) -> Result<Option<i32>, StoreError> {
        if self.client.is_none() {
            return Ok(None);
        }
        self.with_client(|c| {
            c.client
                .query_one("SELECT pg_backend_pid()", &[])
                .and_then(|r| r.try_get(0))
                .map(Some)
                .map_err(pg)
        })
    }

    fn open_connection(&self) -> Result<Client, StoreError> {
        let mut cfg: postgres::Config = self
            .config
            .connection
            .parse()
            .map_err(|_| StoreError::InvalidInput("unparsable PostgreSQL connection string"))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(self.config.connect_timeout);
        }
        let mut client = cfg.connect(NoTls).map_err(pg)?;
        let schema = self.config.quoted_schema();
        let mut tx = client.transaction().map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(pg)?;
        let version = schema_version(&mut tx, &self.config.schema)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema}"
            ))
            .map_err(pg)?;
            let from_index = usize::try_from(version).unwrap_or(usize::MAX);
            for migration in MIGRATIONS.iter().skip(from_index) {
                tx.batch_execute(migration).map_err(pg)?;
            }
            tx.execute(
                "INSERT INTO store_meta (key, value) VALUES ('application', $1), \
                 ('schema_version', $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&APP, &SCHEMA_VERSION.to_string()],
            )
            .map_err(pg)?;
        }
        tx.commit().map_err(pg)?;
        client
            .batch_execute(&format!("SET search_path TO {schema}"))
            .map_err(pg)?;
        Ok(client)
    }

    /// The live connection, connecting first when there is none or it was lost.
    fn client(&mut self) -> Result<&mut Conn, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.client = None;
            let client = self.open_connection()?;
            self.client = Some(Conn {
                client,
                statements: Statements::default(),
            });
        }
        self.client
            .as_mut()
            .ok_or(StoreError::ConnectionLost("not connected".into()))
    }

    /// Runs `f` on the connection; a lost connection is dropped so the next call reconnects.
    fn with_client<T>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = f(self.client()?);
        if matches!(result, Err(StoreError::ConnectionLost(_)))
            || self.client.as_ref().is_some_and(|c| c.client.is_closed())
        {
            self.client = None;
        }
        result
    }
}

/// The schema version recorded in `schema`: 0 when the schema is absent or empty. Refuses a
/// schema with foreign tables or another application's metadata.
fn schema_version(tx: &mut Transaction<'_>, schema: &str) -> Result<u32, StoreError> {
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .map_err(pg)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(pg)?;
    if tables.is_empty() {
        return Ok(0);
    }
    if !tables.iter().any(|t| t == "store_meta") {
        return Err(StoreError::Foreign(format!(
            "schema {schema} has tables {tables:?} but no store_meta table"
        )));
    }
    let meta_query = format!("SELECT key, value FROM \"{schema}\".store_meta");
    let mut app = None;
    let mut version = None;
    for row in tx.query(&meta_query, &[]).map_err(pg)? {
        let key: String = row.try_get(0).map_err(pg)?;
        let value: String = row.try_get(1).map_err(pg)?;
        match key.as_str() {
            "application" => app = Some(value),
            "schema_version" => version = Some(value),
            _ => {}
        }
    }
    if app.as_deref() != Some(APP) {
        return Err(StoreError::Foreign(format!(
            "store_meta names application {app:?}"
        )));
    }
    let version = version.unwrap_or_default();
    version
        .parse()
        .map_err(|_| StoreError::Foreign(format!("schema version {version:?} is not a number")))
}

fn shadow_version(
    tx: &mut Transaction<'_>,
    st: &mut Statements,
    device: &DeviceId,
    name: &str,
) -> Result<Option<u64>, StoreError> {
    let statement = st.get(
        tx,
        "SELECT version FROM shadows WHERE device = $1 AND name = $2",
    )?;
    let row = tx
        .query_opt(&statement, &[&device.as_str(), &name])
        .map_err(pg)?;
    row.map(|r| from_i64(r.try_get(0).map_err(pg)?, "shadow version"))
        .transpose()
}

fn exec(tx: &mut Transaction<'_>, st: &mut Statements, op: &Op) -> Result<OpOutcome, StoreError> {
    match op {
        Op::PutTenant(t) => {
            st.execute(
                tx,
                "INSERT INTO tenants (id, config) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET config = excluded.config",
                &[&t.id.as_str(), &t.config],
            )?;
        }
        Op::PutDevice(d) => {
            st.execute(
                tx,
                "INSERT INTO devices (id, tenant, state, firmware_version, credential, revoked, \
                 updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE \
                 SET tenant = excluded.tenant, state = excluded.state, \
                 firmware_version = excluded.firmware_version, credential = excluded.credential, \
                 revoked = excluded.revoked, updated_at_ms = excluded.updated_at_ms",
                &[
                    &d.id.as_str(),
                    &d.tenant.as_str(),
                    &i64::from(d.state),
                    &i64::from(d.firmware_version),
                    &d.credential,
                    &d.revoked,
                    &to_i64(d.updated_at_ms, "updated_at_ms")?,
                ],
            )?;
        }
        Op::DeleteDevice(id) => {
            for statement in [
                "DELETE FROM devices WHERE id = $1",
                "DELETE FROM challenges WHERE device = $1",
                "DELETE FROM shadows WHERE device = $1",
                "DELETE FROM ota_progress WHERE device = $1",
            ] {
                st.execute(tx, statement, &[&id.as_str()])?;
            }
        }
        Op::PutChallenge(c) => {
            st.execute(
                tx,
                "INSERT INTO challenges (device, session, nonce, expires_at_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (device) DO UPDATE SET \
                 session = excluded.session, nonce = excluded.nonce, \
                 expires_at_ms = excluded.expires_at_ms",
                &[
                    &c.device.as_str(),
                    &to_i64(c.session, "session")?,
                    &c.nonce,
                    &to_i64(c.expires_at_ms, "expires_at_ms")?,
                ],
            )?;
        }
        Op::DeleteChallenge(id) => {
            st.execute(
                tx,
                "DELETE FROM challenges WHERE device = $1",
                &[&id.as_str()],
            )?;
        }
        Op::PurgeChallenges { now_ms } => {
            st.execute(
                tx,
                "DELETE FROM challenges WHERE expires_at_ms <= $1",
                &[&to_i64(*now_ms, "now_ms")?],
            )?;
        }
        Op::PutShadow { shadow, expected } => {
            let version = to_i64(shadow.version, "shadow version")?;
            let device = shadow.device.as_str();
            let changed = match expected {
                ShadowExpect::Absent => st.execute(
                    tx,
                    "INSERT INTO shadows (device, name, version, document) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (device, name) DO NOTHING",
                    &[&device, &shadow.name, &version, &shadow.document],
                ),
                ShadowExpect::Version(v) => st.execute(
                    tx,
                    "UPDATE shadows SET version = $3, document = $4 \
                     WHERE device = $1 AND name = $2 AND version = $5",
                    &[
                        &device,
                        &shadow.name,
                        &version,
                        &shadow.document,
                        &to_i64(*v, "shadow version")?,
                    ],
                ),
            }?;
            if changed == 0 {
                return Ok(OpOutcome::Conflict {
                    current: shadow_version(tx, st, &shadow.device, &shadow.name)?,
                });
            }
        }
        Op::DeleteShadow {
            device,
            name,
            expected_version,
        } => {
            let changed = tx
                .execute(
                    "DELETE FROM shadows WHERE device = $1 AND name = $2 AND version = $3",
                    &[
                        &device.as_str(),
                        name,
                        &to_i64(*expected_version, "shadow version")?,
                    ],
                )
                .map_err(pg)?;
            if changed == 0 {
                return Ok(OpOutcome::Conflict {
                    current: shadow_version(tx, st, device, name)?,
                });
            }
        }
        Op::PutRollout(r) => {
            st.execute(
                tx,
                "INSERT INTO rollouts (id, tenant, status, plan) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant, \
                 status = excluded.status, plan = excluded.plan",
                &[
                    &to_i64(r.id, "rollout id")?,
                    &r.tenant.as_str(),
                    &i64::from(r.status),
                    &r.plan,
                ],
            )?;
        }
        Op::PutOtaProgress(p) => {
            st.execute(
                tx,
                "INSERT INTO ota_progress (rollout, device, status, detail, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rollout, device) DO UPDATE SET \
                 status = excluded.status, detail = excluded.detail, \
                 updated_at_ms = excluded.updated_at_ms",
                &[
                    &to_i64(p.rollout, "rollout id")?,
                    &p.device.as_str(),
                    &i64::from(p.status),
                    &p.detail,
                    &to_i64(p.updated_at_ms, "updated_at_ms")?,
                ],
            )?;
        }
        Op::Audit(event) => return append_audit(tx, st, event),
        Op::Revise {
            key,
            expected,
            bump,
        } => {
            let expected_i = to_i64(*expected, "revision")?;
            let changed = if !*bump {
                None
            } else if *expected == 0 {
                Some(st.execute(
                    tx,
                    "INSERT INTO revisions (key, revision) VALUES ($1, 1) \
                     ON CONFLICT (key) DO UPDATE SET revision = 1 WHERE revisions.revision = 0",
                    &[key],
                )?)
            } else {
                Some(st.execute(
                    tx,
                    "UPDATE revisions SET revision = revision + 1 \
                     WHERE key = $1 AND revision = $2",
                    &[key, &expected_i],
                )?)
            };
            if changed == Some(1) {
                return Ok(OpOutcome::Applied);
            }
            let statement = st.get(tx, "SELECT revision FROM revisions WHERE key = $1")?;
            let current: u64 = tx
                .query_opt(&statement, &[key])
                .map_err(pg)?
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()
                .map_err(pg)?
                .map_or(Ok(0), |v| from_i64(v, "revision"))?;
            if current != *expected || changed.is_some() {
                return Ok(OpOutcome::Conflict {
                    current: Some(current),
                });
            }
        }
        Op::HoldsLease {
            name,
            holder,
            fence,
        } => {
            let statement = st.get(tx, "SELECT holder, fence FROM leases WHERE name = $1")?;
            let stored = tx
                .query_opt(&statement, &[name])
                .map_err(pg)?
                .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
                .transpose()
                .map_err(pg)?;
            return lease_check(stored, holder, *fence);
        }
    }
    Ok(OpOutcome::Applied)
}

fn append_audit(
    tx: &mut Transaction<'_>,
    st: &mut Statements,
    event: &AuditEvent,
) -> Result<OpOutcome, StoreError> {
    let row = tx
        .query_one(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .map_err(pg)?;
    let seq: u64 = from_i64(row.try_get(0).map_err(pg)?, "audit head")?;
    let prev = parse_hash(row.try_get(1).map_err(pg)?)?;
    let seq = seq
        .checked_add(1)
        .ok_or(StoreError::Full("audit sequence exhausted".into()))?;
    let hash = chain_hash(&prev, seq, event);
    let seq_i = to_i64(seq, "audit sequence")?;
    st.execute(
        tx,
        "INSERT INTO audit (seq, at_ms, tenant, device, action, payload, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &seq_i,
            &to_i64(event.at_ms, "audit time")?,
            &event.tenant.as_str(),
            &event.device.as_ref().map(DeviceId::as_str),
            &i64::from(event.action),
            &event.payload,
            &prev.as_slice(),
            &hash.as_slice(),
        ],
    )?;
    st.execute(
        tx,
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
        &[&seq_i, &hash.as_slice()],
    )?;
    Ok(OpOutcome::Appended { seq, hash })
}

fn commit_on(conn: &mut Conn, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError> {
    let st = &mut conn.statements;
    let mut tx = conn.client.transaction().map_err(pg)?;
    // Several nodes commit into one database: a transaction that appends to the audit trail
    // locks the chain's head before any other row, so no two transactions can each hold a row
    // the other waits for through the head (row locks among shadows can still deadlock; the
    // server then aborts one transaction and `commit` runs it again).
    if batches
        .iter()
        .flat_map(|b| &b.ops)
        .any(|o| matches!(o, Op::Audit(_)))
    {
        let statement = st.get(
            &mut tx,
            "SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE",
        )?;
        tx.query_one(&statement, &[]).map_err(pg)?;
    }
    let mut outcomes = Vec::with_capacity(batches.len());
    let mut run = ShadowRun::default();
    for batch in batches {
        let mut ops = Vec::with_capacity(batch.ops.len());
        match batch.mode {
            BatchMode::Independent => {
                let at = outcomes.len();
                for (i, op) in batch.ops.iter().enumerate() {
                    // Shadow writes wait in the run (one statement for many); anything else
                    // flushes the run first, so every op sees the ops before it.
                    if let Op::PutShadow { shadow, expected } = op {
                        if !run.add(at, i, shadow, *expected) {
                            // The same shadow again: the earlier write must land first.
                            run.flush(&mut tx, st, &mut outcomes, &mut ops, at)?;
                            if !run.add(at, i, shadow, *expected) {
                                ops.push(exec(&mut tx, st, op)?);
                                continue;
                            }
                        }
                        // A placeholder until the run is flushed.
                        ops.push(OpOutcome::RolledBack);
                        continue;
                    }
                    run.flush(&mut tx, st, &mut outcomes, &mut ops, at)?;
                    ops.push(exec(&mut tx, st, op)?);
                }
                outcomes.push(BatchOutcome {
                    committed: true,
                    ops,
                });
            }
            BatchMode::Atomic => {
                let at = outcomes.len();
                run.flush(&mut tx, st, &mut outcomes, &mut ops, at)?;
                let mut sp = tx.transaction().map_err(pg)?;
                let mut conflict = false;
                for op in &batch.ops {
                    let outcome = exec(&mut sp, st, op)?;
                    ops.push(outcome);
                    if matches!(outcome, OpOutcome::Conflict { .. }) {
                        conflict = true;
                        break;
                    }
                }
                if conflict {
                    sp.rollback().map_err(pg)?;
                    outcomes.push(BatchOutcome {
                        committed: false,
                        ops: rolled_back(ops, batch.ops.len()),
                    });
                } else {
                    sp.commit().map_err(pg)?;
                    outcomes.push(BatchOutcome {
                        committed: true,
                        ops,
                    });
                }
            }
        }
    }
    let at = outcomes.len();
    run.flush(&mut tx, st, &mut outcomes, &mut Vec::new(), at)?;
    tx.commit().map_err(pg)?;
    Ok(outcomes)
}

/// Consecutive shadow writes of independent batches, on distinct shadows, applied with one
/// statement per kind (update, create) instead of one round trip per op. Distinct keys make
/// the order among them irrelevant; a second write to a key already in the run, or any other
/// op, flushes the run first.
#[derive(Default)]
struct ShadowRun<'a> {
    keys: std::collections::HashSet<(&'a str, &'a str)>,
    /// (batch index, op index, shadow, expected version) of compare-and-swap updates.
    updates: Vec<(usize, usize, &'a Shadow, i64)>,
    /// (batch index, op index, shadow) of creations.
    creates: Vec<(usize, usize, &'a Shadow)>,
}

const BULK_UPDATE: &str = "UPDATE shadows AS s SET version = u.version, document = u.document \
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::int8[]) \
    AS u(device, name, version, document, expected) \
    WHERE s.device = u.device COLLATE \"C\" AND s.name = u.name COLLATE \"C\" \
    AND s.version = u.expected RETURNING s.device, s.name";

const BULK_CREATE: &str = "INSERT INTO shadows (device, name, version, document) \
    SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[]) \
    ON CONFLICT (device, name) DO NOTHING RETURNING device, name";

impl<'a> ShadowRun<'a> {
    /// Takes the write into the run, or returns `false` when its key is already there.
    fn add(&mut self, batch: usize, op: usize, shadow: &'a Shadow, expected: ShadowExpect) -> bool {
        let Ok(expected) = (match expected {
            ShadowExpect::Absent => Ok(None),
            ShadowExpect::Version(v) => to_i64(v, "shadow version").map(Some),
        }) else {
            return false;
        };
        if !self
            .keys
            .insert((shadow.device.as_str(), shadow.name.as_str()))
        {
            return false;
        }
        match expected {
            None => self.creates.push((batch, op, shadow)),
            Some(v) => self.updates.push((batch, op, shadow, v)),
        }
        true
    }

    /// Applies the run and writes each op's outcome: into `outcomes` for finished batches,
    /// into `current` for the batch at index `current_at` still being built.
    fn flush(
        &mut self,
        tx: &mut Transaction<'_>,
        st: &mut Statements,
        outcomes: &mut [BatchOutcome],
        current: &mut [OpOutcome],
        current_at: usize,
    ) -> Result<(), StoreError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let mut applied = std::collections::HashSet::new();
        if !self.updates.is_empty() {
            let devices: Vec<&str> = self.updates.iter().map(|u| u.2.device.as_str()).collect();
            let names: Vec<&str> = self.updates.iter().map(|u| u.2.name.as_str()).collect();
            let versions = self
                .updates
                .iter()
                .map(|u| to_i64(u.2.version, "shadow version"))
                .collect::<Result<Vec<_>, _>>()?;
            let documents: Vec<&[u8]> = self
                .updates
                .iter()
                .map(|u| u.2.document.as_slice())
                .collect();
            let expected: Vec<i64> = self.updates.iter().map(|u| u.3).collect();
            let statement = st.get(tx, BULK_UPDATE)?;
            for row in tx
                .query(
                    &statement,
                    &[&devices, &names, &versions, &documents, &expected],
                )
                .map_err(pg)?
            {
                let device: String = row.try_get(0).map_err(pg)?;
                let name: String = row.try_get(1).map_err(pg)?;
                applied.insert((device, name));
            }
        }
        if !self.creates.is_empty() {
            let devices: Vec<&str> = self.creates.iter().map(|c| c.2.device.as_str()).collect();
            let names: Vec<&str> = self.creates.iter().map(|c| c.2.name.as_str()).collect();
            let versions = self
                .creates
                .iter()
                .map(|c| to_i64(c.2.version, "shadow version"))
                .collect::<Result<Vec<_>, _>>()?;
            let documents: Vec<&[u8]> = self
                .creates
                .iter()
                .map(|c| c.2.document.as_slice())
                .collect();
            let statement = st.get(tx, BULK_CREATE)?;
            for row in tx
                .query(&statement, &[&devices, &names, &versions, &documents])
                .map_err(pg)?
            {
                let device: String = row.try_get(0).map_err(pg)?;
                let name: String = row.try_get(1).map_err(pg)?;
                applied.insert((device, name));
            }
        }
        let positions = self
            .updates
            .iter()
            .map(|u| (u.0, u.1, u.2))
            .chain(self.creates.iter().copied());
        for (batch, op, shadow) in positions {
            let key = (shadow.device.as_str().to_owned(), shadow.name.clone());
            let outcome = if applied.contains(&key) {
                OpOutcome::Applied
            } else {
                OpOutcome::Conflict {
                    current: shadow_version(tx, st, &shadow.device, &shadow.name)?,
                }
            };
            let slot = if batch == current_at {
                current.get_mut(op)
            } else {
                outcomes.get_mut(batch).and_then(|b| b.ops.get_mut(op))
            };
            *slot.ok_or(StoreError::Backend("shadow run lost its op".into()))? = outcome;
        }
        self.keys.clear();
        self.updates.clear();
        self.creates.clear();
        Ok(())
    }
}

fn device_id(text: String) -> Result<DeviceId, StoreError> {
    crate::sqlite::parse_device_id(text)
}

impl Store for PgStore {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError> {
        for op in batches.iter().flat_map(|b| &b.ops) {
            op.validate()?;
        }
        // A deadlock or serialization failure aborted the whole transaction on the server,
        // so running it again is safe; other nodes' transactions went through meanwhile.
        let mut tries = 0u32;
        loop {
            match self.with_client(|c| commit_on(c, batches)) {
                Err(StoreError::Backend(message))
                    if tries < MAX_COMMIT_RETRIES && is_retryable(&message) =>
                {
                    tries = tries.saturating_add(1);
                }
                other => return other,
            }
        }
    }

    fn tenant(&mut self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        self.with_client(|c| {
            let row = c
                .client
                .query_opt("SELECT config FROM tenants WHERE id = $1", &[&id.as_str()])
                .map_err(pg)?;
            row.map(|r| {
                Ok(Tenant {
                    id: *id,
                    config: r.try_get(0).map_err(pg)?,
                })
            })
            .transpose()
        })
    }

    fn tenants(&mut self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        self.with_client(|c| {
            c.client
                .query(
                    "SELECT id, config FROM tenants WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after.map_or("", TenantId::as_str), &page_limit(limit)],
                )
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(Tenant {
                        id: parse_tenant_id(r.try_get(0).map_err(pg)?)?,
                        config: r.try_get(1).map_err(pg)?,
                    })
                })
                .collect()
        })
    }

    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.with_client(|c| {
            c.client.query_opt(
                "SELECT id, tenant, state, firmware_version, credential, revoked, updated_at_ms \
                 FROM devices WHERE id = $1",
                &[&id.as_str()],
            )
            .map_err(pg)?
            .map(|r| device_row(&r)?.into_record())
            .transpose()
        })
    }

    fn devices(
        &mut self,
        tenant: &TenantId,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with_client(|c| {
            c.client.query(
                "SELECT id, tenant, state, firmware_version, credential, revoked, updated_at_ms \
                 FROM devices WHERE tenant = $1 AND id > $2 \
                 ORDER BY id LIMIT $3",
                &[
                    &tenant.as_str(),
                    &after.map_or("", DeviceId::as_str),
                    &page_limit(limit),
                ],
            )
            .map_err(pg)?
            .iter()
            .map(|r| device_row(r)?.into_record())
            .collect()
        })
    }

    fn challenge(&mut self, device: &DeviceId) -> Result<Option<Challenge>, StoreError> {
        self.with_client(|c| {
            c.client
                .query_opt(
                    "SELECT session, nonce, expires_at_ms FROM challenges WHERE device = $1",
                    &[&device.as_str()],
                )
                .map_err(pg)?
                .map(|r| {
                    Ok(Challenge {
                        device: *device,
                        session: from_i64(r.try_get(0).map_err(pg)?, "session")?,
                        nonce: r.try_get(1).map_err(pg)?,
                        expires_at_ms: from_i64(r.try_get(2).map_err(pg)?, "expires_at_ms")?,
                    })
                })
                .transpose()
        })
    }

    fn shadow(&mut self, device: &DeviceId, name: &str) -> Result<Option<Shadow>, StoreError> {
        self.with_client(|c| {
            c.client
                .query_opt(
                    "SELECT version, document FROM shadows WHERE device = $1 AND name = $2",
                    &[&device.as_str(), &name],
                )
                .map_err(pg)?
                .map(|r| {
                    Ok(Shadow {
                        device: *device,
                        name: name.to_owned(),
                        version: from_i64(r.try_get(0).map_err(pg)?, "shadow version")?,
                        document: r.try_get(1).map_err(pg)?,
                    })
                })
                .transpose()
        })
    }

    fn shadows(
        &mut self,
        device: &DeviceId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Shadow>, StoreError> {
        self.with_client(|c| {
            c.client
                .query(
                    "SELECT name, version, document FROM shadows WHERE device = $1 \
                     AND (name > $2 OR ($3 AND name = '')) ORDER BY name LIMIT $4",
                    &[
                        &device.as_str(),
                        &after.unwrap_or(""),
                        &after.is_none(),
                        &page_limit(limit),
                    ],
                )
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(Shadow {
                        device: *device,
                        name: r.try_get(0).map_err(pg)?,
                        version: from_i64(r.try_get(1).map_err(pg)?, "shadow version")?,
                        document: r.try_get(2).map_err(pg)?,
                    })
                })
                .collect()
        })
    }

    fn rollouts(&mut self, after: Option<u64>, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        let after = match after.map(i64::try_from) {
            None => -1,
            Some(Ok(a)) => a,
            Some(Err(_)) => return Ok(Vec::new()),
        };
        self.with_client(|c| {
            c.client
                .query(
                    "SELECT id, tenant, status, plan FROM rollouts WHERE id > $1 \
                     ORDER BY id LIMIT $2",
                    &[&after, &page_limit(limit)],
                )
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(Rollout {
                        id: from_i64(r.try_get(0).map_err(pg)?, "rollout id")?,
                        tenant: parse_tenant_id(r.try_get(1).map_err(pg)?)?,
                        status: from_i64(r.try_get(2).map_err(pg)?, "rollout status")?,
                        plan: r.try_get(3).map_err(pg)?,
                    })
                })
                .collect()
        })
    }

    fn rollout(&mut self, id: u64) -> Result<Option<Rollout>, StoreError> {
        let Ok(key) = i64::try_from(id) else {
            return Ok(None);
        };
        self.with_client(|c| {
            c.client
                .query_opt(
                    "SELECT tenant, status, plan FROM rollouts WHERE id = $1",
                    &[&key],
                )
                .map_err(pg)?
                .map(|r| {
                    Ok(Rollout {
                        id,
                        tenant: parse_tenant_id(r.try_get(0).map_err(pg)?)?,
                        status: from_i64(r.try_get(1).map_err(pg)?, "rollout status")?,
                        plan: r.try_get(2).map_err(pg)?,
                    })
                })
                .transpose()
        })
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
        self.with_client(|c| {
            c.client
                .query(
                    "SELECT device, status, detail, updated_at_ms FROM ota_progress \
                 WHERE rollout = $1 AND device > $2 \
                 ORDER BY device LIMIT $3",
                    &[
                        &key,
                        &after.map_or("", DeviceId::as_str),
                        &page_limit(limit),
                    ],
                )
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(OtaProgress {
                        rollout,
                        device: device_id(r.try_get(0).map_err(pg)?)?,
                        status: from_i64(r.try_get(1).map_err(pg)?, "OTA status")?,
                        detail: r.try_get(2).map_err(pg)?,
                        updated_at_ms: from_i64(r.try_get(3).map_err(pg)?, "updated_at_ms")?,
                    })
                })
                .collect()
        })
    }

    fn audit_head(&mut self) -> Result<AuditHead, StoreError> {
        self.with_client(|c| {
            let r = c
                .client
                .query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
                .map_err(pg)?;
            Ok(AuditHead {
                seq: from_i64(r.try_get(0).map_err(pg)?, "audit head")?,
                hash: parse_hash(r.try_get(1).map_err(pg)?)?,
            })
        })
    }

    fn audit_range(&mut self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        self.with_client(|c| {
            c.client.query(
                "SELECT seq, at_ms, tenant, device, action, payload, prev_hash, hash FROM audit \
                 WHERE seq >= $1 ORDER BY seq LIMIT $2",
                &[&from, &page_limit(limit)],
            )
            .map_err(pg)?
            .iter()
            .map(|r| {
                RawAudit {
                    seq: r.try_get(0).map_err(pg)?,
                    at_ms: r.try_get(1).map_err(pg)?,
                    tenant: r.try_get(2).map_err(pg)?,
                    device: r.try_get(3).map_err(pg)?,
                    action: r.try_get(4).map_err(pg)?,
                    payload: r.try_get(5).map_err(pg)?,
                    prev_hash: r.try_get(6).map_err(pg)?,
                    hash: r.try_get(7).map_err(pg)?,
                }
                .into_record()
            })
            .collect()
        })
    }

    fn revision(&mut self, key: &str) -> Result<u64, StoreError> {
        validate_key(key)?;
        self.with_client(|c| {
            c.client
                .query_opt("SELECT revision FROM revisions WHERE key = $1", &[&key])
                .map_err(pg)?
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()
                .map_err(pg)?
                .map_or(Ok(0), |v| from_i64(v, "revision"))
        })
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
        let claim = crate::sqlite::CLAIM.replace('?', "$");
        self.with_client(|c| {
            c.client
                .query_opt(&claim, &[&name, &holder, &now, &expires])
                .map_err(pg)?
                .map(|r| {
                    lease_row(
                        name,
                        r.try_get(0).map_err(pg)?,
                        r.try_get(1).map_err(pg)?,
                        r.try_get(2).map_err(pg)?,
                    )
                })
                .transpose()
        })
    }

    fn release(&mut self, name: &str, holder: &str) -> Result<bool, StoreError> {
        validate_key(name)?;
        validate_key(holder)?;
        let release = crate::sqlite::RELEASE.replace('?', "$");
        self.with_client(|c| Ok(c.client.execute(&release, &[&name, &holder]).map_err(pg)? > 0))
    }

    fn lease(&mut self, name: &str) -> Result<Option<Lease>, StoreError> {
        validate_key(name)?;
        self.with_client(|c| {
            c.client
                .query_opt(
                    "SELECT holder, expires_at_ms, fence FROM leases WHERE name = $1",
                    &[&name],
                )
                .map_err(pg)?
                .map(|r| {
                    lease_row(
                        name,
                        r.try_get(0).map_err(pg)?,
                        r.try_get(1).map_err(pg)?,
                        r.try_get(2).map_err(pg)?,
                    )
                })
                .transpose()
        })
    }
}

fn device_row(r: &postgres::Row) -> Result<RawDevice, StoreError> {
    Ok(RawDevice {
        id: r.try_get(0).map_err(pg)?,
        tenant: r.try_get(1).map_err(pg)?,
        state: r.try_get(2).map_err(pg)?,
        firmware_version: r.try_get(3).map_err(pg)?,
        credential: r.try_get(4).map_err(pg)?,
        revoked: r.try_get(5).map_err(pg)?,
        updated_at_ms: r.try_get(6).map_err(pg)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_connection_string() {
        let config = PgConfig::new("host=db user=fleet password=hunter2", "fleet");
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("fleet"));
    }

    #[test]
    fn schema_names_are_checked_before_connecting() {
        for bad in ["", "1abc", "a-b", "a\"b", &"a".repeat(64)] {
            assert!(
                matches!(
                    PgConfig::new("host=127.0.0.1", bad).validate(),
                    Err(StoreError::InvalidInput(_))
                ),
                "{bad:?}"
            );
        }
        assert!(
            PgConfig::new("host=127.0.0.1", "_fleet_01")
                .validate()
                .is_ok()
        );
    }
}
