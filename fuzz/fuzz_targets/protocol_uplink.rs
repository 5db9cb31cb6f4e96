//! `Uplink::decode` (what a backend reads from a device) over every envelope kind: never
//! panics; what decodes keeps its kind, encodes into a fixed buffer to the same bytes as
//! `to_vec`, and decodes again to the same message.
#![no_main]

use iot_fuzz::kind_of;
use iot_protocol::Uplink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    let kind = kind_of(first);
    let Ok(message) = Uplink::decode(kind, payload) else {
        return;
    };
    assert_eq!(
        message.kind(),
        kind,
        "a decoded message keeps its envelope kind"
    );
    let bytes = message.to_vec();
    let mut buf = [0u8; 1024];
    let n = message
        .encode(&mut buf)
        .expect("a decoded uplink fits 1 KiB");
    assert_eq!(&buf[..n], bytes.as_slice(), "encode and to_vec agree");
    let again = Uplink::decode(kind, &bytes).expect("an encoded uplink decodes");
    assert_eq!(again, message);
    assert_eq!(again.to_vec(), bytes, "the encoding is canonical");
});
