//! The device lab on an ESP32-C3: the shared application (`iot-device-app`) with real
//! peripherals. The climate comes from an SHT3x over I2C (iot-transport's driver, CRC
//! checked), the battery from the ADC through a 1:2 divider, the LED from a GPIO, and the
//! gateway link is iot-transport's framed serial link on UART1.
//!
//! Wiring (see README.md): SHT3x SDA GPIO6, SCL GPIO7; LED (with 330 ohm) GPIO10; battery
//! divider midpoint GPIO3; gateway serial TX GPIO4, RX GPIO5, 115200 baud.
#![no_std]
#![no_main]

use embassy_time::{Duration, Instant as TimerInstant, Timer};
use esp_backtrace as _;
use esp_hal::Blocking;
use esp_hal::analog::adc::{Adc, AdcCalCurve, AdcConfig, AdcPin, Attenuation};
use esp_hal::delay::Delay;
use esp_hal::gpio::{Level, Output, OutputConfig};
use esp_hal::i2c::master::{Config as I2cConfig, I2c};
use esp_hal::peripherals::{ADC1, GPIO3};
use esp_hal::time::Instant;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::uart::{Config as UartConfig, Uart};
use esp_println::println;
use iot_core::DeviceId;
use iot_device_app::sht3x::{ADDRESS_DEFAULT, Sht3x};
use iot_device_app::{App, Battery, Climate, FRAME_CAPACITY, Hardware, SensorFault};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;

esp_bootloader_esp_idf::esp_app_desc!();

/// Cell voltage read as empty and as full (single Li-ion cell).
const EMPTY_MV: u32 = 3_300;
const FULL_MV: u32 = 4_200;
/// The longest the application sleeps before looking at the link again.
const LINK_POLL: Duration = Duration::from_millis(20);
const FIRMWARE_VERSION: u32 = 1;

/// The device secret, provisioned at manufacture: 32 bytes given at build time in
/// `IOT_DEVICE_SECRET` (and registered in the backend's manufacturing list). The fallback
/// is for the bench only; never ship it.
const SECRET: [u8; 32] = secret(option_env!("IOT_DEVICE_SECRET"));

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

struct LabBoard<'d> {
    climate: Sht3x<I2c<'d, Blocking>, Delay>,
    adc: Adc<'d, ADC1<'d>, Blocking>,
    battery_pin: AdcPin<GPIO3<'d>, ADC1<'d>, AdcCalCurve<ADC1<'d>>>,
    led: Output<'d>,
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

#[esp_rtos::main]
async fn main(_spawner: embassy_executor::Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let mut mac = [0u8; 6];
    mac.copy_from_slice(esp_hal::efuse::base_mac_address().as_bytes());
    let device = DeviceId::from_mac_with_prefix("esp32c3-", mac).unwrap_or(DeviceId::from_mac(mac));
    println!("device {}", device);

    let i2c = I2c::new(peripherals.I2C0, I2cConfig::default())
        .expect("the default I2C configuration is valid")
        .with_sda(peripherals.GPIO6)
        .with_scl(peripherals.GPIO7);
    let mut adc_config = AdcConfig::new();
    let battery_pin = adc_config
        .enable_pin_with_cal::<_, AdcCalCurve<ADC1>>(peripherals.GPIO3, Attenuation::_11dB);
    let mut board = LabBoard {
        climate: Sht3x::new(i2c, Delay::new(), ADDRESS_DEFAULT),
        adc: Adc::new(peripherals.ADC1, adc_config),
        battery_pin,
        led: Output::new(peripherals.GPIO10, Level::Low, OutputConfig::default()),
    };

    let uart = Uart::new(
        peripherals.UART1,
        UartConfig::default().with_baudrate(115_200),
    )
    .expect("115200 baud is a valid UART configuration")
    .with_tx(peripherals.GPIO4)
    .with_rx(peripherals.GPIO5)
    .into_async();
    let link: FramedLink<_, FRAME_CAPACITY> = FramedLink::new(uart, 115_200);
    let seed = u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0]);
    let mut app = match App::new(
        link,
        device,
        FIRMWARE_VERSION,
        SECRET,
        SplitMix64::new(seed),
    ) {
        Ok(app) => app,
        Err(e) => panic!("the default configuration is valid: {:?}", e),
    };
    if let Err(e) = app.start(board.now_ms()) {
        println!("registration could not start: {:?}", e);
    }

    loop {
        let next = match app.step(&mut board).await {
            Ok(next) => next,
            Err(e) => {
                println!("link error: {:?}", e);
                None
            }
        };
        // Sleep until the agent's next deadline, but look at the link at least every
        // LINK_POLL so a received command is handled promptly.
        let wake = TimerInstant::now() + LINK_POLL;
        let deadline = next
            .map(|ms| TimerInstant::from_millis(ms).min(wake))
            .unwrap_or(wake);
        Timer::at(deadline).await;
    }
}
