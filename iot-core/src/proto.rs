//! Protobuf (prost) messages mirroring `proto/iot.proto`, for backends that prefer protobuf.
//!
//! The definitions are written by hand (no `protoc` at build time) and a test compiles the
//! published schema with `protox` and checks every message, field number and type against
//! these structs in both directions.
//!
//! ```
//! use iot_core::message::{EnvelopeRef, MessageId, MessageKind, OwnedEnvelope, QoS};
//! use iot_core::proto;
//! use prost::Message;
//!
//! let env = EnvelopeRef {
//!     device: "dev-1".parse()?,
//!     seq: 1,
//!     id: MessageId(9),
//!     qos: QoS::AtLeastOnce,
//!     kind: MessageKind::Telemetry,
//!     payload: &[1, 2, 3],
//! };
//! let bytes = proto::Envelope::from(&env).encode_to_vec();
//! let back = OwnedEnvelope::try_from(proto::Envelope::decode(bytes.as_slice())?)?;
//! assert_eq!(back.as_ref(), env);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::codec::DecodeError;
use crate::id::{DeviceId, NodeId};
use crate::message::{self, OwnedEnvelope};
use crate::telemetry::{self, Measurement};
use crate::time;

/// Delivery guarantee (`iot.v1.QoS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum QoS {
    /// `QOS_AT_MOST_ONCE`
    AtMostOnce = 0,
    /// `QOS_AT_LEAST_ONCE`
    AtLeastOnce = 1,
    /// `QOS_EXACTLY_ONCE`
    ExactlyOnce = 2,
}

/// Message kind (`iot.v1.MessageKind`); codes equal [`message::MessageKind::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum MessageKind {
    Unspecified = 0,
    Heartbeat = 1,
    Telemetry = 2,
    HealthReport = 3,
    ShadowUpdate = 4,
    ShadowDelta = 5,
    ShadowAccepted = 6,
    ShadowRejected = 7,
    Command = 8,
    CommandAck = 9,
    ConfigUpdate = 10,
    RegistrationRequest = 11,
    RegistrationResponse = 12,
    OtaJob = 13,
    OtaProgress = 14,
    Decommission = 15,
    Ack = 16,
    ShadowGet = 17,
    ShadowDocument = 18,
    LifecycleReport = 19,
    OtaBlockRequest = 20,
    OtaBlock = 21,
}

/// `iot.v1.Envelope`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Device id.
    #[prost(string, tag = "1")]
    pub device: String,
    /// Sequence number.
    #[prost(uint32, tag = "2")]
    pub seq: u32,
    /// Message id.
    #[prost(uint32, tag = "3")]
    pub id: u32,
    /// Delivery guarantee.
    #[prost(enumeration = "QoS", tag = "4")]
    pub qos: i32,
    /// Message kind.
    #[prost(enumeration = "MessageKind", tag = "5")]
    pub kind: i32,
    /// Payload bytes.
    #[prost(bytes = "vec", tag = "6")]
    pub payload: Vec<u8>,
}

/// `iot.v1.HlcTimestamp`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct HlcTimestamp {
    /// Packed HLC time.
    #[prost(uint64, tag = "1")]
    pub time: u64,
    /// Issuing node.
    #[prost(uint32, tag = "2")]
    pub node: u32,
}

/// `iot.v1.CustomMeasurement`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct CustomMeasurement {
    /// Application-chosen quantity id.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Value.
    #[prost(float, tag = "2")]
    pub value: f32,
}

/// `iot.v1.Reading`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Reading {
    /// Milliseconds.
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
    /// The measured quantity.
    #[prost(oneof = "reading::Measurement", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub measurement: Option<reading::Measurement>,
}

/// Nested types of [`Reading`].
pub mod reading {
    /// `iot.v1.Reading.measurement`
    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum Measurement {
        /// Degrees Celsius.
        #[prost(float, tag = "2")]
        TemperatureCelsius(f32),
        /// Percent relative humidity.
        #[prost(float, tag = "3")]
        HumidityPercent(f32),
        /// Percent battery charge.
        #[prost(uint32, tag = "4")]
        BatteryPercent(u32),
        /// Battery volts.
        #[prost(float, tag = "5")]
        BatteryVolts(f32),
        /// Occupancy count.
        #[prost(uint32, tag = "6")]
        Occupancy(u32),
        /// RSSI in dBm.
        #[prost(sint32, tag = "7")]
        RssiDbm(i32),
        /// A user-defined quantity.
        #[prost(message, tag = "8")]
        Custom(super::CustomMeasurement),
    }
}

/// `iot.v1.Telemetry`
#[derive(Clone, PartialEq, prost::Message)]
pub struct Telemetry {
    /// Readings, oldest first.
    #[prost(message, repeated, tag = "1")]
    pub readings: Vec<Reading>,
}

impl<P: AsRef<[u8]>> From<&message::Envelope<P>> for Envelope {
    fn from(e: &message::Envelope<P>) -> Self {
        Self {
            device: e.device.as_str().to_string(),
            seq: e.seq,
            id: e.id.0,
            qos: i32::from(e.qos.code()),
            kind: i32::from(e.kind.code()),
            payload: e.payload.as_ref().to_vec(),
        }
    }
}

impl TryFrom<Envelope> for OwnedEnvelope {
    type Error = DecodeError;
    fn try_from(p: Envelope) -> Result<Self, DecodeError> {
        let code = |v: i32| u8::try_from(v).map_err(|_| DecodeError::InvalidValue);
        Ok(Self {
            device: DeviceId::new(&p.device).map_err(|_| DecodeError::InvalidValue)?,
            seq: p.seq,
            id: message::MessageId(p.id),
            qos: message::QoS::from_code(code(p.qos)?).ok_or(DecodeError::InvalidValue)?,
            kind: message::MessageKind::from_code(code(p.kind)?)
                .ok_or(DecodeError::InvalidValue)?,
            payload: p.payload,
        })
    }
}

impl From<time::HlcTimestamp> for HlcTimestamp {
    fn from(t: time::HlcTimestamp) -> Self {
        Self {
            time: t.time,
            node: t.node.0,
        }
    }
}

impl From<HlcTimestamp> for time::HlcTimestamp {
    fn from(t: HlcTimestamp) -> Self {
        Self {
            time: t.time,
            node: NodeId(t.node),
        }
    }
}

impl From<&telemetry::Reading> for Reading {
    fn from(r: &telemetry::Reading) -> Self {
        use reading::Measurement as P;
        let m = match r.measurement {
            Measurement::Temperature { celsius } => P::TemperatureCelsius(celsius),
            Measurement::Humidity { percent } => P::HumidityPercent(percent),
            Measurement::BatteryPercent { percent } => P::BatteryPercent(u32::from(percent)),
            Measurement::BatteryVoltage { volts } => P::BatteryVolts(volts),
            Measurement::Occupancy { count } => P::Occupancy(u32::from(count)),
            Measurement::Rssi { dbm } => P::RssiDbm(i32::from(dbm)),
            Measurement::Custom { id, value } => P::Custom(CustomMeasurement {
                id: u32::from(id),
                value,
            }),
        };
        Self {
            at_ms: r.at_ms,
            measurement: Some(m),
        }
    }
}

impl TryFrom<&Reading> for telemetry::Reading {
    type Error = DecodeError;
    fn try_from(r: &Reading) -> Result<Self, DecodeError> {
        use reading::Measurement as P;
        let bad = |_| DecodeError::InvalidValue;
        let m = match r.measurement.ok_or(DecodeError::MissingField)? {
            P::TemperatureCelsius(celsius) => Measurement::Temperature { celsius },
            P::HumidityPercent(percent) => Measurement::Humidity { percent },
            P::BatteryPercent(p) => Measurement::BatteryPercent {
                percent: u8::try_from(p).map_err(bad)?,
            },
            P::BatteryVolts(volts) => Measurement::BatteryVoltage { volts },
            P::Occupancy(c) => Measurement::Occupancy {
                count: u16::try_from(c).map_err(bad)?,
            },
            P::RssiDbm(d) => Measurement::Rssi {
                dbm: i16::try_from(d).map_err(bad)?,
            },
            P::Custom(c) => Measurement::Custom {
                id: u16::try_from(c.id).map_err(bad)?,
                value: c.value,
            },
        };
        m.validate().map_err(|_| DecodeError::InvalidValue)?;
        Ok(Self {
            at_ms: r.at_ms,
            measurement: m,
        })
    }
}

impl<const N: usize> From<&telemetry::Telemetry<N>> for Telemetry {
    fn from(t: &telemetry::Telemetry<N>) -> Self {
        Self {
            readings: t.readings.iter().map(Reading::from).collect(),
        }
    }
}

impl<const N: usize> TryFrom<&Telemetry> for telemetry::Telemetry<N> {
    type Error = DecodeError;
    fn try_from(t: &Telemetry) -> Result<Self, DecodeError> {
        let mut out = Self::new();
        for r in &t.readings {
            let reading = telemetry::Reading::try_from(r)?;
            out.readings
                .push(reading)
                .map_err(|_| DecodeError::CapacityExceeded)?;
        }
        Ok(out)
    }
}
