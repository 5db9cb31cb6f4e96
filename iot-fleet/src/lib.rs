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

pub use iot_core;

pub mod access;
pub mod audit;
pub mod battery;
#[cfg(feature = "durable")]
pub mod durable;
pub mod fleet;
pub mod gateway;
pub mod health;
pub mod index;
pub mod metering;
pub mod proof;
pub mod registry;
pub mod retention;
pub mod rollout;
pub mod server;

pub use access::{AccessError, Principal, Role, Scope};
pub use audit::{Actor, AuditAction, AuditEntry, AuditLog};
pub use fleet::{
    ClassPolicies, Decommissioned, Fleet, FleetError, RolloutTimeouts, ScopedRollout, ServerShadow,
};
pub use health::{HealthCounts, HealthPolicy, HealthReport, HealthStatus};
pub use metering::{Sla, Usage};
pub use proof::{ChallengeAnswer, LifecycleHmac, Nonce, ProofVerifier, answer};
pub use registry::{
    AssignmentRule, DeviceRecord, ManufacturingRecord, Matcher, ReadingTally, Registration,
    RegistrationError,
};
pub use rollout::{Instruction, Rollout, RolloutConfig, RolloutStatus, StageTally};
pub use server::{Declined, DeviceServer, Handled, Reply, ServerError, Session};
