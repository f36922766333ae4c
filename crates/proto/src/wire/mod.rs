//! Wire formats: checked views over byte buffers (`*Packet<T>`) and plain
//! representations (`*Repr`) with `parse`, `emit` and `buffer_len`.
//!
//! All integers are little-endian. Field offsets live in one `mod field` per
//! message. `docs/protocol.md` is the normative description.

pub mod ack;
pub mod block;
pub mod log_leaf;
pub mod log_proof;
pub mod reading;
pub mod receipt;
pub mod serial;
pub mod uplink;

pub use ack::{AckPacket, AckRepr};
pub use block::{BlockHeaderRepr, BlockPacket, LeafIter};
pub use log_leaf::{LogLeafRepr, LOG_LEAF_LEN};
pub use log_proof::{LogProof, LogProofKind, LogProofRequest, MAX_LOG_PROOF_LEN};
pub use reading::Reading;
pub use receipt::{LogPosition, ReceiptRepr, ReceiptStatus};
pub use uplink::{UplinkHeader, UplinkPacket};

/// A byte range inside a message.
pub(crate) type Field = core::ops::Range<usize>;

/// Message type byte of an uplink frame.
pub const TYPE_UPLINK: u8 = 0x01;
/// Message type byte of an ACK.
pub const TYPE_ACK: u8 = 0x02;
/// Message type byte of a block header.
pub const TYPE_BLOCK: u8 = 0x03;

/// Message type byte of a commit receipt. 0x04 was the receipt without a
/// log position; it is retired and refused.
pub const TYPE_RECEIPT: u8 = 0x06;

/// Message type byte of a transparency-log entry.
pub const TYPE_LOG_LEAF: u8 = 0x05;

/// Message type byte of a log proof request (relay → server).
pub const TYPE_LOG_PROOF_REQUEST: u8 = 0x07;

/// Message type byte of a log proof (server → relay).
pub const TYPE_LOG_PROOF: u8 = 0x08;

/// Largest ESP-NOW payload (v1.0 frames); every uplink and ACK fits.
pub const ESPNOW_MAX_PAYLOAD: usize = 250;

pub(crate) fn get_u16(b: &[u8], f: Field) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[f]);
    u16::from_le_bytes(a)
}
pub(crate) fn get_u32(b: &[u8], f: Field) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[f]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], f: Field) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[f]);
    u64::from_le_bytes(a)
}

/// Reads the version and type bytes common to all messages and checks them.
pub(crate) fn check_version_type(b: &[u8], expected_type: u8) -> Result<(), crate::Malformed> {
    let (&version, rest) = b.split_first().ok_or(crate::Malformed::TooShort)?;
    if version != crate::PROTOCOL_VERSION {
        return Err(crate::Malformed::UnsupportedVersion(version));
    }
    let &ty = rest.first().ok_or(crate::Malformed::TooShort)?;
    if ty != expected_type {
        return Err(crate::Malformed::WrongType(ty));
    }
    Ok(())
}
