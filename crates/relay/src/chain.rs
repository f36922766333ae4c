//! The chain thread: batches committed frames into blocks, has the PoW pool
//! solve them one after the other (each block names its parent's hash),
//! signs, writes them to the outbox, hands them to the publisher, and drops
//! them from the outbox when their receipts arrive (asking the journal to
//! compact what no block needs any more).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ed25519_dalek::SigningKey;
use gridpow_proto::block::{sign_header, BlockBuilder};
use gridpow_proto::pow::check_work;
use gridpow_proto::wire::block::{block_len, HEADER_LEN, SIGNATURE_LEN};
use gridpow_proto::wire::BlockHeaderRepr;
use gridpow_proto::Hash;
use tokio::sync::mpsc::UnboundedSender;

use crate::batcher::Batcher;
use crate::ingest::Signals;
use crate::journal::FrameRecord;
use crate::outbox::Outbox;
use crate::pow::{PowPool, PowReport};
use crate::publisher::PubCmd;
use crate::stats::{add, set, Shared};

/// Input of the chain thread.
#[derive(Debug)]
pub(crate) enum ChainEvent {
    /// Frames committed to the journal that delivered new readings, in jsn order.
    Frames(Vec<FrameRecord>),
    /// A verified receipt: the server stored the block with this height and hash.
    Receipt { height: u64, hash: Hash },
    /// Seal everything pending now.
    Flush,
    /// Stop (pending frames stay in the journal and are sealed after restart).
    Shutdown,
}

struct Job {
    id: u64,
    header: BlockHeaderRepr,
    block: Vec<u8>,
    first_jsn: u64,
    last_jsn: u64,
    leaves: usize,
    started: Instant,
    tries: u64,
}

/// A solved and signed block whose outbox write failed; retried.
struct Unsaved {
    block: Vec<u8>,
    first_jsn: u64,
    last_jsn: u64,
}

pub(crate) struct ChainLoop {
    pub relay_id: u32,
    pub difficulty: u8,
    pub key: SigningKey,
    pub outbox: Outbox,
    pub batcher: Batcher,
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
        let mut unsaved: Option<Unsaved> = None;
        let mut compacted_to = 0u64;
        loop {
            if self.signals.aborted() {
                break;
            }
            let now = Instant::now();
            let timeout = match (&job, &unsaved, self.batcher.deadline()) {
                (None, None, Some(d)) => {
                    d.saturating_duration_since(now).min(Duration::from_secs(1))
                }
                _ => Duration::from_secs(1),
            };
            let mut shutdown = false;
            crossbeam_channel::select! {
                recv(self.events) -> ev => match ev {
                    Ok(ChainEvent::Frames(frames)) => {
                        let now = Instant::now();
                        for f in frames {
                            self.batcher.push(now, f);
                        }
                    }
                    Ok(ChainEvent::Receipt { height, hash }) => self.confirm(height, &hash, &mut compacted_to),
                    Ok(ChainEvent::Flush) => self.batcher.request_flush(),
                    Ok(ChainEvent::Shutdown) | Err(_) => shutdown = true,
                },
                recv(self.pool.reports()) -> r => if let Ok(r) = r {
                    self.on_report(r, &mut job, &mut unsaved);
                },
                default(timeout) => {}
            }
            if shutdown || self.signals.aborted() {
                break;
            }
            if let Some(u) = unsaved.take() {
                unsaved = self.save(u);
            }
            if job.is_none() && unsaved.is_none() && self.batcher.due(Instant::now()) {
                job = self.start_job();
            }
            let in_job = job.as_ref().map_or(0, |j| j.leaves) + unsaved.as_ref().map_or(0, |_| 1);
            set(
                &self.shared.pending_frames,
                (self.batcher.len() + in_job) as u64,
            );
        }
        self.pool.shutdown();
    }

    fn start_job(&mut self) -> Option<Job> {
        let frames = self.batcher.take();
        let (first, last) = (frames.first()?.jsn, frames.last()?.jsn);
        let bytes: usize = frames.iter().map(|f| f.frame.len()).sum();
        let mut block = vec![0u8; block_len(frames.len(), bytes)];
        let head = self.outbox.head();
        let header = {
            let mut b = match BlockBuilder::new(&mut block) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "block buffer refused");
                    return None;
                }
            };
            for f in &frames {
                if let Err(e) = b.push_leaf(&f.frame) {
                    tracing::error!(error = %e, jsn = f.jsn, "frame does not fit its block; skipped");
                }
            }
            b.header(
                self.relay_id,
                head.next_height,
                head.head_hash,
                gridpow_common::wall_ms(),
                self.difficulty,
            )
        };
        let id = self.pool.start(header);
        tracing::debug!(
            height = header.height,
            leaves = frames.len(),
            "solving block"
        );
        Some(Job {
            id,
            header,
            block,
            first_jsn: first,
            last_jsn: last,
            leaves: frames.len(),
            started: Instant::now(),
            tries: 0,
        })
    }

    fn on_report(&mut self, r: PowReport, job: &mut Option<Job>, unsaved: &mut Option<Unsaved>) {
        match r {
            PowReport::Stopped { job: id, tries } => {
                add(&self.shared.pow_tries, tries);
                if let Some(j) = job.as_mut().filter(|j| j.id == id) {
                    j.tries += tries;
                }
            }
            PowReport::Solved {
                job: id,
                nonce,
                tries,
            } => {
                add(&self.shared.pow_tries, tries);
                let Some(mut j) = job.take_if(|j| j.id == id) else {
                    return;
                };
                self.pool.finish(id);
                j.tries += tries;
                j.header.nonce = nonce;
                if check_work(&j.header.hash(), j.header.difficulty).is_err() {
                    tracing::error!(
                        height = j.header.height,
                        "worker reported a nonce that does not meet the difficulty; solving again"
                    );
                    j.id = self.pool.start(j.header);
                    *job = Some(j);
                    return;
                }
                let elapsed = j.started.elapsed();
                add(&self.shared.pow_time_us_total, elapsed.as_micros() as u64);
                let sig = sign_header(&j.header, &self.key);
                j.block[..HEADER_LEN].copy_from_slice(&j.header.to_bytes());
                j.block[HEADER_LEN..HEADER_LEN + SIGNATURE_LEN].copy_from_slice(&sig);
                tracing::debug!(
                    height = j.header.height,
                    leaves = j.leaves,
                    tries = j.tries,
                    ms = elapsed.as_millis() as u64,
                    "block solved"
                );
                *unsaved = self.save(Unsaved {
                    block: j.block,
                    first_jsn: j.first_jsn,
                    last_jsn: j.last_jsn,
                });
            }
        }
    }

    /// Writes a sealed block to the outbox and hands it to the publisher;
    /// gives it back if the write failed.
    fn save(&mut self, u: Unsaved) -> Option<Unsaved> {
        match self.outbox.push(&u.block, u.first_jsn, u.last_jsn) {
            Ok(entry) => {
                add(&self.shared.blocks_sealed, 1);
                set(&self.shared.outbox_len, self.outbox.len() as u64);
                self.shared.set_head(entry.height, entry.hash);
                let _ = self.publish_tx.send(PubCmd::Block {
                    height: entry.height,
                    hash: entry.hash,
                    bytes: Some(Bytes::from(u.block)),
                    path: entry.path,
                });
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "sealed block not written to the outbox; retrying");
                Some(u)
            }
        }
    }

    fn confirm(&mut self, height: u64, hash: &Hash, compacted_to: &mut u64) {
        match self.outbox.confirm(height, hash) {
            Ok(true) => {
                add(&self.shared.blocks_confirmed, 1);
                set(&self.shared.outbox_len, self.outbox.len() as u64);
                let upto = self.outbox.confirmed_jsn();
                if upto > *compacted_to {
                    *compacted_to = upto;
                    let _ = self.compact_tx.send(upto);
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, height, "confirmed block could not be removed from the outbox")
            }
        }
    }
}
