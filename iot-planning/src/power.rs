//! Power profiles, duty cycles and battery-lifetime estimates.
//!
//! A battery-powered device spends each period of its duty cycle in three phases: the CPU
//! running with the radio off, the radio connecting and transmitting, and sleep. Its average
//! current is the time-weighted mean of the three phase currents, and its lifetime the usable
//! charge of the battery divided by that average. Integer arithmetic (microamps, milliseconds,
//! 128-bit intermediates) keeps the estimate exact, `const`-friendly and free of floating point.
//!
//! ```
//! use iot_planning::power::{Battery, DutyCycle, LOW_POWER_LORA_NODE, estimate_lifetime};
//!
//! let cell = Battery::new(3_000, 85, 3_600)?;
//! // Awake 5 s a minute (sleeping 55 s) versus never sleeping.
//! let duty = DutyCycle::new(60_000, 4_900, 100)?;
//! let always_on = DutyCycle::new(60_000, 59_900, 100)?;
//! let years = estimate_lifetime(&LOW_POWER_LORA_NODE, &cell, &duty)?;
//! let weeks = estimate_lifetime(&LOW_POWER_LORA_NODE, &cell, &always_on)?;
//! assert!(years.days() > 365);
//! assert!(weeks.days() < 90);
//! # Ok::<(), iot_planning::power::PowerError>(())
//! ```

use core::time::Duration;

use iot_core::{Error, ErrorKind};

/// Microamp-milliseconds in one milliamp-hour: 1000 uA x 3 600 000 ms.
const UA_MS_PER_MAH: u128 = 1_000 * 3_600_000;

/// Currents drawn in each phase of a duty cycle, in microamps at the battery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PowerProfile {
    /// CPU running, radio off (sensing, filtering, preparing a message).
    pub active_ua: u32,
    /// Average while the radio associates, transmits and waits for the acknowledgement.
    pub radio_ua: u32,
    /// Sleeping between cycles (the chip's deep sleep plus whatever the board leaks).
    pub sleep_ua: u32,
}

/// ESP32-C3 with Wi-Fi, chip-level typicals.
///
/// Sources: ESP32-C3 Series Datasheet (Espressif), section "Current Consumption": deep sleep
/// 5 uA; Wi-Fi TX peaks up to 335 mA (802.11b at full power), RX about 80 mA. CPU at 160 MHz
/// with the radio off measures 20 to 27 mA (R. Dobson, "Investigating ESP32-C3 Power
/// Management", 2023). A connect-and-send burst mixes TX peaks with RX and idle listening, so
/// 120 mA is taken as its average. Development boards add regulator and USB-bridge leakage
/// (often 100 uA or more in sleep): measure the board before trusting a multi-year estimate.
pub const ESP32_C3_WIFI: PowerProfile = PowerProfile {
    active_ua: 25_000,
    radio_ua: 120_000,
    sleep_ua: 5,
};

/// A low-power sensor node: an STM32L0-class MCU with an SX1276-class LoRa radio.
///
/// Typicals from the vendors' datasheets: MCU run mode at a low clock plus a digital sensor
/// about 2 mA; SX1276 TX at +13 dBm about 29 mA; MCU stop mode with RTC, radio sleep and a
/// low-quiescent regulator about 2 uA together.
pub const LOW_POWER_LORA_NODE: PowerProfile = PowerProfile {
    active_ua: 2_000,
    radio_ua: 29_000,
    sleep_ua: 2,
};

/// A battery: nominal capacity, the share of it the device can use, and nominal voltage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Battery {
    capacity_mah: u32,
    usable_percent: u8,
    nominal_mv: u32,
}

impl Battery {
    /// A battery of `capacity_mah`, of which `usable_percent` (1 to 100) is usable before the
    /// voltage drops below what the device needs (cold, ageing and cut-off take the rest),
    /// at `nominal_mv` (for example 3 600 for a Li-ion or Li-SOCl2 cell).
    pub const fn new(
        capacity_mah: u32,
        usable_percent: u8,
        nominal_mv: u32,
    ) -> Result<Self, PowerError> {
        if capacity_mah == 0 || usable_percent == 0 || usable_percent > 100 || nominal_mv == 0 {
            return Err(PowerError::InvalidBattery);
        }
        Ok(Self {
            capacity_mah,
            usable_percent,
            nominal_mv,
        })
    }

    /// Nominal capacity in mAh.
    pub const fn capacity_mah(&self) -> u32 {
        self.capacity_mah
    }

    /// Usable share of the capacity, in percent.
    pub const fn usable_percent(&self) -> u8 {
        self.usable_percent
    }

    /// Nominal voltage in millivolts.
    pub const fn nominal_mv(&self) -> u32 {
        self.nominal_mv
    }

    /// Usable charge in microamp-milliseconds.
    #[allow(clippy::arithmetic_side_effects)] // bound proven below; the divisor is a constant
    const fn usable_ua_ms(&self) -> u128 {
        // u32 x 1e3 x 3.6e6 x 100 < 2^32 x 2^39: far inside u128.
        (self.capacity_mah as u128) * UA_MS_PER_MAH * (self.usable_percent as u128) / 100
    }
}

/// One period of a duty cycle: `active_ms` of CPU work, `radio_ms` of radio, and sleep for
/// the rest of `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DutyCycle {
    period_ms: u32,
    active_ms: u32,
    radio_ms: u32,
}

impl DutyCycle {
    /// A cycle; fails unless `period_ms > 0` and `active_ms + radio_ms <= period_ms`.
    pub const fn new(period_ms: u32, active_ms: u32, radio_ms: u32) -> Result<Self, PowerError> {
        match active_ms.checked_add(radio_ms) {
            Some(awake) if period_ms > 0 && awake <= period_ms => Ok(Self {
                period_ms,
                active_ms,
                radio_ms,
            }),
            _ => Err(PowerError::InvalidDutyCycle),
        }
    }

    /// Length of one period.
    pub const fn period_ms(&self) -> u32 {
        self.period_ms
    }

    /// CPU time per period.
    pub const fn active_ms(&self) -> u32 {
        self.active_ms
    }

    /// Radio time per period.
    pub const fn radio_ms(&self) -> u32 {
        self.radio_ms
    }

    /// Sleep per period.
    pub const fn sleep_ms(&self) -> u32 {
        // `new` guarantees active + radio <= period.
        self.period_ms
            .saturating_sub(self.active_ms)
            .saturating_sub(self.radio_ms)
    }

    /// Charge drawn in one period, in microamp-milliseconds.
    #[allow(clippy::arithmetic_side_effects)] // bound proven below
    const fn charge_ua_ms(&self, p: &PowerProfile) -> u128 {
        // Three products of two u32 values: each below 2^64, the sum below 2^66.
        (p.active_ua as u128) * (self.active_ms as u128)
            + (p.radio_ua as u128) * (self.radio_ms as u128)
            + (p.sleep_ua as u128) * (self.sleep_ms() as u128)
    }
}

/// What a device draws on average and how long its battery lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Lifetime {
    /// Average current in nanoamps.
    pub average_na: u64,
    /// Average power in microwatts at the battery's nominal voltage.
    pub average_uw: u64,
    /// Time until the usable charge is spent (saturating at `u64::MAX` milliseconds).
    pub duration: Duration,
}

impl Lifetime {
    /// Whole days of the lifetime.
    pub const fn days(&self) -> u64 {
        self.duration.as_secs() / 86_400
    }
}

/// Why a lifetime cannot be estimated.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PowerError {
    /// The period is zero or shorter than the awake phases.
    #[error("duty cycle phases exceed the period")]
    InvalidDutyCycle,
    /// Capacity, usable share or voltage is zero, or the share exceeds 100%.
    #[error("invalid battery description")]
    InvalidBattery,
    /// The profile draws no current at all, so the lifetime is unbounded.
    #[error("the device draws no current")]
    NoConsumption,
}

impl Error for PowerError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

fn saturate_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Estimates the average current and battery lifetime of `profile` running `duty` on
/// `battery`. Self-discharge and temperature are outside the model: fold them into
/// [`Battery::usable_percent`].
pub fn estimate_lifetime(
    profile: &PowerProfile,
    battery: &Battery,
    duty: &DutyCycle,
) -> Result<Lifetime, PowerError> {
    let per_period = duty.charge_ua_ms(profile);
    let period = u128::from(duty.period_ms());
    if per_period == 0 {
        return Err(PowerError::NoConsumption);
    }
    // per_period < 2^66, so x1000 stays below 2^76; period > 0 by construction.
    let average_na = per_period
        .saturating_mul(1_000)
        .checked_div(period)
        .unwrap_or(0);
    let average_uw = average_na
        .saturating_mul(u128::from(battery.nominal_mv()))
        .checked_div(1_000_000)
        .unwrap_or(0);
    // usable < 2^82 and period < 2^32: the product fits u128.
    let lifetime_ms = battery
        .usable_ua_ms()
        .saturating_mul(period)
        .checked_div(per_period)
        .unwrap_or(u128::MAX);
    Ok(Lifetime {
        average_na: saturate_u64(average_na),
        average_uw: saturate_u64(average_uw),
        duration: Duration::from_millis(saturate_u64(lifetime_ms)),
    })
}

/// The longest CPU time per period that still lets `battery` last `target`, given the
/// period and the radio time per period; `None` when even zero CPU time misses the target.
///
/// This answers the planning question behind "sleep 55 s a minute": how short must the
/// awake phase be for a multi-year lifetime?
pub fn max_active_ms_for(
    profile: &PowerProfile,
    battery: &Battery,
    period_ms: u32,
    radio_ms: u32,
    target: Duration,
) -> Option<u32> {
    let base = DutyCycle::new(period_ms, 0, radio_ms).ok()?;
    let target_ms = target.as_millis().max(1);
    // Charge allowed per period: usable x period / target.
    let allowed = battery
        .usable_ua_ms()
        .saturating_mul(u128::from(period_ms))
        .checked_div(target_ms)?;
    let base_charge = base.charge_ua_ms(profile);
    let headroom = allowed.checked_sub(base_charge)?;
    let free_ms = base.sleep_ms();
    // Each ms moved from sleep to CPU costs (active - sleep) uA.
    let extra_per_ms = u128::from(profile.active_ua.saturating_sub(profile.sleep_ua));
    let Some(ms) = headroom.checked_div(extra_per_ms) else {
        return Some(free_ms);
    };
    Some(u32::try_from(ms).unwrap_or(u32::MAX).min(free_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    fn cell() -> Battery {
        Battery::new(3_000, 85, 3_600).unwrap()
    }

    #[test]
    fn average_current_is_the_time_weighted_mean() {
        let p = PowerProfile {
            active_ua: 10_000,
            radio_ua: 100_000,
            sleep_ua: 10,
        };
        // 1 s CPU, 1 s radio, 8 s sleep: (10 000 + 100 000 + 80) / 10 = 11 008 uA.
        let d = DutyCycle::new(10_000, 1_000, 1_000).unwrap();
        let life = estimate_lifetime(&p, &cell(), &d).unwrap();
        assert_eq!(life.average_na, 11_008_000);
        assert_eq!(life.average_uw, 11_008 * 3_600 / 1_000);
        // 3000 mAh x 85% / 11.008 mA = 231.65 h.
        let hours = life.duration.as_secs() / 3_600;
        assert_eq!(hours, 2_550_000 / 11_008);
    }

    #[test]
    fn sleeping_55_s_a_minute_gives_years_on_a_low_power_node() {
        let duty = DutyCycle::new(60_000, 4_900, 100).unwrap();
        let always_on = DutyCycle::new(60_000, 59_900, 100).unwrap();
        let asleep = estimate_lifetime(&LOW_POWER_LORA_NODE, &cell(), &duty).unwrap();
        let awake = estimate_lifetime(&LOW_POWER_LORA_NODE, &cell(), &always_on).unwrap();
        assert!(asleep.duration > YEAR, "{} days", asleep.days());
        assert!((14..120).contains(&awake.days()), "{} days", awake.days());
    }

    #[test]
    fn on_an_esp32_c3_years_need_a_sub_second_awake_phase() {
        let c3 = &ESP32_C3_WIFI;
        let always_on = DutyCycle::new(60_000, 59_000, 1_000).unwrap();
        let five_s_awake = DutyCycle::new(60_000, 4_000, 1_000).unwrap();
        let on = estimate_lifetime(c3, &cell(), &always_on).unwrap();
        let duty = estimate_lifetime(c3, &cell(), &five_s_awake).unwrap();
        // Always on: days. Awake 5 s a minute: about ten times longer, still weeks.
        assert!(on.days() < 7, "{} days", on.days());
        assert!(
            duty.days() > 7 * on.days() && duty.days() < 90,
            "{} days",
            duty.days()
        );
        // A year with a 100 ms radio burst (ESP-NOW, BLE) a minute leaves well under a
        // second of CPU per minute.
        let budget = max_active_ms_for(c3, &cell(), 60_000, 100, YEAR).unwrap();
        assert!(budget > 0 && budget < 1_000, "{budget} ms");
        let fits = DutyCycle::new(60_000, budget, 100).unwrap();
        assert!(estimate_lifetime(c3, &cell(), &fits).unwrap().duration >= YEAR);
        let over = DutyCycle::new(60_000, budget + 1, 100).unwrap();
        assert!(estimate_lifetime(c3, &cell(), &over).unwrap().duration < YEAR);
        // Even a fast 300 ms Wi-Fi reconnect every minute cannot last a year on this cell;
        // reporting every ten minutes can.
        assert_eq!(max_active_ms_for(c3, &cell(), 60_000, 300, YEAR), None);
        assert!(max_active_ms_for(c3, &cell(), 600_000, 1_000, YEAR).is_some());
    }

    #[test]
    fn invalid_descriptions_are_refused() {
        assert_eq!(DutyCycle::new(0, 0, 0), Err(PowerError::InvalidDutyCycle));
        assert_eq!(
            DutyCycle::new(100, 60, 41),
            Err(PowerError::InvalidDutyCycle)
        );
        assert_eq!(
            DutyCycle::new(u32::MAX, u32::MAX, 1),
            Err(PowerError::InvalidDutyCycle)
        );
        assert_eq!(Battery::new(0, 50, 3_600), Err(PowerError::InvalidBattery));
        assert_eq!(Battery::new(1, 101, 3_600), Err(PowerError::InvalidBattery));
        let zero = PowerProfile {
            active_ua: 0,
            radio_ua: 0,
            sleep_ua: 0,
        };
        let d = DutyCycle::new(10, 5, 5).unwrap();
        assert_eq!(
            estimate_lifetime(&zero, &cell(), &d),
            Err(PowerError::NoConsumption)
        );
        assert_eq!(PowerError::NoConsumption.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn extreme_values_saturate_instead_of_overflowing() {
        let tiny = PowerProfile {
            active_ua: 0,
            radio_ua: 0,
            sleep_ua: 1,
        };
        let big = Battery::new(u32::MAX, 100, u32::MAX).unwrap();
        let d = DutyCycle::new(u32::MAX, 0, 0).unwrap();
        let life = estimate_lifetime(&tiny, &big, &d).unwrap();
        assert_eq!(life.average_na, 1_000);
        assert!(life.duration > Duration::from_secs(1_000 * 365 * 86_400));
        let hungry = PowerProfile {
            active_ua: u32::MAX,
            radio_ua: u32::MAX,
            sleep_ua: u32::MAX,
        };
        let d = DutyCycle::new(u32::MAX, u32::MAX / 2, u32::MAX / 2).unwrap();
        let life = estimate_lifetime(&hungry, &big, &d).unwrap();
        assert_eq!(life.average_na, u64::from(u32::MAX) * 1_000);
        // No CPU/sleep difference: any CPU time fits while the radio alone fits.
        let flat = PowerProfile {
            active_ua: 5,
            radio_ua: 5,
            sleep_ua: 5,
        };
        assert_eq!(
            max_active_ms_for(&flat, &cell(), 1_000, 100, YEAR),
            Some(900)
        );
    }
}
