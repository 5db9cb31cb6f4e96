#![no_std]
#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(test)]
extern crate std;

pub mod sht3x;

use iot_agent::Storage;
use iot_agent::runner::{EndpointOutbound, PersistError, Runner};
use iot_agent::{Agent, AgentError, Outbound, Vitals};
use iot_core::DeviceId;
use iot_core::message::EnvelopeRef;
use iot_core::telemetry::Measurement;
use iot_lifecycle::command::{CommandHandler, HandlerResult, RejectReason};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::DeviceSecret;
use iot_transport::Link;
use iot_transport::outbox::OverflowPolicy;
use iot_transport::qos::{EndpointError, ReliableEndpoint};
use iot_transport::retry::BackoffPolicy;
use iot_transport::rng::Rng;

/// Temperature and relative humidity from the board's climate sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Climate {
    /// Degrees Celsius.
    pub celsius: f32,
    /// Percent relative humidity.
    pub humidity: f32,
}

/// Battery state from the board's ADC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Battery {
    /// Percent of full charge.
    pub percent: u8,
    /// Terminal voltage in millivolts.
    pub millivolts: u16,
}

/// A sensor that did not answer or answered with a bad checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorFault;

/// What the application needs from a board's peripherals.
pub trait Hardware {
    /// Milliseconds since boot.
    fn now_ms(&self) -> u64;
    /// Reads the climate sensor.
    fn read_climate(&mut self) -> Result<Climate, SensorFault>;
    /// Reads the battery.
    fn read_battery(&mut self) -> Battery;
    /// Switches the indicator LED.
    fn set_led(&mut self, on: bool);
}

/// Sensor numbers for `ReadSensor` commands.
pub mod sensor {
    /// Temperature in hundredths of a degree Celsius (i32, little-endian).
    pub const TEMPERATURE: u8 = 0;
    /// Relative humidity in hundredths of a percent (i32, little-endian).
    pub const HUMIDITY: u8 = 1;
    /// Battery in millivolts (i32, little-endian).
    pub const BATTERY: u8 = 2;
}

/// Largest encoded message the application sends or accepts.
pub const MESSAGE_CAPACITY: usize = 512;
/// Messages the outbox holds while unacknowledged (store-and-forward during outages).
pub const OUTBOX_CAPACITY: usize = 8;
/// Outbox slots kept for control messages (command acks, lifecycle, registration).
pub const CONTROL_RESERVED: usize = 2;
/// Message ids remembered for duplicate suppression.
pub const DEDUP_WINDOW: usize = 16;
/// Inbound messages buffered between link and agent in one step.
pub const INBOX_CAPACITY: usize = 4;
/// Frame buffer for a serial link carrying the largest message.
pub const FRAME_CAPACITY: usize = 640;

iot_agent::iot_shadow::shadow_state! {
    /// The lab's shadow state: the LED is the product's own field; the others are the ones
    /// the agent maintains (`iot_agent::paths`). The same table as `iot_agent::AgentState`,
    /// so a backend that registered `iot_agent::AGENT_SCHEMA` resolves it alike.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LabState {
        /// Telemetry interval in force, in milliseconds (the operator may change it).
        pub telemetry_interval_ms: u32 => TELEMETRY_INTERVAL, "config.telemetry_interval_ms", LastWriterWins;
        /// Indicator LED.
        pub led: bool => LED, "led", LastWriterWins;
        /// Lifecycle state; device-owned, maintained by the agent.
        pub lifecycle: u8 => LIFECYCLE, "lifecycle", DeviceWins;
        /// Configuration version in force; device-owned, maintained by the agent.
        pub config_version: u32 => CONFIG_VERSION, "config.version", DeviceWins;
    }
}

/// The lab's shadow schema (announced at registration).
pub const LAB_SCHEMA: iot_agent::iot_shadow::typed::FieldTable =
    iot_agent::iot_shadow::typed::FieldTable::of::<LabState>();

/// The lab's agent: 8 lifecycle records, 16 remembered commands, 8 shadow leaves,
/// [`MESSAGE_CAPACITY`]-byte payloads, 3 quantities (temperature, humidity, battery).
pub type LabAgent = Agent<LabState, 8, 16, 8, MESSAGE_CAPACITY, 3>;

/// An LED blink in progress: the LED toggles every half period until done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blink {
    toggles_left: u16,
    half_period_ms: u64,
    next_toggle_ms: u64,
    on: bool,
}

/// The agent's view of the board: sensors, LED and board-level commands.
struct LabBoard<'h, H: Hardware> {
    hw: &'h mut H,
    blink: &'h mut Option<Blink>,
}

fn hundredths(value: f32) -> i32 {
    let scaled = value * 100.0;
    // `as` saturates at the i32 range; NaN maps to 0.
    if scaled.is_finite() { scaled as i32 } else { 0 }
}

impl<H: Hardware> CommandHandler for LabBoard<'_, H> {
    fn blink_led(&mut self, times: u8, period_ms: u16) -> HandlerResult {
        if times == 0 || period_ms < 2 {
            return Err(RejectReason::InvalidArguments);
        }
        *self.blink = Some(Blink {
            toggles_left: u16::from(times).saturating_mul(2),
            half_period_ms: u64::from(period_ms / 2),
            next_toggle_ms: self.hw.now_ms(),
            on: false,
        });
        Ok(None)
    }

    fn read_sensor(&mut self, sensor: u8) -> HandlerResult {
        let climate = |hw: &mut H| hw.read_climate().map_err(|_| RejectReason::Failed);
        let value = match sensor {
            sensor::TEMPERATURE => hundredths(climate(self.hw)?.celsius),
            sensor::HUMIDITY => hundredths(climate(self.hw)?.humidity),
            sensor::BATTERY => i32::from(self.hw.read_battery().millivolts),
            _ => return Err(RejectReason::InvalidArguments),
        };
        heapless::Vec::from_slice(&value.to_le_bytes())
            .map(Some)
            .map_err(|_| RejectReason::Failed)
    }

    fn diagnostics(&mut self) -> HandlerResult {
        let ok = self.hw.read_climate().is_ok();
        heapless::Vec::from_slice(&[u8::from(ok)])
            .map(Some)
            .map_err(|_| RejectReason::Failed)
    }

    fn enter_maintenance(&mut self) -> HandlerResult {
        Ok(None)
    }

    fn exit_maintenance(&mut self) -> HandlerResult {
        Ok(None)
    }
}

impl<H: Hardware> iot_agent::App for LabBoard<'_, H> {
    type State = LabState;

    fn readings(&mut self, _now_ms: u64, readings: &mut heapless::VecView<Measurement>) {
        if let Ok(climate) = self.hw.read_climate() {
            let _ = readings.push(Measurement::Temperature {
                celsius: climate.celsius,
            });
            let _ = readings.push(Measurement::Humidity {
                percent: climate.humidity,
            });
        }
        let percent = self.hw.read_battery().percent;
        let _ = readings.push(Measurement::BatteryPercent { percent });
    }

    fn vitals(&mut self, _now_ms: u64) -> Vitals {
        let climate = self.hw.read_climate().ok();
        let battery = self.hw.read_battery();
        Vitals {
            reading: climate.map(|c| c.celsius),
            battery_percent: Some(battery.percent),
            battery_mv: Some(battery.millivolts),
            error_count: u32::from(climate.is_none()),
            ..Vitals::default()
        }
    }

    fn apply(&mut self, state: &LabState, previous: &LabState) {
        if state.led != previous.led {
            // A desired LED state ends any blink in progress.
            *self.blink = None;
            self.hw.set_led(state.led);
        }
    }
}

/// Why the application could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError<E> {
    /// The initial configuration is invalid.
    Config,
    /// The registration request could not be queued.
    Link(EndpointError<E>),
}

/// The lab without a link: the agent and the board-level state (an LED blink in
/// progress). [`App`] runs it over an at-least-once endpoint (serial links); a transport
/// that delivers messages itself (MQTT QoS 1 with the broker's acknowledgements) feeds it
/// envelopes with [`Lab::handle`] and sends what it queues in any [`Outbound`].
pub struct Lab {
    agent: LabAgent,
    blink: Option<Blink>,
}

impl Lab {
    /// The lab for `device`, proving its identity with `secret` (provisioned at manufacture
    /// and known only to the device and the backend); `None` if the default configuration
    /// is refused.
    pub fn new(device: DeviceId, firmware_version: u32, secret: [u8; 32]) -> Option<Self> {
        let initial = LabState {
            telemetry_interval_ms: DeviceConfig::DEFAULT.telemetry_interval_ms,
            led: false,
            lifecycle: 0,
            config_version: DeviceConfig::DEFAULT.version,
        };
        let agent = LabAgent::with_state(
            device,
            firmware_version,
            DeviceSecret::from_bytes(secret),
            DeviceConfig::DEFAULT,
            initial,
        )
        .ok()?;
        Some(Self { agent, blink: None })
    }

    /// The agent, for its state, statistics and configuration.
    pub fn agent(&self) -> &LabAgent {
        &self.agent
    }

    /// Starts registration at `now_ms`, queueing the request in `out`.
    pub fn start<O: Outbound + ?Sized>(
        &mut self,
        now_ms: u64,
        out: &mut O,
    ) -> Result<(), AgentError> {
        self.agent.start(now_ms, out)
    }

    /// Handles one inbound envelope; replies go to `out`. Call [`Lab::poll`] afterwards.
    pub fn handle<H: Hardware, O: Outbound + ?Sized>(
        &mut self,
        hw: &mut H,
        envelope: &EnvelopeRef<'_>,
        out: &mut O,
    ) -> Result<(), AgentError> {
        let now = hw.now_ms();
        let mut board = LabBoard {
            hw,
            blink: &mut self.blink,
        };
        self.agent.handle(now, envelope, &mut board, out)
    }

    /// Runs the agent's duties due now and carries out LED blinks; returns when to call
    /// again at the latest (`None`: only a message can wake it).
    pub fn poll<H: Hardware, O: Outbound + ?Sized>(
        &mut self,
        hw: &mut H,
        out: &mut O,
    ) -> Option<u64> {
        let now = hw.now_ms();
        let next = {
            let mut board = LabBoard {
                hw: &mut *hw,
                blink: &mut self.blink,
            };
            self.agent.poll(now, &mut board, out)
        };
        earliest(next, run_blink(&mut self.blink, hw, now))
    }
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Carries out the LED blink in progress; returns when the next toggle is due.
fn run_blink<H: Hardware>(slot: &mut Option<Blink>, hw: &mut H, now: u64) -> Option<u64> {
    let blink = slot.as_mut()?;
    while blink.toggles_left > 0 && now >= blink.next_toggle_ms {
        blink.on = !blink.on;
        hw.set_led(blink.on);
        blink.toggles_left = blink.toggles_left.saturating_sub(1);
        blink.next_toggle_ms = blink.next_toggle_ms.saturating_add(blink.half_period_ms);
    }
    if blink.toggles_left == 0 {
        *slot = None;
        None
    } else {
        Some(blink.next_toggle_ms)
    }
}

/// The device-lab application: the `iot-lifecycle` agent over an at-least-once endpoint.
pub struct App<L: Link, R: Rng> {
    lab: Lab,
    endpoint: ReliableEndpoint<L, R, OUTBOX_CAPACITY, MESSAGE_CAPACITY, DEDUP_WINDOW>,
    runner: Runner<INBOX_CAPACITY, MESSAGE_CAPACITY>,
}

impl<L: Link, R: Rng> App<L, R> {
    /// An application for `device`, proving its identity with `secret` (provisioned at
    /// manufacture and known only to the device and the backend), sending over `link`.
    pub fn new(
        link: L,
        device: DeviceId,
        firmware_version: u32,
        secret: [u8; 32],
        rng: R,
    ) -> Result<Self, StartError<L::Error>> {
        let lab = Lab::new(device, firmware_version, secret).ok_or(StartError::Config)?;
        let endpoint = ReliableEndpoint::new(
            link,
            device,
            OverflowPolicy::DropOldest,
            BackoffPolicy::new(200, 5_000),
            rng,
        )
        // Command acks, lifecycle reports and registration always find room.
        .with_reserved_control(CONTROL_RESERVED);
        Ok(Self {
            lab,
            endpoint,
            runner: Runner::new(),
        })
    }

    /// The agent, for its state, statistics and configuration.
    pub fn agent(&self) -> &LabAgent {
        &self.lab.agent
    }

    /// Writes what the application must keep across a reboot (the agent's record and the
    /// pending QoS 1/2 messages, see [`Runner::save`]) to `storage` if it changed; call it
    /// after each [`App::step`]. `scratch` holds the outbox image while it is written.
    pub fn save<St: Storage + ?Sized>(
        &mut self,
        storage: &mut St,
        scratch: &mut [u8],
    ) -> Result<bool, PersistError<St::Error>> {
        self.runner
            .save(&mut self.lab.agent, &self.endpoint, storage, scratch)
    }

    /// At boot, instead of [`App::start`] when it returns `Ok(true)`: resumes from what
    /// [`App::save`] wrote (no registration again; the desired LED state is applied at
    /// once) and starts new message ids in a new epoch.
    pub fn restore<H: Hardware, St: Storage + ?Sized>(
        &mut self,
        hw: &mut H,
        storage: &mut St,
        scratch: &mut [u8],
    ) -> Result<bool, PersistError<St::Error>> {
        let now = hw.now_ms();
        let mut board = LabBoard {
            hw,
            blink: &mut self.lab.blink,
        };
        let restored = self.runner.restore(
            now,
            &mut self.lab.agent,
            &mut self.endpoint,
            &mut board,
            storage,
            scratch,
        )?;
        if restored {
            self.endpoint.set_next_id(self.lab.agent.first_message_id());
        }
        Ok(restored)
    }

    /// Starts registration at `now_ms`.
    pub fn start(&mut self, now_ms: u64) -> Result<(), StartError<L::Error>> {
        self.lab
            .start(now_ms, &mut EndpointOutbound::new(&mut self.endpoint))
            .map_err(|_| StartError::Config)
    }

    /// Does everything due now: receives, lets the agent handle messages and run its
    /// duties, transmits, and carries out LED blinks. Returns when to call again at the
    /// latest (sooner if the link has data); `None` when only a message can wake it.
    pub async fn step<H: Hardware>(
        &mut self,
        hw: &mut H,
    ) -> Result<Option<u64>, EndpointError<L::Error>> {
        let now = hw.now_ms();
        let next = {
            let mut board = LabBoard {
                hw: &mut *hw,
                blink: &mut self.lab.blink,
            };
            self.runner
                .step(now, &mut self.lab.agent, &mut self.endpoint, &mut board)
                .await?
        };
        Ok(earliest(next, run_blink(&mut self.lab.blink, hw, now)))
    }
}
