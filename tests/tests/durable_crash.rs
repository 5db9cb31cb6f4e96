//! Crash safety of the durable backend: a backend process under load (registrations, then
//! shadow updates in bursts) is killed with SIGKILL at random moments, 20 times, and
//! restarted on the same SQLite file. After every kill, everything it had acknowledged
//! (printed after the commit) is in the store and the audit chain verifies; devices that
//! were registered are never registered again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iot_core::DeviceId;
use iot_lifecycle::State;
use iot_store::{SqliteStore, Store};

const DEVICES: &str = "40";
const KILLS: u64 = 20;

#[test]
fn acknowledged_state_survives_sigkill_and_devices_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let mut registered: BTreeSet<String> = BTreeSet::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut shadow_acks = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for kill in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable-crash-backend"))
            .arg(&db)
            .arg(DEVICES)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(200 + rng % 400);
        let started = Instant::now();
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // It was still running: killed, not stopped by an error of its own.
        assert_eq!(
            status.signal(),
            Some(9),
            "backend exited on its own: {status}"
        );
        reader.join().unwrap();
        // Every line printed before the kill was acknowledged after its commit.
        let mut served = 0u64;
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["registered", device] => {
                    assert!(
                        registered.insert((*device).to_string()),
                        "{device} registered twice"
                    );
                }
                ["shadow", device, version] => {
                    let version: u64 = version.parse().unwrap();
                    let v = versions.entry((*device).to_string()).or_default();
                    *v = (*v).max(version);
                    shadow_acks += 1;
                    served += 1;
                }
                other => panic!("unexpected line {other:?} after kill {kill}"),
            }
        }

        // Restored devices carry on: the restarted backend served their updates.
        assert!(served > 0, "no shadow update served after restart {kill}");

        let mut store = SqliteStore::open(&db).unwrap();
        store.verify_audit().unwrap();
        for device in &registered {
            let record = store
                .device(&DeviceId::new(device).unwrap())
                .unwrap()
                .unwrap();
            assert_ne!(
                record.state,
                State::Unprovisioned.code(),
                "{device}'s acknowledged registration was lost at kill {kill}"
            );
        }
        for (device, version) in &versions {
            let stored = store
                .shadow(&DeviceId::new(device).unwrap(), "")
                .unwrap()
                .map_or(0, |s| s.version);
            assert!(
                stored >= *version,
                "{device}: acknowledged version {version}, stored {stored} at kill {kill}"
            );
        }
    }
    assert_eq!(registered.len(), 40, "every device registered exactly once");
    assert!(shadow_acks > 0, "the backend acknowledged shadow updates");
}
