//! Metering: usage the devices report and availability, summed per scope, including
//! devices decommissioned there up to their decommissioning.

use iot_core::DeviceId;

use super::{Fleet, FleetError};
use crate::access::{Principal, Scope};
use crate::audit::AuditAction;
use crate::metering::{Availability, TenantMetering, Usage};
use crate::proof::ProofVerifier;
use crate::registry::{DeviceRecord, ReportError};

/// The availability of `record` at `now_ms`.
pub(super) fn availability_of(record: &DeviceRecord, now_ms: u64) -> Availability {
    let current_outage = if record.online {
        0
    } else {
        now_ms.saturating_sub(record.last_seen_ms)
    };
    Availability {
        monitored_ms: now_ms.saturating_sub(record.registered_at_ms),
        downtime_ms: record.downtime_ms.saturating_add(current_outage),
    }
}

impl<V: ProofVerifier> Fleet<V> {
    /// Meters `usage` (messages received, bytes stored) for the device. Audited as one
    /// `UsageRecorded` entry per call (none for an all-zero usage), so the ingest pipeline
    /// should pass aggregates (per device and billing interval), not single messages.
    pub fn record_usage(
        &mut self,
        id: &DeviceId,
        usage: Usage,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        self.touch(id, now_ms)?;
        if usage == Usage::default() {
            return Ok(());
        }
        let Some(record) = self.registry.device_mut(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        record.usage.add(usage);
        let (tenant, scope) = (record.tenant, record.scope.clone());
        self.audit_device(
            now_ms,
            *id,
            tenant,
            scope,
            AuditAction::UsageRecorded { usage },
        );
        Ok(())
    }

    /// Metering of `scope`: current devices, usage and availability, including devices
    /// decommissioned there up to their decommissioning.
    pub fn metering(
        &self,
        p: &Principal,
        scope: &Scope,
        now_ms: u64,
    ) -> Result<TenantMetering, FleetError> {
        let mut total = TenantMetering::default();
        for record in self.devices_in(p, scope)? {
            total.devices = total.devices.saturating_add(1);
            total.usage.add(record.usage);
            total.availability.add(availability_of(record, now_ms));
        }
        let retired = self
            .retired
            .range((p.tenant, Scope::root())..)
            .take_while(|((t, _), _)| *t == p.tenant)
            .filter(|((_, s), _)| scope.contains(s));
        for (_, m) in retired {
            total.usage.add(m.usage);
            total.availability.add(m.availability);
        }
        Ok(total)
    }
}
