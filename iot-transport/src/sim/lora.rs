//! A simulated LoRaWAN end device that is also a [`Link`]: unconfirmed uplinks through `send`,
//! downlinks through `receive`, with time-on-air and the duty cycle enforced on an injected
//! clock.

use core::cell::Cell;

use iot_core::Clock;

use crate::control::ControlError;
use crate::control::lora::{DataRate, DutyCycle, LoraControl, LoraJoin};
use crate::link::{Link, LinkInfo, LinkState, Medium};
use crate::rng::{Rng, SplitMix64};

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
        // Latency and energy per byte are LoRaWAN's typical figures at SF12 in EU868.
        LinkInfo {
            bitrate_bps: self.dr.bitrate_bps(),
            latency_ms: 1_500,
            energy_nj_per_byte: 3_840_000,
            state: if self.joined {
                LinkState::Up
            } else {
                LinkState::Down
            },
            ..LinkInfo::new(
                Medium::Lora,
                u16::try_from(self.dr.max_payload()).unwrap_or(u16::MAX),
            )
        }
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
