//! The fleet's audit trail: reading it, and the helpers every audited operation records
//! its decision through (one per kind of actor: an operator, a device, the fleet itself).

use iot_core::{DeviceId, TenantId};

use super::Fleet;
use super::rollouts::decision;
use crate::access::{Principal, Scope};
use crate::audit::{Actor, AuditAction, AuditEntry, AuditLog};
use crate::proof::ProofVerifier;
use crate::rollout::Progress;

impl<V: ProofVerifier> Fleet<V> {
    /// The audit log (for the backend operator; tenants use [`Fleet::audit_trail`]).
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The audit entries the caller may read, oldest first.
    pub fn audit_trail<'a>(
        &'a self,
        p: &'a Principal,
    ) -> impl Iterator<Item = &'a AuditEntry> + 'a {
        self.audit.visible_to(p)
    }

    /// Audits what operator `p` did in `scope` (to `device`, if the action concerns one).
    pub(super) fn audit_operator(
        &mut self,
        at_ms: u64,
        p: &Principal,
        scope: Scope,
        device: Option<DeviceId>,
        action: AuditAction,
    ) {
        let actor = Actor::Principal(p.actor.clone());
        self.audit
            .append(at_ms, actor, p.tenant, scope, device, action);
    }

    /// Audits what device `id` of `tenant`, filed under `scope`, did or had done to it.
    pub(super) fn audit_device(
        &mut self,
        at_ms: u64,
        id: DeviceId,
        tenant: TenantId,
        scope: Scope,
        action: AuditAction,
    ) {
        self.audit
            .append(at_ms, Actor::Device(id), tenant, scope, Some(id), action);
    }

    /// Audits a decision the fleet took itself (a time-out, an offline mark, a rollout
    /// stage decision).
    pub(super) fn audit_system(
        &mut self,
        at_ms: u64,
        tenant: TenantId,
        scope: Scope,
        device: Option<DeviceId>,
        action: AuditAction,
    ) {
        self.audit
            .append(at_ms, Actor::System, tenant, scope, device, action);
    }

    /// Audits the rollout-level decision `progress` made in rollout `rollout`, if it made
    /// one.
    pub(super) fn audit_decision(
        &mut self,
        at_ms: u64,
        tenant: TenantId,
        scope: Scope,
        rollout: u32,
        progress: Progress,
    ) {
        if let Some(action) = decision(rollout, progress) {
            self.audit_system(at_ms, tenant, scope, None, action);
        }
    }
}
