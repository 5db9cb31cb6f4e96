#![no_std]
#![doc = include_str!("../README.md")]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod codec;
pub mod error;
pub mod flow;
pub mod id;
pub mod message;
#[cfg(feature = "protobuf")]
pub mod proto;
pub mod telemetry;
pub mod time;

pub use error::{Error, ErrorKind};
pub use id::{DeviceId, NodeId, TenantId};
pub use message::{Envelope, EnvelopeBuf, EnvelopeRef, MessageId, MessageKind, QoS};
pub use time::{Clock, HlcTimestamp, HybridLogicalClock, ManualClock};
