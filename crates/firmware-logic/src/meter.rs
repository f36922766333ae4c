//! The meter application: sample blocks in, sealed frames out.
//!
//! [`MeterNode`] owns everything but the hardware: the metering computation
//! (`gridpow-metering`), the interval accumulator, the energy register, the
//! protocol sender (`gridpow_proto::sender::Sender`), the persistent state
//! log (boot epoch and energy checkpoints) and the channel procedure. The
//! hardware comes in through traits: [`Radio`] (ESP-NOW), [`Flash`]
//! (the state partition), and time and randomness as arguments; sample
//! blocks come from a [`SampleSource`] (the ADC) through the driver.
//!
//! ## Driving it (the firmware's main task does exactly this)
//! 1. [`MeterNode::boot`] once: reserves a new boot epoch in flash (written
//!    and read back) *before* any frame can be built.
//! 2. For every sample block: [`MeterNode::handle_block`].
//! 3. For every frame heard on the radio: [`MeterNode::handle_frame`].
//! 4. After every input and when [`MeterNode::poll_timeout`] passes:
//!    [`MeterNode::poll`], which transmits what is due and writes energy
//!    checkpoints. Then apply [`MeterNode::channel`] to the radio if it changed.
//!
//! ## Channel procedure
//! ACKs state the relay's channel. A meter that hears a different channel in
//! an authentic ACK moves there. A meter that lost its relay (3 frames in a
//! row abandoned after all retries) hops to the next channel (1 → 13, then
//! 1 again) after each further abandoned frame until an ACK arrives.

use gridpow_metering::{EnergyRegister, Measurement, Meter, MeteringError};
use gridpow_proto::crypto::CryptoProvider;
use gridpow_proto::sender::{Acked, PushOutcome, Sender, SenderConfig};
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::Reading;
use gridpow_proto::{Duration, Error as ProtoError, Instant, MacAddr, Misuse};

use crate::provisioning::MeterConfig;
use crate::state::{reserve_boot_epoch, Flash, MeterState, StateError, StateLog, KIND_METER};

/// ESP-NOW broadcast address: used until the relay's MAC is known.
pub const BROADCAST: MacAddr = [0xff; 6];

/// Highest Wi-Fi channel scanned (13 is legal in most of the world).
pub const MAX_SCAN_CHANNEL: u8 = 13;

/// Abandoned frames in a row before the meter starts scanning channels.
pub const SCAN_AFTER_ABANDONED: u64 = 3;

/// Sends ESP-NOW frames.
pub trait Radio {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Queues `data` for `dst`. Loss on the air is not an error.
    fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), Self::Error>;
}

/// Acquires blocks of simultaneous voltage and current samples.
pub trait SampleSource {
    /// The driver's error.
    type Error: core::fmt::Debug;
    /// Fills both slices (equal lengths) at the configured rate and returns
    /// the instant the last pair was taken.
    fn read_block(
        &mut self,
        voltage: &mut [u16],
        current: &mut [u16],
    ) -> Result<Instant, Self::Error>;
}

/// The monotonic clock of the device.
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
}

/// A source of random `u32`s (the hardware RNG); only jitters timers.
pub trait Entropy {
    /// A fresh random value.
    fn next_u32(&mut self) -> u32;
}

/// Why the meter could not boot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BootError<E> {
    /// The state partition could not be read or the epoch not reserved.
    State(StateError<E>),
    /// The calibration or sample rate in the configuration is unusable.
    Metering(MeteringError),
    /// The protocol sender refused the configuration.
    Proto(ProtoError),
}

/// Counters for rates; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Sample blocks measured.
    pub blocks: u64,
    /// Blocks refused by the metering (bad samples); the interval is flagged.
    pub block_errors: u64,
    /// Readings made (one per interval).
    pub readings: u64,
    /// Frames the radio driver refused.
    pub radio_errors: u64,
    /// Energy checkpoints written.
    pub checkpoints: u64,
    /// Checkpoints that failed (retried at the next period).
    pub checkpoint_errors: u64,
    /// New epochs started because the frame counter ran out.
    pub epoch_rollovers: u64,
    /// Readings lost by an epoch rollover (the backlog of the old sender).
    pub rollover_lost_readings: u64,
    /// Channel changes (ACK-stated or scanning).
    pub channel_changes: u64,
}

/// Accumulates block measurements into one interval reading, weighted by
/// each block's duration: RMS of RMS values for voltage and current (exact
/// over the interval), mean active power, mean frequency of the blocks that
/// had one.
#[derive(Clone, Copy, Debug, Default)]
pub struct IntervalAccumulator {
    t_us: f64,
    v2: f64,
    i2: f64,
    p: f64,
    f_sum: f64,
    f_n: u32,
    saturated: bool,
    fault: bool,
}

impl IntervalAccumulator {
    /// Adds one block measured over `duration_us`.
    pub fn add(&mut self, m: &Measurement, duration_us: u64) {
        let t = duration_us as f64;
        let (v, i) = (f64::from(m.voltage_v), f64::from(m.current_a));
        self.t_us += t;
        self.v2 += v * v * t;
        self.i2 += i * i * t;
        self.p += f64::from(m.active_power_w) * t;
        if m.frequency_hz > 0.0 {
            self.f_sum += f64::from(m.frequency_hz);
            self.f_n += 1;
        }
        self.saturated |= m.saturated;
    }

    /// Marks the interval as affected by a sensor fault.
    pub fn mark_fault(&mut self) {
        self.fault = true;
    }

    /// Whether any block was added.
    pub fn is_empty(&self) -> bool {
        self.t_us <= 0.0
    }

    /// The interval's measurement and whether a fault occurred; resets.
    pub fn take(&mut self) -> (Measurement, bool) {
        let acc = core::mem::take(self);
        let fault = acc.fault || acc.saturated;
        if acc.is_empty() {
            return (Measurement::default(), fault);
        }
        let v = libm::sqrt(acc.v2 / acc.t_us);
        let i = libm::sqrt(acc.i2 / acc.t_us);
        let p = acc.p / acc.t_us;
        let s = v * i;
        let pf = if s > 0.0 {
            (p / s).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let f = if acc.f_n > 0 {
            acc.f_sum / f64::from(acc.f_n)
        } else {
            0.0
        };
        (
            Measurement {
                voltage_v: v as f32,
                current_a: i as f32,
                active_power_w: p as f32,
                apparent_power_va: s as f32,
                power_factor: pf as f32,
                frequency_hz: f as f32,
                saturated: acc.saturated,
            },
            fault,
        )
    }
}

/// What a frame from the radio did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// An authentic ACK confirmed the frame in flight.
    Acked(Acked),
    /// Not an ACK for us (another meter's, forged, stale or malformed).
    Ignored(ProtoError),
}

/// The meter application; `N` is the backlog capacity in readings.
pub struct MeterNode<C: CryptoProvider + Clone, F: Flash, R: Radio, const N: usize> {
    cfg: MeterConfig,
    provider: C,
    sender: Sender<C, N>,
    meter: Meter,
    energy: EnergyRegister,
    interval: IntervalAccumulator,
    interval_start: Option<Instant>,
    last_block_end: Option<Instant>,
    log: StateLog<F>,
    state: MeterState,
    radio: R,
    relay_mac: Option<MacAddr>,
    channel: u8,
    abandoned_seen: u64,
    next_checkpoint: Instant,
    restarted: bool,
    last_reading: Option<(u32, Reading)>,
    stats: NodeStats,
}

impl<C: CryptoProvider + Clone, F: Flash, R: Radio, const N: usize> MeterNode<C, F, R, N> {
    /// Boots: opens the state log, reserves and persists a new boot epoch,
    /// restores the energy registers from the last checkpoint and prepares the
    /// sender. No frame can exist before this returns `Ok`.
    pub fn boot(
        cfg: &MeterConfig,
        provider: C,
        flash: F,
        radio: R,
        now: Instant,
    ) -> Result<Self, BootError<F::Error>> {
        let mut log = StateLog::open(flash, KIND_METER).map_err(BootError::State)?;
        let state = reserve_boot_epoch(&mut log, cfg.min_epoch).map_err(BootError::State)?;
        let mut mcfg = gridpow_metering::Config::new(cfg.effective_sample_rate_hz() as f32);
        mcfg.nominal_frequency_hz = f32::from(cfg.nominal_hz);
        let meter =
            Meter::new(mcfg, cfg.calibration.to_calibration()).map_err(BootError::Metering)?;
        let sender = Sender::new(
            provider.clone(),
            SenderConfig::new(cfg.meter_id, cfg.key_id),
            &cfg.secret,
            state.boot_epoch,
            0,
        )
        .map_err(BootError::Proto)?;
        Ok(MeterNode {
            cfg: cfg.clone(),
            provider,
            sender,
            meter,
            energy: EnergyRegister::with_totals(state.import_mwh, state.export_mwh),
            interval: IntervalAccumulator::default(),
            interval_start: None,
            last_block_end: None,
            log,
            state,
            radio,
            relay_mac: cfg.relay_mac,
            channel: cfg.channel,
            abandoned_seen: 0,
            next_checkpoint: now + Duration::from_secs(u64::from(cfg.effective_checkpoint_s())),
            restarted: true,
            last_reading: None,
            stats: NodeStats::default(),
        })
    }

    /// The boot epoch in use.
    pub fn boot_epoch(&self) -> u32 {
        self.state.boot_epoch
    }
    /// The protocol sender (stats, backlog, clock).
    pub fn sender(&self) -> &Sender<C, N> {
        &self.sender
    }
    /// Counters of the node.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }
    /// The energy registers.
    pub fn energy(&self) -> &EnergyRegister {
        &self.energy
    }
    /// The channel the radio should be on.
    pub fn channel(&self) -> u8 {
        self.channel
    }
    /// Where frames go: the relay's MAC, or broadcast until it is known.
    pub fn destination(&self) -> MacAddr {
        self.relay_mac.unwrap_or(BROADCAST)
    }
    /// The last reading queued and its sequence number (for the log and calibration).
    pub fn last_reading(&self) -> Option<(u32, Reading)> {
        self.last_reading
    }
    /// The radio (for the firmware to reconfigure it).
    pub fn radio_mut(&mut self) -> &mut R {
        &mut self.radio
    }
    /// Wall clock (Unix ms) once an ACK synchronised it.
    pub fn wall_clock_ms(&self, now: Instant) -> Option<u64> {
        self.sender.wall_clock_ms(now)
    }

    /// Measures one block whose last sample pair was taken at `end`. Closes
    /// the interval (queues a reading) when it is over; returns what the push did.
    pub fn handle_block(
        &mut self,
        end: Instant,
        voltage: &[u16],
        current: &[u16],
    ) -> Option<PushOutcome> {
        self.stats.blocks += 1;
        let rate = u64::from(self.cfg.effective_sample_rate_hz());
        let nominal_us = voltage.len() as u64 * 1_000_000 / rate.max(1);
        // Energy is integrated over the time since the previous block, so a
        // dropped block does not lose energy; long stalls are capped.
        let dt_us = match self.last_block_end {
            Some(prev) => (end - prev).as_micros().min(5_000_000),
            None => nominal_us,
        };
        self.last_block_end = Some(end);
        let start = *self
            .interval_start
            .get_or_insert(Instant::from_micros(end.as_micros().saturating_sub(dt_us)));
        match self.meter.measure(voltage, current) {
            Ok(m) => {
                // `add` refuses only non-finite power, which `measure` never returns.
                let _ = self.energy.add(m.active_power_w, dt_us);
                self.interval.add(&m, dt_us);
            }
            Err(_) => {
                self.stats.block_errors += 1;
                self.interval.mark_fault();
            }
        }
        let period = Duration::from_secs(u64::from(self.cfg.interval_s));
        if end < start + period {
            return None;
        }
        // Keep the cadence; after a long gap restart it from this block.
        let next = start + period;
        self.interval_start = Some(if end < next + period { next } else { end });
        Some(self.close_interval(end))
    }

    fn close_interval(&mut self, end: Instant) -> PushOutcome {
        let (m, fault) = self.interval.take();
        let w = m.to_wire();
        let mut flags = 0;
        let timestamp_ms = match self.sender.wall_clock_ms(end) {
            Some(t) => t,
            None => {
                flags |= Reading::FLAG_CLOCK_UNSYNCED;
                end.as_millis()
            }
        };
        if fault {
            flags |= Reading::FLAG_SENSOR_FAULT;
        }
        if core::mem::take(&mut self.restarted) {
            flags |= Reading::FLAG_RESTARTED;
        }
        self.stats.readings += 1;
        let reading = Reading {
            timestamp_ms,
            voltage_cv: w.voltage_cv,
            current_ma: w.current_ma,
            active_power_dw: w.active_power_dw,
            power_factor_e4: w.power_factor_e4,
            frequency_mhz: w.frequency_mhz,
            energy_mwh: self.energy.total_mwh(),
            flags,
        };
        let outcome = self.sender.push_reading(reading);
        if let Some(seq) = outcome.seq() {
            self.last_reading = Some((seq, reading));
        }
        outcome
    }

    /// Processes a frame heard from `src`. An authentic ACK confirms the frame
    /// in flight, synchronises the clock, names the relay and its channel.
    pub fn handle_frame(&mut self, now: Instant, src: &MacAddr, data: &[u8]) -> FrameOutcome {
        match self.sender.handle_ack(now, data) {
            Ok(acked) => {
                if self.cfg.relay_mac.is_none() {
                    self.relay_mac = Some(*src);
                }
                self.abandoned_seen = self.sender.stats().frames_abandoned;
                if acked.channel != 0 && acked.channel != self.channel {
                    self.channel = acked.channel;
                    self.stats.channel_changes += 1;
                }
                FrameOutcome::Acked(acked)
            }
            Err(e) => FrameOutcome::Ignored(e),
        }
    }

    /// Transmits what is due and writes an energy checkpoint when due.
    /// Returns the number of frames handed to the radio.
    pub fn poll(&mut self, now: Instant, entropy: u32) -> usize {
        let mut sent = 0;
        let mut buf = [0u8; MAX_LEN];
        loop {
            match self.sender.poll_transmit(now, entropy, &mut buf) {
                Ok(Some(len)) => {
                    let dst = self.destination();
                    if self.radio.send(&dst, &buf[..len]).is_err() {
                        self.stats.radio_errors += 1;
                    }
                    sent += 1;
                }
                Ok(None) => break,
                Err(ProtoError::Misuse(Misuse::CounterExhausted)) => {
                    if self.rollover_epoch().is_err() {
                        break;
                    }
                }
                // Any other error is a bug in buffer sizing; nothing to send now.
                Err(_) => break,
            }
        }
        self.scan_if_lost();
        if now >= self.next_checkpoint {
            self.checkpoint(now);
        }
        sent
    }

    /// When `poll` is next needed without other input.
    pub fn poll_timeout(&self) -> Instant {
        match self.sender.poll_timeout() {
            Some(t) => t.min(self.next_checkpoint),
            None => self.next_checkpoint,
        }
    }

    fn scan_if_lost(&mut self) {
        let abandoned = self.sender.stats().frames_abandoned;
        if abandoned >= self.abandoned_seen + SCAN_AFTER_ABANDONED {
            // Hop once per further abandoned frame.
            self.abandoned_seen = abandoned - (SCAN_AFTER_ABANDONED - 1);
            self.channel = if self.channel >= MAX_SCAN_CHANNEL {
                1
            } else {
                self.channel + 1
            };
            self.stats.channel_changes += 1;
        }
    }

    /// Writes the energy registers (with the current epoch) to flash.
    pub fn checkpoint(&mut self, now: Instant) {
        self.next_checkpoint =
            now + Duration::from_secs(u64::from(self.cfg.effective_checkpoint_s()));
        let st = MeterState {
            boot_epoch: self.state.boot_epoch,
            import_mwh: self.energy.import_mwh(),
            export_mwh: self.energy.export_mwh(),
        };
        match self.log.append(&st.to_payload()) {
            Ok(()) => {
                self.state = st;
                self.stats.checkpoints += 1;
            }
            Err(_) => self.stats.checkpoint_errors += 1,
        }
    }

    /// The frame counter ran out (2³² frames): reserve a new epoch and start a
    /// new sender. Readings still in the old backlog are lost and counted.
    fn rollover_epoch(&mut self) -> Result<(), BootError<F::Error>> {
        let st = reserve_boot_epoch(&mut self.log, self.cfg.min_epoch).map_err(BootError::State)?;
        let sender = Sender::new(
            self.provider.clone(),
            SenderConfig::new(self.cfg.meter_id, self.cfg.key_id),
            &self.cfg.secret,
            st.boot_epoch,
            0,
        )
        .map_err(BootError::Proto)?;
        self.stats.rollover_lost_readings += self.sender.unconfirmed() as u64;
        self.stats.epoch_rollovers += 1;
        self.abandoned_seen = 0;
        self.sender = sender;
        self.state = st;
        Ok(())
    }
}
