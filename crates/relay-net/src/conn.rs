//! The relay's MQTT 5 session over TLS: connect with a persistent session and
//! the offline last will, subscribe to receipts, publish the retained online
//! status, publish blocks with QoS 1 and wait for their PUBACK, keep alive.

use core::num::NonZero;

use embedded_io_async::{Read, Write};
use embedded_tls::{CryptoRngCore, MaxFragmentLength, TlsConfig, TlsContext, TlsError};
use rust_mqtt::buffer::BufferProvider;
use rust_mqtt::client::event::Event;
use rust_mqtt::client::options::{
    ConnectOptions, DisconnectOptions, PublicationOptions, SubscriptionOptions, TopicReference,
    WillOptions,
};
use rust_mqtt::client::{Client, MqttError};
use rust_mqtt::config::{KeepAlive, SessionExpiryInterval};
use rust_mqtt::types::{
    MqttBinary, MqttString, PacketIdentifier, ReasonCode, TopicFilter, TopicName,
};
use rust_mqtt::Bytes;

use crate::error::{self, Error};
use crate::status::{self, Status, Topic, MAX_STATUS_LEN};
use crate::tls::{self, Link, Provider, SiteVerifier, TlsStream};
use crate::x509::CertInfo;
use crate::{MAX_INCOMING_PACKET, TLS_READ_BUF_MIN, TLS_WRITE_BUF_MAX, TLS_WRITE_BUF_MIN};

/// The relay's TLS identity: its certificate (issued by the site CA, P-256)
/// and private key, both DER.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// X.509 certificate, DER.
    pub cert_der: &'a [u8],
    /// P-256 private key, PKCS#8 or SEC1 DER.
    pub key_der: &'a [u8],
}

/// What does not change between connections.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// The relay's id (topics, status).
    pub relay_id: u32,
    /// MQTT client id; brokers with `use_username_as_clientid` replace it with
    /// the certificate's common name (`relay-{id}`).
    pub client_id: &'a str,
    /// The broker's DNS name: sent as SNI and checked against its certificate.
    pub server_name: &'a str,
    /// The site CA certificate, DER.
    pub ca_der: &'a [u8],
    /// Our certificate and key; `None` only to test a broker's refusal.
    pub identity: Option<Identity<'a>>,
    /// MQTT keep-alive, seconds (at least 1).
    pub keep_alive_s: u16,
    /// How long the broker keeps our session (subscription, queued receipts)
    /// after a disconnect, seconds; `u32::MAX` = forever.
    pub session_expiry_s: u32,
}

/// The TLS record buffers, owned by the caller. See [`TLS_READ_BUF`](crate::TLS_READ_BUF)
/// and [`TLS_WRITE_BUF`](crate::TLS_WRITE_BUF).
pub struct TlsBuffers<'t> {
    /// Receives one encrypted record: at least [`TLS_READ_BUF_MIN`](crate::TLS_READ_BUF_MIN).
    pub read: &'t mut [u8],
    /// Assembles one outgoing record: [`TLS_WRITE_BUF_MIN`](crate::TLS_WRITE_BUF_MIN)
    /// to [`TLS_WRITE_BUF_MAX`](crate::TLS_WRITE_BUF_MAX) bytes.
    pub write: &'t mut [u8],
}

/// Time and state at connection time.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// Wall clock, Unix milliseconds (SNTP on the ESP32): certificate dates,
    /// and the `time_ms` of the status and will.
    pub unix_ms: u64,
    /// Monotonic clock, milliseconds (keep-alive bookkeeping).
    pub now_ms: u64,
    /// The relay's last block height for the status and will.
    pub height: Option<u64>,
}

/// Memory for what the broker sends (topics and payloads of receipts),
/// handed out front to back and reclaimed only when the connection ends:
/// rust-mqtt 0.6 can reuse its buffer only through an `unsafe` reset, which
/// this workspace forbids. Each received receipt costs its topic and payload
/// (about 160 bytes); [`Capacity::ArenaUsedUp`](crate::error::Capacity::ArenaUsedUp)
/// asks for a reconnect when it runs out. Create a fresh one per connection.
pub struct Arena<'c> {
    rest: &'c mut [u8],
}

impl<'c> Arena<'c> {
    /// An arena over `mem` ([`ARENA_LEN`](crate::ARENA_LEN) is a sensible size).
    pub fn new(mem: &'c mut [u8]) -> Self {
        Arena { rest: mem }
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// The arena has no room for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaFull;

impl<'c> BufferProvider<'c> for Arena<'c> {
    type Buffer = &'c mut [u8];
    type ProvisionError = ArenaFull;

    fn provide_buffer(&mut self, len: usize) -> Result<Self::Buffer, Self::ProvisionError> {
        if len > self.rest.len() {
            return Err(ArenaFull);
        }
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(len);
        self.rest = tail;
        Ok(head)
    }
}

/// In-flight limits: one block and the status at a time out, one receipt in.
/// Receipts are rare (one per block); with a receive maximum above 1,
/// Mosquitto 2.0.11 sends a resumed session's queued messages beyond it and
/// then drops the connection with "Protocol error" on our PUBACKs (measured:
/// tests/mosquitto.rs, `receipts_queued_while_offline_...`).
const SEND_MAXIMUM: usize = 2;
const RECEIVE_MAXIMUM: usize = 1;

type MqttClient<'l, 't, 'c, S> =
    Client<'c, 'c, TlsStream<'l, 't, S>, Arena<'c>, 1, RECEIVE_MAXIMUM, SEND_MAXIMUM, 0, 1, 0, 0>;

/// What one received packet meant to us.
enum Ev {
    Puback(PacketIdentifier),
    Pubrej(PacketIdentifier, ReasonCode),
    Suback(PacketIdentifier, ReasonCode),
    Other,
}

/// A live, authenticated MQTT session with the broker.
///
/// Methods take `&mut self` and finish one exchange each; they are not
/// cancel-safe except [`wait_readable`](Self::wait_readable): if another
/// future is cancelled mid-way (a timeout), drop the connection and connect
/// again. After any error, do the same.
pub struct Connection<'l, 't, 'c, S: Read + Write> {
    client: MqttClient<'l, 't, 'c, S>,
    link: &'l Link<S>,
    relay_id: u32,
    blocks: Topic,
    receipts: Topic,
    status: Topic,
    keep_alive_ms: u64,
    last_tx_ms: u64,
    ping_sent_ms: Option<u64>,
    session_present: bool,
    presented_cert: bool,
}

fn check_config(cfg: &Config<'_>, tls: &TlsBuffers<'_>) -> Result<(), Error> {
    if cfg.server_name.is_empty() || cfg.server_name.len() > 64 {
        return Err(Error::Config(error::Config::ServerName));
    }
    if cfg.keep_alive_s == 0 {
        return Err(Error::Config(error::Config::KeepAlive));
    }
    if CertInfo::parse(cfg.ca_der).is_none() {
        return Err(Error::Config(error::Config::CaCertificate));
    }
    if tls.read.len() < TLS_READ_BUF_MIN {
        return Err(Error::Capacity(error::Capacity::BufferTooSmall {
            what: "TLS read buffer",
            needed: TLS_READ_BUF_MIN,
            capacity: tls.read.len(),
        }));
    }
    if tls.write.len() < TLS_WRITE_BUF_MIN || tls.write.len() > TLS_WRITE_BUF_MAX {
        // Larger records than the negotiated 4096-byte fragments make
        // Mosquitto drop the connection ("data length too long").
        return Err(Error::Config(error::Config::TlsWriteBuffer));
    }
    Ok(())
}

impl<'l, 't, 'c, S: Read + Write> Connection<'l, 't, 'c, S> {
    /// TLS handshake, MQTT CONNECT (clean start off, session expiry, keep-alive,
    /// last will = retained offline status), SUBSCRIBE to the receipts topic
    /// (QoS 1), then the retained online status (QoS 1, after its PUBACK).
    /// Receipts the broker kept for our session may arrive meanwhile: they go
    /// to `on_receipt`.
    ///
    /// `rng` must be a cryptographic RNG (the ESP32's hardware RNG).
    ///
    /// # Errors
    /// `Config` or `Capacity` before anything is sent; `Tls` when the broker
    /// cannot be authenticated or refuses our certificate; `Mqtt` when it
    /// refuses the session or the subscription; `Io` when the connection breaks.
    pub async fn open<R: CryptoRngCore>(
        link: &'l Link<S>,
        tls: TlsBuffers<'t>,
        arena: &'c mut Arena<'c>,
        cfg: &Config<'_>,
        start: Start,
        rng: R,
        on_receipt: &mut impl FnMut(&[u8]),
    ) -> Result<Self, Error> {
        check_config(cfg, &tls)?;
        let identity = match cfg.identity {
            Some(id) => Some((id.cert_der, tls::parse_key(id.key_der)?)),
            None => None,
        };
        let client_id = MqttString::from_str(cfg.client_id)
            .map_err(|_| Error::Config(error::Config::ClientId))?;
        let status_topic = status::status_topic(cfg.relay_id);
        let mut will_buf = [0u8; MAX_STATUS_LEN];
        let will_json = Status {
            relay_id: cfg.relay_id,
            online: false,
            height: start.height,
            time_ms: start.unix_ms,
            radio: None,
            tls_expiry_days: None,
        }
        .write_json(&mut will_buf)?;

        // TLS 1.3, max_fragment_length 4096 so that ~4.5 KiB receive records suffice.
        let mut stream = TlsStream::new(link, tls.read, tls.write);
        let tls_config = TlsConfig::new()
            .with_server_name(cfg.server_name)
            .with_max_fragment_length(MaxFragmentLength::Bits12);
        let mut provider = Provider {
            rng,
            verifier: SiteVerifier::new(cfg.ca_der, cfg.server_name, start.unix_ms / 1000),
            identity,
        };
        let presented_cert = provider.identity.is_some();
        if let Err(e) = stream
            .tls
            .open(TlsContext::new(&tls_config, &mut provider))
            .await
        {
            let broker_verified = provider.verifier.broker_verified;
            return Err(match (provider.verifier.verdict, e) {
                (Some(why), _) => Error::Tls(why),
                // The broker passed our checks, then ended the handshake while
                // we sent our certificate: it refused it (alert, close, reset).
                (
                    None,
                    TlsError::Io(_)
                    | TlsError::IoError
                    | TlsError::ConnectionClosed
                    | TlsError::InternalError
                    | TlsError::HandshakeAborted(..),
                ) if broker_verified => Error::Tls(error::Tls::ClientCertRefused {
                    presented: presented_cert,
                }),
                (None, TlsError::Io(k)) => Error::Io(error::Io::ConnectionLost(k)),
                (None, TlsError::IoError) => Error::Io(error::Io::ClosedByBroker),
                (None, TlsError::InsufficientSpace | TlsError::OutOfMemory) => {
                    Error::Capacity(error::Capacity::TlsBuffer)
                }
                (None, e) => Error::Tls(error::Tls::Handshake(e)),
            });
        }
        link.set_handshake_done();

        let will_topic = topic_name(&status_topic)?;
        let will = WillOptions::new(
            will_topic,
            // At most MAX_STATUS_LEN bytes: far below MQTT's 64 KiB limit.
            MqttBinary::from_slice(will_json.as_bytes())
                .map_err(|_| Error::Capacity(error::Capacity::PacketTooLarge))?,
        )
        .at_least_once()
        .retain();
        let keep_alive =
            NonZero::new(cfg.keep_alive_s).ok_or(Error::Config(error::Config::KeepAlive))?;
        let expiry = match NonZero::new(cfg.session_expiry_s) {
            None => SessionExpiryInterval::EndOnDisconnect,
            Some(_) if cfg.session_expiry_s == u32::MAX => SessionExpiryInterval::NeverEnd,
            Some(s) => SessionExpiryInterval::Seconds(s),
        };
        let mut options = ConnectOptions::new()
            .keep_alive(KeepAlive::Seconds(keep_alive))
            .session_expiry_interval(expiry)
            .will(will);
        if let Some(max) = NonZero::new(MAX_INCOMING_PACKET) {
            options = options.maximum_packet_size(max);
        }

        let mut client: MqttClient<'l, 't, 'c, S> = Client::new(arena);
        let session_present = match client.connect(stream, &options, Some(client_id)).await {
            Ok(c) => c.session_present,
            Err(e) => {
                return Err(map_connect_error(&e, link, presented_cert));
            }
        };

        let mut conn = Connection {
            client,
            link,
            relay_id: cfg.relay_id,
            blocks: status::blocks_topic(cfg.relay_id),
            receipts: status::receipts_topic(cfg.relay_id),
            status: status_topic,
            keep_alive_ms: u64::from(cfg.keep_alive_s) * 1000,
            last_tx_ms: start.now_ms,
            ping_sent_ms: None,
            session_present,
            presented_cert,
        };
        // A resumed session still holds the subscription.
        if !session_present {
            conn.subscribe_receipts(on_receipt).await?;
        }
        conn.publish_status(
            Status {
                relay_id: cfg.relay_id,
                online: true,
                height: start.height,
                time_ms: start.unix_ms,
                radio: None,
                tls_expiry_days: None,
            },
            start.now_ms,
            on_receipt,
        )
        .await?;
        Ok(conn)
    }

    /// Whether the broker still had our session (subscription and queued
    /// receipts) from an earlier connection.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Bytes left in the arena for received packets.
    pub fn arena_remaining(&self) -> usize {
        self.client.buffer().remaining()
    }

    /// Whether we presented a client certificate.
    pub fn presented_cert(&self) -> bool {
        self.presented_cert
    }

    async fn subscribe_receipts(
        &mut self,
        on_receipt: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let filter = TopicFilter::new(mqtt_str(&self.receipts)?)
            .ok_or(Error::Mqtt(error::Mqtt::Protocol))?;
        let pid = self
            .client
            .subscribe(filter, &SubscriptionOptions::new().at_least_once())
            .await
            .map_err(|e| self.map_error(&e))?;
        loop {
            if let Ev::Suback(p, rc) = self.next_event(on_receipt).await? {
                if p == pid {
                    return if rc.is_success() {
                        Ok(())
                    } else {
                        Err(Error::Mqtt(error::Mqtt::SubscribeRefused(rc)))
                    };
                }
            }
        }
    }

    /// Publishes a block (QoS 1, not retained) to `gridpow/v1/relays/{id}/blocks`
    /// straight from `block` (no copy: the TLS layer encrypts it record by
    /// record, each at most [`TLS_WRITE_BUF`](crate::TLS_WRITE_BUF) bytes) and
    /// returns only after the broker's PUBACK. Receipts arriving meanwhile go
    /// to `on_receipt`.
    ///
    /// Until this returns `Ok`, the block is not delivered: after an error the
    /// caller keeps it in its outbox and publishes it again on the next
    /// connection (a duplicate is harmless: the server answers "already stored").
    ///
    /// # Errors
    /// `Mqtt::PublishRefused` (e.g. NotAuthorized from the ACL),
    /// `Capacity::PacketTooLarge`, or any error that ends the connection.
    pub async fn publish_block(
        &mut self,
        block: &[u8],
        now_ms: u64,
        on_receipt: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let topic_s = self.blocks.clone();
        let topic = topic_name(&topic_s)?;
        let options = PublicationOptions::new(TopicReference::Name(topic)).at_least_once();
        self.publish_acked(&options, block, now_ms, on_receipt)
            .await
    }

    /// Publishes the retained status (QoS 1) and waits for its PUBACK.
    ///
    /// # Errors
    /// As [`publish_block`](Self::publish_block).
    pub async fn publish_status(
        &mut self,
        status: Status,
        now_ms: u64,
        on_receipt: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let mut buf = [0u8; MAX_STATUS_LEN];
        let json = status.write_json(&mut buf)?;
        let topic_s = self.status.clone();
        let topic = topic_name(&topic_s)?;
        let options = PublicationOptions::new(TopicReference::Name(topic))
            .at_least_once()
            .retain();
        self.publish_acked(&options, json.as_bytes(), now_ms, on_receipt)
            .await
    }

    async fn publish_acked(
        &mut self,
        options: &PublicationOptions<'_>,
        payload: &[u8],
        now_ms: u64,
        on_receipt: &mut impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let pid = self
            .client
            .publish(options, Bytes::Borrowed(payload))
            .await
            .map_err(|e| self.map_error(&e))?
            .ok_or(Error::Mqtt(error::Mqtt::Protocol))?;
        self.last_tx_ms = now_ms;
        loop {
            match self.next_event(on_receipt).await? {
                Ev::Puback(p) if p == pid => return Ok(()),
                Ev::Pubrej(p, rc) if p == pid => {
                    return Err(Error::Mqtt(error::Mqtt::PublishRefused(rc)))
                }
                _ => {}
            }
        }
    }

    /// Waits until the broker has sent something. Cancel-safe: use it in a
    /// `select` with the outbox and [`poll_timeout`](Self::poll_timeout), then
    /// call [`poll`](Self::poll).
    ///
    /// # Errors
    /// `Io` when the connection broke.
    pub async fn wait_readable(&mut self) -> Result<(), Error> {
        self.link.wait_readable().await
    }

    /// Reads and handles one packet from the broker (a receipt goes to
    /// `on_receipt`, PINGRESP ends the keep-alive wait). Call after
    /// [`wait_readable`](Self::wait_readable); do not cancel.
    ///
    /// # Errors
    /// Any error ends the connection.
    pub async fn poll(&mut self, on_receipt: &mut impl FnMut(&[u8])) -> Result<(), Error> {
        self.next_event(on_receipt).await.map(|_| ())
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next (monotonic
    /// ms): half the keep-alive after our last packet, or the keep-alive after
    /// an unanswered PINGREQ.
    pub fn poll_timeout(&self) -> u64 {
        match self.ping_sent_ms {
            Some(t) => t.saturating_add(self.keep_alive_ms),
            None => self.last_tx_ms.saturating_add(self.keep_alive_ms / 2),
        }
    }

    /// Sends a PINGREQ when due; fails when the last one went unanswered.
    ///
    /// # Errors
    /// `Mqtt::KeepAliveTimeout`, or `Io` when the connection broke.
    pub async fn handle_timeout(&mut self, now_ms: u64) -> Result<(), Error> {
        if let Some(t) = self.ping_sent_ms {
            if now_ms >= t.saturating_add(self.keep_alive_ms) {
                return Err(Error::Mqtt(error::Mqtt::KeepAliveTimeout));
            }
            return Ok(());
        }
        if now_ms >= self.last_tx_ms.saturating_add(self.keep_alive_ms / 2) {
            self.client.ping().await.map_err(|e| self.map_error(&e))?;
            self.ping_sent_ms = Some(now_ms);
            self.last_tx_ms = now_ms;
        }
        Ok(())
    }

    /// Ends the session cleanly and has the broker publish our last will (the
    /// retained offline status): DISCONNECT with reason 0x04, then TLS
    /// close_notify.
    ///
    /// # Errors
    /// `Io` when the connection was already broken.
    pub async fn close(mut self) -> Result<(), Error> {
        let options = DisconnectOptions::new().publish_will();
        let stream = self
            .client
            .disconnect(&options)
            .await
            .map_err(|e| self.map_error(&e))?;
        match stream.tls.close().await {
            Ok(_) => Ok(()),
            Err((_, e)) => Err(Error::Io(error::Io::Tls(e))),
        }
    }

    async fn next_event(&mut self, on_receipt: &mut impl FnMut(&[u8])) -> Result<Ev, Error> {
        let header = self
            .client
            .poll_header()
            .await
            .map_err(|e| self.map_error(&e))?;
        // Everything a packet's body allocates (topic, payload, properties)
        // fits in its remaining length, at most MAX_INCOMING_PACKET (the
        // maximum packet size we announced; rust-mqtt refuses larger ones):
        // refuse before reading the body, not half-way through it.
        let needed = MAX_INCOMING_PACKET as usize;
        let left = self.client.buffer().remaining();
        if needed > left {
            // Leave cleanly (no will): the unacknowledged packet is redelivered.
            let _ = self.client.disconnect(&DisconnectOptions::new()).await;
            return Err(Error::Capacity(error::Capacity::ArenaUsedUp {
                needed,
                left,
            }));
        }
        let event = self
            .client
            .poll_body(header)
            .await
            .map_err(|e| self.map_error(&e))?;
        Ok(match event {
            Event::Publish(p) => {
                let ours = p
                    .topic
                    .name()
                    .is_some_and(|t| t.as_ref().as_str() == self.receipts.as_str());
                if ours {
                    on_receipt(&p.message);
                }
                Ev::Other
            }
            Event::PublishAcknowledged(p) => Ev::Puback(p.packet_identifier),
            Event::PublishRejected(p) => Ev::Pubrej(p.packet_identifier, p.reason_code),
            Event::Suback(s) => Ev::Suback(s.packet_identifier, s.reason_code),
            Event::Pingresp => {
                self.ping_sent_ms = None;
                Ev::Other
            }
            _ => Ev::Other,
        })
    }

    fn map_error<const N: usize>(&self, e: &MqttError<'_, N>) -> Error {
        map_error(e, self.link, false, self.presented_cert)
    }

    /// The relay id this connection publishes for.
    pub fn relay_id(&self) -> u32 {
        self.relay_id
    }
}

fn mqtt_str(t: &Topic) -> Result<MqttString<'_>, Error> {
    MqttString::from_str(t.as_str()).map_err(|_| Error::Mqtt(error::Mqtt::Protocol))
}

fn topic_name(t: &Topic) -> Result<TopicName<'_>, Error> {
    TopicName::new(mqtt_str(t)?).ok_or(Error::Mqtt(error::Mqtt::Protocol))
}

fn map_connect_error<S: Read + Write, const N: usize>(
    e: &MqttError<'_, N>,
    link: &Link<S>,
    presented: bool,
) -> Error {
    map_error(e, link, true, presented)
}

/// Turns rust-mqtt's error into ours, using the TLS error the link kept.
fn map_error<S: Read + Write, const N: usize>(
    e: &MqttError<'_, N>,
    link: &Link<S>,
    connecting: bool,
    presented: bool,
) -> Error {
    match e {
        MqttError::Network(kind) => {
            if connecting && link.handshake_done() {
                // TLS 1.3: the client finishes its handshake before the broker
                // has checked our certificate; a broker that refuses it ends
                // the session before CONNACK (alert, close).
                return Error::Tls(error::Tls::ClientCertRefused { presented });
            }
            match link.last_tls_error() {
                // close_notify, or the TCP stream ended (embedded-tls: IoError).
                Some(TlsError::ConnectionClosed | TlsError::IoError) => {
                    Error::Io(error::Io::ClosedByBroker)
                }
                Some(TlsError::Io(k)) => Error::Io(error::Io::ConnectionLost(k)),
                Some(t) => Error::Io(error::Io::Tls(t)),
                None => Error::Io(error::Io::ConnectionLost(*kind)),
            }
        }
        MqttError::Disconnect { reason, .. } if connecting => {
            Error::Mqtt(error::Mqtt::ConnectRefused(*reason))
        }
        MqttError::Disconnect { reason, .. } => Error::Mqtt(error::Mqtt::Disconnected(*reason)),
        MqttError::Alloc => Error::Capacity(error::Capacity::ArenaUsedUp { needed: 0, left: 0 }),
        MqttError::ServerMaximumPacketSizeExceeded | MqttError::PacketMaximumLengthExceeded => {
            Error::Capacity(error::Capacity::PacketTooLarge)
        }
        MqttError::RecoveryRequired => Error::Io(error::Io::ConnectionLost(
            embedded_io::ErrorKind::NotConnected,
        )),
        _ => Error::Mqtt(error::Mqtt::Protocol),
    }
}
