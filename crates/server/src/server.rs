//! Starting and stopping the grid server: the ingest pipeline, the HTTP API
//! and the dashboard, on the caller's tokio runtime (plus two threads of its
//! own for verification and database writes).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gridpow_common::datadir::{check_sqlite_writable, DataDirError};
use gridpow_common::tls::TlsError;
use gridpow_common::topics;
use gridpow_keys::{KeyDir, KeyError};
use rumqttc::v5::{AsyncClient, MqttOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, ServerConfig};
use crate::ingest::{self, Phase, WriterSettings};
use crate::keyring::Keyring;
use crate::metrics::{ServerStats, Shared};
use crate::transparency::LogService;
use gridpow_store::{self, StoreError};
use gridpow_store::{Rules, StoreOptions};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key or registry file is missing or invalid.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// The TLS files could not be used.
    #[error("MQTT TLS: {0}")]
    Tls(#[from] TlsError),
    /// The HTTP listener's TLS certificate or key could not be used.
    #[error("HTTP TLS: {0}")]
    HttpTls(#[source] TlsError),
    /// The SQLite database is in use by another process, or not writable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The HTTP listener could not be bound.
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The transparency log's note key or a witness key is unusable.
    #[error(transparent)]
    Log(#[from] crate::transparency::LogServiceError),
    /// The `[home_assistant]` export could not start.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Spawn {
        /// Which.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The grid server.
#[derive(Debug)]
pub struct Server;

/// A running server. Drop it only after [`ServerHandle::shutdown`]: dropping
/// it stops nothing (the tasks run until the runtime ends).
#[derive(Debug)]
pub struct ServerHandle {
    http_addr: SocketAddr,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    stopping: Arc<AtomicBool>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    mqtt: JoinHandle<()>,
    acker: JoinHandle<()>,
    http: JoinHandle<()>,
    checkpoints: JoinHandle<()>,
    checkpoints_stop: watch::Sender<bool>,
    /// Moved by [`ServerHandle::reload_tls`]; the MQTT and HTTPS reloaders watch it.
    tls_reload: watch::Sender<u64>,
    /// The `[home_assistant]` export: ends once the writer dropped its queue.
    export: Option<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Opens the database (applying migrations), loads the keys, connects to
    /// the broker and starts serving HTTP. Must run inside a multi-thread
    /// tokio runtime.
    pub async fn start(cfg: ServerConfig) -> Result<ServerHandle, ServerError> {
        cfg.validate(Path::new("server configuration"))?;
        let opened = open(&cfg)?;
        let http = bind_http(&cfg).await?;
        spawn(cfg, opened, http)
    }
}

/// What the server opens before any thread runs: its keys and the database.
struct Opened {
    keys: KeyDir,
    keyring: Keyring,
    signing_key: ed25519_dalek::SigningKey,
    log: LogService,
    writer_store: Box<dyn gridpow_store::Store>,
    shared: Arc<Shared>,
}

/// Loads the keys and opens the database for the writer (applying
/// migrations) and once for a reader, so a fault surfaces now, not at the
/// first block or request.
fn open(cfg: &ServerConfig) -> Result<Opened, ServerError> {
    let keys = KeyDir::new(&cfg.keys_dir);
    keys.check_role(gridpow_keys::Role::Server)?;
    let keyring = Keyring::load(&keys)?;
    let signing_key = keys.server_signing_key()?;
    let log = LogService::new(&cfg.log, keys.log_note_seed()?)?;
    tracing::info!(
        origin = %cfg.log.origin,
        vkey = %log.vkey(),
        "Transparency log: checkpoints are signed with this note key."
    );
    // A read-only database or directory is refused now, rather than
    // after minutes of failed commits. No lock: several servers may share
    // one database, SQLite or PostgreSQL (crates/cli/tests/crash.rs).
    if let gridpow_store::DbUrl::Sqlite(path) = gridpow_store::DbUrl::parse(&cfg.db)? {
        check_sqlite_writable(&path)?;
    }
    let mut writer_store = gridpow_store::open_store(
        &cfg.db,
        StoreOptions {
            rules: Rules::new(cfg.plausibility.clone()),
            limits: cfg.quarantine.store_limits(),
        },
    )?;
    let shared = Arc::new(Shared {
        started_ms: gridpow_common::wall_ms(),
        ..Shared::default()
    });
    shared.set_totals(writer_store.totals()?);
    shared
        .log
        .min_cosignatures
        .store(cfg.log.min_cosignatures as u64, Ordering::Relaxed);
    // Fail now, not at the first request, if the readers cannot open the database.
    drop(gridpow_store::open_reader(&cfg.db)?);
    Ok(Opened {
        keys,
        keyring,
        signing_key,
        log,
        writer_store,
        shared,
    })
}

/// The HTTP listener, bound, with its TLS acceptor when configured.
struct Http {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The HTTPS certificate, reloadable.
    https: Option<crate::certs::HttpsTls>,
}

async fn bind_http(cfg: &ServerConfig) -> Result<Http, ServerError> {
    let https = match (&cfg.http.tls_cert, &cfg.http.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::certs::HttpsTls::load(cert, key).map_err(ServerError::HttpTls)?)
        }
        _ => None,
    };
    let tls = match &https {
        Some(h) => {
            Some(crate::certs::https_acceptor(h.resolver.clone()).map_err(ServerError::HttpTls)?)
        }
        None => None,
    };
    raise_open_file_limit(cfg.http.max_connections);
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| ServerError::Http {
            addr: cfg.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Http {
        addr: cfg.http.listen,
        source,
    })?;
    Ok(Http {
        listener,
        addr,
        tls,
        https,
    })
}

/// Starts the verifier and writer threads, the MQTT and acknowledgement
/// tasks and the HTTP server on what [`open`] and [`bind_http`] prepared.
fn spawn(cfg: ServerConfig, opened: Opened, http: Http) -> Result<ServerHandle, ServerError> {
    let Opened {
        keys,
        keyring,
        signing_key,
        log,
        writer_store,
        shared,
    } = opened;
    let Http {
        listener,
        addr: http_addr,
        tls: http_tls,
        https,
    } = http;
    let settings = client_settings(&cfg);
    let options = mqtt_options(&cfg, &settings)?;
    let mqtt_tls = gridpow_common::tls_reload::MqttTls::new(settings, &shared.certs.mqtt);
    let (tls_reload, tls_asks) = watch::channel(0u64);
    if let Some(h) = https {
        tokio::spawn(crate::certs::https_reload_task(
            h,
            tls_asks.clone(),
            shared.clone(),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, 1024);
    let (filter, proof_filter) = if cfg.mqtt.shared_subscription {
        (
            topics::shared_blocks(),
            format!(
                "$share/{}/{}",
                topics::SERVER_GROUP,
                topics::all_log_requests()
            ),
        )
    } else {
        (topics::all_blocks(), topics::all_log_requests())
    };

    let (inbound_tx, inbound_rx) = std::sync::mpsc::channel();
    let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel(256);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let stopping = Arc::new(AtomicBool::new(false));
    let (export_queue, export) = match crate::export::start(&cfg, shared.clone())? {
        Some((q, task)) => (Some(q), Some(task)),
        None => (None, None),
    };

    let mut threads = Vec::new();
    {
        let shared = shared.clone();
        let min = cfg.min_difficulty;
        threads.push(
            std::thread::Builder::new()
                .name("gridpow-verify".into())
                .spawn(move || {
                    ingest::verifier_thread(inbound_rx, verified_tx, keyring, min, shared)
                })
                .map_err(|source| ServerError::Spawn {
                    what: "verifier",
                    source,
                })?,
        );
    }
    {
        let shared = shared.clone();
        let stopping = stopping.clone();
        let settings = WriterSettings {
            max_batch_readings: cfg.ingest.max_batch_readings,
            max_batch_blocks: cfg.ingest.max_batch_blocks,
            server_id: cfg.server_id,
            signing_key,
            silent_after_ms: cfg.plausibility.silent_after_ms(),
            export: export_queue,
        };
        threads.push(
            std::thread::Builder::new()
                .name("gridpow-writer".into())
                .spawn(move || {
                    ingest::writer_thread(
                        writer_store,
                        verified_rx,
                        ack_tx,
                        settings,
                        shared,
                        stopping,
                    )
                })
                .map_err(|source| ServerError::Spawn {
                    what: "writer",
                    source,
                })?,
        );
    }
    let acker = tokio::spawn(ingest::acker_task(client.clone(), ack_rx, shared.clone()));
    let (checkpoints_stop, stop_rx) = watch::channel(false);
    let checkpoints = tokio::spawn(crate::transparency::checkpoint_task(
        log,
        cfg.db.clone(),
        shared.clone(),
        client.clone(),
        stop_rx,
    ));
    let (proof_tx, proof_rx) = mpsc::channel(crate::transparency::PROOF_QUEUE);
    // Ends when the MQTT task drops its sender.
    tokio::spawn(crate::transparency::relay_proof_task(
        cfg.db.clone(),
        shared.clone(),
        client.clone(),
        proof_rx,
    ));
    let mqtt = tokio::spawn(ingest::mqtt_task(
        eventloop,
        cfg.broker_target(),
        client,
        ingest::Filters {
            blocks: filter,
            log_requests: proof_filter,
        },
        proof_tx,
        inbound_tx,
        phase_rx,
        shared.clone(),
        ingest::Reload {
            tls: mqtt_tls,
            asks: tls_asks,
        },
    ));

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = crate::api::router(
        crate::api::ApiState::new(cfg.db.clone(), keys, shared.clone(), &cfg.plausibility),
        crate::auth::Gate::new(&cfg, http_addr, shared.clone()),
    );
    let http = tokio::spawn(crate::http_serve::serve(
        listener,
        http_tls.clone(),
        app,
        crate::http_serve::Limits::from_config(&cfg.http),
        shared.clone(),
        async {
            let _ = http_stop_rx.await;
        },
    ));
    tracing::info!(
        http = %http_addr,
        https = http_tls.is_some(),
        broker = %format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port),
        db = %cfg.db,
        server_id = cfg.server_id,
        "Grid server started."
    );
    Ok(ServerHandle {
        http_addr,
        shared,
        phase: phase_tx,
        stopping,
        http_stop: Some(http_stop_tx),
        mqtt,
        acker,
        http,
        checkpoints,
        checkpoints_stop,
        tls_reload,
        export,
        threads,
    })
}

/// Raises the soft open-file limit towards the hard one so that
/// `max_connections` sockets plus the database and broker fit (Go does the
/// same at start). Logs what it could not do; the listener copes with
/// `EMFILE` either way.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let want = max_connections as u64 + 256;
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    if current >= want {
        return;
    }
    let target = lim.maximum.map_or(want, |max| want.min(max));
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) if target >= want => {
            tracing::debug!(from = current, to = target, "Raised the open-file limit.");
        }
        Ok(()) => tracing::warn!(
            limit = target,
            max_connections,
            "Open-file limit below http.max_connections + 256 (raise the hard limit, e.g. LimitNOFILE)."
        ),
        Err(e) => tracing::warn!(
            limit = current,
            max_connections,
            error = %e,
            "Could not raise the open-file limit."
        ),
    }
}

/// The broker connection's settings from the configuration.
fn client_settings(cfg: &ServerConfig) -> gridpow_common::mqtt::ClientSettings {
    let (cert, key) = cfg.client_identity();
    gridpow_common::mqtt::ClientSettings {
        client_id: cfg.client_id(),
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        keep_alive_s: cfg.mqtt.keep_alive_s,
        tls: cfg.mqtt.tls.then(|| gridpow_common::mqtt::ClientTls {
            ca: cfg.ca_path(),
            cert,
            key,
            identity_configured: cfg.mqtt.cert.is_some() || cfg.mqtt.key.is_some(),
        }),
    }
}

fn mqtt_options(
    cfg: &ServerConfig,
    settings: &gridpow_common::mqtt::ClientSettings,
) -> Result<MqttOptions, ServerError> {
    let mut o = settings.v5()?;
    o.set_manual_acks(true)
        .set_clean_start(cfg.mqtt.session_expiry_s == 0)
        .set_receive_maximum(Some(cfg.mqtt.receive_maximum))
        .set_max_packet_size(Some(cfg.mqtt.max_packet_bytes))
        .set_request_channel_capacity(1024)
        .set_connection_timeout(10);
    if cfg.mqtt.session_expiry_s > 0 {
        o.set_session_expiry_interval(Some(cfg.mqtt.session_expiry_s));
    }
    Ok(o)
}

impl ServerHandle {
    /// Where the HTTP API and dashboard listen.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Totals and counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Loads the TLS files again (MQTT CA, client certificate and key; the
    /// HTTPS certificate and key) as a change of the files does within
    /// [`gridpow_common::tls_reload::RELOAD_CHECK_INTERVAL`]: the MQTT
    /// connection is made again with the new identity, HTTPS serves new
    /// connections with the new certificate. Unusable material is refused
    /// (logged, counted in `gridpow_server_tls_reload_failures_total`) and
    /// the material in use kept. Returns at once. `gridpow server` calls it on SIGHUP.
    pub fn reload_tls(&self) {
        self.tls_reload.send_modify(|n| *n += 1);
    }

    /// The Prometheus exposition (as `/metrics` serves it).
    pub fn metrics_text(&self) -> String {
        self.shared.prometheus()
    }

    /// Stops taking new messages, finishes what is in flight (commit, receipt,
    /// ACK), disconnects from the broker and stops the HTTP server.
    /// Messages received but not committed stay unacknowledged; the broker
    /// redelivers them.
    pub async fn shutdown(mut self) {
        tracing::info!("Grid server stopping.");
        let _ = self.phase.send(Phase::Draining);
        // The pipeline drains once the MQTT task dropped its sender.
        let threads = std::mem::take(&mut self.threads);
        let stopping = self.stopping.clone();
        let joiner = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            let _ = joiner.await;
            let _ = (&mut self.acker).await;
        })
        .await;
        if drained.is_err() {
            stopping.store(true, Ordering::SeqCst);
            tracing::warn!("Pipeline did not drain in 20 s; stopping anyway.");
            self.acker.abort();
        }
        // The writer is gone: the export publishes what it was handed, then ends.
        if let Some(mut export) = self.export.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut export)
                .await
                .is_err()
            {
                tracing::warn!(
                    "The export did not finish in 5 s (its broker is slow or down); stopping it."
                );
                export.abort();
            }
        }
        // A last checkpoint is not needed: the next start signs one.
        let _ = self.checkpoints_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(15), &mut self.checkpoints)
            .await
            .is_err()
        {
            self.checkpoints.abort();
        }
        let _ = self.phase.send(Phase::Disconnect);
        if tokio::time::timeout(Duration::from_secs(5), &mut self.mqtt)
            .await
            .is_err()
        {
            self.mqtt.abort();
        }
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.http)
            .await
            .is_err()
        {
            self.http.abort();
        }
        tracing::info!("Grid server stopped.");
    }
}
