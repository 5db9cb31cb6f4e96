//! A simulated Wi-Fi station: [`WifiControl`] over a list of visible networks.

use crate::control::ControlError;
use crate::control::wifi::{AccessPoint, WifiControl, WifiCredentials, WifiSecurity};

/// A simulated Wi-Fi station with up to `N` visible networks.
#[derive(Debug, Clone)]
pub struct SimWifi<const N: usize> {
    networks: heapless::Vec<(AccessPoint, heapless::String<64>), N>,
    joined: Option<usize>,
    failures_left: u8,
}

impl<const N: usize> Default for SimWifi<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SimWifi<N> {
    /// No networks in range.
    pub const fn new() -> Self {
        Self {
            networks: heapless::Vec::new(),
            joined: None,
            failures_left: 0,
        }
    }

    /// Puts a network in range.
    pub fn add_network(&mut self, ap: AccessPoint, passphrase: &str) -> Result<(), ControlError> {
        let pass = heapless::String::try_from(passphrase).map_err(|_| ControlError::Unsupported)?;
        self.networks
            .push((ap, pass))
            .map_err(|_| ControlError::Unsupported)
    }

    /// Takes a network out of range (dropping the association if joined to it).
    pub fn remove_network(&mut self, ssid: &str) {
        if let Some(i) = self.networks.iter().position(|(ap, _)| ap.ssid == ssid) {
            self.networks.remove(i);
            self.joined = None;
        }
    }

    /// Makes the next `n` joins time out (flaky access point).
    pub fn fail_next_joins(&mut self, n: u8) {
        self.failures_left = n;
    }
}

impl<const N: usize> WifiControl for SimWifi<N> {
    type Error = ControlError;

    async fn scan(&mut self, out: &mut [AccessPoint]) -> Result<usize, Self::Error> {
        let mut order: heapless::Vec<usize, N> = (0..self.networks.len()).collect();
        order.sort_unstable_by_key(|&i| {
            core::cmp::Reverse(self.networks.get(i).map_or(i16::MIN, |(ap, _)| ap.rssi_dbm))
        });
        let mut n = 0usize;
        for (slot, i) in out.iter_mut().zip(order) {
            if let Some((ap, _)) = self.networks.get(i) {
                *slot = ap.clone();
                n = n.saturating_add(1);
            }
        }
        Ok(n)
    }

    async fn join<'a>(&mut self, credentials: &WifiCredentials<'a>) -> Result<(), Self::Error> {
        let i = self
            .networks
            .iter()
            .position(|(ap, _)| ap.ssid == credentials.ssid)
            .ok_or(ControlError::NotFound)?;
        if self.failures_left > 0 {
            self.failures_left = self.failures_left.saturating_sub(1);
            return Err(ControlError::Timeout);
        }
        let (ap, pass) = self.networks.get(i).ok_or(ControlError::NotFound)?;
        let ok = match ap.security {
            WifiSecurity::Open => true,
            _ => ap.security == credentials.security && pass == credentials.passphrase,
        };
        if !ok {
            return Err(ControlError::AuthFailed);
        }
        self.joined = Some(i);
        Ok(())
    }

    async fn leave(&mut self) -> Result<(), Self::Error> {
        self.joined = None;
        Ok(())
    }

    fn rssi(&self) -> Option<i16> {
        self.joined
            .and_then(|i| self.networks.get(i))
            .map(|(ap, _)| ap.rssi_dbm)
    }

    fn is_joined(&self) -> bool {
        self.joined.is_some()
    }
}

#[cfg(test)]
mod tests {
    use embassy_futures::block_on;

    use super::*;

    #[test]
    fn scan_sorts_join_checks_credentials_and_leave() {
        let mut w = SimWifi::<4>::new();
        w.add_network(
            AccessPoint::new("far", [1; 6], 1, -85, WifiSecurity::Wpa2).unwrap(),
            "a",
        )
        .unwrap();
        w.add_network(
            AccessPoint::new("near", [2; 6], 11, -40, WifiSecurity::Wpa3).unwrap(),
            "b",
        )
        .unwrap();
        w.add_network(
            AccessPoint::new("cafe", [3; 6], 6, -60, WifiSecurity::Open).unwrap(),
            "",
        )
        .unwrap();
        let mut out = [AccessPoint::EMPTY, AccessPoint::EMPTY];
        assert_eq!(block_on(w.scan(&mut out)), Ok(2));
        assert_eq!(out[0].ssid, "near");
        assert_eq!(out[1].ssid, "cafe");

        assert_eq!(
            block_on(w.join(&WifiCredentials::wpa2("nope", "x"))),
            Err(ControlError::NotFound)
        );
        assert_eq!(
            block_on(w.join(&WifiCredentials::wpa2("near", "b"))),
            Err(ControlError::AuthFailed),
            "security mode must match"
        );
        let wpa3 = WifiCredentials {
            security: WifiSecurity::Wpa3,
            ..WifiCredentials::wpa2("near", "b")
        };
        w.fail_next_joins(1);
        assert_eq!(block_on(w.join(&wpa3)), Err(ControlError::Timeout));
        assert_eq!(block_on(w.join(&wpa3)), Ok(()));
        assert!(w.is_joined());
        assert_eq!(w.rssi(), Some(-40));
        w.remove_network("near");
        assert!(!w.is_joined());
        block_on(w.join(&WifiCredentials::wpa2("cafe", "anything"))).unwrap();
        block_on(w.leave()).unwrap();
        assert_eq!(w.rssi(), None);
        assert!(AccessPoint::new(&"x".repeat(33), [0; 6], 1, 0, WifiSecurity::Open).is_err());
    }
}
