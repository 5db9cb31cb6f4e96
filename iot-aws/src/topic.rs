//! The `$aws/things/{thing}/shadow/...` topic layout, parsed without panicking on any input.

use alloc::string::String;
use core::fmt::Write as _;

use iot_core::{Error, ErrorKind};

/// The prefix of every shadow topic.
pub const THINGS_PREFIX: &str = "$aws/things/";
/// The longest thing name AWS IoT accepts.
pub const MAX_THING_NAME: usize = 128;
/// The longest shadow name AWS IoT accepts.
pub const MAX_SHADOW_NAME: usize = 64;
/// The topic filter a service subscribes to: every request and response of every shadow.
pub const SUBSCRIPTION: &str = "$aws/things/+/shadow/#";

/// Why a topic is not a shadow topic.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic does not start with `$aws/things/{thing}/shadow/`.
    #[error("not a shadow topic")]
    NotShadowTopic,
    /// The thing name is empty, longer than 128 bytes or holds a character other than
    /// `a-z A-Z 0-9 : _ -`.
    #[error("invalid thing name")]
    InvalidThingName,
    /// The shadow name is empty, longer than 64 bytes or holds a character other than
    /// `a-z A-Z 0-9 : _ -`.
    #[error("invalid shadow name")]
    InvalidShadowName,
    /// The operation is not `get`, `update` or `delete`.
    #[error("unknown shadow operation")]
    UnknownOperation,
    /// The last level is not `accepted`, `rejected`, `delta` or `documents` (the latter two
    /// after `update` only).
    #[error("unknown shadow response")]
    UnknownResponse,
    /// Levels follow the response.
    #[error("too many topic levels")]
    TooManyLevels,
}

impl Error for TopicError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `get`: read the document.
    Get,
    /// `update`: change the document (create it if needed).
    Update,
    /// `delete`: remove the shadow.
    Delete,
}

impl Operation {
    /// The topic level.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    fn parse(level: &str) -> Result<Self, TopicError> {
        match level {
            "get" => Ok(Self::Get),
            "update" => Ok(Self::Update),
            "delete" => Ok(Self::Delete),
            _ => Err(TopicError::UnknownOperation),
        }
    }
}

/// Which message on an operation's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The request itself (`.../update`).
    Request,
    /// `.../accepted`.
    Accepted,
    /// `.../rejected`.
    Rejected,
    /// `.../update/delta`.
    Delta,
    /// `.../update/documents`.
    Documents,
}

impl Channel {
    /// The topic level after the operation (`None` for a request).
    pub const fn as_str(self) -> Option<&'static str> {
        match self {
            Self::Request => None,
            Self::Accepted => Some("accepted"),
            Self::Rejected => Some("rejected"),
            Self::Delta => Some("delta"),
            Self::Documents => Some("documents"),
        }
    }
}

/// A parsed shadow topic; it borrows the names from the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShadowTopic<'a> {
    /// The thing.
    pub thing: &'a str,
    /// The named shadow, `None` for the classic shadow.
    pub shadow: Option<&'a str>,
    /// The operation.
    pub operation: Operation,
    /// Request or which response.
    pub channel: Channel,
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

impl<'a> ShadowTopic<'a> {
    /// Parses `$aws/things/{thing}/shadow[/name/{shadow}]/{get|update|delete}[/{response}]`.
    ///
    /// ```
    /// use iot_aws::topic::{Channel, Operation, ShadowTopic};
    /// let t = ShadowTopic::parse("$aws/things/lamp-1/shadow/name/config/update/delta")?;
    /// assert_eq!((t.thing, t.shadow), ("lamp-1", Some("config")));
    /// assert_eq!((t.operation, t.channel), (Operation::Update, Channel::Delta));
    /// assert!(ShadowTopic::parse("$aws/things/lamp-1/shadow/upgrade").is_err());
    /// # Ok::<(), iot_aws::topic::TopicError>(())
    /// ```
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(THINGS_PREFIX)
            .ok_or(TopicError::NotShadowTopic)?;
        let mut levels = rest.split('/');
        let thing = levels.next().ok_or(TopicError::NotShadowTopic)?;
        if levels.next() != Some("shadow") {
            return Err(TopicError::NotShadowTopic);
        }
        if !valid_name(thing, MAX_THING_NAME) {
            return Err(TopicError::InvalidThingName);
        }
        let mut level = levels.next().ok_or(TopicError::UnknownOperation)?;
        let mut shadow = None;
        if level == "name" {
            let name = levels.next().ok_or(TopicError::InvalidShadowName)?;
            if !valid_name(name, MAX_SHADOW_NAME) {
                return Err(TopicError::InvalidShadowName);
            }
            shadow = Some(name);
            level = levels.next().ok_or(TopicError::UnknownOperation)?;
        }
        let operation = Operation::parse(level)?;
        let channel = match (levels.next(), operation) {
            (None, _) => Channel::Request,
            (Some("accepted"), _) => Channel::Accepted,
            (Some("rejected"), _) => Channel::Rejected,
            (Some("delta"), Operation::Update) => Channel::Delta,
            (Some("documents"), Operation::Update) => Channel::Documents,
            (Some(_), _) => return Err(TopicError::UnknownResponse),
        };
        if levels.next().is_some() {
            return Err(TopicError::TooManyLevels);
        }
        Ok(Self {
            thing,
            shadow,
            operation,
            channel,
        })
    }

    /// Whether this is a request the service answers (not one of its own responses).
    pub const fn is_request(&self) -> bool {
        matches!(self.channel, Channel::Request)
    }

    /// The name a 404 names: the shadow's for a named shadow, the thing's for the classic.
    pub fn display_name(&self) -> &'a str {
        self.shadow.unwrap_or(self.thing)
    }

    /// The topic of the same shadow and operation on `channel`.
    pub fn on(&self, operation: Operation, channel: Channel) -> String {
        let mut t = String::with_capacity(64);
        // Writing into a String cannot fail.
        let _ = write!(t, "{THINGS_PREFIX}{}/shadow", self.thing);
        if let Some(name) = self.shadow {
            let _ = write!(t, "/name/{name}");
        }
        let _ = write!(t, "/{}", operation.as_str());
        if let Some(level) = channel.as_str() {
            let _ = write!(t, "/{level}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_request_and_response_topic_parses() {
        for (topic, thing, shadow, op, ch) in [
            (
                "$aws/things/t/shadow/get",
                "t",
                None,
                Operation::Get,
                Channel::Request,
            ),
            (
                "$aws/things/t/shadow/update",
                "t",
                None,
                Operation::Update,
                Channel::Request,
            ),
            (
                "$aws/things/t/shadow/delete",
                "t",
                None,
                Operation::Delete,
                Channel::Request,
            ),
            (
                "$aws/things/t/shadow/get/accepted",
                "t",
                None,
                Operation::Get,
                Channel::Accepted,
            ),
            (
                "$aws/things/t/shadow/delete/rejected",
                "t",
                None,
                Operation::Delete,
                Channel::Rejected,
            ),
            (
                "$aws/things/t/shadow/update/delta",
                "t",
                None,
                Operation::Update,
                Channel::Delta,
            ),
            (
                "$aws/things/t/shadow/update/documents",
                "t",
                None,
                Operation::Update,
                Channel::Documents,
            ),
            (
                "$aws/things/a:b_c-1/shadow/name/cfg/update",
                "a:b_c-1",
                Some("cfg"),
                Operation::Update,
                Channel::Request,
            ),
            (
                "$aws/things/t/shadow/name/name/get/accepted",
                "t",
                Some("name"),
                Operation::Get,
                Channel::Accepted,
            ),
        ] {
            let p = ShadowTopic::parse(topic).unwrap();
            assert_eq!(
                (p.thing, p.shadow, p.operation, p.channel),
                (thing, shadow, op, ch),
                "{topic}"
            );
            assert_eq!(p.on(p.operation, p.channel), topic);
            assert_eq!(p.is_request(), ch == Channel::Request);
        }
    }

    #[test]
    fn malformed_topics_get_clear_errors() {
        let long = "x".repeat(129);
        let long_thing = std::format!("$aws/things/{long}/shadow/get");
        let long_shadow = std::format!("$aws/things/t/shadow/name/{}/get", "s".repeat(65));
        for (topic, error) in [
            ("", TopicError::NotShadowTopic),
            ("$aws/things/", TopicError::NotShadowTopic),
            ("$aws/things/t", TopicError::NotShadowTopic),
            ("$aws/things/t/jobs/get", TopicError::NotShadowTopic),
            ("aws/things/t/shadow/get", TopicError::NotShadowTopic),
            ("$aws/things//shadow/get", TopicError::InvalidThingName),
            ("$aws/things/a+b/shadow/get", TopicError::InvalidThingName),
            (long_thing.as_str(), TopicError::InvalidThingName),
            ("$aws/things/t/shadow", TopicError::UnknownOperation),
            ("$aws/things/t/shadow/", TopicError::UnknownOperation),
            ("$aws/things/t/shadow/list", TopicError::UnknownOperation),
            ("$aws/things/t/shadow/name", TopicError::InvalidShadowName),
            (
                "$aws/things/t/shadow/name//get",
                TopicError::InvalidShadowName,
            ),
            (long_shadow.as_str(), TopicError::InvalidShadowName),
            ("$aws/things/t/shadow/name/s", TopicError::UnknownOperation),
            (
                "$aws/things/t/shadow/get/delta",
                TopicError::UnknownResponse,
            ),
            (
                "$aws/things/t/shadow/update/other",
                TopicError::UnknownResponse,
            ),
            (
                "$aws/things/t/shadow/update/accepted/x",
                TopicError::TooManyLevels,
            ),
        ] {
            assert_eq!(ShadowTopic::parse(topic), Err(error), "{topic:?}");
        }
    }

    proptest! {
        /// Any string parses to a topic or an error, never a panic, and a parsed topic
        /// prints back to exactly the input.
        #[test]
        fn parsing_never_panics_and_round_trips(topic in "(\\$aws/things/)?[a-z:/_-]{0,40}") {
            if let Ok(p) = ShadowTopic::parse(&topic) {
                prop_assert_eq!(p.on(p.operation, p.channel), topic);
            }
        }

        /// Topics shaped like shadow topics, valid and not: a parsed one prints back the same.
        #[test]
        fn shaped_topics_round_trip(
            topic in "\\$aws/things/[a-z:_+-]{0,5}/shadow(/name/[a-z]{0,4})?/(get|update|delete|name|x)(/(accepted|rejected|delta|documents|x))?(/x)?"
        ) {
            if let Ok(p) = ShadowTopic::parse(&topic) {
                prop_assert_eq!(p.on(p.operation, p.channel), topic);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(topic in ".{0,200}") {
            let _ = ShadowTopic::parse(&topic);
        }
    }
}
