//! AES-CCM (RFC 3610, NIST SP 800-38C) with M = 16 (tag) and L = 2 (length
//! field), generic over the block encryption, so the software provider runs a
//! whole message inside one AES backend call (the `aes` crate's per-call
//! overhead dominated 36-byte messages) and firmware can plug in the ESP32's
//! AES accelerator. Cross-checked against the `ccm` crate in the tests.

use super::{ct_eq, NONCE_LEN, TAG_LEN};

/// Longest message CCM with L = 2 can carry.
pub const MAX_MESSAGE: usize = u16::MAX as usize;
/// Longest associated data this implementation encodes (the two-byte form).
pub const MAX_AAD: usize = 0xff00 - 1;

/// Flags of B0: Adata bit, M' = (16 − 2) / 2 = 7, L' = L − 1 = 1.
const fn b0_flags(has_aad: bool) -> u8 {
    (if has_aad { 0x40 } else { 0 }) | (7 << 3) | 1
}

fn counter_block(nonce: &[u8; NONCE_LEN], i: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 1; // L' = 1
    a[1..14].copy_from_slice(nonce);
    a[14..].copy_from_slice(&i.to_be_bytes());
    a
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= *s;
    }
}

/// CBC-MAC over B0, the encoded associated data and the message.
fn cbc_mac(
    enc: &mut impl FnMut(&mut [u8; 16]),
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    msg: &[u8],
) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[0] = b0_flags(!aad.is_empty());
    x[1..14].copy_from_slice(nonce);
    x[14..].copy_from_slice(&(msg.len() as u16).to_be_bytes());
    enc(&mut x);
    if !aad.is_empty() {
        // First block: 2-byte length, then as much AAD as fits.
        let len = (aad.len() as u16).to_be_bytes();
        let mut first = [0u8; 16];
        first[..2].copy_from_slice(&len);
        let take = aad.len().min(14);
        first[2..2 + take].copy_from_slice(&aad[..take]);
        xor_into(&mut x, &first);
        enc(&mut x);
        for chunk in aad[take..].chunks(16) {
            xor_into(&mut x, chunk);
            enc(&mut x);
        }
    }
    for chunk in msg.chunks(16) {
        xor_into(&mut x, chunk);
        enc(&mut x);
    }
    x
}

/// CTR keystream applied to `buf` starting at counter 1.
fn ctr(enc: &mut impl FnMut(&mut [u8; 16]), nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(16).enumerate() {
        let mut s = counter_block(nonce, i as u16 + 1);
        enc(&mut s);
        xor_into(chunk, &s);
    }
}

/// Encrypts `buf` in place and returns the tag. `None` if the message or the
/// associated data is too long for L = 2.
pub fn seal_with(
    enc: &mut impl FnMut(&mut [u8; 16]),
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    if buf.len() > MAX_MESSAGE || aad.len() > MAX_AAD {
        return None;
    }
    let mut t = cbc_mac(enc, nonce, aad, buf);
    let mut s0 = counter_block(nonce, 0);
    enc(&mut s0);
    xor_into(&mut t, &s0);
    ctr(enc, nonce, buf);
    Some(t)
}

/// Decrypts `buf` in place and checks `tag` in constant time; on failure the
/// buffer is zeroed and `false` returned, so no unauthenticated plaintext leaks.
pub fn open_with(
    enc: &mut impl FnMut(&mut [u8; 16]),
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    if buf.len() > MAX_MESSAGE || aad.len() > MAX_AAD {
        return false;
    }
    ctr(enc, nonce, buf);
    let mut t = cbc_mac(enc, nonce, aad, buf);
    let mut s0 = counter_block(nonce, 0);
    enc(&mut s0);
    xor_into(&mut t, &s0);
    if ct_eq(&t, tag) {
        true
    } else {
        buf.fill(0);
        false
    }
}
