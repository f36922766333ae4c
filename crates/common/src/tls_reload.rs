//! TLS material that changes while a service runs (`gridpow keys renew`):
//! which certificate files a service uses, whether they changed on disk, and
//! whether the new ones are usable, so the relay and the server can reload
//! them on SIGHUP or within [`RELOAD_CHECK_INTERVAL`] of a change without
//! a restart. A reload that fails keeps the material in use (the error it
//! logs names the file); an expired or not yet valid certificate is refused
//! as at start.
//!
//! The certificates in use, with their ends, are also what the expiry gauges
//! report ([`CertsInUse`]).
//!
//! The rule of a reload is here once ([`TlsWatch::reload`]): when one is due
//! ([`TlsWatch::reload_due`], [`reload_checks`]), how the files are taken
//! in, checked and refused, what is logged and counted. Each service only
//! says what it builds from the files and how it puts that in place; the
//! MQTT connection of relay and server is one such use ([`MqttTls`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use serde::Serialize;

use crate::durable::FileWatch;
use crate::mqtt::ClientSettings;
use crate::tls::{check_validity, load_certs, load_key, TlsError, EXPIRY_WARNING_S};

/// How often a service looks at the modification times of its TLS files.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// The timer of the file checks: every [`RELOAD_CHECK_INTERVAL`], the first
/// one interval after the start, not at once (the start has just loaded the
/// files; and the relay must not interrupt its first connection attempt,
/// see its network task). A late tick is delayed, not made up for.
pub fn reload_checks() -> tokio::time::Interval {
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + RELOAD_CHECK_INTERVAL,
        RELOAD_CHECK_INTERVAL,
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check
}

/// Why TLS material is loaded again; its text is the `reason` field of the
/// reload's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadReason {
    /// The operator asked (SIGHUP, or the handle's `reload_tls`).
    Asked,
    /// A periodic check saw the files change.
    FilesChanged,
}

impl ReloadReason {
    /// As the logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::Asked => "asked (SIGHUP)",
            ReloadReason::FilesChanged => "the files changed",
        }
    }
}

/// How one piece of reloadable material speaks of itself in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReloadLines {
    /// What the per-certificate lines start with ([`log_loaded`]): `relay`,
    /// `server MQTT`, `server HTTPS`.
    pub what: &'static str,
    /// The info line once the new material is in place.
    pub reloaded: &'static str,
    /// The error line when the files are refused.
    pub refused: &'static str,
}

/// Where a reload's outcome is kept: the certificates in use (which the
/// expiry gauges and the relay's status report) and the service's two
/// counters.
#[derive(Clone, Copy, Debug)]
pub struct ReloadRecord<'a> {
    /// Replaced by the new certificates on success.
    pub in_use: &'a CertsInUse,
    /// Counts reloads done.
    pub reloads: &'a AtomicU64,
    /// Counts reloads refused (the material in use kept).
    pub failures: &'a AtomicU64,
}

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

/// The TLS files of one service and how they looked when last seen.
#[derive(Debug)]
pub struct TlsWatch {
    certs: Vec<WatchedCert>,
    /// Certificates and keys (`gridpow keys renew` replaces them by a
    /// rename, which [`FileWatch`] tells).
    files: FileWatch,
}

impl TlsWatch {
    /// Watches `certs` from how they look now.
    pub fn new(certs: Vec<WatchedCert>) -> Self {
        let paths = certs
            .iter()
            .flat_map(|c| std::iter::once(c.cert.clone()).chain(c.key.clone()))
            .collect();
        TlsWatch {
            certs,
            files: FileWatch::new(paths),
        }
    }

    /// Whether any file changed (or appeared, or vanished) since the last
    /// call or [`TlsWatch::new`]; one change is reported once.
    pub fn changed(&mut self) -> bool {
        self.files.changed()
    }

    /// The certificates watched.
    pub fn certs(&self) -> &[WatchedCert] {
        &self.certs
    }

    /// Whether to reload now, and why: when `asked`, or else when the files
    /// changed since last seen ([`TlsWatch::changed`]).
    pub fn reload_due(&mut self, asked: bool) -> Option<ReloadReason> {
        if asked {
            Some(ReloadReason::Asked)
        } else if self.changed() {
            Some(ReloadReason::FilesChanged)
        } else {
            None
        }
    }

    /// Records the certificates as they are now in `in_use`, as at start. A
    /// failure only leaves it as it was: the start has checked these files
    /// already, and refuses to run without them.
    pub fn record_in_use(&self, in_use: &CertsInUse) {
        if let Ok(c) = self.check(now_s()) {
            in_use.set(c);
        }
    }

    /// Loads the material again: checks every file ([`TlsWatch::check`]),
    /// builds what the service uses from them with `build`, and if both
    /// succeed logs the certificates and `lines.reloaded`, hands the result
    /// to `put` (which puts it in place and cannot fail), then records the
    /// new certificates as in use and counts a reload. Otherwise it counts a
    /// failure, logs `lines.refused` with the error (which names the file)
    /// and leaves everything as it was. Whether `put` ran is returned.
    ///
    /// The files are taken as seen now, so that a reload asked for also
    /// takes in changes the periodic check has not seen yet, and that check
    /// does not report them again.
    pub fn reload<T>(
        &mut self,
        why: ReloadReason,
        lines: &ReloadLines,
        record: ReloadRecord<'_>,
        build: impl FnOnce(&[WatchedCert]) -> Result<T, TlsError>,
        put: impl FnOnce(T),
    ) -> bool {
        self.changed();
        let now = now_s();
        match self
            .check(now)
            .and_then(|certs| Ok((build(&self.certs)?, certs)))
        {
            Ok((built, certs)) => {
                log_loaded(lines.what, &certs, now);
                tracing::info!(reason = why.as_str(), "{}", lines.reloaded);
                put(built);
                record.in_use.set(certs);
                record.reloads.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                record.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(reason = why.as_str(), error = %e, "{}", lines.refused);
                false
            }
        }
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

/// A broker connection's TLS material, reloadable: the settings its
/// transport is built from and the files they name (relay and server alike).
#[derive(Debug)]
pub struct MqttTls {
    settings: ClientSettings,
    watch: TlsWatch,
}

impl MqttTls {
    /// The material of `settings`, `None` without TLS. The CA is watched,
    /// and the client certificate and key if configured or present now (as
    /// the connection itself presents them, [`ClientSettings::transport`]);
    /// what is in use now is recorded in `in_use`.
    pub fn new(settings: ClientSettings, in_use: &CertsInUse) -> Option<Self> {
        let tls = settings.tls.clone()?;
        let mut certs = vec![WatchedCert {
            role: "mqtt_ca",
            cert: tls.ca,
            key: None,
        }];
        if tls.identity_configured || (tls.cert.exists() && tls.key.exists()) {
            certs.push(WatchedCert {
                role: "mqtt_client",
                cert: tls.cert,
                key: Some(tls.key),
            });
        }
        let watch = TlsWatch::new(certs);
        watch.record_in_use(in_use);
        Some(MqttTls { settings, watch })
    }

    /// See [`TlsWatch::reload_due`].
    pub fn reload_due(&mut self, asked: bool) -> Option<ReloadReason> {
        self.watch.reload_due(asked)
    }

    /// Reloads ([`TlsWatch::reload`]) into a new transport, handed to `put`,
    /// which makes the client connect with it.
    pub fn reload(
        &mut self,
        why: ReloadReason,
        lines: &ReloadLines,
        record: ReloadRecord<'_>,
        put: impl FnOnce(rumqttc::Transport),
    ) -> bool {
        let settings = &self.settings;
        self.watch.reload(
            why,
            lines,
            record,
            |_| {
                settings.transport()?.ok_or_else(|| TlsError::File {
                    path: settings
                        .tls
                        .as_ref()
                        .map(|t| t.ca.clone())
                        .unwrap_or_default(),
                    message: "TLS is off".into(),
                })
            },
            put,
        )
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
    use std::path::Path;

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

    /// A client certificate `c.pem` valid from `from` to `to` (1 January),
    /// with its key, in a new directory, and a watch over both.
    fn watched_client(from: i32, to: i32) -> (tempfile::TempDir, PathBuf, TlsWatch) {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("c.pem");
        cert(&pem, from, to);
        let w = TlsWatch::new(vec![WatchedCert {
            role: "mqtt_client",
            cert: pem.clone(),
            key: Some(pem.with_extension("key")),
        }]);
        (dir, pem, w)
    }

    #[test]
    fn a_replaced_file_is_seen_once_and_its_new_end_is_reported() {
        let (_dir, pem, mut w) = watched_client(2020, 2031);
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
        let (_dir, pem, w) = watched_client(2020, 2025);
        let e = w.check(Y2030).unwrap_err().to_string();
        assert!(e.contains("c.pem") && e.contains("expired"), "{e}");
        std::fs::write(pem.with_extension("key"), "junk").unwrap();
        cert(&pem, 2020, 2040);
        std::fs::write(pem.with_extension("key"), "junk").unwrap();
        let e = w.check(Y2030).unwrap_err().to_string();
        assert!(e.contains("c.key"), "{e}");
    }

    #[derive(Default)]
    struct Record {
        in_use: CertsInUse,
        reloads: AtomicU64,
        failures: AtomicU64,
    }

    impl Record {
        fn get(&self) -> ReloadRecord<'_> {
            ReloadRecord {
                in_use: &self.in_use,
                reloads: &self.reloads,
                failures: &self.failures,
            }
        }

        fn counts(&self) -> (u64, u64) {
            (
                self.reloads.load(Ordering::Relaxed),
                self.failures.load(Ordering::Relaxed),
            )
        }
    }

    const LINES: ReloadLines = ReloadLines {
        what: "test",
        reloaded: "reloaded",
        refused: "refused",
    };

    #[test]
    fn a_reload_is_due_when_asked_or_once_per_change_of_the_files() {
        let (_dir, pem, mut w) = watched_client(2020, 2031);
        assert_eq!(w.reload_due(false), None);
        assert_eq!(w.reload_due(true), Some(ReloadReason::Asked));
        cert(&pem, 2020, 2040);
        assert_eq!(w.reload_due(false), Some(ReloadReason::FilesChanged));
        assert_eq!(w.reload_due(false), None);
        assert_eq!(ReloadReason::Asked.as_str(), "asked (SIGHUP)");
        assert_eq!(ReloadReason::FilesChanged.as_str(), "the files changed");
    }

    #[test]
    fn a_reload_puts_what_it_built_in_place_then_records_and_counts_it() {
        let (_dir, pem, mut w) = watched_client(2020, 2040);
        let r = Record::default();
        let mut put = None;
        let done = w.reload(
            ReloadReason::Asked,
            &LINES,
            r.get(),
            |certs| Ok(certs[0].role),
            |built| {
                // In place before the counter moves: whoever waits for it sees the new material.
                assert_eq!(r.counts(), (0, 0));
                put = Some(built);
            },
        );
        assert!(done);
        assert_eq!(put, Some("mqtt_client"));
        assert_eq!(r.counts(), (1, 0));
        assert_eq!(r.in_use.get()[0].file, pem);
    }

    #[test]
    fn an_unusable_reload_keeps_everything_counts_a_failure_and_is_not_due_again() {
        let (_dir, pem, mut w) = watched_client(2020, 2040);
        let r = Record::default();
        w.record_in_use(&r.in_use);
        let before = r.in_use.get();
        assert_eq!(before.len(), 1);
        // An expired replacement: refused by the check.
        cert(&pem, 2020, 2021);
        let put = |_: ()| panic!("refused material put in place");
        assert!(!w.reload(ReloadReason::Asked, &LINES, r.get(), |_| Ok(()), put));
        assert_eq!(r.counts(), (0, 1));
        assert_eq!(r.in_use.get(), before);
        assert_eq!(w.reload_due(false), None, "the reload took the change in");
        // Usable files that the service cannot build from: refused too.
        cert(&pem, 2020, 2040);
        let build = |_: &[WatchedCert]| {
            Err::<(), _>(TlsError::File {
                path: pem.clone(),
                message: "does not fit".into(),
            })
        };
        assert!(!w.reload(ReloadReason::FilesChanged, &LINES, r.get(), build, put));
        assert_eq!(r.counts(), (0, 2));
        assert_eq!(r.in_use.get(), before);
    }

    fn settings(dir: &Path) -> ClientSettings {
        ClientSettings {
            client_id: "t".into(),
            host: "localhost".into(),
            port: 8883,
            keep_alive_s: 30,
            tls: Some(crate::mqtt::ClientTls {
                ca: dir.join("ca.pem"),
                cert: dir.join("client.pem"),
                key: dir.join("client.key"),
                identity_configured: false,
            }),
        }
    }

    #[test]
    fn mqtt_material_watches_the_client_certificate_only_if_present_or_configured() {
        let dir = tempfile::tempdir().unwrap();
        cert(&dir.path().join("ca.pem"), 2020, 2040);
        let in_use = CertsInUse::default();
        let roles = |m: &MqttTls| m.watch.certs().iter().map(|c| c.role).collect::<Vec<_>>();
        let m = MqttTls::new(settings(dir.path()), &in_use).unwrap();
        assert_eq!(roles(&m), ["mqtt_ca"]);
        let mut configured = settings(dir.path());
        if let Some(t) = &mut configured.tls {
            t.identity_configured = true;
        }
        let m = MqttTls::new(configured, &in_use).unwrap();
        assert_eq!(roles(&m), ["mqtt_ca", "mqtt_client"]);
        cert(&dir.path().join("client.pem"), 2020, 2040);
        let m = MqttTls::new(settings(dir.path()), &in_use).unwrap();
        assert_eq!(roles(&m), ["mqtt_ca", "mqtt_client"]);
        assert_eq!(in_use.get().len(), 2, "what is in use is recorded at once");
        let mut plain = settings(dir.path());
        plain.tls = None;
        assert!(MqttTls::new(plain, &in_use).is_none());
    }

    #[test]
    fn mqtt_material_reloads_into_a_new_transport() {
        let dir = tempfile::tempdir().unwrap();
        cert(&dir.path().join("ca.pem"), 2020, 2040);
        cert(&dir.path().join("client.pem"), 2020, 2040);
        let r = Record::default();
        let mut m = MqttTls::new(settings(dir.path()), &r.in_use).unwrap();
        let mut transport = None;
        let reason = m.reload_due(true).unwrap();
        assert!(m.reload(reason, &LINES, r.get(), |t| transport = Some(t)));
        assert!(matches!(transport, Some(rumqttc::Transport::Tls(_))));
        assert_eq!(r.counts(), (1, 0));
        std::fs::write(dir.path().join("ca.pem"), "junk").unwrap();
        let reason = m.reload_due(false).unwrap();
        assert!(!m.reload(reason, &LINES, r.get(), |_| panic!("refused CA used")));
        assert_eq!(r.counts(), (1, 1));
        assert_eq!(r.in_use.get().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_check_comes_one_interval_after_the_start() {
        let start = tokio::time::Instant::now();
        let mut check = reload_checks();
        let early = RELOAD_CHECK_INTERVAL - Duration::from_millis(1);
        assert!(tokio::time::timeout(early, check.tick()).await.is_err());
        check.tick().await;
        assert_eq!(start.elapsed(), RELOAD_CHECK_INTERVAL);
        check.tick().await;
        assert_eq!(start.elapsed(), 2 * RELOAD_CHECK_INTERVAL);
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
