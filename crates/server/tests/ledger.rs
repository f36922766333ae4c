//! `verify_ledger` on a ledger built from real sealed frames and signed PoW
//! blocks: it passes, and any single altered byte of block bytes, header
//! columns, reading rows or the index tables makes it fail, naming the block.
#![allow(clippy::unwrap_used)]

mod common;

use common::Site;
use gridpow_proto::Hash;
use gridpow_server::keyring::Keyring;
use gridpow_server::store::{Arrival, Ingest, SqliteStore, Store};
use gridpow_server::verify::verify_payload;
use gridpow_server::{verify_ledger, BlockFault, LedgerError};
use rusqlite::Connection;

/// Stores blocks 0..3 of relay 1 (frames overlapping, block 2 before 1) and
/// block 0 of relay 2; returns the hashes of relay 1's blocks.
fn build(site: &Site) -> Vec<Hash> {
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
    let mut store = SqliteStore::open(&site.db_path()).unwrap();
    for b in [&b0, &b2, &b1, &r2, &b1] {
        let block = verify_payload(&mut keys, 4, b).unwrap();
        store
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

#[allow(clippy::result_large_err)]
fn verify(site: &Site) -> Result<gridpow_server::LedgerReport, LedgerError> {
    verify_ledger(&site.db_path().display().to_string(), &site.keys)
}

/// Runs `change`, expects the ledger check to fail naming relay 1 at `height`, then runs `undo`.
fn expect_block(
    site: &Site,
    conn: &Connection,
    height: u64,
    change: &str,
    undo: &str,
) -> BlockFault {
    conn.execute_batch(change).unwrap();
    let err = verify(site).expect_err(change);
    conn.execute_batch(undo).unwrap();
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

#[test]
fn clean_ledger_verifies_with_counts_and_readings_stored_once() {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    build(&site);
    let report = verify(&site).unwrap();
    assert_eq!((report.relays, report.blocks, report.frames), (2, 4, 5));
    // Meter 1: 0..8, meter 2: 0..4, meter 3: 0..2; readings 4 and 5 of meter 1 were carried twice.
    assert_eq!(
        (report.readings, report.duplicate_readings, report.meters),
        (14, 2, 3)
    );
    assert!(report.gaps.is_empty());
    assert!(
        report
            .to_string()
            .starts_with("ledger OK: 4 blocks from 2 relays"),
        "{report}"
    );
}

#[test]
fn every_single_flipped_byte_of_a_stored_block_is_found_and_the_block_named() {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    let hashes = build(&site);
    let conn = Connection::open(site.db_path()).unwrap();
    let raw: Vec<u8> = conn
        .query_row(
            "SELECT raw FROM blocks WHERE relay_id = 1 AND height = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        conn.execute(
            "UPDATE blocks SET raw = ?1 WHERE relay_id = 1 AND height = 1",
            [&bad],
        )
        .unwrap();
        let err = verify(&site).expect_err("flipped byte must be found");
        match &err {
            LedgerError::BadBlock {
                relay_id: 1,
                height,
                hash,
                ..
            } => {
                // A flipped height byte changes the height the bytes claim; the row is still named.
                if !(8..16).contains(&i) {
                    assert_eq!(*height, 1, "byte {i}: {err}");
                }
                if i >= 100 {
                    assert_eq!(
                        hash,
                        &hex::encode(hashes[1]),
                        "byte {i}: the header hash is intact"
                    );
                }
            }
            other => panic!("byte {i}: {other}"),
        }
    }
    conn.execute(
        "UPDATE blocks SET raw = ?1 WHERE relay_id = 1 AND height = 1",
        [&raw],
    )
    .unwrap();
    verify(&site).unwrap();
}

#[test]
fn every_altered_column_of_a_block_row_or_its_readings_is_found() {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    build(&site);
    let conn = Connection::open(site.db_path()).unwrap();
    let (block_id, first): (i64, i64) = conn
        .query_row(
            "SELECT id, first_reading_id FROM blocks WHERE relay_id = 1 AND height = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    for col in [
        "relay_id",
        "height",
        "difficulty",
        "leaf_count",
        "time_ms",
        "nonce",
        "linked",
        "first_reading_id",
        "reading_count",
        "duplicate_count",
        "min_ts",
        "max_ts",
    ] {
        let sql = format!("UPDATE blocks SET {col} = {col} + 100 WHERE id = {block_id};");
        let undo = format!("UPDATE blocks SET {col} = {col} - 100 WHERE id = {block_id};");
        conn.execute_batch(&sql).unwrap();
        let err = verify(&site).expect_err(&sql);
        conn.execute_batch(&undo).unwrap();
        assert!(
            matches!(err, LedgerError::BadBlock { relay_id: 1, .. }),
            "{col}: {err}"
        );
    }
    for col in ["hash", "prev_hash", "merkle_root"] {
        let saved: Vec<u8> = conn
            .query_row(
                &format!("SELECT {col} FROM blocks WHERE id = ?1"),
                [block_id],
                |r| r.get(0),
            )
            .unwrap();
        let mut flipped = saved.clone();
        flipped[31] ^= 0x80;
        conn.execute(
            &format!("UPDATE blocks SET {col} = ?1 WHERE id = ?2"),
            rusqlite::params![flipped, block_id],
        )
        .unwrap();
        let err = verify(&site).unwrap_err();
        conn.execute(
            &format!("UPDATE blocks SET {col} = ?1 WHERE id = ?2"),
            rusqlite::params![saved, block_id],
        )
        .unwrap();
        match err {
            LedgerError::BadBlock {
                relay_id: 1,
                height: 1,
                fault: BlockFault::HeaderColumn { column, .. },
                ..
            } => assert_eq!(column, col),
            other => panic!("{col}: {other}"),
        }
    }
    verify(&site).unwrap();
    // Values no relay or height can have are still attributed to the block their bytes name.
    for (col, value) in [("height", "-1"), ("relay_id", "-5")] {
        let saved: i64 = conn
            .query_row(
                &format!("SELECT {col} FROM blocks WHERE id = ?1"),
                [block_id],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute_batch(&format!(
            "UPDATE blocks SET {col} = {value} WHERE id = {block_id};"
        ))
        .unwrap();
        let err = verify(&site).unwrap_err();
        conn.execute_batch(&format!(
            "UPDATE blocks SET {col} = {saved} WHERE id = {block_id};"
        ))
        .unwrap();
        match err {
            LedgerError::BadBlock {
                relay_id: 1,
                height: 1,
                fault: BlockFault::HeaderColumn { column, .. },
                ..
            } => {
                assert_eq!(column, col)
            }
            other => panic!("{col} = {value}: {other}"),
        }
    }
    // Text where an integer belongs.
    let fault = expect_block(
        &site,
        &conn,
        1,
        &format!("UPDATE blocks SET time_ms = 'x' || time_ms WHERE id = {block_id};"),
        &format!("UPDATE blocks SET time_ms = CAST(substr(time_ms, 2) AS INTEGER) WHERE id = {block_id};"),
    );
    assert!(
        matches!(
            fault,
            BlockFault::HeaderColumn {
                column: "time_ms",
                ..
            }
        ),
        "{fault}"
    );
    verify(&site).unwrap();
    // Every column of every reading row of the block.
    let count: i64 = conn
        .query_row(
            "SELECT reading_count FROM blocks WHERE id = ?1",
            [block_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        count, 2,
        "block 1 stores readings 6 and 7 of meter 1 (4 and 5 came with block 0)"
    );
    let cols = [
        "block_id",
        "leaf",
        "meter_id",
        "epoch",
        "seq",
        "ts_ms",
        "voltage_cv",
        "current_ma",
        "power_dw",
        "pf_e4",
        "freq_mhz",
        "energy_mwh",
        "flags",
    ];
    for id in first..first + count {
        for col in cols {
            let fault = expect_block(
                &site,
                &conn,
                1,
                &format!("UPDATE readings SET {col} = {col} + 1 WHERE id = {id};"),
                &format!("UPDATE readings SET {col} = {col} - 1 WHERE id = {id};"),
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
    // A deleted reading row.
    let row: Vec<i64> = conn
        .query_row("SELECT * FROM readings WHERE id = ?1", [first], |r| {
            (0..14).map(|i| r.get(i)).collect()
        })
        .unwrap();
    conn.execute("DELETE FROM readings WHERE id = ?1", [first])
        .unwrap();
    let err = verify(&site).unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::BadBlock {
                relay_id: 1,
                height: 1,
                fault: BlockFault::ReadingCount { .. },
                ..
            }
        ),
        "{err}"
    );
    conn.execute(
        "INSERT INTO readings VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        rusqlite::params_from_iter(&row),
    )
    .unwrap();
    verify(&site).unwrap();
}

#[test]
fn altered_index_tables_and_extra_rows_fail_the_check() {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    build(&site);
    let conn = Connection::open(site.db_path()).unwrap();
    for (change, undo) in [
        (
            "UPDATE coverage SET last_seq = last_seq + 1 WHERE meter_id = 2;",
            "UPDATE coverage SET last_seq = last_seq - 1 WHERE meter_id = 2;",
        ),
        (
            "INSERT INTO readings VALUES (1000, 1, 0, 1, 1, 99, 0, 23000, 0, 0, 0, 50000, 0, 0);",
            "DELETE FROM readings WHERE id = 1000;",
        ),
        (
            "INSERT INTO block_index VALUES (5000, x'00');",
            "DELETE FROM block_index WHERE block_id = 5000;",
        ),
    ] {
        conn.execute_batch(change).unwrap();
        let err = verify(&site).expect_err(change);
        conn.execute_batch(undo).unwrap();
        assert!(!err.to_string().is_empty(), "{change}");
    }
    verify(&site).unwrap();
    // Every byte of a time-index directory.
    let dir: Vec<u8> = conn
        .query_row("SELECT directory FROM block_index WHERE block_id = (SELECT id FROM blocks WHERE relay_id = 2)", [], |r| r.get(0))
        .unwrap();
    for i in 0..dir.len() {
        let mut bad = dir.clone();
        bad[i] ^= 0x04;
        conn.execute(
            "UPDATE block_index SET directory = ?1 WHERE block_id = 4",
            [&bad],
        )
        .unwrap();
        match verify(&site).unwrap_err() {
            LedgerError::BadBlock {
                relay_id: 2,
                height: 0,
                fault: BlockFault::TimeIndex(_),
                ..
            } => {}
            other => panic!("directory byte {i}: {other}"),
        }
    }
    conn.execute(
        "UPDATE block_index SET directory = ?1 WHERE block_id = 4",
        [&dir],
    )
    .unwrap();
    verify(&site).unwrap();
    // Removing a block's readings and its coverage still leaves its frames: the block is named.
    conn.execute_batch(
        "DELETE FROM readings WHERE meter_id = 3; DELETE FROM block_index WHERE block_id = (SELECT id FROM blocks WHERE relay_id = 2); DELETE FROM coverage WHERE meter_id = 3; \
         UPDATE blocks SET reading_count = 0, duplicate_count = 2, min_ts = NULL, max_ts = NULL WHERE relay_id = 2;",
    )
    .unwrap();
    match verify(&site).unwrap_err() {
        LedgerError::BadBlock {
            relay_id: 2,
            height: 0,
            fault: BlockFault::MissingReading { meter: 3, .. },
            ..
        } => {}
        other => panic!("{other}"),
    }
}
