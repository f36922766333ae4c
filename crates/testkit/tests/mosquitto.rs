//! A private Mosquitto starts from a fresh key directory and comes back on
//! the same port after a restart.

use gridpow_keys::{InitOptions, KeyDir};
use gridpow_testkit::{Mosquitto, MosquittoOptions};

#[test]
fn private_mosquitto_listens_with_tls_and_restarts_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    keys.init(&InitOptions::default()).unwrap();
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
