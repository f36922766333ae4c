//! Helpers shared by the multi-process tests: spawning `gridpow` subcommands
//! with their logs in files, free ports, and exporting key bundles with the CLI.
#![allow(dead_code)] // each test file uses a subset

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs `gridpow args` to completion.
pub fn gridpow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(args)
        .output()
        .expect("gridpow runs")
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

/// A `gridpow` child process, killed when dropped.
pub struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, args: &[&str], log: &Path) -> Proc {
        Self::spawn_logging(name, args, log, "info,rumqttd=off")
    }

    /// As [`Proc::spawn`], with the log filter `filter`.
    pub fn spawn_logging(name: &'static str, args: &[&str], log: &Path, filter: &str) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gridpow"))
            .args(args)
            .env("GRIDPOW_LOG", filter)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc { name, child }
    }

    /// SIGINT, the graceful stop, then wait for the exit status.
    pub fn interrupt(&mut self, within: Duration) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not stop within {within:?}", self.name);
    }
}

impl Proc {
    /// SIGINT, and SIGKILL if it has not stopped within 2 s.
    pub fn interrupt_or_kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
pub fn start_stack(root: &Path, relay_log: &str) -> (Proc, Proc, Proc) {
    let cfg = |n: &str| root.join(n).to_string_lossy().into_owned();
    let server = Proc::spawn(
        "server",
        &["server", "--config", &cfg("server.toml")],
        &root.join("server.log"),
    );
    let relay = Proc::spawn_logging(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &root.join("relay.log"),
        relay_log,
    );
    std::thread::sleep(Duration::from_secs(1));
    let meters = Proc::spawn(
        "meters",
        &["meters", "--config", &cfg("meters.toml")],
        &root.join("meters.log"),
    );
    (server, relay, meters)
}
