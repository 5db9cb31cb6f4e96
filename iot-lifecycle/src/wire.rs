//! Small CBOR helpers shared by this crate's wire types.

/// `#[cbor(with = "crate::wire::f32c")]`: canonical, finite 32-bit floats.
pub(crate) mod f32c {
    use minicbor::{Decoder, Encoder};

    pub(crate) fn encode<Ctx, W: minicbor::encode::Write>(
        v: &f32,
        e: &mut Encoder<W>,
        _ctx: &mut Ctx,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        iot_core::codec::encode_f32(e, *v)
    }

    pub(crate) fn decode<Ctx>(
        d: &mut Decoder<'_>,
        _ctx: &mut Ctx,
    ) -> Result<f32, minicbor::decode::Error> {
        iot_core::codec::decode_f32(d)
    }

    pub(crate) fn cbor_len<Ctx>(_v: &f32, _ctx: &mut Ctx) -> usize {
        iot_core::codec::F32_LEN
    }
}

/// Reads a map header and returns its definite length; indefinite maps are not canonical.
pub(crate) fn map_len(d: &mut minicbor::Decoder<'_>) -> Result<u64, minicbor::decode::Error> {
    d.map()?.ok_or_else(iot_core::codec::invalid_value)
}

/// Reads the next key of a canonical map: strictly greater than the previous one.
pub(crate) fn next_key(
    d: &mut minicbor::Decoder<'_>,
    previous: &mut Option<u64>,
) -> Result<u64, minicbor::decode::Error> {
    let key = d.u64()?;
    if previous.is_some_and(|p| key <= p) {
        return Err(iot_core::codec::invalid_value());
    }
    *previous = Some(key);
    Ok(key)
}

/// `#[cbor(with = "crate::wire::hbytes")]`: a `heapless::Vec<u8, N>` as a CBOR byte string.
pub(crate) mod hbytes {
    use minicbor::{Decoder, Encoder};

    pub(crate) fn encode<Ctx, W: minicbor::encode::Write, const N: usize>(
        v: &heapless::Vec<u8, N>,
        e: &mut Encoder<W>,
        _ctx: &mut Ctx,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(v)?;
        Ok(())
    }

    pub(crate) fn decode<Ctx, const N: usize>(
        d: &mut Decoder<'_>,
        _ctx: &mut Ctx,
    ) -> Result<heapless::Vec<u8, N>, minicbor::decode::Error> {
        heapless::Vec::from_slice(d.bytes()?).map_err(|_| iot_core::codec::capacity_exceeded())
    }

    pub(crate) fn cbor_len<Ctx, const N: usize>(v: &heapless::Vec<u8, N>, ctx: &mut Ctx) -> usize {
        minicbor::bytes::CborLenBytes::cbor_len(v.as_slice(), ctx)
    }
}
