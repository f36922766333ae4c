//! A reading proof: one self-contained JSON document that proves a reading
//! was carried by a frame of a block that the grid server put in its
//! transparency log, checkable offline with the log's verifier key and the
//! witnesses' keys alone.
//!
//! # The document (`gridpow-reading-proof/v1`)
//!
//! ```text
//! {
//!   "format": "gridpow-reading-proof/v1",
//!   "reading": { "meter_id", "epoch", "seq", "timestamp_ms", "voltage_cv", "current_ma",
//!                "active_power_dw", "power_factor_e4", "frequency_mhz", "energy_mwh", "flags" },
//!   "frame": hex,        the sealed uplink frame that carried the reading (a leaf of the block)
//!   "leaf_index": u32,   the frame's index among the block's leaves
//!   "block_path": [hex], RFC 9162 audit path of the frame's leaf hash up to the header's Merkle root
//!   "header": hex,       the 100-byte block header (docs/protocol.md §9.1)
//!   "log_index": u64,    the block's entry in the transparency log
//!   "entry": hex,        the 80-byte log entry (docs/protocol.md §15)
//!   "log_path": [hex],   RFC 9162 audit path of the entry's leaf hash in the checkpoint's tree
//!   "checkpoint": text   the C2SP signed checkpoint note, with the witnesses' cosignatures
//! }
//! ```
//!
//! Hashes and bytes are lowercase hex; integers are JSON numbers. The
//! `reading` is the reading as the server decrypted it: the frame carries it
//! sealed under the meter's end-to-end key, so without that key the values
//! are informational; the meter, boot epoch and sequence number are in the
//! frame's clear, authenticated header and are proven.
//!
//! # The checks ([`ReadingProof::verify`]), in order
//!
//! 1. `format` is `gridpow-reading-proof/v1`.
//! 2. `header` is a valid block header; its SHA-256 is the block hash.
//! 3. `frame` is a valid uplink frame; its leaf hash `SHA-256(0x00 ‖ frame)`,
//!    with `block_path`, is leaf `leaf_index` of a tree of the header's
//!    `leaf_count` leaves whose root is the header's Merkle root.
//! 4. The frame's clear header names the reading's meter and boot epoch, and
//!    its readings `first_seq ..= first_seq + n − 1` hold the reading's `seq`.
//! 5. `entry` is a valid log entry naming the header's relay id, height,
//!    block hash and Merkle root.
//! 6. `checkpoint` is signed by the log's key, and its origin is that key's
//!    name.
//! 7. The entry's leaf hash, with `log_path`, is leaf `log_index` of the
//!    checkpoint's tree (its size and root).
//! 8. At least the required number of the given witnesses validly cosigned
//!    that checkpoint, each witness key counted once.
//!
//! Each failure is its own error ([`Rejected`], [`Malformed`]). Optionally,
//! [`ReadingProof::verify_values`] opens the frame with the meter's
//! end-to-end key and checks the stated values are the sealed ones.
//!
//! What it proves: the log operator (the grid server) committed, in the tree
//! the witnesses saw, to a block of the named relay holding this exact
//! frame; the meter sealed the frame (its end-to-end tag, checkable with its
//! key). The relay's block signature and proof of work are not in the
//! document: the log entry commits to the header hash, and the server checked
//! both before it stored the block.

use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::merkle;
use gridpow_proto::wire::uplink::MAX_BODY_LEN;
use gridpow_proto::wire::{BlockHeaderRepr, LogLeafRepr, Reading, UplinkPacket};
use serde::{Deserialize, Serialize};

use crate::checkpoint::open_checkpoint;
use crate::cosignature::{valid_cosignatures, Cosignature, CosignatureVerifier};
use crate::error::{Error, Malformed, Rejected};
use crate::note::NoteVerifier;
use crate::proofs;
use crate::Hash;

/// The format tag of this document.
pub const FORMAT: &str = "gridpow-reading-proof/v1";

/// A reading proof document (see the module documentation). The grid
/// server fills it; [`ReadingProof::verify`] checks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingProof {
    /// [`FORMAT`].
    pub format: String,
    /// The reading as the server decrypted it.
    pub reading: ProvenReading,
    /// The sealed uplink frame (the block's leaf) that carried it.
    #[serde(with = "hex_bytes")]
    pub frame: Vec<u8>,
    /// The frame's index among the block's leaves.
    pub leaf_index: u32,
    /// RFC 9162 audit path of the frame's leaf hash up to the header's Merkle root.
    #[serde(with = "hex_hashes")]
    pub block_path: Vec<Hash>,
    /// The 100-byte block header.
    #[serde(with = "hex_bytes")]
    pub header: Vec<u8>,
    /// The block's entry index in the transparency log.
    pub log_index: u64,
    /// The 80-byte log entry.
    #[serde(with = "hex_bytes")]
    pub entry: Vec<u8>,
    /// RFC 9162 audit path of the entry's leaf hash in the checkpoint's tree.
    #[serde(with = "hex_hashes")]
    pub log_path: Vec<Hash>,
    /// The C2SP signed checkpoint note, with cosignatures.
    pub checkpoint: String,
}

/// The reading a proof is about: who, which one, and its values as the
/// server decrypted them (docs/protocol.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProvenReading {
    /// The meter.
    pub meter_id: u32,
    /// The meter's boot epoch.
    pub epoch: u32,
    /// The reading's sequence number.
    pub seq: u32,
    /// Its values, as the frame carries them (their fields at this level
    /// of the JSON document).
    #[serde(flatten)]
    pub values: Reading,
}

impl ProvenReading {
    /// The reading `seq` of the meter `meter_id` in boot epoch `epoch`, with `values`.
    pub fn new(meter_id: u32, epoch: u32, seq: u32, values: &Reading) -> ProvenReading {
        ProvenReading {
            meter_id,
            epoch,
            seq,
            values: *values,
        }
    }

    /// The values, as the frame carries them.
    pub fn values(&self) -> Reading {
        self.values
    }
}

/// What a verified reading proof proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReading {
    /// The meter (from the frame's clear header).
    pub meter_id: u32,
    /// The meter's boot epoch (from the frame's clear header).
    pub epoch: u32,
    /// The reading's sequence number, within the frame's range.
    pub seq: u32,
    /// The relay whose block carried the frame.
    pub relay_id: u32,
    /// The block's height in the relay's chain.
    pub height: u64,
    /// The block's header hash.
    pub block_hash: Hash,
    /// When the relay sealed the block, Unix ms (the header's time).
    pub block_time_ms: u64,
    /// The frame's index among the block's leaves.
    pub leaf_index: u32,
    /// The log's origin (the name of its key).
    pub origin: String,
    /// The block's entry index in the log.
    pub log_index: u64,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// The checkpoint's root hash.
    pub root: Hash,
    /// The valid cosignatures counted, one per witness key, in the order
    /// the witnesses were given.
    pub cosignatures: Vec<Cosignature>,
}

impl VerifiedReading {
    /// The names of the witnesses that cosigned the checkpoint.
    pub fn witnesses(&self) -> impl Iterator<Item = &str> {
        self.cosignatures.iter().map(|c| c.name.as_str())
    }
}

impl ReadingProof {
    /// Runs every check of the module documentation, in order: the
    /// checkpoint must be signed by `log` (whose name is the log's origin),
    /// and at least `min_cosignatures` of `witnesses` (each key counted once)
    /// must have cosigned it.
    pub fn verify(
        &self,
        log: &NoteVerifier,
        witnesses: &[CosignatureVerifier],
        min_cosignatures: usize,
    ) -> Result<VerifiedReading, Error> {
        if self.format != FORMAT {
            return Err(Rejected::UnsupportedFormat(self.format.clone()).into());
        }
        let header = BlockHeaderRepr::parse(&self.header).map_err(Malformed::BlockHeader)?;
        let block_hash = header.hash(&RustCrypto);
        let frame = self.frame()?;
        self.check_frame_in_block(&header)?;
        self.check_reading_in_frame(&frame)?;
        self.check_entry(&header, &block_hash)?;
        let opened = open_checkpoint(&self.checkpoint, log)?;
        let cp = &opened.checkpoint;
        proofs::verify_inclusion(
            &self.log_path,
            cp.size,
            &cp.root,
            self.log_index,
            &proofs::leaf_hash(&self.entry),
        )
        .map_err(|e| match e {
            Error::Rejected(Rejected::InvalidProof | Rejected::BeyondTree) => {
                Rejected::EntryNotInLog {
                    log_index: self.log_index,
                    tree_size: cp.size,
                }
                .into()
            }
            e => e,
        })?;
        let cosignatures = distinct_cosignatures(&self.checkpoint, witnesses)?;
        if cosignatures.len() < min_cosignatures {
            return Err(Rejected::TooFewCosignatures {
                needed: min_cosignatures,
                got: cosignatures.len(),
            }
            .into());
        }
        Ok(VerifiedReading {
            meter_id: self.reading.meter_id,
            epoch: self.reading.epoch,
            seq: self.reading.seq,
            relay_id: header.relay_id,
            height: header.height,
            block_hash,
            block_time_ms: header.time_ms,
            leaf_index: self.leaf_index,
            origin: cp.origin.clone(),
            log_index: self.log_index,
            tree_size: cp.size,
            root: cp.root,
            cosignatures,
        })
    }

    /// Opens the frame with the meter's end-to-end key and checks that the
    /// reading sealed at the proof's `seq` is the one the proof states;
    /// returns it. Checks the frame and the reading's place in it, not the
    /// block or the log: see [`ReadingProof::verify`].
    pub fn verify_values(&self, e2e_key: [u8; 16]) -> Result<Reading, Error> {
        let frame = self.frame()?;
        self.check_reading_in_frame(&frame)?;
        let mut scratch = [0u8; MAX_BODY_LEN];
        let opened = frame
            .open_e2e(&RustCrypto, &RustCrypto.aead_key(&e2e_key), &mut scratch)
            .map_err(|_| Rejected::FrameDoesNotOpen)?;
        let sealed = self
            .reading
            .seq
            .checked_sub(opened.first_seq())
            .and_then(|i| opened.reading(i as usize))
            .ok_or(Malformed::Frame(gridpow_proto::Malformed::BadReadingCount))?;
        if sealed != self.reading.values() {
            return Err(Rejected::ValuesDiffer.into());
        }
        Ok(sealed)
    }

    fn frame(&self) -> Result<UplinkPacket<&[u8]>, Error> {
        Ok(UplinkPacket::new_checked(&self.frame[..]).map_err(Malformed::Frame)?)
    }

    /// Check 3: the frame is leaf `leaf_index` of the header's Merkle tree.
    fn check_frame_in_block(&self, header: &BlockHeaderRepr) -> Result<(), Error> {
        if self.block_path.len() > merkle::MAX_PROOF_LEN {
            return Err(Malformed::ProofTooLong.into());
        }
        let leaf = merkle::leaf_hash(&RustCrypto, &self.frame);
        if !merkle::verify_inclusion(
            &RustCrypto,
            &leaf,
            u64::from(self.leaf_index),
            u64::from(header.leaf_count),
            &self.block_path,
            &header.merkle_root,
        ) {
            return Err(Rejected::FrameNotInBlock {
                leaf_index: self.leaf_index,
                leaf_count: header.leaf_count,
            }
            .into());
        }
        Ok(())
    }

    /// Check 4: the frame's clear header names the reading.
    fn check_reading_in_frame(&self, frame: &UplinkPacket<&[u8]>) -> Result<(), Error> {
        let r = &self.reading;
        if frame.meter_id() != r.meter_id {
            return Err(Rejected::WrongMeter {
                frame: frame.meter_id(),
                reading: r.meter_id,
            }
            .into());
        }
        if frame.boot_epoch() != r.epoch {
            return Err(Rejected::WrongEpoch {
                frame: frame.boot_epoch(),
                reading: r.epoch,
            }
            .into());
        }
        // A checked frame's sequence numbers do not run past 2^32 − 1.
        let first = frame.first_seq();
        let last = first.saturating_add(frame.reading_count() as u32 - 1);
        if !(first..=last).contains(&r.seq) {
            return Err(Rejected::SeqNotInFrame {
                seq: r.seq,
                first,
                last,
            }
            .into());
        }
        Ok(())
    }

    /// Check 5: the entry names the header's block.
    fn check_entry(&self, header: &BlockHeaderRepr, block_hash: &Hash) -> Result<(), Error> {
        let entry = LogLeafRepr::parse(&self.entry).map_err(Malformed::LogEntry)?;
        let differs = if entry.relay_id != header.relay_id {
            Some("relay id")
        } else if entry.height != header.height {
            Some("height")
        } else if entry.block_hash != *block_hash {
            Some("block hash")
        } else if entry.merkle_root != header.merkle_root {
            Some("Merkle root")
        } else {
            None
        };
        match differs {
            Some(field) => Err(Rejected::EntryNotForBlock(field).into()),
            None => Ok(()),
        }
    }
}

/// The valid cosignatures of `witnesses` on the note, one per public key:
/// the same key given twice, or under two names, counts once.
fn distinct_cosignatures(
    note: &str,
    witnesses: &[CosignatureVerifier],
) -> Result<Vec<Cosignature>, Error> {
    let mut seen: Vec<[u8; 32]> = Vec::new();
    let mut out = Vec::new();
    for c in valid_cosignatures(note, witnesses)? {
        let Some(w) = witnesses
            .iter()
            .find(|w| w.name() == c.name && w.key_id() == c.key_id)
        else {
            continue;
        };
        if !seen.contains(&w.public_key()) {
            seen.push(w.public_key());
            out.push(c);
        }
    }
    Ok(out)
}

/// Bytes as lowercase hex.
mod hex_bytes {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).map_err(D::Error::custom)
    }
}

/// A list of 32-byte hashes, each as lowercase hex.
mod hex_hashes {
    use serde::{de::Error as _, ser::SerializeSeq, Deserialize, Deserializer, Serializer};

    use crate::Hash;

    pub fn serialize<S: Serializer>(hashes: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(hashes.len()))?;
        for h in hashes {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(s, &mut h)
                    .map_err(|e| D::Error::custom(format!("hash {s:?}: {e}")))?;
                Ok(h)
            })
            .collect()
    }
}

/// A real, verifying reading proof and the keys it was made with, for tests
/// (this crate's and the command line's): sealed frames, a block header, a
/// log of several entries, a signed checkpoint and one witness's cosignature.
#[cfg(any(test, feature = "test-util"))]
pub mod fixture {
    #![allow(clippy::expect_used, missing_docs)]

    use gridpow_proto::crypto::{CryptoProvider, MeterKeys, MeterSecret, RustCrypto};
    use gridpow_proto::merkle;
    use gridpow_proto::wire::uplink::{seal, UplinkHeader, MAX_LEN};
    use gridpow_proto::wire::{BlockHeaderRepr, LogLeafRepr, Reading};

    use super::{ProvenReading, ReadingProof, FORMAT};
    use crate::checkpoint::Checkpoint;
    use crate::cosignature::{add_cosignature, WitnessKey};
    use crate::note::NoteSigner;
    use crate::proofs::{inclusion_proof, tree_root, MemoryHashes};

    /// The log's origin and key name.
    pub const ORIGIN: &str = "grid.example/gridpow/log";
    /// The meter's 48 provisioned bytes (hop secret ‖ end-to-end key).
    pub const METER_SECRET: [u8; 48] = [0x42; 48];
    /// When the witness cosigned.
    pub const COSIGNED_AT: u64 = 1_750_000_000;

    pub struct Fixture {
        /// The document; it verifies with `log.verifier()` and `witness.verifier()`.
        pub proof: ReadingProof,
        /// The log's key.
        pub log: NoteSigner,
        /// The witness that cosigned the checkpoint.
        pub witness: WitnessKey,
        /// A witness that did not.
        pub idle_witness: WitnessKey,
        /// The meter's end-to-end key.
        pub e2e_key: [u8; 16],
        /// The checkpoint's size and root.
        pub size: u64,
        pub root: crate::Hash,
    }

    impl Fixture {
        /// A checkpoint note for `size` and `root`, signed by `signer` and
        /// cosigned by the fixture's witness.
        pub fn checkpoint(&self, signer: &NoteSigner, size: u64, root: &crate::Hash) -> String {
            cosigned(signer, &self.witness, size, root)
        }
    }

    fn cosigned(
        signer: &NoteSigner,
        witness: &WitnessKey,
        size: u64,
        root: &crate::Hash,
    ) -> String {
        let c = Checkpoint::new(signer.name(), size, *root);
        let note = c.sign(signer).expect("sign");
        let body = c.body().expect("body");
        add_cosignature(&note, &witness.cosign(&body, COSIGNED_AT).expect("cosign"))
            .expect("add cosignature")
    }

    fn reading(i: u64) -> Reading {
        Reading {
            timestamp_ms: 1_750_000_000_000 + i * 10_000,
            voltage_cv: 23_012,
            current_ma: 4_321 + i as u32,
            active_power_dw: 9_876,
            power_factor_e4: 9_700,
            frequency_mhz: 50_010,
            energy_mwh: 1_234_567 + i,
            flags: 0,
        }
    }

    fn frame(meter_id: u32, counter: u32, first_seq: u32, n: u64) -> Vec<u8> {
        let keys = MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&METER_SECRET));
        let header = UplinkHeader {
            key_id: 1,
            meter_id,
            boot_epoch: 3,
            counter,
        };
        let readings: Vec<Reading> = (0..n).map(reading).collect();
        let mut buf = [0u8; MAX_LEN];
        let len = seal(&RustCrypto, &keys, &header, first_seq, &readings, &mut buf).expect("seal");
        buf[..len].to_vec()
    }

    /// The proof of meter 7's reading 101 (epoch 3), the second of the three
    /// readings in leaf 3 of relay 42's block 12, entry 4 of a log of 7.
    pub fn fixture() -> Fixture {
        let frames = [
            frame(5, 0, 0, 1),
            frame(6, 1, 10, 2),
            frame(7, 8, 97, 3),
            frame(7, 9, 100, 3),
            frame(9, 2, 50, 6),
        ];
        let leaves: Vec<crate::Hash> = frames
            .iter()
            .map(|f| merkle::leaf_hash(&RustCrypto, f))
            .collect();
        let mut path = [[0u8; 32]; merkle::MAX_PROOF_LEN];
        let len = merkle::inclusion_proof(&RustCrypto, &leaves, 3, &mut path).expect("path");
        let header = BlockHeaderRepr {
            difficulty: 8,
            relay_id: 42,
            height: 12,
            prev_hash: [0x11; 32],
            merkle_root: merkle::root_of_hashes(&RustCrypto, &leaves),
            leaf_count: frames.len() as u32,
            time_ms: 1_750_000_060_000,
            nonce: 77,
        };
        let entry = LogLeafRepr::of_block(&header, header.hash(&RustCrypto));
        let mut log = MemoryHashes::new();
        for i in 0..7u64 {
            if i == 4 {
                log.push_entry(&entry.to_bytes());
            } else {
                let other = LogLeafRepr {
                    relay_id: 40 + (i % 2) as u32,
                    height: i,
                    block_hash: RustCrypto.sha256(&[b"block", &i.to_le_bytes()]),
                    merkle_root: RustCrypto.sha256(&[b"root", &i.to_le_bytes()]),
                };
                log.push_entry(&other.to_bytes());
            }
        }
        let size = log.size();
        let root = tree_root(&log, size).expect("root");
        let signer = NoteSigner::from_seed(ORIGIN, [0x4c; 32]).expect("log key");
        let witness = WitnessKey::from_seed("witness.example/w1", [0x57; 32]).expect("witness");
        let idle_witness =
            WitnessKey::from_seed("witness.example/w2", [0x58; 32]).expect("witness");
        let checkpoint = cosigned(&signer, &witness, size, &root);
        let values = reading(1);
        Fixture {
            proof: ReadingProof {
                format: FORMAT.to_owned(),
                reading: ProvenReading::new(7, 3, 101, &values),
                frame: frames[3].clone(),
                leaf_index: 3,
                block_path: path[..len].to_vec(),
                header: header.to_bytes().to_vec(),
                log_index: 4,
                entry: entry.to_bytes().to_vec(),
                log_path: inclusion_proof(&log, size, 4).expect("log path"),
                checkpoint,
            },
            log: signer,
            witness,
            idle_witness,
            e2e_key: MeterSecret::from_bytes(&METER_SECRET).e2e.0,
            size,
            root,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fixture::{fixture, Fixture};
    use super::*;
    use crate::cosignature::{add_cosignature, WitnessKey};
    use crate::note::NoteSigner;

    /// Verifies `p` with the fixture's log key and witness, one cosignature required.
    fn check(f: &Fixture, p: &ReadingProof) -> Result<VerifiedReading, Error> {
        p.verify(&f.log.verifier(), &[f.witness.verifier()], 1)
    }

    fn rejected(f: &Fixture, p: &ReadingProof) -> Rejected {
        match check(f, p) {
            Err(Error::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_real_proof_verifies_and_says_what_it_proves() {
        let f = fixture();
        let v = check(&f, &f.proof).unwrap();
        assert_eq!((v.meter_id, v.epoch, v.seq), (7, 3, 101));
        assert_eq!((v.relay_id, v.height, v.leaf_index), (42, 12, 3));
        assert_eq!(
            v.block_hash,
            BlockHeaderRepr::parse(&f.proof.header)
                .unwrap()
                .hash(&RustCrypto)
        );
        assert_eq!(v.block_time_ms, 1_750_000_060_000);
        assert_eq!(v.origin, fixture::ORIGIN);
        assert_eq!((v.log_index, v.tree_size, v.root), (4, f.size, f.root));
        assert_eq!(v.witnesses().collect::<Vec<_>>(), ["witness.example/w1"]);
        assert_eq!(v.cosignatures[0].timestamp, fixture::COSIGNED_AT);
        // Without witnesses required, none need be given.
        let v = f.proof.verify(&f.log.verifier(), &[], 0).unwrap();
        assert!(v.cosignatures.is_empty());
        // The idle witness did not cosign, but one of two suffices.
        let both = [f.idle_witness.verifier(), f.witness.verifier()];
        let v = f.proof.verify(&f.log.verifier(), &both, 1).unwrap();
        assert_eq!(v.witnesses().collect::<Vec<_>>(), ["witness.example/w1"]);
    }

    #[test]
    fn the_document_is_the_documented_json_and_round_trips() {
        let f = fixture();
        let json = serde_json::to_value(&f.proof).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "block_path",
                "checkpoint",
                "entry",
                "format",
                "frame",
                "header",
                "leaf_index",
                "log_index",
                "log_path",
                "reading"
            ]
        );
        assert_eq!(json["format"], "gridpow-reading-proof/v1");
        assert_eq!(json["reading"]["seq"], 101);
        assert_eq!(json["reading"]["voltage_cv"], 23_012);
        assert_eq!(json["header"].as_str().unwrap().len(), 200);
        assert_eq!(json["entry"].as_str().unwrap().len(), 160);
        assert_eq!(json["block_path"][0].as_str().unwrap().len(), 64);
        let text = serde_json::to_string_pretty(&f.proof).unwrap();
        assert!(text.starts_with("{\n  \"format\": \"gridpow-reading-proof/v1\""));
        let back: ReadingProof = serde_json::from_str(&text).unwrap();
        assert_eq!(back, f.proof);
        let mut bad = json.clone();
        bad["log_path"][0] = "00".into();
        assert!(serde_json::from_value::<ReadingProof>(bad).is_err());
        let mut bad = json;
        bad["frame"] = "zz".into();
        assert!(serde_json::from_value::<ReadingProof>(bad).is_err());
    }

    #[test]
    fn another_format_tag_is_refused() {
        let f = fixture();
        let mut p = f.proof.clone();
        p.format = "gridpow-reading-proof/v2".into();
        assert_eq!(
            rejected(&f, &p),
            Rejected::UnsupportedFormat("gridpow-reading-proof/v2".into())
        );
    }

    #[test]
    fn a_reading_the_frame_does_not_carry_is_refused() {
        let f = fixture();
        let mut p = f.proof.clone();
        p.reading.meter_id = 8;
        assert_eq!(
            rejected(&f, &p),
            Rejected::WrongMeter {
                frame: 7,
                reading: 8
            }
        );
        let mut p = f.proof.clone();
        p.reading.epoch = 4;
        assert_eq!(
            rejected(&f, &p),
            Rejected::WrongEpoch {
                frame: 3,
                reading: 4
            }
        );
        for seq in [99, 103, 0, u32::MAX] {
            let mut p = f.proof.clone();
            p.reading.seq = seq;
            assert_eq!(
                rejected(&f, &p),
                Rejected::SeqNotInFrame {
                    seq,
                    first: 100,
                    last: 102
                }
            );
        }
        // The other two readings of the frame are in it.
        for seq in [100, 102] {
            let mut p = f.proof.clone();
            p.reading.seq = seq;
            assert_eq!(check(&f, &p).unwrap().seq, seq);
        }
    }

    #[test]
    fn every_changed_frame_byte_is_refused() {
        let f = fixture();
        for at in 0..f.proof.frame.len() {
            let mut p = f.proof.clone();
            p.frame[at] ^= 0x01;
            match check(&f, &p) {
                Err(Error::Malformed(Malformed::Frame(_))) => {}
                Err(Error::Rejected(Rejected::FrameNotInBlock {
                    leaf_index: 3,
                    leaf_count: 5,
                })) => {}
                other => panic!("frame byte {at}: {other:?}"),
            }
        }
        let mut p = f.proof.clone();
        p.frame.pop();
        assert!(matches!(
            check(&f, &p),
            Err(Error::Malformed(Malformed::Frame(_)))
        ));
    }

    #[test]
    fn every_changed_header_byte_is_refused() {
        let f = fixture();
        for at in 0..f.proof.header.len() {
            let mut p = f.proof.clone();
            p.header[at] ^= 0x02;
            match check(&f, &p) {
                Err(Error::Malformed(Malformed::BlockHeader(_))) => {}
                Err(Error::Rejected(
                    Rejected::FrameNotInBlock { .. } | Rejected::EntryNotForBlock(_),
                )) => {}
                other => panic!("header byte {at}: {other:?}"),
            }
        }
        // Each field the entry names is caught as itself.
        let field = |at: usize| {
            let mut p = f.proof.clone();
            p.header[at] ^= 0x02;
            rejected(&f, &p)
        };
        assert_eq!(field(4), Rejected::EntryNotForBlock("relay id"));
        assert_eq!(field(8), Rejected::EntryNotForBlock("height"));
        assert_eq!(field(16), Rejected::EntryNotForBlock("block hash"));
        // The leaf count 5 → 7 leaves the frame's audit path valid; the hash catches it.
        assert_eq!(field(80), Rejected::EntryNotForBlock("block hash"));
        assert!(matches!(field(48), Rejected::FrameNotInBlock { .. }));
        let mut p = f.proof.clone();
        p.header.push(0);
        assert!(matches!(
            check(&f, &p),
            Err(Error::Malformed(Malformed::BlockHeader(_)))
        ));
    }

    #[test]
    fn a_changed_block_path_or_leaf_index_is_refused() {
        let f = fixture();
        for i in 0..f.proof.block_path.len() {
            let mut p = f.proof.clone();
            p.block_path[i][31] ^= 0x80;
            assert!(matches!(rejected(&f, &p), Rejected::FrameNotInBlock { .. }));
        }
        for leaf_index in [0, 1, 2, 4, 5, u32::MAX] {
            let mut p = f.proof.clone();
            p.leaf_index = leaf_index;
            assert_eq!(
                rejected(&f, &p),
                Rejected::FrameNotInBlock {
                    leaf_index,
                    leaf_count: 5
                }
            );
        }
        let mut p = f.proof.clone();
        p.block_path.pop();
        assert!(matches!(rejected(&f, &p), Rejected::FrameNotInBlock { .. }));
        let mut p = f.proof.clone();
        p.block_path = vec![[0; 32]; 65];
        assert!(matches!(
            check(&f, &p),
            Err(Error::Malformed(Malformed::ProofTooLong))
        ));
    }

    #[test]
    fn every_changed_entry_byte_is_refused() {
        let f = fixture();
        for at in 0..f.proof.entry.len() {
            let mut p = f.proof.clone();
            p.entry[at] ^= 0x04;
            let want: &[&str] = match at {
                0..4 => &[],
                4..8 => &["relay id"],
                8..16 => &["height"],
                16..48 => &["block hash"],
                _ => &["Merkle root"],
            };
            match check(&f, &p) {
                Err(Error::Malformed(Malformed::LogEntry(_))) if want.is_empty() => {}
                Err(Error::Rejected(Rejected::EntryNotForBlock(field)))
                    if want.contains(&field) => {}
                other => panic!("entry byte {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_changed_log_index_or_log_path_is_refused() {
        let f = fixture();
        for log_index in [0, 3, 5, 6, 7, u64::MAX] {
            let mut p = f.proof.clone();
            p.log_index = log_index;
            assert_eq!(
                rejected(&f, &p),
                Rejected::EntryNotInLog {
                    log_index,
                    tree_size: 7
                }
            );
        }
        for i in 0..f.proof.log_path.len() {
            let mut p = f.proof.clone();
            p.log_path[i][0] ^= 1;
            assert!(matches!(rejected(&f, &p), Rejected::EntryNotInLog { .. }));
        }
        let mut p = f.proof.clone();
        p.log_path.push([0; 32]);
        assert!(matches!(rejected(&f, &p), Rejected::EntryNotInLog { .. }));
    }

    #[test]
    fn a_checkpoint_of_another_tree_is_refused_signed_or_not() {
        let f = fixture();
        // Signed by the log's key, but for another size or root: the entry is
        // not in it. (The path of leaf 4 of 7 also fits a tree of 8: a root
        // signed for size 8 would be the log's own word, as any checkpoint is.)
        for (size, root) in [(f.size - 2, f.root), (4, f.root), (f.size, [0x99; 32])] {
            let mut p = f.proof.clone();
            p.checkpoint = f.checkpoint(&f.log, size, &root);
            assert!(matches!(rejected(&f, &p), Rejected::EntryNotInLog { .. }));
        }
        // The right tree re-signed by another key of the same name.
        let impostor = NoteSigner::from_seed(fixture::ORIGIN, [0x66; 32]).unwrap();
        let mut p = f.proof.clone();
        p.checkpoint = f.checkpoint(&impostor, f.size, &f.root);
        assert!(matches!(rejected(&f, &p), Rejected::NotSigned(_)));
        // Unsigned: the size or the root changed under the log's signature.
        let mut p = f.proof.clone();
        p.checkpoint = f.proof.checkpoint.replacen("\n7\n", "\n8\n", 1);
        assert_ne!(p.checkpoint, f.proof.checkpoint);
        assert!(matches!(rejected(&f, &p), Rejected::BadSignature { .. }));
        let body = crate::checkpoint::Checkpoint::new(fixture::ORIGIN, f.size, f.root)
            .body()
            .unwrap();
        let root_line = body.lines().nth(2).unwrap();
        let other = crate::checkpoint::Checkpoint::new(fixture::ORIGIN, f.size, [1; 32])
            .body()
            .unwrap();
        let mut p = f.proof.clone();
        p.checkpoint = f
            .proof
            .checkpoint
            .replacen(root_line, other.lines().nth(2).unwrap(), 1);
        assert!(matches!(rejected(&f, &p), Rejected::BadSignature { .. }));
        // Signatures stripped.
        let mut p = f.proof.clone();
        p.checkpoint = format!("{body}\n");
        assert!(matches!(
            check(&f, &p),
            Err(Error::Malformed(Malformed::Note))
        ));
        // Another log's checkpoint, verified with its own key, is not the origin's.
        let other_log = NoteSigner::from_seed("other.example/log", [0x4c; 32]).unwrap();
        let mut p = f.proof.clone();
        p.checkpoint = crate::checkpoint::Checkpoint::new(fixture::ORIGIN, f.size, f.root)
            .sign(&other_log)
            .unwrap();
        assert!(matches!(
            p.verify(&other_log.verifier(), &[], 0),
            Err(Error::Rejected(Rejected::WrongOrigin { .. }))
        ));
    }

    #[test]
    fn required_cosignatures_must_be_there_and_count_once_per_witness() {
        let f = fixture();
        let log = f.log.verifier();
        let w = f.witness.verifier();
        let uncosigned =
            crate::checkpoint::sign_checkpoint(&f.log, fixture::ORIGIN, f.size, &f.root).unwrap();
        let mut p = f.proof.clone();
        p.checkpoint = uncosigned.clone();
        assert!(p.verify(&log, std::slice::from_ref(&w), 0).is_ok());
        assert_eq!(
            rejected(&f, &p),
            Rejected::TooFewCosignatures { needed: 1, got: 0 }
        );
        // The idle witness did not cosign.
        assert_eq!(
            f.proof
                .verify(&log, &[w.clone(), f.idle_witness.verifier()], 2)
                .unwrap_err()
                .to_string(),
            "rejected: cosignatures: 1 valid from distinct witnesses, 2 required"
        );
        // The same witness given twice counts once.
        assert!(matches!(
            f.proof.verify(&log, &[w.clone(), w.clone()], 2),
            Err(Error::Rejected(Rejected::TooFewCosignatures {
                needed: 2,
                got: 1
            }))
        ));
        // The same key cosigning under a second name counts once too.
        let alias = WitnessKey::from_seed("witness.example/alias", [0x57; 32]).unwrap();
        let body = crate::checkpoint::Checkpoint::new(fixture::ORIGIN, f.size, f.root)
            .body()
            .unwrap();
        let mut p = f.proof.clone();
        p.checkpoint =
            add_cosignature(&f.proof.checkpoint, &alias.cosign(&body, 5).unwrap()).unwrap();
        let both = [w.clone(), alias.verifier()];
        assert_eq!(p.verify(&log, &both, 1).unwrap().cosignatures.len(), 1);
        assert!(matches!(
            p.verify(&log, &both, 2),
            Err(Error::Rejected(Rejected::TooFewCosignatures {
                needed: 2,
                got: 1
            }))
        ));
        // A cosignature over another checkpoint is not counted.
        let mut p = f.proof.clone();
        let wrong = f
            .witness
            .cosign(&body.replace("\n7\n", "\n6\n"), 9)
            .unwrap();
        p.checkpoint = add_cosignature(&uncosigned, &wrong).unwrap();
        assert_eq!(
            rejected(&f, &p),
            Rejected::TooFewCosignatures { needed: 1, got: 0 }
        );
    }

    #[test]
    fn the_values_open_with_the_meters_key_and_only_as_stated() {
        let f = fixture();
        let r = f.proof.verify_values(f.e2e_key).unwrap();
        assert_eq!(r, f.proof.reading.values());
        let mut wrong = f.e2e_key;
        wrong[0] ^= 1;
        assert!(matches!(
            f.proof.verify_values(wrong),
            Err(Error::Rejected(Rejected::FrameDoesNotOpen))
        ));
        let mut p = f.proof.clone();
        p.reading.values.voltage_cv += 1;
        assert!(matches!(
            p.verify_values(f.e2e_key),
            Err(Error::Rejected(Rejected::ValuesDiffer))
        ));
        // The neighbouring reading's values are the frame's too, at its own seq only.
        let mut p = f.proof.clone();
        p.reading.seq = 100;
        assert!(matches!(
            p.verify_values(f.e2e_key),
            Err(Error::Rejected(Rejected::ValuesDiffer))
        ));
        let mut p = f.proof.clone();
        p.frame[30] ^= 1;
        assert!(matches!(
            p.verify_values(f.e2e_key),
            Err(Error::Rejected(Rejected::FrameDoesNotOpen))
        ));
    }
}
