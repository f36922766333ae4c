//! `gridpow verify-ledger` exit codes: 0 the ledger verifies, 1 it is invalid,
//! 2 it could not be checked (a missing database or keys directory must never
//! read as tampering). The ledger here is an empty gridpow database, so no
//! demo has to run: a reading row outside any block is the tampering.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::process::Output;

mod common;

use common::{gridpow, text};

/// A key directory and an empty (migrated) gridpow SQLite database in `dir`.
fn site(dir: &Path) -> (String, String) {
    let keys = dir.join("keys");
    let k = keys.to_str().unwrap().to_string();
    let o = gridpow(&["keys", "init", "--dir", &k]);
    assert!(o.status.success(), "{}", text(&o));
    let db = dir.join("server.db");
    drop(gridpow_store::SqliteStore::open(&db, gridpow_store::StoreOptions::default()).unwrap());
    (db.to_str().unwrap().to_string(), k)
}

fn verify(db: &str, keys: &str) -> Output {
    gridpow(&["verify-ledger", "--db", db, "--keys", keys])
}

fn assert_not_a_verdict(o: &Output) {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    let t = text(o);
    assert!(t.contains("NOT a verdict on the ledger"), "{t}");
    assert!(!t.contains("LEDGER INVALID"), "{t}");
}

#[test]
fn a_clean_ledger_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = site(dir.path());
    let o = verify(&db, &keys);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("ledger OK"), "{}", text(&o));
}

#[test]
fn a_tampered_ledger_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (db, keys) = site(dir.path());
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute(
        "INSERT INTO readings (id, block_id, leaf, meter_id, epoch, seq, ts_ms, voltage_cv, current_ma, power_dw, energy_mwh, freq_mhz, pf_e4, flags) VALUES (1, 1, 0, 1, 1, 1, 0, 23000, 0, 0, 0, 50000, 10000, 0)",
        [],
    )
    .unwrap();
    drop(c);
    let o = verify(&db, &keys);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("LEDGER INVALID"), "{}", text(&o));
}

#[test]
fn a_missing_database_exits_2_and_says_it_is_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keys) = site(dir.path());
    let missing = dir.path().join("no-such.db");
    let o = verify(missing.to_str().unwrap(), &keys);
    assert_not_a_verdict(&o);
    assert!(
        text(&o).contains("cannot open the database"),
        "{}",
        text(&o)
    );
    // Nothing was created by looking.
    assert!(!missing.exists());
}

#[test]
fn a_file_that_is_not_a_gridpow_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keys) = site(dir.path());
    let junk = dir.path().join("notes.txt");
    std::fs::write(
        &junk,
        "not a database, just some text that is long enough\n".repeat(20),
    )
    .unwrap();
    assert_not_a_verdict(&verify(junk.to_str().unwrap(), &keys));
    let empty = dir.path().join("empty.db");
    drop(rusqlite::Connection::open(&empty).unwrap());
    assert_not_a_verdict(&verify(empty.to_str().unwrap(), &keys));
}

#[test]
fn a_missing_keys_directory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = site(dir.path());
    let o = verify(&db, dir.path().join("no-keys").to_str().unwrap());
    assert_not_a_verdict(&o);
    assert!(text(&o).contains("cannot load the keys"), "{}", text(&o));
}

#[test]
fn a_missing_data_dir_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("nowhere");
    assert_not_a_verdict(&gridpow(&[
        "verify-ledger",
        "--data-dir",
        d.to_str().unwrap(),
    ]));
}

#[test]
fn the_readmes_verify_ledger_reads_the_database_and_keys_the_example_server_config_writes() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
    let line = readme
        .lines()
        .find(|l| l.starts_with("gridpow verify-ledger --db"))
        .expect("the README shows verify-ledger --db");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| {
        let i = words.iter().position(|w| *w == flag).unwrap();
        words[i + 1]
    };
    let o = gridpow(&["example-config", "server"]);
    assert!(o.status.success(), "{}", text(&o));
    let cfg: toml::Value = toml::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(Some(after("--db")), cfg["db"].as_str(), "{line}");
    assert_eq!(Some(after("--keys")), cfg["keys_dir"].as_str(), "{line}");
}
