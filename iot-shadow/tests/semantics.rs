//! Delta, removal, versioning, optimistic concurrency, idempotency and limits (issue items
//! 1-6, 12, 13) on the backend store and the fixed-capacity device store alike.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

mod common;

use common::*;
use iot_shadow::iot_core::time::HlcTimestamp;
use iot_shadow::iot_core::{Error, ErrorKind};
use iot_shadow::{
    FieldStore, FixedStore, Limits, MapStore, MemoryVersionStore, Outcome, Policy, Section, Shadow,
    ShadowError, Stamp, Update, Value, Write,
};
use proptest::prelude::*;

type Backend = Shadow<MapStore>;

fn backend() -> Backend {
    Shadow::new(MapStore::new(), Policy::LastWriterWins, Limits::DEFAULT)
}

fn delta_of<S: FieldStore>(s: &Shadow<S>) -> Vec<(String, Value)> {
    s.delta()
        .map(|(p, l)| (p.as_str().to_owned(), l.value.clone()))
        .collect()
}

#[test]
fn delta_is_desired_leaves_differing_from_or_missing_in_reported() {
    let mut s = backend();
    s.apply(
        &Update::new(&[
            desired("same", int(1), 10),
            desired("differs", int(2), 10),
            desired("missing", int(3), 10),
            desired(
                "arr",
                Value::array(&[iot_shadow::value::Scalar::Int(1)]).unwrap(),
                10,
            ),
            // Older than the desired writes, so last-writer-wins keeps desired pending.
            reported("same", int(1), 5),
            reported("differs", int(20), 5),
            reported("only_reported", int(4), 5),
            reported(
                "arr",
                Value::array(&[iot_shadow::value::Scalar::Int(2)]).unwrap(),
                5,
            ),
        ]),
        0,
    )
    .unwrap();
    let mut buf = [0u8; 512];
    assert!(s.encode_delta(&mut buf).unwrap().is_some());
    let d = delta_of(&s);
    let names: Vec<&str> = d.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["arr", "differs", "missing"]);
}

#[test]
fn empty_delta_produces_no_notification() {
    let mut s = backend();
    s.apply(
        &Update::new(&[desired("a", int(1), 1), reported("a", int(1), 2)]),
        0,
    )
    .unwrap();
    assert!(s.delta_is_empty());
    let mut buf = [0u8; 64];
    assert_eq!(s.encode_delta(&mut buf), Ok(None));
}

#[test]
fn applying_the_delta_and_reporting_it_empties_the_delta_and_is_idempotent() {
    let mut s = backend();
    s.apply(
        &Update::new(&[desired("a", int(1), 1), desired("b.c", int(2), 1)]),
        0,
    )
    .unwrap();
    let report: Vec<Write> = s
        .delta()
        .map(|(p, l)| reported(p.as_str(), l.value.clone(), 5))
        .collect();
    let first = s.apply(&Update::new(&report), 0).unwrap();
    assert!(first.changed);
    assert!(s.delta_is_empty());
    let bytes = s.to_cbor();
    let second = s.apply(&Update::new(&report), 0).unwrap();
    assert_eq!(
        second,
        Outcome {
            version: first.version,
            changed: false
        }
    );
    assert_eq!(s.to_cbor(), bytes);
}

#[test]
fn removal_is_carried_in_the_ack_and_no_tombstone_outlives_it() {
    let mut s = backend();
    s.apply(&Update::new(&[desired("a", int(1), 1)]), 0)
        .unwrap();
    let removal = [desired("a", Value::Null, 2)];
    let update = Update::new(&removal);
    let outcome = s.apply(&update, 0).unwrap();
    assert!(outcome.changed);
    assert_eq!(s.value(Section::Desired, &path("a")), None);
    let mut buf = [0u8; 128];
    let n = s.encode_accepted(&update, &outcome, &mut buf).unwrap();
    let mut ack: heapless::Vec<Write, 4> = heapless::Vec::new();
    iot_shadow::cbor::decode_message(&buf[..n], &mut ack).unwrap();
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].value, Value::Null);
    assert_eq!(s.tombstones(), 1);
    // The ack was delivered: the tombstone goes.
    assert_eq!(s.prune_tombstones(ack[0].stamp.hlc()), 1);
    assert_eq!(s.tombstones(), 0);
    assert_eq!(s.store().len(), 0);
}

#[test]
fn re_adding_a_value_equal_to_a_removed_one_produces_a_delta() {
    let mut s = backend();
    s.apply(
        &Update::new(&[desired("a", int(5), 1), reported("a", int(5), 2)]),
        0,
    )
    .unwrap();
    assert!(s.delta_is_empty());
    // The device loses the value; the cloud removes and re-adds the same desired value.
    s.apply(&Update::new(&[reported("a", Value::Null, 3)]), 0)
        .unwrap();
    s.apply(&Update::new(&[desired("a", Value::Null, 4)]), 0)
        .unwrap();
    assert!(s.delta_is_empty());
    let v = s.version();
    let o = s
        .apply(&Update::new(&[desired("a", int(5), 5)]), 0)
        .unwrap();
    assert_eq!(o.version, v + 1);
    assert_eq!(delta_of(&s), [("a".to_owned(), int(5))]);
}

#[test]
fn removing_an_absent_leaf_is_a_no_op() {
    let mut s = backend();
    let o = s
        .apply(&Update::new(&[desired("ghost", Value::Null, 1)]), 0)
        .unwrap();
    assert_eq!(
        o,
        Outcome {
            version: 0,
            changed: false
        }
    );
    assert_eq!(s.store().len(), 0);
}

#[test]
fn stale_expected_version_is_a_conflict_and_changes_nothing() {
    let mut s = backend();
    s.apply(&Update::new(&[desired("a", int(1), 1)]), 0)
        .unwrap();
    s.apply(&Update::new(&[desired("a", int(2), 2)]), 0)
        .unwrap();
    let before = s.to_cbor();
    let w = [desired("a", int(3), 3)];
    let err = s.apply(&Update::new(&w).expecting(1), 0).unwrap_err();
    assert_eq!(
        err,
        ShadowError::Conflict {
            expected: 1,
            current: 2
        }
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(s.to_cbor(), before);
    assert_eq!(s.version(), 2);
    assert!(s.apply(&Update::new(&w).expecting(2), 0).unwrap().changed);
}

#[test]
fn same_client_token_within_the_window_replays_without_a_second_mutation() {
    let mut s = backend();
    let w = [desired("a", int(1), 1)];
    let first = s
        .apply(&Update::new(&w).with_token("tok-1"), 1_000)
        .unwrap();
    // Another client changes the leaf in between.
    s.apply(&Update::new(&[desired("a", int(2), 2)]), 1_500)
        .unwrap();
    let bytes = s.to_cbor();
    // A retry of the first update (even guarded by its old version) replays its answer.
    let again = s
        .apply(&Update::new(&w).with_token("tok-1").expecting(0), 2_000)
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(s.to_cbor(), bytes);
    // After the window the token is forgotten: the stale guard now conflicts.
    let late = s.apply(
        &Update::new(&w).with_token("tok-1").expecting(0),
        1_000 + 60_001,
    );
    assert!(matches!(late, Err(ShadowError::Conflict { .. })));
}

#[test]
fn versions_survive_restart_and_delete_recreate() {
    let mut versions = MemoryVersionStore::default();
    let mut s: Backend = Shadow::open(
        MapStore::new(),
        Policy::LastWriterWins,
        Limits::DEFAULT,
        &mut versions,
    )
    .unwrap();
    for t in 1..=3 {
        s.apply_with(
            &Update::new(&[desired("a", int(t as i64), t)]),
            0,
            &mut versions,
        )
        .unwrap();
    }
    assert_eq!((s.version(), versions.saved), (3, 3));
    // Restart: the document is gone but the version is not reused.
    let mut s: Backend = Shadow::open(
        MapStore::new(),
        Policy::LastWriterWins,
        Limits::DEFAULT,
        &mut versions,
    )
    .unwrap();
    let o = s
        .apply_with(&Update::new(&[desired("a", int(9), 9)]), 0, &mut versions)
        .unwrap();
    assert_eq!(o.version, 4);
    // Delete and re-create: versions keep rising.
    assert_eq!(s.delete_with(&mut versions).unwrap().version, 5);
    assert_eq!(s.store().len(), 0);
    let o = s
        .apply_with(&Update::new(&[desired("a", int(9), 10)]), 0, &mut versions)
        .unwrap();
    assert_eq!(o.version, 6);
    // A failing version store rejects the update and leaves the document alone.
    let bytes = s.to_cbor();
    versions.failing = true;
    assert_eq!(
        s.apply_with(&Update::new(&[desired("a", int(1), 11)]), 0, &mut versions),
        Err(ShadowError::Storage)
    );
    assert_eq!(s.to_cbor(), bytes);
}

#[test]
fn limits_are_distinct_errors_and_leave_no_trace() {
    let limits = Limits {
        max_depth: 2,
        max_key_len: 4,
        max_token_len: 8,
        max_fields: 3,
        max_encoded_len: 100,
        token_window_ms: 1_000,
        max_drift_ms: u64::MAX,
    };
    let mut s: Shadow<FixedStore<4>> =
        Shadow::new(FixedStore::new(), Policy::LastWriterWins, limits);
    s.apply(&Update::new(&[desired("a", int(1), 1)]), 0)
        .unwrap();
    let before = s.to_cbor();
    let cases: Vec<(Vec<Write>, Option<&str>, ShadowError)> = vec![
        (
            vec![desired("a.b.c", int(1), 2)],
            None,
            ShadowError::TooDeep { depth: 3, max: 2 },
        ),
        (
            vec![desired("abcde", int(1), 2)],
            None,
            ShadowError::KeyTooLong { len: 5, max: 4 },
        ),
        (
            vec![desired("b", int(1), 2)],
            Some("123456789"),
            ShadowError::TokenTooLong { len: 9, max: 8 },
        ),
        (
            vec![
                desired("b", int(1), 2),
                desired("c", int(1), 2),
                desired("d", int(1), 2),
            ],
            None,
            ShadowError::TooManyFields { count: 4, max: 3 },
        ),
        (
            vec![
                desired("b", Value::text(&"x".repeat(40)).unwrap(), 2),
                desired("c", Value::text(&"y".repeat(40)).unwrap(), 2),
            ],
            None,
            ShadowError::TooLarge { size: 0, max: 100 },
        ),
        (
            vec![desired("a.b", int(1), 2)],
            None,
            ShadowError::PathConflict,
        ),
        (
            vec![desired("b", int(1), 2), desired("b", int(2), 3)],
            None,
            ShadowError::DuplicateWrite,
        ),
        (
            vec![desired("a", int(2), 1)],
            None,
            ShadowError::ContradictoryWrite,
        ),
    ];
    for (writes, token, expected) in cases {
        let mut update = Update::new(&writes);
        update.client_token = token;
        let err = s.apply(&update, 0).unwrap_err();
        match (err, expected) {
            (ShadowError::TooLarge { size, max }, ShadowError::TooLarge { .. }) => {
                assert!(size > max);
            }
            (got, want) => assert_eq!(got, want),
        }
        assert_eq!(s.to_cbor(), before, "{expected:?} left a trace");
        assert_eq!(s.version(), 1);
    }
    // The store itself is full: its own error.
    let limits = Limits {
        max_fields: 100,
        ..Limits::DEFAULT
    };
    let mut small: Shadow<FixedStore<1>> =
        Shadow::new(FixedStore::new(), Policy::LastWriterWins, limits);
    small
        .apply(&Update::new(&[desired("a", int(1), 1)]), 0)
        .unwrap();
    assert_eq!(
        small.apply(&Update::new(&[desired("b", int(1), 2)]), 0),
        Err(ShadowError::StoreFull { capacity: 1 })
    );
    // A rejected token is not remembered: the same token works afterwards.
    let w = [desired("z", int(1), 3)];
    let o = s.apply(&Update::new(&w).with_token("ok"), 0).unwrap();
    assert!(o.changed);
}

#[test]
fn stamp_is_at_most_sixteen_bytes() {
    assert!(core::mem::size_of::<Stamp>() <= 16);
}

#[test]
fn encoded_len_tracks_the_document_exactly() {
    let mut s: Shadow<FixedStore<16>> = Shadow::default_fixed();
    let mut buf = [0u8; 1024];
    for (i, w) in [
        desired("a", int(1), 1),
        desired("b.c", Value::text("hello").unwrap(), 2),
        reported("a", int(300), 3),
        desired("a", Value::Null, 4),
        reported("b.c", Value::float(0.1).unwrap(), 5),
    ]
    .into_iter()
    .enumerate()
    {
        s.apply(&Update::new(&[w]), 0).unwrap();
        let n = s.encode_document(&mut buf).unwrap();
        assert_eq!(n, s.encoded_len(), "after write {i}");
    }
    s.prune_tombstones(HlcTimestamp {
        time: u64::MAX,
        node: iot_shadow::iot_core::NodeId(u32::MAX),
    });
    assert_eq!(s.encode_document(&mut buf).unwrap(), s.encoded_len());
}

fn leaves(s: &Backend) -> Vec<(Section, String, iot_shadow::Leaf)> {
    s.store()
        .entries()
        .map(|(sec, p, l)| (sec, p.as_str().to_owned(), l.clone()))
        .collect()
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..4).prop_map(Value::Int),
    ]
}

fn any_write() -> impl Strategy<Value = Write> {
    (
        prop::sample::select(vec!["a", "b", "c.d", "c.e"]),
        any::<bool>(),
        small_value(),
        1u64..50,
    )
        .prop_map(|(p, des, v, t)| {
            if des {
                desired(p, v, t)
            } else {
                reported(p, v, t)
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Item 4: each accepted update raises the version by exactly one iff it changes the
    /// canonical document; a no-op leaves both alone.
    #[test]
    fn version_rises_by_one_exactly_when_state_changes(
        updates in prop::collection::vec(prop::collection::vec(any_write(), 1..4), 1..12)
    ) {
        let mut s = backend();
        for writes in updates {
            let before = (s.to_cbor(), s.version());
            let leaves_before = leaves(&s);
            match s.apply(&Update::new(&writes), 0) {
                Ok(o) => {
                    prop_assert_eq!(o.changed, leaves(&s) != leaves_before);
                    prop_assert_eq!(o.version, before.1 + u64::from(o.changed));
                    prop_assert_eq!(s.version(), o.version);
                }
                Err(_) => {
                    prop_assert_eq!(s.to_cbor(), before.0);
                    prop_assert_eq!(s.version(), before.1);
                }
            }
        }
    }

    /// Item 1: the delta is exactly the desired leaves with a value absent from or different
    /// in reported.
    #[test]
    fn delta_is_exactly_the_differing_desired_leaves(
        writes in prop::collection::vec(any_write(), 0..16)
    ) {
        let mut s = backend();
        for w in &writes {
            let _ = s.apply(&Update::new(core::slice::from_ref(w)), 0);
        }
        let expected: Vec<(String, Value)> = s
            .section(Section::Desired)
            .filter(|(_, l)| !l.value.is_null())
            .filter(|(p, l)| s.value(Section::Reported, p) != Some(&l.value))
            .map(|(p, l)| (p.as_str().to_owned(), l.value.clone()))
            .collect();
        prop_assert_eq!(delta_of(&s), expected);
        for (p, _) in delta_of(&s) {
            prop_assert!(s.value(Section::Desired, &path(&p)).is_some());
        }
    }

    /// Item 2: applying the delta twice equals applying it once, and leaves it empty.
    #[test]
    fn applying_the_delta_twice_equals_once(
        writes in prop::collection::vec(any_write(), 0..16)
    ) {
        let mut s = backend();
        for w in &writes {
            let _ = s.apply(&Update::new(core::slice::from_ref(w)), 0);
        }
        let report: Vec<Write> = s
            .delta()
            .map(|(p, l)| reported(p.as_str(), l.value.clone(), 100))
            .collect();
        s.apply(&Update::new(&report), 0).unwrap();
        prop_assert!(s.delta_is_empty());
        let once = (s.to_cbor(), s.version());
        let again = s.apply(&Update::new(&report), 0).unwrap();
        prop_assert!(!again.changed);
        prop_assert_eq!((s.to_cbor(), s.version()), once);
    }
}

trait DefaultFixed {
    fn default_fixed() -> Self;
}

impl<const N: usize> DefaultFixed for Shadow<FixedStore<N>> {
    fn default_fixed() -> Self {
        Shadow::new(FixedStore::new(), Policy::LastWriterWins, Limits::DEFAULT)
    }
}
