//! Sealing and verifying blocks.
//!
//! A relay fills a [`BlockBuilder`] with frames exactly as received, asks it for
//! the unsolved header, solves the PoW ([`crate::pow::PowSolver`]), and
//! [`BlockBuilder::seal`]s with its Ed25519 key. The Merkle root, solving,
//! signing and verifying run on the caller's [`CryptoProvider`]. A verifier runs
//! [`verify_block`]: framing, relay, difficulty, PoW, signature, Merkle root,
//! then every leaf's meter tag and the caller's replay policy — each failure
//! its own error — and [`check_link`] for chain continuity.

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::crypto::{CryptoProvider, MeterKeys};
use crate::merkle::RootBuilder;
use crate::pow::check_work;
use crate::wire::block::{
    signing_message, BlockHeaderRepr, BlockPacket, HEADER_LEN, LEAF_PREFIX_LEN, LEAVES_OFFSET,
    MAX_LEAVES, SIGNATURE_LEN,
};
use crate::wire::uplink::{OpenedBody, UplinkPacket, MAX_BODY_LEN};
use crate::wire::ESPNOW_MAX_PAYLOAD;
use crate::{Capacity, Error, Hash, LeafFault, Misuse, Rejected};

/// Assembles a block in a caller-supplied buffer.
pub struct BlockBuilder<'a> {
    buf: &'a mut [u8],
    len: usize,
    merkle: RootBuilder,
    leaves: u32,
}

impl<'a> BlockBuilder<'a> {
    /// A builder writing into `buf` (which bounds the block size).
    pub fn new(buf: &'a mut [u8]) -> Result<Self, Error> {
        if buf.len() < LEAVES_OFFSET {
            return Err(Misuse::BufferTooSmall.into());
        }
        Ok(BlockBuilder {
            buf,
            len: LEAVES_OFFSET,
            merkle: RootBuilder::new(),
            leaves: 0,
        })
    }

    /// Number of leaves so far.
    pub fn leaf_count(&self) -> u32 {
        self.leaves
    }

    /// Bytes the block occupies so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no leaf was added.
    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// Whether a frame of `frame_len` bytes still fits.
    pub fn has_room_for(&self, frame_len: usize) -> bool {
        self.leaves < MAX_LEAVES && self.len + LEAF_PREFIX_LEN + frame_len <= self.buf.len()
    }

    /// Appends a frame as a leaf, hashing it into the Merkle root on
    /// `provider`. The block does not judge it: the relay passes only frames
    /// its ingress accepted.
    pub fn push_leaf<C: CryptoProvider>(
        &mut self,
        provider: &C,
        frame: &[u8],
    ) -> Result<(), Error> {
        if frame.is_empty() || frame.len() > ESPNOW_MAX_PAYLOAD {
            return Err(Misuse::InvalidArgument.into());
        }
        if !self.has_room_for(frame.len()) {
            return Err(Capacity::BlockFull.into());
        }
        let at = self.len;
        self.buf[at..at + LEAF_PREFIX_LEN].copy_from_slice(&(frame.len() as u16).to_le_bytes());
        self.buf[at + LEAF_PREFIX_LEN..at + LEAF_PREFIX_LEN + frame.len()].copy_from_slice(frame);
        self.len += LEAF_PREFIX_LEN + frame.len();
        self.leaves += 1;
        self.merkle.push_leaf(provider, frame);
        Ok(())
    }

    /// The header to solve: everything but the nonce (which is 0), its
    /// Merkle root computed on `provider`.
    pub fn header<C: CryptoProvider>(
        &self,
        provider: &C,
        relay_id: u32,
        height: u64,
        prev_hash: Hash,
        time_ms: u64,
        difficulty: u8,
    ) -> BlockHeaderRepr {
        BlockHeaderRepr {
            difficulty,
            relay_id,
            height,
            prev_hash,
            merkle_root: self.merkle.root(provider),
            leaf_count: self.leaves,
            time_ms,
            nonce: 0,
        }
    }

    /// Writes the solved `header` and its signature by `provider`; returns
    /// the block length. The header must be the one [`BlockBuilder::header`]
    /// gave, with its nonce set.
    pub fn seal<C: CryptoProvider>(
        self,
        provider: &C,
        header: &BlockHeaderRepr,
        key: &SigningKey,
    ) -> Result<usize, Error> {
        if header.leaf_count != self.leaves || header.merkle_root != self.merkle.root(provider) {
            return Err(Misuse::InvalidArgument.into());
        }
        let sig = sign_header(provider, header, key);
        self.buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        self.buf[HEADER_LEN..HEADER_LEN + SIGNATURE_LEN].copy_from_slice(&sig);
        Ok(self.len)
    }

    /// [`BlockBuilder::seal`] with [`RustCrypto`](crate::crypto::RustCrypto),
    /// for host tools and tests.
    #[cfg(feature = "rustcrypto")]
    pub fn finish(self, header: &BlockHeaderRepr, key: &SigningKey) -> Result<usize, Error> {
        self.seal(&crate::crypto::RustCrypto, header, key)
    }
}

/// The relay's signature over a header: Ed25519 over `"gridpow-block-v2" ‖ SHA-256(header)`.
pub fn sign_header<C: CryptoProvider>(
    provider: &C,
    header: &BlockHeaderRepr,
    key: &SigningKey,
) -> [u8; SIGNATURE_LEN] {
    provider.ed25519_sign(key, &signing_message(&header.hash(provider)))
}

/// What the verifier requires of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// The relay whose key verifies the signature.
    pub relay_id: u32,
    /// Least difficulty accepted.
    pub min_difficulty: u8,
}

/// Finds meter keys for leaves.
pub trait KeyLookup<C: CryptoProvider> {
    /// Keys of `meter_id` under `key_id`, if known.
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<C>>;
}

/// A leaf that authenticated, handed to the caller's policy.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedLeaf<'a> {
    /// Zero-based position in the block.
    pub index: u32,
    /// The frame.
    pub frame: UplinkPacket<&'a [u8]>,
    /// Its decrypted body.
    pub body: OpenedBody<'a>,
}

/// A block that passed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedBlock {
    /// Its header.
    pub header: BlockHeaderRepr,
    /// SHA-256 of the header.
    pub hash: Hash,
}

/// Verifies a block end to end. `on_leaf` sees every authentic leaf in order,
/// after the block-level checks passed, and may refuse it (replay policy);
/// because a later leaf can still fail, it should not commit anything until
/// `verify_block` returns `Ok`.
pub fn verify_block<C, K, F>(
    provider: &C,
    bytes: &[u8],
    relay_key: &VerifyingKey,
    policy: &VerifyPolicy,
    keys: &K,
    mut on_leaf: F,
) -> Result<VerifiedBlock, Error>
where
    C: CryptoProvider,
    K: KeyLookup<C> + ?Sized,
    F: FnMut(&VerifiedLeaf<'_>) -> Result<(), LeafFault>,
{
    let block = BlockPacket::new_checked(bytes)?;
    let header = *block.header();
    if header.relay_id != policy.relay_id {
        return Err(Rejected::WrongRelay.into());
    }
    if header.difficulty < policy.min_difficulty {
        return Err(Rejected::DifficultyTooLow {
            required: policy.min_difficulty,
            claimed: header.difficulty,
        }
        .into());
    }
    // PoW first: one hash, so forged blocks without work cost the verifier little.
    let hash = provider.sha256(&[block.header_bytes()]);
    check_work(&hash, header.difficulty)?;
    if !provider.ed25519_verify(relay_key, &signing_message(&hash), &block.signature()) {
        return Err(Rejected::BadSignature.into());
    }
    let mut merkle = RootBuilder::new();
    for leaf in block.leaves() {
        merkle.push_leaf(provider, leaf);
    }
    if !crate::crypto::ct_eq(&merkle.root(provider), &header.merkle_root) {
        return Err(Rejected::MerkleRootMismatch.into());
    }
    let mut scratch = [0u8; MAX_BODY_LEN];
    for (index, leaf) in block.leaves().enumerate() {
        let index = index as u32;
        let fail = |fault| Error::Rejected(Rejected::Leaf { index, fault });
        let frame = UplinkPacket::new_checked(leaf).map_err(|m| fail(LeafFault::Malformed(m)))?;
        let mk = keys
            .meter_keys(frame.meter_id(), frame.key_id())
            .ok_or(fail(LeafFault::UnknownMeter))?;
        let body = frame.open(provider, mk, &mut scratch).map_err(|e| {
            fail(match e {
                Rejected::BadEndToEndTag => LeafFault::BadTag,
                _ => LeafFault::BadHopTag,
            })
        })?;
        on_leaf(&VerifiedLeaf { index, frame, body }).map_err(fail)?;
    }
    Ok(VerifiedBlock { header, hash })
}

/// Checks that `header` follows `prev` (its parent's height and hash) in the
/// relay's chain; `None` means `header` must be the genesis block.
pub fn check_link(header: &BlockHeaderRepr, prev: Option<(u64, &Hash)>) -> Result<(), Rejected> {
    match prev {
        None => {
            if header.height != 0 {
                return Err(Rejected::HeightMismatch);
            }
            if header.prev_hash != [0; 32] {
                return Err(Rejected::PrevHashMismatch);
            }
        }
        Some((height, hash)) => {
            if height.checked_add(1) != Some(header.height) {
                return Err(Rejected::HeightMismatch);
            }
            if &header.prev_hash != hash {
                return Err(Rejected::PrevHashMismatch);
            }
        }
    }
    Ok(())
}
