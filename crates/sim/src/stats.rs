//! Measurements: a log-linear latency histogram, the trace hash, and the report.

use serde::Serialize;

use crate::config::{MacModel, Scheme};

/// Sub-buckets per power of two: values keep 7 significant bits (< 0.8 % error).
const SUB: u64 = 128;

/// A log-linear histogram of microsecond values (HdrHistogram's idea, fixed size).
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < 2 * SUB {
            v as usize
        } else {
            let e = 63 - v.leading_zeros() as u64 - 7;
            (e * SUB + (v >> e)) as usize
        }
    }

    fn lower_bound(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            i
        } else {
            let e = i / SUB - 1;
            (i - e * SUB) << e
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds every value `other` recorded.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), as the lower edge of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::lower_bound(i).min(self.max);
            }
        }
        self.max
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }
}

/// A multiplicative hash (FxHash's step) over the words of every processed
/// event: two runs are the same trace exactly when the hashes agree (up to
/// collisions).
#[derive(Clone, Copy, Debug)]
pub struct TraceHash(u64);

impl Default for TraceHash {
    fn default() -> Self {
        TraceHash(0xcbf2_9ce4_8422_2325)
    }
}

impl TraceHash {
    /// Mixes a word into the hash.
    pub fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    /// The hash so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The outcome of one run. Field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Master seed.
    pub seed: u64,
    /// Meters simulated.
    pub meters: u32,
    /// Relays.
    pub relays: u32,
    /// Channels.
    pub channels: u32,
    /// Medium access model.
    pub mac: MacModel,
    /// Retransmission scheme.
    pub scheme: Scheme,
    /// Mean report interval, s.
    pub interval_s: f64,
    /// Measuring span, s (readings are made during it).
    pub duration_s: f64,
    /// Simulated time including the drain, s.
    pub simulated_s: f64,
    /// Fraction of meter pairs hidden from each other.
    pub hidden_fraction: f64,
    /// Fraction of each cell's meters also heard by a second relay.
    pub overlap: f64,
    /// Meters heard by two relays.
    pub overlap_meters: u32,

    /// Readings made by the meters.
    pub readings_made: u64,
    /// Readings delivered to the relays' application, each exactly once
    /// however many relays delivered it (as the grid server stores it once).
    pub readings_delivered: u64,
    /// Delivered by a frame that was not given up (within the sender's retry budget).
    pub readings_delivered_in_budget: u64,
    /// Readings confirmed to their meter by an authentic ACK.
    pub readings_acked: u64,
    /// Readings that can never be delivered (dropped from a full backlog).
    pub readings_lost: u64,
    /// Readings still queued at the end of the drain.
    pub readings_pending: u64,
    /// Readings the backlogs dropped (oldest first).
    pub backlog_drops: u64,
    /// Readings one relay would have delivered twice (must be 0).
    pub duplicates_delivered: u64,
    /// Readings delivered by a second relay after another had delivered them:
    /// what the grid server counts as duplicate carriers (overlap only).
    pub readings_heard_by_both: u64,
    /// `readings_delivered / readings_made`.
    pub delivery_ratio: f64,
    /// `readings_delivered_in_budget / readings_made`.
    pub delivery_ratio_in_budget: f64,
    /// `readings_acked / readings_made`.
    pub acked_ratio: f64,
    /// `readings_lost / readings_made`.
    pub lost_ratio: f64,

    /// Uplink frames put on the air (first tries, retries, MAC retries).
    pub uplinks_simulated: u64,
    /// Distinct uplink frames the senders built.
    pub frames_built: u64,
    /// Sender-level retransmissions per reading made.
    pub retransmissions_per_reading: f64,
    /// MAC-level retransmissions (CSMA) per reading made.
    pub mac_retransmissions_per_reading: f64,
    /// Frames given up by senders after their retry budget.
    pub frames_abandoned: u64,
    /// Uplinks that arrived intact at their relay.
    pub uplinks_received: u64,
    /// Uplinks lost to overlap at their relay.
    pub uplinks_collided: u64,
    /// Uplinks lost to the channel (Bernoulli or bursty).
    pub uplinks_faded: u64,
    /// Uplinks that also arrived intact at an edge meter's second relay.
    pub uplinks_overheard: u64,
    /// gridpow ACK frames sent by relays (including MAC retries).
    pub acks_sent: u64,
    /// ACKs a meter received and verified.
    pub acks_accepted: u64,
    /// ACKs a meter received intact but did not accept: late ones (the
    /// second relay's after the first relay's confirmed the frame, or a
    /// repeated ACK; the sender's `acks_late`) and refused ones.
    pub acks_ignored: u64,

    /// G: uplink airtime offered per unit time per collision domain (frames per frame time).
    pub offered_load: f64,
    /// S: uplink airtime received intact per unit time per collision domain.
    pub throughput: f64,
    /// Fraction of time a collision domain carries at least one frame.
    pub channel_utilisation: f64,
    /// Airtime of all frames (uplinks, ACKs, MAC ACKs) per reading made, ms.
    pub airtime_per_reading_ms: f64,
    /// Readings delivered per second (whole network).
    pub goodput_readings_per_s: f64,
    /// Reading payload delivered, bit/s (32 bytes per reading, whole network).
    pub goodput_bps: f64,

    /// Latency from reading made to accepted by the relay: median, ms.
    pub latency_p50_ms: f64,
    /// 90th percentile, ms.
    pub latency_p90_ms: f64,
    /// 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// 99.9th percentile, ms.
    pub latency_p999_ms: f64,
    /// Largest, ms.
    pub latency_max_ms: f64,

    /// Mean radio-on time (transmitting or awaiting an ACK) per meter per hour, s.
    pub radio_on_s_per_meter_hour: f64,
    /// The same as a fraction of time.
    pub radio_duty_cycle: f64,

    /// Events processed.
    pub events: u64,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Uplinks simulated per wall-clock second.
    pub uplinks_per_wall_s: f64,
    /// Hash of the event trace, hex.
    pub trace_hash: String,
    /// The run was stopped before its end (a collapsed network in the study).
    pub stopped_early: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.001, 100.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q {q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn bucket_edges_are_monotone() {
        let mut last = 0;
        for i in 1..Histogram::bucket(u64::MAX) {
            let lb = Histogram::lower_bound(i);
            assert!(lb > last, "bucket {i}");
            assert_eq!(Histogram::bucket(lb), i);
            last = lb;
        }
    }
}
