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
use gridpow_proto::crypto::{derive_meter_secret, HopSecret, MeterSecret, SiteSecret};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use gridpow_common::config::{load_toml, ConfigError};
use gridpow_common::durable::write_file;
use gridpow_common::format_mac;
use gridpow_common::tls::{load_certs, load_key, TlsError};
use gridpow_common::topics;

pub mod registry;

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
            .map(|s| derive_meter_secret(s, key_id, meter_id))
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
        let site = SiteFile {
            current_key_id: 1,
            keys: vec![SiteKeyEntry {
                id: 1,
                secret: hex::encode(random_bytes::<32>()),
            }],
        };
        let text = toml::to_string_pretty(&site).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let text =
            format!("# gridpow site secrets. SECRET: every meter key derives from these.\n{text}");
        write_file(&self.site_path(), text.as_bytes(), true)
            .map_err(|e| io_err(&self.site_path(), e))?;
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
        let key = if path.exists() {
            self.relay_signing_key(id)?
        } else {
            let k = SigningKey::from_bytes(&random_bytes::<32>());
            write_file(&path, hex::encode(k.to_bytes()).as_bytes(), true)
                .map_err(|e| io_err(&path, e))?;
            k
        };
        let mut reg = if self.relays_path().exists() {
            RelayRegistry::load(&self.relays_path())?
        } else {
            RelayRegistry::default()
        };
        reg.upsert(RelayRecord {
            id,
            public_key: hex::encode(key.verifying_key().to_bytes()),
            label: None,
        });
        reg.save(&self.relays_path())?;
        self.issue_client_cert(&format!("relay-{id}"))?;
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
        reg.upsert(MeterRecord {
            id,
            key_id,
            mac: mac.map(|m| format_mac(&m)),
            label: None,
        });
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
            reg.upsert(MeterRecord {
                id,
                key_id: site.current_key_id,
                mac: mac.map(|m| format_mac(&m)),
                label: None,
            });
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

    /// A Mosquitto ACL file for brokers that use the client certificate's common
    /// name as username (`use_identity_as_username true`): relay X may publish
    /// only its own blocks and status and read only its own receipts; grid
    /// servers may read blocks and status and publish receipts; nobody else
    /// may do anything.
    pub fn mosquitto_acl(&self) -> Result<String, KeyError> {
        let relays = self.relays()?;
        let mut acl = String::from(
            "# gridpow Mosquitto ACL, generated by `gridpow keys acl`.\n\
             # Usernames are client-certificate common names (use_identity_as_username true).\n\
             # Anything not granted here is denied.\n",
        );
        for r in &relays.relays {
            let id = r.id;
            acl.push_str(&format!(
                "\nuser relay-{id}\ntopic write {}\ntopic write {}\ntopic read {}\n",
                topics::blocks(id),
                topics::status(id),
                topics::receipts(id),
            ));
        }
        for name in self.server_clients() {
            acl.push_str(&format!(
                "\nuser {name}\ntopic read {}\ntopic read {}\ntopic write {}\n",
                topics::all_blocks(),
                topics::all_status(),
                topics::all_receipts(),
            ));
        }
        Ok(acl)
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
            if e.path().extension().is_some_and(|x| x == "key") {
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
        let mut hop = HopKeyFile::default();
        for rec in &registry.meters {
            let secret = site.meter_secret(rec.id, rec.key_id).ok_or_else(|| {
                KeyError::Invalid(format!(
                    "meter {} names key id {} which site.toml does not have",
                    rec.id, rec.key_id
                ))
            })?;
            hop.meters.push(HopKeyEntry {
                id: rec.id,
                key_id: rec.key_id,
                hop_secret: hex::encode(secret.hop.0),
            });
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
            meters: hop.meters.len(),
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
        let files = self.copy_bundle(
            out,
            &[
                (self.site_path(), true),
                (self.server_key_path(), true),
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
        // No end-to-end key and no site secret in any file of the bundle.
        for f in &sum.files {
            let text = std::fs::read(relay.root().join(f)).unwrap();
            for m in [1, 2, 3] {
                let e2e = hex::encode(site.meter_secret(m, 1).unwrap().e2e.0);
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
    }

    #[test]
    fn the_acl_grants_each_relay_its_own_topics_and_servers_every_relays() {
        let dir = tempfile::tempdir().unwrap();
        let kd = KeyDir::new(dir.path().join("keys"));
        kd.init(&InitOptions::default()).unwrap();
        let acl = kd.mosquitto_acl().unwrap();
        assert!(
            acl.contains(
                "\nuser relay-1\ntopic write gridpow/v1/relays/1/blocks\ntopic write gridpow/v1/relays/1/status\ntopic read gridpow/v1/relays/1/receipts\n"
            ),
            "{acl}"
        );
        assert!(
            acl.contains(
                "\nuser server-1\ntopic read gridpow/v1/relays/+/blocks\ntopic read gridpow/v1/relays/+/status\ntopic write gridpow/v1/relays/+/receipts\n"
            ),
            "{acl}"
        );
    }
}
