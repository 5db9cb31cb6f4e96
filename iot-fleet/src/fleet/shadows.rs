//! Device shadows on the backend: the [`ServerShadow`] of each device, resolved with its
//! class's field policies ([`ClassPolicies`], registered with [`Fleet::register_schema`]),
//! written by the device itself (`Origin::Device`) and by operators (`Origin::Cloud`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use iot_core::DeviceId;
use iot_shadow::typed::FieldTable;
use iot_shadow::{
    Limits, MapStore, Origin, Outcome, Policy, Resolver, Shadow, ShadowError, Update,
};

use super::{Fleet, FleetError};
use crate::access::{AccessError, Principal, Role};
use crate::audit::AuditAction;
use crate::proof::ProofVerifier;
use crate::registry::ReportError;

/// How far ahead of the backend's clock a shadow write may be stamped (60 s). A write
/// beyond it is refused by the engine ([`ShadowError::ClockDrift`]) with nothing changed,
/// so a device whose clock runs ahead cannot make its writes outrank every later one.
pub const MAX_CLOCK_DRIFT_MS: u64 = 60_000;

/// The backend's copy of a device shadow: iot-shadow's engine (the same delta, merge and
/// conflict rules the device runs) over a heap store, with a one-entry client-token cache.
///
/// One entry is enough for a device, which retries its latest update until it is
/// acknowledged; an older update replayed later cannot change anything either, because its
/// stamps are equal to (or older than) the stored ones. Each extra entry would cost 96
/// bytes per device.
pub type ServerShadow = Shadow<MapStore, ClassPolicies, 1>;

/// The field policies a server-side shadow resolves with: the device class's table (the
/// same [`FieldTable`] the device's `shadow_state!` struct declares, registered with
/// [`Fleet::register_schema`] and announced by the device at registration), or one policy
/// for every field for devices that declare none.
#[derive(Debug, Clone, Copy)]
pub enum ClassPolicies {
    /// Every field resolves with this policy.
    Uniform(Policy),
    /// The device class's table.
    Table(FieldTable),
}

impl Default for ClassPolicies {
    fn default() -> Self {
        Self::Uniform(Policy::LastWriterWins)
    }
}

impl Resolver for ClassPolicies {
    fn policy(&self, path: &iot_shadow::Path) -> Policy {
        match self {
            Self::Uniform(policy) => *policy,
            Self::Table(table) => table.policy(path),
        }
    }

    fn resolve_custom(
        &self,
        path: &iot_shadow::Path,
        desired: &iot_shadow::store::Leaf,
        reported: &iot_shadow::store::Leaf,
    ) -> iot_shadow::Winner {
        match self {
            Self::Uniform(policy) => policy.resolve_custom(path, desired, reported),
            Self::Table(table) => table.resolve_custom(path, desired, reported),
        }
    }
}

impl<V: ProofVerifier> Fleet<V> {
    /// Registers a device class's field-policy table (its `shadow_state!` struct's
    /// [`FieldTable`]); devices announcing its fingerprint resolve with it. Returns the
    /// fingerprint.
    pub fn register_schema(&mut self, table: FieldTable) -> u32 {
        let id = table.fingerprint();
        self.schemas.insert(id, table);
        id
    }

    /// The policies of schema `schema` (0: none declared, every field last-writer-wins);
    /// `None` for a schema nobody registered.
    pub fn schema_policies(&self, schema: u32) -> Option<ClassPolicies> {
        policies_of(&self.schemas, schema)
    }

    /// Records that `id` registered with shadow schema `schema` (a fingerprint registered
    /// with [`Fleet::register_schema`], or 0): its shadow resolves with that table from now
    /// on. `false` (and nothing changes) for an unknown device or schema.
    pub fn set_device_schema(&mut self, id: &DeviceId, schema: u32) -> bool {
        let Some(policies) = self.schema_policies(schema) else {
            return false;
        };
        let Some(slot) = self.registry.slot_of(id) else {
            return false;
        };
        let Some(record) = self.registry.record_at_mut(slot) else {
            return false;
        };
        record.schema = schema;
        if let Some(shadow) = self.shadows.get_mut(slot) {
            shadow.set_resolver(policies);
        }
        true
    }

    /// The device's own shadow, for answering the device itself (its transport session
    /// authenticated it; tenants read shadows with [`Fleet::shadow`]).
    pub fn device_shadow(&self, id: &DeviceId) -> Option<&ServerShadow> {
        self.shadows.get(self.registry.slot_of(id)?)
    }

    /// The device's shadow (`None` until the first update), if the caller may see the device.
    pub fn shadow(
        &self,
        p: &Principal,
        id: &DeviceId,
    ) -> Result<Option<&ServerShadow>, FleetError> {
        self.visible_device(p, id, Role::Viewer)?;
        Ok(self.device_shadow(id))
    }

    /// The shadow of an imported device (`None` for an id the registry does not hold).
    pub(super) fn shadow_mut(&mut self, id: &DeviceId) -> Option<&mut ServerShadow> {
        let slot = self.registry.slot_of(id)?;
        Some(self.shadow_entry(slot)?.0)
    }

    /// The shadow of the device in `slot`, created empty (with its schema's policies) when
    /// it has none; `true` when it was created.
    fn shadow_entry(&mut self, slot: usize) -> Option<(&mut ServerShadow, bool)> {
        let Self {
            shadows,
            registry,
            schemas,
            ..
        } = self;
        shadows.entry(slot, || {
            let policies = registry
                .record_at(slot)
                .and_then(|r| policies_of(schemas, r.schema))
                .unwrap_or_default();
            Shadow::new(
                MapStore::new(),
                policies,
                Limits::DEFAULT.with_max_drift(MAX_CLOCK_DRIFT_MS),
            )
        })
    }

    /// The device updates its shadow (normally its `reported` half). Every write must be
    /// stamped `Origin::Device`, so a device cannot borrow the backend's precedence
    /// (`Forbidden` otherwise). Reconciliation is iot-shadow's [`Shadow::apply`]. An update
    /// that changes the document is audited (`ShadowUpdated` with the new version, actor the
    /// device); one that changes nothing (a duplicate or stale write) is not.
    pub fn device_shadow_update(
        &mut self,
        id: &DeviceId,
        update: &Update<'_>,
        now_ms: u64,
    ) -> Result<Outcome, FleetError> {
        // Every check before anything changes: registered, device origin, then the
        // engine's own (limits, drift, version), which change nothing when they refuse.
        // The device is looked up once: its record and shadow share its slot.
        let slot = self
            .registry
            .slot_of(id)
            .ok_or(ReportError::NotRegistered)?;
        if self.registry.record_at(slot).is_none() {
            return Err(ReportError::NotRegistered.into());
        }
        if update
            .writes
            .iter()
            .any(|w| w.stamp.origin != Origin::Device)
        {
            return Err(AccessError::Forbidden.into());
        }
        let (shadow, created) = self.shadow_entry(slot).ok_or(ShadowError::Storage)?;
        let outcome = match shadow.apply(update, now_ms) {
            Ok(outcome) => outcome,
            Err(e) => {
                if created {
                    // The refused update leaves no empty document behind either.
                    self.shadows.remove(slot);
                }
                return Err(e.into());
            }
        };
        self.touch_at(slot, id, now_ms)?;
        if outcome.changed
            && let Some(record) = self.registry.record_at(slot)
        {
            let (tenant, scope) = (record.tenant, record.scope.clone());
            self.audit_device(
                now_ms,
                *id,
                tenant,
                scope,
                AuditAction::ShadowUpdated {
                    version: outcome.version,
                },
            );
        }
        Ok(outcome)
    }

    /// Updates the device's shadow (normally its `desired` half) for an operator. Every
    /// write must be stamped `Origin::Cloud`. Needs `Operator`; a change is audited with the
    /// new document version.
    pub fn update_shadow(
        &mut self,
        p: &Principal,
        id: &DeviceId,
        update: &Update<'_>,
        now_ms: u64,
    ) -> Result<Outcome, FleetError> {
        let scope = self.visible_device(p, id, Role::Operator)?.scope.clone();
        if update
            .writes
            .iter()
            .any(|w| w.stamp.origin != Origin::Cloud)
        {
            return Err(AccessError::Forbidden.into());
        }
        let outcome = self
            .shadow_mut(id)
            .ok_or(AccessError::NotFound)?
            .apply(update, now_ms)?;
        if outcome.changed {
            self.audit_operator(
                now_ms,
                p,
                scope,
                Some(*id),
                AuditAction::ShadowUpdated {
                    version: outcome.version,
                },
            );
        }
        Ok(outcome)
    }
}

/// Device shadows in dense storage, by the registry's slot numbers.
#[derive(Debug)]
pub(super) struct Shadows {
    slots: Vec<Option<ServerShadow>>,
    pub(super) count: usize,
}

impl Shadows {
    pub(super) const fn new() -> Self {
        Self {
            slots: Vec::new(),
            count: 0,
        }
    }

    pub(super) fn get(&self, slot: usize) -> Option<&ServerShadow> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut ServerShadow> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub(super) fn remove(&mut self, slot: usize) {
        if let Some(shadow) = self.slots.get_mut(slot)
            && shadow.take().is_some()
        {
            self.count = self.count.saturating_sub(1);
        }
    }

    /// The shadow in `slot`, made by `make` when there is none; `true` when it was made
    /// (`None` only when the slot number cannot be addressed).
    fn entry(
        &mut self,
        slot: usize,
        make: impl FnOnce() -> ServerShadow,
    ) -> Option<(&mut ServerShadow, bool)> {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot.checked_add(1)?, || None);
        }
        let entry = self.slots.get_mut(slot)?;
        let created = entry.is_none();
        if created {
            self.count = self.count.saturating_add(1);
        }
        Some((entry.get_or_insert_with(make), created))
    }
}

/// The policies of schema `schema` among `schemas` (see [`Fleet::schema_policies`]).
fn policies_of(schemas: &BTreeMap<u32, FieldTable>, schema: u32) -> Option<ClassPolicies> {
    if schema == 0 {
        return Some(ClassPolicies::default());
    }
    schemas.get(&schema).map(|t| ClassPolicies::Table(*t))
}
