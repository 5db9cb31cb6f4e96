//! Crash safety: a writer process is killed with SIGKILL at random moments under load, 20
//! times; after each kill every write it acknowledged must be in the database, registered
//! devices must not register again, and the audit chain must verify.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iot_core::id::DeviceId;
use iot_store::{SqliteStore, Store};

const KILLS: u32 = 20;
const TIME_LIMIT: Duration = Duration::from_secs(180);

fn device(n: u32) -> DeviceId {
    let b = n.to_be_bytes();
    DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
}

struct Ack {
    registration: bool,
    device: u32,
    version: u64,
    seq: u64,
}

fn parse(line: &str) -> Ack {
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "malformed line {line:?}");
    Ack {
        registration: fields[0] == "reg",
        device: fields[1].parse().unwrap(),
        version: fields[2].parse().unwrap(),
        seq: fields[3].parse().unwrap(),
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let writer = env!("CARGO_BIN_EXE_iot-store-crash-writer");
    // Kill moments vary from run to run; a failure prints the seed.
    let mut rng = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64)
        | 1;
    let seed = rng;
    let started = Instant::now();
    let mut latest: HashMap<u32, u64> = HashMap::new();
    let mut acks_total = 0usize;
    let mut kills_with_acks = 0u32;

    for round in 0..KILLS {
        assert!(
            started.elapsed() < TIME_LIMIT,
            "crash test over its time limit"
        );
        let mut child = Command::new(writer)
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: it was never fully acknowledged.
                if line.ends_with('\n') && lines_tx.send(line.trim_end().to_owned()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let mut lines = Vec::new();
        // Even rounds kill at a random moment after the start (opening and recovery included),
        // odd rounds at a random moment after the first acknowledgement (under load).
        if round % 2 == 1 {
            let first = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("round {round}: no acknowledgement: {e}"));
            lines.push(first);
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 300));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(lines_rx.try_iter());
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
            }
            assert_eq!(
                status.signal(),
                Some(9),
                "round {round} (seed {seed}): writer ended on its own: {status} {stderr}"
            );
        }
        #[cfg(not(unix))]
        let _ = status;

        let acks: Vec<Ack> = lines.iter().map(|l| parse(l)).collect();
        if !acks.is_empty() {
            kills_with_acks += 1;
        }
        acks_total += acks.len();

        let mut store = SqliteStore::open(&path)
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopen failed: {e}"));
        for ack in &acks {
            if ack.registration {
                assert!(
                    !latest.contains_key(&ack.device),
                    "round {round} (seed {seed}): device {} registered again",
                    ack.device
                );
            }
            let known = latest.entry(ack.device).or_insert(0);
            *known = (*known).max(ack.version);
            // The acknowledged audit entry is there, with this write's content.
            let entry = store.audit_range(ack.seq, 1).unwrap();
            assert_eq!(
                entry.len(),
                1,
                "round {round} (seed {seed}): audit {} lost",
                ack.seq
            );
            assert_eq!(entry[0].seq, ack.seq);
            assert_eq!(entry[0].event.device, Some(device(ack.device)));
            assert_eq!(entry[0].event.payload, ack.version.to_be_bytes());
        }
        for (&n, &version) in &latest {
            let record = store.device(&device(n)).unwrap();
            assert!(
                record.is_some(),
                "round {round} (seed {seed}): device {n} lost"
            );
            let shadow = store
                .shadow(&device(n), "")
                .unwrap()
                .unwrap_or_else(|| panic!("round {round} (seed {seed}): shadow of {n} lost"));
            // Later writes may have become durable without their acknowledgement being seen.
            assert!(
                shadow.version >= version,
                "round {round} (seed {seed}): device {n} at {} < acknowledged {version}",
                shadow.version
            );
        }
        store
            .verify_audit()
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
    }
    assert!(acks_total > 0, "the writer never acknowledged anything");
    assert!(
        kills_with_acks >= KILLS / 2,
        "only {kills_with_acks} of {KILLS} rounds acknowledged writes before the kill"
    );
}
