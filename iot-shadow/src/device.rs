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
use crate::store::{FieldStore, FixedStore, FixedStoreView, Section};
use crate::typed::{FieldSpec, FieldTable, ShadowState};
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

/// The replica type a [`DeviceShadow`] keeps: at most `N` leaves, the typed state's field
/// policies as a [`FieldTable`].
pub type Replica<const N: usize> = Shadow<FixedStore<N>, FieldTable, 1>;

/// A [`Replica`] of any capacity, behind a reference (`&Replica<N>` coerces to it).
pub type ReplicaView = Shadow<FixedStoreView, FieldTable, 1>;

/// A device's shadow: typed state `T`, a replica of at most `N` leaves, and its clock.
///
/// The work is done by code that is generic over neither `T` nor `N` (the state through a
/// trait object, the replica as a [`ReplicaView`]), so a firmware with several device
/// shadows carries it once.
#[derive(Debug)]
pub struct DeviceShadow<T, const N: usize> {
    book: Book,
    state: T,
    replica: Replica<N>,
}

/// The device shadow's clock and bookkeeping.
#[derive(Debug)]
struct Book {
    hlc: HybridLogicalClock,
    last_version: u64,
    handled: u8,
    /// Fields whose reported value (or desired removal) awaits an ack.
    dirty: u64,
    /// Dirty fields changed by the firmware itself (kept across a full document).
    local: u64,
}

/// A typed state's field access, object-safe ([`ShadowState`] has a constant).
trait Fields {
    fn get(&self, id: usize) -> Option<Value>;
    fn set(&mut self, id: usize, value: &Value) -> Result<(), ShadowError>;
}

impl<T: ShadowState> Fields for T {
    fn get(&self, id: usize) -> Option<Value> {
        self.get_field(id)
    }
    fn set(&mut self, id: usize, value: &Value) -> Result<(), ShadowError> {
        self.set_field(id, value)
    }
}

/// A device shadow with its type and capacity erased.
struct Parts<'a> {
    book: &'a mut Book,
    state: &'a mut dyn Fields,
    replica: &'a mut ReplicaView,
}

fn bit(id: usize) -> u64 {
    u32::try_from(id)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

fn field_path(fields: &[FieldSpec], id: usize) -> Result<Path, ShadowError> {
    let spec = fields.get(id).ok_or(ShadowError::UnknownField)?;
    Path::new(spec.path).map_err(|_| ShadowError::UnknownField)
}

impl<T: ShadowState, const N: usize> DeviceShadow<T, N> {
    const FITS: () = assert!(T::FIELDS.len() <= 64, "at most 64 typed fields");

    /// A device shadow starting from the firmware's `state`, with node id `node` for its
    /// HLC (which rejects remote stamps more than `max_drift_ms` ahead).
    pub const fn new(state: T, node: NodeId, limits: Limits, max_drift_ms: u64) -> Self {
        let () = Self::FITS;
        Self {
            book: Book {
                hlc: HybridLogicalClock::new(node, max_drift_ms),
                last_version: 0,
                handled: 0,
                dirty: 0,
                local: 0,
            },
            state,
            replica: Shadow::new(FixedStore::new(), FieldTable::of::<T>(), limits),
        }
    }

    /// Restores the clock after a reboot (from [`HybridLogicalClock::last`]).
    #[must_use]
    pub const fn with_clock(mut self, hlc: HybridLogicalClock) -> Self {
        self.book.hlc = hlc;
        self
    }

    /// Restores the version of the last notification applied after a reboot (from
    /// [`DeviceShadow::last_version`]), so older notifications still in flight are not
    /// applied over the restored state.
    #[must_use]
    pub const fn with_last_version(mut self, version: u64) -> Self {
        self.book.last_version = version;
        self
    }

    /// The typed state.
    pub const fn state(&self) -> &T {
        &self.state
    }

    /// The replica of the backend document.
    pub const fn replica(&self) -> &Replica<N> {
        &self.replica
    }

    /// The device's clock.
    pub const fn clock(&self) -> &HybridLogicalClock {
        &self.book.hlc
    }

    /// The version of the last notification applied.
    pub const fn last_version(&self) -> u64 {
        self.book.last_version
    }

    /// `true` while changes await an ack.
    pub const fn has_pending(&self) -> bool {
        self.book.dirty != 0
    }

    fn parts(&mut self) -> Parts<'_> {
        Parts {
            book: &mut self.book,
            state: &mut self.state,
            replica: &mut self.replica,
        }
    }

    /// Reports every typed field whose value the replica does not hold yet (at boot).
    pub fn report_state(&mut self, wall_ms: u64) -> Result<(), ShadowError> {
        self.parts().report_state(wall_ms)
    }

    /// The firmware changes field `id` locally. Returns `false` if the field's policy
    /// immediately reverted it to a pending desired value (cloud-owned field).
    pub fn set(&mut self, id: usize, value: Value, wall_ms: u64) -> Result<bool, ShadowError> {
        self.parts().set(id, value, wall_ms)
    }

    /// Applies a decoded notification (`Accepted`, `Delta` or `Document`).
    pub fn handle(
        &mut self,
        header: &Header<'_>,
        writes: &[Write],
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        self.parts().handle(header, writes, wall_ms)
    }

    /// Decodes a CBOR notification (up to `M` leaves, on the stack) and applies it.
    pub fn handle_cbor<const M: usize>(
        &mut self,
        bytes: &[u8],
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        let mut writes: heapless::Vec<Write, M> = heapless::Vec::new();
        self.parts()
            .handle_cbor(bytes, writes.as_mut_view(), wall_ms)
    }

    /// Copies the writes awaiting an ack into `sink`; returns how many.
    pub fn pending<K: WriteSink + ?Sized>(&self, sink: &mut K) -> Result<usize, ShadowError> {
        let (desired, reported) = pending_items(&self.replica, self.book.dirty);
        let mut n = 0usize;
        for (section, (path, value, stamp)) in desired
            .map(|i| (Section::Desired, i))
            .chain(reported.map(|i| (Section::Reported, i)))
        {
            sink.push_write(Write::new(section, path.clone(), value.clone(), *stamp))
                .map_err(|_| ShadowError::SinkFull { written: n })?;
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
        encode_pending(&self.replica, self.book.dirty, client_token, buf)
    }
}

/// The pending desired tombstones and reported leaves of the `dirty` fields.
fn pending_items(
    replica: &ReplicaView,
    dirty: u64,
) -> (
    impl Iterator<Item = Item<'_>> + Clone,
    impl Iterator<Item = Item<'_>> + Clone,
) {
    let table = replica.resolver();
    let is_dirty = move |p: &Path| {
        table
            .field_id(p.as_str())
            .is_some_and(|id| dirty & bit(id) != 0)
    };
    let desired = replica
        .section(Section::Desired)
        .filter(move |(p, l)| l.value.is_null() && l.stamp.origin == Origin::Device && is_dirty(p))
        .map(cbor::leaf_item);
    let reported = replica
        .section(Section::Reported)
        .filter(move |(p, _)| is_dirty(p))
        .map(cbor::leaf_item);
    (desired, reported)
}

#[inline(never)]
fn encode_pending(
    replica: &ReplicaView,
    dirty: u64,
    client_token: Option<&str>,
    buf: &mut [u8],
) -> Result<Option<usize>, ShadowError> {
    if dirty == 0 {
        return Ok(None);
    }
    let (desired, reported) = pending_items(replica, dirty);
    let header = Header {
        kind: Kind::Update,
        version: None,
        client_token,
    };
    Ok(Some(cbor::encode_into(&header, desired, reported, buf)?))
}

impl Parts<'_> {
    fn fields(&self) -> &'static [FieldSpec] {
        self.replica.resolver().fields()
    }

    #[inline(never)]
    fn report_state(&mut self, wall_ms: u64) -> Result<(), ShadowError> {
        for (id, spec) in self.fields().iter().enumerate() {
            let path = field_path(self.fields(), id)?;
            let Some(value) = self.state.get(id) else {
                continue;
            };
            let held = self.replica.value(Section::Reported, &path);
            if value.is_null() || held == Some(&value) {
                continue;
            }
            let stamp = Stamp::new(self.book.hlc.now(wall_ms)?, spec.policy, Origin::Device);
            self.replica
                .set_leaf(&Write::new(Section::Reported, path, value, stamp))?;
            self.book.dirty |= bit(id);
            self.book.local |= bit(id);
        }
        self.settle(wall_ms)
    }

    #[inline(never)]
    fn set(&mut self, id: usize, value: Value, wall_ms: u64) -> Result<bool, ShadowError> {
        let spec = self.fields().get(id).ok_or(ShadowError::UnknownField)?;
        let path = field_path(self.fields(), id)?;
        let old = self.state.get(id).ok_or(ShadowError::UnknownField)?;
        self.state.set(id, &value)?;
        let stamp = match self.book.hlc.now(wall_ms) {
            Ok(hlc) => Stamp::new(hlc, spec.policy, Origin::Device),
            Err(e) => {
                let _ = self.state.set(id, &old);
                return Err(e.into());
            }
        };
        if let Err(e) =
            self.replica
                .set_leaf(&Write::new(Section::Reported, path, value.clone(), stamp))
        {
            let _ = self.state.set(id, &old);
            return Err(e);
        }
        self.book.dirty |= bit(id);
        self.book.local |= bit(id);
        self.settle(wall_ms)?;
        Ok(self.state.get(id) == Some(value))
    }

    #[inline(never)]
    fn handle_cbor(
        &mut self,
        bytes: &[u8],
        writes: &mut heapless::VecView<Write>,
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        let header = cbor::decode_message(bytes, writes)?;
        self.handle(&header, writes, wall_ms)
    }

    #[inline(never)]
    fn handle(
        &mut self,
        header: &Header<'_>,
        writes: &[Write],
        wall_ms: u64,
    ) -> Result<Handled, ShadowError> {
        let version = header.version.ok_or(ShadowError::Decode(
            iot_core::codec::DecodeError::MissingField,
        ))?;
        let mask = 1u8 << header.kind.code();
        let book = &*self.book;
        if header.kind == Kind::Update
            || version < book.last_version
            || (version == book.last_version && book.handled & mask != 0)
        {
            return Ok(Handled::Ignored);
        }
        let horizon = wall_ms.saturating_add(self.book.hlc.max_drift_ms());
        if writes.iter().any(|w| w.stamp.hlc().physical_ms() > horizon) {
            return Err(ShadowError::ClockDrift);
        }
        match header.kind {
            Kind::Document => self.adopt(writes, version)?,
            _ => {
                self.replica.merge_writes(writes, version)?;
            }
        }
        for w in writes {
            // A stamp beyond the drift bound is still merged; the clock just ignores it.
            let _ = self.book.hlc.observe(w.stamp.hlc(), wall_ms);
        }
        if header.kind == Kind::Accepted {
            self.acknowledge(writes);
        }
        let book = &mut *self.book;
        let gap = header.kind != Kind::Document && version > book.last_version.saturating_add(1);
        if version > book.last_version {
            book.last_version = version;
            book.handled = mask;
        } else {
            book.handled |= mask;
        }
        self.settle(wall_ms)?;
        Ok(if gap {
            Handled::AppliedWithGap
        } else {
            Handled::Applied
        })
    }

    /// Resets the replica to a full document, keeping unacknowledged local changes.
    fn adopt(&mut self, writes: &[Write], version: u64) -> Result<(), ShadowError> {
        self.replica.check_writes(writes)?;
        let me = self.book.hlc.node();
        let local = self.book.local;
        let table = *self.replica.resolver();
        let keep = |s: Section, p: &Path, stamp: &Stamp| {
            s == Section::Reported
                && stamp.node == me
                && stamp.origin == Origin::Device
                && table
                    .field_id(p.as_str())
                    .is_some_and(|id| local & bit(id) != 0)
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
        let capacity = self.replica.store().capacity();
        if needed > capacity {
            return Err(ShadowError::StoreFull { capacity });
        }
        self.replica.retain(|s, p, l| keep(s, p, &l.stamp));
        self.replica.merge_writes(writes, version)?;
        self.book.dirty = self.book.local;
        // The reported values the document brings become the typed state.
        let fields = self.fields();
        for (id, _) in fields.iter().enumerate() {
            let Ok(path) = field_path(fields, id) else {
                continue;
            };
            if let Some(v) = self.replica.value(Section::Reported, &path) {
                let _ = self.state.set(id, v);
            }
        }
        Ok(())
    }

    /// Clears what an ack confirms and drops the tombstones it carried.
    fn acknowledge(&mut self, writes: &[Write]) {
        let table = *self.replica.resolver();
        for w in writes.iter().filter(|w| w.section == Section::Reported) {
            let Some(id) = table.field_id(w.path.as_str()) else {
                continue;
            };
            let confirmed = self
                .replica
                .leaf(w.section, &w.path)
                .is_some_and(|l| l.value == w.value && l.stamp == w.stamp);
            if confirmed {
                self.book.dirty &= !bit(id);
                self.book.local &= !bit(id);
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
    #[inline(never)]
    fn settle(&mut self, wall_ms: u64) -> Result<(), ShadowError> {
        let resolver = *self.replica.resolver();
        let fields = resolver.fields();
        for (id, spec) in fields.iter().enumerate() {
            let path = field_path(fields, id)?;
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
                    let Some(old) = self.state.get(id) else {
                        continue;
                    };
                    if self.state.set(id, &d.value).is_err() {
                        // The firmware cannot take this value; leave the delta visible.
                        continue;
                    }
                    let after = r.map_or(0, |r| r.stamp.time).max(d.stamp.time);
                    let stamp = Stamp {
                        time: after.saturating_add(1),
                        node: self.book.hlc.node(),
                        policy: spec.policy,
                        origin: Origin::Device,
                    };
                    let adopt = Write::new(Section::Reported, path, d.value.clone(), stamp);
                    if let Err(e) = self.replica.set_leaf(&adopt) {
                        let _ = self.state.set(id, &old);
                        return Err(e);
                    }
                    let _ = self.book.hlc.observe(stamp.hlc(), wall_ms);
                    self.book.dirty |= bit(id);
                }
                (Winner::Reported, Some(r)) => {
                    // A resolver may pick a reported value older than the desired one; then
                    // only a fresh stamp outranks the desired leaf.
                    let stamp = match settle(&resolver, &path, &d, &r) {
                        Some(t) => t.stamp,
                        None => {
                            Stamp::new(self.book.hlc.now(wall_ms)?, spec.policy, Origin::Device)
                        }
                    };
                    if stamp.cmp_precedence(&d.stamp) == core::cmp::Ordering::Greater {
                        self.replica.set_leaf(&Write::new(
                            Section::Desired,
                            path,
                            Value::Null,
                            stamp,
                        ))?;
                        self.book.dirty |= bit(id);
                    }
                }
                (Winner::Reported, None) => {}
            }
        }
        Ok(())
    }
}
