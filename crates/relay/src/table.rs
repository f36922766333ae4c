//! The relay's meter table: a hash map of [`MeterEntry`] built from the relay's
//! key bundle (its meters' hop keys and the meter registry, with MAC bindings).
//! A relay never holds a meter's end-to-end key or the site secret.

use std::collections::{HashMap, HashSet};

use gridpow_keys::KeyDir;
use gridpow_proto::crypto::HopKeys;
use gridpow_proto::ingress::{MeterEntry, MeterTable};
use gridpow_proto::MacAddr;

use crate::snapshot::IngressSnapshot;
use crate::RelayError;

/// Meter entries by id, with the set of registered MACs.
#[derive(Default)]
pub struct HashMeterTable {
    entries: HashMap<u32, MeterEntry>,
    macs: HashSet<MacAddr>,
}

impl HashMeterTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every meter of the registry in `keys` whose hop keys the bundle holds.
    pub fn from_key_dir(keys: &KeyDir) -> Result<Self, RelayError> {
        let mut t = HashMeterTable::new();
        t.load_from(keys)?;
        Ok(t)
    }

    /// Adds meters of the registry not yet in the table, refreshes MAC
    /// bindings and keys of known ones (keeping their replay state), and
    /// drops meters the bundle no longer holds. Returns how many are new.
    ///
    /// A meter's hop keys are those of the key id it is registered with and,
    /// while a site secret is rotated, of the other key id the bundle holds
    /// for it (protocol §3): its frames are taken under either.
    pub fn load_from(&mut self, keys: &KeyDir) -> Result<usize, RelayError> {
        let hop = keys.hop_secrets()?;
        let registry = keys.meters()?;
        let mut added = 0;
        let mut held = HashSet::new();
        for rec in &registry.meters {
            let Some(secret) = hop.get(&(rec.id, rec.key_id)) else {
                tracing::warn!(
                    meter = rec.id,
                    key_id = rec.key_id,
                    "the bundle holds no hop key for this meter; skipped"
                );
                continue;
            };
            held.insert(rec.id);
            let mac = rec.mac_bytes();
            let mut fresh = MeterEntry::new(rec.id, mac, HopKeys::new(rec.key_id, secret));
            let others = hop
                .range((rec.id, 0)..=(rec.id, u8::MAX))
                .filter(|((_, k), _)| *k != rec.key_id);
            for ((_, key_id), secret) in others {
                if let Err(e) = fresh.add_keys(HopKeys::new(*key_id, secret)) {
                    tracing::warn!(
                        meter = rec.id,
                        key_id,
                        "{e}: the bundle holds this meter's hop keys under more key ids than a \
                         relay takes; frames under this one are refused"
                    );
                }
            }
            match self.entries.get_mut(&rec.id) {
                Some(e) => {
                    e.keys = fresh.keys;
                    e.other_keys = fresh.other_keys;
                    e.mac = mac;
                }
                None => {
                    self.entries.insert(rec.id, fresh);
                    added += 1;
                }
            }
        }
        let before = self.entries.len();
        self.entries.retain(|id, _| held.contains(id));
        if self.entries.len() < before {
            tracing::info!(
                removed = before - self.entries.len(),
                "meters no longer in the bundle are refused from now on"
            );
        }
        self.macs = self.entries.values().filter_map(|e| e.mac).collect();
        Ok(added)
    }

    /// Restores replay windows and delivered marks from a recovered state.
    pub fn restore(&mut self, state: &IngressSnapshot) {
        for (id, s) in &state.meters {
            if let Some(e) = self.entries.get_mut(id) {
                e.window = s.window;
                e.delivered = s.delivered;
            }
        }
    }

    /// Number of meters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no meter is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl MeterTable for HashMeterTable {
    fn mac_allowed(&self, mac: &MacAddr) -> bool {
        self.macs.contains(mac)
    }
    fn get(&self, meter_id: u32) -> Option<&MeterEntry> {
        self.entries.get(&meter_id)
    }
    fn get_mut(&mut self, meter_id: u32) -> Option<&mut MeterEntry> {
        self.entries.get_mut(&meter_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_keys::InitOptions;

    fn key_ids(t: &HashMeterTable, id: u32) -> Vec<u8> {
        let e = t.get(id).expect("meter in the table");
        (0..=u8::MAX).filter(|k| e.keys_for(*k).is_some()).collect()
    }

    #[test]
    fn a_reloaded_bundle_adds_and_drops_key_ids_and_meters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let master = KeyDir::new(dir.path().join("keys"));
        master.init(&InitOptions::default()).expect("init");
        master
            .add_meters(&[(1, None), (2, None), (3, None)])
            .expect("meters");
        let bundle = KeyDir::new(dir.path().join("relay-1"));
        let export = |meters: &[u32]| {
            master
                .export_relay_bundle(1, Some(meters), &bundle)
                .expect("export")
        };
        export(&[1, 2, 3]);
        let mut t = HashMeterTable::from_key_dir(&bundle).expect("table");
        assert_eq!((t.len(), key_ids(&t, 3)), (3, vec![1]));
        // A rotation: meter 3 re-provisioned; meter 2 leaves this relay.
        assert_eq!(master.rotate_site().expect("rotate"), 2);
        master.add_meters(&[(3, None)]).expect("re-provision");
        export(&[1, 3]);
        assert_eq!(t.load_from(&bundle).expect("reload"), 0);
        assert_eq!(t.len(), 2, "meter 2 dropped");
        assert!(t.get(2).is_none());
        assert_eq!((key_ids(&t, 1), key_ids(&t, 3)), (vec![1, 2], vec![1, 2]));
        // Key id 1 retired (meter 1 re-provisioned first): both take key id 2 only.
        master.add_meters(&[(1, None)]).expect("re-provision");
        master.retire_site_key(1).expect("retire");
        export(&[1, 3]);
        t.load_from(&bundle).expect("reload");
        assert_eq!((key_ids(&t, 1), key_ids(&t, 3)), (vec![2], vec![2]));
    }
}
