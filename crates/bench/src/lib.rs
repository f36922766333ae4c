//! `gridpow bench`: every ratio gridpow promises, each against its baseline
//! measured in the same process and the same run, so that a figure compares
//! like with like on whatever machine it runs (a loaded CI runner included).
//!
//! | part | candidate | baseline in the same run |
//! |------|-----------|--------------------------|
//! | `pow` | solver tries/s, 1 core and all | raw `compress256`/s on as many threads |
//! | `verify` | block verification, readings/s per core, 4 shapes | Ed25519 verify/s, CCM open/s, leaf hash/s |
//! | `ingest` | store commit and end to end, readings/s | raw insert (SQLite) or COPY (PostgreSQL) of the same rows |
//! | `sim` | simulator uplinks per wall and per CPU second | — (absolute; goals in [`goals`]) |
//! | `journal` | relay journal frames made durable per second | one frame per fsync |
//!
//! [`run`] measures the parts asked for; [`Report::goals`] compares the
//! figures with the goals of `docs/performance.md`.

pub mod fixtures;
pub mod ingest;
pub mod journal;
pub mod pow;
pub mod sim;
pub mod sys;
pub mod verify;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use ingest::Backend;

/// Why a benchmark could not run or gave a result that cannot be right.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The command line asked for something that does not exist.
    #[error("{0}")]
    Usage(String),
    /// A step failed: setting up keys, databases, broker or server, or
    /// running one of them.
    #[error("{what} failed: {detail}")]
    Setup {
        /// What was being set up or run.
        what: &'static str,
        /// The underlying error.
        detail: String,
    },
    /// A program a part needs is not installed.
    #[error("{0}")]
    Missing(String),
    /// The protocol core refused a benchmark input (a bug in the fixtures).
    #[error("the protocol core refused a benchmark input: {0}")]
    Proto(#[from] gridpow_proto::Error),
    /// Ingestion stopped making progress.
    #[error("stalled: {0}")]
    Stalled(String),
    /// A result failed its sanity check (a figure of a wrong run is worthless).
    #[error("wrong result: {0}")]
    Wrong(String),
}

/// Maps any displayable error to [`BenchError::Setup`] naming `what`.
pub fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Setup {
        what,
        detail: e.to_string(),
    }
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Proof of work.
    Pow,
    /// Block verification.
    Verify,
    /// Ingest into the database.
    Ingest,
    /// The radio simulator.
    Sim,
    /// The relay's journal.
    Journal,
}

impl Part {
    /// Every part, in the order they run.
    pub const ALL: [Part; 5] = [
        Part::Pow,
        Part::Verify,
        Part::Ingest,
        Part::Sim,
        Part::Journal,
    ];

    /// Parses a part's name.
    pub fn parse(s: &str) -> Result<Part, BenchError> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
                BenchError::Usage(format!(
                    "unknown part {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }

    /// Its name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Part::Pow => "pow",
            Part::Verify => "verify",
            Part::Ingest => "ingest",
            Part::Sim => "sim",
            Part::Journal => "journal",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Small sizes and short budgets: the whole run in under a minute.
    pub quick: bool,
    /// The parts to run.
    pub parts: Vec<Part>,
    /// The ingest part's database.
    pub backend: Backend,
    /// Where the journal part writes (its file system decides the fsync cost).
    pub journal_dir: PathBuf,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            quick: false,
            parts: Part::ALL.to_vec(),
            backend: Backend::Sqlite,
            journal_dir: std::env::temp_dir(),
        }
    }
}

/// One goal and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// What is measured.
    pub name: &'static str,
    /// The figure of this run.
    pub measured: f64,
    /// The goal.
    pub goal: f64,
    /// `true` when the goal is a floor, `false` when it is a ceiling.
    pub at_least: bool,
    /// Whether this run met it.
    pub met: bool,
}

impl Goal {
    fn new(name: &'static str, measured: f64, goal: f64, at_least: bool) -> Goal {
        let met = if at_least {
            measured >= goal
        } else {
            measured <= goal
        };
        Goal {
            name,
            measured,
            goal,
            at_least,
            met,
        }
    }
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Cores available to the process.
    pub cores: usize,
    /// Proof of work on 1 core and on all.
    pub pow: Vec<pow::PowFigures>,
    /// Block verification.
    pub verify: Option<verify::VerifyFigures>,
    /// Ingest.
    pub ingest: Option<ingest::IngestFigures>,
    /// The simulator.
    pub sim: Option<sim::SimFigures>,
    /// The relay journal.
    pub journal: Option<journal::JournalFigures>,
    /// The goals, measured against.
    pub goals: Vec<Goal>,
    /// Wall seconds of the whole run.
    pub wall_s: f64,
}

impl Report {
    /// The goals of `docs/performance.md` that this run's parts measured.
    pub fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        if let Some(p) = self.pow.first() {
            goals.push(Goal::new(
                "pow tries ÷ compress256, 1 core",
                p.ratio,
                0.90,
                true,
            ));
        }
        if let Some(v) = &self.verify {
            for s in &v.shapes {
                let goal = match (s.readings_per_block, s.readings_per_frame) {
                    (64, 6) => Some((
                        "verify 64-reading blocks, 6 per frame, readings/s per core",
                        2.0e6,
                    )),
                    (64, 1) => Some((
                        "verify 64-reading blocks, 1 per frame, readings/s per core",
                        1.5e6,
                    )),
                    _ => None,
                };
                if let Some((name, goal)) = goal {
                    goals.push(Goal::new(name, s.readings_per_s, goal, true));
                }
            }
        }
        // The goal is SQLite's (PostgreSQL's baseline, binary COPY, is another measure).
        if let Some(e) = self
            .ingest
            .as_ref()
            .filter(|i| i.backend == "sqlite")
            .and_then(|i| i.end_to_end.as_ref())
        {
            goals.push(Goal::new(
                "end to end ÷ raw insert (SQLite)",
                e.over_raw,
                0.8,
                true,
            ));
        }
        if let Some(s) = &self.sim {
            if let Some(c) = s.uplinks_per_cpu_s {
                goals.push(Goal::new(
                    "simulator uplinks per CPU second",
                    c,
                    0.5e6,
                    true,
                ));
            }
            goals.push(Goal::new(
                "simulator: wall seconds per simulated hour",
                s.projected_hour_wall_s,
                60.0,
                false,
            ));
        }
        goals
    }
}

/// Runs the parts of `opts`; `progress` hears a line as each step starts.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Report, BenchError> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let q = opts.quick;
    let mut report = Report {
        quick: q,
        cores,
        pow: Vec::new(),
        verify: None,
        ingest: None,
        sim: None,
        journal: None,
        goals: Vec::new(),
        wall_s: 0.0,
    };
    for part in Part::ALL {
        if !opts.parts.contains(&part) {
            continue;
        }
        match part {
            Part::Pow => {
                let budget = Duration::from_millis(if q { 1_000 } else { 4_000 });
                let mut threads = vec![1];
                if cores > 1 {
                    threads.push(cores);
                }
                for t in threads {
                    progress(&format!("pow: {t} thread(s), {budget:?}"));
                    report.pow.push(pow::measure(t, budget));
                }
            }
            Part::Verify => {
                let budget = Duration::from_millis(if q { 400 } else { 1_500 });
                progress(&format!(
                    "verify: {} block shapes and 3 baselines, {budget:?} each",
                    verify::SHAPES.len()
                ));
                report.verify = Some(verify::measure(budget)?);
            }
            Part::Ingest => {
                let opts = ingest::IngestOptions {
                    blocks: if q { 40 } else { 200 },
                    frames_per_block: if q { 500 } else { 1_000 },
                    meters: 500,
                    per_frame: 6,
                    backend: opts.backend.clone(),
                    end_to_end: true,
                    export: false,
                };
                report.ingest = Some(ingest::run(&opts, progress)?);
            }
            Part::Sim => {
                let simulated = if q { 60.0 } else { 600.0 };
                progress(&format!(
                    "sim: 100 000 meters, 10 s interval, {simulated} simulated seconds, {} thread(s)",
                    sim::default_threads()
                ));
                report.sim = Some(sim::measure(simulated, sim::default_threads())?);
            }
            Part::Journal => {
                progress(&format!(
                    "journal: fsync rate in {}",
                    opts.journal_dir.display()
                ));
                report.journal = Some(journal::measure(
                    &opts.journal_dir,
                    if q { 50 } else { 200 },
                )?);
            }
        }
    }
    report.goals = report.goals();
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}
