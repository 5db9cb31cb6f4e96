//! A simulated backend and a zero-latency harness for the agent tests. No sleeping: time is
//! a number the harness moves from one deadline to the next.
#![allow(dead_code)]

use iot_agent::{AgentState, Board, LabAgent, Outbound, SensorSample};
use iot_core::time::HybridLogicalClock;
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, QoS};
use iot_lifecycle::command::{CommandHandler, HandlerResult};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{
    DeviceSecret, RegistrationRejection, RegistrationResponse, verify_registration,
};
use iot_protocol::{Register, ShadowGet};
use iot_shadow::cbor;
use iot_shadow::typed::TypedPolicies;
use iot_shadow::{FixedStore, Origin, Path, Section, Shadow, Stamp, Update, Value, Write};

pub const SECRET: [u8; 32] = [0x5a; 32];
pub const MAC: [u8; 6] = [0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56];
pub const DAY_MS: u64 = 24 * 3_600 * 1_000;

pub fn device() -> DeviceId {
    DeviceId::from_mac(MAC)
}

pub fn new_agent() -> LabAgent {
    LabAgent::new(
        device(),
        7,
        DeviceSecret::from_bytes(SECRET),
        DeviceConfig::DEFAULT,
    )
    .unwrap()
}

/// One message the agent sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub at: u64,
    pub kind: MessageKind,
    pub qos: QoS,
    pub payload: Vec<u8>,
}

/// Records what the agent sends; can be told to refuse.
#[derive(Debug, Default)]
pub struct Recorder {
    pub sent: Vec<Sent>,
    pub refuse: bool,
}

impl Outbound for Recorder {
    type Error = ();
    fn send(&mut self, kind: MessageKind, qos: QoS, payload: &[u8], now_ms: u64) -> Result<(), ()> {
        if self.refuse {
            return Err(());
        }
        self.sent.push(Sent {
            at: now_ms,
            kind,
            qos,
            payload: payload.to_vec(),
        });
        Ok(())
    }
}

pub type SensorFn = Box<dyn FnMut(u64) -> SensorSample>;

/// Temperature and humidity stepping through 5 values, one per 30 s window: runs 30, 60
/// or 90 s apart always see a change beyond the 0.5 deadband.
pub fn varying(at: u64) -> SensorSample {
    let window = at / 30_000;
    SensorSample {
        temperature_c: Some(20.0 + (window % 5) as f32),
        humidity_percent: Some(40.0 + (window % 5) as f32),
        battery_percent: Some(80),
        battery_mv: Some(3_900),
        rssi_dbm: Some(-60),
        free_memory_bytes: Some(100_000),
        consecutive_send_failures: 0,
        error_count: 0,
    }
}

pub struct TestBoard {
    pub sensors: SensorFn,
    pub led: bool,
    pub blinks: u32,
    pub maintenance_calls: u32,
    pub wiped: bool,
}

impl TestBoard {
    pub fn new(sensors: SensorFn) -> Self {
        Self {
            sensors,
            led: false,
            blinks: 0,
            maintenance_calls: 0,
            wiped: false,
        }
    }
}

impl CommandHandler for TestBoard {
    fn blink_led(&mut self, times: u8, _period_ms: u16) -> HandlerResult {
        self.blinks += u32::from(times);
        Ok(None)
    }
    fn enter_maintenance(&mut self) -> HandlerResult {
        self.maintenance_calls += 1;
        Ok(None)
    }
    fn exit_maintenance(&mut self) -> HandlerResult {
        self.maintenance_calls += 1;
        Ok(None)
    }
}

impl Board for TestBoard {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        (self.sensors)(now_ms)
    }
    fn set_led(&mut self, on: bool) {
        self.led = on;
    }
    fn wipe_user_data(&mut self) -> bool {
        self.wiped = true;
        true
    }
}

pub type CloudShadow = Shadow<FixedStore<16>, TypedPolicies<AgentState>>;

/// The backend: registration with challenge, a cloud shadow, replies to `ShadowGet`.
pub struct Backend {
    pub secret: DeviceSecret,
    pub config: DeviceConfig,
    /// Registration requests to ignore before answering.
    pub silent_requests: u32,
    pub reject: Option<RegistrationRejection>,
    pub nonce_seq: u8,
    pub issued: Option<[u8; 16]>,
    pub registered: bool,
    pub cloud: CloudShadow,
    pub clock: HybridLogicalClock,
    /// Drop every shadow message from the device (to test lost acks).
    pub deaf_shadow: bool,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            secret: DeviceSecret::from_bytes(SECRET),
            config: DeviceConfig {
                version: 1,
                ..DeviceConfig::DEFAULT
            },
            silent_requests: 0,
            reject: None,
            nonce_seq: 0,
            issued: None,
            registered: false,
            cloud: Shadow::new(
                FixedStore::new(),
                TypedPolicies::new(),
                iot_shadow::Limits::DEFAULT,
            ),
            clock: HybridLogicalClock::new(NodeId(1), 60_000),
            deaf_shadow: false,
        }
    }
}

pub fn encode<T: minicbor::Encode<()> + minicbor::CborLen<()>>(value: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = iot_core::codec::encode_into(value, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

impl Backend {
    /// Answers one message from the device with zero or more messages.
    pub fn receive(
        &mut self,
        now: u64,
        kind: MessageKind,
        payload: &[u8],
    ) -> Vec<(MessageKind, Vec<u8>)> {
        let mut replies = Vec::new();
        match kind {
            MessageKind::RegistrationRequest => {
                let req = iot_core::codec::decode::<Register>(payload)
                    .unwrap()
                    .request;
                match req.answer {
                    None => {
                        if self.silent_requests > 0 {
                            self.silent_requests -= 1;
                            return replies;
                        }
                        let response = match self.reject {
                            Some(reason) => RegistrationResponse::Rejected(reason),
                            None => {
                                self.nonce_seq = self.nonce_seq.wrapping_add(1);
                                let nonce = [self.nonce_seq; 16];
                                self.issued = Some(nonce);
                                RegistrationResponse::Challenge(nonce)
                            }
                        };
                        replies.push((MessageKind::RegistrationResponse, encode(&response)));
                    }
                    Some(answer) => {
                        let ok = self.issued == Some(answer.nonce)
                            && verify_registration(
                                &self.secret,
                                &req.device,
                                &answer.nonce,
                                &answer.proof,
                            )
                            .is_ok();
                        self.issued = None;
                        let response = if ok {
                            self.registered = true;
                            RegistrationResponse::Accepted(self.config)
                        } else {
                            RegistrationResponse::Rejected(RegistrationRejection::InvalidProof)
                        };
                        replies.push((MessageKind::RegistrationResponse, encode(&response)));
                    }
                }
            }
            MessageKind::ShadowUpdate if !self.deaf_shadow => {
                let mut writes: heapless::Vec<Write, 16> = heapless::Vec::new();
                let header = cbor::decode_message(payload, &mut writes).unwrap();
                let update = Update {
                    client_token: header.client_token,
                    expected_version: header.version,
                    writes: &writes,
                };
                for w in writes.iter() {
                    let _ = self.clock.observe(w.stamp.hlc(), now);
                }
                let outcome = self.cloud.apply(&update, now).unwrap();
                let mut buf = vec![0u8; 1024];
                let n = self
                    .cloud
                    .encode_accepted(&update, &outcome, &mut buf)
                    .unwrap();
                buf.truncate(n);
                replies.push((MessageKind::ShadowAccepted, buf));
            }
            MessageKind::ShadowGet if !self.deaf_shadow => {
                let known = iot_core::codec::decode::<ShadowGet>(payload)
                    .unwrap()
                    .version;
                if self.cloud.version() > known {
                    replies.push((MessageKind::ShadowDocument, self.document()));
                }
            }
            _ => {}
        }
        replies
    }

    pub fn document(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let n = self.cloud.encode_document(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// The operator sets a desired value; returns the delta notification to push.
    pub fn set_desired(&mut self, path: &str, value: Value, now: u64) -> Option<Vec<u8>> {
        let path = Path::new(path).unwrap();
        let stamp = Stamp::new(
            self.clock.now(now).unwrap(),
            iot_shadow::Resolver::policy(self.cloud.resolver(), &path),
            Origin::Cloud,
        );
        self.cloud
            .apply(
                &Update::new(&[Write::new(Section::Desired, path, value, stamp)]),
                now,
            )
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = self.cloud.encode_delta(&mut buf).unwrap()?;
        buf.truncate(n);
        Some(buf)
    }

    pub fn reported(&self, path: &str) -> Option<Value> {
        self.cloud
            .value(Section::Reported, &Path::new(path).unwrap())
            .cloned()
    }
}

pub fn envelope(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
    EnvelopeRef {
        device: DeviceId::new("backend").unwrap(),
        seq: 0,
        id: MessageId(0),
        qos: QoS::AtLeastOnce,
        kind,
        payload,
    }
}

/// Agent + board + backend with zero latency.
pub struct Sim {
    pub agent: LabAgent,
    pub board: TestBoard,
    pub backend: Backend,
    pub out: Recorder,
    pub now: u64,
    delivered: usize,
    /// Every agent wake-up time, to check that deadlines never lie in the past.
    pub wakeups: u64,
}

impl Sim {
    pub fn new(sensors: SensorFn, backend: Backend) -> Self {
        Self {
            agent: new_agent(),
            board: TestBoard::new(sensors),
            backend,
            out: Recorder::default(),
            now: 0,
            delivered: 0,
            wakeups: 0,
        }
    }

    /// A registered agent at time 0 on the varying sensors.
    pub fn registered() -> Self {
        let mut sim = Self::new(Box::new(varying), Backend::default());
        sim.start();
        sim.settle();
        assert_eq!(sim.agent.state(), iot_lifecycle::State::Active);
        sim
    }

    pub fn start(&mut self) {
        self.agent.start(self.now, &mut self.out).unwrap();
    }

    /// Delivers a message from the backend to the agent now.
    pub fn inject(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
    ) -> Result<(), iot_agent::AgentError> {
        let env = envelope(kind, payload);
        let r = self
            .agent
            .handle(self.now, &env, &mut self.board, &mut self.out);
        self.settle();
        r
    }

    /// Exchanges messages and runs due duties at `now` until nothing more happens.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            let mut replies = Vec::new();
            while self.delivered < self.out.sent.len() {
                let m = self.out.sent[self.delivered].clone();
                self.delivered += 1;
                replies.extend(self.backend.receive(self.now, m.kind, &m.payload));
            }
            for (kind, payload) in &replies {
                let env = envelope(*kind, payload);
                let _ = self
                    .agent
                    .handle(self.now, &env, &mut self.board, &mut self.out);
            }
            let next = self.agent.poll(self.now, &mut self.board, &mut self.out);
            if let Some(t) = next {
                assert!(t > self.now, "deadline {t} not after now {}", self.now);
            }
            if replies.is_empty() && self.delivered == self.out.sent.len() {
                return;
            }
        }
        panic!("no quiescence at {}", self.now);
    }

    /// Runs until `end` (inclusive), waking only at the agent's deadlines.
    pub fn run_until(&mut self, end: u64) {
        self.settle();
        loop {
            match self.agent.next_deadline() {
                Some(t) if t <= end => {
                    assert!(t >= self.now, "deadline {t} in the past of {}", self.now);
                    self.now = t;
                    self.wakeups += 1;
                    self.settle();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }

    pub fn times(&self, kind: MessageKind) -> Vec<u64> {
        self.out
            .sent
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.at)
            .collect()
    }

    pub fn times_between(&self, kind: MessageKind, from: u64, to: u64) -> Vec<u64> {
        self.times(kind)
            .into_iter()
            .filter(|&t| t >= from && t <= to)
            .collect()
    }
}

pub fn gaps(times: &[u64]) -> Vec<u64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

pub fn all_spaced(times: &[u64], period: u64) -> bool {
    times.windows(2).all(|w| w[1] - w[0] == period)
}
