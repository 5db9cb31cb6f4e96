//! The device path of the iot-* crates in one minimal `riscv32imc` firmware, to measure what
//! it costs: flash (`.text`, `.rodata`), static RAM (`.data`, `.bss`) and, run on QEMU
//! `virt`, the stack high-water mark (scripts/footprint.sh reads all three).
//!
//! What it instantiates and runs:
//! * the device agent (`iot_lifecycle::Agent` with `LabAgent`'s capacities but a payload
//!   buffer sized to the outbox slot: lifecycle, health monitor, command processor,
//!   configuration store, its own device shadow) through registration, ten
//!   minutes of simulated duty (health, heartbeat, telemetry, shadow sync), a maintenance
//!   command and its exit;
//! * a `DeviceShadow` of a 10-field typed state: local changes, the pending update encoded
//!   as canonical CBOR, the encoded bytes fed back to its decoder;
//! * an `Outbox` (store-and-forward) that every agent message enters as a CBOR envelope;
//!   each is framed (COBS + CRC-16), decoded back by the streaming frame decoder, its
//!   envelope decoded, and acknowledged by id, as a gateway would.
//!
//! Device state lives in `static` memory (`.bss`), as in a real firmware, so static RAM
//! counts it; inputs go through `black_box` so link-time optimisation keeps the work.
//!
//! Stack: before the workload, `main` paints the stack below itself with a pattern; after
//! it, the lowest overwritten word gives the high-water mark, printed as
//! `stack_high_water_bytes=N` on the UART, followed by `footprint: ok` and exit 0.
#![no_std]
#![no_main]

use core::hint::black_box;
use core::mem::MaybeUninit;
use core::ptr::{read_volatile, write_volatile};

use iot_agent::{Agent, AgentState, Board, Outbound, SensorSample};
use iot_core::codec::{decode, encode_into, encoded_len};
use iot_core::{DeviceId, EnvelopeRef, MessageId, MessageKind, QoS};
use iot_lifecycle::command::CommandHandler;
use iot_lifecycle::config::DeviceConfig;
use iot_lifecycle::registration::{DeviceSecret, registration_proof};
use iot_lifecycle::state::State;
use iot_shadow::iot_core::NodeId;
use iot_shadow::{DeviceShadow, Limits, Value, shadow_state};
use iot_transport::SplitMix64;
use iot_transport::framing::{FrameDecoder, encode_frame, max_encoded_len};
use iot_transport::outbox::{Outbox, OverflowPolicy, Priority};
use iot_transport::retry::BackoffPolicy;

const UART_THR: usize = 0x1000_0000;
const UART_LSR: usize = 0x1000_0005;
const EXIT_DEVICE: usize = 0x10_0000;
/// Bytes of stack painted below `main`'s frame (the measurement's ceiling).
const PAINT_BYTES: usize = 64 * 1024;
const PAINT: u32 = 0x5AA5_C33C;
/// Bytes of an outbox slot: one agent message in its CBOR envelope.
const MESSAGE: usize = 256;
/// Bytes of the largest agent payload whose envelope fills a slot exactly: the envelope of
/// this device (its id, `seq` and `id` at `u32::MAX`; every kind and QoS code is one byte)
/// adds 34 bytes. `run` checks that a payload of this size fits a slot and one byte more
/// does not, so the value is exact.
const PAYLOAD: usize = MESSAGE - 34;
/// Bytes of a frame: a slot's bytes with CRC, COBS and delimiter (nothing else is framed).
const FRAME: usize = max_encoded_len(MESSAGE);

// The backend's messages as they arrive from the link (canonical CBOR, as
// `iot_lifecycle`'s encoders write them; the wire format is fixed by its tests and by
// proto/iot.proto). The firmware holds them as bytes because a device only decodes these
// messages: encoding them here would count the backend's encoders in the device's flash.
// A wrong byte fails the workload (the agent refuses the message).

/// `RegistrationResponse::Challenge([42; 16])`.
const CHALLENGE: [u8; 20] = [
    0x82, 0x00, 0x81, 0x50, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42,
];
/// `RegistrationResponse::Accepted(DeviceConfig { version: 1, ..DeviceConfig::DEFAULT })`.
const ACCEPTED: [u8; 84] = [
    130, 1, 129, 168, 0, 1, 1, 25, 39, 16, 2, 25, 117, 48, 3, 25, 19, 136, 4, 25, 58, 152, 5, 250,
    63, 0, 0, 0, 6, 3, 7, 177, 0, 20, 1, 10, 2, 25, 13, 172, 3, 25, 12, 228, 4, 56, 79, 5, 56, 89,
    6, 3, 7, 10, 8, 10, 9, 250, 194, 32, 0, 0, 10, 250, 66, 170, 0, 0, 11, 25, 64, 0, 12, 25, 16,
    0, 13, 1, 14, 10, 15, 0, 16, 3,
];
/// `Command::new(1, 300_000, Command::NEVER_EXPIRES, CommandKind::EnterMaintenance)`.
const ENTER_MAINTENANCE: [u8; 23] = [
    164, 0, 1, 1, 26, 0, 4, 147, 224, 2, 27, 255, 255, 255, 255, 255, 255, 255, 255, 3, 130, 3, 128,
];
/// `Command::new(2, 300_000, Command::NEVER_EXPIRES, CommandKind::ExitMaintenance)`.
const EXIT_MAINTENANCE: [u8; 23] = [
    164, 0, 2, 1, 26, 0, 4, 147, 224, 2, 27, 255, 255, 255, 255, 255, 255, 255, 255, 3, 130, 4, 128,
];

/// The registration proof for secret `[7; 32]`, this device and challenge `[42; 16]`, as
/// `iot_lifecycle::registration_proof` computes it on the host (x86-64, sha2's default
/// implementation).
const EXPECTED_PROOF: [u8; 32] = [
    152, 143, 189, 184, 157, 52, 53, 2, 145, 127, 108, 171, 214, 35, 252, 127, 30, 87, 193, 18,
    200, 127, 150, 186, 170, 209, 73, 180, 138, 213, 140, 209,
];

shadow_state! {
    /// A 10-field device state, as a firmware declares it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Lab {
        /// Telemetry period.
        pub interval_s: u32 => INTERVAL, "telemetry.interval", CloudWins;
        /// Heartbeat period.
        pub heartbeat_s: u32 => HEARTBEAT, "heartbeat.interval", CloudWins;
        /// Status LED.
        pub led: bool => LED, "led", LastWriterWins;
        /// Temperature.
        pub temperature: f32 => TEMPERATURE, "temperature", DeviceWins;
        /// Humidity.
        pub humidity: f32 => HUMIDITY, "humidity", DeviceWins;
        /// Battery.
        pub battery: u8 => BATTERY, "battery", DeviceWins;
        /// Signal.
        pub rssi: i16 => RSSI, "rssi", DeviceWins;
        /// Uptime.
        pub uptime_s: u32 => UPTIME, "uptime", DeviceWins;
        /// Maintenance flag.
        pub maintenance: bool => MAINTENANCE, "maintenance", CloudWins;
        /// Sample rate.
        pub sample_hz: u16 => SAMPLE, "sensor.rate", LastWriterWins;
    }
}

/// Leaves: each of the 10 fields can hold a desired and a reported value, so 20 are enough.
type Shadow10 = DeviceShadow<Lab, 20>;
type DeviceOutbox = Outbox<8, MESSAGE>;
/// The lab agent (`LabAgent`'s history, command window and shadow capacities) with an
/// encode buffer of `PAYLOAD` bytes instead of `LabAgent`'s 512: on this device every payload
/// goes into an outbox slot of `MESSAGE` bytes, so a longer one could never be sent anyway
/// (the agent counts it in `AgentStats::encode_errors` instead of failing at the outbox).
type DeviceAgent = Agent<AgentState, 8, 16, 8, PAYLOAD>;

static mut AGENT: MaybeUninit<DeviceAgent> = MaybeUninit::uninit();
static mut SHADOW: MaybeUninit<Shadow10> = MaybeUninit::uninit();
static mut OUTBOX: MaybeUninit<DeviceOutbox> = MaybeUninit::uninit();
static mut DECODER: MaybeUninit<FrameDecoder<FRAME>> = MaybeUninit::uninit();
/// With `--features storage`: the agent's record store on a 2 KiB in-memory flash (two
/// 1 KiB pages of a `sequential-storage` map), to measure what persistence costs (BENCHMARKS.md).
#[cfg(feature = "storage")]
type Store =
    iot_agent::storage::FlashStorage<iot_lifecycle::mem_flash::MemFlash<2048, 1024, 4>, 256>;
#[cfg(feature = "storage")]
static mut STORE: MaybeUninit<Store> = MaybeUninit::uninit();

fn uart_write(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: the 16550 UART registers of QEMU virt, byte-wide volatile accesses.
        unsafe {
            while read_volatile(UART_LSR as *const u8) & (1 << 5) == 0 {}
            write_volatile(UART_THR as *mut u8, b);
        }
    }
}

fn uart_number(mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    uart_write(&digits[i..]);
}

fn exit(code: u32) -> ! {
    let value = if code == 0 {
        0x5555
    } else {
        (code << 16) | 0x3333
    };
    // SAFETY: the sifive_test device of QEMU virt; writing it ends the emulation.
    unsafe { write_volatile(EXIT_DEVICE as *mut u32, value) };
    loop {
        core::hint::spin_loop();
    }
}

fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads the stack pointer register, nothing else.
    unsafe { core::arch::asm!("mv {0}, sp", out(reg) sp) };
    sp
}

/// Paints `PAINT_BYTES` below the current frame (keeping a 256-byte margin).
#[inline(never)]
fn paint_stack(top: usize) -> usize {
    let bottom = top - PAINT_BYTES;
    let mut p = bottom;
    while p < top - 256 {
        // SAFETY: [bottom, top - 256) is unused stack below this frame (the stack is 1 MiB
        // minus the image; riscv-rt puts it at the top of RAM), aligned to 4 bytes.
        unsafe { write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
    bottom
}

/// Bytes of the painted region that were overwritten, measured from `top`.
fn high_water(bottom: usize, top: usize) -> usize {
    let mut p = bottom;
    // SAFETY: the same region `paint_stack` wrote.
    while p < top && unsafe { read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    top - p
}

/// Writes `value` into a static slot and lends it out for the rest of the program.
///
/// # Safety
/// Each slot is initialised once and the returned reference is the only one to it.
unsafe fn init<T>(slot: *mut MaybeUninit<T>, value: T) -> &'static mut T {
    // SAFETY: `slot` points to a static, so it is valid and aligned for ever; the caller
    // guarantees exclusivity.
    unsafe { (*slot).write(value) }
}

/// The simulated board: a thermometer that moves, a full battery.
struct VirtBoard {
    led: bool,
}

impl CommandHandler for VirtBoard {}

impl Board for VirtBoard {
    fn sample(&mut self, now_ms: u64) -> SensorSample {
        let step = (now_ms / 30_000 % 3) as f32;
        SensorSample {
            temperature_c: Some(black_box(21.0 + step)),
            humidity_percent: Some(black_box(40.0)),
            battery_percent: Some(black_box(87)),
            ..SensorSample::default()
        }
    }

    fn set_led(&mut self, on: bool) {
        self.led = on;
    }
}

/// The agent's messages become envelopes in the outbox.
struct Wire<'a> {
    device: DeviceId,
    outbox: &'a mut DeviceOutbox,
    next_id: u32,
}

impl Outbound for Wire<'_> {
    type Error = ();

    fn send(&mut self, kind: MessageKind, qos: QoS, payload: &[u8], now_ms: u64) -> Result<(), ()> {
        let id = MessageId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        let envelope = EnvelopeRef {
            device: self.device,
            seq: id.0,
            id,
            qos,
            kind,
            payload,
        };
        let mut buf = [0u8; MESSAGE];
        let n = encode_into(&envelope, &mut buf).map_err(|_| ())?;
        let bytes = buf.get(..n).ok_or(())?;
        self.outbox
            .push(id, Priority::Normal, qos, bytes, now_ms)
            .map(|_| ())
            .map_err(|_| ())
    }
}

/// Sends everything due: frame, "transmit" into the loopback decoder, decode the envelope,
/// acknowledge it. Returns how many were delivered.
fn drain(
    outbox: &mut DeviceOutbox,
    decoder: &mut FrameDecoder<FRAME>,
    rng: &mut SplitMix64,
    now_ms: u64,
) -> usize {
    let mut delivered = 0;
    while let Some((id, frame_len, frame)) = outbox.next_due(now_ms).map(|e| {
        let mut frame = [0u8; FRAME];
        let n = encode_frame(&e.data, &mut frame).unwrap_or(0);
        (e.id, n, frame)
    }) {
        if outbox.mark_sent(id, now_ms, rng).is_err() {
            break;
        }
        for &b in black_box(&frame[..frame_len]) {
            if let Ok(Some(body)) = decoder.push(b)
                && let Ok(env) = decode::<EnvelopeRef<'_>>(body)
                && outbox.ack(env.id)
            {
                delivered += 1;
            }
        }
    }
    delivered
}

fn inbound(kind: MessageKind, payload: &[u8]) -> EnvelopeRef<'_> {
    EnvelopeRef {
        device: DeviceId::from_mac([2, 0, 0, 0, 0, 1]),
        seq: 0,
        id: MessageId(1),
        qos: QoS::AtLeastOnce,
        kind,
        payload,
    }
}

/// The workload; returns an error code (0 = pass).
#[inline(never)]
fn run() -> u32 {
    let device = DeviceId::from_mac(black_box([0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56]));
    // `PAYLOAD` is the largest payload whose envelope fits an outbox slot.
    let envelope_len = |payload: &[u8]| {
        encoded_len(&EnvelopeRef {
            device,
            seq: u32::MAX,
            id: MessageId(u32::MAX),
            qos: QoS::AtLeastOnce,
            kind: MessageKind::ShadowUpdate,
            payload,
        })
    };
    let largest = [0u8; PAYLOAD + 1];
    if envelope_len(&largest[..PAYLOAD]) > MESSAGE || envelope_len(&largest) <= MESSAGE {
        return 15;
    }
    let secret = DeviceSecret::from_bytes(black_box([7; 32]));
    // sha2's compact round function (see Cargo.toml) must give the proof the host computes
    // with its default one for this secret, device and challenge.
    if registration_proof(&secret, &device, &[42; 16]) != Ok(EXPECTED_PROOF) {
        return 16;
    }
    // SAFETY: single-threaded firmware; each static is initialised once, here, before use,
    // and only this function holds references to them.
    let (agent, shadow, outbox, decoder) = unsafe {
        let Ok(a) = DeviceAgent::new(device, 1, secret, DeviceConfig::DEFAULT) else {
            return 1;
        };
        (
            init(&raw mut AGENT, a),
            init(
                &raw mut SHADOW,
                DeviceShadow::new(
                    Lab {
                        interval_s: 30,
                        heartbeat_s: 10,
                        led: false,
                        temperature: 21.5,
                        humidity: 40.0,
                        battery: 87,
                        rssi: -60,
                        uptime_s: 0,
                        maintenance: false,
                        sample_hz: 1,
                    },
                    NodeId(7),
                    Limits::DEFAULT,
                    60_000,
                ),
            ),
            init(
                &raw mut OUTBOX,
                Outbox::new(OverflowPolicy::DropOldest, BackoffPolicy::new(500, 8_000)),
            ),
            init(&raw mut DECODER, FrameDecoder::new()),
        )
    };
    let mut rng = SplitMix64::new(black_box(1));
    let mut board = VirtBoard { led: false };
    let mut wire = Wire {
        device,
        outbox,
        next_id: 1,
    };
    // Registration: challenge, proof, acceptance with the initial configuration.
    if agent.start(0, &mut wire).is_err() {
        return 2;
    }
    for (step, payload) in [(4, &CHALLENGE[..]), (6, &ACCEPTED[..])] {
        let payload = black_box(payload);
        if agent
            .handle(
                0,
                &inbound(MessageKind::RegistrationResponse, payload),
                &mut board,
                &mut wire,
            )
            .is_err()
        {
            return step;
        }
    }
    if agent.state() != State::Active || agent.config().current().version != 1 {
        return 5;
    }
    let mut delivered = drain(wire.outbox, decoder, &mut rng, 0);

    // Ten minutes of duty, waking only at deadlines; a maintenance command at 5 minutes.
    let mut now = 0;
    let mut maintenance = false;
    while now <= 600_000 {
        let Some(next) = agent.poll(now, &mut board, &mut wire) else {
            return 7;
        };
        delivered += drain(wire.outbox, decoder, &mut rng, now);
        if !maintenance && now >= 300_000 {
            maintenance = true;
            for (payload, state) in [
                (&ENTER_MAINTENANCE, State::Maintenance),
                (&EXIT_MAINTENANCE, State::Active),
            ] {
                let payload = black_box(&payload[..]);
                if agent
                    .handle(
                        now,
                        &inbound(MessageKind::Command, payload),
                        &mut board,
                        &mut wire,
                    )
                    .is_err()
                {
                    return 9;
                }
                if agent.state() != state {
                    return 8;
                }
            }
        }
        now = next;
    }

    // The 10-field shadow: report, change fields, encode the pending update, decode it.
    if shadow.report_state(black_box(1_000)).is_err() {
        return 10;
    }
    for (i, id) in [Lab::TEMPERATURE, Lab::UPTIME, Lab::LED, Lab::SAMPLE]
        .into_iter()
        .enumerate()
    {
        let value = match id {
            Lab::LED => Value::Bool(black_box(true)),
            Lab::TEMPERATURE => match Value::float(black_box(22.5)) {
                Ok(v) => v,
                Err(_) => return 11,
            },
            _ => Value::Int(black_box(i as i64 + 60)),
        };
        if shadow.set(id, value, 2_000).is_err() {
            return 11;
        }
    }
    let mut doc = [0u8; 512];
    let Ok(Some(n)) = shadow.encode_pending(Some("fp-1"), &mut doc) else {
        return 12;
    };
    // Feed the bytes back through the device's decoder (an update is not a notification the
    // device acts on; whatever it answers, it must not fail hard).
    let _ = black_box(shadow.handle_cbor::<20>(black_box(&doc[..n]), 3_000));

    #[cfg(feature = "storage")]
    {
        // Save the agent's record, then restore the agent from it, as after a reboot.
        let Ok(store) = Store::new(iot_lifecycle::mem_flash::MemFlash::new(), 0..2048) else {
            return 17;
        };
        // SAFETY: as above; initialised once, here.
        let store = unsafe { init(&raw mut STORE, store) };
        if agent.save(store) != Ok(true) {
            return 17;
        }
        if agent.restore(store, now, &mut board, &mut wire) != Ok(true)
            || agent.state() != State::Active
        {
            return 18;
        }
        delivered += drain(wire.outbox, decoder, &mut rng, now);
    }

    uart_write(b"delivered=");
    uart_number(delivered);
    uart_write(b"\n");
    // Nothing refused, nothing too long for the agent's buffer, nothing refused by the outbox.
    let stats = agent.stats();
    if delivered < 20 || stats.rejected != 0 || stats.encode_errors != 0 || stats.send_errors != 0 {
        return 14;
    }
    0
}

#[riscv_rt::entry]
fn main() -> ! {
    let top = stack_pointer();
    let bottom = paint_stack(top);
    let code = run();
    let used = high_water(bottom, top);
    uart_write(b"stack_high_water_bytes=");
    uart_number(used);
    uart_write(b"\n");
    if code == 0 {
        uart_write(b"footprint: ok\n");
    } else {
        uart_write(b"footprint: failed at step ");
        uart_number(code as usize);
        uart_write(b"\n");
    }
    exit(code)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    uart_write(b"footprint: panic\n");
    exit(99)
}
