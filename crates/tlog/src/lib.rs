//! gridpow's transparency log (docs/ledger.md, docs/protocol.md §15): the
//! public C2SP formats around the grid server's global RFC 9162 log of
//! [`gridpow_proto::wire::LogLeafRepr`] entries.
//!
//! * [`note`]: c2sp.org/signed-note keys, signing and verification;
//! * [`checkpoint`]: c2sp.org/tlog-checkpoint, the signed tree head;
//! * [`cosignature`]: c2sp.org/tlog-cosignature `cosignature/v1`;
//! * [`witness`]: c2sp.org/tlog-witness `add-checkpoint`, sans-IO;
//! * [`tiles`]: c2sp.org/tlog-tiles, serving and auditing tiles and entry bundles;
//! * [`proofs`]: RFC 9162 inclusion and consistency proofs over stored hashes;
//! * [`reading_proof`]: one reading's self-contained proof, frame to witnessed checkpoint.
//!
//! Tile math, checkpoint bodies, stored hashes and proofs are tlog_tiles';
//! note syntax is signed_note's. Keys are plain 32-byte Ed25519 seeds and
//! public keys; verification is the core's strict Ed25519. Nothing here does
//! IO or reads a clock: times are inputs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod cosignature;
pub mod entries;
pub mod error;
pub mod note;
pub mod proofs;
pub mod reading_proof;
pub mod tiles;
pub mod witness;

pub use checkpoint::{
    open_checkpoint, open_checkpoint_for, sign_checkpoint, Checkpoint, OpenedCheckpoint,
};
pub use cosignature::{
    add_cosignature, count_cosignatures, Cosignature, CosignatureVerifier, WitnessKey,
};
pub use entries::{EntryConflict, EntryIndex};
pub use error::{Error, Malformed, Misuse, Rejected};
pub use note::{verify_note, NoteSigner, NoteVerifier, VerifiedNote};
pub use reading_proof::{ProvenReading, ReadingProof, VerifiedReading};
pub use tiles::{TileKind, TilePath};
pub use witness::{Witness, WitnessState};

/// A SHA-256 hash: a leaf, node or root hash of the log.
pub type Hash = [u8; 32];
