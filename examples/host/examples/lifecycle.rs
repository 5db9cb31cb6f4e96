//! Device lifecycle across a small fleet: zero-touch provisioning of Wi-Fi and LoRa sensors
//! with their power profiles and battery-lifetime estimates, two days of hourly health
//! monitoring (a draining battery degrades one device, another goes silent), maintenance
//! scheduling (battery replacements by predicted depletion, a firmware maintenance window),
//! the fleet health report, and decommissioning with credential revocation and an audit trail.
//!
//! Each device runs iot-lifecycle's state machine and health monitor; the backend
//! (iot-fleet) validates every reported transition with the same transition table.
//!
//! Run: `cargo run -p iot-examples --example lifecycle`

use iot_core::{DeviceId, TenantId};
use iot_examples::{Outcome, check, clock, section};
use iot_fleet::health::HealthPolicy;
use iot_fleet::proof::LifecycleHmac;
use iot_fleet::{
    AssignmentRule, Fleet, FleetError, ManufacturingRecord, Matcher, Principal, RegistrationError,
    Role, Scope,
};
use iot_lifecycle::health::{HealthMonitor, HealthSample, HealthThresholds};
use iot_lifecycle::registration::{
    ChallengeAnswer, DecommissionReason, DeviceSecret, Wipe, decommission, registration_proof,
};
use iot_lifecycle::state::{Event, Lifecycle, State};
use iot_planning::power::{
    Battery, DutyCycle, ESP32_C3_WIFI, LOW_POWER_LORA_NODE, PowerProfile, estimate_lifetime,
};

const HOUR: u64 = 3_600_000;

/// A product line: its power profile and what it does each period.
struct Sku {
    name: &'static str,
    profile: PowerProfile,
    battery: Battery,
    duty: DutyCycle,
}

/// One simulated device: its own state machine, health monitor, secret and battery.
struct Device {
    id: DeviceId,
    secret: DeviceSecret,
    lifecycle: Lifecycle<16>,
    health: HealthMonitor,
    battery: f32,
    drain_per_hour: f32,
    silent_from_hour: Option<u64>,
    logs: UserData,
}

impl Device {
    /// Applies a lifecycle event on the device and reports it to the backend, which checks
    /// it with the same transition table.
    fn report(&mut self, fleet: &mut Fleet, event: Event, now: u64) -> Outcome {
        let to = self.lifecycle.apply(event, now, &mut ())?;
        let validated = fleet.report_transition(&self.id, event, to, now)?;
        check(validated == to, "backend and device agree")?;
        println!("  {} -{event}-> {to}", self.id);
        Ok(())
    }
}

/// The device's user data (readings, calibration), wiped on decommissioning.
struct UserData(Vec<u8>);

impl Wipe for UserData {
    type Error = std::convert::Infallible;
    fn wipe(&mut self) -> Result<(), Self::Error> {
        self.0.fill(0);
        self.0.clear();
        Ok(())
    }
}

fn main() -> Outcome {
    let wifi = Sku {
        name: "TH-1",
        profile: ESP32_C3_WIFI,
        battery: Battery::new(3_000, 85, 3_600)?,
        // Every 30 s: 150 ms sensing, 350 ms Wi-Fi connect-and-send.
        duty: DutyCycle::new(30_000, 150, 350)?,
    };
    let lora = Sku {
        name: "LR-1",
        profile: LOW_POWER_LORA_NODE,
        battery: Battery::new(2_600, 85, 3_600)?,
        // Every 5 min: 100 ms sensing, 1.5 s of SF12 airtime and receive windows.
        duty: DutyCycle::new(300_000, 100, 1_500)?,
    };

    section("power profiles");
    for sku in [&wifi, &lora] {
        let normal = estimate_lifetime(&sku.profile, &sku.battery, &sku.duty)?;
        // Degraded mode: telemetry three times slower.
        let period = sku.duty.period_ms() * 3;
        let slow = DutyCycle::new(period, sku.duty.active_ms(), sku.duty.radio_ms())?;
        let degraded = estimate_lifetime(&sku.profile, &sku.battery, &slow)?;
        println!(
            "{}: {} uA average, battery lasts {} days ({} days in degraded mode)",
            sku.name,
            normal.average_na / 1_000,
            normal.days(),
            degraded.days()
        );
        check(
            degraded.duration > normal.duration,
            "degraded mode saves energy",
        )?;
    }

    section("provisioning");
    let acme = TenantId::new("acme")?;
    let admin = Principal::new("ops", acme, Scope::root(), Role::Admin);
    // Hourly heartbeats in this simulation: offline after three missed ones.
    let policy = HealthPolicy {
        heartbeat_timeout_ms: 3 * HOUR,
        ..HealthPolicy::DEFAULT
    };
    let mut fleet = Fleet::with_verifier(policy, LifecycleHmac);
    // (name, sku, battery %, drain % per hour, silent from hour)
    let plan = [
        ("th-1", &wifi, 95.0, 0.1, None),
        ("th-2", &wifi, 90.0, 1.5, None),
        ("th-3", &wifi, 90.0, 2.0, None),
        ("th-4", &wifi, 95.0, 0.1, None),
        ("lr-1", &lora, 98.0, 0.02, None),
        ("lr-2", &lora, 98.0, 0.02, Some(30)),
    ];
    let mut records = Vec::new();
    let mut devices = Vec::new();
    for (serial, (name, sku, battery, drain, silent)) in (1u64..).zip(plan) {
        let id = DeviceId::new(name)?;
        let secret = [serial as u8; 32];
        records.push(ManufacturingRecord {
            device_id: id,
            secret,
            sku: sku.name.into(),
            serial,
        });
        devices.push(Device {
            id,
            secret: DeviceSecret::from_bytes(secret),
            lifecycle: Lifecycle::new(),
            health: HealthMonitor::new(HealthThresholds::DEFAULT),
            battery,
            drain_per_hour: drain,
            silent_from_hour: silent,
            logs: UserData(b"calibration and readings".to_vec()),
        });
    }
    fleet.import_manufacturing(&admin, &Scope::root(), records, 0)?;
    for (sku, scope) in [("TH-1", "plant/hall-a"), ("LR-1", "plant/yard")] {
        let rule = AssignmentRule {
            matcher: Matcher::Sku(sku.into()),
            scope: scope.parse()?,
        };
        fleet.add_assignment_rule(&admin, rule, 0)?;
    }
    for (i, device) in devices.iter_mut().enumerate() {
        let now = 1_000 * i as u64;
        device
            .lifecycle
            .apply(Event::RegistrationInitiated, now, &mut ())?;
        let nonce = [i as u8 + 1; 16]; // a real backend draws it from its CSPRNG
        fleet.challenge(&device.id, 0, nonce, now)?;
        let proof = registration_proof(&device.secret, &device.id, &nonce)?;
        let reg = fleet.register(&device.id, 0, &ChallengeAnswer { nonce, proof }, now + 100)?;
        println!(
            "{} registered into {} ({})",
            device.id,
            reg.scope.as_str(),
            reg.state
        );
        device.report(&mut fleet, Event::ConfigComplete, now + 200)?;
    }

    section("health monitoring (48 hours)");
    for hour in 1..=48u64 {
        let now = hour * HOUR;
        for device in devices.iter_mut() {
            if device.silent_from_hour.is_some_and(|h| hour >= h) {
                continue;
            }
            device.battery = (device.battery - device.drain_per_hour).max(0.0);
            let percent = device.battery.round() as u8;
            let millivolts = 3_300 + 9 * u16::from(percent);
            let sample = HealthSample::new(now).with_battery(percent, millivolts);
            let report = device.health.check(&sample);
            if let Some(event) = device
                .health
                .lifecycle_event(device.lifecycle.state(), &report)
            {
                print!("hour {hour}: {:?} battery at {percent} % ->", report.status);
                device.report(&mut fleet, event, now)?;
                if event == Event::HealthCheckFailed {
                    // Degraded mode: telemetry three times slower, so a third of the drain.
                    device.drain_per_hour /= 3.0;
                }
            }
            fleet.heartbeat(&device.id, Some(device.battery), now)?;
        }
        for id in fleet.sweep(now) {
            println!("hour {hour}: {id} marked offline (no heartbeat for 3 hours)");
        }
    }
    let now = 48 * HOUR;

    section("maintenance scheduling");
    let week = 7 * 24 * HOUR;
    let replacements = fleet.battery_schedule(&admin, &Scope::root(), now, week)?;
    for r in &replacements {
        let due = match r.predicted_at_ms.checked_sub(now) {
            Some(ms) => format!("due in {} h", ms / HOUR),
            None => "overdue".to_string(),
        };
        println!(
            "replace battery of {} in {} (now {:.0} %): {due}",
            r.device,
            r.scope.as_str(),
            r.battery_percent
        );
    }
    let order: Vec<&str> = replacements.iter().map(|r| r.device.as_str()).collect();
    check(
        order == ["th-3", "th-2"],
        format!("battery replacements soonest first, got {order:?}"),
    )?;
    println!("firmware maintenance window for th-1:");
    devices[0].report(&mut fleet, Event::ScheduledUpdate, now)?;

    section("fleet health report");
    let plant: Scope = "plant".parse()?;
    let report = fleet.health_report(&admin, &plant, now)?;
    println!("{}: {}", report.scope.as_str(), report.counts);
    for (scope, counts) in &report.children {
        println!("  {}: {} devices: {counts}", scope.as_str(), counts.total);
    }
    for state in State::ALL {
        let n = report.counts.in_state(state);
        if n > 0 {
            println!("  {state}: {n}");
        }
    }
    let c = report.counts;
    check(
        (
            c.total,
            c.healthy,
            c.low_battery,
            c.degraded,
            c.maintenance,
            c.offline,
        ) == (6, 2, 1, 1, 1, 1),
        format!("dashboard counts, got {c:?}"),
    )?;

    section("decommissioning");
    let th3 = &mut devices[2];
    let audit = decommission(
        &mut th3.lifecycle,
        &mut (),
        &mut th3.secret,
        &mut th3.logs,
        th3.id,
        DecommissionReason::Unrecoverable,
        now + 1_000,
    )?;
    println!(
        "device side: {} {} -> {}, secret wiped: {}, user data left: {} bytes",
        audit.device,
        audit.from,
        th3.lifecycle.state(),
        th3.secret.is_wiped(),
        th3.logs.0.len()
    );
    let retired = fleet.decommission(&admin, &th3.id, now + 1_000)?;
    println!(
        "backend: identity revoked (was {}, forced: {})",
        retired.previous, retired.forced
    );
    let again = fleet.challenge(&th3.id, 0, [9; 16], now + 2_000);
    println!("th-3 tries to register again: {again:?}");
    check(
        again == Err(FleetError::from(RegistrationError::Revoked)),
        "a decommissioned identity is refused",
    )?;
    let trail: Vec<_> = fleet
        .audit_trail(&admin)
        .filter(|e| e.device == Some(th3.id))
        .collect();
    println!("audit trail of th-3 ({} entries):", trail.len());
    for entry in &trail {
        println!("  {:>9} {:?}", clock(entry.at_ms), entry.action);
    }
    check(
        trail.len() >= 4,
        "registration, transitions and decommissioning audited",
    )?;
    check(
        fleet
            .health_report(&admin, &Scope::root(), now)?
            .counts
            .total
            == 5,
        "five devices remain monitored",
    )?;
    Ok(())
}
