//! The backend side: a bridge from a broker to an envelope handler, on [`rumqttc`] (MQTT 5).
//!
//! The bridge subscribes to every device's up topic through the shared subscription
//! `$share/{group}/iot/+/up`: every backend process started with the same group gets a share of
//! the fleet's messages, each message going to one of them. For each message it
//!
//! 1. parses the topic and takes the device identity from it (the broker authenticated the
//!    publisher for that topic, see below);
//! 2. refuses, counts and acknowledges (so the broker does not redeliver it) a payload larger
//!    than [`BridgeConfig::max_envelope`], a payload that is not an envelope, and an envelope
//!    whose device differs from the topic's;
//! 3. drops repeats of a message id the device already delivered (QoS 1 redelivery, device
//!    republishing after a reconnect), per bridge process;
//! 4. hands `(device, envelope)` to the [`EnvelopeHandler`], publishes the replies it returns
//!    on each reply's device's down topic (QoS 1), and only then acknowledges the message to
//!    the broker: a message the handler has not finished is redelivered after a crash.
//!
//! # What each deployment mode enforces
//!
//! | | broker with ACLs and TLS client certificates (Mosquitto: `require_certificate`, `use_identity_as_username`, `pattern` ACLs) | embedded broker ([`crate::broker`]) |
//! |---|---|---|
//! | who may connect as device `d` | only the holder of a certificate for `d` issued by the fleet CA | anyone who can reach the loopback port |
//! | publishing on `iot/d/up` | only `d` (`pattern write iot/%u/up`); others are refused by the broker | anyone |
//! | reading `iot/d/down` | only `d` (`pattern read iot/%u/down`) and nobody else | anyone |
//! | an envelope naming `e` on `iot/d/up` | refused by the bridge (counted in [`BridgeCounts::refused_identity`]) | refused by the bridge, likewise |
//! | garbage or oversized payloads | refused by the bridge, counted; the broker's `max_packet_size` bounds what reaches it | refused by the bridge, counted; the broker's payload limit bounds it |
//! | device messages while no bridge is connected | queued for the bridge's kept session ([`BridgeConfig::session_expiry`]) | lost (clean sessions only on rumqttd 0.20) |
//! | confidentiality on the wire | TLS | none (loopback only) |
//!
//! The bridge's identity check is always on; it is what keeps a device from acting for another
//! through the payload. The topic identity is only as strong as the broker's ACLs: without
//! them (embedded broker, or a broker without `pattern` lines) a client can publish under any
//! device's topic.
//!
//! # Mount point
//!
//! [`BridgeConfig::mount_point`] puts the whole layout under a prefix, as Mosquitto's listener
//! option `mount_point` does for its clients: `{mount}/iot/{device}/up` and
//! `{mount}/iot/{device}/down` ([`mounted_topic`]). Several fleets, or several test runs,
//! then share one broker without seeing each other's devices; every publisher of the fleet
//! (devices, gateways) uses the same prefix. Publishes outside it are refused and counted as
//! topic refusals.
//!
//! Deduplication is per process: after a bridge process dies, a message it did not acknowledge
//! can reach another member of the group, which delivers it again. A handler that needs
//! exactly-once across processes checks the message id against its store.

use std::boxed::Box;
use std::collections::HashMap;
use std::future::Future;
use std::string::{String, ToString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use std::vec::Vec;

use iot_core::id::DeviceId;
use iot_core::message::{OwnedEnvelope, QoS as EnvelopeQoS};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use crate::check::{Refusal, check_up};
use crate::dedup::RecentIds;
use crate::tls::{ClientTls, TlsError};
use crate::topic::{self, Topic, TopicBuf, TopicError};

/// Receives the envelopes devices send, and answers with envelopes to send back.
///
/// The device id is the one the topic (and so the broker) vouches for; the envelope's own
/// `device` field has been checked to match it.
pub trait EnvelopeHandler: Send + 'static {
    /// Handles one envelope from `device`; returns the envelopes to publish, each on the down
    /// topic of the device it names.
    fn handle(
        &mut self,
        device: DeviceId,
        envelope: OwnedEnvelope,
    ) -> impl Future<Output = Vec<OwnedEnvelope>> + Send;
}

/// Why the bridge could not start or send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The mount point is empty, longer than [`MOUNT_POINT_MAX_LEN`], has an empty level or
    /// a character outside `A-Z a-z 0-9 - _ /`.
    #[error("invalid mount point {0:?}")]
    MountPoint(String),
    /// The shared-subscription group name is invalid.
    #[error("invalid group: {0}")]
    Group(#[from] TopicError),
    /// The MQTT client's request queue is closed or full.
    #[error("MQTT client request failed: {0}")]
    Client(Box<rumqttc::v5::ClientError>),
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// An envelope could not be encoded.
    #[error("envelope could not be encoded: {0}")]
    Encode(#[from] iot_core::codec::EncodeError),
}

impl From<rumqttc::v5::ClientError> for BridgeError {
    fn from(e: rumqttc::v5::ClientError) -> Self {
        Self::Client(Box::new(e))
    }
}

impl iot_core::error::Error for BridgeError {
    fn kind(&self) -> iot_core::error::ErrorKind {
        match self {
            Self::Group(e) => iot_core::error::Error::kind(e),
            Self::MountPoint(_) => iot_core::error::ErrorKind::InvalidInput,
            Self::Client(_) => iot_core::error::ErrorKind::Transport,
            Self::Tls(e) => iot_core::error::Error::kind(e),
            Self::Encode(_) => iot_core::error::ErrorKind::Encode,
        }
    }
}

/// How the bridge connects and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; unique per bridge process.
    pub client_id: String,
    /// Shared-subscription group; processes with the same group split the fleet.
    pub group: String,
    /// A prefix for every topic of the layout (see the [module documentation](self#mount-point));
    /// `None` (the default) for the layout as documented in [`crate::topic`].
    pub mount_point: Option<String>,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS with a client certificate; `None` for plain TCP (loopback only).
    pub tls: Option<ClientTls>,
    /// Largest envelope accepted, in bytes; larger payloads are refused and counted.
    pub max_envelope: usize,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// How long the broker keeps this bridge's session (its shared subscription and the QoS 1
    /// messages queued for it) while the bridge is away, in seconds; `None` (the default) for
    /// a clean session that ends with the connection.
    ///
    /// With `None`, a device's message that the broker acknowledged while no member of the
    /// group was connected is lost. Set it with Mosquitto (tested) or another broker that
    /// queues for offline shared subscribers. Not with the embedded rumqttd 0.20: its router
    /// panics when a kept session with a shared subscription disconnects.
    pub session_expiry: Option<u32>,
    /// Reconnect delay after a connection error (doubled up to 32 times this).
    pub reconnect_delay: Duration,
}

/// The longest [`BridgeConfig::mount_point`].
pub const MOUNT_POINT_MAX_LEN: usize = 64;

/// Checks a mount point: 1 to [`MOUNT_POINT_MAX_LEN`] bytes of `A-Z a-z 0-9 - _`, in levels
/// separated by `/`, none of them empty (so no wildcard, no `$` namespace, no leading or
/// trailing separator).
pub fn check_mount_point(mount: &str) -> Result<(), BridgeError> {
    let ok = mount.len() <= MOUNT_POINT_MAX_LEN
        && mount.split('/').all(|level| {
            !level.is_empty()
                && level
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(BridgeError::MountPoint(mount.to_string()))
    }
}

/// The name of `topic` under `mount_point`: `{mount_point}/{topic}`, or the topic itself.
pub fn mounted_topic(mount_point: Option<&str>, topic: Topic) -> String {
    let topic = TopicBuf::new(topic);
    match mount_point {
        Some(mount) => std::format!("{mount}/{}", topic.as_str()),
        None => topic.as_str().to_string(),
    }
}

/// `name` without the mount point, or `None` when it is not under it.
fn unmounted<'a>(mount_point: Option<&str>, name: &'a [u8]) -> Option<&'a [u8]> {
    match mount_point {
        None => Some(name),
        Some(mount) => name
            .strip_prefix(mount.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"/")),
    }
}

/// Recent message ids remembered per device for deduplication.
pub const DEDUP_WINDOW: usize = 256;

impl BridgeConfig {
    /// Defaults for a broker at `host:port`: group `backend`, 4 KiB envelopes, 30 s keepalive.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            client_id: client_id.into(),
            group: "backend".to_string(),
            mount_point: None,
            credentials: None,
            tls: None,
            max_envelope: 4096,
            keepalive: Duration::from_secs(30),
            session_expiry: None,
            reconnect_delay: Duration::from_millis(100),
        }
    }
}

/// A snapshot of the bridge's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeCounts {
    /// Publishes received from the broker.
    pub received: u64,
    /// Envelopes handed to the handler.
    pub delivered: u64,
    /// Repeats dropped by message id.
    pub duplicates: u64,
    /// Envelopes whose device differs from the topic's.
    pub refused_identity: u64,
    /// Payloads that are not envelopes.
    pub refused_garbage: u64,
    /// Payloads larger than [`BridgeConfig::max_envelope`].
    pub refused_oversized: u64,
    /// Publishes on a topic that is not a device's up topic.
    pub refused_topic: u64,
    /// Replies published to devices.
    pub replies: u64,
    /// Replies the MQTT client could not take (request queue closed or full).
    pub reply_failures: u64,
    /// Connections established (CONNACK received).
    pub connects: u64,
    /// Connection errors.
    pub connection_errors: u64,
}

#[derive(Debug)]
struct Counters {
    /// Ticks on every counter change, for [`Bridge::wait_until`].
    changed: tokio::sync::watch::Sender<()>,
    received: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    refused_identity: AtomicU64,
    refused_garbage: AtomicU64,
    refused_oversized: AtomicU64,
    refused_topic: AtomicU64,
    replies: AtomicU64,
    reply_failures: AtomicU64,
    connects: AtomicU64,
    connection_errors: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            changed: tokio::sync::watch::Sender::new(()),
            received: AtomicU64::default(),
            delivered: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            refused_identity: AtomicU64::default(),
            refused_garbage: AtomicU64::default(),
            refused_oversized: AtomicU64::default(),
            refused_topic: AtomicU64::default(),
            replies: AtomicU64::default(),
            reply_failures: AtomicU64::default(),
            connects: AtomicU64::default(),
            connection_errors: AtomicU64::default(),
        }
    }
}

impl Counters {
    fn inc(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }
}

impl Counters {
    fn snapshot(&self) -> BridgeCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeCounts {
            received: get(&self.received),
            delivered: get(&self.delivered),
            duplicates: get(&self.duplicates),
            refused_identity: get(&self.refused_identity),
            refused_garbage: get(&self.refused_garbage),
            refused_oversized: get(&self.refused_oversized),
            refused_topic: get(&self.refused_topic),
            replies: get(&self.replies),
            reply_failures: get(&self.reply_failures),
            connects: get(&self.connects),
            connection_errors: get(&self.connection_errors),
        }
    }
}

/// Sends envelopes to devices on their down topics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Downlink {
    client: AsyncClient,
    counters: Arc<Counters>,
    mount_point: Option<Arc<str>>,
}

impl Downlink {
    /// Publishes `envelope` on the down topic of the device it names, with MQTT QoS 1 unless
    /// the envelope asks for at-most-once.
    pub async fn send(&self, envelope: &OwnedEnvelope) -> Result<(), BridgeError> {
        let bytes = envelope.to_vec()?;
        let topic = mounted_topic(self.mount_point.as_deref(), Topic::down(envelope.device));
        let qos = match envelope.qos {
            EnvelopeQoS::AtMostOnce => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        self.client.publish(topic, qos, false, bytes).await?;
        self.counters.inc(&self.counters.replies);
        Ok(())
    }
}

/// A running bridge: two tokio tasks (the MQTT event loop and the handler).
#[derive(Debug)]
pub struct Bridge {
    client: AsyncClient,
    counters: Arc<Counters>,
    mount_point: Option<Arc<str>>,
    tasks: [JoinHandle<()>; 2],
}

impl Bridge {
    /// Connects to the broker and starts serving `handler`. Must run inside a tokio runtime.
    pub fn spawn<H: EnvelopeHandler>(
        config: BridgeConfig,
        handler: H,
    ) -> Result<Self, BridgeError> {
        let shared = topic::shared_up_filter(&config.group)?;
        let filter = match &config.mount_point {
            Some(mount) => {
                check_mount_point(mount)?;
                std::format!("$share/{}/{mount}/{}", config.group, topic::UP_FILTER)
            }
            None => shared.as_str().to_string(),
        };
        let mount_point: Option<Arc<str>> = config.mount_point.as_deref().map(Arc::from);
        let mut options =
            MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        options.set_keep_alive(config.keepalive);
        // Resume the kept session after a reconnect; the subscription is renewed anyway.
        options.set_clean_start(config.session_expiry.is_none());
        options.set_session_expiry_interval(config.session_expiry);
        options.set_manual_acks(true);
        // rumqttc leaves Nagle on: a reply and the PUBACK that follows it would wait for the
        // broker's delayed ACK (~40 ms per round trip, measured by the sessions bench).
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        // Tell the broker the largest packet we take; it drops larger ones instead of
        // breaking the connection. Up to that size the bridge counts oversized payloads.
        let limit = config
            .max_envelope
            .saturating_mul(4)
            .saturating_add(1024)
            .min(u32::MAX as usize);
        options.set_max_packet_size(u32::try_from(limit).ok());
        if let Some((user, password)) = &config.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &config.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.rustls_config()?),
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(1024);
        let event_task = tokio::spawn(run_event_loop(
            eventloop,
            client.clone(),
            filter,
            tx,
            counters.clone(),
            config.reconnect_delay,
        ));
        let handler_task = tokio::spawn(run_handler(
            rx,
            handler,
            Downlink {
                client: client.clone(),
                counters: counters.clone(),
                mount_point: mount_point.clone(),
            },
            config.max_envelope,
        ));
        Ok(Self {
            client,
            counters,
            mount_point,
            tasks: [event_task, handler_task],
        })
    }

    /// A handle for sending envelopes to devices.
    pub fn downlink(&self) -> Downlink {
        Downlink {
            client: self.client.clone(),
            counters: self.counters.clone(),
            mount_point: self.mount_point.clone(),
        }
    }

    /// The counters.
    pub fn counts(&self) -> BridgeCounts {
        self.counters.snapshot()
    }

    /// Waits until the counters satisfy `done` and returns them. Never returns if they never
    /// do: bound it with a timeout.
    pub async fn wait_until(&self, mut done: impl FnMut(&BridgeCounts) -> bool) -> BridgeCounts {
        // Subscribed before reading, so no change between the two is missed.
        let mut changes = self.counters.changed.subscribe();
        loop {
            let counts = self.counts();
            if done(&counts) {
                return counts;
            }
            if changes.changed().await.is_err() {
                return self.counts();
            }
        }
    }

    /// Disconnects and stops both tasks; returns the counters as they stand once nothing
    /// more can change them.
    pub async fn shutdown(self) -> BridgeCounts {
        let _ = self.client.disconnect().await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        self.counters.snapshot()
    }
}

async fn run_event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    to_handler: mpsc::Sender<Publish>,
    counters: Arc<Counters>,
    reconnect_delay: Duration,
) {
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                counters.inc(&counters.connects);
                // Subscribe on every connection: a clean session starts without it.
                if client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .is_err()
                {
                    counters.inc(&counters.connection_errors);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                counters.inc(&counters.received);
                if to_handler.send(publish).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => {
                counters.inc(&counters.connection_errors);
                failures = failures.saturating_add(1);
                let factor = 1u32.checked_shl(failures.min(5)).unwrap_or(32);
                tokio::time::sleep(reconnect_delay.saturating_mul(factor)).await;
            }
        }
    }
}

async fn run_handler<H: EnvelopeHandler>(
    mut from_loop: mpsc::Receiver<Publish>,
    mut handler: H,
    downlink: Downlink,
    max_envelope: usize,
) {
    let counters = downlink.counters.clone();
    let mut seen: HashMap<DeviceId, RecentIds<DEDUP_WINDOW>> = HashMap::new();
    while let Some(publish) = from_loop.recv().await {
        match check(&publish, downlink.mount_point.as_deref(), max_envelope) {
            Err(refusal) => counters.inc(refusal.counter(&counters)),
            Ok((device, envelope)) => {
                let window = seen.entry(device).or_default();
                if window.first_time(envelope.id) {
                    counters.inc(&counters.delivered);
                    for reply in handler.handle(device, envelope).await {
                        // A reply that cannot be sent now is counted and the handler's to
                        // retry; the device's message is still acknowledged (the handler
                        // has it).
                        if downlink.send(&reply).await.is_err() {
                            counters.inc(&counters.reply_failures);
                        }
                    }
                } else {
                    counters.inc(&counters.duplicates);
                }
            }
        }
        // Acknowledge only now: an unhandled message is redelivered after a crash.
        let _ = downlink.client.ack(&publish).await;
    }
}

impl Refusal {
    fn counter<'c>(&self, counters: &'c Counters) -> &'c AtomicU64 {
        match self {
            Self::Topic(_) => &counters.refused_topic,
            Self::Oversized { .. } => &counters.refused_oversized,
            Self::Garbage => &counters.refused_garbage,
            Self::Identity { .. } => &counters.refused_identity,
        }
    }
}

fn check(
    publish: &Publish,
    mount_point: Option<&str>,
    max_envelope: usize,
) -> Result<(DeviceId, OwnedEnvelope), Refusal> {
    let topic =
        unmounted(mount_point, &publish.topic).ok_or(Refusal::Topic(TopicError::WrongPrefix))?;
    check_up(topic, &publish.payload, max_envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_nest_the_layout_and_refuse_wildcards() {
        for good in ["run-1", "ci/qemu_7", &"m".repeat(MOUNT_POINT_MAX_LEN)] {
            assert!(check_mount_point(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/+",
            "#",
            "$SYS",
            "a b",
            &"m".repeat(MOUNT_POINT_MAX_LEN + 1),
        ] {
            assert!(
                matches!(check_mount_point(bad), Err(BridgeError::MountPoint(m)) if m == bad),
                "{bad:?}"
            );
        }
        let device = DeviceId::new("d-1").unwrap();
        assert_eq!(
            mounted_topic(Some("ci/7"), Topic::down(device)),
            "ci/7/iot/d-1/down"
        );
        assert_eq!(mounted_topic(None, Topic::up(device)), "iot/d-1/up");
        assert_eq!(
            unmounted(Some("ci/7"), b"ci/7/iot/d-1/up"),
            Some(&b"iot/d-1/up"[..])
        );
        assert_eq!(unmounted(Some("ci/7"), b"ci/77/iot/d-1/up"), None);
        assert_eq!(unmounted(Some("ci/7"), b"iot/d-1/up"), None);
        assert_eq!(unmounted(None, b"iot/d-1/up"), Some(&b"iot/d-1/up"[..]));
    }
}
