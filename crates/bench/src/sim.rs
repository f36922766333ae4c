//! The radio simulator's speed: 100 000 meters at a 10 s interval in 100
//! isolated cells on 3 channels, real sealing and real state machines.

use std::time::Instant;

use serde::Serialize;

use gridpow_sim::{Report, SimConfig, SimError, Simulation};

use crate::sys::process_cpu_seconds;
use crate::{setup, BenchError};

/// Threads the simulator uses by default: every core, at most 8 (each
/// thread holds every meter's state, about 340 MiB for 100 000 meters).
pub fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32)
}

/// One benchmark run: the simulator's report and what it cost here.
#[derive(Clone, Debug)]
pub struct SimRun {
    /// The simulator's own report (its wall time leaves the set-up out).
    pub report: Report,
    /// Wall seconds of the set-up (every thread derives its meters' keys).
    pub setup_s: f64,
    /// CPU seconds of the process from the end of the set-up, where Linux tells it.
    pub run_cpu_s: Option<f64>,
}

/// Runs `cfg` on `cfg.threads` threads, timing the set-up and the run's CPU
/// apart: the run starts at the simulator's first progress report, which
/// comes once every thread is set up.
pub fn run_timed(cfg: SimConfig) -> Result<SimRun, SimError> {
    let started = Instant::now();
    let mut run_start: Option<(f64, Option<f64>)> = None;
    let report = Simulation::run_threads(cfg, &mut |_| {
        run_start.get_or_insert_with(|| (started.elapsed().as_secs_f64(), process_cpu_seconds()));
        true
    })?;
    let (setup_s, cpu0) = run_start.unwrap_or((0.0, None));
    Ok(SimRun {
        report,
        setup_s,
        run_cpu_s: process_cpu_seconds().zip(cpu0).map(|(a, b)| a - b),
    })
}

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
    /// Wall seconds of the set-up (keys and senders of every meter, per thread).
    pub setup_s: f64,
    /// Wall seconds of the run (set-up excluded).
    pub wall_s: f64,
    /// CPU seconds of the process during the run (set-up excluded), where Linux tells it.
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
    /// The run's trace hash (identical for a seed on every machine and thread count).
    pub trace_hash: String,
}

/// Runs the benchmark configuration for `simulated_s` simulated seconds on
/// `threads` threads.
pub fn measure(simulated_s: f64, threads: u32) -> Result<SimFigures, BenchError> {
    let mut cfg = SimConfig::benchmark(gridpow_sim::rng::DEFAULT_SEED, simulated_s);
    cfg.threads = threads;
    let meters = cfg.meters;
    let duration_s = cfg.duration_us as f64 / 1e6;
    let run = run_timed(cfg).map_err(setup("the simulator"))?;
    let report = run.report;
    let wall_s = report.wall_s.max(1e-9);
    Ok(SimFigures {
        meters,
        threads,
        duration_s,
        simulated_s: report.simulated_s,
        uplinks: report.uplinks_simulated,
        events: report.events,
        setup_s: run.setup_s,
        wall_s,
        cpu_s: run.run_cpu_s,
        uplinks_per_wall_s: report.uplinks_simulated as f64 / wall_s,
        uplinks_per_cpu_s: run
            .run_cpu_s
            .map(|c| report.uplinks_simulated as f64 / c.max(1e-9)),
        events_per_wall_s: report.events as f64 / wall_s,
        projected_hour_wall_s: wall_s * 3600.0 / duration_s.max(1e-9),
        trace_hash: report.trace_hash,
    })
}
