//! `verify_ledger` on a ledger built from real sealed frames and signed PoW
//! blocks: it passes, and any single altered byte of block bytes, header
//! columns, reading rows or the index tables makes it fail, naming the block.
//! The cases both backends share are in `common/ledger.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use common::ledger::{self as cases, Tamper};
use common::Site;
use gridpow_proto::Hash;
use gridpow_server::{verify_ledger, BlockFault, LedgerError, LedgerReport};
use gridpow_store::SqliteStore;
use rusqlite::Connection;

struct Ledger {
    site: Site,
    conn: Connection,
    hashes: Vec<Hash>,
}

/// The shared ledger ([`cases::build`]) in a fresh SQLite database.
fn build() -> Ledger {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    let mut store =
        SqliteStore::open(&site.db_path(), gridpow_store::StoreOptions::default()).unwrap();
    let hashes = cases::build(&site, &mut [&mut store]);
    drop(store);
    Ledger {
        conn: Connection::open(site.db_path()).unwrap(),
        site,
        hashes,
    }
}

impl Tamper for Ledger {
    fn verify(&self) -> Result<LedgerReport, LedgerError> {
        verify_ledger(&self.site.db_path().display().to_string(), &self.site.keys)
    }

    fn exec(&mut self, sql: &str) {
        self.conn.execute_batch(sql).unwrap();
    }
}

#[test]
fn clean_ledger_verifies_with_counts_and_readings_stored_once() {
    let l = build();
    let report = l.verify().unwrap();
    cases::assert_clean(&report);
    assert!(
        report
            .to_string()
            .starts_with("ledger OK: 4 blocks from 2 relays"),
        "{report}"
    );
}

#[test]
fn every_single_flipped_byte_of_a_stored_block_is_found_and_the_block_named() {
    let mut l = build();
    let raw: Vec<u8> = l
        .conn
        .query_row(
            "SELECT raw FROM blocks WHERE relay_id = 1 AND height = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let hash = l.hashes[1];
    cases::every_flipped_byte(&mut l, &raw, &hash, |l, bytes| {
        l.conn
            .execute(
                "UPDATE blocks SET raw = ?1 WHERE relay_id = 1 AND height = 1",
                [bytes],
            )
            .unwrap();
    });
}

#[test]
fn every_altered_column_of_a_block_row_or_its_readings_is_found() {
    let mut l = build();
    let (block_id, first): (i64, i64) = l
        .conn
        .query_row(
            "SELECT id, first_reading_id FROM blocks WHERE relay_id = 1 AND height = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    cases::bumped_block_columns(&mut l, block_id, &cases::BLOCK_INT_COLS);
    // SQLite stores `linked` as an integer too.
    cases::bumped_block_columns(&mut l, block_id, &["linked"]);
    for col in ["hash", "prev_hash", "merkle_root"] {
        let saved: Vec<u8> = l
            .conn
            .query_row(
                &format!("SELECT {col} FROM blocks WHERE id = ?1"),
                [block_id],
                |r| r.get(0),
            )
            .unwrap();
        let mut flipped = saved.clone();
        flipped[31] ^= 0x80;
        l.conn
            .execute(
                &format!("UPDATE blocks SET {col} = ?1 WHERE id = ?2"),
                rusqlite::params![flipped, block_id],
            )
            .unwrap();
        let err = l.verify().unwrap_err();
        l.conn
            .execute(
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
    l.verify().unwrap();
    // Values no relay or height can have are still attributed to the block their bytes name.
    for (col, value) in [("height", "-1"), ("relay_id", "-5")] {
        let saved: i64 = l
            .conn
            .query_row(
                &format!("SELECT {col} FROM blocks WHERE id = ?1"),
                [block_id],
                |r| r.get(0),
            )
            .unwrap();
        l.exec(&format!(
            "UPDATE blocks SET {col} = {value} WHERE id = {block_id};"
        ));
        let err = l.verify().unwrap_err();
        l.exec(&format!(
            "UPDATE blocks SET {col} = {saved} WHERE id = {block_id};"
        ));
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
    let fault = cases::expect_block(
        &mut l,
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
    l.verify().unwrap();
    // Every column of every reading row of the block.
    let count: i64 = l
        .conn
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
    cases::bumped_reading_columns(&mut l, first, count);
    // A deleted reading row.
    let row: Vec<i64> = l
        .conn
        .query_row("SELECT * FROM readings WHERE id = ?1", [first], |r| {
            (0..14).map(|i| r.get(i)).collect()
        })
        .unwrap();
    l.conn
        .execute("DELETE FROM readings WHERE id = ?1", [first])
        .unwrap();
    let err = l.verify().unwrap_err();
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
    l.conn
        .execute(
            "INSERT INTO readings VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            rusqlite::params_from_iter(&row),
        )
        .unwrap();
    l.verify().unwrap();
}

#[test]
fn altered_index_tables_and_extra_rows_fail_the_check() {
    let mut l = build();
    let changes = [
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
        // The transparency log: a stored hash gone, an entry gone, two
        // entries reordered, a stored hash replaced.
        (
            "UPDATE log_hashes SET idx = idx + 1000000 WHERE idx = 0;",
            "UPDATE log_hashes SET idx = idx - 1000000 WHERE idx = 1000000;",
        ),
        (
            "UPDATE blocks SET log_index = NULL WHERE log_index = 0;",
            "UPDATE blocks SET log_index = 0 WHERE log_index IS NULL;",
        ),
        ("UPDATE blocks SET log_index = -1 WHERE log_index = 0; UPDATE blocks SET log_index = 0 WHERE log_index = 1; UPDATE blocks SET log_index = 1 WHERE log_index = -1;", "UPDATE blocks SET log_index = -1 WHERE log_index = 0; UPDATE blocks SET log_index = 0 WHERE log_index = 1; UPDATE blocks SET log_index = 1 WHERE log_index = -1;"),
        (
            "INSERT INTO log_hashes SELECT idx + 1000000, hash FROM log_hashes WHERE idx = 1; \
             UPDATE log_hashes SET hash = (SELECT hash FROM log_hashes WHERE idx = 0) WHERE idx = 1;",
            "UPDATE log_hashes SET hash = (SELECT hash FROM log_hashes WHERE idx = 1000001) WHERE idx = 1; \
             DELETE FROM log_hashes WHERE idx = 1000001;",
        ),
    ];
    cases::each_fails(&mut l, &changes);
    assert!(
        l.verify().unwrap().to_string().contains("transparency log"),
        "the report names the log it checked"
    );
    // Every byte of a time-index directory.
    let dir: Vec<u8> = l
        .conn
        .query_row("SELECT directory FROM block_index WHERE block_id = (SELECT id FROM blocks WHERE relay_id = 2)", [], |r| r.get(0))
        .unwrap();
    for i in 0..dir.len() {
        let mut bad = dir.clone();
        bad[i] ^= 0x04;
        l.conn
            .execute(
                "UPDATE block_index SET directory = ?1 WHERE block_id = 4",
                [&bad],
            )
            .unwrap();
        match l.verify().unwrap_err() {
            LedgerError::BadBlock {
                relay_id: 2,
                height: 0,
                fault: BlockFault::TimeIndex(_),
                ..
            } => {}
            other => panic!("directory byte {i}: {other}"),
        }
    }
    l.conn
        .execute(
            "UPDATE block_index SET directory = ?1 WHERE block_id = 4",
            [&dir],
        )
        .unwrap();
    l.verify().unwrap();
    // Removing a block's readings and its coverage still leaves its frames: the block is named.
    cases::expect_missing_meter_3(
        &mut l,
        "DELETE FROM readings WHERE meter_id = 3; DELETE FROM block_index WHERE block_id = (SELECT id FROM blocks WHERE relay_id = 2); DELETE FROM coverage WHERE meter_id = 3; \
         UPDATE blocks SET reading_count = 0, duplicate_count = 2, min_ts = NULL, max_ts = NULL WHERE relay_id = 2;",
    );
}
