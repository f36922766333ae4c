//! With retransmissions on, every reading reaches the relay's application
//! exactly once under every medium access model, and none is lost while the
//! backlog has room.

mod common;

use std::collections::HashSet;

use gridpow_sim::{GilbertElliott, MacModel, Report, SimConfig};

fn run(cfg: SimConfig) -> (Report, Vec<(u32, u32)>) {
    let seed = cfg.seed;
    let mut sim = match gridpow_sim::Simulation::new(cfg) {
        Ok(s) => s,
        Err(e) => panic!("seed {seed}: setup failed: {e}"),
    };
    let report = sim.run(&mut |_| true);
    (report, sim.deliveries().to_vec())
}

fn assert_exactly_once(mac: MacModel) {
    let seed = common::seed();
    let (r, deliveries) = run(common::harsh(mac, seed));
    let mut seen = HashSet::new();
    for d in &deliveries {
        assert!(
            seen.insert(*d),
            "seed {seed}: {mac:?} delivered meter {} reading {} twice",
            d.0,
            d.1
        );
    }
    assert_eq!(r.duplicates_delivered, 0, "seed {seed}: {mac:?}");
    assert_eq!(
        r.backlog_drops, 0,
        "seed {seed}: {mac:?}: the test needs a backlog with room"
    );
    assert_eq!(
        deliveries.len() as u64,
        r.readings_delivered,
        "seed {seed}: {mac:?}"
    );
    assert_eq!(
        r.readings_delivered, r.readings_made,
        "seed {seed}: {mac:?}: {r:#?}"
    );
    assert_eq!(r.readings_lost, 0, "seed {seed}: {mac:?}");
    assert!(
        r.uplinks_collided + r.uplinks_faded > 0,
        "seed {seed}: {mac:?}: the air was too kind"
    );
    assert!(
        r.frames_abandoned > 0 || r.retransmissions_per_reading > 0.0,
        "seed {seed}: {mac:?}"
    );
}

#[test]
fn every_reading_is_delivered_exactly_once_under_pure_aloha() {
    assert_exactly_once(MacModel::Aloha);
}

#[test]
fn every_reading_is_delivered_exactly_once_under_slotted_aloha() {
    assert_exactly_once(MacModel::Slotted);
}

#[test]
fn every_reading_is_delivered_exactly_once_under_csma() {
    assert_exactly_once(MacModel::Csma);
}

#[test]
fn only_backlog_overflow_loses_readings_and_never_duplicates() {
    let seed = common::seed();
    let mut cfg = common::harsh(MacModel::Csma, seed);
    // One-second readings and 60-second outages overflow the 32-reading backlog.
    cfg.interval_us = 1_000_000;
    cfg.duration_us = 240_000_000;
    cfg.burst = Some(GilbertElliott {
        mean_good_us: 60_000_000,
        mean_bad_us: 60_000_000,
        loss_good: 0.0,
        loss_bad: 1.0,
    });
    let (r, deliveries) = run(cfg);
    let unique: HashSet<_> = deliveries.iter().collect();
    assert_eq!(
        unique.len(),
        deliveries.len(),
        "seed {seed}: duplicates delivered"
    );
    assert!(
        r.backlog_drops > 0,
        "seed {seed}: the outage did not overflow any backlog"
    );
    assert!(r.readings_lost > 0, "seed {seed}");
    assert!(
        r.readings_lost <= r.backlog_drops,
        "seed {seed}: {} lost, {} dropped",
        r.readings_lost,
        r.backlog_drops
    );
    assert_eq!(
        r.readings_delivered + r.readings_lost + r.readings_pending,
        r.readings_made,
        "seed {seed}"
    );
}
