//! Messages in and out per tier, and the reduction each tier achieves.

use super::Tier;

/// Messages a tier received and sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TierCounts {
    /// Messages (or readings) entering the tier.
    pub messages_in: u64,
    /// Messages leaving the tier upstream.
    pub messages_out: u64,
}

impl TierCounts {
    /// `1 - out / in`: the fraction of its input a tier did not forward. `None` without
    /// input. Negative when a tier sends more than it receives.
    pub fn reduction(&self) -> Option<f64> {
        reduction(self.messages_out, self.messages_in)
    }
}

// Counts are far below 2^53 in practice; beyond it the ratio only loses relative precision.
#[allow(clippy::cast_precision_loss)]
fn reduction(kept: u64, of: u64) -> Option<f64> {
    if of == 0 {
        return None;
    }
    Some(1.0 - kept as f64 / of as f64)
}

/// End-to-end message accounting across the edge, fog and cloud tiers.
///
/// Each stage records what it receives and what it forwards; counters saturate rather than
/// wrap. [`FlowStats::cumulative_reduction`] relates a tier's output to the raw input at the
/// edge, which is how the source material states "80% at the edge, 92% at the fog".
///
/// ```
/// use iot_core::flow::{FlowStats, Tier};
///
/// let mut stats = FlowStats::new();
/// stats.record_in(Tier::Edge, 1_000);
/// stats.record_out(Tier::Edge, 200);
/// stats.record_in(Tier::Fog, 200);
/// stats.record_out(Tier::Fog, 80);
/// assert_eq!(stats.reduction(Tier::Edge), Some(0.8));
/// assert_eq!(stats.cumulative_reduction(Tier::Fog), Some(0.92));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowStats {
    edge: TierCounts,
    fog: TierCounts,
    cloud: TierCounts,
}

impl FlowStats {
    /// All counters at zero.
    pub const fn new() -> Self {
        let zero = TierCounts {
            messages_in: 0,
            messages_out: 0,
        };
        Self {
            edge: zero,
            fog: zero,
            cloud: zero,
        }
    }

    fn slot(&mut self, tier: Tier) -> &mut TierCounts {
        match tier {
            Tier::Edge => &mut self.edge,
            Tier::Fog => &mut self.fog,
            Tier::Cloud => &mut self.cloud,
        }
    }

    /// Counts `n` messages entering `tier`.
    pub fn record_in(&mut self, tier: Tier, n: u64) {
        let slot = self.slot(tier);
        slot.messages_in = slot.messages_in.saturating_add(n);
    }

    /// Counts `n` messages leaving `tier` upstream.
    pub fn record_out(&mut self, tier: Tier, n: u64) {
        let slot = self.slot(tier);
        slot.messages_out = slot.messages_out.saturating_add(n);
    }

    /// The counters of `tier`.
    pub const fn tier(&self, tier: Tier) -> TierCounts {
        match tier {
            Tier::Edge => self.edge,
            Tier::Fog => self.fog,
            Tier::Cloud => self.cloud,
        }
    }

    /// The fraction of its own input `tier` did not forward.
    pub fn reduction(&self, tier: Tier) -> Option<f64> {
        self.tier(tier).reduction()
    }

    /// The fraction of the raw edge input that did not leave `tier`: what the path up to and
    /// including `tier` saved.
    pub fn cumulative_reduction(&self, tier: Tier) -> Option<f64> {
        reduction(self.tier(tier).messages_out, self.edge.messages_in)
    }

    /// Adds another set of counters (several gateways, several runs).
    #[must_use]
    pub fn merge(&self, other: &FlowStats) -> FlowStats {
        let add = |a: TierCounts, b: TierCounts| TierCounts {
            messages_in: a.messages_in.saturating_add(b.messages_in),
            messages_out: a.messages_out.saturating_add(b.messages_out),
        };
        FlowStats {
            edge: add(self.edge, other.edge),
            fog: add(self.fog, other.fog),
            cloud: add(self.cloud, other.cloud),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tiers_have_no_reduction() {
        let s = FlowStats::new();
        for tier in Tier::ALL {
            assert_eq!(s.reduction(tier), None);
            assert_eq!(s.cumulative_reduction(tier), None);
        }
    }

    #[test]
    fn per_tier_and_cumulative_reductions_differ() {
        let mut s = FlowStats::new();
        s.record_in(Tier::Edge, 100);
        s.record_out(Tier::Edge, 50);
        s.record_in(Tier::Fog, 50);
        s.record_out(Tier::Fog, 10);
        assert_eq!(s.reduction(Tier::Fog), Some(0.8));
        assert_eq!(s.cumulative_reduction(Tier::Fog), Some(0.9));
        // A tier that adds messages has a negative reduction.
        s.record_in(Tier::Cloud, 10);
        s.record_out(Tier::Cloud, 20);
        assert_eq!(s.reduction(Tier::Cloud), Some(-1.0));
    }

    #[test]
    fn counters_saturate_and_merge() {
        let mut a = FlowStats::new();
        a.record_in(Tier::Edge, u64::MAX);
        a.record_in(Tier::Edge, 1);
        assert_eq!(a.tier(Tier::Edge).messages_in, u64::MAX);
        let mut b = FlowStats::new();
        b.record_out(Tier::Fog, 3);
        let m = b.merge(&b);
        assert_eq!(m.tier(Tier::Fog).messages_out, 6);
        assert_eq!(a.merge(&a).tier(Tier::Edge).messages_in, u64::MAX);
    }
}
