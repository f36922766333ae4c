//! # gridpow-server: the grid server
//!
//! Subscribes to the relays' blocks over MQTT 5 (shared subscription, QoS 1,
//! manual acknowledgements), verifies each block end to end (PoW, relay
//! signature, Merkle root, every meter's tag), stores blocks and readings in a
//! database behind the [`store::Store`] trait (SQLite by default, PostgreSQL
//! for several servers sharing one database), answers each relay
//! with a signed commit receipt once the transaction committed, and serves a
//! JSON API, Prometheus metrics and a live dashboard over HTTP.
//!
//! ```text
//! broker ─▶ mqtt task ─▶ verifier thread ─▶ writer thread ─▶ acker task ─▶ broker
//!                        (verify::verify_payload) (IngestStore::commit)   (receipt, then PUBACK)
//!                                                      │
//!                          HTTP (axum): /api/v1/…, /metrics, /healthz, / ◀── read-only connections
//! ```
//!
//! - [`Server::start`] runs it; [`ServerHandle`] reports [`ServerStats`] and shuts it down.
//! - [`verify_ledger`] re-verifies a stored ledger offline.
//! - The benchmark pieces: [`verify::verify_payload`] turns a block into the
//!   rows the store inserts, [`gridpow_store::SqliteStore::commit`](gridpow_store::IngestStore::commit)
//!   stores them as the pipeline does, and
//!   [`gridpow_store::SqliteStore::insert_readings_raw`] inserts the same rows with the
//!   same statement and nothing else (the raw baseline).
//!
//! Storage design (see [`gridpow_store`]): no per-reading unique index. Readings are
//! de-duplicated against per-(meter, boot epoch) coverage intervals read and
//! rewritten in the same transaction, and time-range queries walk the blocks
//! by time and read one appended directory row per block. The measured rates
//! and how to reproduce them: `gridpow bench --only ingest` and
//! `gridpow-bench`'s `examples/ingest_rate.rs`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod api;
pub mod auth;
pub mod certs;
pub mod config;
mod export;
pub mod history;
mod hosts;
mod http_error;
mod http_serve;
mod ingest;
pub mod keyring;
pub mod ledger;
mod log_api;
pub mod metrics;
pub mod relay_status;
mod server;
pub mod transparency;
pub mod verify;

pub use config::{ConfigError, ServerConfig};
pub use http_error::HttpRefusal;
pub use ledger::{verify_ledger, BlockFault, LedgerError, LedgerReport, RelayForks};
pub use metrics::ServerStats;
pub use server::{Server, ServerError, ServerHandle};

/// The HTTP application exactly as [`Server`] serves it (host check, tokens,
/// roles, page caps, handlers, database readers), without a listener or MQTT:
/// for the HTTP fuzz target and tests that drive requests in-process.
pub fn http_app(cfg: &ServerConfig) -> Result<axum::Router, ServerError> {
    let keys = gridpow_keys::KeyDir::new(&cfg.keys_dir);
    let shared = std::sync::Arc::new(metrics::Shared::default());
    // Applies the migrations, so the readers find a schema.
    drop(gridpow_store::open_store(
        &cfg.db,
        gridpow_store::StoreOptions::default(),
    )?);
    Ok(api::router(
        api::ApiState::new(cfg.db.clone(), keys, shared.clone(), &cfg.plausibility),
        auth::Gate::new(cfg, cfg.http.listen, shared),
    ))
}
