//! Persistent state in a small flash partition: a log of fixed 64-byte
//! records spread over two or more 4 KiB sectors.
//!
//! NOR flash can only clear bits, and a sector wears out after ~100 000
//! erases, so state is never rewritten in place: each update appends a record
//! with a higher sequence number, and the newest record that passes its CRC
//! wins. A sector is erased only when the log moves into it, and the newest
//! record is always in another sector at that moment, so a power cut during an
//! erase or a write loses at most the record being written.
//!
//! Wear: 64 records per sector; with two sectors and one record per boot plus
//! one per energy checkpoint (default every 300 s), each sector is erased
//! every 128 records, about 820 times a year: a century before wear-out.
//!
//! ## Record (64 bytes, little-endian)
//! ```text
//! 0   2  magic 0x4750 ("PG" on the wire)
//! 2   1  kind: 1 meter, 2 relay
//! 3   1  reserved = 0
//! 4   4  sequence number of the record (u32, +1 per append)
//! 8   52 payload (kind-specific; see MeterState and RelayState)
//! 60  4  CRC-32 of bytes 0..60
//! ```

use gridpow_proto::wire::serial::crc32;

/// A flash region (one partition), addressed from 0.
///
/// NOR semantics: `write` can only clear bits of erased (`0xFF`) bytes;
/// `erase_sector` sets a whole sector back to `0xFF`.
pub trait Flash {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Erase unit in bytes.
    const SECTOR_SIZE: u32;
    /// Size of the region in bytes (a multiple of the sector size).
    fn size(&self) -> u32;
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;
    /// Writes `data` at `offset` (4-byte aligned).
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;
    /// Erases the sector starting at `offset`.
    fn erase_sector(&mut self, offset: u32) -> Result<(), Self::Error>;
}

/// Why persistent state could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError<E> {
    /// The flash driver failed.
    Flash(E),
    /// What was written does not read back (worn or failing flash).
    VerifyFailed,
    /// The region is smaller than two sectors or not sector-aligned.
    BadRegion,
    /// Boot epochs are exhausted (2³² boots): the meter needs a new key id.
    EpochsExhausted,
}

/// Record size.
pub const RECORD_LEN: usize = 64;
/// Payload size.
pub const PAYLOAD_LEN: usize = 52;
const MAGIC: u16 = 0x4750;

/// Record kind of a meter.
pub const KIND_METER: u8 = 1;
/// Record kind of a relay.
pub const KIND_RELAY: u8 = 2;

/// The append-only state log.
pub struct StateLog<F: Flash> {
    flash: F,
    kind: u8,
    /// Offset of the next record to write.
    next: u32,
    /// Sequence number of the newest valid record.
    seq: Option<u32>,
    latest: Option<[u8; PAYLOAD_LEN]>,
    writes: u64,
    erases: u64,
}

fn slot_is_blank(b: &[u8; RECORD_LEN]) -> bool {
    b.iter().all(|&x| x == 0xff)
}

fn parse(b: &[u8; RECORD_LEN], kind: u8) -> Option<(u32, [u8; PAYLOAD_LEN])> {
    if u16::from_le_bytes([b[0], b[1]]) != MAGIC || b[2] != kind || b[3] != 0 {
        return None;
    }
    if crc32(&b[..60]).to_le_bytes() != b[60..64] {
        return None;
    }
    let seq = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut p = [0u8; PAYLOAD_LEN];
    p.copy_from_slice(&b[8..60]);
    Some((seq, p))
}

impl<F: Flash> StateLog<F> {
    /// Scans the region for the newest record of `kind`.
    pub fn open(mut flash: F, kind: u8) -> Result<Self, StateError<F::Error>> {
        let sector = F::SECTOR_SIZE;
        let size = flash.size();
        if sector < RECORD_LEN as u32 || size < 2 * sector || size % sector != 0 {
            return Err(StateError::BadRegion);
        }
        let mut best: Option<(u32, u32, [u8; PAYLOAD_LEN])> = None;
        let mut buf = [0u8; RECORD_LEN];
        let mut off = 0;
        while off + RECORD_LEN as u32 <= size {
            flash.read(off, &mut buf).map_err(StateError::Flash)?;
            if let Some((seq, p)) = parse(&buf, kind) {
                if best.is_none_or(|(s, _, _)| seq > s) {
                    best = Some((seq, off, p));
                }
            }
            off += RECORD_LEN as u32;
        }
        let mut log = StateLog {
            flash,
            kind,
            next: 0,
            seq: best.map(|b| b.0),
            latest: best.map(|b| b.2),
            writes: 0,
            erases: 0,
        };
        log.next = match best {
            None => 0,
            Some((_, off, _)) => log.first_blank_after(off + RECORD_LEN as u32)?,
        };
        Ok(log)
    }

    /// The first blank slot from `from` to the end of its sector, or the start
    /// of the next sector (which is erased before use).
    fn first_blank_after(&mut self, mut from: u32) -> Result<u32, StateError<F::Error>> {
        let sector = F::SECTOR_SIZE;
        let size = self.flash.size();
        if from >= size {
            return Ok(0);
        }
        let mut buf = [0u8; RECORD_LEN];
        while from % sector != 0 {
            self.flash.read(from, &mut buf).map_err(StateError::Flash)?;
            if slot_is_blank(&buf) {
                return Ok(from);
            }
            from += RECORD_LEN as u32;
        }
        Ok(if from >= size { 0 } else { from })
    }

    /// The payload of the newest record, if any.
    pub fn latest(&self) -> Option<&[u8; PAYLOAD_LEN]> {
        self.latest.as_ref()
    }

    /// Records written and sectors erased since `open` (for wear statistics).
    pub fn wear(&self) -> (u64, u64) {
        (self.writes, self.erases)
    }

    /// The flash region back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// Appends a record and reads it back. Only after `Ok` is the payload durable.
    pub fn append(&mut self, payload: &[u8; PAYLOAD_LEN]) -> Result<(), StateError<F::Error>> {
        let sector = F::SECTOR_SIZE;
        let seq = self.seq.map_or(0, |s| s.wrapping_add(1));
        let mut rec = [0u8; RECORD_LEN];
        rec[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        rec[2] = self.kind;
        rec[4..8].copy_from_slice(&seq.to_le_bytes());
        rec[8..60].copy_from_slice(payload);
        let crc = crc32(&rec[..60]);
        rec[60..64].copy_from_slice(&crc.to_le_bytes());

        let at = self.next;
        if at % sector == 0 {
            self.flash.erase_sector(at).map_err(StateError::Flash)?;
            self.erases += 1;
        }
        self.flash.write(at, &rec).map_err(StateError::Flash)?;
        self.writes += 1;
        let mut back = [0u8; RECORD_LEN];
        self.flash.read(at, &mut back).map_err(StateError::Flash)?;
        let next = at + RECORD_LEN as u32;
        self.next = if next >= self.flash.size() { 0 } else { next };
        if back != rec {
            // Leave the slot behind; the next append goes to a fresh one.
            return Err(StateError::VerifyFailed);
        }
        self.seq = Some(seq);
        self.latest = Some(*payload);
        Ok(())
    }
}

/// What a meter persists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MeterState {
    /// The boot epoch in use (reserved before the first frame of the boot).
    pub boot_epoch: u32,
    /// Imported energy at the checkpoint, mWh.
    pub import_mwh: u64,
    /// Exported energy at the checkpoint, mWh.
    pub export_mwh: u64,
}

impl MeterState {
    /// Payload layout: epoch u32 ‖ import u64 ‖ export u64 ‖ zeros.
    pub fn to_payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0..4].copy_from_slice(&self.boot_epoch.to_le_bytes());
        p[4..12].copy_from_slice(&self.import_mwh.to_le_bytes());
        p[12..20].copy_from_slice(&self.export_mwh.to_le_bytes());
        p
    }

    /// Inverse of [`MeterState::to_payload`].
    pub fn from_payload(p: &[u8; PAYLOAD_LEN]) -> Self {
        let mut e = [0u8; 4];
        e.copy_from_slice(&p[0..4]);
        let mut i = [0u8; 8];
        i.copy_from_slice(&p[4..12]);
        let mut x = [0u8; 8];
        x.copy_from_slice(&p[12..20]);
        MeterState {
            boot_epoch: u32::from_le_bytes(e),
            import_mwh: u64::from_le_bytes(i),
            export_mwh: u64::from_le_bytes(x),
        }
    }
}

/// What a standalone relay persists: the tip of its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RelayState {
    /// Height the next block gets.
    pub next_height: u64,
    /// Hash of the last sealed block (zeros before genesis).
    pub prev_hash: [u8; 32],
}

impl RelayState {
    /// Payload layout: next_height u64 ‖ prev_hash (32) ‖ zeros.
    pub fn to_payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[0..8].copy_from_slice(&self.next_height.to_le_bytes());
        p[8..40].copy_from_slice(&self.prev_hash);
        p
    }

    /// Inverse of [`RelayState::to_payload`].
    pub fn from_payload(p: &[u8; PAYLOAD_LEN]) -> Self {
        let mut h = [0u8; 8];
        h.copy_from_slice(&p[0..8]);
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&p[8..40]);
        RelayState {
            next_height: u64::from_le_bytes(h),
            prev_hash: prev,
        }
    }
}

/// The chain tip as the protocol core's block lifecycle takes it.
impl From<RelayState> for gridpow_proto::lifecycle::ChainTip {
    fn from(s: RelayState) -> Self {
        gridpow_proto::lifecycle::ChainTip {
            next_height: s.next_height,
            prev_hash: s.prev_hash,
        }
    }
}

/// Reserves the boot epoch for this boot: one above the last one used (and at
/// least `min_epoch`), written and read back before returning. Call it before
/// the first frame of a boot; the energy registers carry over from the last
/// checkpoint.
pub fn reserve_boot_epoch<F: Flash>(
    log: &mut StateLog<F>,
    min_epoch: u32,
) -> Result<MeterState, StateError<F::Error>> {
    let prev = log.latest().map(MeterState::from_payload);
    let epoch = match prev {
        None => min_epoch.max(1),
        Some(p) => p
            .boot_epoch
            .checked_add(1)
            .ok_or(StateError::EpochsExhausted)?
            .max(min_epoch),
    };
    let state = MeterState {
        boot_epoch: epoch,
        ..prev.unwrap_or_default()
    };
    log.append(&state.to_payload())?;
    Ok(state)
}

/// A NOR flash in RAM for tests and the simulator, with a write budget to
/// simulate a power cut in the middle of a write.
pub struct MemFlash<const N: usize> {
    data: [u8; N],
    /// Bytes still writable before the simulated power cut; `None` = unlimited.
    pub write_budget: Option<usize>,
    /// Erases per sector so far (index = sector number, up to 16 sectors).
    pub erase_counts: [u32; 16],
}

impl<const N: usize> Default for MemFlash<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MemFlash<N> {
    /// An erased flash.
    pub fn new() -> Self {
        MemFlash {
            data: [0xff; N],
            write_budget: None,
            erase_counts: [0; 16],
        }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8; N] {
        &self.data
    }

    /// Writes raw bytes as a programmer would (for tests).
    pub fn program(&mut self, offset: usize, data: &[u8]) {
        self.data[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// Errors of [`MemFlash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemFlashError {
    /// Outside the region or misaligned.
    OutOfBounds,
    /// The simulated power cut happened.
    PowerCut,
}

impl<const N: usize> Flash for MemFlash<N> {
    type Error = MemFlashError;
    const SECTOR_SIZE: u32 = 4096;

    fn size(&self) -> u32 {
        N as u32
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), MemFlashError> {
        let o = offset as usize;
        let src = self
            .data
            .get(o..o + buf.len())
            .ok_or(MemFlashError::OutOfBounds)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), MemFlashError> {
        let o = offset as usize;
        if o % 4 != 0 || o + data.len() > N {
            return Err(MemFlashError::OutOfBounds);
        }
        for (i, &b) in data.iter().enumerate() {
            if let Some(budget) = self.write_budget.as_mut() {
                if *budget == 0 {
                    return Err(MemFlashError::PowerCut);
                }
                *budget -= 1;
            }
            self.data[o + i] &= b;
        }
        Ok(())
    }

    fn erase_sector(&mut self, offset: u32) -> Result<(), MemFlashError> {
        let o = offset as usize;
        let s = Self::SECTOR_SIZE as usize;
        if o % s != 0 || o + s > N {
            return Err(MemFlashError::OutOfBounds);
        }
        self.data[o..o + s].fill(0xff);
        if let Some(c) = self.erase_counts.get_mut(o / s) {
            *c += 1;
        }
        Ok(())
    }
}

impl<F: Flash> Flash for &mut F {
    type Error = F::Error;
    const SECTOR_SIZE: u32 = F::SECTOR_SIZE;
    fn size(&self) -> u32 {
        (**self).size()
    }
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        (**self).write(offset, data)
    }
    fn erase_sector(&mut self, offset: u32) -> Result<(), Self::Error> {
        (**self).erase_sector(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Region = MemFlash<8192>;

    #[test]
    fn each_boot_reserves_a_higher_epoch() {
        let mut flash = Region::new();
        let mut last = 0;
        for _ in 0..300 {
            let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
            let s = reserve_boot_epoch(&mut log, 0).unwrap();
            assert_eq!(s.boot_epoch, last + 1);
            last = s.boot_epoch;
        }
        // 300 records over two sectors of 64: both sectors were erased several times.
        assert!(flash.erase_counts[0] >= 2 && flash.erase_counts[1] >= 2);
    }

    #[test]
    fn min_epoch_lifts_the_epoch_after_an_erased_state() {
        let mut flash = Region::new();
        let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
        assert_eq!(reserve_boot_epoch(&mut log, 500).unwrap().boot_epoch, 500);
        assert_eq!(reserve_boot_epoch(&mut log, 500).unwrap().boot_epoch, 501);
    }

    #[test]
    fn power_cut_during_a_write_keeps_the_previous_record() {
        for cut in 0..RECORD_LEN {
            let mut flash = Region::new();
            {
                let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
                for _ in 0..70 {
                    reserve_boot_epoch(&mut log, 0).unwrap();
                }
            }
            flash.write_budget = Some(cut);
            {
                let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
                assert!(reserve_boot_epoch(&mut log, 0).is_err());
            }
            flash.write_budget = None;
            let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
            let prev = MeterState::from_payload(log.latest().unwrap()).boot_epoch;
            assert_eq!(prev, 70, "cut after {cut} bytes");
            // The torn slot is skipped and the next epoch is still new.
            assert_eq!(reserve_boot_epoch(&mut log, 0).unwrap().boot_epoch, 71);
        }
    }

    #[test]
    fn energy_checkpoints_survive_and_epochs_do_not_move() {
        let mut flash = Region::new();
        let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
        let s = reserve_boot_epoch(&mut log, 0).unwrap();
        let cp = MeterState {
            import_mwh: 1234,
            export_mwh: 5,
            ..s
        };
        log.append(&cp.to_payload()).unwrap();
        let mut log = StateLog::open(&mut flash, KIND_METER).unwrap();
        let s2 = reserve_boot_epoch(&mut log, 0).unwrap();
        assert_eq!(s2.boot_epoch, 2);
        assert_eq!((s2.import_mwh, s2.export_mwh), (1234, 5));
    }

    #[test]
    fn relay_and_meter_records_do_not_mix() {
        let mut flash = Region::new();
        let mut log = StateLog::open(&mut flash, KIND_RELAY).unwrap();
        let st = RelayState {
            next_height: 9,
            prev_hash: [3; 32],
        };
        log.append(&st.to_payload()).unwrap();
        assert!(StateLog::open(&mut flash, KIND_METER)
            .unwrap()
            .latest()
            .is_none());
        let log = StateLog::open(&mut flash, KIND_RELAY).unwrap();
        assert_eq!(RelayState::from_payload(log.latest().unwrap()), st);
    }
}
