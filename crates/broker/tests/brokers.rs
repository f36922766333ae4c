//! The embedded broker starts from a fresh key directory and listens with TLS.

use gridpow_broker::{start_embedded, EmbeddedOptions};
use gridpow_keys::{InitOptions, KeyDir};

#[test]
fn embedded_broker_listens_with_tls_on_two_ports() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    keys.init(&InitOptions::default()).unwrap();
    let b = start_embedded(&keys, &EmbeddedOptions::default()).unwrap();
    assert_ne!(b.v4_addr.port(), b.v5_addr.port());
    assert!(std::net::TcpStream::connect(b.v4_addr).is_ok());
    assert!(std::net::TcpStream::connect(b.v5_addr).is_ok());
}
