//! `gridpow witness`: the real binary, driven over HTTP with requests built
//! by gridpow-tlog as the grid server builds them. It cosigns a growing log,
//! refuses an inconsistent checkpoint (422) and a stale old size (409 with
//! its size), keeps its state across a restart, never cosigns two roots at
//! one size, and refuses to start on a damaged state file.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::Duration;

use gridpow_testkit::Daemon;
use gridpow_tlog::proofs::{tree_root, MemoryHashes};
use gridpow_tlog::witness::{add_checkpoint_request, parse_conflict_size, AddCheckpoint};
use gridpow_tlog::{add_cosignature, open_checkpoint_for, sign_checkpoint, CosignatureVerifier};
use gridpow_tlog::{Checkpoint, NoteSigner};

mod common;

use common::{free_tcp_port, gridpow, spawn, text};

const ORIGIN: &str = "grid.test/log";

/// A log: its key and its entries' stored hashes.
struct Log {
    key: NoteSigner,
    hashes: MemoryHashes,
}

impl Log {
    /// `n` entries; `salt` makes another log's entries.
    fn new(n: u32, salt: u8) -> Log {
        let mut hashes = MemoryHashes::new();
        for i in 0..n {
            let mut e = [salt; 80];
            e[..4].copy_from_slice(&i.to_le_bytes());
            hashes.push_entry(&e);
        }
        Log {
            key: NoteSigner::from_seed(ORIGIN, [0x4c; 32]).unwrap(),
            hashes,
        }
    }

    fn checkpoint(&self, size: u64) -> String {
        sign_checkpoint(
            &self.key,
            ORIGIN,
            size,
            &tree_root(&self.hashes, size).unwrap(),
        )
        .unwrap()
    }

    /// The add-checkpoint body for the tree of `size` from `old`.
    fn request(&self, old: u64, size: u64) -> String {
        add_checkpoint_request(&self.hashes, old, &self.checkpoint(size)).unwrap()
    }
}

/// Waits until the witness's latest start is listening.
fn listening(d: &Daemon) {
    let start = std::time::Instant::now();
    while d.log().matches(" listening on http://").count() < d.starts() as usize {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "witness not listening:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A witness process with its key made by `gridpow witness init`.
struct Site {
    dir: tempfile::TempDir,
    vkey: String,
    port: u16,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("witness.key");
        let o = gridpow(&[
            "witness",
            "init",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "witness.test/w1",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let vkey = String::from_utf8(o.stdout).unwrap().trim().to_owned();
        Site {
            dir,
            vkey,
            port: free_tcp_port(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    fn args(&self, log: &Log) -> Vec<String> {
        [
            "witness",
            "--key",
            &self.path("witness.key"),
            "--state",
            &self.path("state.json"),
            "--log-key",
            &format!("{ORIGIN}={}", log.key.vkey()),
            "--listen",
            &format!("127.0.0.1:{}", self.port),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start(&self, log: &Log) -> Daemon {
        let args = self.args(log);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = spawn("witness", &args, &self.dir.path().join("witness.log"));
        listening(&d);
        d
    }

    fn post(&self, body: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut r = agent
            .post(&format!("http://127.0.0.1:{}/add-checkpoint", self.port))
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn get(&self, path: &str) -> String {
        ureq::get(&format!("http://127.0.0.1:{}{path}", self.port))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Asserts a 200 whose cosignature verifies on `log`'s checkpoint of `size`.
    fn cosigns(&self, log: &Log, old: u64, size: u64) {
        let (status, line) = self.post(&log.request(old, size));
        assert_eq!(status, 200, "size {size} from {old}: {line}");
        let w = CosignatureVerifier::from_vkey(&self.vkey).unwrap();
        let body = Checkpoint::new(ORIGIN, size, tree_root(&log.hashes, size).unwrap())
            .body()
            .unwrap();
        let c = w.verify_line(&body, &line).unwrap();
        assert!(c.timestamp > 1_700_000_000, "{c:?}");
        // And as a note with its cosignature, as an auditor opens it.
        let note = add_cosignature(&log.checkpoint(size), &line).unwrap();
        let opened = open_checkpoint_for(&note, ORIGIN, &log.key.verifier(), &[w]).unwrap();
        assert_eq!(opened.cosignatures.len(), 1);
    }
}

#[test]
fn witness_cosigns_a_growing_log_refuses_stale_and_inconsistent_checkpoints_and_keeps_its_state_across_a_restart(
) {
    let site = Site::new();
    let log = Log::new(300, 1);
    let mut w = site.start(&log);
    assert!(w.log().contains(&site.vkey), "the witness logs its vkey");

    site.cosigns(&log, 0, 10);
    site.cosigns(&log, 10, 100);
    site.cosigns(&log, 100, 100); // the same checkpoint again
    site.cosigns(&log, 100, 257);

    // A stale old size: 409 with the size the witness holds.
    let (status, body) = site.post(&log.request(100, 280));
    assert_eq!(status, 409, "{body}");
    assert_eq!(parse_conflict_size(&body).unwrap(), 257);

    // Another history at a larger size: its proof from 257 does not verify.
    let other = Log::new(300, 2);
    let (status, body) = site.post(&other.request(257, 280));
    assert_eq!(status, 422, "{body}");
    // A genuine checkpoint with another log's proof.
    let mut forged = add_checkpoint_request(&other.hashes, 257, &log.checkpoint(280)).unwrap();
    let (status, body) = site.post(&forged);
    assert_eq!(status, 422, "{body}");
    // A checkpoint not signed by the log's key.
    forged = add_checkpoint_request(
        &log.hashes,
        257,
        &sign_checkpoint(
            &NoteSigner::from_seed(ORIGIN, [9; 32]).unwrap(),
            ORIGIN,
            280,
            &tree_root(&log.hashes, 280).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(site.post(&forged).0, 403);
    assert_eq!(site.post("old 0\n\nnot a checkpoint\n").0, 400);
    // A body above 1 MiB is refused before it is parsed.
    assert_eq!(site.post(&"x".repeat((1 << 20) + 1)).0, 413);

    let summary = site.get("/healthz");
    assert!(summary.contains("size 257"), "{summary}");
    assert!(summary.contains(&site.vkey), "{summary}");

    // Restart: the state comes back from the file.
    w.interrupt(Duration::from_secs(10));
    let state = std::fs::read_to_string(site.path("state.json")).unwrap();
    assert!(state.contains("\"size\": 257"), "{state}");
    w.restart();
    listening(&w);
    // It does not go back: not from scratch, not to an older size.
    let (status, body) = site.post(&log.request(0, 10));
    assert_eq!((status, body.as_str()), (409, "257\n"));
    let (status, body) = site.post(&log.request(0, 257));
    assert_eq!((status, body.as_str()), (409, "257\n"));
    let back = AddCheckpoint {
        old_size: 257,
        proof: vec![],
        checkpoint: log.checkpoint(100),
    };
    let (status, _) = site.post(&back.encode());
    assert_eq!(status, 400, "an old size above the checkpoint's");
    // And goes on from where it was.
    site.cosigns(&log, 257, 300);
    assert!(site.get("/").contains("size 300"));
    w.interrupt(Duration::from_secs(10));
}

#[test]
fn witness_never_cosigns_two_checkpoints_of_the_same_size() {
    let site = Site::new();
    let honest = Log::new(40, 1);
    let mut w = site.start(&honest);
    // Two views that agree up to 16 entries and differ after.
    let mut split = Log::new(16, 1);
    for i in 16u32..40 {
        let mut e = [7u8; 80];
        e[..4].copy_from_slice(&i.to_le_bytes());
        split.hashes.push_entry(&e);
    }
    site.cosigns(&honest, 0, 16);
    site.cosigns(&honest, 16, 30);
    // The other view at the same size, from either old size: never a cosignature.
    let (status, body) = site.post(&split.request(16, 30));
    assert_eq!(status, 409, "{body}");
    let (status, body) = site.post(&split.request(30, 30));
    assert_eq!(status, 422, "{body}");
    // Nor at a larger size (its proof from the honest 30 cannot verify).
    let (status, body) = site.post(&split.request(30, 40));
    assert_eq!(status, 422, "{body}");

    // A fresh witness asked for two different trees of size 10 from 0.
    w.interrupt(Duration::from_secs(10));
    std::fs::remove_file(site.path("state.json")).unwrap();
    w.restart();
    listening(&w);
    let other = Log::new(40, 3);
    site.cosigns(&honest, 0, 10);
    let (status, body) = site.post(&other.request(0, 10));
    assert_eq!((status, body.as_str()), (409, "10\n"));
    let (status, body) = site.post(&other.request(10, 10));
    assert_eq!(status, 422, "{body}");
    w.interrupt(Duration::from_secs(10));
}

#[test]
fn witness_refuses_to_start_on_a_damaged_state_file_and_init_never_overwrites_a_key() {
    let site = Site::new();
    let log = Log::new(1, 1);
    std::fs::write(
        site.path("state.json"),
        b"{\"logs\": {\"grid.test/log\": {\"size\": 5",
    )
    .unwrap();
    let args = site.args(&log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = gridpow(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("damaged"), "{}", text(&o));
    // Not reset either.
    assert_eq!(
        std::fs::read(site.path("state.json")).unwrap(),
        b"{\"logs\": {\"grid.test/log\": {\"size\": 5"
    );

    let key = site.path("witness.key");
    let before = std::fs::read(&key).unwrap();
    assert_eq!(before.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let o = gridpow(&[
        "witness",
        "init",
        "--key",
        &key,
        "--name",
        "witness.test/w2",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("never overwritten"), "{}", text(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    assert!(Path::new(&format!("{key}.vkey")).exists());
}
