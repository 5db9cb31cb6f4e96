#![no_std]
#![doc = include_str!("../README.md")]

extern crate alloc;

pub use iot_core;
