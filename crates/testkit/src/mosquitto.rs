//! Private Mosquitto instances: a TLS-only listener on a free port of
//! 127.0.0.1 with the key directory's broker certificate, configuration and
//! log in a temporary directory, killed on drop. Tests of relay, server and
//! CLI talk to it as they would to a production broker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gridpow_keys::KeyDir;

use crate::{free_port, wait_listening};

/// Why a private Mosquitto could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MosquittoError {
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
    /// The broker did not accept connections in time.
    #[error("broker on {addr} did not come up within {secs} s: {log}")]
    NotReady {
        /// Its address.
        addr: SocketAddr,
        /// How long we waited.
        secs: u64,
        /// The broker's own log.
        log: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MosquittoError {
    let context = context.into();
    move |source| MosquittoError::Io { context, source }
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
    pub fn start(keys: &KeyDir, opts: &MosquittoOptions) -> Result<Mosquitto, MosquittoError> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let port = match opts.port {
            Some(p) => p,
            None => free_port().map_err(io("binding a free port"))?,
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
    ) -> Result<Mosquitto, MosquittoError> {
        let dir = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
        let port = free_port().map_err(io("binding a free port"))?;
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

    fn launch(
        conf: String,
        dir: tempfile::TempDir,
        port: u16,
    ) -> Result<Mosquitto, MosquittoError> {
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

    fn wait_ready(&mut self) -> Result<(), MosquittoError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if wait_listening(addr, Duration::from_secs(10)) {
            return Ok(());
        }
        Err(MosquittoError::NotReady {
            addr,
            secs: 10,
            log: self.log(),
        })
    }

    /// The broker's log so far (its log file and what it printed before opening it).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("mosquitto.log"))
    }

    /// Kills the broker (SIGKILL) and starts it again with the same configuration and port.
    pub fn restart(&mut self) -> Result<(), MosquittoError> {
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

fn spawn_mosquitto(conf: &Path, dir: &Path) -> Result<Child, MosquittoError> {
    let stderr = std::fs::File::create(dir.join("stderr.log"))
        .map_err(io("creating the broker's stderr log"))?;
    let bin = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .ok_or_else(|| MosquittoError::Missing("mosquitto".into()))?;
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
