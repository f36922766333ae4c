//! What both backends do alike when they read: value conversions, subjects,
//! the silent sweep's rule, and turning rows into API and ledger-check values.
//! What a commit writes is decided once, in [`crate::plan`].

use gridpow_proto::pow::leading_zero_bits;
use gridpow_proto::wire::Reading;
use gridpow_proto::Hash;

use super::{
    AlertRow, BlockSummary, Cell, DbTotals, LastReading, LedgerBlock, LedgerReading, MeterSummary,
    RaisedAlert, RelaySummary, StoreError, StoredReading,
};
use crate::plausibility::AlertKind;

/// Column `i` of a selected row as an integer.
pub(crate) fn int(table: &'static str, row: &[Cell], i: usize) -> Result<i64, StoreError> {
    row.get(i)
        .and_then(Cell::int)
        .ok_or_else(|| StoreError::Corrupt {
            table,
            detail: format!("column {i} is {:?}, not an integer", row.get(i)),
        })
}

/// Column `i` as an integer, `None` if NULL (an aggregate over no rows, an optional column).
pub(crate) fn opt_int(row: &[Cell], i: usize) -> Option<i64> {
    row.get(i).and_then(Cell::int)
}

/// The first `N` columns as integers.
pub(crate) fn ints<const N: usize>(
    table: &'static str,
    row: &[Cell],
) -> Result<[i64; N], StoreError> {
    let mut out = [0i64; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = int(table, row, i)?;
    }
    Ok(out)
}

/// Column `i` as bytes.
pub(crate) fn bytes(table: &'static str, row: &[Cell], i: usize) -> Result<Vec<u8>, StoreError> {
    opt_bytes(row, i).ok_or_else(|| StoreError::Corrupt {
        table,
        detail: format!("column {i} is {:?}, not bytes", row.get(i)),
    })
}

/// Column `i` as bytes, `None` if NULL or not bytes.
pub(crate) fn opt_bytes(row: &[Cell], i: usize) -> Option<Vec<u8>> {
    match row.get(i) {
        Some(Cell::Bytes(b)) => Some(b.clone()),
        _ => None,
    }
}

/// Column `i` as text.
pub(crate) fn text(table: &'static str, row: &[Cell], i: usize) -> Result<String, StoreError> {
    match row.get(i) {
        Some(Cell::Text(t)) => Ok(t.clone()),
        other => Err(StoreError::Corrupt {
            table,
            detail: format!("column {i} is {other:?}, not text"),
        }),
    }
}

/// A 32-bit id (relay, meter) stored in `table` as a wider integer.
pub(crate) fn u32_id(table: &'static str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table,
        detail: format!("{v} is not a 32-bit id"),
    })
}

pub(super) fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

pub(super) fn hash_of(table: &'static str, b: &[u8]) -> Result<Hash, StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        detail: format!("hash of {} bytes", b.len()),
    })
}

pub(super) fn short_hex(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(8)])
}

pub(crate) fn meter_subject(meter_id: u32) -> String {
    format!("meter:{meter_id}")
}

pub(super) fn block_subject(relay_id: u32, height: u64) -> String {
    format!("relay:{relay_id}:height:{height}")
}

/// The reading columns, in the order [`typed_reading`] reads them.
pub(super) const READING_COLS: &str =
    "id, block_id, leaf, meter_id, epoch, seq, ts_ms, voltage_cv, \
    current_ma, power_dw, pf_e4, freq_mhz, energy_mwh, flags";

/// A reading from its columns `id, block_id, leaf, meter_id, epoch, seq, ts_ms,
/// voltage_cv, current_ma, power_dw, pf_e4, freq_mhz, energy_mwh, flags`.
pub(super) fn typed_reading(
    table: &'static str,
    c: &[i64; 14],
) -> Result<StoredReading, StoreError> {
    let bad = |what: &str| StoreError::Corrupt {
        table,
        detail: format!("reading {}: {what} out of range", c[0]),
    };
    Ok(StoredReading {
        id: c[0],
        block_id: c[1],
        leaf: u32::try_from(c[2]).map_err(|_| bad("leaf"))?,
        meter_id: u32::try_from(c[3]).map_err(|_| bad("meter_id"))?,
        epoch: u32::try_from(c[4]).map_err(|_| bad("epoch"))?,
        seq: u32::try_from(c[5]).map_err(|_| bad("seq"))?,
        reading: Reading {
            timestamp_ms: c[6] as u64,
            voltage_cv: u16::try_from(c[7]).map_err(|_| bad("voltage_cv"))?,
            current_ma: u32::try_from(c[8]).map_err(|_| bad("current_ma"))?,
            active_power_dw: i32::try_from(c[9]).map_err(|_| bad("power_dw"))?,
            power_factor_e4: i16::try_from(c[10]).map_err(|_| bad("pf_e4"))?,
            frequency_mhz: u16::try_from(c[11]).map_err(|_| bad("freq_mhz"))?,
            energy_mwh: c[12] as u64,
            flags: u16::try_from(c[13]).map_err(|_| bad("flags"))?,
        },
    })
}

/// An alert row from its columns `id, kind, subject, meter_id, relay_id,
/// first_ms, last_ms, count, message, cleared_ms`.
#[allow(clippy::too_many_arguments)]
pub(super) fn alert_row(
    id: i64,
    kind: String,
    subject: String,
    meter_id: Option<u32>,
    relay_id: Option<u32>,
    first_ms: i64,
    last_ms: i64,
    count: i64,
    message: String,
    cleared_ms: Option<i64>,
) -> AlertRow {
    let severity = AlertKind::parse(&kind).map_or("warning", AlertKind::severity);
    AlertRow {
        id,
        kind,
        subject,
        meter_id,
        relay_id,
        first_ms: u64_of(first_ms),
        last_ms: u64_of(last_ms),
        count: u64_of(count),
        message,
        cleared_ms: cleared_ms.map(u64_of),
        severity,
    }
}

impl DbTotals {
    /// Sets the total that counter `name` holds (others are ignored).
    pub(super) fn set_counter(&mut self, name: &str, v: u64) {
        match name {
            "blocks_rejected" => self.blocks_rejected = v,
            "frames_rejected" => self.frames_rejected = v,
            "blocks_duplicate" => self.blocks_duplicate = v,
            "readings_duplicate" => self.readings_duplicate = v,
            "meters" => self.meters = v,
            "forks" => self.forks = v,
            _ => {}
        }
    }
}

/// Meters last heard before this are silent; `None` until the server has run
/// for `silent_after_ms`.
pub(super) fn silent_cutoff(now_ms: u64, silent_after_ms: u64, started_ms: u64) -> Option<u64> {
    (now_ms.saturating_sub(started_ms) >= silent_after_ms)
        .then(|| now_ms.saturating_sub(silent_after_ms))
}

/// A meter found silent by the sweep.
pub(super) struct Silent {
    pub alert: RaisedAlert,
    meter: u32,
    secs: i64,
}

impl Silent {
    /// Meter `m`, last heard at `last_ms`, found silent at `now_ms`.
    pub fn new(m: u32, now_ms: i64, last_ms: i64) -> Silent {
        let secs = (now_ms - last_ms) / 1000;
        Silent {
            alert: RaisedAlert {
                kind: AlertKind::Silent,
                subject: meter_subject(m),
                count: 1,
                message: format!("meter {m} silent for {secs} s"),
            },
            meter: m,
            secs,
        }
    }

    /// Logs it (once its alert is written) and returns the alert.
    pub fn logged(self) -> RaisedAlert {
        tracing::warn!(meter = self.meter, silent_s = self.secs, "Meter silent.");
        self.alert
    }
}

/// A meter from its columns `meter_id, readings, first_seen_ms,
/// last_received_ms, silent, last_epoch, last_seq, last_ts_ms, last_voltage_cv,
/// last_current_ma, last_power_dw, last_pf_e4, last_freq_mhz, last_energy_mwh,
/// last_flags` (`c[4]` is not read: `silent` is passed).
pub(super) fn meter_summary(c: &[i64; 15], silent: bool) -> Result<MeterSummary, StoreError> {
    let ints: [i64; 14] = [
        0, 0, 0, c[0], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14],
    ];
    let t = typed_reading("meters", &ints)?;
    Ok(MeterSummary {
        meter_id: t.meter_id,
        readings: u64_of(c[1]),
        first_seen_ms: u64_of(c[2]),
        last_received_ms: u64_of(c[3]),
        silent,
        last: (c[1] > 0).then_some(LastReading {
            epoch: t.epoch,
            seq: t.seq,
            reading: t.reading,
        }),
    })
}

/// Once `out` holds `limit` readings, keeps the newest `limit` and sets
/// `threshold` to the oldest timestamp kept.
pub(super) fn keep_newest(out: &mut Vec<StoredReading>, limit: usize, threshold: &mut Option<i64>) {
    if out.len() >= limit {
        out.sort_by(|a, b| {
            b.reading
                .timestamp_ms
                .cmp(&a.reading.timestamp_ms)
                .then(b.id.cmp(&a.id))
        });
        out.truncate(limit);
        *threshold = out.last().map(|r| r.reading.timestamp_ms as i64);
    }
}

/// Sorts readings ascending by timestamp, then id.
pub(super) fn sort_by_time(out: &mut [StoredReading]) {
    out.sort_by(|a, b| {
        a.reading
            .timestamp_ms
            .cmp(&b.reading.timestamp_ms)
            .then(a.id.cmp(&b.id))
    });
}

/// The heights missing below open gap `height`, given the highest stored height below it.
pub(super) fn gap_range(height: i64, below: Option<i64>) -> (u64, u64) {
    (below.map_or(0, |b| u64_of(b + 1)), u64_of(height - 1))
}

/// Per relay: meters its blocks carried, of those the meters another relay
/// carried too, and readings its blocks carried that were stored already
/// (`relay_meters`, schema version 5).
pub(super) const RELAY_COVERAGE: &str = "SELECT c.relay_id, CAST(COUNT(*) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN o.n > 1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(c.readings_duplicate), 0) AS BIGINT) \
     FROM relay_meters c JOIN (SELECT meter_id, COUNT(*) AS n FROM relay_meters GROUP BY meter_id) o \
     ON o.meter_id = c.meter_id GROUP BY c.relay_id";

/// One relay's row of [`RELAY_COVERAGE`]: meters heard, shared, readings duplicate.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RelayCoverage {
    pub meters: i64,
    pub shared: i64,
    pub duplicates: i64,
}

/// A relay's `relays` row and what the summary adds to it.
pub(super) struct RelayCols {
    pub relay_id: u32,
    pub blocks: i64,
    pub readings: i64,
    pub last_block_ms: i64,
    /// Its newest blocks, newest first: height, hash, difficulty, time_ms.
    pub recent: Vec<(i64, Vec<u8>, i64, i64)>,
    /// Open gaps, ascending.
    pub gaps: Vec<(u64, u64)>,
    /// Forks quarantined.
    pub forks: i64,
    /// The meters it carried.
    pub coverage: RelayCoverage,
}

impl RelayCols {
    pub fn summary(self) -> RelaySummary {
        let recent = &self.recent;
        let head = recent.first();
        let work: Vec<f64> = recent
            .iter()
            .filter_map(|(_, h, _, _)| <&Hash>::try_from(h.as_slice()).ok())
            .map(|h| f64::from(leading_zero_bits(h)))
            .collect();
        let intervals: Vec<f64> = recent
            .windows(2)
            .filter(|w| w[0].0 == w[1].0 + 1)
            .map(|w| (w[0].3 - w[1].3) as f64)
            .collect();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let head_height = head.map(|h| u64_of(h.0));
        let linked_height = match self.gaps.first() {
            Some(&(from, _)) => from.checked_sub(1),
            None => head_height,
        };
        let difficulty = head.map(|h| h.2.clamp(0, 255) as u8);
        RelaySummary {
            relay_id: self.relay_id,
            blocks: u64_of(self.blocks),
            readings: u64_of(self.readings),
            head_height,
            head_hash: head.map(|h| hex::encode(&h.1)),
            linked_height,
            difficulty,
            mean_work_bits: mean(&work),
            mean_block_interval_ms: mean(&intervals),
            expected_tries: difficulty.map(|d| 2f64.powi(i32::from(d))),
            last_block_ms: Some(u64_of(self.last_block_ms)),
            gaps: self.gaps,
            forks: u64_of(self.forks),
            meters_heard: u64_of(self.coverage.meters),
            meters_shared: u64_of(self.coverage.shared),
            readings_duplicate: u64_of(self.coverage.duplicates),
        }
    }
}

/// The columns of a block listing, as read.
pub(super) struct BlockCols {
    pub id: i64,
    pub relay_id: u32,
    pub height: i64,
    pub hash: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub difficulty: i64,
    pub leaf_count: i64,
    pub time_ms: i64,
    pub received_ms: i64,
    pub readings: i64,
    pub duplicates: i64,
    pub linked: bool,
    pub bytes: i64,
}

impl BlockCols {
    pub fn summary(self) -> Result<BlockSummary, StoreError> {
        let h = hash_of("blocks", &self.hash)?;
        Ok(BlockSummary {
            id: self.id,
            relay_id: self.relay_id,
            height: u64_of(self.height),
            hash: hex::encode(h),
            prev_hash: hex::encode(self.prev_hash),
            difficulty: self.difficulty.clamp(0, 255) as u8,
            work_bits: leading_zero_bits(&h),
            leaf_count: self.leaf_count.clamp(0, i64::from(u32::MAX)) as u32,
            time_ms: u64_of(self.time_ms),
            received_ms: u64_of(self.received_ms),
            readings: u64_of(self.readings),
            duplicate_readings: u64_of(self.duplicates),
            linked: self.linked,
            bytes: u64_of(self.bytes),
        })
    }
}

/// The error for reading `reading_id` naming block `block_id`, which does not exist.
pub(super) fn missing_block(reading_id: i64, block_id: i64) -> StoreError {
    StoreError::Corrupt {
        table: "readings",
        detail: format!("reading {reading_id} names block {block_id} which does not exist"),
    }
}

/// A block for the ledger check from its row `id, relay_id, height, hash,
/// prev_hash, merkle_root, difficulty, leaf_count, time_ms, nonce, raw, linked,
/// first_reading_id, reading_count, duplicate_count, min_ts, max_ts`: `cell(i)`
/// reads column `i`; `id` and `raw` (columns 0 and 10) come decoded.
pub(super) fn ledger_block<E>(
    id: i64,
    raw: Vec<u8>,
    mut cell: impl FnMut(usize) -> Result<Cell, E>,
) -> Result<LedgerBlock, E> {
    Ok(LedgerBlock {
        id,
        header: [
            cell(1)?,
            cell(2)?,
            cell(3)?,
            cell(4)?,
            cell(5)?,
            cell(6)?,
            cell(7)?,
            cell(8)?,
            cell(9)?,
        ],
        raw,
        linked: cell(11)?,
        first_reading_id: cell(12)?,
        reading_count: cell(13)?,
        duplicate_count: cell(14)?,
        min_ts: cell(15)?,
        max_ts: cell(16)?,
    })
}

/// A reading row for the ledger check: `id` and `cell(1..=13)`, the columns
/// after it in [`super::READING_COLUMNS`] order.
pub(super) fn ledger_reading<E>(
    id: i64,
    mut cell: impl FnMut(usize) -> Result<Cell, E>,
) -> Result<LedgerReading, E> {
    let mut cells: [Cell; 13] = std::array::from_fn(|_| Cell::Int(0));
    for (i, c) in cells.iter_mut().enumerate() {
        *c = cell(i + 1)?;
    }
    Ok(LedgerReading { id, cells })
}
