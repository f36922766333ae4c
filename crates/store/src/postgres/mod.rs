//! The PostgreSQL backend (`postgres://…`), for several grid servers sharing
//! one database. Migrations from `migrations/postgres/` are applied at start-up
//! (table `gridpow_schema`, serialised by an advisory lock).
//!
//! # Concurrency: the database is the arbiter
//!
//! Each [`IngestStore::commit`](crate::IngestStore::commit) is one `READ COMMITTED` transaction that takes its
//! locks in one global order, reads what it decides on only after holding
//! them, and keeps nothing between transactions (only prepared statements):
//!
//! 1. **Relays**: `pg_advisory_xact_lock(class, relay_id)` for every relay in
//!    the batch, ascending. The chain slots the batch touches (heights h−1,
//!    h, h+1 of each block) are read after that, so two servers handed
//!    blocks of one relay by a shared subscription see each other's committed
//!    blocks: a block delivered to both is stored once (`AlreadyStored`), a
//!    gap one server opened is closed by whichever stores the parent, and a
//!    fork is only reported when a different block really holds the place.
//!    `UNIQUE (relay_id, height)` and `UNIQUE (hash)` stay the last word.
//! 2. **Meters**: the batch's meters are inserted if new (`ON CONFLICT DO
//!    NOTHING`, ascending) and their rows locked `FOR UPDATE`, ascending.
//!    Row locks rather than advisory locks: a batch can name tens of
//!    thousands of meters, and advisory locks live in the shared lock table
//!    (`max_locks_per_transaction` × connections, 6 400 by default), row locks
//!    in the rows themselves. The meter row is rewritten at the end anyway.
//!    The coverage intervals of those meters are read after the lock, so a
//!    reading carried by two frames (two relays, or a meter's retry) is stored
//!    once whichever server sees it first.
//! 3. **The transparency log**, when the batch stores a block: one advisory
//!    lock for the log's tail, then its size is read. Every block-storing
//!    commit holds it to its end, so entries are appended in commit order
//!    without gaps; it is the last lock before the shared rows, so a commit
//!    waiting for it holds nothing another commit that has it still needs.
//! 4. Writes, then rows shared by everybody in a fixed order: alerts (by kind
//!    and subject), the `meta` row (only when it grows), the counters (each
//!    connection adds to its own shard, summed on read).
//!
//! The silent-meter sweep locks meter rows with `SKIP LOCKED` (a meter a
//! commit holds is being heard from), so it never waits. Serialization
//! failures, deadlocks and unique violations roll back and retry the whole
//! transaction (a few times, with jitter); a dropped connection is re-opened
//! on the next call.
//!
//! # Ingest: binary COPY
//!
//! Readings, blocks and runs go in with `COPY … FROM STDIN (FORMAT binary)`,
//! one per table per transaction, encoded straight into one buffer
//! ([`copy::CopyBuf`]). No per-reading unique index: de-duplication is the
//! coverage table, as in SQLite. Reading ids need no shared counter either:
//! block `b`'s new readings are `b·2¹⁹ …` (a block carries fewer than 2¹⁹), so
//! every reading-id B-tree insert is at the right edge of its block's range.
//!
//! # Time-range queries at 100 M rows: the index design
//!
//! A B-tree on `readings (meter_id, ts_ms)` answers a meter's time range
//! directly but costs every reading a random index insert (one leaf page per
//! meter dirtied in every transaction): measured here, binary COPY drops
//! from ~1.8 M to ~0.36 M rows/s with `UNIQUE (meter, seq)`. BRIN on `ts_ms`
//! alone is nearly free to maintain but finds only *when*, not *whose*: a
//! meter's hour means reading every meter's hour. Instead the SQLite
//! design's per-block directory becomes a table, `runs`: one row per (block,
//! meter) with the contiguous id range of that meter's new readings in the
//! block and their time span, indexed by `(meter_id, max_ts, first_id)` (a
//! BRIN index on `block_id` serves the ledger check). A query is a range
//! scan of the meter's runs newest first (bounded by `meta.max_run_span_ms`,
//! the largest span of any run, so a run that starts before `to` is never
//! missed), then one primary-key lookup of those runs' reading ids per page
//! of runs (`id = ANY(…)`, which the planner estimates by the array's length;
//! a join on id ranges it cannot estimate, and it then scans the table). Its
//! cost grows with the meter's readings in the range, not with the table.
//! Measured here on a synthetic 30 M-reading ledger (5 000 meters, 5 000
//! blocks of 6 000 readings, runs of 6; readings 3.3 GB + 0.6 GB key, runs
//! 0.6 GB), warm cache, median of 5 (`examples/query_time.rs`): a meter's
//! last hour (361 readings) 2.1 ms, its last 16 h (6 000 readings, 1 000
//! runs) 22 ms, its newest 100 readings 1.8 ms; at 100 M rows the B-trees
//! gain at most one level. The index costs one entry per meter per block (a
//! meter's frames in one block: 6 or more readings), not one per reading.
//! TimescaleDB is not
//! needed for this; a time-partitioned `readings` (by id range, which follows
//! time) would only ease dropping old data.

mod conn;
pub(crate) mod copy;
mod writer;

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

pub use conn::{ConnectError, PgConn};

use super::shared::{self, typed_reading, u64_of, RelayCols, RelayCoverage, Silent, READING_COLS};
use super::{
    AuditStore, Cell, CommitResult, CoverageRow, DbError, DbTotals, ForkEvidence, Ingest,
    IngestStore, LedgerBlock, LedgerReading, NewAlert, QueryStore, RaisedAlert, RelaySummary,
    Remedy, Run, StoreError, StoreLimits, StoreOptions, StoredReading,
};
use crate::plausibility::{AlertKind, Rules};
use crate::verified::ReadingRow;
use conn::block_on;
use copy::{CopyBuf, COPY_READINGS};

/// Schema migrations, applied in order; `gridpow_schema` lists those applied.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_bounded_quarantine.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_fleet_views.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_transparency_log.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_relay_coverage.sql"),
    ),
];

/// Advisory lock classes (the first key of the two-key form): "gpw" and a number.
const LOCK_MIGRATE: i32 = 0x6770_7701;
pub(crate) const LOCK_RELAY: i32 = 0x6770_7702;
/// The transparency log's tail (one lock, second key 0).
pub(crate) const LOCK_LOG_CLASS: i32 = 0x6770_7703;

/// Bits of a reading id below the block id.
pub const READING_ID_SHIFT: u32 = 19;

/// Transactions retried after a serialization failure, deadlock or unique violation.
const MAX_ATTEMPTS: u32 = 8;

/// A PostgreSQL database holding the ledger (see the module docs).
pub struct PgStore {
    url: String,
    reader: bool,
    conn: Option<PgConn>,
    rules: Rules,
    limits: StoreLimits,
    /// This instance's row of each counter.
    shard: i16,
}

/// A counter shard for a new instance: different ones for concurrent writers, most likely.
fn pick_shard() -> i16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    ((std::process::id() ^ nanos.rotate_left(7)) % 16) as i16
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &redact(&self.url))
            .field("reader", &self.reader)
            .finish()
    }
}

/// `url` with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some(p) => p,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn connect(url: &str) -> Result<PgConn, StoreError> {
    PgConn::connect(url).map_err(|source| {
        let server_said_no =
            matches!(&source, ConnectError::Connect(e) if e.as_db_error().is_some());
        let transient = matches!(source, ConnectError::Connect(_) | ConnectError::Thread(_));
        let db = DbError::new("PostgreSQL", format!("connecting: {source}"), source);
        if transient && !server_said_no {
            StoreError::Unavailable(db)
        } else {
            // A bad URL, TLS setting, password or database name: the operator's to fix.
            StoreError::Open {
                path: redact(url),
                source: db,
            }
        }
    })
}

/// `e` with its causes (the server's message, SQLSTATE and detail), which its
/// own `Display` leaves to `source()`.
pub fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str(&format!("; {d}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

impl From<tokio_postgres::Error> for StoreError {
    /// Sorts PostgreSQL's errors by remedy: conflicts between concurrent
    /// transactions and lost connections are worth retrying; the server
    /// refusing a statement for lack of a table, a column or a valid value
    /// means the schema or rows are not what this build wrote; resource and
    /// permission refusals need the operator.
    fn from(e: tokio_postgres::Error) -> StoreError {
        let Some(code) = e.code().cloned() else {
            // No SQLSTATE: the connection, its IO, or decoding a value.
            let content = std::error::Error::source(&e)
                .is_some_and(|c| c.to_string().contains("error deserializing"))
                || e.to_string().contains("error deserializing");
            let db = DbError::new("PostgreSQL", detail(&e), e);
            return if content {
                StoreError::Inconsistent(db)
            } else {
                StoreError::Unavailable(db)
            };
        };
        let db = DbError::new("PostgreSQL", detail(&e), e);
        let class = &code.code()[..2];
        if code == SqlState::T_R_SERIALIZATION_FAILURE
            || code == SqlState::T_R_DEADLOCK_DETECTED
            || code == SqlState::UNIQUE_VIOLATION
            || code == SqlState::LOCK_NOT_AVAILABLE
            // Connection exceptions, the server shutting down or out of connections.
            || class == "08"
            || class == "57"
            || code == SqlState::TOO_MANY_CONNECTIONS
        {
            StoreError::Unavailable(db)
        } else if class == "53"
            || class == "42" && code == SqlState::INSUFFICIENT_PRIVILEGE
            || code == SqlState::READ_ONLY_SQL_TRANSACTION
        {
            StoreError::Refused(db)
        } else {
            StoreError::Inconsistent(db)
        }
    }
}

/// A short pause before attempt `attempt` (1-based), with jitter from the clock.
fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base = 5u64 << attempt.min(6);
    Duration::from_millis(base + u64::from(nanos) % base)
}

impl PgStore {
    /// Connects to `url` for writing and applies migrations.
    pub fn open(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let mut conn = connect(url)?;
        migrate(&mut conn)?;
        let appended = writer::backfill_log(&mut conn)?;
        if appended > 0 {
            tracing::info!(
                blocks = appended,
                "Blocks stored before the transparency log appended to it."
            );
        }
        Ok(PgStore {
            url: url.to_string(),
            reader: false,
            conn: Some(conn),
            rules: options.rules,
            limits: options.limits,
            shard: pick_shard(),
        })
    }

    /// Connects to `url` for queries only (the schema must exist; writes fail).
    pub fn open_reader(url: &str) -> Result<PgStore, StoreError> {
        let conn = open_reader_conn(url)?;
        Ok(PgStore {
            url: url.to_string(),
            reader: true,
            conn: Some(conn),
            rules: Rules::default(),
            limits: StoreLimits::default(),
            shard: pick_shard(),
        })
    }

    /// The connection, re-opened if it was lost.
    pub fn conn(&mut self) -> Result<&mut PgConn, StoreError> {
        if self.conn.as_ref().is_none_or(PgConn::is_closed) {
            self.conn = None;
            let conn = if self.reader {
                open_reader_conn(&self.url)?
            } else {
                let mut c = connect(&self.url)?;
                migrate(&mut c)?;
                c
            };
            tracing::info!(db = %redact(&self.url), "PostgreSQL connection re-opened.");
            self.conn = Some(conn);
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(StoreError::Corrupt {
                table: "connection",
                detail: "no connection".into(),
            }),
        }
    }

    /// Benchmark baseline: binary COPY of the readings of `blocks` (block id,
    /// rows) into the readings table, with the ids [`IngestStore::commit`](crate::IngestStore::commit) gives them
    /// (`block_id · 2¹⁹ + k`) and the very same encoding, in one transaction, and
    /// nothing else. Returns the rows copied.
    pub fn copy_readings_raw(
        &mut self,
        blocks: &[(i64, &[ReadingRow])],
    ) -> Result<usize, StoreError> {
        let total: usize = blocks.iter().map(|b| b.1.len()).sum();
        let mut buf = CopyBuf::with_capacity(total * 110);
        for &(block_id, rows) in blocks {
            for (k, row) in rows.iter().enumerate() {
                buf.reading((block_id << READING_ID_SHIFT) + k as i64, block_id, row);
            }
        }
        let bytes = buf.finish();
        let conn = self.conn()?;
        let statement = conn.prepare(COPY_READINGS)?;
        let tx = block_on(conn.client().transaction())?;
        let n = block_on(writer::copy_in(&tx, &statement, bytes))?;
        block_on(tx.commit())?;
        Ok(n as usize)
    }
}

fn open_reader_conn(url: &str) -> Result<PgConn, StoreError> {
    let mut conn = connect(url)?;
    conn.batch_execute("SET default_transaction_read_only = on")?;
    let exists: bool = conn
        .query("SELECT to_regclass('gridpow_schema') IS NOT NULL", &[])?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(false);
    if !exists {
        return Err(StoreError::Corrupt {
            table: "schema",
            detail: format!("{} is not a gridpow database (no schema)", redact(url)),
        });
    }
    let version: i32 = conn
        .query("SELECT COALESCE(MAX(version), 0) FROM gridpow_schema", &[])?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version as u32,
            known: known as u32,
        });
    }
    Ok(conn)
}

fn migrate(conn: &mut PgConn) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let client = conn.client();
    let tx = block_on(client.transaction())?;
    // Servers starting together migrate one after the other.
    block_on(tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATE]))?;
    block_on(tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS gridpow_schema (version integer PRIMARY KEY, applied_ms bigint NOT NULL)",
    ))?;
    let current: i32 =
        block_on(tx.query_one("SELECT COALESCE(MAX(version), 0) FROM gridpow_schema", &[]))?.get(0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current as u32,
            known: known as u32,
        });
    }
    for &(version, sql) in MIGRATIONS {
        if current >= version {
            continue;
        }
        let fail = |source: tokio_postgres::Error| StoreError::Migration {
            version: version as u32,
            path: "PostgreSQL".into(),
            source: DbError::new("PostgreSQL", detail(&source), source),
        };
        block_on(tx.batch_execute(sql)).map_err(fail)?;
        block_on(tx.execute(
            "INSERT INTO gridpow_schema (version, applied_ms) VALUES ($1, $2)",
            &[&version, &(gridpow_common::wall_ms() as i64)],
        ))
        .map_err(fail)?;
        tracing::info!(version, "PostgreSQL database migrated.");
    }
    block_on(tx.commit())?;
    Ok(())
}

/// A column as a [`Cell`], by its type.
fn cell(row: &Row, idx: usize) -> Result<Cell, tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let ty = row.columns().get(idx).map(|c| c.type_().clone());
    Ok(match ty {
        Some(Type::INT8) => row
            .try_get::<_, Option<i64>>(idx)?
            .map_or(Cell::Null, Cell::Int),
        Some(Type::INT4) => row
            .try_get::<_, Option<i32>>(idx)?
            .map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        Some(Type::INT2) => row
            .try_get::<_, Option<i16>>(idx)?
            .map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        Some(Type::BOOL) => row
            .try_get::<_, Option<bool>>(idx)?
            .map_or(Cell::Null, |v| Cell::Int(i64::from(v))),
        Some(Type::BYTEA) => row
            .try_get::<_, Option<Vec<u8>>>(idx)?
            .map_or(Cell::Null, Cell::Bytes),
        Some(Type::TEXT | Type::VARCHAR) => row
            .try_get::<_, Option<String>>(idx)?
            .map_or(Cell::Null, Cell::Text),
        other => Cell::Other(format!("{other:?}")),
    })
}

/// An integer column of any width as i64.
fn int(row: &Row, idx: usize) -> Result<i64, StoreError> {
    match cell(row, idx)? {
        Cell::Int(v) => Ok(v),
        other => Err(StoreError::Corrupt {
            table: "row",
            detail: format!("column {idx} is {other:?}, not an integer"),
        }),
    }
}

fn reading_ints(row: &Row) -> Result<[i64; 14], StoreError> {
    let mut c = [0i64; 14];
    for (i, v) in c.iter_mut().enumerate() {
        *v = int(row, i)?;
    }
    Ok(c)
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Runs `f` in a read-only transaction (one consistent snapshot across its statements).
fn in_snapshot<T>(
    conn: &mut PgConn,
    f: impl FnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = block_on(
        conn.client()
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start(),
    )?;
    let out = f(&tx)?;
    block_on(tx.commit())?;
    Ok(out)
}

fn q(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    Ok(block_on(tx.query(sql, params))?)
}

fn read_totals(tx: &tokio_postgres::Transaction<'_>) -> Result<DbTotals, StoreError> {
    let row = block_on(tx.query_one(
        "SELECT COALESCE(SUM(blocks), 0)::int8, COALESCE(SUM(readings), 0)::int8, COUNT(*)::int8, \
         (SELECT COUNT(*) FROM gaps WHERE closed_ms IS NULL)::int8, \
         (SELECT COUNT(*) FROM alerts WHERE cleared_ms IS NULL)::int8 FROM relays",
        &[],
    ))?;
    let mut t = DbTotals {
        blocks_verified: u64_of(row.get(0)),
        readings_stored: u64_of(row.get(1)),
        relays: u64_of(row.get(2)),
        gaps_open: u64_of(row.get(3)),
        alerts_active: u64_of(row.get(4)),
        ..DbTotals::default()
    };
    for r in q(
        tx,
        "SELECT name, SUM(value)::int8 FROM counters GROUP BY name",
        &[],
    )? {
        let (name, v): (String, i64) = (r.get(0), r.get(1));
        t.set_counter(&name, u64_of(v));
    }
    Ok(t)
}

/// Raises an alert once more (or first): kind, subject, meter, relay, now, message.
const RAISE_ALERT: &str =
    "INSERT INTO alerts (kind, subject, meter_id, relay_id, first_ms, last_ms, count, message, cleared_ms) \
     VALUES ($1, $2, $3, $4, $5, $5, 1, $6, NULL) ON CONFLICT (kind, subject) DO UPDATE SET \
     last_ms = excluded.last_ms, count = alerts.count + 1, message = excluded.message, cleared_ms = NULL";

impl IngestStore for PgStore {
    fn prune_quarantine(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = to_i64(now_ms.saturating_sub(self.limits.quarantine_retention_ms));
        Ok(self.conn()?.execute(
            "DELETE FROM quarantine WHERE received_ms < $1 AND kind <> 'fork'",
            &[&cutoff],
        )?)
    }

    fn commit(&mut self, items: &[Ingest], now_ms: u64) -> Result<CommitResult, StoreError> {
        let mut attempt = 1;
        loop {
            self.conn()?;
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            match writer::commit(conn, &self.rules, &self.limits, self.shard, items, now_ms) {
                Err(e) if attempt < MAX_ATTEMPTS && e.remedy() == Remedy::Retry => {
                    tracing::debug!(error = %e, attempt, "Transaction conflicted; retrying.");
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn raise_alert(&mut self, a: &NewAlert, now_ms: u64) -> Result<RaisedAlert, StoreError> {
        let now = to_i64(now_ms);
        let (meter, relay) = (a.meter_id.map(i64::from), a.relay_id.map(i64::from));
        self.conn()?.execute(
            RAISE_ALERT,
            &[
                &a.kind.as_str(),
                &a.subject,
                &meter,
                &relay,
                &now,
                &a.message,
            ],
        )?;
        Ok(RaisedAlert {
            kind: a.kind,
            subject: a.subject.clone(),
            count: 1,
            message: a.message.clone(),
        })
    }

    fn sweep_silent(
        &mut self,
        now_ms: u64,
        silent_after_ms: u64,
        started_ms: u64,
    ) -> Result<Vec<RaisedAlert>, StoreError> {
        let Some(cutoff) = shared::silent_cutoff(now_ms, silent_after_ms, started_ms) else {
            return Ok(Vec::new());
        };
        let cutoff = to_i64(cutoff);
        let now = to_i64(now_ms);
        let client = self.conn()?.client();
        let tx = block_on(client.transaction())?;
        // SKIP LOCKED: a meter a commit holds is being heard from right now.
        let quiet = block_on(tx.query(
            "UPDATE meters SET silent = true WHERE meter_id IN (SELECT meter_id FROM meters \
             WHERE NOT silent AND last_received_ms < $1 ORDER BY meter_id FOR UPDATE SKIP LOCKED) \
             RETURNING meter_id, last_received_ms",
            &[&cutoff],
        ))?;
        let mut quiet: Vec<(i64, i64)> = quiet.iter().map(|r| (r.get(0), r.get(1))).collect();
        quiet.sort_unstable();
        let mut raised = Vec::new();
        for (m, last) in quiet {
            let silent = Silent::new(m as u32, now, last);
            block_on(tx.execute(
                RAISE_ALERT,
                &[
                    &AlertKind::Silent.as_str(),
                    &silent.alert.subject,
                    &m,
                    &None::<i64>,
                    &now,
                    &silent.alert.message,
                ],
            ))?;
            raised.push(silent.logged());
        }
        block_on(tx.commit())?;
        Ok(raised)
    }
}

impl QueryStore for PgStore {
    fn totals(&mut self) -> Result<DbTotals, StoreError> {
        in_snapshot(self.conn()?, read_totals)
    }

    fn meter_readings(
        &mut self,
        meter_id: u32,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let (from, to) = (to_i64(from_ms), to_i64(to_ms));
        let meter = i64::from(meter_id);
        let page = (limit / 2).clamp(16, 2000) as i64;
        in_snapshot(self.conn()?, |tx| {
            let max_span: i64 = block_on(tx.query_one(
                "SELECT COALESCE(MAX(value), 0) FROM meta WHERE name = 'max_run_span_ms'",
                &[],
            ))?
            .get(0);
            // A run whose newest reading is later than to + max_span has none at or before `to`.
            let upper = to.saturating_add(max_span.max(0));
            let mut out: Vec<StoredReading> = Vec::new();
            let mut threshold: Option<i64> = None;
            let mut cursor: Option<(i64, i64)> = None;
            'pages: loop {
                let runs = match cursor {
                    None => q(
                        tx,
                        "SELECT first_id, count, max_ts FROM runs WHERE meter_id = $1 AND max_ts BETWEEN $2 AND $3 \
                         AND min_ts <= $4 ORDER BY max_ts DESC, first_id DESC LIMIT $5",
                        &[&meter, &from, &upper, &to, &page],
                    )?,
                    Some((ts, id)) => q(
                        tx,
                        "SELECT first_id, count, max_ts FROM runs WHERE meter_id = $1 AND max_ts BETWEEN $2 AND $3 \
                         AND min_ts <= $4 AND (max_ts, first_id) < ($6, $7) ORDER BY max_ts DESC, first_id DESC LIMIT $5",
                        &[&meter, &from, &upper, &to, &page, &ts, &id],
                    )?,
                };
                let Some(last) = runs.last() else { break };
                if let Some(bad) = runs
                    .iter()
                    .find(|r| !(1..=1i64 << READING_ID_SHIFT).contains(&r.get::<_, i64>(1)))
                {
                    return Err(StoreError::Corrupt {
                        table: "runs",
                        detail: format!(
                            "run of meter {meter_id} from id {} has count {}",
                            bad.get::<_, i64>(0),
                            bad.get::<_, i64>(1)
                        ),
                    });
                }
                cursor = Some((last.get(2), last.get(0)));
                let firsts: Vec<i64> = runs.iter().map(|r| r.get(0)).collect();
                let lasts: Vec<i64> = runs
                    .iter()
                    .map(|r| r.get::<_, i64>(0).saturating_add(r.get::<_, i64>(1) - 1))
                    .collect();
                // Ids, not ranges: the planner estimates `id = ANY(array)` by its length
                // and takes the primary key; a join on ranges it cannot estimate.
                let ids: Vec<i64> = firsts
                    .iter()
                    .zip(&lasts)
                    .flat_map(|(&a, &b)| a..=b)
                    .collect();
                let found = q(
                    tx,
                    &format!(
                        "SELECT {READING_COLS} FROM readings WHERE id = ANY($1) AND ts_ms BETWEEN $2 AND $3"
                    ),
                    &[&ids, &from, &to],
                )?;
                let mut by_id = std::collections::BTreeMap::new();
                for r in &found {
                    let s = typed_reading("readings", &reading_ints(r)?)?;
                    by_id.insert(s.id, s);
                }
                let n_runs = runs.len();
                for (i, run) in runs.iter().enumerate() {
                    let max_ts: i64 = run.get(2);
                    if threshold.is_some_and(|t| max_ts < t) {
                        break 'pages;
                    }
                    out.extend(by_id.range(firsts[i]..=lasts[i]).map(|(_, s)| *s));
                    shared::keep_newest(&mut out, limit, &mut threshold);
                }
                if (n_runs as i64) < page {
                    break;
                }
            }
            shared::sort_by_time(&mut out);
            Ok(out)
        })
    }

    fn relays(&mut self) -> Result<Vec<RelaySummary>, StoreError> {
        in_snapshot(self.conn()?, |tx| {
            let base = q(
                tx,
                "SELECT relay_id, blocks, readings, last_block_ms FROM relays ORDER BY relay_id",
                &[],
            )?;
            let coverage: std::collections::HashMap<i64, RelayCoverage> =
                q(tx, shared::RELAY_COVERAGE, &[])?
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            RelayCoverage {
                                meters: r.get(1),
                                shared: r.get(2),
                                duplicates: r.get(3),
                            },
                        )
                    })
                    .collect();
            let mut out = Vec::new();
            for b in &base {
                let (relay, blocks, readings, last_block_ms): (i64, i64, i64, i64) =
                    (b.get(0), b.get(1), b.get(2), b.get(3));
                let recent = q(
                    tx,
                    "SELECT height, hash, difficulty, time_ms FROM blocks WHERE relay_id = $1 ORDER BY height DESC LIMIT 100",
                    &[&relay],
                )?;
                let recent: Vec<(i64, Vec<u8>, i64, i64)> = recent
                    .iter()
                    .map(|r| (r.get(0), r.get(1), i64::from(r.get::<_, i32>(2)), r.get(3)))
                    .collect();
                let gaps_rows = q(
                    tx,
                    "SELECT g.height, (SELECT MAX(b.height) FROM blocks b WHERE b.relay_id = g.relay_id AND b.height < g.height) \
                     FROM gaps g WHERE g.relay_id = $1 AND g.closed_ms IS NULL ORDER BY g.height",
                    &[&relay],
                )?;
                let gaps: Vec<(u64, u64)> = gaps_rows
                    .iter()
                    .map(|r| shared::gap_range(r.get(0), r.get(1)))
                    .collect();
                let forks: i64 = block_on(tx.query_one(
                    "SELECT COUNT(*) FROM quarantine WHERE kind = 'fork' AND relay_id = $1",
                    &[&relay],
                ))?
                .get(0);
                out.push(
                    RelayCols {
                        relay_id: relay as u32,
                        blocks,
                        readings,
                        last_block_ms,
                        recent,
                        gaps,
                        forks,
                        coverage: coverage.get(&relay).copied().unwrap_or_default(),
                    }
                    .summary(),
                );
            }
            Ok(out)
        })
    }

    fn select(
        &mut self,
        sql: &str,
        params: &[super::SqlParam],
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        use tokio_postgres::types::ToSql;
        let owned: Vec<Box<dyn ToSql + Sync>> = params
            .iter()
            .map(|p| -> Box<dyn ToSql + Sync> {
                match p {
                    super::SqlParam::Int(v) => Box::new(*v),
                    super::SqlParam::Text(t) => Box::new(t.clone()),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| &**b).collect();
        let rows = self.conn()?.query(sql, &refs)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let row = (0..r.len())
                .map(|i| cell(r, i))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(row);
        }
        Ok(out)
    }
}

impl AuditStore for PgStore {
    fn ledger_forks(&mut self) -> Result<Vec<ForkEvidence>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT id, relay_id, height, raw FROM quarantine WHERE kind = 'fork' ORDER BY id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ForkEvidence {
                    id: r.try_get(0)?,
                    relay_id: r.try_get(1)?,
                    height: r.try_get(2)?,
                    raw: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn ledger_relays(&mut self) -> Result<Vec<i64>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT DISTINCT relay_id FROM blocks ORDER BY relay_id",
            &[],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn ledger_blocks(
        &mut self,
        relay_id: i64,
        after_height: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LedgerBlock>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, nonce, raw, linked, \
             first_reading_id, reading_count, duplicate_count, min_ts, max_ts FROM blocks \
             WHERE relay_id = $1 AND ($2::int8 IS NULL OR height > $2) ORDER BY height LIMIT $3",
            &[&relay_id, &after_height, &to_i64(limit as u64)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(shared::ledger_block(r.try_get(0)?, r.try_get(10)?, |i| {
                    cell(r, i)
                })?)
            })
            .collect()
    }

    fn ledger_readings(
        &mut self,
        first_id: i64,
        count: u64,
    ) -> Result<Vec<LedgerReading>, StoreError> {
        let end = first_id.saturating_add(to_i64(count));
        let rows = self.conn()?.query(
            &format!("SELECT {READING_COLS} FROM readings WHERE id >= $1 AND id < $2 ORDER BY id"),
            &[&first_id, &end],
        )?;
        rows.iter()
            .map(|r| Ok(shared::ledger_reading(r.try_get(0)?, |i| cell(r, i))?))
            .collect()
    }

    fn ledger_directory(&mut self, block_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT meter_id, first_id, count, min_ts, max_ts FROM runs WHERE block_id = $1 ORDER BY meter_id",
            &[&block_id],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut runs = Vec::with_capacity(rows.len());
        for r in &rows {
            let (meter_id, first_id, count, min_ts, max_ts): (i64, i64, i64, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            // The directory encoding narrows meter and count to u32: a value it would
            // truncate must not read back as a plausible entry.
            if u32::try_from(meter_id).is_err()
                || !(1..=i64::from(u32::MAX)).contains(&count)
                || first_id.checked_add(count).is_none()
            {
                return Err(StoreError::Corrupt {
                    table: "runs",
                    detail: format!(
                        "block {block_id}: run of meter {meter_id} from id {first_id}, count {count}"
                    ),
                });
            }
            runs.push(Run {
                block_id,
                first_id,
                last_id: first_id + count - 1,
                meter_id,
                min_ts,
                max_ts,
            });
        }
        Ok(Some(super::encode_directory(&runs)))
    }

    fn reading_rows(&mut self) -> Result<u64, StoreError> {
        let rows = self.conn()?.query("SELECT COUNT(*) FROM readings", &[])?;
        Ok(rows.first().map_or(0, |r| u64_of(r.get(0))))
    }

    fn directory_rows(&mut self) -> Result<u64, StoreError> {
        let rows = self
            .conn()?
            .query("SELECT COUNT(DISTINCT block_id) FROM runs", &[])?;
        Ok(rows.first().map_or(0, |r| u64_of(r.get(0))))
    }

    fn ledger_coverage(&mut self) -> Result<Vec<CoverageRow>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT meter_id, epoch, first_seq, last_seq FROM coverage ORDER BY meter_id, epoch, first_seq",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| CoverageRow {
                meter_id: r.get(0),
                epoch: r.get(1),
                first_seq: r.get(2),
                last_seq: r.get(3),
            })
            .collect())
    }
}
