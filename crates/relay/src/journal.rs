//! The write-ahead journal of accepted frames.
//!
//! Every frame the ingress accepts is appended here and fsynced (many per
//! fsync: group commit) before its ACK goes out. After a crash the journal
//! rebuilds the ingress state (replay windows, delivered marks) and gives back
//! the frames not yet sealed into a block.
//!
//! Layout: `journal/<first jsn, 20 digits>.log` segments, each
//! ```text
//! header  "GPJ1" ‖ version u32 = 1 ‖ first_jsn u64
//! record  len u32 ‖ crc32 u32 ‖ body[len]         crc over len ‖ body
//! body    jsn u64 ‖ time_ms u64 ‖ src MAC [6] ‖ first_seq u32 ‖ first_new u8 ‖ frame
//! ```
//! Journal sequence numbers (jsn) start at 1 and are consecutive across
//! segments. Only the newest segment can end in a torn record (the tail of a
//! write that was never fsynced, so never ACKed): it is detected by length or
//! CRC and truncated. Damage anywhere else is reported, never skipped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use gridpow_proto::wire::uplink::UplinkPacket;
use gridpow_proto::MacAddr;

use crate::fsutil::{self, Reader};
use crate::RelayError;

const MAGIC: &[u8; 4] = b"GPJ1";
const VERSION: u32 = 1;
const SEGMENT_HEADER_LEN: u64 = 16;
const RECORD_PREFIX_LEN: usize = 8;
const BODY_FIXED_LEN: usize = 8 + 8 + 6 + 4 + 1;
const MAX_BODY_LEN: usize = BODY_FIXED_LEN + gridpow_proto::wire::ESPNOW_MAX_PAYLOAD;

/// One accepted frame as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRecord {
    /// Journal sequence number (1, 2, …).
    pub jsn: u64,
    /// Relay wall clock when accepted, Unix ms.
    pub time_ms: u64,
    /// Source MAC it was heard from.
    pub src: MacAddr,
    /// Sequence number of its first reading (from the decrypted body).
    pub first_seq: u32,
    /// Index of its first reading not delivered before (ingress `FrameInfo::first_new`).
    pub first_new: u8,
    /// The sealed frame exactly as received.
    pub frame: Vec<u8>,
}

/// Identity of a journaled frame, from its clear header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameId {
    /// Meter.
    pub meter_id: u32,
    /// Boot epoch.
    pub boot_epoch: u32,
    /// Frame counter.
    pub counter: u32,
    /// Readings in the frame.
    pub reading_count: u8,
}

impl FrameRecord {
    /// The frame's identity; `None` if the bytes are not an uplink frame
    /// (never for records the ingress wrote).
    pub fn id(&self) -> Option<FrameId> {
        let p = UplinkPacket::new_checked(&self.frame[..]).ok()?;
        Some(FrameId {
            meter_id: p.meter_id(),
            boot_epoch: p.boot_epoch(),
            counter: p.counter(),
            reading_count: p.reading_count() as u8,
        })
    }

    /// Readings delivered for the first time by this frame.
    pub fn new_readings(&self) -> u8 {
        self.id()
            .map_or(0, |id| id.reading_count.saturating_sub(self.first_new))
    }

    /// Bytes the record takes in a segment.
    pub fn encoded_len(&self) -> usize {
        RECORD_PREFIX_LEN + BODY_FIXED_LEN + self.frame.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let len = (BODY_FIXED_LEN + self.frame.len()) as u32;
        let start = out.len();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.jsn.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.push(self.first_new);
        out.extend_from_slice(&self.frame);
        let mut crc_input = Vec::with_capacity(4 + len as usize);
        crc_input.extend_from_slice(&out[start..start + 4]);
        crc_input.extend_from_slice(&out[start + RECORD_PREFIX_LEN..]);
        let crc = gridpow_proto::wire::serial::crc32(&crc_input);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(body: &[u8]) -> Option<FrameRecord> {
        let mut r = Reader::new(body);
        let rec = FrameRecord {
            jsn: r.u64()?,
            time_ms: r.u64()?,
            src: r.array()?,
            first_seq: r.u32()?,
            first_new: r.u8()?,
            frame: r.rest().to_vec(),
        };
        rec.id()?;
        Some(rec)
    }
}

/// What opening the journal found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn tail cut off the newest segment.
    pub truncated_bytes: u64,
    /// The jsn the next appended record gets.
    pub next_jsn: u64,
}

/// An append-only, segmented journal with explicit commits.
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Segments by first jsn; the last is the active one.
    segments: BTreeMap<u64, PathBuf>,
    active: File,
    active_len: u64,
    next_jsn: u64,
    buf: Vec<u8>,
    buffered: usize,
}

fn segment_path(dir: &Path, first_jsn: u64) -> PathBuf {
    dir.join(format!("{first_jsn:020}.log"))
}

fn corrupt(path: &Path, message: String) -> RelayError {
    RelayError::Corrupt {
        path: path.to_path_buf(),
        message,
    }
}

enum Scan {
    /// The whole segment is valid.
    Clean,
    /// Invalid from `at` on; `why` says what failed.
    Torn { at: u64, why: String },
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, replaying every record in order
    /// through `on_record`, and repairs a torn tail of the newest segment.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        mut on_record: impl FnMut(FrameRecord),
    ) -> Result<(Journal, Recovery), RelayError> {
        fsutil::create_dir(dir)?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(RelayError::io(dir))? {
            let entry = entry.map_err(RelayError::io(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".log") {
                if let Ok(first) = stem.parse::<u64>() {
                    segments.insert(first, entry.path());
                }
            }
        }
        let mut recovery = Recovery::default();
        let mut expected: Option<u64> = None;
        let count = segments.len();
        for (i, (&first, path)) in segments.iter().enumerate() {
            let last = i + 1 == count;
            if let Some(e) = expected {
                if e != first {
                    return Err(corrupt(
                        path,
                        format!("segment starts at jsn {first}, expected {e}"),
                    ));
                }
            }
            let mut next = first;
            match Self::scan(path, first, &mut next, &mut |r| {
                recovery.records += 1;
                on_record(r)
            })? {
                Scan::Clean => {}
                Scan::Torn { at, why } if last => {
                    let len = std::fs::metadata(path).map_err(RelayError::io(path))?.len();
                    tracing::warn!(file = %path.display(), offset = at, reason = %why, "journal tail torn by a crash; truncating");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(RelayError::io(path))?;
                    if at < SEGMENT_HEADER_LEN {
                        f.set_len(0).map_err(RelayError::io(path))?;
                        Self::write_header(&f, path, first)?;
                    } else {
                        f.set_len(at).map_err(RelayError::io(path))?;
                    }
                    f.sync_all().map_err(RelayError::io(path))?;
                    recovery.truncated_bytes = len.saturating_sub(at.max(SEGMENT_HEADER_LEN));
                }
                Scan::Torn { at, why } => {
                    return Err(corrupt(
                        path,
                        format!("damaged record at offset {at} in a sealed segment: {why}"),
                    ));
                }
            }
            expected = Some(next);
        }
        let next_jsn = expected.unwrap_or(1);
        let (active_first, active) = match segments.last_key_value() {
            Some((&first, path)) => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(RelayError::io(path))?;
                (first, f)
            }
            None => {
                let path = segment_path(dir, 1);
                let f = Self::create_segment(dir, &path, 1)?;
                segments.insert(1, path);
                (1, f)
            }
        };
        let active_path = segments.get(&active_first).cloned().unwrap_or_default();
        let active_len = active
            .metadata()
            .map_err(RelayError::io(&active_path))?
            .len();
        recovery.next_jsn = next_jsn;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                segment_bytes,
                segments,
                active,
                active_len,
                next_jsn,
                buf: Vec::with_capacity(64 << 10),
                buffered: 0,
            },
            recovery,
        ))
    }

    fn write_header(mut f: &File, path: &Path, first_jsn: u64) -> Result<(), RelayError> {
        let mut h = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&first_jsn.to_le_bytes());
        f.write_all(&h).map_err(RelayError::io(path))
    }

    fn create_segment(dir: &Path, path: &Path, first_jsn: u64) -> Result<File, RelayError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .map_err(RelayError::io(path))?;
        Self::write_header(&f, path, first_jsn)?;
        f.sync_all().map_err(RelayError::io(path))?;
        fsutil::sync_dir(dir)?;
        // Reopen in append mode so later writes land at the end.
        OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(RelayError::io(path))
    }

    /// Reads one segment; calls `on_record` for each valid record.
    fn scan(
        path: &Path,
        first: u64,
        next: &mut u64,
        on_record: &mut dyn FnMut(FrameRecord),
    ) -> Result<Scan, RelayError> {
        let mut data = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(RelayError::io(path))?;
        let mut r = Reader::new(&data);
        let header_ok =
            r.take(4) == Some(&MAGIC[..]) && r.u32() == Some(VERSION) && r.u64() == Some(first);
        if !header_ok {
            return Ok(Scan::Torn {
                at: 0,
                why: "missing or bad segment header".into(),
            });
        }
        let mut at = SEGMENT_HEADER_LEN;
        loop {
            let rest = &data[at as usize..];
            if rest.is_empty() {
                return Ok(Scan::Clean);
            }
            let torn = |why: &str| {
                Ok(Scan::Torn {
                    at,
                    why: why.to_string(),
                })
            };
            if rest.len() < RECORD_PREFIX_LEN {
                return torn("partial record prefix");
            }
            let mut p = Reader::new(rest);
            let len = p.u32().unwrap_or(0) as usize;
            let crc = p.u32().unwrap_or(0);
            if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&len) {
                return torn("impossible record length");
            }
            let Some(body) = p.take(len) else {
                return torn("record shorter than its length");
            };
            let mut crc_input = Vec::with_capacity(4 + len);
            crc_input.extend_from_slice(&rest[..4]);
            crc_input.extend_from_slice(body);
            if gridpow_proto::wire::serial::crc32(&crc_input) != crc {
                return torn("CRC mismatch");
            }
            let Some(rec) = FrameRecord::decode(body) else {
                return torn("record body does not hold an uplink frame");
            };
            if rec.jsn != *next {
                return torn(&format!("jsn {} where {} was expected", rec.jsn, next));
            }
            *next += 1;
            on_record(rec);
            at += (RECORD_PREFIX_LEN + len) as u64;
        }
    }

    /// The jsn the next appended record must carry.
    pub fn next_jsn(&self) -> u64 {
        self.next_jsn
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Buffers a record; it is durable only after [`Journal::commit`].
    /// Its jsn must be [`Journal::next_jsn`].
    pub fn append(&mut self, rec: &FrameRecord) -> Result<(), RelayError> {
        if rec.jsn != self.next_jsn || rec.frame.len() > gridpow_proto::wire::ESPNOW_MAX_PAYLOAD {
            return Err(corrupt(
                &self.dir,
                format!(
                    "append of jsn {} out of order (next is {})",
                    rec.jsn, self.next_jsn
                ),
            ));
        }
        rec.encode(&mut self.buf);
        self.buffered += 1;
        self.next_jsn += 1;
        Ok(())
    }

    /// Records buffered since the last commit.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Writes the buffered records and fsyncs (fdatasync) them; rolls to a new
    /// segment when the active one is full. Returns whether an fsync happened.
    pub fn commit(&mut self) -> Result<bool, RelayError> {
        if self.buf.is_empty() {
            return Ok(false);
        }
        let path = self.active_path();
        self.active
            .write_all(&self.buf)
            .map_err(RelayError::io(&path))?;
        self.active.sync_data().map_err(RelayError::io(&path))?;
        self.active_len += self.buf.len() as u64;
        self.buf.clear();
        self.buffered = 0;
        if self.active_len >= self.segment_bytes {
            self.roll()?;
        }
        Ok(true)
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .last_key_value()
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    fn roll(&mut self) -> Result<(), RelayError> {
        let first = self.next_jsn;
        let path = segment_path(&self.dir, first);
        self.active = Self::create_segment(&self.dir, &path, first)?;
        self.active_len = SEGMENT_HEADER_LEN;
        self.segments.insert(first, path);
        Ok(())
    }

    /// Whether [`Journal::compact`] with `upto_jsn` would delete a segment.
    pub fn compactable(&self, upto_jsn: u64) -> bool {
        let mut it = self.segments.keys();
        it.next();
        it.next()
            .is_some_and(|&second_first| second_first - 1 <= upto_jsn)
    }

    /// Deletes whole segments (never the active one) whose records all have
    /// jsn ≤ `upto_jsn`. The caller must have made the state those records
    /// built durable elsewhere (a snapshot) first. Returns how many were deleted.
    pub fn compact(&mut self, upto_jsn: u64) -> Result<usize, RelayError> {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut deleted = 0;
        for w in firsts.windows(2) {
            let (first, next_first) = (w[0], w[1]);
            if next_first - 1 > upto_jsn {
                break;
            }
            if let Some(path) = self.segments.remove(&first) {
                std::fs::remove_file(&path).map_err(RelayError::io(&path))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
    use gridpow_proto::wire::uplink::{seal, UplinkHeader};
    use gridpow_proto::wire::Reading;

    fn frame(meter: u32, counter: u32, n: usize) -> Vec<u8> {
        let keys = MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&[meter as u8; 48]));
        let h = UplinkHeader {
            key_id: 1,
            meter_id: meter,
            boot_epoch: 1,
            counter,
        };
        let mut buf = [0u8; 250];
        let len = seal(
            &RustCrypto,
            &keys,
            &h,
            counter * 6,
            &vec![Reading::default(); n],
            &mut buf,
        )
        .unwrap();
        buf[..len].to_vec()
    }

    fn rec(jsn: u64) -> FrameRecord {
        FrameRecord {
            jsn,
            time_ms: 1_700_000_000_000 + jsn,
            src: [2, 0, 0, 0, 0, 1],
            first_seq: jsn as u32 * 6,
            first_new: 0,
            frame: frame(1, jsn as u32, 6),
        }
    }

    fn replay(dir: &Path, seg: u64) -> (Journal, Recovery, Vec<FrameRecord>) {
        let mut got = Vec::new();
        let (j, r) = Journal::open(dir, seg, |rec| got.push(rec)).unwrap();
        (j, r, got)
    }

    #[test]
    fn committed_records_replay_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!((r.next_jsn, got.len()), (1, 0));
        for jsn in 1..=10 {
            j.append(&rec(jsn)).unwrap();
        }
        assert!(j.commit().unwrap());
        assert!(!j.commit().unwrap(), "nothing buffered, no fsync");
        drop(j);
        let (j, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!(got, (1..=10).map(rec).collect::<Vec<_>>());
        assert_eq!((r.next_jsn, j.next_jsn(), r.truncated_bytes), (11, 11, 0));
    }

    #[test]
    fn torn_tail_record_is_detected_by_crc_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = replay(dir.path(), 1 << 20);
        for jsn in 1..=3 {
            j.append(&rec(jsn)).unwrap();
        }
        j.commit().unwrap();
        drop(j);
        let path = segment_path(dir.path(), 1);
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of the next batch: a whole record whose last
        // bytes never reached the disk (same length, garbage CRC coverage) ...
        let mut torn = Vec::new();
        rec(4).encode(&mut torn);
        let n = torn.len();
        torn[n - 10..].fill(0);
        // ... followed by half of another record.
        let mut half = Vec::new();
        rec(5).encode(&mut half);
        torn.extend_from_slice(&half[..half.len() / 2]);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();

        let (mut j, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!(got.len(), 3);
        assert_eq!(r.truncated_bytes, torn.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        // Appending continues where the valid data ends.
        j.append(&rec(4)).unwrap();
        j.commit().unwrap();
        drop(j);
        let (_, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!((got.len(), r.next_jsn, r.truncated_bytes), (4, 5, 0));
    }

    #[test]
    fn zero_filled_tail_and_torn_length_prefix_are_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = replay(dir.path(), 1 << 20);
        j.append(&rec(1)).unwrap();
        j.commit().unwrap();
        drop(j);
        let path = segment_path(dir.path(), 1);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0u8; 4096])
            .unwrap();
        let (_, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!((got.len(), r.truncated_bytes), (1, 4096));
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[7, 1])
            .unwrap();
        let (_, r, got) = replay(dir.path(), 1 << 20);
        assert_eq!((got.len(), r.truncated_bytes), (1, 2));
    }

    #[test]
    fn damage_inside_a_sealed_segment_is_an_error_not_a_silent_skip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = replay(dir.path(), 4096);
        for jsn in 1..=40 {
            j.append(&rec(jsn)).unwrap();
            j.commit().unwrap();
        }
        assert!(j.segment_count() > 2);
        drop(j);
        let first = segment_path(dir.path(), 1);
        let mut data = std::fs::read(&first).unwrap();
        data[100] ^= 0xff;
        std::fs::write(&first, data).unwrap();
        let e = Journal::open(dir.path(), 4096, |_| {}).err().unwrap();
        assert!(matches!(e, RelayError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn compaction_deletes_only_whole_segments_below_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _, _) = replay(dir.path(), 4096);
        for jsn in 1..=60 {
            j.append(&rec(jsn)).unwrap();
            j.commit().unwrap();
        }
        let before = j.segment_count();
        assert!(before >= 4, "{before} segments");
        let second_first = *j.segments.keys().nth(1).unwrap();
        assert!(!j.compactable(second_first - 2));
        assert_eq!(j.compact(second_first - 2).unwrap(), 0);
        assert!(j.compactable(second_first - 1));
        assert_eq!(j.compact(second_first - 1).unwrap(), 1);
        assert_eq!(j.compact(u64::MAX).unwrap(), before - 2);
        assert_eq!(j.segment_count(), 1, "the active segment stays");
        drop(j);
        let (j, r, got) = replay(dir.path(), 4096);
        assert_eq!(r.next_jsn, 61);
        assert!(got
            .iter()
            .all(|g| g.jsn >= *j.segments.keys().next().unwrap()));
    }
}
