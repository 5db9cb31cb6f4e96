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
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Path(heapless::String<PATH_CAPACITY>);

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
        let mut previous_dot = true;
        for (position, b) in s.bytes().enumerate() {
            if b == b'.' {
                if previous_dot {
                    return Err(PathError::EmptySegment);
                }
                previous_dot = true;
            } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                previous_dot = false;
            } else {
                return Err(PathError::InvalidCharacter { position });
            }
        }
        if previous_dot {
            return Err(PathError::EmptySegment);
        }
        let mut inner = heapless::String::new();
        inner.push_str(s).map_err(|_| PathError::TooLong {
            len: s.len(),
            max: PATH_CAPACITY,
        })?;
        Ok(Self(inner))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        // One byte scan (the limit checks run for every write): separators plus one.
        self.0
            .bytes()
            .filter(|b| *b == b'.')
            .count()
            .saturating_add(1)
    }

    /// Length of the longest segment in bytes.
    pub fn longest_key(&self) -> usize {
        let (longest, last) = self.0.bytes().fold((0usize, 0usize), |(longest, run), b| {
            if b == b'.' {
                (longest.max(run), 0)
            } else {
                (longest, run.saturating_add(1))
            }
        });
        longest.max(last)
    }

    /// `true` if `other` lies strictly inside this path (`a` is an ancestor of `a.b`).
    pub fn is_ancestor_of(&self, other: &Path) -> bool {
        other
            .as_str()
            .strip_prefix(self.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// `true` if one of the paths is an ancestor of the other: they cannot both be leaves.
    pub fn overlaps(&self, other: &Path) -> bool {
        self.is_ancestor_of(other) || other.is_ancestor_of(self)
    }
}

impl Ord for Path {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
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
