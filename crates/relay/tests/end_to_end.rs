//! Virtual meters → lossy in-process air → relay → Mosquitto (mutual TLS) →
//! a stand-in server that verifies blocks and sends receipts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use gridpow_meters::Fleet;
use gridpow_radio::Medium;
use gridpow_relay::Relay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_sent_over_a_lossy_air_lands_in_exactly_one_block() {
    let seed = common::seed("every_reading_sent_over_a_lossy_air_lands_in_exactly_one_block");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = common::site(dir.path(), 24);
    let broker = common::broker(&keys);
    let server = common::TestServer::start(&keys, broker.port);

    let medium = Medium::new(0.25, seed);
    let rcfg = common::relay_config(&keys, &dir.path().join("relay"), broker.port);
    let relay = Relay::start(rcfg.clone(), Box::new(medium.port(&[rcfg.mac()])))
        .await
        .unwrap();
    let fcfg = common::fleet_config(&keys, dir.path(), seed);
    let macs: Vec<_> = Fleet::meter_macs(&fcfg)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let fleet = Fleet::start(fcfg.clone(), Box::new(medium.port(&macs))).unwrap();

    tokio::time::sleep(Duration::from_secs(6)).await;
    let (fs, rs, _truth, blocks, readings) = common::finish(fleet, relay, &fcfg, &server).await;
    eprintln!(
        "{readings} readings in {blocks} blocks; relay {rs:?}; fleet {fs:?}; medium {:?}; {:.1} s",
        medium.stats(),
        started.elapsed().as_secs_f64()
    );
    assert!(readings > 400, "only {readings} readings generated");
    // Loss must have exercised the retransmission and duplicate-ACK paths.
    assert!(
        fs.retransmissions > 0 && rs.frames_duplicate > 0,
        "{fs:?} {rs:?}"
    );
    assert_eq!(rs.blocks_confirmed, rs.blocks_sealed);
    assert_eq!(rs.blocks_sealed as usize, blocks);
    assert_eq!(rs.outbox_len, 0);
    assert!(rs.journal_fsyncs > 0 && rs.frames_per_fsync >= 1.0);
    assert!(
        rs.journal_segments_compacted > 0,
        "small segments should have been compacted: {rs:?}"
    );
    assert_eq!(rs.frames_rejected.total(), 0, "{rs:?}");
}
