//! The embedded default broker: an in-process [`rumqttd`] on a loopback port, so examples and
//! `cargo test --workspace` need nothing installed.
//!
//! It speaks MQTT 5 with shared subscriptions and keeps sessions in memory (a bridge must use
//! a clean session here: rumqttd 0.20's router panics when a kept session with a shared
//! subscription disconnects, see `BridgeConfig::session_expiry`). It enforces no
//! authentication and no ACLs: any client may publish on any device's topic. In this mode the
//! only identity check is the bridge's (an envelope must name the device of its topic), which
//! stops a device from speaking for another device in the payload but not from publishing
//! under another device's topic. Use it for one process and tests; put a broker with ACLs and
//! TLS client certificates in front of real devices (see the crate documentation).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::string::{String, ToString};
use std::thread;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No free loopback port could be reserved.
    #[error("no free loopback port: {0}")]
    Port(#[from] std::io::Error),
    /// The broker did not accept connections in time.
    #[error("embedded broker did not start listening on {0} in time")]
    NotListening(SocketAddr),
}

impl iot_core::error::Error for BrokerError {
    fn kind(&self) -> iot_core::error::ErrorKind {
        match self {
            Self::Port(_) => iot_core::error::ErrorKind::Transport,
            Self::NotListening(_) => iot_core::error::ErrorKind::Timeout,
        }
    }
}

/// Limits of the embedded broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest publish payload the broker accepts.
    pub max_payload_size: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1 messages per connection.
    pub max_inflight: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_payload_size: 256 * 1024,
            max_connections: 10_000,
            max_inflight: 100,
        }
    }
}

/// A running embedded broker. It runs on its own threads until the process exits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts a broker on a free loopback port with default limits.
    pub fn start() -> Result<Self, BrokerError> {
        Self::start_with(BrokerConfig::default())
    }

    /// Starts a broker on a free loopback port.
    pub fn start_with(config: BrokerConfig) -> Result<Self, BrokerError> {
        // rumqttd binds the address it is given and does not report a port chosen by the
        // system, so reserve a free one first.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], port)), config)
    }

    /// Starts a broker on `addr` and waits (at most 10 s) until it accepts connections.
    pub fn start_on(addr: SocketAddr, config: BrokerConfig) -> Result<Self, BrokerError> {
        let connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: config.max_payload_size,
            max_inflight_count: config.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = ServerSettings {
            name: "v5".to_string(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        };
        let router = RouterConfig {
            max_connections: config.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        };
        let mut v5: HashMap<String, ServerSettings> = HashMap::new();
        v5.insert("v5".to_string(), server);
        let broker_config = Config {
            id: 0,
            router,
            v5: Some(v5),
            ..Config::default()
        };
        thread::Builder::new()
            .name("iot-mqtt-broker".to_string())
            .spawn(move || {
                let mut broker = Broker::new(broker_config);
                // `start` runs until the process exits; an error leaves the port closed,
                // which `wait_listening` reports.
                let _ = broker.start();
            })?;
        wait_listening(addr, Duration::from_secs(10))?;
        Ok(Self { addr })
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Waits until `addr` accepts a TCP connection: at most `limit`, at most 1,000 tries.
fn wait_listening(addr: SocketAddr, limit: Duration) -> Result<(), BrokerError> {
    let start = Instant::now();
    for _ in 0..1000 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            break;
        }
        // A listener that is not up yet has no event to wait on.
        thread::sleep(Duration::from_millis(10));
    }
    Err(BrokerError::NotListening(addr))
}
