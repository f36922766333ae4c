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
//! 64 bytes are a midstate, so one try is one compression), solved by
//! `pow.threads` workers; `gridpow bench --only pow,journal` measures the
//! rate and the journal's fsync rate on the machine at hand. What d costs here and on an ESP32, and what
//! group commit buys, is in `docs/scalability.md` ("The relay's own limits").
//! A forger must redo the work for every altered block and every block after
//! it. PoW is rate limiting and tamper cost, never authentication (the
//! Ed25519 signature and the meters' own tags are). Solve times vary
//! geometrically around the mean: one block in 20 takes three times the mean.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod chain;
pub mod config;
mod error;
mod fsutil;
mod ingest;
pub mod journal;
mod logwatch;
pub mod outbox;
pub mod pow;
mod publisher;
mod recover;
pub mod serial;
pub mod snapshot;
mod stats;
pub mod table;
mod threads;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_keys::{KeyDir, Role};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::ingress::{Ingress, IngressConfig};
use gridpow_radio::{RadioPort, UdpAir};
use tokio::sync::{mpsc, oneshot};

pub use config::{
    BlockConfig, JournalConfig, LogConfig, MqttConfig, PowConfig, RadioConfig, RadioKind,
    RelayConfig,
};
pub use error::RelayError;
pub use gridpow_relay_net::{RadioCounts, Status};
pub use logwatch::LogReport;
pub use publisher::status_json;
pub use serial::SerialRadio;
pub use stats::{RejectStats, RelayStats};

use chain::ChainLoop;
use ingest::{IngressLoop, JournalLoop};
use outbox::Outbox;
use recover::Recovered;
use stats::Shared;
use table::HashMeterTable;
use threads::{ChainEvent, PubCmd, SharedLifecycle, Signals};

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
        let mut keys = RelayKeys::load(&cfg)?;
        let recovered = recover::recover(&cfg, &mut keys.table)?;
        spawn(&cfg, radio, keys, recovered)
    }
}

/// The relay's keys: its own signing key, the server's receipt key, and the
/// meters it accepts.
struct RelayKeys {
    dir: KeyDir,
    signing: SigningKey,
    server: VerifyingKey,
    table: HashMeterTable,
}

impl RelayKeys {
    fn load(cfg: &RelayConfig) -> Result<Self, RelayError> {
        let dir = KeyDir::new(&cfg.keys_dir);
        dir.check_role(Role::Relay(cfg.relay_id))?;
        Ok(RelayKeys {
            signing: dir.relay_signing_key(cfg.relay_id)?,
            server: dir.server_verifying_key()?,
            table: HashMeterTable::from_key_dir(&dir)?,
            dir,
        })
    }
}

/// Starts the publisher tasks and the chain, journal and ingress threads
/// (wired as [`threads`] shows) over the recovered state.
fn spawn(
    cfg: &RelayConfig,
    radio: Box<dyn RadioPort>,
    keys: RelayKeys,
    recovered: Recovered,
) -> Result<RelayHandle, RelayError> {
    let Recovered {
        lock,
        outbox,
        journal,
        state,
        snapshot_path,
        reseal,
        last_jsn,
        replayed,
    } = recovered;
    let shared = recovered_stats(cfg.relay_id, &outbox, replayed, reseal.len());
    let options = publisher::mqtt_options(cfg, outbox.head().next_height.checked_sub(1))?;
    let pool = pow::PowPool::new(cfg.pow.threads)?;
    let lifecycle = SharedLifecycle::new(recover::lifecycle(cfg, &outbox)?);
    let watcher = match &cfg.log.vkey {
        Some(v) => Some(
            logwatch::LogWatcher::open(v, cfg.relay_id, &cfg.data_dir).map_err(|message| {
                RelayError::Corrupt {
                    path: cfg.data_dir.join("log-head.json"),
                    message,
                }
            })?,
        ),
        None => {
            tracing::info!(
                "log.vkey is not set: this relay does not watch the server's transparency log"
            );
            None
        }
    };
    let signals = Arc::new(Signals::default());
    let committed = Arc::new(AtomicU64::new(last_jsn));
    let (journal_tx, journal_rx) = crossbeam_channel::unbounded();
    let (compact_tx, compact_rx) = crossbeam_channel::unbounded();
    let (chain_tx, chain_rx) = crossbeam_channel::unbounded();
    let (pub_tx, pub_rx) = mpsc::unbounded_channel();

    offer_unconfirmed(&outbox, &pub_tx);
    let tls_trigger = Arc::new(tokio::sync::Notify::new());
    let tls = publisher::tls_reload(cfg, tls_trigger.clone(), &shared);
    let tasks = publisher::spawn(
        cfg,
        options,
        publisher::ServerTrust {
            server_key: keys.server,
            log: watcher,
        },
        lifecycle.clone(),
        chain_tx.clone(),
        pub_rx,
        shared.clone(),
        tls,
    );
    let chain = ChainLoop {
        key: keys.signing,
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
    let journal = JournalLoop {
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
    let ingress = IngressLoop {
        radio,
        ingress: Ingress::new(RustCrypto, ingress_config(cfg), keys.table),
        mac: cfg.mac(),
        keys: keys.dir,
        journal_tx,
        committed,
        next_jsn: last_jsn + 1,
        shared: shared.clone(),
        signals: signals.clone(),
    };
    // The handle stops them in the reverse order.
    let threads = vec![
        spawn_thread("gridpow-chain", move || chain.run())?,
        spawn_thread("gridpow-journal", move || journal.run())?,
        spawn_thread("gridpow-ingress", move || ingress.run())?,
    ];
    Ok(RelayHandle {
        shared,
        tls_trigger,
        signals,
        chain_tx,
        pub_tx,
        threads,
        tasks,
        _lock: lock,
    })
}

/// The counters as recovery left them: replayed records, the outbox, the
/// frames to seal again, the chain head.
fn recovered_stats(relay_id: u32, outbox: &Outbox, replayed: u64, reseal: usize) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        relay_id,
        ..Shared::default()
    });
    stats::set(&shared.journal_replayed, replayed);
    stats::set(&shared.outbox_len, outbox.len() as u64);
    stats::set(&shared.pending_frames, reseal as u64);
    let head = outbox.head();
    if head.next_height > 0 {
        shared.set_head(head.next_height - 1, head.head_hash);
    }
    shared
}

/// Queues every unconfirmed block of the outbox for the outbox task (their
/// bytes are read from disk when due).
fn offer_unconfirmed(outbox: &Outbox, pub_tx: &mpsc::UnboundedSender<PubCmd>) {
    for e in outbox.entries() {
        let _ = pub_tx.send(PubCmd::Block {
            height: e.height,
            bytes: None,
            path: e.path.clone(),
        });
    }
}

fn ingress_config(cfg: &RelayConfig) -> IngressConfig {
    IngressConfig {
        relay_id: cfg.relay_id,
        channel: cfg.radio.channel,
        require_registered_mac: cfg.radio.require_registered_mac,
    }
}

fn spawn_thread(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, RelayError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| RelayError::Spawn { name, source })
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    /// Pulled by [`RelayHandle::reload_tls`].
    tls_trigger: Arc<tokio::sync::Notify>,
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

    /// Loads the TLS files again (CA, client certificate and key) and
    /// reconnects to the broker with them, as a change of the files does
    /// within [`gridpow_common::tls_reload::RELOAD_CHECK_INTERVAL`]; material
    /// that is unusable (unreadable, expired) is refused and the one in use
    /// kept. Returns at once; the outcome is logged and counted in the stats
    /// (`tls_reloads`, `tls_reload_failures`). `gridpow relay` calls it on SIGHUP.
    pub fn reload_tls(&self) {
        self.tls_trigger.notify_one();
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
    /// relay publishes its offline status and disconnects. Returns the final
    /// counters and chain head.
    pub async fn shutdown(mut self) -> RelayStats {
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
        // After the chain stopped: the head a key rotation starts above.
        self.shared.snapshot()
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
