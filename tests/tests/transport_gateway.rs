//! End to end over iot-transport: a device and a gateway exchanging iot-core envelopes over
//! a noisy framed UART, a large message fragmented over LoRa, and automatic selection
//! between Wi-Fi and LoRa with failover and return, all on simulated time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use core::future::Future;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use iot_core::{Clock, DeviceId, EnvelopeRef, ManualClock, MessageKind, QoS};
use iot_planning::catalogue::Protocol;
use iot_transport::control::lora::{DataRate, LoraControl, LoraJoin};
use iot_transport::fragment::{Feed, Fragmenter, Reassembler};
use iot_transport::framing::FramedLink;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::select::{LinkSelector, Need, Objective};
use iot_transport::sim::SimLora;
use iot_transport::sim::{SerialWire, Side, SimConfig, SimNetwork};
use iot_transport::{Link, SplitMix64};

/// Every future in these simulations completes without waiting: poll once.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("simulated I/O never waits"),
    }
}

#[test]
fn device_and_gateway_over_a_noisy_uart_exchange_commands_and_telemetry() {
    let wire = SerialWire::<2048>::new();
    let (dev_uart, gw_uart) = wire.ends();
    let retry = BackoffPolicy::new(50, 500);
    let mut device: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        FramedLink::<_, 160>::new(dev_uart, 115_200),
        DeviceId::from_mac([0x24, 0x6F, 0x28, 0, 0, 1]),
        OverflowPolicy::DropOldest,
        retry,
        SplitMix64::new(1),
    );
    let mut gateway: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        FramedLink::<_, 160>::new(gw_uart, 115_200),
        DeviceId::new("gateway").unwrap(),
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(2),
    );
    for i in 0..5u8 {
        device
            .enqueue(
                MessageKind::Telemetry,
                QoS::ExactlyOnce,
                Priority::Normal,
                &[i],
                0,
            )
            .unwrap();
    }
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::AtLeastOnce,
            Priority::High,
            b"blink",
            0,
        )
        .unwrap();

    let mut at_gateway = Vec::new();
    let mut at_device = Vec::new();
    for step in 0..40u64 {
        let now = step * 25;
        if step % 7 == 3 {
            // Line noise in both directions, sometimes mid-frame.
            wire.inject(Side::A, &[0x55, 0x00, 0xFF]);
            wire.inject(Side::B, &[0x01, 0x02]);
        }
        run(device.poll(now, |e: EnvelopeRef<'_>| {
            at_device.push((e.kind, e.payload.to_vec()))
        }))
        .unwrap();
        run(gateway.poll(now, |e: EnvelopeRef<'_>| {
            at_gateway.push((e.device, e.payload.to_vec()))
        }))
        .unwrap();
    }
    let mut telemetry: Vec<u8> = at_gateway.iter().map(|(_, p)| p[0]).collect();
    telemetry.sort_unstable();
    assert_eq!(telemetry, [0, 1, 2, 3, 4], "each exactly once");
    let mac_id = DeviceId::from_mac([0x24, 0x6F, 0x28, 0, 0, 1]);
    assert!(at_gateway.iter().all(|(d, _)| *d == mac_id));
    assert!(at_device.contains(&(MessageKind::Command, b"blink".to_vec())));
    assert!(device.outbox().is_empty() && gateway.outbox().is_empty());
    assert_eq!(device.outbox().stats().dropped(), 0);
}

#[test]
fn a_large_envelope_crosses_lora_in_fragments_within_the_duty_cycle() {
    let clock = ManualClock::new(0);
    let mut radio: SimLora<_, 4> = SimLora::new(&clock, 9);
    run(radio.join(&LoraJoin::Otaa {
        dev_eui: [1; 8],
        join_eui: [2; 8],
        app_key: [3; 16],
    }))
    .unwrap();
    radio.set_data_rate(DataRate::DR0).unwrap();
    let payload: Vec<u8> = (0..=200).collect();
    let env = iot_core::Envelope {
        device: DeviceId::new("field-3").unwrap(),
        seq: 1,
        id: iot_core::MessageId(77),
        qos: QoS::AtMostOnce,
        kind: MessageKind::HealthReport,
        payload: &payload[..],
    };
    let mut encoded = [0u8; 256];
    let n = env.encode_into(&mut encoded).unwrap();
    let mtu = usize::from(radio.info().mtu);
    assert_eq!(mtu, 51);
    let mut frags = Fragmenter::new(&encoded[..n], 5, mtu).unwrap();
    let mut network: Reassembler<2, 512> = Reassembler::new(3_600_000);
    let mut buf = [0u8; 51];
    let mut complete = None;
    while let Some(len) = frags.next_into(&mut buf).unwrap() {
        // Wait out the duty cycle as a device would, instead of breaking the law.
        clock.advance(radio.duty_cycle_wait_ms());
        run(radio.send(&buf[..len])).unwrap();
        if let Feed::Complete(total) = network.push(radio.last_uplink(), clock.now_ms()).unwrap() {
            complete = Some(total);
        }
    }
    let total = complete.unwrap();
    let back = EnvelopeRef::decode(network.take(total).unwrap()).unwrap();
    assert_eq!(back, env);
    let (uplinks, airtime) = radio.usage();
    assert_eq!(uplinks, u32::from(frags.count()));
    // 1 % duty cycle: the elapsed time is at least 99 times the airtime before the last uplink.
    assert!(clock.now_ms() >= airtime.saturating_sub(2_800) * 99);
}

#[test]
fn selection_fails_over_from_wifi_to_lora_and_returns() {
    let clock = ManualClock::new(0);
    let wifi_info = Protocol::Wifi.profile().typical_link_info();
    let lora_info = Protocol::LoRaWan.profile().typical_link_info();
    let wifi_net: SimNetwork<_, 32, 128> =
        SimNetwork::new(&clock, SimConfig::ideal(5).with_info(wifi_info), 1);
    let lora_net: SimNetwork<_, 32, 128> =
        SimNetwork::new(&clock, SimConfig::ideal(1_500).with_info(lora_info), 2);
    wifi_net.schedule_outage(1_000, 4_000).unwrap();
    let retry = BackoffPolicy::new(100, 1_000);
    let (wa, wb) = wifi_net.endpoints();
    let (la, lb) = lora_net.endpoints();
    let dev = DeviceId::new("dev").unwrap();
    let gw = DeviceId::new("gw").unwrap();
    let mut dev_wifi: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        wa,
        dev,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(1),
    );
    let mut dev_lora: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        la,
        dev,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(2),
    )
    .with_next_id(1_000_000);
    let mut gw_wifi: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        wb,
        gw,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(3),
    );
    let mut gw_lora: ReliableEndpoint<_, _, 8, 128, 32> = ReliableEndpoint::new(
        lb,
        gw,
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(4),
    );

    let mut selector: LinkSelector<2, 16> = LinkSelector::new(Objective::Energy, 500);
    let mut chosen = Vec::new();
    let mut delivered = Vec::new();
    for step in 0..120u64 {
        let now = step * 50;
        clock.advance_to(now);
        if step % 10 == 0 {
            let need = Need::new(20, Priority::Normal).with_max_latency_ms(30_000);
            let infos = [dev_wifi.link().info(), dev_lora.link().info()];
            let s = selector.select(&need, &infos, now).unwrap();
            chosen.push(s.index);
            let ep = if s.index == 0 {
                &mut dev_wifi
            } else {
                &mut dev_lora
            };
            ep.enqueue(
                MessageKind::Telemetry,
                QoS::ExactlyOnce,
                Priority::Normal,
                &[step as u8],
                now,
            )
            .unwrap();
        }
        for ep in [&mut dev_wifi, &mut dev_lora] {
            run(ep.poll(now, |_| {})).unwrap();
        }
        for ep in [&mut gw_wifi, &mut gw_lora] {
            run(ep.poll(now, |e| delivered.push(e.payload[0]))).unwrap();
        }
    }
    // Selections every 0.5 s: Wi-Fi until the outage at 1 s, LoRa during it (1..4 s) and at
    // 4 s (Wi-Fi just back, not yet up for the 0.5 s hold), Wi-Fi again from 4.5 s.
    assert_eq!(chosen, [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(selector.switches(), 2);
    delivered.sort_unstable();
    let expected: Vec<u8> = (0..12).map(|i| (i * 10) as u8).collect();
    assert_eq!(delivered, expected);
    // Polled every 50 ms: an ack over Wi-Fi is seen two polls after the send.
    assert_eq!(dev_wifi.monitor().latency_percentile(95), Some(100));
    assert!(dev_lora.monitor().latency_percentile(50).unwrap() >= 3_000);
}
