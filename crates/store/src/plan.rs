//! The commit planner: given a batch (verified blocks and refusals) and the
//! stored state it touches, it decides everything one commit writes — which
//! blocks join their relay's chain and which go to quarantine, which readings
//! are new and which repeat, what the coverage, meter, relay, gap, counter and
//! alert rows become. It reads stored state only through [`Snapshot`], runs no
//! SQL and assigns no ids, so it is tested without a database (the tests at
//! the end of this file). A backend's commit is: load (and lock) what the
//! batch touches, [`Planner::chains`], load the meters of the blocks to store
//! ([`Planner::readings_to_load`]), [`Planner::readings`], assign ids, write
//! the [`Plan`], and turn it into outcomes ([`Plan::outcomes`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use gridpow_proto::block::check_link;
use gridpow_proto::wire::{LogLeafRepr, Reading};
use gridpow_proto::Hash;

use crate::intervals::IntervalSet;
use crate::log::{LogAppend, LogSnapshot};
use crate::plausibility::{AlertKind, Finding, Rules};
use crate::shared::{block_subject, hash_of, meter_subject, short_hex, u64_of};
use crate::verified::{ReadingRow, RejectKind, VerifiedBlockData};
use crate::{
    Arrival, CommitResult, DbTotals, Ingest, Outcome, QuarantineItem, RaisedAlert, Run, StoreError,
    StoreLimits,
};

/// A stored block at a chain position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredSlot {
    pub id: i64,
    pub hash: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub linked: bool,
    /// Its transparency-log entry (for a slot planned in this batch, not
    /// yet known: the outcome takes it from the append).
    pub log_index: u64,
}

impl StoredSlot {
    /// A stored row's `log_index`, which every stored block has once the
    /// writer's backfill ran (schema 4).
    pub fn log_index_of(id: i64, log_index: Option<i64>) -> Result<u64, StoreError> {
        log_index
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| StoreError::Corrupt {
                table: "blocks",
                detail: format!("block {id} has no transparency-log index"),
            })
    }
}

/// A meter's row: as stored, and as a commit writes it back.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MeterRow {
    pub first_seen_ms: u64,
    pub readings: u64,
    /// Epoch, seq and reading of the newest stored reading.
    pub last: Option<(u32, u32, Reading)>,
    pub silent: bool,
}

/// The stored state a commit reads, as of its transaction. Each call is asked
/// at most once per key and transaction; a backend may answer from rows it
/// loaded (and locked) before planning or query on demand. The log's state
/// ([`LogSnapshot`]) is read last, once the blocks to store are known.
pub(crate) trait Snapshot: LogSnapshot {
    /// The highest stored height of `relay`.
    fn head(&mut self, relay: u32) -> Result<Option<i64>, StoreError>;
    /// The stored block of `relay` at `height`.
    fn slot(&mut self, relay: u32, height: i64) -> Result<Option<StoredSlot>, StoreError>;
    /// The highest stored height of `relay` below `height`.
    fn highest_below(&mut self, relay: u32, height: i64) -> Result<Option<i64>, StoreError>;
    /// Quarantine rows and payload bytes stored against allowance `bucket`.
    fn quarantine_usage(&mut self, bucket: i64) -> Result<(u64, u64), StoreError>;
    /// Meter `meter_id`'s row; `None` if the meter is new.
    fn meter(&mut self, meter_id: u32) -> Result<Option<MeterRow>, StoreError>;
    /// The coverage rows `(first_seq, last_seq)` of a meter's epoch, ascending.
    fn coverage(&mut self, meter_id: u32, epoch: u32) -> Result<Vec<(u32, u32)>, StoreError>;
}

/// Coverage and meter rows as planning leaves them. A backend that can tell
/// nobody else wrote since (SQLite: `PRAGMA data_version`) keeps it between
/// commits as a cache; otherwise each commit starts from an empty one.
#[derive(Debug, Default)]
pub(crate) struct Working {
    pub coverage: HashMap<(u32, u32), Coverage>,
    pub meters: BTreeMap<u32, MeterState>,
}

impl Working {
    fn coverage(
        &mut self,
        snap: &mut dyn Snapshot,
        meter_id: u32,
        epoch: u32,
    ) -> Result<&mut Coverage, StoreError> {
        use std::collections::hash_map::Entry;
        Ok(match self.coverage.entry((meter_id, epoch)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Coverage::loaded(snap.coverage(meter_id, epoch)?)),
        })
    }

    /// Meter `meter_id`'s state, loaded on first use; a new meter is counted.
    fn meter(
        &mut self,
        snap: &mut dyn Snapshot,
        book: &mut Book,
        now_ms: u64,
        meter_id: u32,
    ) -> Result<&mut MeterState, StoreError> {
        use std::collections::btree_map::Entry;
        Ok(match self.meters.entry(meter_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(match snap.meter(meter_id)? {
                Some(row) => MeterState { row, dirty: false },
                None => {
                    book.count("meters", 1);
                    MeterState {
                        row: MeterRow {
                            first_seen_ms: now_ms,
                            readings: 0,
                            last: None,
                            silent: false,
                        },
                        dirty: true,
                    }
                }
            }),
        })
    }
}

/// A block position as planning sees it: stored, or stored by this commit.
#[derive(Clone, Debug)]
struct Slot {
    stored: StoredSlot,
    /// Index into [`Plan::blocks`] if this commit stores it.
    pending: Option<usize>,
}

/// Where a new block goes.
enum Chain {
    /// To quarantine.
    Refuse(RejectKind, String),
    /// Nowhere: this slot holds the same block.
    Same(Slot),
    /// Into the chain; `linked` if its parent is stored (or it is genesis);
    /// `child` is the unlinked block above it, which it links.
    Store { linked: bool, child: Option<Slot> },
}

/// Whether a block at `height` is too far above its relay's highest stored
/// block `head` (`None`: no block stored, the bound counts from 0): the refusal
/// detail if so.
fn too_far_ahead(height: u64, head: Option<i64>, max_ahead: u64) -> Option<String> {
    let base = head.map_or(0, u64_of);
    (height > base.saturating_add(max_ahead)).then(|| match head {
        Some(_) => format!(
            "height {height} is more than {max_ahead} above the relay's highest stored block {base}"
        ),
        None => format!("height {height} is more than {max_ahead} above 0 (no block stored yet)"),
    })
}

/// A block this commit stores.
#[derive(Debug)]
pub(crate) struct NewBlock<'a> {
    pub arrival: &'a Arrival,
    pub block: &'a VerifiedBlockData,
    /// Whether its row says its parent is stored (possibly later in this commit).
    pub linked: bool,
    /// Its readings not stored before, by meter, epoch and seq: they take
    /// consecutive reading ids from the block's first.
    pub fresh: Vec<&'a ReadingRow>,
    /// Readings of its frames already stored (or twice in this batch).
    pub duplicates: u64,
    /// Those readings, for the equivocation check.
    pub repeated: Vec<ReadingRow>,
}

impl NewBlock<'_> {
    /// The block's directory when its fresh readings take ids from `first_id`.
    pub fn runs(&self, block_id: i64, first_id: i64) -> Vec<Run> {
        let mut runs = Vec::new();
        for (n, row) in self.fresh.iter().enumerate() {
            add_to_runs(&mut runs, block_id, first_id + n as i64, row);
        }
        runs
    }

    /// The time span of its fresh readings, if any.
    pub fn span(&self) -> Option<(i64, i64)> {
        self.fresh.iter().fold(None, |s, r| {
            let t = r.reading.timestamp_ms as i64;
            Some(s.map_or((t, t), |(a, z): (i64, i64)| (a.min(t), z.max(t))))
        })
    }
}

/// A refusal this commit keeps in the quarantine table.
#[derive(Debug)]
pub(crate) struct Kept<'a> {
    pub item: Cow<'a, QuarantineItem>,
    /// Bytes of the payload kept.
    pub kept: usize,
}

impl Kept<'_> {
    /// The payload as kept.
    pub fn raw(&self) -> &[u8] {
        &self.item.raw[..self.kept]
    }
}

/// An item's outcome before ids are assigned.
#[derive(Debug)]
enum Planned {
    Done(Outcome),
    Stored {
        block: usize,
        linked: bool,
        closed_gap: bool,
    },
    /// The same block as one this commit stores.
    Again {
        block: usize,
    },
    Quarantined {
        kind: RejectKind,
        /// Index into [`Plan::quarantine`]; `None` if only counted.
        row: Option<usize>,
    },
}

/// Everything one commit writes, in the order a backend should write it.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    outcomes: Vec<Planned>,
    /// Refusals kept, in batch order.
    pub quarantine: Vec<Kept<'a>>,
    /// Blocks stored, in batch order; they take ids in this order.
    pub blocks: Vec<NewBlock<'a>>,
    /// Stored blocks whose parent this commit stores: their `linked` becomes true.
    pub link_children: Vec<i64>,
    /// Gaps opened: (relay, height) → closed at, if the parent came in this commit too.
    pub gaps_opened: BTreeMap<(u32, i64), Option<i64>>,
    /// Stored gaps closed.
    pub gaps_closed: Vec<(u32, i64)>,
    /// Coverage row changes, ascending by (meter, epoch), deletions first within each.
    pub coverage: Vec<((u32, u32), CoverageChange)>,
    /// Meter rows to write back (new or changed), ascending.
    pub meters: Vec<(u32, MeterRow)>,
    /// The log entries of [`Plan::blocks`], in their order: block `i` is entry
    /// `log.index_of(i)`.
    pub log: LogAppend,
    /// Relay totals, counters and alerts.
    pub book: Book,
}

impl Plan<'_> {
    fn counter(&self, name: &str) -> u64 {
        self.book.counters.get(name).map_or(0, |&v| u64_of(v))
    }

    /// Refusals only counted, not kept: their allowance was used up.
    pub fn quarantine_dropped(&self) -> u64 {
        self.book
            .counters
            .iter()
            .filter(|(name, _)| name.starts_with("quarantine_dropped:"))
            .map(|(_, &v)| u64_of(v))
            .sum()
    }

    /// The alerts this commit raises or clears (once written).
    pub fn raised(&self) -> Vec<RaisedAlert> {
        self.book
            .alerts
            .iter()
            .map(|((kind, subject), a)| RaisedAlert {
                kind: *kind,
                subject: subject.clone(),
                count: a.count,
                message: a.message.clone(),
            })
            .collect()
    }

    /// The commit's result once written: [`Plan::outcomes`], the alerts, the
    /// totals read after writing.
    pub fn result(
        &mut self,
        block_ids: &[i64],
        quarantine_ids: &[i64],
        totals: DbTotals,
    ) -> Result<CommitResult, StoreError> {
        Ok(CommitResult {
            outcomes: self.outcomes(block_ids, quarantine_ids)?,
            alerts: self.raised(),
            totals,
            quarantine_dropped: self.quarantine_dropped(),
            quarantine_truncated: self.counter("quarantine_truncated"),
            log_size: (!self.blocks.is_empty()).then(|| self.log.first + self.blocks.len() as u64),
            log_micros: self.log.micros.get(),
        })
    }

    /// One outcome per batch item, given the ids the backend assigned to
    /// [`Plan::blocks`] and [`Plan::quarantine`] rows.
    pub fn outcomes(
        &mut self,
        block_ids: &[i64],
        quarantine_ids: &[i64],
    ) -> Result<Vec<Outcome>, StoreError> {
        let missing = |table: &'static str, i: usize| StoreError::Corrupt {
            table,
            detail: format!("the commit assigned no id to planned row {i}"),
        };
        let mut out = Vec::with_capacity(self.outcomes.len());
        for p in std::mem::take(&mut self.outcomes) {
            out.push(match p {
                Planned::Done(o) => o,
                Planned::Stored {
                    block,
                    linked,
                    closed_gap,
                } => {
                    let b = &mut self.blocks[block];
                    Outcome::Stored {
                        block_id: *block_ids
                            .get(block)
                            .ok_or_else(|| missing("blocks", block))?,
                        new_readings: b.fresh.len() as u64,
                        duplicate_readings: b.duplicates,
                        repeated: std::mem::take(&mut b.repeated),
                        linked,
                        closed_gap,
                        log_index: self.log.first + block as u64,
                    }
                }
                Planned::Again { block } => Outcome::AlreadyStored {
                    block_id: *block_ids
                        .get(block)
                        .ok_or_else(|| missing("blocks", block))?,
                    log_index: self.log.first + block as u64,
                },
                Planned::Quarantined { kind, row } => Outcome::Quarantined {
                    kind,
                    id: match row {
                        Some(i) => *quarantine_ids
                            .get(i)
                            .ok_or_else(|| missing("quarantine", i))?,
                        None => 0,
                    },
                },
            });
        }
        Ok(out)
    }
}

/// Plans one commit; see the module docs for the order of its steps.
pub(crate) struct Planner<'a> {
    rules: &'a Rules,
    limits: &'a StoreLimits,
    now_ms: u64,
    quota: Quota,
    /// Each batch relay's highest stored (or to be stored) height.
    heads: HashMap<u32, Option<i64>>,
    slots: HashMap<(u32, i64), Option<Slot>>,
    plan: Plan<'a>,
}

impl<'a> Planner<'a> {
    pub fn new(rules: &'a Rules, limits: &'a StoreLimits, now_ms: u64) -> Planner<'a> {
        Planner {
            rules,
            limits,
            now_ms,
            quota: Quota::default(),
            heads: HashMap::new(),
            slots: HashMap::new(),
            plan: Plan::default(),
        }
    }

    /// Step 1: the chain decision for each item, in batch order (refusals go
    /// to quarantine within their allowance).
    pub fn chains(
        &mut self,
        items: &'a [Ingest],
        snap: &mut dyn Snapshot,
    ) -> Result<(), StoreError> {
        for item in items {
            let planned = match item {
                Ingest::Quarantine(q) => self.quarantine(Cow::Borrowed(q), snap)?,
                Ingest::Block { arrival, block } => self.block(arrival, block, snap)?,
            };
            self.plan.outcomes.push(planned);
        }
        Ok(())
    }

    /// The meters and (meter, epoch) coverage step 2 reads: those of the blocks to store.
    pub fn readings_to_load(&self) -> (BTreeSet<u32>, BTreeSet<(u32, u32)>) {
        let mut meters = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        for b in &self.plan.blocks {
            for r in &b.block.readings {
                meters.insert(r.meter_id);
                pairs.insert((r.meter_id, r.epoch));
            }
        }
        (meters, pairs)
    }

    /// Step 2: de-duplicates the stored blocks' readings against the
    /// coverage, checks the new ones' plausibility, updates the meters'
    /// state, and returns the plan. `working` holds the coverage and meter
    /// rows (loaded through `snap` on first use) and is left as written.
    pub fn readings(
        mut self,
        snap: &mut dyn Snapshot,
        working: &mut Working,
    ) -> Result<Plan<'a>, StoreError> {
        let mut plan = std::mem::take(&mut self.plan);
        for b in &mut plan.blocks {
            let mut dup = 0;
            for group in by_meter_epoch(&b.block.readings) {
                let (m, e) = (group[0].meter_id, group[0].epoch);
                dup += working
                    .coverage(snap, m, e)?
                    .add(group, &mut b.fresh, &mut b.repeated);
            }
            b.duplicates = dup;
            for group in by_meter(&b.fresh) {
                let m = group[0].meter_id;
                let heard = working
                    .meter(snap, &mut plan.book, self.now_ms, m)?
                    .hear(self.rules, group);
                plan.book.meter_heard(m, heard);
            }
            plan.book
                .readings_stored(b.block.header.relay_id, &b.fresh, &b.repeated);
        }
        let mut keys: Vec<(u32, u32)> = working
            .coverage
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            if let Some(c) = working.coverage.get_mut(&k) {
                plan.coverage
                    .extend(c.changes().into_iter().map(|ch| (k, ch)));
                c.written();
            }
        }
        for (&m, s) in working.meters.iter_mut().filter(|(_, s)| s.dirty) {
            s.dirty = false;
            plan.meters.push((m, s.row.clone()));
        }
        let entries: Vec<LogLeafRepr> = plan
            .blocks
            .iter()
            .map(|b| LogLeafRepr::of_block(&b.block.header, b.block.hash))
            .collect();
        plan.log = crate::log::append(snap, &entries)?;
        Ok(plan)
    }

    /// Keeps refusal `q` within its allowance, or only counts it.
    fn quarantine(
        &mut self,
        q: Cow<'a, QuarantineItem>,
        snap: &mut dyn Snapshot,
    ) -> Result<Planned, StoreError> {
        let plan = &mut self.plan;
        let kind = q.kind;
        let Admit::Keep { kept } = self
            .quota
            .admit(&q, self.limits, |bucket| snap.quarantine_usage(bucket))?
        else {
            plan.book.quarantined(&q, false, false);
            return Ok(Planned::Quarantined { kind, row: None });
        };
        let truncated = kept < q.raw.len();
        plan.book.quarantined(&q, true, truncated);
        plan.quarantine.push(Kept { item: q, kept });
        Ok(Planned::Quarantined {
            kind,
            row: Some(plan.quarantine.len() - 1),
        })
    }

    fn head(&mut self, relay: u32, snap: &mut dyn Snapshot) -> Result<Option<i64>, StoreError> {
        if let Some(&h) = self.heads.get(&relay) {
            return Ok(h);
        }
        let h = snap.head(relay)?;
        self.heads.insert(relay, h);
        Ok(h)
    }

    fn slot(
        &mut self,
        relay: u32,
        height: i64,
        snap: &mut dyn Snapshot,
    ) -> Result<Option<Slot>, StoreError> {
        if let Some(s) = self.slots.get(&(relay, height)) {
            return Ok(s.clone());
        }
        let s = snap.slot(relay, height)?.map(|stored| Slot {
            stored,
            pending: None,
        });
        self.slots.insert((relay, height), s.clone());
        Ok(s)
    }

    /// The chain decision for block `b`: first the far-ahead bound, then its
    /// relay's slots in this order: h, h−1 (above genesis), h+1; the first
    /// refusal stops it.
    fn decide(
        &mut self,
        b: &VerifiedBlockData,
        snap: &mut dyn Snapshot,
    ) -> Result<Chain, StoreError> {
        let h = &b.header;
        let (relay, height) = (h.relay_id, h.height);
        let head = self.head(relay, snap)?;
        if let Some(detail) = too_far_ahead(height, head, self.limits.max_height_ahead) {
            return Ok(Chain::Refuse(RejectKind::TooFarAhead, detail));
        }
        if height > i64::MAX as u64 - 1 {
            return Ok(Chain::Refuse(
                RejectKind::Malformed,
                format!("height {height} out of range"),
            ));
        }
        let h_i = height as i64;
        if let Some(slot) = self.slot(relay, h_i, snap)? {
            if slot.stored.hash == b.hash[..] {
                return Ok(Chain::Same(slot));
            }
            let detail = format!(
                "relay {relay} already has block {} at height {height}; this one is {}",
                short_hex(&slot.stored.hash),
                short_hex(&b.hash)
            );
            return Ok(Chain::Refuse(RejectKind::Fork, detail));
        }
        let linked = if height == 0 {
            if check_link(h, None).is_err() {
                return Ok(Chain::Refuse(
                    RejectKind::BadGenesis,
                    "genesis block with a non-zero previous hash".into(),
                ));
            }
            true
        } else {
            match self.slot(relay, h_i - 1, snap)? {
                Some(parent) => {
                    let parent: Hash = hash_of("blocks", &parent.stored.hash)?;
                    if check_link(h, Some((height - 1, &parent))).is_err() {
                        let detail = format!(
                            "previous hash {} is not the stored block {} at height {}",
                            short_hex(&h.prev_hash),
                            short_hex(&parent),
                            height - 1
                        );
                        return Ok(Chain::Refuse(RejectKind::Fork, detail));
                    }
                    true
                }
                None => false,
            }
        };
        let child = match self.slot(relay, h_i + 1, snap)? {
            Some(child) if child.stored.prev_hash != b.hash[..] => {
                let detail = format!(
                    "the stored block at height {} names parent {}, not this block {}",
                    height + 1,
                    short_hex(&child.stored.prev_hash),
                    short_hex(&b.hash)
                );
                return Ok(Chain::Refuse(RejectKind::Fork, detail));
            }
            Some(child) if !child.stored.linked => Some(child),
            _ => None,
        };
        Ok(Chain::Store { linked, child })
    }

    fn block(
        &mut self,
        arrival: &'a Arrival,
        b: &'a VerifiedBlockData,
        snap: &mut dyn Snapshot,
    ) -> Result<Planned, StoreError> {
        let h = &b.header;
        let (relay, height) = (h.relay_id, h.height);
        let (linked, child) = match self.decide(b, snap)? {
            Chain::Refuse(kind, detail) => {
                return self.quarantine(Cow::Owned(refusal(arrival, b, kind, detail)), snap)
            }
            Chain::Same(slot) => {
                self.plan.book.count("blocks_duplicate", 1);
                return Ok(match slot.pending {
                    Some(block) => Planned::Again { block },
                    None => Planned::Done(Outcome::AlreadyStored {
                        block_id: slot.stored.id,
                        log_index: slot.stored.log_index,
                    }),
                });
            }
            Chain::Store { linked, child } => (linked, child),
        };
        let h_i = height as i64;
        let now = self.now_ms as i64;
        let plan = &mut self.plan;
        let closed_gap = child.is_some();
        if let Some(child) = child {
            match child.pending {
                Some(i) => {
                    plan.blocks[i].linked = true;
                    if let Some(closed) = plan.gaps_opened.get_mut(&(relay, h_i + 1)) {
                        *closed = Some(now);
                    }
                }
                None => {
                    plan.link_children.push(child.stored.id);
                    plan.gaps_closed.push((relay, h_i + 1));
                }
            }
            if let Some(Some(s)) = self.slots.get_mut(&(relay, h_i + 1)) {
                s.stored.linked = true;
            }
            plan.book.gap_closed(relay, height + 1);
        }
        let head = self.heads.entry(relay).or_insert(Some(h_i));
        *head = Some(head.map_or(h_i, |x| x.max(h_i)));
        let index = plan.blocks.len();
        plan.blocks.push(NewBlock {
            arrival,
            block: b,
            linked,
            fresh: Vec::with_capacity(b.readings.len()),
            duplicates: 0,
            repeated: Vec::new(),
        });
        self.slots.insert(
            (relay, h_i),
            Some(Slot {
                stored: StoredSlot {
                    id: 0,
                    hash: b.hash.to_vec(),
                    prev_hash: h.prev_hash.to_vec(),
                    linked,
                    log_index: 0,
                },
                pending: Some(index),
            }),
        );
        if !linked {
            let below = snap.highest_below(relay, h_i)?;
            let pending_below = self
                .slots
                .iter()
                .filter(|(&(r, k), s)| {
                    r == relay && k < h_i && s.as_ref().is_some_and(|s| s.pending.is_some())
                })
                .map(|(&(_, k), _)| k)
                .max();
            let from = below.max(pending_below).map_or(0, |b| b + 1);
            let plan = &mut self.plan;
            plan.gaps_opened.insert((relay, h_i), None);
            plan.book.gap_opened(relay, height, from);
        }
        self.plan.book.block_stored(relay, h.leaf_count);
        Ok(Planned::Stored {
            block: index,
            linked,
            closed_gap,
        })
    }
}

/// A meter's row during planning.
#[derive(Clone, Debug)]
pub(crate) struct MeterState {
    pub row: MeterRow,
    /// Changed since loaded or last written.
    pub dirty: bool,
}

/// What [`MeterState::hear`] found, for [`Book::meter_heard`].
pub(crate) struct Heard {
    was_silent: bool,
    findings: Vec<(u32, Finding)>,
}

impl MeterState {
    /// Takes `rows` (new readings of this meter, ascending): checks their
    /// plausibility, counts them, keeps the newest and ends a silence.
    pub fn hear(&mut self, rules: &Rules, rows: &[&ReadingRow]) -> Heard {
        let row = &mut self.row;
        let mut findings = Vec::new();
        let mut prev = row
            .last
            .filter(|&(e, s, _)| (e, s) < (rows[0].epoch, rows[0].seq));
        for r in rows {
            rules.check_reading(&r.reading, |f| findings.push((r.seq, f)));
            if let Some((_, _, p)) = prev {
                if let Some(f) = rules.check_energy(p.energy_mwh, r.reading.energy_mwh) {
                    findings.push((r.seq, f));
                }
            }
            prev = Some((r.epoch, r.seq, r.reading));
        }
        let last_new = rows[rows.len() - 1];
        row.readings += rows.len() as u64;
        if row
            .last
            .is_none_or(|(e, s, _)| (e, s) < (last_new.epoch, last_new.seq))
        {
            row.last = Some((last_new.epoch, last_new.seq, last_new.reading));
        }
        let was_silent = std::mem::replace(&mut row.silent, false);
        self.dirty = true;
        Heard {
            was_silent,
            findings,
        }
    }
}

/// A relay's changes in one transaction.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RelayDelta {
    pub blocks: i64,
    pub readings: i64,
    pub leaves: i64,
}

/// What one transaction's blocks of a relay carried of one meter (spec §9.5:
/// a meter at the edge of two cells is carried by both relays).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CarriedDelta {
    /// Readings these blocks stored first.
    pub first: i64,
    /// Readings they carried that were stored already (by another relay's
    /// block, or by an earlier frame of the meter).
    pub duplicate: i64,
    /// The site key id of the meter's last frame they carried.
    pub key_id: u8,
}

/// An alert raised or cleared in one transaction.
#[derive(Debug, Default)]
pub(crate) struct PendingAlert {
    pub meter_id: Option<u32>,
    pub relay_id: Option<u32>,
    pub count: u64,
    pub message: String,
    pub cleared: bool,
}

/// Counters, relay totals and alerts one write transaction collects, written at its end.
#[derive(Debug, Default)]
pub(crate) struct Book {
    pub relays: BTreeMap<u32, RelayDelta>,
    /// Per (relay, meter): what the relay's blocks carried of the meter.
    pub carried: BTreeMap<(u32, u32), CarriedDelta>,
    pub counters: BTreeMap<String, i64>,
    pub alerts: BTreeMap<(AlertKind, String), PendingAlert>,
    /// Alerts raised before this transaction that it clears.
    pub clears: Vec<(AlertKind, String)>,
}

impl Book {
    pub fn count(&mut self, name: &str, by: i64) {
        if by != 0 {
            *self.counters.entry(name.to_string()).or_insert(0) += by;
        }
    }

    pub fn raise(
        &mut self,
        kind: AlertKind,
        subject: String,
        meter_id: Option<u32>,
        relay_id: Option<u32>,
        message: String,
    ) {
        let a = self.alerts.entry((kind, subject)).or_default();
        a.meter_id = meter_id;
        a.relay_id = relay_id;
        a.count += 1;
        a.message = message;
        a.cleared = false;
    }

    pub fn clear(&mut self, kind: AlertKind, subject: String) {
        match self.alerts.get_mut(&(kind, subject.clone())) {
            Some(a) => a.cleared = true,
            None => self.clears.push((kind, subject)),
        }
    }

    /// Counts quarantined item `q` (`kept`: a row holds it; `truncated`: its
    /// payload was cut) and raises a critical fork alert for a fork.
    pub fn quarantined(&mut self, q: &QuarantineItem, kept: bool, truncated: bool) {
        self.count("blocks_rejected", 1);
        self.count(&format!("quarantine:{}", q.kind.as_str()), 1);
        if !kept {
            self.count(&format!("quarantine_dropped:{}", q.kind.as_str()), 1);
        }
        if truncated {
            self.count("quarantine_truncated", 1);
        }
        if q.kind.is_frame_fault() {
            self.count("frames_rejected", 1);
        }
        if q.kind == RejectKind::Fork {
            self.count("forks", 1);
            if let Some(h) = &q.header {
                self.raise(
                    AlertKind::Fork,
                    block_subject(h.relay_id, h.height),
                    None,
                    Some(h.relay_id),
                    format!(
                        "relay {} signed two blocks for height {}: treat its key as compromised \
                         (docs/deploy/README.md, rotating a relay key); {}",
                        h.relay_id, h.height, q.detail
                    ),
                );
            }
        }
    }

    /// A stored block of `relay` with `leaf_count` leaves.
    pub fn block_stored(&mut self, relay: u32, leaf_count: u32) {
        let d = self.relays.entry(relay).or_default();
        d.blocks += 1;
        d.leaves += i64::from(leaf_count);
    }

    /// New and duplicate readings of a block of `relay`: `fresh` it stores
    /// first, `repeated` were stored before.
    pub fn readings_stored(&mut self, relay: u32, fresh: &[&ReadingRow], repeated: &[ReadingRow]) {
        self.relays.entry(relay).or_default().readings += fresh.len() as i64;
        self.count("readings_duplicate", repeated.len() as i64);
        // Repeated readings first: a fresh reading's key id is the newer.
        for r in repeated {
            let c = self.carried.entry((relay, r.meter_id)).or_default();
            c.duplicate += 1;
            c.key_id = r.key_id;
        }
        for r in fresh {
            let c = self.carried.entry((relay, r.meter_id)).or_default();
            c.first += 1;
            c.key_id = r.key_id;
        }
    }

    /// The block at `height` of `relay` got its parent.
    pub fn gap_closed(&mut self, relay: u32, height: u64) {
        self.clear(AlertKind::Gap, block_subject(relay, height));
        tracing::info!(relay, height, "Gap closed: parent arrived.");
    }

    /// The block at `height` of `relay` was stored before its parent; heights
    /// from `from` up to it are missing.
    pub fn gap_opened(&mut self, relay: u32, height: u64, from: i64) {
        let message = format!(
            "relay {relay}: block {height} stored before its parent; heights {from}–{} missing",
            height - 1
        );
        tracing::warn!(
            relay,
            height,
            missing_from = from,
            "Gap: block stored before its parent."
        );
        self.raise(
            AlertKind::Gap,
            block_subject(relay, height),
            None,
            Some(relay),
            message,
        );
    }

    /// Clears meter `m`'s silent alert if it was silent and raises its findings.
    pub fn meter_heard(&mut self, m: u32, heard: Heard) {
        if heard.was_silent {
            self.clear(AlertKind::Silent, meter_subject(m));
            tracing::info!(meter = m, "Meter heard again.");
        }
        for (seq, f) in heard.findings {
            self.raise(
                f.kind(),
                meter_subject(m),
                Some(m),
                None,
                format!("meter {m} seq {seq}: {}", f.describe()),
            );
        }
    }
}

/// The quarantine item for verified block `b` refused by the chain (logged).
fn refusal(
    arrival: &Arrival,
    b: &VerifiedBlockData,
    kind: RejectKind,
    detail: String,
) -> QuarantineItem {
    // The writer logs refusals, rate-limited per kind.
    tracing::debug!(
        relay = b.header.relay_id,
        height = b.header.height,
        reason = kind.as_str(),
        "{detail}"
    );
    QuarantineItem {
        arrival: arrival.clone(),
        kind,
        detail,
        header: Some(b.header),
        raw: b.raw.clone(),
    }
}

/// The quarantine allowance a refusal counts against: its relay when the
/// relay id is authenticated (the refusal came after the signature verified),
/// otherwise the one shared by all unauthenticated refusals (-1), so junk
/// naming a relay cannot use up that relay's allowance for fork evidence.
pub(crate) fn quota_bucket(q: &QuarantineItem) -> i64 {
    match &q.header {
        Some(h) if q.kind.relay_authenticated() => i64::from(h.relay_id),
        _ => -1,
    }
}

/// What a refusal leaves in the quarantine table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    /// A row with the first `kept` bytes of the payload.
    Keep { kept: usize },
    /// No row: the allowance is used up; the refusal is only counted.
    Drop,
}

/// Rows and bytes of each allowance, as loaded and as this transaction adds to them.
#[derive(Debug, Default)]
struct Quota {
    usage: HashMap<i64, (u64, u64)>,
}

impl Quota {
    /// Decides what refusal `q` leaves; `load(bucket)` reads an allowance's
    /// stored (rows, bytes) the first time it is needed in this transaction.
    pub fn admit(
        &mut self,
        q: &QuarantineItem,
        limits: &StoreLimits,
        load: impl FnOnce(i64) -> Result<(u64, u64), StoreError>,
    ) -> Result<Admit, StoreError> {
        let bucket = quota_bucket(q);
        let usage = match self.usage.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(load(bucket)?),
        };
        // A validly signed fork is kept whole: it is evidence, and if the
        // relay's genuine block was the one refused, its readings are in it.
        let kept = if q.kind == RejectKind::Fork {
            q.raw.len()
        } else {
            q.raw
                .len()
                .min(usize::try_from(limits.quarantine_max_payload_bytes).unwrap_or(usize::MAX))
        };
        if usage.0 >= limits.quarantine_max_rows_per_relay
            || usage.1.saturating_add(kept as u64) > limits.quarantine_max_bytes_per_relay
        {
            return Ok(Admit::Drop);
        }
        usage.0 += 1;
        usage.1 += kept as u64;
        Ok(Admit::Keep { kept })
    }
}

/// A (meter, epoch)'s coverage intervals: what the table holds and what it will hold.
#[derive(Debug)]
pub(crate) struct Coverage {
    /// The rows as stored (first_seq, last_seq), ascending.
    pub stored: Vec<(u32, u32)>,
    pub set: IntervalSet,
    pub dirty: bool,
}

/// A row change that brings the coverage table up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CoverageChange {
    /// Delete the row starting at this sequence number.
    Delete(u32),
    /// Set the end of the row starting at `.0` to `.1`.
    Update(u32, u32),
    /// Insert a row.
    Insert(u32, u32),
}

impl Coverage {
    /// The coverage whose table rows are `stored`.
    pub fn loaded(stored: Vec<(u32, u32)>) -> Coverage {
        let set = IntervalSet::from_ranges(stored.iter().copied());
        Coverage {
            stored,
            set,
            dirty: false,
        }
    }

    /// Adds `group` (readings of one meter and epoch, ascending by seq) to the
    /// coverage, pushes those not covered before onto `fresh`, the others
    /// onto `repeated`, and returns how many were repeated (duplicates).
    pub fn add<'r>(
        &mut self,
        group: &'r [ReadingRow],
        fresh: &mut Vec<&'r ReadingRow>,
        repeated: &mut Vec<ReadingRow>,
    ) -> u64 {
        // Distinct consecutive runs of sequence numbers, each added to the coverage.
        let mut added = Vec::new();
        let mut k = 0;
        while k < group.len() {
            let lo = group[k].seq;
            let mut hi = lo;
            let mut l = k + 1;
            while l < group.len() && (group[l].seq == hi || Some(group[l].seq) == hi.checked_add(1))
            {
                hi = group[l].seq;
                l += 1;
            }
            added.extend(self.set.insert_range(lo, hi));
            k = l;
        }
        self.dirty |= !added.is_empty();
        let mut dup = 0;
        let mut a = 0;
        let mut prev_seq = None;
        for row in group {
            if prev_seq == Some(row.seq) {
                dup += 1;
                repeated.push(*row);
                continue;
            }
            prev_seq = Some(row.seq);
            while a < added.len() && added[a].1 < row.seq {
                a += 1;
            }
            if a < added.len() && added[a].0 <= row.seq {
                fresh.push(row);
            } else {
                dup += 1;
                repeated.push(*row);
            }
        }
        dup
    }

    /// The row changes from `stored` to the set, deletions first.
    pub fn changes(&self) -> Vec<CoverageChange> {
        let now: &[(u32, u32)] = self.set.ranges();
        let mut out = Vec::new();
        for &(a, _) in &self.stored {
            if now.binary_search_by_key(&a, |r| r.0).is_err() {
                out.push(CoverageChange::Delete(a));
            }
        }
        for &(a, b) in now {
            match self.stored.binary_search_by_key(&a, |r| r.0) {
                Ok(i) if self.stored[i].1 == b => {}
                Ok(_) => out.push(CoverageChange::Update(a, b)),
                Err(_) => out.push(CoverageChange::Insert(a, b)),
            }
        }
        out
    }

    /// Records that the table now holds the set.
    pub fn written(&mut self) {
        self.stored = self.set.ranges().to_vec();
        self.dirty = false;
    }
}

/// The readings of `rows` (sorted by meter, epoch and seq), one (meter, epoch) at a time.
fn by_meter_epoch(rows: &[ReadingRow]) -> impl Iterator<Item = &[ReadingRow]> {
    rows.chunk_by(|a, b| a.meter_id == b.meter_id && a.epoch == b.epoch)
}

/// Extends the directory `runs` (by meter) with reading `id`, which stores `row` of block `block_id`.
fn add_to_runs(runs: &mut Vec<Run>, block_id: i64, id: i64, row: &ReadingRow) {
    let ts = row.reading.timestamp_ms as i64;
    match runs.last_mut() {
        Some(run) if run.meter_id == i64::from(row.meter_id) => {
            run.last_id = id;
            run.min_ts = run.min_ts.min(ts);
            run.max_ts = run.max_ts.max(ts);
        }
        _ => runs.push(Run {
            block_id,
            meter_id: i64::from(row.meter_id),
            first_id: id,
            last_id: id,
            min_ts: ts,
            max_ts: ts,
        }),
    }
}

/// The new readings `fresh` (sorted by meter), one meter at a time.
fn by_meter<'r, 's>(fresh: &'s [&'r ReadingRow]) -> impl Iterator<Item = &'s [&'r ReadingRow]> {
    fresh.chunk_by(|a, b| a.meter_id == b.meter_id)
}

#[cfg(test)]
mod tests {
    //! The planner against an in-memory snapshot: no database.

    use super::*;
    use crate::tests::{block, ingest, refused, T0};
    use gridpow_proto::crypto::RustCrypto;

    /// Stored state in memory; counts how often each kind of row is asked for.
    #[derive(Default)]
    struct Mem {
        slots: HashMap<(u32, i64), StoredSlot>,
        usage: HashMap<i64, (u64, u64)>,
        meters: HashMap<u32, MeterRow>,
        coverage: HashMap<(u32, u32), Vec<(u32, u32)>>,
        /// The log: its size and stored hashes.
        log_size: u64,
        log: HashMap<u64, Hash>,
        asked: BTreeMap<&'static str, u32>,
    }

    impl LogSnapshot for Mem {
        fn log_size(&mut self) -> Result<u64, StoreError> {
            self.ask("log_size");
            Ok(self.log_size)
        }

        fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
            self.ask("log_hashes");
            indexes
                .iter()
                .map(|i| {
                    self.log.get(i).copied().ok_or(StoreError::Corrupt {
                        table: "log_hashes",
                        detail: format!("{i} missing"),
                    })
                })
                .collect()
        }
    }

    impl Mem {
        fn ask(&mut self, what: &'static str) {
            *self.asked.entry(what).or_default() += 1;
        }

        /// Block `b` stored with row id `id`.
        fn stored(mut self, b: &VerifiedBlockData, id: i64, linked: bool) -> Mem {
            let h = &b.header;
            self.slots.insert(
                (h.relay_id, h.height as i64),
                StoredSlot {
                    id,
                    hash: b.hash.to_vec(),
                    prev_hash: h.prev_hash.to_vec(),
                    linked,
                    log_index: id as u64,
                },
            );
            self
        }
    }

    impl Snapshot for Mem {
        fn head(&mut self, relay: u32) -> Result<Option<i64>, StoreError> {
            self.ask("head");
            Ok(self
                .slots
                .keys()
                .filter(|k| k.0 == relay)
                .map(|k| k.1)
                .max())
        }
        fn slot(&mut self, relay: u32, height: i64) -> Result<Option<StoredSlot>, StoreError> {
            self.ask("slot");
            Ok(self.slots.get(&(relay, height)).cloned())
        }
        fn highest_below(&mut self, relay: u32, height: i64) -> Result<Option<i64>, StoreError> {
            self.ask("below");
            Ok(self
                .slots
                .keys()
                .filter(|k| k.0 == relay && k.1 < height)
                .map(|k| k.1)
                .max())
        }
        fn quarantine_usage(&mut self, bucket: i64) -> Result<(u64, u64), StoreError> {
            self.ask("usage");
            Ok(self.usage.get(&bucket).copied().unwrap_or_default())
        }
        fn meter(&mut self, meter_id: u32) -> Result<Option<MeterRow>, StoreError> {
            self.ask("meter");
            Ok(self.meters.get(&meter_id).cloned())
        }
        fn coverage(&mut self, meter_id: u32, epoch: u32) -> Result<Vec<(u32, u32)>, StoreError> {
            self.ask("coverage");
            Ok(self
                .coverage
                .get(&(meter_id, epoch))
                .cloned()
                .unwrap_or_default())
        }
    }

    const NOW: u64 = T0 + 3_600_000;

    /// Plans `items` against `mem` with default rules and limits.
    fn plan<'a>(items: &'a [Ingest], mem: &mut Mem, limits: &'a StoreLimits) -> Plan<'a> {
        static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
        let rules = RULES.get_or_init(Rules::default);
        let mut planner = Planner::new(rules, limits, NOW);
        planner.chains(items, mem).unwrap();
        planner.readings(mem, &mut Working::default()).unwrap()
    }

    fn counter(p: &Plan<'_>, name: &str) -> i64 {
        p.book.counters.get(name).copied().unwrap_or(0)
    }

    #[test]
    fn a_child_before_its_parent_opens_a_gap_the_parent_closes_in_the_same_commit() {
        let g = block(1, 0, [0; 32], &[(7, 1, 0..2)]);
        let c = block(1, 1, g.hash, &[(7, 1, 2..4)]);
        let items = [ingest(&c), ingest(&g)];
        let limits = StoreLimits::default();
        let mut mem = Mem::default();
        let mut p = plan(&items, &mut mem, &limits);
        assert_eq!(p.blocks.len(), 2);
        assert!(p.blocks[0].linked, "the child's row is written linked");
        assert_eq!(p.gaps_opened.get(&(1, 1)), Some(&Some(NOW as i64)));
        assert!(p.link_children.is_empty() && p.gaps_closed.is_empty());
        let out = p.outcomes(&[10, 11], &[]).unwrap();
        assert!(matches!(
            out[0],
            Outcome::Stored {
                block_id: 10,
                linked: false,
                closed_gap: false,
                new_readings: 2,
                ..
            }
        ));
        assert!(matches!(
            out[1],
            Outcome::Stored {
                block_id: 11,
                linked: true,
                closed_gap: true,
                new_readings: 2,
                ..
            }
        ));
        // The gap alert was raised and cleared within the commit.
        let gap = &p.book.alerts[&(AlertKind::Gap, block_subject(1, 1))];
        assert!(gap.cleared);
        assert_eq!(p.meters.len(), 1);
        assert_eq!(p.meters[0].1.readings, 4);
        assert_eq!(counter(&p, "meters"), 1);
        assert_eq!(p.coverage, vec![((7, 1), CoverageChange::Insert(0, 3))]);
    }

    #[test]
    fn a_stored_orphan_is_linked_by_its_parent_and_its_gap_closed() {
        let g = block(1, 0, [0; 32], &[]);
        let c = block(1, 1, g.hash, &[]);
        let mut mem = Mem::default().stored(&c, 5, false);
        let items = [ingest(&g)];
        let limits = StoreLimits::default();
        let p = plan(&items, &mut mem, &limits);
        assert_eq!(p.link_children, vec![5]);
        assert_eq!(p.gaps_closed, vec![(1, 1)]);
        assert!(p
            .book
            .clears
            .contains(&(AlertKind::Gap, block_subject(1, 1))));
    }

    #[test]
    fn the_same_block_again_is_a_duplicate_whether_stored_before_or_in_this_commit() {
        let g = block(1, 0, [0; 32], &[(7, 1, 0..2)]);
        let b1 = block(1, 1, g.hash, &[(7, 1, 2..3)]);
        let mut mem = Mem::default().stored(&g, 3, true);
        let items = [ingest(&g), ingest(&b1), ingest(&b1)];
        let limits = StoreLimits::default();
        let mut p = plan(&items, &mut mem, &limits);
        assert_eq!(p.blocks.len(), 1);
        assert_eq!(counter(&p, "blocks_duplicate"), 2);
        let out = p.outcomes(&[4], &[]).unwrap();
        assert!(matches!(out[0], Outcome::AlreadyStored { block_id: 3, .. }));
        assert!(matches!(
            out[1],
            Outcome::Stored {
                block_id: 4,
                linked: true,
                ..
            }
        ));
        assert!(matches!(out[2], Outcome::AlreadyStored { block_id: 4, .. }));
    }

    #[test]
    fn a_second_block_at_a_stored_height_is_a_fork_kept_whole_beyond_the_payload_cut() {
        let g = block(1, 0, [0; 32], &[]);
        let mut other = block(1, 0, [0; 32], &[(7, 1, 0..1)]);
        other.header.nonce = 99;
        other.hash = other.header.hash(&gridpow_proto::crypto::RustCrypto);
        other.raw = vec![0xAB; 200];
        let mut mem = Mem::default().stored(&g, 1, true);
        let items = [ingest(&other)];
        let limits = StoreLimits {
            quarantine_max_payload_bytes: 50,
            ..StoreLimits::default()
        };
        let mut p = plan(&items, &mut mem, &limits);
        assert!(p.blocks.is_empty());
        assert_eq!(p.quarantine.len(), 1);
        assert_eq!(
            p.quarantine[0].raw().len(),
            200,
            "fork evidence is kept whole"
        );
        assert_eq!(counter(&p, "forks"), 1);
        assert!(p
            .book
            .alerts
            .contains_key(&(AlertKind::Fork, block_subject(1, 0))));
        let out = p.outcomes(&[], &[42]).unwrap();
        assert!(matches!(
            out[0],
            Outcome::Quarantined {
                kind: RejectKind::Fork,
                id: 42
            }
        ));
        assert!(
            p.meters.is_empty(),
            "a refused block's readings touch no meter"
        );
    }

    #[test]
    fn readings_already_covered_or_carried_twice_are_duplicates_and_the_rest_extend_coverage() {
        let g = block(1, 0, [0; 32], &[(7, 1, 3..9)]);
        let b1 = block(1, 1, g.hash, &[(7, 1, 8..11)]);
        let mut mem = Mem::default();
        mem.coverage.insert((7, 1), vec![(0, 4)]);
        mem.meters.insert(
            7,
            MeterRow {
                first_seen_ms: T0,
                readings: 5,
                last: Some((1, 4, crate::tests::reading(7, 4))),
                silent: true,
            },
        );
        let items = [ingest(&g), ingest(&b1)];
        let limits = StoreLimits::default();
        let mut p = plan(&items, &mut mem, &limits);
        let seqs = |i: usize| p.blocks[i].fresh.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(0), vec![5, 6, 7, 8]);
        assert_eq!(seqs(1), vec![9, 10]);
        assert_eq!((p.blocks[0].duplicates, p.blocks[1].duplicates), (2, 1));
        assert_eq!(p.coverage, vec![((7, 1), CoverageChange::Update(0, 10))]);
        let row = &p.meters[0].1;
        assert_eq!((row.readings, row.silent), (11, false));
        assert_eq!(row.last.map(|l| l.1), Some(10));
        assert_eq!(counter(&p, "meters"), 0);
        assert_eq!(counter(&p, "readings_duplicate"), 3);
        assert!(p
            .book
            .clears
            .contains(&(AlertKind::Silent, meter_subject(7))));
        assert_eq!(mem.asked["coverage"], 1, "each (meter, epoch) is read once");
        assert_eq!(mem.asked["meter"], 1);
        let out = p.outcomes(&[1, 2], &[]).unwrap();
        let Outcome::Stored { repeated, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            repeated.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 4]
        );
    }

    #[test]
    fn a_refusal_beyond_its_allowance_is_only_counted() {
        let limits = StoreLimits {
            quarantine_max_rows_per_relay: 3,
            ..StoreLimits::default()
        };
        let mut mem = Mem::default();
        mem.usage.insert(-1, (2, 100));
        let items = [
            refused(RejectKind::Malformed, None, vec![1; 10], T0),
            refused(RejectKind::Malformed, None, vec![2; 10], T0),
        ];
        let mut p = plan(&items, &mut mem, &limits);
        assert_eq!(p.quarantine.len(), 1);
        assert_eq!(p.quarantine_dropped(), 1);
        assert_eq!(
            mem.asked["usage"], 1,
            "an allowance is read once per commit"
        );
        let out = p.outcomes(&[], &[9]).unwrap();
        assert!(matches!(out[0], Outcome::Quarantined { id: 9, .. }));
        assert!(matches!(out[1], Outcome::Quarantined { id: 0, .. }));
        assert_eq!(counter(&p, "blocks_rejected"), 2);
    }

    #[test]
    fn a_block_too_far_above_the_head_is_refused_before_any_slot_is_read() {
        let limits = StoreLimits {
            max_height_ahead: 10,
            ..StoreLimits::default()
        };
        let far = block(1, 11, [1; 32], &[]);
        let mut mem = Mem::default();
        let items = [ingest(&far)];
        let mut p = plan(&items, &mut mem, &limits);
        assert!(!mem.asked.contains_key("slot"));
        let out = p.outcomes(&[], &[1]).unwrap();
        assert!(matches!(
            out[0],
            Outcome::Quarantined {
                kind: RejectKind::TooFarAhead,
                ..
            }
        ));
    }

    /// Stored log hashes in memory, as `tlog_tiles` reads them.
    struct MemHashes<'a>(&'a HashMap<u64, Hash>);

    impl tlog_tiles::HashReader for MemHashes<'_> {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
            indexes
                .iter()
                .map(|i| {
                    self.0
                        .get(i)
                        .map(|h| tlog_tiles::Hash(*h))
                        .ok_or(tlog_tiles::Error::IndexesNotInTree)
                })
                .collect()
        }
    }

    /// What a backend does with a plan, in memory: the rows it leaves.
    fn apply(mem: &mut Mem, p: &mut Plan<'_>, next_id: &mut i64) -> Vec<Outcome> {
        let ids: Vec<i64> = p
            .blocks
            .iter()
            .map(|_| {
                *next_id += 1;
                *next_id
            })
            .collect();
        for (nb, &id) in p.blocks.iter().zip(&ids) {
            let h = &nb.block.header;
            mem.slots.insert(
                (h.relay_id, h.height as i64),
                StoredSlot {
                    id,
                    hash: nb.block.hash.to_vec(),
                    prev_hash: h.prev_hash.to_vec(),
                    linked: nb.linked,
                    log_index: mem.log_size + (id - ids[0]) as u64,
                },
            );
        }
        for id in &p.link_children {
            for s in mem.slots.values_mut().filter(|s| s.id == *id) {
                s.linked = true;
            }
        }
        for &((m, e), change) in &p.coverage {
            let rows = mem.coverage.entry((m, e)).or_default();
            match change {
                CoverageChange::Delete(a) => rows.retain(|r| r.0 != a),
                CoverageChange::Update(a, z) => {
                    for r in rows.iter_mut().filter(|r| r.0 == a) {
                        r.1 = z;
                    }
                }
                CoverageChange::Insert(a, z) => rows.push((a, z)),
            }
            rows.sort_unstable();
        }
        for (m, row) in &p.meters {
            mem.meters.insert(*m, row.clone());
        }
        if !p.blocks.is_empty() {
            assert_eq!(
                p.log.first, mem.log_size,
                "entries are appended at the log's end"
            );
        }
        for (i, h) in &p.log.hashes {
            assert!(
                mem.log.insert(*i, *h).is_none(),
                "stored hash {i} written twice"
            );
        }
        mem.log_size += p.blocks.len() as u64;
        let quarantine_ids: Vec<i64> = (1..=p.quarantine.len() as i64).collect();
        p.outcomes(&ids, &quarantine_ids).unwrap()
    }

    proptest::proptest! {
        /// Random batches of one relay's chain blocks (repeated, out of order, their
        /// readings overlapping) planned and applied one after another: every block is
        /// stored once, every reading is new exactly once, the coverage rows the plans
        /// write are the readings stored, and a block is linked exactly when its parent
        /// is stored.
        #[test]
        fn batches_in_any_order_store_each_block_and_reading_once(
            spans in proptest::collection::vec((1u32..4, 0u32..30, 1u32..8), 6),
            batches in proptest::collection::vec(proptest::collection::vec(0usize..6, 1..5), 1..5),
        ) {
            let mut chain = Vec::new();
            let mut prev = [0; 32];
            for (h, &(meter, first, len)) in spans.iter().enumerate() {
                let b = block(1, h as u64, prev, &[(meter, 1, first..first + len), (meter % 3 + 1, 1, first..first + 2)]);
                prev = b.hash;
                chain.push(b);
            }
            let limits = StoreLimits::default();
            let mut mem = Mem::default();
            let mut next_id = 0;
            let mut fresh = BTreeSet::new();
            let mut sent = BTreeSet::new();
            let mut logged = Vec::new();
            for batch in &batches {
                let items: Vec<Ingest> = batch.iter().map(|&i| ingest(&chain[i])).collect();
                let mut p = plan(&items, &mut mem, &limits);
                for nb in &p.blocks {
                    for r in &nb.fresh {
                        proptest::prop_assert!(fresh.insert((r.meter_id, r.epoch, r.seq)), "stored twice: {:?}", r);
                    }
                    proptest::prop_assert_eq!(nb.fresh.len() as u64 + nb.duplicates, nb.block.readings.len() as u64);
                }
                logged.extend(p.blocks.iter().map(|nb| nb.block.hash));
                let out = apply(&mut mem, &mut p, &mut next_id);
                for (i, o) in batch.iter().zip(&out) {
                    proptest::prop_assert!(!matches!(o, Outcome::Quarantined { .. }), "block {} refused: {:?}", i, o);
                    sent.insert(*i);
                }
            }
            proptest::prop_assert_eq!(mem.slots.len(), sent.len());
            let stored: BTreeSet<(u32, u32, u32)> = sent
                .iter()
                .flat_map(|&i| chain[i].readings.iter().map(|r| (r.meter_id, r.epoch, r.seq)))
                .collect();
            proptest::prop_assert_eq!(&fresh, &stored);
            for (&(m, e), rows) in &mem.coverage {
                let covered: usize = rows.iter().map(|&(a, z)| (z - a + 1) as usize).sum();
                let want = stored.iter().filter(|k| k.0 == m && k.1 == e).count();
                proptest::prop_assert_eq!(covered, want, "coverage of meter {} epoch {}: {:?}", m, e, rows);
            }
            for (&(_, h), s) in &mem.slots {
                proptest::prop_assert_eq!(s.linked, h == 0 || mem.slots.contains_key(&(1, h - 1)), "height {}", h);
            }
            // The log holds every stored block once, in commit order, and its
            // stored hashes give the RFC 9162 root of those entries.
            proptest::prop_assert_eq!(logged.len(), sent.len());
            let leaves: Vec<Hash> = logged
                .iter()
                .map(|hash| {
                    let b = chain.iter().find(|b| &b.hash == hash).unwrap();
                    LogLeafRepr::of_block(&b.header, b.hash).leaf_hash(&RustCrypto)
                })
                .collect();
            let stored = MemHashes(&mem.log);
            let root = tlog_tiles::tree_hash(mem.log_size, &stored).unwrap();
            proptest::prop_assert_eq!(root.0, gridpow_proto::merkle::root_of_hashes(&RustCrypto, &leaves));
        }
    }
}
