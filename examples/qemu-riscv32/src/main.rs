//! The device-lab application (`iot-device-app`) on QEMU riscv32 `virt`, talking to a host
//! gateway over the emulated UART with iot-transport's framed serial link.
//!
//! Only the board differs from the ESP32-C3 firmware: the clock is the `time` CSR, the
//! climate sensor and battery are simulated, and the LED is a variable. The host side
//! (`cargo run -p iot-examples --bin qemu-gateway`) judges the run from the messages.
#![no_std]
#![no_main]

mod board;

use embassy_futures::block_on;
use iot_core::DeviceId;
use iot_device_app::{App, Battery, Board, Climate, SensorFault};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;

/// The MAC the emulated board reports; the gateway expects the id derived from it.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Simulated peripherals: a slowly warming room and a full battery.
struct VirtBoard {
    led: bool,
}

impl Board for VirtBoard {
    fn now_ms(&self) -> u64 {
        board::now_ms()
    }

    fn read_climate(&mut self) -> Result<Climate, SensorFault> {
        // 21.5 °C at boot, +0.01 °C per second; 40 % RH.
        let warming = (board::now_ms() / 1_000) as f32 * 0.01;
        Ok(Climate {
            celsius: 21.5 + warming,
            humidity: 40.0,
        })
    }

    fn read_battery(&mut self) -> Battery {
        Battery {
            percent: 87,
            millivolts: 3_950,
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
    let link: FramedLink<board::Uart, 256> = FramedLink::new(board::Uart, 115_200);
    let seed = u64::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3], MAC[4], MAC[5], 0, 0]);
    let mut app = App::new(link, device, SplitMix64::new(seed));
    let mut board = VirtBoard { led: false };
    loop {
        if block_on(app.step(&mut board)).is_err() {
            board::exit(20);
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    board::exit(2)
}
