//! `verify_ledger` on a PostgreSQL ledger (a private instance) built from
//! real sealed frames and signed PoW blocks: it passes, and any single altered
//! byte of block bytes, header columns, reading rows or the index tables makes
//! it fail, naming the block (the SQLite version is `tests/ledger.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::Site;
use gridpow_proto::Hash;
use gridpow_server::keyring::Keyring;
use gridpow_server::pg_harness::PgServer;
use gridpow_server::store::postgres::PgConn;
use gridpow_server::store::{Arrival, Ingest, PgStore, Store};
use gridpow_server::verify::verify_payload;
use gridpow_server::{verify_ledger, BlockFault, LedgerError, LedgerReport};

struct Ledger {
    site: Site,
    url: String,
    conn: PgConn,
    hashes: Vec<Hash>,
    _pg: std::sync::Arc<PgServer>,
}

/// Stores blocks 0..3 of relay 1 (frames overlapping, block 2 before 1) and
/// block 0 of relay 2, as two writers on one database.
fn build() -> Ledger {
    let pg = PgServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.create_database().unwrap();
    let site = Site::new(&[1, 2], &[1, 2, 3]);
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
    let mut a = PgStore::open(&url).unwrap();
    let mut b = PgStore::open(&url).unwrap();
    for (i, blk) in [&b0, &b2, &b1, &r2, &b1].into_iter().enumerate() {
        let block = verify_payload(&mut keys, 4, blk).unwrap();
        let store: &mut dyn Store = if i % 2 == 0 { &mut a } else { &mut b };
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
    Ledger {
        conn: PgConn::connect(&url).unwrap(),
        site,
        url,
        hashes: vec![h0, h1, h2],
        _pg: pg,
    }
}

impl Ledger {
    #[allow(clippy::result_large_err)]
    fn verify(&self) -> Result<LedgerReport, LedgerError> {
        verify_ledger(&self.url, &self.site.keys)
    }

    fn exec(&mut self, sql: &str) {
        self.conn
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", gridpow_server::store::postgres::detail(&e)));
    }

    fn int(&mut self, sql: &str) -> i64 {
        self.conn.query(sql, &[]).unwrap()[0].get(0)
    }

    /// Runs `change`, expects the check to fail naming relay 1 at `height`, then runs `undo`.
    fn expect_block(&mut self, height: u64, change: &str, undo: &str) -> BlockFault {
        self.exec(change);
        let err = self.verify().expect_err(change);
        self.exec(undo);
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
}

#[test]
fn clean_postgres_ledger_verifies_with_counts_and_readings_stored_once() {
    let l = build();
    let report = l.verify().unwrap();
    assert_eq!((report.relays, report.blocks, report.frames), (2, 4, 5));
    assert_eq!(
        (report.readings, report.duplicate_readings, report.meters),
        (14, 2, 3)
    );
    assert!(report.gaps.is_empty());
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
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        l.conn
            .execute(
                "UPDATE blocks SET raw = $1 WHERE relay_id = 1 AND height = 1",
                &[&bad],
            )
            .unwrap();
        let err = l.verify().expect_err("flipped byte must be found");
        match &err {
            LedgerError::BadBlock {
                relay_id: 1,
                height,
                hash,
                ..
            } => {
                if !(8..16).contains(&i) {
                    assert_eq!(*height, 1, "byte {i}: {err}");
                }
                if i >= 100 {
                    assert_eq!(hash, &hex::encode(l.hashes[1]), "byte {i}");
                }
            }
            other => panic!("byte {i}: {other}"),
        }
    }
    l.conn
        .execute(
            "UPDATE blocks SET raw = $1 WHERE relay_id = 1 AND height = 1",
            &[&raw],
        )
        .unwrap();
    l.verify().unwrap();
}

#[test]
fn every_altered_column_of_a_postgres_block_row_or_its_readings_is_found() {
    let mut l = build();
    let block_id = l.int("SELECT id FROM blocks WHERE relay_id = 1 AND height = 1");
    let first = l.int("SELECT first_reading_id FROM blocks WHERE relay_id = 1 AND height = 1");
    for col in [
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
    ] {
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
    let fault = l.expect_block(
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
        let fault = l.expect_block(1, &flip, &flip);
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
            let fault = l.expect_block(
                1,
                &format!("UPDATE readings SET {col} = {col} + 1 WHERE id = {id}"),
                &format!("UPDATE readings SET {col} = {col} - 1 WHERE id = {id}"),
            );
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
    for (change, undo) in [
        (
            "UPDATE coverage SET last_seq = last_seq + 1 WHERE meter_id = 2".to_string(),
            "UPDATE coverage SET last_seq = last_seq - 1 WHERE meter_id = 2".to_string(),
        ),
        (
            "INSERT INTO readings SELECT id + 1000, block_id, meter_id, epoch, seq + 50, ts_ms, energy_mwh, current_ma, \
             leaf, voltage_cv, power_dw, freq_mhz, flags, pf_e4 FROM readings ORDER BY id LIMIT 1"
                .to_string(),
            "DELETE FROM readings WHERE seq >= 50".to_string(),
        ),
        (
            "INSERT INTO runs VALUES (5000, 1, 0, 1, 0, 0)".to_string(),
            "DELETE FROM runs WHERE block_id = 5000".to_string(),
        ),
    ] {
        l.exec(&change);
        let err = l.verify().expect_err(&change);
        l.exec(&undo);
        assert!(!err.to_string().is_empty(), "{change}");
    }
    l.verify().unwrap();
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
    l.exec(&format!(
        "DELETE FROM readings WHERE meter_id = 3; DELETE FROM runs WHERE block_id = {relay2}; \
         DELETE FROM coverage WHERE meter_id = 3; \
         UPDATE blocks SET reading_count = 0, duplicate_count = 2, min_ts = NULL, max_ts = NULL WHERE relay_id = 2"
    ));
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
