//! Cross-crate integration, conformance and property tests live in `tests/tests/`; this
//! library holds what several of them share.

pub mod fleet_node;
pub mod proto_check;
pub mod wire_devices;
