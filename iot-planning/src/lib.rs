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

pub mod catalogue;
pub mod power;
pub mod pricing;
pub mod resources;
pub mod topology;

pub use catalogue::{CATALOGUE, Layer, Protocol, ProtocolProfile};
pub use power::{Battery, Lifetime, PowerError, PowerProfile, estimate_lifetime};
pub use pricing::{CostBreakdown, CostModel, MeteredUsage};
pub use resources::{
    PlanningError, Recommendation, Requirements, ResourcePlan, Resources, recommend,
};
pub use topology::{NodeKind, ReferenceLevel, Tier, Topology, TopologyError};
