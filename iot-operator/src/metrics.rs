//! Prometheus metrics (`prometheus-client`), rendered at `/metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `iot_devices` | tenant, state, health | devices by lifecycle state and health, per tenant (computed at scrape) |
//! | `iot_device_messages_in_total`, `iot_device_messages_out_total` | | device traffic through the engine |
//! | `iot_device_refusals_total`, `iot_device_drops_total` | | device messages refused by the server, dropped on the way |
//! | `iot_device_refusals_by_cause` | cause | device messages refused, by error kind (durable backend) |
//! | `iot_api_requests_total` | status | API requests by HTTP status |
//! | `iot_api_refusals_total` | cause | API requests refused, by cause (`unauthorized`, `unknown_field`...) |
//! | `iot_rollout_stage_devices` | tenant, rollout, stage, outcome | rollout stage tallies |
//! | `iot_store_op_seconds` | op | time to run one operation on the server, lock wait included |

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use iot_core::TenantId;
use iot_fleet::health::status_of;
use iot_fleet::{Principal, Role, Scope};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{Engine, TrafficCounts, call};
use crate::names::{health_name, state_name};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
}

/// The metrics of one API process.
pub struct Metrics {
    registry: Registry,
    devices: Family<Labels, Gauge>,
    messages_in: Counter,
    messages_out: Counter,
    refusals: Counter,
    drops: Counter,
    refusals_by_cause: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    api_refusals: Family<Labels, Counter>,
    stages: Family<Labels, Gauge>,
    store: Family<Labels, Histogram, fn() -> Histogram>,
    last_traffic: Mutex<TrafficCounts>,
}

impl core::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let devices = Family::<Labels, Gauge>::default();
        let messages_in = Counter::default();
        let messages_out = Counter::default();
        let refusals = Counter::default();
        let drops = Counter::default();
        let refusals_by_cause = Family::<Labels, Gauge>::default();
        let requests = Family::<Labels, Counter>::default();
        let api_refusals = Family::<Labels, Counter>::default();
        let stages = Family::<Labels, Gauge>::default();
        let store: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "iot_devices",
            "Devices by tenant, lifecycle state and health",
            devices.clone(),
        );
        registry.register(
            "iot_device_messages_in",
            "Device messages the server acted on",
            messages_in.clone(),
        );
        registry.register(
            "iot_device_messages_out",
            "Messages sent to devices",
            messages_out.clone(),
        );
        registry.register(
            "iot_device_refusals",
            "Device messages the server refused",
            refusals.clone(),
        );
        registry.register(
            "iot_device_drops",
            "Device messages dropped on the way",
            drops.clone(),
        );
        registry.register(
            "iot_device_refusals_by_cause",
            "Device messages the server refused, by cause (error kind)",
            refusals_by_cause.clone(),
        );
        registry.register(
            "iot_api_requests",
            "API requests by HTTP status",
            requests.clone(),
        );
        registry.register(
            "iot_api_refusals",
            "API requests refused, by cause",
            api_refusals.clone(),
        );
        registry.register(
            "iot_rollout_stage_devices",
            "Rollout stage tallies by outcome",
            stages.clone(),
        );
        registry.register(
            "iot_store_op_seconds",
            "Time to run one operation on the server, lock wait included",
            store.clone(),
        );
        Self {
            registry,
            devices,
            messages_in,
            messages_out,
            refusals,
            drops,
            refusals_by_cause,
            requests,
            api_refusals,
            stages,
            store,
            last_traffic: Mutex::default(),
        }
    }

    /// Counts one API response.
    pub fn observe_request(&self, status: u16, refusal: Option<&'static str>) {
        self.requests
            .get_or_create(&labels(&[("status", &status.to_string())]))
            .inc();
        if let Some(cause) = refusal {
            self.api_refusals
                .get_or_create(&labels(&[("cause", cause)]))
                .inc();
        }
    }

    /// Records how long operation `op` held the server.
    pub fn observe_engine(&self, op: &'static str, took: Duration) {
        self.store
            .get_or_create(&labels(&[("op", op)]))
            .observe(took.as_secs_f64());
    }

    /// Refreshes the scrape-time gauges from `engine` for `tenants` and renders the text
    /// exposition format.
    pub fn render(&self, engine: &dyn Engine, tenants: &[TenantId]) -> String {
        let traffic = engine.traffic();
        {
            let mut last = self
                .last_traffic
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.messages_in
                .inc_by(traffic.messages_in.saturating_sub(last.messages_in));
            self.messages_out
                .inc_by(traffic.messages_out.saturating_sub(last.messages_out));
            self.refusals
                .inc_by(traffic.refused.saturating_sub(last.refused));
            self.drops
                .inc_by(traffic.dropped.saturating_sub(last.dropped));
            *last = traffic;
        }
        for (cause, n) in engine.refusals_by_cause() {
            self.refusals_by_cause
                .get_or_create(&labels(&[("cause", &cause)]))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let now = engine.now_ms();
        self.devices.clear();
        self.stages.clear();
        let _ = call(engine, &[], |server| {
            let fleet = server.fleet();
            for tenant in tenants {
                let p = Principal::new("metrics", *tenant, Scope::root(), Role::Viewer);
                let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
                for record in fleet.devices(&p) {
                    let health = health_name(status_of(record, now, fleet.policy()));
                    let n = counts
                        .entry((state_name(record.state), health))
                        .or_default();
                    *n = n.saturating_add(1);
                }
                for ((state, health), n) in counts {
                    self.devices
                        .get_or_create(&labels(&[
                            ("tenant", tenant.as_str()),
                            ("state", &state),
                            ("health", health),
                        ]))
                        .set(n);
                }
                for id in fleet.rollout_ids(&p) {
                    let Ok(scoped) = fleet.rollout(&p, id) else {
                        continue;
                    };
                    for stage in 0..scoped.rollout.stage_caps().len() {
                        let t = scoped.rollout.stage_tally(stage);
                        for (outcome, n) in [
                            ("succeeded", t.succeeded),
                            ("failed", t.failed),
                            ("timed_out", t.timed_out),
                            ("pending", t.pending),
                        ] {
                            self.stages
                                .get_or_create(&labels(&[
                                    ("tenant", tenant.as_str()),
                                    ("rollout", &id.to_string()),
                                    ("stage", &stage.to_string()),
                                    ("outcome", outcome),
                                ]))
                                .set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                    }
                }
            }
        });
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
