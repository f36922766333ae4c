//! Block verification on one core: readings per second for the block shapes
//! a relay seals, beside the rates of the operations a block costs (one
//! Ed25519 verification, a leaf hash and two AES-CCM opens per frame).

use std::hint::black_box;
use std::time::Duration;

use gridpow_proto::block::{verify_block, VerifyPolicy};
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use serde::Serialize;

use crate::fixtures::{test_relay_key, BlockShape, ChainBuilder, MeterRing};
use crate::pow::rate;
use crate::BenchError;

/// One block shape's rate.
#[derive(Clone, Debug, Serialize)]
pub struct ShapeRate {
    /// Readings per block.
    pub readings_per_block: usize,
    /// Readings per frame.
    pub readings_per_frame: usize,
    /// Blocks fully verified per second on one core.
    pub blocks_per_s: f64,
    /// The same in readings (goal ≥ 2 M/s for 64-reading blocks with 6
    /// readings per frame, ≥ 1.5 M/s with 1).
    pub readings_per_s: f64,
}

/// Verification figures.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyFigures {
    /// Each shape, in the order measured.
    pub shapes: Vec<ShapeRate>,
    /// Baseline: strict Ed25519 verifications per second (one per block).
    pub ed25519_verify_per_s: f64,
    /// Baseline: AES-128-CCM opens of a one-reading body per second (two per frame).
    pub ccm_open_per_s: f64,
    /// Baseline: Merkle leaf hashes of a one-reading frame per second (one per frame).
    pub leaf_hash_per_s: f64,
    /// Signatures per second verified by ed25519-dalek's batch equation, 64 at a time.
    pub ed25519_batch64_per_s: f64,
    /// Prime-order subgroup checks of a signature's R per second: what a
    /// batch path must add per signature to keep the strict verdicts
    /// (docs/performance.md, "Why not batch verification").
    pub r_subgroup_check_per_s: f64,
}

/// The shapes measured: 64 and 256 readings per block, 1 and 6 per frame.
pub const SHAPES: [(usize, usize); 4] = [(64, 1), (64, 6), (256, 1), (256, 6)];

/// Measures each shape for about `budget` and each baseline for half of it.
pub fn measure(budget: Duration) -> Result<VerifyFigures, BenchError> {
    let ring = MeterRing::test(256);
    let vk = test_relay_key().verifying_key();
    let policy = VerifyPolicy {
        relay_id: 1,
        min_difficulty: 12,
    };
    let mut shapes = Vec::new();
    for (readings, per_frame) in SHAPES {
        let mut chain = ChainBuilder::new(&ring, 1, test_relay_key(), 1_767_225_600_000);
        let block = chain.next_block(BlockShape {
            readings,
            per_frame,
            difficulty: 12,
        })?;
        // The fixture must be a valid block: a failing verification would be fast and wrong.
        verify_block(&RustCrypto, &block, &vk, &policy, &ring, |_| Ok(()))?;
        let blocks_per_s = rate(budget, 10, || {
            let ok = verify_block(&RustCrypto, black_box(&block), &vk, &policy, &ring, |_| {
                Ok(())
            })
            .is_ok();
            black_box(ok);
        });
        shapes.push(ShapeRate {
            readings_per_block: readings,
            readings_per_frame: per_frame,
            blocks_per_s,
            readings_per_s: blocks_per_s * readings as f64,
        });
    }
    let msg = [7u8; 48];
    let sig = ed25519_dalek::Signer::sign(&test_relay_key(), &msg);
    let ed25519_verify_per_s = rate(budget / 2, 100, || {
        black_box(vk.verify_strict(black_box(&msg), &sig).is_ok());
    });
    let frame = [0x11u8; 84];
    let leaf_hash_per_s = rate(budget / 2, 1000, || {
        black_box(gridpow_proto::merkle::leaf_hash(
            &RustCrypto,
            black_box(&frame),
        ));
    });
    let keys = &ring.0[0];
    let mut body = [0u8; 32];
    let tag = RustCrypto.aead_seal(&keys.e2e, &[1; 13], &[2; 20], &mut body);
    let ccm_open_per_s = rate(budget / 2, 1000, || {
        let mut b = body;
        black_box(RustCrypto.aead_open(&keys.e2e, &[1; 13], &[2; 20], &mut b, &tag));
    });
    let (ed25519_batch64_per_s, r_subgroup_check_per_s) = batch_costs(budget / 2);
    Ok(VerifyFigures {
        shapes,
        ed25519_verify_per_s,
        ccm_open_per_s,
        leaf_hash_per_s,
        ed25519_batch64_per_s,
        r_subgroup_check_per_s,
    })
}

/// Batch verification of 64 signatures, per signature, and the R subgroup check.
fn batch_costs(budget: Duration) -> (f64, f64) {
    let key = test_relay_key();
    let messages: Vec<[u8; 48]> = (0..64u8).map(|i| [i; 48]).collect();
    let sigs: Vec<ed25519_dalek::Signature> = messages
        .iter()
        .map(|m| ed25519_dalek::Signer::sign(&key, m))
        .collect();
    let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
    let keys = vec![key.verifying_key(); 64];
    let batch = 64.0
        * rate(budget, 1, || {
            black_box(ed25519_dalek::verify_batch(black_box(&refs), &sigs, &keys).is_ok());
        });
    let r = curve25519_dalek::edwards::CompressedEdwardsY(sigs[0].r_bytes().to_owned())
        .decompress()
        .unwrap_or_default();
    // Variable time (R is public): [ℓ]R = [ℓ − 1]R + R, the identity iff R has no torsion part.
    let minus_one = -curve25519_dalek::Scalar::ONE;
    let subgroup = rate(budget, 10, || {
        let r = black_box(r);
        let l_r = curve25519_dalek::EdwardsPoint::vartime_double_scalar_mul_basepoint(
            &minus_one,
            &r,
            &curve25519_dalek::Scalar::ZERO,
        ) + r;
        black_box(curve25519_dalek::traits::IsIdentity::is_identity(&l_r));
    });
    debug_assert!(r.is_torsion_free());
    (batch, subgroup)
}
