//! A blocking PostgreSQL connection that works from any thread, inside a
//! tokio runtime or not.
//!
//! The [`Store`](crate::Store) trait is synchronous and is called from
//! plain threads (the writer), from `spawn_blocking` (the HTTP API) and from
//! async code that blocks (the `gridpow demo` ledger check). The `postgres`
//! crate's blocking client runs its own runtime's `block_on` on the caller's
//! thread, which panics inside a runtime. Here the connection's socket is
//! driven by a current-thread runtime on a thread of its own, and the
//! caller's thread only waits for the client futures ([`block_on`]), which
//! talk to that thread over channels and need no runtime.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;

/// Runs `fut` to completion on the current thread, parking between polls.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A connection: the client, its prepared statements, and the thread that
/// drives its socket (it ends by itself once the client is dropped).
pub struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .finish()
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("{}", super::detail(.0))]
    Url(#[source] tokio_postgres::Error),
    /// The server could not be reached or refused us.
    #[error("{}", super::detail(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// The driver thread or its runtime could not be started.
    #[error("starting the connection thread: {0}")]
    Thread(#[source] std::io::Error),
    /// `sslmode` or `sslrootcert` in the URL is invalid or unusable.
    #[error("TLS settings of the database URL: {0}")]
    Tls(String),
}

/// Connects, hands the client to `tx`, then drives the socket until the
/// connection ends.
async fn drive<T>(
    config: Config,
    tls: T,
    tx: std::sync::mpsc::SyncSender<Result<Client, ConnectError>>,
) where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Unpin,
{
    match config.connect(tls).await {
        Ok((client, connection)) => {
            if tx.send(Ok(client)).is_err() {
                return;
            }
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended.");
            }
        }
        Err(e) => {
            let _ = tx.send(Err(ConnectError::Connect(e)));
        }
    }
}

/// `sslmode` as libpq spells it; the modes that use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    /// Encrypt; check the certificate only if `sslrootcert` is given (as libpq).
    Require,
    /// Encrypt; the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL (tokio-postgres
/// knows neither `verify-ca`, `verify-full` nor `sslrootcert`). Returns the
/// rest of the URL, the TLS mode (`None`: plaintext, as before) and the root
/// CA file. Key-value connection strings pass through unchanged.
fn split_tls_params(url: &str) -> Result<(String, Option<TlsMode>, Option<PathBuf>), ConnectError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_string(), None, None));
    };
    let (mut mode, mut root, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "disable" | "allow" | "prefer" => None,
                    "require" => Some(TlsMode::Require),
                    "verify-ca" => Some(TlsMode::VerifyCa),
                    "verify-full" => Some(TlsMode::VerifyFull),
                    other => {
                        return Err(ConnectError::Tls(format!(
                    "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                )))
                    }
                }
            }
            Some(("sslrootcert", v)) => root = Some(PathBuf::from(percent_decode(v)?)),
            _ => rest.push(pair),
        }
    }
    let mode = match (mode, &root) {
        (None, Some(_)) => {
            return Err(ConnectError::Tls(
                "sslrootcert needs sslmode=require, verify-ca or verify-full".into(),
            ))
        }
        (Some(TlsMode::VerifyCa | TlsMode::VerifyFull), None) => {
            return Err(ConnectError::Tls(
                "sslmode=verify-ca and verify-full need sslrootcert=<CA file>".into(),
            ))
        }
        // libpq: `require` with a root CA file verifies the chain.
        (Some(TlsMode::Require), Some(_)) => Some(TlsMode::VerifyCa),
        (m, _) => m,
    };
    let rest = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((rest, mode, root))
}

/// Decodes `%XX` escapes (a path in a URL).
fn percent_decode(v: &str) -> Result<String, ConnectError> {
    let bad = || ConnectError::Tls(format!("sslrootcert={v}: bad percent escape"));
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A rustls client configuration for `mode` (ring, as all gridpow TLS).
fn tls_config(mode: TlsMode, root: Option<&PathBuf>) -> Result<rustls::ClientConfig, ConnectError> {
    let provider = gridpow_common::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match root {
        None => Arc::new(AnyCertificate(provider)),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = gridpow_common::tls::load_certs(path)
                .map_err(|e| ConnectError::Tls(format!("sslrootcert: {e}")))?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    ConnectError::Tls(format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
            if mode == TlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(AnyName(webpki))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=require` without a root CA: encrypted, the server's certificate
/// unchecked (libpq's meaning; it protects against passive listeners only).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl PgConn {
    /// Connects to `url` (`postgres://user:password@host:port/db?…`). With
    /// `sslmode=require`, `verify-ca` or `verify-full` (and `sslrootcert=<CA
    /// PEM file>`, required by the last two) the connection uses TLS (rustls)
    /// and fails if the server does not offer it; otherwise it is plaintext.
    pub fn connect(url: &str) -> Result<PgConn, ConnectError> {
        let (url, mode, root) = split_tls_params(url)?;
        let mut config: Config = url.parse().map_err(ConnectError::Url)?;
        let tls = match mode {
            Some(m) => {
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(tls_config(m, root.as_ref())?))
            }
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Client, ConnectError>>(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectError::Thread)?;
        std::thread::Builder::new()
            .name("gridpow-pg".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tls {
                        Some(tls) => drive(config, tls, tx).await,
                        None => drive(config, NoTls, tx).await,
                    }
                })
            })
            .map_err(ConnectError::Thread)?;
        let client = rx
            .recv()
            .map_err(|_| ConnectError::Thread(std::io::Error::other("connection thread died")))??;
        Ok(PgConn {
            client,
            statements: HashMap::new(),
        })
    }

    /// The client (to start transactions and run statements with [`block_on`]).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Whether the connection is gone (the server closed it or died).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The prepared statement for `sql`, preparing it on first use.
    pub fn prepare(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = block_on(self.client.prepare(sql))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Runs statements separated by semicolons (no parameters, no results).
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), tokio_postgres::Error> {
        block_on(self.client.batch_execute(sql))
    }

    /// Runs one statement with parameters; returns the rows affected.
    pub fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        block_on(self.client.execute(sql, params))
    }

    /// Runs one query with parameters; returns its rows.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        block_on(self.client.query(sql, params))
    }
}
