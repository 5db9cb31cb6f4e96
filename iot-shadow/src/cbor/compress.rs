//! The clock table (each distinct HLC timestamp once) and the default ref (the most common
//! leaf ref written once), which make a message short.

use crate::path::Path;
use crate::stamp::Stamp;
use crate::store::Section;
use crate::value::{Value, uint_len, value_len};

pub(super) const fn flags(stamp: &Stamp) -> u8 {
    stamp.policy.code() | (stamp.origin.code() << 2)
}

/// Array values are CBOR arrays: they are never written bare.
pub(super) const fn is_array(value: &Value) -> bool {
    matches!(value, Value::Array(_))
}

/// Whether a leaf with this ref is written as its bare value.
pub(super) fn is_bare(default: Option<u64>, reference: u64, array: bool) -> bool {
    !array && default == Some(reference)
}

/// What the encoded size of one leaf depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeafCost {
    pub(crate) section: Section,
    pub(crate) key: usize,
    pub(crate) value: usize,
    pub(crate) clock: (u64, u32),
    pub(crate) flags: u8,
    /// The value is an array (never written bare).
    pub(crate) array: bool,
}

impl LeafCost {
    pub(crate) fn of(section: Section, path: &Path, value: &Value, stamp: &Stamp) -> Self {
        Self {
            section,
            key: path.as_str().len(),
            value: value_len(value),
            clock: (stamp.time, stamp.node.0),
            flags: flags(stamp),
            array: is_array(value),
        }
    }
}

/// A source of clocks that can be scanned any number of times (a cloneable iterator),
/// behind a trait object so the scans below are compiled once.
pub(super) trait ClockScan {
    /// Calls `f` with every clock of the source, in the source's order.
    fn scan(&self, f: &mut dyn FnMut((u64, u32)));
}

impl<I: Iterator<Item = (u64, u32)> + Clone> ClockScan for I {
    fn scan(&self, f: &mut dyn FnMut((u64, u32))) {
        self.clone().for_each(f);
    }
}

/// Distinct values of a scannable source in ascending order, without storage.
pub(super) struct Distinct<'t> {
    pub(super) source: &'t dyn ClockScan,
    pub(super) last: Option<(u64, u32)>,
}

impl Iterator for Distinct<'_> {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        let last = self.last;
        let mut next: Option<(u64, u32)> = None;
        self.source.scan(&mut |x| {
            if last.is_none_or(|l| x > l) && next.is_none_or(|n| x < n) {
                next = Some(x);
            }
        });
        self.last = next;
        next
    }
}

/// The distinct clocks of a [`ClockTable`] in ascending order: its sorted vector, or, when
/// that overflowed, a rescan of the source per clock.
pub(super) enum TableClocks<'t> {
    Fast(core::slice::Iter<'t, (u64, u32)>),
    Scan(Distinct<'t>),
}

impl Iterator for TableClocks<'_> {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        match self {
            Self::Fast(clocks) => clocks.next().copied(),
            Self::Scan(distinct) => distinct.next(),
        }
    }
}

/// Capacity of the fast path of [`ClockTable`]; larger tables are ranked by rescanning.
pub(super) const FAST_CLOCKS: usize = 32;

/// The sorted table of distinct HLC timestamps of a message.
#[derive(Debug, Clone)]
pub(super) struct ClockTable<I> {
    pub(super) source: I,
    pub(super) index: ClockIndex,
}

/// The part of a [`ClockTable`] that does not depend on its source's type (compiled once).
#[derive(Debug, Clone)]
pub(super) struct ClockIndex {
    /// The distinct clocks in ascending order, unless there are more than [`FAST_CLOCKS`].
    pub(super) fast: heapless::Vec<(u64, u32), FAST_CLOCKS>,
    pub(super) overflow: bool,
}

impl ClockIndex {
    #[inline(never)]
    pub(super) fn of(source: &dyn ClockScan) -> Self {
        let mut fast = heapless::Vec::new();
        let mut overflow = false;
        source.scan(&mut |clock| {
            if overflow {
                return;
            }
            if let Err(at) = fast.binary_search(&clock)
                && fast.insert(at, clock).is_err()
            {
                overflow = true;
            }
        });
        Self { fast, overflow }
    }

    pub(super) fn distinct<'t>(&'t self, source: &'t dyn ClockScan) -> TableClocks<'t> {
        if self.overflow {
            TableClocks::Scan(Distinct { source, last: None })
        } else {
            TableClocks::Fast(self.fast.iter())
        }
    }

    pub(super) fn len(&self, source: &dyn ClockScan) -> usize {
        if self.overflow {
            self.distinct(source).count()
        } else {
            self.fast.len()
        }
    }

    pub(super) fn reference(&self, source: &dyn ClockScan, clock: (u64, u32), flags: u8) -> u64 {
        (self.rank(source, clock) as u64)
            .saturating_mul(8)
            .saturating_add(u64::from(flags))
    }

    #[inline(never)]
    pub(super) fn rank(&self, source: &dyn ClockScan, clock: (u64, u32)) -> usize {
        if self.overflow {
            self.distinct(source).take_while(|c| *c < clock).count()
        } else {
            self.fast.binary_search(&clock).unwrap_or_else(|at| at)
        }
    }
}

impl<I: Iterator<Item = (u64, u32)> + Clone> ClockTable<I> {
    pub(super) fn new(source: I) -> Self {
        let index = ClockIndex::of(&source);
        Self { source, index }
    }

    pub(super) fn distinct(&self) -> TableClocks<'_> {
        self.index.distinct(&self.source)
    }

    pub(super) fn len(&self) -> usize {
        self.index.len(&self.source)
    }

    pub(super) fn reference(&self, clock: (u64, u32), flags: u8) -> u64 {
        self.index.reference(&self.source, clock, flags)
    }
}

/// How many of the smallest distinct refs compete to be the default ref.
pub(super) const DEFAULT_CANDIDATES: usize = 8;

/// Bytes saved by writing `count` leaves of ref `reference` bare, net of the default's own
/// bytes in the clock table (the table's length prefix never grows: `2k` and `2k + 1` have the
/// same CBOR head length, as every head-length boundary is even).
pub(super) fn saving(reference: u64, count: u32) -> usize {
    let len = uint_len(reference);
    (count as usize)
        .saturating_mul(len.saturating_add(1))
        .saturating_sub(len)
}

/// The choice of a message's default ref: fed the ref of every leaf that can be bare (not an
/// array), in any order, it picks among the [`DEFAULT_CANDIDATES`] smallest distinct refs the
/// one saving the most bytes, ties to the smallest; `None` when it was fed nothing.
///
/// One pass with fixed storage: the kept refs are the smallest seen so far, so a ref among
/// the smallest overall is kept from its first occurrence on and its count is exact.
#[derive(Debug, Default)]
pub(super) struct DefaultRef {
    pub(super) smallest: heapless::Vec<(u64, u32), DEFAULT_CANDIDATES>,
}

impl DefaultRef {
    pub(super) fn add(&mut self, reference: u64) {
        match self.smallest.binary_search_by_key(&reference, |(r, _)| *r) {
            Ok(at) => {
                if let Some((_, count)) = self.smallest.get_mut(at) {
                    *count = count.saturating_add(1);
                }
            }
            Err(at) => {
                if at >= DEFAULT_CANDIDATES {
                    return;
                }
                if self.smallest.is_full() {
                    self.smallest.pop();
                }
                // Room was made above and `at <= len`, so this cannot fail.
                let _ = self.smallest.insert(at, (reference, 1));
            }
        }
    }

    pub(super) fn choose(&self) -> Option<u64> {
        self.smallest
            .iter()
            .map(|&(reference, count)| (saving(reference, count), reference))
            .filter(|(saved, _)| *saved > 0)
            .fold(
                None,
                |best: Option<(usize, u64)>, (saved, reference)| match best {
                    Some((s, r)) if s > saved || (s == saved && r <= reference) => best,
                    _ => Some((saved, reference)),
                },
            )
            .map(|(_, reference)| reference)
    }
}
