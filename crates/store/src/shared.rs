//! What both backends do alike: value conversions, the bookkeeping of one
//! write transaction (counters, relay totals, alerts), chain decisions,
//! de-duplication against coverage, plausibility and meter state, and turning
//! rows into API and ledger-check values. The backends keep the SQL, the
//! transactions and COPY.

use std::collections::{BTreeMap, HashMap};

use gridpow_proto::block::check_link;
use gridpow_proto::pow::leading_zero_bits;
use gridpow_proto::wire::Reading;
use gridpow_proto::Hash;

use super::{
    AlertRow, Arrival, BlockSummary, Cell, DbTotals, LastReading, LedgerBlock, LedgerReading,
    MeterSummary, QuarantineItem, RaisedAlert, RelaySummary, Run, StoreError, StoreLimits,
    StoredReading,
};
use crate::intervals::IntervalSet;
use crate::plausibility::{AlertKind, Finding, Rules};
use crate::verified::{ReadingRow, RejectKind, VerifiedBlockData};

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

/// A relay's changes in one transaction.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RelayDelta {
    pub blocks: i64,
    pub readings: i64,
    pub leaves: i64,
}

/// An alert raised or cleared in one transaction.
#[derive(Debug, Default)]
pub(super) struct PendingAlert {
    pub meter_id: Option<u32>,
    pub relay_id: Option<u32>,
    pub count: u64,
    pub message: String,
    pub cleared: bool,
}

/// Counters, relay totals and alerts one write transaction collects, written at its end.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub relays: BTreeMap<u32, RelayDelta>,
    pub counters: BTreeMap<String, i64>,
    pub alerts: BTreeMap<(AlertKind, String), PendingAlert>,
    /// Alerts raised before this transaction that it clears.
    pub clears: Vec<(AlertKind, String)>,
}

impl Book {
    pub fn count(&mut self, name: &str, by: i64) {
        if by != 0 {
            *self.counters.entry(name.to_string()).or_insert(0) += by;
        }
    }

    pub fn raise(
        &mut self,
        kind: AlertKind,
        subject: String,
        meter_id: Option<u32>,
        relay_id: Option<u32>,
        message: String,
    ) {
        let a = self.alerts.entry((kind, subject)).or_default();
        a.meter_id = meter_id;
        a.relay_id = relay_id;
        a.count += 1;
        a.message = message;
        a.cleared = false;
    }

    pub fn clear(&mut self, kind: AlertKind, subject: String) {
        match self.alerts.get_mut(&(kind, subject.clone())) {
            Some(a) => a.cleared = true,
            None => self.clears.push((kind, subject)),
        }
    }

    /// Counts quarantined item `q` (`kept`: a row holds it; `truncated`: its
    /// payload was cut) and raises a critical fork alert for a fork.
    pub fn quarantined(&mut self, q: &QuarantineItem, kept: bool, truncated: bool) {
        self.count("blocks_rejected", 1);
        self.count(&format!("quarantine:{}", q.kind.as_str()), 1);
        if !kept {
            self.count(&format!("quarantine_dropped:{}", q.kind.as_str()), 1);
        }
        if truncated {
            self.count("quarantine_truncated", 1);
        }
        if q.kind.is_frame_fault() {
            self.count("frames_rejected", 1);
        }
        if q.kind == RejectKind::Fork {
            self.count("forks", 1);
            if let Some(h) = &q.header {
                self.raise(
                    AlertKind::Fork,
                    block_subject(h.relay_id, h.height),
                    None,
                    Some(h.relay_id),
                    format!(
                        "relay {} signed two blocks for height {}: treat its key as compromised \
                         (docs/deploy/README.md, rotating a relay key); {}",
                        h.relay_id, h.height, q.detail
                    ),
                );
            }
        }
    }

    /// A stored block of `relay` with `leaf_count` leaves.
    pub fn block_stored(&mut self, relay: u32, leaf_count: u32) {
        let d = self.relays.entry(relay).or_default();
        d.blocks += 1;
        d.leaves += i64::from(leaf_count);
    }

    /// New and duplicate readings of a block of `relay`.
    pub fn readings_stored(&mut self, relay: u32, new: u64, duplicates: u64) {
        self.relays.entry(relay).or_default().readings += new as i64;
        self.count("readings_duplicate", duplicates as i64);
    }

    /// The block at `height` of `relay` got its parent.
    pub fn gap_closed(&mut self, relay: u32, height: u64) {
        self.clear(AlertKind::Gap, block_subject(relay, height));
        tracing::info!(relay, height, "Gap closed: parent arrived.");
    }

    /// The block at `height` of `relay` was stored before its parent; heights
    /// from `from` up to it are missing.
    pub fn gap_opened(&mut self, relay: u32, height: u64, from: i64) {
        let message = format!(
            "relay {relay}: block {height} stored before its parent; heights {from}–{} missing",
            height - 1
        );
        tracing::warn!(
            relay,
            height,
            missing_from = from,
            "Gap: block stored before its parent."
        );
        self.raise(
            AlertKind::Gap,
            block_subject(relay, height),
            None,
            Some(relay),
            message,
        );
    }

    /// Clears meter `m`'s silent alert if it was silent and raises its findings.
    pub fn meter_heard(&mut self, m: u32, heard: Heard) {
        if heard.was_silent {
            self.clear(AlertKind::Silent, meter_subject(m));
            tracing::info!(meter = m, "Meter heard again.");
        }
        for (seq, f) in heard.findings {
            self.raise(
                f.kind(),
                meter_subject(m),
                Some(m),
                None,
                format!("meter {m} seq {seq}: {}", f.describe()),
            );
        }
    }
}

/// The quarantine item for verified block `b` refused by the chain (logged).
pub(super) fn refusal(
    arrival: &Arrival,
    b: &VerifiedBlockData,
    kind: RejectKind,
    detail: String,
) -> QuarantineItem {
    // The writer logs refusals, rate-limited per kind.
    tracing::debug!(
        relay = b.header.relay_id,
        height = b.header.height,
        reason = kind.as_str(),
        "{detail}"
    );
    QuarantineItem {
        arrival: arrival.clone(),
        kind,
        detail,
        header: Some(b.header),
        raw: b.raw.clone(),
    }
}

/// The quarantine allowance a refusal counts against: its relay when the
/// relay id is authenticated (the refusal came after the signature verified),
/// otherwise the one shared by all unauthenticated refusals (-1), so junk
/// naming a relay cannot use up that relay's allowance for fork evidence.
pub(super) fn quota_bucket(q: &QuarantineItem) -> i64 {
    match &q.header {
        Some(h) if q.kind.relay_authenticated() => i64::from(h.relay_id),
        _ => -1,
    }
}

/// What a refusal leaves in the quarantine table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// A row with the first `kept` bytes of the payload.
    Keep { kept: usize },
    /// No row: the allowance is used up; the refusal is only counted.
    Drop,
}

/// Rows and bytes of each allowance, as loaded and as this transaction adds to them.
#[derive(Debug, Default)]
pub(super) struct Quota {
    usage: HashMap<i64, (u64, u64)>,
}

impl Quota {
    /// Decides what refusal `q` leaves; `load(bucket)` reads an allowance's
    /// stored (rows, bytes) the first time it is needed in this transaction.
    pub fn admit(
        &mut self,
        q: &QuarantineItem,
        limits: &StoreLimits,
        load: impl FnOnce(i64) -> Result<(u64, u64), StoreError>,
    ) -> Result<Admit, StoreError> {
        let bucket = quota_bucket(q);
        let usage = match self.usage.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(load(bucket)?),
        };
        // A validly signed fork is kept whole: it is evidence, and if the
        // relay's genuine block was the one refused, its readings are in it.
        let kept = if q.kind == RejectKind::Fork {
            q.raw.len()
        } else {
            q.raw
                .len()
                .min(usize::try_from(limits.quarantine_max_payload_bytes).unwrap_or(usize::MAX))
        };
        if usage.0 >= limits.quarantine_max_rows_per_relay
            || usage.1.saturating_add(kept as u64) > limits.quarantine_max_bytes_per_relay
        {
            return Ok(Admit::Drop);
        }
        usage.0 += 1;
        usage.1 += kept as u64;
        Ok(Admit::Keep { kept })
    }
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

/// A block at a chain position, as [`decide`] sees it.
pub(super) trait ChainSlot {
    fn hash(&self) -> &[u8];
    fn prev_hash(&self) -> &[u8];
    fn linked(&self) -> bool;
}

/// Where a new block goes.
pub(super) enum Chain<S> {
    /// To quarantine.
    Refuse(RejectKind, String),
    /// Nowhere: this slot holds the same block.
    Same(S),
    /// Into the chain; `linked` if its parent is stored (or it is genesis);
    /// `child` is the unlinked block above it, which it links.
    Store { linked: bool, child: Option<S> },
}

/// Whether a block at `height` is too far above its relay's highest stored
/// block `head` (`None`: no block stored, the bound counts from 0): the refusal
/// detail if so.
pub(super) fn too_far_ahead(height: u64, head: Option<i64>, max_ahead: u64) -> Option<String> {
    let base = head.map_or(0, u64_of);
    (height > base.saturating_add(max_ahead)).then(|| match head {
        Some(_) => format!(
            "height {height} is more than {max_ahead} above the relay's highest stored block {base}"
        ),
        None => format!("height {height} is more than {max_ahead} above 0 (no block stored yet)"),
    })
}

/// The chain decision for block `b`: first the far-ahead bound against the
/// relay's highest stored height `head` (see [`too_far_ahead`]), then
/// `at(height)` reads its relay's slot at a height, in this order: h, h−1
/// (above genesis), h+1; it stops at the first refusal.
pub(super) fn decide<S: ChainSlot>(
    b: &VerifiedBlockData,
    head: Option<i64>,
    limits: &StoreLimits,
    mut at: impl FnMut(i64) -> Result<Option<S>, StoreError>,
) -> Result<Chain<S>, StoreError> {
    let h = &b.header;
    let (relay, height) = (h.relay_id, h.height);
    if let Some(detail) = too_far_ahead(height, head, limits.max_height_ahead) {
        return Ok(Chain::Refuse(RejectKind::TooFarAhead, detail));
    }
    if height > i64::MAX as u64 - 1 {
        return Ok(Chain::Refuse(
            RejectKind::Malformed,
            format!("height {height} out of range"),
        ));
    }
    let h_i = height as i64;
    if let Some(slot) = at(h_i)? {
        if slot.hash() == &b.hash[..] {
            return Ok(Chain::Same(slot));
        }
        let detail = format!(
            "relay {relay} already has block {} at height {height}; this one is {}",
            short_hex(slot.hash()),
            short_hex(&b.hash)
        );
        return Ok(Chain::Refuse(RejectKind::Fork, detail));
    }
    let linked = if height == 0 {
        if check_link(h, None).is_err() {
            return Ok(Chain::Refuse(
                RejectKind::BadGenesis,
                "genesis block with a non-zero previous hash".into(),
            ));
        }
        true
    } else {
        match at(h_i - 1)? {
            Some(parent) => {
                let parent: Hash = hash_of("blocks", parent.hash())?;
                if check_link(h, Some((height - 1, &parent))).is_err() {
                    let detail = format!(
                        "previous hash {} is not the stored block {} at height {}",
                        short_hex(&h.prev_hash),
                        short_hex(&parent),
                        height - 1
                    );
                    return Ok(Chain::Refuse(RejectKind::Fork, detail));
                }
                true
            }
            None => false,
        }
    };
    let child = match at(h_i + 1)? {
        Some(child) if child.prev_hash() != &b.hash[..] => {
            let detail = format!(
                "the stored block at height {} names parent {}, not this block {}",
                height + 1,
                short_hex(child.prev_hash()),
                short_hex(&b.hash)
            );
            return Ok(Chain::Refuse(RejectKind::Fork, detail));
        }
        Some(child) if !child.linked() => Some(child),
        _ => None,
    };
    Ok(Chain::Store { linked, child })
}

/// A (meter, epoch)'s coverage intervals: what the table holds and what it will hold.
#[derive(Debug)]
pub(super) struct Coverage {
    /// The rows as stored (first_seq, last_seq), ascending.
    pub stored: Vec<(u32, u32)>,
    pub set: IntervalSet,
    pub dirty: bool,
}

/// A row change that brings the coverage table up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CoverageChange {
    /// Delete the row starting at this sequence number.
    Delete(u32),
    /// Set the end of the row starting at `.0` to `.1`.
    Update(u32, u32),
    /// Insert a row.
    Insert(u32, u32),
}

impl Coverage {
    /// The coverage whose table rows are `stored`.
    pub fn loaded(stored: Vec<(u32, u32)>) -> Coverage {
        let set = IntervalSet::from_ranges(stored.iter().copied());
        Coverage {
            stored,
            set,
            dirty: false,
        }
    }

    /// Adds `group` (readings of one meter and epoch, ascending by seq) to the
    /// coverage, pushes those not covered before onto `fresh`, the others
    /// onto `repeated`, and returns how many were repeated (duplicates).
    pub fn add<'r>(
        &mut self,
        group: &'r [ReadingRow],
        fresh: &mut Vec<&'r ReadingRow>,
        repeated: &mut Vec<ReadingRow>,
    ) -> u64 {
        // Distinct consecutive runs of sequence numbers, each added to the coverage.
        let mut added = Vec::new();
        let mut k = 0;
        while k < group.len() {
            let lo = group[k].seq;
            let mut hi = lo;
            let mut l = k + 1;
            while l < group.len() && (group[l].seq == hi || Some(group[l].seq) == hi.checked_add(1))
            {
                hi = group[l].seq;
                l += 1;
            }
            added.extend(self.set.insert_range(lo, hi));
            k = l;
        }
        self.dirty |= !added.is_empty();
        let mut dup = 0;
        let mut a = 0;
        let mut prev_seq = None;
        for row in group {
            if prev_seq == Some(row.seq) {
                dup += 1;
                repeated.push(*row);
                continue;
            }
            prev_seq = Some(row.seq);
            while a < added.len() && added[a].1 < row.seq {
                a += 1;
            }
            if a < added.len() && added[a].0 <= row.seq {
                fresh.push(row);
            } else {
                dup += 1;
                repeated.push(*row);
            }
        }
        dup
    }

    /// The row changes from `stored` to the set, deletions first.
    pub fn changes(&self) -> Vec<CoverageChange> {
        let now: &[(u32, u32)] = self.set.ranges();
        let mut out = Vec::new();
        for &(a, _) in &self.stored {
            if now.binary_search_by_key(&a, |r| r.0).is_err() {
                out.push(CoverageChange::Delete(a));
            }
        }
        for &(a, b) in now {
            match self.stored.binary_search_by_key(&a, |r| r.0) {
                Ok(i) if self.stored[i].1 == b => {}
                Ok(_) => out.push(CoverageChange::Update(a, b)),
                Err(_) => out.push(CoverageChange::Insert(a, b)),
            }
        }
        out
    }

    /// Records that the table now holds the set.
    pub fn written(&mut self) {
        self.stored = self.set.ranges().to_vec();
        self.dirty = false;
    }
}

/// The readings of `rows` (sorted by meter, epoch and seq), one (meter, epoch) at a time.
pub(super) fn by_meter_epoch(rows: &[ReadingRow]) -> impl Iterator<Item = &[ReadingRow]> {
    rows.chunk_by(|a, b| a.meter_id == b.meter_id && a.epoch == b.epoch)
}

/// Extends the directory `runs` (by meter) with reading `id`, which stores `row` of block `block_id`.
pub(super) fn add_to_runs(runs: &mut Vec<Run>, block_id: i64, id: i64, row: &ReadingRow) {
    let ts = row.reading.timestamp_ms as i64;
    match runs.last_mut() {
        Some(run) if run.meter_id == i64::from(row.meter_id) => {
            run.last_id = id;
            run.min_ts = run.min_ts.min(ts);
            run.max_ts = run.max_ts.max(ts);
        }
        _ => runs.push(Run {
            block_id,
            meter_id: i64::from(row.meter_id),
            first_id: id,
            last_id: id,
            min_ts: ts,
            max_ts: ts,
        }),
    }
}

/// The time span of `runs`, if any.
pub(super) fn span_of(runs: &[Run]) -> Option<(i64, i64)> {
    runs.iter().fold(None, |s: Option<(i64, i64)>, r| {
        Some(s.map_or((r.min_ts, r.max_ts), |(a, z)| {
            (a.min(r.min_ts), z.max(r.max_ts))
        }))
    })
}

/// A meter's row during a write transaction.
#[derive(Clone, Debug)]
pub(super) struct MeterState {
    pub readings: u64,
    pub last: Option<(u32, u32, Reading)>,
    pub silent: bool,
    pub dirty: bool,
}

/// What [`MeterState::hear`] found, for [`Book::meter_heard`].
pub(super) struct Heard {
    was_silent: bool,
    findings: Vec<(u32, Finding)>,
}

impl MeterState {
    /// Takes `rows` (new readings of this meter, ascending): checks their
    /// plausibility, counts them, keeps the newest and ends a silence.
    pub fn hear(&mut self, rules: &Rules, rows: &[&ReadingRow]) -> Heard {
        let mut findings = Vec::new();
        let mut prev = self
            .last
            .filter(|&(e, s, _)| (e, s) < (rows[0].epoch, rows[0].seq));
        for row in rows {
            rules.check_reading(&row.reading, |f| findings.push((row.seq, f)));
            if let Some((_, _, p)) = prev {
                if let Some(f) = rules.check_energy(p.energy_mwh, row.reading.energy_mwh) {
                    findings.push((row.seq, f));
                }
            }
            prev = Some((row.epoch, row.seq, row.reading));
        }
        let last_new = rows[rows.len() - 1];
        self.readings += rows.len() as u64;
        if self
            .last
            .is_none_or(|(e, s, _)| (e, s) < (last_new.epoch, last_new.seq))
        {
            self.last = Some((last_new.epoch, last_new.seq, last_new.reading));
        }
        let was_silent = std::mem::replace(&mut self.silent, false);
        self.dirty = true;
        Heard {
            was_silent,
            findings,
        }
    }
}

/// The new readings `fresh` (sorted by meter), one meter at a time.
pub(super) fn by_meter<'r, 's>(
    fresh: &'s [&'r ReadingRow],
) -> impl Iterator<Item = &'s [&'r ReadingRow]> {
    fresh.chunk_by(|a, b| a.meter_id == b.meter_id)
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
