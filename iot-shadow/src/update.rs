//! Writes and updates: what a client sends to change a shadow.

use crate::path::Path;
use crate::stamp::Stamp;
use crate::store::{Leaf, Section};
use crate::value::Value;

/// One stamped write of one leaf. `Value::Null` removes the leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Write {
    /// Which half of the shadow.
    pub section: Section,
    /// Which leaf.
    pub path: Path,
    /// The new value, or `Null` to remove.
    pub value: Value,
    /// Who writes, when, under which policy.
    pub stamp: Stamp,
}

impl Write {
    /// A write from its parts.
    pub const fn new(section: Section, path: Path, value: Value, stamp: Stamp) -> Self {
        Self {
            section,
            path,
            value,
            stamp,
        }
    }

    /// The leaf this write stores.
    pub fn leaf(&self) -> Leaf {
        Leaf {
            value: self.value.clone(),
            stamp: self.stamp,
        }
    }
}

/// An update request: stamped writes, optionally guarded by the version the client last saw
/// and identified by a client token for idempotent retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct Update<'a> {
    /// Echoed in the answer; a repeat within the window replays the first answer.
    pub client_token: Option<&'a str>,
    /// Reject with [`ShadowError::Conflict`](crate::ShadowError::Conflict) unless the
    /// document is at exactly this version.
    pub expected_version: Option<u64>,
    /// The writes; each leaf at most once.
    pub writes: &'a [Write],
}

impl<'a> Update<'a> {
    /// An unguarded update without a token.
    pub const fn new(writes: &'a [Write]) -> Self {
        Self {
            client_token: None,
            expected_version: None,
            writes,
        }
    }

    /// Adds a client token.
    pub const fn with_token(mut self, token: &'a str) -> Self {
        self.client_token = Some(token);
        self
    }

    /// Guards the update with the version the client last saw.
    pub const fn expecting(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }
}

/// The result of an accepted update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Outcome {
    /// The document version after the update.
    pub version: u64,
    /// Whether the update changed the document (and so raised the version by one).
    pub changed: bool,
}

/// A decoded message with owned parts (backends; feature `alloc`).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// What the message is.
    pub kind: crate::cbor::Kind,
    /// Expected version (updates) or document version.
    pub version: Option<u64>,
    /// The client token.
    pub client_token: Option<alloc::string::String>,
    /// The leaves, desired first, each section in path order.
    pub writes: alloc::vec::Vec<Write>,
}

#[cfg(feature = "alloc")]
impl OwnedMessage {
    /// The header, borrowing the token.
    pub fn header(&self) -> crate::cbor::Header<'_> {
        crate::cbor::Header {
            kind: self.kind,
            version: self.version,
            client_token: self.client_token.as_deref(),
        }
    }

    /// The update this message requests (for `Update` messages).
    pub fn as_update(&self) -> Update<'_> {
        Update {
            client_token: self.client_token.as_deref(),
            expected_version: self.version,
            writes: &self.writes,
        }
    }

    /// Decodes canonical CBOR.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, iot_core::codec::DecodeError> {
        let mut writes = alloc::vec::Vec::new();
        let header = crate::cbor::decode_message(bytes, &mut writes)?;
        Ok(Self {
            kind: header.kind,
            version: header.version,
            client_token: header.client_token.map(alloc::borrow::ToOwned::to_owned),
            writes,
        })
    }

    /// Encodes canonical CBOR.
    pub fn to_cbor(&self) -> Result<alloc::vec::Vec<u8>, iot_core::codec::EncodeError> {
        crate::cbor::encode_writes_to_vec(&self.header(), &self.writes)
    }
}
