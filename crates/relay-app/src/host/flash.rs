use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use gridpow_firmware_logic::state::Flash;

/// A file with NOR-flash semantics: erased bytes are 0xFF, a write only
/// clears bits (the result is `old & new`, as on the chip, so a write over
/// unerased bytes shows up as a read-back mismatch, not as a clean
/// overwrite), an erase sets a whole sector to 0xFF. Every write and erase
/// is synced to disk before it returns, so what the relay wrote survives a
/// SIGKILL or a power cut as it would on the chip.
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    size: u32,
}

/// Why a [`FileFlash`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileFlashError {
    /// The file could not be read, written or synced.
    #[error("flash file: {0}")]
    Io(#[from] std::io::Error),
    /// Outside the region, or an erase not at a sector boundary.
    #[error("flash access out of bounds or misaligned")]
    OutOfBounds,
    /// The file exists with another size than asked for.
    #[error("flash file is {actual} bytes, expected {expected}")]
    WrongSize {
        /// Its size.
        actual: u64,
        /// The size asked for.
        expected: u32,
    },
}

impl FileFlash {
    /// Opens `path`, creating it erased (all 0xFF) with `size` bytes (a
    /// multiple of the 4 KiB sector) if it does not exist.
    pub fn open(path: &Path, size: u32) -> Result<Self, FileFlashError> {
        if size == 0 || size % Self::SECTOR_SIZE != 0 {
            return Err(FileFlashError::OutOfBounds);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let actual = file.metadata()?.len();
        if actual == 0 {
            file.write_all_at(&vec![0xff; size as usize], 0)?;
            file.sync_all()?;
        } else if actual != u64::from(size) {
            return Err(FileFlashError::WrongSize {
                actual,
                expected: size,
            });
        }
        Ok(FileFlash { file, size })
    }

    fn range(&self, offset: u32, len: usize) -> Result<u64, FileFlashError> {
        let end = u64::from(offset) + len as u64;
        if end > u64::from(self.size) {
            return Err(FileFlashError::OutOfBounds);
        }
        Ok(u64::from(offset))
    }
}

impl Flash for FileFlash {
    type Error = FileFlashError;
    const SECTOR_SIZE: u32 = 4096;

    fn size(&self) -> u32 {
        self.size
    }

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.range(offset, buf.len())?;
        self.file.read_exact_at(buf, at)?;
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        let at = self.range(offset, data.len())?;
        let mut cells = vec![0u8; data.len()];
        self.file.read_exact_at(&mut cells, at)?;
        for (c, d) in cells.iter_mut().zip(data) {
            *c &= d;
        }
        self.file.write_all_at(&cells, at)?;
        self.file.sync_data()?;
        Ok(())
    }

    fn erase_sector(&mut self, offset: u32) -> Result<(), Self::Error> {
        if offset % Self::SECTOR_SIZE != 0 {
            return Err(FileFlashError::OutOfBounds);
        }
        let at = self.range(offset, Self::SECTOR_SIZE as usize)?;
        self.file
            .write_all_at(&[0xff; Self::SECTOR_SIZE as usize], at)?;
        self.file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_clear_bits_and_erase_restores_ones_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flash.bin");
        let mut f = FileFlash::open(&path, 8192).unwrap();
        f.write(4, &[0x0f, 0xf0]).unwrap();
        f.write(4, &[0xff, 0x3c]).unwrap();
        let mut b = [0u8; 4];
        f.read(4, &mut b).unwrap();
        assert_eq!(b, [0x0f, 0x30, 0xff, 0xff], "old & new, the rest erased");
        drop(f);
        let mut f = FileFlash::open(&path, 8192).unwrap();
        f.read(4, &mut b).unwrap();
        assert_eq!(b[..2], [0x0f, 0x30], "durable");
        f.erase_sector(0).unwrap();
        f.read(4, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        assert!(matches!(
            f.erase_sector(100),
            Err(FileFlashError::OutOfBounds)
        ));
        assert!(matches!(
            f.write(8190, &[0; 4]),
            Err(FileFlashError::OutOfBounds)
        ));
        assert!(matches!(
            FileFlash::open(&path, 4096),
            Err(FileFlashError::WrongSize { .. })
        ));
    }
}
