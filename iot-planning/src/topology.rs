//! Edge-fog-cloud topology: nodes placed in tiers and mapped to the seven-level IoT reference
//! model, the links between them, gateway detection, data-flow paths and system statistics.
//!
//! ```
//! use iot_planning::topology::{NodeKind, Tier, Topology};
//!
//! let mut factory = Topology::new("SmartFactory");
//! factory.add_node("temp-1", NodeKind::Sensor, Tier::Edge)?;
//! factory.add_node("vibration-1", NodeKind::Sensor, Tier::Edge)?;
//! factory.add_node("fog-gw", NodeKind::Gateway, Tier::Fog)?;
//! factory.add_node("cloud", NodeKind::CloudServer, Tier::Cloud)?;
//! factory.link("temp-1", "fog-gw")?;
//! factory.link("vibration-1", "fog-gw")?;
//! factory.link("fog-gw", "cloud")?;
//!
//! assert_eq!(factory.trace_to_cloud("temp-1")?, ["temp-1", "fog-gw", "cloud"]);
//! assert_eq!(factory.gateways(), ["fog-gw"]);
//! let stats = factory.stats();
//! assert_eq!((stats.nodes, stats.links, stats.gateways), (4, 3, 1));
//! # Ok::<(), iot_planning::topology::TopologyError>(())
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{Error, ErrorKind};

pub use iot_core::flow::Tier;

/// The seven levels of the IoT reference model (Cisco / IoT World Forum), bottom up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReferenceLevel {
    /// Level 1: physical devices and controllers (sensors, actuators).
    PhysicalDevices = 1,
    /// Level 2: connectivity (networks, gateways, protocols).
    Connectivity = 2,
    /// Level 3: edge (fog) computing: filtering, aggregation, anomaly detection.
    EdgeComputing = 3,
    /// Level 4: data accumulation (storage).
    DataAccumulation = 4,
    /// Level 5: data abstraction (aggregation across sources, indexing, access).
    DataAbstraction = 5,
    /// Level 6: applications (reporting, analytics, control).
    Application = 6,
    /// Level 7: collaboration and processes (people and business workflows).
    Collaboration = 7,
}

impl ReferenceLevel {
    /// All seven levels, bottom up.
    pub const ALL: [ReferenceLevel; 7] = [
        Self::PhysicalDevices,
        Self::Connectivity,
        Self::EdgeComputing,
        Self::DataAccumulation,
        Self::DataAbstraction,
        Self::Application,
        Self::Collaboration,
    ];

    /// The level's number, 1 to 7.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The level numbered `n` (1 to 7).
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::PhysicalDevices),
            2 => Some(Self::Connectivity),
            3 => Some(Self::EdgeComputing),
            4 => Some(Self::DataAccumulation),
            5 => Some(Self::DataAbstraction),
            6 => Some(Self::Application),
            7 => Some(Self::Collaboration),
            _ => None,
        }
    }

    /// The level's name as the reference model gives it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PhysicalDevices => "physical devices and controllers",
            Self::Connectivity => "connectivity",
            Self::EdgeComputing => "edge (fog) computing",
            Self::DataAccumulation => "data accumulation",
            Self::DataAbstraction => "data abstraction",
            Self::Application => "application",
            Self::Collaboration => "collaboration and processes",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Self::PhysicalDevices => 1,
            Self::Connectivity => 2,
            Self::EdgeComputing => 4,
            Self::DataAccumulation => 8,
            Self::DataAbstraction => 16,
            Self::Application => 32,
            Self::Collaboration => 64,
        }
    }
}

/// A set of reference levels (a node may cover several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct LevelSet(u8);

impl LevelSet {
    /// No level.
    pub const EMPTY: LevelSet = LevelSet(0);

    /// The levels from `low` to `high`, inclusive (empty if `low > high`).
    pub const fn range(low: ReferenceLevel, high: ReferenceLevel) -> Self {
        // Bits up to and including `high`, minus the bits below `low`; bits are at most 64,
        // so the wrapping operations never actually wrap.
        let up_to_high = high.bit().wrapping_shl(1).wrapping_sub(1);
        let below_low = low.bit().wrapping_sub(1);
        LevelSet(up_to_high & !below_low)
    }

    /// This set plus `level`.
    #[must_use]
    pub const fn with(self, level: ReferenceLevel) -> Self {
        LevelSet(self.0 | level.bit())
    }

    /// True when `level` is in the set.
    pub const fn contains(self, level: ReferenceLevel) -> bool {
        self.0 & level.bit() != 0
    }

    /// True when the set holds no level.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The levels in the set, bottom up.
    pub fn iter(self) -> impl Iterator<Item = ReferenceLevel> {
        ReferenceLevel::ALL
            .into_iter()
            .filter(move |l| self.contains(*l))
    }
}

/// What a node is.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum NodeKind {
    /// Measures the physical world.
    Sensor,
    /// Acts on the physical world.
    Actuator,
    /// Connects devices to the upper tiers, filtering and aggregating on the way.
    Gateway,
    /// Ingests, stores and serves data in the cloud.
    CloudServer,
}

impl NodeKind {
    /// The tiers a node of this kind may be placed in.
    pub const fn allowed_in(self, tier: Tier) -> bool {
        matches!(
            (self, tier),
            (Self::Sensor | Self::Actuator, Tier::Edge)
                | (Self::Gateway, Tier::Edge | Tier::Fog)
                | (Self::CloudServer, Tier::Cloud)
        )
    }

    /// The reference levels a node of this kind covers unless told otherwise: devices are
    /// level 1, gateways levels 2 and 3, cloud servers levels 4 to 7.
    pub const fn default_levels(self) -> LevelSet {
        match self {
            Self::Sensor | Self::Actuator => LevelSet::EMPTY.with(ReferenceLevel::PhysicalDevices),
            Self::Gateway => {
                LevelSet::range(ReferenceLevel::Connectivity, ReferenceLevel::EdgeComputing)
            }
            Self::CloudServer => LevelSet::range(
                ReferenceLevel::DataAccumulation,
                ReferenceLevel::Collaboration,
            ),
        }
    }
}

/// One node of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// What the node is.
    pub kind: NodeKind,
    /// Where it runs.
    pub tier: Tier,
    /// Which reference levels it covers.
    pub levels: LevelSet,
}

/// Why a topology change or query was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A node of that name already exists.
    #[error("a node of that name already exists")]
    DuplicateNode,
    /// No node has that name.
    #[error("no node has that name")]
    UnknownNode,
    /// The kind cannot live in the tier (a sensor in the cloud, a cloud server at the edge).
    #[error("{kind:?} cannot be placed in the {tier:?} tier")]
    InvalidPlacement {
        /// The node's kind.
        kind: NodeKind,
        /// The tier asked for.
        tier: Tier,
    },
    /// A node cannot be linked to itself.
    #[error("a node cannot be linked to itself")]
    SelfLink,
    /// The two nodes are already linked.
    #[error("the nodes are already linked")]
    DuplicateLink,
    /// No upward path leads from the node to a cloud server.
    #[error("no path leads from the node to a cloud server")]
    NoPathToCloud,
}

impl Error for TopologyError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownNode | Self::NoPathToCloud => ErrorKind::NotFound,
            Self::DuplicateNode | Self::DuplicateLink => ErrorKind::Conflict,
            Self::InvalidPlacement { .. } | Self::SelfLink => ErrorKind::InvalidInput,
        }
    }
}

/// Counts describing a topology.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TopologyStats {
    /// Number of nodes.
    pub nodes: usize,
    /// Number of links.
    pub links: usize,
    /// Number of nodes detected as gateways ([`Topology::gateways`]).
    pub gateways: usize,
    /// Nodes per kind (kinds without nodes are absent).
    pub by_kind: BTreeMap<NodeKind, usize>,
    /// Nodes per tier (tiers without nodes are absent).
    pub by_tier: BTreeMap<Tier, usize>,
    /// Nodes covering each reference level (a node may count in several levels).
    pub by_level: BTreeMap<ReferenceLevel, usize>,
}

/// A named system of nodes and undirected links across the edge, fog and cloud tiers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    name: String,
    nodes: BTreeMap<String, Node>,
    adjacency: BTreeMap<String, BTreeSet<String>>,
    links: usize,
}

impl Topology {
    /// An empty system called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: String::from(name),
            ..Self::default()
        }
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a node covering its kind's default reference levels.
    pub fn add_node(
        &mut self,
        name: &str,
        kind: NodeKind,
        tier: Tier,
    ) -> Result<(), TopologyError> {
        self.add_node_with_levels(name, kind, tier, kind.default_levels())
    }

    /// Adds a node covering the given reference levels (a gateway that also stores data, a
    /// fog server running an application).
    pub fn add_node_with_levels(
        &mut self,
        name: &str,
        kind: NodeKind,
        tier: Tier,
        levels: LevelSet,
    ) -> Result<(), TopologyError> {
        if !kind.allowed_in(tier) {
            return Err(TopologyError::InvalidPlacement { kind, tier });
        }
        if self.nodes.contains_key(name) {
            return Err(TopologyError::DuplicateNode);
        }
        let node = Node {
            name: String::from(name),
            kind,
            tier,
            levels,
        };
        self.nodes.insert(node.name.clone(), node);
        self.adjacency.insert(String::from(name), BTreeSet::new());
        Ok(())
    }

    /// Links two existing nodes (undirected: data goes up, commands come down).
    pub fn link(&mut self, a: &str, b: &str) -> Result<(), TopologyError> {
        if a == b {
            return Err(TopologyError::SelfLink);
        }
        if !self.nodes.contains_key(a) || !self.nodes.contains_key(b) {
            return Err(TopologyError::UnknownNode);
        }
        let fresh = self
            .adjacency
            .get_mut(a)
            .is_some_and(|n| n.insert(String::from(b)));
        if !fresh {
            return Err(TopologyError::DuplicateLink);
        }
        if let Some(n) = self.adjacency.get_mut(b) {
            n.insert(String::from(a));
        }
        self.links = self.links.saturating_add(1);
        Ok(())
    }

    /// Removes a node and its links.
    pub fn remove_node(&mut self, name: &str) -> Result<Node, TopologyError> {
        let node = self.nodes.remove(name).ok_or(TopologyError::UnknownNode)?;
        for other in self.adjacency.remove(name).unwrap_or_default() {
            if let Some(n) = self.adjacency.get_mut(&other) {
                n.remove(name);
            }
            self.links = self.links.saturating_sub(1);
        }
        Ok(node)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The nodes linked to `name`, by name.
    pub fn neighbours(&self, name: &str) -> impl Iterator<Item = &Node> {
        self.adjacency
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|n| self.nodes.get(n))
    }

    /// Number of links.
    pub fn link_count(&self) -> usize {
        self.links
    }

    /// True when `name` bridges the edge and the upper tiers: it is not itself a sensor or
    /// actuator, and it is linked both to a node in the edge tier and to one in the fog or
    /// cloud tier. This finds gateways from the wiring, whatever their declared kind.
    pub fn is_gateway(&self, name: &str) -> bool {
        let Some(node) = self.nodes.get(name) else {
            return false;
        };
        if matches!(node.kind, NodeKind::Sensor | NodeKind::Actuator) {
            return false;
        }
        let mut below = false;
        let mut above = false;
        for n in self.neighbours(name) {
            match n.tier {
                Tier::Edge => below = true,
                Tier::Fog | Tier::Cloud => above = true,
            }
        }
        below && above
    }

    /// The names of the nodes that bridge the edge and the upper tiers ([`Topology::is_gateway`]).
    pub fn gateways(&self) -> Vec<&str> {
        self.nodes
            .keys()
            .filter(|n| self.is_gateway(n))
            .map(String::as_str)
            .collect()
    }

    /// The shortest data-flow path from `source` to a cloud server, both ends included.
    ///
    /// Data flows upward, so the path never steps into a lower tier (a sensor may relay
    /// through a peer at the edge, a fog gateway through another fog node). Ties between
    /// equally short paths are broken by name, so the answer is deterministic.
    pub fn trace_to_cloud(&self, source: &str) -> Result<Vec<&str>, TopologyError> {
        let (start, _) = self
            .nodes
            .get_key_value(source)
            .ok_or(TopologyError::UnknownNode)?;
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start.as_str()]);
        came_from.insert(start.as_str(), start.as_str());
        while let Some(at) = queue.pop_front() {
            let Some(here) = self.nodes.get(at) else {
                continue;
            };
            if here.kind == NodeKind::CloudServer {
                let mut path = Vec::from([at]);
                let mut cursor = at;
                while cursor != start.as_str() {
                    cursor = came_from.get(cursor).copied().unwrap_or(start.as_str());
                    path.push(cursor);
                }
                path.reverse();
                return Ok(path);
            }
            for next in self.neighbours(at) {
                if next.tier >= here.tier && !came_from.contains_key(next.name.as_str()) {
                    came_from.insert(next.name.as_str(), at);
                    queue.push_back(next.name.as_str());
                }
            }
        }
        Err(TopologyError::NoPathToCloud)
    }

    /// The edge devices (sensors and actuators) with no upward path to the cloud.
    pub fn unreachable_devices(&self) -> Vec<&str> {
        self.nodes
            .values()
            .filter(|n| matches!(n.kind, NodeKind::Sensor | NodeKind::Actuator))
            .filter(|n| self.trace_to_cloud(&n.name).is_err())
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Counts of nodes by kind, tier and reference level, links and gateways.
    pub fn stats(&self) -> TopologyStats {
        let mut stats = TopologyStats {
            nodes: self.nodes.len(),
            links: self.links,
            gateways: self.gateways().len(),
            ..TopologyStats::default()
        };
        let bump = |n: &mut usize| *n = n.saturating_add(1);
        for node in self.nodes.values() {
            bump(stats.by_kind.entry(node.kind).or_default());
            bump(stats.by_tier.entry(node.tier).or_default());
            for level in node.levels.iter() {
                bump(stats.by_level.entry(level).or_default());
            }
        }
        stats
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn levels_number_one_to_seven_and_round_trip() {
        for (i, level) in ReferenceLevel::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(level.number()), i + 1);
            assert_eq!(ReferenceLevel::from_number(level.number()), Some(level));
            assert!(!level.name().is_empty());
        }
        assert_eq!(ReferenceLevel::from_number(0), None);
        assert_eq!(ReferenceLevel::from_number(8), None);
        let all = LevelSet::range(
            ReferenceLevel::PhysicalDevices,
            ReferenceLevel::Collaboration,
        );
        assert_eq!(all.iter().count(), 7);
        assert!(
            LevelSet::range(ReferenceLevel::Application, ReferenceLevel::Connectivity).is_empty()
        );
    }

    #[test]
    fn placements_follow_the_tiers() {
        let mut t = Topology::new("t");
        assert_eq!(
            t.add_node("s", NodeKind::Sensor, Tier::Cloud),
            Err(TopologyError::InvalidPlacement {
                kind: NodeKind::Sensor,
                tier: Tier::Cloud
            })
        );
        assert!(t.add_node("c", NodeKind::CloudServer, Tier::Edge).is_err());
        assert!(t.add_node("g", NodeKind::Gateway, Tier::Cloud).is_err());
        t.add_node("g", NodeKind::Gateway, Tier::Edge).unwrap();
        assert_eq!(
            t.add_node("g", NodeKind::Gateway, Tier::Fog),
            Err(TopologyError::DuplicateNode)
        );
    }

    #[test]
    fn links_are_checked_and_counted_once() {
        let mut t = Topology::new("t");
        t.add_node("a", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("b", NodeKind::Gateway, Tier::Fog).unwrap();
        assert_eq!(t.link("a", "a"), Err(TopologyError::SelfLink));
        assert_eq!(t.link("a", "x"), Err(TopologyError::UnknownNode));
        t.link("a", "b").unwrap();
        assert_eq!(t.link("b", "a"), Err(TopologyError::DuplicateLink));
        assert_eq!(t.link_count(), 1);
        assert_eq!(
            t.neighbours("b")
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        t.remove_node("b").unwrap();
        assert_eq!(t.link_count(), 0);
        assert_eq!(t.neighbours("a").count(), 0);
        assert_eq!(t.remove_node("b"), Err(TopologyError::UnknownNode));
    }

    #[test]
    fn paths_only_go_upward_and_prefer_the_shortest() {
        let mut t = Topology::new("t");
        t.add_node("s1", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("s2", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("edge-gw", NodeKind::Gateway, Tier::Edge)
            .unwrap();
        t.add_node("fog-a", NodeKind::Gateway, Tier::Fog).unwrap();
        t.add_node("fog-b", NodeKind::Gateway, Tier::Fog).unwrap();
        t.add_node("cloud", NodeKind::CloudServer, Tier::Cloud)
            .unwrap();
        // s2 relays through s1 (a mesh at the edge); fog-b reaches the cloud through fog-a.
        t.link("s2", "s1").unwrap();
        t.link("s1", "edge-gw").unwrap();
        t.link("edge-gw", "fog-b").unwrap();
        t.link("fog-b", "fog-a").unwrap();
        t.link("fog-a", "cloud").unwrap();
        assert_eq!(
            t.trace_to_cloud("s2").unwrap(),
            ["s2", "s1", "edge-gw", "fog-b", "fog-a", "cloud"]
        );
        // A shortcut is taken once it exists.
        t.link("edge-gw", "fog-a").unwrap();
        assert_eq!(
            t.trace_to_cloud("s1").unwrap(),
            ["s1", "edge-gw", "fog-a", "cloud"]
        );
        assert_eq!(t.trace_to_cloud("cloud").unwrap(), ["cloud"]);
        assert_eq!(t.trace_to_cloud("nope"), Err(TopologyError::UnknownNode));
        assert!(t.unreachable_devices().is_empty());
    }

    #[test]
    fn a_path_never_steps_down_a_tier() {
        // The only route from s to the cloud goes down from fog to an edge gateway.
        let mut t = Topology::new("t");
        t.add_node("s", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("fog", NodeKind::Gateway, Tier::Fog).unwrap();
        t.add_node("edge-gw", NodeKind::Gateway, Tier::Edge)
            .unwrap();
        t.add_node("cloud", NodeKind::CloudServer, Tier::Cloud)
            .unwrap();
        t.link("s", "fog").unwrap();
        t.link("fog", "edge-gw").unwrap();
        t.link("edge-gw", "cloud").unwrap();
        assert_eq!(t.trace_to_cloud("s"), Err(TopologyError::NoPathToCloud));
        assert_eq!(t.unreachable_devices(), ["s"]);
        assert_eq!(t.trace_to_cloud("edge-gw").unwrap(), ["edge-gw", "cloud"]);
    }

    #[test]
    fn gateways_are_found_from_the_wiring() {
        let mut t = Topology::new("t");
        t.add_node("s", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("s2", NodeKind::Sensor, Tier::Edge).unwrap();
        t.add_node("idle-gw", NodeKind::Gateway, Tier::Fog).unwrap();
        t.add_node("server", NodeKind::CloudServer, Tier::Cloud)
            .unwrap();
        t.link("s", "s2").unwrap();
        t.link("s2", "server").unwrap();
        // A relaying sensor is a device, and a server with only edge links bridges nothing.
        assert!(t.gateways().is_empty());
        // A declared gateway linked only upward bridges nothing either...
        t.link("idle-gw", "server").unwrap();
        assert!(!t.is_gateway("idle-gw"));
        // ...while the server, now between a sensor and a fog node, does.
        assert_eq!(t.gateways(), ["server"]);
        t.link("idle-gw", "s").unwrap();
        assert_eq!(t.gateways(), ["idle-gw", "server"]);
        assert!(!t.is_gateway("missing"));
    }
}
