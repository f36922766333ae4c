//! The commit receipt (grid server → relay): the server states, under its
//! Ed25519 signature, that a block is durably stored (or quarantined, or refused for good). Only
//! then does the relay drop the block from its outbox.
//!
//! ```text
//!  0 version =2 | 1 type 0x04 | 2 status | 3 reserved =0
//!  4..8     relay id     u32 LE
//!  8..16    height       u64 LE
//! 16..48    block hash   (SHA-256 of the block header)
//! 48..52    server id    u32 LE
//! 52..60    time         u64 LE, Unix ms of the commit
//! 60..124   signature: Ed25519 over "gridpow-rcpt-v2\0" ‖ bytes 0..60
//! ```

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{check_version_type, get_u32, get_u64, Field, TYPE_RECEIPT};
use crate::crypto::CryptoProvider;
use crate::{Hash, Malformed, Rejected};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const STATUS: usize = 2;
    pub const RESERVED: usize = 3;
    pub const RELAY_ID: Field = 4..8;
    pub const HEIGHT: Field = 8..16;
    pub const BLOCK_HASH: Field = 16..48;
    pub const SERVER_ID: Field = 48..52;
    pub const TIME_MS: Field = 52..60;
    pub const SIGNED: Field = 0..60;
    pub const SIGNATURE: Field = 60..124;
}

/// Length of a receipt.
pub const RECEIPT_LEN: usize = 124;
/// Domain-separation prefix of the signed message.
pub const RECEIPT_CONTEXT: &[u8; 16] = b"gridpow-rcpt-v2\0";

/// What the server did with the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReceiptStatus {
    /// Verified and committed to the database.
    Stored = 0,
    /// Already stored earlier (a redelivery); nothing changed.
    AlreadyStored = 1,
    /// Refused and committed to quarantine with its raw bytes; the refusal
    /// may be cured (a meter or relay registered late, a gap filled, or the
    /// block was a forged copy of a genuine header): the relay offers it again.
    Quarantined = 2,
    /// Refused for good: the reason lies in bytes the block's hash binds (its
    /// header, or leaves under a matching Merkle root) or in the stored chain
    /// (a fork), so offering it again can never succeed. The relay stops
    /// offering it, logs it as an error and archives it where it can (§10).
    Refused = 3,
}

impl ReceiptStatus {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(ReceiptStatus::Stored),
            1 => Some(ReceiptStatus::AlreadyStored),
            2 => Some(ReceiptStatus::Quarantined),
            3 => Some(ReceiptStatus::Refused),
            _ => None,
        }
    }
}

/// A receipt's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiptRepr {
    /// Outcome.
    pub status: ReceiptStatus,
    /// The relay whose block this is.
    pub relay_id: u32,
    /// The block's height.
    pub height: u64,
    /// The block's header hash.
    pub block_hash: Hash,
    /// The server that committed.
    pub server_id: u32,
    /// Commit time, Unix ms.
    pub time_ms: u64,
}

impl ReceiptRepr {
    fn signed_bytes(&self) -> [u8; 60] {
        let mut b = [0u8; 60];
        b[field::VERSION] = crate::PROTOCOL_VERSION;
        b[field::TYPE] = TYPE_RECEIPT;
        b[field::STATUS] = self.status as u8;
        b[field::RESERVED] = 0;
        b[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        b[field::HEIGHT].copy_from_slice(&self.height.to_le_bytes());
        b[field::BLOCK_HASH].copy_from_slice(&self.block_hash);
        b[field::SERVER_ID].copy_from_slice(&self.server_id.to_le_bytes());
        b[field::TIME_MS].copy_from_slice(&self.time_ms.to_le_bytes());
        b
    }

    /// Encodes the receipt and signs it with `key` on `provider`.
    pub fn to_signed_bytes<C: CryptoProvider>(
        &self,
        provider: &C,
        key: &SigningKey,
    ) -> [u8; RECEIPT_LEN] {
        let signed = self.signed_bytes();
        let sig = provider.ed25519_sign(key, &signing_message(&signed));
        let mut out = [0u8; RECEIPT_LEN];
        out[field::SIGNED].copy_from_slice(&signed);
        out[field::SIGNATURE].copy_from_slice(&sig);
        out
    }

    /// Parses a receipt and checks its signature against `server_key` on
    /// `provider` (strict Ed25519, §9.2).
    pub fn parse_verified<C: CryptoProvider>(
        provider: &C,
        bytes: &[u8],
        server_key: &VerifyingKey,
    ) -> Result<ReceiptRepr, crate::Error> {
        let repr = Self::parse_unverified(bytes)?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&bytes[field::SIGNATURE]);
        if !provider.ed25519_verify(server_key, &signing_message(&repr.signed_bytes()), &sig) {
            return Err(Rejected::BadSignature.into());
        }
        Ok(repr)
    }

    /// Parses a receipt without checking the signature (logging only).
    pub fn parse_unverified(b: &[u8]) -> Result<ReceiptRepr, Malformed> {
        check_version_type(b, TYPE_RECEIPT)?;
        if b.len() < RECEIPT_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > RECEIPT_LEN {
            return Err(Malformed::TooLong);
        }
        if b[field::RESERVED] != 0 {
            return Err(Malformed::NonZeroReserved);
        }
        let status = ReceiptStatus::from_u8(b[field::STATUS]).ok_or(Malformed::UnknownValue)?;
        let mut block_hash = [0u8; 32];
        block_hash.copy_from_slice(&b[field::BLOCK_HASH]);
        Ok(ReceiptRepr {
            status,
            relay_id: get_u32(b, field::RELAY_ID),
            height: get_u64(b, field::HEIGHT),
            block_hash,
            server_id: get_u32(b, field::SERVER_ID),
            time_ms: get_u64(b, field::TIME_MS),
        })
    }
}

fn signing_message(signed: &[u8; 60]) -> [u8; 76] {
    let mut m = [0u8; 76];
    m[..16].copy_from_slice(RECEIPT_CONTEXT);
    m[16..].copy_from_slice(signed);
    m
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;

    #[test]
    fn receipt_round_trips_and_verifies_only_under_the_server_key() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let other = SigningKey::from_bytes(&[6; 32]);
        let r = ReceiptRepr {
            status: ReceiptStatus::Stored,
            relay_id: 9,
            height: 42,
            block_hash: [7; 32],
            server_id: 1,
            time_ms: 1_700_000_000_000,
        };
        let b = r.to_signed_bytes(&RustCrypto, &key);
        assert_eq!(
            ReceiptRepr::parse_verified(&RustCrypto, &b, &key.verifying_key()),
            Ok(r)
        );
        assert!(ReceiptRepr::parse_verified(&RustCrypto, &b, &other.verifying_key()).is_err());
        for i in 0..RECEIPT_LEN {
            let mut t = b;
            t[i] ^= 0x01;
            assert!(
                ReceiptRepr::parse_verified(&RustCrypto, &t, &key.verifying_key()).is_err(),
                "byte {i}"
            );
        }
    }
}
