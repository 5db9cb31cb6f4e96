//! The engine: one implementation of delta, versioned updates, merge and reconciliation,
//! generic over where the leaves live ([`FieldStore`]).

use core::cmp::Ordering;

use iot_core::codec::EncodeError;
use iot_core::time::HlcTimestamp;

use crate::cbor::{self, Header, Item, Kind};
use crate::error::ShadowError;
use crate::path::Path;
use crate::policy::{CLIENT_TOKEN_CAPACITY, Limits, Resolver, settle};
use crate::stamp::Policy;
use crate::store::{FieldStore, Leaf, Section};
use crate::update::{Outcome, Update, Write};
use crate::value::{Value, value_len};

/// Persists the document version so versions are never reused across restarts.
///
/// [`Shadow::apply_with`] saves the new version *before* changing the document: if saving
/// fails, nothing changes.
pub trait VersionStore {
    /// The last saved version (0 when nothing was ever saved).
    fn load(&mut self) -> Result<u64, ShadowError>;
    /// Saves `version`.
    fn save(&mut self, version: u64) -> Result<(), ShadowError>;
}

/// A [`VersionStore`] that keeps nothing (volatile shadows and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Volatile;

impl VersionStore for Volatile {
    fn load(&mut self) -> Result<u64, ShadowError> {
        Ok(0)
    }
    fn save(&mut self, _version: u64) -> Result<(), ShadowError> {
        Ok(())
    }
}

/// An in-memory [`VersionStore`] that survives a simulated restart, and can be told to fail.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryVersionStore {
    /// The saved version.
    pub saved: u64,
    /// When `true`, every save fails with [`ShadowError::Storage`].
    pub failing: bool,
}

impl VersionStore for MemoryVersionStore {
    fn load(&mut self) -> Result<u64, ShadowError> {
        Ok(self.saved)
    }
    fn save(&mut self, version: u64) -> Result<(), ShadowError> {
        if self.failing {
            return Err(ShadowError::Storage);
        }
        self.saved = version;
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct TokenEntry {
    token: heapless::String<CLIENT_TOKEN_CAPACITY>,
    outcome: Outcome,
    at_ms: u64,
}

/// What one write does to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Nothing: stale, equal or a removal of an absent leaf.
    None,
    /// A new key.
    Insert,
    /// Replaces the stored leaf.
    Replace,
}

/// The largest encoded path: a text of [`PATH_CAPACITY`](crate::path::PATH_CAPACITY) bytes.
const MAX_KEY_LEN: usize = crate::value::uint_len(crate::path::PATH_CAPACITY as u64)
    .saturating_add(crate::path::PATH_CAPACITY);
/// The largest encoded value: full text, a full array or a 9-byte number.
const MAX_VALUE_LEN: usize = {
    let text = crate::value::uint_len(crate::value::TEXT_CAPACITY as u64)
        .saturating_add(crate::value::TEXT_CAPACITY);
    let array = crate::value::ARRAY_CAPACITY;
    let max = if text > array { text } else { array };
    if max > 9 { max } else { 9 }
};

/// How many writes [`Shadow::plan`] remembers its decisions for; larger batches are
/// committed by deciding each write again.
const PLAN_STEPS: usize = 32;

/// What the commit does with one write of a planned batch.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The write takes effect (insert or replace).
    store: bool,
    /// A reported write that wins against a differing desired value, which it clears.
    settles: bool,
}

/// What [`Shadow::plan`] decided about a batch.
#[derive(Debug)]
struct Planned {
    /// The batch changes the document.
    changed: bool,
    /// One [`Step`] per write, when the batch has at most [`PLAN_STEPS`] writes.
    steps: Option<heapless::Vec<Step, PLAN_STEPS>>,
    /// New keys the batch writes in (desired, reported), for [`FieldStore::reserve`].
    new_keys: (usize, usize),
}

/// How a write is applied: `Update` collapses equal values (no-op updates change nothing),
/// `Merge` is the pure last-writer-wins join (commutative, associative, idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Update,
    Merge,
    Force,
}

/// A shadow document: desired and reported leaves with stamps, a version, a client-token
/// cache of `T` entries, limits and a [`Resolver`] of field policies.
///
/// The same type serves devices (`Shadow<FixedStore<N>>`, no allocation) and backends
/// (`Shadow<MapStore>`), so both run one implementation of every rule.
///
/// The store is the last field and may be unsized: a `&mut Shadow<FixedStore<N>, R, T>`
/// coerces to `&mut Shadow<FixedStoreView, R, T>` (see
/// [`FixedStoreView`](crate::FixedStoreView)), so code over views runs one compiled copy of
/// the engine for every capacity.
#[derive(Debug, Clone)]
pub struct Shadow<S: ?Sized, R = Policy, const T: usize = 8> {
    version: u64,
    resolver: R,
    limits: Limits,
    tokens: heapless::Deque<TokenEntry, T>,
    store: S,
}

impl<S: FieldStore + Default> Default for Shadow<S> {
    fn default() -> Self {
        Self::new(S::default(), Policy::LastWriterWins, Limits::DEFAULT)
    }
}

impl<S: FieldStore, R: Resolver, const T: usize> Shadow<S, R, T> {
    /// An empty document at version 0 over an empty `store`.
    pub const fn new(store: S, resolver: R, limits: Limits) -> Self {
        Self {
            store,
            version: 0,
            resolver,
            limits,
            tokens: heapless::Deque::new(),
        }
    }

    /// An empty document resuming at the version saved in `versions` (after a restart), so
    /// the next change gets a version never used before.
    pub fn open<V: VersionStore>(
        store: S,
        resolver: R,
        limits: Limits,
        versions: &mut V,
    ) -> Result<Self, ShadowError> {
        let mut shadow = Self::new(store, resolver, limits);
        shadow.version = versions.load()?;
        Ok(shadow)
    }
}

impl<S: FieldStore + ?Sized, R: Resolver, const T: usize> Shadow<S, R, T> {
    /// The document version: raised by exactly one by every update that changes it.
    pub const fn version(&self) -> u64 {
        self.version
    }

    /// The limits in force.
    pub const fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The field policies.
    pub const fn resolver(&self) -> &R {
        &self.resolver
    }

    /// Replaces the field policies (for example when a device re-registers with another
    /// schema); stored leaves keep their stamps, later decisions use the new policies.
    pub fn set_resolver(&mut self, resolver: R)
    where
        R: Sized,
    {
        self.resolver = resolver;
    }

    /// The underlying store.
    pub const fn store(&self) -> &S {
        &self.store
    }

    /// The stored leaf (tombstones included).
    pub fn leaf(&self, section: Section, path: &Path) -> Option<&Leaf> {
        self.store.get(section, path)
    }

    /// The value at `path`, `None` if absent or removed.
    pub fn value(&self, section: Section, path: &Path) -> Option<&Value> {
        self.store
            .get(section, path)
            .map(|l| &l.value)
            .filter(|v| !v.is_null())
    }

    /// Every leaf of `section` in canonical order (tombstones included).
    pub fn section(&self, section: Section) -> impl Iterator<Item = (&Path, &Leaf)> + Clone {
        self.store
            .entries()
            .filter(move |(s, _, _)| *s == section)
            .map(|(_, p, l)| (p, l))
    }

    /// The delta: desired leaves whose value is absent from reported or differs from it,
    /// in canonical order. Reported-only leaves never appear; values compare as a whole.
    pub fn delta(&self) -> impl Iterator<Item = (&Path, &Leaf)> + Clone {
        // Both sections iterate in path order: one merge-join pass, no lookups.
        Delta {
            desired: self.section(Section::Desired),
            reported: self.section(Section::Reported).peekable(),
        }
    }

    /// `true` when desired and reported agree: no delta notification is due.
    pub fn delta_is_empty(&self) -> bool {
        self.delta().next().is_none()
    }

    /// Number of tombstones (removals not yet acknowledged).
    pub fn tombstones(&self) -> usize {
        self.store
            .entries()
            .filter(|(_, _, l)| l.value.is_null())
            .count()
    }

    /// Exact size of [`Shadow::encode_document`]'s output.
    pub fn encoded_len(&self) -> usize {
        let header = Header {
            kind: Kind::Document,
            version: Some(self.version),
            client_token: None,
        };
        cbor::message_len(
            &header,
            self.store
                .entries()
                .map(|(s, p, l)| cbor::LeafCost::of(s, p, &l.value, &l.stamp)),
        )
    }

    fn check_path(&self, path: &Path) -> Result<(), ShadowError> {
        let depth = path.depth();
        if depth > self.limits.max_depth {
            return Err(ShadowError::TooDeep {
                depth,
                max: self.limits.max_depth,
            });
        }
        let key = path.longest_key();
        if key > self.limits.max_key_len {
            return Err(ShadowError::KeyTooLong {
                len: key,
                max: self.limits.max_key_len,
            });
        }
        Ok(())
    }

    fn check_token(&self, token: &str) -> Result<(), ShadowError> {
        let max = self.limits.max_token_len.min(CLIENT_TOKEN_CAPACITY);
        if token.len() > max {
            return Err(ShadowError::TokenTooLong {
                len: token.len(),
                max,
            });
        }
        Ok(())
    }

    fn effect(
        mode: Mode,
        existing: Option<&Leaf>,
        value: &Value,
        stamp: &crate::Stamp,
    ) -> Result<Effect, ShadowError> {
        let Some(e) = existing else {
            return Ok(if mode != Mode::Merge && value.is_null() {
                Effect::None
            } else {
                Effect::Insert
            });
        };
        if e.stamp.same_instant(stamp) {
            return if e.value == *value && e.stamp == *stamp {
                Ok(Effect::None)
            } else {
                Err(ShadowError::ContradictoryWrite)
            };
        }
        if mode == Mode::Update && e.value == *value {
            return Ok(Effect::None);
        }
        if mode == Mode::Force {
            return Ok(if e.value == *value && e.stamp == *stamp {
                Effect::None
            } else {
                Effect::Replace
            });
        }
        Ok(match stamp.cmp_precedence(&e.stamp) {
            Ordering::Greater => Effect::Replace,
            _ => Effect::None,
        })
    }

    /// The leaf at (`section`, `path`) as it will be after the batch `items`.
    fn projected<'a, I>(
        &self,
        mode: Mode,
        mut items: I,
        section: Section,
        path: &Path,
    ) -> Result<Option<Leaf>, ShadowError>
    where
        I: Iterator<Item = (Section, Item<'a>)>,
    {
        let stored = self.store.get(section, path);
        if let Some((_, (_, v, st))) = items.find(|(s, (p, _, _))| *s == section && *p == path)
            && Self::effect(mode, stored, v, st)? != Effect::None
        {
            return Ok(Some(Leaf {
                value: v.clone(),
                stamp: *st,
            }));
        }
        Ok(stored.cloned())
    }

    /// Validates a batch of writes against the limits and the document without changing
    /// anything; returns whether it changes the document and, for batches of up to
    /// [`PLAN_STEPS`] writes, what [`Shadow::commit`] has to do for each write, so the
    /// commit does not look every leaf up again.
    fn plan<'a, I>(&self, mode: Mode, items: I, reconcile: bool) -> Result<Planned, ShadowError>
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        let mut changed = false;
        let mut new_keys = 0usize;
        let (mut new_desired, mut new_reported) = (0usize, 0usize);
        let mut steps = Some(heapless::Vec::<Step, PLAN_STEPS>::new());
        for (i, (section, (path, value, stamp))) in items.clone().enumerate() {
            self.check_path(path)?;
            for (other_section, (other, _, _)) in items.clone().take(i) {
                if other_section != section {
                    continue;
                }
                if other == path {
                    return Err(ShadowError::DuplicateWrite);
                }
                if other.overlaps(path) {
                    return Err(ShadowError::PathConflict);
                }
            }
            let existing = self.store.get(section, path);
            let effect = Self::effect(mode, existing, value, stamp)?;
            if effect != Effect::None {
                changed = true;
            }
            if effect == Effect::Insert {
                if self
                    .store
                    .entries()
                    .any(|(s, p, _)| s == section && p.overlaps(path))
                {
                    return Err(ShadowError::PathConflict);
                }
                new_keys = new_keys.saturating_add(1);
                match section {
                    Section::Desired => new_desired = new_desired.saturating_add(1),
                    Section::Reported => new_reported = new_reported.saturating_add(1),
                }
            }
            let settles = reconcile
                && section == Section::Reported
                && self
                    .settled_with(mode, items.clone(), path, existing, (value, stamp))?
                    .is_some();
            if settles {
                changed = true;
            }
            let step = Step {
                store: effect != Effect::None,
                settles,
            };
            if steps.as_mut().is_some_and(|s| s.push(step).is_err()) {
                steps = None;
            }
        }
        let count = self.store.len().saturating_add(new_keys);
        if count > self.limits.max_fields {
            return Err(ShadowError::TooManyFields {
                count,
                max: self.limits.max_fields,
            });
        }
        if count > self.store.capacity() {
            return Err(ShadowError::StoreFull {
                capacity: self.store.capacity(),
            });
        }
        if changed && self.size_bound(items.clone()) > self.limits.max_encoded_len {
            let header = Header {
                kind: Kind::Document,
                version: Some(self.version.saturating_add(1)),
                client_token: None,
            };
            let stored = self.store.entries().filter_map(|(s, p, l)| {
                // A leaf at a path the batch does not write (in either section) stays as
                // stored: reconciliation only touches desired leaves at reported write paths.
                if !items.clone().any(|(_, (q, _, _))| q == p) {
                    return Some(cbor::LeafCost::of(s, p, &l.value, &l.stamp));
                }
                self.final_leaf(mode, items.clone(), reconcile, s, p)
                    .map(|l| cbor::LeafCost::of(s, p, &l.value, &l.stamp))
            });
            let inserted = items
                .clone()
                .filter(|(s, (p, _, _))| self.store.get(*s, p).is_none())
                .filter_map(|(s, (p, _, _))| {
                    self.final_leaf(mode, items.clone(), reconcile, s, p)
                        .map(|l| cbor::LeafCost::of(s, p, &l.value, &l.stamp))
                });
            let size = cbor::message_len(&header, stored.chain(inserted));
            if size > self.limits.max_encoded_len {
                return Err(ShadowError::TooLarge {
                    size,
                    max: self.limits.max_encoded_len,
                });
            }
        }
        Ok(Planned {
            changed,
            steps,
            new_keys: (new_desired, new_reported),
        })
    }

    /// An upper bound of the document's encoded size after the batch, computed without
    /// projecting any leaf, so the exact projection in `plan` only runs near the limit.
    ///
    /// Every leaf after the batch is a stored leaf, a written leaf or a desired tombstone at
    /// a reported write's path, so the sum over all three bounds the leaves; each leaf adds
    /// at most one clock (9 + 5 bytes) to the clock table and a reference below
    /// `8 * leaves + 8`; the header (kind, version, table and section headers, field count)
    /// takes at most 64 bytes.
    fn size_bound<'a, I>(&self, items: I) -> usize
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        const HEADER: usize = 64;
        const CLOCK: usize = 14;
        let leaves = self
            .store
            .len()
            .saturating_add(items.clone().count().saturating_mul(2));
        let reference = crate::value::uint_len((leaves as u64).saturating_mul(8).saturating_add(8));
        // First the bound from the leaf count alone (no leaf is read): enough for every
        // document far below the limit, which is the common case.
        let largest = MAX_KEY_LEN
            .saturating_add(1)
            .saturating_add(MAX_VALUE_LEN)
            .saturating_add(reference)
            .saturating_add(CLOCK);
        let quick = HEADER.saturating_add(leaves.saturating_mul(largest));
        if quick <= self.limits.max_encoded_len {
            return quick;
        }
        let leaf = |key: usize, value: usize| {
            crate::value::text_len(key)
                .saturating_add(1)
                .saturating_add(value)
                .saturating_add(reference)
                .saturating_add(CLOCK)
        };
        let stored = self
            .store
            .entries()
            .map(|(_, p, l)| leaf(p.as_str().len(), value_len(&l.value)))
            .fold(0usize, usize::saturating_add);
        let written = items
            .map(|(s, (p, v, _))| {
                let tombstone = match s {
                    Section::Reported => leaf(p.as_str().len(), value_len(&Value::Null)),
                    Section::Desired => 0,
                };
                leaf(p.as_str().len(), value_len(v)).saturating_add(tombstone)
            })
            .fold(0usize, usize::saturating_add);
        HEADER.saturating_add(stored).saturating_add(written)
    }

    /// The desired tombstone reconciliation will write at `path`, if a reported write in
    /// the batch stands there and wins against the (projected) desired value.
    fn settled<'a, I>(&self, mode: Mode, items: I, path: &Path) -> Result<Option<Leaf>, ShadowError>
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        let Some((_, (_, value, stamp))) = items
            .clone()
            .find(|(s, (p, _, _))| *s == Section::Reported && *p == path)
        else {
            return Ok(None);
        };
        let existing = self.store.get(Section::Reported, path);
        self.settled_with(mode, items, path, existing, (value, stamp))
    }

    /// [`Shadow::settled`] for the batch's reported write (`value`, `stamp`) at `path`,
    /// with the stored reported leaf already looked up.
    fn settled_with<'a, I>(
        &self,
        mode: Mode,
        items: I,
        path: &Path,
        existing: Option<&Leaf>,
        (value, stamp): (&Value, &crate::Stamp),
    ) -> Result<Option<Leaf>, ShadowError>
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        let stands = Self::effect(mode, existing, value, stamp)? != Effect::None
            || existing.is_some_and(|e| e.value == *value && e.stamp == *stamp);
        if !stands {
            return Ok(None);
        }
        let reported = Leaf {
            value: value.clone(),
            stamp: *stamp,
        };
        Ok(self
            .projected(mode, items, Section::Desired, path)?
            .and_then(|d| settle(&self.resolver, path, &d, &reported)))
    }

    /// The leaf at (`section`, `path`) after the batch, reconciliation included.
    fn final_leaf<'a, I>(
        &self,
        mode: Mode,
        items: I,
        reconcile: bool,
        section: Section,
        path: &Path,
    ) -> Option<Leaf>
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        if reconcile
            && section == Section::Desired
            && let Ok(Some(t)) = self.settled(mode, items.clone(), path)
        {
            return Some(t);
        }
        self.projected(mode, items, section, path).ok().flatten()
    }

    /// Stores a leaf. Capacity was checked by `plan`, so the insert cannot fail.
    fn put(&mut self, section: Section, path: &Path, leaf: Leaf) {
        let _ = self.store.insert(section, path, leaf);
    }

    /// Applies a batch `plan` accepted. With the plan's steps, each write is stored or
    /// skipped as planned and only the reported writes that settle a desired value are
    /// reconciled: the batch never writes one leaf twice, so each write's effect depends on
    /// its own leaf only and the plan's answers hold during the commit.
    fn commit<'a, I>(&mut self, mode: Mode, items: I, reconcile: bool, planned: &Planned)
    where
        I: Iterator<Item = (Section, Item<'a>)> + Clone,
    {
        let (desired, reported) = planned.new_keys;
        if desired > 0 {
            self.store.reserve(Section::Desired, desired);
        }
        if reported > 0 {
            self.store.reserve(Section::Reported, reported);
        }
        // The plan's step for write `i`, or `None` when the batch was too large to remember.
        let steps = planned.steps.as_deref();
        let step = |i: usize| steps.and_then(|s| s.get(i));
        for (i, (section, (path, value, stamp))) in items.clone().enumerate() {
            let store = match step(i) {
                Some(step) => step.store,
                None => matches!(
                    Self::effect(mode, self.store.get(section, path), value, stamp),
                    Ok(Effect::Insert | Effect::Replace)
                ),
            };
            if store {
                self.put(
                    section,
                    path,
                    Leaf {
                        value: value.clone(),
                        stamp: *stamp,
                    },
                );
            }
        }
        if reconcile {
            for (i, (section, (path, value, stamp))) in items.enumerate() {
                // Without a step: every reported write that stands is reconciled.
                let settles = match step(i) {
                    Some(step) => step.settles,
                    None => {
                        section == Section::Reported
                            && self
                                .store
                                .get(section, path)
                                .is_some_and(|l| l.value == *value && l.stamp == *stamp)
                    }
                };
                if settles {
                    self.reconcile(path);
                }
            }
        }
    }

    /// Settles a disagreement at `path` that the reported side wins by clearing desired.
    fn reconcile(&mut self, path: &Path) {
        let (Some(d), Some(r)) = (
            self.store.get(Section::Desired, path),
            self.store.get(Section::Reported, path),
        ) else {
            return;
        };
        if let Some(tombstone) = settle(&self.resolver, path, d, r) {
            self.put(Section::Desired, path, tombstone);
        }
    }

    fn replay(&self, token: &str, now_ms: u64) -> Option<Outcome> {
        self.tokens
            .iter()
            .find(|e| {
                e.token.as_str() == token
                    && now_ms.saturating_sub(e.at_ms) <= self.limits.token_window_ms
            })
            .map(|e| e.outcome)
    }

    fn remember(&mut self, token: &str, outcome: Outcome, now_ms: u64) {
        let window = self.limits.token_window_ms;
        while self
            .tokens
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.at_ms) > window)
        {
            self.tokens.pop_front();
        }
        let mut stored = heapless::String::new();
        if stored.push_str(token).is_err() {
            return;
        }
        let entry = TokenEntry {
            token: stored,
            outcome,
            at_ms: now_ms,
        };
        if self.tokens.is_full() {
            self.tokens.pop_front();
        }
        let _ = self.tokens.push_back(entry);
    }

    /// Applies an update without persisting the version; see [`Shadow::apply_with`].
    pub fn apply(&mut self, update: &Update<'_>, now_ms: u64) -> Result<Outcome, ShadowError> {
        self.apply_with(update, now_ms, &mut Volatile)
    }

    /// Applies an update atomically:
    ///
    /// 1. a client token longer than the limit is refused; a token seen within the window
    ///    returns the first outcome again, without a second mutation;
    /// 2. an `expected_version` other than the current one is a [`ShadowError::Conflict`];
    /// 3. every limit, contradiction and capacity is checked before anything changes;
    /// 4. each write takes effect if its stamp outranks the stored leaf's and its value
    ///    differs (equal values, stale writes and removals of absent leaves are no-ops);
    /// 5. a reported write that wins against a differing desired value clears the desired
    ///    value (per the field's policy), so the delta cannot recur;
    /// 6. if anything changed, the version rises by exactly one and is saved to `versions`
    ///    before the document changes.
    pub fn apply_with<V: VersionStore>(
        &mut self,
        update: &Update<'_>,
        now_ms: u64,
        versions: &mut V,
    ) -> Result<Outcome, ShadowError> {
        if let Some(token) = update.client_token {
            self.check_token(token)?;
            if let Some(outcome) = self.replay(token, now_ms) {
                return Ok(outcome);
            }
        }
        if let Some(expected) = update.expected_version
            && expected != self.version
        {
            return Err(ShadowError::Conflict {
                expected,
                current: self.version,
            });
        }
        let horizon = now_ms.saturating_add(self.limits.max_drift_ms);
        if update
            .writes
            .iter()
            .any(|w| w.stamp.hlc().physical_ms() > horizon)
        {
            return Err(ShadowError::ClockDrift);
        }
        let items = write_items(update.writes);
        let planned = self.plan(Mode::Update, items.clone(), true)?;
        let outcome = if planned.changed {
            let next = self
                .version
                .checked_add(1)
                .ok_or(ShadowError::VersionExhausted)?;
            versions.save(next)?;
            self.commit(Mode::Update, items, true, &planned);
            self.version = next;
            Outcome {
                version: next,
                changed: true,
            }
        } else {
            Outcome {
                version: self.version,
                changed: false,
            }
        };
        if let Some(token) = update.client_token {
            self.remember(token, outcome, now_ms);
        }
        Ok(outcome)
    }

    /// Applies an update in the AWS resolution mode: the request semantics of the AWS IoT
    /// Device Shadow service, where the service's arrival order decides and nothing else.
    ///
    /// 1. a client token longer than the limit is refused; tokens are echoed by the caller,
    ///    never replayed (AWS does not deduplicate by token);
    /// 2. an `expected_version` other than the current one is a [`ShadowError::Conflict`];
    /// 3. every limit and capacity is checked before anything changes;
    /// 4. each write overwrites its leaf whatever the stored stamp says (the caller stamps
    ///    writes in arrival order); a `Null` write deletes the leaf outright, no tombstone;
    /// 5. a report never clears desired: the delta stays until reported matches;
    /// 6. every accepted update raises the version by exactly one, even one that leaves the
    ///    values as they were, and the version is saved to `versions` first.
    pub fn apply_aws_with<V: VersionStore>(
        &mut self,
        update: &Update<'_>,
        versions: &mut V,
    ) -> Result<Outcome, ShadowError> {
        if let Some(token) = update.client_token {
            self.check_token(token)?;
        }
        if let Some(expected) = update.expected_version
            && expected != self.version
        {
            return Err(ShadowError::Conflict {
                expected,
                current: self.version,
            });
        }
        let items = write_items(update.writes);
        let planned = self.plan(Mode::Force, items.clone(), false)?;
        let next = self
            .version
            .checked_add(1)
            .ok_or(ShadowError::VersionExhausted)?;
        versions.save(next)?;
        if planned.changed {
            self.commit(Mode::Force, items, false, &planned);
        }
        for w in update.writes.iter().filter(|w| w.value.is_null()) {
            let _ = self.store.remove(w.section, &w.path);
        }
        self.version = next;
        Ok(Outcome {
            version: next,
            changed: true,
        })
    }

    /// Applies writes the way [`Shadow::apply`] does but without touching the version or
    /// the token cache: a device recording its own changes in its replica.
    pub fn apply_local(&mut self, writes: &[Write]) -> Result<bool, ShadowError> {
        let items = write_items(writes);
        let planned = self.plan(Mode::Update, items.clone(), true)?;
        let changed = planned.changed;
        if changed {
            self.commit(Mode::Update, items, true, &planned);
        }
        Ok(changed)
    }

    /// Checks a batch of writes on its own: limits of every path, no leaf twice, no leaf
    /// inside another. Changes nothing.
    pub fn check_writes(&self, writes: &[Write]) -> Result<(), ShadowError> {
        for (i, w) in writes.iter().enumerate() {
            self.check_path(&w.path)?;
            for o in writes.iter().take(i) {
                if o.section != w.section {
                    continue;
                }
                if o.path == w.path {
                    return Err(ShadowError::DuplicateWrite);
                }
                if o.path.overlaps(&w.path) {
                    return Err(ShadowError::PathConflict);
                }
            }
        }
        Ok(())
    }

    /// Stores one leaf whatever the stored stamp says (limits and capacity still apply):
    /// a device recording a decision its policies already made. Returns whether it changed.
    pub fn set_leaf(&mut self, write: &Write) -> Result<bool, ShadowError> {
        let items = write_items(core::slice::from_ref(write));
        let planned = self.plan(Mode::Force, items.clone(), false)?;
        let changed = planned.changed;
        if changed {
            self.commit(Mode::Force, items, false, &planned);
        }
        Ok(changed)
    }

    /// Joins stamped leaves into this document by last-writer-wins on
    /// (policy rank, HLC, node): commutative, associative and idempotent. Tombstones take
    /// part like values. The version becomes the greater of both. Nothing changes on error.
    pub fn merge_writes(&mut self, writes: &[Write], version: u64) -> Result<bool, ShadowError> {
        let items = write_items(writes);
        let planned = self.plan(Mode::Merge, items.clone(), false)?;
        let changed = planned.changed;
        if changed {
            self.commit(Mode::Merge, items, false, &planned);
        }
        self.version = self.version.max(version);
        Ok(changed)
    }

    /// Joins another replica's document into this one; see [`Shadow::merge_writes`].
    pub fn merge<S2: FieldStore + ?Sized, R2, const T2: usize>(
        &mut self,
        other: &Shadow<S2, R2, T2>,
    ) -> Result<bool, ShadowError> {
        let items = other
            .store
            .entries()
            .map(|(s, p, l)| (s, (p, &l.value, &l.stamp)));
        let planned = self.plan(Mode::Merge, items.clone(), false)?;
        let changed = planned.changed;
        if changed {
            self.commit(Mode::Merge, items, false, &planned);
        }
        self.version = self.version.max(other.version);
        Ok(changed)
    }

    /// Drops the tombstones stamped at or before `through`: call it once the ack that
    /// carries those removals has been delivered. Returns how many were dropped.
    pub fn prune_tombstones(&mut self, through: HlcTimestamp) -> usize {
        self.store
            .retain(|_, _, l| !(l.value.is_null() && l.stamp.hlc() <= through))
    }

    /// Deletes every leaf. The version still rises by one (and is saved first), so a
    /// re-created document never reuses a version.
    pub fn delete_with<V: VersionStore>(
        &mut self,
        versions: &mut V,
    ) -> Result<Outcome, ShadowError> {
        let next = self
            .version
            .checked_add(1)
            .ok_or(ShadowError::VersionExhausted)?;
        versions.save(next)?;
        self.store.clear();
        self.tokens.clear();
        self.version = next;
        Ok(Outcome {
            version: next,
            changed: true,
        })
    }

    /// Removes the leaves for which `keep` is false (bookkeeping stays exact).
    pub fn retain(&mut self, keep: impl FnMut(Section, &Path, &Leaf) -> bool) -> usize {
        self.store.retain(keep)
    }

    /// Encodes the whole document (kind `Document`) as canonical CBOR.
    pub fn encode_document(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let header = Header {
            kind: Kind::Document,
            version: Some(self.version),
            client_token: None,
        };
        cbor::encode_into(
            &header,
            self.section(Section::Desired).map(cbor::leaf_item),
            self.section(Section::Reported).map(cbor::leaf_item),
            buf,
        )
    }

    /// Encodes the whole document into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_cbor(&self) -> alloc::vec::Vec<u8> {
        let mut out = alloc::vec![0u8; self.encoded_len()];
        let n = self.encode_document(&mut out).unwrap_or(0);
        out.truncate(n);
        out
    }

    /// Encodes the delta notification, or `Ok(None)` when the delta is empty: an empty
    /// delta produces no notification.
    pub fn encode_delta(&self, buf: &mut [u8]) -> Result<Option<usize>, EncodeError> {
        if self.delta_is_empty() {
            return Ok(None);
        }
        let header = Header {
            kind: Kind::Delta,
            version: Some(self.version),
            client_token: None,
        };
        match collected(self.delta().map(cbor::leaf_item)) {
            Some(items) => {
                cbor::encode_into(&header, items.iter().copied(), core::iter::empty(), buf)
            }
            None => cbor::encode_into(
                &header,
                self.delta().map(cbor::leaf_item),
                core::iter::empty(),
                buf,
            ),
        }
        .map(Some)
    }

    /// Encodes the ack of an applied update: both halves of every leaf it wrote (removals as
    /// tombstones), at the outcome's version, echoing the client token.
    pub fn encode_accepted(
        &self,
        update: &Update<'_>,
        outcome: &Outcome,
        buf: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let header = Header {
            kind: Kind::Accepted,
            version: Some(outcome.version),
            client_token: update.client_token,
        };
        let sorted = sorted_paths(update.writes);
        let sorted = sorted.as_deref();
        let desired = Touched::new(&self.store, update.writes, sorted, Section::Desired);
        let reported = Touched::new(&self.store, update.writes, sorted, Section::Reported);
        match (collected(desired.clone()), collected(reported.clone())) {
            (Some(d), Some(r)) => {
                cbor::encode_into(&header, d.iter().copied(), r.iter().copied(), buf)
            }
            _ => cbor::encode_into(&header, desired, reported, buf),
        }
    }
}

/// The delta as a merge-join of the desired and reported leaves, both in path order.
#[derive(Clone)]
struct Delta<'a, D, R: Iterator<Item = (&'a Path, &'a Leaf)>> {
    desired: D,
    reported: core::iter::Peekable<R>,
}

impl<'a, D, R> Iterator for Delta<'a, D, R>
where
    D: Iterator<Item = (&'a Path, &'a Leaf)>,
    R: Iterator<Item = (&'a Path, &'a Leaf)>,
{
    type Item = (&'a Path, &'a Leaf);
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (path, leaf) = self.desired.next()?;
            if leaf.value.is_null() {
                continue;
            }
            while self.reported.next_if(|(r, _)| *r < path).is_some() {}
            let reported = self
                .reported
                .next_if(|(r, _)| *r == path)
                .map(|(_, l)| &l.value)
                .filter(|v| !v.is_null());
            if reported != Some(&leaf.value) {
                return Some((path, leaf));
            }
        }
    }
}

/// How many leaves an encoder's input is collected for (see [`collected`]).
const ENCODE_ITEMS: usize = 16;

/// The items of a message collected once, so that the encoder's passes over them (clock
/// table, counts, length, bytes) do not repeat the store lookups behind them; `None` when
/// there are more than [`ENCODE_ITEMS`].
fn collected<'a>(
    items: impl Iterator<Item = Item<'a>>,
) -> Option<heapless::Vec<Item<'a>, ENCODE_ITEMS>> {
    let mut out = heapless::Vec::new();
    for item in items {
        out.push(item).ok()?;
    }
    Some(out)
}

fn write_items(writes: &[Write]) -> impl Iterator<Item = (Section, Item<'_>)> + Clone {
    writes
        .iter()
        .map(|w| (w.section, (&w.path, &w.value, &w.stamp)))
}

/// How many distinct paths [`Touched`] sorts up front; larger updates are merged by rescanning.
const TOUCHED_FAST: usize = 32;

/// The distinct paths of `writes` in canonical order, or `None` if there are more than
/// [`TOUCHED_FAST`].
fn sorted_paths(writes: &[Write]) -> Option<heapless::Vec<&Path, TOUCHED_FAST>> {
    let mut sorted: heapless::Vec<&Path, TOUCHED_FAST> = heapless::Vec::new();
    for w in writes {
        if let Err(at) = sorted.binary_search(&&w.path) {
            sorted.insert(at, &w.path).ok()?;
        }
    }
    Some(sorted)
}

/// Stored leaves of one section at the paths an update wrote, in canonical order.
#[derive(Debug)]
struct Touched<'a, 's, S: ?Sized> {
    store: &'a S,
    writes: &'a [Write],
    /// The distinct written paths in canonical order ([`sorted_paths`]), when they fit.
    sorted: Option<&'s [&'a Path]>,
    next_index: usize,
    section: Section,
    last: Option<&'a Path>,
}

impl<'a, 's, S: ?Sized> Touched<'a, 's, S> {
    fn new(
        store: &'a S,
        writes: &'a [Write],
        sorted: Option<&'s [&'a Path]>,
        section: Section,
    ) -> Self {
        Self {
            store,
            writes,
            sorted,
            next_index: 0,
            section,
            last: None,
        }
    }
}

impl<S: ?Sized> Clone for Touched<'_, '_, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store,
            writes: self.writes,
            sorted: self.sorted,
            next_index: self.next_index,
            section: self.section,
            last: self.last,
        }
    }
}

impl<'a, S: FieldStore + ?Sized> Iterator for Touched<'a, '_, S> {
    type Item = Item<'a>;
    fn next(&mut self) -> Option<Item<'a>> {
        loop {
            let next = if let Some(sorted) = self.sorted {
                let p = *sorted.get(self.next_index)?;
                self.next_index = self.next_index.saturating_add(1);
                p
            } else {
                // The smallest written path after the last one yielded (either section).
                let last = self.last;
                let p = self
                    .writes
                    .iter()
                    .map(|w| &w.path)
                    .filter(|p| last.is_none_or(|l| *p > l))
                    .min()?;
                self.last = Some(p);
                p
            };
            if let Some(leaf) = self.store.get(self.section, next) {
                return Some((next, &leaf.value, &leaf.stamp));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{ARRAY_CAPACITY, Scalar, TEXT_CAPACITY, value_len};

    mod planned_commit {
        use super::*;
        use crate::stamp::{Origin, Stamp};
        use crate::store::FixedStore;
        use iot_core::{HlcTimestamp, NodeId};
        use proptest::prelude::*;

        const PATHS: [&str; 5] = ["a", "b", "c", "d.e", "d.f"];

        fn write() -> impl Strategy<Value = Write> {
            (
                any::<bool>(),
                0..PATHS.len(),
                proptest::option::of(0i64..3),
                (1u64..5, 0u32..3),
                (0u8..4, any::<bool>()),
            )
                .prop_map(|(desired, p, v, (t, n), (policy, device))| {
                    let stamp = Stamp::new(
                        HlcTimestamp::from_parts(t * 1000, 0, NodeId(n)).unwrap(),
                        Policy::from_code(policy).unwrap(),
                        if device {
                            Origin::Device
                        } else {
                            Origin::Cloud
                        },
                    );
                    Write::new(
                        if desired {
                            Section::Desired
                        } else {
                            Section::Reported
                        },
                        Path::new(PATHS[p]).unwrap(),
                        v.map_or(Value::Null, Value::Int),
                        stamp,
                    )
                })
        }

        type Doc = Shadow<FixedStore<16>, Policy>;

        fn entries(s: &Doc) -> std::vec::Vec<(Section, Path, Leaf)> {
            s.store()
                .entries()
                .map(|(sec, p, l)| (sec, p.clone(), l.clone()))
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            /// Committing with the plan's remembered steps leaves exactly the document that
            /// deciding every write again (the path of batches above `PLAN_STEPS`) leaves,
            /// for updates with reconciliation, merges and forced writes.
            #[test]
            fn planned_commit_equals_deciding_again(
                base in proptest::collection::vec(write(), 0..8),
                batch in proptest::collection::vec(write(), 1..6),
                policy in 0u8..3,
                mode in 0u8..3,
            ) {
                let mut doc = Doc::new(
                    FixedStore::new(),
                    Policy::from_code(policy).unwrap(),
                    Limits::DEFAULT,
                );
                for w in &base {
                    let _ = doc.merge_writes(core::slice::from_ref(w), 0);
                }
                let (mode, reconcile) = match mode {
                    0 => (Mode::Update, true),
                    1 => (Mode::Merge, false),
                    _ => (Mode::Force, false),
                };
                let items = write_items(&batch);
                let Ok(planned) = doc.plan(mode, items.clone(), reconcile) else {
                    return Ok(());
                };
                prop_assert!(planned.steps.is_some());
                let mut with_steps = doc.clone();
                with_steps.commit(mode, items.clone(), reconcile, &planned);
                let mut again = doc.clone();
                let unplanned = Planned {
                    changed: planned.changed,
                    steps: None,
                    new_keys: planned.new_keys,
                };
                again.commit(mode, items, reconcile, &unplanned);
                prop_assert_eq!(entries(&with_steps), entries(&again));
                prop_assert_eq!(planned.changed, entries(&with_steps) != entries(&doc));
            }
        }
    }

    /// The ack lists every written leaf once, in canonical order, both when the written
    /// paths are sorted up front (up to 32) and when they are merged by rescanning.
    #[test]
    fn acks_cover_every_written_leaf_in_canonical_order() {
        use crate::stamp::{Origin, Stamp};
        use iot_core::{HlcTimestamp, NodeId};
        for n in [5usize, 40] {
            let stamp = Stamp::new(
                HlcTimestamp::from_parts(1_000, 0, NodeId(3)).unwrap(),
                Policy::LastWriterWins,
                Origin::Device,
            );
            let writes: std::vec::Vec<Write> = (0..n)
                .rev()
                .map(|i| {
                    let path = Path::new(&std::format!("f{i}")).unwrap();
                    Write::new(Section::Reported, path, Value::Int(i as i64), stamp)
                })
                .collect();
            let mut shadow: Shadow<crate::FixedStore<64>> = Shadow::new(
                crate::FixedStore::new(),
                Policy::LastWriterWins,
                Limits::DEFAULT,
            );
            let update = Update::new(&writes);
            let outcome = shadow.apply(&update, 0).unwrap();
            let mut buf = [0u8; 2048];
            let len = shadow.encode_accepted(&update, &outcome, &mut buf).unwrap();
            let mut back: heapless::Vec<Write, 64> = heapless::Vec::new();
            cbor::decode_message(&buf[..len], &mut back).unwrap();
            assert_eq!(back.len(), n);
            let mut expected: std::vec::Vec<&Path> = writes.iter().map(|w| &w.path).collect();
            expected.sort();
            let got: std::vec::Vec<&Path> = back.iter().map(|w| &w.path).collect();
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn largest_encodings_stay_within_the_quick_bound() {
        let text: crate::value::Text = core::iter::repeat_n('x', TEXT_CAPACITY).collect();
        let mut largest_array = Value::Null;
        for n in 0..ARRAY_CAPACITY {
            match Value::array(&[Scalar::Int(i64::MIN); 48][..n]) {
                Ok(v) => largest_array = v,
                Err(_) => break,
            }
        }
        for v in [
            Value::text(&text).unwrap(),
            largest_array,
            Value::Int(i64::MIN),
            Value::float(f64::MAX).unwrap(),
            Value::Bool(true),
            Value::Null,
        ] {
            assert!(value_len(&v) <= MAX_VALUE_LEN, "{v:?}");
        }
        let path: heapless::String<{ crate::path::PATH_CAPACITY }> =
            core::iter::repeat_n('p', crate::path::PATH_CAPACITY).collect();
        let path = Path::new(&path).unwrap();
        assert_eq!(crate::value::text_len(path.as_str().len()), MAX_KEY_LEN);
    }
}
