//! Crash recovery: the relay is stopped as by kill -9 (no graceful step at
//! all) while meters keep sending, then started again on the same data
//! directory.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridpow_radio::Medium;
use gridpow_relay::Relay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_twice_resumes_its_chain_and_loses_or_repeats_nothing() {
    let seed = common::seed("relay_killed_twice_resumes_its_chain_and_loses_or_repeats_nothing");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 20);
    let broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);
    // First life: the server stores blocks but sends no receipts, so the
    // outbox holds unconfirmed blocks when the relay dies.
    server.send_receipts.store(false, Ordering::Relaxed);

    let medium = Medium::new(0.2, seed);
    let rcfg = common::relay_config(&keys, &dir.path().join("relay"), broker.port);
    let fcfg = common::fleet_config(&keys, dir.path(), seed);
    let (relay, fleet) = common::start_on(&medium, &rcfg, &fcfg).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = relay.stats();
    tokio::task::block_in_place(|| relay.abort());
    assert!(first.blocks_sealed > 0 && first.outbox_len > 0, "{first:?}");
    let h1 = first.chain_height.unwrap();

    // Second life: receipts flow; killed again after compaction had a chance.
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.send_receipts.store(true, Ordering::Relaxed);
    let relay = Relay::start(rcfg.clone(), Box::new(medium.port(&[rcfg.mac()])))
        .await
        .unwrap();
    let second_start = relay.stats();
    assert!(second_start.journal_replayed > 0, "{second_start:?}");
    assert!(
        second_start.chain_height >= Some(h1),
        "chain went back: {second_start:?} after {first:?}"
    );
    assert!(
        relay
            .wait_until(Duration::from_secs(20), |s| s.blocks_confirmed
                >= first.outbox_len)
            .await,
        "unconfirmed blocks of the first life were not republished and confirmed: {:?}",
        relay.stats()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = relay.stats();
    tokio::task::block_in_place(|| relay.abort());
    assert!(second.chain_height > Some(h1), "{second:?}");

    // Third life: drain everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let relay = Relay::start(rcfg.clone(), Box::new(medium.port(&[rcfg.mac()])))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_fs, third, _truth, blocks, readings) = common::finish(fleet, relay, &fcfg, &server).await;
    assert!(third.chain_height > second.chain_height);
    eprintln!(
        "{readings} readings in {blocks} blocks over three lives; heights {:?} / {:?} / {:?}; replayed {} / {}; compacted {}; {:.1} s",
        first.chain_height,
        second.chain_height,
        third.chain_height,
        second_start.journal_replayed,
        third.journal_replayed,
        second.journal_segments_compacted,
        started.elapsed().as_secs_f64()
    );
}
