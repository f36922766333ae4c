//! Strict Ed25519 (docs/protocol.md §9.2) pinned by negative vectors
//! (`test-vectors/signature_negative.json`): each case is a public key, a
//! signature and a message with the verdict a gridpow verifier must reach and
//! why. Several are accepted by common libraries (cofactorless or cofactored
//! verification without the small-order and canonicity checks); gridpow
//! refuses them. `GRIDPOW_REGEN_VECTORS=1` rewrites the file.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::wire::block::signing_message;
use serde_json::{json, Value};
use sha2::{Digest, Sha512};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors")
}

/// The group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
/// The identity point, canonical encoding (y = 1).
const IDENTITY: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};
/// The identity point encoded with y = 1 + p (not canonical).
const IDENTITY_NONCANONICAL: [u8; 32] = {
    let mut b = [0xffu8; 32];
    b[0] = 0xee;
    b[31] = 0x7f;
    b
};
/// y = 2: no x satisfies the curve equation, so this is no point.
const NOT_ON_CURVE: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 2;
    b
};

/// Description, public key, signature, message, verdict.
type Case = (&'static str, [u8; 32], [u8; 64], Vec<u8>, &'static str);

fn k(r: &[u8; 32], a: &[u8; 32], msg: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(a);
    h.update(msg);
    let d: [u8; 64] = h.finalize().into();
    Scalar::from_bytes_mod_order_wide(&d)
}

fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

/// gridpow's verdict: what the core's verifiers (blocks, receipts) do, on
/// the crypto provider.
fn strict(a: &[u8; 32], sig: &[u8; 64], msg: &[u8]) -> bool {
    VerifyingKey::from_bytes(a).is_ok_and(|k| RustCrypto.ed25519_verify(&k, msg, sig))
}

/// A permissive verifier (RFC 8032 cofactorless equation, no small-order or
/// canonical-R checks), as many libraries implement it.
fn permissive(a: &[u8; 32], sig: &[u8; 64], msg: &[u8]) -> bool {
    VerifyingKey::from_bytes(a)
        .and_then(|k| k.verify(msg, &Signature::from_bytes(sig)))
        .is_ok()
}

#[test]
fn strict_ed25519_refuses_every_negative_vector_that_permissive_libraries_may_accept() {
    let relay = SigningKey::from_bytes(&[0x5a; 32]);
    let a = relay.verifying_key().to_bytes();
    let msg = signing_message(&[0x11; 32]).to_vec();
    let genuine = relay.sign(&msg).to_bytes();

    let mut s_plus_l = genuine;
    let s: [u8; 32] = genuine[32..].try_into().unwrap();
    s_plus_l[32..].copy_from_slice(&add_le(&s, &L));

    // R the identity and S = k·a: [S]B = [k]A = R + [k]A holds.
    let a_scalar = relay.to_scalar();
    let mut small_r = [0u8; 64];
    small_r[..32].copy_from_slice(&IDENTITY);
    small_r[32..].copy_from_slice((k(&IDENTITY, &a, &msg) * a_scalar).as_bytes());

    let mut noncanonical_r = [0u8; 64];
    noncanonical_r[..32].copy_from_slice(&IDENTITY_NONCANONICAL);
    noncanonical_r[32..]
        .copy_from_slice((k(&IDENTITY_NONCANONICAL, &a, &msg) * a_scalar).as_bytes());

    let mut identity_sig = [0u8; 64];
    identity_sig[..32].copy_from_slice(&IDENTITY);

    let mut flipped = genuine;
    flipped[32] ^= 1;

    let cases: Vec<Case> = vec![
        ("genuine signature", a, genuine, msg.clone(), "accept"),
        ("S + L: the same signature with S not reduced", a, s_plus_l, msg.clone(), "reject: S not below L"),
        ("identity public key, R = identity, S = 0: verifies any message under the bare equation", IDENTITY, identity_sig, msg.clone(), "reject: A of small order"),
        ("R = identity (small order), S = k·a: the equation holds", a, small_r, msg.clone(), "reject: R of small order"),
        ("R = identity encoded with y = 1 + p, S = k·a", a, noncanonical_r, msg.clone(), "reject: R not canonical"),
        ("public key = identity encoded with y = 1 + p", IDENTITY_NONCANONICAL, identity_sig, msg.clone(), "reject: A not canonical"),
        ("public key y = 2: not a curve point", NOT_ON_CURVE, genuine, msg.clone(), "reject: A not a point"),
        ("lowest bit of S flipped", a, flipped, msg.clone(), "reject: equation"),
        ("another message", a, genuine, signing_message(&[0x12; 32]).to_vec(), "reject: equation"),
    ];
    for (what, key, sig, m, verdict) in &cases {
        assert_eq!(strict(key, sig, m), *verdict == "accept", "{what}");
    }
    // Keys are judged when registered, too.
    use gridpow_proto::crypto::strict_public_key;
    assert!(strict_public_key(&a).is_ok());
    for bad in [IDENTITY, IDENTITY_NONCANONICAL, NOT_ON_CURVE] {
        assert!(strict_public_key(&bad).is_err(), "{}", hex::encode(bad));
    }
    // What the strict rule adds: a permissive verifier takes these.
    assert!(permissive(&a, &small_r, &msg), "small-order R");
    assert!(
        (ED25519_BASEPOINT_POINT * Scalar::ZERO)
            .compress()
            .to_bytes()
            == IDENTITY,
        "the identity's canonical encoding"
    );

    let v = json!({
        "description": "strict Ed25519 (protocol §9.2): public key A, signature R || S, message; every case but the first must be refused. The message is the block signing message \"gridpow-block-v2\" || header hash.",
        "cases": cases.iter().map(|(what, key, sig, m, verdict)| json!({
            "description": what,
            "public_key": hex::encode(key),
            "signature": hex::encode(sig),
            "message": hex::encode(m),
            "verdict": verdict,
        })).collect::<Vec<Value>>(),
    });
    let path = dir().join("signature_negative.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("GRIDPOW_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with GRIDPOW_REGEN_VECTORS=1)", path.display()));
    assert_eq!(
        stored, text,
        "signature_negative.json differs from what the code produces"
    );
}

/// Why the server verifies each block's signature on its own instead of in
/// batches (docs/performance.md, "Why not batch verification"): the batch
/// equation (ed25519-dalek's `verify_batch`, cofactorless, with coefficients
/// drawn from a transcript of its inputs) accepts signatures that the strict
/// rule refuses, so a batch path would need per-signature pre-checks to keep
/// the verdicts, and the one that closes the gap below costs about as much as
/// the verification it would save.
#[test]
fn batch_verification_accepts_what_strict_refuses_so_the_server_does_not_batch() {
    use curve25519_dalek::constants::EIGHT_TORSION;
    use curve25519_dalek::edwards::EdwardsPoint;
    let relay = SigningKey::from_bytes(&[0x5a; 32]);
    let key = relay.verifying_key();
    let a = key.to_bytes();
    let a_scalar = relay.to_scalar();
    let batch = |sig: &[u8; 64], msg: &[u8]| {
        ed25519_dalek::verify_batch(&[msg], &[Signature::from_bytes(sig)], &[key]).is_ok()
    };

    // 1. R of small order with S = k·a: strict refuses (§9.2), the batch takes it.
    let msg = signing_message(&[0x11; 32]).to_vec();
    let mut small_r = [0u8; 64];
    small_r[..32].copy_from_slice(&IDENTITY);
    small_r[32..].copy_from_slice((k(&IDENTITY, &a, &msg) * a_scalar).as_bytes());
    assert!(!strict(&a, &small_r, &msg));
    assert!(
        batch(&small_r, &msg),
        "small-order R passes the batch equation"
    );

    // 2. R with a torsion component: R' = [r]B + T (T of order 8), S = r + k'·a.
    // [S]B − [k']A = R' − T ≠ R': strict refuses every such signature. The
    // batch's equation sees z·T, zero whenever 8 divides its coefficient z,
    // which the signer cannot choose but can grind for by varying the message.
    let r = Scalar::from_bytes_mod_order([0x77; 32]);
    let r_point = EdwardsPoint::mul_base(&r) + EIGHT_TORSION[1];
    assert!(!r_point.is_small_order(), "R' passes the small-order check");
    let r_bytes = r_point.compress().to_bytes();
    let mut accepted = None;
    for n in 0u32..512 {
        let msg = signing_message(&RustCrypto.sha256(&[&n.to_le_bytes()])).to_vec();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((r + k(&r_bytes, &a, &msg) * a_scalar).as_bytes());
        assert!(
            !strict(&a, &sig, &msg),
            "strict refuses a torsion component in R"
        );
        if batch(&sig, &msg) {
            accepted = Some(n);
            break;
        }
    }
    assert!(
        accepted.is_some(),
        "one message in a few tries makes the batch accept a signature strict refuses"
    );

    // 3. Where the two agree: canonicity of S, of R and of A, and the equation.
    let genuine = relay.sign(&msg).to_bytes();
    assert!(batch(&genuine, &msg));
    let mut s_plus_l = genuine;
    let s: [u8; 32] = genuine[32..].try_into().unwrap();
    s_plus_l[32..].copy_from_slice(&add_le(&s, &L));
    assert!(!batch(&s_plus_l, &msg), "S + L");
    let mut flipped = genuine;
    flipped[32] ^= 1;
    assert!(!batch(&flipped, &msg), "equation");
}
