//! The ledger-check cases both backends share (`tests/ledger.rs`,
//! `tests/ledger_postgres.rs`): the ledger they build and the tamper checks
//! whose SQL reads the same in either dialect.

use gridpow_proto::Hash;
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use gridpow_server::{BlockFault, LedgerError, LedgerReport};
use gridpow_store::{Arrival, Ingest, Store};

use super::Site;

/// The integer columns of a block row both backends store as integers.
pub const BLOCK_INT_COLS: [&str; 11] = [
    "relay_id",
    "height",
    "difficulty",
    "leaf_count",
    "time_ms",
    "nonce",
    "first_reading_id",
    "reading_count",
    "duplicate_count",
    "min_ts",
    "max_ts",
];

/// Stores blocks 0..3 of relay 1 (frames overlapping, block 2 before 1) and
/// block 0 of relay 2, the `i`-th commit with `stores[i % stores.len()]`;
/// returns the hashes of relay 1's blocks.
pub fn build(site: &Site, stores: &mut [&mut dyn Store]) -> Vec<Hash> {
    let mut keys = Keyring::load(&site.keys).unwrap();
    let (b0, h0) = site.block(
        1,
        0,
        [0; 32],
        4,
        &[site.frame(1, 1, 0, 0, 6), site.frame(2, 1, 0, 0, 3)],
    );
    let (b1, h1) = site.block(1, 1, h0, 4, &[site.frame(1, 1, 1, 4, 4)]);
    let (b2, h2) = site.block(1, 2, h1, 4, &[site.frame(2, 1, 1, 3, 1)]);
    let (r2, _) = site.block(2, 0, [0; 32], 4, &[site.frame(3, 1, 0, 0, 2)]);
    let n = stores.len();
    for (i, b) in [&b0, &b2, &b1, &r2, &b1].into_iter().enumerate() {
        let block = verify_payload(&mut keys, 4, b).unwrap();
        stores[i % n]
            .commit(
                &[Ingest::Block {
                    arrival: Arrival::default(),
                    block,
                }],
                site.t0,
            )
            .unwrap();
    }
    vec![h0, h1, h2]
}

/// A built ledger to tamper with.
pub trait Tamper {
    /// Runs the ledger check.
    #[allow(clippy::result_large_err)]
    fn verify(&self) -> Result<LedgerReport, LedgerError>;

    /// Runs SQL statements (panics on error).
    fn exec(&mut self, sql: &str);
}

/// The report of the untouched ledger.
pub fn assert_clean(report: &LedgerReport) {
    assert_eq!((report.relays, report.blocks, report.frames), (2, 4, 5));
    // Meter 1: 0..8, meter 2: 0..4, meter 3: 0..2; readings 4 and 5 of meter 1 were carried twice.
    assert_eq!(
        (report.readings, report.duplicate_readings, report.meters),
        (14, 2, 3)
    );
    assert!(report.gaps.is_empty());
}

/// Runs `change`, expects the check to fail naming relay 1 at `height`, then runs `undo`.
pub fn expect_block(l: &mut impl Tamper, height: u64, change: &str, undo: &str) -> BlockFault {
    l.exec(change);
    let err = l.verify().expect_err(change);
    l.exec(undo);
    match err {
        LedgerError::BadBlock {
            relay_id: 1,
            height: h,
            fault,
            ..
        } if h == height => fault,
        other => panic!("{change}: expected relay 1 height {height}, got {other}"),
    }
}

/// Stores every single-bit flip (bit 0 of each byte) of `raw`, relay 1's
/// block 1 with hash `hash`, with `set_raw`: each must fail naming the block.
/// Restores `raw` and expects the check to pass again.
pub fn every_flipped_byte<T: Tamper>(
    l: &mut T,
    raw: &[u8],
    hash: &Hash,
    set_raw: impl Fn(&mut T, &[u8]),
) {
    for i in 0..raw.len() {
        let mut bad = raw.to_vec();
        bad[i] ^= 0x01;
        set_raw(l, &bad);
        let err = l.verify().expect_err("flipped byte must be found");
        match &err {
            LedgerError::BadBlock {
                relay_id: 1,
                height,
                hash: named,
                ..
            } => {
                // A flipped height byte changes the height the bytes claim; the row is still named.
                if !(8..16).contains(&i) {
                    assert_eq!(*height, 1, "byte {i}: {err}");
                }
                if i >= 100 {
                    assert_eq!(
                        named,
                        &hex::encode(hash),
                        "byte {i}: the header hash is intact"
                    );
                }
            }
            other => panic!("byte {i}: {other}"),
        }
    }
    set_raw(l, raw);
    l.verify().unwrap();
}

/// Adds 100 to each of `cols` of block `block_id` in turn: the check must fail naming relay 1.
pub fn bumped_block_columns(l: &mut impl Tamper, block_id: i64, cols: &[&str]) {
    for col in cols {
        let change = format!("UPDATE blocks SET {col} = {col} + 100 WHERE id = {block_id}");
        let undo = format!("UPDATE blocks SET {col} = {col} - 100 WHERE id = {block_id}");
        l.exec(&change);
        let err = l.verify().expect_err(&change);
        l.exec(&undo);
        assert!(
            matches!(err, LedgerError::BadBlock { relay_id: 1, .. }),
            "{col}: {err}"
        );
    }
}

/// Adds 1 to each column of each reading row `first .. first + count` (relay
/// 1's block 1) in turn: the check must name the block and the row.
pub fn bumped_reading_columns(l: &mut impl Tamper, first: i64, count: i64) {
    for id in first..first + count {
        for col in gridpow_store::READING_COLUMNS {
            let fault = expect_block(
                l,
                1,
                &format!("UPDATE readings SET {col} = {col} + 1 WHERE id = {id}"),
                &format!("UPDATE readings SET {col} = {col} - 1 WHERE id = {id}"),
            );
            // Another sequence number makes the row claim another reading: its values then differ.
            let named = match &fault {
                BlockFault::ReadingColumn {
                    column, id: row, ..
                } => (*column == col || col == "seq") && *row == id,
                BlockFault::StrayReading { id: row, .. }
                | BlockFault::DuplicateReading { id: row, .. } => *row == id,
                _ => false,
            };
            assert!(named, "row {id} column {col}: {fault}");
        }
    }
}

/// Each `(change, undo)` must fail the check; the check passes again after all.
pub fn each_fails<S: AsRef<str>>(l: &mut impl Tamper, cases: &[(S, S)]) {
    for (change, undo) in cases {
        let (change, undo) = (change.as_ref(), undo.as_ref());
        l.exec(change);
        let err = l.verify().expect_err(change);
        l.exec(undo);
        assert!(!err.to_string().is_empty(), "{change}");
    }
    l.verify().unwrap();
}

/// After `change` (removing relay 2's readings and index rows) its block
/// must still be named by its frames: meter 3's readings are missing.
pub fn expect_missing_meter_3(l: &mut impl Tamper, change: &str) {
    l.exec(change);
    match l.verify().unwrap_err() {
        LedgerError::BadBlock {
            relay_id: 2,
            height: 0,
            fault: BlockFault::MissingReading { meter: 3, .. },
            ..
        } => {}
        other => panic!("{other}"),
    }
}
