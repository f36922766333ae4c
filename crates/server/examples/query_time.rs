//! Latency of one meter's time-range query (`Store::meter_readings`, what
//! `/api/v1/meters/{id}/readings` runs) on an existing database, SQLite or
//! PostgreSQL:
//!
//! ```text
//! cargo run --release -p gridpow-server --example query_time -- DB_URL METER [LIMIT]
//! ```
//! It finds the meter's newest reading and times (median of 5, warm cache)
//! the last hour, the last day, the last week and the newest LIMIT readings
//! (default 10 000, the API's default) of all time.
//!
//! Measured on the 2-core development machine, PostgreSQL 15, a synthetic
//! ledger of 100 M readings (5 000 meters, 16 667 blocks of 6 000 readings,
//! each meter in every fifth block, 6 readings per run; readings 14 GB):
//! see the numbers in `src/store/postgres/mod.rs`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use gridpow_store::open_reader;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(meter)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: query_time DB_URL METER [LIMIT]");
        std::process::exit(2);
    };
    let limit: usize = args.get(2).and_then(|l| l.parse().ok()).unwrap_or(10_000);
    let mut store = open_reader(url).unwrap();
    let newest = store.meter_readings(meter, 0, u64::MAX, 1).unwrap();
    let Some(last) = newest.last() else {
        eprintln!("meter {meter} has no readings");
        std::process::exit(1);
    };
    let to = last.reading.timestamp_ms;
    let mut time = |name: &str, from: u64, limit: usize| {
        let mut runs = Vec::new();
        let mut n = 0;
        for _ in 0..5 {
            let started = Instant::now();
            n = store.meter_readings(meter, from, to, limit).unwrap().len();
            runs.push(started.elapsed().as_secs_f64() * 1e3);
        }
        runs.sort_by(f64::total_cmp);
        println!("{name:<22} {n:>7} readings  {:>8.1} ms", runs[2]);
    };
    time("last hour", to.saturating_sub(3_600_000), 1_000_000);
    time("last day", to.saturating_sub(86_400_000), 1_000_000);
    time("last week", to.saturating_sub(7 * 86_400_000), 1_000_000);
    time(&format!("newest {limit}"), 0, limit);
}
