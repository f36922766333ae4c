//! The standalone ESP32 relay's network transport: TLS 1.3 with mutual
//! authentication (embedded-tls) and MQTT 5 QoS 1 (rust-mqtt) to the site's
//! broker, `no_std` and without allocation, over any `embedded-io-async`
//! socket. The same code runs in the firmware (embassy-net TCP) and on the
//! host (tokio through `embedded-io-adapters`), where its tests run against a
//! real Mosquitto.
//!
//! What it does (docs/protocol.md §11):
//! - TLS 1.3 (TLS_AES_128_GCM_SHA256, P-256), the broker's chain verified to the
//!   site CA, its name (SNI and certificate check) and its dates against the
//!   caller's clock; our P-256 client certificate; max_fragment_length 4096 so
//!   that a ~4.5 KiB receive buffer suffices, and outgoing records of at most
//!   4096 bytes (Mosquitto drops larger ones).
//! - MQTT 5: persistent session (clean start off, session expiry), keep-alive
//!   pings driven by the caller's clock, last will = retained offline status,
//!   retained online status after connecting, SUBSCRIBE to
//!   `gridpow/v1/relays/{id}/receipts` (QoS 1), blocks to
//!   `gridpow/v1/relays/{id}/blocks` (QoS 1) returning only after PUBACK.
//! - Receipts are handed to the caller as raw bytes; verify them with
//!   `gridpow_proto`'s `ReceiptRepr::parse_verified`. Delivery policy
//!   (outbox, republish, receipt matching) stays with the caller.
//!
//! What the caller supplies: the connected socket, the buffers
//! ([`TLS_READ_BUF`] + [`TLS_WRITE_BUF`] + an [`Arena`] of about
//! [`ARENA_LEN`], about 16.5 KiB in all), a cryptographic RNG
//! (`rand_core` 0.6 `CryptoRngCore`), the wall clock in Unix milliseconds
//! (SNTP) for certificate dates and the status, and a monotonic clock in
//! milliseconds for keep-alive.
//!
//! # Driving a connection
//!
//! ```no_run
//! # async fn demo<S, R>(socket: S, rng: R, ca: &[u8], cert: &[u8], key: &[u8])
//! # where S: embedded_io_async::Read + embedded_io_async::Write, R: embedded_tls::CryptoRngCore
//! # {
//! # fn unix_ms() -> u64 { 0 }
//! # fn now_ms() -> u64 { 0 }
//! use gridpow_relay_net::*;
//!
//! let cfg = Config {
//!     relay_id: 1,
//!     client_id: "relay-1",
//!     server_name: "broker.site.example",
//!     ca_der: ca,
//!     identity: Some(Identity { cert_der: cert, key_der: key }),
//!     keep_alive_s: 30,
//!     session_expiry_s: 7 * 24 * 3600,
//! };
//! let (mut rx, mut tx, mut mem) = ([0u8; TLS_READ_BUF], [0u8; TLS_WRITE_BUF], [0u8; ARENA_LEN]);
//! let link = Link::new(socket);
//! let mut arena = Arena::new(&mut mem);
//! let start = Start { unix_ms: unix_ms(), now_ms: now_ms(), height: Some(41) };
//! let mut on_receipt = |receipt: &[u8]| { /* ReceiptRepr::parse_verified, release the block */ };
//! let tls = TlsBuffers { read: &mut rx, write: &mut tx };
//! let mut conn = match Connection::open(&link, tls, &mut arena, &cfg, start, rng, &mut on_receipt).await {
//!     Ok(c) => c,
//!     Err(e) => { /* log `e` (Display), back off, reconnect */ return; }
//! };
//! // First republish every block still in the outbox, then loop:
//! // select(conn.wait_readable(), outbox.next(), Timer::at(conn.poll_timeout())):
//! //   readable  => conn.poll(&mut on_receipt).await?
//! //   block     => conn.publish_block(&block, now_ms(), &mut on_receipt).await?  (returns after PUBACK)
//! //   timer     => conn.handle_timeout(now_ms()).await?                          (PINGREQ, dead-peer check)
//! // Any error: drop `conn`, `arena` and `link`, connect again and republish.
//! let block = [0u8; 12 * 1024];
//! if let Err(e) = conn.publish_block(&block, now_ms(), &mut on_receipt).await {
//!     // keep the block in the outbox; reconnect
//! }
//! # }
//! ```
//!
//! # Limits and choices (embedded-tls 0.19, rust-mqtt 0.6, Mosquitto 2.0.11)
//!
//! - **Certificates.** embedded-tls's rustpki `CertVerifier` checks the chain's
//!   signatures, but reports every problem as one `InvalidCertificate`, reads
//!   its clock from a static type, and checks neither basicConstraints nor
//!   extended key usage. So this crate checks dates (against
//!   [`Start::unix_ms`]), the host name (exact DNS name or IPv4 SAN; no
//!   wildcards) and serverAuth itself, each with its own error, and accepts
//!   only a leaf signed directly by the site CA (plus copies of the CA):
//!   otherwise any site certificate, a relay's included, could sign broker
//!   certificates (a test shows embedded-tls alone accepts that).
//! - **Refused client certificate.** In TLS 1.3 the broker checks our
//!   certificate after our handshake finished; its alert reaches embedded-tls
//!   as a bare `InternalError`. A connection that breaks between the
//!   handshake and CONNACK is therefore reported as
//!   [`error::Tls::ClientCertRefused`].
//! - **Record sizes.** max_fragment_length 4096 is negotiated (Mosquitto
//!   honours it), so [`TLS_READ_BUF`] suffices; embedded-tls does not cap its
//!   own records by it, so the write buffer must not exceed
//!   [`TLS_WRITE_BUF_MAX`] (checked). A 12 KiB block goes out as four
//!   records straight from the caller's slice.
//! - **Receive memory.** rust-mqtt 0.6 without `alloc` stores what it
//!   receives in a buffer it can reuse only through an `unsafe` reset, which
//!   this workspace forbids. The [`Arena`] is therefore used front to back
//!   for one connection (about 45 receipts in [`ARENA_LEN`]); then the
//!   connection ends cleanly with [`error::Capacity::ArenaUsedUp`], the
//!   unread receipt stays with the broker, and the caller reconnects.
//! - **One receipt in flight** (receive maximum 1): with more, Mosquitto
//!   2.0.11 overran the limit on a resumed session and then dropped the
//!   connection with "Protocol error" on our PUBACKs.
//! - **Cancellation.** Only [`Connection::wait_readable`] is cancel-safe
//!   (embedded-tls and rust-mqtt keep partial reads in locals). Wait for
//!   data with it, then call [`Connection::poll`].
//! - **Post-handshake TLS messages.** embedded-tls 0.19 handles session
//!   tickets but panics (`unimplemented!`) on other post-handshake handshake
//!   messages such as a KeyUpdate; Mosquitto sends none unless asked.
//! - **Nagle.** Disable it on the socket if the stack allows: with it,
//!   [`Connection::open`] waits on delayed segments (measured cost in
//!   `docs/hardware.md`, "Transport cost").
//!
//! What opening a connection takes, and the code size and RAM of this crate
//! on riscv32imc, are measured in `docs/hardware.md` ("Transport cost"). RAM
//! is the caller's buffers, the [`Connection`] and the future of
//! [`Connection::open`] (which holds the verifier's copy of the broker chain,
//! [`MAX_BROKER_CHAIN`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
pub mod error;
mod status;
mod tls;
mod x509;

pub use conn::{Arena, ArenaFull, Config, Connection, Identity, Start, TlsBuffers};
pub use embedded_tls::CryptoRngCore;
pub use error::Error;
pub use status::{
    blocks_topic, log_proofs_topic, log_requests_topic, receipts_topic, status_topic, RadioCounts,
    Status, Topic, MAX_STATUS_LEN, MAX_TOPIC_LEN,
};
pub use tls::{Link, MAX_BROKER_CHAIN};

/// The MQTT topic names of docs/protocol.md, "MQTT": their one definition,
/// shared by this transport, the host services and the broker ACL.
pub mod topics {
    pub use crate::status::{
        BLOCKS, LOG_CHECKPOINT, LOG_PROOFS, LOG_REQUESTS, RECEIPTS, RELAYS, STATUS,
    };
}

/// Negotiated TLS maximum fragment length (RFC 6066): 2^12 bytes.
pub const MAX_FRAGMENT_LEN: usize = 4096;

/// Smallest TLS read buffer: one record of [`MAX_FRAGMENT_LEN`] plaintext with
/// TLS 1.3's allowance for padding and tag (256) and the 5-byte header.
pub const TLS_READ_BUF_MIN: usize = MAX_FRAGMENT_LEN + 256 + 5;

/// Recommended TLS read buffer (4.5 KiB).
pub const TLS_READ_BUF: usize = 4608;

/// Largest TLS write buffer: embedded-tls fills a record up to its buffer
/// (less 128 bytes of overhead), and Mosquitto drops records beyond the
/// negotiated fragment length.
pub const TLS_WRITE_BUF_MAX: usize = MAX_FRAGMENT_LEN;

/// Smallest TLS write buffer.
pub const TLS_WRITE_BUF_MIN: usize = 512;

/// Recommended TLS write buffer: [`TLS_WRITE_BUF_MAX`] (fewest records).
pub const TLS_WRITE_BUF: usize = TLS_WRITE_BUF_MAX;

/// Recommended arena size: about 40 receipts per connection (each costs its
/// topic and payload, about 165 bytes; a reconnect is asked for when less than
/// [`MAX_INCOMING_PACKET`] is left).
pub const ARENA_LEN: usize = 8192;

/// Largest packet we accept from the broker (CONNECT's maximum packet size):
/// receipts are 140 bytes; the broker drops anything larger for us.
pub const MAX_INCOMING_PACKET: u32 = 1024;
