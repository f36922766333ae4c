//! Two grid servers on one PostgreSQL (a private instance) sharing the MQTT 5
//! subscription on a private Mosquitto with mutual TLS: blocks of three relays
//! published out of order and redelivered are stored exactly once, every
//! chain is intact, and the ledger verifies offline until one byte is altered.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{http_get, json, publish, relay_client, wait_until, Heard, Site};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{ReceiptRepr, ReceiptStatus};
use gridpow_server::{verify_ledger, LedgerError, Server, ServerConfig, ServerHandle};
use gridpow_store::postgres::PgConn;
use gridpow_testkit::pg_harness::PgServer;
use gridpow_testkit::Mosquitto;

/// Server `id` of `site` on the broker's port and database `url`.
fn config(site: &Site, port: u16, url: &str, id: u32) -> ServerConfig {
    let mut cfg = site.config(port);
    cfg.db = url.to_string();
    cfg.server_id = id;
    // One client certificate for both (the key directory has server-1's).
    let tls = site.keys.root().join("tls");
    cfg.mqtt.cert = Some(tls.join("server-1.pem"));
    cfg.mqtt.key = Some(tls.join("server-1.key"));
    cfg.mqtt.client_id = Some(format!("gridpow-server-{id}"));
    cfg
}

async fn start(cfg: ServerConfig, broker: &Mosquitto) -> ServerHandle {
    let server = Server::start(cfg).await.unwrap();
    assert!(
        wait_until(15, || server.stats().mqtt_subscribed).await,
        "server did not subscribe; broker log: {}",
        broker.log()
    );
    server
}

/// A tiny deterministic generator (xorshift) for the publishing order.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgres_store_shuffled_and_redelivered_blocks_once_and_the_ledger_verifies(
) {
    let pg = PgServer::shared().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.create_database().unwrap();
    let relays = [1u32, 2, 3];
    let meters: Vec<u32> = (1..=6).collect();
    let site = Site::new(&relays, &meters);
    let broker = site.broker();

    // Relay r hears meters r, r+1, r+3 (so meters 2, 3, 4 are heard by two relays and
    // their frames arrive twice); every meter re-sends its last 2 readings in its next
    // frame (a lost ACK). 10 blocks per relay.
    let mut expected: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut blocks: Vec<(u32, u64, Vec<u8>)> = Vec::new();
    for &r in &relays {
        let mut prev = [0u8; 32];
        for h in 0..10u32 {
            let frames: Vec<Vec<u8>> = [r, r + 1, r + 3]
                .iter()
                .map(|&m| {
                    let first = (h * 4).saturating_sub(2);
                    let n = if h == 0 { 4 } else { 6 };
                    for s in first..first + n {
                        expected.insert((m, s));
                    }
                    // The counter names the frame's content, so two relays carry identical bytes.
                    site.frame(m, 1, h, first, n)
                })
                .collect();
            let (bytes, hash) = site.block(r, u64::from(h), prev, 8, &frames);
            prev = hash;
            blocks.push((r, u64::from(h), bytes));
        }
    }
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    let mut rng = Rng(0x0dd_ba11_5eed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    // A third of the blocks are delivered again (the relay republishes after a lost receipt).
    let again: Vec<usize> = order.iter().copied().filter(|i| i % 3 == 0).collect();

    let a = start(config(&site, broker.port, &url, 1), &broker).await;
    let b = start(config(&site, broker.port, &url, 2), &broker).await;
    let mut clients = Vec::new();
    for &r in &relays {
        let (client, mut rx) = relay_client(&site.keys, broker.port, r).await;
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap();
        assert!(matches!(got, Some(Heard::SubAck)), "{got:?}");
        clients.push((client, rx));
    }
    for &i in order.iter().chain(&again) {
        let (r, _, bytes) = &blocks[i];
        publish(&clients[(*r - 1) as usize].0, *r, bytes).await;
    }

    let total = expected.len() as u64;
    // The database totals, then each server's own counters (added after its commit).
    let done = wait_until(60, || {
        let (s, t) = (a.stats(), b.stats());
        s.ledger.blocks_verified == 30
            && s.ledger.readings_stored == total
            && s.readings_stored_by_this_server + t.readings_stored_by_this_server == total
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert!(done, "server 1: {sa:?}\nserver 2: {sb:?}");
    // Both servers took part: the broker shared the subscription between them.
    assert!(
        sa.messages_received > 0 && sb.messages_received > 0,
        "{sa:?} {sb:?}"
    );
    assert_eq!(
        sa.readings_stored_by_this_server + sb.readings_stored_by_this_server,
        total,
        "each reading stored by exactly one server"
    );
    // Every delivery is answered by a receipt signed by a server.
    let key = site.keys.server_verifying_key().unwrap();
    let want = [0usize, 1, 2].map(|r| {
        order
            .iter()
            .chain(&again)
            .filter(|&&i| blocks[i].0 == r as u32 + 1)
            .count()
    });
    for (r, (_, rx)) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < want[r] {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Ok(Some(Heard::Receipt(bytes))) => {
                    got.push(ReceiptRepr::parse_verified(&RustCrypto, &bytes, &key).unwrap())
                }
                Ok(Some(Heard::SubAck)) => {}
                other => panic!(
                    "relay {}: {} of {} receipts: {other:?}",
                    r + 1,
                    got.len(),
                    want[r]
                ),
            }
        }
        assert!(got.iter().all(|x| x.relay_id == r as u32 + 1
            && matches!(
                x.status,
                ReceiptStatus::Stored | ReceiptStatus::AlreadyStored
            )));
        let stored: BTreeSet<u64> = got
            .iter()
            .filter(|x| x.status == ReceiptStatus::Stored)
            .map(|x| x.height)
            .collect();
        assert_eq!(stored.len(), 10, "relay {}: {got:?}", r + 1);
    }
    let s = a.stats();
    assert_eq!(
        (s.ledger.gaps_open, s.ledger.forks, s.ledger.blocks_rejected),
        (0, 0, 0),
        "{s:?}"
    );
    // The HTTP API of either server reads the shared database.
    let (code, body) = http_get(b.http_addr(), &site.admin, "/api/v1/meters/2/readings").await;
    assert_eq!(code, 200, "{body}");
    let readings = json(&body);
    let seqs: Vec<u64> = readings["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = expected
        .iter()
        .filter(|&&(m, _)| m == 2)
        .map(|&(_, s)| u64::from(s))
        .collect();
    assert_eq!(seqs, want, "each reading once, in time order");
    let id = readings["readings"][3]["id"].as_i64().unwrap();
    let proof = json(
        &http_get(
            a.http_addr(),
            &site.admin,
            &format!("/api/v1/readings/{id}/proof"),
        )
        .await
        .1,
    );
    assert_eq!(proof["verified"], true, "{proof}");
    let relays_json = json(
        &http_get(a.http_addr(), &site.admin, "/api/v1/relays")
            .await
            .1,
    );
    for r in relays_json.as_array().unwrap() {
        assert_eq!(r["linked_height"], 9, "{relays_json}");
        assert_eq!(r["gaps"], serde_json::json!([]), "{relays_json}");
    }
    a.shutdown().await;
    b.shutdown().await;

    // The database: every expected reading once, nothing else; every block linked.
    let mut c = PgConn::connect(&url).unwrap();
    let rows: Vec<(i64, i64)> = c
        .query(
            "SELECT meter_id, seq FROM readings ORDER BY meter_id, seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want_rows: Vec<(i64, i64)> = expected
        .iter()
        .map(|&(m, s)| (i64::from(m), i64::from(s)))
        .collect();
    assert_eq!(rows, want_rows);
    let unlinked: i64 = c
        .query("SELECT COUNT(*) FROM blocks WHERE NOT linked", &[])
        .unwrap()[0]
        .get(0);
    assert_eq!(unlinked, 0);

    // Offline: the ledger verifies; one altered byte of a block names it.
    let report = verify_ledger(&url, &site.keys).unwrap();
    assert_eq!((report.relays, report.blocks), (3, 30));
    assert_eq!(report.readings, total);
    assert!(report.gaps.is_empty());
    c.batch_execute(
        "UPDATE blocks SET raw = set_byte(raw, 170, get_byte(raw, 170) # 1) WHERE relay_id = 2 AND height = 5",
    )
    .unwrap();
    match verify_ledger(&url, &site.keys).unwrap_err() {
        LedgerError::BadBlock {
            relay_id: 2,
            height: 5,
            ..
        } => {}
        other => panic!("expected relay 2 height 5: {other}"),
    }
}
