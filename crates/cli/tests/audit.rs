//! `gridpow audit`: logs written here with gridpow-tlog (entries, stored
//! hashes, tiles, a signed and cosigned checkpoint, and behind each entry a
//! block whose header it names), audited from their directory and over
//! HTTP. An honest log passes, growing, with a mirror; each kind of
//! tampering fails with exit 1 and a message naming it.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{BlockHeaderRepr, LogLeafRepr};
use gridpow_tlog::proofs::{tree_root, MemoryHashes};
use gridpow_tlog::tiles::{encode_entry_bundle, read_tile};
use gridpow_tlog::{
    add_cosignature, sign_checkpoint, Checkpoint, NoteSigner, TilePath, WitnessKey,
};

mod common;

use common::{gridpow, text};

const ORIGIN: &str = "grid.test/log";
const TOKEN: &str = "staff-token-for-tests";

fn log_key() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, [0x4c; 32]).unwrap()
}

fn witness(n: u8) -> WitnessKey {
    WitnessKey::from_seed(&format!("witness.test/w{n}"), [0x50 + n; 32]).unwrap()
}

/// Block `i`: relay 1 + i % 5, height i / 5, one leaf; not validly signed
/// (the audit without --keys checks headers only).
fn block(i: u64) -> Vec<u8> {
    let frame = [i as u8; 20];
    let header = BlockHeaderRepr {
        difficulty: 0,
        relay_id: 1 + (i % 5) as u32,
        height: i / 5,
        prev_hash: [0; 32],
        merkle_root: gridpow_proto::merkle::leaf_hash(&RustCrypto, &frame),
        leaf_count: 1,
        time_ms: 1_700_000_000_000 + i,
        nonce: 0,
    };
    let mut b = header.to_bytes().to_vec();
    b.extend_from_slice(&[0; 64]);
    b.extend_from_slice(&20u16.to_le_bytes());
    b.extend_from_slice(&frame);
    b
}

/// The log entry of a block.
fn entry_of(raw: &[u8]) -> Vec<u8> {
    let h = BlockHeaderRepr::parse(&raw[..100]).unwrap();
    LogLeafRepr {
        relay_id: h.relay_id,
        height: h.height,
        block_hash: h.hash(&RustCrypto),
        merkle_root: h.merkle_root,
    }
    .to_bytes()
    .to_vec()
}

/// Entries 0..n of the honest log.
fn entries(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| entry_of(&block(i))).collect()
}

/// Writes a log of `entries` into `dir` as the server serves it, replacing
/// what was there: tiles, bundles, `blocks/<i>` (the blocks of the honest
/// log), and the checkpoint signed by `key` and cosigned by `witnesses`.
fn write_log(dir: &Path, key: &NoteSigner, entries: &[Vec<u8>], witnesses: &[WitnessKey]) {
    let _ = std::fs::remove_dir_all(dir.join("tile"));
    let mut hashes = MemoryHashes::new();
    for e in entries {
        hashes.push_entry(e);
    }
    let size = entries.len() as u64;
    let put = |path: &str, data: &[u8]| {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    for t in TilePath::hash_tiles(size) {
        put(&t.to_path(), &read_tile(&hashes, size, &t).unwrap());
    }
    for t in TilePath::entry_bundles(size) {
        let r = t.entry_range(size).unwrap();
        let b = encode_entry_bundle(
            entries[r.start as usize..r.end as usize]
                .iter()
                .map(Vec::as_slice),
        )
        .unwrap();
        put(&t.to_path(), &b);
    }
    for i in 0..size {
        put(&format!("blocks/{i}"), &block(i));
    }
    let root = tree_root(&hashes, size).unwrap();
    let mut note = sign_checkpoint(key, ORIGIN, size, &root).unwrap();
    let body = Checkpoint::new(ORIGIN, size, root).body().unwrap();
    for w in witnesses {
        note = add_cosignature(&note, &w.cosign(&body, 1_700_000_000).unwrap()).unwrap();
    }
    put("checkpoint", note.as_bytes());
}

/// Runs `gridpow audit --log-key … --witness-key (w1) extra…` on a source.
fn audit(source: &[&str], extra: &[&str]) -> (i32, String) {
    let vkey = log_key().vkey();
    let w1 = witness(1).vkey();
    let mut args = vec!["audit", "--log-key", &vkey, "--witness-key", &w1];
    args.extend_from_slice(source);
    args.extend_from_slice(extra);
    let o = gridpow(&args);
    (o.status.code().unwrap_or(-1), text(&o))
}

fn dir_arg(dir: &Path) -> [String; 2] {
    ["--dir".into(), dir.to_string_lossy().into_owned()]
}

fn audit_dir(dir: &Path, extra: &[&str]) -> (i32, String) {
    let d = dir_arg(dir);
    audit(&[&d[0], &d[1]], extra)
}

fn assert_fails(got: (i32, String), needle: &str) {
    assert_eq!(got.0, 1, "expected exit 1 naming {needle:?}:\n{}", got.1);
    assert!(
        got.1.contains("LOG AUDIT FAILED") && got.1.contains(needle),
        "expected {needle:?}:\n{}",
        got.1
    );
}

fn assert_passes(got: &(i32, String), size: u64) {
    assert_eq!(got.0, 0, "{}", got.1);
    assert!(
        got.1.contains(&format!("log OK: size {size}, root ")),
        "{}",
        got.1
    );
}

/// A static file server for `dir` under `/log/`; `blocks/` needs the token.
/// Returns the base URL and the paths requested so far.
fn serve(dir: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/log/", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            let mut authorised = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if h.to_ascii_lowercase().trim()
                    == format!("authorization: bearer {TOKEN}").to_ascii_lowercase()
                {
                    authorised = true;
                }
            }
            let rel = path.strip_prefix("/log/").unwrap_or("").to_owned();
            log.lock().unwrap().push(rel.clone());
            let (status, body) = if rel.starts_with("blocks/") && !authorised {
                ("401 Unauthorized", Vec::new())
            } else {
                match std::fs::read(dir.join(&rel)) {
                    Ok(b) if !rel.is_empty() && !rel.contains("..") => ("200 OK", b),
                    _ => ("404 Not Found", Vec::new()),
                }
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (base, seen)
}

#[test]
fn audit_passes_an_honest_growing_log_from_a_directory_and_over_http_with_a_mirror() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let honest = entries(700);
    write_log(&dir, &log_key(), &honest[..600], &[witness(1)]);
    assert_passes(&audit_dir(&dir, &[]), 600);

    let (url, seen) = serve(dir.clone());
    let mirror = t.path().join("mirror").to_string_lossy().into_owned();
    let state = t.path().join("state.json").to_string_lossy().into_owned();
    let flags = ["--mirror", &mirror, "--state", &state];
    let got = audit(&["--url", &url], &flags);
    assert_passes(&got, 600);
    assert!(
        got.1.contains("1 cosignatures, 0 checkpoints consistent"),
        "{}",
        got.1
    );
    // The mirror is a log of its own.
    assert_passes(&audit_dir(Path::new(&mirror), &[]), 600);

    // The log grows: only the new and the partial tiles are fetched again.
    write_log(&dir, &log_key(), &honest, &[witness(1)]);
    seen.lock().unwrap().clear();
    let got = audit(&["--url", &url], &flags);
    assert_passes(&got, 700);
    assert!(got.1.contains("1 checkpoints consistent"), "{}", got.1);
    let fetched = seen.lock().unwrap().clone();
    for full in [
        "tile/0/000",
        "tile/0/001",
        "tile/entries/000",
        "tile/entries/001",
    ] {
        assert!(
            !fetched.iter().any(|p| p == full),
            "{full} fetched again: {fetched:?}"
        );
    }
    assert!(
        fetched.iter().any(|p| p == "tile/entries/002.p/188"),
        "{fetched:?}"
    );
    // The older partial tiles were replaced in the mirror.
    assert!(!Path::new(&mirror).join("tile/entries/002.p/88").exists());
    assert_passes(&audit_dir(Path::new(&mirror), &[]), 700);

    // The blocks, with the staff token: each header is the one its entry names.
    let got = audit(&["--url", &url], &["--blocks", "--token", TOKEN]);
    assert_passes(&got, 700);
    assert!(
        got.1.contains("700 blocks re-verified (headers only"),
        "{}",
        got.1
    );
    // A wrong token is no verdict on the log.
    let got = audit(&["--url", &url], &["--blocks", "--token", "wrong"]);
    assert_eq!(got.0, 2, "{}", got.1);
    assert!(
        got.1.contains("HTTP 401") && got.1.contains("NOT a verdict"),
        "{}",
        got.1
    );
}

#[test]
fn audit_fails_on_a_changed_entry_a_changed_or_missing_tile_and_a_wrong_block() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let write = || write_log(&dir, &log_key(), &entries(600), &[witness(1)]);

    write();
    let p = dir.join("tile/entries/001");
    let mut b = std::fs::read(&p).unwrap();
    b[2 + 80 * 3 + 10] ^= 1; // a byte of the block hash of entry 259
    std::fs::write(&p, b).unwrap();
    assert_fails(audit_dir(&dir, &[]), "entry 259 does not hash to its leaf");

    write();
    let p = dir.join("tile/0/001");
    let mut b = std::fs::read(&p).unwrap();
    b[40] ^= 1;
    std::fs::write(&p, b).unwrap();
    assert_fails(
        audit_dir(&dir, &[]),
        "hash tiles inconsistent with the checkpoint's root",
    );

    write();
    let p = dir.join("tile/1/000.p/2");
    let mut b = std::fs::read(&p).unwrap();
    b[0] ^= 1;
    std::fs::write(&p, b).unwrap();
    assert_fails(
        audit_dir(&dir, &[]),
        "hash tiles inconsistent with the checkpoint's root",
    );

    write();
    std::fs::remove_file(dir.join("tile/0/000")).unwrap();
    assert_fails(audit_dir(&dir, &[]), "tile tile/0/000 missing");

    write();
    std::fs::remove_file(dir.join("tile/entries/002.p/88")).unwrap();
    assert_fails(
        audit_dir(&dir, &[]),
        "entry bundle tile/entries/002.p/88 missing",
    );

    // The server hands out another block than the entry names.
    write();
    std::fs::write(dir.join("blocks/7"), block(12)).unwrap();
    assert_fails(
        audit_dir(&dir, &["--blocks"]),
        "block of entry 7 (relay 3 height 1): the block served is relay 3 height 2",
    );
    write();
    let mut b = block(7);
    b[40] ^= 1; // the prev hash: same relay and height, another header
    std::fs::write(dir.join("blocks/7"), b).unwrap();
    assert_fails(
        audit_dir(&dir, &["--blocks"]),
        "its header hash is not the entry's",
    );
    // With the key directory, a block no registered relay signed is refused.
    write();
    let keys = t.path().join("keys").to_string_lossy().into_owned();
    assert!(gridpow(&["keys", "init", "--dir", &keys]).status.success());
    assert_fails(
        audit_dir(&dir, &["--blocks", "--keys", &keys]),
        "block of entry 0",
    );
}

#[test]
fn audit_fails_on_a_wrong_log_key_and_too_few_cosignatures() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let other = NoteSigner::from_seed(ORIGIN, [0x99; 32]).unwrap();
    write_log(&dir, &other, &entries(300), &[witness(1)]);
    assert_fails(
        audit_dir(&dir, &[]),
        "checkpoint: rejected: not signed by grid.test/log",
    );

    write_log(&dir, &log_key(), &entries(300), &[witness(1)]);
    let w2 = witness(2).vkey();
    assert_fails(
        audit_dir(&dir, &["--witness-key", &w2]),
        "1 valid cosignatures by the given witnesses, 2 required",
    );
    let got = audit_dir(&dir, &["--witness-key", &w2, "--min-cosignatures", "1"]);
    assert_passes(&got, 300);
    write_log(&dir, &log_key(), &entries(300), &[witness(1), witness(2)]);
    let got = audit_dir(&dir, &["--witness-key", &w2]);
    assert_passes(&got, 300);
    assert!(got.1.contains("2 cosignatures"), "{}", got.1);
    // A cosignature by a named witness that does not verify refuses the note.
    let note = std::fs::read_to_string(dir.join("checkpoint")).unwrap();
    let body = Checkpoint::new(ORIGIN, 301, [0; 32]).body().unwrap();
    let bad = witness(2).cosign(&body, 1_700_000_000).unwrap();
    std::fs::write(
        dir.join("checkpoint"),
        add_cosignature(&note, &bad).unwrap(),
    )
    .unwrap();
    assert_fails(
        audit_dir(&dir, &["--witness-key", &w2]),
        "invalid signature by witness.test/w2",
    );
}

/// Audits the honest log of 300 with `--state`, then `rewritten`.
fn after_history(rewritten: &[Vec<u8>]) -> (i32, String) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let state = t.path().join("state.json").to_string_lossy().into_owned();
    write_log(&dir, &log_key(), &entries(300), &[witness(1)]);
    assert_passes(&audit_dir(&dir, &["--state", &state]), 300);
    write_log(&dir, &log_key(), rewritten, &[witness(1)]);
    // Without the history, a rewritten log signed by the genuine key is a log like any other.
    assert_eq!(audit_dir(&dir, &[]).0, 0);
    let got = audit_dir(&dir, &["--state", &state]);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        saved.matches("\"size\"").count(),
        1,
        "a failed audit does not add its checkpoint"
    );
    got
}

#[test]
fn audit_with_history_catches_a_rollback_a_rewrite_a_reorder_and_a_deleted_entry() {
    let honest = entries(700);
    assert_fails(
        after_history(&honest[..200]),
        "rollback: the log's checkpoint has size 200, but a checkpoint of size 300 was seen before",
    );

    let mut changed = honest.clone();
    changed[100] = entry_of(&{
        let mut b = block(100);
        b[40] ^= 1;
        b
    });
    assert_fails(
        after_history(&changed),
        "fork: the log was rewritten: its first 300 entries now have root",
    );
    // The same size, another root.
    assert_fails(
        after_history(&changed[..300]),
        "fork: two checkpoints of size 300",
    );

    let mut reordered = honest.clone();
    reordered.swap(10, 11);
    assert_fails(after_history(&reordered), "fork: the log was rewritten");

    let mut deleted = honest.clone();
    deleted.remove(50);
    assert_fails(after_history(&deleted), "fork: the log was rewritten");

    // And an honest growth passes, with the older checkpoint checked.
    let got = after_history_ok(&honest);
    assert!(got.contains("1 checkpoints consistent"), "{got}");
}

fn after_history_ok(grown: &[Vec<u8>]) -> String {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let state = t.path().join("state.json").to_string_lossy().into_owned();
    write_log(&dir, &log_key(), &entries(300), &[witness(1)]);
    assert_passes(&audit_dir(&dir, &["--state", &state]), 300);
    write_log(&dir, &log_key(), grown, &[witness(1)]);
    let got = audit_dir(&dir, &["--state", &state]);
    assert_passes(&got, grown.len() as u64);
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(saved.matches("\"size\"").count(), 2, "{saved}");
    got.1
}

#[test]
fn audit_fails_on_a_relay_height_with_two_blocks_and_on_a_block_logged_twice() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("log");
    let mut log = entries(300);
    log[290] = log[5].clone();
    write_log(&dir, &log_key(), &log, &[witness(1)]);
    assert_fails(
        audit_dir(&dir, &[]),
        "is in the log twice, entries 5 and 290",
    );

    let mut log = entries(300);
    log[290] = entry_of(&{
        let mut b = block(5);
        b[40] ^= 1;
        b
    });
    write_log(&dir, &log_key(), &log, &[witness(1)]);
    assert_fails(
        audit_dir(&dir, &[]),
        "fork: relay 1 height 1 has two blocks in the log (entries 5 and 290",
    );

    let mut log = entries(300);
    log[17][1] = 0x04; // another message type
    write_log(&dir, &log_key(), &log, &[witness(1)]);
    assert_fails(audit_dir(&dir, &[]), "entry 17 is not a log entry");
}
