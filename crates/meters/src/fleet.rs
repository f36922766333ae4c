//! The fleet: one thread drives every virtual meter.
//!
//! Each meter is the core's sans-IO `Sender` (real AES-CCM sealing, ACK
//! verification, backoff with jitter) plus a [`Household`] load model. The
//! thread keeps a timer heap of measurement ends and sender timeouts, waits
//! on the radio until the next timer, hands ACKs to the meter they are
//! addressed to (by destination MAC), and after every input drains the
//! meter's `poll_transmit`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration as StdDuration;

use gridpow_common::MonoClock;
use gridpow_keys::KeyDir;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::sender::{MeterSender, PushOutcome};
use gridpow_proto::wire::Reading;
use gridpow_proto::{Duration, Instant, MacAddr};
use gridpow_radio::{Confirmation, RadioError, RadioPort};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::FleetConfig;
use crate::load::{mix_seed, Household};
use crate::state::FleetState;
use crate::truth::{TruthRecord, TruthWriter};
use crate::FleetError;

/// Counters of the whole fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetStats {
    /// Meters running.
    pub meters: u64,
    /// Readings generated (measured and queued).
    pub generated: u64,
    /// Readings confirmed by an authentic ACK.
    pub acknowledged: u64,
    /// Readings dropped because a backlog was full (counted, never silent).
    pub dropped: u64,
    /// Readings neither acknowledged nor dropped yet (backlogs and frames in flight).
    pub unconfirmed: u64,
    /// Transmissions (first tries and retries).
    pub frames_sent: u64,
    /// Retransmissions only.
    pub retransmissions: u64,
    /// Frames given up after their retries (readings re-queued).
    pub frames_abandoned: u64,
    /// ACKs refused (bad tag, unexpected, malformed).
    pub acks_rejected: u64,
    /// Authentic ACKs of a frame already confirmed, ignored: a second relay
    /// in range answered too (spec §5).
    pub acks_late: u64,
    /// Radio send or receive errors.
    pub radio_errors: u64,
    /// Whether the fleet still generates readings (as seen by its thread).
    pub generating: bool,
}

struct Shared {
    stats: Mutex<FleetStats>,
    generating: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn stats(&self) -> FleetStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fleet.
pub struct FleetHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), FleetError>>>,
}

impl FleetHandle {
    /// Counters (refreshed by the fleet thread every 100 ms).
    pub fn stats(&self) -> FleetStats {
        self.shared.stats()
    }

    /// Stops making new readings; queued ones are still sent until confirmed.
    pub fn stop_generating(&self) {
        self.shared.generating.store(false, Ordering::Relaxed);
    }

    /// Waits until every generated reading is acknowledged or dropped (call
    /// [`FleetHandle::stop_generating`] first). Returns whether that happened
    /// within `timeout`.
    pub fn wait_drained(&self, timeout: StdDuration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.stats();
            if !s.generating && s.unconfirmed == 0 {
                return true;
            }
            if std::time::Instant::now() >= deadline
                || self.thread.as_ref().is_none_or(|t| t.is_finished())
            {
                return false;
            }
            std::thread::sleep(StdDuration::from_millis(20));
        }
    }

    /// Stops the fleet: flushes the truth file and saves the energy registers.
    pub fn shutdown(mut self) -> Result<FleetStats, FleetError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(r) => r?,
                Err(_) => return Err(FleetError::Panicked),
            }
        }
        Ok(self.stats())
    }
}

impl Drop for FleetHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct VirtualMeter {
    id: u32,
    mac: MacAddr,
    epoch: u32,
    /// The core's sender over a backlog sized by the configuration.
    sender: MeterSender<RustCrypto, Box<[Reading]>>,
    house: Household,
    last_end_ms: Option<u64>,
    /// The sender deadline currently in the timer heap.
    scheduled: Option<Instant>,
    first: bool,
}

/// A timer: (when, meter index, kind).
type Timer = Reverse<(Instant, usize, u8)>;
const MEASURE: u8 = 0;
const SENDER: u8 = 1;

/// The virtual meter fleet.
pub struct Fleet;

impl Fleet {
    /// The (meter id, MAC) pairs the fleet will use: the registered MAC or
    /// `virtual_meter_mac(id)`. An in-process medium port must own these.
    pub fn meter_macs(cfg: &FleetConfig) -> Result<Vec<(u32, MacAddr)>, FleetError> {
        let keys = KeyDir::new(&cfg.keys_dir);
        let registry = keys.meters()?;
        Ok(registry
            .meters
            .iter()
            .filter(|m| cfg.meters.contains(m.id))
            .map(|m| {
                (
                    m.id,
                    m.mac_bytes()
                        .unwrap_or_else(|| gridpow_common::virtual_meter_mac(m.id)),
                )
            })
            .collect())
    }

    /// Boots every selected meter (new boot epochs are saved before anything
    /// is sent) and starts the fleet thread.
    pub fn start(cfg: FleetConfig, radio: Box<dyn RadioPort>) -> Result<FleetHandle, FleetError> {
        cfg.validate(std::path::Path::new("fleet configuration"))?;
        let keys = KeyDir::new(&cfg.keys_dir);
        let site = keys.site()?;
        let registry = keys.meters()?;
        let records: Vec<_> = registry
            .meters
            .iter()
            .filter(|m| cfg.meters.contains(m.id))
            .cloned()
            .collect();
        if records.is_empty() {
            return Err(FleetError::NoMeters);
        }
        let ids: Vec<u32> = records.iter().map(|m| m.id).collect();
        // Two fleets on one state directory would hand out the same boot
        // epochs and counters (replays to the relay). Held by the fleet
        // thread, so it is released when that thread ends.
        let lock = gridpow_common::datadir::DataLock::dir(&cfg.state_dir)?;
        let mut state = FleetState::load(&cfg.state_dir)?;
        let epochs = state.boot(&ids);
        state.save(&cfg.state_dir)?;
        let mut meters = Vec::with_capacity(records.len());
        for (rec, epoch) in records.iter().zip(epochs) {
            let secret = site
                .meter_secret(rec.id, rec.key_id)
                .ok_or(FleetError::UnknownKeyId {
                    meter_id: rec.id,
                    key_id: rec.key_id,
                })?;
            let sender = MeterSender::with_backlog(
                RustCrypto,
                cfg.sender.sender_config(rec.id, rec.key_id, cfg.interval_s),
                &secret,
                epoch,
                0,
                vec![Reading::default(); cfg.backlog].into_boxed_slice(),
            )
            .map_err(|e| FleetError::Sender(e.to_string()))?;
            let energy = state.meters.get(&rec.id).and_then(|m| m.energy_mwh);
            meters.push(VirtualMeter {
                id: rec.id,
                mac: rec
                    .mac_bytes()
                    .unwrap_or_else(|| gridpow_common::virtual_meter_mac(rec.id)),
                epoch,
                sender,
                house: Household::new(rec.id, cfg.seed, cfg.utc_offset_h, energy),
                last_end_ms: None,
                scheduled: None,
                first: true,
            });
        }
        let truth = cfg
            .truth_file
            .as_deref()
            .map(TruthWriter::open)
            .transpose()?;
        let shared = Arc::new(Shared {
            stats: Mutex::new(FleetStats {
                meters: meters.len() as u64,
                generating: true,
                ..FleetStats::default()
            }),
            generating: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        });
        tracing::info!(
            meters = meters.len(),
            interval_s = cfg.interval_s,
            "virtual meters booted"
        );
        let driver = Driver {
            relay_mac: cfg.relay_mac(),
            interval: Duration::from_micros((cfg.interval_s * 1e6) as u64),
            rng: StdRng::seed_from_u64(mix_seed(cfg.seed, u32::MAX)),
            by_mac: meters.iter().enumerate().map(|(i, m)| (m.mac, i)).collect(),
            meters,
            radio,
            truth,
            state,
            state_dir: cfg.state_dir.clone(),
            _lock: lock,
            seed: cfg.seed,
            clock: MonoClock::new(),
            heap: BinaryHeap::new(),
            shared: shared.clone(),
            radio_errors: 0,
        };
        let thread = std::thread::Builder::new()
            .name("gridpow-meters".into())
            .spawn(move || driver.run())
            .map_err(|source| FleetError::Io {
                path: "fleet thread".into(),
                source,
            })?;
        Ok(FleetHandle {
            shared,
            thread: Some(thread),
        })
    }
}

struct Driver {
    relay_mac: MacAddr,
    interval: Duration,
    rng: StdRng,
    by_mac: HashMap<MacAddr, usize>,
    meters: Vec<VirtualMeter>,
    radio: Box<dyn RadioPort>,
    truth: Option<TruthWriter>,
    state: FleetState,
    state_dir: std::path::PathBuf,
    _lock: gridpow_common::datadir::DataLock,
    seed: u64,
    clock: MonoClock,
    heap: BinaryHeap<Timer>,
    shared: Arc<Shared>,
    radio_errors: u64,
}

impl Driver {
    fn run(mut self) -> Result<(), FleetError> {
        let start = self.clock.now();
        for i in 0..self.meters.len() {
            // Spread the first readings over one interval, deterministically.
            let frac = (mix_seed(self.seed, self.meters[i].id) % 10_000) as f64 / 10_000.0;
            let offset = Duration::from_micros((self.interval.as_micros() as f64 * frac) as u64);
            self.heap.push(Reverse((start + offset, i, MEASURE)));
        }
        let mut last_stats = start;
        let mut last_save = start;
        let mut generating = true;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = self.clock.now();
            generating = self.shared.generating.load(Ordering::Relaxed);
            while let Some(&Reverse((at, i, kind))) = self.heap.peek() {
                if at > now {
                    break;
                }
                self.heap.pop();
                match kind {
                    MEASURE if generating => {
                        self.measure(i, now);
                        self.heap.push(Reverse((at + self.interval, i, MEASURE)));
                        self.drive(i, now);
                    }
                    MEASURE => {}
                    _ => {
                        if self.meters[i].scheduled == Some(at) {
                            self.meters[i].scheduled = None;
                            self.drive(i, now);
                        }
                    }
                }
            }
            let next = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let wait = next.map_or(StdDuration::from_millis(50), |t| {
                StdDuration::from_micros(t.as_micros().saturating_sub(now.as_micros()))
                    .min(StdDuration::from_millis(50))
            });
            match self.radio.recv(wait) {
                Ok(Some(frame)) => {
                    let now = self.clock.now();
                    if let Some(&i) = self.by_mac.get(&frame.dst) {
                        match self.meters[i].sender.handle_ack(now, &frame.data) {
                            // Authentic and for the frame in flight: the relay is where it came from.
                            Ok(_) => self.radio.confirm_peer(frame.src, Confirmation::Fresh),
                            Err(e) => {
                                tracing::debug!(meter = self.meters[i].id, error = %e, "ACK refused")
                            }
                        }
                        self.drive(i, now);
                    }
                }
                Ok(None) => {}
                Err(RadioError::Closed) => {
                    tracing::warn!("radio closed; fleet stops");
                    break;
                }
                Err(e) => {
                    self.radio_errors += 1;
                    tracing::warn!(error = %e, "radio receive failed");
                    std::thread::sleep(StdDuration::from_millis(10));
                }
            }
            let now = self.clock.now();
            if now - last_stats >= Duration::from_millis(100) {
                last_stats = now;
                self.publish_stats(generating);
                if let Some(t) = &mut self.truth {
                    t.flush();
                }
            }
            if now - last_save >= Duration::from_secs(60) {
                last_save = now;
                self.save_energy();
            }
        }
        self.publish_stats(generating && self.shared.generating.load(Ordering::Relaxed));
        if let Some(t) = &mut self.truth {
            t.flush();
        }
        self.save_energy();
        Ok(())
    }

    fn save_energy(&mut self) {
        for m in &self.meters {
            let p = self.state.meters.entry(m.id).or_default();
            p.energy_mwh = Some(m.house.energy_mwh());
        }
        if let Err(e) = self.state.save(&self.state_dir) {
            tracing::warn!(error = %e, "fleet state not saved");
        }
    }

    fn measure(&mut self, i: usize, now: Instant) {
        let m = &mut self.meters[i];
        let synced = m.sender.wall_clock_ms(now);
        let end = synced.unwrap_or_else(gridpow_common::wall_ms);
        let start = m
            .last_end_ms
            .map_or(end.saturating_sub(self.interval.as_millis()), |s| {
                s.min(end)
            });
        m.last_end_ms = Some(end);
        let x = m.house.measure(start, end);
        let mut flags = 0;
        if synced.is_none() {
            flags |= Reading::FLAG_CLOCK_UNSYNCED;
        }
        if m.first {
            flags |= Reading::FLAG_RESTARTED;
            m.first = false;
        }
        let reading = Reading {
            timestamp_ms: end,
            voltage_cv: x.voltage_cv,
            current_ma: x.current_ma,
            active_power_dw: x.active_power_dw,
            power_factor_e4: x.power_factor_e4,
            frequency_mhz: x.frequency_mhz,
            energy_mwh: x.energy_mwh,
            flags,
        };
        let seq = match m.sender.push_reading(reading) {
            PushOutcome::Queued { seq } => seq,
            PushOutcome::QueuedDroppedOldest { seq, dropped_seq } => {
                tracing::debug!(
                    meter = m.id,
                    dropped_seq,
                    "backlog full; oldest reading dropped"
                );
                seq
            }
            PushOutcome::SeqExhausted => {
                tracing::warn!(meter = m.id, "sequence numbers exhausted; reading dropped");
                return;
            }
        };
        if let Some(t) = &mut self.truth {
            t.write(&TruthRecord::new(m.id, m.epoch, seq, &reading));
        }
    }

    /// Drains the meter's transmissions and reschedules its sender timer.
    fn drive(&mut self, i: usize, now: Instant) {
        let mut buf = [0u8; 256];
        loop {
            let entropy = self.rng.gen::<u32>();
            let m = &mut self.meters[i];
            match m.sender.poll_transmit(now, entropy, &mut buf) {
                Ok(Some(n)) => {
                    if let Err(e) = self.radio.send(m.mac, self.relay_mac, &buf[..n]) {
                        self.radio_errors += 1;
                        tracing::warn!(meter = m.id, error = %e, "radio send failed");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(meter = m.id, error = %e, "sender refused to build a frame");
                    break;
                }
            }
        }
        let m = &mut self.meters[i];
        let Some(mut at) = m.sender.poll_timeout() else {
            m.scheduled = None;
            return;
        };
        if at <= now {
            // Due already but nothing to send (e.g. holdoff just ending): look again shortly.
            at = now + Duration::from_millis(1);
        }
        if m.scheduled != Some(at) {
            m.scheduled = Some(at);
            self.heap.push(Reverse((at, i, SENDER)));
        }
    }

    fn publish_stats(&self, generating: bool) {
        let mut s = FleetStats {
            meters: self.meters.len() as u64,
            radio_errors: self.radio_errors,
            generating,
            ..FleetStats::default()
        };
        for m in &self.meters {
            let st = m.sender.stats();
            s.generated += st.readings_queued;
            s.acknowledged += st.readings_acked;
            s.dropped += st.readings_dropped;
            s.frames_sent += st.transmissions;
            s.retransmissions += st.retransmissions;
            s.frames_abandoned += st.frames_abandoned;
            s.acks_rejected += st.acks_rejected;
            s.acks_late += st.acks_late;
            s.unconfirmed += m.sender.unconfirmed() as u64;
        }
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}
