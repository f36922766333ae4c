//! What the firmware and the host supply: a radio, a clock, a way to reach
//! the broker and a log sink. Async functions in traits without `Send`
//! bounds: the application runs on a single-threaded executor (embassy on
//! the ESP32, a tokio current-thread runtime on the host).

use core::fmt;

use gridpow_proto::{Instant, MacAddr};

/// The relay's radio (ESP-NOW on the ESP32, the UDP air on the host).
#[allow(async_fn_in_trait)] // single-threaded executors: no Send bound wanted
pub trait Radio {
    /// The driver's error (logged, never fatal).
    type Error: fmt::Debug;

    /// Waits for the next frame; writes it into `buf` (at least 250 bytes)
    /// and returns its source and length. Must be cancel-safe only at the
    /// point of waiting (it is not raced against anything by the app).
    async fn receive(&mut self, buf: &mut [u8]) -> (MacAddr, usize);

    /// Sends `data` (an ACK, at most 250 bytes) to `dst`.
    async fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), Self::Error>;

    /// The protocol core authenticated the frame [`Radio::receive`] returned
    /// last as coming from `src`; called before its ACK is sent. Radios that
    /// route by MAC (ESP-NOW) ignore it; the UDP air learns return routes
    /// only from it, so that a forged datagram never moves a route.
    fn vouch(&mut self, src: &MacAddr, how: Vouch) {
        let _ = (src, how);
    }
}

/// How far an authenticated frame proves where its sender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouch {
    /// A new frame: its sender is where it came from.
    Fresh,
    /// A duplicate (possibly replayed by someone else): it may teach a
    /// missing route but never moves one.
    Replayed,
}

/// Time: a monotonic clock for the protocol and timers, and the wall clock
/// for ACKs, block headers and certificate dates.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// Monotonic time (microseconds since an arbitrary epoch).
    fn now(&self) -> Instant;
    /// Unix time in milliseconds; `None` until it is known (SNTP on the
    /// ESP32). Frames are refused and no connection is tried while `None`.
    fn wall_ms(&self) -> Option<u64>;
    /// Sleeps until `at` (returns at once if it is past).
    async fn sleep_until(&self, at: Instant);
}

/// Opens a TCP connection to the broker (embassy-net on the ESP32, tokio
/// through `embedded-io-adapters` on the host); DNS is the implementor's.
#[allow(async_fn_in_trait)]
pub trait Connector {
    /// A connected socket.
    type Socket: embedded_io_async::Read + embedded_io_async::Write;
    /// Why connecting failed (logged, then the app backs off).
    type Error: fmt::Debug;
    /// Connects; every call makes a new connection.
    async fn connect(&mut self) -> Result<Self::Socket, Self::Error>;
}

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed (a connection, a write).
    Warn,
    /// State changes (connected, block sealed, confirmed).
    Info,
    /// Per-frame detail.
    Debug,
}

/// Where the application's log lines go (`esp_println` on the ESP32,
/// `tracing` on the host). Lines are short sentences followed by
/// `key=value` fields.
pub trait Log {
    /// Writes one line.
    fn log(&self, level: Level, line: fmt::Arguments<'_>);
}

/// A log that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLog;

impl Log for NoLog {
    fn log(&self, _: Level, _: fmt::Arguments<'_>) {}
}

impl<L: Log + ?Sized> Log for &L {
    fn log(&self, level: Level, line: fmt::Arguments<'_>) {
        (**self).log(level, line)
    }
}
