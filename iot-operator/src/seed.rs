//! Builds fleets of registered devices directly through iot-fleet (no transport): the
//! tests' fixtures, the benchmark's 100,000 devices, and demo data.

use iot_core::{DeviceId, TenantId};
use iot_fleet::registry::ManufacturingRecord;
use iot_fleet::{Fleet, FleetError, Principal, Role, Scope, answer};
use iot_lifecycle::state::{Event, State};

/// One seeded device's factory secret: deterministic, for fixtures only.
pub fn fixture_secret(tenant_index: usize, device_index: usize) -> [u8; 32] {
    let mut secret = [0x5a; 32];
    for (slot, byte) in secret.iter_mut().zip(
        tenant_index
            .to_le_bytes()
            .into_iter()
            .chain(device_index.to_le_bytes()),
    ) {
        *slot = byte;
    }
    secret
}

/// The id of seeded device `device_index` of tenant `tenant_index`.
pub fn fixture_id(
    tenant_index: usize,
    device_index: usize,
) -> Result<DeviceId, iot_core::id::IdError> {
    DeviceId::new(&format!("t{tenant_index}-dev-{device_index:06}"))
}

/// Imports, registers and activates `count` devices for `tenant` (scopes `site-0` ..
/// `site-{sites-1}`), each with a heartbeat and a battery reading (every tenth device
/// below 20 %), at `now_ms`. Returns the ids.
pub fn seed_tenant(
    fleet: &mut Fleet,
    tenant: TenantId,
    tenant_index: usize,
    count: usize,
    sites: usize,
    now_ms: u64,
) -> Result<Vec<DeviceId>, FleetError> {
    let admin = Principal::new("seed", tenant, Scope::root(), Role::Admin);
    let sites = sites.max(1);
    let mut ids = Vec::with_capacity(count);
    for site in 0..sites {
        let scope: Scope = format!("site-{site}")
            .parse()
            .map_err(|_| FleetError::Access(iot_fleet::AccessError::Forbidden))?;
        let records: Vec<ManufacturingRecord> = (0..count)
            .filter(|i| i.checked_rem(sites) == Some(site))
            .filter_map(|i| {
                Some(ManufacturingRecord {
                    device_id: fixture_id(tenant_index, i).ok()?,
                    secret: fixture_secret(tenant_index, i),
                    sku: String::from("TH-1"),
                    serial: u64::try_from(i).unwrap_or(u64::MAX),
                })
            })
            .collect();
        if !records.is_empty() {
            fleet.import_manufacturing(&admin, &scope, records, now_ms)?;
        }
    }
    for i in 0..count {
        let Ok(id) = fixture_id(tenant_index, i) else {
            continue;
        };
        let session = u64::try_from(i).unwrap_or(u64::MAX);
        let nonce = [0x11; 16];
        let nonce = fleet.challenge(&id, session, nonce, now_ms)?;
        fleet.register(
            &id,
            session,
            &answer(&fixture_secret(tenant_index, i), &id, &nonce),
            now_ms,
        )?;
        fleet.report_transition(&id, Event::ConfigComplete, State::Active, now_ms)?;
        let battery = if i % 10 == 3 { 15.0 } else { 80.0 };
        fleet.heartbeat(&id, Some(battery), now_ms)?;
        ids.push(id);
    }
    Ok(ids)
}
