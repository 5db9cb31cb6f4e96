//! Field ownership: which side prevails when desired and reported disagree, and limits.
//!
//! A [`Resolver`] maps each path to a [`Policy`]. [`Policy`] itself is a resolver that applies
//! one policy to every field; [`FieldPolicies`] is a table with a default; a user type can
//! implement [`Resolver::resolve_custom`] for fields marked [`Policy::Custom`].

use core::cmp::Ordering;

use crate::path::Path;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::Leaf;
use crate::value::Value;

/// Which half of the shadow prevails for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Winner {
    /// The desired value prevails: the device adopts it.
    Desired,
    /// The reported value prevails: the pending desired value is cleared.
    Reported,
}

/// Per-field policies and the user's resolution for [`Policy::Custom`] fields.
pub trait Resolver {
    /// The policy of the field at `path`.
    fn policy(&self, path: &Path) -> Policy;

    /// Decides a [`Policy::Custom`] field. The default is last-writer-wins.
    fn resolve_custom(&self, path: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        let _ = path;
        by_precedence(desired, reported)
    }
}

impl Resolver for Policy {
    fn policy(&self, _path: &Path) -> Policy {
        *self
    }
}

impl<R: Resolver + ?Sized> Resolver for &R {
    fn policy(&self, path: &Path) -> Policy {
        (**self).policy(path)
    }
    fn resolve_custom(&self, path: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        (**self).resolve_custom(path, desired, reported)
    }
}

/// A static table of (path, policy) with a default for unlisted paths.
#[derive(Debug, Clone, Copy)]
pub struct FieldPolicies<'a> {
    /// Explicit policies by exact path.
    pub fields: &'a [(&'a str, Policy)],
    /// The policy of every other path.
    pub default: Policy,
}

impl Resolver for FieldPolicies<'_> {
    fn policy(&self, path: &Path) -> Policy {
        self.fields
            .iter()
            .find(|(p, _)| *p == path.as_str())
            .map_or(self.default, |(_, policy)| *policy)
    }
}

fn by_precedence(desired: &Leaf, reported: &Leaf) -> Winner {
    match reported.stamp.cmp_precedence(&desired.stamp) {
        Ordering::Greater => Winner::Reported,
        _ => Winner::Desired,
    }
}

/// Who prevails for `path` when both halves hold different non-null values.
pub fn resolve<R: Resolver + ?Sized>(
    resolver: &R,
    path: &Path,
    desired: &Leaf,
    reported: &Leaf,
) -> Winner {
    match resolver.policy(path) {
        Policy::CloudWins => Winner::Desired,
        Policy::DeviceWins => Winner::Reported,
        Policy::LastWriterWins => by_precedence(desired, reported),
        Policy::Custom => resolver.resolve_custom(path, desired, reported),
    }
}

/// The desired tombstone that settles a disagreement the reported side won, if any.
///
/// It carries the reported write's HLC, so every replica that reconciles the same two leaves
/// derives the same tombstone; it is only produced when it also wins a merge against the
/// desired leaf, so merging and reconciling never disagree.
pub(crate) fn settle<R: Resolver + ?Sized>(
    resolver: &R,
    path: &Path,
    desired: &Leaf,
    reported: &Leaf,
) -> Option<Leaf> {
    if desired.value.is_null() || reported.value.is_null() || desired.value == reported.value {
        return None;
    }
    if resolve(resolver, path, desired, reported) != Winner::Reported {
        return None;
    }
    let stamp = Stamp::new(reported.stamp.hlc(), reported.stamp.policy, Origin::Device);
    let wins = stamp.cmp_precedence(&desired.stamp) == Ordering::Greater
        && !stamp.same_instant(&desired.stamp);
    wins.then_some(Leaf {
        value: Value::Null,
        stamp,
    })
}

/// Bounds checked before anything mutates. Each violation has its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Limits {
    /// Maximum path depth (AWS: 6).
    pub max_depth: usize,
    /// Maximum key (path segment) length in bytes.
    pub max_key_len: usize,
    /// Maximum client-token length in bytes (at most 64).
    pub max_token_len: usize,
    /// Maximum number of stored leaves, tombstones included.
    pub max_fields: usize,
    /// Maximum canonical CBOR size of the document in bytes.
    pub max_encoded_len: usize,
    /// How long a client token is remembered for idempotent replays, in milliseconds.
    pub token_window_ms: u64,
    /// How far ahead of the receiver's clock a remote write may be stamped, in
    /// milliseconds; an update with a write beyond it is refused whole
    /// ([`ShadowError::ClockDrift`](crate::ShadowError::ClockDrift)), so a clock running
    /// ahead cannot make its writes win over every honest one. `u64::MAX`: unbounded.
    pub max_drift_ms: u64,
}

/// Hard maximum of a client token's length in bytes.
pub const CLIENT_TOKEN_CAPACITY: usize = 64;

impl Limits {
    /// AWS-like defaults: depth 6, keys of 32 bytes, tokens of 64 bytes, 128 leaves, 8 KiB,
    /// tokens remembered for 60 s, no drift bound (set one with [`Limits::with_max_drift`]).
    pub const DEFAULT: Self = Self {
        max_depth: 6,
        max_key_len: 32,
        max_token_len: CLIENT_TOKEN_CAPACITY,
        max_fields: 128,
        max_encoded_len: 8 * 1024,
        token_window_ms: 60_000,
        max_drift_ms: u64::MAX,
    };

    /// These limits, refusing writes stamped more than `max_drift_ms` ahead of the
    /// receiver's clock.
    #[must_use]
    pub const fn with_max_drift(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// The defaults.
    pub const fn new() -> Self {
        Self::DEFAULT
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::id::NodeId;
    use iot_core::time::HlcTimestamp;

    fn leaf(v: i64, time: u64, origin: Origin, policy: Policy) -> Leaf {
        Leaf {
            value: Value::Int(v),
            stamp: Stamp::new(
                HlcTimestamp {
                    time,
                    node: NodeId(u32::from(origin.code())),
                },
                policy,
                origin,
            ),
        }
    }

    #[test]
    fn each_policy_picks_its_owner() {
        let p = Path::new("interval").unwrap();
        for (policy, newer_device, expected) in [
            (Policy::CloudWins, true, Winner::Desired),
            (Policy::DeviceWins, false, Winner::Reported),
            (Policy::LastWriterWins, true, Winner::Reported),
            (Policy::LastWriterWins, false, Winner::Desired),
        ] {
            let (dt, rt) = if newer_device { (1, 2) } else { (2, 1) };
            let d = leaf(60, dt, Origin::Cloud, policy);
            let r = leaf(30, rt, Origin::Device, policy);
            assert_eq!(resolve(&policy, &p, &d, &r), expected, "{policy:?}");
            assert_eq!(
                settle(&policy, &p, &d, &r).is_some(),
                expected == Winner::Reported
            );
        }
    }

    #[test]
    fn table_falls_back_to_default() {
        let t = FieldPolicies {
            fields: &[("a", Policy::CloudWins)],
            default: Policy::DeviceWins,
        };
        assert_eq!(t.policy(&Path::new("a").unwrap()), Policy::CloudWins);
        assert_eq!(t.policy(&Path::new("b").unwrap()), Policy::DeviceWins);
    }
}
