//! The relay's watch over the grid server's transparency log (§16): the
//! rule every relay (Linux and ESP32) applies to hold the server to one
//! append-only history.
//!
//! The relay keeps the newest checkpoint it has verified (its *trusted*
//! head). A newer checkpoint is adopted only after a consistency proof
//! from the trusted one verifies. An older one (servers sharing a database
//! publish in turn, so checkpoints may arrive out of order) is checked the
//! other way: a proof that it is a prefix of the trusted tree. Another root
//! at the trusted size, or a consistency proof that fails, raises an alarm. Every receipt for a stored
//! block names the block's log index and the tree size it was committed
//! under; once the trusted head covers that size, the relay asks for an
//! inclusion proof of its own entry (which it can build: relay id, height,
//! hash and Merkle root are its own block's) and raises an alarm if it
//! fails. Proofs travel unsigned over MQTT ([`crate::wire::log_proof`]):
//! they are checked against signed checkpoints.
//!
//! Sans-IO: `handle_checkpoint`, `handle_receipt` and `handle_proof` take
//! the inputs, `poll_request` says which proof to ask for next and
//! `poll_alarm` gives alarms to log and count. Time comes in as arguments.

use crate::checkpoint::{NoteKey, TreeHead};
use crate::crypto::CryptoProvider;
use crate::merkle::{leaf_hash, verify_consistency, verify_inclusion, MAX_PROOF_LEN};
use crate::wire::{LogLeafRepr, LogPosition, LogProof, LogProofKind, LogProofRequest};
use crate::{Duration, Hash, Instant};

/// How long a proof request may go unanswered before it is asked again.
pub const PROOF_RETRY: Duration = Duration::from_secs(5);

/// Why the relay no longer trusts the server's log. Each one is evidence: the
/// checkpoints involved are signed by the log's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogAlarm {
    /// Two validly signed checkpoints of one size with different roots: the
    /// server shows different histories (a fork or split view).
    SplitView {
        /// The size both name.
        size: u64,
    },
    /// The server's consistency proof between the trusted tree and another
    /// signed checkpoint does not verify: one of the two trees rewrote the
    /// other's history (a rewritten, deleted or reordered block).
    Inconsistent {
        /// The smaller size.
        old: u64,
        /// The larger size.
        new: u64,
    },
    /// A receipt said a block was stored at a log index, but the log the
    /// relay was shown does not hold the block there.
    NotInLog {
        /// The block's height.
        height: u64,
        /// The index the receipt named.
        index: u64,
        /// The trusted tree size it was checked against.
        tree_size: u64,
    },
}

/// Counters, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogWatchStats {
    /// Checkpoints whose signature verified.
    pub checkpoints_verified: u64,
    /// Checkpoints refused (malformed, another log, bad signature).
    pub checkpoints_refused: u64,
    /// Consistency proofs that verified (a newer head adopted).
    pub heads_adopted: u64,
    /// Older checkpoints proven to be prefixes of the trusted tree.
    pub older_heads_proven: u64,
    /// Receipts whose block was proven in the log.
    pub receipts_proven: u64,
    /// Receipts dropped unproven because the check queue was full.
    pub checks_dropped: u64,
    /// Proof messages refused (malformed, or answering nothing asked).
    pub proofs_refused: u64,
    /// Alarms raised (the same alarm twice in a row counts once).
    pub alarms: u64,
}

#[derive(Clone, Copy, Debug)]
struct Check {
    height: u64,
    leaf: Hash,
    at: LogPosition,
}

const ALARM_QUEUE: usize = 4;

/// The watch; `N` receipts may wait for their inclusion proof at once.
#[derive(Debug)]
pub struct LogWatch<const N: usize> {
    key: NoteKey,
    relay_id: u32,
    trusted: Option<TreeHead>,
    /// A newer checkpoint waiting for its consistency proof.
    ahead: Option<TreeHead>,
    /// An older checkpoint waiting for its proof of being a prefix.
    behind: Option<TreeHead>,
    checks: [Option<Check>; N],
    asked: Option<(LogProofRequest, Instant)>,
    alarms: [Option<LogAlarm>; ALARM_QUEUE],
    last_alarm: Option<LogAlarm>,
    stats: LogWatchStats,
}

impl<const N: usize> LogWatch<N> {
    /// A watch over the log whose note key is `key`, for relay `relay_id`,
    /// starting from `trusted` (the head kept from an earlier run, if any).
    pub fn new(key: NoteKey, relay_id: u32, trusted: Option<TreeHead>) -> Self {
        LogWatch {
            key,
            relay_id,
            trusted,
            ahead: None,
            behind: None,
            checks: [None; N],
            asked: None,
            alarms: [None; ALARM_QUEUE],
            last_alarm: None,
            stats: LogWatchStats::default(),
        }
    }

    /// The newest head whose consistency with every earlier one was proven
    /// (the first one seen is trusted on first use). Keep it durably.
    pub fn trusted(&self) -> Option<TreeHead> {
        self.trusted
    }

    /// Counters.
    pub fn stats(&self) -> LogWatchStats {
        self.stats
    }

    /// The most recent alarm, for a status display (alarms do not clear).
    pub fn last_alarm(&self) -> Option<LogAlarm> {
        self.last_alarm
    }

    /// Receipts still waiting for their inclusion proof.
    pub fn pending_checks(&self) -> usize {
        self.checks.iter().flatten().count()
    }

    fn alarm(&mut self, a: LogAlarm) {
        // The same evidence again (a retained checkpoint re-delivered) is
        // one alarm.
        if self.last_alarm == Some(a) {
            return;
        }
        self.stats.alarms += 1;
        self.last_alarm = Some(a);
        if let Some(slot) = self.alarms.iter_mut().find(|s| s.is_none()) {
            *slot = Some(a);
        }
    }

    /// A checkpoint note arrived (the retained MQTT message). A note that
    /// does not open under the log's key is refused and counted; the caller
    /// logs the error.
    pub fn handle_checkpoint<C: CryptoProvider>(
        &mut self,
        provider: &C,
        note: &[u8],
    ) -> Result<(), crate::Error> {
        let head = match self.key.open_checkpoint(provider, note) {
            Ok(h) => h,
            Err(e) => {
                self.stats.checkpoints_refused += 1;
                return Err(e);
            }
        };
        self.stats.checkpoints_verified += 1;
        let Some(trusted) = self.trusted else {
            self.trusted = Some(head);
            return Ok(());
        };
        if head.size == trusted.size {
            if head.root != trusted.root {
                self.alarm(LogAlarm::SplitView { size: head.size });
            }
            return Ok(());
        }
        // The empty tree is a prefix of every tree.
        if head.size == 0 {
            return Ok(());
        }
        let slot = if head.size < trusted.size {
            &mut self.behind
        } else {
            &mut self.ahead
        };
        match *slot {
            Some(c) if c.size == head.size && c.root != head.root => {
                self.alarm(LogAlarm::SplitView { size: head.size });
            }
            // Ahead, the newest is worth proving; behind, any one will do.
            Some(c) if head.size > trusted.size && c.size >= head.size => {}
            Some(_) if head.size < trusted.size => {}
            _ => *slot = Some(head),
        }
        Ok(())
    }

    /// A verified receipt for one of this relay's blocks named its log
    /// position: `entry` is the log entry the relay builds from its own block.
    /// A position outside its tree (which a parsed receipt never holds) is
    /// refused.
    pub fn handle_receipt<C: CryptoProvider>(
        &mut self,
        provider: &C,
        entry: &LogLeafRepr,
        at: LogPosition,
    ) -> Result<(), crate::Misuse> {
        if at.index >= at.tree_size {
            return Err(crate::Misuse::InvalidArgument);
        }
        let check = Check {
            height: entry.height,
            leaf: leaf_hash(provider, &entry.to_bytes()),
            at,
        };
        match self.checks.iter_mut().find(|c| c.is_none()) {
            Some(slot) => *slot = Some(check),
            None => self.stats.checks_dropped += 1,
        }
        Ok(())
    }

    /// The proof to ask the server for now, if any: a consistency proof for
    /// a newer checkpoint first, then inclusion proofs for receipts the
    /// trusted head covers. One request is outstanding at a time; it is
    /// asked again after [`PROOF_RETRY`].
    pub fn poll_request(&mut self, now: Instant) -> Option<LogProofRequest> {
        if let Some((_, at)) = self.asked {
            if now < at + PROOF_RETRY {
                return None;
            }
        }
        let trusted = self.trusted?;
        if trusted.size == 0 {
            // Every tree extends the empty one: no proof to ask for.
            if let Some(a) = self.ahead.take() {
                self.trusted = Some(a);
                self.stats.heads_adopted += 1;
            }
            return None;
        }
        let (kind, first, second) = if let Some(a) = self.ahead {
            (LogProofKind::Consistency, trusted.size, a.size)
        } else if let Some(b) = self.behind {
            (LogProofKind::Consistency, b.size, trusted.size)
        } else {
            let c = self
                .checks
                .iter()
                .flatten()
                .find(|c| c.at.tree_size <= trusted.size)?;
            (LogProofKind::Inclusion, c.at.index, trusted.size)
        };
        let req = LogProofRequest {
            kind,
            relay_id: self.relay_id,
            first,
            second,
        };
        self.asked = Some((req, now));
        Some(req)
    }

    /// A proof message arrived on the relay's proof topic. Proofs that
    /// answer nothing outstanding are refused and counted (a stale answer
    /// to an earlier request, or noise).
    pub fn handle_proof<C: CryptoProvider>(
        &mut self,
        provider: &C,
        bytes: &[u8],
    ) -> Result<(), crate::Error> {
        let proof = match LogProof::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.proofs_refused += 1;
                return Err(e.into());
            }
        };
        let (Some((asked, _)), Some(trusted)) = (self.asked, self.trusted) else {
            self.stats.proofs_refused += 1;
            return Err(crate::Rejected::UnexpectedAck.into());
        };
        if proof.request != asked {
            self.stats.proofs_refused += 1;
            return Err(crate::Rejected::UnexpectedAck.into());
        }
        self.asked = None;
        let mut buf = [[0u8; 32]; MAX_PROOF_LEN];
        let path = proof.path(&mut buf);
        match asked.kind {
            LogProofKind::Consistency if asked.first == trusted.size => {
                // Trusted → newer: adopt it, or alarm.
                let Some(a) = self.ahead.filter(|a| a.size == asked.second) else {
                    return Ok(());
                };
                self.ahead = None;
                if verify_consistency(provider, trusted.size, a.size, &trusted.root, &a.root, path)
                {
                    self.trusted = Some(a);
                    self.stats.heads_adopted += 1;
                } else {
                    self.alarm(LogAlarm::Inconsistent {
                        old: trusted.size,
                        new: a.size,
                    });
                }
            }
            LogProofKind::Consistency => {
                // Older → trusted: it must be a prefix.
                let Some(b) = self
                    .behind
                    .filter(|b| b.size == asked.first && asked.second == trusted.size)
                else {
                    return Ok(());
                };
                self.behind = None;
                if verify_consistency(provider, b.size, trusted.size, &b.root, &trusted.root, path)
                {
                    self.stats.older_heads_proven += 1;
                } else {
                    self.alarm(LogAlarm::Inconsistent {
                        old: b.size,
                        new: trusted.size,
                    });
                }
            }
            LogProofKind::Inclusion => {
                if asked.second != trusted.size {
                    // Asked under an older head: ask again under this one.
                    return Ok(());
                }
                let Some(slot) = self.checks.iter_mut().find(|c| {
                    c.is_some_and(|c| c.at.index == asked.first && c.at.tree_size <= trusted.size)
                }) else {
                    return Ok(());
                };
                let Some(check) = slot.take() else {
                    return Ok(());
                };
                if verify_inclusion(
                    provider,
                    &check.leaf,
                    check.at.index,
                    trusted.size,
                    path,
                    &trusted.root,
                ) {
                    self.stats.receipts_proven += 1;
                } else {
                    self.alarm(LogAlarm::NotInLog {
                        height: check.height,
                        index: check.at.index,
                        tree_size: trusted.size,
                    });
                }
            }
        }
        Ok(())
    }

    /// The next alarm to log (each is given out once; at most four wait).
    pub fn poll_alarm(&mut self) -> Option<LogAlarm> {
        let first = self.alarms[0].take();
        self.alarms.rotate_left(1);
        first
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
#[allow(clippy::unwrap_used)] // test helpers
mod tests {
    extern crate std;
    use super::*;
    use crate::checkpoint::test_notes::{checkpoint, vkey};
    use crate::crypto::RustCrypto;
    use crate::merkle::{consistency_proof, inclusion_proof, root_of_hashes};
    use crate::wire::MAX_LOG_PROOF_LEN;
    use ed25519_dalek::SigningKey;
    use std::vec::Vec;

    const NAME: &str = "grid.test/log";

    fn entry(relay_id: u32, height: u64) -> LogLeafRepr {
        LogLeafRepr {
            relay_id,
            height,
            block_hash: [height as u8; 32],
            merkle_root: [relay_id as u8; 32],
        }
    }

    /// A server's log: entries, its key, and the answers it gives.
    struct Log {
        leaves: Vec<Hash>,
        key: SigningKey,
    }

    impl Log {
        fn new(n: u64) -> Log {
            let mut l = Log {
                leaves: Vec::new(),
                key: SigningKey::from_bytes(&[0x4c; 32]),
            };
            for h in 0..n {
                l.push(entry(1 + (h % 3) as u32, h));
            }
            l
        }
        fn push(&mut self, e: LogLeafRepr) {
            self.leaves.push(leaf_hash(&RustCrypto, &e.to_bytes()));
        }
        fn checkpoint(&self, size: usize) -> Vec<u8> {
            let root = root_of_hashes(&RustCrypto, &self.leaves[..size]);
            checkpoint(&self.key, NAME, size as u64, &root)
        }
        fn answer(&self, req: LogProofRequest) -> Vec<u8> {
            let mut path = [[0u8; 32]; MAX_PROOF_LEN];
            let n = match req.kind {
                LogProofKind::Inclusion => inclusion_proof(
                    &RustCrypto,
                    &self.leaves[..req.second as usize],
                    req.first as usize,
                    &mut path,
                ),
                LogProofKind::Consistency => consistency_proof(
                    &RustCrypto,
                    &self.leaves[..req.second as usize],
                    req.first as usize,
                    &mut path,
                ),
            }
            .unwrap();
            let mut out = [0u8; MAX_LOG_PROOF_LEN];
            let len = req.emit_proof(&path[..n], &mut out).unwrap();
            out[..len].to_vec()
        }
    }

    fn watch(log: &Log) -> LogWatch<4> {
        let key = NoteKey::from_vkey(&RustCrypto, &vkey(&log.key, NAME)).unwrap();
        LogWatch::new(key, 1, None)
    }

    fn t(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    /// Answers every request `log` is asked until none is left.
    fn serve(w: &mut LogWatch<4>, log: &Log, now: Instant) -> usize {
        let mut n = 0;
        while let Some(req) = w.poll_request(now) {
            assert_eq!(req.relay_id, 1);
            w.handle_proof(&RustCrypto, &log.answer(req)).unwrap();
            n += 1;
            assert!(n < 20, "the watch keeps asking");
        }
        n
    }

    #[test]
    fn an_honest_log_grows_under_the_watch_and_proves_every_receipt() {
        let mut log = Log::new(5);
        let mut w = watch(&log);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(3))
            .unwrap();
        assert_eq!(w.trusted().map(|h| h.size), Some(3));
        // The relay's block 7 is entry 5, committed under size 6.
        log.push(entry(1, 7));
        w.handle_receipt(
            &RustCrypto,
            &entry(1, 7),
            LogPosition {
                index: 5,
                tree_size: 6,
            },
        )
        .unwrap();
        // Not covered yet: nothing to ask.
        assert_eq!(w.poll_request(t(0)), None);
        log.push(entry(2, 8));
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(7))
            .unwrap();
        assert_eq!(serve(&mut w, &log, t(1)), 2);
        // An older checkpoint arriving late (another server's) is proven a prefix.
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(4))
            .unwrap();
        assert_eq!(serve(&mut w, &log, t(1)), 1);
        let s = w.stats();
        assert_eq!(w.trusted().map(|h| h.size), Some(7));
        assert_eq!(
            (
                s.heads_adopted,
                s.older_heads_proven,
                s.receipts_proven,
                s.alarms
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(w.pending_checks(), 0);
        assert_eq!(w.poll_alarm(), None);
        // The same checkpoint again changes nothing.
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(7))
            .unwrap();
        assert_eq!(w.poll_request(t(2)), None);
    }

    #[test]
    fn a_rewritten_a_shortened_or_a_forked_log_raises_an_alarm() {
        let log = Log::new(8);
        // Rewritten: block 2 altered, the log re-signed with the genuine key.
        let mut rewritten = Log::new(0);
        for h in 0..10 {
            rewritten.push(if h == 2 {
                entry(9, 2)
            } else {
                entry(1 + (h % 3) as u32, h)
            });
        }
        let mut w = watch(&log);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(8))
            .unwrap();
        w.handle_checkpoint(&RustCrypto, &rewritten.checkpoint(10))
            .unwrap();
        serve(&mut w, &rewritten, t(0));
        assert_eq!(
            w.poll_alarm(),
            Some(LogAlarm::Inconsistent { old: 8, new: 10 })
        );
        assert_eq!(
            w.trusted().map(|h| h.size),
            Some(8),
            "the rewritten head is not adopted"
        );

        // Shortened: one block deleted, older sizes re-signed.
        let mut shortened = Log::new(0);
        for h in (0..8).filter(|&h| h != 5) {
            shortened.push(entry(1 + (h % 3) as u32, h));
        }
        let mut w = watch(&log);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(8))
            .unwrap();
        w.handle_checkpoint(&RustCrypto, &shortened.checkpoint(7))
            .unwrap();
        // The honest log would prove 7 a prefix of 8; this one cannot: its
        // best answer is a proof over its own leaves, which fails.
        let req = w.poll_request(t(0)).unwrap();
        assert_eq!(
            (req.kind, req.first, req.second),
            (LogProofKind::Consistency, 7, 8)
        );
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let n = consistency_proof(&RustCrypto, &shortened.leaves, 6, &mut path).unwrap();
        let mut out = [0u8; MAX_LOG_PROOF_LEN];
        let len = req.emit_proof(&path[..n], &mut out).unwrap();
        w.handle_proof(&RustCrypto, &out[..len]).unwrap();
        assert_eq!(
            w.poll_alarm(),
            Some(LogAlarm::Inconsistent { old: 7, new: 8 })
        );

        // Forked: another root at the trusted size.
        let mut w = watch(&log);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(8))
            .unwrap();
        w.handle_checkpoint(&RustCrypto, &shortened.checkpoint(7))
            .unwrap();
        w.handle_checkpoint(&RustCrypto, &rewritten.checkpoint(8))
            .unwrap();
        assert_eq!(w.poll_alarm(), Some(LogAlarm::SplitView { size: 8 }));
        assert_eq!(w.last_alarm(), Some(LogAlarm::SplitView { size: 8 }));
        assert_eq!(w.stats().alarms, 1);
    }

    #[test]
    fn a_receipt_for_a_block_the_log_does_not_hold_raises_an_alarm() {
        let log = Log::new(6);
        let mut w = watch(&log);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(6))
            .unwrap();
        // The receipt says entry 4 is the relay's block 40; entry 4 is another.
        w.handle_receipt(
            &RustCrypto,
            &entry(1, 40),
            LogPosition {
                index: 4,
                tree_size: 5,
            },
        )
        .unwrap();
        serve(&mut w, &log, t(0));
        assert_eq!(
            w.poll_alarm(),
            Some(LogAlarm::NotInLog {
                height: 40,
                index: 4,
                tree_size: 6
            })
        );
        assert_eq!(w.pending_checks(), 0);
    }

    #[test]
    fn foreign_notes_and_unasked_proofs_are_refused_and_requests_are_repeated() {
        let log = Log::new(6);
        let mut w = watch(&log);
        let stranger = SigningKey::from_bytes(&[1; 32]);
        let root = root_of_hashes(&RustCrypto, &log.leaves);
        assert!(w
            .handle_checkpoint(&RustCrypto, &checkpoint(&stranger, NAME, 6, &root))
            .is_err());
        assert!(w.handle_checkpoint(&RustCrypto, b"garbage").is_err());
        assert_eq!(w.stats().checkpoints_refused, 2);
        assert_eq!(w.trusted(), None);
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(3))
            .unwrap();
        w.handle_checkpoint(&RustCrypto, &log.checkpoint(6))
            .unwrap();
        let req = w.poll_request(t(0)).unwrap();
        assert_eq!(w.poll_request(t(1)), None, "one request at a time");
        assert_eq!(
            w.poll_request(t(5)),
            Some(req),
            "asked again after the retry delay"
        );
        let other = LogProofRequest { first: 2, ..req };
        assert!(w.handle_proof(&RustCrypto, &log.answer(other)).is_err());
        assert!(w.handle_proof(&RustCrypto, &[2, 8, 1]).is_err());
        assert_eq!(w.stats().proofs_refused, 2);
        w.handle_proof(&RustCrypto, &log.answer(req)).unwrap();
        assert_eq!(w.trusted().map(|h| h.size), Some(6));
        // A full check queue drops and counts.
        for i in 0..5 {
            let e = entry(1 + (i % 3) as u32, i);
            w.handle_receipt(
                &RustCrypto,
                &e,
                LogPosition {
                    index: i,
                    tree_size: 6,
                },
            )
            .unwrap();
        }
        assert_eq!(w.stats().checks_dropped, 1);
        assert_eq!(serve(&mut w, &log, t(10)), 4);
        assert_eq!(w.stats().alarms, 0);
        assert_eq!(w.stats().receipts_proven, 4);
    }
}
