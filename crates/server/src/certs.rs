//! The server's TLS material while it runs: the MQTT client identity and CA,
//! and the HTTPS certificate, reloaded on [`crate::ServerHandle::reload_tls`]
//! (SIGHUP) and when their files change (`gridpow keys renew`), without a
//! restart. The MQTT task reconnects with the new identity; HTTPS hands the
//! new certificate to new connections while open ones go on. Material that
//! is unusable is refused, logged naming the file, and the old one kept.
//! The certificates in use feed `gridpow_tls_cert_expiry_days` and the
//! dashboard.

use std::path::Path;
use std::sync::{Arc, RwLock};

use gridpow_common::tls::{load_certs, load_key, provider, TlsError};
use gridpow_common::tls_reload::{
    self, CertsInUse, MqttTls, ReloadLines, ReloadReason, ReloadRecord, TlsWatch, WatchedCert,
};
use serde::Serialize;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::metrics::Shared;

/// A certificate the server uses, as `/api/v1/stats` and the dashboard show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CertReport {
    /// `mqtt_ca`, `mqtt_client` or `https`.
    pub role: String,
    /// Its PEM file.
    pub file: String,
    /// End of its validity, Unix seconds.
    pub not_after: i64,
    /// Whole days left.
    pub days_left: i64,
    /// It ends within 30 days.
    pub ends_soon: bool,
}

/// The server's certificates in use, by what uses them.
#[derive(Debug, Default)]
pub struct ServerCerts {
    /// The MQTT connection's CA and client certificate.
    pub mqtt: CertsInUse,
    /// The HTTPS listener's certificate.
    pub https: CertsInUse,
}

impl ServerCerts {
    /// All of them, at `now_s`.
    pub fn report(&self, now_s: i64) -> Vec<CertReport> {
        self.mqtt
            .get()
            .into_iter()
            .chain(self.https.get())
            .map(|c| CertReport {
                role: c.role.to_string(),
                file: c.file.display().to_string(),
                not_after: c.not_after,
                days_left: c.days_left(now_s),
                ends_soon: c.ends_soon(now_s),
            })
            .collect()
    }
}

/// Where a reload of `in_use` (the MQTT or the HTTPS certificates) is kept:
/// both count in the server's one pair of reload counters.
fn record<'a>(shared: &'a Shared, in_use: &'a CertsInUse) -> ReloadRecord<'a> {
    ReloadRecord {
        in_use,
        reloads: &shared.metrics.tls_reloads,
        failures: &shared.metrics.tls_reload_failures,
    }
}

/// What the MQTT reloads log.
const MQTT_LINES: ReloadLines = ReloadLines {
    what: "server MQTT",
    reloaded: "MQTT TLS material reloaded; reconnecting to the broker with it.",
    refused: "MQTT TLS reload refused; keeping the certificates in use.",
};

/// Reloads the MQTT material into `eventloop` if usable (returns whether it
/// did): it drops its connection and connects with the new transport at its
/// next poll. Messages
/// received but not yet acknowledged stay unacknowledged (their
/// acknowledgements belong to the old connection's generation and are
/// skipped); the broker redelivers them and the store keeps each reading once.
pub(crate) fn reload_mqtt(
    eventloop: &mut rumqttc::v5::EventLoop,
    tls: &mut MqttTls,
    why: ReloadReason,
    shared: &Shared,
) -> bool {
    tls.reload(
        why,
        &MQTT_LINES,
        record(shared, &shared.certs.mqtt),
        |transport| {
            eventloop.options.set_transport(transport);
            eventloop.clean();
            // Acks of messages from the dropped connection must not go out
            // on the new one (its packet ids mean other messages): they are
            // skipped from here on, and the broker redelivers.
            shared
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    )
}

/// The HTTPS certificate, swapped whole on reload; each handshake takes the
/// one current then.
#[derive(Debug)]
pub(crate) struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl SwappableCert {
    fn get(&self) -> Arc<CertifiedKey> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, k: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut g) => *g = k,
            Err(p) => *p.into_inner() = k,
        }
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// `cert` (PEM chain) and `key` (PEM) as rustls serves them; a key that
/// does not match the certificate is refused, naming the key file.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let ck =
        CertifiedKey::from_der(load_certs(cert)?, load_key(key)?, &provider()).map_err(|e| {
            TlsError::File {
                path: key.to_path_buf(),
                message: format!("does not fit {}: {e}", cert.display()),
            }
        })?;
    Ok(Arc::new(ck))
}

/// What the HTTPS reloads log.
const HTTPS_LINES: ReloadLines = ReloadLines {
    what: "server HTTPS",
    reloaded: "HTTPS certificate reloaded; new connections get it.",
    refused: "HTTPS certificate reload refused; keeping the one in use.",
};

/// The HTTPS certificate and its files.
pub(crate) struct HttpsTls {
    pub resolver: Arc<SwappableCert>,
    watch: TlsWatch,
}

impl HttpsTls {
    /// Loads `cert` and `key` for the listener.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let resolver = Arc::new(SwappableCert(RwLock::new(certified_key(cert, key)?)));
        let watch = TlsWatch::new(vec![WatchedCert {
            role: "https",
            cert: cert.to_path_buf(),
            key: Some(key.to_path_buf()),
        }]);
        Ok(HttpsTls { resolver, watch })
    }

    fn reload(&mut self, why: ReloadReason, shared: &Shared) {
        let resolver = &self.resolver;
        self.watch.reload(
            why,
            &HTTPS_LINES,
            record(shared, &shared.certs.https),
            |certs| {
                let c = &certs[0];
                let key = c.key.as_deref().unwrap_or(&c.cert);
                certified_key(&c.cert, key)
            },
            |ck| resolver.set(ck),
        );
    }
}

/// The rustls configuration of the listener: HTTP/1.1, the swappable certificate.
pub(crate) fn https_acceptor(
    resolver: Arc<SwappableCert>,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Reloads the HTTPS certificate when asked (the counter in `asks` moves) or
/// when its files change, until `asks` closes.
pub(crate) async fn https_reload_task(
    mut https: HttpsTls,
    mut asks: watch::Receiver<u64>,
    shared: Arc<Shared>,
) {
    https.watch.record_in_use(&shared.certs.https);
    let mut check = tls_reload::reload_checks();
    loop {
        let asked = tokio::select! {
            changed = asks.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = check.tick() => false,
        };
        if let Some(why) = https.watch.reload_due(asked) {
            https.reload(why, &shared);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use gridpow_common::tls_reload::CertInUse;

    #[test]
    fn the_expiry_gauge_names_file_and_role_and_flags_30_days() {
        let shared = Shared::default();
        let now = tls_reload::now_s();
        let cert = |role, days: i64| CertInUse {
            role,
            file: format!("/keys/tls/{role}.pem").into(),
            not_after: now + days * 86_400 + 3600,
            not_after_text: String::new(),
        };
        shared
            .certs
            .mqtt
            .set(vec![cert("mqtt_ca", 3000), cert("mqtt_client", 12)]);
        shared.certs.https.set(vec![cert("https", 45)]);
        let text = shared.prometheus();
        for line in [
            "# TYPE gridpow_tls_cert_expiry_days gauge",
            "gridpow_tls_cert_expiry_days{role=\"mqtt_ca\",file=\"/keys/tls/mqtt_ca.pem\"} 3000",
            "gridpow_tls_cert_expiry_days{role=\"mqtt_client\",file=\"/keys/tls/mqtt_client.pem\"} 12",
            "gridpow_tls_cert_expiry_days{role=\"https\",file=\"/keys/tls/https.pem\"} 45",
            "gridpow_tls_certs_expiring_soon 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let r = shared.certs.report(now);
        assert_eq!(r.len(), 3);
        assert!(r[1].ends_soon && !r[0].ends_soon && !r[2].ends_soon);
        assert_eq!(r[1].days_left, 12);
    }
}
