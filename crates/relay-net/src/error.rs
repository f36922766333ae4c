//! Why a connection failed, grouped by who is at fault: the broker could not be
//! authenticated or the TLS handshake failed (`Tls`), the broker refused us at
//! the MQTT level (`Mqtt`), the connection broke (`Io`), a caller-supplied
//! buffer is too small (`Capacity`), or the caller's configuration is unusable
//! (`Config`).
//!
//! Every error ends the connection except `Config` and `Capacity::BufferTooSmall`
//! (raised before anything is sent): drop the [`Connection`](crate::Connection)
//! and connect again.
//!
//! Messages come from `thiserror` (without `std`); no error has a `source`,
//! each message names its cause.

pub use embedded_io::ErrorKind;
pub use embedded_tls::TlsError;
pub use rust_mqtt::types::ReasonCode;

/// A failed connection or operation.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// TLS: the broker is not who it should be, or the handshake failed.
    #[error("TLS: {0}")]
    Tls(Tls),
    /// MQTT: the broker refused the session or a message.
    #[error("MQTT: {0}")]
    Mqtt(Mqtt),
    /// The connection broke.
    #[error("connection: {0}")]
    Io(Io),
    /// A buffer supplied by the caller is too small.
    #[error("capacity: {0}")]
    Capacity(Capacity),
    /// The caller's configuration cannot work.
    #[error("configuration: {0}")]
    Config(Config),
}

/// TLS failures. The first six are our verdicts on the broker's certificate.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Tls {
    /// The broker's certificate is not signed by the site CA (directly: other
    /// intermediates are refused).
    #[error("the broker's certificate is not signed by the site CA")]
    BrokerUntrusted,
    /// The broker's certificate does not name the host we connected to.
    #[error("the broker's certificate does not name the host we connected to")]
    BrokerNameMismatch,
    /// The broker's certificate is not meant for servers (its extended key
    /// usage lacks serverAuth: e.g. a relay's client certificate).
    #[error("the broker's certificate is not for servers (no serverAuth extended key usage)")]
    BrokerCertNotForServers,
    /// The broker's (or an intermediate, or the site CA's) certificate expired.
    #[error("the broker's certificate expired (valid until {not_after}, now {now}, Unix s)")]
    BrokerCertExpired {
        /// Its end of validity, Unix seconds.
        not_after: u64,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
    /// A certificate in the chain is not valid yet (or the caller's clock is behind).
    #[error(
        "the broker's certificate is not valid yet (from {not_before}, now {now}, Unix s): check the clock"
    )]
    BrokerCertNotYetValid {
        /// Its start of validity, Unix seconds.
        not_before: u64,
        /// The caller's clock, Unix seconds.
        now: u64,
    },
    /// The broker sent no certificate or one that cannot be read.
    #[error("the broker's certificate cannot be read")]
    BrokerCertMalformed,
    /// The broker ended the TLS session after we had verified it and sent our
    /// certificate (or none), before any MQTT reply: with
    /// `require_certificate true` this is how Mosquitto refuses a client
    /// certificate (none presented, or not from its CA). In TLS 1.3 the client
    /// may learn of it only after its own handshake finished, from a broken
    /// connection; a network failure at that very moment reads the same.
    #[error("{}", client_cert_refused(*.presented))]
    ClientCertRefused {
        /// Whether we presented a certificate.
        presented: bool,
    },
    /// Any other handshake failure (the broker sent an alert, the protocol or
    /// cipher negotiation failed); embedded-tls's own error.
    #[error("handshake failed: {0:?}")]
    Handshake(TlsError),
}

/// MQTT-level refusals.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Mqtt {
    /// CONNACK with a failure reason (e.g. NotAuthorized, BadUserNameOrPassword).
    #[error("the broker refused the connection: {0:?} (0x{code:02x})", code = .0.value())]
    ConnectRefused(ReasonCode),
    /// The broker sent DISCONNECT (e.g. SessionTakenOver, PacketTooLarge).
    #[error("the broker disconnected us: {0:?} (0x{code:02x})", code = .0.value())]
    Disconnected(ReasonCode),
    /// PUBACK with a failure reason (e.g. NotAuthorized: the ACL denies the topic).
    #[error("the broker refused a publish: {0:?} (0x{code:02x})", code = .0.value())]
    PublishRefused(ReasonCode),
    /// SUBACK with a failure reason for the receipts topic.
    #[error("the broker refused the receipts subscription: {0:?} (0x{code:02x})", code = .0.value())]
    SubscribeRefused(ReasonCode),
    /// The broker broke the MQTT protocol (malformed or unexpected packet).
    #[error("the broker broke the MQTT protocol")]
    Protocol,
    /// No PINGRESP within the keep-alive interval: the connection is dead.
    #[error("no PINGRESP within the keep-alive interval")]
    KeepAliveTimeout,
}

/// The connection broke.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Io {
    /// The socket failed (reset, closed, timed out).
    #[error("connection lost ({0:?})")]
    ConnectionLost(ErrorKind),
    /// The broker closed the TLS session (close_notify) or the TCP stream ended.
    #[error("the broker closed the connection")]
    ClosedByBroker,
    /// The TLS layer failed on an established session (bad record, alert).
    #[error("TLS session failed ({0:?})")]
    Tls(TlsError),
}

/// A caller-supplied buffer or limit is too small.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Capacity {
    /// An output buffer cannot hold what must be written.
    #[error("{what} needs {needed} bytes, the buffer has {capacity}")]
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
    #[error("MQTT arena used up ({needed} bytes needed, {left} left): reconnect")]
    ArenaUsedUp {
        /// Bytes the next packet needs.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// The message exceeds the broker's maximum packet size.
    #[error("the message exceeds the broker's maximum packet size")]
    PacketTooLarge,
    /// A TLS buffer is too small for a record or for the handshake.
    #[error("a TLS buffer is too small")]
    TlsBuffer,
}

/// The caller's configuration cannot work.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Config {
    /// The client key is neither PKCS#8 nor SEC1 DER of a P-256 key.
    #[error("the client key is not a P-256 key in PKCS#8 or SEC1 DER")]
    ClientKey,
    /// The site CA certificate cannot be read.
    #[error("the site CA certificate cannot be read")]
    CaCertificate,
    /// The server name is empty or longer than 64 bytes.
    #[error("the server name must be 1 to 64 bytes")]
    ServerName,
    /// The client id is not a valid MQTT string.
    #[error("the client id is not a valid MQTT string")]
    ClientId,
    /// The keep-alive interval is 0.
    #[error("the keep-alive interval must be at least 1 s")]
    KeepAlive,
    /// The TLS write buffer is outside `TLS_WRITE_BUF_MIN..=TLS_WRITE_BUF_MAX`
    /// (larger records than the negotiated fragment length make Mosquitto drop us).
    #[error(
        "the TLS write buffer must be 512 to 4096 bytes (records beyond the 4096-byte fragment length are dropped by the broker)"
    )]
    TlsWriteBuffer,
}

impl From<Capacity> for Error {
    fn from(c: Capacity) -> Self {
        Error::Capacity(c)
    }
}

/// The message of [`Tls::ClientCertRefused`], which depends on whether we
/// presented a certificate.
fn client_cert_refused(presented: bool) -> &'static str {
    if presented {
        "the broker refused our client certificate (it ended the session after the handshake)"
    } else {
        "the broker requires a client certificate and we have none"
    }
}
