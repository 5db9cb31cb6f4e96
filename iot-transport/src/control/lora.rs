//! LoRa / LoRaWAN control: OTAA and ABP join, data rate (spreading factor), duty-cycle budget,
//! confirmed uplinks and the MTU of each data rate (EU868 regional parameters).
//!
//! [`SimLora`] is a simulated LoRaWAN end device that is also a [`Link`]: unconfirmed uplinks
//! through `send`, downlinks through `receive`, with time-on-air and the duty cycle enforced
//! on an injected clock.
//!
//! ```
//! use iot_core::ManualClock;
//! use iot_transport::control::lora::{DataRate, LoraControl, LoraJoin, SimLora};
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

use core::cell::Cell;

use iot_core::Clock;

use super::ControlError;
use crate::link::{Link, LinkInfo, LinkState, Medium};
use crate::profile::Protocol;
use crate::rng::{Rng, SplitMix64};

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

/// A simulated LoRaWAN end device with a downlink queue of `Q` messages, on clock `C`.
#[derive(Debug)]
pub struct SimLora<C, const Q: usize> {
    clock: C,
    joined: bool,
    dr: DataRate,
    duty: DutyCycle,
    next_tx_ms: Cell<u64>,
    rng: SplitMix64,
    ack_loss_per_mille: u16,
    uplinks: u32,
    airtime_ms: u64,
    downlinks: heapless::Deque<heapless::Vec<u8, 222>, Q>,
    last_uplink: heapless::Vec<u8, 222>,
}

impl<C: Clock, const Q: usize> SimLora<C, Q> {
    /// An unjoined device at DR0 with the EU868 1 % duty cycle.
    pub fn new(clock: C, seed: u64) -> Self {
        Self {
            clock,
            joined: false,
            dr: DataRate::DR0,
            duty: DutyCycle::EU868,
            next_tx_ms: Cell::new(0),
            rng: SplitMix64::new(seed),
            ack_loss_per_mille: 0,
            uplinks: 0,
            airtime_ms: 0,
            downlinks: heapless::Deque::new(),
            last_uplink: heapless::Vec::new(),
        }
    }

    /// Sets the duty cycle.
    #[must_use]
    pub fn with_duty_cycle(mut self, duty: DutyCycle) -> Self {
        self.duty = duty;
        self
    }

    /// Loses this share of confirmed-uplink acks.
    #[must_use]
    pub fn with_ack_loss(mut self, per_mille: u16) -> Self {
        self.ack_loss_per_mille = per_mille;
        self
    }

    /// Queues a downlink from the network.
    pub fn push_downlink(&mut self, data: &[u8]) -> Result<(), ControlError> {
        let v = heapless::Vec::from_slice(data).map_err(|_| ControlError::TooLarge {
            len: data.len(),
            max: 222,
        })?;
        self.downlinks
            .push_back(v)
            .map_err(|_| ControlError::Device)
    }

    /// Uplinks sent and total airtime, for energy and regulation checks.
    pub const fn usage(&self) -> (u32, u64) {
        (self.uplinks, self.airtime_ms)
    }

    /// The last uplink's payload.
    pub fn last_uplink(&self) -> &[u8] {
        &self.last_uplink
    }

    fn transmit(&mut self, data: &[u8]) -> Result<(), ControlError> {
        if !self.joined {
            return Err(ControlError::NotJoined);
        }
        let max = self.dr.max_payload();
        if data.len() > max {
            return Err(ControlError::TooLarge {
                len: data.len(),
                max,
            });
        }
        let wait = self.duty_cycle_wait_ms();
        if wait > 0 {
            return Err(ControlError::DutyCycle { wait_ms: wait });
        }
        let now = self.clock.now_ms();
        let airtime = self.dr.time_on_air_ms(data.len());
        self.next_tx_ms.set(
            now.saturating_add(airtime)
                .saturating_add(self.duty.off_time_ms(airtime)),
        );
        self.uplinks = self.uplinks.saturating_add(1);
        self.airtime_ms = self.airtime_ms.saturating_add(airtime);
        self.last_uplink = heapless::Vec::from_slice(data).map_err(|_| ControlError::Device)?;
        Ok(())
    }
}

impl<C: Clock, const Q: usize> LoraControl for SimLora<C, Q> {
    type Error = ControlError;

    async fn join(&mut self, mode: &LoraJoin) -> Result<(), Self::Error> {
        let valid = match mode {
            LoraJoin::Otaa { app_key, .. } => app_key.iter().any(|b| *b != 0),
            LoraJoin::Abp { dev_addr, .. } => *dev_addr != 0,
        };
        if !valid {
            return Err(ControlError::AuthFailed);
        }
        self.joined = true;
        Ok(())
    }

    fn is_joined(&self) -> bool {
        self.joined
    }

    fn set_data_rate(&mut self, dr: DataRate) -> Result<(), Self::Error> {
        self.dr = dr;
        Ok(())
    }

    fn data_rate(&self) -> DataRate {
        self.dr
    }

    fn duty_cycle_wait_ms(&self) -> u64 {
        self.next_tx_ms.get().saturating_sub(self.clock.now_ms())
    }

    async fn send_confirmed(&mut self, _port: u8, data: &[u8]) -> Result<bool, Self::Error> {
        self.transmit(data)?;
        Ok(!self.rng.chance_per_mille(self.ack_loss_per_mille))
    }
}

impl<C: Clock, const Q: usize> Link for SimLora<C, Q> {
    type Error = ControlError;

    fn info(&self) -> LinkInfo {
        let mut info = Protocol::LoRaWan.profile().typical_link_info();
        info.mtu = u16::try_from(self.dr.max_payload()).unwrap_or(u16::MAX);
        info.bitrate_bps = self.dr.bitrate_bps();
        info.medium = Medium::Lora;
        info.state = if self.joined {
            LinkState::Up
        } else {
            LinkState::Down
        };
        info
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error> {
        self.transmit(datagram)
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.try_receive(buf)?.ok_or(ControlError::Timeout)
    }

    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        let Some(front) = self.downlinks.front() else {
            return Ok(None);
        };
        let n = front.len();
        let cap = buf.len();
        buf.get_mut(..n)
            .ok_or(ControlError::TooLarge { len: n, max: cap })?
            .copy_from_slice(front);
        self.downlinks.pop_front();
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use embassy_futures::block_on;
    use iot_core::ManualClock;

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

    #[test]
    fn uplinks_respect_join_mtu_and_duty_cycle() {
        let clock = ManualClock::new(0);
        let mut r: SimLora<_, 2> = SimLora::new(&clock, 3);
        assert_eq!(block_on(r.send(b"x")), Err(ControlError::NotJoined));
        assert!(!r.info().is_up());
        assert_eq!(
            block_on(r.join(&LoraJoin::Abp {
                dev_addr: 0,
                nwk_skey: [1; 16],
                app_skey: [1; 16]
            })),
            Err(ControlError::AuthFailed)
        );
        block_on(r.join(&LoraJoin::Abp {
            dev_addr: 0x2601_1234,
            nwk_skey: [1; 16],
            app_skey: [1; 16],
        }))
        .unwrap();
        assert_eq!(r.info().mtu, 51);
        assert_eq!(
            block_on(r.send(&[0; 52])),
            Err(ControlError::TooLarge { len: 52, max: 51 })
        );
        block_on(r.send(&[7; 51])).unwrap();
        let wait = r.duty_cycle_wait_ms();
        assert_eq!(wait, 2_794 * 100);
        assert_eq!(
            block_on(r.send(b"x")),
            Err(ControlError::DutyCycle { wait_ms: wait })
        );
        clock.advance(wait);
        r.set_data_rate(DataRate::DR5).unwrap();
        assert_eq!(r.info().mtu, 222);
        assert!(block_on(r.send_confirmed(2, b"y")).unwrap());
        assert_eq!(r.usage().0, 2);
        assert_eq!(r.last_uplink(), b"y");
        r.push_downlink(b"cmd").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(r.try_receive(&mut buf), Ok(Some(3)));
        assert_eq!(block_on(r.receive(&mut buf)), Err(ControlError::Timeout));
    }

    #[test]
    fn lost_acks_are_reported_as_unconfirmed() {
        let clock = ManualClock::new(0);
        let mut r: SimLora<_, 1> = SimLora::new(&clock, 3)
            .with_ack_loss(1000)
            .with_duty_cycle(DutyCycle { permille: 1000 });
        block_on(r.join(&LoraJoin::Otaa {
            dev_eui: [1; 8],
            join_eui: [2; 8],
            app_key: [3; 16],
        }))
        .unwrap();
        assert_eq!(block_on(r.send_confirmed(1, b"a")), Ok(false));
    }
}
