//! Ratios measured in one process against a baseline in the same run
//! (no criterion statistics; a quick, stable figure for closing notes and CI logs):
//! - PoW tries per second ÷ raw `sha2::compress256` calls per second (target ≥ 0.9);
//! - full block verification in readings per second per core (target ≥ 2 M) for
//!   blocks of 64 and 256 readings, with 1 and 6 readings per frame.
//!
//! `cargo bench -p gridpow-proto --bench ratios` (prints one JSON object).

use std::hint::black_box;
use std::time::{Duration, Instant};

use gridpow_proto::block::{verify_block, VerifyPolicy};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::block::BlockHeaderRepr;

mod common;

/// Runs `f` in batches for about `budget`; returns calls per second.
fn rate(budget: Duration, batch: u64, mut f: impl FnMut()) -> f64 {
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

fn main() {
    let budget = Duration::from_millis(
        std::env::var("GRIDPOW_BENCH_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500),
    );
    let block = [0x5au8; 64];
    let mut state = [0u32; 8];
    let header = BlockHeaderRepr {
        difficulty: 255,
        relay_id: 1,
        height: 1,
        prev_hash: [1; 32],
        merkle_root: [2; 32],
        leaf_count: 1,
        time_ms: 0,
        nonce: 0,
    };
    let mut solver = PowSolver::new(&RustCrypto, &header, 0, 1);
    // Interleave baseline and candidate twice to even out frequency scaling.
    let mut sha = 0.0;
    let mut pow = 0.0;
    for _ in 0..2 {
        sha += rate(budget / 2, 10_000, || {
            sha2::block_api::compress256(
                black_box(&mut state),
                core::slice::from_ref(black_box(&block)),
            )
        });
        // One call tries 10 000 nonces (difficulty 255 never succeeds), as a solver thread does.
        pow += 10_000.0
            * rate(budget / 2, 1, || {
                black_box(solver.solve_for(&RustCrypto, 10_000));
            });
    }
    let (sha, pow) = (sha / 2.0, pow / 2.0);

    let ring = common::keyring(64);
    let vk = common::relay_key().verifying_key();
    let policy = VerifyPolicy {
        relay_id: 1,
        min_difficulty: 12,
    };
    let mut verify = serde_json::Map::new();
    for (readings, per_frame) in [(64usize, 1usize), (64, 6), (256, 1), (256, 6)] {
        let b = common::block(readings, per_frame, &ring);
        let blocks_per_s = rate(budget, 10, || {
            verify_block(&RustCrypto, black_box(&b), &vk, &policy, &ring, |_| Ok(()))
                .expect("valid");
        });
        verify.insert(
            format!("readings_per_s_{readings}r_{per_frame}pf"),
            serde_json::json!(blocks_per_s * readings as f64),
        );
    }
    // Where verification time goes, per block component.
    let msg = [7u8; 48];
    let sig = ed25519_dalek::Signer::sign(&common::relay_key(), &msg);
    let ed25519 = rate(budget / 2, 100, || {
        vk.verify_strict(black_box(&msg), &sig).expect("valid");
    });
    let frame = [0x11u8; 84];
    let leaf_hash = rate(budget / 2, 1000, || {
        black_box(gridpow_proto::merkle::leaf_hash(
            &RustCrypto,
            black_box(&frame),
        ));
    });
    let keys = &ring.0[0];
    let mut body = [0u8; 32];
    let mut tag = [0u8; 16];
    use gridpow_proto::crypto::CryptoProvider;
    tag.copy_from_slice(&RustCrypto.aead_seal(&keys.e2e, &[1; 13], &[2; 20], &mut body));
    let ccm_open = rate(budget / 2, 1000, || {
        let mut b = body;
        black_box(RustCrypto.aead_open(&keys.e2e, &[1; 13], &[2; 20], &mut b, &tag));
    });
    let out = serde_json::json!({
        "ed25519_verify_per_s": ed25519,
        "leaf_hash_one_reading_frame_per_s": leaf_hash,
        "ccm_open_1_reading_per_s": ccm_open,
        "sha256_compress_per_s": sha,
        "pow_tries_per_s": pow,
        "pow_over_sha256_ratio": pow / sha,
        "block_verification": verify,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
