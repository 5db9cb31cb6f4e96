//! Dotted leaf paths: `telemetry.interval` addresses `{"telemetry": {"interval": ...}}`.
//!
//! A [`Path`] is at most [`PATH_CAPACITY`] bytes of segments joined by `.`; each segment is
//! non-empty ASCII `A-Z a-z 0-9 _ -`. Depth and key length are further bounded by
//! [`Limits`](crate::Limits) (AWS's nesting limit of 6 by default).
//!
//! Paths order by length, then bytes: the order of their canonical CBOR encodings
//! (RFC 8949 §4.2.1), so iterating a store in path order writes canonical maps.
//!
//! ```
//! use iot_shadow::Path;
//! let p = Path::new("telemetry.interval")?;
//! assert_eq!(p.depth(), 2);
//! assert!(Path::new("telemetry")?.is_ancestor_of(&p));
//! assert!(Path::new("bad..path").is_err());
//! # Ok::<(), iot_shadow::path::PathError>(())
//! ```

use core::cmp::Ordering;
use core::fmt;

use iot_core::{Error, ErrorKind};

/// Maximum length of a path in bytes.
pub const PATH_CAPACITY: usize = 64;

/// Why a string is not a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// The path is longer than [`PATH_CAPACITY`].
    #[error("path of {len} bytes exceeds {max}")]
    TooLong {
        /// Length of the input.
        len: usize,
        /// The capacity.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty segment")]
    EmptySegment,
    /// A byte outside `A-Z a-z 0-9 _ -` and the separator.
    #[error("invalid character at byte {position}")]
    InvalidCharacter {
        /// Byte offset.
        position: usize,
    },
}

impl Error for PathError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLong { .. } => ErrorKind::Capacity,
            _ => ErrorKind::InvalidInput,
        }
    }
}

/// A validated dotted path.
///
/// Held in 67 bytes: the text with a one-byte length, and its depth and longest segment,
/// measured once by [`Path::new`] (the limit checks ask for them on every write).
#[derive(Clone)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Path {
    text: heapless::String<PATH_CAPACITY, u8>,
    depth: u8,
    longest_key: u8,
}

// The one-byte length and the cached measures hold any path.
const _: () = assert!(PATH_CAPACITY <= u8::MAX as usize);

impl Path {
    /// Validates `s`.
    pub fn new(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > PATH_CAPACITY {
            return Err(PathError::TooLong {
                len: s.len(),
                max: PATH_CAPACITY,
            });
        }
        // One scan validates and measures: depth (separators plus one) and longest segment.
        let too_long = PathError::TooLong {
            len: s.len(),
            max: PATH_CAPACITY,
        };
        let mut previous_dot = true;
        let (mut depth, mut longest_key, mut run) = (1u8, 0u8, 0u8);
        for (position, b) in s.bytes().enumerate() {
            if b == b'.' {
                if previous_dot {
                    return Err(PathError::EmptySegment);
                }
                previous_dot = true;
                depth = depth.saturating_add(1);
                run = 0;
            } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                previous_dot = false;
                run = run.saturating_add(1);
                longest_key = longest_key.max(run);
            } else {
                return Err(PathError::InvalidCharacter { position });
            }
        }
        if previous_dot {
            return Err(PathError::EmptySegment);
        }
        let mut text = heapless::String::new();
        text.push_str(s).map_err(|_| too_long)?;
        Ok(Self {
            text,
            depth,
            longest_key,
        })
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.text.split('.')
    }

    /// Number of segments.
    pub const fn depth(&self) -> usize {
        self.depth as usize
    }

    /// Length of the longest segment in bytes.
    pub const fn longest_key(&self) -> usize {
        self.longest_key as usize
    }

    /// `true` if `other` lies strictly inside this path (`a` is an ancestor of `a.b`).
    pub fn is_ancestor_of(&self, other: &Path) -> bool {
        let (a, b) = (self.text.as_bytes(), other.text.as_bytes());
        // The separator right after the prefix is the cheap test: check it first.
        b.get(a.len()) == Some(&b'.') && b.get(..a.len()).is_some_and(|prefix| prefix == a)
    }

    /// `true` if one of the paths is an ancestor of the other: they cannot both be leaves.
    pub fn overlaps(&self, other: &Path) -> bool {
        // Paths of one length are equal or disjoint; otherwise only the shorter can contain
        // the longer.
        match self.text.len().cmp(&other.text.len()) {
            Ordering::Less => self.is_ancestor_of(other),
            Ordering::Greater => other.is_ancestor_of(self),
            Ordering::Equal => false,
        }
    }
}

/// Byte order of two texts of equal length. On 64-bit targets the texts are read a word at a
/// time ([`cmp_words`]); on smaller ones (the devices) one out-of-line byte comparison
/// ([`cmp_bytes`], `memcmp`) replaces the word code, which the 64-bit shifts would make large
/// at every one of its inlined uses. Both give the same order.
#[cfg(target_pointer_width = "64")]
#[inline]
fn cmp_equal_len(a: &[u8], b: &[u8]) -> Ordering {
    cmp_words(a, b)
}

/// See the 64-bit variant.
#[cfg(not(target_pointer_width = "64"))]
#[inline]
fn cmp_equal_len(a: &[u8], b: &[u8]) -> Ordering {
    cmp_bytes(a, b)
}

/// Byte order of two texts, byte by byte (`memcmp`), compiled once.
#[cfg_attr(target_pointer_width = "64", allow(dead_code))]
#[inline(never)]
fn cmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    a.cmp(b)
}

/// Byte order of two texts of equal length, read as big-endian integers (so integer order
/// is byte order) instead of calling `memcmp`: a path is usually one or two words, and
/// stores compare paths on every lookup.
#[cfg(any(target_pointer_width = "64", test))]
#[inline]
fn cmp_words(a: &[u8], b: &[u8]) -> Ordering {
    if a.len() >= 8 {
        let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
        for (p, q) in (&mut x).zip(&mut y) {
            let (p, q) = (<[u8; 8]>::try_from(p), <[u8; 8]>::try_from(q));
            if let (Ok(p), Ok(q)) = (p, q) {
                let (p, q) = (u64::from_be_bytes(p), u64::from_be_bytes(q));
                if p != q {
                    return p.cmp(&q);
                }
            }
        }
        if x.remainder().is_empty() {
            return Ordering::Equal;
        }
        // The last 8 bytes overlap the words already equal: they order the remainder.
        let (p, q) = (a.last_chunk::<8>(), b.last_chunk::<8>());
        if let (Some(p), Some(q)) = (p, q) {
            return u64::from_be_bytes(*p).cmp(&u64::from_be_bytes(*q));
        }
    } else if a.len() >= 4 {
        let (p, q) = (a.first_chunk::<4>(), b.first_chunk::<4>());
        if let (Some(p), Some(q)) = (p, q) {
            let (p, q) = (u32::from_be_bytes(*p), u32::from_be_bytes(*q));
            if p != q {
                return p.cmp(&q);
            }
            let (p, q) = (a.last_chunk::<4>(), b.last_chunk::<4>());
            if let (Some(p), Some(q)) = (p, q) {
                return u32::from_be_bytes(*p).cmp(&u32::from_be_bytes(*q));
            }
        }
    }
    a.iter().cmp(b.iter())
}

// Depth and longest key are measures of the text: equal texts are equal paths.
impl PartialEq for Path {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.text.as_bytes(), other.text.as_bytes());
        a.len() == b.len() && cmp_equal_len(a, b) == Ordering::Equal
    }
}

impl Eq for Path {}

// Hashes what the derived `Hash` hashed (text, depth, longest key), so hashes stay as they
// were; the measures follow from the text, so equal paths hash equally.
impl core::hash::Hash for Path {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
        self.depth.hash(state);
        self.longest_key.hash(state);
    }
}

impl Ord for Path {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.text.as_bytes(), other.text.as_bytes());
        a.len().cmp(&b.len()).then_with(|| cmp_equal_len(a, b))
    }
}

impl PartialOrd for Path {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::str::FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, PathError> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Path {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, PathError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// The byte scans agree with the segment definitions on every valid path.
        #[test]
        fn depth_and_longest_key_are_those_of_the_segments(
            s in "[a-z0-9_-]{1,8}(\\.[A-Z0-9_-]{1,8}){0,6}"
        ) {
            let p = Path::new(&s).unwrap();
            proptest::prop_assert_eq!(p.depth(), p.segments().count());
            proptest::prop_assert_eq!(
                p.longest_key(),
                p.segments().map(str::len).max().unwrap_or(0)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Paths order by length, then bytes (the canonical CBOR key order), and overlap
        /// exactly when one is a segment-wise prefix of the other.
        #[test]
        fn order_is_length_then_bytes_and_overlap_is_segment_prefix(
            a in "[a-c]{1,3}(\\.[a-c_]{1,11}){0,3}",
            b in "[a-c]{1,3}(\\.[a-c_]{1,11}){0,3}",
        ) {
            let (p, q) = (Path::new(&a).unwrap(), Path::new(&b).unwrap());
            let expected = a.len().cmp(&b.len()).then_with(|| a.as_bytes().cmp(b.as_bytes()));
            proptest::prop_assert_eq!(p.cmp(&q), expected);
            proptest::prop_assert_eq!(p == q, a == b);
            let prefix = |x: &str, y: &str| y.len() > x.len() && y.starts_with(x)
                && y.as_bytes().get(x.len()) == Some(&b'.');
            proptest::prop_assert_eq!(p.overlaps(&q), prefix(&a, &b) || prefix(&b, &a));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The word-at-a-time comparison (64-bit targets) and the byte comparison (smaller
        /// targets) order equal-length texts alike, at every length around the word sizes;
        /// `b` is `a` with one byte changed, so the first difference falls anywhere.
        #[test]
        fn word_and_byte_comparisons_agree(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut b = a.clone();
            if !b.is_empty() {
                b[at.index(a.len())] = byte;
            }
            proptest::prop_assert_eq!(cmp_words(&a, &b), a.cmp(&b));
            proptest::prop_assert_eq!(cmp_bytes(&a, &b), a.cmp(&b));
            proptest::prop_assert_eq!(cmp_words(&b, &a), cmp_bytes(&b, &a));
        }
    }

    /// The grammar written the plain way: each byte checked on its own.
    fn reference(s: &str) -> Result<(usize, usize), PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > PATH_CAPACITY {
            return Err(PathError::TooLong {
                len: s.len(),
                max: PATH_CAPACITY,
            });
        }
        let bytes = s.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' {
                if i == 0 || bytes[i - 1] == b'.' {
                    return Err(PathError::EmptySegment);
                }
            } else if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(PathError::InvalidCharacter { position: i });
            }
        }
        if s.ends_with('.') {
            return Err(PathError::EmptySegment);
        }
        let longest = s.split('.').map(str::len).max().unwrap_or(0);
        Ok((s.split('.').count(), longest))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// `Path::new` accepts, refuses and measures exactly as the plain grammar does,
        /// reporting the same first fault.
        #[test]
        fn validation_agrees_with_the_grammar(s in "[a-bZ09_.\\- é/]{0,70}") {
            let got = Path::new(&s).map(|p| (p.depth(), p.longest_key()));
            proptest::prop_assert_eq!(got, reference(&s));
        }
    }

    #[test]
    fn validation() {
        assert_eq!(Path::new(""), Err(PathError::Empty));
        assert_eq!(Path::new(".a"), Err(PathError::EmptySegment));
        assert_eq!(Path::new("a."), Err(PathError::EmptySegment));
        assert_eq!(
            Path::new("a b"),
            Err(PathError::InvalidCharacter { position: 1 })
        );
        let long = "a".repeat(PATH_CAPACITY + 1);
        assert!(matches!(Path::new(&long), Err(PathError::TooLong { .. })));
        let p = Path::new("a.bcd.e").unwrap();
        assert_eq!((p.depth(), p.longest_key()), (3, 3));
    }

    #[test]
    fn ancestry_and_order() {
        let a = Path::new("a").unwrap();
        let ab = Path::new("a.b").unwrap();
        let abc = Path::new("abc").unwrap();
        assert!(a.is_ancestor_of(&ab) && !a.is_ancestor_of(&abc) && !a.is_ancestor_of(&a));
        assert!(ab.overlaps(&a) && !abc.overlaps(&a));
        // Length first, then bytes: "b" < "a.b" < "abc"? no: "a.b" and "abc" have equal length.
        let b = Path::new("b").unwrap();
        assert!(b < ab && ab < abc);
    }
}
