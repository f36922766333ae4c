//! Verification of one MQTT payload: everything `gridpow_proto::block::verify_block`
//! checks (framing, difficulty, PoW, relay signature, Merkle root, every
//! meter's tag), with the relay's registered key and the meters' derived keys.
//! The result is either a block ready to store, with its readings decrypted
//! and sorted, or a [`Rejection`] naming the reason, ready for quarantine.
//! Chain links, forks and duplicates are the store's business: they depend on
//! what the database already holds.

use gridpow_proto::block::{verify_block, VerifyPolicy};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{BlockHeaderRepr, BlockPacket};
use gridpow_proto::{Error as ProtoError, LeafFault, Rejected};

use gridpow_store::{ReadingRow, RejectKind, VerifiedBlockData};

use crate::keyring::Keyring;
use ed25519_dalek::VerifyingKey;

/// The largest block message the protocol allows: header and signature plus
/// 65 535 leaves of a length prefix and a 244-byte frame (16 121 774 bytes).
pub const MAX_BLOCK_BYTES: usize = gridpow_proto::wire::block::HEADER_LEN
    + gridpow_proto::wire::block::SIGNATURE_LEN
    + gridpow_proto::wire::block::MAX_LEAVES as usize
        * (gridpow_proto::wire::block::LEAF_PREFIX_LEN + gridpow_proto::wire::uplink::MAX_LEN);

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
    if keys.relay_key(header.relay_id, header.height).is_none() {
        keys.reload_relays();
    }
    let mut relay_key = key_at(keys, &header)?;
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
                    key_id: leaf.frame.key_id(),
                    leaf: leaf.index,
                    reading,
                });
            }
            Ok(())
        });
        match result {
            Ok(v) => break v,
            // A relay key replaced while this server runs: relays.toml names
            // the new key from some height on (at most one reload per
            // interval, so forged signatures cannot make it reread the file).
            Err(ProtoError::Rejected(Rejected::BadSignature))
                if attempt == 0 && keys.reload_relays() =>
            {
                attempt += 1;
                relay_key = key_at(keys, &header)?;
            }
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

/// The key of the block's relay that signs its height, or the refusal
/// naming why there is none (an unknown relay, or a height below its keys').
#[allow(clippy::result_large_err)] // as verify_payload, whose refusal it is
fn key_at(keys: &Keyring, header: &BlockHeaderRepr) -> Result<VerifyingKey, Rejection> {
    if let Some(&k) = keys.relay_key(header.relay_id, header.height) {
        return Ok(k);
    }
    let why = if keys.knows_relay(header.relay_id) {
        format!(
            "no key of relay {} in relays.toml signs height {}",
            header.relay_id, header.height
        )
    } else {
        format!("relay {} is not in relays.toml", header.relay_id)
    };
    Err(Rejection::new(RejectKind::UnknownRelay, why, Some(*header)))
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
        .relay_key(header.relay_id, header.height)
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
                key_id: leaf.frame.key_id(),
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
