//! Proof-of-work search over a SHA-256 engine that can resume from a midstate
//! (spec §9.4): the first 64 header bytes are absorbed once per chunk, and
//! each nonce costs one compression of the second block.
//!
//! The ESP32 SHA accelerator can save and restore its state
//! (`esp_hal::sha::Context`), which is what [`PowHasher`] asks for; the
//! firmware implements it with the peripheral and [`SoftPowHasher`] is the
//! software fallback. The search runs in bounded chunks so the relay keeps
//! receiving and ACKing frames while it solves.

use gridpow_proto::pow::leading_zero_bits;
use gridpow_proto::wire::block::{BlockHeaderRepr, HEADER_LEN, NONCE_OFFSET};
use gridpow_proto::Hash;

/// Bytes of the header after the first 64-byte block.
pub const TAIL_LEN: usize = HEADER_LEN - 64;

/// A SHA-256 engine that hashes `first ‖ tail` many times for one `first`.
pub trait PowHasher {
    /// Absorbs the first 64 header bytes (kept until the next `begin`).
    fn begin(&mut self, first: &[u8; 64]);
    /// SHA-256 of `first ‖ tail` (100 bytes in all).
    fn hash_tail(&mut self, tail: &[u8; TAIL_LEN]) -> Hash;
}

/// The software midstate hasher (RustCrypto's compression function).
#[derive(Clone, Debug, Default)]
pub struct SoftPowHasher {
    midstate: [u32; 8],
}

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl PowHasher for SoftPowHasher {
    fn begin(&mut self, first: &[u8; 64]) {
        let mut st = SHA256_IV;
        sha2::block_api::compress256(&mut st, &[*first]);
        self.midstate = st;
    }

    fn hash_tail(&mut self, tail: &[u8; TAIL_LEN]) -> Hash {
        let mut block = [0u8; 64];
        block[..TAIL_LEN].copy_from_slice(tail);
        block[TAIL_LEN] = 0x80;
        block[56..].copy_from_slice(&((HEADER_LEN as u64) * 8).to_be_bytes());
        let mut st = self.midstate;
        sha2::block_api::compress256(&mut st, &[block]);
        let mut out = [0u8; 32];
        for (c, w) in out.chunks_exact_mut(4).zip(st) {
            c.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// A nonce search for one header, advanced in chunks.
#[derive(Clone, Debug)]
pub struct PowSearch {
    first: [u8; 64],
    tail: [u8; TAIL_LEN],
    difficulty: u8,
    next_nonce: u64,
    tries: u64,
}

const TAIL_NONCE: usize = NONCE_OFFSET - 64;

impl PowSearch {
    /// A search for `header` at its difficulty, from nonce `start`.
    pub fn new(header: &BlockHeaderRepr, start: u64) -> Self {
        let b = header.to_bytes();
        let mut first = [0u8; 64];
        first.copy_from_slice(&b[..64]);
        let mut tail = [0u8; TAIL_LEN];
        tail.copy_from_slice(&b[64..]);
        PowSearch {
            first,
            tail,
            difficulty: header.difficulty,
            next_nonce: start,
            tries: 0,
        }
    }

    /// Nonces tried so far.
    pub fn tries(&self) -> u64 {
        self.tries
    }

    /// Tries up to `max_tries` nonces; the first that meets the difficulty.
    pub fn step<H: PowHasher>(&mut self, hasher: &mut H, max_tries: u32) -> Option<u64> {
        hasher.begin(&self.first);
        for _ in 0..max_tries {
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            self.tries += 1;
            self.tail[TAIL_NONCE..TAIL_NONCE + 8].copy_from_slice(&nonce.to_le_bytes());
            let h = hasher.hash_tail(&self.tail);
            if leading_zero_bits(&h) >= self.difficulty {
                return Some(nonce);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_hasher_matches_the_plain_header_hash_and_solves() {
        let mut h = BlockHeaderRepr {
            difficulty: 10,
            relay_id: 7,
            height: 3,
            prev_hash: [1; 32],
            merkle_root: [2; 32],
            leaf_count: 4,
            time_ms: 99,
            nonce: 0,
        };
        let mut s = PowSearch::new(&h, 0);
        let mut hasher = SoftPowHasher::default();
        let nonce = loop {
            if let Some(n) = s.step(&mut hasher, 100) {
                break n;
            }
        };
        h.nonce = nonce;
        assert!(leading_zero_bits(&h.hash()) >= 10);
        // The same nonce as the protocol crate's own solver finds.
        let mut reference = h;
        reference.nonce = 0;
        assert_eq!(gridpow_proto::pow::solve_blocking(&mut reference), nonce);
    }
}
