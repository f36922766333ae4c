//! The grid server's configuration (`server.toml`), every field with a default
//! except where noted.
//!
//! ```toml
//! keys_dir = "server-1"        # the server bundle: `gridpow keys export server --out server-1`
//! db = "data/gridpow.db"       # SQLite file or sqlite://path, or postgres://user@host/db
//! server_id = 1                # stated in commit receipts
//! min_difficulty = 16          # least PoW accepted
//!
//! [mqtt]
//! host = "localhost"
//! port = 8883
//! tls = true                   # ca/cert/key default to keys_dir/tls/{ca,server-<id>}.pem/.key
//! shared_subscription = true   # $share/gridpow-servers/…; false: plain subscription
//! session_expiry_s = 3600      # persistent session: unacknowledged blocks are redelivered
//! receive_maximum = 128        # blocks in flight from the broker
//!
//! [http]
//! listen = "127.0.0.1:8080"
//! # tls_cert = "keys/tls/http.pem"  # with tls_key: HTTPS only (any PEM chain, e.g. issued by the site CA)
//! # tls_key = "keys/tls/http.key"
//! max_connections = 2048       # more are accepted and closed at once (counted)
//! header_timeout_ms = 5000     # each request head within 5 s of the connection or the last response
//! idle_timeout_ms = 60000      # a stalled body or response: closed after 60 s without a byte
//! max_concurrent_requests = 64 # more in flight: 503 + Retry-After (counted)
//! rate_limit_per_s = 50        # per client address (IPv6 /64): token bucket …
//! rate_limit_burst = 100       # … of this depth; beyond: 429 + Retry-After (counted)
//! # tokens_file = "server-1/tokens.toml"  # default keys_dir/tokens.toml; `gridpow tokens create`
//! allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]  # plus the listen address; others get 421
//! max_page = 1000              # largest `limit` of list endpoints; more: 400
//! metrics_open = false         # true: /metrics without a token (loopback scrapers)
//!
//! [plausibility]
//! nominal_voltage_v = 230.0
//! voltage_tolerance = 0.10     # ±10 % of nominal
//! power_tolerance = 0.05       # |P − V·I·PF| ≤ 5 % of V·I …
//! power_slack_w = 5.0          # … plus 5 W
//! expected_interval_s = 10
//! silent_after_intervals = 5
//!
//! [ingest]
//! max_batch_readings = 50000   # readings per database transaction
//! max_batch_blocks = 256       # blocks per database transaction
//!
//! [quarantine]                 # bounds against a hostile relay key or junk (docs/protocol.md §9.5)
//! max_height_ahead = 100000    # a block higher above its relay's head is refused (too_far_ahead)
//! max_payload_bytes = 65536    # bytes of a refused payload kept (its length is recorded)
//! max_rows_per_relay = 10000   # rows kept per relay (unauthenticated refusals share one allowance) …
//! max_bytes_per_relay = 67108864  # … and payload bytes; beyond: counted, not kept
//! retention_days = 30          # older rows pruned (fork evidence is kept)
//! ```
//! Every field can be overridden from the environment with the prefix
//! `GRIDPOW_SERVER`, e.g. `GRIDPOW_SERVER__MQTT__PORT=8884`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gridpow_common::config::load_toml;
pub use gridpow_common::config::ConfigError;
pub use gridpow_store::PlausibilityConfig;
use serde::{Deserialize, Serialize};

/// Environment prefix of server overrides.
pub const ENV_PREFIX: &str = "GRIDPOW_SERVER";

/// The whole server configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The key directory (site secrets, meter and relay registries, server signing key, TLS files).
    pub keys_dir: PathBuf,
    /// The database: a SQLite file path or `sqlite://path` (one server), or
    /// `postgres://user:password@host:port/db` (several servers may share it).
    pub db: String,
    /// This server's id, stated in every commit receipt.
    pub server_id: u32,
    /// Least proof-of-work difficulty (leading zero bits) a block must claim and meet.
    pub min_difficulty: u8,
    /// The broker connection.
    pub mqtt: MqttConfig,
    /// The HTTP API and dashboard.
    pub http: HttpConfig,
    /// Plausibility rules for readings (what cryptography cannot catch).
    pub plausibility: PlausibilityConfig,
    /// Batching of database transactions.
    pub ingest: IngestConfig,
    /// Bounds on what hostile input can make the ledger keep.
    pub quarantine: QuarantineConfig,
    /// The transparency log's checkpoints and witnesses (docs/ledger.md).
    pub log: LogConfig,
    /// Verified readings as plain MQTT, with Home Assistant discovery.
    pub home_assistant: HomeAssistantConfig,
}

/// An opt-in export of verified readings (docs/integrations.md): after a
/// block's readings are committed, each meter's newest state as JSON on
/// `gridpow/v1/meters/<id>/state`, its availability (the silent-meter
/// sweep) on `gridpow/v1/meters/<id>/availability`, and Home Assistant MQTT
/// discovery documents, all retained, on this broker. Its failure never
/// slows ingestion: a bounded queue, drops counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Export at all.
    pub enabled: bool,
    /// The broker (a household's or a co-op's Home Assistant broker); default the `[mqtt]` one.
    pub host: Option<String>,
    /// Its port; default the `[mqtt]` one.
    pub port: Option<u16>,
    /// TLS to it; without it the connection is plaintext (a broker on the same host only).
    pub tls: bool,
    /// CA certificate of that broker; default `keys_dir/tls/ca.pem`.
    pub ca: Option<PathBuf>,
    /// Client certificate for it, if it asks for one.
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    pub key: Option<PathBuf>,
    /// MQTT user name (brokers with password authentication).
    pub username: Option<String>,
    /// File holding the MQTT password (first line), mode 0600 advised.
    pub password_file: Option<PathBuf>,
    /// MQTT client id; default `gridpow-export-<server_id>`.
    pub client_id: Option<String>,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// States waiting for the broker; more are dropped and counted.
    pub queue: usize,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            host: None,
            port: None,
            tls: true,
            ca: None,
            cert: None,
            key: None,
            username: None,
            password_file: None,
            client_id: None,
            discovery_prefix: "homeassistant".into(),
            queue: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            keys_dir: PathBuf::from("server-1"),
            db: "gridpow.db".into(),
            server_id: 1,
            min_difficulty: 16,
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            plausibility: PlausibilityConfig::default(),
            ingest: IngestConfig::default(),
            quarantine: QuarantineConfig::default(),
            log: LogConfig::default(),
            home_assistant: HomeAssistantConfig::default(),
        }
    }
}

/// The transparency log (docs/ledger.md): checkpoints signed with the note
/// key `keys_dir/log-note.key`, and the witnesses asked to cosign them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The log's name (C2SP origin line, also its note key's name): a
    /// schema-less URL naming this ledger, the same on every server sharing
    /// its database. Default `gridpow.local/ledger`.
    pub origin: String,
    /// A checkpoint is signed at most this often after new blocks, in ms.
    pub checkpoint_min_gap_ms: u64,
    /// And at least this often (re-signed when nothing was appended, so
    /// witnesses and monitors see the log is alive), in seconds.
    pub checkpoint_interval_s: u64,
    /// Witnesses asked to cosign each checkpoint.
    pub witnesses: Vec<WitnessConfig>,
    /// Cosignatures a checkpoint should carry; fewer is flagged on the
    /// dashboard, in `/metrics` and the log (the checkpoint is still served).
    pub min_cosignatures: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            origin: "gridpow.local/ledger".into(),
            checkpoint_min_gap_ms: 500,
            checkpoint_interval_s: 60,
            witnesses: Vec::new(),
            min_cosignatures: 0,
        }
    }
}

/// A witness (C2SP tlog-witness) the server asks to cosign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Its base URL: the server POSTs to `<url>/add-checkpoint`.
    pub url: String,
    /// Its verifier key (C2SP vkey, `name+hash+key`): cosignatures are checked with it.
    pub vkey: String,
}

/// The MQTT connection (MQTT 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (the default). Without it the connection is plaintext: tests only.
    pub tls: bool,
    /// CA certificate; default `keys_dir/tls/ca.pem`.
    pub ca: Option<PathBuf>,
    /// Client certificate; default `keys_dir/tls/server-<server_id>.pem`.
    pub cert: Option<PathBuf>,
    /// Client key; default `keys_dir/tls/server-<server_id>.key`.
    pub key: Option<PathBuf>,
    /// MQTT client id; default `gridpow-server-<server_id>` (stable: the session is persistent).
    pub client_id: Option<String>,
    /// Subscribe with the MQTT 5 shared subscription `$share/gridpow-servers/…`
    /// so several servers share the load; `false` subscribes to every block.
    pub shared_subscription: bool,
    /// Keep-alive interval in seconds.
    pub keep_alive_s: u64,
    /// How long the broker keeps the session (and unacknowledged blocks) after a
    /// disconnect, in seconds; 0 = a clean session each time.
    pub session_expiry_s: u32,
    /// Most unacknowledged blocks the broker may send at once (MQTT 5 receive maximum).
    pub receive_maximum: u16,
    /// Largest MQTT packet accepted, bytes (a block of 65 535 full frames is ~16 MiB).
    pub max_packet_bytes: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "localhost".into(),
            port: 8883,
            tls: true,
            ca: None,
            cert: None,
            key: None,
            client_id: None,
            shared_subscription: true,
            keep_alive_s: 30,
            session_expiry_s: 3600,
            receive_maximum: 128,
            max_packet_bytes: 20 << 20,
        }
    }
}

/// The HTTP server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, `IP:port` or `host:port` (a name is resolved when
    /// the configuration loads); port 0 picks a free one (`ServerHandle::http_addr`).
    #[serde(deserialize_with = "gridpow_common::net::deserialize_listen")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM); with `tls_key`, the listener speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most connections open at once; beyond, new ones are accepted and closed at once.
    pub max_connections: usize,
    /// A connection must deliver each request head within this, ms, counted from
    /// its start (TLS handshake included) or from the previous response: so this
    /// is also how long an idle keep-alive connection stays open.
    pub header_timeout_ms: u64,
    /// A connection that moves no byte for this long in either direction (a
    /// stalled request body or response) is closed, ms.
    pub idle_timeout_ms: u64,
    /// Most requests handled at once; beyond, 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Requests per second one client address (IPv6: its /64) may sustain; beyond, 429.
    pub rate_limit_per_s: u32,
    /// Requests one client address may send in a burst above `rate_limit_per_s`.
    pub rate_limit_burst: u32,
    /// The API tokens file (SHA-256 of each token, its name and role; mode 0600),
    /// re-read when it changes; default `keys_dir/tokens.toml`. See `gridpow tokens`.
    pub tokens_file: Option<PathBuf>,
    /// Host names (optionally `name:port`) requests may be addressed to; others
    /// are refused with 421 (DNS rebinding). The listen address is always allowed.
    pub allowed_hosts: Vec<String>,
    /// Largest `limit` a list endpoint accepts; a larger one is refused with 400.
    pub max_page: usize,
    /// Serve `/metrics` without a token (for a scraper on loopback only; the host check still applies).
    pub metrics_open: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            max_connections: 2048,
            header_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            max_concurrent_requests: 64,
            rate_limit_per_s: 50,
            rate_limit_burst: 100,
            tokens_file: None,
            allowed_hosts: crate::hosts::default_allowed_hosts(),
            max_page: 1000,
            metrics_open: false,
        }
    }
}

/// How blocks are grouped into database transactions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Close a transaction once it holds this many readings.
    pub max_batch_readings: usize,
    /// Close a transaction once it holds this many blocks (or rejected messages).
    pub max_batch_blocks: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch_readings: 50_000,
            max_batch_blocks: 256,
        }
    }
}

/// Bounds against a hostile relay key or a flood of refused payloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuarantineConfig {
    /// A block more than this many heights above its relay's highest stored
    /// block (or above 0 when none) is refused as `too_far_ahead`.
    pub max_height_ahead: u64,
    /// Bytes of a refused payload kept (its first ones: header and signature); its length is recorded.
    pub max_payload_bytes: u64,
    /// Quarantine rows kept per relay; refusals whose relay id no signature
    /// vouches for share one such allowance. Beyond it a refusal is counted, not kept.
    pub max_rows_per_relay: u64,
    /// Payload bytes kept per relay, likewise.
    pub max_bytes_per_relay: u64,
    /// Rows older than this many days are pruned by the writer (fork evidence is kept).
    pub retention_days: u32,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        let d = gridpow_store::StoreLimits::default();
        QuarantineConfig {
            max_height_ahead: d.max_height_ahead,
            max_payload_bytes: d.quarantine_max_payload_bytes,
            max_rows_per_relay: d.quarantine_max_rows_per_relay,
            max_bytes_per_relay: d.quarantine_max_bytes_per_relay,
            retention_days: (d.quarantine_retention_ms / 86_400_000) as u32,
        }
    }
}

impl QuarantineConfig {
    /// The store's limits.
    pub fn store_limits(&self) -> gridpow_store::StoreLimits {
        gridpow_store::StoreLimits {
            max_height_ahead: self.max_height_ahead,
            quarantine_max_payload_bytes: self.max_payload_bytes,
            quarantine_max_rows_per_relay: self.max_rows_per_relay,
            quarantine_max_bytes_per_relay: self.max_bytes_per_relay,
            quarantine_retention_ms: u64::from(self.retention_days).saturating_mul(86_400_000),
        }
    }
}

/// The configuration structs of this file and their TOML sections.
const SECTIONS: &[(&str, &str)] = &[
    ("ServerConfig", ""),
    ("MqttConfig", "mqtt"),
    ("HttpConfig", "http"),
    ("PlausibilityConfig", "plausibility"),
    ("IngestConfig", "ingest"),
    ("QuarantineConfig", "quarantine"),
    ("LogConfig", "log"),
    ("HomeAssistantConfig", "home_assistant"),
];

impl ServerConfig {
    /// This configuration as `server.toml`, each field under its documentation
    /// (the doc comments of this file) as comments; unset ones commented out.
    pub fn example_toml(&self) -> Result<String, ConfigError> {
        gridpow_common::config::example_toml(
            self,
            &[
                include_str!("config.rs"),
                gridpow_store::plausibility::SOURCE,
            ]
            .concat(),
            SECTIONS,
        )
    }

    /// Reads `path` (TOML) with overrides from `GRIDPOW_SERVER__…` variables and validates it.
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let cfg: ServerConfig = load_toml(path, Some(ENV_PREFIX))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks values serde cannot; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, msg: &str| Err(ConfigError::invalid(path, field, msg.to_string()));
        if self.db.trim().is_empty() {
            return bad("db", "must name a SQLite file or a database URL");
        }
        if gridpow_store::DbUrl::parse(&self.db).is_err() {
            return bad(
                "db",
                "unsupported database URL (use a file path, sqlite://path or postgres://user@host/db)",
            );
        }
        if self.min_difficulty > 64 {
            return bad(
                "min_difficulty",
                "above 64 leading zero bits no relay could ever meet",
            );
        }
        if self.mqtt.receive_maximum == 0 {
            return bad("mqtt.receive_maximum", "must be at least 1");
        }
        if self.mqtt.max_packet_bytes < 4096 {
            return bad("mqtt.max_packet_bytes", "must be at least 4096");
        }
        let h = &self.http;
        if h.tls_cert.is_some() != h.tls_key.is_some() {
            return bad("http.tls_cert", "tls_cert and tls_key go together");
        }
        if !(1..=1_000_000).contains(&h.max_connections) {
            return bad("http.max_connections", "must be in 1..=1000000");
        }
        if !(100..=600_000).contains(&h.header_timeout_ms) {
            return bad("http.header_timeout_ms", "must be in 100..=600000 (ms)");
        }
        if !(100..=3_600_000).contains(&h.idle_timeout_ms) {
            return bad("http.idle_timeout_ms", "must be in 100..=3600000 (ms)");
        }
        if !(1..=100_000).contains(&h.max_concurrent_requests) {
            return bad("http.max_concurrent_requests", "must be in 1..=100000");
        }
        if h.rate_limit_per_s == 0 {
            return bad("http.rate_limit_per_s", "must be at least 1");
        }
        if h.rate_limit_burst == 0 {
            return bad("http.rate_limit_burst", "must be at least 1");
        }
        if !(1..=1_000_000).contains(&h.max_page) {
            return bad("http.max_page", "must be in 1..=1000000");
        }
        let log = &self.log;
        if gridpow_tlog::Checkpoint::new(&log.origin, 0, [0; 32])
            .body()
            .is_err()
            || log.origin.contains(char::is_whitespace)
            || log.origin.contains('+')
        {
            return bad(
                "log.origin",
                "must be a non-empty name without spaces or '+' (a schema-less URL such as grid.example/ledger)",
            );
        }
        if !(10..=3_600_000).contains(&log.checkpoint_min_gap_ms) {
            return bad("log.checkpoint_min_gap_ms", "must be in 10..=3600000 (ms)");
        }
        if !(1..=86_400).contains(&log.checkpoint_interval_s) {
            return bad("log.checkpoint_interval_s", "must be in 1..=86400 (s)");
        }
        for (i, w) in log.witnesses.iter().enumerate() {
            if let Err(e) = gridpow_tlog::CosignatureVerifier::from_vkey(&w.vkey) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("log.witnesses[{i}].vkey"),
                    e.to_string(),
                ));
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return bad("log.witnesses.url", "must be an http:// or https:// URL");
            }
        }
        let ha = &self.home_assistant;
        if ha.queue == 0 || ha.queue > 10_000_000 {
            return bad("home_assistant.queue", "must be in 1..=10000000");
        }
        if ha.discovery_prefix.is_empty()
            || ha.discovery_prefix.contains(['+', '#', ' '])
            || ha.discovery_prefix.starts_with('/')
            || ha.discovery_prefix.ends_with('/')
        {
            return bad(
                "home_assistant.discovery_prefix",
                "must be a topic prefix without wildcards, spaces or leading/trailing '/'",
            );
        }
        if ha.cert.is_some() != ha.key.is_some() {
            return bad("home_assistant.cert", "cert and key go together");
        }
        if ha.password_file.is_some() && ha.username.is_none() {
            return bad(
                "home_assistant.password_file",
                "needs home_assistant.username",
            );
        }
        if log.min_cosignatures > log.witnesses.len() {
            return bad(
                "log.min_cosignatures",
                "more than the witnesses configured: no checkpoint could ever carry them",
            );
        }
        if let Some(bad_host) = h
            .allowed_hosts
            .iter()
            .find(|e| !crate::hosts::valid_host_entry(e))
        {
            return Err(ConfigError::invalid(
                path,
                "http.allowed_hosts",
                format!("{bad_host:?} is not a host name, name:port, IP address or [IPv6]"),
            ));
        }
        let p = &self.plausibility;
        if p.nominal_voltage_v.is_nan() || p.nominal_voltage_v <= 0.0 {
            return bad("plausibility.nominal_voltage_v", "must be positive");
        }
        if !(0.0..1.0).contains(&p.voltage_tolerance) {
            return bad("plausibility.voltage_tolerance", "must be in [0, 1)");
        }
        if p.power_tolerance.is_nan()
            || p.power_tolerance < 0.0
            || p.power_slack_w.is_nan()
            || p.power_slack_w < 0.0
        {
            return bad(
                "plausibility.power_tolerance",
                "tolerances must not be negative",
            );
        }
        if p.expected_interval_s == 0 || p.silent_after_intervals == 0 {
            return bad(
                "plausibility.expected_interval_s",
                "interval and silent_after_intervals must be positive",
            );
        }
        if self.ingest.max_batch_readings == 0 || self.ingest.max_batch_blocks == 0 {
            return bad("ingest.max_batch_readings", "batch limits must be positive");
        }
        if self.quarantine.max_payload_bytes < 164 {
            return bad(
                "quarantine.max_payload_bytes",
                "must keep at least a block's header and signature (164 bytes)",
            );
        }
        if self.quarantine.retention_days == 0 {
            return bad("quarantine.retention_days", "must be at least 1");
        }
        Ok(())
    }

    /// The CA certificate the broker's certificate must chain to.
    pub fn ca_path(&self) -> PathBuf {
        self.mqtt
            .ca
            .clone()
            .unwrap_or_else(|| self.keys_dir.join("tls").join("ca.pem"))
    }

    /// The client certificate and key presented to the broker.
    pub fn client_identity(&self) -> (PathBuf, PathBuf) {
        let name = format!("server-{}", self.server_id);
        let d = self.keys_dir.join("tls");
        (
            self.mqtt
                .cert
                .clone()
                .unwrap_or_else(|| d.join(format!("{name}.pem"))),
            self.mqtt
                .key
                .clone()
                .unwrap_or_else(|| d.join(format!("{name}.key"))),
        )
    }

    /// The API tokens file: `http.tokens_file`, default `keys_dir/tokens.toml`.
    pub fn tokens_path(&self) -> PathBuf {
        self.http
            .tokens_file
            .clone()
            .unwrap_or_else(|| self.keys_dir.join("tokens.toml"))
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gridpow-server-{}", self.server_id))
    }

    /// The broker as `[mqtt]` names it, for start lines and connection errors.
    pub fn broker_target(&self) -> gridpow_common::net::BrokerTarget {
        gridpow_common::net::BrokerTarget {
            host: self.mqtt.host.clone(),
            port: self.mqtt.port,
            tls: self.mqtt.tls,
            protocol: "5",
            env_prefix: ENV_PREFIX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_common::config::parse_toml;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c: ServerConfig =
            parse_toml("", Path::new("server.toml"), Some(ENV_PREFIX), vec![]).unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(c.http.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(c.mqtt.tls && c.mqtt.shared_subscription);
        assert_eq!(c.ca_path(), Path::new("server-1/tls/ca.pem"));
        assert_eq!(
            c.client_identity().0,
            Path::new("server-1/tls/server-1.pem")
        );
        assert_eq!(c.plausibility.silent_after_ms(), 50_000);
    }

    #[test]
    fn environment_overrides_nested_fields_and_errors_name_the_field() {
        let vars = vec![("GRIDPOW_SERVER__MQTT__PORT".to_string(), "8884".to_string())];
        let c: ServerConfig = parse_toml(
            "db = \"x.db\"\n[mqtt]\nport = 1\n",
            Path::new("s.toml"),
            Some(ENV_PREFIX),
            vars,
        )
        .unwrap();
        assert_eq!(c.mqtt.port, 8884);
        let e = parse_toml::<ServerConfig>(
            "[http]\nlisten = \"nowhere\"\n",
            Path::new("s.toml"),
            None,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("s.toml") && e.contains("http.listen"), "{e}");
        // A host name is resolved; one that does not resolve names the field.
        let c: ServerConfig = parse_toml(
            "[http]\nlisten = \"localhost:8080\"\n",
            Path::new("s.toml"),
            None,
            vec![],
        )
        .unwrap();
        assert_eq!(c.http.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        let e = parse_toml::<ServerConfig>(
            "[http]\nlisten = \"no-such-host.invalid:8080\"\n",
            Path::new("s.toml"),
            None,
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("http.listen") && e.contains("does not resolve"),
            "{e}"
        );
        let e = parse_toml::<ServerConfig>("colour = 1\n", Path::new("s.toml"), None, vec![])
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn validation_refuses_impossible_values_naming_the_field() {
        let mut c = ServerConfig::default();
        c.plausibility.voltage_tolerance = 1.5;
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("plausibility.voltage_tolerance"), "{e}");
        let c = ServerConfig {
            db: "mysql://x".into(),
            ..ServerConfig::default()
        };
        assert!(c
            .validate(Path::new("s.toml"))
            .unwrap_err()
            .to_string()
            .contains("`db`"));
    }

    #[test]
    fn http_access_settings_default_to_loopback_hosts_and_are_validated_naming_the_field() {
        let c = ServerConfig::default();
        assert_eq!(c.tokens_path(), Path::new("server-1/tokens.toml"));
        assert_eq!(c.http.allowed_hosts, ["localhost", "127.0.0.1", "[::1]"]);
        assert!(c.http.max_page == 1000 && !c.http.metrics_open);
        let mut c = ServerConfig::default();
        c.http.allowed_hosts = vec!["grid.example:notaport".into()];
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(
            e.contains("http.allowed_hosts") && e.contains("notaport"),
            "{e}"
        );
        let mut c = ServerConfig::default();
        c.http.max_page = 0;
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("http.max_page"), "{e}");
    }

    #[test]
    fn http_limits_are_validated_naming_the_field() {
        let mut c = ServerConfig::default();
        c.validate(Path::new("s.toml")).unwrap();
        c.http.max_concurrent_requests = 0;
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("http.max_concurrent_requests"), "{e}");
        let mut c = ServerConfig::default();
        c.http.tls_key = Some("k.pem".into());
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("http.tls_cert"), "{e}");
        let mut c = ServerConfig::default();
        c.http.header_timeout_ms = 0;
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("http.header_timeout_ms"), "{e}");
    }

    #[test]
    fn quarantine_section_gives_the_store_its_limits_and_is_validated() {
        let c: ServerConfig = parse_toml(
            "[quarantine]\nmax_height_ahead = 50\nretention_days = 2\n",
            Path::new("s.toml"),
            None,
            vec![],
        )
        .unwrap();
        let l = c.quarantine.store_limits();
        assert_eq!(
            (l.max_height_ahead, l.quarantine_retention_ms),
            (50, 2 * 86_400_000)
        );
        assert_eq!(
            ServerConfig::default().quarantine.store_limits(),
            gridpow_store::StoreLimits::default()
        );
        let mut c = ServerConfig::default();
        c.quarantine.max_payload_bytes = 100;
        let e = c.validate(Path::new("s.toml")).unwrap_err().to_string();
        assert!(e.contains("quarantine.max_payload_bytes"), "{e}");
    }

    #[test]
    fn the_example_configuration_documents_every_field_and_loads_back_as_the_defaults() {
        let c = ServerConfig::default();
        let text = c.example_toml().unwrap();
        let back: ServerConfig =
            parse_toml(&text, Path::new("example.toml"), None, Vec::new()).unwrap();
        assert_eq!(back, c);
        let undocumented = gridpow_common::config::undocumented_lines(&text);
        assert!(
            undocumented.is_empty(),
            "undocumented: {undocumented:?}
{text}"
        );
        assert!(text.contains("# tls_cert = (unset)"), "{text}");
    }
}
