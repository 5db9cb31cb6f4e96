//! Where a shadow keeps its leaves: [`FieldStore`], with a fixed-capacity [`FixedStore`] for
//! devices and a heap-backed `MapStore` (feature `alloc`) for backends.
//!
//! The engine ([`Shadow`](crate::Shadow)) is generic over the store, so the device and the
//! backend run the same delta, merge and versioning code. Stores iterate in canonical order
//! (section, then [`Path`] order), which is the order of the canonical CBOR encoding.

use core::cmp::Ordering;

use heapless::vec::{OwnedVecStorage, VecInner, VecStorage, ViewVecStorage};

use crate::path::Path;
use crate::stamp::Stamp;
use crate::value::Value;

/// The two halves of a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Section {
    /// What the backend wants the device to be.
    Desired,
    /// What the device says it is.
    Reported,
}

/// One stored leaf: a value (or a `Null` tombstone) and its stamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Leaf {
    /// The value; `Null` is a tombstone awaiting acknowledgement.
    pub value: Value,
    /// Who wrote it, when, under which policy.
    pub stamp: Stamp,
}

/// The store is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StoreFull;

/// Ordered storage of leaves keyed by (section, path).
///
/// Implementations must iterate in ascending (section, path) order and must not change
/// anything when `insert` fails.
pub trait FieldStore {
    /// The leaf at `path` in `section`.
    fn get(&self, section: Section, path: &Path) -> Option<&Leaf>;
    /// Inserts or replaces a leaf; fails only when a new key does not fit.
    fn insert(&mut self, section: Section, path: &Path, leaf: Leaf) -> Result<(), StoreFull>;
    /// Removes a leaf.
    fn remove(&mut self, section: Section, path: &Path) -> Option<Leaf>;
    /// Number of stored leaves (tombstones included).
    fn len(&self) -> usize;
    /// `true` when no leaf is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Maximum number of leaves (`usize::MAX` for heap stores).
    fn capacity(&self) -> usize;
    /// Removes every leaf.
    fn clear(&mut self);
    /// Every leaf in canonical order.
    fn entries(&self) -> impl Iterator<Item = (Section, &Path, &Leaf)> + Clone;
    /// Removes every leaf for which `keep` returns `false`; returns how many were removed.
    fn retain(&mut self, keep: impl FnMut(Section, &Path, &Leaf) -> bool) -> usize;
    /// Makes room for `additional` new leaves in `section` before a batch inserts them: a
    /// hint, so that a heap store allocates once per batch instead of growing leaf by leaf.
    /// Fixed stores ignore it (their capacity was checked before).
    fn reserve(&mut self, section: Section, additional: usize) {
        let _ = (section, additional);
    }
}

/// Up to this many sorted entries are searched linearly: most comparisons of paths end at
/// their lengths, and a forward scan predicts better than a binary search's halving.
const LINEAR_SEARCH: usize = 16;

/// `binary_search_by` for sorted `items`, scanning short slices front to back.
fn search<T>(items: &[T], mut cmp: impl FnMut(&T) -> Ordering) -> Result<usize, usize> {
    if items.len() > LINEAR_SEARCH {
        return items.binary_search_by(cmp);
    }
    for (i, item) in items.iter().enumerate() {
        match cmp(item) {
            Ordering::Less => {}
            Ordering::Equal => return Ok(i),
            Ordering::Greater => return Err(i),
        }
    }
    Err(items.len())
}

/// One entry of a [`FixedStore`]: the section, the path and the leaf.
pub type FixedEntry = (Section, Path, Leaf);

/// A fixed-capacity store in a sorted inline vector, generic over heapless's storage: use
/// [`FixedStore<N>`] (at most `N` leaves, owned) or [`FixedStoreView`] (the same store with
/// its capacity erased, behind a reference). No allocation.
///
/// A `&mut FixedStore<N>` (or a [`Shadow`](crate::Shadow) over one) coerces to its view, so
/// code over views is compiled once for every capacity.
pub struct FixedStoreInner<S: VecStorage<FixedEntry> + ?Sized> {
    entries: VecInner<FixedEntry, usize, S>,
}

/// A fixed-capacity store of at most `N` leaves in a sorted inline vector. No allocation.
pub type FixedStore<const N: usize> = FixedStoreInner<OwnedVecStorage<FixedEntry, N>>;

/// A [`FixedStore`] of any capacity, behind a reference (`&FixedStore<N>` coerces to it).
pub type FixedStoreView = FixedStoreInner<ViewVecStorage<FixedEntry>>;

impl<const N: usize> FixedStore<N> {
    /// An empty store; usable in a `static`.
    pub const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }
}

impl<const N: usize> Default for FixedStore<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Clone for FixedStore<N> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
        }
    }
}

impl<S: VecStorage<FixedEntry> + ?Sized> core::fmt::Debug for FixedStoreInner<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FixedStore")
            .field("entries", &self.entries.as_slice())
            .finish()
    }
}

impl<S: VecStorage<FixedEntry> + ?Sized> FixedStoreInner<S> {
    fn find(&self, section: Section, path: &Path) -> Result<usize, usize> {
        search(&self.entries, |(s, p, _)| {
            s.cmp(&section).then_with(|| p.cmp(path))
        })
    }
}

impl<S: VecStorage<FixedEntry> + ?Sized> FieldStore for FixedStoreInner<S> {
    fn get(&self, section: Section, path: &Path) -> Option<&Leaf> {
        let i = self.find(section, path).ok()?;
        self.entries.get(i).map(|(_, _, leaf)| leaf)
    }

    fn insert(&mut self, section: Section, path: &Path, leaf: Leaf) -> Result<(), StoreFull> {
        match self.find(section, path) {
            Ok(i) => {
                if let Some(slot) = self.entries.get_mut(i) {
                    slot.2 = leaf;
                }
                Ok(())
            }
            // `insert` checks the index (binary search returns at most `len`) and capacity.
            Err(i) => self
                .entries
                .insert(i, (section, path.clone(), leaf))
                .map_err(|_| StoreFull),
        }
    }

    fn remove(&mut self, section: Section, path: &Path) -> Option<Leaf> {
        let i = self.find(section, path).ok()?;
        // `i` was just found, so it is in bounds.
        Some(self.entries.remove(i).2)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn entries(&self) -> impl Iterator<Item = (Section, &Path, &Leaf)> + Clone {
        self.entries.iter().map(|(s, p, l)| (*s, p, l))
    }

    fn retain(&mut self, mut keep: impl FnMut(Section, &Path, &Leaf) -> bool) -> usize {
        retain_fixed(self.entries.as_mut_view(), &mut keep)
    }
}

/// [`FieldStore::retain`] of a [`FixedStore`], compiled once for every capacity and filter.
#[inline(never)]
fn retain_fixed(
    entries: &mut heapless::VecView<FixedEntry>,
    keep: &mut dyn FnMut(Section, &Path, &Leaf) -> bool,
) -> usize {
    let before = entries.len();
    entries.retain(|(s, p, l)| keep(*s, p, l));
    before.saturating_sub(entries.len())
}

/// A heap-backed store without a capacity limit (backends). Feature `alloc`.
///
/// One sorted vector per section: lookups are a binary search over contiguous leaves,
/// iteration (desired, then reported, each by path) is canonical, and a document of a few
/// dozen leaves takes no more memory than its leaves (the vectors grow one slot at a time,
/// so a backend holding millions of shadows keeps no spare capacity).
#[cfg(feature = "alloc")]
#[derive(Debug, Clone, Default)]
pub struct MapStore {
    desired: alloc::vec::Vec<(Path, Leaf)>,
    reported: alloc::vec::Vec<(Path, Leaf)>,
}

#[cfg(feature = "alloc")]
impl MapStore {
    /// An empty store.
    pub const fn new() -> Self {
        Self {
            desired: alloc::vec::Vec::new(),
            reported: alloc::vec::Vec::new(),
        }
    }

    fn half(&self, section: Section) -> &alloc::vec::Vec<(Path, Leaf)> {
        match section {
            Section::Desired => &self.desired,
            Section::Reported => &self.reported,
        }
    }

    fn half_mut(&mut self, section: Section) -> &mut alloc::vec::Vec<(Path, Leaf)> {
        match section {
            Section::Desired => &mut self.desired,
            Section::Reported => &mut self.reported,
        }
    }

    fn find(half: &[(Path, Leaf)], path: &Path) -> Result<usize, usize> {
        search(half, |(p, _)| p.cmp(path))
    }
}

#[cfg(feature = "alloc")]
impl FieldStore for MapStore {
    fn get(&self, section: Section, path: &Path) -> Option<&Leaf> {
        let half = self.half(section);
        let i = Self::find(half, path).ok()?;
        half.get(i).map(|(_, leaf)| leaf)
    }

    fn insert(&mut self, section: Section, path: &Path, leaf: Leaf) -> Result<(), StoreFull> {
        let half = self.half_mut(section);
        match Self::find(half, path) {
            Ok(i) => {
                if let Some(slot) = half.get_mut(i) {
                    slot.1 = leaf;
                }
            }
            Err(i) => {
                half.reserve_exact(1);
                // `i` comes from the binary search, so it is at most `len`.
                half.insert(i, (path.clone(), leaf));
            }
        }
        Ok(())
    }

    fn remove(&mut self, section: Section, path: &Path) -> Option<Leaf> {
        let half = self.half_mut(section);
        let i = Self::find(half, path).ok()?;
        // `i` was just found, so it is in bounds.
        let (_, leaf) = half.remove(i);
        Some(leaf)
    }

    fn len(&self) -> usize {
        self.desired.len().saturating_add(self.reported.len())
    }

    fn capacity(&self) -> usize {
        usize::MAX
    }

    fn clear(&mut self) {
        self.desired = alloc::vec::Vec::new();
        self.reported = alloc::vec::Vec::new();
    }

    fn entries(&self) -> impl Iterator<Item = (Section, &Path, &Leaf)> + Clone {
        let d = self.desired.iter().map(|(p, l)| (Section::Desired, p, l));
        let r = self.reported.iter().map(|(p, l)| (Section::Reported, p, l));
        d.chain(r)
    }

    fn retain(&mut self, mut keep: impl FnMut(Section, &Path, &Leaf) -> bool) -> usize {
        let before = self.len();
        self.desired.retain(|(p, l)| keep(Section::Desired, p, l));
        self.reported.retain(|(p, l)| keep(Section::Reported, p, l));
        if before != self.len() {
            self.desired.shrink_to_fit();
            self.reported.shrink_to_fit();
        }
        before.saturating_sub(self.len())
    }

    fn reserve(&mut self, section: Section, additional: usize) {
        self.half_mut(section).reserve_exact(additional);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: i64) -> Leaf {
        Leaf {
            value: Value::Int(i),
            stamp: Stamp::default(),
        }
    }

    #[cfg(feature = "alloc")]
    fn exercise<S: FieldStore>(s: &mut S) -> std::vec::Vec<(Section, std::string::String)> {
        let p = |x: &str| Path::new(x).unwrap();
        s.insert(Section::Reported, &p("b"), leaf(1)).unwrap();
        s.insert(Section::Desired, &p("a.b"), leaf(2)).unwrap();
        s.insert(Section::Desired, &p("c"), leaf(3)).unwrap();
        s.insert(Section::Desired, &p("c"), leaf(4)).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(Section::Desired, &p("c")), Some(&leaf(4)));
        assert_eq!(s.remove(Section::Reported, &p("b")), Some(leaf(1)));
        assert_eq!(s.get(Section::Reported, &p("b")), None);
        s.insert(Section::Reported, &p("z"), leaf(5)).unwrap();
        s.entries()
            .map(|(sec, p, _)| (sec, std::string::String::from(p.as_str())))
            .collect()
    }

    #[test]
    fn fixed_store_keeps_canonical_order_and_refuses_when_full() {
        let mut s = FixedStore::<2>::new();
        let p = |x: &str| Path::new(x).unwrap();
        s.insert(Section::Reported, &p("a"), leaf(1)).unwrap();
        s.insert(Section::Desired, &p("bb"), leaf(2)).unwrap();
        assert_eq!(s.insert(Section::Desired, &p("c"), leaf(3)), Err(StoreFull));
        let order: heapless::Vec<Section, 2> = s.entries().map(|(sec, _, _)| sec).collect();
        assert_eq!(order.as_slice(), [Section::Desired, Section::Reported]);
    }

    /// Stores of different capacities behind one view type: each keeps its own capacity,
    /// and a shadow over a view (the device's one compiled engine) refuses exactly what the
    /// owned store refuses and leaves its changes in the owned store.
    #[test]
    fn views_of_fixed_stores_keep_their_capacity() {
        use crate::{Limits, Origin, Policy, Shadow, ShadowError, Update, Write};
        use iot_core::{HlcTimestamp, NodeId};
        let p = |x: &str| Path::new(x).unwrap();
        let mut small = FixedStore::<1>::new();
        let mut large = FixedStore::<3>::new();
        for (view, capacity) in [
            (&mut small as &mut FixedStoreView, 1usize),
            (&mut large as &mut FixedStoreView, 3),
        ] {
            assert_eq!(view.capacity(), capacity);
            for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
                let fits = i < capacity;
                assert_eq!(
                    view.insert(Section::Reported, &p(key), leaf(1)).is_ok(),
                    fits
                );
            }
            assert_eq!(view.len(), capacity);
        }
        assert_eq!(small.len(), 1);
        assert_eq!(large.len(), 3);

        let stamp = Stamp::new(
            HlcTimestamp::from_parts(1_000, 0, NodeId(1)).unwrap(),
            Policy::LastWriterWins,
            Origin::Device,
        );
        let writes = [
            Write::new(Section::Reported, p("x"), Value::Int(1), stamp),
            Write::new(Section::Reported, p("y"), Value::Int(2), stamp),
        ];
        let mut owned: Shadow<FixedStore<1>> =
            Shadow::new(FixedStore::new(), Policy::LastWriterWins, Limits::DEFAULT);
        let view: &mut Shadow<FixedStoreView> = &mut owned;
        assert_eq!(
            view.apply(&Update::new(&writes), 0),
            Err(ShadowError::StoreFull { capacity: 1 })
        );
        assert_eq!(view.version(), 0);
        let outcome = view.apply(&Update::new(&writes[..1]), 0).unwrap();
        assert_eq!(outcome.version, 1);
        assert_eq!(
            owned.value(Section::Reported, &p("x")),
            Some(&Value::Int(1))
        );
        assert_eq!(owned.version(), 1);
    }

    #[test]
    #[cfg(feature = "alloc")]
    fn fixed_and_map_stores_agree() {
        let mut fixed = FixedStore::<3>::new();
        let mut map = MapStore::new();
        let a = exercise(&mut fixed);
        assert_eq!(a, exercise(&mut map));
        assert_eq!(
            a.iter()
                .map(|(_, p)| p.as_str())
                .collect::<std::vec::Vec<_>>(),
            ["c", "a.b", "z"]
        );
        // Full: a new key fails without changing anything; replacing still works.
        assert_eq!(
            fixed.insert(Section::Reported, &Path::new("y").unwrap(), leaf(0)),
            Err(StoreFull)
        );
        assert_eq!(fixed.len(), 3);
        fixed
            .insert(Section::Reported, &Path::new("z").unwrap(), leaf(9))
            .unwrap();
        assert_eq!(fixed.retain(|_, _, l| l.value != Value::Int(9)), 1);
        assert_eq!(fixed.len(), 2);
    }
}
