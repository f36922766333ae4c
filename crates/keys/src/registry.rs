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

/// One relay signing key: the relay's id, the public key that verifies its
/// blocks, and the lowest height it signs. A relay whose key was replaced
/// (`gridpow keys rotate-relay`) has one record per key; each key signs from
/// its `from_height` up to the next record's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// Relay id.
    pub id: u32,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Lowest block height this key signs (0: from genesis).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub from_height: u64,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RelayRecord {
    /// The verifying key, if the hex is a valid key: canonical and not of
    /// small order (protocol §9.2).
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(&self.public_key).ok()?.try_into().ok()?;
        gridpow_proto::crypto::strict_public_key(&bytes).ok()
    }
}

/// Of one relay's keys, sorted by the height each signs from, the key that
/// signs `height`: the one from the highest height not above it. `None`
/// below the first. The one rule for the registry, the grid server's keyring
/// and every verifier that picks a relay key by height.
pub fn key_signing<T>(keys: &[T], height: u64, from_height: impl Fn(&T) -> u64) -> Option<&T> {
    keys.iter().rev().find(|k| from_height(k) <= height)
}

/// `relays.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegistry {
    /// The relays.
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelayRecord>,
}

impl RelayRegistry {
    /// Reads `path`: every key valid, no two records of one relay from the
    /// same height; records are kept sorted by relay and height.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut reg: RelayRegistry = load_toml(path, None)?;
        let mut seen = BTreeMap::new();
        for (i, r) in reg.relays.iter().enumerate() {
            if r.verifying_key().is_none() {
                return Err(ConfigError::invalid(
                    path,
                    &format!("relay[{i}].public_key"),
                    "not a 64-hex-digit Ed25519 public key".into(),
                ));
            }
            if let Some(j) = seen.insert((r.id, r.from_height), i) {
                return Err(ConfigError::invalid(
                    path,
                    &format!("relay[{i}].from_height"),
                    format!(
                        "relay {} has two keys from height {} (relay[{j}] too)",
                        r.id, r.from_height
                    ),
                ));
            }
        }
        reg.relays.sort_by_key(|r| (r.id, r.from_height));
        Ok(reg)
    }

    /// Writes `path`.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| ConfigError::invalid(path, "", e.to_string()))?;
        gridpow_common::durable::write_file(path, text.as_bytes(), false)
            .map_err(|e| ConfigError::io(path, e))
    }

    /// The current key of relay `id`: the record from the highest height.
    pub fn get(&self, id: u32) -> Option<&RelayRecord> {
        self.relays.iter().rev().find(|r| r.id == id)
    }

    /// The key of relay `id` that signs `height`: the record from the
    /// highest height not above it. `None` for an unknown relay or a height
    /// below its first key's.
    pub fn key_for(&self, id: u32, height: u64) -> Option<&RelayRecord> {
        // `relays` is kept sorted by relay and height (load, upsert, rotate).
        let start = self.relays.partition_point(|r| r.id < id);
        let end = self.relays.partition_point(|r| r.id <= id);
        key_signing(self.relays.get(start..end)?, height, |r| r.from_height)
    }

    /// Relay ids, ascending, each once.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.relays.iter().map(|r| r.id).collect();
        ids.dedup();
        ids
    }

    /// Adds a relay, or replaces every record of it (its whole key history)
    /// with `rec`.
    pub fn upsert(&mut self, rec: RelayRecord) {
        self.relays.retain(|r| r.id != rec.id);
        let at = self.relays.partition_point(|r| r.id < rec.id);
        self.relays.insert(at, rec);
    }

    /// Adds `rec` as relay `rec.id`'s key from `rec.from_height` on; the
    /// relay must exist and the height lie above its current key's.
    pub fn rotate(&mut self, rec: RelayRecord) -> Result<(), String> {
        let Some(current) = self.get(rec.id) else {
            return Err(format!("relay {} is not registered", rec.id));
        };
        if rec.from_height <= current.from_height {
            return Err(format!(
                "relay {}'s current key signs from height {}; a new key must start above it",
                rec.id, current.from_height
            ));
        }
        let at = self
            .relays
            .partition_point(|r| (r.id, r.from_height) < (rec.id, rec.from_height));
        self.relays.insert(at, rec);
        Ok(())
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

    #[test]
    fn a_rotated_relay_key_signs_from_its_height_and_the_old_one_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("relays.toml");
        let key = |b: u8| {
            hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[b; 32])
                    .verifying_key()
                    .to_bytes(),
            )
        };
        let rec = |id, b, from_height| RelayRecord {
            id,
            public_key: key(b),
            from_height,
            label: None,
        };
        let mut r = RelayRegistry::default();
        r.upsert(rec(2, 5, 0));
        r.upsert(rec(1, 1, 0));
        r.rotate(rec(1, 2, 100)).unwrap();
        r.rotate(rec(1, 3, 250)).unwrap();
        assert!(r.rotate(rec(1, 4, 250)).unwrap_err().contains("above"));
        assert!(r
            .rotate(rec(9, 4, 1))
            .unwrap_err()
            .contains("not registered"));
        r.save(&p).unwrap();
        let back = RelayRegistry::load(&p).unwrap();
        assert_eq!(back, r);
        let signer = |h| back.key_for(1, h).map(|k| k.public_key.clone());
        assert_eq!(signer(0), Some(key(1)));
        assert_eq!(signer(99), Some(key(1)));
        assert_eq!(signer(100), Some(key(2)));
        assert_eq!(signer(249), Some(key(2)));
        assert_eq!(signer(u64::MAX), Some(key(3)));
        assert_eq!(back.get(1).unwrap().public_key, key(3));
        assert_eq!(back.key_for(2, 7).unwrap().public_key, key(5));
        assert_eq!(back.ids(), vec![1, 2]);
        // A history that names one height twice is refused, naming the field.
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("from_height = 250", "from_height = 100")).unwrap();
        let e = RelayRegistry::load(&p).unwrap_err().to_string();
        assert!(e.contains("from_height") && e.contains("two keys"), "{e}");
        // Re-adding the relay replaces its history with one key.
        r.upsert(rec(1, 9, 0));
        assert_eq!(r.key_for(1, 300).unwrap().public_key, key(9));
        assert_eq!(r.relays.len(), 2);
    }
}
