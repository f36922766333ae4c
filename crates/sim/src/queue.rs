//! The event queue: a binary min-heap of compact, copyable events ordered by
//! time, then by insertion sequence, so simultaneous events run in the order
//! they were scheduled and every run with one seed replays identically.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What an event does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A meter finishes a measurement interval.
    Reading = 0,
    /// A meter's sender timer (`poll_timeout`) is due.
    Wake = 1,
    /// A station's backoff or slot wait ends: it transmits.
    Access = 2,
    /// A transmission leaves the air.
    TxEnd = 3,
    /// A station gave up waiting for the MAC ACK.
    MacAckTimeout = 4,
    /// A relay finished processing a frame and queues its ACK.
    AckReady = 5,
}

impl Kind {
    fn from_u8(k: u8) -> Kind {
        match k {
            0 => Kind::Reading,
            1 => Kind::Wake,
            2 => Kind::Access,
            3 => Kind::TxEnd,
            4 => Kind::MacAckTimeout,
            _ => Kind::AckReady,
        }
    }
}

/// One scheduled event: 24 bytes, no heap data.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    time: u64,
    /// Insertion sequence in the upper 56 bits, kind in the lowest 8.
    seq_kind: u64,
    /// The node (meter, relay) or transmission the event is about.
    pub node: u32,
    /// A generation number (to skip cancelled events) or a frame index.
    pub aux: u32,
}

impl Event {
    /// When it fires, µs.
    pub fn time(&self) -> u64 {
        self.time
    }
    /// What it does.
    pub fn kind(&self) -> Kind {
        Kind::from_u8(self.seq_kind as u8)
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.time == other.time && self.seq_kind == other.seq_kind
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed, so `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq_kind).cmp(&(self.time, self.seq_kind))
    }
}

/// Bucket width: 2^10 µs (about one frame time).
const WIDTH_SHIFT: u32 = 10;
/// Buckets in the calendar: 2^14 × 1.024 ms ≈ 16.8 s ahead.
const BUCKETS: u64 = 1 << 14;

/// The simulator's agenda: a calendar queue. Events within the horizon go to
/// per-millisecond buckets (O(1) push); the bucket being drained is kept sorted
/// by (time, sequence); events beyond the horizon wait in a binary heap. A
/// plain binary heap of a few hundred thousand events spends most of its time
/// in cache misses; this spends it sorting ~100 events that fit in L1.
pub struct EventQueue {
    buckets: Vec<Vec<Event>>,
    /// Absolute number (`time >> WIDTH_SHIFT`) of the bucket in `current`.
    current_bucket: u64,
    /// The current bucket's events in ascending order; `head` is the next to pop.
    current: Vec<Event>,
    head: usize,
    /// Events in `buckets` (not counting `current` and `far`).
    near: usize,
    far: BinaryHeap<Event>,
    next_seq: u64,
}

impl Default for EventQueue {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

fn key(e: &Event) -> (u64, u64) {
    (e.time, e.seq_kind)
}

impl EventQueue {
    /// An empty queue; `cap` hints the number of far-future events.
    pub fn with_capacity(cap: usize) -> Self {
        EventQueue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            current_bucket: 0,
            current: Vec::new(),
            head: 0,
            near: 0,
            far: BinaryHeap::with_capacity(cap),
            next_seq: 0,
        }
    }

    /// Schedules an event. Times earlier than the last popped event are run
    /// next (the simulator never schedules into the past).
    pub fn push(&mut self, time: u64, kind: Kind, node: u32, aux: u32) {
        let seq_kind = (self.next_seq << 8) | kind as u64;
        self.next_seq += 1;
        let e = Event {
            time,
            seq_kind,
            node,
            aux,
        };
        let b = time >> WIDTH_SHIFT;
        if b <= self.current_bucket {
            // Usually later than everything queued, so the insertion moves little.
            let pos = self.head + self.current[self.head..].partition_point(|x| key(x) < key(&e));
            self.current.insert(pos, e);
        } else if b < self.current_bucket + BUCKETS {
            self.buckets[(b % BUCKETS) as usize].push(e);
            self.near += 1;
        } else {
            self.far.push(e);
        }
    }

    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<Event> {
        loop {
            if let Some(&e) = self.current.get(self.head) {
                self.head += 1;
                return Some(e);
            }
            self.current.clear();
            // Buckets trade vectors with `current`; keep a burst from pinning memory.
            if self.current.capacity() > 4096 {
                self.current.shrink_to(4096);
            }
            self.head = 0;
            if self.near == 0 {
                // Nothing within the horizon: jump straight to the far events.
                let first = self.far.peek()?.time >> WIDTH_SHIFT;
                self.current_bucket = first.saturating_sub(1);
            }
            self.current_bucket += 1;
            let horizon = self.current_bucket + BUCKETS;
            while let Some(e) = self.far.peek() {
                let b = e.time >> WIDTH_SHIFT;
                if b >= horizon {
                    break;
                }
                if let Some(e) = self.far.pop() {
                    self.buckets[(b % BUCKETS) as usize].push(e);
                    self.near += 1;
                }
            }
            let slot = (self.current_bucket % BUCKETS) as usize;
            std::mem::swap(&mut self.current, &mut self.buckets[slot]);
            self.near -= self.current.len();
            self.current.sort_unstable_by_key(key);
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.current.len() - self.head + self.near + self.far.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pop_by_time_then_by_insertion_order() {
        let mut q = EventQueue::default();
        q.push(20, Kind::Wake, 1, 0);
        q.push(10, Kind::TxEnd, 2, 0);
        q.push(20, Kind::Reading, 3, 0);
        q.push(10, Kind::Access, 4, 0);
        let order: Vec<(u64, u32, Kind)> = std::iter::from_fn(|| q.pop())
            .map(|e| (e.time(), e.node, e.kind()))
            .collect();
        assert_eq!(
            order,
            vec![
                (10, 2, Kind::TxEnd),
                (10, 4, Kind::Access),
                (20, 1, Kind::Wake),
                (20, 3, Kind::Reading)
            ]
        );
    }

    #[test]
    fn calendar_queue_pops_in_the_same_order_as_a_sorted_list() {
        // Times spanning the current bucket, the calendar and the far heap,
        // pushed both up front and while popping, as the simulator does.
        let mut q = EventQueue::default();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut x = 12345u64;
        let mut next = |m: u64| {
            x = crate::rng::mix64(x);
            x % m
        };
        let mut seq = 0u64;
        for _ in 0..2000 {
            let t = next(60_000_000);
            q.push(t, Kind::Wake, 0, 0);
            model.push((t, seq));
            seq += 1;
        }
        let mut popped = Vec::new();
        let mut now = 0;
        while let Some(e) = q.pop() {
            assert!(e.time() >= now, "time went backwards");
            now = e.time();
            popped.push((e.time(), e.seq_kind >> 8));
            if popped.len() < 3000 {
                for _ in 0..2 {
                    let span = [1, 300, 5_000, 20_000_000][next(4) as usize];
                    let t = now + next(span);
                    q.push(t, Kind::Wake, 0, 0);
                    model.push((t, seq));
                    seq += 1;
                }
            }
        }
        model.sort_unstable();
        assert_eq!(popped, model);
        assert!(q.is_empty());
    }
}
