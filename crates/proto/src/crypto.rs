//! Cryptographic constructions (spec: `docs/protocol.md`, "Keys" and "Sealing").
//!
//! - Per-meter secrets come from the site secret with HKDF-SHA256
//!   ([`derive_meter_secret`]); a meter is flashed with its 32-byte
//!   [`MeterSecret`] only, never the site secret.
//! - Uplink bodies are sealed with AES-128-CCM (16-byte tag, 13-byte nonce),
//!   implemented in [`ccm`] over any AES block function.
//! - ACKs carry an HMAC-SHA256 tag truncated to 16 bytes under a separate key,
//!   so re-sending an ACK with a fresh relay time never reuses an AEAD nonce.
//!
//! The primitives sit behind [`CryptoProvider`] so firmware can use the ESP32's
//! AES and SHA accelerators; [`RustCrypto`] is the software provider.

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

pub mod ccm;

use crate::Hash;

/// Length of the AEAD nonce (AES-CCM with a 2-byte length field).
pub const NONCE_LEN: usize = 13;
/// Length of an uplink authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of an ACK authentication tag (truncated HMAC-SHA256).
pub const ACK_TAG_LEN: usize = 16;
/// Length of a site secret.
pub const SITE_SECRET_LEN: usize = 32;
/// Length of a per-meter secret (AEAD key ‖ ACK key).
pub const METER_SECRET_LEN: usize = 32;

/// HKDF salt: fixed, so every implementation derives the same keys.
pub const HKDF_SALT: &[u8] = b"gridpow v1 key derivation";
/// Prefix of the HKDF info string for meter secrets (followed by key id and meter id).
pub const HKDF_INFO_METER: &[u8] = b"gridpow v1 meter";

/// The secret a site holds for one key id, from which every meter key derives.
#[derive(Clone)]
pub struct SiteSecret(pub [u8; SITE_SECRET_LEN]);

/// The 32 bytes a meter is provisioned with: bytes 0..16 are its AES-128-CCM
/// uplink key, bytes 16..32 its ACK authentication key.
#[derive(Clone, PartialEq, Eq)]
pub struct MeterSecret(pub [u8; METER_SECRET_LEN]);

impl core::fmt::Debug for SiteSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SiteSecret(..)")
    }
}
impl core::fmt::Debug for MeterSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MeterSecret(..)")
    }
}

/// Derives a meter's secret: `HKDF-SHA256(salt = HKDF_SALT, ikm = site secret,
/// info = "gridpow v1 meter" ‖ key_id ‖ meter_id (u32 little-endian), L = 32)`.
pub fn derive_meter_secret(site: &SiteSecret, key_id: u8, meter_id: u32) -> MeterSecret {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &site.0);
    let id = meter_id.to_le_bytes();
    let info: [&[u8]; 3] = [HKDF_INFO_METER, &[key_id], &id];
    let mut okm = [0u8; METER_SECRET_LEN];
    // 32 bytes is far below HKDF's 255 * 32 limit, so expansion cannot fail.
    if hk.expand_multi_info(&info, &mut okm).is_err() {
        okm = [0; METER_SECRET_LEN];
    }
    MeterSecret(okm)
}

impl MeterSecret {
    /// The AES-128-CCM key for uplink frames.
    pub fn uplink_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[..16]);
        k
    }

    /// The HMAC key for ACKs.
    pub fn ack_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[16..]);
        k
    }
}

/// The cryptographic primitives the protocol needs, so hardware can replace software.
///
/// Implementations must be deterministic: the same inputs give the same outputs.
pub trait CryptoProvider {
    /// A prepared AES-128-CCM key (for example an expanded key schedule).
    type AeadKey;

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
}

/// A shared reference to a provider is a provider, so one provider (for
/// example one owning hardware peripherals) can serve several state machines.
impl<P: CryptoProvider + ?Sized> CryptoProvider for &P {
    type AeadKey = P::AeadKey;

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
}

/// A meter's keys, prepared for a provider.
pub struct MeterKeys<C: CryptoProvider> {
    /// Key id these keys belong to.
    pub key_id: u8,
    /// Prepared uplink AEAD key.
    pub aead: C::AeadKey,
    /// ACK HMAC key.
    pub ack: [u8; 16],
}

impl<C: CryptoProvider> MeterKeys<C> {
    /// Prepares the keys of `secret` with `provider`.
    pub fn new(provider: &C, key_id: u8, secret: &MeterSecret) -> Self {
        MeterKeys {
            key_id,
            aead: provider.aead_key(&secret.uplink_key()),
            ack: secret.ack_key(),
        }
    }
}

impl<C: CryptoProvider> Clone for MeterKeys<C>
where
    C::AeadKey: Clone,
{
    fn clone(&self) -> Self {
        MeterKeys {
            key_id: self.key_id,
            aead: self.aead.clone(),
            ack: self.ack,
        }
    }
}

/// Compares two byte strings in constant time.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(feature = "rustcrypto")]
pub use soft::RustCrypto;

#[cfg(feature = "rustcrypto")]
mod soft {
    use super::{ccm, CryptoProvider, NONCE_LEN, TAG_LEN};
    use aes::cipher::{
        array::Array, consts::U16, BlockCipherEncBackend, BlockCipherEncClosure,
        BlockCipherEncrypt, BlockSizeUser, KeyInit,
    };
    use aes::Aes128;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// The software provider: RustCrypto's `aes` (AES-NI when the CPU has it)
    /// under this crate's CCM, `hmac` and `sha2`.
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

    impl CryptoProvider for RustCrypto {
        type AeadKey = Aes128;

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
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;

    #[test]
    fn different_meters_and_key_ids_get_different_secrets() {
        let site = SiteSecret([7; 32]);
        let a = derive_meter_secret(&site, 1, 1);
        let b = derive_meter_secret(&site, 1, 2);
        let c = derive_meter_secret(&site, 2, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, derive_meter_secret(&site, 1, 1));
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
