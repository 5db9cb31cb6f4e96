//! A durable fleet backend under load, for the crash test (`tests/durable_crash.rs` kills it
//! with SIGKILL at random moments and restarts it).
//!
//! `durable-crash-backend DB DEVICES`: opens (or creates) the SQLite state at `DB`, imports
//! `DEVICES` identities on first start, registers over the protocol every device the restored
//! fleet does not know yet, then sends shadow updates of random devices in bursts forever.
//! After each burst is durable it prints one line per acknowledged message and flushes:
//! `registered DEVICE` or `shadow DEVICE VERSION`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs
)]

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use iot_fleet::Handled;
use iot_fleet::durable::DurableServer;
use iot_store::{GroupCommitConfig, SqliteStore};
use iot_tests::wire_devices::{exchange, fresh_server, id, import, register_all, update};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .expect("usage: durable-crash-backend DB DEVICES");
    let devices: u32 = args.next().expect("DEVICES").parse().unwrap();
    let store = SqliteStore::open(&db).unwrap();
    let mut server = DurableServer::open_at(
        Box::new(store),
        fresh_server(),
        GroupCommitConfig::default(),
        now_ms(),
    )
    .unwrap();
    if server.server().fleet().saved_identity(&id(0)).is_none() {
        import(&mut server, 0..devices, now_ms()).unwrap();
    }
    let mut out = std::io::stdout().lock();

    // Register only the devices the restored fleet does not know.
    let missing: Vec<u32> = (0..devices)
        .filter(|i| server.server().fleet().device_record(&id(*i)).is_none())
        .collect();
    for chunk in missing.chunks(16) {
        register_all(&mut server, chunk, now_ms()).unwrap();
        for &i in chunk {
            writeln!(out, "registered {}", id(i)).unwrap();
        }
        out.flush().unwrap();
    }

    // Shadow updates of random devices, forever (until killed).
    let mut rng = now_ms() | 1;
    let mut value = now_ms() as i64;
    loop {
        let now = now_ms();
        let burst: Vec<_> = (0..32)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                value += 1;
                update((rng % u64::from(devices)) as u32, value, now)
            })
            .collect();
        let handled = exchange(&mut server, &burst, now);
        for ((i, _, _), h) in burst.iter().zip(handled) {
            assert!(matches!(h, Ok(Handled::Replies(_))));
            let version = server
                .server()
                .fleet()
                .device_shadow(&id(*i))
                .map_or(0, iot_shadow::Shadow::version);
            writeln!(out, "shadow {} {version}", id(*i)).unwrap();
        }
        out.flush().unwrap();
    }
}
