//! The keys a checker of the transparency log trusts, as `gridpow audit` and
//! `gridpow check-proof` take them: the log's note key, witnesses' keys, and
//! how many of those must have cosigned.

use anyhow::{bail, Context};
use clap::Args;
use gridpow_tlog::{CosignatureVerifier, NoteVerifier};

/// `--log-key`, `--witness-key`, `--min-cosignatures`.
#[derive(Args, Debug)]
pub struct LogTrustArgs {
    /// The log's note verifier key (C2SP vkey, `name+hex8+base64`, type 0x01;
    /// its name is the log's origin), or `@FILE` holding one.
    #[arg(long, value_name = "VKEY")]
    log_key: String,
    /// A witness's cosignature verifier key (C2SP vkey, type 0x04), or
    /// `@FILE`. Repeatable.
    #[arg(long = "witness-key", value_name = "VKEY")]
    witness_keys: Vec<String>,
    /// How many of the witnesses given must have cosigned the checkpoint
    /// (each key counted once). Default: all of them.
    #[arg(long, value_name = "N")]
    min_cosignatures: Option<usize>,
}

/// The verifiers the flags name.
pub struct LogTrust {
    pub log: NoteVerifier,
    pub witnesses: Vec<CosignatureVerifier>,
    pub min_cosignatures: usize,
}

impl LogTrustArgs {
    /// Reads and checks the keys; more cosignatures required than witnesses
    /// given is an error.
    pub fn verifiers(&self) -> anyhow::Result<LogTrust> {
        let log = NoteVerifier::from_vkey(&vkey_arg(&self.log_key)?)
            .with_context(|| format!("--log-key {}", self.log_key))?;
        let witnesses = self
            .witness_keys
            .iter()
            .map(|w| {
                CosignatureVerifier::from_vkey(&vkey_arg(w)?)
                    .with_context(|| format!("--witness-key {w}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let min_cosignatures = self.min_cosignatures.unwrap_or(witnesses.len());
        if min_cosignatures > witnesses.len() {
            bail!(
                "--min-cosignatures {min_cosignatures} needs at least as many --witness-key (given: {})",
                witnesses.len()
            );
        }
        Ok(LogTrust {
            log,
            witnesses,
            min_cosignatures,
        })
    }
}

/// A verifier key given inline or as `@FILE` (its first non-empty line).
fn vkey_arg(arg: &str) -> anyhow::Result<String> {
    let Some(path) = arg.strip_prefix('@') else {
        return Ok(arg.trim().to_owned());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {path}"))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("key file {path} is empty"))
}
