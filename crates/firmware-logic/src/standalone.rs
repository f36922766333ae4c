//! Standalone mode of the relay firmware (the seed's design): the ESP32 runs
//! the protocol ingress itself, batches accepted frames into blocks, solves
//! the proof of work in bounded chunks (so reception never stops), signs,
//! persists its chain tip, and keeps every sealed block in an outbox until a
//! verified commit receipt from the grid server names it.
//!
//! Publishing goes through [`Publisher`]. The firmware has no working
//! MQTT-over-TLS transport yet (see `docs/hardware.md`), so it uses
//! [`NoTransport`], which refuses every publish: blocks then stay in the
//! outbox, the outbox fills, sealing stops, and new frames are refused
//! *before* the ingress sees them, so meters keep their readings in their own
//! backlogs. Nothing is ever reported as delivered that was not.
//!
//! Capacity is checked before the ingress judges a frame: once the ingress
//! accepts a frame its replay window remembers it, and a retransmission would
//! be ACKed as a duplicate, so a frame must never be accepted and then dropped.

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::block::{sign_header, BlockBuilder};
use gridpow_proto::crypto::{CryptoProvider, HopKeys};
use gridpow_proto::ingress::{
    FixedMeterTable, Ingress, IngressConfig, IngressStats, MeterEntry, Verdict,
};
use gridpow_proto::wire::block::{
    BlockHeaderRepr, HEADER_LEN, LEAF_PREFIX_LEN, LEAVES_OFFSET, MAX_LEAVES, SIGNATURE_LEN,
};
use gridpow_proto::wire::receipt::ReceiptStatus;
use gridpow_proto::wire::ReceiptRepr;
use gridpow_proto::{Duration, Error as ProtoError, Hash, Instant, MacAddr, Rejected};

use crate::bridge::FixedWriter;
use crate::pow::{PowHasher, PowSearch};
use crate::provisioning::{RelayConfig, RelayMeter};
use crate::state::{Flash, RelayState, StateError, StateLog, KIND_RELAY};

/// Publishes blocks to the broker (MQTT QoS 1 in the design).
pub trait Publisher {
    /// The transport's error.
    type Error: core::fmt::Debug;
    /// Hands `payload` to the transport for `topic`. `Ok` means the broker
    /// took it; only a commit receipt frees the block.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Self::Error>;
}

/// The transport the firmware has today: none. Every publish fails with
/// [`TransportMissing`], so blocks stay in the outbox (never a fake success).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTransport;

/// Why [`NoTransport`] refused: no MQTT-over-TLS client in the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportMissing;

impl Publisher for NoTransport {
    type Error = TransportMissing;
    fn publish(&mut self, _topic: &str, _payload: &[u8]) -> Result<(), TransportMissing> {
        Err(TransportMissing)
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
    /// The pending batch and the outbox are full: not accepted, not ACKed.
    Full,
    /// The receipt names no block in the outbox.
    UnknownBlock,
}

impl From<ProtoError> for RelayError {
    fn from(e: ProtoError) -> Self {
        RelayError::Proto(e)
    }
}

/// Counters for rates; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandaloneStats {
    /// Frames refused before the ingress because there was no room.
    pub refused_full: u64,
    /// Frames refused because the wall clock is unknown.
    pub refused_no_clock: u64,
    /// Blocks sealed (solved and signed).
    pub blocks_sealed: u64,
    /// PoW tries.
    pub pow_tries: u64,
    /// Publish attempts the transport took.
    pub publishes: u64,
    /// Publish attempts the transport refused.
    pub publish_errors: u64,
    /// Blocks freed by a receipt (stored or already stored).
    pub receipts_accepted: u64,
    /// Blocks the server quarantined (freed too: the server kept the bytes).
    pub blocks_quarantined: u64,
    /// Receipts refused (bad signature, unknown block, malformed).
    pub receipts_rejected: u64,
    /// Chain-tip writes to flash that failed.
    pub state_write_errors: u64,
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
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Leaves copied in; the PoW is being searched.
    Solving,
    Sealed {
        height: u64,
        hash: Hash,
        len: usize,
        last_publish: Option<Instant>,
    },
}

struct Sealing {
    slot: usize,
    header: BlockHeaderRepr,
    search: PowSearch,
}

/// A block in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Height.
    pub height: u64,
    /// Header hash.
    pub hash: Hash,
    /// Block length in bytes.
    pub len: usize,
}

/// The standalone relay: `M` meters and `O` outbox slots. Its buffers are
/// borrowed (`storage`), so the firmware can put them on the heap or in a
/// static instead of the stack: one pending batch and `O` blocks of
/// `storage.len() / (O + 1)` bytes each.
pub struct StandaloneRelay<'a, C: CryptoProvider, F: Flash, const M: usize, const O: usize> {
    cfg: StandaloneConfig,
    ingress: Ingress<C, FixedMeterTable<M>>,
    signing: SigningKey,
    server_key: Option<VerifyingKey>,
    block_cap: usize,
    pending: &'a mut [u8],
    pending_len: usize,
    pending_count: u32,
    pending_since: Option<Instant>,
    sealing: Option<Sealing>,
    slots: &'a mut [u8],
    slot_state: [SlotState; O],
    chain: RelayState,
    log: StateLog<F>,
    stats: StandaloneStats,
}

impl<'a, C: CryptoProvider, F: Flash, const M: usize, const O: usize>
    StandaloneRelay<'a, C, F, M, O>
{
    /// A relay over `meters`, restoring its chain tip from `flash`.
    /// Meters beyond `M` are refused with a capacity error.
    pub fn new(
        cfg: StandaloneConfig,
        provider: C,
        meters: impl IntoIterator<Item = RelayMeter>,
        signing_seed: &[u8; 32],
        server_public_key: &[u8; 32],
        flash: F,
        storage: &'a mut [u8],
    ) -> Result<Self, StateError<F::Error>> {
        let block_cap = storage.len() / (O + 1);
        let (pending, rest) = storage.split_at_mut(block_cap);
        let slots = &mut rest[..block_cap * O];
        let mut table = FixedMeterTable::<M>::new();
        for m in meters {
            let keys = HopKeys::new(m.key_id, &m.secret);
            // A full table drops further meters; the firmware logs the count.
            let _ = table.insert(MeterEntry::new(m.meter_id, m.mac, keys));
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
        let log = StateLog::open(flash, KIND_RELAY)?;
        let chain = log
            .latest()
            .map(RelayState::from_payload)
            .unwrap_or_default();
        Ok(StandaloneRelay {
            cfg,
            ingress,
            signing: SigningKey::from_bytes(signing_seed),
            server_key: VerifyingKey::from_bytes(server_public_key).ok(),
            block_cap,
            pending,
            pending_len: 0,
            pending_count: 0,
            pending_since: None,
            sealing: None,
            slots,
            slot_state: [SlotState::Free; O],
            chain,
            log,
            stats: StandaloneStats::default(),
        })
    }

    /// Counters of the relay.
    pub fn stats(&self) -> &StandaloneStats {
        &self.stats
    }
    /// Counters of the ingress.
    pub fn ingress_stats(&self) -> &IngressStats {
        self.ingress.stats()
    }
    /// The chain tip (next height, previous hash).
    pub fn chain(&self) -> &RelayState {
        &self.chain
    }
    /// Frames waiting for the next block.
    pub fn pending_frames(&self) -> u32 {
        self.pending_count
    }
    /// The relay's Ed25519 public key (registered with the grid server).
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }
    /// Whether a block is being solved.
    pub fn is_solving(&self) -> bool {
        self.sealing.is_some()
    }

    /// Sealed blocks waiting for a receipt, in no particular order.
    pub fn outbox(&self) -> impl Iterator<Item = OutboxEntry> + '_ {
        self.slot_state.iter().filter_map(|s| match *s {
            SlotState::Sealed {
                height, hash, len, ..
            } => Some(OutboxEntry { height, hash, len }),
            _ => None,
        })
    }

    /// The bytes of the sealed block at `height`.
    pub fn block_bytes(&self, height: u64) -> Option<&[u8]> {
        let i = self
            .slot_state
            .iter()
            .position(|s| matches!(*s, SlotState::Sealed { height: h, .. } if h == height))?;
        let SlotState::Sealed { len, .. } = self.slot_state[i] else {
            return None;
        };
        self.slot(i).get(..len)
    }

    fn slot(&self, i: usize) -> &[u8] {
        &self.slots[i * self.block_cap..(i + 1) * self.block_cap]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i * self.block_cap..(i + 1) * self.block_cap]
    }

    fn pending_room_for(&self, frame_len: usize) -> bool {
        self.pending_count < MAX_LEAVES
            && LEAVES_OFFSET + self.pending_len + LEAF_PREFIX_LEN + frame_len <= self.block_cap
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
        if !self.pending_room_for(frame.len()) {
            self.start_sealing(now, wall_ms);
            if !self.pending_room_for(frame.len()) {
                self.stats.refused_full += 1;
                return Err(RelayError::Full);
            }
        }
        let verdict = self.ingress.handle_frame(src, frame)?;
        if let Verdict::Accepted(_) = verdict {
            let at = self.pending_len;
            let len = frame.len();
            self.pending[at..at + LEAF_PREFIX_LEN].copy_from_slice(&(len as u16).to_le_bytes());
            self.pending[at + LEAF_PREFIX_LEN..at + LEAF_PREFIX_LEN + len].copy_from_slice(frame);
            self.pending_len += LEAF_PREFIX_LEN + len;
            self.pending_count += 1;
            self.pending_since.get_or_insert(now);
        }
        Ok(self.ingress.emit_ack(&verdict, wall_ms, ack_out)?)
    }

    /// Starts sealing the pending frames when the block interval is over.
    pub fn poll_seal(&mut self, now: Instant, wall_ms: Option<u64>) {
        let due = self
            .pending_since
            .is_some_and(|t| now >= t + self.cfg.block_interval);
        if let (true, Some(wall)) = (due, wall_ms) {
            self.start_sealing(now, wall);
        }
    }

    /// Moves the pending frames into a free outbox slot and starts the PoW.
    fn start_sealing(&mut self, _now: Instant, wall_ms: u64) {
        if self.sealing.is_some() || self.pending_count == 0 {
            return;
        }
        let Some(slot) = self.slot_state.iter().position(|s| *s == SlotState::Free) else {
            return;
        };
        let cap = self.block_cap;
        let Ok(mut builder) = BlockBuilder::new(&mut self.slots[slot * cap..(slot + 1) * cap])
        else {
            return;
        };
        let mut at = 0;
        while at + LEAF_PREFIX_LEN <= self.pending_len {
            let len = usize::from(u16::from_le_bytes([self.pending[at], self.pending[at + 1]]));
            let leaf = &self.pending[at + LEAF_PREFIX_LEN..at + LEAF_PREFIX_LEN + len];
            // Room was checked when the frame was taken; a failure is a bug, not data loss
            // (the frames stay pending and sealing is retried).
            if builder.push_leaf(leaf).is_err() {
                return;
            }
            at += LEAF_PREFIX_LEN + len;
        }
        let header = builder.header(
            self.cfg.relay_id,
            self.chain.next_height,
            self.chain.prev_hash,
            wall_ms,
            self.cfg.difficulty,
        );
        self.pending_len = 0;
        self.pending_count = 0;
        self.pending_since = None;
        self.slot_state[slot] = SlotState::Solving;
        self.sealing = Some(Sealing {
            slot,
            header,
            search: PowSearch::new(&header, 0),
        });
    }

    /// Advances the PoW by at most `max_tries` hashes. When solved, signs the
    /// block, persists the new chain tip and returns the sealed block.
    pub fn poll_pow<H: PowHasher>(
        &mut self,
        hasher: &mut H,
        max_tries: u32,
    ) -> Option<OutboxEntry> {
        let s = self.sealing.as_mut()?;
        let before = s.search.tries();
        let found = s.search.step(hasher, max_tries);
        self.stats.pow_tries += s.search.tries() - before;
        let nonce = found?;
        let s = self.sealing.take()?;
        let mut header = s.header;
        header.nonce = nonce;
        let hash = header.hash();
        let sig = sign_header(&header, &self.signing);
        let buf = self.slot_mut(s.slot);
        buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        buf[HEADER_LEN..HEADER_LEN + SIGNATURE_LEN].copy_from_slice(&sig);
        let len = block_len(buf, header.leaf_count);
        self.slot_state[s.slot] = SlotState::Sealed {
            height: header.height,
            hash,
            len,
            last_publish: None,
        };
        self.chain = RelayState {
            next_height: header.height + 1,
            prev_hash: hash,
        };
        if self.log.append(&self.chain.to_payload()).is_err() {
            self.stats.state_write_errors += 1;
        }
        self.stats.blocks_sealed += 1;
        Some(OutboxEntry {
            height: header.height,
            hash,
            len,
        })
    }

    /// Publishes sealed blocks that were never published or whose receipt is
    /// overdue, lowest height first. Returns how many the transport took.
    pub fn poll_publish<P: Publisher>(&mut self, now: Instant, publisher: &mut P) -> usize {
        let mut topic_buf = [0u8; 48];
        let mut w = FixedWriter::new(&mut topic_buf);
        if core::fmt::Write::write_fmt(
            &mut w,
            format_args!("gridpow/v1/relays/{}/blocks", self.cfg.relay_id),
        )
        .is_err()
        {
            return 0;
        }
        let n = w.len();
        let Ok(topic) = core::str::from_utf8(&topic_buf[..n]) else {
            return 0;
        };
        let mut taken = 0;
        loop {
            let due = self
                .slot_state
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match *s {
                    SlotState::Sealed {
                        height,
                        last_publish,
                        ..
                    } if last_publish.is_none_or(|t| now >= t + self.cfg.republish_after) => {
                        Some((height, i))
                    }
                    _ => None,
                })
                .min();
            let Some((_, i)) = due else {
                return taken;
            };
            let SlotState::Sealed {
                len,
                ref mut last_publish,
                ..
            } = self.slot_state[i]
            else {
                return taken;
            };
            let cap = self.block_cap;
            let bytes = &self.slots[i * cap..i * cap + len.min(cap)];
            match publisher.publish(topic, bytes) {
                Ok(()) => {
                    *last_publish = Some(now);
                    self.stats.publishes += 1;
                    taken += 1;
                }
                Err(_) => {
                    self.stats.publish_errors += 1;
                    return taken;
                }
            }
        }
    }

    /// Processes a commit receipt: a verified receipt for a block in the
    /// outbox frees it.
    pub fn handle_receipt(&mut self, bytes: &[u8]) -> Result<ReceiptRepr, RelayError> {
        let res = self.check_receipt(bytes);
        match &res {
            Ok(r) if r.status == ReceiptStatus::Quarantined => self.stats.blocks_quarantined += 1,
            Ok(_) => self.stats.receipts_accepted += 1,
            Err(_) => self.stats.receipts_rejected += 1,
        }
        res
    }

    fn check_receipt(&mut self, bytes: &[u8]) -> Result<ReceiptRepr, RelayError> {
        let key = self
            .server_key
            .as_ref()
            .ok_or(RelayError::Proto(Rejected::BadSignature.into()))?;
        let r = ReceiptRepr::parse_verified(bytes, key)?;
        if r.relay_id != self.cfg.relay_id {
            return Err(RelayError::Proto(Rejected::WrongRelay.into()));
        }
        let slot = self
            .slot_state
            .iter()
            .position(|s| {
                matches!(*s, SlotState::Sealed { height, hash, .. }
                    if height == r.height && hash == r.block_hash)
            })
            .ok_or(RelayError::UnknownBlock)?;
        self.slot_state[slot] = SlotState::Free;
        Ok(r)
    }
}

/// Length of a block whose leaves start at `LEAVES_OFFSET` in `buf`.
fn block_len(buf: &[u8], leaves: u32) -> usize {
    let mut at = LEAVES_OFFSET;
    for _ in 0..leaves {
        let Some(p) = buf.get(at..at + LEAF_PREFIX_LEN) else {
            return at;
        };
        at += LEAF_PREFIX_LEN + usize::from(u16::from_le_bytes([p[0], p[1]]));
    }
    at.min(buf.len())
}
