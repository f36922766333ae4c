//! `gridpow bench`: every ratio gridpow promises, each with its baseline
//! measured in the same run (`gridpow_bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gridpow_bench::{Backend, BenchOptions, Part, Report};

/// Flags of `gridpow bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Small sizes and short budgets: the whole run in under a minute.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object (the figures, their baselines and the goals) instead of a table.
    #[arg(long)]
    json: bool,
    /// Run only these parts (comma-separated): pow, verify, ingest, sim, journal.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The ingest part's database: sqlite, pg (a private PostgreSQL started
    /// for the run) or a postgres:// URL on which databases named
    /// gridpow_bench_* may be created and dropped.
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Where the journal part writes (its file system decides the fsync cost).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    journal_dir: PathBuf,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let parts = if args.only.is_empty() {
        Part::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|s| Part::parse(s.trim()))
            .collect::<Result<_, _>>()?
    };
    let opts = BenchOptions {
        quick: args.quick,
        parts,
        backend: Backend::parse(&args.db)?,
        journal_dir: args.journal_dir,
    };
    let started = std::time::Instant::now();
    let report = gridpow_bench::run(&opts, &mut |line| {
        eprintln!("[{:>5.1} s] {line}", started.elapsed().as_secs_f64());
    })
    .context("benchmark")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn mega(x: f64) -> String {
    format!("{:.2} M", x / 1e6)
}

fn print_table(r: &Report) {
    let row = |what: &str, value: String| println!("{what:<56} {value}");
    for p in &r.pow {
        row(
            &format!("pow, {} thread(s): tries/s ÷ compress256/s", p.threads),
            format!(
                "{:.3}  ({} ÷ {})",
                p.ratio,
                mega(p.pow_tries_per_s),
                mega(p.sha256_compress_per_s)
            ),
        );
    }
    if let Some(v) = &r.verify {
        for s in &v.shapes {
            row(
                &format!(
                    "verify {}-reading blocks, {} per frame (1 core)",
                    s.readings_per_block, s.readings_per_frame
                ),
                format!("{} readings/s", mega(s.readings_per_s)),
            );
        }
        row(
            "  baselines: Ed25519 verify/s, CCM open/s, leaf hash/s",
            format!(
                "{:.0} k, {}, {}",
                v.ed25519_verify_per_s / 1e3,
                mega(v.ccm_open_per_s),
                mega(v.leaf_hash_per_s)
            ),
        );
        row(
            "  Ed25519 batch of 64 per signature/s, R subgroup check/s",
            format!(
                "{:.0} k, {:.0} k",
                v.ed25519_batch64_per_s / 1e3,
                v.r_subgroup_check_per_s / 1e3
            ),
        );
    }
    if let Some(i) = &r.ingest {
        row(
            &format!(
                "ingest ({}, {} readings): raw insert (baseline)",
                i.backend, i.readings
            ),
            format!("{} readings/s", mega(i.raw_readings_per_s)),
        );
        row(
            "  store commit ÷ raw",
            format!(
                "{:.2}  ({} readings/s)",
                i.store_over_raw,
                mega(i.store_readings_per_s)
            ),
        );
        match (&i.end_to_end, &i.end_to_end_skipped) {
            (Some(e), _) => row(
                "  end to end (MQTT, mutual TLS) ÷ raw",
                format!(
                    "{:.2}  ({} readings/s; writer busy {:.0} %, verifier {:.0} %)",
                    e.over_raw,
                    mega(e.readings_per_s),
                    100.0 * e.writer_busy,
                    100.0 * e.verifier_busy
                ),
            ),
            (None, why) => row(
                "  end to end",
                format!("skipped: {}", why.as_deref().unwrap_or("?")),
            ),
        }
    }
    if let Some(s) = &r.sim {
        row(
            &format!(
                "sim, {} meters × {:.0} s: uplinks per wall s",
                s.meters, s.duration_s
            ),
            format!(
                "{}  ({} uplinks in {:.1} s)",
                mega(s.uplinks_per_wall_s),
                s.uplinks,
                s.wall_s
            ),
        );
        if let Some(c) = s.uplinks_per_cpu_s {
            row("  uplinks per CPU second", mega(c));
        }
    }
    if let Some(j) = &r.journal {
        for rate in &j.rates {
            row(
                &format!("journal, {} frame(s) per fsync", rate.frames_per_commit),
                format!(
                    "{:.0} frames/s ({:.0} fsyncs/s)",
                    rate.frames_per_s, rate.commits_per_s
                ),
            );
        }
    }
    println!();
    for g in &r.goals {
        println!(
            "{} {:<58} {:>12.3} (goal {} {})",
            if g.met { "met    " } else { "NOT MET" },
            g.name,
            g.measured,
            if g.at_least { "≥" } else { "≤" },
            g.goal
        );
    }
    println!("({} cores, {:.1} s)", r.cores, r.wall_s);
}
