//! `gridpow tokens …`: API tokens of a grid server (the file `http.tokens_file`,
//! by default `tokens.toml` in the server's key directory). The server
//! re-reads the file within a second of a change: no restart needed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gridpow_server::auth::{Role, TokenFile};

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token and print it (once: the file keeps only its SHA-256).
    Create {
        /// The tokens file (created with mode 0600 if missing).
        #[arg(long)]
        file: PathBuf,
        /// A unique name: who holds the token (used to revoke it).
        #[arg(long)]
        name: String,
        /// viewer (reads everything), operator, admin, or customer (one meter: --meter).
        #[arg(long)]
        role: Role,
        /// The meter a customer token may read.
        #[arg(long)]
        meter: Option<u32>,
    },
    /// List the tokens (names, roles, meters; never the tokens).
    List {
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Revoke a token by name; the server refuses it within a second.
    Revoke {
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
        /// The token's name.
        #[arg(long)]
        name: String,
    },
}

pub fn run(c: TokensCommand) -> anyhow::Result<ExitCode> {
    match c {
        TokensCommand::Create {
            file,
            name,
            role,
            meter,
        } => {
            let token = create(&file, &name, role, meter)?;
            eprintln!(
                "created {} token {name:?} in {}; it is shown only now:",
                role.as_str(),
                file.display()
            );
            println!("{token}");
        }
        TokensCommand::List { file } => {
            let f = TokenFile::load(&file)?;
            println!("{:<24} {:<9} {:>8}  created", "name", "role", "meter");
            for t in &f.tokens {
                let meter = t.meter.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<9} {:>8}  {}",
                    t.name,
                    t.role.as_str(),
                    meter,
                    t.created_ms
                );
            }
        }
        TokensCommand::Revoke { file, name } => {
            let mut f = TokenFile::load(&file)?;
            if !f.revoke(&name) {
                anyhow::bail!("no token named {name:?} in {}", file.display());
            }
            f.save(&file)?;
            eprintln!("revoked token {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds a token to `file` and returns it.
pub fn create(
    file: &std::path::Path,
    name: &str,
    role: Role,
    meter: Option<u32>,
) -> anyhow::Result<String> {
    let mut f = TokenFile::load(file)?;
    let token = f
        .create(name, role, meter)
        .with_context(|| format!("creating token {name:?} in {}", file.display()))?;
    f.save(file)?;
    Ok(token)
}
