//! Private PostgreSQL instances for tests and benchmarks: `initdb` into a
//! temporary directory, `postgres` on a free port of 127.0.0.1 (and a Unix
//! socket in that directory), trust authentication for user `gridpow`, a
//! fresh database per test. Nothing touches a machine-wide server.
//!
//! The server binaries are looked up on `PATH` and then under
//! `/usr/lib/postgresql/*/bin` (newest first); if they are missing,
//! [`PgServer::start`] fails with a message saying how to install them. PostgreSQL
//! refuses to run as root: when the tests run as root, `initdb` and
//! `postgres` run as the `postgres` user (else `nobody`), owning the data
//! directory.
//!
//! ```no_run
//! # fn main() -> Result<(), gridpow_testkit::pg_harness::PgHarnessError> {
//! use gridpow_testkit::pg_harness::PgServer;
//! let pg = PgServer::shared()?;          // one instance per process while in use
//! let url = pg.create_database()?;       // postgres://gridpow@127.0.0.1:PORT/gp_…
//! pg.execute(&url, "SELECT 1")?;
//! pg.kill();                             // SIGKILL the postmaster (a crash)
//! pg.restart()?;                         // same data directory and port
//! # Ok(()) }
//! ```

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Why a private instance could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgHarnessError {
    /// The server binaries are not installed.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin: \
         install them (Debian/Ubuntu: apt-get install postgresql; or set PATH to their directory)"
    )]
    Missing,
    /// A file, process or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed: {0}")]
    Initdb(String),
    /// The server did not accept connections in time.
    #[error("PostgreSQL on port {port} did not come up within {secs} s; its log:\n{log}")]
    NotReady {
        /// The port.
        port: u16,
        /// How long we waited.
        secs: u64,
        /// The server's log.
        log: String,
    },
    /// A statement failed.
    #[error("SQL on the private instance failed: {0}")]
    Sql(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgHarnessError {
    let context = context.into();
    move |source| PgHarnessError::Io { context, source }
}

/// Settings of a private instance.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// `fsync` (off by default: tests survive process crashes, not OS crashes;
    /// benchmarks turn it on).
    pub fsync: bool,
    /// More `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

/// A private PostgreSQL server; stopped (fast shutdown) and its directory
/// removed on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    opts: PgOptions,
    child: Mutex<Option<Child>>,
    next_db: AtomicU32,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("data", &self.data)
            .finish()
    }
}

/// The directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Result<PathBuf, PgHarnessError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                // Debian links /usr/local/bin/initdb → /usr/lib/postgresql/N/bin/initdb.
                let real = std::fs::canonicalize(d.join("postgres"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf));
                return Ok(real.filter(|r| has_both(r)).unwrap_or(d));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or(PgHarnessError::Missing)
}

/// The uid and gid to run the server as when we are root.
fn unprivileged_user() -> Result<Option<(u32, u32)>, PgHarnessError> {
    let euid = std::fs::metadata("/proc/self")
        .map_err(io("reading /proc/self"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
                .flatten()
        })
    };
    Ok(Some(
        find("postgres")
            .or_else(|| find("nobody"))
            .unwrap_or((65534, 65534)),
    ))
}

/// Runs `sql` (statements separated by semicolons) on the database at `url`
/// over a connection of its own, returning the rows of the last statement.
/// The client runs on a thread of its own, so callers inside an async test
/// (a tokio runtime) may call it too.
fn simple_query(url: &str, sql: &str) -> Result<Vec<SimpleQueryMessage>, PgHarnessError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("starting a runtime for the SQL client"))?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(url, NoTls)
                    .await
                    .map_err(|e| PgHarnessError::Sql(e.to_string()))?;
                let driver = tokio::spawn(connection);
                let rows = client
                    .simple_query(sql)
                    .await
                    .map_err(|e| PgHarnessError::Sql(format!("{sql}: {e}")));
                drop(client);
                let _ = driver.await;
                rows
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn shared_slot() -> &'static Mutex<Weak<PgServer>> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    &SHARED
}

impl PgServer {
    /// Starts a private instance with default options.
    pub fn start() -> Result<PgServer, PgHarnessError> {
        Self::start_with(PgOptions::default())
    }

    /// The instance this process's tests share while any of them holds it
    /// (started on first use, stopped when the last holder drops it).
    pub fn shared() -> Result<Arc<PgServer>, PgHarnessError> {
        let mut slot = shared_slot()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pg) = slot.upgrade() {
            return Ok(pg);
        }
        let pg = Arc::new(PgServer::start()?);
        *slot = Arc::downgrade(&pg);
        Ok(pg)
    }

    /// Runs `initdb` into a new temporary directory and starts the server.
    pub fn start_with(opts: PgOptions) -> Result<PgServer, PgHarnessError> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new()
            .prefix("gridpow-pg-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io("handing the data directory to the postgres user"))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "gridpow",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(io(format!("running {}", bin.join("initdb").display())))?;
        if !out.status.success() {
            return Err(PgHarnessError::Initdb(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let pg = PgServer {
            port: crate::free_port().map_err(io("binding a free port"))?,
            dir,
            data,
            bin,
            run_as,
            opts,
            child: Mutex::new(None),
            next_db: AtomicU32::new(0),
        };
        pg.launch()?;
        Ok(pg)
    }

    fn launch(&self) -> Result<(), PgHarnessError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("opening the server log"))?;
        let log2 = log.try_clone().map_err(io("opening the server log"))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .arg("-c")
            .arg(format!(
                "fsync={}",
                if self.opts.fsync { "on" } else { "off" }
            ))
            .args(["-c", "max_connections=100"]);
        for (k, v) in &self.opts.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let started = Instant::now();
        let secs = 30;
        // After a crash the old backends may still hold shared memory for a moment: retry.
        loop {
            let mut child = cmd.spawn().map_err(io("starting postgres"))?;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if self.ping("postgres").is_ok() {
                    *self
                        .child
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
                    return Ok(());
                }
                if started.elapsed() > Duration::from_secs(secs) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PgHarnessError::NotReady {
                        port: self.port,
                        secs,
                        log: self.log(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if started.elapsed() > Duration::from_secs(secs) {
                return Err(PgHarnessError::NotReady {
                    port: self.port,
                    secs,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ping(&self, db: &str) -> Result<(), PgHarnessError> {
        simple_query(&self.url(db), "SELECT 1").map(drop)
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The URL of database `db` as user `gridpow`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://gridpow@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String, PgHarnessError> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("gp_{}_{n}", std::process::id());
        self.execute(&self.url("postgres"), &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs `sql` (statements separated by semicolons) on the database at `url`.
    pub fn execute(&self, url: &str, sql: &str) -> Result<(), PgHarnessError> {
        simple_query(url, sql).map(drop)
    }

    /// Turns TLS on (`ssl = on`, reloaded, no restart) with this PEM
    /// certificate chain and private key; plaintext connections stay allowed.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), PgHarnessError> {
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        std::fs::write(&cert, cert_pem).map_err(io("writing server.crt"))?;
        std::fs::write(&key, key_pem).map_err(io("writing server.key"))?;
        // PostgreSQL refuses a key others can read, or one it does not own.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("restricting server.key"))?;
        if let Some((uid, gid)) = self.run_as {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid))
                    .map_err(io("handing the TLS files to the postgres user"))?;
            }
        }
        let url = self.url("postgres");
        // Two statements: ALTER SYSTEM may not run inside a (multi-statement) transaction.
        self.execute(&url, "ALTER SYSTEM SET ssl = on")?;
        self.execute(&url, "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on = simple_query(&url, "SHOW ssl")?
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("on")));
            if on {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgHarnessError::Sql(format!(
                    "ssl did not turn on; server log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the postmaster with SIGKILL (a crash); [`PgServer::restart`] brings it back.
    pub fn kill(&self) {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut c) = child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again (after [`PgServer::kill`] or [`PgServer::stop`]) on the same port and data.
    pub fn restart(&self) -> Result<(), PgHarnessError> {
        self.stop();
        self.launch()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
