//! The broker configuration gridpow ships (docs/deploy/mosquitto.conf with the
//! ACL from `KeyDir::mosquitto_acl`) refuses a plaintext client, a client
//! certificate from another CA, a client without a certificate, a relay
//! publishing to another relay's topic, a certificate taking over another
//! client's id, and a publish larger than the largest block.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gridpow_keys::{InitOptions, KeyDir};
use gridpow_testkit::Mosquitto;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

fn shipped_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/mosquitto.conf")
}

fn options(id: &str, port: u16, transport: Option<Transport>) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some(t) = transport {
        o.set_transport(t);
    }
    o
}

fn tls(ca: &KeyDir, identity: Option<(&KeyDir, &str)>) -> Transport {
    let files = identity.map(|(kd, name)| kd.tls_files(name));
    let cfg = gridpow_common::tls::client_config(
        &ca.ca_cert_path(),
        files.as_ref().map(|f| (f.cert.as_path(), f.key.as_path())),
    )
    .unwrap();
    Transport::tls_with_config(TlsConfiguration::Rustls(cfg))
}

/// Polls until the broker accepts the connection (`Ok`) or refuses it (`Err`).
async fn connack(ev: &mut EventLoop) -> Result<(), String> {
    let wait = async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    return if a.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", a.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_mosquitto_config_refuses_plaintext_foreign_ca_anonymous_and_cross_relay_publishing(
) {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions {
        relay_ids: vec![1, 2],
        ..InitOptions::default()
    })
    .unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, keys.mosquitto_acl().unwrap()).unwrap();
    let broker = Mosquitto::start_from_config(&keys, &shipped_config(), &acl).unwrap();
    let port = broker.port;

    // Plaintext MQTT to the only (TLS) listener.
    let (_c, mut ev) = AsyncClient::new(options("plain", port, None), 10);
    assert!(connack(&mut ev).await.is_err(), "plaintext client accepted");

    // A certificate from another site's CA.
    let other = KeyDir::new(dir.path().join("other"));
    other.init(&InitOptions::default()).unwrap();
    let (_c, mut ev) = AsyncClient::new(
        options("relay-1", port, Some(tls(&keys, Some((&other, "relay-1"))))),
        10,
    );
    assert!(
        connack(&mut ev).await.is_err(),
        "client with a foreign CA's certificate accepted"
    );

    // TLS without a client certificate.
    let (_c, mut ev) = AsyncClient::new(options("anon", port, Some(tls(&keys, None))), 10);
    assert!(
        connack(&mut ev).await.is_err(),
        "client without a certificate accepted"
    );

    // The server subscribes to every relay's blocks.
    let (server, mut sev) = AsyncClient::new(
        options(
            "server-1",
            port,
            Some(tls(&keys, Some((&keys, "server-1")))),
        ),
        10,
    );
    connack(&mut sev).await.expect("server-1 connects");
    server
        .subscribe("gridpow/v1/relays/+/blocks", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = sev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let relay = |name: &'static str| {
        let (c, mut ev) = AsyncClient::new(
            options(name, port, Some(tls(&keys, Some((&keys, name))))),
            10,
        );
        tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        c
    };
    let relay2 = relay("relay-2");
    let relay1 = relay("relay-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay2
        .publish(
            "gridpow/v1/relays/2/blocks",
            QoS::AtLeastOnce,
            false,
            b"relay 2's own".to_vec(),
        )
        .await
        .unwrap();
    relay1
        .publish(
            "gridpow/v1/relays/1/blocks",
            QoS::AtLeastOnce,
            false,
            b"relay 1's own".to_vec(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Last: Mosquitto 2.0 answers a denied MQTT 3.1.1 publish with an MQTT 5 reason
    // code, which ends relay 2's connection.
    relay2
        .publish(
            "gridpow/v1/relays/1/blocks",
            QoS::AtLeastOnce,
            false,
            b"forged by relay 2".to_vec(),
        )
        .await
        .unwrap();

    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
        got.push(m);
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "gridpow/v1/relays/1/blocks".to_string(),
                b"relay 1's own".to_vec()
            ),
            (
                "gridpow/v1/relays/2/blocks".to_string(),
                b"relay 2's own".to_vec()
            ),
        ],
        "the ACL must drop relay 2's publish to relay 1's topic\n{}",
        broker.log()
    );
}

/// A site with relays 1 and 2 and the shipped broker configuration.
fn shipped_broker(dir: &Path) -> (KeyDir, Mosquitto) {
    let keys = KeyDir::new(dir.join("keys"));
    keys.init(&InitOptions {
        relay_ids: vec![1, 2],
        ..InitOptions::default()
    })
    .unwrap();
    let acl = dir.join("acl");
    std::fs::write(&acl, keys.mosquitto_acl().unwrap()).unwrap();
    let broker = Mosquitto::start_from_config(&keys, &shipped_config(), &acl).unwrap();
    (keys, broker)
}

/// A connected client whose event loop runs in a task; counts how often its
/// connection ended and forwards what it receives.
struct Watched {
    client: AsyncClient,
    drops: Arc<AtomicU64>,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, usize)>,
}

async fn watched(keys: &KeyDir, port: u16, client_id: &str, cert: &str) -> Watched {
    let mut o = options(client_id, port, Some(tls(keys, Some((keys, cert)))));
    o.set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut ev) = AsyncClient::new(o, 10);
    connack(&mut ev)
        .await
        .unwrap_or_else(|e| panic!("{cert} as {client_id}: {e}"));
    let drops = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let d = drops.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.len()));
                }
                Ok(_) => {}
                Err(_) => {
                    d.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Watched { client, drops, rx }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cannot_take_over_another_clients_id() {
    let dir = tempfile::tempdir().unwrap();
    let (keys, broker) = shipped_broker(dir.path());
    let port = broker.port;
    let mut server = watched(&keys, port, "gridpow-server-1", "server-1").await;
    server
        .client
        .subscribe("gridpow/v1/relays/+/blocks", QoS::AtLeastOnce)
        .await
        .unwrap();
    let relay1 = watched(&keys, port, "gridpow-relay-1", "relay-1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Relay 2's certificate asks for the genuine clients' ids (as configured
    // and as their certificates name them), repeatedly.
    for _ in 0..3 {
        for id in ["gridpow-relay-1", "relay-1", "gridpow-server-1", "server-1"] {
            let mut o = options(id, port, Some(tls(&keys, Some((&keys, "relay-2")))));
            o.set_clean_session(false);
            let (_c, mut ev) = AsyncClient::new(o, 10);
            // Accepted or not, it must not displace anyone.
            let _ = connack(&mut ev).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay1
        .client
        .publish(
            "gridpow/v1/relays/1/blocks",
            QoS::AtLeastOnce,
            false,
            b"still relay 1".to_vec(),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), server.rx.recv()).await;
    assert_eq!(
        (
            relay1.drops.load(Ordering::Relaxed),
            server.drops.load(Ordering::Relaxed)
        ),
        (0, 0),
        "a genuine client was disconnected by a hijacker\n{}",
        broker.log()
    );
    assert_eq!(
        got.ok().flatten(),
        Some(("gridpow/v1/relays/1/blocks".to_string(), 13)),
        "relay 1's session must keep working\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_block_passes_the_broker_and_a_larger_packet_is_refused() {
    // HEADER_LEN + SIGNATURE_LEN + MAX_LEAVES x (LEAF_PREFIX_LEN + the largest uplink frame).
    const LARGEST_BLOCK: usize = 164 + 65_535 * (2 + 244);
    const MAX_PACKET_SIZE: usize = 16_122_880;
    let conf = std::fs::read_to_string(shipped_config()).unwrap();
    assert!(
        conf.lines()
            .any(|l| l.trim() == format!("max_packet_size {MAX_PACKET_SIZE}")),
        "the shipped max_packet_size changed; update this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let (keys, broker) = shipped_broker(dir.path());
    let port = broker.port;
    let mut server = watched(&keys, port, "gridpow-server-1", "server-1").await;
    server
        .client
        .subscribe("gridpow/v1/relays/+/blocks", QoS::AtLeastOnce)
        .await
        .unwrap();
    let relay1 = watched(&keys, port, "gridpow-relay-1", "relay-1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let topic = "gridpow/v1/relays/1/blocks";
    relay1
        .client
        .publish(topic, QoS::AtLeastOnce, false, vec![0xb1; LARGEST_BLOCK])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), server.rx.recv()).await;
    assert_eq!(
        got.ok().flatten(),
        Some((topic.to_string(), LARGEST_BLOCK)),
        "the largest block must pass\n{}",
        broker.log()
    );
    assert_eq!(relay1.drops.load(Ordering::Relaxed), 0);

    // A packet over the limit: Mosquitto drops it and disconnects the sender.
    relay1
        .client
        .publish(topic, QoS::AtLeastOnce, false, vec![0xb2; MAX_PACKET_SIZE])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), server.rx.recv()).await;
    assert!(
        got.is_err(),
        "a publish over max_packet_size was delivered: {got:?}"
    );
    assert!(
        relay1.drops.load(Ordering::Relaxed) >= 1,
        "the broker must disconnect a client sending an oversized packet\n{}",
        broker.log()
    );
}
