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

use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::{DeviceId, codec};
use iot_lifecycle::command::{CommandHandler, CommandProcessor, HandlerResult, RejectReason};
use iot_transport::Link;
use iot_transport::outbox::{OverflowPolicy, Priority};
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

/// What the application needs from a board.
pub trait Board {
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

/// Why the application stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppError<E> {
    /// The link or the delivery layer failed.
    Link(EndpointError<E>),
    /// A message could not be encoded.
    Encode,
}

impl<E> From<EndpointError<E>> for AppError<E> {
    fn from(e: EndpointError<E>) -> Self {
        Self::Link(e)
    }
}

/// Largest encoded message the application sends or accepts.
pub const MESSAGE_CAPACITY: usize = 192;
/// Messages the outbox holds while unacknowledged.
pub const OUTBOX_CAPACITY: usize = 8;
/// Message ids remembered for duplicate suppression.
pub const DEDUP_WINDOW: usize = 16;
/// Commands whose acks are remembered (idempotence window).
pub const COMMAND_WINDOW: usize = 8;

/// An LED blink in progress: the LED toggles every half period until done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Blink {
    toggles_left: u16,
    half_period_ms: u64,
    next_toggle_ms: u64,
    on: bool,
}

/// Runs commands against the board; blinks are carried out over time by [`App::step`].
struct Commands<'b, B: Board> {
    board: &'b mut B,
    blink: &'b mut Option<Blink>,
    now_ms: u64,
}

fn hundredths(value: f32) -> i32 {
    let scaled = value * 100.0;
    if scaled.is_finite() {
        // Saturating float-to-int conversion: `as` clamps to the i32 range.
        scaled as i32
    } else {
        0
    }
}

impl<B: Board> CommandHandler for Commands<'_, B> {
    fn blink_led(&mut self, times: u8, period_ms: u16) -> HandlerResult {
        if times == 0 || period_ms < 2 {
            return Err(RejectReason::InvalidArguments);
        }
        *self.blink = Some(Blink {
            toggles_left: u16::from(times).saturating_mul(2),
            half_period_ms: u64::from(period_ms / 2),
            next_toggle_ms: self.now_ms,
            on: false,
        });
        Ok(None)
    }

    fn read_sensor(&mut self, sensor: u8) -> HandlerResult {
        let value = match sensor {
            sensor::TEMPERATURE => hundredths(
                self.board
                    .read_climate()
                    .map_err(|_| RejectReason::Failed)?
                    .celsius,
            ),
            sensor::HUMIDITY => hundredths(
                self.board
                    .read_climate()
                    .map_err(|_| RejectReason::Failed)?
                    .humidity,
            ),
            sensor::BATTERY => i32::from(self.board.read_battery().millivolts),
            _ => return Err(RejectReason::InvalidArguments),
        };
        heapless::Vec::from_slice(&value.to_le_bytes())
            .map(Some)
            .map_err(|_| RejectReason::Failed)
    }

    fn diagnostics(&mut self) -> HandlerResult {
        let ok = self.board.read_climate().is_ok();
        heapless::Vec::from_slice(&[u8::from(ok)])
            .map(Some)
            .map_err(|_| RejectReason::Failed)
    }
}

/// The application: owns the delivery endpoint and the command processor.
pub struct App<L: Link, R: Rng> {
    endpoint: ReliableEndpoint<L, R, OUTBOX_CAPACITY, MESSAGE_CAPACITY, DEDUP_WINDOW>,
    commands: CommandProcessor<COMMAND_WINDOW>,
    blink: Option<Blink>,
    announced: bool,
}

impl<L: Link, R: Rng> App<L, R> {
    /// An application for `device` sending over `link`; `rng` spreads retransmissions.
    pub fn new(link: L, device: DeviceId, rng: R) -> Self {
        Self {
            endpoint: ReliableEndpoint::new(
                link,
                device,
                OverflowPolicy::DropOldest,
                BackoffPolicy::new(200, 5_000),
                rng,
            ),
            commands: CommandProcessor::new(),
            blink: None,
            announced: false,
        }
    }

    /// True when every message sent so far has been acknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.endpoint.outbox().is_empty()
    }

    /// Commands executed so far (repeats of an id are answered, not executed).
    pub fn commands_executed(&self) -> u32 {
        self.commands.executed()
    }

    /// Does everything due at the board's current time: the first heartbeat and telemetry,
    /// retransmissions, incoming commands (each answered with exactly one ack) and LED blinks.
    /// Call it whenever the link has data or a few milliseconds have passed.
    pub async fn step<B: Board>(&mut self, board: &mut B) -> Result<(), AppError<L::Error>> {
        let now = board.now_ms();
        if !self.announced {
            self.announce(board, now)?;
            self.announced = true;
        }
        let mut inbox: heapless::Vec<heapless::Vec<u8, MESSAGE_CAPACITY>, 2> = heapless::Vec::new();
        self.endpoint
            .poll(now, |env| {
                if env.kind == MessageKind::Command {
                    // A third command in one poll waits for its retransmission.
                    if let Ok(payload) = heapless::Vec::from_slice(env.payload) {
                        let _ = inbox.push(payload);
                    }
                }
            })
            .await?;
        for payload in &inbox {
            let mut handler = Commands {
                board: &mut *board,
                blink: &mut self.blink,
                now_ms: now,
            };
            if let Ok(ack) = self.commands.process_payload(payload, now, &mut handler) {
                let mut buf = [0u8; 96];
                let n = codec::encode_into(&ack, &mut buf).map_err(|_| AppError::Encode)?;
                let bytes = buf.get(..n).ok_or(AppError::Encode)?;
                self.endpoint.enqueue(
                    MessageKind::CommandAck,
                    QoS::ExactlyOnce,
                    Priority::High,
                    bytes,
                    now,
                )?;
            }
        }
        self.run_blink(board, now);
        Ok(())
    }

    fn announce<B: Board>(&mut self, board: &mut B, now: u64) -> Result<(), AppError<L::Error>> {
        // A heartbeat is idempotent: a duplicate costs nothing, so at-least-once suffices.
        self.endpoint.enqueue(
            MessageKind::Heartbeat,
            QoS::AtLeastOnce,
            Priority::Normal,
            &[],
            now,
        )?;
        let mut batch: Telemetry<3> = Telemetry::new();
        if let Ok(climate) = board.read_climate() {
            let _ = batch.push(Reading::new(
                now,
                Measurement::Temperature {
                    celsius: climate.celsius,
                },
            ));
            let _ = batch.push(Reading::new(
                now,
                Measurement::Humidity {
                    percent: climate.humidity,
                },
            ));
        }
        let battery = board.read_battery();
        let _ = batch.push(Reading::new(
            now,
            Measurement::BatteryPercent {
                percent: battery.percent,
            },
        ));
        let mut buf = [0u8; 64];
        let n = codec::encode_into(&batch, &mut buf).map_err(|_| AppError::Encode)?;
        let bytes = buf.get(..n).ok_or(AppError::Encode)?;
        self.endpoint.enqueue(
            MessageKind::Telemetry,
            QoS::ExactlyOnce,
            Priority::Normal,
            bytes,
            now,
        )?;
        Ok(())
    }

    fn run_blink<B: Board>(&mut self, board: &mut B, now: u64) {
        let Some(blink) = self.blink.as_mut() else {
            return;
        };
        while blink.toggles_left > 0 && now >= blink.next_toggle_ms {
            blink.on = !blink.on;
            board.set_led(blink.on);
            blink.toggles_left = blink.toggles_left.saturating_sub(1);
            blink.next_toggle_ms = blink.next_toggle_ms.saturating_add(blink.half_period_ms);
        }
        if blink.toggles_left == 0 {
            self.blink = None;
        }
    }
}
