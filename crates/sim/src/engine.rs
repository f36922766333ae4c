//! The discrete-event engine: meters and relays run gridpow-proto's real
//! [`Sender`] and [`Ingress`] over a simulated clock and a simulated air.
//!
//! ## The air
//! Stations are grouped in collision domains (a channel in a shared area, or an
//! isolated cell). A transmission occupies `[start, end)` in its domain. When
//! two overlap, each one is damaged at its receiver if the other's sender is
//! audible there, or *is* the receiver (radios are half-duplex). Relays hear
//! every station of their domain; a configurable fraction of meter pairs are
//! hidden from each other. With capture on, a frame survives when it is at
//! least the threshold stronger than the strongest interferer. Independent and
//! bursty losses are drawn per frame and receiver on the meter's link.
//!
//! ## Overlapping cells
//! With `overlap > 0`, a meter at the edge of its cell is heard by a second
//! relay of its collision domain ([`SimConfig::second_relay`]). Its uplinks
//! stay addressed to its own relay (only that one sends the MAC ACK); the
//! second relay overhears them, each copy judged at that relay on its own:
//! overlap with what *it* hears, its own half-duplex state, and an
//! independent loss draw on a link of its own (same received power, the
//! meter sits between the two). Both relays run the real ingress, deliver
//! what they accept and send in-band ACKs that contend for the same air; the
//! meter's sender takes the first authentic ACK and counts the other as
//! late (spec §5). A reading delivered by both counts once, as the grid server stores
//! it once; the second delivery is counted apart (`readings_heard_by_both`).
//!
//! ## Medium access
//! ALOHA transmits at once, slotted ALOHA at the next slot boundary, both
//! without MAC ACK (the textbook models). CSMA follows 802.11 DCF: each
//! contender counts the audible transmissions in progress; when that count
//! drops to zero it waits DIFS and then counts its backoff down one slot at a
//! time, freezing when the medium turns busy. A station whose backoff ends
//! within the slot in which another starts transmits anyway (carrier sense
//! takes a slot to react), which is how DCF collides. Unicast frames get a MAC
//! ACK after SIFS; without it the contention window doubles (31 to 1023) and
//! the frame is retried up to `mac_retries` times.
//!
//! ## Driving the state machines
//! Exactly as a firmware or relay driver would: after every input (`push_reading`,
//! `handle_ack`, a timer) the meter's `poll_transmit` is drained and its
//! `poll_timeout` scheduled; relays call `handle_frame` and `emit_ack`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gridpow_proto::crypto::{derive_meter_secret, HopKeys, RustCrypto, SiteSecret};
use gridpow_proto::ingress::{FrameInfo, Ingress, IngressConfig, MeterEntry, Verdict};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::ack::ACK_LEN;
use gridpow_proto::wire::uplink;
use gridpow_proto::wire::Reading;
use gridpow_proto::{Duration, Instant};
use rand_core::Rng;
use rand_pcg::Pcg64Mcg;

use crate::config::{AckAir, Arrivals, MacModel, Scheme, SimConfig};
use crate::phy;
use crate::queue::{EventQueue, Kind};
use crate::rng::{self, Draw};
use crate::stats::{Histogram, Report, TraceHash};
use crate::table::{meter_mac, StridedMeterTable};
use crate::SimError;

/// Readings a meter's backlog holds (the `N` of `Sender<_, N>`).
pub const BACKLOG: usize = 32;
/// The site secret every simulated meter key derives from (a test value).
pub const TEST_SITE_SECRET: [u8; 32] = *b"gridpow simulator test site key!";
/// Key id of the simulated meters.
pub const KEY_ID: u8 = 1;
/// Boot epoch of the simulated meters.
pub const BOOT_EPOCH: u32 = 1;
/// Payload of the seed prototype's unauthenticated ACK (meter id and counter).
pub const SEED_ACK_LEN: usize = 8;
/// Unix time of the simulation's epoch, for readings and ACK clocks.
const BASE_UNIX_MS: u64 = 1_750_000_000_000;
/// Made-times kept per meter, by sequence number; must exceed the backlog plus
/// one frame so every reading that can still be delivered has its entry.
const RING: usize = 2 * BACKLOG;
const NONE: u32 = u32::MAX;
const FRAME_CAP: usize = uplink::MAX_LEN;

type MeterSender = Sender<RustCrypto, BACKLOG>;
type RelayIngress = Ingress<RustCrypto, StridedMeterTable>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MacState {
    /// No frame.
    Idle,
    /// Waiting for the medium, a slot or the backoff.
    Contending,
    /// On the air.
    Transmitting,
    /// Sent; waiting for the MAC ACK (CSMA).
    AwaitAck,
}

/// Per-station medium access state.
#[derive(Clone, Copy, Debug)]
struct Mac {
    state: MacState,
    /// Audible transmissions in progress (kept while contending).
    busy: u16,
    /// The backoff is counting down and an `Access` event is scheduled.
    counting: bool,
    retries: u8,
    cw: u16,
    backoff: u16,
    /// Bumped to void a pending MAC ACK timeout.
    gen: u32,
    /// Time of this station's live `Access` event, `u64::MAX` if none. At most
    /// one is live: a resumed backoff always ends later than the pending event,
    /// which re-arms itself when it fires, so freezes cost no events.
    pending_at: u64,
    /// When the backoff countdown (re)started: the end of DIFS.
    count_from: u64,
    access_at: u64,
    /// The frame being sent (index into the frame pool).
    frame: u32,
    /// A meter's next frame, handed over while `frame` is on the air.
    next: u32,
    /// Position in the domain's contender list.
    cpos: u32,
}

impl Mac {
    fn new() -> Self {
        Mac {
            state: MacState::Idle,
            busy: 0,
            counting: false,
            retries: 0,
            cw: phy::CW_MIN,
            backoff: 0,
            gen: 0,
            pending_at: u64::MAX,
            count_from: 0,
            access_at: 0,
            frame: NONE,
            next: NONE,
            cpos: NONE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameKind {
    Uplink,
    Ack,
}

struct FrameBuf {
    len: u8,
    dst: u32,
    kind: FrameKind,
    bytes: [u8; FRAME_CAP],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxKind {
    Uplink,
    Ack,
    MacAck,
}

#[derive(Clone, Copy, Debug)]
struct Tx {
    src: u32,
    dst: u32,
    start: u64,
    end: u64,
    frame: u32,
    kind: TxKind,
    /// Damaged beyond capture (the receiver transmitted meanwhile).
    corrupt: bool,
    /// Strongest audible interferer at the receiver, dBm.
    interference_dbm: f32,
    domain: u32,
    /// A second relay overhearing this uplink (an edge meter's), or `NONE`,
    /// and the damage there, judged as at `dst`.
    dst2: u32,
    corrupt2: bool,
    interference2_dbm: f32,
}

impl Tx {
    /// A transmission with one receiver, so far undamaged.
    fn new(src: u32, dst: u32, start: u64, end: u64, frame: u32, kind: TxKind, domain: u32) -> Tx {
        Tx {
            src,
            dst,
            start,
            end,
            frame,
            kind,
            corrupt: false,
            interference_dbm: f32::NEG_INFINITY,
            domain,
            dst2: NONE,
            corrupt2: false,
            interference2_dbm: f32::NEG_INFINITY,
        }
    }
}

/// A meter's radio link to one relay: its bursty-loss state and loss draws.
struct Link {
    ge_bad: bool,
    ge_next_flip: u64,
    rng_loss: Pcg64Mcg,
}

impl Link {
    /// A link whose Gilbert-Elliott state starts in its stationary distribution,
    /// drawn from `setup`.
    fn new(cfg: &SimConfig, setup: &mut Pcg64Mcg, rng_loss: Pcg64Mcg) -> Link {
        let (ge_bad, ge_next_flip) = match cfg.burst {
            Some(b) => {
                let (g, bd) = (b.mean_good_us as f64, b.mean_bad_us as f64);
                let bad = setup.chance(bd / (g + bd));
                (bad, setup.exp(if bad { bd } else { g }) as u64 + 1)
            }
            None => (false, u64::MAX),
        };
        Link {
            ge_bad,
            ge_next_flip,
            rng_loss,
        }
    }

    /// Draws whether a frame on this link at `now` is lost to the channel.
    fn lost(&mut self, cfg: &SimConfig, now: u64) -> bool {
        if let Some(b) = cfg.burst {
            while now >= self.ge_next_flip {
                self.ge_bad = !self.ge_bad;
                let mean = if self.ge_bad {
                    b.mean_bad_us
                } else {
                    b.mean_good_us
                };
                self.ge_next_flip += (self.rng_loss.exp(mean as f64) as u64).max(1);
            }
            let p = if self.ge_bad { b.loss_bad } else { b.loss_good };
            if self.rng_loss.chance(p) {
                return true;
            }
        }
        self.rng_loss.chance(cfg.loss)
    }
}

/// An edge meter's second relay.
struct SecondRelay {
    node: u32,
    link: Link,
    /// First sequence number that relay has not delivered.
    delivered_upto: u32,
    /// The ACK for this meter waiting in that relay's queue, if any.
    ack_queued: u32,
}

/// A meter's driver state besides its `Sender`.
struct MeterState {
    domain: u32,
    relay_node: u32,
    listen_since: u64,
    radio_on_us: u64,
    /// First sequence number not yet delivered by any relay.
    delivered_upto: u32,
    /// First sequence number its own relay has not delivered.
    own_delivered_upto: u32,
    /// Readings below this were in a frame the sender gave up.
    budget_mark: u32,
    /// The ACK for this meter waiting in its relay's queue, if any.
    ack_queued: u32,
    rssi_dbm: f32,
    link: Link,
    /// The second relay of an edge meter (boxed: most meters have none).
    second: Option<Box<SecondRelay>>,
    made_us: [u64; RING],
    rng_arrival: Pcg64Mcg,
    rng_entropy: Pcg64Mcg,
    rng_mac: Pcg64Mcg,
}

struct RelayState {
    node: u32,
    ingress: RelayIngress,
    queue: VecDeque<u32>,
    rng_mac: Pcg64Mcg,
}

#[derive(Default)]
struct Domain {
    active: Vec<u32>,
    contenders: Vec<u32>,
    busy_since: u64,
    busy_us: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counters {
    events: u64,
    readings_made: u64,
    uplinks_tx: u64,
    uplinks_rx: u64,
    uplinks_collided: u64,
    uplinks_faded: u64,
    mac_retx_uplink: u64,
    acks_sent: u64,
    offered_air_us: u64,
    received_air_us: u64,
    air_total_us: u64,
    delivered: u64,
    delivered_in_budget: u64,
    duplicates: u64,
    heard_by_both: u64,
    uplinks_overheard: u64,
    latency_unknown: u64,
    proto_errors: u64,
}

impl Counters {
    /// Adds another shard's counts.
    fn add(&mut self, o: &Counters) {
        self.events += o.events;
        self.readings_made += o.readings_made;
        self.uplinks_tx += o.uplinks_tx;
        self.uplinks_rx += o.uplinks_rx;
        self.uplinks_collided += o.uplinks_collided;
        self.uplinks_faded += o.uplinks_faded;
        self.mac_retx_uplink += o.mac_retx_uplink;
        self.acks_sent += o.acks_sent;
        self.offered_air_us += o.offered_air_us;
        self.received_air_us += o.received_air_us;
        self.air_total_us += o.air_total_us;
        self.delivered += o.delivered;
        self.delivered_in_budget += o.delivered_in_budget;
        self.duplicates += o.duplicates;
        self.heard_by_both += o.heard_by_both;
        self.uplinks_overheard += o.uplinks_overheard;
        self.latency_unknown += o.latency_unknown;
        self.proto_errors += o.proto_errors;
    }
}

/// Where a run stands, for progress display and early stopping.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Simulated time now, µs.
    pub now_us: u64,
    /// Simulated time at which the run ends, µs.
    pub end_us: u64,
    /// Readings made so far.
    pub readings_made: u64,
    /// Readings delivered within the retry budget so far.
    pub readings_delivered_in_budget: u64,
    /// Uplinks put on the air so far.
    pub uplinks: u64,
    /// Events processed so far.
    pub events: u64,
}

/// One simulation run. Create it with [`Simulation::new`], then [`Simulation::run`].
pub struct Simulation {
    cfg: SimConfig,
    now: u64,
    queue: EventQueue,
    senders: Vec<MeterSender>,
    meters: Vec<MeterState>,
    /// Time of each meter's pending `Wake` event, apart from the bulky state:
    /// most wakes are stale (the ACK came first) and only need this compare.
    wake_at: Vec<u64>,
    relays: Vec<RelayState>,
    macs: Vec<Mac>,
    domains: Vec<Domain>,
    txs: Vec<Tx>,
    tx_free: Vec<u32>,
    frames: Vec<FrameBuf>,
    frame_free: Vec<u32>,
    counters: Counters,
    latency: Histogram,
    /// One trace per collision domain, folded in domain order by the report:
    /// the trace does not depend on how domains were split over threads.
    traces: Vec<TraceHash>,
    deliveries: Vec<(u32, u32)>,
    /// Every `(relay, meter, seq)` each relay delivered, when recording.
    relay_deliveries: Vec<(u32, u32, u32)>,
    /// This simulation runs the domains `d` with `d % shard.1 == shard.0`.
    shard: (u32, u32),
    n_meters: u32,
    slot_us: u64,
    measure_from: u64,
    measure_to: u64,
}

/// Whether node `b` hears node `a` (both in one domain).
fn hears(cfg: &SimConfig, n_meters: u32, a: u32, b: u32) -> bool {
    a == b
        || a >= n_meters
        || b >= n_meters
        || !rng::pair_hidden(cfg.seed, a, b, cfg.hidden_fraction)
}

impl Simulation {
    /// Sets up meters (keys derived from [`TEST_SITE_SECRET`]), relays and the first events.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        Self::new_shard(cfg, 0, 1)
    }

    /// Like [`Simulation::new`], but only the meters of domains `d` with
    /// `d % shards == shard` make readings; the rest stay silent. Shards of
    /// one configuration run independently and [`Simulation::absorb`] merges them.
    fn new_shard(cfg: SimConfig, shard: u32, shards: u32) -> Result<Self, SimError> {
        cfg.validate()?;
        let site = SiteSecret(TEST_SITE_SECRET);
        let n = cfg.meters;
        let r = cfg.relays;
        let per_relay = (n / r + 1) as usize;
        let mut relays = Vec::with_capacity(r as usize);
        for i in 0..r {
            let ingress_cfg = IngressConfig {
                relay_id: i,
                channel: (i % cfg.channels + 1) as u8,
                require_registered_mac: true,
            };
            relays.push(RelayState {
                node: n + i,
                ingress: Ingress::new(
                    RustCrypto,
                    ingress_cfg,
                    StridedMeterTable::new(r, i, per_relay),
                ),
                queue: VecDeque::new(),
                rng_mac: rng::stream(cfg.seed, (1 << 40) | u64::from(i)),
            });
        }
        let relay_domain = |i: u32| cfg.relay_domain(i);
        let mut senders = Vec::with_capacity(n as usize);
        let mut meters = Vec::with_capacity(n as usize);
        let mut queue = EventQueue::with_capacity(n as usize + 64);
        let interval = cfg.interval_us as f64;
        for m in 0..n {
            let secret = derive_meter_secret(&RustCrypto, &site, KEY_ID, m);
            let mut sc = SenderConfig::new(m, KEY_ID);
            sc.max_readings_per_frame = cfg.readings_per_frame();
            if cfg.scheme == Scheme::Seed {
                let period = Duration::from_micros(cfg.seed_resend_us);
                sc.ack_timeout = period;
                sc.max_backoff = period;
                sc.retry_holdoff = period;
                sc.max_retries = u8::MAX;
                // The seed sends a reading as soon as it is made.
                sc.start_spread = Duration::ZERO;
                sc.phase_spread = Duration::ZERO;
            }
            if let Some(k) = cfg.max_retries {
                sc.max_retries = k;
            }
            if let Some(t) = cfg.ack_timeout_us {
                sc.ack_timeout = Duration::from_micros(t);
                sc.max_backoff = sc.max_backoff.max(sc.ack_timeout);
            }
            if let Some(t) = cfg.max_backoff_us {
                sc.max_backoff = Duration::from_micros(t);
            }
            if let Some(t) = cfg.start_spread_us {
                sc.start_spread = Duration::from_micros(t);
            }
            if let Some(t) = cfg.phase_spread_us {
                sc.phase_spread = Duration::from_micros(t);
            }
            if let Some(t) = cfg.retry_holdoff_us {
                sc.retry_holdoff = Duration::from_micros(t);
            }
            senders.push(Sender::new(RustCrypto, sc, &secret, BOOT_EPOCH, 0)?);
            let relay = m % r;
            let entry = MeterEntry::new(m, Some(meter_mac(m)), HopKeys::new(KEY_ID, &secret.hop));
            if !relays[relay as usize].ingress.table_mut().push(entry) {
                return Err(SimError::config(
                    "relays",
                    "meter ids out of order (internal)",
                ));
            }
            let base = u64::from(m) << 3;
            let mut setup = rng::stream(cfg.seed, base | 4);
            let mut rng_arrival = rng::stream(cfg.seed, base);
            let rssi = (cfg.rssi_mean_dbm + cfg.rssi_sd_db * setup.normal()) as f32;
            let link = Link::new(&cfg, &mut setup, rng::stream(cfg.seed, base | 3));
            let second = match cfg.second_relay(m) {
                Some(r2) => {
                    let entry =
                        MeterEntry::new(m, Some(meter_mac(m)), HopKeys::new(KEY_ID, &secret.hop));
                    if !relays[r2 as usize]
                        .ingress
                        .table_mut()
                        .push_neighbour(entry)
                    {
                        return Err(SimError::config(
                            "overlap",
                            "neighbour meter ids out of order (internal)",
                        ));
                    }
                    // Its own streams, so edge meters leave every other draw as it was.
                    let mut setup2 = rng::stream(cfg.seed, base | 5);
                    let rng_loss = rng::stream(cfg.seed, base | 6);
                    Some(Box::new(SecondRelay {
                        node: n + r2,
                        link: Link::new(&cfg, &mut setup2, rng_loss),
                        delivered_upto: 0,
                        ack_queued: NONE,
                    }))
                }
                None => None,
            };
            let first = match (cfg.arrivals, cfg.boot_spread_us) {
                (_, Some(spread)) => rng_arrival.below(spread.max(1)),
                (Arrivals::Poisson, None) => rng_arrival.exp(interval) as u64,
                (Arrivals::Periodic { .. }, None) => rng_arrival.below(cfg.interval_us),
            };
            if first < cfg.duration_us && relay_domain(relay) % shards == shard {
                queue.push(first, Kind::Reading, m, 0);
            }
            meters.push(MeterState {
                domain: relay_domain(relay),
                relay_node: n + relay,
                listen_since: u64::MAX,
                radio_on_us: 0,
                delivered_upto: 0,
                own_delivered_upto: 0,
                budget_mark: 0,
                ack_queued: NONE,
                rssi_dbm: rssi,
                link,
                second,
                made_us: [0; RING],
                rng_arrival,
                rng_entropy: rng::stream(cfg.seed, base | 1),
                rng_mac: rng::stream(cfg.seed, base | 2),
            });
        }
        let domains = (0..cfg.domains()).map(|_| Domain::default()).collect();
        let traces = vec![TraceHash::default(); cfg.domains() as usize];
        let slot_us = phy::espnow_airtime_us(uplink::frame_len(cfg.readings_per_frame()));
        Ok(Simulation {
            now: 0,
            queue,
            senders,
            wake_at: vec![u64::MAX; n as usize],
            meters,
            relays,
            macs: vec![Mac::new(); (n + r) as usize],
            domains,
            txs: Vec::new(),
            tx_free: Vec::new(),
            frames: Vec::new(),
            frame_free: Vec::new(),
            counters: Counters::default(),
            latency: Histogram::default(),
            traces,
            deliveries: Vec::new(),
            relay_deliveries: Vec::new(),
            shard: (shard, shards),
            n_meters: n,
            slot_us,
            measure_from: cfg.warmup_us,
            measure_to: cfg.duration_us,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Every `(meter, seq)` delivered, in order, when `record_deliveries` is
    /// set: each once, however many relays delivered it.
    pub fn deliveries(&self) -> &[(u32, u32)] {
        &self.deliveries
    }

    /// Every `(relay, meter, seq)` a relay delivered, in order, when
    /// `record_deliveries` is set: a reading of an edge meter may appear
    /// once for each of its two relays.
    pub fn relay_deliveries(&self) -> &[(u32, u32, u32)] {
        &self.relay_deliveries
    }

    /// Runs to the end of the drain. `progress` is called about 200 times along
    /// the way; when it returns `false` the run stops there (the report then
    /// has `stopped_early` set and counts only what happened so far).
    pub fn run(&mut self, progress: &mut dyn FnMut(&Progress) -> bool) -> Report {
        let wall = std::time::Instant::now();
        let (finished, stopped_early) = self.run_events(progress);
        let mut report = self.report(finished, wall.elapsed().as_secs_f64());
        report.stopped_early = stopped_early;
        report
    }

    /// Runs the configuration on up to `cfg.threads` threads, one shard of
    /// the collision domains each, and merges the shards: the report is the
    /// one [`Simulation::run`] gives (wall time apart). `progress` is called
    /// on this thread with the shards' sums (their earliest clock), first
    /// once every shard is set up. Stopping early (`progress` returning
    /// `false`) stops each shard where it is then, so an early-stopped run
    /// depends on the thread count and timing: the study, which stops runs
    /// early, uses one thread. Each thread holds every meter's state.
    pub fn run_threads(
        cfg: SimConfig,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<Report, SimError> {
        let shards = cfg.threads.clamp(1, cfg.domains().max(1));
        if shards == 1 {
            return Ok(Simulation::new(cfg)?.run(progress));
        }
        let end_us = cfg.duration_us.saturating_add(cfg.drain_us);
        let stop = AtomicBool::new(false);
        // Per shard: set up (keys, senders), then clock, readings made,
        // delivered in budget, uplinks, events.
        let ready: Vec<AtomicBool> = (0..shards).map(|_| AtomicBool::new(false)).collect();
        let seen: Vec<[AtomicU64; 5]> = (0..shards).map(|_| Default::default()).collect();
        let runs = std::thread::scope(|s| {
            let handles: Vec<_> = (0..shards)
                .map(|k| {
                    let (cfg, stop) = (cfg.clone(), &stop);
                    let (seen, ready) = (&seen[k as usize], &ready[k as usize]);
                    s.spawn(move || {
                        let mut sim = Simulation::new_shard(cfg, k, shards)?;
                        // As `run` does, the clock starts after the set-up.
                        let started = std::time::Instant::now();
                        ready.store(true, Ordering::Release);
                        let (finished, stopped) = sim.run_events(&mut |p| {
                            for (a, v) in seen.iter().zip([
                                p.now_us,
                                p.readings_made,
                                p.readings_delivered_in_budget,
                                p.uplinks,
                                p.events,
                            ]) {
                                a.store(v, Ordering::Relaxed);
                            }
                            !stop.load(Ordering::Relaxed)
                        });
                        Ok::<_, SimError>((
                            sim,
                            finished,
                            stopped,
                            started,
                            std::time::Instant::now(),
                        ))
                    })
                })
                .collect();
            // Progress (first called once every shard is set up) until all
            // have ended; a shard that fails or panics ends too, so this
            // never waits on one that cannot finish.
            loop {
                let done = handles.iter().all(|h| h.is_finished());
                if ready.iter().all(|r| r.load(Ordering::Acquire)) {
                    let sum = |i: usize| seen.iter().map(|a| a[i].load(Ordering::Relaxed)).sum();
                    let p = Progress {
                        now_us: seen
                            .iter()
                            .map(|a| a[0].load(Ordering::Relaxed))
                            .min()
                            .unwrap_or(0),
                        end_us,
                        readings_made: sum(1),
                        readings_delivered_in_budget: sum(2),
                        uplinks: sum(3),
                        events: sum(4),
                    };
                    if !done && !progress(&p) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                if done {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect::<Result<Vec<_>, SimError>>()
        })?;
        // From the first shard's start to the last shard's end.
        let wall_s = match (
            runs.iter().map(|r| r.3).min(),
            runs.iter().map(|r| r.4).max(),
        ) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mut runs: Vec<_> = runs
            .into_iter()
            .map(|(sim, f, st, _, _)| (sim, f, st))
            .collect();
        let stopped_early = runs.iter().any(|r| r.2);
        let finished = if stopped_early {
            runs.iter().map(|r| r.1).min()
        } else {
            runs.iter().map(|r| r.1).max()
        }
        .unwrap_or(0);
        let mut rest = runs.split_off(1);
        let Some((mut sim, _, _)) = runs.pop() else {
            return Err(SimError::config("threads", "no shard ran (internal)"));
        };
        for (other, _, _) in rest.drain(..) {
            sim.absorb(other);
        }
        if !stopped_early {
            progress(&sim.progress(end_us, end_us));
        }
        let mut report = sim.report(finished, wall_s);
        report.stopped_early = stopped_early;
        Ok(report)
    }

    /// Takes over the state of `other`'s shard: its meters, relays and
    /// domains, and adds its counters, latencies and deliveries.
    fn absorb(&mut self, mut other: Simulation) {
        let (k, t) = other.shard;
        let mine = |d: u32| d % t == k;
        for m in 0..self.meters.len() {
            if mine(self.meters[m].domain) {
                std::mem::swap(&mut self.senders[m], &mut other.senders[m]);
                std::mem::swap(&mut self.meters[m], &mut other.meters[m]);
                self.wake_at[m] = other.wake_at[m];
                std::mem::swap(&mut self.macs[m], &mut other.macs[m]);
            }
        }
        for i in 0..self.relays.len() {
            if mine(self.cfg.relay_domain(i as u32)) {
                std::mem::swap(&mut self.relays[i], &mut other.relays[i]);
                let node = self.relays[i].node as usize;
                std::mem::swap(&mut self.macs[node], &mut other.macs[node]);
            }
        }
        for d in 0..self.domains.len() {
            if mine(d as u32) {
                std::mem::swap(&mut self.domains[d], &mut other.domains[d]);
                self.traces[d] = other.traces[d];
            }
        }
        self.counters.add(&other.counters);
        self.latency.merge(&other.latency);
        self.deliveries.append(&mut other.deliveries);
        self.relay_deliveries.append(&mut other.relay_deliveries);
        self.now = self.now.max(other.now);
    }

    /// Processes events to the end of the drain, or until `progress` says
    /// stop; returns the time the run reached and whether it stopped early.
    fn run_events(&mut self, progress: &mut dyn FnMut(&Progress) -> bool) -> (u64, bool) {
        let end = self.cfg.duration_us.saturating_add(self.cfg.drain_us);
        let step = (end / 200).max(1);
        let mut next_progress = step;
        let mut stopped_early = false;
        while let Some(ev) = self.queue.pop() {
            let t = ev.time();
            if t > end {
                break;
            }
            self.now = t;
            self.counters.events += 1;
            // What the event is about, named by stable ids (not pool slots),
            // in the trace of its collision domain.
            let (domain, node, aux) = match ev.kind() {
                Kind::Reading | Kind::Wake => {
                    (self.meters[ev.node as usize].domain, ev.node, ev.aux)
                }
                Kind::Access | Kind::MacAckTimeout => (self.node_domain(ev.node), ev.node, ev.aux),
                Kind::TxEnd => {
                    let tx = &self.txs[ev.node as usize];
                    (tx.domain, tx.src, tx.dst)
                }
                Kind::AckReady => (
                    self.cfg.relay_domain(ev.node),
                    ev.node,
                    self.frames[ev.aux as usize].dst,
                ),
            };
            let trace = &mut self.traces[domain as usize];
            trace.add(t);
            trace.add(u64::from(ev.kind() as u8) | (u64::from(node) << 8) | (u64::from(aux) << 40));
            if t >= next_progress {
                next_progress = t - t % step + step;
                if !progress(&self.progress(t, end)) {
                    stopped_early = true;
                    break;
                }
            }
            match ev.kind() {
                Kind::Reading => self.on_reading(ev.node as usize),
                Kind::Wake => {
                    let m = ev.node as usize;
                    if self.wake_at[m] == t {
                        self.wake_at[m] = u64::MAX;
                        self.poll_meter(m);
                    }
                }
                Kind::Access => self.on_access(ev.node),
                Kind::TxEnd => self.on_tx_end(ev.node),
                Kind::MacAckTimeout => {
                    if self.macs[ev.node as usize].gen == ev.aux {
                        self.mac_result(ev.node, false);
                    }
                }
                Kind::AckReady => self.on_ack_ready(ev.node, ev.aux),
            }
        }
        let finished = if stopped_early {
            self.now
        } else {
            progress(&self.progress(end, end));
            self.now.max(self.cfg.duration_us)
        };
        (finished, stopped_early)
    }

    fn progress(&self, now_us: u64, end_us: u64) -> Progress {
        Progress {
            now_us,
            end_us,
            readings_made: self.counters.readings_made,
            readings_delivered_in_budget: self.counters.delivered_in_budget,
            uplinks: self.counters.uplinks_tx,
            events: self.counters.events,
        }
    }

    // ---- meters -------------------------------------------------------------

    fn on_reading(&mut self, m: usize) {
        let now = self.now;
        let sender = &mut self.senders[m];
        let next_seq = sender.next_seq();
        let reading = Reading {
            timestamp_ms: BASE_UNIX_MS + now / 1000,
            voltage_cv: 23_000,
            current_ma: 1_000 + (next_seq % 500),
            active_power_dw: 2_300,
            power_factor_e4: 9_800,
            frequency_mhz: 50_000,
            energy_mwh: u64::from(next_seq) * 64,
            flags: 0,
        };
        // A simulated hour is far from 2^32 readings: every push is queued.
        let Some(seq) = sender.push_reading(reading).seq() else {
            return;
        };
        self.counters.readings_made += 1;
        let ms = &mut self.meters[m];
        ms.made_us[seq as usize % RING] = now;
        let interval = self.cfg.interval_us as f64;
        let gap = match self.cfg.arrivals {
            Arrivals::Poisson => ms.rng_arrival.exp(interval),
            Arrivals::Periodic { jitter } => {
                interval * (1.0 + jitter * (2.0 * ms.rng_arrival.unit() - 1.0))
            }
        };
        let next = now + (gap as u64).max(1);
        if next < self.cfg.duration_us {
            self.queue.push(next, Kind::Reading, m as u32, 0);
        }
        self.poll_meter(m);
    }

    /// Drains the sender's output and schedules its timer.
    fn poll_meter(&mut self, m: usize) {
        let now = self.now;
        let entropy = match self.cfg.scheme {
            // The seed prototype has no jitter: a constant makes every timer exact.
            Scheme::Seed => 0,
            Scheme::Gridpow => self.meters[m].rng_entropy.next_u32(),
        };
        let sender = &mut self.senders[m];
        let abandoned = sender.stats().frames_abandoned;
        let in_flight = sender.in_flight_len() as u32;
        let oldest = sender.next_seq().wrapping_sub(sender.unconfirmed() as u32);
        let mut buf = [0u8; FRAME_CAP];
        let res = sender.poll_transmit(Instant::from_micros(now), entropy, &mut buf);
        if sender.stats().frames_abandoned != abandoned {
            let ms = &mut self.meters[m];
            ms.budget_mark = ms.budget_mark.max(oldest.wrapping_add(in_flight));
        }
        match res {
            Ok(Some(len)) => self.meter_send(m, &buf[..len]),
            Ok(None) => {}
            Err(_) => self.counters.proto_errors += 1,
        }
        self.update_listen(m);
        if let Some(t) = self.senders[m].poll_timeout() {
            let t = t.as_micros().max(now + 1);
            if t < self.wake_at[m] {
                self.wake_at[m] = t;
                self.queue.push(t, Kind::Wake, m as u32, 0);
            }
        }
    }

    /// Radio-on accounting: the radio listens while a frame awaits its ACK.
    fn update_listen(&mut self, m: usize) {
        let busy = self.senders[m].in_flight_len() > 0;
        let ms = &mut self.meters[m];
        if busy && ms.listen_since == u64::MAX {
            ms.listen_since = self.now;
        } else if !busy && ms.listen_since != u64::MAX {
            ms.radio_on_us += self.now - ms.listen_since;
            ms.listen_since = u64::MAX;
        }
    }

    fn meter_send(&mut self, m: usize, bytes: &[u8]) {
        let dst = self.meters[m].relay_node;
        match self.macs[m].state {
            MacState::Idle => {
                let f = self.alloc_frame(bytes, dst, FrameKind::Uplink);
                self.macs[m].frame = f;
                self.mac_begin(m as u32);
            }
            // Not on the air yet: the newest frame replaces it (same bytes for a retry).
            MacState::Contending => {
                let f = self.macs[m].frame;
                self.fill_frame(f, bytes);
            }
            MacState::Transmitting | MacState::AwaitAck => {
                let next = self.macs[m].next;
                if next == NONE {
                    self.macs[m].next = self.alloc_frame(bytes, dst, FrameKind::Uplink);
                } else {
                    self.fill_frame(next, bytes);
                }
            }
        }
    }

    fn meter_receive_ack(&mut self, m: usize, bytes: &[u8]) {
        // Refusals (duplicate or late ACKs) are counted by the sender itself.
        let _ = self.senders[m].handle_ack(Instant::from_micros(self.now), bytes);
        self.poll_meter(m);
    }

    /// Draws whether a frame between meter `m` and relay node `relay` is
    /// lost to the channel, on that relay's link.
    fn link_lost(&mut self, m: usize, relay: u32) -> bool {
        let ms = &mut self.meters[m];
        let link = match &mut ms.second {
            Some(s) if s.node == relay => &mut s.link,
            _ => &mut ms.link,
        };
        link.lost(&self.cfg, self.now)
    }

    // ---- relays -------------------------------------------------------------

    fn relay_receive(&mut self, r: usize, m: u32, bytes: &[u8]) {
        let now = self.now;
        let relay = &mut self.relays[r];
        let verdict = match relay.ingress.handle_frame(&meter_mac(m), bytes) {
            Ok(v) => v,
            // Replays and stale frames are counted by the ingress.
            Err(_) => return,
        };
        let mut ack = [0u8; ACK_LEN];
        let len = match relay
            .ingress
            .emit_ack(&verdict, BASE_UNIX_MS + now / 1000, &mut ack)
        {
            Ok(len) => len,
            Err(_) => {
                self.counters.proto_errors += 1;
                return;
            }
        };
        if let Verdict::Accepted(info) = verdict {
            self.on_delivered(m as usize, r as u32, &info);
        }
        let f = self.alloc_frame(&ack[..len], m, FrameKind::Ack);
        let delay = if self.cfg.ack_delay_random {
            self.relays[r].rng_mac.exp(self.cfg.ack_delay_us as f64) as u64
        } else {
            self.cfg.ack_delay_us
        };
        if delay > 0 {
            self.queue.push(now + delay, Kind::AckReady, r as u32, f);
        } else {
            self.on_ack_ready(r as u32, f);
        }
    }

    fn on_ack_ready(&mut self, r: u32, f: u32) {
        match self.cfg.ack_air {
            AckAir::Ideal => {
                let fb = &self.frames[f as usize];
                let (m, len, bytes) = (fb.dst as usize, fb.len as usize, fb.bytes);
                self.free_frame(f);
                self.meter_receive_ack(m, &bytes[..len]);
            }
            AckAir::InBand => {
                let node = self.relays[r as usize].node;
                let m = self.frames[f as usize].dst as usize;
                if self.macs[node as usize].state == MacState::Idle {
                    self.macs[node as usize].frame = f;
                    self.mac_begin(node);
                } else if *self.ack_queued(m, node) != NONE {
                    // A stop-and-wait meter needs only the newest ACK: replace
                    // the queued one rather than queue a second.
                    let queued = *self.ack_queued(m, node);
                    let fb = &self.frames[f as usize];
                    let (len, bytes) = (fb.len as usize, fb.bytes);
                    self.fill_frame(queued, &bytes[..len]);
                    self.free_frame(f);
                } else {
                    *self.ack_queued(m, node) = f;
                    self.relays[r as usize].queue.push_back(f);
                }
            }
        }
    }

    /// The slot of the ACK for meter `m` waiting in relay node `relay`'s queue.
    fn ack_queued(&mut self, m: usize, relay: u32) -> &mut u32 {
        let ms = &mut self.meters[m];
        match &mut ms.second {
            Some(s) if s.node == relay => &mut s.ack_queued,
            _ => &mut ms.ack_queued,
        }
    }

    /// Relay `r` delivered the new readings of a frame of meter `m`. Counts
    /// each reading once, as the grid server stores it once: a reading
    /// another relay delivered before is counted as heard by both instead.
    fn on_delivered(&mut self, m: usize, r: u32, info: &FrameInfo) {
        let now = self.now;
        let first = info.first_seq.wrapping_add(u32::from(info.first_new));
        let end = info.first_seq.wrapping_add(u32::from(info.reading_count));
        let next_seq = self.senders[m].next_seq();
        let node = self.n_meters + r;
        let ms = &mut self.meters[m];
        let own = match &mut ms.second {
            Some(s) if s.node == node => &mut s.delivered_upto,
            _ => &mut ms.own_delivered_upto,
        };
        if first < *own {
            // The ingress must never hand out a reading twice; counted, not hidden.
            self.counters.duplicates += u64::from((*own).min(end) - first);
        }
        // Only what lies above this relay's mark is new from it (kept <= end).
        let first = first.max((*own).min(end));
        *own = (*own).max(end);
        if self.cfg.record_deliveries {
            self.relay_deliveries
                .extend((first..end).map(|seq| (r, m as u32, seq)));
        }
        // Below the mark of all relays, a reading is one the other relay
        // delivered: the sender re-sends nothing below a delivered frame's start.
        let fresh = first.max(ms.delivered_upto);
        self.counters.heard_by_both += u64::from(fresh.min(end) - first);
        for seq in fresh..end {
            if seq.wrapping_add(RING as u32) > next_seq {
                self.latency
                    .record(now.saturating_sub(ms.made_us[seq as usize % RING]));
            } else {
                self.counters.latency_unknown += 1;
            }
            if seq >= ms.budget_mark {
                self.counters.delivered_in_budget += 1;
            }
            if self.cfg.record_deliveries {
                self.deliveries.push((m as u32, seq));
            }
        }
        self.counters.delivered += u64::from(end.saturating_sub(fresh));
        ms.delivered_upto = ms.delivered_upto.max(end);
    }

    // ---- medium access ------------------------------------------------------

    /// The collision domain of node `n` (a meter, or relay `n - meters`).
    fn node_domain(&self, n: u32) -> u32 {
        match n.checked_sub(self.n_meters) {
            Some(relay) => self.cfg.relay_domain(relay),
            None => self.meters[n as usize].domain,
        }
    }

    fn node_rng(&mut self, n: u32) -> &mut Pcg64Mcg {
        if n < self.n_meters {
            &mut self.meters[n as usize].rng_mac
        } else {
            &mut self.relays[(n - self.n_meters) as usize].rng_mac
        }
    }

    /// Starts medium access for the frame in `macs[n].frame`.
    fn mac_begin(&mut self, n: u32) {
        match self.cfg.mac {
            MacModel::Aloha => self.transmit(n),
            MacModel::Slotted => {
                let at = self.now.div_ceil(self.slot_us) * self.slot_us;
                if at == self.now {
                    self.transmit(n);
                } else {
                    let mac = &mut self.macs[n as usize];
                    mac.state = MacState::Contending;
                    mac.counting = true;
                    mac.access_at = at;
                    self.schedule_access(n);
                }
            }
            MacModel::Csma => {
                let cw = self.macs[n as usize].cw;
                let backoff = self.node_rng(n).below(u64::from(cw) + 1) as u16;
                self.macs[n as usize].backoff = backoff;
                self.contend(n);
            }
        }
    }

    fn contend(&mut self, n: u32) {
        let d = self.node_domain(n) as usize;
        let mut busy = 0u16;
        for &a in &self.domains[d].active {
            if hears(&self.cfg, self.n_meters, self.txs[a as usize].src, n) {
                busy += 1;
            }
        }
        let dom = &mut self.domains[d];
        let mac = &mut self.macs[n as usize];
        mac.state = MacState::Contending;
        mac.busy = busy;
        mac.counting = false;
        mac.cpos = dom.contenders.len() as u32;
        dom.contenders.push(n);
        if busy == 0 {
            self.start_countdown(n);
        }
    }

    fn start_countdown(&mut self, n: u32) {
        let now = self.now;
        let mac = &mut self.macs[n as usize];
        mac.count_from = now + phy::DIFS_US;
        mac.access_at = mac.count_from + u64::from(mac.backoff) * phy::SLOT_US;
        mac.counting = true;
        self.schedule_access(n);
    }

    /// Makes sure an `Access` event fires at or before `access_at`.
    fn schedule_access(&mut self, n: u32) {
        let mac = &mut self.macs[n as usize];
        if mac.pending_at > mac.access_at {
            mac.pending_at = mac.access_at;
            self.queue.push(mac.access_at, Kind::Access, n, 0);
        }
    }

    fn leave_contention(&mut self, n: u32) {
        let pos = self.macs[n as usize].cpos;
        if pos == NONE {
            return;
        }
        let d = self.node_domain(n) as usize;
        let list = &mut self.domains[d].contenders;
        list.swap_remove(pos as usize);
        if let Some(&moved) = list.get(pos as usize) {
            self.macs[moved as usize].cpos = pos;
        }
        self.macs[n as usize].cpos = NONE;
    }

    fn on_access(&mut self, n: u32) {
        let now = self.now;
        let mac = &mut self.macs[n as usize];
        if mac.pending_at != now {
            return; // superseded by an earlier event that already fired
        }
        mac.pending_at = u64::MAX;
        if !mac.counting || mac.state != MacState::Contending {
            return; // frozen: the next resume schedules again
        }
        if mac.access_at <= now {
            self.transmit(n);
        } else {
            self.schedule_access(n);
        }
    }

    fn airtime(&self, kind: FrameKind, len: usize) -> u64 {
        match (kind, self.cfg.scheme) {
            (FrameKind::Ack, Scheme::Seed) => phy::espnow_airtime_us(SEED_ACK_LEN),
            _ => phy::espnow_airtime_us(len),
        }
    }

    fn transmit(&mut self, n: u32) {
        self.leave_contention(n);
        let now = self.now;
        let mac = &mut self.macs[n as usize];
        mac.state = MacState::Transmitting;
        mac.counting = false;
        let retry = mac.retries > 0;
        let f = mac.frame;
        let fb = &self.frames[f as usize];
        let (kind, dst) = (fb.kind, fb.dst);
        let air = self.airtime(kind, fb.len as usize);
        let tx_kind = match kind {
            FrameKind::Uplink => TxKind::Uplink,
            FrameKind::Ack => TxKind::Ack,
        };
        let domain = self.node_domain(n);
        let mut tx = Tx::new(n, dst, now, now + air, f, tx_kind, domain);
        if tx_kind == TxKind::Uplink {
            if let Some(second) = &self.meters[n as usize].second {
                tx.dst2 = second.node;
            }
        }
        let id = self.alloc_tx(tx);
        self.register(id);
        self.queue.push(now + air, Kind::TxEnd, id, 0);
        self.counters.air_total_us += air;
        match tx_kind {
            TxKind::Uplink => {
                self.counters.uplinks_tx += 1;
                self.counters.mac_retx_uplink += u64::from(retry);
                if (self.measure_from..self.measure_to).contains(&now) {
                    self.counters.offered_air_us += air;
                }
            }
            TxKind::Ack => self.counters.acks_sent += 1,
            TxKind::MacAck => {}
        }
    }

    /// Received power of `src` at `dst`, dBm: links are symmetric, so a
    /// meter-relay link has the meter's power both ways; meter-meter
    /// interference uses the interfering meter's power at its relay.
    fn power(&self, src: u32, dst: u32) -> f32 {
        if src < self.n_meters {
            self.meters[src as usize].rssi_dbm
        } else if dst < self.n_meters {
            self.meters[dst as usize].rssi_dbm
        } else {
            -40.0
        }
    }

    fn interfere(&mut self, victim: u32, by: u32) {
        let (v, b) = (self.txs[victim as usize], self.txs[by as usize]);
        if b.src == v.dst {
            self.txs[victim as usize].corrupt = true;
        } else if hears(&self.cfg, self.n_meters, b.src, v.dst) {
            let p = self.power(b.src, v.dst);
            let t = &mut self.txs[victim as usize];
            t.interference_dbm = t.interference_dbm.max(p);
        }
        // The overhearing relay suffers what it hears, apart from `dst`.
        if v.dst2 != NONE {
            if b.src == v.dst2 {
                self.txs[victim as usize].corrupt2 = true;
            } else if hears(&self.cfg, self.n_meters, b.src, v.dst2) {
                let p = self.power(b.src, v.dst2);
                let t = &mut self.txs[victim as usize];
                t.interference2_dbm = t.interference2_dbm.max(p);
            }
        }
    }

    /// Puts a transmission on the air: marks overlaps both ways and tells the
    /// contenders that hear it.
    fn register(&mut self, id: u32) {
        let tx = self.txs[id as usize];
        let d = tx.domain as usize;
        for i in 0..self.domains[d].active.len() {
            let a = self.domains[d].active[i];
            let other = self.txs[a as usize];
            if other.start < tx.end && tx.start < other.end {
                self.interfere(a, id);
                self.interfere(id, a);
            }
        }
        let dom = &mut self.domains[d];
        if dom.active.is_empty() {
            dom.busy_since = self.now;
        }
        dom.active.push(id);
        for i in 0..self.domains[d].contenders.len() {
            let c = self.domains[d].contenders[i];
            if hears(&self.cfg, self.n_meters, tx.src, c) {
                let mac = &mut self.macs[c as usize];
                mac.busy += 1;
                if mac.busy == 1 {
                    self.freeze(c);
                }
            }
        }
    }

    fn freeze(&mut self, c: u32) {
        let now = self.now;
        let mac = &mut self.macs[c as usize];
        // Too late to sense: a station whose backoff ends in this slot transmits.
        if !mac.counting || mac.access_at < now + phy::SLOT_US {
            return;
        }
        if now > mac.count_from {
            let done = (now - mac.count_from) / phy::SLOT_US;
            mac.backoff = mac
                .backoff
                .saturating_sub(done.min(u64::from(u16::MAX)) as u16);
        }
        mac.counting = false;
    }

    /// Takes a transmission off the air.
    fn release(&mut self, id: u32) {
        let tx = self.txs[id as usize];
        let d = tx.domain as usize;
        let dom = &mut self.domains[d];
        if let Some(pos) = dom.active.iter().position(|&a| a == id) {
            dom.active.swap_remove(pos);
        }
        if dom.active.is_empty() {
            let from = dom.busy_since.max(self.measure_from);
            let to = self.now.min(self.measure_to);
            dom.busy_us += to.saturating_sub(from);
        }
        for i in 0..self.domains[d].contenders.len() {
            let c = self.domains[d].contenders[i];
            if hears(&self.cfg, self.n_meters, tx.src, c) {
                let mac = &mut self.macs[c as usize];
                mac.busy = mac.busy.saturating_sub(1);
                if mac.busy == 0 && !mac.counting {
                    self.start_countdown(c);
                }
            }
        }
    }

    /// Whether `tx` arrived intact at its receiver.
    fn received(&mut self, tx: &Tx) -> Result<(), Lost> {
        self.received_at(tx, tx.dst, tx.corrupt, tx.interference_dbm)
    }

    /// Whether `tx` arrived intact at `dst`, given the damage judged there.
    fn received_at(
        &mut self,
        tx: &Tx,
        dst: u32,
        corrupt: bool,
        interference_dbm: f32,
    ) -> Result<(), Lost> {
        if corrupt {
            return Err(Lost::Collision);
        }
        if interference_dbm > f32::NEG_INFINITY {
            let margin = f64::from(self.power(tx.src, dst) - interference_dbm);
            match self.cfg.capture_db {
                Some(th) if margin >= th => {}
                _ => return Err(Lost::Collision),
            }
        }
        let (meter, relay) = if tx.src < self.n_meters {
            (tx.src, dst)
        } else {
            (dst, tx.src)
        };
        if meter < self.n_meters && self.link_lost(meter as usize, relay) {
            return Err(Lost::Fading);
        }
        Ok(())
    }

    fn on_tx_end(&mut self, id: u32) {
        let tx = self.txs[id as usize];
        let outcome = self.received(&tx);
        let ok = outcome.is_ok();
        if tx.kind == TxKind::MacAck {
            self.release(id);
            self.free_tx(id);
            self.mac_result(tx.dst, ok);
            return;
        }
        let csma = self.cfg.mac == MacModel::Csma;
        if csma {
            self.macs[tx.src as usize].state = MacState::AwaitAck;
            if ok {
                // Registered before the data frame leaves, so contenders stay
                // deferred through SIFS (the NAV of the data frame does that).
                let start = self.now + phy::SIFS_US;
                let ack = self.alloc_tx(Tx::new(
                    tx.dst,
                    tx.src,
                    start,
                    start + phy::MAC_ACK_AIRTIME_US,
                    NONE,
                    TxKind::MacAck,
                    tx.domain,
                ));
                self.register(ack);
                let end = self.txs[ack as usize].end;
                self.counters.air_total_us += phy::MAC_ACK_AIRTIME_US;
                self.queue.push(end, Kind::TxEnd, ack, 0);
            } else {
                let gen = self.macs[tx.src as usize].gen;
                self.queue.push(
                    self.now + phy::MAC_ACK_TIMEOUT_US,
                    Kind::MacAckTimeout,
                    tx.src,
                    gen,
                );
            }
        }
        self.release(id);
        self.free_tx(id);
        if tx.kind == TxKind::Uplink {
            match outcome {
                Ok(()) => {
                    self.counters.uplinks_rx += 1;
                    if (self.measure_from..self.measure_to).contains(&tx.start) {
                        self.counters.received_air_us += tx.end - tx.start;
                    }
                }
                Err(Lost::Collision) => self.counters.uplinks_collided += 1,
                Err(Lost::Fading) => self.counters.uplinks_faded += 1,
            }
        }
        if ok {
            let fb = &self.frames[tx.frame as usize];
            let (len, bytes) = (fb.len as usize, fb.bytes);
            match tx.kind {
                TxKind::Uplink => {
                    if tx.dst >= self.n_meters {
                        self.relay_receive(
                            (tx.dst - self.n_meters) as usize,
                            tx.src,
                            &bytes[..len],
                        );
                    }
                }
                TxKind::Ack => self.meter_receive_ack(tx.dst as usize, &bytes[..len]),
                TxKind::MacAck => {}
            }
        }
        if tx.dst2 != NONE
            && self
                .received_at(&tx, tx.dst2, tx.corrupt2, tx.interference2_dbm)
                .is_ok()
        {
            // The overheard copy, after the addressed relay had its turn.
            self.counters.uplinks_overheard += 1;
            let fb = &self.frames[tx.frame as usize];
            let (len, bytes) = (fb.len as usize, fb.bytes);
            self.relay_receive((tx.dst2 - self.n_meters) as usize, tx.src, &bytes[..len]);
        }
        if !csma {
            // ALOHA has no MAC feedback: the frame is done once sent.
            self.mac_done(tx.src);
        }
    }

    fn mac_result(&mut self, n: u32, ok: bool) {
        let mac = &mut self.macs[n as usize];
        if mac.state != MacState::AwaitAck {
            return;
        }
        // Any pending timeout for this attempt is void from here on.
        mac.gen = mac.gen.wrapping_add(1);
        if ok || mac.retries >= self.cfg.mac_retries {
            self.mac_done(n);
        } else {
            mac.retries += 1;
            mac.cw = (mac.cw * 2 + 1).min(phy::CW_MAX);
            let cw = mac.cw;
            let backoff = self.node_rng(n).below(u64::from(cw) + 1) as u16;
            self.macs[n as usize].backoff = backoff;
            self.contend(n);
        }
    }

    /// The frame is finished (acknowledged, given up, or sent without feedback).
    fn mac_done(&mut self, n: u32) {
        let mac = &mut self.macs[n as usize];
        let f = mac.frame;
        mac.frame = NONE;
        mac.retries = 0;
        mac.cw = phy::CW_MIN;
        mac.state = MacState::Idle;
        mac.counting = false;
        let next = if n < self.n_meters {
            std::mem::replace(&mut mac.next, NONE)
        } else {
            let f = self.relays[(n - self.n_meters) as usize]
                .queue
                .pop_front()
                .unwrap_or(NONE);
            if f != NONE {
                let m = self.frames[f as usize].dst as usize;
                *self.ack_queued(m, n) = NONE;
            }
            f
        };
        if f != NONE {
            self.free_frame(f);
        }
        if next != NONE {
            self.macs[n as usize].frame = next;
            self.mac_begin(n);
        }
    }

    // ---- pools --------------------------------------------------------------

    fn alloc_frame(&mut self, bytes: &[u8], dst: u32, kind: FrameKind) -> u32 {
        let idx = match self.frame_free.pop() {
            Some(i) => i,
            None => {
                self.frames.push(FrameBuf {
                    len: 0,
                    dst,
                    kind,
                    bytes: [0; FRAME_CAP],
                });
                (self.frames.len() - 1) as u32
            }
        };
        let fb = &mut self.frames[idx as usize];
        fb.dst = dst;
        fb.kind = kind;
        self.fill_frame(idx, bytes);
        idx
    }

    fn fill_frame(&mut self, idx: u32, bytes: &[u8]) {
        let fb = &mut self.frames[idx as usize];
        let n = bytes.len().min(FRAME_CAP);
        fb.bytes[..n].copy_from_slice(&bytes[..n]);
        fb.len = n as u8;
    }

    fn free_frame(&mut self, idx: u32) {
        self.frame_free.push(idx);
    }

    fn alloc_tx(&mut self, tx: Tx) -> u32 {
        match self.tx_free.pop() {
            Some(i) => {
                self.txs[i as usize] = tx;
                i
            }
            None => {
                self.txs.push(tx);
                (self.txs.len() - 1) as u32
            }
        }
    }

    fn free_tx(&mut self, id: u32) {
        self.tx_free.push(id);
    }

    // ---- results ------------------------------------------------------------

    fn report(&mut self, finished: u64, wall_s: f64) -> Report {
        let cfg = &self.cfg;
        let mut made = 0u64;
        let mut acked = 0u64;
        let mut drops = 0u64;
        let mut built = 0u64;
        let mut retx = 0u64;
        let mut abandoned = 0u64;
        let mut acks_accepted = 0u64;
        let mut acks_ignored = 0u64;
        let mut overlap_meters = 0u32;
        let mut pending = 0u64;
        let mut radio_on = 0u64;
        for (s, ms) in self.senders.iter().zip(self.meters.iter_mut()) {
            let st = s.stats();
            made += st.readings_queued;
            acked += st.readings_acked;
            drops += st.readings_dropped;
            built += st.frames_built;
            retx += st.retransmissions;
            abandoned += st.frames_abandoned;
            acks_accepted += st.acks_accepted;
            acks_ignored += st.acks_rejected + st.acks_late;
            overlap_meters += u32::from(ms.second.is_some());
            let oldest = s.next_seq().wrapping_sub(s.unconfirmed() as u32);
            pending += u64::from(s.next_seq().saturating_sub(oldest.max(ms.delivered_upto)));
            if ms.listen_since != u64::MAX {
                ms.radio_on_us += finished.saturating_sub(ms.listen_since);
                ms.listen_since = u64::MAX;
            }
            radio_on += ms.radio_on_us;
        }
        let c = self.counters;
        let lost = made.saturating_sub(c.delivered + pending);
        let ratio = |x: u64| {
            if made == 0 {
                0.0
            } else {
                x as f64 / made as f64
            }
        };
        let measured_to = self.measure_to.min(finished.max(self.measure_from + 1));
        let window = (measured_to - self.measure_from) as f64 * f64::from(cfg.domains());
        let busy: u64 = self.domains.iter().map(|d| d.busy_us).sum();
        let duration_s = cfg.duration_us.min(finished.max(1)) as f64 / 1e6;
        let ms = |us: u64| us as f64 / 1000.0;
        let meter_hours = f64::from(cfg.meters) * finished as f64 / 3.6e9;
        Report {
            seed: cfg.seed,
            meters: cfg.meters,
            relays: cfg.relays,
            channels: cfg.channels,
            mac: cfg.mac,
            scheme: cfg.scheme,
            interval_s: cfg.interval_us as f64 / 1e6,
            duration_s,
            simulated_s: finished as f64 / 1e6,
            hidden_fraction: cfg.hidden_fraction,
            overlap: cfg.overlap,
            overlap_meters,
            readings_made: made,
            readings_delivered: c.delivered,
            readings_delivered_in_budget: c.delivered_in_budget,
            readings_acked: acked,
            readings_lost: lost,
            readings_pending: pending,
            backlog_drops: drops,
            duplicates_delivered: c.duplicates,
            readings_heard_by_both: c.heard_by_both,
            delivery_ratio: ratio(c.delivered),
            delivery_ratio_in_budget: ratio(c.delivered_in_budget),
            acked_ratio: ratio(acked),
            lost_ratio: ratio(lost),
            uplinks_simulated: c.uplinks_tx,
            frames_built: built,
            retransmissions_per_reading: ratio(retx),
            mac_retransmissions_per_reading: ratio(c.mac_retx_uplink),
            frames_abandoned: abandoned,
            uplinks_received: c.uplinks_rx,
            uplinks_collided: c.uplinks_collided,
            uplinks_faded: c.uplinks_faded,
            uplinks_overheard: c.uplinks_overheard,
            acks_sent: c.acks_sent,
            acks_accepted,
            acks_ignored,
            offered_load: c.offered_air_us as f64 / window,
            throughput: c.received_air_us as f64 / window,
            channel_utilisation: busy as f64 / window,
            airtime_per_reading_ms: if made == 0 {
                0.0
            } else {
                ms(c.air_total_us) / made as f64
            },
            goodput_readings_per_s: c.delivered as f64 / duration_s,
            goodput_bps: c.delivered as f64 * (Reading::LEN * 8) as f64 / duration_s,
            latency_p50_ms: ms(self.latency.quantile(0.5)),
            latency_p90_ms: ms(self.latency.quantile(0.9)),
            latency_p99_ms: ms(self.latency.quantile(0.99)),
            latency_p999_ms: ms(self.latency.quantile(0.999)),
            latency_max_ms: ms(self.latency.max()),
            radio_on_s_per_meter_hour: if meter_hours > 0.0 {
                radio_on as f64 / 1e6 / meter_hours
            } else {
                0.0
            },
            radio_duty_cycle: if meter_hours > 0.0 {
                radio_on as f64 / 1e6 / meter_hours / 3600.0
            } else {
                0.0
            },
            events: c.events,
            wall_s,
            uplinks_per_wall_s: if wall_s > 0.0 {
                c.uplinks_tx as f64 / wall_s
            } else {
                0.0
            },
            trace_hash: format!("{:016x}", {
                let mut all = TraceHash::default();
                for t in &self.traces {
                    all.add(t.value());
                }
                all.value()
            }),
            stopped_early: false,
        }
    }
}

/// Why a frame did not arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    Collision,
    Fading,
}
