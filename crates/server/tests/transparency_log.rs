//! The transparency log end to end: blocks over a private Mosquitto with
//! mutual TLS, stored and appended to the log; the server's signed
//! checkpoint (HTTP and retained MQTT), tiles and proofs checked by our
//! library and by the independent Python implementation of the C2SP formats
//! (`test-vectors/c2sp.py audit`), against a real server and database.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{http_get, json, publish, relay_client, wait_until, Heard, Site};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::merkle::{root_of_hashes, verify_consistency, verify_inclusion};
use gridpow_proto::wire::LogLeafRepr;
use gridpow_proto::Hash;
use gridpow_server::auth::Role;
use gridpow_server::{Server, ServerHandle};
use gridpow_testkit::Mosquitto;
use gridpow_tlog::reading_proof::ReadingProof;
use gridpow_tlog::{open_checkpoint, NoteSigner, NoteVerifier};

const ORIGIN: &str = "grid.example/ledger";

async fn start(site: &Site, broker: &Mosquitto) -> ServerHandle {
    let mut cfg = site.config(broker.port);
    cfg.log.origin = ORIGIN.into();
    cfg.log.checkpoint_min_gap_ms = 50;
    let server = Server::start(cfg).await.unwrap();
    assert!(
        wait_until(15, || server.stats().mqtt_subscribed).await,
        "server did not subscribe; broker log: {}",
        broker.log()
    );
    server
}

fn log_key(site: &Site) -> NoteVerifier {
    NoteSigner::from_seed(ORIGIN, site.keys.log_note_seed().unwrap())
        .unwrap()
        .verifier()
}

fn hex32(v: &serde_json::Value) -> Hash {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// Waits until the served checkpoint heads `size` entries; returns the note.
async fn checkpoint_of_size(server: &ServerHandle, size: u64) -> String {
    assert!(
        wait_until(15, || server.stats().log.is_some_and(|l| l.size == size)).await,
        "no checkpoint of size {size}: {:?}",
        server.stats().log
    );
    let (status, note) = http_get(server.http_addr(), "", "/log/checkpoint").await;
    assert_eq!(status, 200, "{note}");
    note
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_blocks_are_logged_signed_served_as_tiles_and_proven_to_any_checker() {
    let site = Site::new(&[1, 2], &[1, 2, 3]);
    let broker = site.broker();
    let viewer = site.token("grafana", Role::Viewer, None);
    let customer = site.token("household-3", Role::Customer, Some(3));
    let server = start(&site, &broker).await;
    let (c1, mut rx1) = relay_client(&site.keys, broker.port, 1).await;
    let (c2, mut rx2) = relay_client(&site.keys, broker.port, 2).await;
    for rx in [&mut rx1, &mut rx2] {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(matches!(got, Ok(Some(Heard::SubAck))), "{got:?}");
    }
    // An empty log is signed at start too.
    let key = log_key(&site);
    let note = checkpoint_of_size(&server, 0).await;
    assert_eq!(open_checkpoint(&note, &key).unwrap().checkpoint.size, 0);

    // 300 blocks would take a while to solve; 8 + 3 entries are enough to
    // cross no tile boundary but exercise partial tiles and every proof shape.
    let mut hashes = Vec::new();
    let mut prev = [[0u8; 32]; 2];
    for h in 0..8u64 {
        for relay in [1u32, 2] {
            if relay == 2 && h >= 3 {
                continue;
            }
            let frame = site.frame(relay.min(3), 1, h as u32 * 2 + relay, h as u32 * 2, 1);
            let (b, hash) = site.block(relay, h, prev[relay as usize - 1], 8, &[frame]);
            prev[relay as usize - 1] = hash;
            publish(if relay == 1 { &c1 } else { &c2 }, relay, &b).await;
            hashes.push(hash);
        }
    }
    let note = checkpoint_of_size(&server, 11).await;
    let opened = open_checkpoint(&note, &key).unwrap();
    assert_eq!(opened.checkpoint.origin, ORIGIN);

    // The entries, read back from the tiles, are the blocks stored, and the
    // signed root is the RFC 9162 root over them.
    let addr = server.http_addr();
    let (status, bundle) = raw_get(addr, "/log/tile/entries/000.p/11").await;
    assert_eq!(status, 200);
    let entries: Vec<LogLeafRepr> = gridpow_tlog::tiles::decode_entry_bundle(&bundle)
        .unwrap()
        .iter()
        .map(|e| LogLeafRepr::parse(e).unwrap())
        .collect();
    assert_eq!(entries.len(), 11);
    let mut logged: Vec<Hash> = entries.iter().map(|e| e.block_hash).collect();
    logged.sort_unstable();
    hashes.sort_unstable();
    assert_eq!(logged, hashes, "every stored block is logged once");
    let leaves: Vec<Hash> = entries.iter().map(|e| e.leaf_hash(&RustCrypto)).collect();
    let root = root_of_hashes(&RustCrypto, &leaves);
    assert_eq!(opened.checkpoint.root, root);
    // Relays ask for proofs over MQTT (protocol §16): the server answers its
    // own relay's well-formed requests from the log, and counts and refuses
    // the rest (garbage, another relay's id, a size beyond the log).
    {
        use gridpow_common::topics;
        use gridpow_proto::merkle::MAX_PROOF_LEN;
        use gridpow_proto::wire::{LogProof, LogProofKind, LogProofRequest};
        use rumqttc::v5::mqttbytes::QoS;
        c1.subscribe(topics::log_proofs(1), QoS::AtMostOnce)
            .await
            .unwrap();
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), rx1.recv()).await;
            if matches!(got, Ok(Some(Heard::SubAck))) {
                break;
            }
            assert!(got.is_ok(), "no SUBACK for the proof topic");
        }
        let ask = |r: Vec<u8>| c1.publish(topics::log_requests(1), QoS::AtMostOnce, false, r);
        let inclusion = LogProofRequest {
            kind: LogProofKind::Inclusion,
            relay_id: 1,
            first: 4,
            second: 11,
        };
        let consistency = LogProofRequest {
            kind: LogProofKind::Consistency,
            first: 3,
            ..inclusion
        };
        ask(b"\x02\x07garbage".to_vec()).await.unwrap();
        ask(LogProofRequest {
            relay_id: 2,
            ..inclusion
        }
        .to_bytes()
        .to_vec())
        .await
        .unwrap();
        ask(LogProofRequest {
            second: 50,
            ..inclusion
        }
        .to_bytes()
        .to_vec())
        .await
        .unwrap();
        for req in [inclusion, consistency] {
            ask(req.to_bytes().to_vec()).await.unwrap();
            let bytes = loop {
                let got = tokio::time::timeout(Duration::from_secs(10), rx1.recv())
                    .await
                    .unwrap_or_else(|_| panic!("no proof for {req:?}: {}", server.metrics_text()));
                if let Some(Heard::Receipt(b)) = got {
                    if b.get(1) == Some(&gridpow_proto::wire::TYPE_LOG_PROOF) {
                        break b;
                    }
                }
            };
            let proof = LogProof::parse(&bytes).unwrap();
            assert_eq!(proof.request, req);
            let mut buf = [[0u8; 32]; MAX_PROOF_LEN];
            let path = proof.path(&mut buf);
            let ok = match req.kind {
                LogProofKind::Inclusion => {
                    verify_inclusion(&RustCrypto, &leaves[4], 4, 11, path, &root)
                }
                LogProofKind::Consistency => verify_consistency(
                    &RustCrypto,
                    3,
                    11,
                    &root_of_hashes(&RustCrypto, &leaves[..3]),
                    &root,
                    path,
                ),
            };
            assert!(ok, "{req:?}: the proof verifies against the signed root");
        }
        assert!(
            wait_until(10, || {
                let m = server.metrics_text();
                m.contains("gridpow_log_relay_proof_requests_refused_total 3")
                    && m.contains("gridpow_log_relay_proofs_sent_total 2")
            })
            .await,
            "{}",
            server.metrics_text()
        );
    }

    let (status, tile) = raw_get(addr, "/log/tile/0/000.p/11").await;
    assert_eq!(status, 200);
    assert_eq!(
        tile,
        leaves.concat(),
        "a level-0 tile holds the leaf hashes"
    );
    for beyond in [
        "/log/tile/0/000.p/12",
        "/log/tile/entries/001",
        "/log/tile/0/x1",
    ] {
        assert_eq!(raw_get(addr, beyond).await.0, 404, "{beyond}");
    }

    // Inclusion proofs for every entry, checked by the no_std core.
    for (i, leaf) in leaves.iter().enumerate() {
        let (status, body) = http_get(addr, "", &format!("/log/proof/inclusion?index={i}")).await;
        assert_eq!(status, 200, "{body}");
        let p = json(&body);
        assert_eq!(hex32(&p["leaf_hash"]), *leaf);
        let proof: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(hex32).collect();
        assert!(verify_inclusion(
            &RustCrypto,
            leaf,
            i as u64,
            11,
            &proof,
            &root
        ));
    }
    let (status, _) = http_get(addr, "", "/log/proof/inclusion?index=11").await;
    assert_eq!(status, 400);

    // The independent C2SP implementation audits the live server.
    python_audit(addr, &key.vkey());

    // The log grows; consistency from the old checkpoint to the new one.
    let frame = site.frame(1, 1, 99, 99, 1);
    let (b, _) = site.block(1, 8, prev[0], 8, &[frame]);
    publish(&c1, 1, &b).await;
    let note = checkpoint_of_size(&server, 12).await;
    let newer = open_checkpoint(&note, &key).unwrap().checkpoint;
    let (status, body) = http_get(addr, "", "/log/proof/consistency?old=11").await;
    assert_eq!(status, 200, "{body}");
    let proof: Vec<Hash> = json(&body)["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(hex32)
        .collect();
    assert!(verify_consistency(
        &RustCrypto,
        11,
        12,
        &root,
        &newer.root,
        &proof
    ));
    assert_eq!(
        http_get(addr, "", "/log/proof/consistency?old=13").await.0,
        400,
        "a tree nobody signed is never proven"
    );

    // A reading's proof file: frame → block → log → checkpoint, checked
    // trusting only the log's note key; a customer gets their own meter's only.
    let (status, body) = http_get(addr, &viewer, "/api/v1/readings/1/log-proof").await;
    assert_eq!(status, 200, "{body}");
    let doc: ReadingProof = serde_json::from_str(&body).unwrap();
    let v = doc.verify(&key, &[], 0).unwrap();
    assert_eq!((v.tree_size, v.origin.as_str()), (12, ORIGIN));
    let (status, _) = http_get(addr, &customer, "/api/v1/readings/1/log-proof").await;
    assert_eq!(status, 403, "another meter's reading");
    python_check_proof(&body, &key.vkey());
    let other = NoteSigner::from_seed(ORIGIN, [7; 32]).unwrap().verifier();
    assert!(
        doc.verify(&other, &[], 0).is_err(),
        "only the log's key vouches"
    );

    // The raw block of an entry is staff-only.
    assert_eq!(raw_get(addr, "/log/blocks/0").await.0, 401);
    let (status, _) = http_get(addr, &viewer, "/log/blocks/0").await;
    assert_eq!(status, 200);
    let metrics = server.metrics_text();
    assert!(metrics.contains("gridpow_log_size 12"), "{metrics}");
    server.shutdown().await;
}

/// GET without a token: status and body bytes.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let body = buf[end + 4..].to_vec();
    assert!(
        head.contains("content-length") || body.is_empty(),
        "fixed-length bodies: {head}"
    );
    (status, body)
}

fn python_audit(addr: std::net::SocketAddr, vkey: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test-vectors/c2sp.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "audit",
            "--url",
            &format!("http://{addr}/log/"),
            "--vkey",
            vkey,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "c2sp.py audit failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs docs/ledger.md's Python proof check (its only `python` block) on `doc`.
fn python_check_proof(doc: &str, vkey: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let docs = std::fs::read_to_string(format!("{root}/docs/ledger.md")).unwrap();
    let code = docs
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ledger.md has a python block");
    let dir = tempfile::tempdir().unwrap();
    let (script, proof) = (
        dir.path().join("check_proof.py"),
        dir.path().join("proof.json"),
    );
    std::fs::write(&script, code).unwrap();
    std::fs::write(&proof, doc).unwrap();
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&proof)
        .arg(vkey)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docs/ledger.md's proof check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("log entry"));
}
