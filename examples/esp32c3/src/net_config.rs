//! The Wi-Fi firmware's network configuration, fixed at build time from environment
//! variables (see README.md). A value that cannot work (an SSID longer than 32 bytes, a
//! port that is not a number) fails the build; a missing one leaves the firmware waiting,
//! telling why on the console.

use core::hint::black_box;

use iot_mqtt::device_tls::DeviceIdentity;

/// `IOT_WIFI_SSID`: the network to join (station mode).
pub const WIFI_SSID: &str = or_empty(option_env!("IOT_WIFI_SSID"));
/// `IOT_WIFI_PASSWORD`: its WPA2 passphrase; empty for an open network.
pub const WIFI_PASSWORD: &str = or_empty(option_env!("IOT_WIFI_PASSWORD"));
/// `IOT_MQTT_HOST`: the broker's DNS name (resolved through the DHCP-given DNS server) or
/// IPv4 address.
pub const MQTT_HOST: &str = or_empty(option_env!("IOT_MQTT_HOST"));
/// `IOT_MQTT_PORT`: the broker's TLS port, 8883 unless given.
pub const MQTT_PORT: u16 = match option_env!("IOT_MQTT_PORT") {
    Some(port) => match parse_port(port) {
        Some(port) => port,
        None => panic!("IOT_MQTT_PORT must be a port number (1-65535)"),
    },
    None => 8883,
};
/// `IOT_MQTT_TLS_NAME`: the name the broker's certificate must carry (and the SNI sent),
/// `IOT_MQTT_HOST` unless given.
pub const MQTT_TLS_NAME: &str = match option_env!("IOT_MQTT_TLS_NAME") {
    Some(name) => name,
    None => MQTT_HOST,
};

const _: () = {
    assert!(
        WIFI_SSID.len() <= 32,
        "IOT_WIFI_SSID is longer than 32 bytes"
    );
    assert!(
        WIFI_PASSWORD.is_empty() || (WIFI_PASSWORD.len() >= 8 && WIFI_PASSWORD.len() <= 64),
        "IOT_WIFI_PASSWORD must be 8 to 64 bytes (or empty for an open network)"
    );
};

/// The TLS identity built in from the files named by `IOT_TLS_CA`, `IOT_TLS_CERT` and
/// `IOT_TLS_KEY` (DER; see `build.rs`); empty when they were not given.
pub mod tls {
    /// The fleet CA certificate that signed the broker's certificate (DER).
    pub static CA_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tls/ca.der"));
    /// This device's certificate (DER).
    pub static CERT_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tls/cert.der"));
    /// This device's P-256 private key (PKCS#8 DER).
    pub static KEY_DER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tls/key.der"));
}

/// What the build is missing to go online, if anything.
///
/// The values are read through [`black_box`]: in a build without them (CI's) the compiler
/// must not prove the online path dead and drop it, or that build's size would not be the
/// firmware's.
pub fn missing() -> Option<&'static str> {
    let given = |value: &[u8]| !black_box(value).is_empty();
    if !given(WIFI_SSID.as_bytes()) {
        Some("IOT_WIFI_SSID")
    } else if !given(MQTT_HOST.as_bytes()) {
        Some("IOT_MQTT_HOST")
    } else if !given(tls::CA_DER) {
        Some("IOT_TLS_CA")
    } else if !given(tls::CERT_DER) {
        Some("IOT_TLS_CERT")
    } else if !given(tls::KEY_DER) {
        Some("IOT_TLS_KEY")
    } else {
        None
    }
}

/// The built-in TLS identity, the broker named `IOT_MQTT_TLS_NAME` (read through
/// [`black_box`] for the reason given at [`missing`]).
pub fn tls_identity() -> DeviceIdentity<'static> {
    DeviceIdentity {
        ca_der: black_box(tls::CA_DER),
        cert_der: black_box(tls::CERT_DER),
        key_pkcs8_der: black_box(tls::KEY_DER),
        server_name: black_box(MQTT_TLS_NAME),
    }
}

const fn or_empty(value: Option<&'static str>) -> &'static str {
    match value {
        Some(v) => v,
        None => "",
    }
}

const fn parse_port(s: &str) -> Option<u16> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > 5 {
        return None;
    }
    let mut value: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digit = bytes[i];
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value * 10 + (digit - b'0') as u32;
        i += 1;
    }
    if value == 0 || value > u16::MAX as u32 {
        None
    } else {
        Some(value as u16)
    }
}
