//! Users' tests can mock every trait of the crate with mockall (feature `mock`).
#![cfg(feature = "mock")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use embassy_futures::block_on;
use iot_core::{DeviceId, MessageKind, QoS};
use iot_transport::control::ControlError;
use iot_transport::control::cellular::{CellularControl, MockCellularControl, RegistrationStatus};
use iot_transport::control::lora::{DataRate, LoraControl, MockLoraControl};
use iot_transport::control::wifi::{MockWifiControl, WifiControl, WifiCredentials};
use iot_transport::link::{Link, LinkError, LinkInfo, Medium, MockLink};
use iot_transport::mockall::predicate::eq;
use iot_transport::outbox::{OverflowPolicy, Priority};
use iot_transport::qos::ReliableEndpoint;
use iot_transport::retry::BackoffPolicy;
use iot_transport::rng::MockRng;

#[test]
fn mock_link_drives_a_reliable_endpoint() {
    let mut link = MockLink::new();
    link.expect_info()
        .returning(|| LinkInfo::new(Medium::Wifi, 1472));
    link.expect_try_receive().returning(|_| Ok(None));
    // The first transmission fails, the retransmission succeeds.
    let mut seq = iot_transport::mockall::Sequence::new();
    link.expect_send()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(LinkError::Busy));
    link.expect_send()
        .times(1)
        .in_sequence(&mut seq)
        .withf(|d| !d.is_empty())
        .returning(|_| Ok(()));
    let mut rng = MockRng::new();
    rng.expect_next_u32().returning(|| 0);
    rng.expect_below_inclusive().returning(|max| max);
    let mut ep: ReliableEndpoint<_, _, 4, 64, 8> = ReliableEndpoint::new(
        link,
        DeviceId::new("d").unwrap(),
        OverflowPolicy::RejectNewest,
        BackoffPolicy::new(100, 100),
        rng,
    );
    ep.enqueue(
        MessageKind::Telemetry,
        QoS::AtLeastOnce,
        Priority::Normal,
        b"x",
        0,
    )
    .unwrap();
    block_on(ep.poll(0, |_| {})).unwrap();
    assert_eq!(ep.stats().send_errors, 1);
    block_on(ep.poll(100, |_| {})).unwrap();
    assert_eq!(ep.stats().transmissions, 1);
}

#[test]
fn medium_control_mocks() {
    let mut wifi = MockWifiControl::new();
    wifi.expect_join()
        .withf(|c| c.ssid == "lab")
        .returning(|_| Ok(()));
    wifi.expect_rssi().return_const(Some(-50i16));
    block_on(wifi.join(&WifiCredentials::wpa2("lab", "pw"))).unwrap();
    assert_eq!(wifi.rssi(), Some(-50));

    let mut lora = MockLoraControl::new();
    lora.expect_set_data_rate()
        .with(eq(DataRate::DR3))
        .returning(|_| Ok(()));
    lora.expect_data_rate().return_const(DataRate::DR3);
    lora.expect_max_payload().return_const(115usize);
    lora.expect_send_confirmed()
        .returning(|_, _| Err(ControlError::DutyCycle { wait_ms: 5 }));
    lora.set_data_rate(DataRate::DR3).unwrap();
    assert_eq!(lora.max_payload(), 115);
    assert_eq!(
        block_on(lora.send_confirmed(1, b"x")),
        Err(ControlError::DutyCycle { wait_ms: 5 })
    );

    let mut modem = MockCellularControl::new();
    modem
        .expect_attach()
        .withf(|apn| apn == "iot")
        .returning(|_| Ok(()));
    modem
        .expect_registration()
        .return_const(RegistrationStatus::Roaming);
    block_on(modem.attach("iot")).unwrap();
    assert!(modem.registration().is_registered());
}

#[test]
fn mock_link_receive() {
    let mut link = MockLink::new();
    link.expect_receive().returning(|buf| {
        buf[..2].copy_from_slice(b"ok");
        Ok(2)
    });
    let mut buf = [0u8; 4];
    assert_eq!(block_on(link.receive(&mut buf)), Ok(2));
    assert_eq!(&buf[..2], b"ok");
}
