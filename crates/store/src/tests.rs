//! Store behaviour on synthetic verified blocks (the store trusts its input:
//! verification is tested in `verify` and end to end in `tests/`).

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;

use super::*;
use crate::plausibility::AlertKind;
use crate::verified::{ReadingRow, RejectKind, VerifiedBlockData};

pub(crate) const T0: u64 = 1_700_000_000_000;

pub(crate) fn reading(meter: u32, seq: u32) -> Reading {
    // 230 V, 5 A, PF 0.9 → 1035 W; energy grows 1 Wh per reading.
    Reading {
        timestamp_ms: T0 + u64::from(seq) * 10_000 + u64::from(meter),
        voltage_cv: 23000,
        current_ma: 5000,
        active_power_dw: 10_350,
        power_factor_e4: 9000,
        frequency_mhz: 50_000,
        energy_mwh: 1_000 * u64::from(seq),
        flags: 0,
    }
}

/// A block of `relay` at `height` whose parent hash is `prev`, carrying the
/// readings `(meter, epoch, seqs)`, one leaf per entry.
pub(crate) fn block(
    relay: u32,
    height: u64,
    prev: Hash,
    leaves: &[(u32, u32, std::ops::Range<u32>)],
) -> VerifiedBlockData {
    let mut readings = Vec::new();
    for (leaf, (meter, epoch, seqs)) in leaves.iter().enumerate() {
        for seq in seqs.clone() {
            readings.push(ReadingRow {
                meter_id: *meter,
                epoch: *epoch,
                seq,
                key_id: 1,
                leaf: leaf as u32,
                reading: reading(*meter, seq),
            });
        }
    }
    readings.sort_by_key(|r| (r.meter_id, r.epoch, r.seq));
    let header = BlockHeaderRepr {
        difficulty: 8,
        relay_id: relay,
        height,
        prev_hash: prev,
        merkle_root: [height as u8; 32],
        leaf_count: leaves.len() as u32,
        time_ms: T0 + height * 1000,
        nonce: height,
    };
    VerifiedBlockData {
        hash: header.hash(&RustCrypto),
        header,
        raw: header.to_bytes().to_vec(),
        readings,
    }
}

/// A payload refused by the verifier for `kind`, naming `relay` (if any) in a header.
pub(crate) fn refused(
    kind: RejectKind,
    relay: Option<u32>,
    raw: Vec<u8>,
    received_ms: u64,
) -> Ingest {
    Ingest::Quarantine(QuarantineItem {
        arrival: Arrival {
            received_ms,
            topic: "t".into(),
        },
        kind,
        detail: "test".into(),
        header: relay.map(|r| block(r, 1, [0; 32], &[]).header),
        raw,
    })
}

pub(crate) fn ingest(b: &VerifiedBlockData) -> Ingest {
    Ingest::Block {
        arrival: Arrival {
            received_ms: T0,
            topic: "t".into(),
        },
        block: b.clone(),
    }
}

/// A fresh database of one backend with a writer open on it.
struct TestDb {
    store: Box<dyn Store>,
    backend: Backend,
}

enum Backend {
    Sqlite(tempfile::TempDir),
    // The server is kept alive while the test runs.
    #[allow(dead_code)]
    Postgres(
        std::sync::Arc<gridpow_testkit::pg_harness::PgServer>,
        String,
    ),
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let store = Box::new(
            SqliteStore::open(&dir.path().join("ledger.db"), StoreOptions::default()).unwrap(),
        );
        TestDb {
            store,
            backend: Backend::Sqlite(dir),
        }
    }

    fn postgres() -> TestDb {
        let pg = gridpow_testkit::pg_harness::PgServer::shared()
            .unwrap_or_else(|e| panic!("a private PostgreSQL is needed for this test: {e}"));
        let url = pg.create_database().unwrap();
        let store = Box::new(PgStore::open(&url, StoreOptions::default()).unwrap());
        TestDb {
            store,
            backend: Backend::Postgres(pg, url),
        }
    }

    /// The URL `open_store` takes.
    fn url(&self) -> String {
        match &self.backend {
            Backend::Sqlite(dir) => dir.path().join("ledger.db").display().to_string(),
            Backend::Postgres(_, url) => url.clone(),
        }
    }

    /// Another writer on the same database.
    fn reopen(&self) -> Box<dyn Store> {
        open_store(&self.url(), StoreOptions::default()).unwrap()
    }

    /// A store on a read-only connection, as `open_reader` opens it, with
    /// the writer's methods in reach.
    fn read_only_connection(&self) -> Box<dyn Store> {
        match &self.backend {
            Backend::Sqlite(dir) => {
                Box::new(SqliteStore::open_reader(&dir.path().join("ledger.db")).unwrap())
            }
            Backend::Postgres(_, url) => Box::new(PgStore::open_reader(url).unwrap()),
        }
    }

    /// Re-opens the writer with `limits` (they are fixed when a store opens).
    fn set_limits(&mut self, limits: StoreLimits) {
        let options = StoreOptions {
            limits,
            ..StoreOptions::default()
        };
        self.store = open_store(&self.url(), options).unwrap();
    }

    /// A reader on the same database.
    fn reader(&self) -> Box<dyn ReadStore> {
        open_reader(&self.url()).unwrap()
    }

    /// The one value `sql` selects, read on a connection of its own.
    fn value<T>(&self, sql: &str) -> T
    where
        T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>,
    {
        match &self.backend {
            Backend::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("ledger.db"))
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Backend::Postgres(_, url) => postgres::PgConn::connect(url)
                .unwrap()
                .query(sql, &[])
                .unwrap()[0]
                .get(0),
        }
    }

    /// The integer `sql` selects.
    fn count(&self, sql: &str) -> i64 {
        self.value(sql)
    }

    /// Runs `sql` on a connection of its own (to tamper with the database).
    fn execute(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("ledger.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Backend::Postgres(_, url) => postgres::PgConn::connect(url)
                .unwrap()
                .batch_execute(sql)
                .unwrap(),
        }
    }

    /// The blob `sql` selects.
    fn bytes(&self, sql: &str) -> Vec<u8> {
        self.value(sql)
    }
}

impl std::ops::Deref for TestDb {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl std::ops::DerefMut for TestDb {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.store
    }
}

/// Checks the transparency log against the blocks table: one entry per
/// stored block, indexes without gaps in id (commit) order, and the stored
/// hashes give the RFC 9162 tree of those entries: its root, and inclusion
/// and consistency proofs the no_std core verifies. Returns the entries.
fn check_log<S: QueryStore + ?Sized>(
    s: &mut S,
    db: &TestDb,
) -> Vec<gridpow_proto::wire::LogLeafRepr> {
    use gridpow_proto::merkle::{root_of_hashes, verify_consistency, verify_inclusion};
    let size = s.log_size().unwrap();
    assert_eq!(size as i64, db.count("SELECT COUNT(*) FROM blocks"));
    assert_eq!(
        db.count("SELECT COUNT(*) FROM blocks WHERE log_index IS NULL"),
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM blocks a JOIN blocks b ON a.id < b.id AND a.log_index > b.log_index"),
        0,
        "entries follow the order blocks were stored in"
    );
    let entries = s.log_entries(0, size).unwrap();
    for (i, e) in entries.iter().enumerate() {
        let hash = db.bytes(&format!("SELECT hash FROM blocks WHERE log_index = {i}"));
        assert_eq!(&e.block_hash[..], &hash[..], "entry {i}");
    }
    let leaves: Vec<Hash> = entries.iter().map(|e| e.leaf_hash(&RustCrypto)).collect();
    let reader = StoreHashReader::new(s);
    let root = |n: u64| tlog_tiles::tree_hash(n, &reader).unwrap().0;
    assert_eq!(root(size), root_of_hashes(&RustCrypto, &leaves));
    for n in 1..=size {
        let proof = tlog_tiles::prove_record(size, n - 1, &reader).unwrap();
        let proof: Vec<Hash> = proof.iter().map(|h| h.0).collect();
        assert!(verify_inclusion(
            &RustCrypto,
            &leaves[n as usize - 1],
            n - 1,
            size,
            &proof,
            &root(size)
        ));
        let proof = tlog_tiles::prove_tree(size, n, &reader).unwrap();
        let proof: Vec<Hash> = proof.iter().map(|h| h.0).collect();
        assert!(
            verify_consistency(&RustCrypto, n, size, &root(n), &root(size), &proof),
            "{n} → {size}"
        );
    }
    assert!(reader.take_error().is_none());
    entries
}

/// A reader of the test database (the API's view).
struct TestDbReader(Box<dyn ReadStore>);

#[test]
fn sqlite_busy_and_io_errors_are_worth_a_retry_a_full_disk_is_not() {
    let failure = |code| {
        StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    };
    assert_eq!(failure(rusqlite::ffi::SQLITE_BUSY).remedy(), Remedy::Retry);
    assert_eq!(
        failure(rusqlite::ffi::SQLITE_LOCKED).remedy(),
        Remedy::Retry
    );
    assert_eq!(failure(rusqlite::ffi::SQLITE_IOERR).remedy(), Remedy::Retry);
    let full = failure(rusqlite::ffi::SQLITE_FULL);
    assert_eq!(full.remedy(), Remedy::Operator);
    assert!(!full.is_about_content());
    let corrupt = failure(rusqlite::ffi::SQLITE_CORRUPT);
    assert_eq!(corrupt.remedy(), Remedy::Operator);
    assert!(corrupt.is_about_content());
}

/// Each test once per backend: `store::tests::on_sqlite::…` and `store::tests::on_postgres::…`.
macro_rules! on_both_backends {
    ($(fn $name:ident($s:ident) $body:block)*) => {
        mod on_sqlite {
            use super::*;
            $( #[test] fn $name() { let mut $s = TestDb::sqlite(); $body } )*
        }
        mod on_postgres {
            use super::*;
            $( #[test] fn $name() { let mut $s = TestDb::postgres(); $body } )*
        }
    };
}

on_both_backends! {
fn a_commit_on_an_altered_schema_is_for_the_operator_not_a_retry(s) {
    let b0 = block(1, 0, [0; 32], &[(7, 1, 0..6)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    s.execute("DROP TABLE coverage");
    let b1 = block(1, 1, b0.hash, &[(8, 1, 0..6)]);
    let e = s.commit(&[ingest(&b1)], T0).unwrap_err();
    assert_eq!(e.remedy(), Remedy::Operator, "{e}");
    assert!(e.is_about_content(), "{e}");
}

fn block_delivered_twice_is_stored_once_and_reported_already_stored(s) {
    let b0 = block(1, 0, [0; 32], &[(7, 1, 0..6)]);
    let r = s.commit(&[ingest(&b0)], T0).unwrap();
    let Outcome::Stored {
        block_id,
        new_readings: 6,
        duplicate_readings: 0,
        linked: true,
        closed_gap: false,
        ..
    } = r.outcomes[0]
    else {
        panic!("{:?}", r.outcomes)
    };
    let r = s.commit(&[ingest(&b0), ingest(&b0)], T0).unwrap();
    assert_eq!(
        r.outcomes,
        vec![
            Outcome::AlreadyStored {
                block_id,
                log_index: 0
            },
            Outcome::AlreadyStored {
                block_id,
                log_index: 0
            }
        ]
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM blocks"), 1);
    assert_eq!(s.count("SELECT COUNT(*) FROM readings"), 6);
    assert_eq!(r.totals.blocks_duplicate, 2);
    assert_eq!(r.totals.readings_stored, 6);
    // The ledger's size counts the block and its bytes once.
    let size = s.ledger_size().unwrap();
    assert_eq!((size.blocks, size.block_bytes, size.readings), (1, b0.raw.len() as u64, 6));
    assert!((size.bytes_per_reading() - b0.raw.len() as f64 / 6.0).abs() < 1e-9);
}

fn readings_carried_by_two_frames_are_stored_once_even_out_of_order(s) {
    let b0 = block(1, 0, [0; 32], &[(7, 1, 0..6), (8, 1, 0..6)]);
    // Meter 7 re-sent 3..6 (its ACK was lost) together with 6..12; meter 8 repeats within one block.
    let b1 = block(
        1,
        1,
        b0.hash,
        &[(7, 1, 3..6), (7, 1, 6..12), (8, 1, 6..9), (8, 1, 8..10)],
    );
    // A later block carrying older readings of meter 7 (a late retry) and some new ones.
    let b2 = block(1, 2, b1.hash, &[(7, 1, 10..14), (7, 2, 0..2)]);
    // Deliver out of order within one transaction and across two.
    let r = s.commit(&[ingest(&b2)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Stored {
            new_readings: 6,
            duplicate_readings: 0,
            linked: false,
            ..
        }
    ));
    let r = s.commit(&[ingest(&b0), ingest(&b1)], T0).unwrap();
    assert!(
        matches!(
            r.outcomes[0],
            Outcome::Stored {
                new_readings: 12,
                duplicate_readings: 0,
                ..
            }
        ),
        "{:?}",
        r.outcomes
    );
    // b1: meter 7 3..6 dup (3), 6..12 minus 10,11 (stored by b2) → 4 new, 2 dup; meter 8: 6,7,8,9 new, one 8 dup.
    assert!(
        matches!(
            r.outcomes[1],
            Outcome::Stored {
                new_readings: 8,
                duplicate_readings: 6,
                closed_gap: true,
                ..
            }
        ),
        "{:?}",
        r.outcomes
    );
    let distinct = s.count("SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, epoch, seq FROM readings) AS d",
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM readings"), distinct);
    // Meter 7 epoch 1: 0..14 (14), epoch 2: 0..2 (2); meter 8: 0..10 (10).
    assert_eq!(distinct, 26);
    let cov: Vec<CoverageRow> = s.ledger_coverage().unwrap();
    assert_eq!(
        cov,
        vec![
            CoverageRow {
                meter_id: 7,
                epoch: 1,
                first_seq: 0,
                last_seq: 13
            },
            CoverageRow {
                meter_id: 7,
                epoch: 2,
                first_seq: 0,
                last_seq: 1
            },
            CoverageRow {
                meter_id: 8,
                epoch: 1,
                first_seq: 0,
                last_seq: 9
            },
        ],
        "one interval per (meter, epoch) once the holes are filled"
    );
    assert_eq!(r.totals.readings_stored, 26);
    assert_eq!(r.totals.readings_duplicate, 6);
}

fn two_relays_hearing_one_meter_store_it_once_and_each_shows_what_it_carried(s) {
    // Meter 5 sits in both cells: relays 1 and 2 carry its frames. Meter 4 is
    // heard by relay 1 only, meter 6 by relay 2 only.
    let a0 = block(1, 0, [0; 32], &[(4, 1, 0..6), (5, 1, 0..6)]);
    let b0 = block(2, 0, [0; 32], &[(5, 1, 0..6), (6, 1, 0..3)]);
    // Relay 2 heard a frame of meter 5 that relay 1 missed, and relay 1 one
    // that relay 2 missed.
    let a1 = block(1, 1, a0.hash, &[(5, 1, 6..12), (5, 1, 18..24)]);
    let b1 = block(2, 1, b0.hash, &[(5, 1, 6..18)]);
    let r = s.commit(&[ingest(&a0), ingest(&b0)], T0).unwrap();
    assert_eq!(r.totals.readings_duplicate, 6, "{:?}", r.outcomes);
    let r = s.commit(&[ingest(&b1), ingest(&a1)], T0 + 5).unwrap();
    assert_eq!(r.totals.readings_stored, 6 + 6 + 3 + 12 + 6);
    assert_eq!(r.totals.readings_duplicate, 6 + 6);
    assert_eq!(s.count("SELECT COUNT(*) FROM readings WHERE meter_id = 5"), 24);
    let relays = s.relays().unwrap();
    let cov: Vec<_> = relays
        .iter()
        .map(|r| (r.relay_id, r.meters_heard, r.meters_shared, r.readings, r.readings_duplicate))
        .collect();
    // Relay 1: meters 4 and 5 (5 shared); stored 4's 6, 5's 0..6 and 18..24;
    // its 6..12 had come in relay 2's block of the same commit first.
    // Relay 2: meters 5 and 6; stored 5's 6..18 and 6's 3; its 0..6 was relay 1's.
    assert_eq!(cov, vec![(1, 2, 1, 18, 6), (2, 2, 1, 15, 6)]);
    // Who still sends with key id 1, and since when.
    assert_eq!(s.meters_sending_with_key(1, T0).unwrap(), vec![4, 5, 6]);
    assert_eq!(s.meters_sending_with_key(1, T0 + 5).unwrap(), vec![5]);
    assert!(s.meters_sending_with_key(2, 0).unwrap().is_empty());
    assert_eq!(
        s.count("SELECT COUNT(*) FROM relay_meters WHERE meter_id = 5 AND last_heard_ms = 1700000000005"),
        2
    );
}

fn a_meter_that_equivocates_is_found_and_identical_repeats_are_not(s) {
    let repeated = |o: &Outcome| match o {
        Outcome::Stored { repeated, .. } => repeated.clone(),
        other => panic!("{other:?}"),
    };
    let b0 = block(1, 0, [0; 32], &[(7, 1, 0..3)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    // A re-send of 1..3 with the same content (heard twice, or resent after the retry limit).
    let b1 = block(1, 1, b0.hash, &[(7, 1, 1..3)]);
    let r = s.commit(&[ingest(&b1)], T0).unwrap();
    let rep = repeated(&r.outcomes[0]);
    assert_eq!(rep.len(), 2);
    assert_eq!(crate::equivocation::find(&mut *s.store, &rep).unwrap(), vec![]);
    // seq 2 again with another energy value (same timestamp), seq 0 with another timestamp.
    let mut b2 = block(1, 2, b1.hash, &[(7, 1, 0..1), (7, 1, 2..4)]);
    for r in &mut b2.readings {
        match r.seq {
            0 => r.reading.timestamp_ms += 1,
            2 => r.reading.energy_mwh += 1,
            _ => {}
        }
    }
    let r = s.commit(&[ingest(&b2)], T0).unwrap();
    let rep = repeated(&r.outcomes[0]);
    let found = crate::equivocation::find(&mut *s.store, &rep).unwrap();
    let numbers: Vec<(u32, u32, bool)> =
        found.iter().map(|q| (q.meter_id, q.seq, q.stored.is_some())).collect();
    assert_eq!(numbers, vec![(7, 0, false), (7, 2, true)]);
    assert_eq!(found[1].stored.as_ref().unwrap().reading, reading(7, 2));
    assert_eq!(found[1].carried.energy_mwh, reading(7, 2).energy_mwh + 1);
    // The first reading stays the stored one; seq 3 is new.
    assert_eq!(s.count("SELECT COUNT(*) FROM readings"), 4);
    for q in &found {
        s.raise_alert(&q.alert(1, 2), T0).unwrap();
    }
    let alerts = s.alerts(10).unwrap();
    assert_eq!(alerts.len(), 1, "one alert per meter: {alerts:?}");
    assert_eq!(
        (alerts[0].kind.as_str(), alerts[0].count, alerts[0].severity),
        ("equivocation", 2, "critical")
    );
    assert!(alerts[0].message.contains("epoch 1 seq 2"), "{}", alerts[0].message);
}

fn block_before_its_parent_opens_a_gap_that_the_parent_closes(s) {
    let b0 = block(3, 0, [0; 32], &[(1, 1, 0..1)]);
    let b1 = block(3, 1, b0.hash, &[(1, 1, 1..2)]);
    let b2 = block(3, 2, b1.hash, &[(1, 1, 2..3)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    let r = s.commit(&[ingest(&b2)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Stored { linked: false, .. }
    ));
    assert_eq!(r.totals.gaps_open, 1);
    assert!(r
        .alerts
        .iter()
        .any(|a| a.kind == AlertKind::Gap && a.subject == "relay:3:height:2"));
    let relays = s.relays().unwrap();
    assert_eq!(relays[0].gaps, vec![(1, 1)]);
    assert_eq!(relays[0].linked_height, Some(0));
    let r = s.commit(&[ingest(&b1)], T0 + 5).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Stored {
            linked: true,
            closed_gap: true,
            ..
        }
    ));
    assert_eq!(r.totals.gaps_open, 0);
    assert_eq!(s.count("SELECT COUNT(*) FROM blocks WHERE NOT linked"), 0);
    let gap = s
        .alerts(10)
        .unwrap()
        .into_iter()
        .find(|a| a.kind == "gap")
        .unwrap();
    assert_eq!(gap.cleared_ms, Some(T0 + 5));
    assert_eq!(s.relays().unwrap()[0].linked_height, Some(2));
}

fn second_block_at_the_same_height_is_quarantined_as_a_fork(s) {
    let b0 = block(2, 0, [0; 32], &[(1, 1, 0..2)]);
    let b1 = block(2, 1, b0.hash, &[(1, 1, 2..4)]);
    let mut other = block(2, 1, b0.hash, &[(1, 1, 2..5)]);
    other.header.time_ms += 1;
    other.hash = other.header.hash(&RustCrypto);
    // A block naming a parent that is not the stored one is a fork too.
    let stranger = block(2, 2, [9; 32], &[(1, 1, 9..10)]);
    s.commit(&[ingest(&b0), ingest(&b1)], T0).unwrap();
    let r = s.commit(&[ingest(&other), ingest(&stranger)], T0).unwrap();
    assert!(
        matches!(
            r.outcomes[0],
            Outcome::Quarantined {
                kind: RejectKind::Fork,
                ..
            }
        ),
        "{:?}",
        r.outcomes
    );
    assert!(
        matches!(
            r.outcomes[1],
            Outcome::Quarantined {
                kind: RejectKind::Fork,
                ..
            }
        ),
        "{:?}",
        r.outcomes
    );
    assert_eq!(r.totals.forks, 2);
    assert_eq!(r.totals.blocks_rejected, 2);
    assert_eq!(
        r.totals.readings_stored, 4,
        "the fork's readings are not stored"
    );
    let q = s.quarantine(10).unwrap();
    assert_eq!(q.len(), 2);
    assert!(q.iter().all(|q| q.kind == "fork" && q.relay_id == Some(2)));
    assert!(r
        .alerts
        .iter()
        .any(|a| a.kind == AlertKind::Fork && a.subject == "relay:2:height:1"));
    assert_eq!(s.relays().unwrap()[0].forks, 2);
}

fn genesis_with_a_previous_hash_is_quarantined(s) {
    let b = block(4, 0, [1; 32], &[(1, 1, 0..1)]);
    let r = s.commit(&[ingest(&b)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Quarantined {
            kind: RejectKind::BadGenesis,
            ..
        }
    ));
    assert_eq!(r.totals.blocks_verified, 0);
}

fn rejected_payloads_are_quarantined_with_reason_and_raw_bytes_and_counted(s) {
    let q = QuarantineItem {
        arrival: Arrival {
            received_ms: T0,
            topic: "gridpow/v1/relays/1/blocks".into(),
        },
        kind: RejectKind::BadTag,
        detail: "leaf 3: meter tag does not verify".into(),
        header: None,
        raw: vec![0xde, 0xad, 0xbe, 0xef],
    };
    let r = s.commit(&[Ingest::Quarantine(q)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Quarantined {
            kind: RejectKind::BadTag,
            ..
        }
    ));
    assert_eq!((r.totals.blocks_rejected, r.totals.frames_rejected), (1, 1));
    let rows = s.quarantine(5).unwrap();
    assert_eq!(rows[0].head_hex, "deadbeef");
    assert_eq!(rows[0].kind, "bad_tag");
    let raw = s.bytes("SELECT raw FROM quarantine");
    assert_eq!(raw, vec![0xde, 0xad, 0xbe, 0xef]);
}

fn implausible_readings_raise_one_counted_alert_per_meter_and_kind(s) {
    let mut b0 = block(1, 0, [0; 32], &[(5, 1, 0..4)]);
    for r in &mut b0.readings {
        r.reading.voltage_cv = 26_000; // 260 V, and P no longer matches V·I·PF
    }
    let r = s.commit(&[ingest(&b0)], T0).unwrap();
    let v = r
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::VoltageOutOfRange)
        .unwrap();
    assert_eq!((v.subject.as_str(), v.count), ("meter:5", 4));
    assert!(r.alerts.iter().any(|a| a.kind == AlertKind::PowerMismatch));
    // The register going backwards, across blocks.
    let mut b1 = block(1, 1, b0.hash, &[(5, 1, 4..5)]);
    b1.readings[0].reading.energy_mwh = 10;
    let r = s.commit(&[ingest(&b1)], T0).unwrap();
    let e = r
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::EnergyBackwards)
        .unwrap();
    assert!(e.message.contains("3000 mWh to 10 mWh"), "{}", e.message);
    let rows = s.alerts(10).unwrap();
    let volt = rows
        .iter()
        .find(|a| a.kind == "voltage_out_of_range")
        .unwrap();
    assert_eq!(volt.count, 4);
    assert_eq!(volt.meter_id, Some(5));
}

fn silent_meters_are_reported_once_and_cleared_when_heard_again(s) {
    let b0 = block(1, 0, [0; 32], &[(5, 1, 0..1), (6, 1, 0..1)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    // Too soon after start: nothing.
    assert!(s
        .sweep_silent(T0 + 60_000, 50_000, T0 + 30_000)
        .unwrap()
        .is_empty());
    let b1 = block(1, 1, b0.hash, &[(6, 1, 1..2)]);
    s.commit(&[ingest(&b1)], T0 + 40_000).unwrap();
    let raised = s.sweep_silent(T0 + 60_000, 50_000, T0).unwrap();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].subject, "meter:5");
    assert!(
        s.sweep_silent(T0 + 70_000, 50_000, T0).unwrap().is_empty(),
        "reported once"
    );
    assert!(s
        .meters()
        .unwrap()
        .iter()
        .any(|m| m.meter_id == 5 && m.silent));
    let b2 = block(1, 2, b1.hash, &[(5, 1, 1..2)]);
    let r = s.commit(&[ingest(&b2)], T0 + 80_000).unwrap();
    assert_eq!(r.totals.alerts_active, 0);
    assert!(s.meters().unwrap().iter().all(|m| !m.silent));
}

fn fleet_views_page_sort_filter_sum_and_count_per_window(s) {
    // Relay 1: meters 1..=11 at T0 + 20 s; relay 2: meter 12 at T0 (it falls silent).
    let mut b0 = block(1, 0, [0; 32], &(1..=11).map(|m| (m, 1, 0..2)).collect::<Vec<_>>());
    for r in &mut b0.readings {
        r.reading.active_power_dw = r.meter_id as i32 * 1000;
        r.reading.voltage_cv = match r.meter_id {
            3 => 19_000,
            7 => 26_000,
            _ => 23_000,
        };
        // Consistent with P = V·I·PF (0.9), so only the voltage rule fires.
        let amps = f64::from(r.meter_id) * 100.0 / (f64::from(r.reading.voltage_cv) / 100.0 * 0.9);
        r.reading.current_ma = (amps * 1000.0).round() as u32;
    }
    let mut b1 = block(2, 0, [0; 32], &[(12, 1, 0..2)]);
    for r in &mut b1.readings {
        r.reading.active_power_dw = 12_000;
        r.reading.current_ma = (1200.0 / (230.0 * 0.9) * 1000.0_f64).round() as u32;
    }
    let at = |b: &VerifiedBlockData, received_ms: u64| Ingest::Block {
        arrival: Arrival {
            received_ms,
            topic: "t".into(),
        },
        block: b.clone(),
    };
    s.commit(&[at(&b1, T0)], T0).unwrap();
    s.commit(
        &[
            at(&b0, T0 + 20_000),
            refused(RejectKind::BadTag, Some(1), vec![1; 40], T0 + 21_000),
        ],
        T0 + 20_000,
    )
    .unwrap();
    let silent = s.sweep_silent(T0 + 60_000, 50_000, 0).unwrap();
    assert_eq!(silent.len(), 1, "meter 12 only: {silent:?}");
    s.raise_alert(
        &NewAlert {
            kind: AlertKind::PowerMismatch,
            subject: "meter:5".into(),
            meter_id: Some(5),
            relay_id: None,
            message: "test".into(),
        },
        T0 + 61_000,
    )
    .unwrap();
    let mut r = TestDbReader(s.reader());
    let band = VoltageBand::new(230.0, 0.10);
    assert_eq!((band.low_cv, band.high_cv), (20_700, 25_300));

    let now = r.0.fleet_snapshot(band).unwrap();
    assert_eq!((now.meters, now.reporting, now.silent), (12, 11, 1));
    assert!((now.power_w - 6_600.0).abs() < 1e-9, "{now:?}");
    assert_eq!((now.below_band, now.above_band), (1, 1));
    assert_eq!(
        (now.voltage_min_v, now.voltage_max_v),
        (Some(190.0), Some(260.0))
    );
    assert!((now.energy_kwh - 12.0 * 0.001).abs() < 1e-9, "{now:?}");

    let query = MeterQuery {
        id_prefix: None,
        filter: MeterFilter::All,
        sort: MeterSort::Power,
        descending: true,
        offset: 0,
        limit: 3,
        band,
    };
    let ids = |p: &MeterPage| p.rows.iter().map(|m| m.meter.meter_id).collect::<Vec<_>>();
    let page = r.0.meter_page(&query).unwrap();
    assert_eq!((page.total, page.matched), (12, 12));
    assert_eq!(ids(&page), vec![12, 11, 10]);
    let by = |filter| MeterQuery {
        filter,
        sort: MeterSort::Id,
        descending: false,
        limit: 50,
        ..query.clone()
    };
    assert_eq!(ids(&r.0.meter_page(&by(MeterFilter::OutOfBand)).unwrap()), vec![3, 7]);
    assert_eq!(ids(&r.0.meter_page(&by(MeterFilter::Silent)).unwrap()), vec![12]);
    let alerting = r.0.meter_page(&by(MeterFilter::Alerting)).unwrap();
    // Out of band (3, 7), the alert raised (5), silent (12).
    assert_eq!(ids(&alerting), vec![3, 5, 7, 12]);
    assert!(alerting.rows.iter().all(|m| m.active_alerts == 1));
    let prefixed = r.0.meter_page(&MeterQuery {
        id_prefix: Some("1".into()),
        ..by(MeterFilter::All)
    })
    .unwrap();
    assert_eq!((prefixed.matched, ids(&prefixed)), (4, vec![1, 10, 11, 12]));
    let last = r.0.meter_page(&MeterQuery {
        offset: 10,
        ..by(MeterFilter::All)
    })
    .unwrap();
    assert_eq!((last.offset, ids(&last)), (10, vec![11, 12]));
    let by_alerts = r.0.meter_page(&MeterQuery {
        sort: MeterSort::Alerts,
        descending: true,
        limit: 2,
        ..by(MeterFilter::All)
    })
    .unwrap();
    assert_eq!(ids(&by_alerts), vec![12, 7]);

    let windows = r.0.ingest_windows(T0, 10_000).unwrap();
    let w: Vec<_> = windows
        .iter()
        .map(|w| (w.start_ms - T0, w.blocks, w.frames, w.readings))
        .collect();
    assert_eq!(w, vec![(0, 1, 1, 2), (20_000, 1, 11, 22)]);
    assert_eq!(r.0.ingest_windows(T0 + 1, 10_000).unwrap().len(), 1);

    let traffic = r.0.relay_traffic(T0).unwrap();
    let t: Vec<_> = traffic
        .iter()
        .map(|t| (t.relay_id, t.blocks, t.readings, t.rejected))
        .collect();
    assert_eq!(t, vec![(1, 1, 22, 1), (2, 1, 2, 0)]);

    let id = r.0.blocks(Some(1), 1).unwrap()[0].id;
    let br = r.0.block_readings(id, 5).unwrap().unwrap();
    assert_eq!((br.relay_id, br.height, br.reading_count), (1, 0, 22));
    assert_eq!(br.readings.len(), 5);
    assert!(br.readings.windows(2).all(|p| p[0].id < p[1].id));
    assert!(br.readings.iter().all(|x| x.block_id == id));
    assert!(r.0.block_readings(id + 1000, 5).unwrap().is_none());
}

fn time_range_query_returns_one_meters_readings_in_time_order(s) {
    let b0 = block(1, 0, [0; 32], &[(1, 1, 0..6), (2, 1, 0..6)]);
    let b1 = block(1, 1, b0.hash, &[(2, 1, 6..12), (1, 1, 6..12)]);
    // b1 arrives first: its runs are older in id order but newer in time.
    s.commit(&[ingest(&b1)], T0).unwrap();
    s.commit(&[ingest(&b0)], T0).unwrap();
    let all = s.meter_readings(1, 0, u64::MAX, 1000).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|r| r.meter_id == 1));
    let window = s.meter_readings(1, T0 + 30_000, T0 + 80_000, 1000).unwrap();
    assert_eq!(
        window.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
    let newest = s.meter_readings(2, 0, u64::MAX, 4).unwrap();
    assert_eq!(
        newest.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![8, 9, 10, 11]
    );
    assert_eq!(
        s.directory_rows().unwrap(),
        2,
        "one time-index row per block"
    );
    let dir = s.ledger_directory(1).unwrap().unwrap();
    let runs = decode_directory(1, &dir).unwrap();
    assert_eq!(runs.len(), 2, "one entry per meter");
    assert_eq!(encode_directory(&runs), dir);
    assert_eq!(find_in_directory(1, &dir, 2), Some(runs[1]));
    assert_eq!(find_in_directory(1, &dir, 3), None);
}

fn every_stored_block_is_appended_to_the_log_once_in_commit_order(s) {
    let b0 = block(1, 0, [0; 32], &[(1, 1, 0..3)]);
    let b1 = block(1, 1, b0.hash, &[(1, 1, 3..6)]);
    let b2 = block(1, 2, b1.hash, &[(1, 1, 6..9)]);
    let c0 = block(2, 0, [0; 32], &[(2, 1, 0..3)]);
    let fork = block(2, 0, [7; 32], &[(2, 1, 5..7)]);
    assert_eq!(s.reader().log_size().unwrap(), 0);
    // A child before its parent, a redelivery, a fork and a refusal: only
    // the blocks stored get entries, in the order they were stored.
    let r = s.commit(&[ingest(&b1), ingest(&c0)], T0).unwrap();
    assert_eq!(r.log_size, Some(2));
    assert!(matches!(r.outcomes[1], Outcome::Stored { log_index: 1, .. }));
    let r = s.commit(&[ingest(&b0), ingest(&b1), ingest(&fork), refused(RejectKind::BadSignature, Some(1), vec![1, 2, 3], T0)], T0).unwrap();
    assert!(matches!(r.outcomes[0], Outcome::Stored { log_index: 2, .. }));
    assert!(matches!(r.outcomes[1], Outcome::AlreadyStored { .. }));
    assert!(matches!(r.outcomes[2], Outcome::Quarantined { .. }), "{:?}", r.outcomes);
    assert_eq!(r.log_size, Some(3));
    let r = s.commit(&[ingest(&b1)], T0).unwrap();
    assert_eq!(r.log_size, None, "nothing appended");
    s.store = s.reopen();
    s.commit(&[ingest(&b2)], T0).unwrap();
    let mut reader = s.reader();
    let entries = check_log(&mut *reader, &s);
    let order: Vec<(u32, u64)> = entries.iter().map(|e| (e.relay_id, e.height)).collect();
    assert_eq!(order, [(1, 1), (2, 0), (1, 0), (1, 2)]);
    assert_eq!(entries[2].merkle_root, b0.header.merkle_root);
}

fn a_ledger_stored_before_the_log_existed_is_appended_to_it_when_the_writer_opens(s) {
    let mut prev = [0; 32];
    let mut blocks = Vec::new();
    for h in 0..7 {
        let b = block(1 + h as u32 % 2, h / 2, if h < 2 { [0; 32] } else { prev }, &[(1, 1, h as u32 * 3..h as u32 * 3 + 3)]);
        prev = b.hash;
        blocks.push(b);
    }
    for b in &blocks {
        s.commit(&[ingest(b)], T0).unwrap();
    }
    let before = check_log(&mut *s.reader(), &s);
    // As a version 3 database had it: no entries, no stored hashes.
    s.execute("UPDATE blocks SET log_index = NULL; DELETE FROM log_hashes;");
    assert_eq!(s.reader().log_size().unwrap(), 0);
    s.store = s.reopen();
    let after = check_log(&mut *s.reader(), &s);
    assert_eq!(before, after);
    // Opening again appends nothing more.
    s.store = s.reopen();
    assert_eq!(check_log(&mut *s.reader(), &s), before);
}

fn a_version_4_database_gets_its_relay_coverage_from_the_stored_readings(s) {
    let a0 = block(1, 0, [0; 32], &[(4, 1, 0..6), (5, 1, 0..6)]);
    let b0 = block(2, 0, [0; 32], &[(5, 1, 3..9), (6, 1, 0..3)]);
    s.commit(&[ingest(&a0)], T0).unwrap();
    s.commit(&[ingest(&b0)], T0 + 7).unwrap();
    // As version 4 had it: no relay_meters table.
    s.execute(match &s.backend {
        Backend::Sqlite(_) => "DROP TABLE relay_meters; PRAGMA user_version = 4;",
        Backend::Postgres(..) => "DROP TABLE relay_meters; DELETE FROM gridpow_schema WHERE version = 5;",
    });
    s.store = s.reopen();
    // Readings stored first, per relay and meter; the duplicates they
    // carried were not kept before version 5, nor the key ids.
    let rows = "SELECT COUNT(*) FROM relay_meters WHERE readings_duplicate = 0 AND last_key_id = 0 AND (";
    let want = "(relay_id = 1 AND meter_id = 4 AND readings_first = 6 AND last_heard_ms = 1700000000000) \
        OR (relay_id = 1 AND meter_id = 5 AND readings_first = 6) \
        OR (relay_id = 2 AND meter_id = 5 AND readings_first = 3 AND last_heard_ms = 1700000000000) \
        OR (relay_id = 2 AND meter_id = 6 AND readings_first = 3))";
    assert_eq!(s.count(&format!("{rows}{want}")), 4);
    assert_eq!(s.count("SELECT COUNT(*) FROM relay_meters"), 4);
    let shared: Vec<_> = s.relays().unwrap().iter().map(|r| (r.relay_id, r.meters_heard, r.meters_shared)).collect();
    assert_eq!(shared, vec![(1, 2, 1), (2, 2, 1)]);
}

fn totals_and_chain_survive_reopening_the_database(s) {
    let b0 = block(1, 0, [0; 32], &[(1, 1, 0..3)]);
    let b1 = block(1, 1, b0.hash, &[(1, 1, 3..6)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    s.store = s.reopen();
    let r = s.commit(&[ingest(&b1), ingest(&b0)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Stored {
            linked: true,
            new_readings: 3,
            ..
        }
    ));
    assert!(matches!(r.outcomes[1], Outcome::AlreadyStored { .. }));
    assert_eq!(
        (
            r.totals.readings_stored,
            r.totals.blocks_verified,
            r.totals.meters,
            r.totals.relays
        ),
        (6, 2, 1, 1)
    );
    assert_eq!(s.reader().totals().unwrap(), r.totals);
    // `open_reader` hands out no commit; the connection underneath refuses writes too.
    assert!(
        s.read_only_connection().commit(&[ingest(&b1)], T0).is_err(),
        "a reader cannot write"
    );
}

fn a_gap_one_writer_opened_is_closed_by_another_and_never_called_a_fork(s) {
    let b0 = block(5, 0, [0; 32], &[(1, 1, 0..2)]);
    let b1 = block(5, 1, b0.hash, &[(1, 1, 2..4)]);
    let b2 = block(5, 2, b1.hash, &[(1, 1, 4..6)]);
    let mut other = s.reopen();
    s.commit(&[ingest(&b0)], T0).unwrap();
    let r = other.commit(&[ingest(&b2)], T0).unwrap();
    assert!(matches!(r.outcomes[0], Outcome::Stored { linked: false, .. }));
    assert_eq!(r.totals.gaps_open, 1);
    let r = s.commit(&[ingest(&b1), ingest(&b2)], T0 + 1).unwrap();
    assert!(
        matches!(r.outcomes[0], Outcome::Stored { linked: true, closed_gap: true, .. }),
        "{:?}",
        r.outcomes
    );
    assert!(matches!(r.outcomes[1], Outcome::AlreadyStored { .. }));
    let r = other.commit(&[ingest(&b1)], T0 + 2).unwrap();
    assert!(matches!(r.outcomes[0], Outcome::AlreadyStored { .. }));
    assert_eq!((r.totals.gaps_open, r.totals.forks, r.totals.readings_stored), (0, 0, 6));
    assert_eq!(s.count("SELECT COUNT(*) FROM blocks WHERE NOT linked"), 0);
}

fn block_far_above_the_relays_head_is_refused_and_its_chain_continues(s) {
    let b0 = block(3, 0, [0; 32], &[(1, 1, 0..2)]);
    let b1 = block(3, 1, b0.hash, &[(1, 1, 2..4)]);
    s.commit(&[ingest(&b0), ingest(&b1)], T0).unwrap();
    // A validly signed block at height 10^12: refused before anything is stored.
    let far = block(3, 1_000_000_000_000, [7; 32], &[(1, 1, 100..102)]);
    let r = s.commit(&[ingest(&far)], T0).unwrap();
    assert!(
        matches!(
            r.outcomes[0],
            Outcome::Quarantined {
                kind: RejectKind::TooFarAhead,
                ..
            }
        ),
        "{:?}",
        r.outcomes
    );
    assert_eq!(
        (r.totals.blocks_verified, r.totals.gaps_open, r.totals.readings_stored),
        (2, 0, 4)
    );
    // The relay's genuine blocks are still stored, linked.
    let b2 = block(3, 2, b1.hash, &[(1, 1, 4..6)]);
    let r = s.commit(&[ingest(&b2)], T0).unwrap();
    assert!(
        matches!(r.outcomes[0], Outcome::Stored { linked: true, .. }),
        "{:?}",
        r.outcomes
    );
    let relay = &s.relays().unwrap()[0];
    assert_eq!((relay.head_height, relay.linked_height), (Some(2), Some(2)));
    assert!(relay.gaps.is_empty());
    assert_eq!(s.quarantine(5).unwrap()[0].kind, "too_far_ahead");
}

fn far_ahead_bound_counts_from_the_head_or_from_zero(s) {
    s.set_limits(StoreLimits {
        max_height_ahead: 10,
        ..StoreLimits::default()
    });
    // No block stored: heights up to 10 are accepted (a gap), 11 is not.
    let b11 = block(5, 11, [1; 32], &[(1, 1, 0..1)]);
    let b10 = block(5, 10, [1; 32], &[(1, 1, 1..2)]);
    let r = s.commit(&[ingest(&b11), ingest(&b10)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Quarantined {
            kind: RejectKind::TooFarAhead,
            ..
        }
    ));
    assert!(matches!(r.outcomes[1], Outcome::Stored { linked: false, .. }));
    // With the head at 10, up to 20 (in the same transaction: the new head counts).
    let b20 = block(5, 20, [2; 32], &[(1, 1, 2..3)]);
    let b21 = block(5, 21, [3; 32], &[(1, 1, 3..4)]);
    // 30 is within 10 of 20, stored earlier in this transaction.
    let b31 = block(5, 30, [4; 32], &[(1, 1, 4..5)]);
    let r = s
        .commit(&[ingest(&b21), ingest(&b20), ingest(&b31)], T0)
        .unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Quarantined {
            kind: RejectKind::TooFarAhead,
            ..
        }
    ));
    assert!(matches!(r.outcomes[1], Outcome::Stored { .. }));
    assert!(matches!(r.outcomes[2], Outcome::Stored { .. }), "{:?}", r.outcomes);
}

fn fork_raises_a_critical_alert_naming_relay_and_height(s) {
    let b0 = block(6, 0, [0; 32], &[(1, 1, 0..2)]);
    let mut other = b0.clone();
    other.header.time_ms += 1;
    other.hash = other.header.hash(&RustCrypto);
    other.raw = other.header.to_bytes().to_vec();
    s.commit(&[ingest(&b0)], T0).unwrap();
    let r = s.commit(&[ingest(&other)], T0).unwrap();
    assert!(matches!(
        r.outcomes[0],
        Outcome::Quarantined {
            kind: RejectKind::Fork,
            ..
        }
    ));
    let alerts = s.alerts(10).unwrap();
    let fork = alerts.iter().find(|a| a.kind == "fork").unwrap();
    assert_eq!(fork.severity, "critical");
    assert_eq!(fork.relay_id, Some(6));
    assert!(
        fork.message.contains("relay 6") && fork.message.contains("height 0"),
        "{}",
        fork.message
    );
    // Both are kept: the stored block, and the refused one's bytes.
    assert_eq!(s.blocks(Some(6), 5).unwrap().len(), 1);
    let forks = s.ledger_forks().unwrap();
    assert_eq!(forks.len(), 1);
    assert_eq!((forks[0].relay_id, forks[0].height), (Some(6), Some(0)));
    assert_eq!(forks[0].raw, other.raw);
}

fn quarantine_keeps_the_first_bytes_of_a_large_payload_and_its_length(s) {
    s.set_limits(StoreLimits {
        quarantine_max_payload_bytes: 1000,
        ..StoreLimits::default()
    });
    let raw: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let r = s.commit(&[refused(RejectKind::BadSignature, Some(1), raw.clone(), T0)], T0).unwrap();
    assert_eq!((r.quarantine_truncated, r.quarantine_dropped), (1, 0));
    let row = &s.quarantine(1).unwrap()[0];
    assert_eq!((row.bytes, row.kept_bytes), (5000, 1000));
    assert_eq!(row.head_hex, hex::encode(&raw[..64]));
    let small = s.commit(&[refused(RejectKind::BadSignature, Some(1), vec![1, 2, 3], T0)], T0).unwrap();
    assert_eq!(small.quarantine_truncated, 0);
    assert_eq!(s.quarantine(1).unwrap()[0].kept_bytes, 3);
}

fn refusals_beyond_a_relays_allowance_are_counted_but_not_kept(s) {
    s.set_limits(StoreLimits {
        quarantine_max_rows_per_relay: 3,
        quarantine_max_bytes_per_relay: 250,
        ..StoreLimits::default()
    });
    // Unauthenticated refusals naming relay 1 share one allowance: 3 rows.
    let junk: Vec<Ingest> = (0..5)
        .map(|_| refused(RejectKind::BadSignature, Some(1), vec![0; 10], T0))
        .collect();
    let r = s.commit(&junk, T0).unwrap();
    assert_eq!(r.quarantine_dropped, 2);
    let ids: Vec<i64> = r
        .outcomes
        .iter()
        .map(|o| match o {
            Outcome::Quarantined { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(ids[..3].iter().all(|&id| id > 0) && ids[3..] == [0, 0], "{ids:?}");
    assert_eq!(r.totals.blocks_rejected, 5, "every refusal is counted");
    // …in another transaction too (the allowance is read from the table).
    let r = s.commit(&junk[..1], T0).unwrap();
    assert_eq!(r.quarantine_dropped, 1);
    // Relay 1's own allowance (refusals after its signature verified) is untouched by the junk.
    let r = s
        .commit(&[refused(RejectKind::BadTag, Some(1), vec![0; 200], T0)], T0)
        .unwrap();
    assert_eq!(r.quarantine_dropped, 0);
    // Bytes: 200 kept, another 100 would exceed 250.
    let r = s
        .commit(&[refused(RejectKind::BadTag, Some(1), vec![0; 100], T0)], T0)
        .unwrap();
    assert_eq!(r.quarantine_dropped, 1);
    assert_eq!(s.quarantine(100).unwrap().len(), 4);
    assert_eq!(r.totals.blocks_rejected, 8);
}

fn quarantine_rows_past_retention_are_pruned_except_fork_evidence(s) {
    let day = 86_400_000;
    s.set_limits(StoreLimits {
        quarantine_retention_ms: day,
        ..StoreLimits::default()
    });
    let b0 = block(8, 0, [0; 32], &[(1, 1, 0..2)]);
    let mut fork = b0.clone();
    fork.header.nonce += 1;
    fork.hash = fork.header.hash(&RustCrypto);
    s.commit(&[ingest(&b0)], T0).unwrap();
    let items = [
        refused(RejectKind::BadSignature, Some(1), vec![1; 10], T0),
        refused(RejectKind::Malformed, None, vec![2; 10], T0 + 2 * day),
        ingest(&fork),
    ];
    s.commit(&items, T0).unwrap();
    assert_eq!(s.quarantine(10).unwrap().len(), 3);
    assert_eq!(s.prune_quarantine(T0 + day / 2).unwrap(), 0);
    assert_eq!(s.prune_quarantine(T0 + 2 * day).unwrap(), 1);
    let left: Vec<String> = s.quarantine(10).unwrap().into_iter().map(|q| q.kind).collect();
    assert_eq!(left, ["fork", "malformed"], "newest first");
}
}

#[test]
fn sqlite_file_in_a_missing_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("ledger.db");
    let mut s = SqliteStore::open(&path, StoreOptions::default()).unwrap();
    let b0 = block(1, 0, [0; 32], &[(1, 1, 0..3)]);
    s.commit(&[ingest(&b0)], T0).unwrap();
    assert!(path.exists());
}

#[test]
fn raw_insert_writes_the_rows_commit_would_write() {
    let mut s = TestDb::sqlite();
    let b = block(1, 0, [0; 32], &[(1, 1, 0..6), (2, 1, 0..6)]);
    let Backend::Sqlite(dir) = &s.backend else {
        unreachable!()
    };
    let mut raw_store =
        SqliteStore::open(&dir.path().join("raw.db"), StoreOptions::default()).unwrap();
    assert_eq!(raw_store.insert_readings_raw(1, &b.readings).unwrap(), 12);
    let raw = raw_store.ledger_readings(1, 12).unwrap();
    s.commit(&[ingest(&b)], T0).unwrap();
    assert_eq!(s.ledger_readings(1, 12).unwrap(), raw);
}

#[test]
fn raw_copy_writes_the_rows_commit_would_write() {
    let mut s = TestDb::postgres();
    let b = block(1, 0, [0; 32], &[(1, 1, 0..6), (2, 1, 0..6)]);
    s.commit(&[ingest(&b)], T0).unwrap();
    let first = 1 << postgres::READING_ID_SHIFT;
    let stored = s.ledger_readings(first, 12).unwrap();
    let other = TestDb::postgres();
    let mut raw = PgStore::open(&other.url(), StoreOptions::default()).unwrap();
    assert_eq!(raw.copy_readings_raw(&[(1, &b.readings)]).unwrap(), 12);
    assert_eq!(raw.ledger_readings(first, 12).unwrap(), stored);
}

/// A tiny deterministic generator (xorshift) for shuffles.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrent_writers_storing_blocks_in_any_order_keep_one_chain_and_each_reading_once() {
    let db = TestDb::postgres();
    // Relays 1 and 2 each carry 30 blocks; both hear meters 1..=4; consecutive
    // blocks overlap by three readings per meter (a meter's retries), and the
    // relays overlap each other (a meter heard by two relays).
    let mut blocks = Vec::new();
    for relay in [1u32, 2] {
        let mut prev = [0; 32];
        for h in 0..30u32 {
            let start = h * 6 + if relay == 2 { 3 } else { 0 };
            let leaves: Vec<_> = (1..=4u32).map(|m| (m, 1, start..start + 9)).collect();
            let b = block(relay, u64::from(h), prev, &leaves);
            prev = b.hash;
            blocks.push(b);
        }
    }
    // Every block delivered twice, in a shuffled order, to three writers.
    let mut deliveries: Vec<&VerifiedBlockData> = blocks.iter().chain(blocks.iter()).collect();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for i in (1..deliveries.len()).rev() {
        deliveries.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let url = db.url();
    std::thread::scope(|scope| {
        for w in 0..3usize {
            let mine: Vec<&VerifiedBlockData> =
                deliveries.iter().skip(w).step_by(3).copied().collect();
            let url = url.clone();
            scope.spawn(move || {
                let mut store = open_store(&url, StoreOptions::default()).unwrap();
                let mut rng = Rng(0x1000 + w as u64);
                let mut rest = &mine[..];
                while !rest.is_empty() {
                    let n = (1 + rng.next() % 4).min(rest.len() as u64) as usize;
                    let items: Vec<Ingest> = rest[..n].iter().map(|b| ingest(b)).collect();
                    store.commit(&items, T0).unwrap();
                    rest = &rest[n..];
                }
            });
        }
    });
    let mut s = db.reader();
    let t = s.totals().unwrap();
    // Meter m: relay 1 covers 0..183, relay 2 3..186: seq 0..=185, 186 readings each.
    assert_eq!(t.readings_stored, 4 * 186, "{t:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM readings"),
        db.count("SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, epoch, seq FROM readings) AS d")
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM readings"), 4 * 186);
    assert_eq!((t.blocks_verified, t.blocks_duplicate), (60, 60));
    assert_eq!(
        (t.gaps_open, t.forks, t.blocks_rejected),
        (0, 0, 0),
        "{t:?}"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM blocks WHERE NOT linked"), 0);
    let cov = s.ledger_coverage().unwrap();
    assert_eq!(cov.len(), 4, "one interval per meter: {cov:?}");
    assert!(cov.iter().all(|c| (c.first_seq, c.last_seq) == (0, 185)));
    let relays = s.relays().unwrap();
    assert!(relays
        .iter()
        .all(|r| r.gaps.is_empty() && r.linked_height == Some(29)));
    // The meters' newest readings and time queries see every reading once.
    let readings = s.meter_readings(3, 0, u64::MAX, 10_000).unwrap();
    assert_eq!(
        readings.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (0..186).collect::<Vec<_>>()
    );
    assert!(s
        .meters()
        .unwrap()
        .iter()
        .all(|m| m.readings == 186 && m.last.is_some_and(|l| l.seq == 185)));
    // Three writers appended to one log: 60 entries, no gap, one tree.
    assert_eq!(check_log(&mut *s, &db).len(), 60);
}

#[test]
fn database_urls_name_sqlite_files_or_postgres_servers() {
    assert_eq!(
        DbUrl::parse("data/x.db").unwrap(),
        DbUrl::Sqlite("data/x.db".into())
    );
    assert_eq!(
        DbUrl::parse("sqlite:///tmp/x.db").unwrap(),
        DbUrl::Sqlite("/tmp/x.db".into())
    );
    assert_eq!(
        DbUrl::parse("sqlite:x.db").unwrap(),
        DbUrl::Sqlite("x.db".into())
    );
    assert_eq!(
        DbUrl::parse("postgres://u:pw@h:5433/db").unwrap(),
        DbUrl::Postgres("postgres://u:pw@h:5433/db".into())
    );
    assert!(matches!(
        DbUrl::parse("postgresql://h/db"),
        Ok(DbUrl::Postgres(_))
    ));
    assert!(matches!(
        DbUrl::parse("mysql://h/db"),
        Err(StoreError::UnsupportedUrl(_))
    ));
    assert!(matches!(
        DbUrl::parse("postgres://h:notaport/db"),
        Err(StoreError::UnsupportedUrl(_))
    ));
    assert!(DbUrl::parse("").is_err());
    assert_eq!(
        postgres::redact("postgres://u:secret@h/db"),
        "postgres://u:***@h/db"
    );
}

#[test]
fn postgres_reader_refuses_a_database_without_the_schema() {
    let pg = gridpow_testkit::pg_harness::PgServer::shared().unwrap();
    let url = pg.create_database().unwrap();
    let err = PgStore::open_reader(&url).unwrap_err();
    assert!(err.to_string().contains("not a gridpow database"), "{err}");
}
