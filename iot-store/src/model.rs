//! Records, ops and outcomes, in plain terms (ids, integers, byte blobs) so a backend maps its
//! own types onto them.

use iot_core::id::{DeviceId, TenantId};

use crate::StoreError;
use crate::audit::{AuditEvent, MAX_AUDIT_PAYLOAD};

/// The largest blob (document, secret, plan, detail, tenant config) a record may carry.
pub const MAX_BLOB_LEN: usize = 1024 * 1024;

/// The longest shadow name in bytes.
pub const MAX_SHADOW_NAME_LEN: usize = 64;

/// A tenant and its configuration (quotas, policies) as an opaque blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// The backend's encoding of the tenant's configuration.
    pub config: Vec<u8>,
}

/// A device, its lifecycle state and its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device's id.
    pub id: DeviceId,
    /// The tenant that owns it.
    pub tenant: TenantId,
    /// The lifecycle state's code (`iot_lifecycle::State::code`).
    pub state: u8,
    /// The firmware version it last reported.
    pub firmware_version: u32,
    /// Credential or secret material, as the backend encodes it.
    pub credential: Vec<u8>,
    /// Whether the credential is revoked.
    pub revoked: bool,
    /// When the record last changed, in milliseconds of the backend's clock.
    pub updated_at_ms: u64,
}

/// An outstanding registration challenge: at most one per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The device the challenge was issued to.
    pub device: DeviceId,
    /// The session (connection) that asked for it; only that session may answer.
    pub session: u64,
    /// The nonce the device must prove knowledge of the secret over.
    pub nonce: Vec<u8>,
    /// When it stops being valid, in milliseconds of the backend's clock.
    pub expires_at_ms: u64,
}

/// A named shadow of a device: a version and the canonical document bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow {
    /// The device.
    pub device: DeviceId,
    /// The shadow's name (empty is allowed: the classic unnamed shadow).
    pub name: String,
    /// The document version; it only grows.
    pub version: u64,
    /// The canonical encoding of the document.
    pub document: Vec<u8>,
}

/// A staged firmware rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// The rollout's id, chosen by the backend.
    pub id: u64,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// The backend's status code (running, paused, halted, complete, ...).
    pub status: u8,
    /// The backend's encoding of the plan (image, stages, thresholds, current stage).
    pub plan: Vec<u8>,
}

/// One device's progress in one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaProgress {
    /// The rollout.
    pub rollout: u64,
    /// The device.
    pub device: DeviceId,
    /// The backend's status code (offered, downloading, succeeded, failed, timed out, ...).
    pub status: u8,
    /// The backend's encoding of anything else (stage, attempts, last error).
    pub detail: Vec<u8>,
    /// When the row last changed, in milliseconds of the backend's clock.
    pub updated_at_ms: u64,
}

/// What a shadow write expects to find: the compare of compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowExpect {
    /// The shadow must not exist yet.
    Absent,
    /// The shadow must be at exactly this version.
    Version(u64),
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Inserts or replaces a tenant.
    PutTenant(Tenant),
    /// Inserts or replaces a device record.
    PutDevice(DeviceRecord),
    /// Removes a device record, its challenge, its shadows and its OTA progress rows
    /// (decommissioning wipes data; the audit trail keeps the history). No-op when absent.
    DeleteDevice(DeviceId),
    /// Inserts or replaces the device's one outstanding challenge.
    PutChallenge(Challenge),
    /// Removes the device's challenge (it is single-use). No-op when absent.
    DeleteChallenge(DeviceId),
    /// Removes every challenge that expires at or before `now_ms`.
    PurgeChallenges {
        /// The backend's current time in milliseconds.
        now_ms: u64,
    },
    /// Writes a shadow if it is as `expected`; otherwise the op reports
    /// [`OpOutcome::Conflict`]. `version` must be greater than the expected version.
    PutShadow {
        /// The shadow's key and new content.
        shadow: Shadow,
        /// What the writer read before computing the new document.
        expected: ShadowExpect,
    },
    /// Removes a shadow if it is at `expected_version`; otherwise reports a conflict.
    DeleteShadow {
        /// The device.
        device: DeviceId,
        /// The shadow's name.
        name: String,
        /// The version the writer read.
        expected_version: u64,
    },
    /// Inserts or replaces a rollout.
    PutRollout(Rollout),
    /// Inserts or replaces a device's progress in a rollout.
    PutOtaProgress(OtaProgress),
    /// Appends an entry to the audit trail; the store assigns its sequence number and hash.
    Audit(AuditEvent),
    /// Compares the revision counter `key` with `expected` (an absent counter is at 0) and,
    /// with `bump`, moves it to `expected + 1`; otherwise reports [`OpOutcome::Conflict`]
    /// naming the stored revision. Backend nodes that cache records put one beside every
    /// write (and every read-only answer) of a cached record, so a node whose copy is stale
    /// finds out in the same transaction instead of overwriting another node's change.
    Revise {
        /// The counter's name (for example `device/<id>`), at most 128 bytes.
        key: String,
        /// The revision the writer's copy was read at.
        expected: u64,
        /// Whether the batch changes the record (a check only when `false`).
        bump: bool,
    },
    /// Checks that `holder` still holds the lease `name` with fencing token `fence`;
    /// otherwise reports [`OpOutcome::Conflict`] naming the stored token (`None`: no such
    /// lease). In an atomic batch beside the effects of once-only work, it makes those effects
    /// happen exactly once even when a holder stalls past its lease and another node took
    /// the work over: the stalled holder's batch is rolled back.
    HoldsLease {
        /// The lease's name, at most 128 bytes.
        name: String,
        /// The holder's name, at most 128 bytes.
        holder: String,
        /// The token [`crate::Store::claim`] returned.
        fence: u64,
    },
}

/// The longest revision key, lease name or lease holder in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// A lease on once-only work ([`crate::Store::claim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The work's name.
    pub name: String,
    /// Who holds it.
    pub holder: String,
    /// Until when, in milliseconds of the claimers' clock.
    pub expires_at_ms: u64,
    /// The fencing token: it grows every time the lease changes hands, so effects committed
    /// with [`Op::HoldsLease`] carry the holder's token and a former holder's are refused.
    pub fence: u64,
}

/// Checks a revision key, lease name or holder against [`MAX_KEY_LEN`].
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        Err(StoreError::InvalidInput(
            "revision key, lease name or holder must be 1 to 128 bytes",
        ))
    } else {
        Ok(())
    }
}

impl Op {
    /// Checks the documented limits, so a batch is refused before anything is written.
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let blob = |len: usize, what: &'static str| {
            if len > MAX_BLOB_LEN {
                Err(StoreError::InvalidInput(what))
            } else {
                Ok(())
            }
        };
        let name = |name: &str| {
            if name.len() > MAX_SHADOW_NAME_LEN {
                Err(StoreError::InvalidInput("shadow name longer than 64 bytes"))
            } else if name.chars().any(char::is_control) {
                Err(StoreError::InvalidInput(
                    "shadow name contains a control character",
                ))
            } else {
                Ok(())
            }
        };
        let fits_i64 = |v: u64, what: &'static str| crate::to_i64(v, what).map(|_| ());
        match self {
            Self::PutTenant(t) => blob(t.config.len(), "tenant config larger than 1 MiB"),
            Self::PutDevice(d) => {
                fits_i64(d.updated_at_ms, "updated_at_ms exceeds i64::MAX")?;
                blob(d.credential.len(), "credential larger than 1 MiB")
            }
            Self::DeleteDevice(_) | Self::DeleteChallenge(_) => Ok(()),
            Self::PutChallenge(c) => {
                fits_i64(c.session, "session exceeds i64::MAX")?;
                fits_i64(c.expires_at_ms, "expires_at_ms exceeds i64::MAX")?;
                blob(c.nonce.len(), "nonce larger than 1 MiB")
            }
            Self::PurgeChallenges { now_ms } => fits_i64(*now_ms, "now_ms exceeds i64::MAX"),
            Self::PutShadow { shadow, expected } => {
                name(&shadow.name)?;
                fits_i64(shadow.version, "shadow version exceeds i64::MAX")?;
                if let ShadowExpect::Version(v) = expected
                    && shadow.version <= *v
                {
                    return Err(StoreError::InvalidInput(
                        "new shadow version must be greater than the expected one",
                    ));
                }
                blob(shadow.document.len(), "shadow document larger than 1 MiB")
            }
            Self::DeleteShadow {
                name: n,
                expected_version,
                ..
            } => {
                name(n)?;
                fits_i64(*expected_version, "shadow version exceeds i64::MAX")
            }
            Self::PutRollout(r) => {
                fits_i64(r.id, "rollout id exceeds i64::MAX")?;
                blob(r.plan.len(), "rollout plan larger than 1 MiB")
            }
            Self::PutOtaProgress(p) => {
                fits_i64(p.rollout, "rollout id exceeds i64::MAX")?;
                fits_i64(p.updated_at_ms, "updated_at_ms exceeds i64::MAX")?;
                blob(p.detail.len(), "OTA detail larger than 1 MiB")
            }
            Self::Revise { key, expected, .. } => {
                validate_key(key)?;
                fits_i64(expected.saturating_add(1), "revision exceeds i64::MAX")
            }
            Self::HoldsLease {
                name,
                holder,
                fence,
            } => {
                validate_key(name)?;
                validate_key(holder)?;
                fits_i64(*fence, "fence exceeds i64::MAX")
            }
            Self::Audit(e) => {
                fits_i64(e.at_ms, "audit time exceeds i64::MAX")?;
                if e.payload.len() > MAX_AUDIT_PAYLOAD {
                    Err(StoreError::InvalidInput("audit payload larger than 64 KiB"))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// How a batch treats a version conflict in one of its ops.
///
/// The default is [`BatchMode::Independent`]: the ops of one device message are usually
/// independent writes, and one stale shadow write must not take the others down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchMode {
    /// A conflicting op is skipped (reported as [`OpOutcome::Conflict`]); the batch's other
    /// ops are applied.
    #[default]
    Independent,
    /// All or nothing: at the first conflicting op the whole batch is rolled back (its earlier
    /// ops too, audit appends included), the later ops are not tried, and
    /// [`BatchOutcome::committed`] is `false`. Other batches of the same commit are unaffected.
    Atomic,
}

/// A list of ops applied together, and how conflicts affect it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// The ops, applied in order.
    pub ops: Vec<Op>,
    /// What a conflict does to the rest of the batch.
    pub mode: BatchMode,
}

impl Batch {
    /// A batch whose ops succeed or conflict one by one.
    #[must_use]
    pub fn independent(ops: Vec<Op>) -> Self {
        Self {
            ops,
            mode: BatchMode::Independent,
        }
    }

    /// A batch that is applied whole or not at all.
    #[must_use]
    pub fn atomic(ops: Vec<Op>) -> Self {
        Self {
            ops,
            mode: BatchMode::Atomic,
        }
    }
}

/// What happened to one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpOutcome {
    /// The op was applied (and is durable once the commit returned).
    Applied,
    /// The audit entry was appended with this sequence number and chain hash.
    Appended {
        /// The entry's sequence number (1 for the first entry).
        seq: u64,
        /// The entry's chain hash.
        hash: [u8; 32],
    },
    /// The shadow (or revision counter, or lease) was not as expected: nothing of this op
    /// was written.
    Conflict {
        /// The stored version, revision or fencing token (`None`: no such shadow or lease).
        current: Option<u64>,
    },
    /// The op was part of an atomic batch that was rolled back, or was not tried after the
    /// batch's conflict.
    RolledBack,
}

/// What happened to one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Whether the batch's applied ops were committed. `false` only for an atomic batch that
    /// met a conflict.
    pub committed: bool,
    /// One outcome per op, in order.
    pub ops: Vec<OpOutcome>,
}

impl BatchOutcome {
    /// The first conflicting op, as `(index, stored version)`.
    #[must_use]
    pub fn first_conflict(&self) -> Option<(usize, Option<u64>)> {
        self.ops.iter().enumerate().find_map(|(i, o)| match o {
            OpOutcome::Conflict { current } => Some((i, *current)),
            _ => None,
        })
    }

    /// `Ok(self)` when no op conflicted, otherwise [`StoreError::Conflict`] for the first one.
    pub fn into_result(self) -> Result<Self, StoreError> {
        match self.first_conflict() {
            Some((index, current)) => Err(StoreError::Conflict { index, current }),
            None => Ok(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(name: &str, version: u64) -> Shadow {
        Shadow {
            device: DeviceId::from_mac([1, 2, 3, 4, 5, 6]),
            name: name.into(),
            version,
            document: vec![1],
        }
    }

    #[test]
    fn validation_refuses_what_the_docs_forbid() {
        let long = "n".repeat(MAX_SHADOW_NAME_LEN + 1);
        assert!(matches!(
            Op::PutShadow {
                shadow: shadow(&long, 1),
                expected: ShadowExpect::Absent
            }
            .validate(),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            Op::PutShadow {
                shadow: shadow("a", 3),
                expected: ShadowExpect::Version(3)
            }
            .validate(),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            Op::PutShadow {
                shadow: shadow("a", u64::MAX),
                expected: ShadowExpect::Absent
            }
            .validate(),
            Err(StoreError::InvalidInput(_))
        ));
        assert!(
            Op::PutShadow {
                shadow: shadow("", 4),
                expected: ShadowExpect::Version(3)
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn into_result_names_the_first_conflict() {
        let outcome = BatchOutcome {
            committed: true,
            ops: vec![
                OpOutcome::Applied,
                OpOutcome::Conflict { current: Some(7) },
                OpOutcome::Conflict { current: None },
            ],
        };
        assert_eq!(
            outcome.into_result(),
            Err(StoreError::Conflict {
                index: 1,
                current: Some(7)
            })
        );
    }
}
