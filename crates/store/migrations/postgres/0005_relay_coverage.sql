-- gridpow grid server, schema version 5: which relays hear which meters.
--
-- A meter at the edge of two cells is heard by both relays; both put its
-- frames in their blocks and the server stores each reading once (spec §9.5).
-- Per relay and meter: readings its blocks stored first, readings they carried
-- that an earlier block (another relay's, or the meter's own re-sent frame)
-- had stored, when the relay last carried the meter and under which site
-- key id (`gridpow keys retire-site` asks which meters still send with a key
-- id). Written once per transaction per pair, like the meters' rows.
CREATE TABLE relay_meters (
    relay_id           BIGINT NOT NULL,
    meter_id           BIGINT NOT NULL,
    readings_first     BIGINT NOT NULL,
    readings_duplicate BIGINT NOT NULL,
    last_heard_ms      BIGINT NOT NULL,
    last_key_id        BIGINT NOT NULL,  -- 0: not known (carried before version 5)
    PRIMARY KEY (relay_id, meter_id)
);
-- Databases from before version 5: what their stored readings tell (the
-- duplicates they carried were not kept per meter and start at 0).
INSERT INTO relay_meters (relay_id, meter_id, readings_first, readings_duplicate, last_heard_ms, last_key_id)
    SELECT b.relay_id, r.meter_id, COUNT(*), 0, MAX(b.received_ms), 0
    FROM readings r JOIN blocks b ON b.id = r.block_id
    GROUP BY b.relay_id, r.meter_id;
