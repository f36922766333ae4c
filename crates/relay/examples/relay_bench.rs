//! Measures what the relay's design rests on, on this machine:
//! the PoW rate (tries/s, 1 and all threads) and the journal's fsync rate
//! with one record per fsync and with group commit.
//!
//! `cargo run --release -p gridpow-relay --example relay_bench [DIR]`
//! (DIR: where to put the journal; default a temporary directory under /tmp).

use std::time::{Duration, Instant};

use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::Reading;
use gridpow_relay::journal::{FrameRecord, Journal};
use gridpow_relay::pow;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let b = pow::benchmark(threads, Duration::from_secs(2));
        println!(
            "pow: {threads} thread(s): {:.2} M tries/s; expected block time d=12 {:?}, d=16 {:?}, d=20 {:?}, d=24 {:?}",
            b.tries_per_sec / 1e6,
            b.expected_block_time(12),
            b.expected_block_time(16),
            b.expected_block_time(20),
            b.expected_block_time(24)
        );
    }

    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("gridpow-journal-bench-{}", std::process::id()));
    let keys = MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&[1; 48]));
    let mut frame = [0u8; 250];
    let h = UplinkHeader {
        key_id: 1,
        meter_id: 1,
        boot_epoch: 1,
        counter: 0,
    };
    let n = seal(
        &RustCrypto,
        &keys,
        &h,
        0,
        &[Reading::default(); 6],
        &mut frame,
    )?;
    let (mut j, _) = Journal::open(&dir, 64 << 20, |_| {})?;
    for batch in [1usize, 16, 256] {
        let commits = if batch == 1 { 300 } else { 100 };
        let start = Instant::now();
        for _ in 0..commits {
            for _ in 0..batch {
                let rec = FrameRecord {
                    jsn: j.next_jsn(),
                    time_ms: 0,
                    src: [0; 6],
                    first_seq: 0,
                    first_new: 0,
                    frame: frame[..n].to_vec(),
                };
                j.append(&rec)?;
            }
            j.commit()?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "journal: {batch:>3} frame(s) per fsync: {:.0} fsyncs/s, {:.0} frames/s, {:.2} ms per commit",
            commits as f64 / secs,
            (commits * batch) as f64 / secs,
            secs * 1000.0 / commits as f64
        );
    }
    drop(j);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
