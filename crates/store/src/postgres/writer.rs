//! One commit: the transaction described in the module docs of
//! [`super`](crate::postgres). It loads and locks what the planner
//! ([`crate::plan`]) reads — relay locks, heads and chain slots; after the
//! chain decisions, the meter rows and coverage of the blocks to store — then
//! writes the plan: quarantine rows, binary COPY of blocks, readings and runs,
//! then the shared rows.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use futures_util::SinkExt;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{LogLeafRepr, Reading};
use tokio_postgres::{Statement, Transaction};

use super::conn::{block_on, PgConn};
use super::copy::{CopyBuf, COPY_READINGS};
use super::{read_totals, LOCK_LOG_CLASS, LOCK_RELAY, READING_ID_SHIFT};
use crate::log::{LogAppend, LogSnapshot};
use crate::plan::{
    quota_bucket, CoverageChange, MeterRow, Plan, Planner, Snapshot, StoredSlot, Working,
};
use crate::plausibility::Rules;
use crate::shared::hash_of;
use crate::shared::u64_of;
use crate::{CommitResult, Ingest, StoreError, StoreLimits};
use gridpow_proto::Hash;

const COPY_BLOCKS: &str = "COPY blocks (id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, \
     nonce, raw, linked, received_ms, first_reading_id, reading_count, duplicate_count, min_ts, max_ts, log_index) FROM STDIN (FORMAT binary)";
const COPY_RUNS: &str =
    "COPY runs (block_id, meter_id, first_id, count, min_ts, max_ts) FROM STDIN (FORMAT binary)";

const LOCK_RELAYS: &str =
    "SELECT count(pg_advisory_xact_lock($1, r)) FROM unnest($2::int4[]) WITH ORDINALITY AS u(r, o)";
const LOAD_SLOTS: &str =
    "SELECT b.relay_id, b.height, b.id, b.hash, b.prev_hash, b.linked, b.log_index FROM blocks b \
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
             last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh, last_flags, silent, first_seen_ms FROM meters \
             WHERE meter_id = ANY($1) ORDER BY meter_id FOR UPDATE";
const LOAD_COVERAGE: &str = "SELECT c.meter_id, c.epoch, c.first_seq, c.last_seq FROM coverage c \
             JOIN unnest($1::int8[], $2::int8[]) AS k(m, e) ON c.meter_id = k.m AND c.epoch = k.e \
             ORDER BY 1, 2, 3";
pub(super) const LOCK_LOG: &str = "SELECT pg_advisory_xact_lock($1, 0)";
pub(super) const LOG_SIZE: &str = "SELECT COALESCE(MAX(log_index) + 1, 0)::int8 FROM blocks";
pub(super) const LOG_HASHES: &str =
    "SELECT h.hash FROM unnest($1::int8[]) WITH ORDINALITY AS u(i, o) LEFT JOIN log_hashes h ON h.idx = u.i ORDER BY u.o";
pub(super) const INSERT_LOG_HASHES: &str =
    "INSERT INTO log_hashes (idx, hash) SELECT * FROM unnest($1::int8[], $2::bytea[])";
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
const UPSERT_CARRIED: &str = "INSERT INTO relay_meters (relay_id, meter_id, readings_first, readings_duplicate, last_heard_ms, last_key_id) \
                 SELECT r, m, f, d, $5, k FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $6::int8[]) AS u(r, m, f, d, k) \
                 ON CONFLICT (relay_id, meter_id) DO UPDATE SET \
                 readings_first = relay_meters.readings_first + excluded.readings_first, \
                 readings_duplicate = relay_meters.readings_duplicate + excluded.readings_duplicate, \
                 last_heard_ms = excluded.last_heard_ms, last_key_id = excluded.last_key_id";
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
    LOCK_LOG,
    LOG_SIZE,
    LOG_HASHES,
    INSERT_LOG_HASHES,
    LINK_CHILDREN,
    OPEN_GAPS,
    CLOSE_GAPS,
    UPSERT_RELAYS,
    UPSERT_CARRIED,
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

/// The stored state a plan reads: the batch relays' heads and chain slots,
/// and the rows of the meters it stores readings of, loaded and locked
/// before planning; allowances and lower heights are queried on demand.
struct Snap<'t> {
    tx: &'t Transaction<'t>,
    st: &'t HashMap<&'static str, Statement>,
    heads: HashMap<u32, i64>,
    /// Every slot at h−1, h and h+1 of each batch block.
    slots: HashMap<(u32, i64), StoredSlot>,
    /// Locked meter rows; `None`: inserted by this transaction.
    meters: HashMap<u32, Option<MeterRow>>,
    coverage: HashMap<(u32, u32), Vec<(u32, u32)>>,
}

impl LogSnapshot for Snap<'_> {
    fn log_size(&mut self) -> Result<u64, StoreError> {
        log_size_locked(self.tx, self.st)
    }

    fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
        log_hashes_in(self.tx, self.st, indexes)
    }
}

/// Takes the log's lock (to the end of the transaction: the module docs'
/// lock order puts it after the relays and meters) and reads the log's size.
pub(super) fn log_size_locked(
    tx: &Transaction<'_>,
    stmts: &HashMap<&'static str, Statement>,
) -> Result<u64, StoreError> {
    block_on(tx.execute(st(stmts, LOCK_LOG)?, &[&LOCK_LOG_CLASS]))?;
    let r = block_on(tx.query_one(st(stmts, LOG_SIZE)?, &[]))?;
    Ok(u64_of(r.try_get(0)?))
}

/// The stored log hashes at `indexes`, in that order.
pub(super) fn log_hashes_in(
    tx: &Transaction<'_>,
    stmts: &HashMap<&'static str, Statement>,
    indexes: &[u64],
) -> Result<Vec<Hash>, StoreError> {
    let idx: Vec<i64> = indexes.iter().map(|&i| i as i64).collect();
    let rows = block_on(tx.query(st(stmts, LOG_HASHES)?, &[&idx]))?;
    rows.iter()
        .zip(indexes)
        .map(|(r, i)| match r.try_get::<_, Option<Vec<u8>>>(0)? {
            Some(h) => hash_of("log_hashes", &h),
            None => Err(StoreError::Corrupt {
                table: "log_hashes",
                detail: format!("stored hash {i} is missing"),
            }),
        })
        .collect()
}

/// Writes a commit's stored log hashes.
pub(super) fn write_log_hashes(
    tx: &Transaction<'_>,
    stmts: &HashMap<&'static str, Statement>,
    log: &LogAppend,
) -> Result<(), StoreError> {
    if log.hashes.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let (idx, hashes): (Vec<i64>, Vec<Vec<u8>>) = log
        .hashes
        .iter()
        .map(|(i, h)| (*i as i64, h.to_vec()))
        .unzip();
    block_on(tx.execute(st(stmts, INSERT_LOG_HASHES)?, &[&idx, &hashes]))?;
    log.spent(started);
    Ok(())
}

impl Snapshot for Snap<'_> {
    fn head(&mut self, relay: u32) -> Result<Option<i64>, StoreError> {
        Ok(self.heads.get(&relay).copied())
    }

    fn slot(&mut self, relay: u32, height: i64) -> Result<Option<StoredSlot>, StoreError> {
        Ok(self.slots.get(&(relay, height)).cloned())
    }

    fn highest_below(&mut self, relay: u32, height: i64) -> Result<Option<i64>, StoreError> {
        Ok(block_on(
            self.tx
                .query_one(st(self.st, MAX_BELOW)?, &[&i64::from(relay), &height]),
        )?
        .try_get(0)?)
    }

    fn quarantine_usage(&mut self, bucket: i64) -> Result<(u64, u64), StoreError> {
        let r = block_on(self.tx.query_one(st(self.st, QUOTA_USAGE)?, &[&bucket]))?;
        Ok((u64_of(r.try_get(0)?), u64_of(r.try_get(1)?)))
    }

    fn meter(&mut self, meter_id: u32) -> Result<Option<MeterRow>, StoreError> {
        self.meters
            .get(&meter_id)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                table: "meters",
                detail: format!("meter {meter_id} not locked"),
            })
    }

    fn coverage(&mut self, meter_id: u32, epoch: u32) -> Result<Vec<(u32, u32)>, StoreError> {
        self.coverage
            .remove(&(meter_id, epoch))
            .ok_or_else(|| StoreError::Corrupt {
                table: "coverage",
                detail: format!("meter {meter_id} epoch {epoch} not loaded"),
            })
    }
}

impl<'t> Snap<'t> {
    /// Locks the batch's relays (ascending) and reads their heads and the chain
    /// slots its blocks touch.
    fn lock_relays(
        tx: &'t Transaction<'t>,
        stmts: &'t HashMap<&'static str, Statement>,
        items: &[Ingest],
    ) -> Result<Snap<'t>, StoreError> {
        let mut snap = Snap {
            tx,
            st: stmts,
            heads: HashMap::new(),
            slots: HashMap::new(),
            meters: HashMap::new(),
            coverage: HashMap::new(),
        };
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
            return Ok(snap);
        }
        // Two-key advisory locks take int4: the relay id bit-cast.
        let ids: Vec<i32> = relays.iter().map(|&r| r as i32).collect();
        block_on(tx.execute(st(stmts, LOCK_RELAYS)?, &[&LOCK_RELAY, &ids]))?;
        let all: Vec<i64> = relays.iter().map(|&r| i64::from(r)).collect();
        for r in block_on(tx.query(st(stmts, LOAD_HEADS)?, &[&all]))? {
            let relay: i64 = r.try_get(0)?;
            if let Some(head) = r.try_get::<_, Option<i64>>(1)? {
                snap.heads.insert(relay as u32, head);
            }
        }
        let (rs, hs): (Vec<i64>, Vec<i64>) = keys.iter().map(|&(r, h)| (i64::from(r), h)).unzip();
        for r in block_on(tx.query(st(stmts, LOAD_SLOTS)?, &[&rs, &hs]))? {
            let relay: i64 = r.try_get(0)?;
            let id: i64 = r.try_get(2)?;
            snap.slots.insert(
                (relay as u32, r.try_get(1)?),
                StoredSlot {
                    id,
                    hash: r.try_get(3)?,
                    prev_hash: r.try_get(4)?,
                    linked: r.try_get(5)?,
                    log_index: StoredSlot::log_index_of(id, r.try_get(6)?)?,
                },
            );
        }
        Ok(snap)
    }

    /// Inserts the new ones of `meters`, locks them all (ascending), and reads
    /// their rows and the coverage of `pairs`.
    fn lock_meters(
        &mut self,
        (meters, pairs): (BTreeSet<u32>, BTreeSet<(u32, u32)>),
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if meters.is_empty() {
            return Ok(());
        }
        let (tx, stmts) = (self.tx, self.st);
        let ids: Vec<i64> = meters.iter().map(|&m| i64::from(m)).collect();
        // Lock the known meters (the common case: all of them), then insert the
        // new ones and lock those too (a concurrent transaction may have just
        // inserted some: the insert waits for it, the second lock reads them).
        let mut rows = block_on(tx.query(st(stmts, LOCK_METERS)?, &[&ids]))?;
        let known: BTreeSet<i64> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let missing: Vec<i64> = ids.iter().copied().filter(|m| !known.contains(m)).collect();
        let mut inserted = BTreeSet::new();
        if !missing.is_empty() {
            for r in block_on(tx.query(st(stmts, INSERT_METERS)?, &[&missing, &(now_ms as i64)]))? {
                inserted.insert(r.try_get::<_, i64>(0)?);
            }
            rows.extend(block_on(tx.query(st(stmts, LOCK_METERS)?, &[&missing]))?);
        }
        for r in &rows {
            let m: i64 = r.try_get(0)?;
            if inserted.contains(&m) {
                self.meters.insert(m as u32, None);
                continue;
            }
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
                Some(MeterRow {
                    first_seen_ms: u64_of(r.try_get(13)?),
                    readings: u64_of(readings),
                    last: last.transpose().map_err(StoreError::from)?,
                    silent: r.try_get(12)?,
                }),
            );
        }
        let (ms, es): (Vec<i64>, Vec<i64>) = pairs
            .iter()
            .map(|&(m, e)| (i64::from(m), i64::from(e)))
            .unzip();
        let conv = |v: i64| {
            u32::try_from(v).map_err(|_| StoreError::Corrupt {
                table: "coverage",
                detail: format!("value {v}"),
            })
        };
        for &pair in &pairs {
            self.coverage.insert(pair, Vec::new());
        }
        for r in block_on(tx.query(st(stmts, LOAD_COVERAGE)?, &[&ms, &es]))? {
            let (m, e, a, b): (i64, i64, i64, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            self.coverage
                .entry((conv(m)?, conv(e)?))
                .or_default()
                .push((conv(a)?, conv(b)?));
        }
        Ok(())
    }
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
    let mut snap = Snap::lock_relays(&tx, &stmts, items)?;
    let mut planner = Planner::new(rules, limits, now_ms);
    planner.chains(items, &mut snap)?;
    snap.lock_meters(planner.readings_to_load(), now_ms)?;
    let mut plan = planner.readings(&mut snap, &mut Working::default())?;
    let w = Write {
        tx: &tx,
        st: &stmts,
        now: now_ms as i64,
    };
    let quarantine_ids = w.quarantine(&plan)?;
    let block_ids = w.allocate_ids(plan.blocks.len())?;
    let max_span = w.blocks(&plan, &block_ids)?;
    w.rest(&plan, shard, max_span)?;
    let result = plan.result(&block_ids, &quarantine_ids, read_totals(&tx)?)?;
    block_on(tx.commit())?;
    Ok(result)
}

/// Writes a [`Plan`] inside its transaction.
struct Write<'t> {
    tx: &'t Transaction<'t>,
    st: &'t HashMap<&'static str, Statement>,
    now: i64,
}

impl Write<'_> {
    /// The refusals kept; returns their row ids.
    fn quarantine(&self, plan: &Plan<'_>) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(plan.quarantine.len());
        for k in &plan.quarantine {
            let q = &k.item;
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
                    &k.raw(),
                    &(q.raw.len() as i64),
                    &(k.kept as i64),
                    &quota_bucket(q),
                ],
            ))?;
            ids.push(row.try_get(0)?);
        }
        Ok(ids)
    }

    /// Takes `n` block ids from the sequence.
    fn allocate_ids(&self, n: usize) -> Result<Vec<i64>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let rows = block_on(self.tx.query(st(self.st, NEXT_IDS)?, &[&(n as i64)]))?;
        if rows.len() != n {
            return Err(StoreError::Corrupt {
                table: "block_ids",
                detail: format!("asked for {n} ids, got {}", rows.len()),
            });
        }
        let mut ids = Vec::with_capacity(n);
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            if id <= 0 || id > i64::MAX >> READING_ID_SHIFT {
                return Err(StoreError::Corrupt {
                    table: "block_ids",
                    detail: format!("block id {id} out of range"),
                });
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// COPY of the new blocks, their readings (ids from `block_id << READING_ID_SHIFT`) and runs;
    /// returns the largest time span of a run.
    fn blocks(&self, plan: &Plan<'_>, ids: &[i64]) -> Result<i64, StoreError> {
        if plan.blocks.is_empty() {
            return Ok(0);
        }
        let size: usize = plan.blocks.iter().map(|b| b.block.raw.len() + 300).sum();
        let mut blocks = CopyBuf::with_capacity(size);
        let mut readings =
            CopyBuf::with_capacity(plan.blocks.iter().map(|b| b.fresh.len() * 110).sum());
        let mut runs = CopyBuf::with_capacity(0);
        let mut max_span = 0;
        let too_big = |_| StoreError::Corrupt {
            table: "blocks",
            detail: "block larger than 2 GiB".into(),
        };
        for (n, (nb, &id)) in plan.blocks.iter().zip(ids).enumerate() {
            let first_id = id << READING_ID_SHIFT;
            for (n, row) in nb.fresh.iter().enumerate() {
                readings.reading(first_id + n as i64, id, row);
            }
            for r in nb.runs(id, first_id) {
                runs.row(6);
                runs.i64(id);
                runs.i64(r.meter_id);
                runs.i64(r.first_id);
                runs.i64(r.last_id - r.first_id + 1);
                runs.i64(r.min_ts);
                runs.i64(r.max_ts);
                max_span = max_span.max(r.max_ts - r.min_ts);
            }
            let span = nb.span();
            let (b, h) = (nb.block, &nb.block.header);
            blocks.row(19);
            blocks.i64(id);
            blocks.i64(i64::from(h.relay_id));
            blocks.i64(h.height as i64);
            blocks.bytes(&b.hash).map_err(too_big)?;
            blocks.bytes(&h.prev_hash).map_err(too_big)?;
            blocks.bytes(&h.merkle_root).map_err(too_big)?;
            blocks.i32(i32::from(h.difficulty));
            blocks.i64(i64::from(h.leaf_count));
            blocks.i64(h.time_ms as i64);
            blocks.i64(h.nonce as i64);
            blocks.bytes(&b.raw).map_err(too_big)?;
            blocks.bool(nb.linked);
            blocks.i64(nb.arrival.received_ms as i64);
            blocks.i64(first_id);
            blocks.i64(nb.fresh.len() as i64);
            blocks.i64(nb.duplicates as i64);
            blocks.opt_i64(span.map(|s| s.0));
            blocks.opt_i64(span.map(|s| s.1));
            blocks.i64(plan.log.index_of(n));
        }
        block_on(copy_in(self.tx, st(self.st, COPY_BLOCKS)?, blocks.finish()))?;
        write_log_hashes(self.tx, self.st, &plan.log)?;
        if readings.rows() > 0 {
            block_on(copy_in(
                self.tx,
                st(self.st, COPY_READINGS)?,
                readings.finish(),
            ))?;
        }
        if runs.rows() > 0 {
            block_on(copy_in(self.tx, st(self.st, COPY_RUNS)?, runs.finish()))?;
        }
        Ok(max_span)
    }

    /// Writes links, gaps, coverage, meters, relays, then the rows every server
    /// shares in the module docs' lock order: alerts, the `meta` span, counters.
    fn rest(&self, plan: &Plan<'_>, shard: i16, max_span: i64) -> Result<(), StoreError> {
        let (tx, now) = (self.tx, self.now);
        if !plan.link_children.is_empty() {
            block_on(tx.execute(st(self.st, LINK_CHILDREN)?, &[&plan.link_children]))?;
        }
        if !plan.gaps_opened.is_empty() {
            let mut r = Vec::new();
            let mut h = Vec::new();
            let mut closed = Vec::new();
            for (&(relay, height), &c) in &plan.gaps_opened {
                r.push(i64::from(relay));
                h.push(height);
                closed.push(c);
            }
            block_on(tx.execute(st(self.st, OPEN_GAPS)?, &[&r, &h, &now, &closed]))?;
        }
        if !plan.gaps_closed.is_empty() {
            let (r, h): (Vec<i64>, Vec<i64>) = plan
                .gaps_closed
                .iter()
                .map(|&(r, h)| (i64::from(r), h))
                .unzip();
            block_on(tx.execute(st(self.st, CLOSE_GAPS)?, &[&r, &h, &now]))?;
        }
        self.coverage(plan)?;
        self.meters(plan)?;
        let book = &plan.book;
        if !book.relays.is_empty() {
            let mut ids = Vec::new();
            let (mut blocks, mut readings, mut leaves) = (Vec::new(), Vec::new(), Vec::new());
            for (&r, d) in &book.relays {
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
        if !book.carried.is_empty() {
            let (mut relays, mut meters) = (Vec::new(), Vec::new());
            let (mut first, mut duplicate, mut key_ids) = (Vec::new(), Vec::new(), Vec::new());
            for (&(r, m), d) in &book.carried {
                relays.push(i64::from(r));
                meters.push(i64::from(m));
                first.push(d.first);
                duplicate.push(d.duplicate);
                key_ids.push(i64::from(d.key_id));
            }
            block_on(tx.execute(
                st(self.st, UPSERT_CARRIED)?,
                &[&relays, &meters, &first, &duplicate, &now, &key_ids],
            ))?;
        }
        if !book.alerts.is_empty() {
            let mut kinds = Vec::new();
            let mut subjects = Vec::new();
            let (mut meters, mut relays, mut counts) = (Vec::new(), Vec::new(), Vec::new());
            let (mut messages, mut cleared) = (Vec::new(), Vec::new());
            for ((kind, subject), a) in &book.alerts {
                kinds.push(kind.as_str());
                subjects.push(subject.as_str());
                meters.push(a.meter_id.map(i64::from));
                relays.push(a.relay_id.map(i64::from));
                counts.push(a.count as i64);
                messages.push(a.message.as_str());
                cleared.push(a.cleared.then_some(now));
            }
            block_on(tx.execute(
                st(self.st, UPSERT_ALERTS)?,
                &[
                    &kinds, &subjects, &meters, &relays, &counts, &messages, &cleared, &now,
                ],
            ))?;
        }
        if !book.clears.is_empty() {
            let (k, s): (Vec<&str>, Vec<&str>) = book
                .clears
                .iter()
                .map(|(k, s)| (k.as_str(), s.as_str()))
                .unzip();
            block_on(tx.execute(st(self.st, CLEAR_ALERTS)?, &[&k, &s, &now]))?;
        }
        if max_span > 0 {
            block_on(tx.execute(st(self.st, GROW_SPAN)?, &[&max_span]))?;
        }
        if !book.counters.is_empty() {
            let (names, values): (Vec<&str>, Vec<i64>) =
                book.counters.iter().map(|(n, &v)| (n.as_str(), v)).unzip();
            block_on(tx.execute(st(self.st, ADD_COUNTERS)?, &[&names, &values, &shard]))?;
        }
        Ok(())
    }

    fn coverage(&self, plan: &Plan<'_>) -> Result<(), StoreError> {
        let (mut del, mut upd, mut ins) = (
            [Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
            [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        );
        for &((m, e), change) in &plan.coverage {
            let (m, e) = (i64::from(m), i64::from(e));
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
        // Deletions first: an insert may reuse a deleted row's first_seq.
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

    fn meters(&self, plan: &Plan<'_>) -> Result<(), StoreError> {
        if plan.meters.is_empty() {
            return Ok(());
        }
        let mut cols: [Vec<i64>; 12] = std::array::from_fn(|_| Vec::new());
        let mut silent = Vec::new();
        for (m, row) in &plan.meters {
            let (e, q, r) = row.last.unwrap_or((0, 0, Reading::default()));
            let v = [
                i64::from(*m),
                row.readings as i64,
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
            ];
            for (c, x) in cols.iter_mut().zip(v) {
                c.push(x);
            }
            silent.push(row.silent);
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
                &self.now,
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

/// The log's tail alone, for the backfill.
struct LogTail<'t> {
    tx: &'t Transaction<'t>,
    st: &'t HashMap<&'static str, Statement>,
}

impl LogSnapshot for LogTail<'_> {
    fn log_size(&mut self) -> Result<u64, StoreError> {
        log_size_locked(self.tx, self.st)
    }

    fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
        log_hashes_in(self.tx, self.st, indexes)
    }
}

const UNLOGGED_BLOCKS: &str = "SELECT id, relay_id, height, hash, merkle_root FROM blocks \
     WHERE log_index IS NULL ORDER BY id LIMIT 10000";
const SET_LOG_INDEX: &str =
    "UPDATE blocks b SET log_index = u.l FROM unnest($1::int8[], $2::int8[]) AS u(i, l) WHERE b.id = u.i";

/// Appends the blocks stored before schema version 4 to the log, in the
/// order they were stored (by id), a slice per transaction under the log's
/// lock (servers starting together take turns); a no-op once done.
pub(super) fn backfill_log(conn: &mut PgConn) -> Result<u64, StoreError> {
    let mut stmts = HashMap::new();
    for sql in [
        LOCK_LOG,
        LOG_SIZE,
        LOG_HASHES,
        INSERT_LOG_HASHES,
        UNLOGGED_BLOCKS,
        SET_LOG_INDEX,
    ] {
        stmts.insert(sql, conn.prepare(sql)?);
    }
    let mut total = 0;
    loop {
        let tx = block_on(conn.client().transaction())?;
        let mut tail = LogTail {
            tx: &tx,
            st: &stmts,
        };
        // The lock first: another server may be appending the same blocks.
        let size = tail.log_size()?;
        let rows = block_on(tx.query(st(&stmts, UNLOGGED_BLOCKS)?, &[]))?;
        if rows.is_empty() {
            return Ok(total);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(r.try_get::<_, i64>(0)?);
            entries.push(LogLeafRepr {
                relay_id: crate::shared::u32_id("blocks", r.try_get(1)?)?,
                height: u64_of(r.try_get(2)?),
                block_hash: hash_of("blocks", &r.try_get::<_, Vec<u8>>(3)?)?,
                merkle_root: hash_of("blocks", &r.try_get::<_, Vec<u8>>(4)?)?,
            });
        }
        let log = crate::log::append(&mut tail, &entries)?;
        debug_assert_eq!(log.first, size);
        write_log_hashes(&tx, &stmts, &log)?;
        let indexes: Vec<i64> = (0..ids.len()).map(|n| log.index_of(n)).collect();
        block_on(tx.execute(st(&stmts, SET_LOG_INDEX)?, &[&ids, &indexes]))?;
        block_on(tx.commit())?;
        total += ids.len() as u64;
    }
}
