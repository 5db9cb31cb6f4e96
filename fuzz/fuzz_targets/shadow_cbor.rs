//! Canonical CBOR decoding of shadow messages: never panics, and whatever decodes re-encodes
//! to bytes that decode to the same message.
#![no_main]

use iot_shadow::OwnedMessage;
use iot_shadow::cbor::decode_message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The device path: fixed capacity, no allocation.
    let mut fixed: heapless::Vec<iot_shadow::Write, 8> = heapless::Vec::new();
    let _ = decode_message(data, &mut fixed);
    // The backend path, and the round trip.
    if let Ok(msg) = OwnedMessage::from_cbor(data) {
        let bytes = msg.to_cbor().expect("a decoded message encodes");
        let again = OwnedMessage::from_cbor(&bytes).expect("canonical bytes decode");
        assert_eq!(again, msg);
    }
});
