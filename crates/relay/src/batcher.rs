//! Which committed frames go into the next block, and when: by count
//! (`max_frames`) or by age (the oldest waiting frame waited `max_age`), or at
//! once when a flush was asked for. Plain data and `Instant`s in, decisions
//! out, so it is tested without threads or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::journal::FrameRecord;

/// Frames waiting for a block.
#[derive(Debug)]
pub struct Batcher {
    pending: VecDeque<(Instant, FrameRecord)>,
    max_frames: usize,
    max_age: Duration,
    flush: bool,
}

impl Batcher {
    /// A batcher sealing at `max_frames` frames or `max_age`.
    pub fn new(max_frames: usize, max_age: Duration) -> Self {
        Batcher {
            pending: VecDeque::new(),
            max_frames: max_frames.max(1),
            max_age,
            flush: false,
        }
    }

    /// Adds a committed frame that delivered new readings, received at `now`.
    pub fn push(&mut self, now: Instant, rec: FrameRecord) {
        self.pending.push_back((now, rec));
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Seal everything waiting now as soon as possible, regardless of count
    /// and age (nothing waiting: nothing to do).
    pub fn request_flush(&mut self) {
        self.flush = !self.pending.is_empty();
    }

    /// Whether a block should be sealed now.
    pub fn due(&self, now: Instant) -> bool {
        match self.pending.front() {
            None => false,
            Some((t, _)) => {
                self.flush
                    || self.pending.len() >= self.max_frames
                    || now.duration_since(*t) >= self.max_age
            }
        }
    }

    /// When the oldest frame reaches its maximum age (to sleep until then).
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.front().map(|(t, _)| *t + self.max_age)
    }

    /// Takes the frames of the next block (at most `max_frames`, oldest first).
    /// A flush stays in force until everything waiting at the time is taken.
    pub fn take(&mut self) -> Vec<FrameRecord> {
        let n = self.pending.len().min(self.max_frames);
        let batch: Vec<FrameRecord> = self.pending.drain(..n).map(|(_, r)| r).collect();
        if self.pending.is_empty() {
            self.flush = false;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(jsn: u64) -> FrameRecord {
        FrameRecord {
            jsn,
            time_ms: 0,
            src: [0; 6],
            first_seq: 0,
            first_new: 0,
            frame: vec![1],
        }
    }

    #[test]
    fn a_block_is_due_by_count_or_by_age_whichever_comes_first() {
        let t0 = Instant::now();
        let mut b = Batcher::new(3, Duration::from_millis(100));
        assert!(!b.due(t0) && b.deadline().is_none());
        b.push(t0, rec(1));
        b.push(t0 + Duration::from_millis(10), rec(2));
        assert!(!b.due(t0 + Duration::from_millis(99)));
        assert!(
            b.due(t0 + Duration::from_millis(100)),
            "the oldest frame is 100 ms old"
        );
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        b.push(t0 + Duration::from_millis(20), rec(3));
        b.push(t0 + Duration::from_millis(20), rec(4));
        assert!(
            b.due(t0 + Duration::from_millis(20)),
            "three frames fill a block"
        );
        let jsns: Vec<u64> = b.take().iter().map(|r| r.jsn).collect();
        assert_eq!(jsns, [1, 2, 3]);
        assert_eq!(b.len(), 1);
        assert!(!b.due(t0 + Duration::from_millis(119)));
        assert!(b.due(t0 + Duration::from_millis(120)));
    }

    #[test]
    fn flush_seals_everything_waiting_in_blocks_of_at_most_max_frames() {
        let t0 = Instant::now();
        let mut b = Batcher::new(2, Duration::from_secs(60));
        b.request_flush();
        b.push(t0, rec(1));
        assert!(!b.due(t0), "a flush of an empty queue is no standing order");
        for j in 2..=3 {
            b.push(t0, rec(j));
        }
        b.request_flush();
        assert!(b.due(t0));
        assert_eq!(b.take().len(), 2);
        assert!(b.due(t0), "the flush holds until the queue is empty");
        assert_eq!(b.take().len(), 1);
        b.push(t0, rec(4));
        assert!(!b.due(t0), "the flush ended with the queue");
    }
}
