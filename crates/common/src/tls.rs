//! rustls client settings from the key directory's PEM files (ring provider).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate is expired or not yet valid (preflight).
    #[error("{path}: certificate valid from {not_before} to {not_after}, {problem}; issue a new one from the site CA (`gridpow keys`) and restart")]
    Validity {
        /// The PEM file.
        path: std::path::PathBuf,
        /// Start of the validity period (UTC).
        not_before: String,
        /// End of the validity period (UTC).
        not_after: String,
        /// `expired` or `not valid yet`.
        problem: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring-based crypto provider all gridpow TLS uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads all certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            message: "no certificate in file".into(),
        });
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A client configuration trusting only `ca` and, if given, presenting a client
/// certificate (mutual TLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// How long before its end a certificate's coming expiry is warned about at start.
pub const EXPIRY_WARNING_S: i64 = EXPIRY_WARNING_DAYS * 24 * 3600;

/// [`EXPIRY_WARNING_S`] in whole days, for figures counted in days (a
/// relay's `tls_expiry_days`, the metrics, the dashboard's warning).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// A certificate usable now (see [`check_validity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertValidity {
    /// Start of the validity period, Unix seconds.
    pub not_before: i64,
    /// End of the validity period, Unix seconds.
    pub not_after: i64,
    /// The end as a UTC date for messages.
    pub not_after_text: String,
}

impl CertValidity {
    /// Whole days left at `now_s` (Unix seconds).
    pub fn days_left(&self, now_s: i64) -> i64 {
        (self.not_after - now_s) / 86_400
    }

    /// Whether it ends within `within_s` of `now_s`.
    pub fn expires_within(&self, now_s: i64, within_s: i64) -> bool {
        self.not_after - now_s < within_s
    }
}

/// Checks the validity period of the first certificate in the PEM file
/// `path` at `now_s` (Unix seconds): an expired or not yet valid certificate
/// is an error naming the file and both dates; otherwise its period, so the
/// caller can warn when it ends soon ([`EXPIRY_WARNING_S`]).
pub fn check_validity(path: &Path, now_s: i64) -> Result<CertValidity, TlsError> {
    let first = load_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::File {
            path: path.to_path_buf(),
            message: "no certificate in file".into(),
        })?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(first.as_ref()).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: format!("not an X.509 certificate: {e}"),
        })?;
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    let problem = if now_s < not_before {
        Some("not valid yet")
    } else if now_s > not_after {
        Some("expired")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(TlsError::Validity {
            path: path.to_path_buf(),
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
            problem,
        });
    }
    Ok(CertValidity {
        not_before,
        not_after,
        not_after_text: v.not_after.to_string(),
    })
}

/// [`check_validity`] for each file at the current time, logging a warning
/// for each certificate that ends within [`EXPIRY_WARNING_S`]; returns
/// those warnings, one line each.
pub fn preflight_certificates(paths: &[&Path]) -> Result<Vec<String>, TlsError> {
    let now_s = i64::try_from(crate::wall_ms() / 1000).unwrap_or(i64::MAX);
    let mut warnings = Vec::new();
    for path in paths {
        let v = check_validity(path, now_s)?;
        if v.expires_within(now_s, EXPIRY_WARNING_S) {
            let line = format!(
                "{}: certificate expires on {} ({} days left); issue a new one from the site CA (`gridpow keys`) before then",
                path.display(),
                v.not_after_text,
                v.days_left(now_s)
            );
            tracing::warn!("{line}");
            warnings.push(line);
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid from `from` to `to` (years, 1 January), as PEM in `dir`.
    fn cert_valid(dir: &Path, from: i32, to: i32) -> std::path::PathBuf {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{from}-{to}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        path
    }

    const Y2030: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z

    #[test]
    fn an_expired_certificate_is_refused_naming_the_file_and_both_dates() {
        let dir = tempfile::tempdir().unwrap();
        let path = cert_valid(dir.path(), 2020, 2025);
        let e = check_validity(&path, Y2030).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(e.contains("expired"), "{e}");
        assert!(e.contains("2020") && e.contains("2025"), "{e}");
    }

    #[test]
    fn a_certificate_not_valid_yet_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = cert_valid(dir.path(), 2031, 2040);
        let e = check_validity(&path, Y2030).unwrap_err().to_string();
        assert!(e.contains("not valid yet") && e.contains("2031"), "{e}");
    }

    #[test]
    fn a_certificate_ending_within_30_days_is_valid_but_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = cert_valid(dir.path(), 2020, 2030);
        let ten_days_before = Y2030 - 10 * 86_400;
        let v = check_validity(&path, ten_days_before).unwrap();
        assert_eq!(v.not_after, Y2030);
        assert_eq!(v.days_left(ten_days_before), 10);
        assert!(v.expires_within(ten_days_before, EXPIRY_WARNING_S));
        let a_year_before = Y2030 - 365 * 86_400;
        assert!(!check_validity(&path, a_year_before)
            .unwrap()
            .expires_within(a_year_before, EXPIRY_WARNING_S));
    }
}
