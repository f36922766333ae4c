//! MQTT brokers for gridpow: the embedded rumqttd of `gridpow demo` (TLS,
//! bounded memory) and private Mosquitto instances that tests start in a
//! temporary directory on a free port.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gridpow_common::keys::KeyDir;

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
    /// The broker binary is not installed.
    #[error("`{0}` not found: install it (Debian: apt-get install mosquitto)")]
    Missing(String),
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
    #[error("broker on {addr} did not come up within {secs} s{log}")]
    NotReady {
        /// Its address.
        addr: SocketAddr,
        /// How long we waited.
        secs: u64,
        /// The broker's own log, if any.
        log: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted in tests).
pub fn free_port() -> Result<u16, BrokerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("reading the bound port"))?.port())
}

fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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
            return Err(BrokerError::NotReady {
                addr,
                secs: 10,
                log: String::new(),
            });
        }
    }
    Ok(EmbeddedBroker { v4_addr, v5_addr })
}

/// Settings of a private Mosquitto.
#[derive(Clone, Debug, Default)]
pub struct MosquittoOptions {
    /// Require client certificates (mutual TLS) and use their CN as username.
    pub require_certificate: bool,
    /// ACL file to apply (`acl_file`).
    pub acl_file: Option<PathBuf>,
    /// Keep messages on disk in this directory across restarts.
    pub persistence_dir: Option<PathBuf>,
    /// `max_queued_messages` (0 = unlimited). Mosquitto's default of 1000
    /// silently drops QoS 1 messages to slow subscribers.
    pub max_queued_messages: u32,
    /// Use this port instead of a free one (to restart on the same port).
    pub port: Option<u16>,
}

/// A private Mosquitto process with a TLS-only listener; killed on drop.
pub struct Mosquitto {
    child: Child,
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto with the key directory's broker certificate.
    pub fn start(keys: &KeyDir, opts: &MosquittoOptions) -> Result<Mosquitto, BrokerError> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let tls = keys.broker_tls();
        let mut conf = format!(
            "# Stay the invoking user (only root would switch; our key files are 0600).\nuser root\nper_listener_settings false\nallow_anonymous {anon}\nlog_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n\
             max_queued_messages {maxq}\nmax_inflight_messages 100\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate {req}\nuse_identity_as_username {req}\n",
            anon = !opts.require_certificate,
            log = dir.path().join("mosquitto.log").display(),
            maxq = opts.max_queued_messages,
            ca = keys.ca_cert_path().display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            req = opts.require_certificate,
        );
        if let Some(acl) = &opts.acl_file {
            conf.push_str(&format!("acl_file {}\n", acl.display()));
        }
        if let Some(p) = &opts.persistence_dir {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                p.display()
            ));
        }
        Self::launch(conf, dir, port)
    }

    /// Starts Mosquitto from a production configuration file such as
    /// `docs/deploy/mosquitto.conf`, rewritten only to run privately: its
    /// `/etc/mosquitto/gridpow/` paths point into the key directory and at
    /// `acl`, its listener moves to a free port on 127.0.0.1, persistence to a
    /// temporary directory. Every security setting stays as shipped.
    pub fn start_from_config(
        keys: &KeyDir,
        config: &Path,
        acl: &Path,
    ) -> Result<Mosquitto, BrokerError> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let port = free_port()?;
        let text =
            std::fs::read_to_string(config).map_err(io(format!("reading {}", config.display())))?;
        let tls = keys.broker_tls();
        let mut conf = format!(
            "# Rewritten from {} for a private test instance.\nuser root\nlog_dest file {}\nlog_type all\n",
            config.display(),
            dir.path().join("mosquitto.log").display()
        );
        for line in text.lines() {
            let l = line.trim();
            let rewritten = if l.starts_with("listener ") {
                format!("listener {port} 127.0.0.1")
            } else if l.starts_with("persistence_location ") {
                format!("persistence_location {}/", dir.path().display())
            } else {
                line.replace(
                    "/etc/mosquitto/gridpow/tls/ca.pem",
                    &keys.ca_cert_path().to_string_lossy(),
                )
                .replace(
                    "/etc/mosquitto/gridpow/tls/broker.pem",
                    &tls.cert.to_string_lossy(),
                )
                .replace(
                    "/etc/mosquitto/gridpow/tls/broker.key",
                    &tls.key.to_string_lossy(),
                )
                .replace("/etc/mosquitto/gridpow/acl", &acl.to_string_lossy())
            };
            conf.push_str(&rewritten);
            conf.push('\n');
        }
        Self::launch(conf, dir, port)
    }

    fn launch(conf: String, dir: tempfile::TempDir, port: u16) -> Result<Mosquitto, BrokerError> {
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(io("writing mosquitto.conf"))?;
        let child = spawn_mosquitto(&conf_path, dir.path())?;
        let mut m = Mosquitto {
            child,
            port,
            dir,
            conf: conf_path,
        };
        m.wait_ready()?;
        Ok(m)
    }

    fn wait_ready(&mut self) -> Result<(), BrokerError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if wait_listening(addr, Duration::from_secs(10)) {
            return Ok(());
        }
        Err(BrokerError::NotReady {
            addr,
            secs: 10,
            log: format!(": {}", self.log()),
        })
    }

    /// The broker's log so far (its log file and what it printed before opening it).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("mosquitto.log"))
    }

    /// Kills the broker (SIGKILL) and starts it again with the same configuration and port.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&self.conf, self.dir.path())?;
        self.wait_ready()
    }

    /// The configuration file in use.
    pub fn config_path(&self) -> &Path {
        &self.conf
    }
}

fn spawn_mosquitto(conf: &Path, dir: &Path) -> Result<Child, BrokerError> {
    let stderr = std::fs::File::create(dir.join("stderr.log"))
        .map_err(io("creating the broker's stderr log"))?;
    let bin = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .ok_or_else(|| BrokerError::Missing("mosquitto".into()))?;
    Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(io(format!("starting {bin}")))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
