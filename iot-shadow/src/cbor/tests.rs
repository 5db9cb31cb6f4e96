use iot_core::codec::{DecodeError, EncodeError};
use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;

use super::compress::*;
use super::decode::*;
use super::encode::*;
use super::*;
use crate::path::Path;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::Section;
use crate::update::Write;
use crate::value::Scalar;
use crate::value::Value;

fn w(section: Section, path: &str, value: Value, time: u64) -> Write {
    Write::new(
        section,
        Path::new(path).unwrap(),
        value,
        Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(300),
            },
            Policy::DeviceWins,
            Origin::Device,
        ),
    )
}

#[test]
fn messages_round_trip_in_canonical_order() {
    let writes = [
        w(Section::Reported, "zz", Value::Int(-5), 1 << 40),
        w(Section::Desired, "b.c", Value::text("on").unwrap(), 7),
        w(Section::Desired, "a", Value::Null, 8),
        w(
            Section::Reported,
            "arr",
            Value::array(&[Scalar::Bool(true), Scalar::Float(0.1)]).unwrap(),
            9,
        ),
    ];
    let header = Header {
        kind: Kind::Update,
        version: Some(4),
        client_token: Some("tok-1"),
    };
    let mut buf = [0u8; 256];
    let n = encode_writes(&header, &writes, &mut buf).unwrap();
    let mut out: heapless::Vec<Write, 8> = heapless::Vec::new();
    let back = decode_message(&buf[..n], &mut out).unwrap();
    assert_eq!(back, header);
    let order: std::vec::Vec<&str> = out.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(order, ["a", "b.c", "zz", "arr"]);
    for x in &writes {
        assert!(out.contains(x));
    }
    // Re-encoding the decoded writes gives the same bytes.
    let mut again = [0u8; 256];
    let m = encode_writes(&back, &out, &mut again).unwrap();
    assert_eq!(&buf[..n], &again[..m]);
    // The size formula agrees with the encoder.
    let costs = writes
        .iter()
        .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
    assert_eq!(message_len(&header, costs), n);
}

/// The bound that lets `encode_into` skip measuring holds for the largest messages,
/// and a buffer below the bound (measured first) gets the same bytes as one above it.
#[test]
fn largest_messages_stay_within_the_length_bound() {
    let key = |i: usize| {
        let mut p = std::format!("{i:02}");
        while p.len() < crate::path::PATH_CAPACITY {
            p.push('k');
        }
        p
    };
    let text = "t".repeat(crate::value::TEXT_CAPACITY);
    let token = "x".repeat(crate::policy::CLIENT_TOKEN_CAPACITY);
    for n in 0..=16usize {
        let writes: std::vec::Vec<Write> = (0..n)
            .map(|i| {
                let section = if i % 2 == 0 {
                    Section::Desired
                } else {
                    Section::Reported
                };
                let mut x = w(section, &key(i), Value::text(&text).unwrap(), 0);
                x.stamp.time = u64::MAX - i as u64;
                x.stamp.node = NodeId(u32::MAX - i as u32);
                x
            })
            .collect();
        let header = Header {
            kind: Kind::Document,
            version: Some(u64::MAX),
            client_token: Some(&token),
        };
        let mut big = std::vec![0u8; 4096];
        let len = encode_writes(&header, &writes, &mut big).unwrap();
        assert!(len <= length_bound(&header, n), "{n} leaves: {len} bytes");
        let mut exact = std::vec![0u8; len];
        assert_eq!(encode_writes(&header, &writes, &mut exact), Ok(len));
        assert_eq!(exact.as_slice(), &big[..len]);
        let mut short = std::vec![0u8; len - 1];
        assert_eq!(
            encode_writes(&header, &writes, &mut short),
            Err(EncodeError::BufferTooSmall {
                needed: len,
                available: len - 1
            })
        );
    }
}

#[test]
fn more_distinct_clocks_than_the_fast_path_holds() {
    let names: std::vec::Vec<std::string::String> = (0..40).map(|i| std::format!("k{i}")).collect();
    let writes: std::vec::Vec<Write> = names
        .iter()
        .enumerate()
        .map(|(i, n)| w(Section::Reported, n, Value::Int(i as i64), 1_000 - i as u64))
        .collect();
    let header = Header {
        kind: Kind::Document,
        version: Some(9),
        client_token: None,
    };
    let mut buf = [0u8; 2048];
    let n = encode_writes(&header, &writes, &mut buf).unwrap();
    let costs = writes
        .iter()
        .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
    assert_eq!(message_len(&header, costs), n);
    let mut out: heapless::Vec<Write, 40> = heapless::Vec::new();
    decode_message(&buf[..n], &mut out).unwrap();
    for x in &writes {
        assert!(out.contains(x));
    }
    // Past both fast paths (32 clocks, 8 default candidates): every ref is used once, so
    // the default is the smallest (clock 0), and only that leaf is bare.
    let mut costs = writes
        .iter()
        .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
    let table = ClockTable::new(costs.clone().map(|l| l.clock));
    assert!(table.index.overflow);
    let chosen = Census::of(&table, costs.clone()).default;
    let last = costs.find(|l| l.clock.0 == 961).unwrap();
    assert_eq!(chosen, Some(table.reference(last.clock, last.flags)));
    assert_eq!(chosen, Some(5));
}

fn stamp(time: u64, node: u32, policy: Policy, origin: Origin) -> Stamp {
    Stamp::new(
        HlcTimestamp {
            time,
            node: NodeId(node),
        },
        policy,
        origin,
    )
}

fn decode_all(bytes: &[u8]) -> Result<heapless::Vec<Write, 8>, DecodeError> {
    let mut out = heapless::Vec::new();
    decode_message(bytes, &mut out)?;
    Ok(out)
}

#[test]
fn leaves_with_the_default_ref_are_bare_values() {
    // ref 5 = clock 0, origin device (1 << 2), policy device-wins (1).
    let s = stamp(5, 1, Policy::DeviceWins, Origin::Device);
    let p = |x: &str| Path::new(x).unwrap();
    let array = Value::array(&[Scalar::Int(1)]).unwrap();
    let writes = [
        Write::new(Section::Reported, p("a"), Value::Int(1), s),
        Write::new(Section::Reported, p("b"), Value::Null, s),
        Write::new(Section::Reported, p("c"), array.clone(), s),
    ];
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token: None,
    };
    let mut buf = [0u8; 64];
    let n = encode_writes(&header, &writes, &mut buf).unwrap();
    #[rustfmt::skip]
    let expected = [
        0xa3, 0x00, 0x00,
        0x03, 0x83, 0x05, 0x05, 0x01, // clocks: default ref 5, then (5, node 1)
        0x05, 0xa3,
        0x61, b'a', 0x01, // bare 1
        0x61, b'b', 0xf6, // bare null: a removal with the default ref
        0x61, b'c', 0x82, 0x81, 0x01, 0x05, // an array keeps [value, ref]
    ];
    assert_eq!(&buf[..n], &expected[..]);
    let costs = writes
        .iter()
        .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
    assert_eq!(message_len(&header, costs), n);
    let out = decode_all(&buf[..n]).unwrap();
    assert_eq!(&out[..], &writes[..]);

    // The wrapped form of a default-ref leaf decodes to the same leaf.
    #[rustfmt::skip]
    let wrapped = [
        0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa3,
        0x61, b'a', 0x82, 0x01, 0x05,
        0x61, b'b', 0x82, 0xf6, 0x05,
        0x61, b'c', 0x82, 0x81, 0x01, 0x05,
    ];
    assert_eq!(&decode_all(&wrapped).unwrap()[..], &writes[..]);
}

#[test]
fn bare_leaves_need_a_valid_default() {
    for (bytes, error) in [
        // A bare leaf without a default.
        (
            &[
                0xa3, 0x00, 0x00, 0x03, 0x82, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x01,
            ][..],
            DecodeError::Malformed,
        ),
        // A bare leaf without any clock table.
        (
            &[0xa2, 0x00, 0x00, 0x05, 0xa1, 0x61, b'a', 0x01],
            DecodeError::Malformed,
        ),
        // A default whose clock index (1) is out of range.
        (
            &[
                0xa3, 0x00, 0x00, 0x03, 0x83, 0x0d, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x01,
            ],
            DecodeError::InvalidValue,
        ),
        // A default without clocks.
        (
            &[0xa2, 0x00, 0x00, 0x03, 0x81, 0x05],
            DecodeError::Malformed,
        ),
        // An indefinite-length leaf array.
        (
            &[
                0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x9f, 0x01,
                0x05, 0xff,
            ],
            DecodeError::Malformed,
        ),
        // A leaf array of the wrong length.
        (
            &[
                0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x83, 0x01,
                0x05, 0x05,
            ],
            DecodeError::Malformed,
        ),
    ] {
        assert_eq!(decode_all(bytes), Err(error), "{bytes:x?}");
    }
}

#[test]
fn malformed_messages_are_rejected() {
    let mut out: heapless::Vec<Write, 1> = heapless::Vec::new();
    // Missing kind, unknown kind, keys out of order, trailing bytes.
    for bytes in [
        &[0xa0][..],
        &[0xa2, 0x00, 0x09, 0x01, 0x00],
        &[0xa2, 0x01, 0x00, 0x00, 0x01],
        &[0xa2, 0x00, 0x01, 0x01, 0x00, 0x00],
        &[0xa1, 0x00, 0x01],
    ] {
        assert!(decode_message(bytes, &mut out).is_err(), "{bytes:x?}");
    }
    let writes = [
        w(Section::Desired, "a", Value::Int(1), 1),
        w(Section::Desired, "b", Value::Int(1), 1),
    ];
    let header = Header {
        kind: Kind::Document,
        version: Some(1),
        client_token: None,
    };
    let mut buf = [0u8; 64];
    let n = encode_writes(&header, &writes, &mut buf).unwrap();
    assert_eq!(
        decode_message(&buf[..n], &mut out),
        Err(DecodeError::CapacityExceeded)
    );
    assert!(matches!(
        encode_writes(&header, &writes, &mut buf[..3]),
        Err(EncodeError::BufferTooSmall { .. })
    ));
}
/// Leaves drawn from small pools of clocks and flags, so refs repeat, often exceed the 8
/// default candidates and need two-byte refs (clock index 3 and up).
fn any_writes() -> impl proptest::strategy::Strategy<Value = std::vec::Vec<Write>> {
    use proptest::prelude::*;
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-1e6f64..1e6).prop_map(|f| Value::float(f).unwrap()),
        "[a-z]{0,30}".prop_map(|t| Value::text(&t).unwrap()),
        prop::collection::vec(any::<i64>(), 0..3).prop_map(|v| {
            let scalars: std::vec::Vec<Scalar<'_>> = v.into_iter().map(Scalar::Int).collect();
            Value::array(&scalars).unwrap()
        }),
    ];
    let times = [0u64, 7, 23, 24, 255, 256, 1 << 40, u64::MAX];
    let leaf = (value, 0usize..12, 0u8..4, 0u8..2);
    prop::collection::btree_map((any::<bool>(), 0u16..300), leaf, 0..24).prop_map(move |leaves| {
        leaves
            .into_iter()
            .map(|((desired, key), (value, clock, policy, origin))| {
                let section = if desired {
                    Section::Desired
                } else {
                    Section::Reported
                };
                let st = stamp(
                    times[clock % times.len()],
                    (clock / times.len()) as u32 * 1000,
                    Policy::from_code(policy).unwrap(),
                    Origin::from_code(origin).unwrap(),
                );
                let path = Path::new(&std::format!("k{key}")).unwrap();
                Write::new(section, path, value, st)
            })
            .collect()
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

    /// The size formula is exact, the message round-trips to the same bytes, the default
    /// follows its rule, always saves bytes, and with at most 8 refs is optimal.
    #[test]
    fn encoded_length_is_exact_and_the_default_ref_follows_its_rule(writes in any_writes()) {
        use proptest::{prop_assert, prop_assert_eq};
        let header = Header {
            kind: Kind::Document,
            version: Some(3),
            client_token: Some("t"),
        };
        let mut buf = std::vec![0u8; 4096];
        let n = encode_writes(&header, &writes, &mut buf).unwrap();
        let costs = writes
            .iter()
            .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
        prop_assert_eq!(message_len(&header, costs.clone()), n);
        let d = Sorted::new(&writes, Section::Desired);
        let r = Sorted::new(&writes, Section::Reported);
        prop_assert_eq!(encoded_len(&header, d, r), n);

        let mut out: heapless::Vec<Write, 48> = heapless::Vec::new();
        prop_assert_eq!(decode_message(&buf[..n], &mut out), Ok(header));
        prop_assert_eq!(out.len(), writes.len());
        for x in &writes {
            prop_assert!(out.contains(x));
        }
        let mut again = std::vec![0u8; 4096];
        let m = encode_writes(&header, &out, &mut again).unwrap();
        prop_assert_eq!(&buf[..n], &again[..m]);

        let table = ClockTable::new(costs.clone().map(|l| l.clock));
        let census = Census::of(&table, costs.clone());
        let chosen = census.default;
        // The rule, by brute force: count every ref of a leaf that can be bare; among the
        // 8 smallest, the most bytes saved, ties to the smallest.
        let mut counts = std::collections::BTreeMap::<u64, u32>::new();
        for l in costs.clone().filter(|l| !l.array) {
            *counts.entry(table.reference(l.clock, l.flags)).or_default() += 1;
        }
        let model = counts
            .iter()
            .take(DEFAULT_CANDIDATES)
            .map(|(&r, &c)| (saving(r, c), core::cmp::Reverse(r)))
            .max()
            .map(|(_, core::cmp::Reverse(r))| r);
        prop_assert_eq!(chosen, model);
        let with = |default| Census { default, ..census };
        let best = message_len_with(&header, costs.clone(), &table, &census);
        prop_assert_eq!(best, n);
        // A default always saves bytes; with few refs no other choice saves more.
        let without = message_len_with(&header, costs.clone(), &table, &with(None));
        prop_assert_eq!(chosen.is_some(), best < without);
        if counts.len() <= DEFAULT_CANDIDATES {
            for &other in counts.keys() {
                let len = message_len_with(&header, costs.clone(), &table, &with(Some(other)));
                prop_assert!(best <= len);
            }
        }
    }
}
