//! Resource planning: amounts of CPU, memory and bandwidth, and the three planning tools
//! built on them, one module each: allocation to hosts with over-allocation detection
//! ([`ResourcePlan`]), load balancing of devices across gateways ([`balance`]), and the
//! deployment decision guide ([`recommend`]).
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

use iot_core::{Error, ErrorKind};

mod allocation;
mod balancing;
mod guide;

pub use allocation::{OverAllocation, ResourcePlan, Utilisation};
pub use balancing::{Assignment, DeviceLoad, GatewayCapacity, GatewayLoad, balance};
pub use guide::{
    Architecture, CostBand, Distribution, EDGE_ONLY_MAX_DEVICES, FOG_REDUCTION_MIN_DEVICES,
    Latency, Processing, Recommendation, Requirements, recommend,
};

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
pub(super) fn permille(used: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        return if used == 0 { 0 } else { u64::MAX };
    }
    let p = u128::from(used)
        .saturating_mul(1_000)
        .checked_div(u128::from(capacity))
        .unwrap_or(u128::MAX);
    u64::try_from(p).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
