//! JSON in the AWS IoT shadow shape, for backend interop and migration (feature `json`).
//!
//! ```json
//! {"state": {"desired": {"telemetry": {"interval": 60}},
//!            "reported": {"telemetry": {"interval": 30}},
//!            "delta": {"telemetry": {"interval": 60}}},
//!  "metadata": {"desired": {"telemetry": {"interval":
//!                 {"timestamp": 1700000000, "hlc": 111411200000000000, "node": 1,
//!                  "policy": "CloudWins", "origin": "Cloud"}}}, "reported": {...}},
//!  "version": 7, "timestamp": 1700000000, "clientToken": "abc"}
//! ```
//!
//! Dotted paths become nested objects. `metadata` carries AWS's `timestamp` (seconds) and,
//! to be lossless, the full stamp (`hlc`, `node`, `policy`, `origin`). A removal is `null`.
//! Integers and floats stay distinct (`60` vs `60.0`). A delta notification uses AWS's delta
//! shape: the changed desired leaves directly under `state`. `state.delta` of a document is
//! derived and ignored when reading. Requests from AWS-style clients without stamps are read
//! with a default stamp supplied by the receiver.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;
use iot_core::{Error, ErrorKind};
use serde_json::{Map, Number, Value as Json};

use crate::cbor::OwnedMessage;
use crate::cbor::{Header, Item, Kind};
use crate::engine::Shadow;
use crate::path::{Path, PathError};
use crate::policy::{CLIENT_TOKEN_CAPACITY, Resolver};
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::{FieldStore, Section};
#[cfg(test)]
use crate::update::Update;
use crate::update::Write;
use crate::value::{Scalar, Value, ValueError};

/// Why JSON could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON.
    #[error("invalid JSON")]
    Syntax,
    /// JSON, but not the AWS shadow shape.
    #[error("unexpected shape: {0}")]
    Shape(&'static str),
    /// A key path is not a valid [`Path`].
    #[error(transparent)]
    Path(#[from] PathError),
    /// A leaf value is out of range.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A leaf has no metadata and no default stamp was supplied.
    #[error("leaf without metadata")]
    MissingMetadata,
    /// The client token is longer than 64 bytes.
    #[error("client token too long")]
    TokenTooLong,
}

impl Error for JsonError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Syntax | Self::Shape(_) | Self::MissingMetadata => ErrorKind::Decode,
            Self::Path(e) => e.kind(),
            Self::Value(e) => e.kind(),
            Self::TokenTooLong => ErrorKind::Capacity,
        }
    }
}

/// A JSON object.
type Object = Map<String, Json>;

const fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::CloudWins => "CloudWins",
        Policy::DeviceWins => "DeviceWins",
        Policy::LastWriterWins => "LastWriterWins",
        Policy::Custom => "Custom",
    }
}

fn policy_from(name: &str) -> Option<Policy> {
    Some(match name {
        "CloudWins" => Policy::CloudWins,
        "DeviceWins" => Policy::DeviceWins,
        "LastWriterWins" => Policy::LastWriterWins,
        "Custom" => Policy::Custom,
        _ => return None,
    })
}

pub(crate) fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::Number((*i).into()),
        Value::Float(f) => Number::from_f64(f.get()).map_or(Json::Null, Json::Number),
        Value::Text(t) => Json::String(t.as_str().to_owned()),
        Value::Array(a) => Json::Array(
            a.iter()
                .map(|s| match s {
                    Scalar::Bool(b) => Json::Bool(b),
                    Scalar::Int(i) => Json::Number(i.into()),
                    Scalar::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
                    Scalar::Text(t) => Json::String(t.to_owned()),
                })
                .collect(),
        ),
        _ => Json::Null,
    }
}

fn number(n: &Number) -> Result<Scalar<'static>, JsonError> {
    if let Some(i) = n.as_i64() {
        return Ok(Scalar::Int(i));
    }
    if n.is_u64() {
        return Err(JsonError::Shape("integer out of range"));
    }
    n.as_f64()
        .map(Scalar::Float)
        .ok_or(JsonError::Shape("number"))
}

pub(crate) fn value_from_json(j: &Json) -> Result<Value, JsonError> {
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match number(n)? {
            Scalar::Int(i) => Value::Int(i),
            Scalar::Float(f) => Value::float(f)?,
            _ => return Err(JsonError::Shape("number")),
        },
        Json::String(s) => Value::text(s)?,
        Json::Array(items) => {
            let mut scalars = Vec::with_capacity(items.len());
            for item in items {
                scalars.push(match item {
                    Json::Bool(b) => Scalar::Bool(*b),
                    Json::Number(n) => number(n)?,
                    Json::String(s) => Scalar::Text(s.as_str()),
                    _ => return Err(JsonError::Shape("arrays hold scalars only")),
                });
            }
            Value::array(&scalars)?
        }
        Json::Object(_) => return Err(JsonError::Shape("object where a value belongs")),
    })
}

fn stamp_to_json(s: &Stamp) -> Json {
    let mut m = Map::new();
    let seconds = s.hlc().physical_ms() / 1000;
    m.insert("timestamp".into(), Json::Number(seconds.into()));
    m.insert("hlc".into(), Json::Number(s.time.into()));
    m.insert("node".into(), Json::Number(s.node.0.into()));
    m.insert("policy".into(), Json::String(policy_name(s.policy).into()));
    m.insert(
        "origin".into(),
        Json::String(
            match s.origin {
                Origin::Cloud => "Cloud",
                Origin::Device => "Device",
            }
            .into(),
        ),
    );
    Json::Object(m)
}

/// The stamp of an AWS metadata entry that holds only `timestamp` (seconds), as AWS itself
/// serves documents: the write is placed at the start of that second, with the writer and
/// policy of `default` (or a cloud write under last-writer-wins without one).
pub(crate) fn stamp_from_seconds(seconds: u64, default: Option<Stamp>) -> Stamp {
    let base = default.unwrap_or(Stamp::new(
        HlcTimestamp::default(),
        Policy::LastWriterWins,
        Origin::Cloud,
    ));
    let ms = seconds
        .saturating_mul(1000)
        .min(iot_core::time::MAX_PHYSICAL_MS);
    let time = HlcTimestamp::from_parts(ms, 0, base.node).map_or(base.time, |h| h.time);
    Stamp { time, ..base }
}

fn stamp_from_json(j: &Json, default: Option<Stamp>) -> Result<Stamp, JsonError> {
    let m = j.as_object().ok_or(JsonError::Shape("metadata entry"))?;
    if !m.contains_key("hlc")
        && let Some(seconds) = m.get("timestamp").and_then(Json::as_u64)
    {
        return Ok(stamp_from_seconds(seconds, default));
    }
    let time = m
        .get("hlc")
        .and_then(Json::as_u64)
        .ok_or(JsonError::MissingMetadata)?;
    let node = m
        .get("node")
        .and_then(Json::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(JsonError::MissingMetadata)?;
    let policy = m
        .get("policy")
        .and_then(Json::as_str)
        .and_then(policy_from)
        .ok_or(JsonError::MissingMetadata)?;
    let origin = match m.get("origin").and_then(Json::as_str) {
        Some("Cloud") => Origin::Cloud,
        Some("Device") => Origin::Device,
        _ => return Err(JsonError::MissingMetadata),
    };
    Ok(Stamp::new(
        HlcTimestamp {
            time,
            node: NodeId(node),
        },
        policy,
        origin,
    ))
}

pub(crate) fn insert_nested(
    root: &mut Map<String, Json>,
    path: &Path,
    leaf: Json,
) -> Result<(), JsonError> {
    let mut node = root;
    let mut segments = path.segments().peekable();
    while let Some(seg) = segments.next() {
        if segments.peek().is_none() {
            if node.insert(seg.to_owned(), leaf).is_some() {
                return Err(JsonError::Shape("a leaf path is written twice"));
            }
            return Ok(());
        }
        let child = node
            .entry(seg.to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        node = child
            .as_object_mut()
            .ok_or(JsonError::Shape("a leaf is also an object"))?;
    }
    Ok(())
}

fn section_json<'a>(items: impl Iterator<Item = Item<'a>>) -> Result<(Object, Object), JsonError> {
    let (mut state, mut meta) = (Map::new(), Map::new());
    for (path, value, stamp) in items {
        insert_nested(&mut state, path, value_to_json(value))?;
        insert_nested(&mut meta, path, stamp_to_json(stamp))?;
    }
    Ok((state, meta))
}

/// Writes a message in the AWS shape. `delta` (documents only) adds `state.delta`.
pub fn to_json<'a>(
    header: &Header<'_>,
    desired: impl Iterator<Item = Item<'a>>,
    reported: impl Iterator<Item = Item<'a>>,
    delta: Option<&mut dyn Iterator<Item = Item<'a>>>,
) -> Result<Json, JsonError> {
    let mut root = Map::new();
    let (d_state, d_meta) = section_json(desired)?;
    let (r_state, r_meta) = section_json(reported)?;
    if header.kind == Kind::Delta {
        root.insert("state".into(), Json::Object(d_state));
        root.insert("metadata".into(), Json::Object(d_meta));
    } else {
        let mut state = Map::new();
        let mut meta = Map::new();
        if !d_state.is_empty() {
            state.insert("desired".into(), Json::Object(d_state));
            meta.insert("desired".into(), Json::Object(d_meta));
        }
        if !r_state.is_empty() {
            state.insert("reported".into(), Json::Object(r_state));
            meta.insert("reported".into(), Json::Object(r_meta));
        }
        if let Some(delta) = delta {
            let mut d = Map::new();
            for (path, value, _) in delta {
                insert_nested(&mut d, path, value_to_json(value))?;
            }
            if !d.is_empty() {
                state.insert("delta".into(), Json::Object(d));
            }
        }
        root.insert("state".into(), Json::Object(state));
        root.insert("metadata".into(), Json::Object(meta));
    }
    if let Some(v) = header.version {
        root.insert("version".into(), Json::Number(v.into()));
    }
    if let Some(t) = header.client_token {
        root.insert("clientToken".into(), Json::String(t.to_owned()));
    }
    Ok(Json::Object(root))
}

/// Writes a message carrying `writes` (any order) in the AWS shape.
pub fn writes_to_json(header: &Header<'_>, writes: &[Write]) -> Result<Json, JsonError> {
    to_json(
        header,
        crate::cbor::Sorted::new(writes, Section::Desired),
        crate::cbor::Sorted::new(writes, Section::Reported),
        None,
    )
}

const MAX_NESTING: usize = crate::path::PATH_CAPACITY / 2;

fn flatten(
    state: &Map<String, Json>,
    meta: Option<&Map<String, Json>>,
    prefix: &mut String,
    depth: usize,
    section: Section,
    default: Option<Stamp>,
    out: &mut Vec<Write>,
) -> Result<(), JsonError> {
    if depth > MAX_NESTING {
        return Err(JsonError::Shape("nested too deeply"));
    }
    for (key, value) in state {
        let mark = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(key);
        let child_meta = meta.and_then(|m| m.get(key));
        match value {
            Json::Object(inner) => flatten(
                inner,
                child_meta.and_then(Json::as_object),
                prefix,
                depth.saturating_add(1),
                section,
                default,
                out,
            )?,
            leaf => {
                let path = Path::new(prefix)?;
                let stamp = match (child_meta, default) {
                    (Some(m), d) => stamp_from_json(m, d)?,
                    (None, Some(d)) => d,
                    (None, None) => return Err(JsonError::MissingMetadata),
                };
                out.push(Write::new(section, path, value_from_json(leaf)?, stamp));
            }
        }
        prefix.truncate(mark);
    }
    Ok(())
}

/// Reads a message of `kind` in the AWS shape. Leaves without metadata get `default` (for
/// AWS-style clients that send no stamps) or fail with [`JsonError::MissingMetadata`].
pub fn from_json(
    json: &str,
    kind: Kind,
    default: Option<Stamp>,
) -> Result<OwnedMessage, JsonError> {
    let root: Json = serde_json::from_str(json).map_err(|_| JsonError::Syntax)?;
    let root = root.as_object().ok_or(JsonError::Shape("top level"))?;
    let state = root
        .get("state")
        .map(|s| s.as_object().ok_or(JsonError::Shape("state")))
        .transpose()?;
    let meta = root
        .get("metadata")
        .map(|m| m.as_object().ok_or(JsonError::Shape("metadata")))
        .transpose()?;
    let mut writes = Vec::new();
    if let Some(state) = state {
        if kind == Kind::Delta {
            flatten(
                state,
                meta,
                &mut String::new(),
                0,
                Section::Desired,
                default,
                &mut writes,
            )?;
        } else {
            for (name, section) in [
                ("desired", Section::Desired),
                ("reported", Section::Reported),
            ] {
                match state.get(name) {
                    None => {}
                    Some(Json::Null) => {
                        return Err(JsonError::Shape(
                            "a null section deletes it: apply such requests with aws::AwsShadow",
                        ));
                    }
                    Some(Json::Object(s)) => flatten(
                        s,
                        meta.and_then(|m| m.get(name)).and_then(Json::as_object),
                        &mut String::new(),
                        0,
                        section,
                        default,
                        &mut writes,
                    )?,
                    Some(_) => return Err(JsonError::Shape("section")),
                }
            }
        }
    }
    writes.sort_by(|a, b| (a.section, &a.path).cmp(&(b.section, &b.path)));
    let version = match root.get("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(JsonError::Shape("version"))?),
    };
    let client_token = match root.get("clientToken") {
        None => None,
        Some(t) => {
            let t = t.as_str().ok_or(JsonError::Shape("clientToken"))?;
            if t.len() > CLIENT_TOKEN_CAPACITY {
                return Err(JsonError::TokenTooLong);
            }
            Some(t.to_owned())
        }
    };
    Ok(OwnedMessage {
        kind,
        version,
        client_token,
        writes,
    })
}

impl<S: FieldStore, R: Resolver, const T: usize> Shadow<S, R, T> {
    /// The document in the AWS shape, with `state.delta`.
    pub fn to_aws_json(&self) -> Result<Json, JsonError> {
        let header = Header {
            kind: Kind::Document,
            version: Some(self.version()),
            client_token: None,
        };
        let mut delta = self.delta().map(crate::cbor::leaf_item);
        to_json(
            &header,
            self.section(Section::Desired).map(crate::cbor::leaf_item),
            self.section(Section::Reported).map(crate::cbor::leaf_item),
            Some(&mut delta),
        )
    }

    /// The document exactly as AWS IoT would serve it: `metadata` holds only `timestamp`
    /// (seconds), removed leaves (tombstones) are absent from `state` and `metadata`, plus
    /// `state.delta` and a top-level `timestamp`. This is the size baseline the CBOR encoding
    /// is compared with.
    pub fn to_aws_native_json(&self, now_s: u64) -> Result<Json, JsonError> {
        let header = Header {
            kind: Kind::Document,
            version: Some(self.version()),
            client_token: None,
        };
        let live = |(_, l): &(&Path, &crate::store::Leaf)| !l.value.is_null();
        let mut delta = self.delta().map(crate::cbor::leaf_item);
        let mut doc = to_json(
            &header,
            self.section(Section::Desired)
                .filter(live)
                .map(crate::cbor::leaf_item),
            self.section(Section::Reported)
                .filter(live)
                .map(crate::cbor::leaf_item),
            Some(&mut delta),
        )?;
        fn strip(meta: &mut Json) {
            if let Some(m) = meta.as_object_mut() {
                if m.contains_key("hlc") {
                    m.retain(|k, _| k == "timestamp");
                } else {
                    for v in m.values_mut() {
                        strip(v);
                    }
                }
            }
        }
        if let Some(root) = doc.as_object_mut() {
            if let Some(meta) = root.get_mut("metadata") {
                strip(meta);
            }
            root.insert("timestamp".into(), Json::Number(now_s.into()));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_and_metadata_round_trip() {
        let st = |t: u64| {
            Stamp::new(
                HlcTimestamp {
                    time: t << 16,
                    node: NodeId(3),
                },
                Policy::CloudWins,
                Origin::Cloud,
            )
        };
        let writes = [
            Write::new(
                Section::Desired,
                Path::new("a.b").unwrap(),
                Value::Int(1),
                st(1_700_000_000_000),
            ),
            Write::new(
                Section::Desired,
                Path::new("a.c").unwrap(),
                Value::float(1.0).unwrap(),
                st(2),
            ),
            Write::new(
                Section::Reported,
                Path::new("x").unwrap(),
                Value::Null,
                st(3),
            ),
        ];
        let header = Header {
            kind: Kind::Update,
            version: Some(3),
            client_token: Some("t"),
        };
        let json = writes_to_json(&header, &writes).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        assert!(
            text.contains(r#""desired":{"a":{"b":1,"c":1.0}}"#),
            "{text}"
        );
        assert!(text.contains(r#""timestamp":1700000000"#), "{text}");
        let back = from_json(&text, Kind::Update, None).unwrap();
        assert_eq!(back.header(), header);
        assert_eq!(back.writes.as_slice(), &writes);
    }

    #[test]
    fn aws_style_requests_take_a_default_stamp() {
        let text = r#"{"state":{"desired":{"led":true,"t":{"i":[1,2.5,"x"]}}},"clientToken":"c1"}"#;
        assert_eq!(
            from_json(text, Kind::Update, None).map(|m| m.writes.len()),
            Err(JsonError::MissingMetadata)
        );
        let m = from_json(text, Kind::Update, Some(Stamp::default())).unwrap();
        assert_eq!(m.writes.len(), 2);
        assert_eq!(m.client_token.as_deref(), Some("c1"));
        for bad in [
            "[]",
            "{",
            r#"{"state":{"desired":{"a":{"b":[[1]]}}}}"#,
            r#"{"state":{"desired":{"a b":1}}}"#,
            r#"{"state":{"desired":{"a":18446744073709551615}}}"#,
            r#"{"state":{"desired":3}}"#,
            r#"{"state":{"desired":null}}"#,
        ] {
            assert!(
                from_json(bad, Kind::Update, Some(Stamp::default())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn aws_native_output_has_no_tombstones() {
        use crate::store::MapStore;
        let mut doc: Shadow<MapStore> = Shadow::default();
        let st = |t: u64| {
            Stamp::new(
                HlcTimestamp::from_parts(t, 0, NodeId(1)).unwrap(),
                Policy::LastWriterWins,
                Origin::Cloud,
            )
        };
        let put = |path: &str, v: Value, t: u64| {
            Write::new(Section::Desired, Path::new(path).unwrap(), v, st(t))
        };
        doc.apply(
            &Update::new(&[
                put("a", Value::Int(1), 1000),
                put("b.c", Value::Int(2), 1000),
            ]),
            0,
        )
        .unwrap();
        doc.apply(&Update::new(&[put("b.c", Value::Null, 2000)]), 0)
            .unwrap();
        assert_eq!(doc.tombstones(), 1);
        let native = doc.to_aws_native_json(5).unwrap();
        assert_eq!(
            native["state"],
            serde_json::json!({"desired": {"a": 1}, "delta": {"a": 1}})
        );
        assert_eq!(
            native["metadata"],
            serde_json::json!({"desired": {"a": {"timestamp": 1}}})
        );
        // The lossless form keeps the tombstone for replicas that still need to see it.
        assert_eq!(
            doc.to_aws_json().unwrap()["state"]["desired"]["b"]["c"],
            Json::Null
        );
    }

    #[test]
    fn metadata_with_only_a_timestamp_imports() {
        let text = r#"{"state":{"reported":{"t":{"c":21}}},
                      "metadata":{"reported":{"t":{"c":{"timestamp":1700000000}}}},"version":4}"#;
        let m = from_json(text, Kind::Document, None).unwrap();
        assert_eq!(m.version, Some(4));
        assert_eq!(m.writes.len(), 1);
        assert_eq!(m.writes[0].stamp.hlc().physical_ms(), 1_700_000_000_000);
        assert_eq!(m.writes[0].stamp.policy, Policy::LastWriterWins);
    }
}
