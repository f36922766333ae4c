//! The validated configuration of one simulation run.

use serde::Serialize;

use crate::SimError;

/// How stations get on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MacModel {
    /// Pure ALOHA: transmit at once, no carrier sense, no MAC ACK.
    Aloha,
    /// Slotted ALOHA: transmit at the next slot boundary (slot = longest uplink).
    Slotted,
    /// 802.11 DCF as ESP-NOW uses it: carrier sense, DIFS, binary exponential
    /// backoff, MAC ACK after SIFS and MAC-level retries.
    Csma,
}

/// Which retransmission scheme the meters run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// gridpow's sender: up to 6 readings per frame, random start offset and
    /// phase, ACK timeout 3 s doubling to 12 s with up to 50 % random jitter,
    /// authenticated 48-byte ACK.
    Gridpow,
    /// The seed prototype: one reading per frame, fixed resend period, no jitter,
    /// no backoff, short unauthenticated ACK.
    Seed,
}

/// When meters make readings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Arrivals {
    /// Every interval, each interval stretched by a uniform factor in `1 ± jitter`.
    Periodic {
        /// Relative jitter of each interval.
        jitter: f64,
    },
    /// A Poisson process with the interval as mean gap.
    Poisson,
}

/// How the relay's ACK reaches the meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckAir {
    /// ACKs are radio frames like any other (what ESP-NOW does).
    InBand,
    /// ACKs arrive instantly and never get lost (the classical ALOHA model's
    /// assumption of a separate feedback channel).
    Ideal,
}

/// Gilbert-Elliott bursty loss on each meter's link: a two-state Markov chain in
/// continuous time, with exponential sojourns in the good and bad states.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GilbertElliott {
    /// Mean time in the good state, µs.
    pub mean_good_us: u64,
    /// Mean time in the bad state, µs.
    pub mean_bad_us: u64,
    /// Frame loss probability in the good state.
    pub loss_good: f64,
    /// Frame loss probability in the bad state.
    pub loss_bad: f64,
}

/// Everything one run needs. Build with [`SimConfig::new`], adjust fields, and
/// the simulation validates it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    /// Master seed of every random stream.
    pub seed: u64,
    /// Number of meters.
    pub meters: u32,
    /// Number of relays; meter `m` reports to relay `m % relays` (an edge
    /// meter also to a second one, see `overlap`).
    pub relays: u32,
    /// Fraction of each cell's meters that sit at its edge and are also heard
    /// by a second relay, the next relay of the same collision domain
    /// ([`SimConfig::second_relay`]). Needs at least two relays per channel.
    /// With isolated cells, overlapping cells are neighbours that hear each
    /// other: the cells of a channel pair up into one collision domain each.
    pub overlap: f64,
    /// Radio channels in use; relay `r` is on channel `r % channels`.
    pub channels: u32,
    /// Each relay's cell is out of range of every other cell (spatial reuse);
    /// otherwise all cells share one area and the relays of a channel share its air.
    pub isolated_cells: bool,
    /// Mean report interval, µs.
    pub interval_us: u64,
    /// Arrival process.
    pub arrivals: Arrivals,
    /// First readings spread uniformly over this span from the start, µs; `None`
    /// means one interval (meters booted at random times).
    pub boot_spread_us: Option<u64>,
    /// Readings are made during this span, µs.
    pub duration_us: u64,
    /// After `duration_us`, meters stop measuring and this long is given to
    /// deliver what is still queued, µs.
    pub drain_us: u64,
    /// Offered load, throughput and utilisation are measured after this, µs.
    pub warmup_us: u64,
    /// Medium access.
    pub mac: MacModel,
    /// MAC-level retransmissions after the first attempt (CSMA only).
    pub mac_retries: u8,
    /// Fraction of meter pairs that cannot hear each other.
    pub hidden_fraction: f64,
    /// Independent (Bernoulli) loss probability of each frame at each receiver.
    pub loss: f64,
    /// Bursty loss on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Capture threshold in dB: a frame survives overlap when it is this much
    /// stronger than the strongest interferer. `None` disables capture.
    pub capture_db: Option<f64>,
    /// Mean received power of meters at their relay, dBm.
    pub rssi_mean_dbm: f64,
    /// Standard deviation of that power across meters, dB.
    pub rssi_sd_db: f64,
    /// Retransmission scheme.
    pub scheme: Scheme,
    /// Override of the sender's `max_retries`.
    pub max_retries: Option<u8>,
    /// Override of the readings per frame (1 to 6).
    pub max_readings_per_frame: Option<usize>,
    /// Override of the sender's first ACK timeout, µs.
    pub ack_timeout_us: Option<u64>,
    /// Override of the sender's cap on the doubled ACK timeout, µs.
    pub max_backoff_us: Option<u64>,
    /// Override of the sender's random offset bound of a boot's first frame, µs.
    pub start_spread_us: Option<u64>,
    /// Override of the sender's random offset bound of every later new frame, µs.
    pub phase_spread_us: Option<u64>,
    /// Override of the sender's pause after giving a frame up, µs.
    pub retry_holdoff_us: Option<u64>,
    /// Resend period of the seed scheme, µs.
    pub seed_resend_us: u64,
    /// How ACKs travel.
    pub ack_air: AckAir,
    /// Relay processing time before it queues an ACK (journal commit), µs.
    pub ack_delay_us: u64,
    /// Draw each processing time from an exponential distribution with mean
    /// `ack_delay_us` instead of using it as a constant.
    pub ack_delay_random: bool,
    /// Keep every delivered `(meter, seq)` (for tests; costs memory).
    pub record_deliveries: bool,
    /// Threads to run on: collision domains (isolated cells, or channels)
    /// cannot hear each other, so they are simulated in parallel and merged;
    /// every result, the trace hash included, is the same for any count.
    #[serde(skip)]
    pub threads: u32,
}

/// Largest supported number of meters (ids must fit a 4-byte MAC suffix).
pub const MAX_METERS: u32 = 10_000_000;

impl SimConfig {
    /// A run of `meters` meters on one relay reporting every `interval_s`
    /// seconds for `duration_s` seconds, CSMA, gridpow scheme, no impairments.
    pub fn new(meters: u32, interval_s: f64, duration_s: f64) -> Self {
        SimConfig {
            seed: crate::rng::DEFAULT_SEED,
            meters,
            relays: 1,
            overlap: 0.0,
            channels: 1,
            isolated_cells: false,
            interval_us: secs_to_us(interval_s),
            arrivals: Arrivals::Periodic { jitter: 0.01 },
            boot_spread_us: None,
            duration_us: secs_to_us(duration_s),
            drain_us: 60_000_000,
            warmup_us: 0,
            mac: MacModel::Csma,
            mac_retries: 6,
            hidden_fraction: 0.0,
            loss: 0.0,
            burst: None,
            capture_db: None,
            rssi_mean_dbm: -70.0,
            rssi_sd_db: 6.0,
            scheme: Scheme::Gridpow,
            max_retries: None,
            max_readings_per_frame: None,
            ack_timeout_us: None,
            max_backoff_us: None,
            start_spread_us: None,
            phase_spread_us: None,
            retry_holdoff_us: None,
            seed_resend_us: 3_000_000,
            ack_air: AckAir::InBand,
            ack_delay_us: 0,
            ack_delay_random: false,
            record_deliveries: false,
            threads: 1,
        }
    }

    /// The speed benchmark (`gridpow sim --bench`, `gridpow bench`): 100 000
    /// meters at a 10 s interval for `duration_s` seconds, 100 isolated cells
    /// of 1 000 meters on 3 channels, CSMA, 30 s to drain.
    pub fn benchmark(seed: u64, duration_s: f64) -> Self {
        let mut cfg = SimConfig::new(100_000, 10.0, duration_s);
        cfg.seed = seed;
        cfg.relays = 100;
        cfg.channels = 3;
        cfg.isolated_cells = true;
        cfg.drain_us = 30_000_000;
        cfg
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), SimError> {
        let prob = |field: &'static str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(SimError::config(
                    field,
                    format!("must lie in [0, 1], got {p}"),
                ))
            }
        };
        if self.meters == 0 || self.meters > MAX_METERS {
            return Err(SimError::config(
                "meters",
                format!("must be 1 to {MAX_METERS}"),
            ));
        }
        if self.relays == 0 || self.relays > self.meters {
            return Err(SimError::config(
                "relays",
                "must be at least 1 and at most the number of meters",
            ));
        }
        if self.channels == 0 || self.channels > 14 {
            return Err(SimError::config("channels", "must be 1 to 14"));
        }
        if self.interval_us < 1_000 {
            return Err(SimError::config("interval", "must be at least 1 ms"));
        }
        if self.duration_us == 0 {
            return Err(SimError::config("duration", "must be positive"));
        }
        if self.warmup_us >= self.duration_us {
            return Err(SimError::config(
                "warmup",
                "must be shorter than the duration",
            ));
        }
        if let Arrivals::Periodic { jitter } = self.arrivals {
            if !(0.0..1.0).contains(&jitter) {
                return Err(SimError::config("jitter", "must lie in [0, 1)"));
            }
        }
        prob("hidden", self.hidden_fraction)?;
        prob("overlap", self.overlap)?;
        if self.overlap > 0.0 && self.relays < 2 * self.channels {
            return Err(SimError::config(
                "overlap",
                format!(
                    "needs a second relay on each meter's channel, so at least 2 relays per \
                     channel: {} relays for {} channel(s), got {}",
                    2 * self.channels,
                    self.channels,
                    self.relays
                ),
            ));
        }
        prob("loss", self.loss)?;
        if let Some(b) = self.burst {
            prob("burst-loss good-state loss", b.loss_good)?;
            prob("burst-loss bad-state loss", b.loss_bad)?;
            if b.mean_good_us == 0 || b.mean_bad_us == 0 {
                return Err(SimError::config(
                    "burst-loss",
                    "mean state durations must be positive",
                ));
            }
        }
        if let Some(c) = self.capture_db {
            if !c.is_finite() || c < 0.0 {
                return Err(SimError::config(
                    "capture",
                    "threshold must be a non-negative number of dB",
                ));
            }
        }
        if !self.rssi_mean_dbm.is_finite() || !self.rssi_sd_db.is_finite() || self.rssi_sd_db < 0.0
        {
            return Err(SimError::config(
                "rssi",
                "mean and deviation must be finite, deviation non-negative",
            ));
        }
        if let Some(n) = self.max_readings_per_frame {
            if !(1..=gridpow_proto::wire::uplink::MAX_READINGS).contains(&n) {
                return Err(SimError::config("max-readings-per-frame", "must be 1 to 6"));
            }
        }
        if self.ack_timeout_us == Some(0) {
            return Err(SimError::config("ack-timeout", "must be positive"));
        }
        if self.seed_resend_us == 0 {
            return Err(SimError::config("seed-resend", "must be positive"));
        }
        Ok(())
    }

    /// Readings per frame the senders use.
    pub fn readings_per_frame(&self) -> usize {
        match (self.max_readings_per_frame, self.scheme) {
            (Some(n), _) => n,
            (None, Scheme::Seed) => 1,
            (None, Scheme::Gridpow) => gridpow_proto::wire::uplink::MAX_READINGS,
        }
    }

    /// The collision domain of relay `relay`'s cell: its own when cells are
    /// isolated (with its neighbour's when cells overlap), else its channel's.
    pub fn relay_domain(&self, relay: u32) -> u32 {
        if !self.isolated_cells {
            return relay % self.channels;
        }
        if !self.overlaps() {
            return relay;
        }
        let c = self.channels;
        let ch = relay % c;
        // Pairs on the channels before this one, then this cell's pair.
        let before: u32 = (0..ch).map(|k| self.relays_on_channel(k) / 2).sum();
        let pairs = self.relays_on_channel(ch) / 2;
        before + (relay / c / 2).min(pairs - 1)
    }

    /// Number of separate collision domains.
    pub fn domains(&self) -> u32 {
        if !self.isolated_cells {
            self.channels.min(self.relays)
        } else if self.overlaps() {
            (0..self.channels)
                .map(|k| self.relays_on_channel(k) / 2)
                .sum()
        } else {
            self.relays
        }
    }

    /// Whether edge meters are heard by two relays (a valid configuration
    /// with `overlap > 0`).
    pub fn overlaps(&self) -> bool {
        self.overlap > 0.0 && self.relays >= 2 * self.channels
    }

    /// Relays on channel `ch`: `ch, ch + channels, ch + 2·channels, …`.
    fn relays_on_channel(&self, ch: u32) -> u32 {
        self.relays.saturating_sub(ch).div_ceil(self.channels)
    }

    /// The relay that also hears the edge meters of `relay`'s cell: the next
    /// relay of its collision domain (cyclically), so that it is on the same
    /// channel and the domain, and with it the sharding by domain, stays whole.
    /// Its edge meters are the neighbour's edge meters too only when the domain
    /// has two relays; with more, each cell overlaps the next one round a ring.
    pub fn neighbour_relay(&self, relay: u32) -> u32 {
        let c = self.channels;
        let (ch, i) = (relay % c, relay / c);
        let n = self.relays_on_channel(ch);
        // The domain's relays are positions start..end on the channel.
        let (start, end) = if self.isolated_cells {
            let pairs = (n / 2).max(1);
            let p = (i / 2).min(pairs - 1);
            (2 * p, if p + 1 == pairs { n } else { 2 * p + 2 })
        } else {
            (0, n)
        };
        let next = if i + 1 < end { i + 1 } else { start };
        ch + next * c
    }

    /// The second relay that hears meter `meter`, if it is an edge meter. Of
    /// each cell's meters (its `k`-th being meter `k·relays + relay`), the
    /// `k`-th is at the edge when `⌊(k+1)·overlap⌋ > ⌊k·overlap⌋`: exactly
    /// the fraction `overlap` of every cell (rounded down), spread evenly, and
    /// the same for any seed (0.2: every fifth meter; 1: every meter).
    pub fn second_relay(&self, meter: u32) -> Option<u32> {
        if !self.overlaps() {
            return None;
        }
        let k = f64::from(meter / self.relays);
        let edge = ((k + 1.0) * self.overlap).floor() > (k * self.overlap).floor();
        edge.then(|| self.neighbour_relay(meter % self.relays))
    }
}

/// Seconds to whole microseconds, saturating and treating NaN as zero.
pub fn secs_to_us(s: f64) -> u64 {
    if s.is_nan() || s <= 0.0 {
        0
    } else {
        (s * 1e6).round().min(u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlapping(relays: u32, channels: u32, isolated: bool) -> SimConfig {
        let mut cfg = SimConfig::new(1000, 10.0, 60.0);
        cfg.relays = relays;
        cfg.channels = channels;
        cfg.isolated_cells = isolated;
        cfg.overlap = 0.2;
        cfg
    }

    #[test]
    fn a_neighbour_relay_shares_the_channel_and_the_collision_domain() {
        for isolated in [false, true] {
            for channels in 1..=4 {
                for relays in 2 * channels..=5 * channels + 1 {
                    let cfg = overlapping(relays, channels, isolated);
                    assert!(cfg.validate().is_ok());
                    let mut used = vec![false; cfg.domains() as usize];
                    for r in 0..relays {
                        let n = cfg.neighbour_relay(r);
                        let what = format!("relay {r} of {relays}, {channels} ch, {isolated}");
                        assert_ne!(n, r, "{what}");
                        assert!(n < relays, "{what}");
                        assert_eq!(n % channels, r % channels, "{what}");
                        assert_eq!(cfg.relay_domain(n), cfg.relay_domain(r), "{what}");
                        used[cfg.relay_domain(r) as usize] = true;
                    }
                    assert!(used.iter().all(|&u| u), "domains are numbered densely");
                }
            }
        }
    }

    #[test]
    fn isolated_overlapping_cells_pair_up_and_an_odd_one_joins_the_last_pair() {
        let cfg = overlapping(7, 3, true);
        // Channel 0 holds relays 0, 3, 6 (one domain of three), 1 has 1, 4, 2 has 2, 5.
        assert_eq!(cfg.domains(), 3);
        let doms: Vec<u32> = (0..7).map(|r| cfg.relay_domain(r)).collect();
        assert_eq!(doms, [0, 1, 2, 0, 1, 2, 0]);
        let next: Vec<u32> = (0..7).map(|r| cfg.neighbour_relay(r)).collect();
        assert_eq!(next, [3, 4, 5, 6, 1, 2, 0]);
        let cfg = overlapping(8, 2, true);
        assert_eq!(cfg.domains(), 4);
        assert_eq!(cfg.neighbour_relay(4), 6);
        assert_eq!(cfg.neighbour_relay(6), 4);
    }

    #[test]
    fn the_edge_meters_are_the_requested_fraction_of_every_cell() {
        let mut cfg = overlapping(4, 1, false);
        for (f, want) in [(0.0, 0), (0.2, 50), (0.5, 125), (1.0, 250)] {
            cfg.overlap = f;
            for r in 0..4 {
                let edge = (0..1000)
                    .filter(|m| m % 4 == r && cfg.second_relay(*m).is_some())
                    .count();
                assert_eq!(edge, want, "overlap {f}, relay {r}");
            }
        }
        cfg.overlap = 0.2;
        assert_eq!(cfg.second_relay(16), Some(1), "the fifth meter of cell 0");
        assert_eq!(cfg.second_relay(0), None);
    }

    #[test]
    fn overlap_without_a_second_relay_on_the_channel_is_refused() {
        for (relays, channels) in [(1, 1), (3, 2), (5, 3)] {
            let err = overlapping(relays, channels, false)
                .validate()
                .map(|()| "accepted".to_string())
                .unwrap_or_else(|e| e.to_string());
            assert!(err.contains("overlap"), "{relays} relays: {err}");
        }
        let mut cfg = overlapping(2, 1, false);
        cfg.overlap = 1.5;
        assert!(cfg.validate().is_err());
        cfg.overlap = f64::NAN;
        assert!(cfg.validate().is_err());
    }
}
