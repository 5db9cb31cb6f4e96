//! `DeviceServer::handle` driven by a sequence of envelopes (any kind, any payload, naming
//! the session's device, another tenant's device or an unknown one, in two sessions of the
//! same identity) against a small fleet, starting with the session's device registered and
//! active. Never panics; an envelope naming another device than the session's (or a
//! registration or audit record naming one), or a payload that is not a valid message, is
//! refused and leaves the fleet unchanged (`iot_fuzz::snapshot`: records, shadows, audit
//! chain, rollouts); nothing else is refused that way; every reply is a valid downlink that
//! round-trips.
#![no_main]

use iot_core::MessageKind;
use iot_fleet::{Handled, ServerError};
use iot_fuzz::{
    FIXED_NONCE, SERVER_STEP_MS, START_MS, control, envelope, kind_of, records, secret, session,
    snapshot,
};
use iot_lifecycle::registration::RegistrationRequest;
use iot_lifecycle::state::{Event, State, TransitionRecord};
use iot_protocol::{Downlink, PROTOCOL_VERSION, Register, Uplink};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (mut server, devices) = iot_fuzz::server().expect("the fleet builds");
    let me = devices.session;
    let s1 = session(&devices, false);

    // Register and activate the session's device over the wire.
    let mut now = START_MS;
    for answered in [false, true] {
        let register = Uplink::<&[u8]>::Register(Register {
            protocol: PROTOCOL_VERSION,
            schema: 0,
            request: RegistrationRequest {
                device: me,
                firmware_version: 1,
                answer: answered.then(|| iot_fleet::answer(&secret(&me), &me, &FIXED_NONCE)),
            },
        });
        let payload = register.to_vec();
        server
            .handle(&s1, &envelope(me, register.kind(), &payload), now)
            .expect("registration is handled");
    }
    let active = Uplink::<&[u8]>::Transition(TransitionRecord {
        from: State::Provisioning,
        event: Event::ConfigComplete,
        to: State::Active,
        at_ms: now,
    });
    let payload = active.to_vec();
    server
        .handle(
            &s1,
            &envelope(me, MessageKind::LifecycleReport, &payload),
            now,
        )
        .expect("activation is handled");

    for record in records(data) {
        now = now.saturating_add(u64::from(record.step) * SERVER_STEP_MS);
        let kind = kind_of(record.control & control::KIND);
        let device = if record.control & control::STRANGER != 0 {
            devices.stranger
        } else if record.control & control::OTHER != 0 {
            devices.other
        } else {
            me
        };
        let s = session(&devices, record.control & control::ALTERNATE != 0);
        let env = envelope(device, kind, record.bytes);
        // The fleet is snapshotted (records, shadows, audit chain: see `snapshot`) before
        // every message that must be refused: one naming another device, in its envelope
        // or its payload, or one that does not decode.
        let decoded = Uplink::decode(kind, record.bytes);
        let names_another = match &decoded {
            Ok(Uplink::Register(r)) => r.request.device != me,
            Ok(Uplink::Decommissioned(a)) => a.device != me,
            _ => false,
        };
        let must_refuse = device != me || names_another || decoded.is_err();
        let before = must_refuse.then(|| snapshot(&server, &devices));
        let result = server.handle(&s, &env, now);
        let unchanged = || {
            let before = before.as_ref().expect("a refusal was foreseen");
            assert_eq!(&snapshot(&server, &devices), before, "{env:?}");
        };
        match result {
            Err(ServerError::IdentityMismatch { session, claimed }) => {
                assert_eq!(session, me);
                assert_ne!(claimed, me);
                unchanged();
            }
            Err(ServerError::Protocol(_)) => {
                assert!(
                    decoded.is_err(),
                    "the server refuses what the codec accepts"
                );
                unchanged();
            }
            _ if must_refuse => panic!("{env:?} was not refused: {result:?}"),
            Ok(Handled::Replies(replies)) => {
                for reply in replies {
                    let bytes = reply.to_vec();
                    let back = Downlink::decode(reply.kind(), &bytes).expect("a reply decodes");
                    assert_eq!(back.to_vec(), bytes);
                }
            }
            Ok(Handled::Unhandled) | Err(_) => {}
        }
    }
});
