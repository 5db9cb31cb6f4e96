//! Canonical CBOR encoding into caller-provided buffers, and decoding that never panics.
//!
//! Every wire type in the `iot-*` crates implements minicbor's `Encode`, `Decode` and
//! `CborLen`. Maps use small integer keys in ascending order, integers use their shortest
//! form, lengths are definite and floats are always 32-bit with `-0.0` written as `0.0`: equal
//! values encode to equal bytes, so encodings can be compared, hashed and deduplicated.
//!
//! ```
//! use iot_core::codec::{decode, encode_into, encoded_len};
//! use iot_core::id::NodeId;
//! use iot_core::time::HlcTimestamp;
//!
//! let ts = HlcTimestamp::from_parts(1_700_000_000_000, 3, NodeId(9)).unwrap();
//! let mut buf = [0u8; 32];
//! let n = encode_into(&ts, &mut buf)?;
//! assert_eq!(n, encoded_len(&ts));
//! let back: HlcTimestamp = decode(&buf[..n])?;
//! assert_eq!(back, ts);
//! # Ok::<(), iot_core::codec::CodecError>(())
//! ```

use minicbor::encode::write::Cursor;
use minicbor::{CborLen, Decode, Encode};

use crate::error::{Error, ErrorKind};

/// Why a value could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The output buffer cannot hold the encoding; nothing meaningful was written.
    #[error("buffer holds {available} bytes, encoding needs {needed}")]
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
        /// Bytes the buffer offers.
        available: usize,
    },
    /// A value cannot be represented (for example a non-finite measurement).
    #[error("value cannot be encoded: {0}")]
    InvalidValue(&'static str),
}

impl Error for EncodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BufferTooSmall { .. } => ErrorKind::Capacity,
            Self::InvalidValue(_) => ErrorKind::Encode,
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input ended early")]
    Truncated,
    /// The bytes are not well-formed CBOR of the expected shape.
    #[error("malformed input")]
    Malformed,
    /// A well-formed field holds a value outside its domain.
    #[error("invalid value")]
    InvalidValue,
    /// An enumeration code is not known to this version.
    #[error("unknown variant")]
    UnknownVariant,
    /// A required field is missing.
    #[error("missing field")]
    MissingField,
    /// More elements than the fixed capacity holds.
    #[error("more elements than the capacity holds")]
    CapacityExceeded,
    /// Bytes remain after the value.
    #[error("trailing bytes after the value")]
    TrailingBytes,
}

impl Error for DecodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::CapacityExceeded => ErrorKind::Capacity,
            _ => ErrorKind::Decode,
        }
    }
}

/// Either side of a codec failure, for APIs that do both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CodecError {
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Decoding failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Error for CodecError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Encode(e) => e.kind(),
            Self::Decode(e) => e.kind(),
        }
    }
}

/// How this crate's decoders mark a minicbor error with a [`DecodeError`] classification,
/// without needing an allocator or `core::fmt`.
///
/// minicbor 2's `decode::Error` does not expose its message, so the marker is carried in the
/// error's position: a slice never exceeds `isize::MAX` bytes, so a real decode position is
/// never one of the three values at the top of `usize`. The messages only make the error
/// readable when it is displayed.
pub(crate) mod marker {
    pub(crate) const INVALID: usize = usize::MAX;
    pub(crate) const CAPACITY: usize = usize::MAX - 1;
    pub(crate) const MISSING: usize = usize::MAX - 2;
    pub(crate) const INVALID_MSG: &str = "iot:invalid-value";
    pub(crate) const CAPACITY_MSG: &str = "iot:capacity-exceeded";
    pub(crate) const MISSING_MSG: &str = "iot:missing-field";
}

/// A decode error carrying one of this crate's classifications.
pub fn invalid_value() -> minicbor::decode::Error {
    minicbor::decode::Error::message(marker::INVALID_MSG).at(marker::INVALID)
}

/// A decode error saying a fixed capacity was exceeded.
pub fn capacity_exceeded() -> minicbor::decode::Error {
    minicbor::decode::Error::message(marker::CAPACITY_MSG).at(marker::CAPACITY)
}

/// A decode error saying a required field was absent.
pub fn missing_field() -> minicbor::decode::Error {
    minicbor::decode::Error::message(marker::MISSING_MSG).at(marker::MISSING)
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        if e.is_end_of_input() {
            Self::Truncated
        } else if e.is_unknown_variant() {
            Self::UnknownVariant
        } else if e.is_missing_value() {
            Self::MissingField
        } else if e.is_message() {
            classify_message(&e)
        } else {
            Self::Malformed
        }
    }
}

/// Our markers by position (see [`marker`]); any other message is malformed input.
fn classify_message(e: &minicbor::decode::Error) -> DecodeError {
    match e.position() {
        Some(marker::CAPACITY) => DecodeError::CapacityExceeded,
        Some(marker::MISSING) => DecodeError::MissingField,
        Some(marker::INVALID) => DecodeError::InvalidValue,
        _ => DecodeError::Malformed,
    }
}

/// The exact number of bytes [`encode_into`] writes for `value`.
pub fn encoded_len<T: CborLen<()>>(value: &T) -> usize {
    minicbor::len(value)
}

/// Encodes `value` as canonical CBOR at the start of `buf`, returning the bytes written.
///
/// The length is checked first, so a short buffer is reported with the size it needs.
pub fn encode_into<T: Encode<()> + CborLen<()>>(
    value: &T,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let needed = encoded_len(value);
    if needed > buf.len() {
        return Err(EncodeError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    let mut cursor = Cursor::new(buf);
    minicbor::encode(value, &mut cursor).map_err(map_encode_error)?;
    Ok(cursor.position())
}

/// Encodes `value` into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_to_vec<T: Encode<()> + CborLen<()>>(
    value: &T,
) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let mut out = alloc::vec![0u8; encoded_len(value)];
    let n = encode_into(value, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn map_encode_error<E>(e: minicbor::encode::Error<E>) -> EncodeError {
    if e.is_write() {
        EncodeError::BufferTooSmall {
            needed: 0,
            available: 0,
        }
    } else {
        EncodeError::InvalidValue("value rejected by its encoder")
    }
}

/// Decodes one value that must span all of `bytes`; never panics, whatever the input.
pub fn decode<'b, T: Decode<'b, ()>>(bytes: &'b [u8]) -> Result<T, DecodeError> {
    let mut d = minicbor::Decoder::new(bytes);
    let value = T::decode(&mut d, &mut ())?;
    if d.position() != bytes.len() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(value)
}

/// Decodes one value from the front of `bytes`, returning it and the bytes consumed.
pub fn decode_prefix<'b, T: Decode<'b, ()>>(bytes: &'b [u8]) -> Result<(T, usize), DecodeError> {
    let mut d = minicbor::Decoder::new(bytes);
    let value = T::decode(&mut d, &mut ())?;
    Ok((value, d.position()))
}

/// Writes an `f32` canonically: always 32-bit, negative zero as zero, non-finite rejected.
pub fn encode_f32<W: minicbor::encode::Write>(
    e: &mut minicbor::Encoder<W>,
    value: f32,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    if !value.is_finite() {
        return Err(minicbor::encode::Error::message("non-finite float"));
    }
    e.f32(if value == 0.0 { 0.0 } else { value })?;
    Ok(())
}

/// Reads an `f32` written by [`encode_f32`], rejecting non-finite values.
pub fn decode_f32(d: &mut minicbor::Decoder<'_>) -> Result<f32, minicbor::decode::Error> {
    let v = d.f32()?;
    if v.is_finite() {
        Ok(if v == 0.0 { 0.0 } else { v })
    } else {
        Err(invalid_value())
    }
}

/// Length in bytes of an `f32` written by [`encode_f32`].
pub const F32_LEN: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffer_reports_needed_size() {
        let v: u32 = 1_000_000;
        let mut buf = [0u8; 2];
        assert_eq!(
            encode_into(&v, &mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: 5,
                available: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        assert_eq!(
            decode::<u32>(&[0x01, 0x02]),
            Err(DecodeError::TrailingBytes)
        );
        assert_eq!(decode::<u32>(&[0x1a, 0x00]), Err(DecodeError::Truncated));
        assert_eq!(decode::<u32>(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode::<u32>(&[0x60]), Err(DecodeError::Malformed));
    }

    #[test]
    fn our_markers_classify() {
        assert_eq!(
            DecodeError::from(invalid_value()),
            DecodeError::InvalidValue
        );
        assert_eq!(
            DecodeError::from(capacity_exceeded()),
            DecodeError::CapacityExceeded
        );
        assert_eq!(
            DecodeError::from(missing_field()),
            DecodeError::MissingField
        );
    }

    #[test]
    fn other_messages_are_malformed_even_at_a_real_position() {
        let at_start = minicbor::decode::Error::message("iot:invalid-value").at(0);
        assert_eq!(DecodeError::from(at_start), DecodeError::Malformed);
        let unplaced = minicbor::decode::Error::message("iot:capacity-exceeded");
        assert_eq!(DecodeError::from(unplaced), DecodeError::Malformed);
    }

    #[test]
    fn markers_survive_the_decoder() {
        struct Rejects;
        impl<'b> Decode<'b, ()> for Rejects {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _: &mut (),
            ) -> Result<Self, minicbor::decode::Error> {
                match d.u8()? {
                    0 => Err(invalid_value()),
                    1 => Err(capacity_exceeded()),
                    _ => Err(missing_field()),
                }
            }
        }
        assert_eq!(
            decode::<Rejects>(&[0x00]).err(),
            Some(DecodeError::InvalidValue)
        );
        assert_eq!(
            decode::<Rejects>(&[0x01]).err(),
            Some(DecodeError::CapacityExceeded)
        );
        assert_eq!(
            decode::<Rejects>(&[0x02]).err(),
            Some(DecodeError::MissingField)
        );
    }
}
