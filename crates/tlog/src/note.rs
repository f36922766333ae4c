//! c2sp.org/signed-note: a log's Ed25519 note key (signature type 0x01), its
//! verifier key (vkey) string, signing a note text and verifying a note.
//!
//! ```text
//! <text, ending in a newline>
//! <blank line>
//! — <key name> base64(key ID u32 BE ‖ signature)
//! ```
//!
//! The key ID is `SHA-256(name ‖ "\n" ‖ type ‖ public key)[:4]` read big
//! endian, the vkey `name+hex8(key ID)+base64(type ‖ public key)`. Parsing
//! and the signature-line syntax are signed_note's; our keys are
//! ed25519-dalek 3 keys built from plain 32-byte seeds and public keys, and
//! verification is gridpow's strict Ed25519 (docs/protocol.md §9.2, the
//! core's [`CryptoProvider`]).

use base64::prelude::{Engine, BASE64_STANDARD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::crypto::{strict_public_key, CryptoProvider, RustCrypto};
use signed_note::{VerificationError, Verifier, Verifiers};

use crate::error::{Error, Malformed, Misuse, Rejected};

/// Signature type of plain Ed25519 note signatures (c2sp.org/signed-note).
pub const ALG_ED25519: u8 = 0x01;

/// Checks a key name: non-empty, no Unicode space, no `+`.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if signed_note::is_key_name_valid(name) {
        Ok(())
    } else {
        Err(Misuse::KeyName(name.to_owned()).into())
    }
}

/// `SHA-256(name ‖ "\n" ‖ alg ‖ public key)[:4]`, big endian.
pub(crate) fn key_id(name: &str, alg: u8, public: &[u8; 32]) -> u32 {
    let mut key = [0u8; 33];
    key[0] = alg;
    key[1..].copy_from_slice(public);
    signed_note::key_id(name, &key)
}

/// `name+hex8(key ID)+base64(alg ‖ public key)`.
pub(crate) fn vkey_string(name: &str, alg: u8, public: &[u8; 32]) -> String {
    let mut key = [0u8; 33];
    key[0] = alg;
    key[1..].copy_from_slice(public);
    format!(
        "{name}+{:08x}+{}",
        key_id(name, alg, public),
        BASE64_STANDARD.encode(key)
    )
}

/// A parsed verifier key: name, key ID, signature type, 32-byte public key.
pub(crate) struct ParsedVkey {
    pub name: String,
    pub key_id: u32,
    pub public: [u8; 32],
    pub key: VerifyingKey,
}

/// Parses a vkey whose signature type must be `alg` and whose key must be a
/// 32-byte strict Ed25519 public key.
pub(crate) fn parse_vkey(vkey: &str, alg: u8) -> Result<ParsedVkey, Error> {
    // The base64 key may itself hold '+': split at the first two only.
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id_hex), Some(key_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::VerifierKey("not three parts separated by '+'").into());
    };
    if !signed_note::is_key_name_valid(name) {
        return Err(Malformed::VerifierKey("invalid key name").into());
    }
    if id_hex.len() != 8
        || !id_hex
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(Malformed::VerifierKey("key ID is not 8 lowercase hex digits").into());
    }
    let id = u32::from_str_radix(id_hex, 16)
        .map_err(|_| Malformed::VerifierKey("key ID is not 8 lowercase hex digits"))?;
    let key = BASE64_STANDARD
        .decode(key_b64)
        .map_err(|_| Malformed::VerifierKey("key is not standard base64"))?;
    let Some((&found_alg, public)) = key.split_first() else {
        return Err(Malformed::VerifierKey("empty key").into());
    };
    if found_alg != alg {
        return Err(Rejected::UnsupportedKeyType(found_alg).into());
    }
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| Malformed::VerifierKey("Ed25519 public key is not 32 bytes"))?;
    if key_id(name, alg, &public) != id {
        return Err(Rejected::KeyIdMismatch.into());
    }
    let key = strict_public_key(&public).map_err(|_| Rejected::WeakKey)?;
    Ok(ParsedVkey {
        name: name.to_owned(),
        key_id: id,
        public,
        key,
    })
}

/// A log's note signing key (Ed25519, signature type 0x01).
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl core::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// The key named `name` (the log's origin, by convention) with the
    /// Ed25519 private key `seed`.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<NoteSigner, Error> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(name, ALG_ED25519, &key.verifying_key().to_bytes());
        Ok(NoteSigner {
            name: name.to_owned(),
            key_id,
            key,
        })
    }

    /// The key's name.
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

    /// The verifier key string, `name+hhhhhhhh+base64(0x01 ‖ public key)`.
    pub fn vkey(&self) -> String {
        vkey_string(&self.name, ALG_ED25519, &self.public_key())
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public: self.public_key(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a note text (non-empty, ending in a newline, no control
    /// character but newline) and returns the signed note.
    pub fn sign_note(&self, text: &str) -> Result<String, Error> {
        let mut note =
            signed_note::Note::new(text.as_bytes(), &[]).map_err(|_| Misuse::NoteText)?;
        note.add_sigs(&[self]).map_err(|_| Misuse::NoteText)?;
        String::from_utf8(note.to_bytes()).map_err(|_| Misuse::NoteText.into())
    }
}

impl signed_note::Signer for NoteSigner {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(RustCrypto.ed25519_sign(&self.key, msg).to_vec())
    }
}

/// A log's note verifier key (Ed25519, signature type 0x01), verifying strictly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    public: [u8; 32],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key string `name+hhhhhhhh+base64(0x01 ‖ key)`.
    pub fn from_vkey(vkey: &str) -> Result<NoteVerifier, Error> {
        let p = parse_vkey(vkey, ALG_ED25519)?;
        Ok(NoteVerifier {
            name: p.name,
            key_id: p.key_id,
            public: p.public,
            key: p.key,
        })
    }

    /// The verifier for the key named `name` with Ed25519 public key `public`.
    pub fn from_public_key(name: &str, public: [u8; 32]) -> Result<NoteVerifier, Error> {
        check_name(name)?;
        let key = strict_public_key(&public).map_err(|_| Rejected::WeakKey)?;
        Ok(NoteVerifier {
            name: name.to_owned(),
            key_id: key_id(name, ALG_ED25519, &public),
            public,
            key,
        })
    }

    /// The key's name.
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
        vkey_string(&self.name, ALG_ED25519, &self.public)
    }
}

impl Verifier for NoteVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.key_id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <&[u8; 64]>::try_from(sig) else {
            return false;
        };
        RustCrypto.ed25519_verify(&self.key, msg, sig)
    }
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub key_id: u32,
    /// The signature bytes after the key ID.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    fn from_signed_note(s: &signed_note::Signature) -> NoteSignature {
        NoteSignature {
            name: s.name().to_owned(),
            key_id: s.id(),
            signature: s.signature().to_vec(),
        }
    }

    /// The signature line, `— name base64(key ID ‖ signature)\n`.
    pub fn line(&self) -> String {
        let mut b = self.key_id.to_be_bytes().to_vec();
        b.extend_from_slice(&self.signature);
        format!("— {} {}\n", self.name, BASE64_STANDARD.encode(b))
    }
}

/// A note whose required signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The note text, with its final newline.
    pub text: String,
    /// The signatures by known keys, all verified (each key once).
    pub verified: Vec<NoteSignature>,
    /// The signatures by unknown keys, ignored as the spec says.
    pub unknown: Vec<NoteSignature>,
}

/// The known keys of one verification: a key is found by name and key ID.
struct Known<'a>(&'a [&'a dyn Verifier]);

impl Verifiers for Known<'_> {
    fn verifier(&self, name: &str, id: u32) -> Result<&dyn Verifier, VerificationError> {
        let mut found = self
            .0
            .iter()
            .filter(|v| v.name() == name && v.key_id() == id);
        match (found.next(), found.next()) {
            (Some(v), None) => Ok(*v),
            (Some(_), Some(_)) => Err(VerificationError::AmbiguousKey {
                name: name.to_owned(),
                id,
            }),
            _ => Err(VerificationError::UnknownKey {
                name: name.to_owned(),
                id,
            }),
        }
    }
}

/// Verifies a signed note: it must be well formed and carry a valid
/// signature by `required` (the log's key); signatures by `extra` keys (for
/// example witnesses' cosignature keys) are verified too and reported.
/// Signatures by unknown keys are ignored; a signature by a known key that
/// fails refuses the whole note.
pub fn verify_note(
    note: &str,
    required: &dyn Verifier,
    extra: &[&dyn Verifier],
) -> Result<VerifiedNote, Error> {
    let mut known: Vec<&dyn Verifier> = Vec::with_capacity(extra.len() + 1);
    known.push(required);
    known.extend_from_slice(extra);
    let not_signed = || {
        Error::from(Rejected::NotSigned(format!(
            "{}+{:08x}",
            required.name(),
            required.key_id()
        )))
    };
    let v = verify_note_by_any(note, &known).map_err(|e| match e {
        Error::Rejected(Rejected::NotSigned(_)) => not_signed(),
        e => e,
    })?;
    if !v
        .verified
        .iter()
        .any(|s| s.name == required.name() && s.key_id == required.key_id())
    {
        return Err(not_signed());
    }
    Ok(v)
}

/// Verifies a signed note against the `known` keys: at least one must have
/// signed it, and every signature by a known key must verify.
pub fn verify_note_by_any(note: &str, known: &[&dyn Verifier]) -> Result<VerifiedNote, Error> {
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).map_err(|_| Malformed::Note)?;
    for (i, a) in known.iter().enumerate() {
        if known[..i]
            .iter()
            .any(|b| a.name() == b.name() && a.key_id() == b.key_id())
        {
            return Err(Misuse::AmbiguousKey {
                name: a.name().to_owned(),
                key_id: a.key_id(),
            }
            .into());
        }
    }
    let (verified, unknown) = match parsed.verify(&Known(known)) {
        Ok(v) => v,
        Err(signed_note::NoteError::InvalidSignature { name, id }) => {
            return Err(Rejected::BadSignature { name, key_id: id }.into())
        }
        Err(signed_note::NoteError::UnverifiedNote) => {
            let names: Vec<String> = known
                .iter()
                .map(|k| format!("{}+{:08x}", k.name(), k.key_id()))
                .collect();
            return Err(Rejected::NotSigned(names.join(" or ")).into());
        }
        Err(_) => return Err(Malformed::Note.into()),
    };
    let text = String::from_utf8(parsed.text().to_vec()).map_err(|_| Malformed::Note)?;
    Ok(VerifiedNote {
        text,
        verified: verified
            .iter()
            .map(NoteSignature::from_signed_note)
            .collect(),
        unknown: unknown
            .iter()
            .map(NoteSignature::from_signed_note)
            .collect(),
    })
}

/// Splits a signed note into its text (with its final newline) and its
/// signatures, checking the syntax only.
pub fn split_note(note: &str) -> Result<(String, Vec<NoteSignature>), Error> {
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).map_err(|_| Malformed::Note)?;
    let text = String::from_utf8(parsed.text().to_vec()).map_err(|_| Malformed::Note)?;
    // signed_note keeps its signatures private: read them back from the lines.
    let mut sigs = Vec::new();
    for line in note[text.len() + 1..].lines() {
        let s = signed_note::Signature::from_bytes(line.as_bytes()).map_err(|_| Malformed::Note)?;
        sigs.push(NoteSignature::from_signed_note(&s));
    }
    Ok((text, sigs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_spec_example_vkey_verifies_the_spec_example_note() {
        // c2sp.org/signed-note, "Example".
        let vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
        let note = "This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";
        let v = NoteVerifier::from_vkey(vkey).unwrap();
        assert_eq!(v.vkey(), vkey);
        let n = verify_note(note, &v, &[]).unwrap();
        assert_eq!(n.text, "This is an example message.\n");
        assert_eq!(n.verified.len(), 1);
        assert_eq!(n.verified[0].line(), note.split_once("\n\n").unwrap().1);
    }

    #[test]
    fn a_signed_note_verifies_and_unknown_signatures_are_ignored() {
        let log = NoteSigner::from_seed("log.example/a", [7; 32]).unwrap();
        let other = NoteSigner::from_seed("log.example/b", [8; 32]).unwrap();
        let note = log.sign_note("hello\nworld\n").unwrap();
        let (_, sig_b) = other
            .sign_note("hello\nworld\n")
            .unwrap()
            .split_once("\n\n")
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .unwrap();
        let both = format!("{note}{sig_b}");
        let v = verify_note(&both, &log.verifier(), &[]).unwrap();
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.unknown.len(), 1);
        assert_eq!(v.unknown[0].name, "log.example/b");
        // Both known: both verified.
        let ov = other.verifier();
        let v = verify_note(&both, &log.verifier(), &[&ov]).unwrap();
        assert_eq!(v.verified.len(), 2);
        // Only the other key's signature: not signed by the log.
        let only_b = format!("hello\nworld\n\n{sig_b}");
        assert!(matches!(
            verify_note(&only_b, &log.verifier(), &[&ov]),
            Err(Error::Rejected(Rejected::NotSigned(_)))
        ));
        let (text, sigs) = split_note(&both).unwrap();
        assert_eq!(text, "hello\nworld\n");
        assert_eq!(sigs.len(), 2);
    }

    #[test]
    fn altered_notes_and_bad_keys_are_refused_with_their_reason() {
        let log = NoteSigner::from_seed("log.example/a", [7; 32]).unwrap();
        let note = log.sign_note("hello\n").unwrap();
        let altered = note.replacen("hello", "hellp", 1);
        assert!(matches!(
            verify_note(&altered, &log.verifier(), &[]),
            Err(Error::Rejected(Rejected::BadSignature { .. }))
        ));
        assert!(matches!(
            verify_note(note.trim_end(), &log.verifier(), &[]),
            Err(Error::Malformed(Malformed::Note))
        ));
        assert!(matches!(log.sign_note("no newline"), Err(Error::Misuse(_))));
        assert!(matches!(
            NoteSigner::from_seed("a b", [1; 32]),
            Err(Error::Misuse(Misuse::KeyName(_)))
        ));
        let vkey = log.vkey();
        let (name, rest) = vkey.split_once('+').unwrap();
        let (id, key) = rest.split_once('+').unwrap();
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+{:08x}+{key}", log.key_id() ^ 1)),
            Err(Error::Rejected(Rejected::KeyIdMismatch))
        ));
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+0{}+{key}", &id[1..])),
            Err(Error::Rejected(Rejected::KeyIdMismatch))
        ));
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+{id}0+{key}")),
            Err(Error::Malformed(Malformed::VerifierKey(_)))
        ));
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+{id}")),
            Err(Error::Malformed(Malformed::VerifierKey(_)))
        ));
        let mut k = BASE64_STANDARD.decode(key).unwrap();
        k[0] = 0x04;
        let pk: [u8; 32] = k[1..].try_into().unwrap();
        let t4 = vkey_string(name, 0x04, &pk);
        assert!(matches!(
            NoteVerifier::from_vkey(&t4),
            Err(Error::Rejected(Rejected::UnsupportedKeyType(4)))
        ));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            NoteVerifier::from_vkey(&vkey_string(name, ALG_ED25519, &identity)),
            Err(Error::Rejected(Rejected::WeakKey))
        ));
    }
}
