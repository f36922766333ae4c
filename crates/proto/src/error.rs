//! Errors, grouped by who is at fault: the sender of malformed bytes, a
//! well-formed message that policy or cryptography rejects, the caller
//! misusing the API, or a fixed capacity being reached.
//!
//! All are small and `Copy`; IO errors never appear here.

use core::fmt;

/// Any error of the protocol core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not form a valid message.
    Malformed(Malformed),
    /// The message is well formed but refused (authentication, replay, PoW, chain).
    Rejected(Rejected),
    /// The caller used the API wrongly (for example a buffer too small).
    Misuse(Misuse),
    /// A fixed capacity was reached.
    Capacity(Capacity),
}

/// The bytes do not form a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// Shorter than the smallest valid message of its type.
    TooShort,
    /// Longer than the largest valid message of its type.
    TooLong,
    /// The version byte is not one this implementation speaks.
    UnsupportedVersion(u8),
    /// The type byte is not the expected message type.
    WrongType(u8),
    /// The length does not hold a whole number of readings, or holds none.
    BadReadingCount,
    /// A reserved field is not zero.
    NonZeroReserved,
    /// A block's leaves do not fill it exactly: a length prefix runs past
    /// the end, or bytes are left after `leaf_count` leaves.
    BadLeafFraming,
    /// A block's leaf length prefix is 0 or above 250 (what ESP-NOW carries).
    BadLeafLength,
    /// A serial message's COBS encoding holds a zero byte.
    BadCobs,
    /// A block declares more leaves than the protocol allows.
    TooManyLeaves,
    /// An enumerated field holds a value this version does not define.
    UnknownValue,
    /// A checksum (serial framing CRC) does not match.
    BadChecksum,
    /// An uplink's sequence numbers would run past 2^32−1 (they never wrap).
    SeqOverflow,
}

/// Why a leaf (a sealed uplink frame inside a block) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeafFault {
    /// The leaf is not a valid uplink frame.
    Malformed(Malformed),
    /// No key is known for the leaf's meter and key id.
    UnknownMeter,
    /// The hop tag (meter's hop key, over the whole frame) does not verify.
    BadHopTag,
    /// The end-to-end tag (meter's end-to-end key, over the readings) does not verify:
    /// the frame was altered or invented by someone without the meter's end-to-end key.
    BadTag,
    /// The verifier's replay policy refused the leaf (already seen or too old).
    Replay,
}

/// A well-formed message that is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// The sender's MAC address is not on the allow-list (first, cheap filter).
    MacNotAllowed,
    /// The MAC address is allowed but registered to another meter.
    MacMismatch,
    /// The meter id is not in the registry.
    UnknownMeter,
    /// The key id is not the one registered for this meter.
    UnknownKeyId,
    /// The uplink's hop tag (or an ACK's tag) does not verify.
    BadTag,
    /// The uplink's end-to-end tag does not verify (checked by the grid server only).
    BadEndToEndTag,
    /// The (boot epoch, counter) pair was already used or lies below the replay window.
    Replay,
    /// The boot epoch is older than the newest one seen from this meter.
    StaleEpoch,
    /// An ACK that does not match the frame in flight (late, replayed or foreign).
    UnexpectedAck,
    /// The relay's signature over the block header does not verify.
    BadSignature,
    /// An Ed25519 public key is not a canonical encoding of a point, or is
    /// of small order (§9.2): it would verify forged signatures.
    WeakPublicKey,
    /// The block hash has fewer leading zero bits than required.
    InsufficientWork {
        /// Difficulty the verifier requires.
        required: u8,
        /// Leading zero bits the header hash actually has.
        actual: u8,
    },
    /// The header claims less difficulty than the verifier requires.
    DifficultyTooLow {
        /// Difficulty the verifier requires.
        required: u8,
        /// Difficulty written in the header.
        claimed: u8,
    },
    /// The Merkle root over the leaves differs from the header's.
    MerkleRootMismatch,
    /// The block is signed by a relay other than the expected one.
    WrongRelay,
    /// The block's height does not follow the previous block's.
    HeightMismatch,
    /// The block's previous-hash field does not name the previous block.
    PrevHashMismatch,
    /// A leaf of the block is refused.
    Leaf {
        /// Zero-based index of the leaf in the block.
        index: u32,
        /// Why.
        fault: LeafFault,
    },
}

/// The caller used the API wrongly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misuse {
    /// An output buffer is too small for the message.
    BufferTooSmall,
    /// A parameter is outside its documented range.
    InvalidArgument,
    /// The frame counter of this boot epoch is exhausted; start a new epoch.
    CounterExhausted,
    /// The sequence numbers of this boot epoch are exhausted; start a new epoch.
    SeqExhausted,
}

/// A fixed capacity was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capacity {
    /// The meter registry is full.
    RegistryFull,
    /// The block buffer cannot take another leaf.
    BlockFull,
    /// Every outbox slot holds a block awaiting its receipt.
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

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(e) => write!(f, "malformed: {e}"),
            Error::Rejected(e) => write!(f, "rejected: {e}"),
            Error::Misuse(e) => write!(f, "misuse: {e}"),
            Error::Capacity(e) => write!(f, "capacity: {e}"),
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::TooShort => f.write_str("message too short"),
            Malformed::TooLong => f.write_str("message too long"),
            Malformed::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Malformed::WrongType(t) => write!(f, "unexpected message type {t:#04x}"),
            Malformed::BadReadingCount => f.write_str("length does not hold 1 to 6 whole readings"),
            Malformed::NonZeroReserved => f.write_str("reserved field is not zero"),
            Malformed::BadLeafFraming => {
                f.write_str("leaves do not fill the block exactly (leaf_count and length prefixes)")
            }
            Malformed::BadLeafLength => f.write_str("a leaf length prefix is 0 or above 250"),
            Malformed::BadCobs => f.write_str("COBS encoding holds a zero byte"),
            Malformed::TooManyLeaves => f.write_str("too many leaves"),
            Malformed::UnknownValue => f.write_str("field value not defined by this version"),
            Malformed::BadChecksum => f.write_str("checksum mismatch"),
            Malformed::SeqOverflow => {
                f.write_str("sequence numbers run past 2^32-1 (a meter starts a new epoch first)")
            }
        }
    }
}

impl fmt::Display for LeafFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafFault::Malformed(m) => write!(f, "malformed frame ({m})"),
            LeafFault::UnknownMeter => f.write_str("unknown meter or key id"),
            LeafFault::BadHopTag => f.write_str("meter hop tag does not verify"),
            LeafFault::BadTag => f.write_str("meter end-to-end tag does not verify"),
            LeafFault::Replay => f.write_str("replayed frame"),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::MacNotAllowed => f.write_str("sender MAC not on the allow-list"),
            Rejected::MacMismatch => f.write_str("sender MAC registered to another meter"),
            Rejected::UnknownMeter => f.write_str("unknown meter"),
            Rejected::UnknownKeyId => f.write_str("unknown key id"),
            Rejected::BadTag => f.write_str("authentication tag does not verify"),
            Rejected::BadEndToEndTag => f.write_str("end-to-end tag does not verify"),
            Rejected::Replay => f.write_str("replayed or too old counter"),
            Rejected::StaleEpoch => f.write_str("boot epoch older than the newest seen"),
            Rejected::UnexpectedAck => f.write_str("ACK does not match the frame in flight"),
            Rejected::BadSignature => f.write_str("relay signature does not verify"),
            Rejected::WeakPublicKey => f.write_str(
                "Ed25519 public key is not canonical or is of small order (protocol §9.2)",
            ),
            Rejected::InsufficientWork { required, actual } => {
                write!(
                    f,
                    "proof of work has {actual} leading zero bits, {required} required"
                )
            }
            Rejected::DifficultyTooLow { required, claimed } => {
                write!(
                    f,
                    "block difficulty {claimed} below the required {required}"
                )
            }
            Rejected::MerkleRootMismatch => f.write_str("Merkle root does not match the leaves"),
            Rejected::WrongRelay => f.write_str("block from an unexpected relay"),
            Rejected::HeightMismatch => f.write_str("block height does not follow its parent"),
            Rejected::PrevHashMismatch => f.write_str("previous-block hash does not match"),
            Rejected::Leaf { index, fault } => write!(f, "leaf {index}: {fault}"),
        }
    }
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misuse::BufferTooSmall => f.write_str("output buffer too small"),
            Misuse::InvalidArgument => f.write_str("argument out of range"),
            Misuse::CounterExhausted => {
                f.write_str("frame counter exhausted; start a new boot epoch")
            }
            Misuse::SeqExhausted => {
                f.write_str("sequence numbers exhausted; start a new boot epoch")
            }
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capacity::RegistryFull => f.write_str("meter registry full"),
            Capacity::BlockFull => f.write_str("block full"),
            Capacity::OutboxFull => f.write_str("outbox full: every slot awaits a receipt"),
        }
    }
}

impl core::error::Error for Error {}
impl core::error::Error for Malformed {}
impl core::error::Error for Rejected {}
impl core::error::Error for Misuse {}
impl core::error::Error for Capacity {}
impl core::error::Error for LeafFault {}
