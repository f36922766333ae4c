//! `gridpow`: the command line of the gridpow stack.
//!
//! Flags are parsed into plain data here, validated into configurations by
//! each subcommand's module, and the libraries do the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod audit_cmd;
mod bench_cmd;
mod broker_cmd;
mod demo;
mod keys_cmd;
mod ledger_cmd;
mod log_trust;
mod proof_cmd;
mod relay_blob;
mod services;
mod sim_cmd;
mod tokens_cmd;
mod witness_cmd;

/// gridpow: smart-meter readings from ESP32 meters to a verified database, sealed end to end.
#[derive(Parser, Debug)]
#[command(name = "gridpow", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax, e.g. `info`, `gridpow_relay=debug`); also `RUST_LOG`.
    #[arg(
        long,
        global = true,
        env = "GRIDPOW_LOG",
        default_value = "warn,rumqttd=off"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything on one machine: embedded TLS broker, relay, grid server on SQLite, virtual meters, dashboard.
    Demo(demo::DemoArgs),
    /// Serve the embedded MQTT broker (TLS, client certificates) from a key directory, until Ctrl-C.
    Broker(broker_cmd::BrokerArgs),
    /// Create and manage keys, certificates and the meter registry.
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// Create, list and revoke the API tokens of a grid server (roles viewer, operator, admin, customer).
    #[command(subcommand)]
    Tokens(tokens_cmd::TokensCommand),
    /// Run a relay (cluster head): radio ingress, journal, blocks with PoW, MQTT publishing.
    Relay(services::ConfigArg),
    /// Run a grid server: verify blocks, store readings, HTTP API and dashboard.
    Server(services::ServerArgs),
    /// Run virtual meters that send over UDP air to a relay.
    Meters(services::ConfigArg),
    /// Re-verify the whole stored ledger offline (signatures, PoW, Merkle roots, chain, meter tags).
    VerifyLedger(ledger_cmd::VerifyLedgerArgs),
    /// Check a reading's proof document offline: frame, block, log entry, signed and cosigned checkpoint.
    CheckProof(proof_cmd::CheckProofArgs),
    /// Fetch a reading's proof document from a grid server into a file.
    ProveReading(proof_cmd::ProveReadingArgs),
    /// Simulate the radio channel with thousands of meters (scalability study).
    Sim(sim_cmd::SimArgs),
    /// Run a transparency-log witness (c2sp.org/tlog-witness): cosign checkpoints that are consistent with what it saw.
    Witness(witness_cmd::WitnessArgs),
    /// Measure every ratio gridpow promises against its baseline in the same run (PoW, verification, ingest, simulator, journal).
    Bench(bench_cmd::BenchArgs),
    /// Audit the grid server's transparency log: signatures, cosignatures, every tile and entry, consistency over time.
    Audit(audit_cmd::AuditArgs),
    /// Print a commented example configuration with every default.
    ExampleConfig {
        /// Which one: relay, server or meters.
        #[arg(value_enum)]
        kind: services::ConfigKind,
    },
}

/// Colour in log lines only for a terminal, and never with `NO_COLOR` set
/// (no-color.org): escape codes in a log file or a pipe are noise.
fn log_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let _ = tracing_subscriber::fmt()
        .with_ansi(log_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    // Each service's --help lists the environment variables it honours,
    // generated from its configuration so the list cannot go stale.
    let mut command = Cli::command();
    for (name, kind) in [
        ("relay", services::ConfigKind::Relay),
        ("server", services::ConfigKind::Server),
        ("meters", services::ConfigKind::Meters),
    ] {
        command = command.mut_subcommand(name, |c| c.after_long_help(services::env_help(kind)));
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Broker(a) => broker_cmd::run(a),
        Command::Keys(k) => keys_cmd::run(k),
        Command::Tokens(t) => tokens_cmd::run(t),
        Command::Relay(a) => services::run_relay(&a.config),
        Command::Server(a) => services::run_server(&a),
        Command::Meters(a) => services::run_meters(&a.config),
        Command::VerifyLedger(a) => ledger_cmd::run(a),
        Command::CheckProof(a) => proof_cmd::check(a),
        Command::ProveReading(a) => proof_cmd::prove(a),
        Command::Sim(a) => sim_cmd::run(a),
        Command::Witness(a) => witness_cmd::run(a),
        Command::Audit(a) => audit_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::ExampleConfig { kind } => services::example_config(kind),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes in one line, each cause once: many library
/// errors already print their source in their own text, and anyhow's `{:#}`
/// would print it again ("x.toml: No such file…: No such file…").
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The demo's data directory when `--data-dir` is not given (also where
/// `verify-ledger` looks by default): the per-user data directory
/// (`$XDG_DATA_HOME/gridpow/demo`, else `~/.local/share/gridpow/demo` on
/// Linux), never the working directory, because it holds the site secret and
/// private keys and a working directory is often a git checkout. Without a
/// home directory it falls back to `./gridpow-data`, which .gitignore lists.
pub(crate) fn default_data_dir() -> PathBuf {
    directories::BaseDirs::new()
        .map(|d| d.data_dir().join("gridpow").join("demo"))
        .unwrap_or_else(|| PathBuf::from(LEGACY_DATA_DIR))
}

/// The demo's default data directory before it moved out of the working tree.
const LEGACY_DATA_DIR: &str = "gridpow-data";

#[cfg(test)]
mod tests {
    use super::{error_text, log_colour};

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some("".into())));
        assert!(!log_colour(true, Some("1".into())));
        assert!(!log_colour(false, None));
    }

    /// An error that prints its source in its own text, and also exposes it.
    #[derive(Debug)]
    struct Io {
        path: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Io {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Io {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_text_is_not_repeated() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Io {
            path: "keys/site.toml",
            source: io(),
        })
        .context("loading the keys");
        assert_eq!(
            error_text(&e),
            format!("loading the keys: keys/site.toml: {}", io())
        );
        let e = anyhow::Error::new(io()).context("--db");
        assert_eq!(error_text(&e), format!("--db: {}", io()));
    }
}
