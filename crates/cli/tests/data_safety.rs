//! Safety of data (issue 12): one process per data directory, preflight
//! checks that fail at once with one line, and the demo's secrets kept out of
//! the working directory.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridpow_testkit::KillOnDrop;

/// `gridpow demo` with its default data directory under `xdg` and its
/// working directory `cwd`, so that the test sees where the default lands.
fn demo(xdg: &Path, cwd: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridpow"));
    c.arg("demo")
        .args([
            "--http",
            "127.0.0.1:0",
            "--meters",
            "3",
            "--difficulty",
            "8",
        ])
        .args(extra)
        .env("XDG_DATA_HOME", xdg)
        .env("GRIDPOW_LOG", "warn,rumqttd=off")
        .current_dir(cwd);
    c
}

mod common;

use common::text;

/// Waits until `log` contains `needle` (the first demo is up).
fn wait_for(log: &Path, needle: &str, child: &mut Child) {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(log).unwrap_or_default();
        if s.contains(needle) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the first demo exited early with {status}: {s}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {needle:?} after 120 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_demo_on_the_same_data_dir_is_refused_naming_the_first_ones_pid() {
    let t = tempfile::tempdir().unwrap();
    let xdg = t.path().join("xdg");
    let cwd = t.path().join("checkout");
    std::fs::create_dir_all(&cwd).unwrap();
    let log = t.path().join("first.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut first = KillOnDrop(
        demo(&xdg, &cwd, &[])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    wait_for(&log, "dashboard:", &mut first.0);

    // The default is the per-user data directory, said at start, and nothing
    // (no keys, no site secret) is written into the working directory.
    let data = xdg.join("gridpow").join("demo");
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        first_log.contains(&format!("data directory: {}", data.display())),
        "{first_log}"
    );
    assert!(data.join("keys").is_dir() && data.join("LOCK").is_file());
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);

    let started = Instant::now();
    let o = demo(&xdg, &cwd, &["--duration", "5"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains(&format!(
            "data directory {} is in use by process {}",
            data.display(),
            first.0.id()
        )),
        "{msg}"
    );
    assert!(msg.contains("LOCK"), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );

    // A crash releases the lock: the kernel drops the flock with the
    // process, and the next run recovers the data directory and succeeds.
    drop(first);
    let o = demo(&xdg, &cwd, &["--duration", "3"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ledger verified        yes"));
}

#[test]
fn a_data_dir_under_a_regular_file_fails_at_start_with_one_line() {
    // A regular file where a directory should be fails even as root (CI runs
    // as root, where permission bits would not stop a write).
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let data = file.join("demo");
    let o = demo(t.path(), t.path(), &["--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    assert!(
        msg.contains(&format!("{} is a file, not a directory", file.display())),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
}

#[test]
fn a_read_only_sqlite_database_is_refused_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("demo");
    let db = t.path().join("gridpow.db");
    std::fs::write(&db, b"").unwrap();
    let mut p = std::fs::metadata(&db).unwrap().permissions();
    p.set_readonly(true);
    std::fs::set_permissions(&db, p).unwrap();
    let started = Instant::now();
    let o = demo(
        t.path(),
        t.path(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--duration",
            "5",
        ],
    )
    .output()
    .unwrap();
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains(&format!("database {} is not writable", db.display())),
        "{msg}"
    );
    assert!(msg.contains("fix its permissions"), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    assert!(
        !data.join("keys").exists(),
        "refused before any key was made"
    );
    assert!(
        !msg.contains("Commit failed") && !msg.contains("panicked"),
        "{msg}"
    );
    assert!(!msg.contains("verified"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30), "fails fast");
}
