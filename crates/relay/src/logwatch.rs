//! The Linux relay's driver of the core's log watch
//! ([`gridpow_proto::logwatch`]): checkpoints and proofs in from MQTT,
//! requests out, alarms to the log and the counters, and the trusted head
//! kept in `data_dir/log-head.json` so a rollback across a restart is seen
//! too.

use std::path::{Path, PathBuf};

use gridpow_proto::checkpoint::{NoteKey, TreeHead};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::logwatch::{LogAlarm, LogWatch};
use gridpow_proto::wire::{LogLeafRepr, LogPosition, LogProofRequest};
use serde::{Deserialize, Serialize};

use crate::stats::Shared;
use crate::threads::proto_now;

/// Receipts that may wait for their inclusion proof at once; more are
/// counted as dropped (the server answers one request at a time).
const PENDING_CHECKS: usize = 256;

/// What the relay reports about the log it watches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogReport {
    /// The trusted tree size (every checkpoint seen is consistent with it).
    pub trusted_size: Option<u64>,
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Checkpoints refused (not signed by the log's key, malformed).
    pub checkpoints_refused: u64,
    /// Receipts whose block was proven in the log.
    pub receipts_proven: u64,
    /// Receipts waiting for their inclusion proof.
    pub receipts_pending: u64,
    /// Alarms raised: the server's log is not one append-only history.
    pub alarms: u64,
    /// The newest alarm, as logged.
    pub last_alarm: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SavedHead {
    size: u64,
    root: String,
}

/// The watch, its head file and the counters it feeds.
pub(crate) struct LogWatcher {
    watch: LogWatch<PENDING_CHECKS>,
    head_path: PathBuf,
    saved: Option<TreeHead>,
}

impl LogWatcher {
    /// A watcher for the log whose vkey is `vkey` (checked by the config),
    /// resuming from the head saved in `data_dir`.
    pub(crate) fn open(vkey: &str, relay_id: u32, data_dir: &Path) -> Result<Self, String> {
        let key = NoteKey::from_vkey(&RustCrypto, vkey).map_err(|e| format!("log.vkey: {e}"))?;
        let head_path = data_dir.join("log-head.json");
        let saved = match std::fs::read(&head_path) {
            Ok(b) => {
                let s: SavedHead = serde_json::from_slice(&b)
                    .map_err(|e| format!("{}: {e}", head_path.display()))?;
                let mut root = [0u8; 32];
                hex::decode_to_slice(&s.root, &mut root)
                    .map_err(|e| format!("{}: root: {e}", head_path.display()))?;
                Some(TreeHead { size: s.size, root })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", head_path.display())),
        };
        if let Some(h) = saved {
            tracing::info!(
                size = h.size,
                "watching the server's transparency log from the saved head"
            );
        } else {
            tracing::info!(
                "watching the server's transparency log; the first checkpoint is trusted"
            );
        }
        Ok(LogWatcher {
            watch: LogWatch::new(key, relay_id, saved),
            head_path,
            saved,
        })
    }

    pub(crate) fn on_checkpoint(&mut self, note: &[u8], shared: &Shared) {
        if let Err(e) = self.watch.handle_checkpoint(&RustCrypto, note) {
            tracing::warn!(error = %e, "checkpoint refused: not a note signed by the log's key");
        }
        self.after(shared);
    }

    pub(crate) fn on_proof(&mut self, bytes: &[u8], shared: &Shared) {
        if let Err(e) = self.watch.handle_proof(&RustCrypto, bytes) {
            tracing::debug!(error = %e, "log proof ignored");
        }
        self.after(shared);
    }

    /// A stored block's receipt: `block` is the block as the relay sealed it.
    pub(crate) fn on_receipt(&mut self, block: &[u8], at: LogPosition, shared: &Shared) {
        match gridpow_proto::wire::BlockPacket::new_checked(block) {
            Ok(p) => {
                let h = p.header();
                let entry = LogLeafRepr::of_block(h, h.hash(&RustCrypto));
                if let Err(e) = self.watch.handle_receipt(&RustCrypto, &entry, at) {
                    tracing::warn!(error = %e, ?at, "receipt's log position outside its tree; unchecked");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "own block unreadable; its log position goes unchecked")
            }
        }
        self.after(shared);
    }

    /// The proof to ask for now, if any.
    pub(crate) fn poll_request(&mut self) -> Option<LogProofRequest> {
        self.watch.poll_request(proto_now())
    }

    /// Logs new alarms, saves a newer trusted head, updates the report.
    fn after(&mut self, shared: &Shared) {
        while let Some(a) = self.watch.poll_alarm() {
            tracing::error!(alarm = ?a, "TRANSPARENCY LOG ALARM: {}", describe(&a));
        }
        let trusted = self.watch.trusted();
        if trusted != self.saved {
            if let Some(h) = trusted {
                let doc = SavedHead {
                    size: h.size,
                    root: hex::encode(h.root),
                };
                match serde_json::to_vec(&doc)
                    .map(|b| gridpow_common::durable::write_file(&self.head_path, &b, false))
                {
                    Ok(Ok(())) => self.saved = trusted,
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not save the trusted log head"),
                    Err(e) => tracing::warn!(error = %e, "could not encode the trusted log head"),
                }
            }
        }
        let s = self.watch.stats();
        let report = LogReport {
            trusted_size: trusted.map(|h| h.size),
            checkpoints_verified: s.checkpoints_verified,
            checkpoints_refused: s.checkpoints_refused,
            receipts_proven: s.receipts_proven,
            receipts_pending: self.watch.pending_checks() as u64,
            alarms: s.alarms,
            last_alarm: self.watch.last_alarm().map(|a| describe(&a)),
        };
        shared.set_log(report);
    }
}

/// An alarm as the operator reads it.
pub(crate) fn describe(a: &LogAlarm) -> String {
    match *a {
        LogAlarm::SplitView { size } => format!(
            "two checkpoints signed by the log's key name tree size {size} with different roots: the server shows different histories"
        ),
        LogAlarm::Inconsistent { old, new } => format!(
            "the server's log of size {new} does not extend its log of size {old}: history was rewritten, deleted or reordered"
        ),
        LogAlarm::NotInLog { height, index, tree_size } => format!(
            "our block {height} is not at log index {index}, where its receipt put it (checked in the tree of size {tree_size})"
        ),
    }
}
