//! What a durable binding needs from a [`Fleet`]: the audit entries appended since it last
//! looked, the state of a device, shadow or rollout to save, and the calls that put saved
//! state back at start. Nothing here is audited: restoring is not a decision.
//!
//! How a binding finds what changed: every state change that matters is either audited (the
//! entry names the device and, for rollout decisions, the rollout) or a shadow change (its
//! version moves). So the binding drains [`Fleet::take_audit`] after each call, saves the
//! records of the devices and the rollouts the new entries name, and compares the shadow
//! version of the device it served before and after. The only bookkeeping this costs the
//! fleet is the journal of new audit entries, emptied after every call.

use alloc::vec::Vec;

use iot_core::{DeviceId, TenantId};
use iot_shadow::{ShadowError, Write};

use super::{Fleet, ScopedRollout, ServerShadow};
use crate::audit::AuditEntry;
use crate::proof::ProofVerifier;
use crate::registry::{AssignmentRule, DeviceRecord, SavedIdentity};

impl<V: ProofVerifier> Fleet<V> {
    /// Keeps only the audit entries not yet taken (journal mode, see
    /// [`crate::AuditLog::set_journal`]): a binding that stores the trail turns this on, so
    /// the trail does not grow in memory.
    pub fn set_audit_journal(&mut self, journal: bool) {
        self.audit.set_journal(journal);
    }

    /// Removes and returns the audit entries appended since the last call, oldest first.
    pub fn take_audit(&mut self) -> Vec<AuditEntry> {
        self.audit.drain()
    }

    /// The identity of `id` as it should be saved (secret included), if it was imported.
    pub fn saved_identity(&self, id: &DeviceId) -> Option<SavedIdentity> {
        self.registry.saved_identity(id)
    }

    /// The record of a registered device, whatever its tenant (for saving it).
    pub fn device_record(&self, id: &DeviceId) -> Option<&DeviceRecord> {
        self.registry.device(id)
    }

    /// Puts back a saved identity and its record (see
    /// [`crate::registry::Registry::restore_identity`]).
    pub fn restore_identity(
        &mut self,
        id: DeviceId,
        saved: SavedIdentity,
        record: Option<DeviceRecord>,
    ) {
        self.registry.restore_identity(id, saved, record);
    }

    /// The assignment rules of `tenant`.
    pub fn assignment_rules(&self, tenant: &TenantId) -> &[AssignmentRule] {
        self.registry.rules(tenant)
    }

    /// Replaces the assignment rules of `tenant` with saved ones.
    pub fn restore_assignment_rules(&mut self, tenant: TenantId, rules: Vec<AssignmentRule>) {
        self.registry.restore_rules(tenant, rules);
    }

    /// Puts back a saved shadow document of `id` (the canonical CBOR of
    /// [`ServerShadow::to_cbor`], stamps and tombstones included) at `version`: its leaves
    /// are merged into the device's shadow, which resumes at `version`. Nothing changes on
    /// error.
    pub fn restore_shadow(
        &mut self,
        id: &DeviceId,
        document: &[u8],
        version: u64,
    ) -> Result<(), ShadowError> {
        let mut writes: Vec<Write> = Vec::new();
        iot_shadow::cbor::decode_message(document, &mut writes)
            .map_err(|_| ShadowError::Storage)?;
        self.shadow_mut(id)
            .ok_or(ShadowError::Storage)?
            .merge_writes(&writes, version)?;
        Ok(())
    }

    /// Drops the device's shadow from memory (not audited, nothing else changes): a binding
    /// that shares its store with other nodes forgets a stale copy before it puts back the
    /// stored one with [`Fleet::restore_shadow`].
    pub fn forget_shadow(&mut self, id: &DeviceId) {
        if let Some(slot) = self.registry.slot_of(id) {
            self.shadows.remove(slot);
        }
    }

    /// The device's shadow, for saving it.
    pub fn saved_shadow(&self, id: &DeviceId) -> Option<&ServerShadow> {
        self.device_shadow(id)
    }

    /// Every rollout with its tenant and tenant-local id.
    pub fn all_rollouts(&self) -> impl Iterator<Item = (&(TenantId, u32), &ScopedRollout)> + '_ {
        self.rollouts.iter()
    }

    /// The rollout `rollout` of `tenant`, for saving it.
    pub fn saved_rollout(&self, tenant: &TenantId, rollout: u32) -> Option<&ScopedRollout> {
        self.rollouts.get(&(*tenant, rollout))
    }

    /// Puts back a saved rollout; later rollouts of the tenant get higher ids.
    pub fn restore_rollout(&mut self, tenant: TenantId, rollout: u32, scoped: ScopedRollout) {
        let next = self.next_rollout.entry(tenant).or_insert(0);
        *next = (*next).max(rollout.saturating_add(1));
        self.rollouts.insert((tenant, rollout), scoped);
    }

    /// Counts every device that was online when its record was saved as seen at `now_ms`
    /// (after a restart: heartbeat times between saved changes are not kept, so each device
    /// gets one heartbeat timeout from the restart to be heard from).
    pub fn assume_seen(&mut self, now_ms: u64) {
        for record in self.registry.all_devices_mut() {
            if record.online {
                record.last_seen_ms = record.last_seen_ms.max(now_ms);
            }
        }
    }

    /// How many shadows the fleet holds (for capacity reports).
    pub fn shadow_count(&self) -> usize {
        self.shadows.count
    }
}
