//! The AWS IoT Device Shadow service's request semantics over the engine (feature `json`).
//!
//! An [`AwsShadow`] is one shadow (classic or named) as the AWS service keeps it: it may not
//! exist, it answers GET, UPDATE and DELETE requests with AWS's JSON payloads, and it resolves
//! in the AWS mode ([`Shadow::apply_aws_with`]): the arrival order decides, a report never
//! clears desired, and every accepted update raises the version by one.
//!
//! The rules, as AWS documents them:
//! - `null` deletes at every level: a field, an object subtree, a whole `desired` or
//!   `reported` section, and `"state": null` (both sections; the shadow stays).
//! - A value replaces whatever stood at its path: a scalar replaces an object and an object
//!   replaces a scalar (a JSON merge, leaf by leaf).
//! - Deleted fields are absent from every answer: no tombstones.
//! - A delete removes the shadow: a later GET or DELETE is 404. A shadow created again
//!   continues the deleted one's version (AWS does so within 48 hours; this service keeps the
//!   last version for as long as it holds the [`AwsShadow`]).
//! - Errors are AWS's codes and messages ([`AwsError`]) with `clientToken` and `timestamp`.
//! - The `state` of a document is at most 8 KB ([`MAX_STATE_BYTES`], metadata excluded) and
//!   nested at most 6 levels ([`MAX_DEPTH`]).
//!
//! Values are the engine's: booleans, 64-bit integers, finite floats, text of up to 48 bytes
//! and arrays of scalars; keys are ASCII `A-Z a-z 0-9 _ -`. Anything else is refused with 400
//! `State contains an invalid node` and a reason.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use iot_core::id::NodeId;
use iot_core::time::{HlcTimestamp, MAX_PHYSICAL_MS};
use iot_core::{Error, ErrorKind};
use serde_json::{Map, Value as Json};

use crate::engine::{MemoryVersionStore, Shadow};
use crate::error::ShadowError;
use crate::json::{insert_nested, stamp_from_seconds, value_from_json, value_to_json};
use crate::path::{PATH_CAPACITY, Path};
use crate::policy::{CLIENT_TOKEN_CAPACITY, Limits};
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::{Leaf, MapStore, Section};
use crate::update::{Update, Write};
use crate::value::Value;

/// The largest `state` of a shadow document in bytes (compact JSON, metadata excluded).
pub const MAX_STATE_BYTES: usize = 8 * 1024;
/// The deepest nesting of a field under `desired` or `reported`.
pub const MAX_DEPTH: usize = 6;
/// The largest request payload in bytes (AWS IoT's MQTT message limit).
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// The engine's limits on the AWS surface: the 8 KB JSON rule bounds a document, so the
/// engine's own leaf count and CBOR size are set well above anything 8 KB of JSON holds.
pub const AWS_LIMITS: Limits = Limits {
    max_depth: MAX_DEPTH,
    max_key_len: PATH_CAPACITY,
    max_token_len: CLIENT_TOKEN_CAPACITY,
    max_fields: 4096,
    max_encoded_len: 256 * 1024,
    token_window_ms: 0,
    // AWS requests carry no stamps: the service stamps them on arrival.
    max_drift_ms: u64::MAX,
};

/// A JSON object.
type Object = Map<String, Json>;

/// The engine document behind an AWS shadow.
pub type AwsDocument = Shadow<MapStore, Policy>;

/// Why the AWS shadow service refused a request: AWS's HTTP code and message.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    /// 400: the payload is not JSON.
    #[error("Invalid JSON")]
    InvalidJson,
    /// 400: an update without `state`.
    #[error("Missing required node: state")]
    MissingState,
    /// 400: `state` is neither an object nor `null`.
    #[error("State node must be an object")]
    StateNotObject,
    /// 400: `desired` is neither an object nor `null`.
    #[error("Desired node must be an object")]
    DesiredNotObject,
    /// 400: `reported` is neither an object nor `null`.
    #[error("Reported node must be an object")]
    ReportedNotObject,
    /// 400: `version` is not a non-negative integer.
    #[error("Invalid version")]
    InvalidVersion,
    /// 400: `clientToken` is not a string of at most 64 bytes.
    #[error("Invalid clientToken")]
    InvalidClientToken,
    /// 400: a field is nested deeper than [`MAX_DEPTH`].
    #[error("JSON contains too many levels of nesting; maximum is 6")]
    TooDeep,
    /// 400: a node of `state` cannot be stored; the reason says why.
    #[error("State contains an invalid node: {0}")]
    InvalidNode(&'static str),
    /// 404: the shadow does not exist (the name is the thing's for a classic shadow).
    #[error("No shadow exists with name: '{0}'")]
    NotFound(String),
    /// 409: the update expected another version.
    #[error("Version conflict")]
    VersionConflict,
    /// 413: the payload or the resulting document is too large.
    #[error("The payload exceeds the maximum size allowed")]
    PayloadTooLarge,
    /// 415: the payload is not UTF-8.
    #[error("Unsupported documented encoding; supported encoding is UTF-8")]
    NotUtf8,
    /// 429: too many requests of one client are in flight (AWS allows 10); the request was
    /// not served.
    #[error("Too Many Requests")]
    TooManyRequests,
    /// 500: the engine refused for a reason a client cannot fix.
    #[error("Internal service failure")]
    Internal,
}

impl AwsError {
    /// The HTTP status code AWS answers with.
    pub const fn code(&self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::MissingState
            | Self::StateNotObject
            | Self::DesiredNotObject
            | Self::ReportedNotObject
            | Self::InvalidVersion
            | Self::InvalidClientToken
            | Self::TooDeep
            | Self::InvalidNode(_) => 400,
            Self::NotFound(_) => 404,
            Self::VersionConflict => 409,
            Self::PayloadTooLarge => 413,
            Self::NotUtf8 => 415,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
        }
    }
}

impl Error for AwsError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidJson | Self::NotUtf8 => ErrorKind::Decode,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::VersionConflict => ErrorKind::Conflict,
            Self::PayloadTooLarge | Self::TooManyRequests => ErrorKind::Capacity,
            Self::Internal => ErrorKind::Other,
            _ => ErrorKind::InvalidInput,
        }
    }
}

fn from_engine(e: ShadowError) -> AwsError {
    match e {
        ShadowError::Conflict { .. } => AwsError::VersionConflict,
        ShadowError::TooDeep { .. } => AwsError::TooDeep,
        ShadowError::KeyTooLong { .. } => AwsError::InvalidNode("key too long"),
        ShadowError::TokenTooLong { .. } => AwsError::InvalidClientToken,
        ShadowError::PathConflict | ShadowError::DuplicateWrite => {
            AwsError::InvalidNode("a field is both a value and an object")
        }
        ShadowError::TooLarge { .. } | ShadowError::TooManyFields { .. } => {
            AwsError::PayloadTooLarge
        }
        _ => AwsError::Internal,
    }
}

/// A refused request: the error and the request's client token (when it had a valid one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub error: AwsError,
    /// The request's `clientToken`, echoed in the answer.
    pub client_token: Option<String>,
}

impl Rejection {
    /// The refusal of the request `payload` with `error`, echoing the request's
    /// `clientToken` when it has a valid one (for refusals decided before the request is
    /// served, like [`AwsError::TooManyRequests`]).
    pub fn of_request(error: AwsError, payload: &[u8]) -> Self {
        Self {
            error,
            client_token: parse_body(payload).ok().and_then(|(_, token)| token),
        }
    }

    /// The `/rejected` payload: `code`, `message`, `timestamp` (seconds) and `clientToken`.
    pub fn to_json(&self, now_ms: u64) -> Json {
        let mut m = Map::new();
        m.insert("code".into(), Json::from(self.error.code()));
        m.insert("message".into(), Json::String(self.error.to_string()));
        m.insert("timestamp".into(), Json::from(now_ms / 1000));
        if let Some(t) = &self.client_token {
            m.insert("clientToken".into(), Json::String(t.clone()));
        }
        Json::Object(m)
    }
}

/// The answers to an accepted update.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    /// `/update/accepted`: only the fields of the request, with metadata for them.
    pub accepted: Json,
    /// `/update/delta`: when the request wrote `desired` and desired differs from reported.
    pub delta: Option<Json>,
    /// `/update/documents`: the document before (absent for a new shadow) and after.
    pub documents: Json,
    /// The version after the update.
    pub version: u64,
}

/// One change a request asks of a section.
enum Op {
    /// Write a value at a path (replacing whatever overlaps it).
    Set(Path, Value),
    /// Delete the subtree at a path, or the whole section with `None`.
    Clear(Option<Path>),
    /// An object is written at a path: a value stored exactly there gives way to it.
    Open(Path),
}

/// A parsed update request.
struct Request {
    client_token: Option<String>,
    version: Option<u64>,
    state: Json,
    ops: Vec<(Section, Op)>,
    writes_desired: bool,
}

fn utf8(payload: &[u8]) -> Result<&str, AwsError> {
    core::str::from_utf8(payload).map_err(|_| AwsError::NotUtf8)
}

/// Parses an optional request body (GET and DELETE may send nothing) and its client token.
fn parse_body(payload: &[u8]) -> Result<(Map<String, Json>, Option<String>), Rejection> {
    let reject = |error| Rejection {
        error,
        client_token: None,
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(reject(AwsError::PayloadTooLarge));
    }
    let text = utf8(payload).map_err(reject)?;
    if text.trim().is_empty() {
        return Ok((Map::new(), None));
    }
    let root: Json = serde_json::from_str(text).map_err(|_| reject(AwsError::InvalidJson))?;
    let Json::Object(root) = root else {
        return Err(reject(AwsError::InvalidJson));
    };
    let token = match root.get("clientToken") {
        None => None,
        Some(Json::String(t)) if t.len() <= CLIENT_TOKEN_CAPACITY => Some(t.clone()),
        Some(_) => return Err(reject(AwsError::InvalidClientToken)),
    };
    Ok((root, token))
}

fn join(prefix: Option<&Path>, key: &str) -> Result<Path, AwsError> {
    if key.contains('.') {
        return Err(AwsError::InvalidNode("a key holds '.'"));
    }
    let mut text = String::new();
    if let Some(p) = prefix {
        text.push_str(p.as_str());
        text.push('.');
    }
    text.push_str(key);
    Path::new(&text).map_err(|e| match e {
        crate::path::PathError::TooLong { .. } => AwsError::InvalidNode("field path too long"),
        _ => {
            AwsError::InvalidNode("a key is empty or holds a character other than A-Z a-z 0-9 _ -")
        }
    })
}

fn collect_ops(
    section: Section,
    object: &Map<String, Json>,
    prefix: Option<&Path>,
    depth: usize,
    out: &mut Vec<(Section, Op)>,
) -> Result<(), AwsError> {
    if depth > MAX_DEPTH {
        return Err(AwsError::TooDeep);
    }
    for (key, value) in object {
        let path = join(prefix, key)?;
        match value {
            Json::Null => out.push((section, Op::Clear(Some(path)))),
            Json::Object(inner) => {
                out.push((section, Op::Open(path.clone())));
                collect_ops(section, inner, Some(&path), depth.saturating_add(1), out)?;
            }
            leaf => {
                let v = value_from_json(leaf).map_err(|e| match e {
                    crate::json::JsonError::Value(_) => {
                        AwsError::InvalidNode("a value is out of range (text over 48 bytes?)")
                    }
                    _ => AwsError::InvalidNode("arrays hold booleans, numbers and text only"),
                })?;
                out.push((section, Op::Set(path, v)));
            }
        }
    }
    Ok(())
}

fn parse_update(payload: &[u8]) -> Result<Request, Rejection> {
    let (root, client_token) = parse_body(payload)?;
    let reject = |error| Rejection {
        error,
        client_token: client_token.clone(),
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(AwsError::InvalidJson));
    }
    let version = match root.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| reject(AwsError::InvalidVersion))?),
    };
    let state = root
        .get("state")
        .cloned()
        .ok_or_else(|| reject(AwsError::MissingState))?;
    let mut ops = Vec::new();
    let mut writes_desired = false;
    match &state {
        Json::Null => {
            ops.push((Section::Desired, Op::Clear(None)));
            ops.push((Section::Reported, Op::Clear(None)));
        }
        Json::Object(sections) => {
            for (name, node) in sections {
                let (section, not_object) = match name.as_str() {
                    "desired" => (Section::Desired, AwsError::DesiredNotObject),
                    "reported" => (Section::Reported, AwsError::ReportedNotObject),
                    _ => {
                        return Err(reject(AwsError::InvalidNode(
                            "state holds only desired and reported",
                        )));
                    }
                };
                match node {
                    Json::Null => ops.push((section, Op::Clear(None))),
                    Json::Object(fields) => {
                        if section == Section::Desired {
                            writes_desired = true;
                        }
                        collect_ops(section, fields, None, 1, &mut ops).map_err(reject)?;
                    }
                    _ => return Err(reject(not_object)),
                }
            }
        }
        _ => return Err(reject(AwsError::StateNotObject)),
    }
    if compact_len(&state) > MAX_STATE_BYTES {
        return Err(reject(AwsError::PayloadTooLarge));
    }
    Ok(Request {
        client_token,
        version,
        state,
        ops,
        writes_desired,
    })
}

fn compact_len(j: &Json) -> usize {
    serde_json::to_vec(j).map_or(usize::MAX, |v| v.len())
}

/// `{"timestamp": seconds}`, or one per element for an array (as AWS keeps array metadata).
fn leaf_metadata(value: &Json, seconds: u64) -> Json {
    let mut ts = Map::new();
    ts.insert("timestamp".into(), Json::from(seconds));
    match value {
        Json::Array(items) => Json::Array(items.iter().map(|_| Json::Object(ts.clone())).collect()),
        _ => Json::Object(ts),
    }
}

/// Metadata mirroring a request's state: every leaf (nulls included) gets the timestamp.
fn mirror_metadata(state: &Json, seconds: u64) -> Json {
    match state {
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), mirror_metadata(v, seconds)))
                .collect(),
        ),
        leaf => leaf_metadata(leaf, seconds),
    }
}

fn seconds_of(stamp: &Stamp) -> u64 {
    stamp.hlc().physical_ms() / 1000
}

/// The state and metadata objects of some leaves, nested by path.
fn nested<'a>(
    leaves: impl Iterator<Item = (&'a Path, &'a Leaf)>,
) -> Result<(Object, Object), AwsError> {
    let (mut state, mut meta) = (Map::new(), Map::new());
    for (path, leaf) in leaves.filter(|(_, l)| !l.value.is_null()) {
        let value = value_to_json(&leaf.value);
        let m = leaf_metadata(&value, seconds_of(&leaf.stamp));
        insert_nested(&mut state, path, value).map_err(|_| AwsError::Internal)?;
        insert_nested(&mut meta, path, m).map_err(|_| AwsError::Internal)?;
    }
    Ok((state, meta))
}

/// The document's `state` and `metadata`, with `state.delta` when `with_delta`.
fn document_parts(doc: &AwsDocument, with_delta: bool) -> Result<(Json, Json), AwsError> {
    let (mut state, mut meta) = (Map::new(), Map::new());
    for (name, section) in [
        ("desired", Section::Desired),
        ("reported", Section::Reported),
    ] {
        let (s, m) = nested(doc.section(section))?;
        if !s.is_empty() {
            state.insert(name.into(), Json::Object(s));
            meta.insert(name.into(), Json::Object(m));
        }
    }
    if with_delta {
        let (d, _) = nested(doc.delta())?;
        if !d.is_empty() {
            state.insert("delta".into(), Json::Object(d));
        }
    }
    Ok((Json::Object(state), Json::Object(meta)))
}

fn state_len(doc: &AwsDocument) -> Result<usize, AwsError> {
    let (state, _) = document_parts(doc, false)?;
    Ok(compact_len(&state))
}

fn with_footer(
    mut m: Map<String, Json>,
    version: Option<u64>,
    now_ms: u64,
    token: Option<&str>,
) -> Json {
    if let Some(v) = version {
        m.insert("version".into(), Json::from(v));
    }
    m.insert("timestamp".into(), Json::from(now_ms / 1000));
    if let Some(t) = token {
        m.insert("clientToken".into(), Json::String(t.to_owned()));
    }
    Json::Object(m)
}

/// A snapshot for `/update/documents`: state (no delta), metadata and version.
fn snapshot(doc: &AwsDocument) -> Result<Json, AwsError> {
    let (state, meta) = document_parts(doc, false)?;
    let mut m = Map::new();
    m.insert("state".into(), state);
    m.insert("metadata".into(), meta);
    m.insert("version".into(), Json::from(doc.version()));
    Ok(Json::Object(m))
}

/// Who writes a section on the AWS surface: applications set desired, devices report.
const fn origin_of(section: Section) -> Origin {
    match section {
        Section::Desired => Origin::Cloud,
        Section::Reported => Origin::Device,
    }
}

/// The `timestamp` AWS keeps for the field at `path` of a section's metadata (the first
/// element's for an array).
fn metadata_seconds(section_meta: Option<&Json>, path: &Path) -> Option<u64> {
    let entry = path
        .segments()
        .try_fold(section_meta?, |m, seg| m.get(seg))?;
    let entry = match entry {
        Json::Array(items) => items.first()?,
        other => other,
    };
    entry.get("timestamp").and_then(Json::as_u64)
}

/// One shadow as the AWS Device Shadow service keeps it.
#[derive(Debug, Clone)]
pub struct AwsShadow {
    name: String,
    doc: Option<AwsDocument>,
    /// The version of the last deleted document: a new one continues from it.
    last_version: u64,
    /// The HLC time of the last write: each update is stamped strictly later.
    last_time: u64,
}

impl AwsShadow {
    /// A shadow that does not exist yet. `name` is what a 404 names: the thing's name for a
    /// classic shadow, the shadow's name for a named one.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            doc: None,
            last_version: 0,
            last_time: 0,
        }
    }

    /// The engine document, `None` when the shadow does not exist.
    pub const fn document(&self) -> Option<&AwsDocument> {
        self.doc.as_ref()
    }

    /// Whether the shadow exists.
    pub const fn exists(&self) -> bool {
        self.doc.is_some()
    }

    /// The current version, or the version a deleted shadow ended at.
    pub fn version(&self) -> u64 {
        self.doc.as_ref().map_or(self.last_version, Shadow::version)
    }

    fn not_found(&self, client_token: Option<String>) -> Rejection {
        Rejection {
            error: AwsError::NotFound(self.name.clone()),
            client_token,
        }
    }

    fn next_stamp(&mut self, now_ms: u64, section: Section) -> Stamp {
        let wall = HlcTimestamp::from_parts(now_ms.min(MAX_PHYSICAL_MS), 0, NodeId(0))
            .map_or(0, |h| h.time);
        let time = wall.max(self.last_time.saturating_add(1));
        self.last_time = time;
        Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(0),
            },
            Policy::LastWriterWins,
            origin_of(section),
        )
    }

    /// Answers a GET: the whole document with `state.delta`, or 404.
    pub fn get(&self, request: &[u8], now_ms: u64) -> Result<Json, Rejection> {
        let (_, token) = parse_body(request)?;
        let Some(doc) = &self.doc else {
            return Err(self.not_found(token));
        };
        let (state, meta) = document_parts(doc, true).map_err(|error| Rejection {
            error,
            client_token: token.clone(),
        })?;
        let mut m = Map::new();
        m.insert("state".into(), state);
        m.insert("metadata".into(), meta);
        Ok(with_footer(
            m,
            Some(doc.version()),
            now_ms,
            token.as_deref(),
        ))
    }

    /// Answers a DELETE: removes the shadow and answers with the version it ended at, or 404.
    pub fn delete(&mut self, request: &[u8], now_ms: u64) -> Result<Json, Rejection> {
        let (_, token) = parse_body(request)?;
        let Some(doc) = self.doc.take() else {
            return Err(self.not_found(token));
        };
        self.last_version = doc.version();
        Ok(with_footer(
            Map::new(),
            Some(self.last_version),
            now_ms,
            token.as_deref(),
        ))
    }

    /// Answers an UPDATE: applies the request atomically (nothing changes when it is
    /// refused) and returns the accepted, delta and documents payloads.
    pub fn update(&mut self, request: &[u8], now_ms: u64) -> Result<Updated, Rejection> {
        let req = parse_update(request)?;
        let reject = |error| Rejection {
            error,
            client_token: req.client_token.clone(),
        };
        let previous = self
            .doc
            .as_ref()
            .map(snapshot)
            .transpose()
            .map_err(reject)?;
        let mut doc = match &self.doc {
            Some(d) => d.clone(),
            None => {
                let mut versions = MemoryVersionStore {
                    saved: self.last_version,
                    failing: false,
                };
                AwsDocument::open(
                    MapStore::new(),
                    Policy::LastWriterWins,
                    AWS_LIMITS,
                    &mut versions,
                )
                .map_err(|e| reject(from_engine(e)))?
            }
        };
        let saved_time = self.last_time;
        let mut writes = Vec::new();
        for (section, op) in &req.ops {
            match op {
                Op::Clear(None) => {
                    doc.retain(|s, _, _| s != *section);
                }
                Op::Clear(Some(p)) => {
                    doc.retain(|s, q, _| !(s == *section && (q == p || p.is_ancestor_of(q))));
                }
                Op::Open(p) => {
                    doc.retain(|s, q, _| !(s == *section && q == p));
                }
                Op::Set(p, v) => {
                    doc.retain(|s, q, _| !(s == *section && q != p && q.overlaps(p)));
                    let stamp = self.next_stamp(now_ms, *section);
                    writes.push(Write::new(*section, p.clone(), v.clone(), stamp));
                }
            }
        }
        let update = Update {
            client_token: None,
            expected_version: req.version,
            writes: &writes,
        };
        let applied = doc
            .apply_aws_with(&update, &mut crate::engine::Volatile)
            .map_err(from_engine)
            .and_then(|outcome| {
                if state_len(&doc)? > MAX_STATE_BYTES {
                    return Err(AwsError::PayloadTooLarge);
                }
                Ok(outcome)
            });
        let outcome = match applied {
            Ok(o) => o,
            Err(e) => {
                self.last_time = saved_time;
                return Err(reject(e));
            }
        };
        let token = req.client_token.as_deref();
        // The metadata of the answer is the stamps' second, which GET shows later too.
        let seconds = writes
            .first()
            .map_or(now_ms / 1000, |w| seconds_of(&w.stamp));
        let mut accepted = Map::new();
        accepted.insert("state".into(), req.state.clone());
        accepted.insert("metadata".into(), mirror_metadata(&req.state, seconds));
        let accepted = with_footer(accepted, Some(outcome.version), now_ms, token);
        let delta = if req.writes_desired && !doc.delta_is_empty() {
            let (d, m) = nested(doc.delta()).map_err(reject)?;
            let mut body = Map::new();
            body.insert("state".into(), Json::Object(d));
            body.insert("metadata".into(), Json::Object(m));
            Some(with_footer(body, Some(outcome.version), now_ms, token))
        } else {
            None
        };
        let mut docs = Map::new();
        if let Some(p) = previous {
            docs.insert("previous".into(), p);
        }
        docs.insert("current".into(), snapshot(&doc).map_err(reject)?);
        let documents = with_footer(docs, None, now_ms, token);
        self.doc = Some(doc);
        Ok(Updated {
            accepted,
            delta,
            documents,
            version: outcome.version,
        })
    }

    /// Replaces this shadow with a document exported from AWS (`state.desired`,
    /// `state.reported`, `metadata` with only `timestamp` per field, `version`). Fields
    /// without metadata take `now_ms`; `state.delta` is derived and ignored.
    pub fn import(&mut self, document: &[u8], now_ms: u64) -> Result<(), AwsError> {
        let text = utf8(document)?;
        let root: Json = serde_json::from_str(text).map_err(|_| AwsError::InvalidJson)?;
        let root = root.as_object().ok_or(AwsError::InvalidJson)?;
        let version = match root.get("version") {
            None => 0,
            Some(v) => v.as_u64().ok_or(AwsError::InvalidVersion)?,
        };
        let state = match root.get("state") {
            None | Some(Json::Null) => Map::new(),
            Some(Json::Object(s)) => s.clone(),
            Some(_) => return Err(AwsError::StateNotObject),
        };
        let meta = root.get("metadata").and_then(Json::as_object);
        let mut doc = AwsDocument::new(MapStore::new(), Policy::LastWriterWins, AWS_LIMITS);
        let mut writes = Vec::new();
        let mut last_time = self.last_time;
        for (name, section) in [
            ("desired", Section::Desired),
            ("reported", Section::Reported),
        ] {
            let fields = match state.get(name) {
                None | Some(Json::Null) => continue,
                Some(Json::Object(f)) => f,
                Some(_) if section == Section::Desired => return Err(AwsError::DesiredNotObject),
                Some(_) => return Err(AwsError::ReportedNotObject),
            };
            let mut ops = Vec::new();
            collect_ops(section, fields, None, 1, &mut ops)?;
            let section_meta = meta.and_then(|m| m.get(name));
            for (_, op) in ops {
                let Op::Set(path, value) = op else { continue };
                let seconds = metadata_seconds(section_meta, &path).unwrap_or(now_ms / 1000);
                let base = Stamp::new(
                    HlcTimestamp::default(),
                    Policy::LastWriterWins,
                    origin_of(section),
                );
                let stamp = stamp_from_seconds(seconds, Some(base));
                last_time = last_time.max(stamp.time);
                writes.push(Write::new(section, path, value, stamp));
            }
        }
        doc.merge_writes(&writes, version).map_err(from_engine)?;
        if state_len(&doc)? > MAX_STATE_BYTES {
            return Err(AwsError::PayloadTooLarge);
        }
        self.doc = Some(doc);
        self.last_time = last_time;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FieldStore;
    use serde_json::json;
    use std::format;
    use std::vec;

    fn update(s: &mut AwsShadow, body: Json, now_ms: u64) -> Result<Updated, Rejection> {
        s.update(body.to_string().as_bytes(), now_ms)
    }

    fn state(s: &AwsShadow) -> Json {
        s.get(b"", 0).unwrap()["state"].clone()
    }

    #[test]
    fn null_deletes_a_field_a_subtree_a_section_and_the_state() {
        let mut s = AwsShadow::new("t");
        let both = json!({"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": 4});
        update(
            &mut s,
            json!({"state": {"desired": both, "reported": both}}),
            1000,
        )
        .unwrap();
        update(&mut s, json!({"state": {"desired": {"a": null}}}), 2000).unwrap();
        assert_eq!(
            state(&s)["desired"],
            json!({"b": {"c": 2, "d": {"e": 3}}, "f": 4})
        );
        update(&mut s, json!({"state": {"desired": {"b": null}}}), 3000).unwrap();
        assert_eq!(state(&s)["desired"], json!({"f": 4}));
        update(&mut s, json!({"state": {"reported": null}}), 4000).unwrap();
        assert_eq!(state(&s).get("reported"), None);
        assert_eq!(state(&s)["delta"], json!({"f": 4}));
        let v = update(&mut s, json!({"state": null}), 5000)
            .unwrap()
            .version;
        assert_eq!(v, 5);
        assert_eq!(state(&s), json!({}));
        assert!(s.exists());
        // No tombstone is left behind in the engine either.
        assert_eq!(s.document().unwrap().tombstones(), 0);
        assert_eq!(s.document().unwrap().store().len(), 0);
    }

    #[test]
    fn a_value_replaces_an_object_and_an_object_replaces_a_value() {
        let mut s = AwsShadow::new("t");
        update(
            &mut s,
            json!({"state": {"desired": {"a": {"b": 1, "c": 2}}}}),
            1000,
        )
        .unwrap();
        update(&mut s, json!({"state": {"desired": {"a": 5}}}), 2000).unwrap();
        assert_eq!(state(&s)["desired"], json!({"a": 5}));
        update(
            &mut s,
            json!({"state": {"desired": {"a": {"x": true}}}}),
            3000,
        )
        .unwrap();
        assert_eq!(state(&s)["desired"], json!({"a": {"x": true}}));
        // An object of deletions over a value replaces the value with an empty object,
        // which is not kept (the engine stores leaves).
        update(
            &mut s,
            json!({"state": {"desired": {"a": 1, "b": 2}}}),
            4000,
        )
        .unwrap();
        let clear = json!({"state": {"desired": {"a": {"z": null}, "b": {}}}});
        update(&mut s, clear, 5000).unwrap();
        assert_eq!(state(&s), json!({}));
    }

    #[test]
    fn a_report_never_clears_desired_and_the_delta_stays_until_reported_matches() {
        let mut s = AwsShadow::new("t");
        let u = update(&mut s, json!({"state": {"desired": {"led": "on"}}}), 1000).unwrap();
        assert_eq!(u.delta.unwrap()["state"], json!({"led": "on"}));
        let u = update(&mut s, json!({"state": {"reported": {"led": "off"}}}), 9000).unwrap();
        // A report alone publishes no delta, but the delta remains in the document.
        assert!(u.delta.is_none());
        assert_eq!(state(&s)["desired"], json!({"led": "on"}));
        assert_eq!(state(&s)["delta"], json!({"led": "on"}));
        update(
            &mut s,
            json!({"state": {"reported": {"led": "on"}}}),
            10_000,
        )
        .unwrap();
        assert_eq!(state(&s).get("delta"), None);
        assert_eq!(state(&s)["desired"], json!({"led": "on"}));
    }

    #[test]
    fn every_accepted_update_raises_the_version_by_one() {
        let mut s = AwsShadow::new("t");
        for i in 1..=3u64 {
            let u = update(&mut s, json!({"state": {"reported": {"x": 1}}}), i * 1000).unwrap();
            assert_eq!(u.version, i);
        }
    }

    #[test]
    fn accepted_holds_only_the_request_fields_with_metadata() {
        let mut s = AwsShadow::new("t");
        update(
            &mut s,
            json!({"state": {"desired": {"a": 1, "b": 2}}}),
            1000,
        )
        .unwrap();
        let u = update(
            &mut s,
            json!({"state": {"desired": {"a": 3, "z": null}}, "clientToken": "tok"}),
            7_500,
        )
        .unwrap();
        assert_eq!(
            u.accepted,
            json!({"state": {"desired": {"a": 3, "z": null}},
                   "metadata": {"desired": {"a": {"timestamp": 7}, "z": {"timestamp": 7}}},
                   "version": 2, "timestamp": 7, "clientToken": "tok"})
        );
        assert_eq!(
            u.documents["previous"]["state"],
            json!({"desired": {"a": 1, "b": 2}})
        );
        assert_eq!(u.documents["previous"]["version"], json!(1));
        assert_eq!(
            u.documents["current"]["state"],
            json!({"desired": {"a": 3, "b": 2}})
        );
        assert_eq!(u.documents["current"]["version"], json!(2));
        assert_eq!(u.documents["clientToken"], json!("tok"));
        assert_eq!(u.delta.unwrap()["clientToken"], json!("tok"));
    }

    #[test]
    fn a_new_shadow_has_no_previous_document() {
        let mut s = AwsShadow::new("t");
        let u = update(&mut s, json!({"state": {"reported": {"a": 1}}}), 1000).unwrap();
        assert!(u.documents.get("previous").is_none());
        assert_eq!(u.documents["current"]["version"], json!(1));
    }

    #[test]
    fn delete_makes_get_404_and_a_new_shadow_continues_the_version() {
        let mut s = AwsShadow::new("thing1");
        assert_eq!(s.get(b"", 0).unwrap_err().error.code(), 404);
        assert_eq!(s.delete(b"", 0).unwrap_err().error.code(), 404);
        update(&mut s, json!({"state": {"reported": {"a": 1}}}), 1000).unwrap();
        update(&mut s, json!({"state": {"reported": {"a": 2}}}), 2000).unwrap();
        let d = s.delete(br#"{"clientToken":"c"}"#, 3000).unwrap();
        assert_eq!(d, json!({"version": 2, "timestamp": 3, "clientToken": "c"}));
        let r = s.get(br#"{"clientToken":"g"}"#, 4000).unwrap_err();
        assert_eq!(r.error, AwsError::NotFound("thing1".into()));
        assert_eq!(
            r.to_json(4000),
            json!({"code": 404, "message": "No shadow exists with name: 'thing1'",
                   "timestamp": 4, "clientToken": "g"})
        );
        let u = update(&mut s, json!({"state": {"reported": {"b": 1}}}), 5000).unwrap();
        assert_eq!(u.version, 3);
        assert_eq!(state(&s), json!({"reported": {"b": 1}}));
    }

    #[test]
    fn a_stale_version_is_409_and_changes_nothing() {
        let mut s = AwsShadow::new("t");
        update(&mut s, json!({"state": {"desired": {"a": 1}}}), 1000).unwrap();
        let r = update(
            &mut s,
            json!({"state": {"desired": {"a": 2}}, "version": 0, "clientToken": "x"}),
            2000,
        )
        .unwrap_err();
        assert_eq!(r.error.code(), 409);
        assert_eq!(r.to_json(2000)["message"], json!("Version conflict"));
        assert_eq!(r.client_token.as_deref(), Some("x"));
        assert_eq!(s.version(), 1);
        let ok = update(
            &mut s,
            json!({"state": {"desired": {"a": 2}}, "version": 1}),
            3000,
        );
        assert_eq!(ok.unwrap().version, 2);
    }

    #[test]
    fn malformed_requests_get_awss_400_messages() {
        let long = "x".repeat(65);
        for (body, error) in [
            ("{", AwsError::InvalidJson),
            ("", AwsError::InvalidJson),
            ("{}", AwsError::MissingState),
            (r#"{"state": 1}"#, AwsError::StateNotObject),
            (r#"{"state": {"desired": 1}}"#, AwsError::DesiredNotObject),
            (
                r#"{"state": {"reported": [1]}}"#,
                AwsError::ReportedNotObject,
            ),
            (r#"{"state": {}, "version": -1}"#, AwsError::InvalidVersion),
            (r#"{"state": {}, "version": "1"}"#, AwsError::InvalidVersion),
            (
                r#"{"state": {}, "clientToken": 5}"#,
                AwsError::InvalidClientToken,
            ),
            (
                r#"{"state": {"desired": {"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}"#,
                AwsError::TooDeep,
            ),
        ] {
            let mut s = AwsShadow::new("t");
            let r = s.update(body.as_bytes(), 0).unwrap_err();
            assert_eq!(r.error, error, "{body}");
            assert_eq!(r.error.code(), 400);
            assert!(!s.exists(), "{body}");
        }
        let mut s = AwsShadow::new("t");
        let body = format!(r#"{{"state": {{}}, "clientToken": "{long}"}}"#);
        assert_eq!(
            s.update(body.as_bytes(), 0).unwrap_err().error,
            AwsError::InvalidClientToken
        );
        for body in [
            r#"{"state": {"delta": {}}}"#,
            r#"{"state": {"desired": {"a b": 1}}}"#,
            r#"{"state": {"desired": {"a": [{"b": 1}]}}}"#,
        ] {
            let r = s.update(body.as_bytes(), 0).unwrap_err();
            assert!(matches!(r.error, AwsError::InvalidNode(_)), "{body}");
        }
        assert_eq!(s.update(&[0xff, 0xfe], 0).unwrap_err().error.code(), 415);
        // Six levels are allowed.
        let six = r#"{"state": {"desired": {"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}}"#;
        assert!(s.update(six.as_bytes(), 0).is_ok());
    }

    #[test]
    fn the_8_kb_state_limit_is_413_and_changes_nothing() {
        let mut s = AwsShadow::new("t");
        let mut fields = Map::new();
        for i in 0..200 {
            fields.insert(format!("f{i:03}"), Json::String("y".repeat(40)));
        }
        let r = update(&mut s, json!({"state": {"reported": fields}}), 0).unwrap_err();
        assert_eq!(r.error.code(), 413);
        // Within the limit per request, over it in total.
        let mut half = Map::new();
        for i in 0..100 {
            half.insert(format!("f{i:03}"), Json::String("y".repeat(40)));
        }
        update(&mut s, json!({"state": {"reported": half}}), 1000).unwrap();
        update(&mut s, json!({"state": {"desired": half}}), 2000).unwrap_err();
        assert_eq!(s.version(), 1);
        assert!(state(&s).get("desired").is_none());
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(s.update(&big, 0).unwrap_err().error.code(), 413);
    }

    #[test]
    fn an_aws_document_with_timestamp_only_metadata_imports() {
        let mut s = AwsShadow::new("t");
        let doc = json!({
            "state": {"desired": {"color": "red", "n": {"x": [1, 2]}},
                      "reported": {"color": "blue"},
                      "delta": {"color": "red", "n": {"x": [1, 2]}}},
            "metadata": {"desired": {"color": {"timestamp": 1_700_000_000},
                                     "n": {"x": [{"timestamp": 1_600_000_000},
                                                 {"timestamp": 1_600_000_000}]}},
                         "reported": {"color": {"timestamp": 1_700_000_100}}},
            "version": 41, "timestamp": 1_700_000_200
        });
        s.import(doc.to_string().as_bytes(), 0).unwrap();
        let got = s.get(b"", 1_700_000_300_000).unwrap();
        assert_eq!(got["version"], json!(41));
        assert_eq!(got["state"], doc["state"]);
        assert_eq!(got["metadata"], doc["metadata"]);
        let u = update(
            &mut s,
            json!({"state": {"reported": {"color": "red"}}}),
            1_700_000_400_000,
        );
        assert_eq!(u.unwrap().version, 42);
        assert_eq!(state(&s)["delta"], json!({"n": {"x": [1, 2]}}));
    }
}
