//! The conformance suite every `Store` implementation must pass, generic over a harness that
//! opens connections to one fresh database.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_core::id::{DeviceId, TenantId};
use iot_store::audit::{AuditEvent, GENESIS};
use iot_store::{
    Batch, BatchMode, Challenge, DeviceRecord, GroupCommit, GroupCommitConfig, Op, OpOutcome,
    OtaProgress, Rollout, Shadow, ShadowExpect, Store, StoreError, Tenant,
};

/// One fresh, empty database per test, and a way to reach behind the store's back.
pub(crate) trait Harness: Sized + Send + Sync + 'static {
    /// The store under test.
    type S: Store + Send + 'static;
    /// A fresh database (a new file, or a new schema).
    fn create() -> Self;
    /// Another connection to this test's database.
    fn open(&self) -> Self::S;
    /// Changes the stored payload of audit entry `seq` without going through the store.
    fn tamper_audit_payload(&self, seq: u64);
}

pub(crate) fn device(n: u32) -> DeviceId {
    let b = n.to_be_bytes();
    DeviceId::from_mac([0x24, 0x0a, b[0], b[1], b[2], b[3]])
}

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub(crate) fn record(n: u32, tenant_name: &str) -> DeviceRecord {
    DeviceRecord {
        id: device(n),
        tenant: tenant(tenant_name),
        state: 3,
        firmware_version: 0x0001_0200,
        credential: vec![n as u8; 32],
        revoked: false,
        updated_at_ms: 1_000 + u64::from(n),
    }
}

pub(crate) fn shadow(n: u32, name: &str, version: u64, doc: &[u8]) -> Shadow {
    Shadow {
        device: device(n),
        name: name.into(),
        version,
        document: doc.to_vec(),
    }
}

pub(crate) fn event(n: u64) -> AuditEvent {
    AuditEvent {
        at_ms: 10_000 + n,
        tenant: tenant("acme"),
        device: if n.is_multiple_of(2) {
            Some(device(n as u32))
        } else {
            None
        },
        action: (n % 7) as u16,
        payload: n.to_be_bytes().to_vec(),
    }
}

pub(crate) fn put_shadow(s: Shadow, expected: ShadowExpect) -> Op {
    Op::PutShadow {
        shadow: s,
        expected,
    }
}

pub(crate) fn tenants_and_paging<H: Harness>(h: &H) {
    let mut s = h.open();
    let ops = (0..25)
        .map(|i| {
            Op::PutTenant(Tenant {
                id: tenant(&format!("t{i:02}")),
                config: vec![i],
            })
        })
        .collect();
    s.apply(Batch::independent(ops)).unwrap();
    let first = s.tenants(None, 10).unwrap();
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].id, tenant("t00"));
    let rest = s.tenants(Some(&first[9].id), 100).unwrap();
    assert_eq!(rest.len(), 15);
    assert_eq!(rest[0].id, tenant("t10"));
    // Replacing keeps one row.
    s.apply(Batch::independent(vec![Op::PutTenant(Tenant {
        id: tenant("t03"),
        config: b"new".to_vec(),
    })]))
    .unwrap();
    assert_eq!(s.tenant(&tenant("t03")).unwrap().unwrap().config, b"new");
    assert_eq!(s.tenants(None, 1000).unwrap().len(), 25);
    assert_eq!(s.tenant(&tenant("none")).unwrap(), None);
}

pub(crate) fn devices_roundtrip_and_delete_wipes<H: Harness>(h: &H) {
    let mut s = h.open();
    let mut ops: Vec<Op> = (0..12).map(|i| Op::PutDevice(record(i, "acme"))).collect();
    ops.push(Op::PutDevice(record(100, "other")));
    s.apply(Batch::independent(ops)).unwrap();
    assert_eq!(s.device(&device(3)).unwrap(), Some(record(3, "acme")));
    let page = s.devices(&tenant("acme"), None, 5).unwrap();
    assert_eq!(page.len(), 5);
    let next = s.devices(&tenant("acme"), Some(&page[4].id), 100).unwrap();
    assert_eq!(next.len(), 7);
    assert!(next.iter().all(|d| d.tenant == tenant("acme")));
    assert!(next.iter().all(|d| d.id > page[4].id));

    let mut revoked = record(3, "acme");
    revoked.revoked = true;
    revoked.state = 6;
    s.apply(Batch::independent(vec![
        Op::PutDevice(revoked.clone()),
        put_shadow(shadow(3, "", 1, b"d"), ShadowExpect::Absent),
        Op::PutChallenge(Challenge {
            device: device(3),
            session: 9,
            nonce: vec![1; 16],
            expires_at_ms: 5,
        }),
        Op::PutOtaProgress(OtaProgress {
            rollout: 1,
            device: device(3),
            status: 1,
            detail: vec![],
            updated_at_ms: 1,
        }),
    ]))
    .unwrap();
    assert_eq!(s.device(&device(3)).unwrap(), Some(revoked));

    s.apply(Batch::independent(vec![Op::DeleteDevice(device(3))]))
        .unwrap();
    assert_eq!(s.device(&device(3)).unwrap(), None);
    assert_eq!(s.shadow(&device(3), "").unwrap(), None);
    assert_eq!(s.challenge(&device(3)).unwrap(), None);
    assert!(s.ota_progress(1, None, 10).unwrap().is_empty());
    assert!(s.device(&device(4)).unwrap().is_some());
}

pub(crate) fn challenges_replace_delete_purge<H: Harness>(h: &H) {
    let mut s = h.open();
    let c = |n: u32, session: u64, expires: u64| Challenge {
        device: device(n),
        session,
        nonce: vec![n as u8; 16],
        expires_at_ms: expires,
    };
    s.apply(Batch::independent(vec![
        Op::PutChallenge(c(1, 1, 100)),
        Op::PutChallenge(c(2, 2, 200)),
        Op::PutChallenge(c(3, 3, 300)),
    ]))
    .unwrap();
    // One outstanding challenge per device: a new one replaces the old.
    s.apply(Batch::independent(vec![Op::PutChallenge(c(1, 7, 150))]))
        .unwrap();
    assert_eq!(s.challenge(&device(1)).unwrap(), Some(c(1, 7, 150)));
    s.apply(Batch::independent(vec![Op::DeleteChallenge(device(3))]))
        .unwrap();
    assert_eq!(s.challenge(&device(3)).unwrap(), None);
    s.apply(Batch::independent(vec![Op::PurgeChallenges {
        now_ms: 150,
    }]))
    .unwrap();
    assert_eq!(s.challenge(&device(1)).unwrap(), None);
    assert_eq!(s.challenge(&device(2)).unwrap(), Some(c(2, 2, 200)));
}

pub(crate) fn shadow_compare_and_swap<H: Harness>(h: &H) {
    let mut s = h.open();
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "cfg", 1, b"v1"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    // A second creator loses.
    assert_eq!(
        s.apply(Batch::independent(vec![put_shadow(
            shadow(1, "cfg", 1, b"other"),
            ShadowExpect::Absent,
        )])),
        Err(StoreError::Conflict {
            index: 0,
            current: Some(1)
        })
    );
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "cfg", 2, b"v2"),
        ShadowExpect::Version(1),
    )]))
    .unwrap();
    // A writer that read version 1 is stale now.
    assert_eq!(
        s.apply(Batch::independent(vec![put_shadow(
            shadow(1, "cfg", 2, b"lost"),
            ShadowExpect::Version(1),
        )])),
        Err(StoreError::Conflict {
            index: 0,
            current: Some(2)
        })
    );
    assert_eq!(
        s.shadow(&device(1), "cfg").unwrap(),
        Some(shadow(1, "cfg", 2, b"v2"))
    );
    // Updating a shadow that does not exist is a conflict with `None`.
    assert_eq!(
        s.apply(Batch::independent(vec![put_shadow(
            shadow(1, "other", 5, b"x"),
            ShadowExpect::Version(4),
        )])),
        Err(StoreError::Conflict {
            index: 0,
            current: None
        })
    );
    // Named shadows of one device are independent.
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "", 1, b"classic"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    assert_eq!(
        s.shadow(&device(1), "").unwrap().unwrap().document,
        b"classic"
    );
    // Deletion is compare-and-swap too.
    let del = |v| Op::DeleteShadow {
        device: device(1),
        name: "cfg".into(),
        expected_version: v,
    };
    assert!(matches!(
        s.apply(Batch::independent(vec![del(1)])),
        Err(StoreError::Conflict { .. })
    ));
    s.apply(Batch::independent(vec![del(2)])).unwrap();
    assert_eq!(s.shadow(&device(1), "cfg").unwrap(), None);
}

pub(crate) fn independent_batch_keeps_other_ops<H: Harness>(h: &H) {
    let mut s = h.open();
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "", 1, b"a"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    let outcomes = s
        .commit(&[Batch::independent(vec![
            put_shadow(shadow(1, "", 1, b"stale"), ShadowExpect::Absent),
            put_shadow(shadow(2, "", 1, b"b"), ShadowExpect::Absent),
            Op::Audit(event(1)),
        ])])
        .unwrap();
    assert!(outcomes[0].committed);
    assert_eq!(outcomes[0].ops[0], OpOutcome::Conflict { current: Some(1) });
    assert_eq!(outcomes[0].ops[1], OpOutcome::Applied);
    assert!(matches!(
        outcomes[0].ops[2],
        OpOutcome::Appended { seq: 1, .. }
    ));
    assert_eq!(s.shadow(&device(1), "").unwrap().unwrap().document, b"a");
    assert_eq!(s.shadow(&device(2), "").unwrap().unwrap().document, b"b");
    assert_eq!(s.audit_head().unwrap().seq, 1);
}

/// Many shadow writes in one commit behave exactly as if applied one by one, in order.
pub(crate) fn shadow_writes_in_one_commit_apply_in_order<H: Harness>(h: &H) {
    let mut s = h.open();
    s.apply(Batch::independent(vec![put_shadow(
        shadow(3, "", 5, b"c5"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    let outcomes = s
        .commit(&[
            Batch::independent(vec![
                put_shadow(shadow(1, "", 1, b"a1"), ShadowExpect::Absent),
                put_shadow(shadow(1, "", 2, b"a2"), ShadowExpect::Version(1)),
                put_shadow(shadow(1, "", 3, b"stale"), ShadowExpect::Version(1)),
                put_shadow(shadow(2, "", 1, b"b1"), ShadowExpect::Absent),
                put_shadow(shadow(3, "", 6, b"stale"), ShadowExpect::Version(4)),
            ]),
            Batch::independent(vec![
                put_shadow(shadow(3, "", 6, b"c6"), ShadowExpect::Version(5)),
                put_shadow(shadow(1, "", 3, b"a3"), ShadowExpect::Version(2)),
                Op::DeleteShadow {
                    device: device(2),
                    name: String::new(),
                    expected_version: 1,
                },
                put_shadow(shadow(2, "", 1, b"b1 again"), ShadowExpect::Absent),
                put_shadow(shadow(2, "x", 1, b"named"), ShadowExpect::Absent),
            ]),
            Batch::atomic(vec![put_shadow(
                shadow(1, "", 4, b"a4"),
                ShadowExpect::Version(3),
            )]),
            Batch::independent(vec![put_shadow(
                shadow(1, "", 5, b"a5"),
                ShadowExpect::Version(4),
            )]),
        ])
        .unwrap();
    let applied = OpOutcome::Applied;
    assert_eq!(
        outcomes[0].ops,
        vec![
            applied,
            applied,
            OpOutcome::Conflict { current: Some(2) },
            applied,
            OpOutcome::Conflict { current: Some(5) },
        ]
    );
    assert_eq!(outcomes[1].ops, vec![applied; 5]);
    assert_eq!(outcomes[2].ops, vec![applied]);
    assert_eq!(outcomes[3].ops, vec![applied]);
    assert_eq!(
        s.shadow(&device(1), "").unwrap(),
        Some(shadow(1, "", 5, b"a5"))
    );
    assert_eq!(
        s.shadow(&device(2), "").unwrap(),
        Some(shadow(2, "", 1, b"b1 again"))
    );
    assert_eq!(
        s.shadow(&device(2), "x").unwrap(),
        Some(shadow(2, "x", 1, b"named"))
    );
    assert_eq!(
        s.shadow(&device(3), "").unwrap(),
        Some(shadow(3, "", 6, b"c6"))
    );
}

pub(crate) fn shadows_of_a_device_are_listed_by_name<H: Harness>(h: &H) {
    let mut s = h.open();
    let names = ["", "a", "b", "config", "z"];
    let ops = names
        .iter()
        .map(|n| put_shadow(shadow(1, n, 1, n.as_bytes()), ShadowExpect::Absent))
        .chain([put_shadow(
            shadow(2, "a", 1, b"other"),
            ShadowExpect::Absent,
        )])
        .collect();
    s.apply(Batch::independent(ops)).unwrap();
    let first = s.shadows(&device(1), None, 2).unwrap();
    assert_eq!(first, vec![shadow(1, "", 1, b""), shadow(1, "a", 1, b"a")]);
    let rest = s.shadows(&device(1), Some("a"), 10).unwrap();
    let rest_names: Vec<&str> = rest.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(rest_names, vec!["b", "config", "z"]);
    assert!(s.shadows(&device(9), None, 10).unwrap().is_empty());
}

pub(crate) fn atomic_batch_is_all_or_nothing<H: Harness>(h: &H) {
    let mut s = h.open();
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "", 1, b"a"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    let outcomes = s
        .commit(&[
            Batch::atomic(vec![
                Op::Audit(event(1)),
                put_shadow(shadow(2, "", 1, b"b"), ShadowExpect::Absent),
                put_shadow(shadow(1, "", 8, b"x"), ShadowExpect::Version(7)),
                Op::PutTenant(Tenant {
                    id: tenant("never"),
                    config: vec![],
                }),
            ]),
            // Another caller's batch in the same transaction commits.
            Batch::atomic(vec![Op::Audit(event(2))]),
        ])
        .unwrap();
    assert!(!outcomes[0].committed);
    assert_eq!(
        outcomes[0].ops,
        vec![
            OpOutcome::RolledBack,
            OpOutcome::RolledBack,
            OpOutcome::Conflict { current: Some(1) },
            OpOutcome::RolledBack,
        ]
    );
    assert!(outcomes[1].committed);
    // The rolled-back audit entry left no gap: the committed one is entry 1.
    assert!(matches!(
        outcomes[1].ops[0],
        OpOutcome::Appended { seq: 1, .. }
    ));
    assert_eq!(s.shadow(&device(2), "").unwrap(), None);
    assert_eq!(s.tenant(&tenant("never")).unwrap(), None);
    assert_eq!(s.verify_audit().unwrap().seq, 1);
    assert_eq!(s.audit_range(1, 10).unwrap()[0].event, event(2));
}

pub(crate) fn invalid_input_refuses_the_whole_call<H: Harness>(h: &H) {
    let mut s = h.open();
    let result = s.commit(&[
        Batch::independent(vec![Op::PutTenant(Tenant {
            id: tenant("acme"),
            config: vec![],
        })]),
        Batch::independent(vec![put_shadow(
            shadow(1, &"n".repeat(65), 1, b""),
            ShadowExpect::Absent,
        )]),
    ]);
    assert!(matches!(result, Err(StoreError::InvalidInput(_))));
    assert_eq!(s.tenant(&tenant("acme")).unwrap(), None);
    let huge = Op::Audit(AuditEvent {
        payload: vec![0; 64 * 1024 + 1],
        ..event(1)
    });
    assert!(matches!(
        s.apply(Batch::independent(vec![huge])),
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        s.apply(Batch::independent(vec![Op::PurgeChallenges {
            now_ms: u64::MAX
        }])),
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(s.audit_head().unwrap().seq, 0);
}

pub(crate) fn rollouts_and_ota_progress<H: Harness>(h: &H) {
    let mut s = h.open();
    let rollout = Rollout {
        id: 42,
        tenant: tenant("acme"),
        status: 1,
        plan: b"plan".to_vec(),
    };
    let progress = |n: u32, status: u8| OtaProgress {
        rollout: 42,
        device: device(n),
        status,
        detail: vec![status],
        updated_at_ms: 77,
    };
    let mut ops = vec![Op::PutRollout(rollout.clone())];
    ops.extend((0..30).map(|n| Op::PutOtaProgress(progress(n, 1))));
    s.apply(Batch::independent(ops)).unwrap();
    s.apply(Batch::independent(vec![
        Op::PutRollout(Rollout {
            status: 2,
            ..rollout.clone()
        }),
        Op::PutOtaProgress(progress(5, 3)),
    ]))
    .unwrap();
    assert_eq!(s.rollout(42).unwrap().unwrap().status, 2);
    assert_eq!(s.rollout(43).unwrap(), None);
    s.apply(Batch::independent(vec![
        Op::PutRollout(Rollout {
            id: 7,
            ..rollout.clone()
        }),
        Op::PutRollout(Rollout {
            id: 0,
            ..rollout.clone()
        }),
    ]))
    .unwrap();
    let ids = |v: Vec<Rollout>| v.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.rollouts(None, 10).unwrap()), vec![0, 7, 42]);
    assert_eq!(ids(s.rollouts(Some(0), 1).unwrap()), vec![7]);
    assert_eq!(ids(s.rollouts(Some(42), 10).unwrap()), Vec::<u64>::new());
    let first = s.ota_progress(42, None, 20).unwrap();
    let rest = s.ota_progress(42, Some(&first[19].device), 20).unwrap();
    assert_eq!(first.len() + rest.len(), 30);
    let five = first
        .iter()
        .chain(&rest)
        .find(|p| p.device == device(5))
        .unwrap();
    assert_eq!(five, &progress(5, 3));
    assert!(s.ota_progress(7, None, 20).unwrap().is_empty());
}

pub(crate) fn audit_append_verify_export<H: Harness>(h: &H) {
    let mut s = h.open();
    assert_eq!(s.verify_audit().unwrap().seq, 0);
    let total = 2_500u64;
    let mut n = 0u64;
    while n < total {
        let ops = (n + 1..=(n + 500).min(total))
            .map(|i| Op::Audit(event(i)))
            .collect();
        s.apply(Batch::independent(ops)).unwrap();
        n += 500;
    }
    let head = s.verify_audit().unwrap();
    assert_eq!(head.seq, total);
    assert_eq!(s.audit_head().unwrap(), head);
    let range = s.audit_range(10, 3).unwrap();
    assert_eq!(
        range.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    assert_eq!(range[0].event, event(10));
    assert_eq!(range[1].prev_hash, range[0].hash);
    assert_eq!(s.audit_range(1, 1).unwrap()[0].prev_hash, GENESIS);

    let mut out = Vec::new();
    assert_eq!(s.export_audit(100, 110, &mut out).unwrap(), 11);
    // Each exported record: length, encoding, prev_hash, hash; the chain checks from it alone.
    let mut rest = out.as_slice();
    let mut prev = None;
    let mut count = 0;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let encoding = &rest[4..4 + len];
        let prev_hash: [u8; 32] = rest[4 + len..36 + len].try_into().unwrap();
        let hash: [u8; 32] = rest[36 + len..68 + len].try_into().unwrap();
        if let Some(p) = prev {
            assert_eq!(prev_hash, p);
        }
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut hasher, prev_hash);
        sha2::Digest::update(&mut hasher, encoding);
        let computed: [u8; 32] = sha2::Digest::finalize(hasher).into();
        assert_eq!(computed, hash);
        prev = Some(hash);
        rest = &rest[68 + len..];
        count += 1;
    }
    assert_eq!(count, 11);
}

/// Verification while another connection keeps appending checks the entries up to the head
/// it read first, and succeeds.
pub(crate) fn audit_verifies_while_others_append<H: Harness>(h: Arc<H>) {
    let mut s = h.open();
    let ops = (1..=1_500).map(|i| Op::Audit(event(i))).collect();
    s.apply(Batch::independent(ops)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let h = Arc::clone(&h);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut s = h.open();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2_000 {
                s.apply(Batch::independent(vec![Op::Audit(event(n))]))
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..5 {
        let head = s.verify_audit().unwrap();
        assert!(head.seq >= 1_500);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let appended = appender.join().unwrap();
    assert_eq!(s.verify_audit().unwrap().seq, 1_500 + appended);
}

/// Appenders on separate connections (separate backend nodes) keep one linear chain.
pub(crate) fn concurrent_audit_appenders_keep_one_chain<H: Harness>(h: Arc<H>) {
    let appenders = 4u64;
    let batches = 30u64;
    let threads: Vec<_> = (0..appenders)
        .map(|a| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut s = h.open();
                let mut seqs = Vec::new();
                for b in 0..batches {
                    let outcome = s
                        .apply(Batch::independent(vec![
                            Op::Audit(event(a * 1_000 + b)),
                            Op::Audit(event(a * 1_000 + b + 500)),
                        ]))
                        .unwrap();
                    for op in outcome.ops {
                        let OpOutcome::Appended { seq, .. } = op else {
                            panic!("not appended: {op:?}");
                        };
                        seqs.push(seq);
                    }
                }
                seqs
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    let total = appenders * batches * 2;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    assert_eq!(h.open().verify_audit().unwrap().seq, total);
}

pub(crate) fn audit_tampering_is_detected<H: Harness>(h: &H) {
    let mut s = h.open();
    let ops = (1..=20).map(|i| Op::Audit(event(i))).collect();
    s.apply(Batch::independent(ops)).unwrap();
    assert_eq!(s.verify_audit().unwrap().seq, 20);
    h.tamper_audit_payload(7);
    let mut fresh = h.open();
    assert_eq!(
        fresh.verify_audit(),
        Err(StoreError::AuditChainBroken { seq: 7 })
    );
}

/// Writers on separate connections increment one counter in one shadow by read-modify-CAS;
/// every increment must survive.
pub(crate) fn concurrent_writers_never_lose_an_update<H: Harness>(h: Arc<H>) {
    let mut s = h.open();
    s.apply(Batch::independent(vec![put_shadow(
        shadow(1, "counter", 1, &0u64.to_be_bytes()),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    let writers = 4;
    let increments = 25u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut s = h.open();
                let mut conflicts = 0u64;
                for _ in 0..increments {
                    loop {
                        assert!(Instant::now() < deadline, "writers made no progress");
                        let current = s.shadow(&device(1), "counter").unwrap().unwrap();
                        let count = u64::from_be_bytes(current.document[..8].try_into().unwrap());
                        let next = shadow(
                            1,
                            "counter",
                            current.version + 1,
                            &(count + 1).to_be_bytes(),
                        );
                        match s.apply(Batch::independent(vec![put_shadow(
                            next,
                            ShadowExpect::Version(current.version),
                        )])) {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let total = writers * increments;
    let end = s.shadow(&device(1), "counter").unwrap().unwrap();
    assert_eq!(
        u64::from_be_bytes(end.document[..8].try_into().unwrap()),
        total
    );
    assert_eq!(end.version, 1 + total);
    // Versions only grow: each success moved it by one, whatever the conflicts.
    let _ = conflicts;
}

/// Two handles (two backend nodes) read the same shadow version and both write: exactly one
/// write lands, the other is told the version the first one wrote.
pub(crate) fn two_handles_racing_on_one_shadow_lose_nothing<H: Harness>(h: &H) {
    let mut a = h.open();
    let mut b = h.open();
    a.apply(Batch::independent(vec![put_shadow(
        shadow(1, "", 1, b"base"),
        ShadowExpect::Absent,
    )]))
    .unwrap();
    let seen_a = a.shadow(&device(1), "").unwrap().unwrap();
    let seen_b = b.shadow(&device(1), "").unwrap().unwrap();
    assert_eq!(seen_a.version, seen_b.version);
    a.apply(Batch::atomic(vec![put_shadow(
        shadow(1, "", seen_a.version + 1, b"from a"),
        ShadowExpect::Version(seen_a.version),
    )]))
    .unwrap();
    assert_eq!(
        b.apply(Batch::atomic(vec![put_shadow(
            shadow(1, "", seen_b.version + 1, b"from b"),
            ShadowExpect::Version(seen_b.version),
        )])),
        Err(StoreError::Conflict {
            index: 0,
            current: Some(seen_a.version + 1)
        })
    );
    assert_eq!(
        b.shadow(&device(1), "").unwrap().unwrap().document,
        b"from a"
    );
    // Creating the same shadow twice: the second creator is told it exists.
    assert!(matches!(
        b.apply(Batch::independent(vec![put_shadow(
            shadow(1, "", 1, b"again"),
            ShadowExpect::Absent
        )])),
        Err(StoreError::Conflict {
            current: Some(_),
            ..
        })
    ));
}

/// Nodes commit batches that each write several shadows (in different orders, so row locks
/// are taken in different orders) and append audit entries: every commit goes through, no
/// increment is lost, and the audit trail is one chain with one entry per success.
pub(crate) fn concurrent_multi_shadow_batches_keep_every_update<H: Harness>(h: Arc<H>) {
    let shadows = 6u32;
    let mut s = h.open();
    let creates = (0..shadows)
        .map(|n| put_shadow(shadow(n, "", 1, &0u64.to_be_bytes()), ShadowExpect::Absent))
        .collect();
    s.apply(Batch::independent(creates)).unwrap();
    let writers = 3u32;
    let rounds = 20u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut s = h.open();
                let mut appended = 0u64;
                for round in 0..rounds {
                    loop {
                        assert!(Instant::now() < deadline, "writers made no progress");
                        // Writer w walks the shadows from its own starting point.
                        let order: Vec<u32> = (0..shadows)
                            .map(|i| (i + w * 2 + round) % shadows)
                            .collect();
                        let mut ops = Vec::new();
                        for n in &order {
                            let cur = s.shadow(&device(*n), "").unwrap().unwrap();
                            let count = u64::from_be_bytes(cur.document[..8].try_into().unwrap());
                            ops.push(put_shadow(
                                shadow(*n, "", cur.version + 1, &(count + 1).to_be_bytes()),
                                ShadowExpect::Version(cur.version),
                            ));
                        }
                        ops.push(Op::Audit(event(u64::from(w * 1_000 + round))));
                        let outcome = s.commit(&[Batch::atomic(ops)]).unwrap();
                        if outcome[0].committed {
                            appended += 1;
                            break;
                        }
                    }
                }
                appended
            })
        })
        .collect();
    let appended: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let total = u64::from(writers * rounds);
    assert_eq!(appended, total);
    for n in 0..shadows {
        let end = s.shadow(&device(n), "").unwrap().unwrap();
        assert_eq!(
            u64::from_be_bytes(end.document[..8].try_into().unwrap()),
            total,
            "shadow {n}"
        );
        assert_eq!(end.version, 1 + total);
    }
    assert_eq!(s.verify_audit().unwrap().seq, total);
}

/// Revision counters: bump from what was read, check without bumping, conflicts name the
/// stored revision, and racing bumpers lose nothing.
pub(crate) fn revisions_compare_and_bump<H: Harness>(h: Arc<H>) {
    let mut s = h.open();
    assert_eq!(s.revision("device/1").unwrap(), 0);
    let revise = |key: &str, expected: u64, bump: bool| Op::Revise {
        key: key.into(),
        expected,
        bump,
    };
    s.apply(Batch::atomic(vec![revise("device/1", 0, true)]))
        .unwrap();
    assert_eq!(s.revision("device/1").unwrap(), 1);
    // A check at the right revision passes and changes nothing.
    s.apply(Batch::atomic(vec![revise("device/1", 1, false)]))
        .unwrap();
    assert_eq!(s.revision("device/1").unwrap(), 1);
    // A stale bump or check conflicts, and an atomic batch takes its other ops back.
    for bump in [true, false] {
        let outcome = s
            .commit(&[Batch::atomic(vec![
                Op::PutTenant(Tenant {
                    id: tenant("acme"),
                    config: vec![9],
                }),
                revise("device/1", 0, bump),
            ])])
            .unwrap();
        assert!(!outcome[0].committed);
        assert_eq!(outcome[0].first_conflict(), Some((1, Some(1))));
        assert_eq!(s.tenant(&tenant("acme")).unwrap(), None);
    }
    // A counter never bumped is at 0: expecting more conflicts.
    assert_eq!(
        s.apply(Batch::atomic(vec![revise("device/2", 3, true)])),
        Err(StoreError::Conflict {
            index: 0,
            current: Some(0)
        })
    );
    assert!(matches!(
        s.apply(Batch::atomic(vec![revise("", 0, true)])),
        Err(StoreError::InvalidInput(_))
    ));

    let writers = 3u64;
    let bumps = 20u64;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut s = h.open();
                let mut done = 0;
                while done < bumps {
                    let seen = s.revision("rollout/7").unwrap();
                    let outcome = s
                        .commit(&[Batch::atomic(vec![Op::Revise {
                            key: "rollout/7".into(),
                            expected: seen,
                            bump: true,
                        }])])
                        .unwrap();
                    if outcome[0].committed {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.revision("rollout/7").unwrap(), writers * bumps);
}

/// Leases: one holder at a time, renewal keeps the fencing token, expiry or release lets
/// another claimer take over with a greater token, and effects committed with
/// `HoldsLease` happen once: a former holder's commit is refused.
pub(crate) fn leases_hand_work_over_once<H: Harness>(h: &H) {
    let mut a = h.open();
    let mut b = h.open();
    assert_eq!(a.lease("rollout-ticks").unwrap(), None);
    let first = a
        .claim("rollout-ticks", "node-a", 1_000, 500)
        .unwrap()
        .unwrap();
    assert_eq!(first.holder, "node-a");
    assert_eq!(first.expires_at_ms, 1_500);
    // Held: another node is refused until it runs out.
    assert_eq!(
        b.claim("rollout-ticks", "node-b", 1_200, 500).unwrap(),
        None
    );
    // Renewal keeps the token.
    let renewed = a
        .claim("rollout-ticks", "node-a", 1_400, 500)
        .unwrap()
        .unwrap();
    assert_eq!(renewed.fence, first.fence);
    assert_eq!(renewed.expires_at_ms, 1_900);
    assert_eq!(
        b.claim("rollout-ticks", "node-b", 1_899, 500).unwrap(),
        None
    );

    let effect = |n: u8, holder: &str, fence: u64| {
        Batch::atomic(vec![
            Op::HoldsLease {
                name: "rollout-ticks".into(),
                holder: holder.into(),
                fence,
            },
            Op::PutTenant(Tenant {
                id: tenant("acme"),
                config: vec![n],
            }),
        ])
    };
    a.apply(effect(1, "node-a", first.fence)).unwrap();

    // node-a stalls past its lease; node-b takes over with a greater token.
    let taken = b
        .claim("rollout-ticks", "node-b", 1_900, 500)
        .unwrap()
        .unwrap();
    assert_eq!(taken.holder, "node-b");
    assert!(taken.fence > first.fence);
    // node-a wakes up and tries to do the work again: refused, nothing written.
    assert_eq!(
        a.apply(effect(2, "node-a", first.fence)),
        Err(StoreError::Conflict {
            index: 0,
            current: Some(taken.fence)
        })
    );
    assert_eq!(a.tenant(&tenant("acme")).unwrap().unwrap().config, vec![1]);
    b.apply(effect(3, "node-b", taken.fence)).unwrap();
    assert_eq!(a.tenant(&tenant("acme")).unwrap().unwrap().config, vec![3]);
    // node-a cannot renew a lease it lost, nor release it.
    assert_eq!(
        a.claim("rollout-ticks", "node-a", 2_000, 500).unwrap(),
        None
    );
    assert!(!a.release("rollout-ticks", "node-a").unwrap());
    // Release hands over at once, before the expiry.
    assert!(b.release("rollout-ticks", "node-b").unwrap());
    assert!(
        !b.release("rollout-ticks", "node-b").unwrap(),
        "released twice"
    );
    let back = a
        .claim("rollout-ticks", "node-a", 2_001, 500)
        .unwrap()
        .unwrap();
    assert!(back.fence > taken.fence);
    assert_eq!(a.lease("rollout-ticks").unwrap(), Some(back.clone()));
    // A lease nobody claimed fences nothing.
    assert_eq!(
        a.apply(Batch::atomic(vec![Op::HoldsLease {
            name: "never".into(),
            holder: "node-a".into(),
            fence: 1,
        }])),
        Err(StoreError::Conflict {
            index: 0,
            current: None
        })
    );
    assert!(matches!(
        a.claim("x", "node-a", u64::MAX, 1),
        Err(StoreError::InvalidInput(_))
    ));
}

/// Claimers on separate connections race for one free lease many times: each time exactly
/// one wins.
pub(crate) fn racing_claimers_get_one_holder<H: Harness>(h: Arc<H>) {
    let claimers = 4u64;
    let rounds = 15u64;
    let barrier = Arc::new(std::sync::Barrier::new(claimers as usize));
    let threads: Vec<_> = (0..claimers)
        .map(|c| {
            let h = Arc::clone(&h);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut s = h.open();
                let mut won = Vec::new();
                for round in 0..rounds {
                    barrier.wait();
                    // Each round starts after the previous lease ran out.
                    let now = 10_000 * (round + 1);
                    if let Some(lease) = s
                        .claim("dispatch", &format!("node-{c}"), now, 5_000)
                        .unwrap()
                    {
                        won.push((round, lease.fence));
                    }
                    barrier.wait();
                }
                won
            })
        })
        .collect();
    let mut wins: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    wins.sort_unstable();
    let rounds_won: Vec<u64> = wins.iter().map(|w| w.0).collect();
    assert_eq!(
        rounds_won,
        (0..rounds).collect::<Vec<_>>(),
        "one winner per round"
    );
    // Tokens never go back.
    assert!(wins.windows(2).all(|w| w[0].1 <= w[1].1));
}

pub(crate) fn reopen_keeps_everything<H: Harness>(h: &H) {
    {
        let mut s = h.open();
        s.apply(Batch::independent(vec![
            Op::PutDevice(record(1, "acme")),
            put_shadow(shadow(1, "", 1, b"doc"), ShadowExpect::Absent),
            Op::Audit(event(1)),
        ]))
        .unwrap();
    }
    let mut s = h.open();
    assert_eq!(s.device(&device(1)).unwrap(), Some(record(1, "acme")));
    assert_eq!(s.shadow(&device(1), "").unwrap().unwrap().document, b"doc");
    assert_eq!(s.verify_audit().unwrap().seq, 1);
}

pub(crate) fn group_commit_answers_every_caller<H: Harness>(h: &H) {
    let group = GroupCommit::spawn(
        Box::new(h.open()),
        GroupCommitConfig {
            queue_capacity: 16,
            max_batch_ops: 64,
        },
    )
    .unwrap();
    let callers = 8u32;
    let per_caller = 40u32;
    let threads: Vec<_> = (0..callers)
        .map(|c| {
            let handle = group.handle();
            std::thread::spawn(move || {
                for i in 0..per_caller {
                    let n = c * 1_000 + i;
                    let outcome = handle
                        .commit(Batch::atomic(vec![
                            put_shadow(shadow(n, "", 1, &n.to_be_bytes()), ShadowExpect::Absent),
                            Op::Audit(event(u64::from(n))),
                        ]))
                        .unwrap();
                    assert!(outcome.committed);
                }
                // A stale atomic write is rolled back alone and reported to its caller.
                let stale = handle
                    .commit(Batch::atomic(vec![
                        Op::Audit(event(1)),
                        put_shadow(shadow(c * 1_000, "", 1, b"x"), ShadowExpect::Absent),
                    ]))
                    .unwrap();
                assert!(!stale.committed);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(group.shutdown().unwrap());
    let mut s = h.open();
    for c in 0..callers {
        for i in 0..per_caller {
            let n = c * 1_000 + i;
            assert_eq!(
                s.shadow(&device(n), "").unwrap().unwrap().document,
                n.to_be_bytes()
            );
        }
    }
    assert_eq!(
        s.verify_audit().unwrap().seq,
        u64::from(callers * per_caller)
    );
}

pub(crate) fn group_commit_after_shutdown_is_closed<H: Harness>(h: &H) {
    let group = GroupCommit::spawn(Box::new(h.open()), GroupCommitConfig::default()).unwrap();
    let handle = group.handle();
    handle
        .commit(Batch {
            ops: vec![Op::Audit(event(1))],
            mode: BatchMode::Independent,
        })
        .unwrap();
    let mut store = group.shutdown().unwrap();
    assert_eq!(store.audit_head().unwrap().seq, 1);
    assert!(matches!(
        handle.commit(Batch::independent(vec![Op::Audit(event(2))])),
        Err(StoreError::Closed)
    ));
}

/// Generates one `#[test]` per suite function for a harness type.
macro_rules! conformance_suite {
    ($harness:ty) => {
        mod conformance {
            use super::*;
            use crate::common::{self as suite, Harness as _};
            use std::sync::Arc;

            macro_rules! case {
                ($name:ident) => {
                    #[test]
                    fn $name() {
                        let h = <$harness>::create();
                        suite::$name(&h);
                    }
                };
            }
            case!(tenants_and_paging);
            case!(devices_roundtrip_and_delete_wipes);
            case!(challenges_replace_delete_purge);
            case!(shadow_compare_and_swap);
            case!(independent_batch_keeps_other_ops);
            case!(atomic_batch_is_all_or_nothing);
            case!(shadow_writes_in_one_commit_apply_in_order);
            case!(shadows_of_a_device_are_listed_by_name);
            case!(invalid_input_refuses_the_whole_call);
            case!(rollouts_and_ota_progress);
            case!(audit_append_verify_export);
            case!(audit_tampering_is_detected);
            case!(reopen_keeps_everything);
            case!(group_commit_answers_every_caller);
            case!(group_commit_after_shutdown_is_closed);
            case!(two_handles_racing_on_one_shadow_lose_nothing);
            case!(leases_hand_work_over_once);

            #[test]
            fn concurrent_multi_shadow_batches_keep_every_update() {
                suite::concurrent_multi_shadow_batches_keep_every_update(Arc::new(
                    <$harness>::create(),
                ));
            }

            #[test]
            fn revisions_compare_and_bump() {
                suite::revisions_compare_and_bump(Arc::new(<$harness>::create()));
            }

            #[test]
            fn racing_claimers_get_one_holder() {
                suite::racing_claimers_get_one_holder(Arc::new(<$harness>::create()));
            }

            #[test]
            fn audit_verifies_while_others_append() {
                suite::audit_verifies_while_others_append(Arc::new(<$harness>::create()));
            }

            #[test]
            fn concurrent_audit_appenders_keep_one_chain() {
                suite::concurrent_audit_appenders_keep_one_chain(Arc::new(<$harness>::create()));
            }

            #[test]
            fn concurrent_writers_never_lose_an_update() {
                suite::concurrent_writers_never_lose_an_update(Arc::new(<$harness>::create()));
            }
        }
    };
}
