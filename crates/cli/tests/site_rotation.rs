//! Rotating the site secret under load (issue 16, rotation): the whole stack
//! runs on key id 1; `gridpow keys rotate-site` adds key id 2, one meter is
//! re-provisioned with it and a new meter added. The relay, restarted with a
//! new bundle (every meter's hop keys under both key ids), and then the grid
//! server, restarted with the new registry, both keep taking the
//! re-provisioned meter's frames under key id 1 (it is not flashed yet): the
//! relay refuses no frame. Then the meters get their new keys. Every
//! generated reading is stored exactly once, the database knows which key id
//! each meter last sent with, and `gridpow keys retire-site` refuses to
//! retire a key id still in use unless forced. Forced while three meters
//! still send under it, and the relay's bundle exported again in place: the
//! running relay drops the key id within seconds and refuses their frames,
//! and stores the others' as before.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

mod common;

use common::{
    export_bundle, free_udp_port, gridpow, logs, spawn, text, write_meters_config,
    write_server_config,
};
use gridpow_testkit::Daemon;

type Key = (u32, u32, u32);

/// The key id each meter's frames last came under, as the server recorded it.
fn last_key_ids(db: &Path) -> BTreeMap<u32, u8> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT meter_id, last_key_id FROM relay_meters")
        .unwrap();
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

fn start(root: &Path, name: &str, log: &str) -> Daemon {
    let config = root
        .join(format!("{name}.toml"))
        .to_string_lossy()
        .into_owned();
    spawn(name, &[name, "--config", &config], &root.join(log))
}

#[test]
fn a_new_site_key_id_is_taken_up_without_losing_a_reading_and_the_old_one_is_retired_only_when_unused(
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, k) = common::key_dir(root, 4);
    let broker = common::site_broker(&keys);
    let server_bundle = root.join("server-bundle");
    let sb = server_bundle.display().to_string();
    export_bundle(&["server", "--dir", &k, "--out", &sb]);
    let db = root.join("server.db");
    write_server_config(root, &sb, &db, 8, broker.port, 0);
    let relay_bundle = |n: u32| {
        let out = root.join(format!("relay-bundle-{n}")).display().to_string();
        export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &out]);
        out
    };
    let udp = free_udp_port();
    common::write_relay_1_config(root, &relay_bundle(1), udp, broker.port);
    let truth = root.join("truth.jsonl");
    write_meters_config(root, &k, udp, 0.25, 0.05, &truth);
    let mut server = start(root, "server", "server-1.log");
    let mut relay = start(root, "relay", "relay-1.log");
    std::thread::sleep(Duration::from_secs(1));
    let mut meters = start(root, "meters", "meters-1.log");
    std::thread::sleep(Duration::from_secs(3));

    // Key id 2; meter 3 re-provisioned with it, meter 5 new.
    let o = gridpow(&["keys", "rotate-site", "--dir", &k]);
    assert!(
        o.status.success() && text(&o).contains("site key id 2 added"),
        "{}",
        text(&o)
    );
    for id in ["3", "5"] {
        let o = gridpow(&["keys", "add-meter", "--dir", &k, "--id", id]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(keys.meters_with_key(1).unwrap(), vec![1, 2, 4]);
    assert_eq!(keys.meters_with_key(2).unwrap(), vec![3, 5]);
    // The relay gets its new bundle and restarts while meter 3, not flashed
    // yet, still sends under key id 1; it logs every frame it refuses.
    relay.interrupt(Duration::from_secs(30));
    let bundle_2 = relay_bundle(2);
    common::write_relay_1_config(root, &bundle_2, udp, broker.port);
    let relay_config = root.join("relay.toml").to_string_lossy().into_owned();
    let mut relay = common::spawn_logging(
        "relay",
        &["relay", "--config", &relay_config],
        &root.join("relay-2.log"),
        "info,rumqttd=off,gridpow_relay::ingest=debug",
    );
    std::thread::sleep(Duration::from_secs(3));
    // The server gets the new secrets and registry (a fresh bundle's files)
    // and restarts; meter 3 still sends under key id 1.
    for f in ["site.toml", "meters.toml"] {
        std::fs::copy(keys.root().join(f), server_bundle.join(f)).unwrap();
    }
    server.interrupt(Duration::from_secs(30));
    let mut server = start(root, "server", "server-2.log");
    std::thread::sleep(Duration::from_secs(3));
    // Now the meters are flashed (the fleet restarts with the registry's keys).
    meters.interrupt(Duration::from_secs(40));
    let mut meters = start(root, "meters", "meters-2.log");
    std::thread::sleep(Duration::from_secs(3));
    meters.interrupt(Duration::from_secs(40));

    let want = common::truth_keys(&truth);
    assert!(want.iter().any(|k| k.0 == 5), "meter 5 made no reading");
    let got = common::stored_keys_when(&db, want.len(), Duration::from_secs(60));
    common::assert_stored_exactly(&want, &got, || {
        logs(
            root,
            &[
                "server-1.log",
                "server-2.log",
                "relay-1.log",
                "relay-2.log",
                "meters-1.log",
                "meters-2.log",
            ],
        )
    });
    let relay_2 = std::fs::read_to_string(root.join("relay-2.log")).unwrap();
    assert!(
        relay_2.contains("relay 1") && !relay_2.contains("frame refused"),
        "the relay with both key ids refused a frame:\n{relay_2}"
    );
    let server_2 = std::fs::read_to_string(root.join("server-2.log")).unwrap();
    assert!(
        server_2.contains("Subscribed") && !server_2.contains("Payload refused"),
        "the restarted server refused a block:\n{server_2}"
    );
    assert_eq!(
        last_key_ids(&db),
        BTreeMap::from([(1, 1), (2, 1), (3, 2), (4, 1), (5, 2)]),
        "key ids the meters last sent with"
    );
    // Checked while key id 1 is listed (its frames' tags need it).
    let db_s = db.to_string_lossy().into_owned();
    let o = gridpow(&["verify-ledger", "--db", &db_s, "--keys", &k]);
    assert!(o.status.success(), "{}", text(&o));

    // Retiring: never the current key id; not key id 1 while in use.
    let retire = |args: &[&str]| {
        let mut a = vec!["keys", "retire-site", "--dir", &k];
        a.extend_from_slice(args);
        gridpow(&a)
    };
    let o = retire(&["--key-id", "2"]);
    assert!(
        !o.status.success() && text(&o).contains("current"),
        "{}",
        text(&o)
    );
    let o = retire(&["--key-id", "1"]);
    assert!(
        !o.status.success() && text(&o).contains("--db"),
        "{}",
        text(&o)
    );
    let o = retire(&["--key-id", "1", "--db", &db_s]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("3 registered meters are provisioned with key id 1 (e.g. 1, 2, 4)")
            && t.contains("3 meters sent frames under key id 1 in the last 30 days (e.g. 1, 2, 4)"),
        "{t}"
    );
    let site_before = std::fs::read_to_string(keys.site_path()).unwrap();
    assert_eq!(site_before.matches("[[key]]").count(), 2, "nothing retired");
    // The fleet runs again, meters 1, 2 and 4 still on key id 1, when key id
    // 1 is retired by force.
    let mut meters = start(root, "meters", "meters-3.log");
    std::thread::sleep(Duration::from_secs(2));
    let o = retire(&["--key-id", "1", "--db", &db_s, "--force"]);
    assert!(
        o.status.success() && text(&o).contains("warning: retiring anyway"),
        "{}",
        text(&o)
    );
    assert_eq!(keys.site().unwrap().key_ids().collect::<Vec<_>>(), vec![2]);

    // Meters 1, 2 and 4 re-provisioned in the registry (not flashed yet),
    // and the relay's bundle exported again, in place, while it runs: within
    // seconds it drops key id 1 and refuses their frames; meters 3 and 5
    // are stored as before.
    let o = gridpow(&["keys", "add-meters", "--dir", &k, "--range", "1-2"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gridpow(&["keys", "add-meter", "--dir", &k, "--id", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &bundle_2]);
    std::thread::sleep(Duration::from_secs(10));
    // Meters 1, 2 and 4 wait up to 30 s for ACKs that do not come.
    meters.interrupt(Duration::from_secs(60));
    let after: BTreeSet<Key> = common::truth_keys(&truth)
        .difference(&want)
        .copied()
        .collect();
    let (kept, refused): (BTreeSet<Key>, BTreeSet<Key>) =
        after.iter().partition(|k| k.0 == 3 || k.0 == 5);
    assert!(
        !kept.is_empty() && !refused.is_empty(),
        "no new readings: {after:?}"
    );
    let expected: BTreeSet<Key> = want.union(&kept).copied().collect();
    let got_3 =
        common::stored_keys_until(&db, Duration::from_secs(60), |got| expected.is_subset(got));
    let relay_2 = std::fs::read_to_string(root.join("relay-2.log")).unwrap();
    let lost_after_drop = refused.difference(&got_3).count();
    assert!(
        expected.is_subset(&got_3) && lost_after_drop > 0,
        "after key id 1 was dropped: {} of meters 3 and 5's readings missing, {lost_after_drop} \
         of meters 1, 2 and 4's refused\n{relay_2}",
        expected.difference(&got_3).count(),
    );
    assert!(
        relay_2.contains("the bundle's files changed") && relay_2.contains("unknown key id"),
        "the relay did not take up its new bundle, or refused nothing:\n{relay_2}"
    );
    relay.interrupt(Duration::from_secs(30));
    server.interrupt(Duration::from_secs(30));
    println!(
        "site key rotated under load: {} readings generated, {} stored once; key id 1 retired only \
         with --force; after the relay's bundle was replaced in place, {lost_after_drop} of {} \
         readings under the retired key id refused and all {} under the current one stored",
        want.len(),
        got.len(),
        refused.len(),
        kept.len()
    );
}
