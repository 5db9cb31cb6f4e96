//! QoS monitoring per link: delivery ratio, retries and latency percentiles over a sliding
//! window, and enforcement against a [`QosTarget`]: a link that misses its target is
//! [`Health::Demoted`] and [`crate::select::LinkSelector`] stops preferring it until its
//! recent record recovers.
//!
//! ```
//! use iot_transport::monitor::{Health, LinkMonitor, QosTarget};
//!
//! let target = QosTarget { max_p95_latency_ms: Some(500), min_delivery_permille: 900, min_samples: 10 };
//! let mut m: LinkMonitor<20> = LinkMonitor::new();
//! for _ in 0..10 { m.record_delivery(100, 0); }
//! assert_eq!(m.health(&target), Health::Healthy);
//! for _ in 0..3 { m.record_loss(); }
//! assert_eq!(m.delivery_permille(), Some(769)); // 10 of 13
//! assert_eq!(m.health(&target), Health::Demoted);
//! ```

/// A link's service target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct QosTarget {
    /// The 95th-percentile delivery latency must not exceed this.
    pub max_p95_latency_ms: Option<u32>,
    /// Delivered messages per thousand sent must be at least this.
    pub min_delivery_permille: u16,
    /// Judge only once the window holds this many outcomes.
    pub min_samples: u16,
}

impl QosTarget {
    /// No requirements: never demotes.
    pub const NONE: Self = Self {
        max_p95_latency_ms: None,
        min_delivery_permille: 0,
        min_samples: u16::MAX,
    };
}

/// Whether a link meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Health {
    /// Meets the target, or too few samples to judge.
    Healthy,
    /// Misses its latency or loss target.
    Demoted,
}

/// Outcomes of the last `W` messages on one link.
#[derive(Debug, Clone)]
pub struct LinkMonitor<const W: usize> {
    /// `Some(latency)` for a delivery, `None` for a loss.
    window: [Option<Option<u32>>; W],
    next: usize,
    retries: u32,
    delivered_total: u32,
    lost_total: u32,
}

impl<const W: usize> Default for LinkMonitor<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const W: usize> LinkMonitor<W> {
    /// An empty monitor.
    pub const fn new() -> Self {
        Self {
            window: [None; W],
            next: 0,
            retries: 0,
            delivered_total: 0,
            lost_total: 0,
        }
    }

    fn record(&mut self, outcome: Option<u32>) {
        if let Some(slot) = self.window.get_mut(self.next) {
            *slot = Some(outcome);
        }
        self.next = match self.next.checked_add(1) {
            Some(n) if n < W => n,
            _ => 0,
        };
    }

    /// A message was delivered (acknowledged) `latency_ms` after its first transmission,
    /// after `retries` retransmissions.
    pub fn record_delivery(&mut self, latency_ms: u32, retries: u32) {
        self.retries = self.retries.saturating_add(retries);
        self.delivered_total = self.delivered_total.saturating_add(1);
        self.record(Some(latency_ms));
    }

    /// A message was given up on.
    pub fn record_loss(&mut self) {
        self.lost_total = self.lost_total.saturating_add(1);
        self.record(None);
    }

    /// Outcomes in the window.
    pub fn samples(&self) -> usize {
        self.window.iter().flatten().count()
    }

    /// Retransmissions since creation.
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// Deliveries and losses since creation.
    pub const fn totals(&self) -> (u32, u32) {
        (self.delivered_total, self.lost_total)
    }

    /// Delivered per thousand in the window (`None` when empty).
    pub fn delivery_permille(&self) -> Option<u16> {
        let total = self.samples();
        let delivered = self.window.iter().flatten().filter(|o| o.is_some()).count();
        let permille = delivered.saturating_mul(1000).checked_div(total)?;
        u16::try_from(permille).ok()
    }

    /// The `p`-th percentile (0..=100, nearest rank) of delivery latency in the window.
    pub fn latency_percentile(&self, p: u8) -> Option<u32> {
        let mut sorted = [0u32; W];
        let mut n = 0usize;
        for latency in self.window.iter().flatten().flatten() {
            if let Some(slot) = sorted.get_mut(n) {
                *slot = *latency;
                n = n.saturating_add(1);
            }
        }
        let values = sorted.get_mut(..n)?;
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        // Nearest rank: ceil(p/100 * n), at least 1.
        let rank = usize::from(p.min(100))
            .saturating_mul(n)
            .div_ceil(100)
            .max(1);
        values.get(rank.saturating_sub(1)).copied()
    }

    /// Judges the window against `target`.
    pub fn health(&self, target: &QosTarget) -> Health {
        if self.samples() < usize::from(target.min_samples) {
            return Health::Healthy;
        }
        let ratio_ok = self
            .delivery_permille()
            .is_none_or(|r| r >= target.min_delivery_permille);
        let latency_ok = match (target.max_p95_latency_ms, self.latency_percentile(95)) {
            (Some(max), Some(p95)) => p95 <= max,
            _ => true,
        };
        if ratio_ok && latency_ok {
            Health::Healthy
        } else {
            Health::Demoted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut m: LinkMonitor<100> = LinkMonitor::new();
        assert_eq!(m.latency_percentile(50), None);
        assert_eq!(m.delivery_permille(), None);
        for l in 1..=100 {
            m.record_delivery(l, 1);
        }
        assert_eq!(m.latency_percentile(50), Some(50));
        assert_eq!(m.latency_percentile(95), Some(95));
        assert_eq!(m.latency_percentile(99), Some(99));
        assert_eq!(m.latency_percentile(0), Some(1));
        assert_eq!(m.latency_percentile(200), Some(100));
        assert_eq!(m.retries(), 100);
        assert_eq!(m.delivery_permille(), Some(1000));
    }

    #[test]
    fn window_slides_so_a_link_can_recover() {
        let target = QosTarget {
            max_p95_latency_ms: Some(200),
            min_delivery_permille: 800,
            min_samples: 5,
        };
        let mut m: LinkMonitor<5> = LinkMonitor::new();
        for _ in 0..5 {
            m.record_delivery(1_000, 0);
        }
        assert_eq!(m.health(&target), Health::Demoted, "too slow");
        for _ in 0..5 {
            m.record_delivery(50, 0);
        }
        assert_eq!(m.health(&target), Health::Healthy);
        m.record_loss();
        m.record_loss();
        assert_eq!(m.delivery_permille(), Some(600));
        assert_eq!(m.health(&target), Health::Demoted, "too lossy");
        assert_eq!(m.totals(), (10, 2));
        assert_eq!(m.health(&QosTarget::NONE), Health::Healthy);
    }
}
