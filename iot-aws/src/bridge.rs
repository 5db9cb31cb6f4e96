//! The MQTT binding (feature `bridge`): a [`ShadowService`] behind a broker, over rumqttc.
//!
//! The bridge subscribes to [`SUBSCRIPTION`] (`$aws/things/+/shadow/#`), answers every
//! request and publishes the answers. Its own answers (`.../accepted`, `.../update/delta`,
//! ...) match the subscription too and come back: they are recognised by their last topic
//! level and skipped. The run is bounded by a duration and a request count. A thing with
//! more than [`MAX_IN_FLIGHT`] requests whose answers the broker has not yet acknowledged
//! gets 429 (see [`InFlight`]).

use std::string::String;
use std::time::Duration;

use iot_core::{Error, ErrorKind};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::service::{InFlight, MAX_IN_FLIGHT, ShadowService};
use crate::topic::{SUBSCRIPTION, ShadowTopic};

/// Where to connect and for how long to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeOptions {
    /// Broker host (loopback in tests).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Serve at most this long.
    pub run_for: Duration,
    /// Serve at most this many requests.
    pub max_requests: u64,
}

impl BridgeOptions {
    /// Loopback at `port`, client id `iot-aws-bridge`, 10 minutes, a million requests.
    pub fn loopback(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            client_id: "iot-aws-bridge".into(),
            run_for: Duration::from_secs(600),
            max_requests: 1_000_000,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeStats {
    /// Requests answered.
    pub requests: u64,
    /// Messages published.
    pub publications: u64,
    /// Messages skipped: the bridge's own answers and topics that are not shadow requests.
    pub skipped: u64,
    /// Requests refused with 429: more than [`MAX_IN_FLIGHT`] of one thing were in flight.
    pub throttled: u64,
}

/// Why the bridge stopped before its time.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The connection to the broker failed.
    #[error("MQTT connection: {0}")]
    Connection(#[from] rumqttc::ConnectionError),
    /// The client could not queue a subscription or publication.
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
}

impl Error for BridgeError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Transport
    }
}

/// Largest MQTT packet accepted or sent: room for the 128 KiB request limit.
const MAX_PACKET: usize = 256 * 1024;
/// Publications queued between two polls of the event loop.
const QUEUE: usize = 1024;

/// Serves `service` through the broker until `options.run_for` passes or
/// `options.max_requests` requests are answered. `on_ready` runs once the subscription is
/// acknowledged, when requests can no longer be missed.
pub async fn run(
    service: &mut ShadowService,
    options: &BridgeOptions,
    on_ready: impl FnOnce(),
) -> Result<BridgeStats, BridgeError> {
    let mut mqtt = MqttOptions::new(
        options.client_id.clone(),
        options.host.clone(),
        options.port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    mqtt.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut events) = AsyncClient::new(mqtt, QUEUE);
    client.subscribe(SUBSCRIPTION, QoS::AtLeastOnce).await?;
    let deadline = tokio::time::Instant::now()
        .checked_add(options.run_for)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut ready = Some(on_ready);
    let mut stats = BridgeStats::default();
    let mut in_flight = InFlight::new(MAX_IN_FLIGHT);
    while stats.requests < options.max_requests {
        let Ok(event) = tokio::time::timeout_at(deadline, events.poll()).await else {
            break;
        };
        match event? {
            Event::Incoming(Packet::SubAck(_)) => {
                if let Some(f) = ready.take() {
                    f();
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let Ok(topic) = ShadowTopic::parse(&p.topic) else {
                    stats.skipped = stats.skipped.saturating_add(1);
                    continue;
                };
                if !topic.is_request() {
                    stats.skipped = stats.skipped.saturating_add(1);
                    continue;
                }
                let now_ms = iot_core::time::system_time_ms();
                if !in_flight.admit(topic.thing) {
                    // AWS's 429: the request is refused unserved, with its clientToken.
                    if let Ok(Some(answer)) =
                        service.too_many_requests(&p.topic, &p.payload, now_ms)
                    {
                        in_flight.queued(None);
                        client.try_publish(
                            answer.topic,
                            QoS::AtLeastOnce,
                            false,
                            answer.payload,
                        )?;
                        stats.publications = stats.publications.saturating_add(1);
                    }
                    stats.throttled = stats.throttled.saturating_add(1);
                    continue;
                }
                let answers = match service.handle(&p.topic, &p.payload, now_ms) {
                    Ok(answers) if !answers.is_empty() => answers,
                    outcome => {
                        in_flight.release(topic.thing);
                        if outcome.is_err() {
                            stats.skipped = stats.skipped.saturating_add(1);
                        }
                        continue;
                    }
                };
                stats.requests = stats.requests.saturating_add(1);
                for (i, a) in answers.into_iter().enumerate() {
                    in_flight.queued((i == 0).then_some(topic.thing));
                    client.try_publish(a.topic, QoS::AtLeastOnce, false, a.payload)?;
                    stats.publications = stats.publications.saturating_add(1);
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => in_flight.sent(pkid),
            Event::Incoming(Packet::PubAck(ack)) => in_flight.acked(ack.pkid),
            _ => {}
        }
    }
    Ok(stats)
}
