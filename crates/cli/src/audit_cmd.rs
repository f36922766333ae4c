//! `gridpow audit`: an independent audit of the grid server's transparency
//! log (docs/ledger.md), served in the c2sp.org/tlog-tiles layout over HTTP
//! (`--url`) or mirrored in a directory (`--dir`).
//!
//! In order, each failing with a message that names what is wrong:
//!
//! 1. the checkpoint: the log's signature, then at least N valid
//!    cosignatures by the given witnesses;
//! 2. with `--state`: no rollback (a smaller tree than seen before) and no
//!    other root at a size seen before;
//! 3. the hash tiles against the checkpoint's root (`FnTileReader`: each
//!    tile up to the root, never tlog_tiles' `TileHashReader`);
//! 4. with `--state`: every older checkpoint's root recomputed from those
//!    tiles (the log only ever appended since);
//! 5. every entry bundle against the leaf hashes, every entry parsed, no
//!    relay height with two blocks (a fork) and no block twice;
//! 6. with `--blocks`: every block fetched and re-verified (header hash,
//!    Merkle root, and with `--keys` signature, PoW and meter tags);
//! 7. the new checkpoint appended to the state, new verified tiles to the mirror.
//!
//! Exit codes: 0 the log checks out, 1 it does not (the verdict), 2 it could
//! not be checked (unreachable, a bad flag): never a verdict.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use base64::prelude::{Engine, BASE64_STANDARD};
use clap::Args;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{BlockPacket, LogLeafRepr};
use gridpow_tlog::tiles::{decode_entry_bundle, encode_entry_bundle, FnTileReader};
use gridpow_tlog::{open_checkpoint_for, Hash, Rejected, TileKind, TilePath};
use serde::{Deserialize, Serialize};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The log's base URL, e.g. `http://host:8080/log/`.
    #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
    url: Option<String>,
    /// A directory holding the log in the tlog-tiles layout (`checkpoint`, `tile/…`), e.g. a mirror.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    trust: crate::log_trust::LogTrustArgs,
    /// A JSON file of every checkpoint seen; each run checks the log only
    /// grew since (no rollback, no rewrite) and appends the new one.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Save verified tiles and bundles here (tlog-tiles layout); later runs
    /// fetch only what is new (full tiles never change).
    #[arg(long)]
    mirror: Option<PathBuf>,
    /// Also fetch every block (`{base}/blocks/<index>`, staff only) and re-verify it.
    #[arg(long)]
    blocks: bool,
    /// API token for `--blocks` over HTTP (`Authorization: Bearer`).
    #[arg(long, env = "GRIDPOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Key directory for `--blocks`: relay keys and meter registry, to check
    /// signatures, PoW and meter tags (without it, headers only).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Print progress every this many entry bundles (256 entries each).
    #[arg(long, default_value_t = 64, value_name = "BUNDLES")]
    progress_every: u64,
    /// HTTP timeout for one request, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Why the audit stopped.
enum Fail {
    /// The log is not what it must be.
    Verdict(String),
    /// The log could not be checked.
    Unchecked(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Unchecked(e)
    }
}

fn verdict(msg: impl Into<String>) -> Fail {
    Fail::Verdict(msg.into())
}

pub fn run(a: AuditArgs) -> anyhow::Result<ExitCode> {
    match audit(&a) {
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(Fail::Verdict(msg)) => {
            eprintln!("LOG AUDIT FAILED: {msg}");
            Ok(ExitCode::from(1))
        }
        Err(Fail::Unchecked(e)) => {
            eprintln!("error: {}", crate::error_text(&e));
            eprintln!("the log could not be audited: this is NOT a verdict on the log");
            Ok(ExitCode::from(2))
        }
    }
}

/// Where the log is read from.
enum Source {
    Http {
        agent: ureq::Agent,
        base: String,
        token: Option<String>,
    },
    Dir(PathBuf),
}

/// Largest checkpoint note (c2sp.org/signed-note caps notes at 1 MB).
const MAX_NOTE: u64 = 1 << 20;
/// Largest tile or bundle: 256 entries of at most 65 535 bytes and their lengths.
const MAX_TILE: u64 = 256 * (2 + 65_535);

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Http { base, .. } => base.clone(),
            Source::Dir(d) => d.display().to_string(),
        }
    }

    /// `path` under the log; `None` if it is not there (HTTP 404).
    fn get(&self, path: &str, limit: u64, auth: bool) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Source::Dir(d) => match std::fs::read(d.join(path)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("reading {}", d.join(path).display())),
            },
            Source::Http { agent, base, token } => {
                let url = format!("{base}{path}");
                let mut req = agent.get(&url);
                if auth {
                    if let Some(t) = token {
                        req = req.header("Authorization", format!("Bearer {t}"));
                    }
                }
                let mut resp = req.call().with_context(|| format!("GET {url}"))?;
                match resp.status().as_u16() {
                    200 => Ok(Some(
                        resp.body_mut()
                            .with_config()
                            .limit(limit)
                            .read_to_vec()
                            .with_context(|| format!("GET {url}: reading the body"))?,
                    )),
                    404 => Ok(None),
                    s => Err(anyhow!("GET {url}: HTTP {s}")),
                }
            }
        }
    }
}

/// Fetches tiles and bundles: full ones from the mirror when there, else
/// from the source; a partial one the source no longer serves is cut from
/// its full tile (c2sp.org/tlog-tiles allows deleting partial tiles).
struct Fetcher<'a> {
    source: &'a Source,
    mirror: Option<&'a Path>,
    /// A transport error met inside the tile reader (which sees only `None`).
    error: RefCell<Option<anyhow::Error>>,
    /// Fetched from the source, to save in the mirror once all checks passed.
    fresh: RefCell<BTreeMap<TilePath, Vec<u8>>>,
    from_mirror: RefCell<u64>,
    fetched: RefCell<u64>,
}

impl Fetcher<'_> {
    fn fetch(&self, t: &TilePath) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(m) = self.mirror {
            if !t.is_partial() {
                if let Ok(d) = std::fs::read(m.join(t.to_path())) {
                    *self.from_mirror.borrow_mut() += 1;
                    return Ok(Some(d));
                }
            }
        }
        if let Some(d) = self.fresh.borrow().get(t) {
            return Ok(Some(d.clone()));
        }
        *self.fetched.borrow_mut() += 1;
        let mut data = self.source.get(&t.to_path(), MAX_TILE, false)?;
        if data.is_none() && t.is_partial() {
            let full = TilePath {
                width: gridpow_tlog::tiles::TILE_WIDTH,
                ..*t
            };
            data = self
                .source
                .get(&full.to_path(), MAX_TILE, false)?
                .and_then(|d| cut(t, &d));
        }
        if let (Some(d), Some(_)) = (&data, self.mirror) {
            self.fresh.borrow_mut().insert(*t, d.clone());
        }
        Ok(data)
    }

    /// For the tile reader: errors are kept aside, the reader sees a missing tile.
    fn tile(&self, t: &TilePath) -> Option<Vec<u8>> {
        match self.fetch(t) {
            Ok(d) => d,
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    /// A tile reader error as a verdict, unless the source failed.
    fn fail(&self, what: &str, e: gridpow_tlog::Error) -> Fail {
        if let Some(io) = self.error.borrow_mut().take() {
            return Fail::Unchecked(io);
        }
        let hint = if *self.from_mirror.borrow() > 0 {
            " (some tiles came from --mirror: if it was altered, remove it)"
        } else {
            ""
        };
        match e {
            gridpow_tlog::Error::Rejected(Rejected::MissingTile(p)) => verdict(format!(
                "{what}: tile {p} missing: the log does not serve it"
            )),
            gridpow_tlog::Error::Rejected(Rejected::InconsistentTile) => verdict(format!(
                "{what}: hash tiles inconsistent with the checkpoint's root{hint}"
            )),
            gridpow_tlog::Error::Rejected(Rejected::EntryMismatch(i)) => verdict(format!(
                "{what}: entry {i} does not hash to its leaf in the tree{hint}"
            )),
            e => verdict(format!("{what}: {e}{hint}")),
        }
    }
}

/// The first `t.width` hashes or entries of a full tile or bundle.
fn cut(t: &TilePath, full: &[u8]) -> Option<Vec<u8>> {
    let w = usize::from(t.width);
    match t.kind {
        TileKind::Hashes(_) => full.get(..w * 32).map(<[u8]>::to_vec),
        TileKind::Entries => {
            let entries = decode_entry_bundle(full).ok()?;
            encode_entry_bundle(entries.get(..w)?.iter().map(Vec::as_slice)).ok()
        }
    }
}

/// `--state`: every checkpoint seen, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuditState {
    origin: String,
    checkpoints: Vec<SeenCheckpoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SeenCheckpoint {
    size: u64,
    /// Base64.
    root: String,
    /// The whole note as fetched, signatures included.
    note: String,
}

impl SeenCheckpoint {
    fn root(&self) -> anyhow::Result<Hash> {
        let v = BASE64_STANDARD
            .decode(&self.root)
            .map_err(|_| anyhow!("root {:?} is not base64", self.root))?;
        <Hash>::try_from(v.as_slice()).map_err(|_| anyhow!("root {:?} is not 32 bytes", self.root))
    }
}

fn load_state(path: &Path, origin: &str) -> anyhow::Result<AuditState> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AuditState {
                origin: origin.to_owned(),
                checkpoints: Vec::new(),
            })
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let s: AuditState = serde_json::from_slice(&b)
        .with_context(|| format!("state file {} is damaged", path.display()))?;
    if s.origin != origin {
        anyhow::bail!(
            "state file {} is for log {:?}, not {origin:?}",
            path.display(),
            s.origin
        );
    }
    for c in &s.checkpoints {
        c.root()
            .with_context(|| format!("state file {}", path.display()))?;
    }
    Ok(s)
}

fn b64(h: &Hash) -> String {
    BASE64_STANDARD.encode(h)
}

fn audit(a: &AuditArgs) -> Result<String, Fail> {
    let crate::log_trust::LogTrust {
        log,
        witnesses,
        min_cosignatures: min,
    } = a.trust.verifiers()?;
    let origin = log.name().to_owned();
    let source = match (&a.url, &a.dir) {
        (Some(u), _) => {
            let base = if u.ends_with('/') {
                u.clone()
            } else {
                format!("{u}/")
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(a.timeout)))
                .http_status_as_error(false)
                .user_agent("gridpow-audit")
                .build()
                .into();
            if a.blocks && a.token.is_none() {
                return Err(anyhow!("--blocks over HTTP needs --token (a staff API token)").into());
            }
            Source::Http {
                agent,
                base,
                token: a.token.clone(),
            }
        }
        (None, Some(d)) => Source::Dir(d.clone()),
        (None, None) => return Err(anyhow!("--url or --dir is required").into()),
    };
    let keyring = match (&a.keys, a.blocks) {
        (Some(k), true) => Some(
            gridpow_server::keyring::Keyring::load(&gridpow_keys::KeyDir::new(k))
                .with_context(|| format!("--keys {}", k.display()))?,
        ),
        _ => None,
    };
    let mut state = match &a.state {
        Some(p) => Some(load_state(p, &origin)?),
        None => None,
    };

    // 1. The checkpoint and its signatures.
    let note = source
        .get("checkpoint", MAX_NOTE, false)?
        .ok_or_else(|| verdict(format!("{}: no checkpoint", source.describe())))?;
    let note = String::from_utf8(note).map_err(|_| verdict("checkpoint: not UTF-8"))?;
    let opened = open_checkpoint_for(&note, &origin, &log, &witnesses)
        .map_err(|e| verdict(format!("checkpoint: {e}")))?;
    let cp = &opened.checkpoint;
    let (size, root) = (cp.size, cp.root);
    if let Some(c) = opened.cosignatures.iter().find(|c| c.timestamp == 0) {
        return Err(verdict(format!(
            "checkpoint: cosignature by {} has timestamp 0",
            c.name
        )));
    }
    let cosigned = opened.cosignatures.len();
    if cosigned < min {
        return Err(verdict(format!(
            "checkpoint of size {size}: {cosigned} valid cosignatures by the given witnesses, {min} required"
        )));
    }

    // 2. Against every checkpoint seen before: no rollback, no second root.
    if let Some(s) = &state {
        for old in &s.checkpoints {
            let old_root = old.root()?;
            if old.size > size {
                return Err(verdict(format!(
                    "rollback: the log's checkpoint has size {size}, but a checkpoint of size {} was seen before",
                    old.size
                )));
            }
            if old.size == size && old_root != root {
                return Err(verdict(format!(
                    "fork: two checkpoints of size {size} with different roots ({} seen before, {} now)",
                    old.root,
                    b64(&root)
                )));
            }
        }
    }

    // 3. The hash tiles against the root.
    let fetcher = Fetcher {
        source: &source,
        mirror: a.mirror.as_deref(),
        error: RefCell::new(None),
        fresh: RefCell::new(BTreeMap::new()),
        from_mirror: RefCell::new(0),
        fetched: RefCell::new(0),
    };
    let reader = FnTileReader::new(|t: &TilePath| fetcher.tile(t));
    reader
        .verify_tree(size, &root)
        .map_err(|e| fetcher.fail(&format!("tree of size {size}"), e))?;

    // 4. Every older checkpoint is a prefix of this tree.
    let mut consistent = 0usize;
    if let Some(s) = &state {
        for old in &s.checkpoints {
            let old_root = old.root()?;
            let got = reader
                .root_at(size, &root, old.size)
                .map_err(|e| fetcher.fail(&format!("tree of size {size}"), e))?;
            if got != old_root {
                return Err(verdict(format!(
                    "fork: the log was rewritten: its first {} entries now have root {}, but a checkpoint seen before says {}",
                    old.size,
                    b64(&got),
                    old.root
                )));
            }
            consistent += 1;
        }
    }

    // 5. Every entry.
    let bundles = TilePath::entry_bundles(size);
    let mut entry_index = gridpow_tlog::EntryIndex::default();
    let mut entries_seen: Vec<LogLeafRepr> = Vec::new();
    for (n, path) in bundles.iter().enumerate() {
        let bundle = fetcher
            .fetch(path)?
            .ok_or_else(|| verdict(format!("entry bundle {} missing", path.to_path())))?;
        let entries = reader
            .verify_entry_bundle(size, &root, path, &bundle)
            .map_err(|e| fetcher.fail(&format!("entry bundle {}", path.to_path()), e))?;
        let first = path.index * 256;
        for (j, e) in entries.iter().enumerate() {
            let i = first + j as u64;
            let leaf = LogLeafRepr::parse(e)
                .map_err(|m| verdict(format!("entry {i} is not a log entry: {m}")))?;
            entry_index
                .add(i, &leaf)
                .map_err(|c| verdict(c.to_string()))?;
            if a.blocks {
                entries_seen.push(leaf);
            }
        }
        let done = n as u64 + 1;
        if a.progress_every > 0 && done % a.progress_every == 0 && done < bundles.len() as u64 {
            eprintln!(
                "audit: {} of {size} entries checked",
                (first + entries.len() as u64)
            );
        }
    }

    // 6. The blocks themselves.
    let mut blocks_checked = 0u64;
    if a.blocks {
        for (i, leaf) in entries_seen.iter().enumerate() {
            check_block(&source, keyring.as_ref(), i as u64, leaf)?;
            blocks_checked += 1;
            if a.progress_every > 0 && blocks_checked % (a.progress_every * 256) == 0 {
                eprintln!("audit: {blocks_checked} of {size} blocks re-verified");
            }
        }
    }

    // 7. Remember this checkpoint; keep the verified tiles.
    if let (Some(s), Some(p)) = (&mut state, &a.state) {
        if !s
            .checkpoints
            .iter()
            .any(|c| c.size == size && c.root == b64(&root))
        {
            s.checkpoints.push(SeenCheckpoint {
                size,
                root: b64(&root),
                note: note.clone(),
            });
        }
        let mut json = serde_json::to_vec_pretty(s).context("state")?;
        json.push(b'\n');
        gridpow_common::durable::write_file(p, &json, false)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(m) = &a.mirror {
        save_mirror(m, &fetcher.fresh.borrow(), &note)?;
    }
    tracing::info!(
        fetched = *fetcher.fetched.borrow(),
        from_mirror = *fetcher.from_mirror.borrow(),
        "Tiles read."
    );
    let mut summary = format!(
        "log OK: size {size}, root {}, {cosigned} cosignatures, {consistent} checkpoints consistent",
        b64(&root)
    );
    if a.blocks {
        summary.push_str(&format!(
            ", {blocks_checked} blocks re-verified{}",
            if keyring.is_some() {
                ""
            } else {
                " (headers only: no --keys)"
            }
        ));
    }
    Ok(summary)
}

/// Fetches block `i` and checks it is the one its entry names.
fn check_block(
    source: &Source,
    keyring: Option<&gridpow_server::keyring::Keyring>,
    i: u64,
    leaf: &LogLeafRepr,
) -> Result<(), Fail> {
    let what = format!(
        "block of entry {i} (relay {} height {})",
        leaf.relay_id, leaf.height
    );
    let raw = source
        .get(
            &format!("blocks/{i}"),
            gridpow_server::verify::MAX_BLOCK_BYTES as u64,
            true,
        )?
        .ok_or_else(|| verdict(format!("{what}: the server does not have it")))?;
    let packet = BlockPacket::new_checked(&raw[..])
        .map_err(|m| verdict(format!("{what}: not a block: {m}")))?;
    let header = *packet.header();
    if (header.relay_id, header.height) != (leaf.relay_id, leaf.height) {
        return Err(verdict(format!(
            "{what}: the block served is relay {} height {}",
            header.relay_id, header.height
        )));
    }
    if header.hash(&RustCrypto) != leaf.block_hash {
        return Err(verdict(format!(
            "{what}: its header hash is not the entry's"
        )));
    }
    if header.merkle_root != leaf.merkle_root {
        return Err(verdict(format!(
            "{what}: its Merkle root is not the entry's"
        )));
    }
    if let Some(k) = keyring {
        gridpow_server::verify::reverify_stored(k, 0, &raw)
            .map_err(|e| verdict(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Saves newly verified tiles and bundles in the mirror: full ones once
/// (they never change), a partial one replacing the older partial ones of
/// its place; then the checkpoint, so the mirror is a log `--dir` can audit.
fn save_mirror(dir: &Path, fresh: &BTreeMap<TilePath, Vec<u8>>, note: &str) -> anyhow::Result<()> {
    for (t, data) in fresh {
        let path = dir.join(t.to_path());
        let partials = dir.join(
            TilePath {
                width: gridpow_tlog::tiles::TILE_WIDTH,
                ..*t
            }
            .to_path()
                + ".p",
        );
        if t.is_partial() {
            if let Ok(rd) = std::fs::read_dir(&partials) {
                for e in rd.flatten() {
                    if e.path() != path {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&partials);
        }
        gridpow_common::durable::write_file(&path, data, false)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let cp = dir.join("checkpoint");
    gridpow_common::durable::write_file(&cp, note.as_bytes(), false)
        .with_context(|| format!("writing {}", cp.display()))
}
