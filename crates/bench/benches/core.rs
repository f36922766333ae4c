//! Criterion benchmarks of the protocol core: SHA-256 compression (baseline),
//! PoW tries, sealing, ingress and full block verification.
//!
//! `cargo bench -p gridpow-bench --bench core` (criterion, for development);
//! the ratios against their baselines are `gridpow bench`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gridpow_proto::block::{verify_block, VerifyPolicy};
use gridpow_proto::crypto::{derive_meter_secret, MeterKeys, RustCrypto};
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::uplink::{self, UplinkHeader};
use gridpow_proto::wire::Reading;
use std::hint::black_box;

use gridpow_bench::fixtures::{
    test_relay_key, unsolvable_header, BlockShape, ChainBuilder, MeterRing, TEST_SITE,
};

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Elements(1));
    let block = [0x5au8; 64];
    g.bench_function("compress256", |b| {
        let mut state = [0u32; 8];
        b.iter(|| {
            sha2::block_api::compress256(
                black_box(&mut state),
                core::slice::from_ref(black_box(&block)),
            )
        })
    });
    let header = unsolvable_header();
    g.bench_function("pow_try", |b| {
        let mut s = PowSolver::new(&RustCrypto, &header, 0, 1);
        b.iter(|| black_box(s.solve_for(&RustCrypto, 1)))
    });
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let keys = MeterKeys::new(
        &RustCrypto,
        1,
        &derive_meter_secret(&RustCrypto, &TEST_SITE, 1, 1),
    );
    let mut g = c.benchmark_group("uplink");
    for n in [1usize, 6] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("seal_{n}_readings"), |b| {
            let mut out = [0u8; 250];
            let mut counter = 0u32;
            b.iter(|| {
                counter += 1;
                let h = UplinkHeader {
                    key_id: 1,
                    meter_id: 1,
                    boot_epoch: 1,
                    counter,
                };
                uplink::seal(
                    &RustCrypto,
                    &keys,
                    &h,
                    0,
                    &[Reading::default(); 6][..n],
                    &mut out,
                )
                .expect("seal")
            })
        });
    }
    g.finish();
}

fn verification(c: &mut Criterion) {
    let ring = MeterRing::test(64);
    let vk = test_relay_key().verifying_key();
    let policy = VerifyPolicy {
        relay_id: 1,
        min_difficulty: 12,
    };
    let mut g = c.benchmark_group("verify_block");
    for (readings, per_frame) in [(64usize, 1usize), (64, 6), (256, 1), (256, 6)] {
        let block = ChainBuilder::new(&ring, 1, test_relay_key(), 1_767_225_600_000)
            .next_block(BlockShape {
                readings,
                per_frame,
                difficulty: 12,
            })
            .expect("block");
        g.throughput(Throughput::Elements(readings as u64));
        g.bench_function(format!("{readings}_readings_{per_frame}_per_frame"), |b| {
            b.iter_batched(
                || (),
                |_| {
                    verify_block(&RustCrypto, black_box(&block), &vk, &policy, &ring, |_| {
                        Ok(())
                    })
                    .expect("valid")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, sealing, verification);
criterion_main!(benches);
