//! JSON (serde) round trips of the public wire types.
#![cfg(feature = "serde")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use iot_core::id::{DeviceId, NodeId};
use iot_core::message::{Envelope, EnvelopeBuf, MessageId, MessageKind, QoS};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::time::HlcTimestamp;

#[test]
fn envelope_json_round_trips() {
    let env: EnvelopeBuf<8> = Envelope {
        device: DeviceId::new("dev-7").unwrap(),
        seq: 3,
        id: MessageId(99),
        qos: QoS::ExactlyOnce,
        kind: MessageKind::CommandAck,
        payload: heapless::Vec::from_slice(&[1, 2, 3]).unwrap(),
    };
    let json = serde_json::to_string(&env).unwrap();
    assert!(json.contains("\"device\":\"dev-7\""), "{json}");
    assert!(json.contains("\"CommandAck\""), "{json}");
    let back: EnvelopeBuf<8> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, env);
}

#[test]
fn invalid_json_ids_and_capacity_are_errors() {
    let bad_id = r#"{"device":"no spaces","seq":1,"id":1,"qos":"AtMostOnce","kind":"Heartbeat","payload":[]}"#;
    assert!(serde_json::from_str::<EnvelopeBuf<4>>(bad_id).is_err());
    let too_big = r#"{"device":"d","seq":1,"id":1,"qos":"AtMostOnce","kind":"Heartbeat","payload":[1,2,3,4,5]}"#;
    assert!(serde_json::from_str::<EnvelopeBuf<4>>(too_big).is_err());
}

#[test]
fn telemetry_and_timestamps_json_round_trip() {
    let mut t: Telemetry<4> = Telemetry::new();
    t.push(Reading::new(1, Measurement::Temperature { celsius: 22.5 }))
        .unwrap();
    t.push(Reading::new(2, Measurement::Custom { id: 7, value: -1.5 }))
        .unwrap();
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(serde_json::from_str::<Telemetry<4>>(&json).unwrap(), t);
    let ts = HlcTimestamp::from_parts(1_700_000_000_000, 2, NodeId(5)).unwrap();
    let json = serde_json::to_string(&ts).unwrap();
    assert_eq!(json, format!("{{\"time\":{},\"node\":5}}", ts.time));
    assert_eq!(serde_json::from_str::<HlcTimestamp>(&json).unwrap(), ts);
}
