//! Proof serving at scale: builds a SQLite ledger whose transparency log has
//! N entries (default 10 000 000; stored hashes only, written directly, as
//! the commit writes them), then times on a read-only connection what the
//! `/log/` endpoints do: the tree root, inclusion and consistency proofs and
//! hash tiles, each checked, for random indexes and sizes.
//!
//! `cargo run --release -p gridpow-store --example log_proofs -- [N] [QUERIES] [DB]`
//! An existing DB with N entries is reused (building 10 M takes a few minutes).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::merkle::{verify_consistency, verify_inclusion};
use gridpow_store::{open_reader, SqliteStore, StoreHashReader, StoreOptions};
use tlog_tiles::{stored_hash_index, stored_hashes_for_record_hash, HashReader};

/// Stored hashes in memory while building.
struct Mem(Vec<[u8; 32]>);

impl HashReader for Mem {
    fn read_hashes(&self, idx: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        Ok(idx
            .iter()
            .map(|&i| tlog_tiles::Hash(self.0[i as usize]))
            .collect())
    }
}

fn leaf(i: u64) -> [u8; 32] {
    let d = RustCrypto.sha256(&[b"log_proofs entry", &i.to_le_bytes()]);
    gridpow_proto::merkle::leaf_hash(&RustCrypto, &d)
}

fn build(path: &std::path::Path, n: u64) {
    drop(SqliteStore::open(path, StoreOptions::default()).unwrap());
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .unwrap();
    let have: i64 = conn
        .query_row("SELECT COUNT(*) FROM log_hashes", [], |r| r.get(0))
        .unwrap();
    if have as u64 == tlog_tiles::stored_hash_count(n) {
        eprintln!("reusing {} ({n} entries)", path.display());
        return;
    }
    conn.execute_batch("DELETE FROM log_hashes").unwrap();
    let started = Instant::now();
    let mut mem = Mem(Vec::with_capacity((2 * n) as usize));
    let mut tx = conn.transaction().unwrap();
    for i in 0..n {
        let new = stored_hashes_for_record_hash(i, tlog_tiles::Hash(leaf(i)), &mem).unwrap();
        let at = stored_hash_index(0, i);
        assert_eq!(at as usize, mem.0.len());
        {
            let mut st = tx
                .prepare_cached("INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)")
                .unwrap();
            for (k, h) in new.iter().enumerate() {
                st.execute(rusqlite::params![(at + k as u64) as i64, &h.0[..]])
                    .unwrap();
            }
        }
        mem.0.extend(new.iter().map(|h| h.0));
        if (i + 1) % 1_000_000 == 0 {
            tx.commit().unwrap();
            tx = conn.transaction().unwrap();
            eprintln!(
                "{} M entries, {:.0} s",
                (i + 1) / 1_000_000,
                started.elapsed().as_secs_f64()
            );
        }
    }
    tx.commit().unwrap();
    // The log's size is read from the blocks' log indexes: one row says it.
    conn.execute(
        "INSERT INTO blocks (id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, \
         nonce, raw, linked, received_ms, first_reading_id, reading_count, duplicate_count, log_index) \
         VALUES (1, 1, 0, zeroblob(32), zeroblob(32), zeroblob(32), 0, 0, 0, 0, x'', 1, 0, 1, 0, 0, ?1)",
        [(n - 1) as i64],
    )
    .unwrap();
    eprintln!(
        "built {n} entries in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// Median and 99th percentile, in ms.
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(10_000_000, |a| a.parse().unwrap());
    let queries: usize = args.next().map_or(1000, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = args
        .next()
        .map_or_else(|| dir.path().join("log.db"), std::path::PathBuf::from);
    build(&path, n);
    let mut store = open_reader(&path.display().to_string()).unwrap();
    assert_eq!(store.log_size().unwrap(), n);
    let reader = StoreHashReader::new(&mut *store);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let t = Instant::now();
    let root = gridpow_tlog::proofs::tree_root(&reader, n).unwrap();
    println!(
        "tree root of {n} entries: {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let (mut inc, mut con, mut tile) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..queries {
        let i = next(n);
        let t = Instant::now();
        let p = gridpow_tlog::proofs::inclusion_proof(&reader, n, i).unwrap();
        inc.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(verify_inclusion(&RustCrypto, &leaf(i), i, n, &p, &root));

        let old = 1 + next(n - 1);
        let t = Instant::now();
        let p = gridpow_tlog::proofs::consistency_proof(&reader, old, n).unwrap();
        let old_root = gridpow_tlog::proofs::tree_root(&reader, old).unwrap();
        con.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(verify_consistency(
            &RustCrypto,
            old,
            n,
            &old_root,
            &root,
            &p
        ));

        let path = gridpow_tlog::TilePath {
            kind: gridpow_tlog::TileKind::Hashes(0),
            index: next(n / 256),
            width: 256,
        };
        let t = Instant::now();
        let data = gridpow_tlog::tiles::read_tile(&reader, n, &path).unwrap();
        tile.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(&data[..32], &leaf(path.index * 256));
    }
    for (what, v) in [
        ("inclusion proof", inc),
        ("consistency proof + old root", con),
        ("level-0 hash tile (256 hashes)", tile),
    ] {
        let (p50, p99) = summary(v);
        println!("{what}: p50 {p50:.3} ms, p99 {p99:.3} ms ({queries} queries, {n} entries)");
    }
}
