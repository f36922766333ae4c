//! The dashboard in a real browser: Debian's Chromium, headless, against a
//! running `gridpow demo`, logged in through the address the demo prints.
//! Data must appear on the page.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gridpow_testkit::{free_port, KillOnDrop};

fn http_get(port: u16, token: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Chromium is required for the dashboard test: apt-get install chromium (scripts/deps.sh does it)")
}

fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn number_in(dom: &str, id: &str) -> Option<u64> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let text = &rest[rest.find('>')? + 1..rest.find('<')?];
    text.trim().replace([',', ' ', '\u{a0}'], "").parse().ok()
}

#[test]
fn dashboard_shows_live_readings_and_blocks_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args([
            "demo",
            "--meters",
            "6",
            "--duration",
            "60",
            "--difficulty",
            "12",
            "--http",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = KillOnDrop(child);
    // The demo prints its login address on stderr; keep draining it afterwards.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = demo.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("dashboard: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let login = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo printed no dashboard address");
    let token = login
        .split_once("/login?token=")
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| panic!("no token in the dashboard address {login}"));
    assert!(
        login.starts_with(&format!("http://127.0.0.1:{port}/login?token=gpt_")),
        "{login}"
    );
    let anonymous = http_get(port, "", "/api/v1/stats").unwrap_or_default();
    assert!(anonymous.contains(" 401 "), "{anonymous}");
    // Wait until the server has stored a few blocks.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the demo's API never reported stored readings"
        );
        if let Some(body) = http_get(port, &token, "/api/v1/stats") {
            if let Some(json) = body.split("\r\n\r\n").nth(1) {
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                if v["readings_stored"].as_u64().unwrap_or(0) >= 12
                    && v["blocks_verified"].as_u64().unwrap_or(0) >= 2
                {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let dom = dump_dom(&login);
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page never rendered data:\n{}",
        &dom[..dom.len().min(2000)]
    );
    let stored = number_in(&dom, "readings-stored").unwrap_or(0);
    assert!(stored >= 12, "readings-stored shows {stored}");
    assert_eq!(number_in(&dom, "meters-count"), Some(6));
    assert!(number_in(&dom, "blocks-verified").unwrap_or(0) >= 2);
    let blocks_table = &dom[dom.find("id=\"blocks-table\"").unwrap()..];
    assert!(
        blocks_table.matches("<tr").count() >= 3,
        "the blocks table has no rows"
    );
    assert!(dom.contains("id=\"power-chart\""));
}
