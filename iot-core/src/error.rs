//! Error classification shared by every `iot-*` crate.
//!
//! Each crate keeps detailed error enums (built with `thiserror`, usable without `std`), and
//! every one of them implements [`Error`], whose [`Error::kind`] maps the detail onto a small,
//! stable [`ErrorKind`]. Generic code (retry loops, agents, dashboards) reacts to the kind;
//! the detail stays available for logs and tests. This is the embedded-hal 1.0 convention.

/// A coarse, stable classification of errors that generic code can react to.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ErrorKind {
    /// The input violates a documented rule (bad characters, out-of-range values).
    InvalidInput,
    /// A fixed capacity or configured limit would be exceeded.
    Capacity,
    /// Bytes could not be decoded into a value.
    Decode,
    /// A value could not be encoded (for example the output buffer is too small).
    Encode,
    /// A clock reading or remote timestamp cannot be accepted.
    Clock,
    /// An optimistic-concurrency check failed or two writes contradict each other.
    Conflict,
    /// The addressed entity does not exist.
    NotFound,
    /// The caller lacks the credentials or scope for the operation.
    Unauthorized,
    /// An operation is not allowed in the current state.
    InvalidState,
    /// A deadline passed.
    Timeout,
    /// A link or bus failed to carry data.
    Transport,
    /// Persistent storage failed.
    Storage,
    /// Anything else.
    Other,
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            Self::InvalidInput => "invalid input",
            Self::Capacity => "capacity exceeded",
            Self::Decode => "decode failure",
            Self::Encode => "encode failure",
            Self::Clock => "clock error",
            Self::Conflict => "conflict",
            Self::NotFound => "not found",
            Self::Unauthorized => "unauthorized",
            Self::InvalidState => "invalid state",
            Self::Timeout => "timeout",
            Self::Transport => "transport failure",
            Self::Storage => "storage failure",
            Self::Other => "other error",
        };
        f.write_str(text)
    }
}

impl core::error::Error for ErrorKind {}

/// An error that can be classified into an [`ErrorKind`].
pub trait Error: core::error::Error {
    /// The coarse classification of this error.
    fn kind(&self) -> ErrorKind;
}

impl Error for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

impl Error for core::convert::Infallible {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}
