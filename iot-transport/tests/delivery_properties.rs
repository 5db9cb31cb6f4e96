//! Property: under any bounded loss, duplication, reordering and outage pattern,
//! at-least-once transmission plus the receiver's dedup window delivers every accepted
//! message exactly once, and every message the outbox had no room for is counted as dropped;
//! also when the link's MTU is small enough that messages travel in fragments, each of which
//! is lost, duplicated and reordered on its own.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};

use embassy_futures::block_on;
use iot_core::{Clock, DeviceId, ManualClock, MessageKind, QoS};
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::{EndpointError, ReliableEndpoint};
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};
use proptest::prelude::*;

const OUTBOX: usize = 8;
type Ep<'a> = ReliableEndpoint<SimLink<'a, &'a ManualClock, 64, 96>, SplitMix64, OUTBOX, 96, 64>;

#[derive(Debug, Clone)]
struct Scenario {
    loss: u16,
    max_consecutive: u32,
    dup: u16,
    jitter: u64,
    latency: u64,
    gaps: Vec<u64>,
    outage: Option<(u64, u64)>,
    seed: u64,
    priorities: Vec<u8>,
    mtu: u16,
    sizes: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0u16..=600,
        0u32..=4,
        0u16..=500,
        0u64..=300,
        1u64..=50,
        prop::collection::vec(0u64..=150, 1..=40),
        prop::option::of((0u64..=3_000, 1u64..=2_000)),
        any::<u64>(),
        prop::collection::vec(0u8..4, 40),
        // Whole datagrams, or an MTU small enough that most messages travel in fragments.
        prop_oneof![Just(1024u16), 24u16..=64],
        prop::collection::vec(4usize..=60, 40),
    )
        .prop_map(
            |(
                loss,
                max_consecutive,
                dup,
                jitter,
                latency,
                gaps,
                outage,
                seed,
                priorities,
                mtu,
                sizes,
            )| {
                Scenario {
                    mtu,
                    sizes,
                    loss,
                    max_consecutive,
                    dup,
                    jitter,
                    latency,
                    gaps,
                    outage,
                    seed,
                    priorities,
                }
            },
        )
}

fn priority(code: u8) -> Priority {
    match code {
        0 => Priority::Low,
        1 => Priority::Normal,
        2 => Priority::High,
        _ => Priority::Critical,
    }
}

struct Outcome {
    accepted: BTreeSet<u32>,
    rejected: u32,
    evicted: BTreeSet<u32>,
    delivered: BTreeMap<u32, u32>,
    dev_stats: iot_transport::outbox::OutboxStats,
    fragments_sent: u32,
    converged: bool,
}

fn run(s: &Scenario, policy: OverflowPolicy) -> Outcome {
    let clock = ManualClock::new(0);
    let mut info = SimConfig::ideal(0).info;
    info.mtu = s.mtu;
    let cfg = SimConfig::ideal(s.latency)
        .with_info(info)
        .with_loss(s.loss, s.max_consecutive)
        .with_duplication(s.dup)
        .with_jitter(s.jitter);
    let net: SimNetwork<_, 64, 96> = SimNetwork::new(&clock, cfg, s.seed);
    if let Some((from, len)) = s.outage {
        net.schedule_outage(from, from + len).unwrap();
    }
    let (a, b) = net.endpoints();
    let retry = BackoffPolicy::new(30, 300);
    let mut dev: Ep<'_> = ReliableEndpoint::new(
        a,
        DeviceId::new("dev").unwrap(),
        policy,
        retry,
        SplitMix64::new(s.seed ^ 1),
    )
    .with_reassembly_timeout_ms(2_000);
    let mut gw: Ep<'_> = ReliableEndpoint::new(
        b,
        DeviceId::new("gw").unwrap(),
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(s.seed ^ 2),
    )
    .with_reassembly_timeout_ms(2_000);

    let mut schedule = Vec::new();
    let mut t = 0;
    for g in &s.gaps {
        t += g;
        schedule.push(t);
    }
    let mut next = 0usize;
    let mut accepted = BTreeSet::new();
    let mut evicted = BTreeSet::new();
    let mut rejected = 0u32;
    let mut delivered: BTreeMap<u32, u32> = BTreeMap::new();
    let mut converged = false;
    while clock.now_ms() < 120_000 {
        let now = clock.now_ms();
        while next < schedule.len() && schedule[next] <= now {
            let full_before = dev.outbox().is_full();
            let mut payload = vec![0xA5u8; s.sizes[next]];
            payload[..4].copy_from_slice(&(next as u32).to_be_bytes());
            match dev.enqueue(
                MessageKind::Telemetry,
                QoS::ExactlyOnce,
                priority(s.priorities[next]),
                &payload,
                now,
            ) {
                Ok(id) => {
                    accepted.insert(id.0);
                }
                Err(EndpointError::Outbox(_)) => {
                    assert!(full_before, "only a full outbox refuses");
                    rejected += 1;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
            next += 1;
        }
        block_on(dev.poll(now, |_| {})).unwrap();
        block_on(gw.poll(now, |env| {
            assert_eq!(env.kind, MessageKind::Telemetry);
            *delivered.entry(env.id.0).or_default() += 1;
        }))
        .unwrap();
        if next == schedule.len() && dev.outbox().is_empty() {
            converged = true;
            break;
        }
        clock.advance(10);
    }
    let queued: BTreeSet<u32> = dev.outbox().iter().map(|e| e.id.0).collect();
    // Under DropOldest, whatever was accepted and is neither acked nor queued was evicted.
    if policy == OverflowPolicy::DropOldest {
        for id in &accepted {
            if !queued.contains(id) && !delivered.contains_key(id) {
                evicted.insert(*id);
            }
        }
    }
    Outcome {
        accepted,
        rejected,
        evicted,
        delivered,
        dev_stats: dev.outbox().stats(),
        fragments_sent: dev.stats().fragments_sent,
        converged,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn at_least_once_plus_dedup_delivers_every_accepted_message_exactly_once(s in scenario()) {
        let out = run(&s, OverflowPolicy::RejectNewest);
        prop_assert!(out.converged, "did not drain within the simulated time");
        // Exactly once, and only accepted messages.
        prop_assert!(out.delivered.values().all(|&n| n == 1), "{:?}", out.delivered);
        let delivered: BTreeSet<u32> = out.delivered.keys().copied().collect();
        prop_assert_eq!(&delivered, &out.accepted);
        // Every message is accounted for: accepted or counted as dropped.
        prop_assert_eq!(out.accepted.len() as u32 + out.rejected, s.gaps.len() as u32);
        prop_assert_eq!(out.dev_stats.rejected, out.rejected);
        prop_assert_eq!(out.dev_stats.dropped(), out.rejected);
        prop_assert_eq!(out.dev_stats.acked as usize, out.accepted.len());
        // An envelope adds at least 16 bytes to its payload: bigger than the MTU means the
        // message crossed in fragments.
        let needs_fragments = out
            .accepted
            .iter()
            .any(|id| s.sizes[*id as usize - 1] + 16 > usize::from(s.mtu));
        prop_assert!(!needs_fragments || out.fragments_sent > 0);
    }

    #[test]
    fn drop_oldest_never_loses_a_message_silently(s in scenario()) {
        let out = run(&s, OverflowPolicy::DropOldest);
        prop_assert!(out.converged);
        prop_assert!(out.delivered.values().all(|&n| n == 1));
        // Every accepted message was delivered or evicted, and every eviction was counted.
        for id in &out.accepted {
            prop_assert!(out.delivered.contains_key(id) || out.evicted.contains(id));
        }
        prop_assert!(out.delivered.keys().all(|id| out.accepted.contains(id)));
        prop_assert!(out.dev_stats.evicted as usize >= out.evicted.len());
        prop_assert_eq!(
            out.dev_stats.accepted,
            out.dev_stats.acked + out.dev_stats.evicted
        );
        prop_assert_eq!(out.accepted.len() as u32 + out.rejected, s.gaps.len() as u32);
        prop_assert_eq!(out.dev_stats.rejected, out.rejected);
    }
}
