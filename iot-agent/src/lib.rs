#![no_std]
#![doc = include_str!("../README.md")]
//! # The agent
//!
//! The device agent: registration, then heartbeats, telemetry, health checks and shadow
//! syncs, driven by health and by the backend's commands, for any product.
//!
//! [`Agent`] is *sans-IO*: it never sleeps, never reads a clock and never touches a link.
//! The caller feeds it the time and every inbound message, and it answers through two small
//! traits the caller implements:
//!
//! - [`App`]: the product. Its shadow state ([`App::State`], a
//!   [`shadow_state!`](iot_shadow::shadow_state) struct changed with [`Agent::update`]),
//!   its readings for telemetry, its commands (it is a [`CommandHandler`]), its hardware
//!   actions ([`App::apply`]) and which desired values it can take ([`App::check`]). The
//!   device lab is one such product ([`lab`]; any [`Board`] is an [`App`]).
//! - [`Outbound`]: [`Outbound::send`] one message (on a device: enqueue it into an
//!   `iot_transport::qos::ReliableEndpoint`; in tests: record it).
//!
//! `Agent<T, ..>` is generic over the state type `T`; each call takes the application
//! `&mut A` with `A: App<State = T>`, so the agent holds no borrow of the hardware.
//!
//! The loop around it is always the same (the async [`runner`] does exactly this):
//!
//! 1. [`Agent::start`] once: sends the registration request.
//! 2. For each inbound envelope, [`Agent::handle`].
//! 3. [`Agent::poll`] runs every duty that is due and returns the next deadline: sleep
//!    until then or until a message arrives, whichever comes first. No busy waiting.
//!
//! # What it does
//!
//! | when | what | kind (QoS) |
//! |---|---|---|
//! | `start`, then on the registration backoff until answered | registration request; the answer to the backend's challenge (HMAC proof) | `RegistrationRequest` (0) |
//! | every `health_interval_ms` (5 s) | health check, report sent every time; drives `Degraded` and `AutoRecovery` | `HealthReport` (0) |
//! | every `heartbeat_interval_ms` (10 s) | [`Heartbeat`] | `Heartbeat` (0) |
//! | every `sync_interval_ms` (15 s), at once on a change | pending shadow changes, or a `ShadowGet` with the last version when nothing is pending | `ShadowUpdate` (1) / `ShadowGet` (0) |
//! | every `telemetry_interval_ms` (30 s; x3 in `Degraded`; paused in `Maintenance`) | the application's [`App::readings`], report-on-change | `Telemetry` (1) |
//! | each new command | exactly one ack | `CommandAck` (1) |
//! | decommissioning | the [`AuditRecord`](iot_lifecycle::registration::AuditRecord), then silence | `Decommission` (1) |
//!
//! # Rules
//!
//! - **Report-on-change.** At each telemetry run every quantity is offered to its own
//!   [`ReportOnChange`] filter (deadband: `telemetry_deadband` of the configuration; maximum
//!   silence: [`SILENT_TELEMETRY_PERIODS`] normal telemetry periods). The message carries
//!   the readings that passed; when none passed, nothing is sent. So a steady sensor is still
//!   heard from at least every 4 periods (2 min on the lab's 30 s), and a changing one every
//!   period.
//! - **Health.** Every check's report is sent. A `Critical` check moves `Active` to
//!   `Degraded` (telemetry `degraded_telemetry_factor` times slower); `recovery_checks`
//!   healthy checks in a row move it back (`AutoRecovery`).
//! - **Maintenance** is entered and left only by the commands `EnterMaintenance` and
//!   `ExitMaintenance` (through [`DeviceCommands`]); telemetry pauses in between.
//! - **Commands.** A command id is acked once. A redelivered command (same id, still in the
//!   [`CommandProcessor`] window of `C` ids) is neither executed nor acked again: the first
//!   ack travels at least once (QoS 1), so the transport repairs its loss.
//! - **Configuration: who is the source of truth.** The versioned [`ConfigStore`] holds
//!   everything the backend configures (registration, `ConfigUpdate`, `SetConfig`). The
//!   telemetry interval is also a shadow field (`config.telemetry_interval_ms`,
//!   last-writer-wins): an operator may change it through the shadow's desired state, and
//!   the interval in force is the shadow's *reported* value. A newer configuration version
//!   writes its interval into the shadow (the later write wins); a desired interval that the
//!   configuration rules refuse (0, or above one day) is overwritten by the device with the
//!   interval in force, which clears the desired value. The shadow also reports the lifecycle state and the
//!   configuration version (device-owned) and the LED (last-writer-wins).
//! - **Desired values the device cannot take are refused visibly, never dropped.** A
//!   value of the wrong type, an `f32` field's value that `f32` does not hold *exactly*
//!   (21.5 is taken; 21.3 is refused: the device reports back exactly what it holds, so a
//!   rounded value would leave desired and reported apart forever; a backend that wants
//!   21.3 sends `f64::from(21.3f32)`), or a state [`App::check`] refuses (a range): the
//!   device keeps its value and reports it with a fresh stamp, which clears the desired
//!   value under last-writer-wins; the refusal is counted
//!   ([`AgentStats::desired_refused`]) and kept ([`Agent::last_refusal`]), and the
//!   backend records it (`iot_fleet::DeviceServer::declined`).
//! - **Restart.** [`Agent::save`] writes the agent's record (lifecycle, configuration,
//!   shadow state and version, remembered command acks, message-id epoch) to a [`Storage`]
//!   (on a device [`storage::FlashStorage`], a `sequential-storage` map on the chip's
//!   `NorFlash`) whenever it changed; [`Agent::restore`] at boot resumes a registered device
//!   without registering again, re-applies its state to the hardware and fetches the shadow
//!   document. [`runner::Runner::save`] and [`runner::Runner::restore`] add the transport
//!   outbox's pending QoS 1/2 messages.
//! - **Decommissioning** (`Decommission` message with a
//!   [`DecommissionReason`](iot_lifecycle::registration::DecommissionReason)): user data and the secret are wiped by
//!   [`registration::decommission`](iot_lifecycle::registration::decommission), the audit record is
//!   sent, and the agent falls silent: [`Agent::poll`] returns `None` and every later message
//!   is refused.
//!
//! No allocation: every buffer is inside the [`Agent`] (its size is the sum of its const
//! generic capacities) or on the stack. The `B`-byte encode buffer lives on the stack only
//! while a message is encoded and sent, so it costs no static RAM between sends.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub use iot_lifecycle;
pub use iot_protocol;
pub use iot_shadow;

pub mod lab;
pub mod ota;
pub mod runner;
pub mod storage;

use iot_core::codec::DecodeError;
use iot_core::flow::{Decision, FlowError, ReportOnChange, ReportReason};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::{DeviceId, EnvelopeRef, Error, ErrorKind, MessageKind, NodeId, QoS};
use iot_shadow::typed::{FieldTable, ShadowState};
use iot_shadow::{DeviceShadow, Handled, Limits, Path, Section, ShadowError, Value};
use iot_transport::SplitMix64;
use iot_transport::retry::{Backoff, BackoffPolicy, Jitter};

use iot_lifecycle::command::{
    CommandAck, CommandHandler, CommandProcessor, DeviceCommands, command_id,
};
use iot_lifecycle::config::{
    ApplyOutcome, ConfigError, ConfigStore, DeviceConfig, ValidationError,
};
use iot_lifecycle::health::{HealthMonitor, HealthSample, HealthStatus};
use iot_lifecycle::ota::{OtaError, OtaJob, OtaProgress, OtaState};
use iot_lifecycle::registration::{
    DecommissionError, DeviceSecret, RegistrationRejection, RegistrationRequest,
    RegistrationResponse, Wipe, decommission,
};
use iot_lifecycle::schedule::{Duty, Mode, Schedule};
use iot_lifecycle::state::{Event, Lifecycle, State};
use iot_protocol::{
    Downlink, OtaBlock, OtaBlockRequest, PROTOCOL_VERSION, ProtocolError, ReadingCounts, Register,
    ShadowGet, Uplink,
};

pub use lab::{AGENT_SCHEMA, AgentState, Board, LabAgent, SensorSample, TELEMETRY_READINGS};
pub use ota::Firmware;
pub use storage::Storage;

pub use iot_protocol::Heartbeat;

/// A steady reading is still reported after this many normal telemetry periods.
pub const SILENT_TELEMETRY_PERIODS: u64 = 4;
/// Remote shadow stamps further ahead than this are not adopted by the device clock.
pub const MAX_CLOCK_DRIFT_MS: u64 = 60_000;
/// Duties run by one [`Agent::poll`] at most (a bound, never reached in practice: four
/// duties plus one immediate sync).
const MAX_DUTIES_PER_POLL: usize = 16;

/// The registration retry policy unless set with [`Agent::with_registration_backoff`]:
/// 2 s doubling to 60 s, equal jitter, unlimited attempts.
pub const DEFAULT_REGISTRATION_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(2_000, 60_000).with_jitter(Jitter::Equal);

/// The QoS the agent requests for each kind of message it sends: the protocol's
/// ([`iot_protocol::qos`]).
pub const fn qos_for(kind: MessageKind) -> QoS {
    iot_protocol::qos(kind)
}

/// Vital signs the agent's health checks judge. Absent values are not checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Vitals {
    /// Battery charge in percent.
    pub battery_percent: Option<u8>,
    /// Battery voltage in millivolts.
    pub battery_mv: Option<u16>,
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i16>,
    /// Free memory in bytes.
    pub free_memory_bytes: Option<u32>,
    /// The application's main reading, checked for plausibility (finite).
    pub reading: Option<f32>,
    /// Sends that failed in a row, as the transport counts them.
    pub consecutive_send_failures: u16,
    /// Errors counted since boot (wrapping).
    pub error_count: u32,
}

/// The product the agent runs: its shadow state, its readings, its commands and the
/// hardware actions that carry out its state. Everything else (registration, lifecycle,
/// configuration, health, heartbeats, OTA, delivery) is the agent's.
///
/// The agent finds the fields it maintains in [`App::State`] by path, so an application
/// includes only those it wants in its shadow: [`paths::TELEMETRY_INTERVAL`] (`u32`, the
/// telemetry interval in force; the operator may change it through the desired state),
/// [`paths::LIFECYCLE`] (`u8`, device-owned) and [`paths::CONFIG_VERSION`] (`u32`,
/// device-owned). The application changes its own fields with [`Agent::update`] (typed:
/// a closure over the state struct).
pub trait App: CommandHandler {
    /// The shadow state, declared with [`iot_shadow::shadow_state!`].
    type State: ShadowState + Clone + PartialEq;

    /// Pushes this telemetry run's readings into `readings` (at most its capacity; the
    /// rest is dropped). Each quantity (a [`Measurement`] kind, a custom id) has its own
    /// report-on-change filter.
    fn readings(&mut self, now_ms: u64, readings: &mut heapless::VecView<Measurement>);

    /// The vital signs for a health check. All absent by default.
    fn vitals(&mut self, now_ms: u64) -> Vitals {
        let _ = now_ms;
        Vitals::default()
    }

    /// Carries out `state` on the hardware: called whenever the shadow's state changed
    /// from `previous` (a desired value adopted, a local update, a restore after reboot).
    fn apply(&mut self, state: &Self::State, previous: &Self::State) {
        let _ = (state, previous);
    }

    /// Whether the device can take `state` (ranges, combinations); called before a
    /// desired value is adopted. A refused value is reported, never silently dropped.
    fn check(&self, state: &Self::State) -> Result<(), Refusal> {
        let _ = state;
        Ok(())
    }

    /// Erases user data and logs when the device is decommissioned; `false` if it failed
    /// (then nothing else is wiped and decommissioning can be retried).
    fn wipe_user_data(&mut self) -> bool {
        true
    }

    /// The firmware updater, if the device updates itself over the air. `None` (the
    /// default): an `OtaJob` is answered with a rolled-back progress report.
    fn firmware(&mut self) -> Option<&mut dyn Firmware> {
        None
    }

    /// Restarts the device into the image just installed for its trial boot. Does nothing
    /// by default.
    fn restart(&mut self) {}
}

/// Why the application refuses a desired value ([`App::check`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Refusal {
    /// The value has the wrong type for the field (or is an `f32` that does not hold it
    /// exactly).
    Type,
    /// The value is outside the range the device can take.
    Range,
}

/// The shadow paths of the fields the agent maintains when an [`App::State`] has them.
pub mod paths {
    /// Telemetry interval in force, in milliseconds (`u32`, last-writer-wins).
    pub const TELEMETRY_INTERVAL: &str = "config.telemetry_interval_ms";
    /// Lifecycle state, the wire code of `State` (`u8`, device-owned).
    pub const LIFECYCLE: &str = "lifecycle";
    /// Configuration version in force (`u32`, device-owned).
    pub const CONFIG_VERSION: &str = "config.version";
}

/// Where the agent's messages go.
pub trait Outbound {
    /// Why a message could not be sent (for example a full outbox).
    type Error;
    /// Sends (or queues) one message.
    fn send(
        &mut self,
        kind: MessageKind,
        qos: QoS,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), Self::Error>;
}

/// Where registration stands.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegistrationPhase {
    /// Not started.
    Idle,
    /// Request sent, waiting for the backend's challenge.
    AwaitingChallenge,
    /// Challenge answered, waiting for the verdict.
    AwaitingVerdict,
    /// Accepted: the device is provisioned.
    Registered,
    /// Refused by the backend; the device is `Unprovisioned` again.
    Rejected(RegistrationRejection),
    /// The backoff policy ran out of attempts or time; the device is `Unprovisioned` again.
    GaveUp,
}

/// Why the agent refused an inbound message or a call. The agent's state is consistent
/// after every error; none is fatal.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AgentError {
    /// The payload does not decode.
    #[error("undecodable payload: {0}")]
    Decode(#[from] DecodeError),
    /// The message is not one a backend sends, or not what its kind promises.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The message or call does not fit the lifecycle state.
    #[error("not expected in state {0}")]
    Unexpected(State),
    /// The shadow refused a notification.
    #[error("shadow: {0}")]
    Shadow(#[from] ShadowError),
    /// A configuration was not applied (the previous one stays in force).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// Decommissioning is not allowed from this state; nothing was wiped.
    #[error("cannot decommission from state {0}")]
    DecommissionRefused(State),
    /// Wiping user data failed; nothing else was wiped.
    #[error("wiping user data failed")]
    WipeFailed,
    /// The firmware updater refused a step; the update was abandoned and reported.
    #[error("firmware update: {0}")]
    Ota(OtaError),
    /// A message could not be encoded or sent (counted in [`AgentStats`]).
    #[error("a message could not be sent")]
    Send,
}

impl Error for AgentError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Decode(e) => e.kind(),
            Self::Protocol(e) => e.kind(),
            Self::Unexpected(_) | Self::DecommissionRefused(_) => ErrorKind::InvalidState,
            Self::Shadow(e) => e.kind(),
            Self::Config(e) => e.kind(),
            Self::WipeFailed => ErrorKind::Storage,
            Self::Ota(e) => e.kind(),
            Self::Send => ErrorKind::Transport,
        }
    }
}

/// Counters of what the agent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AgentStats {
    /// Messages handed to [`Outbound::send`] successfully.
    pub sent: u32,
    /// Messages [`Outbound::send`] refused.
    pub send_errors: u32,
    /// Messages that could not be encoded (buffer too small).
    pub encode_errors: u32,
    /// Inbound messages refused (see [`AgentError`]).
    pub rejected: u32,
    /// Registration requests sent, answers included.
    pub registration_requests: u32,
    /// Readings held back by report-on-change.
    pub readings_suppressed: u32,
    /// Readings sent in telemetry batches the link took.
    pub readings_sent: u32,
    /// Desired values the device refused and cleared: an invalid telemetry interval, a
    /// value of the wrong type or an inexact `f32`, or one [`App::check`] refused.
    pub desired_refused: u32,
    /// Initial configurations (in a registration acceptance) that were stale or invalid;
    /// the configuration in force was kept.
    pub configs_refused: u32,
}

struct BoardWipe<'a, B: ?Sized>(&'a mut B);

impl<B: App + ?Sized> Wipe for BoardWipe<'_, B> {
    type Error = ();
    fn wipe(&mut self) -> Result<(), ()> {
        if self.0.wipe_user_data() {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// The device agent. `H`: lifecycle history records; `C`: command ids remembered for
/// idempotence; `S`: shadow leaves (at least 8 for [`AgentState`]: its four fields, desired
/// and reported); `B`: bytes of the largest payload it encodes (a stack buffer while it
/// sends, not part of the agent). See the [module
/// documentation](self).
pub struct Agent<
    T,
    const H: usize,
    const C: usize,
    const S: usize,
    const B: usize,
    const R: usize = TELEMETRY_READINGS,
> {
    device: DeviceId,
    firmware_version: u32,
    secret: DeviceSecret,
    lifecycle: Lifecycle<H>,
    health: HealthMonitor,
    commands: CommandProcessor<C>,
    config: ConfigStore,
    /// The configuration the schedule and filters were built from (the store's, with the
    /// shadow's telemetry interval).
    in_force: DeviceConfig,
    schedule: Schedule,
    shadow: DeviceShadow<T, S>,
    /// The state last carried out by [`App::apply`].
    applied: T,
    /// One report-on-change filter per quantity, keyed by [`quantity_key`].
    filters: [Option<(u32, ReportOnChange)>; R],
    registration: RegistrationPhase,
    backoff: Backoff,
    rng: SplitMix64,
    retry_at: Option<u64>,
    last_attempt: bool,
    started_ms: Option<u64>,
    heartbeat_seq: u32,
    /// The update being downloaded, and when to ask again for the block awaited.
    ota: Option<OtaJob>,
    ota_retry_at: Option<u64>,
    transitions_reported: u32,
    schema: u32,
    send_failures: u16,
    last_refusal: Option<(&'static str, Refusal)>,
    /// Boots since the first record (the high half of message ids).
    epoch: u16,
    /// The digest of the record last saved.
    saved: Option<u32>,
    stats: AgentStats,
}

impl<T, const H: usize, const C: usize, const S: usize, const B: usize, const R: usize>
    core::fmt::Debug for Agent<T, H, C, S, B, R>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.device)
            .field("state", &self.lifecycle.state())
            .field("mode", &self.schedule.mode())
            .field("registration", &self.registration)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The report-on-change filter a configuration asks for; `None` (never for a validated
/// configuration) sends every reading.
fn filter_for(config: &DeviceConfig) -> Option<ReportOnChange> {
    let silence = u64::from(config.telemetry_interval_ms).saturating_mul(SILENT_TELEMETRY_PERIODS);
    ReportOnChange::new(config.telemetry_deadband)
        .ok()
        .map(|f| f.with_max_silence_ms(silence))
}

/// Which quantity a measurement is, so each has its own filter whatever the order and
/// presence of the others.
const fn quantity_key(measurement: &Measurement) -> u32 {
    match measurement {
        Measurement::Temperature { .. } => 0,
        Measurement::Humidity { .. } => 1,
        Measurement::BatteryPercent { .. } => 2,
        Measurement::BatteryVoltage { .. } => 3,
        Measurement::Occupancy { .. } => 4,
        Measurement::Rssi { .. } => 5,
        Measurement::Custom { id, .. } => 0x1_0000 | *id as u32,
        #[allow(unreachable_patterns)]
        _ => u32::MAX,
    }
}

const fn mode_for(state: State) -> Mode {
    match state {
        State::Active => Mode::Normal,
        State::Degraded => Mode::Degraded,
        State::Maintenance => Mode::Maintenance,
        State::Unprovisioned | State::Provisioning | State::Decommissioned => Mode::Suspended,
    }
}

impl<T, const H: usize, const C: usize, const S: usize, const B: usize, const R: usize>
    Agent<T, H, C, S, B, R>
where
    T: ShadowState + Clone + PartialEq,
{
    /// A factory-fresh agent (`Unprovisioned`, nothing scheduled) for `device` (for
    /// example [`DeviceId::from_mac`]) holding its factory `secret`, starting from
    /// `config` (the defaults, or the configuration read back from flash).
    ///
    /// `state` is the application's initial shadow state; the fields the agent maintains
    /// ([`paths`]) are overwritten from `config` and the lifecycle.
    pub fn with_state(
        device: DeviceId,
        firmware_version: u32,
        secret: DeviceSecret,
        config: DeviceConfig,
        state: T,
    ) -> Result<Self, ValidationError> {
        let store = ConfigStore::with_config(config)?;
        let schedule = Schedule::suspended(&config)?;
        let node = NodeId::from_device_id(&device);
        let mut state = state;
        for (path, value) in [
            (paths::TELEMETRY_INTERVAL, config.telemetry_interval_ms),
            (paths::LIFECYCLE, u32::from(State::Unprovisioned.code())),
            (paths::CONFIG_VERSION, config.version),
        ] {
            if let Some(id) = T::field_id(path) {
                let _ = state.set_field(id, &Value::Int(value.into()));
            }
        }
        Ok(Self {
            device,
            firmware_version,
            secret,
            lifecycle: Lifecycle::new(),
            health: HealthMonitor::new(config.thresholds),
            commands: CommandProcessor::new(),
            config: store,
            in_force: config,
            schedule,
            applied: state.clone(),
            shadow: DeviceShadow::new(state, node, Limits::DEFAULT, MAX_CLOCK_DRIFT_MS),
            filters: [const { None }; R],
            registration: RegistrationPhase::Idle,
            backoff: Backoff::new(DEFAULT_REGISTRATION_BACKOFF, 0),
            rng: SplitMix64::new(u64::from(node.0)),
            retry_at: None,
            last_attempt: false,
            started_ms: None,
            heartbeat_seq: 0,
            ota: None,
            ota_retry_at: None,
            transitions_reported: 0,
            schema: FieldTable::of::<T>().fingerprint(),
            send_failures: 0,
            last_refusal: None,
            epoch: 0,
            saved: None,
            stats: AgentStats::default(),
        })
    }

    /// Announces another shadow schema id at registration than the state's
    /// fingerprint ([`iot_protocol::Register::schema`]; 0: none declared).
    #[must_use]
    pub const fn with_schema(mut self, schema: u32) -> Self {
        self.schema = schema;
        self
    }

    /// Retries registration on `policy` instead of [`DEFAULT_REGISTRATION_BACKOFF`].
    #[must_use]
    pub const fn with_registration_backoff(mut self, policy: BackoffPolicy) -> Self {
        self.backoff = Backoff::new(policy, 0);
        self
    }

    /// The device id.
    pub const fn device(&self) -> DeviceId {
        self.device
    }

    /// The lifecycle state.
    pub const fn state(&self) -> State {
        self.lifecycle.state()
    }

    /// The lifecycle, with its history.
    pub const fn lifecycle(&self) -> &Lifecycle<H> {
        &self.lifecycle
    }

    /// The scheduling mode.
    pub const fn mode(&self) -> Mode {
        self.schedule.mode()
    }

    /// The schedule (periods and deadlines).
    pub const fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The versioned configuration store.
    pub const fn config(&self) -> &ConfigStore {
        &self.config
    }

    /// The configuration in force: the store's, with the shadow's telemetry interval.
    pub const fn config_in_force(&self) -> &DeviceConfig {
        &self.in_force
    }

    /// The device shadow.
    pub const fn shadow(&self) -> &DeviceShadow<T, S> {
        &self.shadow
    }

    /// The health monitor.
    pub const fn health(&self) -> &HealthMonitor {
        &self.health
    }

    /// The command processor (remembered acks).
    pub const fn commands(&self) -> &CommandProcessor<C> {
        &self.commands
    }

    /// Where registration stands.
    pub const fn registration(&self) -> RegistrationPhase {
        self.registration
    }

    /// Counters.
    pub const fn stats(&self) -> AgentStats {
        self.stats
    }

    /// Whether the device secret has been wiped (decommissioned).
    pub const fn is_wiped(&self) -> bool {
        self.secret.is_wiped()
    }

    /// The earliest time [`Agent::poll`] has work: a duty or a registration retry. `None`
    /// when nothing will run until a message arrives or [`Agent::start`] is called.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.schedule.next_deadline(),
            self.retry_at,
            self.ota_retry_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The first message id for the endpoint after this boot: the boot epoch (counted by
    /// [`Agent::restore`] and saved with the record) in the high 16 bits, so ids never
    /// repeat across reboots and a peer's duplicate filter never drops a new message.
    /// Give it to `ReliableEndpoint::with_next_id` once the record is saved.
    pub const fn first_message_id(&self) -> u32 {
        ((self.epoch as u32) << 16) | 1
    }

    /// Writes the agent's record to `storage` if it changed since the last save: lifecycle
    /// state and registration, configuration, the shadow's typed state, the boot epoch,
    /// the heartbeat sequence and the remembered command acks. Call it after each round
    /// (and before sending the answers it made); `Ok(true)` if it wrote.
    pub fn save<St: Storage + ?Sized>(&mut self, storage: &mut St) -> Result<bool, St::Error> {
        let mut buf = [0u8; B];
        let Some(n) = self.encode_record(&mut buf) else {
            self.stats.encode_errors = self.stats.encode_errors.saturating_add(1);
            return Ok(false);
        };
        let record = buf.get(..n).unwrap_or_default();
        let digest = record_digest(record);
        if self.saved == Some(digest) {
            return Ok(false);
        }
        storage.save(record)?;
        self.saved = Some(digest);
        Ok(true)
    }

    /// At boot, before [`Agent::start`]: reads the record [`Agent::save`] wrote and
    /// resumes from it. A registered device resumes its lifecycle state without
    /// registering again, carries out the restored state on the hardware at once
    /// ([`App::apply`]) and asks the backend for the full shadow document, whose desired
    /// values it then applies. `Ok(false)`: no record (a fresh device: call
    /// [`Agent::start`]). A record that does not decode is treated as none.
    pub fn restore<St, D, O>(
        &mut self,
        storage: &mut St,
        now_ms: u64,
        app: &mut D,
        out: &mut O,
    ) -> Result<bool, St::Error>
    where
        St: Storage + ?Sized,
        D: App<State = T> + ?Sized,
        O: Outbound + ?Sized,
    {
        let mut buf = [0u8; B];
        let Some(record) = storage.load(&mut buf)? else {
            return Ok(false);
        };
        let Some(restored) = decode_record::<T, C>(record, self.shadow.state().clone()) else {
            return Ok(false);
        };
        self.epoch = restored.epoch.wrapping_add(1);
        self.heartbeat_seq = restored.heartbeat_seq;
        for ack in restored.acks {
            self.commands.remember(ack);
        }
        if let Ok(store) = ConfigStore::with_config(restored.config) {
            self.config = store;
            self.health.set_thresholds(restored.config.thresholds);
        }
        let node = NodeId::from_device_id(&self.device);
        self.shadow = DeviceShadow::new(
            restored.state.clone(),
            node,
            Limits::DEFAULT,
            MAX_CLOCK_DRIFT_MS,
        )
        .with_last_version(restored.shadow_version);
        self.refresh_cadence(now_ms);
        self.apply_state(app);
        self.lifecycle = Lifecycle::resume(restored.lifecycle);
        if restored.lifecycle == State::Decommissioned {
            self.secret.wipe();
        }
        if restored.registered && mode_for(restored.lifecycle) != Mode::Suspended {
            self.registration = RegistrationPhase::Registered;
            self.started_ms = Some(now_ms);
            self.transitions_reported = self.transition_count();
            self.sync_mode(now_ms);
            self.emit(&Uplink::ShadowGet(ShadowGet { version: 0 }), now_ms, out);
        }
        Ok(true)
    }

    fn encode_record(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Cursor { buf, at: 0 };
        let registered = self.registration == RegistrationPhase::Registered;
        w.put(&[
            RECORD_VERSION,
            u8::from(registered),
            self.lifecycle.state().code(),
        ])?;
        w.put(&self.epoch.to_le_bytes())?;
        w.put(&self.heartbeat_seq.to_le_bytes())?;
        w.put(&self.shadow.last_version().to_le_bytes())?;
        let mut config = [0u8; 96];
        let n = iot_core::codec::encode_into(self.config.current(), &mut config).ok()?;
        w.put(&u16::try_from(n).ok()?.to_le_bytes())?;
        w.put(config.get(..n)?)?;
        let state = self.shadow.state();
        w.put(&[u8::try_from(T::FIELDS.len()).ok()?])?;
        for id in 0..T::FIELDS.len() {
            match state.get_field(id) {
                Some(Value::Bool(b)) => w.put(&[1, u8::from(b)])?,
                Some(Value::Int(i)) => {
                    w.put(&[2])?;
                    w.put(&i.to_le_bytes())?
                }
                Some(Value::Float(f)) => {
                    w.put(&[3])?;
                    w.put(&f.get().to_le_bytes())?
                }
                // Text and arrays come back with the shadow document.
                _ => w.put(&[0])?,
            }
        }
        let acks = self.commands.acks();
        let mut ack_buf = [0u8; 64];
        let count = self.commands.acks().count();
        w.put(&[u8::try_from(count).ok()?])?;
        for ack in acks {
            let n = iot_core::codec::encode_into(ack, &mut ack_buf).ok()?;
            w.put(&[u8::try_from(n).ok()?])?;
            w.put(ack_buf.get(..n)?)?;
        }
        Some(w.at)
    }

    /// Starts (or restarts) registration at `now_ms`: `Unprovisioned -> Provisioning` and
    /// the first registration request. Later attempts follow the backoff in
    /// [`Agent::poll`] until the backend answers.
    pub fn start<O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        out: &mut O,
    ) -> Result<(), AgentError> {
        match self.lifecycle.state() {
            State::Unprovisioned => {
                self.lifecycle
                    .apply(Event::RegistrationInitiated, now_ms, &mut ())
                    .map_err(|e| AgentError::Unexpected(e.state))?;
            }
            State::Provisioning => {}
            other => return Err(AgentError::Unexpected(other)),
        }
        self.started_ms.get_or_insert(now_ms);
        self.backoff.reset(now_ms);
        self.last_attempt = false;
        self.send_registration(now_ms, None, out)
    }

    /// Restores remembered command acks (persisted from [`Agent::commands`] before a
    /// reboot), so a command redelivered after the reboot is not executed again.
    pub fn restore_acks<I: IntoIterator<Item = CommandAck>>(&mut self, acks: I) {
        for ack in acks {
            self.commands.remember(ack);
        }
    }

    /// Changes the application's state locally (a button, a local decision) and syncs the
    /// shadow at once: `change` edits a copy of the state; every field it changed is
    /// written to the shadow, then [`App::apply`] carries out the result (a cloud-owned
    /// field may have been set back to its desired value).
    pub fn update<D: App<State = T> + ?Sized>(
        &mut self,
        now_ms: u64,
        app: &mut D,
        change: impl FnOnce(&mut T),
    ) -> Result<(), AgentError> {
        let mut wanted = self.shadow.state().clone();
        change(&mut wanted);
        let mut result = Ok(());
        for id in 0..T::FIELDS.len() {
            let Some(value) = wanted.get_field(id) else {
                continue;
            };
            if self.shadow.state().get_field(id).as_ref() != Some(&value)
                && let Err(e) = self.shadow.set(id, value, now_ms)
            {
                result = Err(AgentError::Shadow(e));
            }
        }
        self.apply_state(app);
        self.schedule.run_now(Duty::ShadowSync, now_ms);
        result
    }

    /// Handles one inbound message at `now_ms`. Afterwards call [`Agent::poll`] (a change
    /// may have made a shadow sync due at once).
    pub fn handle<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        envelope: &EnvelopeRef<'_>,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let result = self.dispatch(now_ms, envelope, board, out);
        if result.is_err() {
            self.stats.rejected = self.stats.rejected.saturating_add(1);
        }
        self.report_transitions(now_ms, out);
        result
    }

    fn dispatch<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        envelope: &EnvelopeRef<'_>,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let state = self.lifecycle.state();
        let operating = matches!(state, State::Active | State::Degraded | State::Maintenance);
        let payload = envelope.payload;
        match Downlink::decode(envelope.kind, payload)? {
            Downlink::Registration(response) => self.on_registration(now_ms, response, board, out),
            Downlink::Shadow(message) if operating => {
                self.on_shadow(now_ms, message.bytes(), board, out)
            }
            Downlink::ShadowRejected(_) if operating => {
                // The backend's document moved on: fetch it, then the pending writes are
                // sent again on the next sync.
                self.request_document(now_ms, out);
                Ok(())
            }
            Downlink::Command(_) if operating => self.on_command(now_ms, payload, board, out),
            Downlink::Config(config) if operating => {
                if self.config.apply(config)? != ApplyOutcome::AlreadyCurrent {
                    self.adopt_config(now_ms);
                }
                Ok(())
            }
            Downlink::OtaJob(job) if operating => self.on_ota_job(now_ms, job, board, out),
            Downlink::OtaBlock(block) if operating => self.on_ota_block(now_ms, &block, board, out),
            Downlink::Decommission(reason) if operating => {
                self.on_decommission(now_ms, reason, board, out)
            }
            _ => Err(AgentError::Unexpected(state)),
        }
    }

    /// Runs every duty due at `now_ms` (and a registration retry if one is due), then
    /// returns the next deadline: sleep until then, or until a message arrives. `None`
    /// when nothing will run (not started, gave up or was refused registration, or
    /// decommissioned). A returned deadline is later than `now_ms`, except after more than
    /// 16 duties fell due at once (then it is `now_ms`: poll again).
    pub fn poll<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        board: &mut D,
        out: &mut O,
    ) -> Option<u64> {
        if self.retry_at.is_some_and(|at| at <= now_ms) {
            self.retry_registration(now_ms, out);
        }
        if self.ota_retry_at.is_some_and(|at| at <= now_ms) {
            let offset = board.firmware().map(|f| f.progress().next_offset);
            match offset {
                Some(offset) => self.request_block(now_ms, offset, out),
                None => self.ota_retry_at = None,
            }
        }
        for _ in 0..MAX_DUTIES_PER_POLL {
            let Some(duty) = self.schedule.poll(now_ms) else {
                break;
            };
            match duty {
                Duty::HealthCheck => self.check_health(now_ms, board, out),
                Duty::Heartbeat => self.heartbeat(now_ms, out),
                Duty::ShadowSync => self.sync_shadow(now_ms, out),
                Duty::Telemetry => self.telemetry(now_ms, board, out),
            }
            self.report_transitions(now_ms, out);
        }
        self.next_deadline()
    }

    /// How many transitions the lifecycle has made (recorded or evicted).
    fn transition_count(&self) -> u32 {
        let recorded = u32::try_from(self.lifecycle.history().count()).unwrap_or(u32::MAX);
        self.lifecycle.evicted().saturating_add(recorded)
    }

    /// Sends a `LifecycleReport` for every transition made since the last call, once the
    /// device is registered (before that the backend does not know it; decommissioning is
    /// reported by its audit record instead).
    fn report_transitions<O: Outbound + ?Sized>(&mut self, now_ms: u64, out: &mut O) {
        let total = self.transition_count();
        if self.registration != RegistrationPhase::Registered {
            self.transitions_reported = total;
            return;
        }
        let pending = total.saturating_sub(self.transitions_reported);
        self.transitions_reported = total;
        if pending == 0 {
            return;
        }
        let recorded = self.lifecycle.history().count();
        let first = recorded.saturating_sub(usize::try_from(pending).unwrap_or(usize::MAX));
        for index in first..recorded {
            let Some(record) = self.lifecycle.history().nth(index).copied() else {
                break;
            };
            if record.to != State::Decommissioned {
                self.emit(&Uplink::Transition(record), now_ms, out);
            }
        }
    }

    // ---- registration -------------------------------------------------------------------

    fn send_registration<O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        nonce: Option<&[u8; 16]>,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let request = match nonce {
            None => RegistrationRequest {
                device: self.device,
                firmware_version: self.firmware_version,
                answer: None,
            },
            Some(nonce) => RegistrationRequest::answering(
                self.device,
                self.firmware_version,
                &self.secret,
                nonce,
            )
            .map_err(|_| AgentError::Unexpected(self.lifecycle.state()))?,
        };
        self.registration = if nonce.is_some() {
            RegistrationPhase::AwaitingVerdict
        } else {
            RegistrationPhase::AwaitingChallenge
        };
        if nonce.is_none() {
            self.arm_retry(now_ms);
        }
        self.stats.registration_requests = self.stats.registration_requests.saturating_add(1);
        let register = Register {
            protocol: PROTOCOL_VERSION,
            schema: self.schema,
            request,
        };
        if self.emit(&Uplink::Register(register), now_ms, out) {
            Ok(())
        } else {
            Err(AgentError::Send)
        }
    }

    /// Arms the timer for the next attempt (the wait for an answer to this one).
    fn arm_retry(&mut self, now_ms: u64) {
        match self.backoff.next_delay(now_ms, &mut self.rng) {
            Some(delay) => self.retry_at = Some(now_ms.saturating_add(delay.max(1))),
            None => {
                // Out of attempts: wait one more maximal delay for this last answer.
                self.last_attempt = true;
                let wait = self.backoff.policy().max_delay_ms.max(1);
                self.retry_at = Some(now_ms.saturating_add(wait));
            }
        }
    }

    fn retry_registration<O: Outbound + ?Sized>(&mut self, now_ms: u64, out: &mut O) {
        self.retry_at = None;
        if self.lifecycle.state() != State::Provisioning {
            return;
        }
        if self.last_attempt {
            let _ = self
                .lifecycle
                .apply(Event::ProvisioningFailed, now_ms, &mut ());
            self.registration = RegistrationPhase::GaveUp;
            return;
        }
        let _ = self.send_registration(now_ms, None, out);
    }

    fn on_registration<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        response: RegistrationResponse,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let state = self.lifecycle.state();
        if state != State::Provisioning {
            return Err(AgentError::Unexpected(state));
        }
        match response {
            RegistrationResponse::Challenge(nonce) => {
                if self.registration != RegistrationPhase::AwaitingChallenge {
                    return Err(AgentError::Unexpected(state));
                }
                self.send_registration(now_ms, Some(&nonce), out)
            }
            RegistrationResponse::Accepted(config) => {
                if self.registration != RegistrationPhase::AwaitingVerdict {
                    return Err(AgentError::Unexpected(state));
                }
                // A stale or invalid initial configuration leaves the one in force (counted
                // in `AgentStats::configs_refused`).
                let applied = self.config.apply(config);
                // Transitions from here on are reported, starting with this one.
                self.transitions_reported = self.transition_count();
                self.lifecycle
                    .apply(Event::ConfigComplete, now_ms, &mut ())
                    .map_err(|e| AgentError::Unexpected(e.state))?;
                self.registration = RegistrationPhase::Registered;
                self.retry_at = None;
                self.started_ms.get_or_insert(now_ms);
                self.adopt_config(now_ms);
                self.sync_mode(now_ms);
                self.shadow.report_state(now_ms)?;
                self.schedule.run_now(Duty::ShadowSync, now_ms);
                if applied.is_err() {
                    // Registration stands; the configuration in force is kept.
                    self.stats.configs_refused = self.stats.configs_refused.saturating_add(1);
                }
                self.settle_trial(now_ms, board, out);
                Ok(())
            }
            RegistrationResponse::Rejected(reason) => {
                self.lifecycle
                    .apply(Event::ProvisioningFailed, now_ms, &mut ())
                    .map_err(|e| AgentError::Unexpected(e.state))?;
                self.registration = RegistrationPhase::Rejected(reason);
                self.retry_at = None;
                Ok(())
            }
        }
    }

    // ---- configuration, mode and shadow -------------------------------------------------

    /// A new configuration version is in the store: write its interval and version into the
    /// shadow and rebuild the cadence.
    fn adopt_config(&mut self, now_ms: u64) {
        let config = *self.config.current();
        self.health.set_thresholds(config.thresholds);
        if self.field_u32(paths::TELEMETRY_INTERVAL) != Some(config.telemetry_interval_ms) {
            self.write_field(
                paths::TELEMETRY_INTERVAL,
                config.telemetry_interval_ms,
                now_ms,
            );
        }
        if self.field_u32(paths::CONFIG_VERSION) != Some(config.version) {
            self.write_field(paths::CONFIG_VERSION, config.version, now_ms);
        }
        self.refresh_cadence(now_ms);
        self.schedule.run_now(Duty::ShadowSync, now_ms);
    }

    /// The value of the agent-maintained field at `path`, if the state has it.
    fn field_u32(&self, path: &str) -> Option<u32> {
        let id = T::field_id(path)?;
        let value = self.shadow.state().get_field(id)?.as_int()?;
        u32::try_from(value).ok()
    }

    /// Writes the agent-maintained field at `path`, if the state has it.
    fn write_field(&mut self, path: &str, value: u32, now_ms: u64) {
        if let Some(id) = T::field_id(path) {
            let _ = self.shadow.set(id, Value::Int(value.into()), now_ms);
        }
    }

    /// Rebuilds the schedule and filters if the configuration in force changed. A shadow
    /// interval the configuration rules refuse is overwritten with the interval in force.
    fn refresh_cadence(&mut self, now_ms: u64) {
        let current = *self.config.current();
        let wanted = DeviceConfig {
            telemetry_interval_ms: self
                .field_u32(paths::TELEMETRY_INTERVAL)
                .unwrap_or(current.telemetry_interval_ms),
            ..current
        };
        let wanted = if wanted.validate().is_ok() {
            wanted
        } else {
            self.stats.desired_refused = self.stats.desired_refused.saturating_add(1);
            // Keep the interval in force (it passed validation) with the store's other fields.
            let fallback = DeviceConfig {
                telemetry_interval_ms: self.in_force.telemetry_interval_ms,
                ..current
            };
            let fallback = if fallback.validate().is_ok() {
                fallback
            } else {
                current
            };
            self.write_field(
                paths::TELEMETRY_INTERVAL,
                fallback.telemetry_interval_ms,
                now_ms,
            );
            self.schedule.run_now(Duty::ShadowSync, now_ms);
            fallback
        };
        if wanted == self.in_force {
            return;
        }
        let rebuild_filters = wanted.telemetry_deadband.to_bits()
            != self.in_force.telemetry_deadband.to_bits()
            || wanted.telemetry_interval_ms != self.in_force.telemetry_interval_ms;
        if self.schedule.set_config(&wanted, now_ms).is_ok() {
            if rebuild_filters {
                self.filters = [const { None }; R];
            }
            self.in_force = wanted;
        }
    }

    /// Brings the schedule's mode and the shadow's lifecycle field in line with the state.
    fn sync_mode(&mut self, now_ms: u64) {
        let state = self.lifecycle.state();
        self.schedule.set_mode(mode_for(state), now_ms);
        let code = u32::from(state.code());
        if T::field_id(paths::LIFECYCLE).is_some() && self.field_u32(paths::LIFECYCLE) != Some(code)
        {
            self.write_field(paths::LIFECYCLE, code, now_ms);
            self.schedule.run_now(Duty::ShadowSync, now_ms);
        }
    }

    /// Refuses the desired values the device cannot take, visibly: the device reports the
    /// value it keeps with a fresh stamp, which clears the desired value under
    /// last-writer-wins (the backend sees its desired value removed by the device and the
    /// reported value unchanged), counts it in [`AgentStats::desired_refused`] and keeps
    /// it in [`Agent::last_refusal`].
    ///
    /// - **Type**: a value the field's type cannot hold. An `f32` field takes a number only
    ///   if `f32` holds it *exactly* (21.5 yes, 21.3 no): the device then reports back the
    ///   very number the backend asked for, so desired and reported can agree. A backend
    ///   that wants 21.3 on an `f32` field sends `21.3f32 as f64` (21.299999237060547).
    /// - **Range**: [`App::check`] refuses the state the desired values would make; every
    ///   field the backend changed since the state last applied goes back.
    fn refuse_untakeable<D: App<State = T> + ?Sized>(&mut self, now_ms: u64, app: &mut D) {
        for (id, spec) in T::FIELDS.iter().enumerate() {
            let Ok(path) = Path::new(spec.path) else {
                continue;
            };
            let replica = self.shadow.replica();
            let Some(desired) = replica
                .value(Section::Desired, &path)
                .filter(|v| !v.is_null())
            else {
                continue;
            };
            if replica.value(Section::Reported, &path) == Some(desired) {
                continue;
            }
            let mut probe = self.shadow.state().clone();
            if probe.set_field(id, desired).is_err()
                && let Some(kept) = self.shadow.state().get_field(id)
            {
                let _ = self.shadow.set(id, kept, now_ms);
                self.note_refusal(spec.path, Refusal::Type, now_ms);
            }
        }
        let state = self.shadow.state();
        if *state != self.applied
            && let Err(refusal) = app.check(state)
        {
            for (id, spec) in T::FIELDS.iter().enumerate() {
                let Some(kept) = self.applied.get_field(id) else {
                    continue;
                };
                let now = self.shadow.state().get_field(id);
                // Only what the backend asked for goes back (not the agent's own fields).
                let asked = Path::new(spec.path).ok().is_some_and(|path| {
                    self.shadow.replica().value(Section::Desired, &path) == now.as_ref()
                });
                if now.as_ref() != Some(&kept) && asked {
                    let _ = self.shadow.set(id, kept, now_ms);
                    self.note_refusal(spec.path, refusal, now_ms);
                }
            }
        }
    }

    fn note_refusal(&mut self, path: &'static str, refusal: Refusal, now_ms: u64) {
        self.stats.desired_refused = self.stats.desired_refused.saturating_add(1);
        self.last_refusal = Some((path, refusal));
        self.schedule.run_now(Duty::ShadowSync, now_ms);
    }

    /// The last desired value refused: its shadow path and why. See
    /// [`AgentStats::desired_refused`].
    pub const fn last_refusal(&self) -> Option<(&'static str, Refusal)> {
        self.last_refusal
    }

    /// Lets the application carry out the shadow's state if it changed since last time.
    fn apply_state<D: App<State = T> + ?Sized>(&mut self, app: &mut D) {
        if *self.shadow.state() != self.applied {
            let previous = core::mem::replace(&mut self.applied, self.shadow.state().clone());
            app.apply(&self.applied, &previous);
        }
    }

    fn on_shadow<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        payload: &[u8],
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let handled = self.shadow.handle_cbor::<S>(payload, now_ms)?;
        if handled == Handled::AppliedWithGap {
            self.request_document(now_ms, out);
        }
        self.refresh_cadence(now_ms);
        self.refuse_untakeable(now_ms, board);
        self.apply_state(board);
        if self.shadow.has_pending() && handled != Handled::Ignored {
            self.schedule.run_now(Duty::ShadowSync, now_ms);
        }
        Ok(())
    }

    fn request_document<O: Outbound + ?Sized>(&mut self, now_ms: u64, out: &mut O) {
        let version = self.shadow.last_version();
        self.emit(&Uplink::ShadowGet(ShadowGet { version }), now_ms, out);
    }

    // ---- firmware updates ---------------------------------------------------------------

    /// After a restart: confirms an image running on trial (the device booted it and
    /// reached its backend), or reports the rollback the updater found.
    fn settle_trial<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        board: &mut D,
        out: &mut O,
    ) {
        let Some(firmware) = board.firmware() else {
            return;
        };
        let progress = match firmware.progress().state {
            OtaState::Testing => {
                // A trial that cannot be confirmed rolls back at the next boot; that is
                // reported then.
                if firmware.confirm().is_err() {
                    return;
                }
                firmware.progress()
            }
            OtaState::RolledBack => firmware.progress(),
            _ => return,
        };
        self.emit(&Uplink::OtaProgress(progress), now_ms, out);
    }

    fn request_block<O: Outbound + ?Sized>(&mut self, now_ms: u64, offset: u32, out: &mut O) {
        let Some(job) = self.ota else {
            self.ota_retry_at = None;
            return;
        };
        let request = OtaBlockRequest {
            version: job.version,
            offset,
        };
        self.emit(&Uplink::OtaBlockRequest(request), now_ms, out);
        self.ota_retry_at = Some(now_ms.saturating_add(ota::OTA_RETRY_MS));
    }

    /// Reports that `job` was not (or could not be) installed.
    fn report_abandoned<O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        job: &OtaJob,
        progress: Option<OtaProgress>,
        out: &mut O,
    ) {
        self.ota = None;
        self.ota_retry_at = None;
        let progress = progress.unwrap_or(OtaProgress {
            state: OtaState::RolledBack,
            version: None,
            next_offset: 0,
            rollback: None,
        });
        let report = OtaProgress {
            state: OtaState::RolledBack,
            version: Some(job.version),
            ..progress
        };
        self.emit(&Uplink::OtaProgress(report), now_ms, out);
    }

    fn on_ota_job<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        job: OtaJob,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        if job.version == self.firmware_version {
            // Already running it (a redelivered job after the update): say so again.
            let done = OtaProgress {
                state: OtaState::Confirmed,
                version: Some(job.version),
                next_offset: job.size,
                rollback: None,
            };
            self.emit(&Uplink::OtaProgress(done), now_ms, out);
            return Ok(());
        }
        let Some(firmware) = board.firmware() else {
            self.report_abandoned(now_ms, &job, None, out);
            return Ok(());
        };
        if self.ota == Some(job) {
            // A redelivered job: carry on from where the updater stands.
            let offset = firmware.progress().next_offset;
            self.request_block(now_ms, offset, out);
            return Ok(());
        }
        match firmware.begin(job) {
            Ok(()) => {
                // A download a reboot interrupted resumes at the updater's offset (or is
                // already complete).
                let progress = firmware.progress();
                self.ota = Some(job);
                self.emit(&Uplink::OtaProgress(progress), now_ms, out);
                if progress.next_offset >= job.size {
                    return self.finish_download(now_ms, job, board, out);
                }
                self.request_block(now_ms, progress.next_offset, out);
                Ok(())
            }
            Err(e) => {
                let progress = firmware.progress();
                self.report_abandoned(now_ms, &job, Some(progress), out);
                Err(AgentError::Ota(e))
            }
        }
    }

    fn on_ota_block<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        block: &OtaBlock<&[u8]>,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let state = self.lifecycle.state();
        let Some(job) = self.ota.filter(|j| j.version == block.version) else {
            return Err(AgentError::Unexpected(state));
        };
        let Some(firmware) = board.firmware() else {
            return Err(AgentError::Unexpected(state));
        };
        let expected = firmware.progress().next_offset;
        if block.offset != expected {
            // A repeated or early block: ask for the one the updater needs.
            self.request_block(now_ms, expected, out);
            return Ok(());
        }
        let next = match firmware.write(block.offset, block.data) {
            Ok(next) => next,
            Err(e) => {
                let progress = firmware.progress();
                self.report_abandoned(now_ms, &job, Some(progress), out);
                return Err(AgentError::Ota(e));
            }
        };
        if next < job.size {
            self.request_block(now_ms, next, out);
            return Ok(());
        }
        self.finish_download(now_ms, job, board, out)
    }

    /// Verifies and installs the complete image, then restarts into it.
    fn finish_download<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        job: OtaJob,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let Some(firmware) = board.firmware() else {
            return Err(AgentError::Unexpected(self.lifecycle.state()));
        };
        let finished = firmware.finish();
        let progress = firmware.progress();
        match finished {
            Ok(()) => {
                self.ota = None;
                self.ota_retry_at = None;
                self.emit(&Uplink::OtaProgress(progress), now_ms, out);
                board.restart();
                Ok(())
            }
            Err(e) => {
                self.report_abandoned(now_ms, &job, Some(progress), out);
                Err(AgentError::Ota(e))
            }
        }
    }

    // ---- commands and decommissioning ---------------------------------------------------

    fn on_command<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        payload: &[u8],
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let repeat = command_id(payload).is_some_and(|id| self.commands.ack_for(id).is_some());
        let version = self.config.current().version;
        let mut handler = DeviceCommands {
            lifecycle: &mut self.lifecycle,
            hooks: &mut (),
            config: &mut self.config,
            device: board,
            now_ms,
        };
        let ack = self
            .commands
            .process_payload(payload, now_ms, &mut handler)?;
        if self.config.current().version != version {
            self.adopt_config(now_ms);
        }
        self.sync_mode(now_ms);
        if repeat || self.emit(&Uplink::CommandAck(ack), now_ms, out) {
            Ok(())
        } else {
            Err(AgentError::Send)
        }
    }

    fn on_decommission<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        reason: iot_lifecycle::registration::DecommissionReason,
        board: &mut D,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let audit = decommission(
            &mut self.lifecycle,
            &mut (),
            &mut self.secret,
            &mut BoardWipe(board),
            self.device,
            reason,
            now_ms,
        )
        .map_err(|e| match e {
            DecommissionError::NotAllowed(state) => AgentError::DecommissionRefused(state),
            DecommissionError::Wipe(()) => AgentError::WipeFailed,
        })?;
        self.schedule.set_mode(Mode::Suspended, now_ms);
        self.retry_at = None;
        if self.emit(&Uplink::Decommissioned(audit), now_ms, out) {
            Ok(())
        } else {
            Err(AgentError::Send)
        }
    }

    // ---- duties -------------------------------------------------------------------------

    fn uptime(&self, now_ms: u64) -> u64 {
        self.started_ms.map_or(0, |s| now_ms.saturating_sub(s))
    }

    fn check_health<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        board: &mut D,
        out: &mut O,
    ) {
        let v = board.vitals(now_ms);
        let mut sample = HealthSample::new(self.uptime(now_ms));
        sample.battery_percent = v.battery_percent;
        sample.battery_mv = v.battery_mv;
        sample.rssi_dbm = v.rssi_dbm;
        sample.consecutive_send_failures = v.consecutive_send_failures.max(self.send_failures);
        sample.reading = v.reading;
        sample.free_memory_bytes = v.free_memory_bytes;
        sample.error_count = v.error_count;
        let report = self.health.check(&sample);
        self.emit(&Uplink::Health(report), now_ms, out);
        if let Some(event) = self.health.lifecycle_event(self.lifecycle.state(), &report)
            && self.lifecycle.apply(event, now_ms, &mut ()).is_ok()
        {
            self.sync_mode(now_ms);
        }
    }

    fn heartbeat<O: Outbound + ?Sized>(&mut self, now_ms: u64, out: &mut O) {
        let beat = Heartbeat {
            seq: self.heartbeat_seq,
            uptime_ms: self.uptime(now_ms),
            state: self.lifecycle.state(),
            config_version: self.config.current().version,
            health: self
                .health
                .last_report()
                .map_or(HealthStatus::Healthy, |r| r.status),
            readings: Some(ReadingCounts {
                sampled: self
                    .stats
                    .readings_sent
                    .saturating_add(self.stats.readings_suppressed),
                sent: self.stats.readings_sent,
            }),
        };
        self.heartbeat_seq = self.heartbeat_seq.wrapping_add(1);
        self.emit(&Uplink::Heartbeat(beat), now_ms, out);
    }

    fn sync_shadow<O: Outbound + ?Sized>(&mut self, now_ms: u64, out: &mut O) {
        let shadow = &mut self.shadow;
        let sent = send_encoded::<B, O>(
            &mut self.stats,
            &mut self.send_failures,
            MessageKind::ShadowUpdate,
            now_ms,
            out,
            &mut |buf| match shadow.encode_pending(None, buf) {
                Ok(Some(n)) => Encoded::Bytes(n),
                Ok(None) => Encoded::Nothing,
                Err(_) => Encoded::Failed,
            },
        );
        if sent.is_none() {
            self.request_document(now_ms, out);
        }
    }

    fn telemetry<D: App<State = T> + ?Sized, O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        board: &mut D,
        out: &mut O,
    ) {
        let mut measurements: heapless::Vec<Measurement, R> = heapless::Vec::new();
        board.readings(now_ms, measurements.as_mut_view());
        let mut batch: iot_protocol::TelemetryBatch = Telemetry::new();
        for measurement in measurements {
            let reading = Reading::new(now_ms, measurement);
            let key = quantity_key(&measurement);
            let slot = match self
                .filters
                .iter()
                .position(|f| f.as_ref().is_some_and(|(k, _)| *k == key))
            {
                Some(i) => self.filters.get_mut(i),
                None => {
                    let free = self.filters.iter_mut().find(|f| f.is_none());
                    let filter = filter_for(&self.in_force);
                    match (free, filter) {
                        (Some(free), Some(filter)) => {
                            *free = Some((key, filter));
                            Some(free)
                        }
                        _ => None,
                    }
                }
            };
            let decision = match slot.and_then(|s| s.as_mut()) {
                Some((_, filter)) => filter.offer(&reading),
                None => reading
                    .measurement
                    .validate()
                    .map(|()| Decision::Report(ReportReason::Changed))
                    .map_err(|_| FlowError::InvalidConfig),
            };
            match decision {
                Ok(Decision::Report(_)) => {
                    // A full batch drops the rest (R readings fit unless R > MAX_READINGS).
                    let _ = batch.push(reading);
                }
                Ok(Decision::Suppress) => {
                    self.stats.readings_suppressed =
                        self.stats.readings_suppressed.saturating_add(1);
                }
                // An implausible reading (NaN, out of domain) is not sent.
                Err(_) => {}
            }
        }
        if !batch.is_empty() {
            let n = u32::try_from(batch.len()).unwrap_or(u32::MAX);
            if self.emit(&Uplink::Telemetry(batch), now_ms, out) {
                self.stats.readings_sent = self.stats.readings_sent.saturating_add(n);
            }
        }
    }

    // ---- output -------------------------------------------------------------------------

    /// Encodes `message` and sends it (see [`send_encoded`]); `false` if either failed.
    fn emit<O>(&mut self, message: &Uplink<&[u8]>, now_ms: u64, out: &mut O) -> bool
    where
        O: Outbound + ?Sized,
    {
        send_encoded::<B, O>(
            &mut self.stats,
            &mut self.send_failures,
            message.kind(),
            now_ms,
            out,
            &mut |buf| match message.encode(buf) {
                Ok(n) => Encoded::Bytes(n),
                Err(_) => Encoded::Failed,
            },
        )
        .unwrap_or(false)
    }
}

/// The format of the record [`Agent::save`] writes.
const RECORD_VERSION: u8 = 2;

fn record_digest(record: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(record)
}

/// Writes pieces into a buffer; `None` once one does not fit.
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.at.checked_add(bytes.len())?;
        self.buf.get_mut(self.at..end)?.copy_from_slice(bytes);
        self.at = end;
        Some(())
    }
}

/// Reads pieces from a record; `None` past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }
    fn array<const K: usize>(&mut self) -> Option<[u8; K]> {
        self.take(K)?.try_into().ok()
    }
    fn byte(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }
}

/// What a record holds.
struct Restored<T, const C: usize> {
    registered: bool,
    lifecycle: State,
    epoch: u16,
    heartbeat_seq: u32,
    shadow_version: u64,
    config: DeviceConfig,
    state: T,
    acks: heapless::Vec<CommandAck, C>,
}

fn decode_record<T: ShadowState, const C: usize>(
    record: &[u8],
    mut state: T,
) -> Option<Restored<T, C>> {
    let mut r = Reader { bytes: record };
    if r.byte()? != RECORD_VERSION {
        return None;
    }
    let registered = r.byte()? == 1;
    let lifecycle = *State::ALL.get(usize::from(r.byte()?))?;
    let epoch = u16::from_le_bytes(r.array()?);
    let heartbeat_seq = u32::from_le_bytes(r.array()?);
    let shadow_version = u64::from_le_bytes(r.array()?);
    let n = usize::from(u16::from_le_bytes(r.array()?));
    let config: DeviceConfig = iot_core::codec::decode(r.take(n)?).ok()?;
    let fields = usize::from(r.byte()?);
    for id in 0..fields {
        let value = match r.byte()? {
            1 => Value::Bool(r.byte()? == 1),
            2 => Value::Int(i64::from_le_bytes(r.array()?)),
            3 => Value::from(f64::from_le_bytes(r.array()?)),
            _ => continue,
        };
        state.set_field(id, &value).ok()?;
    }
    let mut acks = heapless::Vec::new();
    for _ in 0..r.byte()? {
        let n = usize::from(r.byte()?);
        let ack: CommandAck = iot_core::codec::decode(r.take(n)?).ok()?;
        // More acks than this agent remembers: keep the newest.
        if acks.is_full() {
            acks.remove(0);
        }
        let _ = acks.push(ack);
    }
    Some(Restored {
        registered,
        lifecycle,
        epoch,
        heartbeat_seq,
        shadow_version,
        config,
        state,
        acks,
    })
}

/// What an encoder wrote into the send buffer.
enum Encoded {
    /// This many bytes at the start of the buffer.
    Bytes(usize),
    /// Nothing to send (no pending shadow change).
    Nothing,
    /// The value does not fit the buffer or cannot be encoded.
    Failed,
}

/// Runs `encode` on a `B`-byte stack buffer (it lives only for this call, so the agent holds
/// no buffer between sends) and sends what it wrote, counting the outcome in `stats`.
/// `Some(true)`: sent; `Some(false)`: encoding or sending failed; `None`: nothing to send.
///
/// One copy per outbound type: every message type shares it, only `encode` is per type.
#[inline(never)]
fn send_encoded<const B: usize, O: Outbound + ?Sized>(
    stats: &mut AgentStats,
    send_failures: &mut u16,
    kind: MessageKind,
    now_ms: u64,
    out: &mut O,
    encode: &mut dyn FnMut(&mut [u8]) -> Encoded,
) -> Option<bool> {
    let mut buf = [0u8; B];
    let bytes = match encode(&mut buf) {
        Encoded::Bytes(n) => buf.get(..n),
        Encoded::Nothing => return None,
        Encoded::Failed => None,
    };
    let Some(bytes) = bytes else {
        stats.encode_errors = stats.encode_errors.saturating_add(1);
        return Some(false);
    };
    let ok = out.send(kind, qos_for(kind), bytes, now_ms).is_ok();
    if ok {
        stats.sent = stats.sent.saturating_add(1);
        *send_failures = 0;
    } else {
        stats.send_errors = stats.send_errors.saturating_add(1);
        *send_failures = send_failures.saturating_add(1);
    }
    Some(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::MessageId;

    struct Quiet;
    impl CommandHandler for Quiet {}
    impl Board for Quiet {
        fn sample(&mut self, _now_ms: u64) -> SensorSample {
            SensorSample::default()
        }
    }

    struct Sink(u32);
    impl Outbound for Sink {
        type Error = ();
        fn send(&mut self, _: MessageKind, _: QoS, _: &[u8], _: u64) -> Result<(), ()> {
            self.0 += 1;
            Ok(())
        }
    }

    fn agent() -> LabAgent {
        LabAgent::new(
            DeviceId::from_mac([1, 2, 3, 4, 5, 6]),
            1,
            DeviceSecret::from_bytes([1; 32]),
            DeviceConfig::DEFAULT,
        )
        .unwrap()
    }

    fn env(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
        EnvelopeRef {
            device: DeviceId::new("b").unwrap(),
            seq: 0,
            id: MessageId(0),
            qos: QoS::AtMostOnce,
            kind,
            payload,
        }
    }

    #[test]
    fn reliable_kinds_ask_for_at_least_once() {
        assert_eq!(qos_for(MessageKind::Telemetry), QoS::AtLeastOnce);
        assert_eq!(qos_for(MessageKind::CommandAck), QoS::AtLeastOnce);
        assert_eq!(qos_for(MessageKind::Heartbeat), QoS::AtMostOnce);
        assert_eq!(qos_for(MessageKind::HealthReport), QoS::AtMostOnce);
    }

    #[test]
    fn filters_take_the_deadband_and_four_periods_of_silence() {
        let config = DeviceConfig {
            telemetry_deadband: 0.25,
            telemetry_interval_ms: 10_000,
            ..DeviceConfig::DEFAULT
        };
        let f = filter_for(&config).unwrap();
        assert_eq!(f.deadband(), 0.25);
        assert_eq!(f.max_silence_ms(), Some(40_000));
    }

    #[test]
    fn only_operating_states_schedule_duties() {
        for state in State::ALL {
            let runs = mode_for(state) != Mode::Suspended;
            assert_eq!(
                runs,
                matches!(state, State::Active | State::Degraded | State::Maintenance)
            );
            assert_eq!(
                usize::from(state.code()),
                State::ALL.iter().position(|s| *s == state).unwrap()
            );
        }
    }

    #[test]
    fn before_start_nothing_runs_and_messages_are_refused() {
        let mut a = agent();
        let mut sink = Sink(0);
        assert_eq!(a.poll(0, &mut Quiet, &mut sink), None);
        let command = iot_lifecycle::command::Command::new(
            1,
            0,
            iot_lifecycle::command::Command::NEVER_EXPIRES,
            iot_lifecycle::command::CommandKind::EnterMaintenance,
        );
        let mut buf = [0u8; 64];
        let n = iot_core::codec::encode_into(&command, &mut buf).unwrap();
        assert_eq!(
            a.handle(
                0,
                &env(MessageKind::Command, &buf[..n]),
                &mut Quiet,
                &mut sink
            ),
            Err(AgentError::Unexpected(State::Unprovisioned))
        );
        assert!(matches!(
            a.handle(
                0,
                &env(MessageKind::RegistrationResponse, &[0xff]),
                &mut Quiet,
                &mut sink
            ),
            Err(AgentError::Protocol(ProtocolError::Malformed(
                MessageKind::RegistrationResponse
            )))
        ));
        assert_eq!((sink.0, a.stats().rejected), (0, 2));
        a.start(5, &mut sink).unwrap();
        assert_eq!(a.state(), State::Provisioning);
        assert_eq!(sink.0, 1);
        // The first retry waits 1..=2 s (2 s base, equal jitter).
        let retry = a.next_deadline().unwrap();
        assert!((1_005..=2_005).contains(&retry), "{retry}");
        assert_eq!(a.start(6, &mut sink), Ok(()));
    }

    #[test]
    fn an_encoding_that_does_not_fit_is_counted_not_sent() {
        let mut tiny: Agent<AgentState, 4, 4, 8, 8> = Agent::new(
            DeviceId::from_mac([1, 2, 3, 4, 5, 6]),
            1,
            DeviceSecret::from_bytes([1; 32]),
            DeviceConfig::DEFAULT,
        )
        .unwrap();
        let mut sink = Sink(0);
        assert_eq!(tiny.start(0, &mut sink), Err(AgentError::Send));
        assert_eq!((sink.0, tiny.stats().encode_errors), (0, 1));
    }
}
