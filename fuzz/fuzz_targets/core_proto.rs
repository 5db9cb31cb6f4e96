//! iot-core's protobuf forms (`iot_core::proto`): the envelope and telemetry readings, as a
//! backend that prefers protobuf receives them. The first byte picks the message (even: an
//! envelope, odd: a reading), the rest is its protobuf encoding. Never panics; what converts
//! into a core value converts back to protobuf that gives the same value, and that value
//! survives the device's CBOR (as a value: -0.0 becomes 0.0).
#![no_main]

use iot_core::message::OwnedEnvelope;
use iot_core::proto;
use iot_core::telemetry::Reading;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let Ok(pb) = proto::Envelope::decode(bytes) else {
            return;
        };
        let Ok(envelope) = OwnedEnvelope::try_from(pb) else {
            return;
        };
        let again = proto::Envelope::from(&envelope).encode_to_vec();
        let back = proto::Envelope::decode(again.as_slice()).expect("own bytes decode");
        assert_eq!(OwnedEnvelope::try_from(back).as_ref(), Ok(&envelope));
        let cbor = envelope.to_vec().expect("a converted envelope encodes");
        assert_eq!(OwnedEnvelope::decode(&cbor).as_ref(), Ok(&envelope));
    } else {
        let Ok(pb) = proto::Reading::decode(bytes) else {
            return;
        };
        let Ok(reading) = Reading::try_from(&pb) else {
            return;
        };
        let again = proto::Reading::from(&reading);
        let back = Reading::try_from(&again).expect("own protobuf converts back");
        assert_eq!(format!("{back:?}"), format!("{reading:?}"));
        let cbor = minicbor::to_vec(reading).expect("a converted reading encodes");
        let from_cbor: Reading = minicbor::decode(&cbor).expect("own CBOR decodes");
        // Canonical CBOR writes -0.0 as 0.0 (equal values, equal bytes): compare as values.
        assert_eq!(from_cbor, reading);
        assert_eq!(
            minicbor::to_vec(from_cbor).expect("encodes"),
            cbor,
            "canonical"
        );
    }
});
