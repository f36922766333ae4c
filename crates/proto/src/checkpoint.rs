//! Checkpoints of the grid server's transparency log, checked without an
//! allocator: the C2SP signed-note and tlog-checkpoint text formats
//! (docs/ledger.md), reduced to what a relay needs: the log's Ed25519 note
//! key from its verifier key string, and a checkpoint's size and root once
//! one of its signature lines verifies under that key.
//!
//! A note is `body ‖ "\n" ‖ signature lines`; the body is the checkpoint
//! (origin, decimal size, base64 root, optional extension lines), each line
//! ending in `\n`; a signature line is `— <name> <base64(key id ‖ sig)>\n`
//! with key id `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4]`. Lines by
//! other keys (witness cosignatures) are skipped.

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;

use crate::crypto::CryptoProvider;
use crate::{Hash, Malformed, Rejected};

/// Longest key name (the log's origin) this module keeps.
pub const MAX_NOTE_NAME: usize = 128;
/// Longest note it reads (checkpoint plus cosignature lines).
pub const MAX_NOTE_LEN: usize = 4096;

const ED25519_ALG: u8 = 0x01;
const SIG_LINE_PREFIX: &[u8] = "\u{2014} ".as_bytes();
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A log's note key: its name (the origin), key id and Ed25519 key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteKey {
    name: [u8; MAX_NOTE_NAME],
    name_len: usize,
    key_id: [u8; 4],
    key: VerifyingKey,
}

/// A verified tree head: the log's size and root hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// RFC 9162 root hash.
    pub root: Hash,
}

impl NoteKey {
    /// Reads a C2SP verifier key `name+keyid(8 hex)+base64(0x01 ‖ key)`,
    /// checking that the key id is the one the name and key give.
    pub fn from_vkey<C: CryptoProvider>(provider: &C, vkey: &str) -> Result<NoteKey, Malformed> {
        // The name holds no '+', the base64 key may.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed::BadNote);
        };
        if !valid_name(name.as_bytes()) || name.len() > MAX_NOTE_NAME || id_hex.len() != 8 {
            return Err(Malformed::BadNote);
        }
        let mut raw = [0u8; 48];
        let n = B64
            .decode_slice(key_b64, &mut raw)
            .map_err(|_| Malformed::BadNote)?;
        if n != 33 || raw[0] != ED25519_ALG {
            return Err(Malformed::BadNote);
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..33]);
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| Malformed::BadNote)?;
        let mut name_buf = [0u8; MAX_NOTE_NAME];
        name_buf[..name.len()].copy_from_slice(name.as_bytes());
        let id = key_id(provider, name.as_bytes(), &pk);
        let mut want = [0u8; 4];
        for (i, w) in want.iter_mut().enumerate() {
            let byte = id_hex.get(2 * i..2 * i + 2).ok_or(Malformed::BadNote)?;
            *w = u8::from_str_radix(byte, 16).map_err(|_| Malformed::BadNote)?;
        }
        if want != id {
            return Err(Malformed::BadNote);
        }
        Ok(NoteKey {
            name: name_buf,
            name_len: name.len(),
            key_id: id,
            key,
        })
    }

    /// The key's name, which is the log's origin.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// Opens a checkpoint: the note must be well formed, its origin line
    /// this key's name, and one signature line by this key must verify over
    /// its body (strict Ed25519).
    pub fn open_checkpoint<C: CryptoProvider>(
        &self,
        provider: &C,
        note: &[u8],
    ) -> Result<TreeHead, crate::Error> {
        if note.len() > MAX_NOTE_LEN {
            return Err(Malformed::TooLong.into());
        }
        // UTF-8 text, no control characters but the line feed.
        if core::str::from_utf8(note).is_err()
            || note.iter().any(|&b| (b < b' ' && b != b'\n') || b == 0x7f)
        {
            return Err(Malformed::BadNote.into());
        }
        let split = find(note, b"\n\n").ok_or(Malformed::BadNote)?;
        let (body, sigs) = (&note[..=split], &note[split + 2..]);
        let head = parse_checkpoint_body(body, self.name())?;
        if sigs.is_empty() || sigs.last() != Some(&b'\n') {
            return Err(Malformed::BadNote.into());
        }
        let mut signed = false;
        for line in sigs[..sigs.len() - 1].split(|&b| b == b'\n') {
            let rest = line
                .strip_prefix(SIG_LINE_PREFIX)
                .ok_or(Malformed::BadNote)?;
            let space = rest
                .iter()
                .rposition(|&b| b == b' ')
                .ok_or(Malformed::BadNote)?;
            let (name, sig_b64) = (&rest[..space], &rest[space + 1..]);
            if !valid_name(name) {
                return Err(Malformed::BadNote.into());
            }
            let mut raw = [0u8; 128];
            let n = B64
                .decode_slice(sig_b64, &mut raw)
                .map_err(|_| Malformed::BadNote)?;
            if n < 5 || name != self.name() || raw[..4] != self.key_id || n != 68 {
                continue;
            }
            let mut sig = [0u8; 64];
            sig.copy_from_slice(&raw[4..68]);
            if provider.ed25519_verify(&self.key, body, &sig) {
                signed = true;
            }
        }
        if signed {
            Ok(head)
        } else {
            Err(Rejected::NotSignedByLog.into())
        }
    }
}

fn key_id<C: CryptoProvider>(provider: &C, name: &[u8], pk: &[u8; 32]) -> [u8; 4] {
    let h = provider.sha256(&[name, b"\n", &[ED25519_ALG], pk]);
    [h[0], h[1], h[2], h[3]]
}

/// A key name: non-empty, no whitespace, no `+`.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b > b' ' && b != b'+' && b != 0x7f)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_checkpoint_body(body: &[u8], origin: &[u8]) -> Result<TreeHead, crate::Error> {
    let mut lines = body[..body.len() - 1].split(|&b| b == b'\n');
    let (Some(o), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(Malformed::BadNote.into());
    };
    if lines.any(<[u8]>::is_empty) {
        return Err(Malformed::BadNote.into());
    }
    if o != origin {
        return Err(Rejected::NotSignedByLog.into());
    }
    let size = parse_decimal(size).ok_or(Malformed::BadNote)?;
    let mut raw = [0u8; 48];
    let n = B64
        .decode_slice(root, &mut raw)
        .map_err(|_| Malformed::BadNote)?;
    if n != 32 {
        return Err(Malformed::BadNote.into());
    }
    let mut r = [0u8; 32];
    r.copy_from_slice(&raw[..32]);
    Ok(TreeHead { size, root: r })
}

/// A decimal u64 without sign or leading zeros.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        if !c.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

/// Notes signed the way the server's signer signs them, from the C2SP
/// text, for this crate's tests.
#[cfg(all(test, feature = "rustcrypto"))]
#[allow(clippy::unwrap_used)] // test helpers
pub(crate) mod test_notes {
    extern crate std;
    use super::*;
    use crate::crypto::RustCrypto;
    use ed25519_dalek::SigningKey;
    use std::string::String;
    use std::vec::Vec;

    fn b64(b: &[u8]) -> String {
        let mut out = [0u8; 128];
        let n = B64.encode_slice(b, &mut out).unwrap();
        String::from(core::str::from_utf8(&out[..n]).unwrap())
    }

    /// `key`'s vkey under `name`.
    pub fn vkey(key: &SigningKey, name: &str) -> String {
        let pk = key.verifying_key().to_bytes();
        let id = key_id(&RustCrypto, name.as_bytes(), &pk);
        let mut kb = [0u8; 33];
        kb[0] = ED25519_ALG;
        kb[1..].copy_from_slice(&pk);
        let hex: String = id.iter().map(|x| std::format!("{x:02x}")).collect();
        std::format!("{name}+{hex}+{}", b64(&kb))
    }

    /// `body`, then `extra` signature lines, then `key`'s line under `name`.
    pub fn note(key: &SigningKey, name: &str, body: &str, extra: &str) -> Vec<u8> {
        let pk = key.verifying_key().to_bytes();
        let mut raw = [0u8; 68];
        raw[..4].copy_from_slice(&key_id(&RustCrypto, name.as_bytes(), &pk));
        raw[4..].copy_from_slice(&RustCrypto.ed25519_sign(key, body.as_bytes()));
        std::format!("{body}\n{extra}\u{2014} {name} {}\n", b64(&raw)).into_bytes()
    }

    /// A checkpoint of `size` and `root` for origin `name`.
    pub fn checkpoint(key: &SigningKey, name: &str, size: u64, root: &Hash) -> Vec<u8> {
        note(
            key,
            name,
            &std::format!("{name}\n{size}\n{}\n", b64(root)),
            "",
        )
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    extern crate std;
    use super::test_notes::{note, vkey};
    use super::*;
    use crate::crypto::RustCrypto;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_checkpoint_opens_under_its_log_key_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let name = "example.org/log";
        let mut rb = [0u8; 44];
        B64.encode_slice([9u8; 32], &mut rb).unwrap();
        let root = core::str::from_utf8(&rb).unwrap();
        let body = std::format!("{name}\n42\n{root}\n");
        let n = note(&key, name, &body, "");
        let vk = vkey(&key, name);
        let k = NoteKey::from_vkey(&RustCrypto, &vk).unwrap();
        assert_eq!(
            k.open_checkpoint(&RustCrypto, &n),
            Ok(TreeHead {
                size: 42,
                root: [9; 32]
            })
        );
        // A witness's line before ours is skipped.
        let other = SigningKey::from_bytes(&[4; 32]);
        let w = note(&other, "witness.example/w", &body, "");
        let cosig = core::str::from_utf8(&w[body.len() + 1..]).unwrap();
        assert!(k
            .open_checkpoint(&RustCrypto, &note(&key, name, &body, cosig))
            .is_ok());
        // Only the witness's signature: not signed by the log.
        assert_eq!(
            k.open_checkpoint(&RustCrypto, &w),
            Err(Rejected::NotSignedByLog.into())
        );
        // Every single-bit change is refused.
        for i in 0..n.len() {
            let mut t = n.clone();
            t[i] ^= 0x01;
            assert!(k.open_checkpoint(&RustCrypto, &t).is_err(), "{i}");
        }
        // Another origin; a size with a leading zero.
        let o = note(&key, name, &std::format!("other\n42\n{root}\n"), "");
        assert!(k.open_checkpoint(&RustCrypto, &o).is_err());
        let z = note(&key, name, &std::format!("{name}\n042\n{root}\n"), "");
        assert_eq!(
            k.open_checkpoint(&RustCrypto, &z),
            Err(Malformed::BadNote.into())
        );
        // A vkey whose key id does not match its name and key.
        let mut wrong = vk.clone();
        let at = wrong.find('+').unwrap() + 1;
        let c = if &wrong[at..at + 1] == "0" { "1" } else { "0" };
        wrong.replace_range(at..at + 1, c);
        assert_eq!(
            NoteKey::from_vkey(&RustCrypto, &wrong),
            Err(Malformed::BadNote)
        );
    }
}
