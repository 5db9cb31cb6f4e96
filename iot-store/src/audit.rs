//! The audit trail's records, their fixed binary encoding and the SHA-256 hash chain.
//!
//! Each entry is hashed from a fixed binary encoding (never from `Debug` text, which may change
//! between compiler or crate versions):
//!
//! | field | bytes |
//! |---|---|
//! | encoding version, `1` | 1 |
//! | `seq` | 8, big-endian |
//! | `at_ms` | 8, big-endian |
//! | tenant id length, then its ASCII bytes | 1 + n |
//! | device id length (`0` = no device), then its ASCII bytes | 1 + n |
//! | `action` | 2, big-endian |
//! | payload length, then the payload | 4, big-endian + n |
//!
//! `hash = SHA-256(prev_hash ‖ encoding)`, and the first entry's `prev_hash` is 32 zero bytes.
//! Ids are at most 48 bytes and never empty, so the encoding is unambiguous.
//!
//! ```
//! use iot_core::id::TenantId;
//! use iot_store::audit::{chain_hash, AuditEvent, GENESIS};
//!
//! let event = AuditEvent {
//!     at_ms: 1_000,
//!     tenant: TenantId::new("acme")?,
//!     device: None,
//!     action: 7,
//!     payload: b"rollout started".to_vec(),
//! };
//! let first = chain_hash(&GENESIS, 1, &event);
//! // Any change to the entry or its predecessor changes the hash.
//! assert_ne!(first, chain_hash(&GENESIS, 2, &event));
//! # Ok::<(), iot_core::id::IdError>(())
//! ```

use iot_core::id::{DeviceId, TenantId};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// The largest audit payload in bytes.
pub const MAX_AUDIT_PAYLOAD: usize = 64 * 1024;

/// The version byte that opens every entry encoding.
pub const ENCODING_VERSION: u8 = 1;

/// The predecessor hash of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// An audit entry as the backend hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened, in milliseconds of the backend's clock.
    pub at_ms: u64,
    /// The tenant it concerns.
    pub tenant: TenantId,
    /// The device it concerns, if any.
    pub device: Option<DeviceId>,
    /// The backend's action code.
    pub action: u16,
    /// The backend's encoding of the details (actor, before / after, reason), at most
    /// [`MAX_AUDIT_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

/// A stored audit entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number, contiguous from 1.
    pub seq: u64,
    /// The entry.
    pub event: AuditEvent,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: [u8; 32],
    /// This entry's hash.
    pub hash: [u8; 32],
}

/// The newest entry of the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Its sequence number; 0 when the trail is empty.
    pub seq: u64,
    /// Its hash; [`GENESIS`] when the trail is empty.
    pub hash: [u8; 32],
}

impl AuditHead {
    /// The head of an empty trail.
    pub const EMPTY: Self = Self {
        seq: 0,
        hash: GENESIS,
    };
}

fn push_label(out: &mut Vec<u8>, label: &str) {
    // Ids are at most 48 bytes, so the length always fits one byte.
    out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(label.as_bytes());
}

/// Appends the fixed binary encoding of entry `seq` (see the module docs) to `out`.
pub fn encode_entry(seq: u64, event: &AuditEvent, out: &mut Vec<u8>) {
    out.push(ENCODING_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&event.at_ms.to_be_bytes());
    push_label(out, event.tenant.as_str());
    match &event.device {
        Some(device) => push_label(out, device.as_str()),
        None => out.push(0),
    }
    out.extend_from_slice(&event.action.to_be_bytes());
    // Payloads are at most 64 KiB (validated before any write).
    let len = u32::try_from(event.payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&event.payload);
}

/// The chain hash of entry `seq` whose predecessor's hash is `prev`.
#[must_use]
pub fn chain_hash(prev: &[u8; 32], seq: u64, event: &AuditEvent) -> [u8; 32] {
    let mut encoded = Vec::with_capacity(event.payload.len().saturating_add(128));
    encode_entry(seq, event, &mut encoded);
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(&encoded);
    hasher.finalize().into()
}

impl AuditRecord {
    /// Writes the record in the export format: a 4-byte big-endian length, the entry's fixed
    /// binary encoding, then `prev_hash` and `hash` (32 bytes each). A reader re-verifies the
    /// chain from the export alone.
    pub fn export(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut encoded = Vec::with_capacity(self.event.payload.len().saturating_add(128));
        encode_entry(self.seq, &self.event, &mut encoded);
        let len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
        out.write_all(&len.to_be_bytes())?;
        out.write_all(&encoded)?;
        out.write_all(&self.prev_hash)?;
        out.write_all(&self.hash)
    }
}

/// Checks records one at a time, in order, against the chain rules.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    last: AuditHead,
}

impl ChainVerifier {
    pub(crate) fn new() -> Self {
        Self {
            last: AuditHead::EMPTY,
        }
    }

    pub(crate) fn check(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        let broken = StoreError::AuditChainBroken { seq: record.seq };
        let expected_seq = self.last.seq.checked_add(1).ok_or(broken.clone())?;
        if record.seq != expected_seq
            || record.prev_hash != self.last.hash
            || chain_hash(&record.prev_hash, record.seq, &record.event) != record.hash
        {
            return Err(broken);
        }
        self.last = AuditHead {
            seq: record.seq,
            hash: record.hash,
        };
        Ok(())
    }

    pub(crate) fn finish(self, head: &AuditHead) -> Result<AuditHead, StoreError> {
        if *head == self.last {
            Ok(self.last)
        } else {
            // Entries missing at the end, or a head that names another hash.
            Err(StoreError::AuditChainBroken {
                seq: self.last.seq.max(head.seq),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &[u8]) -> AuditEvent {
        AuditEvent {
            at_ms: 42,
            tenant: TenantId::new("acme").unwrap(),
            device: Some(DeviceId::from_mac([0xAA, 0, 0, 0, 0, 1])),
            action: 3,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn encoding_is_fixed() {
        let mut out = Vec::new();
        encode_entry(1, &event(b"xy"), &mut out);
        let mut expected = vec![1];
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&42u64.to_be_bytes());
        expected.push(4);
        expected.extend_from_slice(b"acme");
        expected.push(12);
        expected.extend_from_slice(b"AA0000000001");
        expected.extend_from_slice(&3u16.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(b"xy");
        assert_eq!(out, expected);
    }

    #[test]
    fn verifier_catches_changed_payload_and_broken_links() {
        let first = AuditRecord {
            seq: 1,
            event: event(b"a"),
            prev_hash: GENESIS,
            hash: chain_hash(&GENESIS, 1, &event(b"a")),
        };
        let second = AuditRecord {
            seq: 2,
            event: event(b"b"),
            prev_hash: first.hash,
            hash: chain_hash(&first.hash, 2, &event(b"b")),
        };
        let mut ok = ChainVerifier::new();
        ok.check(&first).unwrap();
        ok.check(&second).unwrap();
        assert_eq!(
            ok.finish(&AuditHead {
                seq: 2,
                hash: second.hash
            }),
            Ok(AuditHead {
                seq: 2,
                hash: second.hash
            })
        );

        let mut tampered = second.clone();
        tampered.event.payload = b"c".to_vec();
        let mut v = ChainVerifier::new();
        v.check(&first).unwrap();
        assert_eq!(
            v.check(&tampered),
            Err(StoreError::AuditChainBroken { seq: 2 })
        );

        let mut skipped = ChainVerifier::new();
        assert_eq!(
            skipped.check(&second),
            Err(StoreError::AuditChainBroken { seq: 2 })
        );

        let mut truncated = ChainVerifier::new();
        truncated.check(&first).unwrap();
        assert!(
            truncated
                .finish(&AuditHead {
                    seq: 2,
                    hash: second.hash
                })
                .is_err()
        );
    }
}
