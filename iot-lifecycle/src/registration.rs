//! Registration proof and decommissioning.
//!
//! Each device holds a unique [`DeviceSecret`] provisioned at manufacture. To register, it
//! proves possession without revealing it: the backend sends a fresh [`Nonce`], the device
//! answers with HMAC-SHA256 over a domain tag, its id and the nonce
//! ([`registration_proof`]), and the backend, holding its copy of the secret, checks the
//! answer with [`verify_registration`] (constant-time). Both sides run this same code.
//!
//! [`decommission`] wipes the user data and the secret, moves the lifecycle to
//! `Decommissioned` by a legal transition and returns the final [`AuditRecord`].
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_lifecycle::registration::{registration_proof, verify_registration, DeviceSecret};
//!
//! let device = DeviceId::new("sensor-1")?;
//! let secret = DeviceSecret::from_bytes([7; 32]);
//! let nonce = [42u8; 16];
//! let proof = registration_proof(&secret, &device, &nonce)?;
//! assert!(verify_registration(&secret, &device, &nonce, &proof).is_ok());
//! assert!(verify_registration(&secret, &device, &[0; 16], &proof).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;

use hmac::{Hmac, Mac};
use iot_core::{DeviceId, Error, ErrorKind};
use minicbor::{CborLen, Decode, Encode};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::config::DeviceConfig;
use crate::state::{Event, Hooks, Lifecycle, State};
use crate::wire;

/// Length of a [`DeviceSecret`] in bytes.
pub const SECRET_LEN: usize = 32;
/// A backend's registration challenge.
pub type Nonce = [u8; 16];
/// An HMAC-SHA256 registration proof.
pub type Proof = [u8; 32];

/// Domain separation: a proof for registration is never valid for anything else.
const PROOF_DOMAIN: &[u8] = b"iot-lifecycle/registration/v1";

/// The device's unique secret. Zeroed when dropped or wiped (`zeroize()` is the same as
/// [`DeviceSecret::wipe`]); `Debug` never shows it; not `Clone`, so it is not copied around
/// by accident.
pub struct DeviceSecret {
    bytes: [u8; SECRET_LEN],
    wiped: bool,
}

impl DeviceSecret {
    /// A secret from its provisioned bytes.
    pub const fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self {
            bytes,
            wiped: false,
        }
    }

    /// Overwrites the secret with zeros; afterwards it proves nothing.
    pub fn wipe(&mut self) {
        self.bytes.zeroize();
        self.wiped = true;
    }

    /// Whether [`DeviceSecret::wipe`] ran.
    pub const fn is_wiped(&self) -> bool {
        self.wiped
    }

    fn mac(&self, device: &DeviceId, nonce: &Nonce) -> Result<Hmac<Sha256>, RegistrationError> {
        if self.wiped {
            return Err(RegistrationError::SecretWiped);
        }
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .map_err(|_| RegistrationError::SecretWiped)?;
        let id = device.as_str().as_bytes();
        mac.update(PROOF_DOMAIN);
        // Length-prefixed so that (id, nonce) pairs cannot collide by shifting bytes.
        mac.update(&[u8::try_from(id.len()).unwrap_or(u8::MAX)]);
        mac.update(id);
        mac.update(nonce);
        Ok(mac)
    }
}

impl Zeroize for DeviceSecret {
    fn zeroize(&mut self) {
        self.wipe();
    }
}

impl Drop for DeviceSecret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for DeviceSecret {}

impl fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSecret")
            .field("wiped", &self.wiped)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for DeviceSecret {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "DeviceSecret {{ wiped: {}, .. }}", self.wiped);
    }
}

/// Why a registration proof could not be made or was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RegistrationError {
    /// The secret was wiped (the device is decommissioned).
    #[error("device secret has been wiped")]
    SecretWiped,
    /// The proof does not match.
    #[error("registration proof does not match")]
    InvalidProof,
}

impl Error for RegistrationError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::SecretWiped => ErrorKind::InvalidState,
            Self::InvalidProof => ErrorKind::Unauthorized,
        }
    }
}

/// HMAC-SHA256 of the device id and the backend's nonce under the device secret.
pub fn registration_proof(
    secret: &DeviceSecret,
    device: &DeviceId,
    nonce: &Nonce,
) -> Result<Proof, RegistrationError> {
    Ok(secret.mac(device, nonce)?.finalize().into_bytes().into())
}

/// Checks a proof in constant time (the backend's side of [`registration_proof`]).
pub fn verify_registration(
    secret: &DeviceSecret,
    device: &DeviceId,
    nonce: &Nonce,
    proof: &Proof,
) -> Result<(), RegistrationError> {
    secret
        .mac(device, nonce)?
        .verify_slice(proof)
        .map_err(|_| RegistrationError::InvalidProof)
}

/// The answer to a challenge: which nonce was signed, and the proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct ChallengeAnswer {
    /// The backend's nonce.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub nonce: Nonce,
    /// HMAC-SHA256 proof over it.
    #[n(1)]
    #[cbor(with = "minicbor::bytes")]
    pub proof: Proof,
}

/// A device asks to register: the payload of `MessageKind::RegistrationRequest`.
///
/// The first request carries no answer; the backend replies with
/// [`RegistrationResponse::Challenge`], and the second request carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct RegistrationRequest {
    /// The device.
    #[n(0)]
    pub device: DeviceId,
    /// The firmware version it runs.
    #[n(1)]
    pub firmware_version: u32,
    /// The answer to the backend's challenge, once there is one.
    #[n(2)]
    pub answer: Option<ChallengeAnswer>,
}

impl RegistrationRequest {
    /// The answer to `nonce`, signed with `secret`.
    pub fn answering(
        device: DeviceId,
        firmware_version: u32,
        secret: &DeviceSecret,
        nonce: &Nonce,
    ) -> Result<Self, RegistrationError> {
        Ok(Self {
            device,
            firmware_version,
            answer: Some(ChallengeAnswer {
                nonce: *nonce,
                proof: registration_proof(secret, &device, nonce)?,
            }),
        })
    }
}

/// Why a backend refused a registration.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum RegistrationRejection {
    /// The device id is not known.
    #[n(0)]
    UnknownDevice,
    /// The proof did not verify.
    #[n(1)]
    InvalidProof,
    /// The nonce is not the one issued, or has been used.
    #[n(2)]
    StaleNonce,
    /// The device's credentials were revoked (decommissioned).
    #[n(3)]
    Revoked,
    /// The firmware version is not supported.
    #[n(4)]
    UnsupportedFirmware,
    /// The device speaks a protocol version the backend does not know.
    #[n(5)]
    UnsupportedProtocol,
    /// Another session of this identity holds an outstanding challenge; ask again once it
    /// has been answered or has expired.
    #[n(6)]
    ChallengePending,
    /// The device announced a shadow schema the backend has no field policies for.
    #[n(7)]
    UnknownSchema,
}

/// The backend's answer: the payload of `MessageKind::RegistrationResponse`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, CborLen)]
pub enum RegistrationResponse {
    /// Prove possession of the secret by signing this nonce.
    #[n(0)]
    Challenge(
        #[n(0)]
        #[cbor(with = "minicbor::bytes")]
        Nonce,
    ),
    /// Registered; the initial configuration.
    #[n(1)]
    Accepted(#[n(0)] DeviceConfig),
    /// Refused.
    #[n(2)]
    Rejected(#[n(0)] RegistrationRejection),
}

/// Hand-written instead of derived, with the derived decoder's behaviour (a 2-element array
/// of variant index and value, the variant's field in an array of any form, unknown fields
/// skipped, an unknown index an `UnknownVariant` error), sharing its loops with the other
/// hand-written decoders of this crate.
impl<'b, C> Decode<'b, C> for RegistrationResponse {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        let at = d.position();
        let (variant, variant_at) = wire::enum_header(d)?;
        if !(0..=2).contains(&variant) {
            return Err(minicbor::decode::Error::unknown_variant(variant).at(variant_at));
        }
        let (mut nonce, mut config, mut reason) = (None, None, None);
        wire::decode_array(d, &mut |i, d| {
            match (variant, i) {
                (0, 0) => nonce = Some(minicbor::bytes::decode(d, &mut ())?),
                (1, 0) => config = Some(DeviceConfig::decode(d, &mut ())?),
                (2, 0) => reason = Some(RegistrationRejection::decode(d, &mut ())?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        match variant {
            0 => Ok(Self::Challenge(wire::present(nonce, 0, at)?)),
            1 => Ok(Self::Accepted(wire::present(config, 0, at)?)),
            _ => Ok(Self::Rejected(wire::present(reason, 0, at)?)),
        }
    }
}

/// Why the device is being decommissioned.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum DecommissionReason {
    /// Planned retirement.
    #[n(0)]
    EndOfLife,
    /// The device failed beyond repair.
    #[n(1)]
    Unrecoverable,
    /// The device is suspected compromised.
    #[n(2)]
    Compromised,
    /// An operator asked for it.
    #[n(3)]
    OperatorRequest,
}

/// The last record a device emits: the payload of `MessageKind::Decommission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct AuditRecord {
    /// The device.
    #[n(0)]
    pub device: DeviceId,
    /// When it was decommissioned.
    #[n(1)]
    pub at_ms: u64,
    /// Why.
    #[n(2)]
    pub reason: DecommissionReason,
    /// The state it was decommissioned from.
    #[n(3)]
    pub from: State,
    /// The lifecycle event used (`EndOfLife` or `Unrecoverable`).
    #[n(4)]
    pub event: Event,
}

/// Storage that can erase itself (user data, logs, cached credentials).
pub trait Wipe {
    /// Why wiping failed.
    type Error;
    /// Erases everything; afterwards no user data can be read back.
    fn wipe(&mut self) -> Result<(), Self::Error>;
}

/// Why [`decommission`] refused or failed. In every case the lifecycle state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecommissionError<E> {
    /// Decommissioning is only legal from Active (`EndOfLife`) and Degraded
    /// (`Unrecoverable`); nothing was wiped.
    #[error("cannot decommission from state {0}")]
    NotAllowed(State),
    /// The user data could not be wiped; the secret is intact, so the operation can be
    /// retried.
    #[error("wiping user data failed")]
    Wipe(E),
}

impl<E: fmt::Debug> Error for DecommissionError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotAllowed(_) => ErrorKind::InvalidState,
            Self::Wipe(_) => ErrorKind::Storage,
        }
    }
}

/// Retires the device: wipes `user_data`, then the secret, moves `lifecycle` to
/// `Decommissioned` and returns the audit record to send.
///
/// Only the table's own edges are used: `Active -EndOfLife->` and `Degraded
/// -Unrecoverable->`. A device in `Maintenance` must first leave it (`ExitMaintenance`,
/// i.e. `UpdateComplete`, or `UpdateFailed`); a device still `Provisioning` or
/// `Unprovisioned` holds nothing but its factory secret and is returned to manufacturing
/// (`ProvisioningFailed`) rather than decommissioned. Those states are refused with
/// [`DecommissionError::NotAllowed`] before anything is wiped.
///
/// The order is chosen so a failure leaves a retryable device: user data first (fallible),
/// then the secret (infallible), then the transition (already checked, infallible).
pub fn decommission<const H: usize, K: Hooks + ?Sized, W: Wipe + ?Sized>(
    lifecycle: &mut Lifecycle<H>,
    hooks: &mut K,
    secret: &mut DeviceSecret,
    user_data: &mut W,
    device: DeviceId,
    reason: DecommissionReason,
    at_ms: u64,
) -> Result<AuditRecord, DecommissionError<W::Error>> {
    let from = lifecycle.state();
    let event = match from {
        State::Active => Event::EndOfLife,
        State::Degraded => Event::Unrecoverable,
        other => return Err(DecommissionError::NotAllowed(other)),
    };
    if !lifecycle.can_apply(event) {
        return Err(DecommissionError::NotAllowed(from));
    }
    user_data.wipe().map_err(DecommissionError::Wipe)?;
    secret.wipe();
    lifecycle
        .apply(event, at_ms, hooks)
        .map_err(|_| DecommissionError::NotAllowed(from))?;
    Ok(AuditRecord {
        device,
        at_ms,
        reason,
        from,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::codec::{decode, encode_into, encoded_len};

    fn dev() -> DeviceId {
        DeviceId::new("dev-7").unwrap()
    }

    fn hex(bytes: &[u8]) -> heapless::String<64> {
        let mut out = heapless::String::new();
        for b in bytes {
            core::fmt::write(&mut out, format_args!("{b:02x}")).unwrap();
        }
        out
    }

    #[test]
    fn proof_matches_an_independent_hmac_sha256() {
        // Computed outside this crate (Python's hmac module) over
        // "iot-lifecycle/registration/v1" || 0x05 || "dev-7" || 16 x 0x01, key 32 x 0x0b.
        let secret = DeviceSecret::from_bytes([0x0b; 32]);
        let proof = registration_proof(&secret, &dev(), &[1u8; 16]).unwrap();
        assert_eq!(
            hex(&proof).as_str(),
            "61169a48ebba2dc939b890d9478317c9096eb0168b1e3b6ca3c624c0584245aa"
        );
    }

    #[test]
    fn proofs_bind_secret_device_and_nonce() {
        let a = DeviceSecret::from_bytes([1; 32]);
        let b = DeviceSecret::from_bytes([2; 32]);
        let nonce = [9u8; 16];
        let proof = registration_proof(&a, &dev(), &nonce).unwrap();
        assert_eq!(verify_registration(&a, &dev(), &nonce, &proof), Ok(()));
        assert_eq!(
            verify_registration(&b, &dev(), &nonce, &proof),
            Err(RegistrationError::InvalidProof)
        );
        let other = DeviceId::new("dev-8").unwrap();
        assert_eq!(
            verify_registration(&a, &other, &nonce, &proof),
            Err(RegistrationError::InvalidProof)
        );
        let mut flipped = proof;
        flipped[31] ^= 1;
        assert_eq!(
            verify_registration(&a, &dev(), &nonce, &flipped),
            Err(RegistrationError::InvalidProof)
        );
    }

    #[test]
    fn zeroize_is_a_wipe() {
        let mut s = DeviceSecret::from_bytes([9; 32]);
        s.zeroize();
        assert!(s.is_wiped());
        assert_eq!(s.bytes, [0; 32]);
        assert_eq!(
            registration_proof(&s, &dev(), &[0; 16]),
            Err(RegistrationError::SecretWiped)
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = DeviceSecret::from_bytes([0xAB; 32]);
        let text = std::format!("{s:?}");
        assert!(
            !text.contains("171") && !text.to_lowercase().contains("ab,"),
            "{text}"
        );
        assert!(text.contains("DeviceSecret"));
    }

    #[test]
    fn wire_forms_round_trip() {
        let secret = DeviceSecret::from_bytes([3; 32]);
        let req = RegistrationRequest::answering(dev(), 0x0001_0203, &secret, &[5; 16]).unwrap();
        let hello = RegistrationRequest {
            answer: None,
            ..req
        };
        let mut buf = [0u8; 192];
        for r in [req, hello] {
            let n = encode_into(&r, &mut buf).unwrap();
            assert_eq!(n, encoded_len(&r));
            assert_eq!(decode::<RegistrationRequest>(&buf[..n]), Ok(r));
        }
        for resp in [
            RegistrationResponse::Challenge([8; 16]),
            RegistrationResponse::Accepted(DeviceConfig {
                version: 1,
                ..DeviceConfig::DEFAULT
            }),
            RegistrationResponse::Rejected(RegistrationRejection::Revoked),
        ] {
            let n = encode_into(&resp, &mut buf).unwrap();
            assert_eq!(n, encoded_len(&resp));
            assert_eq!(decode::<RegistrationResponse>(&buf[..n]), Ok(resp));
        }
        let audit = AuditRecord {
            device: dev(),
            at_ms: 5,
            reason: DecommissionReason::Compromised,
            from: State::Degraded,
            event: Event::Unrecoverable,
        };
        let n = encode_into(&audit, &mut buf).unwrap();
        assert_eq!(decode::<AuditRecord>(&buf[..n]), Ok(audit));
    }

    struct Store {
        data: [u8; 8],
        fail: bool,
    }
    impl Wipe for Store {
        type Error = ();
        fn wipe(&mut self) -> Result<(), ()> {
            if self.fail {
                return Err(());
            }
            self.data.zeroize();
            Ok(())
        }
    }

    #[test]
    fn decommission_wipes_secret_and_data_and_is_final() {
        let mut lc: Lifecycle<4> = Lifecycle::resume(State::Active);
        let mut secret = DeviceSecret::from_bytes([0x5A; 32]);
        let mut store = Store {
            data: [0xEE; 8],
            fail: false,
        };
        let audit = decommission(
            &mut lc,
            &mut (),
            &mut secret,
            &mut store,
            dev(),
            DecommissionReason::EndOfLife,
            99,
        )
        .unwrap();
        assert_eq!(
            audit,
            AuditRecord {
                device: dev(),
                at_ms: 99,
                reason: DecommissionReason::EndOfLife,
                from: State::Active,
                event: Event::EndOfLife
            }
        );
        assert_eq!(lc.state(), State::Decommissioned);
        assert_eq!(store.data, [0; 8]);
        assert!(secret.is_wiped());
        assert_eq!(secret.bytes, [0; 32]);
        assert_eq!(
            registration_proof(&secret, &dev(), &[0; 16]),
            Err(RegistrationError::SecretWiped)
        );
        // Again: refused, the device stays decommissioned.
        assert_eq!(
            decommission(
                &mut lc,
                &mut (),
                &mut secret,
                &mut store,
                dev(),
                DecommissionReason::EndOfLife,
                100
            ),
            Err(DecommissionError::NotAllowed(State::Decommissioned))
        );
        for e in Event::ALL {
            assert!(lc.apply(e, 101, &mut ()).is_err());
        }
    }

    #[test]
    fn decommission_from_degraded_uses_unrecoverable() {
        let mut lc: Lifecycle<4> = Lifecycle::resume(State::Degraded);
        let mut secret = DeviceSecret::from_bytes([1; 32]);
        let mut store = Store {
            data: [1; 8],
            fail: false,
        };
        let audit = decommission(
            &mut lc,
            &mut (),
            &mut secret,
            &mut store,
            dev(),
            DecommissionReason::Unrecoverable,
            1,
        )
        .unwrap();
        assert_eq!(audit.event, Event::Unrecoverable);
        assert_eq!(lc.last_transition().unwrap().event, Event::Unrecoverable);
    }

    #[test]
    fn refused_states_and_failed_wipes_change_nothing() {
        for state in [
            State::Unprovisioned,
            State::Provisioning,
            State::Maintenance,
        ] {
            let mut lc: Lifecycle<4> = Lifecycle::resume(state);
            let mut secret = DeviceSecret::from_bytes([1; 32]);
            let mut store = Store {
                data: [1; 8],
                fail: false,
            };
            assert_eq!(
                decommission(
                    &mut lc,
                    &mut (),
                    &mut secret,
                    &mut store,
                    dev(),
                    DecommissionReason::OperatorRequest,
                    1
                ),
                Err(DecommissionError::NotAllowed(state))
            );
            assert_eq!(
                (lc.state(), store.data, secret.is_wiped()),
                (state, [1; 8], false)
            );
        }
        let mut lc: Lifecycle<4> = Lifecycle::resume(State::Active);
        let mut secret = DeviceSecret::from_bytes([1; 32]);
        let mut store = Store {
            data: [1; 8],
            fail: true,
        };
        let err = decommission(
            &mut lc,
            &mut (),
            &mut secret,
            &mut store,
            dev(),
            DecommissionReason::EndOfLife,
            1,
        )
        .unwrap_err();
        assert_eq!(err, DecommissionError::Wipe(()));
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert_eq!(lc.state(), State::Active);
        assert!(!secret.is_wiped());
        // Retry once storage works.
        store.fail = false;
        assert!(
            decommission(
                &mut lc,
                &mut (),
                &mut secret,
                &mut store,
                dev(),
                DecommissionReason::EndOfLife,
                2
            )
            .is_ok()
        );
    }
}
