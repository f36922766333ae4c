//! The meter-side sender: a bounded backlog of readings, one sealed frame in
//! flight at a time (stop-and-wait), retransmission with exponential backoff
//! and random jitter, and authenticated ACKs that also synchronise the clock.
//!
//! The backlog lives in storage the caller owns ([`MeterSender::with_backlog`]:
//! an array, a static slice, a boxed slice); [`Sender`] is the sender with an
//! inline array of `N` readings.
//!
//! ## Driving it
//! 1. `push_reading` whenever a measurement interval ends.
//! 2. Loop `poll_transmit(now, entropy, buf)` until it returns `Ok(None)`,
//!    sending each frame it writes.
//! 3. `handle_ack(now, bytes)` for every frame received from the relay.
//! 4. Sleep until `poll_timeout()` or the next input, then go to 2.
//!
//! `entropy` is any fresh random `u32` (hardware RNG, seeded simulator RNG);
//! it only jitters timers.
//!
//! ## Timers (protocol.md §6)
//! Meters that boot together (a feeder coming back) make their readings in
//! lock-step, and a relay drains such a burst only at the cell's airtime. So
//! the first frame of a boot starts after a short random offset, which stays
//! the phase of later frames; a meter whose frame needed a retransmission
//! draws a wider random phase; and the first ACK timeout outlasts the
//! queueing delay of a burst instead of retransmitting into it.
//!
//! ## Exactly once
//! Readings carry consecutive sequence numbers. A frame that exhausts its
//! retries puts its readings back at the front of the backlog, and a later
//! frame (with a new counter) carries them again; if the relay did receive the
//! first frame and only its ACK was lost, the relay recognises the sequence
//! numbers and does not deliver them twice.

use crate::crypto::{CryptoProvider, MeterKeys, MeterSecret};
use crate::wire::ack::{AckPacket, FLAG_DUPLICATE};
use crate::wire::reading::Reading;
use crate::wire::uplink::{self, UplinkHeader, MAX_LEN, MAX_READINGS};
use crate::{Duration, Error, Instant, Misuse, Rejected};

/// Tunables of the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// This meter's id.
    pub meter_id: u32,
    /// Key id of the meter secret.
    pub key_id: u8,
    /// Readings per frame, 1 to 6.
    pub max_readings_per_frame: usize,
    /// The first frame of a boot waits a uniform random offset in
    /// `[0, start_spread]`, which stays the phase of later frames.
    pub start_spread: Duration,
    /// Bound of the phase redrawn after a frame that needed a retransmission:
    /// every new frame after the first starts `phase` late.
    pub phase_spread: Duration,
    /// Wait for an ACK after the first transmission; doubles with each retry.
    pub ack_timeout: Duration,
    /// Upper bound of the doubled timeout.
    pub max_backoff: Duration,
    /// Retransmissions of a frame after its first transmission.
    pub max_retries: u8,
    /// Pause after a frame exhausted its retries, before the next frame.
    pub retry_holdoff: Duration,
}

impl SenderConfig {
    /// Sensible defaults for ESP-NOW to a relay that ACKs after a journal commit.
    ///
    /// The first ACK timeout outlasts the time a cell needs to drain one frame
    /// from each of a thousand meters in lock-step, and the phase spreads such
    /// a burst to about half the cell's capacity. The start offset, a delay
    /// on every reading, stays short. The measurements behind the values:
    /// docs/scalability.md, "Mass boot".
    pub const fn new(meter_id: u32, key_id: u8) -> Self {
        SenderConfig {
            meter_id,
            key_id,
            max_readings_per_frame: MAX_READINGS,
            start_spread: Duration::from_secs(1),
            phase_spread: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(12),
            max_retries: 5,
            retry_holdoff: Duration::from_secs(5),
        }
    }

    /// The reading interval the defaults of [`SenderConfig::new`] are sized for.
    pub const DEFAULTS_INTERVAL: Duration = Duration::from_secs(10);
    /// The least first ACK timeout [`SenderConfig::for_interval`] gives.
    pub const MIN_SCALED_ACK_TIMEOUT: Duration = Duration::from_millis(100);

    /// The defaults for a meter reading every `interval` (§6): below 10 s
    /// every timer is scaled by `interval / 10 s`, the first ACK timeout kept
    /// at least 100 ms and the cap at least the first timeout, so readings do
    /// not pile up behind a timer longer than the interval.
    pub fn for_interval(meter_id: u32, key_id: u8, interval: Duration) -> Self {
        let d = SenderConfig::new(meter_id, key_id);
        let (num, den) = (
            interval
                .as_micros()
                .min(Self::DEFAULTS_INTERVAL.as_micros()),
            Self::DEFAULTS_INTERVAL.as_micros(),
        );
        let scaled = |t: Duration| Duration::from_micros(t.as_micros() * num / den);
        let ack_timeout = scaled(d.ack_timeout).max(Self::MIN_SCALED_ACK_TIMEOUT);
        SenderConfig {
            start_spread: scaled(d.start_spread),
            phase_spread: scaled(d.phase_spread),
            ack_timeout,
            max_backoff: scaled(d.max_backoff).max(ack_timeout),
            retry_holdoff: scaled(d.retry_holdoff),
            ..d
        }
    }
}

/// Counters for rates; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Readings pushed.
    pub readings_queued: u64,
    /// Readings dropped because the backlog was full (oldest first).
    pub readings_dropped: u64,
    /// Readings confirmed by an ACK.
    pub readings_acked: u64,
    /// Distinct frames built.
    pub frames_built: u64,
    /// Transmissions, first tries and retries.
    pub transmissions: u64,
    /// Retransmissions only.
    pub retransmissions: u64,
    /// Frames given up after `max_retries`; their readings went back to the backlog.
    pub frames_abandoned: u64,
    /// ACKs accepted.
    pub acks_accepted: u64,
    /// ACKs refused (malformed, bad tag, unexpected).
    pub acks_rejected: u64,
    /// Authentic ACKs of the frame confirmed last, ignored: a second relay in
    /// range answered too, or a relay repeated its ACK (§5).
    pub acks_late: u64,
}

/// What a push did to the backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued with this sequence number.
    Queued {
        /// The reading's sequence number.
        seq: u32,
    },
    /// Queued, and the oldest reading (with `dropped_seq`) was dropped to make room.
    QueuedDroppedOldest {
        /// The new reading's sequence number.
        seq: u32,
        /// The dropped reading's sequence number.
        dropped_seq: u32,
    },
    /// Not queued, counted as dropped: this boot epoch has used every
    /// sequence number up to 2^32−1, which never wrap (§2). The meter starts
    /// a new boot epoch.
    SeqExhausted,
}

impl PushOutcome {
    /// The queued reading's sequence number, if it was queued.
    pub fn seq(self) -> Option<u32> {
        match self {
            PushOutcome::Queued { seq } | PushOutcome::QueuedDroppedOldest { seq, .. } => Some(seq),
            PushOutcome::SeqExhausted => None,
        }
    }
}

/// A confirmed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The frame's counter.
    pub counter: u32,
    /// Sequence number of its first reading.
    pub first_seq: u32,
    /// Number of readings it carried.
    pub readings: usize,
    /// From the first transmission to the ACK.
    pub round_trip: Duration,
    /// The relay had accepted the frame before (a previous ACK was lost).
    pub duplicate: bool,
    /// The relay's channel, 0 when not stated.
    pub channel: u8,
    /// The relay that confirmed.
    pub relay_id: u32,
}

struct InFlight {
    frame: [u8; MAX_LEN],
    len: usize,
    counter: u32,
    first_seq: u32,
    readings: [Reading; MAX_READINGS],
    count: usize,
    transmissions: u8,
    first_sent: Instant,
    deadline: Instant,
}

/// A ring of readings with consecutive sequence numbers, in storage the
/// caller owns (never empty: checked at construction).
struct Backlog<S> {
    items: S,
    head: usize,
    len: usize,
}

impl<S: AsRef<[Reading]> + AsMut<[Reading]>> Backlog<S> {
    fn capacity(&self) -> usize {
        self.items.as_ref().len()
    }
    fn is_full(&self) -> bool {
        self.len == self.capacity()
    }
    fn pop_front(&mut self) -> Option<Reading> {
        if self.len == 0 {
            return None;
        }
        let r = self.items.as_ref()[self.head];
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
        Some(r)
    }
    fn push_back(&mut self, r: Reading) -> bool {
        if self.is_full() {
            return false;
        }
        let at = (self.head + self.len) % self.capacity();
        self.items.as_mut()[at] = r;
        self.len += 1;
        true
    }
    fn push_front(&mut self, r: Reading) -> bool {
        if self.is_full() {
            return false;
        }
        self.head = (self.head + self.capacity() - 1) % self.capacity();
        let at = self.head;
        self.items.as_mut()[at] = r;
        self.len += 1;
        true
    }
}

/// A uniform draw in `[0, max]` from 32 bits of entropy (the modulo bias is
/// below 0.3 % for spans up to 10 s).
fn uniform(entropy: u32, max: Duration) -> Duration {
    Duration::from_micros(u64::from(entropy) % (max.as_micros() + 1))
}

/// The meter-side state machine over backlog storage `S` the caller owns
/// (as smoltcp's sockets own no buffers): any mutable slice of readings,
/// whose length is the backlog capacity — an inline array ([`Sender`]), a
/// `&'static mut [Reading]` in firmware, or a `Box<[Reading]>` sized at run
/// time on the host, so one type serves every capacity.
pub struct MeterSender<C: CryptoProvider, S> {
    provider: C,
    keys: MeterKeys<C>,
    cfg: SenderConfig,
    epoch: u32,
    next_counter: u32,
    backlog: Backlog<S>,
    /// Sequence number of the backlog's front (or of the next reading when empty).
    backlog_seq: u32,
    in_flight: Option<InFlight>,
    /// Counter of the frame confirmed last in this boot epoch.
    last_confirmed: Option<u32>,
    next_frame_at: Instant,
    /// When the next new frame may start, drawn once it could start.
    release_at: Option<Instant>,
    /// Offset of every new frame after the first: the start offset, redrawn
    /// when a frame needed a retransmission, so that meters in lock-step
    /// drift apart and stay apart.
    phase: Duration,
    /// The last frame needed a retransmission: draw a new `phase`.
    redraw_phase: bool,
    clock_offset_ms: Option<i64>,
    stats: SenderStats,
}

/// A [`MeterSender`] whose backlog of `N` readings is an array inside it.
pub type Sender<C, const N: usize> = MeterSender<C, [Reading; N]>;

impl<C: CryptoProvider, const N: usize> MeterSender<C, [Reading; N]> {
    /// A sender with an inline backlog of `N` readings; see
    /// [`MeterSender::with_backlog`].
    pub fn new(
        provider: C,
        cfg: SenderConfig,
        secret: &MeterSecret,
        boot_epoch: u32,
        first_seq: u32,
    ) -> Result<Self, Error> {
        let backlog = [Reading::default(); N];
        Self::with_backlog(provider, cfg, secret, boot_epoch, first_seq, backlog)
    }
}

impl<C: CryptoProvider, S: AsRef<[Reading]> + AsMut<[Reading]>> MeterSender<C, S> {
    /// A sender for a freshly booted meter: `boot_epoch` must be larger than any
    /// epoch used before with this key (persist it), counters start at 0, and
    /// reading sequence numbers at `first_seq`. `backlog` holds the readings
    /// waiting (its contents are overwritten); its length is the capacity and
    /// must not be 0.
    pub fn with_backlog(
        provider: C,
        cfg: SenderConfig,
        secret: &MeterSecret,
        boot_epoch: u32,
        first_seq: u32,
        backlog: S,
    ) -> Result<Self, Error> {
        if backlog.as_ref().is_empty()
            || cfg.max_readings_per_frame == 0
            || cfg.max_readings_per_frame > MAX_READINGS
        {
            return Err(Misuse::InvalidArgument.into());
        }
        let keys = MeterKeys::new(&provider, cfg.key_id, secret);
        Ok(MeterSender {
            provider,
            keys,
            cfg,
            epoch: boot_epoch,
            next_counter: 0,
            backlog: Backlog {
                items: backlog,
                head: 0,
                len: 0,
            },
            backlog_seq: first_seq,
            in_flight: None,
            last_confirmed: None,
            next_frame_at: Instant::ZERO,
            release_at: None,
            phase: Duration::ZERO,
            redraw_phase: false,
            clock_offset_ms: None,
            stats: SenderStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }
    /// The configuration.
    pub fn config(&self) -> &SenderConfig {
        &self.cfg
    }
    /// The boot epoch in use.
    pub fn boot_epoch(&self) -> u32 {
        self.epoch
    }
    /// The counter the next new frame will use.
    pub fn next_counter(&self) -> u32 {
        self.next_counter
    }
    /// Readings waiting, not counting those in flight.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len
    }
    /// Readings in the frame in flight.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |f| f.count)
    }
    /// Readings not yet confirmed (backlog and in flight).
    pub fn unconfirmed(&self) -> usize {
        self.backlog.len + self.in_flight_len()
    }
    /// Sequence number the next pushed reading gets.
    pub fn next_seq(&self) -> u32 {
        self.backlog_seq.wrapping_add(self.backlog.len as u32)
    }

    /// The relay's wall clock as estimated from the last ACK (Unix ms), if any ACK arrived.
    pub fn wall_clock_ms(&self, now: Instant) -> Option<u64> {
        let off = self.clock_offset_ms?;
        let t = i128::from(now.as_millis()) + i128::from(off);
        u64::try_from(t).ok()
    }

    /// Queues a reading. When the backlog is full the oldest waiting reading is
    /// dropped and counted. Once the epoch's sequence numbers are used up the
    /// reading is refused and counted as dropped (they never wrap).
    pub fn push_reading(&mut self, reading: Reading) -> PushOutcome {
        self.stats.readings_queued += 1;
        if u64::from(self.backlog_seq) + self.backlog.len as u64 > u64::from(u32::MAX) {
            self.stats.readings_dropped += 1;
            return PushOutcome::SeqExhausted;
        }
        let mut dropped = None;
        if self.backlog.is_full() {
            self.backlog.pop_front();
            dropped = Some(self.backlog_seq);
            self.backlog_seq = self.backlog_seq.wrapping_add(1);
            self.stats.readings_dropped += 1;
        }
        let seq = self.next_seq();
        // Cannot fail: room was made above.
        let _ = self.backlog.push_back(reading);
        match dropped {
            None => PushOutcome::Queued { seq },
            Some(dropped_seq) => PushOutcome::QueuedDroppedOldest { seq, dropped_seq },
        }
    }

    fn timeout_after(&self, transmissions: u8, entropy: u32) -> Duration {
        let base = self
            .cfg
            .ack_timeout
            .saturating_shl(u32::from(transmissions.saturating_sub(1)))
            .min(self.cfg.max_backoff);
        base + uniform(entropy, Duration::from_micros(base.as_micros() / 2))
    }

    /// Writes the next frame to send into `buf`, if one is due: a retransmission
    /// whose ACK timed out, or a new frame from the backlog. Returns its length.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        entropy: u32,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        if let Some(f) = &self.in_flight {
            if now < f.deadline {
                return Ok(None);
            }
            if f.transmissions > self.cfg.max_retries {
                self.abandon(now, entropy);
            } else {
                let out = buf.get_mut(..f.len).ok_or(Misuse::BufferTooSmall)?;
                let timeout = self.timeout_after(f.transmissions + 1, entropy);
                let Some(f) = self.in_flight.as_mut() else {
                    return Ok(None);
                };
                out.copy_from_slice(&f.frame[..f.len]);
                f.transmissions += 1;
                f.deadline = now + timeout;
                self.stats.transmissions += 1;
                self.stats.retransmissions += 1;
                return Ok(Some(f.len));
            }
        }
        if self.in_flight.is_some() || self.backlog.len == 0 || now < self.next_frame_at {
            return Ok(None);
        }
        let release = match self.release_at {
            Some(t) => t,
            None => {
                // The counter restarts at 0 with each boot epoch.
                let t = if self.next_counter == 0 {
                    // Kept as the phase: offsetting only the first frame would
                    // push it onto the next interval's readings.
                    self.phase = uniform(entropy, self.cfg.start_spread);
                    now + self.phase
                } else {
                    if self.redraw_phase {
                        self.phase = uniform(entropy, self.cfg.phase_spread);
                        self.redraw_phase = false;
                    }
                    now + self.phase
                };
                self.release_at = Some(t);
                t
            }
        };
        if now < release {
            return Ok(None);
        }
        let len = self.build_frame(now, entropy, buf)?;
        self.release_at = None;
        Ok(Some(len))
    }

    fn build_frame(&mut self, now: Instant, entropy: u32, buf: &mut [u8]) -> Result<usize, Error> {
        if self.next_counter == u32::MAX {
            return Err(Misuse::CounterExhausted.into());
        }
        let count = self.backlog.len.min(self.cfg.max_readings_per_frame);
        let len = uplink::frame_len(count);
        if buf.len() < len {
            return Err(Misuse::BufferTooSmall.into());
        }
        let mut readings = [Reading::default(); MAX_READINGS];
        for r in readings.iter_mut().take(count) {
            *r = self.backlog.pop_front().unwrap_or_default();
        }
        let first_seq = self.backlog_seq;
        self.backlog_seq = self.backlog_seq.wrapping_add(count as u32);
        let header = UplinkHeader {
            key_id: self.cfg.key_id,
            meter_id: self.cfg.meter_id,
            boot_epoch: self.epoch,
            counter: self.next_counter,
        };
        let mut frame = [0u8; MAX_LEN];
        let len = uplink::seal(
            &self.provider,
            &self.keys,
            &header,
            first_seq,
            &readings[..count],
            &mut frame,
        )?;
        buf[..len].copy_from_slice(&frame[..len]);
        self.next_counter += 1;
        self.stats.frames_built += 1;
        self.stats.transmissions += 1;
        self.in_flight = Some(InFlight {
            frame,
            len,
            counter: header.counter,
            first_seq,
            readings,
            count,
            transmissions: 1,
            first_sent: now,
            deadline: now + self.timeout_after(1, entropy),
        });
        Ok(len)
    }

    /// Gives up the frame in flight: its readings return to the front of the
    /// backlog (or are dropped and counted if it filled up meanwhile).
    fn abandon(&mut self, now: Instant, entropy: u32) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        self.redraw_phase = true;
        self.stats.frames_abandoned += 1;
        for i in (0..f.count).rev() {
            if self.backlog.push_front(f.readings[i]) {
                self.backlog_seq = self.backlog_seq.wrapping_sub(1);
            } else {
                // The backlog is full of newer readings: these are the oldest, drop them.
                self.stats.readings_dropped += (i + 1) as u64;
                break;
            }
        }
        let holdoff = self.cfg.retry_holdoff;
        self.next_frame_at =
            now + holdoff + uniform(entropy, Duration::from_micros(holdoff.as_micros() / 2));
    }

    /// When the sender next needs `poll_transmit` called without other input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.in_flight {
            Some(f) => Some(f.deadline),
            None if self.backlog.len > 0 => Some(
                self.release_at
                    .map_or(self.next_frame_at, |t| t.max(self.next_frame_at)),
            ),
            None => None,
        }
    }

    /// Processes bytes received from the relay. A matching, authentic ACK
    /// confirms the frame in flight and synchronises the clock.
    pub fn handle_ack(&mut self, now: Instant, bytes: &[u8]) -> Result<Acked, Error> {
        let res = self.check_ack(bytes);
        let ack = match res {
            Ok(a) => a,
            Err(e @ Error::Rejected(Rejected::AlreadyConfirmed)) => {
                self.stats.acks_late += 1;
                return Err(e);
            }
            Err(e) => {
                self.stats.acks_rejected += 1;
                return Err(e);
            }
        };
        let Some(f) = self.in_flight.take() else {
            self.stats.acks_rejected += 1;
            return Err(Rejected::UnexpectedAck.into());
        };
        self.stats.acks_accepted += 1;
        self.stats.readings_acked += f.count as u64;
        self.last_confirmed = Some(f.counter);
        if f.transmissions > 1 {
            self.redraw_phase = true;
        }
        if self.backlog.len > 0 {
            // These readings have waited already.
            self.release_at = Some(now);
        }
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        let relay_ms = i64::try_from(ack.relay_time_ms).unwrap_or(i64::MAX);
        self.clock_offset_ms = Some(relay_ms.saturating_sub(now_ms));
        Ok(Acked {
            counter: f.counter,
            first_seq: f.first_seq,
            readings: f.count,
            round_trip: now - f.first_sent,
            duplicate: ack.flags & FLAG_DUPLICATE != 0,
            channel: ack.channel,
            relay_id: ack.relay_id,
        })
    }

    fn check_ack(&self, bytes: &[u8]) -> Result<crate::wire::AckRepr, Error> {
        let p = AckPacket::new_checked(bytes)?;
        if p.meter_id() != self.cfg.meter_id {
            return Err(Rejected::UnexpectedAck.into());
        }
        let ack = p.verify(&self.provider, &self.keys.hop.ack)?;
        let matches = self.in_flight.as_ref().is_some_and(|f| {
            ack.key_id == self.cfg.key_id
                && ack.boot_epoch == self.epoch
                && ack.counter == f.counter
        });
        if !matches {
            let confirmed = ack.key_id == self.cfg.key_id
                && ack.boot_epoch == self.epoch
                && Some(ack.counter) == self.last_confirmed;
            return Err(if confirmed {
                Rejected::AlreadyConfirmed
            } else {
                Rejected::UnexpectedAck
            }
            .into());
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;

    const SECRET: MeterSecret = MeterSecret::from_bytes(&[9; 48]);
    const S: u64 = 1_000_000;

    fn sender(cfg: SenderConfig) -> Sender<RustCrypto, 8> {
        Sender::new(RustCrypto, cfg, &SECRET, 1, 0).expect("config")
    }

    fn at(us: u64) -> Instant {
        Instant::from_micros(us)
    }

    /// Polls once and says whether a frame went out.
    fn sent(s: &mut Sender<RustCrypto, 8>, now: Instant, entropy: u32) -> bool {
        let mut buf = [0u8; MAX_LEN];
        s.poll_transmit(now, entropy, &mut buf)
            .expect("ok")
            .is_some()
    }

    /// Makes the frame in flight look acknowledged (the ACK's authentication
    /// is covered by the integration tests).
    fn confirm(s: &mut Sender<RustCrypto, 8>) {
        let f = s.in_flight.take().expect("in flight");
        if f.transmissions > 1 {
            s.redraw_phase = true;
        }
        if s.backlog.len > 0 {
            s.release_at = Some(Instant::ZERO);
        }
    }

    #[test]
    fn sequence_numbers_never_wrap_a_reading_past_them_is_dropped() {
        let mut s = Sender::<RustCrypto, 8>::new(
            RustCrypto,
            SenderConfig::new(1, 1),
            &SECRET,
            1,
            u32::MAX - 1,
        )
        .expect("config");
        let r = Reading::default();
        assert_eq!(s.push_reading(r), PushOutcome::Queued { seq: u32::MAX - 1 });
        assert_eq!(s.push_reading(r), PushOutcome::Queued { seq: u32::MAX });
        assert_eq!(s.push_reading(r), PushOutcome::SeqExhausted);
        assert_eq!(s.push_reading(r).seq(), None);
        assert_eq!((s.backlog_len(), s.stats().readings_dropped), (2, 2));
        // The two queued readings still go out, numbered to the last one.
        let mut buf = [0u8; MAX_LEN];
        let n = s
            .poll_transmit(at(100 * S), 0, &mut buf)
            .expect("ok")
            .expect("a frame");
        let p = crate::wire::UplinkPacket::new_checked(&buf[..n]).expect("valid");
        assert_eq!((p.first_seq(), p.reading_count()), (u32::MAX - 1, 2));
    }

    #[test]
    fn timers_scale_down_with_a_short_interval_and_never_up() {
        let ms = Duration::from_millis;
        assert_eq!(
            SenderConfig::for_interval(1, 2, Duration::from_secs(60)),
            SenderConfig::new(1, 2)
        );
        let c = SenderConfig::for_interval(1, 2, Duration::from_secs(1));
        assert_eq!(
            (
                c.start_spread,
                c.phase_spread,
                c.ack_timeout,
                c.max_backoff,
                c.retry_holdoff
            ),
            (ms(100), ms(500), ms(300), ms(1200), ms(500))
        );
        assert_eq!((c.max_retries, c.meter_id, c.key_id), (5, 1, 2));
        let c = SenderConfig::for_interval(1, 2, ms(100));
        assert_eq!((c.ack_timeout, c.max_backoff), (ms(100), ms(120)));
    }

    #[test]
    fn defaults_are_the_ones_protocol_md_states() {
        let c = SenderConfig::new(1, 2);
        assert_eq!(c.start_spread, Duration::from_secs(1));
        assert_eq!(c.phase_spread, Duration::from_secs(5));
        assert_eq!(c.ack_timeout, Duration::from_secs(3));
        assert_eq!(c.max_backoff, Duration::from_secs(12));
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.retry_holdoff, Duration::from_secs(5));
        assert_eq!(c.max_readings_per_frame, MAX_READINGS);
    }

    #[test]
    fn the_first_frame_of_a_boot_waits_the_start_offset() {
        for (entropy, offset) in [(0, 0), (123_456, 123_456), (S as u32, S), (S as u32 + 1, 0)] {
            let mut s = sender(SenderConfig::new(1, 1));
            s.push_reading(Reading::default());
            let t0 = at(7 * S);
            let went = sent(&mut s, t0, entropy);
            assert_eq!(went, offset == 0, "entropy {entropy}");
            if offset > 0 {
                assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_micros(offset)));
                // The draw is made once: later polls bring other entropy.
                assert!(!sent(&mut s, t0 + Duration::from_micros(offset - 1), 0));
                assert!(sent(&mut s, t0 + Duration::from_micros(offset), u32::MAX));
            }
        }
    }

    #[test]
    fn the_start_offset_stays_within_the_spread() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, Instant::ZERO, u32::MAX));
        let t = s.poll_timeout().expect("armed").as_micros();
        assert!(t <= S, "{t}");
        assert_eq!(t, u64::from(u32::MAX) % (S + 1));
    }

    #[test]
    fn readings_made_during_the_start_offset_join_the_first_frame() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, Instant::ZERO, 800_000));
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, at(500_000), 0));
        assert!(sent(&mut s, at(800_000), 0));
        assert_eq!(s.in_flight_len(), 2);
    }

    #[test]
    fn timeouts_start_at_ack_timeout_double_up_to_max_backoff_and_jitter_by_half() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        let mut now = Instant::ZERO;
        assert!(sent(&mut s, now, 0));
        // Entropy 0: no jitter. 3, 6, 12, 12, 12 s.
        for wait in [3, 6, 12, 12, 12] {
            assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(wait)));
            now = now + Duration::from_secs(wait);
            assert!(sent(&mut s, now, 0), "retry after {wait} s");
        }
        // The sixth transmission's wait, then the frame is given up.
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(12)));
        assert_eq!(s.stats().retransmissions, 5);
        for k in 1..=6u8 {
            let base = ((3 * S) << (k - 1)).min(12 * S);
            assert_eq!(s.timeout_after(k, 0).as_micros(), base);
            assert_eq!(
                s.timeout_after(k, (base / 2) as u32).as_micros(),
                base + base / 2
            );
            assert_eq!(s.timeout_after(k, (base / 2 + 1) as u32).as_micros(), base);
        }
    }

    #[test]
    fn the_start_offset_stays_as_the_phase_of_later_frames() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, Instant::ZERO, 600_000));
        assert!(sent(&mut s, at(600_000), 0));
        confirm(&mut s);
        s.push_reading(Reading::default());
        let t = at(10 * S);
        assert!(
            !sent(&mut s, t, u32::MAX),
            "no new draw without a retransmission"
        );
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_micros(600_000)));
    }

    #[test]
    fn a_meter_without_congestion_sends_each_new_frame_at_once() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        assert!(sent(&mut s, Instant::ZERO, 0));
        confirm(&mut s);
        s.push_reading(Reading::default());
        assert!(
            sent(&mut s, at(10 * S), u32::MAX),
            "phase is 0 until a retransmission"
        );
    }

    #[test]
    fn a_retransmission_moves_later_frames_by_a_random_phase_that_stays() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.push_reading(Reading::default());
        assert!(sent(&mut s, Instant::ZERO, 0));
        assert!(sent(&mut s, at(3 * S), 0), "first retransmission");
        confirm(&mut s);
        let phase = 2_500_000u32;
        s.push_reading(Reading::default());
        let t = at(10 * S);
        assert!(!sent(&mut s, t, phase));
        assert_eq!(
            s.poll_timeout(),
            Some(t + Duration::from_micros(phase.into()))
        );
        assert!(sent(&mut s, t + Duration::from_micros(phase.into()), 0));
        confirm(&mut s);
        // The next frame, sent on its first try, keeps the same phase.
        s.push_reading(Reading::default());
        let t = at(20 * S);
        assert!(!sent(&mut s, t, 0));
        assert_eq!(
            s.poll_timeout(),
            Some(t + Duration::from_micros(phase.into()))
        );
    }

    #[test]
    fn the_phase_stays_within_the_spread() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.redraw_phase = true;
        s.next_counter = 1;
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, Instant::ZERO, u32::MAX));
        assert_eq!(s.phase.as_micros(), u64::from(u32::MAX) % (5 * S + 1));
        assert!(s.phase <= s.cfg.phase_spread);
    }

    #[test]
    fn readings_waiting_when_the_ack_arrives_go_at_once() {
        let mut s = sender(SenderConfig::new(1, 1));
        s.phase = Duration::from_secs(4);
        s.next_counter = 1;
        s.push_reading(Reading::default());
        assert!(!sent(&mut s, Instant::ZERO, 0));
        assert!(sent(&mut s, at(4 * S), 0));
        s.push_reading(Reading::default());
        confirm(&mut s);
        assert!(
            sent(&mut s, at(4 * S + 10_000), 0),
            "they have waited already"
        );
    }

    #[test]
    fn an_abandoned_frame_draws_a_new_phase_after_the_holdoff() {
        let mut cfg = SenderConfig::new(1, 1);
        cfg.max_retries = 0;
        let mut s = sender(cfg);
        s.push_reading(Reading::default());
        assert!(sent(&mut s, Instant::ZERO, 0));
        // Given up at 3 s, held off 5 s, then the phase.
        assert!(!sent(&mut s, at(3 * S), 0));
        assert_eq!(s.stats().frames_abandoned, 1);
        assert_eq!(s.poll_timeout(), Some(at(8 * S)));
        assert!(!sent(&mut s, at(8 * S), 1_000_000));
        assert_eq!(s.poll_timeout(), Some(at(9 * S)));
        assert!(sent(&mut s, at(9 * S), 0));
    }
}
