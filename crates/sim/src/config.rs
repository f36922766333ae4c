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
    /// Number of relays; meter `m` reports to relay `m % relays`.
    pub relays: u32,
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
    /// isolated, else its channel's.
    pub fn relay_domain(&self, relay: u32) -> u32 {
        if self.isolated_cells {
            relay
        } else {
            relay % self.channels
        }
    }

    /// Number of separate collision domains.
    pub fn domains(&self) -> u32 {
        if self.isolated_cells {
            self.relays
        } else {
            self.channels.min(self.relays)
        }
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
