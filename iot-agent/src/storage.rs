//! Keeping the agent's promises across a reboot: a [`Storage`] for one record, and
//! [`FlashStorage`], an implementation on any `embedded-storage` [`NorFlash`].
//!
//! The agent writes its state as one record ([`crate::Agent::save`]) and reads it back at
//! boot ([`crate::Agent::restore`]). [`FlashStorage`] keeps the record in two
//! erase-aligned slots and writes the slot *not* holding the newest record, the record's
//! CRC-32 and sequence number last in importance: a power cut during any erase or write
//! leaves the other slot's record whole, and a torn record fails its CRC, so boot always
//! finds the last record saved completely.

use crc::{CRC_32_ISO_HDLC, Crc};
use embedded_storage::nor_flash::NorFlash;

/// Where the agent keeps its record.
pub trait Storage {
    /// Why the record could not be read or written.
    type Error;
    /// Replaces the stored record with `record`; the old record stays readable until the
    /// new one is complete.
    fn save(&mut self, record: &[u8]) -> Result<(), Self::Error>;
    /// Reads the newest complete record into `buf`; `Ok(None)` if there is none.
    fn load<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, Self::Error>;
}

/// Why a [`FlashStorage`] operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// The flash refused an erase, write or read.
    #[error("flash operation failed")]
    Flash,
    /// The record does not fit a slot (or the buffer given to `load`).
    #[error("record too large")]
    TooLarge,
    /// The slots are not erase-aligned or do not fit the flash.
    #[error("bad slot layout")]
    Layout,
}

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
/// Header: magic (4), sequence (4), length (4), CRC-32 of sequence, length and data (4).
const HEADER: usize = 16;
const MAGIC: [u8; 4] = *b"IOTA";

/// Two slots of `slot_size` bytes at the start of `flash`; records of up to `N` bytes
/// including the 16-byte header (`N` a multiple of the flash's write size; the write
/// buffer is on the stack while saving).
#[derive(Debug)]
pub struct FlashStorage<F, const N: usize> {
    flash: F,
    slot_size: u32,
    /// The newest record's sequence number and slot, once known.
    newest: Option<(u32, u32)>,
}

impl<F: NorFlash, const N: usize> FlashStorage<F, N> {
    /// A storage over the first `2 * slot_size` bytes of `flash`.
    pub fn new(flash: F, slot_size: u32) -> Result<Self, StorageError> {
        let erase = u32::try_from(F::ERASE_SIZE).map_err(|_| StorageError::Layout)?;
        let fits = slot_size
            .checked_mul(2)
            .is_some_and(|total| total as usize <= flash.capacity());
        if erase == 0
            || !slot_size.is_multiple_of(erase)
            || !fits
            || N > slot_size as usize
            || F::WRITE_SIZE == 0
            || !N.is_multiple_of(F::WRITE_SIZE)
        {
            return Err(StorageError::Layout);
        }
        Ok(Self {
            flash,
            slot_size,
            newest: None,
        })
    }

    /// The flash, for tests and for other users of the chip.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// The sequence number and length of a complete record in `slot`, its data read into
    /// `buf`.
    fn check_slot(&mut self, slot: u32, buf: &mut [u8]) -> Option<(u32, usize)> {
        let offset = slot.checked_mul(self.slot_size)?;
        let mut header = [0u8; HEADER];
        self.flash.read(offset, &mut header).ok()?;
        let field =
            |i: usize| -> Option<[u8; 4]> { header.get(i..i.checked_add(4)?)?.try_into().ok() };
        if field(0)? != MAGIC {
            return None;
        }
        let seq = u32::from_le_bytes(field(4)?);
        let len = usize::try_from(u32::from_le_bytes(field(8)?)).ok()?;
        let crc = u32::from_le_bytes(field(12)?);
        let data = buf.get_mut(..len)?;
        self.flash
            .read(offset.checked_add(HEADER as u32)?, data)
            .ok()?;
        let mut digest = CRC.digest();
        digest.update(header.get(4..12)?);
        digest.update(data);
        (digest.finalize() == crc).then_some((seq, len))
    }
}

impl<F: NorFlash, const N: usize> Storage for FlashStorage<F, N> {
    type Error = StorageError;

    fn save(&mut self, record: &[u8]) -> Result<(), StorageError> {
        let len = record.len();
        let total = len.checked_add(HEADER).ok_or(StorageError::TooLarge)?;
        if total > N {
            return Err(StorageError::TooLarge);
        }
        if self.newest.is_none() {
            let mut scratch = [0u8; N];
            let _ = self.load(&mut scratch)?;
        }
        let (seq, slot) = match self.newest {
            Some((seq, slot)) => (seq.wrapping_add(1), u32::from(slot == 0)),
            None => (1, 0),
        };
        let mut page = [0xFFu8; N];
        let len32 = u32::try_from(len).map_err(|_| StorageError::TooLarge)?;
        let mut header = [0u8; HEADER];
        for (dst, src) in header.iter_mut().zip(
            MAGIC
                .into_iter()
                .chain(seq.to_le_bytes())
                .chain(len32.to_le_bytes()),
        ) {
            *dst = src;
        }
        let mut digest = CRC.digest();
        digest.update(header.get(4..12).ok_or(StorageError::Layout)?);
        digest.update(record);
        let crc = digest.finalize().to_le_bytes();
        header
            .get_mut(12..16)
            .ok_or(StorageError::Layout)?
            .copy_from_slice(&crc);
        page.get_mut(..HEADER)
            .ok_or(StorageError::TooLarge)?
            .copy_from_slice(&header);
        page.get_mut(HEADER..total)
            .ok_or(StorageError::TooLarge)?
            .copy_from_slice(record);
        let write = F::WRITE_SIZE;
        let padded = total.div_ceil(write).saturating_mul(write);
        let bytes = page.get(..padded).ok_or(StorageError::TooLarge)?;
        let offset = slot
            .checked_mul(self.slot_size)
            .ok_or(StorageError::Layout)?;
        let end = offset
            .checked_add(self.slot_size)
            .ok_or(StorageError::Layout)?;
        self.flash
            .erase(offset, end)
            .map_err(|_| StorageError::Flash)?;
        self.flash
            .write(offset, bytes)
            .map_err(|_| StorageError::Flash)?;
        self.newest = Some((seq, slot));
        Ok(())
    }

    fn load<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, StorageError> {
        let a = self.check_slot(0, buf);
        let b = self.check_slot(1, buf);
        // Sequence numbers wrap: the newer of two is the one the other is just behind.
        let pick = match (a, b) {
            (Some(a), Some(b)) => {
                if b.0.wrapping_sub(a.0) < u32::MAX / 2 {
                    Some((1, b))
                } else {
                    Some((0, a))
                }
            }
            (Some(a), None) => Some((0, a)),
            (None, Some(b)) => Some((1, b)),
            (None, None) => None,
        };
        let Some((slot, (seq, _))) = pick else {
            self.newest = None;
            return Ok(None);
        };
        // Read the winner again (the other slot's check may have overwritten `buf`).
        let (_, len) = self.check_slot(slot, buf).ok_or(StorageError::Flash)?;
        self.newest = Some((seq, slot));
        Ok(buf.get(..len))
    }
}
