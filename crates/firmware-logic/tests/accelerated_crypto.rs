//! The CCM and HMAC built on the AES block function and a SHA-256 engine (what
//! the ESP32 accelerators offer), and the key derivation and Merkle trees on
//! them, against RustCrypto and the protocol's known-answer vectors.

// Test helpers panic on broken fixtures; that is what a test should do.
#![allow(clippy::unwrap_used)]

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use gridpow_firmware_logic::crypto::{Accelerated, BlockEncrypt, SoftSha256};
use gridpow_proto::crypto::{
    derive_meter_secret, CryptoProvider, HopKeys, MeterKeys, MeterSecret, RustCrypto, SiteSecret,
};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, MeterEntry, Verdict};
use gridpow_proto::merkle::{
    inclusion_proof, leaf_hash, root_of_hashes, verify_inclusion, MAX_PROOF_LEN,
};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::uplink::{seal, UplinkHeader, MAX_LEN};
use gridpow_proto::wire::Reading;
use gridpow_proto::Instant;

/// The AES block function in software, standing in for the peripheral.
struct SoftAes;
impl BlockEncrypt for SoftAes {
    fn encrypt_block(&mut self, key: &[u8; 16], block: &mut [u8; 16]) {
        let c = aes::Aes128::new(key.into());
        c.encrypt_block(block.into());
    }
}

fn provider() -> Accelerated<SoftAes, SoftSha256> {
    Accelerated::new(SoftAes, SoftSha256)
}

fn vector(name: &str) -> serde_json::Value {
    let path = format!("{}/../../test-vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hex_field(v: &serde_json::Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap()).unwrap()
}

#[test]
fn ccm_seal_matches_the_uplink_known_answer_vector() {
    let v = vector("uplink.json");
    // The vector names the two keys sealing uses; the ACK key plays no part.
    let mut secret = [0u8; 48];
    secret[..16].copy_from_slice(&hex_field(&v, "hop_frame_key"));
    secret[32..].copy_from_slice(&hex_field(&v, "e2e_key"));
    let frame = hex_field(&v, "frame");
    let p = provider();
    let keys = MeterKeys::new(
        &p,
        v["key_id"].as_u64().unwrap() as u8,
        &MeterSecret::from_bytes(&secret),
    );
    let plaintext = hex_field(&v, "plaintext");
    let first_seq = v["first_seq"].as_u64().unwrap() as u32;
    let readings: Vec<Reading> = plaintext
        .chunks(32)
        .map(|c| Reading::parse(c).unwrap())
        .collect();
    let header = UplinkHeader {
        key_id: keys.key_id(),
        meter_id: v["meter_id"].as_u64().unwrap() as u32,
        boot_epoch: v["boot_epoch"].as_u64().unwrap() as u32,
        counter: v["counter"].as_u64().unwrap() as u32,
    };
    let mut out = [0u8; MAX_LEN];
    let n = seal(&p, &keys, &header, first_seq, &readings, &mut out).unwrap();
    assert_eq!(hex::encode(&out[..n]), hex::encode(&frame));
}

#[test]
fn ack_tag_matches_the_ack_known_answer_vector() {
    let v = vector("ack.json");
    let key = hex_field(&v, "ack_key");
    let ack = hex_field(&v, "bytes");
    let tag = provider().hmac_sha256(&key, &[&ack[..32]]);
    assert_eq!(&tag[..16], &ack[32..48]);
}

#[test]
fn ccm_and_hmac_agree_with_rustcrypto_on_many_inputs() {
    let hw = provider();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in 0..=230usize {
        let key: [u8; 16] = std::array::from_fn(|_| next() as u8);
        let nonce: [u8; 13] = std::array::from_fn(|_| next() as u8);
        let aad: Vec<u8> = (0..(next() % 40) as usize).map(|_| next() as u8).collect();
        let msg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let (mut a, mut b) = (msg.clone(), msg.clone());
        let ta = hw.aead_seal(&hw.aead_key(&key), &nonce, &aad, &mut a);
        let tb = RustCrypto.aead_seal(&RustCrypto.aead_key(&key), &nonce, &aad, &mut b);
        assert_eq!((a.clone(), ta), (b, tb), "len {len}");
        assert!(hw.aead_open(&hw.aead_key(&key), &nonce, &aad, &mut a, &ta));
        assert_eq!(a, msg);
        let mut bad = a.clone();
        let mut bad_tag = ta;
        bad_tag[len % 16] ^= 1;
        assert!(!hw.aead_open(&hw.aead_key(&key), &nonce, &aad, &mut bad, &bad_tag));
        let hk: Vec<u8> = (0..(next() % 100) as usize).map(|_| next() as u8).collect();
        assert_eq!(
            hw.hmac_sha256(&hk, &[&msg, &aad]),
            RustCrypto.hmac_sha256(&hk, &[&msg, &aad])
        );
    }
}

#[test]
fn a_meter_on_accelerated_crypto_talks_to_a_rustcrypto_relay() {
    let secret = MeterSecret::from_bytes(&[0x42; 48]);
    let hw = provider();
    let mut sender = Sender::<_, 16>::new(&hw, SenderConfig::new(9, 1), &secret, 3, 0).unwrap();
    let mut table = FixedMeterTable::<2>::new();
    table
        .insert(MeterEntry::new(9, None, HopKeys::new(1, &secret.hop)))
        .unwrap();
    let mut relay = Ingress::new(
        RustCrypto,
        IngressConfig {
            relay_id: 1,
            channel: 0,
            require_registered_mac: false,
        },
        table,
    );
    for k in 0..20u64 {
        sender.push_reading(Reading {
            timestamp_ms: k,
            ..Reading::default()
        });
        let now = Instant::from_millis(k * 1000);
        let mut buf = [0u8; MAX_LEN];
        let n = sender.poll_transmit(now, 0, &mut buf).unwrap().unwrap();
        let verdict = relay.handle_frame(&[0; 6], &buf[..n]).unwrap();
        assert!(matches!(verdict, Verdict::Accepted(_)));
        let mut ack = [0u8; 48];
        relay.emit_ack(&verdict, 1_000 + k, &mut ack).unwrap();
        sender.handle_ack(now, &ack).unwrap();
    }
    assert_eq!(sender.stats().readings_acked, 20);
}

#[test]
fn the_core_solver_on_accelerated_sha_finds_the_nonce_rustcrypto_finds() {
    use gridpow_proto::pow::{leading_zero_bits, solve_blocking, PowSolver};
    use gridpow_proto::wire::BlockHeaderRepr;
    let mut h = BlockHeaderRepr {
        difficulty: 10,
        relay_id: 7,
        height: 3,
        prev_hash: [1; 32],
        merkle_root: [2; 32],
        leaf_count: 4,
        time_ms: 99,
        nonce: 0,
    };
    let hw = provider();
    let mut s = PowSolver::new(&hw, &h, 0, 1);
    let nonce = loop {
        if let Some(n) = s.solve_for(&hw, 100) {
            break n;
        }
    };
    h.nonce = nonce;
    assert!(leading_zero_bits(&h.hash(&RustCrypto)) >= 10);
    // The same nonce as the protocol crate's solver finds with RustCrypto.
    let mut reference = h;
    reference.nonce = 0;
    assert_eq!(solve_blocking(&mut reference), nonce);
}

#[test]
fn accelerated_sha256_and_its_midstate_agree_with_rustcrypto() {
    let hw = provider();
    let msg: Vec<u8> = (0..200u8).collect();
    let mut first = [0u8; 64];
    first.copy_from_slice(&msg[..64]);
    let mut mid = hw.sha256_midstate(&first);
    let mut soft_mid = RustCrypto.sha256_midstate(&first);
    for len in 64..=msg.len() {
        let want = RustCrypto.sha256(&[&msg[..len]]);
        assert_eq!(hw.sha256(&[&msg[..len]]), want, "len {len}");
        assert_eq!(hw.sha256_resume(&mut mid, &msg[64..len]), want, "len {len}");
        assert_eq!(RustCrypto.sha256_resume(&mut soft_mid, &msg[64..len]), want);
    }
}

#[test]
fn key_derivation_on_accelerated_hmac_matches_the_keys_vector() {
    let v = vector("keys.json");
    let mut site = [0u8; 32];
    site.copy_from_slice(&hex_field(&v, "site_secret"));
    let key_id = v["key_id"].as_u64().unwrap() as u8;
    let meter_id = v["meter_id"].as_u64().unwrap() as u32;
    let secret = derive_meter_secret(&provider(), &SiteSecret(site), key_id, meter_id);
    assert_eq!(secret.to_bytes().to_vec(), hex_field(&v, "meter_secret"));
}

#[test]
fn merkle_roots_and_proofs_on_accelerated_sha_match_the_merkle_vector() {
    let v = vector("merkle.json");
    let hw = provider();
    for c in v["cases"].as_array().unwrap() {
        let n = c["leaves"].as_u64().unwrap() as usize;
        let hashes: Vec<[u8; 32]> = (0..n)
            .map(|i| leaf_hash(&hw, format!("leaf-{i}").as_bytes()))
            .collect();
        let root = root_of_hashes(&hw, &hashes);
        assert_eq!(root.to_vec(), hex_field(c, "root"), "{n} leaves");
        let index = c["proof_index"].as_u64().unwrap() as usize;
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = inclusion_proof(&hw, &hashes, index, &mut path).unwrap();
        let want: Vec<String> = c["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        let got: Vec<String> = path[..len].iter().map(hex::encode).collect();
        assert_eq!(got, want, "{n} leaves");
        assert!(verify_inclusion(
            &hw,
            &hashes[index],
            index as u64,
            n as u64,
            &path[..len],
            &root
        ));
    }
}
