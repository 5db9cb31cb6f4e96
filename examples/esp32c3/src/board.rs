//! The lab board: an SHT3x over I2C, the battery through the ADC and a 1:2 divider, and an
//! LED on a GPIO (wiring in README.md), as the application's [`Hardware`].

use esp_hal::Blocking;
use esp_hal::analog::adc::{Adc, AdcCalCurve, AdcConfig, AdcPin, Attenuation};
use esp_hal::delay::Delay;
use esp_hal::gpio::{Level, Output, OutputConfig};
use esp_hal::i2c::master::{Config as I2cConfig, ConfigError, I2c};
use esp_hal::peripherals::{ADC1, GPIO3, GPIO6, GPIO7, GPIO10, I2C0};
use esp_hal::time::Instant;
use iot_core::DeviceId;
use iot_device_app::sht3x::{ADDRESS_DEFAULT, Sht3x};
use iot_device_app::{Battery, Climate, Hardware, SensorFault};

/// Cell voltage read as empty and as full (single Li-ion cell).
const EMPTY_MV: u32 = 3_300;
const FULL_MV: u32 = 4_200;

/// The firmware version reported at registration.
pub const FIRMWARE_VERSION: u32 = 1;

/// The device secret, provisioned at manufacture: 32 bytes given at build time in
/// `IOT_DEVICE_SECRET` (and registered in the backend's manufacturing list). The fallback
/// is for the bench only; never ship it.
pub const SECRET: [u8; 32] = secret(option_env!("IOT_DEVICE_SECRET"));

const fn secret(given: Option<&str>) -> [u8; 32] {
    let bytes = match given {
        Some(s) if s.len() == 32 => s.as_bytes(),
        _ => b"esp32c3-lab-secret-change-me-001",
    };
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// This chip's factory MAC and the device id derived from it (`esp32c3-XXXXXXXXXXXX`).
pub fn device_id() -> (DeviceId, [u8; 6]) {
    let mut mac = [0u8; 6];
    mac.copy_from_slice(esp_hal::efuse::base_mac_address().as_bytes());
    let device = DeviceId::from_mac_with_prefix("esp32c3-", mac).unwrap_or(DeviceId::from_mac(mac));
    (device, mac)
}

/// The lab's peripherals.
pub struct LabBoard<'d> {
    climate: Sht3x<I2c<'d, Blocking>, Delay>,
    adc: Adc<'d, ADC1<'d>, Blocking>,
    battery_pin: AdcPin<GPIO3<'d>, ADC1<'d>, AdcCalCurve<ADC1<'d>>>,
    led: Output<'d>,
}

impl<'d> LabBoard<'d> {
    /// The board on its pins: SHT3x SDA GPIO6, SCL GPIO7; battery divider GPIO3; LED GPIO10.
    pub fn new(
        i2c: I2C0<'d>,
        sda: GPIO6<'d>,
        scl: GPIO7<'d>,
        adc: ADC1<'d>,
        battery: GPIO3<'d>,
        led: GPIO10<'d>,
    ) -> Result<Self, ConfigError> {
        let i2c = I2c::new(i2c, I2cConfig::default())?
            .with_sda(sda)
            .with_scl(scl);
        let mut adc_config = AdcConfig::new();
        let battery_pin =
            adc_config.enable_pin_with_cal::<_, AdcCalCurve<ADC1>>(battery, Attenuation::_11dB);
        Ok(Self {
            climate: Sht3x::new(i2c, Delay::new(), ADDRESS_DEFAULT),
            adc: Adc::new(adc, adc_config),
            battery_pin,
            led: Output::new(led, Level::Low, OutputConfig::default()),
        })
    }
}

impl Hardware for LabBoard<'_> {
    fn now_ms(&self) -> u64 {
        Instant::now().duration_since_epoch().as_millis()
    }

    fn read_climate(&mut self) -> Result<Climate, SensorFault> {
        let m = self.climate.measure().map_err(|_| SensorFault)?;
        Ok(Climate {
            celsius: m.celsius(),
            humidity: m.humidity_percent(),
        })
    }

    fn read_battery(&mut self) -> Battery {
        // The divider halves the cell voltage; the curve calibration yields millivolts.
        let pin_mv = nb::block!(self.adc.read_oneshot(&mut self.battery_pin)).unwrap_or(0);
        let cell_mv = u32::from(pin_mv).saturating_mul(2);
        let percent = cell_mv.saturating_sub(EMPTY_MV).saturating_mul(100) / (FULL_MV - EMPTY_MV);
        Battery {
            percent: u8::try_from(percent.min(100)).unwrap_or(100),
            millivolts: u16::try_from(cell_mv).unwrap_or(u16::MAX),
        }
    }

    fn set_led(&mut self, on: bool) {
        self.led
            .set_level(if on { Level::High } else { Level::Low });
    }
}
