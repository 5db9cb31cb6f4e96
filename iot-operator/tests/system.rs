//! The main command end to end, shortened: broker, backend, API and devices running the
//! real agent over MQTT; every self-check of the run must pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::ExitCode;

use iot_operator::system::{RunArgs, run};

#[test]
fn the_main_command_passes_its_self_checks() {
    let info = std::env::temp_dir().join(format!("iot-operator-system-{}.txt", std::process::id()));
    let args = RunArgs {
        devices: 5,
        minutes: 0.4,
        listen: "127.0.0.1:0".parse().unwrap(),
        info_file: Some(info.clone()),
        db: None,
        ota_jitter_ms: 200,
        quiet_operator: false,
    };
    assert_eq!(run(&args), ExitCode::SUCCESS);
    let written = std::fs::read_to_string(&info).unwrap();
    let _ = std::fs::remove_file(&info);
    let addr: std::net::SocketAddr = written.lines().next().unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 8080);
    assert!(written.contains("acme iot_"));
}
