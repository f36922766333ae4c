//! The relay's log watch (protocol §16): checkpoint notes, verifier keys,
//! proof requests and proofs parse or are refused, never panic; and any
//! sequence of checkpoints, proofs, receipts and clock ticks leaves the
//! watch's counters consistent.
//!
//! Input: records `op ‖ len (u16 LE) ‖ len bytes`, op 0 a checkpoint note,
//! 1 a proof message, 2 a receipt position (u64 index, u64 size LE, then
//! entry fields), 3 a clock tick (u64 ms LE) polling the next request.
#![no_main]
use gridpow_proto::checkpoint::NoteKey;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::logwatch::LogWatch;
use gridpow_proto::wire::{LogLeafRepr, LogPosition, LogProof, LogProofRequest};
use gridpow_proto::Instant;
use libfuzzer_sys::fuzz_target;

/// test-vectors/log.json's log key (TEST KEY): its checkpoints are the seeds.
const VKEY: &str = "grid.example/gridpow/log+fa802943+AZJzCPU9Z2VQPStkwQOrWqRyBqs5UCz+j5hEL9tUMQC3";

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let _ = LogProofRequest::parse(data);
    let _ = LogProof::parse(data);
    if let Ok(s) = core::str::from_utf8(data) {
        let _ = NoteKey::from_vkey(&RustCrypto, s);
    }
    let Ok(key) = NoteKey::from_vkey(&RustCrypto, VKEY) else {
        return;
    };
    let _ = key.open_checkpoint(&RustCrypto, data);
    let mut w = LogWatch::<8>::new(key, 3, None);
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, len) = (rest[0], usize::from(u16::from_le_bytes([rest[1], rest[2]])));
        let body = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[(3 + len).min(rest.len())..];
        match op % 4 {
            0 => {
                let _ = w.handle_checkpoint(&RustCrypto, body);
            }
            1 => {
                let _ = w.handle_proof(&RustCrypto, body);
            }
            2 => {
                let at = LogPosition {
                    index: u64_at(body, 0),
                    tree_size: u64_at(body, 8),
                };
                let entry = LogLeafRepr {
                    relay_id: 3,
                    height: u64_at(body, 16),
                    block_hash: [body.len() as u8; 32],
                    merkle_root: [0; 32],
                };
                let refused = w.handle_receipt(&RustCrypto, &entry, at).is_err();
                assert_eq!(refused, at.index >= at.tree_size);
            }
            _ => {
                if let Some(r) = w.poll_request(Instant::from_millis(u64_at(body, 0))) {
                    assert!(r.is_well_formed(), "{r:?}");
                    assert_eq!(r.relay_id, 3);
                }
            }
        }
        while w.poll_alarm().is_some() {}
        let s = w.stats();
        assert!(s.alarms >= u64::from(w.last_alarm().is_some()));
        assert!(w.pending_checks() <= 8);
    }
});
