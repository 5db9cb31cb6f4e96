//! Wi-Fi control: scan, join with credentials, leave, RSSI.
//!
//! ```
//! use iot_transport::sim::SimWifi; // feature `testkit`
//! use iot_transport::control::wifi::{WifiControl, WifiCredentials, WifiSecurity, AccessPoint};
//! use embassy_futures::block_on;
//!
//! let mut wifi = SimWifi::<4>::new();
//! wifi.add_network(AccessPoint::new("lab", [2, 0, 0, 0, 0, 1], 6, -55, WifiSecurity::Wpa2)?, "secret")?;
//! let mut seen = [AccessPoint::EMPTY; 4];
//! assert_eq!(block_on(wifi.scan(&mut seen))?, 1);
//! block_on(wifi.join(&WifiCredentials::wpa2("lab", "secret")))?;
//! assert_eq!(wifi.rssi(), Some(-55));
//! # Ok::<(), iot_transport::control::ControlError>(())
//! ```

use super::ControlError;

/// Wi-Fi security mode.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum WifiSecurity {
    /// No encryption.
    Open,
    /// WPA2-Personal.
    Wpa2,
    /// WPA3-Personal (SAE).
    Wpa3,
}

/// Credentials to join a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WifiCredentials<'a> {
    /// Network name.
    pub ssid: &'a str,
    /// Passphrase (empty for open networks).
    pub passphrase: &'a str,
    /// Security mode.
    pub security: WifiSecurity,
}

impl<'a> WifiCredentials<'a> {
    /// WPA2-Personal credentials.
    pub const fn wpa2(ssid: &'a str, passphrase: &'a str) -> Self {
        Self {
            ssid,
            passphrase,
            security: WifiSecurity::Wpa2,
        }
    }
}

/// A network seen by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AccessPoint {
    /// Network name (at most 32 bytes).
    pub ssid: heapless::String<32>,
    /// The access point's MAC address.
    pub bssid: [u8; 6],
    /// Channel number.
    pub channel: u8,
    /// Signal strength in dBm.
    pub rssi_dbm: i16,
    /// Security mode.
    pub security: WifiSecurity,
}

impl AccessPoint {
    /// A blank entry, to size scan buffers.
    pub const EMPTY: Self = Self {
        ssid: heapless::String::new(),
        bssid: [0; 6],
        channel: 0,
        rssi_dbm: 0,
        security: WifiSecurity::Open,
    };

    /// An access point; fails if the SSID is longer than 32 bytes.
    pub fn new(
        ssid: &str,
        bssid: [u8; 6],
        channel: u8,
        rssi_dbm: i16,
        security: WifiSecurity,
    ) -> Result<Self, ControlError> {
        Ok(Self {
            ssid: heapless::String::try_from(ssid).map_err(|_| ControlError::Unsupported)?,
            bssid,
            channel,
            rssi_dbm,
            security,
        })
    }
}

/// Controls a Wi-Fi station.
#[allow(async_fn_in_trait)] // Single-threaded device executors; see `crate::Link`.
#[cfg_attr(feature = "mock", mockall::automock(type Error = super::ControlError;))]
pub trait WifiControl {
    /// The driver's error.
    type Error: iot_core::Error;

    /// Scans and writes up to `out.len()` networks, strongest first; returns how many.
    async fn scan(&mut self, out: &mut [AccessPoint]) -> Result<usize, Self::Error>;

    /// Joins a network.
    async fn join<'a>(&mut self, credentials: &WifiCredentials<'a>) -> Result<(), Self::Error>;

    /// Leaves the current network.
    async fn leave(&mut self) -> Result<(), Self::Error>;

    /// Signal strength of the joined network in dBm, if joined.
    fn rssi(&self) -> Option<i16>;

    /// Whether a network is joined.
    fn is_joined(&self) -> bool;
}
