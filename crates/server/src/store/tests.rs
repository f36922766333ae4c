//! Store behaviour on synthetic verified blocks (the store trusts its input:
//! verification is tested in `verify` and end to end in `tests/`).

use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;

use super::*;
use crate::plausibility::AlertKind;
use crate::verify::{ReadingRow, RejectKind, VerifiedBlockData};

const T0: u64 = 1_700_000_000_000;

fn reading(meter: u32, seq: u32) -> Reading {
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
fn block(
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
        hash: header.hash(),
        header,
        raw: header.to_bytes().to_vec(),
        readings,
    }
}

fn ingest(b: &VerifiedBlockData) -> Ingest {
    Ingest::Block {
        arrival: Arrival {
            received_ms: T0,
            topic: "t".into(),
        },
        block: b.clone(),
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("ledger.db")).unwrap();
    (dir, s)
}

fn count(s: &SqliteStore, sql: &str) -> i64 {
    s.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn block_delivered_twice_is_stored_once_and_reported_already_stored() {
    let (_d, mut s) = store();
    let b0 = block(1, 0, [0; 32], &[(7, 1, 0..6)]);
    let r = s.commit(&[ingest(&b0)], T0).unwrap();
    let Outcome::Stored {
        block_id,
        new_readings: 6,
        duplicate_readings: 0,
        linked: true,
        closed_gap: false,
    } = r.outcomes[0]
    else {
        panic!("{:?}", r.outcomes)
    };
    let r = s.commit(&[ingest(&b0), ingest(&b0)], T0).unwrap();
    assert_eq!(
        r.outcomes,
        vec![
            Outcome::AlreadyStored { block_id },
            Outcome::AlreadyStored { block_id }
        ]
    );
    assert_eq!(count(&s, "SELECT COUNT(*) FROM blocks"), 1);
    assert_eq!(count(&s, "SELECT COUNT(*) FROM readings"), 6);
    assert_eq!(r.totals.blocks_duplicate, 2);
    assert_eq!(r.totals.readings_stored, 6);
}

#[test]
fn readings_carried_by_two_frames_are_stored_once_even_out_of_order() {
    let (_d, mut s) = store();
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
    let distinct = count(
        &s,
        "SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, epoch, seq FROM readings)",
    );
    assert_eq!(count(&s, "SELECT COUNT(*) FROM readings"), distinct);
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

#[test]
fn block_before_its_parent_opens_a_gap_that_the_parent_closes() {
    let (_d, mut s) = store();
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
    assert_eq!(count(&s, "SELECT COUNT(*) FROM blocks WHERE linked = 0"), 0);
    let gap = s
        .alerts(10)
        .unwrap()
        .into_iter()
        .find(|a| a.kind == "gap")
        .unwrap();
    assert_eq!(gap.cleared_ms, Some(T0 + 5));
    assert_eq!(s.relays().unwrap()[0].linked_height, Some(2));
}

#[test]
fn second_block_at_the_same_height_is_quarantined_as_a_fork() {
    let (_d, mut s) = store();
    let b0 = block(2, 0, [0; 32], &[(1, 1, 0..2)]);
    let b1 = block(2, 1, b0.hash, &[(1, 1, 2..4)]);
    let mut other = block(2, 1, b0.hash, &[(1, 1, 2..5)]);
    other.header.time_ms += 1;
    other.hash = other.header.hash();
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

#[test]
fn genesis_with_a_previous_hash_is_quarantined() {
    let (_d, mut s) = store();
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

#[test]
fn rejected_payloads_are_quarantined_with_reason_and_raw_bytes_and_counted() {
    let (_d, mut s) = store();
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
    let raw: Vec<u8> = s
        .connection()
        .query_row("SELECT raw FROM quarantine", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, vec![0xde, 0xad, 0xbe, 0xef]);
}

#[test]
fn implausible_readings_raise_one_counted_alert_per_meter_and_kind() {
    let (_d, mut s) = store();
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

#[test]
fn silent_meters_are_reported_once_and_cleared_when_heard_again() {
    let (_d, mut s) = store();
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

#[test]
fn time_range_query_returns_one_meters_readings_in_time_order() {
    let (_d, mut s) = store();
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

#[test]
fn totals_and_chain_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("ledger.db");
    let b0 = block(1, 0, [0; 32], &[(1, 1, 0..3)]);
    let b1 = block(1, 1, b0.hash, &[(1, 1, 3..6)]);
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.commit(&[ingest(&b0)], T0).unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
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
    let mut reader = SqliteStore::open_reader(&path).unwrap();
    assert_eq!(reader.totals().unwrap(), r.totals);
    assert!(
        reader.commit(&[ingest(&b1)], T0).is_err(),
        "a reader cannot write"
    );
}

#[test]
fn raw_insert_writes_the_rows_commit_would_write() {
    let (_d, mut s) = store();
    let b = block(1, 0, [0; 32], &[(1, 1, 0..6), (2, 1, 0..6)]);
    assert_eq!(s.insert_readings_raw(1, &b.readings).unwrap(), 12);
    let raw = s.ledger_readings(1, 12).unwrap();
    let (_d2, mut t) = store();
    t.commit(&[ingest(&b)], T0).unwrap();
    assert_eq!(t.ledger_readings(1, 12).unwrap(), raw);
}

#[test]
fn database_urls_name_sqlite_files_and_refuse_other_backends() {
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
    assert!(matches!(
        DbUrl::parse("postgres://h/db"),
        Err(StoreError::UnsupportedUrl(_))
    ));
    assert!(DbUrl::parse("").is_err());
}
