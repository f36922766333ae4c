//! The grid server against a private Mosquitto with mutual TLS: real blocks
//! published by a relay-side client, receipts verified, the database and the
//! HTTP API checked, and the stored ledger re-verified offline.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{http_get, json, publish, relay_client, wait_until, Heard, Site};
use gridpow_common::topics;
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::pow::check_work;
use gridpow_proto::wire::uplink::write_hop_tag;
use gridpow_proto::wire::{ReceiptRepr, ReceiptStatus};
use gridpow_proto::Hash;
use gridpow_server::{verify_ledger, BlockFault, LedgerError, Server, ServerHandle};
use gridpow_testkit::Mosquitto;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc::UnboundedReceiver;

async fn start(site: &Site, broker: &Mosquitto) -> ServerHandle {
    let server = Server::start(site.config(broker.port)).await.unwrap();
    assert!(
        wait_until(15, || server.stats().mqtt_subscribed).await,
        "server did not subscribe; broker log: {}",
        broker.log()
    );
    server
}

async fn wait_subscribed(rx: &mut UnboundedReceiver<Heard>) {
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert!(matches!(got, Some(Heard::SubAck)), "{got:?}");
}

/// Collects `n` receipts, verified with the server's public key, keyed by (height, hash, status).
async fn receipts(site: &Site, rx: &mut UnboundedReceiver<Heard>, n: usize) -> Vec<ReceiptRepr> {
    let key = site.keys.server_verifying_key().unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let got = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} receipts arrived: {out:?}", out.len()));
        if let Some(Heard::Receipt(bytes)) = got {
            out.push(
                ReceiptRepr::parse_verified(&RustCrypto, &bytes, &key)
                    .expect("receipt signed by the server key"),
            );
        }
    }
    out
}

fn has(receipts: &[ReceiptRepr], height: u64, hash: &Hash, status: ReceiptStatus) -> bool {
    receipts.iter().any(|r| {
        r.relay_id == 1
            && r.height == height
            && &r.block_hash == hash
            && r.status == status
            && r.server_id == 1
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_over_mqtt_tls_are_stored_once_receipted_served_and_the_ledger_verifies() {
    let site = Site::new(&[1], &[1, 2, 3]);
    let broker = site.broker();
    let server = start(&site, &broker).await;
    let (client, mut rx) = relay_client(&site.keys, broker.port, 1).await;
    wait_subscribed(&mut rx).await;

    // Genesis: meters 1 and 2, six readings each.
    let (b0, h0) = site.block(
        1,
        0,
        [0; 32],
        8,
        &[site.frame(1, 1, 0, 0, 6), site.frame(2, 1, 0, 0, 6)],
    );
    // Meter 1 re-sent readings 3..6 in a new frame (its ACK was lost) with 6..9; meter 3 joins.
    let (b1, h1) = site.block(
        1,
        1,
        h0,
        8,
        &[site.frame(1, 1, 1, 3, 6), site.frame(3, 1, 0, 0, 3)],
    );
    let (b2, h2) = site.block(1, 2, h1, 8, &[site.frame(2, 1, 1, 6, 4)]);
    let (b3, h3) = site.block(1, 3, h2, 8, &[site.frame(3, 1, 1, 3, 2)]);
    // A second, different block at height 2: a fork.
    let (fork, hf) = site.block(1, 2, h1, 8, &[site.frame(2, 1, 9, 6, 1)]);

    publish(&client, 1, &b0).await;
    publish(&client, 1, &b1).await;
    publish(&client, 1, &b1).await; // redelivery
    let r = receipts(&site, &mut rx, 3).await;
    assert!(has(&r, 0, &h0, ReceiptStatus::Stored), "{r:?}");
    assert!(has(&r, 1, &h1, ReceiptStatus::Stored), "{r:?}");
    assert!(has(&r, 1, &h1, ReceiptStatus::AlreadyStored), "{r:?}");
    let s = server.stats();
    assert_eq!(
        (s.ledger.blocks_verified, s.ledger.blocks_duplicate),
        (2, 1)
    );
    // Meter 1: 0..9, meter 2: 0..6, meter 3: 0..3; 3 readings carried twice.
    assert_eq!(
        (
            s.ledger.readings_stored,
            s.ledger.readings_duplicate,
            s.ledger.meters
        ),
        (18, 3, 3)
    );

    // The relay's status (retained) with its radio counters reaches the
    // fleet view; a garbage status is counted and dropped, the good one stays.
    // As the Linux relay's status_json writes it (pinned in crates/relay).
    let status = format!(
        r#"{{"height":1,"radio":{{"accepted":30,"duplicates":7,"frames":40,"rejected":3}},"relay_id":1,"state":"online","time_ms":{}}}"#,
        site.t0
    );
    client
        .publish(topics::status(1), QoS::AtLeastOnce, true, status)
        .await
        .unwrap();
    client
        .publish(
            topics::status(1),
            QoS::AtLeastOnce,
            false,
            &b"{\"state\":1}"[..],
        )
        .await
        .unwrap();
    assert!(
        wait_until(10, || server
            .metrics_text()
            .contains("gridpow_server_relay_status_refused_total 1"))
        .await,
        "{}",
        server.metrics_text()
    );
    let (_, health) = http_get(server.http_addr(), &site.admin, "/api/v1/fleet/relays").await;
    let health = json(&health);
    assert_eq!(health[0]["relay_id"], 1, "{health}");
    assert_eq!(health[0]["reported"]["state"], "online", "{health}");
    assert_eq!(health[0]["reported"]["radio"]["duplicates"], 7, "{health}");
    assert_eq!(health[0]["stored"]["blocks"], 2, "{health}");

    // Height 3 before height 2: a gap, then filled; then the fork.
    publish(&client, 1, &b3).await;
    let r = receipts(&site, &mut rx, 1).await;
    assert!(has(&r, 3, &h3, ReceiptStatus::Stored), "{r:?}");
    assert_eq!(server.stats().ledger.gaps_open, 1);
    let (_, relays) = http_get(server.http_addr(), &site.admin, "/api/v1/relays").await;
    assert_eq!(json(&relays)[0]["gaps"], serde_json::json!([[2, 2]]));
    publish(&client, 1, &b2).await;
    publish(&client, 1, &fork).await;
    let r = receipts(&site, &mut rx, 2).await;
    assert!(has(&r, 2, &h2, ReceiptStatus::Stored), "{r:?}");
    assert!(
        has(&r, 2, &hf, ReceiptStatus::Refused),
        "a fork is refused for good: {r:?}"
    );
    let s = server.stats();
    assert_eq!(
        (
            s.ledger.blocks_verified,
            s.ledger.gaps_open,
            s.ledger.forks,
            s.ledger.blocks_rejected
        ),
        (4, 0, 1, 1)
    );
    assert_eq!(s.ledger.readings_stored, 18 + 4 + 2);

    // The HTTP API.
    let addr = server.http_addr();
    let (code, body) = http_get(addr, &site.admin, "/api/v1/stats").await;
    let stats = json(&body);
    assert_eq!(code, 200);
    for (field, want) in [
        ("readings_stored", 24),
        ("blocks_verified", 4),
        ("blocks_rejected", 1),
        ("frames_rejected", 0),
        ("meters", 3),
        ("relays", 1),
    ] {
        assert_eq!(stats[field], want, "{field} in {body}");
    }
    let meters = json(&http_get(addr, &site.admin, "/api/v1/meters").await.1);
    assert_eq!(meters.as_array().unwrap().len(), 3);
    assert_eq!(meters[0]["readings"], 9);
    let (code, body) = http_get(addr, &site.admin, "/api/v1/meters/1/readings").await;
    assert_eq!(code, 200);
    let readings = json(&body);
    let seqs: Vec<u64> = readings["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..9).collect::<Vec<_>>(),
        "each reading once, in time order"
    );
    let from = site.t0 + 20_000;
    let to = site.t0 + 40_000;
    let (_, csv) = http_get(
        addr,
        &site.admin,
        &format!("/api/v1/meters/1/readings?from={from}&to={to}&format=csv"),
    )
    .await;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("reading_id,meter_id,epoch,seq,timestamp_ms"),
        "{csv}"
    );
    assert_eq!(
        lines.len(),
        1 + 3,
        "readings 2, 3 and 4 fall in the window: {csv}"
    );
    let id = readings["readings"][4]["id"].as_i64().unwrap();
    let (code, body) = http_get(addr, &site.admin, &format!("/api/v1/readings/{id}/proof")).await;
    assert_eq!(code, 200, "{body}");
    let proof = json(&body);
    assert_eq!(proof["verified"], true, "{body}");
    assert_eq!(proof["signature_verified"], true, "{body}");
    assert_eq!(proof["tree_size"], 2);
    assert_eq!(proof["audit_path"].as_array().unwrap().len(), 1);
    assert_eq!(
        http_get(addr, &site.admin, "/api/v1/readings/999999/proof")
            .await
            .0,
        404
    );
    let relays = json(&http_get(addr, &site.admin, "/api/v1/relays").await.1);
    assert_eq!(relays[0]["head_height"], 3);
    assert_eq!(relays[0]["linked_height"], 3);
    assert_eq!(relays[0]["forks"], 1);
    assert!(relays[0]["mean_work_bits"].as_f64().unwrap() >= 8.0);
    let blocks = json(
        &http_get(addr, &site.admin, "/api/v1/blocks?relay=1&limit=2")
            .await
            .1,
    );
    assert_eq!(blocks.as_array().unwrap().len(), 2);
    assert!(blocks[0]["height"].as_u64().unwrap() == 3);
    let alerts = json(&http_get(addr, &site.admin, "/api/v1/alerts").await.1);
    let kinds: Vec<&str> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"gap") && kinds.contains(&"fork"),
        "{alerts}"
    );
    let quarantine = json(&http_get(addr, &site.admin, "/api/v1/quarantine").await.1);
    assert_eq!(quarantine[0]["kind"], "fork");
    let (code, metrics) = http_get(addr, &site.admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("gridpow_ledger_readings_total 24"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gridpow_server_quarantined_total{reason=\"fork\"} 1"),
        "{metrics}"
    );
    assert!(json(&http_get(addr, &site.admin, "/healthz").await.1)["mqtt_connected"] == true);
    let (code, page) = http_get(addr, &site.admin, "/").await;
    assert_eq!(code, 200);
    for id in [
        "readings-stored",
        "power-chart",
        "voltage-chart",
        "blocks-table",
        "alerts-table",
    ] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "dashboard lacks #{id}"
        );
    }

    server.shutdown().await;
    drop(client);

    // Offline: the ledger verifies, then one altered byte of a reading row is found.
    let db = site.db_path().display().to_string();
    let report = verify_ledger(&db, &site.keys).unwrap();
    assert_eq!(
        (
            report.blocks,
            report.readings,
            report.duplicate_readings,
            report.meters
        ),
        (4, 24, 3, 3)
    );
    let conn = rusqlite::Connection::open(site.db_path()).unwrap();
    let (row, block_id): (i64, i64) = conn
        .query_row(
            "SELECT id, block_id FROM readings WHERE meter_id = 2 AND seq = 7",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    conn.execute(
        "UPDATE readings SET power_dw = power_dw + 1 WHERE id = ?1",
        [row],
    )
    .unwrap();
    drop(conn);
    let err = verify_ledger(&db, &site.keys).unwrap_err();
    match &err {
        LedgerError::BadBlock {
            relay_id: 1,
            height: 2,
            hash,
            block_id: b,
            fault: BlockFault::ReadingColumn {
                column: "power_dw", ..
            },
        } => {
            assert_eq!(hash, &hex::encode(h2));
            assert_eq!(*b, block_id);
        }
        other => panic!("unexpected {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("relay 1 height 2") && text.contains("power_dw"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payloads_land_in_quarantine_with_their_reason_and_nothing_crashes() {
    let site = Site::new(&[1], &[1, 2]);
    let broker = site.broker();
    let server = start(&site, &broker).await;
    let (client, mut rx) = relay_client(&site.keys, broker.port, 1).await;
    wait_subscribed(&mut rx).await;

    let (b0, h0) = site.block(1, 0, [0; 32], 8, &[site.frame(1, 1, 0, 0, 2)]);
    publish(&client, 1, &b0).await;
    assert!(has(
        &receipts(&site, &mut rx, 1).await,
        0,
        &h0,
        ReceiptStatus::Stored
    ));

    let (good, h1) = site.block(
        1,
        1,
        h0,
        8,
        &[site.frame(1, 1, 1, 2, 2), site.frame(2, 1, 0, 0, 3)],
    );
    let mut leaf_flipped = good.clone();
    *leaf_flipped.last_mut().unwrap() ^= 0x01;
    let mut sig_flipped = good.clone();
    sig_flipped[130] ^= 0x80;
    // Claims difficulty 2 where the server requires 8.
    let (low_claim, _) = site.block(1, 1, h0, 2, &[site.frame(1, 1, 1, 2, 2)]);
    // Claims 8 but the nonce does not meet it.
    let mut unsolved = site.block(1, 1, h0, 8, &[site.frame(1, 1, 1, 2, 2)]).0;
    loop {
        let n = u64::from_le_bytes(unsolved[92..100].try_into().unwrap()) + 1;
        unsolved[92..100].copy_from_slice(&n.to_le_bytes());
        if check_work(&RustCrypto.sha256(&[&unsolved[..100]]), 8).is_err() {
            break;
        }
    }
    // Meter 99 is not registered.
    let (unknown_meter, hu) = site.block(1, 1, h0, 8, &[site.frame(99, 1, 0, 0, 1)]);
    // Relay 7 is not registered (its key is made up).
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let (unknown_relay, _) = common::build_block(
        &stranger,
        7,
        0,
        [0; 32],
        8,
        site.t0,
        &[site.frame(1, 1, 5, 9, 1)],
    );
    // A frame sealed with the wrong keys: meter 2's frame bytes under meter 1's id.
    let mut bad_hop_frame = site.frame(2, 1, 3, 3, 1);
    bad_hop_frame[4..8].copy_from_slice(&1u32.to_le_bytes());
    let (bad_hop_tag, _) = site.block(1, 1, h0, 8, &[bad_hop_frame]);
    // A relay alters a reading and re-tags the hop with the hop key it holds:
    // only the meter's end-to-end key could make the frame valid again.
    let mut forged = site.frame(1, 1, 6, 20, 1);
    forged[25] ^= 0x40;
    write_hop_tag(&RustCrypto, &site.meter_keys(1).hop, &mut forged).unwrap();
    let (bad_tag, _) = site.block(1, 1, h0, 8, &[forged]);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("merkle_mismatch", leaf_flipped),
        ("bad_signature", sig_flipped),
        ("low_difficulty", low_claim),
        ("insufficient_work", unsolved),
        ("unknown_meter", unknown_meter),
        ("unknown_relay", unknown_relay),
        ("bad_hop_tag", bad_hop_tag),
        ("bad_tag", bad_tag),
        ("malformed", b"definitely not a block".to_vec()),
        ("malformed", vec![]),
        ("malformed", vec![1, 3, 0, 0]),
    ];
    for (_, payload) in &cases {
        publish(&client, 1, payload).await;
    }
    let want = cases.len() as u64;
    assert!(
        wait_until(15, || server.stats().ledger.blocks_rejected == want).await,
        "rejected {} of {want}",
        server.stats().ledger.blocks_rejected
    );
    // The genuine block still goes through afterwards.
    publish(&client, 1, &good).await;
    assert!(wait_until(15, || server.stats().ledger.blocks_verified == 2).await);
    let r = receipts(&site, &mut rx, 8).await;
    assert!(has(&r, 1, &h1, ReceiptStatus::Stored), "{r:?}");
    assert!(has(&r, 1, &hu, ReceiptStatus::Quarantined), "{r:?}");
    assert!(
        has(&r, 1, &h1, ReceiptStatus::Quarantined),
        "a forged copy of block 1 is answered as quarantined: {r:?}"
    );

    let q = json(
        &http_get(
            server.http_addr(),
            &site.admin,
            "/api/v1/quarantine?limit=100",
        )
        .await
        .1,
    );
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for row in q.as_array().unwrap() {
        *kinds
            .entry(row["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (kind, _) in &cases {
        let expected = cases.iter().filter(|(k, _)| k == kind).count();
        assert_eq!(
            kinds.get(*kind).copied().unwrap_or(0),
            expected,
            "{kind} in {q}"
        );
    }
    let s = server.stats();
    assert_eq!(
        s.ledger.frames_rejected, 3,
        "unknown meter and bad tags are frame faults"
    );
    assert_eq!((s.ledger.readings_stored, s.ledger.meters), (2 + 5, 2));
    let metrics = http_get(server.http_addr(), &site.admin, "/metrics")
        .await
        .1;
    assert!(
        metrics.contains("gridpow_server_quarantined_total{reason=\"malformed\"} 3"),
        "{metrics}"
    );

    // Registering meter 99 makes its next block acceptable (the registry reloads, rate-limited).
    site.keys.add_meters(&[(99, None)]).unwrap();
    site.server_bundle();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (late, hl) = site.block(1, 2, h1, 8, &[site.frame(99, 1, 1, 1, 1)]);
    publish(&client, 1, &late).await;
    assert!(has(
        &receipts(&site, &mut rx, 1).await,
        2,
        &hl,
        ReceiptStatus::Stored
    ));
    server.shutdown().await;
    let report = verify_ledger(&site.db_path().display().to_string(), &site.keys).unwrap();
    assert_eq!((report.blocks, report.readings), (3, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_of_the_demo_carries_blocks_and_receipts_too() {
    let site = Site::new(&[1], &[1, 2]);
    let broker =
        gridpow_broker::start_embedded(&site.keys, &gridpow_broker::EmbeddedOptions::default())
            .unwrap();
    let port = broker.v5_addr.port();
    let server = Server::start(site.config(port)).await.unwrap();
    assert!(
        wait_until(15, || server.stats().mqtt_subscribed).await,
        "server did not subscribe"
    );
    let (client, mut rx) = relay_client(&site.keys, port, 1).await;
    wait_subscribed(&mut rx).await;
    let (b0, h0) = site.block(
        1,
        0,
        [0; 32],
        8,
        &[site.frame(1, 1, 0, 0, 6), site.frame(2, 1, 0, 0, 6)],
    );
    let (b1, h1) = site.block(1, 1, h0, 8, &[site.frame(1, 1, 1, 4, 4)]);
    publish(&client, 1, &b0).await;
    publish(&client, 1, &b1).await;
    publish(&client, 1, &b0).await;
    let r = receipts(&site, &mut rx, 3).await;
    assert!(has(&r, 0, &h0, ReceiptStatus::Stored), "{r:?}");
    assert!(has(&r, 1, &h1, ReceiptStatus::Stored), "{r:?}");
    assert!(has(&r, 0, &h0, ReceiptStatus::AlreadyStored), "{r:?}");
    assert_eq!(server.stats().ledger.readings_stored, 12 + 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_fault_no_retry_can_cure_halts_the_writer_loudly_and_acknowledges_nothing_unstored(
) {
    let site = Site::new(&[1], &[1]);
    let broker = site.broker();
    let server = start(&site, &broker).await;
    let (client, mut rx) = relay_client(&site.keys, broker.port, 1).await;
    wait_subscribed(&mut rx).await;
    let (b0, h0) = site.block(1, 0, [0; 32], 8, &[site.frame(1, 1, 0, 0, 6)]);
    publish(&client, 1, &b0).await;
    let r = receipts(&site, &mut rx, 1).await;
    assert!(has(&r, 0, &h0, ReceiptStatus::Stored), "{r:?}");
    let (status, _) = http_get(server.http_addr(), "", "/healthz").await;
    assert_eq!(status, 200);

    // A table dropped behind the server's back: every commit from now on
    // fails, and retrying cannot cure it.
    rusqlite::Connection::open(site.db_path())
        .unwrap()
        .execute_batch("DROP TABLE coverage")
        .unwrap();
    let (b1, _) = site.block(1, 1, h0, 8, &[site.frame(1, 1, 1, 6, 6)]);
    publish(&client, 1, &b1).await;
    let mut halted = None;
    for _ in 0..100 {
        let (status, body) = http_get(server.http_addr(), "", "/healthz").await;
        if status == 503 {
            halted = Some(json(&body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let halted = halted.expect("/healthz never reported the halted writer");
    assert_eq!(halted["status"], "halted", "{halted}");
    assert!(
        halted["error"].as_str().unwrap().contains("coverage"),
        "the error names what is wrong: {halted}"
    );
    // No receipt for the block that was not stored, and nothing stored.
    let more = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(
        !matches!(more, Ok(Some(Heard::Receipt(_)))),
        "a receipt for an unstored block: {more:?}"
    );
    let s = server.stats();
    assert_eq!((s.ledger.blocks_verified, s.ledger.readings_stored), (1, 6));
    server.shutdown().await;
}
