#![no_std]
#![no_main]

use esp_backtrace as _;
use esp_hal::main;
use esp_println::println;

esp_bootloader_esp_idf::esp_app_desc!();

#[main]
fn main() -> ! {
    let _peripherals = esp_hal::init(esp_hal::Config::default());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(esp_hal::efuse::base_mac_address().as_bytes());
    let id = iot_core::DeviceId::from_mac_with_prefix("esp32c3-", mac)
        .unwrap_or(iot_core::DeviceId::from_mac(mac));
    println!("device {}", id);
    loop {
        core::hint::spin_loop();
    }
}
