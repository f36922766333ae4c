//! What the relay's threads and tasks share: the messages they send each
//! other, the stop signals, the block lifecycle behind its lock, and the
//! core's clock. The loops themselves live in [`crate::ingest`],
//! [`crate::chain`] and [`crate::publisher`]; they import this module and
//! never each other.
//!
//! ```text
//!  radio ──frame──▶ [ingress thread] ──FrameRecord──────────▶ [journal thread]
//!                     ▲  ACKs when `committed` passes              │ group commit, fsync
//!                     └──────── committed jsn (AtomicU64) ─────────┤
//!                                                                  │ ChainEvent::Frames
//!                   compaction: upto jsn (u64) ◀──────────┐        ▼
//!  [PoW workers] ◀──job── [chain thread] ◀──ChainEvent::Confirmed / Refused── [outbox task]
//!       └────PowReport─────▶  batch, seal, outbox file ──PubCmd::Block──────▶   publish QoS 1
//!                                                                                  ▲ NetEvent
//!  RelayHandle ──ChainEvent::Flush / Shutdown──▶ chain      broker ◀─▶ [network task]
//!  RelayHandle ──PubCmd::Shutdown──────────────▶ outbox task
//!  RelayHandle ──Signals (stop, abort)─────────▶ every thread
//! ```
//!
//! The chain thread and the outbox task both drive the one
//! [`SharedLifecycle`]: the chain feeds it frames and solutions, the outbox
//! task asks it what to publish and applies receipts to it. [`Shared`]
//! (counters) is written by all and read by [`crate::RelayHandle::stats`].
//!
//! [`Shared`]: crate::stats::Shared

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use gridpow_proto::lifecycle::{BlockLifecycle, OutboxEntry};
use gridpow_proto::wire::ReceiptRepr;
use gridpow_proto::Hash;
use tokio::sync::oneshot;

use crate::journal::FrameRecord;

/// Stop signals shared by the relay's threads.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Finish current work, send the ACKs that are due, then stop.
    pub stop: AtomicBool,
    /// Stop now, as if the process had been killed: no more writes, no ACKs.
    pub abort: AtomicBool,
}

impl Signals {
    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.aborted()
    }
}

/// Input of the chain thread, from the journal thread, the outbox task and
/// the handle.
#[derive(Debug)]
pub(crate) enum ChainEvent {
    /// Frames committed to the journal that delivered new readings, in jsn order.
    Frames(Vec<FrameRecord>),
    /// The lifecycle confirmed this block by a receipt: delete its file.
    Confirmed { height: u64, hash: Hash },
    /// The server refused this block for good: move its file to `refused/`.
    Refused { height: u64, hash: Hash },
    /// Seal everything pending now.
    Flush,
    /// Stop (pending frames stay in the journal and are sealed after restart).
    Shutdown,
}

/// Commands to the outbox task, from the chain thread and the handle.
#[derive(Debug)]
pub(crate) enum PubCmd {
    /// A block sealed (or found in the outbox at start) that awaits its receipt.
    Block {
        height: u64,
        bytes: Option<Bytes>,
        path: PathBuf,
    },
    /// Publish the offline status, disconnect, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// What the network task tells the outbox task.
#[derive(Debug)]
pub(crate) enum NetEvent {
    Connected,
    Disconnected,
    /// A receipt whose server signature and relay id verified.
    Receipt(ReceiptRepr),
    /// The log's retained checkpoint note (unverified: the watch checks it).
    Checkpoint(bytes::Bytes),
    /// A log proof on this relay's proof topic (unverified).
    LogProof(bytes::Bytes),
}

/// The lifecycle over heap storage, shared by the chain thread and the outbox task.
pub(crate) type Lifecycle = BlockLifecycle<Vec<u8>, Vec<OutboxEntry>>;

/// The lifecycle behind a lock (held only for short, non-blocking calls).
#[derive(Clone)]
pub(crate) struct SharedLifecycle(Arc<Mutex<Lifecycle>>);

impl SharedLifecycle {
    pub(crate) fn new(l: Lifecycle) -> Self {
        SharedLifecycle(Arc::new(Mutex::new(l)))
    }
    /// The lifecycle; a panic elsewhere while holding the lock leaves plain
    /// data that is still consistent call by call, so the poison is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Lifecycle> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The protocol core's monotonic clock for this process.
pub(crate) fn proto_now() -> gridpow_proto::Instant {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    let base = BASE.get_or_init(std::time::Instant::now);
    gridpow_proto::Instant::from_micros(base.elapsed().as_micros() as u64)
}
