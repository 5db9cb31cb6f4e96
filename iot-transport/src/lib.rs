#![no_std]
#![doc = include_str!("../README.md")]
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

#[cfg(feature = "atat")]
pub mod atat_modem;
pub mod bus;
pub mod control;
pub mod fragment;
pub mod framing;
pub mod link;
pub mod monitor;
#[cfg(feature = "nal")]
pub mod nal;
pub mod outbox;
pub mod qos;
pub mod retry;
pub mod rng;
pub mod select;
/// Test doubles; not for production builds.
#[cfg(feature = "testkit")]
pub mod sim;

pub use iot_core;
pub use link::{Link, LinkError, LinkInfo, LinkState, Medium};
/// The `mockall` these mocks were generated with, so tests use matching predicates.
#[cfg(feature = "mock")]
pub use mockall;
pub use rng::{Rng, SplitMix64};
