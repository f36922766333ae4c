//! `gridpow keys …`: key directory management.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use gridpow_common::{format_mac, parse_mac};
use gridpow_keys::{InitOptions, KeyDir};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key directory: site secret, relay and server keys, CA and TLS certificates, registries.
    Init {
        /// The key directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Relay ids to create keys and client certificates for (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        relays: Vec<u32>,
        /// Number of grid-server client certificates (server-1 … server-N).
        #[arg(long, default_value_t = 1)]
        servers: u32,
        /// Extra DNS names or IPs for the broker certificate (repeatable).
        #[arg(long = "broker-name")]
        broker_names: Vec<String>,
    },
    /// Register one meter and write what it must be flashed with (`meters/<id>.toml`).
    AddMeter {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Meter id.
        #[arg(long)]
        id: u32,
        /// The meter's MAC (AA:BB:CC:DD:EE:FF), to bind it.
        #[arg(long)]
        mac: Option<String>,
        /// The relay's Wi-Fi channel, written to the provisioning file.
        #[arg(long, default_value_t = 1)]
        channel: u8,
        /// Reporting interval in seconds.
        #[arg(long, default_value_t = 10)]
        interval: u32,
        /// The relay's MAC, written into the flash blob (otherwise the meter broadcasts until an ACK names its relay).
        #[arg(long)]
        relay_mac: Option<String>,
        /// Lowest boot epoch the meter may use (raise it when re-provisioning a meter whose state partition was erased).
        #[arg(long, default_value_t = 0)]
        min_epoch: u32,
    },
    /// Register many meters: from a CSV file with columns `id,mac` (mac may be empty), or an id range.
    AddMeters {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// CSV file (header `id,mac`).
        #[arg(long, conflicts_with = "range")]
        csv: Option<PathBuf>,
        /// Inclusive id range such as `1-500`.
        #[arg(long)]
        range: Option<String>,
    },
    /// Create keys and a client certificate for another relay.
    AddRelay {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Relay id.
        #[arg(long)]
        id: u32,
    },
    /// Replace a relay's signing key from a block height on (a routine change,
    /// or a key in hostile hands): the new key signs heights from
    /// `--from-height`, the old one stays registered for the blocks below it.
    /// Stop the relay first and pick its next height (its stop line says
    /// `chain at height H`: use H + 1); a height the old key already signed
    /// makes those blocks fail verification for good. The height must lie
    /// above the current key's first height.
    RotateRelay {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Relay id.
        #[arg(long)]
        id: u32,
        /// Lowest block height the new key signs.
        #[arg(long)]
        from_height: u64,
    },
    /// Add a site secret under a new key id and make it the one new and
    /// re-provisioned meters get (`add-meter`, `add-meters`); older key ids
    /// stay valid until retired.
    RotateSite {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Remove an old site key id. Refused while a registered meter is
    /// provisioned with it or any meter sent with it in the last `--days`
    /// days (asked of the server's database, `--db`), unless `--force`. A block
    /// with one frame under a retired key id is refused whole, so let the
    /// relays' outboxes drain first; restart the grid servers with the new
    /// site.toml afterwards (a running server keeps the key ids it loaded).
    RetireSite {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// The key id to retire.
        #[arg(long)]
        key_id: u8,
        /// The grid server's database (SQLite path or postgres:// URL), to
        /// ask which meters still send with the key id.
        #[arg(long)]
        db: Option<String>,
        /// How far back the database is asked, in days.
        #[arg(long, default_value_t = 30)]
        days: u64,
        /// Retire it anyway: frames of meters still using it are refused from then on.
        #[arg(long)]
        force: bool,
    },
    /// Write a Mosquitto ACL file: each relay may publish only its own topics, servers read blocks and publish receipts.
    Acl {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export a least-privilege key bundle for one service into a new directory
    /// (the relay, server and broker each refuse or need only their own bundle).
    #[command(subcommand)]
    Export(ExportCommand),
    /// Write an ESP32 relay's flash blob from its bundle (`keys export relay`):
    /// mode, channel, meters' hop keys, signing key, and in standalone mode the
    /// Wi-Fi network, the broker and the TLS identity (DER, from the bundle's PEM files).
    RelayBlob {
        /// The relay's bundle directory (not the master key directory).
        #[arg(long)]
        bundle: PathBuf,
        /// Relay id.
        #[arg(long)]
        id: u32,
        /// `standalone` (the ESP32 publishes over Wi-Fi) or `bridge` (USB to a Linux relay).
        #[arg(long, default_value = "standalone")]
        mode: String,
        /// Radio channel; in standalone mode the access point's (the relay follows the AP if it differs).
        #[arg(long)]
        channel: u8,
        /// Proof-of-work difficulty (leading zero bits; at least the server's minimum).
        #[arg(long, default_value_t = 16)]
        difficulty: u8,
        /// Seconds between blocks (0 = the firmware's default, 10).
        #[arg(long, default_value_t = 0)]
        block_interval: u32,
        /// Wi-Fi network name (standalone).
        #[arg(long)]
        wifi_ssid: Option<String>,
        /// File holding the Wi-Fi passphrase, one line (standalone; an empty file for an open network).
        #[arg(long)]
        wifi_pass_file: Option<PathBuf>,
        /// MQTT broker host name, which the broker's certificate must carry (standalone).
        #[arg(long)]
        broker_host: Option<String>,
        /// MQTT broker port (TLS).
        #[arg(long, default_value_t = 8883)]
        broker_port: u16,
        /// Refuse frames from meters whose MAC is not the registered one.
        #[arg(long)]
        require_registered_mac: bool,
        /// Output file (default: BUNDLE/relay-<id>.bin).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue an MQTT client certificate (CN = name, used as broker username with mTLS).
    IssueClient {
        /// The key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Client name, e.g. server-2.
        #[arg(long)]
        name: String,
    },
    /// Issue TLS certificates again from the site CA with a fresh validity
    /// (same names and purpose, same private keys; the CA is kept). Running
    /// relays and servers load the new files within 15 s or on SIGHUP.
    Renew {
        /// The key directory (the master one, holding tls/ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// Certificates to renew, e.g. relay-1, server-1, broker (repeatable); default: all but the CA.
        #[arg(long = "name")]
        names: Vec<String>,
        /// Days the new certificates are valid.
        #[arg(long, default_value_t = gridpow_keys::DEFAULT_RENEW_DAYS)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// A relay's bundle: its signing key and TLS identity, the CA certificate, the
    /// server's public key, its meters' registry and hop keys. No site secret, no
    /// end-to-end key: a stolen relay can neither read nor invent readings.
    Relay {
        /// The master key directory.
        #[arg(long)]
        dir: PathBuf,
        /// Relay id.
        #[arg(long)]
        id: u32,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Inclusive meter id range this relay serves, such as `1-50` (default: every registered meter).
        #[arg(long)]
        meters: Option<String>,
    },
    /// A grid server's bundle: site secret, receipt key, relays' public keys,
    /// registries, CA certificate and its TLS client identity. No relay private key.
    Server {
        /// The master key directory.
        #[arg(long)]
        dir: PathBuf,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// The server's MQTT client identity.
        #[arg(long, default_value = "server-1")]
        client: String,
    },
    /// The broker's bundle: CA certificate, broker TLS identity, ACL.
    Broker {
        /// The master key directory.
        #[arg(long)]
        dir: PathBuf,
        /// The bundle directory to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn print_bundle(what: &str, b: &gridpow_keys::BundleSummary) {
    println!("wrote the {what} bundle to {}:", b.dir.display());
    for f in &b.files {
        println!("  {}", f.display());
    }
}

fn export(cmd: ExportCommand) -> anyhow::Result<()> {
    match cmd {
        ExportCommand::Relay {
            dir,
            id,
            out,
            meters,
        } => {
            let ids: Option<Vec<u32>> = match meters {
                Some(r) => {
                    let (a, b) = parse_range(&r)?;
                    Some((a..=b).collect())
                }
                None => None,
            };
            let b =
                KeyDir::new(&dir).export_relay_bundle(id, ids.as_deref(), &KeyDir::new(&out))?;
            print_bundle(&format!("relay {id}"), &b);
            println!(
                "  ({} meters' hop keys; re-export after adding meters)",
                b.meters
            );
        }
        ExportCommand::Server { dir, out, client } => {
            let b = KeyDir::new(&dir).export_server_bundle(&client, &KeyDir::new(&out))?;
            print_bundle("server", &b);
        }
        ExportCommand::Broker { dir, out } => {
            let b = KeyDir::new(&dir).export_broker_bundle(&KeyDir::new(&out))?;
            print_bundle("broker", &b);
        }
    }
    Ok(())
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Init {
            dir,
            relays,
            servers,
            broker_names,
        } => {
            let kd = KeyDir::new(&dir);
            kd.init(&InitOptions {
                relay_ids: relays.clone(),
                broker_names,
                servers,
            })?;
            println!("created key directory {}", dir.display());
            println!(
                "  site secret      {} (0600, SECRET)",
                kd.site_path().display()
            );
            for id in &relays {
                println!(
                    "  relay {id} key      {} (0600)",
                    kd.relay_key_path(*id).display()
                );
            }
            println!(
                "  server key       {} (0600)",
                kd.server_key_path().display()
            );
            println!("  TLS CA           {}", kd.ca_cert_path().display());
            println!(
                "  meter registry   {} (add meters with `gridpow keys add-meter`)",
                kd.meters_path().display()
            );
        }
        KeysCommand::AddMeter {
            dir,
            id,
            mac,
            channel,
            interval,
            relay_mac,
            min_epoch,
        } => {
            let kd = KeyDir::new(&dir);
            let parse =
                |flag: &str, m: Option<String>| -> anyhow::Result<Option<gridpow_proto::MacAddr>> {
                    match m {
                        Some(m) => Ok(Some(parse_mac(&m).with_context(|| {
                            format!("{flag} {m:?} is not a MAC address like AA:BB:CC:DD:EE:FF")
                        })?)),
                        None => Ok(None),
                    }
                };
            let mac = parse("--mac", mac)?;
            let relay_mac = parse("--relay-mac", relay_mac)?;
            if !(1..=14).contains(&channel) {
                bail!("--channel must be 1 to 14");
            }
            let prov = kd.add_meter(id, mac, channel, interval)?;
            let toml_path = dir.join("meters").join(format!("{id}.toml"));
            let bin_path = dir.join("meters").join(format!("{id}.bin"));
            let secret = kd
                .site()?
                .meter_secret(id, prov.key_id)
                .with_context(|| format!("site.toml has no key id {}", prov.key_id))?;
            let mut cfg = gridpow_firmware_logic::provisioning::MeterConfig::new(
                id,
                prov.key_id,
                secret,
                channel,
                interval,
            );
            cfg.relay_mac = relay_mac;
            cfg.min_epoch = min_epoch;
            let blob = gridpow_firmware_logic::provisioning::encode_provisioning(&cfg);
            gridpow_common::durable::write_file(&bin_path, &blob, true)
                .with_context(|| format!("writing {}", bin_path.display()))?;
            println!("meter {id} registered (key id {})", prov.key_id);
            if let Some(m) = mac {
                println!("  bound to MAC {}", format_mac(&m));
            }
            println!(
                "  flash blob: {} ({} bytes, 0600, SECRET)",
                bin_path.display(),
                blob.len()
            );
            println!(
                "    espflash write-bin --chip esp32c3 {:#x} {}",
                gridpow_firmware_logic::layout::CONFIG_OFFSET,
                bin_path.display()
            );
            println!(
                "  the same as text: {} (0600, SECRET); delete both after flashing",
                toml_path.display()
            );
            println!("  see docs/hardware.md, \"Provisioning and flashing\"");
        }
        KeysCommand::AddMeters { dir, csv, range } => {
            let kd = KeyDir::new(&dir);
            let meters = match (csv, range) {
                (Some(path), None) => read_csv(&path)?,
                (None, Some(r)) => {
                    let (a, b) = parse_range(&r)?;
                    (a..=b).map(|id| (id, None)).collect()
                }
                _ => bail!("give --csv FILE or --range A-B"),
            };
            let n = kd.add_meters(&meters)?;
            println!("registered {n} meters in {}", kd.meters_path().display());
            println!("meter secrets derive from the site secret; write a meter's flash file with `gridpow keys add-meter --id N`");
        }
        KeysCommand::AddRelay { dir, id } => {
            let kd = KeyDir::new(&dir);
            let pk = kd.add_relay(id)?;
            println!(
                "relay {id}: key {} (public {})",
                kd.relay_key_path(id).display(),
                hex_string(&pk.to_bytes())
            );
        }
        KeysCommand::RotateRelay {
            dir,
            id,
            from_height,
        } => {
            let kd = KeyDir::new(&dir);
            let pk = kd.rotate_relay_key(id, from_height)?;
            println!(
                "relay {id}: new key {} (public {}) signs heights from {from_height}; the old key stays registered for the blocks below",
                kd.relay_key_path(id).display(),
                hex_string(&pk.to_bytes())
            );
            println!(
                "next: export the relay's bundle again (`gridpow keys export relay --id {id}`) and give each grid server the new {} \
                 (or its bundle); a server re-reads it by itself when a block's signature needs it",
                kd.relays_path().display()
            );
        }
        KeysCommand::RotateSite { dir } => {
            let kd = KeyDir::new(&dir);
            let id = kd.rotate_site()?;
            let old = kd.meters()?.meters.len();
            println!(
                "site key id {id} added and made current in {}",
                kd.site_path().display()
            );
            println!(
                "next: export the server bundles again (they hold the site secrets); re-provision meters with \
                 `gridpow keys add-meter --id N` (they get key id {id}; {old} registered meters keep theirs until then), \
                 then export their relays' bundles again once those meters are flashed"
            );
        }
        KeysCommand::RetireSite {
            dir,
            key_id,
            db,
            days,
            force,
        } => {
            let kd = KeyDir::new(&dir);
            kd.check_retirable(key_id)?;
            if db.is_none() && !force {
                anyhow::bail!(
                    "give the server's database (--db PATH or postgres://…) so that meters still sending with key id {key_id} are found, or --force"
                );
            }
            let mut users = Vec::new();
            let provisioned = kd.meters_with_key(key_id)?;
            if !provisioned.is_empty() {
                users.push(format!(
                    "{} registered meters are provisioned with key id {key_id} (e.g. {}); re-provision them with `gridpow keys add-meter --id N`",
                    provisioned.len(),
                    sample(&provisioned)
                ));
            }
            if let Some(db) = &db {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let since_ms = now_ms.saturating_sub(days.saturating_mul(86_400_000));
                let sending =
                    gridpow_store::open_reader(db)?.meters_sending_with_key(key_id, since_ms)?;
                if !sending.is_empty() {
                    users.push(format!(
                        "{} meters sent frames under key id {key_id} in the last {days} days (e.g. {}), says {db}",
                        sending.len(),
                        sample(&sending)
                    ));
                }
            }
            if !users.is_empty() && !force {
                anyhow::bail!(
                    "key id {key_id} is still in use, not retired:\n  {}\n(--force retires it anyway; those meters' frames are then refused)",
                    users.join("\n  ")
                );
            }
            for u in &users {
                eprintln!("warning: retiring anyway (--force): {u}");
            }
            if db.is_none() {
                eprintln!("warning: no --db given, so whether meters still send with key id {key_id} was not asked");
            }
            kd.retire_site_key(key_id)?;
            println!(
                "site key id {key_id} retired from {}; export the server and relay bundles again",
                kd.site_path().display()
            );
        }
        KeysCommand::Acl { dir, out } => {
            let acl = KeyDir::new(&dir).mosquitto_acl()?;
            match out {
                Some(p) => {
                    gridpow_common::durable::write_file(&p, acl.as_bytes(), false)
                        .with_context(|| format!("writing {}", p.display()))?;
                    println!("wrote {}", p.display());
                }
                None => print!("{acl}"),
            }
        }
        KeysCommand::Export(e) => export(e)?,
        KeysCommand::RelayBlob {
            bundle,
            id,
            mode,
            channel,
            difficulty,
            block_interval,
            wifi_ssid,
            wifi_pass_file,
            broker_host,
            broker_port,
            require_registered_mac,
            out,
        } => crate::relay_blob::run(&crate::relay_blob::RelayBlobArgs {
            bundle,
            id,
            mode,
            channel,
            difficulty,
            block_interval_s: block_interval,
            wifi_ssid,
            wifi_pass_file,
            broker_host,
            broker_port,
            require_registered_mac,
            out,
        })?,
        KeysCommand::IssueClient { dir, name } => {
            let kd = KeyDir::new(&dir);
            let files = kd.issue_client_cert(&name)?;
            println!(
                "client certificate {} and key {} (0600)",
                files.cert.display(),
                files.key.display()
            );
        }
        KeysCommand::Renew { dir, names, days } => {
            let kd = KeyDir::new(&dir);
            for r in kd.renew(&names, days)? {
                println!(
                    "{}: certificate {} valid until {} (key {} kept)",
                    r.name,
                    r.cert.display(),
                    r.not_after_text,
                    r.key.display()
                );
            }
            println!("copy each renewed .pem to the machines using it (bundles hold copies); relays and servers reload within 15 s or on SIGHUP, restart Mosquitto for broker.pem (its clients reconnect, nothing is lost)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An inclusive id range such as `1-500`.
fn parse_range(r: &str) -> anyhow::Result<(u32, u32)> {
    let (a, b) = r
        .split_once('-')
        .with_context(|| format!("range {r:?} must look like 1-500"))?;
    let a: u32 = a
        .trim()
        .parse()
        .with_context(|| format!("range {r:?}: {a:?} is not an id"))?;
    let b: u32 = b
        .trim()
        .parse()
        .with_context(|| format!("range {r:?}: {b:?} is not an id"))?;
    if a > b {
        bail!("range {r:?}: first id is larger than the last");
    }
    Ok((a, b))
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_csv(path: &std::path::Path) -> anyhow::Result<Vec<(u32, Option<gridpow_proto::MacAddr>)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 2;
        let rec = rec.with_context(|| format!("{}:{line}: not valid CSV", path.display()))?;
        let id: u32 =
            rec.get(0).unwrap_or("").parse().with_context(|| {
                format!("{}:{line}: column id is not a meter id", path.display())
            })?;
        let mac = match rec.get(1).filter(|s| !s.is_empty()) {
            Some(m) => Some(parse_mac(m).with_context(|| {
                format!(
                    "{}:{line}: column mac {m:?} is not a MAC address",
                    path.display()
                )
            })?),
            None => None,
        };
        out.push((id, mac));
    }
    Ok(out)
}

/// The first few ids of `ids`, for messages.
fn sample(ids: &[u32]) -> String {
    let shown: Vec<String> = ids.iter().take(5).map(u32::to_string).collect();
    let more = if ids.len() > 5 { ", …" } else { "" };
    format!("{}{more}", shown.join(", "))
}
