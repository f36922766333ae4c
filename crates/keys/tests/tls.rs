//! The certificates `gridpow keys init` writes load into TLS client
//! configurations and pass the start-time preflight.

use gridpow_common::tls::{client_config, preflight_certificates};
use gridpow_keys::{InitOptions, KeyDir};

#[test]
fn client_config_loads_from_a_fresh_key_directory() {
    let dir = tempfile::tempdir().unwrap();
    let kd = KeyDir::new(dir.path());
    kd.init(&InitOptions::default()).unwrap();
    let id = kd.tls_files("relay-1");
    client_config(&kd.ca_cert_path(), Some((&id.cert, &id.key))).unwrap();
    client_config(&kd.ca_cert_path(), None).unwrap();
    assert!(client_config(&dir.path().join("missing.pem"), None).is_err());
}

#[test]
fn the_certificates_of_a_fresh_key_directory_pass_the_preflight_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let kd = KeyDir::new(dir.path());
    kd.init(&InitOptions::default()).unwrap();
    let broker = kd.broker_tls();
    let warnings = preflight_certificates(&[&kd.ca_cert_path(), &broker.cert]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let e = preflight_certificates(&[&broker.key])
        .unwrap_err()
        .to_string();
    assert!(e.contains("broker.key"), "{e}");
}
