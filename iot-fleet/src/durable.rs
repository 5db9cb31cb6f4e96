//! Durable before acknowledged: [`DurableServer`] runs a [`DeviceServer`] over an
//! [`iot_store::Store`] (feature `durable`, std only).
//!
//! The server stays a sans-IO state machine; this binding adds the store around it:
//!
//! 1. **Collect.** After each device message or operator action the binding drains the
//!    fleet's journal of new audit entries ([`crate::Fleet::take_audit`], journal mode keeps no
//!    other copy) and compares the served device's shadow version before and after. That is
//!    the whole change journal: every state change worth keeping is either audited (the
//!    entry names the device, and for rollout decisions the rollout) or moves a shadow
//!    version. The ops are: the device record of every device an entry names (identity,
//!    secret, credential status, lifecycle state, the fleet's record; a shadow-only entry
//!    does not rewrite the record), the served device's shadow with compare-and-swap on the
//!    version the binding saw before the call, every rollout an entry names (as a blob), and
//!    every new audit entry. Each message's ops form one atomic [`Batch`].
//! 2. **Persist.** The batches of all messages handed in together go to the store's
//!    [`GroupCommit`] as one submission (one transaction, one fsync).
//! 3. **Acknowledge.** Replies are released only when that transaction committed. When
//!    it fails (or a compare-and-swap finds another writer's version) no reply of the
//!    submission is released, and the binding stops ([`DurableError::Stopped`]): its memory
//!    is ahead of the store, so the caller reopens it from the store
//!    ([`DurableServer::shutdown`], then [`DurableServer::open`]).
//!
//! **Restart.** [`DurableServer::open`] reads tenants (their assignment rules), device
//! records (identities with their secrets, registered devices' records), shadows and
//! rollouts back into an empty fleet, then starts the group-commit writer. The audit trail
//! stays in the store: new entries chain on to the stored head there.
//!
//! **Memory.** The audit trail is not kept in memory (journal mode: entries live only
//! between a call and its commit); the group-commit queue is bounded. What stays in memory
//! is the working set: one record, identity and shadow per device, and the rollouts,
//! proportional to the fleet, not to uptime.
//!
//! **Not persisted** (documented limits): outstanding registration challenges (single-use,
//! 60 s; a device whose challenge was lost asks again), heartbeat times between audited
//! changes (after a restart, [`DurableServer::open_at`] and [`DurableServer::restart`] count
//! devices that were online as seen at the restart), the metering totals of decommissioned
//! devices, published firmware images (the operator publishes them again at start) and
//! which OTA jobs went out (jobs are delivered at least once).

use std::boxed::Box;
use std::collections::{BTreeMap, BTreeSet};
use std::string::{String, ToString};
use std::vec::Vec;

use iot_core::{DeviceId, EnvelopeRef, TenantId};
use iot_lifecycle::State;
use iot_lifecycle::ota::OtaJob;
use iot_lifecycle::registration::DecommissionReason;
use iot_shadow::Value;
use iot_store::audit::AuditEvent;
use iot_store::{
    Batch, GroupCommit, GroupCommitConfig, GroupCommitHandle, Lease, MAX_PAGE, Op, PendingAll,
    ShadowExpect, Store, StoreError,
};

use crate::access::{Principal, Scope};
use crate::audit::{Actor, AuditAction, AuditEntry};
use crate::fleet::{Decommissioned, FleetError, ScopedRollout};
use crate::registry::{AssignmentRule, CredentialStatus, DeviceRecord, ManufacturingRecord};
use crate::rollout::{RolloutConfig, RolloutStatus};
use crate::server::{DeviceServer, Handled, Reply, ServerError, Session};

/// Why a durable call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The server refused the message or action (nothing changed, or a flagged report was
    /// made durable before this refusal was returned).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The store failed; nothing of the submission was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record cannot be read back by this build.
    #[error("stored {what} cannot be decoded: {detail}")]
    Decode {
        /// What kind of record.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A record could not be encoded for the store.
    #[error("cannot encode {0} for the store")]
    Encode(&'static str),
    /// An earlier store failure left the in-memory state ahead of the store: nothing more
    /// is acknowledged. Reopen the server from the store.
    #[error("durable server stopped after a store failure; reopen it from the store")]
    Stopped,
    /// [`DurableServer::open`] was given a server whose fleet already holds devices.
    #[error("the server's fleet must be empty when it is opened from a store")]
    NotEmpty,
    /// Another node sharing the store changed a record this node's copy of was stale
    /// ([`DurableServer::open_shared`]): nothing of the message or action was kept or
    /// acknowledged, the node read those records again, and it may be sent again.
    #[error("another node changed the records this needs; they were read again, send it again")]
    Conflict,
    /// The operation is not available on a [`ShardedServer`] with more than one shard.
    #[error("not supported by a sharded server: {0}")]
    Sharded(&'static str),
}

/// One device message handed to [`DurableServer::submit`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The transport session it arrived in.
    pub session: Session,
    /// The envelope.
    pub envelope: EnvelopeRef<'a>,
    /// When it arrived, in backend milliseconds.
    pub now_ms: u64,
}

/// Messages submitted together on their way to durability; [`DurableServer::wait`]
/// returns their results once their transaction committed.
#[derive(Debug)]
#[must_use = "replies may be sent only once `wait` returned them"]
pub struct Ticket {
    pending: Option<PendingAll>,
    results: Vec<Result<Handled, DurableError>>,
    /// Per message, the index of its batch in the submission (`None`: nothing to save).
    slots: Vec<Option<usize>>,
    /// Per batch, what it wrote or relied on (shared mode only).
    touched: Vec<Touched>,
}

/// The records a batch wrote or relied on: what a node sharing the store reads again when
/// the batch found them changed by another node.
#[derive(Debug, Default)]
struct Touched {
    devices: BTreeSet<DeviceId>,
    /// Store ids.
    rollouts: BTreeSet<u64>,
}

/// What a node that shares its store with other nodes keeps besides the fleet.
struct Shared {
    /// A second connection, for reading records again while the writer owns the first.
    reader: Box<dyn Store + Send>,
    /// The revision ([`Op::Revise`]) each cached device record was read or written at; a
    /// device not here is read from the store before this node serves it.
    devices: BTreeMap<DeviceId, u64>,
    /// The revision of each cached rollout, by store id.
    rollouts: BTreeMap<u64, u64>,
}

fn device_key(device: &DeviceId) -> String {
    let mut key = String::from("device/");
    key.push_str(device.as_str());
    key
}

fn rollout_key(id: u64) -> String {
    let mut key = String::from("rollout/");
    key.push_str(&id.to_string());
    key
}

/// What a stored device record's credential blob holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCredential {
    identity: crate::registry::SavedIdentity,
    record: Option<DeviceRecord>,
}

/// What a stored tenant's configuration blob holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTenant {
    rules: Vec<AssignmentRule>,
}

/// What a stored rollout's plan blob holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRollout {
    /// The tenant-local id.
    id: u32,
    scoped: ScopedRollout,
}

pub use crate::audit::action_code;

/// An audit entry's payload: what the fixed fields of the store's entry do not say.
#[derive(serde::Serialize)]
struct AuditPayload<'a> {
    actor: &'a Actor,
    scope: &'a Scope,
    action: &'a AuditAction,
}

/// The rollout an audit action concerns, if any.
const fn rollout_of(action: &AuditAction) -> Option<u32> {
    match action {
        AuditAction::RolloutStarted { rollout, .. }
        | AuditAction::UpdateReported { rollout, .. }
        | AuditAction::UpdateTimedOut { rollout, .. }
        | AuditAction::RolloutPaused { rollout, .. }
        | AuditAction::RolloutResumed { rollout, .. }
        | AuditAction::RolloutAborted { rollout, .. }
        | AuditAction::RolloutAdvanced { rollout, .. }
        | AuditAction::RolloutHalted { rollout, .. }
        | AuditAction::RolloutCompleted { rollout, .. } => Some(*rollout),
        _ => None,
    }
}

const fn status_code(status: RolloutStatus) -> u8 {
    match status {
        RolloutStatus::Running { .. } => 1,
        RolloutStatus::Halted { .. } => 2,
        RolloutStatus::Completed => 3,
        RolloutStatus::Paused { .. } => 4,
        RolloutStatus::Aborted { .. } => 5,
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, DurableError> {
    serde_json::from_slice(bytes).map_err(|e| DurableError::Decode {
        what,
        detail: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, DurableError> {
    serde_json::to_vec(value).map_err(|_| DurableError::Encode(what))
}

/// A [`DeviceServer`] whose every acknowledged change is in an [`iot_store::Store`]. See
/// the [module documentation](self).
pub struct DurableServer {
    server: DeviceServer,
    /// The writer (`None` while [`DurableServer::restart`] swaps it, and after a restart
    /// that could not read the store back).
    group: Option<GroupCommit>,
    /// The store of a restart that could not read it back (for example, PostgreSQL was
    /// unreachable): the next [`DurableServer::restart`] tries it again.
    parked: Option<Box<dyn Store + Send>>,
    config: GroupCommitConfig,
    handle: GroupCommitHandle,
    /// Store ids of rollouts, by tenant and tenant-local id.
    rollout_keys: BTreeMap<(TenantId, u32), u64>,
    next_rollout_key: u64,
    stopped: bool,
    /// Present when other nodes write the same store ([`DurableServer::open_shared`]).
    shared: Option<Shared>,
}

impl core::fmt::Debug for DurableServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DurableServer")
            .field("server", &self.server)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl DurableServer {
    /// Restores the state saved in `store` into `server` (whose fleet must be empty: a
    /// fresh [`crate::Fleet`] with the policy and verifier of the deployment), then starts
    /// the group-commit writer with `config`. A fresh store gives an empty fleet.
    pub fn open(
        store: Box<dyn Store + Send>,
        server: DeviceServer,
        config: GroupCommitConfig,
    ) -> Result<Self, DurableError> {
        Self::open_or_return(store, server, config).map_err(|(e, _)| e)
    }

    /// [`DurableServer::open`], handing the store back when it could not be read.
    fn open_or_return(
        mut store: Box<dyn Store + Send>,
        mut server: DeviceServer,
        config: GroupCommitConfig,
    ) -> Result<Self, (DurableError, Option<Box<dyn Store + Send>>)> {
        if server.fleet().registered_count() > 0 || server.fleet().all_rollouts().next().is_some() {
            return Err((DurableError::NotEmpty, Some(store)));
        }
        let fleet = server.fleet_mut();
        fleet.set_audit_journal(true);
        let _ = fleet.take_audit();
        let mut rollout_keys = BTreeMap::new();
        let mut next_rollout_key = 1u64;
        if let Err(e) = restore(
            &mut *store,
            &mut server,
            &mut rollout_keys,
            &mut next_rollout_key,
            &|_| true,
        ) {
            return Err((e, Some(store)));
        }
        let _ = server.fleet_mut().take_audit();
        let group = GroupCommit::spawn(store, config).map_err(|e| (e.into(), None))?;
        let handle = group.handle();
        Ok(Self {
            server,
            group: Some(group),
            parked: None,
            config,
            handle,
            rollout_keys,
            next_rollout_key,
            stopped: false,
            shared: None,
        })
    }

    /// [`DurableServer::open`] for one of several backend nodes that share `store`'s
    /// database (PostgreSQL), each with its own fleet in memory. The fleet is then a cache:
    ///
    /// - every batch carries, beside the shadow compare-and-swap, a revision check
    ///   ([`Op::Revise`]) of the served device and a revision bump of every device whose
    ///   record or shadow it rewrites and of every rollout it rewrites, so a node whose copy
    ///   is stale cannot overwrite another node's change, nor answer a message that changes
    ///   nothing from a stale copy;
    /// - when a batch finds another node's change, nothing of it is kept, the node reads the
    ///   records it touched again through `reader` (a second connection to the same
    ///   database), and the message is answered with [`DurableError::Conflict`] instead of
    ///   a reply: the device sends it again and it is served from the fresh copy. The node
    ///   goes on serving (a single node instead stops, see [`DurableError::Stopped`]);
    /// - a device this node has not served yet is read from the store first.
    ///
    /// Rollouts should be started through one node (their store ids come from that node's
    /// count); [`DurableServer::refresh_rollouts`] lets the others learn of them.
    pub fn open_shared(
        store: Box<dyn Store + Send>,
        reader: Box<dyn Store + Send>,
        server: DeviceServer,
        config: GroupCommitConfig,
    ) -> Result<Self, DurableError> {
        let mut opened = Self::open(store, server, config)?;
        opened.shared = Some(Shared {
            reader,
            devices: BTreeMap::new(),
            rollouts: BTreeMap::new(),
        });
        Ok(opened)
    }

    /// Whether this node shares its store with others ([`DurableServer::open_shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Reads every stored rollout again (shared mode; a no-op otherwise), so this node
    /// serves rollouts that another node started or advanced.
    pub fn refresh_rollouts(&mut self) -> Result<(), DurableError> {
        let Some(shared) = self.shared.as_mut() else {
            return Ok(());
        };
        let mut touched = Touched::default();
        let mut after = None;
        loop {
            let page = shared.reader.rollouts(after, MAX_PAGE)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            touched.rollouts.extend(page.iter().map(|r| r.id));
        }
        self.reload(&touched)
    }

    /// Puts the revision checks and bumps of shared mode in front of `batch` (see
    /// [`DurableServer::open_shared`]) and returns what it touched; `None` for a single node.
    fn fence(&mut self, batch: &mut Batch, served: &[DeviceId]) -> Option<Touched> {
        let shared = self.shared.as_mut()?;
        let mut touched = Touched::default();
        let mut written = BTreeSet::new();
        for op in &batch.ops {
            match op {
                Op::PutDevice(d) => {
                    written.insert(d.id);
                }
                // A shadow write moves the device's revision too: a node whose shadow copy is
                // stale then finds out on any message of the device, also one that changes
                // nothing (whose answer would otherwise come from the stale copy).
                Op::PutShadow { shadow, .. } => {
                    written.insert(shadow.device);
                }
                Op::DeleteShadow { device, .. } => {
                    written.insert(*device);
                }
                Op::PutRollout(r) => {
                    touched.rollouts.insert(r.id);
                }
                _ => {}
            }
        }
        touched.devices.extend(served.iter().copied());
        touched.devices.extend(written.iter().copied());
        let mut ops = Vec::with_capacity(
            batch
                .ops
                .len()
                .saturating_add(touched.devices.len())
                .saturating_add(touched.rollouts.len()),
        );
        for device in served.iter().chain(&written).collect::<BTreeSet<_>>() {
            let seen = shared.devices.get(device).copied().unwrap_or(0);
            let bump = written.contains(device);
            if bump {
                shared.devices.insert(*device, seen.saturating_add(1));
            }
            ops.push(Op::Revise {
                key: device_key(device),
                expected: seen,
                bump,
            });
        }
        for id in &touched.rollouts {
            let seen = shared.rollouts.get(id).copied().unwrap_or(0);
            shared.rollouts.insert(*id, seen.saturating_add(1));
            ops.push(Op::Revise {
                key: rollout_key(*id),
                expected: seen,
                bump: true,
            });
        }
        ops.append(&mut batch.ops);
        batch.ops = ops;
        Some(touched)
    }

    /// Reads the touched records again from the store into the fleet, with the revisions
    /// they are at (the revision first: a record read after it is at least that new, so a
    /// later write from this copy can only conflict, never overwrite).
    fn reload(&mut self, touched: &Touched) -> Result<(), DurableError> {
        let Self {
            shared,
            server,
            rollout_keys,
            next_rollout_key,
            ..
        } = self;
        let Some(shared) = shared.as_mut() else {
            return Ok(());
        };
        for device in &touched.devices {
            let revision = shared.reader.revision(&device_key(device))?;
            if let Some(stored) = shared.reader.device(device)? {
                let saved: StoredCredential = decode("device record", &stored.credential)?;
                server
                    .fleet_mut()
                    .restore_identity(*device, saved.identity, saved.record);
            }
            let fleet = server.fleet_mut();
            fleet.forget_shadow(device);
            if let Some(shadow) = shared.reader.shadow(device, "")? {
                fleet
                    .restore_shadow(device, &shadow.document, shadow.version)
                    .map_err(|e| DurableError::Decode {
                        what: "shadow",
                        detail: e.to_string(),
                    })?;
            }
            shared.devices.insert(*device, revision);
        }
        for id in &touched.rollouts {
            let revision = shared.reader.revision(&rollout_key(*id))?;
            if let Some(stored) = shared.reader.rollout(*id)? {
                let saved: StoredRollout = decode("rollout", &stored.plan)?;
                rollout_keys.insert((stored.tenant, saved.id), stored.id);
                *next_rollout_key = (*next_rollout_key).max(stored.id.saturating_add(1));
                server
                    .fleet_mut()
                    .restore_rollout(stored.tenant, saved.id, saved.scoped);
            }
            shared.rollouts.insert(*id, revision);
        }
        Ok(())
    }

    /// Reloads what a conflicting batch touched; a node that cannot read its store stops.
    fn after_conflict(&mut self, touched: &Touched) -> DurableError {
        match self.reload(touched) {
            Ok(()) => DurableError::Conflict,
            Err(e) => {
                self.stopped = true;
                e
            }
        }
    }

    /// Restores from `store` into `server` (whose fleet must be empty) the devices `keep`
    /// accepts and every tenant's rules, for one shard of a [`ShardedServer`]. Stored
    /// rollouts are refused: a sharded server does not run them.
    fn restore_shard(
        store: &mut dyn Store,
        server: &mut DeviceServer,
        keep: &dyn Fn(&DeviceId) -> bool,
    ) -> Result<(), DurableError> {
        if server.fleet().registered_count() > 0 || server.fleet().all_rollouts().next().is_some() {
            return Err(DurableError::NotEmpty);
        }
        server.fleet_mut().set_audit_journal(true);
        let _ = server.fleet_mut().take_audit();
        let mut rollout_keys = BTreeMap::new();
        let mut next_rollout_key = 1u64;
        restore(
            store,
            server,
            &mut rollout_keys,
            &mut next_rollout_key,
            keep,
        )?;
        if server.fleet().all_rollouts().next().is_some() {
            return Err(DurableError::Sharded("stored rollouts"));
        }
        let _ = server.fleet_mut().take_audit();
        Ok(())
    }

    /// A restored shard submitting to the shared writer `handle`.
    fn shard(server: DeviceServer, handle: GroupCommitHandle, config: GroupCommitConfig) -> Self {
        Self {
            server,
            group: None,
            parked: None,
            config,
            handle,
            rollout_keys: BTreeMap::new(),
            next_rollout_key: 1,
            stopped: false,
            shared: None,
        }
    }

    /// [`DurableServer::open`], and every device that was online when its record was last
    /// saved counts as seen at `now_ms`: heartbeat times between saved changes are not
    /// stored, so a restarted backend gives each device one heartbeat timeout to be heard
    /// from instead of marking the whole fleet offline.
    pub fn open_at(
        store: Box<dyn Store + Send>,
        server: DeviceServer,
        config: GroupCommitConfig,
        now_ms: u64,
    ) -> Result<Self, DurableError> {
        let mut opened = Self::open(store, server, config)?;
        opened.server.fleet_mut().assume_seen(now_ms);
        Ok(opened)
    }

    /// Commits what is queued, stops the writer and returns the store (to reopen it, or to
    /// read it, for example [`Store::verify_audit`]).
    pub fn shutdown(mut self) -> Result<Box<dyn Store + Send>, DurableError> {
        self.take_store()
    }

    fn take_store(&mut self) -> Result<Box<dyn Store + Send>, DurableError> {
        if let Some(store) = self.parked.take() {
            return Ok(store);
        }
        let group = self.group.take().ok_or(DurableError::Stopped)?;
        Ok(group.shutdown()?)
    }

    /// Restarts the backend in place: stops the writer, then rebuilds `server` (whose fleet
    /// must be empty) from the store, exactly as [`DurableServer::open`] does after a process
    /// restart. This also recovers a server stopped by a store failure: what the store has
    /// is what was acknowledged. On error the server is stopped; when the store could not
    /// be read (a lost PostgreSQL connection, say) it is kept, and a later call tries again
    /// with a fresh `server`: the backend resumes once the database is back.
    ///
    /// Devices that were online count as seen at `now_ms` (see [`DurableServer::open_at`]).
    pub fn restart(&mut self, server: DeviceServer, now_ms: u64) -> Result<(), DurableError> {
        let store = self.take_store()?;
        match Self::open_or_return(store, server, self.config) {
            Ok(mut reopened) => {
                reopened.server.fleet_mut().assume_seen(now_ms);
                // A shared node starts over with no cached revision: every device is read
                // again before it is served.
                reopened.shared = self.shared.take().map(|s| Shared {
                    reader: s.reader,
                    devices: BTreeMap::new(),
                    rollouts: BTreeMap::new(),
                });
                *self = reopened;
                Ok(())
            }
            Err((e, store)) => {
                self.stopped = true;
                self.parked = store;
                Err(e)
            }
        }
    }

    /// Walks the stored audit trail and checks its hash chain
    /// ([`Store::verify_audit`]); the writer pauses meanwhile. Returns the verified head.
    pub fn verify_audit(&mut self) -> Result<iot_store::AuditHead, DurableError> {
        let mut store = self.take_store()?;
        let verified = store.verify_audit();
        let group = GroupCommit::spawn(store, self.config).inspect_err(|_| self.stopped = true)?;
        self.handle = group.handle();
        self.group = Some(group);
        Ok(verified?)
    }

    /// Verifies the stored audit trail's hash chain and reads its newest `last` entries, for
    /// an audit export; the writer pauses meanwhile. Returns the verified head and the
    /// entries, oldest first.
    pub fn audit_tail(
        &mut self,
        last: u32,
    ) -> Result<(iot_store::AuditHead, Vec<iot_store::AuditRecord>), DurableError> {
        let mut store = self.take_store()?;
        let read = store.verify_audit().and_then(|head| {
            let from = head.seq.saturating_sub(u64::from(last)).saturating_add(1);
            store.audit_range(from, last).map(|records| (head, records))
        });
        let group = GroupCommit::spawn(store, self.config).inspect_err(|_| self.stopped = true)?;
        self.handle = group.handle();
        self.group = Some(group);
        Ok(read?)
    }

    /// The server, for reads (the fleet, reported values).
    pub fn server(&self) -> &DeviceServer {
        &self.server
    }

    /// Whether an earlier store failure stopped the server (see [`DurableError::Stopped`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Handles one device message and returns its result once its changes are durable.
    pub fn handle(
        &mut self,
        session: &Session,
        envelope: &EnvelopeRef<'_>,
        now_ms: u64,
    ) -> Result<Handled, DurableError> {
        let message = Message {
            session: *session,
            envelope: *envelope,
            now_ms,
        };
        let ticket = self.submit(core::slice::from_ref(&message));
        self.wait(ticket)
            .pop()
            .unwrap_or(Err(DurableError::Stopped))
    }

    /// Handles `messages` in order and submits all their changes as one group-commit
    /// submission. The replies are held in the ticket until [`DurableServer::wait`]; more
    /// messages may be submitted meanwhile (their processing overlaps the commit), but
    /// tickets must be waited for in the order they were submitted.
    pub fn submit(&mut self, messages: &[Message<'_>]) -> Ticket {
        let mut ticket = Ticket {
            pending: None,
            results: Vec::with_capacity(messages.len()),
            slots: Vec::with_capacity(messages.len()),
            touched: Vec::new(),
        };
        if self.stopped {
            ticket
                .results
                .extend(messages.iter().map(|_| Err(DurableError::Stopped)));
            ticket.slots.resize(messages.len(), None);
            return ticket;
        }
        let mut batches = Vec::new();
        for m in messages {
            let device = m.session.device();
            if let Some(shared) = &self.shared
                && !shared.devices.contains_key(&device)
            {
                let touched = Touched {
                    devices: BTreeSet::from([device]),
                    rollouts: BTreeSet::new(),
                };
                if let Err(e) = self.reload(&touched) {
                    self.stopped = true;
                    ticket.slots.push(None);
                    ticket.results.push(Err(e));
                    continue;
                }
            }
            let before = self.shadow_version(&device);
            let result = self
                .server
                .handle(&m.session, &m.envelope, m.now_ms)
                .map_err(DurableError::from);
            match self.collect(Some((device, before)), m.now_ms) {
                Ok(mut batch) => {
                    if let Some(touched) = self.fence(&mut batch, &[device]) {
                        ticket.touched.push(touched);
                    }
                    if batch.ops.is_empty() {
                        ticket.slots.push(None);
                    } else {
                        ticket.slots.push(Some(batches.len()));
                        batches.push(batch);
                    }
                }
                Err(e) => {
                    self.stopped = true;
                    ticket.slots.push(None);
                    ticket.results.push(Err(e));
                    continue;
                }
            }
            ticket.results.push(result);
        }
        if !batches.is_empty() {
            match self.handle.submit_all(batches) {
                Ok(pending) => ticket.pending = Some(pending),
                Err(e) => {
                    self.stopped = true;
                    ticket.results.fill(Err(DurableError::Store(e)));
                }
            }
        }
        ticket
    }

    /// Waits until the ticket's changes are durable and returns one result per message, in
    /// order: only now may the replies be sent. When the commit failed, or an earlier
    /// failure stopped the server, every result is an error.
    pub fn wait(&mut self, ticket: Ticket) -> Vec<Result<Handled, DurableError>> {
        if self.shared.is_none() {
            return settle(ticket, &mut self.stopped);
        }
        let Ticket {
            pending,
            mut results,
            slots,
            touched,
        } = ticket;
        let outcome = pending.map(PendingAll::wait);
        match outcome {
            Some(Ok(outcomes)) => {
                // Another node changed what a batch relied on: read it again, and refuse
                // (without a reply) the messages of the batches that were not kept.
                let failed: BTreeSet<usize> = outcomes
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| !o.committed)
                    .map(|(i, _)| i)
                    .collect();
                if !failed.is_empty() {
                    let mut stale = Touched::default();
                    for i in &failed {
                        if let Some(t) = touched.get(*i) {
                            stale.devices.extend(t.devices.iter().copied());
                            stale.rollouts.extend(t.rollouts.iter().copied());
                        }
                    }
                    let error = self.after_conflict(&stale);
                    for (result, slot) in results.iter_mut().zip(&slots) {
                        if slot.is_some_and(|i| failed.contains(&i)) {
                            *result = Err(error.clone());
                        }
                    }
                }
            }
            Some(Err(e)) => {
                self.stopped = true;
                results.fill(Err(DurableError::Store(e)));
                return results;
            }
            None => {}
        }
        if self.stopped {
            results.fill(Err(DurableError::Stopped));
        }
        results
    }

    fn shadow_version(&self, device: &DeviceId) -> u64 {
        self.server
            .fleet()
            .saved_shadow(device)
            .map_or(0, iot_shadow::Shadow::version)
    }

    /// The ops for what changed since the last call (see the module docs).
    fn collect(
        &mut self,
        served: Option<(DeviceId, u64)>,
        now_ms: u64,
    ) -> Result<Batch, DurableError> {
        self.collect_all(served.as_slice(), now_ms)
    }

    fn collect_all(
        &mut self,
        served: &[(DeviceId, u64)],
        now_ms: u64,
    ) -> Result<Batch, DurableError> {
        let entries = self.server.fleet_mut().take_audit();
        let mut devices: BTreeSet<DeviceId> = BTreeSet::new();
        let mut rollouts: BTreeSet<(TenantId, u32)> = BTreeSet::new();
        for entry in &entries {
            if let Some(device) = entry.device
                && !matches!(entry.action, AuditAction::ShadowUpdated { .. })
            {
                devices.insert(device);
            }
            if let Some(rollout) = rollout_of(&entry.action) {
                rollouts.insert((entry.tenant, rollout));
            }
        }
        let mut ops = Vec::with_capacity(
            entries
                .len()
                .saturating_add(devices.len())
                .saturating_add(1),
        );
        for device in &devices {
            if let Some(op) = self.device_op(device, now_ms)? {
                ops.push(op);
            }
        }
        for (device, before) in served {
            self.shadow_op(device, *before, &mut ops);
        }
        for key in rollouts {
            if let Some(op) = self.rollout_op(key)? {
                ops.push(op);
            }
        }
        for entry in entries {
            ops.push(Op::Audit(audit_event(&entry)?));
        }
        Ok(Batch::atomic(ops))
    }

    fn device_op(&self, device: &DeviceId, now_ms: u64) -> Result<Option<Op>, DurableError> {
        let fleet = self.server.fleet();
        let Some(identity) = fleet.saved_identity(device) else {
            return Ok(None);
        };
        let record = fleet.device_record(device).cloned();
        let revoked = identity.status == CredentialStatus::Revoked;
        let state = match (&record, revoked) {
            (_, true) => State::Decommissioned,
            (Some(r), false) => r.state,
            (None, false) => State::Unprovisioned,
        };
        let firmware_version = record
            .as_ref()
            .and_then(|r| r.firmware.as_deref())
            .and_then(|f| f.parse::<u32>().ok())
            .unwrap_or(0);
        let tenant = identity.tenant;
        let credential = encode("device record", &StoredCredential { identity, record })?;
        Ok(Some(Op::PutDevice(iot_store::DeviceRecord {
            id: *device,
            tenant,
            state: state.code(),
            firmware_version,
            credential,
            revoked,
            updated_at_ms: now_ms,
        })))
    }

    fn shadow_op(&self, device: &DeviceId, before: u64, ops: &mut Vec<Op>) {
        let expected = if before == 0 {
            ShadowExpect::Absent
        } else {
            ShadowExpect::Version(before)
        };
        match self.server.fleet().saved_shadow(device) {
            Some(shadow) if shadow.version() != before && shadow.version() > 0 => {
                ops.push(Op::PutShadow {
                    shadow: iot_store::Shadow {
                        device: *device,
                        name: String::new(),
                        version: shadow.version(),
                        document: shadow.to_cbor(),
                    },
                    expected,
                });
            }
            None if before > 0 => ops.push(Op::DeleteShadow {
                device: *device,
                name: String::new(),
                expected_version: before,
            }),
            _ => {}
        }
    }

    fn rollout_op(&mut self, key: (TenantId, u32)) -> Result<Option<Op>, DurableError> {
        let Some(scoped) = self.server.fleet().saved_rollout(&key.0, key.1) else {
            return Ok(None);
        };
        let plan = encode(
            "rollout",
            &StoredRollout {
                id: key.1,
                scoped: scoped.clone(),
            },
        )?;
        let status = status_code(scoped.rollout.status());
        let id = match self.rollout_keys.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.next_rollout_key;
                self.next_rollout_key = id.saturating_add(1);
                self.rollout_keys.insert(key, id);
                id
            }
        };
        Ok(Some(Op::PutRollout(iot_store::Rollout {
            id,
            tenant: key.0,
            status,
            plan,
        })))
    }

    /// Commits the changes of an operator action before returning its result.
    fn commit_action<T>(
        &mut self,
        result: Result<T, ServerError>,
        device: Option<(DeviceId, u64)>,
        extra: Option<Op>,
        now_ms: u64,
    ) -> Result<T, DurableError> {
        let mut batch = match self.collect(device, now_ms) {
            Ok(batch) => batch,
            Err(e) => {
                self.stopped = true;
                return Err(e);
            }
        };
        batch.ops.extend(extra);
        let served: Vec<DeviceId> = device.map(|(d, _)| d).into_iter().collect();
        self.commit_batch(batch, &served)?;
        Ok(result?)
    }

    fn running(&self) -> Result<(), DurableError> {
        if self.stopped {
            Err(DurableError::Stopped)
        } else {
            Ok(())
        }
    }

    fn tenant_op(&self, tenant: TenantId) -> Result<Op, DurableError> {
        let rules = self.server.fleet().assignment_rules(&tenant).to_vec();
        Ok(Op::PutTenant(iot_store::Tenant {
            id: tenant,
            config: encode("tenant", &StoredTenant { rules })?,
        }))
    }

    /// [`crate::Fleet::import_manufacturing`], durable: the identities (with their secrets)
    /// are in the store when it returns `Ok`.
    pub fn import_manufacturing(
        &mut self,
        p: &Principal,
        scope: &Scope,
        records: Vec<ManufacturingRecord>,
        now_ms: u64,
    ) -> Result<u32, DurableError> {
        self.running()?;
        let ids: Vec<DeviceId> = records.iter().map(|r| r.device_id).collect();
        let result = self
            .server
            .fleet_mut()
            .import_manufacturing(p, scope, records, now_ms)
            .map_err(ServerError::from);
        let mut ops = Vec::new();
        if result.is_ok() {
            ops.push(self.tenant_op(p.tenant)?);
            for id in &ids {
                if let Some(op) = self.device_op(id, now_ms)? {
                    ops.push(op);
                }
            }
        }
        let mut batch = self.collect(None, now_ms)?;
        ops.append(&mut batch.ops);
        self.commit_ops(ops)?;
        Ok(result?)
    }

    fn commit_ops(&mut self, ops: Vec<Op>) -> Result<(), DurableError> {
        self.commit_batch(Batch::atomic(ops), &[])
    }

    /// Commits an operator action's batch (with shared mode's revision checks for `served`
    /// and what it writes) and waits for it.
    fn commit_batch(&mut self, mut batch: Batch, served: &[DeviceId]) -> Result<(), DurableError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        let touched = self.fence(&mut batch, served);
        match self.handle.commit(batch) {
            Ok(outcome) if outcome.committed => Ok(()),
            Ok(_) => match touched {
                Some(touched) => Err(self.after_conflict(&touched)),
                None => {
                    self.stopped = true;
                    Err(DurableError::Stopped)
                }
            },
            Err(e) => {
                self.stopped = true;
                Err(e.into())
            }
        }
    }

    /// [`crate::Fleet::add_assignment_rule`], durable.
    pub fn add_assignment_rule(
        &mut self,
        p: &Principal,
        rule: AssignmentRule,
        now_ms: u64,
    ) -> Result<(), DurableError> {
        self.running()?;
        let result = self
            .server
            .fleet_mut()
            .add_assignment_rule(p, rule, now_ms)
            .map_err(ServerError::from);
        let extra = if result.is_ok() {
            Some(self.tenant_op(p.tenant)?)
        } else {
            None
        };
        self.commit_action(result, None, extra, now_ms)
    }

    /// [`DeviceServer::set_desired`], durable: the delta may be sent once this returns.
    pub fn set_desired(
        &mut self,
        p: &Principal,
        device: &DeviceId,
        path: &str,
        value: Value,
        now_ms: u64,
    ) -> Result<Option<Reply>, DurableError> {
        self.running()?;
        let before = self.shadow_version(device);
        let result = self.server.set_desired(p, device, path, value, now_ms);
        self.commit_action(result, Some((*device, before)), None, now_ms)
    }

    /// [`DeviceServer::decommission`], durable: the revocation is in the store before the
    /// wipe message may be sent.
    pub fn decommission(
        &mut self,
        p: &Principal,
        device: &DeviceId,
        reason: DecommissionReason,
        now_ms: u64,
    ) -> Result<(Decommissioned, Reply), DurableError> {
        self.running()?;
        let before = self.shadow_version(device);
        let result = self.server.decommission(p, device, reason, now_ms);
        self.commit_action(result, Some((*device, before)), None, now_ms)
    }

    /// [`DeviceServer::publish_firmware`] (images are kept in memory only: publish them
    /// again after a restart).
    pub fn publish_firmware(
        &mut self,
        version: u32,
        image: Vec<u8>,
    ) -> Result<OtaJob, DurableError> {
        Ok(self.server.publish_firmware(version, image)?)
    }

    /// [`DeviceServer::start_ota`], durable.
    pub fn start_ota(
        &mut self,
        p: &Principal,
        scope: &Scope,
        version: u32,
        previous: Option<u32>,
        config: RolloutConfig,
        now_ms: u64,
    ) -> Result<u32, DurableError> {
        self.running()?;
        let result = self
            .server
            .start_ota(p, scope, version, previous, config, now_ms);
        self.commit_action(result, None, None, now_ms)
    }

    /// [`DeviceServer::poll_ota`] (which jobs went out is not saved: jobs are delivered at
    /// least once).
    pub fn poll_ota(&mut self, now_ms: u64) -> Vec<(DeviceId, Reply)> {
        if self.stopped {
            return Vec::new();
        }
        self.server.poll_ota(now_ms)
    }

    /// [`crate::Fleet::sweep`], durable: returns the devices newly marked offline.
    pub fn sweep(&mut self, now_ms: u64) -> Result<Vec<DeviceId>, DurableError> {
        self.running()?;
        let offline = self.server.fleet_mut().sweep(now_ms);
        self.commit_action(Ok(offline), None, None, now_ms)
    }

    /// [`crate::Fleet::tick_rollouts`], durable: returns how many rollouts timed devices out.
    pub fn tick_rollouts(&mut self, now_ms: u64) -> Result<usize, DurableError> {
        self.running()?;
        let n = self.server.fleet_mut().tick_rollouts(now_ms).len();
        self.commit_action(Ok(n), None, None, now_ms)
    }

    /// Runs any other operator action `f` on the server and makes what it changed durable
    /// before returning its result: the records, rollouts and audit entries it changed (found
    /// through the audit journal, as for device messages), and the shadows of `shadows_of`
    /// (name every device whose shadow `f` may write). For example
    /// `server.act(&[], |s| s.fleet_mut().sweep(now))`.
    pub fn act<T>(
        &mut self,
        shadows_of: &[DeviceId],
        now_ms: u64,
        f: impl FnOnce(&mut DeviceServer) -> T,
    ) -> Result<T, DurableError> {
        self.running()?;
        let before: Vec<(DeviceId, u64)> = shadows_of
            .iter()
            .map(|d| (*d, self.shadow_version(d)))
            .collect();
        let value = f(&mut self.server);
        let batch = match self.collect_all(&before, now_ms) {
            Ok(batch) => batch,
            Err(e) => {
                self.stopped = true;
                return Err(e);
            }
        };
        self.commit_ops(batch.ops)?;
        Ok(value)
    }

    /// Claims (or renews) the lease `name` for `holder` until `now_ms + ttl_ms` through the
    /// shared store ([`Store::claim`]): work that must happen once across the nodes (rollout
    /// ticks, offline sweeps, OTA dispatch) runs on the node holding its lease, through
    /// [`DurableServer::once`]. `None` while another node's lease runs. Only for a node
    /// opened with [`DurableServer::open_shared`].
    pub fn claim(
        &mut self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>, DurableError> {
        let shared = self.shared.as_mut().ok_or(StoreError::InvalidInput(
            "leases are for nodes opened with open_shared",
        ))?;
        Ok(shared.reader.claim(name, holder, now_ms, ttl_ms)?)
    }

    /// Gives a lease up at once (a node shutting down), so another node takes the work over
    /// without waiting for it to run out. `false` when it was not held.
    pub fn release(&mut self, lease: &Lease) -> Result<bool, DurableError> {
        let shared = self.shared.as_mut().ok_or(StoreError::InvalidInput(
            "leases are for nodes opened with open_shared",
        ))?;
        Ok(shared.reader.release(&lease.name, &lease.holder)?)
    }

    /// [`DurableServer::act`] for once-only work under `lease`: what `f` changed is kept only
    /// if this node still holds the lease with its token ([`Op::HoldsLease`] in the same
    /// transaction). A node that stalled past its lease while another took the work over is
    /// refused with [`DurableError::Conflict`] and keeps nothing, so no effect happens twice;
    /// so is a node whose copy of a record `f` rewrote was stale (it reads it again; run `f`
    /// again to decide from the fresh copy).
    pub fn once<T>(
        &mut self,
        lease: &Lease,
        shadows_of: &[DeviceId],
        now_ms: u64,
        f: impl FnOnce(&mut DeviceServer) -> T,
    ) -> Result<T, DurableError> {
        self.running()?;
        if self.shared.is_none() {
            return Err(
                StoreError::InvalidInput("leases are for nodes opened with open_shared").into(),
            );
        }
        let before: Vec<(DeviceId, u64)> = shadows_of
            .iter()
            .map(|d| (*d, self.shadow_version(d)))
            .collect();
        let value = f(&mut self.server);
        let mut batch = match self.collect_all(&before, now_ms) {
            Ok(batch) => batch,
            Err(e) => {
                self.stopped = true;
                return Err(e);
            }
        };
        batch.ops.insert(
            0,
            Op::HoldsLease {
                name: lease.name.clone(),
                holder: lease.holder.clone(),
                fence: lease.fence,
            },
        );
        self.commit_batch(batch, &[])?;
        Ok(value)
    }

    /// The value `device` last reported at `path` (see [`DeviceServer::reported`]).
    pub fn reported(&self, p: &Principal, device: &DeviceId, path: &str) -> Option<Value> {
        self.server.reported(p, device, path)
    }
}

/// Waits for a ticket's commit and returns its results; sets `stopped` when the commit
/// failed or lost a compare-and-swap, and fails every result once it is set.
fn settle(ticket: Ticket, stopped: &mut bool) -> Vec<Result<Handled, DurableError>> {
    let Ticket {
        pending,
        mut results,
        slots,
        touched: _,
    } = ticket;
    let outcome = pending.map(PendingAll::wait);
    match outcome {
        Some(Ok(outcomes)) => {
            let lost = slots
                .iter()
                .flatten()
                .any(|&i| outcomes.get(i).is_none_or(|o| !o.committed));
            if lost {
                // Another writer changed a shadow under us: memory and store disagree.
                *stopped = true;
            }
        }
        Some(Err(e)) => {
            *stopped = true;
            results.fill(Err(DurableError::Store(e)));
            return results;
        }
        None => {}
    }
    if *stopped {
        results.fill(Err(DurableError::Stopped));
    }
    results
}

fn audit_event(entry: &AuditEntry) -> Result<AuditEvent, DurableError> {
    let payload = encode(
        "audit entry",
        &AuditPayload {
            actor: &entry.actor,
            scope: &entry.scope,
            action: &entry.action,
        },
    )?;
    Ok(AuditEvent {
        at_ms: entry.at_ms,
        tenant: entry.tenant,
        device: entry.device,
        action: action_code(&entry.action),
        payload,
    })
}

/// Reads everything saved in `store` into the server's (empty) fleet.
fn restore(
    store: &mut dyn Store,
    server: &mut DeviceServer,
    rollout_keys: &mut BTreeMap<(TenantId, u32), u64>,
    next_rollout_key: &mut u64,
    keep: &dyn Fn(&DeviceId) -> bool,
) -> Result<(), DurableError> {
    let fleet = server.fleet_mut();
    let mut after_tenant: Option<TenantId> = None;
    loop {
        let tenants = store.tenants(after_tenant.as_ref(), MAX_PAGE)?;
        let Some(last) = tenants.last() else { break };
        after_tenant = Some(last.id);
        for tenant in &tenants {
            let saved: StoredTenant = decode("tenant", &tenant.config)?;
            fleet.restore_assignment_rules(tenant.id, saved.rules);
            let mut after_device: Option<DeviceId> = None;
            loop {
                let devices = store.devices(&tenant.id, after_device.as_ref(), MAX_PAGE)?;
                let Some(last) = devices.last() else { break };
                after_device = Some(last.id);
                for device in devices {
                    if !keep(&device.id) {
                        continue;
                    }
                    let saved: StoredCredential = decode("device record", &device.credential)?;
                    let registered = saved.identity.status == CredentialStatus::Registered;
                    fleet.restore_identity(device.id, saved.identity, saved.record);
                    if !registered {
                        continue;
                    }
                    for shadow in store.shadows(&device.id, None, MAX_PAGE)? {
                        if shadow.name.is_empty() {
                            fleet
                                .restore_shadow(&device.id, &shadow.document, shadow.version)
                                .map_err(|e| DurableError::Decode {
                                    what: "shadow",
                                    detail: e.to_string(),
                                })?;
                        }
                    }
                }
            }
        }
    }
    let mut after_rollout: Option<u64> = None;
    loop {
        let rollouts = store.rollouts(after_rollout, MAX_PAGE)?;
        let Some(last) = rollouts.last() else { break };
        after_rollout = Some(last.id);
        for stored in rollouts {
            let saved: StoredRollout = decode("rollout", &stored.plan)?;
            rollout_keys.insert((stored.tenant, saved.id), stored.id);
            *next_rollout_key = (*next_rollout_key).max(stored.id.saturating_add(1));
            fleet.restore_rollout(stored.tenant, saved.id, saved.scoped);
        }
    }
    Ok(())
}

pub mod sharded;
pub use sharded::{DeviceState, ShardedServer, ShardedTicket};

/// Convenience: a [`FleetError`] as the binding reports it.
impl From<FleetError> for DurableError {
    fn from(e: FleetError) -> Self {
        Self::Server(ServerError::Fleet(e))
    }
}
