//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use iot_shadow::iot_core::id::NodeId;
use iot_shadow::iot_core::time::HlcTimestamp;
use iot_shadow::{Origin, Path, Policy, Section, Stamp, Value, Write};

pub const CLOUD: u32 = 1;
pub const DEVICE: u32 = 7;

pub fn path(p: &str) -> Path {
    Path::new(p).unwrap()
}

pub fn stamp(time: u64, node: u32, origin: Origin, policy: Policy) -> Stamp {
    Stamp::new(
        HlcTimestamp {
            time,
            node: NodeId(node),
        },
        policy,
        origin,
    )
}

/// A cloud write to desired under last-writer-wins.
pub fn desired(p: &str, value: Value, time: u64) -> Write {
    Write::new(
        Section::Desired,
        path(p),
        value,
        stamp(time, CLOUD, Origin::Cloud, Policy::LastWriterWins),
    )
}

/// A device write to reported under last-writer-wins.
pub fn reported(p: &str, value: Value, time: u64) -> Write {
    Write::new(
        Section::Reported,
        path(p),
        value,
        stamp(time, DEVICE, Origin::Device, Policy::LastWriterWins),
    )
}

pub fn int(i: i64) -> Value {
    Value::Int(i)
}
