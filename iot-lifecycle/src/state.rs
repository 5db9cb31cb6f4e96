//! The device lifecycle state machine: states, events and the transition table as data.
//!
//! The table [`TRANSITIONS`] is the lifecycle as the source material draws it, and
//! [`transition`] is a pure function over it, so a device (through [`Lifecycle`]) and a
//! backend validating a reported transition run the same code and cannot disagree.
//!
//! ```text
//! Unprovisioned -RegistrationInitiated-> Provisioning
//! Provisioning  -ConfigComplete------->  Active
//! Provisioning  -ProvisioningFailed--->  Unprovisioned
//! Active        -HealthCheckFailed---->  Degraded
//! Active        -ScheduledUpdate------>  Maintenance
//! Active        -NormalOperation------>  Active
//! Active        -EndOfLife------------>  Decommissioned
//! Degraded      -AutoRecovery--------->  Active
//! Degraded      -ManualIntervention--->  Maintenance
//! Degraded      -Unrecoverable-------->  Decommissioned
//! Maintenance   -UpdateComplete------->  Active
//! Maintenance   -UpdateFailed--------->  Degraded
//! ```
//!
//! Every other (state, event) pair is a [`TransitionError`] naming both, and leaves the
//! state unchanged. `Decommissioned` has no outgoing transition: it is final.
//!
//! [`State`] and [`Event`] are deliberately **not** `#[non_exhaustive]`: the table must be
//! total over them (one test walks all 72 pairs), and a new state or event changes the
//! lifecycle protocol that devices and backends share, which is a breaking change that
//! should fail every exhaustive `match` downstream rather than fall into a wildcard arm.
//!
//! ```
//! use iot_lifecycle::state::{transition, Event, State};
//!
//! assert_eq!(transition(State::Active, Event::HealthCheckFailed), Ok(State::Degraded));
//! let err = transition(State::Decommissioned, Event::AutoRecovery).unwrap_err();
//! assert_eq!((err.state, err.event), (State::Decommissioned, Event::AutoRecovery));
//! ```

use core::fmt;

use heapless::Deque;
use iot_core::{Error, ErrorKind};
use minicbor::{CborLen, Decode, Encode};

/// A lifecycle state. The numeric codes are the wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum State {
    /// Manufactured, holding only its factory secret; not known to a backend.
    #[n(0)]
    Unprovisioned,
    /// Registering and receiving its initial configuration.
    #[n(1)]
    Provisioning,
    /// Operating normally.
    #[n(2)]
    Active,
    /// Operating with reduced service (for example slower telemetry on a critical battery).
    #[n(3)]
    Degraded,
    /// Taken out of service for an update or an operator's intervention.
    #[n(4)]
    Maintenance,
    /// Credentials revoked, data wiped. Final.
    #[n(5)]
    Decommissioned,
}

impl State {
    /// The wire code (the CBOR index of the variant).
    pub const fn code(self) -> u8 {
        match self {
            Self::Unprovisioned => 0,
            Self::Provisioning => 1,
            Self::Active => 2,
            Self::Degraded => 3,
            Self::Maintenance => 4,
            Self::Decommissioned => 5,
        }
    }

    /// Every state, in wire-code order.
    pub const ALL: [State; 6] = [
        Self::Unprovisioned,
        Self::Provisioning,
        Self::Active,
        Self::Degraded,
        Self::Maintenance,
        Self::Decommissioned,
    ];

    /// The state's name as drawn in the lifecycle diagram.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unprovisioned => "Unprovisioned",
            Self::Provisioning => "Provisioning",
            Self::Active => "Active",
            Self::Degraded => "Degraded",
            Self::Maintenance => "Maintenance",
            Self::Decommissioned => "Decommissioned",
        }
    }

    /// Whether no event leaves this state.
    pub fn is_final(self) -> bool {
        !TRANSITIONS.iter().any(|t| t.from == self)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened to a device and may move it to another state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum Event {
    /// The device started registering with a backend.
    #[n(0)]
    RegistrationInitiated,
    /// Registration succeeded and the initial configuration is in force.
    #[n(1)]
    ConfigComplete,
    /// Registration or initial configuration failed.
    #[n(2)]
    ProvisioningFailed,
    /// A health check reported a critical condition.
    #[n(3)]
    HealthCheckFailed,
    /// A planned update or maintenance window began.
    #[n(4)]
    ScheduledUpdate,
    /// A routine check found nothing to change.
    #[n(5)]
    NormalOperation,
    /// Health recovered on its own.
    #[n(6)]
    AutoRecovery,
    /// An operator took a degraded device into maintenance.
    #[n(7)]
    ManualIntervention,
    /// A degraded device cannot be recovered.
    #[n(8)]
    Unrecoverable,
    /// The update or maintenance finished successfully.
    #[n(9)]
    UpdateComplete,
    /// The update or maintenance failed.
    #[n(10)]
    UpdateFailed,
    /// The device is retired.
    #[n(11)]
    EndOfLife,
}

impl Event {
    /// Every event, in wire-code order.
    pub const ALL: [Event; 12] = [
        Self::RegistrationInitiated,
        Self::ConfigComplete,
        Self::ProvisioningFailed,
        Self::HealthCheckFailed,
        Self::ScheduledUpdate,
        Self::NormalOperation,
        Self::AutoRecovery,
        Self::ManualIntervention,
        Self::Unrecoverable,
        Self::UpdateComplete,
        Self::UpdateFailed,
        Self::EndOfLife,
    ];

    /// The event's name as drawn in the lifecycle diagram.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RegistrationInitiated => "RegistrationInitiated",
            Self::ConfigComplete => "ConfigComplete",
            Self::ProvisioningFailed => "ProvisioningFailed",
            Self::HealthCheckFailed => "HealthCheckFailed",
            Self::ScheduledUpdate => "ScheduledUpdate",
            Self::NormalOperation => "NormalOperation",
            Self::AutoRecovery => "AutoRecovery",
            Self::ManualIntervention => "ManualIntervention",
            Self::Unrecoverable => "Unrecoverable",
            Self::UpdateComplete => "UpdateComplete",
            Self::UpdateFailed => "UpdateFailed",
            Self::EndOfLife => "EndOfLife",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One edge of the lifecycle: `from -event-> to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Transition {
    /// The state the event arrives in.
    pub from: State,
    /// The event.
    pub event: Event,
    /// The resulting state.
    pub to: State,
}

const fn edge(from: State, event: Event, to: State) -> Transition {
    Transition { from, event, to }
}

/// The complete lifecycle: every legal transition, and nothing else.
pub const TRANSITIONS: [Transition; 12] = [
    edge(
        State::Unprovisioned,
        Event::RegistrationInitiated,
        State::Provisioning,
    ),
    edge(State::Provisioning, Event::ConfigComplete, State::Active),
    edge(
        State::Provisioning,
        Event::ProvisioningFailed,
        State::Unprovisioned,
    ),
    edge(State::Active, Event::HealthCheckFailed, State::Degraded),
    edge(State::Active, Event::ScheduledUpdate, State::Maintenance),
    edge(State::Active, Event::NormalOperation, State::Active),
    edge(State::Active, Event::EndOfLife, State::Decommissioned),
    edge(State::Degraded, Event::AutoRecovery, State::Active),
    edge(
        State::Degraded,
        Event::ManualIntervention,
        State::Maintenance,
    ),
    edge(State::Degraded, Event::Unrecoverable, State::Decommissioned),
    edge(State::Maintenance, Event::UpdateComplete, State::Active),
    edge(State::Maintenance, Event::UpdateFailed, State::Degraded),
];

/// An event that the lifecycle does not allow in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[error("event {event} is not allowed in state {state}")]
pub struct TransitionError {
    /// The state the event arrived in (unchanged).
    pub state: State,
    /// The rejected event.
    pub event: Event,
}

impl Error for TransitionError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidState
    }
}

/// The state `event` leads to from `state`, or the error naming both. Pure: the backend
/// validates reported transitions with this same function.
pub fn transition(state: State, event: Event) -> Result<State, TransitionError> {
    TRANSITIONS
        .iter()
        .find(|t| t.from == state && t.event == event)
        .map(|t| t.to)
        .ok_or(TransitionError { state, event })
}

/// Called around every state change of a [`Lifecycle`]. Both methods default to doing
/// nothing; `()` is the hook that does nothing.
pub trait Hooks {
    /// The machine is leaving `state` because of `event`.
    fn on_exit(&mut self, state: State, event: Event) {
        let _ = (state, event);
    }
    /// The machine has entered `state` because of `event`.
    fn on_enter(&mut self, state: State, event: Event) {
        let _ = (state, event);
    }
}

impl Hooks for () {}

/// One recorded state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct TransitionRecord {
    /// The state left.
    #[n(0)]
    pub from: State,
    /// The event that caused the change.
    #[n(1)]
    pub event: Event,
    /// The state entered.
    #[n(2)]
    pub to: State,
    /// When, in the device clock's milliseconds.
    #[n(3)]
    pub at_ms: u64,
}

/// A device's lifecycle: the current state plus the last `H` transitions (`H >= 1`, checked
/// at compile time).
///
/// A self-transition (`Active -NormalOperation-> Active`) is legal but internal: no hooks
/// run and nothing is recorded, so a steady stream of routine checks cannot evict the
/// transitions that matter from the bounded history.
///
/// Nothing leaves `Decommissioned`. Re-provisioning a device means starting over with a
/// new factory secret and [`Lifecycle::new`]; there is no method that revives this value.
#[derive(Debug, Clone)]
pub struct Lifecycle<const H: usize> {
    state: State,
    history: Deque<TransitionRecord, H>,
    evicted: u32,
}

#[cfg(feature = "defmt")]
impl<const H: usize> defmt::Format for Lifecycle<H> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "Lifecycle {{ state: {}, history: {}, evicted: {} }}",
            self.state,
            self.history.len(),
            self.evicted
        );
    }
}

impl<const H: usize> Default for Lifecycle<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const H: usize> Lifecycle<H> {
    /// A factory-fresh device: `Unprovisioned`, empty history.
    pub const fn new() -> Self {
        Self::resume(State::Unprovisioned)
    }

    /// A lifecycle resumed in `state` (for example read back from storage after a reboot).
    pub const fn resume(state: State) -> Self {
        Self {
            state,
            history: Deque::new(),
            evicted: 0,
        }
    }

    /// The current state.
    pub const fn state(&self) -> State {
        self.state
    }

    /// Applies `event` at `at_ms`: on success runs `hooks.on_exit` for the old state, records
    /// the transition (evicting the oldest record when full), switches state and runs
    /// `hooks.on_enter`. On error nothing changes and no hook runs.
    pub fn apply<K: Hooks + ?Sized>(
        &mut self,
        event: Event,
        at_ms: u64,
        hooks: &mut K,
    ) -> Result<State, TransitionError> {
        let from = self.state;
        let to = transition(from, event)?;
        if to == from {
            return Ok(to);
        }
        hooks.on_exit(from, event);
        let record = TransitionRecord {
            from,
            event,
            to,
            at_ms,
        };
        if self.history.is_full() && self.history.pop_front().is_some() {
            self.evicted = self.evicted.saturating_add(1);
        }
        // Cannot fail: a full history was just shortened by one (`H >= 1` is checked at
        // compile time by `Deque::new`).
        if self.history.push_back(record).is_err() {
            self.evicted = self.evicted.saturating_add(1);
        }
        self.state = to;
        hooks.on_enter(to, event);
        Ok(to)
    }

    /// Whether `event` would be accepted now, without applying it.
    pub fn can_apply(&self, event: Event) -> bool {
        transition(self.state, event).is_ok()
    }

    /// The recorded transitions, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &TransitionRecord> + '_ {
        self.history.iter()
    }

    /// The most recent transition, if any.
    pub fn last_transition(&self) -> Option<&TransitionRecord> {
        self.history.back()
    }

    /// How many records were dropped to keep the history within `H` (saturating).
    pub const fn evicted(&self) -> u32 {
        self.evicted
    }
}

/// Checks that `records` (oldest first) is a chain of legal transitions ending in `state`:
/// each record is an edge of [`TRANSITIONS`], follows on from the previous one, and is not
/// older than it. The backend validates a device's reported history with this; decoding a
/// [`Lifecycle`] uses it too. An empty history is consistent with any state.
pub fn validate_history<'a, I>(records: I, state: State) -> Result<(), HistoryError>
where
    I: IntoIterator<Item = &'a TransitionRecord>,
{
    let mut previous: Option<&TransitionRecord> = None;
    for (index, r) in records.into_iter().enumerate() {
        if transition(r.from, r.event) != Ok(r.to) || r.from == r.to {
            return Err(HistoryError::IllegalTransition { index });
        }
        if let Some(p) = previous {
            if p.to != r.from {
                return Err(HistoryError::Discontinuous { index });
            }
            if r.at_ms < p.at_ms {
                return Err(HistoryError::TimeWentBackwards { index });
            }
        }
        previous = Some(r);
    }
    match previous {
        Some(last) if last.to != state => Err(HistoryError::StateMismatch),
        _ => Ok(()),
    }
}

/// Why a transition history is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HistoryError {
    /// Record `index` is not an edge of the table (or is the internal self-transition,
    /// which is never recorded).
    #[error("record {index} is not a legal transition")]
    IllegalTransition {
        /// Position of the record, oldest first.
        index: usize,
    },
    /// Record `index` does not start where the previous one ended.
    #[error("record {index} does not continue from the previous state")]
    Discontinuous {
        /// Position of the record, oldest first.
        index: usize,
    },
    /// Record `index` is older than the previous one.
    #[error("record {index} is older than the previous one")]
    TimeWentBackwards {
        /// Position of the record, oldest first.
        index: usize,
    },
    /// The last record does not end in the current state.
    #[error("history does not end in the current state")]
    StateMismatch,
}

impl Error for HistoryError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// CBOR form (to persist across reboots or report to a backend): a map
/// `{0: state, 1: evicted, 2: [records, oldest first]}`. Decoding checks the history with
/// [`validate_history`] and refuses more than `H` records.
impl<C, const H: usize> minicbor::Encode<C> for Lifecycle<H> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(3)?;
        e.u8(0)?.encode_with(self.state, ctx)?;
        e.u8(1)?.u32(self.evicted)?;
        e.u8(2)?.array(self.history.len() as u64)?;
        for r in &self.history {
            e.encode_with(r, ctx)?;
        }
        Ok(())
    }
}

impl<C, const H: usize> minicbor::CborLen<C> for Lifecycle<H> {
    // A few small headers plus the records' own lengths: far from overflowing `usize`.
    #[allow(clippy::arithmetic_side_effects)]
    fn cbor_len(&self, ctx: &mut C) -> usize {
        4 + self.state.cbor_len(ctx)
            + self.evicted.cbor_len(ctx)
            + (self.history.len() as u64).cbor_len(ctx)
            + self.history.iter().map(|r| r.cbor_len(ctx)).sum::<usize>()
    }
}

impl<'b, C, const H: usize> minicbor::Decode<'b, C> for Lifecycle<H> {
    fn decode(d: &mut minicbor::Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let entries = crate::wire::map_len(d)?;
        let (mut state, mut evicted, mut history) = (None, None, Deque::new());
        let mut seen_history = false;
        let mut previous = None;
        for _ in 0..entries {
            match crate::wire::next_key(d, &mut previous)? {
                0 => state = Some(State::decode(d, ctx)?),
                1 => evicted = Some(d.u32()?),
                2 => {
                    seen_history = true;
                    let n = d.array()?.ok_or_else(iot_core::codec::invalid_value)?;
                    for _ in 0..n {
                        let r = TransitionRecord::decode(d, ctx)?;
                        history
                            .push_back(r)
                            .map_err(|_| iot_core::codec::capacity_exceeded())?;
                    }
                }
                _ => d.skip()?,
            }
        }
        let missing = iot_core::codec::missing_field;
        let state = state.ok_or_else(missing)?;
        if !seen_history {
            return Err(missing());
        }
        validate_history(history.iter(), state).map_err(|_| iot_core::codec::invalid_value())?;
        Ok(Self {
            state,
            history,
            evicted: evicted.ok_or_else(missing)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_match_all() {
        for (i, s) in State::ALL.iter().enumerate() {
            let mut buf = [0u8; 4];
            let n = iot_core::codec::encode_into(s, &mut buf).unwrap();
            assert_eq!(
                iot_core::codec::decode::<u8>(&buf[..n]).unwrap() as usize,
                i
            );
        }
        for (i, e) in Event::ALL.iter().enumerate() {
            let mut buf = [0u8; 4];
            let n = iot_core::codec::encode_into(e, &mut buf).unwrap();
            assert_eq!(
                iot_core::codec::decode::<u8>(&buf[..n]).unwrap() as usize,
                i
            );
        }
    }

    #[test]
    fn only_decommissioned_is_final() {
        for s in State::ALL {
            assert_eq!(s.is_final(), s == State::Decommissioned, "{s}");
        }
    }

    #[test]
    fn error_names_state_and_event() {
        let e = transition(State::Maintenance, Event::EndOfLife).unwrap_err();
        let mut text = heapless::String::<96>::new();
        core::fmt::write(&mut text, format_args!("{e}")).unwrap();
        assert_eq!(
            text.as_str(),
            "event EndOfLife is not allowed in state Maintenance"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidState);
    }

    #[derive(Default)]
    struct Trace {
        log: heapless::Vec<(bool, State, Event), 16>,
    }
    impl Hooks for Trace {
        fn on_exit(&mut self, state: State, event: Event) {
            self.log.push((false, state, event)).unwrap();
        }
        fn on_enter(&mut self, state: State, event: Event) {
            self.log.push((true, state, event)).unwrap();
        }
    }

    #[test]
    fn hooks_run_in_order_and_not_on_rejection_or_self_loop() {
        let mut lc: Lifecycle<4> = Lifecycle::new();
        let mut trace = Trace::default();
        lc.apply(Event::RegistrationInitiated, 10, &mut trace)
            .unwrap();
        assert_eq!(
            trace.log.as_slice(),
            &[
                (false, State::Unprovisioned, Event::RegistrationInitiated),
                (true, State::Provisioning, Event::RegistrationInitiated),
            ]
        );
        assert!(lc.apply(Event::EndOfLife, 11, &mut trace).is_err());
        assert_eq!(trace.log.len(), 2);
        lc.apply(Event::ConfigComplete, 12, &mut trace).unwrap();
        lc.apply(Event::NormalOperation, 13, &mut trace).unwrap();
        assert_eq!(trace.log.len(), 4);
        assert_eq!(lc.history().count(), 2);
        assert_eq!(lc.state(), State::Active);
    }

    #[test]
    fn history_is_a_bounded_ring_that_counts_evictions() {
        let mut lc: Lifecycle<3> = Lifecycle::resume(State::Active);
        for i in 0..5u64 {
            lc.apply(Event::HealthCheckFailed, i * 10, &mut ()).unwrap();
            lc.apply(Event::AutoRecovery, i * 10 + 5, &mut ()).unwrap();
        }
        assert_eq!(lc.history().count(), 3);
        assert_eq!(lc.evicted(), 7);
        let times: heapless::Vec<u64, 3> = lc.history().map(|r| r.at_ms).collect();
        assert_eq!(times.as_slice(), &[35, 40, 45]);
        assert_eq!(lc.last_transition().unwrap().to, State::Active);
    }

    #[test]
    fn lifecycle_round_trips_and_decoding_checks_the_history() {
        use iot_core::codec::{DecodeError, decode, encode_into, encoded_len};
        let mut lc: Lifecycle<4> = Lifecycle::new();
        for (t, e) in [
            Event::RegistrationInitiated,
            Event::ConfigComplete,
            Event::HealthCheckFailed,
            Event::ManualIntervention,
            Event::UpdateComplete,
        ]
        .into_iter()
        .enumerate()
        {
            lc.apply(e, t as u64 * 100, &mut ()).unwrap();
        }
        let mut buf = [0u8; 128];
        let n = encode_into(&lc, &mut buf).unwrap();
        assert_eq!(n, encoded_len(&lc));
        let back: Lifecycle<4> = decode(&buf[..n]).unwrap();
        assert_eq!(back.state(), State::Active);
        assert_eq!(back.evicted(), 1);
        assert!(back.history().eq(lc.history()));
        // Too many records for a smaller capacity.
        assert_eq!(
            decode::<Lifecycle<2>>(&buf[..n]).unwrap_err(),
            DecodeError::CapacityExceeded
        );
        // A state that the history does not end in.
        let mut forged = lc.clone();
        forged.state = State::Maintenance;
        let n = encode_into(&forged, &mut buf).unwrap();
        assert_eq!(
            decode::<Lifecycle<4>>(&buf[..n]).unwrap_err(),
            DecodeError::InvalidValue
        );
    }

    #[test]
    fn history_validation_names_the_first_bad_record() {
        let r = |from, event, to, at_ms| TransitionRecord {
            from,
            event,
            to,
            at_ms,
        };
        let good = [
            r(State::Active, Event::HealthCheckFailed, State::Degraded, 1),
            r(State::Degraded, Event::AutoRecovery, State::Active, 2),
        ];
        assert_eq!(validate_history(&good, State::Active), Ok(()));
        assert_eq!(
            validate_history(&good, State::Degraded),
            Err(HistoryError::StateMismatch)
        );
        assert_eq!(validate_history(&[], State::Maintenance), Ok(()));
        let illegal = [r(State::Active, Event::AutoRecovery, State::Active, 1)];
        assert_eq!(
            validate_history(&illegal, State::Active),
            Err(HistoryError::IllegalTransition { index: 0 })
        );
        let self_loop = [r(State::Active, Event::NormalOperation, State::Active, 1)];
        assert_eq!(
            validate_history(&self_loop, State::Active),
            Err(HistoryError::IllegalTransition { index: 0 })
        );
        let gap = [
            good[0],
            r(State::Active, Event::EndOfLife, State::Decommissioned, 3),
        ];
        assert_eq!(
            validate_history(&gap, State::Decommissioned),
            Err(HistoryError::Discontinuous { index: 1 })
        );
        let backwards = [
            good[0],
            r(State::Degraded, Event::AutoRecovery, State::Active, 0),
        ];
        assert_eq!(
            validate_history(&backwards, State::Active),
            Err(HistoryError::TimeWentBackwards { index: 1 })
        );
    }

    #[test]
    fn record_round_trips_in_cbor() {
        let r = TransitionRecord {
            from: State::Degraded,
            event: Event::Unrecoverable,
            to: State::Decommissioned,
            at_ms: 1_700_000_000_000,
        };
        let mut buf = [0u8; 32];
        let n = iot_core::codec::encode_into(&r, &mut buf).unwrap();
        assert_eq!(
            iot_core::codec::decode::<TransitionRecord>(&buf[..n]).unwrap(),
            r
        );
    }
}
