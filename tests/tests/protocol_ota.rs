//! Firmware rollouts over the protocol, wire only: the backend publishes an image and
//! starts a staged rollout; each device's agent receives an `OtaJob`, pulls the image in
//! blocks over a link that loses a fifth of them (one device's link goes down in the middle
//! of its transfer, another loses power in the middle of its transfer; both resume where
//! they stopped), verifies it, restarts into it on
//! trial and confirms it; progress flows back into the rollout. A second image fails its
//! trial boot on the canary: the rollout halts, the canary rolls back, and no other device
//! is asked to install it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_agent::{Board, Firmware, LabAgent, Outbound, SensorSample};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS, TenantId};
use iot_fleet::rollout::RolloutError;
use iot_fleet::{
    DeviceServer, Fleet, FleetError, Handled, ManufacturingRecord, Principal, Role, RolloutConfig,
    RolloutStatus, Scope, ServerError, Session,
};
use iot_lifecycle::command::CommandHandler;
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::mem_flash::MemFlash;
use iot_lifecycle::ota::{BootDecision, OtaState, OtaUpdater, SlotLayout};
use iot_lifecycle::registration::DeviceSecret;
use iot_protocol::OtaBlockRequest;

type Flash = MemFlash<{ 8192 + 256 }, 256, 4>;
const LAYOUT: SlotLayout = SlotLayout {
    slot_a: 0,
    slot_b: 4096,
    slot_size: 4096,
    boot_state: 8192,
};
const DEVICES: usize = 20;
const STEP_MS: u64 = 100;
const GOOD: u32 = 2;
/// The device whose link goes down mid-transfer, and the one that loses power mid-transfer.
const LINK_CUT: usize = 3;
const POWER_CUT: usize = 7;
const BAD: u32 = 3;

struct Lab {
    ota: Option<OtaUpdater<Flash>>,
    restart: bool,
}

impl CommandHandler for Lab {}

impl Board for Lab {
    fn sample(&mut self, _now_ms: u64) -> SensorSample {
        SensorSample {
            temperature_c: Some(21.0),
            battery_percent: Some(90),
            battery_mv: Some(3_900),
            ..SensorSample::default()
        }
    }
    fn firmware(&mut self) -> Option<&mut dyn Firmware> {
        self.ota.as_mut().map(|o| o as &mut dyn Firmware)
    }
    fn restart(&mut self) {
        self.restart = true;
    }
}

#[derive(Default)]
struct Wire(Vec<(MessageKind, Vec<u8>)>);

impl Outbound for Wire {
    type Error = ();
    fn send(&mut self, kind: MessageKind, _: QoS, payload: &[u8], _: u64) -> Result<(), ()> {
        self.0.push((kind, payload.to_vec()));
        Ok(())
    }
}

struct Device {
    id: DeviceId,
    session: Session,
    agent: LabAgent,
    board: Lab,
    out: Wire,
    inbox: Vec<(MessageKind, Vec<u8>)>,
    down_until: u64,
    interrupted: bool,
    /// Requests sent before the interruption, and the offset the transfer had reached.
    resume_from: Option<(usize, u32)>,
    power_cut: bool,
    /// Offsets of every block request that reached the backend.
    requests: Vec<(u32, u32)>,
    jobs: Vec<u32>,
    restarts: u32,
}

fn secret(i: usize) -> [u8; 32] {
    [u8::try_from(i).unwrap().wrapping_add(1); 32]
}

fn config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    }
}

fn new_agent(id: DeviceId, i: usize, version: u32) -> LabAgent {
    LabAgent::new(id, version, DeviceSecret::from_bytes(secret(i)), config()).unwrap()
}

/// The running version an updater's boot decision implies.
fn running_version(ota: &OtaUpdater<Flash>, decision: BootDecision) -> u32 {
    match decision {
        BootDecision::Trial(_) => ota.boot_state().candidate_version,
        _ => ota.boot_state().active_version.max(1),
    }
}

struct World {
    server: DeviceServer,
    admin: Principal,
    devices: Vec<Device>,
    /// A deterministic loss pattern for blocks and block requests.
    loss: u64,
    errors: Vec<String>,
}

impl World {
    fn new() -> Self {
        let tenant = TenantId::new("lab").unwrap();
        let admin = Principal::new("ops", tenant, Scope::root(), Role::Admin);
        let mut fleet = Fleet::default();
        // The lab device class: the backend resolves its shadow with the agent's own table.
        fleet.register_schema(iot_agent::AGENT_SCHEMA);
        let mut devices = Vec::new();
        let mut records = Vec::new();
        for i in 0..DEVICES {
            let id = DeviceId::new(&format!("th-{i:02}")).unwrap();
            records.push(ManufacturingRecord {
                device_id: id,
                secret: secret(i),
                sku: "TH".into(),
                serial: u64::try_from(i).unwrap(),
            });
            let mut ota = OtaUpdater::new(Flash::new(), LAYOUT).unwrap();
            let decision = ota.boot_check().unwrap();
            let version = running_version(&ota, decision);
            devices.push(Device {
                id,
                session: Session::authenticated(id, u64::try_from(i).unwrap()),
                agent: new_agent(id, i, version),
                board: Lab {
                    ota: Some(ota),
                    restart: false,
                },
                out: Wire::default(),
                inbox: Vec::new(),
                down_until: 0,
                interrupted: false,
                resume_from: None,
                power_cut: false,
                requests: Vec::new(),
                jobs: Vec::new(),
                restarts: 0,
            });
        }
        fleet
            .import_manufacturing(&admin, &"site".parse().unwrap(), records, 0)
            .unwrap();
        let server = DeviceServer::with_os_rng(fleet, config(), NodeId(1)).with_ota_jitter(5_000);
        let mut world = Self {
            server,
            admin,
            devices,
            loss: 1,
            errors: Vec::new(),
        };
        for d in &mut world.devices {
            d.agent.start(0, &mut d.out).unwrap();
        }
        world
    }

    fn lost(&mut self, kind: MessageKind) -> bool {
        if !matches!(kind, MessageKind::OtaBlock | MessageKind::OtaBlockRequest) {
            return false;
        }
        self.loss = self
            .loss
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.loss >> 33).is_multiple_of(5)
    }

    fn reboot(&mut self, i: usize, now: u64) {
        let d = &mut self.devices[i];
        let flash = d.board.ota.take().unwrap().into_flash();
        let mut ota = OtaUpdater::new(flash, LAYOUT).unwrap();
        let mut decision = ota.boot_check().unwrap();
        if matches!(decision, BootDecision::Trial(_)) && ota.boot_state().candidate_version == BAD {
            // The bad image crashes during its trial boot: the next boot rolls it back.
            let flash = ota.into_flash();
            ota = OtaUpdater::new(flash, LAYOUT).unwrap();
            decision = ota.boot_check().unwrap();
        }
        let version = running_version(&ota, decision);
        d.board = Lab {
            ota: Some(ota),
            restart: false,
        };
        d.agent = new_agent(d.id, i, version);
        d.out.0.clear();
        d.inbox.clear();
        d.restarts += 1;
        d.agent.start(now, &mut d.out).unwrap();
    }

    fn step(&mut self, now: u64, interrupt: Option<usize>) {
        if interrupt.is_some() && !self.devices[POWER_CUT].power_cut {
            let d = &mut self.devices[POWER_CUT];
            let ota = d.board.ota.as_ref().unwrap();
            if ota.state() == OtaState::Downloading && ota.next_offset() >= 768 {
                // Power cut in the middle of the transfer: RAM is lost, flash is kept.
                let offset = ota.next_offset();
                d.power_cut = true;
                d.resume_from = Some((d.requests.len(), offset));
                self.reboot(POWER_CUT, now);
                self.devices[POWER_CUT].restarts = 0;
            }
        }
        for (id, reply) in self.server.poll_ota(now) {
            let d = self.devices.iter_mut().find(|d| d.id == id).unwrap();
            if let iot_protocol::Downlink::OtaJob(job) = &reply {
                d.jobs.push(job.version);
            }
            d.inbox.push((reply.kind(), reply.to_vec()));
        }
        for i in 0..self.devices.len() {
            if Some(i) == interrupt && !self.devices[i].interrupted {
                let d = &mut self.devices[i];
                let offset = d.board.ota.as_ref().unwrap().next_offset();
                if d.board.ota.as_ref().unwrap().state() == OtaState::Downloading && offset >= 1024
                {
                    // The link goes down for 30 s in the middle of the transfer.
                    d.down_until = now + 30_000;
                    d.interrupted = true;
                    d.resume_from = Some((d.requests.len(), offset));
                }
            }
            let down = self.devices[i].down_until > now;
            let sent = std::mem::take(&mut self.devices[i].out.0);
            for (kind, payload) in sent {
                if down || self.lost(kind) {
                    continue;
                }
                let d = &mut self.devices[i];
                if kind == MessageKind::OtaBlockRequest {
                    let request: OtaBlockRequest = iot_core::codec::decode(&payload).unwrap();
                    d.requests.push((request.version, request.offset));
                }
                let env = EnvelopeRef {
                    device: d.id,
                    seq: 0,
                    id: MessageId(0),
                    qos: QoS::AtLeastOnce,
                    kind,
                    payload: &payload,
                };
                let session = d.session;
                match self.server.handle(&session, &env, now) {
                    Ok(Handled::Replies(replies)) => {
                        for reply in replies {
                            if !self.lost(reply.kind()) {
                                self.devices[i].inbox.push((reply.kind(), reply.to_vec()));
                            }
                        }
                    }
                    Ok(Handled::Unhandled) => {}
                    Err(e) => self
                        .errors
                        .push(format!("{kind:?} from {}: {e}", self.devices[i].id)),
                }
            }
            let d = &mut self.devices[i];
            if down {
                d.inbox.clear();
            }
            for (kind, payload) in std::mem::take(&mut d.inbox) {
                let env = EnvelopeRef {
                    device: DeviceId::new("backend").unwrap(),
                    seq: 0,
                    id: MessageId(0),
                    qos: QoS::AtLeastOnce,
                    kind,
                    payload: &payload,
                };
                let _ = d.agent.handle(now, &env, &mut d.board, &mut d.out);
            }
            d.agent.poll(now, &mut d.board, &mut d.out);
            if d.board.restart {
                self.reboot(i, now);
            }
        }
    }

    fn run(&mut self, from: u64, to: u64, interrupt: Option<usize>) {
        let mut now = from;
        while now < to {
            self.step(now, interrupt);
            now += STEP_MS;
        }
    }

    fn active_version(&self, i: usize) -> u32 {
        self.devices[i]
            .board
            .ota
            .as_ref()
            .unwrap()
            .boot_state()
            .active_version
    }
}

#[test]
fn a_rollout_delivers_an_image_in_blocks_and_a_bad_image_halts_with_rollbacks() {
    let mut w = World::new();
    w.run(0, 20_000, None);
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let site: Scope = "site".parse().unwrap();

    // An empty scope is not a rollout.
    let image: Vec<u8> = (0..1_500u32).map(|i| (i * 7 % 251) as u8).collect();
    let job = w.server.publish_firmware(GOOD, image).unwrap();
    assert_eq!(job.size, 1_500);
    let nowhere: Scope = "site/empty".parse().unwrap();
    assert_eq!(
        w.server.start_ota(
            &w.admin,
            &nowhere,
            GOOD,
            Some(1),
            RolloutConfig::default(),
            20_000
        ),
        Err(ServerError::Fleet(FleetError::Rollout(
            RolloutError::NoTargets
        )))
    );
    // An unpublished image cannot be rolled out.
    assert_eq!(
        w.server.start_ota(
            &w.admin,
            &site,
            9,
            Some(1),
            RolloutConfig::default(),
            20_000
        ),
        Err(ServerError::UnknownImage(9))
    );

    let stages = RolloutConfig {
        stages_bp: vec![500, 10_000],
        max_failure_bp: 500,
        report_timeout_ms: 600_000,
        ..RolloutConfig::default()
    };
    let good = w
        .server
        .start_ota(&w.admin, &site, GOOD, Some(1), stages.clone(), 20_000)
        .unwrap();
    w.run(20_000, 200_000, Some(LINK_CUT));
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let rollout = w.server.fleet().rollout(&w.admin, good).unwrap();
    assert_eq!(rollout.rollout.status(), RolloutStatus::Completed);
    for i in 0..DEVICES {
        let d = &w.devices[i];
        assert_eq!(w.active_version(i), GOOD, "{}", d.id);
        // One job each; the device that lost power registered again and was sent it again.
        let expected: &[u32] = if i == POWER_CUT {
            &[GOOD, GOOD]
        } else {
            &[GOOD]
        };
        assert_eq!(d.jobs, expected, "{}", d.id);
        assert_eq!(d.restarts, 1, "{}", d.id);
        let record = w.server.fleet().device(&w.admin, &d.id).unwrap();
        assert_eq!(record.firmware.as_deref(), Some("2"), "{}", d.id);
    }
    // Blocks were lost and asked for again; the interrupted transfer resumed where it
    // stopped instead of starting over.
    let repeats = |d: &Device| {
        let mut seen = std::collections::BTreeSet::new();
        d.requests.iter().filter(|r| !seen.insert(**r)).count()
    };
    assert!(w.devices.iter().map(repeats).sum::<usize>() > 0);
    let resumed = &w.devices[LINK_CUT];
    assert!(resumed.interrupted);
    let (index, offset) = resumed.resume_from.unwrap();
    assert!(offset >= 1_024);
    assert!(resumed.requests[index..].iter().all(|(_, o)| *o >= offset));
    assert!(
        resumed.requests.len() > index,
        "the resumed device asked again"
    );
    // After the power cut the download went on from what its flash held, not from 0.
    let rebooted = &w.devices[POWER_CUT];
    assert!(rebooted.power_cut);
    let (index, offset) = rebooted.resume_from.unwrap();
    assert!(offset >= 768);
    let after: Vec<u32> = rebooted.requests[index..].iter().map(|(_, o)| *o).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|o| *o + 4 > offset),
        "{after:?} after {offset}"
    );

    // The bad image fails its trial boot on the canary: the rollout halts and nobody else
    // is asked to install it.
    let bad_image: Vec<u8> = (0..900u32).map(|i| (i * 13 % 241) as u8).collect();
    w.server.publish_firmware(BAD, bad_image).unwrap();
    let bad = w
        .server
        .start_ota(&w.admin, &site, BAD, Some(GOOD), stages, 200_000)
        .unwrap();
    w.run(200_000, 400_000, None);
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    let rollout = w.server.fleet().rollout(&w.admin, bad).unwrap();
    assert!(
        matches!(rollout.rollout.status(), RolloutStatus::Halted { .. }),
        "{:?}",
        rollout.rollout.status()
    );
    let asked: Vec<usize> = (0..DEVICES)
        .filter(|&i| w.devices[i].jobs.contains(&BAD))
        .collect();
    assert_eq!(asked.len(), 1, "only the canary was asked: {asked:?}");
    for i in 0..DEVICES {
        assert_eq!(
            w.active_version(i),
            GOOD,
            "{} keeps the good image",
            w.devices[i].id
        );
    }
    let canary = &w.devices[asked[0]];
    let progress = canary.board.ota.as_ref().unwrap().progress();
    assert_eq!(progress.state, OtaState::RolledBack);
    assert_eq!(
        w.server
            .fleet()
            .device(&w.admin, &canary.id)
            .unwrap()
            .firmware
            .as_deref(),
        Some("2")
    );
}

#[test]
fn a_device_without_an_updater_reports_the_job_abandoned() {
    let mut w = World::new();
    w.run(0, 20_000, None);
    for d in &mut w.devices {
        d.board.ota = None;
    }
    w.server.publish_firmware(GOOD, vec![1; 600]).unwrap();
    let all = RolloutConfig {
        stages_bp: vec![10_000],
        max_failure_bp: 10_000,
        report_timeout_ms: 600_000,
        ..RolloutConfig::default()
    };
    let r = w
        .server
        .start_ota(
            &w.admin,
            &"site".parse().unwrap(),
            GOOD,
            Some(1),
            all,
            20_000,
        )
        .unwrap();
    w.run(20_000, 60_000, None);
    let rollout = w.server.fleet().rollout(&w.admin, r).unwrap();
    assert_eq!(rollout.rollout.stage_tally(0).failures(), DEVICES);
}
