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
