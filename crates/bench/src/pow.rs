//! Proof-of-work tries per second against raw SHA-256 compressions per
//! second, on one core and on all of them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::pow::PowSolver;
use serde::Serialize;

/// One thread count's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PowFigures {
    /// Threads that ran at once.
    pub threads: usize,
    /// Baseline: `sha2::compress256` calls per second, all threads together.
    pub sha256_compress_per_s: f64,
    /// Nonces tried per second by the relay's solver, all threads together.
    pub pow_tries_per_s: f64,
    /// Tries ÷ compressions (goal ≥ 0.90: one try is one compression of the
    /// header's second block on a saved midstate, plus the final hash's).
    pub ratio: f64,
}

/// Calls per second of `f` run in batches for about `budget` on this thread.
pub fn rate(budget: Duration, batch: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < budget {
        for _ in 0..batch {
            f();
        }
        calls += batch;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn compress_rate(budget: Duration) -> f64 {
    let block = [0x5au8; 64];
    let mut state = [0u32; 8];
    rate(budget, 10_000, || {
        sha2::block_api::compress256(
            black_box(&mut state),
            core::slice::from_ref(black_box(&block)),
        )
    })
}

fn tries_rate(budget: Duration, thread: usize) -> f64 {
    let header = crate::fixtures::unsolvable_header();
    let mut solver = PowSolver::new(&RustCrypto, &header, thread as u64, 64);
    10_000.0
        * rate(budget, 1, || {
            black_box(solver.solve_for(&RustCrypto, 10_000));
        })
}

/// Sum over `threads` threads of `f(budget, thread)`.
fn on_threads(threads: usize, budget: Duration, f: fn(Duration, usize) -> f64) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || f(budget, t)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    })
}

/// Measures with `threads` threads, spending about `budget` in all; baseline
/// and candidate alternate twice to even out frequency scaling and load.
pub fn measure(threads: usize, budget: Duration) -> PowFigures {
    let quarter = budget / 4;
    let (mut sha, mut pow) = (0.0, 0.0);
    for _ in 0..2 {
        sha += on_threads(threads, quarter, |b, _| compress_rate(b));
        pow += on_threads(threads, quarter, tries_rate);
    }
    PowFigures {
        threads,
        sha256_compress_per_s: sha / 2.0,
        pow_tries_per_s: pow / 2.0,
        ratio: pow / sha.max(1e-9),
    }
}
