//! `--db postgres://…?sslmode=…` against a private PostgreSQL with `ssl = on`
//! and a certificate from a test CA: verify-full needs the right CA and host
//! name, verify-ca the right CA, require only encryption.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use gridpow_store::postgres::PgConn;
use gridpow_testkit::pg_harness::PgServer;

/// A CA and a certificate it issued for `names`: (CA PEM, cert PEM, key PEM).
fn issue(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "gridpow test database CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Whether TLS is in use on the connection (`pg_stat_ssl`).
fn ssl_in_use(url: &str) -> Result<bool, String> {
    let mut c = PgConn::connect(url).map_err(|e| e.to_string())?;
    let rows = c
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows[0].get::<_, bool>(0))
}

#[test]
fn verify_full_needs_the_right_ca_and_host_name_and_require_encrypts() {
    let pg = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue(&["localhost"]);
    pg.enable_tls(&cert, &key).unwrap();
    let (other_ca, _, _) = issue(&["localhost"]);
    let ca_file = dir.path().join("ca.pem");
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&other_file, other_ca).unwrap();
    let port = pg.port();
    let url = |host: &str, mode: &str, root: Option<&Path>| {
        let mut u = format!("postgres://gridpow@{host}:{port}/postgres?sslmode={mode}");
        if let Some(r) = root {
            u.push_str(&format!("&sslrootcert={}", r.display()));
        }
        u
    };

    assert_eq!(
        ssl_in_use(&url("localhost", "verify-full", Some(&ca_file))),
        Ok(true),
        "the right CA and host name"
    );
    let wrong_ca = ssl_in_use(&url("localhost", "verify-full", Some(&other_file)));
    assert!(
        wrong_ca.as_ref().is_err_and(|e| e.contains("certificate")),
        "a certificate from another CA must be refused: {wrong_ca:?}"
    );
    let wrong_host = ssl_in_use(&url("127.0.0.1", "verify-full", Some(&ca_file)));
    assert!(
        wrong_host.is_err(),
        "a certificate for another host name must be refused: {wrong_host:?}"
    );
    // verify-ca checks the chain, not the name.
    assert_eq!(
        ssl_in_use(&url("127.0.0.1", "verify-ca", Some(&ca_file))),
        Ok(true)
    );
    assert!(ssl_in_use(&url("localhost", "verify-ca", Some(&other_file))).is_err());
    // require alone encrypts without checking (libpq's meaning); with a root CA it checks the chain.
    assert_eq!(ssl_in_use(&url("127.0.0.1", "require", None)), Ok(true));
    assert!(ssl_in_use(&url("localhost", "require", Some(&other_file))).is_err());
    // No sslmode: plaintext, as before.
    assert_eq!(
        ssl_in_use(&format!("postgres://gridpow@127.0.0.1:{port}/postgres")),
        Ok(false)
    );
    // Settings that cannot work are refused before connecting.
    for bad in [
        url("localhost", "verify-full", None),
        url("localhost", "verify-everything", Some(&ca_file)),
        format!("postgres://gridpow@localhost:{port}/postgres?sslrootcert=/x.pem"),
    ] {
        assert!(ssl_in_use(&bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn tls_modes_fail_against_a_server_without_tls() {
    let pg = PgServer::start().unwrap();
    let port = pg.port();
    let r = ssl_in_use(&format!(
        "postgres://gridpow@127.0.0.1:{port}/postgres?sslmode=require"
    ));
    assert!(r.is_err(), "sslmode=require fell back to plaintext: {r:?}");
}
