//! The relay's settings and secrets on the host: from the key bundle that
//! `gridpow keys export relay` writes (signing key, hop keys of its meters,
//! the server's public key, CA certificate and TLS identity as PEM), and
//! optionally from a relay provisioning blob (`GPWR`, what an ESP32 relay
//! is flashed with), which then decides everything but the TLS files.

use std::path::{Path, PathBuf};

use gridpow_firmware_logic::provisioning::{
    BlobError, RelayConfig, RelayMeter, RelayMode, MAX_RELAY_METERS,
};
use gridpow_keys::{KeyDir, KeyError, Role};

/// Everything the relay application needs from provisioning.
#[derive(Clone)]
pub struct Provisioned {
    /// Relay settings (standalone mode): id, channel, difficulty, signing
    /// seed, server key, block interval, broker (blob only).
    pub config: RelayConfig,
    /// The meters it accepts, with their hop secrets.
    pub meters: Vec<RelayMeter>,
    /// Site CA certificate, DER.
    pub ca_der: Vec<u8>,
    /// The relay's client certificate, DER.
    pub cert_der: Vec<u8>,
    /// The relay's P-256 private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl core::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never the secrets.
        f.debug_struct("Provisioned")
            .field("relay_id", &self.config.relay_id)
            .field("meters", &self.meters.len())
            .finish_non_exhaustive()
    }
}

/// Why provisioning could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The key bundle is incomplete, malformed, or holds a secret a relay
    /// must not have.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The bundle's TLS files are missing or hold no certificate or key.
    #[error(transparent)]
    Tls(#[from] gridpow_common::tls::TlsError),
    /// The blob is malformed or not a standalone relay's.
    #[error("relay blob {path}: {why}")]
    Blob {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// More meters than a relay holds.
    #[error("{0} meters in the bundle; a standalone relay holds at most {MAX_RELAY_METERS}")]
    TooManyMeters(usize),
}

/// Settings not in a bundle (a blob carries them).
#[derive(Clone, Copy, Debug)]
pub struct BundleSettings {
    /// Radio channel stated in ACKs.
    pub channel: u8,
    /// PoW difficulty.
    pub difficulty: u8,
    /// Seconds a frame waits for more before its block is sealed.
    pub block_interval_s: u32,
}

/// Reads relay `relay_id`'s bundle. Refuses a directory that holds secrets
/// a relay must not have (the site secret, the CA key, other relays' keys).
pub fn from_bundle(
    bundle: &Path,
    relay_id: u32,
    s: BundleSettings,
) -> Result<Provisioned, ProvisionError> {
    let kd = KeyDir::new(bundle);
    kd.check_role(Role::Relay(relay_id))?;
    let (meters, left_out) = kd.relay_hop_entries(MAX_RELAY_METERS)?;
    if meters.len() > MAX_RELAY_METERS {
        return Err(ProvisionError::TooManyMeters(meters.len()));
    }
    if left_out > 0 {
        tracing::warn!(
            left_out,
            "a site-secret rotation is under way and these meters' hop keys under their other \
             key id do not fit: their frames under that key id are refused (flash them with \
             their new keys before giving this relay its new bundle)"
        );
    }

    let mut config = RelayConfig::bridge(relay_id, s.channel);
    config.mode = RelayMode::Standalone;
    config.difficulty = s.difficulty;
    config.block_interval_s = s.block_interval_s;
    config.signing_seed = kd.relay_signing_key(relay_id)?.to_bytes();
    config.server_public_key = kd.server_verifying_key()?.to_bytes();
    config.meter_count = meters.len();
    let (ca_der, cert_der, key_der) = gridpow_keys::relay_tls_der(&kd, relay_id)?;
    Ok(Provisioned {
        config,
        meters,
        ca_der,
        cert_der,
        key_der,
    })
}

/// Reads a standalone relay blob; the TLS files come from `bundle`.
pub fn from_blob(blob_path: &Path, bundle: &Path) -> Result<Provisioned, ProvisionError> {
    let blob = std::fs::read(blob_path).map_err(|source| ProvisionError::Io {
        path: blob_path.to_path_buf(),
        source,
    })?;
    let bad = |why: String| ProvisionError::Blob {
        path: blob_path.to_path_buf(),
        why,
    };
    let config = RelayConfig::decode(&blob).map_err(|e: BlobError| bad(e.to_string()))?;
    if config.mode != RelayMode::Standalone {
        return Err(bad(
            "a bridge-mode blob; the host application runs standalone".into(),
        ));
    }
    let meters = (0..config.meter_count)
        .filter_map(|i| config.meter(&blob, i))
        .collect();
    let kd = KeyDir::new(bundle);
    kd.check_role(Role::Relay(config.relay_id))?;
    // A layout-3 blob carries its TLS material, as the ESP32 reads it; an
    // older blob takes it from the bundle.
    let (ca_der, cert_der, key_der) = match config.tls(&blob) {
        Some(t) => (t.ca_der.to_vec(), t.cert_der.to_vec(), t.key_der.to_vec()),
        None => gridpow_keys::relay_tls_der(&kd, config.relay_id)?,
    };
    Ok(Provisioned {
        config,
        meters,
        ca_der,
        cert_der,
        key_der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_firmware_logic::provisioning::MAX_RELAY_BLOB_LEN;
    use gridpow_keys::InitOptions;

    fn bundle(dir: &Path) -> PathBuf {
        let keys = KeyDir::new(dir.join("keys"));
        keys.init(&InitOptions::default()).unwrap();
        keys.add_meters(&[(1, None), (2, Some([2, 0, 0, 0, 0, 2]))])
            .unwrap();
        let out = dir.join("bundle");
        keys.export_relay_bundle(1, None, &KeyDir::new(&out))
            .unwrap();
        out
    }

    #[test]
    fn a_bundle_and_the_blob_made_from_it_provision_the_same_relay() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let settings = BundleSettings {
            channel: 6,
            difficulty: 14,
            block_interval_s: 5,
        };
        let p = from_bundle(&b, 1, settings).unwrap();
        assert_eq!(p.meters.len(), 2);
        assert_eq!(p.meters[1].mac, Some([2, 0, 0, 0, 0, 2]));
        assert!(!p.ca_der.is_empty() && !p.cert_der.is_empty() && !p.key_der.is_empty());
        let mut blob = vec![0u8; MAX_RELAY_BLOB_LEN];
        let n = p.config.encode_into(&p.meters, &mut blob).unwrap();
        let blob_path = dir.path().join("relay-1.bin");
        std::fs::write(&blob_path, &blob[..n]).unwrap();
        let q = from_blob(&blob_path, &b).unwrap();
        assert_eq!(q.config, p.config);
        assert_eq!(q.meters, p.meters);
        assert_eq!(q.cert_der, p.cert_der);
    }

    #[test]
    fn a_blob_with_tls_material_is_used_as_the_esp32_would_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let settings = BundleSettings {
            channel: 6,
            difficulty: 14,
            block_interval_s: 5,
        };
        let p = from_bundle(&b, 1, settings).unwrap();
        let tls = gridpow_firmware_logic::provisioning::RelayTls {
            ca_der: &p.ca_der,
            cert_der: &p.cert_der,
            key_der: &p.key_der,
        };
        let mut blob = vec![0u8; MAX_RELAY_BLOB_LEN];
        let n = p
            .config
            .encode_with_tls(&p.meters, Some(&tls), &mut blob)
            .unwrap();
        let blob_path = dir.path().join("relay-1.bin");
        std::fs::write(&blob_path, &blob[..n]).unwrap();
        // The bundle's TLS files are gone: only the blob can provide them.
        let files = KeyDir::new(&b).tls_files("relay-1");
        std::fs::remove_file(&files.cert).unwrap();
        std::fs::remove_file(&files.key).unwrap();
        let q = from_blob(&blob_path, &b).unwrap();
        assert_eq!(
            (q.cert_der, q.key_der, q.ca_der),
            (p.cert_der, p.key_der, p.ca_der)
        );
    }

    #[test]
    fn a_directory_with_the_site_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let master = dir.path().join("keys");
        let settings = BundleSettings {
            channel: 1,
            difficulty: 14,
            block_interval_s: 5,
        };
        assert!(matches!(
            from_bundle(&master, 1, settings),
            Err(ProvisionError::Keys(KeyError::ForbiddenSecret { .. }))
        ));
        let bad = dir.path().join("bad.bin");
        std::fs::write(&bad, b"GPWR nonsense").unwrap();
        assert!(matches!(
            from_blob(&bad, &dir.path().join("bundle")),
            Err(ProvisionError::Blob { .. })
        ));
    }
}
