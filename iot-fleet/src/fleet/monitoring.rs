//! Health monitoring: heartbeats and battery readings, the offline sweep, the per-scope
//! health report and the battery-replacement schedule.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use iot_core::{DeviceId, TenantId};

use super::{Fleet, FleetError};
use crate::access::{Principal, Scope};
use crate::audit::AuditAction;
use crate::health::{self, BatteryReplacement, HealthCounts, HealthReport};
use crate::proof::ProofVerifier;
use crate::registry::{ReadingTally, ReportError};

impl<V: ProofVerifier> Fleet<V> {
    pub(super) fn touch(&mut self, id: &DeviceId, now_ms: u64) -> Result<(), FleetError> {
        let slot = self
            .registry
            .slot_of(id)
            .ok_or(ReportError::NotRegistered)?;
        self.touch_at(slot, id, now_ms)
    }

    /// [`Fleet::touch`] of a device whose slot the caller already looked up.
    pub(super) fn touch_at(
        &mut self,
        slot: usize,
        id: &DeviceId,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        let record = self
            .registry
            .record_at_mut(slot)
            .ok_or(ReportError::NotRegistered)?;
        let came_back = !record.online;
        if came_back {
            let outage = now_ms.saturating_sub(record.last_seen_ms);
            record.downtime_ms = record.downtime_ms.saturating_add(outage);
            record.online = true;
        }
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        if came_back {
            let (tenant, scope) = (record.tenant, record.scope.clone());
            self.audit_device(now_ms, *id, tenant, scope, AuditAction::BackOnline);
        }
        Ok(())
    }

    /// A heartbeat, optionally with a battery reading in percent.
    pub fn heartbeat(
        &mut self,
        id: &DeviceId,
        battery_percent: Option<f32>,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        self.touch(id, now_ms)?;
        if let (Some(p), Some(record)) = (battery_percent, self.registry.device_mut(id)) {
            record.battery.record(now_ms, p);
        }
        Ok(())
    }

    /// The device's heartbeat said what its telemetry filters did since its boot (see
    /// [`ReadingTally`]); kept on its record, not audited.
    pub fn report_readings(&mut self, id: &DeviceId, tally: ReadingTally) {
        if let Some(record) = self.registry.device_mut(id) {
            record.readings = Some(tally);
        }
    }

    /// Marks every device not heard from within the heartbeat timeout as offline and
    /// returns the newly offline ones.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<DeviceId> {
        let timeout = self.policy.heartbeat_timeout_ms;
        let mut newly: Vec<(DeviceId, TenantId, Scope)> = Vec::new();
        for record in self.registry.all_devices_mut() {
            if record.online && now_ms.saturating_sub(record.last_seen_ms) > timeout {
                record.online = false;
                newly.push((record.id, record.tenant, record.scope.clone()));
            }
        }
        // Audited in (tenant, device id) order, whatever the storage order.
        newly.sort_unstable_by_key(|(id, tenant, _)| (*tenant, *id));
        let mut ids = Vec::with_capacity(newly.len());
        for (id, tenant, scope) in newly {
            self.audit_system(now_ms, tenant, scope, Some(id), AuditAction::MarkedOffline);
            ids.push(id);
        }
        ids
    }

    /// Device counts by health and lifecycle state in `scope`, broken down by the scopes
    /// one level below it.
    pub fn health_report(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
    ) -> Result<HealthReport, FleetError> {
        let mut counts = HealthCounts::default();
        let mut children: BTreeMap<Scope, HealthCounts> = BTreeMap::new();
        for record in self.devices_in(p, scope)? {
            let status = health::status_of(record, now_ms, &self.policy);
            counts.add(status, record.state);
            if let Some(child) = scope.next_step_towards(&record.scope) {
                children.entry(child).or_default().add(status, record.state);
            }
        }
        Ok(HealthReport {
            tenant: p.tenant,
            scope: scope.clone(),
            at_ms: now_ms,
            counts,
            children,
        })
    }

    /// Battery replacements in `scope` predicted within `horizon_ms` from now, soonest
    /// first (ties by device id).
    pub fn battery_schedule(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
        horizon_ms: u64,
    ) -> Result<Vec<BatteryReplacement>, FleetError> {
        let until = now_ms.saturating_add(horizon_ms);
        let level = self.policy.replace_at_percent;
        let mut plan: Vec<BatteryReplacement> = self
            .devices_in(p, scope)?
            .filter_map(|r| {
                let predicted_at_ms = r.battery.predict_time_at(level)?;
                let battery_percent = r.battery.latest()?;
                (predicted_at_ms <= until).then(|| BatteryReplacement {
                    device: r.id,
                    scope: r.scope.clone(),
                    predicted_at_ms,
                    battery_percent,
                })
            })
            .collect();
        plan.sort_by_key(|b| (b.predicted_at_ms, b.device));
        Ok(plan)
    }
}
