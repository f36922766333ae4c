//! One commit: the transaction described in the module docs of
//! [`super`](crate::postgres): relay locks, chain decisions, meter row
//! locks, de-duplication against coverage, binary COPY, then the shared rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use futures_util::SinkExt;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::Reading;
use tokio_postgres::{Statement, Transaction};

use super::conn::{block_on, PgConn};
use super::copy::{CopyBuf, COPY_READINGS};
use super::{read_totals, LOCK_RELAY, READING_ID_SHIFT};
use crate::plausibility::Rules;
use crate::shared::{
    self, u64_of, Admit, Book, Chain, ChainSlot, Coverage, CoverageChange, MeterState, Quota,
};
use crate::verified::{ReadingRow, VerifiedBlockData};
use crate::{
    Arrival, CommitResult, Ingest, Outcome, QuarantineItem, RaisedAlert, Run, StoreError,
    StoreLimits,
};

const COPY_BLOCKS: &str = "COPY blocks (id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, \
     nonce, raw, linked, received_ms, first_reading_id, reading_count, duplicate_count, min_ts, max_ts) FROM STDIN (FORMAT binary)";
const COPY_RUNS: &str =
    "COPY runs (block_id, meter_id, first_id, count, min_ts, max_ts) FROM STDIN (FORMAT binary)";

const LOCK_RELAYS: &str =
    "SELECT count(pg_advisory_xact_lock($1, r)) FROM unnest($2::int4[]) WITH ORDINALITY AS u(r, o)";
const LOAD_SLOTS: &str =
    "SELECT b.relay_id, b.height, b.id, b.hash, b.prev_hash, b.linked FROM blocks b \
             JOIN unnest($1::int8[], $2::int8[]) AS k(r, h) ON b.relay_id = k.r AND b.height = k.h";
const LOAD_HEADS: &str =
    "SELECT relay_id, MAX(height) FROM blocks WHERE relay_id = ANY($1) GROUP BY relay_id";
const INSERT_QUARANTINE: &str =
    "INSERT INTO quarantine (received_ms, topic, kind, detail, relay_id, height, hash, raw, original_len, kept_len, bucket) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";
const QUOTA_USAGE: &str =
    "SELECT COUNT(*)::int8, COALESCE(SUM(kept_len), 0)::int8 FROM quarantine WHERE bucket = $1";
const MAX_BELOW: &str = "SELECT MAX(height) FROM blocks WHERE relay_id = $1 AND height < $2";
const NEXT_IDS: &str = "SELECT nextval('block_ids') FROM generate_series(1, $1::int8)";
const INSERT_METERS: &str = "INSERT INTO meters (meter_id, first_seen_ms, last_received_ms, readings, last_epoch, last_seq, last_ts_ms, \
             last_voltage_cv, last_current_ma, last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh, last_flags, silent) \
             SELECT m, $2, $2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, false FROM unnest($1::int8[]) AS m \
             ON CONFLICT (meter_id) DO NOTHING RETURNING meter_id";
const LOCK_METERS: &str = "SELECT meter_id, readings, last_epoch, last_seq, last_ts_ms, last_voltage_cv, last_current_ma, \
             last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh, last_flags, silent FROM meters \
             WHERE meter_id = ANY($1) ORDER BY meter_id FOR UPDATE";
const LOAD_COVERAGE: &str = "SELECT c.meter_id, c.epoch, c.first_seq, c.last_seq FROM coverage c \
             JOIN unnest($1::int8[], $2::int8[]) AS k(m, e) ON c.meter_id = k.m AND c.epoch = k.e \
             ORDER BY 1, 2, 3";
const LINK_CHILDREN: &str = "UPDATE blocks SET linked = true WHERE id = ANY($1)";
const OPEN_GAPS: &str = "INSERT INTO gaps (relay_id, height, opened_ms, closed_ms) \
                 SELECT r, h, $3, c FROM unnest($1::int8[], $2::int8[], $4::int8[]) AS u(r, h, c) ON CONFLICT DO NOTHING";
const CLOSE_GAPS: &str =
    "UPDATE gaps g SET closed_ms = $3 FROM unnest($1::int8[], $2::int8[]) AS u(r, h) \
                 WHERE g.relay_id = u.r AND g.height = u.h AND g.closed_ms IS NULL";
const UPSERT_RELAYS: &str = "INSERT INTO relays (relay_id, blocks, readings, leaves, first_seen_ms, last_block_ms) \
                 SELECT r, b, n, l, $5, $5 FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[]) AS u(r, b, n, l) \
                 ON CONFLICT (relay_id) DO UPDATE SET blocks = relays.blocks + excluded.blocks, \
                 readings = relays.readings + excluded.readings, leaves = relays.leaves + excluded.leaves, \
                 last_block_ms = excluded.last_block_ms";
const UPSERT_ALERTS: &str = "INSERT INTO alerts (kind, subject, meter_id, relay_id, first_ms, last_ms, count, message, cleared_ms) \
                 SELECT k, s, m, r, $8, $8, c, msg, cl FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], \
                 $5::int8[], $6::text[], $7::int8[]) AS u(k, s, m, r, c, msg, cl) \
                 ON CONFLICT (kind, subject) DO UPDATE SET last_ms = excluded.last_ms, count = alerts.count + excluded.count, \
                 message = excluded.message, cleared_ms = excluded.cleared_ms";
const CLEAR_ALERTS: &str =
    "UPDATE alerts a SET cleared_ms = $3 FROM unnest($1::text[], $2::text[]) AS u(k, s) \
                 WHERE a.kind = u.k AND a.subject = u.s AND a.cleared_ms IS NULL";
const GROW_SPAN: &str = "UPDATE meta SET value = $1 WHERE name = 'max_run_span_ms' AND value < $1";
const ADD_COUNTERS: &str = "INSERT INTO counters (name, shard, value) SELECT n, $3, v FROM unnest($1::text[], $2::int8[]) AS u(n, v) \
                 ON CONFLICT (name, shard) DO UPDATE SET value = counters.value + excluded.value";
const DELETE_COVERAGE: &str =
    "DELETE FROM coverage c USING unnest($1::int8[], $2::int8[], $3::int8[]) AS u(m, e, f) \
                 WHERE c.meter_id = u.m AND c.epoch = u.e AND c.first_seq = u.f";
const UPDATE_COVERAGE: &str = "UPDATE coverage c SET last_seq = u.l FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[]) AS u(m, e, f, l) \
                 WHERE c.meter_id = u.m AND c.epoch = u.e AND c.first_seq = u.f";
const INSERT_COVERAGE: &str = "INSERT INTO coverage (meter_id, epoch, first_seq, last_seq) \
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[])";
const UPDATE_METERS: &str = "UPDATE meters t SET last_received_ms = $13, readings = u.n, last_epoch = u.e, last_seq = u.q, last_ts_ms = u.ts, \
             last_voltage_cv = u.v, last_current_ma = u.i, last_power_dw = u.p, last_pf_e4 = u.pf, last_freq_mhz = u.f, \
             last_energy_mwh = u.en, last_flags = u.fl, silent = u.s \
             FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int4[], $7::int8[], $8::int4[], \
             $9::int2[], $10::int4[], $11::int8[], $12::int4[], $14::bool[]) AS u(m, n, e, q, ts, v, i, p, pf, f, en, fl, s) \
             WHERE t.meter_id = u.m";

/// Every statement a commit runs, prepared once per connection.
pub(super) const WRITER_SQL: &[&str] = &[
    LOCK_RELAYS,
    LOAD_SLOTS,
    LOAD_HEADS,
    INSERT_QUARANTINE,
    QUOTA_USAGE,
    MAX_BELOW,
    NEXT_IDS,
    INSERT_METERS,
    LOCK_METERS,
    LOAD_COVERAGE,
    LINK_CHILDREN,
    OPEN_GAPS,
    CLOSE_GAPS,
    UPSERT_RELAYS,
    UPSERT_ALERTS,
    CLEAR_ALERTS,
    GROW_SPAN,
    ADD_COUNTERS,
    DELETE_COVERAGE,
    UPDATE_COVERAGE,
    INSERT_COVERAGE,
    UPDATE_METERS,
    COPY_READINGS,
    COPY_BLOCKS,
    COPY_RUNS,
];

/// The prepared statement for `sql`.
fn st<'s>(
    stmts: &'s HashMap<&'static str, Statement>,
    sql: &'static str,
) -> Result<&'s Statement, StoreError> {
    stmts.get(sql).ok_or_else(|| StoreError::Corrupt {
        table: "statements",
        detail: format!("not prepared: {sql}"),
    })
}

/// Sends `data` as the body of the `COPY … FROM STDIN` statement `sql`; returns the rows copied.
pub(super) async fn copy_in<T>(
    tx: &Transaction<'_>,
    statement: &T,
    mut data: Bytes,
) -> Result<u64, tokio_postgres::Error>
where
    T: ?Sized + tokio_postgres::ToStatement,
{
    let sink = tx.copy_in(statement).await?;
    let mut sink = std::pin::pin!(sink);
    while !data.is_empty() {
        let chunk = data.split_to(data.len().min(1 << 20));
        sink.as_mut().send(chunk).await?;
    }
    sink.as_mut().finish().await
}

/// A stored (or just decided) block at a chain position.
#[derive(Clone, Debug)]
struct Slot {
    id: i64,
    hash: Vec<u8>,
    prev_hash: Vec<u8>,
    linked: bool,
    /// Index into `Writer::new_blocks` if this transaction stores it.
    pending: Option<usize>,
}

/// A block this transaction stores.
struct NewBlock<'a> {
    id: i64,
    arrival: &'a Arrival,
    block: &'a VerifiedBlockData,
    linked: bool,
    new_readings: u64,
    duplicate_readings: u64,
    repeated: Vec<ReadingRow>,
    span: Option<(i64, i64)>,
}

/// An outcome before block ids are known.
enum Decided {
    Done(Outcome),
    Stored {
        block: usize,
        linked: bool,
        closed_gap: bool,
    },
    Again {
        block: usize,
    },
}

impl ChainSlot for Slot {
    fn hash(&self) -> &[u8] {
        &self.hash
    }
    fn prev_hash(&self) -> &[u8] {
        &self.prev_hash
    }
    fn linked(&self) -> bool {
        self.linked
    }
}

struct Writer<'t, 'a> {
    tx: &'t Transaction<'t>,
    st: &'t HashMap<&'static str, Statement>,
    rules: &'t Rules,
    limits: &'t StoreLimits,
    quota: Quota,
    /// Refusals only counted (allowance used up) and kept cut short.
    dropped: u64,
    truncated: u64,
    now_ms: u64,
    /// Each batch relay's highest stored (or to be stored) height.
    heads: HashMap<u32, i64>,
    slots: HashMap<(u32, i64), Slot>,
    new_blocks: Vec<NewBlock<'a>>,
    /// Existing blocks whose parent this transaction stores.
    linked_updates: Vec<i64>,
    /// Gaps this transaction opens: (relay, height) → closed at (if its parent came too).
    gaps_opened: BTreeMap<(u32, i64), Option<i64>>,
    /// Stored gaps this transaction closes.
    gaps_closed: Vec<(u32, i64)>,
    meters: BTreeMap<u32, MeterState>,
    coverage: HashMap<(u32, u32), Coverage>,
    book: Book,
    /// Largest time span of a run in this transaction.
    max_span: i64,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::from(e)
}

/// Stores `items` in one transaction (see the module docs).
pub(super) fn commit(
    conn: &mut PgConn,
    rules: &Rules,
    limits: &StoreLimits,
    shard: i16,
    items: &[Ingest],
    now_ms: u64,
) -> Result<CommitResult, StoreError> {
    let mut stmts = HashMap::with_capacity(WRITER_SQL.len());
    for &sql in WRITER_SQL {
        stmts.insert(sql, conn.prepare(sql)?);
    }
    let tx = block_on(conn.client().transaction())?;
    let mut w = Writer {
        tx: &tx,
        st: &stmts,
        rules,
        limits,
        quota: Quota::default(),
        dropped: 0,
        truncated: 0,
        now_ms,
        heads: HashMap::new(),
        slots: HashMap::new(),
        new_blocks: Vec::new(),
        linked_updates: Vec::new(),
        gaps_opened: BTreeMap::new(),
        gaps_closed: Vec::new(),
        meters: BTreeMap::new(),
        coverage: HashMap::new(),
        book: Book::default(),
        max_span: 0,
    };
    w.lock_relays_and_load_slots(items)?;
    let mut decided = Vec::with_capacity(items.len());
    for item in items {
        decided.push(match item {
            Ingest::Quarantine(q) => Decided::Done(w.quarantine(q)?),
            Ingest::Block { arrival, block } => w.block(arrival, block)?,
        });
    }
    w.allocate_ids()?;
    w.lock_meters_and_load_coverage()?;
    let mut readings = CopyBuf::with_capacity(
        w.new_blocks
            .iter()
            .map(|b| b.block.readings.len() * 110)
            .sum(),
    );
    let mut runs = CopyBuf::with_capacity(0);
    for i in 0..w.new_blocks.len() {
        w.readings(i, &mut readings, &mut runs)?;
    }
    w.write_blocks()?;
    if readings.rows() > 0 {
        block_on(copy_in(&tx, st(&stmts, COPY_READINGS)?, readings.finish()))?;
    }
    if runs.rows() > 0 {
        block_on(copy_in(&tx, st(&stmts, COPY_RUNS)?, runs.finish()))?;
    }
    let outcomes = decided
        .into_iter()
        .map(|d| match d {
            Decided::Done(o) => o,
            Decided::Stored {
                block,
                linked,
                closed_gap,
            } => {
                let b = &w.new_blocks[block];
                Outcome::Stored {
                    block_id: b.id,
                    new_readings: b.new_readings,
                    duplicate_readings: b.duplicate_readings,
                    repeated: b.repeated.clone(),
                    linked,
                    closed_gap,
                }
            }
            Decided::Again { block } => Outcome::AlreadyStored {
                block_id: w.new_blocks[block].id,
            },
        })
        .collect();
    let (dropped, truncated) = (w.dropped, w.truncated);
    let alerts = w.finish(shard)?;
    let totals = read_totals(&tx)?;
    block_on(tx.commit())?;
    Ok(CommitResult {
        outcomes,
        alerts,
        totals,
        quarantine_dropped: dropped,
        quarantine_truncated: truncated,
    })
}

impl<'t, 'a> Writer<'t, 'a> {
    /// Locks the batch's relays (ascending) and reads the chain slots its blocks touch.
    fn lock_relays_and_load_slots(&mut self, items: &[Ingest]) -> Result<(), StoreError> {
        let mut relays = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for item in items {
            if let Ingest::Block { block, .. } = item {
                let h = &block.header;
                relays.insert(h.relay_id);
                if h.height < i64::MAX as u64 {
                    let hi = h.height as i64;
                    for k in [hi - 1, hi, hi + 1] {
                        if k >= 0 {
                            keys.insert((h.relay_id, k));
                        }
                    }
                }
            }
        }
        if relays.is_empty() {
            return Ok(());
        }
        // Two-key advisory locks take int4: the relay id bit-cast.
        let ids: Vec<i32> = relays.iter().map(|&r| r as i32).collect();
        block_on(
            self.tx
                .execute(st(self.st, LOCK_RELAYS)?, &[&LOCK_RELAY, &ids]),
        )?;
        let all: Vec<i64> = relays.iter().map(|&r| i64::from(r)).collect();
        for r in block_on(self.tx.query(st(self.st, LOAD_HEADS)?, &[&all]))? {
            let relay: i64 = r.try_get(0)?;
            if let Some(head) = r.try_get::<_, Option<i64>>(1)? {
                self.heads.insert(relay as u32, head);
            }
        }
        let (rs, hs): (Vec<i64>, Vec<i64>) = keys.iter().map(|&(r, h)| (i64::from(r), h)).unzip();
        let rows = block_on(self.tx.query(st(self.st, LOAD_SLOTS)?, &[&rs, &hs]))?;
        for r in rows {
            let relay: i64 = r.try_get(0)?;
            self.slots.insert(
                (relay as u32, r.try_get(1)?),
                Slot {
                    id: r.try_get(2)?,
                    hash: r.try_get(3)?,
                    prev_hash: r.try_get(4)?,
                    linked: r.try_get(5)?,
                    pending: None,
                },
            );
        }
        Ok(())
    }

    fn quarantine(&mut self, q: &QuarantineItem) -> Result<Outcome, StoreError> {
        let (tx, stmts) = (self.tx, self.st);
        let admit = self.quota.admit(q, self.limits, |bucket| {
            let r = block_on(tx.query_one(st(stmts, QUOTA_USAGE)?, &[&bucket]))?;
            Ok((u64_of(r.try_get(0)?), u64_of(r.try_get(1)?)))
        })?;
        let Admit::Keep { kept } = admit else {
            self.dropped += 1;
            self.book.quarantined(q, false, false);
            return Ok(Outcome::Quarantined {
                kind: q.kind,
                id: 0,
            });
        };
        let raw = &q.raw[..kept];
        let h = q.header.as_ref();
        let row = block_on(self.tx.query_one(
            st(self.st, INSERT_QUARANTINE)?,
            &[
                &(q.arrival.received_ms as i64),
                &q.arrival.topic,
                &q.kind.as_str(),
                &q.detail,
                &h.map(|h| i64::from(h.relay_id)),
                &h.map(|h| h.height as i64),
                &h.map(|h| h.hash(&RustCrypto).to_vec()),
                &raw,
                &(q.raw.len() as i64),
                &(kept as i64),
                &shared::quota_bucket(q),
            ],
        ))?;
        let id: i64 = row.try_get(0)?;
        let truncated = kept < q.raw.len();
        self.truncated += u64::from(truncated);
        self.book.quarantined(q, true, truncated);
        Ok(Outcome::Quarantined { kind: q.kind, id })
    }

    /// The chain decision for one block ([`shared::decide`]), recorded for the end of the transaction.
    fn block(
        &mut self,
        arrival: &'a Arrival,
        b: &'a VerifiedBlockData,
    ) -> Result<Decided, StoreError> {
        let h = &b.header;
        let (relay, height) = (h.relay_id, h.height);
        let slots = &self.slots;
        let at =
            |k: i64| -> Result<Option<Slot>, StoreError> { Ok(slots.get(&(relay, k)).cloned()) };
        let head = self.heads.get(&relay).copied();
        let (linked, child) = match shared::decide(b, head, self.limits, at)? {
            Chain::Refuse(kind, detail) => {
                let q = shared::refusal(arrival, b, kind, detail);
                return Ok(Decided::Done(self.quarantine(&q)?));
            }
            Chain::Same(slot) => {
                self.book.count("blocks_duplicate", 1);
                return Ok(match slot.pending {
                    Some(block) => Decided::Again { block },
                    None => Decided::Done(Outcome::AlreadyStored { block_id: slot.id }),
                });
            }
            Chain::Store { linked, child } => (linked, child),
        };
        let h_i = height as i64;
        let mut closed_gap = false;
        if let Some(child) = child {
            match child.pending {
                Some(i) => {
                    self.new_blocks[i].linked = true;
                    if let Some(closed) = self.gaps_opened.get_mut(&(relay, h_i + 1)) {
                        *closed = Some(self.now_ms as i64);
                    }
                }
                None => {
                    self.linked_updates.push(child.id);
                    self.gaps_closed.push((relay, h_i + 1));
                }
            }
            if let Some(s) = self.slots.get_mut(&(relay, h_i + 1)) {
                s.linked = true;
            }
            self.book.gap_closed(relay, height + 1);
            closed_gap = true;
        }
        let head = self.heads.entry(relay).or_insert(h_i);
        *head = (*head).max(h_i);
        let index = self.new_blocks.len();
        self.new_blocks.push(NewBlock {
            id: 0,
            arrival,
            block: b,
            linked,
            new_readings: 0,
            duplicate_readings: 0,
            repeated: Vec::new(),
            span: None,
        });
        self.slots.insert(
            (relay, h_i),
            Slot {
                id: 0,
                hash: b.hash.to_vec(),
                prev_hash: h.prev_hash.to_vec(),
                linked,
                pending: Some(index),
            },
        );
        if !linked {
            let below: Option<i64> = block_on(
                self.tx
                    .query_one(st(self.st, MAX_BELOW)?, &[&i64::from(relay), &h_i]),
            )?
            .try_get(0)?;
            let pending_below = self
                .slots
                .iter()
                .filter(|(&(r, k), s)| r == relay && k < h_i && s.pending.is_some())
                .map(|(&(_, k), _)| k)
                .max();
            let from = below.max(pending_below).map_or(0, |b| b + 1);
            self.gaps_opened.insert((relay, h_i), None);
            self.book.gap_opened(relay, height, from);
        }
        self.book.block_stored(relay, h.leaf_count);
        Ok(Decided::Stored {
            block: index,
            linked,
            closed_gap,
        })
    }

    /// Takes ids for the blocks to store from the sequence.
    fn allocate_ids(&mut self) -> Result<(), StoreError> {
        if self.new_blocks.is_empty() {
            return Ok(());
        }
        let n = self.new_blocks.len() as i64;
        let rows = block_on(self.tx.query(st(self.st, NEXT_IDS)?, &[&n]))?;
        if rows.len() != self.new_blocks.len() {
            return Err(StoreError::Corrupt {
                table: "block_ids",
                detail: format!("asked for {n} ids, got {}", rows.len()),
            });
        }
        for (b, r) in self.new_blocks.iter_mut().zip(&rows) {
            let id: i64 = r.try_get(0)?;
            if id <= 0 || id > i64::MAX >> READING_ID_SHIFT {
                return Err(StoreError::Corrupt {
                    table: "block_ids",
                    detail: format!("block id {id} out of range"),
                });
            }
            b.id = id;
        }
        Ok(())
    }

    /// Inserts the batch's new meters, locks every meter row of the batch
    /// (ascending), and reads their state and coverage.
    fn lock_meters_and_load_coverage(&mut self) -> Result<(), StoreError> {
        let mut meters = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        for b in &self.new_blocks {
            for r in &b.block.readings {
                meters.insert(r.meter_id);
                pairs.insert((r.meter_id, r.epoch));
            }
        }
        if meters.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = meters.iter().map(|&m| i64::from(m)).collect();
        let now = self.now_ms as i64;
        // Lock the known meters (the common case: all of them), then insert the
        // new ones and lock those too (a concurrent transaction may have just
        // inserted some: the insert waits for it, the second lock reads them).
        let mut rows = block_on(self.tx.query(st(self.st, LOCK_METERS)?, &[&ids]))?;
        let known: BTreeSet<i64> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let missing: Vec<i64> = ids.iter().copied().filter(|m| !known.contains(m)).collect();
        if !missing.is_empty() {
            let inserted = block_on(
                self.tx
                    .query(st(self.st, INSERT_METERS)?, &[&missing, &now]),
            )?;
            self.book.count("meters", inserted.len() as i64);
            rows.extend(block_on(
                self.tx.query(st(self.st, LOCK_METERS)?, &[&missing]),
            )?);
        }
        for r in &rows {
            let m: i64 = r.try_get(0)?;
            let readings: i64 = r.try_get(1)?;
            let last = (readings > 0).then(|| -> Result<_, tokio_postgres::Error> {
                Ok((
                    r.try_get::<_, i64>(2)? as u32,
                    r.try_get::<_, i64>(3)? as u32,
                    Reading {
                        timestamp_ms: r.try_get::<_, i64>(4)? as u64,
                        voltage_cv: r.try_get::<_, i32>(5)? as u16,
                        current_ma: r.try_get::<_, i64>(6)? as u32,
                        active_power_dw: r.try_get(7)?,
                        power_factor_e4: r.try_get(8)?,
                        frequency_mhz: r.try_get::<_, i32>(9)? as u16,
                        energy_mwh: r.try_get::<_, i64>(10)? as u64,
                        flags: r.try_get::<_, i32>(11)? as u16,
                    },
                ))
            });
            self.meters.insert(
                m as u32,
                MeterState {
                    readings: u64_of(readings),
                    last: last.transpose().map_err(pg)?,
                    silent: r.try_get(12)?,
                    dirty: false,
                },
            );
        }
        let (ms, es): (Vec<i64>, Vec<i64>) = pairs
            .iter()
            .map(|&(m, e)| (i64::from(m), i64::from(e)))
            .unzip();
        let rows = block_on(self.tx.query(st(self.st, LOAD_COVERAGE)?, &[&ms, &es]))?;
        let conv = |v: i64| {
            u32::try_from(v).map_err(|_| StoreError::Corrupt {
                table: "coverage",
                detail: format!("value {v}"),
            })
        };
        let mut stored: HashMap<(u32, u32), Vec<(u32, u32)>> = HashMap::new();
        for r in &rows {
            let (m, e, a, b): (i64, i64, i64, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            stored
                .entry((conv(m)?, conv(e)?))
                .or_default()
                .push((conv(a)?, conv(b)?));
        }
        for (m, e) in pairs {
            let stored = stored.remove(&(m, e)).unwrap_or_default();
            self.coverage.insert((m, e), Coverage::loaded(stored));
        }
        Ok(())
    }

    /// De-duplicates block `i`'s readings against the coverage and encodes the
    /// new ones and its runs for COPY (the SQLite backend's `readings`).
    fn readings(
        &mut self,
        i: usize,
        out: &mut CopyBuf,
        runs_out: &mut CopyBuf,
    ) -> Result<(), StoreError> {
        let block_id = self.new_blocks[i].id;
        let b = self.new_blocks[i].block;
        let rows = &b.readings;
        let (mut new, mut dup) = (0u64, 0u64);
        let mut fresh: Vec<&ReadingRow> = Vec::with_capacity(rows.len());
        let mut repeated = Vec::new();
        for group in shared::by_meter_epoch(rows) {
            let (m, e) = (group[0].meter_id, group[0].epoch);
            let cov = self
                .coverage
                .get_mut(&(m, e))
                .ok_or_else(|| StoreError::Corrupt {
                    table: "coverage",
                    detail: format!("meter {m} epoch {e} not loaded"),
                })?;
            dup += cov.add(group, &mut fresh, &mut repeated);
        }
        let first_id = block_id << READING_ID_SHIFT;
        let mut runs: Vec<Run> = Vec::new();
        for (n, row) in fresh.iter().enumerate() {
            let id = first_id + n as i64;
            out.reading(id, block_id, row);
            new += 1;
            shared::add_to_runs(&mut runs, block_id, id, row);
        }
        for r in &runs {
            runs_out.row(6);
            runs_out.i64(block_id);
            runs_out.i64(r.meter_id);
            runs_out.i64(r.first_id);
            runs_out.i64(r.last_id - r.first_id + 1);
            runs_out.i64(r.min_ts);
            runs_out.i64(r.max_ts);
            self.max_span = self.max_span.max(r.max_ts - r.min_ts);
        }
        let span = shared::span_of(&runs);
        self.judge(&fresh)?;
        let nb = &mut self.new_blocks[i];
        nb.new_readings = new;
        nb.duplicate_readings = dup;
        nb.repeated = repeated;
        nb.span = span;
        let relay = nb.block.header.relay_id;
        self.book.readings_stored(relay, new, dup);
        Ok(())
    }

    /// Plausibility of new readings and the meters' newest state.
    fn judge(&mut self, fresh: &[&ReadingRow]) -> Result<(), StoreError> {
        for group in shared::by_meter(fresh) {
            let m = group[0].meter_id;
            let state = self.meters.get_mut(&m).ok_or_else(|| StoreError::Corrupt {
                table: "meters",
                detail: format!("meter {m} not locked"),
            })?;
            let heard = state.hear(self.rules, group);
            self.book.meter_heard(m, heard);
        }
        Ok(())
    }

    /// COPY of the new block rows.
    fn write_blocks(&mut self) -> Result<(), StoreError> {
        if self.new_blocks.is_empty() {
            return Ok(());
        }
        let size: usize = self
            .new_blocks
            .iter()
            .map(|b| b.block.raw.len() + 300)
            .sum();
        let mut c = CopyBuf::with_capacity(size);
        let too_big = |_| StoreError::Corrupt {
            table: "blocks",
            detail: "block larger than 2 GiB".into(),
        };
        for nb in &self.new_blocks {
            let (b, h) = (nb.block, &nb.block.header);
            c.row(18);
            c.i64(nb.id);
            c.i64(i64::from(h.relay_id));
            c.i64(h.height as i64);
            c.bytes(&b.hash).map_err(too_big)?;
            c.bytes(&h.prev_hash).map_err(too_big)?;
            c.bytes(&h.merkle_root).map_err(too_big)?;
            c.i32(i32::from(h.difficulty));
            c.i64(i64::from(h.leaf_count));
            c.i64(h.time_ms as i64);
            c.i64(h.nonce as i64);
            c.bytes(&b.raw).map_err(too_big)?;
            c.bool(nb.linked);
            c.i64(nb.arrival.received_ms as i64);
            c.i64(nb.id << READING_ID_SHIFT);
            c.i64(nb.new_readings as i64);
            c.i64(nb.duplicate_readings as i64);
            c.opt_i64(nb.span.map(|s| s.0));
            c.opt_i64(nb.span.map(|s| s.1));
        }
        block_on(copy_in(self.tx, st(self.st, COPY_BLOCKS)?, c.finish()))?;
        Ok(())
    }

    /// Writes links, gaps, coverage, meters, relays, alerts, meta and counters;
    /// returns the alerts raised.
    fn finish(mut self, shard: i16) -> Result<Vec<RaisedAlert>, StoreError> {
        let tx = self.tx;
        let now = self.now_ms as i64;
        if !self.linked_updates.is_empty() {
            block_on(tx.execute(st(self.st, LINK_CHILDREN)?, &[&self.linked_updates]))?;
        }
        if !self.gaps_opened.is_empty() {
            let mut r = Vec::new();
            let mut h = Vec::new();
            let mut closed = Vec::new();
            for (&(relay, height), &c) in &self.gaps_opened {
                r.push(i64::from(relay));
                h.push(height);
                closed.push(c);
            }
            block_on(tx.execute(st(self.st, OPEN_GAPS)?, &[&r, &h, &now, &closed]))?;
        }
        if !self.gaps_closed.is_empty() {
            let (r, h): (Vec<i64>, Vec<i64>) = self
                .gaps_closed
                .iter()
                .map(|&(r, h)| (i64::from(r), h))
                .unzip();
            block_on(tx.execute(st(self.st, CLOSE_GAPS)?, &[&r, &h, &now]))?;
        }
        self.write_coverage()?;
        self.write_meters()?;
        if !self.book.relays.is_empty() {
            let mut ids = Vec::new();
            let (mut blocks, mut readings, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
            for (&r, d) in &self.book.relays {
                ids.push(i64::from(r));
                blocks.push(d.blocks);
                readings.push(d.readings);
                leaves.push(d.leaves);
            }
            block_on(tx.execute(
                st(self.st, UPSERT_RELAYS)?,
                &[&ids, &blocks, &readings, &leaves, &now],
            ))?;
        }
        let mut raised = Vec::new();
        if !self.book.alerts.is_empty() {
            let mut kinds = Vec::new();
            let mut subjects = Vec::new();
            let (mut meters, mut relays, mut counts) = (Vec::new(), Vec::new(), Vec::new());
            let (mut messages, mut cleared) = (Vec::new(), Vec::new());
            for ((kind, subject), a) in std::mem::take(&mut self.book.alerts) {
                kinds.push(kind.as_str());
                subjects.push(subject.clone());
                meters.push(a.meter_id.map(i64::from));
                relays.push(a.relay_id.map(i64::from));
                counts.push(a.count as i64);
                messages.push(a.message.clone());
                cleared.push(a.cleared.then_some(now));
                raised.push(RaisedAlert {
                    kind,
                    subject,
                    count: a.count,
                    message: a.message,
                });
            }
            block_on(tx.execute(
                st(self.st, UPSERT_ALERTS)?,
                &[
                    &kinds, &subjects, &meters, &relays, &counts, &messages, &cleared, &now,
                ],
            ))?;
        }
        if !self.book.clears.is_empty() {
            let (k, s): (Vec<&str>, Vec<String>) = self
                .book
                .clears
                .iter()
                .map(|(k, s)| (k.as_str(), s.clone()))
                .unzip();
            block_on(tx.execute(st(self.st, CLEAR_ALERTS)?, &[&k, &s, &now]))?;
        }
        if self.max_span > 0 {
            block_on(tx.execute(st(self.st, GROW_SPAN)?, &[&self.max_span]))?;
        }
        if !self.book.counters.is_empty() {
            let (names, values): (Vec<&str>, Vec<i64>) = self
                .book
                .counters
                .iter()
                .map(|(n, &v)| (n.as_str(), v))
                .unzip();
            block_on(tx.execute(st(self.st, ADD_COUNTERS)?, &[&names, &values, &shard]))?;
        }
        Ok(raised)
    }

    fn write_coverage(&mut self) -> Result<(), StoreError> {
        let (mut del, mut upd, mut ins) = (
            [Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        );
        let mut keys: Vec<&(u32, u32)> = self
            .coverage
            .iter()
            .filter(|(_, c)| c.dirty)
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable();
        for &(m, e) in keys {
            let Some(c) = self.coverage.get(&(m, e)) else {
                continue;
            };
            let (m, e) = (i64::from(m), i64::from(e));
            for change in c.changes() {
                let (target, a, b) = match change {
                    CoverageChange::Delete(a) => {
                        del[0].push(m);
                        del[1].push(e);
                        del[2].push(i64::from(a));
                        continue;
                    }
                    CoverageChange::Update(a, b) => (&mut upd, a, b),
                    CoverageChange::Insert(a, b) => (&mut ins, a, b),
                };
                target[0].push(m);
                target[1].push(e);
                target[2].push(i64::from(a));
                target[3].push(i64::from(b));
            }
        }
        if !del[0].is_empty() {
            block_on(
                self.tx
                    .execute(st(self.st, DELETE_COVERAGE)?, &[&del[0], &del[1], &del[2]]),
            )?;
        }
        if !upd[0].is_empty() {
            block_on(self.tx.execute(
                st(self.st, UPDATE_COVERAGE)?,
                &[&upd[0], &upd[1], &upd[2], &upd[3]],
            ))?;
        }
        if !ins[0].is_empty() {
            block_on(self.tx.execute(
                st(self.st, INSERT_COVERAGE)?,
                &[&ins[0], &ins[1], &ins[2], &ins[3]],
            ))?;
        }
        Ok(())
    }

    fn write_meters(&mut self) -> Result<(), StoreError> {
        let mut cols: [Vec<i64>; 13] = std::array::from_fn(|_| Vec::new());
        let mut silent = Vec::new();
        for (&m, s) in &self.meters {
            if !s.dirty {
                continue;
            }
            let (e, q, r) = s.last.unwrap_or((0, 0, Reading::default()));
            let v = [
                i64::from(m),
                s.readings as i64,
                i64::from(e),
                i64::from(q),
                r.timestamp_ms as i64,
                i64::from(r.voltage_cv),
                i64::from(r.current_ma),
                i64::from(r.active_power_dw),
                i64::from(r.power_factor_e4),
                i64::from(r.frequency_mhz),
                r.energy_mwh as i64,
                i64::from(r.flags),
                0,
            ];
            for (c, x) in cols.iter_mut().zip(v) {
                c.push(x);
            }
            silent.push(s.silent);
        }
        if cols[0].is_empty() {
            return Ok(());
        }
        block_on(self.tx.execute(
            st(self.st, UPDATE_METERS)?,
            &[
                &cols[0],
                &cols[1],
                &cols[2],
                &cols[3],
                &cols[4],
                &narrow32(&cols[5]),
                &cols[6],
                &narrow32(&cols[7]),
                &narrow16(&cols[8]),
                &narrow32(&cols[9]),
                &cols[10],
                &narrow32(&cols[11]),
                &(self.now_ms as i64),
                &silent,
            ],
        ))?;
        Ok(())
    }
}

fn narrow32(v: &[i64]) -> Vec<i32> {
    v.iter().map(|&x| x as i32).collect()
}

fn narrow16(v: &[i64]) -> Vec<i16> {
    v.iter().map(|&x| x as i16).collect()
}
