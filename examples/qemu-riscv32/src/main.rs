//! Device firmware on QEMU riscv32 `virt`, talking to a host gateway over the emulated UART
//! with iot-transport's framed serial link and at-least-once delivery.
//!
//! The exchange: the device sends a heartbeat and a telemetry batch (QoS 1, retransmitted
//! until acknowledged); the gateway sends a command; the device answers it with a command
//! ack echoing the command's payload. When every message is acknowledged the device exits
//! with status 0. The host side (`cargo run -p iot-examples --bin qemu-gateway`) checks every
//! message it receives.
#![no_std]
#![no_main]

mod board;

use embassy_futures::block_on;
use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::{Measurement, Reading, Telemetry};
use iot_core::{DeviceId, codec};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;

/// The MAC the emulated board reports; the gateway expects the id derived from it.
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Give up (fail) if the exchange has not completed by then.
const DEADLINE_MS: u64 = 20_000;

#[riscv_rt::entry]
fn main() -> ! {
    match run() {
        Ok(()) => board::exit(0),
        Err(code) => board::exit(code),
    }
}

fn run() -> Result<(), u16> {
    let device = DeviceId::from_mac_with_prefix("qemu-", MAC).map_err(|_| 10u16)?;
    let link: FramedLink<board::Uart, 256> = FramedLink::new(board::Uart, 115_200);
    let mut endpoint: ReliableEndpoint<_, _, 8, 192, 16> = ReliableEndpoint::new(
        link,
        device,
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(200, 2_000),
        SplitMix64::new(u64::from_le_bytes([
            MAC[0], MAC[1], MAC[2], MAC[3], MAC[4], MAC[5], 0, 0,
        ])),
    );

    let start = board::now_ms();
    endpoint
        .enqueue(
            MessageKind::Heartbeat,
            QoS::AtLeastOnce,
            Priority::Normal,
            &[],
            start,
        )
        .map_err(|_| 11u16)?;
    let mut batch: Telemetry<3> = Telemetry::new();
    for m in [
        Measurement::Temperature { celsius: 21.5 },
        Measurement::Humidity { percent: 40.0 },
        Measurement::BatteryPercent { percent: 87 },
    ] {
        batch.push(Reading::new(start, m)).map_err(|_| 12u16)?;
    }
    let mut payload = [0u8; 64];
    let n = codec::encode_into(&batch, &mut payload).map_err(|_| 13u16)?;
    let telemetry = payload.get(..n).ok_or(13u16)?;
    endpoint
        .enqueue(
            MessageKind::Telemetry,
            QoS::AtLeastOnce,
            Priority::Normal,
            telemetry,
            start,
        )
        .map_err(|_| 14u16)?;

    let mut answered = false;
    loop {
        let now = board::now_ms();
        if now.saturating_sub(start) > DEADLINE_MS {
            return Err(20);
        }
        let mut command: heapless::Vec<u8, 32> = heapless::Vec::new();
        block_on(endpoint.poll(now, |env| {
            if env.kind == MessageKind::Command {
                command.clear();
                let _ = command.extend_from_slice(env.payload);
            }
        }))
        .map_err(|_| 21u16)?;
        if !command.is_empty() && !answered {
            endpoint
                .enqueue(
                    MessageKind::CommandAck,
                    QoS::AtLeastOnce,
                    Priority::High,
                    &command,
                    now,
                )
                .map_err(|_| 22u16)?;
            answered = true;
        }
        if answered && endpoint.outbox().is_empty() {
            return Ok(());
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    board::exit(2)
}
