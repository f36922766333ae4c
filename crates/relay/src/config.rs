//! The relay's configuration (`relay.toml`), every field with a default.
//!
//! ```toml
//! relay_id = 1
//! keys_dir = "relay-1"        # the relay bundle: `gridpow keys export relay --id 1 --out relay-1`
//! data_dir = "data/relay-1"
//! difficulty = 16
//!
//! [block]
//! max_frames = 1024     # seal when this many frames wait ...
//! max_age_ms = 100      # ... or when the oldest has waited this long
//!
//! [pow]
//! threads = 1           # default: available cores - 1, at least 1
//!
//! [radio]
//! kind = "udp"          # or "serial" (ESP32 bridge)
//! udp_listen = "0.0.0.0:47800"
//! serial_device = "/dev/ttyUSB0"
//! serial_baud = 115200
//! require_registered_mac = false
//! channel = 1
//!
//! [mqtt]
//! host = "localhost"
//! port = 8883
//! tls = true            # ca/cert/key default to keys_dir/tls/{ca,relay-<id>}.pem/.key
//! keep_alive_s = 30
//! republish_after_s = 10
//! quarantine_retry_s = 30  # a quarantined block is offered again after 2×, 4×, … 64× this
//!
//! [journal]
//! max_commit_delay_ms = 2
//! ```
//! Every field can be overridden from the environment with the prefix
//! `GRIDPOW_RELAY`, e.g. `GRIDPOW_RELAY__MQTT__PORT=8884`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gridpow_common::config::{load_toml, ConfigError};
use gridpow_proto::MacAddr;
use serde::{Deserialize, Serialize};

/// Environment prefix of relay overrides.
pub const ENV_PREFIX: &str = "GRIDPOW_RELAY";

/// The whole relay configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// This relay's id (stated in ACKs and block headers; its key is `keys_dir/relays/<id>.key`).
    pub relay_id: u32,
    /// The key directory written by `gridpow keys init`.
    pub keys_dir: PathBuf,
    /// Where the journal, the outbox and the chain state live (see the crate docs).
    pub data_dir: PathBuf,
    /// Leading zero bits each block hash must have (at least the server's `min_difficulty`).
    pub difficulty: u8,
    /// When to seal a block.
    pub block: BlockConfig,
    /// Proof-of-work workers.
    pub pow: PowConfig,
    /// Where frames come from.
    pub radio: RadioConfig,
    /// The broker.
    pub mqtt: MqttConfig,
    /// The write-ahead journal.
    pub journal: JournalConfig,
    /// Watching the grid server's transparency log.
    pub log: LogConfig,
}

/// Watching the grid server's transparency log (docs/ledger.md): the relay
/// checks every checkpoint against the ones before and that each stored
/// block of its own is in the log, and raises an alarm when not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The log's note verifier key (`name+keyid+key`, what the grid server logs
    /// at start). Unset: the relay does not watch the log.
    pub vkey: Option<String>,
}

/// When to seal a block: by count or by age, whichever comes first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockConfig {
    /// Most frames (leaves) in one block, 1 to 65535.
    pub max_frames: usize,
    /// Seal once the oldest waiting frame has waited this long (ms).
    pub max_age_ms: u64,
}

/// Proof-of-work workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowConfig {
    /// Worker threads splitting the nonce space; default: available cores − 1, at least 1.
    pub threads: usize,
}

/// Which radio adapter `open_radio` opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RadioKind {
    /// UDP air (virtual meters in another process).
    Udp,
    /// An ESP32 in bridge mode on a serial port.
    Serial,
}

/// The radio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadioConfig {
    /// `udp` or `serial`.
    pub kind: RadioKind,
    /// UDP address to bind (`kind = "udp"`).
    pub udp_listen: SocketAddr,
    /// Serial device of the ESP32 bridge (`kind = "serial"`).
    pub serial_device: String,
    /// Baud rate of the bridge.
    pub serial_baud: u32,
    /// Refuse frames whose source MAC is not registered (real ESP-NOW only; UDP air
    /// and the in-process medium use virtual MACs).
    pub require_registered_mac: bool,
    /// Wi-Fi channel stated in ACKs (1–14, 0 = not stated).
    pub channel: u8,
    /// The relay's own MAC (`AA:BB:CC:DD:EE:FF`), source of its ACKs; default
    /// `virtual_relay_mac(relay_id)`.
    pub mac: Option<String>,
}

/// The MQTT connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (strongly recommended; the broker should also require client certificates).
    pub tls: bool,
    /// CA certificate; default `keys_dir/tls/ca.pem`.
    pub ca: Option<PathBuf>,
    /// Client certificate; default `keys_dir/tls/relay-<id>.pem`.
    pub cert: Option<PathBuf>,
    /// Client key; default `keys_dir/tls/relay-<id>.key`.
    pub key: Option<PathBuf>,
    /// MQTT client id; default `gridpow-relay-<id>` (must be stable: the session is persistent).
    pub client_id: Option<String>,
    /// Keep-alive interval in seconds.
    pub keep_alive_s: u64,
    /// Publish an unconfirmed block again when no receipt came within this many seconds.
    pub republish_after_s: u64,
    /// First wait, doubled per quarantine (up to 64×), before a block the
    /// server quarantined is offered again (it is never dropped: §10).
    pub quarantine_retry_s: u64,
    /// Blocks published and awaiting a receipt at once (flow control).
    pub max_inflight_blocks: usize,
}

/// The write-ahead journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Group-commit window: after the first frame of a batch, wait at most this
    /// long for more before the fsync (ms). 0 commits as soon as the queue is empty.
    pub max_commit_delay_ms: u64,
    /// Start a new journal segment after this many bytes (compaction deletes whole segments).
    pub segment_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relay_id: 1,
            keys_dir: PathBuf::from("relay-1"),
            data_dir: PathBuf::from("data/relay-1"),
            difficulty: 16,
            block: BlockConfig::default(),
            pow: PowConfig::default(),
            radio: RadioConfig::default(),
            mqtt: MqttConfig::default(),
            journal: JournalConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            max_frames: 1024,
            // Sub-second delivery (docs/performance.md "Delivery latency"
            // has what it costs in blocks, ledger bytes and PoW).
            max_age_ms: 100,
        }
    }
}

impl Default for PowConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PowConfig {
            threads: cores.saturating_sub(1).max(1),
        }
    }
}

impl Default for RadioConfig {
    fn default() -> Self {
        RadioConfig {
            kind: RadioKind::Udp,
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 47800)),
            serial_device: "/dev/ttyUSB0".into(),
            serial_baud: 115_200,
            require_registered_mac: false,
            channel: 1,
            mac: None,
        }
    }
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
            keep_alive_s: 30,
            republish_after_s: 10,
            quarantine_retry_s: 30,
            max_inflight_blocks: 32,
        }
    }
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_commit_delay_ms: 2,
            segment_bytes: 64 << 20,
        }
    }
}

/// The configuration structs of this file and their TOML sections.
const SECTIONS: &[(&str, &str)] = &[
    ("RelayConfig", ""),
    ("BlockConfig", "block"),
    ("PowConfig", "pow"),
    ("RadioConfig", "radio"),
    ("MqttConfig", "mqtt"),
    ("JournalConfig", "journal"),
    ("LogConfig", "log"),
];

impl RelayConfig {
    /// This configuration as `relay.toml`, each field under its documentation
    /// (the doc comments of this file) as comments; unset ones commented out.
    pub fn example_toml(&self) -> Result<String, ConfigError> {
        gridpow_common::config::example_toml(self, include_str!("config.rs"), SECTIONS)
    }

    /// Defaults for relay `relay_id` with the given key and data directories.
    pub fn new(relay_id: u32, keys_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        RelayConfig {
            relay_id,
            keys_dir: keys_dir.into(),
            data_dir: data_dir.into(),
            ..RelayConfig::default()
        }
    }

    /// Reads `path` (TOML) with `GRIDPOW_RELAY__…` environment overrides and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: RelayConfig = load_toml(path, Some(ENV_PREFIX))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks ranges; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, msg: &str| Err(ConfigError::invalid(path, field, msg.to_string()));
        if self.block.max_frames == 0 || self.block.max_frames > 65_535 {
            return bad("block.max_frames", "must be 1 to 65535");
        }
        if self.pow.threads == 0 || self.pow.threads > 256 {
            return bad("pow.threads", "must be 1 to 256");
        }
        if self.difficulty > 64 {
            return bad(
                "difficulty",
                "above 64 leading zero bits would never be solved",
            );
        }
        if self.radio.channel > 14 {
            return bad("radio.channel", "must be 0 (not stated) or 1 to 14");
        }
        if let Some(m) = &self.radio.mac {
            if gridpow_common::parse_mac(m).is_none() {
                return bad("radio.mac", "not a MAC address like AA:BB:CC:DD:EE:FF");
            }
        }
        if let Some(v) = &self.log.vkey {
            if let Err(e) =
                gridpow_proto::checkpoint::NoteKey::from_vkey(&gridpow_proto::crypto::RustCrypto, v)
            {
                return bad(
                    "log.vkey",
                    &format!("{e}: expected name+keyid+base64key (Ed25519)"),
                );
            }
        }
        if self.mqtt.max_inflight_blocks == 0 {
            return bad("mqtt.max_inflight_blocks", "must be at least 1");
        }
        if self.mqtt.republish_after_s == 0 {
            return bad("mqtt.republish_after_s", "must be at least 1 (s)");
        }
        if self.mqtt.quarantine_retry_s == 0 {
            return bad("mqtt.quarantine_retry_s", "must be at least 1 (s)");
        }
        if self.journal.segment_bytes < 4096 {
            return bad("journal.segment_bytes", "must be at least 4096");
        }
        Ok(())
    }

    /// The relay's MAC (source address of ACKs).
    pub fn mac(&self) -> MacAddr {
        self.radio
            .mac
            .as_deref()
            .and_then(gridpow_common::parse_mac)
            .unwrap_or_else(|| gridpow_common::virtual_relay_mac(self.relay_id))
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gridpow-relay-{}", self.relay_id))
    }

    /// The broker as `[mqtt]` names it, for start lines and connection errors.
    pub fn broker_target(&self) -> gridpow_common::net::BrokerTarget {
        gridpow_common::net::BrokerTarget {
            host: self.mqtt.host.clone(),
            port: self.mqtt.port,
            tls: self.mqtt.tls,
            protocol: "3.1.1",
            env_prefix: ENV_PREFIX,
        }
    }

    /// CA, client certificate and client key paths after defaults.
    pub fn tls_paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        let kd = gridpow_keys::KeyDir::new(&self.keys_dir);
        let id = kd.tls_files(&format!("relay-{}", self.relay_id));
        (
            self.mqtt.ca.clone().unwrap_or_else(|| kd.ca_cert_path()),
            self.mqtt.cert.clone().unwrap_or(id.cert),
            self.mqtt.key.clone().unwrap_or(id.key),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_common::config::parse_toml;

    #[test]
    fn an_almost_empty_file_gets_every_default() {
        let c: RelayConfig =
            parse_toml("relay_id = 7\n", Path::new("relay.toml"), None, vec![]).unwrap();
        assert_eq!(c.relay_id, 7);
        assert_eq!(c.difficulty, 16);
        assert_eq!(c.block.max_frames, 1024);
        assert!(c.mqtt.tls);
        assert!(c.pow.threads >= 1);
        assert_eq!(c.client_id(), "gridpow-relay-7");
        assert_eq!(c.mac(), gridpow_common::virtual_relay_mac(7));
        let (ca, cert, _) = c.tls_paths();
        assert!(ca.ends_with("tls/ca.pem") && cert.ends_with("tls/relay-7.pem"));
    }

    #[test]
    fn environment_overrides_and_unknown_fields_are_reported() {
        let vars = vec![("GRIDPOW_RELAY__MQTT__PORT".to_string(), "8884".to_string())];
        let c: RelayConfig = parse_toml(
            "[radio]\nkind = \"serial\"\n",
            Path::new("r.toml"),
            Some(ENV_PREFIX),
            vars,
        )
        .unwrap();
        assert_eq!((c.mqtt.port, c.radio.kind), (8884, RadioKind::Serial));
        let e = parse_toml::<RelayConfig>(
            "[block]\nmax_frame = 3\n",
            Path::new("r.toml"),
            None,
            vec![],
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_frame"), "{e}");
        let mut bad = RelayConfig::default();
        bad.block.max_frames = 0;
        assert!(bad
            .validate(Path::new("r.toml"))
            .unwrap_err()
            .to_string()
            .contains("block.max_frames"));
    }

    #[test]
    fn a_zero_retry_interval_is_refused_when_loaded_not_clamped_where_used() {
        for field in ["republish_after_s", "quarantine_retry_s"] {
            let mut bad = RelayConfig::default();
            match field {
                "republish_after_s" => bad.mqtt.republish_after_s = 0,
                _ => bad.mqtt.quarantine_retry_s = 0,
            }
            let e = bad.validate(Path::new("r.toml")).unwrap_err().to_string();
            assert!(e.contains(&format!("mqtt.{field}")), "{e}");
        }
    }

    #[test]
    fn the_example_configuration_documents_every_field_and_loads_back_as_the_defaults() {
        let c = RelayConfig::new(1, "relay-1", "data/relay-1");
        let text = c.example_toml().unwrap();
        let back: RelayConfig =
            parse_toml(&text, Path::new("example.toml"), None, Vec::new()).unwrap();
        assert_eq!(back, c);
        let undocumented = gridpow_common::config::undocumented_lines(&text);
        assert!(
            undocumented.is_empty(),
            "undocumented: {undocumented:?}
{text}"
        );
        assert!(text.contains("# ca = (unset)"), "{text}");
    }
}
