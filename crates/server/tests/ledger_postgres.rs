//! `verify_ledger` on a PostgreSQL ledger (a private instance) built from
//! real sealed frames and signed PoW blocks: it passes, and any single altered
//! byte of block bytes, header columns, reading rows or the index tables makes
//! it fail, naming the block (the SQLite version is `tests/ledger.rs`; the
//! cases both share are in `common/ledger.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::ledger::{self as cases, Tamper};
use common::Site;
use gridpow_proto::Hash;
use gridpow_server::{verify_ledger, BlockFault, LedgerError, LedgerReport};
use gridpow_store::postgres::PgConn;
use gridpow_store::PgStore;
use gridpow_testkit::pg_harness::PgServer;

struct Ledger {
    site: Site,
    url: String,
    conn: PgConn,
    hashes: Vec<Hash>,
    _pg: std::sync::Arc<PgServer>,
}

/// The shared ledger ([`cases::build`]) in a fresh database, as two writers on it.
fn build() -> Ledger {
    let pg = PgServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.create_database().unwrap();
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    let mut a = PgStore::open(&url, gridpow_store::StoreOptions::default()).unwrap();
    let mut b = PgStore::open(&url, gridpow_store::StoreOptions::default()).unwrap();
    let hashes = cases::build(&site, &mut [&mut a, &mut b]);
    Ledger {
        conn: PgConn::connect(&url).unwrap(),
        site,
        url,
        hashes,
        _pg: pg,
    }
}

impl Tamper for Ledger {
    fn verify(&self) -> Result<LedgerReport, LedgerError> {
        verify_ledger(&self.url, &self.site.keys)
    }

    fn exec(&mut self, sql: &str) {
        self.conn
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", gridpow_store::postgres::detail(&e)));
    }
}

impl Ledger {
    fn int(&mut self, sql: &str) -> i64 {
        self.conn.query(sql, &[]).unwrap()[0].get(0)
    }
}

#[test]
fn clean_postgres_ledger_verifies_with_counts_and_readings_stored_once() {
    let l = build();
    let report = l.verify().unwrap();
    cases::assert_clean(&report);
}

#[test]
fn every_single_flipped_byte_of_a_block_in_postgres_is_found_and_the_block_named() {
    let mut l = build();
    let raw: Vec<u8> = l
        .conn
        .query(
            "SELECT raw FROM blocks WHERE relay_id = 1 AND height = 1",
            &[],
        )
        .unwrap()[0]
        .get(0);
    let hash = l.hashes[1];
    cases::every_flipped_byte(&mut l, &raw, &hash, |l, bytes| {
        l.conn
            .execute(
                "UPDATE blocks SET raw = $1 WHERE relay_id = 1 AND height = 1",
                &[&bytes],
            )
            .unwrap();
    });
}

#[test]
fn every_altered_column_of_a_postgres_block_row_or_its_readings_is_found() {
    let mut l = build();
    let block_id = l.int("SELECT id FROM blocks WHERE relay_id = 1 AND height = 1");
    let first = l.int("SELECT first_reading_id FROM blocks WHERE relay_id = 1 AND height = 1");
    cases::bumped_block_columns(&mut l, block_id, &cases::BLOCK_INT_COLS);
    let fault = cases::expect_block(
        &mut l,
        1,
        &format!("UPDATE blocks SET linked = NOT linked WHERE id = {block_id}"),
        &format!("UPDATE blocks SET linked = NOT linked WHERE id = {block_id}"),
    );
    assert!(matches!(fault, BlockFault::LinkedFlag { .. }), "{fault}");
    for col in ["hash", "prev_hash", "merkle_root"] {
        // Flip the top bit of the last byte.
        let flip = format!(
            "UPDATE blocks SET {col} = set_byte({col}, 31, get_byte({col}, 31) # 128) WHERE id = {block_id}"
        );
        let fault = cases::expect_block(&mut l, 1, &flip, &flip);
        match fault {
            BlockFault::HeaderColumn { column, .. } => assert_eq!(column, col),
            other => panic!("{col}: {other}"),
        }
    }
    l.verify().unwrap();
    let count = l.int(&format!(
        "SELECT reading_count FROM blocks WHERE id = {block_id}"
    ));
    assert_eq!(count, 2, "block 1 stores readings 6 and 7 of meter 1");
    cases::bumped_reading_columns(&mut l, first, count);
    // A deleted reading row.
    l.exec(&format!(
        "CREATE TEMP TABLE saved AS SELECT * FROM readings WHERE id = {first}; DELETE FROM readings WHERE id = {first}"
    ));
    let fault = match l.verify().unwrap_err() {
        LedgerError::BadBlock {
            relay_id: 1,
            height: 1,
            fault,
            ..
        } => fault,
        other => panic!("{other}"),
    };
    assert!(matches!(fault, BlockFault::ReadingCount { .. }), "{fault}");
    l.exec("INSERT INTO readings SELECT * FROM saved");
    l.verify().unwrap();
}

#[test]
fn altered_postgres_index_tables_and_extra_rows_fail_the_check() {
    let mut l = build();
    let relay2 = l.int("SELECT id FROM blocks WHERE relay_id = 2");
    cases::each_fails(
        &mut l,
        &[
            (
                "UPDATE coverage SET last_seq = last_seq + 1 WHERE meter_id = 2",
                "UPDATE coverage SET last_seq = last_seq - 1 WHERE meter_id = 2",
            ),
            (
                "INSERT INTO readings SELECT id + 1000, block_id, meter_id, epoch, seq + 50, ts_ms, energy_mwh, current_ma, \
                 leaf, voltage_cv, power_dw, freq_mhz, flags, pf_e4 FROM readings ORDER BY id LIMIT 1",
                "DELETE FROM readings WHERE seq >= 50",
            ),
            (
                "INSERT INTO runs VALUES (5000, 1, 0, 1, 0, 0)",
                "DELETE FROM runs WHERE block_id = 5000",
            ),
        ],
    );
    // Every column of the time-index run of relay 2's block.
    for col in [
        "meter_id", "first_id", "count", "min_ts", "max_ts", "block_id",
    ] {
        let change = format!("UPDATE runs SET {col} = {col} + 1 WHERE block_id = {relay2}");
        let undo = format!(
            "UPDATE runs SET {col} = {col} - 1 WHERE block_id = {}",
            if col == "block_id" {
                relay2 + 1
            } else {
                relay2
            }
        );
        l.exec(&change);
        let err = l.verify().expect_err(&change);
        l.exec(&undo);
        match err {
            LedgerError::BadBlock {
                relay_id: 2,
                height: 0,
                fault: BlockFault::TimeIndex(_),
                ..
            }
            | LedgerError::Table(_) => {}
            other => panic!("runs.{col}: {other}"),
        }
    }
    l.verify().unwrap();
    // Removing a block's readings, runs and coverage still leaves its frames: the block is named.
    cases::expect_missing_meter_3(
        &mut l,
        &format!(
            "DELETE FROM readings WHERE meter_id = 3; DELETE FROM runs WHERE block_id = {relay2}; \
             DELETE FROM coverage WHERE meter_id = 3; \
             UPDATE blocks SET reading_count = 0, duplicate_count = 2, min_ts = NULL, max_ts = NULL WHERE relay_id = 2"
        ),
    );
}
