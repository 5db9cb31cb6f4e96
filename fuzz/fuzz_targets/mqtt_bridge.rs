//! The MQTT bridge's checks of a device's publish (`iot_mqtt::check::check_up`: topic, size,
//! envelope, identity) and the topic layout's parser. Never panics; what the bridge accepts
//! came on the up topic of the device its envelope names, fits the limit and round-trips;
//! every refusal is the one the bytes deserve; a parsed topic prints back to its own text.
//!
//! Input: `[topic length, topic bytes, payload]`; the top bit of the length byte picks a small
//! envelope limit (64 bytes) instead of the bridge's default (1024).
#![no_main]

use iot_core::message::{EnvelopeRef, OwnedEnvelope};
use iot_mqtt::check::{Refusal, check_up};
use iot_mqtt::dedup::RecentIds;
use iot_mqtt::topic::{Direction, Topic, TopicBuf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let max = if head & 0x80 != 0 { 64 } else { 1024 };
    let (topic, payload) = rest.split_at(usize::from(head & 0x7F).min(rest.len()));

    let parsed = std::str::from_utf8(topic)
        .ok()
        .map(|t| (t, Topic::parse(t)));
    if let Some((text, Ok(t))) = parsed {
        assert_eq!(TopicBuf::new(t).as_str(), text, "a topic has one spelling");
    }

    match check_up(topic, payload, max) {
        Ok((device, envelope)) => {
            let Some((_, Ok(t))) = parsed else {
                panic!("accepted a publish whose topic does not parse");
            };
            assert_eq!((t.device, t.direction), (device, Direction::Up));
            assert_eq!(envelope.device, device, "identity comes from the topic");
            assert!(payload.len() <= max);
            let bytes = envelope.to_vec().expect("a decoded envelope encodes");
            let again = OwnedEnvelope::decode(&bytes).expect("re-encoded envelope decodes");
            assert_eq!(again, envelope);
            // A repeat of the same message is dropped by the bridge's window.
            let mut seen = RecentIds::<4>::new();
            assert!(seen.first_time(envelope.id));
            assert!(!seen.first_time(envelope.id));
        }
        Err(Refusal::Topic(_)) => {
            assert!(!matches!(parsed, Some((_, Ok(t))) if t.direction == Direction::Up));
        }
        Err(Refusal::Oversized { len, max: m }) => {
            assert_eq!((len, m), (payload.len(), max));
            assert!(len > m);
        }
        Err(Refusal::Garbage) => {
            assert!(payload.len() <= max);
            assert!(
                EnvelopeRef::decode(payload).is_err(),
                "refused a valid envelope"
            );
        }
        Err(Refusal::Identity { topic, envelope }) => {
            assert_ne!(topic, envelope);
            let decoded = EnvelopeRef::decode(payload).expect("identity is judged on an envelope");
            assert_eq!(decoded.device, envelope);
        }
        Err(other) => panic!("unexpected refusal {other:?}"),
    }
});
