//! Cross-crate integration, conformance and property tests live in `tests/tests/`.
