//! `gridpow verify-ledger`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use gridpow_keys::KeyDir;

#[derive(Args, Debug)]
pub struct VerifyLedgerArgs {
    /// A demo data directory (uses DIR/gridpow.db and DIR/keys).
    #[arg(long, conflicts_with = "db")]
    data_dir: Option<PathBuf>,
    /// The database: a SQLite path or URL.
    #[arg(long)]
    db: Option<String>,
    /// The key directory (default: DATA_DIR/keys, or ./keys with --db).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// A relay whose validly signed forks the operator has dealt with (its key
    /// rotated, docs/deploy/README.md): they are still printed, as a warning,
    /// but no longer fail the check. Repeatable.
    #[arg(long = "acknowledge-forks", value_name = "RELAY_ID")]
    acknowledge_forks: Vec<u32>,
}

/// Exit codes: 0 the ledger verifies (acknowledged forks and equivocations
/// are warnings), 1 the ledger is invalid, 2 it could not be checked.
pub fn run(a: VerifyLedgerArgs) -> anyhow::Result<ExitCode> {
    let (db, keys) = match (&a.data_dir, &a.db) {
        (Some(d), _) => (
            d.join("gridpow.db").to_string_lossy().into_owned(),
            a.keys.clone().unwrap_or_else(|| d.join("keys")),
        ),
        (None, Some(db)) => (
            db.clone(),
            a.keys.clone().unwrap_or_else(|| PathBuf::from("keys")),
        ),
        (None, None) => {
            let d = crate::default_data_dir();
            (
                d.join("gridpow.db").to_string_lossy().into_owned(),
                a.keys.clone().unwrap_or_else(|| d.join("keys")),
            )
        }
    };
    let keys = KeyDir::new(keys);
    match gridpow_server::verify_ledger(&db, &keys) {
        Ok(report) => {
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            }
            if let Some(forks) = report.fork_summary() {
                // Every stored block checks out, but a relay's key signed two histories.
                let open: Vec<u32> = report
                    .forks
                    .iter()
                    .map(|f| f.relay_id)
                    .filter(|r| !a.acknowledge_forks.contains(r))
                    .collect();
                if !open.is_empty() {
                    eprintln!("LEDGER INVALID: {forks}");
                    return Ok(ExitCode::from(1));
                }
                eprintln!("warning (acknowledged): {forks}");
            }
            if !a.json {
                println!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_verdict() => {
            eprintln!("LEDGER INVALID: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            // Exit 2, as for a usage error: the ledger was not (fully) looked
            // at, and a wrong path must never read as tampering.
            eprintln!("error: {e}");
            // The database is not echoed: a PostgreSQL URL may hold a password
            // (the error above names it with the password hidden).
            eprintln!(
                "the ledger could not be checked: this is NOT a verdict on the ledger (nothing was found wrong with it); check --db / --data-dir and the keys directory ({}), then run again",
                keys.root().display()
            );
            Ok(ExitCode::from(2))
        }
    }
}
