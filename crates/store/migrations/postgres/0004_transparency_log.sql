-- gridpow grid server, schema version 4: the transparency log (docs/ledger.md).
--
-- Each stored block's place in the one global log, in commit order. NULL only
-- for blocks stored before version 4, until the writer appends them at start-up.
ALTER TABLE blocks ADD COLUMN log_index BIGINT;
CREATE UNIQUE INDEX blocks_log_index ON blocks (log_index);
-- The log's Merkle tree as stored hashes (the tlog layout: entry n's leaf hash
-- and the hashes of the complete subtrees it closes, at stored_hash_index(level, n)),
-- so tiles, tree heads and proofs are read, never recomputed from all entries.
CREATE TABLE log_hashes (
    idx  BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL
);
