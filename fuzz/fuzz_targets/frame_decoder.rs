//! The serial frame decoder (COBS, CRC-16, delimiter) fed a byte stream as a UART would
//! deliver it: never panics; every frame it delivers re-encodes to a frame that a fresh
//! decoder delivers unchanged; its counters account for every frame; and the input itself,
//! framed, decodes back to the input.
#![no_main]

use iot_transport::framing::{
    FrameDecoder, FrameError, decode_frame_in_place, encode_frame, max_encoded_len,
};
use libfuzzer_sys::fuzz_target;

const N: usize = 256;

/// Pushes `bytes` through a fresh decoder and returns the payloads it delivered.
fn decode_all(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::<N>::new();
    bytes
        .iter()
        .filter_map(|&b| decoder.push(b).ok().flatten().map(<[u8]>::to_vec))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::<N>::new();
    let (mut good, mut bad) = (0u32, 0u32);
    let mut frame = vec![0u8; max_encoded_len(N)];
    for &byte in data {
        match decoder.push(byte) {
            Ok(Some(payload)) => {
                good += 1;
                let payload = payload.to_vec();
                let n = encode_frame(&payload, &mut frame).expect("a delivered payload re-encodes");
                // The body alone (without its delimiter) decodes in place to the payload.
                let mut body = frame[..n - 1].to_vec();
                let len = decode_frame_in_place(&mut body).expect("the body decodes");
                assert_eq!(&body[..len], payload.as_slice());
                assert_eq!(decode_all(&frame[..n]), vec![payload]);
            }
            Ok(None) => {}
            Err(
                FrameError::Overflow
                | FrameError::Crc
                | FrameError::Malformed
                | FrameError::TooShort,
            ) => {
                bad += 1;
            }
            Err(e) => panic!("unexpected frame error {e:?}"),
        }
    }
    let stats = decoder.stats();
    assert_eq!(stats.frames, good);
    assert_eq!(stats.crc_errors + stats.malformed + stats.overflows, bad);

    // The input as a payload: framed, it comes back whole (if it fits the decoder).
    let mut out = vec![0u8; max_encoded_len(data.len())];
    let n = encode_frame(data, &mut out).expect("max_encoded_len is enough");
    assert_eq!(
        out[..n].iter().filter(|&&b| b == 0).count(),
        1,
        "one delimiter, at the end"
    );
    let delivered = decode_all(&out[..n]);
    if n - 1 <= N {
        assert_eq!(delivered, vec![data.to_vec()]);
    } else {
        assert!(delivered.is_empty());
    }
});
