//! What the store takes in: a block that passed every check that does not
//! depend on the database, its readings decrypted, or the reason a payload
//! was refused. The server's verifier makes these; the store decides what the
//! database already holding them means (duplicates, chain links, forks).

use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;
use serde::Serialize;

/// One reading decrypted from a leaf of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadingRow {
    /// The meter.
    pub meter_id: u32,
    /// The meter's boot epoch.
    pub epoch: u32,
    /// Sequence number within the epoch.
    pub seq: u32,
    /// The site key id its frame was sealed under.
    pub key_id: u8,
    /// Zero-based index of the leaf (frame) in its block.
    pub leaf: u32,
    /// The values.
    pub reading: Reading,
}

/// A block that passed every check that does not depend on the database.
#[derive(Clone, Debug)]
pub struct VerifiedBlockData {
    /// Its header.
    pub header: BlockHeaderRepr,
    /// SHA-256 of the header (the block's identity).
    pub hash: Hash,
    /// The whole block as received.
    pub raw: Vec<u8>,
    /// Every reading of every leaf, sorted by (meter, epoch, seq), stable (a
    /// reading carried by two frames appears twice, the earlier leaf first).
    pub readings: Vec<ReadingRow>,
}

/// Why a payload was refused; the string form is the quarantine `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectKind {
    /// Not a block message at all (framing, version, type, reserved bits).
    Malformed,
    /// The header names a relay that is not registered.
    UnknownRelay,
    /// The header claims less difficulty than the server requires.
    LowDifficulty,
    /// The header hash does not have the claimed leading zero bits.
    InsufficientWork,
    /// The relay's signature does not verify.
    BadSignature,
    /// The Merkle root does not match the leaves.
    MerkleMismatch,
    /// A leaf is not a valid uplink frame.
    MalformedFrame,
    /// A leaf names a meter (or key id) that is not registered.
    UnknownMeter,
    /// A leaf's hop tag (the meter's hop key, which its relays also hold) does not verify.
    BadHopTag,
    /// A leaf's end-to-end tag does not verify: the frame was altered or
    /// invented by someone without the meter's end-to-end key, such as a relay.
    BadTag,
    /// Another block already holds this place in the relay's chain, or the
    /// block's parent or child in the stored chain disagrees with it.
    Fork,
    /// A genesis block (height 0) with a non-zero previous hash.
    BadGenesis,
    /// A block more than `max_height_ahead` above its relay's highest stored
    /// block: refused before anything is stored, so one signature cannot wedge
    /// the relay's chain with a block far in the future.
    TooFarAhead,
    /// A payload larger than the largest block the protocol allows
    /// (the server's `MAX_BLOCK_BYTES`); its bytes are not kept.
    Oversize,
}

impl RejectKind {
    /// The stable name used in the database, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::UnknownRelay => "unknown_relay",
            RejectKind::LowDifficulty => "low_difficulty",
            RejectKind::InsufficientWork => "insufficient_work",
            RejectKind::BadSignature => "bad_signature",
            RejectKind::MerkleMismatch => "merkle_mismatch",
            RejectKind::MalformedFrame => "malformed_frame",
            RejectKind::UnknownMeter => "unknown_meter",
            RejectKind::BadHopTag => "bad_hop_tag",
            RejectKind::BadTag => "bad_tag",
            RejectKind::Fork => "fork",
            RejectKind::BadGenesis => "bad_genesis",
            RejectKind::TooFarAhead => "too_far_ahead",
            RejectKind::Oversize => "oversize",
        }
    }

    /// Whether the fault lies in one leaf (frame) rather than the block.
    pub fn is_frame_fault(self) -> bool {
        matches!(
            self,
            RejectKind::MalformedFrame
                | RejectKind::UnknownMeter
                | RejectKind::BadHopTag
                | RejectKind::BadTag
        )
    }

    /// Whether the relay id of a payload refused for this reason is
    /// authenticated: the refusal comes after the relay's signature verified.
    pub fn relay_authenticated(self) -> bool {
        matches!(
            self,
            RejectKind::MerkleMismatch
                | RejectKind::MalformedFrame
                | RejectKind::UnknownMeter
                | RejectKind::BadHopTag
                | RejectKind::BadTag
                | RejectKind::Fork
                | RejectKind::BadGenesis
                | RejectKind::TooFarAhead
        )
    }

    /// Whether the refusal is final (receipt status 3, §10): its cause lies in
    /// bytes the block's hash binds (the header itself, or a leaf under a
    /// Merkle root that matched) or in the stored chain, so the same block can
    /// never be stored. Every other refusal may be cured (a relay or meter
    /// registered late, a gap filled, a lowered `min_difficulty`) or may come
    /// from a forged copy carrying the genuine header (bad signature, Merkle
    /// mismatch, framing), which must not make the relay forget its block.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RejectKind::InsufficientWork
                | RejectKind::MalformedFrame
                | RejectKind::BadHopTag
                | RejectKind::BadTag
                | RejectKind::Fork
                | RejectKind::BadGenesis
        )
    }

    /// Every kind, for metrics.
    pub const ALL: [RejectKind; 14] = [
        RejectKind::Malformed,
        RejectKind::UnknownRelay,
        RejectKind::LowDifficulty,
        RejectKind::InsufficientWork,
        RejectKind::BadSignature,
        RejectKind::MerkleMismatch,
        RejectKind::MalformedFrame,
        RejectKind::UnknownMeter,
        RejectKind::BadHopTag,
        RejectKind::BadTag,
        RejectKind::Fork,
        RejectKind::BadGenesis,
        RejectKind::TooFarAhead,
        RejectKind::Oversize,
    ];
}

impl std::fmt::Display for RejectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
