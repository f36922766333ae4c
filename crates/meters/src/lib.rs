//! # gridpow-meters: virtual meters
//!
//! A [`Fleet`] runs any number of simulated smart meters on one thread. Each
//! meter is the protocol core's real sender state machine (AES-128-CCM
//! sealing with its own derived key, stop-and-wait with backoff and jitter,
//! authenticated ACKs that synchronise its clock) fed by a [`load::Household`]
//! model: a daily curve with morning and evening peaks, noise, appliance
//! steps, voltage around 230 V, frequency around 50 Hz, a power factor from
//! the load mix, and a monotonically increasing energy register.
//!
//! Frames travel over any [`RadioPort`]: the demo's in-process medium, or
//! UDP air to a relay in another process ([`open_udp_radio`], with loss
//! injected in both directions so ACK loss and retransmission happen).
//!
//! ## Ground truth and restarts
//! With `truth_file` set, every generated reading (meter id, boot epoch,
//! sequence number, all fields) is appended as one JSON line: tests compare
//! the database against it ([`read_truth`]). Boot epochs live in
//! `state_dir/fleet-state.json` and are incremented and fsynced *before* a
//! booted fleet sends anything, so a restarted fleet never reuses a
//! (boot epoch, counter) nonce; sequence numbers restart at 0 in each epoch.
//! Energy registers are saved there every minute and at shutdown.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
mod fleet;
pub mod load;
pub mod silence;
pub mod state;
pub mod truth;

use std::path::PathBuf;
use std::time::Duration;

use gridpow_common::config::ConfigError;
use gridpow_common::datadir::DataDirError;
use gridpow_keys::KeyError;
use gridpow_proto::MacAddr;
use gridpow_radio::{Confirmation, RadioError, RadioFrame, RadioPort, UdpAir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use config::{FleetConfig, FleetRadioConfig, MeterSelection, SenderTunables};
pub use fleet::{Fleet, FleetHandle, FleetStats};
pub use truth::{read_truth, TruthRecord};

/// Why the fleet could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys or the registry could not be read.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The radio could not be opened.
    #[error(transparent)]
    Radio(#[from] RadioError),
    /// The state directory is in use by another fleet, or not a writable directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A state or truth file is malformed.
    #[error("{path}: {message}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No registry meter matches the selection.
    #[error("no meter of the registry matches the `meters` selection")]
    NoMeters,
    /// A meter names a key id the site does not have.
    #[error("meter {meter_id} uses key id {key_id}, which site.toml does not have")]
    UnknownKeyId {
        /// The meter.
        meter_id: u32,
        /// Its key id.
        key_id: u8,
    },
    /// The core refused a sender setting.
    #[error("sender: {0}")]
    Sender(String),
    /// The fleet thread panicked.
    #[error("the fleet thread panicked")]
    Panicked,
}

/// A radio port that also loses received frames with a probability (the UDP
/// air itself only loses what it sends).
struct LossyPort<P> {
    inner: P,
    loss: f64,
    rng: StdRng,
}

impl<P: RadioPort> RadioPort for LossyPort<P> {
    fn send(&mut self, src: MacAddr, dst: MacAddr, data: &[u8]) -> Result<(), RadioError> {
        self.inner.send(src, dst, data)
    }

    fn recv(&mut self, timeout: Duration) -> Result<Option<RadioFrame>, RadioError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.inner.recv(left)? {
                Some(_) if self.loss > 0.0 && self.rng.gen_bool(self.loss) => {
                    if left.is_zero() {
                        return Ok(None);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    fn confirm_peer(&mut self, mac: MacAddr, how: Confirmation) {
        self.inner.confirm_peer(mac, how);
    }
}

/// The fleet's UDP air: binds `radio.udp_listen`, sends to `radio.udp_relay`
/// and every address of `radio.udp_also_heard_by`, and loses `radio.loss` of
/// the frames in each direction (seeded, each copy on its own).
pub fn open_udp_radio(cfg: &FleetConfig) -> Result<Box<dyn RadioPort>, FleetError> {
    let air = UdpAir::bind(
        cfg.radio.udp_listen,
        Some(cfg.radio.udp_relay),
        cfg.radio.loss,
        cfg.seed,
    )?
    .also_heard_by(cfg.radio.udp_also_heard_by.clone());
    Ok(Box::new(LossyPort {
        inner: air,
        loss: cfg.radio.loss,
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed),
    }))
}
