//! The payload types the protocol adds to those of `iot-lifecycle`, `iot-shadow` and
//! `iot-core`.

use iot_core::telemetry::Telemetry;
use iot_lifecycle::health::HealthStatus;
use iot_lifecycle::registration::RegistrationRequest;
use iot_lifecycle::state::State;
use iot_shadow::Write;
use iot_shadow::cbor::{Kind, SinkFull, WriteSink, decode_message};
use minicbor::{CborLen, Decode, Encode};

use crate::ProtocolError;

/// Readings one telemetry message may carry.
pub const MAX_READINGS: usize = 16;

/// A telemetry message: up to [`MAX_READINGS`] readings.
pub type TelemetryBatch = Telemetry<MAX_READINGS>;

/// A device asks to register (first without, then with the answer to the challenge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct Register {
    /// The protocol version the device speaks ([`crate::PROTOCOL_VERSION`]).
    #[n(0)]
    pub protocol: u16,
    /// The device class's shadow schema: an id the backend maps to the class's field
    /// policies, so both ends resolve concurrent writes with the same table (0: none
    /// declared; the backend then uses its default policy).
    #[n(1)]
    pub schema: u32,
    /// Identity, firmware and, in the second request, the signed answer.
    #[n(2)]
    pub request: RegistrationRequest,
}

/// The periodic liveness signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct Heartbeat {
    /// Heartbeat counter since boot.
    #[n(0)]
    pub seq: u32,
    /// Milliseconds since the agent started.
    #[n(1)]
    pub uptime_ms: u64,
    /// Lifecycle state.
    #[n(2)]
    pub state: State,
    /// Configuration version in force.
    #[n(3)]
    pub config_version: u32,
    /// Latest health verdict.
    #[n(4)]
    pub health: HealthStatus,
    /// What the device's telemetry filters did since boot (absent from devices that do not
    /// count): the edge tier's data reduction.
    #[n(5)]
    pub readings: Option<ReadingCounts>,
}

/// Telemetry readings a device sampled and sent since boot; the difference is what its
/// report-on-change filters held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct ReadingCounts {
    /// Readings taken (sent or held back).
    #[n(0)]
    pub sampled: u32,
    /// Readings sent.
    #[n(1)]
    pub sent: u32,
}

/// A device asks for the full shadow document if the backend's is newer than `version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct ShadowGet {
    /// The document version the device holds.
    #[n(0)]
    pub version: u64,
}

/// Why the backend refused a device's shadow update.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum ShadowRefusal {
    /// The update expected another version: fetch the document and retry.
    #[n(0)]
    Conflict,
    /// A limit (size, depth, leaves, key or token length) was exceeded.
    #[n(1)]
    Limit,
    /// A write is stamped further ahead of the backend's clock than the drift bound.
    #[n(2)]
    ClockDrift,
    /// The writes contradict each other or the document (same stamp, other value; a leaf
    /// that is also an object).
    #[n(3)]
    Invalid,
    /// The device may not write this (for example a write claiming the cloud's origin).
    #[n(4)]
    Forbidden,
}

/// The backend refused a device's shadow update; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct ShadowRejection {
    /// Why.
    #[n(0)]
    pub reason: ShadowRefusal,
    /// The backend's document version.
    #[n(1)]
    pub version: u64,
}

/// A shadow message in `iot-shadow`'s canonical CBOR form, checked when it is built: it
/// decodes, and its own kind (update, accepted, delta, document) is known, so the envelope's
/// kind and the message's kind can be compared. `P` holds the bytes: `&[u8]` when decoding,
/// `Vec<u8>` on a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowBytes<P> {
    kind: Kind,
    bytes: P,
}

/// Counts decoded writes and drops them: validating a message needs no storage.
struct Discard;

impl WriteSink for Discard {
    fn push_write(&mut self, _write: Write) -> Result<(), SinkFull> {
        Ok(())
    }
}

impl<P: AsRef<[u8]>> ShadowBytes<P> {
    /// Checks `bytes` and reads its kind.
    pub fn new(bytes: P) -> Result<Self, ProtocolError> {
        let header = decode_message(bytes.as_ref(), &mut Discard)
            .map_err(|_| ProtocolError::Malformed(iot_core::MessageKind::ShadowUpdate))?;
        Ok(Self {
            kind: header.kind,
            bytes,
        })
    }

    /// The message's own kind.
    pub const fn kind(&self) -> Kind {
        self.kind
    }

    /// The canonical CBOR bytes.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The bytes, as held.
    pub fn into_inner(self) -> P {
        self.bytes
    }
}

/// Bytes of image data in one [`OtaBlock`] at most.
pub const OTA_BLOCK_SIZE: usize = 256;

/// A device asks for the block of firmware image `version` that starts at `offset` (the
/// offset its updater expects next, so a lost block or a reboot resumes where it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct OtaBlockRequest {
    /// The image version (the job's).
    #[n(0)]
    pub version: u32,
    /// The first byte wanted.
    #[n(1)]
    pub offset: u32,
}

/// One block of a firmware image: at most [`OTA_BLOCK_SIZE`] bytes of image `version`
/// starting at `offset`. `P` holds the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaBlock<P> {
    /// The image version.
    pub version: u32,
    /// Where the data starts in the image.
    pub offset: u32,
    /// The data.
    pub data: P,
}

impl<C, P: AsRef<[u8]>> Encode<C> for OtaBlock<P> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(3)?
            .u8(0)?
            .u32(self.version)?
            .u8(1)?
            .u32(self.offset)?
            .u8(2)?
            .bytes(self.data.as_ref())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for OtaBlock<&'b [u8]> {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        // The canonical form only: a definite map with keys 0, 1, 2 in that order.
        if d.map()? != Some(3) {
            return Err(iot_core::codec::invalid_value());
        }
        let key = |want: u8, d: &mut minicbor::Decoder<'b>| {
            if d.u8()? == want {
                Ok(())
            } else {
                Err(iot_core::codec::invalid_value())
            }
        };
        key(0, d)?;
        let version = d.u32()?;
        key(1, d)?;
        let offset = d.u32()?;
        key(2, d)?;
        let data = d.bytes()?;
        if data.len() > OTA_BLOCK_SIZE {
            return Err(iot_core::codec::capacity_exceeded());
        }
        Ok(Self {
            version,
            offset,
            data,
        })
    }
}
