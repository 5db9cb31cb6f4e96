//! Multi-resolution retention on the backend: raw samples for a short horizon (30 days by
//! default), hourly aggregates for a long one (2 years), pruning by time, and queries that
//! pick the resolution the range can be answered at.
//!
//! ```
//! use iot_fleet::retention::{QueryResult, RetentionPolicy, SeriesStore};
//!
//! const HOUR: u64 = 3_600_000;
//! const DAY: u64 = 24 * HOUR;
//! let mut store: SeriesStore<&str> = SeriesStore::new(RetentionPolicy::default())?;
//! for i in 0..(60 * 24) {
//!     store.insert("boiler/temp", i * HOUR, 60.0 + (i % 24) as f32)?;
//! }
//! store.prune(60 * DAY);
//! // The last 30 days are kept raw; the 60 days are kept hourly.
//! assert_eq!(store.raw_len(&"boiler/temp"), 30 * 24);
//! assert_eq!(store.rollup_len(&"boiler/temp"), 60 * 24);
//! assert!(matches!(store.query(&"boiler/temp", 50 * DAY, 51 * DAY, 1_000), QueryResult::Raw(_)));
//! assert!(matches!(store.query(&"boiler/temp", 0, 60 * DAY, 1_000_000), QueryResult::Rollup(_)));
//! # Ok::<(), iot_fleet::retention::RetentionError>(())
//! ```

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use iot_core::flow::{Aggregate, WindowSummary};
use iot_core::{Error, ErrorKind};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// How long each resolution is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RetentionPolicy {
    /// Raw samples older than this (relative to the last prune) are dropped.
    pub raw_ms: u64,
    /// Length of one rollup bucket (one hour by default).
    pub rollup_ms: u64,
    /// Rollup buckets older than this are dropped.
    pub rollup_retention_ms: u64,
}

impl Default for RetentionPolicy {
    /// Raw for 30 days, hourly aggregates for two years (730 days).
    fn default() -> Self {
        Self {
            raw_ms: 30 * DAY_MS,
            rollup_ms: HOUR_MS,
            rollup_retention_ms: 730 * DAY_MS,
        }
    }
}

/// Why a sample or policy was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// The value is NaN or infinite.
    #[error("sample is not a finite number")]
    NotFinite,
    /// A sample with that timestamp is already stored for the series.
    #[error("a sample with that timestamp is already stored")]
    Duplicate,
    /// The sample is older than every resolution still kept.
    #[error("sample is older than the retention horizon")]
    Expired,
    /// The rollup bucket is zero, or raw data would outlive the rollups.
    #[error("invalid retention policy")]
    InvalidPolicy,
}

impl Error for RetentionError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFinite | Self::InvalidPolicy => ErrorKind::InvalidInput,
            Self::Duplicate => ErrorKind::Conflict,
            Self::Expired => ErrorKind::Storage,
        }
    }
}

/// Where a stored sample went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Stored {
    /// Kept raw and counted in its rollup bucket.
    RawAndRollup,
    /// Older than the raw horizon (a late delivery): counted in its rollup bucket only.
    RollupOnly,
}

/// The answer to a query, at the resolution chosen.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum QueryResult {
    /// Raw samples `(at_ms, value)`, oldest first.
    Raw(Vec<(u64, f32)>),
    /// Rollup buckets `(bucket_start_ms, aggregate)`, oldest first.
    Rollup(Vec<(u64, Aggregate)>),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Series {
    raw: BTreeMap<u64, f32>,
    rollups: BTreeMap<u64, Aggregate>,
}

/// Time series of many keys (device and quantity) at two resolutions.
///
/// Every insert updates the rollup of its bucket at once, so rollups are complete for the raw
/// period too and pruning raw data loses nothing the rollups keep. Late samples (a gateway
/// flushing its store-and-forward buffer after an outage) are accepted out of order.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesStore<K> {
    policy: RetentionPolicy,
    series: BTreeMap<K, Series>,
    now_ms: u64,
}

impl<K: Ord + Clone> SeriesStore<K> {
    /// An empty store; fails unless the rollup bucket is positive and rollups live at least
    /// as long as raw data.
    pub fn new(policy: RetentionPolicy) -> Result<Self, RetentionError> {
        if policy.rollup_ms == 0 || policy.rollup_retention_ms < policy.raw_ms {
            return Err(RetentionError::InvalidPolicy);
        }
        Ok(Self {
            policy,
            series: BTreeMap::new(),
            now_ms: 0,
        })
    }

    /// The policy.
    pub const fn policy(&self) -> &RetentionPolicy {
        &self.policy
    }

    /// The oldest timestamp still kept raw.
    pub fn raw_horizon_ms(&self) -> u64 {
        self.now_ms.saturating_sub(self.policy.raw_ms)
    }

    /// The oldest bucket start still kept as a rollup.
    pub fn rollup_horizon_ms(&self) -> u64 {
        self.bucket(self.now_ms.saturating_sub(self.policy.rollup_retention_ms))
    }

    fn bucket(&self, at_ms: u64) -> u64 {
        at_ms.saturating_sub(at_ms.checked_rem(self.policy.rollup_ms).unwrap_or(0))
    }

    /// Stores one sample of `key`.
    ///
    /// A sample older than the raw horizon only updates its rollup bucket; since its raw
    /// neighbours are gone, a re-delivered copy of it cannot be recognised as a duplicate.
    pub fn insert(&mut self, key: K, at_ms: u64, value: f32) -> Result<Stored, RetentionError> {
        if !value.is_finite() {
            return Err(RetentionError::NotFinite);
        }
        let bucket = self.bucket(at_ms);
        if bucket < self.rollup_horizon_ms() {
            return Err(RetentionError::Expired);
        }
        let keep_raw = at_ms >= self.raw_horizon_ms();
        let series = self.series.entry(key).or_default();
        if keep_raw {
            if series.raw.contains_key(&at_ms) {
                return Err(RetentionError::Duplicate);
            }
            series.raw.insert(at_ms, value);
        }
        series
            .rollups
            .entry(bucket)
            .or_default()
            .add(value)
            .map_err(|_| RetentionError::NotFinite)?;
        Ok(if keep_raw {
            Stored::RawAndRollup
        } else {
            Stored::RollupOnly
        })
    }

    /// Stores a fog gateway's window summary: merged into the rollup bucket its window starts
    /// in (windows should divide the bucket length). No raw samples come with it.
    pub fn insert_summary(
        &mut self,
        key: K,
        summary: &WindowSummary,
    ) -> Result<(), RetentionError> {
        let bucket = self.bucket(summary.start_ms);
        if bucket < self.rollup_horizon_ms() {
            return Err(RetentionError::Expired);
        }
        let slot = self
            .series
            .entry(key)
            .or_default()
            .rollups
            .entry(bucket)
            .or_default();
        *slot = slot.merge(&summary.aggregate);
        Ok(())
    }

    /// Moves the store's clock to `now_ms` (never backwards) and drops raw samples older than
    /// the raw horizon and rollups older than the rollup horizon. Returns how many raw samples
    /// and rollup buckets were dropped.
    pub fn prune(&mut self, now_ms: u64) -> (usize, usize) {
        self.now_ms = self.now_ms.max(now_ms);
        let raw_horizon = self.raw_horizon_ms();
        let rollup_horizon = self.rollup_horizon_ms();
        let (mut raw_dropped, mut rollups_dropped) = (0usize, 0usize);
        for series in self.series.values_mut() {
            let kept_raw = series.raw.split_off(&raw_horizon);
            raw_dropped = raw_dropped.saturating_add(series.raw.len());
            series.raw = kept_raw;
            let kept = series.rollups.split_off(&rollup_horizon);
            rollups_dropped = rollups_dropped.saturating_add(series.rollups.len());
            series.rollups = kept;
        }
        self.series
            .retain(|_, s| !(s.raw.is_empty() && s.rollups.is_empty()));
        (raw_dropped, rollups_dropped)
    }

    /// Number of raw samples kept for `key`.
    pub fn raw_len(&self, key: &K) -> usize {
        self.series.get(key).map_or(0, |s| s.raw.len())
    }

    /// Number of rollup buckets kept for `key`.
    pub fn rollup_len(&self, key: &K) -> usize {
        self.series.get(key).map_or(0, |s| s.rollups.len())
    }

    /// Raw samples of `key` in `[from_ms, to_ms)`.
    pub fn raw(&self, key: &K, from_ms: u64, to_ms: u64) -> Vec<(u64, f32)> {
        match self.series.get(key) {
            Some(s) if from_ms < to_ms => s
                .raw
                .range(from_ms..to_ms)
                .map(|(at, v)| (*at, *v))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Rollup buckets of `key` starting in `[bucket(from_ms), to_ms)`.
    pub fn rollups(&self, key: &K, from_ms: u64, to_ms: u64) -> Vec<(u64, Aggregate)> {
        let from = self.bucket(from_ms);
        match self.series.get(key) {
            Some(s) if from < to_ms => s
                .rollups
                .range(from..to_ms)
                .map(|(at, a)| (*at, *a))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Answers `[from_ms, to_ms)` raw when the whole range lies within the raw horizon, holds
    /// at most `max_points` samples, and holds any raw sample at all (a series fed only with
    /// fog summaries has none); otherwise with rollup buckets.
    pub fn query(&self, key: &K, from_ms: u64, to_ms: u64, max_points: usize) -> QueryResult {
        if from_ms >= self.raw_horizon_ms() {
            let count = match self.series.get(key) {
                Some(s) if from_ms < to_ms => s.raw.range(from_ms..to_ms).count(),
                _ => 0,
            };
            let rollups = self.rollups(key, from_ms, to_ms);
            if count <= max_points && (count > 0 || rollups.is_empty()) {
                return QueryResult::Raw(self.raw(key, from_ms, to_ms));
            }
            return QueryResult::Rollup(rollups);
        }
        QueryResult::Rollup(self.rollups(key, from_ms, to_ms))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]
mod tests {
    use super::*;
    use iot_core::flow::Quantity;

    fn store() -> SeriesStore<u32> {
        SeriesStore::new(RetentionPolicy::default()).unwrap()
    }

    #[test]
    fn raw_thirty_days_and_hourly_two_years_after_pruning() {
        let mut s = store();
        let every = 10 * 60_000; // one sample every 10 minutes
        let days = 800u64;
        let mut at = 0;
        while at < days * DAY_MS {
            s.insert(1, at, (at / every % 7) as f32).unwrap();
            at += every;
            if at % DAY_MS == 0 {
                s.prune(at);
            }
        }
        assert_eq!(s.raw_len(&1) as u64, 30 * DAY_MS / every);
        assert_eq!(s.rollup_len(&1) as u64, 730 * 24);
        let raw = s.raw(&1, 0, u64::MAX);
        assert_eq!(raw.first().unwrap().0, (days - 30) * DAY_MS);
        let rollups = s.rollups(&1, 0, u64::MAX);
        assert_eq!(rollups.first().unwrap().0, (days - 730) * DAY_MS);
        assert!(rollups.iter().all(|(_, a)| a.count() == 6));
    }

    #[test]
    fn rollups_agree_with_the_raw_samples_they_summarise() {
        let mut s = store();
        for i in 0..120u64 {
            s.insert(7, i * 60_000, i as f32).unwrap();
        }
        let hours = s.rollups(&7, 0, 2 * HOUR_MS);
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0].1.mean(), Some(29.5));
        assert_eq!(hours[1].1.min(), Some(60.0));
        assert_eq!(hours[1].1.max(), Some(119.0));
    }

    #[test]
    fn queries_pick_raw_when_they_can_and_rollups_otherwise() {
        let mut s = store();
        for h in 0..(40 * 24u64) {
            s.insert(1, h * HOUR_MS, 1.0).unwrap();
        }
        s.prune(40 * DAY_MS);
        // Within the last 30 days and small enough: raw.
        match s.query(&1, 35 * DAY_MS, 36 * DAY_MS, 100) {
            QueryResult::Raw(points) => assert_eq!(points.len(), 24),
            other => panic!("{other:?}"),
        }
        // Too many points for the caller: hourly.
        assert!(matches!(
            s.query(&1, 35 * DAY_MS, 36 * DAY_MS, 10),
            QueryResult::Rollup(b) if b.len() == 24
        ));
        // Reaching before the raw horizon: hourly, complete.
        assert!(matches!(
            s.query(&1, 0, 40 * DAY_MS, usize::MAX),
            QueryResult::Rollup(b) if b.len() == 40 * 24
        ));
        assert_eq!(
            s.query(&2, 39 * DAY_MS, 40 * DAY_MS, 10),
            QueryResult::Raw(Vec::new())
        );
    }

    #[test]
    fn late_samples_land_at_the_resolution_still_kept() {
        let mut s = store();
        s.prune(800 * DAY_MS);
        assert_eq!(s.insert(1, 799 * DAY_MS, 1.0), Ok(Stored::RawAndRollup));
        assert_eq!(s.insert(1, 700 * DAY_MS, 2.0), Ok(Stored::RollupOnly));
        assert_eq!(s.insert(1, 60 * DAY_MS, 3.0), Err(RetentionError::Expired));
        assert_eq!(
            s.insert(1, 799 * DAY_MS, 9.0),
            Err(RetentionError::Duplicate)
        );
        assert_eq!(
            s.insert(1, 799 * DAY_MS + 1, f32::NAN),
            Err(RetentionError::NotFinite)
        );
        assert_eq!(s.raw_len(&1), 1);
        assert_eq!(s.rollup_len(&1), 2);
        assert_eq!(s.rollups(&1, 799 * DAY_MS, u64::MAX)[0].1.count(), 1);
        // The clock never goes back.
        s.prune(0);
        assert_eq!(s.raw_horizon_ms(), 770 * DAY_MS);
    }

    #[test]
    fn fog_summaries_merge_into_hourly_buckets_and_empty_series_vanish() {
        let mut s = store();
        let mut agg = Aggregate::EMPTY;
        for v in [1.0, 3.0] {
            agg.add(v).unwrap();
        }
        let summary = |start_ms| WindowSummary {
            start_ms,
            window_ms: 60_000,
            quantity: Quantity {
                code: 0,
                custom_id: 0,
            },
            aggregate: agg,
        };
        s.insert_summary(5, &summary(0)).unwrap();
        s.insert_summary(5, &summary(60_000)).unwrap();
        // Only rollups exist, so a query within the raw horizon still answers with them.
        assert!(matches!(s.query(&5, 0, HOUR_MS, 10), QueryResult::Rollup(b) if b.len() == 1));
        let hour = s.rollups(&5, 0, HOUR_MS);
        assert_eq!(hour.len(), 1);
        assert_eq!((hour[0].1.count(), hour[0].1.mean()), (4, Some(2.0)));
        assert_eq!(s.prune(1_000 * DAY_MS), (0, 1));
        assert_eq!(s.rollup_len(&5), 0);
        assert_eq!(
            s.insert_summary(5, &summary(0)),
            Err(RetentionError::Expired)
        );
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        let p = RetentionPolicy {
            rollup_ms: 0,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            SeriesStore::<u8>::new(p).err(),
            Some(RetentionError::InvalidPolicy)
        );
        let p = RetentionPolicy {
            raw_ms: 800 * DAY_MS,
            ..RetentionPolicy::default()
        };
        assert_eq!(
            SeriesStore::<u8>::new(p).err(),
            Some(RetentionError::InvalidPolicy)
        );
        assert_eq!(RetentionError::Expired.kind(), ErrorKind::Storage);
    }
}
