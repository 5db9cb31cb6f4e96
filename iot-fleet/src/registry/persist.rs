//! Saving and restoring identities, records and assignment rules: what a durable binding
//! (such as `iot_fleet::durable`, feature `durable`) writes to its store and reads back at
//! start.

use alloc::vec::Vec;

use iot_core::{DeviceId, TenantId};
use zeroize::Zeroizing;

use super::{AssignmentRule, DeviceRecord, Identity, IdentityStatus, Registry};
use crate::access::Scope;
use crate::proof::SECRET_LEN;

/// How far along an imported identity is, as a binding saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CredentialStatus {
    /// Imported from a manufacturing list, not registered yet.
    Imported,
    /// Registered: the device has a record.
    Registered,
    /// Revoked (decommissioned): the secret is wiped and registrations are refused.
    Revoked,
}

/// An identity as the registry holds it (its outstanding challenge left out: a challenge
/// is single-use and short-lived, and a device whose challenge was lost simply asks again).
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SavedIdentity {
    /// The tenant it was imported for.
    pub tenant: TenantId,
    /// The device secret (all zero once revoked).
    pub secret: [u8; SECRET_LEN],
    /// Its SKU.
    pub sku: alloc::string::String,
    /// Its serial number.
    pub serial: u64,
    /// The scope given at import (where devices no rule matches go).
    pub import_scope: Scope,
    /// Imported, registered or revoked.
    pub status: CredentialStatus,
}

impl core::fmt::Debug for SavedIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The secret is never printed.
        f.debug_struct("SavedIdentity")
            .field("tenant", &self.tenant)
            .field("sku", &self.sku)
            .field("serial", &self.serial)
            .field("import_scope", &self.import_scope)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The identity of `id` as it should be saved, if it was imported.
    pub fn saved_identity(&self, id: &DeviceId) -> Option<SavedIdentity> {
        let identity = self.identity(id)?;
        Some(SavedIdentity {
            tenant: identity.tenant,
            secret: *identity.secret,
            sku: identity.sku.clone(),
            serial: identity.serial,
            import_scope: identity.import_scope.clone(),
            status: match identity.status {
                IdentityStatus::Imported => CredentialStatus::Imported,
                IdentityStatus::Registered => CredentialStatus::Registered,
                IdentityStatus::Revoked => CredentialStatus::Revoked,
            },
        })
    }

    /// Puts back a saved identity and, for a registered one, its record (a record of
    /// another device or tenant is ignored). Replaces what the registry held for `id`.
    pub fn restore_identity(
        &mut self,
        id: DeviceId,
        saved: SavedIdentity,
        record: Option<DeviceRecord>,
    ) {
        let status = match saved.status {
            CredentialStatus::Imported => IdentityStatus::Imported,
            CredentialStatus::Registered => IdentityStatus::Registered,
            CredentialStatus::Revoked => IdentityStatus::Revoked,
        };
        let tenant = saved.tenant;
        let identity = Identity {
            tenant,
            secret: Zeroizing::new(saved.secret),
            sku: saved.sku,
            serial: saved.serial,
            import_scope: saved.import_scope,
            status,
            challenge: None,
        };
        let mut old_tenant = tenant;
        let slot_no = match self.slot_of(&id) {
            Some(slot_no) => {
                if let Some(slot) = self.slots.get_mut(slot_no) {
                    old_tenant = core::mem::replace(&mut slot.identity, identity).tenant;
                }
                slot_no
            }
            None => self.push_slot(id, identity) as usize,
        };
        let Some(slot) = self.slots.get_mut(slot_no) else {
            return;
        };
        slot.record = match record {
            Some(record)
                if status == IdentityStatus::Registered
                    && record.id == id
                    && record.tenant == tenant =>
            {
                Some(record)
            }
            _ => None,
        };
        if let Some(listed) = self.listing.get_mut(&old_tenant) {
            listed.remove(&id);
            if listed.is_empty() {
                self.listing.remove(&old_tenant);
            }
        }
        if slot.record.is_some() {
            self.listing
                .entry(tenant)
                .or_default()
                .insert(id, u32::try_from(slot_no).unwrap_or(u32::MAX));
        }
    }

    /// The assignment rules of `tenant`, in the order they are tried.
    pub fn rules(&self, tenant: &TenantId) -> &[AssignmentRule] {
        self.rules.get(tenant).map_or(&[], Vec::as_slice)
    }

    /// Replaces the assignment rules of `tenant`.
    pub fn restore_rules(&mut self, tenant: TenantId, rules: Vec<AssignmentRule>) {
        if rules.is_empty() {
            self.rules.remove(&tenant);
        } else {
            self.rules.insert(tenant, rules);
        }
    }
}
