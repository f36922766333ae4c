//! Helpers shared by the multi-process tests: spawning `gridpow` subcommands
//! with their logs in files (as [`Daemon`]s), free ports, and exporting key bundles with the CLI.
#![allow(dead_code)] // each test file uses a subset

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gridpow_testkit::Daemon;

/// Runs `gridpow args` to completion.
pub fn gridpow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(args)
        .output()
        .expect("gridpow runs")
}

/// Creates an API token with `role` named `name` in the tokens file `file`
/// (`gridpow tokens create`) and returns it.
pub fn create_token(file: &str, name: &str, role: &str) -> String {
    let o = gridpow(&[
        "tokens", "create", "--file", file, "--name", name, "--role", role,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

/// The site's broker: a private Mosquitto requiring client certificates
/// from the site CA (mutual TLS), as deployed.
pub fn site_broker(keys: &gridpow_keys::KeyDir) -> gridpow_testkit::Mosquitto {
    gridpow_testkit::Mosquitto::start(
        keys,
        &gridpow_testkit::MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .expect("mosquitto starts")
}

/// The whole response (status line, headers, body) to `GET path` on a local
/// HTTP port, with a bearer token.
pub fn http_get(port: u16, token: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout set");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response read");
    out
}

/// Runs `gridpow args` to completion in the working directory `dir`.
pub fn gridpow_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("gridpow runs")
}

/// A finished command's stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts `gridpow args` as `name` with the log filter `info,rumqttd=off`,
/// its output appended to `log`.
pub fn spawn(name: &str, args: &[&str], log: &Path) -> Daemon {
    spawn_logging(name, args, log, "info,rumqttd=off")
}

/// As [`spawn`], with the log filter `filter` (`GRIDPOW_LOG`).
pub fn spawn_logging(name: &str, args: &[&str], log: &Path, filter: &str) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gridpow"));
    cmd.args(args).env("GRIDPOW_LOG", filter);
    Daemon::start(name, cmd, log)
}

/// A key directory made in process in `root/keys` with meters 1 to
/// `meters`, and its path for command lines.
pub fn key_dir(root: &Path, meters: u32) -> (gridpow_keys::KeyDir, String) {
    let keys = gridpow_keys::KeyDir::new(root.join("keys"));
    keys.init(&gridpow_keys::InitOptions::default()).unwrap();
    keys.add_meters(&(1..=meters).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let k = keys.root().display().to_string();
    (keys, k)
}

/// `gridpow keys init` in `root/keys` with meters `range` (e.g. "1-3");
/// returns the keys directory as a string for command lines.
pub fn keys_with_meters(root: &Path, range: &str) -> String {
    let k = root.join("keys").to_string_lossy().into_owned();
    assert!(gridpow(&["keys", "init", "--dir", &k]).status.success());
    assert!(
        gridpow(&["keys", "add-meters", "--dir", &k, "--range", range])
            .status
            .success()
    );
    k
}

pub fn free_udp_port() -> u16 {
    gridpow_testkit::free_udp_port().unwrap()
}

pub fn free_tcp_port() -> u16 {
    gridpow_testkit::free_port().unwrap()
}

/// Runs `gridpow keys export …` as an operator would; panics with its output on failure.
pub fn export_bundle(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(["keys", "export"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gridpow keys export {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `meters.toml` for virtual meters over UDP air towards `udp_relay`,
/// with keys from the master directory `keys` (virtual meters stand in for
/// meters flashed with their own keys), a ground-truth file and radio `loss`.
pub fn write_meters_config(
    root: &Path,
    keys: &str,
    udp_relay: u16,
    interval_s: f64,
    loss: f64,
    truth: &Path,
) {
    std::fs::write(
        root.join("meters.toml"),
        format!(
            "keys_dir = \"{keys}\"\nstate_dir = \"{}\"\ninterval_s = {interval_s}\ntruth_file = \"{}\"\n[radio]\nudp_relay = \"127.0.0.1:{udp_relay}\"\nudp_listen = \"127.0.0.1:0\"\nloss = {loss}\n",
            root.join("meters").display(),
            truth.display()
        ),
    )
    .unwrap();
}

/// Starts `gridpow server` and `gridpow relay` from `root/{server,relay}.toml`
/// (relay log filter `relay_log`), then `gridpow meters` from `root/meters.toml`
/// a second later; logs go to `root/<name>.log`.
pub fn start_stack(root: &Path, relay_log: &str) -> (Daemon, Daemon, Daemon) {
    let cfg = |n: &str| root.join(n).to_string_lossy().into_owned();
    let server = spawn(
        "server",
        &["server", "--config", &cfg("server.toml")],
        &root.join("server.log"),
    );
    let relay = spawn_logging(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &root.join("relay.log"),
        relay_log,
    );
    std::thread::sleep(Duration::from_secs(1));
    let meters = spawn(
        "meters",
        &["meters", "--config", &cfg("meters.toml")],
        &root.join("meters.log"),
    );
    (server, relay, meters)
}

/// The logs `files` in `root`, each after a `--- name` line, for assertion messages.
pub fn logs(root: &Path, files: &[&str]) -> String {
    files
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(root.join(f)).unwrap_or_default()
            )
        })
        .collect()
}

/// Writes `root/server.toml`: a grid server from the key bundle `bundle`
/// storing in the SQLite database `db`, refusing blocks below `difficulty`,
/// with the broker on 127.0.0.1:`broker_port` and HTTP on `http` (0: any).
pub fn write_server_config(
    root: &Path,
    bundle: &str,
    db: &Path,
    difficulty: u8,
    broker_port: u16,
    http: u16,
) {
    std::fs::write(
        root.join("server.toml"),
        format!(
            "keys_dir = \"{bundle}\"\ndb = \"{}\"\nmin_difficulty = {difficulty}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n",
            db.display()
        ),
    )
    .expect("server.toml written");
}

/// How a test relay runs (`write_relay_config`).
pub struct RelaySetup<'a> {
    /// Relay id.
    pub id: u32,
    /// Its key bundle.
    pub bundle: &'a str,
    /// Its data directory.
    pub data: &'a Path,
    /// UDP air port it listens on.
    pub udp: u16,
    /// The broker's port on 127.0.0.1.
    pub broker_port: u16,
    /// PoW difficulty.
    pub difficulty: u8,
    /// Seal a block once its oldest frame waited this long.
    pub max_age_ms: u64,
}

/// Writes the relay configuration `path` for `r`: UDP air, MQTT over TLS.
pub fn write_relay_config(path: &Path, r: &RelaySetup) {
    std::fs::write(
        path,
        format!(
            "relay_id = {}\nkeys_dir = \"{}\"\ndata_dir = \"{}\"\ndifficulty = {}\n[block]\nmax_age_ms = {}\n\
             [radio]\nkind = \"udp\"\nudp_listen = \"127.0.0.1:{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n",
            r.id,
            r.bundle,
            r.data.display(),
            r.difficulty,
            r.max_age_ms,
            r.udp,
            r.broker_port
        ),
    )
    .expect("relay configuration written");
}

/// The (meter, epoch, seq) of every reading the virtual meters generated,
/// from their truth file; panics if the file repeats one.
pub fn truth_keys(truth: &Path) -> std::collections::BTreeSet<(u32, u32, u32)> {
    let records = gridpow_meters::read_truth(truth).unwrap();
    let keys: std::collections::BTreeSet<_> = records
        .iter()
        .map(|t| (t.meter_id, t.boot_epoch, t.seq))
        .collect();
    assert_eq!(
        keys.len(),
        records.len(),
        "the truth file repeats a reading"
    );
    keys
}

/// Asserts that `got` (stored) is exactly `want` (generated), naming what
/// is missing and showing `logs` if not.
pub fn assert_stored_exactly(
    want: &std::collections::BTreeSet<(u32, u32, u32)>,
    got: &std::collections::BTreeSet<(u32, u32, u32)>,
    logs: impl FnOnce() -> String,
) {
    assert!(
        got == want,
        "{} of {} readings missing, e.g. {:?}; {} stored that were not generated\n{}",
        want.difference(got).count(),
        want.len(),
        want.difference(got).take(5).collect::<Vec<_>>(),
        got.difference(want).count(),
        logs()
    );
}

/// The stored readings once at least `n` are stored, or what is stored when
/// `timeout` has passed (the caller's comparison then says what is missing).
pub fn stored_keys_when(
    db: &Path,
    n: usize,
    timeout: std::time::Duration,
) -> std::collections::BTreeSet<(u32, u32, u32)> {
    stored_keys_until(db, timeout, |got| got.len() >= n)
}

/// The stored readings once `done` says so of them, or what is stored when
/// `timeout` has passed.
pub fn stored_keys_until(
    db: &Path,
    timeout: std::time::Duration,
    done: impl Fn(&std::collections::BTreeSet<(u32, u32, u32)>) -> bool,
) -> std::collections::BTreeSet<(u32, u32, u32)> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = stored_keys(db);
    while !done(&got) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
        got = stored_keys(db);
    }
    got
}

/// The (meter, epoch, seq) of every reading stored in the SQLite database
/// `db` (none while it does not exist yet); panics if one is stored twice.
pub fn stored_keys(db: &Path) -> std::collections::BTreeSet<(u32, u32, u32)> {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Default::default();
    };
    let Ok(mut st) = c.prepare("SELECT meter_id, epoch, seq FROM readings") else {
        return Default::default();
    };
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("readings query");
    let mut out = std::collections::BTreeSet::new();
    for r in rows {
        let k = r.expect("reading row");
        assert!(out.insert(k), "reading {k:?} stored twice");
    }
    out
}

/// Writes `root/relay.toml` for relay 1 from `bundle`, data in `root/relay`,
/// difficulty 8, blocks sealed after 200 ms: the rotation tests' relay.
pub fn write_relay_1_config(root: &Path, bundle: &str, udp: u16, broker_port: u16) {
    let data = root.join("relay");
    let setup = RelaySetup {
        id: 1,
        bundle,
        data: &data,
        udp,
        broker_port,
        difficulty: 8,
        max_age_ms: 200,
    };
    write_relay_config(&root.join("relay.toml"), &setup);
}
