//! Protocol abstraction: the protocol catalogue, automatic selection of the link that meets a
//! message's need at the least energy (with failover and a hold time before returning), and
//! QoS monitoring: a congested Wi-Fi uplink and a clean LTE-M uplink carry the same traffic
//! with acknowledgements and retries; the monitor measures delivery and latency, demotes the
//! link that misses its target, and the selector stops preferring it.
//!
//! Run: `cargo run -p iot-examples --example protocols`

use embassy_futures::block_on;
use iot_core::{Clock, DeviceId, ManualClock, MessageKind, QoS};
use iot_examples::{Outcome, check, section};
use iot_planning::catalogue::{CATALOGUE, Protocol};
use iot_transport::monitor::{Health, LinkMonitor, QosTarget};
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::{MONITOR_WINDOW, ReliableEndpoint};
use iot_transport::retry::{BackoffPolicy, Jitter};
use iot_transport::select::{LinkSelector, Need, Objective};
use iot_transport::sim::{SimConfig, SimNetwork};
use iot_transport::{Link, LinkInfo, LinkState, SplitMix64};

fn main() -> Outcome {
    section("catalogue");
    println!(
        "{:<12} {:<12} {:>8} {:>11} {:>6} {:>7} {:>10} {:>8}",
        "protocol", "layer", "range m", "bit/s", "MTU", "lat ms", "nJ/byte", "u$/KiB"
    );
    for p in CATALOGUE {
        println!(
            "{:<12} {:<12} {:>8} {:>11} {:>6} {:>7} {:>10} {:>8}",
            format!("{:?}", p.protocol),
            format!("{:?}", p.layer),
            p.range_m,
            p.bitrate_bps,
            p.mtu,
            p.latency_ms,
            p.energy_nj_per_byte,
            p.cost_micro_per_kib
        );
    }

    section("automatic selection");
    let protocols = [Protocol::Wifi, Protocol::LoRaWan, Protocol::NbIot];
    let mut links = protocols.map(|p| p.profile().typical_link_info());
    let name = |i: usize| format!("{:?}", protocols[i]);
    // Minimise energy; a link that comes back must stay up 60 s before it is used again.
    let mut selector: LinkSelector<3, 16> = LinkSelector::new(Objective::Energy, 60_000);
    let telemetry = Need::new(40, Priority::Normal).with_max_latency_ms(10_000);
    let alarm = Need::new(24, Priority::Critical).with_max_latency_ms(2_000);
    let firmware = Need::new(4_096, Priority::Low).with_max_latency_ms(60_000);
    let mut ask = |label: &str, need: &Need, links: &[LinkInfo], now: u64| {
        let choice = selector.select(need, links, now);
        match &choice {
            Ok(s) => println!(
                "{label:<38} -> {:<7} {} datagram(s), {} ms, {} uJ{}",
                name(s.index),
                s.plan.fragments,
                s.plan.delivery_ms,
                s.plan.energy_nj / 1_000,
                if s.failover { " (failover)" } else { "" }
            ),
            Err(e) => println!("{label:<38} -> none: {e}"),
        }
        choice.map(|s| s.index)
    };
    check(
        ask("40 B telemetry", &telemetry, &links, 0)? == 0,
        "Wi-Fi first",
    )?;
    check(
        ask("24 B critical alarm", &alarm, &links, 0)? == 0,
        "alarm on Wi-Fi",
    )?;
    check(
        ask("4 KiB firmware chunk", &firmware, &links, 0)? == 0,
        "firmware on Wi-Fi",
    )?;
    links[0].state = LinkState::Down;
    println!("-- Wi-Fi goes down --");
    check(
        ask("40 B telemetry", &telemetry, &links, 1_000)? == 2,
        "NB-IoT takes over",
    )?;
    check(
        ask("4 KiB firmware chunk", &firmware, &links, 1_000)? == 2,
        "firmware on NB-IoT",
    )?;
    links[2].state = LinkState::Down;
    println!("-- NB-IoT goes down too --");
    check(
        ask("40 B telemetry", &telemetry, &links, 2_000)? == 1,
        "LoRaWAN last",
    )?;
    check(
        ask(
            "4 KiB firmware chunk (not on LoRaWAN)",
            &firmware,
            &links,
            2_000,
        )
        .is_err(),
        "LoRaWAN cannot carry firmware",
    )?;
    links[0].state = LinkState::Up;
    links[2].state = LinkState::Up;
    println!("-- both come back --");
    check(
        ask("40 B telemetry", &telemetry, &links, 3_000)? == 1,
        "held 60 s",
    )?;
    check(
        ask("40 B telemetry", &telemetry, &links, 63_000)? == 0,
        "back on Wi-Fi",
    )?;

    section("QoS monitoring");
    let target = QosTarget {
        max_p95_latency_ms: Some(1_000),
        min_delivery_permille: 950,
        min_samples: 20,
    };
    println!(
        "target: p95 <= {} ms, delivery >= {} permille, judged after {} messages",
        target.max_p95_latency_ms.unwrap_or(0),
        target.min_delivery_permille,
        target.min_samples
    );
    // Congested Wi-Fi: 35 % of datagrams lost each way. LTE-M: clean, 100 ms.
    let wifi = Protocol::Wifi.profile().typical_link_info();
    let ltem = Protocol::LteM.profile().typical_link_info();
    let wifi_sim = SimConfig::ideal(30).with_loss(350, 5).with_info(wifi);
    let ltem_sim = SimConfig::ideal(100).with_info(ltem);
    let wifi_monitor = measure("Wi-Fi (congested)", wifi_sim)?;
    let ltem_monitor = measure("LTE-M", ltem_sim)?;
    check(
        wifi_monitor.health(&target) == Health::Demoted,
        "Wi-Fi is demoted",
    )?;
    check(
        ltem_monitor.health(&target) == Health::Healthy,
        "LTE-M is healthy",
    )?;

    let mut selector: LinkSelector<2, MONITOR_WINDOW> = LinkSelector::new(Objective::Energy, 0);
    let links = [wifi, ltem];
    let before = selector.select(&telemetry, &links, 0)?;
    for (i, measured) in [wifi_monitor, ltem_monitor].into_iter().enumerate() {
        selector.set_target(i, target)?;
        if let Some(m) = selector.monitor_mut(i) {
            *m = measured;
        }
    }
    let after = selector.select(&telemetry, &links, 1_000)?;
    println!(
        "telemetry before monitoring: {}; after: {}",
        if before.index == 0 { "Wi-Fi" } else { "LTE-M" },
        if after.index == 0 { "Wi-Fi" } else { "LTE-M" }
    );
    check(
        (before.index, after.index) == (0, 1),
        "the demoted link loses its preference",
    )?;
    Ok(())
}

/// Sends 40 acknowledged messages, one every 500 ms, over a simulated link with `config`,
/// and returns the sender's QoS monitor.
fn measure(label: &str, config: SimConfig) -> Result<LinkMonitor<MONITOR_WINDOW>, String> {
    let clock = ManualClock::new(0);
    let net: SimNetwork<_, 64, 256> = SimNetwork::new(&clock, config, 5);
    let (a, b) = net.endpoints();
    // Retransmit after 250 to 500 ms (longer than the round trip), then 500 to 1000 ms, ...;
    // after the fourth transmission the message counts as lost.
    let retry = BackoffPolicy::new(500, 4_000)
        .with_jitter(Jitter::Equal)
        .with_max_attempts(4);
    let id = |s| DeviceId::new(s).map_err(|e| e.to_string());
    let mut device: ReliableEndpoint<_, _, 16, 128, 64> = ReliableEndpoint::new(
        a,
        id("dev")?,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(1),
    );
    let mut server: ReliableEndpoint<_, _, 16, 128, 64> = ReliableEndpoint::new(
        b,
        id("srv")?,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(2),
    );
    let mut delivered = 0;
    for step in 0..4_000u64 {
        let now = clock.now_ms();
        if step % 50 == 0 && step < 2_000 {
            device
                .enqueue(
                    MessageKind::Telemetry,
                    QoS::AtLeastOnce,
                    Priority::Normal,
                    b"21.5C",
                    now,
                )
                .map_err(|e| e.to_string())?;
        }
        block_on(device.poll(now, |_| {})).map_err(|e| e.to_string())?;
        block_on(server.poll(now, |_| delivered += 1)).map_err(|e| e.to_string())?;
        clock.advance(10);
    }
    let m = device.monitor().clone();
    let (acked, lost) = m.totals();
    println!(
        "{label:<18} {:?}: {acked} acknowledged, {lost} lost after 4 attempts, {} retries; \
         delivery {} permille, p50 {} ms, p95 {} ms",
        device.link().info().medium,
        m.retries(),
        m.delivery_permille().unwrap_or(0),
        m.latency_percentile(50).unwrap_or(0),
        m.latency_percentile(95).unwrap_or(0)
    );
    check(
        delivered >= acked as usize,
        "every acknowledged message was delivered",
    )?;
    Ok(m)
}
