//! Property tests: proofs against the core's own RFC 9162 verifier
//! (`gridpow_proto::merkle`), tile and bundle round trips, and every parser
//! fed arbitrary bytes (no panic, only typed errors).
#![allow(clippy::unwrap_used)]

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::merkle;
use gridpow_tlog::checkpoint::{open_checkpoint, Checkpoint};
use gridpow_tlog::cosignature::{add_cosignature, CosignatureVerifier, WitnessKey};
use gridpow_tlog::note::{split_note, NoteSigner, NoteVerifier};
use gridpow_tlog::proofs::{
    consistency_proof, inclusion_proof, leaf_hash, tree_root, verify_consistency, verify_inclusion,
    MemoryHashes,
};
use gridpow_tlog::tiles::{
    decode_entry_bundle, encode_entry_bundle, read_tile, serve_tile, FnTileReader, TileKind,
    TilePath,
};
use gridpow_tlog::witness::{AddCheckpoint, Witness, WitnessState};
use proptest::prelude::*;

fn log_of(n: u64) -> (MemoryHashes, Vec<[u8; 32]>) {
    let mut h = MemoryHashes::new();
    let mut leaves = Vec::new();
    for i in 0..n {
        let e = i.to_be_bytes();
        h.push_entry(&e);
        leaves.push(leaf_hash(&e));
    }
    (h, leaves)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn inclusion_and_consistency_proofs_agree_with_the_core_verifier(
        n in 1u64..700, a in any::<u64>(), b in any::<u64>(),
    ) {
        let (h, leaves) = log_of(n);
        let root = tree_root(&h, n).unwrap();
        prop_assert_eq!(root, merkle::root_of_hashes(&RustCrypto, &leaves));
        let i = a % n;
        let p = inclusion_proof(&h, n, i).unwrap();
        prop_assert!(merkle::verify_inclusion(&RustCrypto, &leaves[i as usize], i, n, &p, &root));
        verify_inclusion(&p, n, &root, i, &leaves[i as usize]).unwrap();
        let m = 1 + b % n;
        let old = tree_root(&h, m).unwrap();
        let c = consistency_proof(&h, m, n).unwrap();
        prop_assert!(merkle::verify_consistency(&RustCrypto, m, n, &old, &root, &c));
        verify_consistency(&c, m, &old, n, &root).unwrap();
        // A flipped bit anywhere in a proof is refused by both.
        if !c.is_empty() {
            let mut bad = c.clone();
            let k = (a as usize) % bad.len();
            bad[k][(b % 32) as usize] ^= 1;
            prop_assert!(!merkle::verify_consistency(&RustCrypto, m, n, &old, &root, &bad));
            prop_assert!(verify_consistency(&bad, m, &old, n, &root).is_err());
        }
        if !p.is_empty() {
            let mut bad = p.clone();
            let k = (b as usize) % bad.len();
            bad[k][(a % 32) as usize] ^= 1;
            prop_assert!(verify_inclusion(&bad, n, &root, i, &leaves[i as usize]).is_err());
        }
    }

    #[test]
    fn served_tiles_verify_and_give_back_every_leaf(n in 1u64..1100, a in any::<u64>()) {
        let (h, leaves) = log_of(n);
        let root = tree_root(&h, n).unwrap();
        let tiles: std::collections::BTreeMap<TilePath, Vec<u8>> = TilePath::hash_tiles(n)
            .into_iter()
            .map(|t| {
                let d = serve_tile(&h, n, &t.to_path()).unwrap();
                (t, d)
            })
            .collect();
        let r = FnTileReader::new(|p: &TilePath| tiles.get(p).cloned());
        r.verify_tree(n, &root).unwrap();
        let start = a % n;
        let end = (start + 300).min(n);
        prop_assert_eq!(r.leaf_hashes(n, &root, start..end).unwrap(), &leaves[start as usize..end as usize]);
        // Entry bundles round trip and verify.
        for p in TilePath::entry_bundles(n) {
            let range = p.entry_range(n).unwrap();
            let es: Vec<[u8; 8]> = range.clone().map(u64::to_be_bytes).collect();
            let bundle = encode_entry_bundle(es.iter().map(|e| &e[..])).unwrap();
            let back = decode_entry_bundle(&bundle).unwrap();
            prop_assert_eq!(back.len(), es.len());
            prop_assert_eq!(r.verify_entry_bundle(n, &root, &p, &bundle).unwrap(), back);
        }
        // Any tile path round trips; tiles beyond the tree are refused.
        for t in tiles.keys() {
            prop_assert_eq!(TilePath::parse(&t.to_path()).unwrap(), *t);
            if t.is_partial() {
                // The right edge: one more hash, or the next tile, is beyond the tree.
                let wider = TilePath { width: t.width + 1, ..*t };
                let next = TilePath { index: t.index + 1, width: 1, ..*t };
                prop_assert!(read_tile(&h, n, &wider).is_err());
                prop_assert!(read_tile(&h, n, &next).is_err());
            }
        }
    }

    #[test]
    fn tile_paths_round_trip(level in 0u8..64, index in any::<u64>(), width in 1u16..=256, entries in any::<bool>()) {
        let t = TilePath { kind: if entries { TileKind::Entries } else { TileKind::Hashes(level) }, index, width };
        prop_assert_eq!(TilePath::parse(&t.to_path()).unwrap(), t);
    }

    #[test]
    fn entry_bundles_round_trip(es in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..256)) {
        let b = encode_entry_bundle(es.iter().map(Vec::as_slice)).unwrap();
        prop_assert_eq!(decode_entry_bundle(&b).unwrap(), es.clone());
        if !b.is_empty() {
            // Cutting the last entry short is refused (unless it was empty).
            if es.last().is_some_and(|e| !e.is_empty()) {
                prop_assert!(decode_entry_bundle(&b[..b.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn every_parser_takes_arbitrary_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let s = String::from_utf8_lossy(&bytes).into_owned();
        let log = NoteSigner::from_seed("l.example", [1; 32]).unwrap();
        let w = WitnessKey::from_seed("w.example", [2; 32]).unwrap();
        let _ = TilePath::parse(&s);
        let _ = decode_entry_bundle(&bytes);
        let _ = AddCheckpoint::parse(&bytes);
        let _ = NoteVerifier::from_vkey(&s);
        let _ = CosignatureVerifier::from_vkey(&s);
        let _ = Checkpoint::parse(&s);
        let _ = split_note(&s);
        let _ = open_checkpoint(&s, &log.verifier());
        let _ = add_cosignature(&s, &s);
        let _ = w.verifier().verify_line(&s, &s);
        let mut wit = Witness::new(w, WitnessState::default());
        wit.add_log("l.example", log.verifier());
        let r = wit.handle_add_checkpoint(&bytes, 1);
        prop_assert!(r.status != 200);
        let (h, _) = log_of(5);
        let _ = serve_tile(&h, 5, &s);
    }

    #[test]
    fn structured_but_arbitrary_requests_never_panic_the_witness(
        old in any::<u64>(), size in any::<u64>(), proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70), root in any::<[u8; 32]>(),
    ) {
        let log = NoteSigner::from_seed("l.example", [1; 32]).unwrap();
        let mut wit = Witness::new(WitnessKey::from_seed("w.example", [2; 32]).unwrap(), WitnessState::default());
        wit.add_log("l.example", log.verifier());
        let note = Checkpoint::new("l.example", size, root).sign(&log).unwrap();
        let r = wit.handle_add_checkpoint(AddCheckpoint { old_size: old, proof, checkpoint: note }.encode().as_bytes(), 1);
        prop_assert!(matches!(r.status, 200 | 400 | 409 | 422));
    }
}
