//! The key directory that `gridpow keys init` creates and every service
//! reads, the meter and relay [`registry`], the role bundles exported from it,
//! and the provisioning material of meters and relays.
//!
//! ```text
//! DIR/site.toml            0600  site secrets by key id (meter keys derive from these)
//! DIR/meters.toml                meter registry (no secrets)
//! DIR/relays.toml                relay registry with public keys
//! DIR/relays/<id>.key      0600  relay Ed25519 signing key (hex seed)
//! DIR/server.key           0600  grid server Ed25519 key that signs commit receipts
//! DIR/server.pub                 its public key (relays verify receipts with it)
//! DIR/log-note.key         0600  the transparency log's Ed25519 note key (hex seed): signs checkpoints
//! DIR/meters/<id>.toml     0600  what a meter is flashed with (written by add-meter)
//! DIR/tls/ca.pem, ca.key   CA for MQTT TLS (ca.key 0600)
//! DIR/tls/broker.pem/.key  broker certificate (localhost, 127.0.0.1 and given names)
//! DIR/tls/<client>.pem/.key  client certificates (relay-<id>, server-<n>) for mTLS
//! ```
//!
//! That is the operator's master directory. Services run from **role bundles**
//! exported from it ([`KeyDir::export_relay_bundle`], [`KeyDir::export_server_bundle`],
//! [`KeyDir::export_broker_bundle`]), each holding only what its role needs, in
//! the same layout; a relay bundle adds `hop-keys.toml` (0600), its meters'
//! hop secrets. [`KeyDir::check_role`] refuses a directory that holds a secret
//! its role must not have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_proto::crypto::{derive_meter_secret, MeterSecret, RustCrypto, SiteSecret};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use gridpow_common::config::{load_toml, ConfigError};
use gridpow_common::durable::write_file;
use gridpow_common::format_mac;
use gridpow_common::tls::{load_certs, load_key, TlsError};

mod acl;
mod bundle;
pub mod registry;
mod renew;

pub use bundle::{BundleSummary, Role};
pub use renew::{Renewed, DEFAULT_RENEW_DAYS};

use crate::registry::{MeterRecord, MeterRegistry, RelayRecord, RelayRegistry};

/// Why a key directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file is missing, unreadable or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file does not hold a valid key.
    #[error("{path}: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    /// The directory already holds keys and `init` would overwrite them.
    #[error("{0} already holds a site secret; refusing to overwrite it (use another directory)")]
    AlreadyInitialised(PathBuf),
    /// A request that cannot be honoured.
    #[error("{0}")]
    Invalid(String),
    /// A service's key directory does not exist.
    #[error("keys directory {dir} does not exist (setting `keys_dir`); make it with {make}")]
    MissingDir {
        /// The directory.
        dir: PathBuf,
        /// The commands that make it for the service's role.
        make: String,
    },
    /// A service's key directory holds a secret its role must not have.
    #[error("{path}: a {role} must not hold this file ({why}); run the {role} from a bundle made with `gridpow keys export {role}`")]
    ForbiddenSecret {
        /// The offending file.
        path: PathBuf,
        /// The role that refused it ("relay", "server").
        role: &'static str,
        /// Why the role must not hold it.
        why: &'static str,
    },
}

/// Meter `id`'s registry record under `key_id`: a meter registered before
/// keeps its MAC binding (unless `mac` gives a new one) and its label, so
/// re-provisioning it with a new site key id loses neither.
fn reprovisioned(
    reg: &MeterRegistry,
    id: u32,
    key_id: u8,
    mac: Option<gridpow_proto::MacAddr>,
) -> MeterRecord {
    let old = reg.get(id);
    MeterRecord {
        id,
        key_id,
        mac: mac
            .map(|m| format_mac(&m))
            .or_else(|| old.and_then(|o| o.mac.clone())),
        label: old.and_then(|o| o.label.clone()),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> KeyError {
    KeyError::Config(ConfigError::io(path, e))
}

/// `site.toml`: the site secrets by key id.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SiteFile {
    /// Key id new meters get.
    current_key_id: u8,
    #[serde(rename = "key")]
    keys: Vec<SiteKeyEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SiteKeyEntry {
    id: u8,
    secret: String,
}

/// The site secrets, by key id.
#[derive(Clone)]
pub struct SiteKeyring {
    /// Key id new meters are provisioned with.
    pub current_key_id: u8,
    secrets: BTreeMap<u8, SiteSecret>,
}

impl SiteKeyring {
    /// A keyring with one secret.
    pub fn single(key_id: u8, secret: SiteSecret) -> Self {
        SiteKeyring {
            current_key_id: key_id,
            secrets: BTreeMap::from([(key_id, secret)]),
        }
    }

    /// The secret of meter `meter_id` under `key_id`, if that key id exists.
    pub fn meter_secret(&self, meter_id: u32, key_id: u8) -> Option<MeterSecret> {
        self.secrets
            .get(&key_id)
            .map(|s| derive_meter_secret(&RustCrypto, s, key_id, meter_id))
    }

    /// Key ids present.
    pub fn key_ids(&self) -> impl Iterator<Item = u8> + '_ {
        self.secrets.keys().copied()
    }
}

impl std::fmt::Debug for SiteKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteKeyring")
            .field("current_key_id", &self.current_key_id)
            .field("key_ids", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a meter is flashed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterProvisioning {
    /// Meter id.
    pub meter_id: u32,
    /// Key id.
    pub key_id: u8,
    /// The 48-byte meter secret, hex (hop secret ‖ end-to-end key). SECRET.
    pub meter_secret: String,
    /// The relay's MAC, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_mac: Option<String>,
    /// Wi-Fi channel of the relay (1–14).
    pub channel: u8,
    /// Reporting interval in seconds.
    pub interval_s: u32,
}

/// Options of `keys init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Relays to create signing keys and client certificates for.
    pub relay_ids: Vec<u32>,
    /// Extra DNS names or IP addresses for the broker certificate.
    pub broker_names: Vec<String>,
    /// Number of grid-server client certificates (server-1 … server-N).
    pub servers: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            relay_ids: vec![1],
            broker_names: Vec::new(),
            servers: 1,
        }
    }
}

/// Paths to a TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A key directory.
#[derive(Clone, Debug)]
pub struct KeyDir {
    root: PathBuf,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

impl KeyDir {
    /// Opens an existing or future key directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        KeyDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `site.toml`.
    pub fn site_path(&self) -> PathBuf {
        self.root.join("site.toml")
    }
    /// Path of `meters.toml`.
    pub fn meters_path(&self) -> PathBuf {
        self.root.join("meters.toml")
    }
    /// Path of `relays.toml`.
    pub fn relays_path(&self) -> PathBuf {
        self.root.join("relays.toml")
    }
    /// Path of relay `id`'s signing key.
    pub fn relay_key_path(&self, id: u32) -> PathBuf {
        self.root.join("relays").join(format!("{id}.key"))
    }
    /// Path of the server's receipt signing key.
    pub fn server_key_path(&self) -> PathBuf {
        self.root.join("server.key")
    }
    /// Path of the server's public key.
    pub fn server_pub_path(&self) -> PathBuf {
        self.root.join("server.pub")
    }
    /// Path of the transparency log's note key (every server sharing one
    /// database signs that one log's checkpoints with it).
    pub fn log_key_path(&self) -> PathBuf {
        self.root.join("log-note.key")
    }
    /// Path of the CA certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.root.join("tls").join("ca.pem")
    }
    /// The broker's TLS identity.
    pub fn broker_tls(&self) -> TlsFiles {
        self.tls_files("broker")
    }
    /// A client's TLS identity (`relay-<id>`, `server-<n>`).
    pub fn tls_files(&self, name: &str) -> TlsFiles {
        let d = self.root.join("tls");
        TlsFiles {
            cert: d.join(format!("{name}.pem")),
            key: d.join(format!("{name}.key")),
        }
    }
    /// Whether `init` ran here.
    pub fn is_initialised(&self) -> bool {
        self.site_path().exists()
    }

    /// Creates a new key directory: site secret, registries, relay and server
    /// keys, CA, broker and client certificates. Refuses to overwrite a site secret.
    pub fn init(&self, opts: &InitOptions) -> Result<(), KeyError> {
        if self.is_initialised() {
            return Err(KeyError::AlreadyInitialised(self.root.clone()));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| io_err(&self.root, e))?;
        self.save_site_file(&SiteFile {
            current_key_id: 1,
            keys: vec![SiteKeyEntry {
                id: 1,
                secret: hex::encode(random_bytes::<32>()),
            }],
        })?;
        if !self.meters_path().exists() {
            MeterRegistry::default().save(&self.meters_path())?;
        }
        let server_key = SigningKey::from_bytes(&random_bytes::<32>());
        write_file(
            &self.server_key_path(),
            hex::encode(server_key.to_bytes()).as_bytes(),
            true,
        )
        .map_err(|e| io_err(&self.server_key_path(), e))?;
        write_file(
            &self.server_pub_path(),
            hex::encode(server_key.verifying_key().to_bytes()).as_bytes(),
            false,
        )
        .map_err(|e| io_err(&self.server_pub_path(), e))?;
        self.log_note_seed()?;
        self.create_ca(&opts.broker_names)?;
        for &id in &opts.relay_ids {
            self.add_relay(id)?;
        }
        for n in 1..=opts.servers {
            self.issue_client_cert(&format!("server-{n}"))?;
        }
        Ok(())
    }

    fn create_ca(&self, broker_names: &[String]) -> Result<(), KeyError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gridpow site CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = self.ca_cert_path();
        write_file(&ca, cert.pem().as_bytes(), false).map_err(|e| io_err(&ca, e))?;
        let ca_key = ca.with_file_name("ca.key");
        write_file(&ca_key, key.serialize_pem().as_bytes(), true)
            .map_err(|e| io_err(&ca_key, e))?;
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(broker_names.iter().cloned());
        self.issue_cert("broker", names, false)?;
        Ok(())
    }

    fn issue_cert(
        &self,
        name: &str,
        sans: Vec<String>,
        client: bool,
    ) -> Result<TlsFiles, KeyError> {
        let ca_path = self.ca_cert_path();
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| io_err(&ca_path, e))?;
        let ca_key_path = ca_path.with_file_name("ca.key");
        let ca_key_pem =
            std::fs::read_to_string(&ca_key_path).map_err(|e| io_err(&ca_key_path, e))?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
        let mut params = rcgen::CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let files = self.tls_files(name);
        write_file(&files.cert, cert.pem().as_bytes(), false)
            .map_err(|e| io_err(&files.cert, e))?;
        write_file(&files.key, key.serialize_pem().as_bytes(), true)
            .map_err(|e| io_err(&files.key, e))?;
        Ok(files)
    }

    /// Issues a client certificate with common name `name` (used as the MQTT
    /// username by brokers configured with `use_identity_as_username`).
    pub fn issue_client_cert(&self, name: &str) -> Result<TlsFiles, KeyError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(KeyError::Invalid(format!(
                "client name {name:?} must be letters, digits, - or _"
            )));
        }
        self.issue_cert(name, Vec::new(), true)
    }

    /// Creates relay `id`: signing key, registry entry, client certificate.
    pub fn add_relay(&self, id: u32) -> Result<VerifyingKey, KeyError> {
        let path = self.relay_key_path(id);
        let mut reg = if self.relays_path().exists() {
            RelayRegistry::load(&self.relays_path())?
        } else {
            RelayRegistry::default()
        };
        let key = if path.exists() {
            self.relay_signing_key(id)?
        } else if reg.get(id).is_some() {
            return Err(KeyError::Invalid(format!(
                "relay {id} is registered but {} is missing: replace a relay's key with \
                 `gridpow keys rotate-relay` (the registry keeps the old one for its blocks)",
                path.display()
            )));
        } else {
            let k = SigningKey::from_bytes(&random_bytes::<32>());
            write_file(&path, hex::encode(k.to_bytes()).as_bytes(), true)
                .map_err(|e| io_err(&path, e))?;
            k
        };
        // A relay added again keeps its registered keys (and their heights);
        // its key file must be the one registered for its newest heights.
        if let Some(current) = reg.get(id) {
            if current.verifying_key() != Some(key.verifying_key()) {
                return Err(KeyError::Invalid(format!(
                    "relay {id} is registered with another key than {} (from height {}): \
                     replace a relay's key with `gridpow keys rotate-relay`",
                    path.display(),
                    current.from_height
                )));
            }
        }
        if reg.get(id).is_none() {
            reg.upsert(RelayRecord {
                id,
                public_key: hex::encode(key.verifying_key().to_bytes()),
                from_height: 0,
                label: None,
            });
            reg.save(&self.relays_path())?;
        }
        self.issue_client_cert(&format!("relay-{id}"))?;
        Ok(key.verifying_key())
    }

    /// Replaces relay `id`'s signing key from block height `from_height` on:
    /// a new key is registered for heights from `from_height` (the old one
    /// keeps verifying the blocks below) and written over the relay's key
    /// file, so the old private key is gone from this directory.
    pub fn rotate_relay_key(&self, id: u32, from_height: u64) -> Result<VerifyingKey, KeyError> {
        let mut reg = self.relays()?;
        let key = SigningKey::from_bytes(&random_bytes::<32>());
        reg.rotate(RelayRecord {
            id,
            public_key: hex::encode(key.verifying_key().to_bytes()),
            from_height,
            label: None,
        })
        .map_err(KeyError::Invalid)?;
        // The new key is on disk (staged) before the registry names it, and
        // the registry before the key takes the relay's file. A crash before
        // the registry is saved leaves the old state; one after it leaves the
        // new key staged in `R.key.new`, which the registry names from
        // `from_height`: rename it over `R.key` by hand (the bundle checks
        // treat a staged key as a relay key).
        let path = self.relay_key_path(id);
        let staged = path.with_extension("key.new");
        write_file(&staged, hex::encode(key.to_bytes()).as_bytes(), true)
            .map_err(|e| io_err(&staged, e))?;
        reg.save(&self.relays_path())?;
        gridpow_common::durable::rename(&staged, &path).map_err(|e| io_err(&path, e))?;
        Ok(key.verifying_key())
    }

    /// Registers meter `id` and writes its provisioning file `meters/<id>.toml`.
    pub fn add_meter(
        &self,
        id: u32,
        mac: Option<gridpow_proto::MacAddr>,
        channel: u8,
        interval_s: u32,
    ) -> Result<MeterProvisioning, KeyError> {
        let site = self.site()?;
        let mut reg = self.meters()?;
        let key_id = site.current_key_id;
        reg.upsert(reprovisioned(&reg, id, key_id, mac));
        reg.save(&self.meters_path())?;
        let secret = site
            .meter_secret(id, key_id)
            .ok_or_else(|| KeyError::Invalid(format!("site.toml has no key id {key_id}")))?;
        let prov = MeterProvisioning {
            meter_id: id,
            key_id,
            meter_secret: hex::encode(secret.to_bytes()),
            relay_mac: None,
            channel,
            interval_s,
        };
        let path = self.root.join("meters").join(format!("{id}.toml"));
        let text = toml::to_string_pretty(&prov).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let text = format!(
            "# gridpow meter {id} provisioning. SECRET: flash it, then delete this copy.\n{text}"
        );
        write_file(&path, text.as_bytes(), true).map_err(|e| io_err(&path, e))?;
        Ok(prov)
    }

    /// Registers many meters at once (ids with optional MACs); writes the registry once.
    pub fn add_meters(
        &self,
        meters: &[(u32, Option<gridpow_proto::MacAddr>)],
    ) -> Result<usize, KeyError> {
        let site = self.site()?;
        let mut reg = self.meters()?;
        for &(id, mac) in meters {
            let rec = reprovisioned(&reg, id, site.current_key_id, mac);
            reg.upsert(rec);
        }
        reg.save(&self.meters_path())?;
        Ok(meters.len())
    }

    /// Names of the client certificates issued to grid servers (`server-<n>`).
    pub fn server_clients(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("tls"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter_map(|n| n.strip_suffix(".pem").map(str::to_string))
                    .filter(|n| n.starts_with("server-"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn save_site_file(&self, site: &SiteFile) -> Result<(), KeyError> {
        let text = toml::to_string_pretty(site).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let text =
            format!("# gridpow site secrets. SECRET: every meter key derives from these.\n{text}");
        write_file(&self.site_path(), text.as_bytes(), true)
            .map_err(|e| io_err(&self.site_path(), e))
    }

    /// Adds a site secret under the next key id and makes it the one new and
    /// re-provisioned meters get (`gridpow keys rotate-site`). The older key
    /// id stays valid until retired. Returns the new key id.
    ///
    /// Refused while two key ids are listed: a relay holds each meter's hop
    /// keys under two key ids at most (protocol §3), so the older rotation
    /// is finished (its key id retired) before the next starts.
    pub fn rotate_site(&self) -> Result<u8, KeyError> {
        let site = self.site()?; // refuses a malformed file before it is rewritten
        self.check_key_id_room(&site, 1)?;
        let mut f: SiteFile = load_toml(&self.site_path(), None)?;
        let next = f
            .keys
            .iter()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                KeyError::Invalid("key id 255 is in use: retire old key ids first".into())
            })?;
        f.keys.push(SiteKeyEntry {
            id: next,
            secret: hex::encode(random_bytes::<32>()),
        });
        f.current_key_id = next;
        self.save_site_file(&f)?;
        Ok(next)
    }

    /// Refuses `adding` more site key ids if the site would then list more
    /// than a relay holds per meter (two, protocol §3), naming the key id to
    /// retire first.
    pub(crate) fn check_key_id_room(
        &self,
        site: &SiteKeyring,
        adding: usize,
    ) -> Result<(), KeyError> {
        let listed: Vec<u8> = site.key_ids().collect();
        if listed.len() + adding <= gridpow_proto::ingress::MAX_KEY_IDS_PER_METER {
            return Ok(());
        }
        let old = listed
            .iter()
            .find(|k| **k != site.current_key_id)
            .copied()
            .unwrap_or(site.current_key_id);
        Err(KeyError::Invalid(format!(
            "{} lists key ids {listed:?}: finish that rotation first \
             (`gridpow keys retire-site --key-id {old} --db URL`); relays hold a meter's \
             hop keys under two key ids at most",
            self.site_path().display()
        )))
    }

    /// Registered meters provisioned with site key id `key_id`, ascending.
    pub fn meters_with_key(&self, key_id: u8) -> Result<Vec<u32>, KeyError> {
        if !self.meters_path().exists() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<u32> = self
            .meters()?
            .meters
            .iter()
            .filter(|m| m.key_id == key_id)
            .map(|m| m.id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Removes site key id `key_id` (`gridpow keys retire-site`): frames
    /// sealed under it are then refused. The current key id cannot be
    /// retired; whether meters still use it is the caller's check.
    pub fn retire_site_key(&self, key_id: u8) -> Result<(), KeyError> {
        self.check_retirable(key_id)?;
        let mut f: SiteFile = load_toml(&self.site_path(), None)?;
        f.keys.retain(|k| k.id != key_id);
        self.save_site_file(&f)
    }

    /// Whether site key id `key_id` exists and is not the current one (which
    /// is never retired, not even by force).
    pub fn check_retirable(&self, key_id: u8) -> Result<(), KeyError> {
        let site = self.site()?;
        if key_id == site.current_key_id {
            return Err(KeyError::Invalid(format!(
                "key id {key_id} is the current one: add another with `gridpow keys rotate-site` first"
            )));
        }
        if !site.key_ids().any(|k| k == key_id) {
            return Err(KeyError::Invalid(format!(
                "{} has no key id {key_id}",
                self.site_path().display()
            )));
        }
        Ok(())
    }

    /// The site keyring.
    pub fn site(&self) -> Result<SiteKeyring, KeyError> {
        let path = self.site_path();
        let f: SiteFile = load_toml(&path, None)?;
        let mut secrets = BTreeMap::new();
        for (i, k) in f.keys.iter().enumerate() {
            let bytes: [u8; 32] = hex::decode(&k.secret)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        &path,
                        &format!("key[{i}].secret"),
                        "not 64 hex digits".into(),
                    )
                })?;
            secrets.insert(k.id, SiteSecret(bytes));
        }
        if !secrets.contains_key(&f.current_key_id) {
            return Err(ConfigError::invalid(
                &path,
                "current_key_id",
                format!("no [[key]] with id {}", f.current_key_id),
            )
            .into());
        }
        Ok(SiteKeyring {
            current_key_id: f.current_key_id,
            secrets,
        })
    }

    /// The meter registry.
    pub fn meters(&self) -> Result<MeterRegistry, KeyError> {
        Ok(MeterRegistry::load(&self.meters_path())?)
    }

    /// The relay registry.
    pub fn relays(&self) -> Result<RelayRegistry, KeyError> {
        Ok(RelayRegistry::load(&self.relays_path())?)
    }

    /// Relay `id`'s signing key.
    pub fn relay_signing_key(&self, id: u32) -> Result<SigningKey, KeyError> {
        read_signing_key(&self.relay_key_path(id))
    }

    /// The server's receipt signing key.
    pub fn server_signing_key(&self) -> Result<SigningKey, KeyError> {
        read_signing_key(&self.server_key_path())
    }

    /// The transparency log's note-key seed; a key directory made before the
    /// log existed gets one now (0600).
    pub fn log_note_seed(&self) -> Result<[u8; 32], KeyError> {
        let path = self.log_key_path();
        if !path.exists() {
            write_file(&path, hex::encode(random_bytes::<32>()).as_bytes(), true)
                .map_err(|e| io_err(&path, e))?;
        }
        Ok(read_signing_key(&path)?.to_bytes())
    }

    /// The server's receipt verifying key.
    pub fn server_verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let path = self.server_pub_path();
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::BadKey {
                path: path.clone(),
                message: "not 64 hex digits".into(),
            })?;
        gridpow_proto::crypto::strict_public_key(&bytes).map_err(|e| KeyError::BadKey {
            path,
            message: e.to_string(),
        })
    }
}

fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::BadKey {
            path: path.to_path_buf(),
            message: "not 64 hex digits".into(),
        })?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Site CA certificate, client certificate, client key: DER.
pub type RelayTlsDer = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Relay `relay_id`'s TLS material as DER, read from its key directory or
/// bundle (`ca.pem`, `tls/relay-<id>.pem` and `.key`): what the standalone
/// relay carries in its blob and what the host application hands to
/// `gridpow-relay-net`. Returns (site CA certificate, client certificate,
/// client key).
pub fn relay_tls_der(keys: &KeyDir, relay_id: u32) -> Result<RelayTlsDer, TlsError> {
    let first = |path: &Path| load_certs(path).map(|c| c.into_iter().next().map(|c| c.to_vec()));
    let files = keys.tls_files(&format!("relay-{relay_id}"));
    let none = |path: &Path| TlsError::File {
        path: path.to_path_buf(),
        message: "no certificate in file".into(),
    };
    let ca = first(&keys.ca_cert_path())?.ok_or_else(|| none(&keys.ca_cert_path()))?;
    let cert = first(&files.cert)?.ok_or_else(|| none(&files.cert))?;
    let key = load_key(&files.key)?.secret_der().to_vec();
    Ok((ca, cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_rotation_reprovisions_with_the_new_key_id_keeping_mac_and_label() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&InitOptions::default()).unwrap();
        let mac = [2, 0, 0, 0, 0, 7];
        kd.add_meter(7, Some(mac), 1, 10).unwrap();
        kd.add_meters(&[(8, None)]).unwrap();
        let mut reg = kd.meters().unwrap();
        let mut rec = reg.get(8).unwrap().clone();
        rec.label = Some("flat 8".into());
        reg.upsert(rec);
        reg.save(&kd.meters_path()).unwrap();
        assert_eq!(kd.rotate_site().unwrap(), 2);
        assert_eq!(kd.site().unwrap().key_ids().collect::<Vec<_>>(), vec![1, 2]);
        let prov = kd.add_meter(7, None, 1, 10).unwrap();
        kd.add_meters(&[(8, None)]).unwrap();
        assert_eq!(prov.key_id, 2);
        let reg = kd.meters().unwrap();
        assert_eq!(
            reg.get(7).unwrap().mac_bytes(),
            Some(mac),
            "the MAC binding stays"
        );
        assert_eq!(reg.get(8).unwrap().label.as_deref(), Some("flat 8"));
        assert_eq!(kd.meters_with_key(1).unwrap(), Vec::<u32>::new());
        assert_eq!(kd.meters_with_key(2).unwrap(), vec![7, 8]);
        assert!(kd
            .check_retirable(2)
            .unwrap_err()
            .to_string()
            .contains("current"));
        assert!(kd
            .check_retirable(9)
            .unwrap_err()
            .to_string()
            .contains("no key id 9"));
        // A third key id waits until the second rotation's old one is retired.
        let e = kd.rotate_site().unwrap_err().to_string();
        assert!(e.contains("retire-site --key-id 1"), "{e}");
        assert_eq!(kd.site().unwrap().key_ids().count(), 2, "nothing written");
        kd.retire_site_key(1).unwrap();
        assert_eq!(kd.site().unwrap().key_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(kd.rotate_site().unwrap(), 3);
    }

    #[test]
    fn a_registered_relay_is_never_given_a_key_the_registry_does_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&InitOptions::default()).unwrap();
        let key = kd.relay_signing_key(1).unwrap().verifying_key();
        // Adding it again keeps its key.
        assert_eq!(kd.add_relay(1).unwrap(), key);
        // Its key file gone: refused, nothing written.
        std::fs::remove_file(kd.relay_key_path(1)).unwrap();
        let e = kd.add_relay(1).unwrap_err().to_string();
        assert!(e.contains("rotate-relay"), "{e}");
        assert!(!kd.relay_key_path(1).exists());
        // Another key in its file: refused too.
        write_file(&kd.relay_key_path(1), &[b'1'; 64], true).unwrap();
        let e = kd.add_relay(1).unwrap_err().to_string();
        assert!(e.contains("another key"), "{e}");
    }

    #[test]
    fn init_creates_keys_certificates_and_refuses_to_run_twice() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&InitOptions::default()).unwrap();
        assert!(kd.ca_cert_path().exists() && kd.broker_tls().key.exists());
        assert!(kd.tls_files("relay-1").cert.exists() && kd.tls_files("server-1").cert.exists());
        let relay = kd.relay_signing_key(1).unwrap();
        assert_eq!(
            kd.relays().unwrap().get(1).unwrap().verifying_key(),
            Some(relay.verifying_key())
        );
        assert_eq!(
            kd.server_signing_key().unwrap().verifying_key(),
            kd.server_verifying_key().unwrap()
        );
        assert!(matches!(
            kd.init(&InitOptions::default()),
            Err(KeyError::AlreadyInitialised(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [
                kd.site_path(),
                kd.relay_key_path(1),
                kd.server_key_path(),
                kd.broker_tls().key,
            ] {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
    }

    #[test]
    fn added_meter_gets_the_secret_the_site_derives() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path());
        kd.init(&InitOptions {
            relay_ids: vec![],
            ..InitOptions::default()
        })
        .unwrap();
        let prov = kd.add_meter(17, Some([2, 0, 0, 0, 0, 17]), 1, 10).unwrap();
        let site = kd.site().unwrap();
        assert_eq!(
            prov.meter_secret,
            hex::encode(site.meter_secret(17, prov.key_id).unwrap().to_bytes())
        );
        assert_eq!(
            kd.meters().unwrap().get(17).unwrap().mac.as_deref(),
            Some("02:00:00:00:00:11")
        );
    }
}
