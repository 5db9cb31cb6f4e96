//! The strongest JSON peer of the shadow benchmarks: the AWS-IoT-style shadow documents of the
//! 10-field benchmark shadow as typed structs (`#[derive(Serialize, Deserialize)]`), updated
//! field by field. It writes the same JSON as the untyped `serde_json::Value` peer
//! (`aws_json_peer.rs`); the benches check that before timing. Being typed, it knows the
//! schema at compile time: no maps, no key lookups, a field that is absent is `None`.
//!
//! What it does not do, unlike the untyped peer and ours: remove a field written as `null`
//! (serde reads `null` as `None`, the same as absent; the benchmark update removes nothing).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// `{"interval": ...}`, the nested fields `telemetry` and `heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Interval<I> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) interval: Option<I>,
}

/// The 10 fields of the benchmark shadow (`ten_field_shadow::FIELDS`), each optional, generic
/// over the type of each kind of leaf: values are `Fields<f64, i64, bool, String>`, metadata
/// `Fields<Ts, Ts, Ts, Ts>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Fields<F, I, B, S> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) temperature: Option<F>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) humidity: Option<F>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) battery: Option<I>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) led: Option<B>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) firmware: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rssi: Option<I>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) uptime: Option<I>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) telemetry: Option<Interval<I>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) heartbeat: Option<Interval<I>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mode: Option<S>,
}

/// Leaf values.
pub(crate) type Values = Fields<f64, i64, bool, String>;
/// Leaf metadata.
pub(crate) type Meta = Fields<Ts, Ts, Ts, Ts>;

/// `{"timestamp": seconds}`, the metadata of one leaf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ts {
    pub(crate) timestamp: u64,
}

/// `desired` and `reported`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Sections<T> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) desired: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reported: Option<T>,
}

/// The stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Document {
    pub(crate) state: Sections<Values>,
    pub(crate) metadata: Sections<Meta>,
    pub(crate) version: u64,
    pub(crate) timestamp: u64,
}

/// An update request (`$aws/things/T/shadow/update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Request<'a> {
    pub(crate) state: Sections<Values>,
    #[serde(
        rename = "clientToken",
        default,
        borrow,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) client_token: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<u64>,
}

/// The `update/accepted` response.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted<'a> {
    pub(crate) state: &'a Sections<Values>,
    pub(crate) metadata: Sections<Meta>,
    pub(crate) version: u64,
    pub(crate) timestamp: u64,
    #[serde(rename = "clientToken", skip_serializing_if = "Option::is_none")]
    pub(crate) client_token: Option<&'a str>,
}

/// The `update/delta` notification.
#[derive(Debug, Serialize)]
pub(crate) struct Delta {
    pub(crate) version: u64,
    pub(crate) timestamp: u64,
    pub(crate) state: Values,
    pub(crate) metadata: Meta,
}

/// One leaf of a merge patch: a written value replaces the stored one and stamps both the
/// stored and the acknowledged metadata.
fn patch_leaf<T: Clone>(
    doc: &mut Option<T>,
    meta: &mut Option<Ts>,
    written: &mut Option<Ts>,
    patch: &Option<T>,
    ts: Ts,
) {
    if let Some(v) = patch {
        *doc = Some(v.clone());
        *meta = Some(ts);
        *written = Some(ts);
    }
}

/// A nested `{"interval": ...}` field of a merge patch.
fn patch_interval(
    doc: &mut Option<Interval<i64>>,
    meta: &mut Option<Interval<Ts>>,
    written: &mut Option<Interval<Ts>>,
    patch: &Option<Interval<i64>>,
    ts: Ts,
) {
    if let Some(Interval { interval: Some(_) }) = patch {
        patch_leaf(
            &mut doc.get_or_insert_default().interval,
            &mut meta.get_or_insert_default().interval,
            &mut written.get_or_insert_default().interval,
            &patch.as_ref().and_then(|p| p.interval),
            ts,
        );
    }
}

/// Applies `patch` to `doc` and its metadata; returns the metadata of what was written.
fn merge_patch(doc: &mut Values, meta: &mut Meta, patch: &Values, ts: Ts) -> Meta {
    let mut w = Meta::default();
    patch_leaf(
        &mut doc.temperature,
        &mut meta.temperature,
        &mut w.temperature,
        &patch.temperature,
        ts,
    );
    patch_leaf(
        &mut doc.humidity,
        &mut meta.humidity,
        &mut w.humidity,
        &patch.humidity,
        ts,
    );
    patch_leaf(
        &mut doc.battery,
        &mut meta.battery,
        &mut w.battery,
        &patch.battery,
        ts,
    );
    patch_leaf(&mut doc.led, &mut meta.led, &mut w.led, &patch.led, ts);
    patch_leaf(
        &mut doc.firmware,
        &mut meta.firmware,
        &mut w.firmware,
        &patch.firmware,
        ts,
    );
    patch_leaf(&mut doc.rssi, &mut meta.rssi, &mut w.rssi, &patch.rssi, ts);
    patch_leaf(
        &mut doc.uptime,
        &mut meta.uptime,
        &mut w.uptime,
        &patch.uptime,
        ts,
    );
    patch_interval(
        &mut doc.telemetry,
        &mut meta.telemetry,
        &mut w.telemetry,
        &patch.telemetry,
        ts,
    );
    patch_interval(
        &mut doc.heartbeat,
        &mut meta.heartbeat,
        &mut w.heartbeat,
        &patch.heartbeat,
        ts,
    );
    patch_leaf(&mut doc.mode, &mut meta.mode, &mut w.mode, &patch.mode, ts);
    w
}

/// A desired leaf that reported does not match, with its metadata.
fn delta_leaf<T: Clone + PartialEq>(
    desired: &Option<T>,
    reported: &Option<T>,
    meta: &Option<Ts>,
    out: &mut Option<T>,
    out_meta: &mut Option<Ts>,
) -> bool {
    match desired {
        Some(d) if reported.as_ref() != Some(d) => {
            *out = Some(d.clone());
            *out_meta = *meta;
            true
        }
        _ => false,
    }
}

fn delta_interval(
    desired: &Option<Interval<i64>>,
    reported: &Option<Interval<i64>>,
    meta: &Option<Interval<Ts>>,
    out: &mut Option<Interval<i64>>,
    out_meta: &mut Option<Interval<Ts>>,
) -> bool {
    let (mut v, mut m) = (None, None);
    let differs = delta_leaf(
        &desired.as_ref().and_then(|d| d.interval),
        &reported.as_ref().and_then(|r| r.interval),
        &meta.as_ref().and_then(|m| m.interval),
        &mut v,
        &mut m,
    );
    if differs {
        *out = Some(Interval { interval: v });
        *out_meta = Some(Interval { interval: m });
    }
    differs
}

/// Desired leaves absent from reported or different from it, and their metadata.
fn delta(desired: &Values, reported: &Values, meta: &Meta) -> Option<(Values, Meta)> {
    let (mut d, mut m) = (Values::default(), Meta::default());
    let mut any = false;
    any |= delta_leaf(
        &desired.temperature,
        &reported.temperature,
        &meta.temperature,
        &mut d.temperature,
        &mut m.temperature,
    );
    any |= delta_leaf(
        &desired.humidity,
        &reported.humidity,
        &meta.humidity,
        &mut d.humidity,
        &mut m.humidity,
    );
    any |= delta_leaf(
        &desired.battery,
        &reported.battery,
        &meta.battery,
        &mut d.battery,
        &mut m.battery,
    );
    any |= delta_leaf(
        &desired.led,
        &reported.led,
        &meta.led,
        &mut d.led,
        &mut m.led,
    );
    any |= delta_leaf(
        &desired.firmware,
        &reported.firmware,
        &meta.firmware,
        &mut d.firmware,
        &mut m.firmware,
    );
    any |= delta_leaf(
        &desired.rssi,
        &reported.rssi,
        &meta.rssi,
        &mut d.rssi,
        &mut m.rssi,
    );
    any |= delta_leaf(
        &desired.uptime,
        &reported.uptime,
        &meta.uptime,
        &mut d.uptime,
        &mut m.uptime,
    );
    any |= delta_interval(
        &desired.telemetry,
        &reported.telemetry,
        &meta.telemetry,
        &mut d.telemetry,
        &mut m.telemetry,
    );
    any |= delta_interval(
        &desired.heartbeat,
        &reported.heartbeat,
        &meta.heartbeat,
        &mut d.heartbeat,
        &mut m.heartbeat,
    );
    any |= delta_leaf(
        &desired.mode,
        &reported.mode,
        &meta.mode,
        &mut d.mode,
        &mut m.mode,
    );
    any.then_some((d, m))
}

/// One update cycle, as the untyped peer's `peer_cycle`: parse the request, check its
/// version, merge each section with metadata, bump the version, write the ack and (when
/// desired and reported differ) the delta.
pub(crate) fn typed_cycle(
    doc: &mut Document,
    update: &[u8],
    now_s: u64,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let req: Request<'_> = serde_json::from_slice(update).expect("a valid request");
    assert!(
        req.version.is_none_or(|e| e == doc.version),
        "version conflict"
    );
    let ts = Ts { timestamp: now_s };
    let mut written = Sections::<Meta>::default();
    if let Some(patch) = &req.state.desired {
        let state = doc.state.desired.get_or_insert_default();
        let meta = doc.metadata.desired.get_or_insert_default();
        written.desired = Some(merge_patch(state, meta, patch, ts));
    }
    if let Some(patch) = &req.state.reported {
        let state = doc.state.reported.get_or_insert_default();
        let meta = doc.metadata.reported.get_or_insert_default();
        written.reported = Some(merge_patch(state, meta, patch, ts));
    }
    doc.version += 1;
    doc.timestamp = now_s;
    let ack = serde_json::to_vec(&Accepted {
        state: &req.state,
        metadata: written,
        version: doc.version,
        timestamp: now_s,
        client_token: req.client_token.as_deref(),
    })
    .expect("serialisable");
    let empty = (Values::default(), Meta::default());
    let desired = doc.state.desired.as_ref().unwrap_or(&empty.0);
    let reported = doc.state.reported.as_ref().unwrap_or(&empty.0);
    let meta = doc.metadata.desired.as_ref().unwrap_or(&empty.1);
    let delta = delta(desired, reported, meta).map(|(state, metadata)| {
        serde_json::to_vec(&Delta {
            version: doc.version,
            timestamp: now_s,
            state,
            metadata,
        })
        .expect("serialisable")
    });
    (ack, delta)
}
