//! A simulated cellular modem: [`CellularControl`] on a network that accepts one APN.

use crate::control::ControlError;
use crate::control::cellular::{
    CellularControl, PowerSaving, RegistrationStatus, SignalQuality, t3324_code, t3412_ext_code,
};

/// A simulated modem on a network that accepts one APN.
#[derive(Debug, Clone)]
pub struct SimCellular {
    apn: heapless::String<64>,
    rssi_dbm: i16,
    status: RegistrationStatus,
    power_saving: PowerSaving,
    coverage: bool,
}

impl SimCellular {
    /// A modem in coverage at `rssi_dbm` whose network accepts `apn` (truncated to 64 bytes).
    pub fn new(apn: &str, rssi_dbm: i16) -> Self {
        let mut s = heapless::String::new();
        for c in apn.chars() {
            if s.push(c).is_err() {
                break;
            }
        }
        Self {
            apn: s,
            rssi_dbm,
            status: RegistrationStatus::NotRegistered,
            power_saving: PowerSaving::Off,
            coverage: true,
        }
    }

    /// Moves in or out of coverage.
    pub fn set_coverage(&mut self, coverage: bool) {
        self.coverage = coverage;
        if !coverage {
            self.status = RegistrationStatus::Unknown;
        }
    }

    /// The power-saving mode granted.
    pub const fn power_saving(&self) -> PowerSaving {
        self.power_saving
    }
}

impl CellularControl for SimCellular {
    type Error = ControlError;

    async fn attach(&mut self, apn: &str) -> Result<(), Self::Error> {
        if !self.coverage {
            self.status = RegistrationStatus::Searching;
            return Err(ControlError::Timeout);
        }
        if apn != self.apn.as_str() {
            self.status = RegistrationStatus::Denied;
            return Err(ControlError::Denied);
        }
        self.status = RegistrationStatus::Home;
        Ok(())
    }

    async fn detach(&mut self) -> Result<(), Self::Error> {
        self.status = RegistrationStatus::NotRegistered;
        Ok(())
    }

    fn registration(&self) -> RegistrationStatus {
        self.status
    }

    async fn signal_quality(&mut self) -> Result<SignalQuality, Self::Error> {
        Ok(SignalQuality {
            rssi_dbm: self.coverage.then_some(self.rssi_dbm),
            rsrp_dbm: self.coverage.then_some(self.rssi_dbm.saturating_sub(20)),
            rsrq_db: self.coverage.then_some(-10),
        })
    }

    async fn set_power_saving(&mut self, mode: PowerSaving) -> Result<(), Self::Error> {
        match mode {
            PowerSaving::Psm {
                periodic_tau_s,
                active_time_s,
            } if t3412_ext_code(periodic_tau_s).is_none()
                || t3324_code(active_time_s).is_none() =>
            {
                Err(ControlError::Unsupported)
            }
            PowerSaving::Edrx { cycle_ms } if !(5_120..=10_485_760).contains(&cycle_ms) => {
                Err(ControlError::Unsupported)
            }
            _ if !self.status.is_registered() => Err(ControlError::NotJoined),
            _ => {
                self.power_saving = mode;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use embassy_futures::block_on;

    use super::*;

    #[test]
    fn attach_power_saving_and_coverage() {
        let mut m = SimCellular::new("apn", -90);
        assert_eq!(
            block_on(m.set_power_saving(PowerSaving::Edrx { cycle_ms: 20_480 })),
            Err(ControlError::NotJoined)
        );
        assert_eq!(block_on(m.attach("wrong")), Err(ControlError::Denied));
        assert_eq!(m.registration(), RegistrationStatus::Denied);
        block_on(m.attach("apn")).unwrap();
        assert_eq!(block_on(m.signal_quality()).unwrap().rssi_dbm, Some(-90));
        assert_eq!(
            block_on(m.set_power_saving(PowerSaving::Edrx { cycle_ms: 1 })),
            Err(ControlError::Unsupported)
        );
        block_on(m.set_power_saving(PowerSaving::Edrx { cycle_ms: 20_480 })).unwrap();
        assert_eq!(m.power_saving(), PowerSaving::Edrx { cycle_ms: 20_480 });
        m.set_coverage(false);
        assert_eq!(block_on(m.signal_quality()).unwrap().rssi_dbm, None);
        assert_eq!(block_on(m.attach("apn")), Err(ControlError::Timeout));
        m.set_coverage(true);
        block_on(m.attach("apn")).unwrap();
        block_on(m.detach()).unwrap();
        assert_eq!(m.registration(), RegistrationStatus::NotRegistered);
    }
}
