//! The fleet's recent history for the dashboard: per fixed window of
//! [`WINDOW_MS`], the blocks, frames and readings stored (rates come from
//! whole windows, so a page's polling period cannot alias them) and the
//! fleet's power, energy and voltage sampled at the window's end.
//!
//! Counts come from the database (`blocks.received_ms`), so they include
//! what other servers sharing the database stored and survive a restart: the
//! history is back-filled at start, and each tick recounts the last few
//! windows so a block committed just after its window closed still counts
//! in it. The fleet samples exist from this server's start on.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use gridpow_store::{FleetSnapshot, IngestWindow, VoltageBand};

/// Length of a window, ms.
pub const WINDOW_MS: u64 = 10_000;
/// How far back the history reaches, ms.
pub const HISTORY_MS: u64 = 3_600_000;
/// Windows recounted at each tick (commits may land after their window closed).
pub(crate) const RECOUNT_WINDOWS: u64 = 3;
/// How long after a window's end it is sampled.
pub(crate) const SAMPLE_LAG_MS: u64 = 1_500;

/// One window of the history.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FleetWindow {
    /// Window start, Unix ms (server clock).
    pub start_ms: u64,
    /// Window end (exclusive), Unix ms.
    pub end_ms: u64,
    /// Blocks stored.
    pub blocks: u64,
    /// Frames they carried.
    pub frames: u64,
    /// New readings stored.
    pub readings: u64,
    /// Readings carried again.
    pub duplicates: u64,
    /// `readings` per second over the window.
    pub readings_per_s: f64,
    /// `blocks` per second over the window.
    pub blocks_per_s: f64,
    /// The fleet at the window's end (`null` before this server sampled it).
    pub fleet: Option<FleetSnapshot>,
}

impl FleetWindow {
    fn empty(start_ms: u64) -> FleetWindow {
        FleetWindow {
            start_ms,
            end_ms: start_ms + WINDOW_MS,
            blocks: 0,
            frames: 0,
            readings: 0,
            duplicates: 0,
            readings_per_s: 0.0,
            blocks_per_s: 0.0,
            fleet: None,
        }
    }

    fn set_counts(&mut self, c: &IngestWindow) {
        let secs = WINDOW_MS as f64 / 1000.0;
        self.blocks = c.blocks;
        self.frames = c.frames;
        self.readings = c.readings;
        self.duplicates = c.duplicates;
        self.readings_per_s = c.readings as f64 / secs;
        self.blocks_per_s = c.blocks as f64 / secs;
    }
}

/// The windows of the last [`HISTORY_MS`], oldest first.
#[derive(Debug)]
pub struct History {
    band: VoltageBand,
    windows: Mutex<VecDeque<FleetWindow>>,
}

impl History {
    /// An empty history judging voltages against `band`.
    pub fn new(band: VoltageBand) -> History {
        History {
            band,
            windows: Mutex::new(VecDeque::new()),
        }
    }

    /// The voltage band of the fleet samples.
    pub fn band(&self) -> VoltageBand {
        self.band
    }

    /// Windows that ended after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<FleetWindow> {
        let Ok(w) = self.windows.lock() else {
            return Vec::new();
        };
        w.iter().filter(|x| x.end_ms > since_ms).copied().collect()
    }

    /// Records the counts of windows `[from_ms, to_ms)` (a window without
    /// blocks counts zero) and, if given, the fleet sampled at `to_ms`; drops
    /// windows older than [`HISTORY_MS`].
    pub fn record(
        &self,
        from_ms: u64,
        to_ms: u64,
        counts: &[IngestWindow],
        fleet: Option<FleetSnapshot>,
    ) {
        let Ok(mut w) = self.windows.lock() else {
            return;
        };
        let mut start = from_ms / WINDOW_MS * WINDOW_MS;
        while start < to_ms {
            let counted = counts.iter().find(|c| c.start_ms == start);
            let zero = IngestWindow {
                start_ms: start,
                ..IngestWindow::default()
            };
            let c = counted.unwrap_or(&zero);
            match w.iter_mut().find(|x| x.start_ms == start) {
                Some(x) => x.set_counts(c),
                None => {
                    let mut x = FleetWindow::empty(start);
                    x.set_counts(c);
                    let at = w.partition_point(|y| y.start_ms < start);
                    w.insert(at, x);
                }
            }
            start += WINDOW_MS;
        }
        if let Some(f) = fleet {
            if let Some(last) = w.iter_mut().rev().find(|x| x.end_ms == to_ms) {
                last.fleet = Some(f);
            }
        }
        let oldest = to_ms.saturating_sub(HISTORY_MS);
        while w.front().is_some_and(|x| x.start_ms < oldest) {
            w.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(start_ms: u64, blocks: u64, readings: u64) -> IngestWindow {
        IngestWindow {
            start_ms,
            blocks,
            frames: blocks,
            readings,
            duplicates: 0,
        }
    }

    #[test]
    fn windows_are_whole_zero_filled_recounted_and_bounded() {
        let h = History::new(VoltageBand::new(230.0, 0.1));
        let t = 1_000 * WINDOW_MS;
        h.record(t, t + 3 * WINDOW_MS, &[counts(t, 10, 500)], None);
        let w = h.since(0);
        assert_eq!(
            w.len(),
            3,
            "every window of the range, empty ones counted zero"
        );
        assert_eq!((w[0].readings, w[0].readings_per_s), (500, 50.0));
        assert_eq!(w[1].readings, 0);
        // A block committed late lands in a closed window: the recount fixes it.
        h.record(
            t + WINDOW_MS,
            t + 4 * WINDOW_MS,
            &[counts(t + WINDOW_MS, 1, 40)],
            Some(FleetSnapshot::default()),
        );
        let w = h.since(0);
        assert_eq!(w.len(), 4);
        assert_eq!(w[1].readings, 40);
        assert!(w[3].fleet.is_some() && w[2].fleet.is_none());
        assert_eq!(h.since(t + 3 * WINDOW_MS).len(), 1);
        // An hour later only the last hour is kept.
        let later = t + HISTORY_MS + 2 * WINDOW_MS;
        h.record(later - WINDOW_MS, later, &[], None);
        let w = h.since(0);
        assert!(w.iter().all(|x| x.start_ms >= later - HISTORY_MS));
        assert_eq!(w.last().map(|x| x.end_ms), Some(later));
    }
}
