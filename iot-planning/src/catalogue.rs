//! A catalogue of IoT protocols and media with their range, bitrate, MTU, power and cost.
//!
//! The numbers are typical engineering figures (datasheets, specifications and operator
//! price lists rounded to an order of magnitude), good enough to *rank* options; a real link
//! reports its live figures through [`iot_transport::LinkInfo`], which
//! `iot_transport::select` uses; [`ProtocolProfile::typical_link_info`] turns an entry into
//! such figures for simulations and what-if selection.
//!
//! ```
//! use iot_planning::catalogue::{Protocol, CATALOGUE, Layer};
//!
//! assert!(CATALOGUE.len() >= 20);
//! let lora = Protocol::LoRaWan.profile();
//! assert_eq!(lora.mtu, 51); // SF12 / DR0 in EU868
//! assert!(lora.range_m > Protocol::Ble.profile().range_m);
//! assert_eq!(Protocol::Mqtt.profile().layer, Layer::Application);
//! ```

use iot_transport::{LinkInfo, LinkState, Medium};

/// Where a protocol sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Layer {
    /// An on-board or short wired bus between chips.
    Bus,
    /// A field bus or wired network.
    Wired,
    /// A wireless network or radio link.
    Wireless,
    /// An application protocol carried over IP.
    Application,
}

/// A protocol or medium in the catalogue.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Protocol {
    /// Inter-Integrated Circuit.
    I2c,
    /// Serial Peripheral Interface.
    Spi,
    /// Asynchronous serial.
    Uart,
    /// RS-485 carrying Modbus RTU.
    Rs485Modbus,
    /// Controller Area Network (classic).
    Can,
    /// Dallas/Maxim 1-Wire.
    OneWire,
    /// Bluetooth Low Energy.
    Ble,
    /// Zigbee (IEEE 802.15.4).
    Zigbee,
    /// Thread (IEEE 802.15.4, IPv6).
    Thread,
    /// Z-Wave (sub-GHz).
    ZWave,
    /// Wi-Fi (802.11n, 2.4 GHz).
    Wifi,
    /// Wired Ethernet (100BASE-TX).
    Ethernet,
    /// LoRaWAN (EU868, figures at SF12).
    LoRaWan,
    /// Sigfox.
    Sigfox,
    /// NB-IoT (LTE Cat-NB1).
    NbIot,
    /// LTE-M (LTE Cat-M1).
    LteM,
    /// 4G LTE (Cat-1 and above).
    Lte,
    /// 5G NR.
    FiveG,
    /// MQTT over TCP.
    Mqtt,
    /// CoAP over UDP.
    Coap,
    /// HTTP/1.1 over TCP.
    Http,
    /// OMA LwM2M over CoAP.
    Lwm2m,
    /// AMQP 1.0 over TCP.
    Amqp,
}

/// The catalogue entry of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ProtocolProfile {
    /// Which protocol.
    pub protocol: Protocol,
    /// Where it sits.
    pub layer: Layer,
    /// The medium a link of this protocol uses.
    pub medium: Medium,
    /// Typical maximum range in metres (0 for application protocols: their carrier decides).
    pub range_m: u32,
    /// Typical application bitrate in bits per second.
    pub bitrate_bps: u32,
    /// Largest payload in one datagram or frame, in bytes.
    pub mtu: u16,
    /// Typical one-way latency in milliseconds.
    pub latency_ms: u32,
    /// Typical transmit power draw in milliwatts.
    pub tx_power_mw: u32,
    /// Energy per payload byte in nanojoules.
    pub energy_nj_per_byte: u32,
    /// Money per KiB in micro-units (0 for unlicensed or wired media).
    pub cost_micro_per_kib: u32,
    /// Header and framing overhead per message in bytes (for application protocols: the
    /// minimum added to the carrier's payload).
    pub overhead_bytes: u16,
}

impl ProtocolProfile {
    /// A [`LinkInfo`] with this profile's typical figures, for simulations and defaults.
    pub const fn typical_link_info(&self) -> LinkInfo {
        LinkInfo {
            medium: self.medium,
            mtu: self.mtu,
            bitrate_bps: self.bitrate_bps,
            latency_ms: self.latency_ms,
            energy_nj_per_byte: self.energy_nj_per_byte,
            cost_micro_per_kib: self.cost_micro_per_kib,
            rssi_dbm: None,
            snr_db: None,
            state: LinkState::Up,
        }
    }
}

macro_rules! profile {
    ($p:ident, $layer:ident, $medium:ident, range $r:expr, bps $b:expr, mtu $m:expr,
     lat $l:expr, mw $mw:expr, nj $nj:expr, cost $c:expr, ovh $o:expr) => {
        ProtocolProfile {
            protocol: Protocol::$p,
            layer: Layer::$layer,
            medium: Medium::$medium,
            range_m: $r,
            bitrate_bps: $b,
            mtu: $m,
            latency_ms: $l,
            tx_power_mw: $mw,
            energy_nj_per_byte: $nj,
            cost_micro_per_kib: $c,
            overhead_bytes: $o,
        }
    };
}

/// Every catalogued protocol, in [`Protocol`] declaration order.
pub const CATALOGUE: [ProtocolProfile; 23] = [
    profile!(I2c, Bus, Serial, range 1, bps 400_000, mtu 255, lat 0, mw 1, nj 25, cost 0, ovh 2),
    profile!(Spi, Bus, Serial, range 1, bps 10_000_000, mtu 4096, lat 0, mw 2, nj 2, cost 0, ovh 1),
    profile!(Uart, Bus, Serial, range 15, bps 115_200, mtu 1024, lat 1, mw 5, nj 350, cost 0, ovh 4),
    profile!(Rs485Modbus, Wired, Serial, range 1_200, bps 19_200, mtu 252, lat 10, mw 150, nj 62_500, cost 0, ovh 4),
    profile!(Can, Wired, Serial, range 500, bps 500_000, mtu 8, lat 1, mw 100, nj 1_600, cost 0, ovh 6),
    profile!(OneWire, Bus, Serial, range 100, bps 16_300, mtu 8, lat 5, mw 5, nj 2_500, cost 0, ovh 2),
    profile!(Ble, Wireless, Ble, range 50, bps 1_000_000, mtu 244, lat 15, mw 15, nj 120, cost 0, ovh 10),
    profile!(Zigbee, Wireless, Ieee802154, range 100, bps 250_000, mtu 100, lat 30, mw 40, nj 1_300, cost 0, ovh 27),
    profile!(Thread, Wireless, Ieee802154, range 100, bps 250_000, mtu 1280, lat 40, mw 40, nj 1_300, cost 0, ovh 40),
    profile!(ZWave, Wireless, Ieee802154, range 100, bps 100_000, mtu 46, lat 50, mw 30, nj 2_400, cost 0, ovh 10),
    profile!(Wifi, Wireless, Wifi, range 50, bps 20_000_000, mtu 1472, lat 5, mw 700, nj 280, cost 0, ovh 28),
    profile!(Ethernet, Wired, Ethernet, range 100, bps 100_000_000, mtu 1472, lat 1, mw 300, nj 24, cost 0, ovh 42),
    profile!(LoRaWan, Wireless, Lora, range 15_000, bps 250, mtu 51, lat 1_500, mw 120, nj 3_840_000, cost 0, ovh 13),
    profile!(Sigfox, Wireless, Lora, range 40_000, bps 100, mtu 12, lat 6_000, mw 120, nj 9_600_000, cost 8_000, ovh 14),
    profile!(NbIot, Wireless, Cellular, range 15_000, bps 60_000, mtu 1358, lat 1_600, mw 700, nj 93_000, cost 200, ovh 28),
    profile!(LteM, Wireless, Cellular, range 10_000, bps 375_000, mtu 1358, lat 100, mw 700, nj 15_000, cost 150, ovh 28),
    profile!(Lte, Wireless, Cellular, range 10_000, bps 10_000_000, mtu 1358, lat 50, mw 1_500, nj 1_200, cost 100, ovh 28),
    profile!(FiveG, Wireless, Cellular, range 1_000, bps 100_000_000, mtu 1358, lat 10, mw 2_500, nj 200, cost 80, ovh 28),
    profile!(Mqtt, Application, Wifi, range 0, bps 0, mtu u16::MAX, lat 0, mw 0, nj 0, cost 0, ovh 5),
    profile!(Coap, Application, Wifi, range 0, bps 0, mtu 1024, lat 0, mw 0, nj 0, cost 0, ovh 4),
    profile!(Http, Application, Wifi, range 0, bps 0, mtu u16::MAX, lat 0, mw 0, nj 0, cost 0, ovh 200),
    profile!(Lwm2m, Application, Wifi, range 0, bps 0, mtu 1024, lat 0, mw 0, nj 0, cost 0, ovh 12),
    profile!(Amqp, Application, Wifi, range 0, bps 0, mtu u16::MAX, lat 0, mw 0, nj 0, cost 0, ovh 60),
];

impl Protocol {
    /// Every catalogued protocol.
    pub const ALL: [Protocol; 23] = [
        Self::I2c,
        Self::Spi,
        Self::Uart,
        Self::Rs485Modbus,
        Self::Can,
        Self::OneWire,
        Self::Ble,
        Self::Zigbee,
        Self::Thread,
        Self::ZWave,
        Self::Wifi,
        Self::Ethernet,
        Self::LoRaWan,
        Self::Sigfox,
        Self::NbIot,
        Self::LteM,
        Self::Lte,
        Self::FiveG,
        Self::Mqtt,
        Self::Coap,
        Self::Http,
        Self::Lwm2m,
        Self::Amqp,
    ];

    /// The catalogue entry of this protocol.
    pub fn profile(self) -> ProtocolProfile {
        CATALOGUE
            .iter()
            .copied()
            .find(|p| p.protocol == self)
            // Every variant is catalogued (checked by a test); the fallback is never taken.
            .unwrap_or(CATALOGUE[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_is_catalogued_once_in_order() {
        assert!(CATALOGUE.len() >= 20);
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(CATALOGUE[i].protocol, *p);
            assert_eq!(p.profile().protocol, *p);
        }
    }

    #[test]
    fn figures_are_plausible() {
        for p in CATALOGUE {
            assert!(p.mtu > 0, "{:?}", p.protocol);
            if p.layer != Layer::Application {
                assert!(p.bitrate_bps > 0, "{:?}", p.protocol);
                assert!(p.energy_nj_per_byte > 0, "{:?}", p.protocol);
                assert!(p.range_m > 0, "{:?}", p.protocol);
            }
        }
        // Long range costs energy per byte; licensed spectrum costs money.
        assert!(
            Protocol::LoRaWan.profile().energy_nj_per_byte
                > Protocol::Wifi.profile().energy_nj_per_byte
        );
        assert!(Protocol::NbIot.profile().cost_micro_per_kib > 0);
        assert_eq!(Protocol::Wifi.profile().cost_micro_per_kib, 0);
        let info = Protocol::LteM.profile().typical_link_info();
        assert_eq!(info.medium, Medium::Cellular);
        assert_eq!(info.mtu, Protocol::LteM.profile().mtu);
        assert!(info.is_up());
    }
}
