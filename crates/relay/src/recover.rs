//! Recovery at start: what the data directory says the relay was doing when
//! it stopped (see the crate docs' on-disk layout and write order).
//!
//! The chain head comes from the outbox (`chain.state` and the block files),
//! the ingress state from `ingress.snap` plus the journal replayed after it,
//! and the frames to seal again are the committed ones after the head's
//! `sealed_jsn`. Nothing here spawns a thread: [`crate::Relay::start`] hands
//! the result to the threads.

use std::path::PathBuf;

use gridpow_common::datadir::DataLock;
use gridpow_proto::lifecycle::{BlockLifecycle, ChainTip, LifecycleConfig, OutboxEntry};

use crate::config::RelayConfig;
use crate::fsutil;
use crate::journal::{FrameRecord, Journal};
use crate::outbox::Outbox;
use crate::snapshot::IngressSnapshot;
use crate::table::HashMeterTable;
use crate::threads::Lifecycle;
use crate::RelayError;

/// Sealed blocks the relay can hold awaiting receipts before it stops
/// sealing (frames then wait in the journal); more when the outbox on disk
/// already holds more.
const OUTBOX_SLOTS: usize = 1 << 16;

/// The data directory, read back and checked.
pub(crate) struct Recovered {
    /// Held until the relay's threads end: one relay process per data directory.
    pub lock: DataLock,
    /// Unconfirmed blocks and the chain head.
    pub outbox: Outbox,
    /// Open for appending after its last committed record.
    pub journal: Journal,
    /// Replay windows and delivered marks as of the journal's last record.
    pub state: IngressSnapshot,
    /// Where `state` is saved before the journal is compacted.
    pub snapshot_path: PathBuf,
    /// Committed frames with new readings that no sealed block holds yet.
    pub reseal: Vec<FrameRecord>,
    /// The jsn of the last committed journal record (0 when empty).
    pub last_jsn: u64,
    /// Journal records replayed.
    pub replayed: u64,
}

/// Locks and reads the data directory, replays the journal into `table`'s
/// replay state, and checks that the journal reaches as far as the snapshot
/// and the sealed blocks do.
pub(crate) fn recover(
    cfg: &RelayConfig,
    table: &mut HashMeterTable,
) -> Result<Recovered, RelayError> {
    // Before anything in the data directory is read: a second relay on the
    // same journal would corrupt it.
    let lock = DataLock::dir(&cfg.data_dir)?;
    fsutil::create_dir(&cfg.data_dir)?;
    let outbox = Outbox::open(&cfg.data_dir)?;
    let sealed_jsn = outbox.head().sealed_jsn;
    let snapshot_path = cfg.data_dir.join("state").join("ingress.snap");
    let mut state = IngressSnapshot::load(&snapshot_path)?.unwrap_or_default();
    let mut reseal = Vec::new();
    let journal_dir = cfg.data_dir.join("journal");
    let (journal, replay) = Journal::open(&journal_dir, cfg.journal.segment_bytes, |r| {
        if r.jsn > sealed_jsn && r.new_readings() > 0 {
            reseal.push(r.clone());
        }
        state.apply(&r);
    })?;
    let last_jsn = journal.next_jsn() - 1;
    if state.jsn > last_jsn || sealed_jsn > last_jsn {
        return Err(RelayError::Corrupt {
            path: journal_dir,
            message: format!(
                "journal ends at jsn {last_jsn} but the snapshot reaches {} and sealed blocks {sealed_jsn}: journal files are missing",
                state.jsn
            ),
        });
    }
    table.restore(&state);
    tracing::info!(
        relay = cfg.relay_id,
        meters = table.len(),
        replayed = replay.records,
        truncated = replay.truncated_bytes,
        next_height = outbox.head().next_height,
        unconfirmed = outbox.len(),
        reseal = reseal.len(),
        "relay recovered"
    );
    Ok(Recovered {
        lock,
        outbox,
        journal,
        state,
        snapshot_path,
        reseal,
        last_jsn,
        replayed: replay.records,
    })
}

/// The core's block lifecycle for this relay, continuing the chain of `outbox`
/// with its unconfirmed blocks restored.
pub(crate) fn lifecycle(cfg: &RelayConfig, outbox: &Outbox) -> Result<Lifecycle, RelayError> {
    let head = outbox.head();
    let block_bytes = gridpow_proto::wire::block::block_len(
        cfg.block.max_frames,
        cfg.block.max_frames * gridpow_proto::wire::uplink::MAX_LEN,
    );
    let slots = OUTBOX_SLOTS.max(outbox.len() + 4096);
    let core = |e: gridpow_proto::Error| RelayError::Corrupt {
        path: cfg.data_dir.join("outbox"),
        message: format!("block lifecycle: {e}"),
    };
    let mut lc = BlockLifecycle::new(
        lifecycle_config(cfg),
        ChainTip {
            next_height: head.next_height,
            prev_hash: head.head_hash,
        },
        vec![0; block_bytes],
        vec![0; block_bytes],
        vec![OutboxEntry::FREE; slots],
    )
    .map_err(core)?;
    for e in outbox.entries() {
        lc.restore(e.height, e.hash, e.len, (e.first_jsn, e.last_jsn))
            .map_err(core)?;
    }
    Ok(lc)
}

/// The lifecycle's rules as this relay's configuration sets them.
fn lifecycle_config(cfg: &RelayConfig) -> LifecycleConfig {
    use gridpow_proto::Duration;
    LifecycleConfig {
        relay_id: cfg.relay_id,
        difficulty: cfg.difficulty,
        max_frames: cfg.block.max_frames as u32,
        max_age: Duration::from_millis(cfg.block.max_age_ms),
        republish_after: Duration::from_secs(cfg.mqtt.republish_after_s),
        quarantine_retry: Duration::from_secs(cfg.mqtt.quarantine_retry_s),
        max_inflight: cfg.mqtt.max_inflight_blocks,
    }
}
