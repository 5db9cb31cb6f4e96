//! Price models: what a device costs per month in messages, storage, rule evaluations and
//! connected minutes, from modelled traffic or from metered usage.
//!
//! A [`CostModel`] holds documented, replaceable parameters. The defaults model a device of
//! the source material's lab (telemetry every 30 s, a shadow update a minute) on typical
//! cloud prices and come to about $0.21 per device per month:
//!
//! | component | default parameters | $/device/month |
//! |---|---|---|
//! | messages | 86,400 telemetry + 43,200 shadow messages at $1.00 per million | 0.1296 |
//! | storage | 86,400 records x 512 B, kept 12 months, at $0.10 per GB-month | 0.0531 |
//! | compute | one rule evaluation per message at $0.15 per million | 0.0194 |
//! | connectivity | 43,200 connected minutes at $0.08 per million | 0.0035 |
//! | **total** | | **0.2056** |
//!
//! ```
//! use iot_planning::pricing::CostModel;
//!
//! let cost = CostModel::default().per_device_month();
//! assert!((cost.total - 0.21).abs() < 0.01);
//! ```

/// Messages and stored bytes a backend metered (iot-fleet's `metering::Usage` carries the
/// same two counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MeteredUsage {
    /// Messages received.
    pub messages: u64,
    /// Bytes of payload stored.
    pub stored_bytes: u64,
}

/// Components of a monthly cost, in dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CostBreakdown {
    /// Message ingestion.
    pub messages: f64,
    /// Time-series storage over the retention period.
    pub storage: f64,
    /// Rule evaluation per message.
    pub compute: f64,
    /// Connected minutes.
    pub connectivity: f64,
    /// The sum.
    pub total: f64,
}

/// The parameters of the cost estimate. Every price is in dollars.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CostModel {
    /// Seconds in a billing month (default 30 days: 2,592,000).
    pub seconds_per_month: f64,
    /// Telemetry interval in seconds (default 30, as in the device lab).
    pub telemetry_interval_s: f64,
    /// Average interval between shadow updates in seconds (default 60).
    pub shadow_interval_s: f64,
    /// Price per million messages (default $1.00).
    pub price_per_million_messages: f64,
    /// Stored bytes per telemetry record, with index overhead (default 512).
    pub bytes_per_record: f64,
    /// Months a record is kept (default 12): a steady-state month pays for this many months
    /// of records.
    pub retention_months: f64,
    /// Price per GB (10^9 bytes) stored per month (default $0.10).
    pub price_per_gb_month: f64,
    /// Price per million rule evaluations, one per message (default $0.15).
    pub price_per_million_rule_evaluations: f64,
    /// Price per million connected minutes (default $0.08).
    pub price_per_million_connection_minutes: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            seconds_per_month: 2_592_000.0,
            telemetry_interval_s: 30.0,
            shadow_interval_s: 60.0,
            price_per_million_messages: 1.00,
            bytes_per_record: 512.0,
            retention_months: 12.0,
            price_per_gb_month: 0.10,
            price_per_million_rule_evaluations: 0.15,
            price_per_million_connection_minutes: 0.08,
        }
    }
}

// Cost arithmetic is in `f64` dollars: no overflow or trap to guard against.
#[allow(clippy::arithmetic_side_effects)]
impl CostModel {
    /// The modelled cost of one device for one month.
    pub fn per_device_month(&self) -> CostBreakdown {
        let telemetry = per_interval(self.seconds_per_month, self.telemetry_interval_s);
        let shadow = per_interval(self.seconds_per_month, self.shadow_interval_s);
        let minutes = self.seconds_per_month / 60.0;
        self.breakdown(
            telemetry + shadow,
            telemetry * self.bytes_per_record,
            minutes,
        )
    }

    /// The cost per device per month implied by metered `usage` of `devices` devices over
    /// `period_ms`: the same prices applied to the messages and bytes actually seen.
    pub fn per_device_month_from_usage(
        &self,
        usage: MeteredUsage,
        devices: u64,
        period_ms: u64,
    ) -> CostBreakdown {
        let device_months = devices as f64 * (period_ms as f64 / 1000.0) / self.seconds_per_month;
        if device_months <= 0.0 {
            return CostBreakdown::default();
        }
        let messages = usage.messages as f64 / device_months;
        let bytes = usage.stored_bytes as f64 / device_months;
        self.breakdown(messages, bytes, self.seconds_per_month / 60.0)
    }

    fn breakdown(&self, messages: f64, bytes_per_month: f64, minutes: f64) -> CostBreakdown {
        let message_cost = messages / 1e6 * self.price_per_million_messages;
        let storage = bytes_per_month / 1e9 * self.retention_months * self.price_per_gb_month;
        let compute = messages / 1e6 * self.price_per_million_rule_evaluations;
        let connectivity = minutes / 1e6 * self.price_per_million_connection_minutes;
        CostBreakdown {
            messages: message_cost,
            storage,
            compute,
            connectivity,
            total: message_cost + storage + compute + connectivity,
        }
    }
}

#[allow(clippy::arithmetic_side_effects)] // f64 division.
fn per_interval(seconds: f64, interval_s: f64) -> f64 {
    if interval_s > 0.0 {
        seconds / interval_s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_is_about_21_cents() {
        let c = CostModel::default().per_device_month();
        assert!((c.messages - 0.1296).abs() < 1e-9, "{c:?}");
        assert!((c.storage - 0.053_084_16).abs() < 1e-9, "{c:?}");
        assert!((c.compute - 0.019_44).abs() < 1e-9, "{c:?}");
        assert!((c.connectivity - 0.003_456).abs() < 1e-9, "{c:?}");
        assert!((c.total - 0.21).abs() < 0.01, "{c:?}");
        let sum = c.messages + c.storage + c.compute + c.connectivity;
        assert!((c.total - sum).abs() < 1e-12);
    }

    #[test]
    fn usage_based_estimate_matches_model_for_modelled_traffic() {
        let model = CostModel::default();
        // Ten devices for one month at exactly the modelled traffic.
        let usage = MeteredUsage {
            messages: 10 * 129_600,
            stored_bytes: 10 * 86_400 * 512,
        };
        let month_ms = 2_592_000_000;
        let measured = model.per_device_month_from_usage(usage, 10, month_ms);
        assert!((measured.total - model.per_device_month().total).abs() < 1e-9);
        assert_eq!(
            model.per_device_month_from_usage(usage, 0, month_ms),
            CostBreakdown::default()
        );
    }
}
