//! Cellular control (NB-IoT, LTE-M, LTE, 5G modems): attach with an APN, detach,
//! registration status, signal quality, PSM and eDRX power saving, plus the 3GPP TS 27.007
//! and TS 24.008 encodings an AT-command adapter needs.
//!
//! ```
//! use iot_transport::control::cellular::{
//!     CellularControl, PowerSaving, RegistrationStatus, t3324_code, t3412_ext_code,
//! };
//! use iot_transport::sim::SimCellular; // feature `testkit`
//! use embassy_futures::block_on;
//!
//! let mut modem = SimCellular::new("iot.example", -95);
//! block_on(modem.attach("iot.example"))?;
//! assert_eq!(modem.registration(), RegistrationStatus::Home);
//! block_on(modem.set_power_saving(PowerSaving::Psm { periodic_tau_s: 86_400, active_time_s: 60 }))?;
//! // AT+CPSMS=1,,,"00111000","00011110": 24 h = 24 x 1 h; 60 s = 30 x 2 s.
//! assert_eq!(t3412_ext_code(86_400), Some(0b001_11000));
//! assert_eq!(t3324_code(60), Some(0b000_11110));
//! # Ok::<(), iot_transport::control::ControlError>(())
//! ```

/// Network registration state (`+CEREG` / `+CREG` `<stat>`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RegistrationStatus {
    /// Not registered and not searching.
    NotRegistered,
    /// Registered on the home network.
    Home,
    /// Searching for an operator.
    Searching,
    /// Registration denied.
    Denied,
    /// Unknown (out of coverage).
    Unknown,
    /// Registered, roaming.
    Roaming,
}

impl RegistrationStatus {
    /// From the 3GPP TS 27.007 `<stat>` code (0..=5; others map to `Unknown`).
    pub const fn from_3gpp(stat: u8) -> Self {
        match stat {
            0 => Self::NotRegistered,
            1 => Self::Home,
            2 => Self::Searching,
            3 => Self::Denied,
            5 => Self::Roaming,
            _ => Self::Unknown,
        }
    }

    /// Whether data can flow.
    pub const fn is_registered(self) -> bool {
        matches!(self, Self::Home | Self::Roaming)
    }
}

/// Signal quality as modems report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SignalQuality {
    /// Received signal strength in dBm.
    pub rssi_dbm: Option<i16>,
    /// Reference signal received power in dBm (LTE).
    pub rsrp_dbm: Option<i16>,
    /// Reference signal received quality in dB (LTE).
    pub rsrq_db: Option<i16>,
}

impl SignalQuality {
    /// From `+CSQ: <rssi>,<ber>`: 0..=31 map to -113..=-51 dBm, 99 is unknown.
    pub const fn from_csq(rssi: u8) -> Self {
        let rssi_dbm = if rssi <= 31 {
            // 2 * 31 - 113 fits in i16; the operands are small constants.
            Some((rssi as i16).saturating_mul(2).saturating_sub(113))
        } else {
            None
        };
        Self {
            rssi_dbm,
            rsrp_dbm: None,
            rsrq_db: None,
        }
    }
}

/// Power-saving modes of LTE-M and NB-IoT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PowerSaving {
    /// Always reachable.
    Off,
    /// Power Saving Mode: sleep between periodic tracking-area updates.
    Psm {
        /// Requested periodic TAU (T3412 extended), seconds.
        periodic_tau_s: u32,
        /// Requested active time after each wake (T3324), seconds.
        active_time_s: u32,
    },
    /// Extended discontinuous reception.
    Edrx {
        /// Requested paging cycle in milliseconds.
        cycle_ms: u32,
    },
}

/// Encodes a periodic TAU (T3412 extended, TS 24.008 table 10.5.163a) as its GPRS-timer-3
/// byte, rounding up to the nearest representable value; `None` if above 9920 hours.
pub fn t3412_ext_code(seconds: u32) -> Option<u8> {
    // (unit bits, unit in seconds), smallest unit first.
    const UNITS: [(u8, u32); 7] = [
        (0b011, 2),
        (0b100, 30),
        (0b101, 60),
        (0b000, 600),
        (0b001, 3_600),
        (0b010, 36_000),
        (0b110, 1_152_000),
    ];
    timer_code(seconds, &UNITS)
}

/// Encodes an active time (T3324, TS 24.008 table 10.5.163) as its GPRS-timer-2 byte,
/// rounding up; `None` if above 186 minutes.
pub fn t3324_code(seconds: u32) -> Option<u8> {
    const UNITS: [(u8, u32); 3] = [(0b000, 2), (0b001, 60), (0b010, 360)];
    timer_code(seconds, &UNITS)
}

fn timer_code(seconds: u32, units: &[(u8, u32)]) -> Option<u8> {
    units.iter().find_map(|&(bits, unit)| {
        let value = seconds.div_ceil(unit);
        if value <= 31 {
            u8::try_from(value).ok().map(|v| (bits << 5) | v)
        } else {
            None
        }
    })
}

/// Controls a cellular modem.
#[allow(async_fn_in_trait)] // Single-threaded device executors; see `crate::Link`.
#[cfg_attr(feature = "mock", mockall::automock(type Error = super::ControlError;))]
pub trait CellularControl {
    /// The driver's error.
    type Error: iot_core::Error;

    /// Registers and activates a PDP context on `apn`.
    async fn attach(&mut self, apn: &str) -> Result<(), Self::Error>;

    /// Deactivates the context and deregisters.
    async fn detach(&mut self) -> Result<(), Self::Error>;

    /// The current registration state.
    fn registration(&self) -> RegistrationStatus;

    /// Queries signal quality.
    async fn signal_quality(&mut self) -> Result<SignalQuality, Self::Error>;

    /// Requests a power-saving mode from the network.
    async fn set_power_saving(&mut self, mode: PowerSaving) -> Result<(), Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_3gpp() {
        assert_eq!(RegistrationStatus::from_3gpp(1), RegistrationStatus::Home);
        assert_eq!(
            RegistrationStatus::from_3gpp(5),
            RegistrationStatus::Roaming
        );
        assert_eq!(
            RegistrationStatus::from_3gpp(9),
            RegistrationStatus::Unknown
        );
        assert!(RegistrationStatus::Roaming.is_registered());
        assert!(!RegistrationStatus::Searching.is_registered());
        assert_eq!(SignalQuality::from_csq(0).rssi_dbm, Some(-113));
        assert_eq!(SignalQuality::from_csq(31).rssi_dbm, Some(-51));
        assert_eq!(SignalQuality::from_csq(99).rssi_dbm, None);
    }

    #[test]
    fn timer_encodings_round_up_to_the_smallest_unit() {
        assert_eq!(t3412_ext_code(0), Some(0b011_00000));
        assert_eq!(t3412_ext_code(62), Some(0b011_11111));
        assert_eq!(t3412_ext_code(63), Some(0b100_00011)); // 3 x 30 s
        assert_eq!(t3412_ext_code(3_600), Some(0b000_00110)); // 6 x 10 min
        assert_eq!(t3412_ext_code(320 * 3_600), Some(0b110_00001));
        assert_eq!(t3412_ext_code(9_920 * 3_600), Some(0b110_11111));
        assert_eq!(t3412_ext_code(u32::MAX), None);
        assert_eq!(t3324_code(10), Some(0b000_00101));
        assert_eq!(t3324_code(186 * 60), Some(0b010_11111));
        assert_eq!(t3324_code(187 * 60), None);
    }
}
