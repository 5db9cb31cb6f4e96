//! The merge algebra (issue items 8-10): last-writer-wins by (policy rank, HLC, node) is
//! commutative, associative and idempotent, loses no update, breaks HLC ties by node id and
//! rejects contradictory writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

mod common;

use common::*;
use iot_shadow::{
    FixedStore, Limits, MapStore, Origin, Policy, Section, Shadow, ShadowError, Update, Value,
    Write,
};
use proptest::prelude::*;

type Replica = Shadow<MapStore>;

fn replica() -> Replica {
    Shadow::new(
        MapStore::new(),
        Policy::LastWriterWins,
        Limits {
            max_fields: 1_000,
            max_encoded_len: 1 << 20,
            ..Limits::DEFAULT
        },
    )
}

const PATHS: [&str; 4] = ["a", "b", "c.d", "c.e"];
const POLICIES: [Policy; 4] = [
    Policy::CloudWins,
    Policy::DeviceWins,
    Policy::LastWriterWins,
    Policy::Custom,
];

/// A write whose content is a function of its (leaf, HLC, node): a correct system never
/// issues two different writes with one stamp.
fn write(path_ix: usize, desired_half: bool, time: u64, node: u32) -> Write {
    let value = match (time * 7 + u64::from(node)) % 5 {
        0 => Value::Null,
        1 => Value::Bool(time.is_multiple_of(2)),
        n => Value::Int((n * time) as i64),
    };
    let origin = if node == 1 {
        Origin::Cloud
    } else {
        Origin::Device
    };
    let section = if desired_half {
        Section::Desired
    } else {
        Section::Reported
    };
    Write::new(
        section,
        path(PATHS[path_ix]),
        value,
        stamp(time, node, origin, POLICIES[path_ix]),
    )
}

fn any_write() -> impl Strategy<Value = Write> {
    (0..PATHS.len(), any::<bool>(), 1u64..12, 1u32..4).prop_map(|(p, d, t, n)| write(p, d, t, n))
}

fn build(writes: &[Write], version: u64) -> Replica {
    let mut r = replica();
    for w in writes {
        r.merge_writes(core::slice::from_ref(w), version).unwrap();
    }
    r
}

fn joined(parts: &[&Replica]) -> Vec<u8> {
    let mut acc = replica();
    for p in parts {
        acc.merge(p).unwrap();
    }
    acc.to_cbor()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn merge_is_commutative(
        a in prop::collection::vec(any_write(), 0..10),
        b in prop::collection::vec(any_write(), 0..10),
        va in 0u64..5, vb in 0u64..5,
    ) {
        let (a, b) = (build(&a, va), build(&b, vb));
        prop_assert_eq!(joined(&[&a, &b]), joined(&[&b, &a]));
    }

    #[test]
    fn merge_is_associative(
        a in prop::collection::vec(any_write(), 0..8),
        b in prop::collection::vec(any_write(), 0..8),
        c in prop::collection::vec(any_write(), 0..8),
    ) {
        let (a, b, c) = (build(&a, 1), build(&b, 2), build(&c, 3));
        let mut ab = a.clone();
        ab.merge(&b).unwrap();
        let mut ab_c = ab;
        ab_c.merge(&c).unwrap();
        let mut bc = b.clone();
        bc.merge(&c).unwrap();
        let mut a_bc = a.clone();
        a_bc.merge(&bc).unwrap();
        prop_assert_eq!(ab_c.to_cbor(), a_bc.to_cbor());
    }

    #[test]
    fn merge_is_idempotent(a in prop::collection::vec(any_write(), 0..12)) {
        let a = build(&a, 4);
        let mut aa = a.clone();
        prop_assert!(!aa.merge(&a).unwrap());
        prop_assert_eq!(aa.to_cbor(), a.to_cbor());
    }

    /// Any permutation and duplication of the same writes, spread over any number of
    /// replicas, joins to byte-identical canonical CBOR.
    #[test]
    fn any_permutation_or_duplication_across_replicas_converges(
        writes in prop::collection::vec(any_write(), 1..16),
        shuffle in prop::collection::vec(any::<prop::sample::Index>(), 1..40),
        split in prop::collection::vec(0usize..3, 1..40),
    ) {
        let reference = build(&writes, 0).to_cbor();
        // Deliver a permuted, duplicated stream (every write at least once) to 3 replicas.
        let mut stream: Vec<Write> = shuffle.iter().map(|i| i.get(&writes).clone()).collect();
        stream.extend(writes.iter().cloned());
        let mut replicas = [replica(), replica(), replica()];
        for (i, w) in stream.iter().enumerate() {
            let r = &mut replicas[split[i % split.len()]];
            r.merge_writes(core::slice::from_ref(w), 0).unwrap();
        }
        let [r0, r1, r2] = &replicas;
        prop_assert_eq!(joined(&[r2, r0, r1, r0]), reference.clone());
        prop_assert_eq!(joined(&[r1, r2, r0]), reference);
    }

    /// For each leaf, the write with the greatest (policy rank, HLC, node) survives every
    /// merge that contains it.
    #[test]
    fn no_lost_update_the_greatest_write_survives(
        a in prop::collection::vec(any_write(), 0..10),
        b in prop::collection::vec(any_write(), 0..10),
    ) {
        let mut r = build(&a, 0);
        r.merge(&build(&b, 0)).unwrap();
        for w in a.iter().chain(&b) {
            let best = a
                .iter()
                .chain(&b)
                .filter(|o| o.section == w.section && o.path == w.path)
                .max_by(|x, y| x.stamp.cmp_precedence(&y.stamp))
                .unwrap();
            let kept = r.leaf(w.section, &w.path).unwrap();
            prop_assert_eq!(&kept.value, &best.value);
            prop_assert_eq!(kept.stamp, best.stamp);
        }
    }
}

#[test]
fn equal_hlc_time_is_broken_by_node_id() {
    let low = Write::new(
        Section::Desired,
        path("a"),
        int(1),
        stamp(5, 2, Origin::Cloud, Policy::LastWriterWins),
    );
    let high = Write::new(
        Section::Desired,
        path("a"),
        int(2),
        stamp(5, 3, Origin::Cloud, Policy::LastWriterWins),
    );
    for order in [[&low, &high], [&high, &low]] {
        let mut r = replica();
        for w in order {
            r.merge_writes(core::slice::from_ref(w), 0).unwrap();
        }
        assert_eq!(r.value(Section::Desired, &path("a")), Some(&int(2)));
    }
}

#[test]
fn same_hlc_and_node_with_different_values_is_rejected() {
    let a = desired("a", int(1), 5);
    let b = desired("a", int(2), 5);
    let mut r = replica();
    r.merge_writes(std::slice::from_ref(&a), 1).unwrap();
    let before = r.to_cbor();
    assert_eq!(
        r.merge_writes(std::slice::from_ref(&b), 2),
        Err(ShadowError::ContradictoryWrite)
    );
    assert_eq!(r.to_cbor(), before);
    let mut other = replica();
    other.merge_writes(std::slice::from_ref(&b), 0).unwrap();
    assert_eq!(r.merge(&other), Err(ShadowError::ContradictoryWrite));
    assert_eq!(r.to_cbor(), before);
    // The versioned path rejects it too; the identical write is a harmless duplicate.
    assert_eq!(
        r.apply(&Update::new(&[b]), 0),
        Err(ShadowError::ContradictoryWrite)
    );
    assert!(!r.apply(&Update::new(&[a]), 0).unwrap().changed);
}

#[test]
fn device_and_backend_stores_merge_identically() {
    let writes: Vec<Write> = (0..12)
        .map(|i| write(i % 4, i % 3 == 0, (i as u64 % 5) + 1, (i as u32 % 3) + 1))
        .collect();
    let backend = build(&writes, 3);
    let mut device: Shadow<FixedStore<8>> =
        Shadow::new(FixedStore::new(), Policy::LastWriterWins, Limits::DEFAULT);
    for w in &writes {
        device.merge_writes(core::slice::from_ref(w), 3).unwrap();
    }
    let mut buf = [0u8; 512];
    let n = device.encode_document(&mut buf).unwrap();
    assert_eq!(&buf[..n], backend.to_cbor().as_slice());
}
