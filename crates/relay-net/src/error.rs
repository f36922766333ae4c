//! Why a connection failed, grouped by who is at fault: the broker could not be
//! authenticated or the TLS handshake failed (`Tls`), the broker refused us at
//! the MQTT level (`Mqtt`), the connection broke (`Io`), a caller-supplied
//! buffer is too small (`Capacity`), or the caller's configuration is unusable
//! (`Config`).
//!
//! Every error ends the connection except `Config` and `Capacity::BufferTooSmall`
//! (raised before anything is sent): drop the [`Connection`](crate::Connection)
//! and connect again.

use core::fmt;

pub use embedded_io::ErrorKind;
pub use embedded_tls::TlsError;
pub use rust_mqtt::types::ReasonCode;

/// A failed connection or operation.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Error {
    /// TLS: the broker is not who it should be, or the handshake failed.
    Tls(Tls),
    /// MQTT: the broker refused the session or a message.
    Mqtt(Mqtt),
    /// The connection broke.
    Io(Io),
    /// A buffer supplied by the caller is too small.
    Capacity(Capacity),
    /// The caller's configuration cannot work.
    Config(Config),
}

/// TLS failures. The first six are our verdicts on the broker's certificate.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Tls {
    /// The broker's certificate is not signed by the site CA (directly: other
    /// intermediates are refused).
    BrokerUntrusted,
    /// The broker's certificate does not name the host we connected to.
    BrokerNameMismatch,
    /// The broker's certificate is not meant for servers (its extended key
    /// usage lacks serverAuth: e.g. a relay's client certificate).
    BrokerCertNotForServers,
    /// The broker's (or an intermediate, or the site CA's) certificate expired.
    BrokerCertExpired {
        /// Its end of validity, Unix seconds.
        not_after: u64,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
    /// A certificate in the chain is not valid yet (or the caller's clock is behind).
    BrokerCertNotYetValid {
        /// Its start of validity, Unix seconds.
        not_before: u64,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
    /// The broker sent no certificate or one that cannot be read.
    BrokerCertMalformed,
    /// The broker ended the TLS session after we had verified it and sent our
    /// certificate (or none), before any MQTT reply: with
    /// `require_certificate true` this is how Mosquitto refuses a client
    /// certificate (none presented, or not from its CA). In TLS 1.3 the client
    /// may learn of it only after its own handshake finished, from a broken
    /// connection; a network failure at that very moment reads the same.
    ClientCertRefused {
        /// Whether we presented a certificate.
        presented: bool,
    },
    /// Any other handshake failure (the broker sent an alert, the protocol or
    /// cipher negotiation failed); embedded-tls's own error.
    Handshake(TlsError),
}

/// MQTT-level refusals.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Mqtt {
    /// CONNACK with a failure reason (e.g. NotAuthorized, BadUserNameOrPassword).
    ConnectRefused(ReasonCode),
    /// The broker sent DISCONNECT (e.g. SessionTakenOver, PacketTooLarge).
    Disconnected(ReasonCode),
    /// PUBACK with a failure reason (e.g. NotAuthorized: the ACL denies the topic).
    PublishRefused(ReasonCode),
    /// SUBACK with a failure reason for the receipts topic.
    SubscribeRefused(ReasonCode),
    /// The broker broke the MQTT protocol (malformed or unexpected packet).
    Protocol,
    /// No PINGRESP within the keep-alive interval: the connection is dead.
    KeepAliveTimeout,
}

/// The connection broke.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Io {
    /// The socket failed (reset, closed, timed out).
    ConnectionLost(ErrorKind),
    /// The broker closed the TLS session (close_notify) or the TCP stream ended.
    ClosedByBroker,
    /// The TLS layer failed on an established session (bad record, alert).
    Tls(TlsError),
}

/// A caller-supplied buffer or limit is too small.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Capacity {
    /// An output buffer cannot hold what must be written.
    BufferTooSmall {
        /// What was being written.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// The MQTT arena (memory for received packets) is used up for this
    /// connection; the connection was closed cleanly (no last will) and the
    /// unread packet will be redelivered: connect again.
    ArenaUsedUp {
        /// Bytes the next packet needs.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// The message exceeds the broker's maximum packet size.
    PacketTooLarge,
    /// A TLS buffer is too small for a record or for the handshake.
    TlsBuffer,
}

/// The caller's configuration cannot work.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Config {
    /// The client key is neither PKCS#8 nor SEC1 DER of a P-256 key.
    ClientKey,
    /// The site CA certificate cannot be read.
    CaCertificate,
    /// The server name is empty or longer than 64 bytes.
    ServerName,
    /// The client id is not a valid MQTT string.
    ClientId,
    /// The keep-alive interval is 0.
    KeepAlive,
    /// The TLS write buffer is outside `TLS_WRITE_BUF_MIN..=TLS_WRITE_BUF_MAX`
    /// (larger records than the negotiated fragment length make Mosquitto drop us).
    TlsWriteBuffer,
}

impl From<Capacity> for Error {
    fn from(c: Capacity) -> Self {
        Error::Capacity(c)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Mqtt(e) => write!(f, "MQTT: {e}"),
            Error::Io(e) => write!(f, "connection: {e}"),
            Error::Capacity(e) => write!(f, "capacity: {e}"),
            Error::Config(e) => write!(f, "configuration: {e}"),
        }
    }
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tls::BrokerUntrusted => {
                f.write_str("the broker's certificate is not signed by the site CA")
            }
            Tls::BrokerNameMismatch => f.write_str(
                "the broker's certificate does not name the host we connected to",
            ),
            Tls::BrokerCertNotForServers => f.write_str(
                "the broker's certificate is not for servers (no serverAuth extended key usage)",
            ),
            Tls::BrokerCertExpired { not_after, now } => write!(
                f,
                "the broker's certificate expired (valid until {not_after}, now {now}, Unix s)"
            ),
            Tls::BrokerCertNotYetValid { not_before, now } => write!(
                f,
                "the broker's certificate is not valid yet (from {not_before}, now {now}, Unix s): check the clock"
            ),
            Tls::BrokerCertMalformed => f.write_str("the broker's certificate cannot be read"),
            Tls::ClientCertRefused { presented: true } => f.write_str(
                "the broker refused our client certificate (it ended the session after the handshake)",
            ),
            Tls::ClientCertRefused { presented: false } => f.write_str(
                "the broker requires a client certificate and we have none",
            ),
            Tls::Handshake(e) => write!(f, "handshake failed: {e:?}"),
        }
    }
}

impl fmt::Display for Mqtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mqtt::ConnectRefused(r) => {
                write!(
                    f,
                    "the broker refused the connection: {r:?} (0x{:02x})",
                    r.value()
                )
            }
            Mqtt::Disconnected(r) => {
                write!(f, "the broker disconnected us: {r:?} (0x{:02x})", r.value())
            }
            Mqtt::PublishRefused(r) => {
                write!(
                    f,
                    "the broker refused a publish: {r:?} (0x{:02x})",
                    r.value()
                )
            }
            Mqtt::SubscribeRefused(r) => write!(
                f,
                "the broker refused the receipts subscription: {r:?} (0x{:02x})",
                r.value()
            ),
            Mqtt::Protocol => f.write_str("the broker broke the MQTT protocol"),
            Mqtt::KeepAliveTimeout => f.write_str("no PINGRESP within the keep-alive interval"),
        }
    }
}

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Io::ConnectionLost(k) => write!(f, "connection lost ({k:?})"),
            Io::ClosedByBroker => f.write_str("the broker closed the connection"),
            Io::Tls(e) => write!(f, "TLS session failed ({e:?})"),
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capacity::BufferTooSmall {
                what,
                needed,
                capacity,
            } => write!(f, "{what} needs {needed} bytes, the buffer has {capacity}"),
            Capacity::ArenaUsedUp { needed, left } => write!(
                f,
                "MQTT arena used up ({needed} bytes needed, {left} left): reconnect"
            ),
            Capacity::PacketTooLarge => {
                f.write_str("the message exceeds the broker's maximum packet size")
            }
            Capacity::TlsBuffer => f.write_str("a TLS buffer is too small"),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Config::ClientKey => "the client key is not a P-256 key in PKCS#8 or SEC1 DER",
            Config::CaCertificate => "the site CA certificate cannot be read",
            Config::ServerName => "the server name must be 1 to 64 bytes",
            Config::ClientId => "the client id is not a valid MQTT string",
            Config::KeepAlive => "the keep-alive interval must be at least 1 s",
            Config::TlsWriteBuffer => {
                "the TLS write buffer must be 512 to 4096 bytes (records beyond the 4096-byte fragment length are dropped by the broker)"
            }
        })
    }
}

impl core::error::Error for Error {}
