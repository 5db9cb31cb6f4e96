//! Group commit: one writer thread gathers the batches of many callers into one transaction.
//!
//! Durability costs one fsync (SQLite) or one commit round trip (PostgreSQL) per
//! *transaction*, not per message. Callers [`GroupCommitHandle::submit`] a [`Batch`] and get a
//! [`Pending`]; the writer takes everything queued (up to
//! [`GroupCommitConfig::max_batch_ops`] ops), commits it with [`Store::commit`], and then
//! answers every caller. A backend acknowledges a device's message only after
//! [`Pending::wait`] returned `Ok`: durable before acknowledged.
//!
//! The queue is bounded ([`GroupCommitConfig::queue_capacity`] batches): when the store
//! cannot keep up, `submit` blocks (backpressure) and `try_submit` returns
//! [`StoreError::Busy`], so memory does not grow with the load.
//!
//! Each caller's batch keeps its own [`crate::BatchMode`]: an atomic batch that conflicts is
//! rolled back alone, and the other callers' batches in the same transaction still commit. A
//! storage error fails the whole transaction, and every caller in it gets the error.
//!
//! ```
//! use iot_core::id::{DeviceId, TenantId};
//! use iot_store::{Batch, GroupCommit, GroupCommitConfig, Op, Shadow, ShadowExpect, SqliteStore};
//!
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("fleet.db"))?;
//! let group = GroupCommit::spawn(Box::new(store), GroupCommitConfig::default())?;
//! let handle = group.handle();
//! let shadow = Shadow {
//!     device: DeviceId::from_mac([0x24, 0x0a, 0xc4, 0, 0, 1]),
//!     name: String::new(),
//!     version: 1,
//!     document: vec![0xa0],
//! };
//! let pending = handle.submit(Batch::independent(vec![Op::PutShadow {
//!     shadow,
//!     expected: ShadowExpect::Absent,
//! }]))?;
//! let outcome = pending.wait()?; // durable now: acknowledge the device
//! assert!(outcome.committed);
//! let _store = group.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use crate::model::{Batch, BatchOutcome};
use crate::{Store, StoreError};

/// Limits of a [`GroupCommit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// How many submissions (a batch, or a list of batches given to
    /// [`GroupCommitHandle::submit_all`]) may wait for the writer; `submit` blocks beyond it.
    pub queue_capacity: usize,
    /// The writer stops gathering once a transaction holds this many ops (a single larger
    /// batch still goes through whole).
    pub max_batch_ops: usize,
}

impl Default for GroupCommitConfig {
    /// 4,096 queued submissions, 2,048 ops per transaction.
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch_ops: 2048,
        }
    }
}

type Reply = SyncSender<Result<Vec<BatchOutcome>, StoreError>>;

enum Message {
    Work(Vec<Batch>, Reply),
    Stop,
}

/// The writer thread and its queue. Dropping it stops the writer after the queued work.
pub struct GroupCommit {
    sender: SyncSender<Message>,
    writer: Option<JoinHandle<Box<dyn Store + Send>>>,
}

impl core::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// A cloneable submitter to a [`GroupCommit`]; one per caller thread.
#[derive(Clone)]
pub struct GroupCommitHandle {
    sender: SyncSender<Message>,
}

impl core::fmt::Debug for GroupCommitHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupCommitHandle").finish_non_exhaustive()
    }
}

/// A submitted batch on its way to durability.
#[derive(Debug)]
#[must_use = "the batch is durable only once `wait` returns Ok"]
pub struct Pending {
    all: PendingAll,
}

impl Pending {
    /// Blocks until the batch's transaction committed (its outcome) or failed (the error).
    /// [`StoreError::Closed`] when the writer stopped before handling it.
    pub fn wait(self) -> Result<BatchOutcome, StoreError> {
        self.all
            .wait()?
            .pop()
            .ok_or(StoreError::Backend("no outcome for the batch".into()))
    }
}

/// Batches submitted together on their way to durability (they commit in one transaction).
#[derive(Debug)]
#[must_use = "the batches are durable only once `wait` returns Ok"]
pub struct PendingAll {
    reply: Receiver<Result<Vec<BatchOutcome>, StoreError>>,
}

impl PendingAll {
    /// Blocks until the transaction committed (one outcome per batch, in order) or failed (the
    /// error). [`StoreError::Closed`] when the writer stopped before handling them.
    pub fn wait(self) -> Result<Vec<BatchOutcome>, StoreError> {
        self.reply.recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl GroupCommit {
    /// Starts the writer thread that owns `store`.
    pub fn spawn(
        store: Box<dyn Store + Send>,
        config: GroupCommitConfig,
    ) -> Result<Self, StoreError> {
        if config.queue_capacity == 0 || config.max_batch_ops == 0 {
            return Err(StoreError::InvalidInput(
                "queue capacity and batch size must be positive",
            ));
        }
        let (sender, receiver) = mpsc::sync_channel(config.queue_capacity);
        let writer = std::thread::Builder::new()
            .name("iot-store-group-commit".into())
            .spawn(move || run_writer(store, &receiver, config.max_batch_ops))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            sender,
            writer: Some(writer),
        })
    }

    /// A submitter for one caller.
    #[must_use]
    pub fn handle(&self) -> GroupCommitHandle {
        GroupCommitHandle {
            sender: self.sender.clone(),
        }
    }

    /// Commits the work queued so far, stops the writer and returns the store. Batches
    /// submitted afterwards fail with [`StoreError::Closed`].
    pub fn shutdown(mut self) -> Result<Box<dyn Store + Send>, StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Box<dyn Store + Send>, StoreError> {
        let writer = self.writer.take().ok_or(StoreError::Closed)?;
        // A send error means the writer is already gone; join tells how.
        let _ = self.sender.send(Message::Stop);
        writer
            .join()
            .map_err(|_| StoreError::Backend("the group-commit writer panicked".into()))
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.stop();
        }
    }
}

impl GroupCommitHandle {
    /// Queues `batch`, waiting while the queue is full.
    pub fn submit(&self, batch: Batch) -> Result<Pending, StoreError> {
        Ok(Pending {
            all: self.submit_all(vec![batch])?,
        })
    }

    /// Queues `batch`, or returns [`StoreError::Busy`] at once when the queue is full.
    pub fn try_submit(&self, batch: Batch) -> Result<Pending, StoreError> {
        Ok(Pending {
            all: self.try_submit_all(vec![batch])?,
        })
    }

    /// Queues several batches as one submission (one queue slot, one answer), waiting while
    /// the queue is full. They commit in the same transaction, each batch with its own
    /// [`crate::BatchMode`]. A backend that handled a burst of messages submits their batches
    /// together and acknowledges them all when `wait` returns: fewer thread wake-ups per
    /// message than one submission each.
    pub fn submit_all(&self, batches: Vec<Batch>) -> Result<PendingAll, StoreError> {
        let (reply, pending) = mpsc::sync_channel(1);
        if batches.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else {
            self.sender
                .send(Message::Work(batches, reply))
                .map_err(|_| StoreError::Closed)?;
        }
        Ok(PendingAll { reply: pending })
    }

    /// [`GroupCommitHandle::submit_all`], or [`StoreError::Busy`] at once when the queue is
    /// full.
    pub fn try_submit_all(&self, batches: Vec<Batch>) -> Result<PendingAll, StoreError> {
        let (reply, pending) = mpsc::sync_channel(1);
        if batches.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return Ok(PendingAll { reply: pending });
        }
        match self.sender.try_send(Message::Work(batches, reply)) {
            Ok(()) => Ok(PendingAll { reply: pending }),
            Err(TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    /// Submits `batch` and waits until it is durable.
    pub fn commit(&self, batch: Batch) -> Result<BatchOutcome, StoreError> {
        self.submit(batch)?.wait()
    }
}

fn run_writer(
    mut store: Box<dyn Store + Send>,
    receiver: &Receiver<Message>,
    max_batch_ops: usize,
) -> Box<dyn Store + Send> {
    let mut batches: Vec<Batch> = Vec::new();
    // Each submission: how many of `batches` are its, and where to answer.
    let mut requests: Vec<(usize, Reply)> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let mut ops = 0usize;
        let mut take = |list: Vec<Batch>, reply: Reply, ops: &mut usize| {
            *ops = list
                .iter()
                .fold(*ops, |sum, b| sum.saturating_add(b.ops.len()));
            requests.push((list.len(), reply));
            batches.extend(list);
        };
        // Block for the first piece of work, then take whatever else is already queued.
        match receiver.recv() {
            Ok(Message::Work(list, reply)) => take(list, reply, &mut ops),
            Ok(Message::Stop) | Err(_) => stopping = true,
        }
        while ops < max_batch_ops {
            match receiver.try_recv() {
                Ok(Message::Work(list, reply)) => take(list, reply, &mut ops),
                Ok(Message::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        if batches.is_empty() {
            continue;
        }
        match store.commit(&batches) {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (count, reply) in requests.drain(..) {
                    let part: Vec<BatchOutcome> = outcomes.by_ref().take(count).collect();
                    // A caller that stopped waiting is not an error of the others.
                    let _ = if part.len() == count {
                        reply.send(Ok(part))
                    } else {
                        reply.send(Err(StoreError::Backend(
                            "the store returned fewer outcomes than batches".into(),
                        )))
                    };
                }
            }
            Err(e) => {
                for (_, reply) in requests.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        batches.clear();
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditHead, AuditRecord};
    use crate::model::{Challenge, DeviceRecord, OtaProgress, Rollout, Shadow, Tenant};
    use iot_core::id::{DeviceId, TenantId};
    use std::sync::mpsc::{Receiver, Sender};

    /// A store whose commits wait for permission, so a test controls when the writer is busy.
    struct GatedStore {
        entered: Sender<usize>,
        permits: Receiver<Result<(), StoreError>>,
    }

    impl Store for GatedStore {
        fn commit(&mut self, batches: &[Batch]) -> Result<Vec<BatchOutcome>, StoreError> {
            let _ = self.entered.send(batches.len());
            self.permits.recv().map_err(|_| StoreError::Closed)??;
            Ok(batches
                .iter()
                .map(|b| BatchOutcome {
                    committed: true,
                    ops: vec![crate::OpOutcome::Applied; b.ops.len()],
                })
                .collect())
        }
        fn tenant(&mut self, _: &TenantId) -> Result<Option<Tenant>, StoreError> {
            Ok(None)
        }
        fn tenants(&mut self, _: Option<&TenantId>, _: u32) -> Result<Vec<Tenant>, StoreError> {
            Ok(Vec::new())
        }
        fn device(&mut self, _: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
            Ok(None)
        }
        fn devices(
            &mut self,
            _: &TenantId,
            _: Option<&DeviceId>,
            _: u32,
        ) -> Result<Vec<DeviceRecord>, StoreError> {
            Ok(Vec::new())
        }
        fn challenge(&mut self, _: &DeviceId) -> Result<Option<Challenge>, StoreError> {
            Ok(None)
        }
        fn shadow(&mut self, _: &DeviceId, _: &str) -> Result<Option<Shadow>, StoreError> {
            Ok(None)
        }
        fn shadows(
            &mut self,
            _: &DeviceId,
            _: Option<&str>,
            _: u32,
        ) -> Result<Vec<Shadow>, StoreError> {
            Ok(Vec::new())
        }
        fn rollout(&mut self, _: u64) -> Result<Option<Rollout>, StoreError> {
            Ok(None)
        }
        fn rollouts(&mut self, _: Option<u64>, _: u32) -> Result<Vec<Rollout>, StoreError> {
            Ok(Vec::new())
        }
        fn ota_progress(
            &mut self,
            _: u64,
            _: Option<&DeviceId>,
            _: u32,
        ) -> Result<Vec<OtaProgress>, StoreError> {
            Ok(Vec::new())
        }
        fn audit_head(&mut self) -> Result<AuditHead, StoreError> {
            Ok(AuditHead::EMPTY)
        }
        fn audit_range(&mut self, _: u64, _: u32) -> Result<Vec<AuditRecord>, StoreError> {
            Ok(Vec::new())
        }
        fn revision(&mut self, _: &str) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn claim(
            &mut self,
            _: &str,
            _: &str,
            _: u64,
            _: u64,
        ) -> Result<Option<crate::Lease>, StoreError> {
            Ok(None)
        }
        fn release(&mut self, _: &str, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn lease(&mut self, _: &str) -> Result<Option<crate::Lease>, StoreError> {
            Ok(None)
        }
    }

    fn gated() -> (GroupCommit, Receiver<usize>, Sender<Result<(), StoreError>>) {
        let (entered, entered_rx) = mpsc::channel();
        let (permit_tx, permits) = mpsc::channel();
        let group = GroupCommit::spawn(
            Box::new(GatedStore { entered, permits }),
            GroupCommitConfig {
                queue_capacity: 2,
                max_batch_ops: 100,
            },
        )
        .unwrap();
        (group, entered_rx, permit_tx)
    }

    fn one_op() -> Batch {
        Batch::independent(vec![crate::Op::DeleteChallenge(DeviceId::from_mac([0; 6]))])
    }

    #[test]
    fn a_full_queue_pushes_back_and_queued_batches_share_one_commit() {
        let (group, entered, permits) = gated();
        let handle = group.handle();
        let first = handle.submit(one_op()).unwrap();
        // The writer holds the first batch inside commit: the queue has room for exactly two.
        assert_eq!(entered.recv().unwrap(), 1);
        let second = handle.try_submit(one_op()).unwrap();
        let third = handle.try_submit(one_op()).unwrap();
        assert_eq!(handle.try_submit(one_op()).unwrap_err(), StoreError::Busy);
        permits.send(Ok(())).unwrap();
        assert!(first.wait().unwrap().committed);
        // Both waiting batches go into the next transaction together.
        assert_eq!(entered.recv().unwrap(), 2);
        permits.send(Ok(())).unwrap();
        assert!(second.wait().unwrap().committed);
        assert!(third.wait().unwrap().committed);
        drop(permits);
        drop(group);
    }

    #[test]
    fn a_failed_commit_fails_every_caller_in_it() {
        let (group, entered, permits) = gated();
        let handle = group.handle();
        let first = handle.submit(one_op()).unwrap();
        assert_eq!(entered.recv().unwrap(), 1);
        let second = handle.submit(one_op()).unwrap();
        let third = handle.submit(one_op()).unwrap();
        permits.send(Ok(())).unwrap();
        assert!(first.wait().is_ok());
        assert_eq!(entered.recv().unwrap(), 2);
        permits.send(Err(StoreError::Full("disk".into()))).unwrap();
        assert_eq!(second.wait(), Err(StoreError::Full("disk".into())));
        assert_eq!(third.wait(), Err(StoreError::Full("disk".into())));
        // The writer carries on after a failed transaction.
        let fourth = handle.submit(one_op()).unwrap();
        assert_eq!(entered.recv().unwrap(), 1);
        permits.send(Ok(())).unwrap();
        assert!(fourth.wait().is_ok());
        drop(permits);
        drop(group);
    }

    #[test]
    fn batches_submitted_together_are_answered_together_in_order() {
        let (group, entered, permits) = gated();
        let handle = group.handle();
        let first = handle.submit(one_op()).unwrap();
        assert_eq!(entered.recv().unwrap(), 1);
        let ops = |n: usize| Batch::independent(vec![one_op().ops[0].clone(); n]);
        let together = handle.submit_all(vec![ops(3), ops(1), ops(2)]).unwrap();
        let alone = handle.submit(ops(4)).unwrap();
        assert!(
            handle
                .submit_all(Vec::new())
                .unwrap()
                .wait()
                .unwrap()
                .is_empty()
        );
        permits.send(Ok(())).unwrap();
        assert!(first.wait().is_ok());
        // One transaction for both submissions: four batches.
        assert_eq!(entered.recv().unwrap(), 4);
        permits.send(Ok(())).unwrap();
        let lengths: Vec<usize> = together
            .wait()
            .unwrap()
            .iter()
            .map(|o| o.ops.len())
            .collect();
        assert_eq!(lengths, vec![3, 1, 2]);
        assert_eq!(alone.wait().unwrap().ops.len(), 4);
        drop(permits);
        drop(group);
    }

    #[test]
    fn zero_limits_are_refused() {
        let (entered, _) = mpsc::channel();
        let (_, permits) = mpsc::channel();
        let result = GroupCommit::spawn(
            Box::new(GatedStore { entered, permits }),
            GroupCommitConfig {
                queue_capacity: 0,
                max_batch_ops: 1,
            },
        );
        assert!(matches!(result, Err(StoreError::InvalidInput(_))));
    }
}
