//! The standalone relay's durable storage on flash: a frame journal, the
//! outbox of sealed blocks awaiting a commit receipt, and the chain tip, in
//! one append-only log over the `gp_journal` partition (protocol §7: a frame
//! is ACKed only once it is durable; §10: a block stays until a receipt).
//!
//! ## Why one log, and why blocks are not written twice
//!
//! A block's leaves are exactly consecutive journal records, so an outbox
//! entry is a *seal* record (header, signature, first and last sequence
//! number) and the block bytes are rebuilt from the journal on demand
//! ([`Journal::write_block`]). Frames are written once: the obvious design
//! (frames into a journal, then again as leaves of a stored block) writes
//! about 74 % more bytes at one reading per frame (`docs/hardware.md`, "Flash
//! wear budget"). The price: a frame is released only when the block holding
//! it is confirmed, which is what the outbox needs anyway, and publishing a
//! block reads its leaves back from flash.
//!
//! The chain tip is folded in: a seal record *is* the new tip, so "block is
//! in the outbox" and "tip advanced" are one atomic write; each sector header
//! repeats the tip, so it survives when every seal record has been
//! reclaimed. The relay's record in `gp_state` ([`crate::state::RelayState`])
//! is only read once, as the starting tip of a blank journal (migration).
//!
//! Release is implied, not a separate `release_through(seq)` call: a frame
//! is live while it is not yet sealed or while an outbox block covers it, so
//! [`Journal::confirm_block`] (a verified receipt) is what releases frames.
//! One rule instead of two numbers that could disagree. Sectors are reclaimed
//! oldest first, when every record in them is dead.
//!
//! ## On flash
//!
//! The partition is a ring of sectors written in address order. Every sector
//! starts with a sector record; records follow back to back (4-byte aligned,
//! so every read and write is 4-byte aligned in offset and length):
//!
//! ```text
//! record:  0 magic 0x47 | 1 kind | 2..4 body length u16 | body | 0-pad to 4 | CRC-32 (4)
//!          the CRC covers everything before it
//! kind 1 sector   (64):  sector_seq u32, 0 u32, next_seq u64, unsealed_from u64,
//!                        tip next_height u64, tip prev_hash (32)
//! kind 2 frame (22+n):   seq u64, wall_ms u64, source MAC (6), frame (n = 1..=250)
//! kind 3 seal    (196):  first_seq u64, last_seq u64, count u32, block_len u32,
//!                        first_at u32 (offset of the first leaf's record), 0 u32,
//!                        header (100), signature (64)
//! kind 4 confirm  (40):  height u64, block hash (32)
//! ```
//!
//! Records are 116 bytes for an 84-byte frame, 276 for a 244-byte one, 204 for
//! a seal, 48 for a confirmation, 72 for a sector header.
//!
//! ## Power cuts
//!
//! - A record is written in one go and read back before the call returns; a
//!   torn one fails its CRC on the next boot. The rest of that sector is then
//!   never written (NOR cannot rewrite torn bytes): the head moves on.
//! - A sector is reused only when every record in it is dead, and it is
//!   *retired* first (its header's first word written to zero) and then
//!   erased, so a torn erase leaves a sector without a valid header, which is
//!   ignored as a whole, whatever the erase left in it.
//! - A sector header is written right after the erase; until it is, the
//!   sector does not exist for [`Journal::open`].
//!
//! [`Journal::open`] only reads; it never repairs, so a cut during recovery
//! cannot make things worse. `tests/flash_journal.rs` cuts the power after
//! every byte written or erased of a scripted run and checks the reopened
//! journal against a model.
//!
//! The [`Flash`] driver must program without erasing (raw NOR writes, as
//! `esp-storage`'s `write_nor`): retiring a sector or voiding a record that
//! did not read back writes zeros over bytes already programmed. What the
//! tests model is byte-granular: a torn write or erase leaves some bytes
//! done and the rest untouched. Real flash can also leave half-programmed
//! bits that read differently later; a torn record still fails its CRC, but
//! a record that verified and later decays is not recovered (nor is it in
//! [`crate::state::StateLog`]).
//!
//! ## RAM
//!
//! O(1) in the number of records and sectors: a few positions and counters
//! plus `O` outbox entries of 72 bytes: 128 + 72 × `O` bytes on RV32 with a
//! `&mut` flash handle (asserted below for riscv32 builds), 712 bytes on the
//! 64-bit host with `O` = 8 (the tests print it). Walks over the log use one
//! record buffer (280 bytes) on the stack, two while a record is written.
//! The price of not indexing: [`Journal::open`] reads the whole partition
//! (and CRCs every record), and a walk from the oldest record reads
//! everything up to the head.

use gridpow_proto::crypto::CryptoProvider;
use gridpow_proto::wire::block::{
    BlockHeaderRepr, HEADER_LEN, LEAF_PREFIX_LEN, LEAVES_OFFSET, MAX_LEAVES, SIGNATURE_LEN,
};
use gridpow_proto::wire::serial::crc32;
use gridpow_proto::wire::ESPNOW_MAX_PAYLOAD;
use gridpow_proto::{Hash, MacAddr};

use crate::state::{Flash, RelayState};

/// Longest frame a record holds (one ESP-NOW payload).
pub const MAX_FRAME_LEN: usize = ESPNOW_MAX_PAYLOAD;
/// Smallest sector size the journal works with.
pub const MIN_SECTOR_SIZE: u32 = 1024;

const MAGIC: u8 = 0x47;
const KIND_SECTOR: u8 = 1;
const KIND_FRAME: u8 = 2;
const KIND_SEAL: u8 = 3;
const KIND_CONFIRM: u8 = 4;
const HDR_LEN: usize = 4;
const CRC_LEN: usize = 4;
const SECTOR_BODY: usize = 64;
const FRAME_FIXED: usize = 22;
const SEAL_BODY: usize = 32 + HEADER_LEN + SIGNATURE_LEN;
const CONFIRM_BODY: usize = 40;

const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes on flash of a record with a body of `body` bytes.
pub const fn record_len(body: usize) -> usize {
    HDR_LEN + pad4(body) + CRC_LEN
}

/// Bytes on flash of the record of a `frame_len`-byte frame.
pub const fn frame_record_len(frame_len: usize) -> usize {
    record_len(FRAME_FIXED + frame_len)
}

/// Bytes of a sector header record.
pub const SECTOR_RECORD_LEN: usize = record_len(SECTOR_BODY);
/// Bytes of a seal (outbox) record.
pub const SEAL_RECORD_LEN: usize = record_len(SEAL_BODY);
/// Bytes of a confirmation record.
pub const CONFIRM_RECORD_LEN: usize = record_len(CONFIRM_BODY);
const MAX_RECORD_LEN: usize = frame_record_len(MAX_FRAME_LEN);

/// Control records (seals, confirmations) that frames must always leave room
/// for, so that a full journal can still seal and confirm its way out:
/// confirm up to `outbox` blocks, then seal and confirm the frames left in
/// the oldest sector (at most two blocks, with slack).
///
/// This assumes the caller's blocks take the unsealed frames, at least a
/// sector's worth of them when there are that many (35 frames of 84 bytes in
/// a 4 KiB sector); with smaller blocks a full journal may need more control
/// records than are reserved, and [`JournalError::Capacity`] would then also
/// refuse a seal or confirmation.
pub const fn reserved_control_records(outbox: usize) -> usize {
    2 * outbox + 4
}

/// Why the journal could not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalError<E> {
    /// The flash driver failed; the operation did not take effect.
    Flash(E),
    /// What was written does not read back (worn or failing flash); the
    /// operation did not take effect.
    VerifyFailed,
    /// The region is too small, or its sectors are smaller than
    /// [`MIN_SECTOR_SIZE`].
    BadRegion,
    /// Capacity: the journal is full. Refuse the frame (do not ACK it);
    /// space returns as blocks are confirmed.
    Capacity,
    /// Capacity: `O` blocks already await receipts.
    OutboxFull,
    /// Misuse: the frame is empty or longer than [`MAX_FRAME_LEN`].
    BadFrameLength,
    /// Misuse: the block does not extend the tip (height, previous hash) or
    /// does not start at the first unsealed frame.
    NotNextBlock,
    /// Misuse: the block's leaf count is 0, above the protocol's maximum, or
    /// above the number of unsealed frames.
    BadLeafCount,
    /// Misuse: no outbox block has this height and hash.
    UnknownBlock,
    /// Misuse: the output buffer is too small.
    BufferTooSmall,
    /// The flash holds records this code would never write (frames out of
    /// order, a block's leaves missing): a bug or failing flash.
    Corrupt,
    /// Capacity: the flash holds more unconfirmed blocks than `O`.
    OutboxTooSmall,
}

/// A journaled frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    /// Sequence number (monotonic across reboots; gaps are possible after a
    /// failed append).
    pub seq: u64,
    /// The relay's wall clock when the frame arrived, Unix ms.
    pub wall_ms: u64,
    /// Source MAC address.
    pub src: MacAddr,
    len: u16,
    bytes: [u8; MAX_FRAME_LEN],
}

impl FrameRecord {
    /// The frame exactly as received.
    pub fn frame(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A sealed block awaiting its commit receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxBlock {
    /// Height.
    pub height: u64,
    /// Header hash.
    pub hash: Hash,
    /// Sequence number of the first leaf.
    pub first_seq: u64,
    /// Sequence number of the last leaf.
    pub last_seq: u64,
    /// Number of leaves.
    pub count: u32,
    /// Length of the block message in bytes.
    pub len: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    block: OutboxBlock,
    /// Offset of the first leaf's frame record.
    first_at: u32,
    /// Offset of the seal record.
    seal_at: u32,
}

const EMPTY_SLOT: Slot = Slot {
    block: OutboxBlock {
        height: 0,
        hash: [0; 32],
        first_seq: 0,
        last_seq: 0,
        count: 0,
        len: 0,
    },
    first_at: 0,
    seal_at: 0,
};

/// Counters since `open`, for wear statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Records written (including sector headers).
    pub records_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Sectors erased.
    pub sectors_erased: u64,
    /// Writes that did not read back.
    pub verify_failures: u64,
}

/// A position in the log: sector index and offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    sector: u32,
    off: u32,
}

/// What a walk over leaves found.
struct Leaves {
    /// Bytes of the leaves (with their length prefixes).
    bytes: usize,
    /// Seq and offset of the first leaf.
    first: Option<(u64, u32)>,
    /// Seq of the last leaf and the position after it, once all were found.
    end: Option<(u64, Cursor)>,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    kind: u8,
    body_len: usize,
    len: usize,
    pos: u32,
}

type Buf = [u8; MAX_RECORD_LEN];

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Kind and body length of a plausible record header, else `None`.
fn parse_header(h: &[u8]) -> Option<(u8, usize)> {
    if h[0] != MAGIC {
        return None;
    }
    let body = usize::from(u16::from_le_bytes([h[2], h[3]]));
    let ok = match h[1] {
        KIND_SECTOR => body == SECTOR_BODY,
        KIND_FRAME => (FRAME_FIXED + 1..=FRAME_FIXED + MAX_FRAME_LEN).contains(&body),
        KIND_SEAL => body == SEAL_BODY,
        KIND_CONFIRM => body == CONFIRM_BODY,
        _ => false,
    };
    ok.then_some((h[1], body))
}

/// The durable journal and outbox of a standalone relay, with room for `O`
/// unconfirmed blocks.
///
/// ```
/// use gridpow_firmware_logic::journal::Journal;
/// use gridpow_firmware_logic::state::{MemFlash, RelayState};
/// use gridpow_proto::crypto::RustCrypto;
/// use gridpow_proto::merkle::RootBuilder;
/// use gridpow_proto::wire::block::BlockHeaderRepr;
///
/// let mut flash = MemFlash::<{ 4 * 4096 }>::new();
/// let mut j = Journal::<_, 2>::open(&RustCrypto, &mut flash, RelayState::default())?;
/// // A frame arrives: journal it, then ACK it.
/// assert!(j.has_room_for(84)?);
/// let seq = j.append(&[2, 0, 0, 0, 0, 1], 1_700_000_000_000, &[0x42; 84])?;
/// // Seal the unsealed frames: Merkle root over them, header, PoW, signature.
/// let mut root = RootBuilder::new();
/// let mut count = 0;
/// for r in j.records_after(j.unsealed_from() - 1) {
///     root.push_leaf(&RustCrypto, r?.frame());
///     count += 1;
/// }
/// let tip = j.tip();
/// let header = BlockHeaderRepr {
///     difficulty: 0, relay_id: 1, height: tip.next_height, prev_hash: tip.prev_hash,
///     merkle_root: root.root(&RustCrypto), leaf_count: count, time_ms: 1_700_000_010_000, nonce: 0,
/// };
/// let block = j.add_block(&RustCrypto, &header, &[0; 64], seq)?; // durable: now publish it
/// let mut out = [0u8; 512];
/// let len = j.write_block(block.height, &mut out)?;
/// assert_eq!(len, 164 + 2 + 84);
/// // A verified receipt (stored or already stored) releases the block and its frames.
/// j.confirm_block(block.height, &block.hash)?;
/// assert_eq!(j.outbox().count(), 0);
/// assert_eq!(j.tip().next_height, 1);
/// # Ok::<(), gridpow_firmware_logic::journal::JournalError<gridpow_firmware_logic::state::MemFlashError>>(())
/// ```
///
/// Call order for a frame: [`Journal::append`] → ACK. For a block: pick the
/// leaves with [`Journal::records_after`]`(unsealed_from − 1)`, solve and sign,
/// [`Journal::add_block`] → publish ([`Journal::write_block`]) →
/// [`Journal::confirm_block`] on a verified receipt (status 0 or 1).
pub struct Journal<F: Flash, const O: usize> {
    flash: F,
    sectors: u32,
    /// Sector being written, its sequence number, and the next write offset
    /// in it (`SECTOR_SIZE` once full or abandoned after a failed write).
    head: u32,
    head_seq: u32,
    head_off: u32,
    /// Sectors after the head known to hold only dead records.
    free_ahead: u32,
    /// Set when a confirmation may have made more sectors dead.
    free_stale: bool,
    next_seq: u64,
    unsealed_from: u64,
    /// A walk from here finds every frame with seq ≥ `unsealed_from`.
    unsealed_at: Cursor,
    tip: RelayState,
    outbox: [Slot; O],
    outbox_len: usize,
    stats: JournalStats,
}

impl<F: Flash, const O: usize> Journal<F, O> {
    /// Reads the journal in `flash`. A region with no journal starts empty
    /// with `initial_tip` (genesis, or the tip from `gp_state` on migration).
    /// Only reads: a power cut during `open` changes nothing. `provider`
    /// hashes the headers of the blocks found.
    pub fn open<C: CryptoProvider>(
        provider: &C,
        flash: F,
        initial_tip: RelayState,
    ) -> Result<Self, JournalError<F::Error>> {
        let s = F::SECTOR_SIZE;
        let size = flash.size();
        if s < MIN_SECTOR_SIZE || s % 4 != 0 || size % s != 0 {
            return Err(JournalError::BadRegion);
        }
        let sectors = size / s;
        let per_sector = (s as usize - SECTOR_RECORD_LEN) / SEAL_RECORD_LEN;
        if sectors < 3 || (sectors as usize - 2) * per_sector < reserved_control_records(O) {
            return Err(JournalError::BadRegion);
        }
        let mut j = Journal {
            flash,
            sectors,
            head: sectors - 1,
            head_seq: 0,
            head_off: s,
            free_ahead: 0,
            free_stale: true,
            next_seq: 1,
            unsealed_from: 1,
            unsealed_at: Cursor { sector: 0, off: 0 },
            tip: initial_tip,
            outbox: [EMPTY_SLOT; O],
            outbox_len: 0,
            stats: JournalStats::default(),
        };
        let mut buf = [0u8; MAX_RECORD_LEN];
        // The head is the sector with the highest sequence number.
        let mut found = false;
        for i in 0..sectors {
            if let Some(seq) = j.sector_seq(i, &mut buf)? {
                if !found || seq > j.head_seq {
                    j.head = i;
                    j.head_seq = seq;
                    found = true;
                }
            }
        }
        j.unsealed_at = j.oldest();
        if found {
            j.replay(provider, &mut buf)?;
        }
        j.locate_unsealed(&mut buf)?;
        j.refresh_free(&mut buf)?;
        Ok(j)
    }

    /// The chain tip: height and previous hash of the next block.
    pub fn tip(&self) -> RelayState {
        self.tip
    }

    /// Sequence number the next appended frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sequence number of the first frame not sealed into a block; the next
    /// block starts at the first frame with a sequence number at least this.
    pub fn unsealed_from(&self) -> u64 {
        self.unsealed_from
    }

    /// Blocks awaiting a receipt, lowest height first.
    pub fn outbox(&self) -> impl Iterator<Item = OutboxBlock> + '_ {
        self.outbox[..self.outbox_len].iter().map(|s| s.block)
    }

    /// Counters since `open`.
    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Sectors after the head known to be reusable (diagnostics).
    pub fn free_sectors(&self) -> u32 {
        self.free_ahead
    }

    /// The flash region (for the driver's own statistics).
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The flash region back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Whether a frame of `frame_len` bytes would be accepted now. Ask
    /// before the ingress judges a frame: once the ingress accepts a frame
    /// its replay window remembers it, so it must not then be refused for
    /// lack of room.
    pub fn has_room_for(&mut self, frame_len: usize) -> Result<bool, JournalError<F::Error>> {
        if frame_len == 0 || frame_len > MAX_FRAME_LEN {
            return Err(JournalError::BadFrameLength);
        }
        let len = frame_record_len(frame_len) as u32;
        if !self.frame_fits(len) && self.free_stale {
            let mut buf = [0u8; MAX_RECORD_LEN];
            self.refresh_free(&mut buf)?;
        }
        Ok(self.frame_fits(len))
    }

    /// Appends a frame heard from `src` at `wall_ms`, writes it and reads it
    /// back; returns its sequence number. Only after `Ok` may the frame be
    /// ACKed. [`JournalError::Capacity`] means: refuse the frame.
    pub fn append(
        &mut self,
        src: &MacAddr,
        wall_ms: u64,
        frame: &[u8],
    ) -> Result<u64, JournalError<F::Error>> {
        if frame.is_empty() || frame.len() > MAX_FRAME_LEN {
            return Err(JournalError::BadFrameLength);
        }
        if !self.has_room_for(frame.len())? {
            return Err(JournalError::Capacity);
        }
        let body_len = FRAME_FIXED + frame.len();
        let mut buf = [0u8; MAX_RECORD_LEN];
        // A sequence number is used up even if the write fails, so it can
        // never name two records.
        let seq = self.next_seq;
        let b = &mut buf[HDR_LEN..];
        b[0..8].copy_from_slice(&seq.to_le_bytes());
        b[8..16].copy_from_slice(&wall_ms.to_le_bytes());
        b[16..22].copy_from_slice(src);
        b[22..22 + frame.len()].copy_from_slice(frame);
        let res = self.write_record(KIND_FRAME, body_len, &mut buf);
        // Used up even if the write failed (the record may have landed), so a
        // sequence number never names two records. A sector header written
        // on the way holds `seq`, which the frame does not undercut.
        self.next_seq = seq + 1;
        res?;
        Ok(seq)
    }

    /// Frames with a sequence number above `mark`, oldest first (also frames
    /// already released but not yet reclaimed, when `mark` is below them).
    /// With `mark = unsealed_from() − 1`: the frames of the next block.
    pub fn records_after(&mut self, mark: u64) -> Records<'_, F, O> {
        let cur = if mark >= self.unsealed_from.saturating_sub(1) {
            self.unsealed_at
        } else {
            self.oldest()
        };
        Records {
            journal: self,
            cur,
            mark,
            done: false,
        }
    }

    /// Writes `count` leaves (u16 LE length ‖ frame) of the frames from
    /// `first_seq` on into `out`; returns the length. For building a block.
    pub fn write_leaves(
        &mut self,
        first_seq: u64,
        count: u32,
        out: &mut [u8],
    ) -> Result<usize, JournalError<F::Error>> {
        let start = if first_seq >= self.unsealed_from {
            self.unsealed_at
        } else {
            self.oldest()
        };
        let got = self.copy_leaves(start, first_seq, count, Some(out))?;
        if got.end.is_none() {
            return Err(JournalError::BadLeafCount);
        }
        Ok(got.bytes)
    }

    /// Adds a sealed block (solved and signed) over the next
    /// `header.leaf_count` unsealed frames, starting at `first_seq`, to the
    /// outbox, durably, and advances the tip. Call it before publishing.
    /// `provider` hashes the header.
    pub fn add_block<C: CryptoProvider>(
        &mut self,
        provider: &C,
        header: &BlockHeaderRepr,
        signature: &[u8; SIGNATURE_LEN],
        first_seq: u64,
    ) -> Result<OutboxBlock, JournalError<F::Error>> {
        if self.outbox_len >= O {
            return Err(JournalError::OutboxFull);
        }
        if header.height != self.tip.next_height || header.prev_hash != self.tip.prev_hash {
            return Err(JournalError::NotNextBlock);
        }
        let count = header.leaf_count;
        if count == 0 || count > MAX_LEAVES {
            return Err(JournalError::BadLeafCount);
        }
        // The block must take the unsealed frames from the first one on.
        let got = self.copy_leaves(self.unsealed_at, self.unsealed_from, count, None)?;
        let first_at = match got.first {
            Some((seq, at)) if seq == first_seq => at,
            _ => return Err(JournalError::NotNextBlock),
        };
        let Some((last_seq, after)) = got.end else {
            return Err(JournalError::BadLeafCount);
        };
        let len = LEAVES_OFFSET + got.bytes;
        let hash = header.hash(provider);
        let block = OutboxBlock {
            height: header.height,
            hash,
            first_seq,
            last_seq,
            count,
            len: len as u32,
        };
        let mut buf = [0u8; MAX_RECORD_LEN];
        let b = &mut buf[HDR_LEN..];
        b[0..8].copy_from_slice(&first_seq.to_le_bytes());
        b[8..16].copy_from_slice(&last_seq.to_le_bytes());
        b[16..20].copy_from_slice(&count.to_le_bytes());
        b[20..24].copy_from_slice(&block.len.to_le_bytes());
        b[24..28].copy_from_slice(&first_at.to_le_bytes());
        b[32..32 + HEADER_LEN].copy_from_slice(&header.to_bytes());
        b[32 + HEADER_LEN..SEAL_BODY].copy_from_slice(signature);
        let seal_at = self.write_record(KIND_SEAL, SEAL_BODY, &mut buf)?;
        self.push_outbox(Slot {
            block,
            first_at,
            seal_at,
        })?;
        self.tip = RelayState {
            next_height: header.height + 1,
            prev_hash: hash,
        };
        self.unsealed_from = last_seq + 1;
        self.unsealed_at = after;
        Ok(block)
    }

    /// Writes the block message of the outbox block at `height` (header ‖
    /// signature ‖ leaves) into `out`; returns its length.
    pub fn write_block(
        &mut self,
        height: u64,
        out: &mut [u8],
    ) -> Result<usize, JournalError<F::Error>> {
        let slot = *self.outbox[..self.outbox_len]
            .iter()
            .find(|s| s.block.height == height)
            .ok_or(JournalError::UnknownBlock)?;
        let b = slot.block;
        let out = out
            .get_mut(..b.len as usize)
            .ok_or(JournalError::BufferTooSmall)?;
        let mut buf = [0u8; MAX_RECORD_LEN];
        let mut cur = self.cursor_at(slot.seal_at);
        match self.step(&mut cur, &mut buf)? {
            Some(m) if m.kind == KIND_SEAL => {}
            _ => return Err(JournalError::Corrupt),
        }
        out[..HEADER_LEN + SIGNATURE_LEN].copy_from_slice(&buf[HDR_LEN + 32..HDR_LEN + SEAL_BODY]);
        let start = self.cursor_at(slot.first_at);
        let got = self.copy_leaves(start, b.first_seq, b.count, Some(&mut out[LEAVES_OFFSET..]))?;
        if got.first != Some((b.first_seq, slot.first_at))
            || got.end.is_none()
            || LEAVES_OFFSET + got.bytes != b.len as usize
        {
            return Err(JournalError::Corrupt);
        }
        Ok(b.len as usize)
    }

    /// Removes the block `height`/`hash` from the outbox (its receipt said
    /// stored or already stored), durably; its frames are released.
    pub fn confirm_block(
        &mut self,
        height: u64,
        hash: &Hash,
    ) -> Result<(), JournalError<F::Error>> {
        let i = self.outbox[..self.outbox_len]
            .iter()
            .position(|s| s.block.height == height && s.block.hash == *hash)
            .ok_or(JournalError::UnknownBlock)?;
        let mut buf = [0u8; MAX_RECORD_LEN];
        buf[HDR_LEN..HDR_LEN + 8].copy_from_slice(&height.to_le_bytes());
        buf[HDR_LEN + 8..HDR_LEN + 40].copy_from_slice(hash);
        self.write_record(KIND_CONFIRM, CONFIRM_BODY, &mut buf)?;
        self.remove_outbox(i);
        self.free_stale = true;
        Ok(())
    }

    // ---- internals ----

    fn cursor_at(&self, pos: u32) -> Cursor {
        Cursor {
            sector: pos / F::SECTOR_SIZE,
            off: pos % F::SECTOR_SIZE,
        }
    }

    /// Where a walk over the whole log starts: the sector after the head
    /// (the oldest, or blank ones that the walk skips).
    fn oldest(&self) -> Cursor {
        Cursor {
            sector: (self.head + 1) % self.sectors,
            off: 0,
        }
    }

    fn push_outbox(&mut self, slot: Slot) -> Result<(), JournalError<F::Error>> {
        let dst = self
            .outbox
            .get_mut(self.outbox_len)
            .ok_or(JournalError::OutboxTooSmall)?;
        *dst = slot;
        self.outbox_len += 1;
        Ok(())
    }

    fn remove_outbox(&mut self, i: usize) {
        self.outbox.copy_within(i + 1..self.outbox_len, i);
        self.outbox_len -= 1;
    }

    /// The sequence number in sector `i`'s header, if it has a valid one.
    fn sector_seq(&mut self, i: u32, buf: &mut Buf) -> Result<Option<u32>, JournalError<F::Error>> {
        let at = i * F::SECTOR_SIZE;
        match self.read_record(at, F::SECTOR_SIZE, buf)? {
            Some(m) if m.kind == KIND_SECTOR => Ok(Some(le32(&buf[HDR_LEN..]))),
            _ => Ok(None),
        }
    }

    /// Reads and checks the record at `at` (with `room` bytes left in its
    /// sector) into `buf`: kind, body length, record length.
    fn read_record(
        &mut self,
        at: u32,
        room: u32,
        buf: &mut Buf,
    ) -> Result<Option<Meta>, JournalError<F::Error>> {
        if room < (HDR_LEN + CRC_LEN) as u32 {
            return Ok(None);
        }
        self.flash
            .read(at, &mut buf[..HDR_LEN])
            .map_err(JournalError::Flash)?;
        let Some((kind, body)) = parse_header(&buf[..HDR_LEN]) else {
            return Ok(None);
        };
        let len = record_len(body);
        if len as u32 > room {
            return Ok(None);
        }
        self.flash
            .read(at + HDR_LEN as u32, &mut buf[HDR_LEN..len])
            .map_err(JournalError::Flash)?;
        let crc = crc32(&buf[..len - CRC_LEN]);
        if crc.to_le_bytes() != buf[len - CRC_LEN..len] {
            return Ok(None);
        }
        Ok(Some(Meta {
            kind,
            body_len: body,
            len,
            pos: at,
        }))
    }

    /// The next valid record in log order from `cur` (into `buf`), moving
    /// `cur` past it; `None` at the head's end. A blank or torn record ends
    /// its sector; a sector whose first record is not a sector header is
    /// skipped whole.
    fn step(
        &mut self,
        cur: &mut Cursor,
        buf: &mut Buf,
    ) -> Result<Option<Meta>, JournalError<F::Error>> {
        let s = F::SECTOR_SIZE;
        loop {
            if cur.sector == self.head && cur.off >= self.head_off {
                return Ok(None);
            }
            let pos = cur.sector * s + cur.off;
            if cur.off < s {
                if let Some(m) = self.read_record(pos, s - cur.off, buf)? {
                    if (m.kind == KIND_SECTOR) == (cur.off == 0) {
                        cur.off += m.len as u32;
                        return Ok(Some(m));
                    }
                }
            }
            if cur.sector == self.head {
                return Ok(None);
            }
            cur.sector = (cur.sector + 1) % self.sectors;
            cur.off = 0;
        }
    }

    /// Rebuilds the state from the log (oldest to newest) and finds the
    /// head's write position.
    fn replay<C: CryptoProvider>(
        &mut self,
        provider: &C,
        buf: &mut Buf,
    ) -> Result<(), JournalError<F::Error>> {
        let mut cur = self.oldest();
        let mut head_end = 0;
        let mut last_sector_seq = None;
        while let Some(m) = self.step(&mut cur, buf)? {
            let b = &buf[HDR_LEN..HDR_LEN + m.body_len];
            match m.kind {
                KIND_SECTOR => {
                    let sseq = le32(b);
                    if last_sector_seq.is_some_and(|l| sseq <= l) {
                        return Err(JournalError::Corrupt);
                    }
                    last_sector_seq = Some(sseq);
                    // A header repeats the state when it was written, which is
                    // newer than everything before it in the log.
                    self.next_seq = self.next_seq.max(le64(&b[8..]));
                    self.unsealed_from = self.unsealed_from.max(le64(&b[16..]));
                    let mut prev = [0u8; 32];
                    prev.copy_from_slice(&b[32..64]);
                    self.tip = RelayState {
                        next_height: le64(&b[24..]),
                        prev_hash: prev,
                    };
                }
                KIND_FRAME => {
                    let seq = le64(b);
                    if seq < self.next_seq {
                        return Err(JournalError::Corrupt);
                    }
                    self.next_seq = seq + 1;
                }
                KIND_SEAL => {
                    let header = BlockHeaderRepr::parse(&b[32..32 + HEADER_LEN])
                        .map_err(|_| JournalError::Corrupt)?;
                    if header.height != self.tip.next_height
                        || header.prev_hash != self.tip.prev_hash
                    {
                        return Err(JournalError::Corrupt);
                    }
                    let hash = header.hash(provider);
                    let block = OutboxBlock {
                        height: header.height,
                        hash,
                        first_seq: le64(b),
                        last_seq: le64(&b[8..]),
                        count: le32(&b[16..]),
                        len: le32(&b[20..]),
                    };
                    self.push_outbox(Slot {
                        block,
                        first_at: le32(&b[24..]),
                        seal_at: m.pos,
                    })?;
                    self.tip = RelayState {
                        next_height: header.height + 1,
                        prev_hash: hash,
                    };
                    self.unsealed_from = self.unsealed_from.max(block.last_seq + 1);
                }
                KIND_CONFIRM => {
                    let height = le64(b);
                    if let Some(i) = self.outbox[..self.outbox_len]
                        .iter()
                        .position(|s| s.block.height == height && s.block.hash[..] == b[8..40])
                    {
                        self.remove_outbox(i);
                    }
                }
                _ => return Err(JournalError::Corrupt),
            }
            if m.pos / F::SECTOR_SIZE == self.head {
                head_end = m.pos % F::SECTOR_SIZE + m.len as u32;
            }
        }
        // Keep writing in the head only if nothing (a torn record) follows
        // the last valid one.
        self.head_off = if self.is_blank(self.head, head_end)? {
            head_end
        } else {
            F::SECTOR_SIZE
        };
        Ok(())
    }

    fn is_blank(&mut self, sector: u32, from: u32) -> Result<bool, JournalError<F::Error>> {
        let s = F::SECTOR_SIZE;
        let mut chunk = [0u8; 64];
        let mut off = from;
        while off < s {
            let n = (s - off).min(64);
            let c = &mut chunk[..n as usize];
            self.flash
                .read(sector * s + off, c)
                .map_err(JournalError::Flash)?;
            if c.iter().any(|&x| x != 0xff) {
                return Ok(false);
            }
            off += n;
        }
        Ok(true)
    }

    /// Sets `unsealed_at` to a walk start that finds the first unsealed
    /// frame: the newest outbox block's first leaf if there is one (its
    /// frames are live), else the oldest sector.
    fn locate_unsealed(&mut self, buf: &mut Buf) -> Result<(), JournalError<F::Error>> {
        let mut cur = match self.outbox[..self.outbox_len].last() {
            Some(s) => self.cursor_at(s.first_at),
            None => self.oldest(),
        };
        loop {
            let before = cur;
            match self.step(&mut cur, buf)? {
                None => {
                    self.unsealed_at = before;
                    return Ok(());
                }
                Some(m) if m.kind == KIND_FRAME && le64(&buf[HDR_LEN..]) >= self.unsealed_from => {
                    self.unsealed_at = self.cursor_at(m.pos);
                    return Ok(());
                }
                Some(_) => {}
            }
        }
    }

    /// Walks `count` frames from the first with seq ≥ `first_seq`, copying
    /// them as leaves into `out` if given.
    fn copy_leaves(
        &mut self,
        mut cur: Cursor,
        first_seq: u64,
        count: u32,
        mut out: Option<&mut [u8]>,
    ) -> Result<Leaves, JournalError<F::Error>> {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let mut got = Leaves {
            bytes: 0,
            first: None,
            end: None,
        };
        let mut taken = 0u32;
        while taken < count {
            let Some(m) = self.step(&mut cur, &mut buf)? else {
                return Ok(got);
            };
            if m.kind != KIND_FRAME {
                continue;
            }
            let seq = le64(&buf[HDR_LEN..]);
            if seq < first_seq {
                if got.first.is_some() {
                    return Err(JournalError::Corrupt);
                }
                continue;
            }
            let frame = &buf[HDR_LEN + FRAME_FIXED..HDR_LEN + m.body_len];
            let leaf = LEAF_PREFIX_LEN + frame.len();
            if let Some(o) = out.as_deref_mut() {
                let dst = o
                    .get_mut(got.bytes..got.bytes + leaf)
                    .ok_or(JournalError::BufferTooSmall)?;
                dst[..LEAF_PREFIX_LEN].copy_from_slice(&(frame.len() as u16).to_le_bytes());
                dst[LEAF_PREFIX_LEN..].copy_from_slice(frame);
            }
            got.first.get_or_insert((seq, m.pos));
            got.bytes += leaf;
            taken += 1;
            if taken == count {
                got.end = Some((seq, cur));
            }
        }
        Ok(got)
    }

    fn frame_live(&self, seq: u64) -> bool {
        seq >= self.unsealed_from
            || self.outbox[..self.outbox_len]
                .iter()
                .any(|s| s.block.first_seq <= seq && seq <= s.block.last_seq)
    }

    /// Whether sector `i` holds no live record (blank and invalid sectors
    /// hold none).
    fn sector_dead(&mut self, i: u32, buf: &mut Buf) -> Result<bool, JournalError<F::Error>> {
        let s = F::SECTOR_SIZE;
        if self.outbox[..self.outbox_len]
            .iter()
            .any(|x| x.seal_at / s == i || x.first_at / s == i)
        {
            return Ok(false);
        }
        let mut off = 0;
        let mut first = true;
        while let Some(m) = self.read_record(i * s + off, s - off, buf)? {
            if (m.kind == KIND_SECTOR) != first {
                break;
            }
            first = false;
            if m.kind == KIND_FRAME && self.frame_live(le64(&buf[HDR_LEN..])) {
                return Ok(false);
            }
            off += m.len as u32;
        }
        Ok(true)
    }

    /// Extends `free_ahead` over dead sectors after the head.
    fn refresh_free(&mut self, buf: &mut Buf) -> Result<(), JournalError<F::Error>> {
        loop {
            let i = (self.head + 1 + self.free_ahead) % self.sectors;
            if i == self.head || !self.sector_dead(i, buf)? {
                break;
            }
            self.free_ahead += 1;
        }
        self.free_stale = false;
        Ok(())
    }

    /// Whether a frame record of `len` bytes fits and still leaves room for
    /// the reserved control records.
    fn frame_fits(&self, len: u32) -> bool {
        let s = F::SECTOR_SIZE;
        let hdr = SECTOR_RECORD_LEN as u32;
        let (rem, free) = if self.head_off + len <= s {
            (s - self.head_off - len, self.free_ahead)
        } else if self.free_ahead > 0 && hdr + len <= s {
            (s - hdr - len, self.free_ahead - 1)
        } else {
            return false;
        };
        let per_sector = (s - hdr) as usize / SEAL_RECORD_LEN;
        rem as usize / SEAL_RECORD_LEN + free as usize * per_sector >= reserved_control_records(O)
    }

    /// Moves the head into the next sector: retire, erase, write its header.
    fn advance(&mut self, buf: &mut Buf) -> Result<(), JournalError<F::Error>> {
        if self.free_ahead == 0 && self.free_stale {
            self.refresh_free(buf)?;
        }
        if self.free_ahead == 0 {
            return Err(JournalError::Capacity);
        }
        let s = F::SECTOR_SIZE;
        let next = (self.head + 1) % self.sectors;
        let at = next * s;
        let mut word = [0u8; 4];
        self.flash
            .read(at, &mut word)
            .map_err(JournalError::Flash)?;
        if word != [0xff; 4] && word != [0; 4] {
            // Retire first: a torn erase then leaves no valid header behind.
            self.flash.write(at, &[0; 4]).map_err(JournalError::Flash)?;
            self.stats.bytes_written += 4;
        }
        self.flash.erase_sector(at).map_err(JournalError::Flash)?;
        self.stats.sectors_erased += 1;
        if self.unsealed_at.sector == next {
            // Everything in the erased sector was dead, so unsealed frames
            // (if any) come after it.
            self.unsealed_at = Cursor {
                sector: (next + 1) % self.sectors,
                off: 0,
            };
        }
        let seq = self.head_seq.wrapping_add(1);
        let b = &mut buf[HDR_LEN..];
        b[..SECTOR_BODY].fill(0);
        b[0..4].copy_from_slice(&seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.next_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.unsealed_from.to_le_bytes());
        b[24..32].copy_from_slice(&self.tip.next_height.to_le_bytes());
        b[32..64].copy_from_slice(&self.tip.prev_hash);
        let len = self.seal_record(KIND_SECTOR, SECTOR_BODY, buf);
        self.program(at, &buf[..len])?;
        self.head = next;
        self.head_seq = seq;
        self.head_off = len as u32;
        self.free_ahead -= 1;
        self.free_stale = true;
        Ok(())
    }

    /// Fills in the record header, padding and CRC around a body already in
    /// `buf`; returns the record length.
    fn seal_record(&self, kind: u8, body_len: usize, buf: &mut Buf) -> usize {
        let len = record_len(body_len);
        buf[0] = MAGIC;
        buf[1] = kind;
        buf[2..4].copy_from_slice(&(body_len as u16).to_le_bytes());
        buf[HDR_LEN + body_len..len - CRC_LEN].fill(0);
        let crc = crc32(&buf[..len - CRC_LEN]);
        buf[len - CRC_LEN..len].copy_from_slice(&crc.to_le_bytes());
        len
    }

    /// Writes `rec` at `at` and reads it back. On failure the rest of the
    /// head sector is abandoned and a record that did land is voided.
    fn program(&mut self, at: u32, rec: &[u8]) -> Result<(), JournalError<F::Error>> {
        if let Err(e) = self.flash.write(at, rec) {
            self.head_off = F::SECTOR_SIZE;
            return Err(JournalError::Flash(e));
        }
        self.stats.records_written += 1;
        self.stats.bytes_written += rec.len() as u64;
        let mut chunk = [0u8; 32];
        let mut off = 0;
        while off < rec.len() {
            let n = (rec.len() - off).min(chunk.len());
            let c = &mut chunk[..n];
            let read = self.flash.read(at + off as u32, c);
            if read.is_err() || c != &rec[off..off + n] {
                self.stats.verify_failures += 1;
                // Best effort: a zero magic makes the record invalid for sure.
                let _ = self.flash.write(at, &[0; 4]);
                self.head_off = F::SECTOR_SIZE;
                return Err(match read {
                    Err(e) => JournalError::Flash(e),
                    Ok(()) => JournalError::VerifyFailed,
                });
            }
            off += n;
        }
        Ok(())
    }

    /// Writes a record whose body is in `buf`, moving to the next sector if
    /// the head has no room; returns its offset.
    fn write_record(
        &mut self,
        kind: u8,
        body_len: usize,
        buf: &mut Buf,
    ) -> Result<u32, JournalError<F::Error>> {
        let len = record_len(body_len) as u32;
        if self.head_off + len > F::SECTOR_SIZE {
            // The body must survive `advance`, which uses a buffer of its own.
            let mut scratch = [0u8; MAX_RECORD_LEN];
            self.advance(&mut scratch)?;
        }
        let len = self.seal_record(kind, body_len, buf);
        let at = self.head * F::SECTOR_SIZE + self.head_off;
        self.program(at, &buf[..len])?;
        self.head_off += len as u32;
        Ok(at)
    }
}

/// Iterator over journaled frames after a mark ([`Journal::records_after`]).
pub struct Records<'j, F: Flash, const O: usize> {
    journal: &'j mut Journal<F, O>,
    cur: Cursor,
    mark: u64,
    done: bool,
}

impl<F: Flash, const O: usize> Iterator for Records<'_, F, O> {
    type Item = Result<FrameRecord, JournalError<F::Error>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut buf = [0u8; MAX_RECORD_LEN];
        loop {
            match self.journal.step(&mut self.cur, &mut buf) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Ok(Some(m)) if m.kind == KIND_FRAME => {
                    let b = &buf[HDR_LEN..HDR_LEN + m.body_len];
                    let seq = le64(b);
                    if seq <= self.mark {
                        continue;
                    }
                    let frame = &b[FRAME_FIXED..];
                    let mut r = FrameRecord {
                        seq,
                        wall_ms: le64(&b[8..]),
                        src: [0; 6],
                        len: frame.len() as u16,
                        bytes: [0; MAX_FRAME_LEN],
                    };
                    r.src.copy_from_slice(&b[16..22]);
                    r.bytes[..frame.len()].copy_from_slice(frame);
                    return Some(Ok(r));
                }
                Ok(Some(_)) => {}
            }
        }
    }
}

// The RAM figure in the module docs and docs/hardware.md, checked when the
// crate is built for the firmware's targets.
#[cfg(target_arch = "riscv32")]
const _: () =
    assert!(core::mem::size_of::<Journal<&mut crate::state::MemFlash<4096>, 8>>() == 128 + 72 * 8);
