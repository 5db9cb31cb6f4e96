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

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{DeviceId, Error, ErrorKind, TenantId};
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
use iot_lifecycle::{DeviceConfig, Event, State, TransitionError, transition};
use iot_shadow::typed::FieldTable;
use iot_shadow::{
    Limits, MapStore, Origin, Outcome, Policy, Resolver, Shadow, ShadowError, Update,
};

use crate::access::{AccessError, Principal, Role, Scope};
use crate::audit::{Actor, AuditAction, AuditEntry, AuditLog};
use crate::health::{self, BatteryReplacement, HealthCounts, HealthPolicy, HealthReport};
use crate::metering::{Availability, TenantMetering, Usage};
use crate::proof::{ChallengeAnswer, LifecycleHmac, Nonce, ProofVerifier};
use crate::registry::{
    AssignmentRule, DeviceRecord, ImportError, ManufacturingRecord, ReadingTally, Registration,
    RegistrationError, Registry, ReportError,
};
use crate::rollout::{Expiry, Instruction, Progress, Rollout, RolloutConfig, RolloutError};

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

/// A rollout and the scope it was started for.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ScopedRollout {
    /// The scope whose devices are targets.
    pub scope: Scope,
    /// The rollout.
    pub rollout: Rollout,
}

/// What decommissioning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decommissioned {
    /// The state the device was in.
    pub previous: State,
    /// Whether the lifecycle has no edge from `previous` to `Decommissioned`, so the
    /// operator's decision overrode it.
    pub forced: bool,
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

/// The audit entry for a rollout-level decision, if any.
fn decision(rollout: u32, progress: Progress) -> Option<AuditAction> {
    match progress {
        Progress::Unchanged => None,
        Progress::Advanced(stage) => Some(AuditAction::RolloutAdvanced { rollout, stage }),
        Progress::Halted(stage) => Some(AuditAction::RolloutHalted { rollout, stage }),
        Progress::Completed => Some(AuditAction::RolloutCompleted { rollout }),
    }
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

/// The availability of `record` at `now_ms`.
fn availability_of(record: &DeviceRecord, now_ms: u64) -> Availability {
    let current_outage = if record.online {
        0
    } else {
        now_ms.saturating_sub(record.last_seen_ms)
    };
    Availability {
        monitored_ms: now_ms.saturating_sub(record.registered_at_ms),
        downtime_ms: record.downtime_ms.saturating_add(current_outage),
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

    /// The audit log (for the backend operator; tenants use [`Fleet::audit_trail`]).
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
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

    fn log(
        &mut self,
        at_ms: u64,
        actor: Actor,
        tenant: TenantId,
        scope: Scope,
        device: Option<DeviceId>,
        action: AuditAction,
    ) {
        self.audit
            .append(at_ms, actor, tenant, scope, device, action);
    }

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

    // ----- provisioning (tenant side) -------------------------------------------------

    /// Imports a manufacturing list into `scope` (where devices no rule matches go).
    /// Needs `Admin` over `scope`. All or nothing.
    pub fn import_manufacturing(
        &mut self,
        p: &Principal,
        scope: &Scope,
        records: Vec<ManufacturingRecord>,
        now_ms: u64,
    ) -> Result<u32, FleetError> {
        p.check_scope(scope, Role::Admin)?;
        let count = self.registry.import(p.tenant, scope, records)?;
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            scope.clone(),
            None,
            AuditAction::ManufacturingImported { count },
        );
        Ok(count)
    }

    /// Adds a zero-touch assignment rule. Needs `Admin` over the rule's scope.
    pub fn add_assignment_rule(
        &mut self,
        p: &Principal,
        rule: AssignmentRule,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        p.check_scope(&rule.scope, Role::Admin)?;
        let scope = rule.scope.clone();
        self.registry.add_rule(p.tenant, rule);
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            scope,
            None,
            AuditAction::AssignmentRuleAdded,
        );
        Ok(())
    }

    // ----- device-facing path -----------------------------------------------------------

    /// A device asks to register in transport session `session`: `nonce` (fresh, from the
    /// caller's CSPRNG) becomes its outstanding challenge, unless that session already holds
    /// one (then that nonce is returned again). Unknown and revoked identities are refused
    /// here already; so is a request while another session holds an unexpired challenge
    /// ([`RegistrationError::ChallengePending`], which changes nothing and is not audited:
    /// it decides nothing about the identity).
    pub fn challenge(
        &mut self,
        id: &DeviceId,
        session: u64,
        nonce: Nonce,
        now_ms: u64,
    ) -> Result<Nonce, FleetError> {
        match self.registry.challenge(id, session, nonce, now_ms) {
            Ok(nonce) => Ok(nonce),
            Err(RegistrationError::ChallengePending) => {
                Err(RegistrationError::ChallengePending.into())
            }
            Err(e) => Err(self.rejected(id, e, now_ms)),
        }
    }

    fn rejected(&mut self, id: &DeviceId, e: RegistrationError, now_ms: u64) -> FleetError {
        // Attempts on identities a tenant owns are security events for that tenant;
        // unknown ids belong to nobody and are not recorded.
        if let Some(tenant) = self.registry.identity_tenant(id) {
            let scope = self
                .registry
                .device(id)
                .map_or_else(Scope::root, |r| r.scope.clone());
            self.log(
                now_ms,
                Actor::Device(*id),
                tenant,
                scope,
                Some(*id),
                AuditAction::RegistrationRejected(e),
            );
        }
        e.into()
    }

    /// The device answers its challenge; a valid answer registers it (zero-touch: assigned
    /// by the tenant's rules, `Unprovisioned -> Provisioning`). A repeated registration of a
    /// registered device changes nothing but is accepted.
    pub fn register(
        &mut self,
        id: &DeviceId,
        session: u64,
        answer: &ChallengeAnswer,
        now_ms: u64,
    ) -> Result<Registration, FleetError> {
        match self
            .registry
            .register(id, session, answer, &self.verifier, now_ms)
        {
            Ok(reg) => {
                let action = if reg.first {
                    AuditAction::Registered
                } else {
                    AuditAction::ReRegistered
                };
                self.log(
                    now_ms,
                    Actor::Device(*id),
                    reg.tenant,
                    reg.scope.clone(),
                    Some(*id),
                    action,
                );
                Ok(reg)
            }
            Err(e) => Err(self.rejected(id, e, now_ms)),
        }
    }

    /// iot-lifecycle's registration protocol, backend side, for a request that arrived in
    /// transport session `session`: a request without an answer is challenged with
    /// `fresh_nonce` (see [`Fleet::challenge`]); a request with one is registered and
    /// accepted with `config`, or rejected with the wire reason.
    pub fn handle_registration(
        &mut self,
        request: &RegistrationRequest,
        session: u64,
        fresh_nonce: Nonce,
        config: DeviceConfig,
        now_ms: u64,
    ) -> RegistrationResponse {
        let outcome = match &request.answer {
            None => self
                .challenge(&request.device, session, fresh_nonce, now_ms)
                .map(RegistrationResponse::Challenge),
            Some(answer) => self
                .register(&request.device, session, answer, now_ms)
                .map(|_| RegistrationResponse::Accepted(config)),
        };
        match outcome {
            Ok(response) => response,
            Err(FleetError::Registration(e)) => RegistrationResponse::Rejected(e.rejection()),
            // `challenge` and `register` only fail with registration errors.
            Err(_) => RegistrationResponse::Rejected(
                iot_lifecycle::registration::RegistrationRejection::InvalidProof,
            ),
        }
    }

    fn touch(&mut self, id: &DeviceId, now_ms: u64) -> Result<(), FleetError> {
        let slot = self
            .registry
            .slot_of(id)
            .ok_or(ReportError::NotRegistered)?;
        self.touch_at(slot, id, now_ms)
    }

    /// [`Fleet::touch`] of a device whose slot the caller already looked up.
    fn touch_at(&mut self, slot: usize, id: &DeviceId, now_ms: u64) -> Result<(), FleetError> {
        let record = self
            .registry
            .record_at_mut(slot)
            .ok_or(ReportError::NotRegistered)?;
        let came_back = !record.online;
        if came_back {
            let outage = now_ms.saturating_sub(record.last_seen_ms);
            record.downtime_ms = record.downtime_ms.saturating_add(outage);
            record.online = true;
        }
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        if came_back {
            let (tenant, scope) = (record.tenant, record.scope.clone());
            self.log(
                now_ms,
                Actor::Device(*id),
                tenant,
                scope,
                Some(*id),
                AuditAction::BackOnline,
            );
        }
        Ok(())
    }

    /// A heartbeat, optionally with a battery reading in percent.
    pub fn heartbeat(
        &mut self,
        id: &DeviceId,
        battery_percent: Option<f32>,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        self.touch(id, now_ms)?;
        if let (Some(p), Some(record)) = (battery_percent, self.registry.device_mut(id)) {
            record.battery.record(now_ms, p);
        }
        Ok(())
    }

    /// The device's heartbeat said what its telemetry filters did since its boot (see
    /// [`ReadingTally`]); kept on its record, not audited.
    pub fn report_readings(&mut self, id: &DeviceId, tally: ReadingTally) {
        if let Some(record) = self.registry.device_mut(id) {
            record.readings = Some(tally);
        }
    }

    /// The device reports a lifecycle transition (`event`, ending in `claimed`). It is
    /// validated with [`iot_lifecycle::transition`]; an illegal one is flagged on the
    /// record and in the audit trail, and not applied.
    pub fn report_transition(
        &mut self,
        id: &DeviceId,
        event: Event,
        claimed: State,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        self.touch(id, now_ms)?;
        let result = self.registry.apply_reported(id, event, claimed, now_ms);
        let Some(record) = self.registry.device(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        let (tenant, scope) = (record.tenant, record.scope.clone());
        let action = match &result {
            Ok((from, to)) if from == to => return Ok(*to),
            Ok((from, to)) => AuditAction::Transition {
                from: *from,
                event,
                to: *to,
            },
            Err(ReportError::IllegalTransition(error)) => AuditAction::IllegalTransitionFlagged {
                error: *error,
                claimed,
            },
            Err(ReportError::StateMismatch { from, .. }) => AuditAction::IllegalTransitionFlagged {
                error: TransitionError {
                    state: *from,
                    event,
                },
                claimed,
            },
            Err(e) => return Err((*e).into()),
        };
        self.log(now_ms, Actor::Device(*id), tenant, scope, Some(*id), action);
        result.map(|(_, to)| to).map_err(FleetError::from)
    }

    /// The device reports a transition record it made (`from -event-> to`), as the
    /// protocol's lifecycle report carries it ([`Registry::apply_report`] says what is
    /// applied). An applied report is audited as a `Transition`, preceded by
    /// `TransitionsMissed` when earlier reports were lost; an illegal one is flagged in the
    /// record and the audit trail and returned as an error; a redelivered copy changes
    /// nothing. Returns the state the backend now holds.
    pub fn report_device_transition(
        &mut self,
        id: &DeviceId,
        from: State,
        event: Event,
        to: State,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        self.touch(id, now_ms)?;
        let result = self.registry.apply_report(id, from, event, to, now_ms);
        let Some(record) = self.registry.device(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        let (tenant, scope) = (record.tenant, record.scope.clone());
        match result {
            Ok((held, now)) if held == now => Ok(now),
            Ok((held, now)) => {
                if held != from {
                    self.log(
                        now_ms,
                        Actor::Device(*id),
                        tenant,
                        scope.clone(),
                        Some(*id),
                        AuditAction::TransitionsMissed {
                            held,
                            reported_from: from,
                        },
                    );
                }
                self.log(
                    now_ms,
                    Actor::Device(*id),
                    tenant,
                    scope,
                    Some(*id),
                    AuditAction::Transition {
                        from,
                        event,
                        to: now,
                    },
                );
                Ok(now)
            }
            Err(e) => {
                let error = match e {
                    ReportError::IllegalTransition(error) => error,
                    _ => TransitionError { state: from, event },
                };
                if e != ReportError::NotRegistered {
                    self.log(
                        now_ms,
                        Actor::Device(*id),
                        tenant,
                        scope,
                        Some(*id),
                        AuditAction::IllegalTransitionFlagged { error, claimed: to },
                    );
                }
                Err(e.into())
            }
        }
    }

    /// Meters `usage` (messages received, bytes stored) for the device. Audited as one
    /// `UsageRecorded` entry per call (none for an all-zero usage), so the ingest pipeline
    /// should pass aggregates (per device and billing interval), not single messages.
    pub fn record_usage(
        &mut self,
        id: &DeviceId,
        usage: Usage,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        self.touch(id, now_ms)?;
        if usage == Usage::default() {
            return Ok(());
        }
        let Some(record) = self.registry.device_mut(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        record.usage.add(usage);
        let (tenant, scope) = (record.tenant, record.scope.clone());
        self.log(
            now_ms,
            Actor::Device(*id),
            tenant,
            scope,
            Some(*id),
            AuditAction::UsageRecorded { usage },
        );
        Ok(())
    }

    /// The shadow of an imported device (`None` for an id the registry does not hold).
    fn shadow_mut(&mut self, id: &DeviceId) -> Option<&mut ServerShadow> {
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

    /// The lifecycle state of a registered device, for answering the device itself.
    pub fn device_state(&self, id: &DeviceId) -> Option<State> {
        self.registry.device(id).map(|r| r.state)
    }

    /// The device's own shadow, for answering the device itself (its transport session
    /// authenticated it; tenants read shadows with [`Fleet::shadow`]).
    pub fn device_shadow(&self, id: &DeviceId) -> Option<&ServerShadow> {
        self.shadows.get(self.registry.slot_of(id)?)
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
            self.log(
                now_ms,
                Actor::Device(*id),
                tenant,
                scope,
                Some(*id),
                AuditAction::ShadowUpdated {
                    version: outcome.version,
                },
            );
        }
        Ok(outcome)
    }

    /// Marks every device not heard from within the heartbeat timeout as offline and
    /// returns the newly offline ones.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<DeviceId> {
        let timeout = self.policy.heartbeat_timeout_ms;
        let mut newly: Vec<(DeviceId, TenantId, Scope)> = Vec::new();
        for record in self.registry.all_devices_mut() {
            if record.online && now_ms.saturating_sub(record.last_seen_ms) > timeout {
                record.online = false;
                newly.push((record.id, record.tenant, record.scope.clone()));
            }
        }
        // Audited in (tenant, device id) order, whatever the storage order.
        newly.sort_unstable_by_key(|(id, tenant, _)| (*tenant, *id));
        let mut ids = Vec::with_capacity(newly.len());
        for (id, tenant, scope) in newly {
            self.log(
                now_ms,
                Actor::System,
                tenant,
                scope,
                Some(id),
                AuditAction::MarkedOffline,
            );
            ids.push(id);
        }
        ids
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
        self.log(
            now_ms,
            Actor::Device(*id),
            tenant,
            scope,
            Some(*id),
            AuditAction::UpdateReported { rollout, success },
        );
        if let Some(action) = decision(rollout, progress) {
            self.log(now_ms, Actor::System, tenant, rollout_scope, None, action);
        }
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
            self.log(
                now_ms,
                Actor::System,
                tenant,
                scope,
                Some(*id),
                AuditAction::UpdateTimedOut { rollout },
            );
        }
        if let Some(action) = decision(rollout, expiry.progress) {
            self.log(now_ms, Actor::System, tenant, rollout_scope, None, action);
        }
        Some(RolloutTimeouts {
            tenant,
            rollout,
            expiry,
        })
    }

    // ----- tenant-facing reads -----------------------------------------------------------

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

    /// Device counts by health and lifecycle state in `scope`, broken down by the scopes
    /// one level below it.
    pub fn health_report(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
    ) -> Result<HealthReport, FleetError> {
        let mut counts = HealthCounts::default();
        let mut children: BTreeMap<Scope, HealthCounts> = BTreeMap::new();
        for record in self.devices_in(p, scope)? {
            let status = health::status_of(record, now_ms, &self.policy);
            counts.add(status, record.state);
            if let Some(child) = scope.next_step_towards(&record.scope) {
                children.entry(child).or_default().add(status, record.state);
            }
        }
        Ok(HealthReport {
            tenant: p.tenant,
            scope: scope.clone(),
            at_ms: now_ms,
            counts,
            children,
        })
    }

    /// Battery replacements in `scope` predicted within `horizon_ms` from now, soonest
    /// first (ties by device id).
    pub fn battery_schedule(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
        horizon_ms: u64,
    ) -> Result<Vec<BatteryReplacement>, FleetError> {
        let until = now_ms.saturating_add(horizon_ms);
        let level = self.policy.replace_at_percent;
        let mut plan: Vec<BatteryReplacement> = self
            .devices_in(p, scope)?
            .filter_map(|r| {
                let predicted_at_ms = r.battery.predict_time_at(level)?;
                let battery_percent = r.battery.latest()?;
                (predicted_at_ms <= until).then(|| BatteryReplacement {
                    device: r.id,
                    scope: r.scope.clone(),
                    predicted_at_ms,
                    battery_percent,
                })
            })
            .collect();
        plan.sort_by_key(|b| (b.predicted_at_ms, b.device));
        Ok(plan)
    }

    /// Metering of `scope`: current devices, usage and availability, including devices
    /// decommissioned there up to their decommissioning.
    pub fn metering(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
    ) -> Result<TenantMetering, FleetError> {
        let mut total = TenantMetering::default();
        for record in self.devices_in(p, scope)? {
            total.devices = total.devices.saturating_add(1);
            total.usage.add(record.usage);
            total.availability.add(availability_of(record, now_ms));
        }
        let retired = self
            .retired
            .range((p.tenant, Scope::root())..)
            .take_while(|((t, _), _)| *t == p.tenant)
            .filter(|((_, s), _)| scope.contains(s));
        for (_, m) in retired {
            total.usage.add(m.usage);
            total.availability.add(m.availability);
        }
        Ok(total)
    }

    /// The audit entries the caller may read, oldest first.
    pub fn audit_trail<'a>(
        &'a self,
        p: &'a Principal,
    ) -> impl Iterator<Item = &'a AuditEntry> + 'a {
        self.audit.visible_to(p)
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

    // ----- tenant-facing writes ----------------------------------------------------------

    /// An operator applies a lifecycle `event` to a device (for example `ManualIntervention`
    /// or `ScheduledUpdate`), validated like a device report. Needs `Operator`.
    pub fn request_transition(
        &mut self,
        p: &Principal,
        id: &DeviceId,
        event: Event,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        let record = self.visible_device(p, id, Role::Operator)?;
        let from = record.state;
        let to = transition(from, event)?;
        let scope = record.scope.clone();
        if let Some(record) = self.registry.device_mut(id) {
            record.state = to;
        }
        if from != to {
            self.log(
                now_ms,
                Actor::Principal(p.actor.clone()),
                p.tenant,
                scope,
                Some(*id),
                AuditAction::Transition { from, event, to },
            );
        }
        Ok(to)
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
            self.log(
                now_ms,
                Actor::Principal(p.actor.clone()),
                p.tenant,
                scope,
                Some(*id),
                AuditAction::ShadowUpdated {
                    version: outcome.version,
                },
            );
        }
        Ok(outcome)
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
            self.log(
                now_ms,
                Actor::Principal(p.actor.clone()),
                p.tenant,
                to.clone(),
                Some(*id),
                AuditAction::Moved { from },
            );
        }
        Ok(())
    }

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
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            scope.clone(),
            None,
            AuditAction::RolloutStarted {
                rollout: id,
                version: String::from(version),
            },
        );
        Ok(id)
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
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
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
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            scope.clone(),
            None,
            AuditAction::RolloutResumed { rollout },
        );
        if let Some(action) = decision(rollout, progress) {
            self.log(now_ms, Actor::System, p.tenant, scope, None, action);
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
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            scope,
            None,
            AuditAction::RolloutAborted { rollout, stage },
        );
        Ok(())
    }

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
        self.log(
            now_ms,
            Actor::Principal(p.actor.clone()),
            p.tenant,
            record.scope,
            Some(*id),
            AuditAction::Decommissioned { previous, forced },
        );
        for (scope, action) in decisions {
            self.log(now_ms, Actor::System, p.tenant, scope, None, action);
        }
        Ok(Decommissioned { previous, forced })
    }
}

mod persist;

/// Device shadows in dense storage, by the registry's slot numbers.
#[derive(Debug)]
struct Shadows {
    slots: Vec<Option<ServerShadow>>,
    count: usize,
}

impl Shadows {
    const fn new() -> Self {
        Self {
            slots: Vec::new(),
            count: 0,
        }
    }

    fn get(&self, slot: usize) -> Option<&ServerShadow> {
        self.slots.get(slot)?.as_ref()
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut ServerShadow> {
        self.slots.get_mut(slot)?.as_mut()
    }

    fn remove(&mut self, slot: usize) {
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
