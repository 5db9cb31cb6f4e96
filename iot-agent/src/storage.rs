//! Keeping the agent's promises across a reboot: a [`Storage`] for one record, and
//! [`FlashStorage`], an implementation on any `embedded-storage` [`NorFlash`] through
//! [`sequential_storage`]'s key-value map.
//!
//! The agent writes its state as one record (and the runner the transport outbox's image as
//! a second one, [`OUTBOX_RECORD`]) ([`crate::Agent::save`]) and reads it back at
//! boot ([`crate::Agent::restore`]). [`FlashStorage`] keeps the record as the single item
//! of a `sequential-storage` map over at least two erase pages: each save appends a new
//! item (CRC-protected) and only erases a page once a newer copy exists elsewhere, so a
//! power cut during any erase or write leaves the previous record readable, a torn item is
//! skipped, and a half-erased page is repaired at the next operation. Writes spread over
//! the pages (wear levelling) instead of erasing the same slot at every save.
//!
//! `sequential-storage` is async over `embedded-storage-async`; a blocking flash is adapted
//! here and each operation is polled once: with a blocking flash the future never waits, and
//! if it ever did the operation is reported as [`StorageError::Flash`] instead of blocking.

use core::future::Future;
use core::ops::Range;
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};

/// The key of the agent's own record ([`Storage::save`], [`Storage::load`]).
pub const AGENT_RECORD: u8 = 0;
/// The key of the transport outbox's image (pending QoS 1/2 messages, see
/// [`crate::runner::Runner::save`]).
pub const OUTBOX_RECORD: u8 = 1;

/// Where the agent keeps its records, each under a one-byte key.
pub trait Storage {
    /// Why a record could not be read or written.
    type Error;
    /// Replaces the record under `key` with `record`; the old record stays readable until
    /// the new one is complete.
    fn save_item(&mut self, key: u8, record: &[u8]) -> Result<(), Self::Error>;
    /// Reads the newest complete record under `key` into `buf`; `Ok(None)` if there is none.
    fn load_item<'b>(
        &mut self,
        key: u8,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, Self::Error>;
    /// Replaces the agent's record ([`AGENT_RECORD`]).
    fn save(&mut self, record: &[u8]) -> Result<(), Self::Error> {
        self.save_item(AGENT_RECORD, record)
    }
    /// Reads the agent's record ([`AGENT_RECORD`]).
    fn load<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<&'b [u8]>, Self::Error> {
        self.load_item(AGENT_RECORD, buf)
    }
}

/// Why a [`FlashStorage`] operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StorageError {
    /// The flash refused an erase, write or read.
    #[error("flash operation failed")]
    Flash,
    /// The record does not fit a page (or the buffer given to `load`).
    #[error("record too large")]
    TooLarge,
    /// The range is not erase-aligned, is shorter than two pages or does not fit the flash.
    #[error("bad flash layout")]
    Layout,
    /// The flash holds data `sequential-storage` could not repair (erase the range).
    #[error("flash contents corrupted")]
    Corrupted,
}

/// A blocking [`NorFlash`] seen as an `embedded-storage-async` one.
#[derive(Debug)]
pub struct Blocking<F>(F);

impl<F: embedded_storage::nor_flash::ErrorType> embedded_storage_async::nor_flash::ErrorType
    for Blocking<F>
{
    type Error = F::Error;
}

impl<F: ReadNorFlash> embedded_storage_async::nor_flash::ReadNorFlash for Blocking<F> {
    const READ_SIZE: usize = F::READ_SIZE;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), F::Error> {
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<F: NorFlash> embedded_storage_async::nor_flash::NorFlash for Blocking<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), F::Error> {
        self.0.erase(from, to)
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), F::Error> {
        self.0.write(offset, bytes)
    }
}

/// Runs a future over a blocking flash: it completes at its first poll.
fn run<T>(future: impl Future<Output = Result<T, StorageError>>) -> Result<T, StorageError> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StorageError::Flash),
    }
}

fn map_error<E>(error: sequential_storage::Error<E>) -> StorageError {
    match error {
        sequential_storage::Error::Storage { .. } => StorageError::Flash,
        sequential_storage::Error::FullStorage
        | sequential_storage::Error::BufferTooBig
        | sequential_storage::Error::BufferTooSmall(_)
        | sequential_storage::Error::ItemTooBig
        | sequential_storage::Error::SerializationError(_) => StorageError::TooLarge,
        _ => StorageError::Corrupted,
    }
}

type Map<F> = MapStorage<u8, Blocking<F>, Cache<Uncached, Uncached, Uncached, u8>>;

/// The agent's records in a `sequential-storage` map over `range` of `flash` (erase-aligned,
/// at least two pages). Records of up to `N` bytes (the map's items, key and value, pass
/// through an `N`-byte buffer on the stack while saving and loading; `N` a multiple of the
/// flash's write size). A record must also fit one erase page less the item header and page markers.
pub struct FlashStorage<F: NorFlash, const N: usize> {
    map: Map<F>,
}

impl<F: NorFlash, const N: usize> core::fmt::Debug for FlashStorage<F, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FlashStorage").finish_non_exhaustive()
    }
}

impl<F: NorFlash, const N: usize> FlashStorage<F, N> {
    /// A storage over `range` of `flash`.
    pub fn new(flash: F, range: Range<u32>) -> Result<Self, StorageError> {
        let fits = usize::try_from(range.end).is_ok_and(|end| end <= flash.capacity());
        if !fits || F::WRITE_SIZE == 0 || !N.is_multiple_of(F::WRITE_SIZE) {
            return Err(StorageError::Layout);
        }
        let config = MapConfig::try_new(range).map_err(|_| StorageError::Layout)?;
        Ok(Self {
            map: MapStorage::new(Blocking(flash), config, Cache::new_uncached()),
        })
    }

    /// The flash, for tests and for other users of the chip.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.map.flash().0
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.map.destroy().0.0
    }
}

impl<F: NorFlash, const N: usize> Storage for FlashStorage<F, N> {
    type Error = StorageError;

    fn save_item(&mut self, key: u8, record: &[u8]) -> Result<(), StorageError> {
        let mut buf = [0u8; N];
        run(async {
            self.map
                .store_item(&mut buf, &key, &record)
                .await
                .map_err(map_error)
        })
    }

    fn load_item<'b>(
        &mut self,
        key: u8,
        buf: &'b mut [u8],
    ) -> Result<Option<&'b [u8]>, StorageError> {
        // The map reads every item it passes (of any key) into the buffer: fetch into an
        // `N`-byte one, then copy the record out.
        let mut tmp = [0u8; N];
        let found = run(async {
            self.map
                .fetch_item::<&[u8]>(&mut tmp, &key)
                .await
                .map_err(map_error)
        })?;
        let Some(record) = found else {
            return Ok(None);
        };
        let out = buf.get_mut(..record.len()).ok_or(StorageError::TooLarge)?;
        out.copy_from_slice(record);
        Ok(Some(out))
    }
}
