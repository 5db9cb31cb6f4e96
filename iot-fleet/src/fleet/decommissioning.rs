//! Decommissioning: revoking a device's identity and removing it from shadows, monitoring,
//! metering and rollouts, while its audit entries stay.

use alloc::vec::Vec;

use iot_core::DeviceId;
use iot_lifecycle::{Event, State, transition};

use super::metering::availability_of;
use super::rollouts::decision;
use super::{Fleet, FleetError};
use crate::access::{AccessError, Principal, Role};
use crate::audit::AuditAction;
use crate::proof::ProofVerifier;

/// What decommissioning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decommissioned {
    /// The state the device was in.
    pub previous: State,
    /// Whether the lifecycle has no edge from `previous` to `Decommissioned`, so the
    /// operator's decision overrode it.
    pub forced: bool,
}

impl<V: ProofVerifier> Fleet<V> {
    /// Decommissions a device: revokes its identity (the secret is wiped, later
    /// registrations fail with `Revoked`), deletes its shadow, removes it from monitoring,
    /// metering and rollouts, and keeps its audit entries. Needs `Admin`.
    pub fn decommission(
        &mut self,
        p: &Principal,
        id: &DeviceId,
        now_ms: u64,
    ) -> Result<Decommissioned, FleetError> {
        let previous = self.visible_device(p, id, Role::Admin)?.state;
        let forced = transition(previous, Event::EndOfLife).is_err()
            && transition(previous, Event::Unrecoverable).is_err();
        let record = self.registry.revoke(id).ok_or(AccessError::NotFound)?;
        let retired = self
            .retired
            .entry((record.tenant, record.scope.clone()))
            .or_default();
        retired.usage.add(record.usage);
        retired.availability.add(availability_of(&record, now_ms));
        // The backend's copy of the device's state is wiped with it.
        if let Some(slot) = self.registry.slot_of(id) {
            self.shadows.remove(slot);
        }
        let mut decisions = Vec::new();
        for ((_, rollout), scoped) in self
            .rollouts
            .range_mut((record.tenant, 0)..=(record.tenant, u32::MAX))
        {
            if let Some(action) = decision(*rollout, scoped.rollout.withdraw(id, now_ms)) {
                decisions.push((scoped.scope.clone(), action));
            }
        }
        self.audit_operator(
            now_ms,
            p,
            record.scope,
            Some(*id),
            AuditAction::Decommissioned { previous, forced },
        );
        for (scope, action) in decisions {
            self.audit_system(now_ms, p.tenant, scope, None, action);
        }
        Ok(Decommissioned { previous, forced })
    }
}
