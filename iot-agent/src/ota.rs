//! Firmware updates over the protocol: the agent's view of the device's updater.
//!
//! The backend sends an `OtaJob` (version, size, SHA-256); the agent starts the board's
//! [`Firmware`] on it and asks for the image block by block (`OtaBlockRequest` with the
//! offset the updater expects next), so a lost block is asked for again after
//! [`OTA_RETRY_MS`] and the transfer resumes where it stopped. The last block is verified
//! against the digest before anything is activated; a verified image is installed for one
//! trial boot and the board is asked to restart ([`crate::Board::restart`]). After the
//! restart the agent confirms the trial once registration succeeds, or reports the
//! rollback the updater found. Every step is reported with `OtaProgress`.
//!
//! [`Firmware`] is implemented for `iot_lifecycle::ota::OtaUpdater` over any `NorFlash`.

use embedded_storage::nor_flash::NorFlash;
use iot_lifecycle::ota::{OtaError, OtaJob, OtaProgress, OtaUpdater};

/// How long the agent waits for a requested block before asking again, in milliseconds.
pub const OTA_RETRY_MS: u64 = 2_000;

/// The device's firmware updater, as the agent drives it.
pub trait Firmware {
    /// Where the update stands.
    fn progress(&self) -> OtaProgress;
    /// Starts downloading `job` (erasing the candidate slot).
    fn begin(&mut self, job: OtaJob) -> Result<(), OtaError>;
    /// Writes the block that starts at `offset`; returns the next offset.
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<u32, OtaError>;
    /// Checks the complete image against the job's digest and installs it for a trial
    /// boot. On a digest mismatch nothing is activated and the updater rolls back.
    fn finish(&mut self) -> Result<(), OtaError>;
    /// Confirms the image running on trial.
    fn confirm(&mut self) -> Result<(), OtaError>;
}

impl<F: NorFlash> Firmware for OtaUpdater<F> {
    fn progress(&self) -> OtaProgress {
        OtaUpdater::progress(self)
    }

    fn begin(&mut self, job: OtaJob) -> Result<(), OtaError> {
        self.start(job)
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<u32, OtaError> {
        self.write_chunk(offset, data)
    }

    fn finish(&mut self) -> Result<(), OtaError> {
        self.verify()?;
        self.install()
    }

    fn confirm(&mut self) -> Result<(), OtaError> {
        OtaUpdater::confirm(self)
    }
}
