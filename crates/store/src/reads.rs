//! The read queries both backends answer alike, written once in the SQL both
//! speak (`$n` placeholders, explicit `CAST`s) and run through
//! [`QueryStore::select`](crate::QueryStore::select), as the fleet views are.
//! What stays per backend is what their schemas do differently: a meter's
//! time-range readings (SQLite walks block directories, PostgreSQL its run
//! index), the totals (PostgreSQL sums sharded counters) and the relay
//! summary (PostgreSQL reads it in one snapshot).

use crate::shared::{
    alert_row, bytes, hash_of, int, meter_summary, missing_block, opt_bytes, opt_int, text,
    typed_reading, u32_id, u64_of, BlockCols, READING_COLS,
};
use crate::{
    AlertRow, BlockBytes, BlockSummary, MeterSummary, QuarantineRow, QueryStore, SqlParam,
    StoreError, StoredReading,
};

/// A row count or id limit as a parameter.
fn limit(n: usize) -> SqlParam {
    SqlParam::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Every meter with stored readings, ascending.
pub(crate) fn meters<S: QueryStore + ?Sized>(s: &mut S) -> Result<Vec<MeterSummary>, StoreError> {
    let rows = s.select(
        "SELECT meter_id, readings, first_seen_ms, last_received_ms, CASE WHEN silent THEN 1 ELSE 0 END, \
         last_epoch, last_seq, last_ts_ms, last_voltage_cv, last_current_ma, last_power_dw, last_pf_e4, \
         last_freq_mhz, last_energy_mwh, last_flags FROM meters WHERE readings > 0 ORDER BY meter_id",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            let mut c = [0i64; 15];
            for (i, v) in c.iter_mut().enumerate() {
                *v = int("meters", r, i)?;
            }
            meter_summary(&c, c[4] != 0)
        })
        .collect()
}

/// The newest blocks, of one relay (by height) or all (by id), at most `n`.
pub(crate) fn blocks<S: QueryStore + ?Sized>(
    s: &mut S,
    relay_id: Option<u32>,
    n: usize,
) -> Result<Vec<BlockSummary>, StoreError> {
    const COLS: &str = "id, relay_id, height, hash, prev_hash, difficulty, leaf_count, time_ms, received_ms, \
        reading_count, duplicate_count, CASE WHEN linked THEN 1 ELSE 0 END, CAST(length(raw) AS BIGINT)";
    let rows = match relay_id {
        Some(relay) => s.select(
            &format!("SELECT {COLS} FROM blocks WHERE relay_id = $1 ORDER BY height DESC LIMIT $2"),
            &[SqlParam::Int(i64::from(relay)), limit(n)],
        )?,
        None => s.select(
            &format!("SELECT {COLS} FROM blocks ORDER BY id DESC LIMIT $1"),
            &[limit(n)],
        )?,
    };
    rows.iter()
        .map(|r| {
            let i = |k| int("blocks", r, k);
            BlockCols {
                id: i(0)?,
                relay_id: u32_id("blocks", i(1)?)?,
                height: i(2)?,
                hash: bytes("blocks", r, 3)?,
                prev_hash: bytes("blocks", r, 4)?,
                difficulty: i(5)?,
                leaf_count: i(6)?,
                time_ms: i(7)?,
                received_ms: i(8)?,
                readings: i(9)?,
                duplicates: i(10)?,
                linked: i(11)? != 0,
                bytes: i(12)?,
            }
            .summary()
        })
        .collect()
}

/// A reading with the block that stored it (one statement, so one snapshot).
pub(crate) fn reading_with_block<S: QueryStore + ?Sized>(
    s: &mut S,
    reading_id: i64,
) -> Result<Option<(StoredReading, BlockBytes)>, StoreError> {
    let cols = READING_COLS
        .split(", ")
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = s.select(
        &format!(
            "SELECT {cols}, b.id, b.relay_id, b.height, b.hash, b.raw, b.log_index FROM readings r \
             LEFT JOIN blocks b ON b.id = r.block_id WHERE r.id = $1"
        ),
        &[SqlParam::Int(reading_id)],
    )?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let mut ints = [0i64; 14];
    for (k, v) in ints.iter_mut().enumerate() {
        *v = int("readings", r, k)?;
    }
    let reading = typed_reading("readings", &ints)?;
    let Some(id) = opt_int(r, 14) else {
        return Err(missing_block(reading_id, reading.block_id));
    };
    Ok(Some((
        reading,
        BlockBytes {
            id,
            relay_id: u32_id("blocks", int("blocks", r, 15)?)?,
            height: u64_of(int("blocks", r, 16)?),
            hash: hash_of("blocks", &bytes("blocks", r, 17)?)?,
            raw: bytes("blocks", r, 18)?,
            log_index: opt_int(r, 19).map(u64_of),
        },
    )))
}

/// The newest alerts, at most `n`.
pub(crate) fn alerts<S: QueryStore + ?Sized>(
    s: &mut S,
    n: usize,
) -> Result<Vec<AlertRow>, StoreError> {
    let rows = s.select(
        "SELECT id, kind, subject, meter_id, relay_id, first_ms, last_ms, count, message, cleared_ms FROM alerts \
         ORDER BY last_ms DESC, id DESC LIMIT $1",
        &[limit(n)],
    )?;
    rows.iter()
        .map(|r| {
            let id = |k| opt_int(r, k).map(|v| u32_id("alerts", v)).transpose();
            Ok(alert_row(
                int("alerts", r, 0)?,
                text("alerts", r, 1)?,
                text("alerts", r, 2)?,
                id(3)?,
                id(4)?,
                int("alerts", r, 5)?,
                int("alerts", r, 6)?,
                int("alerts", r, 7)?,
                text("alerts", r, 8)?,
                opt_int(r, 9),
            ))
        })
        .collect()
}

/// The newest quarantine rows, at most `n`, with the first 64 bytes of each payload.
pub(crate) fn quarantine<S: QueryStore + ?Sized>(
    s: &mut S,
    n: usize,
) -> Result<Vec<QuarantineRow>, StoreError> {
    let rows = s.select(
        "SELECT id, received_ms, topic, kind, detail, relay_id, height, hash, \
         COALESCE(original_len, CAST(length(raw) AS BIGINT)), substr(raw, 1, 64), CAST(length(raw) AS BIGINT) \
         FROM quarantine ORDER BY id DESC LIMIT $1",
        &[limit(n)],
    )?;
    rows.iter()
        .map(|r| {
            let t = |k| text("quarantine", r, k);
            Ok(QuarantineRow {
                id: int("quarantine", r, 0)?,
                received_ms: u64_of(int("quarantine", r, 1)?),
                topic: t(2)?,
                kind: t(3)?,
                detail: t(4)?,
                relay_id: opt_int(r, 5).map(|v| u32_id("quarantine", v)).transpose()?,
                height: opt_int(r, 6).map(u64_of),
                hash: opt_bytes(r, 7).map(hex::encode),
                bytes: u64_of(int("quarantine", r, 8)?),
                head_hex: hex::encode(opt_bytes(r, 9).unwrap_or_default()),
                kept_bytes: u64_of(int("quarantine", r, 10)?),
            })
        })
        .collect()
}
