//! A relay key in hostile hands, against the real verifier (real signed PoW
//! blocks of real sealed frames) and the real store, on SQLite and on a
//! private PostgreSQL: a block signed far ahead of the relay's chain is
//! refused and the genuine chain goes on; a validly signed fork is kept as
//! evidence, raises a critical alert and makes the ledger check fail naming
//! the relay and height; an oversize payload is refused and only its first
//! bytes are kept.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::Site;
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::{verify_payload, MAX_BLOCK_BYTES};
use gridpow_server::{verify_ledger, RelayForks};
use gridpow_store::RejectKind;
use gridpow_store::{Arrival, Ingest, Outcome, PgStore, QuarantineItem, SqliteStore, Store};
use gridpow_testkit::pg_harness::PgServer;

/// A fresh database of one backend: the writer and the URL `verify_ledger` takes.
struct Db {
    store: Box<dyn Store>,
    url: String,
    _pg: Option<Arc<PgServer>>,
}

impl Db {
    fn sqlite(site: &Site) -> Db {
        Db {
            store: Box::new(
                SqliteStore::open(&site.db_path(), gridpow_store::StoreOptions::default()).unwrap(),
            ),
            url: site.db_path().display().to_string(),
            _pg: None,
        }
    }

    fn postgres() -> Db {
        let pg = PgServer::shared()
            .unwrap_or_else(|e| panic!("a private PostgreSQL is needed for this test: {e}"));
        let url = pg.create_database().unwrap();
        Db {
            store: Box::new(PgStore::open(&url, gridpow_store::StoreOptions::default()).unwrap()),
            url,
            _pg: Some(pg),
        }
    }

    /// Verifies `payload` as the server does and commits the result alone.
    fn deliver(&mut self, keys: &mut Keyring, payload: &[u8], now_ms: u64) -> Outcome {
        let arrival = Arrival {
            received_ms: now_ms,
            topic: "gridpow/v1/relays/1/blocks".into(),
        };
        let item = match verify_payload(keys, 4, payload) {
            Ok(block) => Ingest::Block { arrival, block },
            Err(r) => Ingest::Quarantine(QuarantineItem {
                arrival,
                kind: r.kind,
                detail: r.detail,
                header: r.header,
                raw: payload.to_vec(),
            }),
        };
        let mut r = self.store.commit(&[item], now_ms).unwrap();
        r.outcomes.remove(0)
    }
}

fn block_far_ahead_is_refused_and_the_genuine_chain_continues(mut db: Db, site: &Site) {
    let mut keys = Keyring::load(&site.keys).unwrap();
    let (b0, h0) = site.block(1, 0, [0; 32], 4, &[site.frame(1, 1, 0, 0, 3)]);
    let (b1, h1) = site.block(1, 1, h0, 4, &[site.frame(1, 1, 1, 3, 3)]);
    for b in [&b0, &b1] {
        assert!(matches!(
            db.deliver(&mut keys, b, site.t0),
            Outcome::Stored { linked: true, .. }
        ));
    }
    // Validly signed by relay 1's key, PoW solved, at height 10^12.
    let (far, _) = site.block(1, 1_000_000_000_000, h1, 4, &[site.frame(1, 1, 2, 6, 3)]);
    let outcome = db.deliver(&mut keys, &far, site.t0);
    assert!(
        matches!(
            outcome,
            Outcome::Quarantined {
                kind: RejectKind::TooFarAhead,
                ..
            }
        ),
        "{outcome:?}"
    );
    // The relay's genuine blocks after it are stored, linked, with their readings.
    let (b2, h2) = site.block(1, 2, h1, 4, &[site.frame(1, 1, 2, 6, 3)]);
    let (b3, _) = site.block(1, 3, h2, 4, &[site.frame(1, 1, 3, 9, 3)]);
    for b in [&b2, &b3] {
        let o = db.deliver(&mut keys, b, site.t0);
        assert!(
            matches!(
                o,
                Outcome::Stored {
                    linked: true,
                    new_readings: 3,
                    ..
                }
            ),
            "{o:?}"
        );
    }
    let relay = &db.store.relays().unwrap()[0];
    assert_eq!((relay.head_height, relay.linked_height), (Some(3), Some(3)));
    assert!(relay.gaps.is_empty(), "{:?}", relay.gaps);
    let report = verify_ledger(&db.url, &site.keys).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.blocks, report.readings), (4, 12));
    assert!(report.gaps.is_empty());
}

fn validly_signed_fork_is_kept_alerted_and_fails_the_ledger_check(mut db: Db, site: &Site) {
    let mut keys = Keyring::load(&site.keys).unwrap();
    let (b0, h0) = site.block(1, 0, [0; 32], 4, &[site.frame(1, 1, 0, 0, 3)]);
    let (b1, _) = site.block(1, 1, h0, 4, &[site.frame(1, 1, 1, 3, 3)]);
    let (fork, _) = site.block(1, 1, h0, 4, &[site.frame(1, 1, 2, 6, 3)]);
    db.deliver(&mut keys, &b0, site.t0);
    db.deliver(&mut keys, &b1, site.t0);
    let before = verify_ledger(&db.url, &site.keys).unwrap();
    assert!(before.is_ok() && before.forks.is_empty(), "{before}");
    let outcome = db.deliver(&mut keys, &fork, site.t0);
    assert!(
        matches!(
            outcome,
            Outcome::Quarantined {
                kind: RejectKind::Fork,
                ..
            }
        ),
        "{outcome:?}"
    );
    // Both kept: the stored block and the refused one's bytes.
    assert_eq!(db.store.blocks(Some(1), 10).unwrap().len(), 2);
    let q = &db.store.quarantine(5).unwrap()[0];
    assert_eq!(
        (q.kind.as_str(), q.relay_id, q.height, q.bytes, q.kept_bytes),
        (
            "fork",
            Some(1),
            Some(1),
            fork.len() as u64,
            fork.len() as u64
        )
    );
    // A critical alert names the relay and the height.
    let alerts = db.store.alerts(10).unwrap();
    let alert = alerts.iter().find(|a| a.kind == "fork").unwrap();
    assert_eq!(
        (alert.severity, alert.relay_id, alert.subject.as_str()),
        ("critical", Some(1), "relay:1:height:1")
    );
    // Every stored block checks out, but the ledger is not OK: relay 1's key signed two histories.
    let report = verify_ledger(&db.url, &site.keys).unwrap();
    assert!(!report.is_ok());
    assert_eq!(
        report.forks,
        [RelayForks {
            relay_id: 1,
            heights: vec![1]
        }]
    );
    let text = report.to_string();
    assert!(
        text.starts_with("NOT OK") && text.contains("relay 1 at height 1"),
        "{text}"
    );
}

fn oversize_payload_is_refused_and_only_its_first_bytes_are_kept(mut db: Db, site: &Site) {
    let mut keys = Keyring::load(&site.keys).unwrap();
    let (b0, _) = site.block(1, 0, [0; 32], 4, &[site.frame(1, 1, 0, 0, 3)]);
    let mut huge = b0.clone();
    huge.resize(MAX_BLOCK_BYTES + 1, 0xab);
    let outcome = db.deliver(&mut keys, &huge, site.t0);
    assert!(
        matches!(
            outcome,
            Outcome::Quarantined {
                kind: RejectKind::Oversize,
                ..
            }
        ),
        "{outcome:?}"
    );
    let q = &db.store.quarantine(1).unwrap()[0];
    assert_eq!(
        (q.kind.as_str(), q.bytes, q.kept_bytes, q.relay_id),
        ("oversize", MAX_BLOCK_BYTES as u64 + 1, 64 << 10, Some(1))
    );
    // The largest block the protocol allows is not oversize.
    assert_eq!(MAX_BLOCK_BYTES, 65_535 * (2 + 244) + 164);
    assert_eq!(db.store.blocks(None, 10).unwrap().len(), 0);
}

#[test]
fn block_signed_at_height_10_12_is_refused_and_the_genuine_chain_continues_on_sqlite() {
    let site = Site::new(&[1], &[1]);
    block_far_ahead_is_refused_and_the_genuine_chain_continues(Db::sqlite(&site), &site);
}

#[test]
fn block_signed_at_height_10_12_is_refused_and_the_genuine_chain_continues_on_postgres() {
    let site = Site::new(&[1], &[1]);
    block_far_ahead_is_refused_and_the_genuine_chain_continues(Db::postgres(), &site);
}

#[test]
fn validly_signed_fork_is_kept_raises_a_critical_alert_and_fails_verify_ledger_on_sqlite() {
    let site = Site::new(&[1], &[1]);
    validly_signed_fork_is_kept_alerted_and_fails_the_ledger_check(Db::sqlite(&site), &site);
}

#[test]
fn validly_signed_fork_is_kept_raises_a_critical_alert_and_fails_verify_ledger_on_postgres() {
    let site = Site::new(&[1], &[1]);
    validly_signed_fork_is_kept_alerted_and_fails_the_ledger_check(Db::postgres(), &site);
}

#[test]
fn oversize_payload_is_refused_and_only_its_first_64_kib_are_kept_on_sqlite() {
    let site = Site::new(&[1], &[1]);
    oversize_payload_is_refused_and_only_its_first_bytes_are_kept(Db::sqlite(&site), &site);
}

#[test]
fn oversize_payload_is_refused_and_only_its_first_64_kib_are_kept_on_postgres() {
    let site = Site::new(&[1], &[1]);
    oversize_payload_is_refused_and_only_its_first_bytes_are_kept(Db::postgres(), &site);
}

/// Commits 12 000 refused 1 KiB payloads naming relay 1 (unauthenticated, so
/// they share one allowance) in batches of 256, as the writer would, and
/// prints the rate; the quarantine keeps `max_rows_per_relay` (10 000) rows.
fn flood_of_junk_stays_within_the_quarantine_allowance(mut db: Db, site: &Site) {
    let (b0, _) = site.block(1, 0, [0; 32], 4, &[site.frame(1, 1, 0, 0, 3)]);
    let mut junk = b0.clone();
    junk.resize(1024, 0);
    // Relay 1's header, then bytes that frame no leaf: refused as malformed.
    let mut keys = Keyring::load(&site.keys).unwrap();
    let rej = verify_payload(&mut keys, 4, &junk).unwrap_err();
    assert_eq!(rej.kind, RejectKind::Malformed);
    assert_eq!(rej.header.map(|h| h.relay_id), Some(1));
    let item = Ingest::Quarantine(QuarantineItem {
        arrival: Arrival::default(),
        kind: rej.kind,
        detail: rej.detail,
        header: rej.header,
        raw: junk,
    });
    let batch: Vec<Ingest> = (0..256).map(|_| item.clone()).collect();
    let started = std::time::Instant::now();
    let (mut sent, mut dropped) = (0u64, 0u64);
    while sent < 12_000 {
        let r = db.store.commit(&batch, site.t0).unwrap();
        sent += batch.len() as u64;
        dropped += r.quarantine_dropped;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{sent} refused 1 KiB payloads committed in {secs:.2} s ({:.0}/s); {dropped} beyond the allowance not kept",
        sent as f64 / secs
    );
    assert_eq!(sent - dropped, 10_000);
    let totals = db.store.totals().unwrap();
    assert_eq!(totals.blocks_rejected, sent, "every refusal is counted");
    assert_eq!(db.store.quarantine(20_000).unwrap().len(), 10_000);
}

#[test]
fn flood_of_junk_naming_a_relay_keeps_at_most_its_allowance_on_sqlite() {
    let site = Site::new(&[1], &[1]);
    flood_of_junk_stays_within_the_quarantine_allowance(Db::sqlite(&site), &site);
}

#[test]
fn flood_of_junk_naming_a_relay_keeps_at_most_its_allowance_on_postgres() {
    let site = Site::new(&[1], &[1]);
    flood_of_junk_stays_within_the_quarantine_allowance(Db::postgres(), &site);
}
