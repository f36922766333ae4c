//! # gridpow-proto: the protocol core
//!
//! Everything in gridpow (ESP32 firmware, Linux relay, grid server, simulator)
//! runs this crate. It is `no_std`, allocates nothing, reads no clock and owns
//! no random number generator: time ([`Instant`], wall-clock milliseconds) and
//! random bytes come in as arguments, so the same code is deterministic under
//! the simulator and on real hardware.
//!
//! The specification it implements is `docs/protocol.md`; the known-answer
//! vectors under `test-vectors/` pin it.
//!
//! ## Layout
//! - [`wire`]: checked views and `Repr`s for every message (uplink, ACK, block).
//! - [`crypto`]: key derivation and the [`crypto::CryptoProvider`] trait,
//!   which owns every primitive the protocol runs (AES-CCM, HMAC and the
//!   HKDF on it, SHA-256 for Merkle trees, header hashes and the PoW
//!   midstate, Ed25519 for blocks and receipts): RustCrypto on the host, the
//!   ESP32's accelerators in `gridpow-firmware-logic`.
//! - [`replay`]: the sliding anti-replay window.
//! - [`sender`]: the meter-side state machine (backlog in caller-owned
//!   storage, frames, ACK, backoff).
//! - [`ingress`]: the relay-side state machine (filter, tag, replay, ACK).
//! - [`merkle`], [`pow`], [`block`]: sealing and verifying blocks.
//! - [`lifecycle`]: the relay's block lifecycle (batch, seal, outbox,
//!   publish, receipts), driven by every relay.
//! - [`checkpoint`], [`logwatch`]: the relay's watch over the server's
//!   transparency log (signed checkpoints, consistency and inclusion proofs).
//!
//! ## Driving the state machines
//! Inputs are `handle_*` methods, outputs `poll_*` methods. After every input
//! the driver drains the outputs (`poll_transmit` until it returns `None`),
//! then sleeps until `poll_timeout` or the next input, whichever comes first.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod block;
pub mod checkpoint;
pub mod crypto;
pub mod error;
pub mod ingress;
pub mod lifecycle;
pub mod logwatch;
pub mod merkle;
pub mod pow;
pub mod replay;
pub mod sender;
pub mod time;
pub mod wire;

pub use error::{Capacity, Error, LeafFault, Malformed, Misuse, Rejected};
pub use time::{Duration, Instant};

/// The protocol version this crate speaks. Frames with another version are refused
/// with [`Malformed::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u8 = 2;

/// A 6-byte IEEE 802 MAC address, as ESP-NOW reports the sender of a frame.
pub type MacAddr = [u8; 6];

/// A SHA-256 digest.
pub type Hash = [u8; 32];
