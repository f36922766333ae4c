//! The chain thread: drives the protocol core's block lifecycle
//! ([`gridpow_proto::lifecycle::BlockLifecycle`], the same machine the ESP32
//! relay drives) with committed frames, has the PoW pool solve its jobs,
//! writes sealed blocks to the outbox files, hands them to the publisher, and
//! deletes them when the lifecycle confirms their receipts (asking the
//! journal to compact what no block needs any more).
//!
//! The decisions (when a batch is sealed, what a solution must meet, which
//! receipt frees a block, when a block is published again) are the
//! lifecycle's; this thread only does the IO around them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ed25519_dalek::SigningKey;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::Hash;
use tokio::sync::mpsc::UnboundedSender;

use crate::journal::FrameRecord;
use crate::outbox::Outbox;
use crate::pow::{PowPool, PowReport};
use crate::stats::{add, set, Shared};
use crate::threads::{proto_now, ChainEvent, PubCmd, SharedLifecycle, Signals};

/// The job the PoW pool is solving.
struct Job {
    id: u64,
    height: u64,
    started: std::time::Instant,
}

pub(crate) struct ChainLoop {
    pub key: SigningKey,
    pub outbox: Outbox,
    pub lifecycle: SharedLifecycle,
    /// Committed frames that do not fit the lifecycle's batch yet.
    pub backlog: VecDeque<FrameRecord>,
    pub pool: PowPool,
    pub events: Receiver<ChainEvent>,
    pub publish_tx: UnboundedSender<PubCmd>,
    pub compact_tx: Sender<u64>,
    pub shared: Arc<Shared>,
    pub signals: Arc<Signals>,
}

impl ChainLoop {
    pub(crate) fn run(mut self) {
        let mut job: Option<Job> = None;
        let mut flush = false;
        let mut compacted_to = 0u64;
        loop {
            if self.signals.aborted() {
                break;
            }
            let timeout = self
                .lifecycle
                .lock()
                .poll_timeout()
                .map(|t| Duration::from_micros(t.saturating_since(proto_now()).as_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            let mut shutdown = false;
            crossbeam_channel::select! {
                recv(self.events) -> ev => match ev {
                    Ok(ChainEvent::Frames(frames)) => self.backlog.extend(frames),
                    Ok(ChainEvent::Confirmed { height, hash }) => self.confirm(height, &hash, &mut compacted_to),
                    Ok(ChainEvent::Refused { height, hash }) => self.refuse(height, &hash, &mut compacted_to),
                    Ok(ChainEvent::Flush) => flush = true,
                    Ok(ChainEvent::Shutdown) | Err(_) => shutdown = true,
                },
                recv(self.pool.reports()) -> r => if let Ok(r) = r {
                    self.on_report(r, &mut job);
                },
                default(timeout) => {}
            }
            if shutdown || self.signals.aborted() {
                break;
            }
            self.save_sealed();
            self.feed(&mut flush);
            if job.is_none() {
                let header = self.lifecycle.lock().poll_job(
                    &RustCrypto,
                    proto_now(),
                    gridpow_common::wall_ms(),
                );
                if let Some(h) = header {
                    tracing::debug!(height = h.height, leaves = h.leaf_count, "solving block");
                    job = Some(Job {
                        id: self.pool.start(h),
                        height: h.height,
                        started: std::time::Instant::now(),
                    });
                }
            }
            let lc = self.lifecycle.lock();
            let waiting = lc.pending_frames() + lc.sealing_frames();
            drop(lc);
            set(
                &self.shared.pending_frames,
                waiting as u64 + self.backlog.len() as u64,
            );
        }
        self.pool.shutdown();
    }

    /// Moves backlog frames into the lifecycle's batch while they fit (the
    /// lifecycle seals a full batch to make room when it can). A flush holds
    /// until the backlog and the batch are empty.
    fn feed(&mut self, flush: &mut bool) {
        let mut lc = self.lifecycle.lock();
        let now = proto_now();
        while let Some(f) = self.backlog.front() {
            if !lc.admits(&RustCrypto, f.frame.len(), gridpow_common::wall_ms()) {
                break;
            }
            if let Err(e) = lc.handle_frame(&RustCrypto, now, &f.frame, f.jsn) {
                // Admitted frames fit; a refusal here is a frame the core
                // cannot carry at all (never produced by the ingress).
                tracing::error!(error = %e, jsn = f.jsn, "frame not batched; skipped");
            }
            self.backlog.pop_front();
        }
        if *flush {
            if lc.pending_frames() == 0 && self.backlog.is_empty() {
                *flush = false;
            } else {
                lc.request_flush();
            }
        }
    }

    fn on_report(&mut self, r: PowReport, job: &mut Option<Job>) {
        match r {
            PowReport::Stopped { tries, .. } => add(&self.shared.pow_tries, tries),
            PowReport::Solved {
                job: id,
                nonce,
                tries,
            } => {
                add(&self.shared.pow_tries, tries);
                let Some(j) = job.take_if(|j| j.id == id) else {
                    return;
                };
                self.pool.finish(id);
                let res = self
                    .lifecycle
                    .lock()
                    .handle_solution(&RustCrypto, nonce, &self.key);
                if let Err(e) = res {
                    tracing::error!(height = j.height, error = %e, "worker reported a bad nonce; solving again");
                    if let Some(h) = self.lifecycle.lock().job().copied() {
                        *job = Some(Job {
                            id: self.pool.start(h),
                            ..j
                        });
                    }
                    return;
                }
                let elapsed = j.started.elapsed();
                add(&self.shared.pow_time_us_total, elapsed.as_micros() as u64);
                tracing::debug!(
                    height = j.height,
                    ms = elapsed.as_millis() as u64,
                    "block solved"
                );
                self.save_sealed();
            }
        }
    }

    /// Writes the sealed block (if any) to the outbox and hands it to the
    /// publisher; a failed write is retried on the next turn.
    fn save_sealed(&mut self) {
        let mut lc = self.lifecycle.lock();
        let Some(sealed) = lc.sealed_block() else {
            return;
        };
        let bytes = Bytes::copy_from_slice(sealed.bytes);
        match self
            .outbox
            .push(&bytes, sealed.first_record, sealed.last_record)
        {
            Ok(entry) => {
                if let Err(e) = lc.handle_saved() {
                    tracing::error!(error = %e, height = entry.height, "sealed block has no outbox slot");
                    return;
                }
                drop(lc);
                add(&self.shared.blocks_sealed, 1);
                set(&self.shared.outbox_len, self.outbox.len() as u64);
                self.shared.set_head(entry.height, entry.hash);
                let _ = self.publish_tx.send(PubCmd::Block {
                    height: entry.height,
                    bytes: Some(bytes),
                    path: entry.path,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "sealed block not written to the outbox; retrying");
            }
        }
    }

    fn confirm(&mut self, height: u64, hash: &Hash, compacted_to: &mut u64) {
        match self.outbox.confirm(height, hash) {
            Ok(true) => {
                add(&self.shared.blocks_confirmed, 1);
                self.released(compacted_to);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, height, "confirmed block could not be removed from the outbox")
            }
        }
    }

    /// A block the server will never store: archived for the operator, and
    /// its journal records may go like a confirmed block's (§10).
    fn refuse(&mut self, height: u64, hash: &Hash, compacted_to: &mut u64) {
        match self.outbox.refuse(height, hash) {
            Ok(Some(path)) => {
                tracing::error!(
                    height,
                    archived = %path.display(),
                    "the server refused our block for good; it is archived and no longer offered"
                );
                self.released(compacted_to);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, height, "refused block could not be archived")
            }
        }
    }

    fn released(&mut self, compacted_to: &mut u64) {
        set(&self.shared.outbox_len, self.outbox.len() as u64);
        let upto = self.outbox.confirmed_jsn();
        if upto > *compacted_to {
            *compacted_to = upto;
            let _ = self.compact_tx.send(upto);
        }
    }
}
