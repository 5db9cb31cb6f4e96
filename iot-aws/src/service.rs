//! The sans-IO service: a request (topic and payload) in, the publications to make out.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{Error, ErrorKind};
use iot_shadow::aws::{AwsShadow, Rejection};
use serde_json::Value as Json;

use crate::topic::{Channel, Operation, ShadowTopic, TopicError};

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The topic.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
}

/// Bounds of a [`ShadowService`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most shadows (classic and named, deleted ones included) held at once.
    pub max_shadows: usize,
}

impl Config {
    /// 100,000 shadows.
    pub const DEFAULT: Self = Self {
        max_shadows: 100_000,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a message got no answer at all (an answerable request always gets one).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The topic is not a shadow topic.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A new shadow would exceed [`Config::max_shadows`].
    #[error("shadow capacity of {max} exhausted")]
    TooManyShadows {
        /// The configured bound.
        max: usize,
    },
}

impl Error for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Topic(e) => e.kind(),
            Self::TooManyShadows { .. } => ErrorKind::Capacity,
        }
    }
}

type Key = (String, Option<String>);

/// Classic and named shadows of many things, served over the `$aws` topic surface.
///
/// [`ShadowService::handle`] takes one received message and returns what to publish: the
/// `accepted` or `rejected` answer with the request's `clientToken`, and after an accepted
/// update `update/delta` (when desired differs from reported) and `update/documents`.
#[derive(Debug, Clone, Default)]
pub struct ShadowService {
    config: Config,
    shadows: BTreeMap<Key, AwsShadow>,
}

fn key(t: &ShadowTopic<'_>) -> Key {
    (t.thing.into(), t.shadow.map(Into::into))
}

fn publication(topic: String, json: &Json) -> Publication {
    Publication {
        topic,
        payload: serde_json::to_vec(json).unwrap_or_default(),
    }
}

impl ShadowService {
    /// An empty service.
    pub const fn new(config: Config) -> Self {
        Self {
            config,
            shadows: BTreeMap::new(),
        }
    }

    /// The shadow of `thing` (`shadow` names a named one), if the service holds it (it may
    /// be deleted: see [`AwsShadow::exists`]).
    pub fn shadow(&self, thing: &str, shadow: Option<&str>) -> Option<&AwsShadow> {
        self.shadows.get(&(thing.into(), shadow.map(Into::into)))
    }

    /// How many shadows the service holds (deleted ones included).
    pub fn len(&self) -> usize {
        self.shadows.len()
    }

    /// Whether the service holds no shadow.
    pub fn is_empty(&self) -> bool {
        self.shadows.is_empty()
    }

    fn entry(&mut self, topic: &ShadowTopic<'_>) -> Result<&mut AwsShadow, ServiceError> {
        let k = key(topic);
        if !self.shadows.contains_key(&k) && self.shadows.len() >= self.config.max_shadows {
            return Err(ServiceError::TooManyShadows {
                max: self.config.max_shadows,
            });
        }
        Ok(self
            .shadows
            .entry(k)
            .or_insert_with(|| AwsShadow::new(topic.display_name())))
    }

    /// Imports a document exported from AWS as the shadow of `thing` / `shadow`.
    pub fn import(
        &mut self,
        thing: &str,
        shadow: Option<&str>,
        document: &[u8],
        now_ms: u64,
    ) -> Result<(), iot_shadow::aws::AwsError> {
        let topic = ShadowTopic {
            thing,
            shadow,
            operation: Operation::Update,
            channel: Channel::Request,
        };
        let mut fresh = AwsShadow::new(topic.display_name());
        fresh.import(document, now_ms)?;
        let entry = self
            .entry(&topic)
            .map_err(|_| iot_shadow::aws::AwsError::Internal)?;
        *entry = fresh;
        Ok(())
    }

    /// Handles one received message at `now_ms` (Unix milliseconds). Responses (the
    /// service's own publications) produce nothing; a topic that is not a shadow topic is
    /// an error.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Publication>, ServiceError> {
        let t = ShadowTopic::parse(topic)?;
        if !t.is_request() {
            return Ok(Vec::new());
        }
        let op = t.operation;
        let reply = |result: Result<Json, Rejection>| match result {
            Ok(json) => publication(t.on(op, Channel::Accepted), &json),
            Err(rejection) => publication(t.on(op, Channel::Rejected), &rejection.to_json(now_ms)),
        };
        Ok(match op {
            Operation::Get => {
                let answer = match self.shadows.get(&key(&t)) {
                    Some(s) => s.get(payload, now_ms),
                    None => AwsShadow::new(t.display_name()).get(payload, now_ms),
                };
                alloc::vec![reply(answer)]
            }
            Operation::Delete => {
                let answer = match self.shadows.get_mut(&key(&t)) {
                    Some(s) => s.delete(payload, now_ms),
                    None => AwsShadow::new(t.display_name()).delete(payload, now_ms),
                };
                alloc::vec![reply(answer)]
            }
            Operation::Update => match self.entry(&t)?.update(payload, now_ms) {
                Ok(updated) => {
                    let mut out = alloc::vec![reply(Ok(updated.accepted))];
                    if let Some(delta) = &updated.delta {
                        out.push(publication(t.on(op, Channel::Delta), delta));
                    }
                    out.push(publication(
                        t.on(op, Channel::Documents),
                        &updated.documents,
                    ));
                    out
                }
                Err(rejection) => {
                    // A refused first update must not leave an empty entry behind.
                    let k = key(&t);
                    if self
                        .shadows
                        .get(&k)
                        .is_some_and(|s| !s.exists() && s.version() == 0)
                    {
                        self.shadows.remove(&k);
                    }
                    alloc::vec![reply(Err(rejection))]
                }
            },
        })
    }
}
