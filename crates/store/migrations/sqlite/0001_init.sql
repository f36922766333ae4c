-- gridpow grid server, SQLite schema version 1.
--
-- The ledger: blocks (raw bytes kept, header fields in columns) and the
-- readings their frames decrypt to, each reading stored once.
-- Integers that are u64 on the wire (nonce, energy) are stored bit-cast to i64.

-- One row per relay with a stored block: running totals.
CREATE TABLE relays (
    relay_id      INTEGER PRIMARY KEY,
    blocks        INTEGER NOT NULL,
    readings      INTEGER NOT NULL,
    leaves        INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_block_ms INTEGER NOT NULL
);

-- Verified blocks. UNIQUE (relay_id, height) makes the database the fork arbiter.
CREATE TABLE blocks (
    id               INTEGER PRIMARY KEY,
    relay_id         INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    hash             BLOB    NOT NULL,
    prev_hash        BLOB    NOT NULL,
    merkle_root      BLOB    NOT NULL,
    difficulty       INTEGER NOT NULL,
    leaf_count       INTEGER NOT NULL,
    time_ms          INTEGER NOT NULL,
    nonce            INTEGER NOT NULL,
    raw              BLOB    NOT NULL,
    linked           INTEGER NOT NULL,  -- 1: parent stored and link checked (or genesis)
    received_ms      INTEGER NOT NULL,
    first_reading_id INTEGER NOT NULL,  -- its new readings have ids first_reading_id ..
    reading_count    INTEGER NOT NULL,  -- .. first_reading_id + reading_count - 1
    duplicate_count  INTEGER NOT NULL,  -- readings of its frames stored by earlier blocks
    min_ts           INTEGER,           -- time span of its stored readings (NULL: none)
    max_ts           INTEGER,
    UNIQUE (relay_id, height)
);
CREATE UNIQUE INDEX blocks_hash ON blocks (hash);
-- Time-major entry to the readings: blocks by the newest reading they stored
-- (covering the time-range query, so it never reads the block rows).
CREATE INDEX blocks_time ON blocks (max_ts, min_ts);

-- Readings, append-only, no secondary index: each block's new readings take a
-- contiguous id range, sorted by (meter, epoch, seq).
CREATE TABLE readings (
    id         INTEGER PRIMARY KEY,
    block_id   INTEGER NOT NULL,
    leaf       INTEGER NOT NULL,
    meter_id   INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    voltage_cv INTEGER NOT NULL,
    current_ma INTEGER NOT NULL,
    power_dw   INTEGER NOT NULL,
    pf_e4      INTEGER NOT NULL,
    freq_mhz   INTEGER NOT NULL,
    energy_mwh INTEGER NOT NULL,
    flags      INTEGER NOT NULL
);

-- The time index: per block, a directory of its new readings by meter, one
-- row per block (appended): entries of 32 bytes, ascending by meter,
--   meter_id u32 | first_id i64 | count u32 | min_ts i64 | max_ts i64 (little-endian).
-- A query walks blocks_time and binary-searches each directory; nothing is
-- indexed per reading or per meter (a meter-first index would dirty one page
-- per meter in every transaction).
CREATE TABLE block_index (
    block_id  INTEGER PRIMARY KEY,
    directory BLOB NOT NULL
);

-- De-duplication: per meter and boot epoch, the sequence numbers already
-- stored, as disjoint non-adjacent intervals (normally one per epoch).
CREATE TABLE coverage (
    meter_id  INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (meter_id, epoch, first_seq)
) WITHOUT ROWID;

-- Meters heard from, with their newest reading (highest epoch, seq).
CREATE TABLE meters (
    meter_id         INTEGER PRIMARY KEY,
    first_seen_ms    INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL,
    readings         INTEGER NOT NULL,
    last_epoch       INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_ts_ms       INTEGER NOT NULL,
    last_voltage_cv  INTEGER NOT NULL,
    last_current_ma  INTEGER NOT NULL,
    last_power_dw    INTEGER NOT NULL,
    last_pf_e4       INTEGER NOT NULL,
    last_freq_mhz    INTEGER NOT NULL,
    last_energy_mwh  INTEGER NOT NULL,
    last_flags       INTEGER NOT NULL,
    silent           INTEGER NOT NULL DEFAULT 0
);

-- Refused input, raw bytes kept.
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    detail      TEXT    NOT NULL,
    relay_id    INTEGER,
    height      INTEGER,
    hash        BLOB,
    raw         BLOB    NOT NULL
);
CREATE INDEX quarantine_kind ON quarantine (kind, relay_id);

-- Blocks stored before their parent; closed when the parent arrives.
CREATE TABLE gaps (
    relay_id  INTEGER NOT NULL,
    height    INTEGER NOT NULL,  -- the block waiting for its parent
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    PRIMARY KEY (relay_id, height)
) WITHOUT ROWID;
CREATE INDEX gaps_open ON gaps (relay_id) WHERE closed_ms IS NULL;

-- Alerts, one row per (kind, subject), counted.
CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    meter_id   INTEGER,
    relay_id   INTEGER,
    first_ms   INTEGER NOT NULL,
    last_ms    INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    message    TEXT    NOT NULL,
    cleared_ms INTEGER,
    UNIQUE (kind, subject)
);
CREATE INDEX alerts_recent ON alerts (last_ms);
CREATE INDEX alerts_active ON alerts (kind) WHERE cleared_ms IS NULL;

-- Largest (max_ts - min_ts) of any block: bounds the blocks a time-range query visits.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- Running counters (quarantine by kind, duplicates, meters), updated in each transaction.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
