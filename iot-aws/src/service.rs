//! The sans-IO service: a request (topic and payload) in, the publications to make out.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{Error, ErrorKind};
use iot_shadow::aws::{AwsError, AwsShadow, Rejection};
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

    /// The answer to a request refused with 429 before it was served (see [`InFlight`]):
    /// the `rejected` answer with the request's `clientToken`; nothing changes. A response
    /// topic gets nothing (`None`); a topic that is not a shadow topic is an error.
    pub fn too_many_requests(
        &self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<Publication>, ServiceError> {
        let t = ShadowTopic::parse(topic)?;
        if !t.is_request() {
            return Ok(None);
        }
        let rejection = Rejection::of_request(AwsError::TooManyRequests, payload);
        Ok(Some(publication(
            t.on(t.operation, Channel::Rejected),
            &rejection.to_json(now_ms),
        )))
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

/// AWS answers 429 when more than this many requests of one connection are in flight.
pub const MAX_IN_FLIGHT: usize = 10;

/// Requests in flight per thing, for AWS's 429 rule: a request is in flight from its arrival
/// until the broker has acknowledged its first answer.
///
/// AWS counts per client connection; behind a broker the service sees topics, not
/// connections, so it counts per thing (a device is one connection). Sans-IO: the MQTT
/// binding reports each step: [`InFlight::admit`] on arrival (false: answer with
/// [`ShadowService::too_many_requests`]), [`InFlight::queued`] for every publication in the
/// order it is handed to the client, [`InFlight::sent`] when the client gives a publication
/// its packet id, [`InFlight::acked`] when the broker acknowledges it, and
/// [`InFlight::release`] for an admitted request that got no answer.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    limit: usize,
    per_thing: BTreeMap<String, usize>,
    /// Publications handed to the client and not yet given a packet id, oldest first: the
    /// thing whose request they answer first, or `None`.
    queued: VecDeque<Option<String>>,
    /// Packet ids of first answers awaiting the broker's acknowledgement.
    sent: BTreeMap<u16, String>,
}

impl InFlight {
    /// At most `limit` requests of one thing in flight ([`MAX_IN_FLIGHT`] is AWS's).
    pub const fn new(limit: usize) -> Self {
        Self {
            limit,
            per_thing: BTreeMap::new(),
            queued: VecDeque::new(),
            sent: BTreeMap::new(),
        }
    }

    /// A request of `thing` arrives: true (and counted) when fewer than the limit are in
    /// flight, false when it must be refused with 429.
    pub fn admit(&mut self, thing: &str) -> bool {
        let n = self.per_thing.get(thing).copied().unwrap_or(0);
        if n >= self.limit {
            return false;
        }
        self.per_thing.insert(thing.into(), n.saturating_add(1));
        true
    }

    /// A publication is handed to the client: `first_answer_of` names the thing when it is
    /// the first answer of an admitted request.
    pub fn queued(&mut self, first_answer_of: Option<&str>) {
        self.queued.push_back(first_answer_of.map(Into::into));
    }

    /// The client sent the oldest queued publication under packet id `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        if let Some(Some(thing)) = self.queued.pop_front()
            && let Some(earlier) = self.sent.insert(pkid, thing)
        {
            // A packet id is reused only after its acknowledgement; were one lost, its
            // request no longer counts.
            self.release(&earlier);
        }
    }

    /// The broker acknowledged packet `pkid`: its request is complete.
    pub fn acked(&mut self, pkid: u16) {
        if let Some(thing) = self.sent.remove(&pkid) {
            self.release(&thing);
        }
    }

    /// An admitted request of `thing` is complete without an acknowledged answer.
    pub fn release(&mut self, thing: &str) {
        match self.per_thing.get(thing).copied() {
            Some(0 | 1) => {
                self.per_thing.remove(thing);
            }
            Some(n) => {
                self.per_thing.insert(thing.into(), n.saturating_sub(1));
            }
            None => {}
        }
    }

    /// Requests of `thing` in flight.
    pub fn of(&self, thing: &str) -> usize {
        self.per_thing.get(thing).copied().unwrap_or(0)
    }
}
