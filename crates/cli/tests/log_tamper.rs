//! The transparency log under an operator who rewrites history.
//!
//! Real processes: `gridpow server`, `gridpow relay` and `gridpow meters`
//! over a private Mosquitto with mutual TLS store real readings; a real
//! `gridpow witness` cosigns the server's checkpoints. Then the database is
//! altered behind the server's back — one block rewritten, one deleted, two
//! reordered, each time with the log rebuilt to match and re-signed with the
//! genuine note key — and the server restarted. The witness must refuse to
//! cosign each altered history, `gridpow audit`, holding the checkpoints it
//! saw before, must reject it, and the relay, which watched the genuine log
//! (its receipts proven in it), must raise an alarm. Finally a second server serves a forked
//! copy (a split view): a fresh witness cosigns it, and comparing the two
//! cosigned checkpoints (and auditing both) exposes the fork. A reading's
//! proof file is checked with `gridpow check-proof` on the genuine log.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    create_token, export_bundle, free_tcp_port, free_udp_port, gridpow, site_broker, spawn,
    start_stack, write_meters_config,
};
use gridpow_testkit::Daemon;
use gridpow_tlog::{open_checkpoint, CosignatureVerifier, NoteSigner, NoteVerifier};

const ORIGIN: &str = "grid.test/ledger";
const DIFFICULTY: u8 = 10;

fn http(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
        Err(ureq::Error::StatusCode(s)) => (s, String::new()),
        Err(e) => (0, e.to_string()),
    }
}

/// The newest checkpoint note once one other than `not` is served (a fresh
/// signature after a restart), within 30 s.
fn next_checkpoint(port: u16, not: &str) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, note) = http(&format!("http://127.0.0.1:{port}/log/checkpoint"));
        if status == 200 && note != not {
            return note;
        }
        assert!(Instant::now() < until, "no new checkpoint: {status} {note}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The checkpoint once it heads `size` entries with `cosigs` cosignatures.
fn checkpoint_with(
    port: u16,
    log: &NoteVerifier,
    witness: &CosignatureVerifier,
    size: u64,
    cosigs: usize,
) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, note) = http(&format!("http://127.0.0.1:{port}/log/checkpoint"));
        if status == 200 {
            let c = open_checkpoint(&note, log).unwrap();
            let n = gridpow_tlog::count_cosignatures(&note, std::slice::from_ref(witness)).unwrap();
            if c.checkpoint.size == size && n == cosigs {
                return note;
            }
        }
        assert!(
            Instant::now() < until,
            "no checkpoint of size {size} with {cosigs} cosignatures: {note}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sql(db: &Path, statements: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(statements).unwrap();
}

fn count(db: &Path, q: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(q, [], |r| r.get(0)).unwrap()
}

/// Copies the database (the server is stopped: its WAL is checkpointed on close
/// or copied along).
fn copy_db(from: &Path, to: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let f = format!("{}{ext}", from.display());
        let t = format!("{}{ext}", to.display());
        let _ = std::fs::remove_file(&t);
        if Path::new(&f).exists() {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

/// The operator's rebuild: the log dropped, so the server appends every block
/// again, in id order, when it opens the database.
const REBUILD_LOG: &str = "UPDATE blocks SET log_index = NULL; DELETE FROM log_hashes;";

struct Audit<'a> {
    port: u16,
    log_vkey: &'a str,
    state: &'a Path,
}

impl Audit<'_> {
    /// Runs `gridpow audit` with the given extra arguments: exit code and output.
    fn run(&self, extra: &[&str]) -> (i32, String) {
        let url = format!("http://127.0.0.1:{}/log/", self.port);
        let state = self.state.display().to_string();
        let mut args = vec![
            "audit",
            "--url",
            &url,
            "--log-key",
            self.log_vkey,
            "--state",
            &state,
        ];
        args.extend_from_slice(extra);
        let o = gridpow(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code().unwrap_or(-1), text)
    }
}

#[test]
fn rewritten_deleted_reordered_and_forked_histories_are_caught_by_the_witness_and_the_auditor() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, k) = common::key_dir(root, 4);
    let relay_bundle = root.join("relay-bundle").display().to_string();
    let server_bundle = root.join("server-bundle").display().to_string();
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &relay_bundle]);
    export_bundle(&["server", "--dir", &k, "--out", &server_bundle]);
    let log_key = NoteSigner::from_seed(ORIGIN, keys.log_note_seed().unwrap())
        .unwrap()
        .verifier();
    let log_vkey = log_key.vkey();

    // A staff token (proof files, blocks) in the server's tokens file.
    let tokens = format!("{server_bundle}/tokens.toml");
    let token = create_token(&tokens, "ops", "viewer");

    // The witness.
    let wkey = root.join("witness.key").display().to_string();
    let o = gridpow(&[
        "witness",
        "init",
        "--key",
        &wkey,
        "--name",
        "witness.test/w1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let witness_vkey = std::fs::read_to_string(format!("{wkey}.vkey"))
        .unwrap()
        .trim()
        .to_string();
    let witness_key = CosignatureVerifier::from_vkey(&witness_vkey).unwrap();
    let wport = free_tcp_port();
    let witness = spawn(
        "witness",
        &[
            "witness",
            "--key",
            &wkey,
            "--state",
            &root.join("witness-state.json").display().to_string(),
            "--log-key",
            &format!("{ORIGIN}={log_vkey}"),
            "--listen",
            &format!("127.0.0.1:{wport}"),
        ],
        &root.join("witness.log"),
    );
    witness.wait_log(" listening on http://", Duration::from_secs(20));

    let broker = site_broker(&keys);
    let udp = free_udp_port();
    let port = free_tcp_port();
    let db = root.join("server.db");
    let server_toml = |db: &Path, port: u16, witness_port: u16, witness_vkey: &str| {
        format!(
            "keys_dir = \"{server_bundle}\"\ndb = \"{}\"\nmin_difficulty = {DIFFICULTY}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n[log]\norigin = \"{ORIGIN}\"\ncheckpoint_min_gap_ms = 100\nmin_cosignatures = 1\n\
             [[log.witnesses]]\nurl = \"http://127.0.0.1:{witness_port}\"\nvkey = \"{witness_vkey}\"\n",
            db.display(),
            broker.port
        )
    };
    std::fs::write(
        root.join("server.toml"),
        server_toml(&db, port, wport, &witness_vkey),
    )
    .unwrap();
    std::fs::write(
        root.join("relay.toml"),
        format!(
            "relay_id = 1\nkeys_dir = \"{relay_bundle}\"\ndata_dir = \"{}\"\ndifficulty = {DIFFICULTY}\n[block]\nmax_age_ms = 300\n[radio]\nkind = \"udp\"\nudp_listen = \"127.0.0.1:{udp}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[log]\nvkey = \"{log_vkey}\"\n",
            root.join("relay").display(),
            broker.port
        ),
    )
    .unwrap();
    let truth = root.join("truth.jsonl");
    write_meters_config(root, &k, udp, 0.25, 0.0, &truth);
    let (mut server, mut relay, mut meters) = start_stack(root, "info");
    std::thread::sleep(Duration::from_secs(4));
    meters.interrupt(Duration::from_secs(30));
    let readings = gridpow_meters::read_truth(&truth).unwrap().len() as i64;
    let until = Instant::now() + Duration::from_secs(60);
    while count(&db, "SELECT COUNT(*) FROM readings") < readings {
        assert!(Instant::now() < until, "readings not all stored");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The relay proves its receipts in the log before it stops.
    let until = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(root.join("relay").join("log-head.json")).is_ok_and(|h| {
        h.contains(&format!(
            "\"size\":{}",
            count(&db, "SELECT COUNT(*) FROM blocks")
        ))
    }) {
        assert!(
            Instant::now() < until,
            "the relay never trusted the full log:\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    relay.interrupt(Duration::from_secs(30));
    let relay_log = relay.log();
    let watch_line = relay_log
        .lines()
        .find(|l| l.contains("transparency log: trusted tree size"))
        .unwrap_or_else(|| panic!("no log watch line:\n{relay_log}"));
    assert!(watch_line.contains(", 0 alarms"), "{watch_line}");
    assert!(!watch_line.contains(" 0 receipts proven"), "{watch_line}");
    assert!(!relay_log.contains("TRANSPARENCY LOG ALARM"), "{relay_log}");
    let size = count(&db, "SELECT COUNT(*) FROM blocks") as u64;
    assert!(size >= 6, "{size} blocks");

    // The genuine log: cosigned, audited (every block re-verified), and a
    // reading's proof file checks out trusting only the two keys.
    let genuine = checkpoint_with(port, &log_key, &witness_key, size, 1);
    let state = root.join("audit-state.json");
    let audit = Audit {
        port,
        log_vkey: &log_vkey,
        state: &state,
    };
    let (code, out) = audit.run(&[
        "--witness-key",
        &witness_vkey,
        "--blocks",
        "--token",
        &token,
        "--keys",
        &server_bundle,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("log OK"), "{out}");
    let proof = root.join("proof.json").display().to_string();
    let o = gridpow(&[
        "prove-reading",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--reading",
        "1",
        "--token",
        &token,
        "-o",
        &proof,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = gridpow(&[
        "check-proof",
        &proof,
        "--log-key",
        &log_vkey,
        "--witness-key",
        &witness_vkey,
    ]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // Each altered history: the server restarted on it signs it with the
    // genuine key, the witness refuses to cosign, the auditor rejects it.
    server.interrupt(Duration::from_secs(30));
    let pristine = root.join("pristine.db");
    copy_db(&db, &pristine);
    let (a, b) = (
        count(&pristine, "SELECT id FROM blocks WHERE log_index = 1"),
        count(&pristine, "SELECT id FROM blocks WHERE log_index = 2"),
    );
    let scenarios: [(&str, String, &str); 3] = [
        (
            "one block rewritten",
            format!("UPDATE blocks SET merkle_root = zeroblob(32) WHERE log_index = 2; {REBUILD_LOG}"),
            "fork",
        ),
        (
            "one block deleted",
            format!("DELETE FROM blocks WHERE log_index = 1; {REBUILD_LOG}"),
            "rollback",
        ),
        (
            // The log is rebuilt in id order: swapping two ids swaps their entries.
            "two blocks reordered",
            format!(
                "UPDATE blocks SET id = -1 WHERE id = {a}; UPDATE blocks SET id = {a} WHERE id = {b}; \
                 UPDATE blocks SET id = {b} WHERE id = -1; {REBUILD_LOG}"
            ),
            "fork",
        ),
    ];
    let mut last = genuine.clone();
    for (what, tamper, verdict) in &scenarios {
        copy_db(&pristine, &db);
        sql(&db, tamper);
        server.restart();
        let note = next_checkpoint(port, &last);
        last = note.clone();
        // Signed by the genuine key, but not cosigned: the witness refused.
        let altered = open_checkpoint(&note, &log_key).unwrap().checkpoint;
        assert_ne!(
            altered.root,
            open_checkpoint(&genuine, &log_key).unwrap().checkpoint.root,
            "{what}: the rebuilt log differs"
        );
        std::thread::sleep(Duration::from_millis(500));
        let (_, note) = http(&format!("http://127.0.0.1:{port}/log/checkpoint"));
        assert_eq!(
            gridpow_tlog::count_cosignatures(&note, std::slice::from_ref(&witness_key)).unwrap(),
            0,
            "{what}: the witness must not cosign"
        );
        let (code, out) = audit.run(&["--min-cosignatures", "0"]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(verdict), "{what}: expected {verdict}: {out}");
        // The relay, still trusting the genuine tree, raises an alarm: at
        // once for another root at its size, or once the log grows past it
        // (new readings) and the consistency proof fails.
        let alarms = relay.log().matches("TRANSPARENCY LOG ALARM").count();
        relay.restart();
        meters.restart();
        let until = Instant::now() + Duration::from_secs(40);
        while relay.log().matches("TRANSPARENCY LOG ALARM").count() == alarms {
            assert!(
                Instant::now() < until,
                "{what}: the relay raised no alarm:\n{}",
                relay.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        meters.interrupt_or_kill(Duration::from_secs(10));
        relay.interrupt(Duration::from_secs(30));
        assert!(
            relay
                .log()
                .lines()
                .rev()
                .find(|l| l.contains("transparency log: trusted tree size"))
                .is_some_and(|l| !l.contains(", 0 alarms")),
            "{what}: {}",
            relay.log()
        );
        server.interrupt(Duration::from_secs(30));
    }

    // Back to the genuine history: cosigned again, audited clean.
    copy_db(&pristine, &db);
    server.restart();
    checkpoint_with(port, &log_key, &witness_key, size, 1);
    let (code, out) = audit.run(&["--witness-key", &witness_vkey]);
    assert_eq!(code, 0, "{out}");

    // A split view: a second server serves a forked copy of the same size,
    // cosigned by a fresh witness that never saw the genuine tree.
    let forked = root.join("forked.db");
    copy_db(&pristine, &forked);
    sql(
        &forked,
        &format!("UPDATE blocks SET merkle_root = zeroblob(32) WHERE log_index = 0; {REBUILD_LOG}"),
    );
    let wkey2 = root.join("witness2.key").display().to_string();
    assert!(gridpow(&[
        "witness",
        "init",
        "--key",
        &wkey2,
        "--name",
        "witness.test/w2"
    ])
    .status
    .success());
    let witness2_vkey = std::fs::read_to_string(format!("{wkey2}.vkey"))
        .unwrap()
        .trim()
        .to_string();
    let witness2_key = CosignatureVerifier::from_vkey(&witness2_vkey).unwrap();
    let wport2 = free_tcp_port();
    let witness2 = spawn(
        "witness2",
        &[
            "witness",
            "--key",
            &wkey2,
            "--state",
            &root.join("witness2-state.json").display().to_string(),
            "--log-key",
            &format!("{ORIGIN}={log_vkey}"),
            "--listen",
            &format!("127.0.0.1:{wport2}"),
        ],
        &root.join("witness2.log"),
    );
    witness2.wait_log(" listening on http://", Duration::from_secs(20));
    let port2 = free_tcp_port();
    // Another process with the same keys (its own MQTT client id; it needs
    // no broker to serve its view over HTTP).
    let toml2 = format!(
        "server_id = 2\n{}",
        server_toml(&forked, port2, wport2, &witness2_vkey)
    );
    std::fs::write(root.join("server2.toml"), toml2).unwrap();
    let server2: Daemon = spawn(
        "server2",
        &[
            "server",
            "--config",
            &root.join("server2.toml").display().to_string(),
        ],
        &root.join("server2.log"),
    );
    let a = checkpoint_with(port, &log_key, &witness_key, size, 1);
    let b = checkpoint_with(port2, &log_key, &witness2_key, size, 1);
    let (ca, cb) = (
        open_checkpoint(&a, &log_key).unwrap().checkpoint,
        open_checkpoint(&b, &log_key).unwrap().checkpoint,
    );
    // Each party alone sees a signed, cosigned checkpoint; together they hold
    // proof of misbehaviour: one log key, one size, two roots.
    assert_eq!((ca.origin.as_str(), ca.size), (cb.origin.as_str(), cb.size));
    assert_ne!(ca.root, cb.root, "a split view");
    // The first witness refuses the other view, and the auditor who saw one
    // rejects the other.
    let request = format!("old {size}\n\n{b}");
    let refused =
        ureq::post(&format!("http://127.0.0.1:{wport}/add-checkpoint")).send(request.as_bytes());
    assert!(
        matches!(refused, Err(ureq::Error::StatusCode(409 | 422))),
        "{refused:?}"
    );
    let audit2 = Audit {
        port: port2,
        log_vkey: &log_vkey,
        state: &state,
    };
    let (code, out) = audit2.run(&["--witness-key", &witness2_vkey]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fork"), "{out}");
    drop(server2);
    drop(witness2);
    drop(witness);
    server.interrupt(Duration::from_secs(30));
}
