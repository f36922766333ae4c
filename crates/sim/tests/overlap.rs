//! Overlapping cells: edge meters heard by two relays. Each reading still
//! counts once (as the grid server stores it once), the run stays the same on
//! any number of threads, and under per-receiver loss a second relay makes
//! delivery cheaper.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};

use gridpow_sim::{simulate, MacModel, Report, SimConfig, Simulation};

/// Two relays on one channel, every other meter at the edge, a harsh air.
fn harsh(mac: MacModel, seed: u64) -> SimConfig {
    let mut cfg = common::harsh(mac, seed);
    cfg.relays = 2;
    cfg.overlap = 0.5;
    cfg
}

fn assert_each_reading_counts_once(mac: MacModel) {
    let seed = common::seed();
    let cfg = harsh(mac, seed);
    let second: HashMap<u32, u32> = (0..cfg.meters)
        .filter_map(|m| cfg.second_relay(m).map(|r| (m, r)))
        .collect();
    let mut sim = Simulation::new(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let r = sim.run(&mut |_| true);
    let what = format!("seed {seed}: {mac:?}");
    assert_eq!(r.overlap_meters, 20, "{what}");

    // Server view: each (meter, seq) once, every reading made is there.
    let mut seen = HashSet::new();
    for d in sim.deliveries() {
        assert!(
            seen.insert(*d),
            "{what}: meter {} reading {} twice",
            d.0,
            d.1
        );
    }
    assert_eq!(seen.len() as u64, r.readings_delivered, "{what}");
    assert_eq!(r.readings_delivered, r.readings_made, "{what}: {r:#?}");
    assert_eq!(r.readings_lost, 0, "{what}");
    assert_eq!(
        r.backlog_drops, 0,
        "{what}: the test needs a backlog with room"
    );
    assert_eq!(r.duplicates_delivered, 0, "{what}");

    // Relay view: no relay delivers a reading twice, only a meter's own and
    // second relay deliver it, and what two relays delivered is the overlap count.
    let mut per_relay = HashSet::new();
    let mut carriers: HashMap<(u32, u32), u32> = HashMap::new();
    for &(relay, m, seq) in sim.relay_deliveries() {
        assert!(
            per_relay.insert((relay, m, seq)),
            "{what}: relay {relay} twice"
        );
        let own = relay == m % 2;
        assert!(
            own || second.get(&m) == Some(&relay),
            "{what}: relay {relay} delivered meter {m}"
        );
        *carriers.entry((m, seq)).or_default() += 1;
    }
    assert_eq!(carriers.len(), seen.len(), "{what}");
    assert!(carriers.keys().all(|k| seen.contains(k)), "{what}");
    let both = carriers.values().filter(|&&n| n == 2).count() as u64;
    assert_eq!(both, r.readings_heard_by_both, "{what}");
    assert!(both > 0, "{what}: no reading was heard by both relays");
    assert!(r.uplinks_overheard > 0, "{what}");
    assert!(
        r.uplinks_collided + r.uplinks_faded > 0,
        "{what}: the air was too kind"
    );
}

#[test]
fn every_reading_counts_once_with_overlapping_cells_under_csma() {
    assert_each_reading_counts_once(MacModel::Csma);
}

#[test]
fn every_reading_counts_once_with_overlapping_cells_under_pure_aloha() {
    assert_each_reading_counts_once(MacModel::Aloha);
}

/// Overlap keeps both relays of an edge meter in one collision domain, so
/// domains still run on separate threads: the report and the trace hash
/// agree for 1, 2 and 3 threads, with cells in a shared area and with
/// isolated cells (paired into overlapping neighbours).
#[test]
fn any_number_of_threads_gives_the_identical_run_with_overlap() {
    let seed = common::seed();
    for isolated in [false, true] {
        let mut cfg = SimConfig::new(600, 1.0, 15.0);
        cfg.seed = seed;
        cfg.relays = 8;
        cfg.channels = 2;
        cfg.isolated_cells = isolated;
        cfg.overlap = 0.3;
        cfg.hidden_fraction = 0.1;
        cfg.loss = 0.05;
        cfg.capture_db = Some(6.0);
        cfg.drain_us = 5_000_000;
        let run = |threads: u32| {
            let mut c = cfg.clone();
            c.threads = threads;
            let r = simulate(c).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let mut v = serde_json::to_value(&r).unwrap();
            for volatile in ["wall_s", "uplinks_per_wall_s"] {
                v.as_object_mut().unwrap().remove(volatile);
            }
            v
        };
        let one = run(1);
        assert!(
            one["readings_heard_by_both"].as_u64().unwrap_or(0) > 0,
            "seed {seed}, isolated {isolated}: {one}"
        );
        for threads in [2, 3] {
            assert_eq!(
                run(threads),
                one,
                "seed {seed}, isolated {isolated}, {threads} threads"
            );
        }
    }
}

fn lossy(seed: u64, overlap: f64) -> Report {
    let mut cfg = SimConfig::new(300, 10.0, 300.0);
    cfg.seed = seed;
    cfg.relays = 2;
    cfg.overlap = overlap;
    cfg.loss = 0.2;
    // MAC-level retries would repair each lost copy before the sender sees
    // it (the MAC ACK comes from the addressed relay only): without them the
    // sender's retransmissions show what the second relay saves.
    cfg.mac_retries = 0;
    simulate(cfg).unwrap_or_else(|e| panic!("seed {seed}: {e}"))
}

/// With 20 % loss on every link, each copy of an uplink and each ACK is lost
/// independently at each relay: a second relay catches much of what the
/// first misses, so fewer frames need a retransmission (CSMA, so the two
/// relays' ACKs contend rather than start together).
#[test]
fn overlapping_cells_deliver_as_well_with_fewer_retransmissions_under_loss() {
    let seed = common::seed();
    let (disjoint, overlapping) = (lossy(seed, 0.0), lossy(seed, 1.0));
    let figures = |r: &Report| {
        format!(
            "in budget {:.5}, retx/reading {:.4}, heard by both {}",
            r.delivery_ratio_in_budget, r.retransmissions_per_reading, r.readings_heard_by_both
        )
    };
    let what = format!(
        "seed {seed}: disjoint {}; overlapping {}",
        figures(&disjoint),
        figures(&overlapping)
    );
    assert_eq!(disjoint.readings_heard_by_both, 0, "{what}");
    assert!(overlapping.readings_heard_by_both > 0, "{what}");
    assert!(
        overlapping.delivery_ratio_in_budget >= disjoint.delivery_ratio_in_budget,
        "{what}"
    );
    assert!(
        overlapping.retransmissions_per_reading < disjoint.retransmissions_per_reading,
        "{what}"
    );
    assert_eq!(overlapping.duplicates_delivered, 0, "{what}");
}
