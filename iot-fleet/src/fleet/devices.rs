//! The device directory for tenants: reading device records within the caller's scope and
//! moving devices between scopes.

use iot_core::DeviceId;

use super::{Fleet, FleetError};
use crate::access::{AccessError, Principal, Role, Scope};
use crate::audit::AuditAction;
use crate::proof::ProofVerifier;
use crate::registry::DeviceRecord;

impl<V: ProofVerifier> Fleet<V> {
    /// One device, if the caller may see it.
    pub fn device(&self, p: &Principal, id: &DeviceId) -> Result<&DeviceRecord, FleetError> {
        Ok(self.visible_device(p, id, Role::Viewer)?)
    }

    /// Every device the caller may see, by id.
    pub fn devices<'a>(&'a self, p: &'a Principal) -> impl Iterator<Item = &'a DeviceRecord> + 'a {
        self.registry
            .tenant_devices(&p.tenant)
            .filter(move |r| p.scope.contains(&r.scope))
    }

    /// Moves a device to another scope; both must lie in the caller's scope. Needs
    /// `Operator`.
    pub fn move_device(
        &mut self,
        p: &Principal,
        id: &DeviceId,
        to: &Scope,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        self.visible_device(p, id, Role::Operator)?;
        p.check_scope(to, Role::Operator)?;
        let Some(record) = self.registry.device_mut(id) else {
            return Err(AccessError::NotFound.into());
        };
        let from = core::mem::replace(&mut record.scope, to.clone());
        if from != *to {
            self.audit_operator(
                now_ms,
                p,
                to.clone(),
                Some(*id),
                AuditAction::Moved { from },
            );
        }
        Ok(())
    }
}
