//! The application: three loops over one [`StandaloneRelay`] (radio,
//! sealing, network) and a status loop, run concurrently with
//! `embassy_futures` on any single-threaded executor.

use core::cell::{Cell, RefCell};
use core::future::Future;

use embassy_futures::join::join3;
use embassy_futures::select::{select, Either};
use embassy_futures::yield_now;
use gridpow_firmware_logic::standalone::{RelayStore, StandaloneRelay};
use gridpow_proto::crypto::CryptoProvider;
use gridpow_proto::lifecycle::ReceiptOutcome;
use gridpow_proto::{Duration, Instant};
use gridpow_relay_net::error::Capacity;
use gridpow_relay_net::{Arena, Connection, CryptoRngCore, Error, Link, Start, TlsBuffers};

use crate::traits::{Clock, Connector, Level, Log, Radio, Vouch};

/// Settings of the application's loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// Proof-of-work tries per chunk; the sealing loop yields between
    /// chunks so frames keep being ACKed (a few ms of work per chunk).
    pub pow_chunk: u32,
    /// How often idle loops look for new work (sealing deadlines, blocks to
    /// publish); also the latency from sealing to publishing.
    pub idle_poll: Duration,
    /// First wait before reconnecting after a failure; doubles per failure.
    pub backoff_min: Duration,
    /// Longest wait before reconnecting.
    pub backoff_max: Duration,
    /// Interval of the status log line; zero: never.
    pub status_every: Duration,
    /// After the stop signal, how long the relay keeps sealing and
    /// publishing until everything is confirmed before it gives up.
    pub drain_timeout: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            pow_chunk: 256,
            idle_poll: Duration::from_millis(50),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            status_every: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Buffers of the network loop (about 29 KiB with the recommended sizes).
pub struct NetBuffers<'b> {
    /// TLS receive buffer, [`gridpow_relay_net::TLS_READ_BUF`] bytes.
    pub tls_read: &'b mut [u8],
    /// TLS transmit buffer, [`gridpow_relay_net::TLS_WRITE_BUF`] bytes.
    pub tls_write: &'b mut [u8],
    /// MQTT receive arena, [`gridpow_relay_net::ARENA_LEN`] bytes.
    pub arena: &'b mut [u8],
    /// A block read back from the block store before it is published: as
    /// large as the relay's largest block (half its block storage).
    pub block: &'b mut [u8],
}

/// The application's counters (the relay's own are in its `stats`,
/// `lifecycle_stats` and `ingress_stats`); never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppStats {
    /// Frames heard on the radio.
    pub frames_heard: u64,
    /// ACKs sent (accepted frames and duplicates).
    pub acks_sent: u64,
    /// ACKs the radio failed to send.
    pub ack_send_errors: u64,
    /// Frames refused (not ACKed).
    pub frames_refused: u64,
    /// Sessions opened (TCP, TLS and MQTT up).
    pub sessions: u64,
    /// Connection attempts that failed (TCP, TLS or MQTT).
    pub connect_failures: u64,
    /// Sessions that ended with an error.
    pub session_errors: u64,
    /// Sessions ended on purpose because the MQTT receive arena was used up
    /// (about 40 receipts each with the recommended size).
    pub arena_renewals: u64,
    /// Time of the last successful connect (TCP + TLS handshake + MQTT
    /// CONNECT, SUBSCRIBE and online status), milliseconds.
    pub last_connect_ms: Option<u64>,
    /// Blocks the broker acknowledged (PUBACK), first publications and republications.
    pub publishes: u64,
    /// Receipts received from the broker.
    pub receipts: u64,
    /// Receipts the relay refused (bad signature, other relay, malformed).
    pub receipts_refused: u64,
    /// Whether a session is up now.
    pub online: bool,
}

/// What the application owns besides the relay: its drivers.
pub struct Parts<R, T, K, G, L> {
    /// The radio.
    pub radio: R,
    /// The clock.
    pub clock: T,
    /// Connects to the broker.
    pub connector: K,
    /// A cryptographic RNG for TLS.
    pub rng: G,
    /// Where log lines go.
    pub log: L,
}

/// The standalone relay application. See the crate docs for how to drive it.
pub struct App<'r, 'a, 'n, 'b, C, S, const M: usize, R, T, K, G, L>
where
    C: CryptoProvider,
    S: RelayStore,
{
    relay: &'r RefCell<StandaloneRelay<'a, C, S, M>>,
    parts: Parts<R, T, K, G, L>,
    cfg: AppConfig,
    net: gridpow_relay_net::Config<'n>,
    bufs: NetBuffers<'b>,
    stats: Cell<AppStats>,
}

/// State shared by the loops.
struct Shared<'x, 'a, C, S, const M: usize, T, L>
where
    C: CryptoProvider,
    S: RelayStore,
{
    relay: &'x RefCell<StandaloneRelay<'a, C, S, M>>,
    clock: &'x T,
    log: &'x L,
    cfg: &'x AppConfig,
    stats: &'x Cell<AppStats>,
    /// Set when the stop signal came: stop ACKing, seal and publish the rest.
    draining: Cell<Option<Instant>>,
}

impl<C, S, const M: usize, T, L> Shared<'_, '_, C, S, M, T, L>
where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
{
    fn bump(&self, f: impl FnOnce(&mut AppStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Draining and nothing left to seal or confirm, or out of time.
    fn drained(&self) -> bool {
        let Some(deadline) = self.draining.get() else {
            return false;
        };
        let r = self.relay.borrow();
        let empty = r.pending_frames() == 0 && !r.is_solving() && r.outbox().next().is_none();
        empty || self.clock.now() >= deadline
    }

    fn on_receipt(&self, bytes: &[u8]) {
        self.bump(|s| s.receipts += 1);
        let outcome = self
            .relay
            .borrow_mut()
            .handle_receipt(self.clock.now(), bytes);
        match outcome {
            Ok(ReceiptOutcome::Confirmed { height, .. }) => {
                self.log
                    .log(Level::Info, format_args!("block confirmed height={height}"));
            }
            Ok(ReceiptOutcome::Quarantined { height, retry_in }) => self.log.log(
                Level::Warn,
                format_args!(
                    "block quarantined by the server, kept height={height} retry_in_ms={}",
                    retry_in.as_millis()
                ),
            ),
            Ok(ReceiptOutcome::Refused { height, .. }) => self.log.log(
                Level::Warn,
                format_args!(
                    "block refused for good by the server, dropped from flash height={height} \
                     (the server keeps it in quarantine)"
                ),
            ),
            Ok(ReceiptOutcome::NoSuchBlock) => self.log.log(
                Level::Debug,
                format_args!("receipt for no block held (repeated)"),
            ),
            Err(e) => {
                self.bump(|s| s.receipts_refused += 1);
                self.log
                    .log(Level::Warn, format_args!("receipt refused error={e:?}"));
            }
        }
    }

    async fn sleep(&self, d: Duration) {
        self.clock.sleep_until(self.clock.now() + d).await;
    }
}

impl<'r, 'a, 'n, 'b, C, S, const M: usize, R, T, K, G, L>
    App<'r, 'a, 'n, 'b, C, S, M, R, T, K, G, L>
where
    C: CryptoProvider,
    S: RelayStore,
    R: Radio,
    T: Clock,
    K: Connector,
    G: CryptoRngCore,
    L: Log,
{
    /// An application over `relay` (restored from storage by the caller),
    /// publishing with the transport settings `net`.
    pub fn new(
        relay: &'r RefCell<StandaloneRelay<'a, C, S, M>>,
        parts: Parts<R, T, K, G, L>,
        cfg: AppConfig,
        net: gridpow_relay_net::Config<'n>,
        bufs: NetBuffers<'b>,
    ) -> Self {
        App {
            relay,
            parts,
            cfg,
            net,
            bufs,
            stats: Cell::new(AppStats::default()),
        }
    }

    /// The application's counters.
    pub fn stats(&self) -> AppStats {
        self.stats.get()
    }

    /// The drivers back (after [`App::run`] returned).
    pub fn into_parts(self) -> Parts<R, T, K, G, L> {
        self.parts
    }

    /// Runs the radio, sealing, network and status loops until `stop`
    /// completes (never, on the ESP32: pass `core::future::pending()`).
    ///
    /// After `stop` the relay no longer takes frames, seals what is pending
    /// and publishes until every block is confirmed (or
    /// [`AppConfig::drain_timeout`] passes), then closes the session
    /// cleanly (the broker publishes the offline status) and returns.
    pub async fn run(&mut self, stop: impl Future<Output = ()>) {
        let Parts {
            radio,
            clock,
            connector,
            rng,
            log,
        } = &mut self.parts;
        let shared = Shared {
            relay: self.relay,
            clock: &*clock,
            log: &*log,
            cfg: &self.cfg,
            stats: &self.stats,
            draining: Cell::new(None),
        };
        let sh = &shared;
        let radio_until_stop = async {
            select(radio_loop(sh, radio), stop).await;
            sh.relay.borrow_mut().request_flush();
            sh.draining.set(Some(sh.clock.now() + sh.cfg.drain_timeout));
            sh.log.log(
                Level::Info,
                format_args!("stopping: no more frames taken, sealing and publishing the rest"),
            );
        };
        let work = join3(
            radio_until_stop,
            seal_loop(sh),
            net_loop(sh, connector, rng, &self.net, &mut self.bufs),
        );
        select(work, status_loop(sh)).await;
        let r = sh.relay.borrow();
        let left = r.pending_frames() as usize + r.outbox().count();
        drop(r);
        sh.log.log(
            Level::Info,
            format_args!("stopped; blocks or frames left unconfirmed={left}"),
        );
    }
}

/// Frames in, ACKs out.
async fn radio_loop<C, S, const M: usize, T, L, R>(
    sh: &Shared<'_, '_, C, S, M, T, L>,
    radio: &mut R,
) where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
    R: Radio,
{
    let mut buf = [0u8; 256];
    let mut ack = [0u8; 64];
    loop {
        let (src, n) = radio.receive(&mut buf).await;
        sh.bump(|s| s.frames_heard += 1);
        let frame = &buf[..n.min(buf.len())];
        let res = {
            let mut r = sh.relay.borrow_mut();
            let dups = r.ingress_stats().frames_duplicate;
            let res = r.handle_frame(sh.clock.now(), sh.clock.wall_ms(), &src, frame, &mut ack);
            let dup = r.ingress_stats().frames_duplicate != dups;
            res.map(|len| (len, dup))
        };
        match res {
            Ok((len, dup)) => {
                radio.vouch(&src, if dup { Vouch::Replayed } else { Vouch::Fresh });
                match radio.send(&src, &ack[..len]).await {
                    Ok(()) => sh.bump(|s| s.acks_sent += 1),
                    Err(e) => {
                        sh.bump(|s| s.ack_send_errors += 1);
                        sh.log
                            .log(Level::Warn, format_args!("ACK not sent error={e:?}"));
                    }
                }
            }
            Err(e) => {
                sh.bump(|s| s.frames_refused += 1);
                sh.log.log(
                    Level::Debug,
                    format_args!("frame refused src={src:02x?} error={e:?}"),
                );
            }
        }
    }
}

/// Seals due batches and solves their proof of work in chunks.
async fn seal_loop<C, S, const M: usize, T, L>(sh: &Shared<'_, '_, C, S, M, T, L>)
where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
{
    loop {
        let now = sh.clock.now();
        let (sealed, solving, next, pending) = {
            let mut r = sh.relay.borrow_mut();
            if sh.draining.get().is_some() {
                r.request_flush();
            }
            r.poll_seal(now, sh.clock.wall_ms());
            let sealed = r.poll_pow(sh.cfg.pow_chunk);
            (sealed, r.is_solving(), r.poll_timeout(), r.pending_frames())
        };
        if let Some(b) = sealed {
            let tries = sh.relay.borrow().stats().pow_tries;
            sh.log.log(
                Level::Info,
                format_args!(
                    "block sealed height={} bytes={} records={}..={} pow_tries_total={tries}",
                    b.height, b.len, b.first_record, b.last_record
                ),
            );
        }
        if solving || sealed.is_some() {
            yield_now().await;
            continue;
        }
        if let Some(deadline) = sh.draining.get() {
            if pending == 0 || now >= deadline {
                return;
            }
        }
        // The relay's next deadline may be a publish already due (the
        // network loop's business): never spin on it.
        let idle = now + sh.cfg.idle_poll;
        let wake = match next {
            Some(t) if t > now && t < idle => t,
            _ => idle,
        };
        sh.clock.sleep_until(wake).await;
    }
}

/// Why a session ended.
enum SessionEnd {
    /// Drained and closed cleanly.
    Closed,
    /// The transport failed; `online` says whether the session was up.
    Failed { error: Error, online: bool },
}

/// Connects, publishes, takes receipts; reconnects with back-off.
async fn net_loop<C, S, const M: usize, T, L, K, G>(
    sh: &Shared<'_, '_, C, S, M, T, L>,
    connector: &mut K,
    rng: &mut G,
    net: &gridpow_relay_net::Config<'_>,
    bufs: &mut NetBuffers<'_>,
) where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
    K: Connector,
    G: CryptoRngCore,
{
    let mut backoff = sh.cfg.backoff_min;
    let mut warned_clock = false;
    loop {
        if sh.drained() {
            return;
        }
        let Some(unix_ms) = sh.clock.wall_ms() else {
            // Certificate dates cannot be checked without the time.
            if !warned_clock {
                warned_clock = true;
                sh.log.log(
                    Level::Warn,
                    format_args!("no wall clock yet: not connecting"),
                );
            }
            sh.sleep(sh.cfg.backoff_min).await;
            continue;
        };
        let t0 = sh.clock.now();
        let end = match connector.connect().await {
            Ok(socket) => session(sh, socket, t0, unix_ms, rng, net, bufs).await,
            Err(e) => {
                sh.bump(|s| s.connect_failures += 1);
                sh.log.log(
                    Level::Warn,
                    format_args!(
                        "broker unreachable error={e:?} retry_in_ms={}",
                        backoff.as_millis()
                    ),
                );
                sh.sleep(backoff).await;
                backoff = next_backoff(backoff, sh.cfg.backoff_max);
                continue;
            }
        };
        sh.relay.borrow_mut().handle_disconnected();
        sh.bump(|s| s.online = false);
        match end {
            SessionEnd::Closed => return,
            SessionEnd::Failed {
                error: Error::Capacity(Capacity::ArenaUsedUp { .. }),
                online: true,
            } => {
                // Planned: the MQTT arena is reclaimed only with a new
                // session (relay-net docs); the session left cleanly.
                sh.bump(|s| s.arena_renewals += 1);
                sh.log.log(
                    Level::Info,
                    format_args!("receive arena used up, reconnecting at once"),
                );
            }
            SessionEnd::Failed { error, online } => {
                if online {
                    sh.bump(|s| s.session_errors += 1);
                    backoff = sh.cfg.backoff_min;
                } else {
                    sh.bump(|s| s.connect_failures += 1);
                }
                sh.log.log(
                    Level::Warn,
                    format_args!(
                        "{} error=\"{error}\" retry_in_ms={}",
                        if online {
                            "session lost"
                        } else {
                            "connection refused"
                        },
                        backoff.as_millis()
                    ),
                );
                sh.sleep(backoff).await;
                if !online {
                    backoff = next_backoff(backoff, sh.cfg.backoff_max);
                }
            }
        }
    }
}

fn next_backoff(d: Duration, max: Duration) -> Duration {
    let doubled = d.saturating_shl(1);
    if doubled > max {
        max
    } else {
        doubled
    }
}

/// One session: TLS + MQTT up, then publish and take receipts until an
/// error or the end of a drain.
async fn session<C, S, const M: usize, T, L, Sock, G>(
    sh: &Shared<'_, '_, C, S, M, T, L>,
    socket: Sock,
    t0: Instant,
    unix_ms: u64,
    rng: &mut G,
    net: &gridpow_relay_net::Config<'_>,
    bufs: &mut NetBuffers<'_>,
) -> SessionEnd
where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
    Sock: embedded_io_async::Read + embedded_io_async::Write,
    G: CryptoRngCore,
{
    let failed = |error, online| SessionEnd::Failed { error, online };
    let NetBuffers {
        tls_read,
        tls_write,
        arena,
        block,
    } = bufs;
    let link = Link::new(socket);
    let mut arena = Arena::new(arena);
    let tls = TlsBuffers {
        read: tls_read,
        write: tls_write,
    };
    let height = sh.relay.borrow().chain().next_height.checked_sub(1);
    let start = Start {
        unix_ms,
        now_ms: t0.as_millis(),
        height,
    };
    let mut on_receipt = |b: &[u8]| sh.on_receipt(b);
    let mut conn = match Connection::open(
        &link,
        tls,
        &mut arena,
        net,
        start,
        &mut *rng,
        &mut on_receipt,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return failed(e, false),
    };
    let took = sh.clock.now().saturating_since(t0).as_millis();
    sh.bump(|s| {
        s.sessions += 1;
        s.online = true;
        s.last_connect_ms = Some(took);
    });
    sh.log.log(
        Level::Info,
        format_args!(
            "connected to the broker handshake_ms={took} session_present={}",
            conn.session_present()
        ),
    );
    sh.relay.borrow_mut().handle_connected();
    loop {
        if sh.drained() {
            return match conn.close().await {
                Ok(()) => SessionEnd::Closed,
                Err(e) => {
                    sh.log.log(
                        Level::Warn,
                        format_args!("clean close failed error=\"{e}\""),
                    );
                    SessionEnd::Closed
                }
            };
        }
        let now = sh.clock.now();
        let order = sh.relay.borrow().poll_publish(now);
        if let Some(o) = order {
            let len = sh.relay.borrow_mut().read_block(o.height, block);
            let Some(len) = len else {
                // A store that lost a block it listed: a storage fault.
                // Nothing to publish; look again later rather than spin.
                sh.log.log(
                    Level::Warn,
                    format_args!("block bytes unreadable height={}", o.height),
                );
                sh.sleep(sh.cfg.backoff_min).await;
                continue;
            };
            let bytes = block.get(..len).unwrap_or_default();
            if let Err(e) = conn
                .publish_block(bytes, now.as_millis(), &mut on_receipt)
                .await
            {
                return failed(e, true);
            }
            // Only now, after the PUBACK: the broker has it.
            sh.relay
                .borrow_mut()
                .handle_published(o.height, sh.clock.now());
            sh.bump(|s| s.publishes += 1);
            sh.log.log(
                Level::Info,
                format_args!(
                    "block published height={} bytes={len} republish={}",
                    o.height, o.republish
                ),
            );
            continue;
        }
        let now_ms = now.as_millis();
        let keep_alive = conn.poll_timeout();
        if keep_alive <= now_ms {
            if let Err(e) = conn.handle_timeout(now_ms).await {
                return failed(e, true);
            }
            continue;
        }
        let mut wake = now + sh.cfg.idle_poll;
        let ka = Instant::from_millis(keep_alive);
        if ka < wake {
            wake = ka;
        }
        if let Some(t) = sh.relay.borrow().poll_timeout() {
            if t > now && t < wake {
                wake = t;
            }
        }
        match select(conn.wait_readable(), sh.clock.sleep_until(wake)).await {
            Either::First(Ok(())) => {
                if let Err(e) = conn.poll(&mut on_receipt).await {
                    return failed(e, true);
                }
            }
            Either::First(Err(e)) => return failed(e, true),
            Either::Second(()) => {}
        }
    }
}

/// Logs the counters every [`AppConfig::status_every`].
async fn status_loop<C, S, const M: usize, T, L>(sh: &Shared<'_, '_, C, S, M, T, L>)
where
    C: CryptoProvider,
    S: RelayStore,
    T: Clock,
    L: Log,
{
    if sh.cfg.status_every == Duration::ZERO {
        core::future::pending::<()>().await;
    }
    loop {
        sh.sleep(sh.cfg.status_every).await;
        let a = sh.stats.get();
        let r = sh.relay.borrow();
        let (i, l, s) = (*r.ingress_stats(), *r.lifecycle_stats(), *r.stats());
        let outbox = r.outbox().count();
        let next_height = r.chain().next_height;
        drop(r);
        sh.log.log(
            Level::Info,
            format_args!(
                "status online={} sessions={} connect_failures={} accepted={} duplicate={} refused={} refused_full={} refused_no_clock={} sealed={} next_height={next_height} outbox={outbox} published={} republished={} confirmed={} quarantined={} refused_for_good={} receipts_refused={} pow_tries={} last_connect_ms={:?}",
                a.online,
                a.sessions,
                a.connect_failures,
                i.frames_accepted,
                i.frames_duplicate,
                a.frames_refused,
                s.refused_full,
                s.refused_no_clock,
                l.blocks_sealed,
                l.blocks_published,
                l.blocks_republished,
                l.blocks_confirmed,
                l.blocks_quarantined,
                l.blocks_refused,
                a.receipts_refused,
                s.pow_tries,
                a.last_connect_ms,
            ),
        );
    }
}
