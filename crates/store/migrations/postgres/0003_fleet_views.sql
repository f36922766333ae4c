-- gridpow grid server, schema version 3: indexes for the fleet views.
--
-- The meter table counts each meter's active alerts, and filters by them.
CREATE INDEX alerts_meter_active ON alerts (meter_id) WHERE cleared_ms IS NULL;
-- Ingest per time window and per relay walks the blocks by arrival time.
CREATE INDEX blocks_received ON blocks (received_ms);
