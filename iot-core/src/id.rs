//! Identities: devices, tenants and clock nodes.
//!
//! Identifiers are fixed-capacity ASCII labels stored inline (no allocation), `Copy`, and
//! restricted to `A-Z a-z 0-9 - _ . :` so they are safe in topics, file names and logs.
//!
//! ```
//! use iot_core::id::DeviceId;
//!
//! // The device lab derives the id from the Wi-Fi MAC address.
//! let id = DeviceId::from_mac([0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]);
//! assert_eq!(id.as_str(), "240AC4123456");
//!
//! let parsed: DeviceId = "esp32c3-240AC4123456".parse()?;
//! assert_eq!(parsed.to_string(), "esp32c3-240AC4123456");
//! assert!("bad id!".parse::<DeviceId>().is_err());
//! # Ok::<(), iot_core::id::IdError>(())
//! ```

use core::fmt;
use core::str::FromStr;

use crate::error::{Error, ErrorKind};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than its fixed capacity.
    #[error("identifier is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
        /// Capacity of the identifier type.
        max: usize,
    },
    /// The identifier contains a byte outside `A-Z a-z 0-9 - _ . :`.
    #[error("identifier has an invalid character at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first invalid character.
        position: usize,
    },
}

impl Error for IdError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLong { .. } => ErrorKind::Capacity,
            Self::Empty | Self::InvalidCharacter { .. } => ErrorKind::InvalidInput,
        }
    }
}

const fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

/// A validated ASCII label of at most `N` bytes, stored inline. Unused bytes are always zero,
/// so the derived comparisons agree with string comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Label<const N: usize> {
    bytes: [u8; N],
    len: u8,
}

impl<const N: usize> Label<N> {
    // `i < input.len() <= max <= N` bounds every index; `const fn` cannot use `get`.
    #[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
    const fn parse(input: &[u8]) -> Result<Self, IdError> {
        // Capacities above 255 cannot be represented by `len`; every public label is smaller.
        let max = if N > u8::MAX as usize {
            u8::MAX as usize
        } else {
            N
        };
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > max {
            return Err(IdError::TooLong {
                len: input.len(),
                max,
            });
        }
        let mut bytes = [0u8; N];
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if !is_label_byte(b) {
                return Err(IdError::InvalidCharacter { position: i });
            }
            bytes[i] = b;
            i += 1;
        }
        Ok(Self {
            bytes,
            len: input.len() as u8,
        })
    }

    fn as_str(&self) -> &str {
        let used = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        // Only ASCII bytes are ever stored.
        core::str::from_utf8(used).unwrap_or("")
    }
}

macro_rules! label_type {
    ($(#[$meta:meta])* $name:ident, $cap:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Label<{ $cap }>);

        impl $name {
            /// Maximum length in bytes.
            pub const MAX_LEN: usize = $cap;

            /// Validates `s` and stores it inline. Usable in `const` contexts.
            pub const fn new(s: &str) -> Result<Self, IdError> {
                match Label::parse(s.as_bytes()) {
                    Ok(label) => Ok(Self(label)),
                    Err(e) => Err(e),
                }
            }

            /// Validates raw bytes (for example from a wire format).
            pub const fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
                match Label::parse(bytes) {
                    Ok(label) => Ok(Self(label)),
                    Err(e) => Err(e),
                }
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{=str}", self.as_str())
            }
        }

        impl<C> minicbor::Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _ctx: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.str(self.as_str())?;
                Ok(())
            }
        }

        impl<'b, C> minicbor::Decode<'b, C> for $name {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _ctx: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                let s = d.str()?;
                Self::new(s).map_err(|_| {
                    minicbor::decode::Error::message(concat!("invalid ", stringify!($name)))
                })
            }
        }

        impl<C> minicbor::CborLen<C> for $name {
            fn cbor_len(&self, ctx: &mut C) -> usize {
                self.as_str().cbor_len(ctx)
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " string"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::new(v).map_err(E::custom)
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}

label_type!(
    /// A device's identity: at most 48 bytes of `A-Z a-z 0-9 - _ . :`.
    ///
    /// Derive it from the 6-byte MAC address with [`DeviceId::from_mac`] (as the device lab
    /// does) or from a provisioned serial with [`DeviceId::new`].
    DeviceId,
    48
);

label_type!(
    /// A tenant's identity: at most 32 bytes of `A-Z a-z 0-9 - _ . :`.
    TenantId,
    32
);

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl DeviceId {
    /// The id a device derives from its 6-byte MAC address: twelve upper-case hex digits.
    // Indices stay below 12 (of 48) and nibbles below 16; `const fn` cannot use `get`.
    #[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
    pub const fn from_mac(mac: [u8; 6]) -> Self {
        let mut bytes = [0u8; 48];
        let mut i = 0;
        while i < 6 {
            bytes[2 * i] = HEX[(mac[i] >> 4) as usize];
            bytes[2 * i + 1] = HEX[(mac[i] & 0x0f) as usize];
            i += 1;
        }
        Self(Label { bytes, len: 12 })
    }

    /// The MAC-derived id behind a prefix, for example `esp32c3-240AC4123456`.
    pub fn from_mac_with_prefix(prefix: &str, mac: [u8; 6]) -> Result<Self, IdError> {
        let suffix = Self::from_mac(mac);
        let mut buf = [0u8; 48];
        let total = prefix.len().saturating_add(12);
        let out = buf.get_mut(..total).ok_or(IdError::TooLong {
            len: total,
            max: 48,
        })?;
        let (head, tail) = out.split_at_mut(prefix.len());
        head.copy_from_slice(prefix.as_bytes());
        tail.copy_from_slice(suffix.as_str().as_bytes());
        Self::from_bytes(out)
    }
}

/// The node identity used as the hybrid-logical-clock tie-break and as a writer id in merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct NodeId(pub u32);

impl NodeId {
    /// A stable node id derived from a device id (32-bit FNV-1a of its bytes).
    ///
    /// Two devices can collide; a backend that needs uniqueness assigns node ids explicitly.
    pub fn from_device_id(id: &DeviceId) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for &b in id.as_str().as_bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Self(hash)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{:08x}", self.0)
    }
}

impl<C> minicbor::Encode<C> for NodeId {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.u32(self.0)?;
        Ok(())
    }
}

impl<'b, C> minicbor::Decode<'b, C> for NodeId {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        d.u32().map(Self)
    }
}

impl<C> minicbor::CborLen<C> for NodeId {
    fn cbor_len(&self, ctx: &mut C) -> usize {
        self.0.cbor_len(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn mac_id_is_upper_hex() {
        let id = DeviceId::from_mac([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01]);
        assert_eq!(id.as_str(), "DEADBEEF0001");
        let prefixed = DeviceId::from_mac_with_prefix("lab-", [0, 1, 2, 3, 4, 5]).unwrap();
        assert_eq!(prefixed.as_str(), "lab-000102030405");
    }

    #[test]
    fn prefix_too_long_is_an_error() {
        let prefix = "p".repeat(40);
        assert_eq!(
            DeviceId::from_mac_with_prefix(&prefix, [0; 6]),
            Err(IdError::TooLong { len: 52, max: 48 })
        );
        assert!(matches!(
            DeviceId::from_mac_with_prefix("bad prefix ", [0; 6]),
            Err(IdError::InvalidCharacter { position: 3 })
        ));
    }

    #[test]
    fn invalid_ids_are_rejected_with_reason() {
        assert_eq!(DeviceId::new(""), Err(IdError::Empty));
        assert_eq!(
            DeviceId::new("a b"),
            Err(IdError::InvalidCharacter { position: 1 })
        );
        assert_eq!(
            DeviceId::new("é"),
            Err(IdError::InvalidCharacter { position: 0 })
        );
        let long = "x".repeat(49);
        assert_eq!(
            DeviceId::new(&long),
            Err(IdError::TooLong { len: 49, max: 48 })
        );
        assert!(DeviceId::new(&long[..48]).is_ok());
        assert_eq!(
            TenantId::new(&long[..33]).unwrap_err().kind(),
            ErrorKind::Capacity
        );
    }

    #[test]
    fn ordering_matches_string_ordering() {
        let names = ["b", "ab", "abc", "a", "B", "a-1"];
        for x in names {
            for y in names {
                let (a, b) = (DeviceId::new(x).unwrap(), DeviceId::new(y).unwrap());
                assert_eq!(a.cmp(&b), x.cmp(y), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn node_id_from_device_is_stable_and_distinguishes() {
        let a = NodeId::from_device_id(&DeviceId::new("dev-a").unwrap());
        let b = NodeId::from_device_id(&DeviceId::new("dev-b").unwrap());
        assert_ne!(a, b);
        assert_eq!(a, NodeId::from_device_id(&DeviceId::new("dev-a").unwrap()));
        assert_eq!(NodeId(0xab).to_string(), "node-000000ab");
    }
}
