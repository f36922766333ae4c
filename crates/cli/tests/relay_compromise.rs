//! A stolen relay can invent no reading, alter none and read none.
//!
//! Real processes (`gridpow server`, `gridpow relay`, `gridpow meters`) over a
//! private Mosquitto with mutual TLS; each service runs from the bundle that
//! `gridpow keys export` made for it. While readings flow, the relay's data
//! directory (journal, outbox, state: what its flash would hold) is copied
//! again and again; its log runs at debug level. Then the relay is stopped and
//! an attacker takes **everything the relay holds** (its key bundle: signing
//! key, TLS identity, hop keys; and its journal) and publishes validly signed,
//! chained, proof-of-work-sealed blocks carrying invented and altered frames.
//! The server must refuse every one as a forged end-to-end tag, count them,
//! store nothing from them; and no reading's plaintext may appear in what the
//! relay held, in the blocks it published or in its log.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    create_token, export_bundle, free_tcp_port, free_udp_port, http_get, site_broker, start_stack,
    write_meters_config,
};
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_proto::block::BlockBuilder;
use gridpow_proto::crypto::{HopKeys, RustCrypto};
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::uplink::write_hop_tag;
use gridpow_proto::wire::UplinkPacket;

const METERS: u32 = 6;
const DIFFICULTY: u8 = 10;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Copies every file of `dir` into memory (a snapshot of the relay's flash).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter_map(|p| Some((p.clone(), std::fs::read(&p).ok()?)))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn metric(port: u16, token: &str, name: &str) -> u64 {
    let body = http_get(port, token, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Raw blocks the server stored, and its reading count.
fn stored(db: &Path) -> (Vec<(u64, Vec<u8>)>, u64) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT height, raw FROM blocks WHERE relay_id = 1 ORDER BY height")
        .unwrap();
    let blocks = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let n: i64 = c
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    (blocks, n as u64)
}

/// Signs `frames` as block `height` on top of `prev`, with the PoW the server wants.
fn forge_block(bundle: &KeyDir, height: u64, prev: [u8; 32], frames: &[Vec<u8>]) -> Vec<u8> {
    let key = bundle.relay_signing_key(1).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut b = BlockBuilder::new(&mut buf).unwrap();
    for f in frames {
        b.push_leaf(&RustCrypto, f).unwrap();
    }
    let mut h = b.header(
        &RustCrypto,
        1,
        height,
        prev,
        gridpow_common::wall_ms(),
        DIFFICULTY,
    );
    let mut solver = PowSolver::new(&RustCrypto, &h, 0, 1);
    h.nonce = loop {
        if let Some(n) = solver.solve_for(&RustCrypto, 1 << 16) {
            break n;
        }
    };
    let len = b.finish(&h, &key).unwrap();
    buf.truncate(len);
    buf
}

#[test]
fn an_attacker_with_everything_a_relay_holds_can_invent_alter_or_read_no_reading() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = KeyDir::new(root.join("keys"));
    keys.init(&InitOptions::default()).unwrap();
    keys.add_meters(&(1..=METERS).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let k = keys.root().display().to_string();
    let relay_bundle = root.join("relay-bundle").display().to_string();
    let server_bundle = root.join("server-bundle").display().to_string();
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &relay_bundle]);
    export_bundle(&["server", "--dir", &k, "--out", &server_bundle]);
    // A viewer token for /metrics, in the server's default tokens file.
    let tokens = format!("{server_bundle}/tokens.toml");
    let token = create_token(&tokens, "scraper", "viewer");
    let broker = site_broker(&keys);
    let udp = free_udp_port();
    let http = free_tcp_port();
    let db = root.join("server.db");
    let truth = root.join("truth.jsonl");
    let relay_data = root.join("relay");
    std::fs::write(
        root.join("server.toml"),
        format!("keys_dir = \"{server_bundle}\"\ndb = \"{}\"\nmin_difficulty = {DIFFICULTY}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[http]\nlisten = \"127.0.0.1:{http}\"\n", db.display(), broker.port),
    )
    .unwrap();
    std::fs::write(
        root.join("relay.toml"),
        format!(
            "relay_id = 1\nkeys_dir = \"{relay_bundle}\"\ndata_dir = \"{}\"\ndifficulty = {DIFFICULTY}\n[block]\nmax_age_ms = 300\n[radio]\nkind = \"udp\"\nudp_listen = \"127.0.0.1:{udp}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            relay_data.display(),
            broker.port
        ),
    )
    .unwrap();
    write_meters_config(root, &k, udp, 0.25, 0.1, &truth);
    let (mut server, mut relay, mut meters) = start_stack(root, "debug,rumqttc=info,rumqttd=off");
    // What a thief would find in the relay's flash, at many moments.
    let mut flash = Vec::new();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        flash.extend(snapshot(&relay_data));
        std::thread::sleep(Duration::from_millis(300));
    }
    meters.interrupt(Duration::from_secs(40));
    let truth_records = gridpow_meters::read_truth(&truth).unwrap();
    assert!(
        truth_records.len() >= 60,
        "{} readings",
        truth_records.len()
    );
    let start = Instant::now();
    while stored(&db).1 < truth_records.len() as u64 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
    }
    flash.extend(snapshot(&relay_data));
    relay.interrupt(Duration::from_secs(30));
    flash.extend(snapshot(&relay_data));
    let (blocks, readings_before) = stored(&db);
    assert_eq!(
        readings_before,
        truth_records.len() as u64,
        "every reading stored"
    );

    // 1. Confidentiality: no reading's plaintext (its 32 bytes, or its 24
    // measurement bytes after the timestamp, which the relay's own clock may
    // share) is in the relay's flash, in its published blocks or in its debug
    // log. The positive control: the frames themselves are there.
    let relay_log = std::fs::read(root.join("relay.log")).unwrap();
    let frames: Vec<Vec<u8>> = blocks
        .iter()
        .flat_map(|(_, raw)| {
            gridpow_proto::wire::BlockPacket::new_checked(&raw[..])
                .unwrap()
                .leaves()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!frames.is_empty());
    assert!(
        flash.iter().any(|(_, b)| contains(b, &frames[0][..20])),
        "the snapshots hold the relay's journal"
    );
    for t in &truth_records {
        let plain = t.reading().to_bytes();
        let measurement = plain[8..].to_vec();
        for (path, bytes) in &flash {
            assert!(
                !contains(bytes, &plain) && !contains(bytes, &measurement),
                "reading {}/{}/{} in the clear in {}",
                t.meter_id,
                t.boot_epoch,
                t.seq,
                path.display()
            );
        }
        for (h, raw) in &blocks {
            assert!(
                !contains(raw, &plain) && !contains(raw, &measurement),
                "block {h}"
            );
        }
        assert!(!contains(&relay_log, &plain) && !contains(&relay_log, &measurement));
        if t.energy_mwh >= 1_000_000 {
            let dec = t.energy_mwh.to_string();
            assert!(
                !contains(&relay_log, dec.as_bytes()),
                "energy {dec} in the relay log"
            );
        }
    }

    // 2. Integrity: the attacker holds the relay's bundle and journal.
    let bundle = KeyDir::new(&relay_bundle);
    let hop = bundle.hop_secrets().unwrap();
    let (head_height, head_raw) = blocks.last().unwrap();
    let head = *gridpow_proto::wire::BlockPacket::new_checked(&head_raw[..])
        .unwrap()
        .header();
    let head_hash = head.hash(&RustCrypto);
    // The newest of the shortest frames, so another meter's ciphertext fits it.
    let shortest = frames.iter().map(Vec::len).min().unwrap();
    let genuine = frames
        .iter()
        .rev()
        .find(|f| f.len() == shortest)
        .unwrap()
        .clone();
    let g = UplinkPacket::new_checked(&genuine[..]).unwrap();
    let hk = HopKeys::new(g.key_id(), &hop[&(g.meter_id(), g.key_id())]);
    let n = genuine.len();
    let mut forged: Vec<(&str, Vec<u8>)> = Vec::new();
    // An invented frame: fresh counter and sequence numbers, made-up ciphertext and tag.
    let mut invented = genuine.clone();
    invented[12..16].copy_from_slice(&(g.counter() + 1000).to_le_bytes());
    invented[16..20].copy_from_slice(&(g.first_seq() + 5000).to_le_bytes());
    for (i, b) in invented[20..n - 16].iter_mut().enumerate() {
        *b = i as u8 ^ 0xa5;
    }
    forged.push(("invented", invented));
    let mut altered = genuine.clone();
    altered[21] ^= 0x01;
    forged.push(("reading altered", altered));
    let mut reseq = genuine.clone();
    reseq[16] ^= 0x01;
    forged.push(("first_seq altered", reseq));
    let mut retag = genuine.clone();
    retag[n - 20] ^= 0x01;
    forged.push(("e2e tag altered", retag));
    // Another meter's ciphertext (as much as fits) under this meter's header.
    let other = frames
        .iter()
        .rev()
        .find(|f| f.len() >= n && f[4..8] != genuine[4..8])
        .expect("a frame of another meter");
    let mut spliced = genuine.clone();
    spliced[20..n - 16].copy_from_slice(&other[20..n - 16]);
    forged.push(("ciphertext spliced", spliced));
    for (_, f) in &mut forged {
        write_hop_tag(&RustCrypto, &hk, f).unwrap();
        // The relay's own ingress would accept each: the hop tag is valid.
        let p = UplinkPacket::new_checked(&f[..]).unwrap();
        assert_eq!(p.verify_hop(&RustCrypto, &hk), Ok(()));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let published = rt.block_on(async {
        let id = bundle.tls_files("relay-1");
        let tls =
            gridpow_common::tls::client_config(&bundle.ca_cert_path(), Some((&id.cert, &id.key)))
                .unwrap();
        let mut o = rumqttc::v5::MqttOptions::new("gridpow-relay-1", "127.0.0.1", broker.port);
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
        let (client, mut ev) = rumqttc::v5::AsyncClient::new(o, 64);
        tokio::spawn(async move {
            loop {
                if ev.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        for (_, f) in &forged {
            let block = forge_block(&bundle, head_height + 1, head_hash, std::slice::from_ref(f));
            client
                .publish(
                    gridpow_common::topics::blocks(1),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    block,
                )
                .await
                .unwrap();
        }
        forged.len() as u64
    });
    let want = published;
    let counter = "gridpow_server_quarantined_total{reason=\"bad_tag\"}";
    let start = Instant::now();
    while metric(http, &token, counter) < want && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        metric(http, &token, counter),
        want,
        "every forged frame refused as a bad end-to-end tag ({:?})",
        forged.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    let (after, readings_after) = stored(&db);
    assert_eq!(readings_after, readings_before, "nothing forged was stored");
    assert_eq!(after.len(), blocks.len(), "no forged block was stored");
    drop(rt);
    server.interrupt(Duration::from_secs(30));
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(["verify-ledger", "--db", &db.to_string_lossy(), "--keys", &k])
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "verify-ledger: {}",
        String::from_utf8_lossy(&v.stdout)
    );
}
