//! Listen addresses given as `IP:port` or `host:port`.
//!
//! An operator types `localhost:8080` as readily as `127.0.0.1:8080`; a
//! socket needs an IP, so a host name is resolved once, at start, and a name
//! that does not resolve is an error naming it rather than a later bind failure.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenAddrError {
    /// No `:port` (or an unparsable one).
    #[error(
        "{0:?} is not HOST:PORT (e.g. 127.0.0.1:8080 or localhost:8080; port 0 picks a free one)"
    )]
    NotHostPort(String),
    /// The host name did not resolve.
    #[error("{addr:?}: host {host:?} does not resolve ({source}); use an IP address or a name this machine resolves")]
    Unresolved {
        /// The address as given.
        addr: String,
        /// Its host part.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The host name resolved to nothing.
    #[error("{addr:?}: host {host:?} resolves to no address")]
    NoAddress {
        /// The address as given.
        addr: String,
        /// Its host part.
        host: String,
    },
}

/// A TCP listen address that another process holds (preflight).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({setting}): {source}; stop the process that holds it or choose another address")]
pub struct PortTaken {
    /// The address.
    pub addr: SocketAddr,
    /// The setting or flag that names it, e.g. `[http] listen or --http`.
    pub setting: String,
    /// The OS error (address in use, or not an address of this host).
    #[source]
    pub source: std::io::Error,
}

/// Whether something accepts TCP connections on `addr` within `timeout`
/// (a broker or server just started on its own thread or process).
pub fn wait_listening(addr: SocketAddr, timeout: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Checks at start that TCP `addr` can be listened on (bound and released
/// at once; port 0 always can), so a taken port fails in one line naming
/// it and its `setting` before any other work.
pub fn check_tcp_free(addr: SocketAddr, setting: &str) -> Result<(), PortTaken> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| PortTaken {
            addr,
            setting: setting.to_string(),
            source,
        })
}

/// `IP:port` as is (`[::1]:8080` for IPv6), or `host:port` resolved now.
/// A name with both IPv4 and IPv6 addresses (such as `localhost`) listens on
/// its first IPv4 one: what `127.0.0.1:…` users expect, and what works on
/// hosts with IPv6 disabled.
pub fn resolve_listen(addr: &str) -> Result<SocketAddr, ListenAddrError> {
    let addr = addr.trim();
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let not_host_port = || ListenAddrError::NotHostPort(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(not_host_port)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(not_host_port());
    }
    let found: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ListenAddrError::Unresolved {
            addr: addr.to_string(),
            host: host.to_string(),
            source,
        })?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| ListenAddrError::NoAddress {
            addr: addr.to_string(),
            host: host.to_string(),
        })
}

/// Serde `deserialize_with` for a listen address field: accepts `host:port`
/// (resolved while the configuration loads) as well as `IP:port`.
pub fn deserialize_listen<'de, D>(d: D) -> Result<SocketAddr, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s = <String as serde::Deserialize>::deserialize(d)?;
    resolve_listen(&s).map_err(serde::de::Error::custom)
}

/// A service's MQTT broker as its configuration names it, for start lines
/// and for errors that say what to do when the broker cannot be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerTarget {
    /// `[mqtt] host`.
    pub host: String,
    /// `[mqtt] port`.
    pub port: u16,
    /// `[mqtt] tls`.
    pub tls: bool,
    /// The MQTT version the service speaks (`3.1.1` for the relay, `5` for the server).
    pub protocol: &'static str,
    /// The service's environment prefix (`GRIDPOW_RELAY`, `GRIDPOW_SERVER`).
    pub env_prefix: &'static str,
}

impl std::fmt::Display for BrokerTarget {
    /// `host:port (TLS, MQTT 5)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = if self.tls { "TLS" } else { "no TLS" };
        write!(
            f,
            "{}:{} ({tls}, MQTT {})",
            self.host, self.port, self.protocol
        )
    }
}

impl BrokerTarget {
    /// One line for a failed connection: the address, TLS or not, the error,
    /// the settings to correct and what to check for this kind of error.
    pub fn unreachable(&self, error: &str) -> String {
        let lower = error.to_ascii_lowercase();
        let check = if lower.contains("refused") {
            "nothing listens there: start the broker (`gridpow broker`, or Mosquitto) or correct the address".to_string()
        } else if lower.contains("certificate")
            || lower.contains("handshake")
            || lower.contains("alert")
        {
            format!(
                "the TLS handshake failed: the broker's certificate must come from the CA in keys_dir (or [mqtt] ca), and its name must match `{}`",
                self.host
            )
        } else if lower.contains("lookup") || lower.contains("resolve") || lower.contains("name") {
            format!("`{}` does not resolve: correct [mqtt] host", self.host)
        } else {
            format!(
                "check that the broker runs, speaks MQTT {} on this port{}, and that [mqtt] tls matches its listener",
                self.protocol,
                if self.protocol == "3.1.1" {
                    " (`gridpow broker`: its --listen-v311 port)"
                } else {
                    ""
                }
            )
        };
        format!(
            "cannot connect to the MQTT broker at {self}: {error}; {check}. Settings: [mqtt] host, port, tls ({p}__MQTT__HOST, {p}__MQTT__PORT, {p}__MQTT__TLS). Retrying.",
            p = self.env_prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_parse_as_is_and_localhost_resolves_to_ipv4_loopback() {
        assert_eq!(
            resolve_listen("127.0.0.1:8080").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(
            resolve_listen("[::1]:0").ok(),
            Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)))
        );
        let a = resolve_listen("localhost:8080").map_err(|e| e.to_string());
        assert_eq!(a, Ok(SocketAddr::from(([127, 0, 0, 1], 8080))));
    }

    #[test]
    fn a_name_that_does_not_resolve_or_no_port_is_a_clear_error() {
        // `.invalid` never resolves (RFC 6761).
        let e = resolve_listen("no-such-host.invalid:8080")
            .map(|_| ())
            .map_err(|e| e.to_string());
        let e = e.err().unwrap_or_default();
        assert!(
            e.contains("no-such-host.invalid") && e.contains("does not resolve"),
            "{e}"
        );
        for bad in [
            "nowhere",
            "localhost",
            "localhost:http",
            ":8080",
            "localhost:70000",
        ] {
            let e = resolve_listen(bad).map(|_| ()).map_err(|e| e.to_string());
            let e = e.err().unwrap_or_default();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    fn relay_target() -> BrokerTarget {
        BrokerTarget {
            host: "localhost".into(),
            port: 8883,
            tls: true,
            protocol: "3.1.1",
            env_prefix: "GRIDPOW_RELAY",
        }
    }

    #[test]
    fn a_refused_broker_connection_names_address_tls_settings_and_the_fix() {
        let m = relay_target().unreachable("I/O: Connection refused (os error 111)");
        assert!(m.contains("localhost:8883 (TLS, MQTT 3.1.1)"), "{m}");
        assert!(m.contains("Connection refused"), "{m}");
        assert!(m.contains("nothing listens there"), "{m}");
        assert!(m.contains("[mqtt] host, port, tls"), "{m}");
        assert!(m.contains("GRIDPOW_RELAY__MQTT__PORT"), "{m}");
    }

    #[test]
    fn a_failed_tls_handshake_points_at_the_ca_and_the_host_name() {
        let t = BrokerTarget {
            tls: false,
            protocol: "5",
            env_prefix: "GRIDPOW_SERVER",
            ..relay_target()
        };
        assert_eq!(t.to_string(), "localhost:8883 (no TLS, MQTT 5)");
        let m = relay_target().unreachable("TLS: invalid peer certificate: UnknownIssuer");
        assert!(
            m.contains("TLS handshake failed") && m.contains("`localhost`"),
            "{m}"
        );
        let m = relay_target().unreachable("connection closed by peer");
        assert!(m.contains("--listen-v311"), "{m}");
        let m = relay_target()
            .unreachable("IO: peer closed connection without sending TLS close_notify");
        assert!(
            !m.contains("handshake") && m.contains("speaks MQTT 3.1.1"),
            "{m}"
        );
    }

    #[test]
    fn a_taken_port_is_refused_naming_the_address_and_the_setting() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = check_tcp_free(addr, "[http] listen or --http")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "cannot listen on {addr} ([http] listen or --http): "
            )),
            "{e}"
        );
        drop(held);
        check_tcp_free(addr, "[http] listen").unwrap();
        check_tcp_free(SocketAddr::from(([127, 0, 0, 1], 0)), "x").unwrap();
    }
}
