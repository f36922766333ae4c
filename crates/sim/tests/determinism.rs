//! The same seed gives the same event trace; another seed gives another.

mod common;

use gridpow_sim::{simulate, MacModel, Report, SimConfig};

fn busy_network(seed: u64) -> Report {
    let mut cfg = SimConfig::new(120, 1.0, 20.0);
    cfg.seed = seed;
    cfg.mac = MacModel::Csma;
    cfg.hidden_fraction = 0.1;
    cfg.loss = 0.05;
    cfg.capture_db = Some(6.0);
    cfg.drain_us = 10_000_000;
    match simulate(cfg) {
        Ok(r) => r,
        Err(e) => panic!("seed {seed}: setup failed: {e}"),
    }
}

#[test]
fn the_same_seed_replays_the_identical_trace() {
    let seed = common::seed();
    let (a, b) = (busy_network(seed), busy_network(seed));
    assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
    assert_eq!(a.events, b.events, "seed {seed}");
    assert_eq!(a.readings_delivered, b.readings_delivered, "seed {seed}");
    assert_eq!(a.latency_p99_ms, b.latency_p99_ms, "seed {seed}");
}

#[test]
fn a_different_seed_gives_a_different_trace() {
    let seed = common::seed();
    let other = seed.wrapping_add(1);
    assert_ne!(
        busy_network(seed).trace_hash,
        busy_network(other).trace_hash,
        "seeds {seed} and {other}"
    );
}
