-- gridpow grid server, PostgreSQL schema version 2: bounded quarantine.
--
-- A quarantined payload keeps at most its first quarantine_max_payload_bytes
-- (the header and signature come first); original_len is its length as
-- received, kept_len what `raw` holds. Each row counts against an allowance
-- (`bucket`): its relay when the refusal came after the relay's signature
-- verified, otherwise -1, shared by every unauthenticated refusal.
ALTER TABLE quarantine ADD COLUMN original_len bigint;
ALTER TABLE quarantine ADD COLUMN kept_len bigint;
ALTER TABLE quarantine ADD COLUMN bucket bigint;
UPDATE quarantine SET
    original_len = octet_length(raw),
    kept_len = octet_length(raw),
    bucket = CASE
        WHEN relay_id IS NOT NULL AND kind IN ('merkle_mismatch', 'malformed_frame', 'unknown_meter',
            'bad_hop_tag', 'bad_tag', 'replay', 'fork', 'bad_genesis', 'too_far_ahead') THEN relay_id
        ELSE -1
    END;
-- Covers the allowance check (rows and kept bytes of one bucket).
CREATE INDEX quarantine_bucket ON quarantine (bucket, kept_len);
-- Retention: the oldest rows first.
CREATE INDEX quarantine_received ON quarantine (received_ms);
