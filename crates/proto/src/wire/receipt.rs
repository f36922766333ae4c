//! The commit receipt (grid server → relay): the server states, under its
//! Ed25519 signature, that a block is durably stored (or quarantined, or
//! refused for good), and for a stored block where it sits in the
//! transparency log. Only then does the relay drop the block from its outbox.
//!
//! ```text
//!  0 version =2 | 1 type 0x06 | 2 status | 3 reserved =0
//!  4..8     relay id     u32 LE
//!  8..16    height       u64 LE
//! 16..48    block hash   (SHA-256 of the block header)
//! 48..52    server id    u32 LE
//! 52..60    time         u64 LE, Unix ms of the commit
//! 60..68    log index    u64 LE (status 0 and 1; else 0)
//! 68..76    tree size    u64 LE, the log's size the block was committed under (status 0 and 1; else 0)
//! 76..140   signature: Ed25519 over "gridpow-rcpt-v3\0" ‖ bytes 0..76
//! ```
//!
//! Type 0x04 (the receipt without a log position, context `gridpow-rcpt-v2`)
//! is retired: a receiver refuses it as a wrong type.

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
    pub const LOG_INDEX: Field = 60..68;
    pub const TREE_SIZE: Field = 68..76;
    pub const SIGNED: Field = 0..76;
    pub const SIGNATURE: Field = 76..140;
}

const SIGNED_LEN: usize = 76;

/// Length of a receipt.
pub const RECEIPT_LEN: usize = 140;
/// Domain-separation prefix of the signed message.
pub const RECEIPT_CONTEXT: &[u8; 16] = b"gridpow-rcpt-v3\0";

/// Where a stored block sits in the server's transparency log (§15): its
/// entry's index, and the log's size right after the commit that receipted
/// it (so `index < tree_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The block's entry index.
    pub index: u64,
    /// The tree size the receipt was signed under.
    pub tree_size: u64,
}

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
    /// Where the block sits in the log: `Some` exactly when `status` is
    /// `Stored` or `AlreadyStored`.
    pub log: Option<LogPosition>,
}

impl ReceiptRepr {
    fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut b = [0u8; SIGNED_LEN];
        b[field::VERSION] = crate::PROTOCOL_VERSION;
        b[field::TYPE] = TYPE_RECEIPT;
        b[field::STATUS] = self.status as u8;
        b[field::RESERVED] = 0;
        b[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        b[field::HEIGHT].copy_from_slice(&self.height.to_le_bytes());
        b[field::BLOCK_HASH].copy_from_slice(&self.block_hash);
        b[field::SERVER_ID].copy_from_slice(&self.server_id.to_le_bytes());
        b[field::TIME_MS].copy_from_slice(&self.time_ms.to_le_bytes());
        let log = self.log.unwrap_or(LogPosition {
            index: 0,
            tree_size: 0,
        });
        b[field::LOG_INDEX].copy_from_slice(&log.index.to_le_bytes());
        b[field::TREE_SIZE].copy_from_slice(&log.tree_size.to_le_bytes());
        b
    }

    /// Encodes the receipt and signs it with `key` on `provider`. A stored
    /// status without a log position, a refusal with one, or a position
    /// outside its tree is a caller error.
    pub fn to_signed_bytes<C: CryptoProvider>(
        &self,
        provider: &C,
        key: &SigningKey,
    ) -> Result<[u8; RECEIPT_LEN], crate::Misuse> {
        if !log_position_fits(self.status, self.log) {
            return Err(crate::Misuse::InvalidArgument);
        }
        let signed = self.signed_bytes();
        let sig = provider.ed25519_sign(key, &signing_message(&signed));
        let mut out = [0u8; RECEIPT_LEN];
        out[field::SIGNED].copy_from_slice(&signed);
        out[field::SIGNATURE].copy_from_slice(&sig);
        Ok(out)
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
        let (index, tree_size) = (get_u64(b, field::LOG_INDEX), get_u64(b, field::TREE_SIZE));
        let log = match status {
            ReceiptStatus::Stored | ReceiptStatus::AlreadyStored => {
                Some(LogPosition { index, tree_size })
            }
            ReceiptStatus::Quarantined | ReceiptStatus::Refused if index == 0 && tree_size == 0 => {
                None
            }
            _ => return Err(Malformed::UnknownValue),
        };
        if !log_position_fits(status, log) {
            return Err(Malformed::UnknownValue);
        }
        Ok(ReceiptRepr {
            status,
            relay_id: get_u32(b, field::RELAY_ID),
            height: get_u64(b, field::HEIGHT),
            block_hash,
            server_id: get_u32(b, field::SERVER_ID),
            time_ms: get_u64(b, field::TIME_MS),
            log,
        })
    }
}

/// §10: a stored block has a position inside its tree, a refused one none.
fn log_position_fits(status: ReceiptStatus, log: Option<LogPosition>) -> bool {
    match (status, log) {
        (ReceiptStatus::Stored | ReceiptStatus::AlreadyStored, Some(p)) => p.index < p.tree_size,
        (ReceiptStatus::Quarantined | ReceiptStatus::Refused, None) => true,
        _ => false,
    }
}

fn signing_message(signed: &[u8; SIGNED_LEN]) -> [u8; 16 + SIGNED_LEN] {
    let mut m = [0u8; 16 + SIGNED_LEN];
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
            log: Some(LogPosition {
                index: 17,
                tree_size: 40,
            }),
        };
        let b = r.to_signed_bytes(&RustCrypto, &key).unwrap();
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

    #[test]
    fn a_log_position_comes_with_stored_blocks_only_and_lies_inside_its_tree() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let base = ReceiptRepr {
            status: ReceiptStatus::Stored,
            relay_id: 9,
            height: 42,
            block_hash: [7; 32],
            server_id: 1,
            time_ms: 1,
            log: None,
        };
        let at = |index, tree_size| Some(LogPosition { index, tree_size });
        for (status, log, ok) in [
            (ReceiptStatus::Stored, None, false),
            (ReceiptStatus::Stored, at(3, 3), false),
            (ReceiptStatus::AlreadyStored, at(0, 1), true),
            (ReceiptStatus::Quarantined, at(0, 1), false),
            (ReceiptStatus::Refused, None, true),
        ] {
            let r = ReceiptRepr {
                status,
                log,
                ..base
            };
            assert_eq!(r.to_signed_bytes(&RustCrypto, &key).is_ok(), ok, "{r:?}");
        }
        // The parser holds signed bytes to the same rule.
        let good = ReceiptRepr {
            status: ReceiptStatus::Refused,
            ..base
        }
        .to_signed_bytes(&RustCrypto, &key)
        .unwrap();
        let mut t = good;
        t[field::TREE_SIZE][0] = 1;
        assert_eq!(
            ReceiptRepr::parse_unverified(&t),
            Err(Malformed::UnknownValue)
        );
        let mut old = good;
        old[1] = 0x04;
        assert_eq!(
            ReceiptRepr::parse_unverified(&old),
            Err(Malformed::WrongType(0x04))
        );
    }
}
