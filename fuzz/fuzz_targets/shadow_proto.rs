//! Protobuf decoding of shadow messages: never panics; accepted messages round-trip.
#![no_main]

use iot_shadow::OwnedMessage;
use iot_shadow::proto::ShadowMessage;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(pb) = ShadowMessage::decode(data)
        && let Ok(msg) = OwnedMessage::try_from(pb)
    {
        let back = ShadowMessage::from(&msg).encode_to_vec();
        let again =
            OwnedMessage::try_from(ShadowMessage::decode(back.as_slice()).expect("decodes"))
                .expect("valid");
        assert_eq!(again, msg);
    }
});
