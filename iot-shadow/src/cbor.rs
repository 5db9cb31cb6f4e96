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
//! | 3 | clocks | `[time₀, node₀, time₁, node₁, …]`: the distinct HLC timestamps of the leaves, ascending |
//! | 4 | desired | map of path text → leaf, in canonical path order |
//! | 5 | reported | same |
//!
//! A leaf is `[value, ref]` with `ref = clock_index << 3 | origin << 2 | policy` and `null`
//! for a removal. Leaves written by one update share one HLC timestamp, so the table writes
//! each timestamp once: this is what makes the encoding a third of AWS's JSON. Integers use
//! their shortest form; floats are 32-bit when exact, else 64-bit. Decoding checks order and
//! bounds and never panics.

use iot_core::codec::{DecodeError, EncodeError};
use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;
use minicbor::encode::write::Cursor;
use minicbor::{Decoder, Encoder};

use crate::path::Path;
use crate::policy::CLIENT_TOKEN_CAPACITY;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::{Leaf, Section};
use crate::update::Write;
use crate::value::{Counter, Value, decode_value, encode_value, value_len};

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
}

impl LeafCost {
    pub(crate) fn of(section: Section, path: &Path, value: &Value, stamp: &Stamp) -> Self {
        Self {
            section,
            key: path.as_str().len(),
            value: value_len(value),
            clock: (stamp.time, stamp.node.0),
            flags: flags(stamp),
        }
    }
}

/// Distinct values of a cloneable iterator in ascending order, without storage.
#[derive(Debug, Clone)]
struct Distinct<I> {
    source: I,
    last: Option<(u64, u32)>,
}

impl<I: Iterator<Item = (u64, u32)> + Clone> Iterator for Distinct<I> {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        let last = self.last;
        let next = self
            .source
            .clone()
            .filter(|x| last.is_none_or(|l| *x > l))
            .min()?;
        self.last = Some(next);
        Some(next)
    }
}

/// Capacity of the fast path of [`ClockTable`]; larger tables are ranked by rescanning.
const FAST_CLOCKS: usize = 32;

/// The sorted table of distinct HLC timestamps of a message.
#[derive(Debug, Clone)]
struct ClockTable<I> {
    source: I,
    fast: heapless::Vec<(u64, u32), FAST_CLOCKS>,
    overflow: bool,
}

impl<I: Iterator<Item = (u64, u32)> + Clone> ClockTable<I> {
    fn new(source: I) -> Self {
        let mut fast = heapless::Vec::new();
        let mut overflow = false;
        for clock in source.clone() {
            if let Err(at) = fast.binary_search(&clock)
                && fast.insert(at, clock).is_err()
            {
                overflow = true;
                break;
            }
        }
        Self {
            source,
            fast,
            overflow,
        }
    }

    fn distinct(&self) -> Distinct<I> {
        Distinct {
            source: self.source.clone(),
            last: None,
        }
    }

    fn len(&self) -> usize {
        if self.overflow {
            self.distinct().count()
        } else {
            self.fast.len()
        }
    }

    fn rank(&self, clock: (u64, u32)) -> usize {
        if self.overflow {
            self.distinct().take_while(|c| *c < clock).count()
        } else {
            self.fast.binary_search(&clock).unwrap_or_else(|at| at)
        }
    }

    fn reference(&self, clock: (u64, u32), flags: u8) -> u64 {
        (self.rank(clock) as u64)
            .saturating_mul(8)
            .saturating_add(u64::from(flags))
    }
}

/// Exact encoded length of a message with these leaves (in any order).
pub(crate) fn message_len<I>(header: &Header<'_>, leaves: I) -> usize
where
    I: Iterator<Item = LeafCost> + Clone,
{
    let table = ClockTable::new(leaves.clone().map(|l| l.clock));
    let k = table.len();
    let nd = leaves
        .clone()
        .filter(|l| l.section == Section::Desired)
        .count();
    let nr = leaves
        .clone()
        .filter(|l| l.section == Section::Reported)
        .count();
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
    let clocks = table
        .distinct()
        .map(|(t, n)| uint_len(t).saturating_add(uint_len(u64::from(n))))
        .fold(
            uint_len((k as u64).saturating_mul(2)),
            usize::saturating_add,
        );
    add(k > 0, clocks);
    add(nd > 0, uint_len(nd as u64));
    add(nr > 0, uint_len(nr as u64));
    let entries = leaves
        .map(|l| {
            text_len(l.key)
                .saturating_add(1)
                .saturating_add(l.value)
                .saturating_add(uint_len(table.reference(l.clock, l.flags)))
        })
        .fold(0usize, usize::saturating_add);
    len.saturating_add(entries).saturating_add(uint_len(fields))
}

fn encode_parts<'a, W, D, R>(
    e: &mut Encoder<W>,
    header: &Header<'_>,
    desired: D,
    reported: R,
) -> Result<(), minicbor::encode::Error<W::Error>>
where
    W: minicbor::encode::Write,
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
        e.u8(3)?.array(k.saturating_mul(2))?;
        for (time, node) in table.distinct() {
            e.u64(time)?.u32(node)?;
        }
    }
    if nd > 0 {
        e.u8(4)?.map(nd)?;
        for item in desired {
            encode_item(e, &table, item)?;
        }
    }
    if nr > 0 {
        e.u8(5)?.map(nr)?;
        for item in reported {
            encode_item(e, &table, item)?;
        }
    }
    Ok(())
}

fn encode_item<W: minicbor::encode::Write, I: Iterator<Item = (u64, u32)> + Clone>(
    e: &mut Encoder<W>,
    table: &ClockTable<I>,
    (path, value, stamp): Item<'_>,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    e.str(path.as_str())?.array(2)?;
    encode_value(e, value)?;
    e.u64(table.reference((stamp.time, stamp.node.0), flags(stamp)))?;
    Ok(())
}

/// Exact encoded length of a message.
pub fn encoded_len<'a, D, R>(header: &Header<'_>, desired: D, reported: R) -> usize
where
    D: Iterator<Item = Item<'a>> + Clone,
    R: Iterator<Item = Item<'a>> + Clone,
{
    let mut e = Encoder::new(Counter(0));
    let _ = encode_parts(&mut e, header, desired, reported);
    e.into_writer().0
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
    let needed = encoded_len(header, desired.clone(), reported.clone());
    if needed > buf.len() {
        return Err(EncodeError::BufferTooSmall {
            needed,
            available: buf.len(),
        });
    }
    let mut e = Encoder::new(Cursor::new(buf));
    encode_parts(&mut e, header, desired, reported).map_err(|_| EncodeError::BufferTooSmall {
        needed,
        available: 0,
    })?;
    Ok(e.into_writer().position())
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
pub fn decode_message<'b, K: WriteSink>(
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

/// Where the clock table sits in the input, validated, for lookups by index.
#[derive(Debug, Default, Clone, Copy)]
struct Clocks<'b> {
    input: &'b [u8],
    start: usize,
    len: u64,
}

impl<'b> Clocks<'b> {
    fn decode(d: &mut Decoder<'b>) -> Result<Self, DecodeError> {
        let n = d.array()?.ok_or(DecodeError::Malformed)?;
        if n == 0 || n % 2 != 0 {
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
        Ok(Self {
            input: d.input(),
            start,
            len: n / 2,
        })
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

fn decode_section<K: WriteSink>(
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
        if d.array()? != Some(2) {
            return Err(DecodeError::Malformed);
        }
        let value = decode_value(d)?;
        let reference = d.u64()?;
        let (time, node) = clocks.get(reference >> 3)?;
        let flags = reference & 0b111;
        let policy = Policy::from_code((flags & 0b11) as u8).ok_or(DecodeError::InvalidValue)?;
        let origin = Origin::from_code((flags >> 2) as u8).ok_or(DecodeError::InvalidValue)?;
        let stamp = Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(node),
            },
            policy,
            origin,
        );
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
}
