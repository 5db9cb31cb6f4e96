//! Test double (feature `testkit`): an in-memory NOR flash for tests and simulations, with
//! the real thing's rules: erase sets whole sectors to `0xFF`, writes must be aligned and may
//! only clear bits.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Why a [`MemFlash`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemFlashError {
    /// Offset or length not a multiple of the write or erase size.
    #[error("operation not aligned")]
    NotAligned,
    /// The range leaves the flash.
    #[error("operation out of bounds")]
    OutOfBounds,
    /// A write would need to set a bit that is 0: the sector was not erased.
    #[error("write to a location that is not erased")]
    NotErased,
}

impl NorFlashError for MemFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::NotAligned => NorFlashErrorKind::NotAligned,
            Self::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Self::NotErased => NorFlashErrorKind::Other,
        }
    }
}

/// `SIZE` bytes of NOR flash in RAM, erased in `ERASE`-byte sectors and written in
/// `WRITE`-byte words. Starts erased.
#[derive(Debug, Clone)]
pub struct MemFlash<const SIZE: usize, const ERASE: usize, const WRITE: usize> {
    data: [u8; SIZE],
    erases: u32,
    writes: u32,
}

#[cfg(feature = "defmt")]
impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> defmt::Format
    for MemFlash<SIZE, ERASE, WRITE>
{
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "MemFlash {{ size: {}, erases: {}, writes: {} }}",
            SIZE,
            self.erases,
            self.writes
        );
    }
}

impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> Default
    for MemFlash<SIZE, ERASE, WRITE>
{
    fn default() -> Self {
        Self::new()
    }
}

impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> MemFlash<SIZE, ERASE, WRITE> {
    /// An erased flash.
    pub const fn new() -> Self {
        Self {
            data: [0xFF; SIZE],
            erases: 0,
            writes: 0,
        }
    }

    /// The raw contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The raw contents, writable without flash rules (to simulate corruption).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Sector erases performed (saturating).
    pub const fn erase_count(&self) -> u32 {
        self.erases
    }

    /// Write operations performed (saturating).
    pub const fn write_count(&self) -> u32 {
        self.writes
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, MemFlashError> {
        let start = usize::try_from(offset).map_err(|_| MemFlashError::OutOfBounds)?;
        let end = start.checked_add(len).ok_or(MemFlashError::OutOfBounds)?;
        if end > SIZE {
            return Err(MemFlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> ErrorType
    for MemFlash<SIZE, ERASE, WRITE>
{
    type Error = MemFlashError;
}

impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> ReadNorFlash
    for MemFlash<SIZE, ERASE, WRITE>
{
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        let src = self.data.get(range).ok_or(MemFlashError::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize, const ERASE: usize, const WRITE: usize> NorFlash
    for MemFlash<SIZE, ERASE, WRITE>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let len = to.checked_sub(from).ok_or(MemFlashError::OutOfBounds)?;
        let range = self.range(from, len as usize)?;
        if !aligned(range.start, ERASE) || !aligned(range.end, ERASE) {
            return Err(MemFlashError::NotAligned);
        }
        self.data
            .get_mut(range)
            .ok_or(MemFlashError::OutOfBounds)?
            .fill(0xFF);
        self.erases = self.erases.saturating_add(1);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        if !aligned(range.start, WRITE) || !aligned(bytes.len(), WRITE) {
            return Err(MemFlashError::NotAligned);
        }
        let dst = self.data.get_mut(range).ok_or(MemFlashError::OutOfBounds)?;
        // NOR flash can only clear bits; setting one needs an erase first.
        if dst.iter().zip(bytes).any(|(old, new)| old & new != *new) {
            return Err(MemFlashError::NotErased);
        }
        dst.copy_from_slice(bytes);
        self.writes = self.writes.saturating_add(1);
        Ok(())
    }
}

/// `value` is a multiple of a non-zero `unit`.
fn aligned(value: usize, unit: usize) -> bool {
    unit != 0 && value.is_multiple_of(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = MemFlash<1024, 256, 4>;

    #[test]
    fn starts_erased_and_round_trips() {
        let mut f = Flash::new();
        assert!(f.bytes().iter().all(|b| *b == 0xFF));
        f.write(4, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        f.read(4, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(f.capacity(), 1024);
    }

    #[test]
    fn enforces_alignment_bounds_and_erase_before_write() {
        let mut f = Flash::new();
        assert_eq!(f.write(2, &[0; 4]), Err(MemFlashError::NotAligned));
        assert_eq!(f.write(0, &[0; 3]), Err(MemFlashError::NotAligned));
        assert_eq!(f.write(1024, &[0; 4]), Err(MemFlashError::OutOfBounds));
        assert_eq!(f.erase(0, 100), Err(MemFlashError::NotAligned));
        assert_eq!(f.erase(256, 0), Err(MemFlashError::OutOfBounds));
        f.write(0, &[0xF0; 4]).unwrap();
        // Clearing more bits is fine, setting one is not.
        f.write(0, &[0x00; 4]).unwrap();
        assert_eq!(f.write(0, &[0x01; 4]), Err(MemFlashError::NotErased));
        f.erase(0, 256).unwrap();
        f.write(0, &[0x01; 4]).unwrap();
        assert_eq!(f.bytes()[256], 0xFF);
        assert_eq!((f.erase_count(), f.write_count()), (1, 3));
        assert_eq!(MemFlashError::NotErased.kind(), NorFlashErrorKind::Other);
    }
}
