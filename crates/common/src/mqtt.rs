//! The MQTT client settings relay and server share: where the broker is, who
//! we are, keep-alive, and TLS with the site CA and a client certificate.
//! One builder gives the `rumqttc` options for either protocol version (the
//! relay speaks MQTT 3.1.1, the server MQTT 5); each caller then adds what is
//! its own (last will, manual acknowledgements, session expiry, limits).

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};

use crate::tls::TlsError;

/// Shortest keep-alive interval used, seconds, whatever the configuration says.
pub const MIN_KEEP_ALIVE_S: u64 = 5;

/// TLS to the broker: the site CA, and the client certificate presented for
/// mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA the broker's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The certificate and key were configured explicitly: present them, and
    /// fail if they are missing. Otherwise files that are absent mean a
    /// connection without a client certificate (and a warning).
    pub identity_configured: bool,
}

/// One MQTT client's connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// The client id (stable: sessions are persistent).
    pub client_id: String,
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Keep-alive interval, seconds (at least [`MIN_KEEP_ALIVE_S`] is used).
    pub keep_alive_s: u64,
    /// TLS settings; `None` connects in plaintext (tests only).
    pub tls: Option<ClientTls>,
}

impl ClientSettings {
    /// The keep-alive interval used.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s.max(MIN_KEEP_ALIVE_S))
    }

    /// The transport: TLS trusting only the site CA, with the client
    /// certificate when configured or present; `None` for plaintext.
    pub fn transport(&self) -> Result<Option<Transport>, TlsError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let present = tls.cert.exists() && tls.key.exists();
        let identity =
            (tls.identity_configured || present).then_some((tls.cert.as_path(), tls.key.as_path()));
        if identity.is_none() {
            tracing::warn!(cert = %tls.cert.display(), "No client certificate found; connecting without mutual TLS.");
        }
        let config = crate::tls::client_config(&tls.ca, identity)?;
        Ok(Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            config,
        ))))
    }

    /// MQTT 3.1.1 options with these settings.
    pub fn v311(&self) -> Result<rumqttc::MqttOptions, TlsError> {
        let mut o = rumqttc::MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive());
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        Ok(o)
    }

    /// MQTT 5 options with these settings.
    pub fn v5(&self) -> Result<rumqttc::v5::MqttOptions, TlsError> {
        let mut o = rumqttc::v5::MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive());
        if let Some(t) = self.transport()? {
            o.set_transport(t);
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keep_alive_s: u64) -> ClientSettings {
        ClientSettings {
            client_id: "gridpow-test".into(),
            host: "localhost".into(),
            port: 8883,
            keep_alive_s,
            tls: None,
        }
    }

    #[test]
    fn keep_alive_is_clamped_to_five_seconds_in_both_protocol_versions() {
        let s = settings(1);
        assert_eq!(s.keep_alive(), Duration::from_secs(5));
        assert_eq!(s.v311().unwrap().keep_alive(), Duration::from_secs(5));
        assert_eq!(s.v5().unwrap().keep_alive(), Duration::from_secs(5));
        assert_eq!(settings(30).keep_alive(), Duration::from_secs(30));
    }

    #[test]
    fn a_configured_identity_that_is_missing_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(30);
        s.tls = Some(ClientTls {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("c.pem"),
            key: dir.path().join("c.key"),
            identity_configured: true,
        });
        let e = s.v5().unwrap_err().to_string();
        assert!(e.contains("ca.pem") || e.contains("c.pem"), "{e}");
    }
}
