//! Canonical CBOR: the device wire format of documents, updates and notifications.
//!
//! Every message is one map with integer keys in ascending order; absent fields and empty
//! sections are omitted, so equal content encodes to equal bytes:
//!
//! | key | field | |
//! |---|---|---|
//! | 0 | kind | 0 update, 1 accepted, 2 delta, 3 document |
//! | 1 | version | the expected version of an update; the document version otherwise |
//! | 2 | client token | text, at most 64 bytes |
//! | 3 | clocks | `[default?, time₀, node₀, time₁, node₁, …]`: the distinct HLC timestamps of the leaves, ascending, after the optional default ref (present exactly when the array's length is odd) |
//! | 4 | desired | map of path text → leaf, in canonical path order |
//! | 5 | reported | same |
//!
//! A leaf is `[value, ref]` with `ref = clock_index << 3 | origin << 2 | policy`; a removal
//! (tombstone) is a leaf whose value is `null`. Leaves written by one update share one HLC
//! timestamp, so the table writes each timestamp once: this is what makes the encoding a
//! third of AWS's JSON.
//!
//! **Default ref.** A leaf whose ref equals the message's default ref and whose value is not
//! an array is written as the bare value instead of `[value, ref]` (2 bytes less, more for a
//! long ref). Array values are CBOR arrays, so they always keep the `[value, ref]` form, and
//! a leaf is bare exactly when it is not a CBOR array. A bare `null` is a removal stamped
//! with the default ref, exactly as `[null, default]` would be, so removals stay
//! unambiguous.
//!
//! The encoder picks the default from the content alone: among the 8 smallest distinct refs
//! of leaves that can be bare, the one that saves the most bytes
//! (`count × (1 + len(ref)) − len(ref)`, `len` being the CBOR length of the integer), ties to
//! the smallest ref; no default when no leaf can be bare. Every eligible leaf is then bare.
//! So equal content still encodes to equal bytes, a default always makes the message shorter,
//! and it is the best choice whenever a message has at most 8 distinct refs (found in one
//! pass with fixed storage). The default leads the clock table (key 3) rather than having a
//! key of its own: it must precede the sections (keys 4 and 5) for streaming decoding, keys
//! 0–3 are taken, and the odd length costs no byte where a key would cost one. Messages
//! without a default are encoded exactly as before this form existed.
//!
//! The decoder accepts both forms (a bare leaf only when the message has a default), rejects
//! a default whose clock index is out of range and leaf arrays of other lengths or of
//! indefinite length.
//!
//! Integers use their shortest form; floats are 32-bit when exact, else 64-bit. Decoding
//! checks order and bounds and never panics.

use iot_core::codec::{DecodeError, EncodeError};
use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;
use minicbor::{Decoder, Encoder};

use crate::path::Path;
use crate::policy::CLIENT_TOKEN_CAPACITY;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::{Leaf, Section};
use crate::update::Write;
use crate::value::{Value, decode_value, encode_value, value_len};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Kind {
    /// A client's update request.
    Update = 0,
    /// The leaves an accepted update touched, at the new version (the ack).
    Accepted = 1,
    /// Desired leaves that differ from reported, at the current version.
    Delta = 2,
    /// The whole document.
    Document = 3,
}

impl Kind {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The kind for a wire code.
    pub const fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Update,
            1 => Self::Accepted,
            2 => Self::Delta,
            3 => Self::Document,
            _ => return None,
        })
    }
}

/// The non-leaf fields of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header<'a> {
    /// What the message is.
    pub kind: Kind,
    /// Expected version (updates, optional) or document version (everything else).
    pub version: Option<u64>,
    /// The client token, echoed from the update.
    pub client_token: Option<&'a str>,
}

/// Somewhere decoded writes go: a fixed-capacity vector on devices, a `Vec` on backends.
pub trait WriteSink {
    /// Appends a write; `Err(SinkFull)` when full.
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull>;
}

/// A [`WriteSink`] is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SinkFull;

impl<const N: usize> WriteSink for heapless::Vec<Write, N> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write).map_err(|_| SinkFull)
    }
}

impl WriteSink for heapless::VecView<Write> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write).map_err(|_| SinkFull)
    }
}

#[cfg(feature = "alloc")]
impl WriteSink for alloc::vec::Vec<Write> {
    fn push_write(&mut self, write: Write) -> Result<(), SinkFull> {
        self.push(write);
        Ok(())
    }
}

/// A leaf as the encoder sees it.
pub type Item<'a> = (&'a Path, &'a Value, &'a Stamp);

pub(crate) const fn uint_len(n: u64) -> usize {
    if n < 24 {
        1
    } else if n <= 0xff {
        2
    } else if n <= 0xffff {
        3
    } else if n <= 0xffff_ffff {
        5
    } else {
        9
    }
}

const fn flags(stamp: &Stamp) -> u8 {
    stamp.policy.code() | (stamp.origin.code() << 2)
}

/// Array values are CBOR arrays: they are never written bare.
const fn is_array(value: &Value) -> bool {
    matches!(value, Value::Array(_))
}

/// Whether a leaf with this ref is written as its bare value.
fn is_bare(default: Option<u64>, reference: u64, array: bool) -> bool {
    !array && default == Some(reference)
}

pub(crate) fn text_len(len: usize) -> usize {
    uint_len(len as u64).saturating_add(len)
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
trait ClockScan {
    /// Calls `f` with every clock of the source, in the source's order.
    fn scan(&self, f: &mut dyn FnMut((u64, u32)));
}

impl<I: Iterator<Item = (u64, u32)> + Clone> ClockScan for I {
    fn scan(&self, f: &mut dyn FnMut((u64, u32))) {
        self.clone().for_each(f);
    }
}

/// Distinct values of a scannable source in ascending order, without storage.
struct Distinct<'t> {
    source: &'t dyn ClockScan,
    last: Option<(u64, u32)>,
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
enum TableClocks<'t> {
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
const FAST_CLOCKS: usize = 32;

/// The sorted table of distinct HLC timestamps of a message.
#[derive(Debug, Clone)]
struct ClockTable<I> {
    source: I,
    index: ClockIndex,
}

/// The part of a [`ClockTable`] that does not depend on its source's type (compiled once).
#[derive(Debug, Clone)]
struct ClockIndex {
    /// The distinct clocks in ascending order, unless there are more than [`FAST_CLOCKS`].
    fast: heapless::Vec<(u64, u32), FAST_CLOCKS>,
    overflow: bool,
}

impl ClockIndex {
    #[inline(never)]
    fn of(source: &dyn ClockScan) -> Self {
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

    fn distinct<'t>(&'t self, source: &'t dyn ClockScan) -> TableClocks<'t> {
        if self.overflow {
            TableClocks::Scan(Distinct { source, last: None })
        } else {
            TableClocks::Fast(self.fast.iter())
        }
    }

    fn len(&self, source: &dyn ClockScan) -> usize {
        if self.overflow {
            self.distinct(source).count()
        } else {
            self.fast.len()
        }
    }

    fn reference(&self, source: &dyn ClockScan, clock: (u64, u32), flags: u8) -> u64 {
        (self.rank(source, clock) as u64)
            .saturating_mul(8)
            .saturating_add(u64::from(flags))
    }

    #[inline(never)]
    fn rank(&self, source: &dyn ClockScan, clock: (u64, u32)) -> usize {
        if self.overflow {
            self.distinct(source).take_while(|c| *c < clock).count()
        } else {
            self.fast.binary_search(&clock).unwrap_or_else(|at| at)
        }
    }
}

impl<I: Iterator<Item = (u64, u32)> + Clone> ClockTable<I> {
    fn new(source: I) -> Self {
        let index = ClockIndex::of(&source);
        Self { source, index }
    }

    fn distinct(&self) -> TableClocks<'_> {
        self.index.distinct(&self.source)
    }

    fn len(&self) -> usize {
        self.index.len(&self.source)
    }

    fn reference(&self, clock: (u64, u32), flags: u8) -> u64 {
        self.index.reference(&self.source, clock, flags)
    }
}

/// How many of the smallest distinct refs compete to be the default ref.
const DEFAULT_CANDIDATES: usize = 8;

/// Bytes saved by writing `count` leaves of ref `reference` bare, net of the default's own
/// bytes in the clock table (the table's length prefix never grows: `2k` and `2k + 1` have the
/// same CBOR head length, as every head-length boundary is even).
fn saving(reference: u64, count: u32) -> usize {
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
struct DefaultRef {
    smallest: heapless::Vec<(u64, u32), DEFAULT_CANDIDATES>,
}

impl DefaultRef {
    fn add(&mut self, reference: u64) {
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

    fn choose(&self) -> Option<u64> {
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
struct Census {
    desired: usize,
    reported: usize,
    default: Option<u64>,
}

impl Census {
    fn of<I, L>(table: &ClockTable<I>, leaves: L) -> Self
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
fn message_len_with<I, C>(
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
type LeafScan<'s> = dyn FnMut(&mut dyn FnMut(LeafCost)) + 's;

/// [`message_len_with`], compiled once.
#[inline(never)]
fn measure(
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
fn prepare<'a, D, R>(
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

fn encode_parts<'a, W, D, R, C>(
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

fn encode_item<W: minicbor::encode::Write, I: Iterator<Item = (u64, u32)> + Clone>(
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
fn prepared_len<'a, D, R, C>(
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
fn length_bound(header: &Header<'_>, leaves: usize) -> usize {
    const KEY: usize = uint_len(crate::path::PATH_CAPACITY as u64) + crate::path::PATH_CAPACITY;
    const TEXT: usize = uint_len(crate::value::TEXT_CAPACITY as u64) + crate::value::TEXT_CAPACITY;
    const VALUE: usize = if TEXT > crate::value::ARRAY_CAPACITY {
        if TEXT > 9 { TEXT } else { 9 }
    } else if crate::value::ARRAY_CAPACITY > 9 {
        crate::value::ARRAY_CAPACITY
    } else {
        9
    };
    const LEAF: usize = KEY + 1 + VALUE + 9 + 9 + 5;
    // Map head, kind, version, clock table head and default, both section heads.
    const FIXED: usize = 1 + 2 + (1 + 9) + (1 + 9 + 9) + 2 * (1 + 9);
    let token = header
        .client_token
        .map_or(0, |t| 1usize.saturating_add(text_len(t.len())));
    FIXED
        .saturating_add(token)
        .saturating_add(leaves.saturating_mul(LEAF))
}

/// A minicbor writer into a byte slice. CBOR is written in pieces of 1 to 9 bytes (heads,
/// numbers) and short texts; each of those sizes is copied as a fixed-size block, which
/// compiles to a few moves instead of a call into `memcpy` per piece.
struct SliceWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

/// The slice has no room left.
#[derive(Debug)]
struct EndOfSlice;

fn copy_block<const K: usize>(dst: &mut [u8], src: &[u8]) -> Result<(), EndOfSlice> {
    let d = <&mut [u8; K]>::try_from(dst).map_err(|_| EndOfSlice)?;
    *d = <[u8; K]>::try_from(src).map_err(|_| EndOfSlice)?;
    Ok(())
}

impl minicbor::encode::Write for SliceWriter<'_> {
    type Error = EndOfSlice;
    fn write_all(&mut self, data: &[u8]) -> Result<(), EndOfSlice> {
        let end = self.pos.checked_add(data.len()).ok_or(EndOfSlice)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(EndOfSlice)?;
        match data.len() {
            1 => copy_block::<1>(dst, data)?,
            2 => copy_block::<2>(dst, data)?,
            3 => copy_block::<3>(dst, data)?,
            5 => copy_block::<5>(dst, data)?,
            9 => copy_block::<9>(dst, data)?,
            _ => dst.copy_from_slice(data),
        }
        self.pos = end;
        Ok(())
    }
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

/// Decodes a message, pushing its writes into `sink` (desired first, each section in path
/// order). Rejects non-canonical key order, unknown keys, empty sections, duplicate paths,
/// trailing bytes and anything over capacity. Never panics.
pub fn decode_message<'b, K: WriteSink + ?Sized>(
    bytes: &'b [u8],
    sink: &mut K,
) -> Result<Header<'b>, DecodeError> {
    let mut d = Decoder::new(bytes);
    let n = d.map()?.ok_or(DecodeError::Malformed)?;
    let mut last_key = None;
    let mut kind = None;
    let mut version = None;
    let mut client_token = None;
    let mut clocks = Clocks::default();
    for _ in 0..n {
        let key = d.u64()?;
        if last_key.is_some_and(|l| key <= l) {
            return Err(DecodeError::Malformed);
        }
        last_key = Some(key);
        match key {
            0 => kind = Some(Kind::from_code(d.u64()?).ok_or(DecodeError::UnknownVariant)?),
            1 => version = Some(d.u64()?),
            2 => {
                let t = d.str()?;
                if t.len() > CLIENT_TOKEN_CAPACITY {
                    return Err(DecodeError::CapacityExceeded);
                }
                client_token = Some(t);
            }
            3 => clocks = Clocks::decode(&mut d)?,
            4 => decode_section(&mut d, &clocks, Section::Desired, sink)?,
            5 => decode_section(&mut d, &clocks, Section::Reported, sink)?,
            _ => return Err(DecodeError::Malformed),
        }
    }
    if d.position() != bytes.len() {
        return Err(DecodeError::TrailingBytes);
    }
    let kind = kind.ok_or(DecodeError::MissingField)?;
    if kind != Kind::Update && version.is_none() {
        return Err(DecodeError::MissingField);
    }
    Ok(Header {
        kind,
        version,
        client_token,
    })
}

/// Where the clock table sits in the input, validated, for lookups by index; and the
/// message's default ref (its clock index checked), if it has one.
#[derive(Debug, Default, Clone, Copy)]
struct Clocks<'b> {
    input: &'b [u8],
    start: usize,
    len: u64,
    default: Option<u64>,
}

impl<'b> Clocks<'b> {
    fn decode(d: &mut Decoder<'b>) -> Result<Self, DecodeError> {
        let n = d.array()?.ok_or(DecodeError::Malformed)?;
        // An odd length: the first item is the default ref.
        let default = if n % 2 == 1 { Some(d.u64()?) } else { None };
        if n / 2 == 0 {
            return Err(DecodeError::Malformed);
        }
        let start = d.position();
        let mut last: Option<(u64, u32)> = None;
        for _ in 0..n / 2 {
            let clock = (d.u64()?, d.u32()?);
            if last.is_some_and(|l| clock <= l) {
                return Err(DecodeError::Malformed);
            }
            last = Some(clock);
        }
        if default.is_some_and(|r| r >> 3 >= n / 2) {
            return Err(DecodeError::InvalidValue);
        }
        Ok(Self {
            input: d.input(),
            start,
            len: n / 2,
            default,
        })
    }

    /// The stamp a ref stands for; fails for a clock index out of range or unknown flags.
    fn stamp(&self, reference: u64) -> Result<Stamp, DecodeError> {
        let (time, node) = self.get(reference >> 3)?;
        let flags = reference & 0b111;
        let policy = Policy::from_code((flags & 0b11) as u8).ok_or(DecodeError::InvalidValue)?;
        let origin = Origin::from_code((flags >> 2) as u8).ok_or(DecodeError::InvalidValue)?;
        Ok(Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(node),
            },
            policy,
            origin,
        ))
    }

    fn get(&self, index: u64) -> Result<(u64, u32), DecodeError> {
        if index >= self.len {
            return Err(DecodeError::InvalidValue);
        }
        let mut d = Decoder::new(self.input);
        d.set_position(self.start);
        for _ in 0..index {
            d.u64()?;
            d.u32()?;
        }
        Ok((d.u64()?, d.u32()?))
    }
}

fn decode_section<K: WriteSink + ?Sized>(
    d: &mut Decoder<'_>,
    clocks: &Clocks<'_>,
    section: Section,
    sink: &mut K,
) -> Result<(), DecodeError> {
    let n = d.map()?.ok_or(DecodeError::Malformed)?;
    if n == 0 {
        return Err(DecodeError::Malformed);
    }
    let mut last: Option<Path> = None;
    for _ in 0..n {
        let path = Path::new(d.str()?).map_err(|_| DecodeError::InvalidValue)?;
        if last.as_ref().is_some_and(|l| path <= *l) {
            return Err(DecodeError::Malformed);
        }
        // `[value, ref]` is a CBOR array (major type 4); anything else is a bare value with
        // the default ref.
        let wrapped = d.input().get(d.position()).is_some_and(|b| b >> 5 == 4);
        if wrapped && d.array()? != Some(2) {
            return Err(DecodeError::Malformed);
        }
        let value = decode_value(d)?;
        let reference = if wrapped {
            d.u64()?
        } else {
            clocks.default.ok_or(DecodeError::Malformed)?
        };
        let stamp = clocks.stamp(reference)?;
        sink.push_write(Write::new(section, path.clone(), value, stamp))
            .map_err(|_| DecodeError::CapacityExceeded)?;
        last = Some(path);
    }
    Ok(())
}

/// Leaves of a store section as encoder items.
pub(crate) fn leaf_item<'a>((path, leaf): (&'a Path, &'a Leaf)) -> Item<'a> {
    (path, &leaf.value, &leaf.stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Scalar;

    fn w(section: Section, path: &str, value: Value, time: u64) -> Write {
        Write::new(
            section,
            Path::new(path).unwrap(),
            value,
            Stamp::new(
                HlcTimestamp {
                    time,
                    node: NodeId(300),
                },
                Policy::DeviceWins,
                Origin::Device,
            ),
        )
    }

    #[test]
    fn messages_round_trip_in_canonical_order() {
        let writes = [
            w(Section::Reported, "zz", Value::Int(-5), 1 << 40),
            w(Section::Desired, "b.c", Value::text("on").unwrap(), 7),
            w(Section::Desired, "a", Value::Null, 8),
            w(
                Section::Reported,
                "arr",
                Value::array(&[Scalar::Bool(true), Scalar::Float(0.1)]).unwrap(),
                9,
            ),
        ];
        let header = Header {
            kind: Kind::Update,
            version: Some(4),
            client_token: Some("tok-1"),
        };
        let mut buf = [0u8; 256];
        let n = encode_writes(&header, &writes, &mut buf).unwrap();
        let mut out: heapless::Vec<Write, 8> = heapless::Vec::new();
        let back = decode_message(&buf[..n], &mut out).unwrap();
        assert_eq!(back, header);
        let order: std::vec::Vec<&str> = out.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(order, ["a", "b.c", "zz", "arr"]);
        for x in &writes {
            assert!(out.contains(x));
        }
        // Re-encoding the decoded writes gives the same bytes.
        let mut again = [0u8; 256];
        let m = encode_writes(&back, &out, &mut again).unwrap();
        assert_eq!(&buf[..n], &again[..m]);
        // The size formula agrees with the encoder.
        let costs = writes
            .iter()
            .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
        assert_eq!(message_len(&header, costs), n);
    }

    /// The bound that lets `encode_into` skip measuring holds for the largest messages,
    /// and a buffer below the bound (measured first) gets the same bytes as one above it.
    #[test]
    fn largest_messages_stay_within_the_length_bound() {
        let key = |i: usize| {
            let mut p = std::format!("{i:02}");
            while p.len() < crate::path::PATH_CAPACITY {
                p.push('k');
            }
            p
        };
        let text = "t".repeat(crate::value::TEXT_CAPACITY);
        let token = "x".repeat(crate::policy::CLIENT_TOKEN_CAPACITY);
        for n in 0..=16usize {
            let writes: std::vec::Vec<Write> = (0..n)
                .map(|i| {
                    let section = if i % 2 == 0 {
                        Section::Desired
                    } else {
                        Section::Reported
                    };
                    let mut x = w(section, &key(i), Value::text(&text).unwrap(), 0);
                    x.stamp.time = u64::MAX - i as u64;
                    x.stamp.node = NodeId(u32::MAX - i as u32);
                    x
                })
                .collect();
            let header = Header {
                kind: Kind::Document,
                version: Some(u64::MAX),
                client_token: Some(&token),
            };
            let mut big = std::vec![0u8; 4096];
            let len = encode_writes(&header, &writes, &mut big).unwrap();
            assert!(len <= length_bound(&header, n), "{n} leaves: {len} bytes");
            let mut exact = std::vec![0u8; len];
            assert_eq!(encode_writes(&header, &writes, &mut exact), Ok(len));
            assert_eq!(exact.as_slice(), &big[..len]);
            let mut short = std::vec![0u8; len - 1];
            assert_eq!(
                encode_writes(&header, &writes, &mut short),
                Err(EncodeError::BufferTooSmall {
                    needed: len,
                    available: len - 1
                })
            );
        }
    }

    #[test]
    fn more_distinct_clocks_than_the_fast_path_holds() {
        let names: std::vec::Vec<std::string::String> =
            (0..40).map(|i| std::format!("k{i}")).collect();
        let writes: std::vec::Vec<Write> = names
            .iter()
            .enumerate()
            .map(|(i, n)| w(Section::Reported, n, Value::Int(i as i64), 1_000 - i as u64))
            .collect();
        let header = Header {
            kind: Kind::Document,
            version: Some(9),
            client_token: None,
        };
        let mut buf = [0u8; 2048];
        let n = encode_writes(&header, &writes, &mut buf).unwrap();
        let costs = writes
            .iter()
            .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
        assert_eq!(message_len(&header, costs), n);
        let mut out: heapless::Vec<Write, 40> = heapless::Vec::new();
        decode_message(&buf[..n], &mut out).unwrap();
        for x in &writes {
            assert!(out.contains(x));
        }
        // Past both fast paths (32 clocks, 8 default candidates): every ref is used once, so
        // the default is the smallest (clock 0), and only that leaf is bare.
        let mut costs = writes
            .iter()
            .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
        let table = ClockTable::new(costs.clone().map(|l| l.clock));
        assert!(table.index.overflow);
        let chosen = Census::of(&table, costs.clone()).default;
        let last = costs.find(|l| l.clock.0 == 961).unwrap();
        assert_eq!(chosen, Some(table.reference(last.clock, last.flags)));
        assert_eq!(chosen, Some(5));
    }

    fn stamp(time: u64, node: u32, policy: Policy, origin: Origin) -> Stamp {
        Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(node),
            },
            policy,
            origin,
        )
    }

    fn decode_all(bytes: &[u8]) -> Result<heapless::Vec<Write, 8>, DecodeError> {
        let mut out = heapless::Vec::new();
        decode_message(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn leaves_with_the_default_ref_are_bare_values() {
        // ref 5 = clock 0, origin device (1 << 2), policy device-wins (1).
        let s = stamp(5, 1, Policy::DeviceWins, Origin::Device);
        let p = |x: &str| Path::new(x).unwrap();
        let array = Value::array(&[Scalar::Int(1)]).unwrap();
        let writes = [
            Write::new(Section::Reported, p("a"), Value::Int(1), s),
            Write::new(Section::Reported, p("b"), Value::Null, s),
            Write::new(Section::Reported, p("c"), array.clone(), s),
        ];
        let header = Header {
            kind: Kind::Update,
            version: None,
            client_token: None,
        };
        let mut buf = [0u8; 64];
        let n = encode_writes(&header, &writes, &mut buf).unwrap();
        #[rustfmt::skip]
        let expected = [
            0xa3, 0x00, 0x00,
            0x03, 0x83, 0x05, 0x05, 0x01, // clocks: default ref 5, then (5, node 1)
            0x05, 0xa3,
            0x61, b'a', 0x01, // bare 1
            0x61, b'b', 0xf6, // bare null: a removal with the default ref
            0x61, b'c', 0x82, 0x81, 0x01, 0x05, // an array keeps [value, ref]
        ];
        assert_eq!(&buf[..n], &expected[..]);
        let costs = writes
            .iter()
            .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
        assert_eq!(message_len(&header, costs), n);
        let out = decode_all(&buf[..n]).unwrap();
        assert_eq!(&out[..], &writes[..]);

        // The wrapped form of a default-ref leaf decodes to the same leaf.
        #[rustfmt::skip]
        let wrapped = [
            0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa3,
            0x61, b'a', 0x82, 0x01, 0x05,
            0x61, b'b', 0x82, 0xf6, 0x05,
            0x61, b'c', 0x82, 0x81, 0x01, 0x05,
        ];
        assert_eq!(&decode_all(&wrapped).unwrap()[..], &writes[..]);
    }

    #[test]
    fn bare_leaves_need_a_valid_default() {
        for (bytes, error) in [
            // A bare leaf without a default.
            (
                &[
                    0xa3, 0x00, 0x00, 0x03, 0x82, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x01,
                ][..],
                DecodeError::Malformed,
            ),
            // A bare leaf without any clock table.
            (
                &[0xa2, 0x00, 0x00, 0x05, 0xa1, 0x61, b'a', 0x01],
                DecodeError::Malformed,
            ),
            // A default whose clock index (1) is out of range.
            (
                &[
                    0xa3, 0x00, 0x00, 0x03, 0x83, 0x0d, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x01,
                ],
                DecodeError::InvalidValue,
            ),
            // A default without clocks.
            (
                &[0xa2, 0x00, 0x00, 0x03, 0x81, 0x05],
                DecodeError::Malformed,
            ),
            // An indefinite-length leaf array.
            (
                &[
                    0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x9f,
                    0x01, 0x05, 0xff,
                ],
                DecodeError::Malformed,
            ),
            // A leaf array of the wrong length.
            (
                &[
                    0xa3, 0x00, 0x00, 0x03, 0x83, 0x05, 0x05, 0x01, 0x05, 0xa1, 0x61, b'a', 0x83,
                    0x01, 0x05, 0x05,
                ],
                DecodeError::Malformed,
            ),
        ] {
            assert_eq!(decode_all(bytes), Err(error), "{bytes:x?}");
        }
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let mut out: heapless::Vec<Write, 1> = heapless::Vec::new();
        // Missing kind, unknown kind, keys out of order, trailing bytes.
        for bytes in [
            &[0xa0][..],
            &[0xa2, 0x00, 0x09, 0x01, 0x00],
            &[0xa2, 0x01, 0x00, 0x00, 0x01],
            &[0xa2, 0x00, 0x01, 0x01, 0x00, 0x00],
            &[0xa1, 0x00, 0x01],
        ] {
            assert!(decode_message(bytes, &mut out).is_err(), "{bytes:x?}");
        }
        let writes = [
            w(Section::Desired, "a", Value::Int(1), 1),
            w(Section::Desired, "b", Value::Int(1), 1),
        ];
        let header = Header {
            kind: Kind::Document,
            version: Some(1),
            client_token: None,
        };
        let mut buf = [0u8; 64];
        let n = encode_writes(&header, &writes, &mut buf).unwrap();
        assert_eq!(
            decode_message(&buf[..n], &mut out),
            Err(DecodeError::CapacityExceeded)
        );
        assert!(matches!(
            encode_writes(&header, &writes, &mut buf[..3]),
            Err(EncodeError::BufferTooSmall { .. })
        ));
    }
    /// Leaves drawn from small pools of clocks and flags, so refs repeat, often exceed the 8
    /// default candidates and need two-byte refs (clock index 3 and up).
    fn any_writes() -> impl proptest::strategy::Strategy<Value = std::vec::Vec<Write>> {
        use proptest::prelude::*;
        let value = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (-1e6f64..1e6).prop_map(|f| Value::float(f).unwrap()),
            "[a-z]{0,30}".prop_map(|t| Value::text(&t).unwrap()),
            prop::collection::vec(any::<i64>(), 0..3).prop_map(|v| {
                let scalars: std::vec::Vec<Scalar<'_>> = v.into_iter().map(Scalar::Int).collect();
                Value::array(&scalars).unwrap()
            }),
        ];
        let times = [0u64, 7, 23, 24, 255, 256, 1 << 40, u64::MAX];
        let leaf = (value, 0usize..12, 0u8..4, 0u8..2);
        prop::collection::btree_map((any::<bool>(), 0u16..300), leaf, 0..24).prop_map(
            move |leaves| {
                leaves
                    .into_iter()
                    .map(|((desired, key), (value, clock, policy, origin))| {
                        let section = if desired {
                            Section::Desired
                        } else {
                            Section::Reported
                        };
                        let st = stamp(
                            times[clock % times.len()],
                            (clock / times.len()) as u32 * 1000,
                            Policy::from_code(policy).unwrap(),
                            Origin::from_code(origin).unwrap(),
                        );
                        let path = Path::new(&std::format!("k{key}")).unwrap();
                        Write::new(section, path, value, st)
                    })
                    .collect()
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// The size formula is exact, the message round-trips to the same bytes, the default
        /// follows its rule, always saves bytes, and with at most 8 refs is optimal.
        #[test]
        fn encoded_length_is_exact_and_the_default_ref_follows_its_rule(writes in any_writes()) {
            use proptest::{prop_assert, prop_assert_eq};
            let header = Header {
                kind: Kind::Document,
                version: Some(3),
                client_token: Some("t"),
            };
            let mut buf = std::vec![0u8; 4096];
            let n = encode_writes(&header, &writes, &mut buf).unwrap();
            let costs = writes
                .iter()
                .map(|x| LeafCost::of(x.section, &x.path, &x.value, &x.stamp));
            prop_assert_eq!(message_len(&header, costs.clone()), n);
            let d = Sorted::new(&writes, Section::Desired);
            let r = Sorted::new(&writes, Section::Reported);
            prop_assert_eq!(encoded_len(&header, d, r), n);

            let mut out: heapless::Vec<Write, 48> = heapless::Vec::new();
            prop_assert_eq!(decode_message(&buf[..n], &mut out), Ok(header));
            prop_assert_eq!(out.len(), writes.len());
            for x in &writes {
                prop_assert!(out.contains(x));
            }
            let mut again = std::vec![0u8; 4096];
            let m = encode_writes(&header, &out, &mut again).unwrap();
            prop_assert_eq!(&buf[..n], &again[..m]);

            let table = ClockTable::new(costs.clone().map(|l| l.clock));
            let census = Census::of(&table, costs.clone());
            let chosen = census.default;
            // The rule, by brute force: count every ref of a leaf that can be bare; among the
            // 8 smallest, the most bytes saved, ties to the smallest.
            let mut counts = std::collections::BTreeMap::<u64, u32>::new();
            for l in costs.clone().filter(|l| !l.array) {
                *counts.entry(table.reference(l.clock, l.flags)).or_default() += 1;
            }
            let model = counts
                .iter()
                .take(DEFAULT_CANDIDATES)
                .map(|(&r, &c)| (saving(r, c), core::cmp::Reverse(r)))
                .max()
                .map(|(_, core::cmp::Reverse(r))| r);
            prop_assert_eq!(chosen, model);
            let with = |default| Census { default, ..census };
            let best = message_len_with(&header, costs.clone(), &table, &census);
            prop_assert_eq!(best, n);
            // A default always saves bytes; with few refs no other choice saves more.
            let without = message_len_with(&header, costs.clone(), &table, &with(None));
            prop_assert_eq!(chosen.is_some(), best < without);
            if counts.len() <= DEFAULT_CANDIDATES {
                for &other in counts.keys() {
                    let len = message_len_with(&header, costs.clone(), &table, &with(Some(other)));
                    prop_assert!(best <= len);
                }
            }
        }
    }
}
