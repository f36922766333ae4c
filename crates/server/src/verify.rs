//! Verification of one MQTT payload: everything `gridpow_proto::block::verify_block`
//! checks (framing, difficulty, PoW, relay signature, Merkle root, every
//! meter's tag), with the relay's registered key and the meters' derived keys.
//! The result is either a block ready to store, with its readings decrypted
//! and sorted, or a [`Rejection`] naming the reason, ready for quarantine.
//! Chain links, forks and duplicates are the store's business: they depend on
//! what the database already holds.

use gridpow_proto::block::{verify_block, VerifyPolicy};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{BlockHeaderRepr, BlockPacket, Reading};
use gridpow_proto::{Error as ProtoError, Hash, LeafFault, Rejected};
use serde::Serialize;

use crate::keyring::Keyring;

/// One reading decrypted from a leaf of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadingRow {
    /// The meter.
    pub meter_id: u32,
    /// The meter's boot epoch.
    pub epoch: u32,
    /// Sequence number within the epoch.
    pub seq: u32,
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
    /// ([`MAX_BLOCK_BYTES`]); its bytes are not kept.
    Oversize,
}

/// The largest block message the protocol allows: header and signature plus
/// 65 535 leaves of a length prefix and a 244-byte frame (16 121 774 bytes).
pub const MAX_BLOCK_BYTES: usize = gridpow_proto::wire::block::HEADER_LEN
    + gridpow_proto::wire::block::SIGNATURE_LEN
    + gridpow_proto::wire::block::MAX_LEAVES as usize
        * (gridpow_proto::wire::block::LEAF_PREFIX_LEN + gridpow_proto::wire::uplink::MAX_LEN);

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

/// A refused payload: the reason and what could be read of its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub kind: RejectKind,
    /// A short sentence with details.
    pub detail: String,
    /// The header, if it parsed (the relay id, height and hash in it are unauthenticated).
    pub header: Option<BlockHeaderRepr>,
}

impl Rejection {
    fn new(kind: RejectKind, detail: impl Into<String>, header: Option<BlockHeaderRepr>) -> Self {
        Rejection {
            kind,
            detail: detail.into(),
            header,
        }
    }
}

/// Maps an error of the protocol core to a quarantine reason.
pub fn classify(e: &ProtoError) -> RejectKind {
    match e {
        ProtoError::Rejected(r) => match r {
            Rejected::DifficultyTooLow { .. } => RejectKind::LowDifficulty,
            Rejected::InsufficientWork { .. } => RejectKind::InsufficientWork,
            Rejected::BadSignature => RejectKind::BadSignature,
            Rejected::MerkleRootMismatch => RejectKind::MerkleMismatch,
            Rejected::WrongRelay => RejectKind::UnknownRelay,
            Rejected::HeightMismatch | Rejected::PrevHashMismatch => RejectKind::Fork,
            Rejected::Leaf { fault, .. } => match fault {
                LeafFault::Malformed(_) => RejectKind::MalformedFrame,
                LeafFault::UnknownMeter => RejectKind::UnknownMeter,
                LeafFault::BadHopTag => RejectKind::BadHopTag,
                // The server applies no replay window to leaves (§9.5).
                _ => RejectKind::BadTag,
            },
            Rejected::UnknownMeter | Rejected::UnknownKeyId => RejectKind::UnknownMeter,
            Rejected::BadTag => RejectKind::BadTag,
            _ => RejectKind::Malformed,
        },
        _ => RejectKind::Malformed,
    }
}

/// Verifies `payload` as a block with the keyring's keys, requiring at least
/// `min_difficulty`. On an unknown relay or meter the registry is reloaded
/// (rate-limited) and the check repeated once before the block is refused.
// The error carries the parsed header for the receipt; it is no larger than the success value.
#[allow(clippy::result_large_err)]
pub fn verify_payload(
    keys: &mut Keyring,
    min_difficulty: u8,
    payload: &[u8],
) -> Result<VerifiedBlockData, Rejection> {
    if payload.len() > MAX_BLOCK_BYTES {
        let header = payload
            .get(..100)
            .and_then(|h| BlockHeaderRepr::parse(h).ok());
        return Err(Rejection::new(
            RejectKind::Oversize,
            format!(
                "{} bytes, more than the largest block ({MAX_BLOCK_BYTES} bytes)",
                payload.len()
            ),
            header,
        ));
    }
    let header = match BlockPacket::new_checked(payload) {
        Ok(p) => *p.header(),
        Err(m) => {
            let header = payload
                .get(..100)
                .and_then(|h| BlockHeaderRepr::parse(h).ok());
            return Err(Rejection::new(
                RejectKind::Malformed,
                format!("not a block: {m}"),
                header,
            ));
        }
    };
    if keys.relay_key(header.relay_id).is_none() {
        keys.reload_relays();
    }
    let Some(&relay_key) = keys.relay_key(header.relay_id) else {
        return Err(Rejection::new(
            RejectKind::UnknownRelay,
            format!("relay {} is not in relays.toml", header.relay_id),
            Some(header),
        ));
    };
    let policy = VerifyPolicy {
        relay_id: header.relay_id,
        min_difficulty,
    };
    let mut readings = Vec::with_capacity(header.leaf_count as usize * 6);
    let mut attempt = 0;
    let verified = loop {
        readings.clear();
        let result = verify_block(&RustCrypto, payload, &relay_key, &policy, &*keys, |leaf| {
            let (meter_id, epoch) = (leaf.frame.meter_id(), leaf.frame.boot_epoch());
            for (seq, reading) in leaf.body.readings() {
                readings.push(ReadingRow {
                    meter_id,
                    epoch,
                    seq,
                    leaf: leaf.index,
                    reading,
                });
            }
            Ok(())
        });
        match result {
            Ok(v) => break v,
            Err(ProtoError::Rejected(Rejected::Leaf {
                fault: LeafFault::UnknownMeter,
                ..
            })) if attempt == 0 && keys.reload_meters() => {
                attempt += 1;
            }
            Err(e) => return Err(Rejection::new(classify(&e), e.to_string(), Some(header))),
        }
    };
    // Stable: a reading carried twice keeps its earlier leaf first.
    readings.sort_by_key(|r| (r.meter_id, r.epoch, r.seq));
    Ok(VerifiedBlockData {
        header: verified.header,
        hash: verified.hash,
        raw: payload.to_vec(),
        readings,
    })
}

/// Decrypts every leaf of an already stored block (for the ledger check and
/// inclusion proofs). Same checks as [`verify_payload`], no reload.
pub fn reverify_stored(
    keys: &Keyring,
    min_difficulty: u8,
    raw: &[u8],
) -> Result<VerifiedBlockData, ProtoError> {
    let header = *BlockPacket::new_checked(raw)?.header();
    let relay_key = keys
        .relay_key(header.relay_id)
        .ok_or(ProtoError::Rejected(Rejected::WrongRelay))?;
    let policy = VerifyPolicy {
        relay_id: header.relay_id,
        min_difficulty,
    };
    let mut readings = Vec::new();
    let v = verify_block(&RustCrypto, raw, relay_key, &policy, keys, |leaf| {
        let (meter_id, epoch) = (leaf.frame.meter_id(), leaf.frame.boot_epoch());
        for (seq, reading) in leaf.body.readings() {
            readings.push(ReadingRow {
                meter_id,
                epoch,
                seq,
                leaf: leaf.index,
                reading,
            });
        }
        Ok(())
    })?;
    readings.sort_by_key(|r| (r.meter_id, r.epoch, r.seq));
    Ok(VerifiedBlockData {
        header: v.header,
        hash: v.hash,
        raw: raw.to_vec(),
        readings,
    })
}
