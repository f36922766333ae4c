//! Several relays hearing one meter (issue 16, spec §5 and §9.5): two
//! `gridpow relay` processes on one UDP air, a private Mosquitto with mutual
//! TLS, `gridpow server` on SQLite. Meters 1–4 are in relay 1's cell only,
//! 9–12 in relay 2's only, 5–8 at the edge of both: every frame they send
//! reaches both relays, both ACK it and put it in their blocks. Every
//! generated reading must be stored exactly once, bit for bit; the relays'
//! coverage (`/api/v1/relays`) must show who carried what; `verify-ledger`
//! must pass.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::{
    create_token, export_bundle, free_udp_port, gridpow, logs, spawn, text, write_relay_config,
    write_server_config, RelaySetup,
};
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_testkit::{Daemon, Mosquitto, MosquittoOptions};

type Key = (u32, u32, u32);

/// Stored readings by (meter, epoch, seq): (time, power, energy, relay that stored it).
fn stored(db: &Path) -> BTreeMap<Key, (u64, i64, i64, u32)> {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return BTreeMap::new();
    };
    let Ok(mut st) = c.prepare(
        "SELECT r.meter_id, r.epoch, r.seq, r.ts_ms, r.power_dw, r.energy_mwh, b.relay_id \
         FROM readings r JOIN blocks b ON b.id = r.block_id",
    ) else {
        return BTreeMap::new();
    };
    let rows = st
        .query_map([], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                (r.get::<_, i64>(3)? as u64, r.get(4)?, r.get(5)?, r.get(6)?),
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

/// The body of `GET path` on the server's HTTP port, with a viewer token.
fn http_body(port: u16, token: &str, path: &str) -> String {
    let out = common::http_get(port, token, path);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// (readings first stored, readings carried again) per (relay, meter).
fn carried(db: &Path) -> BTreeMap<(u32, u32), (u64, u64)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT relay_id, meter_id, readings_first, readings_duplicate FROM relay_meters")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            let count = |i| r.get::<_, i64>(i).map(|n| n as u64);
            Ok(((r.get(0)?, r.get(1)?), (count(2)?, count(3)?)))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

struct Cell {
    udp: u16,
    relay: Daemon,
}

fn start_relay(root: &Path, keys: &str, id: u32, meters: &str, broker: &Mosquitto) -> Cell {
    let bundle = root.join(format!("relay{id}-bundle")).display().to_string();
    export_bundle(&[
        "relay",
        "--dir",
        keys,
        "--id",
        &id.to_string(),
        "--meters",
        meters,
        "--out",
        &bundle,
    ]);
    let udp = free_udp_port();
    let config = root.join(format!("relay{id}.toml"));
    let data = root.join(format!("relay{id}"));
    let setup = RelaySetup {
        id,
        bundle: &bundle,
        data: &data,
        udp,
        broker_port: broker.port,
        difficulty: 8,
        max_age_ms: 300,
    };
    write_relay_config(&config, &setup);
    let relay = spawn(
        &format!("relay {id}"),
        &["relay", "--config", &config.to_string_lossy()],
        &root.join(format!("relay{id}.log")),
    );
    Cell { udp, relay }
}

/// A fleet of meters `from..=to` whose frames reach the relays at `udp` (the first is its route).
fn start_fleet(root: &Path, keys: &str, name: &str, (from, to): (u32, u32), udp: &[u16]) -> Daemon {
    let air: Vec<String> = udp.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = root.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "keys_dir = \"{keys}\"\nmeters = {{ from = {from}, to = {to} }}\nstate_dir = \"{}\"\ninterval_s = 0.5\n\
             truth_file = \"{}\"\nseed = {from}\n[radio]\nudp_relay = {}\nudp_also_heard_by = [{}]\n\
             udp_listen = \"127.0.0.1:0\"\nloss = 0.0\n",
            root.join(name).display(),
            root.join(format!("{name}.truth.jsonl")).display(),
            air[0],
            air[1..].join(", "),
        ),
    )
    .unwrap();
    spawn(
        name,
        &["meters", "--config", &config.to_string_lossy()],
        &root.join(format!("{name}.log")),
    )
}

#[test]
fn meters_heard_by_two_relays_are_stored_once_and_each_relay_shows_its_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = KeyDir::new(root.join("keys"));
    keys.init(&InitOptions {
        relay_ids: vec![1, 2],
        ..InitOptions::default()
    })
    .unwrap();
    keys.add_meters(&(1..=12).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let k = keys.root().display().to_string();
    let broker = Mosquitto::start(
        &keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .unwrap();
    let server_bundle = root.join("server-bundle").display().to_string();
    export_bundle(&["server", "--dir", &k, "--out", &server_bundle]);
    let token = create_token(&format!("{server_bundle}/tokens.toml"), "ops", "viewer");
    let db = root.join("server.db");
    let http = common::free_tcp_port();
    write_server_config(root, &server_bundle, &db, 8, broker.port, http);
    let mut server = spawn(
        "server",
        &[
            "server",
            "--config",
            &root.join("server.toml").to_string_lossy(),
        ],
        &root.join("server.log"),
    );
    // Each relay holds the hop keys of the meters in its cell.
    let mut one = start_relay(root, &k, 1, "1-8", &broker);
    let mut two = start_relay(root, &k, 2, "5-12", &broker);
    std::thread::sleep(Duration::from_secs(1));
    let fleets = [
        ("only-one", (1, 4), vec![one.udp]),
        ("edge", (5, 8), vec![one.udp, two.udp]),
        ("only-two", (9, 12), vec![two.udp]),
    ];
    let mut running: Vec<Daemon> = fleets
        .iter()
        .map(|(name, range, udp)| start_fleet(root, &k, name, *range, udp))
        .collect();
    std::thread::sleep(Duration::from_secs(8));
    // Graceful stop: each fleet waits until its readings are acknowledged.
    for f in &mut running {
        f.interrupt(Duration::from_secs(40));
    }

    let mut want = BTreeMap::new();
    for (name, _, _) in &fleets {
        for t in gridpow_meters::read_truth(&root.join(format!("{name}.truth.jsonl"))).unwrap() {
            let v = (
                t.timestamp_ms,
                i64::from(t.active_power_dw),
                t.energy_mwh as i64,
            );
            assert!(
                want.insert((t.meter_id, t.boot_epoch, t.seq), v).is_none(),
                "the truth files repeat a reading"
            );
        }
    }
    assert!(
        want.len() >= 12 * 10,
        "only {} readings generated",
        want.len()
    );
    let logs = || {
        logs(
            root,
            &[
                "server.log",
                "relay1.log",
                "relay2.log",
                "only-one.log",
                "edge.log",
                "only-two.log",
            ],
        )
    };
    // Both relays' last blocks are in once every reading is and both
    // relays' counts of the edge meters add up (below).
    let start = Instant::now();
    let complete = |got: &BTreeMap<Key, (u64, i64, i64, u32)>| {
        got.len() >= want.len() && {
            let c = carried(&db);
            (5..=8).all(|m| {
                let stored = got.keys().filter(|k| k.0 == m).count() as u64;
                let (f1, d1) = c.get(&(1, m)).copied().unwrap_or_default();
                let (f2, d2) = c.get(&(2, m)).copied().unwrap_or_default();
                f1 + d1 + f2 + d2 >= 2 * stored
            })
        }
    };
    let mut got = stored(&db);
    while !complete(&got) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        got = stored(&db);
    }
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
    let values: BTreeMap<Key, (u64, i64, i64)> =
        got.iter().map(|(k, v)| (*k, (v.0, v.1, v.2))).collect();
    assert_eq!(
        values, want,
        "stored readings differ from what the meters generated"
    );

    // Who stored what: cell-only meters through their own relay; edge meters
    // through either, and each of their readings carried by both (no loss on
    // this air), once stored first and once as a duplicate.
    for (key, v) in &got {
        match key.0 {
            1..=4 => assert_eq!(v.3, 1, "{key:?}"),
            9..=12 => assert_eq!(v.3, 2, "{key:?}"),
            _ => {}
        }
    }
    let c = carried(&db);
    let mut by_relay = [BTreeSet::new(), BTreeSet::new()];
    for (&(relay, meter), &(first, dup)) in &c {
        by_relay[relay as usize - 1].insert(meter);
        let stored_here = got
            .iter()
            .filter(|(k, v)| k.0 == meter && v.3 == relay)
            .count() as u64;
        assert_eq!(first, stored_here, "relay {relay} meter {meter}");
        if !(5..=8).contains(&meter) {
            assert_eq!(dup, 0, "relay {relay} meter {meter} is in one cell only");
        }
    }
    assert_eq!(by_relay[0], (1..=8).collect());
    assert_eq!(by_relay[1], (5..=12).collect());
    let mut overlap = 0;
    for m in 5..=8 {
        let stored = got.keys().filter(|k| k.0 == m).count() as u64;
        let (f1, d1) = c[&(1, m)];
        let (f2, d2) = c[&(2, m)];
        assert_eq!((f1 + f2, d1 + d2), (stored, stored), "meter {m}\n{c:?}");
        overlap += d1 + d2;
    }
    assert!(overlap > 0);

    // The API and the dashboard's table read the same coverage.
    let body = http_body(http, &token, "/api/v1/relays");
    let relays: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cov: Vec<(u64, u64, u64, u64)> = relays
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["relay_id"].as_u64().unwrap(),
                r["meters_heard"].as_u64().unwrap(),
                r["meters_shared"].as_u64().unwrap(),
                r["readings_duplicate"].as_u64().unwrap(),
            )
        })
        .collect();
    let dups = |relay: u32| (5..=8).map(|m| c[&(relay, m)].1).sum::<u64>();
    assert_eq!(cov, vec![(1, 8, 4, dups(1)), (2, 8, 4, dups(2))], "{body}");
    let metrics = http_body(http, &token, "/metrics");
    assert!(
        metrics.contains(&format!(
            "gridpow_ledger_readings_duplicate_total {overlap}"
        )),
        "{metrics}"
    );
    // The edge meters took one relay's ACK and counted the other's as late, not refused.
    let last_line = |name: &str| {
        let log = std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap();
        let line = log
            .lines()
            .rfind(|l| l.contains("late ACKs"))
            .map(str::to_string);
        line.unwrap_or_else(|| panic!("no summary in {name}.log:\n{log}"))
    };
    let late = |line: &str| -> u64 {
        let n = line
            .split(" late ACKs")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap();
        n.parse().unwrap()
    };
    let edge = last_line("edge");
    assert!(
        late(&edge) > 0 && edge.contains(" 0 ACKs refused"),
        "{edge}"
    );
    assert_eq!(late(&last_line("only-one")), 0);

    one.relay.interrupt(Duration::from_secs(30));
    two.relay.interrupt(Duration::from_secs(30));
    server.interrupt(Duration::from_secs(30));
    let o = gridpow(&["verify-ledger", "--db", &db.to_string_lossy(), "--keys", &k]);
    assert!(o.status.success(), "{}", text(&o));
    println!(
        "overlap: {} readings stored, {overlap} carried twice by the edge meters' two relays",
        got.len()
    );
}
