//! Property tests of the backend's multi-resolution retention.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeMap;

use iot_fleet::retention::{RetentionError, RetentionPolicy, SeriesStore, Stored};
use proptest::prelude::*;

const HOUR: u64 = 3_600_000;

/// A small policy so that random timestamps exercise both horizons.
fn policy() -> RetentionPolicy {
    RetentionPolicy {
        raw_ms: 6 * HOUR,
        rollup_ms: HOUR,
        rollup_retention_ms: 48 * HOUR,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert { at: u64, value: f32 },
    Prune { now: u64 },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0u64..100 * HOUR, -50.0f32..50.0).prop_map(|(at, value)| Op::Insert { at, value }),
            1 => (0u64..100 * HOUR).prop_map(|now| Op::Prune { now }),
        ],
        0..150,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever the order of late and early samples and prunes: raw samples are exactly the
    /// accepted ones within the raw horizon, and every kept rollup bucket counts exactly the
    /// samples accepted into it, so pruning raw data never loses what the rollups summarise.
    #[test]
    fn rollups_count_every_accepted_sample_and_raw_stays_within_its_horizon(ops in ops()) {
        let mut store: SeriesStore<u8> = SeriesStore::new(policy()).unwrap();
        // Model: bucket -> values accepted; raw timestamps accepted as raw.
        let mut buckets: BTreeMap<u64, Vec<f32>> = BTreeMap::new();
        let mut raw: BTreeMap<u64, f32> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert { at, value } => match store.insert(0, at, value) {
                    Ok(stored) => {
                        buckets.entry(at - at % HOUR).or_default().push(value);
                        if stored == Stored::RawAndRollup {
                            prop_assert!(raw.insert(at, value).is_none());
                        } else {
                            prop_assert!(at < store.raw_horizon_ms());
                        }
                    }
                    Err(RetentionError::Duplicate) => prop_assert!(raw.contains_key(&at)),
                    Err(RetentionError::Expired) => {
                        prop_assert!(at - at % HOUR < store.rollup_horizon_ms());
                    }
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                },
                Op::Prune { now } => {
                    store.prune(now);
                    let (raw_h, roll_h) = (store.raw_horizon_ms(), store.rollup_horizon_ms());
                    raw.retain(|at, _| *at >= raw_h);
                    buckets.retain(|b, _| *b >= roll_h);
                }
            }
            let kept_raw = store.raw(&0, 0, u64::MAX);
            prop_assert_eq!(kept_raw, raw.iter().map(|(a, v)| (*a, *v)).collect::<Vec<_>>());
            let kept = store.rollups(&0, 0, u64::MAX);
            prop_assert_eq!(kept.len(), buckets.len());
            for ((start, agg), (b, values)) in kept.iter().zip(&buckets) {
                prop_assert_eq!(start, b);
                prop_assert_eq!(agg.count(), values.len() as u64);
                let min = values.iter().copied().fold(f32::INFINITY, f32::min);
                prop_assert_eq!(agg.min(), Some(min));
            }
        }
    }
}
