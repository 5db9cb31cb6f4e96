//! The [`Fleet`] facade: every tenant-facing read and write takes a [`Principal`] and is
//! checked against its tenant, scope and role before any data is touched (see
//! [`crate::access`] for what `NotFound` and `Forbidden` mean), and every state-changing
//! operation appends to the [audit trail](crate::audit): operator writes, registrations and
//! rejected ones, lifecycle reports (applied or flagged), shadow changes by operators and by
//! the device's own reports (when the document version changes), metered usage, offline and
//! back-online changes, rollout decisions (reports, time-outs, advance, halt, completion) and
//! operator control (pause, resume, abort), decommissioning.
//!
//! Two device-facing calls are deliberately *not* audited entry by entry, because they only
//! refresh measurements and leave every audited fact unchanged: a heartbeat (it updates
//! `last_seen_ms` and the battery history; the online/offline *transitions* it causes are
//! audited as `BackOnline` / `MarkedOffline`), and a registration challenge (it replaces the
//! identity's one outstanding, single-use, 60-second nonce; the registration that consumes
//! it, or its rejection, is audited). Auditing heartbeats would add an entry every few
//! seconds per device, and auditing challenges a second entry per registration, without
//! recording any decision.
//!
//! Device-facing methods ([`Fleet::register`], [`Fleet::heartbeat`],
//! [`Fleet::report_transition`], [`Fleet::record_usage`], [`Fleet::report_update`],
//! [`Fleet::device_shadow_update`]) take
//! the device's id: the device proved its identity when registering, and the transport
//! session (for example mutual TLS) is expected to bind later messages to that id.
//!
//! The facade's methods are grouped by concept, one private module each: provisioning and
//! registration, the tenant's device directory, lifecycle transitions, health monitoring,
//! metering, shadows, rollouts, decommissioning, the audit trail (with the helpers every
//! audited operation records through) and what a durable binding saves and restores.

use alloc::collections::BTreeMap;

use iot_core::{DeviceId, Error, ErrorKind, TenantId};
use iot_lifecycle::TransitionError;
use iot_shadow::ShadowError;
use iot_shadow::typed::FieldTable;

use crate::access::{AccessError, Principal, Role, Scope};
use crate::audit::AuditLog;
use crate::health::HealthPolicy;
use crate::metering::TenantMetering;
use crate::proof::{LifecycleHmac, ProofVerifier};
use crate::registry::{DeviceRecord, ImportError, RegistrationError, Registry, ReportError};
use crate::rollout::RolloutError;

mod decommissioning;
mod devices;
mod lifecycle;
mod metering;
mod monitoring;
mod persist;
mod provisioning;
mod rollouts;
mod shadows;
mod trail;

pub use decommissioning::Decommissioned;
pub use rollouts::{RolloutTimeouts, ScopedRollout};
use shadows::Shadows;
pub use shadows::{ClassPolicies, MAX_CLOCK_DRIFT_MS, ServerShadow};

/// Any error of a fleet operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Refused by access control.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A manufacturing import was refused.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A registration was refused.
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// A device report was refused (and flagged if it was an illegal transition).
    #[error(transparent)]
    Report(#[from] ReportError),
    /// An operator-requested transition is not allowed by the lifecycle.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A rollout could not be created or updated.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The shadow engine refused an update (nothing changed).
    #[error(transparent)]
    Shadow(#[from] ShadowError),
}

impl Error for FleetError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Access(e) => e.kind(),
            Self::Import(e) => e.kind(),
            Self::Registration(e) => e.kind(),
            Self::Report(e) => e.kind(),
            Self::Transition(e) => e.kind(),
            Self::Rollout(e) => e.kind(),
            Self::Shadow(e) => e.kind(),
        }
    }
}

/// The backend's fleet: registry, audit trail, health policy, rollouts and metering.
#[derive(Debug)]
pub struct Fleet<V: ProofVerifier = LifecycleHmac> {
    registry: Registry,
    audit: AuditLog,
    policy: HealthPolicy,
    verifier: V,
    rollouts: BTreeMap<(TenantId, u32), ScopedRollout>,
    next_rollout: BTreeMap<TenantId, u32>,
    retired: BTreeMap<(TenantId, Scope), TenantMetering>,
    /// Shadows by the registry's slot numbers (the registry's one index finds both).
    shadows: Shadows,
    /// Field-policy tables of device classes, by fingerprint.
    schemas: BTreeMap<u32, FieldTable>,
}

impl Default for Fleet<LifecycleHmac> {
    fn default() -> Self {
        Self::new(HealthPolicy::DEFAULT)
    }
}

impl Fleet<LifecycleHmac> {
    /// An empty fleet checking iot-lifecycle's HMAC-SHA256 registration proofs.
    pub const fn new(policy: HealthPolicy) -> Self {
        Self::with_verifier(policy, LifecycleHmac)
    }
}

impl<V: ProofVerifier> Fleet<V> {
    /// An empty fleet checking registration proofs with `verifier`.
    pub const fn with_verifier(policy: HealthPolicy, verifier: V) -> Self {
        Self {
            registry: Registry::new(),
            audit: AuditLog::new(),
            policy,
            verifier,
            rollouts: BTreeMap::new(),
            next_rollout: BTreeMap::new(),
            retired: BTreeMap::new(),
            shadows: Shadows::new(),
            schemas: BTreeMap::new(),
        }
    }

    /// The health policy.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Keys the device index with a secret 128-bit `key` and rebuilds it (see
    /// [`crate::index`] for why the index hash is keyed). With the `std` feature the key is
    /// drawn from the operating system when the first device is imported; a no_std gateway
    /// that serves untrusted tenants calls this once with bytes from its hardware RNG.
    pub fn set_index_key(&mut self, key: [u8; 16]) {
        self.registry.set_index_key(key);
    }

    /// How many devices are registered across all tenants.
    pub fn registered_count(&self) -> usize {
        self.registry.registered_count()
    }

    /// The device `id` of the caller's tenant, if `p` holds `needed` over its scope.
    fn visible_device(
        &self,
        p: &Principal,
        id: &DeviceId,
        needed: Role,
    ) -> Result<&DeviceRecord, AccessError> {
        // Only the caller's own tenant is searched; another tenant's device is `NotFound`.
        let record = self
            .registry
            .tenant_device(&p.tenant, id)
            .ok_or(AccessError::NotFound)?;
        p.check(&record.tenant, &record.scope, needed)?;
        Ok(record)
    }

    /// The devices of the caller's tenant in `scope`, if `p` may view `scope`.
    fn devices_in<'a>(
        &'a self,
        p: &Principal,
        scope: &'a Scope,
    ) -> Result<impl Iterator<Item = &'a DeviceRecord> + 'a, FleetError> {
        p.check_scope(scope, Role::Viewer)?;
        Ok(self
            .registry
            .tenant_devices(&p.tenant)
            .filter(move |r| scope.contains(&r.scope)))
    }
}
