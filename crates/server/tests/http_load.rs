//! The HTTP listener under hostile load, on a real server (SQLite, its own
//! key bundle; no broker needed, the MQTT task just keeps retrying):
//!
//! - 1 000 idle TCP connections held open while 20 clients send 200 requests/s
//!   to `/healthz` and the API: `/healthz` p99 under 100 ms, no errors, and the
//!   API answers within 1 s once the idle connections are gone;
//! - connections over `max_connections` are closed at once and counted, and the
//!   server serves again as soon as they are gone;
//! - out of file descriptors, failed `accept()` calls are counted and retried,
//!   and the API answers again as soon as descriptors are free;
//! - silent connections time out (head and idle), counted;
//! - a client over its rate limit gets 429 with `Retry-After`, others do not;
//! - a burst of concurrent API queries gets 200 or 503 (never a database error);
//! - the API over TLS with a certificate issued by the site CA.
//!
//! Each test runs one server per test (nextest runs them in parallel processes).
//! The load test raises its soft open-file limit to fit ~2 100 descriptors.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Site;
use gridpow_server::{Server, ServerConfig, ServerHandle};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A port nothing listens on: the server's MQTT task retries in the background.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config(site: &Site) -> ServerConfig {
    let mut cfg = site.config(dead_port());
    cfg.mqtt.tls = false;
    cfg
}

async fn start(cfg: ServerConfig) -> ServerHandle {
    Server::start(cfg).await.unwrap()
}

/// A TCP connection from loopback address `src` (127.0.0.0/8 is all local on
/// Linux): each load client is its own "client address" for the rate limiter.
async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((src, 0)))?;
    s.connect(addr).await
}

/// A keep-alive HTTP/1.1 client on `io`.
async fn client<I>(io: I) -> SendRequest<Empty<Bytes>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` with `token`: status, `Retry-After` if any, body.
async fn get(
    s: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    token: &str,
    path: &str,
) -> Result<(u16, Option<String>, Bytes), hyper::Error> {
    s.ready().await?;
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    let resp = s.send_request(req).await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, retry, body))
}

/// The value of counter `name` in the server's Prometheus text.
fn counter(h: &ServerHandle, name: &str) -> u64 {
    let text = h.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("gridpow_server_{name} ")))
        .unwrap_or_else(|| panic!("no counter {name}"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn raise_nofile(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < want) {
        let target = lim.maximum.map_or(want, |m| m.min(want));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: lim.maximum,
            },
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_fast_and_no_request_fails_while_1000_idle_connections_are_held() {
    raise_nofile(8192);
    let site = Site::new(&[1], &[1, 2, 3]);
    let token = site.admin.clone();
    let mut cfg = config(&site);
    // The idle connections must still be open at the end of the 5 s run
    // (the default 5 s head timeout would close them during it).
    cfg.http.header_timeout_ms = 30_000;
    let h = start(cfg).await;
    let addr = h.http_addr();

    let idle_from = Ipv4Addr::new(127, 0, 0, 200);
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..20 {
        let batch: Vec<_> = (0..50)
            .map(|_| tokio::spawn(connect_from(idle_from, addr)))
            .collect();
        for c in batch {
            idle.push(c.await.unwrap().unwrap());
        }
    }
    assert!(
        common::wait_until(5, || counter(&h, "http_connections_total") >= 1000).await,
        "server accepted {} of 1000 idle connections",
        counter(&h, "http_connections_total")
    );

    let run = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for c in 0..20u8 {
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let src = Ipv4Addr::new(127, 0, 0, 10 + c);
            let mut s = client(connect_from(src, addr).await.unwrap()).await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let (mut health, mut api, mut errors) = (Vec::new(), Vec::new(), Vec::new());
            let end = Instant::now() + run;
            let mut i = 0u32;
            while Instant::now() < end {
                tick.tick().await;
                let path = if i % 2 == 0 {
                    "/healthz"
                } else {
                    "/api/v1/meters"
                };
                i += 1;
                let t = Instant::now();
                match get(&mut s, addr, &token, path).await {
                    Ok((200, _, _)) => {
                        let took = t.elapsed();
                        if path == "/healthz" {
                            health.push(took);
                        } else {
                            api.push(took);
                        }
                    }
                    Ok((code, _, body)) => {
                        errors.push(format!("{path}: {code} {}", String::from_utf8_lossy(&body)))
                    }
                    Err(e) => {
                        errors.push(format!("{path}: {e}"));
                        s = client(connect_from(src, addr).await.unwrap()).await;
                    }
                }
            }
            (health, api, errors)
        }));
    }
    let (mut health, mut api, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let (h1, a1, e1) = t.await.unwrap();
        health.extend(h1);
        api.extend(a1);
        errors.extend(e1);
    }
    health.sort();
    api.sort();
    let total = health.len() + api.len() + errors.len();
    let (hp50, hp99) = (percentile(&health, 0.50), percentile(&health, 0.99));
    let (ap50, ap99) = (percentile(&api, 0.50), percentile(&api, 0.99));
    println!(
        "1000 idle connections, {total} requests from 20 clients in {run:?}: \
         /healthz p50 {hp50:?} p99 {hp99:?}; /api/v1/meters p50 {ap50:?} p99 {ap99:?}; errors {}",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(total >= 900, "only {total} requests in {run:?}");
    assert!(hp99 < Duration::from_millis(100), "/healthz p99 {hp99:?}");
    assert_eq!(counter(&h, "http_rate_limited_total"), 0);
    assert_eq!(counter(&h, "http_overloaded_total"), 0);

    // The idle connections were held to the end, then go away.
    let mut still_open = 0;
    for s in &mut idle {
        if !closed_by_server(s, Duration::from_millis(1)).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 1000,
        "the server dropped idle connections early"
    );
    drop(idle);
    let t = Instant::now();
    let mut s = client(
        connect_from(Ipv4Addr::new(127, 0, 0, 9), addr)
            .await
            .unwrap(),
    )
    .await;
    let (code, _, _) = tokio::time::timeout(
        Duration::from_secs(1),
        get(&mut s, addr, &token, "/api/v1/meters"),
    )
    .await
    .expect("API answers within 1 s")
    .unwrap();
    assert_eq!(code, 200);
    println!(
        "after closing the idle connections the API answered in {:?}",
        t.elapsed()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_counted_and_service_resumes() {
    let site = Site::new(&[1], &[1]);
    let token = site.admin.clone();
    let mut cfg = config(&site);
    cfg.http.max_connections = 50;
    let h = start(cfg).await;
    let addr = h.http_addr();
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(common::wait_until(5, || counter(&h, "http_connections_total") == 50).await);
    let mut extra = Vec::new();
    for _ in 0..10 {
        extra.push(TcpStream::connect(addr).await.unwrap());
    }
    for s in &mut extra {
        assert!(closed_by_server(s, Duration::from_secs(2)).await);
    }
    assert_eq!(counter(&h, "http_connections_refused_total"), 10);
    drop(held);
    // The freed slots are taken again within a second.
    let t = Instant::now();
    loop {
        let mut s = client(TcpStream::connect(addr).await.unwrap()).await;
        if let Ok((200, _, _)) = get(&mut s, addr, &token, "/healthz").await {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "no slot freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_counted_and_service_resumes_when_they_free_up() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let site = Site::new(&[1], &[1]);
    let token = site.admin.clone();
    let h = start(config(&site)).await;
    let addr = h.http_addr();
    // Client sockets made before the limit drops: connecting them needs no
    // new descriptor, accepting them does. The server gets 20, then accept()
    // fails with EMFILE while the rest wait in the backlog.
    let sockets: Vec<_> = (0..100).map(|_| TcpSocket::new_v4().unwrap()).collect();
    let saved = getrlimit(Resource::Nofile);
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_now + 20),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    let mut held = Vec::new();
    for s in sockets {
        held.push(s.connect(addr).await.unwrap());
    }
    let errors = common::wait_until(3, || counter(&h, "http_accept_errors_total") > 0).await;
    drop(held);
    setrlimit(Resource::Nofile, saved).unwrap();
    assert!(errors, "accept() never failed");
    let t = Instant::now();
    let mut s = client(TcpStream::connect(addr).await.unwrap()).await;
    let (code, _, _) = tokio::time::timeout(
        Duration::from_secs(1),
        get(&mut s, addr, &token, "/api/v1/meters"),
    )
    .await
    .expect("API answers within 1 s")
    .unwrap();
    assert_eq!(code, 200);
    println!(
        "{} failed accept() calls; API answered {:?} after the descriptors were freed",
        counter(&h, "http_accept_errors_total"),
        t.elapsed()
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_and_counted() {
    let site = Site::new(&[1], &[1]);
    let mut cfg = config(&site);
    cfg.http.header_timeout_ms = 300;
    cfg.http.idle_timeout_ms = 60_000;
    let h = start(cfg).await;
    let addr = h.http_addr();
    // Sends half a request head and stops (slowloris).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    assert!(closed_by_server(&mut slow, Duration::from_secs(3)).await);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(common::wait_until(2, || counter(&h, "http_header_timeouts_total") >= 1).await);
    h.shutdown().await;

    let mut cfg = config(&site);
    cfg.http.header_timeout_ms = 60_000;
    cfg.http.idle_timeout_ms = 300;
    let h = start(cfg).await;
    let addr = h.http_addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(3)).await);
    assert!(common::wait_until(2, || counter(&h, "http_idle_closed_total") >= 1).await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_limit_gets_429_and_others_are_served() {
    let site = Site::new(&[1], &[1]);
    let token = site.admin.clone();
    let mut cfg = config(&site);
    cfg.http.rate_limit_per_s = 2;
    cfg.http.rate_limit_burst = 10;
    let h = start(cfg).await;
    let addr = h.http_addr();
    let mut greedy = client(
        connect_from(Ipv4Addr::new(127, 0, 0, 2), addr)
            .await
            .unwrap(),
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..15 {
        let (code, retry, _) = get(&mut greedy, addr, &token, "/healthz").await.unwrap();
        if code == 429 {
            assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
        }
        codes.push(code);
    }
    let refused = codes.iter().filter(|&&c| c == 429).count() as u64;
    assert!(codes[..10].iter().all(|&c| c == 200), "{codes:?}");
    assert!(refused >= 4, "{codes:?}");
    assert_eq!(counter(&h, "http_rate_limited_total"), refused);
    let mut other = client(
        connect_from(Ipv4Addr::new(127, 0, 0, 3), addr)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        get(&mut other, addr, &token, "/healthz").await.unwrap().0,
        200
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_api_queries_gets_answers_or_503_never_a_database_error() {
    let site = Site::new(&[1], &[1]);
    let token = site.admin.clone();
    let mut cfg = config(&site);
    cfg.http.max_concurrent_requests = 16;
    cfg.http.rate_limit_per_s = 10_000;
    cfg.http.rate_limit_burst = 10_000;
    let h = start(cfg).await;
    let addr = h.http_addr();
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let token = token.clone();
            tokio::spawn(async move {
                let mut s = client(TcpStream::connect(addr).await.unwrap()).await;
                let (code, retry, body) =
                    get(&mut s, addr, &token, "/api/v1/quarantine?limit=1000")
                        .await
                        .unwrap();
                (code, retry, String::from_utf8_lossy(&body).into_owned())
            })
        })
        .collect();
    let mut busy = 0u64;
    for t in tasks {
        let (code, retry, body) = t.await.unwrap();
        match code {
            200 => {}
            503 => {
                assert_eq!(retry.as_deref(), Some("1"));
                busy += 1;
            }
            _ => panic!("{code}: {body}"),
        }
    }
    assert_eq!(
        counter(&h, "http_overloaded_total") + counter(&h, "http_db_busy_total"),
        busy
    );
    println!(
        "300 concurrent queries: {} answered, {busy} refused with 503",
        300 - busy
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_with_a_certificate_the_site_ca_issued() {
    let site = Site::new(&[1], &[1]);
    let token = site.admin.clone();
    let mut cfg = config(&site);
    // Any PEM chain will do; the broker's certificate is issued by the site CA
    // for localhost and 127.0.0.1.
    let id = site.keys.broker_tls();
    cfg.http.tls_cert = Some(id.cert);
    cfg.http.tls_key = Some(id.key);
    let h = start(cfg).await;
    let addr = h.http_addr();

    let tls = gridpow_common::tls::client_config(&site.keys.ca_cert_path(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector
        .connect(name, TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    let mut s = client(stream).await;
    let (code, _, body) = get(&mut s, addr, &token, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body:?}");
    let (code, _, _) = get(&mut s, addr, &token, "/api/v1/meters").await.unwrap();
    assert_eq!(code, 200);

    // A client trusting another CA refuses the certificate.
    let other = tempfile::tempdir().unwrap();
    let other_keys = gridpow_keys::KeyDir::new(other.path());
    other_keys
        .init(&gridpow_keys::InitOptions::default())
        .unwrap();
    let tls = gridpow_common::tls::client_config(&other_keys.ca_cert_path(), None).unwrap();
    let refused = tokio_rustls::TlsConnector::from(tls)
        .connect(
            tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        )
        .await;
    assert!(refused.is_err());
    // Plain HTTP gets no answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    assert!(common::wait_until(2, || counter(&h, "http_tls_failures_total") >= 1).await);
    h.shutdown().await;
}
