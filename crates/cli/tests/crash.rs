//! Crash tests against the ground truth of the meters: two grid servers share
//! the subscription and are killed with SIGKILL at random moments during ingest
//! (ten times), the broker is killed and restarted, the relay is killed with
//! SIGKILL during ingest and PoW and restarted. Afterwards every generated
//! reading must be stored exactly once, none lost, and `verify-ledger` must pass.
//!
//! It runs on SQLite and on a private PostgreSQL instance.
//! `GRIDPOW_TEST_SEED` fixes the kill timing.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{export_bundle, spawn};
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_testkit::{Mosquitto, MosquittoOptions};

/// SplitMix64 for the kill schedule.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn stored_keys(db: &str) -> Vec<(u32, u32, u32)> {
    if db.starts_with("postgres") {
        let o = Command::new("psql")
            .args([
                db,
                "-At",
                "-F",
                ",",
                "-c",
                "SELECT meter_id, epoch, seq FROM readings",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.split(',').map(|x| x.parse::<u32>());
                Some((it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?))
            })
            .collect()
    } else {
        let Ok(c) =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        else {
            return Vec::new();
        };
        let Ok(mut st) = c.prepare("SELECT meter_id, epoch, seq FROM readings") else {
            return Vec::new();
        };
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .filter_map(Result::ok)
            .collect()
    }
}

#[test]
fn servers_broker_and_relay_killed_during_ingest_lose_and_duplicate_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grid.db").to_string_lossy().into_owned();
    crash_run(&db);
}

#[test]
fn servers_broker_and_relay_killed_during_ingest_lose_and_duplicate_nothing_on_postgresql() {
    let pg = gridpow_testkit::pg_harness::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    let db = pg.create_database().unwrap();
    crash_run(&db);
}

fn crash_run(db: &str) {
    let db = db.to_string();
    let seed: u64 = std::env::var("GRIDPOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (set GRIDPOW_TEST_SEED to repeat)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = KeyDir::new(root.join("keys"));
    keys.init(&InitOptions {
        servers: 2,
        ..InitOptions::default()
    })
    .unwrap();
    keys.add_meters(&(1..=20).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let mut broker = Mosquitto::start(
        &keys,
        &MosquittoOptions {
            require_certificate: true,
            max_queued_messages: 0,
            persistence_dir: Some(root.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let truth = root.join("truth.jsonl");
    let k = keys.root().display().to_string();
    // Each service runs from its own bundle, exported with the CLI.
    let relay_bundle = root.join("relay-bundle").display().to_string();
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &relay_bundle]);
    for id in [1, 2] {
        let sb = root
            .join(format!("server{id}-bundle"))
            .display()
            .to_string();
        export_bundle(&[
            "server",
            "--dir",
            &k,
            "--out",
            &sb,
            "--client",
            &format!("server-{id}"),
        ]);
        std::fs::write(
            root.join(format!("server{id}.toml")),
            format!("keys_dir = \"{sb}\"\ndb = \"{db}\"\nserver_id = {id}\nmin_difficulty = 10\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[http]\nlisten = \"127.0.0.1:0\"\n", broker.port),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("relay.toml"),
        format!(
            "relay_id = 1\nkeys_dir = \"{relay_bundle}\"\ndata_dir = \"{}\"\ndifficulty = 14\n[block]\nmax_age_ms = 300\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nrepublish_after_s = 3\n[radio]\nkind = \"udp\"\nudp_listen = \"127.0.0.1:{udp}\"\n",
            root.join("relay").display(),
            broker.port
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("meters.toml"),
        format!(
            "keys_dir = \"{k}\"\nstate_dir = \"{}\"\ninterval_s = 0.25\ntruth_file = \"{}\"\n[radio]\nudp_relay = \"127.0.0.1:{udp}\"\nudp_listen = \"127.0.0.1:0\"\nloss = 0.1\n",
            root.join("meters").display(),
            truth.display()
        ),
    )
    .unwrap();
    let cfg = |n: &str| root.join(n).to_string_lossy().into_owned();
    let log = |n: &str| root.join(format!("{n}.log"));
    let mut servers = [
        spawn(
            "server1",
            &["server", "--config", &cfg("server1.toml")],
            &log("server1"),
        ),
        spawn(
            "server2",
            &["server", "--config", &cfg("server2.toml")],
            &log("server2"),
        ),
    ];
    let mut relay = spawn(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &log("relay"),
    );
    std::thread::sleep(Duration::from_millis(800));
    let mut meters = spawn(
        "meters",
        &["meters", "--config", &cfg("meters.toml")],
        &log("meters"),
    );
    std::thread::sleep(Duration::from_secs(2));

    // Ten SIGKILLs of a grid server at random moments, alternating, with restarts.
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        let s = &mut servers[i % 2];
        s.kill9();
        std::thread::sleep(Duration::from_millis(rng.below(800)));
        s.restart();
    }
    // The broker dies (SIGKILL) and comes back with its persistent store.
    std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
    broker.restart().unwrap();
    // The relay dies during ingest and PoW, twice.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700 + rng.below(1500)));
        relay.kill9();
        std::thread::sleep(Duration::from_millis(rng.below(500)));
        relay.restart();
    }
    std::thread::sleep(Duration::from_secs(2));
    meters.interrupt(Duration::from_secs(60));

    let truth_records = gridpow_meters::read_truth(&truth).unwrap();
    let want: BTreeSet<(u32, u32, u32)> = truth_records
        .iter()
        .map(|t| (t.meter_id, t.boot_epoch, t.seq))
        .collect();
    assert_eq!(want.len(), truth_records.len());
    assert!(
        want.len() >= 20 * 20,
        "only {} readings generated",
        want.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = stored_keys(&db);
    while got.len() < want.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        got = stored_keys(&db);
    }
    let got_set: BTreeSet<_> = got.iter().copied().collect();
    let duplicated = got.len() - got_set.len();
    let lost: Vec<_> = want.difference(&got_set).take(5).collect();
    let logs = || {
        ["server1.log", "server2.log", "relay.log", "meters.log"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(root.join(f)).unwrap_or_default();
                format!(
                    "--- {f} (last 3000 bytes)\n{}",
                    &t[t.len().saturating_sub(3000)..]
                )
            })
            .collect::<String>()
    };
    eprintln!(
        "crash test: {} readings generated, {} stored, {} duplicated, {} lost",
        want.len(),
        got_set.len(),
        duplicated,
        want.len() - want.intersection(&got_set).count()
    );
    assert_eq!(duplicated, 0, "readings stored twice (seed {seed})");
    assert!(
        lost.is_empty(),
        "{} readings lost, e.g. {lost:?} (seed {seed})\n{}",
        want.len() - want.intersection(&got_set).count(),
        logs()
    );
    assert!(
        got_set.is_subset(&want),
        "readings stored that no meter generated (seed {seed})"
    );
    relay.interrupt(Duration::from_secs(30));
    for s in &mut servers {
        s.interrupt(Duration::from_secs(30));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(["verify-ledger", "--db", &db, "--keys", &k])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "verify-ledger after the crashes (seed {seed}): {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(relay.starts(), 3);
}
