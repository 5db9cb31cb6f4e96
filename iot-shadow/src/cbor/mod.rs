//! Canonical CBOR: the device wire format of documents, updates and notifications.
//!
//! Every message is one map with integer keys in ascending order; absent fields and empty
//! sections are omitted, so equal content encodes to equal bytes:
//!
//! | key | field | |
//! |---|---|---|
//! | 0 | kind | 0 update, 1 accepted, 2 delta, 3 document |
//! | 1 | version | the expected version of an update; the document version otherwise |
//! | 2 | client token | text, at most 64 bytes |
//! | 3 | clocks | `[default?, time₀, node₀, time₁, node₁, …]`: the distinct HLC timestamps of the leaves, ascending, after the optional default ref (present exactly when the array's length is odd) |
//! | 4 | desired | map of path text → leaf, in canonical path order |
//! | 5 | reported | same |
//!
//! A leaf is `[value, ref]` with `ref = clock_index << 3 | origin << 2 | policy`; a removal
//! (tombstone) is a leaf whose value is `null`. Leaves written by one update share one HLC
//! timestamp, so the table writes each timestamp once: this is what makes the encoding a
//! third of AWS's JSON.
//!
//! **Default ref.** A leaf whose ref equals the message's default ref and whose value is not
//! an array is written as the bare value instead of `[value, ref]` (2 bytes less, more for a
//! long ref). Array values are CBOR arrays, so they always keep the `[value, ref]` form, and
//! a leaf is bare exactly when it is not a CBOR array. A bare `null` is a removal stamped
//! with the default ref, exactly as `[null, default]` would be, so removals stay
//! unambiguous.
//!
//! The encoder picks the default from the content alone: among the 8 smallest distinct refs
//! of leaves that can be bare, the one that saves the most bytes
//! (`count × (1 + len(ref)) − len(ref)`, `len` being the CBOR length of the integer), ties to
//! the smallest ref; no default when no leaf can be bare. Every eligible leaf is then bare.
//! So equal content still encodes to equal bytes, a default always makes the message shorter,
//! and it is the best choice whenever a message has at most 8 distinct refs (found in one
//! pass with fixed storage). The default leads the clock table (key 3) rather than having a
//! key of its own: it must precede the sections (keys 4 and 5) for streaming decoding, keys
//! 0–3 are taken, and the odd length costs no byte where a key would cost one. Messages
//! without a default are encoded exactly as before this form existed.
//!
//! The decoder accepts both forms (a bare leaf only when the message has a default), rejects
//! a default whose clock index is out of range and leaf arrays of other lengths or of
//! indefinite length.
//!
//! Integers use their shortest form; floats are 32-bit when exact, else 64-bit. Decoding
//! checks order and bounds and never panics.

//!
//! Its parts: message headers and sinks (this module), the clock table and default ref that
//! compress a message (`compress`), the encoder (`encode`) and the decoder (`decode`).

use crate::path::Path;
use crate::stamp::Stamp;
use crate::update::Write;
use crate::value::Value;

mod compress;
mod decode;
mod encode;

pub(crate) use compress::LeafCost;
pub use decode::decode_message;
#[cfg(feature = "alloc")]
pub use encode::encode_writes_to_vec;
pub use encode::{Sorted, encode_into, encode_writes, encoded_len};
pub(crate) use encode::{leaf_item, message_len};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Kind {
    /// A client's update request.
    Update = 0,
    /// The leaves an accepted update touched, at the new version (the ack).
    Accepted = 1,
    /// Desired leaves that differ from reported, at the current version.
    Delta = 2,
    /// The whole document.
    Document = 3,
}

impl Kind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The kind for a wire code.
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Update,
            1 => Self::Accepted,
            2 => Self::Delta,
            3 => Self::Document,
            _ => return None,
        })
    }
}

/// The non-leaf fields of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header<'a> {
    /// What the message is.
    pub kind: Kind,
    /// Expected version (updates, optional) or document version (everything else).
    pub version: Option<u64>,
    /// The client token, echoed from the update.
    pub client_token: Option<&'a str>,
}

/// Somewhere decoded writes go: a fixed-capacity vector on devices, a `Vec` on backends.
pub trait WriteSink {
    /// Appends a write; `Err(SinkFull)` when full.
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull>;
}

/// A [`WriteSink`] is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SinkFull;

impl<const N: usize> WriteSink for heapless::Vec<Write, N> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write).map_err(|_| SinkFull)
    }
}

impl WriteSink for heapless::VecView<Write> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write).map_err(|_| SinkFull)
    }
}

#[cfg(feature = "alloc")]
impl WriteSink for alloc::vec::Vec<Write> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write);
        Ok(())
    }
}

/// A leaf as the encoder sees it.
pub type Item<'a> = (&'a Path, &'a Value, &'a Stamp);

/// A decoded message with owned parts (backends; feature `alloc`).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// What the message is.
    pub kind: Kind,
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
    pub fn header(&self) -> Header<'_> {
        Header {
            kind: self.kind,
            version: self.version,
            client_token: self.client_token.as_deref(),
        }
    }

    /// The update this message requests (for `Update` messages).
    pub fn as_update(&self) -> crate::update::Update<'_> {
        crate::update::Update {
            client_token: self.client_token.as_deref(),
            expected_version: self.version,
            writes: &self.writes,
        }
    }

    /// Decodes canonical CBOR.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, iot_core::codec::DecodeError> {
        let mut writes = alloc::vec::Vec::new();
        let header = decode_message(bytes, &mut writes)?;
        Ok(Self {
            kind: header.kind,
            version: header.version,
            client_token: header.client_token.map(alloc::borrow::ToOwned::to_owned),
            writes,
        })
    }

    /// Encodes canonical CBOR.
    pub fn to_cbor(&self) -> Result<alloc::vec::Vec<u8>, iot_core::codec::EncodeError> {
        encode_writes_to_vec(&self.header(), &self.writes)
    }
}

#[cfg(test)]
mod tests;
