//! The radio simulator's speed: 100 000 meters at a 10 s interval in 100
//! isolated cells on 3 channels, real sealing and real state machines.

use serde::Serialize;

use gridpow_sim::{SimConfig, Simulation};

use crate::sys::process_cpu_seconds;
use crate::{setup, BenchError};

/// Simulator figures.
#[derive(Clone, Debug, Serialize)]
pub struct SimFigures {
    /// Meters simulated.
    pub meters: u32,
    /// Threads the collision domains were spread over.
    pub threads: u32,
    /// Simulated seconds of traffic (the drain after it not included).
    pub duration_s: f64,
    /// Simulated seconds in all, with the drain.
    pub simulated_s: f64,
    /// Uplinks on the air (MAC retries included).
    pub uplinks: u64,
    /// Events processed.
    pub events: u64,
    /// Wall seconds of the run (setup excluded).
    pub wall_s: f64,
    /// CPU seconds of the process during the run, setup (each thread derives
    /// its meters' keys) included, where Linux tells it.
    pub cpu_s: Option<f64>,
    /// Uplinks per wall second.
    pub uplinks_per_wall_s: f64,
    /// Uplinks per CPU second (goal ≥ 0.5 M).
    pub uplinks_per_cpu_s: Option<f64>,
    /// Events per wall second.
    pub events_per_wall_s: f64,
    /// Wall seconds a simulated hour of traffic would take at this rate
    /// (goal < 60 s; the drain is counted as traffic, so it errs high).
    pub projected_hour_wall_s: f64,
    /// The run's trace hash (identical for a seed on every machine).
    pub trace_hash: String,
}

/// Runs the benchmark configuration for `simulated_s` simulated seconds on
/// `threads` threads.
pub fn measure(simulated_s: f64, threads: u32) -> Result<SimFigures, BenchError> {
    let mut cfg = SimConfig::benchmark(gridpow_sim::rng::DEFAULT_SEED, simulated_s);
    cfg.threads = threads;
    let meters = cfg.meters;
    let duration_s = cfg.duration_us as f64 / 1e6;
    let cpu0 = process_cpu_seconds();
    let report = Simulation::run_threads(cfg, &mut |_| true).map_err(setup("the simulator"))?;
    let cpu_s = process_cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    let wall_s = report.wall_s.max(1e-9);
    Ok(SimFigures {
        meters,
        threads,
        duration_s,
        simulated_s: report.simulated_s,
        uplinks: report.uplinks_simulated,
        events: report.events,
        wall_s,
        cpu_s,
        uplinks_per_wall_s: report.uplinks_simulated as f64 / wall_s,
        uplinks_per_cpu_s: cpu_s.map(|c| report.uplinks_simulated as f64 / c.max(1e-9)),
        events_per_wall_s: report.events as f64 / wall_s,
        projected_hour_wall_s: wall_s * 3600.0 / duration_s.max(1e-9),
        trace_hash: report.trace_hash,
    })
}
