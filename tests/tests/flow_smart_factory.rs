//! The source material's "SmartFactory" system: two sensors, one fog gateway and one cloud
//! server joined by three links, with its statistics, gateway and data-flow path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_planning::topology::{NodeKind, ReferenceLevel, Tier, Topology};

fn smart_factory() -> Topology {
    let mut factory = Topology::new("SmartFactory");
    factory
        .add_node("temperature-sensor", NodeKind::Sensor, Tier::Edge)
        .unwrap();
    factory
        .add_node("vibration-sensor", NodeKind::Sensor, Tier::Edge)
        .unwrap();
    factory
        .add_node("fog-gateway", NodeKind::Gateway, Tier::Fog)
        .unwrap();
    factory
        .add_node("cloud-server", NodeKind::CloudServer, Tier::Cloud)
        .unwrap();
    factory.link("temperature-sensor", "fog-gateway").unwrap();
    factory.link("vibration-sensor", "fog-gateway").unwrap();
    factory.link("fog-gateway", "cloud-server").unwrap();
    factory
}

#[test]
fn smart_factory_statistics_match_the_source_output() {
    let factory = smart_factory();
    assert_eq!(factory.name(), "SmartFactory");
    let stats = factory.stats();
    assert_eq!(stats.nodes, 4);
    assert_eq!(stats.links, 3);
    assert_eq!(stats.gateways, 1);

    // Devices by type.
    assert_eq!(stats.by_kind.get(&NodeKind::Sensor), Some(&2));
    assert_eq!(stats.by_kind.get(&NodeKind::Gateway), Some(&1));
    assert_eq!(stats.by_kind.get(&NodeKind::CloudServer), Some(&1));
    assert_eq!(stats.by_kind.get(&NodeKind::Actuator), None);

    // Devices by layer.
    assert_eq!(stats.by_tier.get(&Tier::Edge), Some(&2));
    assert_eq!(stats.by_tier.get(&Tier::Fog), Some(&1));
    assert_eq!(stats.by_tier.get(&Tier::Cloud), Some(&1));

    // The seven-level reference model: sensors at level 1, the gateway at 2 and 3, the
    // cloud server at 4 to 7; every level is covered.
    assert_eq!(
        stats.by_level.get(&ReferenceLevel::PhysicalDevices),
        Some(&2)
    );
    for level in &ReferenceLevel::ALL[1..] {
        assert_eq!(stats.by_level.get(level), Some(&1), "{level:?}");
    }
}

#[test]
fn smart_factory_gateway_and_data_flow_paths() {
    let factory = smart_factory();
    assert_eq!(factory.gateways(), ["fog-gateway"]);
    for sensor in ["temperature-sensor", "vibration-sensor"] {
        assert_eq!(
            factory.trace_to_cloud(sensor).unwrap(),
            [sensor, "fog-gateway", "cloud-server"]
        );
    }
    assert!(factory.unreachable_devices().is_empty());

    // Losing the gateway cuts both sensors off and leaves no gateway.
    let mut degraded = factory.clone();
    degraded.remove_node("fog-gateway").unwrap();
    assert_eq!(
        degraded.unreachable_devices(),
        ["temperature-sensor", "vibration-sensor"]
    );
    assert_eq!(degraded.stats().links, 0);
    assert_eq!(degraded.stats().gateways, 0);
}
