//! Over-the-air updates on the device: an update state machine in the style of the LwM2M
//! firmware object, chunked download that resumes after link loss, SHA-256 verification,
//! A/B slots on any `embedded-storage` [`NorFlash`], and rollback of an image that fails
//! verification or is not confirmed after the reboot into it.
//!
//! ```text
//! Idle -start-> Downloading -write_chunk...-> Downloaded -verify-> Verifying -install-> Updating
//!   (reboot) boot_check -> Testing -confirm-> Confirmed
//!   (reboot without confirm) boot_check -> RolledBack
//! Verifying with a wrong digest -> RolledBack
//! ```
//!
//! The flash holds two image slots and one sector with a small [`BootState`] record. A boot
//! loader (or the application right after boot, through [`OtaUpdater::boot_check`]) reads
//! the record: a freshly installed candidate gets exactly one trial boot; if the trial is not
//! confirmed before the next boot, the previous image stays active.
//!
//! ```
//! use iot_lifecycle::mem_flash::MemFlash;
//! use iot_lifecycle::ota::{BootDecision, OtaJob, OtaState, OtaUpdater, SlotLayout};
//! use sha2::{Digest, Sha256};
//!
//! let image = [0x5Au8; 300];
//! let job = OtaJob { version: 2, size: 300, sha256: Sha256::digest(image).into() };
//! let layout = SlotLayout { slot_a: 0, slot_b: 1024, slot_size: 1024, boot_state: 2048 };
//! let mut ota = OtaUpdater::new(MemFlash::<3072, 256, 4>::new(), layout)?;
//! ota.boot_check()?;
//! ota.start(job)?;
//! ota.write_chunk(0, &image[..100])?;
//! // The link drops; after reconnecting, ask where to resume.
//! let resume = ota.next_offset();
//! ota.write_chunk(resume, &image[100..])?;
//! ota.verify()?;
//! ota.install()?;
//! // Reboot into the candidate...
//! let mut ota = OtaUpdater::new(ota.into_flash(), layout)?;
//! assert!(matches!(ota.boot_check()?, BootDecision::Trial(_)));
//! ota.confirm()?;
//! assert_eq!(ota.state(), OtaState::Confirmed);
//! # Ok::<(), iot_lifecycle::ota::OtaError>(())
//! ```

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use iot_core::{Error, ErrorKind};
use minicbor::{CborLen, Decode, Encode};
use sha2::{Digest, Sha256};

/// A firmware update job: the payload of `MessageKind::OtaJob`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct OtaJob {
    /// The image's firmware version; must be newer than the active one.
    #[n(0)]
    pub version: u32,
    /// The image size in bytes.
    #[n(1)]
    pub size: u32,
    /// SHA-256 of the image.
    #[n(2)]
    #[cbor(with = "minicbor::bytes")]
    pub sha256: [u8; 32],
}

/// Where the update stands (the LwM2M firmware object's states, plus the A/B test phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum OtaState {
    /// No update in progress.
    #[default]
    #[n(0)]
    Idle,
    /// Receiving chunks.
    #[n(1)]
    Downloading,
    /// The whole image is in the candidate slot.
    #[n(2)]
    Downloaded,
    /// The image matched its digest; ready to install.
    #[n(3)]
    Verifying,
    /// Marked for a trial boot; the device should reboot now.
    #[n(4)]
    Updating,
    /// Running the candidate on trial; confirm or it rolls back on the next boot.
    #[n(5)]
    Testing,
    /// The candidate is the active image.
    #[n(6)]
    Confirmed,
    /// The update was abandoned; the previous image is active.
    #[n(7)]
    RolledBack,
}

/// Why an update rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(index_only)]
pub enum RollbackReason {
    /// The downloaded image (or what reached flash) does not match the job's SHA-256.
    #[n(0)]
    VerificationFailed,
    /// The device rebooted again before the trial image was confirmed.
    #[n(1)]
    NotConfirmed,
}

/// Progress report: the payload of `MessageKind::OtaProgress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Encode, Decode, CborLen)]
#[cbor(map)]
pub struct OtaProgress {
    /// The state.
    #[n(0)]
    pub state: OtaState,
    /// The version being installed, if any.
    #[n(1)]
    pub version: Option<u32>,
    /// Bytes received (the offset to resume from).
    #[n(2)]
    pub next_offset: u32,
    /// Why the last update rolled back, if it did.
    #[n(3)]
    pub rollback: Option<RollbackReason>,
}

/// The flash error classes an update can meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FlashErrorKind {
    /// Misaligned operation.
    NotAligned,
    /// Outside the flash.
    OutOfBounds,
    /// Anything else the driver reports.
    Other,
}

impl FlashErrorKind {
    fn of<E: NorFlashError>(e: &E) -> Self {
        match e.kind() {
            NorFlashErrorKind::NotAligned => Self::NotAligned,
            NorFlashErrorKind::OutOfBounds => Self::OutOfBounds,
            _ => Self::Other,
        }
    }
}

/// Why an update operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OtaError {
    /// The operation is not allowed in this state.
    #[error("operation not allowed in update state {0:?}")]
    WrongState(OtaState),
    /// A chunk does not start where the download stands; resume from `expected`.
    #[error("chunk at offset {got}, expected {expected}")]
    UnexpectedOffset {
        /// Where the next chunk must start.
        expected: u32,
        /// Where this one started.
        got: u32,
    },
    /// A chunk runs past the image size.
    #[error("chunk runs past the image size")]
    ChunkPastEnd,
    /// The image is empty or larger than a slot.
    #[error("image size {size} does not fit a slot of {slot_size} bytes")]
    ImageSize {
        /// The job's size.
        size: u32,
        /// The slot's size.
        slot_size: u32,
    },
    /// The job's version is not newer than the active image.
    #[error("version {offered} is not newer than the active {active}")]
    NotNewer {
        /// Active version.
        active: u32,
        /// Offered version.
        offered: u32,
    },
    /// The image does not match its SHA-256; the update rolled back.
    #[error("image failed SHA-256 verification")]
    VerificationFailed,
    /// The slot layout does not fit the flash.
    #[error("slot layout does not fit the flash geometry")]
    InvalidLayout,
    /// The flash failed.
    #[error("flash error: {0:?}")]
    Flash(FlashErrorKind),
    /// [`OtaUpdater::boot_check`] has not run in this boot yet.
    #[error("boot_check must run before an update starts")]
    BootNotChecked,
    /// The candidate slot holds the image that is running now (a rejected trial before
    /// the reboot): it cannot be erased until the device has rebooted.
    #[error("the candidate slot is running; reboot first")]
    CandidateRunning,
}

impl Error for OtaError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::WrongState(_) => ErrorKind::InvalidState,
            Self::UnexpectedOffset { .. } | Self::NotNewer { .. } => ErrorKind::Conflict,
            Self::ChunkPastEnd | Self::ImageSize { .. } | Self::InvalidLayout => {
                ErrorKind::InvalidInput
            }
            Self::VerificationFailed => ErrorKind::Decode,
            Self::Flash(_) => ErrorKind::Storage,
            Self::BootNotChecked | Self::CandidateRunning => ErrorKind::InvalidState,
        }
    }
}

/// One of the two image slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Slot {
    /// Slot A (the factory image).
    #[default]
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub const fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// Where the slots and the boot-state sector are in the flash (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SlotLayout {
    /// Start of slot A.
    pub slot_a: u32,
    /// Start of slot B.
    pub slot_b: u32,
    /// Size of each slot.
    pub slot_size: u32,
    /// Start of the sector holding the [`BootState`] record.
    pub boot_state: u32,
}

/// Bytes the [`BootState`] record occupies (a multiple of every supported write size).
pub const BOOT_RECORD_LEN: usize = 32;
const BOOT_MAGIC: [u8; 4] = *b"OTA1";
const READ_BLOCK: usize = 64;
const JOB_MAGIC: [u8; 4] = *b"OTAJ";

/// Bytes at the end of each slot that name the job being downloaded into it (magic,
/// version, size, SHA-256 and a check), written once when a download starts, so that a
/// download a reboot interrupted resumes where it stopped instead of starting over. An image
/// may use the rest of the slot.
pub const JOB_MARKER_LEN: u32 = 48;

/// The job marker of `job`.
fn job_marker(job: &OtaJob) -> [u8; JOB_MARKER_LEN as usize] {
    let mut out = [0xFFu8; JOB_MARKER_LEN as usize];
    let mut body = [0u8; 44];
    for (dst, src) in body.iter_mut().zip(
        JOB_MAGIC
            .iter()
            .chain(job.version.to_le_bytes().iter())
            .chain(job.size.to_le_bytes().iter())
            .chain(job.sha256.iter()),
    ) {
        *dst = *src;
    }
    let check: [u8; 32] = Sha256::digest(body).into();
    for (dst, src) in out.iter_mut().zip(body.iter().chain(check.iter().take(4))) {
        *dst = *src;
    }
    out
}

impl SlotLayout {
    fn start(&self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.slot_a,
            Slot::B => self.slot_b,
        }
    }

    fn check<F: NorFlash>(&self, capacity: usize) -> Result<(), OtaError> {
        let erase = u32::try_from(F::ERASE_SIZE).map_err(|_| OtaError::InvalidLayout)?;
        let supported_write = F::WRITE_SIZE != 0 && BOOT_RECORD_LEN.is_multiple_of(F::WRITE_SIZE);
        let supported_read = F::READ_SIZE != 0 && READ_BLOCK.is_multiple_of(F::READ_SIZE);
        if erase == 0 || !supported_write || !supported_read || self.slot_size == 0 {
            return Err(OtaError::InvalidLayout);
        }
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
        let region = |start: u32, len: u32| -> Result<(u32, u32), OtaError> {
            let end = start.checked_add(len).ok_or(OtaError::InvalidLayout)?;
            if !start.is_multiple_of(erase) || !end.is_multiple_of(erase) || end > capacity {
                return Err(OtaError::InvalidLayout);
            }
            Ok((start, end))
        };
        let a = region(self.slot_a, self.slot_size)?;
        let b = region(self.slot_b, self.slot_size)?;
        let s = region(self.boot_state, erase)?;
        let overlap = |x: (u32, u32), y: (u32, u32)| x.0 < y.1 && y.0 < x.1;
        if overlap(a, b) || overlap(a, s) || overlap(b, s) {
            return Err(OtaError::InvalidLayout);
        }
        Ok(())
    }
}

/// Trial-boot bookkeeping of a [`BootState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Trial {
    /// No trial: boot the active slot.
    #[default]
    None,
    /// A candidate was installed: boot it once on trial.
    Pending,
    /// The candidate was booted on trial and not confirmed yet.
    Booted,
}

/// The persistent boot record: which slot is active, and whether a candidate is on trial.
/// Erased flash reads as the factory default (slot A, version 0, no trial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BootState {
    /// The confirmed image's slot.
    pub active: Slot,
    /// The confirmed image's version.
    pub active_version: u32,
    /// The candidate's version (meaningful while a trial is pending or booted).
    pub candidate_version: u32,
    /// Trial status of the candidate (always in the other slot).
    pub trial: Trial,
}

impl BootState {
    fn to_bytes(self) -> [u8; BOOT_RECORD_LEN] {
        let mut out = [0xFFu8; BOOT_RECORD_LEN];
        let [m0, m1, m2, m3] = BOOT_MAGIC;
        let [a0, a1, a2, a3] = self.active_version.to_le_bytes();
        let [c0, c1, c2, c3] = self.candidate_version.to_le_bytes();
        let slot = match self.active {
            Slot::A => 0,
            Slot::B => 1,
        };
        let trial = match self.trial {
            Trial::None => 0,
            Trial::Pending => 1,
            Trial::Booted => 2,
        };
        let body: [u8; 14] = [m0, m1, m2, m3, slot, trial, a0, a1, a2, a3, c0, c1, c2, c3];
        let check: [u8; 32] = Sha256::digest(body).into();
        for (dst, src) in out.iter_mut().zip(body.iter().chain(check.iter().take(4))) {
            *dst = *src;
        }
        out
    }

    fn from_bytes(bytes: &[u8; BOOT_RECORD_LEN]) -> Option<Self> {
        let body = bytes.get(..14)?;
        let check = bytes.get(14..18)?;
        let digest: [u8; 32] = Sha256::digest(body).into();
        if digest.get(..4)? != check || body.get(..4)? != BOOT_MAGIC {
            return None;
        }
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                body.get(i..i.checked_add(4)?)?.try_into().ok()?,
            ))
        };
        Some(Self {
            active: match body.get(4)? {
                0 => Slot::A,
                1 => Slot::B,
                _ => return None,
            },
            trial: match body.get(5)? {
                0 => Trial::None,
                1 => Trial::Pending,
                2 => Trial::Booted,
                _ => return None,
            },
            active_version: word(6)?,
            candidate_version: word(10)?,
        })
    }
}

/// What [`OtaUpdater::boot_check`] decided for this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BootDecision {
    /// Run the active image in this slot.
    Normal(Slot),
    /// Run the candidate in this slot on trial; call [`OtaUpdater::confirm`] once healthy.
    Trial(Slot),
    /// The trial was never confirmed: run the previous image in this slot.
    RolledBack(Slot),
}

/// The lifecycle event an update outcome calls for: `UpdateComplete` once the new image is
/// confirmed, `UpdateFailed` once it rolled back (both leave `Maintenance`, which a device
/// enters for the update with `ScheduledUpdate`); none while the update is under way.
pub const fn lifecycle_event(state: OtaState) -> Option<crate::state::Event> {
    match state {
        OtaState::Confirmed => Some(crate::state::Event::UpdateComplete),
        OtaState::RolledBack => Some(crate::state::Event::UpdateFailed),
        _ => None,
    }
}

/// The device side of an update over a [`NorFlash`] with two slots. See the [module
/// documentation](self).
pub struct OtaUpdater<F: NorFlash> {
    flash: F,
    layout: SlotLayout,
    boot: BootState,
    state: OtaState,
    job: Option<OtaJob>,
    next_offset: u32,
    hasher: Sha256,
    pending: [u8; BOOT_RECORD_LEN],
    pending_len: usize,
    rollback: Option<RollbackReason>,
    decision: Option<BootDecision>,
}

#[cfg(feature = "defmt")]
impl<F: NorFlash> defmt::Format for OtaUpdater<F> {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(
            f,
            "OtaUpdater {{ state: {}, boot: {}, next_offset: {} }}",
            self.state,
            self.boot,
            self.next_offset
        );
    }
}

impl<F: NorFlash> core::fmt::Debug for OtaUpdater<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OtaUpdater")
            .field("layout", &self.layout)
            .field("boot", &self.boot)
            .field("state", &self.state)
            .field("job", &self.job)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl<F: NorFlash> OtaUpdater<F> {
    /// An updater over `flash`, reading the boot record. Call [`OtaUpdater::boot_check`]
    /// once per boot before anything else.
    pub fn new(mut flash: F, layout: SlotLayout) -> Result<Self, OtaError> {
        layout.check::<F>(flash.capacity())?;
        let mut raw = [0u8; BOOT_RECORD_LEN];
        flash
            .read(layout.boot_state, &mut raw)
            .map_err(|e| OtaError::Flash(FlashErrorKind::of(&e)))?;
        // An erased or torn record means factory state: slot A, no trial.
        let boot = BootState::from_bytes(&raw).unwrap_or_default();
        Ok(Self {
            flash,
            layout,
            boot,
            state: OtaState::Idle,
            job: None,
            next_offset: 0,
            hasher: Sha256::new(),
            pending: [0xFF; BOOT_RECORD_LEN],
            pending_len: 0,
            rollback: None,
            decision: None,
        })
    }

    /// Gives the flash back (for example to simulate a reboot in tests).
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The flash, for inspection.
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The flash, mutably (for example to simulate corruption in tests).
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// The update state.
    pub const fn state(&self) -> OtaState {
        self.state
    }

    /// The boot record in force.
    pub const fn boot_state(&self) -> BootState {
        self.boot
    }

    /// The slot of the image running in this boot (as decided by
    /// [`OtaUpdater::boot_check`]; before it runs, the active slot).
    pub const fn running_slot(&self) -> Slot {
        match self.decision {
            Some(
                BootDecision::Normal(s) | BootDecision::Trial(s) | BootDecision::RolledBack(s),
            ) => s,
            None => self.boot.active,
        }
    }

    /// The offset the next chunk must start at: where to resume after a link loss.
    pub const fn next_offset(&self) -> u32 {
        self.next_offset
    }

    /// The job in progress, if any.
    pub const fn job(&self) -> Option<&OtaJob> {
        self.job.as_ref()
    }

    /// A progress report for the backend.
    pub fn progress(&self) -> OtaProgress {
        OtaProgress {
            state: self.state,
            version: self.job.map(|j| j.version).or(match self.state {
                OtaState::Testing | OtaState::Confirmed => Some(self.boot.active_version),
                _ => None,
            }),
            next_offset: self.next_offset,
            rollback: self.rollback,
        }
    }

    fn flash_err<E: NorFlashError>(e: E) -> OtaError {
        OtaError::Flash(FlashErrorKind::of(&e))
    }

    fn write_boot(&mut self, boot: BootState) -> Result<(), OtaError> {
        let start = self.layout.boot_state;
        let end = start
            .checked_add(u32::try_from(F::ERASE_SIZE).map_err(|_| OtaError::InvalidLayout)?)
            .ok_or(OtaError::InvalidLayout)?;
        self.flash.erase(start, end).map_err(Self::flash_err)?;
        self.flash
            .write(start, &boot.to_bytes())
            .map_err(Self::flash_err)?;
        self.boot = boot;
        Ok(())
    }

    /// Decides this boot from the boot record: a pending candidate gets its one trial
    /// (state `Testing`); a trial that was booted but never confirmed is abandoned and the
    /// previous image stays active (state `RolledBack`); otherwise normal boot (`Idle`).
    /// Later calls in the same boot return the same decision and change nothing.
    pub fn boot_check(&mut self) -> Result<BootDecision, OtaError> {
        if let Some(decision) = self.decision {
            return Ok(decision);
        }
        let decision = self.decide()?;
        self.decision = Some(decision);
        Ok(decision)
    }

    fn decide(&mut self) -> Result<BootDecision, OtaError> {
        match self.boot.trial {
            Trial::None => {
                self.state = OtaState::Idle;
                Ok(BootDecision::Normal(self.boot.active))
            }
            Trial::Pending => {
                self.write_boot(BootState {
                    trial: Trial::Booted,
                    ..self.boot
                })?;
                self.state = OtaState::Testing;
                Ok(BootDecision::Trial(self.boot.active.other()))
            }
            Trial::Booted => {
                self.write_boot(BootState {
                    trial: Trial::None,
                    candidate_version: 0,
                    ..self.boot
                })?;
                self.state = OtaState::RolledBack;
                self.rollback = Some(RollbackReason::NotConfirmed);
                Ok(BootDecision::RolledBack(self.boot.active))
            }
        }
    }

    /// Starts downloading `job` into the candidate slot (erasing it). Allowed when idle or
    /// after a finished (`Confirmed`) or abandoned (`RolledBack`) update, once
    /// [`OtaUpdater::boot_check`] has run and unless the candidate slot is the one running.
    pub fn start(&mut self, job: OtaJob) -> Result<(), OtaError> {
        if self.decision.is_none() {
            return Err(OtaError::BootNotChecked);
        }
        if !matches!(
            self.state,
            OtaState::Idle | OtaState::Confirmed | OtaState::RolledBack
        ) {
            return Err(OtaError::WrongState(self.state));
        }
        let room = self.layout.slot_size.saturating_sub(JOB_MARKER_LEN);
        if job.size == 0 || job.size > room {
            return Err(OtaError::ImageSize {
                size: job.size,
                slot_size: room,
            });
        }
        if job.version <= self.boot.active_version {
            return Err(OtaError::NotNewer {
                active: self.boot.active_version,
                offered: job.version,
            });
        }
        if self.boot.active.other() == self.running_slot() {
            return Err(OtaError::CandidateRunning);
        }
        let start = self.layout.start(self.boot.active.other());
        let end = start
            .checked_add(self.layout.slot_size)
            .ok_or(OtaError::InvalidLayout)?;
        let marker_at = end
            .checked_sub(JOB_MARKER_LEN)
            .ok_or(OtaError::InvalidLayout)?;
        let marker = job_marker(&job);
        let mut stored = [0u8; JOB_MARKER_LEN as usize];
        self.flash
            .read(marker_at, &mut stored)
            .map_err(Self::flash_err)?;
        self.job = Some(job);
        self.pending_len = 0;
        self.rollback = None;
        if stored == marker {
            return self.resume(job);
        }
        self.flash.erase(start, end).map_err(Self::flash_err)?;
        self.flash
            .write(marker_at, &marker)
            .map_err(Self::flash_err)?;
        self.next_offset = 0;
        self.hasher = Sha256::new();
        self.state = OtaState::Downloading;
        Ok(())
    }

    /// Picks up the download of `job` that the candidate slot already holds part of (its
    /// marker names `job`): the written prefix runs to the last word holding anything but
    /// the erased value (words of `0xFF` image data after it are written again, which
    /// leaves them as they are), and it is hashed again so verification covers every byte.
    fn resume(&mut self, job: OtaJob) -> Result<(), OtaError> {
        let slot = self.boot.active.other();
        let mut written = 0u32;
        let mut seen = 0u32;
        self.read_slot(slot, job.size, &mut |chunk| {
            if let Some(last) = chunk.iter().rposition(|b| *b != 0xFF) {
                written = seen
                    .saturating_add(u32::try_from(last).unwrap_or(u32::MAX))
                    .saturating_add(1);
            }
            seen = seen.saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
        })?;
        let word = u32::try_from(F::WRITE_SIZE).map_err(|_| OtaError::InvalidLayout)?;
        let resume = written
            .div_ceil(word.max(1))
            .saturating_mul(word.max(1))
            .min(job.size);
        let mut hasher = Sha256::new();
        self.read_slot(slot, resume, &mut |chunk| hasher.update(chunk))?;
        self.hasher = hasher;
        self.next_offset = resume;
        self.state = if resume == job.size {
            OtaState::Downloaded
        } else {
            OtaState::Downloading
        };
        Ok(())
    }

    /// Abandons a download or a verified image that was not installed; back to `Idle`.
    pub fn cancel(&mut self) -> Result<(), OtaError> {
        match self.state {
            OtaState::Downloading | OtaState::Downloaded | OtaState::Verifying => {
                self.job = None;
                self.next_offset = 0;
                self.pending_len = 0;
                self.state = OtaState::Idle;
                Ok(())
            }
            other => Err(OtaError::WrongState(other)),
        }
    }

    /// Accepts the chunk that starts at [`OtaUpdater::next_offset`]; any other offset is
    /// refused with the expected one, so a resent or skipped chunk is never written. Returns
    /// the new next offset; the last chunk moves the state to `Downloaded`.
    pub fn write_chunk(&mut self, offset: u32, bytes: &[u8]) -> Result<u32, OtaError> {
        if self.state != OtaState::Downloading {
            return Err(OtaError::WrongState(self.state));
        }
        let job = self.job.ok_or(OtaError::WrongState(self.state))?;
        if offset != self.next_offset {
            return Err(OtaError::UnexpectedOffset {
                expected: self.next_offset,
                got: offset,
            });
        }
        let len = u32::try_from(bytes.len()).map_err(|_| OtaError::ChunkPastEnd)?;
        let end = offset.checked_add(len).ok_or(OtaError::ChunkPastEnd)?;
        if end > job.size {
            return Err(OtaError::ChunkPastEnd);
        }
        self.stage(bytes)?;
        self.hasher.update(bytes);
        self.next_offset = end;
        if end == job.size {
            self.flush_padded()?;
            self.state = OtaState::Downloaded;
        }
        Ok(end)
    }

    /// Flash address where the staged bytes belong.
    fn staged_address(&self) -> Result<u32, OtaError> {
        let staged = u32::try_from(self.pending_len).map_err(|_| OtaError::ChunkPastEnd)?;
        let written = self
            .next_offset
            .checked_sub(staged)
            .ok_or(OtaError::ChunkPastEnd)?;
        self.candidate_address(written)
    }

    /// Flash address of byte `offset` of the image in the candidate slot.
    fn candidate_address(&self, offset: u32) -> Result<u32, OtaError> {
        self.layout
            .start(self.boot.active.other())
            .checked_add(offset)
            .ok_or(OtaError::ChunkPastEnd)
    }

    /// Writes whole write-size words, keeping a partial word staged in RAM.
    fn stage(&mut self, mut input: &[u8]) -> Result<(), OtaError> {
        let word = F::WRITE_SIZE;
        let mut cursor = self.next_offset;
        while !input.is_empty() {
            if self.pending_len == 0 && input.len() >= word {
                let whole = input
                    .len()
                    .saturating_sub(input.len().checked_rem(word).unwrap_or(0));
                let (now, rest) = input.split_at(whole);
                let at = self.candidate_address(cursor)?;
                self.flash.write(at, now).map_err(Self::flash_err)?;
                cursor = cursor
                    .checked_add(u32::try_from(whole).map_err(|_| OtaError::ChunkPastEnd)?)
                    .ok_or(OtaError::ChunkPastEnd)?;
                input = rest;
                continue;
            }
            let room = word.saturating_sub(self.pending_len);
            let take = room.min(input.len());
            let (now, rest) = input.split_at(take);
            let end = self.pending_len.saturating_add(take);
            self.pending
                .get_mut(self.pending_len..end)
                .ok_or(OtaError::ChunkPastEnd)?
                .copy_from_slice(now);
            self.pending_len = end;
            cursor = cursor
                .checked_add(u32::try_from(take).map_err(|_| OtaError::ChunkPastEnd)?)
                .ok_or(OtaError::ChunkPastEnd)?;
            input = rest;
            if self.pending_len == word {
                let start = cursor
                    .checked_sub(u32::try_from(word).map_err(|_| OtaError::ChunkPastEnd)?)
                    .ok_or(OtaError::ChunkPastEnd)?;
                let at = self.candidate_address(start)?;
                let staged = self.pending.get(..word).ok_or(OtaError::ChunkPastEnd)?;
                self.flash.write(at, staged).map_err(Self::flash_err)?;
                self.pending_len = 0;
            }
        }
        Ok(())
    }

    /// Writes the last partial word padded with the erased value.
    fn flush_padded(&mut self) -> Result<(), OtaError> {
        if self.pending_len == 0 {
            return Ok(());
        }
        let at = self.staged_address()?;
        let word = F::WRITE_SIZE;
        if let Some(tail) = self.pending.get_mut(self.pending_len..word) {
            tail.fill(0xFF);
        }
        let staged = self.pending.get(..word).ok_or(OtaError::ChunkPastEnd)?;
        self.flash.write(at, staged).map_err(Self::flash_err)?;
        self.pending_len = 0;
        Ok(())
    }

    /// Checks the image against the job's SHA-256, twice: the bytes received, and the bytes
    /// read back from flash. A mismatch rolls the update back (the active image is
    /// untouched) and returns [`OtaError::VerificationFailed`].
    pub fn verify(&mut self) -> Result<(), OtaError> {
        if self.state != OtaState::Downloaded {
            return Err(OtaError::WrongState(self.state));
        }
        let job = self.job.ok_or(OtaError::WrongState(self.state))?;
        self.state = OtaState::Verifying;
        let received: [u8; 32] = core::mem::take(&mut self.hasher).finalize().into();
        let stored = self.hash_slot(self.boot.active.other(), job.size)?;
        if received != job.sha256 || stored != job.sha256 {
            // The slot's bytes are not the job's: a later offer of the same job starts
            // over. Clearing bits needs no erase; if even that fails, the next attempt
            // resumes, fails verification again and clears it then.
            let _ = self.clear_marker();
            self.state = OtaState::RolledBack;
            self.rollback = Some(RollbackReason::VerificationFailed);
            self.job = None;
            return Err(OtaError::VerificationFailed);
        }
        Ok(())
    }

    fn hash_slot(&mut self, slot: Slot, size: u32) -> Result<[u8; 32], OtaError> {
        let mut hasher = Sha256::new();
        self.read_slot(slot, size, &mut |chunk| hasher.update(chunk))?;
        Ok(hasher.finalize().into())
    }

    /// Overwrites the candidate slot's job marker with zeros, so no job matches it.
    fn clear_marker(&mut self) -> Result<(), OtaError> {
        let end = self
            .layout
            .start(self.boot.active.other())
            .checked_add(self.layout.slot_size)
            .ok_or(OtaError::InvalidLayout)?;
        let at = end
            .checked_sub(JOB_MARKER_LEN)
            .ok_or(OtaError::InvalidLayout)?;
        self.flash
            .write(at, &[0u8; JOB_MARKER_LEN as usize])
            .map_err(Self::flash_err)
    }

    /// Reads the first `size` bytes of `slot` in blocks, handing each to `each`.
    fn read_slot(
        &mut self,
        slot: Slot,
        size: u32,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), OtaError> {
        let mut block = [0u8; READ_BLOCK];
        let mut done = 0u32;
        let base = self.layout.start(slot);
        while done < size {
            let want = usize::try_from(size.saturating_sub(done))
                .unwrap_or(READ_BLOCK)
                .min(READ_BLOCK);
            // Reads are whole blocks (READ_SIZE divides READ_BLOCK) and stay inside the
            // erase-aligned slot, since size <= slot_size.
            let aligned = want
                .div_ceil(F::READ_SIZE)
                .saturating_mul(F::READ_SIZE)
                .min(READ_BLOCK);
            let buf = block.get_mut(..aligned).ok_or(OtaError::InvalidLayout)?;
            let at = base.checked_add(done).ok_or(OtaError::InvalidLayout)?;
            self.flash.read(at, buf).map_err(Self::flash_err)?;
            each(buf.get(..want).ok_or(OtaError::InvalidLayout)?);
            done = done.saturating_add(u32::try_from(want).unwrap_or(u32::MAX));
        }
        Ok(())
    }

    /// Marks the verified candidate for one trial boot (state `Updating`). Reboot next; the
    /// new boot's [`OtaUpdater::boot_check`] enters `Testing`.
    pub fn install(&mut self) -> Result<(), OtaError> {
        if self.state != OtaState::Verifying {
            return Err(OtaError::WrongState(self.state));
        }
        let job = self.job.ok_or(OtaError::WrongState(self.state))?;
        self.write_boot(BootState {
            trial: Trial::Pending,
            candidate_version: job.version,
            ..self.boot
        })?;
        self.state = OtaState::Updating;
        Ok(())
    }

    /// Makes the trial image permanent (state `Confirmed`). Only while `Testing`.
    pub fn confirm(&mut self) -> Result<(), OtaError> {
        if self.state != OtaState::Testing {
            return Err(OtaError::WrongState(self.state));
        }
        self.write_boot(BootState {
            active: self.boot.active.other(),
            active_version: self.boot.candidate_version,
            candidate_version: 0,
            trial: Trial::None,
        })?;
        self.state = OtaState::Confirmed;
        Ok(())
    }

    /// Gives up the trial image now, without waiting for another reboot (for example when
    /// the test health check fails). The previous image runs after the next reboot.
    pub fn reject_trial(&mut self) -> Result<(), OtaError> {
        if self.state != OtaState::Testing {
            return Err(OtaError::WrongState(self.state));
        }
        self.write_boot(BootState {
            trial: Trial::None,
            candidate_version: 0,
            ..self.boot
        })?;
        self.state = OtaState::RolledBack;
        self.rollback = Some(RollbackReason::NotConfirmed);
        Ok(())
    }
}
