//! The AWS shadow surface (`iot_aws::ShadowService::handle`: `$aws/things/...` topics and the
//! JSON of update, get and delete requests) fed a sequence of requests. Never panics; every
//! request on a request topic gets exactly one answer first, on its own `accepted` or
//! `rejected` topic; every publication is JSON; an accepted update raises the version and
//! is followed by `update/documents`; a rejected request leaves the shadow as it was;
//! the service never holds more shadows than its bound; a parsed topic prints back to itself.
//!
//! Input: a record stream (`src/lib.rs`). The control byte's low two bits pick the operation
//! (get, update, delete, or a raw topic: the record's bytes up to the first space are the
//! topic, the rest the payload); bit 2 a named shadow; bits 3-4 one of four things. The time
//! step moves the clock by seconds.
#![no_main]

use iot_aws::topic::{Channel, Operation, ShadowTopic};
use iot_aws::{Config, ShadowService};
use iot_fuzz::records;
use libfuzzer_sys::fuzz_target;

const THINGS: [&str; 4] = ["lamp-1", "lamp-2", "thermo_3", "gw:4"];

fuzz_target!(|data: &[u8]| {
    let mut service = ShadowService::new(Config { max_shadows: 3 });
    let mut now_ms: u64 = 1_700_000_000_000;
    for record in records(data).take(64) {
        now_ms = now_ms.saturating_add(u64::from(record.step).saturating_mul(1_000));
        let thing = THINGS[usize::from(record.control >> 3) & 3];
        let shadow = (record.control & 4 != 0).then_some("config");
        let (topic, payload) = match record.control & 3 {
            3 => {
                let at = record
                    .bytes
                    .iter()
                    .position(|b| *b == b' ')
                    .unwrap_or(record.bytes.len());
                let (t, p) = record.bytes.split_at(at);
                let Ok(t) = std::str::from_utf8(t) else {
                    continue;
                };
                (t.to_owned(), p.get(1..).unwrap_or_default())
            }
            op => {
                let operation =
                    [Operation::Get, Operation::Update, Operation::Delete][usize::from(op)];
                let t = ShadowTopic {
                    thing,
                    shadow,
                    operation,
                    channel: Channel::Request,
                };
                (t.on(operation, Channel::Request), record.bytes)
            }
        };
        let parsed = ShadowTopic::parse(&topic);
        if let Ok(t) = parsed {
            assert_eq!(
                t.on(t.operation, t.channel),
                topic,
                "a topic has one spelling"
            );
        }
        let before = parsed.ok().map(|t| {
            service
                .shadow(t.thing, t.shadow)
                .map(|s| (s.exists(), s.version(), format!("{:?}", s.document())))
        });
        let held = service.len();
        let result = service.handle(&topic, payload, now_ms);
        assert!(service.len() <= 3, "the shadow bound holds");
        let Ok(t) = parsed else {
            assert!(result.is_err(), "a topic that does not parse is answered");
            continue;
        };
        let Ok(publications) = result else {
            // Only a new shadow past the bound is refused without an answer.
            assert_eq!(held, 3);
            assert_eq!(t.operation, Operation::Update);
            continue;
        };
        if !t.is_request() {
            assert!(publications.is_empty(), "a response is not answered");
            continue;
        }
        for p in &publications {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&p.payload).is_ok(),
                "publication on {} is not JSON",
                p.topic
            );
        }
        let first = publications.first().expect("a request is answered");
        let accepted = t.on(t.operation, Channel::Accepted);
        let rejected = t.on(t.operation, Channel::Rejected);
        let after = service
            .shadow(t.thing, t.shadow)
            .map(|s| (s.exists(), s.version(), format!("{:?}", s.document())));
        let before = before.flatten();
        if first.topic == rejected {
            assert_eq!(publications.len(), 1, "a rejection comes alone");
            assert_eq!(after, before, "a rejected request changed the shadow");
        } else {
            assert_eq!(
                first.topic, accepted,
                "the answer is on the request's topic"
            );
            if t.operation == Operation::Update {
                let last = publications.last().expect("documents");
                assert_eq!(last.topic, t.on(Operation::Update, Channel::Documents));
                let (exists, version, _) = after.expect("an accepted update holds the shadow");
                assert!(exists);
                assert!(version > before.map_or(0, |b| b.1), "the version rises");
            } else {
                assert_eq!(publications.len(), 1);
                if t.operation == Operation::Get {
                    assert_eq!(after, before, "a get changed the shadow");
                }
            }
        }
    }
});
