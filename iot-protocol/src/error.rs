//! Why a message was refused by the codec.

use iot_core::{Error, ErrorKind, MessageKind};

/// Why a protocol message could not be decoded or encoded. Decoding never panics: any
/// input either decodes or gives one of these.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProtocolError {
    /// The kind does not travel in this direction (a backend kind sent by a device, or a
    /// transport acknowledgement handed to the protocol).
    #[error("{0:?} is not sent in this direction")]
    WrongDirection(MessageKind),
    /// The payload is not what its kind promises.
    #[error("malformed {0:?} payload")]
    Malformed(MessageKind),
    /// A shadow message's own kind differs from its envelope's.
    #[error("envelope says {envelope:?}, the shadow message is {payload:?}")]
    KindMismatch {
        /// The envelope's kind.
        envelope: MessageKind,
        /// The kind the shadow message states.
        payload: MessageKind,
    },
    /// The peer speaks a protocol version this build does not know.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// The encoded message does not fit the buffer.
    #[error("buffer too small")]
    BufferTooSmall,
}

impl Error for ProtocolError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongDirection(_) | Self::Malformed(_) | Self::KindMismatch { .. } => {
                ErrorKind::Decode
            }
            Self::UnsupportedVersion(_) => ErrorKind::InvalidInput,
            Self::BufferTooSmall => ErrorKind::Capacity,
        }
    }
}
