//! c2sp.org/tlog-cosignature, `cosignature/v1`: a witness's timestamped
//! Ed25519 cosignature on a checkpoint (signature type 0x04).
//!
//! ```text
//! key ID    = SHA-256(name ‖ "\n" ‖ 0x04 ‖ public key)[:4]
//! line      = — <name> base64(key ID ‖ timestamp u64 BE ‖ Ed25519 signature)
//! message   = "cosignature/v1\n" ‖ "time " decimal(timestamp) "\n" ‖ checkpoint body
//! ```
//!
//! The checkpoint body is the whole note text, extension lines and final
//! newline included. A timestamp never exceeds 2^63 − 1.

use base64::prelude::{Engine, BASE64_STANDARD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::crypto::{strict_public_key, CryptoProvider, RustCrypto};
use signed_note::Verifier;

use crate::error::{Error, Malformed, Misuse, Rejected};
use crate::note::{check_name, key_id, parse_vkey, split_note, vkey_string};

/// Signature type of `cosignature/v1` (timestamped Ed25519 cosignatures).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;

/// The largest timestamp a cosignature may carry.
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// The message a `cosignature/v1` signs.
pub fn cosigned_message(checkpoint_body: &str, timestamp: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    m.extend_from_slice(checkpoint_body.as_bytes());
    m
}

/// A witness's cosigning key.
#[derive(Clone)]
pub struct WitnessKey {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl core::fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WitnessKey")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// The witness named `name` with the Ed25519 private key `seed`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<WitnessKey, Error> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        Ok(WitnessKey {
            name: name.to_owned(),
            key_id: key_id(name, ALG_COSIGNATURE_V1, &key.verifying_key().to_bytes()),
            key,
        })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The verifier key string, `name+hhhhhhhh+base64(0x04 ‖ public key)`.
    pub fn vkey(&self) -> String {
        vkey_string(&self.name, ALG_COSIGNATURE_V1, &self.public_key())
    }

    /// The matching verifier.
    pub fn verifier(&self) -> CosignatureVerifier {
        CosignatureVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public: self.public_key(),
            key: self.key.verifying_key(),
        }
    }

    /// Cosigns a checkpoint body (the note text) at `timestamp` (POSIX
    /// seconds, 1 ..= 2^63 − 1) and returns the signature line, ending in a
    /// newline.
    pub fn cosign(&self, checkpoint_body: &str, timestamp: u64) -> Result<String, Error> {
        if timestamp == 0 || timestamp > MAX_TIMESTAMP {
            return Err(Misuse::Time(timestamp).into());
        }
        let sig = RustCrypto.ed25519_sign(&self.key, &cosigned_message(checkpoint_body, timestamp));
        let mut b = Vec::with_capacity(76);
        b.extend_from_slice(&self.key_id.to_be_bytes());
        b.extend_from_slice(&timestamp.to_be_bytes());
        b.extend_from_slice(&sig);
        Ok(format!("— {} {}\n", self.name, BASE64_STANDARD.encode(b)))
    }
}

/// A witness's cosignature verifier (signature type 0x04), verifying strictly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key_id: u32,
    public: [u8; 32],
    key: VerifyingKey,
}

/// A verified cosignature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's name.
    pub name: String,
    /// The witness key's ID.
    pub key_id: u32,
    /// When the witness cosigned, POSIX seconds.
    pub timestamp: u64,
}

impl CosignatureVerifier {
    /// Parses a verifier key string `name+hhhhhhhh+base64(0x04 ‖ key)`.
    pub fn from_vkey(vkey: &str) -> Result<CosignatureVerifier, Error> {
        let p = parse_vkey(vkey, ALG_COSIGNATURE_V1)?;
        Ok(CosignatureVerifier {
            name: p.name,
            key_id: p.key_id,
            public: p.public,
            key: p.key,
        })
    }

    /// The verifier for the witness `name` with Ed25519 public key `public`.
    pub fn from_public_key(name: &str, public: [u8; 32]) -> Result<CosignatureVerifier, Error> {
        check_name(name)?;
        let key = strict_public_key(&public).map_err(|_| Rejected::WeakKey)?;
        Ok(CosignatureVerifier {
            name: name.to_owned(),
            key_id: key_id(name, ALG_COSIGNATURE_V1, &public),
            public,
            key,
        })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The verifier key string.
    pub fn vkey(&self) -> String {
        vkey_string(&self.name, ALG_COSIGNATURE_V1, &self.public)
    }

    /// Verifies the signature bytes after the key ID (timestamp ‖ signature)
    /// over a checkpoint body; returns the timestamp.
    fn check(&self, body: &[u8], sig: &[u8]) -> Result<u64, Error> {
        let Ok(sig) = <&[u8; 72]>::try_from(sig) else {
            return Err(Malformed::CosignatureLine.into());
        };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&sig[..8]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > MAX_TIMESTAMP {
            return Err(Rejected::TimestampTooLarge.into());
        }
        let Ok(body) = core::str::from_utf8(body) else {
            return Err(Malformed::Note.into());
        };
        let mut s = [0u8; 64];
        s.copy_from_slice(&sig[8..]);
        if RustCrypto.ed25519_verify(&self.key, &cosigned_message(body, timestamp), &s) {
            Ok(timestamp)
        } else {
            Err(Rejected::BadSignature {
                name: self.name.clone(),
                key_id: self.key_id,
            }
            .into())
        }
    }

    /// Verifies one cosignature line (`— name base64(…)`, with or without its
    /// final newline) on a checkpoint body; returns the cosignature.
    pub fn verify_line(&self, checkpoint_body: &str, line: &str) -> Result<Cosignature, Error> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let sig = signed_note::Signature::from_bytes(line.as_bytes())
            .map_err(|_| Malformed::CosignatureLine)?;
        if sig.name() != self.name || sig.id() != self.key_id {
            return Err(Rejected::NotSigned(format!("{}+{:08x}", self.name, self.key_id)).into());
        }
        let timestamp = self.check(checkpoint_body.as_bytes(), sig.signature())?;
        Ok(Cosignature {
            name: self.name.clone(),
            key_id: self.key_id,
            timestamp,
        })
    }

    /// The timestamp in a cosignature's bytes after the key ID, if well formed.
    pub(crate) fn timestamp_of(sig: &[u8]) -> Option<u64> {
        let ts: [u8; 8] = sig.get(..8)?.try_into().ok()?;
        (sig.len() == 72).then_some(u64::from_be_bytes(ts))
    }
}

impl Verifier for CosignatureVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.check(msg, sig).is_ok()
    }
}

/// Adds signature lines (a witness's `add-checkpoint` response, or one
/// cosignature line) to a signed note. A line by a key (name and key ID)
/// already on the note replaces it. Each line must be well formed.
pub fn add_cosignature(note: &str, lines: &str) -> Result<String, Error> {
    let (text, mut sigs) = split_note(note)?;
    if lines.is_empty() || !lines.ends_with('\n') {
        return Err(Malformed::CosignatureLine.into());
    }
    for line in lines.lines() {
        let s = signed_note::Signature::from_bytes(line.as_bytes())
            .map_err(|_| Malformed::CosignatureLine)?;
        sigs.retain(|old| !(old.name == s.name() && old.key_id == s.id()));
        sigs.push(crate::note::NoteSignature {
            name: s.name().to_owned(),
            key_id: s.id(),
            signature: s.signature().to_vec(),
        });
    }
    let mut out = text;
    out.push('\n');
    for s in &sigs {
        out.push_str(&s.line());
    }
    // Refuse what would not parse back (over 100 signatures, say).
    split_note(&out)?;
    Ok(out)
}

/// The witnesses among `witnesses` whose cosignature on the note verifies,
/// each counted once. The log's own signature is not checked here (see
/// [`crate::checkpoint::open_checkpoint_for`]); a cosignature by a listed
/// witness that fails is not counted.
pub fn valid_cosignatures(
    note: &str,
    witnesses: &[CosignatureVerifier],
) -> Result<Vec<Cosignature>, Error> {
    let (text, sigs) = split_note(note)?;
    let mut out: Vec<Cosignature> = Vec::new();
    for w in witnesses {
        if out.iter().any(|c| c.name == w.name && c.key_id == w.key_id) {
            continue;
        }
        if let Some(c) = sigs
            .iter()
            .filter(|s| s.name == w.name && s.key_id == w.key_id)
            .find_map(|s| w.check(text.as_bytes(), &s.signature).ok())
        {
            out.push(Cosignature {
                name: w.name.clone(),
                key_id: w.key_id,
                timestamp: c,
            });
        }
    }
    Ok(out)
}

/// How many of `witnesses` validly cosigned the note.
pub fn count_cosignatures(note: &str, witnesses: &[CosignatureVerifier]) -> Result<usize, Error> {
    Ok(valid_cosignatures(note, witnesses)?.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::note::NoteSigner;

    #[test]
    fn a_cosignature_line_has_key_id_timestamp_and_signature_and_verifies() {
        let w = WitnessKey::from_seed("witness.example/w1", [0x57; 32]).unwrap();
        let body = "log.example\n5\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
        let line = w.cosign(body, 1_679_315_147).unwrap();
        let b64 = line.trim_end().rsplit_once(' ').unwrap().1;
        let raw = BASE64_STANDARD.decode(b64).unwrap();
        assert_eq!(raw.len(), 76);
        assert_eq!(raw[..4], w.key_id().to_be_bytes());
        assert_eq!(raw[4..12], 1_679_315_147u64.to_be_bytes());
        let v = w.verifier();
        assert_eq!(CosignatureVerifier::from_vkey(&w.vkey()).unwrap(), v);
        assert_eq!(v.verify_line(body, &line).unwrap().timestamp, 1_679_315_147);
        assert!(matches!(
            v.verify_line(
                "log.example\n6\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                &line
            ),
            Err(Error::Rejected(Rejected::BadSignature { .. }))
        ));
        assert!(matches!(
            w.cosign(body, 0),
            Err(Error::Misuse(Misuse::Time(0)))
        ));
        assert!(w.cosign(body, MAX_TIMESTAMP + 1).is_err());
        // A note key's vkey is not a cosignature vkey, and the other way round.
        let log = NoteSigner::from_seed("witness.example/w1", [0x57; 32]).unwrap();
        assert_ne!(log.key_id(), w.key_id());
        assert!(CosignatureVerifier::from_vkey(&log.vkey()).is_err());
        assert!(crate::note::NoteVerifier::from_vkey(&w.vkey()).is_err());
    }

    #[test]
    fn cosignatures_added_to_a_note_are_counted_once_per_witness() {
        let log = NoteSigner::from_seed("log.example", [1; 32]).unwrap();
        let body = "log.example\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
        let note = log.sign_note(body).unwrap();
        let w1 = WitnessKey::from_seed("w.example/1", [2; 32]).unwrap();
        let w2 = WitnessKey::from_seed("w.example/2", [3; 32]).unwrap();
        let n = add_cosignature(&note, &w1.cosign(body, 10).unwrap()).unwrap();
        let n = add_cosignature(&n, &w1.cosign(body, 11).unwrap()).unwrap();
        let n = add_cosignature(&n, &w2.cosign(body, 12).unwrap()).unwrap();
        assert_eq!(n.matches('—').count(), 3, "{n}");
        let vs = [w1.verifier(), w2.verifier(), w1.verifier()];
        let got = valid_cosignatures(&n, &vs).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].timestamp, 11);
        assert_eq!(count_cosignatures(&note, &vs).unwrap(), 0);
        assert!(add_cosignature(&note, "— w.example/1 AAAA").is_err());
        assert_eq!(CosignatureVerifier::timestamp_of(&[0; 72]), Some(0));
        assert_eq!(CosignatureVerifier::timestamp_of(&[0; 71]), None);
    }
}
