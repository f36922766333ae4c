//! `gridpow server --http HOST:PORT`: a host name such as `localhost` is
//! resolved at start and served (its name allowed as `Host`); one that does
//! not resolve stops the server at once with an error naming the flag.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{gridpow_in as gridpow, text};

/// Keys, a server bundle and a server.toml whose broker is absent (the HTTP
/// API serves without it).
fn server_site(dir: &Path) -> String {
    for args in [
        &["keys", "init", "--dir", "keys"][..],
        &[
            "keys", "export", "server", "--dir", "keys", "--out", "server-1",
        ][..],
    ] {
        let o = gridpow(dir, args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    std::fs::write(
        dir.join("server.toml"),
        format!("keys_dir = \"server-1\"\ndb = \"gridpow.db\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\n"),
    )
    .unwrap();
    "server.toml".into()
}

fn get(addr: SocketAddr, host: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn server_http_accepts_a_host_name_and_serves_on_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_site(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .current_dir(dir.path())
        .args(["server", "--config", &cfg, "--http", "localhost:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut addr = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("dashboard http://").nth(1) {
            addr = rest
                .split('/')
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            break;
        }
    }
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no dashboard line:\n{seen}");
    };
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST, "{seen}");
    let health = get(addr, &format!("localhost:{}", addr.port()), "/healthz");
    let _ = child.kill();
    let _ = child.wait();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}

#[test]
fn server_http_with_a_name_that_does_not_resolve_fails_fast_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_site(dir.path());
    let o = gridpow(
        dir.path(),
        &[
            "server",
            "--config",
            &cfg,
            "--http",
            "no-such-host.invalid:8080",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("--http")
            && t.contains("no-such-host.invalid")
            && t.contains("does not resolve"),
        "{t}"
    );
    let o = gridpow(
        dir.path(),
        &["server", "--config", &cfg, "--http", "localhost"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("HOST:PORT"), "{}", text(&o));
}

#[test]
fn a_config_file_listen_address_may_be_a_host_name_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = server_site(dir.path());
    let mut toml = std::fs::read_to_string(dir.path().join(&cfg)).unwrap();
    toml.push_str("[http]\nlisten = \"no-such-host.invalid:0\"\n");
    std::fs::write(dir.path().join(&cfg), toml).unwrap();
    let o = gridpow(dir.path(), &["server", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("http.listen") && t.contains("does not resolve"),
        "{t}"
    );
}
