//! A transparency-log leaf: the entry the grid server appends to its global
//! log (docs/ledger.md) for every block it stores, in commit order. The log
//! is an RFC 9162 Merkle tree over these entries (leaf hash
//! `SHA-256(0x00 ‖ entry)`, [`crate::merkle::leaf_hash`]), served in the
//! C2SP tlog-tiles layout, so one entry is one 80-byte record of an entry
//! bundle.
//!
//! ```text
//!  0 version =2 | 1 type 0x05 | 2..4 reserved =0
//!  4..8     relay id     u32 LE
//!  8..16    height       u64 LE
//! 16..48    block hash   (SHA-256 of the block header)
//! 48..80    Merkle root  (the block's leaves, as in its header)
//! ```

use super::{check_version_type, get_u32, get_u64, Field, TYPE_LOG_LEAF};
use crate::crypto::CryptoProvider;
use crate::{Hash, Malformed};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const RESERVED: Field = 2..4;
    pub const RELAY_ID: Field = 4..8;
    pub const HEIGHT: Field = 8..16;
    pub const BLOCK_HASH: Field = 16..48;
    pub const MERKLE_ROOT: Field = 48..80;
}

/// Length of a log entry.
pub const LOG_LEAF_LEN: usize = 80;

/// One log entry: which block of which relay, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogLeafRepr {
    /// The relay whose block this is.
    pub relay_id: u32,
    /// The block's height in its relay's chain.
    pub height: u64,
    /// The block's header hash.
    pub block_hash: Hash,
    /// The Merkle root of the block's leaves (from its header).
    pub merkle_root: Hash,
}

impl LogLeafRepr {
    /// The entry of the block whose header is `header` and whose header hash
    /// is `block_hash` (§15): what the server appends and what a relay
    /// expects to find for its own block.
    pub fn of_block(header: &super::BlockHeaderRepr, block_hash: Hash) -> LogLeafRepr {
        LogLeafRepr {
            relay_id: header.relay_id,
            height: header.height,
            block_hash,
            merkle_root: header.merkle_root,
        }
    }

    /// The entry's bytes.
    pub fn to_bytes(&self) -> [u8; LOG_LEAF_LEN] {
        let mut b = [0u8; LOG_LEAF_LEN];
        b[field::VERSION] = crate::PROTOCOL_VERSION;
        b[field::TYPE] = TYPE_LOG_LEAF;
        b[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        b[field::HEIGHT].copy_from_slice(&self.height.to_le_bytes());
        b[field::BLOCK_HASH].copy_from_slice(&self.block_hash);
        b[field::MERKLE_ROOT].copy_from_slice(&self.merkle_root);
        b
    }

    /// Parses an entry.
    pub fn parse(b: &[u8]) -> Result<LogLeafRepr, Malformed> {
        check_version_type(b, TYPE_LOG_LEAF)?;
        if b.len() < LOG_LEAF_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > LOG_LEAF_LEN {
            return Err(Malformed::TooLong);
        }
        if b[field::RESERVED] != [0, 0] {
            return Err(Malformed::NonZeroReserved);
        }
        let mut block_hash = [0u8; 32];
        block_hash.copy_from_slice(&b[field::BLOCK_HASH]);
        let mut merkle_root = [0u8; 32];
        merkle_root.copy_from_slice(&b[field::MERKLE_ROOT]);
        Ok(LogLeafRepr {
            relay_id: get_u32(b, field::RELAY_ID),
            height: get_u64(b, field::HEIGHT),
            block_hash,
            merkle_root,
        })
    }

    /// The entry's RFC 9162 leaf hash: its node in the log's Merkle tree.
    pub fn leaf_hash<C: CryptoProvider>(&self, provider: &C) -> Hash {
        crate::merkle::leaf_hash(provider, &self.to_bytes())
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;

    #[test]
    fn a_log_leaf_round_trips_and_any_malformed_entry_is_refused() {
        let leaf = LogLeafRepr {
            relay_id: 0x0102_0304,
            height: 0x0a0b_0c0d_0e0f_1011,
            block_hash: [0xaa; 32],
            merkle_root: [0x55; 32],
        };
        let b = leaf.to_bytes();
        assert_eq!(&b[..8], &[2, 0x05, 0, 0, 0x04, 0x03, 0x02, 0x01]);
        assert_eq!(LogLeafRepr::parse(&b), Ok(leaf));
        assert_eq!(LogLeafRepr::parse(&b[..79]), Err(Malformed::TooShort));
        let mut long = [0u8; 81];
        long[..80].copy_from_slice(&b);
        assert_eq!(LogLeafRepr::parse(&long), Err(Malformed::TooLong));
        let mut reserved = b;
        reserved[3] = 1;
        assert_eq!(
            LogLeafRepr::parse(&reserved),
            Err(Malformed::NonZeroReserved)
        );
        let mut ty = b;
        ty[1] = 0x04;
        assert_eq!(LogLeafRepr::parse(&ty), Err(Malformed::WrongType(0x04)));
        let mut prefixed = [0u8; 81];
        prefixed[1..].copy_from_slice(&b);
        assert_eq!(
            leaf.leaf_hash(&RustCrypto),
            RustCrypto.sha256(&[&prefixed[..]])
        );
    }
}
