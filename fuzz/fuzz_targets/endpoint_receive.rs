//! The reliable endpoint's receive path (`ReliableEndpoint::poll`) over a link that hands
//! it the fuzz input as datagrams: whole envelopes, fragments behind the marker, garbage,
//! acks of its own messages, with the link going down and up and the endpoint queueing
//! messages of its own. Never panics; delivers no ack and nothing twice within the dedup
//! window for exactly-once; everything it delivers round-trips; everything it sends fits
//! the MTU and is an envelope or a fragment; its counters match what was seen.
#![no_main]

use std::collections::{HashMap, VecDeque};

use embassy_futures::block_on;
use iot_core::{DeviceId, EnvelopeRef, MessageKind, NodeId, QoS};
use iot_fuzz::records;
use iot_transport::SplitMix64;
use iot_transport::link::{Link, LinkError, LinkInfo, LinkState, Medium};
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::{FRAGMENT_MARKER, ReliableEndpoint};
use iot_transport::retry::BackoffPolicy;
use libfuzzer_sys::fuzz_target;

const MTU: u16 = 48;
const WINDOW: usize = 8;

/// A link whose receive side replays the fuzz input and whose send side records.
struct ReplayLink {
    inbound: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    up: bool,
}

impl Link for ReplayLink {
    type Error = LinkError;

    fn info(&self) -> LinkInfo {
        LinkInfo {
            medium: Medium::Simulated,
            mtu: MTU,
            bitrate_bps: 9_600,
            latency_ms: 10,
            energy_nj_per_byte: 1,
            cost_micro_per_kib: 0,
            rssi_dbm: None,
            snr_db: None,
            state: if self.up {
                LinkState::Up
            } else {
                LinkState::Down
            },
        }
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), LinkError> {
        if datagram.len() > usize::from(MTU) {
            return Err(LinkError::TooLarge {
                len: datagram.len(),
                mtu: MTU,
            });
        }
        self.sent.push(datagram.to_vec());
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        self.try_receive(buf)?.ok_or(LinkError::Timeout)
    }

    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, LinkError> {
        let Some(datagram) = self.inbound.pop_front() else {
            return Ok(None);
        };
        let dst = buf
            .get_mut(..datagram.len())
            .ok_or(LinkError::BufferTooSmall)?;
        dst.copy_from_slice(&datagram);
        Ok(Some(datagram.len()))
    }
}

/// Control bits of a record.
const POLL: u8 = 1;
const DOWN: u8 = 2;
const ENQUEUE: u8 = 4;

fuzz_target!(|data: &[u8]| {
    let me = DeviceId::new("gw-1").expect("valid id");
    let link = ReplayLink {
        inbound: VecDeque::new(),
        sent: Vec::new(),
        up: true,
    };
    let retry = BackoffPolicy::new(100, 2_000);
    let mut ep: ReliableEndpoint<_, _, 4, 128, WINDOW> = ReliableEndpoint::new(
        link,
        me,
        OverflowPolicy::DropOldest,
        retry,
        SplitMix64::new(1),
    );
    let mut now = 0u64;
    let mut delivered = 0u32;
    // Exactly-once deliveries so far, and at which count each key was last delivered.
    let mut once = 0usize;
    let mut last_once: HashMap<(NodeId, u32), usize> = HashMap::new();
    let mut enqueued = 0u32;
    let check_sent = |ep: &mut ReliableEndpoint<ReplayLink, SplitMix64, 4, 128, WINDOW>| {
        for datagram in ep.link_mut().sent.drain(..) {
            assert!(datagram.len() <= usize::from(MTU));
            if datagram.first() == Some(&FRAGMENT_MARKER) {
                continue;
            }
            let env = EnvelopeRef::decode(&datagram).expect("a sent datagram is an envelope");
            assert_eq!(env.device, me);
            if env.kind == MessageKind::Ack {
                assert_eq!(env.qos, QoS::AtMostOnce);
                assert!(env.payload.is_empty());
            }
        }
    };
    for record in records(data) {
        now += u64::from(record.step) * 50;
        ep.link_mut().inbound.push_back(record.bytes.to_vec());
        if record.control & ENQUEUE != 0 {
            let qos = QoS::from_code(record.step % 3).unwrap_or(QoS::AtLeastOnce);
            let payload = vec![record.control; usize::from(record.step)];
            if ep
                .enqueue(MessageKind::Telemetry, qos, Priority::Normal, &payload, now)
                .is_ok()
            {
                enqueued += 1;
            }
        }
        ep.link_mut().up = record.control & DOWN == 0;
        if record.control & POLL != 0 {
            let report = block_on(ep.poll(now, |env| {
                assert_ne!(env.kind, MessageKind::Ack, "acks are not delivered");
                let bytes = env.to_vec().expect("a delivered envelope encodes");
                assert_eq!(EnvelopeRef::decode(&bytes), Ok(env));
                if env.qos == QoS::ExactlyOnce {
                    let key = (NodeId::from_device_id(&env.device), env.id.0);
                    if let Some(at) = last_once.insert(key, once) {
                        assert!(
                            once - at >= WINDOW,
                            "{key:?} delivered twice within the window"
                        );
                    }
                    once += 1;
                }
                delivered += 1;
            }))
            .expect("poll does not fail on input");
            assert!(report.delivered <= report.received);
            check_sent(&mut ep);
        }
    }
    let stats = ep.stats();
    assert_eq!(stats.delivered, delivered);
    assert!(stats.acks_received <= enqueued);
});
