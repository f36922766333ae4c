//! Shared helpers: the seed in force (default, or `GRIDPOW_SIM_SEED`).

#![allow(dead_code)]

use gridpow_sim::rng::{DEFAULT_SEED, SEED_ENV};

/// The seed for this test run; pass it in assertion messages so a failure can be replayed.
pub fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}
