//! The async runner drives the agent over a simulated network through `ReliableEndpoint`s,
//! with a simulated backend on the other end: the pieces fit, and the cadence survives
//! real envelopes, acks and latency.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod agent_support;

use agent_support::*;
use embassy_futures::block_on;
use iot_agent::runner::{EndpointOutbound, Runner, Waiter};
use iot_core::{Clock, DeviceId, ManualClock, MessageKind, QoS};
use iot_lifecycle::State;
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::{BackoffPolicy, Jitter};
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};

const LATENCY_MS: u64 = 5;
type Net = SimNetwork<&'static ManualClock, 64, 600>;
type Ep =
    ReliableEndpoint<SimLink<'static, &'static ManualClock, 64, 600>, SplitMix64, 16, 512, 32>;

/// The backend side: while the device sleeps, time moves and the backend answers.
struct SimWaiter {
    clock: &'static ManualClock,
    net: &'static Net,
    endpoint: Ep,
    backend: Backend,
    /// (receive time, kind) of everything the backend got from the device.
    received: Vec<(u64, MessageKind)>,
    wakeups: u64,
}

impl SimWaiter {
    async fn serve(&mut self) {
        let now = self.clock.now_ms();
        let mut inbox = Vec::new();
        self.endpoint
            .poll(now, |env| inbox.push((env.kind, env.payload.to_vec())))
            .await
            .unwrap();
        for (kind, payload) in inbox {
            self.received.push((now, kind));
            for (reply, bytes) in self.backend.receive(now, kind, &payload) {
                self.endpoint
                    .enqueue(reply, QoS::AtLeastOnce, Priority::High, &bytes, now)
                    .unwrap();
            }
        }
        self.endpoint.poll(now, |_| {}).await.unwrap();
    }
}

impl Waiter for SimWaiter {
    fn now_ms(&mut self) -> u64 {
        self.clock.now_ms()
    }

    async fn wait(&mut self, deadline_ms: Option<u64>) {
        self.wakeups += 1;
        loop {
            self.serve().await;
            let now = self.clock.now_ms();
            let deadline = deadline_ms.unwrap_or(u64::MAX);
            if now >= deadline {
                return;
            }
            if self.net.in_flight() > 0 || !self.endpoint.outbox().is_empty() {
                // Something is on the wire: step by 1 ms so each side sees a datagram the
                // moment it arrives; the device may have mail.
                self.clock.advance(1);
                self.serve().await;
                return;
            }
            self.clock.advance_to(deadline);
        }
    }
}

#[test]
fn the_runner_registers_and_keeps_the_cadence_over_reliable_endpoints() {
    let clock: &'static ManualClock = Box::leak(Box::new(ManualClock::new(0)));
    let net: &'static Net = Box::leak(Box::new(SimNetwork::new(
        clock,
        SimConfig::ideal(LATENCY_MS),
        11,
    )));
    let (device_link, backend_link) = net.endpoints();
    // Retransmit after 100 ms: well beyond the 10 ms round trip, so no spurious duplicates.
    let retry = BackoffPolicy::new(100, 5_000).with_jitter(Jitter::None);
    let mut device_ep: Ep = ReliableEndpoint::new(
        device_link,
        device(),
        OverflowPolicy::DropOldest,
        retry,
        SplitMix64::new(1),
    );
    let backend_ep: Ep = ReliableEndpoint::new(
        backend_link,
        DeviceId::new("backend").unwrap(),
        OverflowPolicy::RejectNewest,
        retry,
        SplitMix64::new(2),
    );
    let mut waiter = SimWaiter {
        clock,
        net,
        endpoint: backend_ep,
        backend: Backend::default(),
        received: Vec::new(),
        wakeups: 0,
    };
    let mut agent = new_agent();
    let mut board = TestBoard::new(Box::new(varying));
    let mut runner: Runner<4, 512> = Runner::new();

    agent
        .start(clock.now_ms(), &mut EndpointOutbound::new(&mut device_ep))
        .unwrap();
    let hour = 3_600_000;
    block_on(runner.run_until(&mut agent, &mut device_ep, &mut board, &mut waiter, hour)).unwrap();

    assert_eq!(agent.state(), State::Active);
    assert!(waiter.backend.registered);
    assert_eq!(runner.dropped(), 0);
    assert_eq!(runner.refused(), 0);
    let at = |kind| -> Vec<u64> {
        waiter
            .received
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(t, _)| *t)
            .collect()
    };
    // Registration took two round trips; the duties then run from that moment.
    let registered_at = 4 * LATENCY_MS;
    for (kind, period) in [
        (MessageKind::HealthReport, 5_000),
        (MessageKind::Heartbeat, 10_000),
        (MessageKind::Telemetry, 30_000),
    ] {
        let times = at(kind);
        assert_eq!(times[0], registered_at + LATENCY_MS, "{kind:?}");
        assert!(all_spaced(&times, period), "{kind:?}: {:?}", gaps(&times));
        assert_eq!(
            times.len() as u64,
            (hour - registered_at) / period + 1,
            "{kind:?}"
        );
    }
    // The boot report converged the cloud shadow; every QoS 1 message was acknowledged.
    assert_eq!(
        waiter.backend.reported("lifecycle"),
        Some(iot_shadow::Value::Int(2))
    );
    assert!(device_ep.outbox().is_empty());
    assert_eq!(device_ep.stats().retransmissions, 0);
    // The device slept between deadlines and arrivals: a few wake-ups per message it
    // exchanged (this waiter steps 1 ms at a time while anything is on the wire), never
    // one per millisecond.
    let exchanged = waiter.received.len() as u64;
    assert!(
        waiter.wakeups < 4 * exchanged,
        "{} wake-ups for {exchanged}",
        waiter.wakeups
    );
    assert!(waiter.wakeups < hour / 500);
}
