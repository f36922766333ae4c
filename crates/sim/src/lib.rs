//! # gridpow-sim: the radio simulator
//!
//! A deterministic discrete-event simulator of ESP-NOW meters and gridpow
//! relays. Meters run the protocol core's real [`gridpow_proto::sender::Sender`]
//! (backlog, stop-and-wait, backoff with jitter) and relays its real
//! [`gridpow_proto::ingress::Ingress`] (MAC filter, AEAD, replay window, ACKs);
//! frames are sealed and opened with RustCrypto. Only the air and the clock are
//! simulated: see [`engine`] for the radio model and [`phy`] for airtime.
//!
//! Determinism: events are ordered by time, then by insertion sequence; every
//! meter and relay draws from its own PCG streams derived from the master seed
//! ([`rng`]); the same seed gives the same event trace, whose hash is reported.
//!
//! The command line lives in the `gridpow` binary (`gridpow sim`, in
//! `crates/cli`): it parses flags into plain data, validates them into a
//! [`SimConfig`] (or a [`study::StudyConfig`]) and calls this library, whose
//! errors are [`SimError`].

pub mod config;
pub mod engine;
mod error;
pub mod phy;
pub mod plot;
pub mod queue;
pub mod rng;
pub mod run;
pub mod stats;
pub mod study;
pub mod table;

pub use config::{AckAir, Arrivals, GilbertElliott, MacModel, Scheme, SimConfig};
pub use engine::{Progress, Simulation};
pub use error::SimError;
pub use stats::Report;

/// Runs one configuration without progress output.
pub fn simulate(cfg: SimConfig) -> Result<Report, SimError> {
    Simulation::run_threads(cfg, &mut |_| true)
}
