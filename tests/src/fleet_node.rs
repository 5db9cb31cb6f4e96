//! What every backend node of the scale-out test (`fleet-node`) and the test's operator
//! share: the fleet's device class and the configuration devices get at registration.

use iot_core::NodeId;
use iot_fleet::{DeviceServer, Fleet};
use iot_lifecycle::config::DeviceConfig;

/// The configuration devices are given: shadow synchronisation every 2 s, so a shadow
/// change a node could not keep (another node's write came first) is sent again soon.
#[must_use]
pub const fn device_config() -> DeviceConfig {
    DeviceConfig {
        version: 1,
        sync_interval_ms: 2_000,
        ..DeviceConfig::DEFAULT
    }
}

/// A fresh server (empty fleet) with the agent's device class, as each node opens it.
#[must_use]
pub fn server() -> DeviceServer {
    let mut fleet = Fleet::default();
    fleet.register_schema(iot_agent::AGENT_SCHEMA);
    DeviceServer::with_os_rng(fleet, device_config(), NodeId(1))
}
