//! Registries: which meters and relays exist (`meters.toml`, `relays.toml` in
//! the key directory). They hold no secrets: meter keys derive from the site
//! secret, relay entries carry public keys.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use gridpow_common::config::{load_toml, ConfigError};

/// One meter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRecord {
    /// Meter id (unique per site).
    pub id: u32,
    /// Site key id its secret derives from.
    pub key_id: u8,
    /// Registered MAC address (`AA:BB:CC:DD:EE:FF`), if bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Free text (address, customer reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl MeterRecord {
    /// The MAC as bytes, if registered and valid.
    pub fn mac_bytes(&self) -> Option<gridpow_proto::MacAddr> {
        self.mac.as_deref().and_then(gridpow_common::parse_mac)
    }
}

/// `meters.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterRegistry {
    /// The meters, by id.
    #[serde(default, rename = "meter")]
    pub meters: Vec<MeterRecord>,
}

impl MeterRegistry {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let reg: MeterRegistry = load_toml(path, None)?;
        reg.validate(path)?;
        Ok(reg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut seen = BTreeMap::new();
        for (i, m) in self.meters.iter().enumerate() {
            if seen.insert(m.id, i).is_some() {
                return Err(ConfigError::invalid(
                    path,
                    &format!("meter[{i}].id"),
                    format!("meter id {} appears twice", m.id),
                ));
            }
            if let Some(mac) = &m.mac {
                if gridpow_common::parse_mac(mac).is_none() {
                    return Err(ConfigError::invalid(
                        path,
                        &format!("meter[{i}].mac"),
                        format!("{mac:?} is not a MAC address like AA:BB:CC:DD:EE:FF"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes `path` (no secrets inside, so default permissions).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::invalid(path, "", e.to_string()))?;
        gridpow_common::durable::write_file(path, text.as_bytes(), false)
            .map_err(|e| ConfigError::io(path, e))
    }

    /// The meter with `id`.
    pub fn get(&self, id: u32) -> Option<&MeterRecord> {
        self.meters.iter().find(|m| m.id == id)
    }

    /// Adds or replaces a meter; keeps the list sorted by id.
    pub fn upsert(&mut self, rec: MeterRecord) {
        match self.meters.binary_search_by_key(&rec.id, |m| m.id) {
            Ok(i) => self.meters[i] = rec,
            Err(i) => self.meters.insert(i, rec),
        }
    }
}

/// One relay: its id and the public key that verifies its blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// Relay id.
    pub id: u32,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl RelayRecord {
    /// The verifying key, if the hex is a valid key: canonical and not of
    /// small order (protocol §9.2).
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(&self.public_key).ok()?.try_into().ok()?;
        gridpow_proto::crypto::strict_public_key(&bytes).ok()
    }
}

/// `relays.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegistry {
    /// The relays.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayRecord>,
}

impl RelayRegistry {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let reg: RelayRegistry = load_toml(path, None)?;
        for (i, r) in reg.relays.iter().enumerate() {
            if r.verifying_key().is_none() {
                return Err(ConfigError::invalid(
                    path,
                    &format!("relay[{i}].public_key"),
                    "not a 64-hex-digit Ed25519 public key".into(),
                ));
            }
        }
        Ok(reg)
    }

    /// Writes `path`.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::invalid(path, "", e.to_string()))?;
        gridpow_common::durable::write_file(path, text.as_bytes(), false)
            .map_err(|e| ConfigError::io(path, e))
    }

    /// The relay with `id`.
    pub fn get(&self, id: u32) -> Option<&RelayRecord> {
        self.relays.iter().find(|r| r.id == id)
    }

    /// Adds or replaces a relay.
    pub fn upsert(&mut self, rec: RelayRecord) {
        match self.relays.binary_search_by_key(&rec.id, |r| r.id) {
            Ok(i) => self.relays[i] = rec,
            Err(i) => self.relays.insert(i, rec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_meter_ids_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meters.toml");
        std::fs::write(
            &p,
            "[[meter]]\nid = 1\nkey_id = 1\n[[meter]]\nid = 1\nkey_id = 1\n",
        )
        .unwrap();
        let e = MeterRegistry::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("meter[1].id") && e.contains("meters.toml"),
            "{e}"
        );
    }

    #[test]
    fn registry_round_trips_and_stays_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meters.toml");
        let mut r = MeterRegistry::default();
        r.upsert(MeterRecord {
            id: 5,
            key_id: 1,
            mac: Some("02:00:00:00:00:05".into()),
            label: None,
        });
        r.upsert(MeterRecord {
            id: 2,
            key_id: 1,
            mac: None,
            label: Some("flat 2".into()),
        });
        r.save(&p).unwrap();
        let back = MeterRegistry::load(&p).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.meters[0].id, 2);
    }
}
