//! The durable outbox: every sealed block stays on disk until the grid
//! server's commit receipt for it arrives, and the chain head survives even
//! when every block has been confirmed and deleted.
//!
//! ```text
//! outbox/<height, 20 digits>.blk   "GPO1" ‖ height u64 ‖ first_jsn u64 ‖ last_jsn u64 ‖
//!                                  hash [32] ‖ len u32 ‖ block[len] ‖ crc32
//! state/chain.state                "GPC1" ‖ next_height u64 ‖ head_hash [32] ‖ sealed_jsn u64 ‖ crc32
//! ```
//! Both are written to a temporary file, fsynced, renamed and the directory
//! fsynced, so a crash leaves a whole file or none. `chain.state` is written
//! only when the newest block file is about to be deleted; otherwise the chain
//! head is the newest block file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::BlockPacket;
use gridpow_proto::Hash;

use crate::fsutil::{self, Reader};
use crate::RelayError;

const BLOCK_MAGIC: &[u8; 4] = b"GPO1";
const CHAIN_MAGIC: &[u8; 4] = b"GPC1";

/// Where the chain stands: the next block's height and parent, and the last
/// journal record covered by a sealed block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// Height the next block gets (0: no block yet).
    pub next_height: u64,
    /// Hash of the newest block (zeros before the genesis block).
    pub head_hash: Hash,
    /// Journal records with jsn ≤ this are in sealed blocks (or had nothing new).
    pub sealed_jsn: u64,
}

impl ChainHead {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(60);
        b.extend_from_slice(CHAIN_MAGIC);
        b.extend_from_slice(&self.next_height.to_le_bytes());
        b.extend_from_slice(&self.head_hash);
        b.extend_from_slice(&self.sealed_jsn.to_le_bytes());
        fsutil::push_crc(&mut b);
        b
    }

    fn decode(data: &[u8]) -> Option<ChainHead> {
        let mut r = Reader::new(fsutil::check_crc(data)?);
        if r.take(4)? != CHAIN_MAGIC {
            return None;
        }
        let h = ChainHead {
            next_height: r.u64()?,
            head_hash: r.array()?,
            sealed_jsn: r.u64()?,
        };
        r.rest().is_empty().then_some(h)
    }
}

/// A block waiting for its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Height.
    pub height: u64,
    /// Header hash.
    pub hash: Hash,
    /// jsn of its first leaf.
    pub first_jsn: u64,
    /// jsn of its last leaf.
    pub last_jsn: u64,
    /// Length of the block message in bytes.
    pub len: u32,
    /// Its file.
    pub path: PathBuf,
}

/// The outbox directory and the chain state.
pub struct Outbox {
    dir: PathBuf,
    state_path: PathBuf,
    base: ChainHead,
    entries: BTreeMap<u64, OutboxEntry>,
}

fn corrupt(path: &Path, message: &str) -> RelayError {
    RelayError::Corrupt {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Encodes an outbox file.
fn encode_block_file(
    height: u64,
    first_jsn: u64,
    last_jsn: u64,
    hash: &Hash,
    block: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(block.len() + 72);
    b.extend_from_slice(BLOCK_MAGIC);
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&first_jsn.to_le_bytes());
    b.extend_from_slice(&last_jsn.to_le_bytes());
    b.extend_from_slice(hash);
    b.extend_from_slice(&(block.len() as u32).to_le_bytes());
    b.extend_from_slice(block);
    fsutil::push_crc(&mut b);
    b
}

/// Decodes an outbox file into its entry fields and the block bytes.
fn decode_block_file(data: &[u8]) -> Option<(u64, u64, u64, Hash, &[u8])> {
    let mut r = Reader::new(fsutil::check_crc(data)?);
    if r.take(4)? != BLOCK_MAGIC {
        return None;
    }
    let height = r.u64()?;
    let first = r.u64()?;
    let last = r.u64()?;
    let hash: Hash = r.array()?;
    let len = r.u32()? as usize;
    let block = r.take(len)?;
    if !r.rest().is_empty() {
        return None;
    }
    let packet = BlockPacket::new_checked(block).ok()?;
    (packet.header().hash(&RustCrypto) == hash && packet.header().height == height)
        .then_some((height, first, last, hash, block))
}

impl Outbox {
    /// Opens the outbox under `data_dir` (`outbox/`, `state/chain.state`),
    /// removing temporary files a crash left behind.
    pub fn open(data_dir: &Path) -> Result<Outbox, RelayError> {
        let dir = data_dir.join("outbox");
        let state_dir = data_dir.join("state");
        fsutil::create_dir(&dir)?;
        fsutil::create_dir(&state_dir)?;
        let state_path = state_dir.join("chain.state");
        let base = match std::fs::read(&state_path) {
            Ok(d) => ChainHead::decode(&d)
                .ok_or_else(|| corrupt(&state_path, "chain state fails its CRC or format check"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChainHead::default(),
            Err(e) => {
                return Err(RelayError::Io {
                    path: state_path,
                    source: e,
                })
            }
        };
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(RelayError::io(&dir))? {
            let entry = entry.map_err(RelayError::io(&dir))?;
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("tmp") => {
                    std::fs::remove_file(&path).map_err(RelayError::io(&path))?;
                }
                Some("blk") => {
                    let data = std::fs::read(&path).map_err(RelayError::io(&path))?;
                    let (height, first_jsn, last_jsn, hash, block) = decode_block_file(&data)
                        .ok_or_else(|| {
                            corrupt(&path, "outbox block fails its CRC or format check")
                        })?;
                    entries.insert(
                        height,
                        OutboxEntry {
                            height,
                            hash,
                            first_jsn,
                            last_jsn,
                            len: block.len() as u32,
                            path,
                        },
                    );
                }
                _ => {}
            }
        }
        Ok(Outbox {
            dir,
            state_path,
            base,
            entries,
        })
    }

    /// The chain head: the newest block file, or the saved state if newer.
    pub fn head(&self) -> ChainHead {
        match self.entries.last_key_value() {
            Some((_, e)) if e.height + 1 > self.base.next_height => ChainHead {
                next_height: e.height + 1,
                head_hash: e.hash,
                sealed_jsn: e.last_jsn,
            },
            _ => self.base,
        }
    }

    /// Blocks awaiting receipts, by height.
    pub fn entries(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.entries.values()
    }

    /// Number of blocks awaiting receipts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether every block is confirmed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads a block's bytes back.
    pub fn read_block(&self, height: u64) -> Result<Option<Vec<u8>>, RelayError> {
        let Some(e) = self.entries.get(&height) else {
            return Ok(None);
        };
        read_block_file(&e.path).map(Some)
    }

    /// Stores a sealed block durably. It must extend the head.
    pub fn push(
        &mut self,
        block: &[u8],
        first_jsn: u64,
        last_jsn: u64,
    ) -> Result<OutboxEntry, RelayError> {
        let packet = BlockPacket::new_checked(block).map_err(|e| {
            corrupt(
                &self.dir,
                &format!("sealing produced a malformed block: {e}"),
            )
        })?;
        let header = *packet.header();
        let head = self.head();
        if header.height != head.next_height || header.prev_hash != head.head_hash {
            return Err(corrupt(&self.dir, "block does not extend the chain head"));
        }
        let hash = header.hash(&RustCrypto);
        let path = self.dir.join(format!("{:020}.blk", header.height));
        fsutil::write_atomic(
            &path,
            &encode_block_file(header.height, first_jsn, last_jsn, &hash, block),
        )?;
        let entry = OutboxEntry {
            height: header.height,
            hash,
            first_jsn,
            last_jsn,
            len: block.len() as u32,
            path,
        };
        self.entries.insert(header.height, entry.clone());
        Ok(entry)
    }

    /// Drops a block whose receipt arrived. Returns `false` when no block with
    /// that height and hash is waiting (a repeated or foreign receipt).
    pub fn confirm(&mut self, height: u64, hash: &Hash) -> Result<bool, RelayError> {
        self.release(height, hash, None)
    }

    /// Drops a block the server refused for good (receipt status 3), moving
    /// its file to `refused/` beside the outbox, where it stays for the
    /// operator (nothing deletes it). Returns the archived file's path, or
    /// `None` when no block with that height and hash is waiting.
    pub fn refuse(&mut self, height: u64, hash: &Hash) -> Result<Option<PathBuf>, RelayError> {
        let dir = self.dir.with_file_name("refused");
        fsutil::create_dir(&dir)?;
        let to = dir.join(format!("{height:020}-{}.blk", hex::encode(&hash[..8])));
        Ok(self.release(height, hash, Some(&to))?.then_some(to))
    }

    /// Forgets a waiting block: deletes its file, or renames it to `archive`.
    fn release(
        &mut self,
        height: u64,
        hash: &Hash,
        archive: Option<&Path>,
    ) -> Result<bool, RelayError> {
        let Some(e) = self.entries.get(&height) else {
            return Ok(false);
        };
        if &e.hash != hash {
            return Ok(false);
        }
        let head = self.head();
        if height + 1 == head.next_height {
            // The newest block goes: keep the chain head durable first.
            let state = ChainHead {
                next_height: height + 1,
                head_hash: *hash,
                sealed_jsn: e.last_jsn,
            };
            fsutil::write_atomic(&self.state_path, &state.encode())?;
            self.base = state;
        }
        let path = e.path.clone();
        match archive {
            Some(to) => fsutil::rename_durable(&path, to)?,
            None => std::fs::remove_file(&path).map_err(RelayError::io(&path))?,
        }
        self.entries.remove(&height);
        Ok(true)
    }

    /// Journal records with jsn ≤ this are no longer needed: every block
    /// holding them is confirmed (records in a gap had nothing new).
    pub fn confirmed_jsn(&self) -> u64 {
        match self.entries.first_key_value() {
            Some((_, e)) => e.first_jsn.saturating_sub(1),
            None => self.head().sealed_jsn,
        }
    }
}

/// Reads a block's bytes from an outbox file, checking it.
pub fn read_block_file(path: &Path) -> Result<Vec<u8>, RelayError> {
    let data = std::fs::read(path).map_err(RelayError::io(path))?;
    decode_block_file(&data)
        .map(|(_, _, _, _, b)| b.to_vec())
        .ok_or_else(|| corrupt(path, "outbox block fails its CRC or format check"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use gridpow_proto::block::BlockBuilder;
    use gridpow_proto::pow::solve_blocking;

    fn block(height: u64, prev: Hash) -> Vec<u8> {
        let mut buf = vec![0u8; 1024];
        let mut b = BlockBuilder::new(&mut buf).unwrap();
        b.push_leaf(&RustCrypto, &[1, 1, 0, 0, height as u8])
            .unwrap();
        let mut h = b.header(&RustCrypto, 1, height, prev, 1_700_000_000_000, 4);
        solve_blocking(&mut h);
        let n = b.finish(&h, &SigningKey::from_bytes(&[3; 32])).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn outbox_keeps_blocks_until_confirmed_and_the_head_survives_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.head(), ChainHead::default());
        let b0 = block(0, [0; 32]);
        let e0 = o.push(&b0, 1, 10).unwrap();
        let b1 = block(1, e0.hash);
        let e1 = o.push(&b1, 12, 20).unwrap();
        assert!(
            o.push(&block(1, e0.hash), 21, 22).is_err(),
            "height 1 is taken"
        );
        assert_eq!(o.confirmed_jsn(), 0);
        // Receipts may come out of order: the newest first.
        assert!(!o.confirm(1, &e0.hash).unwrap(), "hash must match");
        assert!(o.confirm(1, &e1.hash).unwrap());
        assert_eq!(
            o.head(),
            ChainHead {
                next_height: 2,
                head_hash: e1.hash,
                sealed_jsn: 20
            }
        );
        assert_eq!(o.confirmed_jsn(), 0, "block 0 still waits");
        drop(o);
        let mut o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o.read_block(0).unwrap().unwrap(), b0);
        assert_eq!(o.head().next_height, 2);
        assert!(o.confirm(0, &e0.hash).unwrap());
        assert!(
            !o.confirm(0, &e0.hash).unwrap(),
            "a repeated receipt changes nothing"
        );
        assert_eq!(o.confirmed_jsn(), 20);
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert!(o.is_empty());
        assert_eq!(
            o.head(),
            ChainHead {
                next_height: 2,
                head_hash: e1.hash,
                sealed_jsn: 20
            }
        );
    }

    #[test]
    fn a_damaged_outbox_file_is_reported_and_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let e = o.push(&block(0, [0; 32]), 1, 1).unwrap();
        std::fs::write(dir.path().join("outbox/00000000000000000001.tmp"), b"half").unwrap();
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.len(), 1);
        assert!(!dir.path().join("outbox/00000000000000000001.tmp").exists());
        let mut data = std::fs::read(&e.path).unwrap();
        data[200] ^= 1;
        std::fs::write(&e.path, data).unwrap();
        assert!(matches!(
            Outbox::open(dir.path()),
            Err(RelayError::Corrupt { .. })
        ));
    }
}
