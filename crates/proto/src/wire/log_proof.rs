//! Log proofs over MQTT (§16): a relay has no HTTP, so it asks the grid
//! server for the proofs that hold the server to its transparency log on
//! its own topics. The request names what to prove; the answer repeats the
//! request and carries the RFC 9162 path. Neither is signed: a proof is
//! worth only what it verifies against a signed checkpoint.
//!
//! ```text
//! request (type 0x07), 24 bytes
//!  0 version =2 | 1 type 0x07 | 2 kind | 3 reserved =0
//!  4..8     relay id     u32 LE
//!  8..16    first        u64 LE  (inclusion: entry index; consistency: old size)
//! 16..24    second       u64 LE  (inclusion and consistency: tree size)
//!
//! proof (type 0x08), 24 + 32·n bytes, n ≤ 64
//!  0 version =2 | 1 type 0x08 | 2 kind | 3 count n
//!  4..24    relay id, first, second as in the request
//! 24..      n hashes of 32 bytes
//! ```

use super::{check_version_type, get_u32, get_u64, Field, TYPE_LOG_PROOF, TYPE_LOG_PROOF_REQUEST};
use crate::merkle::MAX_PROOF_LEN;
use crate::{Hash, Malformed, Misuse};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const KIND: usize = 2;
    /// Reserved in a request, the hash count in a proof.
    pub const COUNT: usize = 3;
    pub const RELAY_ID: Field = 4..8;
    pub const FIRST: Field = 8..16;
    pub const SECOND: Field = 16..24;
    pub const HASHES: usize = 24;
}

/// Length of a proof request, and of a proof's fixed part.
pub const LOG_PROOF_REQUEST_LEN: usize = 24;
/// Longest proof message.
pub const MAX_LOG_PROOF_LEN: usize = LOG_PROOF_REQUEST_LEN + 32 * MAX_PROOF_LEN;

/// Which proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogProofKind {
    /// Entry `first` is in the tree of size `second` (RFC 9162 §2.1.3).
    Inclusion = 1,
    /// The tree of size `second` extends the one of size `first` (§2.1.4).
    Consistency = 2,
}

/// What a relay asks to be proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogProofRequest {
    /// Which proof.
    pub kind: LogProofKind,
    /// The asking relay (it must match the topic).
    pub relay_id: u32,
    /// Inclusion: the entry index; consistency: the older tree size.
    pub first: u64,
    /// The (newer) tree size.
    pub second: u64,
}

impl LogProofRequest {
    /// Whether the numbers can name a proof: an index inside its tree, or
    /// two non-empty sizes, the first smaller.
    pub fn is_well_formed(&self) -> bool {
        match self.kind {
            LogProofKind::Inclusion => self.first < self.second,
            LogProofKind::Consistency => 0 < self.first && self.first < self.second,
        }
    }

    fn write_head(&self, b: &mut [u8], ty: u8, count: u8) {
        b[field::VERSION] = crate::PROTOCOL_VERSION;
        b[field::TYPE] = ty;
        b[field::KIND] = self.kind as u8;
        b[field::COUNT] = count;
        b[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        b[field::FIRST].copy_from_slice(&self.first.to_le_bytes());
        b[field::SECOND].copy_from_slice(&self.second.to_le_bytes());
    }

    /// The request's bytes.
    pub fn to_bytes(&self) -> [u8; LOG_PROOF_REQUEST_LEN] {
        let mut b = [0u8; LOG_PROOF_REQUEST_LEN];
        self.write_head(&mut b, TYPE_LOG_PROOF_REQUEST, 0);
        b
    }

    /// Parses a request: exact length, known kind, zero reserved byte, and
    /// numbers that can name a proof.
    pub fn parse(b: &[u8]) -> Result<LogProofRequest, Malformed> {
        check_version_type(b, TYPE_LOG_PROOF_REQUEST)?;
        if b.len() < LOG_PROOF_REQUEST_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > LOG_PROOF_REQUEST_LEN {
            return Err(Malformed::TooLong);
        }
        if b[field::COUNT] != 0 {
            return Err(Malformed::NonZeroReserved);
        }
        parse_head(b)
    }

    /// Encodes the answer to this request into `out`; returns its length.
    pub fn emit_proof(&self, hashes: &[Hash], out: &mut [u8]) -> Result<usize, Misuse> {
        let len = LOG_PROOF_REQUEST_LEN + 32 * hashes.len();
        if hashes.len() > MAX_PROOF_LEN || !self.is_well_formed() {
            return Err(Misuse::InvalidArgument);
        }
        let b = out.get_mut(..len).ok_or(Misuse::BufferTooSmall)?;
        self.write_head(b, TYPE_LOG_PROOF, hashes.len() as u8);
        for (chunk, h) in b[field::HASHES..].chunks_exact_mut(32).zip(hashes) {
            chunk.copy_from_slice(h);
        }
        Ok(len)
    }
}

fn parse_head(b: &[u8]) -> Result<LogProofRequest, Malformed> {
    let kind = match b[field::KIND] {
        1 => LogProofKind::Inclusion,
        2 => LogProofKind::Consistency,
        _ => return Err(Malformed::UnknownValue),
    };
    let r = LogProofRequest {
        kind,
        relay_id: get_u32(b, field::RELAY_ID),
        first: get_u64(b, field::FIRST),
        second: get_u64(b, field::SECOND),
    };
    if !r.is_well_formed() {
        return Err(Malformed::UnknownValue);
    }
    Ok(r)
}

/// A parsed proof: the request it answers and its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogProof<'a> {
    /// What this proves.
    pub request: LogProofRequest,
    hashes: &'a [u8],
}

impl<'a> LogProof<'a> {
    /// Parses a proof message: its length must be the fixed part plus
    /// exactly `count` hashes, `count` at most 64.
    pub fn parse(b: &'a [u8]) -> Result<LogProof<'a>, Malformed> {
        check_version_type(b, TYPE_LOG_PROOF)?;
        if b.len() < LOG_PROOF_REQUEST_LEN {
            return Err(Malformed::TooShort);
        }
        let count = usize::from(b[field::COUNT]);
        if count > MAX_PROOF_LEN {
            return Err(Malformed::UnknownValue);
        }
        let want = LOG_PROOF_REQUEST_LEN + 32 * count;
        if b.len() < want {
            return Err(Malformed::TooShort);
        }
        if b.len() > want {
            return Err(Malformed::TooLong);
        }
        Ok(LogProof {
            request: parse_head(b)?,
            hashes: &b[field::HASHES..],
        })
    }

    /// Copies the path into `out` and returns it as hashes.
    pub fn path<'o>(&self, out: &'o mut [Hash; MAX_PROOF_LEN]) -> &'o [Hash] {
        let n = self.hashes.len() / 32;
        for (o, h) in out.iter_mut().zip(self.hashes.chunks_exact(32)) {
            o.copy_from_slice(h);
        }
        &out[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_proofs_round_trip_and_refuse_what_names_no_proof() {
        let r = LogProofRequest {
            kind: LogProofKind::Consistency,
            relay_id: 7,
            first: 3,
            second: 9,
        };
        assert_eq!(LogProofRequest::parse(&r.to_bytes()), Ok(r));
        let mut buf = [0u8; MAX_LOG_PROOF_LEN];
        let n = r.emit_proof(&[[1; 32], [2; 32]], &mut buf).unwrap();
        assert_eq!(n, 24 + 64);
        let p = LogProof::parse(&buf[..n]).unwrap();
        assert_eq!(p.request, r);
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        assert_eq!(p.path(&mut path), &[[1; 32], [2; 32]]);
        assert_eq!(LogProof::parse(&buf[..n - 1]), Err(Malformed::TooShort));
        assert_eq!(
            LogProof::parse(&buf[..n + 1]).unwrap_err(),
            Malformed::TooLong
        );
        for (kind, first, second) in [
            (LogProofKind::Inclusion, 5, 5),
            (LogProofKind::Consistency, 0, 5),
            (LogProofKind::Consistency, 5, 5),
        ] {
            let bad = LogProofRequest {
                kind,
                relay_id: 1,
                first,
                second,
            };
            assert_eq!(
                LogProofRequest::parse(&bad.to_bytes()),
                Err(Malformed::UnknownValue)
            );
            assert_eq!(bad.emit_proof(&[], &mut buf), Err(Misuse::InvalidArgument));
        }
        let mut b = r.to_bytes();
        b[2] = 3;
        assert_eq!(LogProofRequest::parse(&b), Err(Malformed::UnknownValue));
        b = r.to_bytes();
        b[3] = 1;
        assert_eq!(LogProofRequest::parse(&b), Err(Malformed::NonZeroReserved));
    }
}
