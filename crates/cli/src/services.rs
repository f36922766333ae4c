//! The long-running parts as separate processes: `gridpow relay|server|meters --config FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gridpow_meters::silence::{no_ack_message, AckEvent, AckWatch};
use gridpow_meters::{Fleet, FleetConfig};
use gridpow_relay::{open_radio, Relay, RelayConfig};
use gridpow_server::{Server, ServerConfig};

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// TOML configuration file (see `gridpow example-config KIND`); any field can be
    /// overridden with an environment variable (listed by --help).
    #[arg(long, short)]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML configuration file (see `gridpow example-config server`); fields can be
    /// overridden with environment variables, e.g. GRIDPOW_SERVER__HTTP__LISTEN.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The database, overriding the file: a SQLite path or `postgres://user@host/db`.
    #[arg(long)]
    pub db: Option<String>,
    /// Address of the dashboard and HTTP API, overriding `[http] listen`:
    /// `IP:PORT` or `HOST:PORT` (e.g. `localhost:8080`, resolved at start).
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConfigKind {
    /// relay.toml
    Relay,
    /// server.toml
    Server,
    /// meters.toml
    Meters,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called (inside the runtime), not when the future is first polled, and a
/// long-running loop must keep one pinned future: a future made afresh each
/// iteration misses a signal that lands between two iterations.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Yields at every SIGHUP: the operator asks a service to load its TLS
/// files again (`gridpow keys renew`). Installed when called, like
/// [`stop_signal`]; without the handler (not Unix) it never yields.
pub(crate) struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    pub(crate) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Hangup(signal(SignalKind::hangup()).ok())
        }
        #[cfg(not(unix))]
        Hangup()
    }

    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Runs a service until Ctrl-C or SIGTERM: at each SIGHUP says so, naming
/// the service as `who`, and calls `reload` (which loads its TLS files
/// again); every 10 s calls `report`, if any, the first time 10 s from now.
async fn until_stopped(who: &str, reload: impl Fn(), mut report: Option<impl FnMut()>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut hangup = Hangup::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = hangup.recv() => {
                eprintln!("{who}: SIGHUP: loading the TLS files again");
                reload();
            }
            _ = tick.tick(), if report.is_some() => {
                if let Some(report) = &mut report {
                    report();
                }
            }
        }
    }
}

/// The chain head as a start or stop line says it: height and the hash's first 8 bytes.
fn chain_head(height: Option<u64>, head_hex: &str) -> String {
    match height {
        Some(h) => format!(
            "at height {h} (head {}…)",
            head_hex.get(..16).unwrap_or(head_hex)
        ),
        None => "still empty".to_string(),
    }
}

/// The validity check of the certificates among `files` that exist (a
/// missing one is reported by the start itself, naming its setting).
pub(crate) fn check_certificates(files: &[&Path]) -> anyhow::Result<()> {
    let present: Vec<&Path> = files.iter().copied().filter(|p| p.exists()).collect();
    gridpow_common::tls::preflight_certificates(&present)?;
    Ok(())
}

/// Preflight of a relay: its TLS certificates valid now (refused if expired
/// or not yet valid, warned about when ending within 30 days). Its UDP air
/// address is checked when the radio opens, naming `[radio] udp_listen`.
fn relay_preflight(cfg: &RelayConfig) -> anyhow::Result<()> {
    gridpow_keys::KeyDir::new(&cfg.keys_dir).check_role(gridpow_keys::Role::Relay(cfg.relay_id))?;
    if cfg.mqtt.tls {
        let (ca, cert, _) = cfg.tls_paths();
        check_certificates(&[ca.as_path(), cert.as_path()])?;
    }
    Ok(())
}

pub fn run_relay(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = RelayConfig::load(path)?;
    relay_preflight(&cfg)?;
    let rt = runtime()?;
    rt.block_on(async {
        let radio = open_radio(&cfg)?;
        let id = cfg.relay_id;
        let broker = cfg.broker_target();
        let data_dir = cfg.data_dir.clone();
        let radio_at = match cfg.radio.kind {
            gridpow_relay::RadioKind::Udp => format!("UDP air on {}", cfg.radio.udp_listen),
            gridpow_relay::RadioKind::Serial => format!("serial bridge on {}", cfg.radio.serial_device),
        };
        let relay = Relay::start(cfg, radio).await?;
        let s = relay.stats();
        let resumed = match s.chain_height {
            Some(_) => format!("resumed its chain {}", chain_head(s.chain_height, &s.chain_head)),
            None => "starting a new chain".to_string(),
        };
        eprintln!(
            "relay {id} running: journal and chain in {}, broker {broker}, {radio_at}, {resumed}, outbox {}; Ctrl-C stops it gracefully",
            data_dir.display(),
            s.outbox_len
        );
        let report = || {
            let s = relay.stats();
            let log = s.log.as_ref().map_or_else(String::new, |l| format!(", log alarms {}", l.alarms));
            eprintln!("relay {id}: {} frames accepted, {} blocks sealed, {} confirmed, outbox {}{log}", s.frames_accepted, s.blocks_sealed, s.blocks_confirmed, s.outbox_len);
        };
        until_stopped(&format!("relay {id}"), || relay.reload_tls(), Some(report)).await;
        eprintln!("relay {id} stopping: committing the journal, then disconnecting");
        let s = relay.shutdown().await;
        eprintln!(
            "relay {id} stopped: {} blocks sealed and {} confirmed this run, chain {}, outbox {} (published again at the next start); data in {}",
            s.blocks_sealed,
            s.blocks_confirmed,
            chain_head(s.chain_height, &s.chain_head),
            s.outbox_len,
            data_dir.display()
        );
        if let Some(l) = &s.log {
            eprintln!(
                "relay {id} transparency log: trusted tree size {}, {} receipts proven in the log, {} pending, {} alarms{}",
                l.trusted_size.map_or_else(|| "none yet".to_string(), |n| n.to_string()),
                l.receipts_proven,
                l.receipts_pending,
                l.alarms,
                l.last_alarm.as_deref().map_or_else(String::new, |a| format!(" (last: {a})")),
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Applies an `--http HOST:PORT` flag: the listen address, resolved at
/// start, and a host name let through the DNS-rebinding check (browsers send
/// the name they were given as `Host`).
pub fn apply_http_flag(cfg: &mut ServerConfig, http: &str) -> anyhow::Result<()> {
    cfg.http.listen = gridpow_common::net::resolve_listen(http).context("--http")?;
    if let Some((host, _)) = http.trim().rsplit_once(':') {
        if host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[') {
            cfg.http.allowed_hosts.push(host.to_ascii_lowercase());
        }
    }
    Ok(())
}

/// A database URL fit for a log line: a PostgreSQL password is masked.
fn db_for_log(db: &str) -> String {
    if let Some((scheme, rest)) = db.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    db.to_string()
}

/// Preflight of a grid server: the HTTP port free, its TLS certificates
/// (MQTT CA and client certificate, HTTPS certificate) valid now and not
/// expiring within 30 days (warned), before the database and broker.
fn server_preflight(cfg: &ServerConfig, http_flag: bool) -> anyhow::Result<()> {
    // The keys first: a missing directory is the likelier mistake, and its
    // message names `keys_dir` and the commands that make it.
    gridpow_keys::KeyDir::new(&cfg.keys_dir).check_role(gridpow_keys::Role::Server)?;
    let setting = if http_flag {
        "--http"
    } else {
        "[http] listen, GRIDPOW_SERVER__HTTP__LISTEN or --http"
    };
    gridpow_common::net::check_tcp_free(cfg.http.listen, setting)?;
    let mut files = Vec::new();
    if cfg.mqtt.tls {
        files.push(cfg.ca_path());
        files.push(cfg.client_identity().0);
    }
    files.extend(cfg.http.tls_cert.clone());
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    check_certificates(&files)?;
    Ok(())
}

pub fn run_server(args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = ServerConfig::load(&args.config)?;
    if let Some(db) = &args.db {
        cfg.db = db.clone();
    }
    if let Some(http) = &args.http {
        apply_http_flag(&mut cfg, http)?;
    }
    server_preflight(&cfg, args.http.is_some())?;
    let db_url = cfg.db.clone();
    let db = db_for_log(&db_url);
    let broker = cfg.broker_target();
    let rt = runtime()?;
    rt.block_on(async {
        let server = Server::start(cfg).await?;
        let s = server.stats();
        eprintln!(
            "grid server running: database {db} ({} blocks, {} readings stored), broker {broker}, dashboard http://{}/ ; Ctrl-C stops it",
            s.ledger.blocks_verified,
            s.ledger.readings_stored,
            server.http_addr()
        );
        until_stopped("grid server", || server.reload_tls(), None::<fn()>).await;
        eprintln!("grid server stopping: finishing what is in flight");
        server.shutdown().await;
        // The totals as the database holds them now, after the last commit.
        let stored = gridpow_store::open_reader(&db_url).and_then(|mut r| r.totals());
        match stored {
            Ok(t) => eprintln!(
                "grid server stopped: database {db} holds {} blocks and {} readings",
                t.blocks_verified, t.readings_stored
            ),
            Err(_) => eprintln!("grid server stopped: database {db}"),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_meters(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = FleetConfig::load(path)?;
    let radio = gridpow_meters::open_udp_radio(&cfg)?;
    let relay_at = cfg.radio.udp_relay;
    let warn_cfg = cfg.clone();
    let fleet = Fleet::start(cfg, radio)?;
    eprintln!(
        "meters: {} virtual meters sending to the relay at {relay_at} over UDP air; Ctrl-C stops them after their readings are acknowledged",
        fleet.stats().meters
    );
    let rt = runtime()?;
    rt.block_on(async {
        let started = tokio::time::Instant::now();
        let mut report = tokio::time::interval(Duration::from_secs(10));
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut watch = AckWatch::new(warn_cfg.no_ack_warn_s);
        report.tick().await;
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = report.tick() => {
                    let s = fleet.stats();
                    eprintln!("meters: {} running, {} readings generated, {} acknowledged, {} dropped, {} waiting", s.meters, s.generated, s.acknowledged, s.dropped, s.unconfirmed);
                }
                _ = check.tick() => {
                    let s = fleet.stats();
                    let now_ms = started.elapsed().as_millis() as u64;
                    match watch.observe(now_ms, s.frames_sent, s.acknowledged) {
                        Some(AckEvent::Silent { for_s }) => {
                            tracing::warn!("{}", no_ack_message(&warn_cfg, for_s, s.unconfirmed));
                        }
                        Some(AckEvent::Answering) => {
                            tracing::warn!("a relay answers again: readings are being acknowledged");
                        }
                        None => {}
                    }
                }
            }
        }
    });
    eprintln!("stopping: waiting up to 30 s for outstanding readings to be acknowledged");
    fleet.stop_generating();
    fleet.wait_drained(Duration::from_secs(30));
    let s = fleet.shutdown()?;
    eprintln!(
        "meters: {} generated, {} acknowledged, {} dropped, {} unconfirmed; {} late ACKs (a second relay in range), {} ACKs refused",
        s.generated, s.acknowledged, s.dropped, s.unconfirmed, s.acks_late, s.acks_rejected
    );
    Ok(ExitCode::SUCCESS)
}

/// The example configuration of `kind` (every field, documented).
fn example_text(kind: ConfigKind) -> anyhow::Result<String> {
    Ok(match kind {
        ConfigKind::Relay => RelayConfig::new(1, "relay-1", "data/relay-1").example_toml()?,
        ConfigKind::Server => ServerConfig::default().example_toml()?,
        ConfigKind::Meters => FleetConfig::new("keys", "data/meters").example_toml()?,
    })
}

/// The environment variables a service honours, for its `--help`: one per
/// field of its example configuration (`PREFIX__SECTION__FIELD`), then the
/// log and colour ones.
pub fn env_help(kind: ConfigKind) -> String {
    let (prefix, example) = match kind {
        ConfigKind::Relay => (
            gridpow_relay::config::ENV_PREFIX,
            "GRIDPOW_RELAY__MQTT__PORT=8884 for [mqtt] port",
        ),
        ConfigKind::Server => (
            gridpow_server::config::ENV_PREFIX,
            "GRIDPOW_SERVER__HTTP__LISTEN=0.0.0.0:8080 for [http] listen",
        ),
        ConfigKind::Meters => (
            gridpow_meters::config::ENV_PREFIX,
            "GRIDPOW_METERS__RADIO__UDP_RELAY=10.0.0.2:47800 for [radio] udp_relay",
        ),
    };
    let mut out = format!(
        "Environment variables: each overrides the field of the same path in the --config file \
         (value parsed as TOML, else a string), e.g. {example}:\n"
    );
    let mut section = String::new();
    for line in example_text(kind).unwrap_or_default().lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{}__", name.to_ascii_uppercase());
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.push_str(&format!(
                    "  {prefix}__{section}{}\n",
                    key.to_ascii_uppercase()
                ));
            }
        }
    }
    out.push_str("  GRIDPOW_LOG (or RUST_LOG): log filter, as --log\n  NO_COLOR: any value turns colour off (logs are coloured only on a terminal anyway)\n");
    out
}

pub fn example_config(kind: ConfigKind) -> anyhow::Result<ExitCode> {
    let head = match kind {
        ConfigKind::Relay => "relay.toml, gridpow relay's configuration: every field with its default.\n# Override any field with GRIDPOW_RELAY__SECTION__FIELD=value (e.g. GRIDPOW_RELAY__MQTT__PORT=8884).",
        ConfigKind::Server => "server.toml, the grid server's configuration: every field with its default.\n# Override any field with GRIDPOW_SERVER__SECTION__FIELD=value (e.g. GRIDPOW_SERVER__HTTP__LISTEN=0.0.0.0:8080).",
        ConfigKind::Meters => "meters.toml, the virtual meters' configuration: every field with its default.\n# Override any field with GRIDPOW_METERS__SECTION__FIELD=value (e.g. GRIDPOW_METERS__INTERVAL_S=10).",
    };
    print!("# {head}\n\n{}", example_text(kind)?);
    Ok(ExitCode::SUCCESS)
}
