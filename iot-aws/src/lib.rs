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

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(feature = "bridge")]
pub mod bridge;
pub mod service;
pub mod topic;

pub use iot_shadow::aws::{AwsError, AwsShadow, Rejection, Updated};
pub use service::{Config, InFlight, MAX_IN_FLIGHT, Publication, ServiceError, ShadowService};
pub use topic::{Channel, Operation, ShadowTopic, TopicError};
