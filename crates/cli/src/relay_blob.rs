//! `gridpow keys relay-blob`: the ESP32 relay's provisioning blob, built from
//! a relay bundle (`gridpow keys export relay`), never from the master key
//! directory: the blob goes onto a device that may be stolen.
//!
//! Flags are parsed into [`RelayBlobArgs`] (plain data), checked into a
//! [`RelayBlobPlan`] (what will be written), then encoded by
//! `gridpow_firmware_logic::provisioning`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use gridpow_firmware_logic::layout::CONFIG_OFFSET;
use gridpow_firmware_logic::provisioning::{
    encode_relay_provisioning, relay_blob_meter_room, BlobError, RelayConfig, RelayMeter,
    RelayMode, RelayTls, ShortStr, MAX_RELAY_BLOB_LEN,
};
use gridpow_keys::{KeyDir, Role};

/// The flags of `gridpow keys relay-blob`, unchecked.
#[derive(Clone, Debug)]
pub struct RelayBlobArgs {
    /// The relay bundle directory.
    pub bundle: PathBuf,
    /// Relay id.
    pub id: u32,
    /// `bridge` or `standalone`.
    pub mode: String,
    /// Radio channel (standalone: the access point's).
    pub channel: u8,
    /// PoW difficulty (standalone).
    pub difficulty: u8,
    /// Seconds between blocks (0 = firmware default).
    pub block_interval_s: u32,
    /// Wi-Fi network name (standalone).
    pub wifi_ssid: Option<String>,
    /// File holding the Wi-Fi passphrase (standalone; empty file = open network).
    pub wifi_pass_file: Option<PathBuf>,
    /// MQTT broker host name (standalone; also the TLS server name).
    pub broker_host: Option<String>,
    /// MQTT broker port.
    pub broker_port: u16,
    /// Refuse frames from meters whose MAC is not registered.
    pub require_registered_mac: bool,
    /// Where to write the blob (default `<bundle>/relay-<id>.bin`).
    pub out: Option<PathBuf>,
}

/// A checked plan: the configuration and what goes with it.
struct RelayBlobPlan {
    config: RelayConfig,
    meters: Vec<RelayMeter>,
    /// CA certificate, client certificate, client key (DER).
    tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    out: PathBuf,
}

/// The passphrase in `path` without its trailing line break. WPA2/WPA3
/// personal takes 8 to 63 characters or 64 hex digits; empty means an open
/// network.
fn read_passphrase(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the Wi-Fi passphrase from {}", path.display()))?;
    let pass = text.strip_suffix('\n').unwrap_or(&text);
    let pass = pass.strip_suffix('\r').unwrap_or(pass);
    let ok = pass.is_empty()
        || (8..=63).contains(&pass.len())
        || (pass.len() == 64 && pass.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        bail!(
            "{}: a Wi-Fi passphrase has 8 to 63 characters or 64 hex digits (this one has {} bytes)",
            path.display(),
            pass.len()
        );
    }
    Ok(pass.to_string())
}

fn plan(a: &RelayBlobArgs) -> anyhow::Result<RelayBlobPlan> {
    if !(1..=14).contains(&a.channel) {
        bail!("--channel must be 1 to 14");
    }
    let bundle = KeyDir::new(&a.bundle);
    // The blob ends up on a device: build it only from a least-privilege bundle.
    bundle.check_role(Role::Relay(a.id)).with_context(|| {
        format!(
            "{} is not relay {}'s bundle (write one with `gridpow keys export relay --id {}`)",
            a.bundle.display(),
            a.id,
            a.id
        )
    })?;
    let mut config = RelayConfig::bridge(a.id, a.channel);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.bundle.join(format!("relay-{}.bin", a.id)));
    match a.mode.as_str() {
        "bridge" => {
            if a.wifi_ssid.is_some() || a.wifi_pass_file.is_some() || a.broker_host.is_some() {
                bail!("bridge mode takes no Wi-Fi or broker settings (the Linux relay publishes)");
            }
            return Ok(RelayBlobPlan {
                config,
                meters: Vec::new(),
                tls: None,
                out,
            });
        }
        "standalone" => config.mode = RelayMode::Standalone,
        other => bail!("--mode {other:?}: expected bridge or standalone"),
    }
    let ssid = a
        .wifi_ssid
        .as_deref()
        .context("standalone mode needs --wifi-ssid")?;
    let pass_file = a
        .wifi_pass_file
        .as_deref()
        .context("standalone mode needs --wifi-pass-file")?;
    let host = a
        .broker_host
        .as_deref()
        .context("standalone mode needs --broker-host (a name on the broker's certificate)")?;
    if ssid.is_empty() {
        bail!("--wifi-ssid is empty");
    }
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
        bail!("--broker-host {host:?} is not a host name");
    }
    if a.broker_port == 0 {
        bail!("--broker-port must not be 0");
    }
    config.wifi_ssid = ShortStr::new(ssid).context("--wifi-ssid is longer than 32 bytes")?;
    config.wifi_password = ShortStr::new(&read_passphrase(pass_file)?)
        .context("the Wi-Fi passphrase is longer than 64 bytes")?;
    config.broker_host = ShortStr::new(host).context("--broker-host is longer than 64 bytes")?;
    config.broker_port = a.broker_port;
    config.difficulty = a.difficulty;
    config.block_interval_s = a.block_interval_s;
    config.require_registered_mac = a.require_registered_mac;
    config.signing_seed = bundle.relay_signing_key(a.id)?.to_bytes();
    config.server_public_key = bundle.server_verifying_key()?.to_bytes();

    let tls = gridpow_keys::relay_tls_der(&bundle, a.id)?;
    let room = relay_blob_meter_room(tls.0.len() + tls.1.len() + tls.2.len());
    let (meters, left_out) = bundle.relay_hop_entries(room)?;
    let meter_count = distinct_meters(meters.iter().map(|e| e.meter_id));
    if meters.len() > room {
        bail!(
            "the bundle holds {meter_count} meters' hop keys; beside its TLS material an ESP32 \
             relay's blob takes at most {room} (export the bundle with --meters A-B)"
        );
    }
    if left_out > 0 {
        eprintln!(
            "warning: a site-secret rotation is under way, and {left_out} meters' hop keys under \
             their other key id do not fit the blob: with it, this relay refuses their frames \
             under that key id. Flash those meters with their new keys first (a flashed meter \
             loses its unsent readings), then this blob within their backlog's reach \
             (docs/deploy/README.md, \"Rotating the site secret\")"
        );
    }
    if a.require_registered_mac && meters.iter().any(|m| m.mac.is_none()) {
        bail!("--require-registered-mac: some of the bundle's meters have no MAC in meters.toml");
    }
    Ok(RelayBlobPlan {
        config,
        meters,
        tls: Some(tls),
        out,
    })
}

/// Meters among blob entries (a meter is listed once per key id).
fn distinct_meters(ids: impl Iterator<Item = u32>) -> usize {
    ids.collect::<std::collections::BTreeSet<u32>>().len()
}

/// Runs `gridpow keys relay-blob`.
pub fn run(a: &RelayBlobArgs) -> anyhow::Result<()> {
    let p = plan(a)?;
    let tls = p.tls.as_ref().map(|(ca, cert, key)| RelayTls {
        ca_der: ca,
        cert_der: cert,
        key_der: key,
    });
    let blob = match encode_relay_provisioning(&p.config, &p.meters, tls.as_ref()) {
        Ok(b) => b,
        Err(BlobError::TooLarge) => bail!(
            "{} meters and the TLS material do not fit the {MAX_RELAY_BLOB_LEN}-byte gp_config \
             partition: give this relay fewer meters (export the bundle with --meters A-B)",
            p.meters.len()
        ),
        Err(e) => bail!("cannot encode the relay blob: {e}"),
    };
    // Refuse to write what the firmware would refuse to read.
    if let Err(e) = RelayConfig::decode(&blob) {
        bail!("the encoded blob does not decode: {e}");
    }
    gridpow_common::durable::write_file(&p.out, &blob, true)
        .with_context(|| format!("writing {}", p.out.display()))?;
    println!(
        "relay {} blob ({:?} mode, channel {}): {} ({} bytes of {MAX_RELAY_BLOB_LEN}, 0600, SECRET)",
        a.id,
        p.config.mode,
        p.config.channel,
        p.out.display(),
        blob.len()
    );
    if let Some(t) = &tls {
        println!(
            "  {} meters ({} hop keys), Wi-Fi {:?}, broker {}:{}, CA {} B, certificate {} B, key {} B (DER)",
            distinct_meters(p.meters.iter().map(|m| m.meter_id)),
            p.meters.len(),
            p.config.wifi_ssid.as_str(),
            p.config.broker_host.as_str(),
            p.config.broker_port,
            t.ca_der.len(),
            t.cert_der.len(),
            t.key_der.len()
        );
    }
    println!(
        "  espflash write-bin --chip esp32c3 {CONFIG_OFFSET:#x} {}",
        p.out.display()
    );
    println!("  it holds the relay's signing key, TLS key and Wi-Fi passphrase: delete it after flashing");
    Ok(())
}
