//! The AWS shadow against a reference model of AWS's documented update rule: a JSON merge
//! (RFC 7386: `null` deletes, objects merge, any other value replaces) of each request
//! section into the document, with `"state": null` and a `null` section deleting wholesale.
//! Objects left empty vanish (the engine stores leaves).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_aws::AwsShadow;
use proptest::prelude::*;
use serde_json::{Map, Value as Json, json};

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => (0i64..3).prop_map(Json::from),
        2 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::from),
        1 => proptest::collection::vec(0i64..2, 0..3).prop_map(|v| json!(v)),
    ]
}

fn patch() -> impl Strategy<Value = Json> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        proptest::collection::btree_map(prop_oneof![Just("a"), Just("b"), Just("c")], inner, 0..3)
            .prop_map(|m| Json::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    })
}

fn section_patch() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => patch().prop_filter("a section patch is an object", Json::is_object),
        1 => Just(Json::Null),
    ]
}

fn request() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => section_patch().prop_map(|p| json!({"state": {"desired": p}})),
        4 => section_patch().prop_map(|p| json!({"state": {"reported": p}})),
        2 => (section_patch(), section_patch())
            .prop_map(|(d, r)| json!({"state": {"desired": d, "reported": r}})),
        1 => Just(json!({"state": null})),
    ]
}

fn merge(target: &mut Map<String, Json>, patch: &Map<String, Json>) {
    for (k, v) in patch {
        match v {
            Json::Null => {
                target.remove(k);
            }
            Json::Object(p) => {
                let entry = target.entry(k.clone()).or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                merge(entry.as_object_mut().unwrap(), p);
                if entry.as_object().unwrap().is_empty() {
                    target.remove(k);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

#[derive(Default, Clone, Debug)]
struct Model {
    desired: Map<String, Json>,
    reported: Map<String, Json>,
}

impl Model {
    fn apply(&mut self, request: &Json) {
        let state = &request["state"];
        if state.is_null() {
            *self = Self::default();
            return;
        }
        for (name, half) in [
            ("desired", &mut self.desired),
            ("reported", &mut self.reported),
        ] {
            match state.get(name) {
                None => {}
                Some(Json::Null) => half.clear(),
                Some(Json::Object(p)) => merge(half, p),
                Some(other) => panic!("generator made {other}"),
            }
        }
    }

    fn state(&self) -> Json {
        let mut s = Map::new();
        if !self.desired.is_empty() {
            s.insert("desired".into(), Json::Object(self.desired.clone()));
        }
        if !self.reported.is_empty() {
            s.insert("reported".into(), Json::Object(self.reported.clone()));
        }
        Json::Object(s)
    }

    /// Desired leaves whose value reported lacks at the same path (arrays compare whole).
    fn delta(&self) -> Option<Json> {
        fn walk(d: &Map<String, Json>, r: Option<&Map<String, Json>>) -> Map<String, Json> {
            let mut out = Map::new();
            for (k, v) in d {
                let theirs = r.and_then(|r| r.get(k));
                match v {
                    Json::Object(inner) => {
                        let sub = walk(inner, theirs.and_then(Json::as_object));
                        if !sub.is_empty() {
                            out.insert(k.clone(), Json::Object(sub));
                        }
                    }
                    leaf if theirs != Some(leaf) => {
                        out.insert(k.clone(), leaf.clone());
                    }
                    _ => {}
                }
            }
            out
        }
        let d = walk(&self.desired, Some(&self.reported));
        (!d.is_empty()).then_some(Json::Object(d))
    }
}

fn get_state(s: &AwsShadow) -> Json {
    s.get(b"", 0).unwrap()["state"].clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// After any sequence of requests the shadow holds what the merge model holds, its
    /// delta is the model's delta, every request raises the version by one, `accepted`
    /// echoes the request's state and `documents` shows the model before and after.
    #[test]
    fn the_shadow_follows_the_json_merge_model(
        requests in proptest::collection::vec(request(), 1..10),
    ) {
        let mut shadow = AwsShadow::new("t");
        let mut model = Model::default();
        for (i, request) in requests.iter().enumerate() {
            let before = model.state();
            let existed = shadow.exists();
            model.apply(request);
            let u = shadow
                .update(request.to_string().as_bytes(), 1_000 * (i as u64 + 1))
                .unwrap();
            prop_assert_eq!(u.version, i as u64 + 1);
            prop_assert_eq!(&u.accepted["state"], &request["state"]);
            if existed {
                prop_assert_eq!(&u.documents["previous"]["state"], &before);
            }
            prop_assert_eq!(&u.documents["current"]["state"], &model.state());
            let mut expected = model.state();
            if let Some(d) = model.delta() {
                expected.as_object_mut().unwrap().insert("delta".into(), d);
            }
            prop_assert_eq!(get_state(&shadow), expected);
            let writes_desired = request["state"].get("desired").is_some_and(Json::is_object);
            prop_assert_eq!(u.delta.is_some(), writes_desired && model.delta().is_some());
            if let Some(delta) = &u.delta {
                prop_assert_eq!(Some(delta["state"].clone()), model.delta());
            }
            prop_assert_eq!(shadow.document().unwrap().tombstones(), 0);
        }
    }
}
