//! Staged OTA rollouts with deterministic cohorts, a failure threshold and rollback.
//!
//! **Cohorts.** Every target device gets a bucket in `0..10_000` from a 64-bit FNV-1a hash
//! of its id (and an optional salt), stable across platforms and runs. Targets are ordered
//! by `(bucket, id)`; stage `k` with cumulative share `s_k` (basis points) admits the first
//! `floor(s_k * N / 10_000)` targets of that order. So a device's cohort depends only on its
//! id, and **a stage never holds more devices than its share** (its cumulative admission is
//! at most `s_k * N`). With few targets a small stage can be empty; it then passes at once
//! and the next stage is the first with devices.
//!
//! **Advancing and halting.** A stage's failure rate is `(failed + timed out) / devices in
//! the stage` (withdrawn devices are not counted). As soon as it exceeds
//! [`RolloutConfig::max_failure_bp`] the rollout halts (waiting longer could only add
//! failures); when every device of the stage has an outcome and the rate is within the
//! threshold, the next stage is admitted. After the last stage the rollout is complete.
//!
//! **Report deadline.** A stage starts its clock when it is admitted (and again when a paused
//! rollout resumes). A device still pending more than [`RolloutConfig::report_timeout_ms`]
//! later is marked [`Outcome::TimedOut`] by [`Rollout::expire`], which the backend calls with
//! its clock (`Fleet::tick_rollouts`). A time-out **counts as a failure** for the failure
//! rate (a device that cannot report its update is not known to run it), but is tallied
//! separately so operators can tell silent devices from failing ones. A timed-out device is
//! told to roll back (a no-op if it never switched images), and its late report is refused
//! with [`RolloutError::Expired`]. So a silent device never stalls a stage: after the
//! deadline the stage advances or halts like any other.
//!
//! **Operator control.** [`Rollout::pause`] stops admitting and instructing: pending devices
//! are told to wait, the deadline clock stops, and reports of devices already installing
//! are still counted (and can still halt the rollout). [`Rollout::resume`] restarts the
//! stage's clock and applies the advance rule at once. [`Rollout::abort`] ends a running,
//! paused or halted rollout for good: every device that installed the new image (succeeded,
//! failed or timed out) is told to roll back, exactly as a halt tells failed devices, and
//! every pending device is told to cancel the install.
//!
//! **Instructions.** A device admitted and pending in a running rollout is told to install;
//! a device whose update failed or timed out is told to roll back to the previous version
//! (always, and in particular when the rollout halts); after an abort, succeeded devices roll
//! back too and pending ones cancel; everything else waits.
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_fleet::rollout::{Instruction, Rollout, RolloutConfig, RolloutStatus};
//!
//! let targets: Vec<DeviceId> =
//!     (0..1000).map(|i| DeviceId::new(&format!("dev-{i}")).unwrap()).collect();
//! let mut r = Rollout::new("2.0.0", Some("1.9.0"), targets, RolloutConfig::default(), 0)?;
//! assert_eq!(r.admitted().count(), 10); // 1 % of 1000
//! let canaries: Vec<DeviceId> = r.admitted().copied().collect();
//! for d in &canaries[..9] {
//!     r.report(d, true, 1_000)?;
//! }
//! // The tenth canary stays silent: nothing happens until its deadline has passed...
//! let deadline = r.deadline_ms().unwrap_or_default();
//! assert!(r.expire(deadline).timed_out.is_empty());
//! // ...then it counts as failed: 10 % > 5 % threshold, the rollout halts.
//! assert_eq!(r.expire(deadline + 1).timed_out, [canaries[9]]);
//! assert_eq!(r.status(), RolloutStatus::Halted { stage: 0 });
//! assert_eq!(r.instruction(&canaries[9]), Instruction::RollBack { to: Some("1.9.0".into()) });
//! # Ok::<(), iot_fleet::rollout::RolloutError>(())
//! ```

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use iot_core::{DeviceId, Error, ErrorKind};

/// Basis points in a whole (100 %).
pub const WHOLE_BP: u16 = 10_000;

/// The 64-bit FNV-1a hash of `bytes`.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        // `i < bytes.len()` bounds the index; `const fn` cannot use `get`.
        #[allow(clippy::indexing_slicing)]
        let b = bytes[i];
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i = i.saturating_add(1);
    }
    hash
}

/// The device's cohort bucket in `0..10_000` for `salt`.
pub fn cohort_bucket(id: &DeviceId, salt: u64) -> u16 {
    let mut bytes = [0u8; 8 + DeviceId::MAX_LEN];
    let id_bytes = id.as_str().as_bytes();
    let len = id_bytes.len().min(DeviceId::MAX_LEN).saturating_add(8);
    if let Some(dst) = bytes.get_mut(..8) {
        dst.copy_from_slice(&salt.to_be_bytes());
    }
    if let Some(dst) = bytes.get_mut(8..len) {
        dst.copy_from_slice(id_bytes.get(..len.saturating_sub(8)).unwrap_or(&[]));
    }
    let hash = fnv1a64(bytes.get(..len).unwrap_or(&[]));
    // The remainder is below 10,000 and fits in u16.
    u16::try_from(hash.checked_rem(u64::from(WHOLE_BP)).unwrap_or(0)).unwrap_or(0)
}

/// A rollout's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RolloutConfig {
    /// Cumulative share of targets admitted by each stage, in basis points; strictly
    /// increasing and ending at 10,000. Default 1 % -> 10 % -> 50 % -> 100 %.
    pub stages_bp: Vec<u16>,
    /// The highest failure rate a stage may have and still advance, in basis points
    /// (default 500 = 5 %).
    pub max_failure_bp: u16,
    /// Mixed into the cohort hash; 0 (the default) keeps the same canaries for every
    /// rollout, another value picks different ones.
    pub salt: u64,
    /// How long a device admitted to a stage may stay silent before it counts as timed out
    /// (a failure), in milliseconds from the stage's start or resumption; at least 1.
    /// Default 24 hours ([`DEFAULT_REPORT_TIMEOUT_MS`]).
    #[cfg_attr(feature = "serde", serde(default = "default_report_timeout_ms"))]
    pub report_timeout_ms: u64,
}

/// The default report deadline: 24 hours, long enough for devices that check in daily.
pub const DEFAULT_REPORT_TIMEOUT_MS: u64 = 24 * 3_600_000;

#[cfg(feature = "serde")]
const fn default_report_timeout_ms() -> u64 {
    DEFAULT_REPORT_TIMEOUT_MS
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            stages_bp: alloc::vec![100, 1_000, 5_000, 10_000],
            max_failure_bp: 500,
            salt: 0,
            report_timeout_ms: DEFAULT_REPORT_TIMEOUT_MS,
        }
    }
}

/// Why a rollout could not be created or a report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The stage shares are empty, not strictly increasing or do not end at 10,000.
    #[error("stage shares must increase strictly and end at 10000 basis points")]
    InvalidStages,
    /// The failure threshold is above 10,000 basis points.
    #[error("failure threshold above 100 %")]
    InvalidThreshold,
    /// The report timeout is zero.
    #[error("report timeout must be at least 1 ms")]
    InvalidTimeout,
    /// No device in the scope could take the rollout (none is `Active`).
    #[error("the rollout would target no device")]
    NoTargets,
    /// The device is not admitted to the rollout (not a target, or its stage has not started).
    #[error("device is not in an admitted cohort of this rollout")]
    NotAdmitted,
    /// The device already reported an outcome.
    #[error("device already reported")]
    AlreadyReported,
    /// The rollout is not running (for a report: halted, aborted or complete; for a
    /// pause: anything but running).
    #[error("rollout is not running")]
    NotRunning,
    /// `resume` of a rollout that is not paused.
    #[error("rollout is not paused")]
    NotPaused,
    /// `abort` of a rollout that already completed or was aborted.
    #[error("rollout has already ended")]
    Ended,
    /// The device's report deadline passed; it was counted as timed out.
    #[error("report deadline passed")]
    Expired,
}

impl Error for RolloutError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidStages | Self::InvalidThreshold | Self::InvalidTimeout => {
                ErrorKind::InvalidInput
            }
            Self::NotAdmitted | Self::NoTargets => ErrorKind::NotFound,
            Self::AlreadyReported => ErrorKind::Conflict,
            Self::NotRunning | Self::NotPaused | Self::Ended => ErrorKind::InvalidState,
            Self::Expired => ErrorKind::Timeout,
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum RolloutStatus {
    /// Stage `stage` (0-based) is admitted and collecting outcomes.
    Running {
        /// Current stage.
        stage: usize,
    },
    /// Stage `stage` exceeded the failure threshold; nothing more is admitted.
    Halted {
        /// The failing stage.
        stage: usize,
    },
    /// Every stage passed.
    Completed,
    /// An operator paused stage `stage`: nothing is admitted or told to install, the report
    /// deadline is suspended; reports of devices already installing still count.
    Paused {
        /// Current stage.
        stage: usize,
    },
    /// An operator aborted the rollout in stage `stage`: devices that installed the new
    /// image roll back, pending ones cancel. Final.
    Aborted {
        /// The stage it was in.
        stage: usize,
    },
}

/// One admitted device's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Outcome {
    /// Told to install, no result yet.
    Pending,
    /// Installed and running the new version.
    Succeeded,
    /// The update failed.
    Failed,
    /// Removed from the rollout (decommissioned); counts as neither success nor failure.
    Withdrawn,
    /// Did not report within [`RolloutConfig::report_timeout_ms`]; counts as a failure.
    TimedOut,
}

/// What a device should do about a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Instruction {
    /// Install this version.
    Install {
        /// Target version.
        version: String,
    },
    /// Go back to this version (`None`: whatever the device ran before).
    RollBack {
        /// Previous version.
        to: Option<String>,
    },
    /// The rollout was aborted before this device reported: stop installing (drop a
    /// download or a staged image); a device that already switched goes back to `to`.
    Cancel {
        /// Previous version.
        to: Option<String>,
    },
    /// Nothing to do now.
    Wait,
}

/// What a report changed at the rollout level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Progress {
    /// The stage keeps collecting.
    Unchanged,
    /// The rollout entered stage `0`-based index.
    Advanced(usize),
    /// The rollout halted in this stage.
    Halted(usize),
    /// The last stage passed.
    Completed,
}

/// Outcome counts of one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StageTally {
    /// Reported success.
    pub succeeded: usize,
    /// Reported failure.
    pub failed: usize,
    /// Missed the report deadline (counted as failures).
    pub timed_out: usize,
    /// No outcome yet.
    pub pending: usize,
}

impl StageTally {
    /// Failures that count against the threshold: reported failures and time-outs.
    pub fn failures(&self) -> usize {
        self.failed.saturating_add(self.timed_out)
    }

    /// Devices the failure rate is taken over (every admitted device not withdrawn).
    pub fn counted(&self) -> usize {
        self.succeeded
            .saturating_add(self.failures())
            .saturating_add(self.pending)
    }
}

/// What [`Rollout::expire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The devices newly marked [`Outcome::TimedOut`], in cohort order.
    pub timed_out: Vec<DeviceId>,
    /// What that did to the rollout.
    pub progress: Progress,
}

/// A staged rollout of one firmware version to a fixed set of targets.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Rollout {
    version: String,
    previous: Option<String>,
    config: RolloutConfig,
    /// Targets in cohort order: `(bucket, id)`.
    order: Vec<DeviceId>,
    /// Cumulative admission per stage.
    caps: Vec<usize>,
    /// Admitted (or withdrawn) devices: their stage and outcome.
    outcomes: BTreeMap<DeviceId, (usize, Outcome)>,
    /// Per stage outcome counts. Kept incrementally so a report costs `O(log n)` even in a
    /// stage of 50,000 devices.
    tallies: Vec<StageTally>,
    status: RolloutStatus,
    /// When the current stage was admitted or last resumed.
    stage_since_ms: u64,
}

#[derive(Clone, Copy)]
enum Tally {
    Succeeded,
    Failed,
    TimedOut,
    Pending,
}

fn validate(config: &RolloutConfig) -> Result<(), RolloutError> {
    if config.max_failure_bp > WHOLE_BP {
        return Err(RolloutError::InvalidThreshold);
    }
    let increasing = config.stages_bp.windows(2).all(|w| match w {
        [a, b] => a < b,
        _ => true,
    });
    if !increasing || config.stages_bp.last() != Some(&WHOLE_BP) {
        return Err(RolloutError::InvalidStages);
    }
    if config.report_timeout_ms == 0 {
        return Err(RolloutError::InvalidTimeout);
    }
    Ok(())
}

/// `floor(share_bp * n / 10_000)`: the most devices a stage with `share_bp` may hold.
pub fn stage_cap(share_bp: u16, n: usize) -> usize {
    let n = u128::try_from(n).unwrap_or(u128::MAX);
    let cap = n
        .saturating_mul(u128::from(share_bp))
        .checked_div(u128::from(WHOLE_BP))
        .unwrap_or(0);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

impl Rollout {
    /// A rollout of `version` (replacing `previous`) to `targets` (duplicates ignored),
    /// started at `now_ms` and running its first non-empty stage.
    pub fn new(
        version: &str,
        previous: Option<&str>,
        targets: Vec<DeviceId>,
        config: RolloutConfig,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        validate(&config)?;
        let mut keyed: Vec<(u16, DeviceId)> = targets
            .into_iter()
            .map(|id| (cohort_bucket(&id, config.salt), id))
            .collect();
        keyed.sort_unstable();
        keyed.dedup_by(|a, b| a.1 == b.1);
        let order: Vec<DeviceId> = keyed.into_iter().map(|(_, id)| id).collect();
        let caps: Vec<usize> = config
            .stages_bp
            .iter()
            .map(|s| stage_cap(*s, order.len()))
            .collect();
        let tallies = alloc::vec![StageTally::default(); caps.len()];
        let mut rollout = Self {
            version: String::from(version),
            previous: previous.map(String::from),
            config,
            order,
            caps,
            outcomes: BTreeMap::new(),
            tallies,
            status: RolloutStatus::Running { stage: 0 },
            stage_since_ms: now_ms,
        };
        rollout.admit(0);
        let _ = rollout.settle(0, now_ms);
        Ok(rollout)
    }

    /// The version being rolled out.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the rollout is.
    pub fn status(&self) -> RolloutStatus {
        self.status
    }

    /// The configuration.
    pub fn config(&self) -> &RolloutConfig {
        &self.config
    }

    /// How many targets the rollout has.
    pub fn target_count(&self) -> usize {
        self.order.len()
    }

    /// Cumulative admission limit of each stage.
    pub fn stage_caps(&self) -> &[usize] {
        &self.caps
    }

    fn stage_range(&self, stage: usize) -> (usize, usize) {
        let start = match stage.checked_sub(1) {
            Some(prev) => self.caps.get(prev).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.caps.get(stage).copied().unwrap_or(start);
        (start, end.max(start))
    }

    /// The devices of stage `stage` (those it admits beyond earlier stages).
    pub fn stage_members(&self, stage: usize) -> &[DeviceId] {
        let (start, end) = self.stage_range(stage);
        self.order.get(start..end).unwrap_or(&[])
    }

    fn count(&mut self, stage: usize, which: Tally, up: bool) {
        if let Some(t) = self.tallies.get_mut(stage) {
            let c = match which {
                Tally::Succeeded => &mut t.succeeded,
                Tally::Failed => &mut t.failed,
                Tally::TimedOut => &mut t.timed_out,
                Tally::Pending => &mut t.pending,
            };
            *c = if up {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            };
        }
    }

    /// When the current stage's pending devices time out: `Some` only while running (the
    /// stage's start or resumption plus [`RolloutConfig::report_timeout_ms`]); a device still
    /// pending at a time *after* it is timed out by [`Rollout::expire`].
    pub fn deadline_ms(&self) -> Option<u64> {
        match self.status {
            RolloutStatus::Running { .. } => Some(
                self.stage_since_ms
                    .saturating_add(self.config.report_timeout_ms),
            ),
            _ => None,
        }
    }

    fn admit(&mut self, stage: usize) {
        let (start, end) = self.stage_range(stage);
        let mut admitted = 0usize;
        for id in self.order.get(start..end).unwrap_or(&[]) {
            if let alloc::collections::btree_map::Entry::Vacant(slot) = self.outcomes.entry(*id) {
                slot.insert((stage, Outcome::Pending));
                admitted = admitted.saturating_add(1);
            }
        }
        if let Some(t) = self.tallies.get_mut(stage) {
            t.pending = t.pending.saturating_add(admitted);
        }
    }

    fn stage_of_position(&self, position: usize) -> usize {
        self.caps
            .iter()
            .position(|cap| position < *cap)
            .unwrap_or(self.caps.len())
    }

    /// Every device admitted so far and not withdrawn, in cohort order.
    pub fn admitted(&self) -> impl Iterator<Item = &DeviceId> + '_ {
        self.order.iter().filter(|id| {
            self.outcomes
                .get(*id)
                .is_some_and(|(_, o)| *o != Outcome::Withdrawn)
        })
    }

    /// A device's outcome, if admitted.
    pub fn outcome(&self, id: &DeviceId) -> Option<Outcome> {
        self.outcomes.get(id).map(|(_, o)| *o)
    }

    /// The outcome counts of `stage`.
    pub fn stage_tally(&self, stage: usize) -> StageTally {
        self.tallies.get(stage).copied().unwrap_or_default()
    }

    /// Records a device's update result (at `now_ms`) and advances, halts or completes the
    /// rollout. Accepted while running or paused (a paused rollout only halts, it does not
    /// advance until resumed); a device that already timed out gets
    /// [`RolloutError::Expired`].
    pub fn report(
        &mut self,
        id: &DeviceId,
        success: bool,
        now_ms: u64,
    ) -> Result<Progress, RolloutError> {
        let stage = match self.status {
            RolloutStatus::Running { stage } | RolloutStatus::Paused { stage } => Some(stage),
            // A device that was installing when the rollout halted still reports: its
            // outcome is recorded so that, if it failed, it is told to roll back.
            RolloutStatus::Halted { .. } => None,
            _ => return Err(RolloutError::NotRunning),
        };
        let (own_stage, outcome) = self.outcomes.get_mut(id).ok_or(RolloutError::NotAdmitted)?;
        match *outcome {
            Outcome::Pending => {}
            Outcome::TimedOut => return Err(RolloutError::Expired),
            _ => return Err(RolloutError::AlreadyReported),
        }
        let (new, which) = if success {
            (Outcome::Succeeded, Tally::Succeeded)
        } else {
            (Outcome::Failed, Tally::Failed)
        };
        *outcome = new;
        let own_stage = *own_stage;
        self.count(own_stage, Tally::Pending, false);
        self.count(own_stage, which, true);
        Ok(stage.map_or(Progress::Unchanged, |stage| self.settle(stage, now_ms)))
    }

    /// Removes a device (decommissioned) from the rollout at `now_ms`. Its place in its
    /// cohort stays taken, so stage sizes never grow. Returns what this did to the stage.
    pub fn withdraw(&mut self, id: &DeviceId, now_ms: u64) -> Progress {
        if let Some((stage, o)) = self.outcomes.get_mut(id) {
            if *o == Outcome::Pending {
                *o = Outcome::Withdrawn;
                let stage = *stage;
                self.count(stage, Tally::Pending, false);
            }
        } else if let Some(position) = self.order.iter().position(|d| d == id) {
            let stage = self.stage_of_position(position);
            self.outcomes.insert(*id, (stage, Outcome::Withdrawn));
        }
        match self.status {
            RolloutStatus::Running { stage } | RolloutStatus::Paused { stage } => {
                self.settle(stage, now_ms)
            }
            _ => Progress::Unchanged,
        }
    }

    /// Times out, at `now_ms`, every device of the running stage still pending after
    /// [`Rollout::deadline_ms`] (strictly later), then applies the halt and advance rules.
    /// Does nothing before the deadline or unless running.
    pub fn expire(&mut self, now_ms: u64) -> Expiry {
        let unchanged = Expiry {
            timed_out: Vec::new(),
            progress: Progress::Unchanged,
        };
        let (RolloutStatus::Running { stage }, Some(deadline)) = (self.status, self.deadline_ms())
        else {
            return unchanged;
        };
        if now_ms <= deadline {
            return unchanged;
        }
        let mut timed_out = Vec::new();
        for id in self.stage_members(stage).to_vec() {
            if let Some((own_stage, o)) = self.outcomes.get_mut(&id)
                && *o == Outcome::Pending
            {
                *o = Outcome::TimedOut;
                let own_stage = *own_stage;
                self.count(own_stage, Tally::Pending, false);
                self.count(own_stage, Tally::TimedOut, true);
                timed_out.push(id);
            }
        }
        if timed_out.is_empty() {
            return unchanged;
        }
        let progress = self.settle(stage, now_ms);
        Expiry {
            timed_out,
            progress,
        }
    }

    /// Pauses a running rollout.
    pub fn pause(&mut self) -> Result<(), RolloutError> {
        let RolloutStatus::Running { stage } = self.status else {
            return Err(RolloutError::NotRunning);
        };
        self.status = RolloutStatus::Paused { stage };
        Ok(())
    }

    /// Resumes a paused rollout at `now_ms`: pending devices are told to install again with
    /// a fresh report deadline, and a stage that finished while paused advances at once.
    pub fn resume(&mut self, now_ms: u64) -> Result<Progress, RolloutError> {
        let RolloutStatus::Paused { stage } = self.status else {
            return Err(RolloutError::NotPaused);
        };
        self.status = RolloutStatus::Running { stage };
        self.stage_since_ms = now_ms;
        Ok(self.settle(stage, now_ms))
    }

    /// Aborts a running, paused or halted rollout for good: devices that installed the
    /// new image are told to roll back, pending ones to cancel. Returns the stage it was in.
    pub fn abort(&mut self) -> Result<usize, RolloutError> {
        let stage = match self.status {
            RolloutStatus::Running { stage }
            | RolloutStatus::Paused { stage }
            | RolloutStatus::Halted { stage } => stage,
            RolloutStatus::Completed | RolloutStatus::Aborted { .. } => {
                return Err(RolloutError::Ended);
            }
        };
        self.status = RolloutStatus::Aborted { stage };
        Ok(stage)
    }

    /// Applies the halt and advance rules to the current `stage`, repeatedly (empty or
    /// fully withdrawn stages pass at once). A paused rollout halts but does not advance.
    fn settle(&mut self, mut stage: usize, now_ms: u64) -> Progress {
        let mut progress = Progress::Unchanged;
        loop {
            let tally = self.stage_tally(stage);
            let over = u128::try_from(tally.failures())
                .unwrap_or(u128::MAX)
                .saturating_mul(u128::from(WHOLE_BP))
                > u128::try_from(tally.counted())
                    .unwrap_or(u128::MAX)
                    .saturating_mul(u128::from(self.config.max_failure_bp));
            if over {
                self.status = RolloutStatus::Halted { stage };
                return Progress::Halted(stage);
            }
            if tally.pending > 0 || matches!(self.status, RolloutStatus::Paused { .. }) {
                return progress;
            }
            let next = stage.saturating_add(1);
            if next >= self.caps.len() {
                self.status = RolloutStatus::Completed;
                return Progress::Completed;
            }
            stage = next;
            self.status = RolloutStatus::Running { stage };
            self.stage_since_ms = now_ms;
            self.admit(stage);
            progress = Progress::Advanced(stage);
        }
    }

    /// What `id` should do now.
    pub fn instruction(&self, id: &DeviceId) -> Instruction {
        let outcome = self.outcomes.get(id).map(|(_, o)| *o);
        match (outcome, self.status) {
            (Some(Outcome::Failed | Outcome::TimedOut), _)
            | (Some(Outcome::Succeeded), RolloutStatus::Aborted { .. }) => Instruction::RollBack {
                to: self.previous.clone(),
            },
            (Some(Outcome::Pending), RolloutStatus::Aborted { .. }) => Instruction::Cancel {
                to: self.previous.clone(),
            },
            (Some(Outcome::Pending), RolloutStatus::Running { .. }) => Instruction::Install {
                version: self.version.clone(),
            },
            _ => Instruction::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn ids(n: usize) -> Vec<DeviceId> {
        (0..n)
            .map(|i| DeviceId::new(&format!("dev-{i:05}")).unwrap())
            .collect()
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cohorts_depend_only_on_the_id_and_salt() {
        let a = DeviceId::new("sensor-17").unwrap();
        assert_eq!(cohort_bucket(&a, 0), cohort_bucket(&a, 0));
        assert!(cohort_bucket(&a, 0) < WHOLE_BP);
        // Same targets in another order give the same stages.
        let mut rev = ids(500);
        rev.reverse();
        let r1 = Rollout::new("2", None, ids(500), RolloutConfig::default(), 0).unwrap();
        let r2 = Rollout::new("2", None, rev, RolloutConfig::default(), 0).unwrap();
        for s in 0..4 {
            assert_eq!(r1.stage_members(s), r2.stage_members(s));
        }
        let salted = Rollout::new(
            "2",
            None,
            ids(500),
            RolloutConfig {
                salt: 99,
                ..RolloutConfig::default()
            },
            0,
        )
        .unwrap();
        assert_ne!(salted.stage_members(1), r1.stage_members(1));
    }

    #[test]
    fn default_stages_admit_1_10_50_100_percent() {
        let mut r = Rollout::new("2", Some("1"), ids(1000), RolloutConfig::default(), 0).unwrap();
        assert_eq!(r.stage_caps(), &[10, 100, 500, 1000]);
        let mut admitted = alloc::vec![r.admitted().count()];
        while let RolloutStatus::Running { stage } = r.status() {
            for d in r.stage_members(stage).to_vec() {
                r.report(&d, true, 1).unwrap();
            }
            admitted.push(r.admitted().count());
        }
        assert_eq!(admitted, [10, 100, 500, 1000, 1000]);
        assert_eq!(r.status(), RolloutStatus::Completed);
        assert_eq!(r.instruction(&ids(1)[0]), Instruction::Wait);
    }

    #[test]
    fn halts_on_failures_and_tells_failed_devices_to_roll_back() {
        let mut r = Rollout::new("2", Some("1"), ids(1000), RolloutConfig::default(), 0).unwrap();
        for d in r.stage_members(0).to_vec() {
            r.report(&d, true, 1).unwrap();
        }
        assert_eq!(r.status(), RolloutStatus::Running { stage: 1 });
        let stage1 = r.stage_members(1).to_vec();
        assert_eq!(stage1.len(), 90);
        // 4 of 90 failed = 4.4 %: within 5 %.
        for d in &stage1[..4] {
            assert_eq!(r.report(d, false, 1).unwrap(), Progress::Unchanged);
        }
        // The 5th failure makes 5.6 %: halt at once.
        assert_eq!(r.report(&stage1[4], false, 1).unwrap(), Progress::Halted(1));
        assert_eq!(r.status(), RolloutStatus::Halted { stage: 1 });
        for d in &stage1[..5] {
            assert_eq!(
                r.instruction(d),
                Instruction::RollBack {
                    to: Some("1".into())
                }
            );
        }
        // Pending devices of the halted stage are no longer told to install...
        assert_eq!(r.instruction(&stage1[50]), Instruction::Wait);
        // ...but one that was already installing still reports: a late failure is told to
        // roll back, a late success waits, and the rollout stays halted.
        assert_eq!(r.report(&stage1[50], false, 1), Ok(Progress::Unchanged));
        assert_eq!(
            r.instruction(&stage1[50]),
            Instruction::RollBack {
                to: Some("1".into())
            }
        );
        assert_eq!(r.report(&stage1[51], true, 1), Ok(Progress::Unchanged));
        assert_eq!(r.instruction(&stage1[51]), Instruction::Wait);
        assert_eq!(
            r.report(&stage1[50], true, 1),
            Err(RolloutError::AlreadyReported)
        );
        assert!(matches!(r.status(), RolloutStatus::Halted { .. }));
        assert_eq!(r.admitted().count(), 100);
    }

    #[test]
    fn small_fleets_skip_empty_stages_and_reports_are_checked() {
        let mut r = Rollout::new("2", None, ids(50), RolloutConfig::default(), 0).unwrap();
        // 1 % of 50 is 0 devices: the first stage with devices is the 10 % one (5 devices).
        assert_eq!(r.status(), RolloutStatus::Running { stage: 1 });
        assert_eq!(r.admitted().count(), 5);
        let outsider = r.stage_members(3)[0];
        assert_eq!(r.report(&outsider, true, 1), Err(RolloutError::NotAdmitted));
        let first = r.stage_members(1)[0];
        r.report(&first, true, 1).unwrap();
        assert_eq!(
            r.report(&first, true, 1),
            Err(RolloutError::AlreadyReported)
        );
        let empty = Rollout::new("2", None, Vec::new(), RolloutConfig::default(), 0).unwrap();
        assert_eq!(empty.status(), RolloutStatus::Completed);
    }

    #[test]
    fn withdrawn_devices_do_not_block_a_stage() {
        let mut r = Rollout::new("2", None, ids(200), RolloutConfig::default(), 0).unwrap();
        let canaries = r.stage_members(0).to_vec();
        assert_eq!(canaries.len(), 2);
        r.report(&canaries[0], true, 1).unwrap();
        assert_eq!(r.withdraw(&canaries[1], 1), Progress::Advanced(1));
        assert_eq!(r.status(), RolloutStatus::Running { stage: 1 });
        assert_eq!(r.outcome(&canaries[1]), Some(Outcome::Withdrawn));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = |stages: Vec<u16>| RolloutConfig {
            stages_bp: stages,
            ..RolloutConfig::default()
        };
        for stages in [
            alloc::vec![],
            alloc::vec![100, 100, 10_000],
            alloc::vec![100, 5_000],
            alloc::vec![5_000, 1_000, 10_000],
        ] {
            assert_eq!(
                Rollout::new("2", None, ids(3), bad(stages), 0).unwrap_err(),
                RolloutError::InvalidStages
            );
        }
        let threshold = RolloutConfig {
            max_failure_bp: 10_001,
            ..RolloutConfig::default()
        };
        assert_eq!(
            Rollout::new("2", None, ids(3), threshold, 0).unwrap_err(),
            RolloutError::InvalidThreshold
        );
        let zero = RolloutConfig {
            report_timeout_ms: 0,
            ..RolloutConfig::default()
        };
        assert_eq!(
            Rollout::new("2", None, ids(3), zero, 0).unwrap_err(),
            RolloutError::InvalidTimeout
        );
    }

    fn timed(n: usize, timeout: u64, start: u64) -> Rollout {
        let config = RolloutConfig {
            report_timeout_ms: timeout,
            ..RolloutConfig::default()
        };
        Rollout::new("2", Some("1"), ids(n), config, start).unwrap()
    }

    #[test]
    fn silent_devices_time_out_after_the_deadline_and_never_before() {
        // 1000 targets: stage 0 holds 10. Nine report, one stays silent.
        let mut r = timed(1000, 500, 100);
        assert_eq!(r.deadline_ms(), Some(600));
        let canaries = r.stage_members(0).to_vec();
        for d in &canaries[..9] {
            r.report(d, true, 200).unwrap();
        }
        for now in [100, 599, 600] {
            assert_eq!(r.expire(now).timed_out, Vec::<DeviceId>::new());
            assert_eq!(r.status(), RolloutStatus::Running { stage: 0 });
        }
        let expiry = r.expire(601);
        // One of ten (10 %) timed out: over the 5 % threshold, so the rollout halts.
        assert_eq!(expiry.timed_out, [canaries[9]]);
        assert_eq!(expiry.progress, Progress::Halted(0));
        assert_eq!(r.outcome(&canaries[9]), Some(Outcome::TimedOut));
        let tally = r.stage_tally(0);
        assert_eq!(
            (tally.succeeded, tally.timed_out, tally.failures()),
            (9, 1, 1)
        );
        assert_eq!(
            r.instruction(&canaries[9]),
            Instruction::RollBack {
                to: Some("1".into())
            }
        );
        assert_eq!(
            r.report(&canaries[9], true, 700),
            Err(RolloutError::Expired)
        );
    }

    #[test]
    fn timeouts_within_the_threshold_let_the_stage_advance_with_a_fresh_clock() {
        let config = RolloutConfig {
            report_timeout_ms: 1_000,
            max_failure_bp: 2_000,
            ..RolloutConfig::default()
        };
        let mut r = Rollout::new("2", None, ids(1000), config, 0).unwrap();
        let canaries = r.stage_members(0).to_vec();
        for d in &canaries[..9] {
            r.report(d, true, 10).unwrap();
        }
        let expiry = r.expire(1_001);
        assert_eq!(expiry.timed_out.len(), 1);
        assert_eq!(expiry.progress, Progress::Advanced(1));
        // The next stage's clock starts when it is admitted.
        assert_eq!(r.deadline_ms(), Some(2_001));
        assert!(r.expire(2_001).timed_out.is_empty());
        assert_eq!(r.expire(2_002).timed_out.len(), 90);
        assert_eq!(r.status(), RolloutStatus::Halted { stage: 1 });
        // A late report of a timed-out device in a running rollout is refused as expired.
        let mut late = timed(1000, 10, 0);
        let first = late.stage_members(0)[0];
        let config = RolloutConfig {
            max_failure_bp: 10_000,
            report_timeout_ms: 10,
            ..RolloutConfig::default()
        };
        let mut tolerant = Rollout::new("2", None, ids(1000), config, 0).unwrap();
        let second = tolerant.stage_members(0)[0];
        late.expire(11);
        assert_eq!(late.report(&first, true, 12), Err(RolloutError::Expired));
        tolerant.expire(11);
        assert_eq!(tolerant.status(), RolloutStatus::Running { stage: 1 });
        assert_eq!(
            tolerant.report(&second, true, 12),
            Err(RolloutError::Expired)
        );
    }

    #[test]
    fn pause_stops_instructions_and_the_clock_resume_restarts_them() {
        let mut r = timed(1000, 100, 0);
        let canaries = r.stage_members(0).to_vec();
        r.pause().unwrap();
        assert_eq!(r.pause(), Err(RolloutError::NotRunning));
        assert_eq!(r.status(), RolloutStatus::Paused { stage: 0 });
        assert_eq!(r.instruction(&canaries[0]), Instruction::Wait);
        assert_eq!(r.deadline_ms(), None);
        // No time-outs while paused, however long.
        assert!(r.expire(1_000_000).timed_out.is_empty());
        // Devices already installing still report; a finished stage does not advance.
        for d in &canaries {
            assert_eq!(r.report(d, true, 500).unwrap(), Progress::Unchanged);
        }
        assert_eq!(r.status(), RolloutStatus::Paused { stage: 0 });
        assert_eq!(r.admitted().count(), 10);
        assert_eq!(r.resume(2_000).unwrap(), Progress::Advanced(1));
        assert_eq!(r.resume(2_000), Err(RolloutError::NotPaused));
        assert_eq!(r.deadline_ms(), Some(2_100));
        let next = r.stage_members(1)[0];
        assert_eq!(
            r.instruction(&next),
            Instruction::Install {
                version: "2".into()
            }
        );
        // Paused reports can still halt.
        r.pause().unwrap();
        let stage1 = r.stage_members(1).to_vec();
        let mut last = Progress::Unchanged;
        for d in &stage1[..5] {
            last = r.report(d, false, 2_050).unwrap();
        }
        assert_eq!(last, Progress::Halted(1));
        assert_eq!(r.resume(3_000), Err(RolloutError::NotPaused));
    }

    #[test]
    fn abort_rolls_back_installed_devices_and_cancels_pending_ones() {
        let mut r = timed(1000, 100, 0);
        let canaries = r.stage_members(0).to_vec();
        r.report(&canaries[0], true, 1).unwrap();
        r.report(&canaries[1], false, 1).unwrap();
        assert_eq!(r.abort(), Ok(0));
        assert_eq!(r.status(), RolloutStatus::Aborted { stage: 0 });
        let back = Instruction::RollBack {
            to: Some("1".into()),
        };
        assert_eq!(r.instruction(&canaries[0]), back);
        assert_eq!(r.instruction(&canaries[1]), back);
        assert_eq!(
            r.instruction(&canaries[2]),
            Instruction::Cancel {
                to: Some("1".into())
            }
        );
        // Never admitted: nothing to do.
        assert_eq!(r.instruction(&r.stage_members(3)[0]), Instruction::Wait);
        assert_eq!(r.abort(), Err(RolloutError::Ended));
        assert_eq!(r.pause(), Err(RolloutError::NotRunning));
        assert_eq!(r.resume(5), Err(RolloutError::NotPaused));
        assert_eq!(
            r.report(&canaries[2], true, 5),
            Err(RolloutError::NotRunning)
        );
        assert!(r.expire(1_000).timed_out.is_empty());
        // A halted rollout can be aborted; a completed one cannot.
        let mut halted = timed(100, 100, 0);
        let first = halted.stage_members(0)[0];
        assert_eq!(
            halted.report(&first, false, 1).unwrap(),
            Progress::Halted(0)
        );
        assert_eq!(halted.abort(), Ok(0));
        let mut done = timed(0, 100, 0);
        assert_eq!(done.status(), RolloutStatus::Completed);
        assert_eq!(done.abort(), Err(RolloutError::Ended));
    }
}
