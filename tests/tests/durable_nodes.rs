//! Several backend nodes sharing one fleet in one PostgreSQL database
//! ([`DurableServer::open_shared`]): each node's fleet is a cache, a node whose copy is stale
//! is refused by the database's compare-and-swap, reads the records again and serves the
//! message when the device sends it again; no acknowledged update is lost.
//!
//! Built only with `--features postgres-tests` (run by `.ci/steps/store.sh`); it needs the
//! PostgreSQL server at `IOT_TESTS_PG_ADDR` (default `127.0.0.1:5432`, user `postgres`,
//! database `test`) and fails when it is absent. Each test works in a schema of its own and
//! drops it at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

#[path = "support/pg.rs"]
mod pg;

use iot_fleet::durable::{DurableError, DurableServer};
use iot_fleet::{Handled, ServerError};
use iot_lifecycle::registration::DecommissionReason;
use iot_shadow::{Path, Section, Value};
use iot_store::{PgConfig, PgStore, Store};
use iot_tests::wire_devices::{
    Uplinked, admin, enroll, exchange, fresh_server, group_config, id, update_field,
};
use pg::{Schema, upstream};

const T0: u64 = 1_000_000;

fn store(schema: &Schema) -> PgStore {
    PgStore::connect(PgConfig::new(Schema::connection(None), schema.0.clone()))
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", upstream()))
}

/// One backend node: a writer and a reader connection to the shared schema.
fn node(schema: &Schema) -> DurableServer {
    DurableServer::open_shared(
        Box::new(store(schema)),
        Box::new(store(schema)),
        fresh_server(),
        group_config(),
    )
    .unwrap()
}

/// Sends one device message to `node` until it is acknowledged, as a device does when no
/// reply came (a conflict is answered with nothing); returns the result and how many
/// conflicts it met.
fn send_until_kept(
    node: &mut DurableServer,
    message: &Uplinked,
    now: u64,
) -> (Result<Handled, DurableError>, u32) {
    for conflicts in 0..50 {
        let result = exchange(node, std::slice::from_ref(message), now)
            .pop()
            .unwrap();
        if result != Err(DurableError::Conflict) {
            return (result, conflicts);
        }
    }
    panic!("device {} never served after 50 conflicts", message.0);
}

fn stored_field(reader: &DurableServer, device: u32, field: &str) -> Option<i64> {
    match reader.reported(&admin(), &id(device), field) {
        Some(Value::Int(v)) => Some(v),
        _ => None,
    }
}

/// A node whose copy is stale is refused, reads the records again, and serves the message
/// sent again from the fresh copy: shadows, operator writes and decommissioning.
#[test]
fn a_stale_node_is_refused_reads_again_and_serves_the_resent_message() {
    let schema = Schema::unique("iot_nodes_stale");
    let mut a = node(&schema);
    enroll(&mut a, 0..3, T0).unwrap();
    let mut b = node(&schema);

    // b has not served device 0 yet: it reads it first and serves at once.
    let (r, conflicts) = send_until_kept(&mut a, &update_field(0, "temp", 1, T0 + 10), T0 + 10);
    r.unwrap();
    assert_eq!(conflicts, 0);
    let (r, conflicts) = send_until_kept(&mut b, &update_field(0, "temp", 2, T0 + 20), T0 + 20);
    r.unwrap();
    assert_eq!(conflicts, 0);

    // a's shadow copy is now behind b's write: refused, read again, served on resend.
    let third = update_field(0, "temp", 3, T0 + 30);
    let first_try = exchange(&mut a, std::slice::from_ref(&third), T0 + 30);
    assert_eq!(first_try, vec![Err(DurableError::Conflict)]);
    assert!(!a.is_stopped(), "a shared node goes on after a conflict");
    exchange(&mut a, std::slice::from_ref(&third), T0 + 31)
        .pop()
        .unwrap()
        .unwrap();

    // An operator write on the stale node b: refused, then kept on the second try.
    let desired = |node: &mut DurableServer, v: i64| {
        node.set_desired(&admin(), &id(0), "mode", Value::Int(v), T0 + 40)
    };
    assert_eq!(desired(&mut b, 7).unwrap_err(), DurableError::Conflict);
    desired(&mut b, 7).unwrap();

    // Device 1 is decommissioned through a; b, which served it while it was registered,
    // must not acknowledge its next message from the old copy.
    send_until_kept(&mut b, &update_field(1, "temp", 1, T0 + 50), T0 + 50)
        .0
        .unwrap();
    // a's copy of device 1 predates b's shadow write: refused once, read again, then kept.
    let decommission = |node: &mut DurableServer| {
        node.decommission(
            &admin(),
            &id(1),
            DecommissionReason::OperatorRequest,
            T0 + 60,
        )
    };
    assert_eq!(decommission(&mut a).unwrap_err(), DurableError::Conflict);
    decommission(&mut a).unwrap();
    let after = update_field(1, "temp", 2, T0 + 70);
    assert_eq!(
        exchange(&mut b, std::slice::from_ref(&after), T0 + 70),
        vec![Err(DurableError::Conflict)]
    );
    let refused = exchange(&mut b, std::slice::from_ref(&after), T0 + 71)
        .pop()
        .unwrap();
    assert!(
        matches!(refused, Err(DurableError::Server(ServerError::Fleet(_)))),
        "{refused:?}"
    );

    // What the store holds is every acknowledged write.
    let reader = iot_tests::wire_devices::open(Box::new(store(&schema))).unwrap();
    assert_eq!(stored_field(&reader, 0, "temp"), Some(3));
    let mode = Path::new("mode").unwrap();
    assert_eq!(
        reader
            .server()
            .fleet()
            .saved_shadow(&id(0))
            .and_then(|s| s.value(Section::Desired, &mode).cloned()),
        Some(Value::Int(7))
    );
    assert!(reader.server().fleet().device_record(&id(1)).is_none());
    assert!(reader.shutdown().unwrap().verify_audit().unwrap().seq > 0);
    for n in [a, b] {
        drop(n.shutdown().unwrap());
    }
}

/// `nodes` nodes serve the same devices at once; node `k` writes its own reported field of
/// every device in every round. Every acknowledged write must be in the store at the end
/// (a lost update would roll another node's field back), each one moved the shadow's version
/// by exactly one, and the audit trail is one chain.
fn nodes_racing_on_the_same_devices_lose_no_update(nodes: u32) {
    const DEVICES: u32 = 6;
    const ROUNDS: i64 = 20;
    let schema = Schema::unique(&format!("iot_nodes_race{nodes}"));
    let mut first = node(&schema);
    enroll(&mut first, 0..DEVICES, T0).unwrap();
    let mut servers = vec![first];
    servers.extend((1..nodes).map(|_| node(&schema)));
    let mut plain = store(&schema);
    let base: Vec<u64> = (0..DEVICES)
        .map(|i| plain.shadow(&id(i), "").unwrap().map_or(0, |s| s.version))
        .collect();

    let threads: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(k, mut server)| {
            std::thread::spawn(move || {
                let field = format!("n{k}");
                let mut conflicts = 0u32;
                for round in 1..=ROUNDS {
                    let now = T0 + 1_000 * round as u64 + k as u64;
                    for i in 0..DEVICES {
                        let (r, c) =
                            send_until_kept(&mut server, &update_field(i, &field, round, now), now);
                        r.unwrap_or_else(|e| panic!("node {k}, device {i}: {e}"));
                        conflicts += c;
                    }
                }
                drop(server.shutdown().unwrap());
                conflicts
            })
        })
        .collect();
    let conflicts: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // The nodes did race: stale copies were refused and served again.
    assert!(conflicts > 0, "no node ever met another node's write");

    let reader = iot_tests::wire_devices::open(Box::new(store(&schema))).unwrap();
    for i in 0..DEVICES {
        for k in 0..nodes {
            assert_eq!(
                stored_field(&reader, i, &format!("n{k}")),
                Some(ROUNDS),
                "device {i}, node {k}"
            );
        }
        let version = plain.shadow(&id(i), "").unwrap().unwrap().version;
        assert_eq!(
            version,
            base[i as usize] + u64::from(nodes) * ROUNDS as u64,
            "device {i}: one version per acknowledged update"
        );
    }
    assert!(plain.verify_audit().unwrap().seq > 0);
    drop(reader.shutdown().unwrap());
}

#[test]
fn two_nodes_racing_on_the_same_devices_lose_no_update() {
    nodes_racing_on_the_same_devices_lose_no_update(2);
}

#[test]
fn three_nodes_racing_on_the_same_devices_lose_no_update() {
    nodes_racing_on_the_same_devices_lose_no_update(3);
}

/// Once-only work under a lease: the offline sweep runs on the node holding the lease; the
/// holder dies without giving it up, the other node takes the work over once the lease ran
/// out, and every device is marked offline exactly once. The dead holder, had it only
/// stalled, is refused when it wakes up and keeps nothing.
#[test]
fn once_only_work_is_handed_over_after_the_lease_runs_out_and_done_once() {
    const DEVICES: u32 = 4;
    const TTL: u64 = 10_000;
    let schema = Schema::unique("iot_nodes_lease");
    let mut a = node(&schema);
    enroll(&mut a, 0..DEVICES, T0).unwrap();
    let mut b = node(&schema);

    // The devices go silent for ten minutes, far past the heartbeat timeout.
    let late = T0 + 600_000;
    let lease_a = a.claim("sweep", "node-a", late, TTL).unwrap().unwrap();
    assert_eq!(b.claim("sweep", "node-b", late + 1, TTL).unwrap(), None);
    let offline = a
        .once(&lease_a, &[], late, |s| s.fleet_mut().sweep(late))
        .unwrap();
    assert_eq!(offline.len(), DEVICES as usize);

    // Node a dies without giving the lease up: b waits for it to run out, then takes over.
    assert_eq!(
        b.claim("sweep", "node-b", late + TTL - 1, TTL).unwrap(),
        None
    );
    let now = late + TTL;
    let lease_b = b.claim("sweep", "node-b", now, TTL).unwrap().unwrap();
    assert!(lease_b.fence > lease_a.fence);
    // b's copies predate a's sweep: its first run is refused and reads them again; run
    // again, it finds nothing left to do.
    assert_eq!(
        b.once(&lease_b, &[], now, |s| s.fleet_mut().sweep(now))
            .unwrap_err(),
        DurableError::Conflict
    );
    let again = b
        .once(&lease_b, &[], now, |s| s.fleet_mut().sweep(now))
        .unwrap();
    assert!(again.is_empty(), "{again:?}");

    // Had a only stalled, its work under the old token is refused.
    assert_eq!(
        a.once(&lease_a, &[], now + 1, |s| s.fleet_mut().sweep(now + 1))
            .unwrap_err(),
        DurableError::Conflict
    );
    assert!(b.release(&lease_b).unwrap());
    assert!(!b.release(&lease_b).unwrap());

    let mut plain = store(&schema);
    let marked_offline = iot_fleet::durable::action_code(&iot_fleet::AuditAction::MarkedOffline);
    let head = plain.verify_audit().unwrap();
    let trail = plain.audit_range(1, 10_000).unwrap();
    assert_eq!(trail.len() as u64, head.seq);
    let offline_entries = trail
        .iter()
        .filter(|r| r.event.action == marked_offline)
        .count();
    assert_eq!(
        offline_entries, DEVICES as usize,
        "each device marked offline once"
    );
    for n in [a, b] {
        drop(n.shutdown().unwrap());
    }
}
