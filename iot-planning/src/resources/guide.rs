//! The deployment decision guide: from device count, latency, processing and distribution
//! to an architecture and its monthly cost band ([`recommend`]).

use alloc::vec::Vec;

/// How fast the system must react to what it senses.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Latency {
    /// Seconds or more are fine (reporting, billing, trends).
    Relaxed,
    /// Under a second (dashboards, alarms).
    Moderate,
    /// Under 100 ms (closed-loop control, safety interlocks).
    Low,
    /// Under 10 ms (motion control, protection relays).
    Critical,
}

/// How much computation the data needs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Processing {
    /// Thresholds and filters.
    Simple,
    /// Aggregation, rules, anomaly detection.
    Moderate,
    /// Machine learning, cross-site analytics, long-term history.
    Complex,
}

/// How spread out the devices are.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Distribution {
    /// One building or plant.
    SingleSite,
    /// Several sites in one region.
    MultiSite,
    /// Sites across continents (data residency, multi-region).
    Global,
}

/// What a deployment needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Requirements {
    /// Number of devices.
    pub devices: u32,
    /// Reaction time needed.
    pub latency: Latency,
    /// Computation needed.
    pub processing: Processing,
    /// Geographic spread.
    pub distribution: Distribution,
}

/// The tiers a deployment uses, from the smallest to the largest.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Architecture {
    /// Devices and a local controller only.
    EdgeOnly,
    /// Devices report straight to a cloud service.
    EdgeCloud,
    /// Devices and on-site gateways that decide locally, no cloud.
    EdgeFog,
    /// Devices, gateways that filter and decide locally, and a cloud for fleet, storage and
    /// analytics.
    EdgeFogCloud,
    /// The full stack in several regions (multi-region cloud, regional fog, data residency).
    GlobalStack,
}

/// An indicative monthly running cost, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CostBand {
    /// Lower end.
    pub min_usd: u32,
    /// Upper end.
    pub max_usd: u32,
}

impl Architecture {
    /// The indicative monthly cost band of the architecture.
    ///
    /// These bands are this crate's order-of-magnitude estimates (cloud IoT messaging and
    /// time-series storage at list prices, gateway hardware amortised over three years), not
    /// quotes; they rise with each tier added.
    pub const fn monthly_cost(self) -> CostBand {
        let (min_usd, max_usd) = match self {
            Self::EdgeOnly => (0, 100),
            Self::EdgeCloud => (100, 1_000),
            Self::EdgeFog => (200, 2_000),
            Self::EdgeFogCloud => (1_000, 10_000),
            Self::GlobalStack => (10_000, 100_000),
        };
        CostBand { min_usd, max_usd }
    }
}

/// The guide's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Recommendation {
    /// The architecture to deploy.
    pub architecture: Architecture,
    /// Its indicative monthly cost.
    pub cost: CostBand,
    /// Why, one short sentence per rule that fired.
    pub reasons: Vec<&'static str>,
}

/// Up to this many devices on one site with simple processing, no upper tier is needed.
pub const EDGE_ONLY_MAX_DEVICES: u32 = 50;
/// Beyond this many devices, raw traffic must be reduced before it reaches the cloud.
pub const FOG_REDUCTION_MIN_DEVICES: u32 = 1_000;

/// The deployment decision guide: from device count, latency need, processing complexity and
/// distribution to an architecture and its monthly cost band.
///
/// The rules, in order:
/// 1. global distribution needs the global stack;
/// 2. a small single site with simple processing needs nothing above the edge;
/// 3. a latency under a second (low or critical) needs decisions on site: a fog tier, plus
///    the cloud when processing is complex, the devices span several sites, or they number
///    more than [`FOG_REDUCTION_MIN_DEVICES`];
/// 4. otherwise the cloud does the work, with a fog tier to reduce the traffic of more than
///    [`FOG_REDUCTION_MIN_DEVICES`] devices.
///
/// Asking for more (devices, stricter latency, heavier processing, wider distribution) never
/// yields a cheaper band.
pub fn recommend(req: &Requirements) -> Recommendation {
    let mut reasons = Vec::new();
    let large = req.devices > FOG_REDUCTION_MIN_DEVICES;
    let architecture = if req.distribution == Distribution::Global {
        reasons.push("devices on several continents need regional tiers and data residency");
        Architecture::GlobalStack
    } else if req.devices <= EDGE_ONLY_MAX_DEVICES
        && req.distribution == Distribution::SingleSite
        && req.processing == Processing::Simple
    {
        reasons.push("a small single site with simple rules runs on a local controller");
        Architecture::EdgeOnly
    } else if req.latency >= Latency::Low {
        reasons.push("reacting within 100 ms needs decisions on site, in a fog tier");
        if req.processing == Processing::Complex
            || req.distribution == Distribution::MultiSite
            || large
        {
            reasons.push("heavy analytics, several sites or a large fleet need a cloud tier");
            Architecture::EdgeFogCloud
        } else {
            Architecture::EdgeFog
        }
    } else if large {
        reasons.push("a large fleet needs fog aggregation to keep cloud traffic affordable");
        Architecture::EdgeFogCloud
    } else {
        reasons.push("relaxed latency lets the cloud do the processing");
        Architecture::EdgeCloud
    };
    Recommendation {
        architecture,
        cost: architecture.monthly_cost(),
        reasons,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn req(
        devices: u32,
        latency: Latency,
        processing: Processing,
        distribution: Distribution,
    ) -> Requirements {
        Requirements {
            devices,
            latency,
            processing,
            distribution,
        }
    }

    #[test]
    fn the_guide_reaches_every_architecture() {
        use Architecture::*;
        use Distribution::{Global, MultiSite, SingleSite};
        use Processing::{Complex, Simple};
        let cases = [
            (req(20, Latency::Critical, Simple, SingleSite), EdgeOnly),
            (
                req(300, Latency::Relaxed, Processing::Moderate, SingleSite),
                EdgeCloud,
            ),
            (
                req(300, Latency::Low, Processing::Moderate, SingleSite),
                EdgeFog,
            ),
            (req(300, Latency::Low, Complex, SingleSite), EdgeFogCloud),
            (
                req(20_000, Latency::Moderate, Simple, MultiSite),
                EdgeFogCloud,
            ),
            (req(10, Latency::Relaxed, Simple, Global), GlobalStack),
        ];
        for (r, expected) in cases {
            let rec = recommend(&r);
            assert_eq!(rec.architecture, expected, "{r:?}");
            assert_eq!(rec.cost, expected.monthly_cost());
            assert!(!rec.reasons.is_empty());
        }
    }

    #[test]
    fn cost_bands_are_ordered_and_well_formed() {
        use Architecture::*;
        let order = [EdgeOnly, EdgeCloud, EdgeFog, EdgeFogCloud, GlobalStack];
        for pair in order.windows(2) {
            assert!(pair[0].monthly_cost().min_usd < pair[1].monthly_cost().min_usd);
        }
        for a in order {
            let c = a.monthly_cost();
            assert!(c.min_usd < c.max_usd);
        }
    }
}
