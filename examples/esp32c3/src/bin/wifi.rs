//! The device lab on an ESP32-C3 over Wi-Fi: the same board and agent as the serial
//! firmware, talking MQTT 5 over TLS 1.3 (client certificate) to a broker.
//!
//! - Wi-Fi station mode (esp-radio), rejoined with exponential backoff when the access point
//!   drops it;
//! - DHCP and DNS (embassy-net);
//! - TLS 1.3 (embedded-tls) with the device's certificate and P-256 key, the broker checked
//!   against the fleet CA, random numbers from the hardware TRNG (entropy from the radio);
//! - the iot-mqtt device session: keepalive, reconnect with backoff, resubscription, QoS 1
//!   envelopes kept until the broker acknowledges them and republished after a reconnect,
//!   inbound deduplication;
//! - the lab's agent (`iot_device_app::Lab`) fed every envelope that arrives and polled at
//!   its deadlines.
//!
//! Configuration and credentials come from the build (see README.md, `net_config.rs` and
//! `build.rs`). The radio driver needs a heap (esp-alloc); the device crates do not use it.
#![no_std]
#![no_main]

use core::convert::Infallible;
use core::net::{IpAddr, SocketAddr};

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::Timer;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::Trng;
use esp_hal::timer::timg::TimerGroup;
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config, Interface, Password, Ssid, WifiController,
};
use iot_core::message::EnvelopeRef;
use iot_device_app::{Hardware, Lab, MESSAGE_CAPACITY};
use iot_esp32c3_lab::board::{FIRMWARE_VERSION, LabBoard, SECRET, device_id};
use iot_esp32c3_lab::net_config::{self, MQTT_HOST, MQTT_PORT};
use iot_esp32c3_lab::queue::EnvelopeQueue;
use iot_mqtt::device::{
    Backoff, DeviceConfig, DeviceError, DeviceSession, Duration, Flushed, Link,
};
use iot_mqtt::device_tls::TlsTcp;
use iot_mqtt::minimq::Buffers;
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

/// QoS 1 envelopes kept until the broker acknowledges them.
const SESSION_OUTBOX: usize = 4;
/// Messages the agent queued that the session has not taken yet.
const QUEUE: usize = 8;
/// The longest wait for a message before the agent is polled again.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Rejoining the access point: 1 s doubling up to 60 s.
const WIFI_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};
/// Bound on TCP connect plus TLS handshake, on `CONNACK` and on `SUBACK`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// TLS record buffers: a received record can be 16 KiB plus overhead; what the device
/// writes (its certificate, MQTT packets of at most one envelope) is far smaller.
const TLS_READ: usize = 16_640;
const TLS_WRITE: usize = 4_096;
/// minimq's buffers: one inbound packet (an envelope plus topic and header) and the
/// retained QoS 1 packets plus `CONNECT`.
const MQTT_RX: usize = 1_024;
const MQTT_TX: usize = 4_096;
/// TCP socket buffers.
const TCP_BUF: usize = 4_096;

type Session = DeviceSession<'static, SESSION_OUTBOX, MESSAGE_CAPACITY>;
type Queue = EnvelopeQueue<QUEUE, MESSAGE_CAPACITY>;

static NET_RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
static TCP_STATE: StaticCell<TcpClientState<1, TCP_BUF, TCP_BUF>> = StaticCell::new();
static TLS_BUFFERS: StaticCell<([u8; TLS_READ], [u8; TLS_WRITE])> = StaticCell::new();
static MQTT_BUFFERS: StaticCell<([u8; MQTT_RX], [u8; MQTT_TX])> = StaticCell::new();
static SESSION: StaticCell<Session> = StaticCell::new();
static LAB: StaticCell<Lab> = StaticCell::new();

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The radio driver's heap: the bootloader's RAM, free once the app runs, and some more.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64_000);
    esp_alloc::heap_allocator!(size: 32 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let (device, _) = device_id();
    println!("device {}", device);

    let mut board = match LabBoard::new(
        peripherals.I2C0,
        peripherals.GPIO6,
        peripherals.GPIO7,
        peripherals.ADC1,
        peripherals.GPIO3,
        peripherals.GPIO10,
    ) {
        Ok(board) => board,
        Err(e) => halt(format_args!("I2C configuration refused: {:?}", e)).await,
    };
    if let Some(var) = net_config::missing() {
        halt(format_args!(
            "{var} was not given at build time (see README.md)"
        ))
        .await;
    }

    let controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(controller) => controller,
        Err(e) => halt(format_args!("Wi-Fi could not start: {:?}", e)).await,
    };
    let Some(station) = Interface::try_station() else {
        halt(format_args!("the Wi-Fi station interface is taken")).await
    };
    // The radio feeds the TRNG while Wi-Fi runs.
    let trng = match Trng::try_new() {
        Ok(trng) => trng,
        Err(e) => halt(format_args!("no hardware entropy: {:?}", e)).await,
    };
    let seed = u64::from(trng.random()) << 32 | u64::from(trng.random());
    let (stack, runner) = embassy_net::new(
        station,
        embassy_net::Config::dhcpv4(Default::default()),
        NET_RESOURCES.init(StackResources::new()),
        seed,
    );
    match (wifi_task(controller), net_task(runner)) {
        (Ok(wifi), Ok(net)) => {
            spawner.spawn(wifi);
            spawner.spawn(net);
        }
        _ => halt(format_args!("the network tasks could not be spawned")).await,
    }

    let lab = match Lab::new(device, FIRMWARE_VERSION, SECRET) {
        Some(lab) => LAB.init(lab),
        None => halt(format_args!("the lab's default configuration was refused")).await,
    };
    // A new first message id at every boot: the backend drops ids it has seen.
    let mut queue = Queue::new(device, trng.random());
    if let Err(e) = lab.start(board.now_ms(), &mut queue) {
        println!("registration could not start: {:?}", e);
    }

    // The agent keeps its duties (health checks, LED blinks, telemetry into the queue) while
    // the device is offline.
    let broker = match select(
        resolve_broker(stack),
        run_offline(lab, &mut board, &mut queue),
    )
    .await
    {
        Either::First(broker) => broker,
        Either::Second(never) => match never {},
    };
    println!("broker {}", broker);
    let (mqtt_rx, mqtt_tx) = MQTT_BUFFERS.init(([0; MQTT_RX], [0; MQTT_TX]));
    let config = DeviceConfig {
        // The bound covers the TLS handshake too: three P-256 operations in software.
        connect_timeout: CONNECT_TIMEOUT,
        ..DeviceConfig::new(broker, device)
    };
    let session = match Session::new(config, Buffers::new(mqtt_rx, mqtt_tx)) {
        Ok(session) => SESSION.init(session),
        Err(e) => halt(format_args!("MQTT configuration refused: {}", e)).await,
    };
    let tcp = TcpClient::new(stack, TCP_STATE.init(TcpClientState::new()));
    let (tls_read, tls_write) = TLS_BUFFERS.init(([0; TLS_READ], [0; TLS_WRITE]));
    let identity = net_config::tls_identity();
    let mut connector = match TlsTcp::new(&tcp, identity, trng.clone(), tls_read, tls_write) {
        Ok(connector) => connector,
        Err(e) => halt(format_args!("IOT_TLS_KEY: {}", e)).await,
    };

    let mut buf = [0u8; MESSAGE_CAPACITY];
    loop {
        let connect = async {
            stack.wait_config_up().await;
            // Waits the session's backoff first when the previous attempt failed.
            session.connect(&mut connector).await
        };
        let attempt = match select(connect, run_offline(lab, &mut board, &mut queue)).await {
            Either::First(attempt) => attempt,
            Either::Second(never) => match never {},
        };
        match attempt {
            Ok(mut link) => {
                println!("connected to the broker");
                let end = serve(&mut link, lab, &mut board, &mut queue, &mut buf).await;
                println!("connection ended: {}", end);
            }
            Err(e) => println!("connecting failed: {}", e),
        }
    }
}

/// Runs the agent over one connection until it is lost.
async fn serve<IO>(
    link: &mut Link<'_, '_, IO, SESSION_OUTBOX, MESSAGE_CAPACITY, 16>,
    lab: &mut Lab,
    board: &mut LabBoard<'_>,
    queue: &mut Queue,
    buf: &mut [u8; MESSAGE_CAPACITY],
) -> DeviceError
where
    IO: embedded_io_async::Read + embedded_io_async::Write,
{
    loop {
        if let Err(e) = flush(link, queue).await {
            return e;
        }
        let next = lab.poll(board, queue);
        if let Err(e) = flush(link, queue).await {
            return e;
        }
        match link.recv_timeout(buf, until(next, board.now_ms())).await {
            Ok(None) => {}
            Ok(Some(n)) => match buf.get(..n).map(EnvelopeRef::decode) {
                Some(Ok(envelope)) => {
                    if let Err(e) = lab.handle(board, &envelope, queue) {
                        println!("message refused: {:?}", e);
                    }
                }
                _ => println!("undecodable envelope dropped"),
            },
            Err(e) => return e,
        }
    }
}

/// Runs the agent's duties while there is no connection; what it sends waits in the queue
/// (its oldest entries are kept, later ones refused, while it is full).
async fn run_offline(lab: &mut Lab, board: &mut LabBoard<'_>, queue: &mut Queue) -> Infallible {
    loop {
        let next = lab.poll(board, queue);
        Timer::after(until(next, board.now_ms())).await;
    }
}

/// How long to wait for the agent's next deadline `next`, at most [`MAX_WAIT`].
fn until(next: Option<u64>, now_ms: u64) -> Duration {
    next.map_or(MAX_WAIT, |at| {
        Duration::from_millis(at.saturating_sub(now_ms)).min(MAX_WAIT)
    })
}

/// Hands the session what the agent queued; an error means the connection is lost.
async fn flush<IO>(
    link: &mut Link<'_, '_, IO, SESSION_OUTBOX, MESSAGE_CAPACITY, 16>,
    queue: &mut Queue,
) -> Result<(), DeviceError>
where
    IO: embedded_io_async::Read + embedded_io_async::Write,
{
    let mut flushed = Flushed::default();
    let result = link.send_queued(queue, &mut flushed).await;
    if flushed.refused > 0 {
        println!("{} envelopes refused by the session", flushed.refused);
    }
    result
}

/// Resolves `IOT_MQTT_HOST` once the network is up, retrying with backoff.
async fn resolve_broker(stack: Stack<'static>) -> SocketAddr {
    let mut failures = 0u32;
    loop {
        stack.wait_config_up().await;
        match stack.dns_query(MQTT_HOST, DnsQueryType::A).await {
            Ok(addresses) => {
                if let Some(address) = addresses.first() {
                    return SocketAddr::new(IpAddr::from(*address), MQTT_PORT);
                }
                println!("{} has no IPv4 address", MQTT_HOST);
            }
            Err(e) => println!("resolving {} failed: {:?}", MQTT_HOST, e),
        }
        failures = failures.saturating_add(1);
        Timer::after(WIFI_BACKOFF.delay(failures)).await;
    }
}

/// Joins the access point and rejoins it, with backoff, whenever the connection drops.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    let (Ok(ssid), Ok(password)) = (
        Ssid::try_from(net_config::WIFI_SSID),
        Password::try_from(net_config::WIFI_PASSWORD),
    ) else {
        println!("IOT_WIFI_SSID or IOT_WIFI_PASSWORD refused by the driver");
        return;
    };
    let authentication = if net_config::WIFI_PASSWORD.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(password)
    };
    let config = StationConfig::default()
        .with_ssid(ssid)
        .with_authentication(authentication);
    if let Err(e) = controller.set_config(&Config::Station(config)) {
        println!("Wi-Fi configuration refused: {:?}", e);
        return;
    }
    let mut failures = 0u32;
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                println!("Wi-Fi connected");
                failures = 0;
                let lost = controller.wait_for_disconnect_async().await;
                println!("Wi-Fi lost: {:?}", lost.map(|info| info.reason));
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                println!("Wi-Fi join failed: {:?}", e);
            }
        }
        Timer::after(WIFI_BACKOFF.delay(failures)).await;
    }
}

/// Moves packets between the Wi-Fi driver and the IP stack.
#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

/// Reports why the firmware cannot go on and waits forever (no panic, no reset loop).
async fn halt(why: core::fmt::Arguments<'_>) -> ! {
    loop {
        println!("halted: {}", why);
        Timer::after(Duration::from_secs(10)).await;
    }
}
