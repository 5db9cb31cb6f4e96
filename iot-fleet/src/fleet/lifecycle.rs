//! Lifecycle state on the backend: transitions the device reports and the ones operators
//! request, each validated with iot-lifecycle's transition table; illegal reports are
//! flagged, not applied.

use iot_core::DeviceId;
use iot_lifecycle::{Event, State, TransitionError, transition};

use super::{Fleet, FleetError};
use crate::access::{Principal, Role};
use crate::audit::AuditAction;
use crate::proof::ProofVerifier;
#[cfg(doc)]
use crate::registry::Registry;
use crate::registry::ReportError;

impl<V: ProofVerifier> Fleet<V> {
    /// The lifecycle state of a registered device, for answering the device itself.
    pub fn device_state(&self, id: &DeviceId) -> Option<State> {
        self.registry.device(id).map(|r| r.state)
    }

    /// The device reports a lifecycle transition (`event`, ending in `claimed`). It is
    /// validated with [`iot_lifecycle::transition`]; an illegal one is flagged on the
    /// record and in the audit trail, and not applied.
    pub fn report_transition(
        &mut self,
        id: &DeviceId,
        event: Event,
        claimed: State,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        self.touch(id, now_ms)?;
        let result = self.registry.apply_reported(id, event, claimed, now_ms);
        let Some(record) = self.registry.device(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        let (tenant, scope) = (record.tenant, record.scope.clone());
        let action = match &result {
            Ok((from, to)) if from == to => return Ok(*to),
            Ok((from, to)) => AuditAction::Transition {
                from: *from,
                event,
                to: *to,
            },
            Err(ReportError::IllegalTransition(error)) => AuditAction::IllegalTransitionFlagged {
                error: *error,
                claimed,
            },
            Err(ReportError::StateMismatch { from, .. }) => AuditAction::IllegalTransitionFlagged {
                error: TransitionError {
                    state: *from,
                    event,
                },
                claimed,
            },
            Err(e) => return Err((*e).into()),
        };
        self.audit_device(now_ms, *id, tenant, scope, action);
        result.map(|(_, to)| to).map_err(FleetError::from)
    }

    /// The device reports a transition record it made (`from -event-> to`), as the
    /// protocol's lifecycle report carries it ([`Registry::apply_report`] says what is
    /// applied). An applied report is audited as a `Transition`, preceded by
    /// `TransitionsMissed` when earlier reports were lost; an illegal one is flagged in the
    /// record and the audit trail and returned as an error; a redelivered copy changes
    /// nothing. Returns the state the backend now holds.
    pub fn report_device_transition(
        &mut self,
        id: &DeviceId,
        from: State,
        event: Event,
        to: State,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        self.touch(id, now_ms)?;
        let result = self.registry.apply_report(id, from, event, to, now_ms);
        let Some(record) = self.registry.device(id) else {
            return Err(ReportError::NotRegistered.into());
        };
        let (tenant, scope) = (record.tenant, record.scope.clone());
        match result {
            Ok((held, now)) if held == now => Ok(now),
            Ok((held, now)) => {
                if held != from {
                    self.audit_device(
                        now_ms,
                        *id,
                        tenant,
                        scope.clone(),
                        AuditAction::TransitionsMissed {
                            held,
                            reported_from: from,
                        },
                    );
                }
                self.audit_device(
                    now_ms,
                    *id,
                    tenant,
                    scope,
                    AuditAction::Transition {
                        from,
                        event,
                        to: now,
                    },
                );
                Ok(now)
            }
            Err(e) => {
                let error = match e {
                    ReportError::IllegalTransition(error) => error,
                    _ => TransitionError { state: from, event },
                };
                if e != ReportError::NotRegistered {
                    self.audit_device(
                        now_ms,
                        *id,
                        tenant,
                        scope,
                        AuditAction::IllegalTransitionFlagged { error, claimed: to },
                    );
                }
                Err(e.into())
            }
        }
    }

    /// An operator applies a lifecycle `event` to a device (for example `ManualIntervention`
    /// or `ScheduledUpdate`), validated like a device report. Needs `Operator`.
    pub fn request_transition(
        &mut self,
        p: &Principal,
        id: &DeviceId,
        event: Event,
        now_ms: u64,
    ) -> Result<State, FleetError> {
        let record = self.visible_device(p, id, Role::Operator)?;
        let from = record.state;
        let to = transition(from, event)?;
        let scope = record.scope.clone();
        if let Some(record) = self.registry.device_mut(id) {
            record.state = to;
        }
        if from != to {
            self.audit_operator(
                now_ms,
                p,
                scope,
                Some(*id),
                AuditAction::Transition { from, event, to },
            );
        }
        Ok(to)
    }
}
