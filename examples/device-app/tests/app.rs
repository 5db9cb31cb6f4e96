//! The device application against the fleet's device server over a lossy simulated link:
//! registration, a command with one ack, a desired LED state, and decommissioning.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use embassy_futures::block_on;
use iot_core::message::{MessageKind, QoS};
use iot_core::time::{Clock, ManualClock};
use iot_core::{DeviceId, EnvelopeRef, MessageId, NodeId, TenantId, codec};
use iot_device_app::{App, Battery, Climate, Hardware, SensorFault};
use iot_fleet::{DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope};
use iot_lifecycle::State;
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{AuditRecord, DecommissionReason};
use iot_shadow::Value;
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimNetwork};

const SECRET: [u8; 32] = [0x42; 32];

struct FakeHardware<'c> {
    clock: &'c ManualClock,
    led: Vec<bool>,
}

impl Hardware for FakeHardware<'_> {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
    fn read_climate(&mut self) -> Result<Climate, SensorFault> {
        let swing = (self.clock.now_ms() / 30_000 % 2) as f32;
        Ok(Climate {
            celsius: 21.0 + swing,
            humidity: 40.0,
        })
    }
    fn read_battery(&mut self) -> Battery {
        Battery {
            percent: 80,
            millivolts: 3_900,
        }
    }
    fn set_led(&mut self, on: bool) {
        self.led.push(on);
    }
}

#[test]
fn the_lab_application_registers_obeys_and_is_decommissioned_over_a_lossy_link() {
    let clock = ManualClock::new(0);
    let config = SimConfig::ideal(20)
        .with_loss(200, 2)
        .with_duplication(100)
        .with_jitter(10);
    let net: SimNetwork<_, 32, 700> = SimNetwork::new(&clock, config, 5);
    let (device_link, gateway_link) = net.endpoints();
    let device = DeviceId::new("lab-7").unwrap();
    let admin = Principal::new(
        "op",
        TenantId::new("lab").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let mut fleet = Fleet::default();
    let record = ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "LAB".into(),
        serial: 7,
    };
    fleet
        .import_manufacturing(&admin, &"lab".parse().unwrap(), vec![record], 0)
        .unwrap();
    let mut server = DeviceServer::new(
        fleet,
        admin.clone(),
        DeviceConfig {
            version: 1,
            ..DeviceConfig::DEFAULT
        },
        NodeId(1),
        9,
    );

    let mut app = App::new(device_link, device, 1, SECRET, SplitMix64::new(1)).unwrap();
    let mut hw = FakeHardware {
        clock: &clock,
        led: Vec::new(),
    };
    let mut gateway: ReliableEndpoint<_, _, 8, 512, 16> = ReliableEndpoint::new(
        gateway_link,
        DeviceId::new("gw").unwrap(),
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(100, 1_000),
        SplitMix64::new(2),
    );
    app.start(0).unwrap();

    let mut acks = Vec::new();
    let mut audit = None;
    let (mut commanded, mut desired, mut decommissioned) = (false, false, false);
    for _ in 0..30_000 {
        let now = clock.now_ms();
        block_on(app.step(&mut hw)).unwrap();
        let mut inbound = Vec::new();
        block_on(gateway.poll(now, |env| inbound.push((env.kind, env.payload.to_vec())))).unwrap();
        for (kind, payload) in inbound {
            let env = EnvelopeRef {
                device,
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind,
                payload: &payload,
            };
            if let Handled::Replies(replies) = server.handle(&env, now).unwrap() {
                for (k, body) in replies {
                    gateway
                        .enqueue(k, QoS::ExactlyOnce, Priority::High, &body, now)
                        .unwrap();
                }
            }
            match kind {
                MessageKind::CommandAck => {
                    acks.push(codec::decode::<CommandAck>(&payload).unwrap())
                }
                MessageKind::Decommission => {
                    audit = Some(codec::decode::<AuditRecord>(&payload).unwrap())
                }
                _ => {}
            }
        }
        let active = app.agent().state() == State::Active;
        if active && !commanded && now > 60_000 {
            let blink = Command::new(
                1,
                now,
                Command::NEVER_EXPIRES,
                CommandKind::BlinkLed {
                    times: 2,
                    period_ms: 100,
                },
            );
            let bytes = codec::encode_to_vec(&blink).unwrap();
            // Sent twice, as a backend retry would: executed once, one ack each message.
            for _ in 0..2 {
                gateway
                    .enqueue(
                        MessageKind::Command,
                        QoS::ExactlyOnce,
                        Priority::High,
                        &bytes,
                        now,
                    )
                    .unwrap();
            }
            commanded = true;
        }
        if active && !desired && now > 90_000 {
            if let Some(delta) = server
                .set_desired(&device, "led", Value::Bool(true), now)
                .unwrap()
            {
                gateway
                    .enqueue(
                        MessageKind::ShadowDelta,
                        QoS::ExactlyOnce,
                        Priority::High,
                        &delta,
                        now,
                    )
                    .unwrap();
            }
            desired = true;
        }
        if desired && !decommissioned && now > 150_000 {
            let reason = codec::encode_to_vec(&DecommissionReason::OperatorRequest).unwrap();
            gateway
                .enqueue(
                    MessageKind::Decommission,
                    QoS::ExactlyOnce,
                    Priority::High,
                    &reason,
                    now,
                )
                .unwrap();
            decommissioned = true;
        }
        clock.advance(10);
    }
    assert!(commanded && desired && decommissioned);
    // The redelivered command is answered once: the agent acks a command id once.
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(
        (acks[0].command_id, &acks[0].outcome),
        (1, &AckOutcome::Accepted)
    );
    // Two blinks, then the desired LED state.
    assert_eq!(hw.led, [true, false, true, false, true]);
    assert_eq!(server.reported(&device, "led"), Some(Value::Bool(true)));
    let audit = audit.expect("the device sent its audit record");
    assert_eq!((audit.device, audit.from), (device, State::Active));
    assert_eq!(app.agent().state(), State::Decommissioned);
}
