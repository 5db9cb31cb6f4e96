//! The lifecycle table, walked pair by pair against the diagram, and properties of the
//! machine under arbitrary event sequences.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_lifecycle::state::{
    Event, Lifecycle, State, TRANSITIONS, TransitionError, transition, validate_history,
};
use proptest::prelude::*;

/// The diagram, written a second time as a `match` so the table is checked against an
/// independent transcription rather than against itself.
fn diagram(state: State, event: Event) -> Option<State> {
    use Event as E;
    use State as S;
    match (state, event) {
        (S::Unprovisioned, E::RegistrationInitiated) => Some(S::Provisioning),
        (S::Provisioning, E::ConfigComplete) => Some(S::Active),
        (S::Provisioning, E::ProvisioningFailed) => Some(S::Unprovisioned),
        (S::Active, E::HealthCheckFailed) => Some(S::Degraded),
        (S::Active, E::ScheduledUpdate) => Some(S::Maintenance),
        (S::Active, E::NormalOperation) => Some(S::Active),
        (S::Degraded, E::AutoRecovery) => Some(S::Active),
        (S::Degraded, E::ManualIntervention) => Some(S::Maintenance),
        (S::Degraded, E::Unrecoverable) => Some(S::Decommissioned),
        (S::Maintenance, E::UpdateComplete) => Some(S::Active),
        (S::Maintenance, E::UpdateFailed) => Some(S::Degraded),
        (S::Active, E::EndOfLife) => Some(S::Decommissioned),
        _ => None,
    }
}

#[test]
fn every_state_event_pair_matches_the_diagram() {
    let mut legal = 0;
    let mut rejected = 0;
    for state in State::ALL {
        for event in Event::ALL {
            match (transition(state, event), diagram(state, event)) {
                (Ok(to), Some(expected)) => {
                    assert_eq!(to, expected, "{state} -{event}->");
                    legal += 1;
                    // The stateful machine agrees with the pure function.
                    let mut lc: Lifecycle<2> = Lifecycle::resume(state);
                    assert_eq!(lc.apply(event, 1, &mut ()), Ok(expected));
                    assert_eq!(lc.state(), expected);
                }
                (Err(err), None) => {
                    assert_eq!(err, TransitionError { state, event });
                    rejected += 1;
                    let mut lc: Lifecycle<2> = Lifecycle::resume(state);
                    assert_eq!(lc.apply(event, 1, &mut ()), Err(err));
                    assert_eq!(lc.state(), state, "a rejected event changed the state");
                    assert_eq!(lc.history().count(), 0);
                    let text = err.to_string();
                    assert!(text.contains(state.name()) && text.contains(event.name()));
                }
                (got, want) => panic!("{state} -{event}->: table {got:?}, diagram {want:?}"),
            }
        }
    }
    assert_eq!(legal, 12);
    assert_eq!(rejected, 6 * 12 - 12);
    assert_eq!(TRANSITIONS.len(), 12);
}

#[test]
fn table_has_no_duplicate_edges() {
    for (i, a) in TRANSITIONS.iter().enumerate() {
        for b in &TRANSITIONS[i + 1..] {
            assert!(
                !(a.from == b.from && a.event == b.event),
                "{:?} twice",
                (a.from, a.event)
            );
        }
    }
}

#[test]
fn every_state_is_reachable_from_unprovisioned() {
    let mut seen = vec![State::Unprovisioned];
    let mut frontier = vec![State::Unprovisioned];
    while let Some(s) = frontier.pop() {
        for t in TRANSITIONS.iter().filter(|t| t.from == s) {
            if !seen.contains(&t.to) {
                seen.push(t.to);
                frontier.push(t.to);
            }
        }
    }
    assert_eq!(seen.len(), State::ALL.len());
}

fn any_event() -> impl Strategy<Value = Event> {
    (0..Event::ALL.len()).prop_map(|i| Event::ALL[i])
}

fn any_state() -> impl Strategy<Value = State> {
    (0..State::ALL.len()).prop_map(|i| State::ALL[i])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any sequence: the history is a chain of legal edges ending in the current state,
    /// bounded, with every dropped record counted; rejected events change nothing.
    #[test]
    fn history_is_a_bounded_chain_of_legal_edges(
        start in any_state(),
        events in prop::collection::vec(any_event(), 0..64),
    ) {
        let mut lc: Lifecycle<8> = Lifecycle::resume(start);
        let mut changes = 0u32;
        for (t, e) in events.iter().enumerate() {
            let before = lc.state();
            match lc.apply(*e, t as u64, &mut ()) {
                Ok(to) => {
                    prop_assert_eq!(diagram(before, *e), Some(to));
                    if to != before { changes += 1; }
                }
                Err(_) => prop_assert_eq!(lc.state(), before),
            }
        }
        let records: Vec<_> = lc.history().copied().collect();
        prop_assert!(records.len() <= 8);
        prop_assert_eq!(records.len() as u32 + lc.evicted(), changes);
        for w in records.windows(2) {
            prop_assert_eq!(w[0].to, w[1].from);
            prop_assert!(w[0].at_ms < w[1].at_ms);
        }
        for r in &records {
            prop_assert_eq!(transition(r.from, r.event), Ok(r.to));
        }
        if let Some(last) = records.last() {
            prop_assert_eq!(last.to, lc.state());
        }
        prop_assert_eq!(validate_history(lc.history(), lc.state()), Ok(()));
        // The persisted form decodes to the same machine.
        let mut buf = [0u8; 256];
        let n = iot_core::codec::encode_into(&lc, &mut buf).unwrap();
        let back: Lifecycle<8> = iot_core::codec::decode(&buf[..n]).unwrap();
        prop_assert_eq!(back.state(), lc.state());
        prop_assert_eq!(back.evicted(), lc.evicted());
        prop_assert!(back.history().eq(lc.history()));
    }

    /// Once decommissioned, no sequence of events brings a device back.
    #[test]
    fn decommissioned_is_final(events in prop::collection::vec(any_event(), 0..32)) {
        let mut lc: Lifecycle<4> = Lifecycle::resume(State::Decommissioned);
        for e in events {
            prop_assert!(lc.apply(e, 0, &mut ()).is_err());
            prop_assert_eq!(lc.state(), State::Decommissioned);
        }
    }
}
