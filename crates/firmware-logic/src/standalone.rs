//! Standalone mode of the relay firmware (the seed's design): the ESP32 runs
//! the protocol ingress itself, and the protocol core's block lifecycle
//! ([`gridpow_proto::lifecycle::BlockLifecycle`], the same machine the Linux
//! relay drives) batches accepted frames into blocks, checks the proof of
//! work found here in bounded chunks on the SHA accelerator (so reception
//! never stops), signs, and keeps every sealed block in the outbox until a
//! verified commit receipt with status *stored* names it.
//!
//! This module adds only what is the firmware's: driving the core's
//! proof-of-work search ([`PowSolver`]) on the ingress's crypto provider,
//! where frames, sealed blocks and the chain tip are kept
//! ([`RelayStore`]: the flash journal on the ESP32) and the wall clock gate. The network driver (MQTT over TLS, `gridpow-relay-net`) asks
//! [`StandaloneRelay::poll_publish`] what to send, reads the bytes with
//! [`StandaloneRelay::read_block`], and feeds receipts and connection
//! changes back.
//!
//! Capacity is checked before the ingress judges a frame (the lifecycle's
//! admission rule): once the ingress accepts a frame its replay window
//! remembers it, and a retransmission would be ACKed as a duplicate, so a
//! frame must never be accepted and then dropped.

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::crypto::{CryptoProvider, HopKeys};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, IngressStats, Verdict};
use gridpow_proto::lifecycle::{
    BlockLifecycle, ChainTip, LifecycleConfig, LifecycleStats, OutboxEntry, PublishOrder,
    ReceiptOutcome, SealedBlock,
};
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::block::{HEADER_LEN, SIGNATURE_LEN};
use gridpow_proto::{Duration, Error as ProtoError, Hash, Instant, MacAddr, Rejected};

use crate::journal::{Journal, JournalError};
use crate::provisioning::{RelayConfig, RelayMeter};
use crate::state::Flash;

/// Where the relay keeps what it acknowledged: accepted frames until a
/// confirmed block covers them, sealed blocks until their receipts, and the
/// chain tip. On the ESP32 this is the flash journal
/// ([`crate::journal::Journal`]); [`RamStore`] is for tests.
pub trait RelayStore {
    /// The storage's error.
    type Error: core::fmt::Debug;
    /// Whether a frame of `len` bytes can be appended now (asked before the
    /// ingress judges the frame).
    fn has_room(&mut self, len: usize) -> bool;
    /// Appends a frame durably; returns its record number (increasing). Only
    /// after `Ok` may the frame be ACKed.
    fn append_frame(
        &mut self,
        src: &MacAddr,
        wall_ms: u64,
        frame: &[u8],
    ) -> Result<u64, Self::Error>;
    /// Stores a sealed block (its leaves are the records
    /// `first_record..=last_record`) and the chain tip after it, durably and
    /// before it is published. `provider` hashes what the store must.
    fn save_block<C: CryptoProvider>(
        &mut self,
        provider: &C,
        block: &SealedBlock<'_>,
    ) -> Result<(), Self::Error>;
    /// Writes the block at `height` into `out`; returns its length.
    fn read_block(&mut self, height: u64, out: &mut [u8]) -> Option<usize>;
    /// The block's receipt arrived: forget it and the frames only it held.
    fn confirm_block(&mut self, height: u64, hash: &Hash) -> Result<(), Self::Error>;
}

impl<F: Flash, const O: usize> RelayStore for Journal<F, O> {
    type Error = JournalError<F::Error>;
    fn has_room(&mut self, len: usize) -> bool {
        self.has_room_for(len).unwrap_or(false)
    }
    fn append_frame(
        &mut self,
        src: &MacAddr,
        wall_ms: u64,
        frame: &[u8],
    ) -> Result<u64, Self::Error> {
        self.append(src, wall_ms, frame)
    }
    fn save_block<C: CryptoProvider>(
        &mut self,
        provider: &C,
        block: &SealedBlock<'_>,
    ) -> Result<(), Self::Error> {
        let mut sig = [0u8; SIGNATURE_LEN];
        let s = block
            .bytes
            .get(HEADER_LEN..HEADER_LEN + SIGNATURE_LEN)
            .ok_or(JournalError::BufferTooSmall)?;
        sig.copy_from_slice(s);
        match self.add_block(provider, &block.header, &sig, block.first_record) {
            Ok(_) => Ok(()),
            // An earlier attempt failed after its record had landed whole:
            // the block is already the tip, so it is saved.
            Err(JournalError::NotNextBlock)
                if self.tip().prev_hash == block.hash
                    && self.tip().next_height == block.header.height + 1 =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
    fn read_block(&mut self, height: u64, out: &mut [u8]) -> Option<usize> {
        self.write_block(height, out).ok()
    }
    fn confirm_block(&mut self, height: u64, hash: &Hash) -> Result<(), Self::Error> {
        Journal::confirm_block(self, height, hash)
    }
}

/// Frames and sealed blocks in RAM (lost on reboot): for tests and for
/// boards without a journal partition only. `O` block slots of
/// `slots.len() / O` bytes.
pub struct RamStore<'a, const O: usize> {
    next_record: u64,
    slots: &'a mut [u8],
    held: [Option<(u64, usize)>; O],
}

/// Why a [`RamStore`] refused a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamStoreError {
    /// Every slot holds a block.
    Full,
    /// The block is larger than a slot.
    TooLarge,
}

impl<'a, const O: usize> RamStore<'a, O> {
    /// `O` slots of `slots.len() / O` bytes each.
    pub fn new(slots: &'a mut [u8]) -> Self {
        RamStore {
            next_record: 0,
            slots,
            held: [None; O],
        }
    }
    fn cap(&self) -> usize {
        self.slots.len() / O.max(1)
    }
}

impl<const O: usize> RelayStore for RamStore<'_, O> {
    type Error = RamStoreError;
    fn has_room(&mut self, _len: usize) -> bool {
        true
    }
    fn append_frame(&mut self, _: &MacAddr, _: u64, _: &[u8]) -> Result<u64, RamStoreError> {
        self.next_record += 1;
        Ok(self.next_record)
    }
    fn save_block<C: CryptoProvider>(
        &mut self,
        _provider: &C,
        block: &SealedBlock<'_>,
    ) -> Result<(), RamStoreError> {
        let cap = self.cap();
        if block.bytes.len() > cap {
            return Err(RamStoreError::TooLarge);
        }
        let i = self
            .held
            .iter()
            .position(Option::is_none)
            .ok_or(RamStoreError::Full)?;
        self.slots[i * cap..i * cap + block.bytes.len()].copy_from_slice(block.bytes);
        self.held[i] = Some((block.header.height, block.bytes.len()));
        Ok(())
    }
    fn read_block(&mut self, height: u64, out: &mut [u8]) -> Option<usize> {
        let cap = self.cap();
        let i = self
            .held
            .iter()
            .position(|h| h.is_some_and(|(x, _)| x == height))?;
        let (_, len) = self.held[i]?;
        out.get_mut(..len)?
            .copy_from_slice(&self.slots[i * cap..i * cap + len]);
        Some(len)
    }
    fn confirm_block(&mut self, height: u64, _hash: &Hash) -> Result<(), RamStoreError> {
        for h in &mut self.held {
            if h.is_some_and(|(x, _)| x == height) {
                *h = None;
            }
        }
        Ok(())
    }
}

/// Why a frame or receipt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayError {
    /// The protocol core refused it.
    Proto(ProtoError),
    /// The relay has no wall clock yet, so it cannot state its time in an ACK.
    NoWallClock,
    /// The pending batch, the sealing buffer or the journal is full: not
    /// accepted, not ACKed (the meter keeps it).
    Full,
    /// The journal could not make an accepted frame durable: it is not ACKed,
    /// and the relay refuses frames until it restarts (the ingress remembers
    /// the frame, so only a restart, which rebuilds it from the journal, may
    /// take it again).
    JournalFailed,
}

impl From<ProtoError> for RelayError {
    fn from(e: ProtoError) -> Self {
        RelayError::Proto(e)
    }
}

/// Counters of the firmware's part; the lifecycle and ingress count the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandaloneStats {
    /// Frames refused before the ingress because there was no room.
    pub refused_full: u64,
    /// Frames refused because the wall clock is unknown.
    pub refused_no_clock: u64,
    /// Frames refused after a journal failure.
    pub refused_journal: u64,
    /// PoW tries.
    pub pow_tries: u64,
    /// Store writes that failed (a sealed block is retried; a confirmation
    /// is redone by the next boot's republish).
    pub store_errors: u64,
}

/// Settings of the standalone relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandaloneConfig {
    /// Relay id (in ACKs and block headers).
    pub relay_id: u32,
    /// Radio channel stated in ACKs.
    pub channel: u8,
    /// PoW difficulty.
    pub difficulty: u8,
    /// Refuse frames from MACs not registered.
    pub require_registered_mac: bool,
    /// How long frames wait for more before a block is sealed.
    pub block_interval: Duration,
    /// Republish an unconfirmed block after this long.
    pub republish_after: Duration,
    /// Blocks published and awaiting receipts at once.
    pub max_inflight: usize,
}

impl StandaloneConfig {
    /// From the relay's provisioning blob.
    pub fn from_relay_config(c: &RelayConfig) -> Self {
        StandaloneConfig {
            relay_id: c.relay_id,
            channel: c.channel,
            difficulty: c.difficulty,
            require_registered_mac: c.require_registered_mac,
            block_interval: Duration::from_secs(u64::from(c.effective_block_interval_s())),
            republish_after: Duration::from_secs(30),
            max_inflight: 2,
        }
    }
}

/// The standalone relay over `M` meters. Its buffers are borrowed: `blocks`
/// is split into the batch being filled and the block being sealed (so it
/// bounds a block's bytes at half its length), `outbox` holds the metadata
/// of blocks awaiting receipts.
pub struct StandaloneRelay<'a, C, S, const M: usize>
where
    C: CryptoProvider,
    S: RelayStore,
{
    cfg: StandaloneConfig,
    ingress: Ingress<C, FixedMeterTable<M>>,
    lifecycle: BlockLifecycle<&'a mut [u8], &'a mut [OutboxEntry]>,
    signing: SigningKey,
    server_key: Option<VerifyingKey>,
    search: Option<PowSolver<C>>,
    store: S,
    store_failed: bool,
    stats: StandaloneStats,
}

/// Storage the relay borrows.
pub struct RelayStorage<'a> {
    /// Bytes of the two block buffers (split in half).
    pub blocks: &'a mut [u8],
    /// Outbox slots.
    pub outbox: &'a mut [OutboxEntry],
}

impl<'a, C, S, const M: usize> StandaloneRelay<'a, C, S, M>
where
    C: CryptoProvider,
    S: RelayStore,
{
    /// A relay over `meters`, continuing the chain at `tip` (the store's
    /// durable tip). Meters beyond `M` are dropped (the firmware logs the
    /// count). Restore the store's outbox and unsealed frames afterwards with
    /// [`Self::recover`] (flash journal) or [`Self::restore_block`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: StandaloneConfig,
        provider: C,
        meters: impl IntoIterator<Item = RelayMeter>,
        signing_seed: &[u8; 32],
        server_public_key: &[u8; 32],
        tip: ChainTip,
        store: S,
        storage: RelayStorage<'a>,
    ) -> Result<Self, ProtoError> {
        let mut table = FixedMeterTable::<M>::new();
        for m in meters {
            // A meter listed twice holds its hop keys under both key ids
            // (a site-secret rotation, protocol §3).
            let _ = table.insert_keys(m.meter_id, m.mac, HopKeys::new(m.key_id, &m.secret));
        }
        let ingress = Ingress::new(
            provider,
            IngressConfig {
                relay_id: cfg.relay_id,
                channel: cfg.channel,
                require_registered_mac: cfg.require_registered_mac,
            },
            table,
        );
        let half = storage.blocks.len() / 2;
        let (pending, rest) = storage.blocks.split_at_mut(half);
        let sealing = &mut rest[..half];
        let lifecycle = BlockLifecycle::new(
            LifecycleConfig {
                relay_id: cfg.relay_id,
                difficulty: cfg.difficulty,
                max_frames: gridpow_proto::wire::block::MAX_LEAVES,
                max_age: cfg.block_interval,
                republish_after: cfg.republish_after,
                quarantine_retry: Duration::from_secs(30),
                max_inflight: cfg.max_inflight.max(1),
            },
            tip,
            pending,
            sealing,
            storage.outbox,
        )?;
        Ok(StandaloneRelay {
            cfg,
            ingress,
            lifecycle,
            signing: SigningKey::from_bytes(signing_seed),
            server_key: gridpow_proto::crypto::strict_public_key(server_public_key).ok(),
            search: None,
            store,
            store_failed: false,
            stats: StandaloneStats::default(),
        })
    }

    /// Counters of the firmware's part.
    pub fn stats(&self) -> &StandaloneStats {
        &self.stats
    }
    /// Counters of the block lifecycle.
    pub fn lifecycle_stats(&self) -> &LifecycleStats {
        self.lifecycle.stats()
    }
    /// Counters of the ingress.
    pub fn ingress_stats(&self) -> &IngressStats {
        self.ingress.stats()
    }
    /// The chain tip (next height, previous hash).
    pub fn chain(&self) -> ChainTip {
        self.lifecycle.tip()
    }
    /// Frames waiting for the next block.
    pub fn pending_frames(&self) -> u32 {
        self.lifecycle.pending_frames()
    }
    /// The relay's Ed25519 public key (registered with the grid server).
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }
    /// Whether a block is being solved.
    pub fn is_solving(&self) -> bool {
        self.lifecycle.is_solving()
    }
    /// Sealed blocks waiting for a receipt.
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxEntry> + '_ {
        self.lifecycle.outbox()
    }
    /// When the relay next has work without input (sealing, republishing).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lifecycle.poll_timeout()
    }

    /// Puts back a block found in the durable store at boot.
    pub fn restore_block(
        &mut self,
        height: u64,
        hash: Hash,
        len: u32,
        records: (u64, u64),
    ) -> Result<(), RelayError> {
        Ok(self.lifecycle.restore(height, hash, len, records)?)
    }

    /// Judges a frame heard from `src` and writes its ACK into `ack_out`
    /// (returns its length) when it was accepted or is a duplicate.
    /// `wall_ms` is the relay's Unix time, `None` while unknown.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        wall_ms: Option<u64>,
        src: &MacAddr,
        frame: &[u8],
        ack_out: &mut [u8],
    ) -> Result<usize, RelayError> {
        let Some(wall_ms) = wall_ms else {
            self.stats.refused_no_clock += 1;
            return Err(RelayError::NoWallClock);
        };
        if self.store_failed {
            self.stats.refused_journal += 1;
            return Err(RelayError::JournalFailed);
        }
        let admitted = self
            .lifecycle
            .admits(self.ingress.provider(), frame.len(), wall_ms);
        if !admitted || !self.store.has_room(frame.len()) {
            self.stats.refused_full += 1;
            return Err(RelayError::Full);
        }
        let verdict = self.ingress.handle_frame(src, frame)?;
        if let Verdict::Accepted(info) = verdict {
            if info.new_readings() > 0 {
                let record = match self.store.append_frame(src, wall_ms, frame) {
                    Ok(r) => r,
                    Err(_) => {
                        // The ingress remembers the frame now; only a restart,
                        // which rebuilds it from the store, may take it again.
                        self.store_failed = true;
                        return Err(RelayError::JournalFailed);
                    }
                };
                self.lifecycle
                    .handle_frame(self.ingress.provider(), now, frame, record)?;
            }
        }
        Ok(self.ingress.emit_ack(&verdict, wall_ms, ack_out)?)
    }

    /// Seal everything pending as soon as possible.
    pub fn request_flush(&mut self) {
        self.lifecycle.request_flush();
    }

    /// Starts solving the pending frames when the block is due.
    pub fn poll_seal(&mut self, now: Instant, wall_ms: Option<u64>) {
        if let Some(wall) = wall_ms {
            let provider = self.ingress.provider();
            if let Some(h) = self.lifecycle.poll_job(provider, now, wall) {
                self.search
                    .get_or_insert_with(|| PowSolver::new(provider, &h, 0, 1));
            }
        }
    }

    /// Advances the PoW by at most `max_tries` hashes on the provider. When
    /// solved, the lifecycle checks and signs the block; it is then stored
    /// and the new chain tip persisted, and its outbox entry returned.
    pub fn poll_pow(&mut self, max_tries: u32) -> Option<OutboxEntry> {
        let provider = self.ingress.provider();
        if self.search.is_none() {
            // A job may also start when a full batch made room for a frame.
            self.search = self
                .lifecycle
                .job()
                .map(|h| PowSolver::new(provider, h, 0, 1));
        }
        if let Some(s) = self.search.as_mut() {
            let before = s.tries();
            let found = s.solve_for(provider, u64::from(max_tries));
            self.stats.pow_tries += s.tries() - before;
            if let Some(nonce) = found {
                self.search = None;
                if self
                    .lifecycle
                    .handle_solution(provider, nonce, &self.signing)
                    .is_err()
                {
                    // A faulty accelerator: search again from the header.
                    self.search = self
                        .lifecycle
                        .job()
                        .map(|h| PowSolver::new(provider, h, nonce + 1, 1));
                    return None;
                }
            }
        }
        self.save_sealed()
    }

    /// Stores a sealed block with the chain tip after it; retried on failure.
    fn save_sealed(&mut self) -> Option<OutboxEntry> {
        let sealed = self.lifecycle.sealed_block()?;
        if self
            .store
            .save_block(self.ingress.provider(), &sealed)
            .is_err()
        {
            self.stats.store_errors += 1;
            return None;
        }
        self.lifecycle.handle_saved().ok()
    }

    /// The transport connected: the in-flight window is due again.
    pub fn handle_connected(&mut self) {
        self.lifecycle.handle_connected();
    }
    /// The transport lost its connection.
    pub fn handle_disconnected(&mut self) {
        self.lifecycle.handle_disconnected();
    }
    /// The block to publish now, if any (lowest due height of the window).
    pub fn poll_publish(&self, now: Instant) -> Option<PublishOrder> {
        self.lifecycle.poll_publish(now)
    }
    /// Writes the block at `height` into `out`; returns its length.
    pub fn read_block(&mut self, height: u64, out: &mut [u8]) -> Option<usize> {
        self.store.read_block(height, out)
    }
    /// The broker took the block at `height` (QoS 1 PUBACK).
    pub fn handle_published(&mut self, height: u64, now: Instant) {
        self.lifecycle.handle_published(height, now);
    }

    /// Processes a commit receipt (§10): a verified receipt with status
    /// stored frees the block; quarantined keeps it; refused for good frees
    /// it too (flash has no room to archive it: the caller logs it as an
    /// error, and the server keeps the refused block in its quarantine).
    pub fn handle_receipt(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> Result<ReceiptOutcome, RelayError> {
        let key = self
            .server_key
            .as_ref()
            .ok_or(RelayError::Proto(Rejected::BadSignature.into()))?;
        let outcome = self
            .lifecycle
            .handle_receipt(self.ingress.provider(), now, bytes, key)?;
        if let ReceiptOutcome::Confirmed { height, hash, .. }
        | ReceiptOutcome::Refused { height, hash, .. } = outcome
        {
            // A failed write leaves a block that a later boot republishes
            // and the server answers "already stored": time, never data.
            if self.store.confirm_block(height, &hash).is_err() {
                self.stats.store_errors += 1;
            }
        }
        Ok(outcome)
    }

    /// The relay's id.
    pub fn relay_id(&self) -> u32 {
        self.cfg.relay_id
    }

    /// The radio channel ACKs state.
    pub fn channel(&self) -> u8 {
        self.cfg.channel
    }

    /// Sets the channel ACKs state: the access point's, read after the
    /// Wi-Fi station associated (it may differ from the provisioned one).
    pub fn set_channel(&mut self, channel: u8) {
        self.cfg.channel = channel;
        self.ingress.set_channel(channel);
    }
}

/// What [`StandaloneRelay::recover`] found in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Sealed blocks awaiting receipts, back in the outbox.
    pub blocks: u32,
    /// Frames replayed into the ingress's replay windows.
    pub frames: u32,
    /// Of those, frames not yet sealed, back in the pending batch.
    pub unsealed: u32,
    /// Journaled frames the ingress refuses now (the blob flashed since no
    /// longer holds their meter or key id, e.g. a retired site key id).
    /// They were ACKed, so the unsealed ones are still sealed, never dropped.
    pub refused_now: u32,
}

impl<'a, C, F, const M: usize, const O: usize> StandaloneRelay<'a, C, Journal<F, O>, M>
where
    C: CryptoProvider,
    F: Flash,
{
    /// After a boot: puts the journal's unconfirmed blocks back in the
    /// outbox and replays its live frames, oldest first, so the ingress
    /// knows them (a retransmission is a duplicate, not a second copy) and
    /// the unsealed ones are batched again. Call once, before any frame.
    pub fn recover(&mut self, now: Instant) -> Result<Recovered, RelayError> {
        let mut found = Recovered::default();
        let blocks: [Option<crate::journal::OutboxBlock>; O] = {
            let mut b = [None; O];
            for (slot, ob) in b.iter_mut().zip(self.store.outbox()) {
                *slot = Some(ob);
            }
            b
        };
        for ob in blocks.into_iter().flatten() {
            self.lifecycle
                .restore(ob.height, ob.hash, ob.len, (ob.first_seq, ob.last_seq))?;
            found.blocks += 1;
        }
        let unsealed_from = self.store.unsealed_from();
        let mut records = self.store.records_after(0);
        for rec in records.by_ref() {
            let Ok(rec) = rec else {
                self.store_failed = true;
                return Err(RelayError::JournalFailed);
            };
            let unsealed = rec.seq >= unsealed_from;
            let new = match self.ingress.handle_frame(&rec.src, rec.frame()) {
                Ok(verdict) => matches!(verdict, Verdict::Accepted(_)),
                // Accepted and ACKed before this boot: judged by the grid
                // server in its block, never dropped here.
                Err(ProtoError::Rejected(_)) => {
                    found.refused_now += 1;
                    true
                }
                Err(e) => return Err(e.into()),
            };
            found.frames += 1;
            if unsealed && new {
                self.lifecycle
                    .handle_frame(self.ingress.provider(), now, rec.frame(), rec.seq)?;
                found.unsealed += 1;
            }
        }
        Ok(found)
    }
}
