//! Outbox, fragmentation and framing throughput, each beside the plain-std code a user
//! would otherwise write, in one run.
//!
//! * `outbox/ours/32x64B`: `Outbox<32, 128>` — push 32 messages of 64 bytes (ids, priority,
//!   QoS 1), send each in priority order (`next_due` + `mark_sent`, scheduling its
//!   retransmission with jittered backoff), then acknowledge each by id.
//!   `outbox/vecdeque/32x64B`: a `VecDeque<(u32, Vec<u8>)>` FIFO doing the same pushes,
//!   sends (front to back) and acknowledgements by id — no priorities, retries, limits or
//!   counters: the floor the guarantees are measured against.
//! * `fragment/ours/1KiB_mtu64`: a 1 KiB payload cut by `Fragmenter` into 64-byte
//!   fragments (5-byte header) and put back by `Reassembler<4, 1024>`, fragments delivered
//!   in reverse order. `fragment/naive/1KiB_mtu64`: `chunks()` into `Vec<u8>` fragments
//!   with the same header, reassembled in a `HashMap<u8, Vec<Option<Vec<u8>>>>`.
//! * `framing/ours/256B`: COBS + CRC-16 `encode_frame`, then the streaming `FrameDecoder`
//!   fed byte by byte (no peer: the plain alternative has no integrity check).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use iot_core::{MessageId, QoS};
use iot_transport::SplitMix64;
use iot_transport::fragment::{Feed, Fragmenter, HEADER_LEN, Reassembler};
use iot_transport::framing::{FrameDecoder, encode_frame, max_encoded_len};
use iot_transport::outbox::{Outbox, OverflowPolicy, Priority};
use iot_transport::retry::BackoffPolicy;

const MESSAGES: usize = 32;
const PAYLOAD: usize = 64;

fn payload(i: usize) -> [u8; PAYLOAD] {
    core::array::from_fn(|k| (i * 31 + k) as u8)
}

fn outbox_ours(payloads: &[[u8; PAYLOAD]], rng: &mut SplitMix64) -> u32 {
    let mut outbox: Outbox<MESSAGES, 128> =
        Outbox::new(OverflowPolicy::RejectNewest, BackoffPolicy::new(100, 5_000));
    for (i, p) in payloads.iter().enumerate() {
        let priority = if i % 4 == 0 {
            Priority::High
        } else {
            Priority::Normal
        };
        outbox
            .push(MessageId(i as u32), priority, QoS::AtLeastOnce, p, 0)
            .unwrap();
    }
    while let Some(id) = outbox.next_due(0).map(|e| e.id) {
        black_box(outbox.mark_sent(id, 0, rng).unwrap());
    }
    for i in 0..payloads.len() {
        assert!(outbox.ack(MessageId(i as u32)));
    }
    outbox.stats().acked
}

fn outbox_vecdeque(payloads: &[[u8; PAYLOAD]]) -> usize {
    let mut queue: VecDeque<(u32, Vec<u8>)> = VecDeque::with_capacity(MESSAGES);
    for (i, p) in payloads.iter().enumerate() {
        queue.push_back((i as u32, p.to_vec()));
    }
    for (id, data) in &queue {
        black_box((id, data.as_slice()));
    }
    let mut acked = 0;
    for i in 0..payloads.len() {
        if let Some(pos) = queue.iter().position(|(id, _)| *id == i as u32) {
            queue.remove(pos);
            acked += 1;
        }
    }
    acked
}

fn fragment_ours(
    data: &[u8],
    mtu: usize,
    reassembler: &mut Reassembler<4, 1024>,
    tag: u8,
) -> usize {
    let mut frags = Fragmenter::new(data, tag, mtu).unwrap();
    let mut buf = [[0u8; 64]; 24];
    let mut lens = [0usize; 24];
    let count = usize::from(frags.count());
    for (slot, len) in buf.iter_mut().zip(lens.iter_mut()).take(count) {
        *len = frags.next_into(&mut slot[..mtu]).unwrap().unwrap();
    }
    let mut done = 0;
    for k in (0..count).rev() {
        if let Feed::Complete(n) = reassembler.push(&buf[k][..lens[k]], 0).unwrap() {
            done = reassembler.take(n).unwrap().len();
        }
    }
    done
}

fn fragment_naive(data: &[u8], mtu: usize, tag: u8) -> usize {
    let room = mtu - HEADER_LEN;
    let count = data.len().div_ceil(room);
    let frags: Vec<Vec<u8>> = data
        .chunks(room)
        .enumerate()
        .map(|(i, c)| {
            let mut f = Vec::with_capacity(HEADER_LEN + c.len());
            f.extend_from_slice(&[tag, i as u8, count as u8]);
            f.extend_from_slice(&(data.len() as u16).to_be_bytes());
            f.extend_from_slice(c);
            f
        })
        .collect();
    let mut pending: HashMap<u8, Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut done = 0;
    for f in frags.iter().rev() {
        let (tag, index, count) = (f[0], usize::from(f[1]), usize::from(f[2]));
        let slots = pending.entry(tag).or_insert_with(|| vec![None; count]);
        slots[index] = Some(f[HEADER_LEN..].to_vec());
        if slots.iter().all(Option::is_some) {
            let slots = pending.remove(&tag).unwrap();
            let whole: Vec<u8> = slots.into_iter().flatten().flatten().collect();
            done = whole.len();
        }
    }
    done
}

fn framing_ours(data: &[u8], decoder: &mut FrameDecoder<300>) -> usize {
    let mut wire = [0u8; max_encoded_len(256)];
    let n = encode_frame(data, &mut wire).unwrap();
    let mut got = 0;
    for &b in &wire[..n] {
        if let Some(frame) = decoder.push(b).unwrap() {
            got = frame.len();
        }
    }
    got
}

fn bench(c: &mut Criterion) {
    let payloads: Vec<[u8; PAYLOAD]> = (0..MESSAGES).map(payload).collect();
    let mut g = c.benchmark_group("outbox");
    g.sample_size(50);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(MESSAGES as u64));
    let mut rng = SplitMix64::new(7);
    g.bench_function(BenchmarkId::new("ours", "32x64B"), |b| {
        b.iter(|| outbox_ours(black_box(&payloads), &mut rng))
    });
    g.bench_function(BenchmarkId::new("vecdeque", "32x64B"), |b| {
        b.iter(|| outbox_vecdeque(black_box(&payloads)))
    });
    g.finish();

    let data: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
    let mtu = 64;
    assert_eq!(fragment_naive(&data, mtu, 1), data.len());
    let mut g = c.benchmark_group("fragment");
    g.sample_size(50);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(data.len() as u64));
    let mut reassembler = Reassembler::<4, 1024>::new(10_000);
    let mut tag = 0u8;
    g.bench_function(BenchmarkId::new("ours", "1KiB_mtu64"), |b| {
        b.iter(|| {
            tag = tag.wrapping_add(1);
            let n = fragment_ours(black_box(&data), mtu, &mut reassembler, tag);
            assert_eq!(n, 1024);
            n
        })
    });
    g.bench_function(BenchmarkId::new("naive", "1KiB_mtu64"), |b| {
        b.iter(|| fragment_naive(black_box(&data), mtu, 1))
    });
    g.finish();

    let frame: Vec<u8> = (0..256).map(|i| (i * 13) as u8).collect();
    let mut g = c.benchmark_group("framing");
    g.sample_size(50);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(frame.len() as u64));
    let mut decoder = FrameDecoder::<300>::new();
    g.bench_function(BenchmarkId::new("ours", "256B"), |b| {
        b.iter(|| {
            let n = framing_ours(black_box(&frame), &mut decoder);
            assert_eq!(n, 256);
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
