//! Known-answer vectors: the contract every implementation (firmware, a Python
//! or C verifier) checks itself against. The vectors are built here from fixed
//! inputs and compared with `test-vectors/*.json`; set `GRIDPOW_REGEN_VECTORS=1`
//! to rewrite the files after a deliberate, documented protocol change.

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use gridpow_proto::block::{verify_block, BlockBuilder, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{
    derive_meter_secret, CryptoProvider, MeterKeys, MeterSecret, RustCrypto, SiteSecret,
};
use gridpow_proto::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root_of_hashes, verify_consistency,
    verify_inclusion, MAX_PROOF_LEN,
};
use gridpow_proto::pow::{leading_zero_bits, PowSolver};
use gridpow_proto::wire::ack::{AckPacket, AckRepr, FLAG_DUPLICATE};
use gridpow_proto::wire::block::BlockHeaderRepr;
use gridpow_proto::wire::receipt::{LogPosition, ReceiptRepr, ReceiptStatus};
use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_ENCODED};
use gridpow_proto::wire::uplink::{self, UplinkHeader, UplinkPacket, MAX_BODY_LEN};
use gridpow_proto::wire::Reading;
use serde_json::{json, Value};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors")
}

/// Compares `v` with the stored file, or writes it when regenerating.
fn check(name: &str, v: &Value) {
    let path = dir().join(name);
    let text = serde_json::to_string_pretty(v).expect("serialisable") + "\n";
    if std::env::var_os("GRIDPOW_REGEN_VECTORS").is_some() {
        std::fs::write(&path, text).expect("write vector");
        return;
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with GRIDPOW_REGEN_VECTORS=1)", path.display()));
    let stored: Value = serde_json::from_str(&stored).expect("vector file is JSON");
    assert_eq!(
        &stored, v,
        "{name} differs from what this implementation produces"
    );
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn site() -> SiteSecret {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = i as u8;
    }
    SiteSecret(s)
}

/// Loads of meter 4242 in turn: voltage (0.01 V), current (mA), power factor
/// (1/10000, negative = export) and frequency (mHz).
const LOADS: [(u16, u32, i16, u16); 8] = [
    (23_012, 4_350, 9_500, 50_012),
    (22_987, 12_020, 9_776, 49_990),
    (23_101, 522, -10_000, 50_001),
    (23_045, 1_870, 8_900, 50_004),
    (22_990, 6_120, 9_650, 49_996),
    (23_077, 2_480, 9_120, 50_008),
    (23_020, 9_010, 9_810, 49_985),
    (23_066, 1_350, 8_700, 50_010),
];

/// Unix ms of the first reading of the timeline, and the reading interval.
const T0_MS: u64 = 1_767_225_600_000;
const INTERVAL_MS: u64 = 10_000;
/// The energy register at the first reading of the timeline, mWh.
const E0_MWH: u64 = 1_234_567_890;

/// Active power in 0.1 W from V (0.01 V), I (mA) and PF (1/10000): P = V·I·PF,
/// rounded half away from zero.
fn power_dw(v_cv: u16, i_ma: u32, pf_e4: i16) -> i32 {
    let x = i64::from(v_cv) * i64::from(i_ma) * i64::from(pf_e4);
    ((x + x.signum() * 50_000_000) / 100_000_000) as i32
}

/// Readings `from .. from + n` of one plausible timeline, one every 10 s: each
/// reading's active power is V·I·PF, and the imported-energy register counts the
/// imported energy of every interval (P > 0 for 10 s), so it never goes back.
/// Reading 2 exports (negative power) and carries the sensor-fault flag, so
/// that a non-zero flag is pinned too; the values stay consistent.
fn timeline(from: usize, n: usize) -> Vec<Reading> {
    let mut imported_dw = 0i64; // sum of positive powers over the intervals so far
    let mut out = Vec::new();
    for i in 0..from + n {
        let (v, c, pf, f) = LOADS[i % LOADS.len()];
        let p = power_dw(v, c, pf);
        if i > 0 {
            imported_dw += i64::from(p.max(0));
        }
        // 0.1 W for 10 s = 1/360 Wh = 5/18 mWh.
        let energy = E0_MWH + ((imported_dw * 5 + 9) / 18) as u64;
        if i >= from {
            out.push(Reading {
                timestamp_ms: T0_MS + i as u64 * INTERVAL_MS,
                voltage_cv: v,
                current_ma: c,
                active_power_dw: p,
                power_factor_e4: pf,
                frequency_mhz: f,
                energy_mwh: energy,
                flags: if i == 2 {
                    Reading::FLAG_SENSOR_FAULT
                } else {
                    0
                },
            });
        }
    }
    out
}

/// The first sequence number of meter 4242's timeline in boot epoch 7; reading
/// `seq` is `timeline(seq - FIRST_SEQ, 1)`.
const FIRST_SEQ: u32 = 100;
const BOOT_EPOCH: u32 = 7;

/// Readings `seq .. seq + n` of meter 4242 in epoch 7.
fn readings_at(seq: u32, n: usize) -> Vec<Reading> {
    timeline((seq - FIRST_SEQ) as usize, n)
}

/// The three readings of `uplink.json` (sequence numbers 100, 101, 102).
fn readings() -> Vec<Reading> {
    readings_at(FIRST_SEQ, 3)
}

fn reading_json(r: &Reading) -> Value {
    json!({
        "timestamp_ms": r.timestamp_ms, "voltage_cv": r.voltage_cv, "current_ma": r.current_ma,
        "active_power_dw": r.active_power_dw, "power_factor_e4": r.power_factor_e4,
        "frequency_mhz": r.frequency_mhz, "energy_mwh": r.energy_mwh, "flags": r.flags,
        "bytes": h(&r.to_bytes()),
    })
}

const METER_ID: u32 = 4242;
const KEY_ID: u8 = 1;

fn meter_secret() -> MeterSecret {
    derive_meter_secret(&RustCrypto, &site(), KEY_ID, METER_ID)
}

/// Meter 4242's frame number `counter` of epoch 7, sealed by the reference
/// sender code. Every counter seals one set of readings across all vector
/// files (`sealed_frames_never_reuse_a_nonce`).
fn sealed_frame(counter: u32, first_seq: u32, rs: &[Reading]) -> Vec<u8> {
    let keys = MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret());
    let header = UplinkHeader {
        key_id: KEY_ID,
        meter_id: METER_ID,
        boot_epoch: BOOT_EPOCH,
        counter,
    };
    let mut buf = [0u8; 250];
    let n = uplink::seal(&RustCrypto, &keys, &header, first_seq, rs, &mut buf).expect("seal");
    buf[..n].to_vec()
}

#[test]
fn key_derivation_vector_matches() {
    let ms = meter_secret();
    check(
        "keys.json",
        &json!({
            "description": "hop_secret = HKDF-SHA256(salt=\"gridpow v2 key derivation\", ikm=site_secret, info=\"gridpow v2 hop\" || key_id || meter_id u32 LE, L=32); e2e_key = same with info prefix \"gridpow v2 e2e\" and L=16; hop_frame_key = hop_secret[0..16], ack_key = hop_secret[16..32]; meter_secret (flashed) = hop_secret || e2e_key",
            "site_secret": h(&site().0), "key_id": KEY_ID, "meter_id": METER_ID,
            "hop_secret": h(&ms.hop.0), "e2e_key": h(&ms.e2e.0),
            "hop_frame_key": h(&ms.hop.frame_key()), "ack_key": h(&ms.hop.ack_key()),
            "meter_secret": h(&ms.to_bytes()),
        }),
    );
}

#[test]
fn sealed_uplink_vector_matches_and_opens() {
    let rs = readings();
    let frame = sealed_frame(5, 100, &rs);
    let header = UplinkHeader {
        key_id: KEY_ID,
        meter_id: METER_ID,
        boot_epoch: 7,
        counter: 5,
    };
    let mut plaintext = Vec::new();
    for r in &rs {
        plaintext.extend_from_slice(&r.to_bytes());
    }
    // The implementation must open its own vector, and a relay (hop keys only) check it.
    let keys = MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret());
    let p = UplinkPacket::new_checked(&frame[..]).expect("valid frame");
    assert_eq!(p.verify_hop(&RustCrypto, &keys.hop), Ok(()));
    let mut scratch = [0u8; MAX_BODY_LEN];
    let body = p.open(&RustCrypto, &keys, &mut scratch).expect("opens");
    assert_eq!(body.first_seq(), 100);
    assert_eq!(
        body.readings().map(|(_, r)| r).collect::<Vec<_>>(),
        rs.to_vec()
    );
    let n = frame.len();
    check(
        "uplink.json",
        &json!({
            "description": "frame = header(20: version 2, type 1, key_id, flags 0, meter_id, boot_epoch, counter, first_seq) || AES-128-CCM(M=16, L=2; key = e2e_key, nonce = 0x01 || frame[4..16], aad = frame[0..20], plaintext = readings) || e2e tag(16) || hop tag = HMAC-SHA256(hop_frame_key, frame[0..n-16])[0..16]",
            "e2e_key": h(&meter_secret().e2e.0), "hop_frame_key": h(&meter_secret().hop.frame_key()),
            "key_id": KEY_ID, "meter_id": METER_ID, "boot_epoch": 7, "counter": 5, "first_seq": 100,
            "readings": rs.iter().map(reading_json).collect::<Vec<_>>(),
            "aad": h(&frame[..20]), "nonce": h(&header.nonce()), "plaintext": h(&plaintext),
            "frame": h(&frame), "e2e_tag": h(&frame[n - 32..n - 16]), "hop_tag": h(&frame[n - 16..]),
        }),
    );
}

/// What a relay (hop keys) and the grid server (all keys) decide about a frame.
fn verdicts(frame: &[u8]) -> (String, String) {
    let keys = MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret());
    let p = match UplinkPacket::new_checked(frame) {
        Ok(p) => p,
        Err(m) => {
            let v = format!("malformed: {m}");
            return (v.clone(), v);
        }
    };
    let relay = match p.verify_hop(&RustCrypto, &keys.hop) {
        Ok(()) => "accept".to_string(),
        Err(e) => format!("rejected: {e}"),
    };
    let mut scratch = [0u8; MAX_BODY_LEN];
    let server = match p.open(&RustCrypto, &keys, &mut scratch) {
        Ok(_) => "accept".to_string(),
        Err(e) => format!("rejected: {e}"),
    };
    (relay, server)
}

/// Recomputes the hop tag, as a relay holding the hop key can.
fn rehop(frame: &mut [u8]) {
    let hop = MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret()).hop;
    uplink::write_hop_tag(&RustCrypto, &hop, frame).expect("a whole frame");
}

#[test]
fn negative_uplink_vectors_get_the_specified_verdicts() {
    let good = sealed_frame(5, 100, &readings());
    let n = good.len();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("genuine frame", good.clone()));
    let mut v1 = good.clone();
    v1[0] = 1;
    cases.push(("version 1 frame", v1));
    let mut hop_flip = good.clone();
    hop_flip[n - 1] ^= 1;
    cases.push(("hop tag altered", hop_flip));
    let mut ct = good.clone();
    ct[20] ^= 1;
    rehop(&mut ct);
    cases.push(("relay alters a reading and re-tags the hop", ct));
    let mut seq = good.clone();
    seq[16] ^= 1;
    rehop(&mut seq);
    cases.push(("relay alters first_seq and re-tags the hop", seq));
    let mut cut = good[..n - 32].to_vec();
    cut.extend_from_slice(&good[n - 32..]);
    cut.drain(20..52);
    rehop(&mut cut);
    cases.push(("relay drops a reading and re-tags the hop", cut));
    let mut invented = good.clone();
    for b in &mut invented[20..n - 16] {
        *b = 0x5a;
    }
    rehop(&mut invented);
    cases.push(("relay invents ciphertext and e2e tag", invented));
    cases.push(("length without whole readings", good[..n - 1].to_vec()));
    let mut flags = good.clone();
    flags[3] = 1;
    rehop(&mut flags);
    cases.push(("reserved flags set", flags));

    let expected = [
        ("accept", "accept"),
        (
            "malformed: unsupported protocol version 1",
            "malformed: unsupported protocol version 1",
        ),
        (
            "rejected: authentication tag does not verify",
            "rejected: authentication tag does not verify",
        ),
        ("accept", "rejected: end-to-end tag does not verify"),
        ("accept", "rejected: end-to-end tag does not verify"),
        ("accept", "rejected: end-to-end tag does not verify"),
        ("accept", "rejected: end-to-end tag does not verify"),
        (
            "malformed: length does not hold 1 to 6 whole readings",
            "malformed: length does not hold 1 to 6 whole readings",
        ),
        (
            "malformed: reserved field is not zero",
            "malformed: reserved field is not zero",
        ),
    ];
    let mut out = Vec::new();
    for ((name, frame), (relay, server)) in cases.iter().zip(expected) {
        let got = verdicts(frame);
        assert_eq!((got.0.as_str(), got.1.as_str()), (relay, server), "{name}");
        out.push(json!({"case": name, "frame": h(frame), "relay": relay, "server": server}));
    }
    check(
        "uplink_negative.json",
        &json!({
            "description": "uplink frames (keys of keys.json) and what a relay (hop keys only: parse, hop tag) and the grid server (parse, hop tag, end-to-end tag) must decide; 'accept' or the first failing check",
            "cases": out,
        }),
    );
}

#[test]
fn ack_vector_matches_and_verifies() {
    let repr = AckRepr {
        key_id: KEY_ID,
        flags: FLAG_DUPLICATE,
        meter_id: METER_ID,
        boot_epoch: 7,
        counter: 5,
        relay_time_ms: 1_767_225_600_123,
        relay_id: 3,
        channel: 6,
    };
    let mut buf = [0u8; 48];
    repr.emit(&RustCrypto, &meter_secret().hop.ack_key(), &mut buf)
        .expect("emit");
    let back = AckPacket::new_checked(&buf[..])
        .map(|p| p.verify(&RustCrypto, &meter_secret().hop.ack_key()));
    assert_eq!(back, Ok(Ok(repr)));
    check(
        "ack.json",
        &json!({
            "description": "tag = HMAC-SHA256(ack_key = hop_secret[16..32], bytes 0..32)[0..16]",
            "ack_key": h(&meter_secret().hop.ack_key()), "key_id": KEY_ID, "flags": repr.flags, "meter_id": METER_ID,
            "boot_epoch": 7, "counter": 5, "relay_time_ms": repr.relay_time_ms, "relay_id": 3, "channel": 6,
            "bytes": h(&buf),
        }),
    );
}

fn header() -> BlockHeaderRepr {
    BlockHeaderRepr {
        difficulty: 16,
        relay_id: 3,
        height: 12,
        prev_hash: [0x11; 32],
        merkle_root: [0x22; 32],
        leaf_count: 40,
        time_ms: 1_767_225_630_000,
        nonce: 0,
    }
}

#[test]
fn block_header_and_pow_vectors_match() {
    let mut hd = header();
    let unsolved = hd.to_bytes();
    let mut solver = PowSolver::new(&RustCrypto, &hd, 0, 1);
    let nonce = loop {
        if let Some(n) = solver.solve_for(&RustCrypto, 1 << 20) {
            break n;
        }
    };
    hd.nonce = nonce;
    let hash = hd.hash(&RustCrypto);
    assert!(leading_zero_bits(&hash) >= 16);
    check(
        "block_header.json",
        &json!({
            "description": "header hash = SHA-256(100 header bytes); PoW: hash has >= difficulty leading zero bits; nonce = smallest solution counting up from 0",
            "difficulty": hd.difficulty, "relay_id": hd.relay_id, "height": hd.height,
            "prev_hash": h(&hd.prev_hash), "merkle_root": h(&hd.merkle_root), "leaf_count": hd.leaf_count,
            "time_ms": hd.time_ms,
            "unsolved_header": h(&unsolved), "unsolved_hash": h(&BlockHeaderRepr { nonce: 0, ..hd }.hash(&RustCrypto)),
            "pow_nonce": nonce, "solved_header": h(&hd.to_bytes()), "solved_hash": h(&hash),
            "leading_zero_bits": leading_zero_bits(&hash), "tries": solver.tries(),
        }),
    );
}

#[test]
fn merkle_vectors_match_and_proofs_verify() {
    let mut cases = Vec::new();
    for n in [1usize, 2, 3, 7, 64] {
        let data: Vec<Vec<u8>> = (0..n).map(|i| format!("leaf-{i}").into_bytes()).collect();
        let hashes: Vec<[u8; 32]> = data.iter().map(|d| leaf_hash(&RustCrypto, d)).collect();
        let root = root_of_hashes(&RustCrypto, &hashes);
        let index = n / 2;
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = inclusion_proof(&RustCrypto, &hashes, index, &mut path).expect("proof");
        assert!(verify_inclusion(
            &RustCrypto,
            &hashes[index],
            index as u64,
            n as u64,
            &path[..len],
            &root
        ));
        cases.push(json!({
            "leaves": n, "leaf_data": "ASCII \"leaf-<i>\" for i in 0..leaves",
            "root": h(&root),
            "proof_index": index, "proof": path[..len].iter().map(|p| h(p)).collect::<Vec<_>>(),
        }));
    }
    let mut consistency = Vec::new();
    for (old, new) in [(1usize, 2usize), (3, 7), (4, 7), (6, 8), (7, 64), (32, 64)] {
        let hashes: Vec<[u8; 32]> = (0..new)
            .map(|i| leaf_hash(&RustCrypto, format!("leaf-{i}").as_bytes()))
            .collect();
        let (old_root, new_root) = (
            root_of_hashes(&RustCrypto, &hashes[..old]),
            root_of_hashes(&RustCrypto, &hashes),
        );
        let mut proof = [[0u8; 32]; MAX_PROOF_LEN];
        let len = consistency_proof(&RustCrypto, &hashes, old, &mut proof).expect("proof");
        assert!(verify_consistency(
            &RustCrypto,
            old as u64,
            new as u64,
            &old_root,
            &new_root,
            &proof[..len]
        ));
        consistency.push(json!({
            "old_size": old, "new_size": new, "old_root": h(&old_root), "new_root": h(&new_root),
            "proof": proof[..len].iter().map(|p| h(p)).collect::<Vec<_>>(),
        }));
    }
    check(
        "merkle.json",
        &json!({
            "description": "RFC 9162: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || l || r); \
                consistency: proofs that the tree of new_size leaves extends its first old_size (section 2.1.4)",
            "cases": cases,
            "consistency": consistency,
        }),
    );
}

struct OneMeter(MeterKeys<RustCrypto>);
impl KeyLookup<RustCrypto> for OneMeter {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        (meter_id == METER_ID && key_id == KEY_ID).then_some(&self.0)
    }
}

fn relay_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

/// When block.json's block was sealed: after its last reading (sequence number 105).
const GENESIS_TIME_MS: u64 = 1_767_225_655_000;

/// A signed block of three frames at difficulty 8 (the vector that other implementations verify).
pub fn signed_block() -> (Vec<u8>, BlockHeaderRepr, Vec<Vec<u8>>) {
    // Frame 5 is uplink.json's; frames 6 and 7 carry the readings after it.
    let frames = vec![
        sealed_frame(5, 100, &readings()),
        sealed_frame(6, 103, &readings_at(103, 1)),
        sealed_frame(7, 104, &readings_at(104, 2)),
    ];
    let mut buf = vec![0u8; 4096];
    let mut b = BlockBuilder::new(&mut buf).expect("buffer");
    for f in &frames {
        b.push_leaf(&RustCrypto, f).expect("room");
    }
    let mut hd = b.header(&RustCrypto, 3, 0, [0; 32], GENESIS_TIME_MS, 8);
    let mut solver = PowSolver::new(&RustCrypto, &hd, 0, 1);
    hd.nonce = loop {
        if let Some(n) = solver.solve_for(&RustCrypto, 1 << 16) {
            break n;
        }
    };
    let len = b.finish(&hd, &relay_key()).expect("finish");
    buf.truncate(len);
    (buf, hd, frames)
}

#[test]
fn signed_block_vector_matches_and_verifies() {
    let (block, hd, frames) = signed_block();
    let keys = OneMeter(MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret()));
    let policy = VerifyPolicy {
        relay_id: 3,
        min_difficulty: 8,
    };
    let v = verify_block(
        &RustCrypto,
        &block,
        &relay_key().verifying_key(),
        &policy,
        &keys,
        |_| Ok(()),
    )
    .expect("verifies");
    assert_eq!(v.header, hd);
    check(
        "block.json",
        &json!({
            "description": "block = header(100) || Ed25519 signature over \"gridpow-block-v2\" || SHA-256(header) || leaves (u16 LE length || frame); meter secrets derive from keys.json's site secret",
            "relay_signing_seed": h(&relay_key().to_bytes()), "relay_public_key": h(&relay_key().verifying_key().to_bytes()),
            "relay_id": 3, "difficulty": 8, "meter_id": METER_ID, "key_id": KEY_ID,
            "frames": frames.iter().map(|f| h(f)).collect::<Vec<_>>(),
            "header_hash": h(&v.hash), "block": h(&block),
        }),
    );
}

#[test]
fn receipt_and_serial_vectors_match() {
    let server = SigningKey::from_bytes(&[0x3c; 32]);
    let r = ReceiptRepr {
        status: ReceiptStatus::Stored,
        relay_id: 3,
        height: 0,
        block_hash: [0x44; 32],
        server_id: 1,
        time_ms: 1_767_225_650_000,
        log: Some(LogPosition {
            index: 5,
            tree_size: 9,
        }),
    };
    let bytes = r.to_signed_bytes(&RustCrypto, &server).unwrap();
    assert_eq!(
        ReceiptRepr::parse_verified(&RustCrypto, &bytes, &server.verifying_key()),
        Ok(r)
    );
    // The same block refused for good (§10, status 3).
    let refused = ReceiptRepr {
        status: ReceiptStatus::Refused,
        log: None,
        ..r
    };
    let refused_bytes = refused.to_signed_bytes(&RustCrypto, &server).unwrap();
    assert_eq!(
        ReceiptRepr::parse_verified(&RustCrypto, &refused_bytes, &server.verifying_key()),
        Ok(refused)
    );
    let data = [0u8, 1, 2, 0, 250];
    let m = SerialRepr {
        kind: SerialKind::AirRx,
        mac: [0x02, 0x67, 0x70, 0, 0x10, 0x92],
        rssi: -57,
        data: &data,
    };
    let mut enc = [0u8; MAX_ENCODED];
    let n = m.emit(&mut enc).expect("encode");
    let mut dec = SerialDecoder::new();
    let decoded = enc[..n]
        .iter()
        .filter_map(|&b| dec.push(b).map(|r| r.map(|x| x.data.to_vec())))
        .next();
    assert_eq!(decoded, Some(Ok(data.to_vec())));
    check(
        "receipt.json",
        &json!({
            "description": "receipt (type 0x06) = bytes 0..76 || Ed25519 over \"gridpow-rcpt-v3\\0\" || bytes 0..76; refused_bytes: status 3, log index and tree size 0",
            "server_signing_seed": h(&server.to_bytes()), "server_public_key": h(&server.verifying_key().to_bytes()),
            "status": 0, "relay_id": 3, "height": 0, "block_hash": h(&r.block_hash), "server_id": 1, "time_ms": r.time_ms,
            "log_index": 5, "tree_size": 9,
            "bytes": h(&bytes),
            "refused_bytes": h(&refused_bytes),
        }),
    );
    check(
        "serial.json",
        &json!({
            "description": "COBS(kind || mac || rssi || data || CRC-32 LE) || 0x00",
            "kind": 1, "mac": h(&m.mac), "rssi": -57, "data": h(&data), "encoded": h(&enc[..n]),
        }),
    );
}

#[test]
fn provider_is_deterministic() {
    // Vectors rely on it: the same inputs must seal to the same bytes.
    let k = RustCrypto.aead_key(&[9; 16]);
    let mut a = *b"same";
    let mut b = *b"same";
    assert_eq!(
        RustCrypto.aead_seal(&k, &[1; 13], b"", &mut a),
        RustCrypto.aead_seal(&k, &[1; 13], b"", &mut b)
    );
}

// ---------------------------------------------------------------------------
// block_negative.json: blocks and the verdict a grid server must reach.

/// What the verifier of `block_negative.json` requires (the vectors' policy).
const MIN_DIFFICULTY: u8 = 8;
const RELAY_ID: u32 = 3;
/// A meter the verifier does not know (its keys derive from the same site secret).
const UNKNOWN_METER_ID: u32 = 4243;

/// The 20 clear header bytes of an uplink frame, any field value allowed.
#[allow(clippy::too_many_arguments)]
fn raw_header(
    version: u8,
    ty: u8,
    flags: u8,
    meter_id: u32,
    boot_epoch: u32,
    counter: u32,
    first_seq: u32,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = version;
    h[1] = ty;
    h[2] = KEY_ID;
    h[3] = flags;
    h[4..8].copy_from_slice(&meter_id.to_le_bytes());
    h[8..12].copy_from_slice(&boot_epoch.to_le_bytes());
    h[12..16].copy_from_slice(&counter.to_le_bytes());
    h[16..20].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Seals `plaintext` under `header` as a meter would (§4: AES-128-CCM under the
/// meter's end-to-end key, nonce `0x01 ‖ header[4..16]`, associated data the
/// header, then the hop tag), whatever the header and length say: a leaf that
/// breaks a §4 rule but whose tags verify, so that only the rule catches it.
fn seal_raw(header: [u8; 20], plaintext: &[u8]) -> Vec<u8> {
    let meter_id = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let secret = derive_meter_secret(&RustCrypto, &site(), header[2], meter_id);
    let keys = MeterKeys::new(&RustCrypto, header[2], &secret);
    let mut nonce = [0u8; 13];
    nonce[0] = 0x01;
    nonce[1..].copy_from_slice(&header[4..16]);
    let mut body = plaintext.to_vec();
    let tag = RustCrypto.aead_seal(&keys.e2e, &nonce, &header, &mut body);
    let mut frame = header.to_vec();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(&tag);
    frame.extend_from_slice(&[0; 16]);
    uplink::write_hop_tag(&RustCrypto, &keys.hop, &mut frame).expect("a whole frame");
    frame
}

fn plaintext_of(rs: &[Reading]) -> Vec<u8> {
    rs.iter().flat_map(|r| r.to_bytes()).collect()
}

/// Hands out meter 4242's next frames of epoch 7 after block.json's (counter 7,
/// sequence number 105): every frame a new counter, every reading a new number.
struct Meter {
    counter: u32,
    seq: u32,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            counter: 8,
            seq: 106,
        }
    }

    /// The next counter, and `n` readings' worth of sequence numbers.
    fn take(&mut self, n: u32) -> (u32, u32) {
        let at = (self.counter, self.seq);
        self.counter += 1;
        self.seq += n;
        at
    }

    /// A genuine frame of `n` readings.
    fn frame(&mut self, n: u32) -> Vec<u8> {
        let (counter, seq) = self.take(n);
        sealed_frame(counter, seq, &readings_at(seq, n as usize))
    }

    /// A frame sealed with its tags valid but the given header fields and
    /// plaintext length in bytes (`len`); the plaintext is the next readings'
    /// bytes, cut or padded with the following reading's.
    fn raw(&mut self, version: u8, ty: u8, flags: u8, len: usize) -> Vec<u8> {
        let n = len.div_ceil(Reading::LEN) as u32;
        let (counter, seq) = self.take(n.max(1));
        let pt = plaintext_of(&readings_at(seq, n.max(1) as usize));
        let h = raw_header(version, ty, flags, METER_ID, BOOT_EPOCH, counter, seq);
        seal_raw(h, &pt[..len])
    }
}

/// Solves (or, with `solve` false, deliberately fails) the PoW of `hd` and
/// signs it: the block message of §9.2 with `leaves`, framing as given.
fn assemble(mut hd: BlockHeaderRepr, key: &SigningKey, leaves: &[Vec<u8>], solve: bool) -> Vec<u8> {
    hd.nonce = (0u64..)
        .find(|&n| {
            let work = leading_zero_bits(&BlockHeaderRepr { nonce: n, ..hd }.hash(&RustCrypto));
            (work >= hd.difficulty) == solve
        })
        .expect("a nonce");
    let mut out = hd.to_bytes().to_vec();
    out.extend_from_slice(&gridpow_proto::block::sign_header(&RustCrypto, &hd, key));
    for l in leaves {
        out.extend_from_slice(&(l.len() as u16).to_le_bytes());
        out.extend_from_slice(l);
    }
    out
}

/// A block of relay `relay_id` over `leaves` at height 1 after block.json's,
/// sealed at `time_ms` with difficulty `difficulty`, PoW solved (the smallest
/// nonce) or failed as asked, signed with `key`.
fn block_of(
    relay_id: u32,
    key: &SigningKey,
    difficulty: u8,
    time_ms: u64,
    leaves: &[Vec<u8>],
    solve: bool,
) -> Vec<u8> {
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(&RustCrypto, l)).collect();
    let hd = BlockHeaderRepr {
        difficulty,
        relay_id,
        height: 1,
        prev_hash: signed_block().1.hash(&RustCrypto),
        merkle_root: root_of_hashes(&RustCrypto, &hashes),
        leaf_count: leaves.len() as u32,
        time_ms,
        nonce: 0,
    };
    assemble(hd, key, leaves, solve)
}

/// One case of block_negative.json: what verify_block returns, the server's
/// quarantine kind, and the receipt status (§10; None = no receipt).
struct BlockCase {
    name: &'static str,
    block: Vec<u8>,
    expected: Result<(), gridpow_proto::Error>,
    reason: Option<&'static str>,
    status: Option<u8>,
}

fn block_cases() -> Vec<BlockCase> {
    use gridpow_proto::{Error, LeafFault, Malformed, Rejected};
    let (genuine, _, frames) = signed_block();
    let mut m = Meter::new();
    let mut t = GENESIS_TIME_MS;
    let mut next_time = || {
        t += 60_000;
        t
    };
    let key = relay_key();
    let leaf = |index, fault| -> Result<(), Error> {
        Err(Error::Rejected(Rejected::Leaf { index, fault }))
    };
    let malformed_leaf = |m| leaf(1, LeafFault::Malformed(m));
    let mut cases = Vec::new();
    let mut case = |name, block, expected, reason, status| {
        cases.push(BlockCase {
            name,
            block,
            expected,
            reason,
            status,
        })
    };

    case(
        "genuine block (block.json)",
        genuine.clone(),
        Ok(()),
        None,
        Some(0),
    );
    let b = block_of(RELAY_ID, &key, 8, next_time(), &[], true);
    case(
        "block with zero leaves (valid, §9.2)",
        b,
        Ok(()),
        None,
        Some(0),
    );
    // The highest sequence numbers a frame may carry: 2^32-3 .. 2^32-1 (epoch 9999).
    let (counter, seq) = m.take(3);
    let top = raw_header(2, 0x01, 0, METER_ID, 9_999, counter, u32::MAX - 2);
    let top = seal_raw(top, &plaintext_of(&readings_at(seq, 3)));
    let b = block_of(RELAY_ID, &key, 8, next_time(), &[m.frame(1), top], true);
    case(
        "leaf whose last reading is numbered 2^32-1 (the highest allowed)",
        b,
        Ok(()),
        None,
        Some(0),
    );

    // The header does not parse: no receipt.
    let mut b = genuine.clone();
    b[0] = 1;
    case(
        "header version 1",
        b,
        Err(Error::Malformed(Malformed::UnsupportedVersion(1))),
        Some("malformed"),
        None,
    );
    let mut b = genuine.clone();
    b[1] = 0x04;
    case(
        "header type 0x04 (a receipt's)",
        b,
        Err(Error::Malformed(Malformed::WrongType(4))),
        Some("malformed"),
        None,
    );
    let mut b = genuine.clone();
    b[3] = 1;
    case(
        "header reserved byte 3 not zero",
        b,
        Err(Error::Malformed(Malformed::NonZeroReserved)),
        Some("malformed"),
        None,
    );
    let mut b = genuine.clone();
    b[80..84].copy_from_slice(&65_536u32.to_le_bytes());
    case(
        "header leaf_count 65536 (above 65535)",
        b,
        Err(Error::Malformed(Malformed::TooManyLeaves)),
        Some("malformed"),
        None,
    );
    case(
        "truncated to 99 bytes (shorter than a header)",
        genuine[..99].to_vec(),
        Err(Error::Malformed(Malformed::TooShort)),
        Some("malformed"),
        None,
    );

    // Leaf framing (§9.2): the header parses, so a receipt with status 2.
    let framing = Err(Error::Malformed(Malformed::BadLeafFraming));
    let leaf_length = Err(Error::Malformed(Malformed::BadLeafLength));
    let mut b = genuine.clone();
    b[164..166].copy_from_slice(&0u16.to_le_bytes());
    case(
        "leaf 0 length prefix 0",
        b,
        leaf_length,
        Some("malformed"),
        Some(2),
    );
    let last = genuine.len() - 2 - frames[2].len();
    let mut b = genuine.clone();
    b[last..last + 2].copy_from_slice(&(frames[2].len() as u16 + 1).to_le_bytes());
    case(
        "last leaf's length prefix overruns the block by 1 byte",
        b,
        framing,
        Some("malformed"),
        Some(2),
    );
    let mut b = genuine.clone();
    b.push(0);
    case(
        "a trailing byte after the last leaf",
        b,
        framing,
        Some("malformed"),
        Some(2),
    );
    let b = block_of(RELAY_ID, &key, 8, next_time(), &[vec![0xa5; 251]], true);
    case(
        "leaf length prefix 251 (more than ESP-NOW carries; PoW, signature and Merkle root valid)",
        b,
        leaf_length,
        Some("malformed"),
        Some(2),
    );

    // Relay, difficulty, PoW, signature, Merkle root.
    let other = SigningKey::from_bytes(&[0x77; 32]);
    let b = block_of(9, &other, 8, next_time(), &[m.frame(1)], true);
    case(
        "relay 9, not registered (signed with its own key)",
        b,
        Err(Error::Rejected(Rejected::WrongRelay)),
        Some("unknown_relay"),
        Some(2),
    );
    let b = block_of(RELAY_ID, &key, 7, next_time(), &[m.frame(2)], true);
    case(
        "difficulty 7, below the required 8 (PoW solved at 7, signed)",
        b,
        Err(Error::Rejected(Rejected::DifficultyTooLow {
            required: MIN_DIFFICULTY,
            claimed: 7,
        })),
        Some("low_difficulty"),
        Some(2),
    );
    let no_work = block_of(RELAY_ID, &key, 8, next_time(), &[m.frame(1)], false);
    let actual = leading_zero_bits(&RustCrypto.sha256(&[&no_work[..100]]));
    case(
        "claims difficulty 8, hash has fewer leading zero bits (signed)",
        no_work.clone(),
        Err(Error::Rejected(Rejected::InsufficientWork {
            required: 8,
            actual,
        })),
        Some("insufficient_work"),
        Some(3),
    );
    let mut b = genuine.clone();
    b[132] ^= 0x01;
    case(
        "signature byte 32 (first byte of S) flipped",
        b,
        Err(Error::Rejected(Rejected::BadSignature)),
        Some("bad_signature"),
        Some(2),
    );
    let in_leaf_1 = 164 + 2 + frames[0].len() + 2 + 20;
    let mut b = genuine.clone();
    b[in_leaf_1] ^= 0x01;
    case(
        "leaf 1 ciphertext byte flipped, header unchanged",
        b,
        Err(Error::Rejected(Rejected::MerkleRootMismatch)),
        Some("merkle_mismatch"),
        Some(2),
    );

    // Leaves (frame validity, §4 / §9.2), each in a block whose PoW,
    // signature and Merkle root are valid; its tags verify too.
    let mut leaf_case = |name, bad: Vec<u8>, expected, reason, status, m: &mut Meter| {
        let t = next_time();
        let b = block_of(RELAY_ID, &key, 8, t, &[m.frame(1), bad], true);
        case(name, b, expected, reason, status);
    };
    let bad = m.raw(2, 0x01, 0, 8);
    leaf_case(
        "leaf 1 too short: 60 bytes (8-byte plaintext), tags valid",
        bad,
        malformed_leaf(Malformed::TooShort),
        Some("malformed_frame"),
        Some(3),
        &mut m,
    );
    let bad = m.raw(2, 0x01, 0, 2 * Reading::LEN + 1);
    leaf_case(
        "leaf 1 of 117 bytes: no whole number of readings, tags valid",
        bad,
        malformed_leaf(Malformed::BadReadingCount),
        Some("malformed_frame"),
        Some(3),
        &mut m,
    );
    let (counter, seq) = m.take(3);
    let over = raw_header(2, 0x01, 0, METER_ID, 9_999, counter, u32::MAX - 1);
    let bad = seal_raw(over, &plaintext_of(&readings_at(seq, 3)));
    leaf_case(
        "leaf 1 numbers 3 readings from 2^32-2: past 2^32-1 (sequence overflow), tags valid",
        bad,
        malformed_leaf(Malformed::SeqOverflow),
        Some("malformed_frame"),
        Some(3),
        &mut m,
    );
    let bad = m.raw(1, 0x01, 0, Reading::LEN);
    leaf_case(
        "leaf 1 of protocol version 1, tags valid",
        bad,
        malformed_leaf(Malformed::UnsupportedVersion(1)),
        Some("malformed_frame"),
        Some(3),
        &mut m,
    );
    let bad = m.raw(2, 0x01, 1, Reading::LEN);
    leaf_case(
        "leaf 1 with its reserved flags byte set, tags valid",
        bad,
        malformed_leaf(Malformed::NonZeroReserved),
        Some("malformed_frame"),
        Some(3),
        &mut m,
    );
    let mut bad = m.frame(2);
    let n = bad.len();
    bad[n - 1] ^= 0x01;
    leaf_case(
        "leaf 1 hop tag altered (end-to-end tag valid)",
        bad,
        leaf(1, LeafFault::BadHopTag),
        Some("bad_hop_tag"),
        Some(3),
        &mut m,
    );
    let mut bad = m.frame(2);
    bad[20] ^= 0x01;
    rehop(&mut bad);
    leaf_case(
        "leaf 1 forged by a relay: a reading altered, hop tag recomputed",
        bad,
        leaf(1, LeafFault::BadTag),
        Some("bad_tag"),
        Some(3),
        &mut m,
    );
    let stranger = raw_header(2, 0x01, 0, UNKNOWN_METER_ID, 1, 0, 0);
    let bad = seal_raw(stranger, &plaintext_of(&timeline(8, 2)));
    leaf_case(
        "leaf 1 from meter 4243, not registered (sealed with its own keys)",
        bad,
        leaf(1, LeafFault::UnknownMeter),
        Some("unknown_meter"),
        Some(2),
        &mut m,
    );

    // Two faults: the earlier check of §9.5 names the refusal.
    let mut b = no_work;
    b[132] ^= 0x01;
    case(
        "no work and a bad signature: PoW is checked first",
        b,
        Err(Error::Rejected(Rejected::InsufficientWork {
            required: 8,
            actual,
        })),
        Some("insufficient_work"),
        Some(3),
    );
    let mut b = genuine.clone();
    b[132] ^= 0x01;
    b[in_leaf_1] ^= 0x01;
    case(
        "bad signature and a leaf byte flipped: the signature is checked first",
        b,
        Err(Error::Rejected(Rejected::BadSignature)),
        Some("bad_signature"),
        Some(2),
    );
    let mut bad = m.frame(1);
    bad[20] ^= 0x01;
    let t = next_time();
    let b = block_of(RELAY_ID, &key, 8, t, &[m.frame(1), bad], true);
    case(
        "leaf 1 reading altered without re-tagging: the hop tag is checked first",
        b,
        leaf(1, LeafFault::BadHopTag),
        Some("bad_hop_tag"),
        Some(3),
    );
    cases
}

#[test]
fn raw_sealing_and_assembly_match_the_reference_code() {
    // The helpers that build the negative vectors agree with the sender and
    // the block builder wherever those can produce the same message.
    let rs = readings();
    let h = raw_header(2, 0x01, 0, METER_ID, BOOT_EPOCH, 5, FIRST_SEQ);
    assert_eq!(
        seal_raw(h, &plaintext_of(&rs)),
        sealed_frame(5, FIRST_SEQ, &rs)
    );
    let (genuine, hd, frames) = signed_block();
    assert_eq!(
        assemble(
            BlockHeaderRepr { nonce: 0, ..hd },
            &relay_key(),
            &frames,
            true
        ),
        genuine
    );
}

#[test]
fn negative_block_vectors_get_the_specified_verdicts() {
    let keys = OneMeter(MeterKeys::new(&RustCrypto, KEY_ID, &meter_secret()));
    let policy = VerifyPolicy {
        relay_id: RELAY_ID,
        min_difficulty: MIN_DIFFICULTY,
    };
    let mut out = Vec::new();
    for c in block_cases() {
        let got = verify_block(
            &RustCrypto,
            &c.block,
            &relay_key().verifying_key(),
            &policy,
            &keys,
            |_| Ok(()),
        )
        .map(|_| ());
        assert_eq!(got, c.expected, "{}", c.name);
        let (class, leaf, detail) = match &c.expected {
            Ok(()) => (None, None, None),
            Err(e @ gridpow_proto::Error::Malformed(_)) => {
                (Some("malformed"), None, Some(e.to_string()))
            }
            Err(e @ gridpow_proto::Error::Rejected(r)) => {
                let leaf = match r {
                    gridpow_proto::Rejected::Leaf { index, .. } => Some(*index),
                    _ => None,
                };
                (Some("rejected"), leaf, Some(e.to_string()))
            }
            Err(e) => panic!("{}: unexpected error kind {e}", c.name),
        };
        // Accepted blocks get a receipt with status 0, refused ones a reason.
        assert_eq!(c.expected.is_ok(), c.reason.is_none(), "{}", c.name);
        assert_eq!(c.status == Some(0), c.expected.is_ok(), "{}", c.name);
        // No receipt exactly when the header does not parse (§10).
        let header_parses = c
            .block
            .get(..100)
            .is_some_and(|h| BlockHeaderRepr::parse(h).is_ok());
        assert_eq!(c.status.is_some(), header_parses, "{}", c.name);
        out.push(json!({
            "name": c.name,
            "block": h(&c.block),
            "verdict": if c.expected.is_ok() { "accept" } else { "refuse" },
            "class": class,
            "reason": c.reason,
            "leaf": leaf,
            "status": c.status,
            "detail": detail,
        }));
    }
    check(
        "block_negative.json",
        &json!({
            "description": "blocks and the verdict a grid server must reach (docs/protocol.md §9.2, §9.5, §10), judged alone (no chain state): verdict 'accept' or 'refuse'; class 'malformed' (the header or the leaf framing does not parse) or 'rejected'; reason = the quarantine kind (§9.5 / §10 names); leaf = zero-based index of the leaf at fault; status = the commit receipt's status (0 stored, 2 quarantined, 3 refused for good; null = no receipt, the header does not parse); detail = the reference implementation's message, informative only. Each case breaks one check (except the last three, which break two and pin the order): leaves at fault are sealed with valid tags and the block around them has valid PoW, signature and Merkle root",
            "site_secret": "keys.json's",
            "relays": [{"relay_id": RELAY_ID, "public_key": h(&relay_key().verifying_key().to_bytes())}],
            "meters": [{"meter_id": METER_ID, "key_id": KEY_ID}],
            "min_difficulty": MIN_DIFFICULTY,
            "cases": out,
        }),
    );
}

// ---------------------------------------------------------------------------
// Hygiene of the stored vector files taken together.

fn stored(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("hex")
}

/// The leaves of a block message as far as its framing goes.
fn leaves_of(block: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = block.get(164..).unwrap_or_default();
    let mut out = Vec::new();
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*a, *b]));
        if n == 0 || tail.len() < n {
            break;
        }
        out.push(tail[..n].to_vec());
        rest = &tail[n..];
    }
    out
}

/// Every byte string in the vector files that may be an uplink frame.
fn every_frame() -> Vec<Vec<u8>> {
    let mut out = vec![unhex(&stored("uplink.json")["frame"])];
    for c in stored("uplink_negative.json")["cases"]
        .as_array()
        .expect("cases")
    {
        out.push(unhex(&c["frame"]));
    }
    let b = stored("block.json");
    out.extend(b["frames"].as_array().expect("frames").iter().map(unhex));
    out.extend(leaves_of(&unhex(&b["block"])));
    for c in stored("block_negative.json")["cases"]
        .as_array()
        .expect("cases")
    {
        out.extend(leaves_of(&unhex(&c["block"])));
    }
    let air = stored("udp_air.json");
    let datagrams = std::iter::once(&air["datagram"]).chain(
        air["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| &c["datagram"]),
    );
    for d in datagrams {
        out.extend(unhex(d).get(16..).map(<[u8]>::to_vec));
    }
    out
}

/// A nonce under one key: key id, meter id and the 13 nonce bytes.
type NonceId = (u8, u32, [u8; 13]);

/// The end-to-end sealing of `f` if its tag verifies under the keys of the
/// meter and key id it names: (key id, meter, nonce) and the opened readings.
fn genuine_sealing(f: &[u8]) -> Option<(NonceId, Vec<u8>)> {
    if f.len() < 52 {
        return None;
    }
    let meter_id = u32::from_le_bytes(f[4..8].try_into().ok()?);
    let keys = MeterKeys::new(
        &RustCrypto,
        f[2],
        &derive_meter_secret(&RustCrypto, &site(), f[2], meter_id),
    );
    let mut nonce = [0u8; 13];
    nonce[0] = 0x01;
    nonce[1..].copy_from_slice(&f[4..16]);
    let n = f.len();
    let mut body = f[20..n - 32].to_vec();
    let tag: [u8; 16] = f[n - 32..n - 16].try_into().ok()?;
    RustCrypto
        .aead_open(&keys.e2e, &nonce, &f[..20], &mut body, &tag)
        .then_some(((f[2], meter_id, nonce), body))
}

#[test]
fn sealed_frames_never_reuse_a_nonce() {
    // Every frame any vector file holds whose end-to-end tag verifies is a
    // sealing by the meter's key: one nonce (meter, epoch, counter) under one
    // key must always seal the same header and readings (§4).
    let mut seen: std::collections::HashMap<NonceId, Vec<u8>> = Default::default();
    let mut sealings = 0;
    for f in every_frame() {
        let Some((nonce, _)) = genuine_sealing(&f) else {
            continue;
        };
        sealings += 1;
        let sealed = f[..f.len() - 16].to_vec();
        if let Some(before) = seen.insert(nonce, sealed.clone()) {
            assert_eq!(
                h(&before),
                h(&sealed),
                "nonce {} of meter {} under key id {} seals two different frames",
                h(&nonce.2),
                nonce.1,
                nonce.0
            );
        }
    }
    assert!(
        sealings > 30 && seen.len() > 20,
        "{sealings} sealings, {} nonces",
        seen.len()
    );
}

#[test]
fn vector_readings_are_plausible() {
    // The readings of every valid frame in the vector files: one value per
    // identity (meter, epoch, seq), P = V·I·PF (to 0.1 W), and per meter and
    // epoch, in sequence order, time going forward and the imported-energy
    // register never going back.
    let mut by_id: std::collections::BTreeMap<(u32, u32, u32), Reading> = Default::default();
    for f in every_frame() {
        let Ok(p) = UplinkPacket::new_checked(&f[..]) else {
            continue;
        };
        // Sealed by the meter (hop tag aside: a relay's alteration of it changes no reading).
        let Some((_, body)) = genuine_sealing(&f) else {
            continue;
        };
        for (i, chunk) in body.chunks_exact(Reading::LEN).enumerate() {
            let r = Reading::parse(chunk).expect("32 bytes");
            let seq = p.first_seq() + i as u32;
            let id = (p.meter_id(), p.boot_epoch(), seq);
            if let Some(before) = by_id.insert(id, r) {
                assert_eq!(before, r, "two readings under {id:?}");
            }
            let p_dw = power_dw(r.voltage_cv, r.current_ma, r.power_factor_e4);
            assert!(
                (p_dw - r.active_power_dw).abs() <= 1,
                "{id:?}: P is not V·I·PF: {r:?}"
            );
        }
    }
    assert!(by_id.len() > 20, "{} readings", by_id.len());
    let mut prev: Option<((u32, u32, u32), Reading)> = None;
    for (&id, r) in &by_id {
        if let Some((pid, pr)) = prev.filter(|(pid, _)| (pid.0, pid.1) == (id.0, id.1)) {
            assert!(
                r.timestamp_ms > pr.timestamp_ms,
                "{pid:?} -> {id:?}: time goes back"
            );
            assert!(
                r.energy_mwh >= pr.energy_mwh,
                "{pid:?} -> {id:?}: energy goes back"
            );
        }
        prev = Some((id, *r));
    }
}

// ---------------------------------------------------------------------------
// log.json (written by gridpow-tlog from the C2SP formats) read by the no_std
// core, and log_proof.json: the MQTT proof messages (§16) over its proofs.

fn hex32(v: &Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&hex::decode(v.as_str().expect("hex")).expect("hex"));
    out
}

#[test]
fn the_core_opens_the_log_vectors_checkpoints_and_refuses_their_negative_notes() {
    use gridpow_proto::checkpoint::{NoteKey, TreeHead};
    let log: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("log.json")).expect("log.json"))
            .expect("JSON");
    let key = NoteKey::from_vkey(&RustCrypto, log["log_key"]["vkey"].as_str().expect("vkey"))
        .expect("the log's vkey");
    assert_eq!(
        key.name(),
        log["origin"].as_str().expect("origin").as_bytes()
    );
    let root_of = |size: u64| {
        log["trees"]
            .as_array()
            .expect("trees")
            .iter()
            .find(|t| t["size"] == size)
            .map(|t| hex32(&t["root"]))
            .expect("tree of that size")
    };
    let checkpoints = log["checkpoints"].as_array().expect("checkpoints");
    assert!(!checkpoints.is_empty());
    for c in checkpoints {
        let size = c["size"].as_u64().expect("size");
        for note in [&c["note"], &c["cosigned_note"]] {
            assert_eq!(
                key.open_checkpoint(&RustCrypto, note.as_str().expect("note").as_bytes()),
                Ok(TreeHead {
                    size,
                    root: root_of(size)
                })
            );
        }
    }
    // A witness's cosignature key (algorithm 0x04) is no note key.
    assert!(NoteKey::from_vkey(
        &RustCrypto,
        log["witness_key"]["vkey"].as_str().expect("vkey")
    )
    .is_err());
    for n in log["negative_notes"].as_array().expect("negative notes") {
        assert!(
            key.open_checkpoint(&RustCrypto, n["note"].as_str().expect("note").as_bytes())
                .is_err(),
            "accepted: {}",
            n["what"]
        );
    }
}

#[test]
fn log_proof_messages_match_their_vectors() {
    use gridpow_proto::wire::{LogProof, LogProofKind, LogProofRequest, MAX_LOG_PROOF_LEN};
    let log: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("log.json")).expect("log.json"))
            .expect("JSON");
    let c = &log["consistency"][0];
    let i = log["inclusion"]
        .as_array()
        .expect("inclusion")
        .iter()
        .find(|i| i["proof"].as_array().is_some_and(|p| p.len() > 3))
        .expect("an inclusion proof with a path");
    let mut cases = Vec::new();
    for (kind, first, second, path) in [
        (LogProofKind::Consistency, &c["old"], &c["new"], &c["proof"]),
        (
            LogProofKind::Inclusion,
            &i["index"],
            &i["size"],
            &i["proof"],
        ),
    ] {
        let req = LogProofRequest {
            kind,
            relay_id: 3,
            first: first.as_u64().expect("u64"),
            second: second.as_u64().expect("u64"),
        };
        let path: Vec<[u8; 32]> = path.as_array().expect("path").iter().map(hex32).collect();
        let mut buf = [0u8; MAX_LOG_PROOF_LEN];
        let n = req.emit_proof(&path, &mut buf).expect("emit");
        let parsed = LogProof::parse(&buf[..n]).expect("parse");
        assert_eq!(parsed.request, req);
        assert_eq!(LogProofRequest::parse(&req.to_bytes()), Ok(req));
        cases.push(json!({
            "kind": kind as u8, "relay_id": 3, "first": req.first, "second": req.second,
            "request": h(&req.to_bytes()), "proof": h(&buf[..n]),
        }));
    }
    check(
        "log_proof.json",
        &json!({
            "description": "protocol §16: log proof request (type 0x07, 24 bytes) and proof (type 0x08, 24 + 32 n bytes) over log.json's first consistency proof and an inclusion proof; kind 1 inclusion (first = index), 2 consistency (first = old size); second = tree size",
            "cases": cases,
        }),
    );
}
