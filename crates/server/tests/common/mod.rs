//! Helpers shared by the integration tests: a fresh key directory, real
//! sealed frames and signed PoW blocks built with gridpow-proto, a relay-side
//! MQTT client over TLS, and a minimal HTTP client.
#![allow(dead_code, clippy::unwrap_used)]

pub mod ledger;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gridpow_common::topics;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_proto::block::BlockBuilder;
use gridpow_proto::crypto::{MeterKeys, RustCrypto};
use gridpow_proto::pow::solve_blocking;
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;
use gridpow_server::auth::{Role, TokenFile};
use gridpow_server::config::{HttpConfig, MqttConfig};
use gridpow_server::ServerConfig;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;

/// Unix ms at which test readings start: a minute ago.
pub fn t0() -> u64 {
    gridpow_common::wall_ms() - 60_000
}

/// A key directory with relays and registered meters.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub keys: KeyDir,
    pub t0: u64,
    /// An admin API token in [`Site::tokens_path`], which [`Site::config`] names.
    pub admin: String,
}

impl Site {
    pub fn new(relays: &[u32], meters: &[u32]) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(dir.path().join("keys"));
        keys.init(&InitOptions {
            relay_ids: relays.to_vec(),
            ..InitOptions::default()
        })
        .unwrap();
        let list: Vec<_> = meters.iter().map(|&m| (m, None)).collect();
        keys.add_meters(&list).unwrap();
        let mut tokens = TokenFile::default();
        let admin = tokens.create("test-admin", Role::Admin, None).unwrap();
        tokens.save(&dir.path().join("tokens.toml")).unwrap();
        Site {
            dir,
            keys,
            t0: t0(),
            admin,
        }
    }

    /// The API tokens file of the servers [`Site::config`] describes.
    pub fn tokens_path(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }

    /// Adds a token to the tokens file and returns it.
    pub fn token(&self, name: &str, role: Role, meter: Option<u32>) -> String {
        let path = self.tokens_path();
        let mut f = TokenFile::load(&path).unwrap();
        let t = f.create(name, role, meter).unwrap();
        f.save(&path).unwrap();
        t
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("ledger.db")
    }

    pub fn meter_keys(&self, meter: u32) -> MeterKeys<RustCrypto> {
        let site = self.keys.site().unwrap();
        let key_id = site.current_key_id;
        MeterKeys::new(
            &RustCrypto,
            key_id,
            &site.meter_secret(meter, key_id).unwrap(),
        )
    }

    /// A plausible reading of `meter` number `seq` (10 s interval).
    pub fn reading(&self, meter: u32, seq: u32) -> Reading {
        let amps_ma = 2_000 + (meter * 37 + seq * 11) % 3_000;
        let v_cv = 22_900 + (seq % 20) as u16;
        let pf = 9_500i16;
        let p_dw =
            (f64::from(v_cv) / 100.0 * f64::from(amps_ma) / 1000.0 * 0.95 * 10.0).round() as i32;
        Reading {
            timestamp_ms: self.t0 + u64::from(seq) * 10_000,
            voltage_cv: v_cv,
            current_ma: amps_ma,
            active_power_dw: p_dw,
            power_factor_e4: pf,
            frequency_mhz: 50_000,
            energy_mwh: 1_000_000 + u64::from(seq) * 5_000,
            flags: 0,
        }
    }

    /// A sealed uplink frame of `meter` carrying readings `first_seq ..first_seq + n`.
    pub fn frame(&self, meter: u32, epoch: u32, counter: u32, first_seq: u32, n: u32) -> Vec<u8> {
        let keys = self.meter_keys(meter);
        let header = UplinkHeader {
            key_id: keys.key_id(),
            meter_id: meter,
            boot_epoch: epoch,
            counter,
        };
        let readings: Vec<Reading> = (first_seq..first_seq + n)
            .map(|s| self.reading(meter, s))
            .collect();
        let mut out = [0u8; 250];
        let len = seal(&RustCrypto, &keys, &header, first_seq, &readings, &mut out).unwrap();
        out[..len].to_vec()
    }

    /// A block of `relay` signed with its key from the key directory, PoW solved.
    pub fn block(
        &self,
        relay: u32,
        height: u64,
        prev: Hash,
        difficulty: u8,
        frames: &[Vec<u8>],
    ) -> (Vec<u8>, Hash) {
        let key = self.keys.relay_signing_key(relay).unwrap();
        build_block(
            &key,
            relay,
            height,
            prev,
            difficulty,
            self.t0 + height * 1000,
            frames,
        )
    }

    /// The site's broker: a private Mosquitto with mutual TLS (client
    /// certificates from the site CA required).
    pub fn broker(&self) -> gridpow_testkit::Mosquitto {
        gridpow_testkit::Mosquitto::start(
            &self.keys,
            &gridpow_testkit::MosquittoOptions {
                require_certificate: true,
                ..gridpow_testkit::MosquittoOptions::default()
            },
        )
        .unwrap()
    }

    /// The grid server's least-privilege bundle (no relay private keys), exported afresh.
    pub fn server_bundle(&self) -> KeyDir {
        let bundle = KeyDir::new(self.dir.path().join("server-bundle"));
        self.keys.export_server_bundle("server-1", &bundle).unwrap();
        bundle
    }

    pub fn config(&self, mqtt_port: u16) -> ServerConfig {
        ServerConfig {
            keys_dir: self.server_bundle().root().to_path_buf(),
            db: self.db_path().display().to_string(),
            server_id: 1,
            min_difficulty: 8,
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: mqtt_port,
                ..MqttConfig::default()
            },
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                tokens_file: Some(self.tokens_path()),
                ..HttpConfig::default()
            },
            ..ServerConfig::default()
        }
    }
}

/// Builds and signs a block over `frames` with `key`.
pub fn build_block(
    key: &ed25519_dalek::SigningKey,
    relay: u32,
    height: u64,
    prev: Hash,
    difficulty: u8,
    time_ms: u64,
    frames: &[Vec<u8>],
) -> (Vec<u8>, Hash) {
    let mut buf = vec![0u8; 1 << 16];
    let mut b = BlockBuilder::new(&mut buf).unwrap();
    for f in frames {
        b.push_leaf(&RustCrypto, f).unwrap();
    }
    let mut header: BlockHeaderRepr =
        b.header(&RustCrypto, relay, height, prev, time_ms, difficulty);
    solve_blocking(&mut header);
    let len = b.finish(&header, key).unwrap();
    buf.truncate(len);
    (buf, header.hash(&RustCrypto))
}

/// What the relay-side client hears.
#[derive(Debug)]
pub enum Heard {
    SubAck,
    Receipt(Vec<u8>),
}

/// A relay-side MQTT 5 client over TLS with relay `relay`'s client certificate,
/// subscribed to its receipts.
pub async fn relay_client(
    keys: &KeyDir,
    port: u16,
    relay: u32,
) -> (AsyncClient, mpsc::UnboundedReceiver<Heard>) {
    let id = keys.tls_files(&format!("relay-{relay}"));
    let tls = gridpow_common::tls::client_config(&keys.ca_cert_path(), Some((&id.cert, &id.key)))
        .unwrap();
    let mut o = MqttOptions::new(format!("test-relay-{relay}"), "127.0.0.1", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(8 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 256);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Heard::SubAck);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Heard::Receipt(p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => {
                    if tx.is_closed() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    client
        .subscribe(topics::receipts(relay), QoS::AtLeastOnce)
        .await
        .unwrap();
    (client, rx)
}

/// Publishes `payload` as relay `relay`'s block, QoS 1.
pub async fn publish(client: &AsyncClient, relay: u32, payload: &[u8]) {
    client
        .publish(
            topics::blocks(relay),
            QoS::AtLeastOnce,
            false,
            payload.to_vec(),
        )
        .await
        .unwrap();
}

/// Waits until `f` is true, polling every 50 ms, at most `secs` seconds.
pub async fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A minimal HTTP/1.1 GET with `Authorization: Bearer <token>`: status and body.
pub async fn http_get(addr: SocketAddr, token: &str, path: &str) -> (u16, String) {
    let (status, _, body) =
        http_request(addr, path, &[("Authorization", &format!("Bearer {token}"))]).await;
    (status, body)
}

/// A minimal HTTP/1.1 GET with `headers` (a `Host` among them replaces the
/// default, the address): status, head (lower case) and body.
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    http_method(addr, "GET", path, headers).await
}

/// [`http_request`] with another method (no body).
pub async fn http_method(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_ascii_lowercase(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Parses JSON or panics with the text.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
