//! The flash journal under power cuts at every byte, random operation
//! sequences against a model, and a full journal.
//!
//! The power-cut sweep records every flash write and erase of a scripted run
//! once, then rebuilds the flash image as it would be after the first N bytes
//! written or erased, for every N, and reopens it: a cut after N bytes leaves
//! exactly that image, because the code before the cut ran exactly as in the
//! recorded run (a cross-check re-runs a sample of cut points with a real
//! write budget and compares images).

use gridpow_firmware_logic::journal::{
    frame_record_len, Journal, JournalError, OutboxBlock, MAX_FRAME_LEN,
};
use gridpow_firmware_logic::state::{Flash, RelayState};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::merkle::RootBuilder;
use gridpow_proto::wire::block::{BlockHeaderRepr, LEAF_PREFIX_LEN};
use gridpow_proto::wire::BlockPacket;
use proptest::prelude::*;
use std::cell::Cell;

// ---------------------------------------------------------------------------
// A NOR flash that can lose power after any byte written or erased.

#[derive(Clone, Debug)]
enum Op {
    Write(u32, Vec<u8>),
    Erase(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultError {
    Misaligned,
    PowerCut,
}

/// `SEC`-byte sectors. Bytes written and bytes erased both count against
/// the budget; an erase cut after k bytes leaves k bytes erased and the rest
/// as they were: the first k, or with `reverse_erase` the last k (so the
/// sector's old header outlives everything else).
#[derive(Clone)]
struct FaultFlash<const SEC: u32> {
    data: Vec<u8>,
    /// Units left before the power cut (a `Cell`, so a test can arm it
    /// while a journal holds the flash).
    budget: Cell<Option<u64>>,
    /// The next write lands with one byte cleared (a stuck cell).
    stick_next_write: Cell<bool>,
    /// The read after the next write returns a flipped bit (a flaky read).
    flip_read_after_write: Cell<bool>,
    flip_pending: bool,
    used: u64,
    log: Option<Vec<Op>>,
    erases: Vec<u32>,
    reverse_erase: bool,
}

impl<const SEC: u32> FaultFlash<SEC> {
    fn new(sectors: u32) -> Self {
        FaultFlash {
            data: vec![0xff; (sectors * SEC) as usize],
            budget: Cell::new(None),
            stick_next_write: Cell::new(false),
            flip_read_after_write: Cell::new(false),
            flip_pending: false,
            used: 0,
            log: None,
            erases: vec![0; sectors as usize],
            reverse_erase: false,
        }
    }

    fn from_image(data: Vec<u8>) -> Self {
        let n = data.len() / SEC as usize;
        FaultFlash {
            data,
            budget: Cell::new(None),
            stick_next_write: Cell::new(false),
            flip_read_after_write: Cell::new(false),
            flip_pending: false,
            used: 0,
            log: None,
            erases: vec![0; n],
            reverse_erase: false,
        }
    }

    fn spend(&mut self) -> Result<(), FaultError> {
        if self.budget.get().is_some_and(|b| self.used >= b) {
            return Err(FaultError::PowerCut);
        }
        self.used += 1;
        Ok(())
    }
}

impl<const SEC: u32> Flash for FaultFlash<SEC> {
    type Error = FaultError;
    const SECTOR_SIZE: u32 = SEC;

    fn size(&self) -> u32 {
        self.data.len() as u32
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), FaultError> {
        // The ESP32 driver wants 4-byte aligned offsets and lengths.
        let o = offset as usize;
        if o % 4 != 0 || buf.len() % 4 != 0 || o + buf.len() > self.data.len() {
            return Err(FaultError::Misaligned);
        }
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        if std::mem::take(&mut self.flip_pending) {
            buf[0] ^= 1;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), FaultError> {
        let o = offset as usize;
        if o % 4 != 0 || data.len() % 4 != 0 || o + data.len() > self.data.len() {
            return Err(FaultError::Misaligned);
        }
        if let Some(l) = self.log.as_mut() {
            l.push(Op::Write(offset, data.to_vec()));
        }
        for (i, &b) in data.iter().enumerate() {
            self.spend()?;
            self.data[o + i] &= b;
        }
        if self.stick_next_write.take() {
            if let Some(i) = (4..data.len()).find(|&i| data[i] != 0) {
                self.data[o + i] = 0;
            }
        }
        self.flip_pending = self.flip_read_after_write.take();
        Ok(())
    }

    fn erase_sector(&mut self, offset: u32) -> Result<(), FaultError> {
        let o = offset as usize;
        if o % SEC as usize != 0 || o + SEC as usize > self.data.len() {
            return Err(FaultError::Misaligned);
        }
        if let Some(l) = self.log.as_mut() {
            l.push(Op::Erase(offset));
        }
        self.erases[o / SEC as usize] += 1;
        for i in 0..SEC as usize {
            self.spend()?;
            let i = if self.reverse_erase {
                SEC as usize - 1 - i
            } else {
                i
            };
            self.data[o + i] = 0xff;
        }
        Ok(())
    }
}

fn op_units<const SEC: u32>(op: &Op) -> u64 {
    match op {
        Op::Write(_, d) => d.len() as u64,
        Op::Erase(_) => u64::from(SEC),
    }
}

/// Applies the first `k` units of `op` to `img`.
fn apply<const SEC: u32>(img: &mut [u8], op: &Op, k: u64, reverse_erase: bool) {
    match op {
        Op::Write(at, d) => {
            for (i, &b) in d.iter().take(k as usize).enumerate() {
                img[*at as usize + i] &= b;
            }
        }
        Op::Erase(at) => {
            let at = *at as usize;
            let k = k as usize;
            if reverse_erase {
                img[at + SEC as usize - k..at + SEC as usize].fill(0xff);
            } else {
                img[at..at + k].fill(0xff);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The model: what must be true after a sequence of calls that returned Ok.

#[derive(Clone, Debug, PartialEq, Eq)]
struct MFrame {
    seq: u64,
    src: [u8; 6],
    wall_ms: u64,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct MBlock {
    block: OutboxBlock,
    bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Model {
    frames: Vec<MFrame>,
    outbox: Vec<MBlock>,
    tip: RelayState,
    unsealed_from: u64,
    max_seq: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            frames: Vec::new(),
            outbox: Vec::new(),
            tip: RelayState::default(),
            unsealed_from: 1,
            max_seq: 0,
        }
    }

    fn pending(&self) -> Vec<MFrame> {
        self.frames
            .iter()
            .filter(|f| f.seq >= self.unsealed_from)
            .cloned()
            .collect()
    }

    fn live(&self, seq: u64) -> bool {
        seq >= self.unsealed_from
            || self
                .outbox
                .iter()
                .any(|b| b.block.first_seq <= seq && seq <= b.block.last_seq)
    }
}

/// A deterministic generator (xorshift64*), so every run is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn frame_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next() as u8).collect()
}

fn append<F: Flash, const O: usize>(
    j: &mut Journal<F, O>,
    m: &mut Model,
    src: [u8; 6],
    wall_ms: u64,
    bytes: Vec<u8>,
) -> Result<u64, JournalError<F::Error>> {
    let seq = j.append(&src, wall_ms, &bytes)?;
    assert!(seq > m.max_seq, "sequence numbers only grow");
    m.max_seq = seq;
    m.frames.push(MFrame {
        seq,
        src,
        wall_ms,
        bytes,
    });
    Ok(seq)
}

/// Seals the next `n` unsealed frames (at most the pending ones) as the next
/// block, the way the relay does it: leaves from the journal, Merkle root,
/// header, signature, then `add_block`.
fn seal<F: Flash, const O: usize>(
    j: &mut Journal<F, O>,
    m: &mut Model,
    n: usize,
    nonce: u64,
) -> Result<Option<OutboxBlock>, JournalError<F::Error>> {
    let pending: Vec<MFrame> = m.pending().into_iter().take(n).collect();
    if pending.is_empty() {
        return Ok(None);
    }
    let mut root = RootBuilder::new();
    for f in &pending {
        root.push_leaf(&RustCrypto, &f.bytes);
    }
    let header = BlockHeaderRepr {
        difficulty: 1,
        relay_id: 7,
        height: m.tip.next_height,
        prev_hash: m.tip.prev_hash,
        merkle_root: root.root(&RustCrypto),
        leaf_count: pending.len() as u32,
        time_ms: 1_700_000_000_000 + nonce,
        nonce,
    };
    let sig = [nonce as u8 ^ 0x5a; 64];
    let b = j.add_block(&RustCrypto, &header, &sig, pending[0].seq)?;
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(&sig);
    for f in &pending {
        bytes.extend_from_slice(&(f.bytes.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&f.bytes);
    }
    let last = pending.last().map_or(0, |f| f.seq);
    assert_eq!(
        b,
        OutboxBlock {
            height: header.height,
            hash: header.hash(&RustCrypto),
            first_seq: pending[0].seq,
            last_seq: last,
            count: pending.len() as u32,
            len: bytes.len() as u32,
        }
    );
    m.tip = RelayState {
        next_height: header.height + 1,
        prev_hash: b.hash,
    };
    m.unsealed_from = last + 1;
    m.outbox.push(MBlock { block: b, bytes });
    Ok(Some(b))
}

/// One scripted call of the proptests, against journal `j` and model `m`.
fn run_act<F: Flash, const O: usize>(
    j: &mut Journal<F, O>,
    m: &mut Model,
    a: &Act,
    i: usize,
) -> Result<(), JournalError<F::Error>>
where
    F::Error: core::fmt::Debug,
{
    match a {
        Act::Append(len, b) => append(j, m, [*b; 6], i as u64, vec![*b; *len]).map(|_| ()),
        Act::Seal(n) => seal(j, m, *n, i as u64).map(|_| ()),
        Act::Confirm(k) if !m.outbox.is_empty() => {
            let i = k % m.outbox.len();
            confirm(j, m, i)
        }
        _ => Ok(()),
    }
}

fn confirm<F: Flash, const O: usize>(
    j: &mut Journal<F, O>,
    m: &mut Model,
    i: usize,
) -> Result<(), JournalError<F::Error>> {
    let b = m.outbox[i].block;
    j.confirm_block(b.height, &b.hash)?;
    m.outbox.remove(i);
    Ok(())
}

/// Checks a journal against the model: tip, outbox (and every block's bytes),
/// the frames (every live one present, byte-identical, in order; nothing the
/// model does not know), and that new sequence numbers are fresh.
fn check<F: Flash, const O: usize>(j: &mut Journal<F, O>, m: &Model, ctx: &str)
where
    F::Error: core::fmt::Debug,
{
    assert_eq!(j.tip(), m.tip, "{ctx}: tip");
    assert_eq!(j.unsealed_from(), m.unsealed_from, "{ctx}: unsealed_from");
    assert!(j.next_seq() > m.max_seq, "{ctx}: next_seq reused");
    let outbox: Vec<OutboxBlock> = j.outbox().collect();
    let want: Vec<OutboxBlock> = m.outbox.iter().map(|b| b.block).collect();
    assert_eq!(outbox, want, "{ctx}: outbox");
    let mut buf = vec![0u8; 8192];
    for b in &m.outbox {
        let n = j
            .write_block(b.block.height, &mut buf)
            .expect("block bytes");
        assert_eq!(&buf[..n], &b.bytes[..], "{ctx}: block {}", b.block.height);
        BlockPacket::new_checked(&buf[..n]).expect("a well-framed block");
    }
    let all: Vec<_> = j
        .records_after(0)
        .collect::<Result<Vec<_>, _>>()
        .expect("records");
    let mut last = 0;
    for r in &all {
        assert!(r.seq > last, "{ctx}: records in order");
        last = r.seq;
        let f = m
            .frames
            .iter()
            .find(|f| f.seq == r.seq)
            .unwrap_or_else(|| panic!("{ctx}: phantom record {}", r.seq));
        assert_eq!(
            (r.frame(), r.src, r.wall_ms),
            (&f.bytes[..], f.src, f.wall_ms),
            "{ctx}: record {} changed",
            r.seq
        );
    }
    for f in m.frames.iter().filter(|f| m.live(f.seq)) {
        assert!(
            all.iter().any(|r| r.seq == f.seq),
            "{ctx}: live record {} lost",
            f.seq
        );
    }
    let pending: Vec<u64> = j
        .records_after(m.unsealed_from - 1)
        .map(|r| r.expect("record").seq)
        .collect();
    let want: Vec<u64> = m.pending().iter().map(|f| f.seq).collect();
    assert_eq!(pending, want, "{ctx}: unsealed frames");
}

// ---------------------------------------------------------------------------
// The scripted run for the power-cut sweep.

const SEC: u32 = 1024;
const SECTORS: u32 = 8;
const OUTBOX: usize = 2;
type Small = FaultFlash<SEC>;

/// A geometry for the sweep: sector size, sector count, outbox size, and
/// the smallest block the script seals when that many frames wait (a
/// sector's worth of 84-byte frames, the relay's policy that
/// `reserved_control_records` assumes).
#[derive(Clone, Copy)]
struct Geometry {
    sectors: u32,
    min_block: usize,
    reverse_erase: bool,
}

/// Runs the script on `flash`; returns after each call the flash units used
/// so far and the model, stopping at the first flash error (a power cut).
fn run_script<const S: u32, const O: usize>(
    flash: &mut FaultFlash<S>,
    steps: usize,
    g: Geometry,
) -> Vec<(u64, Model)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut m = Model::new();
    let mut out = vec![(0, m.clone())];
    let Ok(mut j) =
        Journal::<&mut FaultFlash<S>, O>::open(&RustCrypto, &mut *flash, RelayState::default())
    else {
        return out;
    };
    let mut wall = 1_700_000_000_000u64;
    for step in 0..steps {
        let r = rng.below(10);
        let res: Result<(), JournalError<FaultError>> = if r < 6 {
            let len = match rng.below(3) {
                0 => 84,
                1 => 244,
                _ => 84 + rng.below((MAX_FRAME_LEN - 83) as u64) as usize,
            };
            let bytes = frame_bytes(&mut rng, len);
            let src = [2, 0, 0, 0, 0, rng.below(64) as u8];
            wall += rng.below(10_000);
            match append(&mut j, &mut m, src, wall, bytes) {
                Err(JournalError::Capacity) => Ok(()),
                r => r.map(|_| ()),
            }
        } else if r < 8 {
            let n = g.min_block + rng.below(g.min_block as u64) as usize;
            match seal(&mut j, &mut m, n, step as u64) {
                Err(JournalError::OutboxFull) => Ok(()),
                r => r.map(|_| ()),
            }
        } else if m.outbox.is_empty() {
            Ok(())
        } else {
            // Receipts arrive out of order now and then.
            let i = if rng.below(4) == 0 {
                m.outbox.len() - 1
            } else {
                0
            };
            confirm(&mut j, &mut m, i)
        };
        match res {
            Ok(()) => {}
            Err(JournalError::Flash(FaultError::PowerCut)) => return out,
            Err(e) => panic!("step {step}: {e:?}"),
        }
        out.push((j.flash().used, m.clone()));
        if step % 5 == 4 {
            // A reboot now and then; `open` only reads.
            j.into_inner();
            j = Journal::open(&RustCrypto, &mut *flash, RelayState::default()).expect("reopen");
        }
    }
    out
}

/// After a cut: reopen, check, carry on (append, confirm, seal), then reopen
/// twice and check each time (recovery is stable).
fn recover_and_continue<const S: u32, const O: usize>(
    img: Vec<u8>,
    m: &Model,
    ctx: &str,
    g: Geometry,
) {
    let mut flash = FaultFlash::<S>::from_image(img);
    let mut m = m.clone();
    {
        let mut j =
            Journal::<&mut FaultFlash<S>, O>::open(&RustCrypto, &mut flash, RelayState::default())
                .unwrap_or_else(|e| panic!("{ctx}: open: {e:?}"));
        check(&mut j, &m, ctx);
        let mut rng = Rng(99);
        for _ in 0..2 {
            match append(&mut j, &mut m, [9; 6], 5, frame_bytes(&mut rng, 84)) {
                Ok(_) | Err(JournalError::Capacity) => {}
                Err(e) => panic!("{ctx}: append after recovery: {e:?}"),
            }
        }
        if !m.outbox.is_empty() {
            if let Err(e) = confirm(&mut j, &mut m, 0) {
                panic!(
                    "{ctx}: confirm after recovery: {e:?}; free {} outbox {} pending {}",
                    j.free_sectors(),
                    m.outbox.len(),
                    m.pending().len()
                );
            }
        }
        match seal(&mut j, &mut m, g.min_block, 4242) {
            Ok(_) | Err(JournalError::OutboxFull) => {}
            Err(e) => panic!("{ctx}: seal after recovery: {e:?}"),
        }
    }
    let mut j =
        Journal::<&mut FaultFlash<S>, O>::open(&RustCrypto, &mut flash, RelayState::default())
            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e:?}"));
    check(&mut j, &m, ctx);
    let state = (
        j.tip(),
        j.next_seq(),
        j.unsealed_from(),
        j.outbox().collect::<Vec<_>>(),
    );
    j.into_inner();
    let j = Journal::<&mut FaultFlash<S>, O>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap_or_else(|e| panic!("{ctx}: second reopen: {e:?}"));
    let again = (
        j.tip(),
        j.next_seq(),
        j.unsealed_from(),
        j.outbox().collect::<Vec<_>>(),
    );
    assert_eq!(again, state, "{ctx}: reopening changed the state");
}

/// Records the script once, then cuts the power after every `stride`-th
/// byte written or erased (every byte with stride 1; only bytes erased with
/// `erases_only`), recovers and checks. Returns the number of cut points.
fn sweep<const S: u32, const O: usize>(
    steps: usize,
    stride: u64,
    erases_only: bool,
    g: Geometry,
) -> u64 {
    let mut flash = FaultFlash::<S>::new(g.sectors);
    flash.reverse_erase = g.reverse_erase;
    flash.log = Some(Vec::new());
    let calls = run_script::<S, O>(&mut flash, steps, g);
    let ops = flash.log.take().unwrap_or_default();
    let total: u64 = ops.iter().map(op_units::<S>).sum();
    assert_eq!(total, flash.used);
    // The script must wrap the ring and erase every sector more than once.
    assert!(flash.erases.iter().all(|&e| e >= 2), "{:?}", flash.erases);

    let mut img = vec![0xffu8; (g.sectors * S) as usize];
    let mut done = 0u64;
    let mut points = 0u64;
    let mut call = 0;
    for op in &ops {
        let units = op_units::<S>(op);
        for k in 0..units {
            let n = done + k;
            if n % stride != 0 || (erases_only && matches!(op, Op::Write(..))) {
                continue;
            }
            while call + 1 < calls.len() && calls[call + 1].0 <= n {
                call += 1;
            }
            let mut cut = img.clone();
            apply::<S>(&mut cut, op, k, g.reverse_erase);
            recover_and_continue::<S, O>(cut, &calls[call].1, &format!("cut after {n} bytes"), g);
            points += 1;
        }
        apply::<S>(&mut img, op, units, g.reverse_erase);
        done += units;
    }
    let last = calls.last().map(|c| c.1.clone()).unwrap_or_else(Model::new);
    recover_and_continue::<S, O>(img, &last, "no cut", g);
    points += 1;
    println!(
        "power-cut points: {points} of {total} bytes ({} calls, {} flash ops, erases per sector {:?})",
        calls.len() - 1,
        ops.len(),
        flash.erases
    );
    points
}

const SMALL: Geometry = Geometry {
    sectors: SECTORS,
    min_block: 8,
    reverse_erase: false,
};

#[test]
fn power_cut_at_every_byte_loses_nothing_acknowledged() {
    let points = sweep::<SEC, OUTBOX>(160, 1, false, SMALL);
    assert!(points > 50_000);
}

#[test]
fn power_cut_during_an_erase_that_spares_the_old_header_loses_nothing() {
    // Erasing from the end keeps the retired sector's header to the last
    // byte: only the retirement write makes such a sector invalid. (Cuts
    // during writes are the same as in the sweep above.)
    let g = Geometry {
        reverse_erase: true,
        ..SMALL
    };
    sweep::<SEC, OUTBOX>(100, 1, true, g);
}

#[test]
fn power_cut_in_the_firmware_geometry_loses_nothing_acknowledged() {
    // 4 KiB sectors and 8 outbox blocks, as on the relay; every 13th byte.
    let g = Geometry {
        sectors: 5,
        min_block: 35,
        reverse_erase: false,
    };
    sweep::<4096, 8>(260, 13, false, g);
}

#[test]
fn a_real_write_budget_leaves_the_image_the_sweep_assumes() {
    let mut rec = Small::new(SECTORS);
    rec.log = Some(Vec::new());
    run_script::<SEC, OUTBOX>(&mut rec, 60, SMALL);
    let ops = rec.log.take().unwrap_or_default();
    let total = rec.used;
    let mut n = 0;
    while n <= total {
        let mut f = Small::new(SECTORS);
        f.budget.set(Some(n));
        run_script::<SEC, OUTBOX>(&mut f, 60, SMALL);
        let mut img = vec![0xffu8; (SECTORS * SEC) as usize];
        let mut left = n;
        for op in &ops {
            let k = op_units::<SEC>(op).min(left);
            apply::<SEC>(&mut img, op, k, false);
            left -= k;
        }
        assert!(f.data == img, "images differ after {n} bytes");
        n += 97;
    }
}

// ---------------------------------------------------------------------------
// Capacity.

#[test]
fn full_journal_refuses_with_capacity_and_accepts_after_confirmation() {
    let mut flash = Small::new(SECTORS);
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    let mut m = Model::new();
    let mut rng = Rng(5);
    let mut accepted = 0;
    loop {
        match append(&mut j, &mut m, [1; 6], 1, frame_bytes(&mut rng, 244)) {
            Ok(_) => accepted += 1,
            Err(JournalError::Capacity) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(accepted >= 10, "only {accepted} frames fit");
    assert_eq!(j.has_room_for(244), Ok(false));
    // A refused frame changed nothing, and nothing accepted was dropped.
    check(&mut j, &m, "full");
    assert_eq!(
        j.append(&[1; 6], 1, &[0; 244]),
        Err(JournalError::Capacity),
        "still full"
    );
    // The reserve lets the relay seal and confirm its way out.
    while !m.pending().is_empty() {
        if m.outbox.len() == OUTBOX {
            confirm(&mut j, &mut m, 0).unwrap();
        }
        seal(&mut j, &mut m, 4, 1).unwrap();
    }
    while !m.outbox.is_empty() {
        confirm(&mut j, &mut m, 0).unwrap();
    }
    assert_eq!(j.has_room_for(244), Ok(true));
    append(&mut j, &mut m, [1; 6], 2, frame_bytes(&mut rng, 244)).expect("room again");
    check(&mut j, &m, "after release");
    j.into_inner();
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    check(&mut j, &m, "reopened");
}

#[test]
fn sequence_numbers_and_tip_survive_when_everything_was_reclaimed() {
    let mut flash = Small::new(SECTORS);
    let mut m = Model::new();
    let mut rng = Rng(11);
    {
        let mut j =
            Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
                .unwrap();
        for round in 0..30 {
            for _ in 0..3 {
                append(&mut j, &mut m, [3; 6], round, frame_bytes(&mut rng, 200)).unwrap();
            }
            seal(&mut j, &mut m, 3, round).unwrap();
            confirm(&mut j, &mut m, 0).unwrap();
        }
        assert!(m.outbox.is_empty());
    }
    // Every sector was reused; no seal record of the last block may remain.
    let j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    assert_eq!(j.tip(), m.tip);
    assert_eq!(j.tip().next_height, 30);
    assert!(j.next_seq() > m.max_seq);
    j.into_inner();
    assert!(flash.erases.iter().all(|&e| e >= 2));
}

#[test]
fn a_blank_journal_starts_from_the_migrated_tip() {
    let mut flash = Small::new(SECTORS);
    let tip = RelayState {
        next_height: 41,
        prev_hash: [4; 32],
    };
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, tip).unwrap();
    assert_eq!(j.tip(), tip);
    let mut m = Model::new();
    m.tip = tip;
    append(&mut j, &mut m, [1; 6], 1, vec![1; 84]).unwrap();
    seal(&mut j, &mut m, 1, 9).unwrap();
    j.into_inner();
    // Once the journal exists it is the authority, whatever tip is passed.
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    assert_eq!(j.tip().next_height, 42);
    check(&mut j, &m, "migrated");
}

#[test]
fn misuse_is_refused_with_typed_errors() {
    let mut flash = Small::new(SECTORS);
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    assert_eq!(j.append(&[0; 6], 0, &[]), Err(JournalError::BadFrameLength));
    assert_eq!(
        j.append(&[0; 6], 0, &[0; MAX_FRAME_LEN + 1]),
        Err(JournalError::BadFrameLength)
    );
    let seq = j.append(&[0; 6], 0, &[1; 84]).unwrap();
    let mut h = BlockHeaderRepr {
        difficulty: 0,
        relay_id: 1,
        height: 0,
        prev_hash: [0; 32],
        merkle_root: [0; 32],
        leaf_count: 2,
        time_ms: 0,
        nonce: 0,
    };
    assert_eq!(
        j.add_block(&RustCrypto, &h, &[0; 64], seq),
        Err(JournalError::BadLeafCount)
    );
    h.leaf_count = 1;
    assert_eq!(
        j.add_block(&RustCrypto, &h, &[0; 64], seq + 1),
        Err(JournalError::NotNextBlock)
    );
    h.height = 1;
    assert_eq!(
        j.add_block(&RustCrypto, &h, &[0; 64], seq),
        Err(JournalError::NotNextBlock)
    );
    h.height = 0;
    let b = j.add_block(&RustCrypto, &h, &[0; 64], seq).unwrap();
    assert_eq!(
        j.confirm_block(b.height, &[1; 32]),
        Err(JournalError::UnknownBlock)
    );
    let mut small = [0u8; 100];
    assert_eq!(
        j.write_block(0, &mut small),
        Err(JournalError::BufferTooSmall)
    );
    assert_eq!(
        Journal::<_, OUTBOX>::open(
            &RustCrypto,
            FaultFlash::<SEC>::new(2),
            RelayState::default()
        )
        .err(),
        Some(JournalError::BadRegion)
    );
}

#[test]
fn journal_ram_is_small_and_independent_of_the_partition() {
    let n8 = core::mem::size_of::<Journal<&mut Small, 8>>();
    let n4 = core::mem::size_of::<Journal<&mut Small, 4>>();
    println!("Journal<&mut F, 8>: {n8} bytes, Journal<&mut F, 4>: {n4} bytes");
    assert!(n8 <= 1024, "{n8}");
    // 84-byte frames take 116 bytes on flash, 244-byte frames 276.
    assert_eq!(frame_record_len(84), 116);
    assert_eq!(frame_record_len(244), 276);
}

// ---------------------------------------------------------------------------
// Random operation sequences against the model.

#[derive(Clone, Debug)]
enum Act {
    Append(usize, u8),
    Seal(usize),
    Confirm(usize),
    Reopen,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => (84usize..=MAX_FRAME_LEN, any::<u8>()).prop_map(|(l, b)| Act::Append(l, b)),
        2 => (8usize..16).prop_map(Act::Seal),
        2 => (0usize..4).prop_map(Act::Confirm),
        1 => Just(Act::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_operations_match_the_model(acts in proptest::collection::vec(act(), 1..150)) {
        const O: usize = 3;
        let mut flash = FaultFlash::<1024>::new(6);
        let mut m = Model::new();
        let mut j = Journal::<&mut FaultFlash<1024>, O>::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
        let mut wall = 0;
        for (i, a) in acts.iter().enumerate() {
            match a {
                Act::Append(len, b) => {
                    wall += 10;
                    let nothing_live = m.frames.iter().all(|f| !m.live(f.seq));
                    match append(&mut j, &mut m, [*b; 6], wall, vec![*b; *len]) {
                        Ok(_) => {}
                        Err(JournalError::Capacity) => {
                            prop_assert!(!nothing_live, "refused with nothing live");
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                Act::Seal(n) => match seal(&mut j, &mut m, *n, i as u64) {
                    Ok(_) => {}
                    Err(JournalError::OutboxFull) => prop_assert_eq!(m.outbox.len(), O),
                    Err(e) => panic!("{e:?}"),
                },
                Act::Confirm(k) => {
                    if !m.outbox.is_empty() {
                        let i = k % m.outbox.len();
                        confirm(&mut j, &mut m, i).unwrap();
                    }
                }
                Act::Reopen => {
                    j.into_inner();
                    j = Journal::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
                }
            }
            check(&mut j, &m, &format!("after {a:?}"));
            // Any mark: the frames after it, as a filter of the whole list.
            let all: Vec<u64> = j.records_after(0).map(|r| r.unwrap().seq).collect();
            if let Some(&mark) = all.get(all.len() / 2) {
                let after: Vec<u64> = j.records_after(mark).map(|r| r.unwrap().seq).collect();
                let want: Vec<u64> = all.iter().copied().filter(|&q| q > mark).collect();
                prop_assert_eq!(after, want);
            }
        }
    }
}

#[test]
fn leaves_of_a_block_are_framed_as_the_protocol_says() {
    let mut flash = Small::new(SECTORS);
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    let a = j.append(&[1; 6], 1, &[0xaa; 84]).unwrap();
    j.append(&[1; 6], 2, &[0xbb; 3]).unwrap();
    let mut out = [0u8; 200];
    let n = j.write_leaves(a, 2, &mut out).unwrap();
    assert_eq!(n, 2 * LEAF_PREFIX_LEN + 87);
    assert_eq!(&out[..2], &84u16.to_le_bytes());
    assert_eq!(&out[86..88], &3u16.to_le_bytes());
    assert_eq!(
        j.write_leaves(a, 3, &mut out),
        Err(JournalError::BadLeafCount)
    );
}

// ---------------------------------------------------------------------------
// Failing flash.

#[test]
fn a_write_that_does_not_read_back_is_refused_and_never_resurfaces() {
    let mut flash = Small::new(SECTORS);
    let mut m = Model::new();
    let mut rng = Rng(21);
    {
        let mut j =
            Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
                .unwrap();
        for _ in 0..3 {
            append(&mut j, &mut m, [1; 6], 1, frame_bytes(&mut rng, 84)).unwrap();
        }
        // A stuck cell: the frame lands damaged.
        j.flash().stick_next_write.set(true);
        assert_eq!(
            j.append(&[1; 6], 2, &[7; 84]),
            Err(JournalError::VerifyFailed)
        );
        append(&mut j, &mut m, [1; 6], 3, frame_bytes(&mut rng, 84)).expect("next sector");
        check(&mut j, &m, "after a stuck write");
        // A flaky read-back: the seal landed intact but read back wrong, so
        // it is voided, and the block must not appear after a reboot.
        j.flash().flip_read_after_write.set(true);
        let tip = j.tip();
        let err = seal(&mut j, &mut m, 8, 1).unwrap_err();
        assert_eq!(err, JournalError::VerifyFailed);
        assert_eq!(j.tip(), tip);
        check(&mut j, &m, "after a flaky read-back");
        assert!(j.stats().verify_failures == 2);
    }
    let mut j = Journal::<&mut Small, OUTBOX>::open(&RustCrypto, &mut flash, RelayState::default())
        .unwrap();
    check(&mut j, &m, "reopened");
    // The same block seals fine now.
    seal(&mut j, &mut m, 8, 1).unwrap();
    check(&mut j, &m, "sealed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random operations with power cuts at random bytes of random calls
    /// (cuts of up to 400 bytes hit most calls that write: a frame record is
    /// 116 to 280 bytes, a sector erase 1024): after each cut the reopened
    /// journal is exactly the model of the calls that returned Ok.
    #[test]
    fn random_operations_with_power_cuts_match_the_model(
        acts in proptest::collection::vec((act(), proptest::option::of(0u64..400)), 1..120)
    ) {
        const O: usize = 3;
        let mut flash = FaultFlash::<1024>::new(6);
        let mut m = Model::new();
        let mut j = Journal::<&mut FaultFlash<1024>, O>::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
        for (i, (a, cut)) in acts.iter().enumerate() {
            // What the model would be had the call completed: a cut after the
            // last byte that differs from erased flash (0xFF) leaves a whole
            // record, so an interrupted call may still have landed.
            let mut landed = None;
            if let Some(k) = cut {
                let mut shadow = (**j.flash()).clone();
                shadow.log = None;
                let mut m2 = m.clone();
                let mut j2 = Journal::<&mut FaultFlash<1024>, O>::open(&RustCrypto, &mut shadow, RelayState::default()).unwrap();
                let _ = run_act(&mut j2, &mut m2, a, i);
                landed = Some(m2);
                let used = j.flash().used;
                j.flash().budget.set(Some(used + k));
            }
            let res = run_act(&mut j, &mut m, a, i);
            j.flash().budget.set(None);
            let reboot = match res {
                Ok(()) => matches!(a, Act::Reopen),
                Err(JournalError::Flash(FaultError::PowerCut)) => true,
                Err(JournalError::Capacity | JournalError::OutboxFull) => false,
                Err(e) => panic!("{e:?}"),
            };
            if reboot {
                j.into_inner();
                j = Journal::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
                if let (Err(_), Some(m2)) = (&res, landed) {
                    let beyond = j.records_after(m.max_seq).count();
                    let shows_m2 = j.tip() == m2.tip
                        && j.outbox().count() == m2.outbox.len()
                        && beyond == usize::from(m2.max_seq > m.max_seq);
                    if shows_m2 && (j.tip() != m.tip || j.outbox().count() != m.outbox.len() || beyond > 0) {
                        m = m2;
                    }
                }
            }
            check(&mut j, &m, &format!("after {a:?} (cut {cut:?})"));
        }
    }
}
