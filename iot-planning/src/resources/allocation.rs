//! Allocation of resources to hosts: a [`ResourcePlan`] refuses what does not fit and reports
//! every host whose allocations exceed its capacity.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::{PlanningError, Resource, Resources, permille};

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

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
}
