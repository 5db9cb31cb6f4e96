//! The device application against a gateway over a lossy, duplicating simulated link.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use embassy_futures::block_on;
use iot_core::DeviceId;
use iot_core::codec;
use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::{Measurement, Telemetry};
use iot_core::time::{Clock, ManualClock};
use iot_device_app::{App, Battery, Board, Climate, SensorFault, sensor};
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimNetwork};

struct FakeBoard<'c> {
    clock: &'c ManualClock,
    led_changes: Vec<(u64, bool)>,
    climate_ok: bool,
}

impl Board for FakeBoard<'_> {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    fn read_climate(&mut self) -> Result<Climate, SensorFault> {
        if self.climate_ok {
            Ok(Climate {
                celsius: 22.25,
                humidity: 41.5,
            })
        } else {
            Err(SensorFault)
        }
    }
    fn read_battery(&mut self) -> Battery {
        Battery {
            percent: 76,
            millivolts: 3_812,
        }
    }
    fn set_led(&mut self, on: bool) {
        self.led_changes.push((self.clock.now_ms(), on));
    }
}

fn command(id: u32, kind: CommandKind) -> Vec<u8> {
    codec::encode_to_vec(&Command::new(id, 0, Command::NEVER_EXPIRES, kind)).unwrap()
}

#[test]
fn heartbeat_telemetry_and_commands_survive_a_lossy_link() {
    let clock = ManualClock::new(0);
    let config = SimConfig::ideal(20)
        .with_loss(300, 3)
        .with_duplication(200)
        .with_jitter(15);
    let net: SimNetwork<_, 32, 256> = SimNetwork::new(&clock, config, 11);
    let (device_link, gateway_link) = net.endpoints();
    let device = DeviceId::new("lab-1").unwrap();
    let mut app = App::new(device_link, device, SplitMix64::new(1));
    let mut board = FakeBoard {
        clock: &clock,
        led_changes: Vec::new(),
        climate_ok: true,
    };
    let mut gateway: ReliableEndpoint<_, _, 8, 192, 16> = ReliableEndpoint::new(
        gateway_link,
        DeviceId::new("gw").unwrap(),
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(100, 1_000),
        SplitMix64::new(2),
    );
    let blink = command(
        7,
        CommandKind::BlinkLed {
            times: 2,
            period_ms: 100,
        },
    );
    let read = command(
        8,
        CommandKind::ReadSensor {
            sensor: sensor::TEMPERATURE,
        },
    );
    let now = clock.now_ms();
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::ExactlyOnce,
            Priority::High,
            &blink,
            now,
        )
        .unwrap();
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::ExactlyOnce,
            Priority::High,
            &read,
            now,
        )
        .unwrap();
    // The backend resends command 7 as a new message (its own retry): executed once, acked twice.
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::ExactlyOnce,
            Priority::High,
            &blink,
            now,
        )
        .unwrap();

    let (mut heartbeats, mut telemetry, mut acks) = (0, Vec::new(), Vec::new());
    for _ in 0..3_000 {
        block_on(app.step(&mut board)).unwrap();
        block_on(gateway.poll(clock.now_ms(), |env| match env.kind {
            MessageKind::Heartbeat => heartbeats += 1,
            MessageKind::Telemetry => {
                telemetry.push(codec::decode::<Telemetry<4>>(env.payload).unwrap())
            }
            MessageKind::CommandAck => acks.push(codec::decode::<CommandAck>(env.payload).unwrap()),
            other => panic!("unexpected {other:?}"),
        }))
        .unwrap();
        clock.advance(10);
    }
    // Heartbeats are at-least-once: duplicates are allowed, loss is not.
    assert!(heartbeats >= 1);
    assert_eq!(telemetry.len(), 1);
    let values: Vec<Measurement> = telemetry[0]
        .readings
        .iter()
        .map(|r| r.measurement)
        .collect();
    assert_eq!(
        values,
        [
            Measurement::Temperature { celsius: 22.25 },
            Measurement::Humidity { percent: 41.5 },
            Measurement::BatteryPercent { percent: 76 }
        ]
    );
    assert_eq!(acks.len(), 3, "one ack per command message: {acks:?}");
    assert_eq!(acks.iter().filter(|a| a.command_id == 7).count(), 2);
    assert!(
        acks.iter()
            .filter(|a| a.command_id == 7)
            .all(|a| a.outcome == AckOutcome::Accepted)
    );
    let temperature = acks.iter().find(|a| a.command_id == 8).unwrap();
    assert_eq!(
        temperature.outcome,
        AckOutcome::Completed(heapless::Vec::from_slice(&2_225i32.to_le_bytes()).unwrap())
    );
    assert_eq!(app.commands_executed(), 2);
    // Two blinks: on, off, on, off, 50 ms apart.
    let states: Vec<bool> = board.led_changes.iter().map(|(_, on)| *on).collect();
    assert_eq!(states, [true, false, true, false]);
    let times: Vec<u64> = board.led_changes.iter().map(|(t, _)| *t).collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] >= 50), "{times:?}");
    assert!(app.all_acknowledged());
    assert!(gateway.outbox().is_empty());
}

#[test]
fn a_broken_sensor_is_reported_by_the_ack_not_a_panic() {
    let clock = ManualClock::new(0);
    let net: SimNetwork<_, 16, 256> = SimNetwork::new(&clock, SimConfig::ideal(1), 3);
    let (device_link, gateway_link) = net.endpoints();
    let mut app = App::new(
        device_link,
        DeviceId::new("lab-2").unwrap(),
        SplitMix64::new(1),
    );
    let mut board = FakeBoard {
        clock: &clock,
        led_changes: Vec::new(),
        climate_ok: false,
    };
    let mut gateway: ReliableEndpoint<_, _, 8, 192, 16> = ReliableEndpoint::new(
        gateway_link,
        DeviceId::new("gw").unwrap(),
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(100, 1_000),
        SplitMix64::new(2),
    );
    let read = command(
        1,
        CommandKind::ReadSensor {
            sensor: sensor::HUMIDITY,
        },
    );
    let bad_blink = command(
        2,
        CommandKind::BlinkLed {
            times: 0,
            period_ms: 100,
        },
    );
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::ExactlyOnce,
            Priority::High,
            &read,
            0,
        )
        .unwrap();
    gateway
        .enqueue(
            MessageKind::Command,
            QoS::ExactlyOnce,
            Priority::High,
            &bad_blink,
            0,
        )
        .unwrap();
    let mut acks = Vec::new();
    let mut telemetry = Vec::new();
    for _ in 0..200 {
        block_on(app.step(&mut board)).unwrap();
        block_on(gateway.poll(clock.now_ms(), |env| match env.kind {
            MessageKind::CommandAck => acks.push(codec::decode::<CommandAck>(env.payload).unwrap()),
            MessageKind::Telemetry => {
                telemetry.push(codec::decode::<Telemetry<4>>(env.payload).unwrap())
            }
            _ => {}
        }))
        .unwrap();
        clock.advance(10);
    }
    acks.sort_by_key(|a| a.command_id);
    assert_eq!(acks.len(), 2);
    assert!(matches!(acks[0].outcome, AckOutcome::Rejected(_)));
    assert!(matches!(acks[1].outcome, AckOutcome::Rejected(_)));
    // Without a climate reading the telemetry carries the battery alone.
    assert_eq!(telemetry.len(), 1);
    assert_eq!(telemetry[0].readings.len(), 1);
    assert!(board.led_changes.is_empty());
}
