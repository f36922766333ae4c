//! The relay journal's commit rate: frames made durable per second with one
//! frame per fsync and with group commit.

use std::path::Path;
use std::time::Instant;

use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::wire::uplink::{seal, UplinkHeader, MAX_LEN};
use gridpow_proto::wire::Reading;
use gridpow_relay::journal::{FrameRecord, Journal};
use serde::Serialize;

use crate::{setup, BenchError};

/// One group size's rate.
#[derive(Clone, Debug, Serialize)]
pub struct JournalRate {
    /// Frames per commit (fsync).
    pub frames_per_commit: usize,
    /// Commits per second.
    pub commits_per_s: f64,
    /// Frames made durable per second.
    pub frames_per_s: f64,
}

/// Journal figures.
#[derive(Clone, Debug, Serialize)]
pub struct JournalFigures {
    /// The directory measured (its file system decides the fsync cost).
    pub dir: String,
    /// Each group size.
    pub rates: Vec<JournalRate>,
}

/// Measures in a fresh directory under `base`, with `commits` commits per group size.
pub fn measure(base: &Path, commits: usize) -> Result<JournalFigures, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("gridpow-journal-bench-")
        .tempdir_in(base)
        .map_err(setup("a journal directory"))?;
    let keys = MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&[1; 48]));
    let mut frame = [0u8; MAX_LEN];
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
    let (mut journal, _) =
        Journal::open(dir.path(), 64 << 20, |_| {}).map_err(setup("the relay journal"))?;
    let mut rates = Vec::new();
    for batch in [1usize, 16, 256] {
        let start = Instant::now();
        for _ in 0..commits {
            for _ in 0..batch {
                let rec = FrameRecord {
                    jsn: journal.next_jsn(),
                    time_ms: 0,
                    src: [0; 6],
                    first_seq: 0,
                    first_new: 0,
                    frame: frame[..n].to_vec(),
                };
                journal.append(&rec).map_err(setup("a journal append"))?;
            }
            journal.commit().map_err(setup("a journal commit"))?;
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(JournalRate {
            frames_per_commit: batch,
            commits_per_s: commits as f64 / secs,
            frames_per_s: (commits * batch) as f64 / secs,
        });
    }
    Ok(JournalFigures {
        dir: base.display().to_string(),
        rates,
    })
}
