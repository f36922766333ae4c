//! The keys the verifier needs: relay public keys from `relays.toml` (each
//! with the heights it signs: a relay key replaced at height H verifies the
//! blocks below H, the new one those from H) and
//! prepared meter keys derived from the site secrets for every meter in
//! `meters.toml`. Unknown ids trigger a reload of the registry (at most once
//! per [`Keyring::RELOAD_INTERVAL`]) before a block is refused, so meters and
//! relays added while the server runs are picked up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use gridpow_keys::{KeyDir, KeyError};
use gridpow_proto::block::KeyLookup;
use gridpow_proto::crypto::{MeterKeys, RustCrypto};

/// Relay and meter keys, with rate-limited reloading from the key directory.
pub struct Keyring {
    dir: KeyDir,
    /// Per relay, its keys with the lowest height each signs, ascending.
    relays: HashMap<u32, Vec<(u64, VerifyingKey)>>,
    meters: HashMap<(u32, u8), MeterKeys<RustCrypto>>,
    last_meter_reload: Instant,
    last_relay_reload: Instant,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.dir.root())
            .field("relays", &self.relays.len())
            .field("meters", &self.meters.len())
            .finish()
    }
}

impl Keyring {
    /// Least time between two reloads of the same registry.
    pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

    /// Loads relay keys and derives the keys of every registered meter.
    pub fn load(dir: &KeyDir) -> Result<Keyring, KeyError> {
        let now = Instant::now();
        Ok(Keyring {
            dir: dir.clone(),
            relays: load_relays(dir)?,
            meters: load_meters(dir)?,
            last_meter_reload: now,
            last_relay_reload: now,
        })
    }

    /// Whether relay `id` is registered.
    pub fn knows_relay(&self, id: u32) -> bool {
        self.relays.contains_key(&id)
    }

    /// The key of relay `id` that signs blocks at `height`: the registered
    /// key from the highest height not above it. `None` if the relay is not
    /// registered or `height` lies below its first key's.
    pub fn relay_key(&self, id: u32, height: u64) -> Option<&VerifyingKey> {
        gridpow_keys::registry::key_signing(self.relays.get(&id)?, height, |(from, _)| *from)
            .map(|(_, k)| k)
    }

    /// Number of meter keys: one per registered meter and site key id.
    pub fn meter_count(&self) -> usize {
        self.meters.len()
    }

    /// Reloads the meter registry unless it was reloaded less than
    /// [`Keyring::RELOAD_INTERVAL`] ago; returns whether it reloaded.
    pub fn reload_meters(&mut self) -> bool {
        if self.last_meter_reload.elapsed() < Self::RELOAD_INTERVAL {
            return false;
        }
        self.last_meter_reload = Instant::now();
        match load_meters(&self.dir) {
            Ok(m) => {
                tracing::info!(meters = m.len(), "Meter registry reloaded.");
                self.meters = m;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Meter registry reload failed; keeping the old keys.");
                false
            }
        }
    }

    /// Reloads the relay registry, rate-limited like [`Keyring::reload_meters`].
    pub fn reload_relays(&mut self) -> bool {
        if self.last_relay_reload.elapsed() < Self::RELOAD_INTERVAL {
            return false;
        }
        self.last_relay_reload = Instant::now();
        match load_relays(&self.dir) {
            Ok(r) => {
                tracing::info!(relays = r.len(), "Relay registry reloaded.");
                self.relays = r;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "Relay registry reload failed; keeping the old keys.");
                false
            }
        }
    }
}

impl KeyLookup<RustCrypto> for Keyring {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.meters.get(&(meter_id, key_id))
    }
}

fn load_relays(dir: &KeyDir) -> Result<HashMap<u32, Vec<(u64, VerifyingKey)>>, KeyError> {
    if !dir.relays_path().exists() {
        return Ok(HashMap::new());
    }
    let reg = dir.relays()?;
    // `RelayRegistry::load` already refused entries without a valid key, and
    // sorted them by relay and height.
    let mut out: HashMap<u32, Vec<(u64, VerifyingKey)>> = HashMap::new();
    for r in &reg.relays {
        if let Some(k) = r.verifying_key() {
            out.entry(r.id).or_default().push((r.from_height, k));
        }
    }
    Ok(out)
}

fn load_meters(dir: &KeyDir) -> Result<HashMap<(u32, u8), MeterKeys<RustCrypto>>, KeyError> {
    let site = dir.site()?;
    let reg = if dir.meters_path().exists() {
        dir.meters()?
    } else {
        Default::default()
    };
    // Every key id still in site.toml, not only the one each meter is
    // registered with: a meter re-provisioned with a newer key id sends under
    // the old one until it is flashed (key rotation, `gridpow keys rotate-site`).
    let key_ids: Vec<u8> = site.key_ids().collect();
    let mut out = HashMap::with_capacity(reg.meters.len() * key_ids.len());
    for m in &reg.meters {
        for &k in &key_ids {
            if let Some(secret) = site.meter_secret(m.id, k) {
                out.insert((m.id, k), MeterKeys::new(&RustCrypto, k, &secret));
            }
        }
        match site.meter_secret(m.id, m.key_id) {
            Some(_) => {}
            None => tracing::warn!(
                meter = m.id,
                key_id = m.key_id,
                "Meter's key id is not in site.toml; its frames will be refused."
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_replaced_relay_key_verifies_the_heights_below_the_rotation_and_the_new_one_those_above() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&gridpow_keys::InitOptions::default()).unwrap();
        let old = kd.relay_signing_key(1).unwrap().verifying_key();
        let keys = Keyring::load(&kd).unwrap();
        let new = kd.rotate_relay_key(1, 40).unwrap();
        assert_ne!(old, new);
        assert_eq!(kd.relay_signing_key(1).unwrap().verifying_key(), new);
        // Loaded before the rotation: the old key for every height.
        assert_eq!(keys.relay_key(1, 40), Some(&old));
        let keys = Keyring::load(&kd).unwrap();
        assert_eq!(keys.relay_key(1, 0), Some(&old));
        assert_eq!(keys.relay_key(1, 39), Some(&old));
        assert_eq!(keys.relay_key(1, 40), Some(&new));
        assert_eq!(keys.relay_key(1, u64::MAX), Some(&new));
        assert!(keys.knows_relay(1) && !keys.knows_relay(2));
        assert_eq!(keys.relay_key(2, 0), None);
        // Not at or below the current key's height.
        let e = kd.rotate_relay_key(1, 40).unwrap_err().to_string();
        assert!(e.contains("above"), "{e}");
        assert_eq!(kd.relay_signing_key(1).unwrap().verifying_key(), new);
    }
}
