use super::*;
use crate::retry::Jitter;
use crate::rng::SplitMix64;

fn policy() -> BackoffPolicy {
    BackoffPolicy::new(100, 1_000).with_jitter(Jitter::None)
}

#[test]
fn reject_newest_counts_every_rejection() {
    let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
    for i in 0..5 {
        let r = o.push(MessageId(i), Priority::Critical, QoS::AtLeastOnce, &[1], 0);
        assert_eq!(r.is_ok(), i < 2);
    }
    assert_eq!(o.stats().accepted, 2);
    assert_eq!(o.stats().rejected, 3);
    assert_eq!(o.stats().dropped(), 3);
    assert!(o.contains(MessageId(0)) && o.contains(MessageId(1)));
    assert_eq!(
        o.push(MessageId(0), Priority::Low, QoS::AtMostOnce, &[], 0),
        Err(OutboxError::DuplicateId)
    );
    assert_eq!(
        o.push(MessageId(9), Priority::Low, QoS::AtMostOnce, &[0; 9], 0),
        Err(OutboxError::TooLarge { len: 9, max: 8 })
    );
    assert_eq!(o.stats().rejected, 4);
}

/// Telemetry fills the outbox up to the reserved slots; a control message still finds
/// room under either policy.
#[test]
fn reserved_slots_keep_room_for_control_messages() {
    for policy in [OverflowPolicy::RejectNewest, OverflowPolicy::DropOldest] {
        let mut o: Outbox<4, 8> = Outbox::new(policy, self::policy()).with_reserved(2);
        for i in 1..=2 {
            o.push(MessageId(i), Priority::Normal, QoS::AtLeastOnce, b"t", 0)
                .unwrap();
        }
        let third = o.push(MessageId(3), Priority::Normal, QoS::AtLeastOnce, b"t", 0);
        match policy {
            OverflowPolicy::RejectNewest => assert_eq!(third, Err(OutboxError::Full)),
            OverflowPolicy::DropOldest => {
                assert_eq!(third, Ok(PushOutcome::Evicted(MessageId(1))));
            }
        }
        for i in 10..12 {
            assert_eq!(
                o.push(MessageId(i), Priority::High, QoS::AtLeastOnce, b"c", 0),
                Ok(PushOutcome::Queued),
                "{policy:?}"
            );
        }
        assert_eq!(o.len(), 4);
    }
}

#[test]
fn drop_oldest_evicts_lowest_priority_first_and_never_outranks() {
    let mut o: Outbox<3, 8> = Outbox::new(OverflowPolicy::DropOldest, policy());
    o.push(MessageId(1), Priority::High, QoS::AtLeastOnce, &[], 0)
        .unwrap();
    o.push(MessageId(2), Priority::Low, QoS::AtLeastOnce, &[], 1)
        .unwrap();
    o.push(MessageId(3), Priority::Low, QoS::AtLeastOnce, &[], 2)
        .unwrap();
    assert_eq!(
        o.push(MessageId(4), Priority::Normal, QoS::AtLeastOnce, &[], 3),
        Ok(PushOutcome::Evicted(MessageId(2)))
    );
    assert_eq!(
        o.push(MessageId(5), Priority::Normal, QoS::AtLeastOnce, &[], 4),
        Ok(PushOutcome::Evicted(MessageId(3)))
    );
    // Now High, Normal(4), Normal(5): a Low message outranks nothing.
    assert_eq!(
        o.push(MessageId(6), Priority::Low, QoS::AtLeastOnce, &[], 5),
        Err(OutboxError::Full)
    );
    let s = o.stats();
    assert_eq!((s.accepted, s.evicted, s.rejected), (5, 2, 1));
}

#[test]
fn scheduling_priority_retransmission_and_ack() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<4, 8> =
        Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(3));
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"n", 0)
        .unwrap();
    o.push(MessageId(2), Priority::Critical, QoS::ExactlyOnce, b"c", 0)
        .unwrap();
    o.push(MessageId(3), Priority::Normal, QoS::AtMostOnce, b"z", 0)
        .unwrap();
    assert_eq!(o.next_due(0).unwrap().id, MessageId(2));
    assert_eq!(
        o.mark_sent(MessageId(2), 0, &mut rng),
        Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
    );
    assert_eq!(o.next_due(0).unwrap().id, MessageId(1)); // older of the two Normal
    assert_eq!(o.next_wakeup_ms(), Some(0));
    o.mark_sent(MessageId(1), 0, &mut rng).unwrap();
    assert_eq!(
        o.mark_sent(MessageId(3), 0, &mut rng),
        Ok(SentOutcome::Done)
    );
    assert_eq!(o.next_due(50), None);
    assert_eq!(o.next_wakeup_ms(), Some(100));
    assert!(o.ack(MessageId(2)));
    assert!(!o.ack(MessageId(2)));
    // Message 1: attempts 2 and 3; the third one's ack is awaited for the delay a
    // fourth attempt would have had (400 ms), then it expires.
    assert_eq!(
        o.mark_sent(MessageId(1), 100, &mut rng),
        Ok(SentOutcome::AwaitingAck { retry_at_ms: 300 })
    );
    assert_eq!(
        o.mark_sent(MessageId(1), 300, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 700 })
    );
    assert_eq!(o.len(), 1);
    assert_eq!(o.next_due(10_000), None);
    assert_eq!(o.take_expired(699), None);
    assert_eq!(o.take_expired(700).map(|e| e.id), Some(MessageId(1)));
    assert!(o.is_empty());
    let s = o.stats();
    assert_eq!((s.acked, s.sent_unacked, s.expired), (1, 1, 1));
    assert_eq!(
        o.mark_sent(MessageId(1), 0, &mut rng),
        Err(OutboxError::NotFound)
    );
}

#[test]
fn last_attempt_acked_after_mark_sent_counts_as_acked_not_expired() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<4, 8> =
        Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(2));
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"m", 0)
        .unwrap();
    assert_eq!(
        o.mark_sent(MessageId(1), 0, &mut rng),
        Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
    );
    assert_eq!(
        o.mark_sent(MessageId(1), 100, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 300 })
    );
    // Still queued, never retransmitted, waking the poll loop at the deadline.
    assert!(o.contains(MessageId(1)));
    let e = o.iter().next().unwrap();
    assert!(e.is_awaiting_last_ack());
    assert_eq!((e.attempts, e.ack_deadline_ms), (2, Some(300)));
    assert_eq!(o.next_due(299), None);
    assert_eq!(o.next_due(u64::MAX), None);
    assert_eq!(o.next_wakeup_ms(), Some(300));
    assert_eq!(o.take_expired(299), None);
    // The ack of the last attempt arrives before the deadline.
    let acked = o.ack_entry(MessageId(1)).unwrap();
    assert_eq!((acked.id, acked.attempts), (MessageId(1), 2));
    assert!(o.is_empty());
    assert_eq!(o.take_expired(u64::MAX), None);
    let s = o.stats();
    assert_eq!((s.accepted, s.acked, s.expired, s.dropped()), (1, 1, 0, 0));
}

#[test]
fn unacked_last_attempt_expires_exactly_once_at_its_deadline() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<4, 8> =
        Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(1));
    o.push(MessageId(5), Priority::High, QoS::ExactlyOnce, b"x", 0)
        .unwrap();
    o.push(MessageId(6), Priority::Low, QoS::AtLeastOnce, b"y", 0)
        .unwrap();
    assert_eq!(
        o.mark_sent(MessageId(5), 10, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 110 })
    );
    // The other message is unaffected and still due; the waiting one is skipped.
    assert_eq!(o.next_due(50).map(|e| e.id), Some(MessageId(6)));
    // Reconnecting does not buy the waiting message another attempt.
    o.retry_all_now(60);
    assert_eq!(o.next_due(60).map(|e| e.id), Some(MessageId(6)));
    // Sending it anyway does not move the deadline.
    assert_eq!(
        o.mark_sent(MessageId(5), 70, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 110 })
    );
    assert_eq!(o.take_expired(109), None);
    assert_eq!(o.stats().expired, 0);
    assert_eq!(o.take_expired(110).map(|e| e.id), Some(MessageId(5)));
    assert_eq!(o.stats().expired, 1);
    assert_eq!(o.take_expired(10_000), None);
    assert!(!o.ack(MessageId(5)), "a late ack finds nothing");
    let s = o.stats();
    assert_eq!((s.acked, s.expired, s.dropped()), (0, 1, 1));
    assert_eq!(o.len(), 1);
}

#[test]
fn give_up_on_the_deadline_also_awaits_the_last_ack() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<2, 8> =
        Outbox::new(OverflowPolicy::RejectNewest, policy().with_deadline_ms(150));
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"d", 0)
        .unwrap();
    assert_eq!(
        o.mark_sent(MessageId(1), 0, &mut rng),
        Ok(SentOutcome::AwaitingAck { retry_at_ms: 100 })
    );
    assert_eq!(
        o.mark_sent(MessageId(1), 100, &mut rng),
        Ok(SentOutcome::AwaitingAck { retry_at_ms: 150 })
    );
    // Past the deadline: no retry, but this attempt's ack is awaited (base delay 400).
    assert_eq!(
        o.mark_sent(MessageId(1), 150, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 550 })
    );
    assert!(o.ack(MessageId(1)));
    assert_eq!((o.stats().acked, o.stats().expired), (1, 0));
}

#[test]
fn at_most_once_is_removed_when_sent_whatever_the_budget() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<2, 8> =
        Outbox::new(OverflowPolicy::RejectNewest, policy().with_max_attempts(1));
    o.push(MessageId(1), Priority::Normal, QoS::AtMostOnce, b"z", 0)
        .unwrap();
    assert_eq!(
        o.mark_sent(MessageId(1), 0, &mut rng),
        Ok(SentOutcome::Done)
    );
    assert!(o.is_empty());
    assert_eq!(o.take_expired(u64::MAX), None);
    let s = o.stats();
    assert_eq!((s.sent_unacked, s.acked, s.expired), (1, 0, 0));
}

#[test]
fn waiting_message_keeps_its_slot_and_overflow_still_counts_drops() {
    let mut rng = SplitMix64::new(0);
    let retry = policy().with_max_attempts(1);
    // RejectNewest: the waiting message holds its slot until its deadline.
    let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, retry);
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"a", 0)
        .unwrap();
    o.push(MessageId(2), Priority::Normal, QoS::AtLeastOnce, b"b", 0)
        .unwrap();
    assert_eq!(
        o.mark_sent(MessageId(1), 0, &mut rng),
        Ok(SentOutcome::LastAttempt { expires_at_ms: 100 })
    );
    assert!(o.is_full());
    assert_eq!(
        o.push(MessageId(3), Priority::Critical, QoS::AtLeastOnce, b"c", 99),
        Err(OutboxError::Full)
    );
    assert_eq!(o.stats().rejected, 1);
    // Once its deadline has passed, a full outbox reclaims the slot as an expiry.
    assert_eq!(
        o.push(
            MessageId(3),
            Priority::Critical,
            QoS::AtLeastOnce,
            b"c",
            100
        ),
        Ok(PushOutcome::Queued)
    );
    let s = o.stats();
    assert_eq!((s.accepted, s.rejected, s.expired, s.evicted), (3, 1, 1, 0));
    assert!(!o.contains(MessageId(1)));

    // DropOldest: the waiting message is the oldest, so it is the one evicted.
    let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::DropOldest, retry);
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"a", 0)
        .unwrap();
    o.push(MessageId(2), Priority::Normal, QoS::AtLeastOnce, b"b", 0)
        .unwrap();
    o.mark_sent(MessageId(1), 0, &mut rng).unwrap();
    assert_eq!(
        o.push(MessageId(3), Priority::Normal, QoS::AtLeastOnce, b"c", 50),
        Ok(PushOutcome::Evicted(MessageId(1)))
    );
    assert_eq!(o.take_expired(u64::MAX), None, "evicted, not expired too");
    let s = o.stats();
    assert_eq!(
        (s.accepted, s.evicted, s.expired, s.dropped()),
        (3, 1, 0, 1)
    );
    let ids: std::vec::Vec<_> = o.iter().map(|e| e.id).collect();
    assert_eq!(ids, [MessageId(2), MessageId(3)]);
}

#[test]
fn slots_are_reused_without_disturbing_order() {
    let mut rng = SplitMix64::new(3);
    let mut o: Outbox<3, 4> = Outbox::new(OverflowPolicy::RejectNewest, policy());
    for round in 0..10u32 {
        for k in 0..3 {
            let id = MessageId(round * 3 + k);
            o.push(
                id,
                Priority::Normal,
                QoS::AtLeastOnce,
                &id.0.to_le_bytes(),
                0,
            )
            .unwrap();
        }
        // Sent oldest first, each carrying its own bytes.
        for k in 0..3 {
            let e = o.next_due(0).unwrap();
            assert_eq!(e.id, MessageId(round * 3 + k));
            assert_eq!(e.data.as_slice(), &e.id.0.to_le_bytes());
            let id = e.id;
            o.mark_sent(id, 0, &mut rng).unwrap();
        }
        // Acked out of order.
        for k in [1, 2, 0] {
            assert!(o.ack(MessageId(round * 3 + k)));
        }
        assert!(o.is_empty());
    }
    assert_eq!(o.stats().acked, 30);
}

#[test]
fn age_ranks_are_renumbered_before_they_wrap() {
    let mut rng = SplitMix64::new(0);
    let mut o: Outbox<4, 4> = Outbox::new(OverflowPolicy::RejectNewest, policy());
    // Two messages scheduled for retransmission stay queued while 70,000 others, more
    // than a `u16` age rank counts, pass through a third slot.
    for id in [1, 2] {
        o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"s", 0)
            .unwrap();
        o.mark_sent(MessageId(id), 0, &mut rng).unwrap();
    }
    for id in 10..70_010 {
        o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"p", 0)
            .unwrap();
        assert!(o.ack(MessageId(id)));
    }
    // Two young messages; the older of them is sent, then both are due with the old two.
    for id in [3, 4] {
        o.push(MessageId(id), Priority::Normal, QoS::AtLeastOnce, b"y", 0)
            .unwrap();
    }
    assert_eq!(o.next_due(0).map(|e| e.id), Some(MessageId(3)));
    o.mark_sent(MessageId(3), 0, &mut rng).unwrap();
    let mut sent = std::vec::Vec::new();
    while let Some(id) = o.next_due(100).map(|e| e.id) {
        sent.push(id);
        o.mark_sent(id, 100, &mut rng).unwrap();
    }
    // Oldest first across the retransmission and fresh chains: ranks stayed distinct.
    assert_eq!(sent, [1, 2, 3, 4].map(MessageId));
    let ids: std::vec::Vec<_> = o.iter().map(|e| e.id).collect();
    assert_eq!(ids, [1, 2, 3, 4].map(MessageId));
    // The young message joined the retransmission chain behind the old ones.
    o.retry_all_now(1_000);
    assert_eq!(o.next_due(1_000).map(|e| e.id), Some(MessageId(1)));
}

#[test]
fn save_and_restore_round_trip_and_detect_corruption() {
    let mut o: Outbox<4, 16> = Outbox::new(OverflowPolicy::DropOldest, policy());
    o.push(MessageId(7), Priority::High, QoS::ExactlyOnce, b"seven", 10)
        .unwrap();
    o.push(MessageId(8), Priority::Low, QoS::AtLeastOnce, b"", 11)
        .unwrap();
    let mut flash = MemStorage::<256>::new();
    o.save(&mut flash, 16).unwrap();

    let mut back: Outbox<4, 16> = Outbox::new(OverflowPolicy::DropOldest, policy());
    assert_eq!(back.restore(&mut flash, 16, 500), Ok(2));
    let mut ids: std::vec::Vec<_> = back.iter().map(|e| (e.id, e.data.to_vec())).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            (MessageId(7), b"seven".to_vec()),
            (MessageId(8), std::vec![])
        ]
    );
    assert_eq!(back.next_due(500).unwrap().id, MessageId(7));

    // A flipped bit anywhere in the body is caught; the outbox stays as it was.
    flash.bytes_mut()[16 + 14 + 21] ^= 1;
    assert_eq!(back.restore(&mut flash, 16, 0), Err(OutboxError::Corrupt));
    assert_eq!(back.len(), 2);
    // Erased flash is not an outbox.
    assert_eq!(
        back.restore(&mut MemStorage::<64>::new(), 0, 0),
        Err(OutboxError::Corrupt)
    );
    // Too small a region.
    assert_eq!(
        o.save(&mut MemStorage::<20>::new(), 0),
        Err(OutboxError::StorageTooSmall)
    );
}

#[cfg(feature = "std")]
#[test]
fn file_storage_persists_across_reopen() {
    let path = std::env::temp_dir().join(std::format!(
        "iot-transport-outbox-{}.bin",
        std::process::id()
    ));
    let mut o: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
    o.push(MessageId(1), Priority::Normal, QoS::AtLeastOnce, b"x", 0)
        .unwrap();
    let mut f = FileStorage::open(&path, 1024).unwrap();
    o.save(&mut f, 0).unwrap();
    drop(f);
    let mut f = FileStorage::open(&path, 1024).unwrap();
    let mut back: Outbox<2, 8> = Outbox::new(OverflowPolicy::RejectNewest, policy());
    assert_eq!(back.restore(&mut f, 0, 0), Ok(1));
    assert_eq!(back.iter().next().unwrap().data.as_slice(), b"x");
    let _ = std::fs::remove_file(&path);
}
