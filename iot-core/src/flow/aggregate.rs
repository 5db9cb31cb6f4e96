//! Window aggregation: min, max, mean and count over tumbling time windows, per stream or per
//! key, and the merge that turns zone aggregates into a floor aggregate.

use super::{FlowError, Quantity, checked_value};
use crate::telemetry::Reading;

/// Count, minimum, maximum and sum of a set of finite values.
///
/// The sum is kept in `f64`: a sum of `f32` values cannot overflow it (2^64 values of
/// `f32::MAX` stay below `f64::MAX`), so [`Aggregate::mean`] is always finite. Merging is
/// associative and commutative for count, min and max, and for the sum up to `f64` rounding,
/// so aggregates of zones combine into the aggregate of the floor they tile.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Aggregate {
    count: u64,
    min: f32,
    max: f32,
    sum: f64,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Aggregate {
    /// The aggregate of no values.
    pub const EMPTY: Aggregate = Aggregate {
        count: 0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        sum: 0.0,
    };

    /// The aggregate of one value; NaN and infinities are refused.
    pub fn of(value: f32) -> Result<Self, FlowError> {
        let mut a = Self::EMPTY;
        a.add(value)?;
        Ok(a)
    }

    /// Rebuilds an aggregate from stored parts (for example a backend's hourly row).
    ///
    /// Fails with [`FlowError::InvalidConfig`] unless the parts are consistent: all finite,
    /// `min <= max`, and the sum within `count * [min, max]` (with a little rounding slack).
    /// `count == 0` must come with the parts of [`Aggregate::EMPTY`].
    pub fn from_parts(count: u64, min: f32, max: f32, sum: f64) -> Result<Self, FlowError> {
        if count == 0 {
            return if sum == 0.0 {
                Ok(Self::EMPTY)
            } else {
                Err(FlowError::InvalidConfig)
            };
        }
        if !(min.is_finite() && max.is_finite() && sum.is_finite()) || min > max {
            return Err(FlowError::InvalidConfig);
        }
        #[allow(clippy::cast_precision_loss)] // a count's magnitude is what matters here
        let n = count as f64;
        let slack = 1e-6 * (n * (f64::from(max) - f64::from(min)) + 1.0).max(sum.abs());
        if sum < n * f64::from(min) - slack || sum > n * f64::from(max) + slack {
            return Err(FlowError::InvalidConfig);
        }
        Ok(Self {
            count,
            min,
            max,
            sum,
        })
    }

    /// Adds one value; NaN and infinities are refused and leave the aggregate unchanged.
    pub fn add(&mut self, value: f32) -> Result<(), FlowError> {
        if !value.is_finite() {
            return Err(FlowError::Measurement(
                crate::telemetry::MeasurementError::NotFinite,
            ));
        }
        self.count = self.count.saturating_add(1);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += f64::from(value);
        Ok(())
    }

    /// The aggregate of both sets of values (weighted by count).
    #[must_use]
    pub fn merge(&self, other: &Aggregate) -> Aggregate {
        Aggregate {
            count: self.count.saturating_add(other.count),
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            sum: self.sum + other.sum,
        }
    }

    /// Merges every aggregate of `parts` (the floor from its zones).
    pub fn merge_all<'a, I: IntoIterator<Item = &'a Aggregate>>(parts: I) -> Aggregate {
        parts
            .into_iter()
            .fold(Aggregate::EMPTY, |acc, part| acc.merge(part))
    }

    /// Number of values.
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// True when no value was added.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The smallest value, if any.
    pub const fn min(&self) -> Option<f32> {
        if self.count == 0 {
            None
        } else {
            Some(self.min)
        }
    }

    /// The largest value, if any.
    pub const fn max(&self) -> Option<f32> {
        if self.count == 0 {
            None
        } else {
            Some(self.max)
        }
    }

    /// The sum of the values.
    pub const fn sum(&self) -> f64 {
        self.sum
    }

    /// The arithmetic mean, if any value was added.
    pub fn mean(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // counts beyond 2^53 lose only relative precision
        let n = self.count as f64;
        Some(self.sum / n)
    }
}

/// The aggregate of one stream over one closed time window `[start_ms, start_ms + window_ms)`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WindowSummary {
    /// Start of the window (a multiple of `window_ms`), in milliseconds.
    pub start_ms: u64,
    /// Length of the window, in milliseconds.
    pub window_ms: u64,
    /// The quantity aggregated.
    pub quantity: Quantity,
    /// The values that fell into the window.
    pub aggregate: Aggregate,
}

/// The start of the window holding `at_ms`; `window_ms` is never zero here.
fn window_start(at_ms: u64, window_ms: u64) -> u64 {
    at_ms.saturating_sub(at_ms.checked_rem(window_ms).unwrap_or(0))
}

/// Aggregates one stream over tumbling windows aligned to multiples of the window length.
///
/// [`WindowAggregator::push`] returns the previous window when a reading opens a new one;
/// [`WindowAggregator::flush`] closes the current window on demand (end of a batch, shutdown).
/// Windows without readings produce nothing.
///
/// ```
/// use iot_core::flow::WindowAggregator;
/// use iot_core::telemetry::{Measurement, Reading};
///
/// let mut minute = WindowAggregator::new(60_000)?;
/// let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
/// assert_eq!(minute.push(&t(1_000, 20.0))?, None);
/// assert_eq!(minute.push(&t(31_000, 22.0))?, None);
/// let closed = minute.push(&t(61_000, 25.0))?.expect("a new minute closes the first");
/// assert_eq!((closed.start_ms, closed.aggregate.count()), (0, 2));
/// assert_eq!(closed.aggregate.mean(), Some(21.0));
/// assert_eq!(minute.flush().map(|w| w.start_ms), Some(60_000));
/// # Ok::<(), iot_core::flow::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WindowAggregator {
    window_ms: u64,
    current: Option<WindowSummary>,
}

impl WindowAggregator {
    /// An aggregator over windows of `window_ms` milliseconds (not zero).
    pub const fn new(window_ms: u64) -> Result<Self, FlowError> {
        if window_ms == 0 {
            return Err(FlowError::InvalidConfig);
        }
        Ok(Self {
            window_ms,
            current: None,
        })
    }

    /// The window length.
    pub const fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The window being filled, if any.
    pub const fn current(&self) -> Option<&WindowSummary> {
        self.current.as_ref()
    }

    /// Adds a reading; returns the previous window if this reading is the first of a later one.
    ///
    /// Readings may arrive out of order within the current window; a reading of an earlier
    /// window is refused with [`FlowError::OutOfOrder`].
    pub fn push(&mut self, reading: &Reading) -> Result<Option<WindowSummary>, FlowError> {
        let (quantity, value) = checked_value(&reading.measurement)?;
        let start_ms = window_start(reading.at_ms, self.window_ms);
        if let Some(current) = self.current.as_mut() {
            if current.quantity != quantity {
                return Err(FlowError::QuantityMismatch);
            }
            if start_ms < current.start_ms {
                return Err(FlowError::OutOfOrder);
            }
            if start_ms == current.start_ms {
                current.aggregate.add(value)?;
                return Ok(None);
            }
        }
        let opened = WindowSummary {
            start_ms,
            window_ms: self.window_ms,
            quantity,
            aggregate: Aggregate::of(value)?,
        };
        Ok(self.current.replace(opened))
    }

    /// Closes and returns the current window, if it holds anything.
    pub fn flush(&mut self) -> Option<WindowSummary> {
        self.current.take()
    }

    /// Closes the current window if `now_ms` lies in a later one: windows end on time even
    /// when no further reading arrives. Call it at least once per window.
    pub fn advance_to(&mut self, now_ms: u64) -> Option<WindowSummary> {
        let start_ms = window_start(now_ms, self.window_ms);
        if self.current.is_some_and(|c| c.start_ms < start_ms) {
            self.current.take()
        } else {
            None
        }
    }
}

/// The per-key aggregates of one closed window of a [`KeyedWindowAggregator`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct KeyedWindow<K, const N: usize> {
    /// Start of the window, in milliseconds.
    pub start_ms: u64,
    /// Length of the window, in milliseconds.
    pub window_ms: u64,
    /// The quantity aggregated.
    pub quantity: Quantity,
    /// One aggregate per key that had values in the window, in first-seen order.
    pub entries: heapless::Vec<(K, Aggregate), N>,
}

impl<K: PartialEq, const N: usize> KeyedWindow<K, N> {
    /// The aggregate of `key`, if it had values in the window.
    pub fn get(&self, key: &K) -> Option<&Aggregate> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, a)| a)
    }

    /// The aggregate of every key (the floor from its zones).
    pub fn combined(&self) -> Aggregate {
        Aggregate::merge_all(self.entries.iter().map(|(_, a)| a))
    }

    /// The aggregate of the keys `select` accepts (a zone from its sensors).
    pub fn combined_where<F: FnMut(&K) -> bool>(&self, mut select: F) -> Aggregate {
        Aggregate::merge_all(
            self.entries
                .iter()
                .filter(|(k, _)| select(k))
                .map(|(_, a)| a),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct KeyState<K> {
    key: K,
    aggregate: Aggregate,
    last: f32,
}

/// Aggregates up to `N` keyed streams (sensors, zones) of one quantity over common tumbling
/// windows: what a fog gateway does before sending one summary per window upstream.
///
/// With [`KeyedWindowAggregator::carry_forward`], every key already seen opens each new window
/// with its last value as one sample. That is the right reading of report-on-change streams,
/// where silence means "unchanged": a zone that sent nothing during a window still counts in
/// the floor average, with the value it last reported.
///
/// ```
/// use iot_core::flow::KeyedWindowAggregator;
/// use iot_core::telemetry::{Measurement, Reading};
///
/// let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
/// let mut floor: KeyedWindowAggregator<u8, 4> = KeyedWindowAggregator::new(300_000)?;
/// for zone in 0..4u8 {
///     floor.push(zone, &t(1_000, 20.0 + f32::from(zone)))?;
/// }
/// let window = floor.flush().expect("four zones reported");
/// assert_eq!(window.entries.len(), 4);
/// assert_eq!(window.combined().mean(), Some(21.5));
/// # Ok::<(), iot_core::flow::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyedWindowAggregator<K, const N: usize> {
    window_ms: u64,
    carry_forward: bool,
    window: Option<(u64, Quantity)>,
    keys: heapless::Vec<KeyState<K>, N>,
}

impl<K: Copy + PartialEq, const N: usize> KeyedWindowAggregator<K, N> {
    /// An aggregator over windows of `window_ms` milliseconds (not zero), without carry-forward.
    pub const fn new(window_ms: u64) -> Result<Self, FlowError> {
        if window_ms == 0 {
            return Err(FlowError::InvalidConfig);
        }
        Ok(Self {
            window_ms,
            carry_forward: false,
            window: None,
            keys: heapless::Vec::new(),
        })
    }

    /// Opens every window with each known key's last value as one sample (see the type docs).
    #[must_use]
    pub const fn carry_forward(mut self, on: bool) -> Self {
        self.carry_forward = on;
        self
    }

    /// The window length.
    pub const fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Start of the window being filled, if any.
    pub fn current_start_ms(&self) -> Option<u64> {
        self.window.map(|(start, _)| start)
    }

    /// Adds `key`'s reading; returns the previous window if this reading opens a later one.
    ///
    /// Fails with [`FlowError::Capacity`] (changing nothing) when `key` is new and `N` keys are
    /// already tracked, and with [`FlowError::OutOfOrder`] for a reading of an earlier window.
    pub fn push(
        &mut self,
        key: K,
        reading: &Reading,
    ) -> Result<Option<KeyedWindow<K, N>>, FlowError> {
        let (quantity, value) = checked_value(&reading.measurement)?;
        let start_ms = window_start(reading.at_ms, self.window_ms);
        // `close` keeps every key in place, so the position found here stays valid.
        let known = self.keys.iter().position(|s| s.key == key);
        if known.is_none() && self.keys.is_full() {
            return Err(FlowError::Capacity);
        }
        let mut closed = None;
        match self.window {
            Some((_, q)) if q != quantity => return Err(FlowError::QuantityMismatch),
            Some((current, _)) if start_ms < current => return Err(FlowError::OutOfOrder),
            Some((current, _)) if start_ms == current => {}
            Some(_) => {
                closed = self.close();
                self.window = Some((start_ms, quantity));
            }
            None => self.window = Some((start_ms, quantity)),
        }
        if let Some(state) = known.and_then(|i| self.keys.get_mut(i)) {
            state.aggregate.add(value)?;
            state.last = value;
        } else {
            let state = KeyState {
                key,
                aggregate: Aggregate::of(value)?,
                last: value,
            };
            self.keys.push(state).map_err(|_| FlowError::Capacity)?;
        }
        Ok(closed)
    }

    /// Closes the current window if `now_ms` lies in a later one, so that windows end on time
    /// even when no reading arrives (with report-on-change input, a quiet minute is normal).
    /// With carry-forward the window holding `now_ms` opens at once, holding each key's last
    /// value; without it, the next reading opens it. Call it at least once per window: windows
    /// skipped entirely produce nothing.
    pub fn advance_to(&mut self, now_ms: u64) -> Option<KeyedWindow<K, N>> {
        let start_ms = window_start(now_ms, self.window_ms);
        let (current, quantity) = self.window?;
        if start_ms <= current {
            return None;
        }
        let closed = self.close();
        self.window = if self.carry_forward && !self.keys.is_empty() {
            Some((start_ms, quantity))
        } else {
            None
        };
        closed
    }

    /// Closes and returns the current window, if one is open.
    pub fn flush(&mut self) -> Option<KeyedWindow<K, N>> {
        let closed = self.close();
        self.window = None;
        closed
    }

    /// Builds the closed window and resets (or carries forward) each key's aggregate.
    fn close(&mut self) -> Option<KeyedWindow<K, N>> {
        let (start_ms, quantity) = self.window?;
        let mut entries = heapless::Vec::new();
        for state in self.keys.iter_mut() {
            if !state.aggregate.is_empty() {
                // `entries` has the same capacity as `keys`, so this push always succeeds.
                let _ = entries.push((state.key, state.aggregate));
            }
            state.aggregate = if self.carry_forward {
                Aggregate::of(state.last).unwrap_or(Aggregate::EMPTY)
            } else {
                Aggregate::EMPTY
            };
        }
        Some(KeyedWindow {
            start_ms,
            window_ms: self.window_ms,
            quantity,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Measurement, MeasurementError};

    fn t(at_ms: u64, celsius: f32) -> Reading {
        Reading::new(at_ms, Measurement::Temperature { celsius })
    }

    #[test]
    fn aggregate_reports_min_max_mean_count() {
        let mut a = Aggregate::EMPTY;
        assert_eq!((a.min(), a.max(), a.mean()), (None, None, None));
        for v in [3.0, -1.0, 4.0, 2.0] {
            a.add(v).unwrap();
        }
        assert_eq!(a.count(), 4);
        assert_eq!(a.min(), Some(-1.0));
        assert_eq!(a.max(), Some(4.0));
        assert_eq!(a.mean(), Some(2.0));
        assert_eq!(
            a.add(f32::NAN),
            Err(FlowError::Measurement(MeasurementError::NotFinite))
        );
        assert_eq!(a.count(), 4);
    }

    #[test]
    fn mean_of_extremes_does_not_overflow() {
        let mut a = Aggregate::EMPTY;
        for _ in 0..1000 {
            a.add(f32::MAX).unwrap();
        }
        let mean = a.mean().unwrap();
        assert!(mean.is_finite());
        assert_eq!(mean, f64::from(f32::MAX));
    }

    #[test]
    fn four_zones_merge_into_the_floor_average() {
        let zones: [&[f32]; 4] = [&[20.0, 21.0], &[22.0, 22.0], &[19.0, 23.0], &[24.0, 18.0]];
        let parts: heapless::Vec<Aggregate, 4> = zones
            .iter()
            .map(|vals| {
                let mut a = Aggregate::EMPTY;
                for v in *vals {
                    a.add(*v).unwrap();
                }
                a
            })
            .collect();
        let floor = Aggregate::merge_all(&parts);
        let all: f64 = zones
            .iter()
            .flat_map(|z| z.iter())
            .map(|v| f64::from(*v))
            .sum();
        assert_eq!(floor.count(), 8);
        assert_eq!(floor.mean(), Some(all / 8.0));
        assert_eq!((floor.min(), floor.max()), (Some(18.0), Some(24.0)));
        // Equal counts per zone: the floor average is also the mean of the zone means.
        let mean_of_means: f64 = parts.iter().map(|a| a.mean().unwrap()).sum::<f64>() / 4.0;
        assert_eq!(floor.mean(), Some(mean_of_means));
    }

    #[test]
    fn from_parts_accepts_consistent_and_refuses_inconsistent_parts() {
        let mut a = Aggregate::EMPTY;
        for v in [1.5, 2.5, 9.0] {
            a.add(v).unwrap();
        }
        assert_eq!(Aggregate::from_parts(a.count(), 1.5, 9.0, a.sum()), Ok(a));
        assert_eq!(
            Aggregate::from_parts(0, 0.0, 0.0, 0.0),
            Ok(Aggregate::EMPTY)
        );
        for (n, lo, hi, s) in [
            (0, 0.0, 0.0, 1.0),
            (2, 3.0, 1.0, 4.0),
            (2, 1.0, 3.0, 100.0),
            (2, f32::NAN, 3.0, 4.0),
        ] {
            assert_eq!(
                Aggregate::from_parts(n, lo, hi, s),
                Err(FlowError::InvalidConfig)
            );
        }
    }

    #[test]
    fn windows_tumble_on_aligned_boundaries() {
        let mut w = WindowAggregator::new(10_000).unwrap();
        assert_eq!(w.push(&t(9_999, 1.0)).unwrap(), None);
        let first = w.push(&t(10_000, 2.0)).unwrap().unwrap();
        assert_eq!((first.start_ms, first.window_ms), (0, 10_000));
        assert_eq!(first.aggregate.count(), 1);
        // Out of order within the window is fine; an earlier window is not.
        assert_eq!(w.push(&t(15_000, 4.0)).unwrap(), None);
        assert_eq!(w.push(&t(12_000, 3.0)).unwrap(), None);
        assert_eq!(w.push(&t(9_000, 3.0)), Err(FlowError::OutOfOrder));
        let humidity = Reading::new(16_000, Measurement::Humidity { percent: 5.0 });
        assert_eq!(w.push(&humidity), Err(FlowError::QuantityMismatch));
        // A gap skips the empty windows.
        let second = w.push(&t(55_000, 0.0)).unwrap().unwrap();
        assert_eq!(second.start_ms, 10_000);
        assert_eq!(second.aggregate.mean(), Some(3.0));
        assert_eq!(w.current().unwrap().start_ms, 50_000);
        assert_eq!(w.flush().unwrap().aggregate.count(), 1);
        assert_eq!(w.flush(), None);
        assert_eq!(WindowAggregator::new(0), Err(FlowError::InvalidConfig));
    }

    #[test]
    fn keyed_windows_hold_each_key_and_refuse_beyond_capacity() {
        let mut k: KeyedWindowAggregator<u8, 2> = KeyedWindowAggregator::new(1_000).unwrap();
        k.push(1, &t(0, 10.0)).unwrap();
        k.push(2, &t(10, 20.0)).unwrap();
        k.push(1, &t(20, 12.0)).unwrap();
        assert_eq!(k.push(3, &t(30, 0.0)), Err(FlowError::Capacity));
        let w = k.push(2, &t(1_500, 30.0)).unwrap().unwrap();
        assert_eq!(w.start_ms, 0);
        assert_eq!(w.get(&1).unwrap().mean(), Some(11.0));
        assert_eq!(w.get(&2).unwrap().count(), 1);
        assert_eq!(w.combined().count(), 3);
        assert_eq!(w.combined_where(|&key| key == 1).count(), 2);
        // Without carry-forward, key 1 is absent from the next window.
        let next = k.flush().unwrap();
        assert_eq!(next.get(&1), None);
        assert_eq!(next.get(&2).unwrap().mean(), Some(30.0));
        assert_eq!(k.flush(), None);
        assert_eq!(k.current_start_ms(), None);
    }

    #[test]
    fn advancing_time_closes_quiet_windows() {
        let mut w = WindowAggregator::new(1_000).unwrap();
        assert_eq!(w.advance_to(5_000), None);
        w.push(&t(100, 1.0)).unwrap();
        assert_eq!(w.advance_to(999), None);
        assert_eq!(w.advance_to(1_000).unwrap().start_ms, 0);
        assert_eq!(w.current(), None);

        let mut k: KeyedWindowAggregator<u8, 2> = KeyedWindowAggregator::new(1_000)
            .unwrap()
            .carry_forward(true);
        assert_eq!(k.advance_to(10_000), None);
        k.push(1, &t(100, 7.0)).unwrap();
        assert_eq!(k.advance_to(500), None);
        assert_eq!(k.advance_to(1_000).unwrap().start_ms, 0);
        // Carry-forward opened the next window at once, holding the last value.
        assert_eq!(k.current_start_ms(), Some(1_000));
        let quiet = k.advance_to(2_000).unwrap();
        assert_eq!(quiet.get(&1).unwrap().mean(), Some(7.0));

        let mut plain: KeyedWindowAggregator<u8, 2> = KeyedWindowAggregator::new(1_000).unwrap();
        plain.push(1, &t(100, 7.0)).unwrap();
        assert!(plain.advance_to(1_000).is_some());
        assert_eq!(plain.current_start_ms(), None);
    }

    #[test]
    fn carry_forward_keeps_silent_keys_in_the_next_window() {
        let mut k: KeyedWindowAggregator<u8, 4> = KeyedWindowAggregator::new(1_000)
            .unwrap()
            .carry_forward(true);
        k.push(1, &t(0, 10.0)).unwrap();
        k.push(2, &t(0, 20.0)).unwrap();
        // Only key 2 speaks in the second window; key 1 is unchanged at 10.
        assert!(k.push(2, &t(1_200, 22.0)).unwrap().is_some());
        let w = k.flush().unwrap();
        assert_eq!(w.get(&1).unwrap().mean(), Some(10.0));
        assert_eq!(w.get(&2).unwrap().mean(), Some(21.0)); // carried 20 and new 22
        assert_eq!(w.combined().count(), 3);
    }
}
