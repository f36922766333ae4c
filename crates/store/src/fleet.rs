//! Fleet views for the dashboard and the API: a page of meters (search, filter,
//! sort), the fleet right now (power, energy, voltage against the nominal
//! band), ingest per fixed time window, and a block's readings.
//!
//! Each query is written once, in the SQL both backends speak (`$n`
//! placeholders with explicit `CAST`s, sums cast to `BIGINT`), and runs
//! through [`QueryStore::select`](crate::QueryStore::select); the backends only execute it.

use serde::Serialize;

use super::shared::{int, ints, opt_int, typed_reading, u32_id, u64_of, READING_COLS};
use super::{Cell, MeterSummary, QueryStore, StoreError, StoredReading};

/// A query parameter of the shared SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlParam {
    /// A `BIGINT`.
    Int(i64),
    /// A `TEXT`.
    Text(String),
}

pub use crate::plausibility::VoltageBand;

/// Which meters a page lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeterFilter {
    /// Every meter with stored readings.
    #[default]
    All,
    /// Meters reported silent.
    Silent,
    /// Meters with an active (uncleared) alert.
    Alerting,
    /// Reporting meters whose last voltage is outside the band.
    OutOfBand,
}

/// The column a page is sorted by (ties by meter id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeterSort {
    /// Meter id.
    #[default]
    Id,
    /// Last stored (server clock).
    LastSeen,
    /// Last active power.
    Power,
    /// Last voltage.
    Voltage,
    /// Last energy register.
    Energy,
    /// Readings stored.
    Readings,
    /// Active alerts.
    Alerts,
}

impl MeterSort {
    fn column(self) -> &'static str {
        match self {
            MeterSort::Id => "m.meter_id",
            MeterSort::LastSeen => "m.last_received_ms",
            MeterSort::Power => "m.last_power_dw",
            MeterSort::Voltage => "m.last_voltage_cv",
            MeterSort::Energy => "m.last_energy_mwh",
            MeterSort::Readings => "m.readings",
            MeterSort::Alerts => "alerts",
        }
    }
}

/// A page request of the meter table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterQuery {
    /// Only meters whose decimal id starts with these digits.
    pub id_prefix: Option<String>,
    /// Which meters.
    pub filter: MeterFilter,
    /// Sort column.
    pub sort: MeterSort,
    /// Descending instead of ascending.
    pub descending: bool,
    /// Rows skipped.
    pub offset: u64,
    /// Most rows answered.
    pub limit: usize,
    /// The band for [`MeterFilter::OutOfBand`].
    pub band: VoltageBand,
}

/// A meter row of the table: the summary and its active alerts.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MeterRow {
    /// The meter.
    #[serde(flatten)]
    pub meter: MeterSummary,
    /// Active (uncleared) alerts naming it.
    pub active_alerts: u64,
}

/// One page of the meter table.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MeterPage {
    /// Meters with stored readings.
    pub total: u64,
    /// Of those, the ones the search and filter match.
    pub matched: u64,
    /// Rows skipped.
    pub offset: u64,
    /// The rows.
    pub rows: Vec<MeterRow>,
}

/// The fleet right now, from each meter's newest reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FleetSnapshot {
    /// Meters with stored readings.
    pub meters: u64,
    /// Of those, not reported silent.
    pub reporting: u64,
    /// Reported silent.
    pub silent: u64,
    /// Sum of the reporting meters' last active power, W.
    pub power_w: f64,
    /// Sum of every meter's last energy register, kWh.
    pub energy_kwh: f64,
    /// Lowest last voltage of a reporting meter, V.
    pub voltage_min_v: Option<f64>,
    /// Mean last voltage of the reporting meters, V.
    pub voltage_mean_v: Option<f64>,
    /// Highest last voltage of a reporting meter, V.
    pub voltage_max_v: Option<f64>,
    /// Reporting meters below the band.
    pub below_band: u64,
    /// Reporting meters above the band.
    pub above_band: u64,
}

/// Blocks and readings stored in one fixed time window (server clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IngestWindow {
    /// Window start, Unix ms (a multiple of the window length).
    pub start_ms: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Frames (leaves) they carried.
    pub frames: u64,
    /// New readings stored.
    pub readings: u64,
    /// Readings carried again (already stored from another block).
    pub duplicates: u64,
}

/// Per relay, what arrived since some time: blocks, frames, readings,
/// readings carried twice and refused payloads naming it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RelayTraffic {
    /// Relay.
    pub relay_id: u32,
    /// Blocks stored.
    pub blocks: u64,
    /// Frames (leaves) they carried.
    pub frames: u64,
    /// New readings stored.
    pub readings: u64,
    /// Readings carried that were already stored (overlap, re-sends).
    pub duplicates: u64,
    /// Payloads naming this relay refused into quarantine.
    pub rejected: u64,
}

/// A block and the readings it stored, for links from a block to its readings' proofs.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BlockReadings {
    /// Block row id.
    pub block_id: i64,
    /// Relay.
    pub relay_id: u32,
    /// Height.
    pub height: u64,
    /// Header hash, hex.
    pub hash: String,
    /// Leaves (frames).
    pub leaf_count: u64,
    /// New readings it stored (all of them, even past `limit`).
    pub reading_count: u64,
    /// Readings of its frames stored by earlier blocks.
    pub duplicate_count: u64,
    /// Its readings, by id, at most the `limit` asked for.
    pub readings: Vec<StoredReading>,
}

const METER_COLS: &str = "m.meter_id, m.readings, m.first_seen_ms, m.last_received_ms, \
    CASE WHEN m.silent THEN 1 ELSE 0 END, m.last_epoch, m.last_seq, m.last_ts_ms, \
    m.last_voltage_cv, m.last_current_ma, m.last_power_dw, m.last_pf_e4, m.last_freq_mhz, \
    m.last_energy_mwh, m.last_flags";

/// The WHERE clause of a meter page and its parameters (numbered from 1).
fn meter_where(q: &MeterQuery) -> (String, Vec<SqlParam>) {
    let mut clause = String::from("m.readings > 0");
    let mut params = Vec::new();
    if let Some(prefix) = q.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        params.push(SqlParam::Text(format!("{prefix}%")));
        clause.push_str(&format!(
            " AND CAST(m.meter_id AS TEXT) LIKE CAST(${} AS TEXT)",
            params.len()
        ));
    }
    match q.filter {
        MeterFilter::All => {}
        MeterFilter::Silent => clause.push_str(" AND m.silent"),
        MeterFilter::Alerting => clause.push_str(
            " AND EXISTS (SELECT 1 FROM alerts a WHERE a.meter_id = m.meter_id AND a.cleared_ms IS NULL)",
        ),
        MeterFilter::OutOfBand => {
            params.push(SqlParam::Int(q.band.low_cv));
            params.push(SqlParam::Int(q.band.high_cv));
            let (lo, hi) = (params.len() - 1, params.len());
            clause.push_str(&format!(
                " AND NOT m.silent AND (m.last_voltage_cv < CAST(${lo} AS BIGINT) OR m.last_voltage_cv > CAST(${hi} AS BIGINT))"
            ));
        }
    }
    (clause, params)
}

/// One page of the meter table.
pub fn meter_page<S: QueryStore + ?Sized>(
    s: &mut S,
    q: &MeterQuery,
) -> Result<MeterPage, StoreError> {
    let (clause, mut params) = meter_where(q);
    let counts = s.select(
        &format!(
            "SELECT (SELECT COUNT(*) FROM meters WHERE readings > 0), COUNT(*) FROM meters m WHERE {clause}"
        ),
        &params,
    )?;
    let [total, matched] = match counts.first() {
        Some(row) => ints::<2>("meters", row)?,
        None => [0, 0],
    };
    let dir = if q.descending { "DESC" } else { "ASC" };
    params.push(SqlParam::Int(q.limit.min(i64::MAX as usize) as i64));
    params.push(SqlParam::Int(q.offset.min(i64::MAX as u64) as i64));
    let (limit, offset) = (params.len() - 1, params.len());
    let rows = s.select(
        &format!(
            "SELECT {METER_COLS}, \
             (SELECT COUNT(*) FROM alerts a WHERE a.meter_id = m.meter_id AND a.cleared_ms IS NULL) AS alerts \
             FROM meters m WHERE {clause} ORDER BY {} {dir}, m.meter_id {dir} \
             LIMIT CAST(${limit} AS BIGINT) OFFSET CAST(${offset} AS BIGINT)",
            q.sort.column()
        ),
        &params,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let c = ints::<16>("meters", row)?;
        let mut summary = [0i64; 15];
        summary.copy_from_slice(&c[..15]);
        out.push(MeterRow {
            meter: super::shared::meter_summary(&summary, c[4] != 0)?,
            active_alerts: u64_of(c[15]),
        });
    }
    Ok(MeterPage {
        total: u64_of(total),
        matched: u64_of(matched),
        offset: q.offset,
        rows: out,
    })
}

/// The fleet right now.
pub fn fleet_snapshot<S: QueryStore + ?Sized>(
    s: &mut S,
    band: VoltageBand,
) -> Result<FleetSnapshot, StoreError> {
    let rows = s.select(
        "SELECT COUNT(*), \
         CAST(COALESCE(SUM(CASE WHEN m.silent THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN m.silent THEN 0 ELSE m.last_power_dw END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(m.last_energy_mwh), 0) AS BIGINT), \
         MIN(CASE WHEN m.silent THEN NULL ELSE m.last_voltage_cv END), \
         MAX(CASE WHEN m.silent THEN NULL ELSE m.last_voltage_cv END), \
         CAST(COALESCE(SUM(CASE WHEN m.silent THEN 0 ELSE m.last_voltage_cv END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN NOT m.silent AND m.last_voltage_cv < CAST($1 AS BIGINT) THEN 1 ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN NOT m.silent AND m.last_voltage_cv > CAST($2 AS BIGINT) THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM meters m WHERE m.readings > 0",
        &[SqlParam::Int(band.low_cv), SqlParam::Int(band.high_cv)],
    )?;
    let Some(row) = rows.first() else {
        return Ok(FleetSnapshot::default());
    };
    let meters = u64_of(int("meters", row, 0)?);
    let silent = u64_of(int("meters", row, 1)?);
    let reporting = meters.saturating_sub(silent);
    let volts = |cv: i64| cv as f64 / 100.0;
    let voltage_sum = int("meters", row, 6)?;
    Ok(FleetSnapshot {
        meters,
        reporting,
        silent,
        power_w: int("meters", row, 2)? as f64 / 10.0,
        energy_kwh: int("meters", row, 3)? as f64 / 1e6,
        voltage_min_v: opt_int(row, 4).map(volts),
        voltage_max_v: opt_int(row, 5).map(volts),
        voltage_mean_v: (reporting > 0).then(|| volts(voltage_sum) / reporting as f64),
        below_band: u64_of(int("meters", row, 7)?),
        above_band: u64_of(int("meters", row, 8)?),
    })
}

/// Blocks stored at or after `since_ms` (server clock), summed per window of
/// `window_ms`, ascending; windows without blocks are left out.
pub fn ingest_windows<S: QueryStore + ?Sized>(
    s: &mut S,
    since_ms: u64,
    window_ms: u64,
) -> Result<Vec<IngestWindow>, StoreError> {
    let window = window_ms.max(1);
    let rows = s.select(
        "SELECT received_ms, leaf_count, reading_count, duplicate_count FROM blocks \
         WHERE received_ms >= CAST($1 AS BIGINT) ORDER BY received_ms",
        &[SqlParam::Int(since_ms.min(i64::MAX as u64) as i64)],
    )?;
    let mut out: Vec<IngestWindow> = Vec::new();
    for row in &rows {
        let [received, leaves, readings, duplicates] = ints::<4>("blocks", row)?;
        let start_ms = u64_of(received) / window * window;
        if out.last().is_none_or(|w| w.start_ms != start_ms) {
            out.push(IngestWindow {
                start_ms,
                ..IngestWindow::default()
            });
        }
        if let Some(w) = out.last_mut() {
            w.blocks += 1;
            w.frames += u64_of(leaves);
            w.readings += u64_of(readings);
            w.duplicates += u64_of(duplicates);
        }
    }
    Ok(out)
}

/// Per relay, the blocks stored and payloads refused at or after `since_ms`.
pub fn relay_traffic<S: QueryStore + ?Sized>(
    s: &mut S,
    since_ms: u64,
) -> Result<Vec<RelayTraffic>, StoreError> {
    let since = [SqlParam::Int(since_ms.min(i64::MAX as u64) as i64)];
    let stored = s.select(
        "SELECT relay_id, COUNT(*), CAST(SUM(leaf_count) AS BIGINT), CAST(SUM(reading_count) AS BIGINT), \
         CAST(SUM(duplicate_count) AS BIGINT) FROM blocks WHERE received_ms >= CAST($1 AS BIGINT) \
         GROUP BY relay_id ORDER BY relay_id",
        &since,
    )?;
    let refused = s.select(
        "SELECT relay_id, COUNT(*) FROM quarantine \
         WHERE received_ms >= CAST($1 AS BIGINT) AND relay_id IS NOT NULL GROUP BY relay_id",
        &since,
    )?;
    let mut out: Vec<RelayTraffic> = Vec::with_capacity(stored.len());
    for row in &stored {
        let [relay, blocks, frames, readings, duplicates] = ints::<5>("blocks", row)?;
        out.push(RelayTraffic {
            relay_id: u32_id("blocks", relay)?,
            blocks: u64_of(blocks),
            frames: u64_of(frames),
            readings: u64_of(readings),
            duplicates: u64_of(duplicates),
            rejected: 0,
        });
    }
    for row in &refused {
        let [relay, count] = ints::<2>("quarantine", row)?;
        let relay = u32_id("quarantine", relay)?;
        match out.iter_mut().find(|t| t.relay_id == relay) {
            Some(t) => t.rejected = u64_of(count),
            None => out.push(RelayTraffic {
                relay_id: relay,
                rejected: u64_of(count),
                ..RelayTraffic::default()
            }),
        }
    }
    out.sort_by_key(|t| t.relay_id);
    Ok(out)
}

/// Block `block_id` with up to `limit` of the readings it stored (`None`: no such block).
pub fn block_readings<S: QueryStore + ?Sized>(
    s: &mut S,
    block_id: i64,
    limit: usize,
) -> Result<Option<BlockReadings>, StoreError> {
    let head = s.select(
        "SELECT relay_id, height, leaf_count, first_reading_id, reading_count, duplicate_count, hash \
         FROM blocks WHERE id = CAST($1 AS BIGINT)",
        &[SqlParam::Int(block_id)],
    )?;
    let Some(row) = head.first() else {
        return Ok(None);
    };
    let [relay, height, leaves, first, count, duplicates] = ints::<6>("blocks", row)?;
    let hash = match row.get(6) {
        Some(Cell::Bytes(b)) => hex::encode(b),
        other => {
            return Err(StoreError::Corrupt {
                table: "blocks",
                detail: format!("block {block_id}: hash is {other:?}"),
            })
        }
    };
    let shown = count.clamp(0, limit.min(i64::MAX as usize) as i64);
    let rows = s.select(
        &format!(
            "SELECT {READING_COLS} FROM readings WHERE id >= CAST($1 AS BIGINT) AND id < CAST($2 AS BIGINT) ORDER BY id"
        ),
        &[SqlParam::Int(first), SqlParam::Int(first.saturating_add(shown))],
    )?;
    let mut readings = Vec::with_capacity(rows.len());
    for row in &rows {
        readings.push(typed_reading("readings", &ints::<14>("readings", row)?)?);
    }
    Ok(Some(BlockReadings {
        block_id,
        relay_id: u32_id("blocks", relay)?,
        height: u64_of(height),
        hash,
        leaf_count: u64_of(leaves),
        reading_count: u64_of(count),
        duplicate_count: u64_of(duplicates),
        readings,
    }))
}

/// The ledger's size: blocks, their bytes as received, and the readings they stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerSize {
    /// Blocks stored.
    pub blocks: u64,
    /// Their raw bytes (header, signature, length-prefixed frames).
    pub block_bytes: u64,
    /// Readings stored.
    pub readings: u64,
}

impl LedgerSize {
    /// Block bytes per stored reading (0 before the first reading).
    pub fn bytes_per_reading(&self) -> f64 {
        if self.readings == 0 {
            0.0
        } else {
            self.block_bytes as f64 / self.readings as f64
        }
    }
}

/// Counts the ledger's blocks, their bytes and the readings they stored.
pub fn ledger_size<S: QueryStore + ?Sized>(s: &mut S) -> Result<LedgerSize, StoreError> {
    let rows = s.select(
        // Cast: PostgreSQL sums BIGINT columns as NUMERIC.
        "SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(raw)), 0) AS BIGINT), \
         CAST(COALESCE(SUM(reading_count), 0) AS BIGINT) FROM blocks",
        &[],
    )?;
    let row = rows.first().map(Vec::as_slice).unwrap_or_default();
    let [blocks, bytes, readings] = crate::shared::ints("blocks", row)?;
    Ok(LedgerSize {
        blocks: u64_of(blocks),
        block_bytes: u64_of(bytes),
        readings: u64_of(readings),
    })
}

/// How long each stored reading took from its making (the meter's timestamp)
/// to its block's arrival at the server, ms, ascending.
pub fn delivery_latencies<S: QueryStore + ?Sized>(s: &mut S) -> Result<Vec<i64>, StoreError> {
    let rows = s.select(
        "SELECT b.received_ms - r.ts_ms FROM readings r JOIN blocks b ON b.id = r.block_id ORDER BY 1",
        &[],
    )?;
    rows.iter().map(|row| int("readings", row, 0)).collect()
}
