//! Property tests for iot-core: clock algebra, codec identity and panic-free decoding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use iot_core::codec::{self, DecodeError};
use iot_core::id::{DeviceId, NodeId, TenantId};
use iot_core::message::{Envelope, EnvelopeBuf, EnvelopeRef, MessageId, MessageKind, QoS};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::time::{ClockError, HlcTimestamp, HybridLogicalClock, MAX_PHYSICAL_MS};
use proptest::prelude::*;

const CASES: u32 = 1_000;

fn id_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,48}"
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    id_string().prop_map(|s| DeviceId::new(&s).unwrap())
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn kind() -> impl Strategy<Value = MessageKind> {
    proptest::sample::select(MessageKind::ALL.to_vec())
}

fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1.0e6f32..1.0e6,
        Just(0.0),
        Just(-0.0),
        Just(f32::MAX),
        Just(f32::MIN_POSITIVE)
    ]
}

fn measurement() -> impl Strategy<Value = Measurement> {
    prop_oneof![
        finite().prop_map(|celsius| Measurement::Temperature { celsius }),
        (0.0f32..=100.0).prop_map(|percent| Measurement::Humidity { percent }),
        (0u8..=100).prop_map(|percent| Measurement::BatteryPercent { percent }),
        finite().prop_map(|volts| Measurement::BatteryVoltage { volts }),
        any::<u16>().prop_map(|count| Measurement::Occupancy { count }),
        any::<i16>().prop_map(|dbm| Measurement::Rssi { dbm }),
        (any::<u16>(), finite()).prop_map(|(id, value)| Measurement::Custom { id, value }),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (any::<u64>(), measurement()).prop_map(|(at, m)| Reading::new(at, m))
}

/// What happens to the wall clock between two events of a node.
#[derive(Debug, Clone)]
enum Event {
    /// Local event at a wall time that may be before the previous one.
    Local { wall_ms: u64 },
    /// A message from another node whose clock is `skew_ms` off (within or beyond the bound).
    Receive {
        wall_ms: u64,
        remote_ms: u64,
        logical: u16,
        node: u32,
    },
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let wall = 0u64..10_000_000;
    let local = wall.clone().prop_map(|wall_ms| Event::Local { wall_ms });
    let receive = (wall, 0u64..20_000_000, any::<u16>(), any::<u32>()).prop_map(
        |(wall_ms, remote_ms, logical, node)| Event::Receive {
            wall_ms,
            remote_ms,
            logical,
            node,
        },
    );
    proptest::collection::vec(prop_oneof![local, receive], 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Local timestamps strictly increase whatever the wall clock does, and received
    /// timestamps within the drift bound are always exceeded by the next local stamp.
    #[test]
    fn hlc_is_strictly_monotonic_under_wall_clock_regression(events in events(), drift in 0u64..5_000_000) {
        let mut hlc = HybridLogicalClock::new(NodeId(1), drift);
        let mut previous: Option<HlcTimestamp> = None;
        for event in events {
            let stamped = match event {
                Event::Local { wall_ms } => Some(hlc.now(wall_ms).unwrap()),
                Event::Receive { wall_ms, remote_ms, logical, node } => {
                    let remote = HlcTimestamp::from_parts(remote_ms, logical, NodeId(node)).unwrap();
                    match hlc.observe(remote, wall_ms) {
                        Ok(ts) => {
                            prop_assert!(ts.time > remote.time, "receive stamp must follow the remote one");
                            Some(ts)
                        }
                        Err(ClockError::DriftExceeded { .. }) => None,
                        Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                    }
                }
            };
            if let Some(ts) = stamped {
                if let Some(p) = previous {
                    prop_assert!(ts > p);
                    prop_assert!(ts.time > p.time);
                }
                prop_assert_eq!(ts.node, NodeId(1));
                previous = Some(ts);
            }
        }
    }

    /// A remote timestamp beyond the drift bound is rejected and leaves the clock unchanged;
    /// one within the bound is accepted.
    #[test]
    fn hlc_rejects_drift_without_moving(
        start in 0u64..1_000_000,
        wall in 0u64..1_000_000,
        drift in 0u64..100_000,
        excess in 1u64..1_000_000,
    ) {
        let mut hlc = HybridLogicalClock::new(NodeId(3), drift);
        hlc.now(start).unwrap();
        let before = hlc.clone().last();
        let too_far = HlcTimestamp::from_parts(wall + drift + excess, 0, NodeId(4)).unwrap();
        let rejected = hlc.observe(too_far, wall);
        prop_assert_eq!(
            rejected,
            Err(ClockError::DriftExceeded { remote_ms: wall + drift + excess, local_ms: wall, max_drift_ms: drift })
        );
        prop_assert_eq!(hlc.last(), before);
        let at_bound = HlcTimestamp::from_parts(wall + drift, 0, NodeId(4)).unwrap();
        prop_assert!(hlc.observe(at_bound, wall).is_ok());
    }

    /// Physical time is never behind the wall clock, and never ahead of the largest physical
    /// time seen (wall or accepted remote): the clock stays close to real time.
    #[test]
    fn hlc_stays_close_to_physical_time(walls in proptest::collection::vec(0u64..MAX_PHYSICAL_MS / 2, 1..100)) {
        let mut hlc = HybridLogicalClock::new(NodeId(1), 0);
        let mut max_wall = 0;
        for w in walls {
            max_wall = max_wall.max(w);
            let ts = hlc.now(w).unwrap();
            prop_assert!(ts.physical_ms() >= w);
            prop_assert!(ts.physical_ms() <= max_wall + 1);
        }
    }

    /// Ids: display then parse is the identity; anything else is rejected.
    #[test]
    fn device_id_display_parse_round_trip(s in id_string()) {
        let id: DeviceId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(id.to_string().parse::<DeviceId>().unwrap(), id);
    }

    /// Strings with a character outside the alphabet, or over capacity, are errors.
    #[test]
    fn invalid_ids_are_errors(prefix in "[a-z]{0,10}", bad in "[^A-Za-z0-9_.:-]", suffix in "[a-z]{0,10}") {
        let s = format!("{prefix}{bad}{suffix}");
        prop_assert!(s.parse::<DeviceId>().is_err());
        prop_assert!(s.parse::<TenantId>().is_err());
    }

    /// MAC-derived ids are 12 hex digits that parse back to the same id.
    #[test]
    fn mac_ids_round_trip(mac in any::<[u8; 6]>()) {
        let id = DeviceId::from_mac(mac);
        prop_assert_eq!(id.as_str().len(), 12);
        prop_assert!(id.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        prop_assert_eq!(id.as_str().parse::<DeviceId>().unwrap(), id);
    }

    /// encode -> decode is the identity for arbitrary envelopes, and `encoded_len` is exact.
    #[test]
    fn envelope_encode_decode_identity(
        device in device_id(),
        seq in any::<u32>(),
        id in any::<u32>(),
        qos in qos(),
        kind in kind(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let env = Envelope { device, seq, id: MessageId(id), qos, kind, payload: payload.as_slice() };
        let mut buf = vec![0u8; env.encoded_len()];
        let n = env.encode_into(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(EnvelopeRef::decode(&buf).unwrap(), env);
        let owned: EnvelopeBuf<300> = Envelope::decode(&buf).unwrap();
        prop_assert_eq!(owned.as_ref(), env);
        // One byte short is always reported, never written past.
        if n > 0 {
            let mut short = vec![0u8; n - 1];
            prop_assert!(env.encode_into(&mut short).is_err());
        }
    }

    /// Equal envelopes encode to equal bytes; different envelopes to different bytes.
    #[test]
    fn envelope_encoding_is_canonical(a_seq in any::<u32>(), b_seq in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..16)) {
        let dev = DeviceId::new("d").unwrap();
        let mk = |seq| Envelope { device: dev, seq, id: MessageId(1), qos: QoS::AtMostOnce, kind: MessageKind::Telemetry, payload: payload.as_slice() };
        let (a, b) = (mk(a_seq), mk(b_seq));
        let (ea, eb) = (codec::encode_to_vec(&a).unwrap(), codec::encode_to_vec(&b).unwrap());
        prop_assert_eq!(ea == eb, a == b);
    }

    /// Telemetry batches round-trip with exact length.
    #[test]
    fn telemetry_encode_decode_identity(readings in proptest::collection::vec(reading(), 0..16)) {
        let mut batch: Telemetry<16> = Telemetry::new();
        for r in &readings {
            batch.push(*r).unwrap();
        }
        let bytes = codec::encode_to_vec(&batch).unwrap();
        prop_assert_eq!(bytes.len(), codec::encoded_len(&batch));
        let back: Telemetry<16> = codec::decode(&bytes).unwrap();
        // -0.0 is written as 0.0, which compares equal.
        prop_assert_eq!(back, batch);
    }

    /// HLC timestamps round-trip through CBOR.
    #[test]
    fn hlc_timestamp_encode_decode_identity(time in any::<u64>(), node in any::<u32>()) {
        let ts = HlcTimestamp { time, node: NodeId(node) };
        let bytes = codec::encode_to_vec(&ts).unwrap();
        prop_assert_eq!(bytes.len(), codec::encoded_len(&ts));
        prop_assert_eq!(codec::decode::<HlcTimestamp>(&bytes).unwrap(), ts);
    }

    /// Arbitrary bytes never make a decoder panic.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = EnvelopeRef::decode(&bytes);
        let _ = EnvelopeBuf::<64>::decode(&bytes);
        let _ = codec::decode::<Telemetry<8>>(&bytes);
        let _ = codec::decode::<Reading>(&bytes);
        let _ = codec::decode::<HlcTimestamp>(&bytes);
        let _ = codec::decode::<DeviceId>(&bytes);
    }

    /// Every strict prefix of a valid encoding is an error, and no bit flip panics; a flip
    /// that still decodes yields a value that re-encodes without error.
    #[test]
    fn truncations_and_bit_flips_of_valid_encodings_never_panic(
        device in device_id(),
        seq in any::<u32>(),
        kind in kind(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        readings in proptest::collection::vec(reading(), 0..6),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let env = Envelope { device, seq, id: MessageId(seq ^ 0x5a5a), qos: QoS::AtLeastOnce, kind, payload: payload.as_slice() };
        let bytes = codec::encode_to_vec(&env).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(EnvelopeRef::decode(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        let at = flip.index(flipped.len());
        flipped[at] ^= 1 << bit;
        if let Ok(e) = EnvelopeRef::decode(&flipped) {
            prop_assert!(codec::encode_to_vec(&e).is_ok());
        }

        let mut batch: Telemetry<6> = Telemetry::new();
        for r in &readings {
            batch.push(*r).unwrap();
        }
        let bytes = codec::encode_to_vec(&batch).unwrap();
        for cut in 0..bytes.len() {
            let r = codec::decode::<Telemetry<6>>(&bytes[..cut]);
            prop_assert!(r.is_err());
        }
        let mut flipped = bytes.clone();
        let at = flip.index(flipped.len());
        flipped[at] ^= 1 << bit;
        if let Ok(t) = codec::decode::<Telemetry<6>>(&flipped) {
            prop_assert!(codec::encode_to_vec(&t).is_ok());
        }
    }
}

#[test]
fn truncated_envelope_reports_truncation() {
    let env = Envelope {
        device: DeviceId::new("dev").unwrap(),
        seq: 1,
        id: MessageId(2),
        qos: QoS::AtMostOnce,
        kind: MessageKind::Heartbeat,
        payload: &[9u8; 10][..],
    };
    let bytes = codec::encode_to_vec(&env).unwrap();
    assert_eq!(
        EnvelopeRef::decode(&bytes[..bytes.len() - 1]),
        Err(DecodeError::Truncated)
    );
}
