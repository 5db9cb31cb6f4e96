//! Retry with exponential backoff, jitter, a cap, a maximum number of attempts and a deadline.
//!
//! [`Backoff`] is a plain state machine you drive from a poll loop (`next_delay(now, rng)`),
//! deterministic under an injected [`Rng`] and clock; [`retry`] is the async convenience that
//! sleeps through an `embedded_hal_async::delay::DelayNs`.
//!
//! Guarantees (property-tested): every delay is at most [`BackoffPolicy::max_delay_ms`];
//! no delay ends after the deadline; at most [`BackoffPolicy::max_attempts`] attempts run.
//!
//! ```
//! use iot_transport::retry::{Backoff, BackoffPolicy, Jitter};
//! use iot_transport::SplitMix64;
//!
//! let policy = BackoffPolicy::new(100, 1_000).with_max_attempts(5).with_jitter(Jitter::None);
//! let mut backoff = Backoff::new(policy, 0);
//! let mut rng = SplitMix64::new(1);
//! let delays: Vec<u64> = core::iter::from_fn(|| backoff.next_delay(0, &mut rng)).collect();
//! assert_eq!(delays, [100, 200, 400, 800]); // 5 attempts = 4 waits
//! ```

use iot_core::Clock;

use crate::rng::Rng;

/// How randomness spreads the delays of many devices that failed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// Uniform in `0..=delay` ("full jitter"): the best spread against thundering herds.
    #[default]
    Full,
    /// Uniform in `delay/2..=delay` ("equal jitter"): keeps a minimum wait.
    Equal,
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BackoffPolicy {
    /// The delay after the first failure, before jitter.
    pub initial_ms: u64,
    /// The factor applied after each failure (1 = constant delay).
    pub multiplier: u32,
    /// No delay exceeds this.
    pub max_delay_ms: u64,
    /// Attempts in total, the first one included (0 = unlimited).
    pub max_attempts: u32,
    /// No retry is scheduled to start later than this many milliseconds after the first
    /// attempt (`None` = no deadline).
    pub deadline_ms: Option<u64>,
    /// Jitter mode.
    pub jitter: Jitter,
}

impl BackoffPolicy {
    /// Doubling from `initial_ms` up to `max_delay_ms`, full jitter, unlimited attempts and
    /// no deadline.
    pub const fn new(initial_ms: u64, max_delay_ms: u64) -> Self {
        Self {
            initial_ms,
            multiplier: 2,
            max_delay_ms,
            max_attempts: 0,
            deadline_ms: None,
            jitter: Jitter::Full,
        }
    }

    /// Sets the growth factor.
    #[must_use]
    pub const fn with_multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the maximum number of attempts (0 = unlimited).
    #[must_use]
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the deadline relative to the first attempt.
    #[must_use]
    pub const fn with_deadline_ms(mut self, deadline_ms: u64) -> Self {
        self.deadline_ms = Some(deadline_ms);
        self
    }

    /// Sets the jitter mode.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before jitter after `failures` failures (1-based), capped.
    pub fn base_delay_ms(&self, failures: u32) -> u64 {
        let exponent = failures.saturating_sub(1);
        let factor = u64::from(self.multiplier)
            .checked_pow(exponent)
            .unwrap_or(u64::MAX);
        self.initial_ms
            .saturating_mul(factor)
            .min(self.max_delay_ms)
    }
}

/// Why [`Backoff::next_delay`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GiveUp {
    /// The maximum number of attempts has run.
    Attempts,
    /// The deadline has passed.
    Deadline,
}

/// The state of one retried operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Backoff {
    policy: BackoffPolicy,
    started_ms: u64,
    failures: u32,
    gave_up: Option<GiveUp>,
}

impl Backoff {
    /// A fresh backoff whose first attempt starts at `now_ms`.
    pub const fn new(policy: BackoffPolicy, now_ms: u64) -> Self {
        Self {
            policy,
            started_ms: now_ms,
            failures: 0,
            gave_up: None,
        }
    }

    /// A backoff started at `started_ms` that has recorded `failures` failures and not
    /// given up, as [`Backoff::new`] followed by `failures` delays would be; for callers
    /// that keep the two counters themselves rather than a whole `Backoff` (the outbox
    /// stores one policy for all its messages).
    pub const fn resume(policy: BackoffPolicy, started_ms: u64, failures: u32) -> Self {
        Self {
            policy,
            started_ms,
            failures,
            gave_up: None,
        }
    }

    /// The policy.
    pub const fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }

    /// Failures recorded so far.
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// Attempts made so far, counting the one now failing.
    pub const fn attempts(&self) -> u32 {
        self.failures
    }

    /// Why it gave up, once it has.
    pub const fn gave_up(&self) -> Option<GiveUp> {
        self.gave_up
    }

    /// The absolute deadline, if any.
    pub fn deadline_at_ms(&self) -> Option<u64> {
        self.policy
            .deadline_ms
            .map(|d| self.started_ms.saturating_add(d))
    }

    /// Records a failed attempt at `now_ms` and returns how long to wait before the next one,
    /// or `None` when attempts or time are exhausted (see [`Backoff::gave_up`]).
    pub fn next_delay<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Option<u64> {
        if self.gave_up.is_some() {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        if self.policy.max_attempts != 0 && self.failures >= self.policy.max_attempts {
            self.gave_up = Some(GiveUp::Attempts);
            return None;
        }
        let base = self.policy.base_delay_ms(self.failures);
        let delay = match self.policy.jitter {
            Jitter::None => base,
            Jitter::Full => rng.below_inclusive(base),
            Jitter::Equal => {
                let half = base / 2;
                half.saturating_add(rng.below_inclusive(base.saturating_sub(half)))
            }
        };
        match self.deadline_at_ms() {
            Some(deadline) if now_ms >= deadline => {
                self.gave_up = Some(GiveUp::Deadline);
                None
            }
            Some(deadline) => Some(delay.min(deadline.saturating_sub(now_ms))),
            None => Some(delay),
        }
    }

    /// Starts over (after a success), keeping the policy.
    pub fn reset(&mut self, now_ms: u64) {
        *self = Self::new(self.policy, now_ms);
    }
}

/// The operation kept failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[error("gave up after {attempts} attempts ({reason:?}): {last:?}")]
pub struct RetryError<E> {
    /// The last attempt's error.
    pub last: E,
    /// Attempts made.
    pub attempts: u32,
    /// Why it stopped.
    pub reason: GiveUp,
}

impl<E: core::fmt::Debug> iot_core::Error for RetryError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        iot_core::ErrorKind::Timeout
    }
}

/// Runs `op` until it succeeds, sleeping through `delay` between attempts as `policy` says.
/// `op` receives the 1-based attempt number.
pub async fn retry<T, E, F, Fut, C, R, D>(
    policy: BackoffPolicy,
    clock: &C,
    rng: &mut R,
    delay: &mut D,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: core::future::Future<Output = Result<T, E>>,
    C: Clock + ?Sized,
    R: Rng + ?Sized,
    D: embedded_hal_async::delay::DelayNs,
{
    let mut backoff = Backoff::new(policy, clock.now_ms());
    loop {
        let attempt = backoff.failures().saturating_add(1);
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(last) => match backoff.next_delay(clock.now_ms(), rng) {
                Some(ms) => delay.delay_ms(u32::try_from(ms).unwrap_or(u32::MAX)).await,
                None => {
                    return Err(RetryError {
                        last,
                        attempts: backoff.failures(),
                        reason: backoff.gave_up().unwrap_or(GiveUp::Attempts),
                    });
                }
            },
        }
    }
}

/// The blocking twin of [`retry`], sleeping through an `embedded_hal::delay::DelayNs`.
pub fn retry_blocking<T, E, F, C, R, D>(
    policy: BackoffPolicy,
    clock: &C,
    rng: &mut R,
    delay: &mut D,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Result<T, E>,
    C: Clock + ?Sized,
    R: Rng + ?Sized,
    D: embedded_hal::delay::DelayNs,
{
    let mut backoff = Backoff::new(policy, clock.now_ms());
    loop {
        let attempt = backoff.failures().saturating_add(1);
        match op(attempt) {
            Ok(v) => return Ok(v),
            Err(last) => match backoff.next_delay(clock.now_ms(), rng) {
                Some(ms) => delay.delay_ms(u32::try_from(ms).unwrap_or(u32::MAX)),
                None => {
                    return Err(RetryError {
                        last,
                        attempts: backoff.failures(),
                        reason: backoff.gave_up().unwrap_or(GiveUp::Attempts),
                    });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use iot_core::ManualClock;

    use super::*;
    use crate::rng::SplitMix64;

    struct ClockDelay<'a>(&'a ManualClock);

    impl embedded_hal_async::delay::DelayNs for ClockDelay<'_> {
        async fn delay_ns(&mut self, ns: u32) {
            self.0.advance(u64::from(ns / 1_000_000));
        }
        async fn delay_ms(&mut self, ms: u32) {
            self.0.advance(u64::from(ms));
        }
    }

    #[test]
    fn exponential_capped_without_jitter() {
        let p = BackoffPolicy::new(50, 300)
            .with_jitter(Jitter::None)
            .with_max_attempts(7);
        let mut b = Backoff::new(p, 0);
        let mut rng = SplitMix64::new(0);
        let d: std::vec::Vec<u64> = core::iter::from_fn(|| b.next_delay(0, &mut rng)).collect();
        assert_eq!(d, [50, 100, 200, 300, 300, 300]);
        assert_eq!(b.gave_up(), Some(GiveUp::Attempts));
        assert_eq!(b.next_delay(0, &mut rng), None);
        b.reset(10);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.next_delay(10, &mut rng), Some(50));
    }

    #[test]
    fn deadline_clips_and_stops() {
        let p = BackoffPolicy::new(1_000, 10_000)
            .with_jitter(Jitter::None)
            .with_deadline_ms(2_500);
        let mut b = Backoff::new(p, 100);
        let mut rng = SplitMix64::new(0);
        assert_eq!(b.next_delay(100, &mut rng), Some(1_000));
        assert_eq!(b.next_delay(1_100, &mut rng), Some(1_500)); // clipped to the deadline
        assert_eq!(b.next_delay(2_600, &mut rng), None);
        assert_eq!(b.gave_up(), Some(GiveUp::Deadline));
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let p = BackoffPolicy::new(1_000, 1_000).with_jitter(Jitter::Equal);
        let mut b = Backoff::new(p, 0);
        let mut rng = SplitMix64::new(9);
        for _ in 0..100 {
            let d = b.next_delay(0, &mut rng).unwrap();
            assert!((500..=1_000).contains(&d));
        }
    }

    #[test]
    fn retry_succeeds_after_failures_and_sleeps_on_the_clock() {
        let clock = ManualClock::new(0);
        let mut delay = ClockDelay(&clock);
        let mut rng = SplitMix64::new(1);
        let p = BackoffPolicy::new(100, 1_000).with_jitter(Jitter::None);
        let r = embassy_futures::block_on(retry(p, &clock, &mut rng, &mut delay, |n| async move {
            if n < 4 { Err(n) } else { Ok(n) }
        }));
        assert_eq!(r, Ok(4));
        assert_eq!(clock.now_ms(), 100 + 200 + 400);
    }

    impl embedded_hal::delay::DelayNs for ClockDelay<'_> {
        fn delay_ns(&mut self, ns: u32) {
            self.0.advance(u64::from(ns / 1_000_000));
        }
        fn delay_ms(&mut self, ms: u32) {
            self.0.advance(u64::from(ms));
        }
    }

    #[test]
    fn blocking_retry_meets_its_deadline() {
        let clock = ManualClock::new(0);
        let mut delay = ClockDelay(&clock);
        let mut rng = SplitMix64::new(5);
        let p = BackoffPolicy::new(100, 10_000)
            .with_jitter(Jitter::None)
            .with_deadline_ms(1_000);
        let mut calls = 0;
        let r: Result<(), _> = retry_blocking(p, &clock, &mut rng, &mut delay, |_| {
            calls += 1;
            Err::<(), _>("nack")
        });
        let e = r.unwrap_err();
        assert_eq!(e.reason, GiveUp::Deadline);
        assert_eq!(e.last, "nack");
        // 100 + 200 + 400, then clipped to 300 to land on the deadline, then stop.
        assert_eq!(calls, 5);
        assert_eq!(clock.now_ms(), 1_000);
        let ok = retry_blocking(p, &clock, &mut rng, &mut delay, |n| {
            if n == 2 { Ok(n) } else { Err(n) }
        });
        assert_eq!(ok, Ok(2));
    }

    #[test]
    fn retry_gives_up_with_the_last_error() {
        let clock = ManualClock::new(0);
        let mut delay = ClockDelay(&clock);
        let mut rng = SplitMix64::new(1);
        let p = BackoffPolicy::new(100, 1_000).with_max_attempts(3);
        let r: Result<(), _> =
            embassy_futures::block_on(retry(p, &clock, &mut rng, &mut delay, |n| async move {
                Err::<(), u32>(n)
            }));
        assert_eq!(
            r,
            Err(RetryError {
                last: 3,
                attempts: 3,
                reason: GiveUp::Attempts
            })
        );
        assert_eq!(
            iot_core::Error::kind(&r.unwrap_err()),
            iot_core::ErrorKind::Timeout
        );
    }
}
