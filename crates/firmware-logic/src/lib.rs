//! # gridpow-firmware-logic: everything the ESP32 firmware does, minus the HAL
//!
//! The firmware crates under `firmware/` are thin: they read the ADC, drive
//! ESP-NOW, USB-serial and the flash, and call into this crate, which is
//! `no_std`, allocation-free and tested on the host against the protocol
//! core's relay ingress (`tests/meter_against_ingress.rs`).
//!
//! - [`meter`]: the meter application ([`meter::MeterNode`]) behind the
//!   [`meter::Radio`], [`meter::SampleSource`], [`meter::Clock`] and
//!   [`state::Flash`] traits.
//! - [`state`]: the flash state log (boot epoch reservation, energy
//!   checkpoints, the relay's chain tip).
//! - [`provisioning`]: the binary configuration blobs flashed into the
//!   `gp_config` partition, with their layouts.
//! - [`crypto`]: the ESP32's `gridpow_proto::crypto::CryptoProvider`:
//!   AES-128-CCM, HMAC-SHA256 and the proof of work's SHA-256 midstate over
//!   the AES block and SHA accelerators, Ed25519 in software.
//! - [`bridge`]: the relay's bridge mode (ESP-NOW ⇄ USB-serial framing).
//! - [`standalone`]: the relay's standalone mode (ingress, blocks, PoW,
//!   signing, outbox until receipt).
//! - [`journal`]: the standalone relay's durable frame journal, outbox and
//!   chain tip on flash.
//! - [`layout`]: the flash partition layout shared by firmware and docs.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

// Tests use `std` (Vec) too.
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod bridge;
pub mod crypto;
pub mod journal;
pub mod layout;
pub mod meter;
pub mod provisioning;
pub mod standalone;
pub mod state;
