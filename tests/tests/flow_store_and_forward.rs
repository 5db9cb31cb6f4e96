//! Issue 7's store-and-forward: a fog gateway aggregates two sensors per minute and forwards
//! each window upstream through iot-transport's outbox; the uplink goes down for half an hour.
//! Every aggregate produced during the outage reaches the cloud exactly once after recovery
//! while the outbox has room; beyond its room every aggregate is counted as dropped under each
//! overflow policy; and the cloud's retention store ends with the hourly aggregates the raw
//! readings define.
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
use std::collections::BTreeMap;

use iot_core::flow::{Aggregate, Quantity};
use iot_core::telemetry::{Measurement, Reading};
use iot_core::{Clock, DeviceId, ManualClock, MessageKind};
use iot_fleet::gateway::{FogAggregate, FogGateway, GatewayError, StreamKey};
use iot_fleet::retention::{RetentionPolicy, SeriesStore};
use iot_transport::SplitMix64;
use iot_transport::outbox::{OutboxError, OverflowPolicy};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};
use proptest::prelude::*;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// Messages of up to this many bytes (an aggregate envelope is under 100).
const M: usize = 128;

/// Every future in these simulations completes without waiting: poll once.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("simulated I/O never waits"),
    }
}

type Net = SimNetwork<&'static ManualClock, 128, M>;
type Uplink<'a, const N: usize> =
    ReliableEndpoint<SimLink<'a, &'static ManualClock, 128, M>, SplitMix64, N, M, 256>;

fn sensors() -> [DeviceId; 2] {
    [
        DeviceId::new("temp-1").unwrap(),
        DeviceId::new("temp-2").unwrap(),
    ]
}

/// Sensor `s` reads every 10 s; values are multiples of 0.25 so every sum is exact.
fn reading(s: usize, at_ms: u64) -> Reading {
    let step = (at_ms / 10_000 + 3 * s as u64) % 17;
    let celsius = 18.0 + s as f32 + step as f32 * 0.25;
    Reading::new(at_ms, Measurement::Temperature { celsius })
}

fn quantity() -> Quantity {
    Quantity::of(&Measurement::Temperature { celsius: 0.0 })
}

/// What one run of the plant produced and what reached the cloud.
struct Outcome {
    /// (sensor, window start) of every aggregate the gateway produced, with the time.
    produced: Vec<((DeviceId, u64), u64)>,
    /// (sensor, window start) of every aggregate the cloud received, with the time.
    received: Vec<((DeviceId, u64), u64)>,
    /// Errors the gateway returned while queueing (outbox refusals; one per call).
    refusals: Vec<GatewayError>,
    dropped: u64,
    evicted: u32,
    rejected: u32,
    peak_queue: usize,
    store: SeriesStore<StreamKey>,
    reference: SeriesStore<StreamKey>,
}

/// Runs sensors -> gateway -> cloud for `minutes`, readings every 10 s from both sensors,
/// the uplink down over `outage`, then drains the outbox.
fn plant<const N: usize>(
    net_config: SimConfig,
    policy: OverflowPolicy,
    minutes: u64,
    outage: (u64, u64),
    seed: u64,
) -> Outcome {
    let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new(0)));
    let net: &'static Net = Box::leak(Box::new(SimNetwork::new(clock, net_config, seed)));
    net.schedule_outage(outage.0, outage.1).unwrap();
    let (up, down) = net.endpoints();
    let retry = BackoffPolicy::new(500, 10_000);
    let uplink: Uplink<'_, N> = ReliableEndpoint::new(
        up,
        DeviceId::new("fog-gw").unwrap(),
        policy,
        retry,
        SplitMix64::new(seed ^ 1),
    );
    let mut gateway = FogGateway::new(uplink, MINUTE).unwrap();
    let mut cloud: Uplink<'_, 16> = ReliableEndpoint::new(
        down,
        DeviceId::new("cloud").unwrap(),
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(seed ^ 2),
    );
    let mut store = SeriesStore::new(RetentionPolicy::default()).unwrap();
    let mut reference = SeriesStore::new(RetentionPolicy::default()).unwrap();
    let mut produced = Vec::new();
    let mut received = Vec::new();
    let mut refusals = Vec::new();
    let mut peak_queue = 0;

    let mut produced_before = 0;
    let end = minutes * MINUTE;
    let poll_both = |gateway: &mut FogGateway<_, _, N, M, 256>,
                     cloud: &mut Uplink<'_, 16>,
                     store: &mut SeriesStore<StreamKey>,
                     received: &mut Vec<_>| {
        let now = clock.now_ms();
        run(gateway.poll(now, |_| {})).unwrap();
        run(cloud.poll(now, |env| {
            assert_eq!(env.kind, MessageKind::Telemetry);
            let aggregate = FogAggregate::decode(env.payload).unwrap();
            aggregate.store_into(store).unwrap();
            received.push(((aggregate.source, aggregate.summary.start_ms), now));
        }))
        .unwrap();
    };
    while clock.now_ms() < end {
        let now = clock.now_ms();
        if now.is_multiple_of(10_000) {
            for (s, sensor) in sensors().into_iter().enumerate() {
                let r = reading(s, now);
                let key = StreamKey {
                    source: sensor,
                    quantity: quantity(),
                };
                reference
                    .insert(key, r.at_ms, r.measurement.value())
                    .unwrap();
                if let Err(e) = gateway.ingest(sensor, &r, now) {
                    refusals.push(e);
                }
            }
        }
        refusals.extend(gateway.advance_to(now).err());
        let total = gateway.stats().aggregates;
        for _ in produced_before..total {
            produced.push(now);
        }
        produced_before = total;
        poll_both(&mut gateway, &mut cloud, &mut store, &mut received);
        peak_queue = peak_queue.max(gateway.uplink().outbox().len());
        clock.advance(1_000);
    }
    refusals.extend(gateway.flush(clock.now_ms()).err());
    for _ in produced_before..gateway.stats().aggregates {
        produced.push(clock.now_ms());
    }
    // Drain: the outbox empties once everything queued is acknowledged.
    for _ in 0..3_600 {
        if gateway.uplink().outbox().is_empty() {
            break;
        }
        poll_both(&mut gateway, &mut cloud, &mut store, &mut received);
        clock.advance(1_000);
    }
    assert!(gateway.uplink().outbox().is_empty(), "outbox never drained");

    // Windows are closed in (time, sensor, start) order; pair each with its key.
    let mut keys: Vec<(DeviceId, u64)> = Vec::new();
    for start in (0..end).step_by(MINUTE as usize) {
        for sensor in sensors() {
            keys.push((sensor, start));
        }
    }
    assert_eq!(
        keys.len(),
        produced.len(),
        "one aggregate per sensor and minute"
    );
    let stats = gateway.uplink().outbox().stats();
    Outcome {
        produced: keys.into_iter().zip(produced).collect(),
        received,
        refusals,
        dropped: gateway.dropped(),
        evicted: stats.evicted,
        rejected: stats.rejected,
        peak_queue,
        store,
        reference,
    }
}

fn lossy() -> SimConfig {
    SimConfig::ideal(20)
        .with_loss(100, 3)
        .with_duplication(50)
        .with_jitter(30)
}

#[test]
fn aggregates_produced_during_an_outage_arrive_exactly_once_after_recovery() {
    // Three hours; the uplink is down from 0:40 to 1:10 (60 aggregates pile up).
    let outage = (40 * MINUTE, 70 * MINUTE);
    let out = plant::<64>(lossy(), OverflowPolicy::RejectNewest, 180, outage, 7);

    assert_eq!(out.dropped, 0);
    assert!(out.refusals.is_empty(), "{:?}", out.refusals);
    assert!(
        out.peak_queue >= 60,
        "the outbox held the outage: {}",
        out.peak_queue
    );
    let mut seen = BTreeMap::new();
    for (key, at) in &out.received {
        assert!(seen.insert(*key, *at).is_none(), "{key:?} delivered twice");
    }
    assert_eq!(seen.len(), out.produced.len());
    let mut during = 0;
    for (key, produced_at) in &out.produced {
        let delivered_at = seen[key];
        assert!(delivered_at >= *produced_at);
        if (outage.0..outage.1).contains(produced_at) {
            during += 1;
            assert!(delivered_at >= outage.1, "{key:?} crossed a dead link");
        }
    }
    assert_eq!(during, 60);
}

#[test]
fn the_cloud_ends_with_the_hourly_aggregates_of_the_raw_readings() {
    let outage = (40 * MINUTE, 70 * MINUTE);
    let out = plant::<64>(lossy(), OverflowPolicy::DropOldest, 180, outage, 11);
    assert_eq!(out.dropped, 0);
    for sensor in sensors() {
        let key = StreamKey {
            source: sensor,
            quantity: quantity(),
        };
        let hourly = out.store.rollups(&key, 0, 3 * HOUR);
        let expected = out.reference.rollups(&key, 0, 3 * HOUR);
        assert_eq!(hourly.len(), 3);
        // Values are exact binary fractions: merged minute windows equal the raw rollup.
        assert_eq!(hourly, expected);
        assert_eq!(hourly[0].1.count(), 360);
        assert_eq!(out.store.raw_len(&key), 0, "the cloud got aggregates only");
    }
}

/// One sensor's worth of overflow: ten minutes produced while the uplink is down, an outbox
/// of four. Runs both policies and returns (received window starts, outcome).
fn overflow(policy: OverflowPolicy) -> (Vec<u64>, Outcome) {
    // Down from the start until minute 12: windows 0..=10 close while down (the last one
    // at minute 11), 22 aggregates for two sensors.
    let out = plant::<4>(SimConfig::ideal(20), policy, 11, (0, 12 * MINUTE), 3);
    let mut starts: Vec<u64> = out.received.iter().map(|((_, s), _)| *s).collect();
    starts.sort_unstable();
    (starts, out)
}

#[test]
fn every_aggregate_beyond_the_outbox_is_counted_when_rejecting_the_newest() {
    let (starts, out) = overflow(OverflowPolicy::RejectNewest);
    let produced = out.produced.len() as u64;
    assert_eq!(produced, 22);
    assert_eq!(out.received.len(), 4);
    assert_eq!(out.dropped, produced - 4);
    assert_eq!(u64::from(out.rejected), produced - 4);
    assert_eq!(out.evicted, 0);
    // The first four stayed: minutes 0 and 1 of both sensors.
    assert_eq!(starts, [0, 0, MINUTE, MINUTE]);
    // Each refusal is also reported (one error per `advance_to` or `flush` call).
    assert!(!out.refusals.is_empty() && out.refusals.len() as u64 <= produced - 4);
    assert!(
        out.refusals
            .iter()
            .all(|e| *e == GatewayError::Outbox(OutboxError::Full))
    );
}

#[test]
fn every_aggregate_beyond_the_outbox_is_counted_when_dropping_the_oldest() {
    let (starts, out) = overflow(OverflowPolicy::DropOldest);
    let produced = out.produced.len() as u64;
    assert_eq!(out.received.len(), 4);
    assert_eq!(out.dropped, produced - 4);
    assert_eq!(u64::from(out.evicted), produced - 4);
    assert_eq!(out.rejected, 0);
    // The last four stayed: minutes 9 and 10 of both sensors.
    assert_eq!(starts, [9 * MINUTE, 9 * MINUTE, 10 * MINUTE, 10 * MINUTE]);
    assert!(
        out.refusals.is_empty(),
        "evictions are counted, not refused"
    );
    // The cloud holds exactly what arrived: two minutes of each sensor in hour 0.
    for sensor in sensors() {
        let key = StreamKey {
            source: sensor,
            quantity: quantity(),
        };
        let hourly = out.store.rollups(&key, 0, HOUR);
        assert_eq!(hourly.len(), 1);
        assert_eq!(hourly[0].1.count(), 12);
    }
}

#[test]
fn aggregates_too_large_for_a_slot_are_counted_not_lost() {
    let clock = ManualClock::new(0);
    let net: SimNetwork<_, 8, 64> = SimNetwork::new(&clock, SimConfig::ideal(5), 1);
    let (up, _) = net.endpoints();
    let uplink: ReliableEndpoint<_, _, 4, 24, 8> = ReliableEndpoint::new(
        up,
        DeviceId::new("fog-gw").unwrap(),
        OverflowPolicy::DropOldest,
        BackoffPolicy::new(100, 1_000),
        SplitMix64::new(1),
    );
    let mut gateway = FogGateway::new(uplink, MINUTE).unwrap();
    let sensor = sensors()[0];
    for minute in 0..3 {
        gateway
            .ingest(sensor, &reading(0, minute * MINUTE), minute * MINUTE)
            .ok();
    }
    assert_eq!(gateway.flush(3 * MINUTE), Err(GatewayError::Encode));
    assert_eq!(gateway.stats().aggregates, 3);
    assert_eq!(gateway.stats().unencodable, 3);
    assert_eq!(gateway.dropped(), 3);
    assert!(gateway.uplink().outbox().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any outage of up to 40 minutes in a 90-minute run, any seed of loss, duplication and
    /// jitter: nothing is dropped, each aggregate arrives once, and the hourly rollups equal
    /// those of the raw readings.
    #[test]
    fn any_outage_within_the_outbox_room_delivers_each_aggregate_once(
        start in 0u64..80,
        length in 1u64..40,
        seed in any::<u64>(),
    ) {
        let outage = (start * MINUTE, (start + length) * MINUTE);
        let out = plant::<96>(lossy(), OverflowPolicy::RejectNewest, 90, outage, seed);
        prop_assert_eq!(out.dropped, 0);
        let mut keys: Vec<_> = out.received.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        prop_assert_eq!(keys.len(), out.received.len());
        prop_assert_eq!(keys.len(), out.produced.len());
        for sensor in sensors() {
            let key = StreamKey { source: sensor, quantity: quantity() };
            let rollups: Vec<(u64, Aggregate)> = out.store.rollups(&key, 0, 2 * HOUR);
            prop_assert_eq!(rollups, out.reference.rollups(&key, 0, 2 * HOUR));
        }
    }
}
