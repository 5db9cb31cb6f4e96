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
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_hal::uart::{Config as UartConfig, Uart};
use esp_println::println;
use iot_device_app::{App, FRAME_CAPACITY, Hardware};
use iot_esp32c3_lab::board::{FIRMWARE_VERSION, LabBoard, SECRET, device_id};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;

esp_bootloader_esp_idf::esp_app_desc!();

/// The longest the application sleeps before looking at the link again.
const LINK_POLL: Duration = Duration::from_millis(20);

#[esp_rtos::main]
async fn main(_spawner: embassy_executor::Spawner) -> ! {
    let mut peripherals = esp_hal::init(esp_hal::Config::default());
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let (device, _mac) = device_id();
    // The retry jitter's seed from the hardware RNG, with the ADC as its entropy source while
    // it is drawn (the ADC then goes to the battery reading): devices that boot together do
    // not retry in step, and nothing about the seed follows from the MAC.
    let seed = {
        let _entropy = TrngSource::new(peripherals.RNG.reborrow(), peripherals.ADC1.reborrow());
        match Trng::try_new() {
            Ok(trng) => u64::from(trng.random()) << 32 | u64::from(trng.random()),
            Err(e) => panic!("the ADC entropy source is enabled: {:?}", e),
        }
    };
    println!("device {}", device);

    let mut board = LabBoard::new(
        peripherals.I2C0,
        peripherals.GPIO6,
        peripherals.GPIO7,
        peripherals.ADC1,
        peripherals.GPIO3,
        peripherals.GPIO10,
    )
    .expect("the default I2C configuration is valid");

    let uart = Uart::new(
        peripherals.UART1,
        UartConfig::default().with_baudrate(115_200),
    )
    .expect("115200 baud is a valid UART configuration")
    .with_tx(peripherals.GPIO4)
    .with_rx(peripherals.GPIO5)
    .into_async();
    let link: FramedLink<_, FRAME_CAPACITY> = FramedLink::new(uart, 115_200);
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
