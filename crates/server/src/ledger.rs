//! Offline re-verification of the whole stored ledger (`gridpow verify-ledger`).
//!
//! For every relay, block by block in height order:
//! 1. the raw bytes parse and pass everything the ingest verifier checks
//!    (PoW at the block's own difficulty, relay signature, Merkle root, every
//!    meter tag), with the keys of the key directory;
//! 2. every header column equals what the raw header says;
//! 3. the chain links to the stored parent (genesis: zero previous hash), and
//!    the `linked` flag agrees;
//! 4. the reading rows in the block's id range are exactly the readings of its
//!    frames not stored by an earlier block, column for column, none stored
//!    twice in the whole ledger; its time-index rows match them.
//!
//! Then, over the whole database: every reading of every frame is stored, no
//! reading row or time-index row lies outside a block's range, and the
//! de-duplication table equals the stored readings.
//!
//! Last, fork evidence: a quarantined block refused as a fork whose header
//! carries a valid signature of its relay's registered key proves that the
//! key signed two histories. The ledger is then not OK even though every
//! stored block checks out: the report names the relay and heights
//! ([`LedgerReport::forks`]) and `gridpow verify-ledger` exits non-zero (a quarantined
//! fork whose signature does not verify with the registered key is no evidence:
//! anyone who can write to the database could have put it there).
//!
//! Any single altered byte of block bytes, header columns or reading rows
//! therefore fails one of these checks; the error names the first bad block.

use std::collections::HashMap;
use std::fmt;

use gridpow_keys::{KeyDir, KeyError};
use gridpow_proto::block::check_link;
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::wire::block::{signing_message, HEADER_LEN, SIGNATURE_LEN};
use gridpow_proto::wire::{BlockHeaderRepr, BlockPacket};
use gridpow_proto::{Hash, Malformed, Rejected};
use serde::Serialize;

use crate::keyring::Keyring;
use crate::verify::reverify_stored;
use gridpow_store::intervals::IntervalSet;
use gridpow_store::ReadingRow;
use gridpow_store::{
    decode_directory, encode_directory, open_reader, Cell, CoverageRow, LedgerBlock, LedgerReading,
    ReadStore, Run, StoreError, BLOCK_HEADER_COLUMNS, READING_COLUMNS,
};

const PAGE: usize = 256;

/// A bad block: the fault, and the relay, height and hash to name it by.
type BlockErr = Box<(BlockFault, u32, u64, Hash)>;

/// What a clean ledger holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LedgerReport {
    /// Relays with blocks.
    pub relays: u64,
    /// Blocks verified.
    pub blocks: u64,
    /// Leaves (frames) verified.
    pub frames: u64,
    /// Reading rows checked.
    pub readings: u64,
    /// Readings carried by more than one frame, stored once.
    pub duplicate_readings: u64,
    /// Distinct meters.
    pub meters: u64,
    /// Missing height ranges `(relay, from, to)`: blocks stored whose parents
    /// have not arrived (not an error: the gap is reported).
    pub gaps: Vec<(u32, u64, u64)>,
    /// Validly signed forks kept in quarantine, by relay: every stored block
    /// checks out, but these relays' keys signed two histories. Not OK:
    /// `gridpow verify-ledger` exits non-zero naming them ([`LedgerReport::is_ok`]).
    pub forks: Vec<RelayForks>,
    /// Readings a block carries under a number whose stored reading differs
    /// (docs/protocol.md §9.5): the meter's key sealed two readings for one
    /// number. The ledger holds exactly what was sealed and the first
    /// committed reading counts, so the check still passes; each is listed.
    pub equivocations: Vec<EquivocationFinding>,
}

/// One equivocation: where the other reading is carried, and its number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EquivocationFinding {
    /// Relay of the block carrying the other reading.
    pub relay_id: u32,
    /// Its height.
    pub height: u64,
    /// The leaf.
    pub leaf: u32,
    /// The meter.
    pub meter_id: u32,
    /// Boot epoch.
    pub epoch: u32,
    /// Sequence number.
    pub seq: u32,
}

impl LedgerReport {
    /// Whether the ledger is OK: every check passed and no relay key signed a fork.
    pub fn is_ok(&self) -> bool {
        self.forks.is_empty()
    }

    /// A sentence naming the relays and heights of [`LedgerReport::forks`], if any.
    pub fn fork_summary(&self) -> Option<String> {
        (!self.forks.is_empty()).then(|| describe_forks(&self.forks))
    }
}

impl fmt::Display for LedgerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fork_summary() {
            Some(forks) => write!(f, "NOT OK, {forks}; ")?,
            None => write!(f, "ledger OK: ")?,
        }
        write!(
            f,
            "{} blocks from {} relays, {} frames, {} readings from {} meters ({} carried twice, stored once), \
             each block once in the transparency log",
            self.blocks, self.relays, self.frames, self.readings, self.meters, self.duplicate_readings
        )?;
        for (relay, from, to) in &self.gaps {
            write!(f, "; relay {relay} missing heights {from}–{to}")?;
        }
        for q in &self.equivocations {
            write!(
                f,
                "; WARNING meter {} equivocated: epoch {} seq {} differs in relay {} block {} leaf {}",
                q.meter_id, q.epoch, q.seq, q.relay_id, q.height, q.leaf
            )?;
        }
        Ok(())
    }
}

/// What is wrong with one block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockFault {
    /// The stored bytes are not a block.
    #[error("stored bytes are not a block ({0})")]
    Malformed(Malformed),
    /// The relay is not in `relays.toml`.
    #[error("relay {0} is not in relays.toml")]
    UnknownRelay(u32),
    /// Signature, PoW, Merkle root or a meter tag fails.
    #[error("verification failed: {0}")]
    Verification(gridpow_proto::Error),
    /// A header column differs from the raw header.
    #[error("column {column} holds {stored}, the block bytes say {expected}")]
    HeaderColumn {
        /// Column.
        column: &'static str,
        /// Stored value.
        stored: String,
        /// Value from the bytes.
        expected: String,
    },
    /// The link to the stored parent is broken.
    #[error("does not link to the stored block at height {parent_height}: {reason}")]
    Link {
        /// The parent's height.
        parent_height: u64,
        /// Why.
        reason: Rejected,
    },
    /// The `linked` column disagrees with the stored chain.
    #[error("column linked is {stored} but the parent is {}", if *.parent_stored { "stored" } else { "missing" })]
    LinkedFlag {
        /// Stored flag.
        stored: String,
        /// Whether the parent is stored.
        parent_stored: bool,
    },
    /// A bookkeeping column (`first_reading_id`, `reading_count`, `duplicate_count`) is wrong.
    #[error("column {column} holds {stored}, expected {expected}")]
    Bookkeeping {
        /// Column.
        column: &'static str,
        /// Stored value.
        stored: String,
        /// Expected value.
        expected: String,
    },
    /// A reading row differs from the frame that carried it.
    #[error("reading row {id}: column {column} holds {stored}, the frame says {expected}")]
    ReadingColumn {
        /// Row id.
        id: i64,
        /// Column.
        column: &'static str,
        /// Stored value.
        stored: String,
        /// Value from the frame.
        expected: String,
    },
    /// A reading row in the block's range matches none of its frames' readings.
    #[error("reading row {id} (meter {meter} epoch {epoch} seq {seq}) is not carried by any of its frames")]
    StrayReading {
        /// Row id.
        id: i64,
        /// Meter column.
        meter: String,
        /// Epoch column.
        epoch: String,
        /// Seq column.
        seq: String,
    },
    /// A reading is stored twice.
    #[error("meter {meter} epoch {epoch} seq {seq} is stored twice (again in row {id})")]
    DuplicateReading {
        /// Row id of the second copy.
        id: i64,
        /// Meter.
        meter: u32,
        /// Epoch.
        epoch: u32,
        /// Seq.
        seq: u32,
    },
    /// Reading rows are missing from the block's range.
    #[error("expected {expected} reading rows from id {first_id}, found {found}")]
    ReadingCount {
        /// First id of the range.
        first_id: i64,
        /// Rows expected.
        expected: u64,
        /// Rows found.
        found: u64,
    },
    /// A reading of its frames is stored nowhere.
    #[error("its frames carry meter {meter} epoch {epoch} seq {seq}, which is not stored")]
    MissingReading {
        /// Meter.
        meter: u32,
        /// Epoch.
        epoch: u32,
        /// Seq.
        seq: u32,
    },
    /// The time index of its readings is wrong.
    #[error("time index does not match its readings: {0}")]
    TimeIndex(String),
}

/// Why the ledger check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The database could not be opened (missing, unreadable, not a gridpow
    /// database): nothing was checked, so this says nothing about the ledger.
    #[error("cannot open the database: {0}")]
    Open(#[source] StoreError),
    /// The database opened but a query failed part-way.
    #[error("reading the ledger: {0}")]
    Store(#[from] StoreError),
    /// The key directory could not be read: nothing was checked.
    #[error("cannot load the keys: {0}")]
    Keys(#[from] KeyError),
    /// A block (the first one found, by relay and height) is bad.
    #[error(
        "ledger broken at relay {relay_id} height {height} (block {hash}, row {block_id}): {fault}"
    )]
    BadBlock {
        /// Relay.
        relay_id: u32,
        /// Height.
        height: u64,
        /// Header hash, hex.
        hash: String,
        /// Row id.
        block_id: i64,
        /// What is wrong.
        fault: BlockFault,
    },
    /// A table outside any block's rows is inconsistent.
    #[error("ledger broken: {0}")]
    Table(String),
}

impl LedgerError {
    /// Whether this is a finding about the ledger (exit 1 of `verify-ledger`)
    /// rather than a failure to look at it (exit 2). An operator must never
    /// read a missing file, a wrong path or a locked database as tampering,
    /// nor a tampered table as a mere I/O problem.
    pub fn is_verdict(&self) -> bool {
        match self {
            LedgerError::BadBlock { .. } | LedgerError::Table(_) => true,
            LedgerError::Open(_) | LedgerError::Keys(_) => false,
            LedgerError::Store(e) => e.is_about_content(),
        }
    }
}

/// Validly signed forks of one relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayForks {
    /// The relay.
    pub relay_id: u32,
    /// Heights of the refused blocks, ascending, distinct.
    pub heights: Vec<u64>,
}

fn describe_forks(forks: &[RelayForks]) -> String {
    let mut out = String::from("the ledger holds validly signed forks (the relay's key signed two histories; rotate it, docs/deploy/README.md):");
    for f in forks {
        let heights: Vec<String> = f.heights.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            " relay {} at height{} {};",
            f.relay_id,
            if f.heights.len() == 1 { "" } else { "s" },
            heights.join(", ")
        ));
    }
    out.pop();
    out
}

/// The validly signed forks among the quarantined fork rows, by relay.
fn fork_evidence(store: &mut dyn ReadStore, keys: &Keyring) -> Result<Vec<RelayForks>, StoreError> {
    let mut by_relay: std::collections::BTreeMap<u32, std::collections::BTreeSet<u64>> =
        Default::default();
    for row in store.ledger_forks()? {
        let Some(header) = row
            .raw
            .get(..HEADER_LEN)
            .and_then(|h| BlockHeaderRepr::parse(h).ok())
        else {
            continue;
        };
        let Some(sig) = row
            .raw
            .get(HEADER_LEN..HEADER_LEN + SIGNATURE_LEN)
            .and_then(|s| <[u8; SIGNATURE_LEN]>::try_from(s).ok())
        else {
            continue;
        };
        let Some(key) = keys.relay_key(header.relay_id, header.height) else {
            continue;
        };
        let message = signing_message(&header.hash(&RustCrypto));
        if RustCrypto.ed25519_verify(key, &message, &sig) {
            by_relay
                .entry(header.relay_id)
                .or_default()
                .insert(header.height);
        }
    }
    Ok(by_relay
        .into_iter()
        .map(|(relay_id, heights)| RelayForks {
            relay_id,
            heights: heights.into_iter().collect(),
        })
        .collect())
}

fn show(c: &Cell) -> String {
    match c {
        Cell::Int(v) => v.to_string(),
        Cell::Bytes(b) => hex::encode(b),
        Cell::Text(s) => format!("{s:?}"),
        Cell::Null => "NULL".into(),
        Cell::Other(s) => s.clone(),
    }
}

struct Checker {
    keys: Keyring,
    /// Readings stored, per (meter, epoch).
    stored: HashMap<(u32, u32), IntervalSet>,
    /// Readings carried by frames, per (meter, epoch).
    carried: HashMap<(u32, u32), IntervalSet>,
    report: LedgerReport,
    rows_claimed: u64,
    directories_expected: u64,
}

/// Re-verifies the whole ledger in `db` with the keys in `keys` (see the module docs).
pub fn verify_ledger(db: &str, keys: &KeyDir) -> Result<LedgerReport, LedgerError> {
    let mut store = open_reader(db).map_err(LedgerError::Open)?;
    let mut c = Checker {
        keys: Keyring::load(keys)?,
        stored: HashMap::new(),
        carried: HashMap::new(),
        report: LedgerReport::default(),
        rows_claimed: 0,
        directories_expected: 0,
    };
    let relays = store.ledger_relays()?;
    c.report.relays = relays.len() as u64;
    for &relay in &relays {
        c.relay(&mut *store, relay)?;
    }
    // Every carried reading stored: find the first block whose frames carry a missing one.
    let missing = c.carried.iter().find_map(|(&(m, e), set)| {
        let stored = c.stored.get(&(m, e));
        set.ranges()
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .find(|&s| !stored.is_some_and(|st| st.contains(s)))
            .map(|s| (m, e, s))
    });
    if let Some((m, e, s)) = missing {
        return Err(c.blame_missing(&mut *store, &relays, (m, e, s)));
    }
    let rows = store.reading_rows()?;
    if rows != c.rows_claimed {
        return Err(LedgerError::Table(format!(
            "{rows} reading rows in the database, blocks account for {}: rows were added outside any block",
            c.rows_claimed
        )));
    }
    let dirs = store.directory_rows()?;
    if dirs != c.directories_expected {
        return Err(LedgerError::Table(format!(
            "{dirs} time-index rows, the blocks need {}: the index was altered",
            c.directories_expected
        )));
    }
    let mut expected: Vec<CoverageRow> = c
        .stored
        .iter()
        .flat_map(|(&(m, e), set)| {
            set.ranges().iter().map(move |&(a, b)| CoverageRow {
                meter_id: i64::from(m),
                epoch: i64::from(e),
                first_seq: i64::from(a),
                last_seq: i64::from(b),
            })
        })
        .collect();
    expected.sort();
    let coverage = store.ledger_coverage()?;
    if coverage != expected {
        let first = coverage
            .iter()
            .zip(&expected)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("stored {a:?}, expected {b:?}"))
            .unwrap_or_else(|| {
                format!(
                    "{} rows stored, {} expected",
                    coverage.len(),
                    expected.len()
                )
            });
        return Err(LedgerError::Table(format!(
            "de-duplication table differs from the stored readings: {first}"
        )));
    }
    c.report.meters = c
        .stored
        .keys()
        .map(|&(m, _)| m)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    c.report.forks = fork_evidence(&mut *store, &c.keys)?;
    check_log(&mut *store, c.report.blocks)?;
    Ok(c.report)
}

/// The transparency log agrees with the blocks (docs/ledger.md): one entry
/// per stored block, and every stored hash (the leaf hashes and complete
/// subtrees that tiles, proofs and checkpoints are read from) is what the
/// entries give, recomputed here from the block rows (whose columns the block
/// checks matched to the raw bytes), with no stored hash besides.
fn check_log(store: &mut dyn ReadStore, blocks: u64) -> Result<(), LedgerError> {
    use tlog_tiles::{stored_hash_count, stored_hash_index, stored_hashes_for_record_hash};
    const CHUNK: u64 = 4096;
    let size = store.log_size()?;
    if size != blocks {
        return Err(LedgerError::Table(format!(
            "the transparency log has {size} entries, the ledger {blocks} blocks: \
             blocks were added or removed outside the log"
        )));
    }
    let stored_rows = store.log_hash_rows()?;
    if stored_rows != stored_hash_count(size) {
        return Err(LedgerError::Table(format!(
            "the transparency log has {stored_rows} stored hashes, its {size} entries need {}",
            stored_hash_count(size)
        )));
    }
    let mut from = 0;
    while from < size {
        let to = (from + CHUNK).min(size);
        let entries = store.log_entries(from, to)?;
        let (lo, hi) = (stored_hash_index(0, from), stored_hash_index(0, to));
        let idx: Vec<u64> = (lo..hi).collect();
        let chunk: HashMap<u64, [u8; 32]> =
            idx.iter().copied().zip(store.log_hashes(&idx)?).collect();
        let reader = gridpow_store::StoreHashReader::new(&mut *store);
        let known = Known {
            chunk: &chunk,
            store: &reader,
        };
        for (n, e) in (from..).zip(&entries) {
            let leaf = tlog_tiles::Hash(e.leaf_hash(&RustCrypto));
            let want =
                stored_hashes_for_record_hash(n, leaf, &known).map_err(|err| {
                    match reader.take_error() {
                        Some(s) => LedgerError::Store(s),
                        None => LedgerError::Table(format!(
                            "the transparency log's stored hashes: {err}"
                        )),
                    }
                })?;
            let at = stored_hash_index(0, n);
            for (k, h) in (at..).zip(&want) {
                if chunk.get(&k) != Some(&h.0) {
                    return Err(LedgerError::Table(format!(
                        "the transparency log's stored hash {k} is not what entry {n} (relay {} height {}) gives: \
                         a block or the log was altered (checkpoints signed over it no longer match)",
                        e.relay_id, e.height
                    )));
                }
            }
        }
        from = to;
    }
    Ok(())
}

/// Stored hashes already read (this chunk's), else from the store.
struct Known<'a, R> {
    chunk: &'a HashMap<u64, [u8; 32]>,
    store: &'a R,
}

impl<R: tlog_tiles::HashReader> tlog_tiles::HashReader for Known<'_, R> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        let missing: Vec<u64> = indexes
            .iter()
            .copied()
            .filter(|i| !self.chunk.contains_key(i))
            .collect();
        let more: HashMap<u64, tlog_tiles::Hash> = if missing.is_empty() {
            HashMap::new()
        } else {
            missing
                .iter()
                .copied()
                .zip(self.store.read_hashes(&missing)?)
                .collect()
        };
        Ok(indexes
            .iter()
            .map(|i| {
                self.chunk.get(i).map_or_else(
                    || more.get(i).copied().unwrap_or_default(),
                    |h| tlog_tiles::Hash(*h),
                )
            })
            .collect())
    }
}

impl Checker {
    fn relay(&mut self, store: &mut dyn ReadStore, relay: i64) -> Result<(), LedgerError> {
        let mut after: Option<i64> = None;
        let mut prev: Option<(u64, Hash)> = None;
        loop {
            let page = store.ledger_blocks(relay, after, PAGE)?;
            let Some(last) = page.last() else { break };
            let next = last.header[1].int();
            for b in &page {
                let (height, hash) = self.block(store, relay, b, prev.as_ref()).map_err(|e| {
                    let (fault, relay_id, height, hash) = *e;
                    LedgerError::BadBlock {
                        relay_id,
                        height,
                        hash: hex::encode(hash),
                        block_id: b.id,
                        fault,
                    }
                })?;
                prev = Some((height, hash));
            }
            match next {
                Some(n) if page.len() == PAGE && after.is_none_or(|a| n > a) => after = Some(n),
                _ => break,
            }
        }
        Ok(())
    }

    /// Checks one block; on failure returns the fault with the best height and hash known.
    fn block(
        &mut self,
        store: &mut dyn ReadStore,
        relay: i64,
        b: &LedgerBlock,
        prev: Option<&(u64, Hash)>,
    ) -> Result<(u64, Hash), BlockErr> {
        let col_height = b.header[1].int().map_or(0, |h| h as u64);
        let col_hash: Hash = match &b.header[2] {
            Cell::Bytes(v) => v.as_slice().try_into().unwrap_or([0; 32]),
            _ => [0; 32],
        };
        // Name the relay the row is filed under; the raw header's if the column is not a relay id.
        let named = u32::try_from(relay).ok();
        let packet = BlockPacket::new_checked(&b.raw[..]).map_err(|m| {
            (
                BlockFault::Malformed(m),
                named.unwrap_or(0),
                col_height,
                col_hash,
            )
        })?;
        let header = *packet.header();
        let hash = header.hash(&RustCrypto);
        let named = named.unwrap_or(header.relay_id);
        let fail = |f: BlockFault| Box::new((f, named, header.height, hash));
        if !self.keys.knows_relay(header.relay_id) {
            return Err(fail(BlockFault::UnknownRelay(header.relay_id)));
        }
        let verified = reverify_stored(&self.keys, 0, &b.raw)
            .map_err(|e| fail(BlockFault::Verification(e)))?;
        header_columns(relay, b, &header).map_err(fail)?;
        self.chain_link(b, &header, prev).map_err(fail)?;
        let (first_id, count) = reading_range(b).map_err(fail)?;
        let rows = store.ledger_readings(first_id, count).map_err(|e| {
            fail(BlockFault::TimeIndex(format!(
                "reading rows unreadable: {e}"
            )))
        })?;
        if rows.len() as u64 != count {
            return Err(fail(BlockFault::ReadingCount {
                first_id,
                expected: count,
                found: rows.len() as u64,
            }));
        }
        let dups_expected = self
            .readings(store, b, &header, &verified.readings, &rows)
            .map_err(fail)?;
        time_index(store, b, &rows).map_err(fail)?;
        self.rows_claimed += count;
        self.directories_expected += u64::from(!rows.is_empty());
        self.report.blocks += 1;
        self.report.frames += u64::from(header.leaf_count);
        self.report.readings += count;
        self.report.duplicate_readings += dups_expected;
        Ok((header.height, hash))
    }

    /// The chain link to the parent checked before (when it is stored) and
    /// the `linked` flag; a missing parent is reported as a gap.
    fn chain_link(
        &mut self,
        b: &LedgerBlock,
        header: &BlockHeaderRepr,
        prev: Option<&(u64, Hash)>,
    ) -> Result<(), BlockFault> {
        let parent_stored = match (header.height, prev) {
            (0, _) => {
                check_link(header, None).map_err(|reason| BlockFault::Link {
                    parent_height: 0,
                    reason,
                })?;
                true
            }
            (h, Some(&(ph, ref phash))) if ph.checked_add(1) == Some(h) => {
                check_link(header, Some((ph, phash))).map_err(|reason| BlockFault::Link {
                    parent_height: ph,
                    reason,
                })?;
                true
            }
            (h, p) => {
                let from = p.map_or(0, |&(ph, _)| ph.saturating_add(1));
                self.report.gaps.push((header.relay_id, from, h - 1));
                false
            }
        };
        if b.linked != Cell::Int(i64::from(parent_stored)) {
            return Err(BlockFault::LinkedFlag {
                stored: show(&b.linked),
                parent_stored,
            });
        }
        Ok(())
    }

    /// Each stored reading row against the reading its block's frames carry,
    /// each number stored once in the whole ledger, the block's repeats
    /// checked for equivocation, and its duplicate count; returns that count.
    fn readings(
        &mut self,
        store: &mut dyn ReadStore,
        b: &LedgerBlock,
        header: &BlockHeaderRepr,
        frames: &[ReadingRow],
        rows: &[LedgerReading],
    ) -> Result<u64, BlockFault> {
        // Frame readings by (meter, epoch, seq), first leaf first (as stored).
        let mut carried: HashMap<(u32, u32, u32), &ReadingRow> =
            HashMap::with_capacity(frames.len());
        for r in frames {
            carried.entry((r.meter_id, r.epoch, r.seq)).or_insert(r);
            self.carried
                .entry((r.meter_id, r.epoch))
                .or_default()
                .insert_range(r.seq, r.seq);
        }
        // The numbers this block stored, to tell its repeats below.
        let mut stored_here = std::collections::HashSet::with_capacity(rows.len());
        for row in rows {
            let key = match (&row.cells[2], &row.cells[3], &row.cells[4]) {
                (Cell::Int(m), Cell::Int(e), Cell::Int(s)) => {
                    match (u32::try_from(*m), u32::try_from(*e), u32::try_from(*s)) {
                        (Ok(m), Ok(e), Ok(s)) => Some((m, e, s)),
                        _ => None,
                    }
                }
                _ => None,
            };
            let stray = || BlockFault::StrayReading {
                id: row.id,
                meter: show(&row.cells[2]),
                epoch: show(&row.cells[3]),
                seq: show(&row.cells[4]),
            };
            let key = key.ok_or_else(stray)?;
            stored_here.insert(key);
            let frame_row = carried.get(&key).ok_or_else(stray)?;
            compare_reading(row, b.id, frame_row)?;
            let added = self
                .stored
                .entry((key.0, key.1))
                .or_default()
                .insert_range(key.2, key.2);
            if added.is_empty() {
                return Err(BlockFault::DuplicateReading {
                    id: row.id,
                    meter: key.0,
                    epoch: key.1,
                    seq: key.2,
                });
            }
        }
        // Repeats: carriers of a number this block did not store (stored
        // earlier, elsewhere, or by an earlier leaf of this block).
        let repeated: Vec<ReadingRow> = frames
            .iter()
            .filter(|r| !stored_here.remove(&(r.meter_id, r.epoch, r.seq)))
            .copied()
            .collect();
        if !repeated.is_empty() {
            let found = gridpow_store::equivocation::find(store, &repeated)
                .map_err(|e| BlockFault::TimeIndex(format!("repeated readings unreadable: {e}")))?;
            self.report
                .equivocations
                .extend(found.into_iter().map(|q| EquivocationFinding {
                    relay_id: header.relay_id,
                    height: header.height,
                    leaf: q.leaf,
                    meter_id: q.meter_id,
                    epoch: q.epoch,
                    seq: q.seq,
                }));
        }
        let count = rows.len() as u64;
        let distinct = carried.len() as u64;
        let dups_expected = frames.len() as u64 - count.min(frames.len() as u64);
        if count > distinct || b.duplicate_count != Cell::Int(dups_expected as i64) {
            return Err(BlockFault::Bookkeeping {
                column: "duplicate_count",
                stored: show(&b.duplicate_count),
                expected: dups_expected.to_string(),
            });
        }
        Ok(dups_expected)
    }

    /// Finds the first block whose frames carry the missing reading.
    fn blame_missing(
        &mut self,
        store: &mut dyn ReadStore,
        relays: &[i64],
        (m, e, s): (u32, u32, u32),
    ) -> LedgerError {
        for &relay in relays {
            let mut after: Option<i64> = None;
            loop {
                let page = match store.ledger_blocks(relay, after, PAGE) {
                    Ok(p) => p,
                    Err(err) => return err.into(),
                };
                for b in &page {
                    let Ok(v) = reverify_stored(&self.keys, 0, &b.raw) else {
                        continue;
                    };
                    if v.readings
                        .iter()
                        .any(|r| (r.meter_id, r.epoch, r.seq) == (m, e, s))
                    {
                        return LedgerError::BadBlock {
                            relay_id: v.header.relay_id,
                            height: v.header.height,
                            hash: hex::encode(v.hash),
                            block_id: b.id,
                            fault: BlockFault::MissingReading {
                                meter: m,
                                epoch: e,
                                seq: s,
                            },
                        };
                    }
                }
                match page.last().and_then(|l| l.header[1].int()) {
                    Some(h) if page.len() == PAGE && after.is_none_or(|a| h > a) => after = Some(h),
                    _ => break,
                }
            }
        }
        LedgerError::Table(format!(
            "meter {m} epoch {e} seq {s} is carried by a frame but not stored"
        ))
    }
}

fn compare_reading(
    row: &LedgerReading,
    block_id: i64,
    frame: &ReadingRow,
) -> Result<(), BlockFault> {
    let expected = LedgerReading::expected_cells(block_id, frame);
    for ((column, stored), expected) in READING_COLUMNS.iter().zip(&row.cells).zip(&expected) {
        if stored != expected {
            return Err(BlockFault::ReadingColumn {
                id: row.id,
                column,
                stored: show(stored),
                expected: show(expected),
            });
        }
    }
    Ok(())
}
/// The header columns exactly as the block's bytes imply, filed under the
/// relay its header names.
fn header_columns(relay: i64, b: &LedgerBlock, header: &BlockHeaderRepr) -> Result<(), BlockFault> {
    let expected = [
        Cell::Int(i64::from(header.relay_id)),
        Cell::Int(header.height as i64),
        Cell::Bytes(header.hash(&RustCrypto).to_vec()),
        Cell::Bytes(header.prev_hash.to_vec()),
        Cell::Bytes(header.merkle_root.to_vec()),
        Cell::Int(i64::from(header.difficulty)),
        Cell::Int(i64::from(header.leaf_count)),
        Cell::Int(header.time_ms as i64),
        Cell::Int(header.nonce as i64),
    ];
    for ((column, stored), expected) in BLOCK_HEADER_COLUMNS.iter().zip(&b.header).zip(&expected) {
        if stored != expected {
            return Err(BlockFault::HeaderColumn {
                column,
                stored: show(stored),
                expected: show(expected),
            });
        }
    }
    if i64::from(header.relay_id) != relay {
        return Err(BlockFault::HeaderColumn {
            column: "relay_id",
            stored: relay.to_string(),
            expected: header.relay_id.to_string(),
        });
    }
    Ok(())
}

/// The block's claim on the readings table: first id and count.
fn reading_range(b: &LedgerBlock) -> Result<(i64, u64), BlockFault> {
    let first_id = b
        .first_reading_id
        .int()
        .ok_or_else(|| BlockFault::Bookkeeping {
            column: "first_reading_id",
            stored: show(&b.first_reading_id),
            expected: "an integer".into(),
        })?;
    let count =
        b.reading_count
            .int()
            .filter(|&c| c >= 0)
            .ok_or_else(|| BlockFault::Bookkeeping {
                column: "reading_count",
                stored: show(&b.reading_count),
                expected: "a count".into(),
            })? as u64;
    Ok((first_id, count))
}

/// The block's time span columns and its directory row against the runs
/// its reading rows form (one run per meter, in id order).
fn time_index(
    store: &mut dyn ReadStore,
    b: &LedgerBlock,
    rows: &[LedgerReading],
) -> Result<(), BlockFault> {
    // Time index: one run per meter, in id order.
    let mut runs: Vec<Run> = Vec::new();
    for row in rows {
        let (meter, ts) = (
            row.cells[2].int().unwrap_or(-1),
            row.cells[5].int().unwrap_or(0),
        );
        match runs.last_mut() {
            Some(r) if r.meter_id == meter => {
                r.last_id = row.id;
                r.min_ts = r.min_ts.min(ts);
                r.max_ts = r.max_ts.max(ts);
            }
            _ => runs.push(Run {
                block_id: b.id,
                meter_id: meter,
                first_id: row.id,
                last_id: row.id,
                min_ts: ts,
                max_ts: ts,
            }),
        }
    }
    let span = runs.iter().fold(None, |s: Option<(i64, i64)>, r| {
        Some(s.map_or((r.min_ts, r.max_ts), |(a, z)| {
            (a.min(r.min_ts), z.max(r.max_ts))
        }))
    });
    let span_cells = span.map_or((Cell::Null, Cell::Null), |(a, z)| {
        (Cell::Int(a), Cell::Int(z))
    });
    for (column, stored, expected) in [
        ("min_ts", &b.min_ts, &span_cells.0),
        ("max_ts", &b.max_ts, &span_cells.1),
    ] {
        if stored != expected {
            return Err(BlockFault::Bookkeeping {
                column,
                stored: show(stored),
                expected: show(expected),
            });
        }
    }
    let stored = store
        .ledger_directory(b.id)
        .map_err(|e| BlockFault::TimeIndex(e.to_string()))?;
    let expected_dir = (!runs.is_empty()).then(|| encode_directory(&runs));
    if stored != expected_dir {
        let detail = match (&stored, &expected_dir) {
            (None, _) => "its directory row is missing".to_string(),
            (Some(_), None) => "a directory row exists for a block without readings".to_string(),
            (Some(got), Some(want)) => match decode_directory(b.id, got) {
                None => format!("directory of {} bytes is not whole entries", got.len()),
                Some(got_runs) => got_runs
                    .iter()
                    .zip(&runs)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("stored {a:?}, expected {b:?}"))
                    .unwrap_or_else(|| {
                        format!(
                            "{} entries stored, {} expected",
                            got.len() / 32,
                            want.len() / 32
                        )
                    }),
            },
        };
        return Err(BlockFault::TimeIndex(detail));
    }
    Ok(())
}
