//! `gridpow-relay-app`: the standalone relay application (the code the ESP32
//! relay runs) on a Linux host: UDP air to the virtual meters, a file as its
//! flash, tokio TCP to the broker, TLS 1.3 + MQTT 5 from `gridpow-relay-net`.
//!
//! ```text
//! gridpow-relay-app --bundle RELAY_BUNDLE --relay-id 1 --broker 127.0.0.1:8883 \
//!     --udp-listen 127.0.0.1:47800 --data-dir DIR [--blob relay-1.bin] \
//!     [--server-name localhost] [--difficulty 16] [--block-interval-s 10]
//! ```
//!
//! Frames, sealed blocks and the chain tip live in the flash journal
//! (`gridpow_firmware_logic::journal`) on `DATA_DIR/journal.bin`, a file
//! with NOR-flash semantics synced on every write: a frame is ACKed only
//! once it is there, so a SIGKILL loses nothing acknowledged.
//!
//! SIGINT or SIGTERM: stop taking frames, seal and publish the rest until it
//! is confirmed (at most `--drain-timeout-s`), close the session, exit 0.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::provisioning::MAX_RELAY_METERS;
use gridpow_firmware_logic::standalone::{RelayStorage, StandaloneConfig, StandaloneRelay};
use gridpow_firmware_logic::state::{Flash, RelayState};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry};
use gridpow_proto::Duration;
use gridpow_relay_app::host::provision::{self, BundleSettings};
use gridpow_relay_app::host::{FileFlash, StdClock, TcpConnector, TracingLog, UdpRadio};
use gridpow_relay_app::{App, AppConfig, Clock, NetBuffers, Parts};
use gridpow_relay_net::{Identity, ARENA_LEN, TLS_READ_BUF, TLS_WRITE_BUF};

/// Outbox slots (as the ESP32 firmware).
const OUTBOX: usize = 4;
/// Bytes per block (as the ESP32 firmware): about 50 full frames.
const BLOCK_BYTES: usize = 12 * 1024;

/// The standalone relay application on a Linux host.
#[derive(Parser, Debug)]
#[command(name = "gridpow-relay-app", version, about)]
struct Args {
    /// The relay's key bundle (`gridpow keys export relay`): signing key,
    /// hop keys, server public key, CA certificate, TLS identity.
    #[arg(long)]
    bundle: PathBuf,
    /// Relay id (ignored with --blob, which names it).
    #[arg(long, default_value_t = 1)]
    relay_id: u32,
    /// A standalone relay provisioning blob (what an ESP32 is flashed
    /// with); it then decides the relay's settings, meters and keys, the
    /// bundle only the TLS files.
    #[arg(long)]
    blob: Option<PathBuf>,
    /// The broker, HOST:PORT (default: the blob's broker).
    #[arg(long)]
    broker: Option<String>,
    /// The name the broker's certificate must carry (default: the broker host).
    #[arg(long)]
    server_name: Option<String>,
    /// Where the UDP air listens (meters send here).
    #[arg(long, default_value = "127.0.0.1:47800")]
    udp_listen: SocketAddr,
    /// The relay's MAC on the air (default: the virtual MAC of its id).
    #[arg(long)]
    mac: Option<String>,
    /// Directory of the relay's flash file `journal.bin` (the flash journal:
    /// frames, sealed blocks, chain tip).
    #[arg(long)]
    data_dir: PathBuf,
    /// Size of the journal's flash file in KiB (a multiple of 4; fixed once created).
    #[arg(long, default_value_t = 1024)]
    journal_kib: u32,
    /// Radio channel stated in ACKs (bundle only).
    #[arg(long, default_value_t = 1)]
    channel: u8,
    /// PoW difficulty in leading zero bits (bundle only).
    #[arg(long, default_value_t = 16)]
    difficulty: u8,
    /// Seconds frames wait for more before their block is sealed (bundle only).
    #[arg(long, default_value_t = 10)]
    block_interval_s: u32,
    /// Republish a block whose receipt has not come after this many seconds.
    #[arg(long, default_value_t = 30)]
    republish_after_s: u64,
    /// MQTT keep-alive, seconds.
    #[arg(long, default_value_t = 30)]
    keep_alive_s: u16,
    /// Bytes of the MQTT receive arena (about 160 per receipt; the session
    /// is renewed when less than 1 KiB is left).
    #[arg(long, default_value_t = ARENA_LEN)]
    arena_bytes: usize,
    /// Seconds between status log lines (0: none).
    #[arg(long, default_value_t = 30)]
    status_every_s: u64,
    /// After SIGINT/SIGTERM, how long to keep publishing until all is confirmed.
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    /// Log filter (tracing syntax); also `RUST_LOG`.
    #[arg(long, env = "GRIDPOW_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log.clone());
    // Colour only on a terminal, and never with NO_COLOR set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) = s
        .rsplit_once(':')
        .with_context(|| format!("--broker {s:?} is not HOST:PORT"))?;
    let port = p
        .parse()
        .with_context(|| format!("--broker {s:?}: bad port"))?;
    Ok((h.trim_matches(['[', ']']).to_string(), port))
}

fn run(a: Args) -> anyhow::Result<()> {
    let prov = match &a.blob {
        Some(blob) => provision::from_blob(blob, &a.bundle)?,
        None => provision::from_bundle(
            &a.bundle,
            a.relay_id,
            BundleSettings {
                channel: a.channel,
                difficulty: a.difficulty,
                block_interval_s: a.block_interval_s,
            },
        )?,
    };
    let cfg = &prov.config;
    let (host, port) = match (&a.broker, cfg.broker_host.as_str()) {
        (Some(b), _) => split_host_port(b)?,
        (None, "") => bail!("no broker: give --broker HOST:PORT"),
        (None, h) => (
            h.to_string(),
            if cfg.broker_port == 0 {
                8883
            } else {
                cfg.broker_port
            },
        ),
    };
    let server_name = a.server_name.clone().unwrap_or_else(|| host.clone());
    let mac = match &a.mac {
        Some(m) => gridpow_common::parse_mac(m)
            .with_context(|| format!("--mac {m:?} is not a MAC like AA:BB:CC:DD:EE:FF"))?,
        None => gridpow_common::virtual_relay_mac(cfg.relay_id),
    };
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let journal_bytes = a
        .journal_kib
        .checked_mul(1024)
        .filter(|b| b % FileFlash::SECTOR_SIZE == 0)
        .context("--journal-kib must be a multiple of 4")?;
    let flash = FileFlash::open(&a.data_dir.join("journal.bin"), journal_bytes)
        .context("opening the journal's flash file")?;
    let journal = Journal::<_, OUTBOX>::open(&RustCrypto, flash, RelayState::default())
        .map_err(|e| anyhow::anyhow!("opening the flash journal: {e:?}"))?;
    let tip = journal.tip();

    let mut blocks = vec![0u8; 2 * BLOCK_BYTES];
    let mut outbox = [OutboxEntry::FREE; OUTBOX];
    let mut scfg = StandaloneConfig::from_relay_config(cfg);
    scfg.republish_after = Duration::from_secs(a.republish_after_s);
    let mut relay = StandaloneRelay::<_, _, MAX_RELAY_METERS>::new(
        scfg,
        RustCrypto,
        prov.meters.iter().cloned(),
        &cfg.signing_seed,
        &cfg.server_public_key,
        ChainTip::from(tip),
        journal,
        RelayStorage {
            blocks: &mut blocks,
            outbox: &mut outbox,
        },
    )
    .map_err(|e| anyhow::anyhow!("relay storage: {e}"))?;
    let clock = StdClock::default();
    // Unconfirmed blocks back into the outbox, acknowledged frames back into
    // the replay windows and the pending batch: nothing ACKed is lost.
    let recovered = relay
        .recover(clock.now())
        .map_err(|e| anyhow::anyhow!("journal recovery: {e:?}"))?;
    let relay = RefCell::new(relay);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let radio = UdpRadio::bind(a.udp_listen, mac).context("binding the UDP air")?;
        {
            let r = relay.borrow();
            println!(
                "relay-app relay_id={} udp={} mac={} meters={} next_height={} broker={host}:{port} recovered_blocks={} recovered_frames={} recovered_unsealed={} recovered_refused_now={}",
                r.relay_id(),
                radio.local_addr(),
                gridpow_common::format_mac(&mac),
                prov.meters.len(),
                r.chain().next_height,
                recovered.blocks,
                recovered.frames,
                recovered.unsealed,
                recovered.refused_now,
            );
        }
        let net = gridpow_relay_net::Config {
            relay_id: cfg.relay_id,
            client_id: &format!("relay-{}", cfg.relay_id),
            server_name: &server_name,
            ca_der: &prov.ca_der,
            identity: Some(Identity {
                cert_der: &prov.cert_der,
                key_der: &prov.key_der,
            }),
            keep_alive_s: a.keep_alive_s,
            session_expiry_s: 7 * 24 * 3600,
        };
        let (mut rx, mut tx, mut arena, mut block) = (
            vec![0u8; TLS_READ_BUF],
            vec![0u8; TLS_WRITE_BUF],
            vec![0u8; a.arena_bytes],
            vec![0u8; BLOCK_BYTES],
        );
        let app_cfg = AppConfig {
            pow_chunk: 4096,
            status_every: Duration::from_secs(a.status_every_s),
            drain_timeout: Duration::from_secs(a.drain_timeout_s),
            ..AppConfig::default()
        };
        let mut app = App::new(
            &relay,
            Parts {
                radio,
                clock,
                connector: TcpConnector {
                    host: host.clone(),
                    port,
                },
                rng: rand::rngs::OsRng,
                log: TracingLog,
            },
            app_cfg,
            net,
            NetBuffers {
                tls_read: &mut rx,
                tls_write: &mut tx,
                arena: &mut arena,
                block: &mut block,
            },
        );
        app.run(shutdown_signal()).await;
        let s = app.stats();
        let r = relay.borrow();
        let (i, l) = (*r.ingress_stats(), *r.lifecycle_stats());
        println!(
            "relay-app stopped accepted={} duplicate={} acks={} sealed={} published={} confirmed={} next_height={} unconfirmed_blocks={} pending_frames={} sessions={} last_connect_ms={:?}",
            i.frames_accepted,
            i.frames_duplicate,
            s.acks_sent,
            l.blocks_sealed,
            l.blocks_published,
            l.blocks_confirmed,
            r.chain().next_height,
            r.outbox().count(),
            r.pending_frames(),
            s.sessions,
            s.last_connect_ms,
        );
        anyhow::Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
