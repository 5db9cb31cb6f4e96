//! The checks a backend makes on a publish from a device before any handler sees it: topic,
//! size, envelope, identity. Apart from the bridge (which needs `std`) so that other front
//! ends, gateways and the fuzz targets apply exactly the same rules with only an allocator.

use iot_core::id::DeviceId;
use iot_core::message::OwnedEnvelope;

use crate::topic::{Direction, Topic, TopicError};

/// Why a publish was refused before reaching the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The topic is not a device's up topic.
    #[error("not a device up topic: {0}")]
    Topic(TopicError),
    /// The payload exceeds the envelope limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not an envelope.
    #[error("payload is not an envelope")]
    Garbage,
    /// The envelope names another device than the topic.
    #[error("envelope names {envelope}, topic names {topic}")]
    Identity {
        /// The device of the topic.
        topic: DeviceId,
        /// The device the envelope names.
        envelope: DeviceId,
    },
}

impl iot_core::error::Error for Refusal {
    fn kind(&self) -> iot_core::error::ErrorKind {
        use iot_core::error::ErrorKind;
        match self {
            Self::Topic(e) => iot_core::error::Error::kind(e),
            Self::Oversized { .. } => ErrorKind::Capacity,
            Self::Garbage => ErrorKind::Decode,
            Self::Identity { .. } => ErrorKind::Unauthorized,
        }
    }
}

/// The checks the bridge makes before the handler sees a publish: topic, size, envelope,
/// identity. Public so other front ends (and tests) apply exactly the same rules.
pub fn check_up(
    topic_name: &[u8],
    payload: &[u8],
    max_envelope: usize,
) -> Result<(DeviceId, OwnedEnvelope), Refusal> {
    let name =
        core::str::from_utf8(topic_name).map_err(|_| Refusal::Topic(TopicError::WrongPrefix))?;
    let topic = Topic::parse(name).map_err(Refusal::Topic)?;
    if topic.direction != Direction::Up {
        return Err(Refusal::Topic(TopicError::UnknownDirection));
    }
    if payload.len() > max_envelope {
        return Err(Refusal::Oversized {
            len: payload.len(),
            max: max_envelope,
        });
    }
    let envelope = OwnedEnvelope::decode(payload).map_err(|_| Refusal::Garbage)?;
    if envelope.device != topic.device {
        return Err(Refusal::Identity {
            topic: topic.device,
            envelope: envelope.device,
        });
    }
    Ok((topic.device, envelope))
}
