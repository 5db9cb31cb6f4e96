//! Algebraic claims of framing, fragmentation and backoff, checked on random inputs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_transport::SplitMix64;
use iot_transport::fragment::{
    Feed, FragmentError, Fragmenter, HEADER_LEN, MAX_FRAGMENTS, Reassembler,
};
use iot_transport::framing::{FrameDecoder, FrameError, encode_frame, max_encoded_len};
use iot_transport::retry::{Backoff, BackoffPolicy, Jitter};
use proptest::prelude::*;

fn decode_all<const N: usize>(
    d: &mut FrameDecoder<N>,
    bytes: &[u8],
) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    for &b in bytes {
        match d.push(b) {
            Ok(Some(f)) => out.push(Ok(f.to_vec())),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Positions of COBS code bytes in an encoded frame (without the delimiter).
fn code_positions(body: &[u8]) -> Vec<usize> {
    let mut at = 0usize;
    let mut v = Vec::new();
    while at < body.len() {
        v.push(at);
        at += usize::from(body[at]);
    }
    v
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn framing_round_trips_any_payload(payload in prop::collection::vec(any::<u8>(), 0..700)) {
        let mut wire = vec![0u8; max_encoded_len(payload.len())];
        let n = encode_frame(&payload, &mut wire).unwrap();
        prop_assert!(n <= max_encoded_len(payload.len()));
        prop_assert_eq!(wire[n - 1], 0);
        prop_assert!(!wire[..n - 1].contains(&0));
        let mut d = FrameDecoder::<720>::new();
        prop_assert_eq!(decode_all(&mut d, &wire[..n]), vec![Ok(payload)]);
    }

    #[test]
    fn framing_resynchronises_after_any_garbage(
        garbage in prop::collection::vec(any::<u8>(), 0..300),
        payload in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut wire = vec![0u8; max_encoded_len(payload.len())];
        let n = encode_frame(&payload, &mut wire).unwrap();
        let mut d = FrameDecoder::<128>::new();
        let mut stream = garbage.clone();
        stream.push(0); // the sender's leading delimiter
        stream.extend_from_slice(&wire[..n]);
        let results = decode_all(&mut d, &stream);
        // The real frame is the last thing decoded, intact; garbage produced only errors or
        // (rarely, if it happens to be a valid frame) frames before it.
        prop_assert_eq!(results.last().cloned(), Some(Ok(payload)));
        let s = d.stats();
        let errors = results.iter().filter(|r| r.is_err()).count() as u32;
        prop_assert_eq!(s.crc_errors + s.malformed + s.overflows, errors);
    }

    #[test]
    fn framing_detects_any_single_bit_error_in_data(
        payload in prop::collection::vec(any::<u8>(), 1..300),
        pick in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut wire = vec![0u8; max_encoded_len(payload.len())];
        let n = encode_frame(&payload, &mut wire).unwrap();
        let codes = code_positions(&wire[..n - 1]);
        let data: Vec<usize> = (0..n - 1).filter(|i| !codes.contains(i)).collect();
        prop_assume!(!data.is_empty());
        let at = data[pick.index(data.len())];
        prop_assume!(wire[at] ^ (1 << bit) != 0);
        wire[at] ^= 1 << bit;
        let mut d = FrameDecoder::<400>::new();
        prop_assert_eq!(decode_all(&mut d, &wire[..n]), vec![Err(FrameError::Crc)]);
    }

    #[test]
    fn fragmentation_round_trips_in_any_order_with_duplicates(
        len in 0usize..=1024,
        mtu in (HEADER_LEN + 1)..=255usize,
        seed in any::<u64>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        order in any::<u64>(),
    ) {
        let mut rng = SplitMix64::new(seed);
        let payload: Vec<u8> = (0..len).map(|_| (rng.next_u64() >> 56) as u8).collect();
        let room = mtu - HEADER_LEN;
        let fits = len.div_ceil(room).max(1) <= MAX_FRAGMENTS;
        let f = Fragmenter::new(&payload, (seed % 256) as u8, mtu);
        if !fits {
            prop_assert_eq!(f.err(), Some(FragmentError::PayloadTooLarge));
            return Ok(());
        }
        let mut f = f.unwrap();
        let mut frags = Vec::new();
        let mut buf = [0u8; 255];
        while let Some(n) = f.next_into(&mut buf).unwrap() {
            prop_assert!(n <= mtu);
            frags.push(buf[..n].to_vec());
        }
        for d in &dups {
            let copy = frags[d.index(frags.len())].clone();
            frags.push(copy);
        }
        // Shuffle deterministically from `order`.
        let mut shuffle = SplitMix64::new(order);
        for i in (1..frags.len()).rev() {
            let j = (shuffle.next_u64() % (i as u64 + 1)) as usize;
            frags.swap(i, j);
        }
        let mut r: Reassembler<2, 1024> = Reassembler::new(60_000);
        let mut completions = 0;
        for frag in &frags {
            match r.push(frag, 0).unwrap() {
                Feed::Complete(n) => {
                    completions += 1;
                    prop_assert_eq!(r.take(n), Some(&payload[..]));
                }
                Feed::Pending | Feed::Duplicate => {}
            }
        }
        // Late duplicates of a completed message never complete it again.
        prop_assert_eq!(completions, 1);
        prop_assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn reassembly_of_garbage_never_panics_and_only_completes_consistently(
        inputs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..40),
    ) {
        let mut r: Reassembler<3, 256> = Reassembler::new(1_000);
        for (t, frag) in inputs.iter().enumerate() {
            if let Ok(Feed::Complete(n)) = r.push(frag, t as u64 * 10) {
                prop_assert_eq!(r.take(n).map(<[u8]>::len), Some(n));
            }
        }
        prop_assert!(r.in_progress() <= 3);
    }

    #[test]
    fn backoff_never_exceeds_cap_or_deadline(
        initial in 0u64..10_000,
        cap in 0u64..100_000,
        multiplier in 0u32..10,
        max_attempts in 0u32..20,
        deadline in prop::option::of(0u64..200_000),
        jitter in jitter(),
        start in 0u64..1_000_000,
        steps in prop::collection::vec(0u64..50_000, 1..40),
        seed in any::<u64>(),
    ) {
        let mut policy = BackoffPolicy::new(initial, cap)
            .with_multiplier(multiplier)
            .with_max_attempts(max_attempts)
            .with_jitter(jitter);
        if let Some(d) = deadline {
            policy = policy.with_deadline_ms(d);
        }
        let mut b = Backoff::new(policy, start);
        let mut rng = SplitMix64::new(seed);
        let mut now = start;
        let mut waits = 0u32;
        let mut previous_base = 0u64;
        for (i, step) in steps.iter().enumerate() {
            now += step;
            match b.next_delay(now, &mut rng) {
                Some(d) => {
                    waits += 1;
                    prop_assert!(d <= cap);
                    if let Some(dl) = deadline {
                        prop_assert!(now + d <= start + dl);
                    }
                    let base = policy.base_delay_ms(i as u32 + 1);
                    prop_assert!(d <= base);
                    if multiplier >= 1 {
                        prop_assert!(base >= previous_base);
                    }
                    previous_base = base;
                    if jitter == Jitter::None && deadline.is_none() {
                        prop_assert_eq!(d, base);
                    }
                    now += d;
                }
                None => {
                    prop_assert!(b.gave_up().is_some());
                    break;
                }
            }
        }
        if max_attempts > 0 {
            prop_assert!(waits < max_attempts);
        }
    }
}

mod selection {
    use iot_transport::link::{LinkInfo, LinkState, Medium};
    use iot_transport::outbox::Priority;
    use iot_transport::select::{LinkSelector, Need, Objective, SelectError, plan};
    use proptest::prelude::*;

    fn link() -> impl Strategy<Value = LinkInfo> {
        (
            6u16..2_000,
            1u32..10_000_000,
            0u32..5_000,
            0u32..5_000_000,
            0u32..10_000,
            any::<bool>(),
        )
            .prop_map(|(mtu, bps, latency, nj, cost, up)| LinkInfo {
                medium: Medium::Simulated,
                mtu,
                bitrate_bps: bps,
                latency_ms: latency,
                energy_nj_per_byte: nj,
                cost_micro_per_kib: cost,
                rssi_dbm: None,
                snr_db: None,
                state: if up { LinkState::Up } else { LinkState::Down },
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn selection_picks_an_eligible_link_no_other_beats(
            links in prop::collection::vec(link(), 1..6),
            size in 0usize..3_000,
            max_latency in prop::option::of(0u64..20_000),
            objective in prop_oneof![Just(Objective::Energy), Just(Objective::Cost), Just(Objective::Latency)],
        ) {
            let mut need = Need::new(size, Priority::Normal);
            if let Some(m) = max_latency {
                need = need.with_max_latency_ms(m);
            }
            let mut s: LinkSelector<6, 4> = LinkSelector::new(objective, 0);
            let key = |p: &iot_transport::select::Plan| match objective {
                Objective::Energy => (p.energy_nj, p.cost_micro, p.delivery_ms),
                Objective::Cost => (p.cost_micro, p.energy_nj, p.delivery_ms),
                Objective::Latency => (p.delivery_ms, p.energy_nj, p.cost_micro),
            };
            match s.select(&need, &links, 0) {
                Ok(sel) => {
                    let chosen = &links[sel.index];
                    prop_assert!(chosen.is_up());
                    let p = plan(&need, chosen).unwrap();
                    prop_assert_eq!(p, sel.plan);
                    if let Some(m) = max_latency {
                        prop_assert!(p.delivery_ms <= m);
                    }
                    for other in links.iter().filter(|l| l.is_up()) {
                        if let Some(q) = plan(&need, other) {
                            prop_assert!(key(&p) <= key(&q));
                        }
                    }
                }
                Err(SelectError::AllDown) => {
                    prop_assert!(links.iter().any(|l| plan(&need, l).is_some()));
                    prop_assert!(links.iter().filter(|l| l.is_up()).all(|l| plan(&need, l).is_none()));
                }
                Err(SelectError::Unsuitable) => {
                    prop_assert!(links.iter().all(|l| plan(&need, l).is_none()));
                }
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
    }
}
