//! Memory of the durable backend does not grow with uptime: a few thousand devices register
//! over the protocol and then send shadow updates round after round (each one a new
//! document version and a new audit entry, made durable in SQLite before it is
//! acknowledged). The live heap of the process after the first round and after many more
//! rounds is the same up to a small constant, because the audit trail lives in the store and
//! the binding keeps no per-message state.
//!
//! The allocator counts Rust allocations (`stats_alloc`); SQLite's own page cache is bounded
//! by its configuration and allocated outside it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_wrap,
    missing_docs
)]

use std::alloc::System;

use iot_fleet::Handled;
use iot_fleet::durable::DurableServer;
use iot_protocol::Downlink;
use iot_store::{GroupCommitConfig, SqliteStore};
use iot_tests::wire_devices::{enroll, exchange, fresh_server, update};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEVICES: u32 = 3_000;
const START: u64 = 1_000_000;

/// Every device sends one shadow update with a new value; all are acknowledged.
fn round(server: &mut DurableServer, round: u64) {
    let now = START + round * 1_000;
    for chunk in (0..DEVICES).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|&i| update(i, (round * 10_000 + u64::from(i)) as i64, now))
            .collect();
        for handled in exchange(server, &batch, now) {
            assert!(matches!(
                handled,
                Ok(Handled::Replies(ref r)) if matches!(r.as_slice(), [Downlink::Shadow(_)])
            ));
        }
    }
}

fn live_bytes(region: &Region<'_, System>) -> isize {
    let s = region.change();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

#[test]
fn memory_does_not_grow_with_uptime() {
    let dir = tempfile::tempdir().unwrap();
    let region = Region::new(GLOBAL);
    let store = SqliteStore::open(dir.path().join("fleet.db")).unwrap();
    let mut server = DurableServer::open(
        Box::new(store),
        fresh_server(),
        GroupCommitConfig::default(),
    )
    .unwrap();
    // Every device registers over the protocol: challenge, then the answer.
    enroll(&mut server, 0..DEVICES, START).unwrap();
    assert_eq!(server.server().fleet().registered_count(), DEVICES as usize);

    // Warm up: every device gets a shadow, every buffer reaches its working size.
    round(&mut server, 1);
    round(&mut server, 2);
    let warm = live_bytes(&region);
    let per_device = warm / DEVICES as isize;
    println!("live heap after registration and 2 rounds: {warm} B, {per_device} B per device");

    const ROUNDS: u64 = 20;
    for r in 3..3 + ROUNDS {
        round(&mut server, r);
    }
    let later = live_bytes(&region);
    let growth = later - warm;
    println!(
        "after {ROUNDS} more rounds ({} durable updates): live heap {later} B, growth {growth} B",
        ROUNDS * u64::from(DEVICES)
    );
    assert!(server.server().fleet().audit_log().is_empty());
    // An in-memory audit trail alone would add about 280 B per update (16 MB here); what
    // moves between rounds is a few buffers in flight (about 220 KB), not per-update state.
    assert!(
        growth.abs() < 512 * 1024,
        "live heap grew by {growth} B over {ROUNDS} rounds"
    );

    let mut store = server.shutdown().unwrap();
    let head = store.verify_audit().unwrap();
    // Registration entries plus one per update.
    assert!(head.seq >= (ROUNDS + 2) * u64::from(DEVICES));
}
