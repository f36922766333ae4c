//! Writes the binary provisioning blobs that `espflash write-bin 0x150000`
//! puts into a board's `gp_config` partition, until `gridpow keys add-meter`
//! writes them itself (it can call `provisioning::encode_provisioning`).
//!
//! ```text
//! provision meter KEYDIR/meters/42.toml -o meter-42.bin
//!     [--relay-mac aa:bb:cc:dd:ee:ff] [--min-epoch N] [--nominal-hz 50|60]
//!     [--voltage-gain V_PER_CODE] [--current-gain A_PER_CODE]
//!     [--voltage-offset CODES] [--current-offset CODES]
//!     [--phase-samples S] [--power-offset CODES2] [--sample-rate HZ]
//! provision relay-bridge --relay-id 1 --channel 6 -o relay-1.bin
//! provision relay-standalone --relay-id 1 --channel 6 --difficulty 16
//!     --signing-key KEYDIR/relays/1.key --server-pub KEYDIR/server.pub
//!     [--ssid S --password P --broker-host H --broker-port 8883]
//!     -o relay-1.bin KEYDIR/meters/1.toml KEYDIR/meters/2.toml ...
//! ```
//!
//! Run it with `cargo run -p gridpow-firmware-logic --features std --example provision -- …`.
//! Its `relay-standalone` blob has no TLS section, which the firmware needs
//! to publish: `gridpow keys relay-blob` writes the complete blob from a
//! relay bundle.
//! The meter TOML is the file `gridpow keys add-meter` writes (meter_id,
//! key_id, meter_secret, relay_mac, channel, interval_s).

use std::collections::BTreeMap;
use std::process::ExitCode;

use gridpow_firmware_logic::provisioning::{
    encode_provisioning, encode_relay_provisioning, MeterConfig, RelayConfig, RelayMeter,
    RelayMode, ShortStr,
};
use gridpow_proto::crypto::MeterSecret;

type Res<T> = Result<T, String>;

/// The flat `key = value` subset of TOML the provisioning files use.
fn parse_flat_toml(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            m.insert(k.trim().to_string(), v);
        }
    }
    m
}

fn hex32(s: &str) -> Res<[u8; 32]> {
    hex_n(s)
}

fn hex_n<const N: usize>(s: &str) -> Res<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return Err(format!("expected {} hex digits, got {}", 2 * N, s.len()));
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn mac(s: &str) -> Res<[u8; 6]> {
    let parts: Vec<_> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
    }
    Ok(out)
}

fn field<T: std::str::FromStr>(m: &BTreeMap<String, String>, k: &str) -> Res<T> {
    m.get(k)
        .ok_or_else(|| format!("missing {k}"))?
        .parse()
        .map_err(|_| format!("{k} is not valid"))
}

fn read(path: &str) -> Res<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn meter_config(path: &str) -> Res<MeterConfig> {
    let m = parse_flat_toml(&read(path)?);
    let mut cfg = MeterConfig::new(
        field(&m, "meter_id")?,
        field(&m, "key_id")?,
        MeterSecret::from_bytes(&hex_n(
            m.get("meter_secret").ok_or("missing meter_secret")?,
        )?),
        field(&m, "channel")?,
        field(&m, "interval_s")?,
    );
    if let Some(r) = m.get("relay_mac") {
        cfg.relay_mac = Some(mac(r)?);
    }
    Ok(cfg)
}

struct Args {
    flags: BTreeMap<String, String>,
    positional: Vec<String>,
}

fn parse_args(args: &[String]) -> Res<Args> {
    let mut flags = BTreeMap::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            flags.insert(name.to_string(), v.clone());
        } else {
            positional.push(a.clone());
        }
    }
    Ok(Args { flags, positional })
}

fn run(argv: &[String]) -> Res<()> {
    let (cmd, rest) = argv
        .split_first()
        .ok_or("usage: provision meter|relay-bridge|relay-standalone …")?;
    let a = parse_args(rest)?;
    let out = a.flags.get("o").ok_or("-o OUT.bin is required")?;
    let blob = match cmd.as_str() {
        "meter" => {
            let path = a
                .positional
                .first()
                .ok_or("the meter's TOML file is required")?;
            let mut cfg = meter_config(path)?;
            let f = &a.flags;
            if let Some(v) = f.get("relay-mac") {
                cfg.relay_mac = Some(mac(v)?);
            }
            let num = |k: &str| -> Res<Option<f32>> {
                f.get(k)
                    .map(|v| v.parse().map_err(|_| format!("--{k} is not a number")))
                    .transpose()
            };
            if let Some(v) = f.get("min-epoch") {
                cfg.min_epoch = v.parse().map_err(|_| "--min-epoch is not a number")?;
            }
            if let Some(v) = f.get("nominal-hz") {
                cfg.nominal_hz = v.parse().map_err(|_| "--nominal-hz is not a number")?;
            }
            if let Some(v) = f.get("sample-rate") {
                cfg.sample_rate_hz = v.parse().map_err(|_| "--sample-rate is not a number")?;
            }
            let c = &mut cfg.calibration;
            c.voltage_gain = num("voltage-gain")?.unwrap_or(c.voltage_gain);
            c.current_gain = num("current-gain")?.unwrap_or(c.current_gain);
            c.voltage_offset_codes = num("voltage-offset")?.unwrap_or(c.voltage_offset_codes);
            c.current_offset_codes = num("current-offset")?.unwrap_or(c.current_offset_codes);
            c.phase_samples = num("phase-samples")?.unwrap_or(c.phase_samples);
            c.power_offset_codes = num("power-offset")?.unwrap_or(c.power_offset_codes);
            let blob = encode_provisioning(&cfg);
            // Refuse to write what the firmware would refuse to read.
            MeterConfig::decode(&blob).map_err(|e| e.to_string())?;
            blob
        }
        "relay-bridge" | "relay-standalone" => {
            let f = &a.flags;
            let id: u32 = f
                .get("relay-id")
                .ok_or("--relay-id is required")?
                .parse()
                .map_err(|_| "--relay-id")?;
            let ch: u8 = f
                .get("channel")
                .ok_or("--channel is required")?
                .parse()
                .map_err(|_| "--channel")?;
            let mut cfg = RelayConfig::bridge(id, ch);
            let mut meters = Vec::new();
            if cmd == "relay-standalone" {
                cfg.mode = RelayMode::Standalone;
                cfg.difficulty = f
                    .get("difficulty")
                    .map_or(Ok(16), |v| v.parse())
                    .map_err(|_| "--difficulty")?;
                cfg.signing_seed = hex32(&read(
                    f.get("signing-key").ok_or("--signing-key is required")?,
                )?)?;
                cfg.server_public_key = hex32(&read(
                    f.get("server-pub").ok_or("--server-pub is required")?,
                )?)?;
                let short = |k: &str| -> Res<Option<String>> { Ok(f.get(k).cloned()) };
                if let Some(s) = short("ssid")? {
                    cfg.wifi_ssid = ShortStr::new(&s).ok_or("--ssid is longer than 32 bytes")?;
                }
                if let Some(s) = short("password")? {
                    cfg.wifi_password =
                        ShortStr::new(&s).ok_or("--password is longer than 64 bytes")?;
                }
                if let Some(s) = short("broker-host")? {
                    cfg.broker_host =
                        ShortStr::new(&s).ok_or("--broker-host is longer than 64 bytes")?;
                }
                if let Some(p) = f.get("broker-port") {
                    cfg.broker_port = p.parse().map_err(|_| "--broker-port")?;
                }
                for p in &a.positional {
                    let m = meter_config(p)?;
                    meters.push(RelayMeter {
                        meter_id: m.meter_id,
                        key_id: m.key_id,
                        mac: None,
                        // The relay gets the hop secret only, never the end-to-end key.
                        secret: m.secret.hop,
                    });
                }
            }
            let blob = encode_relay_provisioning(&cfg, &meters, None).map_err(|e| e.to_string())?;
            RelayConfig::decode(&blob).map_err(|e| e.to_string())?;
            blob
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    std::fs::write(out, &blob).map_err(|e| format!("{out}: {e}"))?;
    println!(
        "wrote {out} ({} bytes); flash it with: espflash write-bin {:#x} {out}",
        blob.len(),
        gridpow_firmware_logic::layout::CONFIG_OFFSET
    );
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provision: {e}");
            ExitCode::FAILURE
        }
    }
}
