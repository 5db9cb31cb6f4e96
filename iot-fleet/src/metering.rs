//! SLA and metering: uptime per tenant, messages and storage per tenant and device, and a
//! cost estimate per device per month.
//!
//! **Uptime** is device availability: the share of monitored device-time during which the
//! devices were not offline ([`Availability`]). An [`Sla`] is a target in parts per million;
//! [`Sla::allowed_downtime_ms`] turns it into a downtime budget (99.95 % over a 365-day year
//! is 4.38 hours).
//!
//! **Cost** follows a [`CostModel`] of documented, replaceable parameters. The defaults model
//! a device of the source material's lab (telemetry every 30 s, a shadow update a minute)
//! on typical cloud prices and come to about $0.21 per device per month:
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
//! use iot_fleet::metering::{CostModel, Sla};
//!
//! let year_ms = 365 * 24 * 3_600_000;
//! assert_eq!(Sla::from_percent_hundredths(9995).allowed_downtime_ms(year_ms), 15_768_000); // 4.38 h
//! let cost = CostModel::default().per_device_month();
//! assert!((cost.total - 0.21).abs() < 0.01);
//! ```

/// Messages and bytes attributed to a device or tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Usage {
    /// Messages received.
    pub messages: u64,
    /// Bytes of payload stored.
    pub stored_bytes: u64,
}

impl Usage {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Usage) {
        self.messages = self.messages.saturating_add(other.messages);
        self.stored_bytes = self.stored_bytes.saturating_add(other.stored_bytes);
    }
}

/// Monitored device-time and the part of it spent offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Availability {
    /// Device-milliseconds monitored.
    pub monitored_ms: u64,
    /// Device-milliseconds offline.
    pub downtime_ms: u64,
}

impl Availability {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Availability) {
        self.monitored_ms = self.monitored_ms.saturating_add(other.monitored_ms);
        self.downtime_ms = self.downtime_ms.saturating_add(other.downtime_ms);
    }

    /// Uptime in parts per million (1,000,000 when nothing was monitored).
    pub fn uptime_ppm(&self) -> u32 {
        if self.monitored_ms == 0 {
            return 1_000_000;
        }
        let up = u128::from(self.monitored_ms.saturating_sub(self.downtime_ms));
        let ppm = up
            .saturating_mul(1_000_000)
            .checked_div(u128::from(self.monitored_ms))
            .unwrap_or(1_000_000);
        u32::try_from(ppm).unwrap_or(1_000_000)
    }

    /// Whether this availability meets `sla` (downtime within its budget).
    pub fn meets(&self, sla: Sla) -> bool {
        self.downtime_ms <= sla.allowed_downtime_ms(self.monitored_ms)
    }
}

/// An uptime target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Sla {
    /// Required uptime in parts per million (999,500 is 99.95 %).
    pub uptime_ppm: u32,
}

impl Sla {
    /// A target given in hundredths of a percent (9995 is 99.95 %).
    pub const fn from_percent_hundredths(hundredths: u32) -> Self {
        let ppm = hundredths.saturating_mul(100);
        Self {
            uptime_ppm: if ppm > 1_000_000 { 1_000_000 } else { ppm },
        }
    }

    /// The downtime this target allows over `period_ms`, rounded down.
    pub fn allowed_downtime_ms(&self, period_ms: u64) -> u64 {
        let down_ppm = 1_000_000u32.saturating_sub(self.uptime_ppm);
        let allowed = u128::from(period_ms)
            .saturating_mul(u128::from(down_ppm))
            .checked_div(1_000_000)
            .unwrap_or(0);
        u64::try_from(allowed).unwrap_or(u64::MAX)
    }
}

/// A tenant's metering summary.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TenantMetering {
    /// Devices currently metered (registered, not decommissioned).
    pub devices: u64,
    /// Usage of every device, including decommissioned ones up to their decommissioning.
    pub usage: Usage,
    /// Availability of every device, likewise.
    pub availability: Availability,
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
        usage: Usage,
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

    const YEAR_MS: u64 = 365 * 24 * 3_600_000;

    #[test]
    fn four_nines_five_is_4_38_hours_a_year() {
        let sla = Sla::from_percent_hundredths(9995);
        assert_eq!(sla.uptime_ppm, 999_500);
        let allowed = sla.allowed_downtime_ms(YEAR_MS);
        // 4.38 h = 4 h 22 min 48 s.
        assert_eq!(allowed, (4 * 3600 + 22 * 60 + 48) * 1000);
        assert!((allowed as f64 / 3_600_000.0 - 4.38).abs() < 1e-9);
    }

    #[test]
    fn availability_meets_sla_at_the_budget_and_not_beyond() {
        let sla = Sla::from_percent_hundredths(9995);
        let budget = sla.allowed_downtime_ms(YEAR_MS);
        let at = Availability {
            monitored_ms: YEAR_MS,
            downtime_ms: budget,
        };
        assert!(at.meets(sla));
        assert_eq!(at.uptime_ppm(), 999_500);
        let over = Availability {
            downtime_ms: budget + 1,
            ..at
        };
        assert!(!over.meets(sla));
        assert_eq!(Availability::default().uptime_ppm(), 1_000_000);
        assert_eq!(Sla::from_percent_hundredths(20_000).uptime_ppm, 1_000_000);
    }

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
        let usage = Usage {
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
