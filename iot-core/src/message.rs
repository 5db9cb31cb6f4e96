//! The message envelope every `iot-*` crate sends and receives.
//!
//! An [`Envelope`] names the device, carries a per-device sequence number and a message id
//! (the key for acknowledgements and duplicate suppression), the delivery [`QoS`], the
//! [`MessageKind`] and an opaque payload. It is generic over how the payload is held:
//!
//! | alias | payload | use |
//! |---|---|---|
//! | [`EnvelopeRef<'a>`] | `&'a [u8]` | zero-copy decode from a receive buffer (device) |
//! | [`EnvelopeBuf<N>`] | `heapless::Vec<u8, N>` | owned, fixed capacity, no allocator |
//! | `OwnedEnvelope` (`alloc`) | `Vec<u8>` | backends |
//!
//! The CBOR form is a map with integer keys `0..=5` in ascending order.
//!
//! ```
//! use iot_core::codec;
//! use iot_core::id::DeviceId;
//! use iot_core::message::{EnvelopeRef, MessageId, MessageKind, QoS};
//!
//! let env = EnvelopeRef {
//!     device: DeviceId::new("sensor-1")?,
//!     seq: 42,
//!     id: MessageId(7),
//!     qos: QoS::AtLeastOnce,
//!     kind: MessageKind::Heartbeat,
//!     payload: &[],
//! };
//! let mut buf = [0u8; 64];
//! let n = env.encode_into(&mut buf)?;
//! assert_eq!(n, env.encoded_len());
//! let back = EnvelopeRef::decode(&buf[..n])?;
//! assert_eq!(back, env);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use minicbor::{CborLen, Decode, Decoder, Encode, Encoder};

use crate::codec::{self, DecodeError, EncodeError};
use crate::id::DeviceId;

/// Delivery guarantee requested for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum QoS {
    /// Sent once, never retransmitted; may be lost.
    #[default]
    #[n(0)]
    AtMostOnce,
    /// Retransmitted until acknowledged; may be delivered more than once.
    #[n(1)]
    AtLeastOnce,
    /// Retransmitted until acknowledged and deduplicated by message id at the receiver.
    #[n(2)]
    ExactlyOnce,
}

/// What a message carries. The numeric codes are the wire values (CBOR and protobuf).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum MessageKind {
    /// Periodic liveness signal.
    #[n(1)]
    Heartbeat,
    /// Sensor readings.
    #[n(2)]
    Telemetry,
    /// Device health summary.
    #[n(3)]
    HealthReport,
    /// A shadow update request (desired or reported).
    #[n(4)]
    ShadowUpdate,
    /// The desired-minus-reported difference pushed to a device.
    #[n(5)]
    ShadowDelta,
    /// A shadow update was accepted.
    #[n(6)]
    ShadowAccepted,
    /// A shadow update was rejected.
    #[n(7)]
    ShadowRejected,
    /// A command for the device.
    #[n(8)]
    Command,
    /// The device's answer to a command.
    #[n(9)]
    CommandAck,
    /// A versioned configuration.
    #[n(10)]
    ConfigUpdate,
    /// A device asks to be registered.
    #[n(11)]
    RegistrationRequest,
    /// The backend answers a registration.
    #[n(12)]
    RegistrationResponse,
    /// A firmware update job.
    #[n(13)]
    OtaJob,
    /// Progress of a firmware update.
    #[n(14)]
    OtaProgress,
    /// The device is being, or has been, decommissioned.
    #[n(15)]
    Decommission,
    /// Delivery acknowledgement of the message with the same id (QoS 1 and 2).
    #[n(16)]
    Ack,
    /// Request for the full shadow document.
    #[n(17)]
    ShadowGet,
    /// The full shadow document.
    #[n(18)]
    ShadowDocument,
    /// A lifecycle transition the device made.
    #[n(19)]
    LifecycleReport,
    /// A device asks for one block of a firmware image.
    #[n(20)]
    OtaBlockRequest,
    /// One block of a firmware image.
    #[n(21)]
    OtaBlock,
}

impl MessageKind {
    /// Every kind, in wire-code order.
    pub const ALL: [MessageKind; 21] = [
        Self::Heartbeat,
        Self::Telemetry,
        Self::HealthReport,
        Self::ShadowUpdate,
        Self::ShadowDelta,
        Self::ShadowAccepted,
        Self::ShadowRejected,
        Self::Command,
        Self::CommandAck,
        Self::ConfigUpdate,
        Self::RegistrationRequest,
        Self::RegistrationResponse,
        Self::OtaJob,
        Self::OtaProgress,
        Self::Decommission,
        Self::Ack,
        Self::ShadowGet,
        Self::ShadowDocument,
        Self::LifecycleReport,
        Self::OtaBlockRequest,
        Self::OtaBlock,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Heartbeat => 1,
            Self::Telemetry => 2,
            Self::HealthReport => 3,
            Self::ShadowUpdate => 4,
            Self::ShadowDelta => 5,
            Self::ShadowAccepted => 6,
            Self::ShadowRejected => 7,
            Self::Command => 8,
            Self::CommandAck => 9,
            Self::ConfigUpdate => 10,
            Self::RegistrationRequest => 11,
            Self::RegistrationResponse => 12,
            Self::OtaJob => 13,
            Self::OtaProgress => 14,
            Self::Decommission => 15,
            Self::Ack => 16,
            Self::ShadowGet => 17,
            Self::ShadowDocument => 18,
            Self::LifecycleReport => 19,
            Self::OtaBlockRequest => 20,
            Self::OtaBlock => 21,
        }
    }

    /// The kind with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }
}

impl QoS {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
            Self::ExactlyOnce => 2,
        }
    }

    /// The level with wire code `code`, if any.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// Identifies one message from one device: the key for acknowledgements and deduplication.
/// Retransmissions keep the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
#[derive(Encode, Decode, CborLen)]
#[cbor(transparent)]
pub struct MessageId(#[n(0)] pub u32);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How an envelope holds its payload bytes; implemented for `&[u8]`, `heapless::Vec<u8, N>`
/// and (with `alloc`) `Vec<u8>`.
pub trait Payload<'b>: AsRef<[u8]> + Sized {
    /// Takes the payload from a decode buffer; fails if it does not fit.
    fn from_wire(bytes: &'b [u8]) -> Result<Self, DecodeError>;
}

impl<'b> Payload<'b> for &'b [u8] {
    fn from_wire(bytes: &'b [u8]) -> Result<Self, DecodeError> {
        Ok(bytes)
    }
}

impl<'b, const N: usize> Payload<'b> for heapless::Vec<u8, N> {
    fn from_wire(bytes: &'b [u8]) -> Result<Self, DecodeError> {
        heapless::Vec::from_slice(bytes).map_err(|_| DecodeError::CapacityExceeded)
    }
}

#[cfg(feature = "alloc")]
impl<'b> Payload<'b> for alloc::vec::Vec<u8> {
    fn from_wire(bytes: &'b [u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
}

/// The envelope of every message. See the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Envelope<P> {
    /// The device that sent, or is addressed by, the message.
    pub device: DeviceId,
    /// Per-device, per-direction sequence number (wraps).
    pub seq: u32,
    /// The message id: stable across retransmissions.
    pub id: MessageId,
    /// Requested delivery guarantee.
    pub qos: QoS,
    /// What the payload is.
    pub kind: MessageKind,
    /// The payload, usually CBOR of the kind's payload type.
    pub payload: P,
}

/// An envelope borrowing its payload: zero-copy decoding on devices.
pub type EnvelopeRef<'a> = Envelope<&'a [u8]>;
/// An envelope owning up to `N` payload bytes, without an allocator.
pub type EnvelopeBuf<const N: usize> = Envelope<heapless::Vec<u8, N>>;
/// An envelope owning its payload on the heap.
#[cfg(feature = "alloc")]
pub type OwnedEnvelope = Envelope<alloc::vec::Vec<u8>>;

const KEY_DEVICE: u8 = 0;
const KEY_SEQ: u8 = 1;
const KEY_ID: u8 = 2;
const KEY_QOS: u8 = 3;
const KEY_KIND: u8 = 4;
const KEY_PAYLOAD: u8 = 5;
const FIELDS: u64 = 6;

impl<P: AsRef<[u8]>> Envelope<P> {
    /// A view of this envelope borrowing its payload.
    pub fn as_ref(&self) -> EnvelopeRef<'_> {
        Envelope {
            device: self.device,
            seq: self.seq,
            id: self.id,
            qos: self.qos,
            kind: self.kind,
            payload: self.payload.as_ref(),
        }
    }

    /// The exact number of bytes [`Envelope::encode_into`] writes.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }

    /// Encodes canonical CBOR into `buf`, returning the number of bytes written.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        codec::encode_into(self, buf)
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, EncodeError> {
        codec::encode_to_vec(self)
    }
}

impl<'b, P: Payload<'b>> Envelope<P> {
    /// Decodes an envelope that spans all of `bytes`. Never panics.
    pub fn decode(bytes: &'b [u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

impl<C, P: AsRef<[u8]>> Encode<C> for Envelope<P> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(FIELDS)?;
        e.u8(KEY_DEVICE)?.encode_with(self.device, ctx)?;
        e.u8(KEY_SEQ)?.u32(self.seq)?;
        e.u8(KEY_ID)?.u32(self.id.0)?;
        e.u8(KEY_QOS)?.u8(self.qos.code())?;
        e.u8(KEY_KIND)?.u8(self.kind.code())?;
        e.u8(KEY_PAYLOAD)?.bytes(self.payload.as_ref())?;
        Ok(())
    }
}

impl<C, P: AsRef<[u8]>> CborLen<C> for Envelope<P> {
    // Sums of the lengths of in-memory values cannot overflow `usize`.
    #[allow(clippy::arithmetic_side_effects)]
    fn cbor_len(&self, ctx: &mut C) -> usize {
        let payload = self.payload.as_ref();
        // Keys 0..=5 and the map header are one byte each.
        let overhead = 1 + 6;
        overhead
            + self.device.cbor_len(ctx)
            + self.seq.cbor_len(ctx)
            + self.id.0.cbor_len(ctx)
            + self.qos.code().cbor_len(ctx)
            + self.kind.code().cbor_len(ctx)
            + payload.len().cbor_len(ctx)
            + payload.len()
    }
}

impl<'b, C, P: Payload<'b>> Decode<'b, C> for Envelope<P> {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let entries = d.map()?.ok_or_else(codec::invalid_value)?;
        let mut device = None;
        let mut seq = None;
        let mut id = None;
        let mut qos = None;
        let mut kind = None;
        let mut payload = None;
        let mut previous_key: Option<u64> = None;
        for _ in 0..entries {
            let key = d.u64()?;
            // Canonical maps have strictly ascending keys; this also rejects duplicates.
            if previous_key.is_some_and(|p| key <= p) {
                return Err(codec::invalid_value());
            }
            previous_key = Some(key);
            match key {
                0 => device = Some(DeviceId::decode(d, ctx)?),
                1 => seq = Some(d.u32()?),
                2 => id = Some(MessageId(d.u32()?)),
                3 => {
                    let code = d.u8()?;
                    qos = Some(QoS::from_code(code).ok_or_else(codec::invalid_value)?);
                }
                4 => {
                    let code = d.u8()?;
                    kind = Some(MessageKind::from_code(code).ok_or_else(codec::invalid_value)?);
                }
                5 => {
                    let bytes = d.bytes()?;
                    payload = Some(P::from_wire(bytes).map_err(|e| match e {
                        DecodeError::CapacityExceeded => codec::capacity_exceeded(),
                        _ => codec::invalid_value(),
                    })?);
                }
                // Unknown keys from newer peers are skipped.
                _ => d.skip()?,
            }
        }
        Ok(Envelope {
            device: device.ok_or_else(codec::missing_field)?,
            seq: seq.ok_or_else(codec::missing_field)?,
            id: id.ok_or_else(codec::missing_field)?,
            qos: qos.ok_or_else(codec::missing_field)?,
            kind: kind.ok_or_else(codec::missing_field)?,
            payload: payload.ok_or_else(codec::missing_field)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnvelopeRef<'static> {
        Envelope {
            device: DeviceId::new("dev-1").unwrap(),
            seq: 300,
            id: MessageId(70_000),
            qos: QoS::ExactlyOnce,
            kind: MessageKind::Telemetry,
            payload: &[1, 2, 3],
        }
    }

    #[test]
    fn kind_codes_round_trip_and_are_unique() {
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(usize::from(k.code()), i + 1);
            assert_eq!(MessageKind::from_code(k.code()), Some(*k));
        }
        assert_eq!(MessageKind::from_code(0), None);
        assert_eq!(MessageKind::from_code(22), None);
    }

    #[test]
    fn encoding_is_exact_and_round_trips() {
        let env = sample();
        let mut buf = [0u8; 64];
        let n = env.encode_into(&mut buf).unwrap();
        assert_eq!(n, env.encoded_len());
        assert_eq!(EnvelopeRef::decode(&buf[..n]).unwrap(), env);
        let owned: EnvelopeBuf<8> = Envelope::decode(&buf[..n]).unwrap();
        assert_eq!(owned.as_ref(), env);
        assert_eq!(
            EnvelopeBuf::<2>::decode(&buf[..n]),
            Err(DecodeError::CapacityExceeded)
        );
    }

    #[test]
    fn short_buffer_is_an_error() {
        let env = sample();
        let mut buf = [0u8; 8];
        assert!(matches!(
            env.encode_into(&mut buf),
            Err(EncodeError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn unknown_codes_missing_and_duplicate_fields_are_rejected() {
        let env = sample();
        let mut buf = [0u8; 64];
        let n = env.encode_into(&mut buf).unwrap();
        // The kind code sits right after key 4 (0x04).
        let mut bad = buf;
        let pos = bad[..n].windows(2).position(|w| w == [0x04, 0x02]).unwrap();
        bad[pos + 1] = 0x17; // kind 23 does not exist
        assert_eq!(
            EnvelopeRef::decode(&bad[..n]),
            Err(DecodeError::InvalidValue)
        );

        // A map that lacks the payload.
        let mut short = [0u8; 64];
        let mut e = Encoder::new(&mut short[..]);
        e.map(1).unwrap().u8(0).unwrap().str("dev").unwrap();
        assert_eq!(
            EnvelopeRef::decode(&short[..6]),
            Err(DecodeError::MissingField)
        );

        // Duplicate key 0.
        let mut dup = [0u8; 64];
        let mut e = Encoder::new(&mut dup[..]);
        e.map(2)
            .unwrap()
            .u8(0)
            .unwrap()
            .str("a")
            .unwrap()
            .u8(0)
            .unwrap()
            .str("b")
            .unwrap();
        assert_eq!(
            EnvelopeRef::decode(&dup[..7]),
            Err(DecodeError::InvalidValue)
        );
    }

    #[test]
    fn unknown_keys_are_skipped() {
        let env = sample();
        let mut buf = [0u8; 80];
        let mut e = Encoder::new(&mut buf[..]);
        e.map(7).unwrap();
        e.u8(0).unwrap().str("dev-1").unwrap();
        e.u8(1).unwrap().u32(300).unwrap();
        e.u8(2).unwrap().u32(70_000).unwrap();
        e.u8(3).unwrap().u8(2).unwrap();
        e.u8(4).unwrap().u8(2).unwrap();
        e.u8(5).unwrap().bytes(&[1, 2, 3]).unwrap();
        e.u8(9)
            .unwrap()
            .array(2)
            .unwrap()
            .u8(1)
            .unwrap()
            .str("x")
            .unwrap();
        let n = 80 - e.writer().len();
        assert_eq!(EnvelopeRef::decode(&buf[..n]).unwrap(), env);
    }
}
