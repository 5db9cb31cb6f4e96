//! Shared helpers for the host examples.
