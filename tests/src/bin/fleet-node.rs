//! One backend node of a fleet shared by several nodes, for the scale-out test
//! (`tests/scale_out.rs` starts three and kills one with SIGKILL).
//!
//! `fleet-node PG_CONNECTION SCHEMA BROKER_HOST:PORT GROUP NODE_NAME`: opens the fleet in the
//! PostgreSQL schema `SCHEMA` as one of several nodes ([`DurableServer::open_shared`]: a writer
//! and a reader connection), serves it over MQTT through a [`Bridge`] in the shared-subscription
//! group `GROUP` (client id `NODE_NAME`, user `backend`), prints `ready NODE_NAME` once the
//! bridge is connected, then serves until it is killed or its standard input closes (the
//! process that started it is gone). Devices are configured with
//! [`iot_tests::fleet_node::device_config`]. On standard error it prints its counters every
//! few seconds when they changed, and with `IOT_FLEET_NODE_TRACE` set one line per shadow
//! update (device, message id, the kinds of the replies), for the log of a failing run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read as _, Write as _};
use std::time::Duration;

use iot_core::DeviceId;
use iot_core::message::OwnedEnvelope;
use iot_fleet::durable::DurableServer;
use iot_mqtt::bridge::{Bridge, BridgeConfig, EnvelopeHandler};
use iot_mqtt::fleet::FleetBackend;
use iot_store::{PgConfig, PgStore};
use iot_tests::fleet_node::server;
use iot_tests::wire_devices::group_config;

/// The node's handler: the durable backend, called off the runtime's cooperative scheduling
/// ([`tokio::task::block_in_place`]), since the PostgreSQL client it reads through blocks.
struct Node(FleetBackend<DurableServer>);

impl EnvelopeHandler for Node {
    async fn handle(&mut self, device: DeviceId, envelope: OwnedEnvelope) -> Vec<OwnedEnvelope> {
        let replies = tokio::task::block_in_place(|| self.0.handle_envelope(device, &envelope));
        if std::env::var_os("IOT_FLEET_NODE_TRACE").is_some()
            && envelope.kind == iot_core::MessageKind::ShadowUpdate
        {
            let kinds: Vec<_> = replies.iter().map(|r| r.kind).collect();
            eprintln!("trace {device} {:?} -> {kinds:?}", envelope.id);
        }
        replies
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [connection, schema, broker, group, name] = args.as_slice() else {
        panic!("usage: fleet-node PG_CONNECTION SCHEMA BROKER_HOST:PORT GROUP NODE_NAME");
    };
    let (host, port) = broker.rsplit_once(':').expect("BROKER_HOST:PORT");
    let port: u16 = port.parse().expect("broker port");
    let store =
        || Box::new(PgStore::connect(PgConfig::new(connection.clone(), schema.clone())).unwrap());
    let node = DurableServer::open_shared(store(), store(), server(), group_config()).unwrap();

    // The parent holds our standard input: when it goes away, so do we.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = FleetBackend::new(node);
        let mut config = BridgeConfig::new(host, port, name.clone());
        config.group = group.clone();
        config.credentials = Some(("backend".to_string(), String::new()));
        let bridge = Bridge::spawn(config, Node(backend.clone())).unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            bridge.wait_until(|c| c.connects > 0),
        )
        .await
        .expect("the bridge connected to the broker");
        // The subscription goes out right after CONNACK; give the broker a moment to take it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {name}").unwrap();
        out.flush().unwrap();
        drop(out);
        // What it did, on standard error every few seconds (for a failing run's log).
        let mut last = None;
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = (backend.counts(), bridge.counts());
            if last != Some(now) {
                eprintln!("{name}: {:?} {:?}", now.0, now.1);
                last = Some(now);
            }
        }
    });
}
