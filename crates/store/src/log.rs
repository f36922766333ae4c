//! The transparency log (docs/ledger.md): one global, append-only RFC 9162
//! Merkle log with an entry ([`LogLeafRepr`]) for every block stored, in
//! commit order, written in the same transaction as the block.
//!
//! The tree is kept as the tlog "stored hashes" (`tlog_tiles`' layout, as Go's
//! checksum database keeps it): appending entry `n` stores its leaf hash and
//! the hashes of the complete subtrees it closes, at `stored_hash_index(level,
//! n)`; about two hashes per entry. Tree heads, tiles and proofs are then
//! `O(log n)` reads of stored hashes, never a walk over all entries.

use std::cell::RefCell;
use std::collections::HashMap;

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::LogLeafRepr;
use gridpow_proto::Hash;
use tlog_tiles::{stored_hash_index, stored_hashes_for_record_hash, HashReader};

use crate::shared::{bytes, hash_of, int, u32_id, u64_of};
use crate::{QueryStore, SqlParam, StoreError};

/// The log state a commit reads.
pub(crate) trait LogSnapshot {
    /// Entries in the log. A backend whose database several writers share
    /// takes the log's lock here, held to the end of the transaction
    /// (PostgreSQL: an advisory lock, after the relay and meter locks).
    fn log_size(&mut self) -> Result<u64, StoreError>;
    /// The stored hashes at `indexes` (ascending, all below the log's stored
    /// hash count), one per index, in that order.
    fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError>;
}

/// What one commit appends to the log.
#[derive(Debug, Default)]
pub(crate) struct LogAppend {
    /// Index of the first entry appended: the log's size before.
    pub first: u64,
    /// Stored hashes to insert, `(stored hash index, hash)`, ascending.
    pub hashes: Vec<(u64, Hash)>,
    /// Time spent on the log in this commit, µs: planning the append (its
    /// reads) here, writing the hashes added by the backend. What the log
    /// costs ingestion, measured in the commit itself.
    pub micros: std::cell::Cell<u64>,
}

impl LogAppend {
    /// Adds `since`'s elapsed time to [`LogAppend::micros`].
    pub fn spent(&self, since: std::time::Instant) {
        self.micros
            .set(self.micros.get() + since.elapsed().as_micros() as u64);
    }

    /// The log index of the `entry`th entry appended.
    pub fn index_of(&self, entry: usize) -> i64 {
        (self.first + entry as u64) as i64
    }
}

/// A [`HashReader`] over stored hashes plus those computed in this append.
struct Reader<'r, 's, S: LogSnapshot + ?Sized> {
    snap: &'r RefCell<&'s mut S>,
    pending: &'r HashMap<u64, Hash>,
    failed: &'r RefCell<Option<StoreError>>,
}

impl<S: LogSnapshot + ?Sized> HashReader for Reader<'_, '_, S> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        let missing: Vec<u64> = indexes
            .iter()
            .copied()
            .filter(|i| !self.pending.contains_key(i))
            .collect();
        let stored = if missing.is_empty() {
            Vec::new()
        } else {
            match self.snap.borrow_mut().log_hashes(&missing) {
                Ok(h) if h.len() == missing.len() => h,
                Ok(h) => {
                    *self.failed.borrow_mut() = Some(StoreError::Corrupt {
                        table: "log_hashes",
                        detail: format!(
                            "asked for {} stored hashes, got {}",
                            missing.len(),
                            h.len()
                        ),
                    });
                    return Err(tlog_tiles::Error::IndexesNotInTree);
                }
                Err(e) => {
                    *self.failed.borrow_mut() = Some(e);
                    return Err(tlog_tiles::Error::IndexesNotInTree);
                }
            }
        };
        let stored: HashMap<u64, Hash> = missing.into_iter().zip(stored).collect();
        Ok(indexes
            .iter()
            .map(|i| {
                tlog_tiles::Hash(
                    self.pending
                        .get(i)
                        .or(stored.get(i))
                        .copied()
                        .unwrap_or_default(),
                )
            })
            .collect())
    }
}

/// Appends `entries` to the log as read through `snap`: the stored hashes to write.
pub(crate) fn append<S: LogSnapshot + ?Sized>(
    snap: &mut S,
    entries: &[LogLeafRepr],
) -> Result<LogAppend, StoreError> {
    if entries.is_empty() {
        return Ok(LogAppend::default());
    }
    let started = std::time::Instant::now();
    let first = snap.log_size()?;
    let snap = RefCell::new(snap);
    let failed = RefCell::new(None);
    let mut pending = HashMap::new();
    let mut hashes = Vec::with_capacity(entries.len() * 2);
    for (n, entry) in (first..).zip(entries) {
        let leaf = tlog_tiles::Hash(entry.leaf_hash(&RustCrypto));
        let reader = Reader {
            snap: &snap,
            pending: &pending,
            failed: &failed,
        };
        let new = stored_hashes_for_record_hash(n, leaf, &reader).map_err(|e| {
            failed.borrow_mut().take().unwrap_or(StoreError::Corrupt {
                table: "log_hashes",
                detail: format!("appending entry {n}: {e}"),
            })
        })?;
        let at = stored_hash_index(0, n);
        for (i, h) in (at..).zip(new) {
            pending.insert(i, h.0);
            hashes.push((i, h.0));
        }
    }
    Ok(LogAppend {
        first,
        hashes,
        micros: std::cell::Cell::new(started.elapsed().as_micros() as u64),
    })
}

/// The log's size as stored: one past the highest entry index.
pub(crate) fn size<S: QueryStore + ?Sized>(s: &mut S) -> Result<u64, StoreError> {
    let rows = s.select("SELECT COALESCE(MAX(log_index) + 1, 0) FROM blocks", &[])?;
    match rows.first() {
        Some(r) => Ok(u64_of(int("blocks", r, 0)?)),
        None => Ok(0),
    }
}

/// The stored hashes at `indexes`, one per index, in that order; an index not
/// stored is a corrupt log.
pub(crate) fn hashes<S: QueryStore + ?Sized>(
    s: &mut S,
    indexes: &[u64],
) -> Result<Vec<Hash>, StoreError> {
    let mut found = HashMap::with_capacity(indexes.len());
    // Bounded statements: a tile reads 256 hashes, a proof about 2 log₂ n.
    for chunk in indexes.chunks(512) {
        let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let params: Vec<SqlParam> = chunk
            .iter()
            .map(|&i| SqlParam::Int(i64::try_from(i).unwrap_or(i64::MAX)))
            .collect();
        let rows = s.select(
            &format!(
                "SELECT idx, hash FROM log_hashes WHERE idx IN ({})",
                list.join(", ")
            ),
            &params,
        )?;
        for r in &rows {
            found.insert(
                u64_of(int("log_hashes", r, 0)?),
                hash_of("log_hashes", &bytes("log_hashes", r, 1)?)?,
            );
        }
    }
    indexes
        .iter()
        .map(|i| {
            found.get(i).copied().ok_or_else(|| StoreError::Corrupt {
                table: "log_hashes",
                detail: format!("stored hash {i} is missing"),
            })
        })
        .collect()
}

/// The log entries with indexes `from..to`, in order; a gap is a corrupt log.
pub(crate) fn entries<S: QueryStore + ?Sized>(
    s: &mut S,
    from: u64,
    to: u64,
) -> Result<Vec<LogLeafRepr>, StoreError> {
    let i = |v: u64| SqlParam::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let rows = s.select(
        "SELECT log_index, relay_id, height, hash, merkle_root FROM blocks \
         WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
        &[i(from), i(to)],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (expected, r) in (from..).zip(&rows) {
        let index = u64_of(int("blocks", r, 0)?);
        if index != expected {
            return Err(StoreError::Corrupt {
                table: "blocks",
                detail: format!("log entry {expected} is missing"),
            });
        }
        out.push(LogLeafRepr {
            relay_id: u32_id("blocks", int("blocks", r, 1)?)?,
            height: u64_of(int("blocks", r, 2)?),
            block_hash: hash_of("blocks", &bytes("blocks", r, 3)?)?,
            merkle_root: hash_of("blocks", &bytes("blocks", r, 4)?)?,
        });
    }
    if out.len() as u64 != to.saturating_sub(from) {
        return Err(StoreError::Corrupt {
            table: "blocks",
            detail: format!("log entries {from}..{to}: {} found", out.len()),
        });
    }
    Ok(out)
}

/// A [`HashReader`] over a store's stored hashes, for `tlog_tiles`' tree
/// heads, proofs and tiles. `tlog_tiles` cannot carry a store error through,
/// so the first one is kept: read it with [`StoreHashReader::take_error`].
pub struct StoreHashReader<'a, S: QueryStore + ?Sized> {
    store: RefCell<&'a mut S>,
    failed: RefCell<Option<StoreError>>,
}

impl<'a, S: QueryStore + ?Sized> StoreHashReader<'a, S> {
    /// A reader over `store`.
    pub fn new(store: &'a mut S) -> Self {
        StoreHashReader {
            store: RefCell::new(store),
            failed: RefCell::new(None),
        }
    }

    /// The store error behind a failed read, if that is why it failed.
    pub fn take_error(&self) -> Option<StoreError> {
        self.failed.borrow_mut().take()
    }
}

impl<S: QueryStore + ?Sized> HashReader for StoreHashReader<'_, S> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        match hashes(&mut **self.store.borrow_mut(), indexes) {
            Ok(h) => Ok(h.into_iter().map(tlog_tiles::Hash).collect()),
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                Err(tlog_tiles::Error::IndexesNotInTree)
            }
        }
    }
}

/// The raw block of log entry `index`.
pub(crate) fn block<S: QueryStore + ?Sized>(
    s: &mut S,
    index: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let Ok(i) = i64::try_from(index) else {
        return Ok(None);
    };
    let rows = s.select(
        "SELECT raw FROM blocks WHERE log_index = $1",
        &[SqlParam::Int(i)],
    )?;
    rows.first().map(|r| bytes("blocks", r, 0)).transpose()
}

/// Rows of the log's stored hashes.
pub(crate) fn hash_rows<S: QueryStore + ?Sized>(s: &mut S) -> Result<u64, StoreError> {
    let rows = s.select("SELECT COUNT(*) FROM log_hashes", &[])?;
    match rows.first() {
        Some(r) => Ok(u64_of(int("log_hashes", r, 0)?)),
        None => Ok(0),
    }
}
