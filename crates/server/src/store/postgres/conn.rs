//! A blocking PostgreSQL connection that works from any thread, inside a
//! tokio runtime or not.
//!
//! The [`Store`](crate::store::Store) trait is synchronous and is called from
//! plain threads (the writer), from `spawn_blocking` (the HTTP API) and from
//! async code that blocks (the `gridpow demo` ledger check). The `postgres`
//! crate's blocking client runs its own runtime's `block_on` on the caller's
//! thread, which panics inside a runtime. Here the connection's socket is
//! driven by a current-thread runtime on a thread of its own, and the
//! caller's thread only waits for the client futures ([`block_on`]), which
//! talk to that thread over channels and need no runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio_postgres::{Client, Config, NoTls, Statement};

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
}

impl PgConn {
    /// Connects to `url` (`postgres://user:password@host:port/db?…`), without TLS.
    pub fn connect(url: &str) -> Result<PgConn, ConnectError> {
        let config: Config = url.parse().map_err(ConnectError::Url)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Client, ConnectError>>(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectError::Thread)?;
        std::thread::Builder::new()
            .name("gridpow-pg".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match config.connect(NoTls).await {
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
