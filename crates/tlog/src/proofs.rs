//! RFC 9162 inclusion ("record") and consistency ("tree") proofs over the
//! Go-sumdb stored-hash layout (`tlog_tiles::stored_hash_index`), thin
//! wrappers around tlog_tiles with typed errors and no panics: every
//! [`HashReader`] is called through [`CheckedReader`], which refuses a
//! reply with the wrong number of hashes (tlog_tiles would panic on it).

use tlog_tiles::HashReader;

use crate::error::{from_tlog, Error, Malformed, Misuse, Rejected};
use crate::Hash;

/// Longest proof any tree of up to 2^64 leaves needs.
pub const MAX_PROOF_LEN: usize = 64;

/// A [`HashReader`] wrapper that checks the reader returns exactly one hash
/// per index; a wrong count becomes [`Misuse::ReaderCount`] instead of
/// tlog_tiles' panic.
pub struct CheckedReader<'a, R: ?Sized> {
    inner: &'a R,
    bad_count: core::cell::Cell<Option<(usize, usize)>>,
}

impl<'a, R: HashReader + ?Sized> CheckedReader<'a, R> {
    /// Wraps `inner`.
    pub fn new(inner: &'a R) -> Self {
        CheckedReader {
            inner,
            bad_count: core::cell::Cell::new(None),
        }
    }

    /// Turns a tlog_tiles error into ours, naming a wrong count if there was one.
    pub(crate) fn error(&self, e: tlog_tiles::Error) -> Error {
        match self.bad_count.get() {
            Some((asked, got)) => Misuse::ReaderCount { asked, got }.into(),
            None => from_tlog(e),
        }
    }
}

impl<R: HashReader + ?Sized> HashReader for CheckedReader<'_, R> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        let hashes = self.inner.read_hashes(indexes)?;
        if hashes.len() != indexes.len() {
            self.bad_count.set(Some((indexes.len(), hashes.len())));
            return Err(tlog_tiles::Error::BadMath);
        }
        Ok(hashes)
    }
}

fn to_hashes(p: Vec<tlog_tiles::Hash>) -> Vec<Hash> {
    p.into_iter().map(|h| h.0).collect()
}

fn from_hashes(p: &[Hash]) -> Result<Vec<tlog_tiles::Hash>, Error> {
    if p.len() > MAX_PROOF_LEN {
        return Err(Malformed::ProofTooLong.into());
    }
    Ok(p.iter().map(|h| tlog_tiles::Hash(*h)).collect())
}

/// The root hash of the tree of `size` leaves.
pub fn tree_root<R: HashReader + ?Sized>(reader: &R, size: u64) -> Result<Hash, Error> {
    let r = CheckedReader::new(reader);
    tlog_tiles::tree_hash(size, &r)
        .map(|h| h.0)
        .map_err(|e| r.error(e))
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    reader: &R,
    size: u64,
    index: u64,
) -> Result<Vec<Hash>, Error> {
    if index >= size {
        return Err(Rejected::BeyondTree.into());
    }
    let r = CheckedReader::new(reader);
    tlog_tiles::prove_record(size, index, &r)
        .map(to_hashes)
        .map_err(|e| r.error(e))
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    proof: &[Hash],
    size: u64,
    root: &Hash,
    index: u64,
    leaf_hash: &Hash,
) -> Result<(), Error> {
    if index >= size {
        return Err(Rejected::BeyondTree.into());
    }
    tlog_tiles::check_record(
        &from_hashes(proof)?,
        size,
        tlog_tiles::Hash(*root),
        index,
        tlog_tiles::Hash(*leaf_hash),
    )
    .map_err(from_tlog)
}

/// The consistency proof from the tree of `old` leaves to the tree of `new`
/// leaves; empty when `old` is 0 (the empty tree is consistent with any
/// tree, c2sp.org/tlog-witness) or equals `new`.
pub fn consistency_proof<R: HashReader + ?Sized>(
    reader: &R,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, Error> {
    if old > new {
        return Err(Rejected::BeyondTree.into());
    }
    if old == 0 {
        return Ok(Vec::new());
    }
    let r = CheckedReader::new(reader);
    tlog_tiles::prove_tree(new, old, &r)
        .map(to_hashes)
        .map_err(|e| r.error(e))
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of
/// the tree of `new` leaves with root `new_root`. For `old` = 0 the proof
/// must be empty and `old_root` the empty tree's hash.
pub fn verify_consistency(
    proof: &[Hash],
    old: u64,
    old_root: &Hash,
    new: u64,
    new_root: &Hash,
) -> Result<(), Error> {
    if old > new {
        return Err(Rejected::BeyondTree.into());
    }
    if old == 0 {
        return if proof.is_empty() && *old_root == tlog_tiles::EMPTY_HASH.0 {
            Ok(())
        } else {
            Err(Rejected::InvalidProof.into())
        };
    }
    tlog_tiles::check_tree(
        &from_hashes(proof)?,
        new,
        tlog_tiles::Hash(*new_root),
        old,
        tlog_tiles::Hash(*old_root),
    )
    .map_err(from_tlog)
}

/// The RFC 9162 leaf hash of an entry, `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    tlog_tiles::record_hash(entry).0
}

/// An in-memory log: its stored hashes in `tlog_tiles::stored_hash_index`
/// order, as the store keeps them in its table. For tests, vectors and
/// small tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryHashes {
    hashes: Vec<Hash>,
    size: u64,
}

impl MemoryHashes {
    /// An empty log.
    pub fn new() -> MemoryHashes {
        MemoryHashes::default()
    }

    /// Appends a leaf by its leaf hash; returns its index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let n = self.size;
        // The stored hashes of leaf n: the leaf and the subtrees it completes.
        // They only read hashes already stored, so this cannot fail.
        let new = match tlog_tiles::stored_hashes_for_record_hash(
            n,
            tlog_tiles::Hash(leaf),
            &CheckedReader::new(self),
        ) {
            Ok(v) => v,
            Err(_) => unreachable!("stored hashes of a new leaf read only older ones"),
        };
        self.hashes.extend(new.into_iter().map(|h| h.0));
        self.size += 1;
        n
    }

    /// Appends an entry; returns its index.
    pub fn push_entry(&mut self, entry: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(entry))
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The stored hashes, in stored-hash-index order.
    pub fn stored(&self) -> &[Hash] {
        &self.hashes
    }
}

impl HashReader for MemoryHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i))
                    .map(|h| tlog_tiles::Hash(*h))
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Short;
    impl HashReader for Short {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
            Ok(vec![
                tlog_tiles::Hash([0; 32]);
                indexes.len().saturating_sub(1)
            ])
        }
    }

    #[test]
    fn a_reader_returning_too_few_hashes_is_an_error_not_a_panic() {
        assert_eq!(
            tree_root(&Short, 7).unwrap_err().to_string(),
            "misuse: hash reader returned 2 hashes for 3 indexes"
        );
        assert!(matches!(
            inclusion_proof(&Short, 7, 3),
            Err(Error::Misuse(Misuse::ReaderCount { .. }))
        ));
        assert!(matches!(
            consistency_proof(&Short, 3, 7),
            Err(Error::Misuse(Misuse::ReaderCount { .. }))
        ));
    }

    #[test]
    fn proofs_from_a_memory_log_verify_and_wrong_ones_do_not() {
        let mut log = MemoryHashes::new();
        for i in 0u32..20 {
            log.push_entry(&i.to_le_bytes());
        }
        let root = tree_root(&log, 20).unwrap();
        let p = inclusion_proof(&log, 20, 13).unwrap();
        verify_inclusion(&p, 20, &root, 13, &leaf_hash(&13u32.to_le_bytes())).unwrap();
        assert!(matches!(
            verify_inclusion(&p, 20, &root, 12, &leaf_hash(&13u32.to_le_bytes())),
            Err(Error::Rejected(Rejected::InvalidProof))
        ));
        let old = tree_root(&log, 7).unwrap();
        let c = consistency_proof(&log, 7, 20).unwrap();
        verify_consistency(&c, 7, &old, 20, &root).unwrap();
        assert!(verify_consistency(&c, 7, &root, 20, &root).is_err());
        verify_consistency(&[], 0, &tlog_tiles::EMPTY_HASH.0, 20, &root).unwrap();
        verify_consistency(&[], 20, &root, 20, &root).unwrap();
        assert!(verify_consistency(&[], 20, &old, 20, &root).is_err());
        assert!(matches!(
            verify_inclusion(&[[0; 32]; 65], 20, &root, 1, &root),
            Err(Error::Malformed(Malformed::ProofTooLong))
        ));
        assert!(inclusion_proof(&log, 20, 20).is_err());
        assert!(tree_root(&log, 21).is_err());
        assert_eq!(tree_root(&log, 0).unwrap(), tlog_tiles::EMPTY_HASH.0);
    }
}
