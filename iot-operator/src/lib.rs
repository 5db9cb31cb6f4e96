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

pub mod api;
pub mod cli;
pub mod client;
pub mod dashboard;
pub mod durable;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod names;
pub mod openapi;
pub mod seed;
pub mod serve;
pub mod system;
pub mod tokens;

pub use api::{AppState, router};
pub use engine::{Engine, LocalEngine, TrafficCounts};
pub use error::ApiError;
pub use tokens::TokenStore;
