//! LoRa / LoRaWAN control: OTAA and ABP join, data rate (spreading factor), duty-cycle budget,
//! confirmed uplinks and the MTU of each data rate (EU868 regional parameters).
//!
//! `iot_transport::sim::SimLora` (feature `testkit`) is a simulated LoRaWAN end device that
//! is also a [`crate::Link`].
//!
//! ```
//! use iot_core::ManualClock;
//! use iot_transport::control::lora::{DataRate, LoraControl, LoraJoin};
//! use iot_transport::sim::SimLora; // feature `testkit`
//! use embassy_futures::block_on;
//!
//! assert_eq!(DataRate::DR0.spreading_factor(), 12);
//! assert_eq!(DataRate::DR0.max_payload(), 51);
//! assert_eq!(DataRate::DR0.time_on_air_ms(51), 2_794); // SF12, 125 kHz
//!
//! let clock = ManualClock::new(0);
//! let mut radio: SimLora<_, 4> = SimLora::new(&clock, 1);
//! block_on(radio.join(&LoraJoin::Otaa { dev_eui: [1; 8], join_eui: [2; 8], app_key: [3; 16] }))?;
//! radio.set_data_rate(DataRate::DR5)?;
//! assert_eq!(radio.max_payload(), 222);
//! assert!(block_on(radio.send_confirmed(1, b"hello"))?);
//! // 1 % duty cycle: the next uplink must wait 99 times the airtime.
//! assert!(radio.duty_cycle_wait_ms() > 0);
//! # Ok::<(), iot_transport::control::ControlError>(())
//! ```

/// How to join a LoRaWAN network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LoraJoin {
    /// Over-the-air activation: keys are derived in a join exchange.
    Otaa {
        /// Device EUI.
        dev_eui: [u8; 8],
        /// Join (application) EUI.
        join_eui: [u8; 8],
        /// Root application key.
        app_key: [u8; 16],
    },
    /// Activation by personalisation: session keys are provisioned.
    Abp {
        /// Device address.
        dev_addr: u32,
        /// Network session key.
        nwk_skey: [u8; 16],
        /// Application session key.
        app_skey: [u8; 16],
    },
}

/// An EU868 data rate, DR0 (SF12) to DR5 (SF7), all at 125 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DataRate(u8);

/// LoRaWAN MAC overhead on the PHY payload (MHDR, FHDR without options, FPort, MIC).
pub const LORAWAN_OVERHEAD: usize = 13;

impl DataRate {
    /// SF12: longest range, 51-byte payloads.
    pub const DR0: Self = Self(0);
    /// SF11.
    pub const DR1: Self = Self(1);
    /// SF10.
    pub const DR2: Self = Self(2);
    /// SF9.
    pub const DR3: Self = Self(3);
    /// SF8.
    pub const DR4: Self = Self(4);
    /// SF7: shortest airtime, 222-byte payloads.
    pub const DR5: Self = Self(5);

    /// The data rate with index `dr` (0..=5).
    pub const fn new(dr: u8) -> Option<Self> {
        if dr <= 5 { Some(Self(dr)) } else { None }
    }

    /// The index.
    pub const fn index(self) -> u8 {
        self.0
    }

    /// The spreading factor, 7..=12.
    pub const fn spreading_factor(self) -> u8 {
        12u8.saturating_sub(self.0)
    }

    /// The largest application payload (EU868 regional parameters, no FOpts).
    pub const fn max_payload(self) -> usize {
        match self.0 {
            0..=2 => 51,
            3 => 115,
            _ => 222,
        }
    }

    /// The nominal bitrate in bits per second.
    pub const fn bitrate_bps(self) -> u32 {
        match self.0 {
            0 => 250,
            1 => 440,
            2 => 980,
            3 => 1_760,
            4 => 3_125,
            _ => 5_470,
        }
    }

    /// Time on air in milliseconds of an uplink carrying `payload` application bytes
    /// (Semtech AN1200.13: 8-symbol preamble, explicit header, CRC on, coding rate 4/5,
    /// low-data-rate optimisation at SF11 and SF12).
    pub fn time_on_air_ms(self, payload: usize) -> u64 {
        let sf = u64::from(self.spreading_factor());
        let pl = u64::try_from(payload.saturating_add(LORAWAN_OVERHEAD)).unwrap_or(u64::MAX);
        let de: u64 = if sf >= 11 { 1 } else { 0 };
        // Symbol time in microseconds at 125 kHz: 2^SF / 125 kHz = 2^SF * 8 us.
        let t_sym_us = (1u64 << sf).saturating_mul(8);
        let numerator = pl
            .saturating_mul(8)
            .saturating_add(44)
            .saturating_sub(sf.saturating_mul(4));
        let denominator = sf
            .saturating_sub(de.saturating_mul(2))
            .saturating_mul(4)
            .max(1);
        let payload_symbols = numerator
            .div_ceil(denominator)
            .saturating_mul(5)
            .saturating_add(8);
        // Preamble: 8 + 4.25 symbols = 49/4 symbols.
        let preamble_us = t_sym_us.saturating_mul(49) / 4;
        let total_us = preamble_us.saturating_add(payload_symbols.saturating_mul(t_sym_us));
        total_us.div_ceil(1_000)
    }
}

/// A duty-cycle limit in the ETSI style: after transmitting for `t`, stay silent for
/// `t * (1000 / permille - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DutyCycle {
    /// Allowed transmit time per thousand (10 = 1 %).
    pub permille: u16,
}

impl DutyCycle {
    /// 1 %, the EU868 g1 sub-band limit.
    pub const EU868: Self = Self { permille: 10 };

    /// Silence required after `airtime_ms` of transmission.
    pub fn off_time_ms(&self, airtime_ms: u64) -> u64 {
        match self.permille {
            0 => u64::MAX,
            p if p >= 1000 => 0,
            p => airtime_ms
                .saturating_mul(1000)
                .div_ceil(u64::from(p))
                .saturating_sub(airtime_ms),
        }
    }
}

/// Controls a LoRaWAN end device.
#[allow(async_fn_in_trait)] // Single-threaded device executors; see `crate::Link`.
#[cfg_attr(feature = "mock", mockall::automock(type Error = super::ControlError;))]
pub trait LoraControl {
    /// The driver's error.
    type Error: iot_core::Error;

    /// Joins (OTAA exchange or ABP personalisation).
    async fn join(&mut self, mode: &LoraJoin) -> Result<(), Self::Error>;

    /// Whether the device has a session.
    fn is_joined(&self) -> bool;

    /// Sets the data rate for later uplinks.
    fn set_data_rate(&mut self, dr: DataRate) -> Result<(), Self::Error>;

    /// The current data rate.
    fn data_rate(&self) -> DataRate;

    /// The largest application payload at the current data rate.
    fn max_payload(&self) -> usize {
        self.data_rate().max_payload()
    }

    /// Milliseconds until the duty cycle allows the next uplink (0 = now).
    fn duty_cycle_wait_ms(&self) -> u64;

    /// Sends a confirmed uplink on `port`; `Ok(true)` if the network acknowledged it.
    async fn send_confirmed(&mut self, port: u8, data: &[u8]) -> Result<bool, Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_on_air_matches_the_semtech_calculator() {
        // Reference values from the LoRa airtime formula (125 kHz, CR 4/5, 8-symbol preamble):
        // SF12 with a 64-byte PHY payload is 2793.5 ms.
        assert_eq!(DataRate::DR0.time_on_air_ms(51), 2_794);
        // SF7, 13-byte PHY payload: 46.3 ms; 235 bytes: 368.9 ms.
        assert_eq!(DataRate::DR5.time_on_air_ms(0), 47);
        assert_eq!(DataRate::DR5.time_on_air_ms(222), 369);
        assert!(DataRate::DR0.time_on_air_ms(10) > DataRate::DR1.time_on_air_ms(10));
        assert_eq!(DataRate::new(6), None);
        assert_eq!(DataRate::new(3).map(DataRate::max_payload), Some(115));
        assert_eq!(DataRate::DR5.spreading_factor(), 7);
    }

    #[test]
    fn duty_cycle_arithmetic() {
        assert_eq!(DutyCycle::EU868.off_time_ms(100), 9_900);
        assert_eq!(DutyCycle { permille: 1000 }.off_time_ms(100), 0);
        assert_eq!(DutyCycle { permille: 0 }.off_time_ms(1), u64::MAX);
    }
}
