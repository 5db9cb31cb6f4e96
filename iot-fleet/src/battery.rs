//! Battery history: a device's recent battery readings and the depletion time a
//! least-squares line through them predicts.
//!
//! The registry keeps one [`BatteryHistory`] per device record; [`crate::health`] plans
//! battery replacements from the predictions.

use heapless::Deque;

/// How many battery readings a device record keeps.
pub const BATTERY_SAMPLES: usize = 8;

/// Recent battery readings of one device, oldest first, at most [`BATTERY_SAMPLES`].
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BatteryHistory {
    samples: Deque<(u64, f32), BATTERY_SAMPLES>,
}

impl BatteryHistory {
    /// No readings.
    pub const fn new() -> Self {
        Self {
            samples: Deque::new(),
        }
    }

    /// Records a reading; the oldest is dropped when full. Readings older than the newest
    /// one and non-finite values are ignored.
    pub fn record(&mut self, at_ms: u64, percent: f32) {
        if !percent.is_finite() || self.samples.back().is_some_and(|(t, _)| *t > at_ms) {
            return;
        }
        let percent = percent.clamp(0.0, 100.0);
        if self.samples.is_full() {
            let _ = self.samples.pop_front();
        }
        let _ = self.samples.push_back((at_ms, percent));
    }

    /// The newest reading's percentage.
    pub fn latest(&self) -> Option<f32> {
        self.samples.back().map(|(_, p)| *p)
    }

    /// The readings, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = (u64, f32)> + '_ {
        self.samples.iter().copied()
    }

    /// When a least-squares line through the readings reaches `level` percent, or `None`
    /// with fewer than two readings at different times or a level that is not falling.
    #[allow(clippy::arithmetic_side_effects)] // f64 statistics: no overflow or trap.
    pub fn predict_time_at(&self, level: f32) -> Option<u64> {
        let (t0, _) = *self.samples.front()?;
        let n = self.samples.len() as f64;
        let (mut sum_t, mut sum_p) = (0.0f64, 0.0f64);
        for (t, p) in self.samples.iter() {
            sum_t += t.saturating_sub(t0) as f64;
            sum_p += f64::from(*p);
        }
        let (mean_t, mean_p) = (sum_t / n, sum_p / n);
        let (mut cov, mut var) = (0.0f64, 0.0f64);
        for (t, p) in self.samples.iter() {
            let dt = t.saturating_sub(t0) as f64 - mean_t;
            cov += dt * (f64::from(*p) - mean_p);
            var += dt * dt;
        }
        if var <= 0.0 {
            return None;
        }
        let slope = cov / var;
        if slope >= 0.0 {
            return None;
        }
        let at = mean_t + (f64::from(level) - mean_p) / slope;
        if !at.is_finite() {
            return None;
        }
        // `as` saturates for out-of-range floats and maps negatives to 0.
        Some(t0.saturating_add(at.max(0.0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_fit_predicts_depletion() {
        let mut b = BatteryHistory::new();
        // 1 % per hour from 50 %.
        for h in 0..5u64 {
            b.record(h * 3_600_000, 50.0 - h as f32);
        }
        let at = b.predict_time_at(10.0).unwrap();
        assert!((at as i64 - 40 * 3_600_000).abs() < 1_000, "{at}");
        // Already below the level: the fit's crossing is in the past.
        assert!(b.predict_time_at(60.0).unwrap() < 4 * 3_600_000);
    }

    #[test]
    fn no_prediction_without_a_falling_trend() {
        let mut b = BatteryHistory::new();
        assert_eq!(b.predict_time_at(10.0), None);
        b.record(0, 80.0);
        assert_eq!(b.predict_time_at(10.0), None);
        b.record(10, 85.0);
        assert_eq!(b.predict_time_at(10.0), None);
        let mut same_time = BatteryHistory::new();
        same_time.record(5, 80.0);
        same_time.record(5, 70.0);
        assert_eq!(same_time.predict_time_at(10.0), None);
    }

    #[test]
    fn history_is_bounded_and_ignores_bad_readings() {
        let mut b = BatteryHistory::new();
        for i in 0..20u64 {
            b.record(i, 100.0 - i as f32);
        }
        assert_eq!(b.samples().count(), BATTERY_SAMPLES);
        assert_eq!(b.samples().next(), Some((12, 88.0)));
        b.record(3, 1.0);
        b.record(30, f32::NAN);
        assert_eq!(b.latest(), Some(81.0));
        b.record(40, 150.0);
        assert_eq!(b.latest(), Some(100.0));
    }
}
