//! The scalability study behind `docs/scalability.md`: every number and figure
//! there comes from `gridpow sim --study PART --plot docs/figures`, which
//! calls [`run_part`] with a [`StudyConfig`].
//!
//! - `capacity`: the largest number of meters one relay serves with ≥ 99.9 %
//!   of readings delivered within the sender's retry budget, at report
//!   intervals of 1, 10 and 60 s, CSMA, with 0 % and 10 % hidden pairs.
//! - `scheme`: the seed prototype's fixed resend against gridpow's backoff
//!   with jitter: delivery, latency, airtime and radio-on time side by side.
//! - `district`: relays and channels for 100,000 meters.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{MacModel, Scheme, SimConfig};
use crate::engine::Progress;
use crate::plot::{draw, linear_span, log_span, Chart, Scale, Series};
use crate::run::run_until;
use crate::stats::Report;
use crate::SimError;

/// What every part of the study runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StudyConfig {
    /// Master seed of every run.
    pub seed: u64,
    /// Where the figures (SVG) are written.
    pub figures_dir: PathBuf,
}

/// A part of the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Meters per relay at 99.9 % delivery (intervals 1, 10, 60 s; 0 and 10 % hidden).
    Capacity,
    /// The seed's fixed resend against gridpow's backoff with jitter.
    Scheme,
    /// Relays and channels for a 100,000-meter district.
    District,
    /// All of the above.
    All,
}

/// Delivery within the retry budget that counts as serving the meters.
pub const TARGET: f64 = 0.999;
/// Report intervals studied, seconds.
pub const INTERVALS: [f64; 3] = [1.0, 10.0, 60.0];
/// Hidden-pair fractions studied.
pub const HIDDEN: [f64; 2] = [0.0, 0.1];
/// Meters per relay in the mass-boot runs.
pub const MASS_BOOT_METERS: [u32; 3] = [100, 300, 1000];

/// Simulated time for a run at `interval` seconds: enough readings per meter
/// to resolve 0.1 % (60 to 300 per meter).
pub fn duration_for(interval: f64) -> f64 {
    (interval * 100.0).clamp(300.0, 3600.0)
}

fn base(study: &StudyConfig, meters: u32, interval: f64, hidden: f64) -> SimConfig {
    let mut c = SimConfig::new(meters, interval, duration_for(interval));
    c.seed = study.seed;
    c.mac = MacModel::Csma;
    c.hidden_fraction = hidden;
    c
}

/// Stops a run once it has clearly collapsed: after two report intervals (at
/// least 30 s) less than 90 % of the readings made were delivered within the
/// budget, or at any time after 10 s the run needs over 200 events per reading
/// (a healthy cell needs about 9; a collapsed one thousands, since every
/// waiting station re-arms its backoff after every frame).
fn collapsed(interval_us: u64) -> impl FnMut(&Progress) -> bool {
    move |p| {
        let settled = p.now_us > (2 * interval_us).max(30_000_000);
        let ratio = p.readings_delivered_in_budget as f64 / p.readings_made.max(1) as f64;
        let thrashing = p.now_us > 10_000_000 && p.events > 200 * p.readings_made + 1_000_000;
        !(thrashing || (settled && p.readings_made > 1000 && ratio < 0.9))
    }
}

fn run_one(cfg: SimConfig) -> Result<Report, SimError> {
    let interval = cfg.interval_us;
    let r = run_until(cfg, collapsed(interval))?;
    eprintln!(
        "  {:?} {:?} meters {:>6} interval {:>4} s hidden {:>3.0} %: in budget {:.5}, p99 {:.1} ms, util {:.3}{}",
        r.scheme,
        r.mac,
        r.meters,
        r.interval_s,
        100.0 * r.hidden_fraction,
        r.delivery_ratio_in_budget,
        r.latency_p99_ms,
        r.channel_utilisation,
        if r.stopped_early { " (collapsed, stopped early)" } else { "" }
    );
    Ok(r)
}

/// Runs a part of the study, writes its figures into `study.figures_dir` and
/// hands each Markdown section to `emit` as soon as it is ready (progress
/// lines go to stderr).
pub fn run_part(
    part: Part,
    study: &StudyConfig,
    mut emit: impl FnMut(&str),
) -> Result<(), SimError> {
    let dir = &study.figures_dir;
    let mut caps = None;
    if matches!(part, Part::Capacity | Part::All | Part::District) {
        let c = capacity(study, dir, part != Part::District)?;
        if part != Part::District {
            emit(&c.markdown);
        }
        caps = Some(c);
    }
    if matches!(part, Part::Scheme | Part::All) {
        emit(&scheme(study, dir)?);
    }
    if let (true, Some(c)) = (matches!(part, Part::District | Part::All), caps) {
        emit(&district(study, &c)?);
    }
    Ok(())
}

/// Capacity found for one (interval, hidden) pair.
#[derive(Clone, Debug)]
pub struct CapacityPoint {
    /// Report interval, s.
    pub interval: f64,
    /// Hidden-pair fraction.
    pub hidden: f64,
    /// Largest meter count that met the target.
    pub meters: u32,
    /// The run at that count.
    pub at: Report,
    /// The smallest failing count found.
    pub fails_at: u32,
}

/// Results of the capacity part.
pub struct Capacity {
    /// One point per interval and hidden fraction.
    pub points: Vec<CapacityPoint>,
    /// The Markdown section.
    pub markdown: String,
}

impl Capacity {
    /// Capacity for an interval and hidden fraction, if studied.
    pub fn meters(&self, interval: f64, hidden: f64) -> Option<u32> {
        self.points
            .iter()
            .find(|p| p.interval == interval && p.hidden == hidden)
            .map(|p| p.meters)
    }
}

/// Brackets, then bisects to 2 %, the largest meter count that meets the target.
fn search(
    mut run_at: impl FnMut(u32) -> Result<Report, SimError>,
    start: u32,
) -> Result<(u32, Report, u32), SimError> {
    let ok = |r: &Report| r.delivery_ratio_in_budget >= TARGET;
    let mut lo: Option<(u32, Report)> = None;
    let mut hi: Option<u32> = None;
    let mut n = start.max(2);
    // Bracket in steps of 1.5: points far beyond capacity are slow to simulate.
    loop {
        let r = run_at(n)?;
        if ok(&r) {
            lo = Some((n, r));
            if hi.is_some() {
                break;
            }
            n = n.saturating_add(n / 2);
        } else {
            hi = Some(n);
            if lo.is_some() || n <= 2 {
                break;
            }
            n = n * 2 / 3;
        }
    }
    let (mut lo_n, mut lo_r) = match lo {
        Some(x) => x,
        None => {
            let r = run_at(1)?;
            (1, r)
        }
    };
    let mut hi_n = hi.unwrap_or(u32::MAX);
    while hi_n > lo_n + 1 && f64::from(hi_n) / f64::from(lo_n) > 1.02 {
        let mid = lo_n + (hi_n - lo_n) / 2;
        let r = run_at(mid)?;
        if ok(&r) {
            lo_n = mid;
            lo_r = r;
        } else {
            hi_n = mid;
        }
    }
    Ok((lo_n, lo_r, hi_n))
}

fn capacity(study: &StudyConfig, dir: &Path, figures: bool) -> Result<Capacity, SimError> {
    let mut points = Vec::new();
    let mut delivery = Vec::new();
    let mut latency = Vec::new();
    for &interval in &INTERVALS {
        for &hidden in &HIDDEN {
            eprintln!(
                "capacity: interval {interval} s, hidden {:.0} %",
                100.0 * hidden
            );
            // About 2.7 ms of air per reading (uplink, ACK, two MAC ACKs, DIFS
            // and backoffs) caps a channel near 370 readings/s: start below that.
            let start = (interval * 120.0) as u32;
            let (meters, at, fails_at) =
                search(|n| run_one(base(study, n, interval, hidden)), start)?;
            let label = format!("{interval} s, {:.0} % hidden", 100.0 * hidden);
            if figures {
                let mut curve = Vec::new();
                for f in [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25] {
                    let n = ((f64::from(meters) * f).round() as u32).max(1);
                    let r = if n == meters {
                        at.clone()
                    } else {
                        run_one(base(study, n, interval, hidden))?
                    };
                    curve.push((f64::from(n), r));
                }
                delivery.push(Series {
                    label: label.clone(),
                    points: curve
                        .iter()
                        .map(|(n, r)| (*n, r.delivery_ratio_in_budget))
                        .collect(),
                });
                latency.push(Series {
                    label,
                    points: curve.iter().map(|(n, r)| (*n, r.latency_p99_ms)).collect(),
                });
            }
            points.push(CapacityPoint {
                interval,
                hidden,
                meters,
                at,
                fails_at,
            });
        }
    }
    if figures {
        let xs = || delivery.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let x = log_span(xs());
        draw(
            &dir.join("sim-capacity-delivery.svg"),
            &Chart {
                title: "CSMA: readings delivered within the retry budget",
                x_label: "meters per relay",
                y_label: "fraction of readings",
                x,
                y: Scale::Linear(
                    delivery
                        .iter()
                        .flat_map(|s| s.points.iter().map(|p| p.1))
                        .fold(1.0f64, f64::min)
                        .max(0.0)
                        - 0.01,
                    1.002,
                ),
                series: delivery,
            },
        )?;
        draw(
            &dir.join("sim-capacity-latency.svg"),
            &Chart {
                title: "CSMA: 99th percentile latency, reading made to accepted",
                x_label: "meters per relay",
                y_label: "p99 latency, ms",
                x,
                y: log_span(latency.iter().flat_map(|s| s.points.iter().map(|p| p.1))),
                series: latency,
            },
        )?;
    }
    let mut md = String::new();
    let _ = writeln!(md, "| interval | hidden pairs | max meters per relay | first failing | delivered in budget | p99 latency | channel utilisation | airtime per reading |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &points {
        let _ = writeln!(
            md,
            "| {} s | {:.0} % | {} | {} | {:.4} % | {:.1} ms | {:.1} % | {:.2} ms |",
            p.interval,
            100.0 * p.hidden,
            p.meters,
            p.fails_at,
            100.0 * p.at.delivery_ratio_in_budget,
            p.at.latency_p99_ms,
            100.0 * p.at.channel_utilisation,
            p.at.airtime_per_reading_ms
        );
    }
    Ok(Capacity {
        points,
        markdown: md,
    })
}

fn scheme(study: &StudyConfig, dir: &Path) -> Result<String, SimError> {
    let interval = 10.0;
    let counts = [250u32, 500, 1000, 1500, 2000, 2500];
    let mut md = String::new();
    let mut delivery = Vec::new();
    let mut airtime = Vec::new();
    let mut rows = Vec::new();
    for &hidden in &HIDDEN {
        for scheme in [Scheme::Seed, Scheme::Gridpow] {
            eprintln!("scheme: {scheme:?}, hidden {:.0} %", 100.0 * hidden);
            let mut d = Vec::new();
            let mut a = Vec::new();
            for &n in &counts {
                let mut c = base(study, n, interval, hidden);
                c.duration_us = 600_000_000;
                c.scheme = scheme;
                let r = run_one(c)?;
                d.push((f64::from(n), r.delivery_ratio));
                a.push((f64::from(n), r.airtime_per_reading_ms));
                rows.push(r);
            }
            let label = format!("{scheme:?}, {:.0} % hidden", 100.0 * hidden).to_lowercase();
            delivery.push(Series {
                label: label.clone(),
                points: d,
            });
            airtime.push(Series { label, points: a });
        }
    }
    // A district powering up at once after an outage: every meter boots within
    // 200 ms and, with no interval jitter, stays in lock-step. Run to the end:
    // the question is whether the cell recovers.
    let mut restore = Vec::new();
    for &hidden in &HIDDEN {
        for n in MASS_BOOT_METERS {
            for scheme in [Scheme::Seed, Scheme::Gridpow] {
                let mut c = base(study, n, interval, hidden);
                c.duration_us = 600_000_000;
                c.scheme = scheme;
                c.boot_spread_us = Some(200_000);
                c.arrivals = crate::config::Arrivals::Periodic { jitter: 0.0 };
                restore.push(run_until(c, |_| true)?);
            }
        }
    }
    let x = log_span(counts.iter().map(|&n| f64::from(n)));
    draw(
        &dir.join("sim-scheme-delivery.svg"),
        &Chart {
            title: "Seed scheme against gridpow (CSMA, 10 s interval): readings delivered",
            x_label: "meters per relay",
            y_label: "fraction of readings delivered",
            x,
            y: linear_span(
                delivery.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
                false,
            ),
            series: delivery,
        },
    )?;
    draw(
        &dir.join("sim-scheme-airtime.svg"),
        &Chart {
            title: "Seed scheme against gridpow (CSMA, 10 s interval): airtime",
            x_label: "meters per relay",
            y_label: "airtime per reading (all frames), ms",
            x,
            y: linear_span(
                airtime.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
                true,
            ),
            series: airtime,
        },
    )?;
    let _ = writeln!(md, "| scheme | hidden | meters | delivered | lost for good | in budget | p99 latency | airtime per reading | retransmissions per reading | radio on per meter-hour |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |md: &mut String, r: &Report, note: &str| {
        let _ = writeln!(
            md,
            "| {:?}{note} | {:.0} % | {} | {:.3} % | {:.3} % | {:.3} % | {:.0} ms | {:.2} ms | {:.3} | {:.1} s |",
            r.scheme,
            100.0 * r.hidden_fraction,
            r.meters,
            100.0 * r.delivery_ratio,
            100.0 * r.lost_ratio,
            100.0 * r.delivery_ratio_in_budget,
            r.latency_p99_ms,
            r.airtime_per_reading_ms,
            r.retransmissions_per_reading,
            r.radio_on_s_per_meter_hour
        );
    };
    for r in &rows {
        row(
            &mut md,
            r,
            if r.stopped_early {
                " (collapsed: stopped early)"
            } else {
                ""
            },
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| scheme (mass boot) | hidden | meters | delivered | lost for good | in budget | p50 latency | p99 latency | airtime per reading | retransmissions per reading | radio on per meter-hour |");
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &restore {
        let _ = writeln!(
            md,
            "| {:?} | {:.0} % | {} | {:.3} % | {:.3} % | {:.3} % | {:.2} s | {:.2} s | {:.2} ms | {:.3} | {:.0} s |",
            r.scheme,
            100.0 * r.hidden_fraction,
            r.meters,
            100.0 * r.delivery_ratio,
            100.0 * r.lost_ratio,
            100.0 * r.delivery_ratio_in_budget,
            r.latency_p50_ms / 1000.0,
            r.latency_p99_ms / 1000.0,
            r.airtime_per_reading_ms,
            r.retransmissions_per_reading,
            r.radio_on_s_per_meter_hour
        );
    }
    Ok(md)
}

fn district(study: &StudyConfig, caps: &Capacity) -> Result<String, SimError> {
    let mut md = String::new();
    let total = 100_000u32;
    let _ = writeln!(
        md,
        "| interval | meters per relay (10 % hidden) | relays for 100,000 meters |"
    );
    let _ = writeln!(md, "|---:|---:|---:|");
    for &interval in &INTERVALS {
        if let Some(cap) = caps.meters(interval, 0.1) {
            let _ = writeln!(
                md,
                "| {interval} s | {cap} | {} |",
                total.div_ceil(cap.max(1))
            );
        }
    }
    // Co-located relays: on one channel they share its air; on three they do not.
    let interval = 10.0;
    let per_relay = caps.meters(interval, 0.1).unwrap_or(1000);
    let _ = writeln!(md);
    let _ = writeln!(md, "| layout (10 s interval, 10 % hidden) | meters | delivered in budget | channel utilisation |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for (label, relays, channels) in [
        ("1 relay", 1u32, 1u32),
        ("3 relays in one area, 1 channel", 3, 1),
        ("3 relays in one area, 3 channels", 3, 3),
    ] {
        eprintln!("district: {label}");
        let mut c = base(study, per_relay * relays, interval, 0.1);
        c.relays = relays;
        c.channels = channels;
        let r = run_one(c)?;
        let _ = writeln!(
            md,
            "| {label} | {} | {:.4} % | {:.1} % |",
            r.meters,
            100.0 * r.delivery_ratio_in_budget,
            100.0 * r.channel_utilisation
        );
    }
    // The whole district at 10 s, cells isolated by a 3-channel reuse pattern.
    let relays = total.div_ceil(per_relay.max(1));
    eprintln!("district: {total} meters on {relays} relays");
    let mut c = base(study, total, interval, 0.1);
    c.relays = relays;
    c.channels = 3;
    c.isolated_cells = true;
    c.duration_us = 600_000_000;
    let r = run_one(c)?;
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Whole district: {} meters, {} relays in isolated cells on 3 channels, 10 s interval, 10 % hidden: {:.4} % delivered within the retry budget, {:.4} % delivered, p99 latency {:.1} ms, {} uplinks simulated in {:.1} s.",
        r.meters,
        r.relays,
        100.0 * r.delivery_ratio_in_budget,
        100.0 * r.delivery_ratio,
        r.latency_p99_ms,
        r.uplinks_simulated,
        r.wall_s
    );
    Ok(md)
}
