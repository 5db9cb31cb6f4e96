//! The decoder: checks order and bounds and never panics.

use iot_core::codec::DecodeError;
use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;
use minicbor::Decoder;

use super::{Header, Kind, WriteSink};
use crate::path::Path;
use crate::policy::CLIENT_TOKEN_CAPACITY;
use crate::stamp::{Origin, Policy, Stamp};
use crate::store::Section;
use crate::update::Write;
use crate::value::decode_value;

/// Decodes a message, pushing its writes into `sink` (desired first, each section in path
/// order). Rejects non-canonical key order, unknown keys, empty sections, duplicate paths,
/// trailing bytes and anything over capacity. Never panics.
pub fn decode_message<'b, K: WriteSink + ?Sized>(
    bytes: &'b [u8],
    sink: &mut K,
) -> Result<Header<'b>, DecodeError> {
    decode_into(bytes, &mut Sink(sink))
}

/// Forwards to a sink of any type, so that the decoder below is compiled once for every
/// sink type (a device links one copy whatever vectors its shadows decode into).
struct Sink<'a, K: ?Sized>(&'a mut K);

impl<K: WriteSink + ?Sized> WriteSink for Sink<'_, K> {
    fn push_write(&mut self, write: Write) -> Result<(), super::SinkFull> {
        self.0.push_write(write)
    }
}

#[inline(never)]
fn decode_into<'b>(bytes: &'b [u8], sink: &mut dyn WriteSink) -> Result<Header<'b>, DecodeError> {
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
pub(super) struct Clocks<'b> {
    pub(super) input: &'b [u8],
    pub(super) start: usize,
    pub(super) len: u64,
    pub(super) default: Option<u64>,
}

impl<'b> Clocks<'b> {
    pub(super) fn decode(d: &mut Decoder<'b>) -> Result<Self, DecodeError> {
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
    pub(super) fn stamp(&self, reference: u64) -> Result<Stamp, DecodeError> {
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

    pub(super) fn get(&self, index: u64) -> Result<(u64, u32), DecodeError> {
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

pub(super) fn decode_section(
    d: &mut Decoder<'_>,
    clocks: &Clocks<'_>,
    section: Section,
    sink: &mut dyn WriteSink,
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
