//! The audit trail: an append-only, hash-chained record of every state-changing operation.
//!
//! Each [`AuditEntry`] names who acted ([`Actor`]), for which tenant and scope, on which
//! device (if any), what was done ([`AuditAction`]) and when. Entries are numbered from 0
//! without gaps and each carries `SHA-256(previous digest || entry)`, so
//! [`AuditLog::verify_chain`] detects an entry that was altered, removed or reordered in a
//! copy of the log (for example one exported to storage). The log has no method that
//! changes or removes an entry; decommissioning a device keeps its entries.
//!
//! The digest is taken over a fixed binary encoding (never `Debug` text, which may change
//! between compiler or crate versions): `seq` and `at_ms` as 8 big-endian bytes each, then
//! canonical CBOR of the actor (`0` and the principal's name, `1` and the device id, or `2`),
//! the tenant id, the scope, the device id or `null`, and the action: its
//! [`action_code`] followed by its fields in declaration order (states and events by their
//! wire codes, texts as CBOR text, counts as unsigned integers).

use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{DeviceId, TenantId};
use iot_lifecycle::{Event, State, TransitionError};
use sha2::{Digest, Sha256};

use crate::access::{Principal, Scope};
use crate::metering::Usage;
use crate::registry::RegistrationError;

/// Who performed an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Actor {
    /// A person or service acting through the fleet API (the principal's `actor` name).
    Principal(String),
    /// A device acting for itself (registration, reports).
    Device(DeviceId),
    /// The backend on its own (heartbeat timeouts, automatic rollout decisions).
    System,
}

/// What was done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum AuditAction {
    /// Manufacturing records were imported.
    ManufacturingImported {
        /// How many records.
        count: u32,
    },
    /// A zero-touch assignment rule was added.
    AssignmentRuleAdded,
    /// A device registered for the first time and was assigned to `scope` of the entry.
    Registered,
    /// A registered device registered again (a fresh nonce); nothing else changed.
    ReRegistered,
    /// A registration of a known identity was refused.
    RegistrationRejected(RegistrationError),
    /// A lifecycle transition was applied.
    Transition {
        /// Previous state.
        from: State,
        /// The event.
        event: Event,
        /// New state.
        to: State,
    },
    /// A device reported a transition the lifecycle does not allow; it was not applied.
    IllegalTransitionFlagged {
        /// The rejected (state, event) pair, as the backend sees it.
        #[cfg_attr(
            feature = "serde",
            serde(with = "crate::registry::transition_error_serde")
        )]
        error: TransitionError,
        /// The state the device claimed to be in afterwards.
        claimed: State,
    },
    /// A device's report started from another state than the one the backend held: reports
    /// between the two were lost (the following `Transition` entry is the report itself).
    TransitionsMissed {
        /// The state the backend held.
        held: State,
        /// The state the report started from.
        reported_from: State,
    },
    /// A heartbeat timeout marked the device offline.
    MarkedOffline,
    /// An offline device was heard from again.
    BackOnline,
    /// The device was moved to another scope (the entry's scope is the new one).
    Moved {
        /// The scope it left.
        from: Scope,
    },
    /// The device's shadow changed: by an operator (actor `Principal`, normally its desired
    /// half) or by the device's own report (actor `Device`). Updates that change nothing
    /// (duplicates, stale writes) are not recorded.
    ShadowUpdated {
        /// The document version after the change.
        version: u64,
    },
    /// A staged rollout started.
    RolloutStarted {
        /// Tenant-local rollout id.
        rollout: u32,
        /// The firmware version being rolled out.
        version: String,
    },
    /// A device reported the outcome of an update.
    UpdateReported {
        /// Tenant-local rollout id.
        rollout: u32,
        /// Whether the update succeeded.
        success: bool,
    },
    /// A device did not report within the rollout's report deadline and now counts as
    /// failed (told to roll back).
    UpdateTimedOut {
        /// Tenant-local rollout id.
        rollout: u32,
    },
    /// An operator paused a rollout.
    RolloutPaused {
        /// Tenant-local rollout id.
        rollout: u32,
    },
    /// An operator resumed a paused rollout.
    RolloutResumed {
        /// Tenant-local rollout id.
        rollout: u32,
    },
    /// An operator aborted a rollout: installed devices roll back, pending ones cancel.
    RolloutAborted {
        /// Tenant-local rollout id.
        rollout: u32,
        /// The stage it was in.
        stage: usize,
    },
    /// Usage was metered for the device (one entry per [`crate::Fleet::record_usage`]
    /// call, which carries an aggregate: the ingest pipeline batches counts per device and
    /// interval).
    UsageRecorded {
        /// The messages and bytes added.
        usage: Usage,
    },
    /// A rollout moved to its next stage.
    RolloutAdvanced {
        /// Tenant-local rollout id.
        rollout: u32,
        /// Index of the stage entered.
        stage: usize,
    },
    /// A rollout halted because a stage's failure rate exceeded the threshold.
    RolloutHalted {
        /// Tenant-local rollout id.
        rollout: u32,
        /// Index of the failing stage.
        stage: usize,
    },
    /// A rollout reached every target.
    RolloutCompleted {
        /// Tenant-local rollout id.
        rollout: u32,
    },
    /// The device was decommissioned: credentials revoked, monitoring and metering stopped.
    Decommissioned {
        /// The state it was in.
        previous: State,
        /// Whether the lifecycle had no edge to `Decommissioned` from `previous`, so the
        /// operator's decision overrode it.
        forced: bool,
    },
}

/// One audit record. With the `serde` feature it can be exported and read back; the copy
/// still passes [`AuditLog::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AuditEntry {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When, in backend milliseconds.
    pub at_ms: u64,
    /// Who acted.
    pub actor: Actor,
    /// The tenant whose data changed.
    pub tenant: TenantId,
    /// Where in the tenant (the device's scope, or the scope an operation named).
    pub scope: Scope,
    /// The device concerned, if any.
    pub device: Option<DeviceId>,
    /// What was done.
    pub action: AuditAction,
    /// `SHA-256(previous entry's digest || this entry)`; all zero before the first entry.
    pub digest: [u8; 32],
}

/// A SHA-256 as the sink of a CBOR encoder.
struct HashSink<'a>(&'a mut Sha256);

impl minicbor::encode::Write for HashSink<'_> {
    type Error = core::convert::Infallible;

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.0.update(buf);
        Ok(())
    }
}

fn chain_digest(previous: &[u8; 32], entry: &AuditEntry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(entry.seq.to_be_bytes());
    hasher.update(entry.at_ms.to_be_bytes());
    let mut e = minicbor::Encoder::new(HashSink(&mut hasher));
    // Writing into a hash cannot fail.
    let _ = encode_fields(&mut e, entry);
    hasher.finalize().into()
}

/// The fixed binary encoding of an entry's fields after `seq` and `at_ms` (module docs).
fn encode_fields<W: minicbor::encode::Write>(
    e: &mut minicbor::Encoder<W>,
    entry: &AuditEntry,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    match &entry.actor {
        Actor::Principal(name) => e.u8(0)?.str(name)?,
        Actor::Device(id) => e.u8(1)?.str(id.as_str())?,
        Actor::System => e.u8(2)?,
    };
    e.str(entry.tenant.as_str())?.str(entry.scope.as_str())?;
    match &entry.device {
        Some(id) => e.str(id.as_str())?,
        None => e.null()?,
    };
    let action = &entry.action;
    e.u16(action_code(action))?;
    match action {
        AuditAction::ManufacturingImported { count } => {
            e.u32(*count)?;
        }
        AuditAction::RegistrationRejected(error) => {
            e.u8(registration_error_code(*error))?;
        }
        AuditAction::Transition { from, event, to } => {
            e.encode(from)?.encode(event)?.encode(to)?;
        }
        AuditAction::IllegalTransitionFlagged { error, claimed } => {
            e.encode(error.state)?
                .encode(error.event)?
                .encode(claimed)?;
        }
        AuditAction::TransitionsMissed {
            held,
            reported_from,
        } => {
            e.encode(held)?.encode(reported_from)?;
        }
        AuditAction::Moved { from } => {
            e.str(from.as_str())?;
        }
        AuditAction::ShadowUpdated { version } => {
            e.u64(*version)?;
        }
        AuditAction::RolloutStarted { rollout, version } => {
            e.u32(*rollout)?.str(version)?;
        }
        AuditAction::UpdateReported { rollout, success } => {
            e.u32(*rollout)?.bool(*success)?;
        }
        AuditAction::UpdateTimedOut { rollout }
        | AuditAction::RolloutPaused { rollout }
        | AuditAction::RolloutResumed { rollout }
        | AuditAction::RolloutCompleted { rollout } => {
            e.u32(*rollout)?;
        }
        AuditAction::RolloutAborted { rollout, stage }
        | AuditAction::RolloutAdvanced { rollout, stage }
        | AuditAction::RolloutHalted { rollout, stage } => {
            e.u32(*rollout)?
                .u64(u64::try_from(*stage).unwrap_or(u64::MAX))?;
        }
        AuditAction::UsageRecorded { usage } => {
            e.u64(usage.messages)?.u64(usage.stored_bytes)?;
        }
        AuditAction::Decommissioned { previous, forced } => {
            e.encode(previous)?.bool(*forced)?;
        }
        AuditAction::AssignmentRuleAdded
        | AuditAction::Registered
        | AuditAction::ReRegistered
        | AuditAction::MarkedOffline
        | AuditAction::BackOnline => {}
    }
    Ok(())
}

/// A registration refusal's code in the audit encoding (stable: codes are never reused).
const fn registration_error_code(error: RegistrationError) -> u8 {
    match error {
        RegistrationError::UnknownDevice => 0,
        RegistrationError::Revoked => 1,
        RegistrationError::InvalidProof => 2,
        RegistrationError::StaleNonce => 3,
        RegistrationError::ChallengeExpired => 4,
        RegistrationError::ChallengePending => 5,
    }
}

/// The store's action code of an audit action (stable: codes are never reused).
#[must_use]
pub const fn action_code(action: &AuditAction) -> u16 {
    match action {
        AuditAction::ManufacturingImported { .. } => 1,
        AuditAction::AssignmentRuleAdded => 2,
        AuditAction::Registered => 3,
        AuditAction::ReRegistered => 4,
        AuditAction::RegistrationRejected(_) => 5,
        AuditAction::Transition { .. } => 6,
        AuditAction::IllegalTransitionFlagged { .. } => 7,
        AuditAction::TransitionsMissed { .. } => 8,
        AuditAction::MarkedOffline => 9,
        AuditAction::BackOnline => 10,
        AuditAction::Moved { .. } => 11,
        AuditAction::ShadowUpdated { .. } => 12,
        AuditAction::RolloutStarted { .. } => 13,
        AuditAction::UpdateReported { .. } => 14,
        AuditAction::UpdateTimedOut { .. } => 15,
        AuditAction::RolloutPaused { .. } => 16,
        AuditAction::RolloutResumed { .. } => 17,
        AuditAction::RolloutAborted { .. } => 18,
        AuditAction::UsageRecorded { .. } => 19,
        AuditAction::RolloutAdvanced { .. } => 20,
        AuditAction::RolloutHalted { .. } => 21,
        AuditAction::RolloutCompleted { .. } => 22,
        AuditAction::Decommissioned { .. } => 23,
    }
}

/// The append-only audit log.
///
/// By default it keeps every entry. In *journal* mode ([`AuditLog::set_journal`]), used when
/// a durable store keeps the trail (the store chains entries from a fixed binary encoding),
/// it holds only the entries appended since the last [`AuditLog::drain`], so its memory does
/// not grow with uptime; sequence numbers still run on without gaps.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    entries: Vec<AuditEntry>,
    /// Entries handed out by `drain` (journal mode).
    drained: u64,
    /// The digest of the last drained entry.
    drained_digest: [u8; 32],
    journal: bool,
}

/// Where the chain of an audit log breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {seq}")]
pub struct ChainError {
    /// The first entry whose number or digest does not follow from its predecessor.
    pub seq: u64,
}

impl iot_core::Error for ChainError {
    fn kind(&self) -> iot_core::ErrorKind {
        iot_core::ErrorKind::Conflict
    }
}

impl AuditLog {
    /// An empty log.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            drained: 0,
            drained_digest: [0; 32],
            journal: false,
        }
    }

    /// Switches journal mode on or off (see the type's docs). In journal mode entries carry
    /// an all-zero digest: the store that receives them computes the chain.
    pub fn set_journal(&mut self, journal: bool) {
        self.journal = journal;
    }

    /// Whether the log is in journal mode.
    pub fn is_journal(&self) -> bool {
        self.journal
    }

    /// Removes and returns the entries appended since the last drain, oldest first.
    pub fn drain(&mut self) -> Vec<AuditEntry> {
        if let Some(last) = self.entries.last() {
            self.drained_digest = last.digest;
        }
        let n = u64::try_from(self.entries.len()).unwrap_or(u64::MAX);
        self.drained = self.drained.saturating_add(n);
        core::mem::take(&mut self.entries)
    }

    /// Appends an entry and returns its sequence number.
    pub(crate) fn append(
        &mut self,
        at_ms: u64,
        actor: Actor,
        tenant: TenantId,
        scope: Scope,
        device: Option<DeviceId>,
        action: AuditAction,
    ) -> u64 {
        let seq = u64::try_from(self.entries.len())
            .unwrap_or(u64::MAX)
            .saturating_add(self.drained);
        let previous = self
            .entries
            .last()
            .map_or(self.drained_digest, |e| e.digest);
        let mut entry = AuditEntry {
            seq,
            at_ms,
            actor,
            tenant,
            scope,
            device,
            action,
            digest: [0; 32],
        };
        if !self.journal {
            entry.digest = chain_digest(&previous, &entry);
        }
        self.entries.push(entry);
        seq
    }

    /// How many entries the log holds (of every tenant).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries `principal` may read: its tenant's, within its scope, oldest first.
    pub fn visible_to<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> impl Iterator<Item = &'a AuditEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| principal.can_see(&e.tenant, &e.scope))
    }

    /// Every entry, for the operator of the backend itself (not tenant-facing).
    pub fn all(&self) -> &[AuditEntry] {
        &self.entries
    }

    /// Checks numbering and the digest chain of `entries` (for example a stored copy).
    pub fn verify_chain(entries: &[AuditEntry]) -> Result<(), ChainError> {
        let mut previous = [0u8; 32];
        for (i, entry) in entries.iter().enumerate() {
            let expected_seq = u64::try_from(i).unwrap_or(u64::MAX);
            if entry.seq != expected_seq || chain_digest(&previous, entry) != entry.digest {
                return Err(ChainError { seq: expected_seq });
            }
            previous = entry.digest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    /// CBOR text of fewer than 24 bytes: its head, then the bytes.
    fn text(s: &str) -> Vec<u8> {
        let mut out = alloc::vec![0x60 + u8::try_from(s.len()).unwrap()];
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn the_digest_is_taken_over_the_documented_binary_encoding() {
        let scope: Scope = "plant/east".parse().unwrap();
        let entry = AuditEntry {
            seq: 7,
            at_ms: 1_000,
            actor: Actor::Principal("ops".into()),
            tenant: TenantId::new("acme").unwrap(),
            scope: scope.clone(),
            device: Some(DeviceId::new("dev-1").unwrap()),
            action: AuditAction::RolloutStarted {
                rollout: 3,
                version: "2.0.0".into(),
            },
            digest: [0; 32],
        };
        let previous = [0xab; 32];
        // By hand, from the module docs: previous digest, seq and at_ms big-endian, then
        // CBOR: actor 0 and name, tenant, scope, device, action code 13, rollout 3, version.
        let mut bytes = previous.to_vec();
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&1_000u64.to_be_bytes());
        bytes.push(0x00);
        bytes.extend(text("ops"));
        bytes.extend(text("acme"));
        bytes.extend(text(scope.as_str()));
        bytes.extend(text("dev-1"));
        bytes.extend([0x0d, 0x03]);
        bytes.extend(text("2.0.0"));
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(chain_digest(&previous, &entry), expected);
        // Every field takes part: another device, or none, changes the digest.
        let mut other = entry.clone();
        other.device = None;
        assert_ne!(chain_digest(&previous, &other), expected);
        let mut other = entry;
        other.action = AuditAction::RolloutStarted {
            rollout: 3,
            version: "2.0.1".into(),
        };
        assert_ne!(chain_digest(&previous, &other), expected);
    }

    fn log_with_three() -> AuditLog {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        let mut log = AuditLog::new();
        log.append(
            1,
            Actor::Principal("ann".into()),
            acme,
            "eu".parse().unwrap(),
            None,
            AuditAction::AssignmentRuleAdded,
        );
        log.append(
            2,
            Actor::Device(DeviceId::new("d1").unwrap()),
            acme,
            "us/b1".parse().unwrap(),
            Some(DeviceId::new("d1").unwrap()),
            AuditAction::Registered,
        );
        log.append(
            3,
            Actor::System,
            other,
            Scope::root(),
            None,
            AuditAction::ManufacturingImported { count: 4 },
        );
        log
    }

    #[test]
    fn chain_verifies_and_detects_tampering() {
        let log = log_with_three();
        assert_eq!(log.len(), 3);
        assert_eq!(AuditLog::verify_chain(log.all()), Ok(()));

        let mut altered = log.all().to_vec();
        altered[1].at_ms = 99;
        assert_eq!(AuditLog::verify_chain(&altered), Err(ChainError { seq: 1 }));

        let mut removed = log.all().to_vec();
        removed.remove(1);
        assert_eq!(AuditLog::verify_chain(&removed), Err(ChainError { seq: 1 }));

        let mut swapped = log.all().to_vec();
        swapped.swap(0, 2);
        assert!(AuditLog::verify_chain(&swapped).is_err());
    }

    #[test]
    fn visibility_follows_tenant_and_scope() {
        let log = log_with_three();
        let acme = TenantId::new("acme").unwrap();
        let eu = Principal::new("e", acme, "eu".parse().unwrap(), Role::Viewer);
        let hq = Principal::new("h", acme, Scope::root(), Role::Viewer);
        assert_eq!(log.visible_to(&eu).count(), 1);
        assert_eq!(log.visible_to(&hq).count(), 2);
        assert!(log.visible_to(&hq).all(|e| e.tenant == acme));
    }
}
