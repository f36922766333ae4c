//! README.md's "Running the parts separately", run as written: the test reads
//! the command block from README.md itself, so the two cannot drift apart.
//! Every command runs in a fresh directory with `gridpow` on the PATH; the
//! long-running ones (broker, server, relay, meters) in the background, then
//! stopped with SIGINT (meters first), before the last command,
//! `verify-ledger`, must exit 0 over a database that stored readings.
//! The only changes: the README's fixed ports are replaced by free ones
//! (textually in the commands, by `GRIDPOW_…` overrides for the ports the
//! example configurations hold), and the meters report every 2 s instead of 10.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_tcp_port, free_udp_port, text};
use gridpow_testkit::Daemon;

const LONG_RUNNING: [&str; 4] = ["broker", "server", "relay", "meters"];

/// The commands of the README's "Running the parts separately" block, without comments.
fn readme_commands() -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## Running the parts separately")
        .nth(1)
        .expect("README.md has a section \"Running the parts separately\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The subcommand of a `[VAR=value …] gridpow SUB …` line.
fn subcommand(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace().skip_while(|w| w.contains('='));
    (words.next() == Some("gridpow"))
        .then(|| words.next())
        .flatten()
}

/// Starts a long-running line: its `VAR=value` prefixes as environment, the
/// rest as `gridpow`'s arguments (these lines have no quotes or redirections).
fn spawn(dir: &Path, line: &str, env: &[(String, String)]) -> Daemon {
    let words: Vec<&str> = line.split_whitespace().collect();
    let split = words.iter().position(|w| !w.contains('=')).unwrap();
    assert_eq!(words[split], "gridpow", "{line}");
    let name = words[split + 1];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gridpow"));
    cmd.current_dir(dir)
        .args(&words[split + 1..])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    for w in &words[..split] {
        let (k, v) = w.split_once('=').unwrap();
        cmd.env(k, v);
    }
    Daemon::start(name, cmd, dir.join(format!("{name}.log")))
}

fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what} not seen within {within:?}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn readings_stored(db: &Path) -> i64 {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    c.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn the_readme_commands_for_running_the_parts_separately_work_in_order() {
    let commands = readme_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    // Every command of the block is a gridpow command (nothing to skip).
    for c in &commands {
        assert!(subcommand(c).is_some(), "not a gridpow command: {c}");
    }
    assert_eq!(
        commands.last().and_then(|c| subcommand(c)),
        Some("verify-ledger")
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gridpow")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (v5, v311, http, air) = (
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
        free_udp_port(),
    );
    let env: Vec<(String, String)> = [
        ("PATH", path.clone()),
        ("GRIDPOW_LOG", "info,rumqttd=off".into()),
        ("GRIDPOW_SERVER__MQTT__PORT", v5.to_string()),
        ("GRIDPOW_SERVER__HTTP__LISTEN", format!("127.0.0.1:{http}")),
        (
            "GRIDPOW_RELAY__RADIO__UDP_LISTEN",
            format!("127.0.0.1:{air}"),
        ),
        (
            "GRIDPOW_METERS__RADIO__UDP_RELAY",
            format!("127.0.0.1:{air}"),
        ),
        ("GRIDPOW_METERS__INTERVAL_S", "2".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut running: Vec<Daemon> = Vec::new();
    let mut verified = None;
    for line in &commands {
        let line = line
            .replace("8883", &v5.to_string())
            .replace("8884", &v311.to_string())
            .replace("8080", &http.to_string());
        let sub = subcommand(&line).unwrap().to_string();
        if LONG_RUNNING.contains(&sub.as_str()) {
            let p = spawn(root, &line, &env);
            match sub.as_str() {
                "broker" => p.wait_log("listening on", Duration::from_secs(20)),
                "relay" | "server" => std::thread::sleep(Duration::from_secs(1)),
                _ => {}
            }
            running.push(p);
            continue;
        }
        if !running.is_empty() {
            // The long-running parts are up: let the meters report, then stop
            // everything in reverse order, as the README says.
            let logs = || {
                running
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name(), p.log()))
                    .collect::<String>()
            };
            wait_for(
                "readings stored",
                Duration::from_secs(60),
                || readings_stored(&root.join("gridpow.db")) >= 51,
                logs,
            );
            let logs = logs();
            assert!(!logs.contains('\u{1b}'), "colour codes in logs:\n{logs}");
            let mut stopped = Vec::new();
            while let Some(mut p) = running.pop() {
                p.interrupt(Duration::from_secs(60));
                stopped.push((p.name().to_string(), p.log()));
            }
            // Start and stop lines: which database, which broker, which chain head.
            let log = |name: &str| {
                stopped
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default()
            };
            let (broker, server, relay) = (log("broker"), log("server"), log("relay"));
            assert!(
                broker.contains(&format!("listening on 127.0.0.1:{v5} (MQTT 5")),
                "{broker}"
            );
            assert!(
                server.contains("grid server running: database gridpow.db (0 blocks")
                    && server.contains(&format!("broker localhost:{v5} (TLS, MQTT 5)"))
                    && server.contains("grid server stopped: database gridpow.db holds"),
                "{server}"
            );
            assert!(
                relay.contains(&format!("broker localhost:{v311} (TLS, MQTT 3.1.1)"))
                    && relay.contains("starting a new chain")
                    && relay.contains("chain at height"),
                "{relay}"
            );
            assert!(!relay.contains("cannot connect"), "{relay}");
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir(root)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "`{line}` failed: {}", text(&out));
        if sub == "verify-ledger" {
            verified = Some(text(&out));
        }
    }
    let verified = verified.expect("verify-ledger ran");
    assert!(verified.contains("ledger OK"), "{verified}");
    assert!(readings_stored(&root.join("gridpow.db")) >= 51);
}

#[test]
fn the_broker_refuses_a_port_in_use_naming_the_address_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = common::gridpow(&["keys", "init", "--dir", &keys.to_string_lossy()]);
    assert!(o.status.success(), "{}", text(&o));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = common::gridpow(&[
        "broker",
        "--keys",
        &keys.to_string_lossy(),
        "--listen",
        &addr,
        "--listen-v311",
        &format!("127.0.0.1:{}", free_tcp_port()),
    ]);
    let err = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} (--listen)")),
        "{err}"
    );
}

#[test]
fn the_broker_without_keys_says_how_to_make_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("keys");
    let o = common::gridpow(&["broker", "--keys", &missing.to_string_lossy()]);
    let err = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--keys") && err.contains("gridpow keys init"),
        "{err}"
    );
}
