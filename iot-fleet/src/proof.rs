//! Registration proofs: how a device shows it holds the secret from the manufacturing list.
//!
//! The backend issues a fresh 16-byte [`Nonce`] (a challenge); the device answers with
//! iot-lifecycle's [`registration_proof`]: HMAC-SHA256 under its 32-byte secret over a
//! domain tag, its id and the nonce. The backend checks it with the *same* code,
//! [`iot_lifecycle::registration::verify_registration`], through [`LifecycleHmac`], so the
//! device and the backend cannot disagree on the proof. Each challenge is single-use and
//! expires (see [`crate::registry::CHALLENGE_TTL_MS`]), so a recorded answer cannot be
//! replayed.
//!
//! [`ProofVerifier`] is the seam: another scheme (for example an asymmetric signature
//! over the same message) can replace [`LifecycleHmac`] without touching the registry.
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_fleet::proof::{registration_proof, DeviceSecret, LifecycleHmac, ProofVerifier};
//!
//! let id = DeviceId::new("sensor-1")?;
//! let secret = [7u8; 32];
//! let nonce = [42u8; 16];
//! let proof = registration_proof(&DeviceSecret::from_bytes(secret), &id, &nonce)?;
//! assert!(LifecycleHmac.verify(&secret, &id, &nonce, &proof));
//! assert!(!LifecycleHmac.verify(&secret, &id, &[0; 16], &proof));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use iot_core::DeviceId;
use iot_lifecycle::registration::verify_registration;
pub use iot_lifecycle::registration::{
    ChallengeAnswer, DeviceSecret, Nonce, Proof, SECRET_LEN, registration_proof,
};

/// Checks that a registration proof was made with a device's secret.
pub trait ProofVerifier {
    /// Whether `proof` was made by the holder of `secret` for `id` and `nonce`.
    /// Implementations must compare in constant time.
    fn verify(
        &self,
        secret: &[u8; SECRET_LEN],
        id: &DeviceId,
        nonce: &Nonce,
        proof: &Proof,
    ) -> bool;
}

/// iot-lifecycle's HMAC-SHA256 proof, checked with the device crate's own
/// `verify_registration` (constant-time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifecycleHmac;

impl ProofVerifier for LifecycleHmac {
    fn verify(
        &self,
        secret: &[u8; SECRET_LEN],
        id: &DeviceId,
        nonce: &Nonce,
        proof: &Proof,
    ) -> bool {
        // The temporary copy is zeroed when dropped (`DeviceSecret` is `ZeroizeOnDrop`).
        let secret = DeviceSecret::from_bytes(*secret);
        verify_registration(&secret, id, nonce, proof).is_ok()
    }
}

/// The answer a device holding `secret` gives to `nonce` (a convenience for simulators and
/// tests; a device uses [`iot_lifecycle::registration::RegistrationRequest::answering`]).
pub fn answer(secret: &[u8; SECRET_LEN], id: &DeviceId, nonce: &Nonce) -> ChallengeAnswer {
    let secret = DeviceSecret::from_bytes(*secret);
    ChallengeAnswer {
        nonce: *nonce,
        // A fresh secret is never wiped, so the proof is always made.
        proof: registration_proof(&secret, id, nonce).unwrap_or([0; 32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_binds_secret_id_and_nonce() {
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        let secret = [1u8; 32];
        let nonce = [9u8; 16];
        let ans = answer(&secret, &a, &nonce);
        assert_eq!(ans.nonce, nonce);
        assert!(LifecycleHmac.verify(&secret, &a, &nonce, &ans.proof));
        assert!(!LifecycleHmac.verify(&[2; 32], &a, &nonce, &ans.proof));
        assert!(!LifecycleHmac.verify(&secret, &b, &nonce, &ans.proof));
        assert!(!LifecycleHmac.verify(&secret, &a, &[8; 16], &ans.proof));
        let mut flipped = ans.proof;
        flipped[31] ^= 1;
        assert!(!LifecycleHmac.verify(&secret, &a, &nonce, &flipped));
    }

    #[test]
    fn device_and_backend_run_the_same_proof() {
        // The device side builds its request with iot-lifecycle; the backend accepts it.
        let id = DeviceId::new("dev-42").unwrap();
        let secret = [5u8; 32];
        let nonce = [3u8; 16];
        let request = iot_lifecycle::registration::RegistrationRequest::answering(
            id,
            1,
            &DeviceSecret::from_bytes(secret),
            &nonce,
        )
        .unwrap();
        let ans = request.answer.unwrap();
        assert!(LifecycleHmac.verify(&secret, &id, &ans.nonce, &ans.proof));
        assert_eq!(ans, answer(&secret, &id, &nonce));
    }
}
