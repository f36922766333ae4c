//! Ingest throughput of the grid server, three ways on the same blocks:
//!
//! 1. **raw**: the readings' rows inserted with the store's own statement into
//!    the same schema, one transaction per batch, nothing else
//!    (`SqliteStore::insert_readings_raw`);
//! 2. **store**: `Store::commit` of the verified blocks (de-duplication, chain,
//!    time index, meters, plausibility), as the writer thread runs it;
//! 3. **end to end**: a relay-side client publishes the signed blocks over
//!    MQTT 5 + TLS to a private Mosquitto (mutual TLS); the server verifies and
//!    stores them; timed until every reading is in the database.
//!
//! ```text
//! cargo run --release -p gridpow-bench --example ingest_rate -- [blocks] [frames_per_block] [meters] [readings_per_frame] [--db DB]
//! ```
//! `gridpow bench` runs parts 1–3 with one writer and one server; this
//! example adds the two-writer and two-server PostgreSQL variants.
//! Defaults: 200 blocks × 1000 frames × 6 readings = 1.2 M readings from 500 meters.
//! `INGEST_RATE_NO_E2E=1` skips the end-to-end part (for profiling the store).
//! `INGEST_RATE_EXPORT=1` turns the `[home_assistant]` export on (to the same
//! broker) for the end-to-end part: its cost on ingestion.
//!
//! `--db` picks the backend: `sqlite` (the default, files in a temporary
//! directory), `pg` (a private PostgreSQL started for the run, `fsync` on, see
//! `pg_harness`), or `postgres://user@host:port/db` (an existing server on
//! which the benchmark may create and drop databases named `gridpow_bench_*`).
//! On PostgreSQL every part runs in a fresh database with the full schema
//! (the same indexes) and reports, in the same run:
//!
//! 1. **raw COPY**: the readings' rows (ids and values exactly as the store
//!    writes them) by binary COPY, one transaction per batch, nothing else
//!    (`PgStore::copy_readings_raw`); with one connection and with two
//!    connections copying alternate batches concurrently;
//! 2. **store, 1 and 2 writers**: `Store::commit` of the verified blocks; with
//!    two writers the blocks are dealt alternately (as a shared subscription
//!    deals them), each writer commits its own batches concurrently, so every
//!    block arrives before its parent half the time;
//! 3. **end to end, 1 and 2 servers**: `Server::start` once or twice on the
//!    same database, sharing the subscription on a private Mosquitto (TLS).
//!
//! Measured on the 2-core development machine (release build, load ≈ 1):
//! raw 1.99 M readings/s; store 1.57 M/s (0.79 × raw, 0.80 × by CPU time);
//! end to end 1.32–1.35 M/s (0.66–0.68 × raw) with the writer thread busy
//! 92–94 % of the time: both cores are then full (writer, verifier, Mosquitto,
//! TLS on both sides, the publisher). With one reading per frame instead of
//! six, the stored frames outweigh the reading rows and the store falls to
//! ≈ 0.5 × raw: the ledger must keep every frame to re-verify it.
//!
//! PostgreSQL 15 (`--db pg`: private instance, `fsync` on, `max_wal_size` 4 GB,
//! other settings default),
//! same blocks, same machine shared with another CI job (load ≈ 2), two runs:
//!
//! | part | run 1 | run 2 |
//! |------|------:|------:|
//! | raw COPY, 1 connection | 667 k/s | 665 k/s |
//! | raw COPY, 2 connections | 824 k/s | 864 k/s |
//! | store, 1 writer | 504 k/s (0.76 × raw) | 484 k/s (0.73 × raw) |
//! | store, 2 writers | 412 k/s (0.62 ×) | 426 k/s (0.64 ×) |
//! | end to end, 1 server | 341 k/s (0.51 ×) | 432 k/s (0.65 ×) |
//! | end to end, 2 servers | 319 k/s (0.48 ×) | 310 k/s (0.47 ×) |
//!
//! Per transaction (≈ 48 k readings, 8 blocks, 500 meters) the readings' COPY
//! takes as long as the raw one (~60 ms); the rest is the blocks' raw bytes
//! (~5 ms for 1.9 MB), the runs (~7 ms for 4 000 rows), meter locks and
//! coverage (~5 ms), the closing statements (~3 ms). With one relay, two
//! writers queue on its lock (every block of a relay is decided in relay
//! order by whoever holds it), so a second server adds availability, not
//! database throughput; in end to end runs the writer thread is busy 94–98 %
//! of the time and both cores are full (PostgreSQL, Mosquitto, TLS, verify).
#![allow(clippy::unwrap_used)]

use gridpow_bench::ingest::{
    as_items, blocks_per_tx, end_to_end, raw_batches, run, timed, Backend, IngestOptions, Pg, Site,
};
use gridpow_store::{IngestStore, PgStore, QueryStore, StoreOptions};

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let db_arg = all
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| all.get(i + 1).cloned())
        .unwrap_or_else(|| "sqlite".into());
    let args: Vec<u64> = all.iter().filter_map(|a| a.parse().ok()).collect();
    let opts = IngestOptions {
        blocks: args.first().copied().unwrap_or(200) as usize,
        frames_per_block: args.get(1).copied().unwrap_or(1000) as usize,
        meters: args.get(2).copied().unwrap_or(500) as u32,
        per_frame: args.get(3).copied().unwrap_or(6).clamp(1, 6) as usize,
        backend: Backend::parse(&db_arg).unwrap(),
        end_to_end: std::env::var_os("INGEST_RATE_NO_E2E").is_none(),
        export: std::env::var_os("INGEST_RATE_EXPORT").is_some(),
    };
    let f = run(&opts, &mut |line| eprintln!("{line}")).unwrap();
    println!(
        "{} blocks × {} frames × {} readings = {} readings ({})",
        f.blocks, f.frames_per_block, f.readings_per_frame, f.readings, f.backend
    );
    println!(
        "verify (1 thread):   {:>9.0} readings/s",
        f.verify_readings_per_s
    );
    println!(
        "raw insert:          {:>9.0} readings/s",
        f.raw_readings_per_s
    );
    println!(
        "store commit:        {:>9.0} readings/s  ({:.2} × raw; {} × raw by CPU)",
        f.store_readings_per_s,
        f.store_over_raw,
        f.store_over_raw_by_cpu
            .map_or("?".into(), |c| format!("{c:.2}"))
    );
    match &f.end_to_end {
        Some(e) => {
            println!(
                "end to end (TLS):    {:>9.0} readings/s  ({:.2} × raw)",
                e.readings_per_s, e.over_raw
            );
            println!(
                "  writer busy {:.0} % of the time, verifier busy {:.0} %, {} transactions",
                100.0 * e.writer_busy,
                100.0 * e.verifier_busy,
                e.transactions
            );
            println!(
                "  transparency log: {:.1} % of the writer's commit time",
                100.0 * e.log_share_of_commit
            );
            if let Some([states, discovery, dropped]) = e.export {
                println!(
                    "  export: {states} states, {discovery} discovery documents published, {dropped} dropped"
                );
            }
        }
        None => println!(
            "end to end: skipped ({})",
            f.end_to_end_skipped.as_deref().unwrap_or("?")
        ),
    }
    if opts.backend != Backend::Sqlite {
        two_writers(&opts, f.raw_readings_per_s);
    }
}

/// PostgreSQL with two connections, two writers and two servers sharing the subscription.
fn two_writers(opts: &IngestOptions, raw1: f64) {
    let total = opts.total();
    let site = Site::new(opts.meters).unwrap();
    let payloads = site
        .chain(opts.blocks, opts.frames_per_block, opts.per_frame)
        .unwrap();
    let (verified, _) = site.verify(&payloads, total).unwrap();
    let per_tx = blocks_per_tx(opts.frames_per_block * opts.per_frame);
    let pg = Pg::for_backend(&opts.backend).unwrap().unwrap();
    let batches = raw_batches(&verified, per_tx);
    let url = pg.fresh("raw2").unwrap();
    let raw2 = rate(total, || {
        std::thread::scope(|s| {
            for w in 0..2 {
                let url = &url;
                let batches = &batches;
                s.spawn(move || {
                    let mut raw = PgStore::open(url, StoreOptions::default()).unwrap();
                    for b in batches.iter().skip(w).step_by(2) {
                        raw.copy_readings_raw(b).unwrap();
                    }
                });
            }
        })
    });
    println!("raw COPY, 2 conns:   {raw2:>9.0} readings/s");
    drop(batches);
    let items = as_items(verified);
    let url = pg.fresh("store2").unwrap();
    let s2 = rate(total, || {
        std::thread::scope(|s| {
            for w in 0..2 {
                let url = &url;
                let mine: Vec<_> = items.iter().skip(w).step_by(2).cloned().collect();
                s.spawn(move || {
                    let mut store = PgStore::open(url, StoreOptions::default()).unwrap();
                    for chunk in mine.chunks(per_tx) {
                        store.commit(chunk, gridpow_common::wall_ms()).unwrap();
                    }
                });
            }
        })
    });
    let t = PgStore::open_reader(&url).unwrap().totals().unwrap();
    assert_eq!((t.readings_stored, t.gaps_open, t.forks), (total, 0, 0));
    println!(
        "store, 2 writers:    {s2:>9.0} readings/s  ({:.2} × raw COPY 1 conn, {:.2} × 2 conns)",
        s2 / raw1,
        s2 / raw2
    );
    if !opts.end_to_end {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = pg.fresh("e2e2").unwrap();
    let e = rt
        .block_on(end_to_end(
            &site.keys, &url, 2, &payloads, total, raw1, false,
        ))
        .unwrap();
    println!(
        "end to end, 2 servers: {:>9.0} readings/s  ({:.2} × raw COPY)",
        e.readings_per_s, e.over_raw
    );
}

/// Readings per second of `f`, which stores `total` readings.
fn rate(total: u64, f: impl FnOnce()) -> f64 {
    timed(total, || {
        f();
        Ok(())
    })
    .unwrap()
    .0
}
