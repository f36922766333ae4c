//! The gridpow ledger store: verified blocks and their readings, chosen at run
//! time from the database URL, behind three traits, one per audience:
//! [`IngestStore`] for the server's writer (commit batches, alerts, pruning),
//! [`QueryStore`] for the HTTP API and dashboard, [`AuditStore`] for the
//! ledger check. [`open_store`] opens a writer with its rules and limits
//! ([`StoreOptions`]), [`open_reader`] a reader. Every error says what can be
//! done about it ([`StoreError::remedy`]): retry, refuse the input, or call the
//! operator, so the writer retries only what can succeed.
//!
//! SQLite ([`SqliteStore`], a file path or `sqlite://path`, the default) and
//! PostgreSQL ([`PgStore`], `postgres://…`, for several servers sharing one
//! database), each with its own migrations. The trait is shaped for both:
//!
//! - **One transaction per batch.** [`IngestStore::commit`] stores a batch of verified
//!   blocks and rejected payloads atomically and returns one [`Outcome`] per
//!   item; a receipt or broker acknowledgement is only sent for a batch that
//!   committed.
//! - **The database is the arbiter.** Duplicates, chain links, gaps and forks
//!   are decided by what the database holds inside that transaction, never by
//!   process memory, so several servers may share one database. An
//!   implementation must serialise transactions that touch the same relay or
//!   meter (SQLite: one writer at a time with `BEGIN IMMEDIATE`; PostgreSQL:
//!   transaction-scoped advisory locks on the relay and meter ids, taken in
//!   ascending order, plus `UNIQUE (relay_id, height)` as the last word).
//!   A backend may cache rows between transactions only if it can tell that
//!   nobody else wrote meanwhile (SQLite: `PRAGMA data_version`).
//! - **No per-reading unique index.** Each reading `(meter, epoch, seq)` is stored
//!   once: a `coverage` table holds, per meter and boot epoch, the intervals of
//!   sequence numbers already stored, read and rewritten inside the same
//!   transaction; only readings outside them are inserted. Time-range queries
//!   read each block's directory ([`Run`]s: per meter, the contiguous id range
//!   of its new readings and their time span), not a per-reading index:
//!   SQLite walks the blocks by time and keeps one directory row per block;
//!   PostgreSQL keeps one row per run, indexed by meter and time (see
//!   [`postgres`]).
//! - **One planner, thin backends.** What a commit writes is decided once, in
//!   the planner (`plan.rs`): given the batch and the stored rows it touches
//!   (read through a `Snapshot`), it returns every row to insert or change.
//!   A backend only loads (and locks) those rows, assigns ids and writes the
//!   plan with its own SQL, so both backends decide alike by construction.
//! - Each instance is one connection used from one thread (`&mut self`); the
//!   HTTP API opens its own instances for reading.

pub mod equivocation;
pub mod fleet;
pub mod intervals;
mod log;
mod plan;
pub mod plausibility;
pub mod postgres;
mod reads;
mod shared;
mod sqlite;
#[cfg(test)]
mod tests;
mod verified;

use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;
use serde::Serialize;

pub use fleet::{
    BlockReadings, FleetSnapshot, IngestWindow, LedgerSize, MeterFilter, MeterPage, MeterQuery,
    MeterRow, MeterSort, RelayTraffic, SqlParam, VoltageBand,
};
pub use log::StoreHashReader;
pub use postgres::PgStore;
pub(crate) use shared::meter_subject;
pub use sqlite::SqliteStore;

pub use plausibility::{AlertKind, PlausibilityConfig, Rules};
pub use verified::{ReadingRow, RejectKind, VerifiedBlockData};

/// Why a storage operation failed, grouped by what can be done about it
/// ([`StoreError::remedy`]): retry, refuse the input, or call the operator.
/// A backend's own error is kept as the source ([`DbError`]) but never
/// named in this type, so callers decide on the remedy, not on the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    // Retry: the same call may succeed in a moment.
    /// The database is busy or locked, the connection was lost or refused,
    /// or a concurrent transaction won (serialization failure, deadlock, a
    /// unique-key race between servers sharing the database).
    #[error("database unavailable for now: {0}")]
    Unavailable(#[source] DbError),

    // Refuse the input: the request cannot be met as given.
    /// The database URL names a backend this build does not have.
    #[error(
        "unsupported database URL {0:?}: use a SQLite file path, sqlite://path or postgres://…"
    )]
    UnsupportedUrl(String),

    // Operator action: the stored data, the schema or the machine must be fixed.
    /// A stored value cannot be what this build wrote.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The database's schema or rows are not what this build writes (a
    /// missing table or column, a value of another type, a broken constraint,
    /// a damaged file).
    #[error("database content is not what gridpow wrote: {0}")]
    Inconsistent(#[source] DbError),
    /// The database was written by a newer build.
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade gridpow"
    )]
    SchemaTooNew {
        /// Version found.
        found: u32,
        /// Newest version this build applies.
        known: u32,
    },
    /// A schema migration failed.
    #[error("applying migration {version} to {path}: {source}")]
    Migration {
        /// The migration.
        version: u32,
        /// The database.
        path: String,
        /// The backend's error.
        #[source]
        source: DbError,
    },
    /// The database could not be opened.
    #[error("opening database {path}: {source}")]
    Open {
        /// What was opened (a PostgreSQL URL with its password hidden).
        path: String,
        /// The backend's error.
        #[source]
        source: DbError,
    },
    /// The database's directory could not be created.
    #[error("creating {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint thread could not be started.
    #[error("starting the checkpoint thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The database refuses what this build asks of it for a reason outside
    /// its content: disk full, read-only, permission denied.
    #[error("the database refuses writes: {0}")]
    Refused(#[source] DbError),
}

/// What can be done about a [`StoreError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Try the same call again after a pause; it may succeed.
    Retry,
    /// The caller's input cannot be used; retrying it cannot help.
    RefuseInput,
    /// An operator must act (repair or restore the data, free disk space,
    /// fix permissions, upgrade); retrying cannot help until then.
    Operator,
}

impl StoreError {
    /// What can be done about this error.
    pub fn remedy(&self) -> Remedy {
        match self {
            StoreError::Unavailable(_) => Remedy::Retry,
            StoreError::UnsupportedUrl(_) => Remedy::RefuseInput,
            StoreError::Corrupt { .. }
            | StoreError::Inconsistent(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::Migration { .. }
            | StoreError::Open { .. }
            | StoreError::CreateDir { .. }
            | StoreError::Thread(_)
            | StoreError::Refused(_) => Remedy::Operator,
        }
    }

    /// Whether the failure lies in what is stored (a value this build could
    /// not have written, an altered schema, a damaged file) rather than in
    /// reaching or writing the database: a verdict on the ledger itself.
    pub fn is_about_content(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::Inconsistent(_)
        )
    }
}

/// A database backend's error, described for logs and kept as the source.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct DbError {
    backend: &'static str,
    message: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DbError {
    fn new(
        backend: &'static str,
        message: String,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DbError {
        DbError {
            backend,
            message,
            source: Box::new(source),
        }
    }
}

/// A parsed database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbUrl {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl DbUrl {
    /// Parses `path`, `sqlite://path`, `sqlite:path` or `postgres://…` (also `postgresql://…`).
    pub fn parse(url: &str) -> Result<DbUrl, StoreError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if url.parse::<tokio_postgres::Config>().is_err() {
                return Err(StoreError::UnsupportedUrl(postgres::redact(url)));
            }
            return Ok(DbUrl::Postgres(url.into()));
        }
        if let Some(p) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if p.is_empty() {
                return Err(StoreError::UnsupportedUrl(url.into()));
            }
            return Ok(DbUrl::Sqlite(p.into()));
        }
        if url.is_empty() || url.contains("://") {
            return Err(StoreError::UnsupportedUrl(url.into()));
        }
        Ok(DbUrl::Sqlite(url.into()))
    }
}

/// What a store opened for writing applies to what it commits.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// The plausibility rules judged on new readings.
    pub rules: Rules,
    /// The bounds against hostile input.
    pub limits: StoreLimits,
}

/// Opens the store named by `url` for writing (applying migrations).
pub fn open_store(url: &str, options: StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    match DbUrl::parse(url)? {
        DbUrl::Sqlite(p) => Ok(Box::new(SqliteStore::open(&p, options)?)),
        DbUrl::Postgres(u) => Ok(Box::new(PgStore::open(&u, options)?)),
    }
}

/// Opens the store named by `url` for queries only (the database must exist).
pub fn open_reader(url: &str) -> Result<Box<dyn ReadStore>, StoreError> {
    match DbUrl::parse(url)? {
        DbUrl::Sqlite(p) => Ok(Box::new(SqliteStore::open_reader(&p)?)),
        DbUrl::Postgres(u) => Ok(Box::new(PgStore::open_reader(&u)?)),
    }
}

/// Where a payload came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    /// Server wall clock when it arrived, Unix ms.
    pub received_ms: u64,
    /// The MQTT topic (informational: the signed header names the relay).
    pub topic: String,
}

/// Bounds the store enforces against a hostile relay key or a flood of junk
/// (`[ledger]` in the server configuration; see docs/protocol.md §9.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// A block more than this many heights above its relay's highest stored
    /// block (or above 0 when none) is refused as `too_far_ahead`.
    pub max_height_ahead: u64,
    /// At most this many bytes of a quarantined payload are kept (its first
    /// bytes, which hold the header and signature); its length is recorded.
    /// A validly signed fork is kept whole (within its relay's allowance).
    pub quarantine_max_payload_bytes: u64,
    /// Quarantine rows kept per relay (rows whose relay id was not
    /// authenticated by a signature share one allowance); beyond it a refusal
    /// is counted but not kept.
    pub quarantine_max_rows_per_relay: u64,
    /// Payload bytes kept per relay, likewise.
    pub quarantine_max_bytes_per_relay: u64,
    /// Quarantine rows older than this are pruned (fork evidence is kept), ms.
    pub quarantine_retention_ms: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_height_ahead: 100_000,
            quarantine_max_payload_bytes: 64 << 10,
            quarantine_max_rows_per_relay: 10_000,
            quarantine_max_bytes_per_relay: 64 << 20,
            quarantine_retention_ms: 30 * 86_400_000,
        }
    }
}

/// A validly signed block refused as a fork, kept in quarantine: evidence
/// that the relay's key signed two histories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    /// Quarantine row id.
    pub id: i64,
    /// The relay id column.
    pub relay_id: Option<i64>,
    /// The height column.
    pub height: Option<i64>,
    /// The kept bytes (header and signature at least).
    pub raw: Vec<u8>,
}

/// A payload refused before storage, for the quarantine table.
#[derive(Clone, Debug)]
pub struct QuarantineItem {
    /// Where it came from.
    pub arrival: Arrival,
    /// Why.
    pub kind: RejectKind,
    /// Details.
    pub detail: String,
    /// Its header, if it parsed.
    pub header: Option<BlockHeaderRepr>,
    /// The raw payload.
    pub raw: Vec<u8>,
}

/// One item of a batch.
#[derive(Clone, Debug)]
pub enum Ingest {
    /// A verified block to store (or to find already stored, or a fork).
    Block {
        /// Where it came from.
        arrival: Arrival,
        /// The block.
        block: VerifiedBlockData,
    },
    /// A refused payload.
    Quarantine(QuarantineItem),
}

impl Ingest {
    /// Readings the item carries (for batch sizing).
    pub fn reading_count(&self) -> usize {
        match self {
            Ingest::Block { block, .. } => block.readings.len(),
            Ingest::Quarantine(_) => 0,
        }
    }

    /// The header named by the item, if any (for the receipt).
    pub fn header(&self) -> Option<&BlockHeaderRepr> {
        match self {
            Ingest::Block { block, .. } => Some(&block.header),
            Ingest::Quarantine(q) => q.header.as_ref(),
        }
    }
}

/// What the store did with one item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The block is new and stored.
    Stored {
        /// Its row id.
        block_id: i64,
        /// Readings stored with it.
        new_readings: u64,
        /// Readings of its frames that were already stored (re-sent by the
        /// meter, heard by two relays, or carried twice in this block).
        duplicate_readings: u64,
        /// Those readings, as this block carries them: the caller compares
        /// them with the stored ones to catch a meter that equivocates (§9.5).
        repeated: Vec<ReadingRow>,
        /// Whether its parent was stored and the link checked (or it is genesis).
        linked: bool,
        /// Whether it linked a previously stored child (closing a gap).
        closed_gap: bool,
        /// Its entry's index in the transparency log.
        log_index: u64,
    },
    /// The same block (same hash) was stored before; nothing changed.
    AlreadyStored {
        /// The stored block's row id.
        block_id: i64,
        /// Its entry's index in the transparency log.
        log_index: u64,
    },
    /// The item went to quarantine.
    Quarantined {
        /// Why.
        kind: RejectKind,
        /// The quarantine row id; 0 when the relay's quarantine allowance
        /// was used up and the refusal was only counted.
        id: i64,
    },
}

impl Outcome {
    /// Where a stored block sits in the transparency log, for its receipt
    /// (§10): its index, under the log's size after this commit
    /// (`log_size`, when it appended), or else the smallest tree that holds
    /// it (a redelivery in a commit that appended nothing).
    pub fn log_position(&self, log_size: Option<u64>) -> Option<gridpow_proto::wire::LogPosition> {
        match *self {
            Outcome::Stored { log_index, .. } | Outcome::AlreadyStored { log_index, .. } => {
                Some(gridpow_proto::wire::LogPosition {
                    index: log_index,
                    tree_size: log_size.map_or(log_index + 1, |s| s.max(log_index + 1)),
                })
            }
            Outcome::Quarantined { .. } => None,
        }
    }

    /// The commit receipt's status for this outcome (docs/protocol.md §10):
    /// a refusal is final (3) when [`RejectKind::is_final`], else it may be
    /// cured (2).
    pub fn receipt_status(&self) -> gridpow_proto::wire::ReceiptStatus {
        use gridpow_proto::wire::ReceiptStatus;
        match self {
            Outcome::Stored { .. } => ReceiptStatus::Stored,
            Outcome::AlreadyStored { .. } => ReceiptStatus::AlreadyStored,
            Outcome::Quarantined { kind, .. } if kind.is_final() => ReceiptStatus::Refused,
            Outcome::Quarantined { .. } => ReceiptStatus::Quarantined,
        }
    }
}

/// An alert to raise with [`IngestStore::raise_alert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAlert {
    /// Kind.
    pub kind: AlertKind,
    /// What it is about (`meter:5`).
    pub subject: String,
    /// The meter it names, if any.
    pub meter_id: Option<u32>,
    /// The relay it names, if any.
    pub relay_id: Option<u32>,
    /// The message.
    pub message: String,
}

/// An alert raised (or raised again) by a commit or a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaisedAlert {
    /// Kind.
    pub kind: AlertKind,
    /// What it is about (`meter:5`, `relay:1:height:7`).
    pub subject: String,
    /// How many times in this transaction.
    pub count: u64,
    /// The latest message.
    pub message: String,
}

/// Totals of the whole database, read at the end of each transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DbTotals {
    /// Readings stored.
    pub readings_stored: u64,
    /// Blocks verified and stored.
    pub blocks_verified: u64,
    /// Payloads quarantined (blocks refused, forks, garbage).
    pub blocks_rejected: u64,
    /// Blocks refused because of one of their frames (unknown meter, bad tag, malformed frame).
    pub frames_rejected: u64,
    /// Redelivered blocks found already stored.
    pub blocks_duplicate: u64,
    /// Readings not stored again because an earlier frame carried them.
    pub readings_duplicate: u64,
    /// Meters that ever sent a stored reading.
    pub meters: u64,
    /// Relays with a stored block.
    pub relays: u64,
    /// Blocks stored without their parent, still waiting for it.
    pub gaps_open: u64,
    /// Forks quarantined.
    pub forks: u64,
    /// Alerts not cleared.
    pub alerts_active: u64,
}

/// What a commit did.
#[derive(Clone, Debug, Default)]
pub struct CommitResult {
    /// One outcome per item, in order.
    pub outcomes: Vec<Outcome>,
    /// Alerts raised.
    pub alerts: Vec<RaisedAlert>,
    /// Database totals after the commit.
    pub totals: DbTotals,
    /// Refusals only counted, not kept: the relay's quarantine allowance was used up.
    pub quarantine_dropped: u64,
    /// Kept refusals whose payload was cut to `quarantine_max_payload_bytes`.
    pub quarantine_truncated: u64,
    /// The transparency log's size after the commit, if it appended to it.
    pub log_size: Option<u64>,
    /// Time this commit spent on the transparency log, µs (planning the
    /// append and writing its hashes), within the commit's own time.
    pub log_micros: u64,
}

/// A stored reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredReading {
    /// Row id (`reading_id` in the API).
    pub id: i64,
    /// The block that stored it.
    pub block_id: i64,
    /// The leaf (frame) of that block that carried it.
    pub leaf: u32,
    /// The meter.
    pub meter_id: u32,
    /// Boot epoch.
    pub epoch: u32,
    /// Sequence number.
    pub seq: u32,
    /// The values.
    #[serde(flatten, with = "reading_json")]
    #[schema(value_type = ReadingJson)]
    pub reading: Reading,
}

/// A reading's values as the API answers them (also their schema in the
/// OpenAPI description): SI units beside the raw energy register.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReadingJson {
    /// When the meter measured, Unix ms (meter clock, synchronised by ACKs).
    pub timestamp_ms: u64,
    /// RMS voltage, V.
    pub voltage_v: f64,
    /// RMS current, A.
    pub current_a: f64,
    /// Active power, W (negative: export).
    pub active_power_w: f64,
    /// Power factor.
    pub power_factor: f64,
    /// Line frequency, Hz.
    pub frequency_hz: f64,
    /// Energy register, Wh.
    pub energy_wh: f64,
    /// Energy register, mWh, exactly as sent.
    pub energy_mwh: u64,
    /// Flags (sensor fault, saturation, …; docs/protocol.md §2).
    pub flags: u16,
}

impl From<&Reading> for ReadingJson {
    fn from(r: &Reading) -> Self {
        ReadingJson {
            timestamp_ms: r.timestamp_ms,
            voltage_v: r.voltage_v(),
            current_a: r.current_a(),
            active_power_w: r.active_power_w(),
            power_factor: r.power_factor(),
            frequency_hz: r.frequency_hz(),
            energy_wh: r.energy_mwh as f64 / 1000.0,
            energy_mwh: r.energy_mwh,
            flags: r.flags,
        }
    }
}

mod reading_json {
    use gridpow_proto::wire::Reading;
    use serde::{Serialize, Serializer};

    pub fn serialize<S: Serializer>(r: &Reading, s: S) -> Result<S::Ok, S::Error> {
        super::ReadingJson::from(r).serialize(s)
    }
}

/// A stored block as the API needs it for an inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockBytes {
    /// Row id.
    pub id: i64,
    /// Relay.
    pub relay_id: u32,
    /// Height.
    pub height: u64,
    /// Header hash.
    pub hash: Hash,
    /// The raw block.
    pub raw: Vec<u8>,
    /// Its entry's index in the transparency log.
    pub log_index: Option<u64>,
}

/// A column value exactly as stored. The ledger check compares cells with
/// what the block bytes imply, so a value of the wrong type is a mismatch it
/// reports, not a read error that hides which block is bad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// An integer (or a boolean as 0 or 1).
    Int(i64),
    /// A blob.
    Bytes(Vec<u8>),
    /// Text.
    Text(String),
    /// SQL NULL.
    Null,
    /// Anything else (a real, another type), described.
    Other(String),
}

impl Cell {
    /// The integer, if it is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(v) => Some(*v),
            _ => None,
        }
    }
}

/// Column names of [`LedgerBlock::header`], in order.
pub const BLOCK_HEADER_COLUMNS: [&str; 9] = [
    "relay_id",
    "height",
    "hash",
    "prev_hash",
    "merkle_root",
    "difficulty",
    "leaf_count",
    "time_ms",
    "nonce",
];

/// A stored block for the ledger check: every column as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerBlock {
    /// Row id.
    pub id: i64,
    /// Header columns, named by [`BLOCK_HEADER_COLUMNS`].
    pub header: [Cell; 9],
    /// The raw block (a non-blob value reads as empty).
    pub raw: Vec<u8>,
    /// `linked`.
    pub linked: Cell,
    /// `first_reading_id`.
    pub first_reading_id: Cell,
    /// `reading_count`.
    pub reading_count: Cell,
    /// `duplicate_count`.
    pub duplicate_count: Cell,
    /// `min_ts` (time span of its stored readings).
    pub min_ts: Cell,
    /// `max_ts`.
    pub max_ts: Cell,
}

/// Column names of [`LedgerReading::cells`], in order.
pub const READING_COLUMNS: [&str; 13] = [
    "block_id",
    "leaf",
    "meter_id",
    "epoch",
    "seq",
    "ts_ms",
    "voltage_cv",
    "current_ma",
    "power_dw",
    "pf_e4",
    "freq_mhz",
    "energy_mwh",
    "flags",
];

/// A stored reading row for the ledger check: every column as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerReading {
    /// Row id.
    pub id: i64,
    /// The other columns, named by [`READING_COLUMNS`].
    pub cells: [Cell; 13],
}

impl LedgerReading {
    /// The cells a reading row must hold: what `commit` writes for `row` of block `block_id`.
    pub fn expected_cells(block_id: i64, row: &crate::verified::ReadingRow) -> [Cell; 13] {
        let r = &row.reading;
        [
            Cell::Int(block_id),
            Cell::Int(i64::from(row.leaf)),
            Cell::Int(i64::from(row.meter_id)),
            Cell::Int(i64::from(row.epoch)),
            Cell::Int(i64::from(row.seq)),
            Cell::Int(r.timestamp_ms as i64),
            Cell::Int(i64::from(r.voltage_cv)),
            Cell::Int(i64::from(r.current_ma)),
            Cell::Int(i64::from(r.active_power_dw)),
            Cell::Int(i64::from(r.power_factor_e4)),
            Cell::Int(i64::from(r.frequency_mhz)),
            Cell::Int(r.energy_mwh as i64),
            Cell::Int(i64::from(r.flags)),
        ]
    }
}

/// An entry of a block's time-index directory: the readings
/// `first_id..=last_id` of one meter in one block and their time span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The block.
    pub block_id: i64,
    /// First reading id.
    pub first_id: i64,
    /// Last reading id.
    pub last_id: i64,
    /// The meter.
    pub meter_id: i64,
    /// Earliest timestamp.
    pub min_ts: i64,
    /// Latest timestamp.
    pub max_ts: i64,
}

/// Bytes of one directory entry.
pub const RUN_LEN: usize = 32;

/// Encodes a block's directory: entries ascending by meter, 32 bytes each,
/// `meter_id u32 | first_id i64 | count u32 | min_ts i64 | max_ts i64`, little-endian.
pub fn encode_directory(runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::with_capacity(runs.len() * RUN_LEN);
    for r in runs {
        out.extend_from_slice(&(r.meter_id as u32).to_le_bytes());
        out.extend_from_slice(&r.first_id.to_le_bytes());
        out.extend_from_slice(&((r.last_id - r.first_id + 1) as u32).to_le_bytes());
        out.extend_from_slice(&r.min_ts.to_le_bytes());
        out.extend_from_slice(&r.max_ts.to_le_bytes());
    }
    out
}

fn run_at(block_id: i64, e: &[u8]) -> Option<Run> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(e.get(o..o + 4)?.try_into().ok()?));
    let i64_at = |o: usize| Some(i64::from_le_bytes(e.get(o..o + 8)?.try_into().ok()?));
    let first_id = i64_at(4)?;
    Some(Run {
        block_id,
        meter_id: i64::from(u32_at(0)?),
        first_id,
        last_id: first_id
            .checked_add(i64::from(u32_at(12)?))?
            .checked_sub(1)?,
        min_ts: i64_at(16)?,
        max_ts: i64_at(24)?,
    })
}

/// Decodes a block's directory; `None` if it is not whole entries.
pub fn decode_directory(block_id: i64, bytes: &[u8]) -> Option<Vec<Run>> {
    if bytes.len() % RUN_LEN != 0 {
        return None;
    }
    bytes
        .chunks_exact(RUN_LEN)
        .map(|e| run_at(block_id, e))
        .collect()
}

/// Finds `meter_id`'s entry in a block's directory (binary search).
pub fn find_in_directory(block_id: i64, bytes: &[u8], meter_id: u32) -> Option<Run> {
    let n = bytes.len() / RUN_LEN;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let e = bytes.get(mid * RUN_LEN..(mid + 1) * RUN_LEN)?;
        let m = u32::from_le_bytes(e.get(..4)?.try_into().ok()?);
        match m.cmp(&meter_id) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return run_at(block_id, e),
        }
    }
    None
}

/// One interval of the de-duplication table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CoverageRow {
    /// Meter.
    pub meter_id: i64,
    /// Boot epoch.
    pub epoch: i64,
    /// First sequence number.
    pub first_seq: i64,
    /// Last sequence number.
    pub last_seq: i64,
}

/// A block without its bytes, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BlockSummary {
    /// Row id.
    pub id: i64,
    /// Relay.
    pub relay_id: u32,
    /// Height.
    pub height: u64,
    /// Header hash, hex.
    pub hash: String,
    /// Previous hash, hex.
    pub prev_hash: String,
    /// Claimed difficulty.
    pub difficulty: u8,
    /// Leading zero bits the hash actually has.
    pub work_bits: u8,
    /// Leaves.
    pub leaf_count: u32,
    /// Sealed at (relay clock), Unix ms.
    pub time_ms: u64,
    /// Received at (server clock), Unix ms.
    pub received_ms: u64,
    /// Readings stored with it.
    pub readings: u64,
    /// Readings already stored from other frames.
    pub duplicate_readings: u64,
    /// Parent stored and link checked.
    pub linked: bool,
    /// Size in bytes.
    pub bytes: u64,
}

/// A meter as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MeterSummary {
    /// Id.
    pub meter_id: u32,
    /// Readings stored.
    pub readings: u64,
    /// First stored, server clock, Unix ms.
    pub first_seen_ms: u64,
    /// Last stored, server clock, Unix ms.
    pub last_received_ms: u64,
    /// Reported silent (no reading for N intervals).
    pub silent: bool,
    /// Its newest reading (highest epoch and sequence number).
    pub last: Option<LastReading>,
}

/// The newest reading of a meter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LastReading {
    /// Boot epoch.
    pub epoch: u32,
    /// Sequence number.
    pub seq: u32,
    /// Values.
    #[serde(flatten, with = "reading_json")]
    #[schema(value_type = ReadingJson)]
    pub reading: Reading,
}

/// A relay with its chain head and PoW statistics.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RelaySummary {
    /// Id.
    pub relay_id: u32,
    /// Blocks stored.
    pub blocks: u64,
    /// Readings stored.
    pub readings: u64,
    /// Highest stored height.
    pub head_height: Option<u64>,
    /// Its hash, hex.
    pub head_hash: Option<String>,
    /// Highest height up to which the chain is complete from genesis (or from the lowest stored block).
    pub linked_height: Option<u64>,
    /// Difficulty of the head block.
    pub difficulty: Option<u8>,
    /// Mean leading zero bits of the last 100 block hashes.
    pub mean_work_bits: Option<f64>,
    /// Mean time between the relay's seal times over the last 100 blocks, ms
    /// (an upper bound of the PoW solve time; blocks are sealed by count or age).
    pub mean_block_interval_ms: Option<f64>,
    /// Expected PoW tries per block at the head's difficulty (2^d).
    pub expected_tries: Option<f64>,
    /// Last block received at, Unix ms.
    pub last_block_ms: Option<u64>,
    /// Open gaps: missing height ranges `[from, to]`.
    #[schema(value_type = Vec<Vec<u64>>)]
    pub gaps: Vec<(u64, u64)>,
    /// Forks quarantined.
    pub forks: u64,
    /// Meters whose readings its blocks carried.
    pub meters_heard: u64,
    /// Of those, meters another relay's blocks carried too (cells overlap).
    pub meters_shared: u64,
    /// Readings its blocks carried that were stored already, from another
    /// relay's block or an earlier frame of the meter (spec §9.5), so not
    /// stored again.
    pub readings_duplicate: u64,
}

/// An alert row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AlertRow {
    /// Row id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Subject (`meter:5`, `relay:1:height:9`).
    pub subject: String,
    /// The meter concerned, if any.
    pub meter_id: Option<u32>,
    /// The relay concerned, if any.
    pub relay_id: Option<u32>,
    /// First raised, Unix ms.
    pub first_ms: u64,
    /// Last raised, Unix ms.
    pub last_ms: u64,
    /// Times raised.
    pub count: u64,
    /// Latest message.
    pub message: String,
    /// When cleared (gap filled, meter heard again), if it was.
    pub cleared_ms: Option<u64>,
    /// `critical` (a fork: the relay's key signed two histories) or `warning`.
    #[schema(value_type = String)]
    pub severity: &'static str,
}

/// A quarantine row without its raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Received at, Unix ms.
    pub received_ms: u64,
    /// Topic.
    pub topic: String,
    /// Reason.
    pub kind: String,
    /// Details.
    pub detail: String,
    /// Relay named by the header, if it parsed.
    pub relay_id: Option<u32>,
    /// Height named by the header.
    pub height: Option<u64>,
    /// Header hash, hex.
    pub hash: Option<String>,
    /// Size of the payload as received.
    pub bytes: u64,
    /// Bytes of it kept (at most `quarantine_max_payload_bytes`).
    pub kept_bytes: u64,
    /// First 64 bytes of the payload, hex.
    pub head_hex: String,
}

/// What the writer does with the database: commit batches, raise and sweep
/// alerts, prune the quarantine. Opened with [`open_store`].
pub trait IngestStore: Send {
    /// Stores a batch atomically (see the module docs) and returns one outcome
    /// per item. On error nothing is stored and the caller retries later.
    fn commit(&mut self, items: &[Ingest], now_ms: u64) -> Result<CommitResult, StoreError>;

    /// Raises (or raises again) one alert outside a commit, in its own
    /// transaction: for findings made after the commit that stored their
    /// evidence, such as an equivocating meter.
    fn raise_alert(&mut self, alert: &NewAlert, now_ms: u64) -> Result<RaisedAlert, StoreError>;

    /// Marks meters not heard from since `now_ms - silent_after_ms` as silent
    /// (once each) and raises alerts; `started_ms` is when this server started,
    /// so a restart does not report every meter at once.
    fn sweep_silent(
        &mut self,
        now_ms: u64,
        silent_after_ms: u64,
        started_ms: u64,
    ) -> Result<Vec<RaisedAlert>, StoreError>;

    /// Deletes quarantine rows received before `now_ms - quarantine_retention_ms`,
    /// except fork evidence; returns how many.
    fn prune_quarantine(&mut self, now_ms: u64) -> Result<u64, StoreError>;
}

/// What the HTTP API and the dashboard read: meters, readings, relays,
/// blocks, alerts, the quarantine and the fleet views.
pub trait QueryStore: Send {
    /// Database totals.
    fn totals(&mut self) -> Result<DbTotals, StoreError>;

    /// Every meter with stored readings, ascending.
    fn meters(&mut self) -> Result<Vec<MeterSummary>, StoreError> {
        reads::meters(self)
    }

    /// Readings of `meter_id` with `from_ms <= timestamp <= to_ms`, ascending by
    /// timestamp, at most `limit` (the newest ones if there are more).
    fn meter_readings(
        &mut self,
        meter_id: u32,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError>;

    /// Every relay with its chain statistics.
    fn relays(&mut self) -> Result<Vec<RelaySummary>, StoreError>;

    /// The newest blocks, of one relay or all, at most `limit`.
    fn blocks(
        &mut self,
        relay_id: Option<u32>,
        limit: usize,
    ) -> Result<Vec<BlockSummary>, StoreError> {
        reads::blocks(self, relay_id, limit)
    }

    /// A reading with the block that stored it.
    fn reading_with_block(
        &mut self,
        reading_id: i64,
    ) -> Result<Option<(StoredReading, BlockBytes)>, StoreError> {
        reads::reading_with_block(self, reading_id)
    }

    /// The newest alerts, at most `limit`.
    fn alerts(&mut self, limit: usize) -> Result<Vec<AlertRow>, StoreError> {
        reads::alerts(self, limit)
    }

    /// The newest quarantine rows, at most `limit`.
    fn quarantine(&mut self, limit: usize) -> Result<Vec<QuarantineRow>, StoreError> {
        reads::quarantine(self, limit)
    }

    /// The transparency log's size: the entries appended so far.
    fn log_size(&mut self) -> Result<u64, StoreError> {
        log::size(self)
    }

    /// The log's stored hashes at `indexes` (the tlog layout), in that order.
    fn log_hashes(&mut self, indexes: &[u64]) -> Result<Vec<Hash>, StoreError> {
        log::hashes(self, indexes)
    }

    /// Rows of the log's stored hashes (the ledger check compares it with
    /// what the log's size needs).
    fn log_hash_rows(&mut self) -> Result<u64, StoreError> {
        log::hash_rows(self)
    }

    /// The raw block of log entry `index`, if the log has one.
    fn log_block(&mut self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        log::block(self, index)
    }

    /// The log's entries `from..to`, in order.
    fn log_entries(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<Vec<gridpow_proto::wire::LogLeafRepr>, StoreError> {
        log::entries(self, from, to)
    }

    /// Runs one read-only query written in the SQL both backends speak
    /// (`$n` placeholders, see [`fleet`]) and returns its rows as cells.
    fn select(&mut self, sql: &str, params: &[SqlParam]) -> Result<Vec<Vec<Cell>>, StoreError>;

    /// One page of the meter table ([`fleet::meter_page`]).
    fn meter_page(&mut self, q: &MeterQuery) -> Result<MeterPage, StoreError> {
        fleet::meter_page(self, q)
    }

    /// The fleet right now ([`fleet::fleet_snapshot`]).
    fn fleet_snapshot(&mut self, band: VoltageBand) -> Result<FleetSnapshot, StoreError> {
        fleet::fleet_snapshot(self, band)
    }

    /// Blocks stored since `since_ms`, per window ([`fleet::ingest_windows`]).
    fn ingest_windows(
        &mut self,
        since_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<IngestWindow>, StoreError> {
        fleet::ingest_windows(self, since_ms, window_ms)
    }

    /// Per relay, what arrived since `since_ms` ([`fleet::relay_traffic`]).
    fn relay_traffic(&mut self, since_ms: u64) -> Result<Vec<RelayTraffic>, StoreError> {
        fleet::relay_traffic(self, since_ms)
    }

    /// Meters whose frames under site key id `key_id` a relay carried at or
    /// after `since_ms` (Unix ms), ascending: who still sends with a key id
    /// an operator wants to retire (`gridpow keys retire-site`).
    fn meters_sending_with_key(
        &mut self,
        key_id: u8,
        since_ms: u64,
    ) -> Result<Vec<u32>, StoreError> {
        let rows = self.select(
            "SELECT DISTINCT meter_id FROM relay_meters WHERE last_key_id = CAST($1 AS BIGINT) \
             AND last_heard_ms >= CAST($2 AS BIGINT) ORDER BY meter_id",
            &[
                SqlParam::Int(i64::from(key_id)),
                SqlParam::Int(since_ms as i64),
            ],
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| match r.first() {
                Some(Cell::Int(m)) => u32::try_from(*m).ok(),
                _ => None,
            })
            .collect())
    }

    /// Blocks, their bytes and the readings they stored ([`fleet::ledger_size`]).
    fn ledger_size(&mut self) -> Result<fleet::LedgerSize, StoreError> {
        fleet::ledger_size(self)
    }

    /// Each stored reading's delay from meter to server, ascending ([`fleet::delivery_latencies`]).
    fn delivery_latencies(&mut self) -> Result<Vec<i64>, StoreError> {
        fleet::delivery_latencies(self)
    }

    /// A block with up to `limit` of its readings ([`fleet::block_readings`]).
    fn block_readings(
        &mut self,
        block_id: i64,
        limit: usize,
    ) -> Result<Option<BlockReadings>, StoreError> {
        fleet::block_readings(self, block_id, limit)
    }
}

/// What the ledger check (`verify-ledger`) reads: every stored row exactly
/// as stored, so it can recompute what the blocks imply.
pub trait AuditStore: Send {
    /// Every quarantine row refused as a fork, ascending (for the ledger check).
    fn ledger_forks(&mut self) -> Result<Vec<ForkEvidence>, StoreError>;

    /// Relays with stored blocks, ascending (for the ledger check).
    fn ledger_relays(&mut self) -> Result<Vec<i64>, StoreError>;

    /// Up to `limit` stored blocks of `relay_id` with a height above
    /// `after_height` (all heights when `None`, even negative ones a tampered
    /// row may hold), ascending by height.
    fn ledger_blocks(
        &mut self,
        relay_id: i64,
        after_height: Option<i64>,
        limit: usize,
    ) -> Result<Vec<LedgerBlock>, StoreError>;

    /// Reading rows with ids in `first_id .. first_id + count`, ascending.
    fn ledger_readings(
        &mut self,
        first_id: i64,
        count: u64,
    ) -> Result<Vec<LedgerReading>, StoreError>;

    /// The time-index directory of block `block_id`, as stored (`None`: no row;
    /// a non-blob value reads as empty).
    fn ledger_directory(&mut self, block_id: i64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Number of reading rows (whatever block they claim).
    fn reading_rows(&mut self) -> Result<u64, StoreError>;

    /// Number of time-index rows (one per block that stored readings).
    fn directory_rows(&mut self) -> Result<u64, StoreError>;

    /// The whole de-duplication table, ascending.
    fn ledger_coverage(&mut self) -> Result<Vec<CoverageRow>, StoreError>;
}

/// A store opened for reading: what the API and the ledger check use.
pub trait ReadStore: QueryStore + AuditStore {}

impl<T: QueryStore + AuditStore + ?Sized> ReadStore for T {}

/// A store opened for writing, which the writer also queries (to compare a
/// repeated reading with the stored one) and tests read back.
pub trait Store: IngestStore + QueryStore + AuditStore {}

impl<T: IngestStore + QueryStore + AuditStore + ?Sized> Store for T {}
