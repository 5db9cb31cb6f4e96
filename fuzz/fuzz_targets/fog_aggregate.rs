//! `FogAggregate::decode` (what a cloud receives from a fog gateway) and `store_into` the
//! cloud's rollups. Never panics; what decodes re-encodes to exactly `cbor_len` bytes that
//! decode to the same aggregate (a fixed point); storing any decoded aggregate either works or
//! is refused with an error, and a query after it stays consistent.
//!
//! Input: a record stream (`src/lib.rs`), one aggregate per record.
#![no_main]

use iot_fleet::gateway::FogAggregate;
use iot_fleet::retention::{RetentionPolicy, SeriesStore};
use iot_fuzz::records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut store) = SeriesStore::new(RetentionPolicy::default()) else {
        return;
    };
    for record in records(data).take(64) {
        let Ok(aggregate) = FogAggregate::decode(record.bytes) else {
            continue;
        };
        let len = minicbor::len(aggregate);
        let mut buf = vec![0u8; len];
        assert_eq!(
            aggregate.encode_into(&mut buf),
            Ok(len),
            "cbor_len is exact"
        );
        let again = FogAggregate::decode(&buf).expect("a re-encoded aggregate decodes");
        let mut buf2 = vec![0u8; len];
        assert_eq!(again.encode_into(&mut buf2), Ok(len));
        assert_eq!(buf, buf2, "the encoding is a fixed point");
        assert_eq!(again.key(), aggregate.key());
        let a = &aggregate.summary.aggregate;
        if let (Some(min), Some(max)) = (a.min(), a.max()) {
            assert!(min <= max, "decode accepted min > max");
        }
        let before = store.rollup_len(&aggregate.key());
        if aggregate.store_into(&mut store).is_ok() {
            assert!(store.rollup_len(&aggregate.key()) >= before);
        }
        let key = aggregate.key();
        let _ = store.rollups(&key, 0, u64::MAX);
        let _ = store.query(&key, 0, u64::MAX, usize::from(record.step).max(1));
        if record.control & 1 != 0 {
            let _ = store.prune(aggregate.summary.start_ms);
        }
    }
});
