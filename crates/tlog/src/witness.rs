//! c2sp.org/tlog-witness `add-checkpoint`, sans-IO: the request body, a
//! [`Witness`] state machine that answers it, and the client's side.
//!
//! ```text
//! old <size>\n                 the size the client believes the witness holds
//! <base64 hash>\n …            consistency proof from old size (≤ 63 lines)
//! \n
//! <checkpoint note>            origin, size, root, log signature(s)
//! ```
//!
//! The witness answers, in this order: 400 malformed request; 404 unknown
//! origin; 403 no valid signature by a trusted key for the origin (or a
//! failing one); 400 old size above the checkpoint's; 409 old size is not
//! the size it holds (body: its size and a newline, `text/x.tlog.size`);
//! 422 a non-empty checkpoint of size 0 or a proof from size 0, a different
//! root at the same size, or a consistency proof that does not verify; else
//! 200 with its cosignature line, after updating its state. It thus never
//! cosigns a smaller tree nor two roots at one size; the same checkpoint
//! again is cosigned again.
//!
//! A driver owns the IO: it feeds a request body and the time with
//! [`Witness::handle_add_checkpoint`], persists [`Witness::state`] when the
//! response says it changed, and only then sends the response. Requests go
//! through `&mut self`, one at a time, so the check of the old size and the
//! update are atomic, as the spec requires.

use std::collections::BTreeMap;

use base64::prelude::{Engine, BASE64_STANDARD};
use serde::{Deserialize, Serialize};
use signed_note::Verifier;
use tlog_tiles::HashReader;

use crate::checkpoint::Checkpoint;
use crate::cosignature::WitnessKey;
use crate::error::{Error, Malformed};
use crate::note::{split_note, verify_note_by_any, NoteVerifier};
use crate::proofs::{consistency_proof, verify_consistency};
use crate::Hash;

/// At most this many consistency proof lines in a request.
pub const MAX_PROOF_LINES: usize = 63;
/// Content type of a 409 response body.
pub const CONTENT_TYPE_SIZE: &str = "text/x.tlog.size";
/// Content type of other responses.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
/// Largest request body the witness reads (a checkpoint note is small).
pub const MAX_REQUEST_LEN: usize = 1 << 20;

/// An `add-checkpoint` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the last checkpoint the client believes the witness cosigned.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, Error> {
        let bad = |why| Error::from(Malformed::WitnessRequest(why));
        if body.len() > MAX_REQUEST_LEN {
            return Err(bad("too long"));
        }
        let body = core::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
        let (first, mut rest) = body.split_once('\n').ok_or(bad("no old size line"))?;
        let old = first
            .strip_prefix("old ")
            .ok_or(bad("first line is not `old <size>`"))?;
        let old_size =
            decimal(old).ok_or(bad("old size is not a decimal without leading zeroes"))?;
        let mut proof = Vec::new();
        loop {
            let (line, tail) = rest
                .split_once('\n')
                .ok_or(bad("no empty line before the checkpoint"))?;
            rest = tail;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad("more than 63 proof lines"));
            }
            let h = BASE64_STANDARD
                .decode(line)
                .map_err(|_| bad("proof line is not base64"))?;
            proof.push(
                <Hash>::try_from(h.as_slice())
                    .map_err(|_| bad("proof line is not a 32-byte hash"))?,
            );
        }
        Ok(AddCheckpoint {
            old_size,
            proof,
            checkpoint: rest.to_owned(),
        })
    }

    /// The request body.
    pub fn encode(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&BASE64_STANDARD.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }
}

/// A decimal with no leading zeroes (or `0`) that fits a u64.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The client's side: the `add-checkpoint` body for `checkpoint_note`, with
/// the consistency proof from `old_size` read from the log's stored hashes.
pub fn add_checkpoint_request<R: HashReader + ?Sized>(
    reader: &R,
    old_size: u64,
    checkpoint_note: &str,
) -> Result<String, Error> {
    let (text, _) = split_note(checkpoint_note)?;
    let c = Checkpoint::parse(&text)?;
    Ok(AddCheckpoint {
        old_size,
        proof: consistency_proof(reader, old_size, c.size)?,
        checkpoint: checkpoint_note.to_owned(),
    }
    .encode())
}

/// The client's side: the size in a 409 response body (`<size>\n`).
pub fn parse_conflict_size(body: &str) -> Result<u64, Error> {
    body.strip_suffix('\n')
        .and_then(decimal)
        .ok_or(Malformed::WitnessRequest("409 body is not `<size>\\n`").into())
}

/// What a witness last cosigned for one log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// The tree size.
    pub size: u64,
    /// The root hash, base64 in serialized form.
    #[serde(with = "base64_hash")]
    pub root: Hash,
}

/// A witness's persistent state: per origin, the last checkpoint it cosigned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    /// Origin → last cosigned size and root.
    pub logs: BTreeMap<String, LogState>,
}

mod base64_hash {
    use base64::prelude::{Engine, BASE64_STANDARD};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64_STANDARD.encode(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = BASE64_STANDARD.decode(s).map_err(D::Error::custom)?;
        <[u8; 32]>::try_from(v.as_slice()).map_err(|_| D::Error::custom("root is not 32 bytes"))
    }
}

/// A witness's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status: 200, 400, 403, 404, 409, 422 (500 for a bad clock).
    pub status: u16,
    /// Content type of the body.
    pub content_type: &'static str,
    /// The body: cosignature line(s) on 200, the size on 409, a reason otherwise.
    pub body: String,
    /// The state changed: persist [`Witness::state`] before sending this.
    pub state_changed: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        body.push('\n');
        Response {
            status,
            content_type: CONTENT_TYPE_TEXT,
            body,
            state_changed: false,
        }
    }
}

/// A witness: its key, the logs it trusts and what it last cosigned.
#[derive(Debug)]
pub struct Witness {
    key: WitnessKey,
    logs: BTreeMap<String, Vec<NoteVerifier>>,
    state: WitnessState,
}

impl Witness {
    /// A witness with no configured log, starting from `state` (as last persisted).
    pub fn new(key: WitnessKey, state: WitnessState) -> Witness {
        Witness {
            key,
            logs: BTreeMap::new(),
            state,
        }
    }

    /// Trusts `log_key` for checkpoints of `origin` (a log may have several keys).
    pub fn add_log(&mut self, origin: &str, log_key: NoteVerifier) {
        let keys = self.logs.entry(origin.to_owned()).or_default();
        if !keys.contains(&log_key) {
            keys.push(log_key);
        }
    }

    /// The state to persist.
    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// The witness's key.
    pub fn key(&self) -> &WitnessKey {
        &self.key
    }

    /// Answers an `add-checkpoint` request body at `now_unix` (POSIX seconds,
    /// the cosignature's timestamp; 0 or above 2^63 − 1 gives a 500 and
    /// changes nothing).
    pub fn handle_add_checkpoint(&mut self, body: &[u8], now_unix: u64) -> Response {
        let req = match AddCheckpoint::parse(body) {
            Ok(r) => r,
            Err(e) => return Response::text(400, e.to_string()),
        };
        let (text, _) = match split_note(&req.checkpoint) {
            Ok(t) => t,
            Err(e) => return Response::text(400, e.to_string()),
        };
        let c = match Checkpoint::parse(&text) {
            Ok(c) => c,
            Err(e) => return Response::text(400, e.to_string()),
        };
        let Some(keys) = self.logs.get(&c.origin) else {
            return Response::text(404, format!("unknown log origin {:?}", c.origin));
        };
        let known: Vec<&dyn Verifier> = keys.iter().map(|k| k as &dyn Verifier).collect();
        if let Err(e) = verify_note_by_any(&req.checkpoint, &known) {
            return match e {
                Error::Malformed(_) => Response::text(400, e.to_string()),
                _ => Response::text(403, e.to_string()),
            };
        }
        if req.old_size > c.size {
            return Response::text(400, "old size above the checkpoint's size");
        }
        let held = self.state.logs.get(&c.origin).copied();
        let held_size = held.map_or(0, |s| s.size);
        if req.old_size != held_size {
            return Response {
                status: 409,
                content_type: CONTENT_TYPE_SIZE,
                body: format!("{held_size}\n"),
                state_changed: false,
            };
        }
        if c.size == 0 && c.root != tlog_tiles::EMPTY_HASH.0 {
            return Response::text(
                422,
                "a checkpoint of size 0 must have the empty tree's root",
            );
        }
        if req.old_size == 0 {
            if !req.proof.is_empty() {
                return Response::text(422, "a proof from size 0 must be empty");
            }
        } else {
            // old size = held size > 0, so the witness holds the old root.
            let old_root = held.map_or(tlog_tiles::EMPTY_HASH.0, |s| s.root);
            if req.old_size == c.size && old_root != c.root {
                return Response::text(422, "another root at the size the witness holds");
            }
            if let Err(e) = verify_consistency(&req.proof, req.old_size, &old_root, c.size, &c.root)
            {
                return Response::text(422, format!("consistency proof: {e}"));
            }
        }
        let line = match self.key.cosign(&text, now_unix) {
            Ok(l) => l,
            Err(e) => return Response::text(500, e.to_string()),
        };
        let new = LogState {
            size: c.size,
            root: c.root,
        };
        let changed = held != Some(new);
        self.state.logs.insert(c.origin, new);
        Response {
            status: 200,
            content_type: CONTENT_TYPE_TEXT,
            body: line,
            state_changed: changed,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::checkpoint::{open_checkpoint_for, sign_checkpoint};
    use crate::cosignature::add_cosignature;
    use crate::note::NoteSigner;
    use crate::proofs::{tree_root, MemoryHashes};

    const ORIGIN: &str = "log.example/w";

    fn setup() -> (NoteSigner, MemoryHashes, Witness) {
        let log = NoteSigner::from_seed(ORIGIN, [0x4c; 32]).unwrap();
        let mut hashes = MemoryHashes::new();
        for i in 0u32..40 {
            hashes.push_entry(&i.to_le_bytes());
        }
        let mut w = Witness::new(
            WitnessKey::from_seed("witness.example/w1", [0x57; 32]).unwrap(),
            WitnessState::default(),
        );
        w.add_log(ORIGIN, log.verifier());
        (log, hashes, w)
    }

    fn note(log: &NoteSigner, hashes: &MemoryHashes, size: u64) -> String {
        sign_checkpoint(log, ORIGIN, size, &tree_root(hashes, size).unwrap()).unwrap()
    }

    #[test]
    fn a_witness_cosigns_consistent_growth_and_the_same_checkpoint_again() {
        let (log, hashes, mut w) = setup();
        let n10 = note(&log, &hashes, 10);
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 0, &n10).unwrap().as_bytes(),
            100,
        );
        assert_eq!((r.status, r.state_changed), (200, true), "{}", r.body);
        let cosigned = add_cosignature(&n10, &r.body).unwrap();
        let opened =
            open_checkpoint_for(&cosigned, ORIGIN, &log.verifier(), &[w.key().verifier()]).unwrap();
        assert_eq!(opened.cosignatures[0].timestamp, 100);
        // The same checkpoint again: cosigned again, state unchanged.
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 10, &n10)
                .unwrap()
                .as_bytes(),
            101,
        );
        assert_eq!((r.status, r.state_changed), (200, false), "{}", r.body);
        let n40 = note(&log, &hashes, 40);
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 10, &n40)
                .unwrap()
                .as_bytes(),
            102,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(w.state().logs[ORIGIN].size, 40);
        // Never back to a smaller tree.
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 10, &n10)
                .unwrap()
                .as_bytes(),
            103,
        );
        assert_eq!(
            (r.status, r.content_type, r.body.as_str()),
            (409, CONTENT_TYPE_SIZE, "40\n")
        );
        assert_eq!(parse_conflict_size(&r.body).unwrap(), 40);
        let r = w.handle_add_checkpoint(
            AddCheckpoint {
                old_size: 40,
                proof: vec![],
                checkpoint: n10,
            }
            .encode()
            .as_bytes(),
            104,
        );
        assert_eq!(r.status, 400);
        // The state survives serialization.
        let json = serde_json::to_string(w.state()).unwrap();
        assert_eq!(
            serde_json::from_str::<WitnessState>(&json).unwrap(),
            *w.state()
        );
    }

    #[test]
    fn a_witness_refuses_a_split_view_and_an_inconsistent_checkpoint() {
        let (log, hashes, mut w) = setup();
        let n10 = note(&log, &hashes, 10);
        assert_eq!(
            w.handle_add_checkpoint(
                add_checkpoint_request(&hashes, 0, &n10).unwrap().as_bytes(),
                1
            )
            .status,
            200
        );
        // Another tree: the same first 9 leaves, a different 10th, then more.
        let mut fork = MemoryHashes::new();
        for i in 0u32..40 {
            fork.push_entry(&(if i == 9 { 999 } else { i }).to_le_bytes());
        }
        // Split view: another root at size 10.
        let f10 = note(&log, &fork, 10);
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&fork, 10, &f10).unwrap().as_bytes(),
            2,
        );
        assert_eq!(r.status, 422, "{}", r.body);
        // Inconsistent growth: the fork's proof does not lead from the held root.
        let f20 = note(&log, &fork, 20);
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&fork, 10, &f20).unwrap().as_bytes(),
            3,
        );
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(w.state().logs[ORIGIN].size, 10);
        assert_eq!(w.state().logs[ORIGIN].root, tree_root(&hashes, 10).unwrap());
        // A proof from 0 must be empty; size 0 must have the empty root.
        let mut w2 = setup().2;
        let r = w2.handle_add_checkpoint(
            AddCheckpoint {
                old_size: 0,
                proof: vec![[1; 32]],
                checkpoint: n10.clone(),
            }
            .encode()
            .as_bytes(),
            1,
        );
        assert_eq!(r.status, 422);
        let z = sign_checkpoint(&log, ORIGIN, 0, &[1; 32]).unwrap();
        assert_eq!(
            w2.handle_add_checkpoint(
                AddCheckpoint {
                    old_size: 0,
                    proof: vec![],
                    checkpoint: z
                }
                .encode()
                .as_bytes(),
                1
            )
            .status,
            422
        );
    }

    #[test]
    fn unknown_origins_bad_signatures_and_malformed_requests_are_refused() {
        let (log, hashes, mut w) = setup();
        let other = NoteSigner::from_seed("other.example", [9; 32]).unwrap();
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(
                &hashes,
                0,
                &sign_checkpoint(&other, "other.example", 3, &tree_root(&hashes, 3).unwrap())
                    .unwrap(),
            )
            .unwrap()
            .as_bytes(),
            1,
        );
        assert_eq!(r.status, 404);
        let impostor = NoteSigner::from_seed(ORIGIN, [9; 32]).unwrap();
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 0, &note(&impostor, &hashes, 3))
                .unwrap()
                .as_bytes(),
            1,
        );
        assert_eq!(r.status, 403, "{}", r.body);
        let altered = note(&log, &hashes, 3).replacen("\n3\n", "\n4\n", 1);
        let r = w.handle_add_checkpoint(
            AddCheckpoint {
                old_size: 0,
                proof: vec![],
                checkpoint: altered,
            }
            .encode()
            .as_bytes(),
            1,
        );
        assert_eq!(r.status, 403, "{}", r.body);
        for bad in [
            &b""[..],
            b"old 01\n\n",
            b"old 1\nAAAA\n\n",
            b"new 1\n\n",
            b"old 0\n",
            b"old 0\n\nnot a note\n",
            b"\xff",
        ] {
            assert_eq!(
                w.handle_add_checkpoint(bad, 1).status,
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let r = w.handle_add_checkpoint(
            add_checkpoint_request(&hashes, 0, &note(&log, &hashes, 3))
                .unwrap()
                .as_bytes(),
            0,
        );
        assert_eq!((r.status, r.state_changed), (500, false));
        assert!(w.state().logs.is_empty());
        let req = AddCheckpoint {
            old_size: 7,
            proof: vec![[3; 32]; 63],
            checkpoint: "x\n\n— a AAAAAA==\n".into(),
        };
        assert_eq!(AddCheckpoint::parse(req.encode().as_bytes()).unwrap(), req);
        let mut long = req.clone();
        long.proof.push([3; 32]);
        assert!(AddCheckpoint::parse(long.encode().as_bytes()).is_err());
    }
}
