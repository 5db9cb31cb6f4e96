//! Tenants, hierarchical scopes, roles and the access decision every fleet operation makes.
//!
//! A [`Scope`] is a path inside one tenant: the empty path (`/`) is the whole tenant
//! (headquarters), `eu` a region, `eu/berlin-7` a building. A scope *contains* every scope
//! below it, segment by segment (`eu` contains `eu/berlin-7` but not `europe`).
//!
//! A [`Principal`] is an authenticated caller: a tenant, a scope within it and a [`Role`].
//! [`Fleet`](crate::Fleet) checks both before touching data:
//!
//! * a device of another tenant, or of the same tenant outside the caller's scope, is
//!   reported as [`AccessError::NotFound`], exactly like an id that does not exist, so a
//!   caller cannot probe for devices it may not see;
//! * a device the caller may see but not change (role too low) is [`AccessError::Forbidden`];
//! * naming a scope outside the caller's own (for a report, an import or a move) is
//!   [`AccessError::Forbidden`]: scopes are names inside the caller's own tenant, so this
//!   reveals nothing about other tenants.
//!
//! ```
//! use iot_fleet::access::{Principal, Role, Scope};
//! use iot_core::TenantId;
//!
//! let region: Scope = "eu".parse()?;
//! let building: Scope = "eu/berlin-7".parse()?;
//! assert!(Scope::root().contains(&building));
//! assert!(region.contains(&building));
//! assert!(!building.contains(&region));
//! assert!(!region.contains(&"europe".parse()?));
//!
//! let manager = Principal::new("mia", TenantId::new("acme")?, building, Role::Operator);
//! assert!(manager.role.allows(Role::Viewer));
//! assert!(!manager.role.allows(Role::Admin));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

use iot_core::{Error, ErrorKind, TenantId};

/// The longest scope path accepted, in bytes.
pub const MAX_SCOPE_LEN: usize = 128;

/// Why a string is not a valid scope path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// Two slashes in a row, or a slash at the start or end of a non-root path.
    #[error("scope has an empty segment")]
    EmptySegment,
    /// A byte outside `A-Z a-z 0-9 - _ . :` (and the `/` separator).
    #[error("scope has an invalid character at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first invalid character.
        position: usize,
    },
    /// Longer than [`MAX_SCOPE_LEN`].
    #[error("scope is {len} bytes long, at most {MAX_SCOPE_LEN} are allowed")]
    TooLong {
        /// Length of the rejected input.
        len: usize,
    },
}

impl Error for ScopeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLong { .. } => ErrorKind::Capacity,
            Self::EmptySegment | Self::InvalidCharacter { .. } => ErrorKind::InvalidInput,
        }
    }
}

/// A path of segments inside one tenant; the empty path is the whole tenant.
///
/// Stored as one normalised string (`eu/berlin-7`, no leading or trailing slash) so that a
/// device record or an audit entry holds a single allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Scope(String);

impl Scope {
    /// The whole tenant (headquarters).
    pub const fn root() -> Self {
        Self(String::new())
    }

    /// Parses `a/b/c`; `""` and `"/"` are the root. Segments use `A-Z a-z 0-9 - _ . :`.
    pub fn parse(path: &str) -> Result<Self, ScopeError> {
        let trimmed = if path == "/" { "" } else { path };
        if trimmed.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong { len: trimmed.len() });
        }
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        let mut previous_was_slash = true;
        for (position, b) in trimmed.bytes().enumerate() {
            if b == b'/' {
                if previous_was_slash {
                    return Err(ScopeError::EmptySegment);
                }
                previous_was_slash = true;
            } else if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                previous_was_slash = false;
            } else {
                return Err(ScopeError::InvalidCharacter { position });
            }
        }
        if previous_was_slash {
            return Err(ScopeError::EmptySegment);
        }
        Ok(Self(String::from(trimmed)))
    }

    /// Whether this is the whole tenant.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path without leading slash (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, outermost first (none for the root).
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// How many segments the path has (0 for the root).
    pub fn depth(&self) -> usize {
        self.segments().count()
    }

    /// Whether `other` is this scope or lies below it, compared segment by segment.
    pub fn contains(&self, other: &Scope) -> bool {
        if self.is_root() {
            return true;
        }
        match other.0.strip_prefix(self.0.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The scope `self/segment`.
    pub fn child(&self, segment: &str) -> Result<Self, ScopeError> {
        if segment.is_empty() || segment.contains('/') {
            return Err(ScopeError::EmptySegment);
        }
        let mut path = self.0.clone();
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(segment);
        Self::parse(&path)
    }

    /// The scope one level below `self` on the way to `descendant`, if `descendant` lies
    /// strictly below `self`. Used to break a report down by region or building.
    pub fn next_step_towards(&self, descendant: &Scope) -> Option<Scope> {
        if !self.contains(descendant) || self == descendant {
            return None;
        }
        let depth = self.depth();
        let segment = descendant.segments().nth(depth)?;
        self.child(segment).ok()
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, ScopeError> {
        Self::parse(s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope(\"/{}\")", self.0)
    }
}

/// What a principal may do inside its scope. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Role {
    /// Reads devices, reports, rollouts and the audit trail.
    Viewer,
    /// Also changes devices: lifecycle requests, moves within scope, rollouts.
    Operator,
    /// Also imports manufacturing lists, sets assignment rules and decommissions devices.
    Admin,
}

impl Role {
    /// Whether this role includes `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// An authenticated caller of the fleet API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Principal {
    /// Who is acting (a user or service name), recorded in the audit trail.
    pub actor: String,
    /// The tenant whose data the caller may touch; no other.
    pub tenant: TenantId,
    /// The part of the tenant the caller may touch.
    pub scope: Scope,
    /// What the caller may do there.
    pub role: Role,
}

impl Principal {
    /// A principal named `actor`.
    pub fn new(actor: &str, tenant: TenantId, scope: Scope, role: Role) -> Self {
        Self {
            actor: String::from(actor),
            tenant,
            scope,
            role,
        }
    }

    /// Whether the caller may see something of `tenant` at `scope`.
    pub fn can_see(&self, tenant: &TenantId, scope: &Scope) -> bool {
        self.tenant == *tenant && self.scope.contains(scope)
    }

    /// The access decision for something of `tenant` at `scope` that needs `needed`:
    /// invisible -> `NotFound`, visible but role too low -> `Forbidden`.
    pub fn check(&self, tenant: &TenantId, scope: &Scope, needed: Role) -> Result<(), AccessError> {
        if !self.can_see(tenant, scope) {
            return Err(AccessError::NotFound);
        }
        if !self.role.allows(needed) {
            return Err(AccessError::Forbidden);
        }
        Ok(())
    }

    /// The access decision for naming `scope` (in the caller's own tenant) with `needed`.
    pub fn check_scope(&self, scope: &Scope, needed: Role) -> Result<(), AccessError> {
        if !self.scope.contains(scope) || !self.role.allows(needed) {
            return Err(AccessError::Forbidden);
        }
        Ok(())
    }
}

/// Why an operation was refused by access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No such entity visible to the caller (it may not exist, or belong to someone else).
    #[error("not found")]
    NotFound,
    /// The caller's role or scope does not allow the operation.
    #[error("forbidden")]
    Forbidden,
}

impl Error for AccessError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound => ErrorKind::NotFound,
            Self::Forbidden => ErrorKind::Unauthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &str) -> Scope {
        p.parse().unwrap()
    }

    #[test]
    fn parse_normalises_and_rejects() {
        assert_eq!(s("/"), Scope::root());
        assert_eq!(s(""), Scope::root());
        assert_eq!(s("eu/b1").as_str(), "eu/b1");
        assert_eq!(Scope::parse("eu//b1"), Err(ScopeError::EmptySegment));
        assert_eq!(Scope::parse("/eu"), Err(ScopeError::EmptySegment));
        assert_eq!(Scope::parse("eu/"), Err(ScopeError::EmptySegment));
        assert_eq!(
            Scope::parse("eu b"),
            Err(ScopeError::InvalidCharacter { position: 2 })
        );
        let long = "a".repeat(MAX_SCOPE_LEN + 1);
        assert_eq!(Scope::parse(&long).unwrap_err().kind(), ErrorKind::Capacity);
    }

    #[test]
    fn containment_is_by_segment() {
        assert!(s("eu").contains(&s("eu")));
        assert!(s("eu").contains(&s("eu/b1/floor2")));
        assert!(!s("eu").contains(&s("eu2")));
        assert!(!s("eu/b1").contains(&s("eu")));
        assert!(Scope::root().contains(&s("x")));
        assert!(!s("x").contains(&Scope::root()));
    }

    #[test]
    fn next_step_and_child() {
        assert_eq!(Scope::root().next_step_towards(&s("eu/b1")), Some(s("eu")));
        assert_eq!(s("eu").next_step_towards(&s("eu/b1/f2")), Some(s("eu/b1")));
        assert_eq!(s("eu").next_step_towards(&s("eu")), None);
        assert_eq!(s("eu").next_step_towards(&s("us/b1")), None);
        assert_eq!(Scope::root().child("eu").unwrap(), s("eu"));
        assert!(Scope::root().child("a/b").is_err());
        assert_eq!(alloc::format!("{}", s("eu/b1")), "/eu/b1");
        assert_eq!(s("eu/b1").depth(), 2);
    }

    #[test]
    fn access_decisions() {
        let acme = TenantId::new("acme").unwrap();
        let other = TenantId::new("other").unwrap();
        let viewer = Principal::new("v", acme, s("eu"), Role::Viewer);
        assert_eq!(viewer.check(&acme, &s("eu/b1"), Role::Viewer), Ok(()));
        assert_eq!(
            viewer.check(&acme, &s("eu/b1"), Role::Operator),
            Err(AccessError::Forbidden)
        );
        assert_eq!(
            viewer.check(&acme, &s("us/b1"), Role::Viewer),
            Err(AccessError::NotFound)
        );
        assert_eq!(
            viewer.check(&other, &s("eu/b1"), Role::Viewer),
            Err(AccessError::NotFound)
        );
        assert_eq!(
            viewer.check_scope(&s("us"), Role::Viewer),
            Err(AccessError::Forbidden)
        );
        assert_eq!(AccessError::Forbidden.kind(), ErrorKind::Unauthorized);
    }
}
