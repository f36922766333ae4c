//! `gridpow witness`: a small independent c2sp.org/tlog-witness server.
//!
//! The protocol is `gridpow_tlog::witness::Witness` (sans-IO); this module
//! is its driver: a key file, a state file written durably before any
//! answer that depends on it, and an HTTP listener.
//!
//! ```text
//! POST /add-checkpoint        tlog-witness add-checkpoint (body ≤ 1 MiB)
//! GET  /  or  /healthz        text summary: name, vkey, per log the size and root cosigned
//! ```
//!
//! Requests are answered one at a time (one mutex around the witness and its
//! state file), so the old-size check and the update are atomic across
//! requests, as the spec requires.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::prelude::{Engine, BASE64_STANDARD};
use clap::{Args, Subcommand};
use gridpow_tlog::witness::{Witness, WitnessState, MAX_REQUEST_LEN};
use gridpow_tlog::{CosignatureVerifier, NoteVerifier, WitnessKey};

/// How long one request may take to arrive (headers and body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: Option<WitnessCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum WitnessCommand {
    /// Create a witness key (a random 32-byte Ed25519 seed, mode 0600) and
    /// print its verifier key; the vkey is also written to KEY.vkey.
    Init {
        /// The key file to create (refused if it exists).
        #[arg(long)]
        key: PathBuf,
        /// The witness's name, as its cosignatures carry it (e.g. `witness.example.org/w1`).
        #[arg(long)]
        name: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The witness key file (from `gridpow witness init`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The state file: per log, the size and root last cosigned (JSON; created if absent).
    #[arg(long)]
    state: Option<PathBuf>,
    /// A log to witness: `ORIGIN=VKEY` (the log's note verifier key). Repeatable.
    /// (`--log` is the global log filter.)
    #[arg(long = "log-key", value_name = "ORIGIN=VKEY")]
    logs: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    /// The witness's name (default: the name in KEY.vkey, written by `init`).
    #[arg(long)]
    name: Option<String>,
}

/// A validated configuration.
struct Config {
    key: WitnessKey,
    logs: Vec<(String, NoteVerifier)>,
    state_path: PathBuf,
    listen: SocketAddr,
}

pub fn run(a: WitnessArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(WitnessCommand::Init { key, name }) => init(&key, &name),
        None => serve(config(a.run)?),
    }
}

/// The public verifier key file beside a key file: `KEY.vkey`.
fn vkey_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".vkey");
    key.with_file_name(name)
}

fn init(path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    if path.exists() || vkey_path(path).exists() {
        bail!(
            "{} (or its .vkey) already exists: a witness key is never overwritten",
            path.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = WitnessKey::from_seed(name, seed).context("--name")?;
    gridpow_common::durable::write_file(path, &seed, true)
        .with_context(|| format!("writing {}", path.display()))?;
    let vkey = key.vkey();
    gridpow_common::durable::write_file(&vkey_path(path), format!("{vkey}\n").as_bytes(), false)
        .with_context(|| format!("writing {}", vkey_path(path).display()))?;
    println!("{vkey}");
    Ok(ExitCode::SUCCESS)
}

/// Reads a key file: exactly 32 bytes.
fn read_seed(path: &Path) -> anyhow::Result<[u8; 32]> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
        anyhow::anyhow!(
            "{}: {} bytes, a witness key file holds a 32-byte seed",
            path.display(),
            b.len()
        )
    })
}

fn config(a: RunArgs) -> anyhow::Result<Config> {
    let key_path = a
        .key
        .context("--key is required (create one with `gridpow witness init`)")?;
    let state_path = a.state.context("--state is required")?;
    if a.logs.is_empty() {
        bail!("no --log-key ORIGIN=VKEY: the witness would cosign nothing");
    }
    let seed = read_seed(&key_path)?;
    let name = match a.name {
        Some(n) => n,
        None => {
            let p = vkey_path(&key_path);
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "no --name, and its key's vkey file {} is unreadable",
                    p.display()
                )
            })?;
            let v = CosignatureVerifier::from_vkey(text.trim())
                .with_context(|| format!("{}", p.display()))?;
            v.name().to_owned()
        }
    };
    let key = WitnessKey::from_seed(&name, seed).context("--name")?;
    // A vkey file beside the key must describe this key: else the operator
    // has published another key than the one that signs.
    if let Ok(text) = std::fs::read_to_string(vkey_path(&key_path)) {
        if let Ok(v) = CosignatureVerifier::from_vkey(text.trim()) {
            if v.public_key() != key.public_key() {
                bail!(
                    "{} is not the public key of {}",
                    vkey_path(&key_path).display(),
                    key_path.display()
                );
            }
        }
    }
    let mut logs = Vec::new();
    for l in &a.logs {
        let (origin, vkey) = l
            .split_once('=')
            .with_context(|| format!("--log-key {l:?} is not ORIGIN=VKEY"))?;
        let v =
            NoteVerifier::from_vkey(vkey).with_context(|| format!("--log-key {origin}: vkey"))?;
        if origin.is_empty() {
            bail!("--log-key {l:?}: empty origin");
        }
        logs.push((origin.to_owned(), v));
    }
    Ok(Config {
        key,
        logs,
        state_path,
        listen: a.listen,
    })
}

/// Loads the state file; a missing file is a witness that has cosigned
/// nothing yet, a damaged one is an error (never silently reset: the state
/// is what stops the witness from cosigning a split view).
fn load_state(path: &Path) -> anyhow::Result<Option<WitnessState>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
            format!(
                "state file {} is damaged; refusing to start (restore it from a backup: starting afresh would let this witness cosign a split view)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
    }
}

fn save_state(path: &Path, state: &WitnessState) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    gridpow_common::durable::write_file(path, &json, false)
}

/// The witness and where its state lives, behind one mutex.
struct Core {
    witness: Witness,
    key: WitnessKey,
    logs: Vec<(String, NoteVerifier)>,
    state_path: PathBuf,
}

impl Core {
    fn new(
        key: WitnessKey,
        logs: Vec<(String, NoteVerifier)>,
        state: WitnessState,
        state_path: PathBuf,
    ) -> Core {
        let witness = Core::witness(&key, &logs, state);
        Core {
            witness,
            key,
            logs,
            state_path,
        }
    }

    fn witness(key: &WitnessKey, logs: &[(String, NoteVerifier)], state: WitnessState) -> Witness {
        let mut w = Witness::new(key.clone(), state);
        for (origin, v) in logs {
            w.add_log(origin, v.clone());
        }
        w
    }

    /// Answers one request; the new state is on disk before a 200 leaves.
    fn add_checkpoint(&mut self, body: &[u8], now: u64) -> (u16, &'static str, String) {
        let before = self.witness.state().clone();
        let r = self.witness.handle_add_checkpoint(body, now);
        if r.state_changed {
            if let Err(e) = save_state(&self.state_path, self.witness.state()) {
                tracing::error!(path = %self.state_path.display(), error = %e, "State file not written; cosignature withheld.");
                // Nothing was cosigned on the strength of the new state: go back to the one on disk.
                self.witness = Core::witness(&self.key, &self.logs, before);
                return (
                    500,
                    gridpow_tlog::witness::CONTENT_TYPE_TEXT,
                    "the witness could not persist its state\n".into(),
                );
            }
        }
        (r.status, r.content_type, r.body)
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "gridpow witness {}\nvkey {}\n",
            self.key.name(),
            self.key.vkey()
        );
        for (origin, v) in &self.logs {
            match self.witness.state().logs.get(origin) {
                Some(l) => s.push_str(&format!(
                    "log {origin} key {} size {} root {}\n",
                    v.vkey(),
                    l.size,
                    BASE64_STANDARD.encode(l.root)
                )),
                None => s.push_str(&format!(
                    "log {origin} key {} nothing cosigned yet\n",
                    v.vkey()
                )),
            }
        }
        s
    }
}

type Shared = Arc<Mutex<Core>>;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn text(status: u16, content_type: &'static str, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn add_checkpoint(State(core): State<Shared>, body: Body) -> Response {
    let body =
        match tokio::time::timeout(REQUEST_TIMEOUT, axum::body::to_bytes(body, MAX_REQUEST_LEN))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return text(
                    413,
                    gridpow_tlog::witness::CONTENT_TYPE_TEXT,
                    format!("request body above {MAX_REQUEST_LEN} bytes, or cut off\n"),
                )
            }
            Err(_) => {
                return text(
                    408,
                    gridpow_tlog::witness::CONTENT_TYPE_TEXT,
                    "request body too slow\n".into(),
                )
            }
        };
    // The state file is written under the lock: a blocking thread.
    let answer = tokio::task::spawn_blocking(move || {
        let mut core = core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        core.add_checkpoint(&body, now_unix())
    })
    .await;
    match answer {
        Ok((status, ct, body)) => {
            if status == 200 {
                tracing::info!("Checkpoint cosigned.");
            } else {
                tracing::info!(status, reason = body.trim_end(), "Checkpoint refused.");
            }
            text(status, ct, body)
        }
        Err(e) => text(
            500,
            gridpow_tlog::witness::CONTENT_TYPE_TEXT,
            format!("internal error: {e}\n"),
        ),
    }
}

async fn summary(State(core): State<Shared>) -> Response {
    let s = core
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .summary();
    text(200, gridpow_tlog::witness::CONTENT_TYPE_TEXT, s)
}

fn router(core: Shared) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/", get(summary))
        .route("/healthz", get(summary))
        .with_state(core)
}

fn serve(cfg: Config) -> anyhow::Result<ExitCode> {
    let state = match load_state(&cfg.state_path)? {
        Some(s) => s,
        None => {
            tracing::info!(path = %cfg.state_path.display(), "No state file: this witness has cosigned nothing yet.");
            let s = WitnessState::default();
            // Written now, so an unwritable place stops the start, not the first cosignature.
            save_state(&cfg.state_path, &s)
                .with_context(|| format!("writing state file {}", cfg.state_path.display()))?;
            s
        }
    };
    for (origin, l) in &state.logs {
        tracing::info!(origin, size = l.size, "Log state loaded.");
    }
    let vkey = cfg.key.vkey();
    let name = cfg.key.name().to_owned();
    let core = Arc::new(Mutex::new(Core::new(
        cfg.key,
        cfg.logs,
        state,
        cfg.state_path,
    )));
    let rt = crate::services::runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("--listen {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        // Printed whatever the log filter: the operator hands the vkey to the log.
        eprintln!("witness {name} listening on http://{addr}/ (vkey {vkey}); Ctrl-C stops it");
        let app = router(core);
        tokio::select! {
            r = accept_loop(listener, app) => r,
            _ = crate::services::stop_signal() => {
                eprintln!("witness stopped");
                Ok(())
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Serves HTTP/1.1 connections with a header read timeout and a connection cap.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "Connection ended.");
            }
            drop(permit);
        });
    }
}
