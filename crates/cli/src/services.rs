//! The long-running parts as separate processes: `gridpow relay|server|meters --config FILE`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gridpow_meters::{Fleet, FleetConfig};
use gridpow_relay::{open_radio, Relay, RelayConfig};
use gridpow_server::{Server, ServerConfig};

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// TOML configuration file (see `gridpow example-config KIND`); fields can be
    /// overridden with environment variables, e.g. GRIDPOW_RELAY__MQTT__HOST.
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub fn run_relay(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = RelayConfig::load(path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let radio = open_radio(&cfg)?;
        let id = cfg.relay_id;
        let relay = Relay::start(cfg, radio).await?;
        eprintln!("relay {id} running; Ctrl-C stops it gracefully");
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = wait_for_signal() => break,
                _ = tick.tick() => {
                    let s = relay.stats();
                    eprintln!("relay {id}: {} frames accepted, {} blocks sealed, {} confirmed, outbox {}", s.frames_accepted, s.blocks_sealed, s.blocks_confirmed, s.outbox_len);
                }
            }
        }
        relay.shutdown().await;
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

pub fn run_server(args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = ServerConfig::load(&args.config)?;
    if let Some(db) = &args.db {
        cfg.db = db.clone();
    }
    if let Some(http) = &args.http {
        apply_http_flag(&mut cfg, http)?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        let server = Server::start(cfg).await?;
        eprintln!(
            "grid server running: dashboard http://{}/ ; Ctrl-C stops it",
            server.http_addr()
        );
        wait_for_signal().await;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn run_meters(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = FleetConfig::load(path)?;
    let radio = gridpow_meters::open_udp_radio(&cfg)?;
    let fleet = Fleet::start(cfg, radio)?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = wait_for_signal() => break,
                _ = tick.tick() => {
                    let s = fleet.stats();
                    eprintln!("meters: {} running, {} readings generated, {} acknowledged, {} dropped, {} waiting", s.meters, s.generated, s.acknowledged, s.dropped, s.unconfirmed);
                }
            }
        }
    });
    eprintln!("stopping: waiting up to 30 s for outstanding readings to be acknowledged");
    fleet.stop_generating();
    fleet.wait_drained(Duration::from_secs(30));
    let s = fleet.shutdown()?;
    eprintln!(
        "meters: {} generated, {} acknowledged, {} dropped, {} unconfirmed",
        s.generated, s.acknowledged, s.dropped, s.unconfirmed
    );
    Ok(ExitCode::SUCCESS)
}

pub fn example_config(kind: ConfigKind) -> anyhow::Result<ExitCode> {
    let text = match kind {
        ConfigKind::Relay => {
            let c = RelayConfig::new(1, "relay-1", "data/relay-1");
            format!("# gridpow relay configuration (every field has this default).\n# Override with GRIDPOW_RELAY__SECTION__FIELD=value.\n{}", toml::to_string_pretty(&c)?)
        }
        ConfigKind::Server => format!(
            "# gridpow server configuration (every field has this default).\n# Override with GRIDPOW_SERVER__SECTION__FIELD=value.\n{}",
            toml::to_string_pretty(&ServerConfig::default())?
        ),
        ConfigKind::Meters => format!(
            "# gridpow virtual meters configuration (every field has this default).\n# Override with GRIDPOW_METERS__SECTION__FIELD=value.\n{}",
            toml::to_string_pretty(&FleetConfig::new("keys", "data/meters"))?
        ),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
