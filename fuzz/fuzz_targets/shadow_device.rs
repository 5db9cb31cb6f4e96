//! A device handling arbitrary notification bytes: never panics, whatever arrives.
#![no_main]

use iot_shadow::iot_core::NodeId;
use iot_shadow::{DeviceShadow, Limits, shadow_state};
use libfuzzer_sys::fuzz_target;

shadow_state! {
    /// A small typed state.
    #[derive(Debug, Clone, Default)]
    pub struct Target {
        /// A cloud-owned integer.
        pub interval: u32 => INTERVAL, "telemetry.interval", CloudWins;
        /// A device-owned flag.
        pub led: bool => LED, "led", DeviceWins;
        /// A shared integer.
        pub mode: i64 => MODE, "mode", LastWriterWins;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut device: DeviceShadow<Target, 8> =
        DeviceShadow::new(Target::default(), NodeId(3), Limits::DEFAULT, 60_000);
    // Feed the input as a sequence of length-prefixed notifications.
    let mut rest = data;
    let mut wall = 1_000u64;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (msg, next) = tail.split_at(take);
        let _ = device.handle_cbor::<8>(msg, wall);
        let mut buf = [0u8; 1024];
        let _ = device.encode_pending(Some("fuzz"), &mut buf);
        wall = wall.saturating_add(1_000);
        rest = next;
    }
});
