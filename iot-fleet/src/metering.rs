//! SLA and metering: uptime per tenant, messages and storage per tenant and device.
//!
//! **Uptime** is device availability: the share of monitored device-time during which the
//! devices were not offline ([`Availability`]). An [`Sla`] is a target in parts per million;
//! [`Sla::allowed_downtime_ms`] turns it into a downtime budget (99.95 % over a 365-day year
//! is 4.38 hours).
//!
//! What metered usage costs is a planning question: `iot-planning`'s `pricing` module prices
//! a [`Usage`]'s messages and bytes.
//!
//! ```
//! use iot_fleet::metering::Sla;
//!
//! let year_ms = 365 * 24 * 3_600_000;
//! assert_eq!(Sla::from_percent_hundredths(9995).allowed_downtime_ms(year_ms), 15_768_000); // 4.38 h
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
}
