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
//! **Advancing and halting.** A stage's failure rate is `failed / devices in the stage`.
//! As soon as it exceeds [`RolloutConfig::max_failure_bp`] the rollout halts (waiting
//! longer could only add failures); when every device of the stage has reported and the
//! rate is within the threshold, the next stage is admitted. After the last stage the
//! rollout is complete.
//!
//! **Instructions.** A device admitted and pending is told to install; a device whose update
//! failed is told to roll back to the previous version (always, and in particular when the
//! rollout halts); everything else waits.
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_fleet::rollout::{Instruction, Rollout, RolloutConfig, RolloutStatus};
//!
//! let targets: Vec<DeviceId> =
//!     (0..1000).map(|i| DeviceId::new(&format!("dev-{i}")).unwrap()).collect();
//! let mut r = Rollout::new("2.0.0", Some("1.9.0"), targets, RolloutConfig::default())?;
//! assert_eq!(r.admitted().count(), 10); // 1 % of 1000
//! let canaries: Vec<DeviceId> = r.admitted().copied().collect();
//! for d in &canaries[..9] {
//!     r.report(d, true)?;
//! }
//! r.report(&canaries[9], false)?; // 10 % failure > 5 % threshold
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
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            stages_bp: alloc::vec![100, 1_000, 5_000, 10_000],
            max_failure_bp: 500,
            salt: 0,
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
    /// The device is not admitted to the rollout (not a target, or its stage has not started).
    #[error("device is not in an admitted cohort of this rollout")]
    NotAdmitted,
    /// The device already reported an outcome.
    #[error("device already reported")]
    AlreadyReported,
    /// The rollout is halted or complete.
    #[error("rollout is not running")]
    NotRunning,
}

impl Error for RolloutError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidStages | Self::InvalidThreshold => ErrorKind::InvalidInput,
            Self::NotAdmitted => ErrorKind::NotFound,
            Self::AlreadyReported => ErrorKind::Conflict,
            Self::NotRunning => ErrorKind::InvalidState,
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

/// A staged rollout of one firmware version to a fixed set of targets.
#[derive(Debug, Clone, PartialEq)]
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
    /// Per stage: succeeded, failed, pending. Kept incrementally so a report costs
    /// `O(log n)` even in a stage of 50,000 devices.
    tallies: Vec<[usize; 3]>,
    status: RolloutStatus,
}

const SUCCEEDED: usize = 0;
const FAILED: usize = 1;
const PENDING: usize = 2;

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
    /// running its first non-empty stage.
    pub fn new(
        version: &str,
        previous: Option<&str>,
        targets: Vec<DeviceId>,
        config: RolloutConfig,
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
        let tallies = alloc::vec![[0; 3]; caps.len()];
        let mut rollout = Self {
            version: String::from(version),
            previous: previous.map(String::from),
            config,
            order,
            caps,
            outcomes: BTreeMap::new(),
            tallies,
            status: RolloutStatus::Running { stage: 0 },
        };
        rollout.admit(0);
        let _ = rollout.settle(0);
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

    fn count(&mut self, stage: usize, which: usize, up: bool) {
        if let Some(c) = self.tallies.get_mut(stage).and_then(|t| t.get_mut(which)) {
            *c = if up {
                c.saturating_add(1)
            } else {
                c.saturating_sub(1)
            };
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
        if let Some(t) = self.tallies.get_mut(stage).and_then(|t| t.get_mut(PENDING)) {
            *t = t.saturating_add(admitted);
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

    /// `(succeeded, failed, pending)` in `stage`.
    pub fn stage_tally(&self, stage: usize) -> (usize, usize, usize) {
        let [succeeded, failed, pending] = self.tallies.get(stage).copied().unwrap_or([0; 3]);
        (succeeded, failed, pending)
    }

    /// Records a device's update result and advances, halts or completes the rollout.
    pub fn report(&mut self, id: &DeviceId, success: bool) -> Result<Progress, RolloutError> {
        let RolloutStatus::Running { stage } = self.status else {
            return Err(RolloutError::NotRunning);
        };
        let (own_stage, outcome) = self.outcomes.get_mut(id).ok_or(RolloutError::NotAdmitted)?;
        if *outcome != Outcome::Pending {
            return Err(RolloutError::AlreadyReported);
        }
        let (new, which) = if success {
            (Outcome::Succeeded, SUCCEEDED)
        } else {
            (Outcome::Failed, FAILED)
        };
        *outcome = new;
        let own_stage = *own_stage;
        self.count(own_stage, PENDING, false);
        self.count(own_stage, which, true);
        Ok(self.settle(stage))
    }

    /// Removes a device (decommissioned) from the rollout. Its place in its cohort stays
    /// taken, so stage sizes never grow. Returns what this did to the running stage.
    pub fn withdraw(&mut self, id: &DeviceId) -> Progress {
        if let Some((stage, o)) = self.outcomes.get_mut(id) {
            if *o == Outcome::Pending {
                *o = Outcome::Withdrawn;
                let stage = *stage;
                self.count(stage, PENDING, false);
            }
        } else if let Some(position) = self.order.iter().position(|d| d == id) {
            let stage = self.stage_of_position(position);
            self.outcomes.insert(*id, (stage, Outcome::Withdrawn));
        }
        match self.status {
            RolloutStatus::Running { stage } => self.settle(stage),
            _ => Progress::Unchanged,
        }
    }

    /// Applies the halt and advance rules to the running `stage`, repeatedly (empty or
    /// fully withdrawn stages pass at once).
    fn settle(&mut self, mut stage: usize) -> Progress {
        let mut progress = Progress::Unchanged;
        loop {
            let (succeeded, failed, pending) = self.stage_tally(stage);
            let counted = succeeded.saturating_add(failed).saturating_add(pending);
            let over = u128::try_from(failed)
                .unwrap_or(u128::MAX)
                .saturating_mul(u128::from(WHOLE_BP))
                > u128::try_from(counted)
                    .unwrap_or(u128::MAX)
                    .saturating_mul(u128::from(self.config.max_failure_bp));
            if over {
                self.status = RolloutStatus::Halted { stage };
                return Progress::Halted(stage);
            }
            if pending > 0 {
                return progress;
            }
            let next = stage.saturating_add(1);
            if next >= self.caps.len() {
                self.status = RolloutStatus::Completed;
                return Progress::Completed;
            }
            stage = next;
            self.status = RolloutStatus::Running { stage };
            self.admit(stage);
            progress = Progress::Advanced(stage);
        }
    }

    /// What `id` should do now.
    pub fn instruction(&self, id: &DeviceId) -> Instruction {
        match (self.outcomes.get(id).map(|(_, o)| o), self.status) {
            (Some(Outcome::Failed), _) => Instruction::RollBack {
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
        let r1 = Rollout::new("2", None, ids(500), RolloutConfig::default()).unwrap();
        let r2 = Rollout::new("2", None, rev, RolloutConfig::default()).unwrap();
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
        )
        .unwrap();
        assert_ne!(salted.stage_members(1), r1.stage_members(1));
    }

    #[test]
    fn default_stages_admit_1_10_50_100_percent() {
        let mut r = Rollout::new("2", Some("1"), ids(1000), RolloutConfig::default()).unwrap();
        assert_eq!(r.stage_caps(), &[10, 100, 500, 1000]);
        let mut admitted = alloc::vec![r.admitted().count()];
        while let RolloutStatus::Running { stage } = r.status() {
            for d in r.stage_members(stage).to_vec() {
                r.report(&d, true).unwrap();
            }
            admitted.push(r.admitted().count());
        }
        assert_eq!(admitted, [10, 100, 500, 1000, 1000]);
        assert_eq!(r.status(), RolloutStatus::Completed);
        assert_eq!(r.instruction(&ids(1)[0]), Instruction::Wait);
    }

    #[test]
    fn halts_on_failures_and_tells_failed_devices_to_roll_back() {
        let mut r = Rollout::new("2", Some("1"), ids(1000), RolloutConfig::default()).unwrap();
        for d in r.stage_members(0).to_vec() {
            r.report(&d, true).unwrap();
        }
        assert_eq!(r.status(), RolloutStatus::Running { stage: 1 });
        let stage1 = r.stage_members(1).to_vec();
        assert_eq!(stage1.len(), 90);
        // 4 of 90 failed = 4.4 %: within 5 %.
        for d in &stage1[..4] {
            assert_eq!(r.report(d, false).unwrap(), Progress::Unchanged);
        }
        // The 5th failure makes 5.6 %: halt at once.
        assert_eq!(r.report(&stage1[4], false).unwrap(), Progress::Halted(1));
        assert_eq!(r.status(), RolloutStatus::Halted { stage: 1 });
        for d in &stage1[..5] {
            assert_eq!(
                r.instruction(d),
                Instruction::RollBack {
                    to: Some("1".into())
                }
            );
        }
        // Pending devices of the halted stage are no longer told to install.
        assert_eq!(r.instruction(&stage1[50]), Instruction::Wait);
        assert_eq!(r.report(&stage1[50], true), Err(RolloutError::NotRunning));
        assert_eq!(r.admitted().count(), 100);
    }

    #[test]
    fn small_fleets_skip_empty_stages_and_reports_are_checked() {
        let mut r = Rollout::new("2", None, ids(50), RolloutConfig::default()).unwrap();
        // 1 % of 50 is 0 devices: the first stage with devices is the 10 % one (5 devices).
        assert_eq!(r.status(), RolloutStatus::Running { stage: 1 });
        assert_eq!(r.admitted().count(), 5);
        let outsider = r.stage_members(3)[0];
        assert_eq!(r.report(&outsider, true), Err(RolloutError::NotAdmitted));
        let first = r.stage_members(1)[0];
        r.report(&first, true).unwrap();
        assert_eq!(r.report(&first, true), Err(RolloutError::AlreadyReported));
        let empty = Rollout::new("2", None, Vec::new(), RolloutConfig::default()).unwrap();
        assert_eq!(empty.status(), RolloutStatus::Completed);
    }

    #[test]
    fn withdrawn_devices_do_not_block_a_stage() {
        let mut r = Rollout::new("2", None, ids(200), RolloutConfig::default()).unwrap();
        let canaries = r.stage_members(0).to_vec();
        assert_eq!(canaries.len(), 2);
        r.report(&canaries[0], true).unwrap();
        assert_eq!(r.withdraw(&canaries[1]), Progress::Advanced(1));
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
                Rollout::new("2", None, ids(3), bad(stages)).unwrap_err(),
                RolloutError::InvalidStages
            );
        }
        let threshold = RolloutConfig {
            max_failure_bp: 10_001,
            ..RolloutConfig::default()
        };
        assert_eq!(
            Rollout::new("2", None, ids(3), threshold).unwrap_err(),
            RolloutError::InvalidThreshold
        );
    }
}
