//! Protobuf (prost) messages mirroring `proto/shadow.proto` (feature `protobuf`).
//!
//! Written by hand (no `protoc`); a test compiles the published schema and checks these
//! structs against it. [`ShadowMessage`] converts to and from [`OwnedMessage`], the same
//! content the CBOR and JSON forms carry.
//!
//! ```
//! use iot_shadow::cbor::Kind;
//! use iot_shadow::proto::ShadowMessage;
//! use iot_shadow::{OwnedMessage, Path, Section, Stamp, Value, Write};
//! use prost::Message;
//!
//! let msg = OwnedMessage {
//!     kind: Kind::Update,
//!     version: Some(3),
//!     client_token: Some("t-1".into()),
//!     writes: vec![Write::new(Section::Reported, Path::new("led")?, Value::Bool(true), Stamp::default())],
//! };
//! let bytes = ShadowMessage::from(&msg).encode_to_vec();
//! let back = OwnedMessage::try_from(ShadowMessage::decode(bytes.as_slice())?)?;
//! assert_eq!(back, msg);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iot_core::codec::DecodeError;
use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;

use crate::cbor::Kind;
use crate::cbor::OwnedMessage;
use crate::path::Path;
use crate::policy::CLIENT_TOKEN_CAPACITY;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::Section;
use crate::update::Write;
use crate::value::{Scalar, Value};

/// `iot.v1.ShadowPolicy`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum ShadowPolicy {
    CloudWins = 0,
    DeviceWins = 1,
    LastWriterWins = 2,
    Custom = 3,
}

/// `iot.v1.ShadowOrigin`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum ShadowOrigin {
    Cloud = 0,
    Device = 1,
}

/// `iot.v1.ShadowMessageKind`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum ShadowMessageKind {
    Update = 0,
    Accepted = 1,
    Delta = 2,
    Document = 3,
}

/// `iot.v1.ShadowScalar`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShadowScalar {
    /// The element.
    #[prost(oneof = "shadow_scalar::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<shadow_scalar::Kind>,
}

/// Members of [`ShadowScalar`].
pub mod shadow_scalar {
    /// `iot.v1.ShadowScalar.kind`
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(missing_docs)]
    pub enum Kind {
        #[prost(bool, tag = "1")]
        BoolValue(bool),
        #[prost(sint64, tag = "2")]
        IntValue(i64),
        #[prost(double, tag = "3")]
        FloatValue(f64),
        #[prost(string, tag = "4")]
        TextValue(alloc::string::String),
    }
}

/// `iot.v1.ShadowArray`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShadowArray {
    /// Elements in order.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<ShadowScalar>,
}

/// `iot.v1.ShadowValue`; no member set means null.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShadowValue {
    /// The value.
    #[prost(oneof = "shadow_value::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<shadow_value::Kind>,
}

/// Members of [`ShadowValue`].
pub mod shadow_value {
    /// `iot.v1.ShadowValue.kind`
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(missing_docs)]
    pub enum Kind {
        #[prost(bool, tag = "1")]
        BoolValue(bool),
        #[prost(sint64, tag = "2")]
        IntValue(i64),
        #[prost(double, tag = "3")]
        FloatValue(f64),
        #[prost(string, tag = "4")]
        TextValue(alloc::string::String),
        #[prost(message, tag = "5")]
        ArrayValue(super::ShadowArray),
    }
}

/// `iot.v1.ShadowStamp`
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ShadowStamp {
    /// Packed HLC time.
    #[prost(uint64, tag = "1")]
    pub time: u64,
    /// Writer node.
    #[prost(uint32, tag = "2")]
    pub node: u32,
    /// Field policy.
    #[prost(enumeration = "ShadowPolicy", tag = "3")]
    pub policy: i32,
    /// Writer side.
    #[prost(enumeration = "ShadowOrigin", tag = "4")]
    pub origin: i32,
}

/// `iot.v1.ShadowLeaf`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShadowLeaf {
    /// Dotted path.
    #[prost(string, tag = "1")]
    pub path: String,
    /// Value; absent means null.
    #[prost(message, optional, tag = "2")]
    pub value: Option<ShadowValue>,
    /// Stamp.
    #[prost(message, optional, tag = "3")]
    pub stamp: Option<ShadowStamp>,
}

/// `iot.v1.ShadowMessage`
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShadowMessage {
    /// What the message is.
    #[prost(enumeration = "ShadowMessageKind", tag = "1")]
    pub kind: i32,
    /// Expected version (updates) or document version.
    #[prost(uint64, optional, tag = "2")]
    pub version: Option<u64>,
    /// Client token.
    #[prost(string, optional, tag = "3")]
    pub client_token: Option<String>,
    /// Desired leaves in path order.
    #[prost(message, repeated, tag = "4")]
    pub desired: Vec<ShadowLeaf>,
    /// Reported leaves in path order.
    #[prost(message, repeated, tag = "5")]
    pub reported: Vec<ShadowLeaf>,
}

impl From<&Value> for ShadowValue {
    fn from(v: &Value) -> Self {
        use shadow_value::Kind as K;
        let kind = match v {
            Value::Bool(b) => Some(K::BoolValue(*b)),
            Value::Int(i) => Some(K::IntValue(*i)),
            Value::Float(f) => Some(K::FloatValue(f.get())),
            Value::Text(t) => Some(K::TextValue(t.as_str().to_string())),
            Value::Array(a) => Some(K::ArrayValue(ShadowArray {
                items: a
                    .iter()
                    .map(|s| ShadowScalar {
                        kind: Some(match s {
                            Scalar::Bool(b) => shadow_scalar::Kind::BoolValue(b),
                            Scalar::Int(i) => shadow_scalar::Kind::IntValue(i),
                            Scalar::Float(f) => shadow_scalar::Kind::FloatValue(f),
                            Scalar::Text(t) => shadow_scalar::Kind::TextValue(t.to_string()),
                        }),
                    })
                    .collect(),
            })),
            _ => None,
        };
        Self { kind }
    }
}

impl TryFrom<&ShadowValue> for Value {
    type Error = DecodeError;
    fn try_from(v: &ShadowValue) -> Result<Self, DecodeError> {
        use shadow_value::Kind as K;
        let invalid = |_| DecodeError::InvalidValue;
        Ok(match &v.kind {
            None => Value::Null,
            Some(K::BoolValue(b)) => Value::Bool(*b),
            Some(K::IntValue(i)) => Value::Int(*i),
            Some(K::FloatValue(f)) => Value::float(*f).map_err(invalid)?,
            Some(K::TextValue(t)) => Value::text(t).map_err(invalid)?,
            Some(K::ArrayValue(a)) => {
                let mut items = Vec::with_capacity(a.items.len());
                for s in &a.items {
                    items.push(match &s.kind {
                        Some(shadow_scalar::Kind::BoolValue(b)) => Scalar::Bool(*b),
                        Some(shadow_scalar::Kind::IntValue(i)) => Scalar::Int(*i),
                        Some(shadow_scalar::Kind::FloatValue(f)) => Scalar::Float(*f),
                        Some(shadow_scalar::Kind::TextValue(t)) => Scalar::Text(t),
                        None => return Err(DecodeError::MissingField),
                    });
                }
                Value::array(&items).map_err(invalid)?
            }
        })
    }
}

impl From<&Stamp> for ShadowStamp {
    fn from(s: &Stamp) -> Self {
        Self {
            time: s.time,
            node: s.node.0,
            policy: i32::from(s.policy.code()),
            origin: i32::from(s.origin.code()),
        }
    }
}

impl TryFrom<&ShadowStamp> for Stamp {
    type Error = DecodeError;
    fn try_from(s: &ShadowStamp) -> Result<Self, DecodeError> {
        let code = |c: i32| u8::try_from(c).map_err(|_| DecodeError::UnknownVariant);
        let policy = Policy::from_code(code(s.policy)?).ok_or(DecodeError::UnknownVariant)?;
        let origin = Origin::from_code(code(s.origin)?).ok_or(DecodeError::UnknownVariant)?;
        Ok(Stamp::new(
            HlcTimestamp {
                time: s.time,
                node: NodeId(s.node),
            },
            policy,
            origin,
        ))
    }
}

fn leaf(w: &Write) -> ShadowLeaf {
    ShadowLeaf {
        path: w.path.as_str().to_string(),
        value: (!w.value.is_null()).then(|| ShadowValue::from(&w.value)),
        stamp: Some(ShadowStamp::from(&w.stamp)),
    }
}

impl From<&OwnedMessage> for ShadowMessage {
    fn from(m: &OwnedMessage) -> Self {
        let mut sorted: Vec<&Write> = m.writes.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let of = |section: Section| {
            sorted
                .iter()
                .filter(|w| w.section == section)
                .map(|w| leaf(w))
                .collect()
        };
        Self {
            kind: i32::from(m.kind.code()),
            version: m.version,
            client_token: m.client_token.clone(),
            desired: of(Section::Desired),
            reported: of(Section::Reported),
        }
    }
}

impl TryFrom<ShadowMessage> for OwnedMessage {
    type Error = DecodeError;
    fn try_from(m: ShadowMessage) -> Result<Self, DecodeError> {
        let kind = u64::try_from(m.kind)
            .ok()
            .and_then(Kind::from_code)
            .ok_or(DecodeError::UnknownVariant)?;
        if m.client_token
            .as_ref()
            .is_some_and(|t| t.len() > CLIENT_TOKEN_CAPACITY)
        {
            return Err(DecodeError::CapacityExceeded);
        }
        if kind != Kind::Update && m.version.is_none() {
            return Err(DecodeError::MissingField);
        }
        let mut writes = Vec::with_capacity(m.desired.len().saturating_add(m.reported.len()));
        for (section, leaves) in [
            (Section::Desired, &m.desired),
            (Section::Reported, &m.reported),
        ] {
            for l in leaves {
                let path = Path::new(&l.path).map_err(|_| DecodeError::InvalidValue)?;
                let value = l.value.as_ref().map_or(Ok(Value::Null), Value::try_from)?;
                let stamp = Stamp::try_from(l.stamp.as_ref().ok_or(DecodeError::MissingField)?)?;
                writes.push(Write::new(section, path, value, stamp));
            }
        }
        writes.sort_by(|a, b| (a.section, &a.path).cmp(&(b.section, &b.path)));
        Ok(Self {
            kind,
            version: m.version,
            client_token: m.client_token,
            writes,
        })
    }
}
