//! Architecture deployment: the source material's "SmartFactory" — two edge sensors, a fog
//! gateway and a cloud server joined by three links — with each node's tier and reference-model
//! levels, the data-flow path from each sensor to the cloud, the system statistics, what
//! losing the gateway does, and the deployment guide's advice for a plant of this kind.
//!
//! Run: `cargo run -p iot-examples --example architecture`

use iot_examples::{Outcome, check, section};
use iot_planning::resources::{
    Architecture, Distribution, Latency, Processing, Requirements, recommend,
};
use iot_planning::topology::{NodeKind, ReferenceLevel, Tier, Topology};

fn main() -> Outcome {
    section("deployment");
    let mut factory = Topology::new("SmartFactory");
    for (name, kind, tier) in [
        ("temperature-sensor", NodeKind::Sensor, Tier::Edge),
        ("vibration-sensor", NodeKind::Sensor, Tier::Edge),
        ("fog-gateway", NodeKind::Gateway, Tier::Fog),
        ("cloud-server", NodeKind::CloudServer, Tier::Cloud),
    ] {
        factory.add_node(name, kind, tier)?;
    }
    for (a, b) in [
        ("temperature-sensor", "fog-gateway"),
        ("vibration-sensor", "fog-gateway"),
        ("fog-gateway", "cloud-server"),
    ] {
        factory.link(a, b)?;
        println!("link {a} <-> {b}");
    }
    for node in factory.nodes() {
        let levels: Vec<String> = node.levels.iter().map(|l| l.number().to_string()).collect();
        println!(
            "{:<20} {:<12} {:<6} levels {}",
            node.name,
            format!("{:?}", node.kind),
            format!("{:?}", node.tier),
            levels.join(",")
        );
    }
    // A sensor in the cloud is refused: placement follows the architecture.
    let misplaced = factory.add_node("rogue", NodeKind::Sensor, Tier::Cloud);
    println!("placing a sensor in the cloud tier: {misplaced:?}");
    check(misplaced.is_err(), "a sensor cannot live in the cloud tier")?;

    section("data flow");
    for sensor in ["temperature-sensor", "vibration-sensor"] {
        let path = factory.trace_to_cloud(sensor)?;
        println!("{}", path.join(" -> "));
        check(
            path == [sensor, "fog-gateway", "cloud-server"],
            format!("{sensor} flows through the fog gateway"),
        )?;
    }
    let gateways = factory.gateways();
    println!("gateways detected: {gateways:?}");
    check(gateways == ["fog-gateway"], "one gateway detected")?;

    section("system statistics");
    let stats = factory.stats();
    println!(
        "{}: {} nodes, {} links, {} gateways",
        factory.name(),
        stats.nodes,
        stats.links,
        stats.gateways
    );
    for (kind, n) in &stats.by_kind {
        println!("  {kind:?}: {n}");
    }
    for (tier, n) in &stats.by_tier {
        println!("  {tier:?} tier: {n}");
    }
    for (level, n) in &stats.by_level {
        println!("  level {} ({}): {n}", level.number(), level.name());
    }
    let count = |kind| stats.by_kind.get(&kind).copied().unwrap_or(0);
    check(
        (
            count(NodeKind::Sensor),
            count(NodeKind::Gateway),
            count(NodeKind::CloudServer),
            stats.links,
        ) == (2, 1, 1, 3),
        "SmartFactory is 2 sensors / 1 gateway / 1 cloud / 3 links",
    )?;
    check(
        ReferenceLevel::ALL
            .iter()
            .all(|l| stats.by_level.contains_key(l)),
        "every reference level is covered",
    )?;

    section("losing the gateway");
    let mut degraded = factory.clone();
    degraded.remove_node("fog-gateway")?;
    let cut_off = degraded.unreachable_devices();
    println!("without fog-gateway, cut off from the cloud: {cut_off:?}");
    check(cut_off.len() == 2, "both sensors depend on the gateway")?;

    section("deployment guide");
    let plant = Requirements {
        devices: 2_000,
        latency: Latency::Low,
        processing: Processing::Moderate,
        distribution: Distribution::SingleSite,
    };
    let advice = recommend(&plant);
    println!(
        "{} devices, {:?} latency, {:?} processing, {:?}: {:?} (${}-${} a month)",
        plant.devices,
        plant.latency,
        plant.processing,
        plant.distribution,
        advice.architecture,
        advice.cost.min_usd,
        advice.cost.max_usd
    );
    for reason in &advice.reasons {
        println!("  - {reason}");
    }
    check(
        advice.architecture == Architecture::EdgeFogCloud,
        "a large low-latency plant gets edge, fog and cloud",
    )?;
    Ok(())
}
