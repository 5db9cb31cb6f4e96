//! The AWS resolution mode ([`Shadow::apply_aws_with`]) against the native mode
//! ([`Shadow::apply`]): where AWS defines the outcome, both modes agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::{HlcTimestamp, NodeId};
use iot_shadow::{
    FieldStore, Limits, MapStore, Origin, Path, Policy, Section, Shadow, Update, Value, Volatile,
    Write,
};
use proptest::prelude::*;

const PATHS: [&str; 4] = ["a", "b", "c.d", "c.e"];

type Doc = Shadow<MapStore, Policy>;

/// One request: a section and some (path, value-or-removal) writes at distinct paths.
fn request() -> impl Strategy<Value = (bool, Vec<(usize, Option<i64>)>)> {
    (
        any::<bool>(),
        proptest::sample::subsequence((0..PATHS.len()).collect::<Vec<_>>(), 1..=PATHS.len())
            .prop_flat_map(|paths| {
                let n = paths.len();
                (
                    Just(paths),
                    proptest::collection::vec(proptest::option::of(0i64..3), n),
                )
            })
            .prop_map(|(paths, values)| paths.into_iter().zip(values).collect()),
    )
}

/// The writes of request `i`, stamped in arrival order (as the AWS service stamps them).
fn writes(i: usize, desired: bool, fields: &[(usize, Option<i64>)], policy: Policy) -> Vec<Write> {
    let stamp = iot_shadow::Stamp::new(
        HlcTimestamp::from_parts(1_000 * (i as u64 + 1), 0, NodeId(1)).unwrap(),
        policy,
        Origin::Cloud,
    );
    let section = if desired {
        Section::Desired
    } else {
        Section::Reported
    };
    fields
        .iter()
        .map(|(p, v)| {
            Write::new(
                section,
                Path::new(PATHS[*p]).unwrap(),
                v.map_or(Value::Null, Value::Int),
                stamp,
            )
        })
        .collect()
}

fn live(doc: &Doc, section: Section) -> Vec<(Path, Value)> {
    doc.section(section)
        .filter(|(_, l)| !l.value.is_null())
        .map(|(p, l)| (p.clone(), l.value.clone()))
        .collect()
}

fn delta(doc: &Doc) -> Vec<(Path, Value)> {
    doc.delta()
        .map(|(p, l)| (p.clone(), l.value.clone()))
        .collect()
}

fn new_doc(policy: Policy) -> Doc {
    Shadow::new(MapStore::new(), policy, Limits::DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Under a policy where reports never clear desired (CloudWins, every write by the
    /// cloud), the native mode holds the same values and the same delta as the AWS mode
    /// after any sequence of requests; the AWS mode leaves no tombstone and counts every
    /// request in its version, the native mode only the changing ones.
    #[test]
    fn aws_mode_equals_native_mode_where_reports_never_clear_desired(
        requests in proptest::collection::vec(request(), 1..12),
    ) {
        let mut native = new_doc(Policy::CloudWins);
        let mut aws = new_doc(Policy::CloudWins);
        for (i, (desired, fields)) in requests.iter().enumerate() {
            let w = writes(i, *desired, fields, Policy::CloudWins);
            let n = native.apply(&Update::new(&w), 0).unwrap();
            let a = aws.apply_aws_with(&Update::new(&w), &mut Volatile).unwrap();
            prop_assert_eq!(a.version, i as u64 + 1);
            prop_assert!(n.version <= a.version);
            for s in [Section::Desired, Section::Reported] {
                prop_assert_eq!(live(&native, s), live(&aws, s));
            }
            prop_assert_eq!(delta(&native), delta(&aws));
            prop_assert_eq!(aws.tombstones(), 0);
        }
    }

    /// With the fleet's default policy (last writer wins) the modes agree on every request
    /// sequence that writes one section only: reconciliation only differs when a report
    /// meets a differing desired value.
    #[test]
    fn aws_mode_equals_last_writer_wins_on_one_section(
        desired in any::<bool>(),
        requests in proptest::collection::vec(request(), 1..12),
    ) {
        let mut native = new_doc(Policy::LastWriterWins);
        let mut aws = new_doc(Policy::LastWriterWins);
        for (i, (_, fields)) in requests.iter().enumerate() {
            let w = writes(i, desired, fields, Policy::LastWriterWins);
            native.apply(&Update::new(&w), 0).unwrap();
            aws.apply_aws_with(&Update::new(&w), &mut Volatile).unwrap();
            for s in [Section::Desired, Section::Reported] {
                prop_assert_eq!(live(&native, s), live(&aws, s));
            }
        }
    }

    /// A guarded AWS-mode update at a stale version is refused and changes nothing.
    #[test]
    fn a_stale_version_changes_nothing(
        requests in proptest::collection::vec(request(), 1..6),
        stale in 0u64..5,
    ) {
        let mut aws = new_doc(Policy::LastWriterWins);
        for (i, (desired, fields)) in requests.iter().enumerate() {
            let w = writes(i, *desired, fields, Policy::LastWriterWins);
            aws.apply_aws_with(&Update::new(&w), &mut Volatile).unwrap();
        }
        prop_assume!(stale != aws.version());
        let before: Vec<_> = aws.store().entries().map(|(s, p, l)| (s, p.clone(), l.clone())).collect();
        let w = writes(99, true, &[(0, Some(7))], Policy::LastWriterWins);
        let r = aws.apply_aws_with(&Update::new(&w).expecting(stale), &mut Volatile);
        let conflict = matches!(r, Err(iot_shadow::ShadowError::Conflict { .. }));
        prop_assert!(conflict);
        let after: Vec<_> = aws.store().entries().map(|(s, p, l)| (s, p.clone(), l.clone())).collect();
        prop_assert_eq!(before, after);
    }
}

/// Where the modes differ by design: under last-writer-wins a later differing report
/// clears desired; in the AWS mode desired and the delta stay until reported matches.
#[test]
fn a_report_clears_desired_natively_but_never_in_the_aws_mode() {
    let mut native = new_doc(Policy::LastWriterWins);
    let mut aws = new_doc(Policy::LastWriterWins);
    let set = writes(0, true, &[(0, Some(1))], Policy::LastWriterWins);
    let report = writes(1, false, &[(0, Some(2))], Policy::LastWriterWins);
    for w in [&set, &report] {
        native.apply(&Update::new(w), 0).unwrap();
        aws.apply_aws_with(&Update::new(w), &mut Volatile).unwrap();
    }
    let a = Path::new("a").unwrap();
    assert_eq!(native.value(Section::Desired, &a), None);
    assert!(native.delta_is_empty());
    assert_eq!(aws.value(Section::Desired, &a), Some(&Value::Int(1)));
    assert_eq!(delta(&aws), vec![(a.clone(), Value::Int(1))]);
    let matching = writes(2, false, &[(0, Some(1))], Policy::LastWriterWins);
    aws.apply_aws_with(&Update::new(&matching), &mut Volatile)
        .unwrap();
    assert!(aws.delta_is_empty());
    assert_eq!(aws.value(Section::Desired, &a), Some(&Value::Int(1)));
}

/// An AWS-mode update that repeats the stored values still raises the version (AWS counts
/// every accepted update) while the native mode treats it as a no-op.
#[test]
fn a_repeated_update_raises_the_version_only_in_the_aws_mode() {
    let mut native = new_doc(Policy::LastWriterWins);
    let mut aws = new_doc(Policy::LastWriterWins);
    for i in 0..3 {
        let w = writes(i, false, &[(1, Some(5))], Policy::LastWriterWins);
        native.apply(&Update::new(&w), 0).unwrap();
        aws.apply_aws_with(&Update::new(&w), &mut Volatile).unwrap();
    }
    assert_eq!(native.version(), 1);
    assert_eq!(aws.version(), 3);
}
