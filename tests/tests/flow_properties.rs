//! Property tests of the edge/fog filters in `iot_core::flow`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::flow::{
    Aggregate, AnomalyConfig, AnomalyDetector, Decision, KeyedWindowAggregator, ReportOnChange,
    WindowAggregator,
};
use iot_core::telemetry::{Measurement, Reading};
use proptest::prelude::*;

fn t(at_ms: u64, celsius: f32) -> Reading {
    Reading::new(at_ms, Measurement::Temperature { celsius })
}

/// Readings with non-decreasing timestamps: (gap before the reading, value).
fn trace() -> impl Strategy<Value = Vec<(u64, f32)>> {
    prop::collection::vec((0u64..120_000, -1_000.0f32..1_000.0), 1..200)
}

fn aggregate(values: &[f32]) -> Aggregate {
    let mut a = Aggregate::EMPTY;
    for v in values {
        a.add(*v).unwrap();
    }
    a
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn same_aggregate(a: &Aggregate, b: &Aggregate) -> bool {
    a.count() == b.count() && a.min() == b.min() && a.max() == b.max() && close(a.sum(), b.sum())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever the signal, after every reading the receiver's view (the last report) is
    /// within the deadband of the sensor's current value.
    #[test]
    fn report_on_change_keeps_the_receiver_within_the_deadband(
        deadband in 0.0f32..5.0,
        readings in trace(),
    ) {
        let mut filter = ReportOnChange::new(deadband).unwrap();
        let mut at = 0u64;
        for (gap, value) in readings {
            at += gap;
            let decision = filter.offer(&t(at, value)).unwrap();
            let view = filter.last_reported().unwrap();
            let err = (f64::from(view.measurement.value()) - f64::from(value)).abs();
            prop_assert!(err <= f64::from(deadband), "view off by {err}");
            if decision.is_report() {
                prop_assert_eq!(view, &t(at, value));
            }
        }
    }

    /// With a heartbeat, a suppressed reading is always less than `max_silence` after the
    /// last report: silence never outlasts the heartbeat period.
    #[test]
    fn heartbeat_bounds_the_silence_between_reports(
        max_silence in 1u64..300_000,
        readings in trace(),
    ) {
        let mut filter = ReportOnChange::new(0.5).unwrap().with_max_silence_ms(max_silence);
        let mut at = 0u64;
        for (gap, value) in readings {
            at += gap;
            let last_at = filter.last_reported().map(|r| r.at_ms);
            if filter.offer(&t(at, value)).unwrap() == Decision::Suppress {
                prop_assert!(at - last_at.unwrap() < max_silence);
            }
        }
    }

    /// Aggregating two halves and merging equals aggregating the whole: zone aggregates
    /// combine into the floor aggregate without revisiting the readings.
    #[test]
    fn merging_split_aggregates_equals_aggregating_the_whole(
        values in prop::collection::vec(-1e6f32..1e6, 0..100),
        split in any::<prop::sample::Index>(),
    ) {
        let cut = if values.is_empty() { 0 } else { split.index(values.len() + 1) };
        let (a, b) = values.split_at(cut);
        let merged = aggregate(a).merge(&aggregate(b));
        prop_assert!(same_aggregate(&merged, &aggregate(&values)));
        if let Some(mean) = merged.mean() {
            let exact: f64 = values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64;
            prop_assert!(close(mean, exact));
        }
    }

    /// Merge is commutative and associative (count, min and max exactly; the sum up to
    /// rounding), with the empty aggregate as identity: zones may be combined in any order.
    #[test]
    fn merge_is_commutative_associative_with_identity(
        x in prop::collection::vec(-1e6f32..1e6, 0..20),
        y in prop::collection::vec(-1e6f32..1e6, 0..20),
        z in prop::collection::vec(-1e6f32..1e6, 0..20),
    ) {
        let (a, b, c) = (aggregate(&x), aggregate(&y), aggregate(&z));
        prop_assert!(same_aggregate(&a.merge(&b), &b.merge(&a)));
        prop_assert!(same_aggregate(&a.merge(&b).merge(&c), &a.merge(&b.merge(&c))));
        prop_assert_eq!(a.merge(&Aggregate::EMPTY), a);
        prop_assert_eq!(Aggregate::EMPTY.merge(&a), a);
    }

    /// Every reading lands in exactly one window, the one that contains its timestamp.
    #[test]
    fn windows_partition_the_readings(
        window_ms in 1u64..100_000,
        readings in trace(),
    ) {
        let mut w = WindowAggregator::new(window_ms).unwrap();
        let mut at = 0u64;
        let mut closed = Vec::new();
        let mut times = Vec::new();
        for (gap, value) in &readings {
            at += gap;
            times.push(at);
            closed.extend(w.push(&t(at, *value)).unwrap());
        }
        closed.extend(w.flush());
        let total: u64 = closed.iter().map(|s| s.aggregate.count()).sum();
        prop_assert_eq!(total, readings.len() as u64);
        for s in &closed {
            prop_assert_eq!(s.start_ms % window_ms, 0);
            let inside = times
                .iter()
                .filter(|&&at| at >= s.start_ms && at < s.start_ms + window_ms)
                .count() as u64;
            prop_assert_eq!(inside, s.aggregate.count());
        }
        prop_assert!(closed.windows(2).all(|p| p[0].start_ms < p[1].start_ms));
    }

    /// The stuck flag is raised exactly when the last `n` readings are identical, and the
    /// jump flag exactly when the step from the previous reading exceeds the threshold.
    #[test]
    fn anomaly_flags_match_their_definitions(
        n in 2u16..6,
        max_jump in 0.0f32..10.0,
        values in prop::collection::vec(prop::sample::select(vec![0.0f32, 1.0, 2.5, 30.0]), 1..60),
    ) {
        let mut d = AnomalyDetector::new(AnomalyConfig {
            range: Some((0.0, 10.0)),
            stuck_after: Some(n),
            max_jump: Some(max_jump),
        })
        .unwrap();
        for (i, v) in values.iter().enumerate() {
            let found = d.check(&t(i as u64, *v)).unwrap();
            let n = usize::from(n);
            let stuck = i + 1 >= n && values[i + 1 - n..=i].iter().all(|x| x == v);
            prop_assert_eq!(found.stuck, stuck, "at {}", i);
            let jump = i > 0 && (f64::from(*v) - f64::from(values[i - 1])).abs() > f64::from(max_jump);
            prop_assert_eq!(found.jump, jump, "at {}", i);
            prop_assert_eq!(found.out_of_range, *v > 10.0);
        }
    }

    /// Keyed windows partition the readings too, key by key, and the combined aggregate of a
    /// window is the merge of its keys; with carry-forward, every key seen so far appears in
    /// every later window that time closes.
    #[test]
    fn keyed_windows_partition_by_key_and_carry_every_known_key(
        window_ms in 1u64..50_000,
        readings in prop::collection::vec((0u64..30_000, 0u8..4, -100.0f32..100.0), 1..150),
    ) {
        let mut plain: KeyedWindowAggregator<u8, 4> = KeyedWindowAggregator::new(window_ms).unwrap();
        let mut held: KeyedWindowAggregator<u8, 4> =
            KeyedWindowAggregator::new(window_ms).unwrap().carry_forward(true);
        let mut at = 0u64;
        let mut closed = Vec::new();
        let mut per_key = [0u64; 4];
        let mut seen = std::collections::BTreeSet::new();
        for (gap, key, value) in readings {
            at += gap;
            per_key[usize::from(key)] += 1;
            closed.extend(plain.push(key, &t(at, value)).unwrap());
            if let Some(w) = held.advance_to(at) {
                for k in &seen {
                    prop_assert!(w.get(k).is_some(), "key {} missing at {}", k, w.start_ms);
                }
            }
            held.push(key, &t(at, value)).unwrap();
            seen.insert(key);
        }
        closed.extend(plain.flush());
        for key in 0..4u8 {
            let total: u64 = closed.iter().filter_map(|w| w.get(&key)).map(Aggregate::count).sum();
            prop_assert_eq!(total, per_key[usize::from(key)]);
        }
        for w in &closed {
            let merged = Aggregate::merge_all(w.entries.iter().map(|(_, a)| a));
            prop_assert_eq!(w.combined(), merged);
            prop_assert!(w.entries.iter().all(|(_, a)| !a.is_empty()));
        }
    }
}
