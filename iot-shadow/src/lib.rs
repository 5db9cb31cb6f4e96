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

#[cfg(feature = "json")]
pub mod aws;
pub mod cbor;
pub mod device;
pub mod engine;
pub mod error;
#[cfg(feature = "json")]
pub mod json;
pub mod path;
pub mod policy;
#[cfg(feature = "protobuf")]
pub mod proto;
mod slice_writer;
pub mod stamp;
pub mod store;
pub mod typed;
pub mod update;
pub mod value;

#[cfg(feature = "alloc")]
pub use cbor::OwnedMessage;
pub use device::{DeviceShadow, Handled};
pub use engine::{MemoryVersionStore, Shadow, VersionStore, Volatile};
pub use error::ShadowError;
pub use path::Path;
pub use policy::{FieldPolicies, Limits, Resolver, Winner};
pub use stamp::{Origin, Policy, Stamp};
#[cfg(feature = "alloc")]
pub use store::MapStore;
pub use store::{
    FieldStore, FixedEntry, FixedStore, FixedStoreInner, FixedStoreView, Leaf, Section,
};
pub use update::{Outcome, Update, Write};
pub use value::Value;

pub use iot_core;
