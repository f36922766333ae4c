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
}
