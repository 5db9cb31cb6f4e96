#![no_std]
#![no_main]

mod board;

use core::fmt::Write;

use iot_core::message::{EnvelopeRef, MessageId, MessageKind, QoS};
use iot_core::time::HybridLogicalClock;
use iot_core::{DeviceId, NodeId};

#[riscv_rt::entry]
fn main() -> ! {
    let mut uart = board::Uart;
    let _ = writeln!(uart, "boot: riscv32imc on QEMU virt");
    match self_check() {
        Ok(()) => {
            let _ = writeln!(uart, "self-check passed");
            board::exit(0)
        }
        Err(what) => {
            let _ = writeln!(uart, "self-check failed: {what}");
            board::exit(1)
        }
    }
}

/// Runs the core codec and clock on the target's instruction set.
fn self_check() -> Result<(), &'static str> {
    let device = DeviceId::from_mac([0x24, 0x0a, 0xc4, 0x00, 0x00, 0x01]);
    let mut hlc = HybridLogicalClock::new(NodeId::from_device_id(&device), 1_000);
    let a = hlc.now(5_000).map_err(|_| "hlc")?;
    let b = hlc.now(4_000).map_err(|_| "hlc")?;
    if b <= a {
        return Err("hlc not monotonic");
    }
    let env = EnvelopeRef {
        device,
        seq: 1,
        id: MessageId(1),
        qos: QoS::AtLeastOnce,
        kind: MessageKind::Heartbeat,
        payload: &[1, 2, 3],
    };
    let mut buf = [0u8; 64];
    let n = env.encode_into(&mut buf).map_err(|_| "encode")?;
    let frame = buf.get(..n).ok_or("length")?;
    if EnvelopeRef::decode(frame) != Ok(env) {
        return Err("round trip");
    }
    Ok(())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(board::Uart, "panic: {info}");
    board::exit(2)
}
