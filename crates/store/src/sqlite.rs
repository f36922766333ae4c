//! The SQLite backend: WAL, `synchronous = FULL` (a commit is durable before
//! its receipt leaves), one writer at a time (`BEGIN IMMEDIATE`), migrations
//! from `migrations/sqlite/` tracked in `PRAGMA user_version`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::{LogLeafRepr, Reading};
use gridpow_proto::Hash;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::shared::{
    self, hash_of, meter_subject, typed_reading, u64_of, RelayCols, RelayCoverage, Silent,
    READING_COLS,
};
use super::{
    AuditStore, Cell, CommitResult, CoverageRow, DbError, DbTotals, ForkEvidence, Ingest,
    IngestStore, LedgerBlock, LedgerReading, NewAlert, QueryStore, RaisedAlert, RelaySummary,
    StoreError, StoreLimits, StoreOptions, StoredReading,
};
use crate::log::{LogAppend, LogSnapshot};
use crate::plan::{
    quota_bucket, CoverageChange, MeterRow, Plan, Planner, Snapshot, StoredSlot, Working,
};
use crate::plausibility::{AlertKind, Rules};
use crate::verified::ReadingRow;

/// Schema migrations, applied in order; `PRAGMA user_version` is the last applied.
const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_bounded_quarantine.sql"),
    ),
    (3, include_str!("../migrations/sqlite/0003_fleet_views.sql")),
    (
        4,
        include_str!("../migrations/sqlite/0004_transparency_log.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_relay_coverage.sql"),
    ),
];

/// The id is left to SQLite: a new rowid past the largest is an append, while
/// an explicit one costs a B-tree seek to check it is free.
const INSERT_READING: &str = "INSERT INTO readings (block_id, leaf, meter_id, epoch, seq, ts_ms, voltage_cv, \
     current_ma, power_dw, pf_e4, freq_mhz, energy_mwh, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// A SQLite database holding the ledger.
pub struct SqliteStore {
    conn: Connection,
    rules: Rules,
    limits: StoreLimits,
    cache: Cache,
    checkpointer: Option<Checkpointer>,
}

/// Copies committed WAL frames into the database file on its own thread and
/// connection (`PRAGMA wal_checkpoint(PASSIVE)` after each commit, at least
/// every 200 ms), so the writer's commits only append to the WAL and fsync it.
/// Passive checkpoints never block the writer or readers.
struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Least time between two checkpoints.
    const EVERY: Duration = Duration::from_millis(500);

    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(open_err(path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err(path))?;
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(open_err(path))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("gridpow-checkpoint".into())
            .spawn(move || {
                let mut last_run = std::time::Instant::now();
                loop {
                    let last = match rx.recv_timeout(Self::EVERY) {
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => true,
                    };
                    // Fewer, larger checkpoints copy pages rewritten by many commits once.
                    if !last && last_run.elapsed() < Self::EVERY {
                        continue;
                    }
                    last_run = std::time::Instant::now();
                    let mode = if last { "TRUNCATE" } else { "PASSIVE" };
                    if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer will checkpoint itself.");
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer {
            nudge: Some(tx),
            thread: Some(thread),
        })
    }

    fn nudge(&self) {
        if let Some(tx) = &self.nudge {
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudge = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

fn open_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Open {
        path: path.display().to_string(),
        source: db_error(source),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` for writing and applies migrations.
    pub fn open(path: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(open_err(path))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(open_err(path))?;
        // Checkpoints run on a thread of their own (see `Checkpointer`); the
        // writer checkpoints itself only if the WAL grows past 64 MiB anyway.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -65536; \
             PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 65536;",
        )
        .map_err(open_err(path))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn, path)?;
        let appended = backfill_log(&mut conn)?;
        if appended > 0 {
            tracing::info!(blocks = appended, db = %path.display(), "Blocks stored before the transparency log appended to it.");
        }
        let checkpointer = Checkpointer::start(path)?;
        Ok(SqliteStore {
            conn,
            rules: options.rules,
            limits: options.limits,
            cache: Cache::default(),
            checkpointer: Some(checkpointer),
        })
    }

    /// Opens an existing database for queries only.
    pub fn open_reader(path: &Path) -> Result<SqliteStore, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err(path))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err(path))?;
        conn.set_prepared_statement_cache_capacity(64);
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err(path))?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        if version == 0 {
            return Err(StoreError::Corrupt {
                table: "schema",
                detail: format!("{} is not a gridpow database (no schema)", path.display()),
            });
        }
        Ok(SqliteStore {
            conn,
            rules: Rules::default(),
            limits: StoreLimits::default(),
            cache: Cache::default(),
            checkpointer: None,
        })
    }

    /// The underlying connection (tests and benchmarks).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Benchmark baseline: inserts `rows` (as of block `block_id`) into the
    /// readings table with the very statement [`IngestStore::commit`](crate::IngestStore::commit) uses, in one
    /// transaction, and nothing else (no de-duplication, chain, time index or
    /// block row). Ids follow the largest stored one. Returns the rows inserted.
    pub fn insert_readings_raw(
        &mut self,
        block_id: i64,
        rows: &[ReadingRow],
    ) -> Result<usize, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(INSERT_READING)?;
            for row in rows {
                insert_reading(&tx, &mut st, block_id, row)?;
            }
        }
        tx.commit()?;
        if let Some(c) = &self.checkpointer {
            c.nudge();
        }
        Ok(rows.len())
    }
}

fn db_error(e: rusqlite::Error) -> DbError {
    DbError::new("SQLite", e.to_string(), e)
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's errors by remedy: a busy or locked database (another
    /// process writing) and interrupted or failed IO are worth retrying; a
    /// full disk, a read-only file or a permission need the operator; every
    /// other failure on a database that opened as gridpow's (no such table or
    /// column, a constraint, a value of another type, a damaged page) means
    /// its content is not what this build wrote.
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode as C;
        let code = match &e {
            rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
            _ => None,
        };
        match code {
            Some(
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::OperationInterrupted
                | C::SystemIoFailure
                | C::OutOfMemory,
            ) => StoreError::Unavailable(db_error(e)),
            Some(
                C::CannotOpen
                | C::PermissionDenied
                | C::DiskFull
                | C::ReadOnly
                | C::FileLockingProtocolFailed
                | C::TooBig,
            ) => StoreError::Refused(db_error(e)),
            _ => StoreError::Inconsistent(db_error(e)),
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    for &(version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write transaction: another process may have migrated meanwhile.
        let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > known {
            return Err(StoreError::SchemaTooNew {
                found: current,
                known,
            });
        }
        if current >= version {
            continue;
        }
        let fail = |source: rusqlite::Error| StoreError::Migration {
            version,
            path: path.display().to_string(),
            source: db_error(source),
        };
        tx.execute_batch(sql).map_err(fail)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version, db = %path.display(), "Database migrated.");
    }
    Ok(())
}

/// Inserts one reading row; returns its id.
fn insert_reading(
    conn: &Connection,
    st: &mut rusqlite::Statement<'_>,
    block_id: i64,
    row: &ReadingRow,
) -> rusqlite::Result<i64> {
    let r = &row.reading;
    st.raw_bind_parameter(1, block_id)?;
    st.raw_bind_parameter(2, row.leaf)?;
    st.raw_bind_parameter(3, row.meter_id)?;
    st.raw_bind_parameter(4, row.epoch)?;
    st.raw_bind_parameter(5, row.seq)?;
    st.raw_bind_parameter(6, r.timestamp_ms as i64)?;
    st.raw_bind_parameter(7, r.voltage_cv)?;
    st.raw_bind_parameter(8, r.current_ma)?;
    st.raw_bind_parameter(9, r.active_power_dw)?;
    st.raw_bind_parameter(10, r.power_factor_e4)?;
    st.raw_bind_parameter(11, r.frequency_mhz)?;
    st.raw_bind_parameter(12, r.energy_mwh as i64)?;
    st.raw_bind_parameter(13, r.flags)?;
    st.raw_execute()?;
    Ok(conn.last_insert_rowid())
}

fn cell(row: &Row<'_>, idx: usize) -> rusqlite::Result<Cell> {
    Ok(match row.get_ref(idx)? {
        ValueRef::Integer(v) => Cell::Int(v),
        ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
        ValueRef::Null => Cell::Null,
        ValueRef::Real(f) => Cell::Other(format!("real {f}")),
        ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
    })
}

fn reading_ints(row: &Row<'_>) -> rusqlite::Result<[i64; 14]> {
    let mut c = [0i64; 14];
    for (i, v) in c.iter_mut().enumerate() {
        *v = row.get(i)?;
    }
    Ok(c)
}

/// Raises an alert once more (or first): kind, subject, meter, relay, now, message.
const RAISE_ALERT: &str =
    "INSERT INTO alerts (kind, subject, meter_id, relay_id, first_ms, last_ms, count, message, cleared_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, ?6, NULL) ON CONFLICT (kind, subject) DO UPDATE SET \
     last_ms = excluded.last_ms, count = count + 1, message = excluded.message, cleared_ms = NULL";

/// Coverage and meter rows kept between transactions ([`Working`]), so a
/// batch does not re-read them. Valid only while no other connection wrote:
/// every transaction compares `PRAGMA data_version` (which changes exactly
/// when another connection commits) and starts from an empty cache if it
/// moved, so the database stays the arbiter. Any failed transaction clears it too.
#[derive(Debug, Default)]
struct Cache {
    data_version: Option<i64>,
    working: Working,
}

impl Cache {
    /// Most (meter, epoch) entries kept before the cache starts over.
    const MAX_ENTRIES: usize = 1 << 18;

    fn clear(&mut self) {
        *self = Cache::default();
    }
}

/// The stored state a plan reads, queried inside the write transaction.
struct Snap<'t> {
    tx: &'t Connection,
}

fn seq_of(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: "coverage",
        detail: format!("seq {v}"),
    })
}

impl LogSnapshot for Snap<'_> {
    fn log_size(&mut self) -> Result<u64, StoreError> {
        log_size_in(self.tx)
    }

    fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
        log_hashes_in(self.tx, indexes)
    }
}

/// The log's size as `conn` sees it.
fn log_size_in(conn: &Connection) -> Result<u64, StoreError> {
    let size: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(log_index) + 1, 0) FROM blocks")?
        .query_row([], |r| r.get(0))?;
    Ok(u64_of(size))
}

/// The stored log hashes at `indexes`, as `conn` sees them.
fn log_hashes_in(conn: &Connection, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
    let mut st = conn.prepare_cached("SELECT hash FROM log_hashes WHERE idx = ?1")?;
    indexes
        .iter()
        .map(|&i| {
            let h: Option<Vec<u8>> = st.query_row([i as i64], |r| r.get(0)).optional()?;
            match h {
                Some(h) => hash_of("log_hashes", &h),
                None => Err(StoreError::Corrupt {
                    table: "log_hashes",
                    detail: format!("stored hash {i} is missing"),
                }),
            }
        })
        .collect()
}

/// Writes a commit's stored log hashes.
fn write_log_hashes(conn: &Connection, log: &LogAppend) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut st = conn.prepare_cached("INSERT INTO log_hashes (idx, hash) VALUES (?1, ?2)")?;
    for (i, h) in &log.hashes {
        st.execute(params![*i as i64, &h[..]])?;
    }
    log.spent(started);
    Ok(())
}

/// Appends the blocks stored before schema version 4 to the log, in the
/// order they were stored (by id), a slice per transaction; a no-op once done.
fn backfill_log(conn: &mut Connection) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, LogLeafRepr)> = {
            let mut st = tx.prepare_cached(
                "SELECT id, relay_id, height, hash, merkle_root FROM blocks WHERE log_index IS NULL ORDER BY id LIMIT 10000",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, relay, height, hash, root) = row?;
                out.push((
                    id,
                    LogLeafRepr {
                        relay_id: shared::u32_id("blocks", relay)?,
                        height: u64_of(height),
                        block_hash: hash_of("blocks", &hash)?,
                        merkle_root: hash_of("blocks", &root)?,
                    },
                ));
            }
            out
        };
        if rows.is_empty() {
            return Ok(total);
        }
        let entries: Vec<LogLeafRepr> = rows.iter().map(|(_, e)| *e).collect();
        let log = crate::log::append(&mut Snap { tx: &tx }, &entries)?;
        write_log_hashes(&tx, &log)?;
        {
            let mut st = tx.prepare_cached("UPDATE blocks SET log_index = ?1 WHERE id = ?2")?;
            for (n, (id, _)) in rows.iter().enumerate() {
                st.execute(params![log.index_of(n), id])?;
            }
        }
        tx.commit()?;
        total += rows.len() as u64;
    }
}

impl Snapshot for Snap<'_> {
    fn head(&mut self, relay: u32) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT MAX(height) FROM blocks WHERE relay_id = ?1")?
            .query_row([relay], |r| r.get(0))?)
    }

    fn slot(&mut self, relay: u32, height: i64) -> Result<Option<StoredSlot>, StoreError> {
        self
            .tx
            .prepare_cached(
                "SELECT id, hash, prev_hash, linked, log_index FROM blocks WHERE relay_id = ?1 AND height = ?2",
            )?
            .query_row(params![relay, height], |r| {
                Ok((
                    StoredSlot {
                        id: r.get(0)?,
                        hash: r.get(1)?,
                        prev_hash: r.get(2)?,
                        linked: r.get::<_, i64>(3)? != 0,
                        log_index: 0,
                    },
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()?
            .map(|(mut s, log_index)| {
                s.log_index = StoredSlot::log_index_of(s.id, log_index)?;
                Ok::<_, StoreError>(s)
            })
            .transpose()
    }

    fn highest_below(&mut self, relay: u32, height: i64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT MAX(height) FROM blocks WHERE relay_id = ?1 AND height < ?2")?
            .query_row(params![relay, height], |r| r.get(0))?)
    }

    fn quarantine_usage(&mut self, bucket: i64) -> Result<(u64, u64), StoreError> {
        let (rows, bytes): (i64, i64) = self
            .tx
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(kept_len), 0) FROM quarantine WHERE bucket = ?1",
            )?
            .query_row([bucket], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((u64_of(rows), u64_of(bytes)))
    }

    fn meter(&mut self, meter_id: u32) -> Result<Option<MeterRow>, StoreError> {
        let row = self
            .tx
            .prepare_cached(
                "SELECT first_seen_ms, readings, last_epoch, last_seq, last_ts_ms, last_voltage_cv, last_current_ma, \
                 last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh, last_flags, silent FROM meters WHERE meter_id = ?1",
            )?
            .query_row([meter_id], |r| {
                let mut c = [0i64; 13];
                for (i, v) in c.iter_mut().enumerate() {
                    *v = r.get(i)?;
                }
                Ok(c)
            })
            .optional()?;
        Ok(row.map(|c| MeterRow {
            first_seen_ms: u64_of(c[0]),
            readings: u64_of(c[1]),
            last: Some((
                c[2] as u32,
                c[3] as u32,
                Reading {
                    timestamp_ms: c[4] as u64,
                    voltage_cv: c[5] as u16,
                    current_ma: c[6] as u32,
                    active_power_dw: c[7] as i32,
                    power_factor_e4: c[8] as i16,
                    frequency_mhz: c[9] as u16,
                    energy_mwh: c[10] as u64,
                    flags: c[11] as u16,
                },
            )),
            silent: c[12] != 0,
        }))
    }

    fn coverage(&mut self, meter_id: u32, epoch: u32) -> Result<Vec<(u32, u32)>, StoreError> {
        let mut st = self.tx.prepare_cached(
            "SELECT first_seq, last_seq FROM coverage WHERE meter_id = ?1 AND epoch = ?2 ORDER BY first_seq",
        )?;
        let mut rows = st.query(params![meter_id, epoch])?;
        let mut stored = Vec::new();
        while let Some(r) = rows.next()? {
            stored.push((seq_of(r.get(0)?)?, seq_of(r.get(1)?)?));
        }
        Ok(stored)
    }
}

/// Writes the refusals kept; returns their row ids.
fn write_quarantine(tx: &Connection, plan: &Plan<'_>) -> Result<Vec<i64>, StoreError> {
    let mut st = tx.prepare_cached(
        "INSERT INTO quarantine (received_ms, topic, kind, detail, relay_id, height, hash, raw, original_len, kept_len, bucket) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut ids = Vec::with_capacity(plan.quarantine.len());
    for k in &plan.quarantine {
        let q = &k.item;
        let h = q.header.as_ref();
        st.execute(params![
            q.arrival.received_ms as i64,
            q.arrival.topic,
            q.kind.as_str(),
            q.detail,
            h.map(|h| h.relay_id),
            h.map(|h| h.height as i64),
            h.map(|h| h.hash(&RustCrypto).to_vec()),
            k.raw(),
            q.raw.len() as i64,
            k.kept as i64,
            quota_bucket(q),
        ])?;
        ids.push(tx.last_insert_rowid());
    }
    Ok(ids)
}

/// Writes the new blocks, their readings (ids contiguous per block, following
/// the largest stored) and directories; returns the block ids and the largest
/// time span of a block's new readings.
fn write_blocks(tx: &Connection, plan: &Plan<'_>) -> Result<(Vec<i64>, i64), StoreError> {
    let mut ids = Vec::with_capacity(plan.blocks.len());
    if plan.blocks.is_empty() {
        return Ok((ids, 0));
    }
    let first_block_id: i64 =
        tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM blocks", [], |r| {
            r.get(0)
        })?;
    let mut next_reading_id: i64 =
        tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM readings", [], |r| {
            r.get(0)
        })?;
    let mut max_span = 0;
    let mut insert_reading_st = tx.prepare_cached(INSERT_READING)?;
    let mut insert_block = tx.prepare_cached(
        "INSERT INTO blocks (id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, \
         nonce, raw, linked, received_ms, first_reading_id, reading_count, duplicate_count, min_ts, max_ts, log_index) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?;
    let mut insert_directory =
        tx.prepare_cached("INSERT INTO block_index (block_id, directory) VALUES (?1, ?2)")?;
    for (n, (block_id, nb)) in (first_block_id..).zip(&plan.blocks).enumerate() {
        let first_reading_id = next_reading_id;
        for row in &nb.fresh {
            let id = insert_reading(tx, &mut insert_reading_st, block_id, row)?;
            if id != next_reading_id {
                // Another id than the block's contiguous range would break the ledger's bookkeeping.
                return Err(StoreError::Corrupt {
                    table: "readings",
                    detail: format!("new reading got id {id}, expected {next_reading_id}"),
                });
            }
            next_reading_id += 1;
        }
        let runs = nb.runs(block_id, first_reading_id);
        if !runs.is_empty() {
            insert_directory.execute(params![block_id, super::encode_directory(&runs)])?;
        }
        let span = nb.span();
        if let Some((a, z)) = span {
            max_span = max_span.max(z - a);
        }
        let (b, h) = (nb.block, &nb.block.header);
        insert_block.execute(params![
            block_id,
            h.relay_id,
            h.height as i64,
            &b.hash[..],
            &h.prev_hash[..],
            &h.merkle_root[..],
            h.difficulty,
            h.leaf_count,
            h.time_ms as i64,
            h.nonce as i64,
            b.raw,
            nb.linked,
            nb.arrival.received_ms as i64,
            first_reading_id,
            nb.fresh.len() as i64,
            nb.duplicates as i64,
            span.map(|s| s.0),
            span.map(|s| s.1),
            plan.log.index_of(n),
        ])?;
        ids.push(block_id);
    }
    write_log_hashes(tx, &plan.log)?;
    Ok((ids, max_span))
}

/// Writes links, gaps, coverage, meters, relays, the span, counters and alerts.
fn write_rest(
    tx: &Connection,
    plan: &Plan<'_>,
    now_ms: u64,
    max_span: i64,
) -> Result<(), StoreError> {
    let now = now_ms as i64;
    let mut link = tx.prepare_cached("UPDATE blocks SET linked = 1 WHERE id = ?1")?;
    for id in &plan.link_children {
        link.execute([id])?;
    }
    let mut open = tx.prepare_cached(
        "INSERT OR IGNORE INTO gaps (relay_id, height, opened_ms, closed_ms) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (&(relay, height), closed) in &plan.gaps_opened {
        open.execute(params![relay, height, now, closed])?;
    }
    let mut close = tx.prepare_cached(
        "UPDATE gaps SET closed_ms = ?1 WHERE relay_id = ?2 AND height = ?3 AND closed_ms IS NULL",
    )?;
    for &(relay, height) in &plan.gaps_closed {
        close.execute(params![now, relay, height])?;
    }
    let mut del = tx.prepare_cached(
        "DELETE FROM coverage WHERE meter_id = ?1 AND epoch = ?2 AND first_seq = ?3",
    )?;
    let mut upd = tx.prepare_cached(
        "UPDATE coverage SET last_seq = ?4 WHERE meter_id = ?1 AND epoch = ?2 AND first_seq = ?3",
    )?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO coverage (meter_id, epoch, first_seq, last_seq) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for &((m, e), change) in &plan.coverage {
        match change {
            CoverageChange::Delete(a) => del.execute(params![m, e, a])?,
            CoverageChange::Update(a, b) => upd.execute(params![m, e, a, b])?,
            CoverageChange::Insert(a, b) => ins.execute(params![m, e, a, b])?,
        };
    }
    let mut meter = tx.prepare_cached(
        "INSERT OR REPLACE INTO meters (meter_id, first_seen_ms, last_received_ms, readings, last_epoch, last_seq, \
         last_ts_ms, last_voltage_cv, last_current_ma, last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh, \
         last_flags, silent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for (m, row) in &plan.meters {
        let (e, q, r) = row.last.unwrap_or((0, 0, Reading::default()));
        meter.execute(params![
            m,
            row.first_seen_ms as i64,
            now,
            row.readings as i64,
            e,
            q,
            r.timestamp_ms as i64,
            r.voltage_cv,
            r.current_ma,
            r.active_power_dw,
            r.power_factor_e4,
            r.frequency_mhz,
            r.energy_mwh as i64,
            r.flags,
            row.silent,
        ])?;
    }
    let mut relay = tx.prepare_cached(
        "INSERT INTO relays (relay_id, blocks, readings, leaves, first_seen_ms, last_block_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT (relay_id) DO UPDATE SET blocks = blocks + excluded.blocks, readings = readings + excluded.readings, \
         leaves = leaves + excluded.leaves, last_block_ms = excluded.last_block_ms",
    )?;
    for (&r, d) in &plan.book.relays {
        relay.execute(params![r, d.blocks, d.readings, d.leaves, now])?;
    }
    let mut carried = tx.prepare_cached(
        "INSERT INTO relay_meters (relay_id, meter_id, readings_first, readings_duplicate, last_heard_ms, last_key_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (relay_id, meter_id) DO UPDATE SET \
         readings_first = readings_first + excluded.readings_first, \
         readings_duplicate = readings_duplicate + excluded.readings_duplicate, last_heard_ms = excluded.last_heard_ms, \
         last_key_id = excluded.last_key_id",
    )?;
    for (&(r, m), d) in &plan.book.carried {
        carried.execute(params![r, m, d.first, d.duplicate, now, d.key_id])?;
    }
    tx.prepare_cached(
        "INSERT INTO meta (name, value) VALUES ('max_block_span_ms', ?1) \
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute([max_span])?;
    let mut counter = tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )?;
    for (name, v) in &plan.book.counters {
        counter.execute(params![name, v])?;
    }
    let mut alert = tx.prepare_cached(
        "INSERT INTO alerts (kind, subject, meter_id, relay_id, first_ms, last_ms, count, message, cleared_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8) ON CONFLICT (kind, subject) DO UPDATE SET \
         last_ms = excluded.last_ms, count = count + excluded.count, message = excluded.message, cleared_ms = excluded.cleared_ms",
    )?;
    for ((kind, subject), a) in &plan.book.alerts {
        alert.execute(params![
            kind.as_str(),
            subject,
            a.meter_id,
            a.relay_id,
            now,
            a.count as i64,
            a.message,
            a.cleared.then_some(now),
        ])?;
    }
    let mut clear = tx.prepare_cached(
        "UPDATE alerts SET cleared_ms = ?1 WHERE kind = ?2 AND subject = ?3 AND cleared_ms IS NULL",
    )?;
    for (kind, subject) in &plan.book.clears {
        clear.execute(params![now, kind.as_str(), subject])?;
    }
    Ok(())
}

fn read_totals(conn: &Connection) -> Result<DbTotals, StoreError> {
    let (blocks, readings, relays): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(blocks), 0), COALESCE(SUM(readings), 0), COUNT(*) FROM relays",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let mut t = DbTotals {
        readings_stored: u64_of(readings),
        blocks_verified: u64_of(blocks),
        relays: u64_of(relays),
        ..DbTotals::default()
    };
    let mut st = conn.prepare_cached("SELECT name, value FROM counters")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (name, v): (String, i64) = (r.get(0)?, r.get(1)?);
        t.set_counter(&name, u64_of(v));
    }
    t.gaps_open = u64_of(
        conn.prepare_cached("SELECT COUNT(*) FROM gaps WHERE closed_ms IS NULL")?
            .query_row([], |r| r.get(0))?,
    );
    t.alerts_active = u64_of(
        conn.prepare_cached("SELECT COUNT(*) FROM alerts WHERE cleared_ms IS NULL")?
            .query_row([], |r| r.get(0))?,
    );
    Ok(t)
}

fn commit_tx(
    conn: &mut Connection,
    rules: &Rules,
    limits: &StoreLimits,
    cache: &mut Cache,
    items: &[Ingest],
    now_ms: u64,
) -> Result<CommitResult, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if cache.data_version != Some(version) || cache.working.coverage.len() > Cache::MAX_ENTRIES {
        cache.clear();
        cache.data_version = Some(version);
    }
    let mut snap = Snap { tx: &tx };
    let mut planner = Planner::new(rules, limits, now_ms);
    planner.chains(items, &mut snap)?;
    let mut plan = planner.readings(&mut snap, &mut cache.working)?;
    let quarantine_ids = write_quarantine(&tx, &plan)?;
    let (block_ids, max_span) = write_blocks(&tx, &plan)?;
    write_rest(&tx, &plan, now_ms, max_span)?;
    let result = plan.result(&block_ids, &quarantine_ids, read_totals(&tx)?)?;
    tx.commit()?;
    Ok(result)
}

impl IngestStore for SqliteStore {
    fn prune_quarantine(&mut self, now_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(self.limits.quarantine_retention_ms);
        let cutoff = cutoff.min(i64::MAX as u64) as i64;
        let n = self.conn.execute(
            "DELETE FROM quarantine WHERE received_ms < ?1 AND kind <> 'fork'",
            [cutoff],
        )?;
        if n > 0 {
            if let Some(c) = &self.checkpointer {
                c.nudge();
            }
        }
        Ok(n as u64)
    }

    fn commit(&mut self, items: &[Ingest], now_ms: u64) -> Result<CommitResult, StoreError> {
        let result = commit_tx(
            &mut self.conn,
            &self.rules,
            &self.limits,
            &mut self.cache,
            items,
            now_ms,
        );
        match &result {
            // The cache may hold what the rolled-back transaction wrote.
            Err(_) => self.cache.clear(),
            Ok(_) => {
                if let Some(c) = &self.checkpointer {
                    c.nudge();
                }
            }
        }
        result
    }

    fn raise_alert(&mut self, a: &NewAlert, now_ms: u64) -> Result<RaisedAlert, StoreError> {
        let now = now_ms as i64;
        self.conn.prepare_cached(RAISE_ALERT)?.execute(params![
            a.kind.as_str(),
            a.subject,
            a.meter_id,
            a.relay_id,
            now,
            a.message
        ])?;
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
        let cutoff = cutoff as i64;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let quiet: Vec<(u32, i64)> = {
            let mut st = tx.prepare_cached("SELECT meter_id, last_received_ms FROM meters WHERE silent = 0 AND last_received_ms < ?1")?;
            let rows = st.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut raised = Vec::new();
        for (m, last) in quiet {
            self.cache.working.meters.remove(&m);
            tx.prepare_cached("UPDATE meters SET silent = 1 WHERE meter_id = ?1")?
                .execute([m])?;
            let silent = Silent::new(m, now_ms as i64, last);
            tx.prepare_cached(RAISE_ALERT)?.execute(params![
                AlertKind::Silent.as_str(),
                meter_subject(m),
                m,
                None::<u32>,
                now_ms as i64,
                silent.alert.message
            ])?;
            raised.push(silent.logged());
        }
        tx.commit()?;
        Ok(raised)
    }
}

impl QueryStore for SqliteStore {
    fn totals(&mut self) -> Result<DbTotals, StoreError> {
        read_totals(&self.conn)
    }

    fn meter_readings(
        &mut self,
        meter_id: u32,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        let (from, to) = (clamp(from_ms), clamp(to_ms));
        let max_span: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(MAX(value), 0) FROM meta WHERE name = 'max_block_span_ms'",
            )?
            .query_row([], |r| r.get(0))?;
        // A block whose newest reading is later than to + max_span has none at or before `to`.
        let upper = to.saturating_add(max_span.max(0));
        let mut blocks = self.conn.prepare_cached(
            "SELECT id, max_ts FROM blocks WHERE max_ts BETWEEN ?1 AND ?2 AND min_ts <= ?3 ORDER BY max_ts DESC, id DESC",
        )?;
        let mut directory = self
            .conn
            .prepare_cached("SELECT directory FROM block_index WHERE block_id = ?1")?;
        let mut rows = self.conn.prepare_cached(&format!(
            "SELECT {READING_COLS} FROM readings WHERE id BETWEEN ?1 AND ?2 AND ts_ms BETWEEN ?3 AND ?4"
        ))?;
        let mut out: Vec<StoredReading> = Vec::new();
        let mut threshold: Option<i64> = None;
        let mut candidates = blocks.query(params![from, upper, to])?;
        while let Some(b) = candidates.next()? {
            let (block_id, max_ts): (i64, i64) = (b.get(0)?, b.get(1)?);
            if threshold.is_some_and(|t| max_ts < t) {
                break;
            }
            let dir: Option<Vec<u8>> = directory.query_row([block_id], |r| r.get(0)).optional()?;
            let Some(run) = dir.and_then(|d| super::find_in_directory(block_id, &d, meter_id))
            else {
                continue;
            };
            if run.max_ts < from || run.min_ts > to {
                continue;
            }
            let (first, last) = (run.first_id, run.last_id);
            let mut found = rows.query(params![first, last, from, to])?;
            while let Some(r) = found.next()? {
                out.push(typed_reading("readings", &reading_ints(r)?)?);
            }
            shared::keep_newest(&mut out, limit, &mut threshold);
        }
        shared::sort_by_time(&mut out);
        Ok(out)
    }

    fn relays(&mut self) -> Result<Vec<RelaySummary>, StoreError> {
        let base: Vec<(u32, i64, i64, i64)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT relay_id, blocks, readings, last_block_ms FROM relays ORDER BY relay_id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let coverage: HashMap<u32, RelayCoverage> = {
            let mut st = self.conn.prepare_cached(shared::RELAY_COVERAGE)?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    RelayCoverage {
                        meters: r.get(1)?,
                        shared: r.get(2)?,
                        duplicates: r.get(3)?,
                    },
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (relay, blocks, readings, last_block_ms) in base {
            let recent: Vec<(i64, Vec<u8>, i64, i64)> = {
                let mut st = self.conn.prepare_cached(
                    "SELECT height, hash, difficulty, time_ms FROM blocks WHERE relay_id = ?1 ORDER BY height DESC LIMIT 100",
                )?;
                let rows = st.query_map([relay], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let open: Vec<i64> = {
                let mut st = self
                    .conn
                    .prepare_cached("SELECT height FROM gaps WHERE relay_id = ?1 AND closed_ms IS NULL ORDER BY height")?;
                let rows = st.query_map([relay], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut gaps = Vec::new();
            for h in open {
                let below: Option<i64> = self
                    .conn
                    .prepare_cached(
                        "SELECT MAX(height) FROM blocks WHERE relay_id = ?1 AND height < ?2",
                    )?
                    .query_row(params![relay, h], |r| r.get(0))?;
                gaps.push(shared::gap_range(h, below));
            }
            let forks: i64 = self
                .conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM quarantine WHERE kind = 'fork' AND relay_id = ?1",
                )?
                .query_row([relay], |r| r.get(0))?;
            out.push(
                RelayCols {
                    relay_id: relay,
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
    }

    fn select(
        &mut self,
        sql: &str,
        params: &[super::SqlParam],
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        let mut st = self.conn.prepare_cached(&numbered_placeholders(sql))?;
        let values: Vec<rusqlite::types::Value> = params
            .iter()
            .map(|p| match p {
                super::SqlParam::Int(v) => rusqlite::types::Value::Integer(*v),
                super::SqlParam::Text(t) => rusqlite::types::Value::Text(t.clone()),
            })
            .collect();
        let width = st.column_count();
        let rows = st.query_map(rusqlite::params_from_iter(values), |r| {
            (0..width)
                .map(|i| cell(r, i))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl AuditStore for SqliteStore {
    fn ledger_forks(&mut self) -> Result<Vec<ForkEvidence>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, relay_id, height, raw FROM quarantine WHERE kind = 'fork' ORDER BY id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ForkEvidence {
                id: r.get(0)?,
                relay_id: r.get(1)?,
                height: r.get(2)?,
                raw: match r.get_ref(3)? {
                    ValueRef::Blob(b) => b.to_vec(),
                    _ => Vec::new(),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ledger_relays(&mut self) -> Result<Vec<i64>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT DISTINCT relay_id FROM blocks ORDER BY relay_id")?;
        let rows = st.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ledger_blocks(
        &mut self,
        relay_id: i64,
        after_height: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LedgerBlock>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, relay_id, height, hash, prev_hash, merkle_root, difficulty, leaf_count, time_ms, nonce, raw, linked, \
             first_reading_id, reading_count, duplicate_count, min_ts, max_ts FROM blocks WHERE relay_id = ?1 AND (?2 IS NULL OR height > ?2) \
             ORDER BY height LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![relay_id, after_height, limit.min(i64::MAX as usize) as i64],
            |r| {
                let raw = match r.get_ref(10)? {
                    ValueRef::Blob(b) => b.to_vec(),
                    _ => Vec::new(),
                };
                shared::ledger_block(r.get(0)?, raw, |i| cell(r, i))
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ledger_readings(
        &mut self,
        first_id: i64,
        count: u64,
    ) -> Result<Vec<LedgerReading>, StoreError> {
        let end = first_id.saturating_add(count.min(i64::MAX as u64) as i64);
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {READING_COLS} FROM readings WHERE id >= ?1 AND id < ?2 ORDER BY id"
        ))?;
        let rows = st.query_map(params![first_id, end], |r| {
            shared::ledger_reading(r.get(0)?, |i| cell(r, i))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ledger_directory(&mut self, block_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT directory FROM block_index WHERE block_id = ?1")?
            .query_row([block_id], |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Blob(b) => b.to_vec(),
                    _ => Vec::new(),
                })
            })
            .optional()?)
    }

    fn reading_rows(&mut self) -> Result<u64, StoreError> {
        Ok(u64_of(self.conn.query_row(
            "SELECT COUNT(*) FROM readings",
            [],
            |r| r.get(0),
        )?))
    }

    fn directory_rows(&mut self) -> Result<u64, StoreError> {
        Ok(u64_of(self.conn.query_row(
            "SELECT COUNT(*) FROM block_index",
            [],
            |r| r.get(0),
        )?))
    }

    fn ledger_coverage(&mut self) -> Result<Vec<CoverageRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT meter_id, epoch, first_seq, last_seq FROM coverage ORDER BY meter_id, epoch, first_seq")?;
        let rows = st.query_map([], |r| {
            Ok(CoverageRow {
                meter_id: r.get(0)?,
                epoch: r.get(1)?,
                first_seq: r.get(2)?,
                last_seq: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// The shared SQL's `$n` placeholders as SQLite's `?n`, which bind by number
/// (SQLite reads `$n` as a name, numbered by first appearance).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}
