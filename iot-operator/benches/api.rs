//! API requests per second at 100,000 devices: device search (filters that scan the
//! tenant) and shadow reads, in process (the router alone) and over loopback HTTP (one
//! request per connection, as the CLI makes them).
//!
//! `cargo bench -p iot-operator --bench api` (`API_BENCH_DEVICES=N` changes the fleet size).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use iot_core::{NodeId, TenantId};
use iot_fleet::{DeviceServer, Fleet, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;
use iot_operator::client::Client;
use iot_operator::engine::call;
use iot_operator::seed::{fixture_id, seed_tenant};
use iot_operator::{AppState, LocalEngine, TokenStore, router};
use iot_shadow::Value;
use tower::ServiceExt;

const NOW: u64 = 1_000_000;

struct Setup {
    app: Router,
    addr: SocketAddr,
    token: String,
    devices: usize,
    runtime: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let devices: usize = std::env::var("API_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let started = Instant::now();
    let tenant = TenantId::new("acme").unwrap();
    let mut fleet = Fleet::default();
    seed_tenant(&mut fleet, tenant, 0, devices, 16, NOW).unwrap();
    let server = DeviceServer::with_os_rng(fleet, DeviceConfig::default(), NodeId(1));
    let engine = LocalEngine::new(server).with_clock(|| NOW + 1_000);
    let admin = Principal::new("bench", tenant, Scope::root(), Role::Admin);
    call(&engine, &[], |s| {
        for i in 0..devices {
            let id = fixture_id(0, i).unwrap();
            s.set_desired(&admin, &id, "led", Value::Bool(i % 2 == 0), NOW)
                .unwrap();
            s.set_desired(&admin, &id, "interval", Value::Int(30), NOW)
                .unwrap();
        }
    })
    .unwrap();
    engine.take_outbox();
    let tokens = Arc::new(TokenStore::new());
    let token = tokens.issue(admin);
    let app = router(AppState::new(Arc::new(engine), tokens));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    runtime.spawn(async move { axum::serve(listener, served).await });
    eprintln!(
        "seeded {devices} devices with shadows in {:.1?}",
        started.elapsed()
    );
    Setup {
        app,
        addr,
        token,
        devices,
        runtime,
    }
}

fn in_process(s: &Setup, uri: &str) {
    let req = Request::get(uri)
        .header("authorization", format!("Bearer {}", s.token))
        .body(Body::empty())
        .unwrap();
    let resp = s.runtime.block_on(s.app.clone().oneshot(req)).unwrap();
    assert!(resp.status().is_success(), "{uri}: {}", resp.status());
    black_box(resp);
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let client = Client::new(s.addr, Some(s.token.clone()));
    let searches = [
        (
            "search_low_battery_page",
            "/api/v1/devices?health=low_battery&limit=100".to_owned(),
        ),
        (
            "search_scope_state_page",
            "/api/v1/devices?scope=site-3&state=active&limit=50".to_owned(),
        ),
    ];
    let mut group = c.benchmark_group(format!("api_{}_devices", s.devices));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for (name, uri) in &searches {
        group.bench_function(format!("{name}/in_process"), |b| {
            b.iter(|| in_process(&s, uri))
        });
        group.bench_function(format!("{name}/http"), |b| {
            b.iter(|| assert_eq!(client.get(uri).unwrap().status, 200))
        });
    }
    let mut i = 0usize;
    group.bench_function("shadow_read/in_process", |b| {
        b.iter(|| {
            i = (i + 7_919) % s.devices;
            in_process(
                &s,
                &format!("/api/v1/devices/{}/shadow", fixture_id(0, i).unwrap()),
            );
        })
    });
    group.bench_function("shadow_read/http", |b| {
        b.iter(|| {
            i = (i + 7_919) % s.devices;
            let r = client
                .get(&format!(
                    "/api/v1/devices/{}/shadow",
                    fixture_id(0, i).unwrap()
                ))
                .unwrap();
            assert_eq!(r.status, 200);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
