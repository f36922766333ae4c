//! docs/protocol.md §10, the Linux relay's side (the firmware's is pinned in
//! crates/firmware-logic/tests/standalone_relay.rs and under QEMU): a
//! verified receipt with status *quarantined* does not release the block. The
//! relay keeps it and offers it again after the back-off, so the server's
//! ledger still ends up with every reading. A receipt *refused for good*
//! releases it: the relay archives it in `refused/` and never offers it again.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use gridpow_radio::Medium;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_block_is_kept_and_offered_again_until_stored() {
    let seed = common::seed("a_quarantined_block_is_kept_and_offered_again_until_stored");
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 4);
    let broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);
    server.quarantine_next.store(2, Ordering::Relaxed);

    let medium = Medium::new(0.0, seed);
    let mut rcfg = common::relay_config(&keys, &dir.path().join("relay"), broker.port);
    rcfg.mqtt.quarantine_retry_s = 1;
    rcfg.mqtt.republish_after_s = 60;
    let fcfg = common::fleet_config(&keys, dir.path(), seed);
    let (relay, fleet) = common::start_on(&medium, &rcfg, &fcfg).await;

    let quarantined = relay
        .wait_until(Duration::from_secs(20), |s| s.blocks_quarantined >= 1)
        .await;
    assert!(quarantined, "{:?}", relay.stats());
    assert!(
        relay.stats().outbox_len >= 1,
        "the quarantined block is still in the outbox: {:?}",
        relay.stats()
    );
    let (_fs, rs, _truth, blocks, readings) = common::finish(fleet, relay, &fcfg, &server).await;
    assert_eq!(rs.blocks_quarantined, 2, "{rs:?}");
    assert_eq!((rs.outbox_len, rs.blocks_confirmed), (0, rs.blocks_sealed));
    assert_eq!(server.quarantine_next.load(Ordering::Relaxed), 0);
    eprintln!("{readings} readings in {blocks} blocks, 2 quarantines cured by re-offering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_refused_for_good_is_archived_and_never_offered_again() {
    let seed = common::seed("a_block_refused_for_good_is_archived_and_never_offered_again");
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 4);
    let broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);
    server.refuse_next.store(1, Ordering::Relaxed);

    let medium = Medium::new(0.0, seed);
    let data_dir = dir.path().join("relay");
    let mut rcfg = common::relay_config(&keys, &data_dir, broker.port);
    // Offered again within a second, were it kept.
    rcfg.mqtt.quarantine_retry_s = 1;
    rcfg.mqtt.republish_after_s = 1;
    let fcfg = common::fleet_config(&keys, dir.path(), seed);
    let (relay, fleet) = common::start_on(&medium, &rcfg, &fcfg).await;

    let refused = relay
        .wait_until(Duration::from_secs(20), |s| s.blocks_refused >= 1)
        .await;
    assert!(refused, "{:?}", relay.stats());
    let height = server.ledger.lock().unwrap().refused[0];
    // Later blocks are stored; the refused one is not offered again.
    let later = relay
        .wait_until(Duration::from_secs(20), |s| s.blocks_confirmed >= 3)
        .await;
    assert!(later, "{:?}", relay.stats());
    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.stop_generating();
    assert!(
        relay.drain(Duration::from_secs(60)).await,
        "{:?}",
        relay.stats()
    );
    let rs = relay.stats();
    relay.shutdown().await;
    let _ = fleet.shutdown();
    assert_eq!(rs.blocks_refused, 1, "{rs:?}");
    assert_eq!(rs.outbox_len, 0, "{rs:?}");
    let led = server.ledger.lock().unwrap();
    assert_eq!(led.refused, vec![height], "offered once, never again");
    assert!(!led.blocks.contains_key(&height));
    let archived: Vec<_> = std::fs::read_dir(data_dir.join("refused"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let name = archived[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&format!("{height:020}-")), "{name}");
    assert!(!data_dir
        .join("outbox")
        .join(format!("{height:020}.blk"))
        .exists());
}
