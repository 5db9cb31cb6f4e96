//! Property: the outbox's indexed implementation (slots that never move, age and send-order
//! index lists) behaves exactly like a plain list scanned on every call — same next message,
//! same outcomes, same counters, same contents in the same order, same wake-up times —
//! under any sequence of pushes, sends, acks, expiries, reconnects, clock steps and
//! save/restore, with either overflow policy. The reference model also states the
//! last-attempt rule on its own: after its last permitted attempt a message is never due,
//! stays queued until acked or until its ack deadline passes, and is then expired once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{MessageId, QoS};
use iot_transport::SplitMix64;
use iot_transport::outbox::{
    MemStorage, Outbox, OutboxError, OutboxStats, OverflowPolicy, Priority, PushOutcome,
    SentOutcome,
};
use iot_transport::retry::{Backoff, BackoffPolicy, Jitter};
use proptest::prelude::*;

const N: usize = 4;
const M: usize = 8;

#[derive(Debug, Clone)]
struct ModelEntry {
    id: MessageId,
    priority: Priority,
    qos: QoS,
    order: u64,
    enqueued_ms: u64,
    next_attempt_ms: u64,
    ack_deadline_ms: Option<u64>,
    attempts: u32,
    backoff: Backoff,
    data: Vec<u8>,
}

/// The obvious implementation: a list in age order, scanned for everything.
struct Model {
    entries: Vec<ModelEntry>,
    policy: OverflowPolicy,
    retry: BackoffPolicy,
    next_order: u64,
    stats: OutboxStats,
}

impl Model {
    fn expired_index(&self, now: u64) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((e.ack_deadline_ms?, e.order, i)))
            .filter(|&(d, _, _)| d <= now)
            .min()
            .map(|(_, _, i)| i)
    }

    fn push(
        &mut self,
        id: MessageId,
        priority: Priority,
        qos: QoS,
        data: &[u8],
        now: u64,
    ) -> Result<PushOutcome, OutboxError> {
        if self.entries.iter().any(|e| e.id == id) {
            return Err(OutboxError::DuplicateId);
        }
        if data.len() > M {
            self.stats.rejected += 1;
            return Err(OutboxError::TooLarge {
                len: data.len(),
                max: M,
            });
        }
        let mut outcome = PushOutcome::Queued;
        if self.entries.len() == N {
            if let Some(i) = self.expired_index(now) {
                self.entries.remove(i);
                self.stats.expired += 1;
            } else {
                let victim = match self.policy {
                    OverflowPolicy::RejectNewest => None,
                    OverflowPolicy::DropOldest => self
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.priority <= priority)
                        .min_by_key(|(_, e)| (e.priority, e.order))
                        .map(|(i, _)| i),
                };
                let Some(i) = victim else {
                    self.stats.rejected += 1;
                    return Err(OutboxError::Full);
                };
                outcome = PushOutcome::Evicted(self.entries.remove(i).id);
                self.stats.evicted += 1;
            }
        }
        self.entries.push(ModelEntry {
            id,
            priority,
            qos,
            order: self.next_order,
            enqueued_ms: now,
            next_attempt_ms: now,
            ack_deadline_ms: None,
            attempts: 0,
            backoff: Backoff::new(self.retry, now),
            data: data.to_vec(),
        });
        self.next_order += 1;
        self.stats.accepted += 1;
        Ok(outcome)
    }

    fn next_due(&self, now: u64) -> Option<MessageId> {
        self.entries
            .iter()
            .filter(|e| e.ack_deadline_ms.is_none() && e.next_attempt_ms <= now)
            .max_by_key(|e| (e.priority, core::cmp::Reverse(e.order)))
            .map(|e| e.id)
    }

    fn mark_sent(
        &mut self,
        id: MessageId,
        now: u64,
        rng: &mut SplitMix64,
    ) -> Result<SentOutcome, OutboxError> {
        let i = self
            .entries
            .iter()
            .position(|e| e.id == id)
            .ok_or(OutboxError::NotFound)?;
        let e = &mut self.entries[i];
        e.attempts += 1;
        if e.qos == QoS::AtMostOnce {
            self.entries.remove(i);
            self.stats.sent_unacked += 1;
            return Ok(SentOutcome::Done);
        }
        if let Some(d) = e.ack_deadline_ms {
            return Ok(SentOutcome::LastAttempt { expires_at_ms: d });
        }
        Ok(match e.backoff.next_delay(now, rng) {
            Some(d) => {
                e.next_attempt_ms = now + d.max(1);
                SentOutcome::AwaitingAck {
                    retry_at_ms: e.next_attempt_ms,
                }
            }
            None => {
                let d = now + self.retry.base_delay_ms(e.backoff.failures()).max(1);
                e.next_attempt_ms = u64::MAX;
                e.ack_deadline_ms = Some(d);
                SentOutcome::LastAttempt { expires_at_ms: d }
            }
        })
    }

    fn ack(&mut self, id: MessageId) -> bool {
        match self.entries.iter().position(|e| e.id == id) {
            Some(i) => {
                self.entries.remove(i);
                self.stats.acked += 1;
                true
            }
            None => false,
        }
    }

    fn take_expired(&mut self, now: u64) -> Option<MessageId> {
        let i = self.expired_index(now)?;
        self.stats.expired += 1;
        Some(self.entries.remove(i).id)
    }

    fn retry_all_now(&mut self, now: u64) {
        for e in &mut self.entries {
            if e.ack_deadline_ms.is_none() {
                e.next_attempt_ms = e.next_attempt_ms.min(now);
            }
        }
    }

    fn next_wakeup_ms(&self) -> Option<u64> {
        self.entries
            .iter()
            .map(|e| e.next_attempt_ms.min(e.ack_deadline_ms.unwrap_or(u64::MAX)))
            .min()
    }

    /// Save and restore: every message becomes fresh and due at `now`, in age order.
    fn reload(&mut self, now: u64) {
        for e in &mut self.entries {
            e.order = self.next_order;
            self.next_order += 1;
            e.next_attempt_ms = now;
            e.ack_deadline_ms = None;
            e.backoff = Backoff::new(self.retry, now);
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        id: u32,
        priority: u8,
        qos: u8,
        len: usize,
    },
    SendDue,
    MarkSent(u32),
    Ack(u32),
    TakeExpired,
    RetryAllNow,
    Advance(u64),
    SaveRestore,
}

/// Eight ids, pairs of which share the low six bits (the outbox's duplicate filter).
fn id() -> impl Strategy<Value = u32> {
    (0u32..8).prop_map(|i| i % 4 + i / 4 * 64)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (id(), 0u8..4, 0u8..3, 0usize..=9)
            .prop_map(|(id, priority, qos, len)| Op::Push { id, priority, qos, len }),
        4 => Just(Op::SendDue),
        1 => id().prop_map(Op::MarkSent),
        3 => id().prop_map(Op::Ack),
        2 => Just(Op::TakeExpired),
        1 => Just(Op::RetryAllNow),
        3 => (0u64..120).prop_map(Op::Advance),
        1 => Just(Op::SaveRestore),
    ]
}

fn priority(code: u8) -> Priority {
    [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ][usize::from(code)]
}

fn check(o: &Outbox<N, M>, m: &Model, now: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(o.stats(), m.stats);
    prop_assert_eq!(o.len(), m.entries.len());
    prop_assert_eq!(o.is_full(), m.entries.len() == N);
    prop_assert_eq!(o.next_due(now).map(|e| e.id), m.next_due(now));
    prop_assert_eq!(o.next_wakeup_ms(), m.next_wakeup_ms());
    let ours: Vec<_> = o
        .iter()
        .map(|e| {
            (
                e.id,
                e.priority,
                e.qos,
                e.enqueued_ms,
                e.attempts,
                e.next_attempt_ms,
                e.ack_deadline_ms,
                e.is_awaiting_last_ack(),
                e.data.to_vec(),
            )
        })
        .collect();
    let model: Vec<_> = m
        .entries
        .iter()
        .map(|e| {
            (
                e.id,
                e.priority,
                e.qos,
                e.enqueued_ms,
                e.attempts,
                e.next_attempt_ms,
                e.ack_deadline_ms,
                e.ack_deadline_ms.is_some(),
                e.data.clone(),
            )
        })
        .collect();
    prop_assert_eq!(ours, model);
    let accounted = m.stats.acked
        + m.stats.sent_unacked
        + m.stats.evicted
        + m.stats.expired
        + m.entries.len() as u32;
    prop_assert_eq!(
        m.stats.accepted,
        accounted,
        "every accepted message accounted for"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn indexed_outbox_matches_a_scanned_list_under_any_operations(
        drop_oldest in any::<bool>(),
        max_attempts in 0u32..4,
        deadline in prop::option::of(0u64..300),
        jitter in 0u8..3,
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let policy = if drop_oldest { OverflowPolicy::DropOldest } else { OverflowPolicy::RejectNewest };
        let mut retry = BackoffPolicy::new(10, 100)
            .with_max_attempts(max_attempts)
            .with_jitter([Jitter::None, Jitter::Full, Jitter::Equal][usize::from(jitter)]);
        if let Some(d) = deadline {
            retry = retry.with_deadline_ms(d);
        }
        let mut o: Outbox<N, M> = Outbox::new(policy, retry);
        let mut m = Model { entries: Vec::new(), policy, retry, next_order: 0, stats: OutboxStats::default() };
        let (mut rng_o, mut rng_m) = (SplitMix64::new(seed), SplitMix64::new(seed));
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Push { id, priority: p, qos, len } => {
                    let qos = QoS::from_code(qos).unwrap();
                    let data: Vec<u8> = (0..len).map(|k| (id as u8) ^ (k as u8)).collect();
                    let a = o.push(MessageId(id), priority(p), qos, &data, now);
                    let b = m.push(MessageId(id), priority(p), qos, &data, now);
                    prop_assert_eq!(a, b);
                }
                Op::SendDue => {
                    if let Some(id) = o.next_due(now).map(|e| e.id) {
                        let a = o.mark_sent(id, now, &mut rng_o);
                        let b = m.mark_sent(id, now, &mut rng_m);
                        prop_assert_eq!(a, b);
                        // A message is never due again at the time it was sent.
                        prop_assert_ne!(o.next_due(now).map(|e| e.id), Some(id));
                    }
                }
                Op::MarkSent(id) => {
                    let a = o.mark_sent(MessageId(id), now, &mut rng_o);
                    let b = m.mark_sent(MessageId(id), now, &mut rng_m);
                    prop_assert_eq!(a, b);
                }
                Op::Ack(id) => prop_assert_eq!(o.ack(MessageId(id)), m.ack(MessageId(id))),
                Op::TakeExpired => {
                    prop_assert_eq!(o.take_expired(now).map(|e| e.id), m.take_expired(now));
                }
                Op::RetryAllNow => {
                    o.retry_all_now(now);
                    m.retry_all_now(now);
                }
                Op::Advance(dt) => now += dt,
                Op::SaveRestore => {
                    let mut flash = MemStorage::<256>::new();
                    o.save(&mut flash, 0).unwrap();
                    prop_assert_eq!(o.restore(&mut flash, 0, now), Ok(m.entries.len()));
                    m.reload(now);
                }
            }
            check(&o, &m, now)?;
        }
    }
}
