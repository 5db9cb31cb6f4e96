//! Leaf values: what a shadow field holds.
//!
//! A [`Value`] is a scalar (bool, integer, finite float, bounded text) or an array of scalars.
//! Arrays compare atomically, as a whole: changing one element changes the leaf. `Null` is the
//! absence of a value: writing it removes the field, and a stored `Null` is a tombstone that
//! lives only until the removal has been acknowledged.
//!
//! Values are fixed size (no allocation). Text holds at most [`TEXT_CAPACITY`] bytes and an
//! array's canonical CBOR encoding at most [`ARRAY_CAPACITY`] bytes.
//!
//! ```
//! use iot_shadow::value::{Scalar, Value};
//!
//! let interval = Value::from(30_i64);
//! assert_ne!(interval, Value::from(30.0)); // integers and floats are different values
//! let rgb = Value::array(&[Scalar::Int(255), Scalar::Int(128), Scalar::Int(0)])?;
//! assert_eq!(rgb.as_array().map(|a| a.len()), Some(3));
//! # Ok::<(), iot_shadow::value::ValueError>(())
//! ```

use core::fmt;

use iot_core::codec::invalid_value;

use iot_core::{Error, ErrorKind};
use minicbor::data::Type;
use minicbor::encode::Write;
use minicbor::{Decoder, Encoder};

use crate::slice_writer::SliceWriter;

/// Maximum length of a text value in bytes.
pub const TEXT_CAPACITY: usize = 48;
/// Maximum length of an array value's canonical CBOR encoding in bytes.
pub const ARRAY_CAPACITY: usize = 48;

/// Bounded text held inline (a one-byte length: 49 bytes in all).
pub type Text = heapless::String<TEXT_CAPACITY, u8>;

/// Why a value cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueError {
    /// Text longer than [`TEXT_CAPACITY`].
    #[error("text of {len} bytes exceeds {max}")]
    TextTooLong {
        /// Length of the text.
        len: usize,
        /// The capacity.
        max: usize,
    },
    /// An array whose encoding exceeds [`ARRAY_CAPACITY`].
    #[error("array encoding exceeds {max} bytes")]
    ArrayTooLarge {
        /// The capacity.
        max: usize,
    },
    /// NaN or an infinity: shadows hold finite numbers only.
    #[error("non-finite float")]
    NonFinite,
}

impl Error for ValueError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NonFinite => ErrorKind::InvalidInput,
            Self::TextTooLong { .. } | Self::ArrayTooLarge { .. } => ErrorKind::Capacity,
        }
    }
}

/// A finite `f64` with `-0.0` normalised to `0.0`, so bitwise equality is value equality.
#[derive(Clone, Copy, PartialEq, PartialOrd, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Float(f64);

impl Float {
    /// `None` for NaN and infinities.
    pub fn new(value: f64) -> Option<Self> {
        if value.is_finite() {
            Some(Self(if value == 0.0 { 0.0 } else { value }))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> f64 {
        self.0
    }
}

// Finite and normalised: the derived PartialEq is reflexive.
impl Eq for Float {}

impl fmt::Debug for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One array element (borrowed text).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Scalar<'a> {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// Text.
    Text(&'a str),
}

/// An array of scalars held as its canonical CBOR encoding (compared atomically).
#[derive(Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Array {
    len: u16,
    bytes: heapless::Vec<u8, ARRAY_CAPACITY, u8>,
}

impl Array {
    /// Builds an array from its elements.
    pub fn new(items: &[Scalar<'_>]) -> Result<Self, ValueError> {
        let len = u16::try_from(items.len()).map_err(|_| ValueError::ArrayTooLarge {
            max: ARRAY_CAPACITY,
        })?;
        let mut items = items.iter().copied();
        Self::build(len, &mut || Ok(items.next()))
    }

    /// Encodes `len` elements, each taken from `next`, into an array (one compiled body for
    /// [`Array::new`] and for decoding).
    #[inline(never)]
    fn build<'s>(
        len: u16,
        next: &mut dyn FnMut() -> Result<Option<Scalar<'s>>, ValueError>,
    ) -> Result<Self, ValueError> {
        // Encoded through the same slice writer as whole messages, so a device links one
        // copy of minicbor's encoder functions instead of a second one for a vector writer.
        let mut buf = [0u8; ARRAY_CAPACITY];
        let mut enc = Encoder::new(SliceWriter {
            buf: &mut buf,
            pos: 0,
        });
        let too_large = |_| ValueError::ArrayTooLarge {
            max: ARRAY_CAPACITY,
        };
        enc.array(u64::from(len)).map_err(too_large)?;
        while let Some(item) = next()? {
            match item {
                Scalar::Bool(b) => enc.bool(b).map(|_| ()),
                Scalar::Int(i) => enc.i64(i).map(|_| ()),
                Scalar::Float(f) => {
                    let f = Float::new(f).ok_or(ValueError::NonFinite)?;
                    encode_float(&mut enc, f)
                }
                Scalar::Text(t) => {
                    if t.len() > TEXT_CAPACITY {
                        return Err(ValueError::TextTooLong {
                            len: t.len(),
                            max: TEXT_CAPACITY,
                        });
                    }
                    enc.str(t).map(|_| ())
                }
            }
            .map_err(too_large)?;
        }
        let written = enc.writer().pos;
        let bytes = buf
            .get(..written)
            .and_then(|b| heapless::Vec::from_slice(b).ok())
            .ok_or(ValueError::ArrayTooLarge {
                max: ARRAY_CAPACITY,
            })?;
        Ok(Self { len, bytes })
    }

    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// `true` for the empty array.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The canonical CBOR encoding of the whole array.
    pub fn as_cbor(&self) -> &[u8] {
        &self.bytes
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = Scalar<'_>> + '_ {
        let mut d = Decoder::new(&self.bytes);
        // The encoding was produced by `new` or validated by `decode`: the header is there.
        let n = d.array().ok().flatten().unwrap_or(0);
        (0..n).map_while(move |_| decode_scalar(&mut d).ok())
    }

    /// Decodes an array of at most [`ARRAY_CAPACITY`] scalars and re-encodes it canonically.
    /// The elements are validated in a first pass and encoded from a second one, so no
    /// element is held in between; errors are those of decoding every element first.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, minicbor::decode::Error> {
        let n = d.array()?.ok_or_else(invalid_value)?;
        let start = d.clone();
        let mut count = 0usize;
        for _ in 0..n {
            decode_scalar(d)?;
            if count >= ARRAY_CAPACITY {
                return Err(iot_core::codec::capacity_exceeded());
            }
            count = count.saturating_add(1);
        }
        // At most `ARRAY_CAPACITY` (48) elements, checked above.
        let len = u16::try_from(count).map_err(|_| iot_core::codec::capacity_exceeded())?;
        let mut again = start;
        let mut left = count;
        let mut next = || {
            if left == 0 {
                return Ok(None);
            }
            left = left.saturating_sub(1);
            // The first pass decoded these elements: this cannot fail.
            decode_scalar(&mut again)
                .map(Some)
                .map_err(|_| ValueError::NonFinite)
        };
        Self::build(len, &mut next).map_err(|e| match e {
            ValueError::NonFinite => invalid_value(),
            _ => iot_core::codec::capacity_exceeded(),
        })
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A leaf value. `Null` means absent: writing it removes the field.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Value {
    /// No value: a removal, or a tombstone until the removal is acknowledged.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A finite float.
    Float(Float),
    /// Bounded text.
    Text(Text),
    /// An array of scalars, compared as a whole.
    Array(Array),
}

impl Value {
    /// Text value; fails if longer than [`TEXT_CAPACITY`].
    pub fn text(s: &str) -> Result<Self, ValueError> {
        let mut t = Text::new();
        t.push_str(s).map_err(|_| ValueError::TextTooLong {
            len: s.len(),
            max: TEXT_CAPACITY,
        })?;
        Ok(Self::Text(t))
    }

    /// Float value; fails for NaN and infinities.
    pub fn float(f: f64) -> Result<Self, ValueError> {
        Float::new(f).map(Self::Float).ok_or(ValueError::NonFinite)
    }

    /// Array value.
    pub fn array(items: &[Scalar<'_>]) -> Result<Self, ValueError> {
        Array::new(items).map(Self::Array)
    }

    /// `true` for `Null`.
    pub const fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// The boolean, if this is one.
    pub const fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub const fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if this is one.
    pub const fn as_float(&self) -> Option<f64> {
        match self {
            Self::Float(f) => Some(f.get()),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t.as_str()),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub const fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<f64> for Value {
    /// Non-finite floats become `Null`; use [`Value::float`] to get an error instead.
    fn from(f: f64) -> Self {
        Float::new(f).map_or(Self::Null, Self::Float)
    }
}

/// `x` as an `f32` if an `f32` holds it exactly (`as` rounds; the round trip tells).
pub(crate) fn exact_f32(x: f64) -> Option<f32> {
    #[allow(clippy::cast_possible_truncation)]
    let narrow = x as f32;
    if f64::from(narrow) == x {
        Some(narrow)
    } else {
        None
    }
}

/// Writes a float canonically: 32-bit when that is exact, otherwise 64-bit.
pub(crate) fn encode_float<W: Write>(
    e: &mut Encoder<W>,
    f: Float,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    let x = f.get();
    match exact_f32(x) {
        Some(narrow) => e.f32(narrow)?,
        None => e.f64(x)?,
    };
    Ok(())
}

fn decode_float(d: &mut Decoder<'_>) -> Result<Float, minicbor::decode::Error> {
    let x = match d.datatype()? {
        Type::F32 => f64::from(d.f32()?),
        _ => d.f64()?,
    };
    Float::new(x).ok_or_else(invalid_value)
}

fn decode_scalar<'b>(d: &mut Decoder<'b>) -> Result<Scalar<'b>, minicbor::decode::Error> {
    Ok(match d.datatype()? {
        Type::Bool => Scalar::Bool(d.bool()?),
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => Scalar::Int(d.i64()?),
        Type::F32 | Type::F64 => Scalar::Float(decode_float(d)?.get()),
        Type::String => {
            let s = d.str()?;
            if s.len() > TEXT_CAPACITY {
                return Err(iot_core::codec::capacity_exceeded());
            }
            Scalar::Text(s)
        }
        _ => return Err(invalid_value()),
    })
}

/// Writes a value in canonical CBOR.
pub(crate) fn encode_value<W: Write>(
    e: &mut Encoder<W>,
    v: &Value,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    match v {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Int(i) => {
            e.i64(*i)?;
        }
        Value::Float(f) => encode_float(e, *f)?,
        Value::Text(t) => {
            e.str(t)?;
        }
        Value::Array(a) => {
            e.writer_mut()
                .write_all(a.as_cbor())
                .map_err(minicbor::encode::Error::write)?;
        }
    }
    Ok(())
}

/// Reads a value written by [`encode_value`]; never panics.
pub(crate) fn decode_value(d: &mut Decoder<'_>) -> Result<Value, minicbor::decode::Error> {
    match d.datatype()? {
        Type::Null => {
            d.null()?;
            Ok(Value::Null)
        }
        Type::Array => Ok(Value::Array(Array::decode(d)?)),
        _ => Ok(match decode_scalar(d)? {
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::Int(i),
            Scalar::Float(f) => Value::Float(Float::new(f).ok_or_else(invalid_value)?),
            Scalar::Text(t) => Value::text(t).map_err(|_| iot_core::codec::capacity_exceeded())?,
        }),
    }
}

/// A minicbor writer appending to a fixed-capacity vector.
#[cfg(test)]
pub(crate) struct VecWriter<'a, const N: usize, L: heapless::LenType = usize>(
    pub(crate) &'a mut heapless::Vec<u8, N, L>,
);

/// The fixed-capacity vector is full.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Full;

#[cfg(test)]
impl<const N: usize, L: heapless::LenType> Write for VecWriter<'_, N, L> {
    type Error = Full;
    fn write_all(&mut self, buf: &[u8]) -> Result<(), Full> {
        self.0.extend_from_slice(buf).map_err(|_| Full)
    }
}

/// Encoded length of a value in bytes: what [`encode_value`] writes, computed from the
/// value (heads by [`uint_len`], floats as in [`encode_float`]).
pub(crate) fn value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        // A negative integer `i` is encoded as major type 1 with argument `-1 - i`, `!i`.
        Value::Int(i) => uint_len(if *i < 0 { !*i as u64 } else { *i as u64 }),
        // As in `encode_float`: f32 when it holds the value exactly.
        Value::Float(f) => {
            if exact_f32(f.get()).is_some() {
                5
            } else {
                9
            }
        }
        Value::Text(t) => text_len(t.len()),
        Value::Array(a) => a.as_cbor().len(),
    }
}

/// The CBOR length of an unsigned integer's head (and of every length prefix).
pub(crate) const fn uint_len(n: u64) -> usize {
    if n < 24 {
        1
    } else if n <= 0xff {
        2
    } else if n <= 0xffff {
        3
    } else if n <= 0xffff_ffff {
        5
    } else {
        9
    }
}

/// The CBOR length of a text of `len` bytes.
pub(crate) fn text_len(len: usize) -> usize {
    uint_len(len as u64).saturating_add(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) -> Value {
        let mut buf: heapless::Vec<u8, 128> = heapless::Vec::new();
        encode_value(&mut Encoder::new(VecWriter(&mut buf)), v).unwrap();
        assert_eq!(buf.len(), value_len(v));
        let mut d = Decoder::new(&buf);
        let back = decode_value(&mut d).unwrap();
        assert_eq!(d.position(), buf.len());
        back
    }

    #[test]
    fn values_round_trip_canonically() {
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Int(-1),
            Value::float(0.5).unwrap(),
            Value::float(0.1).unwrap(),
            Value::float(-0.0).unwrap(),
            Value::text("héllo").unwrap(),
            Value::array(&[
                Scalar::Int(1),
                Scalar::Text("x"),
                Scalar::Float(2.5),
                Scalar::Bool(false),
            ])
            .unwrap(),
        ] {
            assert_eq!(round_trip(&v), v);
        }
        // 0.5 fits f32 exactly (5 bytes); 0.1 does not (9 bytes).
        assert_eq!(value_len(&Value::float(0.5).unwrap()), 5);
        assert_eq!(value_len(&Value::float(0.1).unwrap()), 9);
        assert_eq!(Value::float(-0.0), Value::float(0.0));
    }

    mod length {
        use super::*;
        use proptest::prelude::*;

        fn encoded(v: &Value) -> usize {
            let mut buf: heapless::Vec<u8, 256> = heapless::Vec::new();
            encode_value(&mut Encoder::new(VecWriter(&mut buf)), v).unwrap();
            buf.len()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            /// The computed length of a value is the length `encode_value` writes, for every
            /// integer (both signs, every head size), float (f32-exact or not), text and array.
            #[test]
            fn computed_length_equals_encoded_length(
                int in prop_oneof![any::<i64>(), -300i64..300, Just(i64::MIN), Just(i64::MAX)],
                wide in any::<f64>(),
                narrow in any::<f32>(),
                text in "[a-zé]{0,48}",
                items in proptest::collection::vec(any::<i32>(), 0..6),
                flag in any::<bool>(),
            ) {
                let mut values = std::vec![Value::Null, Value::Bool(flag), Value::Int(int)];
                values.extend(Value::float(wide).ok());
                values.extend(Value::float(f64::from(narrow)).ok());
                values.extend(Value::text(&text).ok());
                let scalars: std::vec::Vec<Scalar<'_>> =
                    items.iter().map(|i| Scalar::Int(i64::from(*i))).collect();
                values.extend(Value::array(&scalars).ok());
                for v in &values {
                    prop_assert_eq!(value_len(v), encoded(v), "{:?}", v);
                }
            }
        }
    }

    #[test]
    fn bounds_are_errors() {
        let long = "x".repeat(TEXT_CAPACITY + 1);
        assert!(matches!(
            Value::text(&long),
            Err(ValueError::TextTooLong { .. })
        ));
        assert_eq!(Value::float(f64::NAN), Err(ValueError::NonFinite));
        let many = [Scalar::Float(0.1); 8];
        assert!(matches!(
            Value::array(&many),
            Err(ValueError::ArrayTooLarge { .. })
        ));
        assert_eq!(Value::from(f64::INFINITY), Value::Null);
    }

    #[test]
    fn arrays_compare_atomically() {
        let a = Value::array(&[Scalar::Int(1), Scalar::Int(2)]).unwrap();
        let b = Value::array(&[Scalar::Int(1), Scalar::Int(3)]).unwrap();
        assert_ne!(a, b);
        let items: std::vec::Vec<_> = a.as_array().unwrap().iter().collect();
        assert_eq!(items, [Scalar::Int(1), Scalar::Int(2)]);
    }

    /// The CBOR array of `items` as any encoder writes it (not checked against capacities).
    fn raw_array(items: &[Scalar<'_>]) -> heapless::Vec<u8, 1024> {
        let mut buf: heapless::Vec<u8, 1024> = heapless::Vec::new();
        let mut e = Encoder::new(VecWriter(&mut buf));
        e.array(items.len() as u64).unwrap();
        for item in items {
            match *item {
                Scalar::Bool(b) => e.bool(b).map(|_| ()),
                Scalar::Int(i) => e.i64(i).map(|_| ()),
                Scalar::Float(f) => e.f64(f).map(|_| ()),
                Scalar::Text(t) => e.str(t).map(|_| ()),
            }
            .unwrap();
        }
        buf
    }

    fn decoded(bytes: &[u8]) -> Result<Array, iot_core::codec::DecodeError> {
        Array::decode(&mut Decoder::new(bytes)).map_err(Into::into)
    }

    /// Decoding an array validates every element, then re-encodes it canonically: the
    /// result equals `Array::new` of the elements, and each limit is the same error.
    #[test]
    fn arrays_decode_to_their_canonical_form_within_capacity() {
        use iot_core::codec::DecodeError;
        let items = [
            Scalar::Int(-300),
            Scalar::Float(0.5),
            Scalar::Text("ab"),
            Scalar::Bool(true),
        ];
        // 0.5 arrives as an f64 and is stored as the canonical f32.
        let bytes = raw_array(&items);
        let array = decoded(&bytes).unwrap();
        assert_eq!(array, Array::new(&items).unwrap());
        assert!(array.as_cbor().len() < bytes.len());
        assert_eq!(array.iter().collect::<std::vec::Vec<_>>(), items);

        // 46 one-byte elements fill the 48 bytes (with the two-byte header) exactly; 47 do
        // not, and 49 elements are over the element limit.
        let ones = [Scalar::Int(1); ARRAY_CAPACITY + 1];
        let fits = ARRAY_CAPACITY - 2;
        assert_eq!(decoded(&raw_array(&ones[..fits])).unwrap().len(), fits);
        for n in [fits + 1, ARRAY_CAPACITY + 1] {
            assert_eq!(
                decoded(&raw_array(&ones[..n])),
                Err(DecodeError::CapacityExceeded)
            );
        }
        // Few elements whose encoding is too long.
        let long = [Scalar::Text("0123456789012345678901234567890123456789"); 2];
        assert_eq!(
            decoded(&raw_array(&long)),
            Err(DecodeError::CapacityExceeded)
        );
        // A malformed element is invalid even after elements that fit.
        let mut bad = raw_array(&[Scalar::Int(1), Scalar::Int(2)]);
        let last = bad.len() - 1;
        bad[last] = 0xa0; // an empty map instead of 2
        assert!(decoded(&bad).is_err());
        assert_ne!(decoded(&bad), Err(DecodeError::CapacityExceeded));
    }

    #[test]
    fn nested_arrays_and_maps_are_rejected() {
        // [[1]] and {1: 2}
        for bytes in [&[0x81, 0x81, 0x01][..], &[0xa1, 0x01, 0x02]] {
            assert!(decode_value(&mut Decoder::new(bytes)).is_err());
        }
    }
}
