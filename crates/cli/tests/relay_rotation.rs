//! Replacing a relay's signing key under load (issue 16, rotation): the whole
//! stack runs (`gridpow server`, `gridpow relay`, `gridpow meters` on a lossy
//! UDP air, a private Mosquitto with mutual TLS); the relay is stopped, its
//! key replaced from its next height with `gridpow keys rotate-relay`, its
//! bundle exported again, and it is started again while the meters keep
//! measuring. The running server learns the new key from relays.toml by
//! itself. Every generated reading must be stored exactly once, the chain
//! must span the rotation height, and `verify-ledger` must verify the old
//! blocks with the old key and the new ones with the new key.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

mod common;

use common::{
    export_bundle, free_udp_port, gridpow, logs, spawn, text, write_meters_config,
    write_server_config,
};

/// The stored block heights.
fn heights(db: &Path) -> BTreeSet<u64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c.prepare("SELECT height FROM blocks").unwrap();
    let rows = st
        .query_map([], |r| r.get::<_, i64>(0).map(|h| h as u64))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[test]
fn a_relay_key_replaced_at_its_next_height_loses_no_reading_and_the_ledger_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, k) = common::key_dir(root, 6);
    let broker = common::site_broker(&keys);
    let server_bundle = root.join("server-bundle").display().to_string();
    export_bundle(&["server", "--dir", &k, "--out", &server_bundle]);
    let bundle = |n: u32| {
        let out = root.join(format!("relay-bundle-{n}")).display().to_string();
        export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &out]);
        out
    };
    let db = root.join("server.db");
    write_server_config(root, &server_bundle, &db, 8, broker.port, 0);
    let udp = free_udp_port();
    common::write_relay_1_config(root, &bundle(1), udp, broker.port);
    let truth = root.join("truth.jsonl");
    write_meters_config(root, &k, udp, 0.25, 0.1, &truth);
    let cfg = |n: &str| root.join(n).to_string_lossy().into_owned();
    let mut server = spawn(
        "server",
        &["server", "--config", &cfg("server.toml")],
        &root.join("server.log"),
    );
    let mut relay = spawn(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &root.join("relay-before.log"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut meters = spawn(
        "meters",
        &["meters", "--config", &cfg("meters.toml")],
        &root.join("meters.log"),
    );
    std::thread::sleep(Duration::from_secs(4));

    // Stop the relay; its stop line names its chain head.
    relay.interrupt(Duration::from_secs(30));
    let before = std::fs::read_to_string(root.join("relay-before.log")).unwrap();
    let head: u64 = before
        .lines()
        .rfind(|l| l.contains("stopped:"))
        .and_then(|l| l.split("chain at height ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no chain head in the relay's stop line:\n{before}"));
    let from = head + 1;
    let o = gridpow(&[
        "keys",
        "rotate-relay",
        "--dir",
        &k,
        "--id",
        "1",
        "--from-height",
        &from.to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("signs heights from {from}")),
        "{}",
        text(&o)
    );
    // The operator hands out the new relays.toml and the relay's new bundle.
    std::fs::copy(
        keys.relays_path(),
        Path::new(&server_bundle).join("relays.toml"),
    )
    .unwrap();
    common::write_relay_1_config(root, &bundle(2), udp, broker.port);
    let mut relay = spawn(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &root.join("relay-after.log"),
    );
    std::thread::sleep(Duration::from_secs(4));
    meters.interrupt(Duration::from_secs(40));

    let want = common::truth_keys(&truth);
    assert!(
        want.len() >= 6 * 20,
        "only {} readings generated",
        want.len()
    );
    let got = common::stored_keys_when(&db, want.len(), Duration::from_secs(60));
    let logs = || {
        logs(
            root,
            &[
                "server.log",
                "relay-before.log",
                "relay-after.log",
                "meters.log",
            ],
        )
    };
    common::assert_stored_exactly(&want, &got, logs);
    let heights = heights(&db);
    let below = heights.range(..from).count() as u64;
    let above = heights.range(from..).count();
    assert_eq!(
        below, from,
        "every block below the rotation height is stored"
    );
    assert!(above > 0, "no block signed with the new key\n{}", logs());
    relay.interrupt(Duration::from_secs(30));
    server.interrupt(Duration::from_secs(30));
    let server_log = std::fs::read_to_string(root.join("server.log")).unwrap();
    assert!(
        server_log.contains("Relay registry reloaded"),
        "the server learnt the new key from relays.toml:\n{server_log}"
    );
    let o = gridpow(&["verify-ledger", "--db", &db.to_string_lossy(), "--keys", &k]);
    assert!(o.status.success(), "{}", text(&o));
    println!(
        "relay key rotated at height {from}: {} readings generated, {} stored once, {below} blocks under the old key, {above} under the new",
        want.len(),
        got.len()
    );
}
