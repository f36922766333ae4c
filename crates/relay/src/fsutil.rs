//! Durable file primitives: atomic replacement and directory fsync.

use std::path::Path;

use gridpow_common::durable;

use crate::RelayError;

/// Fsyncs a directory so entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RelayError> {
    durable::sync_dir(dir).map_err(RelayError::io(dir))
}

/// Replaces `path` with `data` atomically and durably ([`durable::write_file`]):
/// a crash leaves either the old or the new content.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RelayError> {
    durable::write_file(path, data, false).map_err(RelayError::io(path))
}

/// Moves `from` to `to` and makes both directories' entries durable.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<(), RelayError> {
    durable::rename(from, to).map_err(RelayError::io(to))
}

/// Creates `dir` (and parents) and makes its entry durable.
pub(crate) fn create_dir(dir: &Path) -> Result<(), RelayError> {
    durable::create_dir_all(dir).map_err(RelayError::io(dir))
}

/// Little-endian readers over a byte slice, for the relay's own file formats.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.b
    }
}

/// Appends `crc32(data)` (IEEE, as zlib) little-endian.
pub(crate) fn push_crc(data: &mut Vec<u8>) {
    let crc = gridpow_proto::wire::serial::crc32(data);
    data.extend_from_slice(&crc.to_le_bytes());
}

/// Splits off and checks a trailing CRC-32; returns the covered bytes.
pub(crate) fn check_crc(data: &[u8]) -> Option<&[u8]> {
    let split = data.len().checked_sub(4)?;
    let (body, crc) = data.split_at(split);
    (gridpow_proto::wire::serial::crc32(body).to_le_bytes() == crc).then_some(body)
}
