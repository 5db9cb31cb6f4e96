//! Resource optimisation: battery lifetime of a Wi-Fi and a LoRa sensor against the reporting
//! interval, the longest awake time that still reaches two years; CPU, memory and bandwidth
//! allocation on fog and cloud hosts with over-allocation detection; and load balancing of
//! sensors across gateways, with the failover plan when a gateway dies.
//!
//! Run: `cargo run -p iot-examples --example resources`

use std::time::Duration;

use iot_examples::{Outcome, check, section};
use iot_planning::power::{
    Battery, DutyCycle, ESP32_C3_WIFI, LOW_POWER_LORA_NODE, estimate_lifetime, max_active_ms_for,
};
use iot_planning::resources::{DeviceLoad, GatewayCapacity, ResourcePlan, Resources, balance};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn main() -> Outcome {
    battery_lifetime()?;
    allocation()?;
    load_balancing()
}

fn battery_lifetime() -> Outcome {
    section("battery lifetime");
    let cell = Battery::new(3_000, 85, 3_600)?;
    println!(
        "battery: {} mAh, {} % usable",
        cell.capacity_mah(),
        cell.usable_percent()
    );
    // Per report: Wi-Fi wakes 150 ms and transmits 350 ms; LoRa wakes 100 ms and spends
    // 1.5 s in SF12 airtime and receive windows.
    for (name, profile, active, radio) in [
        ("ESP32-C3 Wi-Fi", ESP32_C3_WIFI, 150, 350),
        ("LoRa node", LOW_POWER_LORA_NODE, 100, 1_500),
    ] {
        let mut previous = Duration::ZERO;
        for period_s in [10, 60, 300, 900] {
            let duty = DutyCycle::new(period_s * 1_000, active, radio)?;
            let life = estimate_lifetime(&profile, &cell, &duty)?;
            println!(
                "  {name:<15} report every {period_s:>3} s: {:>6} uA average, {:>5} days",
                life.average_na / 1_000,
                life.days()
            );
            check(
                life.duration > previous,
                "reporting less often lasts longer",
            )?;
            previous = life.duration;
        }
    }
    let always_on = DutyCycle::new(60_000, 59_650, 350)?;
    let awake = estimate_lifetime(&ESP32_C3_WIFI, &cell, &always_on)?;
    println!("  ESP32-C3 never sleeping: {} days", awake.days());

    // How long may a LoRa node compute per 10-minute report and still last two years?
    let target = 2 * YEAR;
    let budget = max_active_ms_for(&LOW_POWER_LORA_NODE, &cell, 600_000, 1_500, target)
        .ok_or("two years are out of reach")?;
    let duty = DutyCycle::new(600_000, budget, 1_500)?;
    let life = estimate_lifetime(&LOW_POWER_LORA_NODE, &cell, &duty)?;
    println!(
        "  LoRa node, 10-min reports, 2-year target: at most {budget} ms awake per report \
         (estimated {} days)",
        life.days()
    );
    check(life.duration >= target, "the budget meets the target")?;
    let over = DutyCycle::new(600_000, budget + 1_000, 1_500)?;
    check(
        estimate_lifetime(&LOW_POWER_LORA_NODE, &cell, &over)?.duration < target,
        "a second more misses it",
    )?;
    Ok(())
}

fn allocation() -> Outcome {
    section("allocation");
    const MIB: u64 = 1_024;
    let mut plan = ResourcePlan::new();
    plan.add_host("fog-1", Resources::new(4_000, 4_096 * MIB, 100_000))?;
    plan.add_host("fog-2", Resources::new(2_000, 2_048 * MIB, 50_000))?;
    plan.add_host("cloud-1", Resources::new(16_000, 65_536 * MIB, 1_000_000))?;
    for (host, service, demand) in [
        (
            "fog-1",
            "mqtt-broker",
            Resources::new(500, 256 * MIB, 20_000),
        ),
        (
            "fog-1",
            "aggregator",
            Resources::new(1_500, 512 * MIB, 10_000),
        ),
        (
            "fog-2",
            "anomaly-detector",
            Resources::new(1_200, 768 * MIB, 5_000),
        ),
        (
            "fog-2",
            "ml-inference",
            Resources::new(2_000, 1_536 * MIB, 5_000),
        ),
        (
            "cloud-1",
            "ingestion",
            Resources::new(4_000, 8_192 * MIB, 400_000),
        ),
        (
            "cloud-1",
            "time-series-db",
            Resources::new(6_000, 32_768 * MIB, 200_000),
        ),
    ] {
        match plan.allocate(host, service, demand) {
            Ok(()) => println!("  {service:<17} on {host}"),
            Err(e) => {
                println!("  {service:<17} refused on {host}: {e}");
                check(
                    service == "ml-inference",
                    "only the oversized service is refused",
                )?;
            }
        }
    }
    for host in ["fog-1", "fog-2", "cloud-1"] {
        let u = plan.utilisation(host).ok_or("host exists")?;
        println!(
            "  {host:<8} cpu {:>4} permille, memory {:>4}, bandwidth {:>4}",
            u.cpu, u.memory, u.bandwidth
        );
    }
    check(plan.over_allocations().is_empty(), "nothing over-allocated")?;
    // A core of fog-2 fails: the plan now demands more than it has.
    plan.set_capacity("fog-2", Resources::new(1_000, 2_048 * MIB, 50_000))?;
    let over = plan.over_allocations();
    for o in &over {
        println!(
            "  after losing a core: {} {:?} over-allocated ({} of {})",
            o.host, o.resource, o.allocated, o.capacity
        );
    }
    check(
        over.len() == 1 && over.iter().all(|o| o.host == "fog-2"),
        "fog-2's CPU is over-allocated",
    )?;
    Ok(())
}

fn load_balancing() -> Outcome {
    section("load balancing");
    // Messages per minute of twelve sensors.
    let loads = [160, 90, 80, 60, 60, 45, 40, 30, 30, 20, 15, 10];
    let devices: Vec<DeviceLoad> = loads
        .iter()
        .enumerate()
        .map(|(i, &load)| DeviceLoad {
            name: format!("sensor-{:02}", i + 1),
            load,
        })
        .collect();
    let gateway = |name: &str| GatewayCapacity {
        name: name.into(),
        max_devices: 6,
        capacity: 300,
    };
    let gateways = [gateway("gw-a"), gateway("gw-b"), gateway("gw-c")];
    let total: u64 = loads.iter().sum();
    println!(
        "{} sensors, {total} msg/min, 3 gateways of 300 msg/min and 6 devices",
        loads.len()
    );
    let plan = balance(&devices, &gateways)?;
    print_assignment(&plan);
    check(plan.unassigned.is_empty(), "every sensor placed")?;
    // Heaviest first, least utilised gateway next: within one device's load of even.
    check(
        plan.imbalance_permille() <= 160 * 1_000 / 300,
        "imbalance within one device's load",
    )?;

    println!("-- gw-b fails: the failover plan --");
    let survivors = [gateway("gw-a"), gateway("gw-c")];
    let failover = balance(&devices, &survivors)?;
    print_assignment(&failover);
    let placed: usize = failover.gateways.values().map(|g| g.devices.len()).sum();
    check(
        placed + failover.unassigned.len() == devices.len(),
        "no sensor forgotten",
    )?;
    check(
        failover.gateways.values().all(|g| g.load <= g.capacity),
        "no gateway beyond capacity",
    )?;
    check(
        !failover.unassigned.is_empty(),
        "two gateways cannot carry all",
    )?;
    Ok(())
}

fn print_assignment(plan: &iot_planning::resources::Assignment) {
    for (name, g) in &plan.gateways {
        println!(
            "  {name}: {:>3} msg/min ({:>3} permille) {}",
            g.load,
            g.utilisation_permille(),
            g.devices.join(" ")
        );
    }
    if !plan.unassigned.is_empty() {
        println!("  no room for: {}", plan.unassigned.join(" "));
    }
    println!("  imbalance: {} permille", plan.imbalance_permille());
}
