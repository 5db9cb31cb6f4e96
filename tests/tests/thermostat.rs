//! A product that is not the lab: a thermostat written only against the public API of
//! `iot-agent` (its application code, between the markers below, is under 80 lines), run
//! over a lossy, duplicating and reordering simulated link against the fleet's
//! `DeviceServer`. It registers, takes a desired setpoint and reports it back, refuses one
//! it cannot take, and executes a burst of 32 commands exactly once each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

// ---- application code (the whole product) ---------------------------------------------
use iot_agent::iot_lifecycle::command::{CommandHandler, HandlerResult, RejectReason};
use iot_agent::{App, Refusal};
use iot_core::telemetry::Measurement;

iot_agent::iot_shadow::shadow_state! {
    /// What the thermostat keeps in its shadow.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Thermo {
        /// Heating enabled.
        pub on: bool => ON, "on", LastWriterWins;
        /// Reporting interval: the agent's telemetry interval, so the operator sets both.
        pub interval_ms: u32 => INTERVAL, "config.telemetry_interval_ms", LastWriterWins;
        /// Target temperature in degrees Celsius.
        pub setpoint: f32 => SETPOINT, "setpoint", LastWriterWins;
    }
}

/// The custom command: boost the heater for `args[0]` minutes.
pub const BOOST: u16 = 1;
/// The custom reading: heater duty in percent.
pub const DUTY: u16 = 7;

/// The thermostat's hardware, simulated.
#[derive(Debug, Default)]
pub struct Thermostat {
    pub room_c: f32,
    pub heater: bool,
    /// Every setpoint the hardware was given.
    pub setpoints: Vec<f32>,
    /// The argument of every boost executed.
    pub boosts: Vec<u8>,
}

impl CommandHandler for Thermostat {
    fn custom(&mut self, code: u16, args: &[u8]) -> HandlerResult {
        match (code, args) {
            (BOOST, [minutes, ..]) => {
                self.boosts.push(*minutes);
                self.heater = true;
                Ok(None)
            }
            _ => Err(RejectReason::Unsupported),
        }
    }
}

impl App for Thermostat {
    type State = Thermo;

    fn readings(&mut self, _now_ms: u64, readings: &mut heapless::VecView<Measurement>) {
        let duty = if self.heater { 100.0 } else { 0.0 };
        let _ = readings.push(Measurement::Temperature {
            celsius: self.room_c,
        });
        let _ = readings.push(Measurement::Custom {
            id: DUTY,
            value: duty,
        });
    }

    fn apply(&mut self, state: &Thermo, previous: &Thermo) {
        if state.setpoint != previous.setpoint {
            self.setpoints.push(state.setpoint);
        }
        self.heater = state.on && self.room_c < state.setpoint;
    }

    fn check(&self, state: &Thermo) -> Result<(), Refusal> {
        if (5.0..=30.0).contains(&state.setpoint) {
            Ok(())
        } else {
            Err(Refusal::Range)
        }
    }
}
// ---- end of application code ------------------------------------------------------------

use embassy_futures::block_on;
use iot_agent::runner::Runner;
use iot_agent::storage::{FlashStorage, OUTBOX_RECORD, Storage};
use iot_agent::{Agent, RegistrationPhase};
use iot_core::telemetry::Telemetry;
use iot_core::time::{Clock, ManualClock};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId, codec};
use iot_fleet::{
    DeviceServer, Fleet, Handled, ManufacturingRecord, Principal, Role, Scope, Session,
};
use iot_lifecycle::State;
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::mem_flash::MemFlash;
use iot_lifecycle::registration::DeviceSecret;
use iot_shadow::Value;
use iot_transport::SplitMix64;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::sim::{SimConfig, SimLink, SimNetwork};

/// Eight 4 KiB pages of an in-memory flash; records (the agent's, the outbox image) up to
/// 4 KiB.
type Flash = FlashStorage<MemFlash<32768, 4096, 4>, 4096>;

const SECRET: [u8; 32] = [0x77; 32];

/// 8 lifecycle records, 64 remembered commands, 8 shadow leaves, 512-byte payloads, 2
/// quantities.
type ThermoAgent = Agent<Thermo, 8, 64, 8, 512, 2>;
type Link<'a> = SimLink<'a, &'a ManualClock, 64, 700>;

fn initial() -> Thermo {
    Thermo {
        on: true,
        interval_ms: 30_000,
        setpoint: 18.0,
    }
}

#[test]
fn a_thermostat_registers_takes_its_setpoint_runs_a_burst_exactly_once_and_reboots_over_a_bad_link()
{
    let clock = ManualClock::new(0);
    let config = SimConfig::ideal(20)
        .with_loss(150, 3)
        .with_duplication(100)
        .with_jitter(40);
    let net: SimNetwork<_, 64, 700> = SimNetwork::new(&clock, config, 11);
    let (device_link, gateway_link) = net.endpoints();
    let device = DeviceId::new("thermo-1").unwrap();
    let tenant = TenantId::new("home").unwrap();
    let admin = Principal::new("op", tenant, Scope::root(), Role::Admin);

    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::iot_shadow::typed::FieldTable::of::<Thermo>());
    let record = ManufacturingRecord {
        device_id: device,
        secret: SECRET,
        sku: "THERMO".into(),
        serial: 1,
    };
    fleet
        .import_manufacturing(&admin, &"intake".parse().unwrap(), vec![record], 0)
        .unwrap();
    let mut server = DeviceServer::with_os_rng(
        fleet,
        DeviceConfig {
            version: 1,
            ..DeviceConfig::DEFAULT
        },
        NodeId(1),
    );
    let session = Session::authenticated(device, 1);

    let mut agent = ThermoAgent::with_state(
        device,
        1,
        DeviceSecret::from_bytes(SECRET),
        DeviceConfig::DEFAULT,
        initial(),
    )
    .unwrap();
    let mut app = Thermostat {
        room_c: 19.0,
        ..Thermostat::default()
    };
    let mut endpoint: ReliableEndpoint<Link<'_>, _, 48, 512, 64> = ReliableEndpoint::new(
        device_link,
        device,
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(150, 2_000),
        SplitMix64::new(3),
    );
    let mut runner: Runner<4, 512> = Runner::new();
    let mut flash = Flash::new(MemFlash::new(), 0..32768).unwrap();
    let mut scratch = [0u8; 4096];
    let mut boosts_before_reboot = Vec::new();
    let mut rebooted = false;
    let mut refusals = (0, None);
    let mut inbox = (0, 0);
    let mut gateway: ReliableEndpoint<Link<'_>, _, 64, 512, 64> = ReliableEndpoint::new(
        gateway_link,
        DeviceId::new("gw").unwrap(),
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(150, 2_000),
        SplitMix64::new(4),
    );
    let push = |gateway: &mut ReliableEndpoint<Link<'_>, _, 64, 512, 64>,
                kind: MessageKind,
                bytes: &[u8],
                now: u64| {
        gateway
            .enqueue(kind, QoS::ExactlyOnce, Priority::High, bytes, now)
            .unwrap();
    };

    agent
        .start(
            0,
            &mut iot_agent::runner::EndpointOutbound::new(&mut endpoint),
        )
        .unwrap();
    let mut acks: Vec<CommandAck> = Vec::new();
    let mut duties = Vec::new();
    let (mut desired_sent, mut refused_sent, mut burst_sent) = (false, 0, false);
    for _ in 0..40_000 {
        let now = clock.now_ms();
        block_on(runner.step(now, &mut agent, &mut endpoint, &mut app)).unwrap();
        runner
            .save(&mut agent, &endpoint, &mut flash, &mut scratch)
            .unwrap();
        if !rebooted && burst_sent && app.boosts.len() >= 12 {
            // Power off and on in the middle of the burst: RAM, the endpoint and the
            // hardware start over; only the flash survives, with the acks still queued.
            assert!(app.boosts.len() < 32, "{:?}", app.boosts);
            assert!(endpoint.outbox().iter().any(|e| {
                EnvelopeRef::decode(&e.data).is_ok_and(|env| env.kind == MessageKind::CommandAck)
            }));
            boosts_before_reboot = std::mem::take(&mut app.boosts);
            let version = agent.shadow().last_version();
            assert!(version > 0);
            refusals = (agent.stats().desired_refused, agent.last_refusal());
            inbox = (runner.dropped(), endpoint.stats().refused);
            app = Thermostat {
                room_c: 19.0,
                ..Thermostat::default()
            };
            agent = ThermoAgent::with_state(
                device,
                1,
                DeviceSecret::from_bytes(SECRET),
                DeviceConfig::DEFAULT,
                initial(),
            )
            .unwrap();
            let (link, _) = net.endpoints();
            endpoint = ReliableEndpoint::new(
                link,
                device,
                OverflowPolicy::RejectNewest,
                BackoffPolicy::new(150, 2_000),
                SplitMix64::new(5),
            );
            runner = Runner::new();
            let restored = runner.restore(
                now,
                &mut agent,
                &mut endpoint,
                &mut app,
                &mut flash,
                &mut scratch,
            );
            assert!(restored.unwrap());
            // The acks queued before the cut are queued again.
            assert!(!endpoint.outbox().is_empty());
            // The desired setpoint is back on the hardware at once, before any message.
            assert_eq!(app.setpoints, [21.5]);
            assert_eq!(agent.state(), State::Active);
            // The shadow version is back: older notifications in flight are not applied.
            assert_eq!(agent.shadow().last_version(), version);
            endpoint = endpoint.with_next_id(agent.first_message_id());
            runner
                .save(&mut agent, &endpoint, &mut flash, &mut scratch)
                .unwrap();
            rebooted = true;
        }
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
                    push(&mut gateway, reply.kind(), &reply.to_vec(), now);
                }
            }
            match kind {
                MessageKind::CommandAck => acks.push(codec::decode(&payload).unwrap()),
                MessageKind::Telemetry => {
                    let batch: Telemetry<16> = codec::decode(&payload).unwrap();
                    for r in &batch.readings {
                        if let Measurement::Custom { id, value } = r.measurement {
                            duties.push((id, value));
                        }
                    }
                }
                _ => {}
            }
        }
        let active = server.fleet().device(&admin, &device).map(|r| r.state) == Ok(State::Active);
        if active && !desired_sent && now > 40_000 {
            // 21.5 is exact in f32; the device takes it.
            let delta = server
                .set_desired(&admin, &device, "setpoint", Value::from(21.5f64), now)
                .unwrap()
                .unwrap();
            push(&mut gateway, delta.kind(), &delta.to_vec(), now);
            desired_sent = true;
        }
        // 21.3 is not exact in f32 (the type rule), 40.0 is out of range (App::check).
        for (at, value) in [(60_000, 21.3f64), (70_000, 40.0)] {
            if desired_sent && refused_sent < at && now > at {
                let delta = server
                    .set_desired(&admin, &device, "setpoint", Value::from(value), now)
                    .unwrap()
                    .unwrap();
                push(&mut gateway, delta.kind(), &delta.to_vec(), now);
                refused_sent = at;
            }
        }
        if refused_sent == 70_000 && !burst_sent && now > 80_000 {
            for i in 0..32u8 {
                let boost = Command::new(
                    100 + u32::from(i),
                    now,
                    Command::NEVER_EXPIRES,
                    CommandKind::Custom {
                        code: BOOST,
                        args: heapless::Vec::from_slice(&[i]).unwrap(),
                    },
                );
                push(
                    &mut gateway,
                    MessageKind::Command,
                    &codec::encode_to_vec(&boost).unwrap(),
                    now,
                );
            }
            burst_sent = true;
        }
        clock.advance(10);
    }
    assert!(desired_sent && refused_sent == 70_000 && burst_sent && rebooted);
    // Resumed without registering again, its message ids in a new epoch.
    assert_eq!(agent.stats().registration_requests, 0);
    assert!(agent.first_message_id() > 1 << 16);
    assert_eq!(agent.registration(), RegistrationPhase::Registered);
    assert_eq!(agent.state(), State::Active);
    assert_eq!(
        server.fleet().device(&admin, &device).map(|r| r.state),
        Ok(State::Active)
    );
    // The desired setpoint reached the hardware once and came back as reported.
    assert_eq!(app.setpoints, [21.5]);
    assert_eq!(agent.shadow().state().setpoint, 21.5);
    assert_eq!(
        server.reported(&admin, &device, "setpoint"),
        Some(Value::from(21.5f64))
    );
    // Both refusals were visible: counted, and the backend's desired value cleared by the
    // device (no delta left), its reported value the one in force.
    assert!(refusals.0 >= 2, "{refusals:?}");
    assert_eq!(refusals.1, Some(("setpoint", iot_agent::Refusal::Range)));
    // The backend recorded the refusal: the value declined (the last one, 40) and the
    // value the device kept.
    let declined = server.declined(&admin, &device);
    assert_eq!(declined.len(), 1, "{declined:?}");
    assert_eq!(declined[0].0.as_str(), "setpoint");
    assert_eq!(declined[0].1.value, Value::from(40.0f64));
    assert_eq!(declined[0].1.reported, Some(Value::from(21.5f64)));
    let shadow = server.fleet().shadow(&admin, &device).unwrap().unwrap();
    let path = iot_shadow::Path::new("setpoint").unwrap();
    let desired = shadow.value(iot_shadow::Section::Desired, &path);
    assert!(desired.is_none_or(Value::is_null), "{desired:?}");
    // 32 boosts under loss, duplication and reordering: each executed once, acked once.
    let mut boosts = boosts_before_reboot.clone();
    boosts.extend(&app.boosts);
    boosts.sort_unstable();
    assert_eq!(boosts, (0..32).collect::<Vec<u8>>());
    let mut acked: Vec<u32> = acks.iter().map(|a| a.command_id).collect();
    acked.sort_unstable();
    acked.dedup();
    assert_eq!(acked, (100..132).collect::<Vec<u32>>());
    assert!(acks.iter().all(|a| a.outcome == AckOutcome::Accepted));
    // The custom reading reached the backend.
    assert!(duties.iter().any(|(id, _)| *id == DUTY));
    // The burst overflowed the runner's 4-message inbox: what it could not take was
    // refused unacknowledged and sent again, not lost.
    assert!(inbox.0 > 0);
    assert_eq!(inbox.1, inbox.0);
}

/// A flash that loses power at its `cut`-th erase or write: that operation is left half
/// done (half the bytes written, half the range erased) and everything after fails.
struct CutFlash {
    inner: MemFlash<4096, 1024, 4>,
    ops: u32,
    erases: u32,
    cut: u32,
}

#[derive(Debug)]
struct PowerCut;

impl embedded_storage::nor_flash::NorFlashError for PowerCut {
    fn kind(&self) -> embedded_storage::nor_flash::NorFlashErrorKind {
        embedded_storage::nor_flash::NorFlashErrorKind::Other
    }
}

impl embedded_storage::nor_flash::ErrorType for CutFlash {
    type Error = PowerCut;
}

impl embedded_storage::nor_flash::ReadNorFlash for CutFlash {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), PowerCut> {
        self.inner.read(offset, bytes).map_err(|_| PowerCut)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl embedded_storage::nor_flash::NorFlash for CutFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 1024;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), PowerCut> {
        self.ops += 1;
        self.erases += 1;
        if self.ops == self.cut {
            // Half erased: the start of the range is blank, the rest still old data.
            let half = from + (to - from) / 2;
            self.inner.bytes_mut()[from as usize..half as usize].fill(0xFF);
        }
        if self.ops >= self.cut {
            return Err(PowerCut);
        }
        self.inner.erase(from, to).map_err(|_| PowerCut)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), PowerCut> {
        self.ops += 1;
        if self.ops == self.cut {
            let half = bytes.len() / 2 / 4 * 4;
            self.inner.write(offset, &bytes[..half]).unwrap();
        }
        if self.ops >= self.cut {
            return Err(PowerCut);
        }
        self.inner.write(offset, bytes).map_err(|_| PowerCut)
    }
}

fn fresh_agent() -> ThermoAgent {
    ThermoAgent::with_state(
        DeviceId::new("thermo-cut").unwrap(),
        1,
        DeviceSecret::from_bytes(SECRET),
        DeviceConfig::DEFAULT,
        initial(),
    )
    .unwrap()
}

/// Power fails at every possible flash operation of a run of saves: each time, the
/// device boots from what the flash holds and restores either the last record saved
/// completely or the one being saved, never a torn or older one.
#[test]
fn a_power_cut_at_any_flash_operation_leaves_a_record_the_agent_restores() {
    // Each step saves a stand-in outbox image under its own key, then the agent's record,
    // as `Runner::save` does: a cut may land in either.
    let setpoints: Vec<f32> = (0..40).map(|i| 20.0 + i as f32 * 0.5).collect();
    let image = |i: usize| vec![i as u8; 24 + i % 7];
    let run = |cut: u32| {
        let flash = CutFlash {
            inner: MemFlash::new(),
            ops: 0,
            erases: 0,
            cut,
        };
        let mut storage: FlashStorage<CutFlash, 512> = FlashStorage::new(flash, 0..4096).unwrap();
        let (mut agent, mut app) = (fresh_agent(), Thermostat::default());
        let (mut saved, mut saved_image) = (None, None);
        for (i, setpoint) in setpoints.iter().enumerate() {
            if storage.save_item(OUTBOX_RECORD, &image(i)).is_err() {
                return (storage.into_inner(), saved, None, saved_image, Some(i));
            }
            saved_image = Some(i);
            agent
                .update(i as u64, &mut app, |s| s.setpoint = *setpoint)
                .unwrap();
            match agent.save(&mut storage) {
                Ok(_) => saved = Some(*setpoint),
                Err(_) => {
                    return (
                        storage.into_inner(),
                        saved,
                        Some(*setpoint),
                        saved_image,
                        None,
                    );
                }
            }
        }
        (storage.into_inner(), saved, None, saved_image, None)
    };
    // The operations of an uninterrupted run: at least one write a save, and enough saves
    // to fill the pages so that cuts also land on page erases.
    let (full, saved, _, _, _) = run(u32::MAX);
    let total = full.ops;
    assert_eq!(saved, setpoints.last().copied());
    assert!(total >= 2 * setpoints.len() as u32, "{total} operations");
    assert!(full.erases >= 2, "{} erases", full.erases);
    for cut in 1..=total {
        let (mut flash, saved, interrupted, saved_image, interrupted_image) = run(cut);
        flash.cut = u32::MAX;
        let mut storage: FlashStorage<CutFlash, 512> = FlashStorage::new(flash, 0..4096).unwrap();
        // The other record is the last complete one or the one being written.
        let mut buf = [0u8; 64];
        let got_image = storage
            .load_item(OUTBOX_RECORD, &mut buf)
            .unwrap()
            .map(<[u8]>::to_vec);
        let expected = |i: Option<usize>| i.map(image);
        assert!(
            got_image == expected(saved_image) || got_image == expected(interrupted_image),
            "cut {cut}: outbox image {got_image:?}"
        );
        let (mut agent, mut app) = (fresh_agent(), Thermostat::default());
        let mut out = Vec::<u8>::new();
        let restored = agent
            .restore(&mut storage, 0, &mut app, &mut Sink(&mut out))
            .unwrap();
        let got = agent.shadow().state().setpoint;
        match saved {
            None => assert!(!restored || Some(got) == interrupted, "cut {cut}"),
            Some(saved) => {
                assert!(restored, "cut {cut}");
                assert!(
                    got == saved || Some(got) == interrupted,
                    "cut {cut}: restored {got}, saved {saved}, interrupted {interrupted:?}"
                );
            }
        }
        // The restored state is on the hardware.
        if restored {
            assert_eq!(app.setpoints.last(), Some(&got));
        }
    }
}

struct Sink<'a>(&'a mut Vec<u8>);
impl iot_agent::Outbound for Sink<'_> {
    type Error = ();
    fn send(&mut self, _: MessageKind, _: QoS, payload: &[u8], _: u64) -> Result<(), ()> {
        self.0.extend_from_slice(payload);
        Ok(())
    }
}
