//! Device work on every core: [`ShardedServer`] partitions devices over N shards by a hash of
//! the device id, each shard a [`DurableServer`] owned by one worker thread, all submitting to
//! one group-commit writer.
//!
//! - **Shards.** A shard holds the identities, records and shadows of its devices and does
//!   everything a device message needs (decode, validation, lifecycle, shadow merge, delta,
//!   the change journal) on its own thread. A device's messages always go to the same shard,
//!   in the order they were submitted, so per device nothing changes against one shard.
//! - **Sequencer.** The store's [`GroupCommit`] writer is the one sequencer: it takes the
//!   shards' batches in arrival order, appends their audit entries to the single hash chain
//!   (the store numbers them) and commits them in one transaction per group. A shard releases
//!   its replies only once the transaction holding them committed, exactly as
//!   [`DurableServer`] does: acknowledged only after durable.
//! - **Global parts.** Tenants' assignment rules are kept by every shard (stored and audited
//!   once, by shard 0). A manufacturing list is split by shard; each shard imports its part
//!   (all or nothing per shard, one audit entry per shard). Staged rollouts span shards and
//!   are not available here yet ([`DurableError::Sharded`]).
//!
//! The shard of a device is `SipHash-1-3(key, id) mod N` with a key drawn per process: a
//! shard's devices are found again at restart because each shard restores only its own
//! devices from the store.

use std::boxed::Box;
use std::collections::VecDeque;
use std::format;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::vec::Vec;

use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, QoS};
use iot_store::{GroupCommit, GroupCommitConfig, Store};

use super::{DurableError, DurableServer, Message, Ticket};
use crate::access::{Principal, Scope};
use crate::registry::{AssignmentRule, DeviceRecord, ManufacturingRecord};
use crate::server::{DeviceServer, Handled, Session};

type Results = Vec<Result<Handled, DurableError>>;

/// A device message copied for its shard's thread.
struct Owned {
    session: Session,
    device: DeviceId,
    seq: u32,
    id: MessageId,
    qos: QoS,
    kind: MessageKind,
    payload: Vec<u8>,
    now_ms: u64,
}

/// What a device's shard knows about it: its record and its shadow (version, canonical
/// CBOR).
pub type DeviceState = (Option<DeviceRecord>, Option<(u64, Vec<u8>)>);

enum Job {
    Messages(Vec<Owned>, Sender<Results>),
    Import(
        Principal,
        Scope,
        Vec<ManufacturingRecord>,
        u64,
        Sender<Result<u32, DurableError>>,
    ),
    Rule {
        principal: Principal,
        rule: AssignmentRule,
        now_ms: u64,
        /// Shard 0 stores and audits the rule; the others only adopt it.
        durable: bool,
        reply: Sender<Result<(), DurableError>>,
    },
    Read(DeviceId, Sender<DeviceState>),
}

struct Worker {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

/// Messages submitted together to a [`ShardedServer`]; [`ShardedServer::wait`] returns their
/// results once the transactions holding them committed.
#[derive(Debug)]
#[must_use = "replies may be sent only once `wait` returned them"]
pub struct ShardedTicket {
    /// Per shard that got messages: where its results go in the submission, and its reply.
    parts: Vec<(Vec<usize>, Receiver<Results>)>,
    len: usize,
}

/// N [`DurableServer`] shards on N worker threads over one store. See the
/// [module documentation](self).
pub struct ShardedServer {
    workers: Vec<Worker>,
    group: Option<GroupCommit>,
    hasher: RandomState,
}

impl core::fmt::Debug for ShardedServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShardedServer")
            .field("shards", &self.workers.len())
            .finish_non_exhaustive()
    }
}

fn shard_of(hasher: &RandomState, shards: usize, id: &DeviceId) -> usize {
    let hash = hasher.hash_one(id.as_str());
    let shards = u64::try_from(shards).unwrap_or(1);
    usize::try_from(hash.checked_rem(shards).unwrap_or(0)).unwrap_or(0)
}

impl ShardedServer {
    /// Restores the state saved in `store` into `shards` servers made by `server` (each with
    /// an empty fleet), each restoring only its own devices, then starts the group-commit
    /// writer and one worker thread per shard.
    pub fn open(
        mut store: Box<dyn Store + Send>,
        shards: usize,
        mut server: impl FnMut() -> DeviceServer,
        config: GroupCommitConfig,
    ) -> Result<Self, DurableError> {
        let shards = shards.max(1);
        let hasher = RandomState::new();
        // The shards restore before the writer owns the store, and get its handle after.
        let mut restored = Vec::with_capacity(shards);
        for shard in 0..shards {
            let mut s = server();
            let keep = |id: &DeviceId| shard_of(&hasher, shards, id) == shard;
            DurableServer::restore_shard(&mut *store, &mut s, &keep)?;
            restored.push(s);
        }
        let group = GroupCommit::spawn(store, config)?;
        let mut workers = Vec::with_capacity(shards);
        for (n, s) in restored.into_iter().enumerate() {
            let durable = DurableServer::shard(s, group.handle(), config);
            let (jobs, receiver) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("iot-fleet-shard-{n}"))
                .spawn(move || run_shard(durable, &receiver))
                .map_err(|_| DurableError::Sharded("cannot start a shard thread"))?;
            workers.push(Worker { jobs, thread });
        }
        Ok(Self {
            workers,
            group: Some(group),
            hasher,
        })
    }

    /// How many shards (worker threads) serve devices.
    pub fn shards(&self) -> usize {
        self.workers.len()
    }

    fn shard(&self, id: &DeviceId) -> usize {
        shard_of(&self.hasher, self.workers.len(), id)
    }

    fn send(&self, shard: usize, job: Job) -> Result<(), DurableError> {
        self.workers
            .get(shard)
            .and_then(|w| w.jobs.send(job).ok())
            .ok_or(DurableError::Stopped)
    }

    /// Hands `messages` to their devices' shards (by the session's authenticated device) and
    /// returns at once; [`ShardedServer::wait`] returns the results, in order, once durable.
    /// Tickets must be waited for in the order they were submitted.
    pub fn submit(&self, messages: &[Message<'_>]) -> ShardedTicket {
        let shards = self.workers.len();
        let mut parts: Vec<(Vec<usize>, Vec<Owned>)> =
            (0..shards).map(|_| (Vec::new(), Vec::new())).collect();
        for (at, m) in messages.iter().enumerate() {
            let device = m.session.device();
            if let Some((positions, owned)) = parts.get_mut(self.shard(&device)) {
                positions.push(at);
                owned.push(Owned {
                    session: m.session,
                    device: m.envelope.device,
                    seq: m.envelope.seq,
                    id: m.envelope.id,
                    qos: m.envelope.qos,
                    kind: m.envelope.kind,
                    payload: m.envelope.payload.to_vec(),
                    now_ms: m.now_ms,
                });
            }
        }
        let mut ticket = ShardedTicket {
            parts: Vec::with_capacity(shards),
            len: messages.len(),
        };
        for (shard, (positions, owned)) in parts.into_iter().enumerate() {
            if owned.is_empty() {
                continue;
            }
            let (reply, results) = mpsc::channel();
            // A shard that is gone drops `reply`: `wait` then reports `Stopped`.
            let _ = self.send(shard, Job::Messages(owned, reply));
            ticket.parts.push((positions, results));
        }
        ticket
    }

    /// The results of a ticket's messages, in submission order, once durable (see
    /// [`DurableServer::wait`]).
    pub fn wait(&self, ticket: ShardedTicket) -> Vec<Result<Handled, DurableError>> {
        let mut results: Vec<Result<Handled, DurableError>> = (0..ticket.len)
            .map(|_| Err(DurableError::Stopped))
            .collect();
        for (positions, reply) in ticket.parts {
            let Ok(part) = reply.recv() else { continue };
            for (at, result) in positions.into_iter().zip(part) {
                if let Some(slot) = results.get_mut(at) {
                    *slot = result;
                }
            }
        }
        results
    }

    /// Handles one device message and returns its result once durable.
    pub fn handle(
        &self,
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

    /// [`crate::Fleet::import_manufacturing`], durable: each shard imports its devices' part
    /// (all or nothing per shard). Returns how many were imported.
    pub fn import_manufacturing(
        &self,
        p: &Principal,
        scope: &Scope,
        records: Vec<ManufacturingRecord>,
        now_ms: u64,
    ) -> Result<u32, DurableError> {
        let mut parts: Vec<Vec<ManufacturingRecord>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        for r in records {
            if let Some(part) = parts.get_mut(self.shard(&r.device_id)) {
                part.push(r);
            }
        }
        let mut replies = Vec::new();
        for (shard, part) in parts.into_iter().enumerate() {
            if part.is_empty() {
                continue;
            }
            let (reply, result) = mpsc::channel();
            self.send(
                shard,
                Job::Import(p.clone(), scope.clone(), part, now_ms, reply),
            )?;
            replies.push(result);
        }
        let mut total = 0u32;
        let mut first_error = None;
        for result in replies {
            match result.recv().unwrap_or(Err(DurableError::Stopped)) {
                Ok(n) => total = total.saturating_add(n),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }

    /// [`crate::Fleet::add_assignment_rule`], durable: stored and audited once, kept by
    /// every shard.
    pub fn add_assignment_rule(
        &self,
        p: &Principal,
        rule: AssignmentRule,
        now_ms: u64,
    ) -> Result<(), DurableError> {
        // Shard 0 first: the others adopt the rule only once it is stored.
        for shard in 0..self.workers.len() {
            let (reply, result) = mpsc::channel();
            self.send(
                shard,
                Job::Rule {
                    principal: p.clone(),
                    rule: rule.clone(),
                    now_ms,
                    durable: shard == 0,
                    reply,
                },
            )?;
            result.recv().unwrap_or(Err(DurableError::Stopped))?;
        }
        Ok(())
    }

    /// The record and shadow of `device`, as its shard holds them.
    pub fn device_state(&self, device: &DeviceId) -> DeviceState {
        let (reply, result) = mpsc::channel();
        if self
            .send(self.shard(device), Job::Read(*device, reply))
            .is_err()
        {
            return (None, None);
        }
        result.recv().unwrap_or((None, None))
    }

    /// Stops the shards (after their last replies), commits what is queued, stops the writer
    /// and returns the store.
    pub fn shutdown(mut self) -> Result<Box<dyn Store + Send>, DurableError> {
        for worker in self.workers.drain(..) {
            drop(worker.jobs);
            worker
                .thread
                .join()
                .map_err(|_| DurableError::Sharded("a shard thread panicked"))?;
        }
        let group = self.group.take().ok_or(DurableError::Stopped)?;
        Ok(group.shutdown()?)
    }
}

/// A shard's thread: handles jobs in order. Submitted messages go to the shard's releaser
/// thread, which waits for their commit and sends the replies, so the shard processes the
/// next messages while the previous ones commit.
fn run_shard(mut shard: DurableServer, jobs: &Receiver<Job>) {
    let stopped = Arc::new(AtomicBool::new(false));
    let (to_release, tickets) = mpsc::channel::<(Ticket, Sender<Results>, Sender<()>)>();
    let releaser = {
        let stopped = Arc::clone(&stopped);
        std::thread::spawn(move || {
            let mut stop = false;
            for (ticket, reply, done) in tickets {
                let results = super::settle(ticket, &mut stop);
                if stop {
                    stopped.store(true, Ordering::Release);
                }
                // The caller may have dropped its ticket: nobody waits for these replies.
                let _ = reply.send(results);
                let _ = done.send(());
            }
        })
    };
    // Completion signals of the submissions the releaser has not finished, oldest first.
    let mut in_flight: VecDeque<Receiver<()>> = VecDeque::new();
    while let Ok(job) = jobs.recv() {
        if stopped.load(Ordering::Acquire) {
            shard.stopped = true;
        }
        match job {
            Job::Messages(owned, reply) => {
                let messages: Vec<Message<'_>> = owned
                    .iter()
                    .map(|m| Message {
                        session: m.session,
                        envelope: EnvelopeRef {
                            device: m.device,
                            seq: m.seq,
                            id: m.id,
                            qos: m.qos,
                            kind: m.kind,
                            payload: &m.payload,
                        },
                        now_ms: m.now_ms,
                    })
                    .collect();
                let ticket = shard.submit(&messages);
                let (done, finished) = mpsc::channel();
                if to_release.send((ticket, reply, done)).is_ok() {
                    in_flight.push_back(finished);
                }
                // Bounded: at most two submissions of this shard wait for their commit.
                while in_flight.len() > 2 {
                    if let Some(oldest) = in_flight.pop_front() {
                        let _ = oldest.recv();
                    }
                }
            }
            other => {
                // Operator actions see every earlier message committed.
                for finished in in_flight.drain(..) {
                    let _ = finished.recv();
                }
                if stopped.load(Ordering::Acquire) {
                    shard.stopped = true;
                }
                run_job(&mut shard, other);
            }
        }
    }
    drop(to_release);
    let _ = releaser.join();
}

fn run_job(shard: &mut DurableServer, job: Job) {
    match job {
        Job::Messages(..) => {}
        Job::Import(p, scope, records, now_ms, reply) => {
            let _ = reply.send(shard.import_manufacturing(&p, &scope, records, now_ms));
        }
        Job::Rule {
            principal,
            rule,
            now_ms,
            durable,
            reply,
        } => {
            let result = if durable {
                shard.add_assignment_rule(&principal, rule, now_ms)
            } else {
                let tenant = principal.tenant;
                let mut rules = shard.server().fleet().assignment_rules(&tenant).to_vec();
                rules.push(rule);
                shard.act(&[], now_ms, |s| {
                    s.fleet_mut().restore_assignment_rules(tenant, rules);
                })
            };
            let _ = reply.send(result);
        }
        Job::Read(device, reply) => {
            let fleet = shard.server().fleet();
            let record = fleet.device_record(&device).cloned();
            let shadow = fleet
                .saved_shadow(&device)
                .map(|s| (s.version(), s.to_cbor()));
            let _ = reply.send((record, shadow));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fleet, Role, answer};
    use iot_core::time::HlcTimestamp;
    use iot_core::{NodeId, TenantId};
    use iot_lifecycle::config::DeviceConfig;
    use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};
    use iot_protocol::{Downlink, PROTOCOL_VERSION, Register, ShadowBytes, Uplink};
    use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
    use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};
    use iot_store::SqliteStore;

    const DEVICES: u8 = 24;

    fn id(i: u8) -> DeviceId {
        DeviceId::from_mac([0x24, 0x0a, 0, 0, 7, i])
    }

    fn secret(i: u8) -> [u8; 32] {
        [i.wrapping_add(1); 32]
    }

    fn admin() -> Principal {
        Principal::new(
            "ops",
            TenantId::new("acme").unwrap(),
            Scope::root(),
            Role::Admin,
        )
    }

    fn register(i: u8, nonce: Option<[u8; 16]>) -> (u8, Vec<u8>, MessageKind) {
        let device = id(i);
        let m: Uplink<&[u8]> = Uplink::Register(Register {
            protocol: PROTOCOL_VERSION,
            schema: 0,
            request: RegistrationRequest {
                device,
                firmware_version: 1,
                answer: nonce.map(|n| answer(&secret(i), &device, &n)),
            },
        });
        (i, m.to_vec(), m.kind())
    }

    fn update(i: u8, field: &str, value: i64, at_ms: u64) -> (u8, Vec<u8>, MessageKind) {
        let hlc = HlcTimestamp::from_parts(at_ms, 0, NodeId(u32::from(i))).unwrap();
        let write = Write::new(
            Section::Reported,
            Path::new(field).unwrap(),
            Value::Int(value),
            Stamp::new(hlc, Policy::LastWriterWins, Origin::Device),
        );
        let header = Header {
            kind: Kind::Update,
            version: None,
            client_token: None,
        };
        let doc = encode_writes_to_vec(&header, &[write]).unwrap();
        let m = Uplink::ShadowUpdate(ShadowBytes::new(doc.as_slice()).unwrap());
        (i, m.to_vec(), m.kind())
    }

    fn run(server: &ShardedServer, batch: &[(u8, Vec<u8>, MessageKind)], now: u64) -> Results {
        let messages: Vec<Message<'_>> = batch
            .iter()
            .map(|(i, payload, kind)| Message {
                session: Session::authenticated(id(*i), u64::from(*i)),
                envelope: EnvelopeRef {
                    device: id(*i),
                    seq: 0,
                    id: MessageId(0),
                    qos: QoS::AtLeastOnce,
                    kind: *kind,
                    payload,
                },
                now_ms: now,
            })
            .collect();
        let ticket = server.submit(&messages);
        server.wait(ticket)
    }

    /// The same input on `shards` shards: devices' records and shadows, whether each message
    /// was accepted, and the stored audit trail (verified) as (device, action) pairs.
    #[allow(clippy::type_complexity)]
    fn scenario(
        shards: usize,
    ) -> (
        Vec<DeviceState>,
        Vec<bool>,
        Vec<(Option<DeviceId>, u16)>,
        u64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("fleet.db")).unwrap();
        let config = GroupCommitConfig {
            queue_capacity: 16,
            max_batch_ops: 512,
        };
        let make = || DeviceServer::with_os_rng(Fleet::default(), DeviceConfig::DEFAULT, NodeId(1));
        let server = ShardedServer::open(Box::new(store), shards, make, config).unwrap();
        assert_eq!(server.shards(), shards);
        let records = (0..DEVICES)
            .map(|i| ManufacturingRecord {
                device_id: id(i),
                secret: secret(i),
                sku: if i % 2 == 0 {
                    "TH".into()
                } else {
                    "CO2".into()
                },
                serial: u64::from(i),
            })
            .collect();
        assert_eq!(
            server
                .import_manufacturing(&admin(), &Scope::root(), records, 1_000)
                .unwrap(),
            u32::from(DEVICES)
        );
        let rule = AssignmentRule {
            matcher: crate::Matcher::Sku("TH".into()),
            scope: "eu/b1".parse().unwrap(),
        };
        server.add_assignment_rule(&admin(), rule, 1_000).unwrap();
        let mut accepted = Vec::new();
        let asks: Vec<_> = (0..DEVICES).map(|i| register(i, None)).collect();
        let answers: Vec<_> = run(&server, &asks, 2_000)
            .into_iter()
            .zip(0..DEVICES)
            .map(|(r, i)| match r.unwrap() {
                Handled::Replies(r) => match r.as_slice() {
                    [Downlink::Registration(RegistrationResponse::Challenge(n))] => {
                        register(i, Some(*n))
                    }
                    other => panic!("no challenge: {other:?}"),
                },
                Handled::Unhandled => panic!("no challenge"),
            })
            .collect();
        accepted.extend(run(&server, &answers, 2_000).iter().map(Result::is_ok));
        // Rounds of updates in a mixed order, with a stale copy and a device twice in one
        // submission.
        for round in 0..4u8 {
            let now = 10_000 + u64::from(round) * 1_000;
            let mut batch = Vec::new();
            for k in 0..DEVICES {
                let i = (k * 7 + round * 5) % DEVICES;
                batch.push(update(i, "temp", i64::from(k) + i64::from(round), now));
                if k % 5 == 0 {
                    batch.push(update(i, "hum", i64::from(round), now + 1));
                    batch.push(update(i, "temp", -1, now - 5_000));
                }
            }
            accepted.extend(run(&server, &batch, now).iter().map(Result::is_ok));
        }
        let states = (0..DEVICES).map(|i| server.device_state(&id(i))).collect();
        let mut store = server.shutdown().unwrap();
        let head = store.verify_audit().unwrap();
        let trail = store
            .audit_range(1, 100_000)
            .unwrap()
            .into_iter()
            // Each shard audits the import of its part of the list.
            .filter(|r| r.event.action != 1)
            .map(|r| (r.event.device, r.event.action))
            .collect::<Vec<_>>();
        (states, accepted, trail, head.seq)
    }

    #[test]
    fn sharded_results_equal_one_shard() {
        let (states1, accepted1, mut trail1, seq1) = scenario(1);
        let (states3, accepted3, mut trail3, seq3) = scenario(3);
        assert!(states1.iter().all(|(r, s)| r.is_some() && s.is_some()));
        assert_eq!(states1, states3, "records and shadows");
        assert_eq!(accepted1, accepted3);
        assert!(
            accepted1.iter().all(|a| *a),
            "stale copies are answered, not refused"
        );
        // Per device, the audit entries come in the same order; across devices the shards
        // interleave them.
        let per_device = |trail: &[(Option<DeviceId>, u16)], d: DeviceId| {
            trail
                .iter()
                .filter(|(device, _)| *device == Some(d))
                .map(|(_, a)| *a)
                .collect::<Vec<_>>()
        };
        for i in 0..DEVICES {
            assert_eq!(per_device(&trail1, id(i)), per_device(&trail3, id(i)));
        }
        trail1.sort_unstable();
        trail3.sort_unstable();
        assert_eq!(trail1, trail3);
        // One import entry per shard that got devices (all three, unless the random shard
        // key sent every device to fewer).
        assert!((seq1..=seq1 + 2).contains(&seq3), "{seq1} {seq3}");
    }
}
