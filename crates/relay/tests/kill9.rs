//! kill -9 for real: the relay runs in a child process (this test binary run
//! again with one test selected) fed by virtual meters over UDP air, and is
//! SIGKILLed three times at random moments during ingest and PoW.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridpow_meters::{open_udp_radio, Fleet};
use gridpow_relay::{open_radio, Relay, RelayConfig};
use gridpow_testkit::free_port;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "GRIDPOW_RELAY_CHILD_CONFIG";
const READY_ENV: &str = "GRIDPOW_RELAY_CHILD_READY";

/// Not a test of its own: the body of the child process.
#[test]
fn relay_child_process() {
    let Ok(json) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg: RelayConfig = serde_json::from_str(&json).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let radio = open_radio(&cfg).unwrap();
        let _relay = Relay::start(cfg, radio).await.unwrap();
        // A file, not stdout: the harness holds and captures stdout.
        std::fs::write(std::env::var(READY_ENV).unwrap(), b"ready").unwrap();
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    });
}

fn spawn_child(cfg: &RelayConfig) -> Child {
    let ready = cfg.data_dir.with_extension("ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "relay_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, serde_json::to_string(cfg).unwrap())
        .env(READY_ENV, &ready)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "relay child exited before it was ready"
        );
        assert!(
            Instant::now() < deadline,
            "relay child not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_with_sigkill_during_ingest_and_pow_loses_nothing() {
    let seed = common::seed("relay_killed_with_sigkill_during_ingest_and_pow_loses_nothing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 20);
    let broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);

    let mut rcfg = common::relay_config(&keys, &dir.path().join("relay"), broker.port);
    // Heavier PoW so kills often land while a block is being solved.
    rcfg.difficulty = 16;
    rcfg.radio.udp_listen = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let mut fcfg = common::fleet_config(&keys, dir.path(), seed);
    fcfg.radio.udp_relay = rcfg.radio.udp_listen;
    fcfg.radio.udp_listen = "127.0.0.1:0".parse().unwrap();
    fcfg.radio.loss = 0.1;

    let mut child = tokio::task::block_in_place(|| spawn_child(&rcfg));
    let fleet = Fleet::start(fcfg.clone(), open_udp_radio(&fcfg).unwrap()).unwrap();
    let mut kills = Vec::new();
    for _ in 0..3 {
        let after = Duration::from_millis(rng.gen_range(800..2500));
        tokio::time::sleep(after).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills.push(after);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
        child = tokio::task::block_in_place(|| spawn_child(&rcfg));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // The last life runs in this process so it can be drained.
    let relay = Relay::start(rcfg.clone(), open_radio(&rcfg).unwrap())
        .await
        .unwrap();
    let replayed = relay.stats().journal_replayed;
    let (_fs, rs, _truth, blocks, readings) = common::finish(fleet, relay, &fcfg, &server).await;
    eprintln!(
        "4 SIGKILLs after {kills:?} (+1 s): {readings} readings in {blocks} blocks, 0 lost, 0 duplicated; last life replayed {replayed} records, chain height {:?}; {:.1} s",
        rs.chain_height,
        started.elapsed().as_secs_f64()
    );
}
