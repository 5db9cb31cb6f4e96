//! The peer the shadow benchmarks measure against: AWS-IoT-style shadow documents held as
//! `serde_json::Value`, updated the straightforward way (RFC 7386 merge patch with
//! per-leaf metadata timestamps). Included by the benches of iot-shadow and iot-fleet so
//! both measure the same peer.

use iot_shadow::Value;
use serde_json::{Map, Value as Json, json};

/// A shadow leaf as JSON.
pub(crate) fn json_value(v: &Value) -> Json {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f.get()),
        Value::Text(t) => json!(t.as_str()),
        _ => Json::Null,
    }
}

/// Sets `value` at the dotted `path` under `root`, creating objects on the way.
pub(crate) fn set_nested(root: &mut Map<String, Json>, path: &str, value: Json) {
    let mut parts = path.split('.').peekable();
    let mut node = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            node.insert(part.to_owned(), value);
            return;
        }
        node = node
            .entry(part.to_owned())
            .or_insert_with(|| Json::Object(Map::new()))
            .as_object_mut()
            .expect("an object was just inserted");
    }
}

/// RFC 7386 merge patch; `meta` receives `{"timestamp": now}` for every leaf written.
pub(crate) fn merge_patch(target: &mut Json, patch: &Json, meta: &mut Json, now_s: u64) {
    let Json::Object(patch) = patch else {
        *target = patch.clone();
        *meta = json!({ "timestamp": now_s });
        return;
    };
    if !target.is_object() {
        *target = Json::Object(Map::new());
    }
    if !meta.is_object() {
        *meta = Json::Object(Map::new());
    }
    let (Some(t), Some(m)) = (target.as_object_mut(), meta.as_object_mut()) else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
            m.remove(k);
        } else {
            let slot = t.entry(k.clone()).or_insert(Json::Null);
            let mslot = m.entry(k.clone()).or_insert(Json::Null);
            merge_patch(slot, v, mslot, now_s);
        }
    }
}
