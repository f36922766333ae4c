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

/// Site CA certificate, client certificate, client key: DER.
pub type RelayTlsDer = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Relay `relay_id`'s TLS material as DER, read from its key directory or
/// bundle (`ca.pem`, `tls/relay-<id>.pem` and `.key`): what the standalone
/// relay carries in its blob and what the host application hands to
/// `gridpow-relay-net`. Returns (site CA certificate, client certificate,
/// client key).
pub fn relay_tls_der(keys: &crate::keys::KeyDir, relay_id: u32) -> Result<RelayTlsDer, TlsError> {
    let first = |path: &Path| load_certs(path).map(|c| c.into_iter().next().map(|c| c.to_vec()));
    let files = keys.tls_files(&format!("relay-{relay_id}"));
    let none = |path: &Path| TlsError::File {
        path: path.to_path_buf(),
        message: "no certificate in file".into(),
    };
    let ca = first(&keys.ca_cert_path())?.ok_or_else(|| none(&keys.ca_cert_path()))?;
    let cert = first(&files.cert)?.ok_or_else(|| none(&files.cert))?;
    let key = load_key(&files.key)?.secret_der().to_vec();
    Ok((ca, cert, key))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{InitOptions, KeyDir};

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
}
