#![no_std]
#![doc = include_str!("../README.md")]

pub use iot_core;
