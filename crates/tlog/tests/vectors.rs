//! Known-answer vectors for the transparency log (`test-vectors/log.json`):
//! 600 log entries, tree roots, signed and cosigned checkpoints, every tile
//! and entry bundle of the tree at 600 (and the partial ones of the
//! checkpoint at 257), inclusion and consistency proofs, witness exchanges
//! and notes that must be refused. Everything is deterministic;
//! `GRIDPOW_REGEN_VECTORS=1` rewrites the file, otherwise it must be
//! byte-identical to what this test produces.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use base64::prelude::{Engine, BASE64_STANDARD};
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::merkle;
use gridpow_proto::wire::LogLeafRepr;
use gridpow_tlog::checkpoint::{open_checkpoint, sign_checkpoint};
use gridpow_tlog::cosignature::{add_cosignature, WitnessKey};
use gridpow_tlog::note::NoteSigner;
use gridpow_tlog::proofs::{consistency_proof, inclusion_proof, tree_root, MemoryHashes};
use gridpow_tlog::tiles::{encode_entry_bundle, read_tile, TileKind, TilePath};
use gridpow_tlog::witness::{
    add_checkpoint_request, AddCheckpoint, LogState, Witness, WitnessState,
};
use serde_json::{json, Value};

const ORIGIN: &str = "grid.example/gridpow/log";
const WITNESS: &str = "witness.example/w1";
const LOG_SEED: [u8; 32] = [0x4c; 32];
const WITNESS_SEED: [u8; 32] = [0x57; 32];
const N: u64 = 600;

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    RustCrypto.sha256(parts)
}

fn entry(i: u64) -> LogLeafRepr {
    LogLeafRepr {
        relay_id: 1 + (i % 3) as u32,
        height: i / 3,
        block_hash: sha(&[b"gridpow test block", &i.to_le_bytes()]),
        merkle_root: sha(&[b"gridpow test root", &i.to_le_bytes()]),
    }
}

fn hexes(p: &[[u8; 32]]) -> Vec<String> {
    p.iter().map(hex::encode).collect()
}

#[test]
fn log_vectors_are_reproduced_byte_for_byte() {
    let log = NoteSigner::from_seed(ORIGIN, LOG_SEED).unwrap();
    let wkey = WitnessKey::from_seed(WITNESS, WITNESS_SEED).unwrap();
    let entries: Vec<[u8; 80]> = (0..N).map(|i| entry(i).to_bytes()).collect();
    let mut hashes = MemoryHashes::new();
    let mut leaf_hashes = Vec::new();
    for e in &entries {
        hashes.push_entry(e);
        leaf_hashes.push(merkle::leaf_hash(&RustCrypto, e));
    }
    let root = |n: u64| tree_root(&hashes, n).unwrap();

    let entries_json: Vec<Value> = (0..N)
        .map(|i| {
            let e = entry(i);
            let b = e.to_bytes();
            assert_eq!(LogLeafRepr::parse(&b).unwrap(), e);
            json!({
                "relay_id": e.relay_id,
                "height": e.height,
                "block_hash": hex::encode(e.block_hash),
                "merkle_root": hex::encode(e.merkle_root),
                "entry": hex::encode(b),
                "leaf_hash": hex::encode(e.leaf_hash(&RustCrypto)),
            })
        })
        .collect();

    let trees: Vec<Value> = [1u64, 2, 3, 7, 255, 256, 257, 511, 512, 600]
        .iter()
        .map(|&n| {
            // The core's own RFC 9162 root agrees.
            assert_eq!(
                merkle::root_of_hashes(&RustCrypto, &leaf_hashes[..n as usize]),
                root(n)
            );
            json!({"size": n, "root": hex::encode(root(n))})
        })
        .collect();

    let mut notes = Vec::new();
    let checkpoints: Vec<Value> = [(257u64, 1_764_460_800u64), (600, 1_764_460_860)]
        .iter()
        .map(|&(n, t)| {
            let note = sign_checkpoint(&log, ORIGIN, n, &root(n)).unwrap();
            let opened = open_checkpoint(&note, &log.verifier()).unwrap();
            let cosigned = add_cosignature(&note, &wkey.cosign(&opened.body, t).unwrap()).unwrap();
            notes.push((n, t, note.clone(), cosigned.clone()));
            json!({"size": n, "note": note, "cosigned_note": cosigned, "cosignature_time": t})
        })
        .collect();

    // Tiles of the tree at 600, then the partial tiles of the checkpoint at
    // 257, which the log must keep serving.
    let mut paths = TilePath::hash_tiles(N);
    paths.extend(TilePath::entry_bundles(N));
    for p in TilePath::hash_tiles(257)
        .into_iter()
        .chain(TilePath::entry_bundles(257))
    {
        if p.is_partial() && !paths.contains(&p) {
            paths.push(p);
        }
    }
    let tiles: Vec<Value> = paths
        .iter()
        .map(|p| {
            let data = match p.kind {
                TileKind::Hashes(_) => read_tile(&hashes, N, p).unwrap(),
                TileKind::Entries => {
                    let r = p.entry_range(N).unwrap();
                    encode_entry_bundle(
                        entries[r.start as usize..r.end as usize]
                            .iter()
                            .map(|e| &e[..]),
                    )
                    .unwrap()
                }
            };
            assert_eq!(TilePath::parse(&p.to_path()).unwrap(), *p);
            json!({"path": p.to_path(), "data": BASE64_STANDARD.encode(data)})
        })
        .collect();

    let inclusion: Vec<Value> = [
        (0u64, 1u64),
        (0, 600),
        (1, 600),
        (255, 257),
        (256, 257),
        (300, 600),
        (511, 512),
        (599, 600),
    ]
    .iter()
    .map(|&(i, n)| {
        let p = inclusion_proof(&hashes, n, i).unwrap();
        assert!(merkle::verify_inclusion(
            &RustCrypto,
            &leaf_hashes[i as usize],
            i,
            n,
            &p,
            &root(n)
        ));
        json!({"index": i, "size": n, "proof": hexes(&p)})
    })
    .collect();

    let consistency: Vec<Value> = [
        (257u64, 600u64),
        (1, 600),
        (256, 512),
        (600, 600),
        (3, 7),
        (255, 256),
        (511, 600),
        (2, 3),
    ]
    .iter()
    .map(|&(m, n)| {
        let p = consistency_proof(&hashes, m, n).unwrap();
        assert!(merkle::verify_consistency(
            &RustCrypto,
            m,
            n,
            &root(m),
            &root(n),
            &p
        ));
        json!({"old": m, "new": n, "proof": hexes(&p)})
    })
    .collect();

    // The witness holds the checkpoint at 257; each exchange starts from there.
    let (_, _, note257, _) = notes[0].clone();
    let (_, t600, note600, cosigned600) = notes[1].clone();
    let fresh = || {
        let mut logs = std::collections::BTreeMap::new();
        logs.insert(
            ORIGIN.to_owned(),
            LogState {
                size: 257,
                root: root(257),
            },
        );
        let mut w = Witness::new(wkey.clone(), WitnessState { logs });
        w.add_log(ORIGIN, log.verifier());
        w
    };
    let good = add_checkpoint_request(&hashes, 257, &note600).unwrap();
    let stale = add_checkpoint_request(&hashes, 1, &note600).unwrap();
    let mut bad_proof = AddCheckpoint::parse(good.as_bytes()).unwrap();
    bad_proof.proof[0][0] ^= 1;
    let other_log = NoteSigner::from_seed("other.example/log", [0x6f; 32]).unwrap();
    let unknown = add_checkpoint_request(
        &hashes,
        257,
        &sign_checkpoint(&other_log, "other.example/log", N, &root(N)).unwrap(),
    )
    .unwrap();
    let impostor = NoteSigner::from_seed(ORIGIN, [0x49; 32]).unwrap();
    let forged = add_checkpoint_request(
        &hashes,
        257,
        &sign_checkpoint(&impostor, ORIGIN, N, &root(N)).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "a good add-checkpoint, 257 to 600: cosigned at cosignature_time of checkpoint 600",
            good,
            200,
        ),
        (
            "stale old size 1 (the witness holds 257): 409 with its size",
            stale,
            409,
        ),
        (
            "consistency proof 257 to 600 with one bit flipped: 422",
            bad_proof.encode(),
            422,
        ),
        (
            "a checkpoint of an origin the witness does not know: 404",
            unknown,
            404,
        ),
        (
            "the log's origin signed by another key under the log's name: 403",
            forged,
            403,
        ),
    ];
    let witness: Vec<Value> = cases
        .into_iter()
        .map(|(what, request, status)| {
            let mut w = fresh();
            let r = w.handle_add_checkpoint(request.as_bytes(), t600);
            assert_eq!(r.status, status, "{what}: {}", r.body);
            let response = match status {
                200 => {
                    assert_eq!(add_cosignature(&note600, &r.body).unwrap(), cosigned600);
                    r.body
                }
                409 => r.body,
                _ => String::new(),
            };
            json!({"what": what, "witness_size": 257, "request": request, "status": status, "response": response})
        })
        .collect();

    // Notes that a reader holding the log's vkey must refuse.
    let (text, sig) = note257.split_once("\n\n").unwrap();
    let sig_line = sig.trim_end_matches('\n');
    let (sig_name, sig_b64) = sig_line.rsplit_once(' ').unwrap();
    let mut raw = BASE64_STANDARD.decode(sig_b64).unwrap();
    let with_raw = |raw: &[u8]| format!("{text}\n\n{sig_name} {}\n", BASE64_STANDARD.encode(raw));
    raw[0] ^= 1;
    let wrong_key_id = with_raw(&raw);
    raw[0] ^= 1;
    raw[10] ^= 1;
    let bad_sig = with_raw(&raw);
    let negative: Vec<(&str, String)> = vec![
        ("body altered: tree size 257 changed to 258", note257.replacen("\n257\n", "\n258\n", 1)),
        ("key ID in the signature altered (the signature is then by an unknown key: not signed by the log)", wrong_key_id),
        ("one bit of the Ed25519 signature flipped", bad_sig),
        ("signed by another key under the log's name", sign_checkpoint(&impostor, ORIGIN, 257, &root(257)).unwrap()),
        ("signed only by a witness cosignature", format!("{text}\n\n{}", wkey.cosign(&format!("{text}\n"), 1).unwrap())),
        ("final newline missing", note257.trim_end_matches('\n').to_owned()),
        ("signature base64 broken", note257.replacen(sig_b64, &format!("{}*", &sig_b64[1..]), 1)),
        ("no blank line before the signature", note257.replacen("\n\n", "\n", 1)),
        ("no signature line", format!("{text}\n\n")),
        ("a control character (tab) in the body", note257.replacen(ORIGIN, &format!("{ORIGIN}\t"), 1)),
        ("root hash line without base64 padding, validly signed", log.sign_note(&format!("{ORIGIN}\n257\n{}\n", BASE64_STANDARD.encode(root(257)).trim_end_matches('='))).unwrap()),
        ("tree size with a leading zero, validly signed", log.sign_note(&format!("{ORIGIN}\n0257\n{}\n", BASE64_STANDARD.encode(root(257)))).unwrap()),
        ("checkpoint for another origin, validly signed by the log's key", sign_checkpoint(&log, "grid.example/other", 257, &root(257)).unwrap()),
    ];
    for (what, n) in &negative {
        assert!(open_checkpoint(n, &log.verifier()).is_err(), "{what}");
    }
    let negative_notes: Vec<Value> = negative
        .iter()
        .map(|(what, note)| json!({"what": what, "note": note}))
        .collect();

    let v = json!({
        "comment": "gridpow transparency log (protocol §15, C2SP signed-note, tlog-checkpoint, tlog-cosignature cosignature/v1, tlog-tiles, tlog-witness). TEST KEYS, never use: log seed 32 x 0x4c, witness seed 32 x 0x57. tiles: every hash tile and entry bundle of the tree at size 600, then the partial ones of the checkpoint at 257. witness: each exchange starts from a witness holding the checkpoint at 257 (witness_size), at time cosignature_time of checkpoint 600; response is the exact body for 200 (the cosignature line) and 409 (the size), empty for other statuses (free text). negative_notes must all be refused by a reader holding log_key.vkey for origin.",
        "origin": ORIGIN,
        "log_key": {"name": ORIGIN, "seed": hex::encode(LOG_SEED), "public": hex::encode(log.public_key()), "vkey": log.vkey()},
        "witness_key": {"name": WITNESS, "seed": hex::encode(WITNESS_SEED), "public": hex::encode(wkey.public_key()), "vkey": wkey.vkey()},
        "entries": entries_json,
        "trees": trees,
        "checkpoints": checkpoints,
        "tiles": tiles,
        "inclusion": inclusion,
        "consistency": consistency,
        "witness": witness,
        "negative_notes": negative_notes,
    });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors/log.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("GRIDPOW_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with GRIDPOW_REGEN_VECTORS=1)", path.display()));
    assert!(
        stored == text,
        "log.json differs from what the code produces"
    );
}
