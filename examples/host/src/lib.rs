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
    use iot_fleet::{DeviceServer, Fleet, Handled, ServerError};
    use iot_lifecycle::State;
    use iot_lifecycle::agent::Agent;

    /// A reply to a device: its kind and CBOR payload.
    pub type Reply = (MessageKind, Vec<u8>);

    /// Hands one message from `device` to `server`; returns the replies, or `None` when the
    /// message is not part of the protocol the server answers (telemetry, health reports,
    /// acks, decommission records: the caller interprets those).
    pub fn serve(
        server: &mut DeviceServer,
        device: DeviceId,
        kind: MessageKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Vec<Reply>>, ServerError> {
        let env = EnvelopeRef {
            device,
            seq: 0,
            id: MessageId(0),
            qos: QoS::AtLeastOnce,
            kind,
            payload,
        };
        Ok(match server.handle(&env, now_ms)? {
            Handled::Replies(replies) => Some(replies),
            Handled::Unhandled => None,
        })
    }

    /// Reports the lifecycle transitions `agent` made since the `reported`-th (a running
    /// count the caller keeps) to `fleet`, which validates each with the same transition
    /// table; returns how many it refused. Registration itself already moved the fleet's
    /// record out of `Unprovisioned`, so that transition is skipped.
    pub fn report_transitions<const H: usize, const C: usize, const S: usize, const B: usize>(
        fleet: &mut Fleet,
        agent: &Agent<H, C, S, B>,
        reported: &mut u32,
    ) -> u32 {
        let lifecycle = agent.lifecycle();
        let len = u32::try_from(lifecycle.history().count()).unwrap_or(u32::MAX);
        let total = lifecycle.evicted().saturating_add(len);
        let new = total.saturating_sub(*reported).min(len);
        let skip = usize::try_from(len.saturating_sub(new)).unwrap_or(0);
        let mut refused = 0;
        for record in lifecycle.history().skip(skip) {
            if record.from == State::Unprovisioned {
                continue;
            }
            if fleet
                .report_transition(&agent.device(), record.event, record.to, record.at_ms)
                .is_err()
            {
                refused += 1;
            }
        }
        *reported = total;
        refused
    }

    /// An envelope from the backend carrying `payload` (the agent reads kind and payload).
    pub fn envelope(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
        EnvelopeRef {
            device: DeviceId::from_mac([0x02, 0, 0, 0, 0, 1]),
            seq: 0,
            id: MessageId(0),
            qos: QoS::AtLeastOnce,
            kind,
            payload,
        }
    }
}
