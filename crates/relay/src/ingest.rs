//! The ingress thread (radio → `Ingress` → journal queue → ACK) and the
//! journal thread (group commit, then hand the committed frames to the chain).
//!
//! A frame is ACKed only when the journal thread has fsynced it: the ingress
//! thread keeps ACKs in a queue ordered by the jsn they wait for and sends
//! them as the committed jsn passes. A DUPLICATE waits for everything accepted
//! before it (its original is among those), so no ACK ever vouches for a
//! frame that a crash could still lose. While the journal thread fsyncs, the
//! ingress thread keeps reading and judging frames: the next batch forms.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use gridpow_common::durable::FileWatch;
use gridpow_keys::KeyDir;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::ingress::{Ingress, Verdict};
use gridpow_proto::{Error as ProtoError, MacAddr, Rejected};
use gridpow_radio::{Confirmation, RadioError, RadioFrame, RadioPort};

use crate::journal::{FrameRecord, Journal};
use crate::snapshot::IngressSnapshot;
use crate::stats::{add, set, RefusalCause, RefusalLog, Shared};
use crate::table::HashMeterTable;
use crate::threads::{ChainEvent, Signals};

/// Most records one fsync covers (bounds the latency of a huge burst).
const MAX_BATCH: usize = 8192;
/// How often an unknown meter id may trigger a registry reload.
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// At most one refusal line per cause per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

struct PendingAck {
    /// Send once the committed jsn reaches this.
    wait_for: u64,
    dst: MacAddr,
    verdict: Verdict,
}

/// The relay bundle's meter registry and hop keys, as last seen: a bundle
/// replaced in place (a new meter, a key id added or retired) is taken up
/// within [`RELOAD_INTERVAL`], without a restart (protocol §7).
struct BundleWatch {
    files: FileWatch,
    last_check: Instant,
}

impl BundleWatch {
    fn new(keys: &KeyDir) -> Self {
        BundleWatch {
            files: FileWatch::new(vec![keys.hop_keys_path(), keys.meters_path()]),
            last_check: Instant::now(),
        }
    }

    /// Whether the files changed since the last look (looking at most once
    /// per [`RELOAD_INTERVAL`]).
    fn changed(&mut self) -> bool {
        if self.last_check.elapsed() < RELOAD_INTERVAL {
            return false;
        }
        self.last_check = Instant::now();
        self.files.changed()
    }
}

pub(crate) struct IngressLoop {
    pub radio: Box<dyn RadioPort>,
    pub ingress: Ingress<RustCrypto, HashMeterTable>,
    pub mac: MacAddr,
    pub keys: KeyDir,
    pub journal_tx: Sender<FrameRecord>,
    pub committed: Arc<AtomicU64>,
    pub next_jsn: u64,
    pub shared: Arc<Shared>,
    pub signals: Arc<Signals>,
}

impl IngressLoop {
    /// Reads the bundle's meter registry and hop keys again; the meters'
    /// replay state stays. A bundle that does not load leaves the table as it was.
    /// Said at info when the files changed or meters were added, else at
    /// debug (a neighbour's meter heard every few seconds is no news).
    fn reload_bundle(&mut self, files_changed: bool) {
        let why = if files_changed {
            "the bundle's files changed"
        } else {
            "an unknown meter or key id was heard"
        };
        match self.ingress.table_mut().load_from(&self.keys) {
            Ok(added) if files_changed || added > 0 => {
                tracing::info!(why, added, "meter registry and hop keys reloaded")
            }
            Ok(_) => tracing::debug!(why, "meter registry and hop keys reloaded"),
            Err(e) => tracing::warn!(why, error = %e, "meter registry reload failed"),
        }
    }

    pub(crate) fn run(mut self) {
        let mut pending: VecDeque<PendingAck> = VecDeque::new();
        let mut last_reload = Instant::now();
        let mut refusals = RefusalLog::new(REFUSAL_LOG_INTERVAL);
        let mut bundle = BundleWatch::new(&self.keys);
        loop {
            if self.signals.stopping() {
                break;
            }
            if bundle.changed() {
                self.reload_bundle(true);
            }
            let timeout = if pending.is_empty() {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(1)
            };
            match self.radio.recv(timeout) {
                Ok(Some(frame)) => {
                    if !self.handle(frame, &mut pending, &mut last_reload, &mut refusals) {
                        break;
                    }
                    // Drain what is already queued before looking at commits.
                }
                Ok(None) => {}
                Err(RadioError::Closed) => {
                    tracing::warn!("radio closed; ingress stops");
                    break;
                }
                Err(e) => {
                    add(&self.shared.radio_errors, 1);
                    tracing::warn!(error = %e, "radio receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.send_due_acks(&mut pending);
        }
        if self.signals.aborted() {
            return;
        }
        // Graceful stop: the journal thread commits what it has; ACK it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !pending.is_empty() && Instant::now() < deadline && !self.signals.aborted() {
            std::thread::sleep(Duration::from_millis(1));
            self.send_due_acks(&mut pending);
        }
    }

    /// Judges one frame; returns `false` if the relay must stop (journal gone).
    fn handle(
        &mut self,
        frame: RadioFrame,
        pending: &mut VecDeque<PendingAck>,
        last_reload: &mut Instant,
        refusals: &mut RefusalLog,
    ) -> bool {
        let res = self.ingress.handle_frame(&frame.src, &frame.data);
        if let Err(e) = &res {
            let cause = RefusalCause::of(e);
            let src = gridpow_common::format_mac(&frame.src);
            match refusals.admit(cause, Instant::now()) {
                Some(suppressed) => tracing::info!(
                    cause = cause.name(),
                    error = %e,
                    src = %src,
                    suppressed,
                    "frame refused"
                ),
                None => {
                    tracing::debug!(cause = cause.name(), error = %e, src = %src, "frame refused")
                }
            }
        }
        // The hop tag verified: the meter is where this frame came from. A
        // duplicate may be someone's replay, so it never moves a known route.
        match res {
            Ok(Verdict::Accepted(_)) => self.radio.confirm_peer(frame.src, Confirmation::Fresh),
            Ok(Verdict::Duplicate(_)) => self.radio.confirm_peer(frame.src, Confirmation::Replayed),
            _ => {}
        }
        let ok = match res {
            Ok(v @ Verdict::Accepted(info)) => {
                let jsn = self.next_jsn;
                self.next_jsn += 1;
                let rec = FrameRecord {
                    jsn,
                    time_ms: gridpow_common::wall_ms(),
                    src: frame.src,
                    first_seq: info.first_seq,
                    first_new: info.first_new,
                    frame: frame.data,
                };
                if self.journal_tx.send(rec).is_err() {
                    tracing::error!("journal thread is gone; ingress stops (frames are not ACKed)");
                    return false;
                }
                pending.push_back(PendingAck {
                    wait_for: jsn,
                    dst: frame.src,
                    verdict: v,
                });
                true
            }
            Ok(v @ Verdict::Duplicate(_)) => {
                pending.push_back(PendingAck {
                    wait_for: self.next_jsn - 1,
                    dst: frame.src,
                    verdict: v,
                });
                true
            }
            // A meter or key id the bundle did not hold at start may be in
            // it now (a new meter, a site-secret rotation): read it again.
            Err(ProtoError::Rejected(Rejected::UnknownMeter | Rejected::UnknownKeyId))
                if last_reload.elapsed() >= RELOAD_INTERVAL =>
            {
                *last_reload = Instant::now();
                self.reload_bundle(false);
                true
            }
            // Counted by the core, logged above.
            Err(_) => true,
        };
        self.sync_stats();
        ok
    }

    fn sync_stats(&self) {
        let s = self.ingress.stats();
        let sh = &self.shared;
        set(&sh.frames_received, s.frames_received);
        set(&sh.frames_accepted, s.frames_accepted);
        set(&sh.frames_duplicate, s.frames_duplicate);
        set(&sh.readings_accepted, s.readings_delivered);
        set(&sh.readings_redundant, s.readings_redundant);
        set(&sh.rejected_mac, s.rejected_mac);
        set(&sh.rejected_malformed, s.rejected_malformed);
        set(&sh.rejected_unknown, s.rejected_unknown);
        set(&sh.rejected_tag, s.rejected_tag);
        set(&sh.rejected_replay, s.rejected_replay);
    }

    fn send_due_acks(&mut self, pending: &mut VecDeque<PendingAck>) {
        let committed = self.committed.load(Ordering::Acquire);
        let mut buf = [0u8; 64];
        while pending.front().is_some_and(|p| p.wait_for <= committed) {
            let Some(p) = pending.pop_front() else { break };
            match self
                .ingress
                .emit_ack(&p.verdict, gridpow_common::wall_ms(), &mut buf)
            {
                Ok(n) => match self.radio.send(self.mac, p.dst, &buf[..n]) {
                    Ok(()) => add(&self.shared.acks_sent, 1),
                    Err(e) => {
                        add(&self.shared.radio_errors, 1);
                        tracing::warn!(error = %e, "ACK send failed");
                    }
                },
                Err(e) => tracing::warn!(error = %e, "ACK could not be built"),
            }
        }
    }
}

pub(crate) struct JournalLoop {
    pub journal: Journal,
    pub rx: Receiver<FrameRecord>,
    pub compact_rx: Receiver<u64>,
    pub committed: Arc<AtomicU64>,
    pub chain_tx: Sender<ChainEvent>,
    pub state: IngressSnapshot,
    pub snapshot_path: PathBuf,
    pub max_delay: Duration,
    pub shared: Arc<Shared>,
    pub signals: Arc<Signals>,
}

impl JournalLoop {
    pub(crate) fn run(mut self) {
        let mut batch: Vec<FrameRecord> = Vec::with_capacity(1024);
        loop {
            if self.signals.aborted() {
                return;
            }
            let first = crossbeam_channel::select! {
                recv(self.rx) -> r => r.ok(),
                recv(self.compact_rx) -> upto => {
                    if let Ok(upto) = upto {
                        self.compact(upto);
                    }
                    continue;
                }
                default(Duration::from_millis(100)) => continue,
            };
            let Some(first) = first else {
                // The ingress thread is gone and the queue is empty: stop.
                return;
            };
            batch.push(first);
            let deadline = Instant::now() + self.max_delay;
            let mut disconnected = false;
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => match self.rx.recv_deadline(deadline) {
                        Ok(r) => batch.push(r),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    },
                }
            }
            if self.signals.aborted() {
                return;
            }
            if let Err(e) = self.commit(&mut batch) {
                // Without a journal nothing may be ACKed: stop here; the
                // ingress notices the closed queue and stops too.
                tracing::error!(error = %e, "journal commit failed; the relay stops accepting frames");
                return;
            }
            if disconnected {
                return;
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<FrameRecord>) -> Result<(), crate::RelayError> {
        for r in batch.iter() {
            self.journal.append(r)?;
        }
        if self.journal.commit()? {
            add(&self.shared.journal_fsyncs, 1);
        }
        add(&self.shared.frames_journaled, batch.len() as u64);
        let last = batch.last().map_or(0, |r| r.jsn);
        for r in batch.iter() {
            self.state.apply(r);
        }
        let fresh: Vec<FrameRecord> = batch.drain(..).filter(|r| r.new_readings() > 0).collect();
        if !fresh.is_empty() {
            // The chain gets the frames before the ACKs can go out, so a flush
            // requested after an ACK always finds them.
            let _ = self.chain_tx.send(ChainEvent::Frames(fresh));
        }
        self.committed.store(last, Ordering::Release);
        Ok(())
    }

    /// Deletes journal segments below `upto` after saving the ingress state they built.
    fn compact(&mut self, upto: u64) {
        if !self.journal.compactable(upto) {
            return;
        }
        if let Err(e) = self.state.save(&self.snapshot_path) {
            tracing::warn!(error = %e, "ingress snapshot not saved; journal not compacted");
            return;
        }
        match self.journal.compact(upto.min(self.state.jsn)) {
            Ok(n) => add(&self.shared.journal_segments_compacted, n as u64),
            Err(e) => tracing::warn!(error = %e, "journal compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As if the last look was one interval ago.
    fn due(w: &mut BundleWatch) {
        w.last_check = Instant::now()
            .checked_sub(RELOAD_INTERVAL)
            .unwrap_or_else(Instant::now);
    }

    #[test]
    fn a_bundle_replaced_in_place_is_seen_once_per_change_and_not_between_looks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = KeyDir::new(dir.path());
        let write = |path: PathBuf, text: &str| {
            gridpow_common::durable::write_file(&path, text.as_bytes(), false).expect("write")
        };
        write(keys.hop_keys_path(), "hop 1");
        write(keys.meters_path(), "meters 1");
        let mut w = BundleWatch::new(&keys);
        due(&mut w);
        assert!(!w.changed(), "nothing changed");
        // Replaced by a rename with the same length: a new inode.
        write(keys.hop_keys_path(), "hop 2");
        assert!(!w.changed(), "not looked at before the interval");
        due(&mut w);
        assert!(w.changed());
        due(&mut w);
        assert!(!w.changed(), "each change is seen once");
        std::fs::remove_file(keys.meters_path()).expect("remove");
        due(&mut w);
        assert!(w.changed(), "a file gone is a change too");
    }
}
