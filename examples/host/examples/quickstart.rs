//! Quickstart: a device stamps telemetry with its hybrid logical clock, wraps it in an
//! envelope, encodes canonical CBOR into a fixed buffer, and a backend decodes it, merges the
//! clock (rejecting a device whose clock is too far ahead) and re-encodes it as protobuf and
//! JSON for other consumers.
//!
//! Run: `cargo run -p iot-examples --example quickstart`

use iot_core::codec;
use iot_core::message::{EnvelopeRef, MessageId, MessageKind, OwnedEnvelope, QoS};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::time::{Clock, HybridLogicalClock, ManualClock};
use iot_core::{DeviceId, NodeId, proto};
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- Device side: no allocation below this line until the backend part. ---
    let mac = [0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56];
    let device = DeviceId::from_mac_with_prefix("esp32c3-", mac)?;
    let node = NodeId::from_device_id(&device);
    let clock = ManualClock::new(1_700_000_000_000);
    let mut hlc = HybridLogicalClock::new(node, 60_000);
    println!("device {device} ({node}) registers");

    let mut telemetry: Telemetry<4> = Telemetry::new();
    let now = clock.now_ms();
    telemetry.push(Reading::new(
        now,
        Measurement::Temperature { celsius: 22.4 },
    ))?;
    telemetry.push(Reading::new(now, Measurement::Humidity { percent: 41.0 }))?;
    telemetry.push(Reading::new(
        now,
        Measurement::BatteryPercent { percent: 87 },
    ))?;
    telemetry.push(Reading::new(now, Measurement::Rssi { dbm: -61 }))?;

    let mut payload = [0u8; 96];
    let payload_len = codec::encode_into(&telemetry, &mut payload)?;
    let stamp = hlc.tick(&clock)?;
    let envelope = EnvelopeRef {
        device,
        seq: 1,
        id: MessageId(1),
        qos: QoS::AtLeastOnce,
        kind: MessageKind::Telemetry,
        payload: payload.get(..payload_len).ok_or("payload")?,
    };
    let mut frame = [0u8; 160];
    let frame_len = envelope.encode_into(&mut frame)?;
    println!("device sends {frame_len} bytes of CBOR (telemetry {payload_len} B) stamped {stamp}");

    // --- Backend side. ---
    let received = EnvelopeRef::decode(frame.get(..frame_len).ok_or("frame")?)?;
    let readings: Telemetry<16> = codec::decode(received.payload)?;
    let mut server = HybridLogicalClock::new(NodeId(0), 60_000);
    let merged = server.observe(stamp, clock.now_ms())?;
    println!(
        "backend accepts {} readings from {}; its clock is now {merged}",
        readings.len(),
        received.device
    );
    for r in &readings.readings {
        println!("  {:?}", r.measurement);
    }

    // A device whose clock is five minutes ahead is refused, and the server clock stays put.
    let mut fast = HybridLogicalClock::new(NodeId(9), 0);
    let skewed = fast.now(clock.now_ms() + 300_000)?;
    match server.observe(skewed, clock.now_ms()) {
        Err(e) => println!("backend rejects a skewed clock: {e}"),
        Ok(ts) => return Err(format!("skewed timestamp accepted as {ts}").into()),
    }

    let pb = proto::Envelope::from(&received).encode_to_vec();
    let json = serde_json::to_string(&OwnedEnvelope::try_from(proto::Envelope::decode(
        pb.as_slice(),
    )?)?)?;
    let readings_json = serde_json::to_string(&readings)?;
    println!(
        "same message as protobuf: {} B; as JSON: {} B envelope + {} B readings",
        pb.len(),
        json.len(),
        readings_json.len()
    );
    Ok(())
}
