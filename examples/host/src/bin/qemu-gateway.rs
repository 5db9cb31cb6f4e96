//! Host-side gateway for the QEMU device firmware (`examples/qemu-riscv32`).
//!
//! Starts `qemu-system-riscv32` with the firmware, speaks iot-transport's framed serial link
//! over the emulated UART (QEMU's stdio), and checks the exchange from the messages
//! themselves: a heartbeat and one telemetry batch from the expected device, then exactly one
//! ack per command it sends (an LED blink, accepted; a temperature read, completed with the
//! simulated value). The run passes only if every check holds within a bounded time and the
//! firmware did not stop with an error; the gateway then stops the emulator.
//!
//! Run: `cargo run -p iot-examples --bin qemu-gateway -- path/to/firmware.elf`

use std::io::{Read as _, Write as _};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use embassy_futures::block_on;
use iot_core::message::{MessageKind, QoS};
use iot_core::telemetry::{Measurement, Telemetry};
use iot_core::{DeviceId, codec};
use iot_lifecycle::command::{AckOutcome, Command, CommandAck, CommandKind};
use iot_transport::SplitMix64;
use iot_transport::framing::FramedLink;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;

/// The id the firmware derives from its MAC.
const DEVICE: &str = "qemu-525400123456";
/// Command ids the gateway sends.
const BLINK: u32 = 1;
const READ_TEMPERATURE: u32 = 2;
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

/// What the gateway has seen.
#[derive(Default, Debug)]
struct Observed {
    heartbeats: u32,
    telemetry: Vec<Telemetry<8>>,
    acks: Vec<CommandAck>,
    foreign: u32,
}

impl Observed {
    /// Everything the scenario expects, or what is still missing or wrong.
    fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.heartbeats == 0 {
            problems.push("no heartbeat".to_string());
        }
        match self.telemetry.as_slice() {
            [t] => {
                let m: Vec<Measurement> = t.readings.iter().map(|r| r.measurement).collect();
                let plausible = matches!(m.as_slice(), [
                    Measurement::Temperature { celsius },
                    Measurement::Humidity { percent },
                    Measurement::BatteryPercent { percent: 87 },
                ] if (21.5..22.0).contains(celsius) && *percent == 40.0);
                if !plausible {
                    problems.push(format!("telemetry is not the simulated sensors: {m:?}"));
                }
            }
            other => problems.push(format!("expected one telemetry batch, got {}", other.len())),
        }
        let acks_for = |id| {
            self.acks
                .iter()
                .filter(|a| a.command_id == id)
                .collect::<Vec<_>>()
        };
        match acks_for(BLINK).as_slice() {
            [a] if a.outcome == AckOutcome::Accepted => {}
            other => problems.push(format!("blink: expected one Accepted ack, got {other:?}")),
        }
        match acks_for(READ_TEMPERATURE).as_slice() {
            [
                CommandAck {
                    outcome: AckOutcome::Completed(bytes),
                    ..
                },
            ] => {
                let hundredths = <[u8; 4]>::try_from(bytes.as_slice()).map(i32::from_le_bytes);
                if !matches!(hundredths, Ok(2_150..=2_200)) {
                    problems.push(format!("temperature read returned {bytes:?}"));
                }
            }
            other => problems.push(format!("read: expected one Completed ack, got {other:?}")),
        }
        if self.foreign != 0 {
            problems.push(format!("{} unexpected messages", self.foreign));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

fn command(id: u32, kind: CommandKind) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(codec::encode_to_vec(&Command::new(
        id,
        0,
        Command::NEVER_EXPIRES,
        kind,
    ))?)
}

fn start_emulator(firmware: &str) -> Result<(Child, EmulatorPort), Box<dyn std::error::Error>> {
    let mut child = Process::new("qemu-system-riscv32")
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
    let mut commands_sent = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("firmware stopped with {status}; saw {seen:?}").into());
        }
        if started.elapsed() > TIMEOUT {
            child.kill()?;
            let missing = seen.verdict().err().unwrap_or_default();
            return Err(format!("no verdict within {TIMEOUT:?}: {missing}").into());
        }
        block_on(gateway.poll(now(), |env| {
            if env.device != expected {
                seen.foreign += 1;
                return;
            }
            match env.kind {
                MessageKind::Heartbeat => seen.heartbeats += 1,
                MessageKind::Telemetry => match codec::decode(env.payload) {
                    Ok(t) => seen.telemetry.push(t),
                    Err(_) => seen.foreign += 1,
                },
                MessageKind::CommandAck => match codec::decode(env.payload) {
                    Ok(ack) => seen.acks.push(ack),
                    Err(_) => seen.foreign += 1,
                },
                _ => seen.foreign += 1,
            }
        }))?;
        if !commands_sent && seen.heartbeats > 0 {
            let blink = command(
                BLINK,
                CommandKind::BlinkLed {
                    times: 3,
                    period_ms: 200,
                },
            )?;
            let read = command(READ_TEMPERATURE, CommandKind::ReadSensor { sensor: 0 })?;
            for payload in [blink, read] {
                gateway.enqueue(
                    MessageKind::Command,
                    QoS::ExactlyOnce,
                    Priority::High,
                    &payload,
                    now(),
                )?;
            }
            commands_sent = true;
        }
        // Done once everything arrived and our commands are acknowledged; wait a little
        // longer for late duplicates, which would fail the verdict.
        if commands_sent && gateway.outbox().is_empty() && seen.verdict().is_ok() {
            let settle = Instant::now();
            while settle.elapsed() < Duration::from_millis(500) {
                block_on(gateway.poll(now(), |_| seen.foreign += 1))?;
                std::thread::sleep(Duration::from_millis(1));
            }
            child.kill()?;
            child.wait()?;
            seen.verdict()?;
            println!("QEMU scenario passed: {seen:?}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
