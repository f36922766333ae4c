//! The embedded MQTT broker of `gridpow demo` and `gridpow broker`: rumqttd
//! with TLS from the key directory and bounded memory. (The private
//! Mosquitto instances of the tests are in the dev-only `gridpow-testkit`.)
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use gridpow_common::net::wait_listening;
use gridpow_keys::KeyDir;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A listen address is taken by another process (or not this host's).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error (e.g. address in use).
        #[source]
        source: std::io::Error,
    },
    /// The broker did not accept connections in time.
    #[error("broker on {addr} did not come up within {secs} s")]
    NotReady {
        /// Its address.
        addr: SocketAddr,
        /// How long we waited.
        secs: u64,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

/// Settings of the embedded broker.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Address of the MQTT 5 listener (grid servers, standalone relays);
    /// port 0 picks a free one.
    pub listen: SocketAddr,
    /// Address of the MQTT 3.1.1 listener (`gridpow relay`); `None` picks a
    /// free port on `listen`'s address.
    pub listen_v311: Option<SocketAddr>,
    /// Require client certificates signed by the site CA (mutual TLS).
    pub require_client_cert: bool,
    /// Largest message accepted (blocks can be large).
    pub max_payload: usize,
    /// Memory bound per topic: segment size in bytes × segment count.
    pub segment_bytes: usize,
    /// Number of segments kept per topic.
    pub segment_count: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_v311: None,
            require_client_cert: true,
            max_payload: 4 << 20,
            segment_bytes: 16 << 20,
            segment_count: 4,
        }
    }
}

/// A running embedded rumqttd (it lives until the process exits: rumqttd has no shutdown).
#[derive(Clone, Debug)]
pub struct EmbeddedBroker {
    /// Where it listens (TLS, MQTT 3.1.1 and MQTT 5 on separate ports).
    pub v4_addr: SocketAddr,
    /// The MQTT 5 listener (shared subscriptions).
    pub v5_addr: SocketAddr,
}

/// Starts rumqttd with TLS from the key directory, bounded memory and round-robin
/// shared subscriptions, on a thread of its own.
pub fn start_embedded(
    keys: &KeyDir,
    opts: &EmbeddedOptions,
) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds on its own thread and only logs a failure there, and
    // another process listening on the address would pass the readiness
    // check below: so bind each address here first, which names it when it
    // is taken, and picks the port when it is 0.
    let pick = |addr: SocketAddr| -> Result<SocketAddr, BrokerError> {
        let l = TcpListener::bind(addr).map_err(|source| BrokerError::Listen { addr, source })?;
        l.local_addr().map_err(io("reading the bound port"))
    };
    let v5_addr = pick(opts.listen)?;
    let v4_addr = pick(
        opts.listen_v311
            .unwrap_or_else(|| SocketAddr::new(opts.listen.ip(), 0)),
    )?;
    let tls_files = keys.broker_tls();
    let tls = rumqttd::TlsConfig::Rustls {
        capath: opts
            .require_client_cert
            .then(|| keys.ca_cert_path().to_string_lossy().into_owned()),
        certpath: tls_files.cert.to_string_lossy().into_owned(),
        keypath: tls_files.key.to_string_lossy().into_owned(),
    };
    if !tls.validate_paths() {
        return Err(BrokerError::Io {
            context: format!("broker TLS files under {}", keys.root().display()),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "run `gridpow keys init` first",
            ),
        });
    }
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: opts.max_payload,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr| rumqttd::ServerSettings {
        name: name.to_string(),
        listen,
        tls: Some(tls.clone()),
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: opts.segment_bytes,
            max_segment_count: opts.segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::RoundRobin,
        },
        v4: Some(HashMap::from([(
            "1".to_string(),
            server("gridpow-v4", v4_addr),
        )])),
        v5: Some(HashMap::from([(
            "1".to_string(),
            server("gridpow-v5", v5_addr),
        )])),
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(io("spawning the broker thread"))?;
    for addr in [v4_addr, v5_addr] {
        if !wait_listening(addr, Duration::from_secs(10)) {
            return Err(BrokerError::NotReady { addr, secs: 10 });
        }
    }
    Ok(EmbeddedBroker { v4_addr, v5_addr })
}
