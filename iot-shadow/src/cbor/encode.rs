//! The encoder: a message's exact length, then its canonical bytes.

use iot_core::codec::EncodeError;
use minicbor::Encoder;

use super::compress::*;
use super::{Header, Item};
use crate::path::Path;
use crate::slice_writer::SliceWriter;
use crate::store::{Leaf, Section};
use crate::update::Write;
use crate::value::{encode_value, text_len, uint_len};

/// Exact encoded length of a message with these leaves (in any order).
pub(crate) fn message_len<I>(header: &Header<'_>, leaves: I) -> usize
where
    I: Iterator<Item = LeafCost> + Clone,
{
    let table = ClockTable::new(leaves.clone().map(|l| l.clock));
    let census = Census::of(&table, leaves.clone());
    message_len_with(header, leaves, &table, &census)
}

/// What one pass over a message's leaves finds: the size of each section and the default ref.
#[derive(Debug, Clone, Copy)]
pub(super) struct Census {
    pub(super) desired: usize,
    pub(super) reported: usize,
    pub(super) default: Option<u64>,
}

impl Census {
    pub(super) fn of<I, L>(table: &ClockTable<I>, leaves: L) -> Self
    where
        I: Iterator<Item = (u64, u32)> + Clone,
        L: Iterator<Item = LeafCost>,
    {
        let (mut desired, mut reported) = (0usize, 0usize);
        let mut default = DefaultRef::default();
        for l in leaves {
            match l.section {
                Section::Desired => desired = desired.saturating_add(1),
                Section::Reported => reported = reported.saturating_add(1),
            }
            if !l.array {
                default.add(table.reference(l.clock, l.flags));
            }
        }
        Self {
            desired,
            reported,
            default: default.choose(),
        }
    }
}

/// Exact encoded length of a message with these leaves, clock table and census.
pub(super) fn message_len_with<I, C>(
    header: &Header<'_>,
    mut leaves: I,
    table: &ClockTable<C>,
    census: &Census,
) -> usize
where
    I: Iterator<Item = LeafCost>,
    C: Iterator<Item = (u64, u32)> + Clone,
{
    measure(
        header,
        &mut |f| leaves.by_ref().for_each(f),
        (&table.index, &table.source),
        census,
    )
}

/// Calls its argument with every leaf of a message.
pub(super) type LeafScan<'s> = dyn FnMut(&mut dyn FnMut(LeafCost)) + 's;

/// [`message_len_with`], compiled once.
#[inline(never)]
pub(super) fn measure(
    header: &Header<'_>,
    leaves: &mut LeafScan<'_>,
    (index, source): (&ClockIndex, &dyn ClockScan),
    census: &Census,
) -> usize {
    let k = index.len(source);
    let (nd, nr, default) = (census.desired, census.reported, census.default);
    let mut fields = 1u64;
    let mut len = 2usize;
    let mut add = |present: bool, n: usize| {
        if present {
            fields = fields.saturating_add(1);
            len = len.saturating_add(1).saturating_add(n);
        }
    };
    add(header.version.is_some(), header.version.map_or(0, uint_len));
    add(
        header.client_token.is_some(),
        header.client_token.map_or(0, |t| text_len(t.len())),
    );
    let clocks = index
        .distinct(source)
        .map(|(t, n)| uint_len(t).saturating_add(uint_len(u64::from(n))))
        .fold(
            uint_len(
                (k as u64)
                    .saturating_mul(2)
                    .saturating_add(u64::from(default.is_some())),
            )
            .saturating_add(default.map_or(0, uint_len)),
            usize::saturating_add,
        );
    add(k > 0, clocks);
    add(nd > 0, uint_len(nd as u64));
    add(nr > 0, uint_len(nr as u64));
    let mut entries = 0usize;
    leaves(&mut |l| {
        let reference = index.reference(source, l.clock, l.flags);
        let leaf = if is_bare(default, reference, l.array) {
            l.value
        } else {
            l.value
                .saturating_add(1)
                .saturating_add(uint_len(reference))
        };
        entries = entries.saturating_add(text_len(l.key).saturating_add(leaf));
    });
    len.saturating_add(entries).saturating_add(uint_len(fields))
}

/// The clock table and the default ref of a message with these sections.
pub(super) fn prepare<'a, D, R>(
    desired: &D,
    reported: &R,
) -> (
    ClockTable<impl Iterator<Item = (u64, u32)> + Clone + use<'a, D, R>>,
    Option<u64>,
)
where
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
{
    let clock = |(_, _, s): Item<'a>| (s.time, s.node.0);
    let table = ClockTable::new(
        desired
            .clone()
            .map(clock)
            .chain(reported.clone().map(clock)),
    );
    let mut default = DefaultRef::default();
    let mut add = |(_, value, s): Item<'a>| {
        if !is_array(value) {
            default.add(table.reference((s.time, s.node.0), flags(s)));
        }
    };
    desired.clone().for_each(&mut add);
    reported.clone().for_each(&mut add);
    (table, default.choose())
}

pub(super) fn encode_parts<'a, W, D, R, C>(
    e: &mut Encoder<W>,
    header: &Header<'_>,
    (table, default): (&ClockTable<C>, Option<u64>),
    desired: D,
    reported: R,
) -> Result<(), minicbor::encode::Error<W::Error>>
where
    W: minicbor::encode::Write,
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
    C: Iterator<Item = (u64, u32)> + Clone,
{
    let k = table.len() as u64;
    let nd = desired.clone().count() as u64;
    let nr = reported.clone().count() as u64;
    let fields = [
        true,
        header.version.is_some(),
        header.client_token.is_some(),
        k > 0,
        nd > 0,
        nr > 0,
    ]
    .iter()
    .filter(|present| **present)
    .count() as u64;
    e.map(fields)?.u8(0)?.u8(header.kind.code())?;
    if let Some(v) = header.version {
        e.u8(1)?.u64(v)?;
    }
    if let Some(t) = header.client_token {
        e.u8(2)?.str(t)?;
    }
    if k > 0 {
        e.u8(3)?.array(
            k.saturating_mul(2)
                .saturating_add(u64::from(default.is_some())),
        )?;
        if let Some(reference) = default {
            e.u64(reference)?;
        }
        for (time, node) in table.distinct() {
            e.u64(time)?.u32(node)?;
        }
    }
    if nd > 0 {
        e.u8(4)?.map(nd)?;
        for item in desired {
            encode_item(e, table, default, item)?;
        }
    }
    if nr > 0 {
        e.u8(5)?.map(nr)?;
        for item in reported {
            encode_item(e, table, default, item)?;
        }
    }
    Ok(())
}

pub(super) fn encode_item<W: minicbor::encode::Write, I: Iterator<Item = (u64, u32)> + Clone>(
    e: &mut Encoder<W>,
    table: &ClockTable<I>,
    default: Option<u64>,
    (path, value, stamp): Item<'_>,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    let reference = table.reference((stamp.time, stamp.node.0), flags(stamp));
    e.str(path.as_str())?;
    if is_bare(default, reference, is_array(value)) {
        encode_value(e, value)?;
    } else {
        e.array(2)?;
        encode_value(e, value)?;
        e.u64(reference)?;
    }
    Ok(())
}

/// Exact encoded length of a message.
pub fn encoded_len<'a, D, R>(header: &Header<'_>, desired: D, reported: R) -> usize
where
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
{
    let (table, default) = prepare(&desired, &reported);
    prepared_len(header, (&table, default), desired, reported)
}

/// Exact encoded length of a message whose clock table and default ref are prepared.
pub(super) fn prepared_len<'a, D, R, C>(
    header: &Header<'_>,
    (table, default): (&ClockTable<C>, Option<u64>),
    desired: D,
    reported: R,
) -> usize
where
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
    C: Iterator<Item = (u64, u32)> + Clone,
{
    let census = Census {
        desired: desired.clone().count(),
        reported: reported.clone().count(),
        default,
    };
    let cost = |section| move |(p, v, s): Item<'a>| LeafCost::of(section, p, v, s);
    let leaves = desired
        .map(cost(Section::Desired))
        .chain(reported.map(cost(Section::Reported)));
    message_len_with(header, leaves, table, &census)
}

/// Encodes a message at the start of `buf`, returning the bytes written. The length is
/// checked first, so a short buffer reports the size it needs and nothing is half-written.
pub fn encode_into<'a, D, R>(
    header: &Header<'_>,
    desired: D,
    reported: R,
    buf: &mut [u8],
) -> Result<usize, EncodeError>
where
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
{
    let (table, default) = prepare(&desired, &reported);
    let leaves = desired
        .clone()
        .count()
        .saturating_add(reported.clone().count());
    // The exact length is a pass over every leaf: measure only when the buffer might be
    // short (usual buffers hold the largest message of their leaf count).
    let needed = || prepared_len(header, (&table, default), desired.clone(), reported.clone());
    let available = buf.len();
    if available < length_bound(header, leaves) {
        let needed = needed();
        if needed > available {
            return Err(EncodeError::BufferTooSmall { needed, available });
        }
    }
    let mut e = Encoder::new(SliceWriter { buf, pos: 0 });
    match encode_parts(
        &mut e,
        header,
        (&table, default),
        desired.clone(),
        reported.clone(),
    ) {
        Ok(()) => Ok(e.into_writer().pos),
        // Unreachable while `length_bound` bounds every message; an error, not a panic.
        Err(_) => Err(EncodeError::BufferTooSmall {
            needed: needed(),
            available,
        }),
    }
}

/// An upper bound of the encoded length of a message of `leaves` leaves, from the header
/// and the count alone: every leaf at its largest (the longest path, the largest value, a
/// reference of 9 bytes and a clock of its own in the table, 9 + 5 bytes).
pub(super) fn length_bound(header: &Header<'_>, leaves: usize) -> usize {
    pub(super) const KEY: usize =
        uint_len(crate::path::PATH_CAPACITY as u64) + crate::path::PATH_CAPACITY;
    pub(super) const TEXT: usize =
        uint_len(crate::value::TEXT_CAPACITY as u64) + crate::value::TEXT_CAPACITY;
    pub(super) const VALUE: usize = if TEXT > crate::value::ARRAY_CAPACITY {
        if TEXT > 9 { TEXT } else { 9 }
    } else if crate::value::ARRAY_CAPACITY > 9 {
        crate::value::ARRAY_CAPACITY
    } else {
        9
    };
    pub(super) const LEAF: usize = KEY + 1 + VALUE + 9 + 9 + 5;
    // Map head, kind, version, clock table head and default, both section heads.
    pub(super) const FIXED: usize = 1 + 2 + (1 + 9) + (1 + 9 + 9) + 2 * (1 + 9);
    let token = header
        .client_token
        .map_or(0, |t| 1usize.saturating_add(text_len(t.len())));
    FIXED
        .saturating_add(token)
        .saturating_add(leaves.saturating_mul(LEAF))
}

/// The writes of one section in canonical path order, whatever order the slice has.
#[derive(Debug, Clone)]
pub struct Sorted<'a> {
    writes: &'a [Write],
    section: Section,
    last: Option<&'a Path>,
}

impl<'a> Sorted<'a> {
    /// Iterates `writes` of `section` by ascending path (duplicates once).
    pub const fn new(writes: &'a [Write], section: Section) -> Self {
        Self {
            writes,
            section,
            last: None,
        }
    }
}

impl<'a> Iterator for Sorted<'a> {
    type Item = Item<'a>;
    fn next(&mut self) -> Option<Item<'a>> {
        let last = self.last;
        let next = self
            .writes
            .iter()
            .filter(|w| w.section == self.section && last.is_none_or(|l| w.path > *l))
            .min_by(|a, b| a.path.cmp(&b.path))?;
        self.last = Some(&next.path);
        Some((&next.path, &next.value, &next.stamp))
    }
}

/// Encodes a message carrying `writes` (any order) at the start of `buf`.
pub fn encode_writes(
    header: &Header<'_>,
    writes: &[Write],
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_into(
        header,
        Sorted::new(writes, Section::Desired),
        Sorted::new(writes, Section::Reported),
        buf,
    )
}

/// Encodes a message carrying `writes` into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_writes_to_vec(
    header: &Header<'_>,
    writes: &[Write],
) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let d = Sorted::new(writes, Section::Desired);
    let r = Sorted::new(writes, Section::Reported);
    let mut out = alloc::vec![0u8; encoded_len(header, d.clone(), r.clone())];
    let n = encode_into(header, d, r, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Leaves of a store section as encoder items.
pub(crate) fn leaf_item<'a>((path, leaf): (&'a Path, &'a Leaf)) -> Item<'a> {
    (path, &leaf.value, &leaf.stamp)
}
