//! Process counters and the Prometheus text exposition of them and of the
//! database totals. Counters only (rates are derived by the scraper), except
//! the ledger sizes, which are read from the database after each commit.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use serde::Serialize;

use crate::http_error::HttpRefusal;
use gridpow_store::plausibility::AlertKind;
use gridpow_store::DbTotals;
use gridpow_store::RejectKind;

/// Counters of this server process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// MQTT publishes received on the blocks subscription.
    pub messages_received: AtomicU64,
    /// Their payload bytes.
    pub bytes_received: AtomicU64,
    /// Blocks this process stored.
    pub blocks_stored: AtomicU64,
    /// Redelivered blocks this process found already stored.
    pub blocks_duplicate: AtomicU64,
    /// Readings this process stored.
    pub readings_stored: AtomicU64,
    /// Readings this process did not store again.
    pub readings_duplicate: AtomicU64,
    /// Payloads this process quarantined, by [`RejectKind`] (index in `RejectKind::ALL`).
    pub quarantined: [AtomicU64; RejectKind::ALL.len()],
    /// Alerts raised, by [`AlertKind`] (index in `AlertKind::ALL`).
    pub alerts: [AtomicU64; AlertKind::ALL.len()],
    /// Blocks whose signed relay id differs from the topic's.
    pub topic_mismatch: AtomicU64,
    /// Refusals only counted, not kept: their relay's quarantine allowance was used up.
    pub quarantine_dropped: AtomicU64,
    /// Quarantined payloads cut to `quarantine.max_payload_bytes`.
    pub quarantine_truncated: AtomicU64,
    /// Quarantine rows pruned after `quarantine.retention_days`.
    pub quarantine_pruned: AtomicU64,
    /// Database transactions committed.
    pub commits: AtomicU64,
    /// Time spent in committed transactions, µs.
    pub commit_micros: AtomicU64,
    /// Transactions that failed (retried).
    pub commit_failures: AtomicU64,
    /// Time spent verifying payloads, µs.
    pub verify_micros: AtomicU64,
    /// Commit receipts handed to the MQTT client.
    pub receipts_published: AtomicU64,
    /// Broker acknowledgements sent.
    pub acks_sent: AtomicU64,
    /// Acknowledgements skipped because the connection that delivered the message is gone.
    pub acks_stale: AtomicU64,
    /// MQTT connections established.
    pub mqtt_connects: AtomicU64,
    /// MQTT connection errors.
    pub mqtt_errors: AtomicU64,
    /// Relay status messages kept.
    pub status_received: AtomicU64,
    /// Relay status messages dropped (malformed, another relay's, too many relays).
    pub status_refused: AtomicU64,
    /// HTTP connections accepted and served.
    pub http_connections: AtomicU64,
    /// HTTP connections closed at once because `http.max_connections` were open.
    pub http_connections_refused: AtomicU64,
    /// Failed `accept()` calls on the HTTP listener (e.g. out of file descriptors), retried.
    pub http_accept_errors: AtomicU64,
    /// HTTP connections closed for want of a request head in time, or a TLS handshake.
    pub http_header_timeouts: AtomicU64,
    /// HTTP connections closed after `http.idle_timeout_ms` without a byte.
    pub http_idle_closed: AtomicU64,
    /// TLS handshakes on the HTTP listener that failed.
    pub http_tls_failures: AtomicU64,
    /// HTTP requests refused with 429: the client's rate limit.
    pub http_rate_limited: AtomicU64,
    /// HTTP requests refused with 503: `http.max_concurrent_requests` in flight.
    pub http_overloaded: AtomicU64,
    /// API requests refused with 503: no database reader free in time.
    pub http_db_busy: AtomicU64,
    /// HTTP requests refused by the access rules, by [`HttpRefusal`] (index in `HttpRefusal::ALL`).
    pub http_refused: [AtomicU64; HttpRefusal::ALL.len()],
}

/// State shared by the pipeline threads, the HTTP API and the handle.
#[derive(Debug, Default)]
pub struct Shared {
    /// Process counters.
    pub metrics: Metrics,
    /// Database totals as of the last commit or refresh.
    pub totals: RwLock<DbTotals>,
    /// Whether the MQTT connection is up.
    pub mqtt_connected: AtomicBool,
    /// Why the writer stopped committing, once a commit failed in a way no
    /// retry can cure (corrupt data, a full disk): see `/healthz`.
    pub writer_halted: std::sync::Mutex<Option<String>>,
    /// Whether the broker confirmed the blocks subscription on the current connection.
    pub mqtt_subscribed: AtomicBool,
    /// Incremented at every MQTT connection; acknowledgements of another generation are skipped.
    pub generation: AtomicU64,
    /// When the server started, Unix ms.
    pub started_ms: u64,
    /// Each relay's newest status message.
    pub relay_status: crate::relay_status::RelayStatuses,
}

pub(crate) fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Shared {
    /// The totals snapshot.
    pub fn totals(&self) -> DbTotals {
        match self.totals.read() {
            Ok(t) => *t,
            Err(p) => *p.into_inner(),
        }
    }

    /// Replaces the totals snapshot.
    pub fn set_totals(&self, t: DbTotals) {
        match self.totals.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }

    /// Counts a quarantined payload.
    pub fn count_quarantine(&self, kind: RejectKind) {
        if let Some(i) = RejectKind::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.quarantined[i], 1);
        }
    }

    /// Counts an alert.
    pub fn count_alert(&self, kind: AlertKind, n: u64) {
        if let Some(i) = AlertKind::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.alerts[i], n);
        }
    }

    /// Counts an HTTP request refused by the access rules.
    pub fn count_http_refusal(&self, kind: HttpRefusal) {
        if let Some(i) = HttpRefusal::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.http_refused[i], 1);
        }
    }

    /// A snapshot for the API and the handle.
    pub fn stats(&self) -> ServerStats {
        let t = self.totals();
        let m = &self.metrics;
        ServerStats {
            readings_stored: t.readings_stored,
            blocks_verified: t.blocks_verified,
            blocks_rejected: t.blocks_rejected,
            frames_rejected: t.frames_rejected,
            blocks_duplicate: t.blocks_duplicate,
            readings_duplicate: t.readings_duplicate,
            meters: t.meters,
            relays: t.relays,
            gaps_open: t.gaps_open,
            forks: t.forks,
            alerts_active: t.alerts_active,
            messages_received: get(&m.messages_received),
            receipts_published: get(&m.receipts_published),
            readings_stored_by_this_server: get(&m.readings_stored),
            mqtt_connected: self.mqtt_connected.load(Ordering::Relaxed),
            mqtt_subscribed: self.mqtt_subscribed.load(Ordering::Relaxed),
            started_ms: self.started_ms,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let t = self.totals();
        let m = &self.metrics;
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        let secs = |c: &AtomicU64| format!("{:.6}", get(c) as f64 / 1e6);
        let s = "gridpow_server_";
        metric(
            o,
            s,
            "messages_received_total",
            "MQTT messages received on the blocks subscription.",
            get(&m.messages_received),
        );
        metric(
            o,
            s,
            "received_bytes_total",
            "Payload bytes received.",
            get(&m.bytes_received),
        );
        metric(
            o,
            s,
            "blocks_stored_total",
            "Blocks stored by this process.",
            get(&m.blocks_stored),
        );
        metric(
            o,
            s,
            "blocks_duplicate_total",
            "Redelivered blocks found already stored by this process.",
            get(&m.blocks_duplicate),
        );
        metric(
            o,
            s,
            "readings_stored_total",
            "Readings stored by this process.",
            get(&m.readings_stored),
        );
        metric(
            o,
            s,
            "readings_duplicate_total",
            "Readings not stored again (carried by an earlier frame).",
            get(&m.readings_duplicate),
        );
        metric(
            o,
            s,
            "topic_mismatch_total",
            "Blocks whose signed relay id differs from the topic's.",
            get(&m.topic_mismatch),
        );
        metric(
            o,
            s,
            "quarantine_dropped_total",
            "Refusals counted but not kept: the relay's quarantine allowance was used up.",
            get(&m.quarantine_dropped),
        );
        metric(
            o,
            s,
            "quarantine_truncated_total",
            "Quarantined payloads cut to quarantine.max_payload_bytes.",
            get(&m.quarantine_truncated),
        );
        metric(
            o,
            s,
            "quarantine_pruned_total",
            "Quarantine rows pruned after their retention.",
            get(&m.quarantine_pruned),
        );
        metric(
            o,
            s,
            "commits_total",
            "Database transactions committed.",
            get(&m.commits),
        );
        metric(
            o,
            s,
            "commit_seconds_total",
            "Seconds spent in committed transactions.",
            secs(&m.commit_micros),
        );
        metric(
            o,
            s,
            "commit_failures_total",
            "Database transactions that failed and were retried.",
            get(&m.commit_failures),
        );
        metric(
            o,
            s,
            "verify_seconds_total",
            "Seconds spent verifying payloads.",
            secs(&m.verify_micros),
        );
        metric(
            o,
            s,
            "receipts_published_total",
            "Commit receipts published.",
            get(&m.receipts_published),
        );
        metric(
            o,
            s,
            "acks_sent_total",
            "Broker acknowledgements sent after commit.",
            get(&m.acks_sent),
        );
        metric(
            o,
            s,
            "acks_stale_total",
            "Acknowledgements skipped: the delivering connection is gone.",
            get(&m.acks_stale),
        );
        metric(
            o,
            s,
            "mqtt_connects_total",
            "MQTT connections established.",
            get(&m.mqtt_connects),
        );
        metric(
            o,
            s,
            "mqtt_errors_total",
            "MQTT connection errors.",
            get(&m.mqtt_errors),
        );
        metric(
            o,
            s,
            "relay_status_received_total",
            "Relay status messages kept (newest per relay on the dashboard).",
            get(&m.status_received),
        );
        metric(
            o,
            s,
            "relay_status_refused_total",
            "Relay status messages dropped: malformed, naming another relay, or too many relays.",
            get(&m.status_refused),
        );
        for (name, help, c) in [
            (
                "http_connections_total",
                "HTTP connections accepted and served.",
                &m.http_connections,
            ),
            (
                "http_connections_refused_total",
                "HTTP connections closed at once: max_connections open.",
                &m.http_connections_refused,
            ),
            (
                "http_accept_errors_total",
                "Failed accept() calls on the HTTP listener, retried.",
                &m.http_accept_errors,
            ),
            (
                "http_header_timeouts_total",
                "HTTP connections closed: no request head or TLS handshake in time.",
                &m.http_header_timeouts,
            ),
            (
                "http_idle_closed_total",
                "HTTP connections closed after idle_timeout_ms without a byte.",
                &m.http_idle_closed,
            ),
            (
                "http_tls_failures_total",
                "Failed TLS handshakes on the HTTP listener.",
                &m.http_tls_failures,
            ),
            (
                "http_rate_limited_total",
                "HTTP requests refused with 429 (per-client rate limit).",
                &m.http_rate_limited,
            ),
            (
                "http_overloaded_total",
                "HTTP requests refused with 503 (max_concurrent_requests in flight).",
                &m.http_overloaded,
            ),
            (
                "http_db_busy_total",
                "API requests refused with 503: no database reader free in time.",
                &m.http_db_busy,
            ),
        ] {
            metric(o, s, name, help, get(c));
        }
        let _ = writeln!(o, "# HELP gridpow_server_quarantined_total Payloads quarantined by this process, by reason.\n# TYPE gridpow_server_quarantined_total counter");
        for (k, c) in RejectKind::ALL.iter().zip(&m.quarantined) {
            let _ = writeln!(
                o,
                "gridpow_server_quarantined_total{{reason=\"{}\"}} {}",
                k.as_str(),
                get(c)
            );
        }
        let _ = writeln!(o, "# HELP gridpow_server_http_refused_total HTTP requests refused: no or bad token, wrong role or meter, bad Host, page too large.\n# TYPE gridpow_server_http_refused_total counter");
        for (k, c) in HttpRefusal::ALL.iter().zip(&m.http_refused) {
            let _ = writeln!(
                o,
                "gridpow_server_http_refused_total{{reason=\"{}\"}} {}",
                k.as_str(),
                get(c)
            );
        }
        let _ = writeln!(o, "# HELP gridpow_server_alerts_total Alerts raised by this process, by kind.\n# TYPE gridpow_server_alerts_total counter");
        for (k, c) in AlertKind::ALL.iter().zip(&m.alerts) {
            let _ = writeln!(
                o,
                "gridpow_server_alerts_total{{kind=\"{}\"}} {}",
                k.as_str(),
                get(c)
            );
        }
        let l = "gridpow_ledger_";
        metric(
            o,
            l,
            "readings_total",
            "Readings in the database.",
            t.readings_stored,
        );
        metric(
            o,
            l,
            "blocks_total",
            "Verified blocks in the database.",
            t.blocks_verified,
        );
        metric(
            o,
            l,
            "blocks_rejected_total",
            "Payloads in quarantine.",
            t.blocks_rejected,
        );
        metric(
            o,
            l,
            "frames_rejected_total",
            "Blocks refused because of one of their frames.",
            t.frames_rejected,
        );
        metric(
            o,
            l,
            "blocks_duplicate_total",
            "Redelivered blocks found already stored.",
            t.blocks_duplicate,
        );
        metric(o, l, "forks_total", "Forks quarantined.", t.forks);
        metric(
            o,
            l,
            "meters_total",
            "Meters with stored readings.",
            t.meters,
        );
        metric(o, l, "relays_total", "Relays with stored blocks.", t.relays);
        let _ = writeln!(o, "# HELP gridpow_ledger_gaps_open Blocks stored before their parent, still waiting.\n# TYPE gridpow_ledger_gaps_open gauge\ngridpow_ledger_gaps_open {}", t.gaps_open);
        let _ = writeln!(o, "# HELP gridpow_server_mqtt_connected Whether the MQTT connection is up.\n# TYPE gridpow_server_mqtt_connected gauge\ngridpow_server_mqtt_connected {}", u8::from(self.mqtt_connected.load(Ordering::Relaxed)));
        out
    }
}

fn metric(out: &mut String, prefix: &str, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} counter\n{prefix}{name} {value}"
    );
}

/// What the server has done, for the CLI, the API (`/api/v1/stats`) and the dashboard.
/// Ledger fields are database totals (all servers sharing the database, across
/// restarts); the others count this process only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerStats {
    /// Readings in the database (each stored once).
    pub readings_stored: u64,
    /// Blocks verified and stored.
    pub blocks_verified: u64,
    /// Payloads quarantined (refused blocks, forks, garbage).
    pub blocks_rejected: u64,
    /// Blocks refused because of one of their frames (unknown meter, bad tag, malformed frame).
    pub frames_rejected: u64,
    /// Redelivered blocks found already stored.
    pub blocks_duplicate: u64,
    /// Readings not stored again because an earlier frame carried them.
    pub readings_duplicate: u64,
    /// Meters with stored readings.
    pub meters: u64,
    /// Relays with stored blocks.
    pub relays: u64,
    /// Blocks stored before their parent, still waiting for it.
    pub gaps_open: u64,
    /// Forks quarantined.
    pub forks: u64,
    /// Alerts not cleared.
    pub alerts_active: u64,
    /// MQTT messages this process received.
    pub messages_received: u64,
    /// Commit receipts this process published.
    pub receipts_published: u64,
    /// Readings this process stored.
    pub readings_stored_by_this_server: u64,
    /// Whether the MQTT connection is up.
    pub mqtt_connected: bool,
    /// Whether the broker confirmed the blocks subscription.
    pub mqtt_subscribed: bool,
    /// When this process started, Unix ms.
    pub started_ms: u64,
}
