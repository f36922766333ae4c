//! The broker dies (SIGKILL, no persistence: every session, subscription and
//! queued message is gone) while the relay publishes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use gridpow_radio::Medium;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_during_publishing_cost_time_but_no_reading() {
    let seed = common::seed("broker_restarts_during_publishing_cost_time_but_no_reading");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 16);
    let mut broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);

    let medium = Medium::new(0.1, seed);
    let rcfg = common::relay_config(&keys, &dir.path().join("relay"), broker.port);
    let fcfg = common::fleet_config(&keys, dir.path(), seed);
    let (relay, fleet) = common::start_on(&medium, &rcfg, &fcfg).await;

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| broker.restart()).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_fs, rs, _truth, blocks, readings) = common::finish(fleet, relay, &fcfg, &server).await;
    assert!(rs.mqtt_connects >= 3, "{rs:?}");
    assert_eq!((rs.outbox_len, rs.blocks_confirmed), (0, rs.blocks_sealed));
    eprintln!(
        "{readings} readings in {blocks} blocks across 2 broker restarts; connects {}, republished {}; {:.1} s",
        rs.mqtt_connects,
        rs.blocks_republished,
        started.elapsed().as_secs_f64()
    );
}
