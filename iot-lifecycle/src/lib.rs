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

#[cfg(any(feature = "std", test))]
extern crate std;

pub use iot_core;

pub mod command;
pub mod config;
pub mod duty;
pub mod health;
#[cfg(feature = "testkit")]
pub mod mem_flash;
pub mod ota;
pub mod registration;
pub mod schedule;
pub mod state;
pub mod validation;
mod wire;

pub use command::{Command, CommandAck, CommandHandler, CommandKind, CommandProcessor};
pub use config::{ConfigError, ConfigStore, DeviceConfig};
pub use health::{HealthMonitor, HealthReport, HealthSample, HealthStatus, HealthThresholds};
pub use ota::{OtaJob, OtaState, OtaUpdater};
pub use registration::{
    AuditRecord, DeviceSecret, decommission, registration_proof, verify_registration,
};
pub use state::{Event, Hooks, Lifecycle, State, TransitionError, transition, validate_history};
