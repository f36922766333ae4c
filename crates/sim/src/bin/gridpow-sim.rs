//! Standalone `gridpow-sim`: the same flags as `gridpow sim`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gridpow-sim",
    version,
    about = "Simulate gridpow meters and relays over ESP-NOW air"
)]
struct Cli {
    #[command(flatten)]
    sim: gridpow_sim::SimArgs,
}

fn main() -> anyhow::Result<()> {
    gridpow_sim::run_cli(Cli::parse().sim)
}
