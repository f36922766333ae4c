//! `gridpow demo`: the whole stack in one process with no external service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use gridpow_broker::{start_embedded, EmbeddedOptions};
use gridpow_common::datadir::DataLock;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_meters::{Fleet, FleetConfig, MeterSelection};
use gridpow_radio::Medium;
use gridpow_relay::{Relay, RelayConfig};
use gridpow_server::auth::{Role, TokenFile};
use gridpow_server::{Server, ServerConfig};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of virtual meters.
    #[arg(long, default_value_t = 50)]
    meters: u32,
    /// Stop by itself after this many seconds, drain the pipeline and print a summary.
    #[arg(long)]
    duration: Option<u64>,
    /// Where keys, the database and the relay's journal live (created on first
    /// run). Default: the per-user data directory, `$XDG_DATA_HOME/gridpow/demo`
    /// (`~/.local/share/gridpow/demo`), never the working tree: it holds the
    /// site secret and private keys.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the dashboard and HTTP API (`IP:PORT` or `HOST:PORT`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// Seconds between readings of each meter.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Frame loss on the simulated air (0–0.9), to exercise ACK and retransmission.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    /// Proof-of-work difficulty in leading zero bits.
    #[arg(long, default_value_t = 16)]
    difficulty: u8,
    /// The relay seals a block once its oldest frame has waited this long (ms),
    /// or sooner when it is full; the relay's own default.
    #[arg(long, default_value_t = gridpow_relay::config::BlockConfig::default().max_age_ms)]
    block_age_ms: u64,
    /// The database: SQLite in the data directory by default, or `postgres://user@host/db`.
    #[arg(long)]
    db: Option<String>,
    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The final summary.
#[derive(Debug, Serialize)]
struct Summary {
    generated: u64,
    acknowledged: u64,
    stored: u64,
    lost: u64,
    dropped: u64,
    blocks: u64,
    retransmissions: u64,
    frames_duplicate: u64,
    blocks_rejected: u64,
    seconds: f64,
    /// Reading made (end of its interval, meter clock) → its block received by the server, ms.
    latency_p50_ms: Option<i64>,
    latency_p99_ms: Option<i64>,
    latency_max_ms: Option<i64>,
    /// What the block age costs while meters measure (set-up and drain left
    /// out): blocks sealed per hour, block bytes per stored reading (the
    /// whole database), and the share of the time the relay spent solving
    /// proofs of work.
    traffic_seconds: f64,
    blocks_per_hour: f64,
    ledger_bytes_per_reading: Option<f64>,
    pow_busy: f64,
    /// The stored ledger verified and the run itself succeeded: never true
    /// after a failed run, whatever the ledger check said.
    ledger_verified: bool,
    /// Why the run failed (readings lost, blocks refused, pipeline not
    /// drained, ledger invalid); empty when it succeeded.
    failures: Vec<String>,
    dashboard: String,
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=0.9).contains(&a.loss) {
        anyhow::bail!("--loss must be between 0 and 0.9");
    }
    if a.meters == 0 {
        anyhow::bail!("--meters must be at least 1");
    }
    if a.interval.is_nan() || a.interval <= 0.0 {
        anyhow::bail!("--interval must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(demo(a))
}

fn progress(quiet: bool, msg: std::fmt::Arguments<'_>) {
    if !quiet {
        eprintln!("{msg}");
    }
}

async fn demo(mut a: DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let q = false;
    let data_dir = a.data_dir.take().unwrap_or_else(crate::default_data_dir);
    // Preflight: before any key, journal or database is touched, claim the
    // whole data directory (a second demo on it would share the journal and
    // database and corrupt the first one's state) and prove it is a writable
    // directory. The relay, fleet and server below lock their own parts too.
    let _lock = DataLock::dir(&data_dir).context("--data-dir")?;
    let db_url =
        a.db.clone()
            .unwrap_or_else(|| data_dir.join("gridpow.db").to_string_lossy().into_owned());
    // The same check for the database, now rather than after keys and the
    // broker are up (the data directory's lock covers a database inside it).
    if let Ok(gridpow_store::DbUrl::Sqlite(path)) = gridpow_store::DbUrl::parse(&db_url) {
        gridpow_common::datadir::check_sqlite_writable(&path).context("--db")?;
    }
    progress(q, format_args!("data directory: {}", data_dir.display()));
    let data_dir = &data_dir;
    let keys = KeyDir::new(data_dir.join("keys"));
    if !keys.is_initialised() {
        progress(
            q,
            format_args!(
                "first run: creating keys and certificates in {}",
                keys.root().display()
            ),
        );
        keys.init(&InitOptions::default())?;
    }
    let registered = keys.meters()?;
    let missing: Vec<(u32, Option<gridpow_proto::MacAddr>)> = (1..=a.meters)
        .filter(|id| registered.get(*id).is_none())
        .map(|id| (id, None))
        .collect();
    if !missing.is_empty() {
        keys.add_meters(&missing)?;
    }

    // Each service runs from its own least-privilege bundle, as in a deployment:
    // the relay never sees the site secret, the server never a relay's private key.
    let bundles = data_dir.join("bundles");
    let relay_keys = KeyDir::new(bundles.join("relay-1"));
    let server_keys = KeyDir::new(bundles.join("server"));
    keys.export_relay_bundle(1, None, &relay_keys)?;
    keys.export_server_bundle("server-1", &server_keys)?;

    let broker = start_embedded(&keys, &EmbeddedOptions::default())?;
    progress(
        q,
        format_args!(
            "embedded MQTT broker (TLS, client certificates required) on {} and {}",
            broker.v4_addr, broker.v5_addr
        ),
    );

    let mut scfg = ServerConfig {
        keys_dir: server_keys.root().to_path_buf(),
        db: db_url.clone(),
        min_difficulty: a.difficulty,
        ..ServerConfig::default()
    };
    scfg.mqtt.host = broker.v5_addr.ip().to_string();
    scfg.mqtt.port = broker.v5_addr.port();
    crate::services::apply_http_flag(&mut scfg, &a.http)?;
    scfg.plausibility.expected_interval_s = a.interval.ceil().max(1.0) as u64;
    // A fresh admin token each run (the file keeps only hashes, so an old one cannot be shown again).
    let tokens = scfg.tokens_path();
    let mut file = TokenFile::load(&tokens)?;
    file.revoke("demo");
    let token = file.create("demo", Role::Admin, None)?;
    file.save(&tokens)?;
    let server = Server::start(scfg)
        .await
        .context("starting the grid server (another --http address may help)")?;
    let dashboard = format!("http://{}/", server.http_addr());
    let login = format!("http://{}/login?token={token}", server.http_addr());
    // The database may hold earlier runs: the summary counts this run only.
    let before = server.stats();
    let stored_before = before.ledger.readings_stored;

    let medium = Medium::new(a.loss, 0x6772_6964);
    let mut rcfg = RelayConfig::new(1, relay_keys.root(), data_dir.join("relay-1"));
    rcfg.difficulty = a.difficulty;
    rcfg.block.max_age_ms = a.block_age_ms;
    rcfg.mqtt.host = broker.v4_addr.ip().to_string();
    rcfg.mqtt.port = broker.v4_addr.port();
    let relay_port = medium.port(&[rcfg.mac()]);
    let relay = Relay::start(rcfg, Box::new(relay_port))
        .await
        .context("starting the relay")?;

    let mut fcfg = FleetConfig::new(keys.root(), data_dir.join("meters"));
    fcfg.meters = MeterSelection::Range {
        from: 1,
        to: a.meters,
    };
    fcfg.interval_s = a.interval;
    let macs: Vec<_> = Fleet::meter_macs(&fcfg)?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let fleet = Fleet::start(fcfg, Box::new(medium.port(&macs)))?;
    let traffic_started = Instant::now();

    progress(
        q,
        format_args!(
            "{} virtual meters reporting every {} s over a simulated air with {:.0} % loss",
            a.meters,
            a.interval,
            a.loss * 100.0
        ),
    );
    progress(q, format_args!("dashboard: {login}"));
    progress(
        q,
        format_args!(
            "API: curl -H 'Authorization: Bearer {token}' {dashboard}api/v1/stats (admin token \"demo\" in {})",
            tokens.display()
        ),
    );
    match a.duration {
        Some(d) => progress(
            q,
            format_args!("running for {d} s, then draining and verifying"),
        ),
        None => progress(q, format_args!("press Ctrl-C to stop")),
    }

    let deadline = a.duration.map(|d| started + Duration::from_secs(d));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let stop = crate::services::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let (f, r, s) = (fleet.stats(), relay.stats(), server.stats());
                progress(q, format_args!(
                    "[{:>4.0} s] generated {} · acknowledged {} · stored {} · blocks {} · retransmissions {} · outbox {}",
                    started.elapsed().as_secs_f64(), f.generated, f.acknowledged, s.ledger.readings_stored - stored_before,
                    r.blocks_sealed, f.retransmissions, r.outbox_len,
                ));
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }

    progress(q, format_args!("draining: meters stop measuring, outstanding readings are acknowledged, sealed, stored"));
    fleet.stop_generating();
    // What the block age costs is judged over the traffic, not the set-up or the drain.
    let traffic_s = traffic_started.elapsed().as_secs_f64().max(1e-9);
    let at_stop = relay.stats();
    let drained = tokio::task::spawn_blocking({
        let f = fleet;
        move || {
            let ok = f.wait_drained(Duration::from_secs(60));
            (ok, f)
        }
    })
    .await?;
    let (meters_drained, fleet) = drained;
    let relay_drained = relay.drain(Duration::from_secs(60)).await;
    let fstats = fleet.shutdown()?;
    // The server commits before it sends the receipt that empties the relay's outbox;
    // wait a moment for its counters to catch up.
    let want = fstats.acknowledged;
    let wait_until = Instant::now() + Duration::from_secs(30);
    while server.stats().ledger.readings_stored - stored_before < want
        && Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rstats = relay.stats();
    let sstats = server.stats();
    relay.shutdown().await;
    server.shutdown().await;

    let stored = sstats.ledger.readings_stored - stored_before;
    let rejected = sstats
        .ledger
        .blocks_rejected
        .saturating_sub(before.ledger.blocks_rejected);
    let lost = fstats.generated.saturating_sub(stored);
    let ledger = gridpow_server::verify_ledger(&db_url, &keys);
    let mut failures = Vec::new();
    if lost > 0 {
        failures.push(format!("{lost} readings lost"));
    }
    if rejected > 0 {
        failures.push(format!("{rejected} blocks refused by the server"));
    }
    if !meters_drained || !relay_drained {
        failures.push("the pipeline did not drain within the time allowed".into());
    }
    if let Err(e) = &ledger {
        failures.push(format!("ledger verification failed: {e}"));
    }
    let lat = latencies(&db_url).unwrap_or_else(|e| {
        eprintln!("warning: could not read latencies: {e}");
        Vec::new()
    });
    let ledger_size = gridpow_store::open_reader(&db_url)
        .and_then(|mut r| r.ledger_size())
        .map_err(|e| eprintln!("warning: could not read the ledger's size: {e}"))
        .ok();
    let seconds = started.elapsed().as_secs_f64();
    let pct =
        |q: f64| (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * q).round() as usize]);
    let summary = Summary {
        generated: fstats.generated,
        acknowledged: fstats.acknowledged,
        stored,
        lost,
        dropped: fstats.dropped,
        blocks: rstats.blocks_sealed,
        retransmissions: fstats.retransmissions,
        frames_duplicate: rstats.frames_duplicate,
        blocks_rejected: rejected,
        seconds,
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        latency_max_ms: lat.last().copied(),
        traffic_seconds: traffic_s,
        blocks_per_hour: at_stop.blocks_sealed as f64 * 3600.0 / traffic_s,
        ledger_bytes_per_reading: ledger_size.map(|s| s.bytes_per_reading()),
        pow_busy: at_stop.pow_time_ms_total as f64 / (traffic_s * 1000.0),
        ledger_verified: ledger.is_ok() && failures.is_empty(),
        failures,
        dashboard,
    };
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("readings generated     {}", summary.generated);
        println!("readings acknowledged  {}", summary.acknowledged);
        println!("readings stored        {}", summary.stored);
        println!("readings lost          {}", summary.lost);
        println!("blocks sealed          {}", summary.blocks);
        println!("retransmissions        {}", summary.retransmissions);
        if let (Some(p50), Some(p99)) = (summary.latency_p50_ms, summary.latency_p99_ms) {
            println!("meter → database       p50 {p50} ms, p99 {p99} ms");
        }
        println!(
            "block cost             {:.0} blocks/h, {} ledger bytes/reading, PoW busy {:.1} % of the time",
            summary.blocks_per_hour,
            summary
                .ledger_bytes_per_reading
                .map_or("?".into(), |b| format!("{b:.0}")),
            100.0 * summary.pow_busy
        );
        if summary.blocks_rejected > 0 {
            println!("blocks refused         {}", summary.blocks_rejected);
        }
        // After a failed run the ledger check proves nothing about this run's
        // readings (they may never have arrived): say so instead of "yes".
        if summary.failures.is_empty() {
            println!(
                "ledger verified        {}",
                if summary.ledger_verified { "yes" } else { "NO" }
            );
        } else {
            println!("ledger verified        NO (the run failed)");
        }
    }
    for f in &summary.failures {
        eprintln!("demo FAILED: {f}");
    }
    if !summary.failures.is_empty() && data_dir.exists() {
        eprintln!(
            "the data directory {} is kept as it is; README.md \"Recovering a damaged data directory\" says how to check and recover it",
            data_dir.display()
        );
    }
    let ok = summary.failures.is_empty();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Latency of every stored reading from its making to its block's arrival at the server, sorted.
fn latencies(db: &str) -> anyhow::Result<Vec<i64>> {
    Ok(gridpow_store::open_reader(db)?.delivery_latencies()?)
}
