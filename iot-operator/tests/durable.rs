//! The durable backend without a broker: a refused device message is counted by cause and
//! changes nothing in the SQLite store; an accepted operator action is in the store's audit
//! trail, which verifies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use iot_core::message::Envelope;
use iot_core::{DeviceId, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::durable::DurableServer;
use iot_fleet::{DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;
use iot_operator::durable::DurableBackend;
use iot_store::{GroupCommitConfig, SqliteStore};

#[test]
fn refusals_are_counted_by_cause_and_the_stored_trail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("fleet.db")).unwrap();
    let server = DeviceServer::with_os_rng(Fleet::default(), DeviceConfig::default(), NodeId(1));
    let mut durable =
        DurableServer::open(Box::new(store), server, GroupCommitConfig::default()).unwrap();
    let admin = Principal::new(
        "ops",
        TenantId::new("acme").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let known = DeviceId::new("known-1").unwrap();
    let record = ManufacturingRecord {
        device_id: known,
        secret: [9; 32],
        sku: "S".into(),
        serial: 1,
    };
    durable
        .import_manufacturing(&admin, &"site".parse().unwrap(), vec![record], 1_000)
        .unwrap();
    let backend = DurableBackend::new(durable);
    let (head_before, _) = backend.with_durable(|d| d.audit_tail(10)).unwrap();
    assert_eq!(head_before.seq, 1, "the import is audited in the store");

    let stranger = DeviceId::new("stranger-1").unwrap();
    let heartbeat = |device| Envelope {
        device,
        seq: 1,
        id: MessageId(1),
        qos: QoS::AtMostOnce,
        kind: MessageKind::Heartbeat,
        payload: Vec::new(),
    };
    // Unregistered devices are refused, before anything changes.
    assert!(
        backend
            .handle_envelope(stranger, &heartbeat(stranger))
            .is_empty()
    );
    assert!(backend.handle_envelope(known, &heartbeat(known)).is_empty());
    let causes = backend.refusals_by_cause();
    assert_eq!(causes.iter().map(|(_, n)| n).sum::<u64>(), 2, "{causes:?}");
    assert!(causes.iter().all(|(cause, _)| !cause.is_empty()));
    let (head_after, records) = backend.with_durable(|d| d.audit_tail(10)).unwrap();
    assert_eq!(head_after, head_before, "a refusal writes nothing");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].event.tenant.as_str(), "acme");
}
