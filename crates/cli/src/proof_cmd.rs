//! `gridpow check-proof` and `gridpow prove-reading`: one reading's proof
//! document (`gridpow-reading-proof/v1`, [`gridpow_tlog::reading_proof`]),
//! checked offline against the log's and the witnesses' keys, and fetched
//! from a grid server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use gridpow_tlog::reading_proof::{ReadingProof, VerifiedReading, FORMAT};
use gridpow_tlog::{Error, Malformed, Rejected};

use crate::log_trust::{LogTrust, LogTrustArgs};
use serde_json::json;

#[derive(Args, Debug)]
pub struct CheckProofArgs {
    /// The proof document (JSON, gridpow-reading-proof/v1), as `prove-reading` writes it.
    file: PathBuf,
    #[command(flatten)]
    trust: LogTrustArgs,
    /// The meter's end-to-end key (32 hex digits), or its 48-byte provisioned
    /// secret (96 hex digits): also open the frame and check that the values
    /// stated are the ones the meter sealed.
    #[arg(long, value_name = "HEX")]
    meter_key: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `check-proof` checks with, validated from its flags.
struct CheckConfig {
    trust: LogTrust,
    e2e_key: Option<[u8; 16]>,
}

impl CheckConfig {
    fn new(a: &CheckProofArgs) -> anyhow::Result<CheckConfig> {
        Ok(CheckConfig {
            trust: a.trust.verifiers()?,
            e2e_key: a.meter_key.as_deref().map(meter_key_arg).transpose()?,
        })
    }
}

/// `--meter-key`: the 16-byte end-to-end key, or the 48 provisioned bytes
/// (hop secret ‖ end-to-end key), in hex.
fn meter_key_arg(hex_key: &str) -> anyhow::Result<[u8; 16]> {
    let bytes = hex::decode(hex_key.trim()).context("--meter-key is not hex")?;
    let e2e = match bytes.len() {
        16 => &bytes[..],
        48 => &bytes[32..],
        n => bail!(
            "--meter-key is {n} bytes: give the 16-byte end-to-end key or the 48-byte meter secret"
        ),
    };
    let mut k = [0u8; 16];
    k.copy_from_slice(e2e);
    Ok(k)
}

/// The check a verification error comes from, for the one-line verdict.
fn failed_check(proof: &ReadingProof, e: &Error) -> &'static str {
    match e {
        Error::Rejected(Rejected::UnsupportedFormat(_)) => "format",
        Error::Malformed(Malformed::BlockHeader(_)) => "block header",
        Error::Malformed(Malformed::Frame(_)) => "frame",
        Error::Rejected(Rejected::FrameNotInBlock { .. }) => "block path",
        Error::Malformed(Malformed::ProofTooLong) if proof.block_path.len() > 64 => "block path",
        Error::Rejected(
            Rejected::WrongMeter { .. }
            | Rejected::WrongEpoch { .. }
            | Rejected::SeqNotInFrame { .. },
        ) => "reading",
        Error::Malformed(Malformed::LogEntry(_))
        | Error::Rejected(Rejected::EntryNotForBlock(_)) => "log entry",
        Error::Rejected(Rejected::EntryNotInLog { .. })
        | Error::Malformed(Malformed::ProofTooLong) => "log path",
        Error::Rejected(Rejected::TooFewCosignatures { .. }) => "cosignatures",
        Error::Rejected(Rejected::FrameDoesNotOpen | Rejected::ValuesDiffer) => "values",
        // Everything else comes from opening the signed checkpoint note.
        _ => "checkpoint",
    }
}

/// Exit codes: 0 the proof verifies, 1 it does not (the line names the
/// failed check), 2 it could not be checked (unreadable file, bad key or flag).
pub fn check(a: CheckProofArgs) -> anyhow::Result<ExitCode> {
    let cfg = CheckConfig::new(&a)?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let proof: ReadingProof = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            return Ok(invalid(
                &a,
                "document",
                &format!("{} is not a {FORMAT} document: {e}", a.file.display()),
            ))
        }
    };
    let verified = match proof.verify(
        &cfg.trust.log,
        &cfg.trust.witnesses,
        cfg.trust.min_cosignatures,
    ) {
        Ok(v) => v,
        Err(e) => return Ok(invalid(&a, failed_check(&proof, &e), &e.to_string())),
    };
    if let Some(key) = cfg.e2e_key {
        if let Err(e) = proof.verify_values(key) {
            return Ok(invalid(&a, failed_check(&proof, &e), &e.to_string()));
        }
    }
    if a.json {
        println!("{}", report_json(&proof, &verified, &cfg));
    } else {
        print!("{}", report_text(&proof, &verified, &cfg));
    }
    Ok(ExitCode::SUCCESS)
}

fn invalid(a: &CheckProofArgs, check: &str, error: &str) -> ExitCode {
    if a.json {
        println!(
            "{}",
            json!({ "verified": false, "failed_check": check, "error": error })
        );
    }
    eprintln!("PROOF INVALID: {check} check failed: {error}");
    ExitCode::from(1)
}

fn report_text(p: &ReadingProof, v: &VerifiedReading, cfg: &CheckConfig) -> String {
    let witnesses: Vec<String> = v
        .cosignatures
        .iter()
        .map(|c| format!("{} (at {})", c.name, c.timestamp))
        .collect();
    let values = if cfg.e2e_key.is_some() {
        "values: opened with the meter's end-to-end key; they are the ones stated"
    } else {
        "values: not checked (sealed under the meter's end-to-end key; give --meter-key)"
    };
    format!(
        "proof OK: reading {seq} of meter {meter} (boot epoch {epoch}), {ts} ms, {e} mWh\n\
         \x20 frame: leaf {leaf} of block {height} of relay {relay} (block hash {hash}, sealed at {bt} ms)\n\
         \x20 log: entry {index} of {size} in {origin}, checkpoint signed by {log_key}\n\
         \x20 witnesses: {n} of {given} cosigned ({min} required){sep}{list}\n\
         \x20 {values}\n",
        seq = v.seq,
        meter = v.meter_id,
        epoch = v.epoch,
        ts = p.reading.values.timestamp_ms,
        e = p.reading.values.energy_mwh,
        leaf = v.leaf_index,
        height = v.height,
        relay = v.relay_id,
        hash = hex::encode(v.block_hash),
        bt = v.block_time_ms,
        index = v.log_index,
        size = v.tree_size,
        origin = v.origin,
        log_key = cfg.trust.log.vkey(),
        n = v.cosignatures.len(),
        given = cfg.trust.witnesses.len(),
        min = cfg.trust.min_cosignatures,
        sep = if witnesses.is_empty() { "" } else { ": " },
        list = witnesses.join(", "),
    )
}

fn report_json(p: &ReadingProof, v: &VerifiedReading, cfg: &CheckConfig) -> serde_json::Value {
    json!({
        "verified": true,
        "reading": p.reading,
        "values_checked": cfg.e2e_key.is_some(),
        "relay_id": v.relay_id,
        "height": v.height,
        "block_hash": hex::encode(v.block_hash),
        "block_time_ms": v.block_time_ms,
        "leaf_index": v.leaf_index,
        "log": {
            "origin": v.origin,
            "key": cfg.trust.log.vkey(),
            "index": v.log_index,
            "tree_size": v.tree_size,
            "root": hex::encode(v.root),
        },
        "min_cosignatures": cfg.trust.min_cosignatures,
        "cosignatures": v.cosignatures.iter().map(|c| json!({
            "witness": c.name,
            "key_id": format!("{:08x}", c.key_id),
            "timestamp": c.timestamp,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Args, Debug)]
pub struct ProveReadingArgs {
    /// The grid server's base URL, `http://host:port` or `https://…`.
    #[arg(long)]
    url: String,
    /// The reading's id (`id` of a reading in the API and dashboard).
    #[arg(long, value_name = "ID")]
    reading: i64,
    /// An API token that may read the reading's meter.
    #[arg(long, env = "GRIDPOW_TOKEN", hide_env_values = true)]
    token: String,
    /// Where to write the proof document (replaced atomically).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// A PEM file of CA certificates to trust for https:// instead of the
    /// public web roots (for a server whose certificate the site CA issued).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

/// The largest document accepted: a proof is a few kilobytes.
const MAX_DOCUMENT: u64 = 1 << 20;

pub fn prove(a: ProveReadingArgs) -> anyhow::Result<ExitCode> {
    let base = a.url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--url {base} is not an http:// or https:// URL");
    }
    let url = format!("{base}/api/v1/readings/{}/log-proof", a.reading);
    let agent = agent(a.ca.as_deref(), Duration::from_secs(a.timeout))?;
    let mut response = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {}", a.token))
        .header("Accept", "application/json")
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT)
        .read_to_vec()
        .with_context(|| format!("GET {url}: reading the answer"))?;
    if !status.is_success() {
        bail!("GET {url}: {}", server_error(status, &body));
    }
    let proof: ReadingProof = serde_json::from_slice(&body)
        .with_context(|| format!("GET {url}: the answer is not a {FORMAT} document"))?;
    gridpow_common::durable::write_file(&a.output, &body, false)
        .with_context(|| format!("writing {}", a.output.display()))?;
    // Read back what was written: the file is the document.
    let written: ReadingProof = serde_json::from_slice(
        &std::fs::read(&a.output).with_context(|| format!("reading {}", a.output.display()))?,
    )
    .with_context(|| format!("{} does not parse back", a.output.display()))?;
    if written != proof {
        bail!("{} does not read back as written", a.output.display());
    }
    let r = &proof.reading;
    eprintln!(
        "wrote the proof of reading {} (meter {}, boot epoch {}, seq {}; log entry {}) to {}; check it with: gridpow check-proof {} --log-key VKEY [--witness-key VKEY …]",
        a.reading,
        r.meter_id,
        r.epoch,
        r.seq,
        proof.log_index,
        a.output.display(),
        a.output.display(),
    );
    Ok(ExitCode::SUCCESS)
}

/// A blocking HTTP(S) client with a global timeout; statuses are answers,
/// not errors, so the server's error body can be shown.
fn agent(ca: Option<&Path>, timeout: Duration) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
        let mut certs = Vec::new();
        for item in parse_pem(&pem) {
            if let PemItem::Certificate(c) =
                item.with_context(|| format!("--ca {} is not PEM", ca.display()))?
            {
                certs.push(c);
            }
        }
        if certs.is_empty() {
            bail!("--ca {} holds no certificate", ca.display());
        }
        tls = tls.root_certs(RootCerts::from(certs));
    }
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("gridpow/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build()
        .into())
}

/// The server's answer to a failed request, in one line: its status and the
/// JSON error body `{"error": {"code", "message"}}` when there is one.
fn server_error(status: ureq::http::StatusCode, body: &[u8]) -> String {
    let parsed: Option<(String, String)> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some((
                e.get("code")?.as_str()?.to_owned(),
                e.get("message")?.as_str()?.to_owned(),
            ))
        });
    let hint = match status.as_u16() {
        401 => " (check --token or GRIDPOW_TOKEN)",
        403 => " (this token may not read that meter)",
        404 => " (no such reading, or a server without a transparency log)",
        _ => "",
    };
    match parsed {
        Some((code, message)) => format!("the server answered {status}: {code}: {message}{hint}"),
        None => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            format!("the server answered {status}{hint}: {}", text.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_meter_key_is_the_end_to_end_key_or_the_whole_meter_secret() {
        let e2e = [0xabu8; 16];
        assert_eq!(meter_key_arg(&hex::encode(e2e)).unwrap(), e2e);
        let mut secret = [0x11u8; 48];
        secret[32..].copy_from_slice(&e2e);
        assert_eq!(meter_key_arg(&hex::encode(secret)).unwrap(), e2e);
        assert!(meter_key_arg("abcd").is_err());
        assert!(meter_key_arg("xyz").is_err());
    }

    #[test]
    fn a_server_error_names_its_code_and_message() {
        let body = br#"{"error":{"code":"unknown_reading","message":"no reading 9"}}"#;
        let s = server_error(ureq::http::StatusCode::NOT_FOUND, body);
        assert!(
            s.contains("404 Not Found: unknown_reading: no reading 9"),
            "{s}"
        );
        let s = server_error(ureq::http::StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert!(s.contains("502 Bad Gateway: <html>oops</html>"), "{s}");
    }
}
