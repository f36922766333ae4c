//! The block: a 100-byte header, the relay's Ed25519 signature, and the
//! sealed uplink frames exactly as received (the Merkle leaves).
//!
//! ```text
//! header (100 bytes)
//!  0 version =1 | 1 type 0x03 | 2 difficulty | 3 reserved =0
//!  4..8    relay id      u32 LE
//!  8..16   height        u64 LE (genesis = 0)
//! 16..48   previous block hash (all zero for genesis)
//! 48..80   Merkle root over the leaves (RFC 9162)
//! 80..84   leaf count    u32 LE
//! 84..92   time          u64 LE, Unix milliseconds when sealed
//! 92..100  nonce         u64 LE (the PoW solution)
//! signature (64 bytes): Ed25519 over "gridpow-block-v2" ‖ SHA-256(header)
//! leaves: leaf count × (length u16 LE ‖ frame bytes)
//! ```
//! The header is 100 bytes so that bytes 64..100, the nonce and SHA-256's
//! padding fit one 64-byte block: a PoW try costs one compression.

use super::{check_version_type, get_u16, get_u32, get_u64, Field, ESPNOW_MAX_PAYLOAD, TYPE_BLOCK};
use crate::crypto::CryptoProvider;
use crate::{Hash, Malformed, Misuse};

pub(crate) mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const DIFFICULTY: usize = 2;
    pub const RESERVED: usize = 3;
    pub const RELAY_ID: Field = 4..8;
    pub const HEIGHT: Field = 8..16;
    pub const PREV_HASH: Field = 16..48;
    pub const MERKLE_ROOT: Field = 48..80;
    pub const LEAF_COUNT: Field = 80..84;
    pub const TIME_MS: Field = 84..92;
    pub const NONCE: Field = 92..100;
    pub const HEADER: Field = 0..100;
    pub const SIGNATURE: Field = 100..164;
    pub const LEAVES: usize = 164;
}

/// Length of a block header.
pub const HEADER_LEN: usize = 100;
/// Length of the relay's signature.
pub const SIGNATURE_LEN: usize = 64;
/// Offset of the first leaf.
pub const LEAVES_OFFSET: usize = field::LEAVES;
/// Bytes of framing before each leaf.
pub const LEAF_PREFIX_LEN: usize = 2;
/// Largest number of leaves a block may hold.
pub const MAX_LEAVES: u32 = 65_535;
/// Offset of the nonce inside the header.
pub const NONCE_OFFSET: usize = field::NONCE.start;
/// Domain-separation prefix of the signed message.
pub const SIGNING_CONTEXT: &[u8; 16] = b"gridpow-block-v2";

/// A block header's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHeaderRepr {
    /// Required leading zero bits of the header hash, as claimed by the relay.
    pub difficulty: u8,
    /// The relay that sealed the block.
    pub relay_id: u32,
    /// Position in the relay's chain, genesis = 0.
    pub height: u64,
    /// Hash of the previous block's header (zero for genesis).
    pub prev_hash: Hash,
    /// RFC 9162 Merkle root over the leaf frames.
    pub merkle_root: Hash,
    /// Number of leaves.
    pub leaf_count: u32,
    /// When the block was sealed, Unix milliseconds.
    pub time_ms: u64,
    /// PoW nonce.
    pub nonce: u64,
}

impl BlockHeaderRepr {
    /// Parses and checks 100 header bytes.
    pub fn parse(b: &[u8]) -> Result<BlockHeaderRepr, Malformed> {
        check_version_type(b, TYPE_BLOCK)?;
        if b.len() < HEADER_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > HEADER_LEN {
            return Err(Malformed::TooLong);
        }
        if b[field::RESERVED] != 0 {
            return Err(Malformed::NonZeroReserved);
        }
        let leaf_count = get_u32(b, field::LEAF_COUNT);
        if leaf_count > MAX_LEAVES {
            return Err(Malformed::TooManyLeaves);
        }
        let mut prev_hash = [0u8; 32];
        prev_hash.copy_from_slice(&b[field::PREV_HASH]);
        let mut merkle_root = [0u8; 32];
        merkle_root.copy_from_slice(&b[field::MERKLE_ROOT]);
        Ok(BlockHeaderRepr {
            difficulty: b[field::DIFFICULTY],
            relay_id: get_u32(b, field::RELAY_ID),
            height: get_u64(b, field::HEIGHT),
            prev_hash,
            merkle_root,
            leaf_count,
            time_ms: get_u64(b, field::TIME_MS),
            nonce: get_u64(b, field::NONCE),
        })
    }

    /// Encoded length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::VERSION] = crate::PROTOCOL_VERSION;
        b[field::TYPE] = TYPE_BLOCK;
        b[field::DIFFICULTY] = self.difficulty;
        b[field::RESERVED] = 0;
        b[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        b[field::HEIGHT].copy_from_slice(&self.height.to_le_bytes());
        b[field::PREV_HASH].copy_from_slice(&self.prev_hash);
        b[field::MERKLE_ROOT].copy_from_slice(&self.merkle_root);
        b[field::LEAF_COUNT].copy_from_slice(&self.leaf_count.to_le_bytes());
        b[field::TIME_MS].copy_from_slice(&self.time_ms.to_le_bytes());
        b[field::NONCE].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Writes the header into `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Misuse> {
        let out = out.get_mut(..HEADER_LEN).ok_or(Misuse::BufferTooSmall)?;
        out.copy_from_slice(&self.to_bytes());
        Ok(HEADER_LEN)
    }

    /// SHA-256 of the encoded header on `provider`: the block's identity
    /// and PoW input.
    pub fn hash<C: CryptoProvider>(&self, provider: &C) -> Hash {
        provider.sha256(&[&self.to_bytes()])
    }
}

/// The message the relay signs: `"gridpow-block-v2" ‖ header hash`.
pub fn signing_message(header_hash: &Hash) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..16].copy_from_slice(SIGNING_CONTEXT);
    m[16..].copy_from_slice(header_hash);
    m
}

/// A checked view over a whole block. After [`BlockPacket::new_checked`] the
/// leaf framing is known to be consistent, so iteration cannot fail.
#[derive(Clone, Copy, Debug)]
pub struct BlockPacket<T: AsRef<[u8]>> {
    buffer: T,
    header: BlockHeaderRepr,
}

impl<T: AsRef<[u8]>> BlockPacket<T> {
    /// Checks the header and that exactly `leaf_count` well-framed leaves fill the rest.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        let header_bytes = b.get(field::HEADER).ok_or(Malformed::TooShort);
        // Report version/type problems before length problems, like the other messages.
        check_version_type(b, TYPE_BLOCK)?;
        let header = BlockHeaderRepr::parse(header_bytes?)?;
        if b.len() < LEAVES_OFFSET {
            return Err(Malformed::TooShort);
        }
        let mut rest = &b[LEAVES_OFFSET..];
        for _ in 0..header.leaf_count {
            if rest.len() < LEAF_PREFIX_LEN {
                return Err(Malformed::BadLeafFraming);
            }
            let len = usize::from(get_u16(rest, 0..2));
            if len == 0 || len > ESPNOW_MAX_PAYLOAD {
                return Err(Malformed::BadLeafLength);
            }
            if rest.len() < LEAF_PREFIX_LEN + len {
                return Err(Malformed::BadLeafFraming);
            }
            rest = &rest[LEAF_PREFIX_LEN + len..];
        }
        if !rest.is_empty() {
            return Err(Malformed::BadLeafFraming);
        }
        Ok(BlockPacket { buffer, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &BlockHeaderRepr {
        &self.header
    }
    /// The header bytes.
    pub fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER]
    }
    /// The relay's signature.
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        let mut s = [0u8; SIGNATURE_LEN];
        s.copy_from_slice(&self.buffer.as_ref()[field::SIGNATURE]);
        s
    }
    /// The leaves (sealed uplink frames) in order.
    pub fn leaves(&self) -> LeafIter<'_> {
        LeafIter {
            rest: &self.buffer.as_ref()[LEAVES_OFFSET..],
        }
    }
    /// The whole block.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Iterator over a checked block's leaves.
#[derive(Clone, Debug)]
pub struct LeafIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for LeafIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(u16::from_le_bytes([
            *self.rest.first()?,
            *self.rest.get(1)?,
        ]));
        let leaf = self.rest.get(LEAF_PREFIX_LEN..LEAF_PREFIX_LEN + len)?;
        self.rest = &self.rest[LEAF_PREFIX_LEN + len..];
        Some(leaf)
    }
}

/// Length of a block holding leaves of the given total frame bytes and count.
pub const fn block_len(leaf_count: usize, leaf_bytes: usize) -> usize {
    LEAVES_OFFSET + leaf_count * LEAF_PREFIX_LEN + leaf_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlockHeaderRepr {
        BlockHeaderRepr {
            difficulty: 12,
            relay_id: 0x0102_0304,
            height: 5,
            prev_hash: [0xaa; 32],
            merkle_root: [0xbb; 32],
            leaf_count: 2,
            time_ms: 1_700_000_000_000,
            nonce: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn header_round_trips_with_fields_at_their_offsets() {
        let h = header();
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[2, 3, 12, 0]);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(&b[92..100], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(BlockHeaderRepr::parse(&b), Ok(h));
    }

    #[test]
    fn block_framing_must_match_leaf_count_exactly() {
        let mut block = [0u8; LEAVES_OFFSET + 2 + 3 + 2 + 1];
        block[..HEADER_LEN].copy_from_slice(&header().to_bytes());
        block[LEAVES_OFFSET..LEAVES_OFFSET + 2].copy_from_slice(&3u16.to_le_bytes());
        block[LEAVES_OFFSET + 5..LEAVES_OFFSET + 7].copy_from_slice(&1u16.to_le_bytes());
        let p = BlockPacket::new_checked(&block[..]).unwrap();
        assert_eq!(p.leaves().count(), 2);
        assert_eq!(
            BlockPacket::new_checked(&block[..block.len() - 1]).unwrap_err(),
            Malformed::BadLeafFraming
        );
        let mut longer = [0u8; LEAVES_OFFSET + 2 + 3 + 2 + 1 + 1];
        longer[..block.len()].copy_from_slice(&block);
        assert_eq!(
            BlockPacket::new_checked(&longer[..]).unwrap_err(),
            Malformed::BadLeafFraming
        );
        assert_eq!(
            BlockPacket::new_checked(&block[..50]).unwrap_err(),
            Malformed::TooShort
        );
    }
}
