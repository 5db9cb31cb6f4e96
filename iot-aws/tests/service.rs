//! The MQTT surface of the service: which topics answer, with what, and what is refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_aws::{
    Config, InFlight, MAX_IN_FLIGHT, Publication, ServiceError, ShadowService, TopicError,
};
use serde_json::{Value as Json, json};

const CLASSIC: &str = "$aws/things/lamp/shadow";
const NAMED: &str = "$aws/things/lamp/shadow/name/config";

fn send(s: &mut ShadowService, topic: &str, body: &Json, now_ms: u64) -> Vec<Publication> {
    s.handle(topic, body.to_string().as_bytes(), now_ms)
        .unwrap()
}

fn payload(p: &Publication) -> Json {
    serde_json::from_slice(&p.payload).unwrap()
}

fn topics(ps: &[Publication]) -> Vec<&str> {
    ps.iter().map(|p| p.topic.as_str()).collect()
}

#[test]
fn an_update_publishes_accepted_delta_and_documents_with_the_token() {
    let mut s = ShadowService::default();
    let out = send(
        &mut s,
        &format!("{CLASSIC}/update"),
        &json!({"state": {"desired": {"led": true}}, "clientToken": "c1"}),
        5_000,
    );
    assert_eq!(
        topics(&out),
        [
            "$aws/things/lamp/shadow/update/accepted",
            "$aws/things/lamp/shadow/update/delta",
            "$aws/things/lamp/shadow/update/documents",
        ]
    );
    for p in &out {
        assert_eq!(payload(p)["clientToken"], json!("c1"), "{}", p.topic);
        assert_eq!(payload(p)["timestamp"], json!(5), "{}", p.topic);
    }
    assert_eq!(payload(&out[1])["state"], json!({"led": true}));
    assert_eq!(
        payload(&out[1])["metadata"],
        json!({"led": {"timestamp": 5}})
    );
    assert_eq!(payload(&out[1])["version"], json!(1));
    // A report alone: accepted and documents, no delta.
    let out = send(
        &mut s,
        &format!("{CLASSIC}/update"),
        &json!({"state": {"reported": {"led": false}}}),
        6_000,
    );
    assert_eq!(
        topics(&out),
        [
            "$aws/things/lamp/shadow/update/accepted",
            "$aws/things/lamp/shadow/update/documents",
        ]
    );
    assert!(payload(&out[0]).get("clientToken").is_none());
}

#[test]
fn classic_and_named_shadows_are_separate() {
    let mut s = ShadowService::default();
    send(
        &mut s,
        &format!("{CLASSIC}/update"),
        &json!({"state": {"reported": {"a": 1}}}),
        0,
    );
    let out = send(
        &mut s,
        &format!("{NAMED}/get"),
        &json!({"clientToken": "g"}),
        0,
    );
    assert_eq!(
        topics(&out),
        ["$aws/things/lamp/shadow/name/config/get/rejected"]
    );
    assert_eq!(
        payload(&out[0]),
        json!({"code": 404, "message": "No shadow exists with name: 'config'",
               "timestamp": 0, "clientToken": "g"})
    );
    send(
        &mut s,
        &format!("{NAMED}/update"),
        &json!({"state": {"reported": {"b": 2}}}),
        0,
    );
    let classic = send(&mut s, &format!("{CLASSIC}/get"), &json!({}), 0);
    let named = send(&mut s, &format!("{NAMED}/get"), &json!({}), 0);
    assert_eq!(payload(&classic[0])["state"], json!({"reported": {"a": 1}}));
    assert_eq!(payload(&named[0])["state"], json!({"reported": {"b": 2}}));
    assert_eq!(
        named[0].topic,
        "$aws/things/lamp/shadow/name/config/get/accepted"
    );
    assert_eq!(s.len(), 2);
}

#[test]
fn get_and_delete_of_an_unknown_shadow_are_404_and_hold_nothing() {
    let mut s = ShadowService::default();
    for op in ["get", "delete"] {
        let out = s.handle(&format!("{CLASSIC}/{op}"), b"", 0).unwrap();
        assert_eq!(topics(&out), [format!("{CLASSIC}/{op}/rejected").as_str()]);
        assert_eq!(payload(&out[0])["code"], json!(404));
        assert_eq!(
            payload(&out[0])["message"],
            json!("No shadow exists with name: 'lamp'")
        );
    }
    assert!(s.is_empty());
}

#[test]
fn delete_then_get_is_404_and_a_new_shadow_continues_the_version() {
    let mut s = ShadowService::default();
    for i in 0..3 {
        send(
            &mut s,
            &format!("{NAMED}/update"),
            &json!({"state": {"desired": {"i": i}}}),
            0,
        );
    }
    let out = send(
        &mut s,
        &format!("{NAMED}/delete"),
        &json!({"clientToken": "d"}),
        9_000,
    );
    assert_eq!(topics(&out), [format!("{NAMED}/delete/accepted").as_str()]);
    assert_eq!(
        payload(&out[0]),
        json!({"version": 3, "timestamp": 9, "clientToken": "d"})
    );
    let out = send(&mut s, &format!("{NAMED}/get"), &json!({}), 0);
    assert_eq!(payload(&out[0])["code"], json!(404));
    let out = send(
        &mut s,
        &format!("{NAMED}/update"),
        &json!({"state": {"desired": {"j": 1}}}),
        0,
    );
    assert_eq!(payload(&out[0])["version"], json!(4));
    let docs = payload(out.last().unwrap());
    assert!(docs.get("previous").is_none());
    assert_eq!(docs["current"]["state"], json!({"desired": {"j": 1}}));
}

#[test]
fn rejections_carry_code_message_token_and_timestamp() {
    let mut s = ShadowService::default();
    let topic = format!("{CLASSIC}/update");
    for (body, code, message) in [
        (&b"{oops"[..], 400, "Invalid JSON"),
        (
            br#"{"clientToken":"t"}"#,
            400,
            "Missing required node: state",
        ),
        (
            br#"{"state":[],"clientToken":"t"}"#,
            400,
            "State node must be an object",
        ),
        (
            br#"{"state":{"reported":1},"clientToken":"t"}"#,
            400,
            "Reported node must be an object",
        ),
        (
            br#"{"state":{},"version":"x","clientToken":"t"}"#,
            400,
            "Invalid version",
        ),
        (
            &[0xc3, 0x28][..],
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
    ] {
        let out = s.handle(&topic, body, 42_000).unwrap();
        assert_eq!(topics(&out), [format!("{topic}/rejected").as_str()]);
        let p = payload(&out[0]);
        assert_eq!(p["code"], json!(code));
        assert_eq!(p["message"], json!(message));
        assert_eq!(p["timestamp"], json!(42));
        if body.starts_with(br#"{""#) {
            assert_eq!(p["clientToken"], json!("t"), "{p}");
        }
    }
    // A refused first update holds no shadow.
    assert!(s.is_empty());
    send(&mut s, &topic, &json!({"state": {"desired": {"a": 1}}}), 0);
    let out = send(
        &mut s,
        &topic,
        &json!({"state": {"desired": {"a": 2}}, "version": 7}),
        0,
    );
    assert_eq!(payload(&out[0])["code"], json!(409));
    assert_eq!(payload(&out[0])["message"], json!("Version conflict"));
}

#[test]
fn more_than_ten_requests_of_a_thing_in_flight_are_429_and_change_nothing() {
    let mut s = ShadowService::default();
    let mut flight = InFlight::new(MAX_IN_FLIGHT);
    let topic = format!("{CLASSIC}/update");
    // Ten requests of `lamp` arrive; their answers are handed to the client, none acked.
    for i in 0..MAX_IN_FLIGHT {
        assert!(flight.admit("lamp"), "request {i}");
        let out = send(&mut s, &topic, &json!({"state": {"desired": {"n": i}}}), 0);
        for (k, _) in out.iter().enumerate() {
            flight.queued((k == 0).then_some("lamp"));
        }
    }
    assert_eq!(flight.of("lamp"), MAX_IN_FLIGHT);
    let version = s.shadow("lamp", None).unwrap().version();
    // The eleventh is refused unserved with AWS's 429 and its clientToken.
    assert!(!flight.admit("lamp"));
    let body = br#"{"state":{"desired":{"n":99}},"clientToken":"eleven"}"#;
    let refusal = s.too_many_requests(&topic, body, 42_000).unwrap().unwrap();
    assert_eq!(refusal.topic, format!("{topic}/rejected"));
    let p = payload(&refusal);
    assert_eq!(p["code"], json!(429));
    assert_eq!(p["message"], json!("Too Many Requests"));
    assert_eq!(p["clientToken"], json!("eleven"));
    assert_eq!(p["timestamp"], json!(42));
    assert_eq!(s.shadow("lamp", None).unwrap().version(), version);
    // Another thing is not held up by `lamp`.
    assert!(flight.admit("kettle"));
    flight.release("kettle");
    // The client sends the queued answers (packet ids 1, 2, ...); the broker acks the first
    // answer of the first request: one slot frees.
    let queued: usize = MAX_IN_FLIGHT * 3; // accepted, delta, documents per request
    for pkid in 1..=u16::try_from(queued).unwrap() {
        flight.sent(pkid);
    }
    flight.acked(2); // the first request's delta: not its first answer
    assert!(!flight.admit("lamp"));
    flight.acked(1);
    assert_eq!(flight.of("lamp"), MAX_IN_FLIGHT - 1);
    assert!(flight.admit("lamp"));
    // A response topic is never refused: it gets nothing.
    assert_eq!(
        s.too_many_requests(&format!("{topic}/accepted"), b"{}", 0),
        Ok(None)
    );
}

#[test]
fn own_answers_are_skipped_and_foreign_topics_refused() {
    let mut s = ShadowService::default();
    for response in [
        "update/accepted",
        "update/rejected",
        "update/delta",
        "update/documents",
        "get/accepted",
        "delete/rejected",
    ] {
        let out = s
            .handle(&format!("{CLASSIC}/{response}"), b"{}", 0)
            .unwrap();
        assert!(out.is_empty(), "{response}");
    }
    assert_eq!(
        s.handle("$aws/things/lamp/jobs/get", b"", 0),
        Err(ServiceError::Topic(TopicError::NotShadowTopic))
    );
    assert_eq!(
        s.handle("$aws/things/la#mp/shadow/get", b"", 0),
        Err(ServiceError::Topic(TopicError::InvalidThingName))
    );
    assert!(s.is_empty());
}

#[test]
fn the_shadow_count_is_bounded() {
    let mut s = ShadowService::new(Config { max_shadows: 2 });
    let body = json!({"state": {"reported": {"a": 1}}});
    send(&mut s, "$aws/things/a/shadow/update", &body, 0);
    send(&mut s, "$aws/things/b/shadow/update", &body, 0);
    assert_eq!(
        s.handle(
            "$aws/things/c/shadow/update",
            body.to_string().as_bytes(),
            0
        ),
        Err(ServiceError::TooManyShadows { max: 2 })
    );
    // Existing shadows are still served.
    assert_eq!(
        send(&mut s, "$aws/things/a/shadow/update", &body, 0).len(),
        2
    );
}

#[test]
fn an_exported_aws_document_is_served_after_import() {
    let mut s = ShadowService::default();
    let doc = json!({
        "state": {"desired": {"fan": "high"}, "reported": {"fan": "low"}},
        "metadata": {"desired": {"fan": {"timestamp": 1_700_000_000}},
                     "reported": {"fan": {"timestamp": 1_700_000_050}}},
        "version": 17, "timestamp": 1_700_000_100
    });
    s.import("fan1", Some("cfg"), doc.to_string().as_bytes(), 0)
        .unwrap();
    let out = send(
        &mut s,
        "$aws/things/fan1/shadow/name/cfg/get",
        &json!({}),
        1_700_000_200_000,
    );
    let got = payload(&out[0]);
    assert_eq!(got["version"], json!(17));
    assert_eq!(got["state"]["delta"], json!({"fan": "high"}));
    assert_eq!(got["metadata"], doc["metadata"]);
}
