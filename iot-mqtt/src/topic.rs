//! The MQTT topic layout: where envelopes travel, and how a broker confines a device.
//!
//! | topic | direction | publisher | subscriber |
//! |---|---|---|---|
//! | `iot/{device}/up` | device to backend | the device `{device}` | the backend |
//! | `iot/{device}/down` | backend to device | the backend | the device `{device}` |
//! | `$share/{group}/iot/+/up` | filter | | every backend process of group `{group}` |
//!
//! `{device}` is the [`DeviceId`] (`A-Z a-z 0-9 - _ . :`, at most [`DeviceId::MAX_LEN`]
//! bytes), so it never contains a topic separator or a wildcard. Each message is one CBOR
//! [`Envelope`](iot_core::message::Envelope); its `kind` says what it carries, so one topic per
//! direction is enough and a device holds exactly one subscription.
//!
//! The two directions are separate levels so that broker ACLs can confine a device to its own
//! topics with one `pattern` line each. With Mosquitto, where the device's MQTT client id (`%c`)
//! or its certificate identity used as user name (`%u`) is its device id:
//!
//! ```text
//! pattern write iot/%c/up
//! pattern read  iot/%c/down
//! user backend
//! topic read  iot/+/up
//! topic write iot/+/down
//! ```
//!
//! The backend reads every device's up topic through an MQTT 5 shared subscription
//! ([`SHARED_UP_FILTER_MAX_LEN`], [`shared_up_filter`]), so several backend processes split one
//! fleet: the broker hands each message to one member of the group.
//!
//! The AWS IoT compatible surface (`$aws/things/{thing}/shadow/...`) is a separate namespace;
//! [`Topic::parse`] recognises it and answers [`TopicError::AwsSurface`] so a router can hand
//! such topics to the module that serves them.
//!
//! Everything here is `no_std`, allocation-free and panic-free on any input.
//!
//! ```
//! use iot_core::id::DeviceId;
//! use iot_mqtt::topic::{Direction, Topic, TopicBuf};
//!
//! let device = DeviceId::new("esp32c3-240AC4123456")?;
//! let up = TopicBuf::new(Topic::up(device));
//! assert_eq!(up.as_str(), "iot/esp32c3-240AC4123456/up");
//! let parsed = Topic::parse(up.as_str())?;
//! assert_eq!(parsed.device, device);
//! assert_eq!(parsed.direction, Direction::Up);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt::{self, Write as _};

use iot_core::error::{Error, ErrorKind};
use iot_core::id::{DeviceId, IdError};

/// The first level of every topic of this layout.
pub const PREFIX: &str = "iot";
/// The last level of the device-to-backend topic.
pub const UP: &str = "up";
/// The last level of the backend-to-device topic.
pub const DOWN: &str = "down";
/// The first level of the AWS IoT compatible surface (served elsewhere).
pub const AWS_PREFIX: &str = "$aws";
/// The subscription filter for every device's up topic (without a shared group).
pub const UP_FILTER: &str = "iot/+/up";

/// The longest topic of this layout: `iot/` + a device id of [`DeviceId::MAX_LEN`] + `/down`.
pub const TOPIC_MAX_LEN: usize = PREFIX.len() + 1 + DeviceId::MAX_LEN + 1 + DOWN.len();
/// The longest shared-subscription group name accepted by [`shared_up_filter`].
pub const GROUP_MAX_LEN: usize = 32;
/// The longest shared up filter: `$share/` + group + `/` + [`UP_FILTER`].
pub const SHARED_UP_FILTER_MAX_LEN: usize = "$share/".len() + GROUP_MAX_LEN + 1 + UP_FILTER.len();

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// Device to backend (`iot/{device}/up`).
    Up,
    /// Backend to device (`iot/{device}/down`).
    Down,
}

impl Direction {
    /// The topic level naming this direction.
    pub const fn level(self) -> &'static str {
        match self {
            Self::Up => UP,
            Self::Down => DOWN,
        }
    }
}

/// Why a topic or a group name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is longer than any topic of this layout ([`TOPIC_MAX_LEN`]).
    #[error("topic is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Length of the refused topic.
        len: usize,
        /// The longest topic of this layout.
        max: usize,
    },
    /// The first level is not [`PREFIX`].
    #[error("topic does not start with `iot/`")]
    WrongPrefix,
    /// The topic belongs to the AWS IoT compatible surface (`$aws/...`), served elsewhere.
    #[error("topic belongs to the `$aws/` surface")]
    AwsSurface,
    /// The device level is not a valid device id.
    #[error("topic names an invalid device id: {0}")]
    BadDeviceId(IdError),
    /// The topic ends before the direction level.
    #[error("topic has no direction level")]
    MissingLevel,
    /// The direction level is neither `up` nor `down`.
    #[error("topic direction is neither `up` nor `down`")]
    UnknownDirection,
    /// The topic has levels after the direction.
    #[error("topic has levels after the direction")]
    ExtraLevels,
    /// A shared-subscription group name is empty, too long or has a character outside
    /// `A-Z a-z 0-9 - _`.
    #[error("invalid shared-subscription group name")]
    BadGroup,
}

impl Error for TopicError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLong { .. } => ErrorKind::Capacity,
            Self::BadDeviceId(e) => e.kind(),
            Self::WrongPrefix
            | Self::AwsSurface
            | Self::MissingLevel
            | Self::UnknownDirection
            | Self::ExtraLevels
            | Self::BadGroup => ErrorKind::InvalidInput,
        }
    }
}

/// A parsed topic of this layout: which device, which direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The device the topic belongs to.
    pub device: DeviceId,
    /// Which way messages on it travel.
    pub direction: Direction,
}

impl Topic {
    /// The device-to-backend topic of `device`.
    pub const fn up(device: DeviceId) -> Self {
        Self {
            device,
            direction: Direction::Up,
        }
    }

    /// The backend-to-device topic of `device`.
    pub const fn down(device: DeviceId) -> Self {
        Self {
            device,
            direction: Direction::Down,
        }
    }

    /// Parses a topic name. Never panics; every refusal says why.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        if topic.len() > TOPIC_MAX_LEN {
            return Err(TopicError::TooLong {
                len: topic.len(),
                max: TOPIC_MAX_LEN,
            });
        }
        let mut levels = topic.split('/');
        match levels.next() {
            Some(PREFIX) => {}
            Some(AWS_PREFIX) => return Err(TopicError::AwsSurface),
            _ => return Err(TopicError::WrongPrefix),
        }
        let device = levels
            .next()
            .map(DeviceId::new)
            .unwrap_or(Err(IdError::Empty))
            .map_err(TopicError::BadDeviceId)?;
        let direction = match levels.next() {
            None => return Err(TopicError::MissingLevel),
            Some(UP) => Direction::Up,
            Some(DOWN) => Direction::Down,
            Some(_) => return Err(TopicError::UnknownDirection),
        };
        if levels.next().is_some() {
            return Err(TopicError::ExtraLevels);
        }
        Ok(Self { device, direction })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.device, self.direction.level())
    }
}

/// A formatted topic name in a fixed buffer of [`TOPIC_MAX_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicBuf(heapless::String<TOPIC_MAX_LEN>);

impl TopicBuf {
    /// Formats `topic`. Every topic of this layout fits, so this cannot fail.
    pub fn new(topic: Topic) -> Self {
        let mut s = heapless::String::new();
        // The capacity is the longest topic of the layout; the device id is bounded by type.
        let _ = write!(s, "{topic}");
        Self(s)
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Checks a shared-subscription group name: 1 to [`GROUP_MAX_LEN`] bytes of
/// `A-Z a-z 0-9 - _`.
pub fn check_group(group: &str) -> Result<(), TopicError> {
    let ok = !group.is_empty()
        && group.len() <= GROUP_MAX_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(TopicError::BadGroup)
    }
}

/// The backend's MQTT 5 shared subscription to every device's up topic:
/// `$share/{group}/iot/+/up`.
pub fn shared_up_filter(
    group: &str,
) -> Result<heapless::String<SHARED_UP_FILTER_MAX_LEN>, TopicError> {
    check_group(group)?;
    let mut s = heapless::String::new();
    write!(s, "$share/{group}/{UP_FILTER}").map_err(|_| TopicError::BadGroup)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn formats_both_directions() {
        assert_eq!(TopicBuf::new(Topic::up(id("d-1"))).as_str(), "iot/d-1/up");
        assert_eq!(
            TopicBuf::new(Topic::down(id("d-1"))).as_str(),
            "iot/d-1/down"
        );
    }

    #[test]
    fn the_longest_device_id_fits() {
        let long = "a".repeat(DeviceId::MAX_LEN);
        let t = TopicBuf::new(Topic::down(id(&long)));
        assert_eq!(t.as_str().len(), TOPIC_MAX_LEN);
        assert_eq!(Topic::parse(t.as_str()).unwrap().device, id(&long));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(Topic::parse("x/d/up"), Err(TopicError::WrongPrefix));
        assert_eq!(Topic::parse(""), Err(TopicError::WrongPrefix));
        assert_eq!(
            Topic::parse("$aws/things/d/shadow/update"),
            Err(TopicError::AwsSurface)
        );
        assert_eq!(
            Topic::parse("iot"),
            Err(TopicError::BadDeviceId(IdError::Empty))
        );
        assert_eq!(
            Topic::parse("iot//up"),
            Err(TopicError::BadDeviceId(IdError::Empty))
        );
        assert!(matches!(
            Topic::parse("iot/bad id/up"),
            Err(TopicError::BadDeviceId(IdError::InvalidCharacter { .. }))
        ));
        assert!(matches!(
            Topic::parse("iot/+/up"),
            Err(TopicError::BadDeviceId(_))
        ));
        assert_eq!(Topic::parse("iot/d"), Err(TopicError::MissingLevel));
        assert_eq!(
            Topic::parse("iot/d/sideways"),
            Err(TopicError::UnknownDirection)
        );
        assert_eq!(Topic::parse("iot/d/up/more"), Err(TopicError::ExtraLevels));
        assert_eq!(Topic::parse("iot/d/up/"), Err(TopicError::ExtraLevels));
        let long = format!("iot/{}/up", "a".repeat(TOPIC_MAX_LEN));
        assert_eq!(
            Topic::parse(&long),
            Err(TopicError::TooLong {
                len: long.len(),
                max: TOPIC_MAX_LEN
            })
        );
        assert_eq!(TopicError::WrongPrefix.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            TopicError::TooLong { len: 1, max: 0 }.kind(),
            ErrorKind::Capacity
        );
    }

    #[test]
    fn shared_filter_and_group_rules() {
        assert_eq!(
            shared_up_filter("backend").unwrap().as_str(),
            "$share/backend/iot/+/up"
        );
        let longest = "g".repeat(GROUP_MAX_LEN);
        assert_eq!(
            shared_up_filter(&longest).unwrap().len(),
            SHARED_UP_FILTER_MAX_LEN
        );
        for bad in ["", "a/b", "a+", "#", "g g", &"g".repeat(GROUP_MAX_LEN + 1)] {
            assert_eq!(shared_up_filter(bad), Err(TopicError::BadGroup), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Topic::parse(&s);
        }

        #[test]
        fn format_then_parse_round_trips(
            dev in "[A-Za-z0-9_.:-]{1,48}",
            up in any::<bool>(),
        ) {
            let device = id(&dev);
            let topic = if up { Topic::up(device) } else { Topic::down(device) };
            let buf = TopicBuf::new(topic);
            prop_assert_eq!(Topic::parse(buf.as_str()), Ok(topic));
            prop_assert_eq!(buf.as_str(), topic.to_string());
        }
    }
}
