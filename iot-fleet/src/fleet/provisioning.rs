//! Provisioning and registration: manufacturing imports and zero-touch assignment rules on
//! the tenant side, the challenge-and-answer registration of a device on the device side.

use alloc::vec::Vec;

use iot_core::DeviceId;
use iot_lifecycle::DeviceConfig;
use iot_lifecycle::registration::{RegistrationRequest, RegistrationResponse};

use super::{Fleet, FleetError};
use crate::access::{Principal, Role, Scope};
use crate::audit::AuditAction;
use crate::proof::{ChallengeAnswer, Nonce, ProofVerifier};
use crate::registry::{AssignmentRule, ManufacturingRecord, Registration, RegistrationError};

impl<V: ProofVerifier> Fleet<V> {
    /// Imports a manufacturing list into `scope` (where devices no rule matches go).
    /// Needs `Admin` over `scope`. All or nothing.
    pub fn import_manufacturing(
        &mut self,
        p: &Principal,
        scope: &Scope,
        records: Vec<ManufacturingRecord>,
        now_ms: u64,
    ) -> Result<u32, FleetError> {
        p.check_scope(scope, Role::Admin)?;
        let count = self.registry.import(p.tenant, scope, records)?;
        self.audit_operator(
            now_ms,
            p,
            scope.clone(),
            None,
            AuditAction::ManufacturingImported { count },
        );
        Ok(count)
    }

    /// Adds a zero-touch assignment rule. Needs `Admin` over the rule's scope.
    pub fn add_assignment_rule(
        &mut self,
        p: &Principal,
        rule: AssignmentRule,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        p.check_scope(&rule.scope, Role::Admin)?;
        let scope = rule.scope.clone();
        self.registry.add_rule(p.tenant, rule);
        self.audit_operator(now_ms, p, scope, None, AuditAction::AssignmentRuleAdded);
        Ok(())
    }

    /// A device asks to register in transport session `session`: `nonce` (fresh, from the
    /// caller's CSPRNG) becomes its outstanding challenge, unless that session already holds
    /// one (then that nonce is returned again). Unknown and revoked identities are refused
    /// here already; so is a request while another session holds an unexpired challenge
    /// ([`RegistrationError::ChallengePending`], which changes nothing and is not audited:
    /// it decides nothing about the identity).
    pub fn challenge(
        &mut self,
        id: &DeviceId,
        session: u64,
        nonce: Nonce,
        now_ms: u64,
    ) -> Result<Nonce, FleetError> {
        match self.registry.challenge(id, session, nonce, now_ms) {
            Ok(nonce) => Ok(nonce),
            Err(RegistrationError::ChallengePending) => {
                Err(RegistrationError::ChallengePending.into())
            }
            Err(e) => Err(self.rejected(id, e, now_ms)),
        }
    }

    fn rejected(&mut self, id: &DeviceId, e: RegistrationError, now_ms: u64) -> FleetError {
        // Attempts on identities a tenant owns are security events for that tenant;
        // unknown ids belong to nobody and are not recorded.
        if let Some(tenant) = self.registry.identity_tenant(id) {
            let scope = self
                .registry
                .device(id)
                .map_or_else(Scope::root, |r| r.scope.clone());
            self.audit_device(
                now_ms,
                *id,
                tenant,
                scope,
                AuditAction::RegistrationRejected(e),
            );
        }
        e.into()
    }

    /// The device answers its challenge; a valid answer registers it (zero-touch: assigned
    /// by the tenant's rules, `Unprovisioned -> Provisioning`). A repeated registration of a
    /// registered device changes nothing but is accepted.
    pub fn register(
        &mut self,
        id: &DeviceId,
        session: u64,
        answer: &ChallengeAnswer,
        now_ms: u64,
    ) -> Result<Registration, FleetError> {
        match self
            .registry
            .register(id, session, answer, &self.verifier, now_ms)
        {
            Ok(reg) => {
                let action = if reg.first {
                    AuditAction::Registered
                } else {
                    AuditAction::ReRegistered
                };
                self.audit_device(now_ms, *id, reg.tenant, reg.scope.clone(), action);
                Ok(reg)
            }
            Err(e) => Err(self.rejected(id, e, now_ms)),
        }
    }

    /// iot-lifecycle's registration protocol, backend side, for a request that arrived in
    /// transport session `session`: a request without an answer is challenged with
    /// `fresh_nonce` (see [`Fleet::challenge`]); a request with one is registered and
    /// accepted with `config`, or rejected with the wire reason.
    pub fn handle_registration(
        &mut self,
        request: &RegistrationRequest,
        session: u64,
        fresh_nonce: Nonce,
        config: DeviceConfig,
        now_ms: u64,
    ) -> RegistrationResponse {
        let outcome = match &request.answer {
            None => self
                .challenge(&request.device, session, fresh_nonce, now_ms)
                .map(RegistrationResponse::Challenge),
            Some(answer) => self
                .register(&request.device, session, answer, now_ms)
                .map(|_| RegistrationResponse::Accepted(config)),
        };
        match outcome {
            Ok(response) => response,
            Err(FleetError::Registration(e)) => RegistrationResponse::Rejected(e.rejection()),
            // `challenge` and `register` only fail with registration errors.
            Err(_) => RegistrationResponse::Rejected(
                iot_lifecycle::registration::RegistrationRejection::InvalidProof,
            ),
        }
    }
}
