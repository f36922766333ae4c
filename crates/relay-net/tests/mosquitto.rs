//! The relay's TLS + MQTT transport against a private Mosquitto started from
//! the shipped docs/deploy/mosquitto.conf (mutual TLS, CN as username and
//! client id, ACL, persistence), with certificates from `gridpow keys` and
//! rcgen, and rumqttc (rustls) as the independent grid-server client.
#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_relay_net::error::{Io, Tls};
use gridpow_relay_net::{
    Arena, Config, Connection, Error, Identity, Link, Start, TlsBuffers, ARENA_LEN, TLS_READ_BUF,
    TLS_WRITE_BUF,
};
use gridpow_testkit::Mosquitto;
use rand::rngs::OsRng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

type Socket = FromTokio<TcpStream>;

const RELAY: u32 = 1;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn mono_ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// A site: CA, broker certificate, relay 1 and server 1 certificates, ACL.
struct Site {
    dir: tempfile::TempDir,
    keys: KeyDir,
    acl: PathBuf,
    ca_der: Vec<u8>,
    relay_cert: Vec<u8>,
    relay_key: Vec<u8>,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions {
        relay_ids: vec![RELAY],
        ..InitOptions::default()
    })
    .unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, keys.mosquitto_acl().unwrap()).unwrap();
    let ca_der = CertificateDer::from_pem_file(keys.ca_cert_path())
        .unwrap()
        .to_vec();
    let files = keys.tls_files(&format!("relay-{RELAY}"));
    let relay_cert = CertificateDer::from_pem_file(&files.cert).unwrap().to_vec();
    let relay_key = PrivateKeyDer::from_pem_file(&files.key)
        .unwrap()
        .secret_der()
        .to_vec();
    Site {
        dir,
        keys,
        acl,
        ca_der,
        relay_cert,
        relay_key,
    }
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/mosquitto.conf")
}

/// What the broker presents instead of the site's genuine broker certificate.
enum BrokerCert {
    Genuine,
    OtherCa,
    WrongHost,
    Expired,
    /// Names localhost, signed by the site CA, but for clients only.
    ClientOnly,
    /// Names localhost, signed with relay 1's key, sent with relay 1's certificate.
    MintedByRelay,
}

impl Site {
    fn broker(&self, cert: BrokerCert) -> Mosquitto {
        let keys = match cert {
            BrokerCert::Genuine => KeyDir::new(self.keys.root()),
            other => self.bad_broker_keys(other),
        };
        Mosquitto::start_from_config(&keys, &shipped_config(), &self.acl).unwrap()
    }

    /// A key directory with the site CA (to check clients) and a bad broker certificate.
    fn bad_broker_keys(&self, cert: BrokerCert) -> KeyDir {
        let root = tempfile::Builder::new()
            .prefix("bad-broker")
            .tempdir_in(self.dir.path())
            .unwrap()
            .keep();
        let bad = KeyDir::new(&root);
        std::fs::create_dir_all(root.join("tls")).unwrap();
        std::fs::copy(self.keys.ca_cert_path(), bad.ca_cert_path()).unwrap();
        let ca_pem = std::fs::read_to_string(self.keys.ca_cert_path()).unwrap();
        let ca_key =
            std::fs::read_to_string(self.keys.ca_cert_path().with_file_name("ca.key")).unwrap();
        let site_ca =
            rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&ca_key).unwrap())
                .unwrap();
        let localhost = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = match cert {
            BrokerCert::OtherCa => {
                let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                ca.distinguished_name
                    .push(rcgen::DnType::CommonName, "gridpow site CA");
                let other = rcgen::Issuer::new(ca, rcgen::KeyPair::generate().unwrap());
                rcgen::CertificateParams::new(localhost)
                    .unwrap()
                    .signed_by(&key, &other)
                    .unwrap()
                    .pem()
            }
            BrokerCert::WrongHost => {
                rcgen::CertificateParams::new(vec!["broker.elsewhere.example".to_string()])
                    .unwrap()
                    .signed_by(&key, &site_ca)
                    .unwrap()
                    .pem()
            }
            BrokerCert::Expired => {
                let mut p = rcgen::CertificateParams::new(localhost).unwrap();
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
                p.signed_by(&key, &site_ca).unwrap().pem()
            }
            BrokerCert::ClientOnly => {
                let mut p = rcgen::CertificateParams::new(localhost).unwrap();
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                p.signed_by(&key, &site_ca).unwrap().pem()
            }
            BrokerCert::MintedByRelay => {
                let relay = self.keys.tls_files("relay-1");
                let relay_pem = std::fs::read_to_string(&relay.cert).unwrap();
                let relay_key = std::fs::read_to_string(&relay.key).unwrap();
                let relay_issuer = rcgen::Issuer::from_ca_cert_pem(
                    &relay_pem,
                    rcgen::KeyPair::from_pem(&relay_key).unwrap(),
                )
                .unwrap();
                let leaf = rcgen::CertificateParams::new(localhost)
                    .unwrap()
                    .signed_by(&key, &relay_issuer)
                    .unwrap()
                    .pem();
                format!("{leaf}{relay_pem}")
            }
            BrokerCert::Genuine => unreachable!(),
        };
        let files = bad.broker_tls();
        std::fs::write(&files.cert, pem).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        bad
    }

    fn config(&self) -> Config<'_> {
        Config {
            relay_id: RELAY,
            client_id: "relay-1",
            server_name: "localhost",
            ca_der: &self.ca_der,
            identity: Some(Identity {
                cert_der: &self.relay_cert,
                key_der: &self.relay_key,
            }),
            keep_alive_s: 5,
            session_expiry_s: 3600,
        }
    }

    /// The grid server's client (rumqttc over rustls, certificate server-1),
    /// subscribed to `filters` (again after every reconnect). Messages arrive
    /// on the channel; `None` marks each completed subscription.
    async fn server_client(
        &self,
        port: u16,
        filters: &'static [&'static str],
    ) -> (AsyncClient, mpsc::UnboundedReceiver<Option<Msg>>) {
        let files = self.keys.tls_files("server-1");
        let tls = gridpow_common::tls::client_config(
            &self.keys.ca_cert_path(),
            Some((files.cert.as_path(), files.key.as_path())),
        )
        .unwrap();
        let mut o = MqttOptions::new("server-1", "localhost", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut ev) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let c = client.clone();
        tokio::spawn(async move {
            let mut pending_subacks = 0;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in filters {
                            c.try_subscribe(*f, QoS::AtLeastOnce).unwrap();
                            pending_subacks += 1;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pending_subacks -= 1;
                        if pending_subacks == 0 && tx.send(None).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let m = Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(Some(m)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        (client, rx)
    }
}

#[derive(Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Waits for the next subscription to complete.
async fn subscribed(rx: &mut mpsc::UnboundedReceiver<Option<Msg>>) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("subscription within 10 s")
            .expect("subscriber alive");
        if m.is_none() {
            return;
        }
    }
}

/// The next message (skipping subscription marks), if one comes within `secs`.
async fn next_msg(rx: &mut mpsc::UnboundedReceiver<Option<Msg>>, secs: u64) -> Option<Msg> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Some(m))) => return Some(m),
            Ok(Some(None)) => continue,
            _ => return None,
        }
    }
}

/// Buffers a relay keeps for one connection (boxed: a test's future stays small).
struct Bufs {
    rx: Vec<u8>,
    tx: Vec<u8>,
    mem: Vec<u8>,
}

impl Bufs {
    fn new() -> Self {
        Bufs {
            rx: vec![0; TLS_READ_BUF],
            tx: vec![0; TLS_WRITE_BUF],
            mem: vec![0; ARENA_LEN],
        }
    }

    /// The TLS buffers and the MQTT arena of one connection.
    fn split(&mut self) -> (TlsBuffers<'_>, Arena<'_>) {
        (
            TlsBuffers {
                read: &mut self.rx,
                write: &mut self.tx,
            },
            Arena::new(&mut self.mem),
        )
    }
}

async fn tcp_link(port: u16) -> Link<Socket> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Nagle's algorithm with the peer's delayed ACK stalls back-to-back small
    // records by ~40 ms (measured, ci profile: open took 92 ms, 46 ms without).
    tcp.set_nodelay(true).unwrap();
    Link::new(FromTokio::new(tcp))
}

fn start(t0: Instant, height: Option<u64>) -> Start {
    Start {
        unix_ms: unix_ms(),
        now_ms: mono_ms(t0),
        height,
    }
}

/// Connects and expects a refusal; returns the error.
async fn refused(port: u16, cfg: &Config<'_>) -> Error {
    let mut b = Bufs::new();
    let link = tcp_link(port).await;
    let (tls, mut arena) = b.split();
    let r = Connection::open(
        &link,
        tls,
        &mut arena,
        cfg,
        start(Instant::now(), None),
        OsRng,
        &mut |_: &[u8]| {},
    )
    .await;
    match r {
        Ok(_) => panic!("connection accepted"),
        Err(e) => {
            println!("refused as expected: {e}");
            e
        }
    }
}

fn status_json(online: bool, height: Option<u64>, time_ms: u64) -> String {
    // What crates/relay/src/publisher.rs `status_json` produces.
    serde_json::json!({
        "relay_id": RELAY,
        "state": if online { "online" } else { "offline" },
        "height": height,
        "time_ms": time_ms,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_with_client_certificate_succeeds_and_the_retained_status_says_online() {
    let site = site();
    let broker = site.broker(BrokerCert::Genuine);
    let cfg = site.config();
    let t0 = Instant::now();
    let mut b = Bufs::new();
    let link = tcp_link(broker.port).await;
    let (tls, mut arena) = b.split();
    let s = start(t0, Some(41));
    let opened = Instant::now();
    let conn = Connection::open(&link, tls, &mut arena, &cfg, s, OsRng, &mut |_: &[u8]| {})
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    println!(
        "TLS 1.3 handshake with client certificate + MQTT CONNECT, SUBSCRIBE, retained status: {} ms",
        opened.elapsed().as_millis()
    );
    assert!(!conn.session_present(), "first connection has no session");

    let (_server, mut rx) = site
        .server_client(broker.port, &["gridpow/v1/relays/1/status"])
        .await;
    let m = next_msg(&mut rx, 10).await.expect("retained status");
    assert_eq!(m.topic, "gridpow/v1/relays/1/status");
    assert!(m.retain);
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        status_json(true, Some(41), s.unix_ms)
    );
    conn.close().await.unwrap();
    let m = next_msg(&mut rx, 10)
        .await
        .expect("offline status on close");
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        status_json(false, Some(41), s.unix_ms)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_certificate_from_another_ca_is_refused() {
    let site = site();
    let broker = site.broker(BrokerCert::OtherCa);
    let e = refused(broker.port, &site.config()).await;
    assert!(matches!(e, Error::Tls(Tls::BrokerUntrusted)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_certificate_minted_with_a_relay_key_is_refused() {
    let site = site();
    let broker = site.broker(BrokerCert::MintedByRelay);
    let e = refused(broker.port, &site.config()).await;
    assert!(matches!(e, Error::Tls(Tls::BrokerUntrusted)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_certificate_for_clients_only_is_refused_as_broker_certificate() {
    let site = site();
    let broker = site.broker(BrokerCert::ClientOnly);
    let e = refused(broker.port, &site.config()).await;
    assert!(
        matches!(e, Error::Tls(Tls::BrokerCertNotForServers)),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_certificate_for_another_host_is_refused() {
    let site = site();
    let broker = site.broker(BrokerCert::WrongHost);
    let e = refused(broker.port, &site.config()).await;
    assert!(matches!(e, Error::Tls(Tls::BrokerNameMismatch)), "{e:?}");
    // The genuine certificate, but we asked for another host.
    let genuine = site.broker(BrokerCert::Genuine);
    let cfg = Config {
        server_name: "broker.elsewhere.example",
        ..site.config()
    };
    let e = refused(genuine.port, &cfg).await;
    assert!(matches!(e, Error::Tls(Tls::BrokerNameMismatch)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_broker_certificate_is_refused() {
    let site = site();
    let broker = site.broker(BrokerCert::Expired);
    let e = refused(broker.port, &site.config()).await;
    assert!(
        matches!(e, Error::Tls(Tls::BrokerCertExpired { not_after, .. }) if not_after == 1_609_459_200),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_by_the_broker() {
    let site = site();
    let broker = site.broker(BrokerCert::Genuine);
    let cfg = Config {
        identity: None,
        ..site.config()
    };
    let e = refused(broker.port, &cfg).await;
    assert!(
        matches!(e, Error::Tls(Tls::ClientCertRefused { presented: false })),
        "{e:?}\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_site_is_refused_by_the_broker() {
    let site = site();
    let other = self::site();
    let broker = site.broker(BrokerCert::Genuine);
    let cfg = Config {
        identity: Some(Identity {
            cert_der: &other.relay_cert,
            key_der: &other.relay_key,
        }),
        ..site.config()
    };
    let e = refused(broker.port, &cfg).await;
    assert!(
        matches!(e, Error::Tls(Tls::ClientCertRefused { presented: true })),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_of_12_kib_arrives_byte_identical_and_a_receipt_comes_back() {
    let site = site();
    let broker = site.broker(BrokerCert::Genuine);
    let (server, mut rx) = site
        .server_client(broker.port, &["gridpow/v1/relays/+/blocks"])
        .await;
    subscribed(&mut rx).await;

    let t0 = Instant::now();
    let cfg = site.config();
    let mut b = Bufs::new();
    let link = tcp_link(broker.port).await;
    let (tls, mut arena) = b.split();
    let receipts = RefCell::new(Vec::<Vec<u8>>::new());
    let mut on_receipt = |r: &[u8]| receipts.borrow_mut().push(r.to_vec());
    let mut conn = Connection::open(
        &link,
        tls,
        &mut arena,
        &cfg,
        start(t0, None),
        OsRng,
        &mut on_receipt,
    )
    .await
    .unwrap();

    let block: Vec<u8> = (0..12 * 1024).map(|i| (i * 7 + i / 251) as u8).collect();
    conn.publish_block(&block, mono_ms(t0), &mut on_receipt)
        .await
        .unwrap();
    let m = next_msg(&mut rx, 10).await.expect("block delivered");
    assert_eq!(m.topic, "gridpow/v1/relays/1/blocks");
    assert!(m.payload == block, "block altered in transit");

    // The server's receipt (any 124 bytes: verification is the caller's).
    let receipt: Vec<u8> = (0..124u8).collect();
    server
        .publish(
            "gridpow/v1/relays/1/receipts",
            QoS::AtLeastOnce,
            false,
            receipt.clone(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while receipts.borrow().is_empty() {
            conn.wait_readable().await.unwrap();
            conn.poll(&mut on_receipt).await.unwrap();
        }
    })
    .await
    .expect("receipt within 10 s");
    assert_eq!(*receipts.borrow(), vec![receipt]);

    // Keep-alive: a PINGREQ when due, answered.
    let due = conn.poll_timeout();
    conn.handle_timeout(due).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        conn.wait_readable().await.unwrap();
        conn.poll(&mut on_receipt).await.unwrap();
    })
    .await
    .expect("PINGRESP");
    assert_eq!(conn.poll_timeout(), due + 2500, "ping answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abruptly_dropped_connection_makes_the_broker_publish_the_offline_will() {
    let site = site();
    let broker = site.broker(BrokerCert::Genuine);
    let (_server, mut rx) = site
        .server_client(broker.port, &["gridpow/v1/relays/1/status"])
        .await;
    subscribed(&mut rx).await;
    let cfg = site.config();
    let s = start(Instant::now(), Some(7));
    {
        let mut b = Bufs::new();
        let link = tcp_link(broker.port).await;
        let (tls, mut arena) = b.split();
        let _conn = Connection::open(&link, tls, &mut arena, &cfg, s, OsRng, &mut |_: &[u8]| {})
            .await
            .unwrap();
        let m = next_msg(&mut rx, 10).await.expect("online status");
        assert_eq!(
            String::from_utf8(m.payload).unwrap(),
            status_json(true, Some(7), s.unix_ms)
        );
        // Dropped here: TCP closes without MQTT DISCONNECT.
    }
    let m = next_msg(&mut rx, 10).await.expect("last will");
    assert_eq!(m.topic, "gridpow/v1/relays/1/status");
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        status_json(false, Some(7), s.unix_ms)
    );
}

/// A TCP forwarder to the broker whose connections the test can cut.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<u32>,
}

async fn proxy(target: u16) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, cut_rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            let mut cut = cut_rx.clone();
            cut.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    Proxy { port, cut }
}

/// Publishes `block` over a fresh connection, reconnecting after each failure
/// (the caller's outbox loop); returns how many attempts failed.
async fn deliver(site: &Site, port: u16, block: &[u8], t0: Instant) -> u32 {
    let cfg = site.config();
    let mut failures = 0;
    loop {
        let mut b = Bufs::new();
        let Ok(sock) = TcpStream::connect(("127.0.0.1", port)).await else {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let link = Link::new(FromTokio::new(sock));
        let (tls, mut arena) = b.split();
        let r = async {
            let mut conn = Connection::open(
                &link,
                tls,
                &mut arena,
                &cfg,
                start(t0, None),
                OsRng,
                &mut |_: &[u8]| {},
            )
            .await?;
            conn.publish_block(block, mono_ms(t0), &mut |_: &[u8]| {})
                .await
        }
        .await;
        match r {
            Ok(()) => return failures,
            Err(e) => {
                println!("attempt failed: {e}");
                failures += 1;
                assert!(failures < 50, "no delivery after 50 attempts");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_and_a_cut_connection_the_caller_reconnects_and_nothing_is_lost() {
    let site = site();
    let mut broker = site.broker(BrokerCert::Genuine);
    let (_server, mut rx) = site
        .server_client(broker.port, &["gridpow/v1/relays/+/blocks"])
        .await;
    subscribed(&mut rx).await;
    let px = proxy(broker.port).await;
    let t0 = Instant::now();
    let cfg = site.config();
    let blocks: Vec<Vec<u8>> = (0..3u8).map(|n| vec![n; 5000 + usize::from(n)]).collect();

    let mut b = Bufs::new();
    let link = tcp_link(px.port).await;
    let (tls, mut arena) = b.split();
    let mut conn = Connection::open(
        &link,
        tls,
        &mut arena,
        &cfg,
        start(t0, None),
        OsRng,
        &mut |_: &[u8]| {},
    )
    .await
    .unwrap();
    conn.publish_block(&blocks[0], mono_ms(t0), &mut |_: &[u8]| {})
        .await
        .unwrap();
    let mut got = vec![next_msg(&mut rx, 10).await.expect("block 0").payload];

    // The broker dies (SIGKILL) and comes back on the same port.
    broker.restart().unwrap();
    let e = conn
        .publish_block(&blocks[1], mono_ms(t0), &mut |_: &[u8]| {})
        .await
        .expect_err("publish must fail without PUBACK");
    println!("after the broker restart: {e}");
    assert!(matches!(e, Error::Io(_)), "{e:?}");
    drop(conn);
    subscribed(&mut rx).await; // the server is back too
    deliver(&site, px.port, &blocks[1], t0).await;

    // A connection cut in the network (both TCP ends dropped by the proxy).
    let mut b = Bufs::new();
    let link = tcp_link(px.port).await;
    let (tls, mut arena) = b.split();
    let mut conn = Connection::open(
        &link,
        tls,
        &mut arena,
        &cfg,
        start(t0, None),
        OsRng,
        &mut |_: &[u8]| {},
    )
    .await
    .unwrap();
    px.cut.send_modify(|n| *n += 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = conn
        .publish_block(&blocks[2], mono_ms(t0), &mut |_: &[u8]| {})
        .await
        .expect_err("publish must fail on a cut connection");
    println!("after the cut: {e}");
    assert!(
        matches!(e, Error::Io(Io::ConnectionLost(_) | Io::ClosedByBroker)),
        "{e:?}"
    );
    drop(conn);
    deliver(&site, px.port, &blocks[2], t0).await;

    while let Some(m) = next_msg(&mut rx, 3).await {
        if !got.contains(&m.payload) {
            got.push(m.payload);
        }
        if got.len() == blocks.len() {
            break;
        }
    }
    got.sort();
    let summary = |v: &[Vec<u8>]| v.iter().map(|b| (b.len(), b[0])).collect::<Vec<_>>();
    assert_eq!(
        summary(&got),
        summary(&blocks),
        "every block arrives (duplicates allowed)"
    );
    assert!(got == blocks, "blocks altered in transit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_queued_while_offline_all_arrive_even_when_the_arena_runs_out() {
    let site = site();
    let broker = site.broker(BrokerCert::Genuine);
    let cfg = site.config();
    let t0 = Instant::now();
    // First connection: creates the persistent session with the subscription.
    {
        let mut b = Bufs::new();
        let link = tcp_link(broker.port).await;
        let (tls, mut arena) = b.split();
        let conn = Connection::open(
            &link,
            tls,
            &mut arena,
            &cfg,
            start(t0, None),
            OsRng,
            &mut |_: &[u8]| {},
        )
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    // The server answers 60 blocks while the relay is away.
    let (server, mut rx) = site.server_client(broker.port, &[]).await;
    let _ = rx.try_recv();
    let sent: Vec<Vec<u8>> = (0..60u8).map(|n| vec![n; 124]).collect();
    for r in &sent {
        server
            .publish(
                "gridpow/v1/relays/1/receipts",
                QoS::AtLeastOnce,
                false,
                r.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Reconnect until every receipt came: the arena holds about 40 per connection.
    let received = RefCell::new(Vec::<Vec<u8>>::new());
    let mut on_receipt = |r: &[u8]| received.borrow_mut().push(r.to_vec());
    let mut connections = 0;
    let distinct = |v: &[Vec<u8>]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    while distinct(&received.borrow()).len() < sent.len() {
        connections += 1;
        assert!(
            connections <= 5,
            "receipts missing after 5 connections\n{}",
            broker.log()
        );
        let mut b = Bufs::new();
        let link = tcp_link(broker.port).await;
        let (tls, mut arena) = b.split();
        let r = async {
            let mut conn = Connection::open(
                &link,
                tls,
                &mut arena,
                &cfg,
                start(t0, None),
                OsRng,
                &mut on_receipt,
            )
            .await?;
            assert!(conn.session_present(), "the broker kept our session");
            loop {
                let wait = tokio::time::timeout(Duration::from_millis(500), conn.wait_readable());
                match wait.await {
                    Ok(r) => r?,
                    Err(_) => return Ok::<_, Error>(()),
                }
                conn.poll(&mut on_receipt).await?;
            }
        }
        .await;
        match r {
            Ok(()) => {}
            Err(Error::Capacity(c)) => println!("connection {connections}: {c}"),
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "{} receipts delivered ({} distinct) over {connections} connections",
        received.borrow().len(),
        sent.len()
    );
    assert!(
        distinct(&received.borrow()) == sent,
        "all 60 receipts, each once or more"
    );
    assert_eq!(
        received.borrow().len(),
        sent.len(),
        "with one receipt in flight at a time none is redelivered\n{}",
        broker.log()
    );
    assert!(connections >= 2, "the arena should have run out once");
}

#[tokio::test]
async fn futures_and_connection_sizes_are_reported() {
    // What the firmware's task must hold besides the caller's buffers (host
    // sizes, 64-bit pointers: an upper bound for the 32-bit ESP32).
    let site = site();
    let cfg = site.config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut b = Bufs::new();
    let link = tcp_link(port).await;
    let (tls, mut arena) = b.split();
    let mut sink = |_: &[u8]| {};
    let open = Connection::open(
        &link,
        tls,
        &mut arena,
        &cfg,
        start(Instant::now(), None),
        OsRng,
        &mut sink,
    );
    let open_size = std::mem::size_of_val(&open);
    drop(open);
    let conn_size = std::mem::size_of::<Connection<'_, '_, '_, Socket>>();
    println!("Connection::open future: {open_size} bytes; Connection: {conn_size} bytes");
    assert!(open_size < 16 * 1024, "open future {open_size} bytes");
}
