//! The relay's half of the protocol after the ingress: one block lifecycle
//! for every relay (the Linux relay and the ESP32 firmware drive the same
//! machine).
//!
//! ```text
//! accepted frame ──handle_frame──▶ pending batch (room accounting, age)
//!        poll_job ──▶ header to solve      (pending batch becomes the block)
//! handle_solution ──▶ PoW checked, signed  (sealed block, not yet durable)
//!    sealed_block ──▶ caller writes it to its outbox storage (file, flash)
//!    handle_saved ──▶ chain tip advances, block waits for its receipt
//!    poll_publish ──▶ lowest due block of the in-flight window
//! handle_published / handle_connected / handle_disconnected
//!  handle_receipt ──▶ stored: forget the block; quarantined: keep, back off;
//!                    refused for good: forget it, the caller archives it
//! ```
//!
//! Sans-IO: time comes in as [`Instant`] and wall-clock milliseconds; the
//! proof of work is searched by the caller (worker threads on Linux, the SHA
//! accelerator in bounded chunks on the ESP32, or [`crate::pow::PowSolver`])
//! and handed back with [`BlockLifecycle::handle_solution`], which checks it.
//!
//! Storage is the caller's, in the smoltcp way: two block buffers (the batch
//! being filled and the block being sealed) and a slice of [`OutboxEntry`]
//! slots, given as anything that is `AsRef`/`AsMut` of a slice: static
//! arrays on the ESP32, `Vec`s on Linux. The bytes of sealed blocks live in
//! the caller's durable outbox (files, flash); the machine keeps only their
//! metadata.
//!
//! Each frame is pushed with a caller *record number* (its journal sequence
//! number), increasing; blocks report the record range they cover, and
//! [`BlockLifecycle::confirmed_through`] says up to which record everything
//! is confirmed by the server, i.e. what the caller's journal may forget.
//!
//! The rules of docs/protocol.md §7 and §10 live here and nowhere else:
//! a frame is admitted only if it will fit (so a frame the ingress accepted
//! is never dropped for lack of room, see [`BlockLifecycle::admits`]); a
//! block is forgotten only on a verified receipt with status *stored*,
//! *already stored* or *refused* (for good) naming its relay, height and
//! hash; a *quarantined* receipt keeps it and offers it again after a
//! doubling delay.

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::block::sign_header;
use crate::crypto::CryptoProvider;
use crate::merkle::RootBuilder;
use crate::pow::check_work;
use crate::wire::block::{
    BlockHeaderRepr, HEADER_LEN, LEAF_PREFIX_LEN, LEAVES_OFFSET, MAX_LEAVES, SIGNATURE_LEN,
};
use crate::wire::receipt::{ReceiptRepr, ReceiptStatus};
use crate::wire::ESPNOW_MAX_PAYLOAD;
use crate::{Capacity, Duration, Error, Hash, Instant, Misuse, Rejected};

/// Settings of the block lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// This relay's id (in block headers; receipts must name it).
    pub relay_id: u32,
    /// PoW difficulty in leading zero bits.
    pub difficulty: u8,
    /// A block is sealed when it holds this many frames (≤ 65 535).
    pub max_frames: u32,
    /// …or when its oldest frame waited this long.
    pub max_age: Duration,
    /// An unconfirmed block is published again after this long.
    pub republish_after: Duration,
    /// First wait before a quarantined block is offered again; it doubles
    /// with every further quarantine, up to 64 times.
    pub quarantine_retry: Duration,
    /// Blocks published and awaiting their receipts at once (lowest heights first).
    pub max_inflight: usize,
}

/// Where the chain stands: the next block's height and parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainTip {
    /// Height the next block gets (0: no block yet).
    pub next_height: u64,
    /// Hash of the newest block (zeros before the genesis block).
    pub prev_hash: Hash,
}

/// An outbox slot: a sealed, durable block awaiting its receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxEntry {
    used: bool,
    /// Height.
    pub height: u64,
    /// Header hash.
    pub hash: Hash,
    /// Block message length in bytes.
    pub len: u32,
    /// Caller record number of its first frame.
    pub first_record: u64,
    /// Caller record number of its last frame.
    pub last_record: u64,
    /// When it was last handed to the transport (`None`: due now).
    pub last_sent: Option<Instant>,
    /// Not due before this (quarantine back-off).
    pub not_before: Option<Instant>,
    /// Whether it was ever published.
    pub published: bool,
    /// Quarantined receipts received for it.
    pub quarantined: u8,
}

impl OutboxEntry {
    /// A free slot (the initial value of caller storage).
    pub const FREE: OutboxEntry = OutboxEntry {
        used: false,
        height: 0,
        hash: [0; 32],
        len: 0,
        first_record: 0,
        last_record: 0,
        last_sent: None,
        not_before: None,
        published: false,
        quarantined: 0,
    };

    /// Whether the slot holds a block.
    pub fn is_used(&self) -> bool {
        self.used
    }
}

/// A sealed block, signed, waiting to be written to durable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedBlock<'a> {
    /// Its header (nonce set).
    pub header: BlockHeaderRepr,
    /// Header hash.
    pub hash: Hash,
    /// The block message (§9.2).
    pub bytes: &'a [u8],
    /// Caller record number of its first frame.
    pub first_record: u64,
    /// Caller record number of its last frame.
    pub last_record: u64,
}

/// A block to hand to the transport now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishOrder {
    /// Height.
    pub height: u64,
    /// Header hash (to find its bytes).
    pub hash: Hash,
    /// Whether it was published before (a republish).
    pub republish: bool,
}

/// What a verified receipt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The server stored the block: the caller deletes it from its outbox,
    /// and its journal may forget records up to [`BlockLifecycle::confirmed_through`].
    Confirmed {
        /// Height.
        height: u64,
        /// Header hash.
        hash: Hash,
        /// Caller record number of its last frame.
        last_record: u64,
    },
    /// The server refused and kept the bytes: the block stays in the outbox
    /// and is offered again after `retry_in`.
    Quarantined {
        /// Height.
        height: u64,
        /// Delay before it is offered again.
        retry_in: Duration,
    },
    /// The server refused the block for good (status 3): offering it again
    /// can never succeed. The machine forgets it like a confirmed block (so it
    /// no longer holds an in-flight slot, and the journal may forget its
    /// records); the caller logs an error and archives the block's bytes
    /// where it can before deleting them from its outbox.
    Refused {
        /// Height.
        height: u64,
        /// Header hash.
        hash: Hash,
        /// Caller record number of its last frame.
        last_record: u64,
    },
    /// A repeated receipt (QoS 1 redelivery, two servers) or one for a block
    /// no longer held: harmless, nothing changes.
    NoSuchBlock,
}

/// Counters; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleStats {
    /// Frames taken into batches.
    pub frames_batched: u64,
    /// Blocks sealed (solved, checked and signed).
    pub blocks_sealed: u64,
    /// Solutions refused because they did not meet the difficulty.
    pub bad_solutions: u64,
    /// First publications.
    pub blocks_published: u64,
    /// Publications of a block published before.
    pub blocks_republished: u64,
    /// Blocks confirmed by a receipt.
    pub blocks_confirmed: u64,
    /// Quarantined receipts for our blocks.
    pub blocks_quarantined: u64,
    /// Blocks the server refused for good.
    pub blocks_refused: u64,
    /// Receipts refused (malformed, bad signature, other relay).
    pub receipts_rejected: u64,
    /// Verified receipts for no block held.
    pub receipts_unmatched: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// No block in the sealing buffer.
    Idle,
    /// The sealing buffer holds leaves; the header is being solved.
    Solving,
    /// Solved and signed; waiting for the caller to make it durable.
    Sealed { hash: Hash, len: usize },
}

/// The block lifecycle over caller storage: `B` holds block bytes, `E` the
/// outbox slots. See the module docs.
pub struct BlockLifecycle<B, E> {
    cfg: LifecycleConfig,
    tip: ChainTip,
    pending: B,
    pending_len: usize,
    pending_count: u32,
    pending_root: RootBuilder,
    pending_since: Option<Instant>,
    pending_records: Option<(u64, u64)>,
    newest_record: Option<u64>,
    flush: bool,
    sealing: B,
    stage: Stage,
    header: BlockHeaderRepr,
    sealing_records: (u64, u64),
    /// Bytes of the block message in the sealing buffer.
    sealing_len: usize,
    outbox: E,
    connected: bool,
    stats: LifecycleStats,
}

impl<B, E> BlockLifecycle<B, E>
where
    B: AsRef<[u8]> + AsMut<[u8]>,
    E: AsRef<[OutboxEntry]> + AsMut<[OutboxEntry]>,
{
    /// A lifecycle continuing the chain at `tip`, with two block buffers of
    /// the same size (which bounds a block's bytes) and `outbox` slots
    /// (every slot is reset to free; restore blocks with [`Self::restore`]).
    pub fn new(
        cfg: LifecycleConfig,
        tip: ChainTip,
        pending: B,
        sealing: B,
        mut outbox: E,
    ) -> Result<Self, Error> {
        let cap = pending.as_ref().len();
        if cap < LEAVES_OFFSET + LEAF_PREFIX_LEN + 1
            || sealing.as_ref().len() != cap
            || outbox.as_ref().is_empty()
            || cfg.max_frames == 0
            || cfg.max_frames > MAX_LEAVES
            || cfg.max_inflight == 0
        {
            return Err(Misuse::InvalidArgument.into());
        }
        outbox.as_mut().fill(OutboxEntry::FREE);
        Ok(BlockLifecycle {
            cfg,
            tip,
            pending,
            pending_len: LEAVES_OFFSET,
            pending_count: 0,
            pending_root: RootBuilder::new(),
            pending_since: None,
            pending_records: None,
            newest_record: None,
            flush: false,
            sealing,
            stage: Stage::Idle,
            header: empty_header(),
            sealing_records: (0, 0),
            sealing_len: 0,
            outbox,
            connected: false,
            stats: LifecycleStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }
    /// Counters.
    pub fn stats(&self) -> &LifecycleStats {
        &self.stats
    }
    /// The chain tip: the next block's height and parent.
    pub fn tip(&self) -> ChainTip {
        self.tip
    }
    /// Frames waiting in the pending batch.
    pub fn pending_frames(&self) -> u32 {
        self.pending_count
    }
    /// Frames in the block being solved or saved.
    pub fn sealing_frames(&self) -> u32 {
        match self.stage {
            Stage::Idle => 0,
            _ => self.header.leaf_count,
        }
    }
    /// Whether a block is being solved.
    pub fn is_solving(&self) -> bool {
        self.stage == Stage::Solving
    }
    /// The header being solved, if any.
    pub fn job(&self) -> Option<&BlockHeaderRepr> {
        (self.stage == Stage::Solving).then_some(&self.header)
    }
    /// Blocks awaiting their receipts.
    pub fn outbox_len(&self) -> usize {
        self.outbox.as_ref().iter().filter(|e| e.used).count()
    }
    /// The outbox slots (free ones included).
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.outbox.as_ref().iter().filter(|e| e.used)
    }
    /// Whether the transport is connected.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether a frame of `frame_len` bytes can be taken now. This is the
    /// admission rule: a relay asks it **before** its ingress judges a frame,
    /// because once the ingress accepts a frame its replay window remembers
    /// it and a retransmission is ACKed as a duplicate; a frame accepted and
    /// then dropped for lack of room would be lost. When the batch is full it
    /// is sealed first if the sealing buffer is free (`wall_ms` stamps it,
    /// `provider` computes its Merkle root).
    pub fn admits<C: CryptoProvider>(
        &mut self,
        provider: &C,
        frame_len: usize,
        wall_ms: u64,
    ) -> bool {
        if self.pending_fits(frame_len) {
            return true;
        }
        self.start_job(provider, wall_ms);
        self.pending_fits(frame_len)
    }

    fn pending_fits(&self, frame_len: usize) -> bool {
        self.pending_count < self.cfg.max_frames
            && self.pending_len + LEAF_PREFIX_LEN + frame_len <= self.pending.as_ref().len()
    }

    /// Takes a frame the ingress accepted (with new readings) into the
    /// pending batch, hashing it into the batch's Merkle root on `provider`.
    /// `record` is the caller's record number (journal sequence number),
    /// increasing from frame to frame.
    pub fn handle_frame<C: CryptoProvider>(
        &mut self,
        provider: &C,
        now: Instant,
        frame: &[u8],
        record: u64,
    ) -> Result<(), Error> {
        if frame.is_empty() || frame.len() > ESPNOW_MAX_PAYLOAD {
            return Err(Misuse::InvalidArgument.into());
        }
        if !self.pending_fits(frame.len()) {
            return Err(Capacity::BlockFull.into());
        }
        let at = self.pending_len;
        let buf = self.pending.as_mut();
        buf[at..at + LEAF_PREFIX_LEN].copy_from_slice(&(frame.len() as u16).to_le_bytes());
        buf[at + LEAF_PREFIX_LEN..at + LEAF_PREFIX_LEN + frame.len()].copy_from_slice(frame);
        self.pending_len += LEAF_PREFIX_LEN + frame.len();
        self.pending_count += 1;
        self.pending_root.push_leaf(provider, frame);
        self.pending_since.get_or_insert(now);
        self.pending_records = Some(match self.pending_records {
            Some((first, _)) => (first, record),
            None => (record, record),
        });
        self.note_record(record);
        self.stats.frames_batched += 1;
        Ok(())
    }

    /// Seal what is pending as soon as possible, regardless of count and age.
    pub fn request_flush(&mut self) {
        self.flush = self.pending_count > 0;
    }

    /// Starts solving the pending batch when it is due (full, old enough or
    /// flushed) and the sealing buffer and an outbox slot are free; returns
    /// the header to solve. `wall_ms` is the relay's Unix time in ms;
    /// `provider` computes the block's Merkle root.
    pub fn poll_job<C: CryptoProvider>(
        &mut self,
        provider: &C,
        now: Instant,
        wall_ms: u64,
    ) -> Option<BlockHeaderRepr> {
        let due = self.flush
            || self.pending_count >= self.cfg.max_frames
            || self
                .pending_since
                .is_some_and(|t| now >= t + self.cfg.max_age);
        if due {
            self.start_job(provider, wall_ms);
        }
        self.job().copied()
    }

    fn start_job<C: CryptoProvider>(&mut self, provider: &C, wall_ms: u64) {
        if self.stage != Stage::Idle
            || self.pending_count == 0
            || !self.outbox.as_ref().iter().any(|e| !e.used)
        {
            return;
        }
        core::mem::swap(&mut self.pending, &mut self.sealing);
        self.header = BlockHeaderRepr {
            difficulty: self.cfg.difficulty,
            relay_id: self.cfg.relay_id,
            height: self.tip.next_height,
            prev_hash: self.tip.prev_hash,
            merkle_root: self.pending_root.root(provider),
            leaf_count: self.pending_count,
            time_ms: wall_ms,
            nonce: 0,
        };
        self.sealing_records = self.pending_records.unwrap_or_default();
        self.sealing_len = self.pending_len;
        self.pending_len = LEAVES_OFFSET;
        self.pending_count = 0;
        self.pending_root = RootBuilder::new();
        self.pending_since = None;
        self.pending_records = None;
        self.flush = false;
        self.stage = Stage::Solving;
    }

    /// Takes a nonce for the header being solved: checks that it meets the
    /// difficulty (a faulty worker cannot seal a bad block), signs, and
    /// leaves the sealed block for [`Self::sealed_block`].
    pub fn handle_solution<C: CryptoProvider>(
        &mut self,
        provider: &C,
        nonce: u64,
        key: &SigningKey,
    ) -> Result<Hash, Error> {
        if self.stage != Stage::Solving {
            return Err(Misuse::InvalidArgument.into());
        }
        let mut header = self.header;
        header.nonce = nonce;
        let hash = header.hash(provider);
        if let Err(e) = check_work(&hash, header.difficulty) {
            self.stats.bad_solutions += 1;
            return Err(e.into());
        }
        let sig = sign_header(provider, &header, key);
        let buf = self.sealing.as_mut();
        buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        buf[HEADER_LEN..HEADER_LEN + SIGNATURE_LEN].copy_from_slice(&sig);
        self.header = header;
        self.stage = Stage::Sealed {
            hash,
            len: self.sealing_len,
        };
        self.stats.blocks_sealed += 1;
        Ok(hash)
    }

    /// The sealed block the caller must make durable (then
    /// [`Self::handle_saved`]); `None` while nothing is sealed. Until it is
    /// saved no further block is started, so a failed write is retried by
    /// calling this again.
    pub fn sealed_block(&self) -> Option<SealedBlock<'_>> {
        let Stage::Sealed { hash, len } = self.stage else {
            return None;
        };
        Some(SealedBlock {
            header: self.header,
            hash,
            bytes: self.sealing.as_ref().get(..len)?,
            first_record: self.sealing_records.0,
            last_record: self.sealing_records.1,
        })
    }

    /// The sealed block is durable: it enters the outbox and the chain tip
    /// moves past it. Returns its outbox entry.
    pub fn handle_saved(&mut self) -> Result<OutboxEntry, Error> {
        let Stage::Sealed { hash, len } = self.stage else {
            return Err(Misuse::InvalidArgument.into());
        };
        let entry = OutboxEntry {
            used: true,
            height: self.header.height,
            hash,
            len: len as u32,
            first_record: self.sealing_records.0,
            last_record: self.sealing_records.1,
            ..OutboxEntry::FREE
        };
        self.insert(entry)?;
        self.tip = ChainTip {
            next_height: self.header.height + 1,
            prev_hash: hash,
        };
        self.stage = Stage::Idle;
        Ok(entry)
    }

    /// Puts back a block found in durable storage at start (not yet published
    /// in this run). The chain tip is the caller's (`new`).
    pub fn restore(
        &mut self,
        height: u64,
        hash: Hash,
        len: u32,
        records: (u64, u64),
    ) -> Result<(), Error> {
        if self
            .outbox
            .as_ref()
            .iter()
            .any(|e| e.used && e.height == height)
        {
            return Err(Misuse::InvalidArgument.into());
        }
        self.note_record(records.1);
        self.insert(OutboxEntry {
            used: true,
            height,
            hash,
            len,
            first_record: records.0,
            last_record: records.1,
            ..OutboxEntry::FREE
        })
    }

    fn note_record(&mut self, record: u64) {
        self.newest_record = Some(self.newest_record.map_or(record, |n| n.max(record)));
    }

    fn insert(&mut self, entry: OutboxEntry) -> Result<(), Error> {
        let slot = self
            .outbox
            .as_mut()
            .iter_mut()
            .find(|e| !e.used)
            .ok_or(Capacity::OutboxFull)?;
        *slot = entry;
        Ok(())
    }

    /// The transport (re)connected: whatever was in flight may be lost, so
    /// the whole window is due again.
    pub fn handle_connected(&mut self) {
        self.connected = true;
        for e in self.outbox.as_mut().iter_mut().filter(|e| e.used) {
            e.last_sent = None;
        }
    }

    /// The transport lost its connection: nothing is published until it is back.
    pub fn handle_disconnected(&mut self) {
        self.connected = false;
    }

    /// The block of the in-flight window (the `max_inflight` lowest heights)
    /// that is due now: never sent in this connection, or its receipt is
    /// `republish_after` late, and not held back by a quarantine; lowest
    /// height first. `None` while disconnected. After handing it to the
    /// transport, call [`Self::handle_published`].
    pub fn poll_publish(&self, now: Instant) -> Option<PublishOrder> {
        if !self.connected {
            return None;
        }
        let mut best: Option<&OutboxEntry> = None;
        for e in self.window() {
            let due = e.not_before.is_none_or(|t| now >= t)
                && e.last_sent
                    .is_none_or(|t| now >= t + self.cfg.republish_after);
            if due && best.is_none_or(|b| e.height < b.height) {
                best = Some(e);
            }
        }
        best.map(|e| PublishOrder {
            height: e.height,
            hash: e.hash,
            republish: e.published,
        })
    }

    /// The `max_inflight` lowest outbox entries.
    fn window(&self) -> impl Iterator<Item = &OutboxEntry> + '_ {
        let entries = self.outbox.as_ref();
        // The window's upper bound: the max_inflight-th lowest height.
        let mut bound = u64::MAX;
        let used = entries.iter().filter(|e| e.used).count();
        if used > self.cfg.max_inflight {
            // Few slots (firmware) or a rare deep outbox (Linux): a selection
            // by repeated minimum is O(window × slots) and allocation-free.
            let mut below = None::<u64>;
            for _ in 0..self.cfg.max_inflight {
                below = entries
                    .iter()
                    .filter(|e| e.used && below.is_none_or(|b| e.height > b))
                    .map(|e| e.height)
                    .min();
            }
            bound = below.unwrap_or(u64::MAX);
        }
        entries.iter().filter(move |e| e.used && e.height <= bound)
    }

    /// The transport took the block at `height` (QoS 1: the broker will have it).
    pub fn handle_published(&mut self, height: u64, now: Instant) {
        if let Some(e) = self.entry_mut(height) {
            e.last_sent = Some(now);
            e.not_before = None;
            let first = !e.published;
            e.published = true;
            if first {
                self.stats.blocks_published += 1;
            } else {
                self.stats.blocks_republished += 1;
            }
        }
    }

    fn entry_mut(&mut self, height: u64) -> Option<&mut OutboxEntry> {
        self.outbox
            .as_mut()
            .iter_mut()
            .find(|e| e.used && e.height == height)
    }

    /// Judges a commit receipt (§10): verifies the server's signature on
    /// `provider` and the relay id, then applies it to the outbox. A refused
    /// receipt changes nothing and is counted.
    pub fn handle_receipt<C: CryptoProvider>(
        &mut self,
        provider: &C,
        now: Instant,
        bytes: &[u8],
        server_key: &VerifyingKey,
    ) -> Result<ReceiptOutcome, Error> {
        let r = match ReceiptRepr::parse_verified(provider, bytes, server_key) {
            Ok(r) if r.relay_id == self.cfg.relay_id => r,
            Ok(_) => {
                self.stats.receipts_rejected += 1;
                return Err(Rejected::WrongRelay.into());
            }
            Err(e) => {
                self.stats.receipts_rejected += 1;
                return Err(e);
            }
        };
        Ok(self.apply_receipt(now, &r))
    }

    /// Applies a receipt already verified by the caller (signature and relay id).
    pub fn apply_receipt(&mut self, now: Instant, r: &ReceiptRepr) -> ReceiptOutcome {
        let retry = self.cfg.quarantine_retry;
        let Some(e) = self.entry_mut(r.height).filter(|e| e.hash == r.block_hash) else {
            self.stats.receipts_unmatched += 1;
            return ReceiptOutcome::NoSuchBlock;
        };
        match r.status {
            ReceiptStatus::Quarantined => {
                // Not stored. Keep it: a quarantine can be cured (a meter
                // registered late), and a receipt for a forged copy carrying
                // our header must not make us forget the genuine block.
                e.quarantined = e.quarantined.saturating_add(1);
                let retry_in = retry.saturating_shl(u32::from(e.quarantined.min(6)));
                // Due again when the back-off ends, however late the next
                // regular republish would be.
                e.not_before = Some(now + retry_in);
                e.last_sent = None;
                let height = e.height;
                self.stats.blocks_quarantined += 1;
                ReceiptOutcome::Quarantined { height, retry_in }
            }
            ReceiptStatus::Stored | ReceiptStatus::AlreadyStored => {
                let out = ReceiptOutcome::Confirmed {
                    height: e.height,
                    hash: e.hash,
                    last_record: e.last_record,
                };
                *e = OutboxEntry::FREE;
                self.stats.blocks_confirmed += 1;
                out
            }
            ReceiptStatus::Refused => {
                // Signed by the server and bound to this hash: no forged copy
                // can cause it, and keeping the block would hold an in-flight
                // slot for ever.
                let out = ReceiptOutcome::Refused {
                    height: e.height,
                    hash: e.hash,
                    last_record: e.last_record,
                };
                *e = OutboxEntry::FREE;
                self.stats.blocks_refused += 1;
                out
            }
        }
    }

    /// Every record up to this number is in a block the server confirmed:
    /// the caller's journal may forget them. `None` when no record is known.
    pub fn confirmed_through(&self) -> Option<u64> {
        let lowest_needed = self
            .outbox
            .as_ref()
            .iter()
            .filter(|e| e.used)
            .map(|e| e.first_record)
            .chain((self.stage != Stage::Idle).then_some(self.sealing_records.0))
            .chain(self.pending_records.map(|r| r.0))
            .min();
        match lowest_needed {
            Some(r) => Some(r.saturating_sub(1)),
            None => self.newest_record,
        }
    }

    /// When the machine next has something to do without input: the pending
    /// batch's age deadline or the next republish. The caller wakes then
    /// (or earlier, on input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let seal = (self.stage == Stage::Idle)
            .then_some(self.pending_since.map(|t| t + self.cfg.max_age))
            .flatten();
        let publish = self
            .connected
            .then(|| {
                self.window()
                    .map(|e| match (e.last_sent, e.not_before) {
                        (Some(t), nb) => {
                            let at = t + self.cfg.republish_after;
                            nb.map_or(at, |n| if n > at { n } else { at })
                        }
                        (None, Some(n)) => n,
                        (None, None) => Instant::ZERO,
                    })
                    .min()
            })
            .flatten();
        match (seal, publish) {
            (Some(a), Some(b)) => Some(if a < b { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

fn empty_header() -> BlockHeaderRepr {
    BlockHeaderRepr {
        difficulty: 0,
        relay_id: 0,
        height: 0,
        prev_hash: [0; 32],
        merkle_root: [0; 32],
        leaf_count: 0,
        time_ms: 0,
        nonce: 0,
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;
    use crate::pow::PowSolver;
    use crate::wire::block::signing_message;
    use crate::wire::receipt::RECEIPT_LEN;
    use crate::wire::BlockPacket;
    use ed25519_dalek::SigningKey;

    const SLOTS: usize = 4;
    type Machine = BlockLifecycle<[u8; 2048], [OutboxEntry; SLOTS]>;

    fn cfg() -> LifecycleConfig {
        LifecycleConfig {
            relay_id: 7,
            difficulty: 4,
            max_frames: 3,
            max_age: Duration::from_secs(1),
            republish_after: Duration::from_secs(30),
            quarantine_retry: Duration::from_secs(30),
            max_inflight: 2,
        }
    }

    fn machine(c: LifecycleConfig) -> Machine {
        BlockLifecycle::new(
            c,
            ChainTip::default(),
            [0; 2048],
            [0; 2048],
            [OutboxEntry::FREE; SLOTS],
        )
        .expect("valid storage")
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }
    fn server() -> SigningKey {
        SigningKey::from_bytes(&[9; 32])
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Solves, signs and saves the current job; returns its outbox entry.
    fn seal(m: &mut Machine) -> OutboxEntry {
        let header = *m.job().expect("a job");
        let mut solver = PowSolver::new(&RustCrypto, &header, 0, 1);
        let nonce = loop {
            if let Some(n) = solver.solve_for(&RustCrypto, 1 << 12) {
                break n;
            }
        };
        m.handle_solution(&RustCrypto, nonce, &key())
            .expect("valid solution");
        m.handle_saved().expect("outbox room")
    }

    /// With `max_frames: 1`: one frame in, its block sealed and saved.
    fn one_frame_block(m: &mut Machine, record: u64) -> OutboxEntry {
        m.handle_frame(&RustCrypto, t(0), &[1; 40], record)
            .expect("room");
        m.poll_job(&RustCrypto, t(0), 1).expect("job");
        seal(m)
    }

    fn receipt(status: ReceiptStatus, e: &OutboxEntry, relay_id: u32) -> [u8; RECEIPT_LEN] {
        let log = matches!(status, ReceiptStatus::Stored | ReceiptStatus::AlreadyStored).then_some(
            crate::wire::LogPosition {
                index: e.height,
                tree_size: e.height + 1,
            },
        );
        ReceiptRepr {
            status,
            relay_id,
            height: e.height,
            block_hash: e.hash,
            server_id: 1,
            time_ms: 5,
            log,
        }
        .to_signed_bytes(&RustCrypto, &server())
        .expect("a consistent receipt")
    }

    #[test]
    fn a_batch_is_sealed_by_count_by_age_or_by_flush() {
        let mut m = machine(cfg());
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 10)
            .expect("room");
        assert_eq!(
            m.poll_job(&RustCrypto, t(999), 1),
            None,
            "one frame, younger than max_age"
        );
        assert_eq!(m.poll_timeout(), Some(t(1000)));
        let h = m.poll_job(&RustCrypto, t(1000), 1).expect("old enough");
        assert_eq!((h.height, h.leaf_count, h.relay_id), (0, 1, 7));
        seal(&mut m);
        for r in 11..14 {
            m.handle_frame(&RustCrypto, t(2000), &[2; 40], r)
                .expect("room");
        }
        assert!(
            m.poll_job(&RustCrypto, t(2000), 2).is_some(),
            "three frames fill a block"
        );
        seal(&mut m);
        m.handle_frame(&RustCrypto, t(3000), &[3; 40], 14)
            .expect("room");
        m.request_flush();
        assert!(
            m.poll_job(&RustCrypto, t(3000), 3).is_some(),
            "a flush seals at once"
        );
    }

    #[test]
    fn sealed_blocks_chain_verify_and_carry_their_record_range() {
        let mut m = machine(cfg());
        let mut prev = [0u8; 32];
        for height in 0..3u64 {
            for i in 0..3 {
                m.handle_frame(&RustCrypto, t(0), &[height as u8 + 1; 50], height * 3 + i)
                    .expect("room");
            }
            m.poll_job(&RustCrypto, t(0), 42).expect("full batch");
            let header = *m.job().expect("job");
            let mut solver = PowSolver::new(&RustCrypto, &header, 0, 1);
            let nonce = loop {
                if let Some(n) = solver.solve_for(&RustCrypto, 1 << 12) {
                    break n;
                }
            };
            m.handle_solution(&RustCrypto, nonce, &key())
                .expect("solution");
            let sealed = m.sealed_block().expect("sealed");
            assert_eq!(
                (sealed.first_record, sealed.last_record),
                (height * 3, height * 3 + 2)
            );
            let p = BlockPacket::new_checked(sealed.bytes).expect("well-formed block");
            assert_eq!(p.header().height, height);
            assert_eq!(p.header().prev_hash, prev);
            assert_eq!(p.leaves().count(), 3);
            check_work(&sealed.hash, 4).expect("meets the difficulty");
            assert!(
                RustCrypto.ed25519_verify(
                    &key().verifying_key(),
                    &signing_message(&sealed.hash),
                    &p.signature(),
                ),
                "signed by the relay"
            );
            prev = sealed.hash;
            m.handle_saved().expect("room");
        }
        assert_eq!(m.tip().next_height, 3);
        assert_eq!(m.tip().prev_hash, prev);
    }

    #[test]
    fn a_solution_below_the_difficulty_is_refused_and_the_job_stays() {
        let mut m = machine(LifecycleConfig {
            difficulty: 20,
            ..cfg()
        });
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 1)
            .expect("room");
        m.request_flush();
        let h = m.poll_job(&RustCrypto, t(0), 1).expect("job");
        let bad = (0..).find(|n| {
            let mut x = h;
            x.nonce = *n;
            check_work(&x.hash(&RustCrypto), 20).is_err()
        });
        let err = m.handle_solution(&RustCrypto, bad.expect("some nonce fails"), &key());
        assert!(matches!(
            err,
            Err(Error::Rejected(Rejected::InsufficientWork { .. }))
        ));
        assert!(m.is_solving() && m.sealed_block().is_none());
        assert_eq!(m.stats().bad_solutions, 1);
    }

    #[test]
    fn admission_seals_a_full_batch_first_and_refuses_only_when_nothing_can_move() {
        let mut m = machine(cfg());
        for r in 0..3 {
            assert!(m.admits(&RustCrypto, 40, 1));
            m.handle_frame(&RustCrypto, t(0), &[1; 40], r)
                .expect("room");
        }
        assert!(
            m.admits(&RustCrypto, 40, 1),
            "the full batch moved to sealing"
        );
        assert!(m.is_solving());
        for r in 3..6 {
            m.handle_frame(&RustCrypto, t(0), &[1; 40], r)
                .expect("room");
        }
        assert!(
            !m.admits(&RustCrypto, 40, 1),
            "batch full, sealing busy: refuse before the ingress"
        );
        assert_eq!(
            m.handle_frame(&RustCrypto, t(0), &[1; 40], 6),
            Err(Capacity::BlockFull.into())
        );
        assert!(
            !m.admits(&RustCrypto, 4000, 1),
            "larger than a block never fits"
        );
    }

    #[test]
    fn a_full_outbox_stops_sealing_until_a_receipt_frees_a_slot() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            ..cfg()
        });
        let mut entries = [OutboxEntry::FREE; SLOTS];
        for (r, e) in entries.iter_mut().enumerate() {
            *e = one_frame_block(&mut m, r as u64);
        }
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 9)
            .expect("room");
        assert_eq!(m.poll_job(&RustCrypto, t(0), 1), None, "no outbox slot");
        assert!(!m.admits(&RustCrypto, 40, 1));
        let r = receipt(ReceiptStatus::Stored, &entries[0], 7);
        m.handle_receipt(&RustCrypto, t(1), &r, &server().verifying_key())
            .expect("verified");
        assert!(m.poll_job(&RustCrypto, t(1), 1).is_some());
    }

    #[test]
    fn a_refusal_for_good_frees_the_slot_and_stops_the_offers() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            max_inflight: 1,
            ..cfg()
        });
        let a = one_frame_block(&mut m, 1);
        let b = one_frame_block(&mut m, 2);
        m.handle_connected();
        assert_eq!(m.poll_publish(t(0)).map(|o| o.height), Some(0));
        m.handle_published(0, t(0));
        assert_eq!(m.poll_publish(t(1)), None, "one in flight");
        let pk = server().verifying_key();
        assert_eq!(
            m.handle_receipt(
                &RustCrypto,
                t(1_000),
                &receipt(ReceiptStatus::Refused, &a, 7),
                &pk
            ),
            Ok(ReceiptOutcome::Refused {
                height: 0,
                hash: a.hash,
                last_record: 1
            })
        );
        assert_eq!(m.outbox_len(), 1, "the refused block is forgotten");
        assert_eq!(m.stats().blocks_refused, 1);
        assert_eq!(m.confirmed_through(), Some(1), "its records may go");
        assert_eq!(
            m.poll_publish(t(1_000)).map(|o| o.height),
            Some(1),
            "the next block takes the slot"
        );
        m.handle_published(1, t(1_000));
        assert_eq!(
            m.handle_receipt(
                &RustCrypto,
                t(2_000),
                &receipt(ReceiptStatus::Refused, &a, 7),
                &pk
            ),
            Ok(ReceiptOutcome::NoSuchBlock),
            "a repeated refusal changes nothing"
        );
        assert_eq!(m.outbox_len(), 1);
        let _ = b;
    }

    #[test]
    fn quarantine_keeps_the_block_and_offers_it_again_after_a_doubling_delay() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            ..cfg()
        });
        let e = one_frame_block(&mut m, 1);
        m.handle_connected();
        assert_eq!(m.poll_publish(t(0)).map(|o| o.height), Some(0));
        m.handle_published(0, t(0));
        let pk = server().verifying_key();
        let q = receipt(ReceiptStatus::Quarantined, &e, 7);
        assert_eq!(
            m.handle_receipt(&RustCrypto, t(1_000), &q, &pk),
            Ok(ReceiptOutcome::Quarantined {
                height: 0,
                retry_in: Duration::from_secs(60)
            })
        );
        assert_eq!(m.outbox_len(), 1, "a quarantined block is kept");
        assert_eq!(m.confirmed_through(), Some(0), "its records are kept too");
        assert_eq!(m.poll_publish(t(60_999)), None);
        assert!(m.poll_publish(t(61_000)).is_some_and(|o| o.republish));
        m.handle_published(0, t(61_000));
        assert_eq!(
            m.handle_receipt(&RustCrypto, t(62_000), &q, &pk),
            Ok(ReceiptOutcome::Quarantined {
                height: 0,
                retry_in: Duration::from_secs(120)
            })
        );
        m.handle_connected();
        assert_eq!(
            m.poll_publish(t(62_000)),
            None,
            "a reconnect does not cut the back-off short"
        );
        let ok = receipt(ReceiptStatus::AlreadyStored, &e, 7);
        assert!(matches!(
            m.handle_receipt(&RustCrypto, t(63_000), &ok, &pk),
            Ok(ReceiptOutcome::Confirmed { height: 0, .. })
        ));
        assert_eq!(m.outbox_len(), 0);
        assert_eq!(m.stats().blocks_quarantined, 2);
    }

    #[test]
    fn a_quarantined_block_is_due_when_its_back_off_ends_even_if_republishing_is_slower() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            republish_after: Duration::from_secs(600),
            quarantine_retry: Duration::from_secs(1),
            ..cfg()
        });
        let e = one_frame_block(&mut m, 1);
        m.handle_connected();
        m.handle_published(0, t(0));
        let q = receipt(ReceiptStatus::Quarantined, &e, 7);
        m.handle_receipt(&RustCrypto, t(100), &q, &server().verifying_key())
            .expect("verified");
        assert_eq!(m.poll_timeout(), Some(t(2_100)));
        assert_eq!(m.poll_publish(t(2_099)), None);
        assert!(m.poll_publish(t(2_100)).is_some());
    }

    #[test]
    fn forged_foreign_or_unmatched_receipts_change_nothing() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            ..cfg()
        });
        let e = one_frame_block(&mut m, 1);
        let pk = server().verifying_key();
        let mut forged = receipt(ReceiptStatus::Stored, &e, 7);
        forged[100] ^= 1;
        assert!(m.handle_receipt(&RustCrypto, t(1), &forged, &pk).is_err());
        let foreign = receipt(ReceiptStatus::Stored, &e, 8);
        assert_eq!(
            m.handle_receipt(&RustCrypto, t(1), &foreign, &pk),
            Err(Rejected::WrongRelay.into())
        );
        let other_hash = receipt(
            ReceiptStatus::Stored,
            &OutboxEntry {
                hash: [0xAA; 32],
                ..e
            },
            7,
        );
        assert_eq!(
            m.handle_receipt(&RustCrypto, t(1), &other_hash, &pk),
            Ok(ReceiptOutcome::NoSuchBlock)
        );
        assert_eq!(m.outbox_len(), 1);
        assert_eq!(m.stats().receipts_rejected, 2);
    }

    #[test]
    fn publishing_keeps_a_window_republishes_late_blocks_and_resends_after_reconnect() {
        let mut m = machine(LifecycleConfig {
            max_frames: 1,
            ..cfg()
        });
        for r in 0..3 {
            one_frame_block(&mut m, r);
        }
        assert_eq!(m.poll_publish(t(0)), None, "disconnected");
        m.handle_connected();
        let mut sent = [0u64; 4];
        let mut n = 0;
        while let Some(o) = m.poll_publish(t(0)) {
            m.handle_published(o.height, t(0));
            sent[n] = o.height;
            n += 1;
        }
        assert_eq!(&sent[..n], &[0, 1], "window of two, lowest heights first");
        assert_eq!(m.poll_timeout(), Some(t(30_000)));
        assert_eq!(m.poll_publish(t(29_999)), None);
        let o = m.poll_publish(t(30_000)).expect("receipt late");
        assert!(o.republish && o.height == 0);
        m.handle_disconnected();
        m.handle_connected();
        assert_eq!(m.poll_publish(t(30_001)).map(|o| o.height), Some(0));
        assert_eq!(m.stats().blocks_published, 2);
    }

    #[test]
    fn confirmed_through_never_passes_a_record_still_needed() {
        let mut m = machine(LifecycleConfig {
            max_frames: 2,
            ..cfg()
        });
        assert_eq!(m.confirmed_through(), None);
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 10)
            .expect("room");
        let a = one_frame_block(&mut m, 11);
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 12)
            .expect("room");
        let b = one_frame_block(&mut m, 13);
        m.handle_frame(&RustCrypto, t(0), &[1; 40], 14)
            .expect("room");
        assert_eq!(m.confirmed_through(), Some(9));
        let pk = server().verifying_key();
        m.handle_receipt(
            &RustCrypto,
            t(0),
            &receipt(ReceiptStatus::Stored, &b, 7),
            &pk,
        )
        .expect("ok");
        assert_eq!(m.confirmed_through(), Some(9), "block a still waits");
        m.handle_receipt(
            &RustCrypto,
            t(0),
            &receipt(ReceiptStatus::Stored, &a, 7),
            &pk,
        )
        .expect("ok");
        assert_eq!(
            m.confirmed_through(),
            Some(13),
            "only the pending frame is needed"
        );
    }

    #[test]
    fn restored_blocks_are_published_and_a_duplicate_height_is_refused() {
        let mut m = machine(cfg());
        m.restore(5, [1; 32], 300, (1, 2)).expect("slot");
        assert!(m.restore(5, [2; 32], 300, (3, 4)).is_err());
        m.handle_connected();
        assert_eq!(
            m.poll_publish(t(0)),
            Some(PublishOrder {
                height: 5,
                hash: [1; 32],
                republish: false
            })
        );
    }

    #[test]
    fn storage_that_cannot_hold_a_block_is_refused() {
        let small = BlockLifecycle::new(
            cfg(),
            ChainTip::default(),
            [0u8; 100],
            [0u8; 100],
            [OutboxEntry::FREE; 1],
        );
        assert!(small.is_err());
        let (mut a, mut b, mut o) = ([0u8; 1000], [0u8; 999], [OutboxEntry::FREE; 1]);
        let uneven = BlockLifecycle::new(
            cfg(),
            ChainTip::default(),
            a.as_mut_slice(),
            &mut b[..],
            o.as_mut_slice(),
        );
        assert!(uneven.is_err());
    }
}
