//! # gridpow-relay: the Linux relay (cluster head)
//!
//! Meters send sealed frames over ESP-NOW (here: UDP air, an in-process
//! medium, or an ESP32 serial bridge). The relay authenticates and
//! de-duplicates them with the protocol core's `Ingress`, makes them durable
//! in a journal, ACKs them, seals them into proof-of-work blocks signed with
//! its Ed25519 key and chained to the previous block, and publishes the
//! blocks over MQTT/TLS until the grid server's signed commit receipt for
//! each arrives.
//!
//! ```text
//!   radio ─▶ [ingress thread] ──records──▶ [journal thread] ──fsync──▶ committed jsn
//!                 ▲   judge, ACK when            │ group commit            │
//!                 └────── committed ─────────────┘                         │
//!                                                │ committed frames         ▼
//!                                        [chain thread] ◀──receipts── [outbox task] ◀─▶ broker
//!                                          batch, PoW pool (N threads),      ▲
//!                                          sign, outbox file ──block─────────┘
//! ```
//!
//! ## Guarantees
//! - **ACK after fsync.** A frame is ACKed only after its journal record is
//!   fsynced; a DUPLICATE only after everything accepted before it (its
//!   original among them) is. Group commit: the journal thread gathers the
//!   records that arrive within `journal.max_commit_delay_ms` of the first one
//!   and fsyncs them together, while the ingress thread keeps judging frames.
//! - **Ingest never waits for PoW.** Blocks are solved by `pow.threads` worker
//!   threads splitting the nonce space (start `i`, stride `n`); frames keep
//!   flowing into the journal meanwhile and form the next block.
//! - **Nothing confirmed is lost, nothing unconfirmed is forgotten.** A block
//!   stays in the outbox (on disk) until a receipt with its relay id, height
//!   and hash, signed by the server's key, arrives. Unconfirmed blocks are
//!   published again after every reconnect and whenever a receipt is
//!   `mqtt.republish_after_s` late.
//! - **Crash recovery.** After kill -9 (or power loss) the relay replays the
//!   journal: replay windows and delivered marks come back exactly as they
//!   were for every committed frame (so a retransmission is recognised as a
//!   duplicate and no reading is delivered twice), committed frames not yet in
//!   a sealed block are sealed again, the chain resumes at the next height
//!   with the newest block's hash, and unconfirmed blocks are republished.
//!   The PoW of a block that was not written to the outbox is simply redone.
//!
//! ## On-disk layout (`data_dir`)
//! ```text
//! journal/<first jsn:020>.log   write-ahead journal segments (see [`journal`])
//!                               "GPJ1" ‖ version u32 ‖ first_jsn u64, then records
//!                               len u32 ‖ crc32 u32 ‖ jsn u64 ‖ time_ms u64 ‖ src MAC ‖
//!                               first_seq u32 ‖ first_new u8 ‖ frame
//! outbox/<height:020>.blk       sealed blocks awaiting receipts (see [`outbox`])
//!                               "GPO1" ‖ height ‖ first_jsn ‖ last_jsn ‖ hash ‖ len ‖ block ‖ crc32
//! state/chain.state             chain head when the newest block file is gone:
//!                               "GPC1" ‖ next_height ‖ head_hash ‖ sealed_jsn ‖ crc32
//! state/ingress.snap            replay windows and delivered marks as of a jsn
//!                               (see [`snapshot`]), written before compaction
//! ```
//! Write order (each step durable before the next):
//! 1. journal record fsynced → ACK sent;
//! 2. block file written (temp file, fsync, rename, directory fsync) → block published;
//! 3. receipt verified → `chain.state` rewritten if the newest block goes → block file deleted;
//! 4. `ingress.snap` written → journal segments whose records all lie below the
//!    first unconfirmed block's first jsn deleted (whole segments, never the active one).
//!
//! Recovery reads `chain.state` and the block files (head = newest of both),
//! loads `ingress.snap`, replays the journal after it (truncating a torn tail
//! of the newest segment, detected by length and CRC: it was never fsynced, so
//! never ACKed), and re-seals the records after the head's `sealed_jsn`.
//! Damage in fsynced data is reported ([`RelayError::Corrupt`]), never skipped.
//! One relay process per data directory.
//!
//! ## Difficulty
//! Each block costs 2^d SHA-256 compressions on average (the header's first
//! 64 bytes are a midstate, so one try is one compression). Measured here
//! with `cargo run --release -p gridpow-relay --example relay_bench` (2 cores,
//! [`pow::benchmark`]): **10.2 M tries/s on one thread, 14.7 M/s on two**.
//! An ESP32 relay uses its SHA peripheral: driven block by block through
//! registers (load 16 words, start, wait, read 8), expect roughly 0.5 M
//! compressions/s; the ESP32-S3/C3 can load a midstate, the original ESP32
//! cannot and pays two compressions per try; pure software SHA-256 on a
//! 240 MHz core manages about 0.08 M/s. The firmware issue should measure it.
//!
//! | d  | tries (mean) | here, 1 thread | here, 2 threads | ESP32 HW ~0.5 M/s | ESP32 SW ~0.08 M/s |
//! |---:|-------------:|---------------:|----------------:|------------------:|-------------------:|
//! | 12 | 4 k          | 0.4 ms         | 0.3 ms          | 8 ms              | 50 ms              |
//! | 16 | 65 k         | 6.4 ms         | 4.5 ms          | 130 ms            | 0.8 s              |
//! | 20 | 1 M          | 0.10 s         | 0.07 s          | 2.1 s             | 13 s               |
//! | 24 | 17 M         | 1.6 s          | 1.1 s           | 34 s              | 3.5 min            |
//!
//! The default d = 16 costs a firmware relay with the accelerator about a
//! tenth of its one-second block interval and this relay a few milliseconds
//! per block (debug builds are ~10x slower), while a forger must redo the
//! work for every altered block and every block after it. PoW is rate
//! limiting and tamper cost, never authentication (the Ed25519 signature and
//! the meters' own tags are). Solve times vary geometrically around the
//! mean: one block in 20 takes three times the mean.
//!
//! ## Journal throughput
//! Measured with the same example on this machine's disk: one fsync
//! (`fdatasync`) takes about 3.3 ms, so ~300 commits/s; with one frame per
//! fsync that is 300 frames/s, with group commit 256 frames per fsync
//! 78 000 frames/s (~470 000 readings/s). The journal thread therefore
//! never waits for a quota: while one fsync runs the next batch forms.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod chain;
pub mod config;
mod error;
mod fsutil;
mod ingest;
pub mod journal;
pub mod outbox;
pub mod pow;
mod publisher;
pub mod serial;
pub mod snapshot;
mod stats;
pub mod table;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use gridpow_keys::KeyDir;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::ingress::{Ingress, IngressConfig};
use gridpow_radio::{RadioPort, UdpAir};
use tokio::sync::{mpsc, oneshot};

pub use config::{
    BlockConfig, JournalConfig, MqttConfig, PowConfig, RadioConfig, RadioKind, RelayConfig,
};
pub use error::RelayError;
pub use publisher::{status_json, RadioCounts};
pub use serial::SerialRadio;
pub use stats::{RejectStats, RelayStats};

use chain::{ChainEvent, ChainLoop};
use ingest::{IngressLoop, JournalLoop, Signals};
use publisher::PubCmd;
use stats::Shared;

/// Opens the radio the configuration names (`udp` or `serial`). The demo
/// passes an in-process `Medium` port to [`Relay::start`] instead.
pub fn open_radio(cfg: &RelayConfig) -> Result<Box<dyn RadioPort>, RelayError> {
    match cfg.radio.kind {
        RadioKind::Udp => {
            let air = UdpAir::bind(cfg.radio.udp_listen, None, 0.0, u64::from(cfg.relay_id))?;
            Ok(Box::new(air))
        }
        RadioKind::Serial => Ok(Box::new(SerialRadio::open(
            &cfg.radio.serial_device,
            cfg.radio.serial_baud,
        )?)),
    }
}

/// The relay service.
pub struct Relay;

impl Relay {
    /// Recovers the data directory, then starts the ingress, journal and chain
    /// threads, the PoW workers, and the MQTT tasks on the current tokio
    /// runtime (multi-thread recommended). Returns once everything runs.
    pub async fn start(
        cfg: RelayConfig,
        radio: Box<dyn RadioPort>,
    ) -> Result<RelayHandle, RelayError> {
        cfg.validate(Path::new("relay configuration"))?;
        let keys = KeyDir::new(&cfg.keys_dir);
        keys.check_role(gridpow_keys::Role::Relay(cfg.relay_id))?;
        let signing_key = keys.relay_signing_key(cfg.relay_id)?;
        let server_key = keys.server_verifying_key()?;
        let mut table = table::HashMeterTable::from_key_dir(&keys)?;

        // Before anything in the data directory is read: a second relay on the
        // same journal would corrupt it. Held by the handle until its threads end.
        let lock = gridpow_common::datadir::DataLock::dir(&cfg.data_dir)?;
        fsutil::create_dir(&cfg.data_dir)?;
        let outbox = outbox::Outbox::open(&cfg.data_dir)?;
        let head = outbox.head();
        let snapshot_path = cfg.data_dir.join("state").join("ingress.snap");
        let mut state = snapshot::IngressSnapshot::load(&snapshot_path)?.unwrap_or_default();
        let mut reseal = Vec::new();
        let journal_dir = cfg.data_dir.join("journal");
        let (journal, recovery) =
            journal::Journal::open(&journal_dir, cfg.journal.segment_bytes, |r| {
                if r.jsn > head.sealed_jsn && r.new_readings() > 0 {
                    reseal.push(r.clone());
                }
                state.apply(&r);
            })?;
        let last_jsn = journal.next_jsn() - 1;
        if state.jsn > last_jsn || head.sealed_jsn > last_jsn {
            return Err(RelayError::Corrupt {
                path: journal_dir,
                message: format!(
                    "journal ends at jsn {last_jsn} but the snapshot reaches {} and sealed blocks {}: journal files are missing",
                    state.jsn, head.sealed_jsn
                ),
            });
        }
        table.restore(&state);
        tracing::info!(
            relay = cfg.relay_id,
            meters = table.len(),
            replayed = recovery.records,
            truncated = recovery.truncated_bytes,
            next_height = head.next_height,
            unconfirmed = outbox.len(),
            reseal = reseal.len(),
            "relay recovered"
        );

        let shared = Arc::new(Shared {
            relay_id: cfg.relay_id,
            ..Shared::default()
        });
        stats::set(&shared.journal_replayed, recovery.records);
        stats::set(&shared.outbox_len, outbox.len() as u64);
        stats::set(&shared.pending_frames, reseal.len() as u64);
        if head.next_height > 0 {
            shared.set_head(head.next_height - 1, head.head_hash);
        }

        let options = publisher::mqtt_options(&cfg, head.next_height.checked_sub(1))?;
        let pool = pow::PowPool::new(cfg.pow.threads)?;
        let signals = Arc::new(Signals::default());
        let committed = Arc::new(AtomicU64::new(last_jsn));
        let (journal_tx, journal_rx) = crossbeam_channel::unbounded();
        let (compact_tx, compact_rx) = crossbeam_channel::unbounded();
        let (chain_tx, chain_rx) = crossbeam_channel::unbounded();
        let (pub_tx, pub_rx) = mpsc::unbounded_channel();

        let lifecycle = chain::SharedLifecycle::new(new_lifecycle(&cfg, &outbox)?);
        for e in outbox.entries() {
            let _ = pub_tx.send(PubCmd::Block {
                height: e.height,
                bytes: None,
                path: e.path.clone(),
            });
        }

        let tasks = publisher::spawn(
            &cfg,
            options,
            server_key,
            lifecycle.clone(),
            chain_tx.clone(),
            pub_rx,
            shared.clone(),
        );
        let mut threads = Vec::new();
        let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| RelayError::Spawn { name, source })
        };
        let chain = ChainLoop {
            key: signing_key,
            outbox,
            lifecycle,
            backlog: reseal.into(),
            pool,
            events: chain_rx,
            publish_tx: pub_tx.clone(),
            compact_tx,
            shared: shared.clone(),
            signals: signals.clone(),
        };
        threads.push(spawn("gridpow-chain", Box::new(move || chain.run()))?);
        let jl = JournalLoop {
            journal,
            rx: journal_rx,
            compact_rx,
            committed: committed.clone(),
            chain_tx: chain_tx.clone(),
            state,
            snapshot_path,
            max_delay: Duration::from_millis(cfg.journal.max_commit_delay_ms),
            shared: shared.clone(),
            signals: signals.clone(),
        };
        threads.push(spawn("gridpow-journal", Box::new(move || jl.run()))?);
        let il = IngressLoop {
            radio,
            ingress: Ingress::new(
                RustCrypto,
                IngressConfig {
                    relay_id: cfg.relay_id,
                    channel: cfg.radio.channel,
                    require_registered_mac: cfg.radio.require_registered_mac,
                },
                table,
            ),
            mac: cfg.mac(),
            keys,
            journal_tx,
            committed,
            next_jsn: last_jsn + 1,
            shared: shared.clone(),
            signals: signals.clone(),
        };
        threads.push(spawn("gridpow-ingress", Box::new(move || il.run()))?);

        Ok(RelayHandle {
            shared,
            signals,
            chain_tx,
            pub_tx,
            threads,
            tasks,
            _lock: lock,
        })
    }
}

/// Sealed blocks the relay can hold awaiting receipts before it stops
/// sealing (frames then wait in the journal); more when the outbox on disk
/// already holds more.
const OUTBOX_SLOTS: usize = 1 << 16;

/// The core's block lifecycle for this relay, continuing the chain of `outbox`
/// with its unconfirmed blocks restored.
fn new_lifecycle(
    cfg: &RelayConfig,
    outbox: &outbox::Outbox,
) -> Result<chain::Lifecycle, RelayError> {
    use gridpow_proto::lifecycle::{BlockLifecycle, ChainTip, LifecycleConfig, OutboxEntry};
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
        LifecycleConfig {
            relay_id: cfg.relay_id,
            difficulty: cfg.difficulty,
            max_frames: cfg.block.max_frames as u32,
            max_age: gridpow_proto::Duration::from_millis(cfg.block.max_age_ms),
            republish_after: gridpow_proto::Duration::from_secs(cfg.mqtt.republish_after_s.max(1)),
            quarantine_retry: gridpow_proto::Duration::from_secs(
                cfg.mqtt.quarantine_retry_s.max(1),
            ),
            max_inflight: cfg.mqtt.max_inflight_blocks,
        },
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

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    signals: Arc<Signals>,
    chain_tx: Sender<ChainEvent>,
    pub_tx: mpsc::UnboundedSender<PubCmd>,
    /// ingress, journal, chain (stopped in this order).
    threads: Vec<JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The data directory's lock: a field, so it is released only after
    /// `Drop` has joined the threads that write there.
    _lock: gridpow_common::datadir::DataLock,
}

impl RelayHandle {
    /// The counters now.
    pub fn stats(&self) -> RelayStats {
        self.shared.snapshot()
    }

    /// Seals every committed frame that waits for a block now, regardless of
    /// `block.max_frames` and `block.max_age_ms` (used when draining). Returns
    /// at once; watch `stats().pending_frames`.
    pub fn flush(&self) {
        let _ = self.chain_tx.send(ChainEvent::Flush);
    }

    /// Waits until `pred` holds for the stats (checked every 20 ms) or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&RelayStats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Flushes and waits until nothing is pending and every block is confirmed
    /// by a receipt. Returns whether that happened within `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.flush();
        self.wait_until(timeout, |s| s.pending_frames == 0 && s.outbox_len == 0)
            .await
    }

    /// Stops gracefully: the ingress ACKs what the journal committed, the
    /// journal commits what it holds, the chain stops (frames not yet sealed
    /// stay in the journal and are sealed at the next start; call
    /// [`RelayHandle::drain`] first to seal and confirm everything), and the
    /// relay publishes its offline status and disconnects.
    pub async fn shutdown(mut self) {
        self.signals.stop.store(true, Ordering::Relaxed);
        // Spawned as [chain, journal, ingress]: join the ingress first (it ACKs
        // what is committed), then the journal (it ends when the ingress drops
        // its queue, after committing it), then stop the chain.
        let mut threads: Vec<_> = self.threads.drain(..).collect();
        let chain_tx = self.chain_tx.clone();
        let joined = tokio::task::spawn_blocking(move || {
            while let Some(h) = threads.pop() {
                let _ = h.join();
                if threads.len() == 1 {
                    let _ = chain_tx.send(ChainEvent::Shutdown);
                }
            }
        });
        let _ = joined.await;
        let (tx, rx) = oneshot::channel();
        if self.pub_tx.send(PubCmd::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Stops at once as if the process had been killed: no further journal
    /// writes, no ACKs, no offline status (the broker publishes the last will
    /// when it notices the connection is gone). For crash tests; the data
    /// directory is then exactly what a kill -9 would leave.
    pub fn abort(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        self.signals.abort.store(true, Ordering::Relaxed);
        self.signals.stop.store(true, Ordering::Relaxed);
        let _ = self.chain_tx.send(ChainEvent::Shutdown);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() || !self.tasks.is_empty() {
            self.kill();
        }
    }
}
