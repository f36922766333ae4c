//! The standalone relay application: one code for the ESP32 firmware and
//! the host. It runs the radio, sealing and network loops over one
//! [`StandaloneRelay`](gridpow_firmware_logic::standalone::StandaloneRelay)
//! (the protocol's ingress and block lifecycle) and the TLS 1.3 + MQTT 5
//! transport of `gridpow-relay-net`, concurrently with `embassy_futures`
//! (`join`, `select`, `yield_now`), on any single-threaded executor.
//!
//! - **radio**: receive → `handle_frame` → ACK (sent only for frames the
//!   relay made durable, or duplicates of them);
//! - **sealing**: `poll_seal`, then the proof of work in chunks of
//!   [`AppConfig::pow_chunk`] tries, yielding between chunks;
//! - **network**: connect → TLS/MQTT session (online status, offline will)
//!   → `handle_connected` → publish what `poll_publish` names (marked
//!   published only after the PUBACK), feed receipts to `handle_receipt`,
//!   keep-alive; on any error `handle_disconnected`, log, back off (1 s
//!   doubling to 30 s) and reconnect. A block leaves the outbox only by a
//!   verified receipt (the lifecycle's rule), so nothing ACKed is lost to a
//!   broken connection.
//!
//! # How to drive it
//!
//! The firmware (or the host binary) implements [`Radio`], [`Clock`],
//! [`Connector`] and [`Log`], picks a cryptographic RNG, builds the relay
//! over its storage and crypto provider (which also solves the proof of
//! work), and runs:
//!
//! ```text
//! let journal = Journal::<_, OUTBOX>::open(&provider, flash, RelayState::default())?;
//! let t = journal.tip(); // the chain tip, as the journal last wrote it
//! let tip = ChainTip::from(t);
//! let mut relay = StandaloneRelay::new(/* config, provider, meters, keys, */ tip, journal, storage)?;
//! relay.recover(clock.now())?; // unconfirmed blocks and ACKed frames back from the journal
//! let relay = RefCell::new(relay);
//! let parts = Parts { radio, clock, connector, rng, log };
//! let net = gridpow_relay_net::Config { relay_id, client_id, server_name, ca_der,
//!     identity: Some(Identity { cert_der, key_der }), keep_alive_s: 30, session_expiry_s: 7 * 86_400 };
//! let bufs = NetBuffers { tls_read: &mut rx, tls_write: &mut tx, arena: &mut arena, block: &mut block };
//! let mut app = App::new(&relay, parts, AppConfig::default(), net, bufs);
//! app.run(core::future::pending()).await; // the ESP32 never stops
//! ```
//!
//! On the host, `stop` is a shutdown signal: after it the relay takes no
//! more frames, seals and publishes what it holds until every block is
//! confirmed (at most [`AppConfig::drain_timeout`]), closes the session and
//! returns. [`App::stats`] and the status log line give the counters.
//!
//! Memory: [`NetBuffers`] (TLS 4.5 + 4 KiB, arena 8 KiB, one block) plus
//! the relay's block storage; no allocation.
//!
//! The `host` feature (default) adds the host adapters (`host` module): the
//! UDP air, a file-backed NOR flash for the journal, the std clock, a tokio
//! connector and provisioning from a relay key bundle or blob; the
//! `gridpow-relay-app` binary runs them. Build for the ESP32 with
//! `--no-default-features` (no_std, no alloc).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod traits;

#[cfg(feature = "host")]
pub mod host;

pub use app::{App, AppConfig, AppStats, NetBuffers, Parts};
pub use traits::{Clock, Connector, Level, Log, NoLog, Radio, Vouch};
