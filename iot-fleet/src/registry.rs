//! The fleet registry and zero-touch provisioning.
//!
//! A tenant imports its manufacturing list ([`ManufacturingRecord`]: device id, secret, SKU,
//! serial) and optionally [`AssignmentRule`]s that map a SKU or a serial range to a scope.
//! A device registers in two steps, as iot-lifecycle's registration protocol has it: it asks,
//! the backend records a fresh challenge nonce ([`Registry::challenge`]), and the device
//! answers with its proof. When a device registers for the first time with a valid answer
//! (see [`crate::proof`]), the
//! registry creates its [`DeviceRecord`], assigns it to the scope of the first matching rule
//! (or the scope the list was imported into) and moves it `Unprovisioned ->
//! Provisioning` with the device's own state machine ([`iot_lifecycle::transition`]). No
//! operator step is involved. Unknown and revoked identities, bad proofs and missing,
//! reused or expired challenges are refused with a [`RegistrationError`] that says which.
//!
//! Afterwards the device reports its transitions; [`Registry::apply_reported`] validates
//! each one with the same `transition` function the device runs, and an illegal one is
//! flagged on the record (counted, last error kept) and **not** applied.
//!
//! The registry does no access control: [`crate::Fleet`] checks the caller first.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use iot_core::{DeviceId, Error, ErrorKind, TenantId};
use iot_lifecycle::{Event, State, TransitionError, transition};
use zeroize::Zeroizing;

use crate::access::Scope;
use crate::battery::BatteryHistory;
use crate::index::DeviceIndex;
use crate::metering::Usage;
use crate::proof::{ChallengeAnswer, Nonce, ProofVerifier, SECRET_LEN};

/// How long a challenge stays valid (60 s).
pub const CHALLENGE_TTL_MS: u64 = 60_000;

/// One line of a manufacturing list.
#[derive(Clone, PartialEq, Eq)]
pub struct ManufacturingRecord {
    /// The identity the device will register with.
    pub device_id: DeviceId,
    /// The factory secret (the HMAC key of the registration proof).
    pub secret: [u8; SECRET_LEN],
    /// Stock-keeping unit (product variant).
    pub sku: String,
    /// Manufacturer's serial number.
    pub serial: u64,
}

impl fmt::Debug for ManufacturingRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManufacturingRecord")
            .field("device_id", &self.device_id)
            .field("secret", &"<redacted>")
            .field("sku", &self.sku)
            .field("serial", &self.serial)
            .finish()
    }
}

/// Which devices an [`AssignmentRule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Matcher {
    /// Devices of this SKU.
    Sku(String),
    /// Devices whose serial lies in `first..=last`.
    SerialRange {
        /// First serial (inclusive).
        first: u64,
        /// Last serial (inclusive).
        last: u64,
    },
}

impl Matcher {
    /// Whether a device with `sku` and `serial` matches.
    pub fn matches(&self, sku: &str, serial: u64) -> bool {
        match self {
            Self::Sku(s) => s == sku,
            Self::SerialRange { first, last } => (*first..=*last).contains(&serial),
        }
    }
}

/// Zero-touch assignment: devices matching `matcher` go to `scope` when they first register.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AssignmentRule {
    /// Which devices.
    pub matcher: Matcher,
    /// Where they go.
    pub scope: Scope,
}

/// Why a manufacturing list was not imported. Imports are all-or-nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The id is already in a manufacturing list (device ids are global: a device does not
    /// know its tenant when it first registers) or twice in this one.
    #[error("device {0} is already imported")]
    Duplicate(DeviceId),
    /// The record's secret is all zeros (a wiped or unset secret).
    #[error("device {0} has an all-zero secret")]
    ZeroSecret(DeviceId),
    /// The registry holds as many identities as its slot numbers (`u32`) can address.
    #[error("the registry is full")]
    Full,
}

impl Error for ImportError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Duplicate(_) => ErrorKind::Conflict,
            Self::ZeroSecret(_) => ErrorKind::InvalidInput,
            Self::Full => ErrorKind::Capacity,
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum RegistrationError {
    /// The id is in no manufacturing list.
    #[error("unknown device identity")]
    UnknownDevice,
    /// The identity was revoked (the device was decommissioned).
    #[error("device identity is revoked")]
    Revoked,
    /// The proof was not made with the device's secret.
    #[error("registration proof is invalid")]
    InvalidProof,
    /// No challenge is outstanding for the device, or the answer signs another nonce
    /// (a replayed or reused answer). Ask for a new challenge.
    #[error("no outstanding challenge matches the answer")]
    StaleNonce,
    /// The challenge is older than [`CHALLENGE_TTL_MS`].
    #[error("the challenge has expired")]
    ChallengeExpired,
    /// Another session holds an unexpired challenge for this identity; it is neither
    /// replaced nor invalidated.
    #[error("another session holds the outstanding challenge")]
    ChallengePending,
}

impl RegistrationError {
    /// The wire rejection iot-lifecycle's registration protocol sends to the device.
    pub fn rejection(self) -> iot_lifecycle::registration::RegistrationRejection {
        use iot_lifecycle::registration::RegistrationRejection as R;
        match self {
            Self::UnknownDevice => R::UnknownDevice,
            Self::Revoked => R::Revoked,
            Self::InvalidProof => R::InvalidProof,
            Self::StaleNonce | Self::ChallengeExpired => R::StaleNonce,
            Self::ChallengePending => R::ChallengePending,
        }
    }
}

impl Error for RegistrationError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownDevice => ErrorKind::NotFound,
            Self::Revoked | Self::InvalidProof | Self::StaleNonce => ErrorKind::Unauthorized,
            Self::ChallengeExpired => ErrorKind::Timeout,
            Self::ChallengePending => ErrorKind::Conflict,
        }
    }
}

/// Why a device's report was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum ReportError {
    /// The device is not registered (or was decommissioned).
    #[error("device is not registered")]
    NotRegistered,
    /// The lifecycle does not allow the event in the state the backend holds; flagged.
    #[error(transparent)]
    IllegalTransition(
        #[from]
        #[cfg_attr(feature = "serde", serde(with = "transition_error_serde"))]
        TransitionError,
    ),
    /// The event is legal but the device claims a different resulting state; flagged.
    #[error("device claims {claimed} but {event} leads from {from} to {expected}")]
    StateMismatch {
        /// The state the backend holds.
        from: State,
        /// The reported event.
        event: Event,
        /// Where the lifecycle leads.
        expected: State,
        /// Where the device says it is.
        claimed: State,
    },
}

impl Error for ReportError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotRegistered => ErrorKind::NotFound,
            Self::IllegalTransition(_) | Self::StateMismatch { .. } => ErrorKind::InvalidState,
        }
    }
}

/// Serde for iot-lifecycle's `TransitionError` (which has no serde derive of its own), as
/// `{ state, event }`.
#[cfg(feature = "serde")]
pub(crate) mod transition_error_serde {
    use iot_lifecycle::{Event, State, TransitionError};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Repr {
        state: State,
        event: Event,
    }

    pub(crate) fn serialize<S: serde::Serializer>(
        e: &TransitionError,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(
            &Repr {
                state: e.state,
                event: e.event,
            },
            s,
        )
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<TransitionError, D::Error> {
        let r: Repr = serde::Deserialize::deserialize(d)?;
        Ok(TransitionError {
            state: r.state,
            event: r.event,
        })
    }
}

/// How far along an imported identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentityStatus {
    Imported,
    Registered,
    Revoked,
}

struct Identity {
    tenant: TenantId,
    secret: Zeroizing<[u8; SECRET_LEN]>,
    sku: String,
    serial: u64,
    import_scope: Scope,
    status: IdentityStatus,
    /// The outstanding challenge, when it was issued and the session it was issued to.
    challenge: Option<(Nonce, u64, u64)>,
}

/// Everything the backend knows about a registered device.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceRecord {
    /// The device.
    pub id: DeviceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Where in the tenant it is.
    pub scope: Scope,
    /// Its SKU.
    pub sku: String,
    /// Its serial number.
    pub serial: u64,
    /// Its lifecycle state as validated by the backend.
    pub state: State,
    /// When it first registered.
    pub registered_at_ms: u64,
    /// When it was last heard from.
    pub last_seen_ms: u64,
    /// `false` once a heartbeat timeout marked it offline, until it is heard from again.
    pub online: bool,
    /// Total time spent offline (counted from the last message before each outage).
    pub downtime_ms: u64,
    /// Recent battery readings.
    pub battery: BatteryHistory,
    /// The firmware version it last reported running.
    pub firmware: Option<String>,
    /// How many illegal transitions it reported (flagged, not applied).
    pub illegal_transitions: u32,
    /// The most recent flagged report.
    pub last_flag: Option<ReportError>,
    /// Messages and bytes metered for it.
    pub usage: Usage,
    /// The shadow schema it announced at registration (the fingerprint of its class's
    /// field-policy table; 0: none declared).
    #[cfg_attr(feature = "serde", serde(default))]
    pub schema: u32,
    /// What its telemetry filters did since its boot, as its last heartbeat said (`None`
    /// until a heartbeat carried it).
    #[cfg_attr(feature = "serde", serde(default))]
    pub readings: Option<ReadingTally>,
}

/// Telemetry readings a device sampled and sent since its boot: the edge tier's data
/// reduction is `1 - sent / sampled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ReadingTally {
    /// Readings taken (sent or held back by report-on-change).
    pub sampled: u32,
    /// Readings sent.
    pub sent: u32,
}

/// What a successful registration produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The tenant the device belongs to.
    pub tenant: TenantId,
    /// The scope it was assigned to.
    pub scope: Scope,
    /// Its lifecycle state after registration.
    pub state: State,
    /// `true` for the first registration, `false` for a repeated one.
    pub first: bool,
}

/// One imported device: its identity and, once it registered, its record.
struct Slot {
    id: DeviceId,
    identity: Identity,
    record: Option<DeviceRecord>,
}

/// Identities, assignment rules and device records of every tenant.
///
/// Devices live in dense storage (one slot per imported identity, never removed: a revoked
/// identity stays to refuse later registrations) found through one keyed hash index (see
/// [`crate::index`] for the hasher and why). Listings by id go through a per-tenant
/// ordered index of the registered devices, which only registrations and revocations
/// write.
#[derive(Default)]
pub struct Registry {
    index: DeviceIndex,
    slots: Vec<Slot>,
    rules: BTreeMap<TenantId, Vec<AssignmentRule>>,
    /// Registered devices of each tenant, by id: id -> slot.
    listing: BTreeMap<TenantId, BTreeMap<DeviceId, u32>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("identities", &self.slots.len())
            .field("tenants", &self.listing.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Self {
        Self {
            index: DeviceIndex::new(),
            slots: Vec::new(),
            rules: BTreeMap::new(),
            listing: BTreeMap::new(),
        }
    }

    /// The slot number of `id` in the dense storage (stable for the registry's lifetime:
    /// slots are never removed), if it was imported.
    pub(crate) fn slot_of(&self, id: &DeviceId) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(id, |s| slots.get(s as usize).map(|slot| &slot.id))
            .map(|s| s as usize)
    }

    /// The record of slot `slot`, if the device is registered.
    pub(crate) fn record_at(&self, slot: usize) -> Option<&DeviceRecord> {
        self.slots.get(slot)?.record.as_ref()
    }

    /// The record of slot `slot`, mutable.
    pub(crate) fn record_at_mut(&mut self, slot: usize) -> Option<&mut DeviceRecord> {
        self.slots.get_mut(slot)?.record.as_mut()
    }

    /// Re-keys the device index with a secret 128-bit `key` (see [`crate::index`]); the
    /// index is rebuilt.
    pub fn set_index_key(&mut self, key: [u8; 16]) {
        let slots = &self.slots;
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        self.index
            .rekey(key, count, |s| slots.get(s as usize).map(|slot| &slot.id));
    }

    fn identity(&self, id: &DeviceId) -> Option<&Identity> {
        let slot = self.slot_of(id)?;
        self.slots.get(slot).map(|s| &s.identity)
    }

    fn identity_mut(&mut self, id: &DeviceId) -> Option<&mut Identity> {
        let slot = self.slot_of(id)?;
        self.slots.get_mut(slot).map(|s| &mut s.identity)
    }

    /// Adds a slot for `id` (not imported yet) and returns its number.
    fn push_slot(&mut self, id: DeviceId, identity: Identity) -> u32 {
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            id,
            identity,
            record: None,
        });
        let slots = &self.slots;
        self.index
            .insert(&id, slot, |s| slots.get(s as usize).map(|slot| &slot.id));
        slot
    }

    /// Imports `records` for `tenant`; devices no rule matches go to `scope`. All or nothing.
    pub fn import(
        &mut self,
        tenant: TenantId,
        scope: &Scope,
        records: Vec<ManufacturingRecord>,
    ) -> Result<u32, ImportError> {
        let mut seen = alloc::collections::BTreeSet::new();
        for r in &records {
            if r.secret.iter().all(|b| *b == 0) {
                return Err(ImportError::ZeroSecret(r.device_id));
            }
            if self.slot_of(&r.device_id).is_some() || !seen.insert(r.device_id) {
                return Err(ImportError::Duplicate(r.device_id));
            }
        }
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        if self.slots.len().saturating_add(records.len()) > u32::MAX as usize {
            return Err(ImportError::Full);
        }
        self.slots.reserve(records.len());
        for r in records {
            self.push_slot(
                r.device_id,
                Identity {
                    tenant,
                    secret: Zeroizing::new(r.secret),
                    sku: r.sku,
                    serial: r.serial,
                    import_scope: scope.clone(),
                    status: IdentityStatus::Imported,
                    challenge: None,
                },
            );
        }
        Ok(count)
    }

    /// Adds a zero-touch assignment rule for `tenant`; earlier rules win.
    pub fn add_rule(&mut self, tenant: TenantId, rule: AssignmentRule) {
        self.rules.entry(tenant).or_default().push(rule);
    }

    /// The tenant an identity was imported for, whatever its status.
    pub fn identity_tenant(&self, id: &DeviceId) -> Option<TenantId> {
        self.identity(id).map(|i| i.tenant)
    }

    /// Whether the identity was revoked.
    pub fn is_revoked(&self, id: &DeviceId) -> bool {
        self.identity(id)
            .is_some_and(|i| i.status == IdentityStatus::Revoked)
    }

    /// Records `nonce` (fresh and unpredictable: the caller draws it from a CSPRNG) as the
    /// device's outstanding challenge for transport session `session`, and returns the
    /// nonce to send. While a challenge is outstanding (not yet answered, not expired), a
    /// request from the same session gets the same nonce again, and a request from any
    /// other session is refused with [`RegistrationError::ChallengePending`]: nobody but the
    /// session that asked can replace or invalidate it.
    pub fn challenge(
        &mut self,
        id: &DeviceId,
        session: u64,
        nonce: Nonce,
        now_ms: u64,
    ) -> Result<Nonce, RegistrationError> {
        let identity = self
            .identity_mut(id)
            .ok_or(RegistrationError::UnknownDevice)?;
        if identity.status == IdentityStatus::Revoked {
            return Err(RegistrationError::Revoked);
        }
        if let Some((outstanding, issued_ms, owner)) = identity.challenge
            && now_ms.saturating_sub(issued_ms) <= CHALLENGE_TTL_MS
        {
            return if owner == session {
                Ok(outstanding)
            } else {
                Err(RegistrationError::ChallengePending)
            };
        }
        identity.challenge = Some((nonce, now_ms, session));
        Ok(nonce)
    }

    /// Registers `id` if `answer` signs its outstanding challenge with its secret. The
    /// challenge is consumed by every attempt of the session it was issued to, successful
    /// or not; another session's answer is refused without touching it.
    pub fn register<V: ProofVerifier + ?Sized>(
        &mut self,
        id: &DeviceId,
        session: u64,
        answer: &ChallengeAnswer,
        verifier: &V,
        now_ms: u64,
    ) -> Result<Registration, RegistrationError> {
        let slot_no = self.slot_of(id).ok_or(RegistrationError::UnknownDevice)?;
        let Self {
            slots,
            rules,
            listing,
            ..
        } = self;
        let slot = slots
            .get_mut(slot_no)
            .ok_or(RegistrationError::UnknownDevice)?;
        let identity = &mut slot.identity;
        if identity.status == IdentityStatus::Revoked {
            return Err(RegistrationError::Revoked);
        }
        match identity.challenge {
            Some((_, _, owner)) if owner == session => {}
            _ => return Err(RegistrationError::StaleNonce),
        }
        let (nonce, issued_ms, _) = identity
            .challenge
            .take()
            .ok_or(RegistrationError::StaleNonce)?;
        if nonce != answer.nonce {
            return Err(RegistrationError::StaleNonce);
        }
        if now_ms.saturating_sub(issued_ms) > CHALLENGE_TTL_MS {
            return Err(RegistrationError::ChallengeExpired);
        }
        if !verifier.verify(&identity.secret, id, &answer.nonce, &answer.proof) {
            return Err(RegistrationError::InvalidProof);
        }
        let tenant = identity.tenant;
        if identity.status == IdentityStatus::Registered
            && let Some(record) = slot.record.as_mut()
        {
            record.last_seen_ms = record.last_seen_ms.max(now_ms);
            return Ok(Registration {
                tenant,
                scope: record.scope.clone(),
                state: record.state,
                first: false,
            });
        }
        let scope = rules
            .get(&tenant)
            .and_then(|rules| {
                rules
                    .iter()
                    .find(|r| r.matcher.matches(&identity.sku, identity.serial))
            })
            .map_or_else(|| identity.import_scope.clone(), |r| r.scope.clone());
        // The device runs the same edge: Unprovisioned -RegistrationInitiated-> Provisioning.
        let state = transition(State::Unprovisioned, Event::RegistrationInitiated)
            .unwrap_or(State::Provisioning);
        identity.status = IdentityStatus::Registered;
        listing
            .entry(tenant)
            .or_default()
            .insert(*id, u32::try_from(slot_no).unwrap_or(u32::MAX));
        slot.record = Some(DeviceRecord {
            id: *id,
            tenant,
            scope: scope.clone(),
            sku: identity.sku.clone(),
            serial: identity.serial,
            state,
            registered_at_ms: now_ms,
            last_seen_ms: now_ms,
            online: true,
            downtime_ms: 0,
            battery: BatteryHistory::new(),
            firmware: None,
            illegal_transitions: 0,
            last_flag: None,
            usage: Usage::default(),
            schema: 0,
            readings: None,
        });
        Ok(Registration {
            tenant,
            scope,
            state,
            first: true,
        })
    }

    /// The device's record, whatever its tenant (for the device-facing path).
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceRecord> {
        self.record_at(self.slot_of(id)?)
    }

    /// The device's record, mutable.
    pub fn device_mut(&mut self, id: &DeviceId) -> Option<&mut DeviceRecord> {
        let slot = self.slot_of(id)?;
        self.record_at_mut(slot)
    }

    /// The device's record if it belongs to `tenant` (another tenant's device is `None`).
    pub fn tenant_device(&self, tenant: &TenantId, id: &DeviceId) -> Option<&DeviceRecord> {
        self.device(id).filter(|r| r.tenant == *tenant)
    }

    /// The device's record if it belongs to `tenant`, mutable (another tenant's device is
    /// `None`).
    pub fn tenant_device_mut(
        &mut self,
        tenant: &TenantId,
        id: &DeviceId,
    ) -> Option<&mut DeviceRecord> {
        self.device_mut(id).filter(|r| r.tenant == *tenant)
    }

    /// Every registered device of `tenant`, by id.
    pub fn tenant_devices(&self, tenant: &TenantId) -> impl Iterator<Item = &DeviceRecord> + '_ {
        self.listing
            .get(tenant)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|&slot| self.record_at(slot as usize))
    }

    /// Every registered device of `tenant`, mutable, in no particular order.
    pub fn tenant_devices_mut(
        &mut self,
        tenant: &TenantId,
    ) -> impl Iterator<Item = &mut DeviceRecord> + '_ {
        let tenant = *tenant;
        self.all_devices_mut().filter(move |r| r.tenant == tenant)
    }

    /// Every registered device of every tenant, mutable (heartbeat sweeps), in no
    /// particular order.
    pub fn all_devices_mut(&mut self) -> impl Iterator<Item = &mut DeviceRecord> + '_ {
        self.slots.iter_mut().filter_map(|s| s.record.as_mut())
    }

    /// How many devices are registered (all tenants).
    pub fn registered_count(&self) -> usize {
        self.listing.values().map(BTreeMap::len).sum()
    }

    /// Validates a transition the device reports (`event`, ending in `claimed`) with the
    /// device's own state machine. Legal: applied, returns `(from, to)`. Illegal or
    /// inconsistent: counted on the record as a flag and returned as an error; the state
    /// does not change.
    pub fn apply_reported(
        &mut self,
        id: &DeviceId,
        event: Event,
        claimed: State,
        now_ms: u64,
    ) -> Result<(State, State), ReportError> {
        let record = self.device_mut(id).ok_or(ReportError::NotRegistered)?;
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        let from = record.state;
        let outcome = match transition(from, event) {
            Ok(to) if to == claimed => Ok((from, to)),
            Ok(expected) => Err(ReportError::StateMismatch {
                from,
                event,
                expected,
                claimed,
            }),
            Err(e) => Err(ReportError::IllegalTransition(e)),
        };
        match outcome {
            Ok((_, to)) => record.state = to,
            Err(e) => {
                record.illegal_transitions = record.illegal_transitions.saturating_add(1);
                record.last_flag = Some(e);
            }
        }
        outcome
    }

    /// Applies a transition record the device reports (`from -event-> to`).
    ///
    /// - An edge the lifecycle does not have is flagged and returned as
    ///   [`ReportError::IllegalTransition`]; nothing changes.
    /// - A report ending in the state the backend holds is a redelivered copy: `Ok` with
    ///   `from == to` and no change.
    /// - A legal report starting from the held state is applied: `Ok((held, to))`.
    /// - A legal report starting elsewhere means earlier reports were lost; it is applied
    ///   too (the device's state machine made the edge), `Ok((held, to))` with
    ///   `held != from` tells the caller to record the gap. A decommissioned record never
    ///   moves.
    pub fn apply_report(
        &mut self,
        id: &DeviceId,
        from: State,
        event: Event,
        to: State,
        now_ms: u64,
    ) -> Result<(State, State), ReportError> {
        let record = self.device_mut(id).ok_or(ReportError::NotRegistered)?;
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        let held = record.state;
        let outcome = match transition(from, event) {
            Ok(next) if next != to => Err(ReportError::StateMismatch {
                from,
                event,
                expected: next,
                claimed: to,
            }),
            Ok(_) if held == to => return Ok((held, held)),
            Ok(_) if held == State::Decommissioned => {
                Err(ReportError::IllegalTransition(TransitionError {
                    state: held,
                    event,
                }))
            }
            Ok(_) => Ok((held, to)),
            Err(e) => Err(ReportError::IllegalTransition(e)),
        };
        match outcome {
            Ok((_, to)) => record.state = to,
            Err(e) => {
                record.illegal_transitions = record.illegal_transitions.saturating_add(1);
                record.last_flag = Some(e);
            }
        }
        outcome
    }

    /// Revokes the identity (the secret is zeroed and dropped) and removes the device
    /// record, which is returned. Later registrations fail with `Revoked`.
    pub fn revoke(&mut self, id: &DeviceId) -> Option<DeviceRecord> {
        let slot_no = self.slot_of(id)?;
        let slot = self.slots.get_mut(slot_no)?;
        let identity = &mut slot.identity;
        identity.status = IdentityStatus::Revoked;
        // `Zeroizing` wipes the old secret when it is replaced.
        identity.secret = Zeroizing::new([0; SECRET_LEN]);
        identity.challenge = None;
        let tenant = identity.tenant;
        let record = slot.record.take();
        if let Some(listed) = self.listing.get_mut(&tenant) {
            listed.remove(id);
            if listed.is_empty() {
                self.listing.remove(&tenant);
            }
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::{LifecycleHmac, answer};

    fn secret(id: &str) -> [u8; 32] {
        let mut s = [1u8; 32];
        for (d, b) in s.iter_mut().zip(id.bytes()) {
            *d = b;
        }
        s
    }

    fn rec(id: &str, sku: &str, serial: u64) -> ManufacturingRecord {
        ManufacturingRecord {
            device_id: DeviceId::new(id).unwrap(),
            secret: secret(id),
            sku: sku.into(),
            serial,
        }
    }

    fn register(r: &mut Registry, id: &str, nonce: u8) -> Result<Registration, RegistrationError> {
        let dev = DeviceId::new(id).unwrap();
        r.challenge(&dev, 0, [nonce; 16], 1000)?;
        r.register(
            &dev,
            0,
            &answer(&secret(id), &dev, &[nonce; 16]),
            &LifecycleHmac,
            1000,
        )
    }

    fn setup() -> Registry {
        let acme = TenantId::new("acme").unwrap();
        let mut r = Registry::new();
        r.import(
            acme,
            &"unsorted".parse().unwrap(),
            alloc::vec![rec("a", "TH-1", 10), rec("b", "CO2", 500), rec("c", "X", 9)],
        )
        .unwrap();
        r.add_rule(
            acme,
            AssignmentRule {
                matcher: Matcher::Sku("TH-1".into()),
                scope: "eu/b1".parse().unwrap(),
            },
        );
        r.add_rule(
            acme,
            AssignmentRule {
                matcher: Matcher::SerialRange {
                    first: 100,
                    last: 999,
                },
                scope: "eu/b2".parse().unwrap(),
            },
        );
        r
    }

    #[test]
    fn zero_touch_assignment_by_sku_serial_or_import_scope() {
        let mut r = setup();
        let a = register(&mut r, "a", 1).unwrap();
        assert_eq!(a.scope.as_str(), "eu/b1");
        assert_eq!(a.state, State::Provisioning);
        assert!(a.first);
        assert_eq!(register(&mut r, "b", 1).unwrap().scope.as_str(), "eu/b2");
        assert_eq!(register(&mut r, "c", 1).unwrap().scope.as_str(), "unsorted");
        assert_eq!(r.registered_count(), 3);
    }

    #[test]
    fn rejections_are_specific() {
        let mut r = setup();
        assert_eq!(
            register(&mut r, "zzz", 1),
            Err(RegistrationError::UnknownDevice)
        );
        let a = DeviceId::new("a").unwrap();
        let good = answer(&secret("a"), &a, &[1; 16]);
        // No challenge outstanding.
        assert_eq!(
            r.register(&a, 0, &good, &LifecycleHmac, 0),
            Err(RegistrationError::StaleNonce)
        );
        r.challenge(&a, 0, [1; 16], 0).unwrap();
        let bad = answer(&[9; 32], &a, &[1; 16]);
        assert_eq!(
            r.register(&a, 0, &bad, &LifecycleHmac, 0),
            Err(RegistrationError::InvalidProof)
        );
        // The failed attempt consumed the challenge: the good answer is now stale.
        assert_eq!(
            r.register(&a, 0, &good, &LifecycleHmac, 0),
            Err(RegistrationError::StaleNonce)
        );
        r.challenge(&a, 0, [2; 16], 0).unwrap();
        assert_eq!(
            r.register(&a, 0, &good, &LifecycleHmac, 0),
            Err(RegistrationError::StaleNonce),
            "an answer to another nonce"
        );
        r.challenge(&a, 0, [1; 16], 0).unwrap();
        assert_eq!(
            r.register(&a, 0, &good, &LifecycleHmac, CHALLENGE_TTL_MS + 1),
            Err(RegistrationError::ChallengeExpired)
        );
        assert_eq!(r.registered_count(), 0);
        register(&mut r, "a", 5).unwrap();
        // Replaying the accepted answer fails: the challenge was used up.
        let replay = answer(&secret("a"), &a, &[5; 16]);
        assert_eq!(
            r.register(&a, 0, &replay, &LifecycleHmac, 1000),
            Err(RegistrationError::StaleNonce)
        );
        let again = register(&mut r, "a", 6).unwrap();
        assert!(!again.first);
        assert!(r.revoke(&a).is_some());
        assert_eq!(register(&mut r, "a", 7), Err(RegistrationError::Revoked));
        assert_eq!(RegistrationError::Revoked.kind(), ErrorKind::Unauthorized);
        assert_eq!(
            RegistrationError::ChallengeExpired.rejection(),
            iot_lifecycle::registration::RegistrationRejection::StaleNonce
        );
    }

    #[test]
    fn import_is_all_or_nothing() {
        let mut r = setup();
        let other = TenantId::new("other").unwrap();
        let err = r
            .import(
                other,
                &Scope::root(),
                alloc::vec![rec("new", "X", 1), rec("a", "X", 1)],
            )
            .unwrap_err();
        assert_eq!(err, ImportError::Duplicate(DeviceId::new("a").unwrap()));
        assert!(r.identity_tenant(&DeviceId::new("new").unwrap()).is_none());
        let mut zero = rec("e", "X", 1);
        zero.secret = [0; 32];
        assert!(matches!(
            r.import(other, &Scope::root(), alloc::vec![zero]),
            Err(ImportError::ZeroSecret(_))
        ));
    }

    #[test]
    fn reported_transitions_are_validated_with_the_device_state_machine() {
        let mut r = setup();
        register(&mut r, "a", 1).unwrap();
        let a = DeviceId::new("a").unwrap();
        assert_eq!(
            r.apply_reported(&a, Event::ConfigComplete, State::Active, 2000),
            Ok((State::Provisioning, State::Active))
        );
        // Illegal: Active has no UpdateComplete edge.
        let err = r
            .apply_reported(&a, Event::UpdateComplete, State::Active, 3000)
            .unwrap_err();
        assert!(matches!(err, ReportError::IllegalTransition(_)));
        // Legal event, wrong claimed state.
        let err = r
            .apply_reported(&a, Event::HealthCheckFailed, State::Maintenance, 4000)
            .unwrap_err();
        assert_eq!(
            err,
            ReportError::StateMismatch {
                from: State::Active,
                event: Event::HealthCheckFailed,
                expected: State::Degraded,
                claimed: State::Maintenance
            }
        );
        let rec = r.device(&a).unwrap();
        assert_eq!(rec.state, State::Active);
        assert_eq!(rec.illegal_transitions, 2);
        assert_eq!(rec.last_flag, Some(err));
        assert_eq!(rec.last_seen_ms, 4000);
    }

    #[test]
    fn manufacturing_record_debug_hides_the_secret() {
        let mut r = rec("a", "X", 1);
        r.secret = [0xAB; 32];
        let text = alloc::format!("{r:?}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("redacted"));
    }
}

mod persist;
pub use persist::{CredentialStatus, SavedIdentity};
