//! Resource planning: CPU, memory and bandwidth allocation with over-allocation detection,
//! load balancing of devices across gateways, and the deployment decision guide.
//!
//! ```
//! use iot_planning::resources::{
//!     Architecture, Distribution, Latency, Processing, Requirements, Resources, ResourcePlan,
//!     recommend,
//! };
//!
//! let mut plan = ResourcePlan::new();
//! plan.add_host("fog-1", Resources::new(4_000, 2_048 * 1024, 100_000))?;
//! plan.allocate("fog-1", "aggregator", Resources::new(1_500, 512 * 1024, 20_000))?;
//! assert!(plan.allocate("fog-1", "ml", Resources::new(3_000, 0, 0)).is_err());
//! assert!(plan.over_allocations().is_empty());
//!
//! let guide = recommend(&Requirements {
//!     devices: 500,
//!     latency: Latency::Low,
//!     processing: Processing::Moderate,
//!     distribution: Distribution::SingleSite,
//! });
//! assert_eq!(guide.architecture, Architecture::EdgeFog);
//! # Ok::<(), iot_planning::resources::PlanningError>(())
//! ```

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{Error, ErrorKind};

/// Why a planning request was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlanningError {
    /// A host, gateway or device of that name already exists.
    #[error("the name is already in use")]
    DuplicateName,
    /// No host or allocation has that name.
    #[error("no such host or allocation")]
    NotFound,
    /// The allocation would exceed the host's capacity.
    #[error("{resource:?} over-allocated: {requested} requested, {available} available")]
    OverAllocated {
        /// The first resource that does not fit.
        resource: Resource,
        /// Amount requested.
        requested: u64,
        /// Amount still free on the host.
        available: u64,
    },
    /// A capacity is zero where a positive one is required.
    #[error("capacity must be positive")]
    ZeroCapacity,
}

impl Error for PlanningError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::DuplicateName => ErrorKind::Conflict,
            Self::NotFound => ErrorKind::NotFound,
            Self::OverAllocated { .. } => ErrorKind::Capacity,
            Self::ZeroCapacity => ErrorKind::InvalidInput,
        }
    }
}

/// One kind of resource.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Resource {
    /// Processing, in millicores (1000 = one core).
    Cpu,
    /// Memory, in KiB.
    Memory,
    /// Network bandwidth, in kbit/s.
    Bandwidth,
}

/// An amount of CPU, memory and bandwidth: a host's capacity or a consumer's demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Resources {
    /// Millicores (1000 = one core).
    pub cpu_millicores: u64,
    /// KiB of memory.
    pub memory_kib: u64,
    /// kbit/s of bandwidth.
    pub bandwidth_kbps: u64,
}

impl Resources {
    /// Nothing.
    pub const ZERO: Resources = Resources::new(0, 0, 0);

    /// An amount of each resource.
    pub const fn new(cpu_millicores: u64, memory_kib: u64, bandwidth_kbps: u64) -> Self {
        Self {
            cpu_millicores,
            memory_kib,
            bandwidth_kbps,
        }
    }

    /// The amount of one resource.
    pub const fn get(&self, resource: Resource) -> u64 {
        match resource {
            Resource::Cpu => self.cpu_millicores,
            Resource::Memory => self.memory_kib,
            Resource::Bandwidth => self.bandwidth_kbps,
        }
    }

    /// Both amounts together (saturating).
    #[must_use]
    pub const fn saturating_add(&self, other: &Resources) -> Resources {
        Resources::new(
            self.cpu_millicores.saturating_add(other.cpu_millicores),
            self.memory_kib.saturating_add(other.memory_kib),
            self.bandwidth_kbps.saturating_add(other.bandwidth_kbps),
        )
    }

    /// What is left of `self` after `other` (zero where `other` is larger).
    #[must_use]
    pub const fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources::new(
            self.cpu_millicores.saturating_sub(other.cpu_millicores),
            self.memory_kib.saturating_sub(other.memory_kib),
            self.bandwidth_kbps.saturating_sub(other.bandwidth_kbps),
        )
    }

    /// The first resource (CPU, memory, bandwidth) of which `self` holds more than `capacity`.
    pub fn first_excess_over(&self, capacity: &Resources) -> Option<Resource> {
        [Resource::Cpu, Resource::Memory, Resource::Bandwidth]
            .into_iter()
            .find(|r| self.get(*r) > capacity.get(*r))
    }
}

/// Allocated share of a capacity, in permille (1000 = full; above 1000 = over-allocated).
fn permille(used: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        return if used == 0 { 0 } else { u64::MAX };
    }
    let p = u128::from(used)
        .saturating_mul(1_000)
        .checked_div(u128::from(capacity))
        .unwrap_or(u128::MAX);
    u64::try_from(p).unwrap_or(u64::MAX)
}

/// A host's allocated share of each resource, in permille.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Utilisation {
    /// CPU permille.
    pub cpu: u64,
    /// Memory permille.
    pub memory: u64,
    /// Bandwidth permille.
    pub bandwidth: u64,
}

impl Utilisation {
    /// The highest of the three: the host's bottleneck.
    pub fn peak(&self) -> u64 {
        self.cpu.max(self.memory).max(self.bandwidth)
    }
}

/// A host whose allocations exceed its capacity for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OverAllocation {
    /// The host.
    pub host: String,
    /// The resource.
    pub resource: Resource,
    /// Sum of the allocations.
    pub allocated: u64,
    /// The host's capacity.
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Host {
    capacity: Resources,
    allocations: BTreeMap<String, Resources>,
}

impl Host {
    fn allocated(&self) -> Resources {
        self.allocations
            .values()
            .fold(Resources::ZERO, |acc, r| acc.saturating_add(r))
    }
}

/// Hosts (gateways, servers) with capacities, and the allocations made to entities on them.
///
/// [`ResourcePlan::allocate`] refuses what does not fit; [`ResourcePlan::reserve`] records a
/// demand anyway (planning "what if", or importing a live system), and
/// [`ResourcePlan::over_allocations`] reports every host and resource beyond capacity, also
/// after [`ResourcePlan::set_capacity`] shrank a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePlan {
    hosts: BTreeMap<String, Host>,
}

impl ResourcePlan {
    /// A plan without hosts.
    pub const fn new() -> Self {
        Self {
            hosts: BTreeMap::new(),
        }
    }

    /// Adds a host with its capacity.
    pub fn add_host(&mut self, name: &str, capacity: Resources) -> Result<(), PlanningError> {
        if self.hosts.contains_key(name) {
            return Err(PlanningError::DuplicateName);
        }
        let host = Host {
            capacity,
            allocations: BTreeMap::new(),
        };
        self.hosts.insert(String::from(name), host);
        Ok(())
    }

    /// Changes a host's capacity; existing allocations stay, and may now be over-allocated.
    pub fn set_capacity(&mut self, name: &str, capacity: Resources) -> Result<(), PlanningError> {
        let host = self.hosts.get_mut(name).ok_or(PlanningError::NotFound)?;
        host.capacity = capacity;
        Ok(())
    }

    /// Allocates `demand` to `entity` on `host` if it fits in what is free; an entity's
    /// second allocation on the same host adds to its first.
    pub fn allocate(
        &mut self,
        host: &str,
        entity: &str,
        demand: Resources,
    ) -> Result<(), PlanningError> {
        let h = self.hosts.get_mut(host).ok_or(PlanningError::NotFound)?;
        let free = h.capacity.saturating_sub(&h.allocated());
        if let Some(resource) = demand.first_excess_over(&free) {
            return Err(PlanningError::OverAllocated {
                resource,
                requested: demand.get(resource),
                available: free.get(resource),
            });
        }
        Self::record(h, entity, demand);
        Ok(())
    }

    /// Records `demand` for `entity` on `host` even if it does not fit.
    pub fn reserve(
        &mut self,
        host: &str,
        entity: &str,
        demand: Resources,
    ) -> Result<(), PlanningError> {
        let h = self.hosts.get_mut(host).ok_or(PlanningError::NotFound)?;
        Self::record(h, entity, demand);
        Ok(())
    }

    fn record(host: &mut Host, entity: &str, demand: Resources) {
        let slot = host.allocations.entry(String::from(entity)).or_default();
        *slot = slot.saturating_add(&demand);
    }

    /// Releases everything `entity` holds on `host` and returns it.
    pub fn release(&mut self, host: &str, entity: &str) -> Result<Resources, PlanningError> {
        self.hosts
            .get_mut(host)
            .and_then(|h| h.allocations.remove(entity))
            .ok_or(PlanningError::NotFound)
    }

    /// The host's capacity.
    pub fn capacity(&self, host: &str) -> Option<Resources> {
        self.hosts.get(host).map(|h| h.capacity)
    }

    /// The sum of the allocations on `host`.
    pub fn allocated(&self, host: &str) -> Option<Resources> {
        self.hosts.get(host).map(Host::allocated)
    }

    /// What is still free on `host`.
    pub fn available(&self, host: &str) -> Option<Resources> {
        self.hosts
            .get(host)
            .map(|h| h.capacity.saturating_sub(&h.allocated()))
    }

    /// The allocated share of each resource on `host`.
    pub fn utilisation(&self, host: &str) -> Option<Utilisation> {
        self.hosts.get(host).map(|h| {
            let used = h.allocated();
            Utilisation {
                cpu: permille(used.cpu_millicores, h.capacity.cpu_millicores),
                memory: permille(used.memory_kib, h.capacity.memory_kib),
                bandwidth: permille(used.bandwidth_kbps, h.capacity.bandwidth_kbps),
            }
        })
    }

    /// Every host and resource whose allocations exceed the capacity, by host name.
    pub fn over_allocations(&self) -> Vec<OverAllocation> {
        let mut found = Vec::new();
        for (name, host) in &self.hosts {
            let used = host.allocated();
            for resource in [Resource::Cpu, Resource::Memory, Resource::Bandwidth] {
                if used.get(resource) > host.capacity.get(resource) {
                    found.push(OverAllocation {
                        host: name.clone(),
                        resource,
                        allocated: used.get(resource),
                        capacity: host.capacity.get(resource),
                    });
                }
            }
        }
        found
    }
}

/// A gateway able to take devices: at most `max_devices` of them, carrying at most `capacity`
/// load units (messages per minute, say) together.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GatewayCapacity {
    /// Unique name.
    pub name: String,
    /// Most devices it may serve (radio associations, connection table size).
    pub max_devices: u32,
    /// Most load it may carry.
    pub capacity: u64,
}

/// A device and the load it puts on its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceLoad {
    /// Unique name.
    pub name: String,
    /// Load units (same unit as [`GatewayCapacity::capacity`]).
    pub load: u64,
}

/// Where each device went.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Assignment {
    /// Per gateway (every gateway present, possibly empty): its devices and their total load.
    pub gateways: BTreeMap<String, GatewayLoad>,
    /// Devices no gateway had room for, heaviest first.
    pub unassigned: Vec<String>,
}

/// The devices and load a gateway received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GatewayLoad {
    /// Device names, in the order they were placed.
    pub devices: Vec<String>,
    /// Sum of their loads.
    pub load: u64,
    /// The gateway's capacity.
    pub capacity: u64,
}

impl GatewayLoad {
    /// Load as a share of capacity, in permille.
    pub fn utilisation_permille(&self) -> u64 {
        permille(self.load, self.capacity)
    }
}

impl Assignment {
    /// The gateway `device` was assigned to.
    pub fn gateway_of(&self, device: &str) -> Option<&str> {
        self.gateways
            .iter()
            .find(|(_, g)| g.devices.iter().any(|d| d == device))
            .map(|(name, _)| name.as_str())
    }

    /// Highest minus lowest utilisation across gateways, in permille: 0 is perfectly even.
    pub fn imbalance_permille(&self) -> u64 {
        let utilisations = || {
            self.gateways
                .values()
                .map(GatewayLoad::utilisation_permille)
        };
        let max = utilisations().max().unwrap_or(0);
        let min = utilisations().min().unwrap_or(0);
        max.saturating_sub(min)
    }
}

/// Places devices on gateways, heaviest device first, each on the gateway that ends up least
/// utilised among those with room (device slots and load capacity), ties broken by name.
///
/// Heaviest-first then least-loaded is the classic longest-processing-time heuristic: it keeps
/// the imbalance within the load of one device on equal gateways, and respects every limit.
/// Devices that fit nowhere are reported in [`Assignment::unassigned`], not dropped. After a
/// gateway fails, balancing again without it is the failover plan.
pub fn balance(
    devices: &[DeviceLoad],
    gateways: &[GatewayCapacity],
) -> Result<Assignment, PlanningError> {
    let mut assignment = Assignment::default();
    for g in gateways {
        if g.capacity == 0 || g.max_devices == 0 {
            return Err(PlanningError::ZeroCapacity);
        }
        let entry = GatewayLoad {
            devices: Vec::new(),
            load: 0,
            capacity: g.capacity,
        };
        if assignment.gateways.insert(g.name.clone(), entry).is_some() {
            return Err(PlanningError::DuplicateName);
        }
    }
    let mut names = BTreeSet::new();
    if !devices.iter().all(|d| names.insert(d.name.as_str())) {
        return Err(PlanningError::DuplicateName);
    }
    let mut order: Vec<&DeviceLoad> = devices.iter().collect();
    order.sort_by(|a, b| b.load.cmp(&a.load).then_with(|| a.name.cmp(&b.name)));
    let slots: BTreeMap<&str, u32> = gateways
        .iter()
        .map(|g| (g.name.as_str(), g.max_devices))
        .collect();

    for device in order {
        let mut best: Option<(&String, u128, u128)> = None;
        for (name, g) in &assignment.gateways {
            let room = slots
                .get(name.as_str())
                .is_some_and(|max| g.devices.len() < *max as usize);
            let after = g.load.saturating_add(device.load);
            if !room || after > g.capacity {
                continue;
            }
            // Compare after/capacity as fractions without floating point.
            let (num, den) = (u128::from(after), u128::from(g.capacity));
            let better =
                best.is_none_or(|(_, bn, bd)| num.saturating_mul(bd) < bn.saturating_mul(den));
            if better {
                best = Some((name, num, den));
            }
        }
        match best.map(|(name, _, _)| name.clone()) {
            Some(name) => {
                if let Some(g) = assignment.gateways.get_mut(&name) {
                    g.load = g.load.saturating_add(device.load);
                    g.devices.push(device.name.clone());
                }
            }
            None => assignment.unassigned.push(device.name.clone()),
        }
    }
    Ok(assignment)
}

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

    fn gw(name: &str, max_devices: u32, capacity: u64) -> GatewayCapacity {
        GatewayCapacity {
            name: String::from(name),
            max_devices,
            capacity,
        }
    }

    fn dev(name: &str, load: u64) -> DeviceLoad {
        DeviceLoad {
            name: String::from(name),
            load,
        }
    }

    #[test]
    fn allocation_refuses_what_does_not_fit_and_names_the_resource() {
        let mut plan = ResourcePlan::new();
        plan.add_host("gw", Resources::new(1_000, 1_024, 500))
            .unwrap();
        assert_eq!(
            plan.add_host("gw", Resources::ZERO),
            Err(PlanningError::DuplicateName)
        );
        plan.allocate("gw", "a", Resources::new(600, 512, 100))
            .unwrap();
        assert_eq!(
            plan.allocate("gw", "b", Resources::new(300, 600, 0)),
            Err(PlanningError::OverAllocated {
                resource: Resource::Memory,
                requested: 600,
                available: 512
            })
        );
        plan.allocate("gw", "a", Resources::new(400, 0, 0)).unwrap();
        assert_eq!(plan.available("gw"), Some(Resources::new(0, 512, 400)));
        let u = plan.utilisation("gw").unwrap();
        assert_eq!(
            (u.cpu, u.memory, u.bandwidth, u.peak()),
            (1_000, 500, 200, 1_000)
        );
        assert_eq!(plan.release("gw", "a"), Ok(Resources::new(1_000, 512, 100)));
        assert_eq!(plan.release("gw", "a"), Err(PlanningError::NotFound));
        assert_eq!(
            plan.allocate("nope", "a", Resources::ZERO),
            Err(PlanningError::NotFound)
        );
    }

    #[test]
    fn over_allocation_is_detected_after_reserve_or_shrinking() {
        let mut plan = ResourcePlan::new();
        plan.add_host("a", Resources::new(2_000, 4_096, 1_000))
            .unwrap();
        plan.add_host("b", Resources::new(1_000, 1_024, 1_000))
            .unwrap();
        plan.allocate("a", "x", Resources::new(1_500, 2_048, 100))
            .unwrap();
        plan.reserve("b", "y", Resources::new(500, 2_000, 2_000))
            .unwrap();
        assert_eq!(
            plan.over_allocations(),
            [
                OverAllocation {
                    host: String::from("b"),
                    resource: Resource::Memory,
                    allocated: 2_000,
                    capacity: 1_024
                },
                OverAllocation {
                    host: String::from("b"),
                    resource: Resource::Bandwidth,
                    allocated: 2_000,
                    capacity: 1_000
                },
            ]
        );
        plan.set_capacity("a", Resources::new(1_000, 4_096, 1_000))
            .unwrap();
        let over = plan.over_allocations();
        assert_eq!(over.len(), 3);
        assert_eq!(
            (over[0].host.as_str(), over[0].resource),
            ("a", Resource::Cpu)
        );
        assert_eq!(plan.utilisation("a").unwrap().cpu, 1_500);
    }

    #[test]
    fn balancing_spreads_equal_devices_evenly() {
        let gateways = [gw("g1", 10, 100), gw("g2", 10, 100), gw("g3", 10, 100)];
        let devices: Vec<_> = (0..9).map(|i| dev(&alloc::format!("d{i}"), 10)).collect();
        let a = balance(&devices, &gateways).unwrap();
        assert!(a.unassigned.is_empty());
        for g in a.gateways.values() {
            assert_eq!((g.devices.len(), g.load), (3, 30));
        }
        assert_eq!(a.imbalance_permille(), 0);
        assert!(a.gateway_of("d4").is_some());
    }

    #[test]
    fn balancing_respects_slots_and_capacity_and_reports_leftovers() {
        let gateways = [gw("small", 1, 50), gw("big", 3, 200)];
        let devices = [
            dev("a", 120),
            dev("b", 60),
            dev("c", 40),
            dev("d", 30),
            dev("e", 20),
        ];
        let a = balance(&devices, &gateways).unwrap();
        for g in a.gateways.values() {
            assert!(g.load <= g.capacity);
        }
        assert!(a.gateways["small"].devices.len() <= 1);
        assert!(a.gateways["big"].devices.len() <= 3);
        let placed: usize = a.gateways.values().map(|g| g.devices.len()).sum();
        assert_eq!(placed + a.unassigned.len(), devices.len());
        assert!(!a.unassigned.is_empty());
        assert_eq!(a.gateway_of("a"), Some("big"));
    }

    #[test]
    fn failover_rebalances_onto_the_survivors() {
        let gateways = [gw("g1", 5, 100), gw("g2", 5, 100), gw("g3", 5, 100)];
        let devices: Vec<_> = (0..6).map(|i| dev(&alloc::format!("d{i}"), 25)).collect();
        assert!(balance(&devices, &gateways).unwrap().unassigned.is_empty());
        let after = balance(&devices, &gateways[1..]).unwrap();
        assert!(after.unassigned.is_empty());
        assert_eq!(after.imbalance_permille(), 0);
        assert_eq!(after.gateway_of("d0").map(|g| g != "g1"), Some(true));
    }

    #[test]
    fn balancing_refuses_bad_input() {
        assert_eq!(
            balance(&[], &[gw("g", 0, 10)]),
            Err(PlanningError::ZeroCapacity)
        );
        assert_eq!(
            balance(&[], &[gw("g", 1, 10), gw("g", 1, 10)]),
            Err(PlanningError::DuplicateName)
        );
        assert_eq!(
            balance(&[dev("d", 1), dev("d", 2)], &[gw("g", 1, 10)]),
            Err(PlanningError::DuplicateName)
        );
        let none = balance(&[dev("d", 1)], &[]).unwrap();
        assert_eq!(none.unassigned, ["d"]);
        assert_eq!(none.imbalance_permille(), 0);
    }

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

    #[test]
    fn planning_errors_map_to_kinds() {
        assert_eq!(PlanningError::NotFound.kind(), ErrorKind::NotFound);
        assert_eq!(
            PlanningError::OverAllocated {
                resource: Resource::Cpu,
                requested: 1,
                available: 0
            }
            .kind(),
            ErrorKind::Capacity
        );
        assert_eq!(permille(5, 0), u64::MAX);
        assert_eq!(permille(0, 0), 0);
    }
}
