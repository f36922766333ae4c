//! A meter that equivocates (docs/protocol.md §9.5): two different readings
//! under one (meter, boot epoch, sequence number), both sealed under the
//! meter's end-to-end key. The reading committed first is the stored one; a
//! later carrier with the same content is a harmless repeat (a re-send, a
//! second relay); different content can only come from a holder of the
//! meter's end-to-end key — a faulty meter or a stolen key — and is raised as
//! a critical alert. Both blocks stay in the ledger as signed evidence.
//!
//! The writer runs this after the commit that stored the repeating block, and
//! `verify-ledger` runs it over the whole ledger: one rule, one place.

use std::collections::HashMap;

use gridpow_proto::wire::Reading;

use crate::plausibility::AlertKind;
use crate::verified::ReadingRow;
use crate::{meter_subject, NewAlert, QueryStore, StoreError, StoredReading};

/// A repeated reading whose content differs from the stored one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// The meter.
    pub meter_id: u32,
    /// Boot epoch.
    pub epoch: u32,
    /// Sequence number.
    pub seq: u32,
    /// Leaf of the repeating block that carries the other reading.
    pub leaf: u32,
    /// The other reading, as the repeating block carries it.
    pub carried: Reading,
    /// The stored reading, when one with the carried reading's timestamp
    /// holds the number (`None`: the stored one has another timestamp).
    pub stored: Option<StoredReading>,
}

impl Equivocation {
    /// One line for logs and the alert, naming the repeating block.
    pub fn describe(&self, relay_id: u32, height: u64) -> String {
        let stored = match &self.stored {
            Some(s) => format!(
                "the stored one (block row {}, leaf {}) reads {}",
                s.block_id,
                s.leaf,
                summary(&s.reading)
            ),
            None => "the stored one has another timestamp".to_string(),
        };
        format!(
            "meter {} sent two different readings as epoch {} seq {}: relay {relay_id} block {height} \
             leaf {} carries {}; {stored}. Treat the meter's key as leaked or its firmware as faulty \
             (docs/security.md); both blocks stay in the ledger as evidence",
            self.meter_id,
            self.epoch,
            self.seq,
            self.leaf,
            summary(&self.carried)
        )
    }

    /// The alert it raises (one row per meter; its count grows).
    pub fn alert(&self, relay_id: u32, height: u64) -> NewAlert {
        NewAlert {
            kind: AlertKind::Equivocation,
            subject: meter_subject(self.meter_id),
            meter_id: Some(self.meter_id),
            relay_id: Some(relay_id),
            message: self.describe(relay_id, height),
        }
    }
}

fn summary(r: &Reading) -> String {
    format!(
        "t={} ms, {} cV, {} mA, {} dW, {} mWh",
        r.timestamp_ms, r.voltage_cv, r.current_ma, r.active_power_dw, r.energy_mwh
    )
}

/// Compares the readings a block repeated (`repeated`, grouped by meter as
/// the store returns them) with the stored readings of the same numbers.
/// Identical content has an identical timestamp, so the stored reading is
/// looked up at the carried timestamps only; a number not found there is
/// stored with another timestamp, which is already a different reading.
pub fn find(
    store: &mut dyn QueryStore,
    repeated: &[ReadingRow],
) -> Result<Vec<Equivocation>, StoreError> {
    let mut out = Vec::new();
    let mut sorted = repeated.to_vec();
    sorted.sort_by_key(|r| (r.meter_id, r.reading.timestamp_ms));
    for group in sorted.chunk_by(|a, b| a.meter_id == b.meter_id) {
        let m = group[0].meter_id;
        let (lo, hi) = (
            group[0].reading.timestamp_ms,
            group[group.len() - 1].reading.timestamp_ms,
        );
        // Every stored reading in the window: a cut-off list would make
        // identical repeats look like equivocations.
        let stored = store.meter_readings(m, lo, hi, usize::MAX)?;
        let by_number: HashMap<(u32, u32), &StoredReading> =
            stored.iter().map(|s| ((s.epoch, s.seq), s)).collect();
        for r in group {
            match by_number.get(&(r.epoch, r.seq)) {
                Some(s) if s.reading == r.reading => {}
                found => out.push(Equivocation {
                    meter_id: m,
                    epoch: r.epoch,
                    seq: r.seq,
                    leaf: r.leaf,
                    carried: r.reading,
                    stored: found.map(|s| **s),
                }),
            }
        }
    }
    Ok(out)
}
