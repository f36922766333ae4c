//! Validation against theory: pure ALOHA S = G·e^(−2G), slotted ALOHA S = G·e^(−G).
//!
//! Meters are kept backlogged, so each attempts as often as the real sender
//! lets it: after a success once the relay's ACK arrives (processing time
//! exponential, mean 20 ms), after a failure once the jittered holdoff ends.
//! The number of meters then sets G, and attempt times are random enough for
//! the superposition to be Poisson. (With sparse fresh readings instead, ALOHA
//! with retransmissions is bistable between G ≈ 0.4 and saturation, the
//! classical instability, so those G values are not stationary.)

mod common;

use gridpow_sim::{simulate, AckAir, Arrivals, MacModel, Report, SimConfig};

fn aloha_run(mac: MacModel, meters: u32, seed: u64) -> Report {
    let mut cfg = SimConfig::new(meters, 0.02, 10.0);
    cfg.seed = seed;
    cfg.mac = mac;
    cfg.arrivals = Arrivals::Poisson;
    // Spread boots so the first attempts do not all collide in one wave.
    cfg.boot_spread_us = Some(1_000_000);
    cfg.warmup_us = 3_000_000;
    cfg.drain_us = 0;
    cfg.max_retries = Some(0);
    cfg.max_readings_per_frame = Some(1);
    cfg.ack_air = AckAir::Ideal;
    cfg.ack_delay_us = 20_000;
    cfg.ack_delay_random = true;
    cfg.ack_timeout_us = Some(200_000);
    cfg.retry_holdoff_us = Some(500_000);
    // The textbook models have no phase: a meter retries after the hold-off alone.
    cfg.start_spread_us = Some(0);
    cfg.phase_spread_us = Some(0);
    match simulate(cfg) {
        Ok(r) => r,
        Err(e) => panic!("seed {seed}: setup failed: {e}"),
    }
}

fn check_against(mac: MacModel, meters: &[u32], theory: fn(f64) -> f64) {
    let seed = common::seed();
    let mut gs = Vec::new();
    for &n in meters {
        let r = aloha_run(mac, n, seed);
        let (g, s) = (r.offered_load, r.throughput);
        let want = theory(g);
        eprintln!(
            "{mac:?} meters {n}: G {g:.3} S {s:.4} theory {want:.4} error {:+.4}",
            s - want
        );
        assert!(
            (s - want).abs() < 0.03,
            "seed {seed}: {mac:?} with {n} meters: G {g:.3}, S {s:.4}, theory {want:.4}"
        );
        gs.push(g);
    }
    let (lo, hi) = gs
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &g| (lo.min(g), hi.max(g)));
    assert!(
        lo <= 0.15 && hi >= 1.8,
        "seed {seed}: points cover G {lo:.3}..{hi:.3}, not 0.1..2.0"
    );
}

#[test]
fn pure_aloha_throughput_is_g_times_e_to_the_minus_2g() {
    check_against(MacModel::Aloha, &[20, 150, 450, 900, 1600], |g| {
        g * (-2.0 * g).exp()
    });
}

#[test]
fn slotted_aloha_throughput_is_g_times_e_to_the_minus_g() {
    check_against(MacModel::Slotted, &[15, 150, 450, 900, 1400], |g| {
        g * (-g).exp()
    });
}
