//! The device side: a typed state kept in step with a fixed-capacity replica of the shadow.
//!
//! [`DeviceShadow`] holds the firmware's [`ShadowState`] struct, a replica of the backend
//! document (`Shadow<FixedStore<N>>`, the same engine the backend runs) and the device's
//! hybrid logical clock. It never allocates.
//!
//! * Notifications (`accepted`, `delta`, full `document`) are applied in any order, any
//!   number of times: a notification older than the last one applied is ignored, an accepted
//!   and a delta with the same version are both handled, and a full document resets the
//!   replica to it (keeping only unacknowledged local changes), so any history followed by
//!   one snapshot ends in the same state. A version gap is reported so the device can ask
//!   for the full document: deltas missed while offline are never lost.
//! * After each event the device *settles* every typed field by its policy: it adopts a
//!   desired value that wins, or clears (removes) a desired value that its reported value
//!   beats. Either way desired and reported end equal, so a delta never recurs.
//! * [`DeviceShadow::encode_pending`] produces the update to send; the matching ack clears
//!   it and drops the tombstones it carried.

use iot_core::id::NodeId;
use iot_core::time::HybridLogicalClock;

use crate::cbor::{self, Header, Item, Kind, WriteSink};
use crate::engine::Shadow;
use crate::error::ShadowError;
use crate::path::Path;
use crate::policy::{Limits, Winner, resolve, settle};
use crate::stamp::{Origin, Stamp};
use crate::store::{FieldStore, FixedStore, Section};
use crate::typed::{ShadowState, TypedPolicies};
use crate::update::Write;
use crate::value::Value;

/// What [`DeviceShadow::handle`] did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Handled {
    /// Applied.
    Applied,
    /// Applied, but versions were skipped: request the full document.
    AppliedWithGap,
    /// Older than (or a repeat of) what was already applied; nothing changed.
    Ignored,
}

/// The replica type a [`DeviceShadow`] keeps.
pub type Replica<T, const N: usize> = Shadow<FixedStore<N>, TypedPolicies<T>, 1>;

/// A device's shadow: typed state `T`, a replica of at most `N` leaves, and its clock.
#[derive(Debug)]
pub struct DeviceShadow<T, const N: usize> {
    replica: Replica<T, N>,
    state: T,
    hlc: HybridLogicalClock,
    last_version: u64,
    handled: u8,
    /// Fields whose reported value (or desired removal) awaits an ack.
    dirty: u64,
    /// Dirty fields changed by the firmware itself (kept across a full document).
    local: u64,
}

fn bit(id: usize) -> u64 {
    u32::try_from(id)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

impl<T: ShadowState, const N: usize> DeviceShadow<T, N> {
    const FITS: () = assert!(T::FIELDS.len() <= 64, "at most 64 typed fields");

    /// A device shadow starting from the firmware's `state`, with node id `node` for its
    /// HLC (which rejects remote stamps more than `max_drift_ms` ahead).
    pub const fn new(state: T, node: NodeId, limits: Limits, max_drift_ms: u64) -> Self {
        let () = Self::FITS;
        Self {
            replica: Shadow::new(FixedStore::new(), TypedPolicies::new(), limits),
            state,
            hlc: HybridLogicalClock::new(node, max_drift_ms),
            last_version: 0,
            handled: 0,
            dirty: 0,
            local: 0,
        }
    }

    /// Restores the clock after a reboot (from [`HybridLogicalClock::last`]).
    #[must_use]
    pub const fn with_clock(mut self, hlc: HybridLogicalClock) -> Self {
        self.hlc = hlc;
        self
    }

    /// The typed state.
    pub const fn state(&self) -> &T {
        &self.state
    }

    /// The replica of the backend document.
    pub const fn replica(&self) -> &Replica<T, N> {
        &self.replica
    }

    /// The device's clock.
    pub const fn clock(&self) -> &HybridLogicalClock {
        &self.hlc
    }

    /// The version of the last notification applied.
    pub const fn last_version(&self) -> u64 {
        self.last_version
    }

    /// `true` while changes await an ack.
    pub const fn has_pending(&self) -> bool {
        self.dirty != 0
    }

    fn path(id: usize) -> Result<Path, ShadowError> {
        let spec = T::FIELDS.get(id).ok_or(ShadowError::UnknownField)?;
        Path::new(spec.path).map_err(|_| ShadowError::UnknownField)
    }

    /// Reports every typed field whose value the replica does not hold yet (at boot).
    pub fn report_state(&mut self, wall_ms: u64) -> Result<(), ShadowError> {
        for (id, spec) in T::FIELDS.iter().enumerate() {
            let path = Self::path(id)?;
            let Some(value) = self.state.get_field(id) else {
                continue;
            };
            let held = self.replica.value(Section::Reported, &path);
            if value.is_null() || held == Some(&value) {
                continue;
            }
            let stamp = Stamp::new(self.hlc.now(wall_ms)?, spec.policy, Origin::Device);
            self.replica
                .set_leaf(&Write::new(Section::Reported, path, value, stamp))?;
            self.dirty |= bit(id);
            self.local |= bit(id);
        }
        self.settle(wall_ms)
    }

    /// The firmware changes field `id` locally. Returns `false` if the field's policy
    /// immediately reverted it to a pending desired value (cloud-owned field).
    pub fn set(&mut self, id: usize, value: Value, wall_ms: u64) -> Result<bool, ShadowError> {
        let spec = T::FIELDS.get(id).ok_or(ShadowError::UnknownField)?;
        let path = Self::path(id)?;
        let old = self.state.get_field(id).ok_or(ShadowError::UnknownField)?;
        self.state.set_field(id, &value)?;
        let stamp = match self.hlc.now(wall_ms) {
            Ok(hlc) => Stamp::new(hlc, spec.policy, Origin::Device),
            Err(e) => {
                let _ = self.state.set_field(id, &old);
                return Err(e.into());
            }
        };
        if let Err(e) =
            self.replica
                .set_leaf(&Write::new(Section::Reported, path, value.clone(), stamp))
        {
            let _ = self.state.set_field(id, &old);
            return Err(e);
        }
        self.dirty |= bit(id);
        self.local |= bit(id);
        self.settle(wall_ms)?;
        Ok(self.state.get_field(id) == Some(value))
    }

    /// Applies a decoded notification (`Accepted`, `Delta` or `Document`).
    pub fn handle(
        &mut self,
        header: &Header<'_>,
        writes: &[Write],
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        let version = header.version.ok_or(ShadowError::Decode(
            iot_core::codec::DecodeError::MissingField,
        ))?;
        let mask = 1u8 << header.kind.code();
        if header.kind == Kind::Update
            || version < self.last_version
            || (version == self.last_version && self.handled & mask != 0)
        {
            return Ok(Handled::Ignored);
        }
        match header.kind {
            Kind::Document => self.adopt(writes, version)?,
            _ => {
                self.replica.merge_writes(writes, version)?;
            }
        }
        for w in writes {
            // A stamp beyond the drift bound is still merged; the clock just ignores it.
            let _ = self.hlc.observe(w.stamp.hlc(), wall_ms);
        }
        if header.kind == Kind::Accepted {
            self.acknowledge(writes);
        }
        let gap = header.kind != Kind::Document && version > self.last_version.saturating_add(1);
        if version > self.last_version {
            self.last_version = version;
            self.handled = mask;
        } else {
            self.handled |= mask;
        }
        self.settle(wall_ms)?;
        Ok(if gap {
            Handled::AppliedWithGap
        } else {
            Handled::Applied
        })
    }

    /// Decodes a CBOR notification (up to `M` leaves, on the stack) and applies it.
    pub fn handle_cbor<const M: usize>(
        &mut self,
        bytes: &[u8],
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        let mut writes: heapless::Vec<Write, M> = heapless::Vec::new();
        let header = cbor::decode_message(bytes, &mut writes)?;
        self.handle(&header, &writes, wall_ms)
    }

    /// Resets the replica to a full document, keeping unacknowledged local changes.
    fn adopt(&mut self, writes: &[Write], version: u64) -> Result<(), ShadowError> {
        self.replica.check_writes(writes)?;
        let me = self.hlc.node();
        let local = self.local;
        let keep = |s: Section, p: &Path, stamp: &Stamp| {
            s == Section::Reported
                && stamp.node == me
                && stamp.origin == Origin::Device
                && T::field_id(p.as_str()).is_some_and(|id| local & bit(id) != 0)
        };
        let kept_outside = self
            .replica
            .store()
            .entries()
            .filter(|(s, p, l)| {
                keep(*s, p, &l.stamp) && !writes.iter().any(|w| w.section == *s && w.path == **p)
            })
            .count();
        let needed = writes.len().saturating_add(kept_outside);
        let max = self.replica.limits().max_fields;
        if needed > max {
            return Err(ShadowError::TooManyFields { count: needed, max });
        }
        if needed > N {
            return Err(ShadowError::StoreFull { capacity: N });
        }
        self.replica.retain(|s, p, l| keep(s, p, &l.stamp));
        self.replica.merge_writes(writes, version)?;
        self.dirty = self.local;
        // The reported values the document brings become the typed state.
        for (id, _) in T::FIELDS.iter().enumerate() {
            let Ok(path) = Self::path(id) else { continue };
            if let Some(v) = self.replica.value(Section::Reported, &path) {
                let _ = self.state.set_field(id, v);
            }
        }
        Ok(())
    }

    /// Clears what an ack confirms and drops the tombstones it carried.
    fn acknowledge(&mut self, writes: &[Write]) {
        for w in writes {
            let Some(id) = T::field_id(w.path.as_str()) else {
                continue;
            };
            let confirmed = self
                .replica
                .leaf(w.section, &w.path)
                .is_some_and(|l| l.value == w.value && l.stamp == w.stamp);
            if confirmed && w.section == Section::Reported {
                self.dirty &= !bit(id);
                self.local &= !bit(id);
            }
        }
        self.replica.retain(|s, p, l| {
            !(l.value.is_null()
                && writes.iter().any(|w| {
                    w.section == s && w.path == *p && w.value.is_null() && w.stamp == l.stamp
                }))
        });
    }

    /// Settles every typed field by its policy so desired and reported agree.
    fn settle(&mut self, wall_ms: u64) -> Result<(), ShadowError> {
        let resolver = TypedPolicies::<T>::new();
        for (id, spec) in T::FIELDS.iter().enumerate() {
            let path = Self::path(id)?;
            let Some(d) = self
                .replica
                .leaf(Section::Desired, &path)
                .filter(|d| !d.value.is_null())
                .cloned()
            else {
                continue;
            };
            let r = self
                .replica
                .leaf(Section::Reported, &path)
                .filter(|r| !r.value.is_null())
                .cloned();
            if r.as_ref().is_some_and(|r| r.value == d.value) {
                continue;
            }
            let winner = r
                .as_ref()
                .map_or(Winner::Desired, |r| resolve(&resolver, &path, &d, r));
            match (winner, r) {
                (Winner::Desired, r) => {
                    let Some(old) = self.state.get_field(id) else {
                        continue;
                    };
                    if self.state.set_field(id, &d.value).is_err() {
                        // The firmware cannot take this value; leave the delta visible.
                        continue;
                    }
                    let after = r.map_or(0, |r| r.stamp.time).max(d.stamp.time);
                    let stamp = Stamp {
                        time: after.saturating_add(1),
                        node: self.hlc.node(),
                        policy: spec.policy,
                        origin: Origin::Device,
                    };
                    let adopt = Write::new(Section::Reported, path, d.value.clone(), stamp);
                    if let Err(e) = self.replica.set_leaf(&adopt) {
                        let _ = self.state.set_field(id, &old);
                        return Err(e);
                    }
                    let _ = self.hlc.observe(stamp.hlc(), wall_ms);
                    self.dirty |= bit(id);
                }
                (Winner::Reported, Some(r)) => {
                    // A resolver may pick a reported value older than the desired one; then
                    // only a fresh stamp outranks the desired leaf.
                    let stamp = match settle(&resolver, &path, &d, &r) {
                        Some(t) => t.stamp,
                        None => Stamp::new(self.hlc.now(wall_ms)?, spec.policy, Origin::Device),
                    };
                    if stamp.cmp_precedence(&d.stamp) == core::cmp::Ordering::Greater {
                        self.replica.set_leaf(&Write::new(
                            Section::Desired,
                            path,
                            Value::Null,
                            stamp,
                        ))?;
                        self.dirty |= bit(id);
                    }
                }
                (Winner::Reported, None) => {}
            }
        }
        Ok(())
    }

    fn pending_items(
        &self,
    ) -> (
        impl Iterator<Item = Item<'_>> + Clone,
        impl Iterator<Item = Item<'_>> + Clone,
    ) {
        let dirty = self.dirty;
        let is_dirty =
            move |p: &Path| T::field_id(p.as_str()).is_some_and(|id| dirty & bit(id) != 0);
        let desired = self
            .replica
            .section(Section::Desired)
            .filter(move |(p, l)| {
                l.value.is_null() && l.stamp.origin == Origin::Device && is_dirty(p)
            })
            .map(cbor::leaf_item);
        let reported = self
            .replica
            .section(Section::Reported)
            .filter(move |(p, _)| is_dirty(p))
            .map(cbor::leaf_item);
        (desired, reported)
    }

    /// Copies the writes awaiting an ack into `sink`; returns how many.
    pub fn pending<K: WriteSink>(&self, sink: &mut K) -> Result<usize, ShadowError> {
        let (desired, reported) = self.pending_items();
        let mut n = 0usize;
        for (section, (path, value, stamp)) in desired
            .map(|i| (Section::Desired, i))
            .chain(reported.map(|i| (Section::Reported, i)))
        {
            sink.push_write(Write::new(section, path.clone(), value.clone(), *stamp))
                .map_err(|_| ShadowError::StoreFull { capacity: n })?;
            n = n.saturating_add(1);
        }
        Ok(n)
    }

    /// Encodes the update to send (`Ok(None)` when nothing is pending).
    pub fn encode_pending(
        &self,
        client_token: Option<&str>,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ShadowError> {
        if self.dirty == 0 {
            return Ok(None);
        }
        let (desired, reported) = self.pending_items();
        let header = Header {
            kind: Kind::Update,
            version: None,
            client_token,
        };
        Ok(Some(cbor::encode_into(&header, desired, reported, buf)?))
    }
}
