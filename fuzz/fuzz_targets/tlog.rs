//! The transparency log's parsers (docs/ledger.md) on hostile input: signed
//! notes and checkpoints, cosignature lines, tile paths, entry bundles, log
//! entries, tlog-witness requests (through a witness holding a log) and
//! reading proof files: each is refused with an error or accepted, never a panic.
#![no_main]
use gridpow_proto::wire::LogLeafRepr;
use gridpow_tlog::reading_proof::ReadingProof;
use gridpow_tlog::witness::AddCheckpoint;
use gridpow_tlog::{
    open_checkpoint, Checkpoint, NoteSigner, TilePath, Witness, WitnessKey, WitnessState,
};
use libfuzzer_sys::fuzz_target;

/// The test vectors' keys (test-vectors/log.json).
const ORIGIN: &str = "grid.example/gridpow/log";

fuzz_target!(|data: &[u8]| {
    let log = NoteSigner::from_seed(ORIGIN, [0x4c; 32]).unwrap().verifier();
    let witness_key = WitnessKey::from_seed("witness.example/w1", [0x57; 32]).unwrap();
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = open_checkpoint(&text, &log) {
        assert_eq!(c.checkpoint.origin, ORIGIN);
    }
    if let Ok(c) = Checkpoint::parse(&text) {
        let _ = c.body();
    }
    let _ = witness_key.verifier().verify_line("x\n1\nAA==\n", &text);
    if let Ok(p) = TilePath::parse(&text) {
        assert_eq!(TilePath::parse(&p.to_path()).ok(), Some(p));
    }
    let _ = gridpow_tlog::tiles::decode_entry_bundle(data);
    let _ = LogLeafRepr::parse(data);
    if let Ok(req) = AddCheckpoint::parse(data) {
        let _ = req.encode();
    }
    let mut w = Witness::new(witness_key, WitnessState::default());
    w.add_log(ORIGIN, log.clone());
    let r = w.handle_add_checkpoint(data, 1_764_460_800);
    assert!(r.status != 200 || r.state_changed || !r.body.is_empty());
    if let Ok(doc) = serde_json::from_slice::<ReadingProof>(data) {
        let _ = doc.verify(&log, &[], 0);
    }
});
