//! Load generator for crash-safety tests: writes to a SQLite store through group commit and
//! prints one line per *acknowledged* (durable) write, so a test can kill it at any moment and
//! check that everything it printed survived.
//!
//! Usage: `iot-store-crash-writer DB_PATH`. Devices `0..200` are split among 8 callers. A device
//! with no record is registered (device record, first shadow, audit entry in one atomic batch);
//! a registered device gets a shadow update and an audit entry. After each durable batch it
//! prints `reg DEVICE VERSION SEQ` or `upd DEVICE VERSION SEQ`. It stops by itself after 20 s.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iot_core::id::{DeviceId, TenantId};
use iot_store::audit::AuditEvent;
use iot_store::{
    Batch, DeviceRecord, GroupCommit, GroupCommitConfig, Op, OpOutcome, Shadow, ShadowExpect,
    SqliteStore, Store, StoreError,
};

const DEVICES: u32 = 200;
const CALLERS: u32 = 8;
const RUN_FOR: Duration = Duration::from_secs(20);

fn device(n: u32) -> DeviceId {
    let b = n.to_be_bytes();
    DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
}

fn caller(
    handle: &iot_store::GroupCommitHandle,
    mut versions: Vec<(u32, Option<u64>)>,
    tenant: TenantId,
    out: &Mutex<std::io::Stdout>,
    started: Instant,
) -> Result<(), StoreError> {
    let mut i = 0usize;
    let len = versions.len().max(1);
    while started.elapsed() < RUN_FOR {
        let Some((n, version)) = versions.get_mut(i.checked_rem(len).unwrap_or(0)) else {
            return Ok(());
        };
        i = i.wrapping_add(1);
        let id = device(*n);
        let next = version.map_or(1, |v| v.saturating_add(1));
        let (kind, mut ops) = match version {
            None => (
                "reg",
                vec![
                    Op::PutDevice(DeviceRecord {
                        id,
                        tenant,
                        state: 2,
                        firmware_version: 1,
                        credential: vec![0x11; 32],
                        revoked: false,
                        updated_at_ms: 0,
                    }),
                    Op::PutShadow {
                        shadow: Shadow {
                            device: id,
                            name: String::new(),
                            version: next,
                            document: next.to_be_bytes().to_vec(),
                        },
                        expected: ShadowExpect::Absent,
                    },
                ],
            ),
            Some(v) => (
                "upd",
                vec![Op::PutShadow {
                    shadow: Shadow {
                        device: id,
                        name: String::new(),
                        version: next,
                        document: next.to_be_bytes().to_vec(),
                    },
                    expected: ShadowExpect::Version(*v),
                }],
            ),
        };
        ops.push(Op::Audit(AuditEvent {
            at_ms: next,
            tenant,
            device: Some(id),
            action: u16::from(version.is_none()),
            payload: next.to_be_bytes().to_vec(),
        }));
        let outcome = handle.commit(Batch::atomic(ops))?.into_result()?;
        let Some(OpOutcome::Appended { seq, .. }) = outcome.ops.last() else {
            return Err(StoreError::Backend("audit entry not appended".into()));
        };
        *version = Some(next);
        let mut stdout = out.lock().map_err(|_| StoreError::Closed)?;
        writeln!(stdout, "{kind} {n} {next} {seq}")
            .and_then(|()| stdout.flush())
            .map_err(|_| StoreError::Closed)?;
    }
    Ok(())
}

fn run(path: &str) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut store = SqliteStore::open(path)?;
    let tenant = TenantId::new("crash").map_err(|_| StoreError::InvalidInput("tenant"))?;
    // Learn where every device stands: registered devices carry on, others register.
    let mut per_caller: Vec<Vec<(u32, Option<u64>)>> = vec![Vec::new(); CALLERS as usize];
    for n in 0..DEVICES {
        let version = match store.device(&device(n))? {
            Some(_) => store.shadow(&device(n), "")?.map(|s| s.version),
            None => None,
        };
        if let Some(list) = per_caller.get_mut((n % CALLERS) as usize) {
            list.push((n, version));
        }
    }
    let group = GroupCommit::spawn(Box::new(store), GroupCommitConfig::default())?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = per_caller
        .into_iter()
        .map(|versions| {
            let handle = group.handle();
            let out = Arc::clone(&out);
            std::thread::spawn(move || caller(&handle, versions, tenant, &out, started))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| StoreError::Backend("caller panicked".into()))??;
    }
    group.shutdown().map(drop)
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: iot-store-crash-writer DB_PATH");
        return ExitCode::from(2);
    };
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iot-store-crash-writer: {e}");
            ExitCode::FAILURE
        }
    }
}
