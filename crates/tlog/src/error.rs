//! Errors, grouped by who is at fault: the input is malformed
//! ([`Malformed`]), it is well formed but refused ([`Rejected`]), the caller
//! misused the API ([`Misuse`]), or the caller's hash store failed
//! ([`Error::Reader`]).

use thiserror::Error;

/// Any error of this crate.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The input does not follow its format.
    #[error("malformed: {0}")]
    Malformed(#[from] Malformed),
    /// The input is well formed but refused.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejected),
    /// The caller misused the API.
    #[error("misuse: {0}")]
    Misuse(#[from] Misuse),
    /// The caller's [`tlog_tiles::HashReader`] (the store) failed.
    #[error("hash reader: {0}")]
    Reader(#[source] tlog_tiles::Error),
}

/// The input does not follow its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A signed note breaks c2sp.org/signed-note (no blank line before the
    /// signatures, no final newline, a control character, a bad signature
    /// line, bad base64, more than 100 signatures, over 1 MB).
    #[error("signed note")]
    Note,
    /// A verifier key is not `name+hhhhhhhh+base64(type ‖ key)`.
    #[error("verifier key: {0}")]
    VerifierKey(&'static str),
    /// A checkpoint body breaks c2sp.org/tlog-checkpoint.
    #[error("checkpoint body")]
    Checkpoint,
    /// A cosignature line is not `— name base64(key ID ‖ u64 time ‖ 64-byte signature)`.
    #[error("cosignature line")]
    CosignatureLine,
    /// An `add-checkpoint` request body breaks c2sp.org/tlog-witness.
    #[error("add-checkpoint request: {0}")]
    WitnessRequest(&'static str),
    /// A tile path is not `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
    #[error("tile path: {0}")]
    TilePath(&'static str),
    /// An entry bundle ends inside an entry, or holds another number of entries than expected.
    #[error("entry bundle: {0}")]
    EntryBundle(&'static str),
    /// A proof has more hashes than any tree of 2^64 leaves needs.
    #[error("proof longer than 64 hashes")]
    ProofTooLong,
    /// A reading proof's uplink frame is not a valid frame (docs/protocol.md §4).
    #[error("uplink frame: {0}")]
    Frame(gridpow_proto::Malformed),
    /// A reading proof's block header is not a valid header (docs/protocol.md §9.1).
    #[error("block header: {0}")]
    BlockHeader(gridpow_proto::Malformed),
    /// A reading proof's log entry is not a valid entry (docs/protocol.md §15).
    #[error("log entry: {0}")]
    LogEntry(gridpow_proto::Malformed),
}

/// The input is well formed but refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The verifier key's key ID is not the hash of its name, type and key.
    #[error("verifier key ID does not match its name and key")]
    KeyIdMismatch,
    /// The verifier key has a signature type this verifier does not take.
    #[error("signature type {0:#04x} not supported here")]
    UnsupportedKeyType(u8),
    /// The public key is not a canonical Ed25519 point of large order.
    #[error("weak or non-canonical Ed25519 public key")]
    WeakKey,
    /// No signature by the expected key is on the note.
    #[error("not signed by {0}")]
    NotSigned(String),
    /// A signature by a known key (name and key ID match) does not verify:
    /// the whole note is refused (c2sp.org/signed-note).
    #[error("invalid signature by {name}+{key_id:08x}")]
    BadSignature {
        /// The key's name.
        name: String,
        /// The key's ID.
        key_id: u32,
    },
    /// The checkpoint is for another log.
    #[error("checkpoint origin {found:?} is not {expected:?}")]
    WrongOrigin {
        /// The origin the caller expects.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// A cosignature's timestamp is above 2^63 − 1.
    #[error("cosignature timestamp above 2^63-1")]
    TimestampTooLarge,
    /// An inclusion or consistency proof does not verify.
    #[error("proof does not verify")]
    InvalidProof,
    /// The requested index, tree size or tile lies beyond the tree.
    #[error("beyond the tree")]
    BeyondTree,
    /// A tile does not hash to what the checkpoint (or the tile above) says.
    #[error("tile inconsistent with the checkpoint")]
    InconsistentTile,
    /// A tile needed to verify is missing.
    #[error("tile {0} missing")]
    MissingTile(String),
    /// An entry does not hash to its leaf hash.
    #[error("entry {0} does not match its leaf hash")]
    EntryMismatch(u64),
    /// A reading proof has another format tag than `gridpow-reading-proof/v1`.
    #[error("proof format {0:?} is not gridpow-reading-proof/v1")]
    UnsupportedFormat(String),
    /// A reading proof's frame hash and block path do not lead to the
    /// header's Merkle root at the frame's leaf index.
    #[error("block path: the frame is not leaf {leaf_index} of the block's {leaf_count} leaves (its audit path does not lead to the header's Merkle root)")]
    FrameNotInBlock {
        /// The leaf index the proof claims.
        leaf_index: u32,
        /// The header's leaf count.
        leaf_count: u32,
    },
    /// A reading proof's frame is another meter's than its reading's.
    #[error("reading: the frame is meter {frame}'s, the reading names meter {reading}")]
    WrongMeter {
        /// The meter id in the frame's clear header.
        frame: u32,
        /// The meter id the reading names.
        reading: u32,
    },
    /// A reading proof's frame is of another boot epoch than its reading's.
    #[error("reading: the frame is of boot epoch {frame}, the reading names epoch {reading}")]
    WrongEpoch {
        /// The boot epoch in the frame's clear header.
        frame: u32,
        /// The boot epoch the reading names.
        reading: u32,
    },
    /// A reading proof's frame does not carry the reading's sequence number.
    #[error("reading: seq {seq} is not among the frame's readings {first}..={last}")]
    SeqNotInFrame {
        /// The sequence number the reading names.
        seq: u32,
        /// The frame's first sequence number.
        first: u32,
        /// The frame's last sequence number.
        last: u32,
    },
    /// A reading proof's log entry names another block than its header: the
    /// field named differs.
    #[error("log entry: its {0} is not the block header's")]
    EntryNotForBlock(&'static str),
    /// A reading proof's log entry hash and log path do not lead to the
    /// checkpoint's root at the entry's log index.
    #[error("log path: the entry is not leaf {log_index} of the checkpoint's tree of {tree_size} (its audit path does not lead to the checkpoint's root)")]
    EntryNotInLog {
        /// The log index the proof claims.
        log_index: u64,
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// Fewer distinct witnesses than required validly cosigned the checkpoint.
    #[error("cosignatures: {got} valid from distinct witnesses, {needed} required")]
    TooFewCosignatures {
        /// Cosignatures required.
        needed: usize,
        /// Valid cosignatures by distinct witness keys found.
        got: usize,
    },
    /// A frame does not open under the end-to-end key given (a wrong key, or
    /// a frame the meter did not seal).
    #[error("the frame does not open under this end-to-end key")]
    FrameDoesNotOpen,
    /// The reading decrypted from the frame differs from the one the proof states.
    #[error("the reading sealed in the frame differs from the one the proof states")]
    ValuesDiffer,
}

/// The caller misused the API.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Misuse {
    /// A key name is empty or holds a space or a `+` (c2sp.org/signed-note).
    #[error("invalid key name {0:?}")]
    KeyName(String),
    /// A note text to sign is empty, lacks its final newline or holds a control character.
    #[error("note text to sign is not a valid note text")]
    NoteText,
    /// An origin is empty or holds a newline or control character.
    #[error("invalid origin {0:?}")]
    Origin(String),
    /// Two verifiers given for one note have the same name and key ID.
    #[error("two verifiers for {name}+{key_id:08x}")]
    AmbiguousKey {
        /// The keys' name.
        name: String,
        /// The keys' ID.
        key_id: u32,
    },
    /// An entry is longer than an entry bundle can hold (65 535 bytes).
    #[error("entry of {0} bytes does not fit a bundle")]
    EntryTooLong(usize),
    /// The hash reader returned another number of hashes than asked for.
    #[error("hash reader returned {got} hashes for {asked} indexes")]
    ReaderCount {
        /// Hashes asked for.
        asked: usize,
        /// Hashes returned.
        got: usize,
    },
    /// A hash tile was asked of an entry-bundle path, or the other way round.
    #[error("tile path of the other kind (hash tile or entry bundle)")]
    NotThisKind,
    /// A cosignature time is 0 (never allowed in a response) or above 2^63 − 1.
    #[error("cosignature time {0} out of range")]
    Time(u64),
}

/// Maps an error of tlog_tiles' proof and tile functions: its proof and tile
/// verdicts are ours, anything else came from the reader.
pub(crate) fn from_tlog(e: tlog_tiles::Error) -> Error {
    match e {
        tlog_tiles::Error::InvalidProof => Rejected::InvalidProof.into(),
        tlog_tiles::Error::InconsistentTile => Rejected::InconsistentTile.into(),
        tlog_tiles::Error::IndexesNotInTree => Rejected::BeyondTree.into(),
        other => Error::Reader(other),
    }
}
