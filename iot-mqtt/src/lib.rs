#![no_std]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::panic
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub use embedded_nal_async;
pub use iot_core;
pub use minimq;

#[cfg(feature = "alloc")]
pub mod check;
pub mod dedup;
pub mod device;
#[cfg(feature = "tls")]
pub mod device_tls;
pub mod topic;

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "std")]
pub mod bridge;
#[cfg(feature = "std")]
pub mod broker;
#[cfg(feature = "fleet")]
pub mod fleet;
#[cfg(feature = "std")]
pub mod std_tcp;
#[cfg(feature = "std")]
pub mod tls;
