//! The meter firmware's logic (everything but the HAL calls) against the
//! relay's ingress from `gridpow-proto`, on a virtual millisecond clock.
//!
//! A fake ADC produces synthetic 50 Hz sine waves (voltage and a lagging
//! current, quantised to 12 bits with a little deterministic noise), a fake
//! radio carries frames over a lossy link with latency, and a fake NOR flash
//! survives reboots. Seeds are printed on failure and can be set with
//! `GRIDPOW_SEED`.

// Test helpers panic on broken fixtures; that is what a test should do.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use gridpow_firmware_logic::meter::{FrameOutcome, MeterNode, Radio, SampleSource, BROADCAST};
use gridpow_firmware_logic::provisioning::MeterConfig;
use gridpow_firmware_logic::state::MemFlash;
use gridpow_proto::crypto::{derive_meter_secret, HopKeys, MeterKeys, RustCrypto, SiteSecret};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, MeterEntry, Verdict};
use gridpow_proto::wire::uplink::MAX_BODY_LEN;
use gridpow_proto::wire::{Reading, UplinkPacket};
use gridpow_proto::{Instant, MacAddr};

const METER_ID: u32 = 4242;
const KEY_ID: u8 = 1;
const METER_MAC: MacAddr = [0x24, 0x6f, 0x28, 0, 0, 1];
const RELAY_MAC: MacAddr = [0x24, 0x6f, 0x28, 0, 0, 0xee];
const RATE: u32 = 4000;
const BLOCK: usize = 800; // 0.2 s
const WALL_EPOCH_MS: u64 = 1_767_225_600_000;

const V_AMP: f64 = 1500.0;
const I_AMP: f64 = 800.0;
const PHI_DEG: f64 = 30.0;

fn seed() -> u64 {
    std::env::var("GRIDPOW_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f1a5)
}

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Fake ADC: continuous sine waves, a sample index that survives blocks.
struct SineAdc {
    n: u64,
    noise: Rng,
}

impl SampleSource for SineAdc {
    type Error = ();
    fn read_block(&mut self, v: &mut [u16], i: &mut [u16]) -> Result<Instant, ()> {
        let w = 2.0 * std::f64::consts::PI * 50.0;
        let phi = PHI_DEG.to_radians();
        for k in 0..v.len() {
            let t = self.n as f64 / f64::from(RATE);
            let nv = (self.noise.next() % 3) as f64 - 1.0;
            let ni = (self.noise.next() % 3) as f64 - 1.0;
            v[k] = (2048.0 + V_AMP * (w * t).sin() + nv).round() as u16;
            i[k] = (2040.0 + I_AMP * (w * t - phi).sin() + ni).round() as u16;
            self.n += 1;
        }
        // The last pair of the block was taken at (n - 1) / rate.
        Ok(Instant::from_micros(
            (self.n - 1) * 1_000_000 / u64::from(RATE),
        ))
    }
}

/// Fake radio: what the meter sends, collected for the link to carry.
#[derive(Clone, Default)]
struct AirOut(Rc<RefCell<Vec<Sent>>>);

/// A frame the meter sent: destination and bytes.
type Sent = (MacAddr, Vec<u8>);

impl Radio for AirOut {
    type Error = ();
    fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), ()> {
        self.0.borrow_mut().push((*dst, data.to_vec()));
        Ok(())
    }
}

type Node<'f> = MeterNode<RustCrypto, &'f mut MemFlash<8192>, AirOut, 256>;

fn config(channel: u8, interval_s: u32) -> MeterConfig {
    let secret = derive_meter_secret(&RustCrypto, &SiteSecret([0x11; 32]), KEY_ID, METER_ID);
    let mut cfg = MeterConfig::new(METER_ID, KEY_ID, secret, channel, interval_s);
    // Gains that make the synthetic waves 230 V and 5 A RMS.
    cfg.calibration.voltage_gain = (230.0 / (V_AMP / 2f64.sqrt())) as f32;
    cfg.calibration.current_gain = (5.0 / (I_AMP / 2f64.sqrt())) as f32;
    cfg
}

fn relay(channel: u8) -> Ingress<RustCrypto, FixedMeterTable<4>> {
    let secret = derive_meter_secret(&RustCrypto, &SiteSecret([0x11; 32]), KEY_ID, METER_ID);
    let mut table = FixedMeterTable::new();
    table
        .insert(MeterEntry::new(
            METER_ID,
            Some(METER_MAC),
            HopKeys::new(KEY_ID, &secret.hop),
        ))
        .unwrap();
    Ingress::new(
        RustCrypto,
        IngressConfig {
            relay_id: 7,
            channel,
            require_registered_mac: true,
        },
        table,
    )
}

/// Everything the relay saw.
#[derive(Default)]
struct Delivered {
    /// (epoch, seq) → reading, each delivered once.
    readings: BTreeMap<(u32, u32), Reading>,
    /// Delivered twice (must stay empty).
    twice: Vec<(u32, u32)>,
    /// (epoch, counter) → frame bytes of every distinct frame heard.
    nonces: BTreeMap<(u32, u32), Vec<u8>>,
    /// The same nonce on different bytes (must stay empty).
    nonce_reuse: Vec<(u32, u32)>,
    /// Frames heard per destination.
    destinations: BTreeSet<MacAddr>,
}

/// One simulated link: meter ⇄ relay with loss and 3 ms latency each way.
struct Sim {
    rng: Rng,
    adc: SineAdc,
    air: AirOut,
    relay: Ingress<RustCrypto, FixedMeterTable<4>>,
    to_relay: Vec<(u64, Vec<u8>)>,
    to_meter: Vec<(u64, Vec<u8>)>,
    uplink_loss: f64,
    ack_loss: f64,
    relay_up: bool,
    t_ms: u64,
    seen: Delivered,
    acks: u64,
}

impl Sim {
    fn new(seed: u64, relay_channel: u8) -> Sim {
        Sim {
            rng: Rng(seed),
            adc: SineAdc {
                n: 0,
                noise: Rng(seed ^ 0xadc),
            },
            air: AirOut::default(),
            relay: relay(relay_channel),
            to_relay: Vec::new(),
            to_meter: Vec::new(),
            uplink_loss: 0.0,
            ack_loss: 0.0,
            relay_up: true,
            t_ms: 0,
            seen: Delivered::default(),
            acks: 0,
        }
    }

    fn boot<'f>(&mut self, cfg: &MeterConfig, flash: &'f mut MemFlash<8192>) -> Node<'f> {
        // The ADC's clock and the simulation clock are one: align the sample index.
        self.adc.n = self.t_ms * u64::from(RATE) / 1000;
        MeterNode::boot(
            cfg,
            RustCrypto,
            flash,
            self.air.clone(),
            Instant::from_millis(self.t_ms),
        )
        .unwrap()
    }

    /// Runs `ms` milliseconds of simulated time.
    fn run(&mut self, node: &mut Node<'_>, ms: u64) {
        let mut v = [0u16; BLOCK];
        let mut i = [0u16; BLOCK];
        let block_ms = (BLOCK as u64) * 1000 / u64::from(RATE);
        for _ in 0..ms {
            self.t_ms += 1;
            let now = Instant::from_millis(self.t_ms);
            if self.t_ms % block_ms == 0 {
                let end = self.adc.read_block(&mut v, &mut i).unwrap();
                node.handle_block(end, &v, &i);
            }
            // Deliver what arrived.
            let (due, rest): (Vec<_>, Vec<_>) = self
                .to_relay
                .drain(..)
                .partition(|(at, _)| *at <= self.t_ms);
            self.to_relay = rest;
            for (_, frame) in due {
                self.relay_hears(&frame);
            }
            let (due, rest): (Vec<_>, Vec<_>) = self
                .to_meter
                .drain(..)
                .partition(|(at, _)| *at <= self.t_ms);
            self.to_meter = rest;
            for (_, ack) in due {
                if let FrameOutcome::Acked(_) = node.handle_frame(now, &RELAY_MAC, &ack) {
                    self.acks += 1;
                }
            }
            node.poll(now, self.rng.next() as u32);
            for (dst, frame) in self.air.0.borrow_mut().drain(..) {
                self.seen.destinations.insert(dst);
                if self.relay_up && !self.rng.chance(self.uplink_loss) {
                    self.to_relay.push((self.t_ms + 3, frame));
                }
            }
        }
    }

    fn relay_hears(&mut self, frame: &[u8]) {
        let p = UplinkPacket::new_checked(frame).unwrap();
        let key = (p.boot_epoch(), p.counter());
        match self.seen.nonces.get(&key) {
            Some(b) if b != frame => self.seen.nonce_reuse.push(key),
            _ => {
                self.seen.nonces.insert(key, frame.to_vec());
            }
        }
        let Ok(verdict) = self.relay.handle_frame(&METER_MAC, frame) else {
            return;
        };
        if let Verdict::Accepted(info) = verdict {
            // The relay cannot open readings; the test opens them as the server would.
            let secret =
                derive_meter_secret(&RustCrypto, &SiteSecret([0x11; 32]), KEY_ID, METER_ID);
            let keys = MeterKeys::new(&RustCrypto, KEY_ID, &secret);
            let mut scratch = [0u8; MAX_BODY_LEN];
            let body = UplinkPacket::new_checked(frame)
                .unwrap()
                .open(&RustCrypto, &keys, &mut scratch)
                .unwrap();
            for (seq, r) in body.readings().skip(usize::from(info.first_new)) {
                let k = (info.boot_epoch, seq);
                if self.seen.readings.insert(k, r).is_some() {
                    self.seen.twice.push(k);
                }
            }
        }
        let mut ack = [0u8; 64];
        let n = self
            .relay
            .emit_ack(&verdict, WALL_EPOCH_MS + self.t_ms, &mut ack)
            .unwrap();
        if !self.rng.chance(self.ack_loss) {
            self.to_meter.push((self.t_ms + 3, ack[..n].to_vec()));
        }
    }

    /// Every reading of `epoch` from seq 0 to `count − 1` arrived exactly once.
    fn assert_complete(&self, epoch: u32, count: u32) {
        for s in 0..count {
            assert!(
                self.seen.readings.contains_key(&(epoch, s)),
                "reading ({epoch}, {s}) missing"
            );
        }
        assert!(
            self.seen.twice.is_empty(),
            "delivered twice: {:?}",
            self.seen.twice
        );
        assert!(
            self.seen.nonce_reuse.is_empty(),
            "nonce reused: {:?}",
            self.seen.nonce_reuse
        );
    }
}

fn with_seed(f: impl FnOnce(u64)) {
    let seed = seed();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed)));
    if let Err(e) = r {
        eprintln!("failing seed: GRIDPOW_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

#[test]
fn readings_arrive_with_correct_values_and_acks_sync_the_clock() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 6);
        let mut flash = MemFlash::new();
        let mut node = sim.boot(&config(6, 1), &mut flash);
        assert_eq!(node.destination(), BROADCAST);
        sim.run(&mut node, 30_000);
        let epoch = node.boot_epoch();
        assert!(node.sender().stats().readings_acked >= 28);
        sim.assert_complete(epoch, 28);
        // The relay's MAC was learned from the first authentic ACK.
        assert_eq!(node.destination(), RELAY_MAC);

        let first = sim.seen.readings[&(epoch, 0)];
        assert_ne!(first.flags & Reading::FLAG_CLOCK_UNSYNCED, 0);
        assert_ne!(first.flags & Reading::FLAG_RESTARTED, 0);
        let later = sim.seen.readings[&(epoch, 20)];
        assert_eq!(later.flags, 0, "synced, no fault, not restarted");
        // Timestamp: the relay's clock at the end of the interval (±50 ms).
        let relay_now_then = WALL_EPOCH_MS + 21_000;
        assert!(
            later.timestamp_ms.abs_diff(relay_now_then) < 250,
            "timestamp {} vs {}",
            later.timestamp_ms,
            relay_now_then
        );
        // Values within 0.5 % of the analytic ones.
        let p = 230.0 * 5.0 * PHI_DEG.to_radians().cos();
        assert!(
            (later.voltage_v() - 230.0).abs() < 1.2,
            "{}",
            later.voltage_v()
        );
        assert!(
            (later.current_a() - 5.0).abs() < 0.025,
            "{}",
            later.current_a()
        );
        assert!((later.active_power_w() - p).abs() < p * 0.005);
        assert!((later.power_factor() - 0.866).abs() < 0.005);
        assert!((later.frequency_hz() - 50.0).abs() < 0.01);
        // Energy: P over 21 s of readings (±1 %).
        let expected_mwh = p * 21.0 / 3.6;
        let got = later.energy_mwh as f64;
        assert!(
            (got - expected_mwh).abs() < expected_mwh * 0.01,
            "{got} vs {expected_mwh}"
        );
    });
}

#[test]
fn reboots_increment_the_epoch_and_nonces_never_repeat() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 6);
        sim.uplink_loss = 0.2;
        sim.ack_loss = 0.2;
        let mut flash = MemFlash::new();
        let cfg = config(6, 1);
        let mut epochs = Vec::new();
        for _ in 0..4 {
            let mut node = sim.boot(&cfg, &mut flash);
            epochs.push(node.boot_epoch());
            sim.run(&mut node, 12_000);
            // Power cut: the node (and its RAM backlog) is gone.
        }
        assert_eq!(epochs, vec![1, 2, 3, 4]);
        assert!(
            sim.seen.nonce_reuse.is_empty(),
            "{:?}",
            sim.seen.nonce_reuse
        );
        // Every epoch's frames were accepted: the relay's window moved on.
        for e in &epochs {
            assert!(sim.seen.readings.keys().any(|(ep, _)| ep == e), "epoch {e}");
        }
        assert!(sim.seen.twice.is_empty());
    });
}

#[test]
fn loss_and_an_unreachable_relay_are_recovered_from_the_backlog() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 6);
        let mut flash = MemFlash::new();
        let mut node = sim.boot(&config(6, 1), &mut flash);
        sim.run(&mut node, 5_000);
        // Relay unreachable for a minute: readings pile up in RAM.
        sim.relay_up = false;
        sim.run(&mut node, 60_000);
        assert!(
            node.sender().unconfirmed() >= 55,
            "{}",
            node.sender().unconfirmed()
        );
        // Back, but lossy in both directions.
        sim.relay_up = true;
        sim.uplink_loss = 0.3;
        sim.ack_loss = 0.3;
        sim.run(&mut node, 90_000);
        // Then clean until the backlog drains.
        sim.uplink_loss = 0.0;
        sim.ack_loss = 0.0;
        sim.run(&mut node, 30_000);
        assert_eq!(node.sender().unconfirmed(), 0);
        assert_eq!(node.sender().stats().readings_dropped, 0);
        let made = node.stats().readings as u32;
        sim.assert_complete(node.boot_epoch(), made);
        assert!(node.sender().stats().retransmissions > 0);
    });
}

#[test]
fn meter_follows_the_channel_stated_in_acks() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 11);
        let mut flash = MemFlash::new();
        let mut node = sim.boot(&config(6, 1), &mut flash);
        assert_eq!(node.channel(), 6);
        sim.run(&mut node, 3_000);
        assert_eq!(node.channel(), 11);
    });
}

#[test]
fn a_lost_relay_makes_the_meter_scan_channels() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 6);
        sim.relay_up = false;
        let mut flash = MemFlash::new();
        let mut node = sim.boot(&config(6, 1), &mut flash);
        // Each abandoned frame costs 57–85.5 s of waits (3, 6, 12, 12, 12, 12 s,
        // each plus up to half in jitter) and a 5–7.5 s holdoff: the second
        // hop comes after at most 5 × 93 s.
        sim.run(&mut node, 480_000);
        assert!(node.stats().channel_changes >= 2);
        assert_ne!(node.channel(), 6);
    });
}

#[test]
fn energy_survives_a_reboot_through_the_checkpoint() {
    with_seed(|seed| {
        let mut sim = Sim::new(seed, 6);
        let mut flash = MemFlash::new();
        let mut cfg = config(6, 1);
        cfg.checkpoint_s = 10;
        let before;
        {
            let mut node = sim.boot(&cfg, &mut flash);
            sim.run(&mut node, 25_000);
            before = node.energy().import_mwh();
            assert!(node.stats().checkpoints >= 2);
        }
        let node = sim.boot(&cfg, &mut flash);
        let after = node.energy().import_mwh();
        // Restored from the checkpoint at 20 s: at most 10 s of energy lost.
        let p = 230.0 * 5.0 * PHI_DEG.to_radians().cos();
        assert!(after <= before);
        assert!(
            (before - after) as f64 <= p * 10.0 / 3.6 + 1.0,
            "{before} {after}"
        );
        assert!(after > 0);
    });
}
