//! Errors, grouped by who is at fault: the sender of malformed bytes, a
//! well-formed message that policy or cryptography rejects, the caller
//! misusing the API, or a fixed capacity being reached.
//!
//! All are small and `Copy`; IO errors never appear here. Messages come from
//! `thiserror` (without `std`); no error has a `source`, each message names
//! its cause.

/// Any error of the protocol core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not form a valid message.
    #[error("malformed: {0}")]
    Malformed(Malformed),
    /// The message is well formed but refused (authentication, replay, PoW, chain).
    #[error("rejected: {0}")]
    Rejected(Rejected),
    /// The caller used the API wrongly (for example a buffer too small).
    #[error("misuse: {0}")]
    Misuse(Misuse),
    /// A fixed capacity was reached.
    #[error("capacity: {0}")]
    Capacity(Capacity),
}

/// The bytes do not form a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Shorter than the smallest valid message of its type.
    #[error("message too short")]
    TooShort,
    /// Longer than the largest valid message of its type.
    #[error("message too long")]
    TooLong,
    /// The version byte is not one this implementation speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The type byte is not the expected message type.
    #[error("unexpected message type {0:#04x}")]
    WrongType(u8),
    /// The length does not hold a whole number of readings, or holds none.
    #[error("length does not hold 1 to 6 whole readings")]
    BadReadingCount,
    /// A reserved field is not zero.
    #[error("reserved field is not zero")]
    NonZeroReserved,
    /// A block's leaves do not fill it exactly: a length prefix runs past
    /// the end, or bytes are left after `leaf_count` leaves.
    #[error("leaves do not fill the block exactly (leaf_count and length prefixes)")]
    BadLeafFraming,
    /// A block's leaf length prefix is 0 or above 250 (what ESP-NOW carries).
    #[error("a leaf length prefix is 0 or above 250")]
    BadLeafLength,
    /// A serial message's COBS encoding holds a zero byte.
    #[error("COBS encoding holds a zero byte")]
    BadCobs,
    /// A block declares more leaves than the protocol allows.
    #[error("too many leaves")]
    TooManyLeaves,
    /// An enumerated field holds a value this version does not define.
    #[error("field value not defined by this version")]
    UnknownValue,
    /// A checksum (serial framing CRC) does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// An uplink's sequence numbers would run past 2^32−1 (they never wrap).
    #[error("sequence numbers run past 2^32-1 (a meter starts a new epoch first)")]
    SeqOverflow,
    /// A signed note, checkpoint or verifier key does not follow its C2SP
    /// text format (docs/ledger.md).
    #[error("not a well-formed signed note, checkpoint or verifier key")]
    BadNote,
}

/// Why a leaf (a sealed uplink frame inside a block) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeafFault {
    /// The leaf is not a valid uplink frame.
    #[error("malformed frame ({0})")]
    Malformed(Malformed),
    /// No key is known for the leaf's meter and key id.
    #[error("unknown meter or key id")]
    UnknownMeter,
    /// The hop tag (meter's hop key, over the whole frame) does not verify.
    #[error("meter hop tag does not verify")]
    BadHopTag,
    /// The end-to-end tag (meter's end-to-end key, over the readings) does not verify:
    /// the frame was altered or invented by someone without the meter's end-to-end key.
    #[error("meter end-to-end tag does not verify")]
    BadTag,
    /// The verifier's replay policy refused the leaf (already seen or too old).
    #[error("replayed frame")]
    Replay,
}

/// A well-formed message that is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The sender's MAC address is not on the allow-list (first, cheap filter).
    #[error("sender MAC not on the allow-list")]
    MacNotAllowed,
    /// The MAC address is allowed but registered to another meter.
    #[error("sender MAC registered to another meter")]
    MacMismatch,
    /// The meter id is not in the registry.
    #[error("unknown meter")]
    UnknownMeter,
    /// The key id is not the one registered for this meter.
    #[error("unknown key id")]
    UnknownKeyId,
    /// The uplink's hop tag (or an ACK's tag) does not verify.
    #[error("authentication tag does not verify")]
    BadTag,
    /// The uplink's end-to-end tag does not verify (checked by the grid server only).
    #[error("end-to-end tag does not verify")]
    BadEndToEndTag,
    /// The (boot epoch, counter) pair was already used or lies below the replay window.
    #[error("replayed or too old counter")]
    Replay,
    /// The boot epoch is older than the newest one seen from this meter.
    #[error("boot epoch older than the newest seen")]
    StaleEpoch,
    /// An ACK that does not match the frame in flight (late, replayed or foreign).
    #[error("ACK does not match the frame in flight")]
    UnexpectedAck,
    /// An authentic ACK of the frame the meter confirmed last: a second relay
    /// in range answered too, or a relay repeated its ACK. Ignored (§5).
    #[error("ACK of a frame already confirmed (a second relay in range)")]
    AlreadyConfirmed,
    /// The relay's signature over the block header does not verify.
    #[error("relay signature does not verify")]
    BadSignature,
    /// A checkpoint names another log (origin) than the one watched, or no
    /// signature line of it is by the log's note key.
    #[error("checkpoint is not signed by the watched log's note key")]
    NotSignedByLog,
    /// An Ed25519 public key is not a canonical encoding of a point, or is
    /// of small order (§9.2): it would verify forged signatures.
    #[error("Ed25519 public key is not canonical or is of small order (protocol §9.2)")]
    WeakPublicKey,
    /// The block hash has fewer leading zero bits than required.
    #[error("proof of work has {actual} leading zero bits, {required} required")]
    InsufficientWork {
        /// Difficulty the verifier requires.
        required: u8,
        /// Leading zero bits the header hash actually has.
        actual: u8,
    },
    /// The header claims less difficulty than the verifier requires.
    #[error("block difficulty {claimed} below the required {required}")]
    DifficultyTooLow {
        /// Difficulty the verifier requires.
        required: u8,
        /// Difficulty written in the header.
        claimed: u8,
    },
    /// The Merkle root over the leaves differs from the header's.
    #[error("Merkle root does not match the leaves")]
    MerkleRootMismatch,
    /// The block is signed by a relay other than the expected one.
    #[error("block from an unexpected relay")]
    WrongRelay,
    /// The block's height does not follow the previous block's.
    #[error("block height does not follow its parent")]
    HeightMismatch,
    /// The block's previous-hash field does not name the previous block.
    #[error("previous-block hash does not match")]
    PrevHashMismatch,
    /// A leaf of the block is refused.
    #[error("leaf {index}: {fault}")]
    Leaf {
        /// Zero-based index of the leaf in the block.
        index: u32,
        /// Why.
        fault: LeafFault,
    },
}

/// The caller used the API wrongly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misuse {
    /// An output buffer is too small for the message.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A parameter is outside its documented range.
    #[error("argument out of range")]
    InvalidArgument,
    /// The frame counter of this boot epoch is exhausted; start a new epoch.
    #[error("frame counter exhausted; start a new boot epoch")]
    CounterExhausted,
    /// The sequence numbers of this boot epoch are exhausted; start a new epoch.
    #[error("sequence numbers exhausted; start a new boot epoch")]
    SeqExhausted,
}

/// A fixed capacity was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Capacity {
    /// The meter registry is full.
    #[error("meter registry full")]
    RegistryFull,
    /// A meter entry already holds hop keys under two other key ids.
    #[error("a meter's hop keys under a third key id")]
    TooManyKeyIds,
    /// The block buffer cannot take another leaf.
    #[error("block full")]
    BlockFull,
    /// Every outbox slot holds a block awaiting its receipt.
    #[error("outbox full: every slot awaits a receipt")]
    OutboxFull,
}

impl From<Malformed> for Error {
    fn from(e: Malformed) -> Self {
        Error::Malformed(e)
    }
}
impl From<Rejected> for Error {
    fn from(e: Rejected) -> Self {
        Error::Rejected(e)
    }
}
impl From<Misuse> for Error {
    fn from(e: Misuse) -> Self {
        Error::Misuse(e)
    }
}
impl From<Capacity> for Error {
    fn from(e: Capacity) -> Self {
        Error::Capacity(e)
    }
}
