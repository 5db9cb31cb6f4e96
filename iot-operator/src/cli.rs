//! The operator CLI's client commands (`iot-operator devices`, `shadow`, `rollout pause`...),
//! each one API call through [`crate::client::Client`].

use std::net::SocketAddr;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

/// Where the API is and who is calling.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The API's address (as printed by `iot-operator run` or `serve`).
    #[arg(long, env = "IOT_API", default_value = "127.0.0.1:8700")]
    pub api: SocketAddr,
    /// An API token (`iot_...`).
    #[arg(long, env = "IOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Operator tasks over the API.
#[derive(Debug, Clone, Subcommand)]
pub enum Task {
    /// Search devices.
    Devices {
        /// Lifecycle state (active, degraded, maintenance...).
        #[arg(long)]
        state: Option<String>,
        /// Health (healthy, low_battery, degraded, maintenance, offline).
        #[arg(long)]
        health: Option<String>,
        /// Scope.
        #[arg(long)]
        scope: Option<String>,
        /// Firmware version.
        #[arg(long)]
        firmware: Option<String>,
        /// Latest battery below this percentage.
        #[arg(long)]
        battery_below: Option<f32>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One device.
    Device {
        /// Device id.
        id: String,
    },
    /// Fleet health counts.
    Health {
        /// Scope.
        #[arg(long)]
        scope: Option<String>,
    },
    /// A device's shadow: desired, reported, delta.
    Shadow {
        /// Device id.
        id: String,
    },
    /// Sets a desired value (`VALUE` is JSON: `true`, `21.5`, `"eco"`).
    SetDesired {
        /// Device id.
        id: String,
        /// Field path.
        path: String,
        /// JSON value.
        value: String,
        /// Only if the shadow is still at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Sends a command (diagnostics, blink_led, read_sensor, enter_maintenance,
    /// exit_maintenance, reboot).
    Command {
        /// Device id.
        id: String,
        /// Command kind.
        kind: String,
        /// blink_led: blinks.
        #[arg(long)]
        times: Option<u8>,
        /// blink_led: ms per blink.
        #[arg(long)]
        period_ms: Option<u16>,
        /// read_sensor: sensor number.
        #[arg(long)]
        sensor: Option<u8>,
    },
    /// Sends a configuration.
    Config {
        /// Device id.
        id: String,
        /// Configuration version (newer than the device's).
        #[arg(long)]
        version: u32,
        /// Telemetry interval, ms.
        #[arg(long)]
        telemetry_interval_ms: Option<u32>,
        /// Heartbeat interval, ms.
        #[arg(long)]
        heartbeat_interval_ms: Option<u32>,
    },
    /// Rollouts.
    #[command(subcommand)]
    Rollout(RolloutTask),
    /// Decommissions a device (admin).
    Decommission {
        /// Device id.
        id: String,
        /// end_of_life, unrecoverable, compromised, operator_request.
        #[arg(long, default_value = "operator_request")]
        reason: String,
    },
    /// Exports the audit trail and verifies its chain.
    Audit {
        /// Only this device's entries.
        #[arg(long)]
        device: Option<String>,
        /// Only the newest entries.
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Rollout tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum RolloutTask {
    /// Every rollout with its status.
    List,
    /// One rollout's status and stage tallies.
    Status {
        /// Rollout id.
        id: u32,
    },
    /// Starts a rollout of a published image.
    Start {
        /// Firmware version.
        version: u32,
        /// Version failed devices keep.
        #[arg(long)]
        previous: Option<u32>,
        /// Scope.
        #[arg(long)]
        scope: Option<String>,
        /// Cumulative stage shares in basis points, comma-separated (100,1000,5000,10000).
        #[arg(long, value_delimiter = ',')]
        stages_bp: Option<Vec<u16>>,
        /// Failure threshold per stage, basis points.
        #[arg(long)]
        max_failure_bp: Option<u16>,
    },
    /// Pauses a rollout.
    Pause {
        /// Rollout id.
        id: u32,
    },
    /// Resumes a rollout.
    Resume {
        /// Rollout id.
        id: u32,
    },
    /// Aborts a rollout.
    Abort {
        /// Rollout id.
        id: u32,
    },
}

fn object(pairs: &[(&str, Option<Value>)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| ((*k).to_owned(), v)))
            .collect(),
    )
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The API call a task makes: method, path, body.
pub fn request(task: &Task) -> Result<(&'static str, String, Option<Value>), String> {
    Ok(match task {
        Task::Devices {
            state,
            health,
            scope,
            firmware,
            battery_below,
            limit,
        } => (
            "GET",
            format!(
                "/api/v1/devices{}",
                query(&[
                    ("state", state.clone()),
                    ("health", health.clone()),
                    ("scope", scope.clone()),
                    ("firmware", firmware.clone()),
                    ("battery_below", battery_below.map(|b| b.to_string())),
                    ("limit", Some(limit.to_string())),
                ])
            ),
            None,
        ),
        Task::Device { id } => ("GET", format!("/api/v1/devices/{}", encode(id)), None),
        Task::Health { scope } => (
            "GET",
            format!("/api/v1/health{}", query(&[("scope", scope.clone())])),
            None,
        ),
        Task::Shadow { id } => (
            "GET",
            format!("/api/v1/devices/{}/shadow", encode(id)),
            None,
        ),
        Task::SetDesired {
            id,
            path,
            value,
            version,
        } => {
            let value: Value =
                serde_json::from_str(value).map_err(|e| format!("VALUE is not JSON: {e}"))?;
            let body = object(&[
                ("path", Some(json!(path))),
                ("value", Some(value)),
                ("version", version.map(|v| json!(v))),
            ]);
            (
                "PUT",
                format!("/api/v1/devices/{}/shadow/desired", encode(id)),
                Some(body),
            )
        }
        Task::Command {
            id,
            kind,
            times,
            period_ms,
            sensor,
        } => {
            let body = object(&[
                ("kind", Some(json!(kind))),
                ("times", times.map(|v| json!(v))),
                ("period_ms", period_ms.map(|v| json!(v))),
                ("sensor", sensor.map(|v| json!(v))),
            ]);
            (
                "POST",
                format!("/api/v1/devices/{}/commands", encode(id)),
                Some(body),
            )
        }
        Task::Config {
            id,
            version,
            telemetry_interval_ms,
            heartbeat_interval_ms,
        } => {
            let body = object(&[
                ("version", Some(json!(version))),
                (
                    "telemetry_interval_ms",
                    telemetry_interval_ms.map(|v| json!(v)),
                ),
                (
                    "heartbeat_interval_ms",
                    heartbeat_interval_ms.map(|v| json!(v)),
                ),
            ]);
            (
                "PUT",
                format!("/api/v1/devices/{}/config", encode(id)),
                Some(body),
            )
        }
        Task::Rollout(RolloutTask::List) => ("GET", "/api/v1/rollouts".to_owned(), None),
        Task::Rollout(RolloutTask::Status { id }) => {
            ("GET", format!("/api/v1/rollouts/{id}"), None)
        }
        Task::Rollout(RolloutTask::Start {
            version,
            previous,
            scope,
            stages_bp,
            max_failure_bp,
        }) => {
            let body = object(&[
                ("version", Some(json!(version))),
                ("previous", previous.map(|v| json!(v))),
                ("scope", scope.as_ref().map(|v| json!(v))),
                ("stages_bp", stages_bp.as_ref().map(|v| json!(v))),
                ("max_failure_bp", max_failure_bp.map(|v| json!(v))),
            ]);
            ("POST", "/api/v1/rollouts".to_owned(), Some(body))
        }
        Task::Rollout(RolloutTask::Pause { id }) => {
            ("POST", format!("/api/v1/rollouts/{id}/pause"), None)
        }
        Task::Rollout(RolloutTask::Resume { id }) => {
            ("POST", format!("/api/v1/rollouts/{id}/resume"), None)
        }
        Task::Rollout(RolloutTask::Abort { id }) => {
            ("POST", format!("/api/v1/rollouts/{id}/abort"), None)
        }
        Task::Decommission { id, reason } => (
            "POST",
            format!("/api/v1/devices/{}/decommission", encode(id)),
            Some(json!({"reason": reason})),
        ),
        Task::Audit { device, limit } => (
            "GET",
            format!(
                "/api/v1/audit{}",
                query(&[
                    ("device", device.clone()),
                    ("limit", limit.map(|l| l.to_string()))
                ])
            ),
            None,
        ),
    })
}

/// Runs a task and returns the response's status and pretty-printed body.
pub fn run(connection: &Connection, task: &Task) -> Result<(u16, String), String> {
    let (method, path, body) = request(task)?;
    let client = Client::new(connection.api, connection.token.clone());
    let response = client
        .request(method, &path, body.as_ref())
        .map_err(|e: ClientError| format!("{} {path}: {e}", connection.api))?;
    let json = response.json();
    let text = if json.is_null() {
        String::from_utf8_lossy(&response.body).into_owned()
    } else {
        serde_json::to_string_pretty(&json).unwrap_or_default()
    };
    Ok((response.status, text))
}
