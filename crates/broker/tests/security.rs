//! The broker configuration gridpow ships (docs/deploy/mosquitto.conf with the
//! ACL from `KeyDir::mosquitto_acl`) refuses a plaintext client, a client
//! certificate from another CA, a client without a certificate, and a relay
//! publishing to another relay's topic.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::time::Duration;

use gridpow_broker::Mosquitto;
use gridpow_common::keys::{InitOptions, KeyDir};
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
