//! `gridpow check-proof` on reading proof documents built by the library
//! (gridpow_tlog::reading_proof::fixture): a real one verifies (exit 0), a
//! tampered one fails (exit 1) naming the failed check, and what cannot be
//! checked exits 2. `gridpow prove-reading` against a canned HTTP server:
//! the document lands in the file, a server error is shown with its code.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use gridpow_tlog::reading_proof::fixture::{fixture, Fixture};
use gridpow_tlog::reading_proof::ReadingProof;

mod common;

use common::{gridpow, text};

/// Runs `gridpow args` with extra environment variables.
fn gridpow_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gridpow"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("gridpow runs")
}

fn write_proof(dir: &Path, name: &str, p: &ReadingProof) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(p).unwrap()).unwrap();
    path
}

/// `gridpow check-proof FILE --log-key … --witness-key …` plus `extra`.
fn check(f: &Fixture, file: &Path, extra: &[&str]) -> Output {
    let log = f.log.vkey();
    let witness = f.witness.verifier().vkey();
    let mut args = vec![
        "check-proof",
        file.to_str().unwrap(),
        "--log-key",
        &log,
        "--witness-key",
        &witness,
    ];
    args.extend_from_slice(extra);
    gridpow(&args)
}

fn assert_invalid(o: &Output, check: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let want = format!("PROOF INVALID: {check} check failed");
    assert!(text(o).contains(&want), "want {want:?} in {}", text(o));
}

#[test]
fn a_real_proof_checks_out_and_says_what_it_proves() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let file = write_proof(dir.path(), "proof.json", &f.proof);
    let o = check(&f, &file, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("proof OK: reading 101 of meter 7 (boot epoch 3)"),
        "{out}"
    );
    assert!(out.contains("leaf 3 of block 12 of relay 42"), "{out}");
    assert!(
        out.contains("entry 4 of 7 in grid.example/gridpow/log"),
        "{out}"
    );
    assert!(
        out.contains("1 of 1 cosigned (1 required): witness.example/w1"),
        "{out}"
    );
    assert!(out.contains("values: not checked"), "{out}");

    // Keys from files, the meter's key, JSON.
    let log_file = dir.path().join("log.vkey");
    std::fs::write(&log_file, format!("{}\n", f.log.vkey())).unwrap();
    let at_log = format!("@{}", log_file.display());
    let e2e = hex::encode(f.e2e_key);
    let o = gridpow(&[
        "check-proof",
        file.to_str().unwrap(),
        "--log-key",
        &at_log,
        "--meter-key",
        &e2e,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["values_checked"], true);
    assert_eq!(v["reading"]["seq"], 101);
    assert_eq!(v["log"]["index"], 4);
    assert_eq!(v["log"]["key"], f.log.vkey());
    assert_eq!(v["min_cosignatures"], 0);
}

/// One change to a proof document.
type Tamper = fn(&mut ReadingProof);

#[test]
fn a_tampered_proof_fails_naming_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let cases: Vec<(&str, Tamper)> = vec![
        ("reading", |p| p.reading.seq = 99),
        ("reading", |p| p.reading.meter_id = 8),
        ("block path", |p| p.frame[40] ^= 1),
        ("block path", |p| p.block_path[0][0] ^= 1),
        ("block path", |p| p.leaf_index = 2),
        ("block header", |p| p.header[0] = 9),
        ("log entry", |p| p.header[8] ^= 1),
        ("log entry", |p| p.entry[50] ^= 1),
        ("log path", |p| p.log_index = 5),
        ("log path", |p| p.log_path[1][7] ^= 1),
        ("checkpoint", |p| {
            p.checkpoint = p.checkpoint.replacen("\n7\n", "\n8\n", 1)
        }),
        ("format", |p| p.format = "gridpow-reading-proof/v0".into()),
    ];
    for (i, (want, tamper)) in cases.iter().enumerate() {
        let mut p = f.proof.clone();
        tamper(&mut p);
        let file = write_proof(dir.path(), &format!("tampered-{i}.json"), &p);
        assert_invalid(&check(&f, &file, &[]), want);
    }
    // A stated value that is not the sealed one passes the structure but not --meter-key.
    let mut p = f.proof.clone();
    p.reading.values.energy_mwh += 1;
    let file = write_proof(dir.path(), "values.json", &p);
    assert_eq!(check(&f, &file, &[]).status.code(), Some(0));
    let e2e = hex::encode(f.e2e_key);
    assert_invalid(&check(&f, &file, &["--meter-key", &e2e]), "values");
    // --json says so on stdout too.
    let o = check(&f, &file, &["--meter-key", &e2e, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["failed_check"], "values");
}

#[test]
fn cosignatures_and_keys_are_what_the_caller_requires() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let file = write_proof(dir.path(), "proof.json", &f.proof);
    // Both witnesses required by default; only one cosigned.
    let idle = f.idle_witness.verifier().vkey();
    assert_invalid(&check(&f, &file, &["--witness-key", &idle]), "cosignatures");
    let o = check(
        &f,
        &file,
        &["--witness-key", &idle, "--min-cosignatures", "1"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The same witness twice is one witness.
    let w = f.witness.verifier().vkey();
    assert_invalid(&check(&f, &file, &["--witness-key", &w]), "cosignatures");
    // Another log key: the checkpoint is not its.
    let other = gridpow_tlog::NoteSigner::from_seed("grid.example/gridpow/log", [9; 32]).unwrap();
    let o = gridpow(&[
        "check-proof",
        file.to_str().unwrap(),
        "--log-key",
        &other.vkey(),
    ]);
    assert_invalid(&o, "checkpoint");
}

#[test]
fn what_cannot_be_checked_exits_2_and_garbage_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let file = write_proof(dir.path(), "proof.json", &f.proof);
    let missing = dir.path().join("missing.json");
    assert_eq!(check(&f, &missing, &[]).status.code(), Some(2));
    let o = check(&f, &file, &["--min-cosignatures", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--min-cosignatures 2"), "{}", text(&o));
    let o = gridpow(&[
        "check-proof",
        file.to_str().unwrap(),
        "--log-key",
        "nonsense",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--log-key nonsense"), "{}", text(&o));
    // A witness key as the log key is refused as a key, not as a proof.
    let o = gridpow(&[
        "check-proof",
        file.to_str().unwrap(),
        "--log-key",
        &f.witness.verifier().vkey(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"format\": \"gridpow-reading-proof/v1\"}").unwrap();
    assert_invalid(&check(&f, &junk, &[]), "document");
}

/// A one-shot HTTP server answering `status` and `body` to the first
/// request; returns its base URL and the request head it received.
fn serve_once(status: &'static str, body: String) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        head
    });
    (url, handle)
}

#[test]
fn prove_reading_writes_the_servers_document_and_shows_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let (url, server) = serve_once("200 OK", serde_json::to_string(&f.proof).unwrap());
    let out = dir.path().join("sub").join("reading-5.json");
    let o = gridpow(&[
        "prove-reading",
        "--url",
        &format!("{url}/"),
        "--reading",
        "5",
        "--token",
        "tok-123",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let head = server.join().unwrap();
    assert!(
        head.starts_with("GET /api/v1/readings/5/log-proof HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer tok-123\r\n"),
        "{head}"
    );
    assert_eq!(
        serde_json::from_slice::<ReadingProof>(&std::fs::read(&out).unwrap()).unwrap(),
        f.proof
    );
    assert_eq!(check(&f, &out, &[]).status.code(), Some(0));

    // The server's error, by code and message; nothing written.
    let (url, server) = serve_once(
        "404 Not Found",
        r#"{"error":{"code":"unknown_reading","message":"no reading 6"}}"#.into(),
    );
    let out = dir.path().join("reading-6.json");
    let o = gridpow_env(
        &[
            "prove-reading",
            "--url",
            &url,
            "--reading",
            "6",
            "-o",
            out.to_str().unwrap(),
        ],
        &[("GRIDPOW_TOKEN", "tok-env")],
    );
    let head = server.join().unwrap();
    assert!(
        head.to_ascii_lowercase().contains("bearer tok-env"),
        "{head}"
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("404 Not Found: unknown_reading: no reading 6"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());

    // An answer that is not a proof is not written either.
    let (url, server) = serve_once("200 OK", "{\"hello\": 1}".into());
    let o = gridpow(&[
        "prove-reading",
        "--url",
        &url,
        "--reading",
        "7",
        "--token",
        "t",
        "-o",
        out.to_str().unwrap(),
    ]);
    server.join().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not a gridpow-reading-proof/v1 document"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}
