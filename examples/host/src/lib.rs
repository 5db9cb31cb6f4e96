//! Shared helpers for the host examples: a result type, a check that turns a wrong result
//! into a non-zero exit, headings for the printed report, and the fleet [`backend`] the
//! device-lab and fleet examples talk to.

use std::fmt::Display;

/// What every example's `main` returns: an error (and a non-zero exit) when a check fails.
pub type Outcome = Result<(), Box<dyn std::error::Error>>;

/// Fails with `what` unless `ok`, so that CI's smoke run catches a wrong result.
pub fn check(ok: bool, what: impl Display) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// Prints a section heading.
pub fn section(title: &str) {
    println!("\n== {title} ==");
}

/// Formats milliseconds since the start of a simulation as `h:mm:ss`.
pub fn clock(ms: u64) -> String {
    let s = ms / 1_000;
    format!("{}:{:02}:{:02}", s / 3_600, s / 60 % 60, s % 60)
}

/// Glue between the examples' devices and the fleet backend
/// ([`iot_fleet::DeviceServer`], which answers registration, heartbeats and shadow
/// messages with the fleet's own rules).
pub mod backend {
    use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, QoS};
    use iot_fleet::durable::{DurableError, DurableServer};
    use iot_fleet::{DeviceServer, Handled, ServerError, Session};

    /// A reply to a device: its kind and CBOR payload.
    pub type Reply = (MessageKind, Vec<u8>);

    /// An envelope from `device` carrying `payload`.
    fn from_device(device: DeviceId, kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
        EnvelopeRef {
            device,
            seq: 0,
            id: MessageId(0),
            qos: QoS::AtLeastOnce,
            kind,
            payload,
        }
    }

    /// The replies (kind and payload) of a handled message; `None` when the server left it
    /// to the application.
    fn replies_of(handled: Handled) -> Option<Vec<Reply>> {
        match handled {
            Handled::Replies(replies) => {
                Some(replies.iter().map(|r| (r.kind(), r.to_vec())).collect())
            }
            Handled::Unhandled => None,
        }
    }

    /// Hands one message from `device` to `server`; returns the replies, or `None` when the
    /// message is one the server leaves to the application (telemetry, health reports,
    /// acks, decommission records: the caller interprets those). Each simulated link is
    /// wired to one device, so the link itself authenticates the session.
    pub fn serve(
        server: &mut DeviceServer,
        device: DeviceId,
        kind: MessageKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Vec<Reply>>, ServerError> {
        let session = Session::authenticated(device, 0);
        let handled = server.handle(&session, &from_device(device, kind, payload), now_ms)?;
        Ok(replies_of(handled))
    }

    /// [`serve`] through a [`DurableServer`]: the replies come back once what the message
    /// changed is durable in the store.
    pub fn serve_durable(
        server: &mut DurableServer,
        device: DeviceId,
        kind: MessageKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Vec<Reply>>, DurableError> {
        let session = Session::authenticated(device, 0);
        let handled = server.handle(&session, &from_device(device, kind, payload), now_ms)?;
        Ok(replies_of(handled))
    }

    /// An envelope from the backend carrying `payload` (the agent reads kind and payload).
    pub fn envelope(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
        from_device(DeviceId::from_mac([0x02, 0, 0, 0, 0, 1]), kind, payload)
    }
}
