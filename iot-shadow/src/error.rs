//! The one error type of the shadow engine.
//!
//! Every variant is distinct so a backend can answer with a precise rejection, and every
//! variant is returned *before* anything mutates: a rejected update leaves the document, its
//! version and the client-token cache byte-identical.

use iot_core::codec::{DecodeError, EncodeError};
use iot_core::{Error, ErrorKind};

/// Why a shadow operation was refused. Nothing was changed when one of these is returned.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ShadowError {
    /// A write is stamped further ahead of the receiver's clock than the drift bound
    /// ([`Limits::max_drift_ms`](crate::Limits::max_drift_ms)); nothing changed.
    #[error("a write is stamped beyond the clock-drift bound")]
    ClockDrift,
    /// The update expected another document version (optimistic concurrency).
    #[error("version conflict: expected {expected}, document is at {current}")]
    Conflict {
        /// The version the update was written against.
        expected: u64,
        /// The document's current version; re-read and retry against it.
        current: u64,
    },
    /// Two writes carry the same (HLC, node) stamp but different contents: one node issued
    /// two different writes at the same instant, which a correct HLC never does.
    #[error("two different writes share one (HLC, node) stamp")]
    ContradictoryWrite,
    /// The same leaf is written twice in one update.
    #[error("a leaf is written twice in one update")]
    DuplicateWrite,
    /// A leaf path is a prefix of another leaf path in the same section (`a` and `a.b`).
    #[error("a leaf path is also an object path")]
    PathConflict,
    /// The encoded document would exceed the configured size.
    #[error("document would be {size} bytes, at most {max} are allowed")]
    TooLarge {
        /// Projected encoded size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A path is nested deeper than allowed.
    #[error("path depth {depth} exceeds {max}")]
    TooDeep {
        /// Depth of the offending path.
        depth: usize,
        /// The configured limit.
        max: usize,
    },
    /// A path segment (key) is longer than allowed.
    #[error("key of {len} bytes exceeds {max}")]
    KeyTooLong {
        /// Length of the offending key.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The client token is longer than allowed.
    #[error("client token of {len} bytes exceeds {max}")]
    TokenTooLong {
        /// Length of the offending token.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The document would hold more leaves than the configured limit.
    #[error("document would hold {count} leaves, at most {max} are allowed")]
    TooManyFields {
        /// Projected number of leaves.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The fixed-capacity store cannot hold another leaf.
    #[error("store capacity of {capacity} leaves exhausted")]
    StoreFull {
        /// Capacity of the store.
        capacity: usize,
    },
    /// The caller's write sink is full: it took `written` writes and refused the next.
    #[error("write sink full after {written} writes")]
    SinkFull {
        /// Writes the sink took before it was full.
        written: usize,
    },
    /// The document version cannot grow any further.
    #[error("document version exhausted")]
    VersionExhausted,
    /// A field id or path is not part of the device's typed state.
    #[error("unknown field")]
    UnknownField,
    /// A value does not fit the field's type.
    #[error("value has the wrong type for the field")]
    TypeMismatch,
    /// The version store failed; the update was not applied.
    #[error("version storage failed")]
    Storage,
    /// The hybrid logical clock refused to stamp.
    #[error("clock error")]
    Clock,
    /// Bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A value could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl Error for ShadowError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Conflict { .. } | Self::ContradictoryWrite => ErrorKind::Conflict,
            Self::DuplicateWrite
            | Self::PathConflict
            | Self::TooDeep { .. }
            | Self::KeyTooLong { .. }
            | Self::TokenTooLong { .. }
            | Self::UnknownField
            | Self::TypeMismatch => ErrorKind::InvalidInput,
            Self::TooLarge { .. }
            | Self::TooManyFields { .. }
            | Self::StoreFull { .. }
            | Self::SinkFull { .. }
            | Self::VersionExhausted => ErrorKind::Capacity,
            Self::Storage => ErrorKind::Storage,
            Self::Clock | Self::ClockDrift => ErrorKind::Clock,
            Self::Decode(e) => e.kind(),
            Self::Encode(e) => e.kind(),
        }
    }
}

impl From<iot_core::time::ClockError> for ShadowError {
    fn from(_: iot_core::time::ClockError) -> Self {
        Self::Clock
    }
}
