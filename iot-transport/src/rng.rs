//! A tiny random source for jitter and simulations, injectable so tests are deterministic.
//!
//! No `rand` on the device: [`SplitMix64`] is a few instructions per number and passes the
//! statistical tests that matter for jitter and loss simulation. It is **not** suitable for
//! cryptography.

/// A source of pseudo-random numbers.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait Rng {
    /// The next 32 random bits.
    fn next_u32(&mut self) -> u32;

    /// A value uniformly distributed in `0..=max` (slightly biased for huge ranges; fine for
    /// jitter and simulation).
    fn below_inclusive(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let wide = (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32());
        match max.checked_add(1) {
            Some(m) => wide.checked_rem(m).unwrap_or(wide),
            None => wide,
        }
    }

    /// True with probability `per_mille / 1000`.
    fn chance_per_mille(&mut self, per_mille: u16) -> bool {
        u64::from(per_mille) > self.below_inclusive(999)
    }
}

impl<R: Rng + ?Sized> Rng for &mut R {
    fn next_u32(&mut self) -> u32 {
        (**self).next_u32()
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a fast, seedable generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`; equal seeds give equal sequences.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Rng for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        // The high half has the best-mixed bits.
        (self.next_u64() >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_seeds_give_equal_sequences_and_different_seeds_differ() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut c = SplitMix64::new(8);
        let xs: [u32; 4] = core::array::from_fn(|_| a.next_u32());
        let ys: [u32; 4] = core::array::from_fn(|_| b.next_u32());
        let zs: [u32; 4] = core::array::from_fn(|_| c.next_u32());
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn below_inclusive_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(1);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = r.below_inclusive(4);
            assert!(v <= 4);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below_inclusive(0), 0);
        let _ = r.below_inclusive(u64::MAX);
    }

    #[test]
    fn chance_extremes() {
        let mut r = SplitMix64::new(3);
        assert!((0..100).all(|_| !r.chance_per_mille(0)));
        assert!((0..100).all(|_| r.chance_per_mille(1000)));
        let hits = (0..10_000).filter(|_| r.chance_per_mille(250)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
