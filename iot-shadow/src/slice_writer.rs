//! A minicbor writer into a byte slice, shared by the message encoder and array values.

/// A minicbor writer into a byte slice. CBOR is written in pieces of 1 to 9 bytes (heads,
/// numbers) and short texts; each of those sizes is copied as a fixed-size block, which
/// compiles to a few moves instead of a call into `memcpy` per piece.
pub(crate) struct SliceWriter<'b> {
    pub(crate) buf: &'b mut [u8],
    pub(crate) pos: usize,
}

/// The slice has no room left.
#[derive(Debug)]
pub(crate) struct EndOfSlice;

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
