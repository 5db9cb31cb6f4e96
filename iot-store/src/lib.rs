#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

pub mod audit;
mod error;
pub mod group;
mod model;
pub mod postgres;
pub mod sqlite;

pub use iot_core;

pub use audit::{AuditEvent, AuditHead, AuditRecord};
pub use error::StoreError;
pub use group::{GroupCommit, GroupCommitConfig, GroupCommitHandle, Pending, PendingAll};
pub use model::{
    Batch, BatchMode, BatchOutcome, Challenge, DeviceRecord, Lease, MAX_BLOB_LEN, MAX_KEY_LEN,
    MAX_SHADOW_NAME_LEN, Op, OpOutcome, OtaProgress, Rollout, Shadow, ShadowExpect, Tenant,
};
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore};

use iot_core::id::{DeviceId, TenantId};

/// The schema version this build creates and understands. A database at a higher version is
/// refused ([`StoreError::SchemaTooNew`]); a lower one is migrated when opened.
pub const SCHEMA_VERSION: u32 = 2;

/// The most records one page of a listing returns, whatever limit the caller asks for: keeps
/// every read bounded in memory.
pub const MAX_PAGE: u32 = 10_000;

/// Durable fleet state: tenants, devices and credentials, registration challenges, shadows
/// with version compare-and-swap, rollouts with per-device OTA progress, and the hash-chained
/// audit trail.
///
/// Every write goes through [`Store::commit`]: many [`Batch`]es are applied in **one**
/// transaction, and when it returns `Ok` every applied op is durable. A backend computes the
/// ops a message causes, commits them (usually through [`GroupCommit`], which gathers the
/// batches of many callers into one transaction), and only then acknowledges the message.
///
/// The trait is synchronous and object safe, so a backend can hold a
/// `Box<dyn Store + Send>`. Reads take `&mut self` because a database connection is used by one
/// caller at a time.
pub trait Store {
    /// Applies `batches` in one transaction, in order, and returns one outcome per batch.
    ///
    /// A version conflict is not an error of the call: it is reported per op in the outcome.
    /// An [`BatchMode::Independent`] batch keeps its other ops; an [`BatchMode::Atomic`] batch
    /// is rolled back whole (see [`BatchMode`]) and the other batches still commit.
    ///
    /// Invalid input anywhere (for example an over-long shadow name) refuses the whole call
    /// before anything is written. A storage or connection error rolls back the whole
    /// transaction: nothing of the call is applied.
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError>;

    /// A tenant by id.
    fn tenant(&mut self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) tenants with ids after `after`, in id order.
    fn tenants(&mut self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError>;

    /// A device record by id.
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) devices of `tenant` with ids after `after`, in id
    /// order.
    fn devices(
        &mut self,
        tenant: &TenantId,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError>;

    /// The outstanding registration challenge of a device, expired or not (the caller compares
    /// [`Challenge::expires_at_ms`] with its clock; [`Op::PurgeChallenges`] removes old ones).
    fn challenge(&mut self, device: &DeviceId) -> Result<Option<Challenge>, StoreError>;

    /// A shadow by device and name.
    fn shadow(&mut self, device: &DeviceId, name: &str) -> Result<Option<Shadow>, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) shadows of `device` with names after `after`
    /// (`None`: from the first, the unnamed shadow included), in name order.
    fn shadows(
        &mut self,
        device: &DeviceId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Shadow>, StoreError>;

    /// A rollout by id.
    fn rollout(&mut self, id: u64) -> Result<Option<Rollout>, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) rollouts with ids above `after`, in id order (a
    /// backend restoring its state at start lists them all).
    fn rollouts(&mut self, after: Option<u64>, limit: u32) -> Result<Vec<Rollout>, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) OTA progress rows of a rollout with device ids
    /// after `after`, in device order.
    fn ota_progress(
        &mut self,
        rollout: u64,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<OtaProgress>, StoreError>;

    /// The newest audit entry's sequence number and hash; `seq == 0` with an all-zero hash when
    /// the trail is empty.
    fn audit_head(&mut self) -> Result<AuditHead, StoreError>;

    /// Up to `limit` (at most [`MAX_PAGE`]) audit records with `seq >= from_seq`, in order, as
    /// stored (not re-verified).
    fn audit_range(&mut self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;

    /// The revision counter `key` ([`Op::Revise`]): 0 when it was never bumped.
    fn revision(&mut self, key: &str) -> Result<u64, StoreError>;

    /// Claims the lease `name` for `holder` until `now_ms + ttl_ms`, in one statement: it is
    /// taken when nobody holds it, when its holder's time ran out (`expires_at_ms <= now_ms`)
    /// or when `holder` holds it already (a renewal). Returns the lease held, or `None` when
    /// another holder's lease is still running. The fencing token grows whenever the lease
    /// changes hands and stays put on a renewal.
    ///
    /// The claimers' clocks should agree to well within `ttl_ms`; exactly-once effects do not
    /// depend on that, since they are committed with [`Op::HoldsLease`].
    fn claim(
        &mut self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, StoreError>;

    /// Gives up `holder`'s lease on `name` so another claimer may take it at once; `false`
    /// when `holder` did not hold it or gave it up already.
    fn release(&mut self, name: &str, holder: &str) -> Result<bool, StoreError>;

    /// The lease `name` as stored (expired or not), if it was ever claimed.
    fn lease(&mut self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// Applies one batch in its own transaction. A conflict of an op is returned as
    /// [`StoreError::Conflict`] (after the rest of an independent batch was committed; see
    /// [`BatchOutcome::into_result`]).
    fn apply(&mut self, batch: Batch) -> Result<BatchOutcome, StoreError> {
        let mut outcomes = self.commit(core::slice::from_ref(&batch))?;
        let outcome = outcomes.pop().ok_or(StoreError::Backend(
            "commit returned no outcome for the batch".into(),
        ))?;
        outcome.into_result()
    }

    /// Walks the whole audit trail, page by page, and checks every link: sequence numbers are
    /// contiguous from 1, each entry names its predecessor's hash, each hash is the SHA-256 of
    /// the predecessor's hash and the entry's fixed binary encoding, and the last entry is the
    /// recorded head. Returns the verified head, or [`StoreError::AuditChainBroken`] naming the
    /// first entry that does not check.
    ///
    /// Entries appended while the walk runs are not looked at: the walk stops at the head it
    /// read first, so verifying a live trail is fine.
    fn verify_audit(&mut self) -> Result<AuditHead, StoreError> {
        let head = self.audit_head()?;
        let mut verifier = audit::ChainVerifier::new();
        let mut next = 1u64;
        while next <= head.seq {
            let page = self.audit_range(next, 1_000)?;
            let Some(last) = page.last() else { break };
            next = last
                .seq
                .checked_add(1)
                .ok_or(StoreError::AuditChainBroken { seq: last.seq })?;
            for record in page.iter().take_while(|r| r.seq <= head.seq) {
                verifier.check(record)?;
            }
        }
        verifier.finish(&head)
    }

    /// Writes the audit records with `from_seq <= seq <= to_seq` to `out` in their export
    /// format ([`AuditRecord::export`]) and returns how many were written.
    fn export_audit(
        &mut self,
        from_seq: u64,
        to_seq: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, StoreError> {
        let mut written = 0u64;
        let mut next = from_seq;
        while next <= to_seq {
            let page = self.audit_range(next, 1_000)?;
            let Some(last_seq) = page.last().map(|r| r.seq) else {
                break;
            };
            for record in page.iter().filter(|r| r.seq <= to_seq) {
                record
                    .export(out)
                    .map_err(|e| StoreError::Backend(format!("audit export: {e}")))?;
                written = written.saturating_add(1);
            }
            match last_seq.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(written)
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn commit(&mut self, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError> {
        (**self).commit(batches)
    }
    fn tenant(&mut self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        (**self).tenant(id)
    }
    fn tenants(&mut self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        (**self).tenants(after, limit)
    }
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        (**self).device(id)
    }
    fn devices(
        &mut self,
        tenant: &TenantId,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        (**self).devices(tenant, after, limit)
    }
    fn challenge(&mut self, device: &DeviceId) -> Result<Option<Challenge>, StoreError> {
        (**self).challenge(device)
    }
    fn shadow(&mut self, device: &DeviceId, name: &str) -> Result<Option<Shadow>, StoreError> {
        (**self).shadow(device, name)
    }
    fn shadows(
        &mut self,
        device: &DeviceId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Shadow>, StoreError> {
        (**self).shadows(device, after, limit)
    }
    fn rollout(&mut self, id: u64) -> Result<Option<Rollout>, StoreError> {
        (**self).rollout(id)
    }
    fn rollouts(&mut self, after: Option<u64>, limit: u32) -> Result<Vec<Rollout>, StoreError> {
        (**self).rollouts(after, limit)
    }
    fn ota_progress(
        &mut self,
        rollout: u64,
        after: Option<&DeviceId>,
        limit: u32,
    ) -> Result<Vec<OtaProgress>, StoreError> {
        (**self).ota_progress(rollout, after, limit)
    }
    fn audit_head(&mut self) -> Result<AuditHead, StoreError> {
        (**self).audit_head()
    }
    fn audit_range(&mut self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        (**self).audit_range(from_seq, limit)
    }
    fn revision(&mut self, key: &str) -> Result<u64, StoreError> {
        (**self).revision(key)
    }
    fn claim(
        &mut self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, StoreError> {
        (**self).claim(name, holder, now_ms, ttl_ms)
    }
    fn release(&mut self, name: &str, holder: &str) -> Result<bool, StoreError> {
        (**self).release(name, holder)
    }
    fn lease(&mut self, name: &str) -> Result<Option<Lease>, StoreError> {
        (**self).lease(name)
    }
}

/// The expiry of a lease claimed at `now_ms` for `ttl_ms`, checked against the stores'
/// signed integers.
pub(crate) fn lease_expiry(now_ms: u64, ttl_ms: u64) -> Result<(i64, i64), StoreError> {
    let expires = now_ms
        .checked_add(ttl_ms)
        .ok_or(StoreError::InvalidInput("lease expiry overflows"))?;
    Ok((
        to_i64(now_ms, "now_ms exceeds i64::MAX")?,
        to_i64(expires, "lease expiry exceeds i64::MAX")?,
    ))
}

/// Converts an unsigned value to the signed 64-bit integer both databases store.
pub(crate) fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::InvalidInput(what))
}

/// Converts a stored signed integer back; a negative or out-of-range value means the row was
/// not written by this crate.
pub(crate) fn from_i64<T: TryFrom<i64>>(value: i64, what: &'static str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {value}")))
}

/// The page size actually used for a requested `limit`.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.min(MAX_PAGE))
}
