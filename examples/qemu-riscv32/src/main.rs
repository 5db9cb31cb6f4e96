//! The device-lab application (`iot-device-app`) on QEMU riscv32 `virt`, talking to a host
//! gateway over the emulated UART with iot-transport's framed serial link.
//!
//! Only the board differs from the ESP32-C3 firmware: the clock is the `time` CSR, the
//! climate sensor and battery are simulated, and the LED is a variable. The host side
//! (`cargo run -p iot-examples --bin qemu-gateway`) judges the run from the messages.
//!
//! Restart: the application saves its state (the agent's record and pending QoS 1/2
//! messages) after every step to a `sequential-storage` map on a RAM-backed flash region
//! and restores from it at boot; the region is blank at power-on, so a QEMU run registers.
#![no_std]
#![no_main]

mod board;

use embassy_futures::block_on;
use iot_agent::storage::FlashStorage;
use iot_core::DeviceId;
use iot_device_app::{App, Battery, Climate, FRAME_CAPACITY, Hardware, SensorFault};
use iot_lifecycle::mem_flash::MemFlash;
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;

/// The MAC the emulated board reports; the gateway expects the id derived from it.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The secret provisioned at manufacture (the gateway's manufacturing list holds it too).
const SECRET: [u8; 32] = *b"qemu-lab-device-secret-000000001";
const FIRMWARE_VERSION: u32 = 1;
/// When the simulated battery collapses, in milliseconds after boot.
const BATTERY_FAILS_AT_MS: u64 = 7_000;
/// The RAM-backed flash region: four 4 KiB pages, records (the outbox image of up to
/// eight 512-byte messages is the largest) of up to 4 KiB.
type Flash = MemFlash<16384, 4096, 4>;
const RECORD_CAPACITY: usize = 4096;

/// Simulated peripherals: a room whose temperature swings by a degree every second (so
/// every telemetry period has news), and a battery that fails after a few seconds.
struct VirtBoard {
    led: bool,
}

impl Hardware for VirtBoard {
    fn now_ms(&self) -> u64 {
        board::now_ms()
    }

    fn read_climate(&mut self) -> Result<Climate, SensorFault> {
        let odd_second = (board::now_ms() / 1_000) % 2 == 1;
        Ok(Climate {
            celsius: if odd_second { 21.5 } else { 20.5 },
            humidity: 40.0,
        })
    }

    fn read_battery(&mut self) -> Battery {
        if board::now_ms() < BATTERY_FAILS_AT_MS {
            Battery {
                percent: 87,
                millivolts: 3_950,
            }
        } else {
            Battery {
                percent: 4,
                millivolts: 3_350,
            }
        }
    }

    fn set_led(&mut self, on: bool) {
        self.led = on;
    }
}

#[riscv_rt::entry]
fn main() -> ! {
    let Ok(device) = DeviceId::from_mac_with_prefix("qemu-", MAC) else {
        board::exit(10)
    };
    let link: FramedLink<board::Uart, FRAME_CAPACITY> = FramedLink::new(board::Uart, 115_200);
    let seed = u64::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3], MAC[4], MAC[5], 0, 0]);
    let Ok(mut app) = App::new(
        link,
        device,
        FIRMWARE_VERSION,
        SECRET,
        SplitMix64::new(seed),
    ) else {
        board::exit(11)
    };
    let mut board = VirtBoard { led: false };
    let Ok(mut storage) = FlashStorage::<Flash, RECORD_CAPACITY>::new(MemFlash::new(), 0..16384)
    else {
        board::exit(13)
    };
    let mut scratch = [0u8; RECORD_CAPACITY];
    match app.restore(&mut board, &mut storage, &mut scratch) {
        Ok(true) => {}
        Ok(false) => {
            if app.start(board::now_ms()).is_err() {
                board::exit(12);
            }
        }
        Err(_) => board::exit(14),
    }
    loop {
        // The emulator has no interrupts wired up, so the board polls; a real board sleeps
        // until the returned deadline or a received byte.
        if block_on(app.step(&mut board)).is_err() {
            board::exit(20);
        }
        if app.save(&mut storage, &mut scratch).is_err() {
            board::exit(21);
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    board::exit(2)
}
