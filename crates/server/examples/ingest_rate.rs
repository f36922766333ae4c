//! Ingest throughput of the grid server, three ways on the same blocks:
//!
//! 1. **raw**: the readings' rows inserted with the store's own statement into
//!    the same schema, one transaction per batch, nothing else
//!    (`SqliteStore::insert_readings_raw`);
//! 2. **store**: `Store::commit` of the verified blocks (de-duplication, chain,
//!    time index, meters, plausibility), as the writer thread runs it;
//! 3. **end to end**: a relay-side client publishes the signed blocks over
//!    MQTT 5 + TLS to a private Mosquitto (mutual TLS); the server verifies and
//!    stores them; timed until every reading is in the database.
//!
//! ```text
//! cargo run --release -p gridpow-server --example ingest_rate -- [blocks] [frames_per_block] [meters] [readings_per_frame] [--db DB]
//! ```
//! Defaults: 200 blocks × 1000 frames × 6 readings = 1.2 M readings from 500 meters.
//! `INGEST_RATE_NO_E2E=1` skips the end-to-end part (for profiling the store).
//! `INGEST_RATE_EXPORT=1` turns the `[home_assistant]` export on (to the same
//! broker) for the end-to-end part: its cost on ingestion.
//!
//! `--db` picks the backend: `sqlite` (the default, files in a temporary
//! directory), `pg` (a private PostgreSQL started for the run, `fsync` on, see
//! `pg_harness`), or `postgres://user@host:port/db` (an existing server on
//! which the benchmark may create and drop databases named `gridpow_bench_*`).
//! On PostgreSQL every part runs in a fresh database with the full schema
//! (the same indexes) and reports, in the same run:
//!
//! 1. **raw COPY**: the readings' rows (ids and values exactly as the store
//!    writes them) by binary COPY, one transaction per batch, nothing else
//!    (`PgStore::copy_readings_raw`); with one connection and with two
//!    connections copying alternate batches concurrently;
//! 2. **store, 1 and 2 writers**: `Store::commit` of the verified blocks; with
//!    two writers the blocks are dealt alternately (as a shared subscription
//!    deals them), each writer commits its own batches concurrently, so every
//!    block arrives before its parent half the time;
//! 3. **end to end, 1 and 2 servers**: `Server::start` once or twice on the
//!    same database, sharing the subscription on a private Mosquitto (TLS).
//!
//! Measured on the 2-core development machine (release build, load ≈ 1):
//! raw 1.99 M readings/s; store 1.57 M/s (0.79 × raw, 0.80 × by CPU time);
//! end to end 1.32–1.35 M/s (0.66–0.68 × raw) with the writer thread busy
//! 92–94 % of the time: both cores are then full (writer, verifier, Mosquitto,
//! TLS on both sides, the publisher). With one reading per frame instead of
//! six, the stored frames outweigh the reading rows and the store falls to
//! ≈ 0.5 × raw: the ledger must keep every frame to re-verify it.
//!
//! PostgreSQL 15 (`--db pg`: private instance, `fsync` on, `max_wal_size` 4 GB,
//! other settings default),
//! same blocks, same machine shared with another CI job (load ≈ 2), two runs:
//!
//! | part | run 1 | run 2 |
//! |------|------:|------:|
//! | raw COPY, 1 connection | 667 k/s | 665 k/s |
//! | raw COPY, 2 connections | 824 k/s | 864 k/s |
//! | store, 1 writer | 504 k/s (0.76 × raw) | 484 k/s (0.73 × raw) |
//! | store, 2 writers | 412 k/s (0.62 ×) | 426 k/s (0.64 ×) |
//! | end to end, 1 server | 341 k/s (0.51 ×) | 432 k/s (0.65 ×) |
//! | end to end, 2 servers | 319 k/s (0.48 ×) | 310 k/s (0.47 ×) |
//!
//! Per transaction (≈ 48 k readings, 8 blocks, 500 meters) the readings' COPY
//! takes as long as the raw one (~60 ms); the rest is the blocks' raw bytes
//! (~5 ms for 1.9 MB), the runs (~7 ms for 4 000 rows), meter locks and
//! coverage (~5 ms), the closing statements (~3 ms). With one relay, two
//! writers queue on its lock (every block of a relay is decided in relay
//! order by whoever holds it), so a second server adds availability, not
//! database throughput; in end to end runs the writer thread is busy 94–98 %
//! of the time and both cores are full (PostgreSQL, Mosquitto, TLS, verify).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use gridpow_common::topics;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_proto::block::BlockBuilder;
use gridpow_proto::crypto::{MeterKeys, RustCrypto};
use gridpow_proto::pow::solve_blocking;
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::Reading;
use gridpow_server::config::{HttpConfig, MqttConfig};
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use gridpow_server::{Server, ServerConfig};
use gridpow_store::postgres::PgConn;
use gridpow_store::VerifiedBlockData;
use gridpow_store::{Arrival, Ingest, IngestStore, PgStore, QueryStore, SqliteStore};
use gridpow_testkit::pg_harness::{PgOptions, PgServer};
use gridpow_testkit::{Mosquitto, MosquittoOptions};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

const BATCH_READINGS: usize = 50_000;

fn reading(t0: u64, meter: u32, seq: u32) -> Reading {
    let ma = 1_000 + (meter * 53 + seq * 17) % 9_000;
    let v = 22_800 + (seq % 40) as u16;
    Reading {
        timestamp_ms: t0 + u64::from(seq) * 10_000,
        voltage_cv: v,
        current_ma: ma,
        active_power_dw: (f64::from(v) * f64::from(ma) * 0.97 / 10_000.0).round() as i32,
        power_factor_e4: 9_700,
        frequency_mhz: 50_000,
        energy_mwh: u64::from(seq) * 3_000,
        flags: 0,
    }
}

/// CPU seconds (user + system) this thread used, from /proc (Linux), if readable.
fn thread_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Where the PostgreSQL databases of the run come from.
enum Pg {
    Private(PgServer),
    Url(String),
}

impl Pg {
    /// A fresh, empty database; its URL.
    fn fresh(&self, name: &str) -> String {
        match self {
            Pg::Private(pg) => pg.create_database().unwrap(),
            Pg::Url(url) => {
                let db = format!("gridpow_bench_{name}");
                let mut c = PgConn::connect(url).unwrap();
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE); CREATE DATABASE {db}"
                ))
                .unwrap();
                with_database(url, &db)
            }
        }
    }
}

/// `url` naming database `db` instead.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{scheme}://{authority}/{db}{query}")
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let db_arg = all
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| all.get(i + 1).cloned())
        .unwrap_or_else(|| "sqlite".into());
    let args: Vec<u64> = all.iter().filter_map(|a| a.parse().ok()).collect();
    let blocks = args.first().copied().unwrap_or(200) as usize;
    let frames_per_block = args.get(1).copied().unwrap_or(1000) as usize;
    let meters = args.get(2).copied().unwrap_or(500) as u32;
    let per_frame = args.get(3).copied().unwrap_or(6).clamp(1, 6) as u32;
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions::default()).unwrap();
    keys.add_meters(&(1..=meters).map(|m| (m, None)).collect::<Vec<_>>())
        .unwrap();
    let site = keys.site().unwrap();
    let key_id = site.current_key_id;
    let meter_keys: Vec<MeterKeys<RustCrypto>> = (1..=meters)
        .map(|m| MeterKeys::new(&RustCrypto, key_id, &site.meter_secret(m, key_id).unwrap()))
        .collect();
    let relay_key = keys.relay_signing_key(1).unwrap();
    let t0 = gridpow_common::wall_ms() - 86_400_000;

    // Build the blocks: meters take turns, each frame carries the meter's next 6 readings.
    let started = Instant::now();
    let mut next_seq = vec![0u32; meters as usize];
    let mut counter = vec![0u32; meters as usize];
    let mut prev = [0u8; 32];
    let mut payloads = Vec::with_capacity(blocks);
    let mut turn = 0usize;
    for height in 0..blocks as u64 {
        let mut buf = vec![0u8; 1 << 20];
        let mut b = BlockBuilder::new(&mut buf).unwrap();
        for _ in 0..frames_per_block {
            let m = turn % meters as usize;
            turn += 1;
            let first = next_seq[m];
            let rs: Vec<Reading> = (first..first + per_frame)
                .map(|s| reading(t0, m as u32 + 1, s))
                .collect();
            let h = UplinkHeader {
                key_id,
                meter_id: m as u32 + 1,
                boot_epoch: 1,
                counter: counter[m],
            };
            let mut out = [0u8; 250];
            let n = seal(&RustCrypto, &meter_keys[m], &h, first, &rs, &mut out).unwrap();
            b.push_leaf(&RustCrypto, &out[..n]).unwrap();
            next_seq[m] += per_frame;
            counter[m] += 1;
        }
        let mut header = b.header(&RustCrypto, 1, height, prev, t0 + height * 1000, 8);
        solve_blocking(&mut header);
        let len = b.finish(&header, &relay_key).unwrap();
        buf.truncate(len);
        prev = header.hash(&RustCrypto);
        payloads.push(buf);
    }
    let total = (blocks * frames_per_block) as u64 * u64::from(per_frame);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "{blocks} blocks × {frames_per_block} frames × {per_frame} readings = {total} readings from {meters} meters, {:.1} MB (built in {:.1} s)",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // Verification alone.
    let mut keyring = Keyring::load(&keys).unwrap();
    let started = Instant::now();
    let verified: Vec<VerifiedBlockData> = payloads
        .iter()
        .map(|p| verify_payload(&mut keyring, 8, p).unwrap())
        .collect();
    let verify_s = started.elapsed().as_secs_f64();
    println!(
        "verify (1 thread):   {:>9.0} readings/s",
        total as f64 / verify_s
    );

    if db_arg != "sqlite" {
        let pg = if db_arg == "pg" {
            Pg::Private(
                PgServer::start_with(PgOptions {
                    fsync: true,
                    settings: vec![("max_wal_size".into(), "4GB".into())],
                })
                .unwrap(),
            )
        } else {
            Pg::Url(db_arg.clone())
        };
        postgres_parts(
            &pg,
            &keys,
            verified,
            payloads,
            total,
            frames_per_block * per_frame as usize,
        );
        return;
    }
    let only_store = std::env::var_os("INGEST_RATE_ONLY_STORE").is_some();
    // 1. Raw inserts of the same rows.
    let raw_path = dir.path().join("raw.db");
    let mut raw = SqliteStore::open(&raw_path, gridpow_store::StoreOptions::default()).unwrap();
    let cpu0 = thread_cpu_s().unwrap_or(0.0);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH_READINGS);
    for (i, v) in verified.iter().enumerate() {
        if only_store {
            break;
        }
        batch.extend_from_slice(&v.readings);
        if batch.len() >= BATCH_READINGS || i + 1 == verified.len() {
            raw.insert_readings_raw(i as i64 + 1, &batch).unwrap();
            batch.clear();
        }
    }
    let raw_s = started.elapsed().as_secs_f64();
    let raw_cpu = thread_cpu_s().unwrap_or(0.0) - cpu0;
    let raw_rate = total as f64 / raw_s;
    println!("raw insert:          {raw_rate:>9.0} readings/s  (CPU {raw_cpu:.2} s)");
    drop(raw);

    // 2. The store's commit.
    let mut store = SqliteStore::open(
        &dir.path().join("store.db"),
        gridpow_store::StoreOptions::default(),
    )
    .unwrap();
    let items: Vec<Ingest> = verified
        .into_iter()
        .map(|mut block| {
            if std::env::var_os("XP_NO_BLOB").is_some() {
                block.raw = Vec::new();
            }
            Ingest::Block {
                arrival: Arrival::default(),
                block,
            }
        })
        .collect();
    let per_tx = (BATCH_READINGS / (frames_per_block * per_frame as usize)).max(1);
    let cpu0 = thread_cpu_s().unwrap_or(0.0);
    let started = Instant::now();
    for chunk in items.chunks(per_tx) {
        store.commit(chunk, gridpow_common::wall_ms()).unwrap();
    }
    let store_s = started.elapsed().as_secs_f64();
    let store_cpu = thread_cpu_s().unwrap_or(0.0) - cpu0;
    let store_rate = total as f64 / store_s;
    println!(
        "store commit:        {store_rate:>9.0} readings/s  ({:.2} × raw; CPU {store_cpu:.2} s, {:.2} × raw by CPU)",
        store_rate / raw_rate,
        raw_cpu / store_cpu.max(1e-9)
    );
    assert_eq!(store.totals().unwrap().readings_stored, total);
    drop(store);
    drop(items);
    if std::env::var_os("INGEST_RATE_NO_E2E").is_some() {
        return;
    }

    // 3. End to end over Mosquitto with TLS.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = Mosquitto::start(
            &keys,
            &MosquittoOptions {
                require_certificate: true,
                ..Default::default()
            },
        )
        .unwrap();
        // The server runs from its least-privilege bundle (it refuses the CA key).
        let bundle = gridpow_keys::KeyDir::new(dir.path().join("server-bundle"));
        keys.export_server_bundle("server-1", &bundle).unwrap();
        let mut cfg = ServerConfig {
            keys_dir: bundle.root().to_path_buf(),
            db: dir.path().join("e2e.db").display().to_string(),
            min_difficulty: 8,
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: broker.port,
                session_expiry_s: 0,
                ..MqttConfig::default()
            },
            http: HttpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..HttpConfig::default()
            },
            ..ServerConfig::default()
        };
        if std::env::var_os("INGEST_RATE_EXPORT").is_some() {
            let (cert, key) = cfg.client_identity();
            cfg.home_assistant.enabled = true;
            cfg.home_assistant.cert = Some(cert);
            cfg.home_assistant.key = Some(key);
            println!("(with the [home_assistant] export to the same broker)");
        }
        let server = Server::start(cfg).await.unwrap();
        while !server.stats().mqtt_subscribed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = keys.tls_files("relay-1");
        let tls =
            gridpow_common::tls::client_config(&keys.ca_cert_path(), Some((&id.cert, &id.key)))
                .unwrap();
        let mut o = MqttOptions::new("bench-relay-1", "127.0.0.1", broker.port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
            .set_max_packet_size(Some(32 << 20))
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let started = Instant::now();
        for p in payloads {
            client
                .publish(topics::blocks(1), QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        let mut last = 0;
        let mut stalled = Instant::now();
        loop {
            let s = server.stats();
            if s.ledger.readings_stored >= total {
                break;
            }
            if s.ledger.readings_stored != last {
                last = s.ledger.readings_stored;
                stalled = Instant::now();
            }
            assert!(
                stalled.elapsed() < Duration::from_secs(30),
                "stalled at {last} of {total}: {s:?}\n{}",
                broker.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e2e_s = started.elapsed().as_secs_f64();
        let e2e_rate = total as f64 / e2e_s;
        println!(
            "end to end (TLS):    {e2e_rate:>9.0} readings/s  ({:.2} × raw)",
            e2e_rate / raw_rate
        );
        let m = server.metrics_text();
        let metric = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        println!(
            "  writer busy {:.0} % of the time, verifier busy {:.0} %, {} transactions",
            100.0 * metric("gridpow_server_commit_seconds_total") / e2e_s,
            100.0 * metric("gridpow_server_verify_seconds_total") / e2e_s,
            metric("gridpow_server_commits_total")
        );
        if m.contains("gridpow_export_states") {
            println!(
                "  export: {} states, {} discovery documents published, {} dropped",
                metric("gridpow_export_states_total"),
                metric("gridpow_export_discovery_total"),
                metric("gridpow_export_dropped_total")
            );
        }
        // The transparency log's share, measured inside the same commits.
        println!(
            "  transparency log: {:.1} % of the writer's commit time ({:.3} s of {:.3} s)",
            100.0 * metric("gridpow_server_log_append_seconds_total")
                / metric("gridpow_server_commit_seconds_total").max(1e-9),
            metric("gridpow_server_log_append_seconds_total"),
            metric("gridpow_server_commit_seconds_total")
        );
        server.shutdown().await;
    });
}

/// Readings per second of `f`, which stores `total` readings.
fn rate(total: u64, f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    total as f64 / started.elapsed().as_secs_f64()
}

fn postgres_parts(
    pg: &Pg,
    keys: &KeyDir,
    verified: Vec<VerifiedBlockData>,
    payloads: Vec<Vec<u8>>,
    total: u64,
    per_block: usize,
) {
    let per_tx = (BATCH_READINGS / per_block.max(1)).max(1);
    // 1. Raw COPY, ids as the store gives them (block i gets id i + 1).
    let raw_batches: Vec<Vec<(i64, &[gridpow_store::ReadingRow])>> = verified
        .chunks(per_tx)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(k, v)| ((c * per_tx + k) as i64 + 1, &v.readings[..]))
                .collect()
        })
        .collect();
    let url = pg.fresh("raw1");
    let mut raw = PgStore::open(&url, gridpow_store::StoreOptions::default()).unwrap();
    let raw1 = rate(total, || {
        for b in &raw_batches {
            raw.copy_readings_raw(b).unwrap();
        }
    });
    println!("raw COPY, 1 conn:    {raw1:>9.0} readings/s");
    let url = pg.fresh("raw2");
    let raw2 = rate(total, || {
        std::thread::scope(|s| {
            for w in 0..2 {
                let url = &url;
                let batches = &raw_batches;
                s.spawn(move || {
                    let mut raw =
                        PgStore::open(url, gridpow_store::StoreOptions::default()).unwrap();
                    for b in batches.iter().skip(w).step_by(2) {
                        raw.copy_readings_raw(b).unwrap();
                    }
                });
            }
        })
    });
    println!("raw COPY, 2 conns:   {raw2:>9.0} readings/s");

    // 2. The store's commit, one writer and two.
    let items: Vec<Ingest> = verified
        .into_iter()
        .map(|block| Ingest::Block {
            arrival: Arrival::default(),
            block,
        })
        .collect();
    let url = pg.fresh("store1");
    let mut store = PgStore::open(&url, gridpow_store::StoreOptions::default()).unwrap();
    let s1 = rate(total, || {
        for chunk in items.chunks(per_tx) {
            store.commit(chunk, gridpow_common::wall_ms()).unwrap();
        }
    });
    assert_eq!(store.totals().unwrap().readings_stored, total);
    println!(
        "store, 1 writer:     {s1:>9.0} readings/s  ({:.2} × raw COPY)",
        s1 / raw1
    );
    let url = pg.fresh("store2");
    let s2 = rate(total, || {
        std::thread::scope(|s| {
            for w in 0..2 {
                let url = &url;
                let mine: Vec<Ingest> = items.iter().skip(w).step_by(2).cloned().collect();
                s.spawn(move || {
                    let mut store =
                        PgStore::open(url, gridpow_store::StoreOptions::default()).unwrap();
                    for chunk in mine.chunks(per_tx) {
                        store.commit(chunk, gridpow_common::wall_ms()).unwrap();
                    }
                });
            }
        })
    });
    let t = PgStore::open_reader(&url).unwrap().totals().unwrap();
    assert_eq!((t.readings_stored, t.gaps_open, t.forks), (total, 0, 0));
    println!(
        "store, 2 writers:    {s2:>9.0} readings/s  ({:.2} × raw COPY 1 conn, {:.2} × 2 conns)",
        s2 / raw1,
        s2 / raw2
    );
    drop(items);
    if std::env::var_os("INGEST_RATE_NO_E2E").is_some() {
        return;
    }

    // 3. End to end, one server and two sharing the subscription.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for servers in [1u32, 2] {
        let url = pg.fresh(&format!("e2e{servers}"));
        let e2e = rt.block_on(end_to_end(keys, &url, servers, &payloads, total));
        println!(
            "end to end, {servers} server{}: {e2e:>9.0} readings/s  ({:.2} × raw COPY)",
            if servers == 1 { " " } else { "s" },
            e2e / raw1
        );
    }
}

async fn end_to_end(
    keys: &KeyDir,
    db: &str,
    servers: u32,
    payloads: &[Vec<u8>],
    total: u64,
) -> f64 {
    let broker = Mosquitto::start(
        keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .unwrap();
    let tls = keys.root().join("tls");
    let mut handles = Vec::new();
    // Each server runs from its least-privilege bundle (it refuses the CA key).
    let bundle = gridpow_keys::KeyDir::new(keys.root().with_file_name("server-bundle"));
    keys.export_server_bundle("server-1", &bundle).unwrap();
    for id in 1..=servers {
        let cfg = ServerConfig {
            keys_dir: bundle.root().to_path_buf(),
            db: db.to_string(),
            server_id: id,
            min_difficulty: 8,
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: broker.port,
                session_expiry_s: 0,
                cert: Some(tls.join("server-1.pem")),
                key: Some(tls.join("server-1.key")),
                client_id: Some(format!("bench-server-{id}")),
                ..MqttConfig::default()
            },
            http: HttpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..HttpConfig::default()
            },
            ..ServerConfig::default()
        };
        let server = Server::start(cfg).await.unwrap();
        while !server.stats().mqtt_subscribed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handles.push(server);
    }
    let id = keys.tls_files("relay-1");
    let tls = gridpow_common::tls::client_config(&keys.ca_cert_path(), Some((&id.cert, &id.key)))
        .unwrap();
    let mut o = MqttOptions::new("bench-relay-1", "127.0.0.1", broker.port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
        .set_max_packet_size(Some(32 << 20))
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    for p in payloads {
        client
            .publish(topics::blocks(1), QoS::AtLeastOnce, false, p.clone())
            .await
            .unwrap();
    }
    let mut last = 0;
    let mut stalled = Instant::now();
    loop {
        let s = handles
            .iter()
            .map(|h| h.stats())
            .max_by_key(|s| s.ledger.readings_stored)
            .unwrap();
        if s.ledger.readings_stored >= total {
            break;
        }
        if s.ledger.readings_stored != last {
            last = s.ledger.readings_stored;
            stalled = Instant::now();
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(60),
            "stalled at {last} of {total}: {s:?}\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    for h in &handles {
        let s = h.stats();
        let m = h.metrics_text();
        let metric = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        println!(
            "  server: {} messages, {} readings stored by it; writer busy {:.0} %, verifier {:.0} %, {} transactions",
            s.messages_received,
            s.readings_stored_by_this_server,
            100.0 * metric("gridpow_server_commit_seconds_total") / secs,
            100.0 * metric("gridpow_server_verify_seconds_total") / secs,
            metric("gridpow_server_commits_total")
        );
    }
    for h in handles {
        h.shutdown().await;
    }
    rate
}
