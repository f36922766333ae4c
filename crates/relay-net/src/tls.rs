//! TLS 1.3 with mutual authentication over embedded-tls: the broker's chain is
//! checked by embedded-tls's rustpki `CertVerifier` against the site CA; dates
//! (against the caller's clock) and the host name are checked here, so each
//! failure gets its own error.

// The socket lives in a RefCell shared by the TLS layer (inside the MQTT
// client) and `wait_readable`; only one of them runs at a time (both are
// driven through `&mut Connection`), and `try_borrow_mut` turns a misuse into
// an I/O error instead of a panic. Taking the socket out of the cell across an
// await instead would lose it when the future is cancelled.
#![allow(clippy::await_holding_refcell_ref)]

use core::cell::{Cell, RefCell};

use embedded_io::ErrorType;
use embedded_io_async::{Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateRef, CertificateVerifyRef, CryptoProvider,
    CryptoRngCore, NoClock, SignatureScheme, TlsConnection, TlsError, TlsVerifier,
};
use p256::ecdsa::{DerSignature, SigningKey};

use crate::error::{self, Error};
use crate::x509::CertInfo;

/// The cipher suite: the one every TLS 1.3 server must support.
pub(crate) type Suite = Aes128GcmSha256;

/// Largest broker certificate chain (DER, as sent in the Certificate message)
/// the verifier keeps during the handshake. A P-256 leaf is about 600 bytes.
pub const MAX_BROKER_CHAIN: usize = 2048;

/// The socket the caller connected, shared between the TLS layer (inside the
/// MQTT client) and [`Connection::wait_readable`](crate::Connection::wait_readable),
/// with a one-byte stash that makes waiting for data cancel-safe.
///
/// Create one per TCP connection and keep it alive as long as the
/// [`Connection`](crate::Connection).
pub struct Link<S> {
    socket: RefCell<Stashed<S>>,
    /// Decrypted bytes wait in the TLS layer (the last record held more than
    /// the MQTT client read), so the connection is readable without the socket.
    plaintext_pending: Cell<bool>,
    /// The last TLS error, kept because the MQTT client reports only its kind.
    last_tls_error: Cell<Option<TlsError>>,
    /// The handshake finished (a failure after it is not a handshake failure).
    handshake_done: Cell<bool>,
}

struct Stashed<S> {
    socket: S,
    stash: Option<u8>,
}

impl<S: Read + Write> Link<S> {
    /// Wraps a connected socket (embassy-net `TcpSocket`, tokio `TcpStream`
    /// through `embedded_io_adapters::tokio_1::FromTokio`, ...).
    pub fn new(socket: S) -> Self {
        Link {
            socket: RefCell::new(Stashed {
                socket,
                stash: None,
            }),
            plaintext_pending: Cell::new(false),
            last_tls_error: Cell::new(None),
            handshake_done: Cell::new(false),
        }
    }

    /// The socket back (to close it or to drop it).
    pub fn into_inner(self) -> S {
        self.socket.into_inner().socket
    }

    /// Waits until the socket has data or the TLS layer holds decrypted bytes.
    /// Cancel-safe: a byte read here is stashed for the TLS layer.
    pub(crate) async fn wait_readable(&self) -> Result<(), Error> {
        if self.plaintext_pending.get() {
            return Ok(());
        }
        let mut s = self
            .socket
            .try_borrow_mut()
            .map_err(|_| Error::Io(error::Io::ConnectionLost(embedded_io::ErrorKind::Other)))?;
        if s.stash.is_some() {
            return Ok(());
        }
        let mut b = [0u8; 1];
        match s.socket.read(&mut b).await {
            Ok(0) => Err(Error::Io(error::Io::ClosedByBroker)),
            Ok(_) => {
                s.stash = Some(b[0]);
                Ok(())
            }
            Err(e) => Err(Error::Io(error::Io::ConnectionLost(
                embedded_io::Error::kind(&e),
            ))),
        }
    }

    pub(crate) fn last_tls_error(&self) -> Option<TlsError> {
        self.last_tls_error.get()
    }

    pub(crate) fn handshake_done(&self) -> bool {
        self.handshake_done.get()
    }

    pub(crate) fn set_handshake_done(&self) {
        self.handshake_done.set(true);
    }
}

/// The TLS layer's view of the [`Link`]'s socket.
pub(crate) struct SocketRef<'l, S>(&'l Link<S>);

impl<S: Read + Write> ErrorType for SocketRef<'_, S> {
    type Error = embedded_io::ErrorKind;
}

impl<S: Read + Write> Read for SocketRef<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut s = self
            .0
            .socket
            .try_borrow_mut()
            .map_err(|_| embedded_io::ErrorKind::Other)?;
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(b) = s.stash.take() {
            buf[0] = b;
            return Ok(1);
        }
        s.socket
            .read(buf)
            .await
            .map_err(|e| embedded_io::Error::kind(&e))
    }
}

impl<S: Read + Write> Write for SocketRef<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        let mut s = self
            .0
            .socket
            .try_borrow_mut()
            .map_err(|_| embedded_io::ErrorKind::Other)?;
        s.socket
            .write(buf)
            .await
            .map_err(|e| embedded_io::Error::kind(&e))
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        let mut s = self
            .0
            .socket
            .try_borrow_mut()
            .map_err(|_| embedded_io::ErrorKind::Other)?;
        s.socket
            .flush()
            .await
            .map_err(|e| embedded_io::Error::kind(&e))
    }
}

/// The MQTT client's transport: the TLS session, recording what the MQTT
/// client cannot report (the TLS error, whether decrypted bytes remain).
pub(crate) struct TlsStream<'l, 't, S: Read + Write> {
    pub(crate) tls: TlsConnection<'t, SocketRef<'l, S>, Suite>,
    link: &'l Link<S>,
}

impl<'l, 't, S: Read + Write> TlsStream<'l, 't, S> {
    pub(crate) fn new(link: &'l Link<S>, read_buf: &'t mut [u8], write_buf: &'t mut [u8]) -> Self {
        TlsStream {
            tls: TlsConnection::new(SocketRef(link), read_buf, write_buf),
            link,
        }
    }

    fn record(&self, e: TlsError) -> TlsError {
        self.link.last_tls_error.set(Some(e));
        e
    }
}

impl<S: Read + Write> ErrorType for TlsStream<'_, '_, S> {
    type Error = TlsError;
}

impl<S: Read + Write> Read for TlsStream<'_, '_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let outcome = match self.tls.read_buffered().await {
            Ok(mut rb) => {
                let n = rb.pop_into(buf);
                Ok((n, rb.len()))
            }
            Err(e) => Err(e),
        };
        let (n, left) = outcome.map_err(|e| self.record(e))?;
        self.link.plaintext_pending.set(left > 0);
        Ok(n)
    }
}

impl<S: Read + Write> Write for TlsStream<'_, '_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        match self.tls.write(buf).await {
            Ok(n) => Ok(n),
            Err(e) => Err(self.record(e)),
        }
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        match self.tls.flush().await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.record(e)),
        }
    }
}

/// Verifies the broker: chain to the site CA (embedded-tls), then dates and
/// name (here). Remembers why it refused, for a precise error.
pub(crate) struct SiteVerifier<'a> {
    inner: CertVerifier<'a, Suite, NoClock, MAX_BROKER_CHAIN>,
    ca_der: &'a [u8],
    host: &'a str,
    now: u64,
    pub(crate) verdict: Option<error::Tls>,
    /// The broker's certificate and signature passed: what fails afterwards
    /// in the handshake is the broker's verdict on us.
    pub(crate) broker_verified: bool,
}

impl<'a> SiteVerifier<'a> {
    pub(crate) fn new(ca_der: &'a [u8], host: &'a str, now: u64) -> Self {
        SiteVerifier {
            // No clock inside: embedded-tls's clock is a static type; dates are
            // checked here against the caller's `now`.
            inner: CertVerifier::new(Certificate::X509(ca_der)),
            ca_der,
            host,
            now,
            verdict: None,
            broker_verified: false,
        }
    }

    fn refuse(&mut self, why: error::Tls) -> TlsError {
        self.verdict = Some(why);
        TlsError::InvalidCertificate
    }

    fn date_verdict(&self, info: &CertInfo<'_>) -> Option<error::Tls> {
        if self.now < info.not_before {
            return Some(error::Tls::BrokerCertNotYetValid {
                not_before: info.not_before,
                now: self.now,
            });
        }
        if self.now > info.not_after {
            return Some(error::Tls::BrokerCertExpired {
                not_after: info.not_after,
                now: self.now,
            });
        }
        None
    }
}

impl TlsVerifier<Suite> for SiteVerifier<'_> {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The name is checked in `verify_certificate` against `self.host`.
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Suite as embedded_tls::TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        use embedded_tls::CertificateEntryRef;
        let leaf = match cert.entries.first() {
            Some(CertificateEntryRef::X509(der)) => *der,
            _ => return Err(self.refuse(error::Tls::BrokerCertMalformed)),
        };
        let Some(leaf_info) = CertInfo::parse(leaf) else {
            return Err(self.refuse(error::Tls::BrokerCertMalformed));
        };

        // Dates are read now (the chain is handed to embedded-tls below) and
        // reported last: an untrusted or misnamed certificate says more.
        let mut dates = None;
        for entry in &cert.entries {
            let info = match entry {
                CertificateEntryRef::X509(der) => CertInfo::parse(der),
                CertificateEntryRef::RawPublicKey(_) => None,
            };
            let Some(info) = info else {
                return Err(self.refuse(error::Tls::BrokerCertMalformed));
            };
            dates = dates.or(self.date_verdict(&info));
        }
        let Some(ca_info) = CertInfo::parse(self.ca_der) else {
            return Err(self.refuse(error::Tls::BrokerCertMalformed));
        };
        dates = dates.or(self.date_verdict(&ca_info));

        // 0. Chain shape. embedded-tls checks signatures but not basicConstraints,
        // so an intermediate could be any certificate of the site (a relay's,
        // whose key an attacker may pull from a device) minting broker
        // certificates. The site CA signs the broker's certificate directly:
        // besides the leaf, accept only copies of the site CA itself.
        let extra_ok = cert
            .entries
            .iter()
            .skip(1)
            .all(|e| matches!(e, CertificateEntryRef::X509(der) if *der == self.ca_der));
        if !extra_ok {
            return Err(self.refuse(error::Tls::BrokerUntrusted));
        }
        if !leaf_info.allows_server_auth() {
            return Err(self.refuse(error::Tls::BrokerCertNotForServers));
        }

        // 1. The chain: embedded-tls verifies each signature up to the site CA.
        // It also insists on a name match, which is ours to report: tell it a
        // name the leaf carries, and check the real host name below.
        if leaf_info.has_dns_name_or_cn() {
            let name = leaf_info
                .any_dns_name()
                .or(leaf_info.common_name)
                .and_then(|n| core::str::from_utf8(n).ok())
                .ok_or_else(|| self.refuse(error::Tls::BrokerCertMalformed))?;
            self.inner.set_hostname_verification(name)?;
        }
        match self.inner.verify_certificate(transcript, cert) {
            Ok(()) => {}
            Err(TlsError::InvalidCertificate | TlsError::InvalidSignatureScheme) => {
                return Err(self.refuse(error::Tls::BrokerUntrusted))
            }
            Err(TlsError::DecodeError | TlsError::ParseError(_)) => {
                return Err(self.refuse(error::Tls::BrokerCertMalformed))
            }
            Err(e) => return Err(e),
        }

        // 2. The name the caller connected to.
        if !leaf_info.names(self.host) {
            return Err(self.refuse(error::Tls::BrokerNameMismatch));
        }

        // 3. Dates of every certificate the broker sent and of the site CA.
        match dates {
            Some(why) => Err(self.refuse(why)),
            None => Ok(()),
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        self.inner.verify_signature(verify)?;
        self.broker_verified = true;
        Ok(())
    }
}

/// embedded-tls's crypto provider: the caller's RNG, our verifier, the
/// client certificate and its P-256 key.
pub(crate) struct Provider<'a, R> {
    pub(crate) rng: R,
    pub(crate) verifier: SiteVerifier<'a>,
    pub(crate) identity: Option<(&'a [u8], SigningKey)>,
}

impl<R: CryptoRngCore> CryptoProvider for Provider<'_, R> {
    type CipherSuite = Suite;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<Self::Signature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        match &self.identity {
            Some((_, key)) => Ok((key.clone(), SignatureScheme::EcdsaSecp256r1Sha256)),
            None => Err(TlsError::InvalidPrivateKey),
        }
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.identity
            .as_ref()
            .map(|(der, _)| Certificate::X509(*der))
    }
}

/// A P-256 private key from PKCS#8 DER (what `gridpow keys` and rcgen write)
/// or SEC1 DER (`openssl ecparam -genkey`).
pub(crate) fn parse_key(der: &[u8]) -> Result<SigningKey, Error> {
    use p256::pkcs8::DecodePrivateKey;
    if let Ok(k) = SigningKey::from_pkcs8_der(der) {
        return Ok(k);
    }
    p256::SecretKey::from_sec1_der(der)
        .map(|s| SigningKey::from(&s))
        .map_err(|_| Error::Config(error::Config::ClientKey))
}
