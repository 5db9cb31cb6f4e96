//! Staged firmware rollouts across a scope: starting them, the instructions they give
//! devices, device reports and report deadlines, and operator control (pause, resume,
//! abort). Every decision is audited.

use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{DeviceId, TenantId};
use iot_lifecycle::State;

use super::{Fleet, FleetError};
use crate::access::{AccessError, Principal, Role, Scope};
use crate::audit::AuditAction;
use crate::proof::ProofVerifier;
use crate::registry::ReportError;
use crate::rollout::{Expiry, Instruction, Progress, Rollout, RolloutConfig, RolloutError};

/// A rollout and the scope it was started for.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ScopedRollout {
    /// The scope whose devices are targets.
    pub scope: Scope,
    /// The rollout.
    pub rollout: Rollout,
}

/// A rollout whose silent devices [`Fleet::tick_rollouts`] timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutTimeouts {
    /// The tenant.
    pub tenant: TenantId,
    /// Tenant-local rollout id.
    pub rollout: u32,
    /// The devices timed out and what that did to the rollout.
    pub expiry: Expiry,
}

/// The audit entry for a rollout-level decision, if any.
pub(super) fn decision(rollout: u32, progress: Progress) -> Option<AuditAction> {
    match progress {
        Progress::Unchanged => None,
        Progress::Advanced(stage) => Some(AuditAction::RolloutAdvanced { rollout, stage }),
        Progress::Halted(stage) => Some(AuditAction::RolloutHalted { rollout, stage }),
        Progress::Completed => Some(AuditAction::RolloutCompleted { rollout }),
    }
}

impl<V: ProofVerifier> Fleet<V> {
    /// Starts a staged rollout of `version` to the `Active` devices in `scope`. Needs
    /// `Operator`. Returns the tenant-local rollout id.
    pub fn start_rollout(
        &mut self,
        p: &Principal,
        scope: &Scope,
        version: &str,
        previous: Option<&str>,
        config: RolloutConfig,
        now_ms: u64,
    ) -> Result<u32, FleetError> {
        p.check_scope(scope, Role::Operator)?;
        let targets: Vec<DeviceId> = self
            .registry
            .tenant_devices(&p.tenant)
            .filter(|r| scope.contains(&r.scope) && r.state == State::Active)
            .map(|r| r.id)
            .collect();
        if targets.is_empty() {
            return Err(RolloutError::NoTargets.into());
        }
        let rollout = Rollout::new(version, previous, targets, config, now_ms)?;
        let next = self.next_rollout.entry(p.tenant).or_insert(0);
        let id = *next;
        *next = next.saturating_add(1);
        self.rollouts.insert(
            (p.tenant, id),
            ScopedRollout {
                scope: scope.clone(),
                rollout,
            },
        );
        self.audit_operator(
            now_ms,
            p,
            scope.clone(),
            None,
            AuditAction::RolloutStarted {
                rollout: id,
                version: String::from(version),
            },
        );
        Ok(id)
    }

    /// A rollout, if the caller may see its scope.
    pub fn rollout(&self, p: &Principal, rollout: u32) -> Result<&ScopedRollout, FleetError> {
        let scoped = self
            .rollouts
            .get(&(p.tenant, rollout))
            .ok_or(AccessError::NotFound)?;
        p.check(&p.tenant, &scoped.scope, Role::Viewer)?;
        Ok(scoped)
    }

    /// The ids of the caller's tenant's rollouts whose scope the caller may see, oldest
    /// first.
    pub fn rollout_ids<'a>(&'a self, p: &'a Principal) -> impl Iterator<Item = u32> + 'a {
        self.rollouts
            .range((p.tenant, 0)..=(p.tenant, u32::MAX))
            .filter(move |(_, s)| p.check(&p.tenant, &s.scope, Role::Viewer).is_ok())
            .map(|((_, id), _)| *id)
    }

    /// Every instruction some rollout of any tenant has for an admitted device (`Wait`s left
    /// out): `(device, tenant, rollout id, instruction)`. The backend dispatches OTA jobs
    /// from it.
    pub fn pending_instructions(&self) -> Vec<(DeviceId, TenantId, u32, Instruction)> {
        let mut out = Vec::new();
        for ((tenant, id), scoped) in &self.rollouts {
            for device in scoped.rollout.admitted() {
                let instruction = scoped.rollout.instruction(device);
                if instruction != Instruction::Wait {
                    out.push((*device, *tenant, *id, instruction));
                }
            }
        }
        out
    }

    /// What the device should do about the tenant's rollouts: `(rollout id, instruction)`
    /// for every rollout that asks something of it.
    pub fn instructions(&self, id: &DeviceId) -> Vec<(u32, Instruction)> {
        let Some(tenant) = self.registry.device(id).map(|r| r.tenant) else {
            return Vec::new();
        };
        self.rollouts
            .range((tenant, 0)..=(tenant, u32::MAX))
            .map(|((_, n), r)| (*n, r.rollout.instruction(id)))
            .filter(|(_, i)| *i != Instruction::Wait)
            .collect()
    }

    /// The device reports the result of installing the version of rollout `rollout`.
    /// Overdue devices of the rollout are timed out first (as by [`Fleet::tick_rollouts`]),
    /// so a report after the device's deadline is refused with
    /// [`RolloutError::Expired`]. A device that was installing when the rollout halted may
    /// still report: a failure is then told to roll back.
    pub fn report_update(
        &mut self,
        id: &DeviceId,
        rollout: u32,
        success: bool,
        now_ms: u64,
    ) -> Result<Progress, FleetError> {
        self.touch(id, now_ms)?;
        let record = self.registry.device(id).ok_or(ReportError::NotRegistered)?;
        let (tenant, scope) = (record.tenant, record.scope.clone());
        // The deadline is applied first, so a report after it is refused however rarely
        // `tick_rollouts` runs (the time-outs are audited before the refusal).
        let _ = self.expire_rollout(tenant, rollout, now_ms);
        let scoped = self
            .rollouts
            .get_mut(&(tenant, rollout))
            .ok_or(RolloutError::NotAdmitted)?;
        let progress = scoped.rollout.report(id, success, now_ms)?;
        let version = String::from(scoped.rollout.version());
        let rollout_scope = scoped.scope.clone();
        if success && let Some(record) = self.registry.device_mut(id) {
            record.firmware = Some(version);
        }
        self.audit_device(
            now_ms,
            *id,
            tenant,
            scope,
            AuditAction::UpdateReported { rollout, success },
        );
        self.audit_decision(now_ms, tenant, rollout_scope, rollout, progress);
        Ok(progress)
    }

    /// Applies every running rollout's report deadline at `now_ms`: devices of the current
    /// stage still silent more than [`RolloutConfig::report_timeout_ms`] after the stage
    /// started (or resumed) are marked timed out, which counts as a failure, and the stage
    /// advances or halts accordingly. Each time-out (`UpdateTimedOut`, per device) and each
    /// decision is audited with actor `System`. Call it periodically, like
    /// [`Fleet::sweep`]; returns the rollouts where something timed out.
    pub fn tick_rollouts(&mut self, now_ms: u64) -> Vec<RolloutTimeouts> {
        let running: Vec<(TenantId, u32)> = self
            .rollouts
            .iter()
            .filter(|(_, s)| s.rollout.deadline_ms().is_some_and(|d| now_ms > d))
            .map(|(k, _)| *k)
            .collect();
        running
            .into_iter()
            .filter_map(|(tenant, rollout)| self.expire_rollout(tenant, rollout, now_ms))
            .collect()
    }

    /// Applies one rollout's report deadline at `now_ms` and audits what it did.
    fn expire_rollout(
        &mut self,
        tenant: TenantId,
        rollout: u32,
        now_ms: u64,
    ) -> Option<RolloutTimeouts> {
        let scoped = self.rollouts.get_mut(&(tenant, rollout))?;
        let expiry = scoped.rollout.expire(now_ms);
        if expiry.timed_out.is_empty() {
            return None;
        }
        let rollout_scope = scoped.scope.clone();
        for id in &expiry.timed_out {
            let scope = self
                .registry
                .tenant_device(&tenant, id)
                .map_or_else(|| rollout_scope.clone(), |r| r.scope.clone());
            self.audit_system(
                now_ms,
                tenant,
                scope,
                Some(*id),
                AuditAction::UpdateTimedOut { rollout },
            );
        }
        self.audit_decision(now_ms, tenant, rollout_scope, rollout, expiry.progress);
        Some(RolloutTimeouts {
            tenant,
            rollout,
            expiry,
        })
    }

    /// The rollout `rollout` for a write by `p`: another tenant's or an invisible one is
    /// `NotFound`, a visible one with too low a role `Forbidden`.
    fn controlled_rollout(
        &mut self,
        p: &Principal,
        rollout: u32,
    ) -> Result<&mut ScopedRollout, FleetError> {
        let scoped = self
            .rollouts
            .get_mut(&(p.tenant, rollout))
            .ok_or(AccessError::NotFound)?;
        p.check(&p.tenant, &scoped.scope, Role::Operator)?;
        Ok(scoped)
    }

    /// Pauses a running rollout: no device is told to install and the report deadline stops
    /// until [`Fleet::resume_rollout`]; reports of devices already installing still count.
    /// Needs `Operator` over the rollout's scope. Audited.
    pub fn pause_rollout(
        &mut self,
        p: &Principal,
        rollout: u32,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        let scoped = self.controlled_rollout(p, rollout)?;
        scoped.rollout.pause()?;
        let scope = scoped.scope.clone();
        self.audit_operator(
            now_ms,
            p,
            scope,
            None,
            AuditAction::RolloutPaused { rollout },
        );
        Ok(())
    }

    /// Resumes a paused rollout: pending devices are told to install again with a fresh
    /// report deadline, and a stage that finished while paused advances at once (the
    /// decision is audited as well). Needs `Operator` over the rollout's scope. Audited.
    pub fn resume_rollout(
        &mut self,
        p: &Principal,
        rollout: u32,
        now_ms: u64,
    ) -> Result<Progress, FleetError> {
        let scoped = self.controlled_rollout(p, rollout)?;
        let progress = scoped.rollout.resume(now_ms)?;
        let scope = scoped.scope.clone();
        self.audit_operator(
            now_ms,
            p,
            scope.clone(),
            None,
            AuditAction::RolloutResumed { rollout },
        );
        if let Some(action) = decision(rollout, progress) {
            self.audit_system(now_ms, p.tenant, scope, None, action);
        }
        Ok(progress)
    }

    /// Aborts a running, paused or halted rollout for good: every device that installed
    /// the new image (succeeded, failed or timed out) is told to roll back, as a halt tells
    /// failed devices, and every pending device is told to cancel
    /// ([`Instruction::Cancel`]). Needs `Operator` over the rollout's scope. Audited.
    pub fn abort_rollout(
        &mut self,
        p: &Principal,
        rollout: u32,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        let scoped = self.controlled_rollout(p, rollout)?;
        let stage = scoped.rollout.abort()?;
        let scope = scoped.scope.clone();
        self.audit_operator(
            now_ms,
            p,
            scope,
            None,
            AuditAction::RolloutAborted { rollout, stage },
        );
        Ok(())
    }
}
