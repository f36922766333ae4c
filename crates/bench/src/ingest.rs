//! The grid server's ingest on the same blocks, three ways:
//!
//! 1. **raw**: the readings' rows inserted with the store's own statement
//!    into the same schema and indexes, one transaction per batch, nothing
//!    else (SQLite `insert_readings_raw`; PostgreSQL binary `COPY`);
//! 2. **store**: `Store::commit` of the verified blocks (de-duplication,
//!    chain, transparency log, time index, meters, plausibility), as the
//!    server's writer thread runs it;
//! 3. **end to end**: a relay-side client publishes the signed blocks over
//!    MQTT 5 with mutual TLS to a private Mosquitto; the server verifies and
//!    stores them; timed until every reading is in the database.

use std::path::Path;
use std::time::{Duration, Instant};

use gridpow_common::topics;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_proto::crypto::{MeterKeys, RustCrypto};
use gridpow_server::config::{HttpConfig, MqttConfig};
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use gridpow_server::{ServerConfig, ServerHandle};
use gridpow_store::postgres::PgConn;
use gridpow_store::{
    Arrival, Ingest, IngestStore, PgStore, QueryStore, ReadingRow, SqliteStore, StoreOptions,
    VerifiedBlockData,
};
use gridpow_testkit::pg_harness::{PgOptions, PgServer};
use gridpow_testkit::{Mosquitto, MosquittoOptions};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde::Serialize;

use crate::fixtures::{BlockShape, ChainBuilder, MeterRing};
use crate::sys::thread_cpu_seconds;
use crate::{setup, BenchError};

/// Readings per store transaction, as the writer batches them under load.
pub const BATCH_READINGS: usize = 50_000;

/// The difficulty of the benchmark's blocks (and the server's minimum).
const DIFFICULTY: u8 = 8;

/// Where the readings go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files in a temporary directory.
    Sqlite,
    /// A private PostgreSQL started for the run (`fsync` on).
    PgPrivate,
    /// An existing PostgreSQL on which the run may create and drop databases
    /// named `gridpow_bench_*`.
    PgUrl(String),
}

impl Backend {
    /// Parses `sqlite`, `pg` or a `postgres://` URL.
    pub fn parse(s: &str) -> Result<Backend, BenchError> {
        match s {
            "sqlite" => Ok(Backend::Sqlite),
            "pg" => Ok(Backend::PgPrivate),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Backend::PgUrl(url.to_string()))
            }
            other => Err(BenchError::Usage(format!(
                "--db {other:?}: expected sqlite, pg (a private PostgreSQL) or a postgres:// URL"
            ))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::PgPrivate | Backend::PgUrl(_) => "postgresql",
        }
    }
}

/// What to ingest.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Blocks of one relay's chain.
    pub blocks: usize,
    /// Frames per block.
    pub frames_per_block: usize,
    /// Meters taking turns (ids 1..=meters).
    pub meters: u32,
    /// Readings per frame (1 to 6).
    pub per_frame: usize,
    /// The database.
    pub backend: Backend,
    /// Whether to run the end-to-end part (needs `mosquitto`).
    pub end_to_end: bool,
    /// Turns the `[home_assistant]` export on (to the same broker) for the end-to-end part.
    pub export: bool,
}

impl IngestOptions {
    /// Readings in the run.
    pub fn total(&self) -> u64 {
        (self.blocks * self.frames_per_block * self.per_frame) as u64
    }
}

/// The end-to-end part's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EndToEnd {
    /// Servers sharing the subscription.
    pub servers: u32,
    /// Readings stored per second, from the first publish to the last commit.
    pub readings_per_s: f64,
    /// The same ÷ the raw insert rate of this run (goal ≥ 0.8 on SQLite).
    pub over_raw: f64,
    /// Share of the wall time the (first) server's writer thread was committing.
    pub writer_busy: f64,
    /// Share of the wall time the (first) server's verifier thread was verifying.
    pub verifier_busy: f64,
    /// Store transactions the (first) server committed.
    pub transactions: f64,
    /// The transparency log's share of the writer's commit time.
    pub log_share_of_commit: f64,
    /// `[home_assistant]` states published, discovery documents, drops (when on).
    pub export: Option<[f64; 3]>,
}

/// Ingest figures.
#[derive(Clone, Debug, Serialize)]
pub struct IngestFigures {
    /// `sqlite` or `postgresql`.
    pub backend: &'static str,
    /// Blocks × frames × readings per frame.
    pub blocks: usize,
    /// Frames per block.
    pub frames_per_block: usize,
    /// Readings per frame.
    pub readings_per_frame: usize,
    /// Readings in all.
    pub readings: u64,
    /// Verification alone (`verify_payload`, one thread), readings per second.
    pub verify_readings_per_s: f64,
    /// Baseline: raw insert of the same rows (SQLite) or binary COPY (PostgreSQL).
    pub raw_readings_per_s: f64,
    /// The store's commit, readings per second.
    pub store_readings_per_s: f64,
    /// Store ÷ raw.
    pub store_over_raw: f64,
    /// Store ÷ raw by the committing thread's CPU time, where Linux tells it and
    /// both took at least 50 ms of it (it comes in 10 ms ticks).
    pub store_over_raw_by_cpu: Option<f64>,
    /// The end-to-end part, if it ran.
    pub end_to_end: Option<EndToEnd>,
    /// Why the end-to-end part did not run, if it did not.
    pub end_to_end_skipped: Option<String>,
}

/// A site with keys for `meters` meters and relay 1, and that relay's chain.
pub struct Site {
    /// The temporary directory holding keys and databases.
    pub dir: tempfile::TempDir,
    /// The site's key directory (with the CA key: the run plays every role).
    pub keys: KeyDir,
    ring: MeterRing,
    relay_key: ed25519_dalek::SigningKey,
}

impl Site {
    /// Creates the keys of a site with meters `1..=meters`.
    pub fn new(meters: u32) -> Result<Site, BenchError> {
        let dir = tempfile::tempdir().map_err(setup("a temporary directory"))?;
        let keys = KeyDir::new(dir.path().join("keys"));
        keys.init(&InitOptions::default())
            .map_err(setup("the site's keys"))?;
        keys.add_meters(&(1..=meters).map(|m| (m, None)).collect::<Vec<_>>())
            .map_err(setup("the meters' keys"))?;
        let site = keys.site().map_err(setup("the site's keys"))?;
        let key_id = site.current_key_id;
        let ring = (1..=meters)
            .map(|m| {
                site.meter_secret(m, key_id)
                    .map(|s| MeterKeys::new(&RustCrypto, key_id, &s))
                    .ok_or_else(|| BenchError::Wrong(format!("meter {m} has no secret")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let relay_key = keys
            .relay_signing_key(1)
            .map_err(setup("relay 1's signing key"))?;
        Ok(Site {
            dir,
            keys,
            ring: MeterRing(ring),
            relay_key,
        })
    }

    /// Relay 1's chain of `blocks` blocks, a day old, meters taking turns.
    pub fn chain(
        &self,
        blocks: usize,
        frames_per_block: usize,
        per_frame: usize,
    ) -> Result<Vec<Vec<u8>>, BenchError> {
        let t0 = gridpow_common::wall_ms() - 86_400_000;
        let mut chain = ChainBuilder::new(&self.ring, 1, self.relay_key.clone(), t0);
        let shape = BlockShape {
            readings: frames_per_block * per_frame,
            per_frame,
            difficulty: DIFFICULTY,
        };
        (0..blocks)
            .map(|_| chain.next_block(shape).map_err(BenchError::from))
            .collect()
    }

    /// Verifies every payload as the server does; the verified blocks and
    /// the rate in readings per second.
    pub fn verify(
        &self,
        payloads: &[Vec<u8>],
        total: u64,
    ) -> Result<(Vec<VerifiedBlockData>, f64), BenchError> {
        let mut keyring = Keyring::load(&self.keys).map_err(setup("the server's keyring"))?;
        let started = Instant::now();
        let verified = payloads
            .iter()
            .map(|p| {
                verify_payload(&mut keyring, DIFFICULTY, p)
                    .map_err(|r| BenchError::Wrong(format!("a benchmark block was refused: {r:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((verified, total as f64 / started.elapsed().as_secs_f64()))
    }
}

/// Readings per second of `f`, which stores `total` readings, and the CPU
/// seconds the calling thread spent in it.
pub fn timed<T>(
    total: u64,
    f: impl FnOnce() -> Result<T, BenchError>,
) -> Result<(f64, Option<f64>), BenchError> {
    let cpu0 = thread_cpu_seconds();
    let started = Instant::now();
    f()?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds().zip(cpu0).map(|(a, b)| a - b);
    Ok((rate, cpu))
}

/// Blocks per store transaction for blocks of `per_block` readings.
pub fn blocks_per_tx(per_block: usize) -> usize {
    (BATCH_READINGS / per_block.max(1)).max(1)
}

/// The verified blocks as the writer receives them.
pub fn as_items(verified: Vec<VerifiedBlockData>) -> Vec<Ingest> {
    verified
        .into_iter()
        .map(|block| Ingest::Block {
            arrival: Arrival::default(),
            block,
        })
        .collect()
}

/// The raw rows in transactions of about [`BATCH_READINGS`], each with the
/// block id the store would give it (block `i` gets id `i + 1`).
pub fn raw_batches(
    verified: &[VerifiedBlockData],
    per_tx: usize,
) -> Vec<Vec<(i64, &[ReadingRow])>> {
    verified
        .chunks(per_tx)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(k, v)| ((c * per_tx + k) as i64 + 1, &v.readings[..]))
                .collect()
        })
        .collect()
}

/// Commits `items` as the writer does, `per_tx` blocks per transaction,
/// and checks that `total` readings were stored: the rate and CPU seconds.
fn commit_all<S: IngestStore + QueryStore>(
    store: &mut S,
    items: Vec<Ingest>,
    per_tx: usize,
    total: u64,
) -> Result<(f64, Option<f64>), BenchError> {
    let timing = timed(total, || {
        for chunk in items.chunks(per_tx) {
            store
                .commit(chunk, gridpow_common::wall_ms())
                .map_err(setup("the store's commit"))?;
        }
        Ok(())
    })?;
    expect_stored(store, total)?;
    Ok(timing)
}

/// Checks that a store holds exactly `total` readings.
fn expect_stored(store: &mut dyn QueryStore, total: u64) -> Result<(), BenchError> {
    let stored = store
        .totals()
        .map_err(setup("the store's totals"))?
        .readings_stored;
    if stored == total {
        Ok(())
    } else {
        Err(BenchError::Wrong(format!(
            "the store holds {stored} readings, {total} were committed"
        )))
    }
}

/// Where the PostgreSQL databases of a run come from.
pub enum Pg {
    /// A private server started for the run.
    Private(PgServer),
    /// An existing server.
    Url(String),
}

impl Pg {
    /// Starts a private server (`fsync` on) or connects to `url`.
    pub fn for_backend(backend: &Backend) -> Result<Option<Pg>, BenchError> {
        Ok(match backend {
            Backend::Sqlite => None,
            Backend::PgPrivate => Some(Pg::Private(
                PgServer::start_with(PgOptions {
                    fsync: true,
                    settings: vec![("max_wal_size".into(), "4GB".into())],
                })
                .map_err(setup("a private PostgreSQL (is postgresql installed?)"))?,
            )),
            Backend::PgUrl(url) => Some(Pg::Url(url.clone())),
        })
    }

    /// A fresh, empty database; its URL.
    pub fn fresh(&self, name: &str) -> Result<String, BenchError> {
        match self {
            Pg::Private(pg) => pg.create_database().map_err(setup("a PostgreSQL database")),
            Pg::Url(url) => {
                let db = format!("gridpow_bench_{name}");
                let mut c = PgConn::connect(url).map_err(setup("PostgreSQL"))?;
                c.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE); CREATE DATABASE {db}"
                ))
                .map_err(setup("a PostgreSQL database"))?;
                with_database(url, &db)
            }
        }
    }
}

/// `url` naming database `db` instead.
fn with_database(url: &str, db: &str) -> Result<String, BenchError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| BenchError::Usage(format!("{url:?} is not a URL")))?;
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{db}{query}"))
}

/// Runs the three parts; `progress` hears what is happening.
pub fn run(
    opts: &IngestOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<IngestFigures, BenchError> {
    let total = opts.total();
    let per_block = opts.frames_per_block * opts.per_frame;
    progress(&format!(
        "ingest: building {} blocks × {} frames × {} readings from {} meters",
        opts.blocks, opts.frames_per_block, opts.per_frame, opts.meters
    ));
    let site = Site::new(opts.meters)?;
    let payloads = site.chain(opts.blocks, opts.frames_per_block, opts.per_frame)?;
    let (verified, verify_rate) = site.verify(&payloads, total)?;
    let per_tx = blocks_per_tx(per_block);
    let pg = Pg::for_backend(&opts.backend)?;
    progress(&format!(
        "ingest: raw insert and store commit ({})",
        opts.backend.name()
    ));
    let (raw, raw_cpu, store, store_cpu, db) = match &pg {
        None => {
            let (raw, raw_cpu) = {
                let mut raw =
                    SqliteStore::open(&site.dir.path().join("raw.db"), StoreOptions::default())
                        .map_err(setup("a SQLite database"))?;
                // Rows flattened before the clock starts: the baseline does nothing but insert.
                let batches: Vec<(i64, Vec<ReadingRow>)> = raw_batches(&verified, per_tx)
                    .iter()
                    .map(|b| {
                        let last = b.last().map_or(0, |(id, _)| *id);
                        (
                            last,
                            b.iter().flat_map(|(_, r)| r.iter().cloned()).collect(),
                        )
                    })
                    .collect();
                timed(total, || {
                    for (block_id, rows) in &batches {
                        raw.insert_readings_raw(*block_id, rows)
                            .map_err(setup("the raw insert"))?;
                    }
                    Ok(())
                })?
            };
            let mut store =
                SqliteStore::open(&site.dir.path().join("store.db"), StoreOptions::default())
                    .map_err(setup("a SQLite database"))?;
            let (rate, cpu) = commit_all(&mut store, as_items(verified), per_tx, total)?;
            (
                raw,
                raw_cpu,
                rate,
                cpu,
                site.dir.path().join("e2e.db").display().to_string(),
            )
        }
        Some(pg) => {
            let batches = raw_batches(&verified, per_tx);
            let mut raw = PgStore::open(&pg.fresh("raw")?, StoreOptions::default())
                .map_err(setup("a PostgreSQL store"))?;
            let (raw_rate, raw_cpu) = timed(total, || {
                for b in &batches {
                    raw.copy_readings_raw(b).map_err(setup("the raw COPY"))?;
                }
                Ok(())
            })?;
            drop(batches);
            let mut store = PgStore::open(&pg.fresh("store")?, StoreOptions::default())
                .map_err(setup("a PostgreSQL store"))?;
            let (rate, cpu) = commit_all(&mut store, as_items(verified), per_tx, total)?;
            (raw_rate, raw_cpu, rate, cpu, pg.fresh("e2e")?)
        }
    };
    let mut figures = IngestFigures {
        backend: opts.backend.name(),
        blocks: opts.blocks,
        frames_per_block: opts.frames_per_block,
        readings_per_frame: opts.per_frame,
        readings: total,
        verify_readings_per_s: verify_rate,
        raw_readings_per_s: raw,
        store_readings_per_s: store,
        store_over_raw: store / raw,
        // CPU time comes in 10 ms ticks: below a few ticks the ratio says nothing.
        store_over_raw_by_cpu: raw_cpu
            .zip(store_cpu)
            .filter(|&(r, s)| r >= 0.05 && s >= 0.05)
            .map(|(r, s)| r / s),
        end_to_end: None,
        end_to_end_skipped: None,
    };
    if !opts.end_to_end {
        figures.end_to_end_skipped = Some("not asked for".into());
        return Ok(figures);
    }
    progress("ingest: end to end over Mosquitto with mutual TLS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(setup("a Tokio runtime"))?;
    match rt.block_on(end_to_end(
        &site.keys,
        &db,
        1,
        &payloads,
        total,
        raw,
        opts.export,
    )) {
        Ok(e2e) => figures.end_to_end = Some(e2e),
        Err(BenchError::Missing(what)) => figures.end_to_end_skipped = Some(what),
        Err(e) => return Err(e),
    }
    Ok(figures)
}

/// Publishes `payloads` as relay 1 to a private Mosquitto and times until
/// `servers` servers sharing the subscription have stored `total` readings
/// in `db`; `raw_rate` is the baseline the rate is compared with.
#[allow(clippy::too_many_arguments)]
pub async fn end_to_end(
    keys: &KeyDir,
    db: &str,
    servers: u32,
    payloads: &[Vec<u8>],
    total: u64,
    raw_rate: f64,
    export: bool,
) -> Result<EndToEnd, BenchError> {
    let broker = Mosquitto::start(
        keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .map_err(|e| match e {
        gridpow_testkit::MosquittoError::Missing(_) => BenchError::Missing(e.to_string()),
        e => setup("a private Mosquitto")(e),
    })?;
    // Each server runs from its least-privilege bundle (it refuses the CA key).
    let bundle_dir = keys
        .root()
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("server-bundle-{servers}"));
    let bundle = KeyDir::new(&bundle_dir);
    keys.export_server_bundle("server-1", &bundle)
        .map_err(setup("the server's key bundle"))?;
    // No API is used: an empty tokens file says so (a missing one is warned about).
    gridpow_server::auth::TokenFile::default()
        .save(&bundle.root().join("tokens.toml"))
        .map_err(setup("the server's tokens file"))?;
    let mut handles: Vec<ServerHandle> = Vec::new();
    for id in 1..=servers {
        let mut cfg = ServerConfig {
            keys_dir: bundle.root().to_path_buf(),
            db: db.to_string(),
            server_id: id,
            min_difficulty: DIFFICULTY,
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: broker.port,
                session_expiry_s: 0,
                client_id: Some(format!("bench-server-{id}")),
                ..MqttConfig::default()
            },
            http: HttpConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                ..HttpConfig::default()
            },
            ..ServerConfig::default()
        };
        if export {
            let (cert, key) = cfg.client_identity();
            cfg.home_assistant.enabled = true;
            cfg.home_assistant.cert = Some(cert);
            cfg.home_assistant.key = Some(key);
        }
        let server = gridpow_server::Server::start(cfg)
            .await
            .map_err(setup("the grid server"))?;
        let subscribed_by = Instant::now() + Duration::from_secs(30);
        while !server.stats().mqtt_subscribed {
            if Instant::now() > subscribed_by {
                return Err(BenchError::Stalled(format!(
                    "the server did not subscribe within 30 s; broker log:\n{}",
                    broker.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handles.push(server);
    }
    // Relay 1's client, built as every gridpow client is (site CA, its certificate).
    let id = keys.tls_files("relay-1");
    let mut o = gridpow_common::mqtt::ClientSettings {
        client_id: "bench-relay-1".into(),
        host: "127.0.0.1".into(),
        port: broker.port,
        keep_alive_s: 30,
        tls: Some(gridpow_common::mqtt::ClientTls {
            ca: keys.ca_cert_path(),
            cert: id.cert,
            key: id.key,
            identity_configured: true,
        }),
    }
    .v5()
    .map_err(setup("relay 1's TLS client"))?;
    o.set_max_packet_size(Some(32 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let started = Instant::now();
    for p in payloads {
        client
            .publish(topics::blocks(1), QoS::AtLeastOnce, false, p.clone())
            .await
            .map_err(setup("publishing a block"))?;
    }
    let mut last = 0;
    let mut stalled = Instant::now();
    loop {
        let stored = handles
            .iter()
            .map(|h| h.stats().ledger.readings_stored)
            .max()
            .unwrap_or(0);
        if stored >= total {
            break;
        }
        if stored != last {
            last = stored;
            stalled = Instant::now();
        }
        if stalled.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::Stalled(format!(
                "no reading stored for 60 s, at {last} of {total}; broker log:\n{}",
                broker.log()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let m = handles
        .first()
        .map(|h| h.metrics_text())
        .unwrap_or_default();
    let metric = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let commit_s = metric("gridpow_server_commit_seconds_total");
    let figures = EndToEnd {
        servers,
        readings_per_s: total as f64 / secs,
        over_raw: total as f64 / secs / raw_rate.max(1e-9),
        writer_busy: commit_s / secs,
        verifier_busy: metric("gridpow_server_verify_seconds_total") / secs,
        transactions: metric("gridpow_server_commits_total"),
        log_share_of_commit: metric("gridpow_server_log_append_seconds_total") / commit_s.max(1e-9),
        export: export.then(|| {
            [
                metric("gridpow_export_states_total"),
                metric("gridpow_export_discovery_total"),
                metric("gridpow_export_dropped_total"),
            ]
        }),
    };
    for h in handles {
        h.shutdown().await;
    }
    Ok(figures)
}
