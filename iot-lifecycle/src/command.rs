//! Commands with acknowledgement: exactly one ack per command, idempotent by command id,
//! expired commands rejected.
//!
//! A [`CommandProcessor`] remembers the acks of the last `N` command ids. A command whose id
//! is in that window is not executed again: the stored ack is returned, so a backend that
//! retransmits (QoS 1) gets the same answer. Otherwise an expired command is rejected with
//! [`RejectReason::Expired`], and anything else goes to the firmware's [`CommandHandler`],
//! whose answer becomes the ack: [`AckOutcome::Accepted`], [`AckOutcome::Rejected`] with a
//! reason, or [`AckOutcome::Completed`] with a small result.
//!
//! [`DeviceCommands`] is a ready-made handler that drives the lifecycle for maintenance
//! commands and the [`ConfigStore`] for configuration, delegating the rest to the firmware.
//!
//! ```
//! use iot_lifecycle::command::{AckOutcome, Command, CommandHandler, CommandKind, CommandProcessor, HandlerResult, ResultPayload};
//!
//! struct Board { blinks: u32 }
//! impl CommandHandler for Board {
//!     fn blink_led(&mut self, times: u8, _period_ms: u16) -> HandlerResult {
//!         self.blinks += u32::from(times);
//!         Ok(None)
//!     }
//!     fn read_sensor(&mut self, _sensor: u8) -> HandlerResult {
//!         Ok(Some(ResultPayload::from_slice(&[21, 5]).unwrap()))
//!     }
//! }
//!
//! let mut board = Board { blinks: 0 };
//! let mut processor: CommandProcessor<8> = CommandProcessor::new();
//! let blink = Command::new(1, 0, 60_000, CommandKind::BlinkLed { times: 3, period_ms: 200 });
//! assert_eq!(processor.process(&blink, 1_000, &mut board).outcome, AckOutcome::Accepted);
//! // A retransmission gets the same ack and does not blink again.
//! assert_eq!(processor.process(&blink, 2_000, &mut board).outcome, AckOutcome::Accepted);
//! assert_eq!(board.blinks, 3);
//! // Too late: rejected.
//! let late = Command::new(2, 0, 60_000, CommandKind::ReadSensor { sensor: 0 });
//! assert!(matches!(processor.process(&late, 60_001, &mut board).outcome, AckOutcome::Rejected(_)));
//! ```

use heapless::Deque;
use iot_core::codec::DecodeError;
use minicbor::{CborLen, Decode, Encode};

use crate::config::{ConfigError, ConfigStore, DeviceConfig};
use crate::state::{Event, Hooks, Lifecycle, State};
use crate::wire;

/// Bytes of arguments a custom command can carry.
pub const ARGS_CAPACITY: usize = 32;
/// Bytes of result an ack can carry.
pub const RESULT_CAPACITY: usize = 64;

/// Arguments of a custom command.
pub type CommandArgs = heapless::Vec<u8, ARGS_CAPACITY>;
/// The result carried by [`AckOutcome::Completed`].
pub type ResultPayload = heapless::Vec<u8, RESULT_CAPACITY>;

/// What a command asks the device to do.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, CborLen)]
pub enum CommandKind {
    /// Run self-diagnostics and report.
    #[n(0)]
    Diagnostics,
    /// Blink the indicator LED `times` times, `period_ms` per blink.
    #[n(1)]
    BlinkLed {
        /// Number of blinks.
        #[n(0)]
        times: u8,
        /// Milliseconds per blink.
        #[n(1)]
        period_ms: u16,
    },
    /// Read sensor number `sensor` now and return the value.
    #[n(2)]
    ReadSensor {
        /// Which sensor.
        #[n(0)]
        sensor: u8,
    },
    /// Enter maintenance (`ScheduledUpdate` from Active, `ManualIntervention` from Degraded).
    #[n(3)]
    EnterMaintenance,
    /// Leave maintenance successfully (`UpdateComplete`).
    #[n(4)]
    ExitMaintenance,
    /// Reboot; the firmware reboots after the ack has been sent.
    #[n(5)]
    Reboot,
    /// Apply a configuration (versioned, validated: see [`ConfigStore`]).
    #[n(6)]
    SetConfig(#[n(0)] DeviceConfig),
    /// An application-defined command.
    #[n(7)]
    Custom {
        /// Application-chosen command code.
        #[n(0)]
        code: u16,
        /// Opaque arguments.
        #[n(1)]
        #[cbor(with = "wire::hbytes")]
        args: CommandArgs,
    },
}

/// Hand-written instead of derived, with the derived decoder's behaviour (a 2-element array
/// of variant index and value, the fields of a variant in an array of any form, unknown
/// fields skipped, an unknown index an `UnknownVariant` error): the derived decoder repeats
/// every variant's fields for both array forms.
impl<'b, C> Decode<'b, C> for CommandKind {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        let at = d.position();
        let (variant, variant_at) = wire::enum_header(d)?;
        let unit = match variant {
            0 => Some(Self::Diagnostics),
            3 => Some(Self::EnterMaintenance),
            4 => Some(Self::ExitMaintenance),
            5 => Some(Self::Reboot),
            _ => None,
        };
        if let Some(unit) = unit {
            d.skip()?;
            return Ok(unit);
        }
        if !matches!(variant, 1 | 2 | 6 | 7) {
            return Err(minicbor::decode::Error::unknown_variant(variant).at(variant_at));
        }
        // Up to two integer fields (`BlinkLed`, `ReadSensor`, `Custom`'s code), and the
        // `SetConfig` or `Custom` payload.
        let mut ints = [None::<i64>; 2];
        let mut config = None;
        let mut args = None;
        wire::decode_array(d, &mut |i, d| {
            let (min, max) = match (variant, i) {
                (1 | 2, 0) => (0, u8::MAX.into()),
                (1, 1) | (7, 0) => (0, u16::MAX.into()),
                (6, 0) => {
                    config = Some(DeviceConfig::decode(d, &mut ())?);
                    return Ok(true);
                }
                (7, 1) => {
                    args = Some(wire::hbytes::decode(d, &mut ())?);
                    return Ok(true);
                }
                _ => return Ok(false),
            };
            let v = wire::int_in(d, min, max)?;
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| ints.get_mut(i)) {
                *slot = Some(v);
            }
            Ok(true)
        })?;
        let [first, second] = ints;
        match variant {
            1 => Ok(Self::BlinkLed {
                times: wire::required(first, 0, at)?,
                period_ms: wire::required(second, 1, at)?,
            }),
            2 => Ok(Self::ReadSensor {
                sensor: wire::required(first, 0, at)?,
            }),
            6 => Ok(Self::SetConfig(wire::present(config, 0, at)?)),
            7 => Ok(Self::Custom {
                code: wire::required(first, 0, at)?,
                args: wire::present(args, 1, at)?,
            }),
            _ => Err(minicbor::decode::Error::unknown_variant(variant).at(variant_at)),
        }
    }
}

/// A command for a device: the payload of `MessageKind::Command`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, CborLen)]
#[cbor(map)]
pub struct Command {
    /// The idempotency key: the same id is never executed twice (within the window).
    #[n(0)]
    pub id: u32,
    /// When the backend issued it.
    #[n(1)]
    pub issued_at_ms: u64,
    /// The last millisecond at which it may still run ([`Command::NEVER_EXPIRES`]: no limit).
    #[n(2)]
    pub expires_at_ms: u64,
    /// What to do.
    #[n(3)]
    pub kind: CommandKind,
}

/// Hand-written instead of derived, with the derived decoder's behaviour (any map form and
/// integer width, unknown keys skipped, the first missing field reported), sharing its loop
/// with the other hand-written decoders of this crate.
impl<'b, C> Decode<'b, C> for Command {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        let at = d.position();
        let (mut id, mut issued, mut expires, mut kind) = (None, None, None, None);
        wire::decode_map(d, &mut |key, d| {
            match key {
                0 => id = Some(d.u32()?),
                1 => issued = Some(d.u64()?),
                2 => expires = Some(d.u64()?),
                3 => kind = Some(CommandKind::decode(d, &mut ())?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Self {
            id: wire::present(id, 0, at)?,
            issued_at_ms: wire::present(issued, 1, at)?,
            expires_at_ms: wire::present(expires, 2, at)?,
            kind: wire::present(kind, 3, at)?,
        })
    }
}

impl Command {
    /// An `expires_at_ms` meaning "no deadline".
    pub const NEVER_EXPIRES: u64 = u64::MAX;

    /// A command.
    pub const fn new(id: u32, issued_at_ms: u64, expires_at_ms: u64, kind: CommandKind) -> Self {
        Self {
            id,
            issued_at_ms,
            expires_at_ms,
            kind,
        }
    }

    /// Whether the deadline has passed at `now_ms` (the deadline itself is still in time).
    /// `now_ms` must be on the backend's timeline (for example the physical part of a
    /// hybrid logical clock synchronised with it).
    pub const fn is_expired(&self, now_ms: u64) -> bool {
        now_ms > self.expires_at_ms
    }
}

/// Why a command was not carried out.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum RejectReason {
    /// The deadline passed before the device saw the command.
    #[n(0)]
    Expired,
    /// The device does not implement this command.
    #[n(1)]
    Unsupported,
    /// The arguments are invalid.
    #[n(2)]
    InvalidArguments,
    /// The command is not allowed in the current lifecycle state.
    #[n(3)]
    InvalidState,
    /// The device is busy; retry later with a new id.
    #[n(4)]
    Busy,
    /// The device tried and failed.
    #[n(5)]
    Failed,
    /// The configuration's version is not newer than the one in force.
    #[n(6)]
    ConfigStale,
    /// The configuration failed validation; the previous one stays in force.
    #[n(7)]
    ConfigInvalid,
}

/// The device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
pub enum AckOutcome {
    /// Accepted (and done, or under way if it completes later, like a reboot).
    #[n(0)]
    Accepted,
    /// Not carried out.
    #[n(1)]
    Rejected(#[n(0)] RejectReason),
    /// Done, with a result.
    #[n(2)]
    Completed(
        #[n(0)]
        #[cbor(with = "wire::hbytes")]
        ResultPayload,
    ),
}

/// The acknowledgement of one command: the payload of `MessageKind::CommandAck`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct CommandAck {
    /// The command answered.
    #[n(0)]
    pub command_id: u32,
    /// The answer.
    #[n(1)]
    pub outcome: AckOutcome,
}

/// What a handler method returns: `Ok(None)` acks [`AckOutcome::Accepted`], `Ok(Some(r))`
/// acks [`AckOutcome::Completed`], `Err(reason)` acks [`AckOutcome::Rejected`].
pub type HandlerResult = Result<Option<ResultPayload>, RejectReason>;

/// The firmware's implementation of commands. Every method defaults to
/// [`RejectReason::Unsupported`]; implement the ones the device supports.
pub trait CommandHandler {
    /// Runs diagnostics.
    fn diagnostics(&mut self) -> HandlerResult {
        Err(RejectReason::Unsupported)
    }
    /// Blinks the LED.
    fn blink_led(&mut self, times: u8, period_ms: u16) -> HandlerResult {
        let _ = (times, period_ms);
        Err(RejectReason::Unsupported)
    }
    /// Reads a sensor.
    fn read_sensor(&mut self, sensor: u8) -> HandlerResult {
        let _ = sensor;
        Err(RejectReason::Unsupported)
    }
    /// Enters maintenance.
    fn enter_maintenance(&mut self) -> HandlerResult {
        Err(RejectReason::Unsupported)
    }
    /// Leaves maintenance.
    fn exit_maintenance(&mut self) -> HandlerResult {
        Err(RejectReason::Unsupported)
    }
    /// Schedules a reboot after the ack is sent.
    fn reboot(&mut self) -> HandlerResult {
        Err(RejectReason::Unsupported)
    }
    /// Applies a configuration.
    fn set_config(&mut self, config: &DeviceConfig) -> HandlerResult {
        let _ = config;
        Err(RejectReason::Unsupported)
    }
    /// Runs an application-defined command.
    fn custom(&mut self, code: u16, args: &[u8]) -> HandlerResult {
        let _ = (code, args);
        Err(RejectReason::Unsupported)
    }
}

fn dispatch<H: CommandHandler + ?Sized>(handler: &mut H, kind: &CommandKind) -> HandlerResult {
    match kind {
        CommandKind::Diagnostics => handler.diagnostics(),
        CommandKind::BlinkLed { times, period_ms } => handler.blink_led(*times, *period_ms),
        CommandKind::ReadSensor { sensor } => handler.read_sensor(*sensor),
        CommandKind::EnterMaintenance => handler.enter_maintenance(),
        CommandKind::ExitMaintenance => handler.exit_maintenance(),
        CommandKind::Reboot => handler.reboot(),
        CommandKind::SetConfig(config) => handler.set_config(config),
        CommandKind::Custom { code, args } => handler.custom(*code, args),
    }
}

/// Executes commands at most once each and remembers the acks of the last `N` ids
/// (`N >= 1`, checked at compile time). See the [module documentation](self).
///
/// An id that has left the window would run again; keep the window larger than the number
/// of commands a device can receive within a command's lifetime (its `expires_at_ms`), after
/// which a late duplicate is rejected as expired anyway. To keep idempotence across a reboot
/// (a redelivered `Reboot` must not reboot again), persist [`CommandProcessor::acks`] and
/// feed them back with [`CommandProcessor::remember`].
#[derive(Debug, Clone)]
pub struct CommandProcessor<const N: usize> {
    window: Deque<CommandAck, N>,
    executed: u32,
}

#[cfg(feature = "defmt")]
impl<const N: usize> defmt::Format for CommandProcessor<N> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "CommandProcessor {{ remembered: {}, executed: {} }}",
            self.window.len(),
            self.executed
        );
    }
}

impl<const N: usize> Default for CommandProcessor<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> CommandProcessor<N> {
    /// A processor with an empty window.
    pub const fn new() -> Self {
        Self {
            window: Deque::new(),
            executed: 0,
        }
    }

    /// The stored ack for `id`, if it is in the window.
    pub fn ack_for(&self, id: u32) -> Option<&CommandAck> {
        self.window.iter().find(|a| a.command_id == id)
    }

    /// Answers `command` at `now_ms` with exactly one ack: the stored one for a known id
    /// (nothing runs), a rejection if expired, otherwise the handler's answer.
    pub fn process<H: CommandHandler + ?Sized>(
        &mut self,
        command: &Command,
        now_ms: u64,
        handler: &mut H,
    ) -> CommandAck {
        if let Some(ack) = self.ack_for(command.id) {
            return ack.clone();
        }
        let outcome = if command.is_expired(now_ms) {
            AckOutcome::Rejected(RejectReason::Expired)
        } else {
            self.executed = self.executed.saturating_add(1);
            match dispatch(handler, &command.kind) {
                Ok(None) => AckOutcome::Accepted,
                Ok(Some(result)) => AckOutcome::Completed(result),
                Err(reason) => AckOutcome::Rejected(reason),
            }
        };
        let ack = CommandAck {
            command_id: command.id,
            outcome,
        };
        self.remember(ack.clone());
        ack
    }

    /// Decodes a `MessageKind::Command` payload and processes it. A payload that does not
    /// decode but whose command id can be read still gets exactly one ack:
    /// [`RejectReason::Unsupported`] for a command kind this firmware does not know (a newer
    /// backend), [`RejectReason::InvalidArguments`] otherwise; the ack is remembered like any
    /// other. Only a payload without a readable id is an error, since there is nothing to ack.
    pub fn process_payload<H: CommandHandler + ?Sized>(
        &mut self,
        payload: &[u8],
        now_ms: u64,
        handler: &mut H,
    ) -> Result<CommandAck, DecodeError> {
        match iot_core::codec::decode::<Command>(payload) {
            Ok(command) => Ok(self.process(&command, now_ms, handler)),
            Err(error) => {
                let id = command_id(payload).ok_or(error)?;
                if let Some(ack) = self.ack_for(id) {
                    return Ok(ack.clone());
                }
                let reason = match error {
                    DecodeError::UnknownVariant => RejectReason::Unsupported,
                    _ => RejectReason::InvalidArguments,
                };
                let ack = CommandAck {
                    command_id: id,
                    outcome: AckOutcome::Rejected(reason),
                };
                self.remember(ack.clone());
                Ok(ack)
            }
        }
    }

    /// Puts `ack` into the window (evicting the oldest when full), for example when
    /// restoring persisted acks after a reboot. An ack for an id already present replaces
    /// nothing and is ignored.
    pub fn remember(&mut self, ack: CommandAck) {
        if self.ack_for(ack.command_id).is_some() {
            return;
        }
        if self.window.is_full() {
            let _ = self.window.pop_front();
        }
        // Cannot fail: a full window was just shortened by one (`N >= 1`).
        let _ = self.window.push_back(ack);
    }

    /// The remembered acks, oldest first.
    pub fn acks(&self) -> impl DoubleEndedIterator<Item = &CommandAck> + '_ {
        self.window.iter()
    }

    /// How many commands were handed to the handler (saturating).
    pub const fn executed(&self) -> u32 {
        self.executed
    }
}

/// The id (key 0) of a command map whose other fields may not decode: lets a receiver
/// recognise a redelivered command before it decodes the rest.
pub fn command_id(payload: &[u8]) -> Option<u32> {
    let mut d = minicbor::Decoder::new(payload);
    let entries = d.map().ok()??;
    for _ in 0..entries {
        let key = d.u64().ok()?;
        if key == 0 {
            return d.u32().ok();
        }
        d.skip().ok()?;
    }
    None
}

/// A [`CommandHandler`] that carries out the lifecycle-level commands itself and hands the
/// board-level ones to `device`:
///
/// - `EnterMaintenance`: `ScheduledUpdate` from Active, `ManualIntervention` from Degraded,
///   otherwise [`RejectReason::InvalidState`]; then `device.enter_maintenance()` is told
///   (its own rejection, including the default `Unsupported`, is ignored).
/// - `ExitMaintenance`: `UpdateComplete` from Maintenance, otherwise `InvalidState`.
/// - `SetConfig`: [`ConfigStore::apply`]; stale and invalid configurations are rejected
///   with [`RejectReason::ConfigStale`] / [`RejectReason::ConfigInvalid`] and the previous
///   configuration stays in force; on success `device.set_config` is told.
/// - everything else goes to `device`.
#[derive(Debug)]
pub struct DeviceCommands<'a, const H: usize, K: Hooks + ?Sized, D: CommandHandler + ?Sized> {
    /// The device's lifecycle.
    pub lifecycle: &'a mut Lifecycle<H>,
    /// Hooks run on lifecycle transitions.
    pub hooks: &'a mut K,
    /// The configuration in force.
    pub config: &'a mut ConfigStore,
    /// The firmware's handler for board-level commands.
    pub device: &'a mut D,
    /// The time stamped on lifecycle transitions.
    pub now_ms: u64,
}

impl<const H: usize, K: Hooks + ?Sized, D: CommandHandler + ?Sized> CommandHandler
    for DeviceCommands<'_, H, K, D>
{
    fn diagnostics(&mut self) -> HandlerResult {
        self.device.diagnostics()
    }
    fn blink_led(&mut self, times: u8, period_ms: u16) -> HandlerResult {
        self.device.blink_led(times, period_ms)
    }
    fn read_sensor(&mut self, sensor: u8) -> HandlerResult {
        self.device.read_sensor(sensor)
    }
    fn enter_maintenance(&mut self) -> HandlerResult {
        let event = match self.lifecycle.state() {
            State::Active => Event::ScheduledUpdate,
            State::Degraded => Event::ManualIntervention,
            _ => return Err(RejectReason::InvalidState),
        };
        self.lifecycle
            .apply(event, self.now_ms, self.hooks)
            .map_err(|_| RejectReason::InvalidState)?;
        let _ = self.device.enter_maintenance();
        Ok(None)
    }
    fn exit_maintenance(&mut self) -> HandlerResult {
        self.lifecycle
            .apply(Event::UpdateComplete, self.now_ms, self.hooks)
            .map_err(|_| RejectReason::InvalidState)?;
        let _ = self.device.exit_maintenance();
        Ok(None)
    }
    fn reboot(&mut self) -> HandlerResult {
        self.device.reboot()
    }
    fn set_config(&mut self, config: &DeviceConfig) -> HandlerResult {
        match self.config.apply(*config) {
            Ok(_) => {
                let _ = self.device.set_config(self.config.current());
                Ok(None)
            }
            Err(ConfigError::Stale { .. }) => Err(RejectReason::ConfigStale),
            Err(_) => Err(RejectReason::ConfigInvalid),
        }
    }
    fn custom(&mut self, code: u16, args: &[u8]) -> HandlerResult {
        self.device.custom(code, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::codec::{decode, encode_into, encoded_len};

    #[derive(Default)]
    struct Counting {
        calls: u32,
        reboots: u32,
    }
    impl CommandHandler for Counting {
        fn diagnostics(&mut self) -> HandlerResult {
            self.calls += 1;
            Ok(Some(ResultPayload::from_slice(b"ok").unwrap()))
        }
        fn reboot(&mut self) -> HandlerResult {
            self.calls += 1;
            self.reboots += 1;
            Ok(None)
        }
        fn custom(&mut self, code: u16, args: &[u8]) -> HandlerResult {
            self.calls += 1;
            if code == 9 && args == [1, 2] {
                Ok(None)
            } else {
                Err(RejectReason::InvalidArguments)
            }
        }
    }

    fn cmd(id: u32, kind: CommandKind) -> Command {
        Command::new(id, 0, 10_000, kind)
    }

    #[test]
    fn duplicates_return_the_stored_ack_without_running() {
        let mut p: CommandProcessor<4> = CommandProcessor::new();
        let mut h = Counting::default();
        let reboot = cmd(1, CommandKind::Reboot);
        let first = p.process(&reboot, 5, &mut h);
        assert_eq!(first.outcome, AckOutcome::Accepted);
        for t in [6, 7, 20_000] {
            // Even past the deadline, a known id gets its original ack.
            assert_eq!(p.process(&reboot, t, &mut h), first);
        }
        assert_eq!((h.reboots, p.executed()), (1, 1));
    }

    #[test]
    fn expired_commands_are_rejected_and_not_run() {
        let mut p: CommandProcessor<4> = CommandProcessor::new();
        let mut h = Counting::default();
        let c = cmd(2, CommandKind::Diagnostics);
        assert_eq!(
            p.process(&c, 10_001, &mut h).outcome,
            AckOutcome::Rejected(RejectReason::Expired)
        );
        assert_eq!(h.calls, 0);
        // The deadline itself is in time.
        let c = cmd(3, CommandKind::Diagnostics);
        assert!(matches!(
            p.process(&c, 10_000, &mut h).outcome,
            AckOutcome::Completed(_)
        ));
    }

    #[test]
    fn unsupported_and_handler_rejections_become_acks() {
        let mut p: CommandProcessor<4> = CommandProcessor::new();
        let mut h = Counting::default();
        let led = cmd(
            4,
            CommandKind::BlinkLed {
                times: 1,
                period_ms: 1,
            },
        );
        assert_eq!(
            p.process(&led, 0, &mut h).outcome,
            AckOutcome::Rejected(RejectReason::Unsupported)
        );
        let args = CommandArgs::from_slice(&[1, 2]).unwrap();
        let ok = cmd(
            5,
            CommandKind::Custom {
                code: 9,
                args: args.clone(),
            },
        );
        assert_eq!(p.process(&ok, 0, &mut h).outcome, AckOutcome::Accepted);
        let bad = cmd(6, CommandKind::Custom { code: 8, args });
        assert_eq!(
            p.process(&bad, 0, &mut h).outcome,
            AckOutcome::Rejected(RejectReason::InvalidArguments)
        );
    }

    #[test]
    fn window_evicts_oldest_and_restores() {
        let mut p: CommandProcessor<2> = CommandProcessor::new();
        let mut h = Counting::default();
        for id in 1..=3 {
            p.process(&cmd(id, CommandKind::Diagnostics), 0, &mut h);
        }
        assert!(p.ack_for(1).is_none());
        assert_eq!(
            p.acks()
                .map(|a| a.command_id)
                .collect::<heapless::Vec<_, 2>>()
                .as_slice(),
            &[2, 3]
        );
        // After a reboot, restoring the acks keeps a redelivered reboot from running again.
        let mut p2: CommandProcessor<2> = CommandProcessor::new();
        let ack = CommandAck {
            command_id: 7,
            outcome: AckOutcome::Accepted,
        };
        p2.remember(ack.clone());
        p2.remember(CommandAck {
            command_id: 7,
            outcome: AckOutcome::Rejected(RejectReason::Busy),
        });
        assert_eq!(p2.process(&cmd(7, CommandKind::Reboot), 0, &mut h), ack);
        assert_eq!(h.reboots, 0);
    }

    #[test]
    fn commands_and_acks_round_trip() {
        let kinds = [
            CommandKind::Diagnostics,
            CommandKind::BlinkLed {
                times: 3,
                period_ms: 250,
            },
            CommandKind::ReadSensor { sensor: 2 },
            CommandKind::EnterMaintenance,
            CommandKind::ExitMaintenance,
            CommandKind::Reboot,
            CommandKind::SetConfig(DeviceConfig {
                version: 9,
                ..DeviceConfig::DEFAULT
            }),
            CommandKind::Custom {
                code: 77,
                args: CommandArgs::from_slice(&[0xAA; 32]).unwrap(),
            },
        ];
        let mut buf = [0u8; 256];
        for (i, kind) in kinds.into_iter().enumerate() {
            let c = Command::new(i as u32, 1, Command::NEVER_EXPIRES, kind);
            let n = encode_into(&c, &mut buf).unwrap();
            assert_eq!(n, encoded_len(&c));
            assert_eq!(decode::<Command>(&buf[..n]).unwrap(), c);
        }
        for outcome in [
            AckOutcome::Accepted,
            AckOutcome::Rejected(RejectReason::ConfigInvalid),
            AckOutcome::Completed(ResultPayload::from_slice(&[1; RESULT_CAPACITY]).unwrap()),
        ] {
            let a = CommandAck {
                command_id: 70_000,
                outcome,
            };
            let n = encode_into(&a, &mut buf).unwrap();
            assert_eq!(n, encoded_len(&a));
            assert_eq!(decode::<CommandAck>(&buf[..n]).unwrap(), a);
        }
    }

    #[test]
    fn oversized_custom_args_are_a_capacity_error() {
        let mut buf = [0u8; 64];
        let mut e = minicbor::Encoder::new(&mut buf[..]);
        e.map(4).unwrap();
        e.u8(0).unwrap().u32(1).unwrap();
        e.u8(1).unwrap().u8(0).unwrap();
        e.u8(2).unwrap().u8(0).unwrap();
        e.u8(3)
            .unwrap()
            .array(2)
            .unwrap()
            .u8(7)
            .unwrap()
            .array(2)
            .unwrap()
            .u8(1)
            .unwrap()
            .bytes(&[0; 33])
            .unwrap();
        let n = e.writer().len();
        let used = 64 - n;
        assert_eq!(
            decode::<Command>(&buf[..used]),
            Err(iot_core::codec::DecodeError::CapacityExceeded)
        );
    }

    #[test]
    fn undecodable_commands_with_a_readable_id_still_get_one_ack() {
        let mut p: CommandProcessor<4> = CommandProcessor::new();
        let mut h = Counting::default();
        // Kind 42 does not exist in this firmware.
        let mut buf = [0u8; 32];
        let mut e = minicbor::Encoder::new(&mut buf[..]);
        e.map(4).unwrap();
        e.u8(0).unwrap().u32(11).unwrap();
        e.u8(1).unwrap().u8(0).unwrap();
        e.u8(2).unwrap().u8(100).unwrap();
        e.u8(3)
            .unwrap()
            .array(2)
            .unwrap()
            .u8(42)
            .unwrap()
            .array(0)
            .unwrap();
        let used = 32 - e.writer().len();
        let ack = p.process_payload(&buf[..used], 0, &mut h).unwrap();
        assert_eq!(
            ack,
            CommandAck {
                command_id: 11,
                outcome: AckOutcome::Rejected(RejectReason::Unsupported)
            }
        );
        assert_eq!(p.process_payload(&buf[..used], 0, &mut h), Ok(ack));
        // A known kind with a bad field: invalid arguments.
        let mut buf = [0u8; 32];
        let mut e = minicbor::Encoder::new(&mut buf[..]);
        e.map(4).unwrap();
        e.u8(0).unwrap().u32(12).unwrap();
        e.u8(1).unwrap().u8(0).unwrap();
        e.u8(2).unwrap().u8(100).unwrap();
        e.u8(3)
            .unwrap()
            .array(2)
            .unwrap()
            .u8(2)
            .unwrap()
            .array(1)
            .unwrap()
            .str("x")
            .unwrap();
        let used = 32 - e.writer().len();
        assert_eq!(
            p.process_payload(&buf[..used], 0, &mut h).unwrap().outcome,
            AckOutcome::Rejected(RejectReason::InvalidArguments)
        );
        // No id: nothing to ack.
        assert!(p.process_payload(&[0xa0], 0, &mut h).is_err());
        assert_eq!(h.calls, 0);
        // A valid payload is processed normally.
        let c = cmd(13, CommandKind::Diagnostics);
        let n = encode_into(&c, &mut buf).unwrap();
        assert!(matches!(
            p.process_payload(&buf[..n], 0, &mut h).unwrap().outcome,
            AckOutcome::Completed(_)
        ));
    }

    #[test]
    fn device_commands_drive_lifecycle_and_config() {
        let mut lifecycle: Lifecycle<8> = Lifecycle::resume(State::Degraded);
        let mut config = ConfigStore::new();
        let mut board = Counting::default();
        let mut p: CommandProcessor<8> = CommandProcessor::new();
        let mut run = |p: &mut CommandProcessor<8>,
                       lifecycle: &mut Lifecycle<8>,
                       config: &mut ConfigStore,
                       c: Command| {
            let mut h = DeviceCommands {
                lifecycle,
                hooks: &mut (),
                config,
                device: &mut board,
                now_ms: 100,
            };
            p.process(&c, 100, &mut h).outcome
        };
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(1, CommandKind::ExitMaintenance)
            ),
            AckOutcome::Rejected(RejectReason::InvalidState)
        );
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(2, CommandKind::EnterMaintenance)
            ),
            AckOutcome::Accepted
        );
        assert_eq!(lifecycle.state(), State::Maintenance);
        assert_eq!(
            lifecycle.last_transition().unwrap().event,
            Event::ManualIntervention
        );
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(3, CommandKind::EnterMaintenance)
            ),
            AckOutcome::Rejected(RejectReason::InvalidState)
        );
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(4, CommandKind::ExitMaintenance)
            ),
            AckOutcome::Accepted
        );
        assert_eq!(lifecycle.state(), State::Active);
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(5, CommandKind::EnterMaintenance)
            ),
            AckOutcome::Accepted
        );
        assert_eq!(
            lifecycle.last_transition().unwrap().event,
            Event::ScheduledUpdate
        );

        let good = DeviceConfig {
            version: 3,
            ..DeviceConfig::DEFAULT
        };
        let bad = DeviceConfig {
            version: 4,
            sync_interval_ms: 0,
            ..DeviceConfig::DEFAULT
        };
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(6, CommandKind::SetConfig(good))
            ),
            AckOutcome::Accepted
        );
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(7, CommandKind::SetConfig(bad))
            ),
            AckOutcome::Rejected(RejectReason::ConfigInvalid)
        );
        assert_eq!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(8, CommandKind::SetConfig(DeviceConfig::DEFAULT))
            ),
            AckOutcome::Rejected(RejectReason::ConfigStale)
        );
        assert_eq!(config.current(), &good);
        assert!(matches!(
            run(
                &mut p,
                &mut lifecycle,
                &mut config,
                cmd(9, CommandKind::Diagnostics)
            ),
            AckOutcome::Completed(_)
        ));
    }
}
