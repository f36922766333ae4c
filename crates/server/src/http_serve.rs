//! The HTTP listener: hyper 1 connections under the limits `axum::serve`
//! lacks, so hostile clients cannot starve the API or `/healthz`.
//!
//! - **Connections**: at most `max_connections` open; beyond, a new connection is
//!   accepted and closed at once (so the backlog never fills). `accept()`
//!   errors (out of file descriptors) are counted, logged at most once a second
//!   and retried after a short sleep: the loop never ends on them.
//! - **Timeouts**: each request head (and a TLS handshake) must arrive within
//!   `header_timeout_ms`; a connection that moves no byte for `idle_timeout_ms`
//!   is shut down gracefully (and dropped if it still hangs on after as long again).
//! - **Requests**: a token bucket per client address (an IPv6 client's /64)
//!   answers 429 beyond `rate_limit_per_s` (burst `rate_limit_burst`); at most
//!   `max_concurrent_requests` are handled at once, beyond that 503. Both carry
//!   `Retry-After`.
//!
//! Every refusal is counted in [`Metrics`](crate::metrics::Metrics) (`http_*`)
//! and logged at most once a second per kind, with the number of lines left out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::config::HttpConfig;
use crate::metrics::{add, Shared};

/// Pause after a failed `accept()` before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Client addresses tracked by the rate limiter before idle ones are dropped.
const MAX_TRACKED_CLIENTS: usize = 65_536;

/// The listener's limits, from [`HttpConfig`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub rate_limit_per_s: u32,
    pub rate_limit_burst: u32,
}

impl Limits {
    pub(crate) fn from_config(c: &HttpConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            max_concurrent_requests: c.max_concurrent_requests,
            rate_limit_per_s: c.rate_limit_per_s,
            rate_limit_burst: c.rate_limit_burst,
        }
    }
}

/// A token bucket per client address. Time is an input (`now`), so the
/// behaviour is tested without sleeping.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(per_s: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_s: f64::from(per_s.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket's key: the address, or an IPv6 client's /64 (one host has a
    /// whole /64 to pick addresses from).
    fn key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
            },
            v4 => v4,
        }
    }

    /// Takes a token for `ip` at `now`; `Err(wait)` names how long until one is free.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = Self::key(ip);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_TRACKED_CLIENTS {
            // Forget clients whose bucket has refilled: they are as good as new.
            let full_after = Duration::from_secs_f64(self.burst / self.per_s);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
            if buckets.len() >= MAX_TRACKED_CLIENTS {
                return Err(Duration::from_secs(1));
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_s).min(self.burst);
        b.at = now.max(b.at);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_s))
        }
    }
}

/// Lets a log line through at most once per second, counting the rest.
type Throttle = gridpow_common::throttle::LogThrottle;

/// What every connection task shares.
struct Ctx {
    router: Router,
    shared: Arc<Shared>,
    limits: Limits,
    rate: RateLimiter,
    in_flight: Arc<Semaphore>,
    base: Instant,
    log_refused: Throttle,
    log_rate: Throttle,
    log_busy: Throttle,
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    async fn handle(&self, peer: SocketAddr, mut req: Request<Incoming>) -> Response {
        let m = &self.shared.metrics;
        if let Err(wait) = self.rate.check(peer.ip(), Instant::now()) {
            add(&m.http_rate_limited, 1);
            if let Some(suppressed) = self.log_rate.ready(Instant::now()) {
                tracing::warn!(client = %peer.ip(), path = %req.uri().path(), suppressed, "HTTP client over its rate limit; answering 429.");
            }
            return refusal(
                StatusCode::TOO_MANY_REQUESTS,
                wait,
                "rate_limited",
                "rate limit exceeded for this client",
            );
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            add(&m.http_overloaded, 1);
            if let Some(suppressed) = self.log_busy.ready(Instant::now()) {
                tracing::warn!(
                    limit = self.limits.max_concurrent_requests,
                    suppressed,
                    "HTTP requests at their concurrency limit; answering 503."
                );
            }
            return refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::from_secs(1),
                "overloaded",
                "server busy",
            );
        };
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let mut router = self.router.clone();
        match router.call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// A refusal with `Retry-After` (whole seconds, at least 1) and a JSON error.
fn refusal(status: StatusCode, wait: Duration, code: &str, msg: &str) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = crate::http_error::json_error(status, code, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until `stop`
/// resolves, then shuts every connection down gracefully and waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
) {
    let ctx = Arc::new(Ctx {
        router,
        shared,
        limits,
        rate: RateLimiter::new(limits.rate_limit_per_s, limits.rate_limit_burst),
        in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
        base: Instant::now(),
        log_refused: Throttle::default(),
        log_rate: Throttle::default(),
        log_busy: Throttle::default(),
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let log_accept = Throttle::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            r = listener.accept() => r,
        };
        let m = &ctx.shared.metrics;
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                add(&m.http_accept_errors, 1);
                if let Some(suppressed) = log_accept.ready(Instant::now()) {
                    tracing::error!(error = %e, suppressed, "HTTP accept failed; retrying.");
                }
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            add(&m.http_connections_refused, 1);
            if let Some(suppressed) = ctx.log_refused.ready(Instant::now()) {
                tracing::warn!(
                    client = %peer.ip(),
                    limit = limits.max_connections,
                    suppressed,
                    "HTTP connection limit reached; closing new connections."
                );
            }
            drop(stream);
            continue;
        };
        add(&m.http_connections, 1);
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => drive(stream, peer, ctx, stop).await,
                Some(acceptor) => {
                    let m = &ctx.shared.metrics;
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => drive(tls_stream, peer, ctx, stop).await,
                        Ok(Err(e)) => {
                            add(&m.http_tls_failures, 1);
                            tracing::debug!(client = %peer, error = %e, "HTTP TLS handshake failed.");
                        }
                        Err(_) => {
                            add(&m.http_header_timeouts, 1);
                            tracing::debug!(client = %peer, "HTTP TLS handshake timed out.");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = connections.acquire_many(all).await;
}

/// Serves HTTP/1.1 on one connection until the client leaves, it idles out,
/// or the server stops.
async fn drive<I>(io: I, peer: SocketAddr, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let last = Arc::new(AtomicU64::new(ctx.now_ms()));
    let io = TokioIo::new(Tracked {
        inner: io,
        last: last.clone(),
        base: ctx.base,
    });
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(ctx.handle(peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let idle = ctx.limits.idle_timeout;
    let mut closing_since: Option<tokio::time::Instant> = None;
    loop {
        let deadline = match closing_since {
            // Shut down gracefully; a client still holding on after as long again is dropped.
            Some(t) => t + idle,
            None => {
                let last_ms = last.load(Ordering::Relaxed);
                tokio::time::Instant::from_std(ctx.base + Duration::from_millis(last_ms)) + idle
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        add(&ctx.shared.metrics.http_header_timeouts, 1);
                    }
                    tracing::debug!(client = %peer, error = %e, "HTTP connection ended with an error.");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing_since.is_some() {
                    tracing::debug!(client = %peer, "HTTP connection dropped after graceful shutdown.");
                    return;
                }
                let quiet = ctx.now_ms().saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= idle.as_millis() as u64 {
                    add(&ctx.shared.metrics.http_idle_closed, 1);
                    tracing::debug!(client = %peer, "HTTP connection idle; closing.");
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                }
            }
            _ = stop.changed(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(tokio::time::Instant::now());
            }
        }
    }
}

/// An IO stream that records when it last moved a byte (ms since `base`).
struct Tracked<T> {
    inner: T,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.last
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_the_burst_then_refills_at_the_rate() {
        let r = RateLimiter::new(10, 5);
        let t = Instant::now();
        let ip: IpAddr = [192, 0, 2, 1].into();
        for _ in 0..5 {
            r.check(ip, t).unwrap();
        }
        let wait = r.check(ip, t).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another client is not affected.
        r.check([192, 0, 2, 2].into(), t).unwrap();
        // 100 ms later one token is back, not two.
        let t1 = t + Duration::from_millis(100);
        r.check(ip, t1).unwrap();
        assert!(r.check(ip, t1).is_err());
        // After a long pause the bucket holds the burst again, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            r.check(ip, t2).unwrap();
        }
        assert!(r.check(ip, t2).is_err());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() {
        let r = RateLimiter::new(1, 1);
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        r.check(a, t).unwrap();
        assert!(r.check(b, t).is_err());
        r.check("2001:db8:1:3::1".parse().unwrap(), t).unwrap();
        r.check("::ffff:192.0.2.7".parse().unwrap(), t).unwrap();
        assert!(r.check("192.0.2.7".parse().unwrap(), t).is_err());
    }

    #[test]
    fn refusals_carry_a_whole_second_retry_after() {
        let r = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            Duration::from_millis(20),
            "rate_limited",
            "x",
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let r = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(2100),
            "overloaded",
            "x",
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
