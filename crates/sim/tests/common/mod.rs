//! Shared helpers: the seed in force (default, or `GRIDPOW_SIM_SEED`).

#![allow(dead_code)]

use gridpow_sim::rng::{DEFAULT_SEED, SEED_ENV};
use gridpow_sim::{GilbertElliott, MacModel, SimConfig};

/// The seed for this test run; pass it in assertion messages so a failure can be replayed.
pub fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// 40 meters every 2 s for 40 s on a harsh air: hidden meters, 15 % loss
/// and bursts of 90 % loss, a long drain, deliveries recorded.
pub fn harsh(mac: MacModel, seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(40, 2.0, 40.0);
    cfg.seed = seed;
    cfg.mac = mac;
    cfg.hidden_fraction = 0.3;
    cfg.loss = 0.15;
    cfg.burst = Some(GilbertElliott {
        mean_good_us: 8_000_000,
        mean_bad_us: 1_000_000,
        loss_good: 0.0,
        loss_bad: 0.9,
    });
    cfg.drain_us = 300_000_000;
    cfg.record_deliveries = true;
    cfg
}
