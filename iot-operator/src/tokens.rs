//! Tenant-scoped API tokens.
//!
//! A token is 32 bytes from the operating system's CSPRNG, shown once as `iot_` and 64 hex
//! digits. The store keeps only its SHA-256, so a leaked store (or a log of it) does not
//! hand out access. Each token maps to one [`Principal`]: a tenant, a scope inside it and
//! a role; every API call acts as that principal and nothing else.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::RwLock;

use iot_core::TenantId;
use iot_fleet::Principal;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// The prefix of every token, so a token in a config file or a log is recognisable.
pub const TOKEN_PREFIX: &str = "iot_";

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Issued tokens, by digest.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: RwLock<HashMap<[u8; 32], Principal>>,
}

impl TokenStore {
    /// An empty store: every request is refused until a token is issued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a new token for `principal` and returns it (the store keeps only its digest).
    pub fn issue(&self, principal: Principal) -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let mut token = String::with_capacity(68);
        token.push_str(TOKEN_PREFIX);
        for b in bytes {
            let _ = write!(token, "{b:02x}");
        }
        self.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(digest(&token), principal);
        token
    }

    /// The principal a presented token acts as, if it was issued and not revoked.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest(token))
            .cloned()
    }

    /// Revokes a token; returns whether it was known.
    pub fn revoke(&self, token: &str) -> bool {
        self.tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&digest(token))
            .is_some()
    }

    /// The tenants that hold at least one token.
    pub fn tenants(&self) -> BTreeSet<TenantId> {
        self.tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| p.tenant)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_fleet::{Role, Scope};

    #[test]
    fn tokens_are_distinct_and_resolve_to_their_principal_only() {
        let store = TokenStore::new();
        let acme = Principal::new(
            "a",
            TenantId::new("acme").unwrap(),
            Scope::root(),
            Role::Admin,
        );
        let globex = Principal::new(
            "g",
            TenantId::new("globex").unwrap(),
            Scope::root(),
            Role::Viewer,
        );
        let a = store.issue(acme.clone());
        let g = store.issue(globex.clone());
        assert_ne!(a, g);
        assert_eq!(a.len(), 68);
        assert_eq!(store.principal(&a), Some(acme));
        assert_eq!(store.principal(&g), Some(globex));
        assert_eq!(store.principal("iot_00"), None);
        assert_eq!(store.principal(&a[1..]), None);
        assert!(store.revoke(&a));
        assert_eq!(store.principal(&a), None);
        assert_eq!(store.tenants().len(), 1);
    }
}
