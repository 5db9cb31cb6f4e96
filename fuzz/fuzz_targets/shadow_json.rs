//! AWS-shaped JSON reading: never panics.
#![no_main]

use iot_shadow::Stamp;
use iot_shadow::cbor::Kind;
use iot_shadow::json::{from_json, writes_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [Kind::Update, Kind::Delta, Kind::Document] {
        if let Ok(msg) = from_json(text, kind, Some(Stamp::default())) {
            // What was read can be written back.
            let _ = writes_to_json(&msg.header(), &msg.writes);
        }
    }
});
