//! The known-answer vectors of `test-vectors/*.json` (turned into constants
//! by `build.rs`), checked with the real `gridpow_proto` API and its software
//! crypto provider, as `crates/proto/tests/vectors.rs` does on the host.

use core::fmt::{self, Write as _};

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::block::{check_link, verify_block, BlockBuilder, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{
    derive_meter_secret, CryptoProvider, MeterKeys, MeterSecret, RustCrypto, SiteSecret,
};
use gridpow_proto::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root_of_hashes, verify_consistency,
    verify_inclusion, RootBuilder, MAX_PROOF_LEN,
};
use gridpow_proto::pow::{check_work, leading_zero_bits, PowSolver};
use gridpow_proto::wire::ack::{AckPacket, AckRepr};
use gridpow_proto::wire::block::BlockHeaderRepr;
use gridpow_proto::wire::receipt::{LogPosition, ReceiptRepr, ReceiptStatus};
use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_ENCODED};
use gridpow_proto::wire::uplink::{self, UplinkHeader, UplinkPacket, MAX_BODY_LEN};
use gridpow_proto::wire::Reading;
use gridpow_proto::{Error, Hash, Rejected};

use crate::harness::Outcome;

/// One case of `uplink_negative.json`.
pub struct NegativeCase {
    pub case: &'static str,
    pub frame: &'static [u8],
    pub relay: &'static str,
    pub server: &'static str,
}

/// One case of `signature_negative.json`.
pub struct SignatureCase {
    pub case: &'static str,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
    pub message: &'static [u8],
    pub verdict: &'static str,
}

/// One case of `block_negative.json` (`class` and `detail` are "" for an
/// accepted block).
pub struct BlockCase {
    pub name: &'static str,
    pub block: &'static [u8],
    pub verdict: &'static str,
    pub class: &'static str,
    pub leaf: Option<u32>,
    pub detail: &'static str,
}

/// One case of `merkle.json`.
pub struct MerkleCase {
    pub leaves: usize,
    pub root: Hash,
    pub proof_index: usize,
    pub proof: &'static [Hash],
}

/// One consistency case of `merkle.json`.
pub struct ConsistencyCase {
    pub old_size: usize,
    pub new_size: usize,
    pub old_root: Hash,
    pub new_root: Hash,
    pub proof: &'static [Hash],
}

mod v {
    use super::{BlockCase, ConsistencyCase, MerkleCase, NegativeCase, Reading, SignatureCase};
    include!(concat!(env!("OUT_DIR"), "/vectors.rs"));
}

tests![
    key_derivation_matches_keys_json,
    sealed_uplink_matches_and_opens,
    negative_uplinks_get_the_specified_verdicts,
    ack_matches_and_verifies,
    block_header_hash_and_pow_match,
    pow_nonce_is_the_smallest_solution,
    merkle_roots_and_proofs_match,
    consistency_proofs_match_and_verify,
    signed_block_verifies_and_rebuilds_byte_for_byte,
    tampered_block_is_rejected,
    negative_blocks_get_the_specified_verdicts,
    receipt_matches_and_verifies,
    log_watch_opens_checkpoints_and_adopts_a_consistent_one,
    serial_frame_matches_and_decodes,
    strict_ed25519_gives_every_signature_its_verdict,
];

fn meter_secret() -> MeterSecret {
    let site = SiteSecret(v::keys::SITE_SECRET);
    derive_meter_secret(&RustCrypto, &site, v::keys::KEY_ID, v::keys::METER_ID)
}

fn meter_keys() -> MeterKeys<RustCrypto> {
    MeterKeys::new(&RustCrypto, v::keys::KEY_ID, &meter_secret())
}

/// A line of text formatted without an allocator.
struct Text {
    buf: [u8; 128],
    len: usize,
}

impl Text {
    fn of(args: fmt::Arguments<'_>) -> Text {
        let mut t = Text {
            buf: [0; 128],
            len: 0,
        };
        // A message longer than the buffer is cut; it then fails the comparison.
        let _ = t.write_fmt(args);
        t
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<not UTF-8>")
    }
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn key_derivation_matches_keys_json() -> Outcome {
    let ms = meter_secret();
    check_eq!(ms.hop.0, v::keys::HOP_SECRET);
    check_eq!(ms.e2e.0, v::keys::E2E_KEY);
    check_eq!(ms.hop.frame_key(), v::keys::HOP_FRAME_KEY);
    check_eq!(ms.hop.ack_key(), v::keys::ACK_KEY);
    check_eq!(ms.to_bytes(), v::keys::METER_SECRET);
    Ok(())
}

fn uplink_header() -> UplinkHeader {
    UplinkHeader {
        key_id: v::uplink::KEY_ID,
        meter_id: v::uplink::METER_ID,
        boot_epoch: v::uplink::BOOT_EPOCH,
        counter: v::uplink::COUNTER,
    }
}

fn sealed_uplink_matches_and_opens() -> Outcome {
    check_eq!(meter_secret().e2e.0, v::uplink::E2E_KEY);
    check_eq!(meter_secret().hop.frame_key(), v::uplink::HOP_FRAME_KEY);
    let mut readings = [Reading::default(); 3];
    let mut plaintext = [0u8; 3 * Reading::LEN];
    for (i, (r, bytes)) in v::uplink::READINGS.iter().enumerate() {
        check_eq!(r.to_bytes(), *bytes, "reading {i} encodes");
        check_eq!(Reading::parse(bytes), Some(*r), "reading {i} parses");
        readings[i] = *r;
        plaintext[i * Reading::LEN..(i + 1) * Reading::LEN].copy_from_slice(bytes);
    }
    check_eq!(plaintext, v::uplink::PLAINTEXT);
    check_eq!(uplink_header().nonce(), v::uplink::NONCE);

    let keys = meter_keys();
    let mut buf = [0u8; 250];
    let n = check_ok!(uplink::seal(
        &RustCrypto,
        &keys,
        &uplink_header(),
        v::uplink::FIRST_SEQ,
        &readings,
        &mut buf,
    ));
    let frame = &buf[..n];
    check_eq!(frame, &v::uplink::FRAME[..]);
    check_eq!(frame[..20], v::uplink::AAD);
    check_eq!(frame[n - 32..n - 16], v::uplink::E2E_TAG);
    check_eq!(frame[n - 16..], v::uplink::HOP_TAG);

    // A relay (hop key) checks it, the server (all keys) opens it.
    let p = check_ok!(UplinkPacket::new_checked(&v::uplink::FRAME[..]));
    check_eq!(p.verify_hop(&RustCrypto, &keys.hop), Ok(()));
    check_eq!(p.first_seq(), v::uplink::FIRST_SEQ);
    check_eq!(p.header(), uplink_header());
    let mut scratch = [0u8; MAX_BODY_LEN];
    let body = check_ok!(p.open(&RustCrypto, &keys, &mut scratch));
    check_eq!(body.first_seq(), v::uplink::FIRST_SEQ);
    check_eq!(body.len(), 3);
    for (i, (seq, r)) in body.readings().enumerate() {
        check_eq!(seq, v::uplink::FIRST_SEQ + i as u32);
        check_eq!(r, readings[i]);
    }

    // Every flipped byte is refused by the relay already (parse or hop tag).
    for i in 0..v::uplink::FRAME.len() {
        let mut bad = v::uplink::FRAME;
        bad[i] ^= 0x01;
        let relay_accepts = matches!(
            UplinkPacket::new_checked(&bad[..]).map(|p| p.verify_hop(&RustCrypto, &keys.hop)),
            Ok(Ok(()))
        );
        check!(!relay_accepts, "frame with byte {i} flipped passes the hop check");
    }
    Ok(())
}

/// What a relay (hop keys) and the grid server (all keys) decide about a
/// frame, in the words of `uplink_negative.json`.
fn verdicts(frame: &[u8]) -> (Text, Text) {
    let keys = meter_keys();
    let p = match UplinkPacket::new_checked(frame) {
        Ok(p) => p,
        Err(m) => {
            return (
                Text::of(format_args!("malformed: {m}")),
                Text::of(format_args!("malformed: {m}")),
            )
        }
    };
    let relay = match p.verify_hop(&RustCrypto, &keys.hop) {
        Ok(()) => Text::of(format_args!("accept")),
        Err(e) => Text::of(format_args!("rejected: {e}")),
    };
    let mut scratch = [0u8; MAX_BODY_LEN];
    let server = match p.open(&RustCrypto, &keys, &mut scratch) {
        Ok(_) => Text::of(format_args!("accept")),
        Err(e) => Text::of(format_args!("rejected: {e}")),
    };
    (relay, server)
}

fn negative_uplinks_get_the_specified_verdicts() -> Outcome {
    check_eq!(v::uplink_negative::CASES.len(), 9, "the file's nine cases");
    for c in v::uplink_negative::CASES {
        let (relay, server) = verdicts(c.frame);
        check_eq!(relay.as_str(), c.relay, "relay's verdict on {:?}", c.case);
        check_eq!(server.as_str(), c.server, "server's verdict on {:?}", c.case);
    }
    // The first case is the genuine frame of uplink.json.
    check_eq!(v::uplink_negative::CASES[0].frame, &v::uplink::FRAME[..]);
    Ok(())
}

fn ack_repr() -> AckRepr {
    AckRepr {
        key_id: v::ack::KEY_ID,
        flags: v::ack::FLAGS,
        meter_id: v::ack::METER_ID,
        boot_epoch: v::ack::BOOT_EPOCH,
        counter: v::ack::COUNTER,
        relay_time_ms: v::ack::RELAY_TIME_MS,
        relay_id: v::ack::RELAY_ID,
        channel: v::ack::CHANNEL,
    }
}

fn ack_matches_and_verifies() -> Outcome {
    let key = meter_secret().hop.ack_key();
    check_eq!(key, v::ack::ACK_KEY);
    let mut buf = [0u8; 48];
    check_eq!(ack_repr().emit(&RustCrypto, &key, &mut buf).map(|_| ()), Ok(()));
    check_eq!(buf, v::ack::BYTES);
    let back = AckPacket::new_checked(&v::ack::BYTES[..]).map(|p| p.verify(&RustCrypto, &key));
    check_eq!(back, Ok(Ok(ack_repr())));
    // Any flipped bit of the tag or the covered bytes is refused.
    for i in 0..buf.len() {
        let mut bad = v::ack::BYTES;
        bad[i] ^= 0x01;
        let ok = matches!(
            AckPacket::new_checked(&bad[..]).map(|p| p.verify(&RustCrypto, &key)),
            Ok(Ok(_))
        );
        check!(!ok, "ACK with byte {i} flipped verifies");
    }
    Ok(())
}

fn vector_header(nonce: u64) -> BlockHeaderRepr {
    BlockHeaderRepr {
        difficulty: v::block_header::DIFFICULTY,
        relay_id: v::block_header::RELAY_ID,
        height: v::block_header::HEIGHT,
        prev_hash: v::block_header::PREV_HASH,
        merkle_root: v::block_header::MERKLE_ROOT,
        leaf_count: v::block_header::LEAF_COUNT,
        time_ms: v::block_header::TIME_MS,
        nonce,
    }
}

fn block_header_hash_and_pow_match() -> Outcome {
    let unsolved = vector_header(0);
    check_eq!(unsolved.to_bytes(), v::block_header::UNSOLVED_HEADER);
    check_eq!(unsolved.hash(&RustCrypto), v::block_header::UNSOLVED_HASH);
    let solved = vector_header(v::block_header::POW_NONCE);
    check_eq!(solved.to_bytes(), v::block_header::SOLVED_HEADER);
    check_eq!(
        BlockHeaderRepr::parse(&v::block_header::SOLVED_HEADER),
        Ok(solved)
    );
    let hash = solved.hash(&RustCrypto);
    check_eq!(hash, v::block_header::SOLVED_HASH);
    check_eq!(leading_zero_bits(&hash), v::block_header::LEADING_ZERO_BITS);
    check_eq!(check_work(&hash, v::block_header::DIFFICULTY), Ok(()));
    check!(check_work(&unsolved.hash(&RustCrypto), v::block_header::DIFFICULTY).is_err());
    Ok(())
}

fn pow_nonce_is_the_smallest_solution() -> Outcome {
    // The whole search from nonce 0, as the vector was made: ~220 000
    // SHA-256 compressions on the 32-bit CPU.
    let mut solver = PowSolver::new(&RustCrypto, &vector_header(0), 0, 1);
    let mut found = None;
    for _ in 0..64 {
        found = solver.solve_for(&RustCrypto, 1 << 16);
        if found.is_some() {
            break;
        }
    }
    check_eq!(found, Some(v::block_header::POW_NONCE));
    check_eq!(solver.tries(), v::block_header::TRIES);
    Ok(())
}

fn merkle_roots_and_proofs_match() -> Outcome {
    check_eq!(v::merkle::CASES.len(), 5);
    for c in v::merkle::CASES {
        let mut hashes = [[0u8; 32]; 64];
        check!(c.leaves <= hashes.len(), "{} leaves fit", c.leaves);
        let mut builder = RootBuilder::new();
        for (i, h) in hashes.iter_mut().enumerate().take(c.leaves) {
            let data = Text::of(format_args!("leaf-{i}"));
            *h = leaf_hash(&RustCrypto, data.as_str().as_bytes());
            builder.push_leaf(&RustCrypto, data.as_str().as_bytes());
        }
        let hashes = &hashes[..c.leaves];
        check_eq!(root_of_hashes(&RustCrypto, hashes), c.root, "root of {} leaves", c.leaves);
        check_eq!(builder.root(&RustCrypto), c.root, "streamed root of {} leaves", c.leaves);
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = inclusion_proof(&RustCrypto, hashes, c.proof_index, &mut path);
        check_eq!(len, Ok(c.proof.len()), "proof length, {} leaves", c.leaves);
        check_eq!(&path[..c.proof.len()], c.proof, "proof, {} leaves", c.leaves);
        let (i, n) = (c.proof_index as u64, c.leaves as u64);
        check!(verify_inclusion(&RustCrypto, &hashes[c.proof_index], i, n, c.proof, &c.root));
        let other = leaf_hash(&RustCrypto, b"not a leaf");
        check!(!verify_inclusion(&RustCrypto, &other, i, n, c.proof, &c.root));
    }
    Ok(())
}

fn consistency_proofs_match_and_verify() -> Outcome {
    check_eq!(v::merkle::CONSISTENCY.len(), 6);
    for c in v::merkle::CONSISTENCY {
        let mut hashes = [[0u8; 32]; 64];
        check!(c.new_size <= hashes.len(), "{} leaves fit", c.new_size);
        for (i, h) in hashes.iter_mut().enumerate().take(c.new_size) {
            let data = Text::of(format_args!("leaf-{i}"));
            *h = leaf_hash(&RustCrypto, data.as_str().as_bytes());
        }
        let hashes = &hashes[..c.new_size];
        check_eq!(root_of_hashes(&RustCrypto, &hashes[..c.old_size]), c.old_root);
        check_eq!(root_of_hashes(&RustCrypto, hashes), c.new_root);
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = consistency_proof(&RustCrypto, hashes, c.old_size, &mut path);
        check_eq!(len, Ok(c.proof.len()), "proof length {} -> {}", c.old_size, c.new_size);
        check_eq!(&path[..c.proof.len()], c.proof, "proof {} -> {}", c.old_size, c.new_size);
        let (m, n) = (c.old_size as u64, c.new_size as u64);
        check!(verify_consistency(&RustCrypto, m, n, &c.old_root, &c.new_root, c.proof));
        check!(!verify_consistency(&RustCrypto, m, n, &c.new_root, &c.new_root, c.proof));
    }
    Ok(())
}

struct OneMeter(MeterKeys<RustCrypto>);

impl KeyLookup<RustCrypto> for OneMeter {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        (meter_id == v::block::METER_ID && key_id == v::block::KEY_ID).then_some(&self.0)
    }
}

fn relay_key() -> (SigningKey, Option<VerifyingKey>) {
    let sk = SigningKey::from_bytes(&v::block::RELAY_SIGNING_SEED);
    let pk = VerifyingKey::from_bytes(&v::block::RELAY_PUBLIC_KEY).ok();
    (sk, pk)
}

fn policy() -> VerifyPolicy {
    VerifyPolicy {
        relay_id: v::block::RELAY_ID,
        min_difficulty: v::block::DIFFICULTY,
    }
}

fn signed_block_verifies_and_rebuilds_byte_for_byte() -> Outcome {
    let (sk, pk) = relay_key();
    check_eq!(Some(sk.verifying_key()), pk, "public key derives from the seed");
    let pk = check_ok!(pk);
    let keys = OneMeter(meter_keys());
    let mut leaves = 0;
    let verified = check_ok!(verify_block(&RustCrypto, &v::block::BLOCK, &pk, &policy(), &keys, |leaf| {
        leaves += 1;
        // Every leaf is one of the vector's frames, in order.
        match v::block::FRAMES.get(leaf.index as usize) {
            Some(f) if *f == leaf.frame.as_bytes() => Ok(()),
            _ => Err(gridpow_proto::LeafFault::Replay),
        }
    }));
    check_eq!(leaves, v::block::FRAMES.len());
    check_eq!(verified.hash, v::block::HEADER_HASH);
    check_eq!(verified.header.hash(&RustCrypto), v::block::HEADER_HASH);
    check_eq!(check_link(&verified.header, None), Ok(()), "a genesis block");

    // The same block from its frames: Merkle root, header and Ed25519 signature
    // (deterministic) come out byte for byte.
    let mut buf = [0u8; 2048];
    let mut b = check_ok!(BlockBuilder::new(&mut buf));
    for f in v::block::FRAMES {
        check_eq!(b.push_leaf(&RustCrypto, f), Ok(()));
    }
    let h = verified.header;
    let mut header =
        b.header(&RustCrypto, h.relay_id, h.height, h.prev_hash, h.time_ms, h.difficulty);
    check_eq!(header.merkle_root, h.merkle_root);
    check_eq!(header.leaf_count, h.leaf_count);
    header.nonce = h.nonce;
    let len = b.finish(&header, &sk);
    check_eq!(len, Ok(v::block::BLOCK.len()));
    check_eq!(&buf[..v::block::BLOCK.len()], &v::block::BLOCK[..]);
    Ok(())
}

fn tampered_block_is_rejected() -> Outcome {
    let pk = check_ok!(relay_key().1, "the vector's relay public key");
    let keys = OneMeter(meter_keys());
    // Every 7th byte (header, signature, leaf framing, frames), flipped.
    let mut block = v::block::BLOCK;
    for i in (0..block.len()).step_by(7) {
        block[i] ^= 0x20;
        let r = verify_block(&RustCrypto, &block, &pk, &policy(), &keys, |_| Ok(()));
        check!(r.is_err(), "block with byte {i} flipped verifies");
        block[i] ^= 0x20;
    }
    // The wrong relay, and a stricter difficulty, are refused by policy.
    let strict = VerifyPolicy {
        min_difficulty: v::block::DIFFICULTY + 1,
        ..policy()
    };
    let r = verify_block(&RustCrypto, &block, &pk, &strict, &keys, |_| Ok(()));
    check!(
        matches!(r, Err(Error::Rejected(Rejected::DifficultyTooLow { .. }))),
        "{r:?}"
    );
    let other = VerifyPolicy {
        relay_id: v::block::RELAY_ID + 1,
        ..policy()
    };
    let r = verify_block(&RustCrypto, &block, &pk, &other, &keys, |_| Ok(()));
    check_eq!(r.map(|_| ()), Err(Error::Rejected(Rejected::WrongRelay)));
    Ok(())
}

fn negative_blocks_get_the_specified_verdicts() -> Outcome {
    let pk = check_ok!(relay_key().1, "the vector's relay public key");
    let keys = OneMeter(meter_keys());
    let policy = VerifyPolicy {
        min_difficulty: v::block_negative::MIN_DIFFICULTY,
        ..policy()
    };
    check!(v::block_negative::CASES.len() >= 20, "the file's cases");
    // The first case is block.json's block.
    check_eq!(v::block_negative::CASES[0].block, &v::block::BLOCK[..]);
    for c in v::block_negative::CASES {
        let r = verify_block(&RustCrypto, c.block, &pk, &policy, &keys, |_| Ok(()));
        let (verdict, class, leaf) = match &r {
            Ok(_) => ("accept", "", None),
            Err(Error::Malformed(_)) => ("refuse", "malformed", None),
            Err(Error::Rejected(Rejected::Leaf { index, .. })) => {
                ("refuse", "rejected", Some(*index))
            }
            Err(Error::Rejected(_)) => ("refuse", "rejected", None),
            Err(_) => ("refuse", "another error", None),
        };
        check_eq!(
            (verdict, class, leaf),
            (c.verdict, c.class, c.leaf),
            "verdict on {:?}",
            c.name
        );
        let detail = match &r {
            Ok(_) => Text::of(format_args!("")),
            Err(e) => Text::of(format_args!("{e}")),
        };
        check_eq!(detail.as_str(), c.detail, "message for {:?}", c.name);
    }
    Ok(())
}

fn receipt_matches_and_verifies() -> Outcome {
    let server = SigningKey::from_bytes(&v::receipt::SERVER_SIGNING_SEED);
    check_eq!(
        server.verifying_key().to_bytes(),
        v::receipt::SERVER_PUBLIC_KEY
    );
    check_eq!(v::receipt::STATUS, ReceiptStatus::Stored as u8);
    let r = ReceiptRepr {
        status: ReceiptStatus::Stored,
        relay_id: v::receipt::RELAY_ID,
        height: v::receipt::HEIGHT,
        block_hash: v::receipt::BLOCK_HASH,
        server_id: v::receipt::SERVER_ID,
        time_ms: v::receipt::TIME_MS,
        log: Some(LogPosition {
            index: v::receipt::LOG_INDEX,
            tree_size: v::receipt::TREE_SIZE,
        }),
    };
    check_eq!(r.to_signed_bytes(&RustCrypto, &server), Ok(v::receipt::BYTES));
    let refused = ReceiptRepr {
        status: ReceiptStatus::Refused,
        log: None,
        ..r
    };
    check_eq!(refused.to_signed_bytes(&RustCrypto, &server), Ok(v::receipt::REFUSED_BYTES));
    let pk = server.verifying_key();
    check_eq!(ReceiptRepr::parse_verified(&RustCrypto, &v::receipt::BYTES, &pk), Ok(r));
    let mut bad = v::receipt::BYTES;
    bad[20] ^= 1;
    let verdict = ReceiptRepr::parse_verified(&RustCrypto, &bad, &pk);
    check!(verdict.is_err(), "altered receipt verifies");
    Ok(())
}

fn serial_frame_matches_and_decodes() -> Outcome {
    check_eq!(v::serial::KIND, SerialKind::AirRx as u8);
    let m = SerialRepr {
        kind: SerialKind::AirRx,
        mac: v::serial::MAC,
        rssi: v::serial::RSSI,
        data: &v::serial::DATA,
    };
    let mut enc = [0u8; MAX_ENCODED];
    let n = m.emit(&mut enc);
    check_eq!(n, Ok(v::serial::ENCODED.len()));
    check_eq!(&enc[..v::serial::ENCODED.len()], &v::serial::ENCODED[..]);

    let mut dec = SerialDecoder::new();
    let mut decoded = 0;
    for (i, &b) in v::serial::ENCODED.iter().enumerate() {
        if let Some(r) = dec.push(b) {
            check_eq!(i, v::serial::ENCODED.len() - 1, "message ends at the zero byte");
            check_eq!(r, Ok(m));
            decoded += 1;
        }
    }
    check_eq!(decoded, 1);
    // A corrupted byte is caught by COBS or the CRC, never decoded as valid.
    let mut bad = v::serial::ENCODED;
    bad[9] ^= 0x10;
    let mut dec = SerialDecoder::new();
    for &b in &bad {
        if let Some(r) = dec.push(b) {
            check!(r.is_err(), "corrupted serial frame decodes: {r:?}");
        }
    }
    Ok(())
}

/// Protocol §9.2 as the core applies it: `strict_public_key`, then the
/// provider's (strict) `ed25519_verify`; only the genuine signature passes.
fn strict_ed25519_gives_every_signature_its_verdict() -> Outcome {
    check_eq!(v::signature_negative::CASES.len(), 9, "the file's nine cases");
    for c in v::signature_negative::CASES {
        let ok = gridpow_proto::crypto::strict_public_key(&c.public_key)
            .ok()
            .is_some_and(|k| RustCrypto.ed25519_verify(&k, c.message, &c.signature));
        check_eq!(ok, c.verdict == "accept", "{}", c.case);
    }
    Ok(())
}

/// log.json's checkpoints open under the log's key, its negative notes do
/// not, and the relay's watch adopts the newer checkpoint on
/// log_proof.json's consistency proof (and alarms on an altered one).
fn log_watch_opens_checkpoints_and_adopts_a_consistent_one() -> Outcome {
    use gridpow_proto::checkpoint::{NoteKey, TreeHead};
    use gridpow_proto::logwatch::{LogAlarm, LogWatch};
    let key = check_ok!(NoteKey::from_vkey(&RustCrypto, v::log::VKEY));
    let old = TreeHead { size: v::log::OLD_SIZE, root: v::log::OLD_ROOT };
    let new = TreeHead { size: v::log::NEW_SIZE, root: v::log::NEW_ROOT };
    for (note, head) in [
        (v::log::OLD_NOTE, old),
        (v::log::OLD_COSIGNED_NOTE, old),
        (v::log::NEW_NOTE, new),
        (v::log::NEW_COSIGNED_NOTE, new),
    ] {
        check_eq!(key.open_checkpoint(&RustCrypto, note.as_bytes()), Ok(head));
    }
    for note in v::log::NEGATIVE_NOTES {
        check!(key.open_checkpoint(&RustCrypto, note.as_bytes()).is_err(), "accepted {note:?}");
    }
    let watch = |proof: &[u8]| -> Result<LogWatch<4>, fmt::Error> {
        let mut w = LogWatch::<4>::new(key.clone(), v::log::PROOF_RELAY_ID, None);
        w.handle_checkpoint(&RustCrypto, v::log::OLD_COSIGNED_NOTE.as_bytes()).map_err(|_| fmt::Error)?;
        w.handle_checkpoint(&RustCrypto, v::log::NEW_NOTE.as_bytes()).map_err(|_| fmt::Error)?;
        let req = w.poll_request(gridpow_proto::Instant::from_millis(0)).ok_or(fmt::Error)?;
        if req.to_bytes() != v::log::CONSISTENCY_REQUEST {
            return Err(fmt::Error);
        }
        w.handle_proof(&RustCrypto, proof).map_err(|_| fmt::Error)?;
        Ok(w)
    };
    let w = check_ok!(watch(&v::log::CONSISTENCY_PROOF));
    check_eq!(w.trusted(), Some(new));
    check_eq!(w.stats().alarms, 0);
    let mut altered = v::log::CONSISTENCY_PROOF;
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let w = check_ok!(watch(&altered));
    check_eq!(w.trusted(), Some(old));
    check_eq!(w.last_alarm(), Some(LogAlarm::Inconsistent { old: old.size, new: new.size }));
    Ok(())
}
