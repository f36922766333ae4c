//! Both brokers start from a fresh key directory and accept TLS connections.

use gridpow_broker::{start_embedded, EmbeddedOptions, Mosquitto, MosquittoOptions};
use gridpow_common::keys::{InitOptions, KeyDir};

#[test]
fn embedded_broker_and_private_mosquitto_listen_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    keys.init(&InitOptions::default()).unwrap();
    let b = start_embedded(&keys, &EmbeddedOptions::default()).unwrap();
    assert_ne!(b.v4_addr.port(), b.v5_addr.port());
    let mut m = Mosquitto::start(
        &keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .unwrap();
    let port = m.port;
    m.restart().unwrap();
    assert_eq!(m.port, port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}
