//! Host-side gateway for the QEMU device firmware (`examples/qemu-riscv32`).
//!
//! Starts `qemu-system-riscv32` with the firmware, speaks iot-transport's framed serial link
//! with at-least-once delivery over the emulated UART (QEMU's stdio), and checks the exchange
//! from the messages themselves: a heartbeat and a telemetry batch from the expected device,
//! then a command ack that echoes the command it sent. The run passes only if every check
//! holds and the firmware exits with status 0, within a bounded time.
//!
//! Run: `cargo run -p iot-examples --bin qemu-gateway -- path/to/firmware.elf`

use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use embassy_futures::block_on;
use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::{Measurement, Telemetry};
use iot_core::{DeviceId, codec};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;

/// The id the firmware derives from its MAC.
const DEVICE: &str = "qemu-525400123456";
const COMMAND: &[u8] = b"blink-led";
const TIMEOUT: Duration = Duration::from_secs(40);

/// QEMU's stdio as an embedded-io port: stdout bytes arrive through a reader thread.
struct EmulatorPort {
    stdin: ChildStdin,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    closed: bool,
}

impl EmulatorPort {
    fn fill(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }
}

impl embedded_io::ErrorType for EmulatorPort {
    type Error = std::io::Error;
}

impl embedded_io::ReadReady for EmulatorPort {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.fill();
        Ok(!self.pending.is_empty() || self.closed)
    }
}

impl embedded_io_async::Read for EmulatorPort {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.fill();
        while self.pending.is_empty() && !self.closed {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl embedded_io_async::Write for EmulatorPort {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.stdin.write_all(buf)?;
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.stdin.flush()
    }
}

/// What the gateway has seen, checked at the end.
#[derive(Default, Debug)]
struct Observed {
    heartbeats: u32,
    telemetry: Option<Telemetry<8>>,
    command_acks: Vec<Vec<u8>>,
    foreign: u32,
}

fn start_emulator(firmware: &str) -> Result<(Child, EmulatorPort), Box<dyn std::error::Error>> {
    let mut child = Command::new("qemu-system-riscv32")
        .args(["-machine", "virt", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-bios", "none", "-kernel", firmware])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    Ok((
        child,
        EmulatorPort {
            stdin,
            rx,
            pending: Vec::new(),
            closed: false,
        },
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let firmware = std::env::args()
        .nth(1)
        .ok_or("usage: qemu-gateway FIRMWARE.elf")?;
    let (mut child, port) = start_emulator(&firmware)?;
    let expected = DeviceId::new(DEVICE)?;
    let link: FramedLink<EmulatorPort, 256> = FramedLink::new(port, 115_200);
    let mut gateway: ReliableEndpoint<_, _, 8, 192, 16> = ReliableEndpoint::new(
        link,
        DeviceId::new("gateway")?,
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(200, 2_000),
        SplitMix64::new(7),
    );
    let started = Instant::now();
    let now = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut seen = Observed::default();
    let mut command_sent = false;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill()?;
            return Err(format!("no verdict within {TIMEOUT:?}; saw {seen:?}").into());
        }
        block_on(gateway.poll(now(), |env| {
            if env.device != expected {
                seen.foreign += 1;
                return;
            }
            match env.kind {
                MessageKind::Heartbeat => seen.heartbeats += 1,
                MessageKind::Telemetry => seen.telemetry = codec::decode(env.payload).ok(),
                MessageKind::CommandAck => seen.command_acks.push(env.payload.to_vec()),
                _ => seen.foreign += 1,
            }
        }))?;
        if !command_sent && seen.heartbeats > 0 {
            gateway.enqueue(
                MessageKind::Command,
                QoS::AtLeastOnce,
                Priority::High,
                COMMAND,
                now(),
            )?;
            command_sent = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // Acknowledgements still in flight when the device exits are harmless; the checks below
    // read only what arrived.
    println!("device exited with {status}; gateway saw {seen:?}");
    let mut failures = Vec::new();
    if !status.success() {
        failures.push(format!("firmware failed: {status}"));
    }
    if seen.heartbeats != 1 {
        failures.push(format!(
            "expected exactly one heartbeat delivered, got {}",
            seen.heartbeats
        ));
    }
    match &seen.telemetry {
        Some(t)
            if t.readings.iter().map(|r| r.measurement).eq([
                Measurement::Temperature { celsius: 21.5 },
                Measurement::Humidity { percent: 40.0 },
                Measurement::BatteryPercent { percent: 87 },
            ]) => {}
        other => failures.push(format!("telemetry is not the expected batch: {other:?}")),
    }
    if seen.command_acks != [COMMAND.to_vec()] {
        failures.push(format!(
            "expected one ack echoing the command, got {:?}",
            seen.command_acks
        ));
    }
    if seen.foreign != 0 {
        failures.push(format!("{} unexpected messages", seen.foreign));
    }
    if failures.is_empty() {
        println!("QEMU scenario passed");
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}
