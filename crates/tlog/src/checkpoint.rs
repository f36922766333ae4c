//! c2sp.org/tlog-checkpoint: the log's signed tree head.
//!
//! ```text
//! <origin>
//! <tree size, decimal, no leading zeroes>
//! <root hash, base64>
//! [extension lines, each non-empty]
//!
//! — <log key name> base64(key ID ‖ Ed25519 signature)
//! [— <witness> base64(key ID ‖ timestamp ‖ signature)] …
//! ```
//!
//! The body is parsed by tlog_tiles; gridpow names its log key after the
//! origin, which [`open_checkpoint`] checks.

use signed_note::Verifier;

use crate::cosignature::{Cosignature, CosignatureVerifier};
use crate::error::{Error, Malformed, Misuse, Rejected};
use crate::note::{verify_note, NoteSignature, NoteSigner, NoteVerifier};
use crate::Hash;

/// A checkpoint body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The RFC 9162 root hash of the tree at that size.
    pub root: Hash,
    /// Extension lines, each ending in a newline; usually empty.
    pub extension: String,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Checkpoint {
        Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extension: String::new(),
        }
    }

    /// Parses a checkpoint body (the note text).
    pub fn parse(body: &str) -> Result<Checkpoint, Error> {
        let c = tlog_tiles::Checkpoint::from_bytes(body.as_bytes())
            .map_err(|_| Malformed::Checkpoint)?;
        if c.origin().chars().any(char::is_control) {
            return Err(Malformed::Checkpoint.into());
        }
        Ok(Checkpoint {
            origin: c.origin().to_owned(),
            size: c.size(),
            root: c.hash().0,
            extension: c.extension().to_owned(),
        })
    }

    /// The body: origin, size and base64 root hash lines, then any extension lines.
    pub fn body(&self) -> Result<String, Error> {
        if self.origin.is_empty() || self.origin.chars().any(char::is_control) {
            return Err(Misuse::Origin(self.origin.clone()).into());
        }
        let c = tlog_tiles::Checkpoint::new(
            &self.origin,
            self.size,
            tlog_tiles::Hash(self.root),
            &self.extension,
        )
        .map_err(|_| Misuse::NoteText)?;
        String::from_utf8(c.to_bytes()).map_err(|_| Misuse::NoteText.into())
    }

    /// The signed note: the body signed by the log's key.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, Error> {
        signer.sign_note(&self.body()?)
    }
}

/// Signs the checkpoint `origin`, `size`, `root` with the log's key: the
/// whole signed note.
pub fn sign_checkpoint(
    signer: &NoteSigner,
    origin: &str,
    size: u64,
    root: &Hash,
) -> Result<String, Error> {
    Checkpoint::new(origin, size, *root).sign(signer)
}

/// A checkpoint whose log signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedCheckpoint {
    /// The parsed body.
    pub checkpoint: Checkpoint,
    /// The body as signed (the note text).
    pub body: String,
    /// Verified cosignatures by the witnesses the caller named.
    pub cosignatures: Vec<Cosignature>,
    /// Signatures by keys the caller did not name (other witnesses,
    /// other log keys), ignored but kept.
    pub other_signatures: Vec<NoteSignature>,
}

/// Opens a checkpoint note of the log whose key is `log` and whose origin is
/// the key's name: verifies the log's signature and parses the body. Any
/// cosignatures are kept, unverified, in `other_signatures`.
pub fn open_checkpoint(note: &str, log: &NoteVerifier) -> Result<OpenedCheckpoint, Error> {
    open_checkpoint_for(note, log.name(), log, &[])
}

/// Opens a checkpoint note of the log `origin`: verifies the signature by
/// `log`, parses the body, checks the origin and verifies the cosignatures
/// of `witnesses` present (a failing one refuses the note, as
/// c2sp.org/signed-note says of known keys).
pub fn open_checkpoint_for(
    note: &str,
    origin: &str,
    log: &NoteVerifier,
    witnesses: &[CosignatureVerifier],
) -> Result<OpenedCheckpoint, Error> {
    let extra: Vec<&dyn Verifier> = witnesses.iter().map(|w| w as &dyn Verifier).collect();
    let v = verify_note(note, log, &extra)?;
    let checkpoint = Checkpoint::parse(&v.text)?;
    if checkpoint.origin != origin {
        return Err(Rejected::WrongOrigin {
            expected: origin.to_owned(),
            found: checkpoint.origin,
        }
        .into());
    }
    let cosignatures = v
        .verified
        .iter()
        .filter(|s| !(s.name == log.name() && s.key_id == log.key_id()))
        .filter_map(|s| {
            Some(Cosignature {
                name: s.name.clone(),
                key_id: s.key_id,
                timestamp: CosignatureVerifier::timestamp_of(&s.signature)?,
            })
        })
        .collect();
    Ok(OpenedCheckpoint {
        checkpoint,
        body: v.text,
        cosignatures,
        other_signatures: v.unknown,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cosignature::{add_cosignature, WitnessKey};

    #[test]
    fn a_signed_checkpoint_opens_with_its_cosignatures() {
        let log = NoteSigner::from_seed("log.example/x", [0x4c; 32]).unwrap();
        let note = sign_checkpoint(&log, "log.example/x", 3, &[9; 32]).unwrap();
        assert!(note.starts_with(
            "log.example/x\n3\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n\n— log.example/x "
        ));
        let c = open_checkpoint(&note, &log.verifier()).unwrap();
        assert_eq!(c.checkpoint, Checkpoint::new("log.example/x", 3, [9; 32]));
        assert!(c.cosignatures.is_empty());
        let w = WitnessKey::from_seed("w.example", [0x57; 32]).unwrap();
        let cosigned = add_cosignature(&note, &w.cosign(&c.body, 77).unwrap()).unwrap();
        let c2 = open_checkpoint(&cosigned, &log.verifier()).unwrap();
        assert_eq!(c2.other_signatures.len(), 1);
        let c3 = open_checkpoint_for(&cosigned, "log.example/x", &log.verifier(), &[w.verifier()])
            .unwrap();
        assert_eq!(c3.cosignatures.len(), 1);
        assert_eq!(c3.cosignatures[0].timestamp, 77);
        assert!(matches!(
            open_checkpoint_for(&cosigned, "log.example/y", &log.verifier(), &[]),
            Err(Error::Rejected(Rejected::WrongOrigin { .. }))
        ));
    }

    #[test]
    fn checkpoint_bodies_follow_the_spec_exactly() {
        let ok =
            Checkpoint::parse("o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\nx y\n").unwrap();
        assert_eq!(ok.extension, "x y\n");
        for bad in [
            "o\n01\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n-1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
            "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU\n",
            "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            "o\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n",
            "o\n1\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
        let log = NoteSigner::from_seed("l", [1; 32]).unwrap();
        assert!(matches!(
            sign_checkpoint(&log, "", 1, &[0; 32]),
            Err(Error::Misuse(Misuse::Origin(_)))
        ));
        assert!(sign_checkpoint(&log, "a\nb", 1, &[0; 32]).is_err());
    }
}
