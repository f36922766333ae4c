//! Cryptographic constructions (spec: `docs/protocol.md`, "Keys" and "Uplink frame").
//!
//! Each meter has two keys, both derived from the site secret with HKDF-SHA256
//! by whoever holds it (the operator's key tool and the grid server):
//! - its **end-to-end key** ([`E2eKey`], AES-128-CCM): seals the readings. Only
//!   the meter and the grid server hold it, so a relay can neither read,
//!   alter nor invent a reading.
//! - its **hop secret** ([`HopSecret`]): a frame MAC key for the hop tag over the
//!   whole frame and an ACK key. The relays that serve the meter hold it, so
//!   they filter, de-duplicate and acknowledge without opening readings.
//!
//! A meter is flashed with both ([`MeterSecret`], 48 bytes), a relay with hop
//! secrets only, and nobody but the operator and the server hold the site secret.
//! MACs are HMAC-SHA256 truncated to 16 bytes; uplink readings use AES-128-CCM
//! (16-byte tag, 13-byte nonce), implemented in [`ccm`] over any AES block function.
//!
//! Every primitive the protocol runs sits behind one [`CryptoProvider`]
//! (AES-CCM, HMAC, SHA-256 with the proof of work's midstate, Ed25519), so
//! firmware can use the ESP32's AES and SHA accelerators; [`RustCrypto`] is
//! the software provider. Key derivation ([`hkdf_extract`], [`hkdf_expand`])
//! is built on the provider's HMAC-SHA256. An accelerator that takes a raw
//! SHA-256 state can build the midstate from its compression function with
//! [`midstate_with`] and [`resume_with`].

use ed25519_dalek::{SigningKey, VerifyingKey};

pub mod ccm;

use crate::{Hash, Misuse};

/// Length of the AEAD nonce (AES-CCM with a 2-byte length field).
pub const NONCE_LEN: usize = 13;
/// Length of the end-to-end (AES-CCM) tag of an uplink frame.
pub const TAG_LEN: usize = 16;
/// Length of the hop tag of an uplink frame (truncated HMAC-SHA256).
pub const HOP_TAG_LEN: usize = 16;
/// Length of an ACK authentication tag (truncated HMAC-SHA256).
pub const ACK_TAG_LEN: usize = 16;
/// Length of a site secret.
pub const SITE_SECRET_LEN: usize = 32;
/// Length of a hop secret (frame MAC key ‖ ACK key).
pub const HOP_SECRET_LEN: usize = 32;
/// Length of an end-to-end key (AES-128).
pub const E2E_KEY_LEN: usize = 16;
/// Length of what a meter is flashed with: hop secret ‖ end-to-end key.
pub const METER_SECRET_LEN: usize = HOP_SECRET_LEN + E2E_KEY_LEN;

/// HKDF salt: fixed, so every implementation derives the same keys.
pub const HKDF_SALT: &[u8] = b"gridpow v2 key derivation";
/// Prefix of the HKDF info string for hop secrets (followed by key id and meter id).
pub const HKDF_INFO_HOP: &[u8; 14] = b"gridpow v2 hop";
/// Prefix of the HKDF info string for end-to-end keys (followed by key id and meter id).
pub const HKDF_INFO_E2E: &[u8; 14] = b"gridpow v2 e2e";
/// Longest HKDF-SHA256 output: 255 blocks of 32 bytes (RFC 5869 §2.3).
pub const HKDF_MAX_OKM_LEN: usize = 255 * 32;

/// The secret a site holds for one key id, from which every meter key derives.
/// Only the operator's key tool and the grid server hold it.
#[derive(Clone)]
pub struct SiteSecret(pub [u8; SITE_SECRET_LEN]);

/// A meter's hop secret: bytes 0..16 authenticate its uplink frames (hop tag),
/// bytes 16..32 the relay's ACKs. Held by the meter and the relays serving it.
#[derive(Clone, PartialEq, Eq)]
pub struct HopSecret(pub [u8; HOP_SECRET_LEN]);

/// A meter's end-to-end key (AES-128-CCM over its readings). Held by the meter
/// and the grid server only.
#[derive(Clone, PartialEq, Eq)]
pub struct E2eKey(pub [u8; E2E_KEY_LEN]);

/// What a meter is flashed with: its hop secret and its end-to-end key.
#[derive(Clone, PartialEq, Eq)]
pub struct MeterSecret {
    /// Shared with the relays that serve the meter.
    pub hop: HopSecret,
    /// Shared with the grid server only.
    pub e2e: E2eKey,
}

impl MeterSecret {
    /// The 48 provisioned bytes: hop secret ‖ end-to-end key.
    pub fn to_bytes(&self) -> [u8; METER_SECRET_LEN] {
        let mut b = [0u8; METER_SECRET_LEN];
        b[..HOP_SECRET_LEN].copy_from_slice(&self.hop.0);
        b[HOP_SECRET_LEN..].copy_from_slice(&self.e2e.0);
        b
    }

    /// Splits the 48 provisioned bytes.
    pub const fn from_bytes(b: &[u8; METER_SECRET_LEN]) -> Self {
        let mut hop = [0u8; HOP_SECRET_LEN];
        let mut e2e = [0u8; E2E_KEY_LEN];
        let mut i = 0;
        while i < METER_SECRET_LEN {
            if i < HOP_SECRET_LEN {
                hop[i] = b[i];
            } else {
                e2e[i - HOP_SECRET_LEN] = b[i];
            }
            i += 1;
        }
        MeterSecret {
            hop: HopSecret(hop),
            e2e: E2eKey(e2e),
        }
    }
}

macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl core::fmt::Debug for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($t), "(..)"))
            }
        }
    )*};
}
redacted_debug!(SiteSecret, HopSecret, E2eKey, MeterSecret);

/// HKDF-Extract (RFC 5869 §2.2) with SHA-256 on `provider`'s HMAC: the
/// pseudorandom key `HMAC-SHA256(salt, ikm)`. An absent salt is the empty
/// one (HMAC pads it to the same zero key as RFC 5869's 32 zero bytes).
pub fn hkdf_extract<C: CryptoProvider>(provider: &C, salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    provider.hmac_sha256(salt, &[ikm])
}

/// HKDF-Expand (RFC 5869 §2.3) with SHA-256 on `provider`'s HMAC: fills
/// `okm` with `T(1) ‖ T(2) ‖ …`, where `T(i) = HMAC-SHA256(prk, T(i-1) ‖ info
/// ‖ i)` and `T(0)` is empty. `okm` may hold at most [`HKDF_MAX_OKM_LEN`] bytes.
pub fn hkdf_expand<C: CryptoProvider>(
    provider: &C,
    prk: &[u8; 32],
    info: &[u8],
    okm: &mut [u8],
) -> Result<(), Misuse> {
    if okm.len() > HKDF_MAX_OKM_LEN {
        return Err(Misuse::InvalidArgument);
    }
    let mut t = [0u8; 32];
    let mut t_len = 0;
    for (counter, chunk) in (1..=u8::MAX).zip(okm.chunks_mut(32)) {
        t = provider.hmac_sha256(prk, &[&t[..t_len], info, &[counter]]);
        t_len = t.len();
        chunk.copy_from_slice(&t[..chunk.len()]);
    }
    Ok(())
}

fn derive<C: CryptoProvider, const L: usize>(
    provider: &C,
    site: &SiteSecret,
    prefix: &[u8; 14],
    key_id: u8,
    meter_id: u32,
) -> [u8; L] {
    // info = prefix ‖ key_id ‖ meter_id (u32 LE).
    let mut info = [0u8; 19];
    info[..14].copy_from_slice(prefix);
    info[14] = key_id;
    info[15..].copy_from_slice(&meter_id.to_le_bytes());
    let prk = hkdf_extract(provider, HKDF_SALT, &site.0);
    let mut okm = [0u8; L];
    // At most 32 bytes, far below HKDF's 255 * 32 limit, so expansion cannot fail.
    if hkdf_expand(provider, &prk, &info, &mut okm).is_err() {
        okm = [0; L];
    }
    okm
}

/// A meter's hop secret: `HKDF-SHA256(salt = HKDF_SALT, ikm = site secret,
/// info = "gridpow v2 hop" ‖ key_id ‖ meter_id (u32 LE), L = 32)`, on
/// `provider`'s HMAC-SHA256.
pub fn derive_hop_secret<C: CryptoProvider>(
    provider: &C,
    site: &SiteSecret,
    key_id: u8,
    meter_id: u32,
) -> HopSecret {
    HopSecret(derive(provider, site, HKDF_INFO_HOP, key_id, meter_id))
}

/// A meter's end-to-end key: `HKDF-SHA256(salt = HKDF_SALT, ikm = site secret,
/// info = "gridpow v2 e2e" ‖ key_id ‖ meter_id (u32 LE), L = 16)`, on
/// `provider`'s HMAC-SHA256.
pub fn derive_e2e_key<C: CryptoProvider>(
    provider: &C,
    site: &SiteSecret,
    key_id: u8,
    meter_id: u32,
) -> E2eKey {
    E2eKey(derive(provider, site, HKDF_INFO_E2E, key_id, meter_id))
}

/// Both keys of a meter (what it is flashed with).
pub fn derive_meter_secret<C: CryptoProvider>(
    provider: &C,
    site: &SiteSecret,
    key_id: u8,
    meter_id: u32,
) -> MeterSecret {
    MeterSecret {
        hop: derive_hop_secret(provider, site, key_id, meter_id),
        e2e: derive_e2e_key(provider, site, key_id, meter_id),
    }
}

impl HopSecret {
    /// The HMAC key of the hop tag on uplink frames.
    pub fn frame_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[..16]);
        k
    }

    /// The HMAC key of ACKs.
    pub fn ack_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[16..]);
        k
    }
}

/// Every cryptographic primitive the protocol runs, so hardware can replace
/// software (after rustls' `CryptoProvider`): AES-128-CCM, HMAC-SHA256,
/// SHA-256 with the midstate the proof of work resumes from, and Ed25519.
///
/// The core never calls a primitive any other way: key derivation (HKDF
/// on [`Self::hmac_sha256`]), sealing and opening frames, ACK tags, Merkle
/// leaves, nodes and roots ([`crate::merkle`]), header hashes
/// ([`crate::wire::block::BlockHeaderRepr::hash`]), the PoW search
/// ([`crate::pow::PowSolver`]), sealing ([`crate::block::BlockBuilder::seal`],
/// the lifecycle), verifying blocks and signing and verifying commit
/// receipts all take a provider. Two exist: [`RustCrypto`] on the host and
/// the ESP32 accelerators in `gridpow-firmware-logic`.
///
/// Implementations must be deterministic: the same inputs give the same
/// outputs. A primitive that cannot run (a busy peripheral) must fail closed:
/// a tag or signature that does not verify, a digest of all `0xff` bytes
/// (which meets no difficulty).
pub trait CryptoProvider {
    /// A prepared AES-128-CCM key (for example an expanded key schedule).
    type AeadKey;
    /// The SHA-256 state after a message's first 64-byte block, from which
    /// [`Self::sha256_resume`] finishes many messages sharing that block.
    type Sha256Midstate;

    /// Prepares an AES-128 key for sealing and opening.
    fn aead_key(&self, key: &[u8; 16]) -> Self::AeadKey;

    /// Encrypts `in_out` in place with AES-128-CCM (M = 16, L = 2) and returns the tag.
    fn aead_seal(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN];

    /// Verifies `tag` and decrypts `in_out` in place; returns `false` (and leaves
    /// `in_out` unspecified) when the tag does not verify.
    fn aead_open(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool;

    /// HMAC-SHA256 over the concatenation of `parts`.
    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> [u8; 32];

    /// SHA-256 of the concatenation of `parts`.
    fn sha256(&self, parts: &[&[u8]]) -> Hash;

    /// Compresses `first`, the first 64 bytes of a message, into a midstate.
    fn sha256_midstate(&self, first: &[u8; 64]) -> Self::Sha256Midstate;

    /// SHA-256 of `first ‖ rest`, resumed from `first`'s midstate (made by
    /// this provider). Mutable because an accelerator restores its state from
    /// it; the midstate still serves later calls.
    fn sha256_resume(&self, midstate: &mut Self::Sha256Midstate, rest: &[u8]) -> Hash;

    /// [`Self::sha256_resume`] of a rest of `len` bytes (at most 55, so it
    /// and SHA-256's padding fit one block) handed over already padded:
    /// `padded[..len]` is the rest, the remainder its padding for a
    /// `64 + len`-byte message. The PoW search calls this once per try. The
    /// default resumes from `padded[..len]`; a provider with a raw compression
    /// function compresses `padded` as it is.
    fn sha256_resume_padded(
        &self,
        midstate: &mut Self::Sha256Midstate,
        padded: &[u8; 64],
        len: usize,
    ) -> Hash {
        self.sha256_resume(midstate, &padded[..len.min(55)])
    }

    /// Ed25519 signature of `msg`.
    fn ed25519_sign(&self, key: &SigningKey, msg: &[u8]) -> [u8; 64];

    /// Strict Ed25519 verification (§9.2: canonical `R` and `s`, no
    /// small-order `R`), as ed25519-dalek's `verify_strict`.
    fn ed25519_verify(&self, key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool;
}

/// A shared reference to a provider is a provider, so one provider (for
/// example one owning hardware peripherals) can serve several state machines.
impl<P: CryptoProvider + ?Sized> CryptoProvider for &P {
    type AeadKey = P::AeadKey;
    type Sha256Midstate = P::Sha256Midstate;

    fn aead_key(&self, key: &[u8; 16]) -> Self::AeadKey {
        (**self).aead_key(key)
    }

    fn aead_seal(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        (**self).aead_seal(key, nonce, aad, in_out)
    }

    fn aead_open(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        (**self).aead_open(key, nonce, aad, in_out, tag)
    }

    fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        (**self).hmac_sha256(key, parts)
    }

    fn sha256(&self, parts: &[&[u8]]) -> Hash {
        (**self).sha256(parts)
    }

    fn sha256_midstate(&self, first: &[u8; 64]) -> Self::Sha256Midstate {
        (**self).sha256_midstate(first)
    }

    fn sha256_resume(&self, midstate: &mut Self::Sha256Midstate, rest: &[u8]) -> Hash {
        (**self).sha256_resume(midstate, rest)
    }

    fn sha256_resume_padded(
        &self,
        midstate: &mut Self::Sha256Midstate,
        padded: &[u8; 64],
        len: usize,
    ) -> Hash {
        (**self).sha256_resume_padded(midstate, padded, len)
    }

    fn ed25519_sign(&self, key: &SigningKey, msg: &[u8]) -> [u8; 64] {
        (**self).ed25519_sign(key, msg)
    }

    fn ed25519_verify(&self, key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
        (**self).ed25519_verify(key, msg, sig)
    }
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3), where a midstate starts.
pub const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 with the compression function `compress` (software, SHA-NI, or an
/// accelerator that takes a raw state): the midstate of `first`.
pub fn midstate_with(compress: impl Fn(&mut [u32; 8], &[u8; 64]), first: &[u8; 64]) -> [u32; 8] {
    let mut state = SHA256_IV;
    compress(&mut state, first);
    state
}

/// SHA-256 of `first ‖ rest` from `first`'s midstate with the compression
/// function `compress`: the rest's whole blocks, then its padded tail.
pub fn resume_with(
    compress: impl Fn(&mut [u32; 8], &[u8; 64]),
    midstate: &[u32; 8],
    rest: &[u8],
) -> Hash {
    let mut state = *midstate;
    let mut blocks = rest.chunks_exact(64);
    for b in &mut blocks {
        if let Ok(block) = <&[u8; 64]>::try_from(b) {
            compress(&mut state, block);
        }
    }
    // The padded tail, built in one block: this runs once per PoW try, so
    // it copies no more than it must.
    let tail = blocks.remainder();
    let bits = (64 + rest.len() as u64) * 8;
    let mut block = [0u8; 64];
    block[..tail.len()].copy_from_slice(tail);
    block[tail.len()] = 0x80;
    if tail.len() >= 56 {
        compress(&mut state, &block);
        block = [0u8; 64];
    }
    block[56..].copy_from_slice(&bits.to_be_bytes());
    compress(&mut state, &block);
    let mut out = [0u8; 32];
    for (c, w) in out.chunks_exact_mut(4).zip(state) {
        c.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// The hop keys of a meter: all a relay holds for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HopKeys {
    /// Key id these keys belong to.
    pub key_id: u8,
    /// HMAC key of the hop tag on uplink frames.
    pub frame: [u8; 16],
    /// HMAC key of ACKs.
    pub ack: [u8; 16],
}

impl HopKeys {
    /// The hop keys of `secret` under `key_id`.
    pub fn new(key_id: u8, secret: &HopSecret) -> Self {
        HopKeys {
            key_id,
            frame: secret.frame_key(),
            ack: secret.ack_key(),
        }
    }
}

impl core::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HopKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// All keys of a meter, prepared for a provider: what the meter itself and
/// the grid server hold. Relays hold [`HopKeys`] only.
pub struct MeterKeys<C: CryptoProvider> {
    /// The hop keys (hop tag and ACK).
    pub hop: HopKeys,
    /// Prepared end-to-end AEAD key.
    pub e2e: C::AeadKey,
}

impl<C: CryptoProvider> MeterKeys<C> {
    /// Prepares the keys of `secret` with `provider`.
    pub fn new(provider: &C, key_id: u8, secret: &MeterSecret) -> Self {
        MeterKeys {
            hop: HopKeys::new(key_id, &secret.hop),
            e2e: provider.aead_key(&secret.e2e.0),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> u8 {
        self.hop.key_id
    }
}

impl<C: CryptoProvider> Clone for MeterKeys<C>
where
    C::AeadKey: Clone,
{
    fn clone(&self) -> Self {
        MeterKeys {
            hop: self.hop,
            e2e: self.e2e.clone(),
        }
    }
}

/// Compares two byte strings in constant time.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(feature = "rustcrypto")]
pub use soft::RustCrypto;

#[cfg(feature = "rustcrypto")]
mod soft {
    use super::{ccm, CryptoProvider, Hash, NONCE_LEN, TAG_LEN};
    use aes::cipher::{
        array::Array, consts::U16, BlockCipherEncBackend, BlockCipherEncClosure,
        BlockCipherEncrypt, BlockSizeUser, KeyInit,
    };
    use aes::Aes128;
    use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
    use hmac::{Hmac, Mac};
    use sha2::block_api::compress256;
    use sha2::{Digest, Sha256};

    /// The software provider: RustCrypto's `aes` (AES-NI when the CPU has it)
    /// under this crate's CCM, `hmac`, `sha2` (whose compression function uses
    /// SHA-NI when the CPU has it) and `ed25519-dalek`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RustCrypto;

    /// Runs a whole CCM operation inside one call of the AES backend.
    struct CcmJob<'a> {
        nonce: &'a [u8; NONCE_LEN],
        aad: &'a [u8],
        buf: &'a mut [u8],
        tag: Option<&'a [u8; TAG_LEN]>,
        out: &'a mut Option<[u8; TAG_LEN]>,
    }

    impl BlockSizeUser for CcmJob<'_> {
        type BlockSize = U16;
    }

    impl BlockCipherEncClosure for CcmJob<'_> {
        fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
            let mut enc = |b: &mut [u8; 16]| {
                let block: &mut Array<u8, U16> = b.into();
                backend.encrypt_block(block.into());
            };
            *self.out = match self.tag {
                None => ccm::seal_with(&mut enc, self.nonce, self.aad, self.buf),
                Some(tag) => {
                    ccm::open_with(&mut enc, self.nonce, self.aad, self.buf, tag).then_some(*tag)
                }
            };
        }
    }

    /// One SHA-256 compression through `sha2` (SHA-NI when the CPU has it).
    fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
        compress256(state, core::slice::from_ref(block));
    }

    impl CryptoProvider for RustCrypto {
        type AeadKey = Aes128;
        type Sha256Midstate = [u32; 8];

        fn aead_key(&self, key: &[u8; 16]) -> Aes128 {
            Aes128::new(key.into())
        }

        fn aead_seal(
            &self,
            key: &Aes128,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
        ) -> [u8; TAG_LEN] {
            let mut out = None;
            key.encrypt_with_backend(CcmJob {
                nonce,
                aad,
                buf: in_out,
                tag: None,
                out: &mut out,
            });
            // Only messages over 64 KiB fail; frames are at most 250 bytes. An all-zero
            // tag never verifies against a real seal.
            out.unwrap_or([0; TAG_LEN])
        }

        fn aead_open(
            &self,
            key: &Aes128,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            in_out: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> bool {
            let mut out = None;
            key.encrypt_with_backend(CcmJob {
                nonce,
                aad,
                buf: in_out,
                tag: Some(tag),
                out: &mut out,
            });
            out.is_some()
        }

        fn hmac_sha256(&self, key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
            // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
            let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
                return [0; 32];
            };
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().into()
        }

        fn sha256(&self, parts: &[&[u8]]) -> Hash {
            let mut h = Sha256::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().into()
        }

        fn sha256_midstate(&self, first: &[u8; 64]) -> [u32; 8] {
            super::midstate_with(compress, first)
        }

        fn sha256_resume(&self, midstate: &mut [u32; 8], rest: &[u8]) -> Hash {
            super::resume_with(compress, midstate, rest)
        }

        fn sha256_resume_padded(
            &self,
            midstate: &mut [u32; 8],
            padded: &[u8; 64],
            _len: usize,
        ) -> Hash {
            let mut state = *midstate;
            compress(&mut state, padded);
            let mut out = [0u8; 32];
            for (c, w) in out.chunks_exact_mut(4).zip(state) {
                c.copy_from_slice(&w.to_be_bytes());
            }
            out
        }

        fn ed25519_sign(&self, key: &SigningKey, msg: &[u8]) -> [u8; 64] {
            key.sign(msg).to_bytes()
        }

        fn ed25519_verify(&self, key: &VerifyingKey, msg: &[u8], sig: &[u8; 64]) -> bool {
            key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
        }
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;

    #[test]
    fn different_meters_and_key_ids_get_different_secrets() {
        let site = SiteSecret([7; 32]);
        let a = derive_meter_secret(&RustCrypto, &site, 1, 1);
        let b = derive_meter_secret(&RustCrypto, &site, 1, 2);
        let c = derive_meter_secret(&RustCrypto, &site, 2, 1);
        assert!(a != b);
        assert!(a != c);
        assert!(a == derive_meter_secret(&RustCrypto, &site, 1, 1));
    }

    #[test]
    fn hop_secret_reveals_nothing_of_the_end_to_end_key() {
        // Independent HKDF outputs: the end-to-end key is not a part of the hop secret.
        let s = derive_meter_secret(&RustCrypto, &SiteSecret([7; 32]), 1, 1);
        assert!(!s.hop.0.windows(E2E_KEY_LEN).any(|w| w == s.e2e.0));
        assert!(MeterSecret::from_bytes(&s.to_bytes()) == s);
    }

    /// An RFC 5869 test case, in hex.
    struct Rfc5869 {
        ikm: &'static str,
        salt: &'static str,
        info: &'static str,
        prk: &'static str,
        okm: &'static str,
    }

    /// RFC 5869 appendix A, test cases 1 to 3 (HKDF-SHA256).
    const RFC_5869: [Rfc5869; 3] = [
        Rfc5869 {
            ikm: "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            salt: "000102030405060708090a0b0c",
            info: "f0f1f2f3f4f5f6f7f8f9",
            prk: "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
            okm: "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                34007208d5b887185865",
        },
        Rfc5869 {
            ikm: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f\
                404142434445464748494a4b4c4d4e4f",
            salt: "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f\
                808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f\
                a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            info: "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf\
                d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef\
                f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            prk: "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
            okm: "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c\
                59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71\
                cc30c58179ec3e87c14c01d5c1f3434f1d87",
        },
        Rfc5869 {
            ikm: "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            salt: "",
            info: "",
            prk: "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
            okm: "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d\
                9d201395faa4b61a96c8",
        },
    ];

    #[test]
    fn hkdf_on_the_provider_matches_rfc_5869() {
        for (i, c) in RFC_5869.iter().enumerate() {
            let (ikm, salt, info) = (
                hex::decode(c.ikm).unwrap(),
                hex::decode(c.salt).unwrap(),
                hex::decode(c.info).unwrap(),
            );
            let prk = hkdf_extract(&RustCrypto, &salt, &ikm);
            assert_eq!(hex::encode(prk), c.prk, "case {}", i + 1);
            let mut okm = [0u8; 82];
            let okm = &mut okm[..c.okm.len() / 2];
            assert_eq!(hkdf_expand(&RustCrypto, &prk, &info, okm), Ok(()));
            assert_eq!(hex::encode(okm), c.okm, "case {}", i + 1);
        }
    }

    #[test]
    fn hkdf_on_the_provider_agrees_with_the_hkdf_crate() {
        let bytes: [u8; 300] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        for (salt, ikm, info, len) in [
            (0, 32, 19, 32),
            (25, 32, 19, 16),
            (64, 22, 0, 1),
            (65, 80, 80, 64),
            (100, 0, 33, 65),
            (0, 0, 0, 200),
        ] {
            let (salt, ikm, info) = (
                &bytes[..salt],
                &bytes[100..100 + ikm],
                &bytes[200..200 + info],
            );
            let mut want = [0u8; 200];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm)
                .expand(info, &mut want[..len])
                .unwrap();
            let mut got = [0u8; 200];
            let prk = hkdf_extract(&RustCrypto, salt, ikm);
            hkdf_expand(&RustCrypto, &prk, info, &mut got[..len]).unwrap();
            assert_eq!(got[..len], want[..len], "salt {salt:?} len {len}");
        }
    }

    #[test]
    fn hkdf_refuses_more_than_255_blocks() {
        let mut okm = [0u8; HKDF_MAX_OKM_LEN + 1];
        assert_eq!(
            hkdf_expand(&RustCrypto, &[1; 32], b"", &mut okm),
            Err(Misuse::InvalidArgument)
        );
        assert_eq!(
            hkdf_expand(&RustCrypto, &[1; 32], b"", &mut okm[..HKDF_MAX_OKM_LEN]),
            Ok(())
        );
    }

    #[test]
    fn sealed_bytes_open_and_a_flipped_bit_does_not() {
        let p = RustCrypto;
        let key = p.aead_key(&[1; 16]);
        let nonce = [2; NONCE_LEN];
        let mut buf = *b"twenty-four bytes of msg";
        let tag = p.aead_seal(&key, &nonce, b"aad", &mut buf);
        assert_ne!(&buf, b"twenty-four bytes of msg");
        let mut good = buf;
        assert!(p.aead_open(&key, &nonce, b"aad", &mut good, &tag));
        assert_eq!(&good, b"twenty-four bytes of msg");
        let mut bad = buf;
        bad[3] ^= 1;
        assert!(!p.aead_open(&key, &nonce, b"aad", &mut bad, &tag));
        let mut wrong_aad = buf;
        assert!(!p.aead_open(&key, &nonce, b"aae", &mut wrong_aad, &tag));
        assert_eq!(wrong_aad, [0; 24], "failed opens leave no plaintext behind");
    }

    #[test]
    fn a_resumed_midstate_hashes_like_the_whole_message() {
        let msg: [u8; 200] = core::array::from_fn(|i| i as u8);
        let mut first = [0u8; 64];
        first.copy_from_slice(&msg[..64]);
        let mut mid = RustCrypto.sha256_midstate(&first);
        for len in 64..=msg.len() {
            let whole: Hash = <sha2::Sha256 as sha2::Digest>::digest(&msg[..len]).into();
            assert_eq!(RustCrypto.sha256_resume(&mut mid, &msg[64..len]), whole);
            assert_eq!(RustCrypto.sha256(&[&msg[..len]]), whole);
        }
    }

    #[test]
    fn signatures_verify_strictly_and_a_flipped_bit_does_not() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let sig = RustCrypto.ed25519_sign(&key, b"block");
        assert!(RustCrypto.ed25519_verify(&key.verifying_key(), b"block", &sig));
        assert!(!RustCrypto.ed25519_verify(&key.verifying_key(), b"blocc", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!RustCrypto.ed25519_verify(&key.verifying_key(), b"block", &bad));
    }

    // Lengths 0..=250 and random inputs are cross-checked against the `ccm` crate
    // in tests/ccm_crosscheck.rs.
    #[test]
    fn empty_message_and_empty_aad_still_authenticate() {
        let p = RustCrypto;
        let key = p.aead_key(&[7; 16]);
        let tag = p.aead_seal(&key, &[1; NONCE_LEN], b"", &mut []);
        assert!(p.aead_open(&key, &[1; NONCE_LEN], b"", &mut [], &tag));
        assert!(!p.aead_open(&key, &[2; NONCE_LEN], b"", &mut [], &tag));
    }
}

/// An Ed25519 public key (a relay's or the grid server's) as §9.2 requires
/// it: a canonical encoding of a curve point that is not of small order. A
/// key failing this would let forged signatures verify, so it is refused
/// where it is registered or loaded, not only when a signature is checked.
pub fn strict_public_key(bytes: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, crate::Rejected> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| crate::Rejected::WeakPublicKey)?;
    if key.is_weak() || key.to_edwards().compress().to_bytes() != *bytes {
        return Err(crate::Rejected::WeakPublicKey);
    }
    Ok(key)
}
