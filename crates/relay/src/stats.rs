//! Counters the relay's threads update and [`crate::RelayHandle::stats`] reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use gridpow_proto::{Error as ProtoError, Hash, Rejected};
use serde::Serialize;

/// Frames refused by the ingress, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RejectStats {
    /// MAC filter or MAC binding.
    pub mac: u64,
    /// Malformed (version, type, length, reserved bits).
    pub malformed: u64,
    /// Unknown meter or key id.
    pub unknown: u64,
    /// Tag did not verify.
    pub tag: u64,
    /// Replayed, too old or stale epoch.
    pub replay: u64,
}

impl RejectStats {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.mac + self.malformed + self.unknown + self.tag + self.replay
    }
}

/// Why the ingress refused a frame: the causes [`RejectStats`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RefusalCause {
    Mac,
    Malformed,
    Unknown,
    Tag,
    Replay,
}

impl RefusalCause {
    /// The cause the core's ingress counts `e` under.
    pub(crate) fn of(e: &ProtoError) -> Self {
        match e {
            ProtoError::Malformed(_) => RefusalCause::Malformed,
            ProtoError::Rejected(Rejected::MacNotAllowed | Rejected::MacMismatch) => {
                RefusalCause::Mac
            }
            ProtoError::Rejected(Rejected::UnknownMeter | Rejected::UnknownKeyId) => {
                RefusalCause::Unknown
            }
            ProtoError::Rejected(Rejected::BadTag) => RefusalCause::Tag,
            _ => RefusalCause::Replay,
        }
    }

    /// The name used in [`RejectStats`] and in log lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RefusalCause::Mac => "mac",
            RefusalCause::Malformed => "malformed",
            RefusalCause::Unknown => "unknown",
            RefusalCause::Tag => "tag",
            RefusalCause::Replay => "replay",
        }
    }
}

/// Rate limit of the ingress's refusal log: at most one line per cause per
/// interval, each line carrying how many refusals of that cause went unlogged
/// since the previous one. A flood of forged frames stays visible without
/// filling the disk.
pub(crate) type RefusalLog = gridpow_common::throttle::LogThrottle<RefusalCause>;

/// A snapshot of the relay's counters (rates are derived by the reader).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RelayStats {
    /// This relay.
    pub relay_id: u32,
    /// Frames heard on the radio.
    pub frames_received: u64,
    /// Frames accepted (first reception).
    pub frames_accepted: u64,
    /// Retransmissions recognised and ACKed again.
    pub frames_duplicate: u64,
    /// Frames refused, by cause.
    pub frames_rejected: RejectStats,
    /// Readings delivered for the first time.
    pub readings_accepted: u64,
    /// Readings in accepted frames that an earlier frame had delivered.
    pub readings_redundant: u64,
    /// ACKs sent (each after its frame's journal commit).
    pub acks_sent: u64,
    /// Radio send or receive errors.
    pub radio_errors: u64,
    /// Records durably in the journal since start.
    pub frames_journaled: u64,
    /// Journal fsyncs since start.
    pub journal_fsyncs: u64,
    /// Mean records per fsync (group commit efficiency).
    pub frames_per_fsync: f64,
    /// Records replayed from the journal at start.
    pub journal_replayed: u64,
    /// Journal segments deleted by compaction.
    pub journal_segments_compacted: u64,
    /// Frames committed but not yet in a sealed block.
    pub pending_frames: u64,
    /// Blocks sealed (solved, signed, written to the outbox).
    pub blocks_sealed: u64,
    /// Distinct blocks published at least once.
    pub blocks_published: u64,
    /// Publications of a block that had been published before.
    pub blocks_republished: u64,
    /// Blocks confirmed by a receipt (and dropped from the outbox).
    pub blocks_confirmed: u64,
    /// Receipts saying the server quarantined the block (kept, offered again).
    pub blocks_quarantined: u64,
    /// Receipts saying the server refused the block for good (archived in `refused/`).
    pub blocks_refused: u64,
    /// Receipts refused (bad signature, unknown block, hash mismatch).
    pub receipts_rejected: u64,
    /// Blocks awaiting their receipt.
    pub outbox_len: u64,
    /// PoW nonces tried.
    pub pow_tries: u64,
    /// Time spent solving, all blocks.
    pub pow_time_ms_total: u64,
    /// Mean solve time per block.
    pub pow_time_ms_mean: f64,
    /// Height of the newest block, `None` before the genesis block.
    pub chain_height: Option<u64>,
    /// Hash of the newest block, hex.
    pub chain_head: String,
    /// Connected to the broker now.
    pub mqtt_connected: bool,
    /// Connections established since start.
    pub mqtt_connects: u64,
    /// The watch over the server's transparency log (`None`: no `log.vkey`).
    pub log: Option<crate::logwatch::LogReport>,
    /// The TLS certificates in use (CA, client certificate) and their ends,
    /// as of the start or the last reload.
    pub tls_certs: Vec<gridpow_common::tls_reload::CertInUse>,
    /// TLS reloads done since start (new material, a new connection).
    pub tls_reloads: u64,
    /// TLS reloads refused (the material in use was kept).
    pub tls_reload_failures: u64,
}

/// Live counters shared by the threads.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub relay_id: u32,
    pub frames_received: AtomicU64,
    pub frames_accepted: AtomicU64,
    pub frames_duplicate: AtomicU64,
    pub rejected_mac: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_unknown: AtomicU64,
    pub rejected_tag: AtomicU64,
    pub rejected_replay: AtomicU64,
    pub readings_accepted: AtomicU64,
    pub readings_redundant: AtomicU64,
    pub acks_sent: AtomicU64,
    pub radio_errors: AtomicU64,
    pub frames_journaled: AtomicU64,
    pub journal_fsyncs: AtomicU64,
    pub journal_replayed: AtomicU64,
    pub journal_segments_compacted: AtomicU64,
    pub pending_frames: AtomicU64,
    pub blocks_sealed: AtomicU64,
    pub blocks_published: AtomicU64,
    pub blocks_republished: AtomicU64,
    pub blocks_confirmed: AtomicU64,
    pub blocks_quarantined: AtomicU64,
    pub blocks_refused: AtomicU64,
    pub receipts_rejected: AtomicU64,
    pub outbox_len: AtomicU64,
    pub pow_tries: AtomicU64,
    pub pow_time_us_total: AtomicU64,
    pub mqtt_connected: AtomicBool,
    pub mqtt_connects: AtomicU64,
    /// Newest block: (height, hash).
    pub head: Mutex<Option<(u64, Hash)>>,
    /// The log watch's report.
    pub log: Mutex<Option<crate::logwatch::LogReport>>,
    /// The TLS certificates in use.
    pub certs: gridpow_common::tls_reload::CertsInUse,
    pub tls_reloads: AtomicU64,
    pub tls_reload_failures: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn set(c: &AtomicU64, n: u64) {
    c.store(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Shared {
    pub(crate) fn head(&self) -> Option<(u64, Hash)> {
        *self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_head(&self, height: u64, hash: Hash) {
        *self.head.lock().unwrap_or_else(|p| p.into_inner()) = Some((height, hash));
    }

    pub(crate) fn set_log(&self, report: crate::logwatch::LogReport) {
        if let Ok(mut g) = self.log.lock() {
            *g = Some(report);
        }
    }

    pub(crate) fn snapshot(&self) -> RelayStats {
        let fsyncs = get(&self.journal_fsyncs);
        let journaled = get(&self.frames_journaled);
        let sealed = get(&self.blocks_sealed);
        let pow_us = get(&self.pow_time_us_total);
        let head = self.head();
        RelayStats {
            relay_id: self.relay_id,
            frames_received: get(&self.frames_received),
            frames_accepted: get(&self.frames_accepted),
            frames_duplicate: get(&self.frames_duplicate),
            frames_rejected: RejectStats {
                mac: get(&self.rejected_mac),
                malformed: get(&self.rejected_malformed),
                unknown: get(&self.rejected_unknown),
                tag: get(&self.rejected_tag),
                replay: get(&self.rejected_replay),
            },
            readings_accepted: get(&self.readings_accepted),
            readings_redundant: get(&self.readings_redundant),
            acks_sent: get(&self.acks_sent),
            radio_errors: get(&self.radio_errors),
            frames_journaled: journaled,
            journal_fsyncs: fsyncs,
            frames_per_fsync: if fsyncs == 0 {
                0.0
            } else {
                journaled as f64 / fsyncs as f64
            },
            journal_replayed: get(&self.journal_replayed),
            journal_segments_compacted: get(&self.journal_segments_compacted),
            pending_frames: get(&self.pending_frames),
            blocks_sealed: sealed,
            blocks_published: get(&self.blocks_published),
            blocks_republished: get(&self.blocks_republished),
            blocks_confirmed: get(&self.blocks_confirmed),
            blocks_quarantined: get(&self.blocks_quarantined),
            blocks_refused: get(&self.blocks_refused),
            receipts_rejected: get(&self.receipts_rejected),
            outbox_len: get(&self.outbox_len),
            pow_tries: get(&self.pow_tries),
            pow_time_ms_total: pow_us / 1000,
            pow_time_ms_mean: if sealed == 0 {
                0.0
            } else {
                pow_us as f64 / 1000.0 / sealed as f64
            },
            chain_height: head.map(|(h, _)| h),
            chain_head: head.map(|(_, h)| hex::encode(h)).unwrap_or_default(),
            mqtt_connected: self.mqtt_connected.load(Ordering::Relaxed),
            mqtt_connects: get(&self.mqtt_connects),
            log: self.log.lock().map_or(None, |g| g.clone()),
            tls_certs: self.certs.get(),
            tls_reloads: get(&self.tls_reloads),
            tls_reload_failures: get(&self.tls_reload_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn refusal_log_writes_one_line_per_cause_per_interval_with_the_suppressed_count() {
        let log = RefusalLog::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(log.admit(RefusalCause::Tag, t0), Some(0));
        for i in 1..=99u64 {
            let at = t0 + Duration::from_millis(i * 5);
            assert_eq!(log.admit(RefusalCause::Tag, at), None);
        }
        // Another cause has its own budget.
        assert_eq!(log.admit(RefusalCause::Replay, t0), Some(0));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(log.admit(RefusalCause::Tag, t1), Some(99));
        assert_eq!(log.admit(RefusalCause::Tag, t1), None);
        assert_eq!(
            log.admit(RefusalCause::Tag, t1 + Duration::from_secs(5)),
            Some(1)
        );
        assert_eq!(
            RefusalCause::of(&ProtoError::Rejected(Rejected::UnknownKeyId)).name(),
            "unknown"
        );
    }
}
