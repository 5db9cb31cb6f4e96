//! End-to-end through the embedded broker: a device session (over the tokio TCP adapter) and
//! the bridge exchange envelopes; connections drop in the middle; bad publishes are refused.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use iot_mqtt::broker::EmbeddedBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_bridge_exchange_envelopes_both_ways() {
    let broker = EmbeddedBroker::start().unwrap();
    common::exchange_both_ways(broker.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drops_lose_nothing_and_deliver_once() {
    let broker = EmbeddedBroker::start().unwrap();
    common::survives_connection_drops(broker.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_refuses_forged_garbage_and_oversized_publishes() {
    let broker = EmbeddedBroker::start().unwrap();
    common::bridge_refuses_bad_publishes(broker.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_messages_between_bridges() {
    let broker = EmbeddedBroker::start().unwrap();
    common::shared_subscription_splits_the_fleet(broker.addr()).await;
}

#[test]
fn embedded_broker_listens_on_a_loopback_ephemeral_port() {
    let broker = EmbeddedBroker::start().unwrap();
    assert!(broker.addr().ip().is_loopback());
    assert_ne!(broker.addr().port(), 1883);
    std::net::TcpStream::connect(broker.addr()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_point_confines_the_bridge_to_its_prefix() {
    let broker = EmbeddedBroker::start().unwrap();
    common::mount_point_confines_the_layout(broker.addr()).await;
}
