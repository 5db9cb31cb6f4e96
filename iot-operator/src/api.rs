//! The HTTP API: routes, request and response bodies, authentication.
//!
//! Every route under `/api/v1` needs `Authorization: Bearer <token>`; the token's
//! [`Principal`] is the only identity a handler acts as, and every read and write goes
//! through iot-fleet's principal-scoped methods, so another tenant's ids are `404` exactly
//! like ids that do not exist. Request bodies are JSON with unknown fields refused, at most
//! [`MAX_JSON_BODY`] bytes (firmware images [`MAX_IMAGE_BODY`]). The OpenAPI document is at
//! `/openapi.json`, metrics at `/metrics`, the dashboard at `/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use iot_core::{DeviceId, TenantId};
use iot_fleet::audit::AuditLog;
use iot_fleet::health::status_of;
use iot_fleet::registry::ManufacturingRecord;
use iot_fleet::rollout::{RolloutConfig, RolloutStatus};
use iot_fleet::{DeviceRecord, DeviceServer, HealthStatus, Principal, Role, Scope, ServerShadow};
use iot_lifecycle::command::{Command, CommandKind};
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::DecommissionReason;
use iot_lifecycle::state::State as LifecycleState;
use iot_protocol::Downlink;
use iot_shadow::{Section, Value};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json_, json};

use crate::engine::{Engine, call};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::names::{STATES, health_name, state_name};
use crate::tokens::TokenStore;

/// The largest JSON request body accepted, in bytes.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// The largest firmware image accepted, in bytes.
pub const MAX_IMAGE_BODY: usize = 4 * 1024 * 1024;
/// The most devices one search returns.
pub const MAX_PAGE: usize = 1_000;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The backend.
    pub engine: Arc<dyn Engine>,
    /// Issued tokens.
    pub tokens: Arc<TokenStore>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    next_command: Arc<AtomicU32>,
}

impl core::fmt::Debug for AppState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `engine` with `tokens`.
    pub fn new(engine: Arc<dyn Engine>, tokens: Arc<TokenStore>) -> Self {
        let seed = u32::try_from(engine.now_ms().checked_rem(1 << 30).unwrap_or(0)).unwrap_or(1);
        Self {
            engine,
            tokens,
            metrics: Arc::new(Metrics::new()),
            next_command: Arc::new(AtomicU32::new(seed)),
        }
    }

    /// Runs `f` on the server, timing it for the `store latency` histogram.
    fn run<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut DeviceServer) -> R,
    ) -> Result<R, ApiError> {
        self.run_for(op, &[], f)
    }

    /// [`AppState::run`] for an operation that may write the shadows of `devices`.
    fn run_for<R>(
        &self,
        op: &'static str,
        devices: &[DeviceId],
        f: impl FnOnce(&mut DeviceServer) -> R,
    ) -> Result<R, ApiError> {
        let started = Instant::now();
        let out = call(&*self.engine, devices, f);
        self.metrics.observe_engine(op, started.elapsed());
        out.map_err(ApiError::from)
    }
}

// ----- extractors ----------------------------------------------------------------------

/// The caller, from its bearer token.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

#[axum::async_trait]
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        state
            .tokens
            .principal(token.trim())
            .map(Caller)
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))
    }
}

/// A JSON body, refused with a clear reason when malformed, too large or carrying
/// unknown fields.
#[derive(Debug)]
pub struct Body<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body exceeds {MAX_JSON_BODY} bytes"),
                )
            } else {
                ApiError::bad_request("unreadable_body", e.body_text())
            }
        })?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses a JSON body, naming what is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let code = if text.starts_with("unknown field") {
            "unknown_field"
        } else if e.is_syntax() || e.is_eof() {
            "malformed_json"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, text)
    })
}

/// Query parameters, refused with a clear reason when unknown or malformed.
#[derive(Debug)]
pub struct Params<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters, refused with a clear reason when they do not parse (`/rollouts/abc`).
#[derive(Debug)]
pub struct PathParam<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request("invalid_id", format!("`{raw}` is not a device id")))
}

fn scope(raw: Option<&str>, caller: &Principal) -> Result<Scope, ApiError> {
    match raw {
        None => Ok(caller.scope.clone()),
        Some(s) => s
            .parse()
            .map_err(|e| ApiError::bad_request("invalid_scope", format!("scope `{s}`: {e}"))),
    }
}

fn need(caller: &Principal, record: &DeviceRecord, role: Role) -> Result<(), ApiError> {
    caller
        .check(&record.tenant, &record.scope, role)
        .map_err(|e| iot_fleet::FleetError::from(e).into())
}

// ----- names ---------------------------------------------------------------------------

fn parse_state(raw: &str) -> Result<LifecycleState, ApiError> {
    STATES
        .into_iter()
        .find(|s| state_name(*s) == raw.to_ascii_lowercase())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("unknown state `{raw}`; one of unprovisioned, provisioning, active, degraded, maintenance, decommissioned"),
            )
        })
}

fn rollout_status(status: RolloutStatus) -> Json_ {
    match status {
        RolloutStatus::Running { stage } => json!({"state": "running", "stage": stage}),
        RolloutStatus::Halted { stage } => json!({"state": "halted", "stage": stage}),
        RolloutStatus::Paused { stage } => json!({"state": "paused", "stage": stage}),
        RolloutStatus::Aborted { stage } => json!({"state": "aborted", "stage": stage}),
        RolloutStatus::Completed => json!({"state": "completed"}),
        _ => json!({"state": "unknown"}),
    }
}

fn value_json(value: &Value) -> Json_ {
    match value {
        Value::Null => Json_::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f.get()),
        Value::Text(t) => json!(t.as_str()),
        other => json!(format!("{other:?}")),
    }
}

fn json_value(value: &Json_) -> Result<Value, ApiError> {
    let invalid = |why: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", why);
    match value {
        Json_::Null => Ok(Value::Null),
        Json_::Bool(b) => Ok(Value::from(*b)),
        Json_::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Value::from(i)),
            (None, Some(f)) => Ok(Value::from(f)),
            _ => Err(invalid("number out of range")),
        },
        Json_::String(s) => Value::text(s).map_err(|e| invalid(&e.to_string())),
        _ => Err(invalid(
            "a shadow value is null, a boolean, a number or a string",
        )),
    }
}

fn device_json(record: &DeviceRecord, health: HealthStatus) -> Json_ {
    json!({
        "id": record.id.as_str(),
        "tenant": record.tenant.as_str(),
        "scope": record.scope.to_string(),
        "sku": record.sku,
        "serial": record.serial,
        "state": state_name(record.state),
        "health": health_name(health),
        "online": record.online,
        "last_seen_ms": record.last_seen_ms,
        "registered_at_ms": record.registered_at_ms,
        "battery_percent": record.battery.latest(),
        "firmware": record.firmware,
        "illegal_transitions": record.illegal_transitions,
    })
}

fn section_json(shadow: &ServerShadow, section: Section) -> Json_ {
    let map: serde_json::Map<String, Json_> = shadow
        .section(section)
        .filter(|(_, leaf)| leaf.value != Value::Null)
        .map(|(path, leaf)| (path.as_str().to_owned(), value_json(&leaf.value)))
        .collect();
    Json_::Object(map)
}

fn shadow_json(shadow: Option<&ServerShadow>) -> Json_ {
    match shadow {
        None => json!({"version": 0, "desired": {}, "reported": {}, "delta": {}}),
        Some(s) => {
            let delta: serde_json::Map<String, Json_> = s
                .delta()
                .map(|(path, leaf)| (path.as_str().to_owned(), value_json(&leaf.value)))
                .collect();
            json!({
                "version": s.version(),
                "desired": section_json(s, Section::Desired),
                "reported": section_json(s, Section::Reported),
                "delta": delta,
            })
        }
    }
}

// ----- devices -------------------------------------------------------------------------

/// Device search filters (`GET /api/v1/devices`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Must be the token's tenant when given.
    pub tenant: Option<String>,
    /// Only devices in this scope (and below); must lie within the token's scope.
    pub scope: Option<String>,
    /// Lifecycle state.
    pub state: Option<String>,
    /// Health status (`healthy`, `low_battery`, `degraded`, `maintenance`, `offline`).
    pub health: Option<String>,
    /// Firmware version the device last reported.
    pub firmware: Option<String>,
    /// Latest battery reading below this percentage.
    pub battery_below: Option<f32>,
    /// Latest battery reading at or above this percentage.
    pub battery_at_least: Option<f32>,
    /// Last heard from at or after this time (ms).
    pub seen_after_ms: Option<u64>,
    /// Last heard from before this time (ms).
    pub seen_before_ms: Option<u64>,
    /// Page size (default 100, at most [`MAX_PAGE`]).
    pub limit: Option<usize>,
    /// Devices to skip.
    pub offset: Option<usize>,
}

async fn list_devices(
    State(app): State<AppState>,
    Caller(p): Caller,
    Params(q): Params<DeviceQuery>,
) -> Result<Json<Json_>, ApiError> {
    if let Some(t) = &q.tenant
        && t != p.tenant.as_str()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "other_tenant",
            "this token can only search its own tenant",
        ));
    }
    let within = scope(q.scope.as_deref(), &p)?;
    if !p.scope.contains(&within) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the scope lies outside this token's scope",
        ));
    }
    let state = q.state.as_deref().map(parse_state).transpose()?;
    let health = q.health.clone();
    if let Some(h) = &health
        && ![
            "healthy",
            "low_battery",
            "degraded",
            "maintenance",
            "offline",
        ]
        .contains(&h.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("unknown health `{h}`"),
        ));
    }
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let offset = q.offset.unwrap_or(0);
    let now = app.engine.now_ms();
    let (total, devices) = app.run("search", |server| {
        let fleet = server.fleet();
        let policy = fleet.policy();
        let mut total = 0usize;
        let mut page = Vec::new();
        for record in fleet.devices(&p) {
            if !within.contains(&record.scope)
                || state.is_some_and(|s| s != record.state)
                || q.firmware
                    .as_ref()
                    .is_some_and(|f| record.firmware.as_ref() != Some(f))
                || q.seen_after_ms.is_some_and(|t| record.last_seen_ms < t)
                || q.seen_before_ms.is_some_and(|t| record.last_seen_ms >= t)
            {
                continue;
            }
            let battery = record.battery.latest();
            if q.battery_below
                .is_some_and(|b| !battery.is_some_and(|v| v < b))
                || q.battery_at_least
                    .is_some_and(|b| !battery.is_some_and(|v| v >= b))
            {
                continue;
            }
            let status = status_of(record, now, policy);
            if health.as_deref().is_some_and(|h| h != health_name(status)) {
                continue;
            }
            if total >= offset && page.len() < limit {
                page.push(device_json(record, status));
            }
            total = total.saturating_add(1);
        }
        (total, page)
    })?;
    Ok(Json(
        json!({"total": total, "offset": offset, "devices": devices}),
    ))
}

async fn get_device(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let id = device_id(&id)?;
    let now = app.engine.now_ms();
    app.run("device", |server| {
        let fleet = server.fleet();
        let record = fleet.device(&p, &id)?;
        Ok(Json(device_json(
            record,
            status_of(record, now, fleet.policy()),
        )))
    })?
}

async fn get_shadow(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let id = device_id(&id)?;
    app.run("shadow_read", |server| {
        let shadow = server.fleet().shadow(&p, &id)?;
        Ok(Json(shadow_json(shadow)))
    })?
}

/// `PUT /api/v1/devices/{id}/shadow/desired`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRequest {
    /// Dot-separated field path.
    pub path: String,
    /// The desired value (`null` removes it).
    pub value: Json_,
    /// The document version the caller last saw; a different current version is `409`.
    pub version: Option<u64>,
}

async fn set_desired(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Body(req): Body<DesiredRequest>,
) -> Result<Json<Json_>, ApiError> {
    let id = device_id(&id)?;
    let value = json_value(&req.value)?;
    let now = app.engine.now_ms();
    let (version, delta) = app.run_for("shadow_write", &[id], |server| {
        let current = server.fleet().shadow(&p, &id)?.map_or(0, |s| s.version());
        if let Some(expected) = req.version
            && expected != current
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "version_conflict",
                format!("shadow is at version {current}, not {expected}"),
            ));
        }
        let delta = server.set_desired(&p, &id, &req.path, value, now)?;
        let version = server.fleet().shadow(&p, &id)?.map_or(0, |s| s.version());
        Ok((version, delta))
    })??;
    let sent = delta.is_some();
    if let Some(delta) = delta {
        app.engine.deliver(id, vec![delta]);
    }
    Ok(Json(json!({"version": version, "delta_sent": sent})))
}

/// `POST /api/v1/devices/{id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// `diagnostics`, `blink_led`, `read_sensor`, `enter_maintenance`, `exit_maintenance`
    /// or `reboot`.
    pub kind: String,
    /// `blink_led`: number of blinks.
    pub times: Option<u8>,
    /// `blink_led`: milliseconds per blink.
    pub period_ms: Option<u16>,
    /// `read_sensor`: which sensor.
    pub sensor: Option<u8>,
    /// How long the command may wait before it expires (default: never).
    pub expires_in_ms: Option<u64>,
}

fn command_kind(req: &CommandRequest) -> Result<CommandKind, ApiError> {
    let missing = |f: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_command",
            format!("`{}` needs `{f}`", req.kind),
        )
    };
    Ok(match req.kind.as_str() {
        "diagnostics" => CommandKind::Diagnostics,
        "blink_led" => CommandKind::BlinkLed {
            times: req.times.ok_or_else(|| missing("times"))?,
            period_ms: req.period_ms.ok_or_else(|| missing("period_ms"))?,
        },
        "read_sensor" => CommandKind::ReadSensor {
            sensor: req.sensor.ok_or_else(|| missing("sensor"))?,
        },
        "enter_maintenance" => CommandKind::EnterMaintenance,
        "exit_maintenance" => CommandKind::ExitMaintenance,
        "reboot" => CommandKind::Reboot,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_command",
                format!("unknown command kind `{other}`"),
            ));
        }
    })
}

async fn send_command(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Body(req): Body<CommandRequest>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let id = device_id(&id)?;
    let now = app.engine.now_ms();
    app.run("device", |server| {
        let record = server.fleet().device(&p, &id)?;
        need(&p, record, Role::Operator)
    })??;
    let kind = command_kind(&req)?;
    let command = Command {
        id: app.next_command.fetch_add(1, Ordering::Relaxed),
        issued_at_ms: now,
        expires_at_ms: req
            .expires_in_ms
            .map_or(Command::NEVER_EXPIRES, |ms| now.saturating_add(ms)),
        kind,
    };
    let command_id = command.id;
    app.engine.deliver(id, vec![Downlink::Command(command)]);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"command_id": command_id})),
    ))
}

/// `PUT /api/v1/devices/{id}/config`: fields left out keep the documented defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    /// Must be newer than the device's configuration, or the device ignores it.
    pub version: u32,
    /// Milliseconds between heartbeats.
    pub heartbeat_interval_ms: Option<u32>,
    /// Milliseconds between telemetry reports.
    pub telemetry_interval_ms: Option<u32>,
    /// Milliseconds between health checks.
    pub health_interval_ms: Option<u32>,
    /// Milliseconds between shadow synchronisations.
    pub sync_interval_ms: Option<u32>,
    /// Report-on-change deadband.
    pub telemetry_deadband: Option<f32>,
    /// Telemetry slow-down in `Degraded`.
    pub degraded_telemetry_factor: Option<u8>,
}

async fn set_config(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Body(req): Body<ConfigRequest>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let id = device_id(&id)?;
    let d = DeviceConfig::DEFAULT;
    let config = DeviceConfig {
        version: req.version,
        heartbeat_interval_ms: req.heartbeat_interval_ms.unwrap_or(d.heartbeat_interval_ms),
        telemetry_interval_ms: req.telemetry_interval_ms.unwrap_or(d.telemetry_interval_ms),
        health_interval_ms: req.health_interval_ms.unwrap_or(d.health_interval_ms),
        sync_interval_ms: req.sync_interval_ms.unwrap_or(d.sync_interval_ms),
        telemetry_deadband: req.telemetry_deadband.unwrap_or(d.telemetry_deadband),
        degraded_telemetry_factor: req
            .degraded_telemetry_factor
            .unwrap_or(d.degraded_telemetry_factor),
        thresholds: d.thresholds,
    };
    app.run("device", |server| {
        let record = server.fleet().device(&p, &id)?;
        need(&p, record, Role::Operator)
    })??;
    config.validate().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )
    })?;
    app.engine.deliver(id, vec![Downlink::Config(config)]);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"version": config.version})),
    ))
}

/// `POST /api/v1/devices/{id}/decommission`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecommissionRequest {
    /// `end_of_life`, `unrecoverable`, `compromised` or `operator_request` (default).
    pub reason: Option<String>,
}

async fn decommission(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
    Body(req): Body<DecommissionRequest>,
) -> Result<Json<Json_>, ApiError> {
    let id = device_id(&id)?;
    let reason = match req.reason.as_deref().unwrap_or("operator_request") {
        "end_of_life" => DecommissionReason::EndOfLife,
        "unrecoverable" => DecommissionReason::Unrecoverable,
        "compromised" => DecommissionReason::Compromised,
        "operator_request" => DecommissionReason::OperatorRequest,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_reason",
                format!("unknown reason `{other}`"),
            ));
        }
    };
    let now = app.engine.now_ms();
    let (done, reply) = app.run_for("decommission", &[id], |server| {
        server.decommission(&p, &id, reason, now)
    })??;
    app.engine.deliver(id, vec![reply]);
    Ok(Json(json!({
        "device": id.as_str(),
        "previous": state_name(done.previous),
        "forced": done.forced,
    })))
}

/// How many of the newest entries of a stored audit trail an export reads.
const STORED_AUDIT_WINDOW: u32 = 5_000;

/// The caller's entries of a stored audit trail (a durable backend), with the chain
/// verified over the whole trail; `None` when the server's own log is the trail.
fn stored_audit(
    app: &AppState,
    p: &Principal,
    device: Option<DeviceId>,
) -> Option<Result<(Json_, Vec<Json_>), ApiError>> {
    let read = app.engine.stored_audit(STORED_AUDIT_WINDOW)?;
    Some(read.map_err(ApiError::from).map(|audit| {
        let entries = audit
            .entries
            .iter()
            .filter(|e| e.tenant == p.tenant && (device.is_none() || e.device == device))
            .filter(|e| {
                let scope = e
                    .payload
                    .get("scope")
                    .and_then(Json_::as_str)
                    .and_then(|s| s.parse::<Scope>().ok())
                    .unwrap_or_default();
                p.scope.contains(&scope)
            })
            .map(|e| {
                let text = |key: &str| {
                    e.payload
                        .get(key)
                        .map_or_else(String::new, Json_::to_string)
                };
                json!({
                    "seq": e.seq,
                    "at_ms": e.at_ms,
                    "actor": text("actor"),
                    "scope": e.payload.get("scope").and_then(Json_::as_str).unwrap_or(""),
                    "device": e.device.map(|d| d.as_str().to_owned()),
                    "action": text("action"),
                    "digest": e.hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                })
            })
            .collect();
        let chain = json!({"verified": true, "entries_checked": audit.head, "source": "store"});
        (chain, entries)
    }))
}

async fn device_audit(
    State(app): State<AppState>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<Json<Json_>, ApiError> {
    let id = device_id(&id)?;
    if let Some(stored) = stored_audit(&app, &p, Some(id)) {
        let (_, entries) = stored?;
        if entries.is_empty() {
            app.run("device", |server| {
                server.fleet().device(&p, &id).map(|_| ())
            })??;
        }
        return Ok(Json(json!({"device": id.as_str(), "entries": entries})));
    }
    app.run("audit", |server| {
        let fleet = server.fleet();
        // The device may be decommissioned (its record gone) and its trail still readable.
        let entries: Vec<Json_> = fleet
            .audit_trail(&p)
            .filter(|e| e.device == Some(id))
            .map(audit_json)
            .collect();
        if entries.is_empty() {
            fleet.device(&p, &id)?;
        }
        Ok(Json(json!({"device": id.as_str(), "entries": entries})))
    })?
}

// ----- provisioning ------------------------------------------------------------------------

/// One device of a manufacturing list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManufacturedDevice {
    /// The identity it registers with.
    pub device_id: String,
    /// Its factory secret, 64 hex digits.
    pub secret_hex: String,
    /// Product variant.
    pub sku: String,
    /// Serial number.
    pub serial: u64,
}

/// `POST /api/v1/provision`: imports a manufacturing list (all or nothing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// Where devices no assignment rule matches go (default: the token's scope).
    pub scope: Option<String>,
    /// The devices.
    pub devices: Vec<ManufacturedDevice>,
}

fn secret(hex: &str) -> Result<[u8; 32], ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_secret",
            "secret_hex must be 64 hex digits",
        )
    };
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex
            .get(i.saturating_mul(2)..i.saturating_mul(2).saturating_add(2))
            .ok_or_else(invalid)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

async fn provision(
    State(app): State<AppState>,
    Caller(p): Caller,
    Body(req): Body<ProvisionRequest>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let within = scope(req.scope.as_deref(), &p)?;
    let mut records = Vec::with_capacity(req.devices.len());
    for d in &req.devices {
        records.push(ManufacturingRecord {
            device_id: device_id(&d.device_id)?,
            secret: secret(&d.secret_hex)?,
            sku: d.sku.clone(),
            serial: d.serial,
        });
    }
    let now = app.engine.now_ms();
    let count = app.run("provision", |server| {
        server
            .fleet_mut()
            .import_manufacturing(&p, &within, records, now)
    })??;
    Ok((StatusCode::CREATED, Json(json!({"imported": count}))))
}

// ----- health --------------------------------------------------------------------------

/// `GET /api/v1/health`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    /// Scope to report on (default: the token's).
    pub scope: Option<String>,
}

async fn health(
    State(app): State<AppState>,
    Caller(p): Caller,
    Params(q): Params<HealthQuery>,
) -> Result<Json<Json_>, ApiError> {
    let within = scope(q.scope.as_deref(), &p)?;
    let now = app.engine.now_ms();
    let (report, tally) = app.run("health", |server| {
        let fleet = server.fleet();
        // The edge tier's data reduction: what the devices' report-on-change filters held
        // back, as their last heartbeats said (counts since each device's boot).
        let (mut sampled, mut sent) = (0u64, 0u64);
        for record in fleet.devices(&p) {
            if let Some(r) = record.readings.filter(|_| within.contains(&record.scope)) {
                sampled = sampled.saturating_add(u64::from(r.sampled));
                sent = sent.saturating_add(u64::from(r.sent));
            }
        }
        fleet
            .health_report(&p, &within, now)
            .map(|report| (report, (sampled, sent)))
    })??;
    let (sampled, sent) = tally;
    // Rounded to a tenth of a percent, so the page can show exactly what the API says.
    let reduction = (sampled > 0).then(|| {
        let kept = sent.min(sampled) as f64 / sampled as f64;
        ((1.0 - kept) * 1000.0).round() / 10.0
    });
    let c = report.counts;
    let by_state: BTreeMap<String, u64> = STATES
        .iter()
        .zip(c.by_state)
        .map(|(s, n)| (state_name(*s), n))
        .collect();
    let children: BTreeMap<String, Json_> = report
        .children
        .iter()
        .map(|(s, c)| {
            (
                s.to_string(),
                json!({"total": c.total, "healthy": c.healthy, "offline": c.offline}),
            )
        })
        .collect();
    Ok(Json(json!({
        "tenant": p.tenant.as_str(),
        "scope": within.to_string(),
        "at_ms": now,
        "total": c.total,
        "healthy": c.healthy,
        "low_battery": c.low_battery,
        "degraded": c.degraded,
        "maintenance": c.maintenance,
        "offline": c.offline,
        "by_state": by_state,
        "children": children,
        "data_reduction": [{
            "tier": "device",
            "what": "telemetry readings sampled -> sent (report-on-change)",
            "in": sampled,
            "out": sent,
            "reduction_percent": reduction,
        }],
    })))
}

// ----- firmware and rollouts -----------------------------------------------------------

async fn publish_firmware(
    State(app): State<AppState>,
    Caller(p): Caller,
    PathParam(version): PathParam<u32>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    if !p.role.allows(Role::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "publishing firmware needs an admin token",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("image exceeds {MAX_IMAGE_BODY} bytes"),
            )
        } else {
            ApiError::bad_request("unreadable_body", e.body_text())
        }
    })?;
    let job = app.run("firmware", |server| {
        server.publish_firmware(version, body.to_vec())
    })??;
    Ok((
        StatusCode::CREATED,
        Json(json!({"version": job.version, "size": job.size})),
    ))
}

/// `POST /api/v1/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// Target scope (default: the token's).
    pub scope: Option<String>,
    /// Published firmware version to roll out.
    pub version: u32,
    /// Version failed devices go back to.
    pub previous: Option<u32>,
    /// Cumulative stage shares in basis points, strictly increasing, ending at 10,000
    /// (default 100, 1000, 5000, 10000).
    pub stages_bp: Option<Vec<u16>>,
    /// Highest failure rate a stage may have and still advance, basis points (default 500).
    pub max_failure_bp: Option<u16>,
    /// Report deadline per device, ms (default 24 h).
    pub report_timeout_ms: Option<u64>,
}

fn rollout_json(server: &DeviceServer, p: &Principal, id: u32) -> Result<Json_, ApiError> {
    let scoped = server.fleet().rollout(p, id)?;
    let r = &scoped.rollout;
    let stages: Vec<Json_> = (0..r.stage_caps().len())
        .map(|stage| {
            let t = r.stage_tally(stage);
            json!({
                "cap": r.stage_caps().get(stage),
                "share_bp": r.config().stages_bp.get(stage),
                "succeeded": t.succeeded,
                "failed": t.failed,
                "timed_out": t.timed_out,
                "pending": t.pending,
            })
        })
        .collect();
    Ok(json!({
        "id": id,
        "scope": scoped.scope.to_string(),
        "version": r.version(),
        "status": rollout_status(r.status()),
        "targets": r.target_count(),
        "max_failure_bp": r.config().max_failure_bp,
        "stages": stages,
    }))
}

async fn start_rollout(
    State(app): State<AppState>,
    Caller(p): Caller,
    Body(req): Body<RolloutRequest>,
) -> Result<(StatusCode, Json<Json_>), ApiError> {
    let within = scope(req.scope.as_deref(), &p)?;
    let d = RolloutConfig::default();
    let config = RolloutConfig {
        stages_bp: req.stages_bp.unwrap_or(d.stages_bp),
        max_failure_bp: req.max_failure_bp.unwrap_or(d.max_failure_bp),
        report_timeout_ms: req.report_timeout_ms.unwrap_or(d.report_timeout_ms),
        ..d
    };
    let now = app.engine.now_ms();
    let (body, jobs) = app.run("rollout", |server| {
        let id = server.start_ota(&p, &within, req.version, req.previous, config, now)?;
        let jobs = server.poll_ota(now);
        Ok::<_, ApiError>((rollout_json(server, &p, id)?, jobs))
    })??;
    for (device, job) in jobs {
        app.engine.deliver(device, vec![job]);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_rollouts(
    State(app): State<AppState>,
    Caller(p): Caller,
) -> Result<Json<Json_>, ApiError> {
    app.run("rollout", |server| {
        let ids: Vec<u32> = server.fleet().rollout_ids(&p).collect();
        let rollouts = ids
            .into_iter()
            .map(|id| rollout_json(server, &p, id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Json(json!({"rollouts": rollouts})))
    })?
}

async fn get_rollout(
    State(app): State<AppState>,
    Caller(p): Caller,
    PathParam(id): PathParam<u32>,
) -> Result<Json<Json_>, ApiError> {
    app.run("rollout", |server| rollout_json(server, &p, id).map(Json))?
}

async fn rollout_action(
    State(app): State<AppState>,
    Caller(p): Caller,
    PathParam((id, action)): PathParam<(u32, String)>,
) -> Result<Json<Json_>, ApiError> {
    let now = app.engine.now_ms();
    let (body, jobs) = app.run("rollout", |server| {
        match action.as_str() {
            "pause" => server.fleet_mut().pause_rollout(&p, id, now)?,
            "resume" => {
                server.fleet_mut().resume_rollout(&p, id, now)?;
            }
            "abort" => server.fleet_mut().abort_rollout(&p, id, now)?,
            other => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_action",
                    format!("no rollout action `{other}`; pause, resume or abort"),
                ));
            }
        }
        let jobs = server.poll_ota(now);
        Ok((rollout_json(server, &p, id)?, jobs))
    })??;
    for (device, job) in jobs {
        app.engine.deliver(device, vec![job]);
    }
    Ok(Json(body))
}

// ----- audit ---------------------------------------------------------------------------

fn audit_json(e: &iot_fleet::AuditEntry) -> Json_ {
    let digest: String = e.digest.iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "actor": format!("{:?}", e.actor),
        "scope": e.scope.to_string(),
        "device": e.device.map(|d| d.as_str().to_owned()),
        "action": format!("{:?}", e.action),
        "digest": digest,
    })
}

/// `GET /api/v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries about this device.
    pub device: Option<String>,
    /// Only the newest `limit` entries (default all).
    pub limit: Option<usize>,
}

async fn audit(
    State(app): State<AppState>,
    Caller(p): Caller,
    Params(q): Params<AuditQuery>,
) -> Result<Json<Json_>, ApiError> {
    let device = q.device.as_deref().map(device_id).transpose()?;
    if let Some(stored) = stored_audit(&app, &p, device) {
        let (chain, mut entries) = stored?;
        if let Some(limit) = q.limit {
            let skip = entries.len().saturating_sub(limit);
            entries.drain(..skip);
        }
        return Ok(Json(
            json!({"tenant": p.tenant.as_str(), "chain": chain, "entries": entries}),
        ));
    }
    app.run("audit", |server| {
        let fleet = server.fleet();
        let all = fleet.audit_log().all();
        // The chain runs through every tenant's entries; it is verified whole, and each
        // tenant sees its own entries with their digests.
        let chain = match AuditLog::verify_chain(all) {
            Ok(()) => json!({"verified": true, "entries_checked": all.len()}),
            Err(e) => json!({"verified": false, "broken_at": e.seq}),
        };
        let mut entries: Vec<Json_> = fleet
            .audit_trail(&p)
            .filter(|e| device.is_none() || e.device == device)
            .map(audit_json)
            .collect();
        if let Some(limit) = q.limit {
            let skip = entries.len().saturating_sub(limit);
            entries.drain(..skip);
        }
        Ok(Json(
            json!({"tenant": p.tenant.as_str(), "chain": chain, "entries": entries}),
        ))
    })?
}

// ----- misc ----------------------------------------------------------------------------

async fn whoami(Caller(p): Caller) -> Json<Json_> {
    Json(json!({
        "actor": p.actor,
        "tenant": p.tenant.as_str(),
        "scope": p.scope.to_string(),
        "role": format!("{:?}", p.role).to_ascii_lowercase(),
    }))
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::DOCUMENT,
    )
        .into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let tenants: Vec<TenantId> = app.tokens.tenants().into_iter().collect();
    let text = app.metrics.render(&*app.engine, &tenants);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn dashboard() -> Html<&'static str> {
    Html(crate::dashboard::PAGE)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /openapi.json",
    )
}

async fn count(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let cause = response
        .extensions()
        .get::<crate::error::RefusalCause>()
        .map(|c| c.0);
    app.metrics
        .observe_request(response.status().as_u16(), cause);
    response
}

/// The whole application: API, OpenAPI document, metrics and dashboard.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/whoami", get(whoami))
        .route("/devices", get(list_devices))
        .route("/devices/:id", get(get_device))
        .route("/devices/:id/shadow", get(get_shadow))
        .route("/devices/:id/shadow/desired", put(set_desired))
        .route("/devices/:id/commands", post(send_command))
        .route("/devices/:id/config", put(set_config))
        .route("/devices/:id/decommission", post(decommission))
        .route("/devices/:id/audit", get(device_audit))
        .route("/provision", post(provision))
        .route("/health", get(health))
        .route("/rollouts", get(list_rollouts).post(start_rollout))
        .route("/rollouts/:id", get(get_rollout))
        .route("/rollouts/:id/:action", post(rollout_action))
        .route("/audit", get(audit))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .route(
            "/firmware/:version",
            put(publish_firmware).layer(DefaultBodyLimit::max(MAX_IMAGE_BODY)),
        );
    Router::new()
        .nest("/api/v1", api)
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}
