//! Role bundles: what each service's key directory may hold, exported from
//! the operator's master directory, and the check that refuses a directory
//! holding a secret its role must not have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gridpow_common::config::{load_toml, ConfigError};
use gridpow_common::durable::write_file;
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_proto::crypto::HopSecret;
use serde::{Deserialize, Serialize};

use crate::{io_err, KeyDir, KeyError};

/// `hop-keys.toml` of a relay bundle: the hop secrets of the relay's meters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct HopKeyFile {
    #[serde(default, rename = "meter")]
    meters: Vec<HopKeyEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HopKeyEntry {
    id: u32,
    key_id: u8,
    hop_secret: String,
}

/// What a role bundle export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSummary {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// Meters whose hop keys a relay bundle carries.
    pub meters: usize,
}

/// The role a service plays, for [`KeyDir::check_role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Relay `id`: its signing key, TLS identity, the server's public key, hop keys.
    Relay(u32),
    /// A grid server: site secrets, receipt key, relays' public keys, TLS identity.
    Server,
}

impl KeyDir {
    /// Path of a relay bundle's hop keys.
    pub fn hop_keys_path(&self) -> PathBuf {
        self.root.join("hop-keys.toml")
    }

    /// The hop secrets of a relay bundle, by (meter id, key id).
    pub fn hop_secrets(&self) -> Result<BTreeMap<(u32, u8), HopSecret>, KeyError> {
        let path = self.hop_keys_path();
        let f: HopKeyFile = load_toml(&path, None)?;
        let mut out = BTreeMap::new();
        for (i, m) in f.meters.iter().enumerate() {
            let bytes: [u8; 32] = hex::decode(&m.hop_secret)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        &path,
                        &format!("meter[{i}].hop_secret"),
                        "not 64 hex digits".into(),
                    )
                })?;
            out.insert((m.id, m.key_id), HopSecret(bytes));
        }
        Ok(out)
    }

    /// The (meter, key id) hop keys for a relay that lists at most
    /// `max_entries` of them (an ESP32 relay's blob): every meter under the
    /// key id it is registered with, then under its other key id (a site
    /// rotation) while they fit. Returns them by meter and key id, and how
    /// many other-key-id entries did not fit: those meters' frames are
    /// refused under their old key id until they are flashed with the new.
    pub fn relay_hop_entries(
        &self,
        max_entries: usize,
    ) -> Result<(Vec<RelayMeter>, usize), KeyError> {
        let registry = self.meters()?;
        let mut registered = Vec::new();
        let mut other = Vec::new();
        for ((meter_id, key_id), secret) in self.hop_secrets()? {
            let rec = registry.get(meter_id);
            // meters.toml's MACs were checked when it was read.
            let entry = RelayMeter {
                meter_id,
                key_id,
                mac: rec.and_then(|r| r.mac_bytes()),
                secret,
            };
            if rec.is_none_or(|r| r.key_id == key_id) {
                registered.push(entry);
            } else {
                other.push(entry);
            }
        }
        let room = max_entries.saturating_sub(registered.len());
        let left_out = other.len().saturating_sub(room);
        other.truncate(room);
        registered.append(&mut other);
        registered.sort_by_key(|e| (e.meter_id, e.key_id));
        Ok((registered, left_out))
    }

    /// Refuses to serve `role` from this directory if it holds a secret the
    /// role must not have, naming the file and the reason.
    pub fn check_role(&self, role: Role) -> Result<(), KeyError> {
        if !self.root.is_dir() {
            let make = match role {
                Role::Relay(id) => format!(
                    "`gridpow keys init --dir keys` (once per site), then \
                     `gridpow keys export relay --dir keys --id {id} --out {}`",
                    self.root.display()
                ),
                Role::Server => format!(
                    "`gridpow keys init --dir keys` (once per site), then \
                     `gridpow keys export server --dir keys --out {}`",
                    self.root.display()
                ),
            };
            return Err(KeyError::MissingDir {
                dir: self.root.clone(),
                make,
            });
        }
        let forbid = |path: PathBuf, role: &'static str, why: &'static str| {
            if path.exists() {
                Err(KeyError::ForbiddenSecret { path, role, why })
            } else {
                Ok(())
            }
        };
        let ca_key = self.ca_cert_path().with_file_name("ca.key");
        match role {
            Role::Relay(id) => {
                forbid(
                    self.site_path(),
                    "relay",
                    "the site secret derives every meter's end-to-end key: a stolen relay could forge and read every reading",
                )?;
                forbid(
                    self.server_key_path(),
                    "relay",
                    "the server's receipt key would let it confirm its own blocks",
                )?;
                forbid(ca_key, "relay", "the CA key issues any TLS identity")?;
                for other in self.relay_key_files()? {
                    if other != self.relay_key_path(id) {
                        forbid(other, "relay", "another relay's signing key")?;
                    }
                }
            }
            Role::Server => {
                forbid(
                    ca_key,
                    "server",
                    "the CA key issues any TLS identity, including relays' and the broker's",
                )?;
                for key in self.relay_key_files()? {
                    forbid(
                        key,
                        "server",
                        "a relay's private signing key: whoever leaks the server directory could sign blocks as that relay",
                    )?;
                }
                forbid(
                    self.hop_keys_path(),
                    "server",
                    "relay hop keys belong in relay bundles",
                )?;
            }
        }
        Ok(())
    }

    fn relay_key_files(&self) -> Result<Vec<PathBuf>, KeyError> {
        let dir = self.root.join("relays");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| io_err(&dir, e))?;
            // `R.key`, or `R.key.new` staged by an interrupted rotation.
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".key") || name.ends_with(".key.new") {
                out.push(e.path());
            }
        }
        out.sort();
        Ok(out)
    }

    fn copy_into(&self, out: &KeyDir, rel: &Path, secret: bool) -> Result<PathBuf, KeyError> {
        let from = self.root.join(rel);
        let data = std::fs::read(&from).map_err(|e| io_err(&from, e))?;
        let to = out.root.join(rel);
        write_file(&to, &data, secret).map_err(|e| io_err(&to, e))?;
        Ok(rel.to_path_buf())
    }

    /// Copies `files` (paths inside this directory, and whether each is secret)
    /// into the bundle `out`, which must be another directory; returns their
    /// paths relative to the bundle.
    fn copy_bundle(
        &self,
        out: &KeyDir,
        files: &[(PathBuf, bool)],
    ) -> Result<Vec<PathBuf>, KeyError> {
        if out.root == self.root {
            return Err(KeyError::Invalid(
                "a bundle must go to a directory other than the master key directory".into(),
            ));
        }
        files
            .iter()
            .map(|(path, secret)| {
                let rel = path.strip_prefix(&self.root).unwrap_or(path);
                self.copy_into(out, rel, *secret)
            })
            .collect()
    }

    /// Exports relay `id`'s bundle into `out`: its signing key, TLS client
    /// identity, the CA certificate, the server's public key, the registry of
    /// its meters and their hop secrets (`meters`; all registered meters when
    /// `None`). Never the site secret, end-to-end keys or other relays' keys.
    ///
    /// Each meter's hop secrets are there under every site key id still
    /// listed (two at most, during a rotation), so the relay takes the
    /// meter's frames before and after it is flashed with the new key id,
    /// as the grid server does.
    pub fn export_relay_bundle(
        &self,
        id: u32,
        meters: Option<&[u32]>,
        out: &KeyDir,
    ) -> Result<BundleSummary, KeyError> {
        let site = self.site()?;
        let mut registry = self.meters()?;
        if let Some(ids) = meters {
            let wanted: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
            if let Some(missing) = wanted.iter().find(|m| registry.get(**m).is_none()) {
                return Err(KeyError::Invalid(format!(
                    "meter {missing} is not registered"
                )));
            }
            registry.meters.retain(|m| wanted.contains(&m.id));
        }
        self.check_key_id_room(&site, 0)?;
        let mut hop = HopKeyFile::default();
        for rec in &registry.meters {
            if site.meter_secret(rec.id, rec.key_id).is_none() {
                return Err(KeyError::Invalid(format!(
                    "meter {} names key id {} which site.toml does not have",
                    rec.id, rec.key_id
                )));
            }
            for key_id in site.key_ids() {
                if let Some(secret) = site.meter_secret(rec.id, key_id) {
                    hop.meters.push(HopKeyEntry {
                        id: rec.id,
                        key_id,
                        hop_secret: hex::encode(secret.hop.0),
                    });
                }
            }
        }
        let tls = self.tls_files(&format!("relay-{id}"));
        let mut files = self.copy_bundle(
            out,
            &[
                (self.relay_key_path(id), true),
                (tls.cert, false),
                (tls.key, true),
                (self.ca_cert_path(), false),
                (self.server_pub_path(), false),
            ],
        )?;
        registry.save(&out.meters_path())?;
        files.push(PathBuf::from("meters.toml"));
        let text = toml::to_string_pretty(&hop).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let text = format!(
            "# gridpow relay {id}: hop keys of its meters. SECRET: they authenticate frames and ACKs,\n\
             # but open and make no reading (end-to-end keys stay with the grid server).\n{text}"
        );
        write_file(&out.hop_keys_path(), text.as_bytes(), true)
            .map_err(|e| io_err(&out.hop_keys_path(), e))?;
        files.push(PathBuf::from("hop-keys.toml"));
        Ok(BundleSummary {
            dir: out.root.clone(),
            files,
            meters: registry.meters.len(),
        })
    }

    /// Exports a grid server's bundle into `out`: site secrets (from which it
    /// derives meters' keys), its receipt key pair, the relay and meter
    /// registries (relays' public keys only), the CA certificate and the TLS
    /// client identity `client` (`server-<n>`).
    pub fn export_server_bundle(
        &self,
        client: &str,
        out: &KeyDir,
    ) -> Result<BundleSummary, KeyError> {
        let tls = self.tls_files(client);
        self.log_note_seed()?;
        let files = self.copy_bundle(
            out,
            &[
                (self.site_path(), true),
                (self.server_key_path(), true),
                (self.log_key_path(), true),
                (self.server_pub_path(), false),
                (self.relays_path(), false),
                (self.meters_path(), false),
                (self.ca_cert_path(), false),
                (tls.cert, false),
                (tls.key, true),
            ],
        )?;
        Ok(BundleSummary {
            dir: out.root.clone(),
            files,
            meters: 0,
        })
    }

    /// Exports the broker's bundle into `out`: the CA certificate (to check
    /// client certificates), the broker's TLS identity and the ACL.
    pub fn export_broker_bundle(&self, out: &KeyDir) -> Result<BundleSummary, KeyError> {
        let tls = self.broker_tls();
        let mut files = self.copy_bundle(
            out,
            &[
                (self.ca_cert_path(), false),
                (tls.cert, false),
                (tls.key, true),
            ],
        )?;
        let acl = out.root.join("mosquitto.acl");
        write_file(&acl, self.mosquitto_acl()?.as_bytes(), false).map_err(|e| io_err(&acl, e))?;
        files.push(PathBuf::from("mosquitto.acl"));
        Ok(BundleSummary {
            dir: out.root.clone(),
            files,
            meters: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitOptions;

    #[test]
    fn relay_bundle_holds_hop_keys_only_and_roles_refuse_foreign_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("master"));
        kd.init(&InitOptions {
            relay_ids: vec![1, 2],
            ..InitOptions::default()
        })
        .unwrap();
        kd.add_meters(&[(1, None), (2, None), (3, None)]).unwrap();
        // The master directory is refused by both services.
        assert!(matches!(
            kd.check_role(Role::Relay(1)),
            Err(KeyError::ForbiddenSecret { role: "relay", .. })
        ));
        assert!(matches!(
            kd.check_role(Role::Server),
            Err(KeyError::ForbiddenSecret { role: "server", .. })
        ));
        let relay = KeyDir::new(dir.path().join("relay-1"));
        let sum = kd.export_relay_bundle(1, Some(&[1, 3]), &relay).unwrap();
        assert_eq!(sum.meters, 2);
        relay.check_role(Role::Relay(1)).unwrap();
        assert!(!relay.site_path().exists() && !relay.server_key_path().exists());
        assert!(relay.relay_key_path(1).exists() && !relay.relay_key_path(2).exists());
        let hop = relay.hop_secrets().unwrap();
        let site = kd.site().unwrap();
        for m in [1, 3] {
            let full = site.meter_secret(m, 1).unwrap();
            assert!(hop[&(m, 1)] == full.hop);
        }
        assert!(!hop.contains_key(&(2, 1)));
        // During a site rotation the bundle holds both key ids' hop secrets,
        // the meter registered under the new one.
        assert_eq!(kd.rotate_site().unwrap(), 2);
        kd.add_meters(&[(3, None)]).unwrap();
        let rotated = KeyDir::new(dir.path().join("relay-1-rotated"));
        let sum = kd.export_relay_bundle(1, Some(&[1, 3]), &rotated).unwrap();
        assert_eq!(sum.meters, 2, "meters, not hop entries");
        let hop = rotated.hop_secrets().unwrap();
        let site = kd.site().unwrap();
        let keys: Vec<(u32, u8)> = hop.keys().copied().collect();
        assert_eq!(keys, vec![(1, 1), (1, 2), (3, 1), (3, 2)]);
        assert!(hop[&(3, 2)] == site.meter_secret(3, 2).unwrap().hop);
        assert_eq!(rotated.meters().unwrap().get(3).unwrap().key_id, 2);
        // A relay with room for three entries gets every registered key id
        // and the other key id of meter 1 only.
        let (entries, left_out) = rotated.relay_hop_entries(3).unwrap();
        let got: Vec<(u32, u8)> = entries.iter().map(|e| (e.meter_id, e.key_id)).collect();
        assert_eq!((got, left_out), (vec![(1, 1), (1, 2), (3, 2)], 1));
        // No end-to-end key in any file of either bundle.
        for (dir, f) in [&relay, &rotated]
            .iter()
            .flat_map(|d| sum.files.iter().map(move |f| (d, f)))
        {
            let text = std::fs::read(dir.root().join(f)).unwrap();
            for (m, key_id) in [1, 2, 3].into_iter().flat_map(|m| [(m, 1), (m, 2)]) {
                let e2e = hex::encode(site.meter_secret(m, key_id).unwrap().e2e.0);
                assert!(
                    !text.windows(e2e.len()).any(|w| w == e2e.as_bytes()),
                    "{}",
                    f.display()
                );
            }
        }
        // A relay refuses another relay's bundle (its own key is missing) and
        // a bundle that grew another relay's key.
        kd.copy_into(&relay, Path::new("relays/2.key"), true)
            .unwrap();
        assert!(matches!(
            relay.check_role(Role::Relay(1)),
            Err(KeyError::ForbiddenSecret { .. })
        ));
        let server = KeyDir::new(dir.path().join("server"));
        kd.export_server_bundle("server-1", &server).unwrap();
        server.check_role(Role::Server).unwrap();
        assert!(server.site().is_ok() && server.server_signing_key().is_ok());
        assert!(server.relays().unwrap().get(2).is_some());
        assert!(!server.relay_key_path(1).exists());
        let broker = KeyDir::new(dir.path().join("broker"));
        kd.export_broker_bundle(&broker).unwrap();
        assert!(broker.broker_tls().key.exists() && !broker.site_path().exists());
        // A site.toml listing a third key id (written by hand: rotate-site
        // refuses it) gives relays no bundle.
        let mut site_text = std::fs::read_to_string(kd.site_path()).unwrap();
        site_text.push_str(&format!(
            "\n[[key]]\nid = 9\nsecret = \"{}\"\n",
            "ab".repeat(32)
        ));
        write_file(&kd.site_path(), site_text.as_bytes(), true).unwrap();
        assert_eq!(kd.site().unwrap().key_ids().count(), 3);
        let e = kd
            .export_relay_bundle(1, None, &KeyDir::new(dir.path().join("relay-1-three")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retire-site"), "{e}");
    }
}
