//! The device MQTT session in a minimal `riscv32imc` binary, to measure what it costs in
//! flash (`.text`, `.rodata`) and static RAM (`.data`, `.bss`). `measure.sh` builds three
//! variants and reports the differences:
//!
//! * no feature: the baseline (runtime, an executor, envelope decoding from `iot-core`);
//! * `session`: the `iot-mqtt` device session (minimq) connecting, subscribing, sending a
//!   QoS 1 envelope and receiving one, with its buffers and state in `static` memory;
//! * `rust-mqtt`: rust-mqtt doing the same protocol steps, for comparison.
//!
//! The transport is a stand-in whose bytes come through `black_box`, so the optimiser keeps
//! every protocol path. Nothing here is meant to run.
#![no_std]
#![no_main]

use core::hint::black_box;

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use iot_core::message::EnvelopeRef;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// A byte stream whose contents the optimiser cannot know.
#[allow(dead_code)]
struct Opaque;

impl ErrorType for Opaque {
    type Error = ErrorKind;
}

impl Read for Opaque {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = black_box(buf.len());
        for b in buf.iter_mut() {
            *b = black_box(0);
        }
        Ok(n)
    }
}

impl Write for Opaque {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        Ok(black_box(buf).len())
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A TCP stack that hands out [`Opaque`] streams.
#[allow(dead_code)]
struct Stack;

impl embedded_nal_async::TcpConnect for Stack {
    type Error = ErrorKind;
    type Connection<'a> = Opaque;
    async fn connect<'a>(
        &'a self,
        _remote: core::net::SocketAddr,
    ) -> Result<Self::Connection<'a>, Self::Error> {
        black_box(Ok(Opaque))
    }
}

/// A time driver that never wakes anything: enough to link embassy-time.
struct NoTime;

impl embassy_time_driver::Driver for NoTime {
    fn now(&self) -> u64 {
        black_box(0)
    }
    fn schedule_wake(&self, _at: u64, _waker: &core::task::Waker) {}
}

embassy_time_driver::time_driver_impl!(static DRIVER: NoTime = NoTime);

const ENVELOPE: usize = 256;

#[cfg(feature = "session")]
mod session {
    use super::*;
    #[cfg(not(feature = "tls"))]
    use iot_mqtt::device::Tcp;
    use iot_mqtt::device::{DeviceConfig, DeviceSession};
    use iot_mqtt::minimq::Buffers;

    /// TLS record buffers: 16,640 bytes each take any record a broker may send.
    #[cfg(feature = "tls")]
    pub static mut TLS_READ: [u8; 16_640] = [0; 16_640];
    #[cfg(feature = "tls")]
    pub static mut TLS_WRITE: [u8; 4096] = [0; 4096];

    /// A random number generator the optimiser cannot see through (a firmware uses the
    /// chip's RNG).
    #[cfg(feature = "tls")]
    pub struct OpaqueRng;

    #[cfg(feature = "tls")]
    impl rand_core::RngCore for OpaqueRng {
        fn next_u32(&mut self) -> u32 {
            black_box(4)
        }
        fn next_u64(&mut self) -> u64 {
            black_box(4)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = black_box(4);
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[cfg(feature = "tls")]
    impl rand_core::CryptoRng for OpaqueRng {}

    pub static mut RX: [u8; 512] = [0; 512];
    pub static mut TX: [u8; 2048] = [0; 2048];
    /// The session's own state, in static memory too, so `.bss` counts it.
    pub static mut SESSION: core::mem::MaybeUninit<DeviceSession<'static, 4, ENVELOPE>> =
        core::mem::MaybeUninit::uninit();

    pub async fn run(out: &[u8]) -> usize {
        // Buffers and state in static memory, as a firmware keeps them (static_cell in embassy).
        let rx = unsafe { &mut *core::ptr::addr_of_mut!(RX) };
        let tx = unsafe { &mut *core::ptr::addr_of_mut!(TX) };
        let device = black_box(iot_core::id::DeviceId::from_mac([1, 2, 3, 4, 5, 6]));
        let config = DeviceConfig::new(black_box("127.0.0.1:1".parse().unwrap()), device);
        let Ok(session) = DeviceSession::<'static, 4, ENVELOPE>::new(config, Buffers::new(rx, tx))
        else {
            return 0;
        };
        let session = unsafe { (*core::ptr::addr_of_mut!(SESSION)).write(session) };
        let mut buf = [0u8; ENVELOPE];
        let mut total = 0;
        #[cfg(not(feature = "tls"))]
        let mut connector = Tcp(&Stack);
        #[cfg(feature = "tls")]
        let mut connector = {
            let read = unsafe { &mut *core::ptr::addr_of_mut!(TLS_READ) };
            let write = unsafe { &mut *core::ptr::addr_of_mut!(TLS_WRITE) };
            let identity = iot_mqtt::device_tls::DeviceIdentity {
                ca_der: black_box(&[0u8; 400][..]),
                cert_der: black_box(&[0u8; 400][..]),
                key_pkcs8_der: black_box(&[0u8; 138][..]),
                server_name: black_box("broker.example"),
            };
            let Ok(c) = iot_mqtt::device_tls::TlsTcp::new(&Stack, identity, OpaqueRng, read, write)
            else {
                return 0;
            };
            c
        };
        for _ in 0..black_box(3) {
            let Ok(mut link) = session.connect(&mut connector).await else {
                continue;
            };
            if link.send(out).await.is_ok() {
                total += 1;
            }
            if let Ok(n) = link.recv(&mut buf).await {
                total += n;
            }
        }
        total
    }
}

#[cfg(feature = "rust-mqtt")]
mod rust_mqtt_client {
    use super::*;
    use core::num::NonZero;
    use rust_mqtt::Bytes;
    use rust_mqtt::buffer::BumpBuffer;
    use rust_mqtt::client::Client;
    use rust_mqtt::client::event::Event;
    use rust_mqtt::client::options::{
        ConnectOptions, PublicationOptions, SubscriptionOptions, TopicReference,
    };
    use rust_mqtt::config::{KeepAlive, SessionExpiryInterval};
    use rust_mqtt::types::{MqttString, TopicFilter, TopicName};

    pub static mut BUF: [u8; 2048] = [0; 2048];
    pub static mut BUFFER: core::mem::MaybeUninit<BumpBuffer<'static>> =
        core::mem::MaybeUninit::uninit();
    type C = Client<'static, 'static, Opaque, BumpBuffer<'static>, 1, 4, 4, 1, 0, 0, 0>;
    /// The client's own state, in static memory too, so `.bss` counts it.
    pub static mut CLIENT: core::mem::MaybeUninit<C> = core::mem::MaybeUninit::uninit();

    pub async fn run(out: &[u8]) -> usize {
        let raw = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
        let buffer = unsafe { (*core::ptr::addr_of_mut!(BUFFER)).write(BumpBuffer::new(raw)) };
        let client = unsafe { (*core::ptr::addr_of_mut!(CLIENT)).write(C::new(buffer)) };
        let Some(keep) = NonZero::new(black_box(30)) else {
            return 0;
        };
        let Some(expiry) = NonZero::new(black_box(3600)) else {
            return 0;
        };
        let options = ConnectOptions::new()
            .session_expiry_interval(SessionExpiryInterval::Seconds(expiry))
            .keep_alive(KeepAlive::Seconds(keep));
        let Ok(id) = MqttString::try_from(black_box("240AC4123456")) else {
            return 0;
        };
        if client.connect(Opaque, &options, Some(id)).await.is_err() {
            return 0;
        }
        let Ok(down) = MqttString::try_from(black_box("iot/240AC4123456/down")) else {
            return 0;
        };
        let Ok(up) = MqttString::try_from(black_box("iot/240AC4123456/up")) else {
            return 0;
        };
        let Some(filter) = TopicFilter::new(down.as_borrowed()) else {
            return 0;
        };
        let Some(name) = TopicName::new(up.as_borrowed()) else {
            return 0;
        };
        let sub = SubscriptionOptions::new().at_least_once();
        if client.subscribe(filter.as_borrowed(), &sub).await.is_err() {
            return 0;
        }
        let publication =
            PublicationOptions::new(TopicReference::Name(name.as_borrowed())).at_least_once();
        let mut total = 0;
        if client.publish(&publication, Bytes::from(out)).await.is_ok() {
            total += 1;
        }
        for _ in 0..black_box(3) {
            match client.poll().await {
                Ok(Event::Publish(p)) => total += p.message.len(),
                Ok(_) => total += 1,
                Err(_) => break,
            }
        }
        total
    }
}

#[riscv_rt::entry]
fn main() -> ! {
    let mut frame = [0u8; ENVELOPE];
    for (i, b) in frame.iter_mut().enumerate() {
        *b = black_box(i as u8);
    }
    let mut total = 0usize;
    // The baseline's own work: decode an envelope, as every variant's application would.
    if let Ok(env) = EnvelopeRef::decode(black_box(&frame[..])) {
        total += env.payload.len();
    }
    #[cfg(feature = "session")]
    {
        total += embassy_futures::block_on(session::run(&frame));
    }
    #[cfg(feature = "rust-mqtt")]
    {
        total += embassy_futures::block_on(rust_mqtt_client::run(&frame));
    }
    black_box(total);
    loop {}
}
