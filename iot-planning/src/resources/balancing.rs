//! Load balancing: spreading devices across gateways within their device slots and load
//! capacity, evenly by utilisation ([`balance`]).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use super::{PlanningError, permille};

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
}
