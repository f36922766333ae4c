//! The ESP32's [`CryptoProvider`], built on two hardware primitives: the
//! AES-128 block function and SHA-256 (with a saved state to resume from),
//! which the ESP32-C3 and C6 both accelerate.
//!
//! esp-hal exposes the AES peripheral as "encrypt one 16-byte block with this
//! key" and the SHA peripheral as an incremental digest that can save and
//! restore its state, but neither offers AES-CCM or HMAC. This module runs
//! the protocol core's CCM over the block function and builds HMAC on the
//! digest ([`ccm_seal`], [`ccm_open`], [`hmac_sha256`]) so the firmware only
//! implements [`BlockEncrypt`] and [`Sha256Engine`] with the peripherals. The
//! proof of work is the core's [`gridpow_proto::pow::PowSolver`] over the
//! engine's saved state. Ed25519 has no accelerator on these chips and runs
//! in software (ed25519-dalek). A shared `&Accelerated` is a provider too
//! (the core's blanket impl for references). The modes are checked here
//! against RustCrypto and the protocol's known-answer vectors.
//!
//! CCM parameters are the protocol's: 16-byte tag (M = 16), 13-byte nonce,
//! 2-byte length field (L = 2), so bodies are below 64 KiB (frames are ≤ 250 B).

use core::cell::RefCell;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use gridpow_proto::crypto::{ccm, CryptoProvider, NONCE_LEN, TAG_LEN};
use gridpow_proto::Hash;

/// The AES-128 block function (the ESP32 AES accelerator, or software in tests).
pub trait BlockEncrypt {
    /// Encrypts `block` in place with `key` (one AES-128 block, ECB).
    fn encrypt_block(&mut self, key: &[u8; 16], block: &mut [u8; 16]);
}

/// SHA-256 over a prefix and a list of parts, and resumable from the state
/// after a first 64-byte block (the ESP32 SHA accelerator, or software in
/// tests).
pub trait Sha256Engine {
    /// The engine's saved state after a message's first 64 bytes.
    type Midstate;
    /// SHA-256 of `prefix ‖ parts[0] ‖ parts[1] ‖ …`.
    fn sha256(&mut self, prefix: &[u8], parts: &[&[u8]]) -> [u8; 32];
    /// Absorbs `first` and saves the state.
    fn midstate(&mut self, first: &[u8; 64]) -> Self::Midstate;
    /// SHA-256 of `first ‖ rest`, restoring the state `midstate` saved.
    fn resume(&mut self, midstate: &mut Self::Midstate, rest: &[u8]) -> [u8; 32];
}

/// AES-128-CCM encryption in place (M = 16, L = 2) with the protocol core's
/// CCM ([`gridpow_proto::crypto::ccm`]) over this block function; returns the
/// tag, or `None` when the message or AAD is too long.
pub fn ccm_seal<A: BlockEncrypt>(
    aes: &mut A,
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    ccm::seal_with(
        &mut |b: &mut [u8; 16]| aes.encrypt_block(key, b),
        nonce,
        aad,
        in_out,
    )
}

/// AES-128-CCM decryption in place; `false` (and a zeroed buffer) when the tag
/// does not verify.
pub fn ccm_open<A: BlockEncrypt>(
    aes: &mut A,
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    ccm::open_with(
        &mut |b: &mut [u8; 16]| aes.encrypt_block(key, b),
        nonce,
        aad,
        in_out,
        tag,
    )
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_sha256<H: Sha256Engine>(sha: &mut H, key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k0 = [0u8; 64];
    if key.len() > 64 {
        k0[..32].copy_from_slice(&sha.sha256(key, &[]));
    } else {
        k0[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k0[i];
        opad[i] ^= k0[i];
    }
    let inner = sha.sha256(&ipad, parts);
    sha.sha256(&opad, &[&inner])
}

/// The protocol's crypto provider over an AES block function and a SHA-256
/// engine (on the ESP32: the AES and SHA accelerators).
///
/// The peripherals need `&mut` access while [`CryptoProvider`] takes `&self`,
/// so they sit in `RefCell`s; the provider is used from one task and never
/// re-entered. Should a borrow ever fail, the primitive fails closed (the
/// trait's rule): sealing yields an all-zero tag that cannot verify, opening
/// fails, a digest is all `0xff` (it meets no difficulty and matches no
/// root): an error, never a panic.
pub struct Accelerated<A, H> {
    aes: RefCell<A>,
    sha: RefCell<H>,
}

impl<A: BlockEncrypt, H: Sha256Engine> Accelerated<A, H> {
    /// A provider over `aes` and `sha`.
    pub fn new(aes: A, sha: H) -> Self {
        Accelerated {
            aes: RefCell::new(aes),
            sha: RefCell::new(sha),
        }
    }

    /// Gives the engines back.
    pub fn into_inner(self) -> (A, H) {
        (self.aes.into_inner(), self.sha.into_inner())
    }
}

/// What a failed SHA-256 borrow yields: no leading zero bits, no match.
const FAILED_DIGEST: Hash = [0xff; 32];

impl<A: BlockEncrypt, H: Sha256Engine> CryptoProvider for Accelerated<A, H> {
    /// The raw key: the AES peripheral takes the key with every block.
    type AeadKey = [u8; 16];
    /// The engine's saved state; `None` if the engine was busy.
    type Sha256Midstate = Option<H::Midstate>;

    fn aead_key(&self, key: &[u8; 16]) -> [u8; 16] {
        *key
    }

    fn aead_seal(
        &self,
        key: &[u8; 16],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let Ok(mut aes) = self.aes.try_borrow_mut() else {
            return [0; TAG_LEN];
        };
        ccm_seal(&mut *aes, key, nonce, aad, in_out).unwrap_or([0; TAG_LEN])
    }

    fn aead_open(
        &self,
        key: &[u8; 16],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let Ok(mut aes) = self.aes.try_borrow_mut() else {
            return false;
        };
        ccm_open(&mut *aes, key, nonce, aad, in_out, tag)
    }

    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let Ok(mut sha) = self.sha.try_borrow_mut() else {
            return [0; 32];
        };
        hmac_sha256(&mut *sha, key, parts)
    }

    fn sha256(&self, parts: &[&[u8]]) -> Hash {
        let Ok(mut sha) = self.sha.try_borrow_mut() else {
            return FAILED_DIGEST;
        };
        sha.sha256(&[], parts)
    }

    fn sha256_midstate(&self, first: &[u8; 64]) -> Option<H::Midstate> {
        Some(self.sha.try_borrow_mut().ok()?.midstate(first))
    }

    fn sha256_resume(&self, midstate: &mut Option<H::Midstate>, rest: &[u8]) -> Hash {
        match (midstate, self.sha.try_borrow_mut()) {
            (Some(m), Ok(mut sha)) => sha.resume(m, rest),
            _ => FAILED_DIGEST,
        }
    }

    fn ed25519_sign(&self, key: &SigningKey, msg: &[u8]) -> [u8; 64] {
        key.sign(msg).to_bytes()
    }

    fn ed25519_verify(&self, key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }
}

/// A SHA-256 engine in software (RustCrypto `sha2`), for targets or tests
/// without the accelerator.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoftSha256;

/// One compression with RustCrypto's `sha2`.
fn soft_compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::block_api::compress256(state, core::slice::from_ref(block));
}

impl Sha256Engine for SoftSha256 {
    type Midstate = [u32; 8];

    fn sha256(&mut self, prefix: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(prefix);
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn midstate(&mut self, first: &[u8; 64]) -> [u32; 8] {
        gridpow_proto::crypto::midstate_with(soft_compress, first)
    }

    fn resume(&mut self, midstate: &mut [u32; 8], rest: &[u8]) -> [u8; 32] {
        gridpow_proto::crypto::resume_with(soft_compress, midstate, rest)
    }
}
