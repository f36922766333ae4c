//! `gridpow keys renew`: the TLS certificates of the key directory issued
//! again by the site CA with a fresh validity period.
//!
//! A renewed certificate keeps its subject (common name), its alternative
//! names (the broker's host names and addresses) and its purpose (client or
//! server authentication), and **keeps its private key**: only `<name>.pem`
//! is rewritten. Why the key stays:
//!
//! * a service that reloads its material while the files change never sees a
//!   certificate paired with a key it does not match (the file is replaced
//!   by one rename, and the key is the one it already holds);
//! * a machine holding a bundle needs only the new `.pem` copied, its 0600
//!   key file is not touched.
//!
//! A key suspected to have leaked is not a renewal: issue a new certificate
//! and key with `gridpow keys issue-client` (or `add-relay`) instead.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gridpow_common::durable::write_file;
use x509_parser::extensions::GeneralName;

use crate::{io_err, KeyDir, KeyError};

/// Validity of a renewed certificate when none is asked for, days.
pub const DEFAULT_RENEW_DAYS: u32 = 365;

/// A renewed certificate backdates its start by this much, seconds, so a
/// peer whose clock lags a little does not find it "not valid yet".
const BACKDATE_S: i64 = 3600;

/// One certificate written by [`KeyDir::renew`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// Its name (`broker`, `relay-1`, `server-1`, …).
    pub name: String,
    /// The certificate file written.
    pub cert: PathBuf,
    /// Its private key, kept as it was.
    pub key: PathBuf,
    /// End of the old certificate's validity, Unix seconds.
    pub old_not_after: i64,
    /// End of the new one's, Unix seconds.
    pub not_after: i64,
    /// The same as a UTC date for messages.
    pub not_after_text: String,
}

/// What a certificate says about itself that a renewal keeps.
struct Subject {
    common_name: String,
    sans: Vec<rcgen::SanType>,
    client: bool,
    not_after: i64,
}

fn bad_cert(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::BadKey {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_subject(path: &Path) -> Result<Subject, KeyError> {
    let text = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|e| bad_cert(path, format!("not a PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad_cert(path, format!("not an X.509 certificate: {e}")))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad_cert(path, "the certificate has no common name"))?
        .to_string();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(rcgen::SanType::DnsName(
                    (*d).try_into()
                        .map_err(|e| bad_cert(path, format!("{e}")))?,
                )),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    let ip = ip.ok_or_else(|| bad_cert(path, "a malformed IP address name"))?;
                    sans.push(rcgen::SanType::IpAddress(ip));
                }
                // gridpow issues no other kinds; one it cannot carry over is an error,
                // not a silently narrower certificate.
                other => {
                    return Err(bad_cert(
                        path,
                        format!("an alternative name gridpow cannot renew: {other}"),
                    ))
                }
            }
        }
    }
    let client = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|e| e.value.client_auth);
    Ok(Subject {
        common_name,
        sans,
        client,
        not_after: cert.validity().not_after.timestamp(),
    })
}

impl KeyDir {
    /// The certificates [`KeyDir::renew`] renews without names: every
    /// `tls/<name>.pem` beside its `<name>.key`, except the CA, sorted.
    pub fn renewable_certs(&self) -> Result<Vec<String>, KeyError> {
        let dir = self.root().join("tls");
        let entries = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let path = entry.path();
            let (Some(stem), Some("pem")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if stem != "ca" && self.tls_files(stem).key.exists() {
                names.push(stem.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Issues the certificates `names` (all of [`KeyDir::renewable_certs`]
    /// when empty) again from the site CA, valid from now (backdated an hour)
    /// for `days` days, keeping each one's subject, names, purpose and
    /// private key. Every name is checked before any file is written: an
    /// unknown name, the CA, or a certificate without its key is an error
    /// listing the names there are.
    pub fn renew(&self, names: &[String], days: u32) -> Result<Vec<Renewed>, KeyError> {
        self.renew_at(names, days, gridpow_common::wall_ms() / 1000)
    }

    /// [`KeyDir::renew`] at `now_s` (Unix seconds).
    pub fn renew_at(
        &self,
        names: &[String],
        days: u32,
        now_s: u64,
    ) -> Result<Vec<Renewed>, KeyError> {
        if days == 0 {
            return Err(KeyError::Invalid("--days must be at least 1".to_string()));
        }
        let known = self.renewable_certs()?;
        let names = if names.is_empty() {
            known.clone()
        } else {
            names.to_vec()
        };
        for name in &names {
            if !known.contains(name) {
                let why = if name == "ca" {
                    "the site CA is not renewed (every certificate chains to it)".to_string()
                } else {
                    format!(
                        "no certificate {name:?} with its key in {}",
                        self.root().join("tls").display()
                    )
                };
                return Err(KeyError::Invalid(format!(
                    "{why}; certificates here: {}",
                    known.join(", ")
                )));
            }
        }
        let issuer = self.site_issuer()?;
        let now = i64::try_from(now_s).unwrap_or(i64::MAX);
        let start = time::OffsetDateTime::from_unix_timestamp(now - BACKDATE_S)
            .map_err(|e| KeyError::Invalid(format!("clock: {e}")))?;
        let end = start + time::Duration::seconds(BACKDATE_S + i64::from(days) * 86_400);
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let files = self.tls_files(&name);
            let subject = read_subject(&files.cert)?;
            let key_pem = std::fs::read_to_string(&files.key).map_err(|e| io_err(&files.key, e))?;
            let key = rcgen::KeyPair::from_pem(&key_pem)
                .map_err(|e| bad_cert(&files.key, e.to_string()))?;
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, subject.common_name);
            params.subject_alt_names = subject.sans;
            params.extended_key_usages = vec![if subject.client {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            }];
            params.not_before = start;
            params.not_after = end;
            // rcgen derives the serial from the public key, which renewal
            // keeps: a random one keeps issuer and serial unique (RFC 5280
            // §4.1.2.2; NSS refuses a reused pair). Positive: top bit clear.
            let mut serial = crate::random_bytes::<16>();
            serial[0] &= 0x7f;
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            let cert = params.signed_by(&key, &issuer)?;
            write_file(&files.cert, cert.pem().as_bytes(), false)
                .map_err(|e| io_err(&files.cert, e))?;
            out.push(Renewed {
                name,
                cert: files.cert,
                key: files.key,
                old_not_after: subject.not_after,
                not_after: end.unix_timestamp(),
                not_after_text: format!(
                    "{} {:02}:{:02}:{:02} UTC",
                    end.date(),
                    end.hour(),
                    end.minute(),
                    end.second()
                ),
            });
        }
        Ok(out)
    }

    /// The site CA as an issuer of certificates.
    fn site_issuer(&self) -> Result<rcgen::Issuer<'static, rcgen::KeyPair>, KeyError> {
        let ca_path = self.ca_cert_path();
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| io_err(&ca_path, e))?;
        let ca_key_path = ca_path.with_file_name("ca.key");
        let ca_key_pem =
            std::fs::read_to_string(&ca_key_path).map_err(|e| io_err(&ca_key_path, e))?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
        Ok(rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::InitOptions;

    const NOW: u64 = 1_900_000_000; // 2030-03-17

    fn keys() -> (tempfile::TempDir, KeyDir) {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&InitOptions {
            relay_ids: vec![1, 2],
            broker_names: vec!["broker.example.net".into()],
            servers: 1,
        })
        .unwrap();
        (dir, kd)
    }

    #[test]
    fn renew_without_names_reissues_every_certificate_but_the_ca_keeping_keys_and_names() {
        let (_d, kd) = keys();
        let ca_before = std::fs::read(kd.ca_cert_path()).unwrap();
        let key_before = std::fs::read(kd.tls_files("relay-1").key).unwrap();
        let renewed = kd.renew_at(&[], 30, NOW).unwrap();
        let names: Vec<&str> = renewed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["broker", "relay-1", "relay-2", "server-1"]);
        for r in &renewed {
            assert_eq!(r.not_after, NOW as i64 + 30 * 86_400);
            // init's certificates run to 4096: the new one ends sooner here.
            assert!(r.old_not_after > r.not_after, "{r:?}");
            let v = gridpow_common::tls::check_validity(&r.cert, NOW as i64).unwrap();
            assert_eq!(v.not_after, r.not_after);
            assert_eq!(v.days_left(NOW as i64), 30);
        }
        assert_eq!(std::fs::read(kd.ca_cert_path()).unwrap(), ca_before);
        assert_eq!(
            std::fs::read(kd.tls_files("relay-1").key).unwrap(),
            key_before
        );
        let broker = read_subject(&kd.broker_tls().cert).unwrap();
        assert_eq!(broker.common_name, "broker");
        assert!(!broker.client);
        assert!(broker.sans.iter().any(
            |s| matches!(s, rcgen::SanType::DnsName(n) if n.as_str() == "broker.example.net")
        ));
        assert!(broker
            .sans
            .iter()
            .any(|s| matches!(s, rcgen::SanType::IpAddress(ip) if ip.to_string() == "127.0.0.1")));
        let relay = read_subject(&kd.tls_files("relay-1").cert).unwrap();
        assert_eq!(relay.common_name, "relay-1");
        assert!(relay.client);
    }

    #[test]
    fn a_renewed_certificate_still_matches_its_key_and_has_a_serial_of_its_own() {
        let (_d, kd) = keys();
        let serial = |path: &std::path::Path| {
            let pem = std::fs::read(path).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            pem.parse_x509().unwrap().raw_serial().to_vec()
        };
        let f = kd.tls_files("server-1");
        let before = serial(&f.cert);
        kd.renew_at(&["server-1".to_string()], 400, NOW).unwrap();
        let first = serial(&f.cert);
        kd.renew_at(&["server-1".to_string()], 400, NOW).unwrap();
        // Same key, so a serial derived from it would repeat (RFC 5280 §4.1.2.2).
        assert!(first != before && serial(&f.cert) != first);
        // rustls checks the chain of a client config's identity lazily; the
        // key must at least load and pair with the certificate.
        gridpow_common::tls::client_config(&kd.ca_cert_path(), Some((&f.cert, &f.key))).unwrap();
        let v = gridpow_common::tls::check_validity(&f.cert, NOW as i64).unwrap();
        assert_eq!(v.days_left(NOW as i64), 400);
    }

    #[test]
    fn unknown_names_and_the_ca_are_refused_before_anything_is_written() {
        let (_d, kd) = keys();
        let before = std::fs::read(kd.tls_files("relay-1").cert).unwrap();
        for bad in ["relay-9", "ca", "../site"] {
            let e = kd
                .renew_at(&["relay-1".to_string(), bad.to_string()], 30, NOW)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("certificates here: broker, relay-1, relay-2, server-1"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(kd.tls_files("relay-1").cert).unwrap(), before);
        assert!(kd
            .renew_at(&[], 0, NOW)
            .unwrap_err()
            .to_string()
            .contains("--days"));
    }
}
