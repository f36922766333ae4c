//! `gridpow sim`: flags parsed into plain data ([`SimArgs`]), validated into a
//! [`SimConfig`] or a [`StudyConfig`], then the `gridpow-sim` library does one
//! run, a sweep, the study or the benchmark.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gridpow_bench::sys::peak_memory_kib;
use gridpow_sim::config::{secs_to_us, Arrivals, GilbertElliott, SimConfig};
use gridpow_sim::rng::{DEFAULT_SEED, SEED_ENV};
use gridpow_sim::run::run_with_progress;
use gridpow_sim::study::{self, StudyConfig};
use gridpow_sim::{plot, AckAir, MacModel, Report, Scheme, SimError};

/// Medium access model (`--mac`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MacArg {
    /// Pure ALOHA: transmit at once, no carrier sense, no MAC ACK.
    Aloha,
    /// Slotted ALOHA: transmit at the next slot boundary (slot = longest uplink).
    Slotted,
    /// 802.11 DCF as ESP-NOW uses it: carrier sense, DIFS, binary exponential
    /// backoff, MAC ACK after SIFS and MAC-level retries.
    Csma,
}

impl From<MacArg> for MacModel {
    fn from(a: MacArg) -> Self {
        match a {
            MacArg::Aloha => MacModel::Aloha,
            MacArg::Slotted => MacModel::Slotted,
            MacArg::Csma => MacModel::Csma,
        }
    }
}

/// Retransmission scheme (`--scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemeArg {
    /// gridpow's sender: up to 6 readings per frame, random start offset and
    /// phase, ACK timeout 3 s doubling to 12 s with up to 50 % random jitter,
    /// authenticated 48-byte ACK.
    Gridpow,
    /// The seed prototype: one reading per frame, fixed resend period, no jitter,
    /// no backoff, short unauthenticated ACK.
    Seed,
}

impl From<SchemeArg> for Scheme {
    fn from(a: SchemeArg) -> Self {
        match a {
            SchemeArg::Gridpow => Scheme::Gridpow,
            SchemeArg::Seed => Scheme::Seed,
        }
    }
}

/// How ACKs travel (`--acks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AckArg {
    /// ACKs are radio frames like any other (what ESP-NOW does).
    InBand,
    /// ACKs arrive instantly and never get lost (the classical ALOHA model's
    /// assumption of a separate feedback channel).
    Ideal,
}

impl From<AckArg> for AckAir {
    fn from(a: AckArg) -> Self {
        match a {
            AckArg::InBand => AckAir::InBand,
            AckArg::Ideal => AckAir::Ideal,
        }
    }
}

/// A part of the scalability study (`--study`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StudyArg {
    /// Meters per relay at 99.9 % delivery (intervals 1, 10, 60 s; 0 and 10 % hidden).
    Capacity,
    /// The seed's fixed resend against gridpow's backoff with jitter.
    Scheme,
    /// Relays and channels for a 100,000-meter district.
    District,
    /// All of the above.
    All,
}

impl From<StudyArg> for study::Part {
    fn from(a: StudyArg) -> Self {
        match a {
            StudyArg::Capacity => study::Part::Capacity,
            StudyArg::Scheme => study::Part::Scheme,
            StudyArg::District => study::Part::District,
            StudyArg::All => study::Part::All,
        }
    }
}

/// Flags of `gridpow sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Meters in the whole network.
    #[arg(long, default_value_t = 100)]
    pub meters: u32,
    /// Mean report interval, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub interval: f64,
    /// Simulated time during which meters make readings, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Medium access model.
    #[arg(long, value_enum, default_value_t = MacArg::Csma)]
    pub mac: MacArg,
    /// Relays; meter m reports to relay m % R.
    #[arg(long, default_value_t = 1)]
    pub relays: u32,
    /// Fraction of each cell's meters at its edge, heard by a second relay too
    /// (the next relay on their channel; evenly spread, 0.2 = every fifth).
    /// Both relays ingest, ACK and deliver; a reading counts once. Needs at
    /// least 2 relays per channel; with --isolated, the cells of a channel
    /// pair up into overlapping neighbours that share their air.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub overlap: f64,
    /// Radio channels; relay r uses channel r % C.
    #[arg(long, default_value_t = 1)]
    pub channels: u32,
    /// Put every relay's cell out of range of the others (spatial reuse) instead
    /// of one shared area where relays on a channel share its air.
    #[arg(long)]
    pub isolated: bool,
    /// Fraction of meter pairs that cannot hear each other (hidden terminals).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub hidden: f64,
    /// Independent loss probability of every frame.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub loss: f64,
    /// Gilbert-Elliott bursty loss per meter link: mean good and bad state
    /// durations in seconds, loss in the bad state (default 1) and in the good
    /// state (default 0).
    #[arg(long, value_name = "GOOD_S:BAD_S[:P_BAD[:P_GOOD]]")]
    pub burst_loss: Option<String>,
    /// Capture effect: a frame survives overlap when this many dB stronger than
    /// the strongest interferer. Off unless given.
    #[arg(long, value_name = "DB")]
    pub capture: Option<f64>,
    /// Poisson arrivals instead of periodic readings.
    #[arg(long)]
    pub poisson: bool,
    /// Relative jitter of each periodic interval (uniform in 1 ± jitter).
    #[arg(long, default_value_t = 0.01)]
    pub jitter: f64,
    /// Spread first readings over this many seconds (default: one interval;
    /// small values model a district booting at once after an outage).
    #[arg(long, value_name = "SECS")]
    pub boot_spread: Option<f64>,
    /// Sender retransmissions of a frame before it is given up (0 disables them).
    #[arg(long, value_name = "K")]
    pub max_retries: Option<u8>,
    /// Sender's first ACK timeout (doubles per retry up to --max-backoff-ms), milliseconds.
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<f64>,
    /// Sender's cap on the doubled ACK timeout, milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_backoff_ms: Option<f64>,
    /// Sender's bound of the random offset of a boot's first frame, milliseconds.
    #[arg(long, value_name = "MS")]
    pub start_spread_ms: Option<f64>,
    /// Sender's bound of the random offset of every later new frame, milliseconds.
    #[arg(long, value_name = "MS")]
    pub phase_spread_ms: Option<f64>,
    /// Sender's pause after giving a frame up, milliseconds.
    #[arg(long, value_name = "MS")]
    pub retry_holdoff_ms: Option<f64>,
    /// MAC-level retransmissions of an unacknowledged frame (CSMA).
    #[arg(long, default_value_t = 6)]
    pub mac_retries: u8,
    /// Readings per frame, 1 to 6 (default: 6 for gridpow, 1 for seed).
    #[arg(long, value_name = "N")]
    pub readings_per_frame: Option<usize>,
    /// Retransmission scheme: gridpow's backoff with jitter, or the seed's fixed resend.
    #[arg(long, value_enum, default_value_t = SchemeArg::Gridpow)]
    pub scheme: SchemeArg,
    /// Resend period of the seed scheme, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seed_resend: f64,
    /// How ACKs travel: in-band radio frames, or ideal (instant, lossless).
    #[arg(long, value_enum, default_value_t = AckArg::InBand)]
    pub acks: AckArg,
    /// Relay processing time before it sends an ACK, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub ack_delay_ms: f64,
    /// Make the relay processing time exponential with mean --ack-delay-ms.
    #[arg(long)]
    pub ack_delay_random: bool,
    /// Time after the duration to deliver queued readings, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub drain: f64,
    /// Offered load, throughput and utilisation are measured after this, seconds.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Master seed; printed at start, so any run can be replayed.
    #[arg(long, env = SEED_ENV)]
    pub seed: Option<u64>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write SVG figures (delivery ratio and latency against meters) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Run once per meter count and tabulate (e.g. 100,200,500).
    #[arg(long, value_delimiter = ',', value_name = "N1,N2,...")]
    pub sweep: Vec<u32>,
    /// Run the throughput benchmark (100,000 meters, 10 s interval, one hour).
    #[arg(long)]
    pub bench: bool,
    /// Threads: collision domains (isolated cells, or channels) run in
    /// parallel; the results are the same for any count. Each thread holds
    /// every meter's state. The study runs on one. Default: every core, at most 8.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Run a part of the scalability study, print its tables (Markdown) and
    /// write its figures to --plot DIR.
    #[arg(long, value_enum)]
    pub study: Option<StudyArg>,
}

impl SimArgs {
    /// The seed in force: `--seed`, else `GRIDPOW_SIM_SEED` (clap reads both), else the default.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// `--threads`, else every core.
    pub fn threads(&self) -> u32 {
        self.threads
            .unwrap_or_else(gridpow_bench::sim::default_threads)
    }

    /// Validates the flags into a configuration for `meters` meters.
    pub fn to_config(&self, meters: u32) -> Result<SimConfig, SimError> {
        let pos_secs = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(secs_to_us(v))
            } else {
                Err(config_error(
                    field,
                    format!("must be a positive number of seconds, got {v}"),
                ))
            }
        };
        let nonneg_secs = |field: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(secs_to_us(v))
            } else {
                Err(config_error(
                    field,
                    format!("must be a non-negative number of seconds, got {v}"),
                ))
            }
        };
        let mut cfg = SimConfig::new(meters, 1.0, 1.0);
        cfg.seed = self.seed();
        cfg.threads = self.threads();
        cfg.relays = self.relays;
        cfg.overlap = self.overlap;
        cfg.channels = self.channels;
        cfg.isolated_cells = self.isolated;
        cfg.interval_us = pos_secs("interval", self.interval)?;
        cfg.duration_us = pos_secs("duration", self.duration)?;
        cfg.drain_us = nonneg_secs("drain", self.drain)?;
        cfg.warmup_us = nonneg_secs("warmup", self.warmup)?;
        cfg.arrivals = if self.poisson {
            Arrivals::Poisson
        } else {
            Arrivals::Periodic {
                jitter: self.jitter,
            }
        };
        cfg.boot_spread_us = self
            .boot_spread
            .map(|s| nonneg_secs("boot-spread", s))
            .transpose()?;
        cfg.mac = self.mac.into();
        cfg.mac_retries = self.mac_retries;
        cfg.hidden_fraction = self.hidden;
        cfg.loss = self.loss;
        cfg.burst = self.burst_loss.as_deref().map(parse_burst).transpose()?;
        cfg.capture_db = self.capture;
        cfg.scheme = self.scheme.into();
        cfg.max_retries = self.max_retries;
        cfg.max_readings_per_frame = self.readings_per_frame;
        cfg.ack_timeout_us = self
            .ack_timeout_ms
            .map(|v| pos_secs("ack-timeout-ms", v / 1000.0))
            .transpose()?;
        cfg.max_backoff_us = self
            .max_backoff_ms
            .map(|v| pos_secs("max-backoff-ms", v / 1000.0))
            .transpose()?;
        cfg.start_spread_us = self
            .start_spread_ms
            .map(|v| nonneg_secs("start-spread-ms", v / 1000.0))
            .transpose()?;
        cfg.phase_spread_us = self
            .phase_spread_ms
            .map(|v| nonneg_secs("phase-spread-ms", v / 1000.0))
            .transpose()?;
        cfg.retry_holdoff_us = self
            .retry_holdoff_ms
            .map(|v| nonneg_secs("retry-holdoff-ms", v / 1000.0))
            .transpose()?;
        cfg.seed_resend_us = pos_secs("seed-resend", self.seed_resend)?;
        cfg.ack_air = self.acks.into();
        cfg.ack_delay_us = nonneg_secs("ack-delay-ms", self.ack_delay_ms / 1000.0)?;
        cfg.ack_delay_random = self.ack_delay_random;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The study's configuration: the seed in force, figures into `--plot`
    /// (default `docs/figures`).
    pub fn to_study_config(&self) -> StudyConfig {
        StudyConfig {
            seed: self.seed(),
            figures_dir: self
                .plot
                .clone()
                .unwrap_or_else(|| PathBuf::from("docs/figures")),
        }
    }
}

/// The library's refusal of a setting, for a flag it never sees.
fn config_error(field: &'static str, reason: String) -> SimError {
    SimError::Config { field, reason }
}

/// Parses `GOOD_S:BAD_S[:P_BAD[:P_GOOD]]`.
fn parse_burst(s: &str) -> Result<GilbertElliott, SimError> {
    let bad = || {
        config_error(
            "burst-loss",
            format!("expected GOOD_S:BAD_S[:P_BAD[:P_GOOD]], got {s:?}"),
        )
    };
    let parts: Vec<f64> = s
        .split(':')
        .map(|p| p.trim().parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if !(2..=4).contains(&parts.len()) || parts.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(bad());
    }
    Ok(GilbertElliott {
        mean_good_us: secs_to_us(parts[0]),
        mean_bad_us: secs_to_us(parts[1]),
        loss_bad: parts.get(2).copied().unwrap_or(1.0),
        loss_good: parts.get(3).copied().unwrap_or(0.0),
    })
}

/// Runs `gridpow sim` with parsed flags.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    run_sim(args)?;
    Ok(ExitCode::SUCCESS)
}

fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    eprintln!(
        "gridpow sim: seed {} (replay with --seed or {SEED_ENV})",
        args.seed()
    );
    if args.bench {
        return bench(&args);
    }
    if let Some(part) = args.study {
        study::run_part(part.into(), &args.to_study_config(), |md| println!("{md}"))?;
        return Ok(());
    }
    if args.sweep.is_empty() {
        let cfg = args.to_config(args.meters)?;
        let report = run_with_progress(cfg)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
        if let Some(dir) = &args.plot {
            plot::sweep_figures(dir, "sim", std::slice::from_ref(&report))?;
        }
        return Ok(());
    }
    let mut reports = Vec::with_capacity(args.sweep.len());
    if !args.json {
        println!("{}", SWEEP_HEADER);
    }
    for &n in &args.sweep {
        let report = run_with_progress(args.to_config(n)?)?;
        if !args.json {
            println!("{}", sweep_row(&report));
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::json!({ "runs": reports }));
    }
    if let Some(dir) = &args.plot {
        let paths = plot::sweep_figures(dir, "sim", &reports)?;
        for p in paths {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

const SWEEP_HEADER: &str = "meters  delivery   in-budget  lost      p50_ms    p99_ms     retx/rdg  util    G       S       air/rdg_ms";

fn sweep_row(r: &Report) -> String {
    format!(
        "{:<7} {:<10.6} {:<10.6} {:<9.6} {:<9.2} {:<10.2} {:<9.3} {:<7.3} {:<7.3} {:<7.3} {:.3}",
        r.meters,
        r.delivery_ratio,
        r.delivery_ratio_in_budget,
        r.lost_ratio,
        r.latency_p50_ms,
        r.latency_p99_ms,
        r.retransmissions_per_reading,
        r.channel_utilisation,
        r.offered_load,
        r.throughput,
        r.airtime_per_reading_ms
    )
}

/// The human-readable result table.
fn print_table(r: &Report) {
    let mut out = std::io::stdout().lock();
    let pct = |x: f64| format!("{:.4} %", 100.0 * x);
    let lines: Vec<(&str, String)> = vec![
        ("seed", r.seed.to_string()),
        (
            "network",
            format!(
                "{} meters, {} relays, {} channels, {:?} MAC, {:?} scheme, hidden {:.0} %, \
                 overlap {:.0} % ({} edge meters)",
                r.meters,
                r.relays,
                r.channels,
                r.mac,
                r.scheme,
                100.0 * r.hidden_fraction,
                100.0 * r.overlap,
                r.overlap_meters
            ),
        ),
        (
            "interval / duration",
            format!(
                "{} s / {} s (simulated {:.1} s)",
                r.interval_s, r.duration_s, r.simulated_s
            ),
        ),
        ("readings made", r.readings_made.to_string()),
        (
            "delivered (exactly once)",
            format!("{} ({})", r.readings_delivered, pct(r.delivery_ratio)),
        ),
        (
            "delivered within retry budget",
            format!(
                "{} ({})",
                r.readings_delivered_in_budget,
                pct(r.delivery_ratio_in_budget)
            ),
        ),
        (
            "confirmed by ACK",
            format!("{} ({})", r.readings_acked, pct(r.acked_ratio)),
        ),
        (
            "lost for good",
            format!("{} ({})", r.readings_lost, pct(r.lost_ratio)),
        ),
        ("still queued at end", r.readings_pending.to_string()),
        ("backlog drops", r.backlog_drops.to_string()),
        ("duplicates delivered", r.duplicates_delivered.to_string()),
        (
            "also delivered by a second relay",
            r.readings_heard_by_both.to_string(),
        ),
        (
            "uplinks on air",
            format!(
                "{} ({} frames built, {} abandoned)",
                r.uplinks_simulated, r.frames_built, r.frames_abandoned
            ),
        ),
        (
            "uplinks received / collided / faded",
            format!(
                "{} / {} / {}",
                r.uplinks_received, r.uplinks_collided, r.uplinks_faded
            ),
        ),
        (
            "uplinks overheard by a second relay",
            r.uplinks_overheard.to_string(),
        ),
        (
            "retransmissions per reading",
            format!(
                "{:.4} sender, {:.4} MAC",
                r.retransmissions_per_reading, r.mac_retransmissions_per_reading
            ),
        ),
        (
            "ACKs sent / accepted / ignored",
            format!("{} / {} / {}", r.acks_sent, r.acks_accepted, r.acks_ignored),
        ),
        (
            "offered load G",
            format!("{:.4} frames per frame time", r.offered_load),
        ),
        (
            "throughput S",
            format!("{:.4} frames per frame time", r.throughput),
        ),
        ("channel utilisation", pct(r.channel_utilisation)),
        (
            "airtime per reading",
            format!("{:.3} ms", r.airtime_per_reading_ms),
        ),
        (
            "goodput",
            format!(
                "{:.1} readings/s, {:.0} bit/s",
                r.goodput_readings_per_s, r.goodput_bps
            ),
        ),
        (
            "latency p50 / p90 / p99 / p99.9 / max",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms",
                r.latency_p50_ms,
                r.latency_p90_ms,
                r.latency_p99_ms,
                r.latency_p999_ms,
                r.latency_max_ms
            ),
        ),
        (
            "radio on per meter",
            format!(
                "{:.3} s per hour (duty cycle {})",
                r.radio_on_s_per_meter_hour,
                pct(r.radio_duty_cycle)
            ),
        ),
        (
            "events / wall time",
            format!(
                "{} in {:.2} s ({:.0} uplinks/s)",
                r.events, r.wall_s, r.uplinks_per_wall_s
            ),
        ),
        ("trace hash", r.trace_hash.clone()),
    ];
    for (k, v) in lines {
        // A closed stdout (e.g. piped into head) is not worth an error here.
        let _ = writeln!(out, "{k:<38} {v}");
    }
}

fn bench(args: &SimArgs) -> anyhow::Result<()> {
    let mut cfg = SimConfig::benchmark(args.seed(), 3600.0);
    cfg.threads = args.threads();
    let run = gridpow_bench::sim::run_timed(cfg).context("the benchmark")?;
    let (report, setup_s, run_cpu_s) = (run.report, run.setup_s, run.run_cpu_s);
    let peak = peak_memory_kib();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("setup_s".into(), setup_s.into());
            obj.insert("peak_memory_kib".into(), peak.into());
            obj.insert("run_cpu_s".into(), run_cpu_s.into());
            let per_cpu_s = run_cpu_s.map(|c| report.uplinks_simulated as f64 / c.max(1e-9));
            obj.insert("uplinks_per_cpu_s".into(), per_cpu_s.into());
        }
        println!("{v}");
    } else {
        print_table(&report);
        println!("{:<38} {setup_s:.2} s", "setup (keys, senders, relays)");
        println!("{:<38} {}", "threads", args.threads());
        if let Some(c) = run_cpu_s {
            let rate = report.uplinks_simulated as f64 / c.max(1e-9);
            println!(
                "{:<38} {c:.2} s ({rate:.0} uplinks per CPU second)",
                "run CPU time (user + system)"
            );
        }
        match peak {
            Some(kib) => println!(
                "{:<38} {:.1} MiB",
                "peak memory (VmHWM)",
                kib as f64 / 1024.0
            ),
            None => println!("{:<38} unknown", "peak memory (VmHWM)"),
        }
    }
    Ok(())
}
