//! TLS material that changes while a service runs (`gridpow keys renew`):
//! which certificate files a service uses, whether they changed on disk, and
//! whether the new ones are usable, so the relay and the server can reload
//! them on SIGHUP or within [`RELOAD_CHECK_INTERVAL`] of a change without
//! a restart. A reload that fails keeps the material in use (the caller logs
//! the error, which names the file); an expired or not yet valid certificate
//! is refused as at start.
//!
//! The certificates in use, with their ends, are also what the expiry gauges
//! report ([`CertsInUse`]).

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::tls::{check_validity, load_certs, load_key, TlsError, EXPIRY_WARNING_S};

/// How often a service looks at the modification times of its TLS files.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// A certificate a service uses, for logs, `/metrics` and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInUse {
    /// What it is for: `mqtt_ca`, `mqtt_client`, `https`.
    pub role: &'static str,
    /// Its PEM file.
    pub file: PathBuf,
    /// End of its validity, Unix seconds.
    pub not_after: i64,
    /// The same as a UTC date.
    pub not_after_text: String,
}

impl CertInUse {
    /// Whole days left at `now_s` (negative once expired).
    pub fn days_left(&self, now_s: i64) -> i64 {
        (self.not_after - now_s).div_euclid(86_400)
    }

    /// Whether it ends within the start-time warning period (30 days) of `now_s`.
    pub fn ends_soon(&self, now_s: i64) -> bool {
        self.not_after - now_s < EXPIRY_WARNING_S
    }
}

/// A certificate file a service watches, with its private key if it is an
/// identity (a CA has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedCert {
    /// What it is for (see [`CertInUse::role`]).
    pub role: &'static str,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), if any.
    pub key: Option<PathBuf>,
}

/// What identifies a file's content cheaply: replaced files (a rename, as
/// `gridpow keys renew` writes them) get a new inode even within one
/// modification-time tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The TLS files of one service and how they looked when last seen.
#[derive(Debug)]
pub struct TlsWatch {
    certs: Vec<WatchedCert>,
    seen: Vec<Option<Stamp>>,
}

impl TlsWatch {
    /// Watches `certs` from how they look now.
    pub fn new(certs: Vec<WatchedCert>) -> Self {
        let mut w = TlsWatch {
            certs,
            seen: Vec::new(),
        };
        w.seen = w.stamps();
        w
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        self.certs
            .iter()
            .flat_map(|c| std::iter::once(c.cert.as_path()).chain(c.key.as_deref()))
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        self.paths().map(stamp).collect()
    }

    /// Whether any file changed (or appeared, or vanished) since the last
    /// call or [`TlsWatch::new`]; remembers how they look now, so one change
    /// is reported once.
    pub fn changed(&mut self) -> bool {
        let now = self.stamps();
        let changed = now != self.seen;
        self.seen = now;
        changed
    }

    /// The certificates watched.
    pub fn certs(&self) -> &[WatchedCert] {
        &self.certs
    }

    /// Checks every file at `now_s` as the start does: each certificate
    /// readable and valid now, each key readable. The error names the file.
    pub fn check(&self, now_s: i64) -> Result<Vec<CertInUse>, TlsError> {
        let mut out = Vec::with_capacity(self.certs.len());
        for c in &self.certs {
            load_certs(&c.cert)?;
            let v = check_validity(&c.cert, now_s)?;
            if let Some(key) = &c.key {
                load_key(key)?;
            }
            out.push(CertInUse {
                role: c.role,
                file: c.cert.clone(),
                not_after: v.not_after,
                not_after_text: v.not_after_text,
            });
        }
        Ok(out)
    }
}

/// The certificates a service uses now, as of its start or last reload.
#[derive(Debug, Default)]
pub struct CertsInUse(RwLock<Vec<CertInUse>>);

impl CertsInUse {
    /// Replaces the list.
    pub fn set(&self, certs: Vec<CertInUse>) {
        match self.0.write() {
            Ok(mut g) => *g = certs,
            Err(p) => *p.into_inner() = certs,
        }
    }

    /// The list.
    pub fn get(&self) -> Vec<CertInUse> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The fewest whole days any of them has left at `now_s`, if any.
    pub fn min_days_left(&self, now_s: i64) -> Option<i64> {
        self.get().iter().map(|c| c.days_left(now_s)).min()
    }
}

/// Logs what a reload loaded: one line per certificate with its end, a
/// warning for one ending within 30 days.
pub fn log_loaded(what: &str, certs: &[CertInUse], now_s: i64) {
    for c in certs {
        let days_left = c.days_left(now_s);
        if c.ends_soon(now_s) {
            tracing::warn!(role = c.role, file = %c.file.display(), expires = %c.not_after_text, days_left, "{what}: TLS certificate loaded, but it ends within 30 days.");
        } else {
            tracing::info!(role = c.role, file = %c.file.display(), expires = %c.not_after_text, days_left, "{what}: TLS certificate loaded.");
        }
    }
}

/// Now, Unix seconds.
pub fn now_s() -> i64 {
    i64::try_from(crate::wall_ms() / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(path: &Path, from: i32, to: i32) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let c = params.self_signed(&key).unwrap();
        crate::durable::write_file(path, c.pem().as_bytes(), false).unwrap();
        crate::durable::write_file(
            &path.with_extension("key"),
            key.serialize_pem().as_bytes(),
            true,
        )
        .unwrap();
    }

    const Y2030: i64 = 1_893_456_000;

    #[test]
    fn a_replaced_file_is_seen_once_and_its_new_end_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("c.pem");
        cert(&pem, 2020, 2031);
        let mut w = TlsWatch::new(vec![WatchedCert {
            role: "mqtt_client",
            cert: pem.clone(),
            key: Some(pem.with_extension("key")),
        }]);
        assert!(!w.changed());
        cert(&pem, 2020, 2040);
        assert!(w.changed());
        assert!(!w.changed(), "one change is reported once");
        let certs = w.check(Y2030).unwrap();
        assert_eq!(certs[0].role, "mqtt_client");
        assert_eq!(certs[0].days_left(Y2030), 3652);
        assert!(!certs[0].ends_soon(Y2030));
    }

    #[test]
    fn an_expired_or_broken_replacement_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("c.pem");
        cert(&pem, 2020, 2025);
        let w = TlsWatch::new(vec![WatchedCert {
            role: "mqtt_client",
            cert: pem.clone(),
            key: Some(pem.with_extension("key")),
        }]);
        let e = w.check(Y2030).unwrap_err().to_string();
        assert!(e.contains("c.pem") && e.contains("expired"), "{e}");
        std::fs::write(pem.with_extension("key"), "junk").unwrap();
        cert(&pem, 2020, 2040);
        std::fs::write(pem.with_extension("key"), "junk").unwrap();
        let e = w.check(Y2030).unwrap_err().to_string();
        assert!(e.contains("c.key"), "{e}");
    }

    #[test]
    fn the_register_gives_the_fewest_days_left_and_flags_30_days() {
        let r = CertsInUse::default();
        assert_eq!(r.min_days_left(Y2030), None);
        let c = |d: i64| CertInUse {
            role: "mqtt_ca",
            file: PathBuf::from("x.pem"),
            not_after: Y2030 + d * 86_400,
            not_after_text: String::new(),
        };
        r.set(vec![c(400), c(12)]);
        assert_eq!(r.min_days_left(Y2030), Some(12));
        assert!(c(12).ends_soon(Y2030));
        assert!(!c(31).ends_soon(Y2030));
        assert_eq!(c(-1).days_left(Y2030), -1);
    }
}
