-- gridpow grid server, PostgreSQL schema version 1.
--
-- The same ledger as the SQLite schema: blocks (raw bytes kept, header fields
-- in columns) and the readings their frames decrypt to, each reading stored
-- once. u32 values are stored as bigint; u64 values (nonce, energy, times) are
-- bit-cast to bigint. Several grid servers may write concurrently: see
-- `src/store/postgres/mod.rs` for the locking protocol and the index design.

-- One row per relay with a stored block: running totals.
CREATE TABLE relays (
    relay_id      bigint PRIMARY KEY,
    blocks        bigint NOT NULL,
    readings      bigint NOT NULL,
    leaves        bigint NOT NULL,
    first_seen_ms bigint NOT NULL,
    last_block_ms bigint NOT NULL
) WITH (fillfactor = 50);

-- Block ids come from a sequence; reading ids are derived from them.
CREATE SEQUENCE block_ids AS bigint;

-- Verified blocks. UNIQUE (relay_id, height) is the last word on forks.
-- A block's new readings have the ids first_reading_id .. first_reading_id +
-- reading_count - 1, where first_reading_id = id * 2^19 (a block carries at
-- most 65 535 × 6 < 2^19 readings), so ids need no shared counter.
CREATE TABLE blocks (
    id               bigint   PRIMARY KEY,
    relay_id         bigint   NOT NULL,
    height           bigint   NOT NULL,
    hash             bytea    NOT NULL,
    prev_hash        bytea    NOT NULL,
    merkle_root      bytea    NOT NULL,
    difficulty       integer  NOT NULL,
    leaf_count       bigint   NOT NULL,
    time_ms          bigint   NOT NULL,
    nonce            bigint   NOT NULL,
    raw              bytea    NOT NULL,
    linked           boolean  NOT NULL,  -- parent stored and link checked (or genesis)
    received_ms      bigint   NOT NULL,
    first_reading_id bigint   NOT NULL,
    reading_count    bigint   NOT NULL,
    duplicate_count  bigint   NOT NULL,  -- readings of its frames stored by earlier blocks
    min_ts           bigint,             -- time span of its stored readings (NULL: none)
    max_ts           bigint,
    UNIQUE (relay_id, height)
);
-- Sealed frames do not compress: skip the attempt.
ALTER TABLE blocks ALTER COLUMN raw SET STORAGE EXTERNAL;
CREATE UNIQUE INDEX blocks_hash ON blocks (hash);

-- Readings, append-only; the only index is the primary key, whose keys grow
-- with the block ids (appends to the right edge of the B-tree).
CREATE TABLE readings (
    id         bigint   NOT NULL,
    block_id   bigint   NOT NULL,
    meter_id   bigint   NOT NULL,
    epoch      bigint   NOT NULL,
    seq        bigint   NOT NULL,
    ts_ms      bigint   NOT NULL,
    energy_mwh bigint   NOT NULL,
    current_ma bigint   NOT NULL,
    leaf       integer  NOT NULL,
    voltage_cv integer  NOT NULL,
    power_dw   integer  NOT NULL,
    freq_mhz   integer  NOT NULL,
    flags      integer  NOT NULL,
    pf_e4      smallint NOT NULL,
    PRIMARY KEY (id)
);

-- The time index: per block and meter, the contiguous id range of the
-- meter's new readings in that block and their time span (the SQLite
-- schema's per-block directory, one row per entry). One B-tree, by meter and
-- time, so a meter's time-range query reads only its own runs; the ledger
-- check finds a block's runs through a BRIN index (runs are appended in
-- block order).
CREATE TABLE runs (
    block_id bigint NOT NULL,
    meter_id bigint NOT NULL,
    first_id bigint NOT NULL,
    count    bigint NOT NULL,
    min_ts   bigint NOT NULL,
    max_ts   bigint NOT NULL
);
CREATE INDEX runs_meter_time ON runs (meter_id, max_ts, first_id);
CREATE INDEX runs_block ON runs USING brin (block_id) WITH (pages_per_range = 8);

-- De-duplication: per meter and boot epoch, the sequence numbers already
-- stored, as disjoint non-adjacent intervals (normally one per epoch).
CREATE TABLE coverage (
    meter_id  bigint NOT NULL,
    epoch     bigint NOT NULL,
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL,
    PRIMARY KEY (meter_id, epoch, first_seq)
) WITH (fillfactor = 50);

-- Meters heard from, with their newest reading (highest epoch, seq). A
-- transaction storing a meter's readings holds its row lock (FOR UPDATE).
CREATE TABLE meters (
    meter_id         bigint   PRIMARY KEY,
    first_seen_ms    bigint   NOT NULL,
    last_received_ms bigint   NOT NULL,
    readings         bigint   NOT NULL,
    last_epoch       bigint   NOT NULL,
    last_seq         bigint   NOT NULL,
    last_ts_ms       bigint   NOT NULL,
    last_voltage_cv  integer  NOT NULL,
    last_current_ma  bigint   NOT NULL,
    last_power_dw    integer  NOT NULL,
    last_pf_e4       smallint NOT NULL,
    last_freq_mhz    integer  NOT NULL,
    last_energy_mwh  bigint   NOT NULL,
    last_flags       integer  NOT NULL,
    silent           boolean  NOT NULL DEFAULT false
) WITH (fillfactor = 50);

-- Refused input, raw bytes kept.
CREATE TABLE quarantine (
    id          bigserial PRIMARY KEY,
    received_ms bigint NOT NULL,
    topic       text   NOT NULL,
    kind        text   NOT NULL,
    detail      text   NOT NULL,
    relay_id    bigint,
    height      bigint,
    hash        bytea,
    raw         bytea  NOT NULL
);
CREATE INDEX quarantine_kind ON quarantine (kind, relay_id);

-- Blocks stored before their parent; closed when the parent arrives.
CREATE TABLE gaps (
    relay_id  bigint NOT NULL,
    height    bigint NOT NULL,  -- the block waiting for its parent
    opened_ms bigint NOT NULL,
    closed_ms bigint,
    PRIMARY KEY (relay_id, height)
);
CREATE INDEX gaps_open ON gaps (relay_id) WHERE closed_ms IS NULL;

-- Alerts, one row per (kind, subject), counted.
CREATE TABLE alerts (
    id         bigserial PRIMARY KEY,
    kind       text   NOT NULL,
    subject    text   NOT NULL,
    meter_id   bigint,
    relay_id   bigint,
    first_ms   bigint NOT NULL,
    last_ms    bigint NOT NULL,
    count      bigint NOT NULL,
    message    text   NOT NULL,
    cleared_ms bigint,
    UNIQUE (kind, subject)
);
CREATE INDEX alerts_recent ON alerts (last_ms);
CREATE INDEX alerts_active ON alerts (kind) WHERE cleared_ms IS NULL;

-- Largest (max_ts - min_ts) of any run: bounds the runs a time-range query visits.
CREATE TABLE meta (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO meta (name, value) VALUES ('max_run_span_ms', 0);

-- Running counters (quarantine by kind, duplicates, meters), summed over
-- shards: each connection adds to its own shard, so concurrent servers do
-- not queue on one row.
CREATE TABLE counters (
    name  text     NOT NULL,
    shard smallint NOT NULL,
    value bigint   NOT NULL,
    PRIMARY KEY (name, shard)
) WITH (fillfactor = 50);
