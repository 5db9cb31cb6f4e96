//! Storage backends for the outbox's image: a byte slice, RAM, and a file (with `std`).

use embedded_storage::Storage;

/// Storage in RAM: `N` bytes behind the `embedded_storage` traits, for tests and for
/// retention RAM that survives a warm reset.
#[derive(Debug, Clone)]
pub struct MemStorage<const N: usize> {
    bytes: [u8; N],
}

impl<const N: usize> Default for MemStorage<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemStorage<N> {
    /// Erased storage (all `0xFF`, like flash).
    pub const fn new() -> Self {
        Self { bytes: [0xFF; N] }
    }

    /// The raw bytes, for corrupting in tests.
    pub fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.bytes
    }
}

/// Access outside a [`MemStorage`] or [`SliceStorage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutOfBounds;

/// A borrowed byte buffer behind the `embedded_storage` traits: an outbox image built in,
/// or read back from, a caller's scratch buffer.
#[derive(Debug)]
pub struct SliceStorage<'a>(pub &'a mut [u8]);

impl SliceStorage<'_> {
    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, OutOfBounds> {
        let start = usize::try_from(offset).map_err(|_| OutOfBounds)?;
        let end = start.checked_add(len).ok_or(OutOfBounds)?;
        if end > self.0.len() {
            return Err(OutOfBounds);
        }
        Ok(start..end)
    }
}

impl embedded_storage::ReadStorage for SliceStorage<'_> {
    type Error = OutOfBounds;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        bytes.copy_from_slice(self.0.get(r).ok_or(OutOfBounds)?);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl Storage for SliceStorage<'_> {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len())?;
        self.0.get_mut(r).ok_or(OutOfBounds)?.copy_from_slice(bytes);
        Ok(())
    }
}

impl<const N: usize> embedded_storage::ReadStorage for MemStorage<N> {
    type Error = OutOfBounds;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        SliceStorage(&mut self.bytes).read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        N
    }
}

impl<const N: usize> Storage for MemStorage<N> {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        SliceStorage(&mut self.bytes).write(offset, bytes)
    }
}

/// A file behind the `embedded_storage` traits (servers, gateways, host simulations).
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct FileStorage {
    file: std::fs::File,
    capacity: usize,
}

#[cfg(feature = "std")]
impl FileStorage {
    /// Opens or creates `path` as a region of `capacity` bytes.
    pub fn open(path: &std::path::Path, capacity: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self { file, capacity })
    }
}

#[cfg(feature = "std")]
impl embedded_storage::ReadStorage for FileStorage {
    type Error = std::io::ErrorKind;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        use std::io::{Read, Seek, SeekFrom};
        self.file
            .seek(SeekFrom::Start(u64::from(offset)))
            .map_err(|e| e.kind())?;
        self.file.read_exact(bytes).map_err(|e| e.kind())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(feature = "std")]
impl Storage for FileStorage {
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        use std::io::{Seek, SeekFrom, Write};
        self.file
            .seek(SeekFrom::Start(u64::from(offset)))
            .map_err(|e| e.kind())?;
        self.file.write_all(bytes).map_err(|e| e.kind())?;
        self.file.sync_data().map_err(|e| e.kind())
    }
}
