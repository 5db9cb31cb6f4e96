//! The OpenAPI 3.1 document served at `/openapi.json`, written by hand (no build step).

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");
