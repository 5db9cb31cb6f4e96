//! What the fuzz targets share: how a target reads its input, the small fleet the server
//! target drives, and the seed inputs committed under `fuzz/seeds/` (written by
//! `cargo run --example write_seeds`, so seeds are real encoded messages, never typed hex).
//!
//! Input formats, one per kind of target:
//! - protocol decoders (`protocol_uplink`, `protocol_downlink`): the first byte picks the
//!   envelope kind ([`kind_of`]); the rest is the payload.
//! - record streams (`server_handle`, `endpoint_receive`, `fragment_reassembler`): a
//!   sequence of [`Record`]s, each `[control, time step, length (u16, little-endian), bytes]`;
//!   a length past the end takes what is left.
//! - byte streams (`envelope`, `frame_decoder`): the input as it would arrive.

use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, NodeId, TenantId};
use iot_fleet::{DeviceServer, Fleet, ManufacturingRecord, Principal, Role, Scope, Session};
use iot_lifecycle::config::DeviceConfig;

/// The envelope kind the first input byte names: every kind is reachable.
pub fn kind_of(byte: u8) -> MessageKind {
    let all = MessageKind::ALL;
    all.get(usize::from(byte) % all.len())
        .copied()
        .unwrap_or(MessageKind::Heartbeat)
}

/// The byte [`kind_of`] maps to `kind`.
pub fn kind_byte(kind: MessageKind) -> u8 {
    MessageKind::ALL
        .iter()
        .position(|k| *k == kind)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

/// One step of a record stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What to do with the bytes (its meaning depends on the target).
    pub control: u8,
    /// How far the clock moves before this step (units depend on the target).
    pub step: u8,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// Splits `data` into records; a trailing header shorter than four bytes is ignored.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = Record<'_>> {
    core::iter::from_fn(move || {
        let (&[control, step, l0, l1], rest) = data.split_first_chunk::<4>()?;
        let len = usize::from(u16::from_le_bytes([l0, l1])).min(rest.len());
        let (bytes, rest) = rest.split_at(len);
        data = rest;
        Some(Record {
            control,
            step,
            bytes,
        })
    })
}

/// Appends one record to `out` (the inverse of [`records`]).
pub fn push_record(out: &mut Vec<u8>, control: u8, step: u8, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&[control, step]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or(bytes));
}

/// A random source that is not random: every nonce the fuzzed server issues is
/// [`FIXED_NONCE`], so seeds can carry a valid answer to its challenge. For fuzzing only.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedRng;

/// The nonce [`FixedRng`] makes the server issue.
pub const FIXED_NONCE: [u8; 16] = [0x5A; 16];

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([0x5A; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([0x5A; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0x5A);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0x5A);
        Ok(())
    }
}

impl rand_core::CryptoRng for FixedRng {}

/// The time the fuzzed fleet starts at (ten hours, in milliseconds).
pub const START_MS: u64 = 36_000_000;

/// The factory secret of `id` in the fuzzed fleet.
pub fn secret(id: &DeviceId) -> [u8; 32] {
    let mut s = [0x11u8; 32];
    for (slot, b) in s.iter_mut().zip(id.as_str().bytes()) {
        *slot ^= b;
    }
    s
}

/// An administrator of `tenant`.
pub fn admin(tenant: &str) -> Principal {
    let tenant = TenantId::new(tenant).expect("valid tenant");
    Principal::new("admin", tenant, Scope::root(), Role::Admin)
}

/// The devices of the fuzzed fleet: the session's device, another tenant's device, and an
/// identity the fleet has never seen.
pub struct Devices {
    /// The device the session is authenticated as (tenant `acme`).
    pub session: DeviceId,
    /// A registered device of tenant `globex`.
    pub other: DeviceId,
    /// An identity that is not in the fleet.
    pub stranger: DeviceId,
}

/// The fuzzed fleet's identities.
pub fn devices() -> Option<Devices> {
    Some(Devices {
        session: DeviceId::new("dev-a").ok()?,
        other: DeviceId::new("dev-b").ok()?,
        stranger: DeviceId::new("ghost").ok()?,
    })
}

/// A server for two tenants with one device each, neither registered yet.
pub fn server() -> Option<(DeviceServer, Devices)> {
    let devices = devices()?;
    let mut fleet = Fleet::default();
    for (tenant, id) in [("acme", devices.session), ("globex", devices.other)] {
        let record = ManufacturingRecord {
            device_id: id,
            secret: secret(&id),
            sku: "TH".into(),
            serial: 1,
        };
        fleet
            .import_manufacturing(&admin(tenant), &Scope::root(), vec![record], 0)
            .ok()?;
    }
    let config = DeviceConfig {
        version: 1,
        ..DeviceConfig::DEFAULT
    };
    let server = DeviceServer::new(fleet, config, NodeId(1), FixedRng);
    Some((server, devices))
}

/// Everything of the fleet a device message could change and a reader can see: the
/// fleet's own Debug form (audit chain, rollouts, retired devices, shadows), each device's
/// record as its tenant's administrator sees it (or why it cannot), and its shadow's
/// canonical bytes. (The registry's Debug form only counts identities, and outstanding
/// registration challenges have no reader, so they are not part of it.)
pub fn snapshot(server: &DeviceServer, devices: &Devices) -> String {
    let fleet = server.fleet();
    let mut out = format!("{fleet:?}");
    for (tenant, id) in [
        ("acme", devices.session),
        ("globex", devices.other),
        ("acme", devices.stranger),
    ] {
        out.push_str(&format!(
            "\n{id}: {:?} {:?}",
            fleet.device(&admin(tenant), &id),
            fleet.device_shadow(&id).map(|s| s.to_cbor()),
        ));
    }
    out
}

/// An envelope for `message` from `device`.
pub fn envelope<'a>(device: DeviceId, kind: MessageKind, payload: &'a [u8]) -> EnvelopeRef<'a> {
    EnvelopeRef {
        device,
        seq: 0,
        id: MessageId(0),
        qos: iot_protocol::qos(kind),
        kind,
        payload,
    }
}

/// The session of the fuzzed device (`alternate` picks a second session of the same
/// identity, as a second connection would have).
pub fn session(devices: &Devices, alternate: bool) -> Session {
    Session::authenticated(devices.session, if alternate { 2 } else { 1 })
}

/// In `server_handle`'s control byte: which device the envelope names.
pub mod control {
    /// The low five bits pick the kind ([`super::kind_of`]).
    pub const KIND: u8 = 0x1F;
    /// The envelope names the other tenant's device.
    pub const OTHER: u8 = 0x20;
    /// The envelope names a device that is not in the fleet.
    pub const STRANGER: u8 = 0x40;
    /// Sent in the second session of the same identity.
    pub const ALTERNATE: u8 = 0x80;
}

/// Milliseconds one unit of a record's time step moves the server's clock.
pub const SERVER_STEP_MS: u64 = 250;

/// Builds the seeds: `(target, file name, bytes)`.
pub mod seeds {
    use iot_core::time::HlcTimestamp;
    use iot_core::{DeviceId, Envelope, MessageId, MessageKind, NodeId, QoS};
    use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
    use iot_lifecycle::config::DeviceConfig;
    use iot_lifecycle::health::{HealthFlags, HealthReport, HealthStatus};
    use iot_lifecycle::ota::{OtaJob, OtaProgress, OtaState};
    use iot_lifecycle::registration::{
        AuditRecord, DecommissionReason, RegistrationRejection, RegistrationRequest,
        RegistrationResponse,
    };
    use iot_lifecycle::state::{Event, State, TransitionRecord};
    use iot_protocol::{
        Downlink, Heartbeat, PROTOCOL_VERSION, Register, ShadowBytes, ShadowGet, ShadowRefusal,
        ShadowRejection, TelemetryBatch, Uplink,
    };
    use iot_shadow::cbor::{Header, Kind, encode_writes_to_vec};
    use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};
    use iot_transport::fragment::Fragmenter;
    use iot_transport::framing::encode_frame;
    use iot_transport::qos::FRAGMENT_MARKER;

    use super::{
        FIXED_NONCE, SERVER_STEP_MS, START_MS, control, devices, kind_byte, push_record, secret,
    };

    /// A seed: target, file name, bytes.
    pub type Seed = (&'static str, String, Vec<u8>);

    fn write(section: Section, path: &str, value: Value, at_ms: u64, origin: Origin) -> Write {
        let hlc = HlcTimestamp::from_parts(at_ms, 0, NodeId(7)).expect("valid stamp");
        let path = Path::new(path).expect("valid path");
        Write::new(
            section,
            path,
            value,
            Stamp::new(hlc, Policy::LastWriterWins, origin),
        )
    }

    /// A shadow message of `kind` with one reported and one desired write.
    pub fn shadow(kind: Kind, version: Option<u64>, at_ms: u64) -> Vec<u8> {
        let header = Header {
            kind,
            version,
            client_token: Some("tok-1"),
        };
        let writes = [
            write(
                Section::Reported,
                "sensor.temp",
                Value::Int(21),
                at_ms,
                Origin::Device,
            ),
            write(
                Section::Desired,
                "led",
                Value::Bool(true),
                at_ms,
                Origin::Cloud,
            ),
        ];
        let writes = match kind {
            // A device writes only what it reports.
            Kind::Update => writes.get(..1).unwrap_or_default(),
            _ => &writes[..],
        };
        encode_writes_to_vec(&header, writes).expect("shadow message encodes")
    }

    fn register(device: DeviceId, answered: bool) -> Register {
        Register {
            protocol: PROTOCOL_VERSION,
            schema: 0,
            request: RegistrationRequest {
                device,
                firmware_version: 1,
                answer: answered
                    .then(|| iot_fleet::answer(&secret(&device), &device, &FIXED_NONCE)),
            },
        }
    }

    /// Valid device-to-backend messages, one of each kind.
    pub fn uplinks(device: DeviceId) -> Vec<(MessageKind, Vec<u8>)> {
        let mut telemetry = TelemetryBatch::new();
        for reading in [
            iot_core::telemetry::Reading::new(
                START_MS,
                iot_core::telemetry::Measurement::Temperature { celsius: 21.5 },
            ),
            iot_core::telemetry::Reading::new(
                START_MS,
                iot_core::telemetry::Measurement::BatteryPercent { percent: 80 },
            ),
        ] {
            let _ = telemetry.push(reading);
        }
        let update = shadow(Kind::Update, None, START_MS);
        let messages: Vec<Uplink<&[u8]>> = vec![
            Uplink::Register(register(device, false)),
            Uplink::Register(register(device, true)),
            Uplink::Heartbeat(Heartbeat {
                seq: 3,
                uptime_ms: 30_000,
                state: State::Active,
                config_version: 1,
                health: HealthStatus::Healthy,
                readings: Some(iot_protocol::ReadingCounts {
                    sampled: 12,
                    sent: 5,
                }),
            }),
            Uplink::Telemetry(telemetry),
            Uplink::Health(HealthReport::from_flags(
                HealthFlags::BATTERY_LOW,
                HealthFlags::EMPTY,
                5_000,
            )),
            Uplink::Transition(TransitionRecord {
                from: State::Provisioning,
                event: Event::ConfigComplete,
                to: State::Active,
                at_ms: START_MS,
            }),
            Uplink::Transition(TransitionRecord {
                from: State::Active,
                event: Event::HealthCheckFailed,
                to: State::Degraded,
                at_ms: START_MS + 1_000,
            }),
            Uplink::ShadowUpdate(ShadowBytes::new(update.as_slice()).expect("valid update")),
            Uplink::ShadowGet(ShadowGet { version: 0 }),
            Uplink::CommandAck(CommandAck {
                command_id: 4,
                outcome: AckOutcome::Accepted,
            }),
            Uplink::OtaProgress(OtaProgress {
                state: OtaState::Downloading,
                version: Some(2),
                next_offset: 1_024,
                rollback: None,
            }),
            Uplink::OtaBlockRequest(iot_protocol::OtaBlockRequest {
                version: 2,
                offset: 256,
            }),
            Uplink::Decommissioned(AuditRecord {
                device,
                at_ms: START_MS,
                reason: DecommissionReason::EndOfLife,
                from: State::Active,
                event: Event::EndOfLife,
            }),
        ];
        messages.iter().map(|m| (m.kind(), m.to_vec())).collect()
    }

    /// Valid backend-to-device messages, one of each kind.
    pub fn downlinks() -> Vec<(MessageKind, Vec<u8>)> {
        let config = DeviceConfig {
            version: 2,
            ..DeviceConfig::DEFAULT
        };
        let mut out: Vec<(MessageKind, Vec<u8>)> = [
            Downlink::<&[u8]>::Registration(RegistrationResponse::Challenge(FIXED_NONCE)),
            Downlink::Registration(RegistrationResponse::Accepted(config)),
            Downlink::Registration(RegistrationResponse::Rejected(
                RegistrationRejection::InvalidProof,
            )),
            Downlink::ShadowRejected(ShadowRejection {
                reason: ShadowRefusal::Conflict,
                version: 9,
            }),
            Downlink::Command(Command {
                id: 4,
                issued_at_ms: START_MS,
                expires_at_ms: START_MS + 60_000,
                kind: CommandKind::BlinkLed {
                    times: 3,
                    period_ms: 200,
                },
            }),
            Downlink::Command(Command {
                id: 5,
                issued_at_ms: START_MS,
                expires_at_ms: START_MS + 60_000,
                kind: CommandKind::SetConfig(config),
            }),
            Downlink::Config(config),
            Downlink::OtaJob(OtaJob {
                version: 2,
                size: 4_096,
                sha256: [0xAB; 32],
            }),
            Downlink::OtaBlock(iot_protocol::OtaBlock {
                version: 2,
                offset: 256,
                data: &[0x5A; 64][..],
            }),
            Downlink::Decommission(DecommissionReason::OperatorRequest),
        ]
        .iter()
        .map(|m| (m.kind(), m.to_vec()))
        .collect();
        for (kind, envelope_kind) in [
            (Kind::Delta, MessageKind::ShadowDelta),
            (Kind::Accepted, MessageKind::ShadowAccepted),
            (Kind::Document, MessageKind::ShadowDocument),
        ] {
            out.push((envelope_kind, shadow(kind, Some(3), START_MS)));
        }
        out
    }

    fn snake(kind: MessageKind) -> String {
        let mut name = String::new();
        for c in format!("{kind:?}").chars() {
            if c.is_uppercase() && !name.is_empty() {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        }
        name
    }

    fn numbered(target: &'static str, messages: Vec<(MessageKind, Vec<u8>)>, out: &mut Vec<Seed>) {
        for (i, (kind, payload)) in messages.into_iter().enumerate() {
            let mut bytes = vec![kind_byte(kind)];
            bytes.extend_from_slice(&payload);
            out.push((target, format!("{i:02}_{}", snake(kind)), bytes));
        }
    }

    fn envelope_bytes(
        device: DeviceId,
        id: u32,
        qos: QoS,
        kind: MessageKind,
        payload: &[u8],
    ) -> Vec<u8> {
        Envelope {
            device,
            seq: id,
            id: MessageId(id),
            qos,
            kind,
            payload,
        }
        .to_vec()
        .expect("envelope encodes")
    }

    /// Protobuf encodings of the seed messages, behind `protocol_proto`'s selector byte.
    fn proto_seeds(device: DeviceId) -> Vec<Seed> {
        use iot_protocol::proto;
        use prost::Message;
        let mut list: Vec<(u8, Vec<u8>)> = Vec::new();
        for (kind, payload) in uplinks(device) {
            let Ok(message) = Uplink::decode(kind, &payload) else {
                continue;
            };
            match message {
                Uplink::Register(m) => {
                    list.push((0, proto::Register::from(&m).encode_to_vec()));
                    list.push((
                        1,
                        proto::RegistrationRequest::from(&m.request).encode_to_vec(),
                    ));
                }
                Uplink::Heartbeat(m) => list.push((4, proto::Heartbeat::from(&m).encode_to_vec())),
                Uplink::Health(m) => list.push((5, proto::HealthReport::from(&m).encode_to_vec())),
                Uplink::Transition(m) => {
                    list.push((6, proto::TransitionRecord::from(&m).encode_to_vec()));
                }
                Uplink::ShadowGet(m) => list.push((12, proto::ShadowGet::from(&m).encode_to_vec())),
                Uplink::CommandAck(m) => {
                    list.push((8, proto::CommandAck::from(&m).encode_to_vec()))
                }
                Uplink::OtaProgress(m) => {
                    list.push((10, proto::OtaProgress::from(&m).encode_to_vec()));
                }
                Uplink::Decommissioned(m) => {
                    list.push((11, proto::AuditRecord::from(&m).encode_to_vec()));
                }
                _ => {}
            }
        }
        for (kind, payload) in downlinks() {
            let Ok(message) = Downlink::decode(kind, &payload) else {
                continue;
            };
            match message {
                Downlink::Registration(m) => {
                    list.push((2, proto::RegistrationResponse::from(&m).encode_to_vec()));
                }
                Downlink::Config(m) => {
                    list.push((3, proto::DeviceConfig::from(&m).encode_to_vec()))
                }
                Downlink::ShadowRejected(m) => {
                    list.push((7, proto::ShadowRejection::from(&m).encode_to_vec()));
                }
                Downlink::OtaJob(m) => list.push((9, proto::OtaJob::from(&m).encode_to_vec())),
                Downlink::Decommission(m) => {
                    list.push((13, proto::DecommissionRequest::from(m).encode_to_vec()));
                }
                _ => {}
            }
        }
        list.into_iter()
            .enumerate()
            .map(|(i, (selector, bytes))| {
                let mut seed = vec![selector];
                seed.extend_from_slice(&bytes);
                ("protocol_proto", format!("{i:02}_{selector:02}"), seed)
            })
            .collect()
    }

    /// Every seed of every target.
    pub fn all() -> Vec<Seed> {
        let mut out = Vec::new();
        let Some(devices) = devices() else {
            return out;
        };
        let me = devices.session;
        numbered("protocol_uplink", uplinks(me), &mut out);
        numbered("protocol_downlink", downlinks(), &mut out);

        // Envelopes carrying real payloads, in each direction.
        for (i, (kind, payload)) in uplinks(me).into_iter().chain(downlinks()).enumerate() {
            let qos = iot_protocol::qos(kind);
            let id = u32::try_from(i).unwrap_or(0);
            out.push((
                "envelope",
                format!("{i:02}_{}", snake(kind)),
                envelope_bytes(me, id, qos, kind, &payload),
            ));
        }

        // A device's life in one session, then the same messages naming other devices.
        let uplink = |kind: MessageKind| {
            uplinks(me)
                .into_iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, p)| p)
                .unwrap_or_default()
        };
        let mut life = Vec::new();
        let by_kind = |k: MessageKind| kind_byte(k) & control::KIND;
        for (kind, payload) in uplinks(me) {
            push_record(&mut life, by_kind(kind), 4, &payload);
        }
        out.push(("server_handle", "00_life".into(), life.clone()));
        let mut spoofed = life.clone();
        for (kind, payload) in uplinks(devices.other) {
            push_record(&mut spoofed, by_kind(kind) | control::OTHER, 1, &payload);
        }
        for (kind, payload) in uplinks(devices.stranger) {
            push_record(&mut spoofed, by_kind(kind) | control::STRANGER, 1, &payload);
        }
        out.push(("server_handle", "01_spoofed".into(), spoofed));
        let mut second = Vec::new();
        let reg = uplink(MessageKind::RegistrationRequest);
        push_record(
            &mut second,
            by_kind(MessageKind::RegistrationRequest) | control::ALTERNATE,
            1,
            &reg,
        );
        push_record(
            &mut second,
            by_kind(MessageKind::RegistrationRequest),
            1,
            &reg,
        );
        // A write stamped an hour ahead of the server's clock.
        let ahead = shadow(Kind::Update, None, START_MS + 3_600_000);
        push_record(&mut second, by_kind(MessageKind::ShadowUpdate), 1, &ahead);
        out.push(("server_handle", "02_second_session".into(), second));
        const { assert!(SERVER_STEP_MS > 0) };

        // Frames of envelopes, back to back, with a corrupted one between.
        let mut stream = Vec::new();
        let mut frame = [0u8; 512];
        for (i, (kind, payload)) in uplinks(me).into_iter().take(4).enumerate() {
            let id = u32::try_from(i).unwrap_or(0);
            let env = envelope_bytes(me, id, QoS::AtLeastOnce, kind, &payload);
            if let Ok(n) = encode_frame(&env, &mut frame) {
                let encoded = frame.get(..n).unwrap_or_default();
                out.push(("frame_decoder", format!("{i:02}_frame"), encoded.to_vec()));
                stream.extend_from_slice(encoded);
                if i == 1 {
                    let mut bad = encoded.to_vec();
                    if let Some(b) = bad.get_mut(2) {
                        *b ^= 0x40;
                    }
                    stream.extend_from_slice(&bad);
                }
            }
        }
        out.push(("frame_decoder", "10_stream".into(), stream));

        // Fragments of a message, in order, reversed with a duplicate, and interleaved.
        let message = envelope_bytes(
            me,
            9,
            QoS::ExactlyOnce,
            MessageKind::ShadowUpdate,
            &uplink(MessageKind::ShadowUpdate),
        );
        let other = envelope_bytes(
            me,
            10,
            QoS::AtLeastOnce,
            MessageKind::Heartbeat,
            &uplink(MessageKind::Heartbeat),
        );
        let fragments = |payload: &[u8], tag: u8, mtu: usize| {
            let mut list = Vec::new();
            if let Ok(mut f) = Fragmenter::new(payload, tag, mtu) {
                let mut buf = vec![0u8; mtu];
                while let Ok(Some(n)) = f.next_into(&mut buf) {
                    list.push(buf.get(..n).unwrap_or_default().to_vec());
                }
            }
            list
        };
        let first = fragments(&message, 1, 24);
        let second_message = fragments(&other, 2, 16);
        let mut in_order = vec![0u8];
        for f in &first {
            push_record(&mut in_order, 0, 1, f);
        }
        out.push(("fragment_reassembler", "00_in_order".into(), in_order));
        let mut reversed = vec![1u8];
        for f in first.iter().rev().chain(first.first()) {
            push_record(&mut reversed, 0, 1, f);
        }
        out.push((
            "fragment_reassembler",
            "01_reversed_duplicate".into(),
            reversed,
        ));
        let mut interleaved = vec![0u8];
        let mut a = first.iter();
        let mut b = second_message.iter();
        loop {
            let (x, y) = (a.next(), b.next());
            if x.is_none() && y.is_none() {
                break;
            }
            for f in x.into_iter().chain(y) {
                push_record(&mut interleaved, 0, 0, f);
            }
        }
        out.push(("fragment_reassembler", "02_interleaved".into(), interleaved));

        // The endpoint: whole envelopes, a duplicate, an ack of its own first message, and
        // a fragmented envelope behind the marker.
        let mut rx = Vec::new();
        let telemetry = uplink(MessageKind::Telemetry);
        let t = envelope_bytes(
            devices.other,
            3,
            QoS::ExactlyOnce,
            MessageKind::Telemetry,
            &telemetry,
        );
        push_record(&mut rx, 1, 1, &t);
        push_record(&mut rx, 1, 1, &t);
        push_record(
            &mut rx,
            0,
            1,
            &envelope_bytes(devices.other, 1, QoS::AtMostOnce, MessageKind::Ack, &[]),
        );
        for f in fragments(&message, 4, 40) {
            let mut datagram = vec![FRAGMENT_MARKER];
            datagram.extend_from_slice(&f);
            push_record(&mut rx, 1, 0, &datagram);
        }
        out.push(("endpoint_receive", "00_traffic".into(), rx));

        // The protobuf forms of the protocol messages (the selector byte of
        // `protocol_proto` first).
        out.extend(proto_seeds(me));

        // The shadow targets: each kind of shadow message, in CBOR and in protobuf.
        for (i, kind) in [Kind::Update, Kind::Accepted, Kind::Delta, Kind::Document]
            .into_iter()
            .enumerate()
        {
            let version = (kind != Kind::Update).then_some(3);
            let cbor = shadow(kind, version, START_MS);
            let name = format!("{i:02}_{kind:?}").to_lowercase();
            if let Ok(message) = iot_shadow::OwnedMessage::from_cbor(&cbor) {
                use prost::Message;
                let pb = iot_shadow::proto::ShadowMessage::from(&message).encode_to_vec();
                out.push(("shadow_proto", name.clone(), pb));
            }
            out.push(("shadow_cbor", name.clone(), cbor.clone()));
            out.push(("shadow_device", name, cbor));
        }
        out.extend(mqtt_bridge_seeds(&devices));
        out.extend(fog_aggregate_seeds(me));
        out.extend(aws_shadow_seeds());
        out.extend(core_proto_seeds(me));
        out
    }

    /// `core_proto`: protobuf envelopes (selector 0) and readings (selector 1).
    fn core_proto_seeds(me: DeviceId) -> Vec<Seed> {
        use iot_core::telemetry::{Measurement, Reading};
        use prost::Message;
        let mut out = Vec::new();
        for (i, (kind, payload)) in uplinks(me).into_iter().take(4).enumerate() {
            let id = u32::try_from(i).unwrap_or(0);
            let envelope = Envelope {
                device: me,
                seq: id,
                id: MessageId(id),
                qos: QoS::AtLeastOnce,
                kind,
                payload: payload.as_slice(),
            };
            let mut seed = vec![0u8];
            seed.extend_from_slice(&iot_core::proto::Envelope::from(&envelope).encode_to_vec());
            out.push(("core_proto", format!("{i:02}_envelope"), seed));
        }
        for (i, measurement) in [
            Measurement::Temperature { celsius: 21.5 },
            Measurement::BatteryPercent { percent: 80 },
        ]
        .into_iter()
        .enumerate()
        {
            let reading = Reading::new(START_MS, measurement);
            let mut seed = vec![1u8];
            seed.extend_from_slice(&iot_core::proto::Reading::from(&reading).encode_to_vec());
            out.push(("core_proto", format!("{:02}_reading", i + 10), seed));
        }
        out
    }

    /// `mqtt_bridge`: `[topic length (top bit: small limit), topic, payload]`.
    fn mqtt_bridge_seeds(devices: &super::Devices) -> Vec<Seed> {
        let me = devices.session;
        let heartbeat = uplinks(me)
            .into_iter()
            .find(|(k, _)| *k == MessageKind::Heartbeat)
            .map(|(_, p)| p)
            .unwrap_or_default();
        let env = envelope_bytes(me, 1, QoS::AtLeastOnce, MessageKind::Heartbeat, &heartbeat);
        let publish = |topic: &str, small: bool, payload: &[u8]| {
            let len = u8::try_from(topic.len()).unwrap_or(0x7F) & 0x7F;
            let mut bytes = vec![len | if small { 0x80 } else { 0 }];
            bytes.extend_from_slice(topic.as_bytes());
            bytes.extend_from_slice(payload);
            bytes
        };
        let up = |d: DeviceId| format!("iot/{d}/up");
        vec![
            (
                "mqtt_bridge",
                "00_valid".into(),
                publish(&up(me), false, &env),
            ),
            (
                "mqtt_bridge",
                "01_identity".into(),
                publish(&up(devices.other), false, &env),
            ),
            (
                "mqtt_bridge",
                "02_down".into(),
                publish(&format!("iot/{me}/down"), false, &env),
            ),
            (
                "mqtt_bridge",
                "03_aws".into(),
                publish("$aws/things/dev-a/shadow/update", false, b"{}"),
            ),
            (
                "mqtt_bridge",
                "04_oversized".into(),
                publish(&up(me), true, &[0xA5; 80]),
            ),
            (
                "mqtt_bridge",
                "05_garbage".into(),
                publish(&up(me), false, b"\xff\x00garbage"),
            ),
        ]
    }

    /// `fog_aggregate`: records of encoded aggregates, then a bad one.
    fn fog_aggregate_seeds(me: DeviceId) -> Vec<Seed> {
        use iot_core::flow::{Aggregate, Quantity, WindowSummary};
        use iot_fleet::gateway::FogAggregate;
        let mut stream = Vec::new();
        for (i, (count, min, max, sum)) in [
            (2u64, 20.0f32, 22.0f32, 42.0f64),
            (0, 0.0, 0.0, 0.0),
            (3, -5.5, 40.25, 60.0),
        ]
        .into_iter()
        .enumerate()
        {
            let Ok(aggregate) = Aggregate::from_parts(count, min, max, sum) else {
                continue;
            };
            let start = u64::try_from(i).unwrap_or(0).saturating_mul(60_000);
            let fog = FogAggregate {
                source: me,
                summary: WindowSummary {
                    start_ms: START_MS.saturating_add(start),
                    window_ms: 60_000,
                    quantity: Quantity {
                        code: u8::try_from(i).unwrap_or(0),
                        custom_id: 0,
                    },
                    aggregate,
                },
            };
            let mut buf = [0u8; 128];
            if let Ok(n) = fog.encode_into(&mut buf) {
                push_record(
                    &mut stream,
                    u8::try_from(i).unwrap_or(0),
                    1,
                    buf.get(..n).unwrap_or_default(),
                );
            }
        }
        push_record(&mut stream, 0, 0, &[0x89, 0x00]);
        vec![("fog_aggregate", "00_stream".into(), stream)]
    }

    /// `aws_shadow`: a thing's life over the `$aws` surface, and raw topics.
    fn aws_shadow_seeds() -> Vec<Seed> {
        const GET: u8 = 0;
        const UPDATE: u8 = 1;
        const DELETE: u8 = 2;
        const RAW: u8 = 3;
        const NAMED: u8 = 4;
        let mut life = Vec::new();
        let requests: [(u8, &str); 9] = [
            (GET, r#"{"clientToken":"t0"}"#),
            (
                UPDATE,
                r#"{"state":{"desired":{"led":true,"color":{"r":1}}},"clientToken":"t1"}"#,
            ),
            (
                UPDATE,
                r#"{"state":{"reported":{"led":false,"temp":21.5}},"version":1}"#,
            ),
            (UPDATE | NAMED, r#"{"state":{"desired":{"rate":30}}}"#),
            (
                UPDATE,
                r#"{"state":{"desired":{"color":null}},"version":99}"#,
            ),
            (GET, ""),
            (DELETE, r#"{"version":2}"#),
            (DELETE, "{}"),
            (UPDATE, r#"{"state":{"reported":null}}"#),
        ];
        for (control, body) in requests {
            push_record(&mut life, control, 1, body.as_bytes());
        }
        let mut raw = Vec::new();
        for line in [
            "$aws/things/lamp-9/shadow/update {\"state\":{\"desired\":{\"a\":1}}}",
            "$aws/things/lamp-9/shadow/update/accepted {}",
            "$aws/things/lamp-9/shadow/name/cfg/get {}",
            "$aws/things/lamp-9/shadow/name/cfg/delete/rejected {}",
            "iot/dev-a/up {}",
        ] {
            push_record(&mut raw, RAW, 1, line.as_bytes());
        }
        vec![
            ("aws_shadow", "00_life".into(), life),
            ("aws_shadow", "01_raw_topics".into(), raw),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut data = Vec::new();
        push_record(&mut data, 1, 2, b"abc");
        push_record(&mut data, 3, 4, b"");
        let got: Vec<_> = records(&data).collect();
        assert_eq!(
            got,
            [
                Record {
                    control: 1,
                    step: 2,
                    bytes: b"abc"
                },
                Record {
                    control: 3,
                    step: 4,
                    bytes: b""
                }
            ]
        );
    }

    #[test]
    fn kinds_round_trip_through_their_byte() {
        for kind in MessageKind::ALL {
            assert_eq!(kind_of(kind_byte(kind)), kind);
        }
    }

    #[test]
    fn protocol_seeds_decode() {
        let devices = devices().unwrap();
        for (kind, payload) in seeds::uplinks(devices.session) {
            iot_protocol::Uplink::decode(kind, &payload).unwrap();
        }
        for (kind, payload) in seeds::downlinks() {
            iot_protocol::Downlink::decode(kind, &payload).unwrap();
        }
    }

    /// The snapshot `server_handle` compares sees the changes a message makes, so
    /// "unchanged" there means something.
    #[test]
    fn the_fleet_snapshot_sees_changes() {
        let (mut server, devices) = server().unwrap();
        let me = devices.session;
        let s = session(&devices, false);
        let uplinks = seeds::uplinks(me);
        let payload = |kind, nth| {
            uplinks
                .iter()
                .filter(|(k, _)| *k == kind)
                .nth(nth)
                .unwrap()
                .1
                .clone()
        };
        let mut before = snapshot(&server, &devices);
        let spoofed = payload(MessageKind::RegistrationRequest, 0);
        let spoofed = envelope(devices.other, MessageKind::RegistrationRequest, &spoofed);
        assert!(server.handle(&s, &spoofed, START_MS).is_err());
        assert_eq!(snapshot(&server, &devices), before);
        for (step, (kind, nth)) in [
            (MessageKind::RegistrationRequest, 0),
            (MessageKind::RegistrationRequest, 1),
            (MessageKind::LifecycleReport, 0),
            (MessageKind::ShadowUpdate, 0),
            (MessageKind::Heartbeat, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let bytes = payload(kind, nth);
            let now = START_MS + 1_000 * (step as u64 + 1);
            server.handle(&s, &envelope(me, kind, &bytes), now).unwrap();
            let after = snapshot(&server, &devices);
            if kind != MessageKind::RegistrationRequest || nth == 1 {
                assert_ne!(after, before, "{kind:?} changed nothing visible");
            }
            before = after;
        }
    }

    #[test]
    fn every_target_has_seeds() {
        let all = seeds::all();
        for target in [
            "protocol_uplink",
            "protocol_downlink",
            "envelope",
            "server_handle",
            "frame_decoder",
            "fragment_reassembler",
            "endpoint_receive",
            "protocol_proto",
            "shadow_cbor",
            "shadow_device",
            "shadow_proto",
        ] {
            assert!(all.iter().any(|(t, _, _)| *t == target), "{target}");
        }
    }
}
