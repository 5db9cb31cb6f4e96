//! The device lab's product, kept as a ready-made [`App`]: its shadow state
//! ([`AgentState`]: telemetry interval, LED, lifecycle, configuration version), its
//! readings (temperature, humidity, battery) and a [`Board`] trait for its hardware.
//!
//! Any [`Board`] is an [`App`] with [`AgentState`]; [`LabAgent`] is the agent for it. A new
//! product implements [`App`] directly with its own `shadow_state!` struct instead.

use iot_core::DeviceId;
use iot_core::telemetry::Measurement;
use iot_lifecycle::command::CommandHandler;
use iot_lifecycle::config::{DeviceConfig, ValidationError};
use iot_lifecycle::registration::DeviceSecret;

use crate::{Agent, AgentError, App, Firmware, Vitals};

iot_shadow::shadow_state! {
    /// The lab's shadow state.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AgentState {
        /// Telemetry interval in force, in milliseconds (the operator may change it).
        pub telemetry_interval_ms: u32 => TELEMETRY_INTERVAL, "config.telemetry_interval_ms", LastWriterWins;
        /// Status LED.
        pub led: bool => LED, "led", LastWriterWins;
        /// Lifecycle state (wire code of `State`); device-owned.
        pub lifecycle: u8 => LIFECYCLE, "lifecycle", DeviceWins;
        /// Configuration version in force; device-owned.
        pub config_version: u32 => CONFIG_VERSION, "config.version", DeviceWins;
    }
}

impl AgentState {
    /// The state of a factory-fresh lab device: LED off, the rest maintained by the agent.
    pub const INITIAL: Self = Self {
        telemetry_interval_ms: DeviceConfig::DEFAULT.telemetry_interval_ms,
        led: false,
        lifecycle: 0,
        config_version: DeviceConfig::DEFAULT.version,
    };
}

/// The field policies of [`AgentState`]. The agent announces its fingerprint at
/// registration; a backend registers the same table (`Fleet::register_schema` in
/// `iot-fleet`) so both ends resolve the shadow with the same policies.
pub const AGENT_SCHEMA: iot_shadow::typed::FieldTable =
    iot_shadow::typed::FieldTable::of::<AgentState>();

/// Readings per lab telemetry message: temperature, humidity, battery.
pub const TELEMETRY_READINGS: usize = 3;

/// One reading of the board's sensors and vital signs. Absent values are neither sent nor
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SensorSample {
    /// Temperature in degrees Celsius.
    pub temperature_c: Option<f32>,
    /// Relative humidity in percent.
    pub humidity_percent: Option<f32>,
    /// Battery charge in percent.
    pub battery_percent: Option<u8>,
    /// Battery voltage in millivolts.
    pub battery_mv: Option<u16>,
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i16>,
    /// Free memory in bytes.
    pub free_memory_bytes: Option<u32>,
    /// Sends that failed in a row, as the transport counts them.
    pub consecutive_send_failures: u16,
    /// Errors counted since boot (wrapping).
    pub error_count: u32,
}

/// The lab board: sensors, LED, storage to wipe, and board-level commands.
pub trait Board: CommandHandler {
    /// Reads the sensors now.
    fn sample(&mut self, now_ms: u64) -> SensorSample;
    /// Switches the status LED (a shadow change). Does nothing by default.
    fn set_led(&mut self, on: bool) {
        let _ = on;
    }
    /// Erases user data and logs when the device is decommissioned; `false` if it failed
    /// (then nothing else is wiped and decommissioning can be retried).
    fn wipe_user_data(&mut self) -> bool {
        true
    }
    /// The firmware updater, if the board updates itself over the air. `None` (the
    /// default): an `OtaJob` is answered with a rolled-back progress report.
    fn firmware(&mut self) -> Option<&mut dyn Firmware> {
        None
    }
    /// Restarts the device into the image just installed for its trial boot. Does nothing
    /// by default.
    fn restart(&mut self) {}
}

impl<B: Board + ?Sized> App for B {
    type State = AgentState;

    fn readings(&mut self, now_ms: u64, readings: &mut heapless::VecView<Measurement>) {
        let s = self.sample(now_ms);
        let measurements = [
            s.temperature_c
                .map(|celsius| Measurement::Temperature { celsius }),
            s.humidity_percent
                .map(|percent| Measurement::Humidity { percent }),
            s.battery_percent
                .map(|percent| Measurement::BatteryPercent { percent }),
        ];
        for m in measurements.into_iter().flatten() {
            let _ = readings.push(m);
        }
    }

    fn vitals(&mut self, now_ms: u64) -> Vitals {
        let s = self.sample(now_ms);
        Vitals {
            battery_percent: s.battery_percent,
            battery_mv: s.battery_mv,
            rssi_dbm: s.rssi_dbm,
            free_memory_bytes: s.free_memory_bytes,
            reading: s.temperature_c,
            consecutive_send_failures: s.consecutive_send_failures,
            error_count: s.error_count,
        }
    }

    fn apply(&mut self, state: &AgentState, previous: &AgentState) {
        if state.led != previous.led {
            self.set_led(state.led);
        }
    }

    fn wipe_user_data(&mut self) -> bool {
        Board::wipe_user_data(self)
    }

    fn firmware(&mut self) -> Option<&mut dyn Firmware> {
        Board::firmware(self)
    }

    fn restart(&mut self) {
        Board::restart(self);
    }
}

impl<const H: usize, const C: usize, const S: usize, const B: usize, const R: usize>
    Agent<AgentState, H, C, S, B, R>
{
    /// A factory-fresh lab agent (see [`Agent::with_state`]).
    pub fn new(
        device: DeviceId,
        firmware_version: u32,
        secret: DeviceSecret,
        config: DeviceConfig,
    ) -> Result<Self, ValidationError> {
        Self::with_state(
            device,
            firmware_version,
            secret,
            config,
            AgentState::INITIAL,
        )
    }

    /// Switches the LED locally (a button, say) and syncs the shadow at once.
    pub fn set_led<D: App<State = AgentState> + ?Sized>(
        &mut self,
        on: bool,
        now_ms: u64,
        board: &mut D,
    ) -> Result<(), AgentError> {
        self.update(now_ms, board, |s| s.led = on)
    }
}

/// The device lab's agent: 8 lifecycle records, 16 remembered commands, 8 shadow leaves,
/// 512-byte payloads (encoded in a stack buffer of that size while a message is sent).
pub type LabAgent = Agent<AgentState, 8, 16, 8, 512>;
