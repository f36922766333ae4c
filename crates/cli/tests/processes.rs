//! The deployment shape across real processes: `gridpow server`, `gridpow relay`
//! and `gridpow meters` as separate programs, meters on UDP air with loss, a
//! private Mosquitto with TLS and client certificates in between. Every
//! generated reading (the meters' ground-truth file) must be in the database
//! exactly once, bit for bit, and `verify-ledger` must pass, then fail naming
//! the block after one byte of the database is altered.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{export_bundle, free_udp_port, start_stack, write_meters_config};
use gridpow_testkit::{Mosquitto, MosquittoOptions};

type Key = (u32, u32, u32);

fn stored(db: &Path) -> BTreeMap<Key, (u64, i64, i64)> {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeMap::new();
    };
    let Ok(mut st) =
        c.prepare("SELECT meter_id, epoch, seq, ts_ms, power_dw, energy_mwh FROM readings")
    else {
        return BTreeMap::new();
    };
    let rows = st
        .query_map([], |r| {
            Ok((
                (
                    r.get::<_, u32>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                ),
                (
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ),
            ))
        })
        .unwrap();
    let mut out = BTreeMap::new();
    for r in rows {
        let (k, v) = r.unwrap();
        assert!(out.insert(k, v).is_none(), "reading {k:?} stored twice");
    }
    out
}

#[test]
fn separate_processes_over_udp_air_and_mosquitto_store_every_reading_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, _) = common::key_dir(root, 15);
    let broker = Mosquitto::start(
        &keys,
        &MosquittoOptions {
            require_certificate: true,
            max_queued_messages: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let udp = free_udp_port();
    let db = root.join("server.db");
    let truth = root.join("truth.jsonl");
    let k = keys.root().display().to_string();
    // Each service runs from its own bundle, exported with the CLI.
    let relay_bundle = root.join("relay-bundle").display().to_string();
    let server_bundle = root.join("server-bundle").display().to_string();
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &relay_bundle]);
    export_bundle(&["server", "--dir", &k, "--out", &server_bundle]);

    std::fs::write(
        root.join("server.toml"),
        format!("keys_dir = \"{server_bundle}\"\ndb = \"{}\"\nmin_difficulty = 10\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[http]\nlisten = \"127.0.0.1:0\"\n", db.display(), broker.port),
    )
    .unwrap();
    std::fs::write(
        root.join("relay.toml"),
        format!(
            "relay_id = 1\nkeys_dir = \"{relay_bundle}\"\ndata_dir = \"{}\"\ndifficulty = 10\n[block]\nmax_age_ms = 400\n[radio]\nkind = \"udp\"\nudp_listen = \"127.0.0.1:{udp}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            root.join("relay").display(),
            broker.port
        ),
    )
    .unwrap();
    write_meters_config(root, &k, udp, 0.5, 0.2, &truth);
    let (mut server, mut relay, mut meters) = start_stack(root, "info,rumqttd=off");
    std::thread::sleep(Duration::from_secs(8));
    // Graceful stop: the meters wait until their readings are acknowledged.
    meters.interrupt(Duration::from_secs(40));

    let truth_records = gridpow_meters::read_truth(&truth).unwrap();
    assert!(
        truth_records.len() >= 15 * 10,
        "only {} readings generated",
        truth_records.len()
    );
    let want: BTreeMap<Key, (u64, i64, i64)> = truth_records
        .iter()
        .map(|t| {
            (
                (t.meter_id, t.boot_epoch, t.seq),
                (
                    t.timestamp_ms,
                    i64::from(t.active_power_dw),
                    t.energy_mwh as i64,
                ),
            )
        })
        .collect();
    assert_eq!(
        want.len(),
        truth_records.len(),
        "the truth file repeats a reading"
    );
    let start = Instant::now();
    let mut got = stored(&db);
    while got.len() < want.len() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        got = stored(&db);
    }
    let logs = || common::logs(root, &["server.log", "relay.log", "meters.log"]);
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} readings missing, e.g. {missing:?}\n{}",
        want.len() - got.len().min(want.len()),
        want.len(),
        logs()
    );
    assert_eq!(
        got, want,
        "stored readings differ from what the meters generated"
    );
    relay.interrupt(Duration::from_secs(30));
    server.interrupt(Duration::from_secs(30));

    let verify = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gridpow"))
            .args(args)
            .output()
            .unwrap()
    };
    let db_s = db.to_string_lossy().into_owned();
    let k_s = keys.root().to_string_lossy().into_owned();
    let o = verify(&["verify-ledger", "--db", &db_s, "--keys", &k_s]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        // One byte of one stored block's raw bytes (inside a leaf, past header and signature).
        let (id, mut raw): (i64, Vec<u8>) = c
            .query_row(
                "SELECT id, raw FROM blocks ORDER BY height LIMIT 1 OFFSET 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let at = raw.len() - 5;
        raw[at] ^= 0x01;
        c.execute(
            "UPDATE blocks SET raw = ?1 WHERE id = ?2",
            rusqlite::params![raw, id],
        )
        .unwrap();
    }
    let o = verify(&["verify-ledger", "--db", &db_s, "--keys", &k_s]);
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("height 1"),
        "the report must name the altered block: {t}"
    );
}
