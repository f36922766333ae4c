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

/// Collision domains run on separate threads give the very same run: the
/// report (wall time apart) and the trace hash agree for 1, 2 and 3 threads,
/// with isolated cells and with cells sharing channels, under CSMA with
/// in-band ACKs and under ALOHA with delayed, ideal ACKs.
#[test]
fn any_number_of_threads_gives_the_identical_run() {
    let seed = common::seed();
    for (isolated, aloha) in [(true, false), (false, false), (true, true)] {
        let mut cfg = SimConfig::new(600, 1.0, 15.0);
        cfg.seed = seed;
        cfg.relays = 6;
        cfg.channels = 3;
        cfg.isolated_cells = isolated;
        cfg.hidden_fraction = 0.1;
        cfg.loss = 0.05;
        cfg.capture_db = Some(6.0);
        cfg.drain_us = 5_000_000;
        if aloha {
            cfg.mac = MacModel::Aloha;
            cfg.ack_air = gridpow_sim::AckAir::Ideal;
            cfg.ack_delay_us = 2_000;
            cfg.ack_delay_random = true;
        }
        let run = |threads: u32| {
            let mut c = cfg.clone();
            c.threads = threads;
            let r = simulate(c).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let mut v = serde_json::to_value(&r).expect("JSON");
            for volatile in ["wall_s", "uplinks_per_wall_s"] {
                v.as_object_mut().expect("object").remove(volatile);
            }
            v
        };
        let one = run(1);
        assert!(
            one["readings_delivered"].as_u64().unwrap_or(0) > 1000,
            "{one}"
        );
        for threads in [2, 3] {
            assert_eq!(
                run(threads),
                one,
                "seed {seed}, isolated {isolated}, aloha {aloha}, {threads} threads"
            );
        }
    }
}
