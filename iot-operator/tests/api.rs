//! The HTTP API end to end (in process, no sockets): search, tenant isolation on every
//! endpoint, bad input refused with no state change, rollouts, metrics, OpenAPI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use iot_core::{NodeId, TenantId};
use iot_fleet::{DeviceServer, Fleet, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;
use iot_operator::seed::{fixture_id, seed_tenant};
use iot_operator::{AppState, LocalEngine, TokenStore, router};
use iot_protocol::Downlink;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: u64 = 1_000_000;

struct Lab {
    app: Router,
    engine: LocalEngine,
    acme_admin: String,
    acme_viewer: String,
    acme_site0_operator: String,
    globex_admin: String,
}

fn lab() -> Lab {
    let mut fleet = Fleet::default();
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    seed_tenant(&mut fleet, acme, 0, 10, 2, NOW).unwrap();
    seed_tenant(&mut fleet, globex, 1, 5, 1, NOW).unwrap();
    let server = DeviceServer::with_os_rng(fleet, DeviceConfig::default(), NodeId(1));
    let engine = LocalEngine::new(server).with_clock(|| NOW + 500);
    let tokens = Arc::new(TokenStore::new());
    let root = Scope::root();
    let acme_admin = tokens.issue(Principal::new("ann", acme, root.clone(), Role::Admin));
    let acme_viewer = tokens.issue(Principal::new("vic", acme, root.clone(), Role::Viewer));
    let acme_site0_operator = tokens.issue(Principal::new(
        "otto",
        acme,
        "site-0".parse().unwrap(),
        Role::Operator,
    ));
    let globex_admin = tokens.issue(Principal::new("gus", globex, root, Role::Admin));
    let app = router(AppState::new(Arc::new(engine.clone()), tokens));
    Lab {
        app,
        engine,
        acme_admin,
        acme_viewer,
        acme_site0_operator,
        globex_admin,
    }
}

async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(app: &Router, uri: &str, token: &str) -> (StatusCode, Value) {
    send(app, Method::GET, uri, Some(token), None).await
}

async fn json_req(
    app: &Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    send(
        app,
        method,
        uri,
        Some(token),
        Some(body.to_string().into_bytes()),
    )
    .await
}

fn acme(i: usize) -> String {
    fixture_id(0, i).unwrap().as_str().to_owned()
}

/// Everything observable about tenant acme, to compare before and after a refused request.
async fn acme_snapshot(lab: &Lab) -> Value {
    let devices = get(&lab.app, "/api/v1/devices?limit=1000", &lab.acme_admin)
        .await
        .1;
    let shadow = get(
        &lab.app,
        &format!("/api/v1/devices/{}/shadow", acme(0)),
        &lab.acme_admin,
    )
    .await
    .1;
    let rollouts = get(&lab.app, "/api/v1/rollouts", &lab.acme_admin).await.1;
    let audit = get(&lab.app, "/api/v1/audit", &lab.acme_admin).await.1["entries"].clone();
    json!({"devices": devices, "shadow": shadow, "rollouts": rollouts, "audit": audit})
}

async fn start_acme_rollout(lab: &Lab) -> Value {
    let (status, _) = send(
        &lab.app,
        Method::PUT,
        "/api/v1/firmware/7",
        Some(&lab.acme_admin),
        Some(vec![7u8; 3000]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = json_req(
        &lab.app,
        Method::POST,
        "/api/v1/rollouts",
        &lab.acme_admin,
        json!({"version": 7, "previous": 6, "stages_bp": [2000, 10000], "max_failure_bp": 1000}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

#[tokio::test]
async fn search_filters_by_state_health_battery_scope_and_last_seen() {
    let lab = lab();
    let (s, all) = get(&lab.app, "/api/v1/devices", &lab.acme_admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all["total"], 10);
    assert!(
        all["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["tenant"] == "acme")
    );
    let total = |q: &'static str| {
        let app = lab.app.clone();
        let t = lab.acme_admin.clone();
        async move { get(&app, &format!("/api/v1/devices?{q}"), &t).await.1["total"].clone() }
    };
    assert_eq!(total("state=active").await, 10);
    assert_eq!(total("state=degraded").await, 0);
    assert_eq!(total("health=low_battery").await, 1);
    assert_eq!(total("health=healthy").await, 9);
    assert_eq!(total("battery_below=20").await, 1);
    assert_eq!(total("battery_at_least=20").await, 9);
    assert_eq!(total("scope=site-0").await, 5);
    assert_eq!(total("tenant=acme&scope=site-1&health=healthy").await, 4);
    assert_eq!(total("seen_after_ms=1000001").await, 0);
    assert_eq!(total("seen_before_ms=1000001").await, 10);
    assert_eq!(total("firmware=7").await, 0);
    let (s, page) = get(
        &lab.app,
        "/api/v1/devices?limit=3&offset=8",
        &lab.acme_admin,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["devices"].as_array().unwrap().len(), 2);
    // The scoped operator sees its site only.
    let (_, scoped) = get(&lab.app, "/api/v1/devices", &lab.acme_site0_operator).await;
    assert_eq!(scoped["total"], 5);
    let (s, e) = get(
        &lab.app,
        "/api/v1/devices?scope=site-1",
        &lab.acme_site0_operator,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    // Bad filters are named.
    let (s, e) = get(&lab.app, "/api/v1/devices?state=sleepy", &lab.acme_admin).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (s, e) = get(&lab.app, "/api/v1/devices?colour=red", &lab.acme_admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["reason"].as_str().unwrap().contains("colour"), "{e}");
    let (s, _) = get(
        &lab.app,
        "/api/v1/devices?battery_below=lots",
        &lab.acme_admin,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn another_tenants_token_can_neither_see_nor_touch_anything() {
    let lab = lab();
    start_acme_rollout(&lab).await;
    lab.engine.take_outbox();
    let before = acme_snapshot(&lab).await;
    let g = lab.globex_admin.as_str();
    let id = acme(0);
    let app = &lab.app;

    // Tenant-wide reads show globex's own data only.
    let (_, devices) = get(app, "/api/v1/devices?limit=1000", g).await;
    assert_eq!(devices["total"], 5);
    assert!(
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["tenant"] == "globex")
    );
    let (s, _) = get(app, "/api/v1/devices?tenant=acme", g).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, health) = get(app, "/api/v1/health", g).await;
    assert_eq!(health["total"], 5);
    let (_, rollouts) = get(app, "/api/v1/rollouts", g).await;
    assert_eq!(rollouts["rollouts"], json!([]));
    let (_, audit) = get(app, "/api/v1/audit", g).await;
    let entries = audit["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|e| !e["device"].as_str().unwrap_or("t1").starts_with("t0-")),
        "{audit}"
    );
    let (_, audit) = get(app, &format!("/api/v1/audit?device={id}"), g).await;
    assert_eq!(audit["entries"], json!([]));

    // Every per-id endpoint answers 404 for acme's ids, exactly as for unknown ids.
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/api/v1/devices/{id}"), None),
        (Method::GET, format!("/api/v1/devices/{id}/shadow"), None),
        (Method::GET, format!("/api/v1/devices/{id}/audit"), None),
        (
            Method::PUT,
            format!("/api/v1/devices/{id}/shadow/desired"),
            Some(json!({"path": "led", "value": true})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{id}/commands"),
            Some(json!({"kind": "reboot"})),
        ),
        (
            Method::PUT,
            format!("/api/v1/devices/{id}/config"),
            Some(json!({"version": 9})),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{id}/decommission"),
            Some(json!({})),
        ),
        (Method::GET, "/api/v1/rollouts/0".to_owned(), None),
        (Method::POST, "/api/v1/rollouts/0/pause".to_owned(), None),
        (Method::POST, "/api/v1/rollouts/0/resume".to_owned(), None),
        (Method::POST, "/api/v1/rollouts/0/abort".to_owned(), None),
    ];
    for (method, uri, body) in cases {
        let body = body.map(|b| b.to_string().into_bytes());
        let (s, e) = send(app, method.clone(), &uri, Some(g), body.clone()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {e}");
        assert_eq!(e["error"], "not_found", "{method} {uri}");
        let unknown = uri
            .replace(&id, "t0-dev-999999")
            .replace("/rollouts/0", "/rollouts/99");
        let (s2, e2) = send(app, method.clone(), &unknown, Some(&lab.acme_admin), body).await;
        assert_eq!(
            (s2, &e2["reason"]),
            (s, &e["reason"]),
            "{method} {unknown}: same answer as a missing id"
        );
    }
    // Provisioning lands in globex's own tenant, never in acme's scopes.
    let (s, _) = json_req(app, Method::POST, "/api/v1/provision", g, json!({"scope": "site-0", "devices": [{"device_id": "g-new-1", "secret_hex": "ab".repeat(32), "sku": "X", "serial": 1}]})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(
        lab.engine.take_outbox().is_empty(),
        "nothing may reach acme's devices"
    );
    assert_eq!(
        acme_snapshot(&lab).await,
        before,
        "acme's state is unchanged"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    let lab = lab();
    let app = &lab.app;
    let t = lab.acme_admin.as_str();
    let uri = format!("/api/v1/devices/{}/shadow/desired", acme(0));
    let before = acme_snapshot(&lab).await;
    let raw = |body: &str| Some(body.as_bytes().to_vec());

    let (s, e) = send(app, Method::PUT, &uri, Some(t), raw("{\"path\": \"led\", ")).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json")),
        "{e}"
    );
    let (s, e) = send(
        app,
        Method::PUT,
        &uri,
        Some(t),
        raw(r#"{"path":"led","value":1,"force":true}"#),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_field")),
        "{e}"
    );
    assert!(e["reason"].as_str().unwrap().contains("force"));
    let (s, e) = send(app, Method::PUT, &uri, Some(t), raw(r#"{"path":"led"}"#)).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body")),
        "{e}"
    );
    let big = format!(r#"{{"path":"led","value":"{}"}}"#, "x".repeat(70_000));
    let (s, e) = send(app, Method::PUT, &uri, Some(t), Some(big.into_bytes())).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{e}"
    );
    let (s, e) = send(
        app,
        Method::PUT,
        &uri,
        Some(t),
        raw(r#"{"path":"led..x","value":1}"#),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = send(
        app,
        Method::PUT,
        &uri,
        Some(t),
        raw(r#"{"path":"led","value":{"a":1}}"#),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_value"))
    );
    // Tokens: missing, malformed, forged, and a viewer writing.
    let (s, e) = send(
        app,
        Method::PUT,
        &uri,
        None,
        raw(r#"{"path":"led","value":1}"#),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let forged = format!("iot_{}", "0".repeat(64));
    let (s, _) = send(
        app,
        Method::PUT,
        &uri,
        Some(&forged),
        raw(r#"{"path":"led","value":1}"#),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = send(
        app,
        Method::GET,
        "/api/v1/devices",
        Some("not-a-token"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, e) = send(
        app,
        Method::PUT,
        &uri,
        Some(&lab.acme_viewer),
        raw(r#"{"path":"led","value":1}"#),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{e}"
    );
    // The scoped operator cannot touch a device of the other site (invisible: 404).
    let other_site = format!("/api/v1/devices/{}/shadow/desired", acme(1));
    let (s, _) = send(
        app,
        Method::PUT,
        &other_site,
        Some(&lab.acme_site0_operator),
        raw(r#"{"path":"led","value":1}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Bad ids, commands, configs, secrets.
    let (s, e) = get(app, "/api/v1/devices/bad%20id", t).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_id"))
    );
    let cmd = format!("/api/v1/devices/{}/commands", acme(0));
    let (s, e) = json_req(app, Method::POST, &cmd, t, json!({"kind": "self_destruct"})).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_command"))
    );
    let (s, _) = json_req(
        app,
        Method::POST,
        &cmd,
        t,
        json!({"kind": "blink_led", "times": 3}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let cfg = format!("/api/v1/devices/{}/config", acme(0));
    let (s, e) = json_req(
        app,
        Method::PUT,
        &cfg,
        t,
        json!({"version": 2, "heartbeat_interval_ms": 0}),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_config"))
    );
    let (s, _) = json_req(
        app,
        Method::POST,
        "/api/v1/provision",
        t,
        json!({"devices": [{"device_id": "x-1", "secret_hex": "zz", "sku": "X", "serial": 1}]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // A duplicate in a manufacturing list refuses the whole list.
    let dup = json!({"devices": [{"device_id": "x-1", "secret_hex": "ab".repeat(32), "sku": "X", "serial": 1}, {"device_id": acme(2), "secret_hex": "ab".repeat(32), "sku": "X", "serial": 2}]});
    let (s, e) = json_req(app, Method::POST, "/api/v1/provision", t, dup).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = send(
        app,
        Method::POST,
        "/api/v1/rollouts/abc/pause",
        Some(t),
        None,
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path")),
        "{e}"
    );
    let (s, e) = get(app, "/api/v1/rollouts/-1", t).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path")),
        "{e}"
    );
    let (s, e) = send(app, Method::GET, "/api/v1/nothing", Some(t), None).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
    assert!(lab.engine.take_outbox().is_empty());
    assert_eq!(acme_snapshot(&lab).await, before);
}

#[tokio::test]
async fn desired_changes_are_versioned_and_reach_the_device() {
    let lab = lab();
    let (app, t) = (&lab.app, lab.acme_admin.as_str());
    let uri = format!("/api/v1/devices/{}/shadow/desired", acme(0));
    let (s, r) = json_req(
        app,
        Method::PUT,
        &uri,
        t,
        json!({"path": "led", "value": true, "version": 0}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["delta_sent"], true);
    let v1 = r["version"].as_u64().unwrap();
    assert!(v1 >= 1);
    let out = lab.engine.take_outbox();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0.as_str(), acme(0));
    assert!(matches!(out[0].1, Downlink::Shadow(_)));
    let (s, e) = json_req(
        app,
        Method::PUT,
        &uri,
        t,
        json!({"path": "led", "value": false, "version": 0}),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::CONFLICT, Some("version_conflict"))
    );
    let (_, shadow) = get(app, &format!("/api/v1/devices/{}/shadow", acme(0)), t).await;
    assert_eq!(shadow["desired"]["led"], true);
    assert_eq!(shadow["delta"]["led"], true);
    assert_eq!(shadow["version"].as_u64(), Some(v1));
    // Commands and configuration go out too.
    let (s, c) = json_req(
        app,
        Method::POST,
        &format!("/api/v1/devices/{}/commands", acme(0)),
        t,
        json!({"kind": "blink_led", "times": 3, "period_ms": 200}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = json_req(
        app,
        Method::PUT,
        &format!("/api/v1/devices/{}/config", acme(0)),
        t,
        json!({"version": 5, "telemetry_interval_ms": 60000}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let out = lab.engine.take_outbox();
    assert!(
        matches!(&out[0].1, Downlink::Command(cmd) if u64::from(cmd.id) == c["command_id"].as_u64().unwrap())
    );
    assert!(
        matches!(&out[1].1, Downlink::Config(cfg) if cfg.version == 5 && cfg.telemetry_interval_ms == 60_000)
    );
    // The audit trail records the change and its chain verifies.
    let (_, audit) = get(app, &format!("/api/v1/audit?device={}", acme(0)), t).await;
    assert_eq!(audit["chain"]["verified"], true);
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"].as_str().unwrap().contains("ShadowUpdated"))
    );
}

#[tokio::test]
async fn rollouts_are_created_paused_resumed_and_aborted() {
    let lab = lab();
    let (app, t) = (&lab.app, lab.acme_admin.as_str());
    let created = start_acme_rollout(&lab).await;
    assert_eq!(created["targets"], 10);
    assert_eq!(created["status"]["state"], "running");
    assert_eq!(created["stages"].as_array().unwrap().len(), 2);
    let (s, _) = send(
        app,
        Method::POST,
        "/api/v1/rollouts/0/pause",
        Some(&lab.acme_viewer),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, r) = send(app, Method::POST, "/api/v1/rollouts/0/pause", Some(t), None).await;
    assert_eq!(
        (s, &r["status"]["state"]),
        (StatusCode::OK, &json!("paused"))
    );
    let (s, e) = send(app, Method::POST, "/api/v1/rollouts/0/pause", Some(t), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (_, r) = send(
        app,
        Method::POST,
        "/api/v1/rollouts/0/resume",
        Some(t),
        None,
    )
    .await;
    assert_eq!(r["status"]["state"], "running");
    let (_, r) = send(app, Method::POST, "/api/v1/rollouts/0/abort", Some(t), None).await;
    assert_eq!(r["status"]["state"], "aborted");
    let (s, _) = send(
        app,
        Method::POST,
        "/api/v1/rollouts/0/explode",
        Some(t),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = json_req(
        app,
        Method::POST,
        "/api/v1/rollouts",
        t,
        json!({"version": 8}),
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::CONFLICT, Some("unknown_image"))
    );
    let (s, _) = json_req(
        app,
        Method::POST,
        "/api/v1/rollouts",
        t,
        json!({"version": 7, "stages_bp": [5000, 100]}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, list) = get(app, "/api/v1/rollouts", t).await;
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 1);
    let (s, _) = send(
        app,
        Method::PUT,
        "/api/v1/firmware/9",
        Some(&lab.acme_viewer),
        Some(vec![1]),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn decommissioning_needs_an_admin_and_tells_the_device() {
    let lab = lab();
    let uri = format!("/api/v1/devices/{}/decommission", acme(0));
    let (s, _) = json_req(
        &lab.app,
        Method::POST,
        &uri,
        &lab.acme_site0_operator,
        json!({}),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, r) = json_req(
        &lab.app,
        Method::POST,
        &uri,
        &lab.acme_admin,
        json!({"reason": "end_of_life"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["previous"], "active");
    assert!(matches!(
        lab.engine.take_outbox()[..],
        [(_, Downlink::Decommission(_))]
    ));
    let (s, _) = get(
        &lab.app,
        &format!("/api/v1/devices/{}", acme(0)),
        &lab.acme_admin,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, history) = get(
        &lab.app,
        &format!("/api/v1/devices/{}/audit", acme(0)),
        &lab.acme_admin,
    )
    .await;
    assert!(
        history["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"].as_str().unwrap().contains("Decommissioned"))
    );
    let (_, all) = get(&lab.app, "/api/v1/devices", &lab.acme_admin).await;
    assert_eq!(all["total"], 9);
}

#[tokio::test]
async fn metrics_and_openapi_describe_the_fleet_and_the_routes() {
    let lab = lab();
    start_acme_rollout(&lab).await;
    let _ = get(&lab.app, "/api/v1/devices", "iot_bad").await;
    let (s, text) = send(&lab.app, Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(r#"iot_devices{tenant="acme",state="active",health="healthy"} 9"#),
        "{text}"
    );
    assert!(text.contains(r#"iot_devices{tenant="acme",state="active",health="low_battery"} 1"#));
    assert!(text.contains(r#"iot_devices{tenant="globex",state="active",health="healthy"} 4"#));
    assert!(
        text.contains(r#"iot_api_refusals_total{cause="unauthorized"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"iot_rollout_stage_devices{tenant="acme",rollout="0",stage="0",outcome="pending"} 2"#
        ),
        "{text}"
    );
    assert!(text.contains("iot_device_messages_out_total"));
    assert!(text.contains("iot_store_op_seconds_bucket"));
    let (s, doc) = send(&lab.app, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/devices",
        "/api/v1/devices/{id}/shadow/desired",
        "/api/v1/rollouts/{id}/pause",
        "/api/v1/audit",
        "/api/v1/provision",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} documented");
    }
}

#[tokio::test]
async fn the_dashboard_is_served_without_a_token_and_reads_the_api_with_one() {
    let lab = lab();
    let (s, page) = send(&lab.app, Method::GET, "/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let page = page.as_str().unwrap();
    for id in [
        "count-total",
        "count-low_battery",
        "rollouts",
        "desired-form",
        "device-audit",
        "chain-ok",
    ] {
        assert!(page.contains(id), "{id}");
    }
    // The page holds no data: everything it shows comes from token-checked API calls.
    assert!(!page.contains("t0-dev-"));
    let (s, who) = get(&lab.app, "/api/v1/whoami", &lab.acme_site0_operator).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        who,
        json!({"actor": "otto", "tenant": "acme", "scope": "/site-0", "role": "operator"})
    );
}
