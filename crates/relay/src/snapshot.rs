//! The durable ingress state: per meter, its replay window and delivered mark
//! as of a journal position. The journal thread keeps it up to date with every
//! committed record (so it never runs ahead of what is fsynced) and writes it
//! to `state/ingress.snap` before compaction deletes journal segments.
//!
//! ```text
//! "GPS1" ‖ jsn u64 ‖ count u32 ‖ count × entry ‖ crc32
//! entry: meter_id u32 ‖ started u8 ‖ epoch u32 ‖ top u32 ‖ bitmap u64 ‖
//!        has_mark u8 ‖ mark_epoch u32 ‖ mark_next_seq u32
//! ```

use std::collections::HashMap;
use std::path::Path;

use gridpow_proto::ingress::DeliveredMark;
use gridpow_proto::replay::ReplayWindow;

use crate::fsutil::{self, Reader};
use crate::journal::FrameRecord;
use crate::RelayError;

const MAGIC: &[u8; 4] = b"GPS1";

/// One meter's ingress state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterState {
    /// Anti-replay window.
    pub window: ReplayWindow,
    /// Reading de-duplication mark.
    pub delivered: Option<DeliveredMark>,
}

/// Ingress state after applying every record up to `jsn`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressSnapshot {
    /// Last record applied (0: none).
    pub jsn: u64,
    /// State by meter id.
    pub meters: HashMap<u32, MeterState>,
}

impl IngressSnapshot {
    /// Applies a committed record exactly as the ingress did when it accepted
    /// the frame: the window records the counter, and the delivered mark moves
    /// to the frame's end if the frame delivered anything new.
    pub fn apply(&mut self, rec: &FrameRecord) {
        if rec.jsn <= self.jsn {
            return;
        }
        self.jsn = rec.jsn;
        let Some(id) = rec.id() else { return };
        let m = self.meters.entry(id.meter_id).or_default();
        m.window.accept(id.boot_epoch, id.counter);
        if rec.first_new < id.reading_count {
            m.delivered = Some(DeliveredMark {
                epoch: id.boot_epoch,
                next_seq: rec.first_seq.wrapping_add(u32::from(id.reading_count)),
            });
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.meters.len() * 30);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.jsn.to_le_bytes());
        b.extend_from_slice(&(self.meters.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.meters.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let m = &self.meters[&id];
            b.extend_from_slice(&id.to_le_bytes());
            b.push(u8::from(m.window.started));
            b.extend_from_slice(&m.window.epoch.to_le_bytes());
            b.extend_from_slice(&m.window.top.to_le_bytes());
            b.extend_from_slice(&m.window.bitmap.to_le_bytes());
            let mark = m.delivered.unwrap_or_default();
            b.push(u8::from(m.delivered.is_some()));
            b.extend_from_slice(&mark.epoch.to_le_bytes());
            b.extend_from_slice(&mark.next_seq.to_le_bytes());
        }
        fsutil::push_crc(&mut b);
        b
    }

    fn decode(data: &[u8]) -> Option<IngressSnapshot> {
        let body = fsutil::check_crc(data)?;
        let mut r = Reader::new(body);
        if r.take(4)? != MAGIC {
            return None;
        }
        let jsn = r.u64()?;
        let n = r.u32()?;
        let mut meters = HashMap::with_capacity(n as usize);
        for _ in 0..n {
            let id = r.u32()?;
            let window = ReplayWindow {
                started: r.u8()? != 0,
                epoch: r.u32()?,
                top: r.u32()?,
                bitmap: r.u64()?,
            };
            let has = r.u8()? != 0;
            let mark = DeliveredMark {
                epoch: r.u32()?,
                next_seq: r.u32()?,
            };
            meters.insert(
                id,
                MeterState {
                    window,
                    delivered: has.then_some(mark),
                },
            );
        }
        r.rest()
            .is_empty()
            .then_some(IngressSnapshot { jsn, meters })
    }

    /// Reads a snapshot; `Ok(None)` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<IngressSnapshot>, RelayError> {
        match std::fs::read(path) {
            Ok(data) => Self::decode(&data)
                .map(Some)
                .ok_or_else(|| RelayError::Corrupt {
                    path: path.to_path_buf(),
                    message: "snapshot fails its CRC or format check".into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RelayError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Writes the snapshot atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), RelayError> {
        fsutil::write_atomic(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.snap");
        assert_eq!(IngressSnapshot::load(&path).unwrap(), None);
        let mut s = IngressSnapshot {
            jsn: 42,
            ..Default::default()
        };
        s.meters.insert(
            7,
            MeterState {
                window: ReplayWindow {
                    started: true,
                    epoch: 3,
                    top: 99,
                    bitmap: 0xf0f0,
                },
                delivered: Some(DeliveredMark {
                    epoch: 3,
                    next_seq: 600,
                }),
            },
        );
        s.meters.insert(8, MeterState::default());
        s.save(&path).unwrap();
        assert_eq!(IngressSnapshot::load(&path).unwrap(), Some(s));
        let mut data = std::fs::read(&path).unwrap();
        data[10] ^= 1;
        std::fs::write(&path, data).unwrap();
        assert!(IngressSnapshot::load(&path).is_err());
    }
}
