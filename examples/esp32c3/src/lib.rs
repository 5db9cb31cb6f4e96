//! Parts shared by the ESP32-C3 lab firmware: the board (serial firmware `src/main.rs`, Wi-Fi
//! firmware `src/bin/wifi.rs`) and, with feature `wifi`, the build-time network
//! configuration and the queue of envelopes the agent sends over MQTT.
#![no_std]

// The radio driver allocates (only it does); esp-alloc is the global allocator of every
// binary built with `wifi`, the Wi-Fi firmware gives it its heap.
#[cfg(feature = "wifi")]
use esp_alloc as _;

pub mod board;
#[cfg(feature = "wifi")]
pub mod net_config;
#[cfg(feature = "wifi")]
pub mod queue;
