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
use iot_agent::Outbound;
use iot_core::message::{MessageKind, QoS};
use iot_core::time::{Clock, ManualClock};
use iot_core::{DeviceId, EnvelopeRef, MessageId, NodeId, TenantId, codec};
use iot_device_app::{App, Battery, Climate, Hardware, Lab, SensorFault};
use iot_fleet::{
    DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope, Session,
};
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

/// The fleet's device server knowing the lab device `lab-7` from its manufacturing record.
struct Backend {
    device: DeviceId,
    admin: Principal,
    server: DeviceServer,
    session: Session,
}

fn backend() -> Backend {
    let device = DeviceId::new("lab-7").unwrap();
    let admin = Principal::new(
        "op",
        TenantId::new("lab").unwrap(),
        Scope::root(),
        Role::Admin,
    );
    let mut fleet = Fleet::default();
    // The lab device class: the backend resolves its shadow with the agent's own table.
    // The lab announces the same table as the agent's built-in lab state, so the gateway
    // (which registers `AGENT_SCHEMA`) resolves it alike.
    assert_eq!(
        iot_device_app::LAB_SCHEMA.fingerprint(),
        iot_agent::AGENT_SCHEMA.fingerprint()
    );
    fleet.register_schema(iot_device_app::LAB_SCHEMA);
    let record = ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "LAB".into(),
        serial: 7,
    };
    fleet
        .import_manufacturing(&admin, &"lab".parse().unwrap(), vec![record], 0)
        .unwrap();
    let server = DeviceServer::with_os_rng(
        fleet,
        DeviceConfig {
            version: 1,
            ..DeviceConfig::DEFAULT
        },
        NodeId(1),
    );
    // The gateway's link is wired to this one device: it authenticates the session.
    let session = Session::authenticated(device, 1);
    Backend {
        device,
        admin,
        server,
        session,
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
    let Backend {
        device,
        admin,
        mut server,
        session,
    } = backend();

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
    let mut reported_led = None;
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
            if let Handled::Replies(replies) = server.handle(&session, &env, now).unwrap() {
                for reply in replies {
                    gateway
                        .enqueue(
                            reply.kind(),
                            QoS::ExactlyOnce,
                            Priority::High,
                            &reply.to_vec(),
                            now,
                        )
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
        // The backend learns the device's state from its lifecycle reports alone.
        let active = server.fleet().device(&admin, &device).map(|r| r.state) == Ok(State::Active);
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
                .set_desired(&admin, &device, "led", Value::Bool(true), now)
                .unwrap()
            {
                gateway
                    .enqueue(
                        delta.kind(),
                        QoS::ExactlyOnce,
                        Priority::High,
                        &delta.to_vec(),
                        now,
                    )
                    .unwrap();
            }
            desired = true;
        }
        if desired && !decommissioned && now > 150_000 {
            // What the backend holds before decommissioning wipes the device's data.
            reported_led = server.reported(&admin, &device, "led");
            let (done, order) = server
                .decommission(&admin, &device, DecommissionReason::OperatorRequest, now)
                .unwrap();
            assert_eq!(done.previous, State::Active);
            gateway
                .enqueue(
                    order.kind(),
                    QoS::ExactlyOnce,
                    Priority::High,
                    &order.to_vec(),
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
    assert_eq!(reported_led, Some(Value::Bool(true)));
    // Decommissioning reached the backend's record through the operator's action, and the
    // device confirmed it with its audit record.
    assert!(server.fleet().device(&admin, &device).is_err());
    let audit = audit.expect("the device sent its audit record");
    assert_eq!((audit.device, audit.from), (device, State::Active));
    assert_eq!(app.agent().state(), State::Decommissioned);
}

/// Collects what the agent sends, as a transport that delivers messages itself would take it.
#[derive(Default)]
struct Sent(Vec<(MessageKind, Vec<u8>)>);

impl Outbound for Sent {
    type Error = core::convert::Infallible;
    fn send(
        &mut self,
        kind: MessageKind,
        _qos: QoS,
        payload: &[u8],
        _now_ms: u64,
    ) -> Result<(), Self::Error> {
        self.0.push((kind, payload.to_vec()));
        Ok(())
    }
}

#[test]
fn the_lab_without_a_link_registers_and_obeys_a_command_fed_envelope_by_envelope() {
    let clock = ManualClock::new(0);
    let Backend {
        device,
        admin,
        mut server,
        session,
    } = backend();
    let mut lab = Lab::new(device, 1, SECRET).unwrap();
    let mut hw = FakeHardware {
        clock: &clock,
        led: Vec::new(),
    };
    let mut sent = Sent::default();
    lab.start(0, &mut sent).unwrap();
    let mut acks = Vec::new();
    let mut commanded = false;
    for _ in 0..10_000 {
        let now = clock.now_ms();
        lab.poll(&mut hw, &mut sent);
        // Every message reaches the backend once and every reply comes back once, as MQTT
        // QoS 1 with deduplication delivers them.
        let mut downlink = Vec::new();
        for (kind, payload) in sent.0.drain(..) {
            let env = EnvelopeRef {
                device,
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind,
                payload: &payload,
            };
            if let Handled::Replies(replies) = server.handle(&session, &env, now).unwrap() {
                downlink.extend(replies.iter().map(|r| (r.kind(), r.to_vec())));
            }
            if kind == MessageKind::CommandAck {
                acks.push(codec::decode::<CommandAck>(&payload).unwrap());
            }
        }
        let active = server.fleet().device(&admin, &device).map(|r| r.state) == Ok(State::Active);
        if active && !commanded {
            let blink = Command::new(
                9,
                now,
                Command::NEVER_EXPIRES,
                CommandKind::BlinkLed {
                    times: 1,
                    period_ms: 100,
                },
            );
            downlink.push((MessageKind::Command, codec::encode_to_vec(&blink).unwrap()));
            commanded = true;
        }
        for (kind, payload) in downlink {
            let env = EnvelopeRef {
                device,
                seq: 0,
                id: MessageId(0),
                qos: QoS::AtLeastOnce,
                kind,
                payload: &payload,
            };
            lab.handle(&mut hw, &env, &mut sent).unwrap();
        }
        clock.advance(10);
    }
    assert!(commanded, "the backend saw the device active");
    assert_eq!(lab.agent().state(), State::Active);
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(
        (acks[0].command_id, &acks[0].outcome),
        (9, &AckOutcome::Accepted)
    );
    // One blink: on, then off, driven by `poll`.
    assert_eq!(hw.led, [true, false]);
}
