//! Seeded random streams. Every meter and relay draws from its own PCG streams,
//! derived from the master seed and a stream id, so adding a meter does not
//! perturb the draws of the others.

use rand_core::Rng;
use rand_pcg::Pcg64Mcg;

/// The environment variable that overrides the default seed.
pub const SEED_ENV: &str = "GRIDPOW_SIM_SEED";

/// Seed used when neither `--seed` nor [`SEED_ENV`] is given.
pub const DEFAULT_SEED: u64 = 0x6772_6964_706f_7721;

/// SplitMix64's finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream `id` of master seed `seed`.
pub fn stream(seed: u64, id: u64) -> Pcg64Mcg {
    let hi = mix64(seed ^ mix64(id));
    let lo = mix64(hi ^ 0x5851_f42d_4c95_7f2d);
    Pcg64Mcg::new((u128::from(hi) << 64) | u128::from(lo))
}

/// Distributions the simulator needs, over any generator.
pub trait Draw {
    /// Uniform in `[0, 1)` with 53 bits.
    fn unit(&mut self) -> f64;
    /// Uniform in `0..n` (Lemire's multiply; bias below n / 2^64, irrelevant here).
    fn below(&mut self, n: u64) -> u64;
    /// Exponential with the given mean.
    fn exp(&mut self, mean: f64) -> f64;
    /// `true` with probability `p`.
    fn chance(&mut self, p: f64) -> bool;
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64;
}

impl<R: Rng> Draw for R {
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (core::f64::consts::TAU * u2).cos()
    }
}

/// Whether the unordered meter pair `(a, b)` is hidden from each other: a pure
/// function of the seed and the pair, so it costs no memory per pair.
pub fn pair_hidden(seed: u64, a: u32, b: u32, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let h = mix64(seed ^ mix64((u64::from(lo) << 32) | u64::from(hi)) ^ 0x6869_6464_656e);
    ((h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let mut a = stream(7, 1);
        let mut b = stream(7, 1);
        let mut c = stream(7, 2);
        let xa: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn hidden_pairs_are_symmetric_and_near_the_requested_fraction() {
        let mut hidden = 0;
        for a in 0..200u32 {
            for b in 0..200u32 {
                assert_eq!(pair_hidden(3, a, b, 0.1), pair_hidden(3, b, a, 0.1));
                hidden += u32::from(pair_hidden(3, a, b, 0.1));
            }
        }
        let f = f64::from(hidden) / 40_000.0;
        assert!((f - 0.1).abs() < 0.01, "fraction {f}");
    }
}
