//! The web dashboard: one static page of HTML and JavaScript served at `/`, no build step.
//! It reads the API with the token given in the address (`/#token=iot_...`, kept in the
//! tab's session storage) or typed in: fleet health over time, rollouts with their stage
//! tallies and pause / resume / abort buttons, device search, a device page with desired,
//! reported and delta, a form to set a desired value, lifecycle history and audit entries.

/// The page.
pub const PAGE: &str = include_str!("dashboard/index.html");
