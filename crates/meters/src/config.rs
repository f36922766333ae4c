//! The fleet's configuration (`meters.toml`), every field with a default.
//!
//! ```toml
//! keys_dir = "keys"
//! meters = "all"                 # or [1, 2, 3], or { from = 1, to = 50 }
//! interval_s = 10.0
//! relay_mac = "02:67:72:00:00:01"
//! backlog = 256                  # 16, 64, 256, 1024 or 4096 readings per meter
//! seed = 1
//! state_dir = "data/meters"      # persisted boot epochs and energy registers
//! truth_file = "truth.jsonl"     # optional: every generated reading
//! utc_offset_h = 1.0             # local time of the households' daily curve
//! no_ack_warn_s = 15             # warn when no relay answered for this long (0: never)
//!
//! [sender]                       # timers unset: spec §6's, scaled to interval_s (below)
//! start_spread_ms = 1000         # random offset of a boot's first frame
//! phase_spread_ms = 5000         # random phase after a retransmission
//! ack_timeout_ms = 3000
//! max_backoff_ms = 12000
//! max_retries = 5
//! retry_holdoff_ms = 5000
//! readings_per_frame = 6
//!
//! The §6 timer defaults are sized for readings every 10 s (a first ACK
//! timeout that outlasts a cell's burst). A fleet reporting faster (the demo,
//! tests) scales every timer it does not set by `interval_s / 10`, with the
//! first ACK timeout at least 100 ms, so readings do not pile up behind a
//! timer longer than the interval.
//!
//! [radio]
//! udp_relay = "127.0.0.1:47800"
//! udp_also_heard_by = []         # further relays in range, e.g. ["127.0.0.1:47801"]
//! udp_listen = "0.0.0.0:0"
//! loss = 0.0                     # UDP air: probability of losing a frame, each direction
//! ```
//! Environment overrides use the prefix `GRIDPOW_METERS`, e.g.
//! `GRIDPOW_METERS__RADIO__LOSS=0.2`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gridpow_common::config::{load_toml, ConfigError};
use gridpow_proto::sender::SenderConfig;
use gridpow_proto::{Duration, MacAddr};
use serde::{Deserialize, Serialize};

/// Environment prefix of fleet overrides.
pub const ENV_PREFIX: &str = "GRIDPOW_METERS";

/// Backlog capacities a virtual meter can have. The sender takes storage of
/// any length; the fleet offers these few so configurations stay comparable.
pub const BACKLOG_SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];

/// Which meters of the registry the fleet runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MeterSelection {
    /// `"all"`: every meter in the registry.
    All(String),
    /// Explicit ids.
    List(Vec<u32>),
    /// An inclusive id range `{ from = 1, to = 50 }`.
    Range {
        /// First id.
        from: u32,
        /// Last id (inclusive).
        to: u32,
    },
}

impl Default for MeterSelection {
    fn default() -> Self {
        MeterSelection::All("all".into())
    }
}

impl MeterSelection {
    /// Whether `id` is selected.
    pub fn contains(&self, id: u32) -> bool {
        match self {
            MeterSelection::All(_) => true,
            MeterSelection::List(ids) => ids.contains(&id),
            MeterSelection::Range { from, to } => (*from..=*to).contains(&id),
        }
    }
}

/// Tunables of each meter's sender (spec §6). An unset timer takes the §6
/// default scaled to the fleet's interval ([`SenderTunables::sender_config`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderTunables {
    /// Bound of the random offset of a boot's first frame (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_spread_ms: Option<u64>,
    /// Bound of the random phase drawn after a frame needed a retransmission (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_spread_ms: Option<u64>,
    /// Wait for an ACK after the first transmission (ms); doubles per retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// Upper bound of the doubled wait (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backoff_ms: Option<u64>,
    /// Retransmissions before a frame is abandoned.
    pub max_retries: u8,
    /// Pause after an abandoned frame (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_holdoff_ms: Option<u64>,
    /// Readings per frame, 1 to 6.
    pub readings_per_frame: usize,
}

impl Default for SenderTunables {
    /// Every timer unset; the core's retry and frame limits (spec §6).
    fn default() -> Self {
        let c = SenderConfig::new(0, 0);
        SenderTunables {
            start_spread_ms: None,
            phase_spread_ms: None,
            ack_timeout_ms: None,
            max_backoff_ms: None,
            max_retries: c.max_retries,
            retry_holdoff_ms: None,
            readings_per_frame: c.max_readings_per_frame,
        }
    }
}

impl SenderTunables {
    /// The core's sender configuration for `meter_id` under `key_id`, for a
    /// fleet reporting every `interval_s`: unset timers are
    /// [`SenderConfig::for_interval`]'s (§6, scaled below 10 s).
    pub fn sender_config(&self, meter_id: u32, key_id: u8, interval_s: f64) -> SenderConfig {
        let interval = Duration::from_micros((interval_s.max(0.0) * 1e6) as u64);
        let d = SenderConfig::for_interval(meter_id, key_id, interval);
        let pick = |set: Option<u64>, default: Duration| set.map_or(default, Duration::from_millis);
        SenderConfig {
            max_readings_per_frame: self.readings_per_frame,
            start_spread: pick(self.start_spread_ms, d.start_spread),
            phase_spread: pick(self.phase_spread_ms, d.phase_spread),
            ack_timeout: pick(self.ack_timeout_ms, d.ack_timeout),
            max_backoff: pick(self.max_backoff_ms, d.max_backoff),
            max_retries: self.max_retries,
            retry_holdoff: pick(self.retry_holdoff_ms, d.retry_holdoff),
            ..d
        }
    }
}

/// Seconds without any ACK, while frames are being sent, before the fleet
/// warns: the default of `no_ack_warn_s`.
pub const NO_ACK_WARN_AFTER_S: u64 = 15;

/// The fleet's radio (used by [`crate::open_udp_radio`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetRadioConfig {
    /// The relay's UDP air address.
    pub udp_relay: SocketAddr,
    /// Further relays in radio range (UDP air addresses): every frame also
    /// reaches each of them, as a frame on the air reaches every relay in
    /// range; an authentic ACK from any of them confirms it (docs/protocol.md §14).
    pub udp_also_heard_by: Vec<SocketAddr>,
    /// Local address to bind.
    pub udp_listen: SocketAddr,
    /// Probability of losing a frame on the UDP air, in each direction (uplinks
    /// and ACKs), 0 to 1. An in-process medium has its own loss setting.
    pub loss: f64,
}

impl Default for FleetRadioConfig {
    fn default() -> Self {
        FleetRadioConfig {
            udp_relay: SocketAddr::from(([127, 0, 0, 1], 47800)),
            udp_also_heard_by: Vec::new(),
            udp_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            loss: 0.0,
        }
    }
}

/// The whole fleet configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// The key directory (site secrets and meter registry).
    pub keys_dir: PathBuf,
    /// Which registry meters to run.
    pub meters: MeterSelection,
    /// Seconds between readings of each meter (the demo may use 1; tests less).
    pub interval_s: f64,
    /// The relay's MAC (destination of uplinks); default `virtual_relay_mac(1)`.
    pub relay_mac: Option<String>,
    /// Backlog capacity of each meter in readings: one of [`BACKLOG_SIZES`].
    pub backlog: usize,
    /// Sender tunables.
    pub sender: SenderTunables,
    /// Seed of the load model and the timer jitter.
    pub seed: u64,
    /// The radio.
    pub radio: FleetRadioConfig,
    /// If set, every generated reading is appended to this JSON-lines file.
    pub truth_file: Option<PathBuf>,
    /// Where boot epochs and energy registers persist across restarts.
    pub state_dir: PathBuf,
    /// UTC offset (hours) of the households' local time for the daily curve.
    pub utc_offset_h: f64,
    /// Warn when frames go out but no relay has answered for this many
    /// seconds (`gridpow meters`); 0 never warns.
    pub no_ack_warn_s: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            keys_dir: PathBuf::from("keys"),
            meters: MeterSelection::default(),
            interval_s: 10.0,
            relay_mac: None,
            backlog: 256,
            sender: SenderTunables::default(),
            seed: 1,
            radio: FleetRadioConfig::default(),
            truth_file: None,
            state_dir: PathBuf::from("data/meters"),
            utc_offset_h: 1.0,
            no_ack_warn_s: NO_ACK_WARN_AFTER_S,
        }
    }
}

/// The configuration structs of this file and their TOML sections.
const SECTIONS: &[(&str, &str)] = &[
    ("FleetConfig", ""),
    ("SenderTunables", "sender"),
    ("FleetRadioConfig", "radio"),
];

impl FleetConfig {
    /// This configuration as `meters.toml`, each field under its documentation
    /// (the doc comments of this file) as comments; unset ones commented out.
    pub fn example_toml(&self) -> Result<String, ConfigError> {
        gridpow_common::config::example_toml(self, include_str!("config.rs"), SECTIONS)
    }

    /// Defaults with the given key and state directories.
    pub fn new(keys_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        FleetConfig {
            keys_dir: keys_dir.into(),
            state_dir: state_dir.into(),
            ..FleetConfig::default()
        }
    }

    /// Reads `path` (TOML) with `GRIDPOW_METERS__…` overrides and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: FleetConfig = load_toml(path, Some(ENV_PREFIX))?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks ranges; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &str, msg: String| Err(ConfigError::invalid(path, field, msg));
        if let MeterSelection::All(s) = &self.meters {
            if s != "all" {
                return bad(
                    "meters",
                    format!("{s:?}: use \"all\", a list of ids, or {{ from = …, to = … }}"),
                );
            }
        }
        if let MeterSelection::Range { from, to } = self.meters {
            if from > to {
                return bad("meters", format!("range from {from} to {to} is empty"));
            }
        }
        if !(self.interval_s.is_finite() && self.interval_s >= 0.01) {
            return bad("interval_s", "must be at least 0.01 s".into());
        }
        if !BACKLOG_SIZES.contains(&self.backlog) {
            return bad("backlog", format!("must be one of {BACKLOG_SIZES:?}"));
        }
        if !(1..=6).contains(&self.sender.readings_per_frame) {
            return bad("sender.readings_per_frame", "must be 1 to 6".into());
        }
        if self.sender.ack_timeout_ms == Some(0) {
            return bad("sender.ack_timeout_ms", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.radio.loss) {
            return bad("radio.loss", "must be between 0 and 1".into());
        }
        if let Some(m) = &self.relay_mac {
            if gridpow_common::parse_mac(m).is_none() {
                return bad(
                    "relay_mac",
                    format!("{m:?} is not a MAC address like AA:BB:CC:DD:EE:FF"),
                );
            }
        }
        Ok(())
    }

    /// The relay's MAC.
    pub fn relay_mac(&self) -> MacAddr {
        self.relay_mac
            .as_deref()
            .and_then(gridpow_common::parse_mac)
            .unwrap_or_else(|| gridpow_common::virtual_relay_mac(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_common::config::parse_toml;

    #[test]
    fn meter_selection_accepts_all_a_list_or_a_range() {
        let p = Path::new("meters.toml");
        let c: FleetConfig = parse_toml("", p, None, vec![]).unwrap();
        assert!(c.meters.contains(12345));
        assert_eq!(c.interval_s, 10.0);
        assert_eq!(c.relay_mac(), gridpow_common::virtual_relay_mac(1));
        let c: FleetConfig = parse_toml("meters = [1, 5]\n", p, None, vec![]).unwrap();
        assert!(c.meters.contains(5) && !c.meters.contains(2));
        let c: FleetConfig =
            parse_toml("meters = { from = 3, to = 4 }\n", p, None, vec![]).unwrap();
        assert!(c.meters.contains(3) && c.meters.contains(4) && !c.meters.contains(5));
        let c: FleetConfig = parse_toml("meters = \"some\"\n", p, None, vec![]).unwrap();
        assert!(c.validate(p).unwrap_err().to_string().contains("meters"));
    }

    #[test]
    fn unset_timers_are_the_spec_defaults_scaled_to_the_interval() {
        let t = SenderTunables::default();
        // Every 10 s or slower: §6 as it stands.
        assert_eq!(t.sender_config(1, 1, 60.0), SenderConfig::new(1, 1));
        assert_eq!(t.sender_config(1, 1, 10.0), SenderConfig::new(1, 1));
        // Every second: a tenth of each, the first timeout 300 ms.
        let c = t.sender_config(1, 1, 1.0);
        assert_eq!(
            (
                c.start_spread,
                c.phase_spread,
                c.ack_timeout,
                c.max_backoff,
                c.retry_holdoff
            ),
            (
                Duration::from_millis(100),
                Duration::from_millis(500),
                Duration::from_millis(300),
                Duration::from_millis(1200),
                Duration::from_millis(500)
            )
        );
        // Every 0.1 s: the first timeout stays at 100 ms, the cap not below it.
        let c = t.sender_config(1, 1, 0.1);
        assert_eq!(c.ack_timeout, Duration::from_millis(100));
        assert_eq!(c.max_backoff, Duration::from_millis(120));
        // What is set stays as set.
        let set = SenderTunables {
            ack_timeout_ms: Some(50),
            max_backoff_ms: Some(40),
            ..SenderTunables::default()
        };
        let c = set.sender_config(1, 1, 1.0);
        assert_eq!(
            (c.ack_timeout, c.max_backoff),
            (Duration::from_millis(50), Duration::from_millis(40))
        );
        let parsed: FleetConfig = parse_toml(
            "[sender]\nack_timeout_ms = 700\n",
            Path::new("meters.toml"),
            None,
            vec![],
        )
        .unwrap();
        assert_eq!(parsed.sender.ack_timeout_ms, Some(700));
        assert_eq!(parsed.sender.phase_spread_ms, None);
    }

    #[test]
    fn bad_values_name_their_field_and_env_overrides_apply() {
        let p = Path::new("meters.toml");
        let vars = vec![(
            "GRIDPOW_METERS__RADIO__LOSS".to_string(),
            "0.25".to_string(),
        )];
        let c: FleetConfig = parse_toml("backlog = 64\n", p, Some(ENV_PREFIX), vars).unwrap();
        assert_eq!((c.backlog, c.radio.loss), (64, 0.25));
        c.validate(p).unwrap();
        let mut b = c.clone();
        b.backlog = 100;
        assert!(b.validate(p).unwrap_err().to_string().contains("backlog"));
        let mut b = c;
        b.sender.readings_per_frame = 7;
        assert!(b
            .validate(p)
            .unwrap_err()
            .to_string()
            .contains("sender.readings_per_frame"));
    }

    #[test]
    fn the_example_configuration_documents_every_field_and_loads_back_as_the_defaults() {
        let c = FleetConfig::new("keys", "data/meters");
        let text = c.example_toml().unwrap();
        let back: FleetConfig =
            parse_toml(&text, Path::new("example.toml"), None, Vec::new()).unwrap();
        assert_eq!(back, c);
        let undocumented = gridpow_common::config::undocumented_lines(&text);
        assert!(
            undocumented.is_empty(),
            "undocumented: {undocumented:?}
{text}"
        );
        assert!(text.contains("# truth_file = (unset)"), "{text}");
    }
}
